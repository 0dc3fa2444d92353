//! `DPMSolverMultistepScheduler` against diffusers (`fixtures/schedulers/dpmsolver_multistep.*`):
//! orders 1-3, midpoint and Heun, DPM-Solver++ and its SDE form, karras/exponential/Lu/flow
//! sigmas, `final_sigmas_type`, `lower_order_final`, `euler_at_final`, clipped lambdas.

mod common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::{Error, from_config};

const SCHEDULE: Tol = Tol {
    atol: 1e-6,
    rtol: 2e-6,
};
/// Multistep updates combine up to three model outputs with coefficients from f32 `log`/`exp`.
const STEP: Tol = Tol {
    atol: 5e-6,
    rtol: 1e-5,
};
const STOCHASTIC: Tol = Tol {
    atol: 2e-5,
    rtol: 1e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/dpmsolver_multistep");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 14);
    for name in names {
        let c = fx.case(&name).clone();
        let config = c["config"].as_object().expect("config").clone();
        let mut s = from_config::<Cpu>(&config, Some("DPMSolverMultistepScheduler"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tol = if c["gen_seed"].is_null() {
            STEP
        } else {
            STOCHASTIC
        };
        common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, tol, &mut |_| {});
    }
}

#[test]
fn invalid_configurations() {
    let map = |j: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).expect("json")
    };
    let build = |j: &str| from_config::<Cpu>(&map(j), Some("DPMSolverMultistepScheduler"));
    assert!(matches!(
        build(r#"{"solver_order": 4}"#),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        build(r#"{"algorithm_type": "dpmsolver"}"#),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        build(r#"{"algorithm_type": "unknown"}"#),
        Err(Error::Json(_))
    ));
    assert!(matches!(
        build(r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#),
        Err(Error::ConflictingOptions { .. })
    ));
    let mut s = build("{}").expect("default");
    let mu = diffusers_schedulers::TimestepOptions {
        num_inference_steps: Some(4),
        mu: Some(0.5),
        ..Default::default()
    };
    assert!(matches!(
        s.set_timesteps(&mu),
        Err(Error::ConflictingOptions { .. })
    ));
    let custom = diffusers_schedulers::TimestepOptions {
        sigmas: Some(vec![1.0, 0.0]),
        ..Default::default()
    };
    assert!(matches!(
        s.set_timesteps(&custom),
        Err(Error::CustomScheduleUnsupported { .. })
    ));
}
