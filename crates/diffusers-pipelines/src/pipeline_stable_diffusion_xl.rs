//! diffusers' `StableDiffusionXLPipeline`
//! (`pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py`): SDXL text-to-image with two
//! CLIP text encoders (penultimate hidden states concatenated, the pooled projection of the
//! second), the `text_time` added conditioning (`add_time_ids`), and any registry scheduler.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_schedulers::{Scheduler, TorchGenerator};
use diffusers_text_encoders::clip::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection};
use diffusers_text_encoders::tokenizer::PromptTokenizer;
use diffusers_unets::unet_2d_condition::{UNet2DConditionModel, UNet2DConditionModelConfig};
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};

use crate::Result;
use crate::pipeline_stable_diffusion::{
    Components, Denoise, OutputType, StableDiffusionOutput, apply_eta, as_str, check_counts,
    check_sd_request, check_size, decode_latents, default_size, ids_tensor, invalid,
    negative_prompts, prepare_latents, repeat_per_prompt, set_timesteps, swap_scheduler,
};

const PIPELINE: &str = "StableDiffusionXLPipeline";

/// The classes whose folders [`StableDiffusionXLPipeline::from_folder`] reads.
pub const SDXL_CLASSES: &[&str] = &[
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
];

/// An SDXL pipeline's models, tokenizers and scheduler. `text_encoder`/`tokenizer` are optional
/// (null in refiner repositories, which condition on `text_encoder_2` alone).
pub struct StableDiffusionXLPipeline<B: Backend> {
    /// The denoiser (`addition_embed_type = "text_time"`).
    pub unet: UNet2DConditionModel<B>,
    /// Its config.
    pub unet_config: UNet2DConditionModelConfig,
    /// The autoencoder.
    pub vae: AutoencoderKL<B>,
    /// Its config (`scaling_factor`, `force_upcast`).
    pub vae_config: AutoencoderKLConfig,
    /// CLIP text encoder (`text_encoder/`, CLIP ViT-L in SDXL-base).
    pub text_encoder: Option<CLIPTextModel<B>>,
    /// Its tokenizer (`tokenizer/`).
    pub tokenizer: Option<PromptTokenizer>,
    /// CLIP text encoder with projection (`text_encoder_2/`, OpenCLIP bigG): the pooled embedding.
    pub text_encoder_2: CLIPTextModelWithProjection<B>,
    /// Its config (`projection_dim`).
    pub text_encoder_2_config: CLIPTextConfig,
    /// Its tokenizer (`tokenizer_2/`).
    pub tokenizer_2: PromptTokenizer,
    /// The scheduler; swap it with [`Self::set_scheduler`].
    pub scheduler: Box<dyn Scheduler<B>>,
    /// `force_zeros_for_empty_prompt` (model_index.json, default true): without a negative
    /// prompt, the negative conditioning is zeros.
    pub force_zeros_for_empty_prompt: bool,
    /// `requires_aesthetics_score` (model_index.json, default false): img2img's time ids carry an
    /// aesthetic score instead of the target size (refiner models).
    pub requires_aesthetics_score: bool,
    pub(crate) vae_dtype: DType,
    device: B::Device,
    dtype: DType,
    /// The LoRA adapters loaded (see [`crate::lora_pipeline::LoraLoader`]).
    pub(crate) lora: crate::lora_pipeline::LoraState<B>,
    /// Offloading and memory statistics (see [`crate::offload`]).
    pub(crate) memory: crate::offload::PipelineMemory,
}

impl<B: Backend> std::fmt::Debug for StableDiffusionXLPipeline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusionXLPipeline")
            .field("scheduler", &self.scheduler.class_name())
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

/// Arguments of an SDXL call, with diffusers' defaults ([`StableDiffusionXLCall::new`]).
#[derive(Debug, Clone)]
pub struct StableDiffusionXLCall<B: Backend> {
    /// Prompts for `text_encoder` (one batch entry each).
    pub prompt: Vec<String>,
    /// Prompts for `text_encoder_2`; `None` uses `prompt`.
    pub prompt_2: Option<Vec<String>>,
    /// Negative prompts; `None` gives zeros when `force_zeros_for_empty_prompt`, else `""`.
    pub negative_prompt: Option<Vec<String>>,
    /// Negative prompts for `text_encoder_2`; `None` uses `negative_prompt`.
    pub negative_prompt_2: Option<Vec<String>>,
    /// Image height, a multiple of 8 (default `unet.sample_size * vae_scale_factor`).
    pub height: Option<usize>,
    /// Image width.
    pub width: Option<usize>,
    /// Denoising steps (50).
    pub num_inference_steps: usize,
    /// Custom timesteps.
    pub timesteps: Option<Vec<f64>>,
    /// Custom sigmas.
    pub sigmas: Option<Vec<f64>>,
    /// Guidance scale (5.0).
    pub guidance_scale: f64,
    /// `guidance_rescale` (0.0).
    pub guidance_rescale: f64,
    /// Images per prompt (1).
    pub num_images_per_prompt: usize,
    /// `eta` for DDIM/TCD (0.0).
    pub eta: f64,
    /// Initial latents `[batch * num_images_per_prompt, 4, height / f, width / f]`.
    pub latents: Option<Tensor<B, 4>>,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` (0 if unset), shared with the
    /// stochastic steps.
    pub seed: Option<u64>,
    /// Layers skipped before the penultimate one (`hidden_states[-(clip_skip + 2)]`).
    pub clip_skip: Option<usize>,
    /// `original_size` `(height, width)` of the time ids (default the image size).
    pub original_size: Option<(usize, usize)>,
    /// `crops_coords_top_left` (`(0, 0)`).
    pub crops_coords_top_left: (usize, usize),
    /// `target_size` (default the image size).
    pub target_size: Option<(usize, usize)>,
    /// `negative_original_size`: with `negative_target_size`, the negative time ids.
    pub negative_original_size: Option<(usize, usize)>,
    /// `negative_crops_coords_top_left` (`(0, 0)`).
    pub negative_crops_coords_top_left: (usize, usize),
    /// `negative_target_size`.
    pub negative_target_size: Option<(usize, usize)>,
    /// What to return.
    pub output_type: OutputType,
}

impl<B: Backend> Default for StableDiffusionXLCall<B> {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            prompt_2: None,
            negative_prompt: None,
            negative_prompt_2: None,
            height: None,
            width: None,
            num_inference_steps: 50,
            timesteps: None,
            sigmas: None,
            guidance_scale: 5.0,
            guidance_rescale: 0.0,
            num_images_per_prompt: 1,
            eta: 0.0,
            latents: None,
            seed: None,
            clip_skip: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            negative_original_size: None,
            negative_crops_coords_top_left: (0, 0),
            negative_target_size: None,
            output_type: OutputType::Array,
        }
    }
}

impl<B: Backend> StableDiffusionXLCall<B> {
    /// A call for one prompt with diffusers' defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: vec![prompt.into()],
            ..Default::default()
        }
    }
}

/// SDXL's prompt conditioning, each entry repeated for the images of its prompt.
#[derive(Debug, Clone)]
pub struct StableDiffusionXLPromptEmbeds<B: Backend> {
    /// `[batch * n, seq, hidden_1 + hidden_2]`.
    pub prompt_embeds: Tensor<B, 3>,
    /// The same for the negative prompt, with guidance.
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
    /// `text_encoder_2`'s projected pooled embedding `[batch * n, projection_dim]`.
    pub pooled_prompt_embeds: Tensor<B, 2>,
    /// The same for the negative prompt, with guidance.
    pub negative_pooled_prompt_embeds: Option<Tensor<B, 2>>,
}

impl<B: Backend> StableDiffusionXLPipeline<B> {
    /// Loads a diffusers SDXL folder (`model_index.json`, `unet/`, `vae/`, `text_encoder_2/`,
    /// `tokenizer_2/`, `scheduler/`, and `text_encoder/`, `tokenizer/` unless null), with the
    /// pipeline config values `force_zeros_for_empty_prompt` and `requires_aesthetics_score`.
    ///
    /// With `dtype` f16 or bf16 and the VAE's `force_upcast`, the VAE is kept in f32 (diffusers
    /// decodes in f32 in f16 and encodes img2img inputs in f32).
    pub fn from_folder(folder: impl AsRef<Path>, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with every model's weights of `variant` (`fp16`: `*.fp16.safetensors`, as
    /// diffusers' `variant=`; the default files, with a warning, where a model has none).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        let c = Components::open(folder.as_ref(), PIPELINE, SDXL_CLASSES)?.with_variant(variant);
        let (pipe, sources) = crate::offload::record_loading(|| Self::load(&c, dtype, device));
        let mut pipe = pipe?;
        pipe.memory = crate::offload::PipelineMemory::new(sources, None);
        Ok(pipe)
    }

    fn load(c: &Components, dtype: DType, device: &B::Device) -> Result<Self> {
        let weights_dtype = (dtype != DType::F32).then_some(dtype);
        let has_te = c.has("text_encoder", &["CLIPTextModel"], false)?;
        c.has("text_encoder_2", &["CLIPTextModelWithProjection"], true)?;
        let tokenizer = c.tokenizer("tokenizer", false)?;
        let tokenizer_2 = c
            .tokenizer("tokenizer_2", true)?
            .ok_or_else(|| invalid(PIPELINE, "no tokenizer_2"))?;
        if has_te != tokenizer.is_some() {
            return Err(invalid(
                PIPELINE,
                "text_encoder and tokenizer go together (both present or both null)",
            ));
        }
        let scheduler = c.scheduler::<B>()?;
        let (unet, unet_config) = c.unet(weights_dtype, device)?;
        if unet_config.addition_embed_type.as_deref() != Some("text_time") {
            return Err(invalid(
                PIPELINE,
                "the UNet has no addition_embed_type \"text_time\": not an SDXL UNet",
            ));
        }
        let vae_config: AutoencoderKLConfig =
            diffusers_core::config::load_config(c.folder.join("vae/config.json"))?;
        let vae_dtype = if vae_config.force_upcast && dtype != DType::F32 {
            DType::F32
        } else {
            dtype
        };
        let (vae, vae_config) = c.vae((vae_dtype != DType::F32).then_some(vae_dtype), device)?;
        let text_encoder = has_te
            .then(|| {
                tracing::info!("{}: loading text_encoder", c.folder.display());
                crate::quantization::load_component(&c.folder, "text_encoder", || {
                    CLIPTextModel::from_folder_variant(
                        c.folder.join("text_encoder"),
                        c.variant.as_deref(),
                        weights_dtype,
                        device,
                    )
                })
            })
            .transpose()?;
        tracing::info!("{}: loading text_encoder_2", c.folder.display());
        let text_encoder_2_config =
            CLIPTextConfig::load(c.folder.join("text_encoder_2/config.json"))?;
        let text_encoder_2 =
            crate::quantization::load_component(&c.folder, "text_encoder_2", || {
                CLIPTextModelWithProjection::from_folder_variant(
                    c.folder.join("text_encoder_2"),
                    c.variant.as_deref(),
                    weights_dtype,
                    device,
                )
            })?;
        Ok(Self {
            unet,
            unet_config,
            vae,
            vae_config,
            text_encoder,
            tokenizer,
            text_encoder_2,
            text_encoder_2_config,
            tokenizer_2,
            scheduler,
            force_zeros_for_empty_prompt: c.index.flag("force_zeros_for_empty_prompt", true),
            requires_aesthetics_score: c.index.flag("requires_aesthetics_score", false),
            vae_dtype,
            device: device.clone(),
            dtype,
            lora: crate::lora_pipeline::LoraState::new(&c.folder, c.variant.as_deref()),
            memory: Default::default(),
        })
    }

    /// `2 ** (len(vae.block_out_channels) - 1)`.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// The device the models are on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Swaps the scheduler for `class_name` built from the current scheduler's config (diffusers'
    /// `from_config`); an error names an unknown or incompatible class.
    pub fn set_scheduler(&mut self, class_name: &str) -> Result<()> {
        swap_scheduler(&mut self.scheduler, class_name, PIPELINE)
    }

    /// Runs the encoders on `prompts` (one list per encoder, zipped as diffusers zips them):
    /// the concatenated `hidden_states[-(skip + 2)]` and `text_encoder_2`'s pooled projection.
    fn encode_with(
        &self,
        prompts: [&[String]; 2],
        max_len: Option<usize>,
        skip: usize,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>)> {
        let mut states = Vec::new();
        let mut pooled = None;
        let mut run = |tok: &PromptTokenizer, p: &[String], proj: bool| -> Result<()> {
            let len = max_len.unwrap_or_else(|| tok.model_max_length().unwrap_or(77));
            let ids = ids_tensor(tok.encode_padded(&as_str(p), len)?.ids, &self.device);
            let out = if proj {
                self.text_encoder_2.forward(ids)?
            } else if let Some(te) = &self.text_encoder {
                te.forward(ids)?
            } else {
                return Ok(());
            };
            if proj && pooled.is_none() {
                pooled = Some(out.pooled);
            }
            let n = out.hidden_states.len();
            if skip + 2 > n {
                return Err(invalid(
                    PIPELINE,
                    format!(
                        "clip_skip {skip} is too large for a text encoder with {} layers",
                        n - 1
                    ),
                ));
            }
            states.push(out.hidden_states[n - (skip + 2)].clone());
            Ok(())
        };
        match &self.tokenizer {
            Some(tok) => {
                run(tok, prompts[0], false)?;
                run(&self.tokenizer_2, prompts[1], true)?;
            }
            // diffusers zips [prompt, prompt_2] with [tokenizer_2]: the first prompt list.
            None => run(&self.tokenizer_2, prompts[0], true)?,
        }
        let pooled = pooled.ok_or_else(|| invalid(PIPELINE, "no pooled embedding"))?;
        Ok((Tensor::cat(states, 2), pooled))
    }

    /// diffusers' `encode_prompt` for SDXL.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_prompt(
        &self,
        prompt: &[String],
        prompt_2: Option<&[String]>,
        num_images_per_prompt: usize,
        guidance: bool,
        negative_prompt: Option<&[String]>,
        negative_prompt_2: Option<&[String]>,
        clip_skip: Option<usize>,
    ) -> Result<StableDiffusionXLPromptEmbeds<B>> {
        check_counts(prompt.len(), num_images_per_prompt, PIPELINE)?;
        let batch = prompt.len();
        let prompt_2 = prompt_2.unwrap_or(prompt);
        if prompt_2.len() != batch {
            return Err(invalid(
                PIPELINE,
                format!(
                    "prompt_2 has {} prompts, prompt has {batch}",
                    prompt_2.len()
                ),
            ));
        }
        let (embeds, pooled) =
            self.encode_with([prompt, prompt_2], None, clip_skip.unwrap_or(0))?;
        let n = num_images_per_prompt;
        let negative = if !guidance {
            None
        } else if negative_prompt.is_none() && self.force_zeros_for_empty_prompt {
            Some((embeds.zeros_like(), pooled.zeros_like()))
        } else {
            let neg = negative_prompts(negative_prompt, batch, PIPELINE)?;
            let neg_2 = match negative_prompt_2 {
                Some(v) => negative_prompts(Some(v), batch, PIPELINE)?,
                None => neg.clone(),
            };
            Some(self.encode_with([&neg, &neg_2], Some(embeds.dims()[1]), 0)?)
        };
        let (negative_prompt_embeds, negative_pooled_prompt_embeds) = match negative {
            Some((e, p)) => (
                Some(repeat_per_prompt::<B, 3, 4>(e.cast(self.dtype), n)),
                Some(repeat_per_prompt::<B, 2, 3>(p.cast(self.dtype), n)),
            ),
            None => (None, None),
        };
        Ok(StableDiffusionXLPromptEmbeds {
            prompt_embeds: repeat_per_prompt::<B, 3, 4>(embeds.cast(self.dtype), n),
            negative_prompt_embeds,
            pooled_prompt_embeds: repeat_per_prompt::<B, 2, 3>(pooled.cast(self.dtype), n),
            negative_pooled_prompt_embeds,
        })
    }

    /// Checks that `ids` time ids and the pooled embedding fill the UNet's added embedding
    /// (diffusers' `_get_add_time_ids` checks, with its messages).
    pub(crate) fn check_time_ids(&self, ids: usize, aesthetics: Option<bool>) -> Result<()> {
        let tdim = self.unet_config.addition_time_embed_dim.unwrap_or(0);
        let passed = tdim * ids + self.text_encoder_2_config.projection_dim;
        let expected = self
            .unet_config
            .projection_class_embeddings_input_dim
            .unwrap_or(0);
        if passed == expected {
            return Ok(());
        }
        // diffusers raises here too; its two size-specific messages are swapped (0.42.1), these
        // say which setting gives the size the UNet takes.
        let hint = match aesthetics {
            Some(_) if expected > passed && expected - passed == tdim => {
                "one time id too few: disable requires_aesthetics_score (model_index.json) so that \
                 target_size is used"
            }
            Some(_) if passed > expected && passed - expected == tdim => {
                "one time id too many: enable requires_aesthetics_score (model_index.json) so that \
                 aesthetic_score is used"
            }
            _ => {
                "the model has an incorrect config: check unet.time_embedding_type and \
                 text_encoder_2.projection_dim"
            }
        };
        Err(invalid(
            PIPELINE,
            format!(
                "the model expects an added time embedding vector of length {expected}, but a vector \
                 of {passed} was created: {hint}"
            ),
        ))
    }

    /// `(text_embeds, time_ids)` for the UNet: `[negative; positive]` with guidance, time ids
    /// repeated for the batch, in the compute dtype.
    pub(crate) fn added_cond(
        &self,
        embeds: &StableDiffusionXLPromptEmbeds<B>,
        ids: Vec<f64>,
        negative_ids: Vec<f64>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let batch = embeds.prompt_embeds.dims()[0];
        let n = ids.len();
        let row = |v: Vec<f64>| {
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            Tensor::<B, 2>::from_data(TensorData::new(v, [1, n]), (&self.device, DType::F32))
                .cast(self.dtype)
                .repeat_dim(0, batch)
        };
        let time_ids = row(ids);
        match &embeds.negative_pooled_prompt_embeds {
            Some(neg) => (
                Tensor::cat(vec![neg.clone(), embeds.pooled_prompt_embeds.clone()], 0),
                Tensor::cat(vec![row(negative_ids), time_ids], 0),
            ),
            None => (embeds.pooled_prompt_embeds.clone(), time_ids),
        }
    }

    /// Runs the pipeline.
    pub fn call(&mut self, call: StableDiffusionXLCall<B>) -> Result<StableDiffusionOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline, calling `on_step_end(step, timestep, latents)` after each step.
    pub fn call_with_callback(
        &mut self,
        call: StableDiffusionXLCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 4>),
    ) -> Result<StableDiffusionOutput<B>> {
        let f = self.vae_scale_factor();
        let (dh, dw) = match (call.height, call.width) {
            (Some(h), Some(w)) => (h, w),
            _ => default_size(&self.unet_config, f, PIPELINE)?,
        };
        let (height, width) = (call.height.unwrap_or(dh), call.width.unwrap_or(dw));
        check_size(height, width, PIPELINE)?;
        check_sd_request(
            PIPELINE,
            call.prompt.len(),
            call.num_images_per_prompt,
            (height, width),
            &[
                ("guidance_scale", call.guidance_scale),
                ("guidance_rescale", call.guidance_rescale),
                ("eta", call.eta),
            ],
        )?;
        // LCM-distilled UNets take the guidance scale as an embedding instead of a CFG batch.
        let guidance = call.guidance_scale > 1.0 && self.unet_config.time_cond_proj_dim.is_none();
        self.memory.start_run();
        self.memory.begin_stage();
        self.memory.acquire()?;
        let embeds = self.encode_prompt(
            &call.prompt,
            call.prompt_2.as_deref(),
            call.num_images_per_prompt,
            guidance,
            call.negative_prompt.as_deref(),
            call.negative_prompt_2.as_deref(),
            call.clip_skip,
        )?;
        self.memory.release(self.text_encoder.as_mut())?;
        self.memory.release(Some(&mut self.text_encoder_2))?;
        self.memory.end_stage::<B>("encode_prompt", &self.device);
        let batch = embeds.prompt_embeds.dims()[0];
        apply_eta(&mut self.scheduler, call.eta)?;
        set_timesteps(
            self.scheduler.as_mut(),
            call.num_inference_steps,
            call.timesteps,
            call.sigmas,
            PIPELINE,
        )?;
        let mut generator = TorchGenerator::new(call.seed.unwrap_or(0));
        let latents = prepare_latents(
            call.latents,
            [batch, self.unet_config.in_channels, height / f, width / f],
            &mut generator,
            self.scheduler.init_noise_sigma(),
            &self.device,
            self.dtype,
            PIPELINE,
        )?;
        let size = |s: (usize, usize)| [s.0 as f64, s.1 as f64];
        let original = size(call.original_size.unwrap_or((height, width)));
        let target = size(call.target_size.unwrap_or((height, width)));
        let crops = size(call.crops_coords_top_left);
        let ids: Vec<f64> = [original, crops, target].concat();
        self.check_time_ids(ids.len(), None)?;
        let negative_ids = match (call.negative_original_size, call.negative_target_size) {
            (Some(o), Some(t)) => {
                [size(o), size(call.negative_crops_coords_top_left), size(t)].concat()
            }
            _ => ids.clone(),
        };
        let added_cond = self.added_cond(&embeds, ids, negative_ids);
        let prompt_embeds = match embeds.negative_prompt_embeds {
            Some(neg) => Tensor::cat(vec![neg, embeds.prompt_embeds], 0),
            None => embeds.prompt_embeds,
        };
        let timesteps = self.scheduler.timesteps().to_vec();
        let time_cond_dim = self.unet_config.time_cond_proj_dim;
        let latents = self
            .memory
            .stage("denoise", &self.device, &mut self.unet, |unet| {
                Denoise {
                    unet,
                    scheduler: self.scheduler.as_mut(),
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
        self.finish(latents, call.output_type)
    }

    /// Decodes (in `vae_dtype`) or returns the latents.
    pub(crate) fn finish(
        &mut self,
        latents: Tensor<B, 4>,
        output_type: OutputType,
    ) -> Result<StableDiffusionOutput<B>> {
        if output_type == OutputType::Latent {
            return Ok(StableDiffusionOutput {
                images: Vec::new(),
                latents: Some(latents),
            });
        }
        let (vae_config, vae_dtype) = (&self.vae_config, self.vae_dtype);
        let images = self
            .memory
            .stage("decode", &self.device, &mut self.vae, |vae| {
                Ok(decode_latents(vae, vae_config, latents, vae_dtype))
            })?;
        Ok(StableDiffusionOutput {
            images,
            latents: None,
        })
    }

    /// Keeps each component's weights in its files until its turn (see [`crate::offload`]);
    /// `None` stops releasing them (each layer then stays loaded once it is next used).
    /// Group offload is refused: it groups transformer blocks, and the UNet has none.
    pub fn enable_offload(&mut self, mode: Option<crate::offload::OffloadMode>) -> Result<()> {
        if let Some(m @ crate::offload::OffloadMode::Group { .. }) = mode {
            return Err(crate::Error::Offload(format!(
                "{PIPELINE} has no transformer blocks to offload in groups (`{m}`): use model or \
                 sequential offload"
            )));
        }
        self.memory.set_mode::<B>(mode, PIPELINE, None)?;
        if mode.is_some() {
            let m = &self.memory;
            m.release_now(self.text_encoder.as_mut());
            m.release_now(Some(&mut self.text_encoder_2));
            m.release_now(Some(&mut self.unet));
            m.release_now(Some(&mut self.vae));
        }
        Ok(())
    }

    /// The memory each stage of the last run used.
    pub fn memory_stats(&self) -> Vec<crate::offload::StageMemory> {
        self.memory.stages()
    }
}
