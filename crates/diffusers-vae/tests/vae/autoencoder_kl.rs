//! `AutoencoderKL` against diffusers (`fixtures/vae/*`): the posterior's mean and log-variance
//! from `encode`, and `decode`, for an SD-style VAE (quant convs, mid attention) and a Flux-style
//! one (16 latent channels, no quant convs, three blocks), in one pass and tiled
//! (`enable_tiling`), and batch slicing.

use burn::tensor::{DType, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_vae::Error;
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig, AutoencoderKLTiling};

const F32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

#[test]
fn encode_and_decode_match_diffusers() {
    let fx = Fixture::open("vae/autoencoder_kl");
    let dev = Default::default();
    for case in ["sd_style", "flux_style"] {
        let (vae, config) =
            AutoencoderKL::<Cpu>::from_folder(fixtures_dir().join("vae").join(case), None, &dev)
                .expect("load");
        let image: Tensor<Cpu, 4> = fx.tensor(&format!("{case}.image"), &dev, DType::F32);
        let posterior = vae.encode(image).expect("encode");
        assert_close(
            posterior.mean.clone(),
            &fx.values(&format!("{case}.mean")),
            None,
            F32,
            &format!("{case}.mean"),
        );
        assert_close(
            posterior.logvar.clone(),
            &fx.values(&format!("{case}.logvar")),
            None,
            F32,
            &format!("{case}.logvar"),
        );
        let latents: Tensor<Cpu, 4> = fx.tensor(&format!("{case}.latents"), &dev, DType::F32);
        let decoded = vae.decode(latents);
        assert_close(
            decoded,
            &fx.values(&format!("{case}.decoded")),
            None,
            F32,
            &format!("{case}.decoded"),
        );
        if case == "flux_style" {
            assert_eq!(config.shift_factor, Some(0.1159));
            assert_eq!(config.scale_factor(), 4);
        }
    }
}

#[test]
fn bf16_decode_runs_close_to_f32() {
    // bf16 weights and activations, group-norm statistics in f32: measured max abs error 2.5e-2.
    let fx = Fixture::open("vae/autoencoder_kl");
    let dev = Default::default();
    let (vae, _) = AutoencoderKL::<Cpu>::from_folder(
        fixtures_dir().join("vae/sd_style"),
        Some(DType::BF16),
        &dev,
    )
    .expect("load");
    let latents: Tensor<Cpu, 4> = fx.tensor("sd_style.latents", &dev, DType::BF16);
    let decoded = vae.decode(latents);
    assert_eq!(decoded.dtype(), DType::BF16);
    assert_close(
        decoded,
        &fx.values("sd_style.decoded"),
        None,
        Tol {
            atol: 8e-2,
            rtol: 4e-2,
        },
        "bf16 decode",
    );
}

#[test]
fn invalid_configs_and_sizes() {
    let dev = Default::default();
    let bad: AutoencoderKLConfig = serde_json::from_str(r#"{"block_out_channels": [8, 12], "norm_num_groups": 8,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"#)
    .expect("json");
    assert!(matches!(
        AutoencoderKL::<Cpu>::new(&bad, &dev),
        Err(Error::InvalidConfig { .. })
    ));
    let (vae, _) =
        AutoencoderKL::<Cpu>::from_folder(fixtures_dir().join("vae/sd_style"), None, &dev)
            .expect("load");
    let odd = Tensor::<Cpu, 4>::zeros([1, 3, 7, 8], &dev);
    assert!(matches!(vae.encode(odd), Err(Error::InvalidInput { .. })));
}

/// Tiled parity: measured max abs error 3.6e-6 (flux_style) and 2.3e-6 (sd_style) on the decodes
/// (values up to 2.5), 2.1e-6 on the posteriors: summation order in the convolutions, group norms and mid attention
/// of each tile; the blending itself is a few f32 multiply-adds per value.
const TILED: Tol = Tol {
    atol: 1e-4,
    rtol: 0.0,
};

/// A sliced batch against the same batch passed at once: measured max abs error 0 on
/// sd_style and on flux_style untiled; 7.2e-7 on flux_style's tiled decode (values up to 2.5),
/// 8.9e-8 on its tiled posterior. Not the slicing (each element passed alone, checked bit for
/// bit): the CPU backend's batch of two is not bit-equal to two batches of one there, also on one
/// thread. Likely the gemm crate (0.19) choosing its blocking for `m <= 64 && n <= 64` apart:
/// flux_style's 8x8-latent tiles give the mid attention's projections 64 rows at batch 1 and 128
/// at batch 2, where every other case has more than 64 rows both ways.
const SLICED: Tol = Tol {
    atol: 1e-5,
    rtol: 0.0,
};

/// A tiled case: one of the tiny VAEs, a 48x80 image and latents for one, through diffusers'
/// tiled paths with the tile sizes it derives from `sample_size` 32 (2 x 4 tiles both ways, the
/// last row and column partial).
struct TiledCase {
    /// The VAE folder under `fixtures/vae` and the case name in `autoencoder_kl_tiling.json`.
    name: &'static str,
    /// The posterior's shape (`[1, latent_channels, 48 / scale, 80 / scale]`).
    latent_shape: [usize; 4],
    /// How far diffusers' tiled decode is from its one-pass decode, at least (measured 0.88 on
    /// sd_style, 1.77 on flux_style: tiny random decoders see each tile's border as an image
    /// border); shows that the tiled path ran.
    tiling_moves: f32,
}

const TILED_CASES: [TiledCase; 2] = [
    TiledCase {
        name: "sd_style",
        latent_shape: [1, 4, 24, 40],
        tiling_moves: 0.5,
    },
    TiledCase {
        name: "flux_style",
        latent_shape: [1, 16, 12, 20],
        tiling_moves: 0.5,
    },
];

/// `enable_tiling` with diffusers' default tile sizes gives diffusers' tiled decode and encode
/// (`fixtures/vae/autoencoder_kl_tiling.*`), and slicing a batch of two gives the unsliced
/// batch bit for bit, tiled or not.
#[test]
fn tiled_and_sliced_passes_match_diffusers() {
    let fx = Fixture::open("vae/autoencoder_kl_tiling");
    let dev = Default::default();
    for case in TILED_CASES {
        let name = case.name;
        let (mut vae, _) =
            AutoencoderKL::<Cpu>::from_folder(fixtures_dir().join("vae").join(name), None, &dev)
                .expect("load");
        let json = fx.case(name);
        let size = |k: &str| json[k].as_u64().expect("tile size") as usize;
        let expected = AutoencoderKLTiling {
            use_tiling: false,
            use_slicing: false,
            tile_sample_min_size: size("tile_sample_min_size"),
            tile_latent_min_size: size("tile_latent_min_size"),
            tile_overlap_factor: json["tile_overlap_factor"].as_f64().expect("factor"),
        };
        assert_eq!(vae.tiling(), &expected, "{name}: diffusers' tile sizes");
        let tensor =
            |k: &str| -> Tensor<Cpu, 4> { fx.tensor(&format!("{name}.{k}"), &dev, DType::F32) };
        let one_pass = vae.decode(tensor("latents"));
        vae.enable_tiling().expect("tiling");

        let decoded = vae.decode(tensor("latents"));
        assert_eq!(decoded.dims(), [1, 3, 48, 80], "{name}: decoded shape");
        let moved = (decoded.clone() - one_pass).abs().max().into_scalar();
        assert!(
            moved > case.tiling_moves,
            "{name}: tiling moved the decode by {moved}"
        );
        let key = format!("{name}.decoded");
        assert_close(decoded, &fx.values(&key), None, TILED, &key);
        let posterior = vae.encode(tensor("image")).expect("tiled encode");
        for (got, k) in [(posterior.mean, "mean"), (posterior.logvar, "logvar")] {
            assert_eq!(got.dims(), case.latent_shape, "{name}: {k} shape");
            let key = format!("{name}.{k}");
            assert_close(got, &fx.values(&key), None, TILED, &key);
        }

        // Slicing: a batch of two, sliced, is each element passed alone, bit for bit (what
        // diffusers' slicing is), tiled or not; and the batch passed at once within SLICED.
        let latents = Tensor::cat(vec![tensor("latents"), tensor("latents") * 0.5], 0);
        let images = Tensor::cat(vec![tensor("image"), tensor("image").flip([3])], 0);
        let alone = |vae: &AutoencoderKL<Cpu>, i: usize| {
            let posterior = vae.encode(images.clone().narrow(0, i, 1)).expect("encode");
            [
                vae.decode(latents.clone().narrow(0, i, 1)),
                posterior.mean,
                posterior.logvar,
            ]
        };
        for tiled in [true, false] {
            if !tiled {
                vae.disable_tiling();
            }
            vae.disable_slicing();
            let posterior = vae.encode(images.clone()).expect("encode");
            let whole = [
                vae.decode(latents.clone()),
                posterior.mean,
                posterior.logvar,
            ];
            let [first, second] = [alone(&vae, 0), alone(&vae, 1)];
            vae.enable_slicing();
            let posterior = vae.encode(images.clone()).expect("encode");
            let sliced = [
                vae.decode(latents.clone()),
                posterior.mean,
                posterior.logvar,
            ];
            let parts = first.into_iter().zip(second);
            for (((got, batch), (a, b)), what) in sliced
                .into_iter()
                .zip(whole)
                .zip(parts)
                .zip(["decode", "mean", "logvar"])
            {
                let what = format!("{name}: sliced {what} (tiled: {tiled})");
                let one_by_one = Tensor::cat(vec![a, b], 0);
                let diff = (got.clone() - one_by_one).abs().max().into_scalar();
                assert_eq!(diff, 0.0, "{what}: not the elements alone");
                let batch: Vec<f32> = batch.into_data().into_vec().expect("f32");
                assert_close(got, &batch, None, SLICED, &format!("{what} vs the batch"));
            }
        }
    }
}

/// Tile sizes and overlaps that cannot work are one-line errors, from `set_tiling` and from
/// `enable_tiling` on a config whose `sample_size` is below the latent scale; `sample_size` may
/// be a list, as diffusers reads it.
#[test]
fn tiling_options_that_cannot_work() {
    let dev = Default::default();
    let (mut vae, config) =
        AutoencoderKL::<Cpu>::from_folder(fixtures_dir().join("vae/flux_style"), None, &dev)
            .expect("load");
    assert_eq!(vae.scale_factor(), 4);
    let default = vae.tiling().clone();
    let with = |sample: usize, latent: usize, factor: f64| AutoencoderKLTiling {
        tile_sample_min_size: sample,
        tile_latent_min_size: latent,
        tile_overlap_factor: factor,
        ..default.clone()
    };
    for (tiling, why) in [
        (
            with(2, 0, 0.25),
            "a tile smaller than the latent scale factor 4",
        ),
        (with(32, 16, 0.25), "32 pixels are 8 latent pixels, not 16"),
        (with(34, 8, 0.25), "34 pixels are not whole latent pixels"),
        (
            with(36, 9, 0.25),
            "an encode stride of 27 pixels is not whole latent pixels",
        ),
        (with(32, 8, 0.0), "no overlap: zero blend"),
        (with(32, 8, 1.0), "an overlap factor of 1: zero stride"),
        (with(32, 8, -0.25), "a negative overlap factor"),
        (with(32, 8, f64::NAN), "a NaN overlap factor"),
        (
            with(64, 16, 0.24),
            "encode tiles every 48 pixels keeping 13 latent pixels",
        ),
    ] {
        let err = vae.set_tiling(tiling).expect_err(why);
        assert!(matches!(err, Error::InvalidInput { .. }), "{why}: {err}");
        assert!(!err.to_string().contains('\n'), "{why}: one line: {err}");
    }
    assert_eq!(vae.tiling(), &default, "a refused setting changes nothing");
    vae.set_tiling(with(64, 16, 0.25)).expect("64-pixel tiles");
    assert!(!vae.tiling().use_tiling);

    let small = AutoencoderKLConfig {
        sample_size: 2,
        ..config
    };
    let mut vae = AutoencoderKL::<Cpu>::new(&small, &dev).expect("build");
    let err = vae.enable_tiling().expect_err("2-pixel tiles");
    assert!(err.to_string().contains("latent scale factor 4"), "{err}");
    assert!(!vae.tiling().use_tiling);

    let listed: AutoencoderKLConfig =
        serde_json::from_str(r#"{"sample_size": [64, 48]}"#).expect("a list sample_size");
    assert_eq!(
        AutoencoderKLTiling::from_config(&listed).tile_sample_min_size,
        64
    );
    assert!(serde_json::from_str::<AutoencoderKLConfig>(r#"{"sample_size": []}"#).is_err());
}
