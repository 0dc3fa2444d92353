//! `TCDScheduler` against diffusers (`fixtures/schedulers/tcd.*`): the strategic stochastic
//! step with the default gamma 0.3, img2img `strength`, v-prediction.

use crate::common;

use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol};
use diffusers_schedulers::from_config;

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
    let fx = Fixture::open("schedulers/tcd");
    let names: Vec<String> = fx
        .cases
        .as_object()
        .expect("cases")
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 2);
    for name in names {
        let config = fx.case(&name)["config"]
            .as_object()
            .expect("config")
            .clone();
        let mut s = from_config::<Cpu>(&config, Some("TCDScheduler"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        common::check_loop(&fx, &name, s.as_mut(), EXACT, STOCHASTIC, &mut |_| {});
    }
}
