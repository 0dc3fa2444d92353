//! diffusers' `AutoencoderKLWan` (`models/autoencoders/autoencoder_kl_wan.py`): Wan 2.1's causal
//! video VAE.
//!
//! Every 3D convolution is causal in time (`WanCausalConv3d`: two frames of zeros in front, none
//! behind), and the model never sees a whole video at once: `encode` runs the encoder on frame 0,
//! then on chunks of 4 frames, and `decode` runs the decoder one latent frame at a time, each call
//! prepending the last frames the previous call saw at every causal convolution (diffusers'
//! `feat_cache`, [`FeatCache`] here). This module copies that procedure step for step, including
//! the `"Rep"` marker of the first chunk in `upsample3d` and the clamp of the decoded video to
//! `[-1, 1]`, so its results are diffusers'.
//!
//! Wan 2.2's variant (`is_residual: true`, the residual up/down blocks with `AvgDown3D` and
//! `DupUp3D` shortcuts, and `patch_size` other than 1) is not implemented: such a config is an
//! [`Error::InvalidConfig`].
//!
//! Tiling and slicing follow diffusers' `enable_tiling`/`enable_slicing`
//! ([`AutoencoderKLWanTiling`]): with tiling on, frames larger than a tile are split into
//! overlapping spatial tiles, each tile runs the whole frame-chunked loop with its own feature
//! cache, and the tiles are blended (diffusers' `blend_v`/`blend_h`, in place, in row order) in
//! latent space on encode and in pixel space on decode; the decoded video is clamped once, after
//! blending. Wan has no temporal tiling (its feature cache already bounds the frames in memory).

use std::path::Path;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::silu;
use diffusers_nn::attention::scaled_dot_product_attention;
use diffusers_nn::conv::{Conv2d, Conv2dConfig, Conv3d, Conv3dConfig};
use diffusers_nn::pad::{PadMode, pad_dim};
use diffusers_nn::upsampling::interpolate_nearest;
use serde::{Deserialize, Serialize};

pub use crate::vae::DiagonalGaussianDistribution;
use crate::vae::blend_tiles;
use crate::{Error, Result};

const MODEL: &str = "AutoencoderKLWan";

/// Frames each causal convolution keeps from the previous chunk (diffusers' `CACHE_T`).
pub const CACHE_T: usize = 2;

/// Frames per encoder chunk after the first (diffusers' `_encode` hard-codes 4).
const ENCODE_CHUNK: usize = 4;

/// `AutoencoderKLWan`'s config, key for key with diffusers' `__init__` defaults (Wan 2.1's VAE).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLWanConfig {
    /// Channels of the first encoder level (and of the decoder's, unless `decoder_base_dim`).
    pub base_dim: usize,
    /// The decoder's base channels (`None`: `base_dim`).
    pub decoder_base_dim: Option<usize>,
    /// Latent channels.
    pub z_dim: usize,
    /// Channel multiplier of each level.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Encoder scales (1, 1/2, 1/4, ...) that get an attention block after each residual block.
    pub attn_scales: Vec<f64>,
    /// Whether each downsampling halves time too (the decoder upsamples in reverse order).
    pub temperal_downsample: Vec<bool>,
    /// Dropout (training only; unused at inference).
    pub dropout: f64,
    /// Per-channel latent mean ([`AutoencoderKLWanConfig::denormalize_latents`]).
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation.
    pub latents_std: Vec<f64>,
    /// Wan 2.2's residual blocks (not supported: must be `false`).
    pub is_residual: bool,
    /// Video channels in.
    pub in_channels: usize,
    /// Video channels out.
    pub out_channels: usize,
    /// Wan 2.2's patchification (only `null` or 1 are supported).
    pub patch_size: Option<usize>,
    /// Frames per latent frame (informational; the layout follows `temperal_downsample`).
    pub scale_factor_temporal: Option<usize>,
    /// Pixels per latent pixel (informational; the layout follows `dim_mult`).
    pub scale_factor_spatial: Option<usize>,
    /// Bookkeeping and unknown keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for AutoencoderKLWanConfig {
    fn default() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: Vec::new(),
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
            meta: ConfigMeta::default(),
        }
    }
}

impl diffusers_core::config::Config for AutoencoderKLWanConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.is_residual {
            return Err("is_residual (Wan 2.2's VAE) is not supported".into());
        }
        if self.patch_size.is_some_and(|p| p != 1) {
            return Err("patch_size (Wan 2.2's VAE) is not supported".into());
        }
        if self.dim_mult.is_empty() || self.dim_mult.contains(&0) {
            return Err("dim_mult must be non-empty and positive".into());
        }
        if self.base_dim == 0 || self.decoder_base_dim == Some(0) || self.z_dim == 0 {
            return Err("base_dim, decoder_base_dim and z_dim must be positive".into());
        }
        if self.num_res_blocks == 0 {
            return Err("num_res_blocks must be at least 1".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err("in_channels and out_channels must be positive".into());
        }
        if self.temperal_downsample.len() + 1 < self.dim_mult.len() {
            return Err(format!(
                "temperal_downsample has {} values, dim_mult needs {}",
                self.temperal_downsample.len(),
                self.dim_mult.len() - 1
            ));
        }
        let mut ch: Vec<usize> = self.dim_mult.iter().map(|m| m * self.base_dim).collect();
        let dec = self.decoder_base_dim.unwrap_or(self.base_dim);
        ch.extend(self.dim_mult.iter().map(|m| m * dec));
        if ch.iter().any(|&c| c < 2) {
            return Err("every level needs at least 2 channels (upsampling halves them)".into());
        }
        Ok(())
    }
}

impl AutoencoderKLWanConfig {
    /// Pixels per latent pixel: `2 ** (len(dim_mult) - 1)`.
    pub fn spatial_factor(&self) -> usize {
        1 << self.dim_mult.len().saturating_sub(1)
    }

    /// Frames per latent frame after the first: 2 to the number of temporal downsamplings.
    pub fn temporal_factor(&self) -> usize {
        let levels = self.dim_mult.len().saturating_sub(1);
        1 << self
            .temperal_downsample
            .iter()
            .take(levels)
            .filter(|t| **t)
            .count()
    }

    fn latent_stats<B: Backend>(
        &self,
        latents: &Tensor<B, 5>,
    ) -> Result<(Tensor<B, 5>, Tensor<B, 5>)> {
        let z = self.z_dim;
        if self.latents_mean.len() != z || self.latents_std.len() != z {
            return Err(Error::InvalidConfig {
                model: MODEL,
                reason: format!(
                    "latents_mean and latents_std need z_dim = {z} values, have {} and {}",
                    self.latents_mean.len(),
                    self.latents_std.len()
                ),
            });
        }
        let c = latents.dims()[1];
        if c != z {
            return Err(invalid(format!("latents have {c} channels, z_dim is {z}")));
        }
        // As WanPipeline: `torch.tensor(list)` (f32), `1.0 / std` in f32, then the latents' dtype.
        let mean: Vec<f32> = self.latents_mean.iter().map(|&v| v as f32).collect();
        let inv_std: Vec<f32> = self.latents_std.iter().map(|&v| 1.0 / v as f32).collect();
        let device = latents.device();
        let dtype = latents.dtype();
        let col = |v: Vec<f32>| {
            Tensor::<B, 5>::from_data(TensorData::new(v, [1, z, 1, 1, 1]), (&device, DType::F32))
                .cast(dtype)
        };
        Ok((col(mean), col(inv_std)))
    }

    /// WanPipeline's step before `vae.decode`: `latents / (1 / latents_std) + latents_mean`
    /// (per channel; `1 / latents_std` in f32, then the latents' dtype, as the pipeline does).
    pub fn denormalize_latents<B: Backend>(&self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
        let (mean, inv_std) = self.latent_stats(&latents)?;
        Ok(latents / inv_std + mean)
    }

    /// The inverse, as Wan's image-to-video pipelines apply it after `vae.encode`:
    /// `(latents - latents_mean) * (1 / latents_std)`.
    pub fn normalize_latents<B: Backend>(&self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
        let (mean, inv_std) = self.latent_stats(&latents)?;
        Ok((latents - mean) * inv_std)
    }
}

/// How `AutoencoderKLWan` splits its passes: diffusers' `use_slicing`, `use_tiling` and the
/// `tile_sample_*` attributes that `enable_tiling(tile_sample_min_height, tile_sample_min_width,
/// tile_sample_stride_height, tile_sample_stride_width)` sets, in sample pixels. Wan's VAE has no
/// frame tiling (diffusers' class has none), so this is its own struct rather than
/// [`crate::vae::VideoVaeTiling`], whose frame fields would go unused.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoencoderKLWanTiling {
    /// Split frames larger than a tile into overlapping spatial tiles (`enable_tiling`).
    pub use_tiling: bool,
    /// Encode and decode one batch element at a time (`enable_slicing`).
    pub use_slicing: bool,
    /// Tile height in pixels; frames taller than this are tiled.
    pub tile_sample_min_height: usize,
    /// Tile width in pixels; frames wider than this are tiled.
    pub tile_sample_min_width: usize,
    /// Distance between two vertical tiles, in pixels.
    pub tile_sample_stride_height: usize,
    /// Distance between two horizontal tiles, in pixels.
    pub tile_sample_stride_width: usize,
}

impl Default for AutoencoderKLWanTiling {
    /// diffusers' defaults: tiles of 256x256 pixels every 192, tiling and slicing off.
    fn default() -> Self {
        Self {
            use_tiling: false,
            use_slicing: false,
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

impl AutoencoderKLWanTiling {
    /// Checks that the tiles can work with `ratio` pixels per latent pixel (diffusers'
    /// `spatial_compression_ratio`): every tile size and stride a positive multiple of it (so
    /// that tiles cut latents at whole latent pixels), and every stride below its tile (a
    /// stride beyond the tile would skip pixels; a stride equal to it leaves no overlap to blend,
    /// so the tiles would meet at visible seams).
    pub fn validate(&self, ratio: usize) -> std::result::Result<(), String> {
        crate::vae::check_tile_sizes(
            &[
                ("tile_sample_min_height", self.tile_sample_min_height, ratio),
                ("tile_sample_min_width", self.tile_sample_min_width, ratio),
                (
                    "tile_sample_stride_height",
                    self.tile_sample_stride_height,
                    ratio,
                ),
                (
                    "tile_sample_stride_width",
                    self.tile_sample_stride_width,
                    ratio,
                ),
            ],
            &[
                (
                    "height",
                    self.tile_sample_stride_height,
                    self.tile_sample_min_height,
                ),
                (
                    "width",
                    self.tile_sample_stride_width,
                    self.tile_sample_min_width,
                ),
            ],
        )
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput {
        model: MODEL,
        reason,
    }
}

/// Checkpoint key of a module path: the causal convolution's inner `conv3d` dropped
/// (`conv1.conv3d.weight` -> `conv1.weight`), `resample_1` -> `resample.1` (index 1 of diffusers'
/// `nn.Sequential`), and the encoder layer's variant dropped (`down_blocks.0.Residual.conv1` ->
/// `down_blocks.0.conv1`).
pub fn checkpoint_key(path: &str) -> String {
    path.replace(".conv3d.", ".")
        .replace(".resample_1.", ".resample.1.")
        .replace(".Residual.", ".")
        .replace(".Attention.", ".")
        .replace(".Resample.", ".")
}

/// One slot of the feature cache.
#[derive(Debug, Clone)]
enum Cached<B: Backend> {
    /// Not yet written (diffusers' `None`).
    Empty,
    /// `upsample3d`'s first-chunk marker (diffusers' `"Rep"`).
    Rep,
    /// The last frames a layer saw.
    Frames(Tensor<B, 5>),
}

/// diffusers' `feat_cache` list and `feat_idx` counter: one slot per causal layer, visited in the
/// same order by every chunk.
#[derive(Debug)]
pub struct FeatCache<B: Backend> {
    slots: Vec<Cached<B>>,
    idx: usize,
}

impl<B: Backend> Default for FeatCache<B> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            idx: 0,
        }
    }
}

impl<B: Backend> FeatCache<B> {
    /// Starts the next chunk at the first slot (diffusers' `feat_idx = [0]`).
    fn start_chunk(&mut self) {
        self.idx = 0;
    }

    /// The current slot's content.
    fn current(&self) -> Cached<B> {
        self.slots.get(self.idx).cloned().unwrap_or(Cached::Empty)
    }

    /// Writes the current slot and moves to the next.
    fn store(&mut self, value: Cached<B>) {
        if self.idx >= self.slots.len() {
            self.slots.resize(self.idx + 1, Cached::Empty);
        }
        self.slots[self.idx] = value;
        self.idx += 1;
    }
}

/// The last `n` frames (fewer if the tensor has fewer).
fn last_frames<B: Backend>(x: &Tensor<B, 5>, n: usize) -> Tensor<B, 5> {
    let t = x.dims()[2];
    let n = n.min(t);
    x.clone().narrow(2, t - n, n)
}

/// `WanCausalConv3d`: a 3D convolution padded with `time_padding` zero frames in front (none
/// behind) and symmetrically in space; given the previous chunk's frames, those replace as many
/// of the zero frames.
#[derive(Module, Debug)]
pub struct WanCausalConv3d<B: Backend> {
    /// The convolution (spatial padding only); its parameters are the checkpoint's
    /// `weight`/`bias` of the layer ([`checkpoint_key`]).
    pub conv3d: Conv3d<B>,
    time_padding: usize,
}

impl<B: Backend> WanCausalConv3d<B> {
    /// `kernel` `[kt, kh, kw]`, `padding` `[pt, ph, pw]` as diffusers' constructor (the time
    /// padding becomes `2 * pt` frames in front).
    fn new(
        cin: usize,
        cout: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        device: &B::Device,
    ) -> Self {
        let [pt, ph, pw] = padding;
        Self {
            conv3d: Conv3dConfig::new(cin, cout, kernel)
                .with_stride(stride)
                .with_padding([pw, pw, ph, ph, 0, 0])
                .init(device),
            time_padding: 2 * pt,
        }
    }

    /// A `k x k x k` convolution with padding `k / 2` in every dimension (the usual layer).
    fn cube(cin: usize, cout: usize, k: usize, device: &B::Device) -> Self {
        let p = k / 2;
        Self::new(cin, cout, [k; 3], [1; 3], [p; 3], device)
    }

    /// Applies the convolution to `[b, c, t, h, w]`, with the previous chunk's frames if any.
    pub fn forward(&self, x: Tensor<B, 5>, cache: Option<&Tensor<B, 5>>) -> Tensor<B, 5> {
        let mut front = self.time_padding;
        let x = match cache {
            Some(c) if front > 0 => {
                let n = c.dims()[2];
                if n > front {
                    // F.pad with a negative amount crops: keep the frames the padding covers.
                    let c = last_frames(c, front);
                    front = 0;
                    Tensor::cat(vec![c, x], 2)
                } else {
                    front -= n;
                    Tensor::cat(vec![c.clone(), x], 2)
                }
            }
            _ => x,
        };
        self.conv3d.forward(pad_dim(x, 2, front, 0, PadMode::Zeros))
    }

    /// diffusers' pattern around every cached causal convolution: remember this chunk's last
    /// `CACHE_T` frames (topped up with the previous chunk's last frame), convolve with the
    /// previous chunk's frames in front.
    fn forward_cached(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let prev = match cache.current() {
            Cached::Frames(p) => Some(p),
            Cached::Empty | Cached::Rep => None,
        };
        let mut keep = last_frames(&x, CACHE_T);
        if keep.dims()[2] < CACHE_T
            && let Some(p) = &prev
        {
            keep = Tensor::cat(vec![last_frames(p, 1), keep], 2);
        }
        let y = self.forward(x, prev.as_ref());
        cache.store(Cached::Frames(keep));
        y
    }
}

/// `F.normalize(x, dim=1)` (`x / max(||x||₂, 1e-12)` over channels), in f32 for half types as
/// diffusers does, returned in the input's dtype.
fn normalize_channels<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    let half = matches!(dtype, DType::F16 | DType::BF16);
    let xf = if half { x.cast(DType::F32) } else { x };
    let norm = xf.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    let y = xf / norm;
    if half { y.cast(dtype) } else { y }
}

/// `WanRMS_norm(dim, images=False)`: channel-first RMS norm of `[b, c, t, h, w]`,
/// `normalize(x) * sqrt(dim) * gamma` (no bias in Wan 2.1).
#[derive(Module, Debug)]
pub struct WanRmsNorm<B: Backend> {
    /// `[dim, 1, 1, 1]`.
    pub gamma: Param<Tensor<B, 4>>,
    scale: f64,
}

impl<B: Backend> WanRmsNorm<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            gamma: burn::module::Initializer::Ones.init([dim, 1, 1, 1], device),
            scale: (dim as f64).sqrt(),
        }
    }

    /// Normalises over channels.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        normalize_channels(x) * self.scale * self.gamma.val().unsqueeze_dim::<5>(0)
    }
}

/// `WanRMS_norm(dim)` (`images=True`): the same over `[n, c, h, w]`, gamma `[dim, 1, 1]`.
#[derive(Module, Debug)]
pub struct WanRmsNorm2d<B: Backend> {
    /// `[dim, 1, 1]`.
    pub gamma: Param<Tensor<B, 3>>,
    scale: f64,
}

impl<B: Backend> WanRmsNorm2d<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            gamma: burn::module::Initializer::Ones.init([dim, 1, 1], device),
            scale: (dim as f64).sqrt(),
        }
    }

    /// Normalises over channels.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        normalize_channels(x) * self.scale * self.gamma.val().unsqueeze_dim::<4>(0)
    }
}

/// `WanResidualBlock`: two (norm, SiLU, causal 3x3x3 conv) steps and a shortcut (a 1x1x1 conv
/// when the channel count changes).
#[derive(Module, Debug)]
pub struct WanResidualBlock<B: Backend> {
    /// First norm.
    pub norm1: WanRmsNorm<B>,
    /// First convolution.
    pub conv1: WanCausalConv3d<B>,
    /// Second norm.
    pub norm2: WanRmsNorm<B>,
    /// Second convolution.
    pub conv2: WanCausalConv3d<B>,
    /// Shortcut projection (`in_dim != out_dim`).
    pub conv_shortcut: Option<WanCausalConv3d<B>>,
}

impl<B: Backend> WanResidualBlock<B> {
    fn new(cin: usize, cout: usize, device: &B::Device) -> Self {
        Self {
            norm1: WanRmsNorm::new(cin, device),
            conv1: WanCausalConv3d::cube(cin, cout, 3, device),
            norm2: WanRmsNorm::new(cout, device),
            conv2: WanCausalConv3d::cube(cout, cout, 3, device),
            conv_shortcut: (cin != cout).then(|| WanCausalConv3d::cube(cin, cout, 1, device)),
        }
    }

    /// Applies the block to one chunk.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let h = match &self.conv_shortcut {
            Some(c) => c.forward(x.clone(), None),
            None => x.clone(),
        };
        let x = silu(self.norm1.forward(x));
        let x = self.conv1.forward_cached(x, cache);
        let x = silu(self.norm2.forward(x));
        self.conv2.forward_cached(x, cache) + h
    }
}

/// `WanAttentionBlock`: single-head self-attention over each frame's `h * w` positions, with a
/// residual connection.
#[derive(Module, Debug)]
pub struct WanAttentionBlock<B: Backend> {
    /// Norm over channels.
    pub norm: WanRmsNorm2d<B>,
    /// 1x1 convolution to queries, keys and values.
    pub to_qkv: Conv2d<B>,
    /// 1x1 output projection.
    pub proj: Conv2d<B>,
}

impl<B: Backend> WanAttentionBlock<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            norm: WanRmsNorm2d::new(dim, device),
            to_qkv: Conv2dConfig::new(dim, 3 * dim, [1, 1]).init(device),
            proj: Conv2dConfig::new(dim, dim, [1, 1]).init(device),
        }
    }

    /// Attends within each frame of `[b, c, t, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let (n, hw) = (b * t, h * w);
        let frames = x.clone().permute([0, 2, 1, 3, 4]).reshape([n, c, h, w]);
        let qkv = self
            .to_qkv
            .forward(self.norm.forward(frames))
            .reshape([n, 1, 3 * c, hw])
            .swap_dims(2, 3);
        let q = qkv.clone().narrow(3, 0, c);
        let k = qkv.clone().narrow(3, c, c);
        let v = qkv.narrow(3, 2 * c, c);
        let o = scaled_dot_product_attention(q, k, v, None, None, false)
            .reshape([n, hw, c])
            .swap_dims(1, 2)
            .reshape([n, c, h, w]);
        let o = self.proj.forward(o);
        o.reshape([b, t, c, h, w]).permute([0, 2, 1, 3, 4]) + x
    }
}

/// `WanResample`: 2x spatial up- or downsampling of every frame, and for the `3d` modes a causal
/// time convolution that doubles (up) or halves (down) the frames.
#[derive(Module, Debug)]
pub struct WanResample<B: Backend> {
    /// The spatial convolution (index 1 of diffusers' `resample` `nn.Sequential`).
    pub resample_1: Conv2d<B>,
    /// The time convolution (`upsample3d`, `downsample3d`).
    pub time_conv: Option<WanCausalConv3d<B>>,
    upsample: bool,
}

impl<B: Backend> WanResample<B> {
    /// `upsample2d`/`upsample3d` (`temporal`): nearest 2x, then a 3x3 conv to `dim / 2`.
    fn up(dim: usize, temporal: bool, device: &B::Device) -> Self {
        Self {
            resample_1: Conv2dConfig::new(dim, dim / 2, [3, 3])
                .with_padding([1, 1])
                .init(device),
            time_conv: temporal
                .then(|| WanCausalConv3d::new(dim, 2 * dim, [3, 1, 1], [1; 3], [1, 0, 0], device)),
            upsample: true,
        }
    }

    /// `downsample2d`/`downsample3d` (`temporal`): zero pad right and bottom, 3x3 conv stride 2.
    fn down(dim: usize, temporal: bool, device: &B::Device) -> Self {
        Self {
            resample_1: Conv2dConfig::new(dim, dim, [3, 3])
                .with_stride([2, 2])
                .init(device),
            time_conv: temporal
                .then(|| WanCausalConv3d::new(dim, dim, [3, 1, 1], [2, 1, 1], [0; 3], device)),
            upsample: false,
        }
    }

    /// Resamples one chunk `[b, c, t, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let mut x = x;
        if self.upsample
            && let Some(time_conv) = &self.time_conv
        {
            match cache.current() {
                Cached::Empty => cache.store(Cached::Rep),
                prev => {
                    let mut keep = last_frames(&x, CACHE_T);
                    if keep.dims()[2] < CACHE_T {
                        let front = match &prev {
                            Cached::Frames(p) => last_frames(p, 1),
                            _ => keep.zeros_like(),
                        };
                        keep = Tensor::cat(vec![front, keep], 2);
                    }
                    x = match &prev {
                        Cached::Frames(p) => time_conv.forward(x, Some(p)),
                        _ => time_conv.forward(x, None),
                    };
                    cache.store(Cached::Frames(keep));
                    // [b, 2c, t] -> [b, 2, c, t] -> frames interleaved: [b, c, t, 2] -> [b, c, 2t].
                    x = x
                        .reshape([b, 2, c, t, h, w])
                        .permute([0, 2, 3, 1, 4, 5])
                        .reshape([b, c, 2 * t, h, w]);
                }
            }
        }
        let t = x.dims()[2];
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let y = if self.upsample {
            self.resample_1
                .forward(interpolate_nearest(frames, [2 * h, 2 * w]))
        } else {
            let padded = pad_dim(
                pad_dim(frames, 2, 0, 1, PadMode::Zeros),
                3,
                0,
                1,
                PadMode::Zeros,
            );
            self.resample_1.forward(padded)
        };
        let [_, co, ho, wo] = y.dims();
        let x = y.reshape([b, t, co, ho, wo]).permute([0, 2, 1, 3, 4]);
        match (&self.time_conv, self.upsample) {
            (Some(time_conv), false) => match cache.current() {
                Cached::Frames(p) => {
                    let keep = last_frames(&x, 1);
                    let y = time_conv.forward(Tensor::cat(vec![last_frames(&p, 1), x], 2), None);
                    cache.store(Cached::Frames(keep));
                    y
                }
                Cached::Empty | Cached::Rep => {
                    cache.store(Cached::Frames(x.clone()));
                    x
                }
            },
            _ => x,
        }
    }
}

/// `WanMidBlock`: residual block, attention, residual block.
#[derive(Module, Debug)]
pub struct WanMidBlock<B: Backend> {
    /// Two residual blocks.
    pub resnets: Vec<WanResidualBlock<B>>,
    /// One attention block.
    pub attentions: Vec<WanAttentionBlock<B>>,
}

impl<B: Backend> WanMidBlock<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| WanResidualBlock::new(dim, dim, device))
                .collect(),
            attentions: vec![WanAttentionBlock::new(dim, device)],
        }
    }

    /// Applies the block to one chunk.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let mut x = x;
        for (i, r) in self.resnets.iter().enumerate() {
            if i > 0
                && let Some(a) = self.attentions.get(i - 1)
            {
                x = a.forward(x);
            }
            x = r.forward(x, cache);
        }
        x
    }
}

/// One entry of the encoder's flat `down_blocks` list.
// A handful of layers per model: the size difference between variants does not matter, and burn
// 0.21 has no `Module` impl for `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum WanEncoderLayer<B: Backend> {
    /// A residual block.
    Residual(WanResidualBlock<B>),
    /// An attention block (at the scales in `attn_scales`).
    Attention(WanAttentionBlock<B>),
    /// A downsampling step.
    Resample(WanResample<B>),
}

/// `WanEncoder3d`.
#[derive(Module, Debug)]
pub struct WanEncoder3d<B: Backend> {
    /// Input convolution.
    pub conv_in: WanCausalConv3d<B>,
    /// Residual, attention and downsampling layers, in order.
    pub down_blocks: Vec<WanEncoderLayer<B>>,
    /// Mid block.
    pub mid_block: WanMidBlock<B>,
    /// Output norm.
    pub norm_out: WanRmsNorm<B>,
    /// Output convolution (to the Gaussian's `2 * z_dim` moments).
    pub conv_out: WanCausalConv3d<B>,
}

impl<B: Backend> WanEncoder3d<B> {
    fn new(c: &AutoencoderKLWanConfig, device: &B::Device) -> Self {
        let dim = c.base_dim;
        let dims: Vec<usize> = std::iter::once(dim)
            .chain(c.dim_mult.iter().map(|m| m * dim))
            .collect();
        let last = c.dim_mult.len() - 1;
        let mut scale = 1.0f64;
        let mut layers = Vec::new();
        for i in 0..c.dim_mult.len() {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            for _ in 0..c.num_res_blocks {
                layers.push(WanEncoderLayer::Residual(WanResidualBlock::new(
                    cin, cout, device,
                )));
                if c.attn_scales.contains(&scale) {
                    layers.push(WanEncoderLayer::Attention(WanAttentionBlock::new(
                        cout, device,
                    )));
                }
                cin = cout;
            }
            if i != last {
                let temporal = c.temperal_downsample.get(i).copied().unwrap_or(false);
                layers.push(WanEncoderLayer::Resample(WanResample::down(
                    cout, temporal, device,
                )));
                scale /= 2.0;
            }
        }
        let out = dims[last + 1];
        Self {
            conv_in: WanCausalConv3d::cube(c.in_channels, dim, 3, device),
            down_blocks: layers,
            mid_block: WanMidBlock::new(out, device),
            norm_out: WanRmsNorm::new(out, device),
            conv_out: WanCausalConv3d::cube(out, 2 * c.z_dim, 3, device),
        }
    }

    /// Encodes one chunk.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let mut x = self.conv_in.forward_cached(x, cache);
        for layer in &self.down_blocks {
            x = match layer {
                WanEncoderLayer::Residual(r) => r.forward(x, cache),
                WanEncoderLayer::Attention(a) => a.forward(x),
                WanEncoderLayer::Resample(r) => r.forward(x, cache),
            };
        }
        let x = self.mid_block.forward(x, cache);
        let x = silu(self.norm_out.forward(x));
        self.conv_out.forward_cached(x, cache)
    }
}

/// `WanUpBlock`: residual blocks, then an optional upsampler.
#[derive(Module, Debug)]
pub struct WanUpBlock<B: Backend> {
    /// `num_res_blocks + 1` residual blocks.
    pub resnets: Vec<WanResidualBlock<B>>,
    /// The upsampler (all levels but the last).
    pub upsamplers: Vec<WanResample<B>>,
}

impl<B: Backend> WanUpBlock<B> {
    /// Decodes one chunk through the level.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let mut x = x;
        for r in &self.resnets {
            x = r.forward(x, cache);
        }
        for u in &self.upsamplers {
            x = u.forward(x, cache);
        }
        x
    }
}

/// `WanDecoder3d`.
#[derive(Module, Debug)]
pub struct WanDecoder3d<B: Backend> {
    /// Input convolution.
    pub conv_in: WanCausalConv3d<B>,
    /// Mid block.
    pub mid_block: WanMidBlock<B>,
    /// Up blocks.
    pub up_blocks: Vec<WanUpBlock<B>>,
    /// Output norm.
    pub norm_out: WanRmsNorm<B>,
    /// Output convolution.
    pub conv_out: WanCausalConv3d<B>,
}

impl<B: Backend> WanDecoder3d<B> {
    fn new(c: &AutoencoderKLWanConfig, device: &B::Device) -> Self {
        let dim = c.decoder_base_dim.unwrap_or(c.base_dim);
        let mult = &c.dim_mult;
        let last = mult.len() - 1;
        let dims: Vec<usize> = std::iter::once(mult[last])
            .chain(mult.iter().rev().copied())
            .map(|m| m * dim)
            .collect();
        let up_temporal: Vec<bool> = c.temperal_downsample[..last]
            .iter()
            .rev()
            .copied()
            .collect();
        let up_blocks = (0..mult.len())
            .map(|i| {
                let cout = dims[i + 1];
                // Wan 2.1: the previous level's upsampler halved the channels.
                let mut cin = if i > 0 { dims[i] / 2 } else { dims[i] };
                let resnets = (0..=c.num_res_blocks)
                    .map(|_| {
                        let r = WanResidualBlock::new(cin, cout, device);
                        cin = cout;
                        r
                    })
                    .collect();
                let upsamplers = if i != last {
                    vec![WanResample::up(cout, up_temporal[i], device)]
                } else {
                    Vec::new()
                };
                WanUpBlock {
                    resnets,
                    upsamplers,
                }
            })
            .collect();
        let out = dims[last + 1];
        Self {
            conv_in: WanCausalConv3d::cube(c.z_dim, dims[0], 3, device),
            mid_block: WanMidBlock::new(dims[0], device),
            up_blocks,
            norm_out: WanRmsNorm::new(out, device),
            conv_out: WanCausalConv3d::cube(out, c.out_channels, 3, device),
        }
    }

    /// Decodes one chunk.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        let mut x = self.conv_in.forward_cached(x, cache);
        x = self.mid_block.forward(x, cache);
        for block in &self.up_blocks {
            x = block.forward(x, cache);
        }
        let x = silu(self.norm_out.forward(x));
        self.conv_out.forward_cached(x, cache)
    }
}

/// `AutoencoderKLWan`: causal 3D encoder and decoder with their 1x1x1 quant convolutions.
#[derive(Module, Debug)]
pub struct AutoencoderKLWan<B: Backend> {
    /// The encoder.
    pub encoder: WanEncoder3d<B>,
    /// 1x1x1 convolution on the moments.
    pub quant_conv: WanCausalConv3d<B>,
    /// 1x1x1 convolution on the latents.
    pub post_quant_conv: WanCausalConv3d<B>,
    /// The decoder.
    pub decoder: WanDecoder3d<B>,
    in_channels: usize,
    z_dim: usize,
    spatial_factor: usize,
    /// diffusers' `spatial_compression_ratio` (the config's `scale_factor_spatial`), which its
    /// tiles are measured in.
    spatial_compression_ratio: usize,
    /// diffusers' `use_slicing`, `use_tiling` and tile sizes.
    #[module(skip)]
    tiling: AutoencoderKLWanTiling,
}

impl<B: Backend> AutoencoderKLWan<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(c: &AutoencoderKLWanConfig, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let z = c.z_dim;
        Ok(Self {
            encoder: WanEncoder3d::new(c, device),
            quant_conv: WanCausalConv3d::cube(2 * z, 2 * z, 1, device),
            post_quant_conv: WanCausalConv3d::cube(z, z, 1, device),
            decoder: WanDecoder3d::new(c, device),
            in_channels: c.in_channels,
            z_dim: z,
            spatial_factor: c.spatial_factor(),
            // diffusers would fail on a null scale_factor_spatial; the layout's factor is the
            // only value that makes sense.
            spatial_compression_ratio: c.scale_factor_spatial.unwrap_or(c.spatial_factor()),
            tiling: AutoencoderKLWanTiling::default(),
        })
    }

    /// diffusers' `enable_slicing()`: a batch is encoded and decoded one element at a time
    /// (the same output, less memory at once).
    pub fn enable_slicing(&mut self) {
        self.tiling.use_slicing = true;
    }

    /// How encode and decode split their work.
    pub fn tiling(&self) -> &AutoencoderKLWanTiling {
        &self.tiling
    }

    /// Sets how encode and decode split their work (diffusers' `enable_tiling` with explicit
    /// tile sizes, plus `use_tiling` and `use_slicing`); an error when the tiles cannot work
    /// ([`AutoencoderKLWanTiling::validate`], or a config whose `scale_factor_spatial` is not
    /// the layout's factor, so that tiles measured in one would be cut in the other).
    pub fn set_tiling(&mut self, tiling: AutoencoderKLWanTiling) -> Result<()> {
        self.check_tiling(&tiling)?;
        self.tiling = tiling;
        Ok(())
    }

    /// diffusers' `enable_tiling()`: overlapping spatial tiles (256x256 pixels every 192 unless
    /// set) for frames larger than a tile; an error when the current tiles cannot work.
    pub fn enable_tiling(&mut self) -> Result<()> {
        self.check_tiling(&self.tiling)?;
        self.tiling.use_tiling = true;
        Ok(())
    }

    /// diffusers' `disable_tiling()`.
    pub fn disable_tiling(&mut self) {
        self.tiling.use_tiling = false;
    }

    fn check_tiling(&self, tiling: &AutoencoderKLWanTiling) -> Result<()> {
        let (r, s) = (self.spatial_compression_ratio, self.spatial_factor);
        if r != s {
            return Err(invalid(format!(
                "scale_factor_spatial = {r} is not the layout's {s} pixels per latent pixel: tiles would not line up"
            )));
        }
        tiling.validate(r).map_err(invalid)
    }

    /// Loads `config.json` and the diffusers weights (`diffusion_pytorch_model.safetensors`) of a
    /// component folder.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, AutoencoderKLWanConfig)> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (as diffusers' `variant=`; the default files, with
    /// a warning, where a variant is missing).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, AutoencoderKLWanConfig)> {
        let folder = folder.as_ref();
        let config: AutoencoderKLWanConfig =
            diffusers_core::config::load_config(folder.join("config.json"))?;
        let weights = Weights::from_folder(folder, WeightsName::DIFFUSERS, variant)?;
        let key_map = |p: &str| checkpoint_key(p);
        let (m, _) = load_into(
            Self::new(&config, device)?,
            &weights,
            LoadOptions {
                dtype,
                key_map: Some(&key_map),
                ..Default::default()
            },
        )?;
        Ok((m, config))
    }

    /// Encodes a video `[b, in_channels, 1 + 4k, h, w]` (in `[-1, 1]`, `h` and `w` multiples of
    /// the spatial factor) to the posterior over `[b, z_dim, 1 + k * 4 / temporal factor, h / 8,
    /// w / 8]` latents: frame 0, then chunks of 4 frames, through the feature cache (per spatial
    /// tile when tiling is on and a frame is larger than a tile; per batch element when slicing).
    pub fn encode(&self, video: Tensor<B, 5>) -> Result<DiagonalGaussianDistribution<B, 5>> {
        let [b, c, f, h, w] = video.dims();
        let s = self.spatial_factor;
        if c != self.in_channels {
            return Err(invalid(format!(
                "video has {c} channels, the encoder takes {}",
                self.in_channels
            )));
        }
        if b == 0 || f % ENCODE_CHUNK != 1 {
            return Err(invalid(format!(
                "encode needs 1 + {ENCODE_CHUNK}k frames and a non-empty batch, got {f} frames, batch {b}"
            )));
        }
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 {
            return Err(invalid(format!(
                "video size {h}x{w} is not a positive multiple of {s}"
            )));
        }
        if self.tiling.use_slicing && b > 1 {
            let (mut mean, mut logvar) = (Vec::with_capacity(b), Vec::with_capacity(b));
            for i in 0..b {
                // One element is never sliced again (b == 1).
                let d = self.encode(video.clone().narrow(0, i, 1))?;
                mean.push(d.mean);
                logvar.push(d.logvar);
            }
            return Ok(DiagonalGaussianDistribution {
                mean: Tensor::cat(mean, 0),
                logvar: Tensor::cat(logvar, 0),
            });
        }
        Ok(DiagonalGaussianDistribution::from_moments(
            self.encode_moments(video),
        ))
    }

    /// diffusers' `_encode`: tiled when tiling is on and a frame is larger than a tile, else
    /// one pass.
    fn encode_moments(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let t = &self.tiling;
        let [_, _, _, h, w] = x.dims();
        if t.use_tiling && (w > t.tile_sample_min_width || h > t.tile_sample_min_height) {
            return self.tiled_encode(x);
        }
        self.encode_frames(x)
    }

    /// The encode loop: frame 0, then chunks of 4 through one feature cache, and `quant_conv`.
    fn encode_frames(&self, video: Tensor<B, 5>) -> Tensor<B, 5> {
        let f = video.dims()[2];
        let mut cache = FeatCache::default();
        let chunks = 1 + (f - 1) / ENCODE_CHUNK;
        let mut out = Vec::with_capacity(chunks);
        for i in 0..chunks {
            cache.start_chunk();
            let chunk = if i == 0 {
                video.clone().narrow(2, 0, 1)
            } else {
                video
                    .clone()
                    .narrow(2, 1 + ENCODE_CHUNK * (i - 1), ENCODE_CHUNK)
            };
            out.push(self.encoder.forward(chunk, &mut cache));
        }
        self.quant_conv.forward(Tensor::cat(out, 2), None)
    }

    /// diffusers' `tiled_encode`: tiles of `tile_sample_min_*` pixels every
    /// `tile_sample_stride_*`, each through the whole encode loop with its own feature cache,
    /// blended in latent space over `(tile - stride) / ratio` latent pixels, each keeping
    /// `stride / ratio`.
    fn tiled_encode(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let (t, r) = (&self.tiling, self.spatial_compression_ratio);
        let [b, c, f, h, w] = x.dims();
        let (min_h, min_w) = (t.tile_sample_min_height / r, t.tile_sample_min_width / r);
        let (stride_h, stride_w) = (
            t.tile_sample_stride_height / r,
            t.tile_sample_stride_width / r,
        );
        let mut rows = Vec::new();
        for i in (0..h).step_by(t.tile_sample_stride_height) {
            let mut row = Vec::new();
            for j in (0..w).step_by(t.tile_sample_stride_width) {
                let tile = x.clone().slice([
                    0..b,
                    0..c,
                    0..f,
                    i..(i + t.tile_sample_min_height).min(h),
                    j..(j + t.tile_sample_min_width).min(w),
                ]);
                row.push(self.encode_frames(tile));
            }
            rows.push(row);
        }
        let out = blend_tiles(
            rows,
            [min_h - stride_h, min_w - stride_w],
            [stride_h, stride_w],
        );
        let [b, c, f, oh, ow] = out.dims();
        out.slice([0..b, 0..c, 0..f, 0..(h / r).min(oh), 0..(w / r).min(ow)])
    }

    /// Decodes latents `[b, z_dim, f, h, w]` to a video `[b, out_channels, 1 + (f - 1) * temporal
    /// factor, 8h, 8w]` clamped to `[-1, 1]` (as diffusers' `decode`): one latent frame at a
    /// time, through the feature cache (per spatial tile when tiling is on and the latents are
    /// larger than a tile; per batch element when slicing).
    pub fn decode(&self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
        self.decode_with_progress(latents, &mut |_, _| {})
    }

    /// [`decode`](Self::decode) reporting `(latent frames decoded, latent
    /// frames)` after each latent frame.
    pub fn decode_with_progress(
        &self,
        latents: Tensor<B, 5>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<B, 5>> {
        let [b, c, f, h, w] = latents.dims();
        if c != self.z_dim {
            return Err(invalid(format!(
                "latents have {c} channels, z_dim is {}",
                self.z_dim
            )));
        }
        if b == 0 || f == 0 || h == 0 || w == 0 {
            return Err(invalid(format!("empty latents {:?}", latents.dims())));
        }
        if self.tiling.use_slicing && b > 1 {
            let mut parts = Vec::with_capacity(b);
            for i in 0..b {
                let one = latents.clone().narrow(0, i, 1);
                parts.push(self.decode_one(one, &mut |done, total| {
                    progress(i * total + done, b * total)
                }));
            }
            return Ok(Tensor::cat(parts, 0));
        }
        Ok(self.decode_one(latents, progress))
    }

    /// diffusers' `_decode`: tiled when tiling is on and the latents are larger than a latent
    /// tile, else one pass; clamped to `[-1, 1]` either way.
    fn decode_one(&self, z: Tensor<B, 5>, progress: &mut dyn FnMut(usize, usize)) -> Tensor<B, 5> {
        let (t, r) = (&self.tiling, self.spatial_compression_ratio);
        let [_, _, _, h, w] = z.dims();
        let out = if t.use_tiling
            && (w > t.tile_sample_min_width / r || h > t.tile_sample_min_height / r)
        {
            self.tiled_decode(z, progress)
        } else {
            self.decode_frames(z, progress)
        };
        out.clamp(-1.0, 1.0)
    }

    /// diffusers' `tiled_decode`: latent tiles of `tile_sample_min_* / ratio` every
    /// `tile_sample_stride_* / ratio`, each through the whole decode loop with its own feature
    /// cache, blended in pixel space over `tile - stride` pixels, each keeping `stride`; not
    /// clamped (the caller clamps the blended video). Progress counts latent frames over all
    /// tiles.
    fn tiled_decode(
        &self,
        z: Tensor<B, 5>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Tensor<B, 5> {
        let (t, r) = (&self.tiling, self.spatial_compression_ratio);
        let [b, c, f, h, w] = z.dims();
        let (min_h, min_w) = (t.tile_sample_min_height / r, t.tile_sample_min_width / r);
        let (stride_h, stride_w) = (
            t.tile_sample_stride_height / r,
            t.tile_sample_stride_width / r,
        );
        let tiles = h.div_ceil(stride_h) * w.div_ceil(stride_w);
        let mut rows = Vec::new();
        let mut n = 0;
        for i in (0..h).step_by(stride_h) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride_w) {
                let tile = z.clone().slice([
                    0..b,
                    0..c,
                    0..f,
                    i..(i + min_h).min(h),
                    j..(j + min_w).min(w),
                ]);
                row.push(
                    self.decode_frames(tile, &mut |done, _| progress(n * f + done, tiles * f)),
                );
                n += 1;
            }
            rows.push(row);
        }
        let out = blend_tiles(
            rows,
            [
                t.tile_sample_min_height - t.tile_sample_stride_height,
                t.tile_sample_min_width - t.tile_sample_stride_width,
            ],
            [t.tile_sample_stride_height, t.tile_sample_stride_width],
        );
        let [b, c, f, oh, ow] = out.dims();
        out.slice([0..b, 0..c, 0..f, 0..(h * r).min(oh), 0..(w * r).min(ow)])
    }

    /// The decode loop: `post_quant_conv`, then one latent frame at a time through the feature
    /// cache (not clamped).
    fn decode_frames(
        &self,
        latents: Tensor<B, 5>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Tensor<B, 5> {
        let f = latents.dims()[2];
        let x = self.post_quant_conv.forward(latents, None);
        let mut cache = FeatCache::default();
        let mut out = Vec::with_capacity(f);
        for i in 0..f {
            cache.start_chunk();
            out.push(self.decoder.forward(x.clone().narrow(2, i, 1), &mut cache));
            progress(i + 1, f);
        }
        Tensor::cat(out, 2)
    }
}
