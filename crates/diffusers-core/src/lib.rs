//! # diffusers-core
//!
//! The foundation every diffusers-rs crate builds on:
//!
//! - [`config`]: serde configs that mirror diffusers' `config.json`, keeping unknown keys;
//! - [`json`]: the one JSON reader, which takes Python's `NaN`/`Infinity`/`-Infinity` as
//!   diffusers' `save_config` writes them;
//! - [`weights`]: safetensors (memory-mapped), sharded checkpoints, variants, PyTorch pickles
//!   read without executing code, and loading into burn modules with shape checks;
//! - [`repo`]: local folders and hub repositories (through `hf-hub`, with its cache and offline mode);
//! - [`backend`]: the CPU (`flex`) and CUDA backends and device/dtype names;
//! - [`Error`]: one error type naming the file and key of every loading failure.

pub mod backend;
pub mod config;
mod error;
pub mod json;
pub mod memory;
pub mod repo;
#[doc(hidden)]
pub mod testing;
pub mod weights;

pub use error::{Error, Result};

/// Re-exported so that downstream crates use the same burn.
pub use burn;
