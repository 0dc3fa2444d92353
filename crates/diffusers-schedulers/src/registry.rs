//! Building schedulers by class name from a `scheduler_config.json`, and diffusers'
//! compatibility rules for swapping one for another (`X.from_config(pipe.scheduler.config)`).

use std::path::Path;

use burn::prelude::*;
use serde::de::DeserializeOwned;
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
/// Non-finite values are the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, as
/// [`diffusers_core::json`] reads Python's words (and as [`Scheduler::config`] writes them).
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
    let origin = std::path::PathBuf::from(format!("{name} config"));
    Ok(match name.as_str() {
        "DDIMScheduler" => Box::new(DDIMScheduler::new(conf(config, &origin)?)?),
        "EulerDiscreteScheduler" => Box::new(EulerDiscreteScheduler::new(conf(config, &origin)?)?),
        "EulerAncestralDiscreteScheduler" => Box::new(EulerAncestralDiscreteScheduler::new(conf(
            config, &origin,
        )?)?),
        "DPMSolverMultistepScheduler" => Box::new(crate::DPMSolverMultistepScheduler::<B>::new(
            conf(config, &origin)?,
        )?),
        "DDPMScheduler" => Box::new(crate::DDPMScheduler::new(conf(config, &origin)?)?),
        "HeunDiscreteScheduler" => Box::new(crate::HeunDiscreteScheduler::<B>::new(conf(
            config, &origin,
        )?)?),
        "LCMScheduler" => Box::new(crate::LCMScheduler::new(conf(config, &origin)?)?),
        "UniPCMultistepScheduler" => Box::new(crate::UniPCMultistepScheduler::<B>::new(conf(
            config, &origin,
        )?)?),
        "TCDScheduler" => Box::new(crate::TCDScheduler::new(conf(config, &origin)?)?),
        "LMSDiscreteScheduler" => Box::new(crate::LMSDiscreteScheduler::<B>::new(conf(
            config, &origin,
        )?)?),
        "KDPM2DiscreteScheduler" => Box::new(crate::KDPM2DiscreteScheduler::<B>::new(conf(
            config, &origin,
        )?)?),
        "KDPM2AncestralDiscreteScheduler" => Box::new(
            crate::KDPM2AncestralDiscreteScheduler::<B>::new(conf(config, &origin)?)?,
        ),
        "DEISMultistepScheduler" => Box::new(crate::DEISMultistepScheduler::<B>::new(conf(
            config, &origin,
        )?)?),
        "DPMSolverSinglestepScheduler" => Box::new(crate::DPMSolverSinglestepScheduler::<B>::new(
            conf(config, &origin)?,
        )?),
        "PNDMScheduler" => Box::new(crate::PNDMScheduler::<B>::new(conf(config, &origin)?)?),
        "FlowMatchEulerDiscreteScheduler" => Box::new(FlowMatchEulerDiscreteScheduler::new(conf(
            config, &origin,
        )?)?),
        other => return Err(Error::UnknownClass(other.to_string())),
    })
}

/// A scheduler config struct from `scheduler_config.json` text, through
/// [`diffusers_core::json`]; errors name the class's config and the key.
pub(crate) fn parse_config<T: DeserializeOwned>(json: &str, class: &str) -> Result<T> {
    let origin = format!("{class} config");
    Ok(diffusers_core::json::from_str(json, Path::new(&origin))?)
}

fn conf<T: DeserializeOwned>(config: &Map<String, Value>, origin: &Path) -> Result<T> {
    Ok(diffusers_core::json::from_value(
        Value::Object(config.clone()),
        origin,
    )?)
}

/// Reads `scheduler_config.json` text (Python's `NaN`/`Infinity`/`-Infinity` included) and
/// builds the scheduler it names.
pub fn from_json<B: Backend + 'static>(json: &str) -> Result<Box<dyn Scheduler<B>>> {
    let map: Map<String, Value> =
        diffusers_core::json::from_str(json, Path::new("scheduler config"))?;
    from_config(&map, None)
}
