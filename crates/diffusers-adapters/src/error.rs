//! The crate's error type.

use std::path::PathBuf;

/// At most this many keys are named in an error message (then "and N more").
const SHOWN: usize = 8;

/// `a, b, c and 5 more`.
pub(crate) fn list_keys(keys: &[String]) -> String {
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    s
}

/// Errors of reading LoRA files and attaching adapters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error(transparent)]
    Core(#[from] diffusers_core::Error),
    /// The keys follow no LoRA layout this crate reads (for the model family asked).
    #[error("{}: not a LoRA file this loader knows for {family} (keys: {})", path.display(), list_keys(keys))]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The model family it was read for.
        family: String,
        /// Some of its keys.
        keys: Vec<String>,
    },
    /// Keys of a known layout that convert to nothing (diffusers drops some of these with a
    /// warning; here they are an error unless partial loading is asked for).
    #[error("{}: {} LoRA keys match no layer: {}", path.display(), keys.len(), list_keys(keys))]
    UnmatchedKeys {
        /// The file.
        path: PathBuf,
        /// The keys.
        keys: Vec<String>,
    },
    /// DoRA magnitude vectors (`dora_scale`), which this loader does not apply.
    #[error("{}: DoRA adapters (`dora_scale`) are not supported: {}", path.display(), list_keys(keys))]
    Dora {
        /// The file.
        path: PathBuf,
        /// The `dora_scale` keys.
        keys: Vec<String>,
    },
    /// A LoRA pair whose shapes do not fit each other or the layer.
    #[error("{}: `{module}`: {reason}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The layer (diffusers' module name).
        module: String,
        /// What does not fit.
        reason: String,
    },
    /// An argument that cannot be used (an unknown adapter name, fusing into a quantized
    /// layer, ...).
    #[error("{0}")]
    Invalid(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
