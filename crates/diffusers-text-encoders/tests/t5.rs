//! `T5EncoderModel` against transformers (`fixtures/text_encoders/t5*`): gated-GELU (T5 v1.1, as
//! Flux uses) and ReLU feed-forward, relative position buckets beyond the exact range.

use burn::tensor::{DType, Tensor};
use diffusers_core::backend::Cpu;
use diffusers_core::testing::{Fixture, Tol, assert_close, fixtures_dir};
use diffusers_text_encoders::t5::{T5EncoderModel, checkpoint_key};

const F32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

#[test]
fn t5_encoders_match_transformers() {
    let fx = Fixture::open("text_encoders/t5");
    let dev = Default::default();
    for case in ["t5_gated_gelu", "t5_relu"] {
        let m = T5EncoderModel::<Cpu>::from_folder(
            fixtures_dir().join("text_encoders").join(case),
            None,
            &dev,
        )
        .expect("load");
        let ids: Tensor<Cpu, 2> = fx.tensor(&format!("{case}.input_ids"), &dev, DType::F32);
        let out = m.forward(ids.int()).expect("forward");
        assert_close(
            out,
            &fx.values(&format!("{case}.last_hidden_state")),
            None,
            F32,
            case,
        );
    }
}

#[test]
fn bf16_runs_close_to_f32() {
    // Measured max abs error 3.4e-2 on outputs of magnitude ~3 (bf16 weights and activations,
    // RMS statistics in f32).
    let fx = Fixture::open("text_encoders/t5");
    let dev = Default::default();
    let m = T5EncoderModel::<Cpu>::from_folder(
        fixtures_dir().join("text_encoders/t5_gated_gelu"),
        Some(DType::BF16),
        &dev,
    )
    .expect("load");
    let ids: Tensor<Cpu, 2> = fx.tensor("t5_gated_gelu.input_ids", &dev, DType::F32);
    let out = m.forward(ids.int()).expect("forward");
    assert_eq!(out.dtype(), DType::BF16);
    assert_close(
        out,
        &fx.values("t5_gated_gelu.last_hidden_state"),
        None,
        Tol {
            atol: 8e-2,
            rtol: 4e-2,
        },
        "bf16",
    );
}

#[test]
fn checkpoint_keys_are_transformers_names() {
    assert_eq!(
        checkpoint_key("encoder.block.0.attention.self_attention.relative_attention_bias.weight"),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    );
    assert_eq!(
        checkpoint_key("encoder.block.3.feed_forward.dense_relu_dense.wi_0.weight"),
        "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"
    );
}
