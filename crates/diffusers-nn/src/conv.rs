//! `Conv2d` and `Conv3d` (with the causal and replicate padding video VAEs need).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::module::{conv2d, conv3d};
use burn::tensor::ops::ConvOptions;
use diffusers_core::backend::with_cpu_f32;

use crate::lora::LoraSlot;
use crate::pad::{PadMode, pad_dim};

/// Configuration of a [`Conv2d`] (as `torch.nn.Conv2d`, zero padding).
#[derive(Config, Debug)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// Stride.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Symmetric zero padding `[ph, pw]`.
    #[config(default = "[0, 0]")]
    pub padding: [usize; 2],
    /// Dilation.
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Groups.
    #[config(default = 1)]
    pub groups: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

/// A 2D convolution over `[batch, channels, height, width]`.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[out, in / groups, kh, kw]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The active LoRA adapters' updates (empty unless an adapter is loaded): PEFT's conv LoRA,
    /// a `[rank, in, kh, kw]` convolution with this layer's stride and padding, then a 1x1 one.
    pub lora: LoraSlot<B>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
}

fn uniform(fan_in: usize) -> burn::module::Initializer {
    let bound = 1.0 / (fan_in as f64).sqrt();
    burn::module::Initializer::Uniform {
        min: -bound,
        max: bound,
    }
}

impl Conv2dConfig {
    /// Builds the layer with lazily-initialised parameters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Conv2d<B> {
        let [kh, kw] = self.kernel_size;
        let cin = self.in_channels / self.groups.max(1);
        let fan_in = cin * kh * kw;
        let init = uniform(fan_in);
        Conv2d {
            weight: init.init_with([self.out_channels, cin, kh, kw], Some(fan_in), None, device),
            bias: self
                .bias
                .then(|| init.init_with([self.out_channels], Some(fan_in), None, device)),
            lora: LoraSlot::default(),
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups.max(1),
        }
    }
}

impl<B: Backend> Conv2d<B> {
    /// Applies the convolution.
    ///
    /// On the CPU backend in f32, stride-1 undilated single-group convolutions run on
    /// [`crate::host_conv`] (no im2col matrix); everything else on burn's `conv2d`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if self.lora.is_empty() {
            return self.forward_base(x);
        }
        let y = self.forward_base(x.clone());
        let s = self.weight.lazy_shape();
        let (cin, kh, kw) = (s[1], s[2], s[3]);
        self.lora.deltas.iter().fold(y, |y, d| {
            let rank = d.down.dims()[0];
            let down = d.down.clone().reshape([rank, cin, kh, kw]);
            let h = conv2d(
                x.clone(),
                down,
                None,
                // PEFT's lora_A: the base kernel size, stride and padding, no dilation or groups.
                ConvOptions::new(self.stride, self.padding, [1, 1], 1),
            );
            let [out, _] = d.up.dims();
            let up = d.up.clone().reshape([out, rank, 1, 1]);
            let h = conv2d(h, up, None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
            y + h.mul_scalar(d.scale)
        })
    }

    fn forward_base(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some(y) = self.host_forward(&x) {
            return y;
        }
        conv2d(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new(self.stride, self.padding, self.dilation, self.groups),
        )
    }
}

impl<B: Backend> Conv2d<B> {
    fn host_forward(&self, x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
        let host = crate::host::applies::<B>(x.dtype());
        if !host || self.stride != [1, 1] || self.dilation != [1, 1] || self.groups != 1 {
            return None;
        }
        let weight = self.weight.val();
        let [batch, c_in, h, w] = x.dims();
        let [c_out, w_in, kh, kw] = weight.dims();
        if w_in != c_in {
            return None;
        }
        let dims = crate::host_conv::ConvDims {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            ph: self.padding[0],
            pw: self.padding[1],
        };
        let (h_out, w_out) = dims.out_hw()?;
        // The bias (c_out values) is copied; input and weight are read where they lie.
        let bias = match &self.bias {
            Some(b) => Some(b.val().into_data().into_vec::<f32>().ok()?),
            None => None,
        };
        let out = with_cpu_f32(x, |xs| {
            with_cpu_f32(&weight, |ws| {
                crate::host_conv::conv2d_f32(xs, ws, bias.as_deref(), dims)
            })
        })
        .flatten()
        .flatten()?;
        Some(Tensor::from_data(
            TensorData::new(out, [batch, c_out, h_out, w_out]),
            &x.device(),
        ))
    }
}

/// Configuration of a [`Conv3d`].
///
/// `padding` is `[w_left, w_right, h_top, h_bottom, t_front, t_back]`, the order of
/// `torch.nn.functional.pad`, so the causal paddings of diffusers' video VAEs are expressed
/// directly: Wan's `(p, p, p, p, 2p, 0)` with zeros, HunyuanVideo's `(k/2, k/2, k/2, k/2, k-1, 0)`
/// with replicate.
#[derive(Config, Debug)]
pub struct Conv3dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kt, kh, kw]`.
    pub kernel_size: [usize; 3],
    /// Stride `[st, sh, sw]`.
    #[config(default = "[1, 1, 1]")]
    pub stride: [usize; 3],
    /// Padding `[w_left, w_right, h_top, h_bottom, t_front, t_back]`.
    #[config(default = "[0, 0, 0, 0, 0, 0]")]
    pub padding: [usize; 6],
    /// How padded values are filled.
    #[config(default = "PadMode::Zeros")]
    pub pad_mode: PadMode,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

/// A 3D convolution over `[batch, channels, frames, height, width]`.
#[derive(Module, Debug)]
pub struct Conv3d<B: Backend> {
    /// `[out, in, kt, kh, kw]`.
    pub weight: Param<Tensor<B, 5>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    stride: [usize; 3],
    padding: [usize; 6],
    replicate: bool,
}

impl Conv3dConfig {
    /// Builds the layer with lazily-initialised parameters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Conv3d<B> {
        let [kt, kh, kw] = self.kernel_size;
        let fan_in = self.in_channels * kt * kh * kw;
        let init = uniform(fan_in);
        Conv3d {
            weight: init.init_with(
                [self.out_channels, self.in_channels, kt, kh, kw],
                Some(fan_in),
                None,
                device,
            ),
            bias: self
                .bias
                .then(|| init.init_with([self.out_channels], Some(fan_in), None, device)),
            stride: self.stride,
            padding: self.padding,
            replicate: self.pad_mode == PadMode::Replicate,
        }
    }
}

impl<B: Backend> Conv3d<B> {
    /// Applies the padding, then the convolution.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [wl, wr, ht, hb, tf, tb] = self.padding;
        let symmetric = wl == wr && ht == hb && tf == tb;
        let (x, conv_pad) = if symmetric && !self.replicate {
            (x, [tf, ht, wl])
        } else {
            let mode = if self.replicate {
                PadMode::Replicate
            } else {
                PadMode::Zeros
            };
            let x = pad_dim(x, 2, tf, tb, mode);
            let x = pad_dim(x, 3, ht, hb, mode);
            (pad_dim(x, 4, wl, wr, mode), [0, 0, 0])
        };
        conv3d(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new(self.stride, conv_pad, [1, 1, 1], 1),
        )
    }
}
