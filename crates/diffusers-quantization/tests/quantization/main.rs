//! Tests of diffusers-quantization (one test binary).

mod gguf;
mod quantizers;
