//! `diffusers generate`: load a pipeline, run it, write PNG / array / latent outputs.

use diffusers_nn::footprint::Footprint;
use diffusers_pipelines::quantization::{PipelineQuantizationConfig, QuantMethod};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::backend::{Cpu, DeviceSpec, Precision};
use diffusers_core::repo::{DownloadProgress, RepoOptions};
use diffusers_core::weights::Weights;
use diffusers_pipelines::export_utils;
use diffusers_pipelines::generate::{GenerateEvent, GenerateRequest, Generated};
use diffusers_pipelines::image_input::load_image;
use diffusers_pipelines::image_processor::{numbered_paths, save_png};
use diffusers_pipelines::lora_pipeline::{AdapterWeight, LoraLoader, LoraOptions};
use diffusers_pipelines::pipeline_flux::OutputType;
use diffusers_pipelines::pipeline_hunyuan_video::PromptTemplate;
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
        DeviceSpec::Cpu => generate::<Cpu>(args, &Default::default(), precision.into(), ""),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => {
            // Before the first CUDA client: kernels compiled by an earlier process are loaded
            // from the cache instead of compiled again (minutes at real sizes).
            use diffusers_core::backend::kernel_cache::{KernelCache, init_kernel_cache};
            let status = init_kernel_cache(&KernelCache::from_env());
            tracing::info!("kernel cache: {status:?}");
            let note = match status.dir() {
                Some(dir) => format!("; kernel cache {}", dir.display()),
                None => "; kernel cache off".to_string(),
            };
            generate::<diffusers_core::backend::Cuda>(
                args,
                &device.cuda_device(),
                precision.into(),
                &note,
            )
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
/// Weight bytes in all, with the packed (quantized) components named: `"1234 MiB
/// (transformer 310 MiB packed)"`.
fn weights_summary(footprints: &[(&'static str, Footprint)]) -> String {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let total: usize = footprints.iter().map(|(_, f)| f.total()).sum();
    let packed: Vec<String> = footprints
        .iter()
        .filter(|(_, f)| f.packed_bytes > 0)
        .map(|(n, f)| format!("{n} {:.1} MiB packed", mib(f.total())))
        .collect();
    if packed.is_empty() {
        format!("{:.1} MiB", mib(total))
    } else {
        format!("{:.1} MiB ({})", mib(total), packed.join(", "))
    }
}

/// `FILE[:WEIGHT]`: the file and the weight (1.0 when no `:number` ends it).
fn lora_spec(spec: &str) -> Result<(String, f64)> {
    if let Some((file, w)) = spec.rsplit_once(':')
        && !file.is_empty()
        && let Ok(weight) = w.parse::<f64>()
    {
        if !weight.is_finite() {
            return Err(CliError::Usage(format!(
                "--lora {spec}: the weight is not finite"
            )));
        }
        return Ok((file.to_string(), weight));
    }
    if spec.is_empty() {
        return Err(CliError::Usage("--lora needs a file".into()));
    }
    Ok((spec.to_string(), 1.0))
}

/// Loads the `--lora` adapters (named after their files), mixes them with their weights and
/// fuses them with `--fuse-lora`; returns one summary entry per adapter (layers touched).
fn load_loras<B: Backend>(
    pipe: &mut DiffusionPipeline<B>,
    args: &GenerateArgs,
) -> Result<Vec<String>> {
    if args.lora.is_empty() {
        if args.fuse_lora {
            return Err(CliError::Usage("--fuse-lora needs --lora".into()));
        }
        return Ok(Vec::new());
    }
    let mut names: Vec<(String, f64)> = Vec::new();
    let mut summary = Vec::new();
    for spec in &args.lora {
        let (file, weight) = lora_spec(spec)?;
        let stem = Path::new(&file)
            .file_stem()
            .map_or_else(|| "lora".to_string(), |s| s.to_string_lossy().into_owned());
        let mut name = stem.clone();
        let mut n = 1;
        while names.iter().any(|(m, _)| *m == name) {
            n += 1;
            name = format!("{stem}_{n}");
        }
        let report = pipe
            .load_lora_weights(&file, &LoraOptions::named(&name))
            .map_err(cli_error)?;
        summary.push(format!(
            "lora {name} x{weight}: {} layers",
            report.total_layers()
        ));
        names.push((name, weight));
    }
    let active: Vec<(&str, AdapterWeight)> = names
        .iter()
        .map(|(n, w)| (n.as_str(), AdapterWeight::All(*w)))
        .collect();
    pipe.set_adapters(&active).map_err(cli_error)?;
    if args.fuse_lora {
        let fused = pipe.fuse_lora(1.0).map_err(cli_error)?;
        summary.push(format!("{fused} layers fused"));
    }
    Ok(summary)
}

fn peak_memory_mib() -> Option<f64> {
    diffusers_core::memory::host_peak_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

/// The tensor `latents` of a safetensors file as f32 values with its shape.
fn read_latents(path: &Path) -> Result<TensorData> {
    let weights = Weights::open(path)?;
    if weights.info("latents").is_none() {
        return Err(CliError::Usage(format!(
            "{}: no tensor named `latents` (found: {})",
            path.display(),
            weights.keys().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(weights.read("latents")?.convert::<f32>())
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

fn write_safetensors<B: Backend>(
    path: &Path,
    name: &str,
    shape: Vec<usize>,
    tensor: Tensor<B, 1>,
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

fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Tensor<B, 1>) {
    let dims = t.dims().to_vec();
    (dims, t.reshape([-1]))
}

/// Where a video goes, checked before any work: `.mp4`, `.gif`, or a folder of PNG frames.
fn video_target(path: &Path, class: &str) -> Result<()> {
    match export_utils::ExportFormat::from_path(path) {
        Ok(_) => Ok(()),
        Err(_) => Err(CliError::Usage(format!(
            "{class} makes videos: -o takes a .mp4 or .gif file or a folder for PNG frames, got {}",
            path.display()
        ))),
    }
}

/// Whether `-o` names a video (so an image pipeline refuses it).
fn is_video_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("mp4") || e.eq_ignore_ascii_case("gif"))
}

fn write_outputs<B: Backend>(
    out: Generated<B>,
    kind: OutputKind,
    path: &Path,
    fps: u32,
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
    let n = match &out {
        Generated::Images(i) => non_finite(i.clone()),
        Generated::Video(v) => non_finite(v.clone()),
        Generated::Latents { values, .. } => non_finite(values.clone()),
    };
    if n > 0 {
        let what = match &out {
            Generated::Images(_) => "images",
            Generated::Video(_) => "frames",
            Generated::Latents { .. } => "latents",
        };
        return Err(not_finite(n, what));
    }
    let wrong = |reason: &str| CliError::Output {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    match (kind, out) {
        (OutputKind::Latent, Generated::Latents { shape, values }) => {
            write_safetensors(path, "latents", shape, values)?;
            Ok(vec![path.to_path_buf()])
        }
        (OutputKind::Latent, _) => Err(wrong("the pipeline returned no latents")),
        (_, Generated::Latents { .. }) => Err(wrong("the pipeline returned latents only")),
        (OutputKind::Array, Generated::Images(images)) => {
            let (shape, values) = flat(images);
            write_safetensors(path, "images", shape, values)?;
            Ok(vec![path.to_path_buf()])
        }
        (OutputKind::Array, Generated::Video(frames)) => {
            let (shape, values) = flat(frames);
            write_safetensors(path, "frames", shape, values)?;
            Ok(vec![path.to_path_buf()])
        }
        (OutputKind::Image, Generated::Images(images)) => {
            let b = images.dims()[0];
            let paths = numbered_paths(path, b);
            for (i, p) in paths.iter().enumerate() {
                save_png(&images.clone().narrow(0, i, 1).squeeze_dim::<3>(0), p)?;
            }
            Ok(paths)
        }
        (OutputKind::Image, Generated::Video(videos)) => {
            let b = videos.dims()[0];
            let paths = if b == 1 {
                vec![path.to_path_buf()]
            } else {
                numbered_paths(path, b)
            };
            for (i, p) in paths.iter().enumerate() {
                let video = videos.clone().narrow(0, i, 1).squeeze_dim::<4>(0);
                export_utils::export_tensor(&video, p, fps)?;
            }
            Ok(paths)
        }
    }
}

/// The CLI flag of a request field a pipeline refused.
fn flag_of(field: &str) -> String {
    match field {
        "num_inference_steps" => "--steps".into(),
        "guidance_scale" => "--guidance".into(),
        "num_per_prompt" => "--num-images".into(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// A request field the pipeline refused, as the flag that set it.
fn cli_error(e: diffusers_pipelines::Error) -> CliError {
    match e {
        diffusers_pipelines::Error::UnusedArgument { pipeline, field } => {
            CliError::Usage(format!("{} is not used by {pipeline}", flag_of(field)))
        }
        other => CliError::Pipeline(other),
    }
}

/// `--quantize`, `--quantize-components`, `--double-quant` as a pipeline quantization config.
fn quantization(args: &GenerateArgs) -> Result<Option<PipelineQuantizationConfig>> {
    let Some(method) = args.quantize.as_deref() else {
        if args.double_quant || !args.quantize_components.is_empty() {
            return Err(CliError::Usage(
                "--double-quant and --quantize-components need --quantize".into(),
            ));
        }
        return Ok(None);
    };
    if args.double_quant && !matches!(method, "nf4" | "fp4") {
        return Err(CliError::Usage(format!(
            "--double-quant applies to --quantize nf4 or fp4, not {method}"
        )));
    }
    let method = QuantMethod::parse(method, args.double_quant)
        .map_err(|e| CliError::Usage(format!("--quantize: {e}")))?;
    Ok(Some(PipelineQuantizationConfig {
        method,
        components_to_quantize: args.quantize_components.clone(),
    }))
}

/// `note` ends the summary line (the CUDA kernel cache in use).
fn generate<B: Backend>(
    args: &GenerateArgs,
    device: &B::Device,
    dtype: DType,
    note: &str,
) -> Result<()> {
    let start = Instant::now();
    let load = progress_bar(args.quiet);
    let quantization = quantization(args)?;
    let offload = (args.offload.as_deref())
        .map(str::parse::<diffusers_pipelines::offload::OffloadMode>)
        .transpose()
        .map_err(cli_error)?;
    let opts = PipelineOptions {
        repo: RepoOptions {
            revision: args.revision.clone(),
            offline: args.offline.then_some(true),
            progress: Some(download_progress(load.clone())),
            ..Default::default()
        },
        dtype,
        variant: args.variant.clone(),
        quantization,
        transformer_file: args.transformer.clone(),
        offload,
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
    let mut pipe = pipe?;
    let adapters = load_loras(&mut pipe, args)?;
    if args.vae_tiling {
        pipe.enable_vae_tiling().map_err(cli_error)?;
    }
    if args.vae_slicing {
        pipe.enable_vae_slicing();
    }
    let cache = (args.cache.as_deref())
        .map(diffusers_nn::hooks::CacheConfig::parse)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--cache: {e}")))?;
    if let Some(cache) = &cache {
        pipe.enable_cache(cache).map_err(cli_error)?;
    }
    let loaded = start.elapsed();
    let class = pipe.class_name();
    let footprints = pipe.memory_footprint();
    let video = matches!(
        pipe,
        DiffusionPipeline::Wan(_) | DiffusionPipeline::HunyuanVideo(_)
    );
    // Output and flag checks before any work.
    if video {
        if args.output_type == OutputKind::Image {
            video_target(&args.output, class)?;
        }
        if let Some(0) = args.fps {
            return Err(CliError::Usage("--fps must be at least 1".into()));
        }
    } else {
        if args.fps.is_some() {
            return Err(CliError::Usage(format!("--fps is not used by {class}")));
        }
        if args.output_type == OutputKind::Image && is_video_path(&args.output) {
            return Err(CliError::Usage(format!(
                "{class} makes images: -o takes a .png file, got {}",
                args.output.display()
            )));
        }
    }
    let prompt_template = args
        .prompt_template
        .as_deref()
        .map(PromptTemplate::from_file)
        .transpose()
        .map_err(|e| CliError::Pipeline(e.into()))?;
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
    let scheduler = args
        .scheduler
        .as_deref()
        .map(scheduler_class)
        .transpose()?
        .map(str::to_string);
    let request = GenerateRequest {
        negative_prompt: args.negative_prompt.clone(),
        height: args.height,
        width: args.width,
        num_frames: args.num_frames,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        true_cfg_scale: args.true_cfg_scale,
        num_per_prompt: args.num_images,
        max_sequence_length: args.max_sequence_length,
        clip_skip: args.clip_skip,
        scheduler,
        prompt_template,
        image,
        strength: args.strength,
        seed,
        latents,
        output_type,
        ..GenerateRequest::new(args.prompt.clone())
    };
    let bar = progress_bar(args.quiet);
    let decode_bar = progress_bar(args.quiet);
    let mut denoised = Duration::ZERO;
    let mut first_step = None;
    let t0 = Instant::now();
    let out = pipe
        .generate(request, &mut |e| match e {
            GenerateEvent::Denoising { steps } => {
                bar.set_length(steps as u64);
                bar.set_style(steps_style());
                bar.set_message("denoising");
            }
            GenerateEvent::Step { .. } => {
                bar.inc(1);
                denoised = t0.elapsed();
                // From the start of the run, loading included: on CUDA, what compiling (or
                // loading cached) kernels costs before the first step.
                first_step.get_or_insert_with(|| start.elapsed());
            }
            GenerateEvent::Decoding { frames } => {
                bar.finish_and_clear();
                decode_bar.set_message(format!("decoding {frames} frames"));
            }
            GenerateEvent::Decoded { done, total } => {
                decode_bar.set_style(steps_style());
                decode_bar.set_length(total as u64);
                decode_bar.set_position(done as u64);
            }
        })
        .map_err(cli_error)?;
    bar.finish_and_clear();
    decode_bar.finish_and_clear();
    let written = write_outputs(
        out,
        args.output_type,
        &args.output,
        args.fps.unwrap_or(default_fps(class)),
    )?;
    if !args.quiet {
        let total = start.elapsed();
        let mem = peak_memory_mib().map_or("n/a".into(), |m| format!("{m:.0} MiB"));
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let device_peak = (pipe.memory_stats().iter())
            .filter_map(|s| s.device.map(|d| d.reserved_bytes))
            .max()
            .map_or("n/a (CPU)".into(), |b| format!("{:.0} MiB", mib(b)));
        let offload = offload.map_or(String::new(), |m| format!("; offload {m}"));
        let weights = weights_summary(&footprints);
        let weights = if adapters.is_empty() {
            weights
        } else {
            format!("{weights}; {}", adapters.join(", "))
        };
        let seed = seed.map_or(String::new(), |s| format!(", seed {s}"));
        let first_step = first_step.map_or(String::new(), |t| {
            format!(", first step done at {:.1}s", t.as_secs_f64())
        });
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "wrote {} in {:.1}s (load {:.1}s, denoise {:.1}s, decode {:.1}s{first_step}{seed}); weights {weights}{offload}; peak memory {mem} host, {device_peak} device{note}",
            files.join(", "),
            total.as_secs_f64(),
            loaded.as_secs_f64(),
            denoised.as_secs_f64(),
            (total - loaded).saturating_sub(denoised).as_secs_f64(),
        );
        if let (Some(c), Some(r)) = (&cache, pipe.cache_report()) {
            eprintln!(
                "cache {}: {} of {} transformer calls computed fully ({} blocks, {} modules skipped)",
                c.method(),
                r.full_calls,
                r.calls,
                r.blocks_skipped,
                r.modules_skipped
            );
            // MagCache with calibrate=true: the ratios to pass as mag_ratios next time.
            for (context, ratios) in &r.calibration_ratios {
                let ratios: Vec<String> = ratios.iter().map(|x| format!("{x:.5}")).collect();
                eprintln!(
                    "cache magcache ({context}): mag_ratios={}",
                    ratios.join("/")
                );
            }
        }
    }
    Ok(())
}

/// Frames per second of a written video when `--fps` is not given: what diffusers' examples
/// pass to `export_to_video` for the pipeline (Wan 16, HunyuanVideo 15).
fn default_fps(class: &str) -> u32 {
    match class {
        "HunyuanVideoPipeline" => 15,
        _ => 16,
    }
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
