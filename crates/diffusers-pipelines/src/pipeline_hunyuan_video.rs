//! diffusers' `HunyuanVideoPipeline` (`pipelines/hunyuan_video/pipeline_hunyuan_video.py`):
//! HunyuanVideo text-to-video with a Llama text encoder under a prompt template, CLIP's pooled
//! embedding, `HunyuanVideoTransformer3DModel` with embedded guidance, and
//! `AutoencoderKLHunyuanVideo`.
//!
//! As in [`crate::pipeline_wan`], a `num_frames` not of the form `4k + 1` or a size not a
//! multiple of 16 is an error (diffusers computes `(num_frames - 1) // 4 + 1` latent frames and
//! returns `4k + 1` frames whatever was asked).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_schedulers::{
    Generators, Scheduler, TimestepOptions, TorchGenerator, randn_tensor, step_nd,
};
use diffusers_text_encoders::clip::CLIPTextModel;
/// The prompt template (`{"template": "...{}...", "crop_start": N}`), diffusers' `prompt_template=`.
pub use diffusers_text_encoders::llama::PromptTemplate;
use diffusers_text_encoders::llama::{LlamaModel, LlamaPromptOptions, get_llama_prompt_embeds};
use diffusers_text_encoders::tokenizer::PromptTokenizer;
use diffusers_transformers::transformer_hunyuan_video::{
    HunyuanVideoInputs, HunyuanVideoTransformer3DModel, HunyuanVideoTransformer3DModelConfig,
};
use diffusers_vae::autoencoder_kl_hunyuan_video::{
    AutoencoderKLHunyuanVideo, AutoencoderKLHunyuanVideoConfig,
};

use crate::Result;
use crate::pipeline_flux::OutputType;
use crate::pipeline_stable_diffusion::{
    Components, as_str, ids_tensor, invalid, negative_prompts, repeat_per_prompt,
};
use crate::pipeline_utils::check_request;
use crate::pipeline_wan::postprocess_video;

const PIPELINE: &str = "HunyuanVideoPipeline";

/// A HunyuanVideo pipeline's models, tokenizers and scheduler.
pub struct HunyuanVideoPipeline<B: Backend> {
    /// The denoiser.
    pub transformer: HunyuanVideoTransformer3DModel<B>,
    /// Its config.
    pub transformer_config: HunyuanVideoTransformer3DModelConfig,
    /// The video autoencoder.
    pub vae: AutoencoderKLHunyuanVideo<B>,
    /// Its config (`scaling_factor`, the compression ratios).
    pub vae_config: AutoencoderKLHunyuanVideoConfig,
    /// The scheduler (FlowMatchEuler in the HunyuanVideo repositories).
    pub scheduler: Box<dyn Scheduler<B>>,
    /// The Llama tokenizer (`tokenizer/`).
    pub tokenizer: PromptTokenizer,
    /// The Llama encoder (`text_encoder/`): the prompt states.
    pub text_encoder: LlamaModel<B>,
    /// The CLIP tokenizer (`tokenizer_2/`).
    pub tokenizer_2: PromptTokenizer,
    /// The CLIP text encoder (`text_encoder_2/`): the pooled embedding.
    pub text_encoder_2: CLIPTextModel<B>,
    device: B::Device,
    dtype: DType,
    /// The LoRA adapters loaded (see [`crate::lora_pipeline::LoraLoader`]).
    pub(crate) lora: crate::lora_pipeline::LoraState<B>,
    /// Offloading and memory statistics (see [`crate::offload`]).
    pub(crate) memory: crate::offload::PipelineMemory,
}

impl<B: Backend> std::fmt::Debug for HunyuanVideoPipeline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HunyuanVideoPipeline")
            .field("transformer_config", &self.transformer_config)
            .field("vae_config", &self.vae_config)
            .field("scheduler", &self.scheduler.class_name())
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Arguments of a call, with diffusers' defaults ([`HunyuanVideoCall::new`] or `Default`).
#[derive(Debug, Clone)]
pub struct HunyuanVideoCall<B: Backend> {
    /// Prompts (one video each).
    pub prompt: Vec<String>,
    /// Negative prompts, used with `true_cfg_scale > 1` (a second transformer call per step).
    pub negative_prompt: Option<Vec<String>>,
    /// True classifier-free guidance scale (1.0: off).
    pub true_cfg_scale: f64,
    /// Embedded guidance scale (6.0), given to the transformer as `guidance_scale * 1000`.
    pub guidance_scale: f64,
    /// Video height, a multiple of 16 (720).
    pub height: usize,
    /// Video width (1280).
    pub width: usize,
    /// Frames, of the form `4k + 1` (129).
    pub num_frames: usize,
    /// Denoising steps (50).
    pub num_inference_steps: usize,
    /// Videos per prompt (1).
    pub num_videos_per_prompt: usize,
    /// Initial latents `[batch * num_videos_per_prompt, channels, (frames - 1) / 4 + 1,
    /// height / 8, width / 8]` (`latents=`).
    pub latents: Option<Tensor<B, 5>>,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` for the initial noise (0 if unset).
    pub seed: Option<u64>,
    /// Llama tokens kept after the template's crop (256).
    pub max_sequence_length: usize,
    /// The prompt template (`None`: the pipeline's default, with `crop_start` 95).
    pub prompt_template: Option<PromptTemplate>,
    /// What to return.
    pub output_type: OutputType,
}

impl<B: Backend> Default for HunyuanVideoCall<B> {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            negative_prompt: None,
            true_cfg_scale: 1.0,
            guidance_scale: 6.0,
            height: 720,
            width: 1280,
            num_frames: 129,
            num_inference_steps: 50,
            num_videos_per_prompt: 1,
            latents: None,
            seed: None,
            max_sequence_length: 256,
            prompt_template: None,
            output_type: OutputType::Array,
        }
    }
}

impl<B: Backend> HunyuanVideoCall<B> {
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
pub struct HunyuanVideoOutput<B: Backend> {
    /// The videos `[batch, frames, height, width, 3]` in `[0, 1]` (f32); `None` for
    /// [`OutputType::Latent`].
    pub frames: Option<Tensor<B, 5>>,
    /// The final latents for [`OutputType::Latent`].
    pub latents: Option<Tensor<B, 5>>,
}

/// The prompt conditioning of a call.
#[derive(Debug, Clone)]
pub struct HunyuanVideoPromptEmbeds<B: Backend> {
    /// Llama states `[batch, max_sequence_length, hidden]`.
    pub prompt_embeds: Tensor<B, 3>,
    /// Their mask `[batch, max_sequence_length]` (1 for tokens), in the compute dtype.
    pub prompt_attention_mask: Tensor<B, 2>,
    /// CLIP's pooled embedding `[batch, pooled_projection_dim]`.
    pub pooled_prompt_embeds: Tensor<B, 2>,
}

impl<B: Backend> HunyuanVideoPipeline<B> {
    /// Loads a diffusers HunyuanVideo folder (`model_index.json` and every component).
    pub fn from_folder(folder: impl AsRef<Path>, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with every model's weights of `variant` (as diffusers' `variant=`).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        let folder = folder.as_ref();
        let (pipe, sources) =
            crate::offload::record_loading(|| Self::load(folder, variant, dtype, device));
        let mut pipe = pipe?;
        pipe.memory = crate::offload::PipelineMemory::new(sources, None);
        Ok(pipe)
    }

    fn load(
        folder: &Path,
        variant: Option<&str>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        let c = Components::open(folder, PIPELINE, &[PIPELINE])?.with_variant(variant);
        c.has("transformer", &["HunyuanVideoTransformer3DModel"], true)?;
        c.has("vae", &["AutoencoderKLHunyuanVideo"], true)?;
        c.has("text_encoder", &["LlamaModel"], true)?;
        c.has(
            "tokenizer",
            &[
                "LlamaTokenizerFast",
                "LlamaTokenizer",
                "PreTrainedTokenizerFast",
                "AutoTokenizer",
                "TokenizersBackend",
            ],
            true,
        )?;
        c.has("text_encoder_2", &["CLIPTextModel"], true)?;
        c.has("tokenizer_2", &["CLIPTokenizer", "CLIPTokenizerFast"], true)?;
        let scheduler = c.scheduler::<B>()?;
        let weights_dtype = (dtype != DType::F32).then_some(dtype);
        tracing::info!("{}: loading transformer", folder.display());
        let (transformer, transformer_config) =
            crate::quantization::load_component(folder, "transformer", || {
                HunyuanVideoTransformer3DModel::from_folder_variant(
                    folder.join("transformer"),
                    variant,
                    weights_dtype,
                    device,
                )
            })?;
        tracing::info!("{}: loading vae", folder.display());
        let (vae, vae_config) = crate::quantization::load_component(folder, "vae", || {
            AutoencoderKLHunyuanVideo::from_folder_variant(
                folder.join("vae"),
                variant,
                weights_dtype,
                device,
            )
        })?;
        let tokenizer = PromptTokenizer::from_pretrained(folder.join("tokenizer"))?;
        let tokenizer_2 = PromptTokenizer::from_pretrained(folder.join("tokenizer_2"))?;
        tracing::info!("{}: loading text_encoder", folder.display());
        let text_encoder = crate::quantization::load_component(folder, "text_encoder", || {
            LlamaModel::from_folder_variant(
                folder.join("text_encoder"),
                variant,
                weights_dtype,
                device,
            )
        })?;
        tracing::info!("{}: loading text_encoder_2", folder.display());
        let text_encoder_2 = crate::quantization::load_component(folder, "text_encoder_2", || {
            CLIPTextModel::from_folder_variant(
                folder.join("text_encoder_2"),
                variant,
                weights_dtype,
                device,
            )
        })?;
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
            m.release_now(Some(&mut self.text_encoder));
            m.release_now(Some(&mut self.text_encoder_2));
            m.release_now(Some(&mut self.transformer));
            m.release_now(Some(&mut self.vae));
        }
        Ok(())
    }

    /// The memory each stage of the last run used.
    pub fn memory_stats(&self) -> Vec<crate::offload::StageMemory> {
        self.memory.stages()
    }

    /// The device the models are on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `(temporal, spatial)` compression of the VAE (4, 8).
    pub fn vae_scale_factors(&self) -> (usize, usize) {
        (
            self.vae_config.temporal_compression_ratio,
            self.vae_config.spatial_compression_ratio,
        )
    }

    /// diffusers' `encode_prompt`: the Llama states of the templated prompts (cropped past the
    /// template, with their mask) and CLIP's pooled embedding of the prompts (77 tokens), each
    /// repeated `num_videos_per_prompt` times.
    pub fn encode_prompt(
        &self,
        prompt: &[String],
        template: &PromptTemplate,
        num_videos_per_prompt: usize,
        max_sequence_length: usize,
    ) -> Result<HunyuanVideoPromptEmbeds<B>> {
        if prompt.is_empty() {
            return Err(invalid(PIPELINE, "no prompt"));
        }
        let llama = get_llama_prompt_embeds(
            &self.text_encoder,
            &self.tokenizer,
            &as_str(prompt),
            template,
            LlamaPromptOptions {
                max_sequence_length,
                ..Default::default()
            },
        )?;
        let clip_ids = self.tokenizer_2.encode_padded(&as_str(prompt), 77)?;
        let pooled = self
            .text_encoder_2
            .forward(ids_tensor(clip_ids.ids, &self.device))?
            .pooled;
        let n = num_videos_per_prompt;
        Ok(HunyuanVideoPromptEmbeds {
            prompt_embeds: repeat_per_prompt::<B, 3, 4>(llama.prompt_embeds.cast(self.dtype), n),
            prompt_attention_mask: repeat_per_prompt::<B, 2, 3>(
                llama.prompt_attention_mask.float().cast(self.dtype),
                n,
            ),
            pooled_prompt_embeds: repeat_per_prompt::<B, 2, 3>(pooled.cast(self.dtype), n),
        })
    }

    /// Runs the pipeline.
    pub fn call(&mut self, call: HunyuanVideoCall<B>) -> Result<HunyuanVideoOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline, calling `on_step_end(step, timestep, latents)` after each step.
    pub fn call_with_callback(
        &mut self,
        call: HunyuanVideoCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 5>),
    ) -> Result<HunyuanVideoOutput<B>> {
        // Step caches start each run fresh (diffusers resets them at the end of a run).
        self.transformer.hooks.reset_stateful_hooks();
        let bad = |reason: String| invalid(PIPELINE, reason);
        let (ft, fs) = self.vae_scale_factors();
        let (height, width) = (call.height, call.width);
        if height == 0 || width == 0 || !height.is_multiple_of(16) || !width.is_multiple_of(16) {
            return Err(bad(format!(
                "height and width have to be positive multiples of 16, got {height}x{width}"
            )));
        }
        if call.num_frames == 0 || call.num_frames % ft != 1 % ft {
            let k = call.num_frames / ft;
            return Err(bad(format!(
                "num_frames must be of the form {ft}k + 1 (1, 5, ..., 129), got {} (nearest: {} or {})",
                call.num_frames,
                k * ft + 1,
                (k + 1) * ft + 1
            )));
        }
        if call.num_inference_steps == 0 {
            return Err(bad("num_inference_steps must be at least 1".into()));
        }
        if call.num_videos_per_prompt == 0 {
            return Err(bad("num_videos_per_prompt must be at least 1".into()));
        }
        let n = call.num_videos_per_prompt;
        let prompts = call.prompt.len();
        let videos = prompts.saturating_mul(n);
        let channels = self.transformer.in_channels();
        let latent_shape = [
            videos,
            channels,
            (call.num_frames - 1) / ft + 1,
            height / fs,
            width / fs,
        ];
        check_request(
            PIPELINE,
            &[
                ("guidance_scale", call.guidance_scale),
                ("true_cfg_scale", call.true_cfg_scale),
            ],
            &[
                ("the video", &[videos, 3, call.num_frames, height, width]),
                ("the latents", &latent_shape),
            ],
        )?;
        let template = call.prompt_template.clone().unwrap_or_default();
        self.memory.start_run();
        self.memory.begin_stage();
        self.memory.acquire()?;
        let embeds = self.encode_prompt(&call.prompt, &template, n, call.max_sequence_length)?;
        let negative = match &call.negative_prompt {
            Some(neg) if call.true_cfg_scale > 1.0 => {
                let neg = negative_prompts(Some(neg), prompts, PIPELINE)?;
                Some(self.encode_prompt(&neg, &template, n, call.max_sequence_length)?)
            }
            _ => None,
        };
        self.memory.release(Some(&mut self.text_encoder))?;
        self.memory.release(Some(&mut self.text_encoder_2))?;
        self.memory.end_stage::<B>("encode_prompt", &self.device);
        // np.linspace(1.0, 0.0, steps + 1)[:-1].
        let steps = call.num_inference_steps;
        let sigmas: Vec<f64> = (0..steps).map(|i| 1.0 - i as f64 / steps as f64).collect();
        self.scheduler.set_timesteps(&TimestepOptions {
            sigmas: Some(sigmas),
            ..Default::default()
        })?;
        let timesteps = self.scheduler.timesteps().to_vec();
        let mut latents = match call.latents {
            Some(l) => {
                if l.dims() != latent_shape {
                    return Err(bad(format!(
                        "latents have shape {:?}, expected {latent_shape:?} ([batch * \
                         num_videos_per_prompt, channels, (num_frames - 1) / {ft} + 1, height / \
                         {fs}, width / {fs}])",
                        l.dims()
                    )));
                }
                l.cast(DType::F32)
            }
            None => {
                let mut generator = TorchGenerator::new(call.seed.unwrap_or(0));
                randn_tensor::<B, 5>(
                    latent_shape,
                    Generators::One(&mut generator),
                    &self.device,
                    DType::F32,
                )?
            }
        };
        // torch.tensor([guidance_scale] * batch, dtype=transformer_dtype) * 1000.0
        let guidance = self.transformer_config.guidance_embeds.then(|| {
            Tensor::<B, 1>::full(
                [videos],
                call.guidance_scale as f32,
                (&self.device, self.dtype),
            ) * 1000.0
        });
        self.memory.begin_stage();
        self.memory.acquire()?;
        for (i, t) in timesteps.into_iter().enumerate() {
            let input = latents.clone().cast(self.dtype);
            let timestep = Tensor::<B, 1>::full([videos], t as f32, (&self.device, DType::F32));
            let run = |e: &HunyuanVideoPromptEmbeds<B>| {
                self.transformer.forward(HunyuanVideoInputs {
                    hidden_states: input.clone(),
                    timestep: timestep.clone(),
                    encoder_hidden_states: e.prompt_embeds.clone(),
                    encoder_attention_mask: e.prompt_attention_mask.clone(),
                    pooled_projections: e.pooled_prompt_embeds.clone(),
                    guidance: guidance.clone(),
                })
            };
            let hooks = &self.transformer.hooks;
            hooks.set_context("cond", None, Some(t), None);
            let cond = run(&embeds)?;
            let noise_pred = match &negative {
                Some(neg) => {
                    hooks.set_context("uncond", None, Some(t), None);
                    let uncond = run(neg)?;
                    uncond.clone() + (cond - uncond) * call.true_cfg_scale as f32
                }
                None => cond,
            };
            latents = step_nd(
                self.scheduler.as_mut(),
                noise_pred.cast(DType::F32),
                t,
                latents,
                None,
            )?;
            on_step_end(i, t, &mut latents);
        }
        self.memory.release(Some(&mut self.transformer))?;
        self.memory.end_stage::<B>("denoise", &self.device);
        if call.output_type == OutputType::Latent {
            return Ok(HunyuanVideoOutput {
                frames: None,
                latents: Some(latents),
            });
        }
        Ok(HunyuanVideoOutput {
            frames: Some(self.decode(latents)?),
            latents: None,
        })
    }

    /// The last stage on final latents: `latents / scaling_factor`, `vae.decode`, frames
    /// `[batch, frames, height, width, 3]` in `[0, 1]`.
    pub fn decode(&mut self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
        self.decode_with_progress(latents, &mut |_, _| {})
    }

    /// [`decode`](Self::decode) reporting `(latent frames decoded, latent frames)` as the VAE's
    /// frame windows finish.
    pub fn decode_with_progress(
        &mut self,
        latents: Tensor<B, 5>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<B, 5>> {
        let z = latents.cast(self.dtype) / self.vae_config.scaling_factor as f32;
        self.memory
            .stage("decode", &self.device, &mut self.vae, |vae| {
                Ok(postprocess_video(vae.decode_with_progress(z, progress)?))
            })
    }
}

/// Step caches on the transformer (diffusers' `pipe.transformer.enable_cache(config)`).
impl<B: Backend> HunyuanVideoPipeline<B> {
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
