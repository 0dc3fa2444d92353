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
