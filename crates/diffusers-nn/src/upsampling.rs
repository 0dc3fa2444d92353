//! diffusers' `Upsample2D` (`models/upsampling.py`) with `use_conv=True`: nearest-neighbour
//! upsampling (2x, or to an explicit size as the UNets request for odd sizes), then a 3x3 conv.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use crate::conv::{Conv2d, Conv2dConfig};

/// Configuration of an [`Upsample2D`].
#[derive(Config, Debug)]
pub struct Upsample2DConfig {
    /// Input channels.
    pub channels: usize,
    /// Output channels.
    pub out_channels: usize,
}

/// Nearest-neighbour upsampling followed by a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// The convolution after upsampling.
    pub conv: Conv2d<B>,
}

impl Upsample2DConfig {
    /// Builds the layer with lazily-initialised parameters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Upsample2D<B> {
        Upsample2D {
            conv: Conv2dConfig::new(self.channels, self.out_channels, [3, 3])
                .with_padding([1, 1])
                .init(device),
        }
    }
}

/// PyTorch's `nearest` source indices for one axis (`floor(dst * in / out)` in f32, clamped).
fn nearest_indices(input: usize, output: usize) -> Vec<i64> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| ((o as f32 * scale).floor() as usize).min(input.saturating_sub(1)) as i64)
        .collect()
}

/// `F.interpolate(x, size=[oh, ow], mode="nearest")` (2x is a pure reshape).
pub fn interpolate_nearest<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let [oh, ow] = size;
    if oh == 2 * h && ow == 2 * w {
        return x
            .reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, 2, w, 2])
            .reshape([b, c, oh, ow]);
    }
    let device = x.device();
    let index = |input: usize, output: usize| {
        Tensor::<B, 1, Int>::from_data(
            TensorData::new(nearest_indices(input, output), [output]),
            &device,
        )
    };
    let x = if oh == h {
        x
    } else {
        x.select(2, index(h, oh))
    };
    if ow == w {
        x
    } else {
        x.select(3, index(w, ow))
    }
}

impl<B: Backend> Upsample2D<B> {
    /// Upsamples `[b, c, h, w]` to `output_size` (default `[2h, 2w]`), then convolves.
    pub fn forward(&self, x: Tensor<B, 4>, output_size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let size = output_size.unwrap_or([2 * h, 2 * w]);
        self.conv.forward(interpolate_nearest(x, size))
    }
}

#[cfg(test)]
mod tests {
    use super::nearest_indices;

    #[test]
    fn nearest_indices_match_torch() {
        // torch: F.interpolate(arange(3)[None, None, None], size=(1, 5)) -> 0 0 1 1 2
        assert_eq!(nearest_indices(3, 5), vec![0, 0, 1, 1, 2]);
        assert_eq!(nearest_indices(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(nearest_indices(4, 7), vec![0, 0, 1, 1, 2, 2, 3]);
    }
}
