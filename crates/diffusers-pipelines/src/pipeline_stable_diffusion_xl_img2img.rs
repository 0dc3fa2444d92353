//! diffusers' `StableDiffusionXLImg2ImgPipeline`
//! (`pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl_img2img.py`): SDXL image to image
//! (and the refiner, with `requires_aesthetics_score`: time ids carry an aesthetic score).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_schedulers::TorchGenerator;

use crate::Result;
use crate::image_input::{img2img_latents, img2img_timesteps, preprocess};
use crate::pipeline_stable_diffusion::{
    Denoise, OutputType, StableDiffusionOutput, apply_eta, check_sd_request, img2img_size, invalid,
};
use crate::pipeline_stable_diffusion_xl::StableDiffusionXLPipeline;

const PIPELINE: &str = "StableDiffusionXLImg2ImgPipeline";

/// SDXL img2img: the components of [`StableDiffusionXLPipeline`], which it wraps (build it from a
/// folder, or from a text-to-image pipeline with `From`).
#[derive(Debug)]
pub struct StableDiffusionXLImg2ImgPipeline<B: Backend> {
    /// The models, tokenizers, scheduler and pipeline config (`requires_aesthetics_score`).
    pub pipe: StableDiffusionXLPipeline<B>,
}

impl<B: Backend> From<StableDiffusionXLPipeline<B>> for StableDiffusionXLImg2ImgPipeline<B> {
    fn from(pipe: StableDiffusionXLPipeline<B>) -> Self {
        Self { pipe }
    }
}

/// Arguments of an SDXL img2img call, with diffusers' defaults
/// ([`StableDiffusionXLImg2ImgCall::new`]).
#[derive(Debug, Clone)]
pub struct StableDiffusionXLImg2ImgCall<B: Backend> {
    /// Prompts for `text_encoder`.
    pub prompt: Vec<String>,
    /// Prompts for `text_encoder_2` (`None`: `prompt`).
    pub prompt_2: Option<Vec<String>>,
    /// Negative prompts (`None`: zeros with `force_zeros_for_empty_prompt`).
    pub negative_prompt: Option<Vec<String>>,
    /// Negative prompts for `text_encoder_2`.
    pub negative_prompt_2: Option<Vec<String>>,
    /// The input image `[b, 3, h, w]` in `[0, 1]` (multiples of 8), or latents. Required.
    pub image: Option<Tensor<B, 4>>,
    /// How much the image is transformed (0.3).
    pub strength: f64,
    /// Denoising steps of the full schedule (50).
    pub num_inference_steps: usize,
    /// Guidance scale (5.0).
    pub guidance_scale: f64,
    /// `guidance_rescale` (0.0).
    pub guidance_rescale: f64,
    /// Images per prompt (1).
    pub num_images_per_prompt: usize,
    /// `eta` for DDIM/TCD (0.0).
    pub eta: f64,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` (0 if unset).
    pub seed: Option<u64>,
    /// Layers skipped before the penultimate one.
    pub clip_skip: Option<usize>,
    /// `original_size` (default the image size).
    pub original_size: Option<(usize, usize)>,
    /// `crops_coords_top_left` (`(0, 0)`).
    pub crops_coords_top_left: (usize, usize),
    /// `target_size` (default the image size).
    pub target_size: Option<(usize, usize)>,
    /// `negative_original_size` (default `original_size`).
    pub negative_original_size: Option<(usize, usize)>,
    /// `negative_crops_coords_top_left` (`(0, 0)`; used with `requires_aesthetics_score`).
    pub negative_crops_coords_top_left: (usize, usize),
    /// `negative_target_size` (default `target_size`).
    pub negative_target_size: Option<(usize, usize)>,
    /// `aesthetic_score` (6.0), with `requires_aesthetics_score`.
    pub aesthetic_score: f64,
    /// `negative_aesthetic_score` (2.5), with `requires_aesthetics_score`.
    pub negative_aesthetic_score: f64,
    /// What to return.
    pub output_type: OutputType,
}

impl<B: Backend> Default for StableDiffusionXLImg2ImgCall<B> {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            prompt_2: None,
            negative_prompt: None,
            negative_prompt_2: None,
            image: None,
            strength: 0.3,
            num_inference_steps: 50,
            guidance_scale: 5.0,
            guidance_rescale: 0.0,
            num_images_per_prompt: 1,
            eta: 0.0,
            seed: None,
            clip_skip: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            negative_original_size: None,
            negative_crops_coords_top_left: (0, 0),
            negative_target_size: None,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
            output_type: OutputType::Array,
        }
    }
}

impl<B: Backend> StableDiffusionXLImg2ImgCall<B> {
    /// A call for one prompt with diffusers' defaults (set `image`).
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: vec![prompt.into()],
            ..Default::default()
        }
    }
}

impl<B: Backend> StableDiffusionXLImg2ImgPipeline<B> {
    /// Loads an SDXL folder (text-to-image or img2img `model_index.json`; a refiner's
    /// `requires_aesthetics_score` is read from it).
    pub fn from_folder(folder: impl AsRef<Path>, dtype: DType, device: &B::Device) -> Result<Self> {
        Ok(Self {
            pipe: StableDiffusionXLPipeline::from_folder(folder, dtype, device)?,
        })
    }

    /// Runs the pipeline.
    pub fn call(
        &mut self,
        call: StableDiffusionXLImg2ImgCall<B>,
    ) -> Result<StableDiffusionOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline, calling `on_step_end(step, timestep, latents)` after each step.
    pub fn call_with_callback(
        &mut self,
        call: StableDiffusionXLImg2ImgCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 4>),
    ) -> Result<StableDiffusionOutput<B>> {
        Self::run(&mut self.pipe, call, on_step_end)
    }

    /// The call on borrowed text-to-image components (as `DiffusionPipeline::generate` runs it).
    pub(crate) fn run(
        p: &mut StableDiffusionXLPipeline<B>,
        call: StableDiffusionXLImg2ImgCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 4>),
    ) -> Result<StableDiffusionOutput<B>> {
        let image = call
            .image
            .ok_or_else(|| invalid(PIPELINE, "image is required"))?;
        let f = p.vae_scale_factor();
        let image = preprocess(image, f, p.vae_config.latent_channels, PIPELINE)?;
        check_sd_request(
            PIPELINE,
            call.prompt.len(),
            call.num_images_per_prompt,
            img2img_size(image.dims(), f),
            &[
                ("guidance_scale", call.guidance_scale),
                ("guidance_rescale", call.guidance_rescale),
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
            call.prompt_2.as_deref(),
            call.num_images_per_prompt,
            guidance,
            call.negative_prompt.as_deref(),
            call.negative_prompt_2.as_deref(),
            call.clip_skip,
        )?;
        p.memory.release(p.text_encoder.as_mut())?;
        p.memory.release(Some(&mut p.text_encoder_2))?;
        p.memory.end_stage::<B>("encode_prompt", &device);
        let batch = embeds.prompt_embeds.dims()[0];
        apply_eta(&mut p.scheduler, call.eta)?;
        let timesteps = img2img_timesteps(
            p.scheduler.as_mut(),
            call.num_inference_steps,
            call.strength,
            PIPELINE,
        )?;
        let mut generator = TorchGenerator::new(call.seed.unwrap_or(0));
        let dtype = p.dtype();
        let (vae_config, vae_dtype, scheduler) = (&p.vae_config, p.vae_dtype, p.scheduler.as_ref());
        let latents = p.memory.stage("encode_image", &device, &mut p.vae, |vae| {
            img2img_latents(
                vae,
                vae_config,
                vae_dtype,
                image,
                batch,
                dtype,
                &mut generator,
                scheduler,
                timesteps[0],
                PIPELINE,
            )
        })?;
        let [_, _, lh, lw] = latents.dims();
        let (height, width) = (lh * f, lw * f);
        let size = |s: (usize, usize)| vec![s.0 as f64, s.1 as f64];
        let original = call.original_size.unwrap_or((height, width));
        let target = call.target_size.unwrap_or((height, width));
        let neg_original = call.negative_original_size.unwrap_or(original);
        let neg_target = call.negative_target_size.unwrap_or(target);
        let crops = size(call.crops_coords_top_left);
        let (ids, neg_ids) = if p.requires_aesthetics_score {
            (
                [size(original), crops, vec![call.aesthetic_score]].concat(),
                [
                    size(neg_original),
                    size(call.negative_crops_coords_top_left),
                    vec![call.negative_aesthetic_score],
                ]
                .concat(),
            )
        } else {
            (
                [size(original), crops.clone(), size(target)].concat(),
                [size(neg_original), crops, size(neg_target)].concat(),
            )
        };
        p.check_time_ids(ids.len(), Some(p.requires_aesthetics_score))?;
        let added_cond = p.added_cond(&embeds, ids, neg_ids);
        let prompt_embeds = match embeds.negative_prompt_embeds {
            Some(neg) => Tensor::cat(vec![neg, embeds.prompt_embeds], 0),
            None => embeds.prompt_embeds,
        };
        let time_cond_dim = p.unet_config.time_cond_proj_dim;
        let latents = p.memory.stage("denoise", &device, &mut p.unet, |unet| {
            Denoise {
                unet,
                scheduler: p.scheduler.as_mut(),
                timesteps,
                latents,
                embeds: prompt_embeds,
                added_cond: Some(added_cond),
                guidance,
                guidance_scale: call.guidance_scale,
                guidance_rescale: call.guidance_rescale,
                time_cond_dim,
                generator: Some(&mut generator),
            }
            .run(on_step_end)
        })?;
        p.finish(latents, call.output_type)
    }
}
