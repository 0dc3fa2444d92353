//! `cargo xtask bench-vs-torch`: the same workloads in diffusers-rs and in eager PyTorch.
//!
//! 1. `xtask/bench/torch_bench.py prepare DIR` writes each workload's weights and inputs
//!    (seeded, f32 safetensors) under `DIR/<workload>/`;
//! 2. the Rust side, `diffusers-bench` built in release mode, and the PyTorch side,
//!    `torch_bench.py run`, read those same files; each process prepares the workload (not
//!    timed), runs it `warmup` times untimed and `iters` times timed, and prints its timings and
//!    its peak resident memory (`VmHWM`) as JSON;
//! 3. the processes alternate (Rust, PyTorch, PyTorch, Rust, ... over `rounds` rounds) with the
//!    same thread count (`RAYON_NUM_THREADS` for rayon, which burn's flex and gemm use;
//!    `torch.set_num_threads` and `OMP_NUM_THREADS` for PyTorch), so load from other processes
//!    on the machine hits both sides alike;
//! 4. the table gives the median over all timed iterations of all rounds for each side, their
//!    ratio, the largest peak RSS of any round, and the achieved GFLOP/s where FLOPs are counted.
//!    Every timing is also written to `target/bench-vs-torch.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const WORKLOADS: &[&str] = &[
    "matmul",
    "conv_64",
    "conv_320",
    "attn_flux",
    "attn_sd",
    "groupnorm",
    "flux_double",
    "flux_single",
    "unet_down",
    "vae_decoder",
    "wan_block",
    "wan_vae_decode",
    "tiny_pipeline",
    "flux_steps",
    "flux_steps_fbc",
    "load_1gb",
    "linear_dense",
    "linear_nf4",
    "flux_double_nf4",
    "flux_double_lora",
    "flux_double_lora_fused",
    "vae_decode_1024",
    "vae_decode_1024_tiled",
    "sd15_pipeline",
    "sd15_pipeline_offload",
];
const CUDA_WORKLOADS: &[&str] = &[
    "matmul_ceiling",
    "flux_dev_step",
    "flux_dev_double",
    "flux_dev_single",
];

/// What each workload is, for the table.
fn describe(name: &str) -> &'static str {
    match name {
        "matmul" => "matmul 1024x1024 @ 1024x1024",
        "conv_64" => "conv 3x3 64->64, [1,64,64,64]",
        "conv_320" => "conv 3x3 320->320, [1,320,64,64]",
        "attn_flux" => "SDPA [1,24,1280,128]",
        "attn_sd" => "SDPA [2,8,4096,40]",
        "groupnorm" => "GroupNorm(32) [1,320,64,64]",
        "flux_double" => "Flux double block, 3072 wide, 1024+256 tokens",
        "flux_single" => "Flux single block, 3072 wide, 1024+256 tokens",
        "unet_down" => "SD1.5 CrossAttnDownBlock2D 320ch, 64x64, 77x768 text",
        "vae_decoder" => "SD VAE decode 4x32x32 -> 3x256x256",
        "wan_block" => "Wan 2.1 1.3B block, 1536 wide, 1560+512 tokens",
        "wan_vae_decode" => "Wan VAE decode 16x2x32x32 -> 3x5x256x256",
        "tiny_pipeline" => "tiny_flux pipeline, 16x24, 4 steps",
        "flux_steps" => {
            "FLUX.1-width transformer (1 double + 1 single block), 64+16 tokens, 8 steps"
        }
        "flux_steps_fbc" => "the same with first-block cache (threshold 0.65)",
        "load_1gb" => "load 1 GiB safetensors (16 x 4096x4096 f32)",
        "matmul_ceiling" => "matmul 8192^3 (ceiling)",
        "flux_dev_step" => {
            "FLUX.1-dev transformer (random weights, real config), one step at 1024x1024: 4096+512 tokens"
        }
        "flux_dev_double" => "one FLUX.1-dev double-stream block, 4096+512 tokens",
        "flux_dev_single" => "one FLUX.1-dev single-stream block, 4096+512 tokens",
        "linear_dense" => "Linear 3072->12288, 512 tokens, f32 weight",
        "linear_nf4" => {
            "Linear 3072->12288, 512 tokens, NF4 weight (bitsandbytes on the torch side)"
        }
        "flux_double_nf4" => {
            "Flux double block as flux_double, NF4 Linears (diffusers + bitsandbytes)"
        }
        "flux_double_lora" => {
            "Flux double block as flux_double, rank-16 LoRA on its 14 Linears, unfused (PEFT)"
        }
        "flux_double_lora_fused" => "the same LoRA fused into the weights (fuse_lora)",
        "vae_decode_1024" => "SD VAE decode 4x128x128 -> 3x1024x1024, whole",
        "vae_decode_1024_tiled" => "the same with enable_tiling() (512-pixel tiles)",
        "sd15_pipeline" => "SD 1.5-sized pipeline (random weights), 256x256, 2 steps, CFG",
        "sd15_pipeline_offload" => {
            "the same, ours with model offload (torch: none, it needs an accelerator)"
        }
        _ => "",
    }
}

/// `(warmup, timed iterations per process, rounds)` for each workload.
fn plan(name: &str, quick: bool, cuda: bool) -> (usize, usize, usize) {
    if quick {
        return (1, 2, 1);
    }
    let (w, k, r) = match name {
        "matmul" | "conv_64" | "groupnorm" => (3, 20, 3),
        "conv_320" | "tiny_pipeline" | "matmul_ceiling" => (2, 10, 3),
        "attn_flux" | "attn_sd" => (1, 5, 3),
        "load_1gb" => (1, 3, 3),
        // The block rows move with the machine's load by 10-20 % from run to run: more rounds,
        // so the medians hold still (the whole table is about 6 minutes on 2 cores).
        "unet_down" => (1, 3, 4),
        "vae_decoder" | "wan_vae_decode" => (1, 2, 3),
        "vae_decode_1024" | "vae_decode_1024_tiled" => (0, 1, 2),
        "sd15_pipeline" | "sd15_pipeline_offload" => (0, 2, 2),
        "wan_block" => (1, 2, 4),
        "flux_steps" | "flux_steps_fbc" => (1, 2, 2),
        // GPU time is short: one round; the warm-up also autotunes (and compiles, for
        // torch.compile).
        "flux_dev_step" => (2, 5, 1),
        "flux_dev_double" | "flux_dev_single" => (2, 10, 1),
        "flux_double"
        | "flux_single"
        | "flux_double_nf4"
        | "flux_double_lora"
        | "flux_double_lora_fused" => (1, 2, 4),
        "linear_dense" | "linear_nf4" => (1, 5, 3),
        _ => (1, 3, 2),
    };
    if cuda && !name.starts_with("flux_dev") {
        (w.max(3), k.max(10), r)
    } else {
        (w, k, r)
    }
}

/// Whether `torch_bench.py run --compile` can compile the workload (one module per run).
fn compilable(name: &str) -> bool {
    name.starts_with("flux_dev")
}

#[derive(Default)]
struct Side {
    times: Vec<f64>,
    peak_rss: u64,
    /// Peak device memory (CUDA): PyTorch's max_memory_allocated, our allocator's reserved bytes.
    device_peak: u64,
    flops: Option<f64>,
    records: Vec<Value>,
}

impl Side {
    fn add(&mut self, v: Value) {
        if let Some(t) = v["times_s"].as_array() {
            self.times.extend(t.iter().filter_map(Value::as_f64));
        }
        self.peak_rss = self.peak_rss.max(v["peak_rss_bytes"].as_u64().unwrap_or(0));
        let device = v["cuda_peak_allocated_bytes"]
            .as_u64()
            .or(v["device_reserved_bytes"].as_u64());
        self.device_peak = self.device_peak.max(device.unwrap_or(0));
        self.flops = self.flops.or(v["flops"].as_f64());
        self.records.push(v);
    }

    fn median(&self) -> Option<f64> {
        let mut t = self.times.clone();
        if t.is_empty() {
            return None;
        }
        t.sort_by(f64::total_cmp);
        let n = t.len();
        Some(if n % 2 == 1 {
            t[n / 2]
        } else {
            (t[n / 2 - 1] + t[n / 2]) / 2.0
        })
    }
}

fn last_json(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON line in the output")?;
    Ok(serde_json::from_str(line)?)
}

fn run_json(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    last_json(&out.stdout).with_context(|| format!("{cmd:?}"))
}

fn fmt_time(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s >= 1.0 => format!("{s:.2} s"),
        Some(s) if s >= 1e-3 => format!("{:.1} ms", s * 1e3),
        Some(s) => format!("{:.0} µs", s * 1e6),
    }
}

fn fmt_mib(b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{} MiB", b >> 20)
    }
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    // The GPU too, where there is one (the CUDA rows are about it).
    let gpu = Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', "; ")
        })
        .filter(|g| !g.is_empty())
        .map_or(String::new(), |g| format!(", GPU {g}"));
    format!("{model}, {cpus} CPUs{gpu}")
}

/// Runs the comparison; `args` as after `cargo xtask bench-vs-torch`. `venv` gives the
/// oracle's Python environment, used unless `--python` names another interpreter.
///
/// On a machine without a Rust toolchain (the GPU machine), `--bin PATH` runs a prebuilt
/// `diffusers-bench` instead of building one and `--python python3` uses the system's PyTorch;
/// `--compile [MODE]` adds a third side, PyTorch with `torch.compile`, where a workload has one
/// module to compile; `--tiny` prepares the GPU-only workloads at CPU sizes (a smoke test);
/// `--out FILE` is where every timing goes (default `target/bench-vs-torch.json`).
pub fn bench_vs_torch(
    args: &[String],
    venv: impl FnOnce() -> Result<PathBuf>,
    root: &Path,
) -> Result<()> {
    let mut quick = false;
    let mut keep = false;
    let mut tiny = false;
    let mut bin = None;
    let mut py = None;
    let mut compile: Option<String> = None;
    let mut out = None;
    let mut device = "cpu".to_string();
    let mut dtype = None;
    let mut threads = 2usize;
    let mut rounds_override = None;
    let mut dir = None;
    let mut names: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--device" => device = value("--device")?,
            "--dtype" => dtype = Some(value("--dtype")?),
            "--threads" => threads = value("--threads")?.parse()?,
            "--rounds" => rounds_override = Some(value("--rounds")?.parse::<usize>()?),
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            "--bin" => bin = Some(PathBuf::from(value("--bin")?)),
            "--python" => py = Some(PathBuf::from(value("--python")?)),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--tiny" => tiny = true,
            "--compile" => compile = Some("default".into()),
            s if s.starts_with("--compile=") => compile = Some(s["--compile=".len()..].into()),
            s if s.starts_with('-') => bail!("unknown flag {s}"),
            s => names.push(s.to_string()),
        }
    }
    let cuda = device.starts_with("cuda");
    let dtype = dtype.unwrap_or_else(|| if cuda { "bf16" } else { "f32" }.into());
    let known: Vec<&str> = WORKLOADS
        .iter()
        .chain(if cuda || tiny { CUDA_WORKLOADS } else { &[] })
        .copied()
        .collect();
    if names.is_empty() {
        names = known.iter().map(|s| s.to_string()).collect();
    }
    if let Some(bad) = names.iter().find(|n| !known.contains(&n.as_str())) {
        bail!("unknown workload {bad}; known: {}", known.join(" "));
    }

    let py = match py {
        Some(p) => p,
        None => venv()?,
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // The Rust side, in release mode (prebuilt with --bin).
    let bin = match bin {
        Some(b) => b,
        None => {
            let mut build = Command::new("cargo");
            build
                .current_dir(root)
                .args(["build", "--release", "-p", "diffusers-bench"]);
            if cuda {
                build.args(["--features", "cuda"]);
            }
            crate::run(&mut build)?;
            target.join("release/diffusers-bench")
        }
    };

    // The shared weights and inputs.
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("diffusers-bench-vs-torch-{}", std::process::id())),
            !keep,
        ),
    };
    let script = root.join("xtask/bench/torch_bench.py");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !dir.join(n).join("meta.json").exists())
        .collect();
    if !missing.is_empty() {
        crate::run(
            Command::new(&py)
                .arg(&script)
                .arg("prepare")
                .arg(&dir)
                .args(&missing)
                .args(["--device", &device])
                .args(tiny.then_some("--tiny")),
        )?;
    }

    let threads_s = threads.to_string();
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for name in &names {
        let (warmup, iters, rounds) = plan(name, quick, cuda);
        let rounds = rounds_override.unwrap_or(rounds);
        let (warmup_s, iters_s) = (warmup.to_string(), iters.to_string());
        let mut rs = Side::default();
        let mut torch = Side::default();
        let mut compiled = Side::default();
        // The compiled side runs where the workload has one module to compile.
        let compile_here = compile.as_deref().filter(|_| compilable(name));
        let sides = if compile_here.is_some() { 3 } else { 2 };
        let torch_cmd = |mode: Option<&str>| {
            let mut cmd = Command::new(&py);
            cmd.arg(&script)
                .arg("run")
                .arg(&dir)
                .arg(name)
                .args(["--warmup", &warmup_s, "--iters", &iters_s])
                .args(["--threads", &threads_s])
                .args(["--device", &device, "--dtype", &dtype])
                .env("OMP_NUM_THREADS", &threads_s)
                .env("MKL_NUM_THREADS", &threads_s)
                .env("TRANSFORMERS_VERBOSITY", "error")
                .env("HF_HUB_OFFLINE", "1");
            if let Some(mode) = mode {
                cmd.arg(format!("--compile={mode}"));
            }
            cmd
        };
        for round in 0..rounds {
            // Each round starts with the next side: Rust first in round 0, PyTorch in round 1.
            for turn in 0..sides {
                match (round + turn) % sides {
                    0 => {
                        eprintln!("xtask: {name} round {round}: diffusers-rs");
                        rs.add(run_json(
                            Command::new(&bin)
                                .arg(name)
                                .arg("--dir")
                                .arg(&dir)
                                .args(["--warmup", &warmup_s, "--iters", &iters_s])
                                .args(["--device", &device, "--dtype", &dtype])
                                .env("RAYON_NUM_THREADS", &threads_s),
                        )?);
                    }
                    1 => {
                        eprintln!("xtask: {name} round {round}: torch");
                        torch.add(run_json(&mut torch_cmd(None))?);
                    }
                    _ => {
                        eprintln!("xtask: {name} round {round}: torch.compile");
                        compiled.add(run_json(&mut torch_cmd(compile_here))?);
                    }
                }
            }
        }
        let (a, b) = (rs.median(), torch.median());
        let c = compiled.median();
        let gflops = |side: &Side, t: Option<f64>| match (side.flops, t) {
            (Some(f), Some(t)) if t > 0.0 => format!("{:.0}", f / t / 1e9),
            _ => "-".into(),
        };
        rows.push(vec![
            format!("{name}: {}", describe(name)),
            fmt_time(a),
            fmt_time(b),
            match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            },
            fmt_mib(rs.peak_rss),
            fmt_mib(torch.peak_rss),
            gflops(&rs, a),
            gflops(&torch, b),
            format!("{}x{}", rounds, iters),
        ]);
        if compile.is_some() {
            let row = rows.last_mut().expect("pushed above");
            row.push(fmt_time(c));
            row.push(match (a, c) {
                (Some(a), Some(c)) if c > 0.0 => format!("{:.2}", a / c),
                _ => "-".into(),
            });
            row.push(gflops(&compiled, c));
        }
        if cuda {
            let row = rows.last_mut().expect("pushed above");
            row.push(fmt_mib(rs.device_peak));
            row.push(fmt_mib(torch.device_peak));
        }
        all.push(json!({
            "workload": name,
            "diffusers_rs": {"median_s": a, "peak_rss_bytes": rs.peak_rss, "runs": rs.records},
            "torch": {"median_s": b, "peak_rss_bytes": torch.peak_rss, "runs": torch.records},
            "torch_compile": {"median_s": c, "mode": compile_here, "runs": compiled.records},
        }));
    }
    if temporary {
        std::fs::remove_dir_all(&dir).ok();
    }

    let mut head = vec![
        "workload",
        "diffusers-rs median",
        "PyTorch median",
        "ratio (rs / torch)",
        "rs peak RSS",
        "torch peak RSS",
        "rs GFLOP/s",
        "torch GFLOP/s",
        "timed runs per side",
    ];
    if compile.is_some() {
        head.extend([
            "torch.compile median",
            "ratio (rs / compiled)",
            "compiled GFLOP/s",
        ]);
    }
    if cuda {
        head.extend(["rs device peak", "torch device peak"]);
    }
    let mut table = format!(
        "machine: {}; device {device}, {dtype}, {threads} threads\n\n| {} |\n|{}\n",
        machine(),
        head.join(" | "),
        "---|".repeat(head.len())
    );
    for r in &rows {
        writeln!(table, "| {} |", r.join(" | "))?;
    }
    println!("{table}");
    let out = out.unwrap_or_else(|| target.join("bench-vs-torch.json"));
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&json!({
            "machine": machine(),
            "device": device,
            "dtype": dtype,
            "threads": threads,
            "compile": compile,
            "workloads": all,
        }))?,
    )?;
    eprintln!("xtask: every timing in {}", out.display());
    Ok(())
}
