//! diffusers' `Downsample2D` (`models/downsampling.py`) with `use_conv=True`.

use burn::module::Module;
use burn::prelude::*;

use crate::conv::{Conv2d, Conv2dConfig};
use crate::pad::{PadMode, pad_dim};

/// Configuration of a [`Downsample2D`].
#[derive(Config, Debug)]
pub struct Downsample2DConfig {
    /// Input channels.
    pub channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Symmetric padding of the stride-2 convolution; `0` pads right and bottom by one instead
    /// (the VAE's encoder), as diffusers does.
    #[config(default = 1)]
    pub padding: usize,
    /// Kernel size.
    #[config(default = 3)]
    pub kernel_size: usize,
}

/// A stride-2 convolution halving height and width (rounding up with `padding=1`).
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The stride-2 convolution.
    pub conv: Conv2d<B>,
    pad_right_bottom: bool,
}

impl Downsample2DConfig {
    /// Builds the layer with lazily-initialised parameters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Downsample2D<B> {
        let k = self.kernel_size;
        Downsample2D {
            conv: Conv2dConfig::new(self.channels, self.out_channels, [k, k])
                .with_stride([2, 2])
                .with_padding([self.padding, self.padding])
                .init(device),
            pad_right_bottom: self.padding == 0,
        }
    }
}

impl<B: Backend> Downsample2D<B> {
    /// Downsamples `[b, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = if self.pad_right_bottom {
            let x = pad_dim(x, 2, 0, 1, PadMode::Zeros);
            pad_dim(x, 3, 0, 1, PadMode::Zeros)
        } else {
            x
        };
        self.conv.forward(x)
    }
}
