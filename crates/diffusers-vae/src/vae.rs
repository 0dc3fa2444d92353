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
