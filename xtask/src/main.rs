//! Project tasks.
//!
//! - `cargo xtask fixtures [--check] [STAGE...]`: regenerate the oracle fixtures under
//!   `fixtures/` with the pinned Python environment (created in `xtask/oracle/.venv` on first
//!   use); `--check` writes them to a temporary folder and fails if any byte differs from the
//!   committed ones.
//! - `cargo xtask oracle-env`: create or update the pinned Python environment only.
//! - `cargo xtask cuda-bundle [--bench] [TEST...]`: build the test binaries with the `cuda` feature (as CI
//!   does) into `.device/` (only the named test targets, e.g. `layers transformers`, when given) together
//!   with a script that runs them (`--ignored` CUDA tests included) on a machine with an NVIDIA
//!   GPU and no Rust toolchain.
//! - `cargo xtask bench-vs-torch [--quick] [--device cpu|cuda] [--dtype f32|bf16] [--threads N]
//!   [--rounds N] [--dir DIR] [--keep] [WORKLOAD...]`: the same workloads in diffusers-rs
//!   (`diffusers-bench`, release build) and in eager PyTorch (`xtask/bench/torch_bench.py`),
//!   on the same weights and inputs, interleaved, and one table of medians and peak memory
//!   (see `bench.rs` and `docs/PERFORMANCE.md`); `--compile` adds `torch.compile`, and
//!   `--bin`/`--python` run it where there is no Rust toolchain (the GPU machine).
//! - `cargo xtask cuda-bundle --bench`: instead of the test binaries, the release
//!   `diffusers-bench`, CLI and xtask with the `cuda` feature and `xtask/device/issue19.sh`,
//!   which measures on a GPU machine what issue 19 asks (see that script).

mod bench;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The repository: the working directory when it is one (a prebuilt xtask run from another
/// checkout, as on the GPU machine), else the one this xtask was built in.
fn root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir()
        && cwd.join("xtask/bench/torch_bench.py").exists()
    {
        return cwd;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn python() -> Result<PathBuf> {
    let root = root();
    let venv = root.join("xtask/oracle/.venv");
    let py = venv.join("bin/python");
    let stamp = venv.join(".requirements");
    let req = std::fs::read_to_string(root.join("xtask/oracle/requirements.txt"))?;
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(req.as_str()) {
        run(Command::new(&py)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(root.join("xtask/oracle/requirements.txt")))?;
        std::fs::write(&stamp, &req)?;
    }
    Ok(py)
}

fn files_under(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            files_under(&p, base, out)?;
        } else {
            out.push(p.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

fn fixtures(args: &[String]) -> Result<()> {
    let check = args.iter().any(|a| a == "--check");
    let stages: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let py = python()?;
    let root = root();
    let out = if check {
        std::env::temp_dir().join(format!("diffusers-fixtures-{}", std::process::id()))
    } else {
        root.join("fixtures")
    };
    run(Command::new(py)
        .arg(root.join("xtask/oracle/oracle.py"))
        .arg(&out)
        .args(&stages)
        .env("HF_HUB_OFFLINE", "1")
        .env("PYTHONHASHSEED", "0"))?;
    if check {
        let mut files = Vec::new();
        files_under(&out, &out, &mut files)?;
        let mut differ = Vec::new();
        for f in &files {
            let a = std::fs::read(out.join(f))?;
            let b = std::fs::read(root.join("fixtures").join(f)).unwrap_or_default();
            if a != b {
                differ.push(f.display().to_string());
            }
        }
        std::fs::remove_dir_all(&out)?;
        if !differ.is_empty() {
            bail!(
                "fixtures differ from the committed ones: {}",
                differ.join(", ")
            );
        }
        eprintln!(
            "xtask: {} fixture files regenerate byte for byte",
            files.len()
        );
    }
    Ok(())
}

/// Builds the release binaries issue 19's device script runs (`diffusers-bench` and the CLI with
/// the `cuda` feature, and this xtask for `bench-vs-torch` there) into `bin`, and fetches the
/// diffusers wheel the GPU machine lacks into `.whl/` (its other packages are installed there).
fn bench_binaries(root: &Path, bin: &Path) -> Result<()> {
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "diffusers-bench",
        "-p",
        "diffusers-cli",
        "--features",
        "diffusers-bench/cuda,diffusers-cli/cuda",
    ]))?;
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "-p", "xtask"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for name in ["diffusers-bench", "diffusers", "xtask"] {
        std::fs::copy(target.join("release").join(name), bin.join(name))?;
    }
    run(Command::new(python()?)
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .args(["--python-version", "3.12", "--implementation", "cp"])
        .args(["--platform", "manylinux_2_28_x86_64", "-d"])
        .arg(root.join(".whl"))
        .args(["diffusers==0.42.1", "importlib_metadata==10.2.0"]))?;
    Ok(())
}

fn cuda_bundle(args: &[String]) -> Result<()> {
    let bench = args.iter().any(|a| a == "--bench");
    let named: Vec<String> = args.iter().filter(|a| *a != "--bench").cloned().collect();
    // With --bench, the test binaries issue19.sh runs unless others are named.
    let only: Vec<String> = if bench && named.is_empty() {
        ["pipelines", "transformers", "layers"]
            .map(String::from)
            .to_vec()
    } else {
        named
    };
    let only = only.as_slice();
    let root = root();
    let bundle = root.join(".device");
    if bundle.exists() {
        std::fs::remove_dir_all(&bundle)?;
    }
    std::fs::create_dir_all(bundle.join("bin"))?;
    if bench {
        bench_binaries(&root, &bundle.join("bin"))?;
    }
    let output = Command::new("cargo")
        .current_dir(&root)
        .args([
            // The same build as CI's test build (dependencies optimised): nothing recompiles.
            "test",
            "--no-run",
            "--workspace",
            "--all-features",
            "--tests",
            "--message-format",
            "json",
        ])
        .output()?;
    if !output.status.success() {
        bail!(
            "cargo test --no-run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut copied = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = v["target"]["name"].as_str().unwrap_or_default();
        let wanted = only.is_empty() || only.iter().any(|o| o == target);
        if let Some(exe) = v["executable"]
            .as_str()
            .filter(|e| !e.contains("xtask") && wanted)
        {
            let name = Path::new(exe).file_name().context("exe name")?.to_owned();
            std::fs::copy(exe, bundle.join("bin").join(&name))?;
            copied.push(name.to_string_lossy().into_owned());
        }
    }
    for e in std::fs::read_dir(bundle.join("bin"))? {
        run(Command::new("strip").arg(e?.path()))?;
    }
    // The device carries at most 64 MiB: the stripped binaries go compressed, with a dictionary
    // larger than a binary so that the code they share (burn, cubecl: most of each) is stored
    // once (the flux test binary, flux_pipeline, layers and the CLI: 25.5 MB with this one; six test binaries
    // and the CLI: 34.5 MB, where xz's default dictionary had passed 58 MB for five of them and
    // the CLI before it was stopped).
    run(Command::new("tar")
        .current_dir(&bundle)
        .env("XZ_OPT", "-T1 --lzma2=preset=6,dict=320MiB")
        .args(["cJf", "bins.tar.xz", "bin"]))?;
    std::fs::remove_dir_all(bundle.join("bin"))?;
    std::fs::copy(root.join("xtask/device/run.sh"), bundle.join("run.sh"))?;
    std::fs::copy(
        root.join("xtask/device/issue19.sh"),
        bundle.join("issue19.sh"),
    )?;
    let size = std::fs::metadata(bundle.join("bins.tar.xz"))?.len();
    if size > 60 << 20 {
        bail!(
            "the bundle is {} MiB; the device carries 64 MiB: bundle fewer tests",
            size >> 20
        );
    }
    if bench {
        eprintln!(
            "xtask: bundled {copied:?} and the release binaries; on the GPU machine run: sh .device/issue19.sh (carry .device, .whl and .kernel-cache)"
        );
    } else {
        eprintln!("xtask: bundled {copied:?}; on the GPU machine run: sh .device/run.sh");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fixtures") => fixtures(&args[1..]),
        Some("oracle-env") => python().map(|_| ()),
        Some("cuda-bundle") => cuda_bundle(&args[1..]),
        Some("bench-vs-torch") => bench::bench_vs_torch(&args[1..], python, &root()),
        _ => bail!(
            "usage: cargo xtask <fixtures [--check] [STAGE...] | oracle-env | cuda-bundle [TEST...] | bench-vs-torch [--quick] [WORKLOAD...]>"
        ),
    }
}
