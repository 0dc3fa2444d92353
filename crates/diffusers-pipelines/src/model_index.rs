//! `model_index.json`: the pipeline class and its components.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// One component entry: `["diffusers", "AutoencoderKL"]`, or `[null, null]` for an optional
/// component the repository leaves out (a safety checker, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The library (`diffusers`, `transformers`).
    pub library: String,
    /// The class.
    pub class: String,
}

/// A parsed `model_index.json`.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    /// `_class_name`: the pipeline class.
    pub class_name: String,
    /// Components by name; `None` for `[null, null]`.
    pub components: BTreeMap<String, Option<Component>>,
    /// The pipeline's own config values (`force_zeros_for_empty_prompt`,
    /// `requires_aesthetics_score`, ...): the keys that are not components.
    pub config: serde_json::Map<String, Value>,
}

impl ModelIndex {
    /// Reads `model_index.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json: serde_json::Map<String, Value> = diffusers_core::json::read(path)?;
        let class_name = json
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Unsupported {
                path: path.display().to_string(),
                reason: "no `_class_name`".into(),
            })?
            .to_string();
        let mut components = BTreeMap::new();
        let mut config = serde_json::Map::new();
        for (k, v) in json.iter().filter(|(k, _)| !k.starts_with('_')) {
            let entry = match v.as_array().map(Vec::as_slice) {
                Some([Value::Null, Value::Null]) => {
                    tracing::info!("{}: component `{k}` is null, skipped", path.display());
                    None
                }
                Some([Value::String(lib), Value::String(cls)]) => Some(Component {
                    library: lib.clone(),
                    class: cls.clone(),
                }),
                _ => {
                    config.insert(k.clone(), v.clone());
                    continue;
                }
            };
            components.insert(k.clone(), entry);
        }
        Ok(Self {
            class_name,
            components,
            config,
        })
    }

    /// A boolean pipeline config value (`force_zeros_for_empty_prompt`), `default` if absent.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        self.config
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    /// The component's class, if present and not null.
    pub fn class_of(&self, name: &str) -> Option<&str> {
        self.components
            .get(name)
            .and_then(|c| c.as_ref())
            .map(|c| c.class.as_str())
    }
}
