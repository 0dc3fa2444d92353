//! # diffusers-adapters
//!
//! LoRA adapters, as diffusers' `loaders` package loads them:
//!
//! - [`lora_conversion_utils`]: the LoRA file layouts (diffusers/PEFT, kohya sd-scripts for SD and
//!   SDXL, kohya/ComfyUI and XLabs for Flux) read into one list of low-rank pairs named by
//!   diffusers' module paths.
//! - [`peft`]: adapters by name attached to any model's `Linear` layers (through the module
//!   paths the model's loader uses), mixed with weights, enabled and disabled, fused into the
//!   weights and unfused.

mod error;
pub mod lora_conversion_utils;
pub mod peft;

pub use error::{Error, Result};
