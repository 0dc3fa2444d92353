//! The transformers against diffusers, one test binary (each binary links the CUDA backend:
//! fewer binaries, a faster CI build).

mod flux;
mod hunyuan_video;
mod wan;
