//! `PNDMScheduler` against diffusers (`fixtures/schedulers/pndm.*`): PLMS only (Stable
//! Diffusion's config), the Runge-Kutta warm-up, v-prediction, linspace and trailing spacing.

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::{Error, TimestepOptions, from_config};

const EXACT: Tol = Tol {
    atol: 0.0,
    rtol: 0.0,
};
const STEP: Tol = Tol {
    atol: 5e-6,
    rtol: 1e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/pndm");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 4);
    for name in names {
        let config = fx.case(&name)["config"]
            .as_object()
            .expect("config")
            .clone();
        let mut s = from_config::<Cpu>(&config, Some("PNDMScheduler"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        common::check_loop(&fx, &name, s.as_mut(), EXACT, STEP, &mut |_| {});
    }
}

#[test]
fn invalid_calls() {
    let map = |j: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).expect("json")
    };
    let mut s = from_config::<Cpu>(&map("{}"), Some("PNDMScheduler")).expect("pndm");
    assert!(matches!(
        s.set_timesteps(&TimestepOptions::steps(3)),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        s.set_timesteps(&TimestepOptions::steps(0)),
        Err(Error::ZeroSteps { .. })
    ));
    let x = burn::tensor::Tensor::<Cpu, 2>::zeros([1, 4], &Default::default());
    assert!(matches!(
        s.step(x.clone(), 999.0, x, None),
        Err(Error::InvalidStep { .. })
    ));
}
