//! # diffusers-vae
//!
//! Variational autoencoders, loading diffusers checkpoints key for key:
//!
//! - [`autoencoder_kl::AutoencoderKL`] (SD 1.x/2.x, SDXL, Flux): encoder, decoder, diagonal
//!   Gaussian posterior, optional quant convs, `scaling_factor` and `shift_factor` in the config.
//!   Tiled encode and decode and batch slicing on request, as diffusers' `enable_tiling` and
//!   `enable_slicing` ([`autoencoder_kl::AutoencoderKLTiling`]).
//! - [`autoencoder_kl_wan::AutoencoderKLWan`] (Wan 2.1): causal 3D video VAE, encode and decode
//!   chunk by chunk through diffusers' feature cache, `latents_mean`/`latents_std` in the config.
//! - [`autoencoder_kl_hunyuan_video::AutoencoderKLHunyuanVideo`] (HunyuanVideo): causal 3D video
//!   VAE with replicate padding and a causal frame mask in the mid attention, `scaling_factor` in
//!   the config; long videos encoded and decoded in overlapping frame windows as diffusers does
//!   by default, spatial tiling and batch slicing on request ([`vae::VideoVaeTiling`]).
//!
//! Tiling and slicing of Wan's VAE come later.

pub mod autoencoder_kl;
pub mod autoencoder_kl_hunyuan_video;
pub mod autoencoder_kl_wan;
mod error;
pub mod vae;

pub use error::{Error, Result};
