//! `AutoencoderKLHunyuanVideo` against diffusers (`fixtures/vae/autoencoder_kl_hunyuan_video.*`, a
//! tiny random HunyuanVideo VAE in `fixtures/vae/hunyuan_video_tiny`: channels 4, 8, 8, 8 (a
//! shortcut conv at the channel change), two groups per norm, spatial downsampling in the first
//! three levels and temporal in the middle two, mid attention with the causal frame mask, norms
//! moved off their initial values): the posterior of a 9-frame 16x16 video, decodes of 3 latent
//! frames (9 frames out) and of 1, bf16 against diffusers' own bf16 error, the errors, and the
//! real HunyuanVideo VAE parameter layout.

use burn::prelude::Backend;
use burn::tensor::{DType, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_vae::Error;
use diffusers_vae::autoencoder_kl_hunyuan_video::{
    AutoencoderKLHunyuanVideo, AutoencoderKLHunyuanVideoConfig, VideoVaeTiling,
};

/// f32 parity: measured max abs error 8.3e-6 on both decodes (values up to 2), 1.4e-6 on the
/// posterior: summation order in the convolutions, group norms and attention, through about 40
/// layers.
const F32: Tol = Tol {
    atol: 1e-4,
    rtol: 0.0,
};

/// bf16 weights and activations (group norm statistics in f32), against diffusers' f32 outputs:
/// measured max abs error 1.4e-1 on the 9-frame decode (values up to 1; 1.3e-1 on the 1-frame
/// one), 1.1e-2 on the mean, 1.6e-2 on the log-variance: bf16 rounding of every activation
/// through about 40 layers. diffusers itself in bf16 is 9.4e-2 (decode) and 9.6e-3 (mean) off its f32 outputs (the
/// `*_bf16` fixtures).
const BF16: Tol = Tol {
    atol: 1.6e-1,
    rtol: 5e-2,
};

/// A parity case: an output of diffusers and the shape ours must have.
struct Case {
    /// The output's key under `hunyuan_video_tiny.`.
    output: &'static str,
    /// Its shape.
    shape: [usize; 5],
}

/// The outputs compared, in the order `check_parity` computes them.
const CASES: [Case; 4] = [
    Case {
        output: "mean",
        shape: [1, 4, 3, 2, 2],
    },
    Case {
        output: "logvar",
        shape: [1, 4, 3, 2, 2],
    },
    Case {
        output: "decoded",
        shape: [1, 3, 9, 16, 16],
    },
    Case {
        output: "decoded_one_frame",
        shape: [1, 3, 1, 16, 16],
    },
];

fn load<B: Backend>(device: &B::Device, dtype: DType) -> AutoencoderKLHunyuanVideo<B> {
    let dtype_arg = (dtype != DType::F32).then_some(dtype);
    let (vae, _) = AutoencoderKLHunyuanVideo::<B>::from_folder(
        fixtures_dir().join("vae/hunyuan_video_tiny"),
        dtype_arg,
        device,
    )
    .expect("load");
    vae
}

fn check_parity<B: Backend>(device: &B::Device, dtype: DType, tol: Tol) {
    let fx = Fixture::open("vae/autoencoder_kl_hunyuan_video");
    let vae = load::<B>(device, dtype);
    let input = |name: &str| -> Tensor<B, 5> {
        fx.tensor(&format!("hunyuan_video_tiny.{name}"), device, dtype)
    };
    let posterior = vae.encode(input("video")).expect("encode");
    let decoded = vae.decode(input("latents")).expect("decode");
    let decoded_one = vae
        .decode(input("latents_one_frame"))
        .expect("decode one frame");
    assert_eq!(decoded.dtype(), dtype);
    let ours = [posterior.mean, posterior.logvar, decoded, decoded_one];
    for (case, got) in CASES.iter().zip(ours) {
        let key = format!("hunyuan_video_tiny.{}", case.output);
        assert_eq!(got.dims(), case.shape, "{key}");
        assert_close(
            got,
            &fx.values(&key),
            None,
            tol,
            &format!("{key} {dtype:?}"),
        );
    }
}

#[test]
fn encode_and_decode_match_diffusers() {
    check_parity::<Cpu>(&Default::default(), DType::F32, F32);
}

#[test]
fn bf16_runs_close_to_f32() {
    check_parity::<Cpu>(&Default::default(), DType::BF16, BF16);
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the device machine"]
fn cuda_f32_and_bf16() {
    let device = Default::default();
    check_parity::<diffusers_core::backend::Cuda>(
        &device,
        DType::F32,
        diffusers_core::testing::TF32,
    );
    check_parity::<diffusers_core::backend::Cuda>(&device, DType::BF16, BF16);
}

#[test]
fn invalid_inputs_configs_and_weights_are_errors() {
    let dev = Default::default();
    let folder = fixtures_dir().join("vae/hunyuan_video_tiny");
    let (vae, config) =
        AutoencoderKLHunyuanVideo::<Cpu>::from_folder(&folder, None, &dev).expect("load");
    assert_eq!((config.spatial_factor(), config.temporal_factor()), (8, 4));
    assert_eq!(vae.scaling_factor(), 0.476986);
    let video = |shape: [usize; 5]| Tensor::<Cpu, 5>::zeros(shape, &dev);
    for (shape, why) in [
        ([1, 3, 8, 16, 16], "8 frames is not 1 + 4k"),
        ([1, 3, 0, 16, 16], "no frames"),
        ([1, 3, 5, 12, 16], "height not a multiple of 8"),
        ([1, 3, 5, 16, 20], "width not a multiple of 8"),
        ([1, 4, 5, 16, 16], "4 channels"),
        ([0, 3, 5, 16, 16], "empty batch"),
    ] {
        assert!(
            matches!(vae.encode(video(shape)), Err(Error::InvalidInput { .. })),
            "encode: {why}"
        );
    }
    for (shape, why) in [
        ([1, 3, 2, 2, 2], "3 latent channels"),
        ([1, 4, 0, 2, 2], "no latent frames"),
        ([1, 4, 1, 0, 2], "no latent rows"),
    ] {
        assert!(
            matches!(vae.decode(video(shape)), Err(Error::InvalidInput { .. })),
            "decode: {why}"
        );
    }

    for (json, why) in [
        (r#"{"block_out_channels": []}"#, "no levels"),
        (
            r#"{"down_block_types": ["DownEncoderBlock2D", "HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D", "HunyuanVideoDownBlock3D"]}"#,
            "another down block type",
        ),
        (
            r#"{"up_block_types": ["HunyuanVideoUpBlock3D"]}"#,
            "one up block for four levels",
        ),
        (r#"{"temporal_compression_ratio": 8}"#, "time ratio 8"),
        (r#"{"spatial_compression_ratio": 6}"#, "space ratio 6"),
        (r#"{"act_fn": "gelu"}"#, "gelu"),
        (r#"{"layers_per_block": 0}"#, "no resnets"),
        (
            r#"{"norm_num_groups": 48}"#,
            "channels not a multiple of the groups",
        ),
        (r#"{"latent_channels": 0}"#, "no latent channels"),
    ] {
        let c: AutoencoderKLHunyuanVideoConfig = serde_json::from_str(json).expect("json");
        assert!(
            matches!(
                AutoencoderKLHunyuanVideo::<Cpu>::new(&c, &dev),
                Err(Error::InvalidConfig { .. })
            ),
            "{why}"
        );
    }

    // The tiny weights under a config asking for 5 latent channels: a shape mismatch, not a
    // panic.
    let dir = std::env::temp_dir().join(format!("hunyuan_vae_mismatch_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).expect("config"))
            .expect("json");
    json["latent_channels"] = 5.into();
    std::fs::write(dir.join("config.json"), json.to_string()).expect("write");
    std::fs::copy(
        folder.join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .expect("copy");
    let err =
        AutoencoderKLHunyuanVideo::<Cpu>::from_folder(&dir, None, &dev).expect_err("mismatch");
    assert!(
        matches!(
            err,
            Error::Core(diffusers_core::Error::ShapeMismatch { .. })
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The work split as diffusers splits it (`fixtures/vae/autoencoder_kl_hunyuan_video_tiling.*`):
/// framewise decoding of 7 latent frames and encoding of 25 frames (on by default, each ending in
/// a one-frame window that is all overlap), then with tiles of 16x16 pixels every 8 a spatially
/// tiled decode and encode of one frame and a decode both framewise and tiled; slicing over a
/// batch of two gives the unsliced output; tile sizes that do not cut whole latent pixels or
/// frames are refused.
#[test]
fn framewise_and_tiled_passes_match_diffusers() {
    let dev = Default::default();
    let fx = Fixture::open("vae/autoencoder_kl_hunyuan_video_tiling");
    let mut vae = load::<Cpu>(&dev, DType::F32);
    let tensor = |name: &str| -> Tensor<Cpu, 5> {
        fx.tensor(&format!("hunyuan_video_tiny.{name}"), &dev, DType::F32)
    };
    let check = |got: Tensor<Cpu, 5>, shape: [usize; 5], name: &str| {
        assert_eq!(got.dims(), shape, "{name}");
        let key = format!("hunyuan_video_tiny.{name}");
        assert_close(got, &fx.values(&key), None, F32, &key);
    };
    let mut seen = Vec::new();
    let decoded = vae
        .decode_with_progress(tensor("latents_long"), &mut |done, total| {
            seen.push((done, total))
        })
        .expect("decode");
    // Windows start at latent frames 0, 3 and 6: one report after each.
    assert_eq!(seen, [(5, 7), (7, 7), (7, 7)]);
    check(decoded, [1, 3, 25, 16, 16], "decoded_long");
    let mean = vae.encode(tensor("video_long")).expect("encode").mean;
    check(mean, [1, 4, 7, 1, 1], "mean_long");

    let case = fx.case("hunyuan_video_tiny");
    let size = |k: &str| case[k].as_u64().expect("tile size") as usize;
    vae.set_tiling(VideoVaeTiling {
        use_tiling: true,
        tile_sample_min_height: size("tile_sample_min_height"),
        tile_sample_min_width: size("tile_sample_min_width"),
        tile_sample_stride_height: size("tile_sample_stride_height"),
        tile_sample_stride_width: size("tile_sample_stride_width"),
        ..AutoencoderKLHunyuanVideo::<Cpu>::default_tiling()
    })
    .expect("tile sizes");
    let decoded = vae.decode(tensor("latents_wide")).expect("tiled decode");
    check(decoded, [1, 3, 1, 32, 24], "decoded_wide");
    let mean = vae.encode(tensor("video_wide")).expect("tiled encode").mean;
    check(mean, [1, 4, 1, 4, 3], "mean_wide");
    let decoded = vae
        .decode(tensor("latents_both"))
        .expect("framewise tiled decode");
    check(decoded, [1, 3, 17, 24, 16], "decoded_both");

    // Slicing: a batch of two decoded one element at a time is the batch decoded at once.
    let batch = Tensor::cat(
        vec![tensor("latents_wide"), tensor("latents_wide") * 0.5],
        0,
    );
    let whole = vae.decode(batch.clone()).expect("batch");
    vae.enable_slicing();
    let sliced = vae.decode(batch).expect("sliced");
    let diff = (whole - sliced).abs().max().into_scalar();
    assert_eq!(diff, 0.0, "slicing changes nothing");

    let default = AutoencoderKLHunyuanVideo::<Cpu>::default_tiling();
    for (tiling, why) in [
        (
            VideoVaeTiling {
                tile_sample_min_height: 12,
                ..default.clone()
            },
            "a tile of 12 pixels is not whole latent pixels",
        ),
        (
            VideoVaeTiling {
                tile_sample_stride_num_frames: 6,
                ..default.clone()
            },
            "a stride of 6 frames is not whole latent frames",
        ),
        (
            VideoVaeTiling {
                tile_sample_stride_width: 0,
                ..default.clone()
            },
            "a zero stride",
        ),
        (
            VideoVaeTiling {
                tile_sample_stride_height: 512,
                ..default.clone()
            },
            "a stride beyond its tile",
        ),
        (
            VideoVaeTiling {
                tile_sample_stride_width: 256,
                ..default.clone()
            },
            "a stride equal to its tile: no overlap",
        ),
    ] {
        assert!(
            matches!(vae.set_tiling(tiling), Err(Error::InvalidInput { .. })),
            "{why}"
        );
    }
}

#[test]
fn real_config_gives_the_real_parameter_layout() {
    // The real HunyuanVideo VAE config parses with its values, and the model built from it has
    // exactly diffusers' parameter names and shapes (recorded by the oracle on the meta device).
    // No parameter is allocated: shapes are read lazily.
    use diffusers_core::weights::module_shapes;
    let dir = fixtures_dir().join("real_configs");
    let config: AutoencoderKLHunyuanVideoConfig =
        diffusers_core::config::load_config(dir.join("hunyuanvideo/vae/config.json"))
            .expect("real config parses");
    assert_eq!(
        (
            config.latent_channels,
            config.layers_per_block,
            config.scaling_factor
        ),
        (16, 2, 0.476986)
    );
    assert_eq!((config.spatial_factor(), config.temporal_factor()), (8, 4));
    let model = AutoencoderKLHunyuanVideo::<Cpu>::new(&config, &Default::default()).expect("build");
    let ours = module_shapes(&model, None);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("hunyuan_video_vae_params.json")).expect("params"),
    )
    .expect("json");
    let theirs: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_value(expected["hunyuanvideo"]["params"].clone()).expect("map");
    assert_eq!(ours.len(), theirs.len(), "parameter count");
    assert_eq!(ours, theirs);
}
