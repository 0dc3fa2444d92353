//! # diffusers-quantization
//!
//! Weight quantization that stays packed in memory, in the layouts of the reference
//! implementations so files interoperate:
//!
//! - [`bnb_4bit`]: bitsandbytes' 4-bit NF4 and FP4 (blocks of 64 with an f32 absmax, optionally
//!   double-quantized: the absmax in 8 bits in blocks of 256), as `quantize_4bit` and
//!   `dequantize_4bit`;
//! - [`int8`]: weight-only int8 with one symmetric scale per output channel (torchao's
//!   `int8_weight_only` formula);
//! - [`fp8`]: weight-only float8 e4m3 with a per-tensor or per-row scale;
//! - [`gguf`]: GGML's block formats (Q4_0 ... Q8_0, the K-quants, F16, BF16) and the `.gguf`
//!   single-file reader.
//!
//! A [`packed::QuantizedTensor`] is one packed weight; `diffusers_nn::linear::Linear` computes
//! on it directly, dequantizing a few rows at a time inside its matmul.

pub mod bnb_4bit;
pub mod error;
pub mod fp8;
pub mod gguf;
pub mod int8;
pub mod loader;
pub mod packed;

pub use error::{Error, Result};
pub use loader::{BitsAndBytesConfig, QuantizationConfig, linear_hook};
pub use packed::{QuantMethod, QuantizedTensor};
