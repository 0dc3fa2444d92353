//! The error type of diffusers-schedulers.

/// Invalid scheduler configurations and calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `_class_name` names no scheduler this crate has.
    #[error("unknown scheduler class `{0}`")]
    UnknownClass(String),
    /// A config value is invalid.
    #[error("{class}: invalid config: {reason}")]
    InvalidConfig {
        /// The scheduler class.
        class: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Zero inference steps.
    #[error("{class}: `num_inference_steps` must be at least 1")]
    ZeroSteps {
        /// The scheduler class.
        class: &'static str,
    },
    /// More inference steps than training timesteps.
    #[error("{class}: {steps} inference steps exceed the {train} training timesteps")]
    TooManySteps {
        /// The scheduler class.
        class: &'static str,
        /// Requested steps.
        steps: usize,
        /// `num_train_timesteps`.
        train: usize,
    },
    /// Options that cannot be combined.
    #[error("{class}: {reason}")]
    ConflictingOptions {
        /// The scheduler class.
        class: &'static str,
        /// Which options conflict.
        reason: String,
    },
    /// Dynamic shifting needs `mu`.
    #[error("{class}: `mu` must be passed when `use_dynamic_shifting` is true")]
    MissingMu {
        /// The scheduler class.
        class: &'static str,
    },
    /// The scheduler does not accept custom timesteps or sigmas.
    #[error("{class} does not accept custom {what}")]
    CustomScheduleUnsupported {
        /// The scheduler class.
        class: &'static str,
        /// `timesteps` or `sigmas`.
        what: &'static str,
    },
    /// `step` was called before `set_timesteps`, past the end, or with an unknown timestep.
    #[error("{class}: {reason}")]
    InvalidStep {
        /// The scheduler class.
        class: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The number of generators differs from the batch size.
    #[error("{generators} generators were passed for a batch of {batch}")]
    GeneratorCount {
        /// Generators given.
        generators: usize,
        /// Batch size.
        batch: usize,
    },
    /// A noise source could not give the draw a stochastic step asked for.
    #[error("noise source: {reason}")]
    Noise {
        /// What was asked for and what the source had.
        reason: String,
    },
    /// A config could not be read.
    #[error(transparent)]
    Core(#[from] diffusers_core::Error),
    /// A config could not be parsed.
    #[error("scheduler config: {0}")]
    Json(#[from] serde_json::Error),
}

/// The result type of diffusers-schedulers.
pub type Result<T, E = Error> = std::result::Result<T, E>;
