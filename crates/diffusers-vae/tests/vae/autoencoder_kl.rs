//! `AutoencoderKL` against diffusers (`fixtures/vae/*`): the posterior's mean and log-variance
//! from `encode`, and `decode`, for an SD-style VAE (quant convs, mid attention) and a Flux-style
//! one (16 latent channels, no quant convs, three blocks).

use burn::tensor::{DType, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_vae::Error;
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};

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
