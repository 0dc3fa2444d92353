//! diffusers' `AutoencoderKL`.
//!
//! Encode and decode run in one pass by default; [`AutoencoderKL::enable_tiling`] splits images
//! and latents larger than a tile into overlapping tiles blended as diffusers' `_tiled_encode`
//! and `tiled_decode` blend them, and [`AutoencoderKL::enable_slicing`] passes a batch one
//! element at a time ([`AutoencoderKLTiling`]).

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::conv::{Conv2d, Conv2dConfig};
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::vae::DiagonalGaussianDistribution;
use crate::vae::{Decoder, Encoder, VaeShape, blend_tiles};
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
    /// Nominal image size: the default tile size of [`AutoencoderKL::enable_tiling`] (a list
    /// reads as its first element, as diffusers reads it for `tile_latent_min_size`).
    #[serde(default = "d32", deserialize_with = "first_if_list")]
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

/// `sample_size` as a number or a list of numbers (its first).
fn first_if_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SampleSize {
        One(usize),
        List(Vec<usize>),
    }
    match SampleSize::deserialize(d)? {
        SampleSize::One(n) => Ok(n),
        SampleSize::List(v) => v
            .first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("sample_size is an empty list")),
    }
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

/// How `AutoencoderKL` splits its passes: diffusers' `use_tiling`, `use_slicing`,
/// `tile_sample_min_size`, `tile_latent_min_size` and `tile_overlap_factor`.
///
/// diffusers derives the strides, blend widths and kept widths from these with `int(...)`
/// truncations, differently for encode (stride in pixels, blend and kept width in latent pixels)
/// and decode (stride in latent pixels, blend and kept width in pixels); so does this.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoencoderKLTiling {
    /// Split images and latents larger than a tile into overlapping tiles (`enable_tiling`).
    pub use_tiling: bool,
    /// Encode and decode one batch element at a time (`enable_slicing`).
    pub use_slicing: bool,
    /// Tile size in pixels; images with a side above it are encoded tiled.
    pub tile_sample_min_size: usize,
    /// Tile size in latent pixels; latents with a side above it are decoded tiled.
    pub tile_latent_min_size: usize,
    /// The fraction of a tile that overlaps the next one.
    pub tile_overlap_factor: f64,
}

/// One direction's tile geometry: tiles of `tile` input pixels every `stride`, blended over
/// `blend` output pixels, each keeping its first `keep`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TileGeometry {
    tile: usize,
    stride: usize,
    blend: usize,
    keep: usize,
}

impl AutoencoderKLTiling {
    /// diffusers' values after `AutoencoderKL.__init__`: tiling and slicing off, tiles of
    /// `sample_size` pixels and `int(sample_size / 2 ** (len(block_out_channels) - 1))` latent
    /// pixels, overlap factor 0.25.
    pub fn from_config(c: &AutoencoderKLConfig) -> Self {
        Self {
            use_tiling: false,
            use_slicing: false,
            tile_sample_min_size: c.sample_size,
            tile_latent_min_size: (c.sample_size as f64 / c.scale_factor() as f64) as usize,
            tile_overlap_factor: 0.25,
        }
    }

    /// `_tiled_encode`'s `overlap_size` (pixels), `blend_extent` and `row_limit` (latent pixels).
    fn encode_geometry(&self) -> TileGeometry {
        let blend = (self.tile_latent_min_size as f64 * self.tile_overlap_factor) as usize;
        TileGeometry {
            tile: self.tile_sample_min_size,
            stride: (self.tile_sample_min_size as f64 * (1.0 - self.tile_overlap_factor)) as usize,
            blend,
            keep: self.tile_latent_min_size.saturating_sub(blend),
        }
    }

    /// `tiled_decode`'s `overlap_size` (latent pixels), `blend_extent` and `row_limit` (pixels).
    fn decode_geometry(&self) -> TileGeometry {
        let blend = (self.tile_sample_min_size as f64 * self.tile_overlap_factor) as usize;
        TileGeometry {
            tile: self.tile_latent_min_size,
            stride: (self.tile_latent_min_size as f64 * (1.0 - self.tile_overlap_factor)) as usize,
            blend,
            keep: self.tile_sample_min_size.saturating_sub(blend),
        }
    }

    /// Checks that tiles can work with a VAE of spatial factor `scale`: a tile of at least one
    /// latent pixel, `tile_sample_min_size = tile_latent_min_size * scale`, an overlap factor in
    /// `[0, 1)` giving a non-zero stride and blend both ways, encode strides of whole latent
    /// pixels, and each tile keeping exactly its stride (else diffusers' output would not be the
    /// input's size divided or multiplied by `scale`).
    pub fn validate(&self, scale: usize) -> std::result::Result<(), String> {
        let (sample, latent, f) = (
            self.tile_sample_min_size,
            self.tile_latent_min_size,
            self.tile_overlap_factor,
        );
        if sample < scale || latent == 0 {
            return Err(format!(
                "tile_sample_min_size = {sample} / tile_latent_min_size = {latent} is smaller than \
                 the latent scale factor {scale}"
            ));
        }
        if latent.checked_mul(scale) != Some(sample) {
            return Err(format!(
                "tile_sample_min_size = {sample} is not tile_latent_min_size = {latent} whole \
                 latent pixels of {scale} pixels"
            ));
        }
        if !(0.0..1.0).contains(&f) {
            return Err(format!("tile_overlap_factor = {f} is outside [0, 1)"));
        }
        let checks = [
            ("encode", self.encode_geometry(), scale, 1),
            ("decode", self.decode_geometry(), 1, scale),
        ];
        for (pass, g, stride_unit, keep_per_stride) in checks {
            if g.stride == 0 || g.blend == 0 {
                return Err(format!(
                    "tile_overlap_factor = {f} with {sample}-pixel tiles gives a {pass} stride of \
                     {} and a blend of {}: both must be positive",
                    g.stride, g.blend
                ));
            }
            if g.stride % stride_unit != 0 || g.keep != g.stride / stride_unit * keep_per_stride {
                return Err(format!(
                    "tile_overlap_factor = {f} with {sample}-pixel tiles gives {pass} tiles every \
                     {} that keep {}: not whole latent pixels that meet",
                    g.stride, g.keep
                ));
            }
        }
        Ok(())
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
    scale_factor: usize,
    #[module(skip)]
    tiling: AutoencoderKLTiling,
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput {
        model: MODEL,
        reason,
    }
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
            scale_factor: c.scale_factor(),
            tiling: AutoencoderKLTiling::from_config(c),
        })
    }

    /// How encode and decode split their work.
    pub fn tiling(&self) -> &AutoencoderKLTiling {
        &self.tiling
    }

    /// Sets how encode and decode split their work; an error when the tile sizes and overlap
    /// cannot work ([`AutoencoderKLTiling::validate`]), whether or not `use_tiling` is on.
    pub fn set_tiling(&mut self, tiling: AutoencoderKLTiling) -> Result<()> {
        tiling.validate(self.scale_factor).map_err(invalid)?;
        self.tiling = tiling;
        Ok(())
    }

    /// diffusers' `enable_tiling()`: overlapping tiles for images and latents larger than a tile;
    /// an error when the current tile sizes (from the config's `sample_size` unless set) cannot
    /// work.
    pub fn enable_tiling(&mut self) -> Result<()> {
        self.tiling.validate(self.scale_factor).map_err(invalid)?;
        self.tiling.use_tiling = true;
        Ok(())
    }

    /// diffusers' `disable_tiling()`.
    pub fn disable_tiling(&mut self) {
        self.tiling.use_tiling = false;
    }

    /// diffusers' `enable_slicing()`: one batch element at a time.
    pub fn enable_slicing(&mut self) {
        self.tiling.use_slicing = true;
    }

    /// diffusers' `disable_slicing()`.
    pub fn disable_slicing(&mut self) {
        self.tiling.use_slicing = false;
    }

    /// Pixels per latent pixel (`2 ** (len(block_out_channels) - 1)`).
    pub fn scale_factor(&self) -> usize {
        self.scale_factor
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

    /// Encodes images `[b, c, h, w]` (in `[-1, 1]`) to the latent posterior: one batch element
    /// at a time with slicing on, in tiles when tiling is on and a side exceeds
    /// `tile_sample_min_size`.
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<DiagonalGaussianDistribution<B>> {
        let [b, _, h, w] = x.dims();
        let f = self.scale_factor;
        if h % f != 0 || w % f != 0 {
            return Err(invalid(format!(
                "image size {h}x{w} is not a multiple of {f}"
            )));
        }
        let moments = if self.tiling.use_slicing && b > 1 {
            let parts = (0..b)
                .map(|i| self.encode_moments(x.clone().narrow(0, i, 1)))
                .collect();
            Tensor::cat(parts, 0)
        } else {
            self.encode_moments(x)
        };
        Ok(DiagonalGaussianDistribution::from_moments(moments))
    }

    /// diffusers' `_encode`: tiled when tiling is on and a side exceeds the tile, else one pass.
    fn encode_moments(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let t = &self.tiling;
        if t.use_tiling
            && h > 0
            && w > 0
            && (h > t.tile_sample_min_size || w > t.tile_sample_min_size)
        {
            let g = t.encode_geometry();
            return self.tiled(x, g, |tile| self.encode_tile(tile));
        }
        self.encode_tile(x)
    }

    fn encode_tile(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let moments = self.encoder.forward(x);
        match &self.quant_conv {
            Some(c) => c.forward(moments),
            None => moments,
        }
    }

    /// Decodes latents `[b, latent, h, w]` to images (not clamped, as diffusers' `decode`): one
    /// batch element at a time with slicing on, in tiles when tiling is on and a side exceeds
    /// `tile_latent_min_size`.
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let b = z.dims()[0];
        if self.tiling.use_slicing && b > 1 {
            let parts = (0..b)
                .map(|i| self.decode_one(z.clone().narrow(0, i, 1)))
                .collect();
            return Tensor::cat(parts, 0);
        }
        self.decode_one(z)
    }

    /// diffusers' `_decode`: tiled when tiling is on and a side exceeds the tile, else one pass.
    fn decode_one(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = z.dims();
        let t = &self.tiling;
        if t.use_tiling
            && h > 0
            && w > 0
            && (h > t.tile_latent_min_size || w > t.tile_latent_min_size)
        {
            let g = t.decode_geometry();
            return self.tiled(z, g, |tile| self.decode_tile(tile));
        }
        self.decode_tile(z)
    }

    fn decode_tile(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }

    /// diffusers' `_tiled_encode`/`tiled_decode`: tiles of `g.tile` every `g.stride` (the last
    /// ones partial) through `pass`, each blended into the tile above and the one to its left
    /// over `g.blend` and keeping its first `g.keep` rows and columns. `g` is validated
    /// ([`AutoencoderKLTiling::validate`]) whenever tiling is on: the stride is positive.
    fn tiled(
        &self,
        x: Tensor<B, 4>,
        g: TileGeometry,
        pass: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let stride = g.stride.max(1);
        let rows = (0..h)
            .step_by(stride)
            .map(|i| {
                (0..w)
                    .step_by(stride)
                    .map(|j| {
                        pass(x.clone().slice([
                            0..b,
                            0..c,
                            i..(i + g.tile).min(h),
                            j..(j + g.tile).min(w),
                        ]))
                    })
                    .collect()
            })
            .collect();
        blend_tiles(rows, [g.blend; 2], [g.keep; 2])
    }
}
