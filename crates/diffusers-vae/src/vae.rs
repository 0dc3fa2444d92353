//! The building blocks of diffusers' `autoencoders/vae.py`: the spatial self-attention of the
//! mid block, `UNetMidBlock2D`, `Encoder` and `Decoder`, built from diffusers-nn's
//! `ResnetBlock2D` (without time embedding), `Downsample2D` (`padding=0`) and `Upsample2D`.

use burn::module::Module;
use burn::prelude::*;
use diffusers_nn::activation::silu;
use diffusers_nn::attention::{AttentionMask, scaled_dot_product_attention};
use diffusers_nn::conv::{Conv2d, Conv2dConfig};
pub use diffusers_nn::downsampling::Downsample2D;
use diffusers_nn::downsampling::Downsample2DConfig;
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{GroupNorm, GroupNormConfig};
pub use diffusers_nn::resnet::ResnetBlock2D;
use diffusers_nn::resnet::ResnetBlock2DConfig;
pub use diffusers_nn::upsampling::Upsample2D;
use diffusers_nn::upsampling::Upsample2DConfig;

fn conv<B: Backend>(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new(cin, cout, [k, k])
        .with_stride([stride, stride])
        .with_padding([pad, pad])
        .init(device)
}

fn group_norm<B: Backend>(groups: usize, channels: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(groups, channels)
        .with_eps(1e-6)
        .init(device)
}

fn resnet<B: Backend>(
    cin: usize,
    cout: usize,
    groups: usize,
    device: &B::Device,
) -> ResnetBlock2D<B> {
    ResnetBlock2DConfig::new(cin, cout)
        .with_groups(groups)
        .init(device)
}

/// The single-head spatial self-attention of the VAE mid block (diffusers' `Attention` with a
/// group norm, residual connection and `to_out.0`).
#[derive(Module, Debug)]
pub struct SpatialAttention<B: Backend> {
    /// Norm over channels.
    pub group_norm: GroupNorm<B>,
    /// Query.
    pub to_q: Linear<B>,
    /// Key.
    pub to_k: Linear<B>,
    /// Value.
    pub to_v: Linear<B>,
    /// Output projection (`to_out.0`).
    pub to_out: Vec<Linear<B>>,
    heads: usize,
}

impl<B: Backend> SpatialAttention<B> {
    /// Builds the attention with `heads` heads over `channels`.
    pub fn new(channels: usize, heads: usize, groups: usize, device: &B::Device) -> Self {
        let lin = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: group_norm(groups, channels, device),
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: vec![lin()],
            heads,
        }
    }

    /// Attends over all `h * w` positions and adds the input back.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = self.group_norm.forward(x.clone());
        let seq = n.reshape([b, c, h * w]).swap_dims(1, 2);
        let o = self.attend(seq, None);
        o.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }

    /// The projections, attention and output projection over group-normalised tokens
    /// `[b, n, c]` (no residual), with an optional mask (the video VAEs' causal frame mask).
    pub(crate) fn attend(&self, seq: Tensor<B, 3>, mask: Option<AttentionMask<B>>) -> Tensor<B, 3> {
        let [b, n, c] = seq.dims();
        let d = c / self.heads;
        let split = |t: Tensor<B, 3>| t.reshape([b, n, self.heads, d]).swap_dims(1, 2);
        let q = split(self.to_q.forward(seq.clone()));
        let k = split(self.to_k.forward(seq.clone()));
        let v = split(self.to_v.forward(seq));
        let o = scaled_dot_product_attention(q, k, v, mask, None, false)
            .swap_dims(1, 2)
            .reshape([b, n, c]);
        match self.to_out.first() {
            Some(l) => l.forward(o),
            None => o,
        }
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, attention, resnet.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D<B: Backend> {
    /// Two resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One attention (absent with `mid_block_add_attention=False`).
    pub attentions: Vec<SpatialAttention<B>>,
}

impl<B: Backend> UNetMidBlock2D<B> {
    /// Builds the block.
    pub fn new(channels: usize, groups: usize, attention: bool, device: &B::Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| resnet(channels, channels, groups, device))
                .collect(),
            attentions: if attention {
                vec![SpatialAttention::new(channels, 1, groups, device)]
            } else {
                Vec::new()
            },
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = x;
        for (i, r) in self.resnets.iter().enumerate() {
            if i == 1
                && let Some(a) = self.attentions.first()
            {
                x = a.forward(x);
            }
            x = r.forward(x, None);
        }
        x
    }
}

/// `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// The downsampler (all blocks but the last).
    pub downsamplers: Vec<Downsample2D<B>>,
}

/// `UpDecoderBlock2D`.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// The upsampler (all blocks but the last).
    pub upsamplers: Vec<Upsample2D<B>>,
}

/// The VAE encoder (`vae.py`'s `Encoder`).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Input convolution.
    pub conv_in: Conv2d<B>,
    /// Down blocks.
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    /// Mid block.
    pub mid_block: UNetMidBlock2D<B>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output convolution (`2 * latent_channels` for the Gaussian's mean and log-variance).
    pub conv_out: Conv2d<B>,
}

/// The VAE decoder (`vae.py`'s `Decoder`).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Input convolution.
    pub conv_in: Conv2d<B>,
    /// Mid block.
    pub mid_block: UNetMidBlock2D<B>,
    /// Up blocks.
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    /// Output norm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output convolution.
    pub conv_out: Conv2d<B>,
}

/// Shapes of an encoder/decoder pair.
#[derive(Debug, Clone)]
pub struct VaeShape {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Channels per block.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Group-norm groups.
    pub norm_num_groups: usize,
    /// Attention in the mid blocks.
    pub mid_block_add_attention: bool,
}

impl<B: Backend> Encoder<B> {
    /// Builds the encoder.
    pub fn new(s: &VaeShape, device: &B::Device) -> Self {
        let ch = &s.block_out_channels;
        let g = s.norm_num_groups;
        let last = ch.len() - 1;
        Self {
            conv_in: conv(s.in_channels, ch[0], 3, 1, 1, device),
            down_blocks: ch
                .iter()
                .enumerate()
                .map(|(i, &out)| {
                    let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                    DownEncoderBlock2D {
                        resnets: (0..s.layers_per_block)
                            .map(|j| resnet(if j == 0 { cin } else { out }, out, g, device))
                            .collect(),
                        downsamplers: if i < last {
                            vec![
                                Downsample2DConfig::new(out, out)
                                    .with_padding(0)
                                    .init(device),
                            ]
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect(),
            mid_block: UNetMidBlock2D::new(ch[last], g, s.mid_block_add_attention, device),
            conv_norm_out: group_norm(g, ch[last], device),
            conv_out: conv(ch[last], 2 * s.latent_channels, 3, 1, 1, device),
        }
    }

    /// Encodes an image `[b, c, h, w]` to the Gaussian's moments `[b, 2 * latent, h / f, w / f]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for d in &block.downsamplers {
                x = d.forward(x);
            }
        }
        let x = self.mid_block.forward(x);
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

impl<B: Backend> Decoder<B> {
    /// Builds the decoder.
    pub fn new(s: &VaeShape, device: &B::Device) -> Self {
        let rev: Vec<usize> = s.block_out_channels.iter().rev().copied().collect();
        let g = s.norm_num_groups;
        let last = rev.len() - 1;
        Self {
            conv_in: conv(s.latent_channels, rev[0], 3, 1, 1, device),
            mid_block: UNetMidBlock2D::new(rev[0], g, s.mid_block_add_attention, device),
            up_blocks: rev
                .iter()
                .enumerate()
                .map(|(i, &out)| {
                    let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                    UpDecoderBlock2D {
                        resnets: (0..s.layers_per_block + 1)
                            .map(|j| resnet(if j == 0 { cin } else { out }, out, g, device))
                            .collect(),
                        upsamplers: if i < last {
                            vec![Upsample2DConfig::new(out, out).init(device)]
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect(),
            conv_norm_out: group_norm(g, rev[last], device),
            conv_out: conv(rev[last], s.out_channels, 3, 1, 1, device),
        }
    }

    /// Decodes latents `[b, latent, h, w]` to an image in `[-1, 1]` (before clamping).
    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for u in &block.upsamplers {
                x = u.forward(x, None);
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// The posterior `N(mean, exp(logvar))` the encoder predicts (diffusers'
/// `DiagonalGaussianDistribution`): rank 4 (`[b, latent, h, w]`) for images, rank 5
/// (`[b, latent, f, h, w]`) for the video VAEs.
#[derive(Debug, Clone)]
pub struct DiagonalGaussianDistribution<B: Backend, const D: usize = 4> {
    /// Mean `[b, latent, ...]`.
    pub mean: Tensor<B, D>,
    /// Log-variance, clamped to `[-30, 20]` as diffusers does.
    pub logvar: Tensor<B, D>,
}

impl<B: Backend, const D: usize> DiagonalGaussianDistribution<B, D> {
    /// Splits the encoder's `[b, 2 * latent, ...]` moments into mean and (clamped) log-variance.
    pub(crate) fn from_moments(moments: Tensor<B, D>) -> Self {
        let c = moments.dims()[1] / 2;
        let mean = moments.clone().narrow(1, 0, c);
        let logvar = moments.narrow(1, c, c).clamp(-30.0, 20.0);
        Self { mean, logvar }
    }

    /// The mean (`latent_dist.mode()`).
    pub fn mode(&self) -> Tensor<B, D> {
        self.mean.clone()
    }

    /// `mean + std * noise` with caller-supplied standard normal noise (`latent_dist.sample()`).
    pub fn sample_with(&self, noise: Tensor<B, D>) -> Tensor<B, D> {
        let std = (self.logvar.clone() * 0.5).exp();
        self.mean.clone() + std * noise
    }
}

/// How a video VAE splits its passes: diffusers' `use_tiling`, `use_slicing`,
/// `use_framewise_encoding`/`use_framewise_decoding` and the `tile_sample_*` attributes that
/// `enable_tiling` sets, in sample pixels and frames.
///
/// Each model starts from diffusers' defaults for it (for HunyuanVideo's VAE: framewise passes
/// on, tiles of 256x256 pixels and 16 frames with strides 192 and 12, spatial tiling and
/// slicing off).
#[derive(Clone, Debug, PartialEq)]
pub struct VideoVaeTiling {
    /// Split large frames into overlapping spatial tiles (`enable_tiling`).
    pub use_tiling: bool,
    /// Encode and decode one batch element at a time (`enable_slicing`).
    pub use_slicing: bool,
    /// Encode long videos in overlapping frame windows.
    pub use_framewise_encoding: bool,
    /// Decode long latents in overlapping frame windows.
    pub use_framewise_decoding: bool,
    /// Tile height in pixels above which a frame is tiled.
    pub tile_sample_min_height: usize,
    /// Tile width in pixels above which a frame is tiled.
    pub tile_sample_min_width: usize,
    /// Frames above which a video is processed in frame windows.
    pub tile_sample_min_num_frames: usize,
    /// Distance between two vertical tiles, in pixels.
    pub tile_sample_stride_height: usize,
    /// Distance between two horizontal tiles, in pixels.
    pub tile_sample_stride_width: usize,
    /// Distance between two frame windows, in frames.
    pub tile_sample_stride_num_frames: usize,
}

impl VideoVaeTiling {
    /// Checks that every tile size and stride is a positive multiple of the compression factors
    /// (so that tiles cut latents and frames at whole latent pixels and frames), and that every
    /// stride is below its tile (see [`check_tile_sizes`]).
    pub fn validate(&self, spatial: usize, temporal: usize) -> std::result::Result<(), String> {
        check_tile_sizes(
            &[
                (
                    "tile_sample_min_height",
                    self.tile_sample_min_height,
                    spatial,
                ),
                ("tile_sample_min_width", self.tile_sample_min_width, spatial),
                (
                    "tile_sample_min_num_frames",
                    self.tile_sample_min_num_frames,
                    temporal,
                ),
                (
                    "tile_sample_stride_height",
                    self.tile_sample_stride_height,
                    spatial,
                ),
                (
                    "tile_sample_stride_width",
                    self.tile_sample_stride_width,
                    spatial,
                ),
                (
                    "tile_sample_stride_num_frames",
                    self.tile_sample_stride_num_frames,
                    temporal,
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
                (
                    "num_frames",
                    self.tile_sample_stride_num_frames,
                    self.tile_sample_min_num_frames,
                ),
            ],
        )
    }
}

/// The checks every video VAE's tile sizes pass: each `(name, value, factor)` a positive multiple
/// of its compression factor (tiles cut latents at whole latent pixels and frames), and each
/// `(dimension, stride, tile)` stride below its tile (a stride beyond the tile skips pixels; one
/// equal to it leaves no overlap to blend, so the tiles would meet at visible seams).
pub(crate) fn check_tile_sizes(
    sizes: &[(&str, usize, usize)],
    overlaps: &[(&str, usize, usize)],
) -> std::result::Result<(), String> {
    for &(name, v, factor) in sizes {
        if factor == 0 || v == 0 || v % factor != 0 {
            return Err(format!(
                "{name} = {v} is not a positive multiple of {factor}"
            ));
        }
    }
    for &(name, stride, tile) in overlaps {
        if stride > tile {
            return Err(format!(
                "tile_sample_stride_{name} = {stride} exceeds tile_sample_min_{name} = {tile}"
            ));
        }
        if stride == tile {
            return Err(format!(
                "tile_sample_stride_{name} = tile_sample_min_{name} = {tile} leaves no overlap to blend"
            ));
        }
    }
    Ok(())
}

/// diffusers' `blend_v`/`blend_h`/`blend_t`: the first `extent` slices of `b` along `dim` fade
/// in from the last `extent` slices of `a`, `b[x] = a[-extent + x] * (1 - x / extent) + b[x] *
/// (x / extent)` (the extent capped by both sizes), with the weights rounded from f64 as
/// PyTorch rounds a Python scalar.
pub(crate) fn blend<B: Backend, const D: usize>(
    a: &Tensor<B, D>,
    b: Tensor<B, D>,
    dim: usize,
    extent: usize,
) -> Tensor<B, D> {
    let (na, nb) = (a.dims()[dim], b.dims()[dim]);
    let extent = extent.min(na).min(nb);
    if extent == 0 {
        return b;
    }
    let device = b.device();
    let dtype = b.dtype();
    let mut shape = [1; D];
    shape[dim] = extent;
    let weights = |f: &dyn Fn(f64) -> f64| {
        let w: Vec<f32> = (0..extent)
            .map(|x| f(x as f64 / extent as f64) as f32)
            .collect();
        Tensor::<B, 1>::from_data(TensorData::new(w, [extent]), (&device, dtype)).reshape(shape)
    };
    let head = a.clone().narrow(dim, na - extent, extent) * weights(&|r| 1.0 - r)
        + b.clone().narrow(dim, 0, extent) * weights(&|r| r);
    if nb == extent {
        head
    } else {
        Tensor::cat(vec![head, b.narrow(dim, extent, nb - extent)], dim)
    }
}

/// The first `n` slices of `t` along `dim` (all of them when it has fewer).
pub(crate) fn keep<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    dim: usize,
    n: usize,
) -> Tensor<B, D> {
    let have = t.dims()[dim];
    if have <= n { t } else { t.narrow(dim, 0, n) }
}

/// Blends a grid of overlapping spatial tiles (the last two dimensions are height and width) as
/// diffusers' `tiled_encode`/`tiled_decode` do: each tile, in row order, fades in from the tile
/// above (over `blend[0]` rows) and the one to its left (over `blend[1]` columns) as they are
/// after their own blending, keeps its first `keep_hw` rows and columns, and the kept parts are
/// concatenated.
pub(crate) fn blend_tiles<B: Backend, const D: usize>(
    mut rows: Vec<Vec<Tensor<B, D>>>,
    blend_hw: [usize; 2],
    keep_hw: [usize; 2],
) -> Tensor<B, D> {
    let (hd, wd) = (D - 2, D - 1);
    let mut out_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut kept = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend(&rows[i - 1][j], tile, hd, blend_hw[0]);
            }
            if j > 0 {
                tile = blend(&rows[i][j - 1], tile, wd, blend_hw[1]);
            }
            // In place, as diffusers: later tiles blend with this blended one.
            rows[i][j] = tile.clone();
            kept.push(keep(keep(tile, hd, keep_hw[0]), wd, keep_hw[1]));
        }
        out_rows.push(Tensor::cat(kept, wd));
    }
    Tensor::cat(out_rows, hd)
}

/// Blends overlapping frame windows (dimension 2) as diffusers' `_temporal_tiled_encode`/
/// `_temporal_tiled_decode` do: each window fades in from the previous one as it is after its own
/// blending over `extent` frames; the first keeps `stride + 1` frames, the others `stride`.
pub(crate) fn blend_frames<B: Backend, const D: usize>(
    mut windows: Vec<Tensor<B, D>>,
    extent: usize,
    stride: usize,
) -> Tensor<B, D> {
    let mut kept = Vec::with_capacity(windows.len());
    for i in 0..windows.len() {
        if i == 0 {
            kept.push(keep(windows[0].clone(), 2, stride + 1));
        } else {
            let tile = blend(&windows[i - 1], windows[i].clone(), 2, extent);
            windows[i] = tile.clone();
            kept.push(keep(tile, 2, stride));
        }
    }
    Tensor::cat(kept, 2)
}
