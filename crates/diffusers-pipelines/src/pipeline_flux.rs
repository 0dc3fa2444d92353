//! diffusers' `FluxPipeline` (`pipelines/flux/pipeline_flux.py`), from prompt embeddings.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use diffusers_schedulers::{
    FlowMatchEulerDiscreteScheduler, Generators, Scheduler, TimestepOptions, TorchGenerator,
    calculate_shift, linspace, randn_tensor, step_nd,
};
use diffusers_transformers::transformer_flux::{
    FluxInputs, FluxTransformer2DModel, FluxTransformer2DModelConfig,
};
use diffusers_vae::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};

use crate::model_index::ModelIndex;
use crate::{Error, Result};

const PIPELINE: &str = "FluxPipeline";

/// A FLUX.1 pipeline's models and scheduler.
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
    device: B::Device,
    dtype: DType,
}

/// How the pipeline returns its result (diffusers' `output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// Images `[batch, height, width, 3]` in `[0, 1]` (`"np"`; `"pil"` is this, saved as PNG).
    Array,
    /// The packed latents `[batch, seq, channels]` (`"latent"`).
    Latent,
}

/// Arguments of a call, with diffusers' defaults where it has them.
#[derive(Debug, Clone)]
pub struct FluxCall<B: Backend> {
    /// T5 states `[batch, text_seq, joint_attention_dim]`.
    pub prompt_embeds: Tensor<B, 3>,
    /// Pooled CLIP embedding `[batch, pooled_projection_dim]`.
    pub pooled_prompt_embeds: Tensor<B, 2>,
    /// Image height (a multiple of `vae_scale_factor * 2`).
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Denoising steps (28 in diffusers).
    pub num_inference_steps: usize,
    /// Guidance scale for guidance-distilled models (3.5 in diffusers).
    pub guidance_scale: f64,
    /// Packed initial latents `[batch, seq, channels]` (diffusers' `latents=`).
    pub latents: Option<Tensor<B, 3>>,
    /// Seed of `torch.Generator("cpu").manual_seed(seed)` for the initial noise.
    pub seed: Option<u64>,
    /// Custom sigmas (default `linspace(1, 1/steps, steps)`).
    pub sigmas: Option<Vec<f64>>,
    /// What to return.
    pub output_type: OutputType,
}

/// What a call returns.
#[derive(Debug, Clone)]
pub struct FluxOutput<B: Backend> {
    /// `[batch, height, width, 3]` in `[0, 1]` for `Array`, the packed latents for `Latent`
    /// (as diffusers' `.images`).
    pub images: Tensor<B, 4>,
}

impl<B: Backend> FluxPipeline<B> {
    /// Loads a diffusers FLUX folder (`model_index.json`, `transformer/`, `vae/`, `scheduler/`).
    pub fn from_folder(folder: impl AsRef<Path>, dtype: DType, device: &B::Device) -> Result<Self> {
        let folder = folder.as_ref();
        let index = ModelIndex::load(folder.join("model_index.json"))?;
        if index.class_name != PIPELINE {
            return Err(Error::Unsupported {
                path: folder.display().to_string(),
                reason: format!("`{}` is not a FluxPipeline", index.class_name),
            });
        }
        for (name, class) in [
            ("transformer", "FluxTransformer2DModel"),
            ("vae", "AutoencoderKL"),
            ("scheduler", "FlowMatchEulerDiscreteScheduler"),
        ] {
            if index.class_of(name) != Some(class) {
                return Err(Error::Unsupported {
                    path: folder.display().to_string(),
                    reason: format!("component `{name}` must be {class}"),
                });
            }
        }
        let weights_dtype = (dtype != DType::F32).then_some(dtype);
        let (transformer, transformer_config) =
            FluxTransformer2DModel::from_folder(folder.join("transformer"), weights_dtype, device)?;
        let (vae, vae_config) =
            AutoencoderKL::from_folder(folder.join("vae"), weights_dtype, device)?;
        let text = std::fs::read_to_string(folder.join("scheduler/scheduler_config.json"))
            .map_err(|e| {
                Error::Core(diffusers_core::Error::Io {
                    path: folder.join("scheduler/scheduler_config.json"),
                    source: e,
                })
            })?;
        let scheduler = FlowMatchEulerDiscreteScheduler::from_json(&text)?;
        Ok(Self {
            transformer,
            transformer_config,
            vae,
            vae_config,
            scheduler,
            device: device.clone(),
            dtype,
        })
    }

    /// `2 ** (len(vae.block_out_channels) - 1)`.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// Runs the pipeline.
    pub fn call(&mut self, call: FluxCall<B>) -> Result<FluxOutput<B>> {
        let bad = |reason: String| Error::InvalidArgument {
            pipeline: PIPELINE,
            reason,
        };
        let f = self.vae_scale_factor() * 2;
        if call.height == 0
            || call.width == 0
            || !call.height.is_multiple_of(f)
            || !call.width.is_multiple_of(f)
        {
            return Err(bad(format!(
                "height and width must be positive multiples of {f}, got {}x{}",
                call.height, call.width
            )));
        }
        if call.num_inference_steps == 0 {
            return Err(bad("num_inference_steps must be at least 1".into()));
        }
        let batch = call.prompt_embeds.dims()[0];
        let channels = self.transformer_config.in_channels / 4;
        let (h, w) = (2 * (call.height / f), 2 * (call.width / f));
        let seq = (h / 2) * (w / 2);
        let latents = match call.latents {
            Some(l) => {
                if l.dims() != [batch, seq, channels * 4] {
                    return Err(bad(format!(
                        "latents have shape {:?}, expected {:?}",
                        l.dims(),
                        [batch, seq, channels * 4]
                    )));
                }
                l.cast(self.dtype)
            }
            None => {
                let mut g = TorchGenerator::new(call.seed.unwrap_or(0));
                let noise = randn_tensor::<B, 4>(
                    [batch, channels, h, w],
                    Generators::One(&mut g),
                    &self.device,
                    self.dtype,
                )?;
                pack_latents(noise)
            }
        };
        let img_ids: Vec<Vec<f64>> = (0..h / 2)
            .flat_map(|r| (0..w / 2).map(move |c| vec![0.0, r as f64, c as f64]))
            .collect();
        let txt_ids = vec![vec![0.0; 3]; call.prompt_embeds.dims()[1]];
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
        let guidance = self.transformer_config.guidance_embeds.then(|| {
            Tensor::<B, 1>::full(
                [batch],
                call.guidance_scale as f32,
                (&self.device, DType::F32),
            )
        });
        let mut latents = latents;
        let timesteps = Scheduler::<B>::timesteps(&self.scheduler).to_vec();
        for t in timesteps {
            let timestep =
                Tensor::<B, 1>::full([batch], t as f32, (&self.device, self.dtype)) / 1000.0;
            let noise_pred = self.transformer.forward(FluxInputs {
                hidden_states: latents.clone(),
                encoder_hidden_states: call.prompt_embeds.clone().cast(self.dtype),
                pooled_projections: call.pooled_prompt_embeds.clone().cast(self.dtype),
                timestep,
                guidance: guidance.clone(),
                txt_ids: txt_ids.clone(),
                img_ids: img_ids.clone(),
            })?;
            latents = step_nd(&mut self.scheduler, noise_pred, t, latents, None)?;
        }
        if call.output_type == OutputType::Latent {
            return Ok(FluxOutput {
                images: latents.unsqueeze_dim(1),
            });
        }
        let z = unpack_latents(latents, h, w);
        let z = z / self.vae_config.scaling_factor as f32
            + self.vae_config.shift_factor.unwrap_or(0.0) as f32;
        let image = self.vae.decode(z);
        let image = (image / 2.0 + 0.5).clamp(0.0, 1.0).cast(DType::F32);
        Ok(FluxOutput {
            images: image.permute([0, 2, 3, 1]),
        })
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
