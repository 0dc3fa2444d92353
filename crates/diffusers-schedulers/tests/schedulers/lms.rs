//! `LMSDiscreteScheduler` against diffusers (`fixtures/schedulers/lms.*`): order-4 linear
//! multistep with coefficients integrated as scipy does, karras/exponential sigmas, v-prediction.

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::from_config;

const SCHEDULE: Tol = Tol {
    atol: 1e-6,
    rtol: 2e-6,
};
const STEP: Tol = Tol {
    atol: 5e-6,
    rtol: 1e-5,
};

#[test]
fn loops_match_diffusers() {
    let fx = Fixture::open("schedulers/lms");
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
        let mut s = from_config::<Cpu>(&config, Some("LMSDiscreteScheduler"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        common::check_loop(&fx, &name, s.as_mut(), SCHEDULE, STEP, &mut |_| {});
    }
}
