//! The error type of diffusers-pipelines.

/// What can go wrong building or running a pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call argument is invalid (size, shapes, step count).
    #[error("{pipeline}: {reason}")]
    InvalidArgument {
        /// The pipeline class.
        pipeline: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `model_index.json` names a pipeline or component this crate cannot build.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The repository or file.
        path: String,
        /// What is unsupported.
        reason: String,
    },
    /// A request field the pipeline has no use for (a video knob on an image pipeline, an
    /// image-to-image strength without an image, ...).
    #[error("{pipeline}: `{field}` is not used by this pipeline")]
    UnusedArgument {
        /// The pipeline class.
        pipeline: &'static str,
        /// The request field.
        field: &'static str,
    },
    /// A component `model_index.json` names is not in the repository.
    #[error("{path}: component `{component}` is listed in model_index.json but missing")]
    MissingComponent {
        /// The component folder.
        path: String,
        /// The component name.
        component: String,
    },
    /// Reading or writing an image file failed.
    #[error("{path}: {reason}")]
    Image {
        /// The image file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Exporting a video (MP4, GIF or PNG frames) failed, or its frames are invalid; nothing
    /// was written.
    #[error("{path}: {reason}")]
    Export {
        /// The file or folder being written.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A single-file checkpoint (`transformer_file`, a `.gguf`) that cannot be loaded: a key the
    /// conversion does not know, parameters no tensor provides, a shape or type that does not fit.
    #[error("{}: {reason}", path.display())]
    SingleFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, naming the keys.
        reason: String,
    },
    /// A quantization option or a quantized checkpoint that cannot be used.
    #[error("quantization: {0}")]
    Quantization(String),
    /// A LoRA file or adapter operation that cannot be done (a layout no loader knows, layers
    /// that match no layer, an unknown adapter name, fusing into quantized weights, ...).
    #[error("lora: {0}")]
    Lora(String),
    /// An offload mode that cannot be used (an unknown mode, a group of zero blocks, a pipeline
    /// without weights to offload).
    #[error("offload: {0}")]
    Offload(String),
    /// Reading files failed.
    #[error(transparent)]
    Core(#[from] diffusers_core::Error),
    /// A scheduler failed.
    #[error(transparent)]
    Scheduler(#[from] diffusers_schedulers::Error),
    /// A transformer failed.
    #[error(transparent)]
    Transformer(#[from] diffusers_transformers::Error),
    /// A text encoder or tokenizer failed.
    #[error(transparent)]
    TextEncoder(#[from] diffusers_text_encoders::Error),
    /// A UNet failed.
    #[error(transparent)]
    Unet(#[from] diffusers_unets::Error),
    /// A VAE failed.
    #[error(transparent)]
    Vae(#[from] diffusers_vae::Error),
}

/// The result type of diffusers-pipelines.
pub type Result<T, E = Error> = std::result::Result<T, E>;
