//! DDIM, Euler and Euler-ancestral against diffusers over SD-style configs
//! (`fixtures/schedulers/discrete.*`): timesteps, sigmas, `scale_model_input` and every step.

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::{Error, TimestepOptions, from_config};

/// Schedules: timesteps are exact where they are integers; sigmas and fractional timesteps go
/// through f32 `log`/`linspace` whose last bit may differ from numpy's SIMD versions.
const SCHEDULE: Tol = Tol {
    atol: 1e-6,
    rtol: 2e-6,
};
/// Steps: f32 arithmetic in a different order of scalar folding (e.g. `x / s` vs `x * (1/s)`).
const STEP: Tol = Tol {
    atol: 2e-6,
    rtol: 1e-5,
};
/// Stochastic steps draw noise from the torch-compatible generator (see tests/random.rs).
const STOCHASTIC: Tol = Tol {
    atol: 2e-5,
    rtol: 1e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/discrete");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 13);
    for name in names {
        let c = fx.case(&name).clone();
        let config = c["config"].as_object().expect("config").clone();
        let class = c["class"].as_str().expect("class");
        let mut s =
            from_config::<Cpu>(&config, Some(class)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tol = if c["gen_seed"].is_null() {
            STEP
        } else {
            STOCHASTIC
        };
        if name == "ddim_eta" {
            // eta is a step argument in diffusers; here it is the scheduler's field.
            let mut d = diffusers_schedulers::DDIMScheduler::new(
                serde_json::from_value(serde_json::Value::Object(config)).expect("config"),
            )
            .expect("ddim");
            d.eta = 0.7;
            common::check_loop(&fx, &name, &mut d, SCHEDULE, tol, &mut |_| {});
        } else {
            common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, tol, &mut |_| {});
        }
    }
}

#[test]
fn invalid_configurations() {
    let map = |j: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).expect("json")
    };
    assert!(matches!(
        from_config::<Cpu>(&map(r#"{"_class_name": "NoSuchScheduler"}"#), None),
        Err(Error::UnknownClass(_))
    ));
    assert!(matches!(
        from_config::<Cpu>(&map("{}"), None),
        Err(Error::UnknownClass(_))
    ));
    assert!(matches!(
        from_config::<Cpu>(
            &map(r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#),
            Some("EulerDiscreteScheduler")
        ),
        Err(Error::ConflictingOptions { .. })
    ));
    assert!(matches!(
        from_config::<Cpu>(&map(r#"{"beta_schedule": "cubic"}"#), Some("DDIMScheduler")),
        Err(Error::Core(diffusers_core::Error::JsonValue { .. }))
    ));
    let mut s = from_config::<Cpu>(&map("{}"), Some("DDIMScheduler")).expect("ddim");
    assert!(matches!(
        s.set_timesteps(&TimestepOptions::steps(0)),
        Err(Error::ZeroSteps { .. })
    ));
    assert!(matches!(
        s.set_timesteps(&TimestepOptions::steps(1001)),
        Err(Error::TooManySteps {
            steps: 1001,
            train: 1000,
            ..
        })
    ));
    let custom = TimestepOptions {
        timesteps: Some(vec![999.0, 500.0]),
        ..Default::default()
    };
    assert!(matches!(
        s.set_timesteps(&custom),
        Err(Error::CustomScheduleUnsupported { .. })
    ));
    let mut e = from_config::<Cpu>(&map("{}"), Some("EulerDiscreteScheduler")).expect("euler");
    let both = TimestepOptions {
        timesteps: Some(vec![999.0]),
        sigmas: Some(vec![1.0, 0.0]),
        ..Default::default()
    };
    assert!(matches!(
        e.set_timesteps(&both),
        Err(Error::ConflictingOptions { .. })
    ));
}

#[test]
fn from_config_swaps_compatible_schedulers() {
    // `EulerDiscreteScheduler.from_config(ddim.config)`: the DDIM config builds an Euler scheduler.
    let fx = Fixture::open("schedulers/discrete");
    let ddim = fx.case("ddim_sd")["config"]
        .as_object()
        .expect("config")
        .clone();
    let d = from_config::<Cpu>(&ddim, Some("DDIMScheduler")).expect("ddim");
    let euler = from_config::<Cpu>(&d.config(), Some("EulerDiscreteScheduler"))
        .expect("euler from ddim config");
    assert_eq!(euler.class_name(), "EulerDiscreteScheduler");
    assert!(diffusers_schedulers::is_compatible(
        "DDIMScheduler",
        "EulerDiscreteScheduler"
    ));
    assert!(!diffusers_schedulers::is_compatible(
        "FlowMatchEulerDiscreteScheduler",
        "DDIMScheduler"
    ));
}
