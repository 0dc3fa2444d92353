//! diffusers' `AutoencoderKL`.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::conv::{Conv2d, Conv2dConfig};
use serde::{Deserialize, Serialize};

pub use crate::vae::DiagonalGaussianDistribution;
use crate::vae::{Decoder, Encoder, VaeShape};
use crate::{Error, Result};

const MODEL: &str = "AutoencoderKL";

fn d3() -> usize {
    3
}
fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_ch() -> Vec<usize> {
    vec![64]
}
fn d1() -> usize {
    1
}
fn d_act() -> String {
    "silu".into()
}
fn d4() -> usize {
    4
}
fn d32() -> usize {
    32
}
fn d_scale() -> f64 {
    0.18215
}
fn t() -> bool {
    true
}

/// `AutoencoderKL`'s config, key for key with diffusers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in.
    #[serde(default = "d3")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "d3")]
    pub out_channels: usize,
    /// Encoder block types (only `DownEncoderBlock2D`).
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// Decoder block types (only `UpDecoderBlock2D`).
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// Channels per block.
    #[serde(default = "d_ch")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block.
    #[serde(default = "d1")]
    pub layers_per_block: usize,
    /// Only `silu`.
    #[serde(default = "d_act")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "d4")]
    pub latent_channels: usize,
    /// Group-norm groups.
    #[serde(default = "d32")]
    pub norm_num_groups: usize,
    /// Nominal image size.
    #[serde(default = "d32")]
    pub sample_size: usize,
    /// Latents are multiplied by this before the denoiser (after subtracting `shift_factor`).
    #[serde(default = "d_scale")]
    pub scaling_factor: f64,
    /// Subtracted from latents before scaling (Flux, SD3).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Decode in f32 when the model runs in half precision.
    #[serde(default = "t")]
    pub force_upcast: bool,
    /// `quant_conv` after the encoder.
    #[serde(default = "t")]
    pub use_quant_conv: bool,
    /// `post_quant_conv` before the decoder.
    #[serde(default = "t")]
    pub use_post_quant_conv: bool,
    /// Attention in the mid blocks.
    #[serde(default = "t")]
    pub mid_block_add_attention: bool,
    /// Other keys (`latents_mean`, `latents_std`, ...).
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl diffusers_core::config::Config for AutoencoderKLConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn unused_keys() -> &'static [&'static str] {
        &["latents_mean", "latents_std"]
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("block_out_channels is empty".into());
        }
        if self
            .down_block_types
            .iter()
            .any(|t| t != "DownEncoderBlock2D")
            || self.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
        {
            return Err("only DownEncoderBlock2D and UpDecoderBlock2D blocks are supported".into());
        }
        if self.down_block_types.len() != self.block_out_channels.len() {
            return Err("down_block_types and block_out_channels differ in length".into());
        }
        if self.act_fn != "silu" {
            return Err(format!("act_fn `{}` is not supported (silu)", self.act_fn));
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| c % self.norm_num_groups != 0)
        {
            return Err(
                "every block_out_channels value must be divisible by norm_num_groups".into(),
            );
        }
        Ok(())
    }
}

impl AutoencoderKLConfig {
    /// The spatial downscaling factor (`2 ** (len(block_out_channels) - 1)`).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

/// `AutoencoderKL`: encoder, decoder, and the optional 1x1 quant convs.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// The encoder.
    pub encoder: Encoder<B>,
    /// The decoder.
    pub decoder: Decoder<B>,
    /// 1x1 conv on the moments.
    pub quant_conv: Option<Conv2d<B>>,
    /// 1x1 conv on the latents.
    pub post_quant_conv: Option<Conv2d<B>>,
}

impl<B: Backend> AutoencoderKL<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(c: &AutoencoderKLConfig, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let shape = VaeShape {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            latent_channels: c.latent_channels,
            block_out_channels: c.block_out_channels.clone(),
            layers_per_block: c.layers_per_block,
            norm_num_groups: c.norm_num_groups,
            mid_block_add_attention: c.mid_block_add_attention,
        };
        let l = c.latent_channels;
        Ok(Self {
            encoder: Encoder::new(&shape, device),
            decoder: Decoder::new(&shape, device),
            quant_conv: c
                .use_quant_conv
                .then(|| Conv2dConfig::new(2 * l, 2 * l, [1, 1]).init(device)),
            post_quant_conv: c
                .use_post_quant_conv
                .then(|| Conv2dConfig::new(l, l, [1, 1]).init(device)),
        })
    }

    /// Loads `config.json` and the diffusers weights (`diffusion_pytorch_model.safetensors`) of a
    /// component folder.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, AutoencoderKLConfig)> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (`fp16` for `diffusion_pytorch_model.fp16.safetensors`, as
    /// diffusers' `variant=`; the default files, with a warning, where a variant is missing).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, AutoencoderKLConfig)> {
        let folder = folder.as_ref();
        let config: AutoencoderKLConfig =
            diffusers_core::config::load_config(folder.join("config.json"))?;
        let weights = Weights::from_folder(folder, WeightsName::DIFFUSERS, variant)?;
        let (m, _) = load_into(
            Self::new(&config, device)?,
            &weights,
            LoadOptions {
                dtype,
                ..Default::default()
            },
        )?;
        Ok((m, config))
    }

    /// Encodes images `[b, c, h, w]` (in `[-1, 1]`) to the latent posterior.
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<DiagonalGaussianDistribution<B>> {
        let [_, _, h, w] = x.dims();
        let f = 1usize << self.encoder.down_blocks.len().saturating_sub(1);
        if h % f != 0 || w % f != 0 {
            return Err(Error::InvalidInput {
                model: MODEL,
                reason: format!("image size {h}x{w} is not a multiple of {f}"),
            });
        }
        let moments = self.encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(c) => c.forward(moments),
            None => moments,
        };
        Ok(DiagonalGaussianDistribution::from_moments(moments))
    }

    /// Decodes latents `[b, latent, h, w]` to images (not clamped, as diffusers' `decode`).
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }
}
