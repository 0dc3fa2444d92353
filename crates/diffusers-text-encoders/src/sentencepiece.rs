//! SentencePiece models (`spiece.model`) and the T5 tokenizer transformers builds from them.
//!
//! FLUX.1 and T5 repositories ship T5's tokenizer as `spiece.model`, a SentencePiece
//! `ModelProto` protobuf, sometimes without `tokenizer.json`. [`ModelProto::parse`] reads the
//! fields a tokenizer needs with a small protobuf decoder (varints, fixed 32/64-bit and
//! length-delimited fields; unknown fields are skipped, malformed or truncated input is an
//! [`Error`], never a panic). [`t5_tokenizer`] then builds the `tokenizers::Tokenizer` that
//! transformers 5's `T5Tokenizer.from_pretrained` builds from the same file
//! (`SentencePieceExtractor` + `T5Converter.convert_from_spm` + `T5Tokenizer.__init__`):
//!
//! - vocabulary: the pieces with their scores, then `<extra_id_{N-1}>` ... `<extra_id_0>`
//!   (score 0); Unigram with unk id 2 (T5's `<unk>`, as transformers hard-codes it), no byte
//!   fallback;
//! - normalizer: `Precompiled(normalizer_spec.precompiled_charsmap)` when the model has one;
//! - pre-tokenizer: `WhitespaceSplit`, then `Metaspace("▁", prepend always, split)`;
//! - post-processor: `$A </s>` (pairs `$A </s> $B </s>`); decoder `Metaspace`;
//! - added tokens: control pieces (special) and user-defined pieces (not special), `</s>`,
//!   `<unk>`, `<pad>` and the `<extra_id_N>` sentinels, all matched on the raw text.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::{Error, Result};

const MODEL: &str = "sentencepiece";

/// T5's unknown-token id: transformers' `T5Tokenizer` builds its Unigram model with `unk_id=2`
/// whatever the SentencePiece trainer spec says.
pub const T5_UNK_ID: usize = 2;

/// The number of `<extra_id_N>` sentinel tokens T5 tokenizers add by default.
pub const T5_EXTRA_IDS: usize = 100;

/// A bound on `extra_ids`, so that a corrupt config cannot ask for a huge vocabulary.
const MAX_EXTRA_IDS: usize = 1 << 20;

fn err(reason: impl std::fmt::Display) -> Error {
    Error::InvalidInput {
        model: MODEL,
        reason: reason.to_string(),
    }
}

/// The type of a SentencePiece piece (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// A normal piece (`NORMAL = 1`, the default).
    Normal,
    /// The unknown piece (`UNKNOWN = 2`).
    Unknown,
    /// A control piece such as `</s>` or `<pad>` (`CONTROL = 3`).
    Control,
    /// A user-defined piece, always emitted whole (`USER_DEFINED = 4`).
    UserDefined,
    /// An unused piece (`UNUSED = 5`).
    Unused,
    /// A byte-fallback piece `<0xNN>` (`BYTE = 6`).
    Byte,
    /// A value this reader does not know.
    Other(i32),
}

impl From<i32> for PieceType {
    fn from(v: i32) -> Self {
        match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            o => Self::Other(o),
        }
    }
}

/// One vocabulary entry (`ModelProto.SentencePiece`).
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePiece {
    /// The piece text (`piece = 1`), with `▁` for spaces.
    pub piece: String,
    /// Its log-probability score (`score = 2`).
    pub score: f32,
    /// Its type (`type = 3`).
    pub kind: PieceType,
}

/// The trainer settings a tokenizer needs (`TrainerSpec`), with the proto's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    /// `model_type = 3`: 1 unigram (default), 2 BPE, 3 word, 4 char.
    pub model_type: i32,
    /// `byte_fallback = 35`.
    pub byte_fallback: bool,
    /// `unk_id = 40` (default 0).
    pub unk_id: i32,
    /// `bos_id = 41` (default 1, -1 when absent).
    pub bos_id: i32,
    /// `eos_id = 42` (default 2).
    pub eos_id: i32,
    /// `pad_id = 43` (default -1).
    pub pad_id: i32,
    /// `unk_piece = 45` (default `<unk>`).
    pub unk_piece: String,
    /// `bos_piece = 46` (default `<s>`).
    pub bos_piece: String,
    /// `eos_piece = 47` (default `</s>`).
    pub eos_piece: String,
    /// `pad_piece = 48` (default `<pad>`).
    pub pad_piece: String,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: 1,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_piece: "<unk>".into(),
            bos_piece: "<s>".into(),
            eos_piece: "</s>".into(),
            pad_piece: "<pad>".into(),
        }
    }
}

/// The normalization settings (`NormalizerSpec`), with the proto's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// `name = 1` (e.g. `nmt_nfkc`).
    pub name: String,
    /// `precompiled_charsmap = 2`: the compiled normalization rules (a double-array trie and
    /// the replacement strings), empty when the model does not normalize.
    pub precompiled_charsmap: Vec<u8>,
    /// `add_dummy_prefix = 3` (default true).
    pub add_dummy_prefix: bool,
    /// `remove_extra_whitespaces = 4` (default true).
    pub remove_extra_whitespaces: bool,
    /// `escape_whitespaces = 5` (default true).
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The parts of a SentencePiece `ModelProto` a tokenizer is built from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelProto {
    /// The vocabulary, in id order (`pieces = 1`).
    pub pieces: Vec<SentencePiece>,
    /// `trainer_spec = 2`.
    pub trainer_spec: TrainerSpec,
    /// `normalizer_spec = 3`.
    pub normalizer_spec: NormalizerSpec,
}

/// A protobuf field value as read from the wire.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// A cursor over one protobuf message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {n} bytes needed at offset {}, {} left",
                    self.pos,
                    self.buf.len() - self.pos
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at offset {start}"))?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(format!("varint longer than 64 bits at offset {start}"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at offset {start}"))
    }

    /// The next field number and value, or `None` at the end of the message.
    fn field(&mut self) -> std::result::Result<Option<(u32, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n > 0 && n < (1 << 29))
            .ok_or_else(|| format!("invalid field number {} at offset {at}", key >> 3))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len)
                    .map_err(|_| format!("length {len} too large at offset {at}"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(self.take(4)?);
                Value::Fixed32(b)
            }
            w => {
                return Err(format!(
                    "unsupported wire type {w} for field {number} at offset {at}"
                ));
            }
        };
        Ok(Some((number, value)))
    }
}

fn wrong(field: &str) -> String {
    format!("field `{field}` has the wrong wire type")
}

fn as_int32(v: Value<'_>, field: &str) -> std::result::Result<i32, String> {
    match v {
        // protobuf truncates int32/enum varints to their low 32 bits
        Value::Varint(x) => Ok(x as u32 as i32),
        _ => Err(wrong(field)),
    }
}

fn as_bool(v: Value<'_>, field: &str) -> std::result::Result<bool, String> {
    match v {
        Value::Varint(x) => Ok(x != 0),
        _ => Err(wrong(field)),
    }
}

fn as_bytes<'a>(v: Value<'a>, field: &str) -> std::result::Result<&'a [u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(wrong(field)),
    }
}

fn as_string(v: Value<'_>, field: &str) -> std::result::Result<String, String> {
    let b = as_bytes(v, field)?;
    String::from_utf8(b.to_vec()).map_err(|_| format!("field `{field}` is not valid UTF-8"))
}

fn parse_piece(buf: &[u8]) -> std::result::Result<SentencePiece, String> {
    let mut p = SentencePiece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => p.piece = as_string(v, "piece")?,
            2 => match v {
                Value::Fixed32(b) => p.score = f32::from_le_bytes(b),
                _ => return Err(wrong("score")),
            },
            3 => p.kind = as_int32(v, "type")?.into(),
            _ => {}
        }
    }
    Ok(p)
}

fn parse_trainer_spec(buf: &[u8], s: &mut TrainerSpec) -> std::result::Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            3 => s.model_type = as_int32(v, "model_type")?,
            35 => s.byte_fallback = as_bool(v, "byte_fallback")?,
            40 => s.unk_id = as_int32(v, "unk_id")?,
            41 => s.bos_id = as_int32(v, "bos_id")?,
            42 => s.eos_id = as_int32(v, "eos_id")?,
            43 => s.pad_id = as_int32(v, "pad_id")?,
            45 => s.unk_piece = as_string(v, "unk_piece")?,
            46 => s.bos_piece = as_string(v, "bos_piece")?,
            47 => s.eos_piece = as_string(v, "eos_piece")?,
            48 => s.pad_piece = as_string(v, "pad_piece")?,
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer_spec(buf: &[u8], s: &mut NormalizerSpec) -> std::result::Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((n, v)) = r.field()? {
        match n {
            1 => s.name = as_string(v, "name")?,
            2 => s.precompiled_charsmap = as_bytes(v, "precompiled_charsmap")?.to_vec(),
            3 => s.add_dummy_prefix = as_bool(v, "add_dummy_prefix")?,
            4 => s.remove_extra_whitespaces = as_bool(v, "remove_extra_whitespaces")?,
            5 => s.escape_whitespaces = as_bool(v, "escape_whitespaces")?,
            _ => {}
        }
    }
    Ok(())
}

impl ModelProto {
    /// Decodes a serialized `ModelProto` (the bytes of `spiece.model`). Fields other than the
    /// ones [`ModelProto`] holds are skipped; a malformed or truncated message is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        Self::parse_inner(bytes).map_err(|e| err(format!("invalid SentencePiece model: {e}")))
    }

    fn parse_inner(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut m = ModelProto::default();
        let mut r = Reader::new(bytes);
        while let Some((n, v)) = r.field()? {
            match n {
                1 => {
                    let b = as_bytes(v, "pieces")?;
                    let id = m.pieces.len();
                    m.pieces
                        .push(parse_piece(b).map_err(|e| format!("piece {id}: {e}"))?);
                }
                // Repeated occurrences of a message field merge, as in protobuf.
                2 => parse_trainer_spec(as_bytes(v, "trainer_spec")?, &mut m.trainer_spec)
                    .map_err(|e| format!("trainer_spec: {e}"))?,
                3 => parse_normalizer_spec(as_bytes(v, "normalizer_spec")?, &mut m.normalizer_spec)
                    .map_err(|e| format!("normalizer_spec: {e}"))?,
                _ => {}
            }
        }
        Ok(m)
    }

    /// Reads and decodes a `spiece.model` file; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::Core(diffusers_core::Error::FileNotFound {
                path: path.to_path_buf(),
            }));
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        Self::parse_inner(&bytes).map_err(|e| {
            err(format!(
                "{}: invalid SentencePiece model: {e}",
                path.display()
            ))
        })
    }
}

/// Checks a `precompiled_charsmap` so that `tokenizers`' `Precompiled` normalizer can never
/// index out of bounds while normalizing: the layout `[u32 trie size][trie][UTF-8 strings]`,
/// and, for every trie node reachable from the root by any byte, in-bounds transitions and
/// replacement offsets on character boundaries.
fn check_charsmap(bytes: &[u8]) -> std::result::Result<(), String> {
    let head: [u8; 4] = bytes
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or("shorter than its 4-byte header")?;
    let trie_size = u32::from_le_bytes(head) as usize;
    if !trie_size.is_multiple_of(4) || trie_size == 0 || trie_size > bytes.len() - 4 {
        return Err(format!(
            "trie size {trie_size} does not fit the {} bytes",
            bytes.len()
        ));
    }
    let units: Vec<usize> = bytes[4..4 + trie_size]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let normalized = std::str::from_utf8(&bytes[4 + trie_size..])
        .map_err(|_| "replacement strings are not valid UTF-8")?;
    // The unit layout of darts-clone, as `spm_precompiled` reads it.
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let value = |u: usize| u & ((1usize << 31) - 1);
    let label = |u: usize| u & ((1usize << 31) | 0xff);
    let offset = |u: usize| (u >> 10) << ((u & (1usize << 9)) >> 6);
    let root = offset(units[0]);
    let mut seen = HashSet::from([root]);
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        for c in 1..=255usize {
            let next = node ^ c;
            let unit = *units
                .get(next)
                .ok_or_else(|| format!("trie transition to unit {next} out of bounds"))?;
            if label(unit) != c {
                continue;
            }
            let child = next ^ offset(unit);
            if has_leaf(unit) {
                let leaf = *units
                    .get(child)
                    .ok_or_else(|| format!("trie leaf {child} out of bounds"))?;
                let v = value(leaf);
                if !normalized.is_char_boundary(v) {
                    return Err(format!("replacement offset {v} is not a string start"));
                }
            }
            if seen.insert(child) {
                stack.push(child);
            }
        }
    }
    Ok(())
}

/// A token name from `tokenizer_config.json`: a string or an `AddedToken` object's `content`.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Builds the tokenizer transformers 5's `T5Tokenizer` builds from a SentencePiece model (see
/// the module docs), with `extra_ids` sentinels and the given `</s>`, `<unk>` and `<pad>` token
/// names (T5's defaults: [`T5_EXTRA_IDS`], `"</s>"`, `"<unk>"`, `"<pad>"`).
pub fn t5_tokenizer(
    model: &ModelProto,
    extra_ids: usize,
    eos: &str,
    unk: &str,
    pad: &str,
) -> Result<Tokenizer> {
    if extra_ids > MAX_EXTRA_IDS {
        return Err(err(format!(
            "extra_ids {extra_ids} is more than {MAX_EXTRA_IDS}"
        )));
    }
    if model.pieces.len() <= T5_UNK_ID {
        return Err(err(format!(
            "the SentencePiece model has {} pieces, T5's unknown token is id {T5_UNK_ID}",
            model.pieces.len()
        )));
    }
    let spec = &model.trainer_spec;
    if spec.model_type != 1 {
        tracing::warn!(
            "SentencePiece model_type {} is not unigram; built as T5's Unigram tokenizer like transformers",
            spec.model_type
        );
    }
    if spec.unk_id != T5_UNK_ID as i32 {
        tracing::warn!(
            "SentencePiece unk_id is {}; T5's tokenizer uses id {T5_UNK_ID} like transformers",
            spec.unk_id
        );
    }
    let mut vocab: Vec<(String, f64)> = model
        .pieces
        .iter()
        .map(|p| (p.piece.clone(), f64::from(p.score)))
        .collect();
    vocab.extend(
        (0..extra_ids)
            .rev()
            .map(|i| (format!("<extra_id_{i}>"), 0.0)),
    );
    let unigram = Unigram::from(vocab, Some(T5_UNK_ID), false).map_err(err)?;
    let mut t = Tokenizer::new(unigram);
    let charsmap = &model.normalizer_spec.precompiled_charsmap;
    if !charsmap.is_empty() {
        check_charsmap(charsmap).map_err(|e| err(format!("precompiled_charsmap: {e}")))?;
        let precompiled =
            Precompiled::from(charsmap).map_err(|e| err(format!("precompiled_charsmap: {e}")))?;
        t.with_normalizer(Some(precompiled));
    }
    t.with_pre_tokenizer(Some(PreSeq::new(vec![
        WhitespaceSplit.into(),
        Metaspace::new('▁', PrependScheme::Always, true).into(),
    ])));
    t.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    // Added tokens in transformers' order: SentencePiece control/user-defined pieces, the named
    // special tokens (eos, unk, pad), then the sentinels; all matched on the raw text.
    let mut added: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceType::Control | PieceType::UserDefined))
        .map(|p| AddedToken::from(p.piece.clone(), p.kind == PieceType::Control).normalized(false))
        .collect();
    for name in [eos, unk, pad] {
        added.push(AddedToken::from(name, true));
    }
    added.extend((0..extra_ids).map(|i| AddedToken::from(format!("<extra_id_{i}>"), true)));
    let (special, plain): (Vec<_>, Vec<_>) = added.into_iter().partition(|a| a.special);
    t.add_tokens(&plain);
    t.add_special_tokens(&special);
    let eos_id = t
        .token_to_id(eos)
        .ok_or_else(|| err(format!("no `{eos}` token")))?;
    let post = TemplateProcessing::builder()
        .try_single(vec!["$A", eos])
        .and_then(|b| b.try_pair(vec!["$A", eos, "$B", eos]))
        .map_err(err)?
        .special_tokens(vec![(eos, eos_id)])
        .build()
        .map_err(err)?;
    t.with_post_processor(Some(post));
    Ok(t)
}

/// Builds T5's tokenizer from a folder holding `spiece.model`, as
/// `T5Tokenizer.from_pretrained(folder)` does without `tokenizer.json`: `extra_ids` and the
/// `eos_token`/`unk_token`/`pad_token` names come from `tokenizer_config.json` when it has them.
pub fn t5_tokenizer_from_folder(folder: impl AsRef<Path>) -> Result<Tokenizer> {
    let folder = folder.as_ref();
    let model = ModelProto::from_file(folder.join("spiece.model"))?;
    let config_path = folder.join("tokenizer_config.json");
    let config = if config_path.exists() {
        diffusers_core::json::read(&config_path)?
    } else {
        serde_json::Value::Null
    };
    let extra_ids = match config.get("extra_ids") {
        None | Some(serde_json::Value::Null) => T5_EXTRA_IDS,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                err(format!(
                    "{}: `extra_ids` is not a count: {v}",
                    config_path.display()
                ))
            })?,
    };
    let eos = config_token(&config, "eos_token").unwrap_or_else(|| "</s>".into());
    let unk = config_token(&config, "unk_token").unwrap_or_else(|| "<unk>".into());
    let pad = config_token(&config, "pad_token").unwrap_or_else(|| "<pad>".into());
    t5_tokenizer(&model, extra_ids, &eos, &unk, &pad).map_err(|e| match e {
        Error::InvalidInput { model, reason } => Error::InvalidInput {
            model,
            reason: format!("{}: {reason}", folder.display()),
        },
        e => e,
    })
}
