//! diffusers' `StableDiffusionImg2ImgPipeline`
//! (`pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py`): SD 1.x / 2.x image to
//! image. The image is encoded by the VAE (posterior sampled with the generator), noised to the
//! first of the last `int(steps * strength)` timesteps, then denoised as text-to-image.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_schedulers::TorchGenerator;

use crate::Result;
use crate::image_input::{img2img_latents, img2img_timesteps, preprocess};
use crate::pipeline_stable_diffusion::{
    Components, Denoise, OutputType, SD_CLASSES, StableDiffusionOutput, StableDiffusionPipeline,
    apply_eta, check_sd_request, decode_latents, img2img_size, invalid,
};

const PIPELINE: &str = "StableDiffusionImg2ImgPipeline";

/// SD img2img: the same components as [`StableDiffusionPipeline`] (which it wraps; build it from
/// a folder or from a text-to-image pipeline with `From`, as diffusers'
/// `StableDiffusionImg2ImgPipeline(**pipe.components)`).
#[derive(Debug)]
pub struct StableDiffusionImg2ImgPipeline<B: Backend> {
    /// The models, tokenizer and scheduler (swap the scheduler with `pipe.set_scheduler`).
    pub pipe: StableDiffusionPipeline<B>,
}

impl<B: Backend> From<StableDiffusionPipeline<B>> for StableDiffusionImg2ImgPipeline<B> {
    fn from(pipe: StableDiffusionPipeline<B>) -> Self {
        Self { pipe }
    }
}

/// Arguments of an img2img call, with diffusers' defaults ([`StableDiffusionImg2ImgCall::new`]).
#[derive(Debug, Clone)]
pub struct StableDiffusionImg2ImgCall<B: Backend> {
    /// Prompts (one batch entry each).
    pub prompt: Vec<String>,
    /// Negative prompts (`None`: the empty prompt).
    pub negative_prompt: Option<Vec<String>>,
    /// The input image `[b, 3, h, w]` in `[0, 1]` (see [`crate::image_input::load_image`]), `h`
    /// and `w` multiples of 8; or latents `[b, 4, h / f, w / f]`. Required.
    pub image: Option<Tensor<B, 4>>,
    /// How much the image is transformed, in `[0, 1]` (0.8).
    pub strength: f64,
    /// Denoising steps of the full schedule (50); `int(steps * strength)` run.
    pub num_inference_steps: usize,
    /// Guidance scale (7.5).
    pub guidance_scale: f64,
    /// Images per prompt (1).
    pub num_images_per_prompt: usize,
    /// `eta` for DDIM/TCD (0.0).
    pub eta: f64,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` (0 if unset): the VAE posterior
    /// sample, the added noise, then the stochastic steps, in that order.
    pub seed: Option<u64>,
    /// CLIP layers skipped for the prompt.
    pub clip_skip: Option<usize>,
    /// What to return.
    pub output_type: OutputType,
}

impl<B: Backend> Default for StableDiffusionImg2ImgCall<B> {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            negative_prompt: None,
            image: None,
            strength: 0.8,
            num_inference_steps: 50,
            guidance_scale: 7.5,
            num_images_per_prompt: 1,
            eta: 0.0,
            seed: None,
            clip_skip: None,
            output_type: OutputType::Array,
        }
    }
}

impl<B: Backend> StableDiffusionImg2ImgCall<B> {
    /// A call for one prompt with diffusers' defaults (set `image`).
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: vec![prompt.into()],
            ..Default::default()
        }
    }
}

impl<B: Backend> StableDiffusionImg2ImgPipeline<B> {
    /// Loads a Stable Diffusion folder (text-to-image or img2img `model_index.json`).
    pub fn from_folder(folder: impl AsRef<Path>, dtype: DType, device: &B::Device) -> Result<Self> {
        let c = Components::open(folder.as_ref(), PIPELINE, SD_CLASSES)?;
        Ok(Self {
            pipe: StableDiffusionPipeline::from_components(&c, dtype, device)?,
        })
    }

    /// Runs the pipeline.
    pub fn call(
        &mut self,
        call: StableDiffusionImg2ImgCall<B>,
    ) -> Result<StableDiffusionOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline, calling `on_step_end(step, timestep, latents)` after each step.
    pub fn call_with_callback(
        &mut self,
        call: StableDiffusionImg2ImgCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 4>),
    ) -> Result<StableDiffusionOutput<B>> {
        Self::run(&mut self.pipe, call, on_step_end)
    }

    /// The call on borrowed text-to-image components (as `DiffusionPipeline::generate` runs it).
    pub(crate) fn run(
        p: &mut StableDiffusionPipeline<B>,
        call: StableDiffusionImg2ImgCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 4>),
    ) -> Result<StableDiffusionOutput<B>> {
        let image = call
            .image
            .ok_or_else(|| invalid(PIPELINE, "image is required"))?;
        let image = preprocess(
            image,
            p.vae_scale_factor(),
            p.vae_config.latent_channels,
            PIPELINE,
        )?;
        check_sd_request(
            PIPELINE,
            call.prompt.len(),
            call.num_images_per_prompt,
            img2img_size(image.dims(), p.vae_scale_factor()),
            &[
                ("guidance_scale", call.guidance_scale),
                ("strength", call.strength),
                ("eta", call.eta),
            ],
        )?;
        // LCM-distilled UNets take the guidance scale as an embedding instead of a CFG batch.
        let guidance = call.guidance_scale > 1.0 && p.unet_config.time_cond_proj_dim.is_none();
        let device = p.device().clone();
        p.memory.start_run();
        p.memory.begin_stage();
        p.memory.acquire()?;
        let embeds = p.encode_prompt(
            &call.prompt,
            call.num_images_per_prompt,
            guidance,
            call.negative_prompt.as_deref(),
            call.clip_skip,
        )?;
        p.memory.release(Some(&mut p.text_encoder))?;
        p.memory.end_stage::<B>("encode_prompt", &device);
        let batch = embeds.prompt_embeds.dims()[0];
        let embeds = match embeds.negative_prompt_embeds {
            Some(neg) => Tensor::cat(vec![neg, embeds.prompt_embeds], 0),
            None => embeds.prompt_embeds,
        };
        apply_eta(&mut p.scheduler, call.eta)?;
        let timesteps = img2img_timesteps(
            p.scheduler.as_mut(),
            call.num_inference_steps,
            call.strength,
            PIPELINE,
        )?;
        let mut generator = TorchGenerator::new(call.seed.unwrap_or(0));
        let dtype = p.dtype();
        let (vae_config, scheduler) = (&p.vae_config, p.scheduler.as_ref());
        let latents = p.memory.stage("encode_image", &device, &mut p.vae, |vae| {
            img2img_latents(
                vae,
                vae_config,
                dtype,
                image,
                batch,
                dtype,
                &mut generator,
                scheduler,
                timesteps[0],
                PIPELINE,
            )
        })?;
        let time_cond_dim = p.unet_config.time_cond_proj_dim;
        let latents = p.memory.stage("denoise", &device, &mut p.unet, |unet| {
            Denoise {
                unet,
                scheduler: p.scheduler.as_mut(),
                timesteps,
                latents,
                embeds,
                added_cond: None,
                guidance,
                guidance_scale: call.guidance_scale,
                guidance_rescale: 0.0,
                time_cond_dim,
                generator: Some(&mut generator),
            }
            .run(on_step_end)
        })?;
        if call.output_type == OutputType::Latent {
            return Ok(StableDiffusionOutput {
                images: Vec::new(),
                latents: Some(latents),
            });
        }
        let vae_config = &p.vae_config;
        let images = p.memory.stage("decode", &device, &mut p.vae, |vae| {
            Ok(decode_latents(vae, vae_config, latents, dtype))
        })?;
        Ok(StableDiffusionOutput {
            images,
            latents: None,
        })
    }
}
