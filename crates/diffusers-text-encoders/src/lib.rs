//! # diffusers-text-encoders
//!
//! The text encoders diffusers pipelines use, loading the real transformers checkpoint keys:
//!
//! - [`clip::CLIPTextModel`] and [`clip::CLIPTextModelWithProjection`] (SD 1.x/2.x, SDXL, Flux),
//!   with every layer's hidden state for `clip_skip`.
//!
//! - [`t5::T5EncoderModel`] (Flux, SD3): relative position bias, gated-GELU or ReLU feed-forward,
//!   an optional attention mask; as [`umt5::UMT5EncoderModel`] (Wan), a bias in every block.
//!
//! Tokenizers and Llama-style encoders come with the pipelines that need them (issue 4).

pub mod clip;
mod error;
pub mod sentencepiece;
pub mod t5;
pub mod tokenizer;
pub mod umt5;

pub use error::{Error, Result};
