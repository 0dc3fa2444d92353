//! `FluxPipeline` end to end against diffusers (`fixtures/pipelines/*`): a tiny FLUX.1-dev-style
//! repository saved by `save_pretrained` (text encoders null), run from prompt embeddings with
//! explicit packed latents (image and latent outputs) and with a torch seed. f32 tolerance 1e-4
//! absolute on images in [0, 1], as the issue asks.

use burn::tensor::DType;
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_pipelines::Error;
use diffusers_pipelines::pipeline_flux::{FluxCall, FluxPipeline, OutputType};

const IMAGE: Tol = Tol {
    atol: 1e-4,
    rtol: 0.0,
};

fn call(fx: &Fixture, output_type: OutputType, latents: bool, seed: Option<u64>) -> FluxCall<Cpu> {
    let dev = Default::default();
    FluxCall {
        prompt_embeds: fx.tensor("flux_latents.prompt_embeds", &dev, DType::F32),
        pooled_prompt_embeds: fx.tensor("flux_latents.pooled_prompt_embeds", &dev, DType::F32),
        height: 16,
        width: 24,
        num_inference_steps: 3,
        guidance_scale: 3.5,
        latents: latents.then(|| fx.tensor("flux_latents.latents", &dev, DType::F32)),
        seed,
        sigmas: None,
        output_type,
    }
}

fn pipeline() -> FluxPipeline<Cpu> {
    FluxPipeline::from_folder(
        fixtures_dir().join("pipelines/tiny_flux"),
        DType::F32,
        &Default::default(),
    )
    .expect("load pipeline")
}

#[test]
fn explicit_latents_match_diffusers() {
    let fx = Fixture::open("pipelines/flux");
    let mut pipe = pipeline();
    let out = pipe
        .call(call(&fx, OutputType::Array, true, None))
        .expect("call");
    assert_eq!(out.images.dims(), [1, 16, 24, 3]);
    assert_close(
        out.images,
        &fx.values("flux_latents.images"),
        None,
        IMAGE,
        "images",
    );
    let out = pipe
        .call(call(&fx, OutputType::Latent, true, None))
        .expect("call");
    assert_close(
        out.images,
        &fx.values("flux_latents.output_latents"),
        None,
        Tol {
            atol: 1e-4,
            rtol: 1e-4,
        },
        "latents",
    );
}

#[test]
fn torch_seed_matches_diffusers() {
    let fx = Fixture::open("pipelines/flux");
    let mut pipe = pipeline();
    let out = pipe
        .call(call(&fx, OutputType::Array, false, Some(42)))
        .expect("call");
    assert_close(
        out.images,
        &fx.values("flux_seed.images"),
        None,
        IMAGE,
        "seeded images",
    );
}

#[test]
fn bad_sizes_and_latents_are_errors() {
    let fx = Fixture::open("pipelines/flux");
    let mut pipe = pipeline();
    let mut c = call(&fx, OutputType::Array, true, None);
    c.height = 18;
    assert!(matches!(pipe.call(c), Err(Error::InvalidArgument { .. })));
    let mut c = call(&fx, OutputType::Array, false, None);
    c.latents = Some(burn::tensor::Tensor::zeros([1, 7, 16], &Default::default()));
    assert!(matches!(pipe.call(c), Err(Error::InvalidArgument { .. })));
    let mut c = call(&fx, OutputType::Array, true, None);
    c.num_inference_steps = 0;
    assert!(matches!(pipe.call(c), Err(Error::InvalidArgument { .. })));
    let not_flux = FluxPipeline::<Cpu>::from_folder(
        fixtures_dir().join("loading"),
        DType::F32,
        &Default::default(),
    );
    assert!(matches!(
        not_flux,
        Err(Error::Core(diffusers_core::Error::FileNotFound { .. }))
    ));
}
