//! diffusers' `AutoencoderKLHunyuanVideo` (`models/autoencoders/autoencoder_kl_hunyuan_video.py`):
//! HunyuanVideo's causal video VAE.
//!
//! Every 3D convolution is causal in time (`HunyuanVideoCausalConv3d`: the first frame repeated
//! `k - 1` times in front, none behind, edges replicated in space too), the first frame is
//! down- and upsampled in space only so that latent frame 0 stands for video frame 0 alone, and
//! the mid block's attention lets a token see its own frame and earlier ones
//! (`prepare_causal_attention_mask`). As in diffusers, videos longer than 16 frames are encoded,
//! and latents longer than 4 frames decoded, in overlapping windows of frames blended together
//! (`use_framewise_encoding`/`use_framewise_decoding`, on by default); spatial tiling
//! ([`AutoencoderKLHunyuanVideo::enable_tiling`]) and slicing over the batch are off by default.
//! All of it is set through [`VideoVaeTiling`].

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_core::config::{Config as _, ConfigMeta};
use diffusers_core::weights::{LoadOptions, Weights, WeightsName, load_into};
use diffusers_nn::activation::silu;
use diffusers_nn::attention::AttentionMask;
use diffusers_nn::conv::{Conv3d, Conv3dConfig};
use diffusers_nn::norm::{GroupNorm, GroupNormConfig};
use diffusers_nn::pad::PadMode;
use diffusers_nn::upsampling::interpolate_nearest;
use serde::{Deserialize, Serialize};

pub use crate::vae::DiagonalGaussianDistribution;
use crate::vae::SpatialAttention;
pub use crate::vae::VideoVaeTiling;
use crate::vae::{blend_frames, blend_tiles};
use crate::{Error, Result};

const MODEL: &str = "AutoencoderKLHunyuanVideo";

const DOWN_BLOCK: &str = "HunyuanVideoDownBlock3D";
const UP_BLOCK: &str = "HunyuanVideoUpBlock3D";

/// `AutoencoderKLHunyuanVideo`'s config, key for key with diffusers' `__init__` defaults
/// (HunyuanVideo's VAE).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLHunyuanVideoConfig {
    /// Video channels in.
    pub in_channels: usize,
    /// Video channels out.
    pub out_channels: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Encoder block types (only `HunyuanVideoDownBlock3D`), one per level.
    pub down_block_types: Vec<String>,
    /// Decoder block types (only `HunyuanVideoUpBlock3D`), one per level.
    pub up_block_types: Vec<String>,
    /// Channels of each level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (the decoder has one more).
    pub layers_per_block: usize,
    /// Activation of the resnets (`silu`/`swish`; the others are not supported).
    pub act_fn: String,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// Latent scaling the pipeline applies (`latents * scaling_factor` after encode, divided
    /// before decode).
    pub scaling_factor: f64,
    /// Pixels per latent pixel requested (the levels with spatial downsampling are the first
    /// `log2` of it).
    pub spatial_compression_ratio: usize,
    /// Frames per latent frame after the first (only 4, as diffusers' decoder).
    pub temporal_compression_ratio: usize,
    /// Whether the mid blocks have their attention.
    pub mid_block_add_attention: bool,
    /// Bookkeeping and unknown keys.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for AutoencoderKLHunyuanVideoConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 16,
            down_block_types: vec![DOWN_BLOCK.into(); 4],
            up_block_types: vec![UP_BLOCK.into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".into(),
            norm_num_groups: 32,
            scaling_factor: 0.476986,
            spatial_compression_ratio: 8,
            temporal_compression_ratio: 4,
            mid_block_add_attention: true,
            meta: ConfigMeta::default(),
        }
    }
}

impl diffusers_core::config::Config for AutoencoderKLHunyuanVideoConfig {
    fn meta(&self) -> &ConfigMeta {
        &self.meta
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels must not be empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({}) and up_block_types ({}) need one entry per \
                 block_out_channels level ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != DOWN_BLOCK) {
            return Err(format!("unsupported down_block_type {t}"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != UP_BLOCK) {
            return Err(format!("unsupported up_block_type {t}"));
        }
        if self.temporal_compression_ratio != 4 {
            return Err(format!(
                "temporal_compression_ratio {} is not supported (diffusers' decoder takes 4)",
                self.temporal_compression_ratio
            ));
        }
        if !self.spatial_compression_ratio.is_power_of_two() {
            return Err(format!(
                "spatial_compression_ratio {} is not a power of two",
                self.spatial_compression_ratio
            ));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(format!(
                "act_fn {} is not supported (silu only)",
                self.act_fn
            ));
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be at least 1".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("in_channels, out_channels and latent_channels must be positive".into());
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return Err("norm_num_groups must be positive".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % g != 0)
        {
            return Err(format!(
                "block_out_channels {c} is not a positive multiple of norm_num_groups {g}"
            ));
        }
        Ok(())
    }
}

impl AutoencoderKLHunyuanVideoConfig {
    /// `(time, space)` resampling factors of level `i` (encoder order; the decoder's level `i`
    /// upsamples by the same), as diffusers' constructors compute them for
    /// `temporal_compression_ratio` 4: space at the first `log2(spatial_compression_ratio)`
    /// levels, time at the two levels before the last one. `(1, 1)`: no resampler.
    fn level_factors(&self, i: usize) -> (usize, usize) {
        let n = self.block_out_channels.len();
        let space_levels = self.spatial_compression_ratio.max(1).ilog2() as usize;
        let time_levels = self.temporal_compression_ratio.max(1).ilog2() as usize;
        let is_final = i + 1 == n;
        let space = i < space_levels;
        // `i >= n - 1 - time_levels` in Python's signed arithmetic.
        let time = i + 1 + time_levels >= n && !is_final;
        (if time { 2 } else { 1 }, if space { 2 } else { 1 })
    }

    /// Pixels per latent pixel: 2 to the number of levels that downsample in space.
    pub fn spatial_factor(&self) -> usize {
        (0..self.block_out_channels.len())
            .map(|i| self.level_factors(i).1)
            .product()
    }

    /// Frames per latent frame after the first: 2 to the number of levels that downsample in
    /// time.
    pub fn temporal_factor(&self) -> usize {
        (0..self.block_out_channels.len())
            .map(|i| self.level_factors(i).0)
            .product()
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput {
        model: MODEL,
        reason,
    }
}

fn group_norm<B: Backend>(groups: usize, channels: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(groups, channels)
        .with_eps(1e-6)
        .init(device)
}

/// `HunyuanVideoCausalConv3d`: a cubic 3D convolution after `F.pad(x, (k/2, k/2, k/2, k/2,
/// k - 1, 0), mode="replicate")` (diffusers-nn's [`Conv3d`] pads that way itself).
#[derive(Module, Debug)]
pub struct HunyuanVideoCausalConv3d<B: Backend> {
    /// The convolution (checkpoint key `conv`).
    pub conv: Conv3d<B>,
}

impl<B: Backend> HunyuanVideoCausalConv3d<B> {
    fn new(cin: usize, cout: usize, k: usize, stride: [usize; 3], device: &B::Device) -> Self {
        let p = k / 2;
        Self {
            conv: Conv3dConfig::new(cin, cout, [k; 3])
                .with_stride(stride)
                .with_padding([p, p, p, p, k - 1, 0])
                .with_pad_mode(PadMode::Replicate)
                .init(device),
        }
    }

    /// Pads causally and convolves `[b, c, f, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.conv.forward(x)
    }
}

/// Nearest upsampling of `[b, c, f, h, w]` by integer factors (`F.interpolate(...,
/// mode="nearest")` with an integer `scale_factor` repeats every element).
fn upsample_nearest<B: Backend>(x: Tensor<B, 5>, time: usize, space: usize) -> Tensor<B, 5> {
    let [b, c, f, h, w] = x.dims();
    let x = if time > 1 {
        x.reshape([b, c, f, 1, h * w])
            .expand([b, c, f, time, h * w])
            .reshape([b, c, f * time, h, w])
    } else {
        x
    };
    if space > 1 {
        let f = f * time;
        let (oh, ow) = (h * space, w * space);
        interpolate_nearest(x.reshape([b, c * f, h, w]), [oh, ow]).reshape([b, c, f, oh, ow])
    } else {
        x
    }
}

/// `HunyuanVideoUpsampleCausal3D`: the first frame upsampled in space only, the others in time
/// and space (nearest), then a causal 3x3x3 convolution.
#[derive(Module, Debug)]
pub struct HunyuanVideoUpsampleCausal3D<B: Backend> {
    /// The convolution.
    pub conv: HunyuanVideoCausalConv3d<B>,
    time: usize,
    space: usize,
}

impl<B: Backend> HunyuanVideoUpsampleCausal3D<B> {
    /// Upsamples `[b, c, f, h, w]` to `[b, c, 1 + (f - 1) * time, h * space, w * space]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let f = x.dims()[2];
        let first = upsample_nearest(x.clone().narrow(2, 0, 1), 1, self.space);
        let x = if f > 1 {
            let rest = upsample_nearest(x.narrow(2, 1, f - 1), self.time, self.space);
            Tensor::cat(vec![first, rest], 2)
        } else {
            first
        };
        self.conv.forward(x)
    }
}

/// `HunyuanVideoDownsampleCausal3D`: a causal 3x3x3 convolution with stride `(time, space,
/// space)`.
#[derive(Module, Debug)]
pub struct HunyuanVideoDownsampleCausal3D<B: Backend> {
    /// The convolution.
    pub conv: HunyuanVideoCausalConv3d<B>,
}

impl<B: Backend> HunyuanVideoDownsampleCausal3D<B> {
    /// Downsamples `[b, c, f, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.conv.forward(x)
    }
}

/// `HunyuanVideoResnetBlockCausal3D`: two (group norm, SiLU, causal 3x3x3 conv) steps and a
/// shortcut (a 1x1x1 conv when the channel count changes).
#[derive(Module, Debug)]
pub struct HunyuanVideoResnetBlockCausal3D<B: Backend> {
    /// First norm.
    pub norm1: GroupNorm<B>,
    /// First convolution.
    pub conv1: HunyuanVideoCausalConv3d<B>,
    /// Second norm.
    pub norm2: GroupNorm<B>,
    /// Second convolution.
    pub conv2: HunyuanVideoCausalConv3d<B>,
    /// Shortcut projection (`in_channels != out_channels`).
    pub conv_shortcut: Option<HunyuanVideoCausalConv3d<B>>,
}

impl<B: Backend> HunyuanVideoResnetBlockCausal3D<B> {
    fn new(cin: usize, cout: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            norm1: group_norm(groups, cin, device),
            conv1: HunyuanVideoCausalConv3d::new(cin, cout, 3, [1; 3], device),
            norm2: group_norm(groups, cout, device),
            conv2: HunyuanVideoCausalConv3d::new(cout, cout, 3, [1; 3], device),
            conv_shortcut: (cin != cout)
                .then(|| HunyuanVideoCausalConv3d::new(cin, cout, 1, [1; 3], device)),
        }
    }

    /// Applies the block to `[b, c, f, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let residual = match &self.conv_shortcut {
            Some(c) => c.forward(x.clone()),
            None => x.clone(),
        };
        let h = self.conv1.forward(silu(self.norm1.forward(x)));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        h + residual
    }
}

/// `prepare_causal_attention_mask` as a keep-mask `[1, 1, n, n]` over `n = frames * hw` tokens
/// in `(frame, row, column)` order: query token `i` may attend to key token `j` when `j`'s frame
/// is not after `i`'s.
fn causal_frame_mask<B: Backend>(frames: usize, hw: usize, device: &B::Device) -> AttentionMask<B> {
    let n = frames * hw;
    let frame_of = Tensor::<B, 1, Int>::arange(0..frames as i64, device)
        .reshape([frames, 1])
        .expand([frames, hw])
        .reshape([n]);
    let query = frame_of.clone().reshape([n, 1]).expand([n, n]);
    let key = frame_of.reshape([1, n]).expand([n, n]);
    AttentionMask::Keep(key.lower_equal(query).reshape([1, 1, n, n]))
}

/// `HunyuanVideoMidBlock3D`: resnet, then (causal attention over all frames, resnet).
#[derive(Module, Debug)]
pub struct HunyuanVideoMidBlock3D<B: Backend> {
    /// Two resnets.
    pub resnets: Vec<HunyuanVideoResnetBlockCausal3D<B>>,
    /// One single-head attention (none with `mid_block_add_attention: false`).
    pub attentions: Vec<SpatialAttention<B>>,
}

impl<B: Backend> HunyuanVideoMidBlock3D<B> {
    fn new(channels: usize, groups: usize, attention: bool, device: &B::Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| HunyuanVideoResnetBlockCausal3D::new(channels, channels, groups, device))
                .collect(),
            attentions: if attention {
                vec![SpatialAttention::new(channels, 1, groups, device)]
            } else {
                Vec::new()
            },
        }
    }

    /// The attention over `[b, c, f, h, w]` as `[b, f * h * w, c]` tokens, with the causal
    /// frame mask and the residual connection.
    fn attend(attn: &SpatialAttention<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, f, h, w] = x.dims();
        let n = f * h * w;
        // The group norm over the tokens' channels is the group norm of [b, c, f, h, w].
        let seq = attn
            .group_norm
            .forward(x.clone())
            .reshape([b, c, n])
            .swap_dims(1, 2);
        let mask = causal_frame_mask(f, h * w, &x.device());
        let o = attn.attend(seq, Some(mask));
        o.swap_dims(1, 2).reshape([b, c, f, h, w]) + x
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = x;
        for (i, r) in self.resnets.iter().enumerate() {
            if i > 0
                && let Some(a) = self.attentions.get(i - 1)
            {
                x = Self::attend(a, x);
            }
            x = r.forward(x);
        }
        x
    }
}

/// `HunyuanVideoDownBlock3D`: resnets, then an optional downsampler.
#[derive(Module, Debug)]
pub struct HunyuanVideoDownBlock3D<B: Backend> {
    /// `layers_per_block` resnets.
    pub resnets: Vec<HunyuanVideoResnetBlockCausal3D<B>>,
    /// The downsampler (levels that downsample in time or space).
    pub downsamplers: Vec<HunyuanVideoDownsampleCausal3D<B>>,
}

impl<B: Backend> HunyuanVideoDownBlock3D<B> {
    /// Applies the level.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = x;
        for r in &self.resnets {
            x = r.forward(x);
        }
        for d in &self.downsamplers {
            x = d.forward(x);
        }
        x
    }
}

/// `HunyuanVideoUpBlock3D`: resnets, then an optional upsampler.
#[derive(Module, Debug)]
pub struct HunyuanVideoUpBlock3D<B: Backend> {
    /// `layers_per_block + 1` resnets.
    pub resnets: Vec<HunyuanVideoResnetBlockCausal3D<B>>,
    /// The upsampler (levels that upsample in time or space).
    pub upsamplers: Vec<HunyuanVideoUpsampleCausal3D<B>>,
}

impl<B: Backend> HunyuanVideoUpBlock3D<B> {
    /// Applies the level.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = x;
        for r in &self.resnets {
            x = r.forward(x);
        }
        for u in &self.upsamplers {
            x = u.forward(x);
        }
        x
    }
}

/// `HunyuanVideoEncoder3D` (with `double_z`: the Gaussian's `2 * latent_channels` moments out).
#[derive(Module, Debug)]
pub struct HunyuanVideoEncoder3D<B: Backend> {
    /// Input convolution.
    pub conv_in: HunyuanVideoCausalConv3d<B>,
    /// One block per level.
    pub down_blocks: Vec<HunyuanVideoDownBlock3D<B>>,
    /// Mid block.
    pub mid_block: HunyuanVideoMidBlock3D<B>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output convolution.
    pub conv_out: HunyuanVideoCausalConv3d<B>,
}

impl<B: Backend> HunyuanVideoEncoder3D<B> {
    fn new(c: &AutoencoderKLHunyuanVideoConfig, device: &B::Device) -> Self {
        let ch = &c.block_out_channels;
        let g = c.norm_num_groups;
        let mut cin = ch[0];
        let down_blocks = ch
            .iter()
            .enumerate()
            .map(|(i, &cout)| {
                let resnets = (0..c.layers_per_block)
                    .map(|j| {
                        let input = if j == 0 { cin } else { cout };
                        HunyuanVideoResnetBlockCausal3D::new(input, cout, g, device)
                    })
                    .collect();
                cin = cout;
                let (t, s) = c.level_factors(i);
                let downsamplers = if t > 1 || s > 1 {
                    vec![HunyuanVideoDownsampleCausal3D {
                        conv: HunyuanVideoCausalConv3d::new(cout, cout, 3, [t, s, s], device),
                    }]
                } else {
                    Vec::new()
                };
                HunyuanVideoDownBlock3D {
                    resnets,
                    downsamplers,
                }
            })
            .collect();
        let last = ch[ch.len() - 1];
        Self {
            conv_in: HunyuanVideoCausalConv3d::new(c.in_channels, ch[0], 3, [1; 3], device),
            down_blocks,
            mid_block: HunyuanVideoMidBlock3D::new(last, g, c.mid_block_add_attention, device),
            conv_norm_out: group_norm(g, last, device),
            conv_out: HunyuanVideoCausalConv3d::new(last, 2 * c.latent_channels, 3, [1; 3], device),
        }
    }

    /// Encodes `[b, c, f, h, w]` to the moments.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = self.conv_in.forward(x);
        for block in &self.down_blocks {
            x = block.forward(x);
        }
        let x = self.mid_block.forward(x);
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// `HunyuanVideoDecoder3D`.
#[derive(Module, Debug)]
pub struct HunyuanVideoDecoder3D<B: Backend> {
    /// Input convolution.
    pub conv_in: HunyuanVideoCausalConv3d<B>,
    /// Mid block.
    pub mid_block: HunyuanVideoMidBlock3D<B>,
    /// One block per level, deepest first.
    pub up_blocks: Vec<HunyuanVideoUpBlock3D<B>>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output convolution.
    pub conv_out: HunyuanVideoCausalConv3d<B>,
}

impl<B: Backend> HunyuanVideoDecoder3D<B> {
    fn new(c: &AutoencoderKLHunyuanVideoConfig, device: &B::Device) -> Self {
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let g = c.norm_num_groups;
        let mut cin = rev[0];
        let up_blocks = rev
            .iter()
            .enumerate()
            .map(|(i, &cout)| {
                let resnets = (0..=c.layers_per_block)
                    .map(|j| {
                        let input = if j == 0 { cin } else { cout };
                        HunyuanVideoResnetBlockCausal3D::new(input, cout, g, device)
                    })
                    .collect();
                cin = cout;
                let (time, space) = c.level_factors(i);
                let upsamplers = if time > 1 || space > 1 {
                    vec![HunyuanVideoUpsampleCausal3D {
                        conv: HunyuanVideoCausalConv3d::new(cout, cout, 3, [1; 3], device),
                        time,
                        space,
                    }]
                } else {
                    Vec::new()
                };
                HunyuanVideoUpBlock3D {
                    resnets,
                    upsamplers,
                }
            })
            .collect();
        let first = c.block_out_channels[0];
        Self {
            conv_in: HunyuanVideoCausalConv3d::new(c.latent_channels, rev[0], 3, [1; 3], device),
            mid_block: HunyuanVideoMidBlock3D::new(rev[0], g, c.mid_block_add_attention, device),
            up_blocks,
            conv_norm_out: group_norm(g, first, device),
            conv_out: HunyuanVideoCausalConv3d::new(first, c.out_channels, 3, [1; 3], device),
        }
    }

    /// Decodes latents (after `post_quant_conv`) to the video.
    pub fn forward(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = self.conv_in.forward(z);
        x = self.mid_block.forward(x);
        for block in &self.up_blocks {
            x = block.forward(x);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// `AutoencoderKLHunyuanVideo`: causal 3D encoder and decoder with their 1x1x1 quant
/// convolutions.
#[derive(Module, Debug)]
pub struct AutoencoderKLHunyuanVideo<B: Backend> {
    /// The encoder.
    pub encoder: HunyuanVideoEncoder3D<B>,
    /// The decoder.
    pub decoder: HunyuanVideoDecoder3D<B>,
    /// 1x1x1 convolution on the moments.
    pub quant_conv: Conv3d<B>,
    /// 1x1x1 convolution on the latents.
    pub post_quant_conv: Conv3d<B>,
    in_channels: usize,
    latent_channels: usize,
    spatial_factor: usize,
    temporal_factor: usize,
    scaling_factor: f64,
    #[module(skip)]
    tiling: VideoVaeTiling,
}

impl<B: Backend> AutoencoderKLHunyuanVideo<B> {
    /// Builds the model (lazily initialised parameters).
    pub fn new(c: &AutoencoderKLHunyuanVideoConfig, device: &B::Device) -> Result<Self> {
        c.validate().map_err(|reason| Error::InvalidConfig {
            model: MODEL,
            reason,
        })?;
        let z = c.latent_channels;
        Ok(Self {
            encoder: HunyuanVideoEncoder3D::new(c, device),
            decoder: HunyuanVideoDecoder3D::new(c, device),
            quant_conv: Conv3dConfig::new(2 * z, 2 * z, [1; 3]).init(device),
            post_quant_conv: Conv3dConfig::new(z, z, [1; 3]).init(device),
            in_channels: c.in_channels,
            latent_channels: z,
            spatial_factor: c.spatial_factor(),
            temporal_factor: c.temporal_factor(),
            scaling_factor: c.scaling_factor,
            tiling: Self::default_tiling(),
        })
    }

    /// diffusers' defaults for this VAE: framewise encoding and decoding on (above 16 frames,
    /// windows of 16 + 1 frames every 12), spatial tiling (tiles of 256x256 pixels every 192) and
    /// slicing off.
    pub fn default_tiling() -> VideoVaeTiling {
        VideoVaeTiling {
            use_tiling: false,
            use_slicing: false,
            use_framewise_encoding: true,
            use_framewise_decoding: true,
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_min_num_frames: 16,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
            tile_sample_stride_num_frames: 12,
        }
    }

    /// How encode and decode split their work.
    pub fn tiling(&self) -> &VideoVaeTiling {
        &self.tiling
    }

    /// Sets how encode and decode split their work; an error when a tile size or stride is not
    /// a positive multiple of the compression factors or a stride exceeds its tile.
    pub fn set_tiling(&mut self, tiling: VideoVaeTiling) -> Result<()> {
        tiling
            .validate(self.spatial_factor, self.temporal_factor)
            .map_err(invalid)?;
        self.tiling = tiling;
        Ok(())
    }

    /// diffusers' `enable_tiling()`: spatial tiles for frames larger than the tile size.
    pub fn enable_tiling(&mut self) {
        self.tiling.use_tiling = true;
    }

    /// diffusers' `enable_slicing()`: one batch element at a time.
    pub fn enable_slicing(&mut self) {
        self.tiling.use_slicing = true;
    }

    /// Loads `config.json` and the diffusers weights (`diffusion_pytorch_model.safetensors`) of a
    /// component folder. The module paths are the checkpoint keys: no key map.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, AutoencoderKLHunyuanVideoConfig)> {
        Self::from_folder_variant(folder, None, dtype, device)
    }

    /// The same, with the weights of `variant` (as diffusers' `variant=`; the default files, with
    /// a warning, where a variant is missing).
    pub fn from_folder_variant(
        folder: impl AsRef<Path>,
        variant: Option<&str>,
        dtype: Option<DType>,
        device: &B::Device,
    ) -> Result<(Self, AutoencoderKLHunyuanVideoConfig)> {
        let folder = folder.as_ref();
        let config: AutoencoderKLHunyuanVideoConfig =
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

    /// The config's `scaling_factor` (HunyuanVideoPipeline decodes `latents / scaling_factor`).
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }

    /// Pixels per latent pixel.
    pub fn spatial_factor(&self) -> usize {
        self.spatial_factor
    }

    /// Frames per latent frame after the first.
    pub fn temporal_factor(&self) -> usize {
        self.temporal_factor
    }

    /// Encodes a video `[b, in_channels, 1 + 4k, h, w]` (in `[-1, 1]`, `h` and `w` multiples of
    /// 8 with the usual config) to the posterior over `[b, latent_channels, 1 + k, h / 8,
    /// w / 8]` latents, in one pass.
    pub fn encode(&self, video: Tensor<B, 5>) -> Result<DiagonalGaussianDistribution<B, 5>> {
        let [b, c, f, h, w] = video.dims();
        let (s, t) = (self.spatial_factor, self.temporal_factor);
        if c != self.in_channels {
            return Err(invalid(format!(
                "video has {c} channels, the encoder takes {}",
                self.in_channels
            )));
        }
        if b == 0 || f == 0 || (f - 1) % t != 0 {
            return Err(invalid(format!(
                "encode needs 1 + {t}k frames and a non-empty batch, got {f} frames, batch {b}"
            )));
        }
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 {
            return Err(invalid(format!(
                "video size {h}x{w} is not a positive multiple of {s}"
            )));
        }
        let moments = if self.tiling.use_slicing && b > 1 {
            let parts = (0..b)
                .map(|i| self.encode_moments(video.clone().narrow(0, i, 1)))
                .collect();
            Tensor::cat(parts, 0)
        } else {
            self.encode_moments(video)
        };
        Ok(DiagonalGaussianDistribution::from_moments(moments))
    }

    /// diffusers' `_encode`: framewise above the frame tile, else tiled above the spatial tile
    /// (when tiling is on), else one pass.
    fn encode_moments(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let t = &self.tiling;
        let [_, _, f, h, w] = x.dims();
        if t.use_framewise_encoding && f > t.tile_sample_min_num_frames {
            return self.temporal_tiled_encode(x);
        }
        if t.use_tiling && (w > t.tile_sample_min_width || h > t.tile_sample_min_height) {
            return self.tiled_encode(x);
        }
        self.quant_conv.forward(self.encoder.forward(x))
    }

    /// diffusers' `tiled_encode`: overlapping spatial tiles, blended in latent space.
    fn tiled_encode(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let (t, s) = (&self.tiling, self.spatial_factor);
        let [_, _, _, h, w] = x.dims();
        let (min_h, min_w) = (t.tile_sample_min_height / s, t.tile_sample_min_width / s);
        let (stride_h, stride_w) = (
            t.tile_sample_stride_height / s,
            t.tile_sample_stride_width / s,
        );
        let mut rows = Vec::new();
        for i in (0..h).step_by(t.tile_sample_stride_height) {
            let mut row = Vec::new();
            for j in (0..w).step_by(t.tile_sample_stride_width) {
                let tile = x.clone().slice([
                    0..x.dims()[0],
                    0..x.dims()[1],
                    0..x.dims()[2],
                    i..(i + t.tile_sample_min_height).min(h),
                    j..(j + t.tile_sample_min_width).min(w),
                ]);
                row.push(self.quant_conv.forward(self.encoder.forward(tile)));
            }
            rows.push(row);
        }
        let out = blend_tiles(
            rows,
            [min_h - stride_h, min_w - stride_w],
            [stride_h, stride_w],
        );
        let [b, c, f, _, _] = out.dims();
        out.slice([0..b, 0..c, 0..f, 0..h / s, 0..w / s])
    }

    /// diffusers' `_temporal_tiled_encode`: windows of `tile_sample_min_num_frames + 1` frames
    /// every `tile_sample_stride_num_frames`, each but the first without its first latent frame,
    /// blended in latent space.
    fn temporal_tiled_encode(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let (t, tf) = (&self.tiling, self.temporal_factor);
        let [_, _, f, h, w] = x.dims();
        let latent_frames = (f - 1) / tf + 1;
        let (min_t, stride_t) = (
            t.tile_sample_min_num_frames / tf,
            t.tile_sample_stride_num_frames / tf,
        );
        let mut windows = Vec::new();
        for i in (0..f).step_by(t.tile_sample_stride_num_frames) {
            let n = (t.tile_sample_min_num_frames + 1).min(f - i);
            let tile = x.clone().narrow(2, i, n);
            let tile =
                if t.use_tiling && (h > t.tile_sample_min_height || w > t.tile_sample_min_width) {
                    self.tiled_encode(tile)
                } else {
                    self.quant_conv.forward(self.encoder.forward(tile))
                };
            let lf = tile.dims()[2];
            match i {
                0 => windows.push(tile),
                // A one-frame window is all overlap: nothing left once its first frame goes.
                _ if lf > 1 => windows.push(tile.narrow(2, 1, lf - 1)),
                _ => {}
            }
        }
        let out = blend_frames(windows, min_t - stride_t, stride_t);
        let n = out.dims()[2].min(latent_frames);
        out.narrow(2, 0, n)
    }

    /// Decodes latents `[b, latent_channels, f, h, w]` to a video `[b, out_channels, 1 + (f - 1)
    /// * 4, 8h, 8w]` (with the usual config), in one pass and not clamped (as diffusers).
    pub fn decode(&self, latents: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
        self.decode_with_progress(latents, &mut |_, _| {})
    }

    /// [`decode`](Self::decode) reporting `(latent frames decoded, latent
    /// frames)` as frame windows finish: once for a single pass, after each window when
    /// decoding framewise.
    pub fn decode_with_progress(
        &self,
        latents: Tensor<B, 5>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<B, 5>> {
        let [b, c, f, h, w] = latents.dims();
        if c != self.latent_channels {
            return Err(invalid(format!(
                "latents have {c} channels, latent_channels is {}",
                self.latent_channels
            )));
        }
        if b == 0 || f == 0 || h == 0 || w == 0 {
            return Err(invalid(format!("empty latents {:?}", latents.dims())));
        }
        if self.tiling.use_slicing && b > 1 {
            let parts = (0..b)
                .map(|i| self.decode_one(latents.clone().narrow(0, i, 1), &mut |_, _| {}))
                .collect();
            progress(f, f);
            return Ok(Tensor::cat(parts, 0));
        }
        Ok(self.decode_one(latents, progress))
    }

    /// diffusers' `_decode`.
    fn decode_one(&self, z: Tensor<B, 5>, progress: &mut dyn FnMut(usize, usize)) -> Tensor<B, 5> {
        let (t, s, tf) = (&self.tiling, self.spatial_factor, self.temporal_factor);
        let [_, _, f, h, w] = z.dims();
        if t.use_framewise_decoding && f > t.tile_sample_min_num_frames / tf {
            return self.temporal_tiled_decode(z, progress);
        }
        let out = if t.use_tiling
            && (w > t.tile_sample_min_width / s || h > t.tile_sample_min_height / s)
        {
            self.tiled_decode(z)
        } else {
            self.decoder.forward(self.post_quant_conv.forward(z))
        };
        progress(f, f);
        out
    }

    /// diffusers' `tiled_decode`: overlapping latent tiles, blended in pixel space.
    fn tiled_decode(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let (t, s) = (&self.tiling, self.spatial_factor);
        let [b, c, f, h, w] = z.dims();
        let (min_h, min_w) = (t.tile_sample_min_height / s, t.tile_sample_min_width / s);
        let (stride_h, stride_w) = (
            t.tile_sample_stride_height / s,
            t.tile_sample_stride_width / s,
        );
        let mut rows = Vec::new();
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
                row.push(self.decoder.forward(self.post_quant_conv.forward(tile)));
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
        let [b, c, f, _, _] = out.dims();
        out.slice([0..b, 0..c, 0..f, 0..h * s, 0..w * s])
    }

    /// diffusers' `_temporal_tiled_decode`: windows of `tile_sample_min_num_frames / 4 + 1`
    /// latent frames every `tile_sample_stride_num_frames / 4`, each decoded video but the first
    /// without its first frame, blended over `tile_sample_min_num_frames -
    /// tile_sample_stride_num_frames` frames.
    fn temporal_tiled_decode(
        &self,
        z: Tensor<B, 5>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Tensor<B, 5> {
        let (t, s, tf) = (&self.tiling, self.spatial_factor, self.temporal_factor);
        let [_, _, f, _, _] = z.dims();
        let sample_frames = (f - 1) * tf + 1;
        let (min_t, stride_t) = (
            t.tile_sample_min_num_frames / tf,
            t.tile_sample_stride_num_frames / tf,
        );
        let mut windows = Vec::new();
        for i in (0..f).step_by(stride_t) {
            let tile = z.clone().narrow(2, i, (min_t + 1).min(f - i));
            let [_, _, _, th, tw] = tile.dims();
            let decoded = if t.use_tiling
                && (tw > t.tile_sample_min_width / s || th > t.tile_sample_min_height / s)
            {
                self.tiled_decode(tile)
            } else {
                self.decoder.forward(self.post_quant_conv.forward(tile))
            };
            let n = decoded.dims()[2];
            match i {
                0 => windows.push(decoded),
                // A one-frame window is all overlap: nothing left once its first frame goes.
                _ if n > 1 => windows.push(decoded.narrow(2, 1, n - 1)),
                _ => {}
            }
            progress((i + min_t + 1).min(f), f);
        }
        let out = blend_frames(
            windows,
            t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames,
            t.tile_sample_stride_num_frames,
        );
        let n = out.dims()[2].min(sample_frames);
        out.narrow(2, 0, n)
    }
}
