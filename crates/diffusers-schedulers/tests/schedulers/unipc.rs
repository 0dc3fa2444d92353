//! `UniPCMultistepScheduler` against diffusers (`fixtures/schedulers/unipc.*`): predictor and
//! corrector of orders 1-3, bh1/bh2, x0 and noise parameterisations, karras/exponential sigmas,
//! and Wan's flow configuration (flow sigmas, flow prediction, dynamic shift, terminal stretch).

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::{Error, TimestepOptions, from_config};

const SCHEDULE: Tol = Tol {
    atol: 1e-6,
    rtol: 2e-6,
};
/// Corrector and predictor mix up to three model outputs with coefficients from a small f32
/// linear solve; values here reach magnitude ~15.
const STEP: Tol = Tol {
    atol: 5e-6,
    rtol: 2e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/unipc");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 8);
    for name in names {
        let config = fx.case(&name)["config"]
            .as_object()
            .expect("config")
            .clone();
        let mut s = from_config::<Cpu>(&config, Some("UniPCMultistepScheduler"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, STEP, &mut |_| {});
    }
}

#[test]
fn invalid_configurations() {
    let map = |j: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).expect("json")
    };
    let build = |j: &str| from_config::<Cpu>(&map(j), Some("UniPCMultistepScheduler"));
    assert!(matches!(
        build(r#"{"solver_order": 0}"#),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        build(r#"{"solver_type": "bh3"}"#),
        Err(Error::InvalidConfig { .. })
    ));
    let mut s = build(r#"{"use_flow_sigmas": true, "use_dynamic_shifting": true}"#).expect("flow");
    assert!(matches!(
        s.set_timesteps(&TimestepOptions::steps(4)),
        Err(Error::MissingMu { .. })
    ));
    let mut s = build("{}").expect("default");
    let sig = TimestepOptions {
        sigmas: Some(vec![1.0, 0.5]),
        ..Default::default()
    };
    assert!(matches!(
        s.set_timesteps(&sig),
        Err(Error::CustomScheduleUnsupported { .. })
    ));
}
