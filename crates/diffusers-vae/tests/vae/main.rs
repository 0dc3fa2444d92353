//! The VAEs against diffusers, one test binary (each binary links the CUDA backend: fewer
//! binaries, a faster CI build).

mod autoencoder_kl;
mod autoencoder_kl_hunyuan_video;
mod autoencoder_kl_wan;
