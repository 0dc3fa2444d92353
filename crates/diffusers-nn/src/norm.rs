//! `GroupNorm`, `LayerNorm` (with and without affine) and diffusers' `RMSNorm`.
//!
//! Statistics are computed in f32 whatever the compute dtype, as PyTorch does for half types.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::DType;

fn upcast<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, DType) {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        (x, dtype)
    } else {
        (x.cast(DType::F32), dtype)
    }
}

fn downcast<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// Configuration of a [`GroupNorm`] (as `torch.nn.GroupNorm`).
#[derive(Config, Debug)]
pub struct GroupNormConfig {
    /// Number of groups.
    pub num_groups: usize,
    /// Number of channels (dimension 1).
    pub num_channels: usize,
    /// Epsilon.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Whether there is a per-channel weight and bias.
    #[config(default = true)]
    pub affine: bool,
}

/// Group normalisation over `[batch, channels, ...]`.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// `[channels]`.
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// `[channels]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    num_groups: usize,
    eps: f64,
}

impl GroupNormConfig {
    /// Builds the layer (weight ones, bias zeros).
    pub fn init<B: Backend>(&self, device: &B::Device) -> GroupNorm<B> {
        use burn::module::Initializer;
        GroupNorm {
            weight: self
                .affine
                .then(|| Initializer::Ones.init([self.num_channels], device)),
            bias: self
                .affine
                .then(|| Initializer::Zeros.init([self.num_channels], device)),
            num_groups: self.num_groups,
            eps: self.eps,
        }
    }
}

impl<B: Backend> GroupNorm<B> {
    /// Normalises `x` of rank `D >= 3` (`[N, C, ...]`).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.host_forward(x) {
            Ok(y) => y,
            Err(x) => self.ops_forward(x),
        }
    }

    /// The forward pass in burn ops (every backend but the CPU one in f32).
    fn ops_forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let shape = x.dims();
        let (n, c) = (shape[0], shape[1]);
        let g = self.num_groups;
        let (x, dtype) = upcast(x);
        let grouped: Tensor<B, 3> = x.clone().reshape([n as i32, g as i32, -1]);
        let (var, mean) = grouped.var_mean_bias(2);
        let rstd = (var + self.eps).sqrt().recip();
        // As PyTorch's kernel: y = x·a + b per (sample, channel), a = γ·rstd and
        // b = β - mean·a. Two passes over x, each broadcasting one contiguous scalar per
        // channel row (the CPU backend's SIMD fast path in half precision, any batch size).
        let per_group = [n, g, c / g];
        let mut a = rstd.expand(per_group);
        if let Some(w) = &self.weight {
            a = a * w.val().cast(DType::F32).reshape([1, g, c / g]);
        }
        let mut b = (mean.expand(per_group) * a.clone()).neg();
        if let Some(bias) = &self.bias {
            b = b + bias.val().cast(DType::F32).reshape([1, g, c / g]);
        }
        let mut pshape = [1usize; D];
        pshape[0] = n;
        pshape[1] = c;
        let y = x * a.reshape(pshape) + b.reshape(pshape);
        downcast(y, dtype)
    }

    /// f32 on the CPU backend: [`crate::host_group_norm`], in place on `x`'s data (into a fresh
    /// tensor when `x` is shared, as a resnet's input kept for the residual is); gives `x`
    /// back elsewhere (and for sizes the kernel refuses).
    fn host_forward<const D: usize>(&self, x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !crate::host::applies::<B>(x.dtype()) {
            return Err(x);
        }
        let shape = x.dims();
        let sizes = [shape[0], shape[1], shape[2..].iter().product::<usize>()];
        let (Some(weight), Some(bias)) = (f32_values(&self.weight), f32_values(&self.bias)) else {
            return Err(x);
        };
        let (groups, eps) = (self.num_groups, self.eps as f32);
        let (weight, bias) = (weight.as_deref(), bias.as_deref());
        crate::host::map_f32(
            x,
            |values| {
                crate::host_group_norm::group_norm_f32(values, sizes, groups, eps, weight, bias)
            },
            |src| {
                crate::host_group_norm::group_norm_into_f32(src, sizes, groups, eps, weight, bias)
            },
        )
    }
}

/// Configuration of a [`LayerNorm`] over the last dimension.
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Size of the last dimension.
    pub dim: usize,
    /// Epsilon.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// Whether there is a learned weight.
    #[config(default = true)]
    pub elementwise_affine: bool,
    /// Whether there is a learned bias (only with `elementwise_affine`).
    #[config(default = true)]
    pub bias: bool,
}

/// Layer normalisation over the last dimension (as `torch.nn.LayerNorm`).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[dim]`.
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// `[dim]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    eps: f64,
}

impl LayerNormConfig {
    /// Builds the layer (weight ones, bias zeros).
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        use burn::module::Initializer;
        LayerNorm {
            weight: self
                .elementwise_affine
                .then(|| Initializer::Ones.init([self.dim], device)),
            bias: (self.elementwise_affine && self.bias)
                .then(|| Initializer::Zeros.init([self.dim], device)),
            eps: self.eps,
        }
    }
}

impl<B: Backend> LayerNorm<B> {
    /// Normalises the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = match self.host_forward(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        let (x, dtype) = upcast(x);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let mut y = (x - mean) / (var + self.eps).sqrt();
        if let Some(w) = &self.weight {
            y = y * w.val().cast(DType::F32).unsqueeze();
        }
        if let Some(b) = &self.bias {
            y = y + b.val().cast(DType::F32).unsqueeze();
        }
        downcast(y, dtype)
    }

    /// f32 on the CPU backend: [`crate::host_norm`], in place on `x`'s data (into a fresh
    /// tensor when `x` is shared); gives `x` back elsewhere.
    fn host_forward<const D: usize>(&self, x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !crate::host::applies::<B>(x.dtype()) {
            return Err(x);
        }
        let (Some(weight), Some(bias)) = (f32_values(&self.weight), f32_values(&self.bias)) else {
            return Err(x);
        };
        let norm = crate::host_norm::RowNorm::Layer {
            eps: self.eps as f32,
            weight: weight.as_deref(),
            bias: bias.as_deref(),
        };
        row_norm_host(x, norm)
    }
}

/// A layer's optional affine parameter as f32 values (`dim` of them: copying is cheap next to
/// the activations), `Some(None)` when the layer has none; `None` when it cannot be read.
fn f32_values<B: Backend>(p: &Option<Param<Tensor<B, 1>>>) -> Option<Option<Vec<f32>>> {
    match p {
        None => Some(None),
        Some(p) => p
            .val()
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .ok()
            .map(Some),
    }
}

/// Runs [`crate::host_norm::row_norm_f32`] over `x`'s last dimension, in place or (for a
/// shared `x`) into a fresh tensor; gives `x` back when it does not apply (other backends or
/// dtypes, sizes the kernel refuses).
fn row_norm_host<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    norm: crate::host_norm::RowNorm<'_>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let dim = x.dims()[D - 1];
    crate::host::map_f32(
        x,
        |values| crate::host_norm::row_norm_f32(None, values, dim, norm),
        |src| {
            let mut out = vec![0f32; src.len()];
            crate::host_norm::row_norm_f32(Some(src), &mut out, dim, norm).then_some(out)
        },
    )
}

/// Configuration of diffusers' [`RMSNorm`].
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Size of the last dimension.
    pub dim: usize,
    /// Epsilon.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// Whether there is a learned weight.
    #[config(default = true)]
    pub elementwise_affine: bool,
}

/// Root-mean-square normalisation over the last dimension (diffusers' `RMSNorm`).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[dim]`.
    pub weight: Option<Param<Tensor<B, 1>>>,
    eps: f64,
}

impl RmsNormConfig {
    /// Builds the layer (weight ones).
    pub fn init<B: Backend>(&self, device: &B::Device) -> RmsNorm<B> {
        RmsNorm {
            weight: self
                .elementwise_affine
                .then(|| burn::module::Initializer::Ones.init([self.dim], device)),
            eps: self.eps,
        }
    }
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises the last dimension as diffusers does: variance in f32, then the weight in
    /// the weight's dtype when that is a half type.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = match self.host_forward(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        let (xf, dtype) = upcast(x);
        let var = xf.clone().powi_scalar(2).mean_dim(D - 1);
        let y = xf * (var + self.eps).sqrt().recip();
        match &self.weight {
            Some(w) => {
                let w = w.val();
                let wd = w.dtype();
                if wd == DType::F32 {
                    downcast(y * w.unsqueeze(), dtype)
                } else {
                    y.cast(wd) * w.unsqueeze()
                }
            }
            None => downcast(y, dtype),
        }
    }

    /// f32 input and f32 weight on the CPU backend: [`crate::host_norm`]; gives `x` back
    /// elsewhere (a half-precision weight takes the path above, which rounds as diffusers).
    fn host_forward<const D: usize>(&self, x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !crate::host::applies::<B>(x.dtype())
            || self
                .weight
                .as_ref()
                .is_some_and(|w| w.val().dtype() != DType::F32)
        {
            return Err(x);
        }
        let Some(weight) = f32_values(&self.weight) else {
            return Err(x);
        };
        let norm = crate::host_norm::RowNorm::Rms {
            eps: self.eps as f32,
            weight: weight.as_deref(),
        };
        row_norm_host(x, norm)
    }
}
