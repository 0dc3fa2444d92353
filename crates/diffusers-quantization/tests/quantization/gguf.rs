//! GGUF against gguf-py 0.19.0 (`fixtures/quantization/gguf*`, oracle stage `gguf`): every block
//! type dequantized bit for bit as `gguf.quants.dequantize`, the tiny `.gguf` files written by
//! `GGUFWriter` read back as `GGUFReader` reads them, and damaged copies of them refused with
//! errors that name what is wrong.

use std::path::{Path, PathBuf};

use diffusers_core::testing::{Fixture, fixtures_dir};
use diffusers_quantization::Error;
use diffusers_quantization::gguf::{
    GgmlType, GgufFile, GgufValue, GgufValueType, dequantize, dequantize_rows,
};
use serde_json::Value;

/// The fixture's block types: legacy quants quantized by gguf-py from normal draws, K-quants
/// as random blocks with finite f16 scales (gguf-py has no K-quantizer), F16/BF16 from draws.
const TYPES: [&str; 12] = [
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
];

/// Exact equality (bit patterns, so -0.0 and NaN payloads count); the message gives the number
/// of differing values and the largest absolute difference.
fn assert_bit_equal(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let differ: Vec<f32> = actual
        .iter()
        .zip(expected)
        .filter(|(a, e)| a.to_bits() != e.to_bits())
        .map(|(a, e)| (a - e).abs())
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {} of {} values differ from gguf-py, max abs error {:e}",
        differ.len(),
        actual.len(),
        differ.iter().fold(0f32, |m, &d| m.max(d))
    );
}

/// Raw bytes stored in the fixture as f32 byte values (the fixture reader takes float tensors).
fn fixture_bytes(fx: &Fixture, key: &str) -> Vec<u8> {
    fx.values(key)
        .into_iter()
        .map(|v| {
            assert!(v.fract() == 0.0 && (0.0..=255.0).contains(&v), "{key}: {v}");
            v as u8
        })
        .collect()
}

#[test]
fn every_block_type_dequantizes_bit_equal_to_gguf_py() {
    let fx = Fixture::open("quantization/gguf");
    for name in TYPES {
        let case = fx.case(name);
        let ty = GgmlType::from_name(name).expect("supported type");
        assert_eq!(
            GgmlType::try_from(case["type_id"].as_u64().expect("id") as u32).expect("id"),
            ty
        );
        assert_eq!(
            ty.id() as u64,
            case["type_id"].as_u64().expect("id"),
            "{name}"
        );
        assert_eq!(ty.block_size() as u64, case["block_size"], "{name}");
        assert_eq!(ty.type_size() as u64, case["type_size"], "{name}");
        let (rows, row_len) = (
            case["shape"][0].as_u64().expect("rows") as usize,
            case["shape"][1].as_u64().expect("cols") as usize,
        );
        let bytes = fixture_bytes(&fx, &format!("{name}.bytes"));
        let expected = fx.values(&format!("{name}.dequantized"));
        assert_eq!(
            ty.bytes_for(rows * row_len).expect("whole blocks"),
            bytes.len()
        );

        let mut out = vec![f32::NAN; rows * row_len];
        dequantize(ty, &bytes, &mut out).expect("dequantize");
        assert_bit_equal(&out, &expected, name);

        // Row by row through the range form, as a matmul reads a weight.
        for row in 0..rows {
            let mut out = vec![f32::NAN; row_len];
            dequantize_rows(ty, &bytes, row_len, row, 1, &mut out).expect("rows");
            let want = &expected[row * row_len..][..row_len];
            assert_bit_equal(&out, want, &format!("{name} row {row}"));
        }
    }
}

#[test]
fn dequantize_refuses_sizes_that_are_not_whole_blocks() {
    let bytes = [0u8; 2 * 18];
    let cases: [(&str, usize, usize, &[&str]); 3] = [
        // (what, data bytes, output values, substrings of the error)
        (
            "partial block",
            36,
            48,
            &["48 output values", "32-element blocks"],
        ),
        ("bytes short", 35, 64, &["need 36 bytes", "got 35"]),
        ("bytes long", 36, 32, &["need 18 bytes", "got 36"]),
    ];
    for (what, n_bytes, n_out, needles) in cases {
        let mut out = vec![0.0; n_out];
        let err = dequantize(GgmlType::Q4_0, &bytes[..n_bytes], &mut out)
            .expect_err(what)
            .to_string();
        for n in needles {
            assert!(err.contains(n), "{what}: {err}");
        }
    }
    let mut out = vec![0.0; 32];
    let err = dequantize_rows(GgmlType::Q4_0, &bytes, 32, 1, 2, &mut out).expect_err("past end");
    assert!(
        err.to_string().contains("past the weight's 36 bytes"),
        "{err}"
    );
    let err = dequantize_rows(GgmlType::Q4_0, &bytes, 48, 0, 1, &mut out).expect_err("row");
    assert!(err.to_string().contains("rows of 48 values"), "{err}");
    let err = GgmlType::try_from(20).expect_err("IQ4_NL").to_string();
    assert!(err.contains("IQ4_NL (id 20) is not supported"), "{err}");
    let err = GgmlType::try_from(99).expect_err("99").to_string();
    assert!(err.contains("unknown GGML type id 99"), "{err}");
}

/// Our metadata value as gguf-py's reader reports it: (type, item type for arrays, JSON value).
fn as_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::F32(x) => Value::from(f64::from(*x)),
        GgufValue::F64(x) => Value::from(*x),
        GgufValue::Bool(b) => Value::from(*b),
        GgufValue::String(s) => Value::from(s.as_str()),
        GgufValue::Array(_, items) => Value::Array(items.iter().map(as_json).collect()),
        GgufValue::U64(x) => Value::from(*x),
        other => Value::from(other.as_int().expect("integer") as i64),
    }
}

/// Whether a JSON number written by Python equals ours: floats compared after rounding to the
/// stored precision (Python writes f32 values widened to f64 with the shortest repr).
fn same_value(ours: &Value, theirs: &Value, ty: GgufValueType) -> bool {
    match (ours, theirs) {
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y, ty))
        }
        (Value::Number(x), Value::Number(y)) if ty == GgufValueType::Float32 => {
            x.as_f64().map(|v| v as f32) == y.as_f64().map(|v| v as f32)
        }
        _ => ours == theirs,
    }
}

fn check_file(fx: &Fixture, gguf: &GgufFile, stem: &str) {
    let expected = &fx.case("files")[stem];
    assert_eq!(u64::from(gguf.version()), expected["version"], "{stem}");
    assert_eq!(gguf.alignment() as u64, expected["alignment"], "{stem}");
    assert_eq!(gguf.data_offset() as u64, expected["data_offset"], "{stem}");

    let meta = expected["metadata"].as_object().expect("metadata");
    let keys: Vec<&String> = gguf.metadata().keys().collect();
    assert_eq!(
        keys,
        meta.keys().collect::<Vec<_>>(),
        "{stem}: metadata keys"
    );
    for (key, want) in meta {
        let value = &gguf.metadata()[key];
        assert_eq!(value.value_type().name(), want["type"], "{stem} {key}");
        let item = match value {
            GgufValue::Array(item, _) => {
                assert_eq!(item.name(), want["sub_type"], "{stem} {key}");
                *item
            }
            other => other.value_type(),
        };
        assert!(
            same_value(&as_json(value), &want["value"], item),
            "{stem} {key}: {value:?} vs {}",
            want["value"]
        );
    }
    assert_eq!(
        gguf.metadata()["general.architecture"].as_str(),
        Some("tiny")
    );

    let order: Vec<&str> = expected["tensor_order"]
        .as_array()
        .expect("order")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    assert_eq!(
        gguf.names().collect::<Vec<_>>(),
        order,
        "{stem}: tensor order"
    );
    for name in order {
        let want = &expected["tensors"][name];
        let info = gguf.info(name).expect("tensor");
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        assert_eq!(
            Value::from(shape),
            want["shape"],
            "{stem} {name}: torch-order shape"
        );
        assert_eq!(info.ggml_type.name(), want["type"], "{stem} {name}");
        assert_eq!(
            info.byte_range.start as u64, want["data_offset"],
            "{stem} {name}"
        );
        assert_eq!(
            info.byte_range.len() as u64,
            want["n_bytes"],
            "{stem} {name}"
        );
        let bytes = gguf.tensor_bytes(name).expect("bytes");
        assert_eq!(bytes.len(), info.byte_range.len());
        let values = fx.values(&format!("{stem}.{name}"));
        assert_bit_equal(
            &gguf.dequantize(name).expect("dequantize"),
            &values,
            &format!("{stem} {name}"),
        );
        // The last row alone, through the range form.
        let (row_len, rows) = (info.row_len(), info.numel() / info.row_len());
        let mut row = vec![0.0; row_len];
        dequantize_rows(info.ggml_type, bytes, row_len, rows - 1, 1, &mut row).expect("row");
        assert_bit_equal(
            &row,
            &values[(rows - 1) * row_len..],
            &format!("{stem} {name} row"),
        );
    }
    assert!(gguf.info("missing.weight").is_none());
    let err = gguf.tensor_bytes("missing.weight").expect_err("missing");
    assert!(
        err.to_string().contains("no tensor `missing.weight`"),
        "{err}"
    );
}

#[test]
fn tiny_files_read_back_as_gguf_py_reads_them() {
    let fx = Fixture::open("quantization/gguf");
    for stem in ["tiny", "tiny_aligned"] {
        let path = fixtures_dir().join(format!("quantization/{stem}.gguf"));
        let gguf = GgufFile::open(&path).expect("open");
        check_file(&fx, &gguf, stem);
    }
    // Version 2 has the same layout as 3 (3 added big-endian files): a copy marked 2 reads alike.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = tiny_bytes();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let path = write(dir.path(), "v2.gguf", &bytes);
    let gguf = GgufFile::open(&path).expect("version 2");
    assert_eq!(gguf.version(), 2);
    assert_eq!(gguf.names().count(), 5);
    assert_eq!(
        gguf.dequantize("blocks.0.q4k.weight").expect("q4k"),
        fx.values("tiny.blocks.0.q4k.weight")
    );
}

fn tiny_bytes() -> Vec<u8> {
    std::fs::read(fixtures_dir().join("quantization/tiny.gguf")).expect("tiny.gguf")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

/// Where `needle` (a key or tensor name, stored after its `u64` length) ends in the file.
fn after(bytes: &[u8], needle: &str) -> usize {
    let n = needle.as_bytes();
    let mut found = bytes.windows(n.len()).enumerate().filter(|(_, w)| *w == n);
    let (pos, _) = found.next().expect("needle in file");
    assert!(found.next().is_none(), "{needle} appears once");
    assert_eq!(bytes[pos - 8..pos], (n.len() as u64).to_le_bytes());
    pos + n.len()
}

/// Position of tensor `name`'s fields: (first dim, GGML type, offset).
fn tensor_fields(bytes: &[u8], name: &str) -> (usize, usize, usize) {
    let rank_at = after(bytes, name);
    let rank = u32::from_le_bytes(bytes[rank_at..rank_at + 4].try_into().expect("4")) as usize;
    let dims = rank_at + 4;
    let ty = dims + 8 * rank;
    (dims, ty, ty + 4)
}

type Corrupt = fn(&mut Vec<u8>);

#[test]
fn damaged_files_are_errors_naming_what_is_wrong() {
    let cases: [(&str, Corrupt, &[&str]); 11] = [
        (
            "bad magic",
            |b| b[..4].copy_from_slice(b"GGML"),
            &["not a GGUF file", "47 47 4d 4c"],
        ),
        (
            "version 1",
            |b| b[4..8].copy_from_slice(&1u32.to_le_bytes()),
            &["GGUF version 1 is not supported"],
        ),
        (
            "big-endian",
            |b| b[4..8].copy_from_slice(&3u32.to_be_bytes()),
            &["big-endian GGUF (version 3)"],
        ),
        (
            "unknown type id",
            |b| {
                let (_, ty, _) = tensor_fields(b, "blocks.0.q8.weight");
                b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
            },
            &["tensor `blocks.0.q8.weight`", "unknown GGML type id 99"],
        ),
        (
            "unsupported type id",
            |b| {
                let (_, ty, _) = tensor_fields(b, "blocks.0.q4k.weight");
                b[ty..ty + 4].copy_from_slice(&23u32.to_le_bytes());
            },
            &[
                "tensor `blocks.0.q4k.weight`",
                "IQ4_XS (id 23) is not supported",
            ],
        ),
        (
            "truncated tensor",
            |b| b.truncate(b.len() - 40),
            &[
                "truncated",
                "tensor `conv.weight`",
                "needs 108 bytes at data offset 672",
            ],
        ),
        (
            "truncated header",
            |b| b.truncate(300),
            &["truncated", "needs", "the file has 300"],
        ),
        (
            "rows not whole blocks",
            |b| {
                let (dims, _, _) = tensor_fields(b, "blocks.0.q8.weight");
                b[dims..dims + 8].copy_from_slice(&48u64.to_le_bytes());
            },
            &[
                "tensor `blocks.0.q8.weight` (Q8_0, shape [3, 48])",
                "not a whole number of 32-value blocks",
            ],
        ),
        (
            "misaligned offset",
            |b| {
                let (_, _, off) = tensor_fields(b, "norm.bias");
                let o = u64::from_le_bytes(b[off..off + 8].try_into().expect("8"));
                b[off..off + 8].copy_from_slice(&(o + 2).to_le_bytes());
            },
            &["tensor `norm.bias`", "not a multiple of the alignment 32"],
        ),
        (
            "string past the end",
            |b| {
                // The value of general.name: u32 type, then the u64 length.
                let at = after(b, "general.name") + 4;
                b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            },
            &[
                "truncated",
                "metadata `general.name` (1099511627776-byte string)",
            ],
        ),
        (
            "array past the end",
            |b| {
                // The value of tiny.dims: u32 type, u32 item type, then the u64 count.
                let at = after(b, "tiny.dims") + 8;
                b[at..at + 8].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
            },
            &[
                "truncated",
                "metadata `tiny.dims` holds 4611686018427387903 INT32 items",
            ],
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (what, corrupt, needles)) in cases.into_iter().enumerate() {
        let mut bytes = tiny_bytes();
        corrupt(&mut bytes);
        let path = write(dir.path(), &format!("case{i}.gguf"), &bytes);
        match GgufFile::open(&path) {
            Err(Error::Gguf { path: p, reason }) => {
                assert_eq!(p, path, "{what}");
                assert!(!reason.contains('\n'), "{what}: one line: {reason}");
                for n in needles {
                    assert!(reason.contains(n), "{what}: `{n}` not in: {reason}");
                }
            }
            other => panic!("{what}: expected Error::Gguf, got {other:?}"),
        }
    }
    let missing = GgufFile::open(dir.path().join("absent.gguf")).expect_err("absent");
    assert!(matches!(missing, Error::Core(_)), "{missing:?}");
}

#[test]
fn any_truncation_or_header_byte_flip_is_handled_without_panicking() {
    let bytes = tiny_bytes();
    let dir = tempfile::tempdir().expect("tempdir");
    let full = GgufFile::open(write(dir.path(), "full.gguf", &bytes)).expect("open");
    let data_end = full
        .tensors()
        .iter()
        .map(|t| t.byte_range.end)
        .max()
        .expect("tensors");
    let path = dir.path().join("t.gguf");
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).expect("write");
        let r = GgufFile::open(&path);
        assert_eq!(r.is_ok(), len >= data_end, "truncated to {len}: {r:?}");
    }
    // Every header byte (through the tensor table) inverted: Ok or an error, never a panic, and
    // every tensor a file still opens with reads back (ranges inside the file).
    for pos in 0..full.data_offset() {
        let mut b = bytes.clone();
        b[pos] ^= 0xFF;
        std::fs::write(&path, &b).expect("write");
        if let Ok(f) = GgufFile::open(&path) {
            for name in f.names() {
                f.tensor_bytes(name).expect("in range");
                f.dequantize(name).expect("dequantize");
            }
        }
    }
}
