//! `diffusers generate`: load a pipeline, run it, write PNG / array / latent outputs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::backend::{Cpu, DeviceSpec, Precision};
use diffusers_core::repo::RepoOptions;
use diffusers_core::weights::Weights;
use diffusers_pipelines::image_processor::{numbered_paths, save_png};
use diffusers_pipelines::pipeline_flux::{FluxCall, FluxOutput, FluxPipeline, OutputType};
use diffusers_pipelines::{DiffusionPipeline, LoadEvent, PipelineOptions};
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

/// Draws on stderr only when it is a terminal and `--quiet` is off.
fn progress_bar(quiet: bool, len: Option<u64>) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed_precise}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    bar
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn read_latents<B: Backend>(path: &Path, device: &B::Device) -> Result<Tensor<B, 3>> {
    let weights = Weights::open(path)?;
    let info = weights.info("latents").ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no tensor named `latents` (found: {})",
            path.display(),
            weights.keys().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let shape = info.shape.clone();
    if shape.len() != 3 {
        return Err(CliError::Usage(format!(
            "{}: `latents` has shape {shape:?}; this pipeline takes packed latents [batch, seq, channels]",
            path.display()
        )));
    }
    let data = weights.read("latents")?.convert::<f32>();
    Ok(Tensor::from_data(data, device))
}

fn write_safetensors<B: Backend, const D: usize>(
    path: &Path,
    name: &str,
    tensor: Tensor<B, D>,
) -> Result<()> {
    let shape = tensor.dims().to_vec();
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

fn write_outputs<B: Backend>(
    out: FluxOutput<B>,
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
    match kind {
        OutputKind::Image => {
            let paths = numbered_paths(path, out.images.len());
            for (img, p) in out.images.iter().zip(&paths) {
                save_png(img, p)?;
            }
            Ok(paths)
        }
        OutputKind::Array => {
            let array = out.array().ok_or_else(|| CliError::Output {
                path: path.to_path_buf(),
                reason: "the pipeline returned no images".into(),
            })?;
            write_safetensors(path, "images", array)?;
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

fn generate<B: Backend>(args: &GenerateArgs, device: &B::Device, dtype: DType) -> Result<()> {
    let start = Instant::now();
    let opts = PipelineOptions {
        repo: RepoOptions {
            revision: args.revision.clone(),
            offline: args.offline.then_some(true),
            ..Default::default()
        },
        dtype,
    };
    let load = progress_bar(args.quiet, None);
    load.set_message(format!("loading {}", args.model));
    let pipe = DiffusionPipeline::<B>::from_pretrained_with_progress(
        &args.model,
        &opts,
        device,
        &mut |e| match e {
            LoadEvent::Fetching(f) => load.set_message(format!("fetching {f}")),
            LoadEvent::Fetched(_) => {}
            LoadEvent::Loading(c) => load.set_message(format!("loading {c}")),
        },
    );
    load.finish_and_clear();
    let pipe = pipe?;
    let loaded = start.elapsed();
    let mut pipe: Box<FluxPipeline<B>> = match pipe {
        DiffusionPipeline::Flux(p) => p,
        #[allow(unreachable_patterns)]
        other => {
            return Err(CliError::Usage(format!(
                "{}: `{}` is not supported by `generate` yet",
                args.model,
                other.class_name()
            )));
        }
    };
    let latents = args
        .latents
        .as_deref()
        .map(|p| read_latents::<B>(p, device))
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
    let defaults = FluxCall::<B>::default();
    let steps = args.steps.unwrap_or(defaults.num_inference_steps);
    let call = FluxCall {
        height: args.height,
        width: args.width,
        num_inference_steps: steps,
        guidance_scale: args.guidance.unwrap_or(defaults.guidance_scale),
        num_images_per_prompt: args.num_images,
        max_sequence_length: args.max_sequence_length,
        latents,
        seed,
        output_type: match args.output_type {
            OutputKind::Latent => OutputType::Latent,
            _ => OutputType::Array,
        },
        ..FluxCall::new(args.prompt.clone())
    };
    let bar = progress_bar(args.quiet, Some(steps as u64));
    bar.set_message("denoising");
    let mut denoised = Duration::ZERO;
    let t0 = Instant::now();
    let out = pipe.call_with_callback(call, &mut |_, _, _| {
        bar.inc(1);
        denoised = t0.elapsed();
    });
    bar.finish_and_clear();
    let out = out?;
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
