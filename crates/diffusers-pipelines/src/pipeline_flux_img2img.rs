//! diffusers' `FluxImg2ImgPipeline` (`pipelines/flux/pipeline_flux_img2img.py`): FLUX.1
//! image-to-image. The components are a [`FluxPipeline`]'s; the image is encoded, noised to the
//! timestep `strength` selects, and denoised from there.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;

use crate::Result;
use crate::pipeline_flux::{FluxCall, FluxOutput, FluxPipeline};

/// FLUX.1 image-to-image: a [`FluxPipeline`] run from an encoded image.
#[derive(Debug)]
pub struct FluxImg2ImgPipeline<B: Backend> {
    /// The text-to-image pipeline whose components this one uses.
    pub pipe: FluxPipeline<B>,
}

/// Arguments of an image-to-image call.
#[derive(Debug, Clone)]
pub struct FluxImg2ImgCall<B: Backend> {
    /// The text-to-image arguments (height and width default to the image's).
    pub call: FluxCall<B>,
    /// The image `[batch, 3, height, width]` in `[0, 1]` (see
    /// [`crate::image_input::load_image`]); its size must be the output size.
    pub image: Tensor<B, 4>,
    /// How much of the schedule to run, in `[0, 1]` (0.6 in diffusers): the image is noised to
    /// the timestep at `1 - strength` of the schedule.
    pub strength: f64,
}

impl<B: Backend> FluxImg2ImgPipeline<B> {
    /// Loads a FLUX repository (`FluxPipeline` or `FluxImg2ImgPipeline` in `model_index.json`).
    pub fn from_folder(folder: impl AsRef<Path>, dtype: DType, device: &B::Device) -> Result<Self> {
        Ok(Self::from_pipe(FluxPipeline::from_folder(
            folder, dtype, device,
        )?))
    }

    /// Reuses a text-to-image pipeline's components (diffusers' `from_pipe`).
    pub fn from_pipe(pipe: FluxPipeline<B>) -> Self {
        Self { pipe }
    }

    /// Runs the pipeline.
    pub fn call(&mut self, call: FluxImg2ImgCall<B>) -> Result<FluxOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline with a per-step callback (see [`FluxPipeline::call_with_callback`]).
    pub fn call_with_callback(
        &mut self,
        call: FluxImg2ImgCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 3>),
    ) -> Result<FluxOutput<B>> {
        self.pipe
            .run(call.call, Some((call.image, call.strength)), on_step_end)
    }
}
