//! Activations: SiLU, GELU (exact and tanh), quick-GELU, and diffusers' `GELU` and `GEGLU`
//! projection modules.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation;
use diffusers_core::backend::with_cpu_f32;

use crate::linear::{Linear, LinearConfig};

/// `x * sigmoid(x)`.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let silu_f32 = |v: &mut [f32]| {
        crate::host_activation::silu_f32(v);
        true
    };
    match crate::host::in_place_f32(x, silu_f32) {
        Ok(y) => y,
        Err(x) => activation::silu(x),
    }
}

/// Exact GELU, `x * Φ(x)` (`approximate="none"`).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    activation::gelu(x)
}

/// The tanh approximation of GELU (`approximate="tanh"`).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let gelu_tanh_f32 = |v: &mut [f32]| {
        crate::host_activation::gelu_tanh_f32(v);
        true
    };
    let x = match crate::host::in_place_f32(x, gelu_tanh_f32) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

/// GEGLU's gating on the CPU backend in f32 ([`crate::host_activation::geglu_f32`], one pass
/// over the projection instead of two strided views); gives `h` back otherwise.
fn host_geglu<B: Backend, const D: usize>(h: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let mut dims = h.dims();
    if !crate::host::applies::<B>(h.dtype()) || !dims[D - 1].is_multiple_of(2) {
        return Err(h);
    }
    let inner = dims[D - 1] / 2;
    // The projection is read where it lies (a fresh result is written anyway).
    match with_cpu_f32(&h, |p| crate::host_activation::geglu_f32(p, inner)).flatten() {
        Some(out) => {
            dims[D - 1] = inner;
            Ok(Tensor::from_data(TensorData::new(out, dims), &h.device()))
        }
        None => Err(h),
    }
}

/// CLIP's quick GELU, `x * sigmoid(1.702 x)`.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * activation::sigmoid(x * 1.702)
}

/// Which GELU variant a module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GeluApproximate {
    /// Exact (`"none"`).
    #[serde(rename = "none")]
    None,
    /// tanh approximation (`"tanh"`).
    #[serde(rename = "tanh")]
    Tanh,
}

/// Configuration of diffusers' [`Gelu`] (`GELU(dim_in, dim_out, approximate)`).
#[derive(Config, Debug)]
pub struct GeluConfig {
    /// Input features.
    pub dim_in: usize,
    /// Output features.
    pub dim_out: usize,
    /// Variant.
    #[config(default = "GeluApproximate::None")]
    pub approximate: GeluApproximate,
    /// Whether the projection has a bias.
    #[config(default = true)]
    pub bias: bool,
}

/// A linear projection followed by GELU (diffusers' `GELU` module).
#[derive(Module, Debug)]
pub struct Gelu<B: Backend> {
    /// The projection.
    pub proj: Linear<B>,
    tanh: bool,
}

impl GeluConfig {
    /// Builds the module.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gelu<B> {
        Gelu {
            proj: LinearConfig::new(self.dim_in, self.dim_out)
                .with_bias(self.bias)
                .init(device),
            tanh: self.approximate == GeluApproximate::Tanh,
        }
    }
}

impl<B: Backend> Gelu<B> {
    /// Projects, then applies GELU.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let h = self.proj.forward(x);
        if self.tanh { gelu_tanh(h) } else { gelu(h) }
    }
}

/// Configuration of diffusers' [`Geglu`].
#[derive(Config, Debug)]
pub struct GegluConfig {
    /// Input features.
    pub dim_in: usize,
    /// Output features (the projection has twice as many).
    pub dim_out: usize,
    /// Whether the projection has a bias.
    #[config(default = true)]
    pub bias: bool,
}

/// Gated GELU: `proj(x)` split in two halves `h, g`, returning `h * gelu(g)`.
#[derive(Module, Debug)]
pub struct Geglu<B: Backend> {
    /// `[2 * dim_out, dim_in]` projection.
    pub proj: Linear<B>,
}

impl GegluConfig {
    /// Builds the module.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Geglu<B> {
        Geglu {
            proj: LinearConfig::new(self.dim_in, self.dim_out * 2)
                .with_bias(self.bias)
                .init(device),
        }
    }
}

impl<B: Backend> Geglu<B> {
    /// Applies the gated GELU.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let h = self.proj.forward(x);
        let h = match host_geglu(h) {
            Ok(y) => return y,
            Err(h) => h,
        };
        let mut halves = h.chunk(2, D - 1);
        let gate = halves.pop().expect("chunk(2) yields two halves");
        let hidden = halves.pop().expect("chunk(2) yields two halves");
        hidden * gelu(gate)
    }
}
