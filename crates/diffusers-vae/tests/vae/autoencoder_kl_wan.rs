//! `AutoencoderKLWan` against diffusers (`fixtures/vae/autoencoder_kl_wan.*`, a tiny random Wan
//! 2.1 VAE in `fixtures/vae/wan_tiny`: four levels, temporal downsampling in the last two, mid
//! attention): the posterior of a 9-frame 16x16 video (frame 0, then two chunks of 4 through the
//! feature cache), decodes of 3 latent frames (9 frames out, through upsample3d's first-chunk
//! handling) and of 1, WanPipeline's latent denormalisation, the errors, and the real
//! Wan2.1-T2V-1.3B parameter layout; and `enable_tiling`'s tiled decode and encode
//! (`fixtures/vae/autoencoder_kl_wan_tiling.*`).

use burn::prelude::Backend;
use burn::tensor::{DType, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_vae::Error;
use diffusers_vae::autoencoder_kl_wan::{
    AutoencoderKLWan, AutoencoderKLWanConfig, AutoencoderKLWanTiling,
};

/// f32 parity: measured max abs error 3.4e-6 on the 9-frame decode (1.1e-7 on the 1-frame one,
/// 2.4e-7 on the posterior): summation order in the convolutions and channel norms, compounded
/// through about 30 layers.
const F32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

/// bf16 weights and activations (norm statistics in f32), against diffusers' f32 outputs:
/// measured max abs error 4.9e-2 on the 9-frame decode (values up to 1), 3.4e-3 on the
/// posterior. diffusers itself in bf16 is 1.0e-1 (decode) and 2.6e-3 (mean) off its f32 outputs.
const BF16: Tol = Tol {
    atol: 8e-2,
    rtol: 4e-2,
};

/// The outputs compared, in the order `check_parity` computes them.
const OUTPUTS: [&str; 4] = ["mean", "logvar", "decoded", "decoded_one_frame"];

fn check_parity<B: Backend>(device: &B::Device, dtype: DType, tol: Tol) {
    let fx = Fixture::open("vae/autoencoder_kl_wan");
    let dtype_arg = (dtype != DType::F32).then_some(dtype);
    let (vae, _) =
        AutoencoderKLWan::<B>::from_folder(fixtures_dir().join("vae/wan_tiny"), dtype_arg, device)
            .expect("load");
    let video: Tensor<B, 5> = fx.tensor("wan_tiny.video", device, dtype);
    let posterior = vae.encode(video).expect("encode");
    let latents: Tensor<B, 5> = fx.tensor("wan_tiny.latents", device, dtype);
    let one: Tensor<B, 5> = fx.tensor("wan_tiny.latents_one_frame", device, dtype);
    let decoded = vae.decode(latents).expect("decode");
    let decoded_one = vae.decode(one).expect("decode one frame");
    assert_eq!(decoded.dims(), [1, 3, 9, 16, 16]);
    assert_eq!(decoded_one.dims(), [1, 3, 1, 16, 16]);
    assert_eq!(posterior.mean.dims(), [1, 4, 3, 2, 2]);
    assert_eq!(decoded.dtype(), dtype);
    let ours = [posterior.mean, posterior.logvar, decoded, decoded_one];
    for (name, got) in OUTPUTS.iter().zip(ours) {
        let key = format!("wan_tiny.{name}");
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

/// `enable_slicing`: a batch of two goes through encode and decode one element at a time, each
/// element's output equal to what the unsliced batch gives it (per-element work: the same
/// operations on the same values, so bit for bit), with decode progress over both elements.
#[test]
fn slicing_gives_the_unsliced_outputs() {
    let dev = Default::default();
    let fx = Fixture::open("vae/autoencoder_kl_wan");
    let (mut vae, _) =
        AutoencoderKLWan::<Cpu>::from_folder(fixtures_dir().join("vae/wan_tiny"), None, &dev)
            .expect("load");
    let video: Tensor<Cpu, 5> = fx.tensor("wan_tiny.video", &dev, DType::F32);
    let latents: Tensor<Cpu, 5> = fx.tensor("wan_tiny.latents", &dev, DType::F32);
    let videos = Tensor::cat(vec![video.clone(), video * 0.5], 0);
    let batch = Tensor::cat(vec![latents.clone(), latents * -1.0], 0);
    let whole = (
        vae.encode(videos.clone()).expect("encode"),
        vae.decode(batch.clone()).expect("decode"),
    );
    vae.enable_slicing();
    let sliced_posterior = vae.encode(videos).expect("sliced encode");
    let mut seen = Vec::new();
    let sliced = vae
        .decode_with_progress(batch, &mut |d, t| seen.push((d, t)))
        .expect("sliced decode");
    assert_eq!(seen, [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]);
    for (a, b, what) in [
        (whole.0.mean, sliced_posterior.mean, "mean"),
        (whole.0.logvar, sliced_posterior.logvar, "logvar"),
        (whole.1, sliced, "decoded"),
    ] {
        let diff = (a - b).abs().max().into_scalar();
        assert_eq!(diff, 0.0, "{what}");
    }
}

/// Tiled decode and encode against diffusers' `enable_tiling(16, 16, 8, 8)` on the tiny VAE
/// (2x2 latent tiles every latent pixel): 3 latent frames of 4x3 latents decoded (4 x 3 tiles,
/// each through its own feature cache, blended over 8 pixels) and a 5-frame 32x24 video encoded
/// (4 x 3 tiles of 16x16 pixels, blended over one latent pixel).
fn check_tiling<B: Backend>(device: &B::Device, tol: Tol) {
    let fx = Fixture::open("vae/autoencoder_kl_wan_tiling");
    let case = fx.case("wan_tiny");
    let (mut vae, _) =
        AutoencoderKLWan::<B>::from_folder(fixtures_dir().join("vae/wan_tiny"), None, device)
            .expect("load");
    let size = |k: &str| case[k].as_u64().expect("tile size") as usize;
    vae.set_tiling(AutoencoderKLWanTiling {
        use_tiling: true,
        tile_sample_min_height: size("tile_sample_min_height"),
        tile_sample_min_width: size("tile_sample_min_width"),
        tile_sample_stride_height: size("tile_sample_stride_height"),
        tile_sample_stride_width: size("tile_sample_stride_width"),
        ..Default::default()
    })
    .expect("tile sizes");
    let latents: Tensor<B, 5> = fx.tensor("wan_tiny.latents", device, DType::F32);
    let video: Tensor<B, 5> = fx.tensor("wan_tiny.video", device, DType::F32);
    let mut seen = Vec::new();
    let decoded = vae
        .decode_with_progress(latents, &mut |d, t| seen.push((d, t)))
        .expect("tiled decode");
    // 12 tiles of 3 latent frames: one report per latent frame of each tile.
    assert_eq!(seen.len(), 36);
    assert_eq!(seen.last(), Some(&(36, 36)));
    let posterior = vae.encode(video).expect("tiled encode");
    for (got, shape, name) in [
        (decoded, [1, 3, 9, 32, 24], "decoded"),
        (posterior.mean, [1, 4, 2, 4, 3], "mean"),
        (posterior.logvar, [1, 4, 2, 4, 3], "logvar"),
    ] {
        let key = format!("wan_tiny.{name}");
        assert_close(got, &fx.values(&key), Some(&shape), tol, &key);
    }
}

/// f32 parity of the tiled paths, within [`F32`]: measured max abs error 4.1e-6 on the decode
/// (the one-pass decode's 3.4e-6 on its 9 frames: summation order in the convolutions and
/// channel norms of each tile; the blends are convex combinations of tiles), 1.3e-7 on the mean
/// and 1.2e-7 on the logvar.
#[test]
fn tiling_matches_diffusers() {
    check_tiling::<Cpu>(&Default::default(), F32);
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the device machine"]
fn cuda_tiling_matches_diffusers() {
    check_tiling::<diffusers_core::backend::Cuda>(
        &Default::default(),
        diffusers_core::testing::TF32,
    );
}

/// The tiled path is what `tiling_matches_diffusers` compares: diffusers' tiled outputs are far
/// from its one-pass ones (recorded by the oracle) and from ours; latents no larger than a tile
/// take the one pass even with tiling on; `enable_tiling()` keeps diffusers' 256/192 defaults;
/// tiles that cannot work are one-line errors.
#[test]
fn tiling_changes_the_output_and_refuses_bad_tiles() {
    let dev = Default::default();
    let fx = Fixture::open("vae/autoencoder_kl_wan_tiling");
    let case = fx.case("wan_tiny");
    let recorded = |k: &str| case[k].as_f64().expect("recorded difference");
    // Measured 1.20 on the decode and 0.21 on the mean.
    assert!(recorded("untiled_decoded_max_abs_diff") > 0.5);
    assert!(recorded("untiled_mean_max_abs_diff") > 0.1);
    let folder = fixtures_dir().join("vae/wan_tiny");
    let (mut vae, config) =
        AutoencoderKLWan::<Cpu>::from_folder(&folder, None, &dev).expect("load");
    let latents: Tensor<Cpu, 5> = fx.tensor("wan_tiny.latents", &dev, DType::F32);
    let one_pass = vae.decode(latents).expect("decode");
    let diff = (one_pass - fx.tensor::<Cpu, 5>("wan_tiny.decoded", &dev, DType::F32))
        .abs()
        .max()
        .into_scalar();
    assert!(diff > 0.5, "one pass vs diffusers' tiled decode: {diff}");

    vae.enable_tiling().expect("default tiles");
    assert_eq!(
        vae.tiling(),
        &AutoencoderKLWanTiling {
            use_tiling: true,
            ..Default::default()
        }
    );
    assert_eq!(
        (
            vae.tiling().tile_sample_min_height,
            vae.tiling().tile_sample_stride_width
        ),
        (256, 192)
    );
    // 2x2 latents fit one 16x16-pixel tile: the one pass, bit for bit.
    let small = Fixture::open("vae/autoencoder_kl_wan");
    let latents: Tensor<Cpu, 5> = small.tensor("wan_tiny.latents", &dev, DType::F32);
    let untiled = vae.decode(latents.clone()).expect("default tiles");
    let tiles = AutoencoderKLWanTiling {
        use_tiling: true,
        tile_sample_min_height: 16,
        tile_sample_min_width: 16,
        tile_sample_stride_height: 8,
        tile_sample_stride_width: 8,
        ..Default::default()
    };
    vae.set_tiling(tiles.clone()).expect("tiles");
    let diff = (untiled - vae.decode(latents).expect("small"))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(diff, 0.0);

    for (tiling, why) in [
        (
            AutoencoderKLWanTiling {
                tile_sample_min_height: 12,
                ..tiles.clone()
            },
            "a tile of 12 pixels is not whole latent pixels",
        ),
        (
            AutoencoderKLWanTiling {
                tile_sample_stride_width: 4,
                ..tiles.clone()
            },
            "a stride smaller than a latent pixel",
        ),
        (
            AutoencoderKLWanTiling {
                tile_sample_stride_height: 0,
                ..tiles.clone()
            },
            "a zero stride",
        ),
        (
            AutoencoderKLWanTiling {
                tile_sample_min_width: 0,
                ..tiles.clone()
            },
            "a zero tile",
        ),
        (
            AutoencoderKLWanTiling {
                tile_sample_stride_width: 24,
                ..tiles.clone()
            },
            "a stride beyond its tile",
        ),
        (
            AutoencoderKLWanTiling {
                tile_sample_stride_height: 16,
                ..tiles.clone()
            },
            "no overlap",
        ),
    ] {
        let err = vae.set_tiling(tiling).expect_err(why);
        assert!(matches!(err, Error::InvalidInput { .. }), "{why}: {err}");
        assert!(!err.to_string().contains('\n'), "{why}: one line");
    }
    assert_eq!(vae.tiling(), &tiles, "a refused setting changes nothing");

    // A config whose scale_factor_spatial is not the layout's factor: tiles cannot line up.
    let mut c = config;
    c.scale_factor_spatial = Some(16);
    let mut vae = AutoencoderKLWan::<Cpu>::new(&c, &dev).expect("build");
    assert!(matches!(
        vae.enable_tiling(),
        Err(Error::InvalidInput { .. })
    ));
    assert!(!vae.tiling().use_tiling);
}

#[test]
fn latents_are_denormalized_as_wan_pipeline_does() {
    // The same f32 operations as the pipeline: measured 0 (the round trip through
    // normalize_latents 1.2e-7).
    let fx = Fixture::open("vae/autoencoder_kl_wan");
    let dev = Default::default();
    let config: AutoencoderKLWanConfig =
        diffusers_core::config::load_config(fixtures_dir().join("vae/wan_tiny/config.json"))
            .expect("config");
    let latents: Tensor<Cpu, 5> = fx.tensor("wan_tiny.latents", &dev, DType::F32);
    let out = config
        .denormalize_latents(latents.clone())
        .expect("denormalize");
    assert_close(
        out.clone(),
        &fx.values("wan_tiny.denormalized"),
        None,
        F32,
        "denormalized",
    );
    let back = config.normalize_latents(out).expect("normalize");
    assert_close(
        back,
        &fx.values("wan_tiny.latents"),
        None,
        F32,
        "round trip",
    );
    let wrong = Tensor::<Cpu, 5>::zeros([1, 5, 1, 2, 2], &dev);
    assert!(matches!(
        config.denormalize_latents(wrong),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn invalid_inputs_configs_and_weights_are_errors() {
    let dev = Default::default();
    let folder = fixtures_dir().join("vae/wan_tiny");
    let (vae, config) = AutoencoderKLWan::<Cpu>::from_folder(&folder, None, &dev).expect("load");
    assert_eq!((config.spatial_factor(), config.temporal_factor()), (8, 4));
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
    ] {
        assert!(
            matches!(vae.decode(video(shape)), Err(Error::InvalidInput { .. })),
            "decode: {why}"
        );
    }

    for (json, why) in [
        (r#"{"is_residual": true}"#, "Wan 2.2's residual blocks"),
        (r#"{"patch_size": 2}"#, "Wan 2.2's patchification"),
        (r#"{"dim_mult": []}"#, "no levels"),
        (r#"{"num_res_blocks": 0}"#, "no residual blocks"),
        (
            r#"{"temperal_downsample": [true]}"#,
            "too few temporal flags",
        ),
        (r#"{"base_dim": 1, "dim_mult": [1, 1]}"#, "one channel"),
    ] {
        let c: AutoencoderKLWanConfig = serde_json::from_str(json).expect("json");
        assert!(
            matches!(
                AutoencoderKLWan::<Cpu>::new(&c, &dev),
                Err(Error::InvalidConfig { .. })
            ),
            "{why}"
        );
    }

    // The tiny weights under a config asking for 5 latent channels: a shape mismatch, not a
    // panic.
    let dir = std::env::temp_dir().join(format!("wan_vae_mismatch_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).expect("config"))
            .expect("json");
    json["z_dim"] = 5.into();
    std::fs::write(dir.join("config.json"), json.to_string()).expect("write");
    std::fs::copy(
        folder.join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .expect("copy");
    let err = AutoencoderKLWan::<Cpu>::from_folder(&dir, None, &dev).expect_err("mismatch");
    assert!(
        matches!(
            err,
            Error::Core(diffusers_core::Error::ShapeMismatch { .. })
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn real_config_gives_the_real_parameter_layout() {
    // The real Wan2.1-T2V-1.3B VAE config parses with its values, and the model built from it
    // has exactly diffusers' parameter names and shapes (recorded by the oracle on the meta
    // device). No parameter is allocated: shapes are read lazily.
    use diffusers_core::weights::module_shapes;
    use diffusers_vae::autoencoder_kl_wan::checkpoint_key;
    let dir = fixtures_dir().join("real_configs");
    let config: AutoencoderKLWanConfig =
        diffusers_core::config::load_config(dir.join("wan2.1-t2v-1.3b/vae/config.json"))
            .expect("real config parses");
    assert_eq!(
        (config.base_dim, config.z_dim, config.latents_std.len()),
        (96, 16, 16)
    );
    assert_eq!((config.spatial_factor(), config.temporal_factor()), (8, 4));
    let model = AutoencoderKLWan::<Cpu>::new(&config, &Default::default()).expect("build");
    let key_map = |p: &str| checkpoint_key(p);
    let ours = module_shapes(&model, Some(&key_map));
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("wan_vae_params.json")).expect("params"),
    )
    .expect("json");
    let theirs: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_value(expected["wan2.1-t2v-1.3b"]["params"].clone()).expect("map");
    assert_eq!(ours.len(), theirs.len(), "parameter count");
    assert_eq!(ours, theirs);
}
