//! CLIP tokenization against transformers (`fixtures/text_encoders/clip_tokenizer*`): ids with
//! `padding="max_length"` and truncation, from `tokenizer.json` and from `vocab.json` +
//! `merges.txt` (what FLUX.1 and SD repositories ship).

use diffusers_core::testing::fixtures_dir;
use diffusers_text_encoders::tokenizer::PromptTokenizer;

fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures_dir().join("text_encoders/clip_tokenizer.json"))
        .expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn check(tok: &PromptTokenizer) {
    let c = cases();
    let max = c["max_length"].as_u64().expect("max") as usize;
    let mut n = 0;
    for case in c["cases"].as_object().expect("cases").values() {
        let prompt = case["prompt"].as_str().expect("prompt");
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
        let out = tok.encode_padded(&[prompt], max).expect("encode");
        assert_eq!(out.ids[0], expected, "{prompt:?}");
        let was_truncated = case["untruncated_len"].as_u64().expect("len") as usize > max;
        assert_eq!(
            !out.truncated[0].is_empty(),
            was_truncated,
            "{prompt:?}: {:?}",
            out.truncated[0]
        );
        n += 1;
    }
    assert_eq!(n, 5);
}

#[test]
fn tokenizer_json_matches_transformers() {
    let folder = fixtures_dir().join("text_encoders/clip_tokenizer");
    check(&PromptTokenizer::from_folder(&folder, None).expect("tokenizer.json"));
}

#[test]
fn vocab_and_merges_match_transformers() {
    // Without tokenizer.json, as in FLUX.1/SD repositories: copy only vocab.json and merges.txt.
    let src = fixtures_dir().join("text_encoders/clip_tokenizer");
    let dir = std::env::temp_dir().join(format!("clip-vocab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy");
    }
    let tok = PromptTokenizer::from_folder(&dir, None).expect("vocab + merges");
    check(&tok);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_files_and_pad_token_are_errors() {
    let dir = std::env::temp_dir().join(format!("clip-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    assert!(PromptTokenizer::from_folder(&dir, None).is_err());
    std::fs::remove_dir_all(&dir).ok();
    let folder = fixtures_dir().join("text_encoders/clip_tokenizer");
    assert!(PromptTokenizer::from_folder(&folder, Some("<pad>")).is_err());
}

// T5 (`fixtures/text_encoders/t5_tokenizer*`): a tiny SentencePiece unigram model with an NFKC
// charsmap, read from `spiece.model` alone and from the tokenizer.json transformers saves; ids as
// FluxPipeline's tokenizer_2 gets them (padding="max_length" with `<pad>`, truncation).

fn t5_cases() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures_dir().join("text_encoders/t5_tokenizer.json"))
        .expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn check_t5(tok: &PromptTokenizer) {
    let c = t5_cases();
    let max = c["max_length"].as_u64().expect("max") as usize;
    let mut n = 0;
    let mut truncated = 0;
    for case in c["cases"].as_object().expect("cases").values() {
        let prompt = case["prompt"].as_str().expect("prompt");
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
        let out = tok.encode_padded(&[prompt], max).expect("encode");
        assert_eq!(out.ids[0], expected, "{prompt:?}");
        let was_truncated = case["untruncated_len"].as_u64().expect("len") as usize > max;
        assert_eq!(
            !out.truncated[0].is_empty(),
            was_truncated,
            "{prompt:?}: {:?}",
            out.truncated[0]
        );
        n += 1;
        truncated += usize::from(was_truncated);
    }
    assert_eq!(n, 10);
    assert!(truncated >= 1);
    assert_eq!(
        tok.token_to_id(c["pad_token"].as_str().expect("pad")),
        Some(0)
    );
}

#[test]
fn t5_spiece_model_matches_transformers() {
    let folder = fixtures_dir().join("text_encoders/t5_tokenizer");
    assert!(!folder.join("tokenizer.json").exists());
    let tok = PromptTokenizer::from_folder(&folder, Some("<pad>")).expect("spiece.model");
    check_t5(&tok);
    // The sentinels follow the pieces in reverse order, as transformers appends them.
    let vocab = t5_cases()["vocab_size"].as_u64().expect("vocab") as u32;
    assert_eq!(tok.token_to_id("<extra_id_0>"), Some(vocab - 1));
    assert_eq!(tok.token_to_id("<extra_id_99>"), Some(vocab - 100));
}

#[test]
fn t5_spiece_model_alone_matches_transformers() {
    // Only spiece.model, no tokenizer_config.json: T5's defaults (100 sentinels).
    let src = fixtures_dir().join("text_encoders/t5_tokenizer");
    let dir = std::env::temp_dir().join(format!("t5-spiece-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    std::fs::copy(src.join("spiece.model"), dir.join("spiece.model")).expect("copy");
    let tok = PromptTokenizer::from_folder(&dir, Some("<pad>"));
    std::fs::remove_dir_all(&dir).ok();
    check_t5(&tok.expect("spiece.model"));
}

#[test]
fn t5_tokenizer_json_matches_transformers() {
    let folder = fixtures_dir().join("text_encoders/t5_tokenizer_json");
    let tok = PromptTokenizer::from_folder(&folder, Some("<pad>")).expect("tokenizer.json");
    check_t5(&tok);
}

/// A protobuf length-delimited field.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut varint = |mut v: u64| loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    };
    varint(u64::from(number) << 3 | 2);
    varint(bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

#[test]
fn malformed_spiece_model_is_an_error() {
    use diffusers_text_encoders::Error;
    use diffusers_text_encoders::sentencepiece::{ModelProto, t5_tokenizer};

    let real = std::fs::read(fixtures_dir().join("text_encoders/t5_tokenizer/spiece.model"))
        .expect("fixture");
    let model = ModelProto::parse(&real).expect("valid");
    assert!(model.pieces.len() > 3);
    assert_eq!(model.pieces[1].piece, "</s>");
    assert!(!model.normalizer_spec.precompiled_charsmap.is_empty());
    assert_eq!(model.trainer_spec.unk_id, 2);
    assert_eq!(model.trainer_spec.bos_id, -1);

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("truncated in the middle", real[..real.len() / 2].to_vec()),
        ("truncated by one byte", real[..real.len() - 1].to_vec()),
        ("truncated varint", vec![0x0a, 0x80]),
        ("length past the end", vec![0x0a, 0x05, 0x0a]),
        ("field number 0", vec![0x02, 0x00]),
        ("group wire type", vec![0x0b]),
        (
            "overlong varint",
            vec![
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
        ),
        (
            "piece that is not UTF-8",
            field(1, &field(1, &[0xff, 0xfe])),
        ),
        ("score with the wrong wire type", field(1, &[0x15, 0x00])),
    ];
    for (what, bytes) in &bad {
        match ModelProto::parse(bytes) {
            Err(Error::InvalidInput { reason, .. }) => {
                assert!(reason.contains("SentencePiece"), "{what}: {reason}")
            }
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }

    // A well-formed protobuf whose charsmap is corrupt: an error when building, no panic later.
    let mut m = model.clone();
    m.normalizer_spec.precompiled_charsmap = vec![4, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f];
    assert!(matches!(
        t5_tokenizer(&m, 100, "</s>", "<unk>", "<pad>"),
        Err(Error::InvalidInput { .. })
    ));
    m.normalizer_spec.precompiled_charsmap = vec![8, 0, 0, 0, 1];
    assert!(t5_tokenizer(&m, 100, "</s>", "<unk>", "<pad>").is_err());
    // Too few pieces for T5's unk id 2.
    let mut m = model.clone();
    m.pieces.truncate(2);
    assert!(t5_tokenizer(&m, 100, "</s>", "<unk>", "<pad>").is_err());

    // Through from_folder: a truncated spiece.model is the crate's error.
    let dir = std::env::temp_dir().join(format!("t5-bad-spiece-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    std::fs::write(dir.join("spiece.model"), &real[..real.len() / 2]).expect("write");
    let r = PromptTokenizer::from_folder(&dir, Some("<pad>"));
    std::fs::remove_dir_all(&dir).ok();
    match r {
        Err(Error::InvalidInput { reason, .. }) => assert!(reason.contains("spiece.model")),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}
