//! diffusers' `FluxPipeline` (`pipelines/flux/pipeline_flux.py`): FLUX.1 text-to-image.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_schedulers::{
    FlowMatchEulerDiscreteScheduler, Generators, Scheduler, TimestepOptions, TorchGenerator,
    calculate_shift, linspace, randn_tensor, step_nd,
};
use diffusers_text_encoders::clip::CLIPTextModel;
use diffusers_text_encoders::t5::T5EncoderModel;
use diffusers_text_encoders::tokenizer::PromptTokenizer;
use diffusers_transformers::transformer_flux::{
    FluxInputs, FluxTransformer2DModel, FluxTransformer2DModelConfig,
};
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};

use crate::image_processor::postprocess;
use crate::model_index::ModelIndex;
use crate::pipeline_stable_diffusion::{as_str, ids_tensor, repeat_per_prompt};
use crate::pipeline_utils::check_request;
use crate::{Error, Result};

const PIPELINE: &str = "FluxPipeline";

/// A FLUX.1 pipeline's models, tokenizers and scheduler. The text encoders and tokenizers are
/// optional (`[null, null]` in `model_index.json`): without them the pipeline runs from
/// `prompt_embeds`.
#[derive(Debug)]
pub struct FluxPipeline<B: Backend> {
    /// The denoiser.
    pub transformer: FluxTransformer2DModel<B>,
    /// Its config.
    pub transformer_config: FluxTransformer2DModelConfig,
    /// The autoencoder.
    pub vae: AutoencoderKL<B>,
    /// Its config (`scaling_factor`, `shift_factor`).
    pub vae_config: AutoencoderKLConfig,
    /// The scheduler.
    pub scheduler: FlowMatchEulerDiscreteScheduler,
    /// CLIP tokenizer (`tokenizer/`).
    pub tokenizer: Option<PromptTokenizer>,
    /// CLIP text encoder (`text_encoder/`): the pooled prompt embedding.
    pub text_encoder: Option<CLIPTextModel<B>>,
    /// T5 tokenizer (`tokenizer_2/`).
    pub tokenizer_2: Option<PromptTokenizer>,
    /// T5 encoder (`text_encoder_2/`): the prompt embeddings.
    pub text_encoder_2: Option<T5EncoderModel<B>>,
    device: B::Device,
    dtype: DType,
    /// The LoRA adapters loaded (see [`crate::lora_pipeline::LoraLoader`]).
    pub(crate) lora: crate::lora_pipeline::LoraState<B>,
    /// Offloading and memory statistics (see [`crate::offload`]).
    pub(crate) memory: crate::offload::PipelineMemory,
}

/// How the pipeline returns its result (diffusers' `output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputType {
    /// Decoded images in `[0, 1]` (`"np"`; `"pil"` is this, saved as PNG).
    #[default]
    Array,
    /// The final packed latents `[batch, seq, channels]`, not decoded (`"latent"`).
    Latent,
}

/// Arguments of a call, with diffusers' defaults ([`FluxCall::new`] or `Default`).
#[derive(Debug, Clone)]
pub struct FluxCall<B: Backend> {
    /// Prompts (one image batch entry each); leave empty to pass `prompt_embeds`.
    pub prompt: Vec<String>,
    /// Prompts for the T5 encoder (`prompt_2`); `None` uses `prompt`.
    pub prompt_2: Option<Vec<String>>,
    /// Negative prompts, used with `true_cfg_scale > 1` (true classifier-free guidance: a second
    /// transformer call per step).
    pub negative_prompt: Option<Vec<String>>,
    /// True CFG scale (1.0: off).
    pub true_cfg_scale: f64,
    /// T5 states `[batch, text_seq, joint_attention_dim]` instead of `prompt`.
    pub prompt_embeds: Option<Tensor<B, 3>>,
    /// Pooled CLIP embedding `[batch, pooled_projection_dim]`, with `prompt_embeds`.
    pub pooled_prompt_embeds: Option<Tensor<B, 2>>,
    /// Image height, a multiple of `vae_scale_factor * 2` (default `128 * vae_scale_factor`).
    pub height: Option<usize>,
    /// Image width (same rules).
    pub width: Option<usize>,
    /// Denoising steps (28).
    pub num_inference_steps: usize,
    /// Guidance scale for guidance-distilled models (3.5).
    pub guidance_scale: f64,
    /// Images per prompt (1).
    pub num_images_per_prompt: usize,
    /// T5 token count, at most 512 (512).
    pub max_sequence_length: usize,
    /// Packed initial latents `[batch * num_images_per_prompt, seq, channels]` (`latents=`).
    pub latents: Option<Tensor<B, 3>>,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` for the initial noise (0 if unset).
    pub seed: Option<u64>,
    /// Custom sigmas (default `linspace(1, 1/steps, steps)`).
    pub sigmas: Option<Vec<f64>>,
    /// What to return.
    pub output_type: OutputType,
}

impl<B: Backend> Default for FluxCall<B> {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            prompt_2: None,
            negative_prompt: None,
            true_cfg_scale: 1.0,
            prompt_embeds: None,
            pooled_prompt_embeds: None,
            height: None,
            width: None,
            num_inference_steps: 28,
            guidance_scale: 3.5,
            num_images_per_prompt: 1,
            max_sequence_length: 512,
            latents: None,
            seed: None,
            sigmas: None,
            output_type: OutputType::Array,
        }
    }
}

impl<B: Backend> FluxCall<B> {
    /// A call for one prompt with diffusers' defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: vec![prompt.into()],
            ..Default::default()
        }
    }
}

/// What a call returns.
#[derive(Debug, Clone)]
pub struct FluxOutput<B: Backend> {
    /// One `[height, width, 3]` image in `[0, 1]` per generated image (`.images[0]` is the first),
    /// for [`OutputType::Array`]; empty for [`OutputType::Latent`].
    pub images: Vec<Tensor<B, 3>>,
    /// The final packed latents `[batch, seq, channels]` for [`OutputType::Latent`] (diffusers
    /// returns them in `.images`).
    pub latents: Option<Tensor<B, 3>>,
}

impl<B: Backend> FluxOutput<B> {
    /// The images stacked as diffusers' `output_type="np"` array `[batch, height, width, 3]`.
    pub fn array(&self) -> Option<Tensor<B, 4>> {
        (!self.images.is_empty()).then(|| Tensor::stack(self.images.clone(), 0))
    }
}

/// The prompt conditioning of a call: T5 states and the pooled CLIP embedding, each repeated for
/// the images of its prompt.
#[derive(Debug, Clone)]
pub struct FluxPromptEmbeds<B: Backend> {
    /// `[batch * num_images_per_prompt, max_sequence_length, joint_attention_dim]`.
    pub prompt_embeds: Tensor<B, 3>,
    /// `[batch * num_images_per_prompt, pooled_projection_dim]`.
    pub pooled_prompt_embeds: Tensor<B, 2>,
}

impl<B: Backend> FluxPipeline<B> {
    /// Loads a diffusers FLUX folder (`model_index.json`, `transformer/`, `vae/`, `scheduler/`,
    /// and the text encoders and tokenizers unless `model_index.json` has them null).
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
        Self::from_folder_with_transformer_file(folder, variant, None, dtype, device)
    }

    /// The same, with the transformer from the single-file GGUF `transformer_file` when given
    /// (BFL / ComfyUI keys, quantized `Linear` weights kept packed; the config from the
    /// folder's `transformer/config.json`), as diffusers'
    /// `FluxPipeline.from_pretrained(folder, transformer=FluxTransformer2DModel.from_single_file(...))`.
    pub fn from_folder_with_transformer_file(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        transformer_file: Option<&Path>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        let folder = folder.as_ref();
        let (pipe, sources) = crate::offload::record_loading(|| {
            Self::load(folder, variant, transformer_file, dtype, device)
        });
        let mut pipe = pipe?;
        pipe.memory = crate::offload::PipelineMemory::new(sources, None);
        Ok(pipe)
    }

    fn load(
        folder: &Path,
        variant: Option<&str>,
        transformer_file: Option<&Path>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        let index = ModelIndex::load(folder.join("model_index.json"))?;
        // The img2img pipeline has the same components.
        if index.class_name != PIPELINE && index.class_name != "FluxImg2ImgPipeline" {
            return Err(Error::Unsupported {
                path: folder.display().to_string(),
                reason: format!("`{}` is not a FluxPipeline", index.class_name),
            });
        }
        let component = |name: &str, classes: &[&str], required: bool| -> Result<bool> {
            match index.class_of(name) {
                Some(c) if classes.contains(&c) => {
                    let dir = folder.join(name);
                    if dir.is_dir() {
                        Ok(true)
                    } else {
                        Err(Error::MissingComponent {
                            path: dir.display().to_string(),
                            component: name.to_string(),
                        })
                    }
                }
                None if !required => Ok(false),
                other => Err(Error::Unsupported {
                    path: folder.join("model_index.json").display().to_string(),
                    reason: format!(
                        "component `{name}` is {}, expected {}",
                        other.map_or("missing".to_string(), |c| format!("`{c}`")),
                        classes.join(" or ")
                    ),
                }),
            }
        };
        component("transformer", &["FluxTransformer2DModel"], true)?;
        component("vae", &["AutoencoderKL"], true)?;
        component("scheduler", &["FlowMatchEulerDiscreteScheduler"], true)?;
        let has_clip = component("text_encoder", &["CLIPTextModel"], false)?;
        let has_clip_tok = component("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"], false)?;
        let has_t5 = component("text_encoder_2", &["T5EncoderModel"], false)?;
        let has_t5_tok = component("tokenizer_2", &["T5Tokenizer", "T5TokenizerFast"], false)?;

        let weights_dtype = (dtype != DType::F32).then_some(dtype);
        tracing::info!("{}: loading transformer", folder.display());
        let (transformer, transformer_config) = match transformer_file {
            Some(file) => crate::single_file::load_flux_transformer_gguf(
                file,
                &folder.join("transformer"),
                weights_dtype,
                device,
            )?,
            None => crate::quantization::load_component(folder, "transformer", || {
                FluxTransformer2DModel::from_folder_variant(
                    folder.join("transformer"),
                    variant,
                    weights_dtype,
                    device,
                )
            })?,
        };
        tracing::info!("{}: loading vae", folder.display());
        let (vae, vae_config) = crate::quantization::load_component(folder, "vae", || {
            AutoencoderKL::from_folder_variant(folder.join("vae"), variant, weights_dtype, device)
        })?;
        let sched_path = folder.join("scheduler/scheduler_config.json");
        let scheduler =
            FlowMatchEulerDiscreteScheduler::new(diffusers_core::json::read(&sched_path)?)?;
        let tokenizer = has_clip_tok
            .then(|| PromptTokenizer::from_pretrained(folder.join("tokenizer")))
            .transpose()?;
        let tokenizer_2 = has_t5_tok
            .then(|| PromptTokenizer::from_pretrained(folder.join("tokenizer_2")))
            .transpose()?;
        let text_encoder = has_clip
            .then(|| {
                tracing::info!("{}: loading text_encoder", folder.display());
                crate::quantization::load_component(folder, "text_encoder", || {
                    CLIPTextModel::from_folder_variant(
                        folder.join("text_encoder"),
                        variant,
                        weights_dtype,
                        device,
                    )
                })
            })
            .transpose()?;
        let text_encoder_2 = has_t5
            .then(|| {
                tracing::info!("{}: loading text_encoder_2", folder.display());
                crate::quantization::load_component(folder, "text_encoder_2", || {
                    T5EncoderModel::from_folder_variant(
                        folder.join("text_encoder_2"),
                        variant,
                        weights_dtype,
                        device,
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            transformer,
            transformer_config,
            vae,
            vae_config,
            scheduler,
            tokenizer,
            text_encoder,
            tokenizer_2,
            text_encoder_2,
            device: device.clone(),
            dtype,
            lora: crate::lora_pipeline::LoraState::new(folder, variant),
            memory: Default::default(),
        })
    }

    /// Keeps each component's weights in its files until its turn (see [`crate::offload`]);
    /// `None` stops releasing them (each layer then stays loaded once it is next used).
    pub fn enable_offload(&mut self, mode: Option<crate::offload::OffloadMode>) -> Result<()> {
        self.memory
            .set_mode(mode, PIPELINE, Some(&self.transformer.hooks))?;
        if mode.is_some() {
            let m = &self.memory;
            m.release_now(self.text_encoder.as_mut());
            m.release_now(self.text_encoder_2.as_mut());
            m.release_now(Some(&mut self.transformer));
            m.release_now(Some(&mut self.vae));
        }
        Ok(())
    }

    /// The memory each stage of the last run used.
    pub fn memory_stats(&self) -> Vec<crate::offload::StageMemory> {
        self.memory.stages()
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

    /// diffusers' `encode_prompt`: the CLIP pooled embedding of `prompt` (padded to the CLIP
    /// tokenizer's `model_max_length`, 77) and the T5 states of `prompt_2` (or `prompt`), padded
    /// and truncated to `max_sequence_length` tokens, each repeated `num_images_per_prompt` times.
    pub fn encode_prompt(
        &self,
        prompt: &[String],
        prompt_2: Option<&[String]>,
        num_images_per_prompt: usize,
        max_sequence_length: usize,
    ) -> Result<FluxPromptEmbeds<B>> {
        let bad = |reason: String| Error::InvalidArgument {
            pipeline: PIPELINE,
            reason,
        };
        if prompt.is_empty() {
            return Err(bad("no prompt".into()));
        }
        if max_sequence_length == 0 || max_sequence_length > 512 {
            return Err(bad(format!(
                "max_sequence_length must be in 1..=512, got {max_sequence_length}"
            )));
        }
        let prompt_2 = prompt_2.unwrap_or(prompt);
        if prompt_2.len() != prompt.len() {
            return Err(bad(format!(
                "prompt_2 has {} prompts, prompt has {}",
                prompt_2.len(),
                prompt.len()
            )));
        }
        let (Some(tok), Some(clip), Some(tok2), Some(t5)) = (
            &self.tokenizer,
            &self.text_encoder,
            &self.tokenizer_2,
            &self.text_encoder_2,
        ) else {
            return Err(bad(
                "this pipeline has no text encoders or tokenizers (null in model_index.json): pass prompt_embeds and pooled_prompt_embeds".into(),
            ));
        };
        let clip_len = tok.model_max_length().unwrap_or(77);
        let clip_ids = tok.encode_padded(&as_str(prompt), clip_len)?;
        let pooled = clip.forward(ids_tensor(clip_ids.ids, &self.device))?.pooled;
        let t5_ids = tok2.encode_padded(&as_str(prompt_2), max_sequence_length)?;
        let states = t5.forward(ids_tensor(t5_ids.ids, &self.device))?;
        Ok(FluxPromptEmbeds {
            prompt_embeds: repeat_per_prompt::<B, 3, 4>(
                states.cast(self.dtype),
                num_images_per_prompt,
            ),
            pooled_prompt_embeds: repeat_per_prompt::<B, 2, 3>(
                pooled.cast(self.dtype),
                num_images_per_prompt,
            ),
        })
    }

    /// Runs the pipeline.
    pub fn call(&mut self, call: FluxCall<B>) -> Result<FluxOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline, calling `on_step_end(step, timestep, latents)` after each denoising
    /// step (diffusers' `callback_on_step_end`); the callback may replace the latents.
    pub fn call_with_callback(
        &mut self,
        call: FluxCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 3>),
    ) -> Result<FluxOutput<B>> {
        self.run(call, None, on_step_end)
    }

    /// The text-to-image and image-to-image loop (`img2img`: the image `[b, 3, h, w]` in
    /// `[0, 1]` and the strength).
    pub(crate) fn run(
        &mut self,
        call: FluxCall<B>,
        img2img: Option<(Tensor<B, 4>, f64)>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 3>),
    ) -> Result<FluxOutput<B>> {
        // Step caches start each run fresh (diffusers resets them at the end of a run).
        self.transformer.hooks.reset_stateful_hooks();
        let pipeline = if img2img.is_some() {
            "FluxImg2ImgPipeline"
        } else {
            PIPELINE
        };
        let bad = |reason: String| Error::InvalidArgument { pipeline, reason };
        let f = self.vae_scale_factor() * 2;
        let image_size = img2img.as_ref().map(|(i, _)| {
            let [_, _, h, w] = i.dims();
            (h, w)
        });
        let height = call
            .height
            .or(image_size.map(|s| s.0))
            .unwrap_or(128 * self.vae_scale_factor());
        let width = call
            .width
            .or(image_size.map(|s| s.1))
            .unwrap_or(128 * self.vae_scale_factor());
        if height == 0 || width == 0 || !height.is_multiple_of(f) || !width.is_multiple_of(f) {
            return Err(bad(format!(
                "height and width must be positive multiples of {f}, got {height}x{width}"
            )));
        }
        if call.num_inference_steps == 0 {
            return Err(bad("num_inference_steps must be at least 1".into()));
        }
        if call.num_images_per_prompt == 0 {
            return Err(bad("num_images_per_prompt must be at least 1".into()));
        }
        let prompts = match &call.prompt_embeds {
            Some(pe) if call.prompt.is_empty() => pe.dims()[0],
            _ => call.prompt.len(),
        };
        let images = prompts.saturating_mul(call.num_images_per_prompt);
        check_request(
            pipeline,
            &[
                ("guidance_scale", call.guidance_scale),
                ("true_cfg_scale", call.true_cfg_scale),
            ],
            &[
                ("the images", &[images, 3, height, width]),
                (
                    "the prompt embeddings",
                    &[
                        images,
                        call.max_sequence_length,
                        self.transformer_config.joint_attention_dim,
                    ],
                ),
            ],
        )?;
        if let Some((image, strength)) = &img2img {
            let [b, c, h, w] = image.dims();
            if b == 0 || c != 3 || (h, w) != (height, width) {
                return Err(bad(format!(
                    "image is {:?}; expected [batch, 3, {height}, {width}] (resizing is not supported: pass an image of the output size)",
                    image.dims()
                )));
            }
            if !(0.0..=1.0).contains(strength) {
                return Err(bad(format!("strength must be in [0, 1], got {strength}")));
            }
        }
        if call.true_cfg_scale > 1.0 && call.negative_prompt.is_none() {
            tracing::warn!("true_cfg_scale > 1 has no effect without a negative prompt");
        }
        let n = call.num_images_per_prompt;
        self.memory.start_run();
        self.memory.begin_stage();
        self.memory.acquire()?;
        let embeds = match (call.prompt_embeds, call.pooled_prompt_embeds) {
            (Some(_), _) | (_, Some(_)) if !call.prompt.is_empty() => {
                return Err(bad("pass either prompt or prompt_embeds, not both".into()));
            }
            (Some(pe), Some(pp)) => {
                if pe.dims()[0] != pp.dims()[0] {
                    return Err(bad(format!(
                        "prompt_embeds has batch {} but pooled_prompt_embeds has {}",
                        pe.dims()[0],
                        pp.dims()[0]
                    )));
                }
                let [_, _, d] = pe.dims();
                if d != self.transformer_config.joint_attention_dim {
                    return Err(bad(format!(
                        "prompt_embeds has width {d}, the transformer takes {}",
                        self.transformer_config.joint_attention_dim
                    )));
                }
                let [_, d] = pp.dims();
                if d != self.transformer_config.pooled_projection_dim {
                    return Err(bad(format!(
                        "pooled_prompt_embeds has width {d}, the transformer takes {}",
                        self.transformer_config.pooled_projection_dim
                    )));
                }
                FluxPromptEmbeds {
                    prompt_embeds: repeat_per_prompt::<B, 3, 4>(pe.cast(self.dtype), n),
                    pooled_prompt_embeds: repeat_per_prompt::<B, 2, 3>(pp.cast(self.dtype), n),
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(bad(
                    "prompt_embeds and pooled_prompt_embeds go together".into()
                ));
            }
            (None, None) => self.encode_prompt(
                &call.prompt,
                call.prompt_2.as_deref(),
                n,
                call.max_sequence_length,
            )?,
        };
        let negative = match &call.negative_prompt {
            Some(neg) if call.true_cfg_scale > 1.0 => {
                let batch_prompts = embeds.prompt_embeds.dims()[0] / n;
                let neg = match neg.len() {
                    1 => vec![neg[0].clone(); batch_prompts],
                    k if k == batch_prompts => neg.clone(),
                    k => {
                        return Err(bad(format!(
                            "{k} negative prompts for {batch_prompts} prompts"
                        )));
                    }
                };
                Some(self.encode_prompt(&neg, None, n, call.max_sequence_length)?)
            }
            _ => None,
        };
        self.memory.release(self.text_encoder.as_mut())?;
        self.memory.release(self.text_encoder_2.as_mut())?;
        self.memory.end_stage::<B>("encode_prompt", &self.device);
        let batch = embeds.prompt_embeds.dims()[0];
        let channels = self.transformer_config.in_channels / 4;
        let (h, w) = (2 * (height / f), 2 * (width / f));
        let seq = (h / 2) * (w / 2);
        let img_ids: Vec<Vec<f64>> = (0..h / 2)
            .flat_map(|r| (0..w / 2).map(move |c| vec![0.0, r as f64, c as f64]))
            .collect();
        let txt_ids = vec![vec![0.0; 3]; embeds.prompt_embeds.dims()[1]];
        let sc = self.scheduler.typed_config().clone();
        let sigmas = call.sigmas.unwrap_or_else(|| {
            linspace(
                1.0,
                1.0 / call.num_inference_steps as f64,
                call.num_inference_steps,
            )
        });
        let mu = calculate_shift(
            seq,
            sc.base_image_seq_len,
            sc.max_image_seq_len,
            sc.base_shift.unwrap_or(0.5),
            sc.max_shift.unwrap_or(1.15),
        );
        Scheduler::<B>::set_timesteps(
            &mut self.scheduler,
            &TimestepOptions {
                sigmas: Some(sigmas),
                mu: Some(mu),
                ..Default::default()
            },
        )?;
        let mut timesteps = Scheduler::<B>::timesteps(&self.scheduler).to_vec();
        if let Some((_, strength)) = &img2img {
            // diffusers' `get_timesteps`.
            let steps = call.num_inference_steps as f64;
            let init = (steps * strength).min(steps);
            let t_start = (steps - init).max(0.0) as usize;
            timesteps.drain(..t_start.min(timesteps.len()));
            if timesteps.is_empty() {
                return Err(bad(format!(
                    "strength {strength} with {} steps leaves no denoising step",
                    call.num_inference_steps
                )));
            }
            Scheduler::<B>::set_begin_index(&mut self.scheduler, t_start);
        }
        let mut generator = TorchGenerator::new(call.seed.unwrap_or(0));
        let encodes_image = img2img.is_some() && call.latents.is_none();
        if encodes_image {
            self.memory.begin_stage();
            self.memory.acquire()?;
        }
        let latents = match call.latents {
            Some(l) => {
                if l.dims() != [batch, seq, channels * 4] {
                    return Err(bad(format!(
                        "latents have shape {:?}, expected {:?} (packed [batch * num_images_per_prompt, (h/2)*(w/2), channels*4] for {height}x{width})",
                        l.dims(),
                        [batch, seq, channels * 4]
                    )));
                }
                l.cast(self.dtype)
            }
            None => match img2img {
                None => pack_latents(randn_tensor::<B, 4>(
                    [batch, channels, h, w],
                    Generators::One(&mut generator),
                    &self.device,
                    self.dtype,
                )?),
                Some((image, _)) => {
                    // diffusers' `prepare_latents`: encode, sample the posterior with the
                    // generator, shift and scale, repeat to the batch, then noise to the first
                    // timestep with `scale_noise`.
                    let images = image.dims()[0];
                    if batch % images != 0 {
                        return Err(bad(format!(
                            "cannot repeat {images} images to a batch of {batch}"
                        )));
                    }
                    let x = (image.cast(self.dtype) * 2.0 - 1.0).cast(self.dtype);
                    let posterior = self.vae.encode(x)?;
                    let eps = randn_tensor::<B, 4>(
                        posterior.mean.dims(),
                        Generators::One(&mut generator),
                        &self.device,
                        self.dtype,
                    )?;
                    let z = (posterior.sample_with(eps)
                        - self.vae_config.shift_factor.unwrap_or(0.0) as f32)
                        * self.vae_config.scaling_factor as f32;
                    let z = z.repeat_dim(0, batch / images);
                    let noise = randn_tensor::<B, 4>(
                        [batch, channels, h, w],
                        Generators::One(&mut generator),
                        &self.device,
                        self.dtype,
                    )?;
                    let flat = |t: Tensor<B, 4>| t.reshape([batch, channels * h * w]);
                    let noised = Scheduler::<B>::add_noise(
                        &self.scheduler,
                        flat(z),
                        flat(noise),
                        timesteps[0],
                    )?;
                    pack_latents(noised.reshape([batch, channels, h, w]))
                }
            },
        };
        if encodes_image {
            self.memory.release(Some(&mut self.vae))?;
            self.memory.end_stage::<B>("encode_image", &self.device);
        }
        let guidance = self.transformer_config.guidance_embeds.then(|| {
            Tensor::<B, 1>::full(
                [batch],
                call.guidance_scale as f32,
                (&self.device, DType::F32),
            )
        });
        let mut latents = latents;
        self.memory.begin_stage();
        self.memory.acquire()?;
        for (i, t) in timesteps.into_iter().enumerate() {
            let timestep =
                Tensor::<B, 1>::full([batch], t as f32, (&self.device, self.dtype)) / 1000.0;
            self.transformer
                .hooks
                .set_context("cond", None, Some(t), None);
            let noise_pred = self.transformer.forward(FluxInputs {
                hidden_states: latents.clone(),
                encoder_hidden_states: embeds.prompt_embeds.clone(),
                pooled_projections: embeds.pooled_prompt_embeds.clone(),
                timestep: timestep.clone(),
                guidance: guidance.clone(),
                txt_ids: txt_ids.clone(),
                img_ids: img_ids.clone(),
            })?;
            let noise_pred = match &negative {
                Some(neg) => {
                    self.transformer
                        .hooks
                        .set_context("uncond", None, Some(t), None);
                    let neg_pred = self.transformer.forward(FluxInputs {
                        hidden_states: latents.clone(),
                        encoder_hidden_states: neg.prompt_embeds.clone(),
                        pooled_projections: neg.pooled_prompt_embeds.clone(),
                        timestep,
                        guidance: guidance.clone(),
                        txt_ids: vec![vec![0.0; 3]; neg.prompt_embeds.dims()[1]],
                        img_ids: img_ids.clone(),
                    })?;
                    neg_pred.clone() + (noise_pred - neg_pred) * call.true_cfg_scale as f32
                }
                None => noise_pred,
            };
            latents = step_nd(&mut self.scheduler, noise_pred, t, latents, None)?;
            on_step_end(i, t, &mut latents);
        }
        self.memory.release(Some(&mut self.transformer))?;
        self.memory.end_stage::<B>("denoise", &self.device);
        if call.output_type == OutputType::Latent {
            return Ok(FluxOutput {
                images: Vec::new(),
                latents: Some(latents),
            });
        }
        let z = unpack_latents(latents, h, w);
        let z = z / self.vae_config.scaling_factor as f32
            + self.vae_config.shift_factor.unwrap_or(0.0) as f32;
        let images = self
            .memory
            .stage("decode", &self.device, &mut self.vae, |vae| {
                Ok(postprocess(vae.decode(z)))
            })?;
        let images = (0..batch)
            .map(|i| images.clone().narrow(0, i, 1).squeeze_dim(0))
            .collect();
        Ok(FluxOutput {
            images,
            latents: None,
        })
    }
}

/// Step caches on the transformer (diffusers' `pipe.transformer.enable_cache(config)`).
impl<B: Backend> FluxPipeline<B> {
    /// Enables the step cache `config` on the transformer (see
    /// [`diffusers_nn::hooks::cache_utils`]); every later run uses it, from a fresh state.
    pub fn enable_cache(&mut self, config: &diffusers_nn::hooks::CacheConfig) -> Result<()> {
        use diffusers_nn::hooks::CacheableModel;
        self.transformer
            .enable_cache(config)
            .map_err(|e| crate::pipeline_stable_diffusion::invalid(PIPELINE, e.to_string()))
    }

    /// Removes the transformer's step cache; returns whether one was enabled.
    pub fn disable_cache(&mut self) -> bool {
        use diffusers_nn::hooks::CacheableModel;
        self.transformer.disable_cache()
    }

    /// What the step cache did in the last run (`None` without a cache).
    pub fn cache_report(&self) -> Option<diffusers_nn::hooks::CacheReport> {
        use diffusers_nn::hooks::CacheableModel;
        self.transformer.cache_report()
    }
}

/// diffusers' `_pack_latents`: `[b, c, h, w]` to `[b, (h/2)*(w/2), c*4]` (2x2 patches).
pub fn pack_latents<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = x.dims();
    let x: Tensor<B, 6> = x.reshape([b, c, h / 2, 2, w / 2, 2]);
    x.permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4])
}

/// diffusers' `_unpack_latents`: the inverse of [`pack_latents`] for latent height `h`, width `w`.
pub fn unpack_latents<B: Backend>(x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 4> {
    let [b, _, d] = x.dims();
    let c = d / 4;
    let x: Tensor<B, 6> = x.reshape([b, h / 2, w / 2, c, 2, 2]);
    x.permute([0, 3, 1, 4, 2, 5]).reshape([b, c, h, w])
}
