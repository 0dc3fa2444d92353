//! One request for every pipeline: [`GenerateRequest`] into [`DiffusionPipeline::generate`].
//!
//! The CLI (and a server) build one request whatever the repository holds; each pipeline takes
//! the knobs it has and refuses the ones it has not ([`Error::UnusedArgument`], naming the
//! request field), so a video flag on an image model is an error, not a silent no-op.
//! Pipeline-specific knobs stay on each pipeline's own call struct ([`FluxCall`],
//! [`StableDiffusionCall`], [`WanCall`], ...).
//!
//! ```
//! use diffusers_core::backend::Cpu;
//! use diffusers_pipelines::generate::{GenerateRequest, Generated};
//! use diffusers_pipelines::{DiffusionPipeline, PipelineOptions};
//! let dir = diffusers_core::testing::fixtures_dir().join("pipelines/tiny_flux");
//! let mut pipe = DiffusionPipeline::<Cpu>::from_pretrained(
//!     &dir.to_string_lossy(),
//!     &PipelineOptions::default(),
//!     &Default::default(),
//! )?;
//! let out = pipe.generate(
//!     GenerateRequest {
//!         height: Some(16),
//!         width: Some(16),
//!         num_inference_steps: Some(2),
//!         max_sequence_length: Some(8),
//!         seed: Some(0),
//!         ..GenerateRequest::new("a photo of a cat")
//!     },
//!     &mut |_| {},
//! )?;
//! assert!(matches!(out, Generated::Images(ref i) if i.dims() == [1, 16, 16, 3]));
//! # Ok::<(), diffusers_pipelines::Error>(())
//! ```

use burn::prelude::*;
use burn::tensor::TensorData;

use diffusers_text_encoders::llama::PromptTemplate;

use crate::pipeline_flux::{FluxCall, OutputType};
use crate::pipeline_hunyuan_video::HunyuanVideoCall;
use crate::pipeline_stable_diffusion::StableDiffusionCall;
use crate::pipeline_stable_diffusion_img2img::{
    StableDiffusionImg2ImgCall, StableDiffusionImg2ImgPipeline,
};
use crate::pipeline_stable_diffusion_xl::StableDiffusionXLCall;
use crate::pipeline_stable_diffusion_xl_img2img::{
    StableDiffusionXLImg2ImgCall, StableDiffusionXLImg2ImgPipeline,
};
use crate::pipeline_wan::WanCall;
use crate::{DiffusionPipeline, Error, Result};

/// A pipeline-agnostic generation request: what `diffusers generate` takes. `None` means the
/// pipeline's own default (diffusers' `__call__` defaults).
#[derive(Debug, Clone)]
pub struct GenerateRequest<B: Backend> {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (classifier-free guidance; Flux's true CFG).
    pub negative_prompt: Option<String>,
    /// Output height in pixels.
    pub height: Option<usize>,
    /// Output width in pixels.
    pub width: Option<usize>,
    /// Video frames (video pipelines only).
    pub num_frames: Option<usize>,
    /// Denoising steps.
    pub num_inference_steps: Option<usize>,
    /// Guidance scale (classifier-free, or embedded for guidance-distilled models).
    pub guidance_scale: Option<f64>,
    /// Flux's true classifier-free guidance scale (with a negative prompt).
    pub true_cfg_scale: Option<f64>,
    /// Images or videos per prompt (`num_images_per_prompt` / `num_videos_per_prompt`).
    pub num_per_prompt: usize,
    /// Text tokens of the T5-family encoders (Flux, Wan).
    pub max_sequence_length: Option<usize>,
    /// Skipped CLIP layers (SD, SDXL).
    pub clip_skip: Option<usize>,
    /// Scheduler class to swap in (a class name of `diffusers_schedulers::registry`).
    pub scheduler: Option<String>,
    /// HunyuanVideo's prompt template (diffusers' `prompt_template=`).
    pub prompt_template: Option<PromptTemplate>,
    /// An init image `[batch, 3, height, width]` in `[0, 1]` (image-to-image).
    pub image: Option<Tensor<B, 4>>,
    /// Image-to-image strength.
    pub strength: Option<f64>,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)`.
    pub seed: Option<u64>,
    /// Initial latents exactly as the pipeline's `latents=` takes them (rank and shape checked
    /// by the pipeline: 3-D packed for Flux, 4-D for SD/SDXL, 5-D for video).
    pub latents: Option<TensorData>,
    /// Decoded frames or images, or the final latents.
    pub output_type: OutputType,
}

impl<B: Backend> GenerateRequest<B> {
    /// A request for one prompt with every other knob at the pipeline's default.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: None,
            height: None,
            width: None,
            num_frames: None,
            num_inference_steps: None,
            guidance_scale: None,
            true_cfg_scale: None,
            num_per_prompt: 1,
            max_sequence_length: None,
            clip_skip: None,
            scheduler: None,
            prompt_template: None,
            image: None,
            strength: None,
            seed: None,
            latents: None,
            output_type: OutputType::Array,
        }
    }
}

/// What [`DiffusionPipeline::generate`] produced.
#[derive(Debug, Clone)]
pub enum Generated<B: Backend> {
    /// Images `[batch, height, width, 3]` in `[0, 1]` (diffusers' `output_type="np"` `.images`).
    Images(Tensor<B, 4>),
    /// Videos `[batch, frames, height, width, 3]` in `[0, 1]` (`.frames`).
    Video(Tensor<B, 5>),
    /// The final latents (the pipeline's own layout), flattened, with their shape.
    Latents {
        /// The latents' shape.
        shape: Vec<usize>,
        /// The values, row-major.
        values: Tensor<B, 1>,
    },
}

/// Progress of a [`DiffusionPipeline::generate`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateEvent {
    /// Denoising starts: this many steps.
    Denoising {
        /// Steps the loop will run.
        steps: usize,
    },
    /// One denoising step done (0-based).
    Step {
        /// The step index.
        step: usize,
    },
    /// Decoding starts: this many frames (video pipelines).
    Decoding {
        /// Frames the VAE decodes.
        frames: usize,
    },
    /// Decoding progress (video pipelines): latent frames decoded so far, of all.
    Decoded {
        /// Latent frames decoded.
        done: usize,
        /// Latent frames in all.
        total: usize,
    },
}

fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> Generated<B> {
    let shape = t.dims().to_vec();
    Generated::Latents {
        shape,
        values: t.reshape([-1]),
    }
}

/// Refuses request fields the pipeline has no use for.
fn refuse(pipeline: &'static str, fields: &[(&'static str, bool)]) -> Result<()> {
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(Error::UnusedArgument { pipeline, field }),
        None => Ok(()),
    }
}

/// The request's latents as a rank-`D` tensor, or an error naming the layout the pipeline takes.
fn latents_of_rank<B: Backend, const D: usize>(
    latents: Option<TensorData>,
    pipeline: &'static str,
    expected: &str,
    device: &B::Device,
) -> Result<Option<Tensor<B, D>>> {
    let Some(data) = latents else {
        return Ok(None);
    };
    if data.shape.len() != D {
        return Err(Error::InvalidArgument {
            pipeline,
            reason: format!(
                "latents have shape {:?}; {pipeline} takes {expected}",
                data.shape
            ),
        });
    }
    Ok(Some(Tensor::from_data(data, device)))
}

fn images<B: Backend>(images: Vec<Tensor<B, 3>>, pipeline: &'static str) -> Result<Generated<B>> {
    if images.is_empty() {
        return Err(Error::InvalidArgument {
            pipeline,
            reason: "the pipeline returned no images".into(),
        });
    }
    Ok(Generated::Images(Tensor::stack(images, 0)))
}

/// The SD and SDXL arms of [`DiffusionPipeline::generate`]: the same request fields on call
/// structs with the same field names (diffusers' SD and SDXL pipelines take the same knobs).
macro_rules! stable_diffusion_arm {
    ($pipe:ident, $req:ident, $class:ident, $prompt:ident, $negative:ident, $latent:ident, $on_event:ident, $call:ident, $i2i_call:ident, $i2i_pipe:ident) => {{
        let (pipe, req, class, prompt, negative, latent, on_event) =
            ($pipe, $req, $class, $prompt, $negative, $latent, $on_event);
        refuse(
            class,
            &[
                ("num_frames", req.num_frames.is_some()),
                ("true_cfg_scale", req.true_cfg_scale.is_some()),
                ("max_sequence_length", req.max_sequence_length.is_some()),
                ("prompt_template", req.prompt_template.is_some()),
            ],
        )?;
        if let Some(s) = &req.scheduler {
            pipe.set_scheduler(s)?;
        }
        let out = match req.image {
            Some(image) => {
                refuse(class, &[("latents", req.latents.is_some())])?;
                let d = $i2i_call::<B>::default();
                let steps = req.num_inference_steps.unwrap_or(d.num_inference_steps);
                on_event(GenerateEvent::Denoising { steps });
                let call = $i2i_call {
                    prompt,
                    negative_prompt: negative,
                    image: Some(image),
                    strength: req.strength.unwrap_or(d.strength),
                    num_inference_steps: steps,
                    guidance_scale: req.guidance_scale.unwrap_or(d.guidance_scale),
                    num_images_per_prompt: req.num_per_prompt,
                    seed: req.seed,
                    clip_skip: req.clip_skip,
                    output_type: req.output_type,
                    ..d
                };
                $i2i_pipe::run(pipe, call, &mut |i, _, _| {
                    on_event(GenerateEvent::Step { step: i })
                })?
            }
            None => {
                refuse(class, &[("strength", req.strength.is_some())])?;
                let d = $call::<B>::default();
                let steps = req.num_inference_steps.unwrap_or(d.num_inference_steps);
                on_event(GenerateEvent::Denoising { steps });
                let device = pipe.device().clone();
                let call = $call {
                    prompt,
                    negative_prompt: negative,
                    height: req.height,
                    width: req.width,
                    num_inference_steps: steps,
                    guidance_scale: req.guidance_scale.unwrap_or(d.guidance_scale),
                    num_images_per_prompt: req.num_per_prompt,
                    latents: latents_of_rank::<B, 4>(
                        req.latents,
                        class,
                        "latents [batch, 4, height / 8, width / 8]",
                        &device,
                    )?,
                    seed: req.seed,
                    clip_skip: req.clip_skip,
                    output_type: req.output_type,
                    ..d
                };
                pipe.call_with_callback(call, &mut |i, _, _| {
                    on_event(GenerateEvent::Step { step: i })
                })?
            }
        };
        match out.latents {
            Some(l) if latent => Ok(flat(l)),
            _ => images(out.images, class),
        }
    }};
}

impl<B: Backend> DiffusionPipeline<B> {
    /// Runs whatever pipeline this is on one pipeline-agnostic request, reporting progress
    /// through `on_event`. Request fields the pipeline does not take are an
    /// [`Error::UnusedArgument`]; an init image picks the image-to-image form of an image
    /// pipeline.
    pub fn generate(
        &mut self,
        req: GenerateRequest<B>,
        on_event: &mut dyn FnMut(GenerateEvent),
    ) -> Result<Generated<B>> {
        let class = self.class_name();
        let prompt = vec![req.prompt.clone()];
        let negative = req.negative_prompt.clone().map(|n| vec![n]);
        let latent = req.output_type == OutputType::Latent;
        match self {
            Self::Flux(pipe) => {
                refuse(
                    class,
                    &[
                        ("num_frames", req.num_frames.is_some()),
                        ("clip_skip", req.clip_skip.is_some()),
                        ("prompt_template", req.prompt_template.is_some()),
                        ("strength", req.strength.is_some() && req.image.is_none()),
                    ],
                )?;
                if let Some(s) = req.scheduler.as_deref()
                    && s != "FlowMatchEulerDiscreteScheduler"
                {
                    return Err(Error::InvalidArgument {
                        pipeline: class,
                        reason: format!("runs FlowMatchEulerDiscreteScheduler only, not `{s}`"),
                    });
                }
                let d = FluxCall::<B>::default();
                let steps = req.num_inference_steps.unwrap_or(d.num_inference_steps);
                let device = pipe.device().clone();
                let call = FluxCall {
                    prompt,
                    negative_prompt: negative,
                    true_cfg_scale: req.true_cfg_scale.unwrap_or(d.true_cfg_scale),
                    height: req.height,
                    width: req.width,
                    num_inference_steps: steps,
                    guidance_scale: req.guidance_scale.unwrap_or(d.guidance_scale),
                    num_images_per_prompt: req.num_per_prompt,
                    max_sequence_length: req.max_sequence_length.unwrap_or(d.max_sequence_length),
                    latents: latents_of_rank::<B, 3>(
                        req.latents,
                        class,
                        "packed latents [batch, seq, channels]",
                        &device,
                    )?,
                    seed: req.seed,
                    output_type: req.output_type,
                    ..d
                };
                let img2img = match req.image {
                    Some(image) => {
                        let strength = req.strength.unwrap_or(0.6);
                        let run = (steps as f64 * strength).min(steps as f64) as usize;
                        on_event(GenerateEvent::Denoising { steps: run.max(1) });
                        Some((image, strength))
                    }
                    None => {
                        on_event(GenerateEvent::Denoising { steps });
                        None
                    }
                };
                let out = pipe.run(call, img2img, &mut |i, _, _| {
                    on_event(GenerateEvent::Step { step: i })
                })?;
                match out.latents {
                    Some(l) if latent => Ok(flat(l)),
                    _ => images(out.images, class),
                }
            }
            Self::StableDiffusion(pipe) => stable_diffusion_arm!(
                pipe,
                req,
                class,
                prompt,
                negative,
                latent,
                on_event,
                StableDiffusionCall,
                StableDiffusionImg2ImgCall,
                StableDiffusionImg2ImgPipeline
            ),
            Self::StableDiffusionXL(pipe) => stable_diffusion_arm!(
                pipe,
                req,
                class,
                prompt,
                negative,
                latent,
                on_event,
                StableDiffusionXLCall,
                StableDiffusionXLImg2ImgCall,
                StableDiffusionXLImg2ImgPipeline
            ),
            Self::Wan(pipe) => {
                refuse(
                    class,
                    &[
                        ("true_cfg_scale", req.true_cfg_scale.is_some()),
                        ("clip_skip", req.clip_skip.is_some()),
                        ("prompt_template", req.prompt_template.is_some()),
                        ("image", req.image.is_some()),
                        ("strength", req.strength.is_some()),
                    ],
                )?;
                if let Some(s) = &req.scheduler {
                    pipe.set_scheduler(s)?;
                }
                let d = WanCall::<B>::default();
                let steps = req.num_inference_steps.unwrap_or(d.num_inference_steps);
                let device = pipe.device().clone();
                let call = WanCall {
                    prompt,
                    negative_prompt: negative,
                    height: req.height.unwrap_or(d.height),
                    width: req.width.unwrap_or(d.width),
                    num_frames: req.num_frames.unwrap_or(d.num_frames),
                    num_inference_steps: steps,
                    guidance_scale: req.guidance_scale.unwrap_or(d.guidance_scale),
                    num_videos_per_prompt: req.num_per_prompt,
                    latents: latents_of_rank::<B, 5>(
                        req.latents,
                        class,
                        "latents [batch, channels, (frames - 1) / 4 + 1, height / 8, width / 8]",
                        &device,
                    )?,
                    seed: req.seed,
                    max_sequence_length: req.max_sequence_length.unwrap_or(d.max_sequence_length),
                    // Decoded below, after its progress event.
                    output_type: OutputType::Latent,
                    ..d
                };
                let frames = call.num_frames;
                on_event(GenerateEvent::Denoising { steps });
                let out = pipe.call_with_callback(call, &mut |i, _, _| {
                    on_event(GenerateEvent::Step { step: i })
                })?;
                let latents = out.latents.ok_or_else(|| Error::InvalidArgument {
                    pipeline: class,
                    reason: "the pipeline returned no latents".into(),
                })?;
                if latent {
                    return Ok(flat(latents));
                }
                on_event(GenerateEvent::Decoding { frames });
                Ok(Generated::Video(
                    pipe.decode_with_progress(latents, &mut |done, total| {
                        on_event(GenerateEvent::Decoded { done, total })
                    })?,
                ))
            }
            Self::HunyuanVideo(pipe) => {
                refuse(
                    class,
                    &[
                        ("clip_skip", req.clip_skip.is_some()),
                        ("image", req.image.is_some()),
                        ("strength", req.strength.is_some()),
                    ],
                )?;
                if let Some(s) = req.scheduler.as_deref()
                    && s != "FlowMatchEulerDiscreteScheduler"
                {
                    return Err(Error::InvalidArgument {
                        pipeline: class,
                        reason: format!("runs FlowMatchEulerDiscreteScheduler only, not `{s}`"),
                    });
                }
                let d = HunyuanVideoCall::<B>::default();
                let steps = req.num_inference_steps.unwrap_or(d.num_inference_steps);
                let device = pipe.device().clone();
                let call = HunyuanVideoCall {
                    prompt,
                    negative_prompt: negative,
                    true_cfg_scale: req.true_cfg_scale.unwrap_or(d.true_cfg_scale),
                    guidance_scale: req.guidance_scale.unwrap_or(d.guidance_scale),
                    height: req.height.unwrap_or(d.height),
                    width: req.width.unwrap_or(d.width),
                    num_frames: req.num_frames.unwrap_or(d.num_frames),
                    num_inference_steps: steps,
                    num_videos_per_prompt: req.num_per_prompt,
                    latents: latents_of_rank::<B, 5>(
                        req.latents,
                        class,
                        "latents [batch, channels, (frames - 1) / 4 + 1, height / 8, width / 8]",
                        &device,
                    )?,
                    seed: req.seed,
                    max_sequence_length: req.max_sequence_length.unwrap_or(d.max_sequence_length),
                    prompt_template: req.prompt_template,
                    // Decoded below, after its progress event.
                    output_type: OutputType::Latent,
                };
                let frames = call.num_frames;
                on_event(GenerateEvent::Denoising { steps });
                let out = pipe.call_with_callback(call, &mut |i, _, _| {
                    on_event(GenerateEvent::Step { step: i })
                })?;
                let latents = out.latents.ok_or_else(|| Error::InvalidArgument {
                    pipeline: class,
                    reason: "the pipeline returned no latents".into(),
                })?;
                if latent {
                    return Ok(flat(latents));
                }
                on_event(GenerateEvent::Decoding { frames });
                Ok(Generated::Video(
                    pipe.decode_with_progress(latents, &mut |done, total| {
                        on_event(GenerateEvent::Decoded { done, total })
                    })?,
                ))
            }
        }
    }
}
