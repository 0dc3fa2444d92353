//! `T5EncoderModel` against transformers (`fixtures/text_encoders/t5*`): gated-GELU (T5 v1.1, as
//! Flux uses) and ReLU feed-forward, relative position buckets beyond the exact range; UMT5
//! (`fixtures/text_encoders/umt5*`, Wan's encoder) with and without an attention mask.

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

/// UMT5 (Wan's text encoder): a relative attention bias in every block, with and without the
/// attention mask (Wan passes the tokenizer's mask). Same tolerance as T5 (1e-5; measured below
/// 1e-6 for T5).
#[test]
fn umt5_encoder_matches_transformers() {
    use diffusers_text_encoders::umt5::UMT5EncoderModel;
    let fx = Fixture::open("text_encoders/umt5");
    let dev = Default::default();
    let m =
        UMT5EncoderModel::<Cpu>::from_folder(fixtures_dir().join("text_encoders/umt5"), None, &dev)
            .expect("load");
    assert_eq!(m.encoder.block.len(), 3);
    assert!(
        m.encoder.block.iter().all(|b| b
            .attention
            .self_attention
            .relative_attention_bias
            .is_some())
    );
    let ids: Tensor<Cpu, 2> = fx.tensor("umt5.input_ids", &dev, DType::F32);
    let mask: Tensor<Cpu, 2> = fx.tensor("umt5.attention_mask", &dev, DType::F32);
    let plain = m.forward(ids.clone().int()).expect("forward");
    assert_close(
        plain,
        &fx.values("umt5.last_hidden_state"),
        None,
        F32,
        "umt5",
    );
    let masked = m
        .forward_masked(ids.clone().int(), Some(mask.int()))
        .expect("forward masked");
    assert_close(
        masked,
        &fx.values("umt5.last_hidden_state_masked"),
        None,
        F32,
        "umt5 masked",
    );
    // A mask of another shape is an error, not a panic.
    let short = Tensor::<Cpu, 2, burn::tensor::Int>::ones([2, 3], &dev);
    assert!(matches!(
        m.forward_masked(ids.int(), Some(short)),
        Err(diffusers_text_encoders::Error::InvalidInput { .. })
    ));
    // A config whose model_type is not a T5 encoder is refused.
    let text = std::fs::read_to_string(fixtures_dir().join("text_encoders/umt5/config.json"))
        .expect("config")
        .replace("\"umt5\"", "\"llama\"");
    let err = diffusers_core::config::parse_config::<diffusers_text_encoders::umt5::UMT5Config>(
        &text,
        std::path::Path::new("config.json"),
    )
    .expect_err("llama");
    assert!(err.to_string().contains("model_type `llama`"), "{err}");
}
