//! Configs that mirror diffusers' and transformers' `config.json` files key for key.
//!
//! A config struct derives `Deserialize` with the Python constructor's defaults and ends with a
//! flattened [`ConfigMeta`], which reads `_class_name`/`_diffusers_version` (never required) and
//! keeps every unknown key. [`load_config`] logs the unknown keys once.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The bookkeeping keys every diffusers config may carry, plus the keys the struct does not know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigMeta {
    /// `_class_name`: the diffusers class that wrote the config.
    #[serde(
        rename = "_class_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub class_name: Option<String>,
    /// `_diffusers_version`: the diffusers version that wrote it.
    #[serde(
        rename = "_diffusers_version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub diffusers_version: Option<String>,
    /// `_name_or_path`, when present.
    #[serde(
        rename = "_name_or_path",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub name_or_path: Option<String>,
    /// Keys the config struct does not know, kept verbatim (and written back on save).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Keys every transformers `config.json` may carry that say nothing about inference.
pub const TRANSFORMERS_BOOKKEEPING: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "initializer_range",
    "initializer_factor",
    "use_cache",
    "tie_word_embeddings",
];

/// A config struct with a flattened [`ConfigMeta`].
pub trait Config: DeserializeOwned + Serialize {
    /// The bookkeeping keys and unknown keys.
    fn meta(&self) -> &ConfigMeta;

    /// Keys the Python class has but inference does not use (training options, other libraries'
    /// bookkeeping): kept like unknown keys, logged at debug level instead of warned about.
    fn unused_keys() -> &'static [&'static str] {
        &[]
    }

    /// Checks values the type system cannot (e.g. divisibility); `Ok` by default.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Parses a config from JSON text (through [`crate::json`], so Python's `NaN`/`Infinity` are
/// read); `origin` names the source in errors and logs.
pub fn parse_config<C: Config>(text: &str, origin: &Path) -> Result<C> {
    let config: C = crate::json::from_str(text, origin)?;
    let unknown: Vec<&str> = config
        .meta()
        .extra
        .keys()
        .filter(|k| !k.starts_with('_'))
        .map(String::as_str)
        .filter(|k| {
            let known = C::unused_keys().contains(k) || TRANSFORMERS_BOOKKEEPING.contains(k);
            if known {
                tracing::debug!("{}: `{k}` not used (kept)", origin.display());
            }
            !known
        })
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(
            "{}: keys not used by {}: {} (kept)",
            origin.display(),
            std::any::type_name::<C>()
                .rsplit("::")
                .next()
                .unwrap_or_default(),
            unknown.join(", ")
        );
    }
    config.validate().map_err(|reason| Error::InvalidConfig {
        path: origin.to_path_buf(),
        reason,
    })?;
    Ok(config)
}

/// Reads and parses a `config.json`.
pub fn load_config<C: Config>(path: impl AsRef<Path>) -> Result<C> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_config(&text, path)
}
