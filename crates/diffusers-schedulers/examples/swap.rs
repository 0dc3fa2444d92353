//! A denoising loop with a scheduler swapped in as diffusers' `X.from_config(pipe.scheduler.config)`
//! does, and initial noise equal to diffusers' for `torch.Generator("cpu").manual_seed(0)`.
//! Run: `cargo run -p diffusers-schedulers --example swap`.

use burn::tensor::DType;
use diffusers_core::backend::Cpu;
use diffusers_schedulers::{
    Generators, NoiseSource, TimestepOptions, TorchGenerator, from_config, from_json, randn_tensor,
    scale_model_input_nd, step_nd,
};

fn main() -> Result<(), diffusers_schedulers::Error> {
    let device = Default::default();
    let ddim = from_json::<Cpu>(
        r#"{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "beta_end": 0.012}"#,
    )?;
    // EulerAncestralDiscreteScheduler.from_config(ddim.config)
    let mut scheduler =
        from_config::<Cpu>(&ddim.config(), Some("EulerAncestralDiscreteScheduler"))?;
    scheduler.set_timesteps(&TimestepOptions::steps(20))?;
    let mut generator = TorchGenerator::new(0);
    let noise = randn_tensor::<Cpu, 4>(
        [1, 4, 8, 8],
        Generators::One(&mut generator),
        &device,
        DType::F32,
    )?;
    let mut latents = noise * scheduler.init_noise_sigma();
    for t in scheduler.timesteps().to_vec() {
        let input = scale_model_input_nd(scheduler.as_mut(), latents.clone(), t)?;
        let model_output = input * 0.1; // the denoiser goes here
        let noise: &mut dyn NoiseSource = &mut generator;
        latents = step_nd(scheduler.as_mut(), model_output, t, latents, Some(noise))?;
    }
    tracing::info!("final latents: {:?}", latents.dims());
    Ok(())
}
