//! The error type of diffusers-unets.

/// Invalid configs, inputs and checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config value the model cannot be built with.
    #[error("{model}: invalid config: {reason}")]
    InvalidConfig {
        /// The model class.
        model: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An input the model cannot take.
    #[error("{model}: {reason}")]
    InvalidInput {
        /// The model class.
        model: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Loading configs or weights failed.
    #[error(transparent)]
    Core(#[from] diffusers_core::Error),
}

/// The result type of diffusers-unets.
pub type Result<T, E = Error> = std::result::Result<T, E>;
