//! # diffusers-schedulers
//!
//! Diffusion schedulers numerically equal to diffusers' (tested against the oracle's fixtures),
//! and a random generator that reproduces `torch.Generator("cpu").manual_seed(n)`.
//!
//! Schedulers never touch weights: they map model outputs and samples to the next sample.
//! Every scheduler implements [`Scheduler`], so pipelines can swap them at run time.

mod error;
pub mod flow_match_euler_discrete;
pub mod random;
pub mod scheduler;
pub mod sigmas;

pub use error::{Error, Result};
pub use flow_match_euler_discrete::{
    FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler, TimeShiftType, calculate_shift,
};
pub use random::{Generators, TorchGenerator, randn_tensor};
pub use scheduler::{
    NoiseSource, RecordedNoise, Scheduler, TimestepOptions, index_for_timestep, linspace,
    scale_model_input_nd, step_nd,
};
