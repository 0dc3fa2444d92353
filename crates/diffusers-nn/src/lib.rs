//! # diffusers-nn
//!
//! The layers every diffusers-rs model is built from, each numerically equal to the PyTorch
//! layer it mirrors (tested against oracle fixtures):
//!
//! - [`linear::Linear`] (with a slot for LoRA deltas and quantized weights), [`embedding::Embedding`],
//! - [`conv::Conv2d`], [`conv::Conv3d`] (causal and replicate padding),
//! - [`norm::GroupNorm`], [`norm::LayerNorm`], [`norm::RmsNorm`],
//! - [`activation`]: SiLU, GELU (exact, tanh), quick-GELU, `GELU` and `GEGLU` modules,
//! - [`attention::scaled_dot_product_attention`] with PyTorch's mask conventions (a
//!   multi-threaded host kernel on the CPU backend),
//! - [`embeddings`]: sinusoidal timestep embeddings and rotary position embeddings,
//! - [`resnet::ResnetBlock2D`], [`downsampling::Downsample2D`], [`upsampling::Upsample2D`]: the
//!   convolutional blocks the UNets and VAEs share (diffusers' `resnet.py`, `downsampling.py`,
//!   `upsampling.py`).
//!
//! Every layer follows burn's pattern: an `XConfig` with `init(device)`, a module `X` with
//! `forward`. Parameters are created lazily, so loading a checkpoint over a fresh module
//! allocates each weight once.
//!
//! ```
//! use diffusers_nn::linear::LinearConfig;
//! use diffusers_core::backend::Cpu;
//! use burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let layer = LinearConfig::new(8, 4).init::<Cpu>(&device);
//! let y = layer.forward(Tensor::<Cpu, 2>::ones([3, 8], &device));
//! assert_eq!(y.dims(), [3, 4]);
//! ```

pub mod activation;
pub mod attention;
pub mod conv;
pub mod downsampling;
pub mod embedding;
pub mod embeddings;
pub mod footprint;
pub mod hooks;
mod host;
mod host_activation;
mod host_attention;
mod host_conv;
mod host_gemm;
mod host_group_norm;
mod host_math;
mod host_norm;
mod host_quant_linear;
mod host_rotary;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod pad;
pub mod resnet;
pub mod upsampling;
