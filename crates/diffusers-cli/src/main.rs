//! `diffusers`: the command-line front end of diffusers-rs.
//!
//! ```text
//! diffusers generate "a photo of a cat" --model black-forest-labs/FLUX.1-schnell -o cat.png
//! ```
//!
//! Errors are one line on stderr and a non-zero exit status; progress bars are drawn only on a
//! terminal (and never with `--quiet`).

mod generate;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// What can go wrong in a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A command-line value is invalid.
    #[error("{0}")]
    Usage(String),
    /// Building or running a pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] diffusers_pipelines::Error),
    /// Reading files or parsing names failed.
    #[error(transparent)]
    Core(#[from] diffusers_core::Error),
    /// Writing an output failed.
    #[error("{path}: {reason}")]
    Output {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

#[derive(Debug, Parser)]
#[command(
    name = "diffusers",
    version,
    about = "Diffusion pipelines in Rust (Hugging Face diffusers on burn)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generates images from a prompt with a pipeline in the diffusers layout.
    Generate(GenerateArgs),
}

/// What `generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputKind {
    /// PNG files (several images: `stem-0.png`, `stem-1.png`, ...); for a video pipeline, by
    /// `-o`: an H.264 `.mp4`, an animated `.gif`, or a folder of PNG frames.
    Image,
    /// A safetensors file with `images` `[batch, height, width, 3]` (video pipelines: `frames`
    /// `[batch, frames, height, width, 3]`) in [0, 1] (`output_type="np"`).
    Array,
    /// A safetensors file with the final `latents` (`output_type="latent"`).
    Latent,
}

/// Arguments of `diffusers generate` (a flag given twice takes its last value).
#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct GenerateArgs {
    /// The prompt.
    pub prompt: String,
    /// Hub repository id (e.g. black-forest-labs/FLUX.1-schnell) or local folder.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Output file.
    #[arg(long, short = 'o', default_value = "out.png")]
    pub output: PathBuf,
    /// Denoising steps (the pipeline's default when unset: 28 for Flux, 50 for SD/SDXL).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (3.5 for Flux's distilled guidance, 7.5 for SD/SDXL classifier-free).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Negative prompt (SD/SDXL; Flux with --true-cfg-scale above 1).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Flux true classifier-free guidance scale (1: off).
    #[arg(long)]
    pub true_cfg_scale: Option<f64>,
    /// Scheduler class, built from the model's scheduler config as diffusers' `from_config`
    /// (e.g. EulerDiscreteScheduler, DPMSolverMultistepScheduler, ddim; case and the
    /// `Scheduler` suffix optional).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Image-to-image: the input PNG (its size is the output size).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Image-to-image strength in [0, 1] (0.6 for Flux, 0.8 for SD/SDXL).
    #[arg(long)]
    pub strength: Option<f64>,
    /// CLIP layers to skip (SD/SDXL).
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// Image height in pixels (default: the model's native size).
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels.
    #[arg(long)]
    pub width: Option<usize>,
    /// Seed of the initial noise, as `torch.Generator("cpu").manual_seed(seed)` (random if unset).
    #[arg(long)]
    pub seed: Option<u64>,
    /// T5 prompt length in tokens, at most 512 (Flux; 512 when unset).
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute and weights dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Initial latents: a safetensors file with one tensor `latents`, shaped as diffusers'
    /// `latents=` for the pipeline (Flux: packed `[batch, seq, channels]`; SD/SDXL:
    /// `[batch, 4, height / 8, width / 8]`; Wan: `[batch, 16, (frames - 1) / 4 + 1, height / 8,
    /// width / 8]`).
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// What to write.
    #[arg(long, value_enum, default_value_t = OutputKind::Image)]
    pub output_type: OutputKind,
    /// Video frames (video pipelines; of the form 4k + 1, default 81).
    #[arg(long)]
    pub num_frames: Option<usize>,
    /// Frames per second of a written video (default: 16 for Wan, 15 for HunyuanVideo, as
    /// diffusers' examples).
    #[arg(long)]
    pub fps: Option<u32>,
    /// HunyuanVideo's prompt template: a JSON file `{"template": "...{}...", "crop_start": N}`
    /// (diffusers' `prompt_template=`).
    #[arg(long)]
    pub prompt_template: Option<PathBuf>,
    /// Quantize weights while loading: nf4, fp4 (bitsandbytes 4-bit), int8, fp8 (e4m3,
    /// per-row scales). A repository saved pre-quantized loads packed without it.
    #[arg(long, value_name = "nf4|fp4|int8|fp8")]
    pub quantize: Option<String>,
    /// The components --quantize applies to, comma-separated (default: the denoiser only).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub quantize_components: Vec<String>,
    /// Double quantization of the 4-bit scales (bnb_4bit_use_double_quant), with --quantize
    /// nf4 or fp4.
    #[arg(long)]
    pub double_quant: bool,
    /// The transformer from one single-file GGUF checkpoint (BFL / ComfyUI keys, as city96's
    /// FLUX.1 files): a local path or owner/repo/file.gguf on the hub; quantized weights stay
    /// packed. FluxPipeline only; the config comes from the model's transformer/config.json.
    #[arg(long, value_name = "FILE.gguf")]
    pub transformer: Option<String>,
    /// A step cache on the transformer (Flux, Wan, HunyuanVideo), as diffusers'
    /// `pipe.transformer.enable_cache(...)`: `first-block:0.2` (the threshold),
    /// `taylorseer:cache_interval=4,disable_cache_before_step=2,max_order=2` (options by the
    /// config's field names, `use_lite_mode=true`, `taylor_factors_dtype=float32`),
    /// `magcache:mag_ratios=flux,num_inference_steps=28`, `pab:...`, `fastercache:...`,
    /// `seacache:threshold=0.25` (Wan).
    #[arg(long, value_name = "METHOD[:OPTIONS]")]
    pub cache: Option<String>,
    /// A LoRA adapter: a .safetensors file (any layout diffusers reads: diffusers/PEFT, kohya,
    /// ComfyUI/BFL, XLabs) or a folder or hub repository holding one, with an optional weight
    /// (default 1.0). Repeat for several adapters mixed with their weights.
    #[arg(long, value_name = "FILE[:WEIGHT]")]
    pub lora: Vec<String>,
    /// Fold the --lora adapters into the weights before denoising (no per-step LoRA cost).
    #[arg(long)]
    pub fuse_lora: bool,
    /// Decode (and encode) in overlapping tiles, as diffusers' `pipe.vae.enable_tiling()`:
    /// large images and videos in bounded memory.
    #[arg(long)]
    pub vae_tiling: bool,
    /// Pass a batch through the VAE one element at a time (`pipe.vae.enable_slicing()`).
    #[arg(long)]
    pub vae_slicing: bool,
    /// Keep each component's weights in their files until its turn: `model` (whole components,
    /// `enable_model_cpu_offload`), `sequential` (layer by layer), `group` or `group:N` (N
    /// transformer blocks at a time, the next group loading while one runs).
    #[arg(long, value_name = "MODE")]
    pub offload: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// Weights variant, as diffusers' `variant=` (`fp16`: only `*.fp16.safetensors` are
    /// downloaded and loaded).
    #[arg(long)]
    pub variant: Option<String>,
    /// Use only the local hub cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// No progress bars or summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// The error and its causes on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = cause.source();
    }
    msg.replace('\n', " ")
}

/// mimalloc: burn-flex allocates a fresh buffer for most op outputs, and glibc's malloc
/// serves large ones with new mappings that are page-faulted in (zeroed) every time; mimalloc
/// reuses freed blocks (GroupNorm at [1, 320, 64, 64]: 4.4 ms -> 1.6 ms).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("error: internal error: {msg}");
    }));
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => {
            let level = if args.quiet { "error" } else { "warn" };
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false)
                .without_time()
                .init();
            match std::panic::catch_unwind(|| generate::run(&args)) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => {
                    eprintln!("error: {}", one_line(&e));
                    ExitCode::FAILURE
                }
                Err(_) => ExitCode::FAILURE,
            }
        }
    }
}
