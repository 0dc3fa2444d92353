//! Checkpoint weights: safetensors (memory-mapped), sharded checkpoints, variants, and
//! PyTorch pickle files read without executing code.
//!
//! [`Weights`] is a read-only view of one component's checkpoint, possibly split over shards.
//! [`apply`](apply::load_into) copies tensors into a burn module one at a time, so that loading
//! never holds two full copies of the weights.

pub mod apply;
pub mod files;
pub mod offload;
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
    /// Tensors held in memory (converted from another layout, see [`Weights::from_tensors`]).
    Memory(MemoryFile),
}

/// Tensors held in memory under checkpoint keys, read like a file's (e.g. a single-file
/// checkpoint converted to diffusers' keys).
#[derive(Debug)]
pub struct MemoryFile {
    origin: PathBuf,
    tensors: BTreeMap<String, (TensorInfo, TensorData)>,
}

impl MemoryFile {
    /// Holds `tensors`; `origin` names the file they came from (in errors and in each
    /// [`TensorInfo::file`]).
    pub fn new(origin: PathBuf, tensors: BTreeMap<String, TensorData>) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(k, d)| {
                let info = TensorInfo {
                    dtype: dtype_name(d.dtype),
                    shape: d.shape.to_vec(),
                    file: origin.clone(),
                };
                (k, (info, d))
            })
            .collect();
        Self { origin, tensors }
    }
}

/// The safetensors name of a dtype (`F32`, `BF16`, ...).
fn dtype_name(d: burn::tensor::DType) -> String {
    use burn::tensor::DType;
    match d {
        DType::F64 => "F64",
        DType::F32 | DType::Flex32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U64 => "U64",
        DType::U32 => "U32",
        DType::U16 => "U16",
        DType::U8 => "U8",
        DType::Bool(_) => "BOOL",
        _ => "OTHER",
    }
    .to_string()
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
            WeightFile::Memory(f) => &f.origin,
        }
    }

    fn keys(&self) -> Vec<String> {
        match self {
            WeightFile::Safetensors(f) => f.keys().map(str::to_string).collect(),
            WeightFile::Pickle(f) => f.keys().map(str::to_string).collect(),
            WeightFile::Memory(f) => f.tensors.keys().cloned().collect(),
        }
    }

    fn info(&self, key: &str) -> Option<&TensorInfo> {
        match self {
            WeightFile::Safetensors(f) => f.info(key),
            WeightFile::Pickle(f) => f.info(key),
            WeightFile::Memory(f) => f.tensors.get(key).map(|(i, _)| i),
        }
    }

    fn read(&self, key: &str) -> Result<TensorData> {
        match self {
            WeightFile::Safetensors(f) => f.read(key),
            WeightFile::Pickle(f) => f.read(key),
            WeightFile::Memory(f) => match f.tensors.get(key) {
                Some((_, d)) => Ok(d.clone()),
                None => Err(Error::MissingKeys {
                    path: f.origin.clone(),
                    keys: vec![key.to_string()],
                }),
            },
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

    /// Tensors already in memory under checkpoint keys (e.g. a single-file checkpoint converted
    /// to diffusers' keys), read by [`load_into`] as a file's; `origin` names them in errors.
    pub fn from_tensors(origin: impl Into<PathBuf>, tensors: BTreeMap<String, TensorData>) -> Self {
        let origin = origin.into();
        let file = WeightFile::Memory(MemoryFile::new(origin.clone(), tensors));
        let keys = file.keys().into_iter().map(|k| (k, 0)).collect();
        Self {
            files: vec![file],
            keys,
            origin,
        }
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

    /// The safetensors file holding `key` (`None` for tensors held in memory or in pickles).
    pub(crate) fn safetensors_file_of(&self, key: &str) -> Option<&Path> {
        match self.keys.get(key).map(|&i| &self.files[i]) {
            Some(WeightFile::Safetensors(f)) => Some(f.path()),
            _ => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// In-memory tensors answer `keys`, `info` and `read` as a file's do, with the origin in
    /// each info and in the missing-key error.
    #[test]
    fn from_tensors_reads_like_a_file() {
        let tensors = BTreeMap::from([
            (
                "b.bias".to_string(),
                TensorData::new(vec![1.0f32, 2.0], [2]),
            ),
            (
                "a.weight".to_string(),
                TensorData::new(vec![1.0f32; 6], [2, 3]).convert_dtype(burn::tensor::DType::BF16),
            ),
        ]);
        let w = Weights::from_tensors("model.gguf", tensors);
        assert_eq!(w.keys().collect::<Vec<_>>(), ["a.weight", "b.bias"]);
        let info = w.info("a.weight").expect("info");
        assert_eq!(
            (
                info.dtype.as_str(),
                info.shape.as_slice(),
                info.file.as_path()
            ),
            ("BF16", &[2, 3][..], Path::new("model.gguf"))
        );
        assert_eq!(
            w.read("b.bias")
                .expect("read")
                .to_vec::<f32>()
                .expect("f32"),
            [1.0, 2.0]
        );
        let err = w.read("c").expect_err("missing").to_string();
        assert!(err.contains("model.gguf") && err.contains('c'), "{err}");
    }
}
