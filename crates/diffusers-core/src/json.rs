//! The one JSON reader for every file diffusers and transformers write: `config.json`,
//! `scheduler_config.json`, `model_index.json`, tokenizer configs, shard indexes.
//!
//! Python's `json` module writes (and reads) three words standard JSON lacks: `NaN`, `Infinity`
//! and `-Infinity`. diffusers' `save_config` writes them wherever a value is not finite; every
//! saved `DPMSolverMultistepScheduler` config holds `"lambda_min_clipped": -Infinity`. This reader
//! accepts them as Python does. A `serde_json::Value` cannot hold a non-finite number, so each of
//! them is read as the string `"NaN"`, `"Infinity"` or `"-Infinity"`; a config field that may hold
//! one declares it with [`non_finite`], and any other field that meets one is
//! [`Error::NonFinite`] naming the key. Other deserialization errors name the key too
//! ([`Error::JsonValue`]).
//!
//! ```
//! use serde::Deserialize;
//! use std::path::Path;
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     #[serde(with = "diffusers_core::json::non_finite")]
//!     lambda_min_clipped: f64,
//!     beta_end: f64,
//! }
//!
//! let text = r#"{"lambda_min_clipped": -Infinity, "beta_end": 0.012}"#;
//! let c: Config = diffusers_core::json::from_str(text, Path::new("scheduler_config.json"))?;
//! assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
//!
//! // A non-finite value where a finite one is needed is an error naming the key.
//! let err = diffusers_core::json::from_str::<Config>(
//!     r#"{"lambda_min_clipped": 0, "beta_end": NaN}"#,
//!     Path::new("scheduler_config.json"),
//! )
//! .err()
//! .expect("NaN beta_end");
//! assert!(err.to_string().contains("`beta_end` is NaN"));
//! # Ok::<(), diffusers_core::Error>(())
//! ```

use std::borrow::Cow;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

/// The words Python's `json` writes for non-finite floats, as they are kept in a [`Value`].
pub const NON_FINITE: [&str; 3] = ["NaN", "Infinity", "-Infinity"];

/// Parses JSON text as Python's `json.loads` would (`NaN`, `Infinity`, `-Infinity` included)
/// into `T`; `origin` names the source in errors.
pub fn from_str<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    from_value(parse_value(text, origin)?, origin)
}

/// Reads and parses a JSON file as [`from_str`] does.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    from_str(&text, path)
}

/// Parses JSON text into a [`Value`], Python's non-finite words kept as the strings
/// [`NON_FINITE`].
pub fn parse_value(text: &str, origin: &Path) -> Result<Value> {
    serde_json::from_str(&quote_non_finite(text)).map_err(|source| Error::Json {
        path: origin.to_path_buf(),
        source,
    })
}

/// Deserializes `T` from a value read by [`parse_value`]: an error names the key it concerns,
/// and a non-finite value where `T` needs a number is [`Error::NonFinite`].
pub fn from_value<T: DeserializeOwned>(value: Value, origin: &Path) -> Result<T> {
    let err = match serde_path_to_error::deserialize(&value) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let message = err.inner().to_string();
    // The word a type error complains about (`invalid type: string "NaN", expected f64`).
    let word = NON_FINITE
        .into_iter()
        .find(|w| message.starts_with(&format!("invalid type: string \"{w}\"")));
    let tracked = lookup(&value, err.path()).map(|_| err.path().to_string());
    if let Some(word) = word {
        // The path is lost inside `#[serde(flatten)]` parts: then every key holding the word
        // is named.
        let at_word = lookup(&value, err.path()) == Some(&Value::from(word));
        let key = match tracked.clone().filter(|_| at_word) {
            Some(key) => key,
            None => {
                let mut keys = Vec::new();
                find_word(&value, word, &mut String::new(), &mut keys);
                keys.join("`, `")
            }
        };
        if !key.is_empty() {
            return Err(Error::NonFinite {
                path: origin.to_path_buf(),
                key,
                value: word.to_string(),
            });
        }
    }
    Err(Error::JsonValue {
        path: origin.to_path_buf(),
        key: tracked.unwrap_or_default(),
        source: err.into_inner(),
    })
}

/// The paths (`a.b[1]`) of every string equal to `word` under `value`.
fn find_word(value: &Value, word: &str, at: &mut String, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s == word => out.push(at.clone()),
        Value::Object(map) => {
            for (k, v) in map {
                let len = at.len();
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(k);
                find_word(v, word, at, out);
                at.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("[{i}]"));
                find_word(v, word, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// The value at a deserialization error's path, where the path is known and leads to one.
fn lookup<'a>(value: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    use serde_path_to_error::Segment;
    let mut v = value;
    let mut segments = path.iter().peekable();
    segments.peek()?;
    for seg in segments {
        v = match seg {
            Segment::Map { key } => v.get(key)?,
            Segment::Seq { index } => v.get(index)?,
            Segment::Enum { .. } => v,
            Segment::Unknown => return None,
        };
    }
    Some(v)
}

/// Rewrites Python's bare `NaN`, `Infinity` and `-Infinity` (outside strings) as JSON strings.
/// Text without them is returned as it is. Columns in a parse error after a rewritten word on
/// the same line are off by two per word; lines are unchanged.
fn quote_non_finite(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let word = NON_FINITE.iter().find(|w| {
            bytes[i..].starts_with(w.as_bytes())
                && !bytes
                    .get(i + w.len())
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                && !(i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        });
        match word {
            Some(w) => {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
                o.push_str(&text[copied..i]);
                o.push('"');
                o.push_str(w);
                o.push('"');
                i += w.len();
                copied = i;
            }
            None => i += 1,
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    }
}

/// `#[serde(with = "diffusers_core::json::non_finite")]` for an `f64` config field that may be
/// `NaN` or infinite (as Python writes it): reads a number or one of [`NON_FINITE`], and writes
/// a finite value as a number and a non-finite one as its word, so that a config taken back to a
/// [`Value`] (a scheduler's `config()`) keeps it.
pub mod non_finite {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as a number, or as `"NaN"`/`"Infinity"`/`"-Infinity"`.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_str(word(*v))
        }
    }

    /// Reads a number or one of Python's non-finite words.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum NumberOrWord {
            Number(f64),
            Word(String),
        }
        match NumberOrWord::deserialize(d)? {
            NumberOrWord::Number(v) => Ok(v),
            NumberOrWord::Word(w) => parse_word(&w).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "expected a number, NaN, Infinity or -Infinity, found the string {w:?}"
                ))
            }),
        }
    }

    /// Python's word for a non-finite value.
    pub fn word(v: f64) -> &'static str {
        if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
    }

    /// The value of one of Python's non-finite words.
    pub fn parse_word(w: &str) -> Option<f64> {
        match w {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize)]
    struct C {
        #[serde(with = "non_finite", default)]
        lam: f64,
        #[serde(default)]
        finite: Vec<f64>,
        #[serde(default)]
        name: String,
    }

    fn path() -> &'static Path {
        Path::new("c.json")
    }

    #[test]
    fn python_words_outside_strings_only() {
        let text =
            r#"{"lam": -Infinity, "name": "NaN -Infinity \"Infinity\"", "x": [NaN, Infinity]}"#;
        let v = parse_value(text, path()).expect("parse");
        assert_eq!(v["lam"], "-Infinity");
        assert_eq!(v["name"], "NaN -Infinity \"Infinity\"");
        assert_eq!(v["x"], serde_json::json!(["NaN", "Infinity"]));
        let c: C = from_value(v, path()).expect("C");
        assert_eq!(c.lam, f64::NEG_INFINITY);
        // Words inside identifiers are not Python's literals, and stay malformed JSON.
        assert!(matches!(
            parse_value(r#"{"a": NaNa}"#, path()),
            Err(Error::Json { .. })
        ));
        assert!(matches!(
            parse_value(r#"{"a": -Infinityx}"#, path()),
            Err(Error::Json { .. })
        ));
        // Text without them is parsed unchanged.
        assert!(matches!(quote_non_finite(r#"{"a": 1}"#), Cow::Borrowed(_)));
    }

    #[test]
    fn round_trip_through_a_value() {
        for lam in [f64::NEG_INFINITY, f64::INFINITY, -2.5] {
            let c = C {
                lam,
                finite: vec![],
                name: String::new(),
            };
            let v = serde_json::to_value(&c).expect("to_value");
            let back: C = from_value(v, path()).expect("from_value");
            assert_eq!(back.lam, lam);
        }
        let v = serde_json::to_value(C {
            lam: f64::NAN,
            finite: vec![],
            name: String::new(),
        })
        .expect("nan");
        assert!(from_value::<C>(v, path()).expect("nan").lam.is_nan());
    }

    #[test]
    fn non_finite_where_a_finite_number_is_needed_names_the_key() {
        let err = from_str::<C>(r#"{"finite": [1.0, Infinity]}"#, path()).expect_err("error");
        match &err {
            Error::NonFinite { key, value, .. } => {
                assert_eq!(key, "finite[1]");
                assert_eq!(value, "Infinity");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("c.json: `finite[1]` is Infinity")
        );
        // Other type errors name the key too.
        let err = from_str::<C>(r#"{"name": 3}"#, path()).expect_err("error");
        assert!(
            matches!(&err, Error::JsonValue { key, .. } if key == "name"),
            "{err:?}"
        );
        // Inside a flattened part serde loses the path: every key holding the word is named.
        #[derive(Debug, Deserialize)]
        struct Outer {
            #[serde(flatten)]
            _inner: Inner,
        }
        #[derive(Debug, Deserialize)]
        struct Inner {
            _beta_end: f64,
        }
        let err =
            from_str::<Outer>(r#"{"_beta_end": NaN, "other": [NaN]}"#, path()).expect_err("error");
        assert!(
            err.to_string().contains("`_beta_end`, `other[0]` is NaN"),
            "{err}"
        );
        // A string that is not one of the words is not taken as a number.
        let err = from_str::<C>(r#"{"lam": "inf"}"#, path()).expect_err("error");
        assert!(err.to_string().contains("`lam`"), "{err}");
    }
}
