//! Prompt tokenization through the `tokenizers` crate, with padding and truncation as diffusers'
//! pipelines ask for them (`padding="max_length"`, `truncation=True`).
//!
//! A tokenizer is read from `tokenizer.json` or, for CLIP, from the `vocab.json` + `merges.txt`
//! that FLUX.1 and Stable Diffusion repositories ship (built as transformers' CLIP tokenizer:
//! NFC, whitespace collapse, lowercase, CLIP's split regex, byte-level BPE with `</w>`,
//! `<|startoftext|>`/`<|endoftext|>` around the tokens).

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::{Error, Result};

const MODEL: &str = "tokenizer";
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

fn err(reason: impl std::fmt::Display) -> Error {
    Error::InvalidInput {
        model: MODEL,
        reason: reason.to_string(),
    }
}

/// A prompt tokenizer with its padding token.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    pad_token: String,
    model_max_length: Option<usize>,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PromptTokenizer(pad={})", self.pad_token)
    }
}

/// Token ids for a batch of prompts, all `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompts {
    /// `[batch][max_length]` ids.
    pub ids: Vec<Vec<u32>>,
    /// `[batch][max_length]` attention mask (1 for tokens, 0 for padding), as transformers'
    /// `return_attention_mask=True`.
    pub attention_mask: Vec<Vec<u32>>,
    /// For each prompt, the text cut off by truncation (empty when nothing was cut).
    pub truncated: Vec<String>,
}

impl PromptTokenizer {
    /// Reads a tokenizer folder: `tokenizer.json` when present, else CLIP's `vocab.json` and
    /// `merges.txt`. The pad token is CLIP's `<|endoftext|>` unless `pad_token` names another.
    pub fn from_folder(folder: impl AsRef<Path>, pad_token: Option<&str>) -> Result<Self> {
        let folder = folder.as_ref();
        let json = folder.join("tokenizer.json");
        let tokenizer = if json.exists() {
            Tokenizer::from_file(&json).map_err(|e| err(format!("{}: {e}", json.display())))?
        } else if folder.join("spiece.model").exists() {
            crate::sentencepiece::t5_tokenizer_from_folder(folder)?
        } else {
            Self::clip_from_vocab(&folder.join("vocab.json"), &folder.join("merges.txt"))?
        };
        let pad_token = pad_token.unwrap_or("<|endoftext|>").to_string();
        let pad_id = tokenizer.token_to_id(&pad_token).ok_or_else(|| {
            err(format!(
                "{}: pad token `{pad_token}` is not in the vocabulary",
                folder.display()
            ))
        })?;
        Ok(Self {
            tokenizer,
            pad_id,
            pad_token,
            model_max_length: None,
        })
    }

    fn clip_from_vocab(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        for p in [vocab, merges] {
            if !p.exists() {
                return Err(Error::Core(diffusers_core::Error::FileNotFound {
                    path: p.to_path_buf(),
                }));
            }
        }
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .end_of_word_suffix("</w>".into())
            .unk_token("<|endoftext|>".into())
            .build()
            .map_err(|e| err(format!("{}: {e}", vocab.display())))?;
        let mut t = Tokenizer::new(bpe);
        let id = |t: &Tokenizer, s: &str| {
            t.token_to_id(s)
                .ok_or_else(|| err(format!("{}: no `{s}` token", vocab.display())))
        };
        let (bos, eos) = (id(&t, "<|startoftext|>")?, id(&t, "<|endoftext|>")?);
        let replace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(err)?;
        t.with_normalizer(Some(NormSeq::new(vec![
            NFC.into(),
            replace.into(),
            Lowercase.into(),
        ])));
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(err)?;
        t.with_pre_tokenizer(Some(PreSeq::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        t.with_post_processor(Some(
            RobertaProcessing::new(
                ("<|endoftext|>".into(), eos),
                ("<|startoftext|>".into(), bos),
            )
            .trim_offsets(false)
            .add_prefix_space(false),
        ));
        t.with_decoder(Some(ByteLevel::default()));
        Ok(t)
    }

    /// Reads a tokenizer folder as transformers' `AutoTokenizer.from_pretrained` does for the
    /// pipelines: the pad token and `model_max_length` come from `tokenizer_config.json` when it
    /// has them (`<|endoftext|>` and no limit otherwise).
    pub fn from_pretrained(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        let cfg_path = folder.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            diffusers_core::json::read(&cfg_path)?
        } else {
            serde_json::Value::Null
        };
        // Older files write special tokens as `{"content": "<pad>", ...}`.
        let pad = match &cfg["pad_token"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => {
                o.get("content").and_then(|c| c.as_str()).map(String::from)
            }
            _ => None,
        };
        let mut t = Self::from_folder(folder, pad.as_deref())?;
        // transformers' "no limit" is int(1e30); anything that large is no limit.
        t.model_max_length = cfg["model_max_length"]
            .as_u64()
            .filter(|n| *n < 1 << 40)
            .map(|n| n as usize);
        Ok(t)
    }

    /// `model_max_length` from `tokenizer_config.json` ([`PromptTokenizer::from_pretrained`]).
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Encodes one text without padding or truncation (special tokens included), as
    /// transformers' `tokenizer(text)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut t = self.tokenizer.clone();
        t.with_truncation(None).map_err(err)?;
        t.with_padding(None);
        Ok(t.encode(text, true).map_err(err)?.get_ids().to_vec())
    }

    /// Encodes prompts padded and truncated to `max_length` (special tokens included), and
    /// reports what truncation removed, with the warning diffusers logs.
    pub fn encode_padded(&self, prompts: &[&str], max_length: usize) -> Result<TokenizedPrompts> {
        let mut t = self.tokenizer.clone();
        t.with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            direction: TruncationDirection::Right,
            stride: 0,
        }))
        .map_err(err)?;
        t.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        let mut untruncated = self.tokenizer.clone();
        untruncated.with_truncation(None).map_err(err)?;
        untruncated.with_padding(None);
        let mut ids = Vec::with_capacity(prompts.len());
        let mut attention_mask = Vec::with_capacity(prompts.len());
        let mut truncated = Vec::with_capacity(prompts.len());
        for p in prompts {
            let enc = t.encode(*p, true).map_err(err)?;
            let full = untruncated.encode(*p, true).map_err(err)?;
            let removed = if full.get_ids().len() > max_length {
                // The tokens between the kept ones and the end-of-text token.
                let kept = max_length.saturating_sub(1);
                let cut = &full.get_ids()[kept..full.get_ids().len().saturating_sub(1)];
                let text = untruncated.decode(cut, true).map_err(err)?;
                tracing::warn!(
                    "The following part of your input was truncated because the text encoder can only handle sequences up to {max_length} tokens: {text}"
                );
                text
            } else {
                String::new()
            };
            ids.push(enc.get_ids().to_vec());
            attention_mask.push(enc.get_attention_mask().to_vec());
            truncated.push(removed);
        }
        Ok(TokenizedPrompts {
            ids,
            attention_mask,
            truncated,
        })
    }
}
