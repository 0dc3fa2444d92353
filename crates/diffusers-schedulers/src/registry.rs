//! Building schedulers by class name from a `scheduler_config.json`, and diffusers'
//! compatibility rules for swapping one for another (`X.from_config(pipe.scheduler.config)`).

use burn::prelude::*;
use serde_json::{Map, Value};

use crate::{
    DDIMScheduler, Error, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler, Result, Scheduler,
};

/// Scheduler classes this crate implements.
pub const SCHEDULERS: &[&str] = &[
    "DDIMScheduler",
    "DDPMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "PNDMScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "TCDScheduler",
    "UniPCMultistepScheduler",
    "FlowMatchEulerDiscreteScheduler",
];

/// diffusers' `KarrasDiffusionSchedulers`: the DDPM-family classes that accept each other's
/// configs (`_compatibles`).
pub const KARRAS_DIFFUSION_SCHEDULERS: &[&str] = &[
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
];

/// Whether diffusers lists `to` among `from`'s compatible schedulers.
pub fn is_compatible(from: &str, to: &str) -> bool {
    from == to
        || (KARRAS_DIFFUSION_SCHEDULERS.contains(&from)
            && KARRAS_DIFFUSION_SCHEDULERS.contains(&to))
}

/// Builds a scheduler from a config map: the class named by `class`, or else by `_class_name`.
/// Keys the class does not know are kept and ignored, as diffusers' `from_config` does.
pub fn from_config<B: Backend + 'static>(
    config: &Map<String, Value>,
    class: Option<&str>,
) -> Result<Box<dyn Scheduler<B>>> {
    let name = class
        .map(str::to_string)
        .or_else(|| {
            config
                .get("_class_name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or_else(|| Error::UnknownClass("<no _class_name>".into()))?;
    if let Some(src) = config.get("_class_name").and_then(Value::as_str)
        && !is_compatible(src, &name)
    {
        tracing::warn!(
            "{name} is not among {src}'s compatible schedulers; building it from the config anyway"
        );
    }
    let value = Value::Object(config.clone());
    Ok(match name.as_str() {
        "DDIMScheduler" => Box::new(DDIMScheduler::new(serde_json::from_value(value)?)?),
        "EulerDiscreteScheduler" => {
            Box::new(EulerDiscreteScheduler::new(serde_json::from_value(value)?)?)
        }
        "EulerAncestralDiscreteScheduler" => Box::new(EulerAncestralDiscreteScheduler::new(
            serde_json::from_value(value)?,
        )?),
        "DPMSolverMultistepScheduler" => Box::new(crate::DPMSolverMultistepScheduler::<B>::new(
            serde_json::from_value(value)?,
        )?),
        "DDPMScheduler" => Box::new(crate::DDPMScheduler::new(serde_json::from_value(value)?)?),
        "HeunDiscreteScheduler" => Box::new(crate::HeunDiscreteScheduler::<B>::new(
            serde_json::from_value(value)?,
        )?),
        "LCMScheduler" => Box::new(crate::LCMScheduler::new(serde_json::from_value(value)?)?),
        "UniPCMultistepScheduler" => Box::new(crate::UniPCMultistepScheduler::<B>::new(
            serde_json::from_value(value)?,
        )?),
        "TCDScheduler" => Box::new(crate::TCDScheduler::new(serde_json::from_value(value)?)?),
        "LMSDiscreteScheduler" => Box::new(crate::LMSDiscreteScheduler::<B>::new(
            serde_json::from_value(value)?,
        )?),
        "KDPM2DiscreteScheduler" => Box::new(crate::KDPM2DiscreteScheduler::<B>::new(
            serde_json::from_value(value)?,
        )?),
        "KDPM2AncestralDiscreteScheduler" => Box::new(
            crate::KDPM2AncestralDiscreteScheduler::<B>::new(serde_json::from_value(value)?)?,
        ),
        "DEISMultistepScheduler" => Box::new(crate::DEISMultistepScheduler::<B>::new(
            serde_json::from_value(value)?,
        )?),
        "DPMSolverSinglestepScheduler" => Box::new(crate::DPMSolverSinglestepScheduler::<B>::new(
            serde_json::from_value(value)?,
        )?),
        "PNDMScheduler" => Box::new(crate::PNDMScheduler::<B>::new(serde_json::from_value(
            value,
        )?)?),
        "FlowMatchEulerDiscreteScheduler" => Box::new(FlowMatchEulerDiscreteScheduler::new(
            serde_json::from_value(value)?,
        )?),
        other => return Err(Error::UnknownClass(other.to_string())),
    })
}

/// Reads a `scheduler_config.json` and builds the scheduler it names.
pub fn from_json<B: Backend + 'static>(json: &str) -> Result<Box<dyn Scheduler<B>>> {
    let map: Map<String, Value> = serde_json::from_str(json)?;
    from_config(&map, None)
}
