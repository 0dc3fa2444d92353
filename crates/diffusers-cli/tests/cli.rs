//! `diffusers generate` end to end against diffusers (`fixtures/pipelines/flux.*`, the tiny
//! FLUX.1-dev-style repository): `--latents` with array, latent and PNG outputs, `--seed` with
//! several images, a hub id downloaded from a local stand-in for the hub and then read offline,
//! and every user error as one line with a non-zero exit. f32 tolerance 1e-4 absolute on images
//! in [0, 1].

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Tensor;
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, HubServer, Tol, assert_close, fixtures_dir};
use diffusers_core::weights::Weights;

const IMAGE: Tol = Tol {
    atol: 1e-4,
    rtol: 0.0,
};

fn model() -> PathBuf {
    fixtures_dir().join("pipelines/tiny_flux")
}

/// Runs `diffusers generate PROMPT --model MODEL <tiny Flux flags> ARGS` in `dir`.
fn generate(dir: &Path, model: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut all = vec!["--height", "16", "--width", "24", "--steps", "3"];
    all.extend(["--guidance", "3.5", "--max-sequence-length", "8"]);
    all.extend(args);
    generate_raw(dir, model, &all, env)
}

/// Runs `diffusers generate "a photo of the cat" --model MODEL ARGS` in `dir`.
fn generate_raw(dir: &Path, model: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffusers"));
    cmd.current_dir(dir)
        .args(["generate", "a photo of the cat", "--model", model])
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run diffusers")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &Path, name: &str) -> Tensor<Cpu, 4> {
    let w = Weights::open(path).expect("open output");
    let info = w.info(name).expect("tensor").clone();
    assert_eq!(info.dtype, "F32");
    let data = w.read(name).expect("read").convert::<f32>();
    match info.shape.len() {
        4 => Tensor::from_data(data, &Default::default()),
        3 => Tensor::<Cpu, 3>::from_data(data, &Default::default()).unsqueeze_dim(0),
        n => panic!("unexpected rank {n}"),
    }
}

fn latents_file() -> String {
    fixtures_dir()
        .join("pipelines/flux_prompt_latents.safetensors")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn latents_to_array_matches_diffusers() {
    let fx = Fixture::open("pipelines/flux");
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model().to_string_lossy().into_owned();
    let out = generate(
        dir.path(),
        &m,
        &[
            "--latents",
            &latents_file(),
            "--output-type",
            "array",
            "-o",
            "out.safetensors",
        ],
        &[],
    );
    ok(&out);
    let images = read(&dir.path().join("out.safetensors"), "images");
    assert_eq!(images.dims(), [1, 16, 24, 3]);
    assert_close(
        images,
        &fx.values("flux_prompt.images"),
        None,
        IMAGE,
        "cli images",
    );

    let out = generate(
        dir.path(),
        &m,
        &[
            "--latents",
            &latents_file(),
            "--output-type",
            "latent",
            "-o",
            "lat.safetensors",
            "-q",
        ],
        &[],
    );
    ok(&out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latents = read(&dir.path().join("lat.safetensors"), "latents");
    assert_close(
        latents,
        &fx.values("flux_prompt.output_latents"),
        None,
        Tol {
            atol: 1e-4,
            rtol: 1e-4,
        },
        "cli latents",
    );
}

#[test]
fn latents_to_png_matches_diffusers_pixels() {
    let fx = Fixture::open("pipelines/flux");
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model().to_string_lossy().into_owned();
    let out = generate(
        dir.path(),
        &m,
        &["--latents", &latents_file(), "-o", "cat.png"],
        &[],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wrote cat.png") && stderr.contains("peak memory"),
        "{stderr}"
    );
    let (w, h, pixels) =
        diffusers_pipelines::image_processor::read_png(dir.path().join("cat.png")).expect("png");
    assert_eq!((w, h), (24, 16));
    let want = fx.values("flux_prompt.image_u8");
    let max = pixels
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f32 - b).abs())
        .fold(0.0, f32::max);
    assert!(max <= 1.0, "pixels differ by {max}");
}

#[test]
fn seed_and_num_images_match_diffusers() {
    let fx = Fixture::open("pipelines/flux");
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model().to_string_lossy().into_owned();
    let out = generate(
        dir.path(),
        &m,
        &[
            "--seed",
            "42",
            "--num-images",
            "2",
            "--output-type",
            "array",
            "-o",
            "a.safetensors",
        ],
        &[],
    );
    ok(&out);
    let images = read(&dir.path().join("a.safetensors"), "images");
    assert_eq!(images.dims(), [2, 16, 24, 3]);
    assert_close(
        images,
        &fx.values("flux_cli_seed.images"),
        None,
        IMAGE,
        "seeded",
    );
    // Several PNGs are numbered.
    let out = generate(
        dir.path(),
        &m,
        &["--seed", "42", "--num-images", "2", "-o", "x.png"],
        &[],
    );
    ok(&out);
    assert!(dir.path().join("x-0.png").is_file() && dir.path().join("x-1.png").is_file());
}

/// A hub id: downloaded through hf-hub from a local stand-in for the hub (`HF_ENDPOINT`) into
/// `HF_HUB_CACHE`, then run again from that cache with `--offline` and the server gone.
#[test]
fn hub_id_downloads_then_runs_offline() {
    let fx = Fixture::open("pipelines/flux");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("hub");
    let server = HubServer::serve("tiny-org/tiny-flux", &model());
    let endpoint = PathBuf::from(&server.endpoint);
    let latents = latents_file();
    let run = |out: &str, extra: &[&str], env: &[(&str, &Path)]| {
        let mut args = vec!["--latents", &latents, "--output-type", "array"];
        args.extend(["-o", out]);
        args.extend(extra);
        generate(dir.path(), "tiny-org/tiny-flux", &args, env)
    };
    let out = run(
        "h.safetensors",
        &[],
        &[("HF_HUB_CACHE", &cache), ("HF_ENDPOINT", &endpoint)],
    );
    ok(&out);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.ends_with("/resolve/main/transformer/diffusion_pytorch_model.safetensors")),
        "{:?}",
        server.requests()
    );
    let images = read(&dir.path().join("h.safetensors"), "images");
    assert_close(
        images,
        &fx.values("flux_prompt.images"),
        None,
        IMAGE,
        "hub images",
    );
    // A repository the hub does not have: one line naming it.
    let out = generate(
        dir.path(),
        "tiny-org/absent",
        &["-o", "a.png"],
        &[("HF_HUB_CACHE", &cache), ("HF_ENDPOINT", &endpoint)],
    );
    one_line_error(&out, "tiny-org/absent");
    drop(server);
    let out = run("o.safetensors", &["--offline"], &[("HF_HUB_CACHE", &cache)]);
    ok(&out);
    let images = read(&dir.path().join("o.safetensors"), "images");
    assert_close(
        images,
        &fx.values("flux_prompt.images"),
        None,
        IMAGE,
        "offline hub images",
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// `--variant fp16` (diffusers' `variant=`): only the variant's weight files are loaded, and from
/// the hub only they are downloaded. In this copy of the tiny repository every model's weights
/// are its `fp16` variant file, and the default file beside it is not a safetensors file.
#[test]
fn variant_loads_only_the_variant_weights() {
    let fx = Fixture::open("pipelines/flux");
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    copy_dir(&model(), &repo);
    for (component, name) in [
        ("transformer", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
    ] {
        let folder = repo.join(component);
        let default = folder.join(format!("{name}.safetensors"));
        std::fs::rename(&default, folder.join(format!("{name}.fp16.safetensors"))).expect("mv");
        std::fs::write(&default, b"not the variant").expect("write");
    }
    let latents = latents_file();
    let run = |model: &str, out: &str, extra: &[&str], env: &[(&str, &Path)]| {
        let mut args = vec!["--latents", &latents, "--output-type", "array", "-o", out];
        args.extend(extra);
        generate(dir.path(), model, &args, env)
    };
    let images_match = |out: &str| {
        let images = read(&dir.path().join(out), "images");
        assert_close(
            images,
            &fx.values("flux_prompt.images"),
            None,
            IMAGE,
            "variant images",
        );
    };

    let folder = repo.to_string_lossy().into_owned();
    ok(&run(&folder, "v.safetensors", &["--variant", "fp16"], &[]));
    images_match("v.safetensors");
    let out = run(&folder, "d.safetensors", &[], &[]);
    one_line_error(&out, "diffusion_pytorch_model.safetensors");
    // Without the default file, the error names the variant there is.
    let transformer = repo.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&transformer).expect("read");
    std::fs::remove_file(&transformer).expect("rm");
    let out = run(&folder, "d.safetensors", &[], &[]);
    one_line_error(&out, "the variant(s) fp16");
    std::fs::write(&transformer, bytes).expect("restore");

    let server = HubServer::serve("tiny-org/variant-flux", &repo);
    let (cache, endpoint) = (dir.path().join("hub"), PathBuf::from(&server.endpoint));
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", &endpoint),
    ];
    let out = run(
        "tiny-org/variant-flux",
        "h.safetensors",
        &["--variant", "fp16"],
        &env,
    );
    ok(&out);
    images_match("h.safetensors");
    let weights: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.ends_with(".safetensors"))
        .collect();
    assert_eq!(weights.len(), 4, "{weights:?}");
    assert!(
        weights.iter().all(|r| r.ends_with(".fp16.safetensors")),
        "{weights:?}"
    );
}

/// A gated hub repository: without `HF_TOKEN` one line saying what to do; with it, the image.
#[test]
fn gated_hub_id_needs_hf_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cache, home) = (dir.path().join("hub"), dir.path().join("home"));
    let server = HubServer::serve_gated("tiny-org/gated-flux", &model(), "hf_right");
    let endpoint = PathBuf::from(&server.endpoint);
    let latents = latents_file();
    let args = [
        "--latents",
        &latents,
        "--output-type",
        "array",
        "-o",
        "g.safetensors",
    ];
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", &endpoint),
        ("HF_HOME", &home),
        ("HF_TOKEN", Path::new("hf_wrong")),
    ];
    let out = generate(dir.path(), "tiny-org/gated-flux", &args, &env);
    one_line_error(&out, "HF_TOKEN");
    let mut env = env;
    env[3].1 = Path::new("hf_right");
    let out = generate(dir.path(), "tiny-org/gated-flux", &args, &env);
    ok(&out);
    let fx = Fixture::open("pipelines/flux");
    let images = read(&dir.path().join("g.safetensors"), "images");
    assert_close(
        images,
        &fx.values("flux_prompt.images"),
        None,
        IMAGE,
        "gated hub images",
    );
}

/// A user error: non-zero exit, one line on stderr starting with `error:`, no panic.
fn one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

#[test]
fn user_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model().to_string_lossy().into_owned();
    let cache = dir.path().join("empty-cache");
    std::fs::create_dir_all(&cache).expect("mkdir");

    // Unknown model: not a folder, and a hub id missing from the (offline) cache.
    let out = generate(dir.path(), "no such model", &[], &[]);
    one_line_error(&out, "no such model");
    let out = generate(
        dir.path(),
        "nobody/nothing",
        &["--offline"],
        &[("HF_HUB_CACHE", &cache)],
    );
    one_line_error(&out, "nobody/nothing");

    // Missing component.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::copy(
        model().join("model_index.json"),
        broken.join("model_index.json"),
    )
    .expect("copy");
    let out = generate(dir.path(), &broken.to_string_lossy(), &[], &[]);
    one_line_error(&out, "transformer");

    // Bad size.
    let out = generate(dir.path(), &m, &["--height", "18"], &[]);
    one_line_error(&out, "height and width must be positive multiples of");

    // Bad latents: wrong shape, wrong rank, wrong name, missing file.
    let bad = dir.path().join("bad.safetensors");
    let write = |name: &str, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let bytes = vec![0u8; n * 4];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
            .expect("view");
        safetensors::serialize_to_file([(name, view)], None, &bad).expect("write");
    };
    write("latents", vec![1, 7, 16]);
    let out = generate(dir.path(), &m, &["--latents", &bad.to_string_lossy()], &[]);
    one_line_error(&out, "latents have shape [1, 7, 16]");
    write("latents", vec![1, 4, 4, 6]);
    let out = generate(dir.path(), &m, &["--latents", &bad.to_string_lossy()], &[]);
    one_line_error(&out, "packed latents");
    write("noise", vec![1, 24, 16]);
    let out = generate(dir.path(), &m, &["--latents", &bad.to_string_lossy()], &[]);
    one_line_error(&out, "no tensor named `latents`");
    let out = generate(dir.path(), &m, &["--latents", "missing.safetensors"], &[]);
    one_line_error(&out, "missing.safetensors");

    // Unknown device and dtype; zero images; an output folder that does not exist.
    let out = generate(dir.path(), &m, &["--device", "tpu"], &[]);
    one_line_error(&out, "tpu");
    let out = generate(dir.path(), &m, &["--dtype", "f8"], &[]);
    one_line_error(&out, "f8");
    let out = generate(dir.path(), &m, &["--num-images", "0"], &[]);
    one_line_error(&out, "--num-images");
    let out = generate(dir.path(), &m, &["--seed", "1", "-o", "nowhere/x.png"], &[]);
    one_line_error(&out, "nowhere");
    let out = generate(dir.path(), &m, &["--max-sequence-length", "600"], &[]);
    one_line_error(&out, "max_sequence_length");

    // A NaN guidance scale (no silent NaN image); a request no device could hold (an error, not
    // the out-of-memory killer).
    let out = generate(dir.path(), &m, &["--guidance", "nan"], &[]);
    one_line_error(&out, "guidance_scale must be a finite number");
    let out = generate(dir.path(), &m, &["--num-images", "100000000000"], &[]);
    one_line_error(&out, "lower num_images_per_prompt");
    let out = generate(dir.path(), &m, &["--width", "1600000000"], &[]);
    one_line_error(&out, "lower num_images_per_prompt, height or width");

    // NaN latents of the right shape: the output would be NaN (diffusers writes black pixels):
    // an error, and no file.
    let shape = Weights::open(latents_file())
        .expect("fixture latents")
        .info("latents")
        .expect("latents")
        .shape
        .clone();
    let n: usize = shape.iter().product();
    let nan = f32::NAN.to_le_bytes().repeat(n);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &nan).expect("view");
    safetensors::serialize_to_file([("latents", view)], None, &bad).expect("write");
    for kind in ["image", "array", "latent"] {
        let out = generate(
            dir.path(),
            &m,
            &[
                "--latents",
                &bad.to_string_lossy(),
                "--output-type",
                kind,
                "-o",
                "nan.out",
            ],
            &[],
        );
        one_line_error(&out, "NaN or infinite values");
        assert!(!dir.path().join("nan.out").exists(), "{kind}");
    }
}

#[test]
fn bf16_runs_end_to_end() {
    // bf16 weights and activations on flex, compared with diffusers' f32 image.
    let fx = Fixture::open("pipelines/flux");
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model().to_string_lossy().into_owned();
    let out = generate(
        dir.path(),
        &m,
        &[
            "--latents",
            &latents_file(),
            "--dtype",
            "bf16",
            "--output-type",
            "array",
            "-o",
            "b.safetensors",
        ],
        &[],
    );
    ok(&out);
    let images = read(&dir.path().join("b.safetensors"), "images");
    let got: Vec<f32> = images
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("values");
    let want = fx.values("flux_prompt.images");
    assert_eq!(got.len(), want.len());
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    eprintln!("bf16 CLI max abs error vs diffusers f32: {err}");
    assert!(err < BF16_IMAGE_ATOL, "bf16 error {err}");
}

/// bf16 end to end: diffusers' own bf16 run of this case lands 2.1e-2 (max abs) from its f32
/// image, ours 2.5e-2 (the library test `bf16_end_to_end_on_flex` measures both).
const BF16_IMAGE_ATOL: f32 = 3e-2;

/// Writes an oracle input as the `latents` tensor of a safetensors file.
fn latents_from_fixture(stem: &str, key: &str, path: &Path) {
    let w = Weights::open(fixtures_dir().join(format!("{stem}.safetensors"))).expect("fixture");
    let info = w.info(key).expect("key").clone();
    let values: Vec<f32> = w
        .read(key)
        .expect("read")
        .convert::<f32>()
        .into_vec()
        .expect("f32");
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, info.shape, &bytes)
        .expect("view");
    safetensors::serialize_to_file([("latents", view)], None, path).expect("write");
}

fn sd_model(name: &str) -> String {
    fixtures_dir()
        .join("pipelines")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

const SD_ARGS: [&str; 8] = [
    "--height",
    "16",
    "--width",
    "24",
    "--guidance",
    "7.5",
    "--negative-prompt",
    "the red dog",
];

#[test]
fn stable_diffusion_schedulers_match_diffusers() {
    let fx = Fixture::open("pipelines/sd");
    let dir = tempfile::tempdir().expect("tempdir");
    // (case, model, --scheduler)
    for (case, model, scheduler) in [
        ("sd_euler", "tiny_sd", "EulerDiscreteScheduler"),
        ("sd2_dpm", "tiny_sd2", "dpmsolvermultistep"),
        ("sdxl_ddim", "tiny_sdxl", "DDIM"),
        ("sdxl_default", "tiny_sdxl", "EulerDiscrete"),
    ] {
        let lat = dir.path().join(format!("{case}_latents.safetensors"));
        latents_from_fixture("pipelines/sd", &format!("{case}.latents"), &lat);
        let out_file = format!("{case}.safetensors");
        let mut args = SD_ARGS.to_vec();
        let lat_s = lat.to_string_lossy().into_owned();
        args.extend([
            "--steps",
            "3",
            "--scheduler",
            scheduler,
            "--latents",
            &lat_s,
        ]);
        args.extend(["--output-type", "array", "-o", &out_file]);
        let out = generate_raw(dir.path(), &sd_model(model), &args, &[]);
        ok(&out);
        let images = read(&dir.path().join(&out_file), "images");
        assert_close(
            images,
            &fx.values(&format!("{case}.images")),
            None,
            IMAGE,
            case,
        );
    }
}

/// Repositories saved by diffusers with DPM-Solver schedulers (`"lambda_min_clipped":
/// -Infinity` in their scheduler config, Python's JSON) run from the CLI, seeded: diffusers' images.
#[test]
fn repositories_saved_with_dpm_solver_match_diffusers() {
    let fx = Fixture::open("pipelines/sd");
    let dir = tempfile::tempdir().expect("tempdir");
    for (case, model) in [
        ("sd_saved_dpm", "tiny_sd_dpm"),
        ("sd_saved_dpm_single", "tiny_sd_dpm_single"),
    ] {
        let out_file = format!("{case}.safetensors");
        let mut args = SD_ARGS.to_vec();
        args.extend(["--steps", "3", "--seed", "5"]);
        args.extend(["--output-type", "array", "-o", &out_file]);
        let out = generate_raw(dir.path(), &sd_model(model), &args, &[]);
        ok(&out);
        let images = read(&dir.path().join(&out_file), "images");
        assert_close(
            images,
            &fx.values(&format!("{case}.images")),
            None,
            IMAGE,
            case,
        );
    }
}

#[test]
fn stable_diffusion_seed_and_img2img_match_diffusers() {
    let fx = Fixture::open("pipelines/sd");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = SD_ARGS.to_vec();
    args.extend(["--steps", "3", "--seed", "42", "--num-images", "2"]);
    args.extend(["--scheduler", "EulerAncestralDiscreteScheduler"]);
    args.extend(["--output-type", "array", "-o", "s.safetensors"]);
    let out = generate_raw(dir.path(), &sd_model("tiny_sd2"), &args, &[]);
    ok(&out);
    let images = read(&dir.path().join("s.safetensors"), "images");
    assert_eq!(images.dims()[0], 2);
    assert_close(
        images,
        &fx.values("sd2_seed_ancestral.images"),
        None,
        IMAGE,
        "sd2 seed",
    );

    let input = fixtures_dir().join("pipelines/img2img_input.png");
    let input = input.to_string_lossy().into_owned();
    for (case, model) in [("sd_img2img", "tiny_sd"), ("sdxl_img2img", "tiny_sdxl")] {
        let out_file = format!("{case}.safetensors");
        let mut args = vec!["--guidance", "7.5", "--negative-prompt", "the red dog"];
        args.extend([
            "--image",
            &input,
            "--strength",
            "0.6",
            "--steps",
            "4",
            "--seed",
            "7",
        ]);
        args.extend(["--output-type", "array", "-o", &out_file]);
        let out = generate_raw(dir.path(), &sd_model(model), &args, &[]);
        ok(&out);
        let images = read(&dir.path().join(&out_file), "images");
        assert_close(
            images,
            &fx.values(&format!("{case}.images")),
            None,
            IMAGE,
            case,
        );
    }
}

#[test]
fn flux_img2img_matches_diffusers() {
    let fx = Fixture::open("pipelines/flux");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = fixtures_dir().join("pipelines/flux_img2img_input.png");
    let input = input.to_string_lossy().into_owned();
    let args = [
        "--image",
        &input,
        "--strength",
        "0.6",
        "--steps",
        "4",
        "--seed",
        "11",
        "--num-images",
        "2",
        "--guidance",
        "3.5",
        "--max-sequence-length",
        "8",
        "--output-type",
        "array",
        "-o",
        "f.safetensors",
    ];
    let out = generate_raw(dir.path(), &model().to_string_lossy(), &args, &[]);
    ok(&out);
    let images = read(&dir.path().join("f.safetensors"), "images");
    assert_close(
        images,
        &fx.values("flux_img2img.images"),
        None,
        IMAGE,
        "flux img2img",
    );
}

#[test]
fn pipeline_specific_flag_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model().to_string_lossy().into_owned();
    let out = generate(dir.path(), &m, &["--scheduler", "nope"], &[]);
    one_line_error(&out, "unknown scheduler `nope`");
    let out = generate(dir.path(), &m, &["--scheduler", "ddim"], &[]);
    one_line_error(&out, "FlowMatchEulerDiscreteScheduler only");
    let out = generate(dir.path(), &m, &["--clip-skip", "1"], &[]);
    one_line_error(&out, "--clip-skip is not used by FluxPipeline");
    let sd = sd_model("tiny_sd");
    let out = generate_raw(dir.path(), &sd, &["--max-sequence-length", "8"], &[]);
    one_line_error(&out, "--max-sequence-length is not used");
    let out = generate_raw(dir.path(), &sd, &["--latents", &latents_file()], &[]);
    one_line_error(&out, "latents [batch, 4, height / 8, width / 8]");
    let out = generate_raw(
        dir.path(),
        &sd,
        &["--scheduler", "FlowMatchEulerDiscrete"],
        &[],
    );
    one_line_error(&out, "not compatible");
    let out = generate_raw(dir.path(), &sd, &["--height", "12", "--width", "24"], &[]);
    one_line_error(&out, "12");
}

// ---- Video (WanPipeline): `fixtures/pipelines/wan.*`, the tiny Wan 2.1 repository. ----

fn wan_model() -> String {
    fixtures_dir()
        .join("pipelines/tiny_wan")
        .to_string_lossy()
        .into_owned()
}

/// Runs `diffusers generate "a red dog in the snow" --model tiny_wan <the fixture's knobs> ARGS`.
fn generate_wan(dir: &Path, args: &[&str]) -> Output {
    let latents = fixtures_dir().join("pipelines/wan_latents.safetensors");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffusers"));
    cmd.current_dir(dir)
        .args(["generate", "a red dog in the snow", "--model", &wan_model()])
        .args(["--num-frames", "5", "--height", "32", "--width", "32"])
        .args([
            "--steps",
            "3",
            "--guidance",
            "5",
            "--max-sequence-length",
            "16",
        ])
        .args(["--negative-prompt", "the cat with a hat"])
        .arg("--latents")
        .arg(latents)
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("RUST_LOG");
    cmd.output().expect("run diffusers")
}

/// `ffprobe`'s view of a video's first stream: codec, pixel format, width, height, frame rate
/// and decoded frame count. Debian's ffmpeg is the independent decoder (`.ci/run` installs it).
fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe is needed for the video tests: apt-get install ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    v["streams"][0].clone()
}

/// Decodes a video with ffmpeg to RGB bytes.
fn ffmpeg_rgb(path: &Path) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

#[test]
fn wan_video_outputs_match_diffusers() {
    let fx = Fixture::open("pipelines/wan");
    let dir = tempfile::tempdir().expect("tempdir");
    // The frames array: diffusers' `.frames` within the f32 bound.
    let out = generate_wan(
        dir.path(),
        &["--output-type", "array", "-o", "f.safetensors"],
    );
    ok(&out);
    let w = Weights::open(dir.path().join("f.safetensors")).expect("open");
    assert_eq!(
        w.info("frames").expect("frames").shape,
        vec![1, 5, 32, 32, 3]
    );
    let frames: Tensor<Cpu, 5> = Tensor::from_data(
        w.read("frames").expect("read").convert::<f32>(),
        &Default::default(),
    );
    assert_close(
        frames.clone(),
        &fx.values("wan_cfg.frames"),
        None,
        IMAGE,
        "cli frames",
    );
    let ours: Vec<u8> = fx
        .values("wan_cfg.frames")
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();

    // MP4: H.264 yuv420p at the asked fps, 5 frames of 32x32, decoded close to ours.
    let out = generate_wan(dir.path(), &["--fps", "8", "-o", "v.mp4"]);
    ok(&out);
    let s = ffprobe(&dir.path().join("v.mp4"));
    assert_eq!(s["codec_name"], "h264", "{s}");
    assert_eq!(s["pix_fmt"], "yuv420p", "{s}");
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(32), Some(32))
    );
    assert_eq!(s["r_frame_rate"], "8/1", "{s}");
    assert_eq!(s["nb_read_frames"], "5", "{s}");
    // The tiny model's random weights give pixel noise, whose colour 4:2:0 subsampling cannot
    // keep (measured 29.5 dB here); export_video's tests hold the 30 dB bound on smooth content
    // (32.3-34.3 dB). This checks that the decoded video is our frames, not noise of its own.
    let p = psnr(&ffmpeg_rgb(&dir.path().join("v.mp4")), &ours);
    assert!(p >= 25.0, "MP4 PSNR {p:.1} dB");

    // GIF: 5 frames of 32x32 (palette quantisation: a lower but bounded PSNR).
    let out = generate_wan(dir.path(), &["-o", "v.gif"]);
    ok(&out);
    let s = ffprobe(&dir.path().join("v.gif"));
    assert_eq!(s["codec_name"], "gif", "{s}");
    assert_eq!(s["nb_read_frames"], "5", "{s}");
    let p = psnr(&ffmpeg_rgb(&dir.path().join("v.gif")), &ours);
    assert!(p >= 20.0, "GIF PSNR {p:.1} dB");

    // A folder of PNG frames, exactly our 8-bit frames.
    let out = generate_wan(dir.path(), &["-o", "frames"]);
    ok(&out);
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("frames"))
        .expect("frames folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    let (w, h, first) =
        diffusers_pipelines::image_processor::read_png(dir.path().join("frames").join(&names[0]))
            .expect("png");
    assert_eq!((w, h), (32, 32));
    assert_eq!(first, ours[..32 * 32 * 3]);
}

#[test]
fn wan_user_errors_are_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tpl = tempfile::tempdir().expect("tempdir");
    let template = tpl.path().join("t.json");
    std::fs::write(&template, r#"{"template": "say {}", "crop_start": 1}"#).expect("write");
    let template = template.to_string_lossy().into_owned();
    for (args, needle) in [
        (&["--num-frames", "6", "-o", "a.mp4"][..], "4k + 1"),
        (&["--height", "24", "-o", "a.mp4"][..], "multiples of 16"),
        (&["-o", "a.png"][..], "makes videos"),
        (
            &["--clip-skip", "1", "-o", "a.mp4"][..],
            "--clip-skip is not used by WanPipeline",
        ),
        (
            &["--fps", "0", "-o", "a.mp4"][..],
            "--fps must be at least 1",
        ),
        (
            &["--prompt-template", &template, "-o", "a.mp4"][..],
            "--prompt-template is not used by WanPipeline",
        ),
    ] {
        let out = generate_wan(dir.path(), args);
        one_line_error(&out, needle);
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "files written: {left:?}");
    // Video flags on an image pipeline.
    let m = model().to_string_lossy().into_owned();
    let out = generate(dir.path(), &m, &["--num-frames", "5"], &[]);
    one_line_error(&out, "--num-frames is not used by FluxPipeline");
    let out = generate(dir.path(), &m, &["--fps", "8"], &[]);
    one_line_error(&out, "--fps is not used by FluxPipeline");
    let out = generate(dir.path(), &m, &["-o", "x.mp4"], &[]);
    one_line_error(&out, "makes images");
}

#[test]
fn hunyuan_video_with_a_prompt_template_matches_diffusers() {
    let fx = Fixture::open("pipelines/hunyuan_video");
    let dir = tempfile::tempdir().expect("tempdir");
    let pipelines = fixtures_dir().join("pipelines");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffusers"));
    cmd.current_dir(dir.path())
        .args(["generate", "a red dog in the snow", "--model"])
        .arg(pipelines.join("tiny_hunyuan_video"))
        .args(["--num-frames", "5", "--height", "32", "--width", "32"])
        .args([
            "--steps",
            "3",
            "--guidance",
            "6",
            "--max-sequence-length",
            "8",
        ])
        .arg("--prompt-template")
        .arg(pipelines.join("hunyuan_video_template.json"))
        .arg("--latents")
        .arg(pipelines.join("hunyuan_video_latents.safetensors"))
        .args(["--output-type", "array", "-o", "f.safetensors"])
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("RUST_LOG");
    let out = cmd.output().expect("run diffusers");
    ok(&out);
    let w = Weights::open(dir.path().join("f.safetensors")).expect("open");
    assert_eq!(
        w.info("frames").expect("frames").shape,
        vec![1, 5, 32, 32, 3]
    );
    let frames: Tensor<Cpu, 5> = Tensor::from_data(
        w.read("frames").expect("read").convert::<f32>(),
        &Default::default(),
    );
    assert_close(
        frames,
        &fx.values("hv_latents.frames"),
        None,
        IMAGE,
        "cli frames",
    );
}

/// `--transformer FILE.gguf`: the tiny Flux repository with its transformer from the single-file
/// GGUF fixture (stage `gguf_flux`) gives diffusers' `from_single_file` image; on a Stable
/// Diffusion repository it is a one-line error.
#[test]
fn gguf_transformer_matches_diffusers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = fixtures_dir().join("quantization");
    let gguf = q.join("tiny_flux_transformer.gguf");
    let latents = q.join("flux_pipeline.safetensors");
    let m = model().to_string_lossy().into_owned();
    let out = generate(
        dir.path(),
        &m,
        &[
            "--transformer",
            &gguf.to_string_lossy(),
            "--latents",
            &latents.to_string_lossy(),
            "--output-type",
            "array",
            "-o",
            "out.safetensors",
        ],
        &[],
    );
    ok(&out);
    let fx = Fixture::open("quantization/gguf_flux");
    // f32 on both sides with the same dequantized weights: f32 matmul summation order
    // (measured 2.3e-5).
    assert_close(
        read(&dir.path().join("out.safetensors"), "images"),
        &fx.values("gguf.images"),
        None,
        IMAGE,
        "cli gguf images",
    );
    let sd = sd_model("tiny_sd");
    let out = generate_raw(
        dir.path(),
        &sd,
        &["--transformer", &gguf.to_string_lossy(), "-o", "sd.png"],
        &[],
    );
    one_line_error(&out, "only FluxPipeline takes a single-file transformer");
}

/// `--lora FILE[:WEIGHT]`: two adapters mixed with their weights give diffusers' image after
/// `set_adapters(["a", "b"], [0.7, 0.5])` (stage `lora`, `flux_two`); `--fuse-lora` gives the
/// unfused adapter's image; the summary names each adapter with the layers it touched; a LoRA
/// for another model and `--fuse-lora` alone are one-line errors.
#[test]
fn lora_flags_mix_and_fuse_adapters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lora = |name: &str| {
        fixtures_dir()
            .join(format!("lora/{name}.safetensors"))
            .to_string_lossy()
            .into_owned()
    };
    let latents = fixtures_dir().join("quantization/flux_pipeline.safetensors");
    let latents = latents.to_string_lossy().into_owned();
    let m = model().to_string_lossy().into_owned();
    let fx = Fixture::open("lora/lora");
    let (a, b) = (
        format!("{}:0.7", lora("flux_peft")),
        format!("{}:0.5", lora("flux_kohya")),
    );
    let out = generate(
        dir.path(),
        &m,
        &[
            "--lora",
            &a,
            "--lora",
            &b,
            "--latents",
            &latents,
            "--output-type",
            "array",
            "-o",
            "two.safetensors",
        ],
        &[],
    );
    ok(&out);
    assert_close(
        read(&dir.path().join("two.safetensors"), "images"),
        &fx.values("flux_two.image"),
        None,
        IMAGE,
        "cli two adapters",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lora flux_peft x0.7: 24 layers")
            && stderr.contains("lora flux_kohya x0.5: 21 layers"),
        "{stderr}"
    );
    let peft = lora("flux_peft");
    let out = generate(
        dir.path(),
        &m,
        &[
            "--lora",
            &peft,
            "--fuse-lora",
            "--latents",
            &latents,
            "--output-type",
            "array",
            "-o",
            "fused.safetensors",
        ],
        &[],
    );
    ok(&out);
    // Fused into the f32 weights: the same image up to the rounding of W + BA.
    assert_close(
        read(&dir.path().join("fused.safetensors"), "images"),
        &fx.values("flux_peft.image"),
        None,
        IMAGE,
        "cli fused adapter",
    );
    let sdxl = lora("sdxl_kohya");
    let out = generate(dir.path(), &m, &["--lora", &sdxl, "-o", "x.png"], &[]);
    one_line_error(&out, "match no layer");
    let out = generate(dir.path(), &m, &["--fuse-lora", "-o", "x.png"], &[]);
    one_line_error(&out, "--fuse-lora needs --lora");
    assert!(!dir.path().join("x.png").exists());
}

/// `--offload MODE`: the pipeline loads with no weight read and each component is loaded for
/// its turn; the image is diffusers' (offloading changes nothing in the numbers) and the summary
/// names the mode and the peak host memory. A mode that cannot work is a one-line error.
#[test]
fn offload_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let latents = fixtures_dir().join("quantization/flux_pipeline.safetensors");
    let m = model().to_string_lossy().into_owned();
    for mode in ["model", "sequential", "group:2"] {
        let out = generate(
            dir.path(),
            &m,
            &[
                "--offload",
                mode,
                "--latents",
                &latents.to_string_lossy(),
                "--output-type",
                "array",
                "-o",
                "offloaded.safetensors",
            ],
            &[],
        );
        ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("offload {mode}")) && stderr.contains("MiB host"),
            "{stderr}"
        );
        let fx = Fixture::open("lora/lora");
        assert_close(
            read(&dir.path().join("offloaded.safetensors"), "images"),
            &fx.values("flux_base.image"),
            None,
            IMAGE,
            "cli with offload",
        );
    }
    let out = generate(
        dir.path(),
        &m,
        &["--offload", "group:0", "-o", "x.png"],
        &[],
    );
    one_line_error(&out, "at least 1");
    let out = generate(dir.path(), &m, &["--offload", "disk", "-o", "x.png"], &[]);
    one_line_error(&out, "unknown offload mode `disk`");
}

/// `--vae-tiling --vae-slicing` reach the VAE: on the tiny Flux repository (whose VAE tiles are
/// 32 pixels, larger than the 16x24 image) the image is diffusers' untiled one, as diffusers'
/// `enable_tiling()` leaves it at this size (the tiled paths themselves are compared with
/// diffusers in the VAE tests).
#[test]
fn vae_tiling_and_slicing_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let latents = fixtures_dir().join("quantization/flux_pipeline.safetensors");
    let m = model().to_string_lossy().into_owned();
    let out = generate(
        dir.path(),
        &m,
        &[
            "--vae-tiling",
            "--vae-slicing",
            "--latents",
            &latents.to_string_lossy(),
            "--output-type",
            "array",
            "-o",
            "tiled.safetensors",
        ],
        &[],
    );
    ok(&out);
    let fx = Fixture::open("lora/lora");
    assert_close(
        read(&dir.path().join("tiled.safetensors"), "images"),
        &fx.values("flux_base.image"),
        None,
        IMAGE,
        "cli with vae tiling",
    );
}

/// `--cache first-block:0.2` on the tiny Flux repository: diffusers' image with the same cache
/// (`fixtures/cache`, 10 steps from the committed latents) within 1e-4, and the summary line
/// says how many transformer calls ran fully (8 of 10, as diffusers' hooks decided). Unknown
/// methods and options are one-line errors listing the valid ones.
#[test]
fn cache_flag_matches_diffusers_and_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model().to_string_lossy().into_owned();
    let latents = latents_file();
    let mut args = vec!["--height", "16", "--width", "24", "--steps", "10"];
    args.extend(["--guidance", "3.5", "--max-sequence-length", "8"]);
    args.extend(["--latents", &latents, "--output-type", "array"]);
    args.extend(["-o", "fbc.safetensors", "--cache", "first-block:0.2"]);
    let out = generate_raw(dir.path(), &m, &args, &[]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cache first-block: 8 of 10 transformer calls computed fully"),
        "{stderr}"
    );
    let fx = Fixture::open("cache/cache");
    assert_close(
        read(&dir.path().join("fbc.safetensors"), "images"),
        &fx.values("flux_fbc_0.2.image"),
        None,
        IMAGE,
        "cli with first-block cache",
    );
    // MagCache calibration prints the ratios to pass as mag_ratios: diffusers' calibrating run's
    // (fixtures/cache `flux_magcache_calibrate`) to 5 decimals.
    let mut args = vec!["--height", "16", "--width", "24", "--steps", "10"];
    args.extend(["--guidance", "3.5", "--max-sequence-length", "8"]);
    args.extend(["--latents", &latents, "--output-type", "latent"]);
    args.extend(["-o", "cal.safetensors"]);
    args.extend(["--cache", "magcache:calibrate=true,num_inference_steps=10"]);
    let out = generate_raw(dir.path(), &m, &args, &[]);
    ok(&out);
    let theirs: Vec<f64> = fx.case("flux_magcache_calibrate")["calibration_ratios"]
        .as_array()
        .expect("ratios")
        .iter()
        .map(|x| x.as_f64().expect("ratio"))
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("cache magcache (cond): mag_ratios="))
        .unwrap_or_else(|| panic!("no calibration line in {stderr}"));
    let ours: Vec<f64> = line.split('/').map(|x| x.parse().expect("ratio")).collect();
    assert_eq!(ours.len(), theirs.len(), "{line}");
    for (a, b) in ours.iter().zip(&theirs) {
        // Printed to 5 decimals: up to 5e-6 of rounding on top of the f32 ratios' own error.
        assert!((a - b).abs() <= 1e-5, "{line}");
    }
    let out = generate(dir.path(), &m, &["--cache", "teacache:0.2"], &[]);
    one_line_error(
        &out,
        "unknown cache method `teacache` (valid: first-block, taylorseer, magcache, pab, fastercache, seacache)",
    );
    let out = generate(dir.path(), &m, &["--cache", "taylorseer:interval=4"], &[]);
    one_line_error(&out, "unknown option `interval` (valid: cache_interval");
    let out = generate(dir.path(), &m, &["--cache", "first-block:-1"], &[]);
    one_line_error(&out, "threshold must be a non-negative number, got -1");
}
