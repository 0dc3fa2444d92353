//! CLIP text encoders against transformers (`fixtures/text_encoders/*`): the last hidden state,
//! every layer's hidden state (for `clip_skip`), and the pooled/projected output, for
//! quick-GELU (SD 1.x) and GELU with projection and legacy pooling (OpenCLIP/SDXL) configs.

use burn::tensor::{DType, Int, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_text_encoders::Error;
use diffusers_text_encoders::clip::{
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTextOutput,
};

const F32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

fn ids(fx: &Fixture, case: &str) -> Tensor<Cpu, 2, Int> {
    let t: Tensor<Cpu, 2> = fx.tensor(
        &format!("{case}.input_ids"),
        &Default::default(),
        DType::F32,
    );
    t.int()
}

fn check(fx: &Fixture, case: &str, out: CLIPTextOutput<Cpu>, pooled_key: &str) {
    assert_close(
        out.last_hidden_state,
        &fx.values(&format!("{case}.last_hidden_state")),
        None,
        F32,
        &format!("{case}.last_hidden_state"),
    );
    assert_eq!(out.hidden_states.len(), 3);
    for (i, h) in out.hidden_states.into_iter().enumerate() {
        assert_close(
            h,
            &fx.values(&format!("{case}.hidden_states_{i}")),
            None,
            F32,
            &format!("{case}.hidden_states_{i}"),
        );
    }
    assert_close(
        out.pooled,
        &fx.values(&format!("{case}.{pooled_key}")),
        None,
        F32,
        &format!("{case}.{pooled_key}"),
    );
}

#[test]
fn clip_text_model_matches_transformers() {
    let fx = Fixture::open("text_encoders/clip");
    let dev = Default::default();
    let m = CLIPTextModel::<Cpu>::from_folder(
        fixtures_dir().join("text_encoders/clip_quick_gelu"),
        None,
        &dev,
    )
    .expect("load");
    check(
        &fx,
        "clip_quick_gelu",
        m.forward(ids(&fx, "clip_quick_gelu")).expect("forward"),
        "pooler_output",
    );
}

#[test]
fn transformers_4_key_layout_loads() {
    // Real SD repositories were saved by transformers 4.x, with keys under `text_model.`.
    let fx = Fixture::open("text_encoders/clip");
    let dev = Default::default();
    let folder = fixtures_dir().join("text_encoders/clip_quick_gelu_text_model_prefix");
    let m = CLIPTextModel::<Cpu>::from_folder(folder, None, &dev).expect("load");
    check(
        &fx,
        "clip_quick_gelu",
        m.forward(ids(&fx, "clip_quick_gelu")).expect("forward"),
        "pooler_output",
    );
}

#[test]
fn clip_with_projection_matches_transformers() {
    let fx = Fixture::open("text_encoders/clip");
    let dev = Default::default();
    let m = CLIPTextModelWithProjection::<Cpu>::from_folder(
        fixtures_dir().join("text_encoders/clip_gelu_projection"),
        None,
        &dev,
    )
    .expect("load");
    check(
        &fx,
        "clip_gelu_projection",
        m.forward(ids(&fx, "clip_gelu_projection"))
            .expect("forward"),
        "text_embeds",
    );
}

#[test]
fn bf16_runs_close_to_f32() {
    // bf16 weights and activations (norms in f32): measured max abs error 2.4e-2 on outputs of
    // magnitude ~3.
    let fx = Fixture::open("text_encoders/clip");
    let dev = Default::default();
    let m = CLIPTextModel::<Cpu>::from_folder(
        fixtures_dir().join("text_encoders/clip_quick_gelu"),
        Some(DType::BF16),
        &dev,
    )
    .expect("load");
    let out = m.forward(ids(&fx, "clip_quick_gelu")).expect("forward");
    assert_eq!(out.last_hidden_state.dtype(), DType::BF16);
    assert_close(
        out.last_hidden_state,
        &fx.values("clip_quick_gelu.last_hidden_state"),
        None,
        Tol {
            atol: 5e-2,
            rtol: 3e-2,
        },
        "bf16",
    );
}

#[test]
fn invalid_inputs_and_configs() {
    let dev = Default::default();
    let m = CLIPTextModel::<Cpu>::from_folder(
        fixtures_dir().join("text_encoders/clip_quick_gelu"),
        None,
        &dev,
    )
    .expect("load");
    let too_long = Tensor::<Cpu, 2, Int>::zeros([1, 17], &dev);
    assert!(matches!(
        m.forward(too_long),
        Err(Error::InvalidInput { .. })
    ));
    let bad: CLIPTextConfig =
        serde_json::from_str(r#"{"hidden_size": 30, "num_attention_heads": 4}"#).expect("json");
    assert!(matches!(
        CLIPTextModel::<Cpu>::new(&bad, &dev),
        Err(Error::InvalidConfig { .. })
    ));
    let act: CLIPTextConfig = serde_json::from_str(r#"{"hidden_act": "relu"}"#).expect("json");
    assert!(matches!(
        CLIPTextModel::<Cpu>::new(&act, &dev),
        Err(Error::InvalidConfig { .. })
    ));
    let missing =
        CLIPTextModel::<Cpu>::from_folder(fixtures_dir().join("text_encoders/none"), None, &dev);
    assert!(matches!(
        missing,
        Err(Error::Core(diffusers_core::Error::FileNotFound { .. }))
    ));
}
