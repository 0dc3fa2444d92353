//! # diffusers-transformers
//!
//! Diffusion transformers, loading diffusers checkpoints key for key:
//!
//! - [`transformer_flux::FluxTransformer2DModel`]: double- and single-stream blocks, multi-axis
//!   RoPE, timestep/guidance/pooled-text embeddings (FLUX.1-dev and -schnell), any block count.
//! - [`transformer_wan::WanTransformer3DModel`]: Wan 2.1 text-to-video (patchify, 3-D rotary
//!   embeddings over frames, rows and columns, cross-attention over UMT5 states).
//! - [`transformer_hunyuan_video::HunyuanVideoTransformer3DModel`]: HunyuanVideo text-to-video
//!   (token refiner under the text mask, dual- and single-stream blocks with the text after the
//!   image tokens, 3-D rotary embeddings, guidance embedding).
//! - [`single_file_utils`]: which diffusers parameter each tensor of an original single-file
//!   checkpoint (FLUX.1 in the BFL / ComfyUI layout) becomes.

mod error;
pub mod single_file_utils;
pub mod transformer_flux;
pub mod transformer_hunyuan_video;
pub mod transformer_wan;

pub use error::{Error, Result};
