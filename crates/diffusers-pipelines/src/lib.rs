//! # diffusers-pipelines
//!
//! Pipelines that compose the model crates, as diffusers' `pipelines/`:
//!
//! - [`model_index::ModelIndex`]: `model_index.json` (the only crate that reads it), with
//!   optional `[null, null]` components;
//! - [`pipeline_flux::FluxPipeline`]: FLUX.1 text-to-image from prompt embeddings (latent
//!   packing, image ids, `mu` from the sequence length, guidance, explicit latents or a torch
//!   seed, image/array/latent outputs).
//!
//! Prompt encoding from text (tokenizers), `DiffusionPipeline::from_pretrained` dispatch and the
//! CLI come next.

mod error;
pub mod model_index;
pub mod pipeline_flux;

pub use error::{Error, Result};
