//! # diffusers-transformers
//!
//! Diffusion transformers, loading diffusers checkpoints key for key:
//!
//! - [`transformer_flux::FluxTransformer2DModel`]: double- and single-stream blocks, multi-axis
//!   RoPE, timestep/guidance/pooled-text embeddings (FLUX.1-dev and -schnell), any block count.

mod error;
pub mod transformer_flux;

pub use error::{Error, Result};
