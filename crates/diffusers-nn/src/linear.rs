//! `Linear`: the projection every model uses, with a slot for low-rank (LoRA) deltas.
//!
//! The weight is stored as PyTorch stores it, `[out_features, in_features]`, so checkpoint
//! tensors load without transposition. A quantized weight attaches by replacing the weight
//! parameter with a burn quantized tensor; a LoRA delta attaches with [`Linear::add_delta`].
//! Neither changes model code, since every model calls [`Linear::forward`].

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::module::linear;

/// Configuration of a [`Linear`] layer (as `torch.nn.Linear`).
#[derive(Config, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

/// A low-rank update `scale * up @ down` added to a [`Linear`]'s output (LoRA).
#[derive(Module, Debug)]
pub struct LinearDelta<B: Backend> {
    /// `lora_A`/`lora_down`: `[rank, in_features]`.
    pub down: Param<Tensor<B, 2>>,
    /// `lora_B`/`lora_up`: `[out_features, rank]`.
    pub up: Param<Tensor<B, 2>>,
    /// The scale (`alpha / rank` times the adapter weight), a one-element tensor.
    pub scale: Param<Tensor<B, 1>>,
}

/// `y = x W^T + b` (+ any attached deltas), as `torch.nn.Linear`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`, as PyTorch stores it.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out_features]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Attached low-rank deltas (empty unless an adapter is loaded).
    pub deltas: Vec<LinearDelta<B>>,
}

impl LinearConfig {
    /// Builds the layer with lazily-initialised parameters (no memory until used or loaded).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Linear<B> {
        let bound = 1.0 / (self.in_features as f64).sqrt();
        let init = burn::module::Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Linear {
            weight: init.init_with(
                [self.out_features, self.in_features],
                Some(self.in_features),
                Some(self.out_features),
                device,
            ),
            bias: self
                .bias
                .then(|| init.init_with([self.out_features], Some(self.in_features), None, device)),
            deltas: Vec::new(),
        }
    }
}

impl<B: Backend> Linear<B> {
    /// Applies the layer to `[..., in_features]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if D > 2 {
            // As one [rows, in] matrix: burn-flex's 2-D matmul reads the transposed weight
            // through its strides, where the batched path copies it on every call.
            let mut dims = x.dims();
            let rows: Tensor<B, 2> = x.flatten(0, D - 2);
            dims[D - 1] = self.dims().1;
            return self.forward(rows).reshape(dims);
        }
        let weight = self.weight.val();
        let y = linear(
            x.clone(),
            weight.transpose(),
            self.bias.as_ref().map(|b| b.val()),
        );
        self.deltas.iter().fold(y, |y, d| {
            let h = linear(x.clone(), d.down.val().transpose(), None);
            let h = linear(h, d.up.val().transpose(), None);
            let scale = d.scale.val().reshape([1; D]);
            y + h * scale
        })
    }

    /// Attaches a low-rank delta (`up: [out, rank]`, `down: [rank, in]`).
    pub fn add_delta(&mut self, down: Tensor<B, 2>, up: Tensor<B, 2>, scale: f64) {
        let device = down.device();
        let scale = Tensor::from_data([scale as f32], (&device, down.dtype()));
        self.deltas.push(LinearDelta {
            down: Param::from_tensor(down),
            up: Param::from_tensor(up),
            scale: Param::from_tensor(scale),
        });
    }

    /// `(in_features, out_features)`, without materialising the weight.
    pub fn dims(&self) -> (usize, usize) {
        let s = self.weight.lazy_shape();
        (s[1], s[0])
    }
}
