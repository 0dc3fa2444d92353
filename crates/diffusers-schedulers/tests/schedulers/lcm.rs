//! `LCMScheduler` against diffusers (`fixtures/schedulers/lcm.*`): the distilled schedule,
//! img2img `strength`, custom timesteps, v-prediction with clipping, noise between steps.

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::{Error, TimestepOptions, from_config};

const EXACT: Tol = Tol {
    atol: 0.0,
    rtol: 0.0,
};
const STOCHASTIC: Tol = Tol {
    atol: 2e-5,
    rtol: 1e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/lcm");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 3);
    for name in names {
        let config = fx.case(&name)["config"]
            .as_object()
            .expect("config")
            .clone();
        let mut s = from_config::<Cpu>(&config, Some("LCMScheduler"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        common::check_loop(&fx, &name, s.as_mut(), EXACT, STOCHASTIC, &mut |_| {});
    }
}

#[test]
fn invalid_schedules() {
    let map = |j: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).expect("json")
    };
    let mut s = from_config::<Cpu>(&map("{}"), Some("LCMScheduler")).expect("lcm");
    assert!(matches!(
        s.set_timesteps(&TimestepOptions::steps(51)),
        Err(Error::ConflictingOptions { .. })
    ));
    assert!(matches!(
        s.set_timesteps(&TimestepOptions::default()),
        Err(Error::ConflictingOptions { .. })
    ));
    let up = TimestepOptions {
        timesteps: Some(vec![100.0, 300.0]),
        ..Default::default()
    };
    assert!(matches!(
        s.set_timesteps(&up),
        Err(Error::ConflictingOptions { .. })
    ));
}
