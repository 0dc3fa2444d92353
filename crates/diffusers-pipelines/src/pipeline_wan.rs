//! diffusers' `WanPipeline` (`pipelines/wan/pipeline_wan.py`): Wan 2.1 text-to-video with a
//! UMT5 text encoder, `WanTransformer3DModel` and `AutoencoderKLWan`.
//!
//! Where diffusers rounds a request it cannot run (a `num_frames` not of the form `4k + 1`, a
//! size not a multiple of 16) with a warning, this refuses it with an error naming the nearest
//! valid value: the video the caller gets is always the one asked for.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_schedulers::{Generators, Scheduler, TorchGenerator, randn_tensor, step_nd};
use diffusers_text_encoders::tokenizer::PromptTokenizer;
use diffusers_text_encoders::umt5::UMT5EncoderModel;
use diffusers_transformers::transformer_wan::{
    WanInputs, WanTransformer3DModel, WanTransformer3DModelConfig,
};
use diffusers_vae::autoencoder_kl_wan::{AutoencoderKLWan, AutoencoderKLWanConfig};

use crate::image_processor::postprocess;
use crate::pipeline_flux::OutputType;
use crate::pipeline_stable_diffusion::{
    Components, as_str, ids_tensor, invalid, negative_prompts, repeat_per_prompt, swap_scheduler,
};
use crate::pipeline_utils::check_request;
use crate::{Error, Result};

const PIPELINE: &str = "WanPipeline";

/// A Wan 2.1 text-to-video pipeline's models, tokenizer and scheduler. The text encoder and
/// tokenizer are optional (`[null, null]` in `model_index.json`): without them the pipeline runs
/// from `prompt_embeds`.
pub struct WanPipeline<B: Backend> {
    /// The denoiser.
    pub transformer: WanTransformer3DModel<B>,
    /// Its config.
    pub transformer_config: WanTransformer3DModelConfig,
    /// The video autoencoder.
    pub vae: AutoencoderKLWan<B>,
    /// Its config (`latents_mean`, `latents_std`, the scale factors).
    pub vae_config: AutoencoderKLWanConfig,
    /// The scheduler (UniPC with flow sigmas in the Wan repositories; any flow-matching class of
    /// the registry).
    pub scheduler: Box<dyn Scheduler<B>>,
    /// The UMT5 tokenizer (`tokenizer/`).
    pub tokenizer: Option<PromptTokenizer>,
    /// The UMT5 encoder (`text_encoder/`).
    pub text_encoder: Option<UMT5EncoderModel<B>>,
    device: B::Device,
    dtype: DType,
    /// The LoRA adapters loaded (see [`crate::lora_pipeline::LoraLoader`]).
    pub(crate) lora: crate::lora_pipeline::LoraState<B>,
    /// Offloading and memory statistics (see [`crate::offload`]).
    pub(crate) memory: crate::offload::PipelineMemory,
}

impl<B: Backend> std::fmt::Debug for WanPipeline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanPipeline")
            .field("transformer_config", &self.transformer_config)
            .field("vae_config", &self.vae_config)
            .field("scheduler", &self.scheduler.class_name())
            .field("text_encoder", &self.text_encoder.is_some())
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Arguments of a call, with diffusers' defaults ([`WanCall::new`] or `Default`).
#[derive(Debug, Clone)]
pub struct WanCall<B: Backend> {
    /// Prompts (one video each); leave empty to pass `prompt_embeds`.
    pub prompt: Vec<String>,
    /// Negative prompts (`""` when unset), used with `guidance_scale > 1`.
    pub negative_prompt: Option<Vec<String>>,
    /// UMT5 states `[batch, seq, text_dim]` instead of `prompt`.
    pub prompt_embeds: Option<Tensor<B, 3>>,
    /// UMT5 states of the negative prompt, with `prompt_embeds`.
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
    /// Video height, a multiple of `vae_scale_factor_spatial * patch_size` (16) (480).
    pub height: usize,
    /// Video width (832).
    pub width: usize,
    /// Frames, of the form `4k + 1` (81).
    pub num_frames: usize,
    /// Denoising steps (50).
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale (5.0); off at 1.0 or below.
    pub guidance_scale: f64,
    /// Videos per prompt (1).
    pub num_videos_per_prompt: usize,
    /// Initial latents `[batch * num_videos_per_prompt, channels, (frames - 1) / 4 + 1,
    /// height / 8, width / 8]` (`latents=`).
    pub latents: Option<Tensor<B, 5>>,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` for the initial noise (0 if unset).
    pub seed: Option<u64>,
    /// UMT5 token count (512).
    pub max_sequence_length: usize,
    /// What to return.
    pub output_type: OutputType,
}

impl<B: Backend> Default for WanCall<B> {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            negative_prompt: None,
            prompt_embeds: None,
            negative_prompt_embeds: None,
            height: 480,
            width: 832,
            num_frames: 81,
            num_inference_steps: 50,
            guidance_scale: 5.0,
            num_videos_per_prompt: 1,
            latents: None,
            seed: None,
            max_sequence_length: 512,
            output_type: OutputType::Array,
        }
    }
}

impl<B: Backend> WanCall<B> {
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
pub struct WanOutput<B: Backend> {
    /// The videos `[batch, frames, height, width, 3]` in `[0, 1]` (f32), as diffusers'
    /// `output_type="np"` `.frames`; `None` for [`OutputType::Latent`].
    pub frames: Option<Tensor<B, 5>>,
    /// The final latents `[batch, channels, latent_frames, height / 8, width / 8]` for
    /// [`OutputType::Latent`].
    pub latents: Option<Tensor<B, 5>>,
}

/// diffusers' `prompt_clean` for Wan: HTML entities unescaped twice (`html.unescape`), runs of
/// whitespace collapsed to one space, the ends stripped. (diffusers also runs `ftfy.fix_text`
/// first when the optional `ftfy` package is installed; the oracle's environment does not have
/// it, and neither does this: prompts with mojibake are kept as written.)
pub fn prompt_clean(text: &str) -> String {
    // Python's str.strip() also strips the ASCII separators \x1c-\x1f.
    let strip = |s: &str| {
        s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
            .to_string()
    };
    let once = htmlize::unescape(text);
    let twice = htmlize::unescape(once.as_ref());
    let basic = strip(twice.as_ref());
    let mut out = String::with_capacity(basic.len());
    let mut in_space = false;
    for c in basic.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    strip(&out)
}

impl<B: Backend> WanPipeline<B> {
    /// Loads a diffusers Wan folder (`model_index.json`, `transformer/`, `vae/`, `scheduler/`,
    /// and the text encoder and tokenizer unless `model_index.json` has them null).
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
        if let Some(class) = c.index.class_of("transformer_2") {
            return Err(Error::Unsupported {
                path: folder.join("model_index.json").display().to_string(),
                reason: format!(
                    "a second transformer (`transformer_2`: `{class}`, Wan 2.2's two-stage \
                     denoising) is not supported yet"
                ),
            });
        }
        if c.index.flag("expand_timesteps", false) {
            return Err(Error::Unsupported {
                path: folder.join("model_index.json").display().to_string(),
                reason: "expand_timesteps (Wan 2.2 TI2V) is not supported yet".into(),
            });
        }
        c.has("transformer", &["WanTransformer3DModel"], true)?;
        c.has("vae", &["AutoencoderKLWan"], true)?;
        let has_te = c.has(
            "text_encoder",
            &["UMT5EncoderModel", "T5EncoderModel"],
            false,
        )?;
        let has_tok = c.has(
            "tokenizer",
            &["T5Tokenizer", "T5TokenizerFast", "AutoTokenizer"],
            false,
        )?;
        if has_te != has_tok {
            let (present, missing) = if has_te {
                ("text_encoder", "tokenizer")
            } else {
                ("tokenizer", "text_encoder")
            };
            return Err(Error::MissingComponent {
                path: folder.join(missing).display().to_string(),
                component: format!("{missing} (the pipeline has a {present})"),
            });
        }
        let scheduler = c.scheduler::<B>()?;
        let weights_dtype = (dtype != DType::F32).then_some(dtype);
        tracing::info!("{}: loading transformer", folder.display());
        let (transformer, transformer_config) =
            crate::quantization::load_component(folder, "transformer", || {
                WanTransformer3DModel::from_folder_variant(
                    folder.join("transformer"),
                    variant,
                    weights_dtype,
                    device,
                )
            })?;
        tracing::info!("{}: loading vae", folder.display());
        let (vae, vae_config) = crate::quantization::load_component(folder, "vae", || {
            AutoencoderKLWan::from_folder_variant(
                folder.join("vae"),
                variant,
                weights_dtype,
                device,
            )
        })?;
        let tokenizer = has_tok
            .then(|| PromptTokenizer::from_pretrained(folder.join("tokenizer")))
            .transpose()?;
        let text_encoder = has_te
            .then(|| {
                tracing::info!("{}: loading text_encoder", folder.display());
                crate::quantization::load_component(folder, "text_encoder", || {
                    UMT5EncoderModel::from_folder_variant(
                        folder.join("text_encoder"),
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

    /// Swaps the scheduler for `class_name` built from its config (diffusers'
    /// `pipe.scheduler = X.from_config(pipe.scheduler.config)`).
    pub fn set_scheduler(&mut self, class_name: &str) -> Result<()> {
        swap_scheduler(&mut self.scheduler, class_name, PIPELINE)
    }

    /// `(temporal, spatial)` compression of the VAE (4, 8).
    pub fn vae_scale_factors(&self) -> (usize, usize) {
        (
            self.vae_config.temporal_factor(),
            self.vae_config.spatial_factor(),
        )
    }

    /// diffusers' `_get_t5_prompt_embeds`: each prompt cleaned ([`prompt_clean`]), tokenized to
    /// `max_sequence_length` tokens with its attention mask, encoded with the mask, the states
    /// past each prompt's tokens set to zero, each repeated `num_videos_per_prompt` times.
    pub fn encode_prompt(
        &self,
        prompt: &[String],
        num_videos_per_prompt: usize,
        max_sequence_length: usize,
    ) -> Result<Tensor<B, 3>> {
        if prompt.is_empty() {
            return Err(invalid(PIPELINE, "no prompt"));
        }
        if max_sequence_length == 0 {
            return Err(invalid(PIPELINE, "max_sequence_length must be at least 1"));
        }
        let (Some(tok), Some(te)) = (&self.tokenizer, &self.text_encoder) else {
            return Err(invalid(
                PIPELINE,
                "this pipeline has no text encoder or tokenizer (null in model_index.json): \
                 pass prompt_embeds",
            ));
        };
        let cleaned: Vec<String> = prompt.iter().map(|p| prompt_clean(p)).collect();
        let t = tok.encode_padded(&as_str(&cleaned), max_sequence_length)?;
        let mask = ids_tensor::<B>(t.attention_mask, &self.device);
        let states = te.forward_masked(ids_tensor(t.ids, &self.device), Some(mask.clone()))?;
        // `u[:seq_len]` padded with zeros: the mask is ones then zeros (right padding).
        let keep = mask.float().cast(states.dtype()).unsqueeze_dim::<3>(2);
        let states = (states * keep).cast(self.dtype);
        Ok(repeat_per_prompt::<B, 3, 4>(states, num_videos_per_prompt))
    }

    /// Runs the pipeline.
    pub fn call(&mut self, call: WanCall<B>) -> Result<WanOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline, calling `on_step_end(step, timestep, latents)` after each denoising
    /// step (diffusers' `callback_on_step_end`); the callback may replace the latents.
    pub fn call_with_callback(
        &mut self,
        call: WanCall<B>,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 5>),
    ) -> Result<WanOutput<B>> {
        // Step caches start each run fresh (diffusers resets them at the end of a run).
        self.transformer.hooks.reset_stateful_hooks();
        let bad = |reason: String| invalid(PIPELINE, reason);
        let (ft, fs) = self.vae_scale_factors();
        let [_, ph, pw] = self.transformer.patch_size();
        let (mh, mw) = (fs * ph, fs * pw);
        let (height, width) = (call.height, call.width);
        if height == 0 || width == 0 || !height.is_multiple_of(mh) || !width.is_multiple_of(mw) {
            return Err(bad(format!(
                "height and width must be positive multiples of {mh} and {mw} (the VAE's {fs} \
                 times the patch size), got {height}x{width} (nearest: {}x{})",
                (height / mh).max(1) * mh,
                (width / mw).max(1) * mw
            )));
        }
        if call.num_frames == 0 || call.num_frames % ft != 1 % ft {
            let k = call.num_frames / ft;
            return Err(bad(format!(
                "num_frames must be of the form {ft}k + 1 (1, 5, ..., 81), got {} (nearest: {} or {})",
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
        let prompts = match &call.prompt_embeds {
            Some(pe) if call.prompt.is_empty() => pe.dims()[0],
            _ => call.prompt.len(),
        };
        let videos = prompts.saturating_mul(n);
        let channels = self.transformer.in_channels();
        let latent_frames = (call.num_frames - 1) / ft + 1;
        let latent_shape = [videos, channels, latent_frames, height / fs, width / fs];
        check_request(
            PIPELINE,
            &[("guidance_scale", call.guidance_scale)],
            &[
                ("the video", &[videos, 3, call.num_frames, height, width]),
                ("the latents", &latent_shape),
                (
                    "the prompt embeddings",
                    &[
                        videos,
                        call.max_sequence_length,
                        self.transformer_config.text_dim,
                    ],
                ),
            ],
        )?;
        let cfg = call.guidance_scale > 1.0;
        self.memory.start_run();
        self.memory.begin_stage();
        self.memory.acquire()?;
        let text_dim = self.transformer_config.text_dim;
        let check_embeds = |name: &str, e: &Tensor<B, 3>| -> Result<()> {
            let [b, _, d] = e.dims();
            if d != text_dim || b == 0 {
                return Err(invalid(
                    PIPELINE,
                    format!(
                        "{name} is {:?}; the transformer takes [batch, seq, {text_dim}]",
                        e.dims()
                    ),
                ));
            }
            Ok(())
        };
        let (embeds, negative) = match call.prompt_embeds {
            Some(_) if !call.prompt.is_empty() => {
                return Err(bad("pass either prompt or prompt_embeds, not both".into()));
            }
            Some(pe) => {
                check_embeds("prompt_embeds", &pe)?;
                let neg = match (call.negative_prompt_embeds, cfg) {
                    (Some(ne), true) => {
                        check_embeds("negative_prompt_embeds", &ne)?;
                        if ne.dims() != pe.dims() {
                            return Err(bad(format!(
                                "negative_prompt_embeds {:?} and prompt_embeds {:?} differ in shape",
                                ne.dims(),
                                pe.dims()
                            )));
                        }
                        Some(repeat_per_prompt::<B, 3, 4>(ne.cast(self.dtype), n))
                    }
                    (None, true) => match &call.negative_prompt {
                        Some(neg) => Some(self.encode_prompt(
                            &negative_prompts(Some(neg), prompts, PIPELINE)?,
                            n,
                            call.max_sequence_length,
                        )?),
                        None => {
                            return Err(bad("guidance_scale > 1 with prompt_embeds needs \
                                 negative_prompt_embeds (or a negative prompt and a text encoder)"
                                .into()));
                        }
                    },
                    (_, false) => None,
                };
                (repeat_per_prompt::<B, 3, 4>(pe.cast(self.dtype), n), neg)
            }
            None => {
                let embeds = self.encode_prompt(&call.prompt, n, call.max_sequence_length)?;
                let neg = if cfg {
                    let neg = negative_prompts(call.negative_prompt.as_deref(), prompts, PIPELINE)?;
                    Some(self.encode_prompt(&neg, n, call.max_sequence_length)?)
                } else {
                    None
                };
                (embeds, neg)
            }
        };
        self.memory.release(self.text_encoder.as_mut())?;
        self.memory.end_stage::<B>("encode_prompt", &self.device);
        self.scheduler
            .set_timesteps(&diffusers_schedulers::TimestepOptions {
                num_inference_steps: Some(call.num_inference_steps),
                ..Default::default()
            })?;
        let timesteps = self.scheduler.timesteps().to_vec();
        // diffusers draws and keeps the latents in f32; the transformer sees them in its dtype.
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
        self.memory.begin_stage();
        self.memory.acquire()?;
        let steps = timesteps.len();
        let sigmas = self.scheduler.sigmas().unwrap_or_default();
        for (i, t) in timesteps.into_iter().enumerate() {
            let input = latents.clone().cast(self.dtype);
            let timestep = Tensor::<B, 1>::full([videos], t as f32, (&self.device, DType::F32));
            let hooks = &self.transformer.hooks;
            hooks.set_context("cond", Some((i, steps)), Some(t), sigmas.get(i).copied());
            diffusers_nn::hooks::cache_utils::set_model_input(hooks, &input);
            let cond = self.transformer.forward(WanInputs {
                hidden_states: input.clone(),
                timestep: timestep.clone(),
                encoder_hidden_states: embeds.clone(),
            })?;
            let noise_pred = match &negative {
                Some(neg) => {
                    hooks.set_context("uncond", Some((i, steps)), Some(t), sigmas.get(i).copied());
                    diffusers_nn::hooks::cache_utils::set_model_input(hooks, &input);
                    let uncond = self.transformer.forward(WanInputs {
                        hidden_states: input,
                        timestep,
                        encoder_hidden_states: neg.clone(),
                    })?;
                    // In the transformer's dtype, as diffusers.
                    uncond.clone() + (cond - uncond) * call.guidance_scale as f32
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
            return Ok(WanOutput {
                frames: None,
                latents: Some(latents),
            });
        }
        Ok(WanOutput {
            frames: Some(self.decode(latents)?),
            latents: None,
        })
    }

    /// The pipeline's last stage on final latents (as [`OutputType::Latent`] returns them):
    /// `latents / (1 / latents_std) + latents_mean`, `vae.decode`, frames `[batch, frames,
    /// height, width, 3]` in `[0, 1]`.
    pub fn decode(&mut self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
        self.decode_with_progress(latents, &mut |_, _| {})
    }

    /// [`decode`](Self::decode) reporting `(latent frames decoded, latent frames)` as the VAE
    /// goes.
    pub fn decode_with_progress(
        &mut self,
        latents: Tensor<B, 5>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<B, 5>> {
        let z = self
            .vae_config
            .denormalize_latents(latents.cast(self.dtype))?;
        self.memory
            .stage("decode", &self.device, &mut self.vae, |vae| {
                Ok(postprocess_video(vae.decode_with_progress(z, progress)?))
            })
    }
}

/// Step caches on the transformer (diffusers' `pipe.transformer.enable_cache(config)`).
impl<B: Backend> WanPipeline<B> {
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

/// diffusers' `VideoProcessor.postprocess_video(video, output_type="np")`: `[b, 3, f, h, w]`
/// in `[-1, 1]` to `[b, f, h, w, 3]` in `[0, 1]` (f32).
pub fn postprocess_video<B: Backend>(video: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, c, f, h, w] = video.dims();
    let frames = video.permute([0, 2, 1, 3, 4]).reshape([b * f, c, h, w]);
    postprocess(frames).reshape([b, f, h, w, c])
}
