//! `diffusers-bench`: runs one workload and prints its timings as one JSON line.
//!
//! ```text
//! diffusers-bench WORKLOAD [--dir DIR] [--scale tiny|real] [--warmup N] [--iters N]
//!                 [--device cpu|cuda[:N]] [--dtype f32|bf16|f16]
//! ```
//!
//! With `--dir`, the weights and inputs are read from `DIR/WORKLOAD/` as
//! `xtask/bench/torch_bench.py prepare DIR` wrote them (the `cargo xtask bench-vs-torch` mode);
//! without it they are random at `--scale` widths. CPU threads follow rayon's pool
//! (`RAYON_NUM_THREADS`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use diffusers_bench::{Scale, Source, measure};
use diffusers_core::backend::{Cpu, DeviceSpec, Precision};

/// mimalloc: burn-flex allocates a fresh buffer for most op outputs, and glibc's malloc
/// serves large ones with new mappings that are page-faulted in (zeroed) every time; mimalloc
/// reuses freed blocks (GroupNorm at [1, 320, 64, 64]: 4.4 ms -> 1.6 ms).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: diffusers-bench WORKLOAD [--dir DIR] [--scale tiny|real] \
    [--warmup N] [--iters N] [--device cpu|cuda[:N]] [--dtype f32|bf16|f16]";

fn main() -> Result<()> {
    // `footprint CONFIG`: weight bytes of a FLUX.1-sized transformer, dense and packed.
    if std::env::args().nth(1).as_deref() == Some("footprint") {
        let config = std::env::args()
            .nth(2)
            .context("footprint needs a FluxTransformer2DModel config.json")?;
        print!(
            "{}",
            diffusers_bench::flux_weight_footprint(config.as_ref())?
        );
        return Ok(());
    }
    let mut args = std::env::args().skip(1);
    let mut workload = None;
    let mut dir = None;
    let mut scale = Scale::Real;
    let mut warmup = 1usize;
    let mut iters = 5usize;
    let mut device = DeviceSpec::Cpu;
    let mut precision = Precision::F32;
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            "--scale" => {
                scale = match value("--scale")?.as_str() {
                    "tiny" => Scale::Tiny,
                    "real" => Scale::Real,
                    s => bail!("--scale {s}: expected tiny or real"),
                }
            }
            "--warmup" => warmup = value("--warmup")?.parse().context("--warmup")?,
            "--iters" => iters = value("--iters")?.parse().context("--iters")?,
            "--device" => device = value("--device")?.parse()?,
            "--dtype" => precision = value("--dtype")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with('-') => bail!("unknown flag {s}\n{USAGE}"),
            s => workload = Some(s.to_string()),
        }
    }
    let Some(workload) = workload else {
        bail!("{USAGE}");
    };
    let source = match dir {
        Some(d) => Source::Files(d.join(&workload)),
        None => Source::Random(scale),
    };
    let dtype = precision.into();
    let mut record = match device.ensure_compiled()? {
        DeviceSpec::Cpu => measure::<Cpu>(
            &workload,
            &source,
            dtype,
            &Default::default(),
            warmup,
            iters,
        )?,
        #[cfg(feature = "cuda")]
        spec @ DeviceSpec::Cuda(_) => {
            // DIFFUSERS_KERNEL_CACHE as the CLI reads it (`off` for a cold start); warm-up runs
            // keep compilation and autotuning out of the timings either way.
            use diffusers_core::backend::kernel_cache::{KernelCache, init_kernel_cache};
            let status = init_kernel_cache(&KernelCache::from_env());
            eprintln!("diffusers-bench: kernel cache {status:?}");
            measure::<diffusers_core::backend::Cuda>(
                &workload,
                &source,
                dtype,
                &spec.cuda_device(),
                warmup,
                iters,
            )?
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => bail!("this build has no CUDA backend (--features cuda)"),
    };
    record["device"] = device.to_string().into();
    record["threads"] = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .into();
    println!("{record}");
    Ok(())
}
