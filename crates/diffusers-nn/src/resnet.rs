//! diffusers' `ResnetBlock2D` (`models/resnet.py`) with an optional time embedding, as the
//! UNets (with `temb_channels`) and the VAEs (without) use it.

use burn::module::Module;
use burn::prelude::*;

use crate::activation::silu;
use crate::conv::{Conv2d, Conv2dConfig};
use crate::linear::{Linear, LinearConfig};
use crate::norm::{GroupNorm, GroupNormConfig};

/// Configuration of a [`ResnetBlock2D`] (diffusers' keyword arguments, `non_linearity="silu"`,
/// `time_embedding_norm="default"`, `pre_norm=True`).
#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the time embedding (`None`: no `time_emb_proj`, as in the VAE).
    #[config(default = "None")]
    pub temb_channels: Option<usize>,
    /// Groups of `norm1` (and of `norm2` unless `groups_out` is set).
    #[config(default = 32)]
    pub groups: usize,
    /// Groups of `norm2`.
    #[config(default = "None")]
    pub groups_out: Option<usize>,
    /// Epsilon of both group norms.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// The output is `(shortcut + h) / output_scale_factor`.
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
    /// Whether the shortcut is a 1x1 convolution (`conv_shortcut`); by default exactly when the
    /// channel count changes, as diffusers' `use_in_shortcut=None`.
    #[config(default = "None")]
    pub use_in_shortcut: Option<bool>,
}

/// `norm1 -> silu -> conv1 (+ time_emb_proj(silu(temb))) -> norm2 -> silu -> conv2`, plus the
/// (projected) input.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// First norm.
    pub norm1: GroupNorm<B>,
    /// First 3x3 convolution.
    pub conv1: Conv2d<B>,
    /// Projection of the time embedding to the output channels.
    pub time_emb_proj: Option<Linear<B>>,
    /// Second norm.
    pub norm2: GroupNorm<B>,
    /// Second 3x3 convolution.
    pub conv2: Conv2d<B>,
    /// 1x1 projection of the input.
    pub conv_shortcut: Option<Conv2d<B>>,
    output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    /// Builds the block with lazily-initialised parameters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResnetBlock2D<B> {
        let (cin, cout) = (self.in_channels, self.out_channels);
        let conv3 = |i, o| {
            Conv2dConfig::new(i, o, [3, 3])
                .with_padding([1, 1])
                .init(device)
        };
        let shortcut = self.use_in_shortcut.unwrap_or(cin != cout);
        ResnetBlock2D {
            norm1: GroupNormConfig::new(self.groups, cin)
                .with_eps(self.eps)
                .init(device),
            conv1: conv3(cin, cout),
            time_emb_proj: self
                .temb_channels
                .map(|t| LinearConfig::new(t, cout).init(device)),
            norm2: GroupNormConfig::new(self.groups_out.unwrap_or(self.groups), cout)
                .with_eps(self.eps)
                .init(device),
            conv2: conv3(cout, cout),
            conv_shortcut: shortcut.then(|| Conv2dConfig::new(cin, cout, [1, 1]).init(device)),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

impl<B: Backend> ResnetBlock2D<B> {
    /// Applies the block to `x: [b, c, h, w]` with the time embedding `temb: [b, temb_channels]`
    /// (ignored when the block has no `time_emb_proj`).
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t: Tensor<B, 2> = proj.forward(silu(t));
            h = h + t.unsqueeze_dims::<4>(&[2, 3]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        let out = skip + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}
