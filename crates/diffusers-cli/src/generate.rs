//! `diffusers generate`: load a pipeline, run it, write PNG / array / latent outputs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::backend::{Cpu, DeviceSpec, Precision};
use diffusers_core::repo::{DownloadProgress, RepoOptions};
use diffusers_core::weights::Weights;
use diffusers_pipelines::image_input::load_image;
use diffusers_pipelines::image_processor::{numbered_paths, save_png};
use diffusers_pipelines::pipeline_flux::{FluxCall, OutputType};
use diffusers_pipelines::pipeline_flux_img2img::{FluxImg2ImgCall, FluxImg2ImgPipeline};
use diffusers_pipelines::pipeline_stable_diffusion::StableDiffusionCall;
use diffusers_pipelines::pipeline_stable_diffusion_img2img::{
    StableDiffusionImg2ImgCall, StableDiffusionImg2ImgPipeline,
};
use diffusers_pipelines::pipeline_stable_diffusion_xl::StableDiffusionXLCall;
use diffusers_pipelines::pipeline_stable_diffusion_xl_img2img::{
    StableDiffusionXLImg2ImgCall, StableDiffusionXLImg2ImgPipeline,
};
use diffusers_pipelines::{DiffusionPipeline, LoadEvent, PipelineOptions};
use diffusers_schedulers::registry::SCHEDULERS;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{CliError, GenerateArgs, OutputKind};

type Result<T> = std::result::Result<T, CliError>;

/// Parses the arguments, picks the backend for `--device` and runs.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let device: DeviceSpec = args.device.parse()?;
    let device = device.ensure_compiled()?;
    let precision: Precision = args.dtype.parse()?;
    if args.num_images == 0 {
        return Err(CliError::Usage("--num-images must be at least 1".into()));
    }
    if args.steps == Some(0) {
        return Err(CliError::Usage("--steps must be at least 1".into()));
    }
    match device {
        DeviceSpec::Cpu => generate::<Cpu>(args, &Default::default(), precision.into()),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => {
            generate::<diffusers_core::backend::Cuda>(args, &device.cuda_device(), precision.into())
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(CliError::Core(diffusers_core::Error::BackendNotCompiled(
            device.to_string(),
        ))),
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A spinner with a message (loading, decoding).
fn spinner_style() -> ProgressStyle {
    style("{spinner} {msg} {elapsed_precise}")
}

/// Denoising steps.
fn steps_style() -> ProgressStyle {
    style("{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise}")
}

/// One file's download, in bytes.
fn bytes_style() -> ProgressStyle {
    style("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
}

/// A spinner that draws on stderr only when it is a terminal and `--quiet` is off.
fn progress_bar(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(spinner_style());
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    bar
}

/// Shows each file hf-hub downloads on `bar` as a byte bar (the loading messages switch it back
/// to a spinner).
fn download_progress(bar: ProgressBar) -> DownloadProgress {
    let current = Mutex::new(String::new());
    DownloadProgress::new(move |d| {
        bar.set_position(d.bytes);
        bar.set_length(d.total);
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if *current != d.file {
            d.file.clone_into(&mut current);
            bar.set_style(bytes_style());
            bar.set_message(format!("downloading {}", d.file));
        }
    })
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The tensor `latents` of a safetensors file as f32 values and its shape.
fn read_latents(path: &Path) -> Result<(TensorData, Vec<usize>)> {
    let weights = Weights::open(path)?;
    let info = weights.info("latents").ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no tensor named `latents` (found: {})",
            path.display(),
            weights.keys().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let shape = info.shape.clone();
    Ok((weights.read("latents")?.convert::<f32>(), shape))
}

fn latents_of_rank<B: Backend, const D: usize>(
    latents: Option<&(TensorData, Vec<usize>)>,
    path: Option<&Path>,
    expected: &str,
    device: &B::Device,
) -> Result<Option<Tensor<B, D>>> {
    let (Some((data, shape)), Some(path)) = (latents, path) else {
        return Ok(None);
    };
    if shape.len() != D {
        return Err(CliError::Usage(format!(
            "{}: `latents` has shape {shape:?}; this pipeline takes {expected}",
            path.display()
        )));
    }
    Ok(Some(Tensor::from_data(data.clone(), device)))
}

/// Lowercase alphanumerics without the `Scheduler`, `Discrete` and `Multistep` words.
fn scheduler_key(name: &str) -> String {
    let k: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    let k = k.strip_suffix("scheduler").unwrap_or(&k);
    let k = k.strip_suffix("discrete").unwrap_or(k);
    k.strip_suffix("multistep").unwrap_or(k).to_string()
}

/// Accepts a registry class name (`EulerDiscreteScheduler`), its short form (`euler`, `ddim`,
/// `dpmsolver`, `unipc`, case-insensitive) or a common alias (`euler_a`, `dpm++2m`).
fn scheduler_class(name: &str) -> Result<&'static str> {
    let aliases = [
        ("eulera", "eulerancestral"),
        ("dpm2m", "dpmsolver"),
        ("dpmpp2m", "dpmsolver"),
        ("dpm", "dpmsolver"),
    ];
    let plus = name.replace("++", "pp");
    let mut key = scheduler_key(&plus);
    if let Some((_, to)) = aliases.iter().find(|(from, _)| *from == key) {
        key = (*to).to_string();
    }
    SCHEDULERS
        .iter()
        .find(|c| scheduler_key(c) == key)
        .copied()
        .ok_or_else(|| {
            CliError::Usage(format!(
                "unknown scheduler `{name}` (known: {})",
                SCHEDULERS.join(", ")
            ))
        })
}

/// What a run produced: images `[h, w, 3]` in [0, 1], or the final latents.
struct Generated<B: Backend> {
    images: Vec<Tensor<B, 3>>,
    latents: Option<(Vec<usize>, Tensor<B, 1>)>,
}

fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Tensor<B, 1>) {
    let dims = t.dims().to_vec();
    (dims, t.reshape([-1]))
}

fn write_safetensors<B: Backend>(
    path: &Path,
    name: &str,
    (shape, tensor): (Vec<usize>, Tensor<B, 1>),
) -> Result<()> {
    let values: Vec<f32> = tensor
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| CliError::Output {
            path: path.to_path_buf(),
            reason: format!("{e:?}"),
        })?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(|e| CliError::Output {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    safetensors::serialize_to_file([(name, view)], None, path).map_err(|e| CliError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// How many values of `t` are NaN or infinite (diffusers writes those as black pixels, with only
/// numpy's "invalid value encountered in cast" warning).
fn non_finite<B: Backend, const D: usize>(t: Tensor<B, D>) -> usize {
    t.is_finite()
        .bool_not()
        .int()
        .sum()
        .into_scalar()
        .elem::<i64>() as usize
}

fn write_outputs<B: Backend>(
    out: Generated<B>,
    kind: OutputKind,
    path: &Path,
) -> Result<Vec<PathBuf>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(CliError::Output {
            path: path.to_path_buf(),
            reason: format!("folder {} does not exist", dir.display()),
        });
    }
    let not_finite = |n: usize, what: &str| CliError::Output {
        path: path.to_path_buf(),
        reason: format!(
            "the {what} hold {n} NaN or infinite values (non-finite --latents, or an overflow in \
             reduced precision: try --dtype bf16 or f32); nothing written"
        ),
    };
    match kind {
        OutputKind::Latent => {
            if let Some((_, l)) = &out.latents {
                let n = non_finite(l.clone());
                if n > 0 {
                    return Err(not_finite(n, "latents"));
                }
            }
        }
        _ => {
            let n = out.images.iter().map(|i| non_finite(i.clone())).sum();
            if n > 0 {
                return Err(not_finite(n, "images"));
            }
        }
    }
    match kind {
        OutputKind::Image => {
            let paths = numbered_paths(path, out.images.len());
            for (img, p) in out.images.iter().zip(&paths) {
                save_png(img, p)?;
            }
            Ok(paths)
        }
        OutputKind::Array => {
            if out.images.is_empty() {
                return Err(CliError::Output {
                    path: path.to_path_buf(),
                    reason: "the pipeline returned no images".into(),
                });
            }
            let array = Tensor::stack::<4>(out.images, 0);
            write_safetensors(path, "images", flat(array))?;
            Ok(vec![path.to_path_buf()])
        }
        OutputKind::Latent => {
            let latents = out.latents.ok_or_else(|| CliError::Output {
                path: path.to_path_buf(),
                reason: "the pipeline returned no latents".into(),
            })?;
            write_safetensors(path, "latents", latents)?;
            Ok(vec![path.to_path_buf()])
        }
    }
}

/// Rejects a flag the loaded pipeline has no use for.
fn unused(flag: &str, set: bool, class: &str) -> Result<()> {
    if set {
        return Err(CliError::Usage(format!("{flag} is not used by {class}")));
    }
    Ok(())
}

/// The SD and SDXL arms of `generate`: the same flags on call structs with the same field
/// names (diffusers' SD and SDXL pipelines take the same knobs).
macro_rules! stable_diffusion_arm {
    ($pipe:ident, $call:ident, $i2i_call:ident, $i2i_pipe:ident, $args:ident, $class:ident, $image:ident, $latents:ident, $prompt:ident, $negative:ident, $seed:ident, $output_type:ident, $device:ident, $on_step:ident, $tick:ident) => {{
        let (args, class, image, latents, prompt, negative, seed, output_type, device) = (
            $args,
            $class,
            $image,
            $latents,
            $prompt,
            $negative,
            $seed,
            $output_type,
            $device,
        );
        let mut pipe = $pipe;
        let on_step = &$on_step;
        let tick = &mut $tick;
        unused("--true-cfg-scale", args.true_cfg_scale.is_some(), class)?;
        unused(
            "--max-sequence-length",
            args.max_sequence_length.is_some(),
            class,
        )?;
        if let Some(name) = &args.scheduler {
            pipe.set_scheduler(scheduler_class(name)?)?;
        }
        let out = match image {
            Some(image) => {
                unused("--latents", latents.is_some(), "the img2img pipeline")?;
                let d = $i2i_call::<B>::default();
                let steps = args.steps.unwrap_or(d.num_inference_steps);
                on_step(steps);
                let call = $i2i_call {
                    prompt,
                    negative_prompt: negative,
                    image: Some(image),
                    strength: args.strength.unwrap_or(d.strength),
                    num_inference_steps: steps,
                    guidance_scale: args.guidance.unwrap_or(d.guidance_scale),
                    num_images_per_prompt: args.num_images,
                    seed,
                    clip_skip: args.clip_skip,
                    output_type,
                    ..d
                };
                $i2i_pipe::from(*pipe).call_with_callback(call, &mut |_, _, _| tick())?
            }
            None => {
                unused("--strength", args.strength.is_some(), class)?;
                let d = $call::<B>::default();
                let steps = args.steps.unwrap_or(d.num_inference_steps);
                on_step(steps);
                let call = $call {
                    prompt,
                    negative_prompt: negative,
                    height: args.height,
                    width: args.width,
                    num_inference_steps: steps,
                    guidance_scale: args.guidance.unwrap_or(d.guidance_scale),
                    num_images_per_prompt: args.num_images,
                    latents: latents_of_rank::<B, 4>(
                        latents.as_ref(),
                        args.latents.as_deref(),
                        "latents [batch, 4, height / 8, width / 8]",
                        device,
                    )?,
                    seed,
                    clip_skip: args.clip_skip,
                    output_type,
                    ..d
                };
                pipe.call_with_callback(call, &mut |_, _, _| tick())?
            }
        };
        Generated {
            images: out.images,
            latents: out.latents.map(flat),
        }
    }};
}

fn generate<B: Backend>(args: &GenerateArgs, device: &B::Device, dtype: DType) -> Result<()> {
    let start = Instant::now();
    let load = progress_bar(args.quiet);
    let opts = PipelineOptions {
        repo: RepoOptions {
            revision: args.revision.clone(),
            offline: args.offline.then_some(true),
            progress: Some(download_progress(load.clone())),
            ..Default::default()
        },
        dtype,
        variant: args.variant.clone(),
    };
    load.set_message(format!("loading {}", args.model));
    let pipe = DiffusionPipeline::<B>::from_pretrained_with_progress(
        &args.model,
        &opts,
        device,
        &mut |e| match e {
            LoadEvent::Fetching(f) => load.set_message(format!("fetching {f}")),
            LoadEvent::Fetched(_) => load.set_style(spinner_style()),
            LoadEvent::Loading(c) => load.set_message(format!("loading {c}")),
        },
    );
    load.finish_and_clear();
    let pipe = pipe?;
    let loaded = start.elapsed();
    let latents = args.latents.as_deref().map(read_latents).transpose()?;
    let image = args
        .image
        .as_deref()
        .map(|p| load_image::<B>(p, device))
        .transpose()?;
    let seed = match (args.seed, &latents) {
        (Some(s), _) => Some(s),
        (None, Some(_)) => None,
        // diffusers draws fresh noise without a generator; a random seed, reported, does that.
        (None, None) => Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64 & ((1 << 53) - 1)),
        ),
    };
    let output_type = match args.output_type {
        OutputKind::Latent => OutputType::Latent,
        _ => OutputType::Array,
    };
    let prompt = vec![args.prompt.clone()];
    let negative = args.negative_prompt.clone().map(|n| vec![n]);
    let class = pipe.class_name();
    let bar = progress_bar(args.quiet);
    let mut denoised = Duration::ZERO;
    let t0 = Instant::now();
    let on_step = |steps: usize| {
        bar.set_length(steps as u64);
        bar.set_style(steps_style());
        bar.set_message("denoising");
    };
    let mut tick = || {
        bar.inc(1);
        denoised = t0.elapsed();
    };
    let out: Generated<B> = match pipe {
        DiffusionPipeline::Flux(mut pipe) => {
            unused("--clip-skip", args.clip_skip.is_some(), class)?;
            if let Some(name) = &args.scheduler
                && scheduler_class(name)? != "FlowMatchEulerDiscreteScheduler"
            {
                return Err(CliError::Usage(format!(
                    "{class} runs FlowMatchEulerDiscreteScheduler only, not `{name}`"
                )));
            }
            let defaults = FluxCall::<B>::default();
            let steps = args.steps.unwrap_or(defaults.num_inference_steps);
            let call = FluxCall {
                prompt,
                negative_prompt: negative,
                true_cfg_scale: args.true_cfg_scale.unwrap_or(defaults.true_cfg_scale),
                height: args.height,
                width: args.width,
                num_inference_steps: steps,
                guidance_scale: args.guidance.unwrap_or(defaults.guidance_scale),
                num_images_per_prompt: args.num_images,
                max_sequence_length: args
                    .max_sequence_length
                    .unwrap_or(defaults.max_sequence_length),
                latents: latents_of_rank::<B, 3>(
                    latents.as_ref(),
                    args.latents.as_deref(),
                    "packed latents [batch, seq, channels]",
                    device,
                )?,
                seed,
                output_type,
                ..Default::default()
            };
            on_step(steps);
            let out = match image {
                Some(image) => {
                    let strength = args.strength.unwrap_or(0.6);
                    let steps = (steps as f64 * strength).min(steps as f64) as usize;
                    on_step(steps.max(1));
                    FluxImg2ImgPipeline::from_pipe(*pipe).call_with_callback(
                        FluxImg2ImgCall {
                            call,
                            image,
                            strength,
                        },
                        &mut |_, _, _| tick(),
                    )?
                }
                None => {
                    unused("--strength", args.strength.is_some(), class)?;
                    pipe.call_with_callback(call, &mut |_, _, _| tick())?
                }
            };
            Generated {
                images: out.images,
                latents: out.latents.map(flat),
            }
        }
        DiffusionPipeline::StableDiffusion(pipe) => stable_diffusion_arm!(
            pipe,
            StableDiffusionCall,
            StableDiffusionImg2ImgCall,
            StableDiffusionImg2ImgPipeline,
            args,
            class,
            image,
            latents,
            prompt,
            negative,
            seed,
            output_type,
            device,
            on_step,
            tick
        ),
        DiffusionPipeline::StableDiffusionXL(pipe) => stable_diffusion_arm!(
            pipe,
            StableDiffusionXLCall,
            StableDiffusionXLImg2ImgCall,
            StableDiffusionXLImg2ImgPipeline,
            args,
            class,
            image,
            latents,
            prompt,
            negative,
            seed,
            output_type,
            device,
            on_step,
            tick
        ),
        other => {
            return Err(CliError::Usage(format!(
                "{}: `{}` is not supported by `generate` yet",
                args.model,
                other.class_name()
            )));
        }
    };
    bar.finish_and_clear();
    let written = write_outputs(out, args.output_type, &args.output)?;
    if !args.quiet {
        let total = start.elapsed();
        let mem = peak_memory_mib().map_or("n/a".into(), |m| format!("{m:.0} MiB"));
        let seed = seed.map_or(String::new(), |s| format!(", seed {s}"));
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "wrote {} in {:.1}s (load {:.1}s, denoise {:.1}s, decode {:.1}s{seed}); peak memory {mem}",
            files.join(", "),
            total.as_secs_f64(),
            loaded.as_secs_f64(),
            denoised.as_secs_f64(),
            (total - loaded).saturating_sub(denoised).as_secs_f64(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::scheduler_class;

    #[test]
    fn scheduler_names() {
        for (name, class) in [
            ("EulerDiscreteScheduler", "EulerDiscreteScheduler"),
            ("euler", "EulerDiscreteScheduler"),
            ("euler_a", "EulerAncestralDiscreteScheduler"),
            ("ddim", "DDIMScheduler"),
            ("DPM++2M", "DPMSolverMultistepScheduler"),
            ("dpmsolversinglestep", "DPMSolverSinglestepScheduler"),
            ("unipc", "UniPCMultistepScheduler"),
            ("lms", "LMSDiscreteScheduler"),
            ("kdpm2-ancestral", "KDPM2AncestralDiscreteScheduler"),
            ("flowmatcheuler", "FlowMatchEulerDiscreteScheduler"),
        ] {
            assert_eq!(scheduler_class(name).ok(), Some(class), "{name}");
        }
        assert!(scheduler_class("nope").is_err());
    }
}
