//! # diffusers-schedulers
//!
//! Diffusion schedulers numerically equal to diffusers' (tested against the oracle's fixtures),
//! and a random generator that reproduces `torch.Generator("cpu").manual_seed(n)`.
//!
//! Schedulers never touch weights: they map model outputs and samples to the next sample.
//! Every scheduler implements [`Scheduler`], so pipelines can swap them at run time.

pub mod ddim;
pub mod ddpm;
pub mod deis_multistep;
pub mod discrete;
pub mod dpmsolver_multistep;
pub mod dpmsolver_singlestep;
mod error;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod flow_match_euler_discrete;
pub mod heun_discrete;
pub mod k_dpm_2_ancestral_discrete;
pub mod k_dpm_2_discrete;
pub mod lcm;
pub mod lms_discrete;
pub mod pndm;
pub mod random;
pub mod registry;
pub mod scheduler;
pub mod sigmas;
pub mod tcd;
pub mod unipc_multistep;

pub use ddim::{DDIMConfig, DDIMScheduler};
pub use ddpm::{DDPMConfig, DDPMScheduler};
pub use deis_multistep::{DEISMultistepConfig, DEISMultistepScheduler};
pub use discrete::{BetaConfig, BetaSchedule, PredictionType, TimestepSpacing};
pub use dpmsolver_multistep::{
    AlgorithmType, DPMSolverMultistepConfig, DPMSolverMultistepScheduler, SolverType,
};
pub use dpmsolver_singlestep::{DPMSolverSinglestepConfig, DPMSolverSinglestepScheduler};
pub use error::{Error, Result};
pub use euler_ancestral_discrete::{EulerAncestralDiscreteConfig, EulerAncestralDiscreteScheduler};
pub use euler_discrete::{EulerDiscreteConfig, EulerDiscreteScheduler};
pub use flow_match_euler_discrete::{
    FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler, TimeShiftType, calculate_shift,
};
pub use heun_discrete::{HeunDiscreteConfig, HeunDiscreteScheduler};
pub use k_dpm_2_ancestral_discrete::KDPM2AncestralDiscreteScheduler;
pub use k_dpm_2_discrete::{KDPM2Config, KDPM2DiscreteScheduler};
pub use lcm::{LCMConfig, LCMScheduler};
pub use lms_discrete::{LMSDiscreteConfig, LMSDiscreteScheduler};
pub use pndm::{PNDMConfig, PNDMScheduler};
pub use random::{Generators, HalfType, TorchGenerator, randn_tensor};
pub use registry::{from_config, from_json, is_compatible};
pub use scheduler::{
    NoiseSource, RecordedNoise, Scheduler, TimestepOptions, index_for_timestep, linspace,
    scale_model_input_nd, step_nd,
};
pub use tcd::{TCDConfig, TCDScheduler};
pub use unipc_multistep::{UniPCMultistepConfig, UniPCMultistepScheduler};
