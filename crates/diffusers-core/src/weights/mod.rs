//! Checkpoint weights: safetensors (memory-mapped), sharded checkpoints, variants, and
//! PyTorch pickle files read without executing code.
//!
//! [`Weights`] is a read-only view of one component's checkpoint, possibly split over shards.
//! [`apply`](apply::load_into) copies tensors into a burn module one at a time, so that loading
//! never holds two full copies of the weights.

pub mod apply;
pub mod files;
pub mod pickle;
pub mod safetensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use serde::Deserialize;

pub use self::apply::{
    HookDecision, LayerWeights, LinearHook, LoadOptions, LoadReport, load_into, map_layer_weights,
    module_shapes, with_linear_hook,
};
pub use self::files::{WeightFormat, WeightsName, resolve_weight_files, variant_name};
pub use self::pickle::PickleFile;
pub use self::safetensors::SafetensorsFile;
use crate::{Error, Result};

/// Stored dtype and shape of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The stored dtype as safetensors names it (`F32`, `BF16`, ...).
    pub dtype: String,
    /// The stored shape.
    pub shape: Vec<usize>,
    /// The file holding it.
    pub file: PathBuf,
}

/// One opened weight file.
#[derive(Debug)]
pub enum WeightFile {
    /// A memory-mapped safetensors file.
    Safetensors(SafetensorsFile),
    /// A PyTorch zip checkpoint.
    Pickle(PickleFile),
}

impl WeightFile {
    /// Opens a file, choosing the reader by extension (`.safetensors`, else pickle).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "safetensors") {
            SafetensorsFile::open(path).map(WeightFile::Safetensors)
        } else {
            PickleFile::open(path).map(WeightFile::Pickle)
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            WeightFile::Safetensors(f) => f.path(),
            WeightFile::Pickle(f) => f.path(),
        }
    }

    fn keys(&self) -> Vec<String> {
        match self {
            WeightFile::Safetensors(f) => f.keys().map(str::to_string).collect(),
            WeightFile::Pickle(f) => f.keys().map(str::to_string).collect(),
        }
    }

    fn info(&self, key: &str) -> Option<&TensorInfo> {
        match self {
            WeightFile::Safetensors(f) => f.info(key),
            WeightFile::Pickle(f) => f.info(key),
        }
    }

    fn read(&self, key: &str) -> Result<TensorData> {
        match self {
            WeightFile::Safetensors(f) => f.read(key),
            WeightFile::Pickle(f) => f.read(key),
        }
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Reads a `*.safetensors.index.json` (or `.bin.index.json`) and returns the shard file names
/// in first-use order, with the key -> shard map.
pub fn read_shard_index(index: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let parsed: ShardIndex = crate::json::read(index)?;
    let mut shards: Vec<String> = Vec::new();
    for shard in parsed.weight_map.values() {
        if shard.contains("..") || shard.starts_with('/') {
            return Err(Error::InvalidConfig {
                path: index.to_path_buf(),
                reason: format!("shard name `{shard}` leaves the folder"),
            });
        }
        if !shards.contains(shard) {
            shards.push(shard.clone());
        }
    }
    Ok((shards, parsed.weight_map))
}

/// A component's checkpoint: one file, or shards named by an index.
#[derive(Debug)]
pub struct Weights {
    files: Vec<WeightFile>,
    keys: BTreeMap<String, usize>,
    origin: PathBuf,
}

impl Weights {
    /// Opens one weight file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_files(vec![WeightFile::open(path.as_ref())?], path.as_ref())
    }

    /// Opens a component folder's checkpoint as diffusers and transformers find it: safetensors
    /// before pickles, one file or an index with its shards, the given variant (falling back to
    /// the default files with a warning).
    pub fn from_folder(
        folder: impl AsRef<Path>,
        name: WeightsName<'_>,
        variant: Option<&str>,
    ) -> Result<Self> {
        let folder = folder.as_ref();
        if !folder.is_dir() {
            return Err(Error::FileNotFound {
                path: folder.to_path_buf(),
            });
        }
        crate::repo::Repo::open(&folder.to_string_lossy(), &Default::default())?
            .weights("", name, variant)
    }

    /// Opens several files (e.g. shards, or the list from [`resolve_weight_files`]).
    /// An index file (`*.index*.json`) in the list is read and its shards opened, checking that
    /// every key it names is present in its shard.
    pub fn open_all(paths: &[PathBuf]) -> Result<Self> {
        let origin = paths.first().cloned().unwrap_or_default();
        let mut files = Vec::new();
        for p in paths {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".json") {
                let dir = p.parent().unwrap_or(Path::new("."));
                let (shards, map) = read_shard_index(p)?;
                let opened: Vec<WeightFile> = shards
                    .iter()
                    .map(|s| WeightFile::open(dir.join(s)))
                    .collect::<Result<_>>()?;
                for (key, shard) in &map {
                    let pos = shards.iter().position(|s| s == shard).unwrap_or(0);
                    if opened[pos].info(key).is_none() {
                        return Err(Error::KeyNotInShard {
                            path: opened[pos].path().to_path_buf(),
                            key: key.clone(),
                        });
                    }
                }
                files.extend(opened);
            } else {
                files.push(WeightFile::open(p)?);
            }
        }
        Self::from_files(files, &origin)
    }

    fn from_files(files: Vec<WeightFile>, origin: &Path) -> Result<Self> {
        let mut keys = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for k in f.keys() {
                keys.insert(k, i);
            }
        }
        Ok(Self {
            files,
            keys,
            origin: origin.to_path_buf(),
        })
    }

    /// The first file (or the index), used to name the checkpoint in errors.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether the checkpoint has this tensor.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Stored dtype and shape of a tensor.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.keys.get(key).and_then(|&i| self.files[i].info(key))
    }

    /// Reads one tensor in its stored dtype.
    pub fn read(&self, key: &str) -> Result<TensorData> {
        match self.keys.get(key) {
            Some(&i) => self.files[i].read(key),
            None => Err(Error::MissingKeys {
                path: self.origin.clone(),
                keys: vec![key.to_string()],
            }),
        }
    }
}
