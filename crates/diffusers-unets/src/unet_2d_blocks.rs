//! The UNet blocks of diffusers' `models/unets/unet_2d_blocks.py` that SD 1.x/2.x and SDXL use:
//! `CrossAttnDownBlock2D` / `DownBlock2D` ([`DownBlock2D`], with or without attentions),
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D` / `UpBlock2D` ([`UpBlock2D`]).
//!
//! Module fields are the checkpoint names (`resnets.N`, `attentions.N`, `downsamplers.0`,
//! `upsamplers.0`); a block without attentions has an empty `attentions` list.

use burn::module::Module;
use burn::prelude::*;
use diffusers_nn::downsampling::{Downsample2D, Downsample2DConfig};
use diffusers_nn::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use diffusers_nn::upsampling::{Upsample2D, Upsample2DConfig};

use crate::transformer_2d::{Transformer2DModel, Transformer2DModelConfig};

/// What every block is built from (the arguments diffusers' `get_down_block`,
/// `get_mid_block` and `get_up_block` pass on).
#[derive(Debug, Clone)]
pub struct BlockArgs {
    /// Input channels (of the block, or of the skip connection for up blocks).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Channels coming from the previous up block (up blocks only).
    pub prev_output_channel: usize,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// Resnets in the block.
    pub num_layers: usize,
    /// Transformer blocks in each attention.
    pub transformer_layers: usize,
    /// Group-norm epsilon of the resnets.
    pub eps: f64,
    /// Group-norm groups.
    pub groups: usize,
    /// Attention heads (`None`: no attention, `DownBlock2D`/`UpBlock2D`).
    pub heads: Option<usize>,
    /// Width of the text states.
    pub cross_attention_dim: usize,
    /// Linear projections in the transformers.
    pub use_linear_projection: bool,
    /// f32 attention for half inputs.
    pub upcast_attention: bool,
    /// Whether the block ends with a down/upsampler.
    pub add_sample: bool,
    /// Padding of the downsampler's convolution.
    pub downsample_padding: usize,
    /// Output scale of the resnets.
    pub output_scale_factor: f64,
}

impl BlockArgs {
    fn resnet<B: Backend>(
        &self,
        cin: usize,
        groups: usize,
        device: &B::Device,
    ) -> ResnetBlock2D<B> {
        ResnetBlock2DConfig::new(cin, self.out_channels)
            .with_temb_channels(Some(self.temb_channels))
            .with_groups(groups)
            .with_eps(self.eps)
            .with_output_scale_factor(self.output_scale_factor)
            .init(device)
    }

    fn attention<B: Backend>(&self, device: &B::Device) -> Option<Transformer2DModel<B>> {
        self.heads.map(|heads| {
            Transformer2DModelConfig::new(
                heads,
                self.out_channels / heads,
                self.out_channels,
                self.cross_attention_dim,
            )
            .with_num_layers(self.transformer_layers)
            .with_norm_num_groups(self.groups)
            .with_use_linear_projection(self.use_linear_projection)
            .with_upcast_attention(self.upcast_attention)
            .init(device)
        })
    }
}

/// `CrossAttnDownBlock2D` (a transformer after each resnet) or `DownBlock2D` (resnets only),
/// then an optional stride-2 downsampler.
#[derive(Module, Debug)]
pub struct DownBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer per resnet (empty for `DownBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// The downsampler (all blocks but the last).
    pub downsamplers: Vec<Downsample2D<B>>,
}

/// The cross-attention down block is a [`DownBlock2D`] with attentions.
pub type CrossAttnDownBlock2D<B> = DownBlock2D<B>;

impl<B: Backend> DownBlock2D<B> {
    /// Builds the block.
    pub fn new(a: &BlockArgs, device: &B::Device) -> Self {
        Self {
            resnets: (0..a.num_layers)
                .map(|i| {
                    let cin = if i == 0 {
                        a.in_channels
                    } else {
                        a.out_channels
                    };
                    a.resnet(cin, a.groups, device)
                })
                .collect(),
            attentions: (0..a.num_layers)
                .filter_map(|_| a.attention(device))
                .collect(),
            downsamplers: if a.add_sample {
                vec![
                    Downsample2DConfig::new(a.out_channels, a.out_channels)
                        .with_padding(a.downsample_padding)
                        .init(device),
                ]
            } else {
                Vec::new()
            },
        }
    }

    /// Applies the block; returns the output and the states kept for the skip connections.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut x = x;
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, r) in self.resnets.iter().enumerate() {
            x = r.forward(x, Some(temb.clone()));
            if let Some(a) = self.attentions.get(i) {
                x = a.forward(x, context.clone());
            }
            states.push(x.clone());
        }
        for d in &self.downsamplers {
            x = d.forward(x);
            states.push(x.clone());
        }
        (x, states)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn<B: Backend> {
    /// `num_layers + 1` resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `num_layers` transformers.
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> UNetMidBlock2DCrossAttn<B> {
    /// Builds the block (`in_channels == out_channels`).
    pub fn new(a: &BlockArgs, device: &B::Device) -> Self {
        Self {
            resnets: (0..=a.num_layers)
                .map(|_| a.resnet(a.out_channels, a.groups, device))
                .collect(),
            attentions: (0..a.num_layers)
                .filter_map(|_| a.attention(device))
                .collect(),
        }
    }

    /// Applies the block.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let mut resnets = self.resnets.iter();
        let mut x = match resnets.next() {
            Some(r) => r.forward(x, Some(temb.clone())),
            None => x,
        };
        for (a, r) in self.attentions.iter().zip(resnets) {
            x = a.forward(x, context.clone());
            x = r.forward(x, Some(temb.clone()));
        }
        x
    }
}

/// `CrossAttnUpBlock2D` (a transformer after each resnet) or `UpBlock2D` (resnets only): each
/// resnet takes the previous output concatenated with a skip state; then an optional upsampler.
#[derive(Module, Debug)]
pub struct UpBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer per resnet (empty for `UpBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// The upsampler (all blocks but the last).
    pub upsamplers: Vec<Upsample2D<B>>,
}

/// The cross-attention up block is an [`UpBlock2D`] with attentions.
pub type CrossAttnUpBlock2D<B> = UpBlock2D<B>;

impl<B: Backend> UpBlock2D<B> {
    /// Builds the block.
    pub fn new(a: &BlockArgs, device: &B::Device) -> Self {
        Self {
            resnets: (0..a.num_layers)
                .map(|i| {
                    let skip = if i == a.num_layers - 1 {
                        a.in_channels
                    } else {
                        a.out_channels
                    };
                    let cin = if i == 0 {
                        a.prev_output_channel
                    } else {
                        a.out_channels
                    };
                    a.resnet(cin + skip, a.groups, device)
                })
                .collect(),
            attentions: (0..a.num_layers)
                .filter_map(|_| a.attention(device))
                .collect(),
            upsamplers: if a.add_sample {
                vec![Upsample2DConfig::new(a.out_channels, a.out_channels).init(device)]
            } else {
                Vec::new()
            },
        }
    }

    /// Applies the block; `skips` holds (at least) one state per resnet, consumed from the end;
    /// `upsample_size` forces the upsampler's output size.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: Tensor<B, 2>,
        context: Tensor<B, 3>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let mut x = x;
        for (i, r) in self.resnets.iter().enumerate() {
            if let Some(skip) = skips.pop() {
                x = Tensor::cat(vec![x, skip], 1);
            }
            x = r.forward(x, Some(temb.clone()));
            if let Some(a) = self.attentions.get(i) {
                x = a.forward(x, context.clone());
            }
        }
        for u in &self.upsamplers {
            x = u.forward(x, upsample_size);
        }
        x
    }
}
