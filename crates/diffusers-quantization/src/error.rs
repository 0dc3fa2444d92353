//! The crate's error type.

use std::path::PathBuf;

/// Errors of quantizing, dequantizing and reading quantized checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a checkpoint failed.
    #[error(transparent)]
    Core(#[from] diffusers_core::Error),
    /// A `.gguf` file that cannot be read as written (bad magic, unknown tensor type, truncated
    /// blocks, ...); the message names the tensor or field.
    #[error("{}: {reason}", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or field.
        reason: String,
    },
    /// A tensor or option a quantizer cannot take (wrong dtype, a size that is not a whole
    /// number of blocks, an unknown method name, ...).
    #[error("{0}")]
    Invalid(String),
    /// A pre-quantized checkpoint lacks a tensor its quantization needs.
    #[error("{}: `{key}` is quantized ({method}) but `{missing}` is missing", path.display())]
    MissingQuantState {
        /// The checkpoint.
        path: PathBuf,
        /// The weight's key.
        key: String,
        /// The quantization method.
        method: String,
        /// The missing key.
        missing: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
