//! diffusers' `StableDiffusionPipeline` (`pipelines/stable_diffusion/pipeline_stable_diffusion.py`):
//! SD 1.x / 2.x text-to-image with a UNet, a CLIP text encoder and any scheduler of the
//! registry. The pieces the other Stable Diffusion pipelines share (component loading, scheduler
//! swapping, the denoising loop, `rescale_noise_cfg`, decoding) live here, as diffusers' "Copied
//! from" functions do.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_schedulers::registry::{self, SCHEDULERS};
use diffusers_schedulers::{
    DDIMScheduler, Generators, NoiseSource, Scheduler, TCDScheduler, TimestepOptions,
    TorchGenerator, randn_tensor, scale_model_input_nd, step_nd,
};
use diffusers_text_encoders::clip::CLIPTextModel;
use diffusers_text_encoders::tokenizer::PromptTokenizer;
use diffusers_unets::unet_2d_condition::{
    OneOrMany, UNet2DConditionInputs, UNet2DConditionModel, UNet2DConditionModelConfig,
};
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use serde_json::Value;

pub use crate::pipeline_flux::OutputType;

use crate::image_processor::postprocess;
use crate::model_index::ModelIndex;
use crate::pipeline_utils::check_request;
use crate::{Error, Result};

const PIPELINE: &str = "StableDiffusionPipeline";

/// The classes whose folders [`StableDiffusionPipeline::from_folder`] reads (the same components).
pub const SD_CLASSES: &[&str] = &["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"];

/// A Stable Diffusion 1.x / 2.x pipeline's models, tokenizer and scheduler.
pub struct StableDiffusionPipeline<B: Backend> {
    /// The denoiser.
    pub unet: UNet2DConditionModel<B>,
    /// Its config (`sample_size`, `in_channels`, `time_cond_proj_dim`).
    pub unet_config: UNet2DConditionModelConfig,
    /// The autoencoder.
    pub vae: AutoencoderKL<B>,
    /// Its config (`scaling_factor`, `block_out_channels`).
    pub vae_config: AutoencoderKLConfig,
    /// CLIP text encoder (`text_encoder/`).
    pub text_encoder: CLIPTextModel<B>,
    /// CLIP tokenizer (`tokenizer/`).
    pub tokenizer: PromptTokenizer,
    /// The scheduler: any class of the registry; swap it with [`Self::set_scheduler`] (or assign
    /// one built with `diffusers_schedulers::from_config`).
    pub scheduler: Box<dyn Scheduler<B>>,
    device: B::Device,
    dtype: DType,
    /// The LoRA adapters loaded (see [`crate::lora_pipeline::LoraLoader`]).
    pub(crate) lora: crate::lora_pipeline::LoraState<B>,
    /// Offloading and memory statistics (see [`crate::offload`]).
    pub(crate) memory: crate::offload::PipelineMemory,
}

impl<B: Backend> std::fmt::Debug for StableDiffusionPipeline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusionPipeline")
            .field("scheduler", &self.scheduler.class_name())
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

/// Arguments of a call, with diffusers' defaults ([`StableDiffusionCall::new`] or `Default`).
#[derive(Debug, Clone)]
pub struct StableDiffusionCall<B: Backend> {
    /// Prompts (one batch entry each).
    pub prompt: Vec<String>,
    /// Negative prompts (one, or one per prompt); `None` is diffusers' `negative_prompt=None`
    /// (the empty prompt).
    pub negative_prompt: Option<Vec<String>>,
    /// Image height, a multiple of 8 (default `unet.sample_size * vae_scale_factor`).
    pub height: Option<usize>,
    /// Image width (same rules).
    pub width: Option<usize>,
    /// Denoising steps (50).
    pub num_inference_steps: usize,
    /// Custom timesteps (schedulers that accept them), instead of `num_inference_steps`.
    pub timesteps: Option<Vec<f64>>,
    /// Custom sigmas (schedulers that accept them), instead of `num_inference_steps`.
    pub sigmas: Option<Vec<f64>>,
    /// Classifier-free guidance scale (7.5); guidance runs when it is above 1.
    pub guidance_scale: f64,
    /// `guidance_rescale` (0.0): [`rescale_noise_cfg`] of the guided prediction.
    pub guidance_rescale: f64,
    /// Images per prompt (1).
    pub num_images_per_prompt: usize,
    /// DDIM's `eta` (0.0), passed to the schedulers whose `step` takes it (DDIM, TCD), as
    /// diffusers' `prepare_extra_step_kwargs` does; other schedulers ignore it.
    pub eta: f64,
    /// Initial latents `[batch * num_images_per_prompt, 4, height / f, width / f]` (`latents=`),
    /// unscaled (they are multiplied by the scheduler's `init_noise_sigma`).
    pub latents: Option<Tensor<B, 4>>,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` (0 if unset): it draws the initial
    /// noise and then the noise of stochastic scheduler steps, as diffusers' `generator` does.
    pub seed: Option<u64>,
    /// Layers skipped from the end of CLIP (`hidden_states[-(clip_skip + 1)]`, then the final
    /// layer norm), for the prompt (not the negative prompt), as diffusers.
    pub clip_skip: Option<usize>,
    /// What to return.
    pub output_type: OutputType,
}

impl<B: Backend> Default for StableDiffusionCall<B> {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            negative_prompt: None,
            height: None,
            width: None,
            num_inference_steps: 50,
            timesteps: None,
            sigmas: None,
            guidance_scale: 7.5,
            guidance_rescale: 0.0,
            num_images_per_prompt: 1,
            eta: 0.0,
            latents: None,
            seed: None,
            clip_skip: None,
            output_type: OutputType::Array,
        }
    }
}

impl<B: Backend> StableDiffusionCall<B> {
    /// A call for one prompt with diffusers' defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: vec![prompt.into()],
            ..Default::default()
        }
    }
}

/// What a Stable Diffusion call returns.
#[derive(Debug, Clone)]
pub struct StableDiffusionOutput<B: Backend> {
    /// One `[height, width, 3]` image in `[0, 1]` per generated image, for
    /// [`OutputType::Array`]; empty for [`OutputType::Latent`].
    pub images: Vec<Tensor<B, 3>>,
    /// The final latents `[batch, 4, height / f, width / f]` for [`OutputType::Latent`].
    pub latents: Option<Tensor<B, 4>>,
}

impl<B: Backend> StableDiffusionOutput<B> {
    /// The images stacked as diffusers' `output_type="np"` array `[batch, height, width, 3]`.
    pub fn array(&self) -> Option<Tensor<B, 4>> {
        (!self.images.is_empty()).then(|| Tensor::stack(self.images.clone(), 0))
    }
}

/// The prompt conditioning of a call, each entry repeated for the images of its prompt.
#[derive(Debug, Clone)]
pub struct StableDiffusionPromptEmbeds<B: Backend> {
    /// `[batch * num_images_per_prompt, seq, hidden]`.
    pub prompt_embeds: Tensor<B, 3>,
    /// The same for the negative prompt, with classifier-free guidance.
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
}

pub(crate) fn invalid(pipeline: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        pipeline,
        reason: reason.into(),
    }
}

/// A pipeline folder's `model_index.json` and its component checks (shared by the SD pipelines).
pub(crate) struct Components {
    pub folder: PathBuf,
    pub index: ModelIndex,
    /// The weights variant to load (`fp16`: `*.fp16.safetensors`), as diffusers' `variant=`.
    pub variant: Option<String>,
}

impl Components {
    /// Reads `model_index.json`, checking `_class_name` is one of `classes`; non-null components
    /// this crate does not run (`safety_checker`, `feature_extractor`, `image_encoder`) are
    /// skipped with a warning (null ones with model_index's log line).
    pub fn open(folder: &Path, pipeline: &str, classes: &[&str]) -> Result<Self> {
        let index = ModelIndex::load(folder.join("model_index.json"))?;
        if !classes.contains(&index.class_name.as_str()) {
            return Err(Error::Unsupported {
                path: folder.display().to_string(),
                reason: format!(
                    "`{}` is not a {pipeline} (expected {})",
                    index.class_name,
                    classes.join(" or ")
                ),
            });
        }
        for name in ["safety_checker", "feature_extractor", "image_encoder"] {
            if let Some(c) = index.class_of(name) {
                if name == "safety_checker" {
                    tracing::warn!(
                        "{}: safety_checker `{c}` is not supported and is not run: images are not filtered",
                        folder.display()
                    );
                } else {
                    tracing::warn!(
                        "{}: component `{name}` (`{c}`) is not used by this pipeline, skipped",
                        folder.display()
                    );
                }
            }
        }
        Ok(Self {
            folder: folder.to_path_buf(),
            index,
            variant: None,
        })
    }

    /// The same components, loading the weights of `variant`.
    pub fn with_variant(self, variant: Option<&str>) -> Self {
        Self {
            variant: variant.map(str::to_string),
            ..self
        }
    }

    /// Whether component `name` is present (its class one of `classes` and its folder there);
    /// an error when it is required and absent, or of another class.
    pub fn has(&self, name: &str, classes: &[&str], required: bool) -> Result<bool> {
        match self.index.class_of(name) {
            Some(c) if classes.contains(&c) => {
                let dir = self.folder.join(name);
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
                path: self.folder.join("model_index.json").display().to_string(),
                reason: format!(
                    "component `{name}` is {}, expected {}",
                    other.map_or("missing".to_string(), |c| format!("`{c}`")),
                    if classes.len() > 4 {
                        "a scheduler class of diffusers_schedulers::registry".to_string()
                    } else {
                        classes.join(" or ")
                    }
                ),
            }),
        }
    }

    /// `scheduler/scheduler_config.json` built through the registry.
    pub fn scheduler<B: Backend>(&self) -> Result<Box<dyn Scheduler<B>>> {
        self.has("scheduler", SCHEDULERS, true)?;
        let path = self.folder.join("scheduler/scheduler_config.json");
        let config: serde_json::Map<String, Value> = diffusers_core::json::read(&path)?;
        Ok(registry::from_config::<B>(&config, None)?)
    }

    /// The UNet (`unet/`).
    pub fn unet<B: Backend>(
        &self,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(UNet2DConditionModel<B>, UNet2DConditionModelConfig)> {
        self.has("unet", &["UNet2DConditionModel"], true)?;
        tracing::info!("{}: loading unet", self.folder.display());
        crate::quantization::load_component(&self.folder, "unet", || {
            UNet2DConditionModel::from_folder_variant(
                self.folder.join("unet"),
                self.variant.as_deref(),
                dtype,
                device,
            )
        })
    }

    /// The VAE (`vae/`).
    pub fn vae<B: Backend>(
        &self,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(AutoencoderKL<B>, AutoencoderKLConfig)> {
        self.has("vae", &["AutoencoderKL"], true)?;
        tracing::info!("{}: loading vae", self.folder.display());
        crate::quantization::load_component(&self.folder, "vae", || {
            AutoencoderKL::from_folder_variant(
                self.folder.join("vae"),
                self.variant.as_deref(),
                dtype,
                device,
            )
        })
    }

    /// A CLIP tokenizer folder, if present (`required` makes its absence an error).
    pub fn tokenizer(&self, name: &str, required: bool) -> Result<Option<PromptTokenizer>> {
        self.has(name, &["CLIPTokenizer", "CLIPTokenizerFast"], required)?
            .then(|| PromptTokenizer::from_pretrained(self.folder.join(name)))
            .transpose()
            .map_err(Error::from)
    }
}

/// Swaps `scheduler` for `class_name` built from its config, as diffusers'
/// `pipe.scheduler = X.from_config(pipe.scheduler.config)`; an error when the class is unknown to
/// the registry or not among the current scheduler's compatible classes.
pub(crate) fn swap_scheduler<B: Backend>(
    scheduler: &mut Box<dyn Scheduler<B>>,
    class_name: &str,
    pipeline: &'static str,
) -> Result<()> {
    if !SCHEDULERS.contains(&class_name) {
        return Err(invalid(
            pipeline,
            format!(
                "unknown scheduler class `{class_name}` (known: {})",
                SCHEDULERS.join(", ")
            ),
        ));
    }
    let from = scheduler.class_name();
    // diffusers' `from_config` itself never refuses a class: `_compatibles` only lists the
    // schedulers known to share a config (LCM and TCD are swapped in from SD configs in
    // diffusers' own docs, without being listed). What cannot work is crossing between the
    // flow-matching and the discrete-time (DDPM-family) schedulers: a different model family.
    let flow = |c: &str| c.starts_with("FlowMatch");
    if !registry::is_compatible(from, class_name) && !flow(from) && !flow(class_name) {
        tracing::warn!(
            "{pipeline}: `{class_name}` is not among `{from}`'s compatible schedulers; built from its config as diffusers' from_config does"
        );
    } else if !registry::is_compatible(from, class_name) {
        return Err(invalid(
            pipeline,
            format!(
                "scheduler `{class_name}` is not compatible with the pipeline's `{from}` (diffusers' \
                 `_compatibles`); its config cannot be reused"
            ),
        ));
    }
    let mut config = scheduler.config();
    config.insert("_class_name".into(), Value::String(class_name.into()));
    *scheduler = registry::from_config::<B>(&config, Some(class_name))?;
    Ok(())
}

/// A scheduler config from a scheduler's own `config()` (its non-finite values as Python's words).
fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    Ok(diffusers_core::json::from_value(
        v,
        std::path::Path::new("scheduler config"),
    )?)
}

/// Passes `eta` to the schedulers whose diffusers `step` takes it (DDIM, TCD): diffusers'
/// `prepare_extra_step_kwargs`. The scheduler is rebuilt from its config with that `eta`.
pub(crate) fn apply_eta<B: Backend>(scheduler: &mut Box<dyn Scheduler<B>>, eta: f64) -> Result<()> {
    let config = Value::Object(scheduler.config());
    match scheduler.class_name() {
        "DDIMScheduler" => {
            let mut s = DDIMScheduler::new(from_value(config)?)?;
            s.eta = eta;
            *scheduler = Box::new(s);
        }
        "TCDScheduler" => {
            let mut s = TCDScheduler::new(from_value(config)?)?;
            s.eta = eta;
            *scheduler = Box::new(s);
        }
        other if eta != 0.0 => {
            tracing::debug!("{other}'s step takes no eta: eta = {eta} is ignored");
        }
        _ => {}
    }
    Ok(())
}

/// `[b, ...]` to `[b * n, ...]`, each entry repeated `n` times in place (diffusers'
/// `repeat(1, n, 1).view(b * n, ...)`).
pub(crate) fn repeat_per_prompt<B: Backend, const D: usize, const D1: usize>(
    x: Tensor<B, D>,
    n: usize,
) -> Tensor<B, D> {
    if n == 1 {
        return x;
    }
    let mut dims = x.dims();
    let x: Tensor<B, D1> = x.unsqueeze_dim(1);
    let x = x.repeat_dim(1, n);
    dims[0] *= n;
    x.reshape(dims)
}

pub(crate) fn ids_tensor<B: Backend>(ids: Vec<Vec<u32>>, device: &B::Device) -> Tensor<B, 2, Int> {
    let (b, n) = (ids.len(), ids.first().map_or(0, Vec::len));
    let flat: Vec<i64> = ids.into_iter().flatten().map(i64::from).collect();
    Tensor::from_data(TensorData::new(flat, [b, n]), device)
}

pub(crate) fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The negative prompts for `batch` prompts: `None` is `""` for each, one prompt is repeated,
/// else one per prompt.
pub(crate) fn negative_prompts(
    negative: Option<&[String]>,
    batch: usize,
    pipeline: &'static str,
) -> Result<Vec<String>> {
    match negative {
        None => Ok(vec![String::new(); batch]),
        Some([one]) => Ok(vec![one.clone(); batch]),
        Some(v) if v.len() == batch => Ok(v.to_vec()),
        Some(v) => Err(invalid(
            pipeline,
            format!(
                "negative_prompt has {} prompts, prompt has {batch}",
                v.len()
            ),
        )),
    }
}

/// diffusers' `rescale_noise_cfg` (Lin et al., "Common Diffusion Noise Schedules and Sample Steps
/// are Flawed", 3.4): rescales the guided prediction to the text prediction's standard deviation
/// (per sample, unbiased), mixed by `guidance_rescale`.
pub fn rescale_noise_cfg<B: Backend>(
    noise_cfg: Tensor<B, 4>,
    noise_pred_text: Tensor<B, 4>,
    guidance_rescale: f64,
) -> Tensor<B, 4> {
    let dtype = noise_cfg.dtype();
    let std = |x: Tensor<B, 4>| {
        let [b, c, h, w] = x.dims();
        let n = c * h * w;
        let x = x.cast(DType::F32).reshape([b, n]);
        let mean = x.clone().mean_dim(1);
        let var = (x - mean).powi_scalar(2).sum_dim(1) / (n.max(2) - 1) as f32;
        var.sqrt().reshape([b, 1, 1, 1])
    };
    let std_text = std(noise_pred_text);
    let std_cfg = std(noise_cfg.clone());
    let cfg = noise_cfg.cast(DType::F32);
    let rescaled = cfg.clone() * (std_text / std_cfg);
    (rescaled * guidance_rescale as f32 + cfg * (1.0 - guidance_rescale) as f32).cast(dtype)
}

/// The denoising loop the SD pipelines share.
pub(crate) struct Denoise<'a, B: Backend> {
    pub unet: &'a UNet2DConditionModel<B>,
    pub scheduler: &'a mut dyn Scheduler<B>,
    pub timesteps: Vec<f64>,
    pub latents: Tensor<B, 4>,
    /// `[negative; positive]` with guidance.
    pub embeds: Tensor<B, 3>,
    /// SDXL's `(text_embeds, time_ids)`, `[negative; positive]` with guidance.
    pub added_cond: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    pub guidance: bool,
    pub guidance_scale: f64,
    pub guidance_rescale: f64,
    /// LCM's `time_cond_proj_dim`: the guidance scale goes in as an embedding.
    pub time_cond_dim: Option<usize>,
    pub generator: Option<&'a mut TorchGenerator>,
}

impl<B: Backend> Denoise<'_, B> {
    pub fn run(
        self,
        on_step_end: &mut dyn FnMut(usize, f64, &mut Tensor<B, 4>),
    ) -> Result<Tensor<B, 4>> {
        let Denoise {
            unet,
            scheduler,
            timesteps,
            mut latents,
            embeds,
            added_cond,
            guidance,
            guidance_scale,
            guidance_rescale,
            time_cond_dim,
            mut generator,
        } = self;
        let device = latents.device();
        // diffusers: `get_guidance_scale_embedding(guidance_scale - 1)` for every batch entry.
        let timestep_cond = time_cond_dim.map(|dim| {
            guidance_scale_embedding::<B>(guidance_scale - 1.0, latents.dims()[0], dim, &device)
                .cast(latents.dtype())
        });
        for (i, t) in timesteps.into_iter().enumerate() {
            let input = if guidance {
                Tensor::cat(vec![latents.clone(), latents.clone()], 0)
            } else {
                latents.clone()
            };
            let input = scale_model_input_nd(scheduler, input, t)?;
            let timestep = Tensor::<B, 1>::from_data(
                TensorData::new(vec![t as f32], [1]),
                (&device, DType::F32),
            );
            let pred = unet.forward(UNet2DConditionInputs {
                sample: input,
                timestep,
                encoder_hidden_states: embeds.clone(),
                added_cond: added_cond.clone(),
                timestep_cond: timestep_cond.clone(),
            })?;
            let pred = if guidance {
                let b = pred.dims()[0] / 2;
                let uncond = pred.clone().narrow(0, 0, b);
                let text = pred.narrow(0, b, b);
                let guided = uncond.clone() + (text.clone() - uncond) * guidance_scale as f32;
                if guidance_rescale > 0.0 {
                    rescale_noise_cfg(guided, text, guidance_rescale)
                } else {
                    guided
                }
            } else {
                pred
            };
            let noise = generator.as_deref_mut().map(|g| g as &mut dyn NoiseSource);
            let dtype = latents.dtype();
            latents = step_nd(scheduler, pred, t, latents, noise)?.cast(dtype);
            on_step_end(i, t, &mut latents);
        }
        Ok(latents)
    }
}

/// `vae.decode(latents / scaling_factor)` in `vae_dtype`, post-processed to `[0, 1]` images.
pub(crate) fn decode_latents<B: Backend>(
    vae: &AutoencoderKL<B>,
    vae_config: &AutoencoderKLConfig,
    latents: Tensor<B, 4>,
    vae_dtype: DType,
) -> Vec<Tensor<B, 3>> {
    let z = latents.cast(vae_dtype) / vae_config.scaling_factor as f32;
    let images = postprocess(vae.decode(z));
    let b = images.dims()[0];
    (0..b)
        .map(|i| images.clone().narrow(0, i, 1).squeeze_dim(0))
        .collect()
}

/// The default `(height, width)`: `unet.sample_size * vae_scale_factor`.
pub(crate) fn default_size(
    config: &UNet2DConditionModelConfig,
    vae_scale_factor: usize,
    pipeline: &'static str,
) -> Result<(usize, usize)> {
    let (h, w) = match &config.sample_size {
        Some(OneOrMany::One(s)) => (*s, *s),
        Some(OneOrMany::Many(v)) if v.len() == 2 => (v[0], v[1]),
        _ => {
            return Err(invalid(
                pipeline,
                "the UNet config has no usable sample_size: pass height and width",
            ));
        }
    };
    Ok((h * vae_scale_factor, w * vae_scale_factor))
}

/// Checks a `height` x `width` request: positive multiples of 8 (diffusers' `check_inputs`).
pub(crate) fn check_size(height: usize, width: usize, pipeline: &'static str) -> Result<()> {
    if height == 0 || width == 0 || !height.is_multiple_of(8) || !width.is_multiple_of(8) {
        return Err(invalid(
            pipeline,
            format!("height and width have to be positive multiples of 8, got {height}x{width}"),
        ));
    }
    Ok(())
}

/// The SD-family call checks: the counts ([`check_counts`]), finite scales, and the output images
/// (`prompts * num_images_per_prompt` of `height` x `width`, the size of `image`, which may be
/// latents, for image-to-image) within [`crate::pipeline_utils::MAX_TENSOR_VALUES`].
pub(crate) fn check_sd_request(
    pipeline: &'static str,
    prompts: usize,
    num_images_per_prompt: usize,
    (height, width): (usize, usize),
    scales: &[(&str, f64)],
) -> Result<()> {
    check_counts(prompts, num_images_per_prompt, pipeline)?;
    let images = prompts.saturating_mul(num_images_per_prompt);
    check_request(
        pipeline,
        scales,
        &[("the images", &[images, 3, height, width])],
    )
}

/// The output size of an image-to-image call: the image's, or the latents' times the VAE factor.
pub(crate) fn img2img_size(image_dims: [usize; 4], vae_scale_factor: usize) -> (usize, usize) {
    let [_, c, h, w] = image_dims;
    if c == 3 {
        (h, w)
    } else {
        (
            h.saturating_mul(vae_scale_factor),
            w.saturating_mul(vae_scale_factor),
        )
    }
}

/// `set_timesteps` with the call's steps, or its custom timesteps or sigmas.
pub(crate) fn set_timesteps<B: Backend>(
    scheduler: &mut dyn Scheduler<B>,
    steps: usize,
    timesteps: Option<Vec<f64>>,
    sigmas: Option<Vec<f64>>,
    pipeline: &'static str,
) -> Result<()> {
    if timesteps.is_some() && sigmas.is_some() {
        return Err(invalid(
            pipeline,
            "pass either timesteps or sigmas, not both",
        ));
    }
    if steps == 0 && timesteps.is_none() && sigmas.is_none() {
        return Err(invalid(pipeline, "num_inference_steps must be at least 1"));
    }
    let custom = timesteps.is_some() || sigmas.is_some();
    scheduler.set_timesteps(&TimestepOptions {
        num_inference_steps: (!custom).then_some(steps),
        timesteps,
        sigmas,
        ..Default::default()
    })?;
    Ok(())
}

/// Initial latents: the caller's (shape-checked) or drawn from the generator in `dtype`, then
/// multiplied by `init_noise_sigma` (diffusers' `prepare_latents`).
pub(crate) fn prepare_latents<B: Backend>(
    latents: Option<Tensor<B, 4>>,
    shape: [usize; 4],
    generator: &mut TorchGenerator,
    init_noise_sigma: f64,
    device: &B::Device,
    dtype: DType,
    pipeline: &'static str,
) -> Result<Tensor<B, 4>> {
    let latents = match latents {
        Some(l) => {
            if l.dims() != shape {
                return Err(invalid(
                    pipeline,
                    format!(
                        "latents have shape {:?}, expected {shape:?} ([batch * num_images_per_prompt, \
                         channels, height / vae_scale_factor, width / vae_scale_factor])",
                        l.dims()
                    ),
                ));
            }
            l.cast(dtype)
        }
        None => randn_tensor::<B, 4>(shape, Generators::One(generator), device, dtype)?,
    };
    Ok(if init_noise_sigma == 1.0 {
        latents
    } else {
        latents * init_noise_sigma as f32
    })
}

/// Checks the call's counts.
pub(crate) fn check_counts(
    prompts: usize,
    num_images_per_prompt: usize,
    pipeline: &'static str,
) -> Result<()> {
    if prompts == 0 {
        return Err(invalid(pipeline, "no prompt"));
    }
    if num_images_per_prompt == 0 {
        return Err(invalid(
            pipeline,
            "num_images_per_prompt must be at least 1",
        ));
    }
    Ok(())
}

/// diffusers' `get_guidance_scale_embedding`: sinusoidal features of `w * 1000` (f32), `[b, dim]`.
pub fn guidance_scale_embedding<B: Backend>(
    w: f64,
    batch: usize,
    dim: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let step = (10000f32).ln() / (half.max(2) - 1) as f32;
    let w = (w as f32) * 1000.0;
    let mut row: Vec<f32> = (0..half).map(|i| w * (i as f32 * -step).exp()).collect();
    let cos: Vec<f32> = row.iter().map(|x| x.cos()).collect();
    row.iter_mut().for_each(|x| *x = x.sin());
    row.extend(cos);
    row.resize(dim, 0.0);
    let data: Vec<f32> = (0..batch).flat_map(|_| row.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [batch, dim]), (device, DType::F32))
}

impl<B: Backend> StableDiffusionPipeline<B> {
    /// Loads a diffusers Stable Diffusion folder (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/`); a safety checker or feature extractor is
    /// skipped (with a warning when not null: images are not filtered).
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
        let c = Components::open(folder.as_ref(), PIPELINE, SD_CLASSES)?.with_variant(variant);
        Self::from_components(&c, dtype, device)
    }

    pub(crate) fn from_components(
        c: &Components,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        let (pipe, sources) =
            crate::offload::record_loading(|| Self::load_components(c, dtype, device));
        let mut pipe = pipe?;
        pipe.memory = crate::offload::PipelineMemory::new(sources, None);
        Ok(pipe)
    }

    fn load_components(c: &Components, dtype: DType, device: &B::Device) -> Result<Self> {
        let weights_dtype = (dtype != DType::F32).then_some(dtype);
        c.has("text_encoder", &["CLIPTextModel"], true)?;
        let tokenizer = c
            .tokenizer("tokenizer", true)?
            .ok_or_else(|| invalid(PIPELINE, "no tokenizer"))?;
        let scheduler = c.scheduler::<B>()?;
        let (unet, unet_config) = c.unet(weights_dtype, device)?;
        let (vae, vae_config) = c.vae(weights_dtype, device)?;
        tracing::info!("{}: loading text_encoder", c.folder.display());
        let text_encoder = crate::quantization::load_component(&c.folder, "text_encoder", || {
            CLIPTextModel::from_folder_variant(
                c.folder.join("text_encoder"),
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
            scheduler,
            device: device.clone(),
            dtype,
            lora: crate::lora_pipeline::LoraState::new(&c.folder, c.variant.as_deref()),
            memory: Default::default(),
        })
    }

    /// Keeps each component's weights in its files until its turn (see [`crate::offload`]);
    /// `None` stops releasing them (each layer then stays loaded once it is next used).
    /// Group offload is refused: it groups transformer blocks, and the UNet has none.
    pub fn enable_offload(&mut self, mode: Option<crate::offload::OffloadMode>) -> Result<()> {
        if let Some(m @ crate::offload::OffloadMode::Group { .. }) = mode {
            return Err(Error::Offload(format!(
                "{PIPELINE} has no transformer blocks to offload in groups (`{m}`): use model or \
                 sequential offload"
            )));
        }
        self.memory.set_mode::<B>(mode, PIPELINE, None)?;
        if mode.is_some() {
            let m = &self.memory;
            m.release_now(Some(&mut self.text_encoder));
            m.release_now(Some(&mut self.unet));
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

    /// Swaps the scheduler for `class_name` built from the current scheduler's config, as
    /// diffusers' `pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)`.
    /// An error names an unknown class or one not compatible with the current scheduler.
    pub fn set_scheduler(&mut self, class_name: &str) -> Result<()> {
        swap_scheduler(&mut self.scheduler, class_name, PIPELINE)
    }

    /// diffusers' `encode_prompt`: CLIP states of `prompt` (padded to the tokenizer's
    /// `model_max_length`; with `clip_skip`, `hidden_states[-(clip_skip + 1)]` through the final
    /// layer norm) and, with `guidance`, of the negative prompt (empty when `None`, never
    /// clip-skipped), each repeated `num_images_per_prompt` times.
    pub fn encode_prompt(
        &self,
        prompt: &[String],
        num_images_per_prompt: usize,
        guidance: bool,
        negative_prompt: Option<&[String]>,
        clip_skip: Option<usize>,
    ) -> Result<StableDiffusionPromptEmbeds<B>> {
        check_counts(prompt.len(), num_images_per_prompt, PIPELINE)?;
        let max_len = self.tokenizer.model_max_length().unwrap_or(77);
        let ids = self.tokenizer.encode_padded(&as_str(prompt), max_len)?;
        let out = self
            .text_encoder
            .forward(ids_tensor(ids.ids, &self.device))?;
        let embeds = match clip_skip {
            None => out.last_hidden_state,
            Some(skip) => {
                let n = out.hidden_states.len();
                if skip + 1 > n {
                    return Err(invalid(
                        PIPELINE,
                        format!(
                            "clip_skip {skip} is too large for a text encoder with {} layers",
                            n - 1
                        ),
                    ));
                }
                let h = out.hidden_states[n - (skip + 1)].clone();
                self.text_encoder.text_model.final_layer_norm.forward(h)
            }
        };
        let seq = embeds.dims()[1];
        let negative_prompt_embeds = if guidance {
            let negative = negative_prompts(negative_prompt, prompt.len(), PIPELINE)?;
            let ids = self.tokenizer.encode_padded(&as_str(&negative), seq)?;
            let out = self
                .text_encoder
                .forward(ids_tensor(ids.ids, &self.device))?;
            Some(repeat_per_prompt::<B, 3, 4>(
                out.last_hidden_state.cast(self.dtype),
                num_images_per_prompt,
            ))
        } else {
            None
        };
        Ok(StableDiffusionPromptEmbeds {
            prompt_embeds: repeat_per_prompt::<B, 3, 4>(
                embeds.cast(self.dtype),
                num_images_per_prompt,
            ),
            negative_prompt_embeds,
        })
    }

    /// Runs the pipeline.
    pub fn call(&mut self, call: StableDiffusionCall<B>) -> Result<StableDiffusionOutput<B>> {
        self.call_with_callback(call, &mut |_, _, _| {})
    }

    /// Runs the pipeline, calling `on_step_end(step, timestep, latents)` after each denoising
    /// step (diffusers' `callback_on_step_end`); the callback may replace the latents.
    pub fn call_with_callback(
        &mut self,
        call: StableDiffusionCall<B>,
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
            call.num_images_per_prompt,
            guidance,
            call.negative_prompt.as_deref(),
            call.clip_skip,
        )?;
        self.memory.release(Some(&mut self.text_encoder))?;
        self.memory.end_stage::<B>("encode_prompt", &self.device);
        let batch = embeds.prompt_embeds.dims()[0];
        let embeds = match embeds.negative_prompt_embeds {
            Some(neg) => Tensor::cat(vec![neg, embeds.prompt_embeds], 0),
            None => embeds.prompt_embeds,
        };
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
                    embeds,
                    added_cond: None,
                    guidance,
                    guidance_scale: call.guidance_scale,
                    guidance_rescale: call.guidance_rescale,
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
        let (vae_config, dtype) = (&self.vae_config, self.dtype);
        let images = self
            .memory
            .stage("decode", &self.device, &mut self.vae, |vae| {
                Ok(decode_latents(vae, vae_config, latents, dtype))
            })?;
        Ok(StableDiffusionOutput {
            images,
            latents: None,
        })
    }
}
