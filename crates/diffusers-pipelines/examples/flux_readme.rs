//! The README's pipeline example: the tiny committed Flux repository, one prompt, a PNG.

use diffusers_core::backend::Cpu;
use diffusers_pipelines::pipeline_flux::FluxCall;
use diffusers_pipelines::{DiffusionPipeline, PipelineOptions};

fn main() -> Result<(), diffusers_pipelines::Error> {
    let device = Default::default();
    let model = diffusers_core::testing::fixtures_dir().join("pipelines/tiny_flux");
    // A hub id works too: "black-forest-labs/FLUX.1-schnell".
    let pipe = DiffusionPipeline::<Cpu>::from_pretrained(
        &model.to_string_lossy(),
        &PipelineOptions::default(),
        &device,
    )?;
    let DiffusionPipeline::Flux(mut flux) = pipe else {
        unreachable!("the tiny repository is a FluxPipeline")
    };
    let out = flux.call(FluxCall {
        height: Some(16),
        width: Some(24),
        num_inference_steps: 3,
        seed: Some(42),
        ..FluxCall::new("a photo of the cat")
    })?;
    diffusers_pipelines::image_processor::save_png(&out.images[0], "cat.png")?;
    Ok(())
}
