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
//! - [`llama::LlamaModel`] (HunyuanVideo): every hidden state, causal attention with the padding
//!   mask; [`llama::PromptTemplate`] and [`llama::get_llama_prompt_embeds`], HunyuanVideo's
//!   prompt template and its cropped encoding.
//!
//! Tokenizers come from `tokenizer.json`, CLIP's vocab/merges or T5's `spiece.model`
//! ([`tokenizer::PromptTokenizer`]).

pub mod clip;
mod error;
pub mod llama;
pub mod sentencepiece;
pub mod t5;
pub mod tokenizer;
pub mod umt5;

pub use error::{Error, Result};
