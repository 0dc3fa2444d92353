//! The error type of diffusers-core.

use std::path::PathBuf;

/// Everything that can go wrong while reading configs, weights and repositories.
///
/// Every loading error names the file it concerns, and the tensor key where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file the caller asked for does not exist.
    #[error("{path}: file not found")]
    FileNotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// An I/O error while reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, index, model_index) could not be parsed.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file being parsed.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON value does not fit the field it is read into (a string for a number, say).
    #[error("{path}: {}{source}", if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
    JsonValue {
        /// The file being read.
        path: PathBuf,
        /// The key (`a.b[1]`), where serde tracked it.
        key: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A value Python wrote as `NaN`, `Infinity` or `-Infinity` where the config needs a
    /// finite number.
    #[error("{path}: `{key}` is {value}, and this config needs a finite number there")]
    NonFinite {
        /// The file being read.
        path: PathBuf,
        /// The key (or keys) holding it.
        key: String,
        /// `NaN`, `Infinity` or `-Infinity`.
        value: String,
    },
    /// A config value is outside what the model accepts.
    #[error("{path}: invalid config: {reason}")]
    InvalidConfig {
        /// The config file (or `<memory>`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is shorter than its safetensors header says it should be.
    #[error("{path}: truncated safetensors file: {reason}")]
    Truncated {
        /// The weight file.
        path: PathBuf,
        /// Which part is cut short.
        reason: String,
    },
    /// The 8-byte header length points past the end of the file.
    #[error(
        "{path}: safetensors header length {header_len} bytes is beyond the file size of {file_len} bytes"
    )]
    HeaderBeyondFile {
        /// The weight file.
        path: PathBuf,
        /// The header length the file declares.
        header_len: u64,
        /// The file's actual length.
        file_len: u64,
    },
    /// The header is larger than the safety limit.
    #[error("{path}: safetensors header of {header_len} bytes exceeds the limit of {limit} bytes")]
    HeaderTooLarge {
        /// The weight file.
        path: PathBuf,
        /// The header length the file declares.
        header_len: u64,
        /// The limit.
        limit: u64,
    },
    /// The safetensors header is not valid (bad JSON, bad offsets, ...).
    #[error("{path}: invalid safetensors file: {reason}")]
    InvalidSafetensors {
        /// The weight file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor is stored in a dtype that cannot be converted to a float compute dtype.
    #[error(
        "{path}: tensor `{key}` has dtype {dtype}, which is not supported (expected F32, F16, BF16, F64, or U8/I8 for packed weights)"
    )]
    UnsupportedDtype {
        /// The weight file.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// The stored dtype.
        dtype: String,
    },
    /// A tensor's shape does not match the module's parameter.
    #[error("{path}: tensor `{key}` has shape {found:?}, but the module expects {expected:?}")]
    ShapeMismatch {
        /// The weight file.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// The module's shape.
        expected: Vec<usize>,
        /// The stored shape.
        found: Vec<usize>,
    },
    /// The module has parameters that the checkpoint does not provide.
    #[error("{path}: missing {} tensor(s): {}", keys.len(), keys.join(", "))]
    MissingKeys {
        /// The weight file(s) searched.
        path: PathBuf,
        /// The missing tensor names.
        keys: Vec<String>,
    },
    /// The checkpoint has tensors that the module has no parameter for.
    #[error("{path}: unexpected {} tensor(s): {}", keys.len(), keys.join(", "))]
    UnexpectedKeys {
        /// The weight file(s).
        path: PathBuf,
        /// The tensor names no parameter takes.
        keys: Vec<String>,
    },
    /// A tensor that a sharded index names is absent from its shard.
    #[error("{path}: tensor `{key}` is listed in the index but not present in the shard")]
    KeyNotInShard {
        /// The shard file.
        path: PathBuf,
        /// The tensor name.
        key: String,
    },
    /// A PyTorch pickle checkpoint holds something other than tensors and plain containers.
    #[error("{path}: refusing to read pickle: {reason}")]
    UnsafePickle {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A PyTorch pickle checkpoint could not be read.
    #[error("{path}: cannot read PyTorch checkpoint: {reason}")]
    Pickle {
        /// The checkpoint file.
        path: PathBuf,
        /// The reader's error.
        reason: String,
    },
    /// No weight file for a component was found.
    #[error("{dir}: no weights named `{name}` (looked for {candidates}){}",
        if variants.is_empty() { String::new() } else {
            format!("; the folder has the variant(s) {}: load one of them (diffusers' `variant=`, the CLI's --variant)", variants.join(", "))
        })]
    NoWeights {
        /// The component folder.
        dir: String,
        /// The base weights name (`diffusion_pytorch_model`, `model`).
        name: String,
        /// The file names that were looked for.
        candidates: String,
        /// The variants whose files the folder has (`fp16` for `name.fp16.safetensors`).
        variants: Vec<String>,
    },
    /// A repository id is neither a local folder nor a valid hub id.
    #[error("`{id}` is neither an existing folder nor a hub repository id (`org/name`)")]
    InvalidRepoId {
        /// What the caller passed.
        id: String,
    },
    /// Offline mode is on and the file is not in the local hub cache.
    #[error(
        "{repo}: `{file}` is not in the local cache at {cache} and offline mode is on (HF_HUB_OFFLINE)"
    )]
    NotInOfflineCache {
        /// The hub repository id.
        repo: String,
        /// The file within the repository.
        file: String,
        /// The cache folder searched.
        cache: PathBuf,
    },
    /// The hub client failed.
    #[error("{repo}@{revision}: `{file}`: {reason}")]
    Hub {
        /// The hub repository id.
        repo: String,
        /// The revision asked for (`main` unless set).
        revision: String,
        /// The file within the repository, or `*` for a listing.
        file: String,
        /// The client's error.
        reason: String,
    },
    /// The hub refused the request for want of access: a gated repository whose terms were not
    /// accepted, a private one, or a missing or wrong token.
    #[error(
        "{repo}: `{file}`: {reason}. The repository is gated or private: accept its terms on the hub with your account, then set HF_TOKEN to an access token (or log in with `hf auth login`)"
    )]
    HubAccess {
        /// The hub repository id.
        repo: String,
        /// The file within the repository, or `*` for a listing.
        file: String,
        /// The client's error.
        reason: String,
    },
    /// A device string could not be parsed or names a backend not compiled in.
    #[error("unknown device `{0}` (expected `cpu`, `cuda` or `cuda:N`)")]
    UnknownDevice(String),
    /// The device names a backend this build does not include.
    #[error("device `{0}` needs the `cuda` feature, which this build does not include")]
    BackendNotCompiled(String),
    /// A dtype string could not be parsed.
    #[error("unknown dtype `{0}` (expected f32, f16 or bf16)")]
    UnknownDtype(String),
    /// A `Linear` weight hook (quantization) refused a weight.
    #[error("{}: `{key}`: {message}", path.display())]
    LinearHook {
        /// The checkpoint.
        path: PathBuf,
        /// The weight's key.
        key: String,
        /// What the hook reported.
        message: String,
    },
}

/// The result type of diffusers-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` (a missing file becomes [`Error::FileNotFound`]).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::FileNotFound { path }
        } else {
            Error::Io { path, source }
        }
    }
}
