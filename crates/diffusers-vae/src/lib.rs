//! # diffusers-vae
//!
//! Variational autoencoders, loading diffusers checkpoints key for key:
//!
//! - [`autoencoder_kl::AutoencoderKL`] (SD 1.x/2.x, SDXL, Flux): encoder, decoder, diagonal
//!   Gaussian posterior, optional quant convs, `scaling_factor` and `shift_factor` in the config.
//!
//! Tiling, slicing and the video VAEs come later.

pub mod autoencoder_kl;
mod error;
pub mod vae;

pub use error::{Error, Result};
