//! The `.gguf` container (versions 2 and 3, little-endian): header, metadata key/values, the
//! tensor table, and each tensor's bytes in a memory map.
//!
//! Layout: `GGUF` magic, `u32` version, `u64` tensor count, `u64` key/value count; the
//! key/values (string key, `u32` value type, value); the tensor infos (string name, `u32` rank,
//! `u64` dims innermost first, `u32` GGML type, `u64` offset into the data section); padding to
//! `general.alignment` (32 by default); the data section. Every length and offset read from the
//! file is checked before it is used, so a damaged file is an [`Error::Gguf`], never a panic.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::GgmlType;
use crate::{Error, Result};

/// The data alignment when `general.alignment` is absent (ggml's `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: usize = 32;

/// The most dimensions a tensor has (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;

/// How deeply arrays may nest in metadata (arrays of arrays); deeper files are refused rather
/// than recursed into.
const MAX_ARRAY_DEPTH: usize = 4;

/// The type tag of a metadata value (gguf's `GGUFValueType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgufValueType {
    /// `u8`.
    Uint8 = 0,
    /// `i8`.
    Int8 = 1,
    /// `u16`.
    Uint16 = 2,
    /// `i16`.
    Int16 = 3,
    /// `u32`.
    Uint32 = 4,
    /// `i32`.
    Int32 = 5,
    /// `f32`.
    Float32 = 6,
    /// One byte, 0 or 1.
    Bool = 7,
    /// A `u64` length and UTF-8 bytes.
    String = 8,
    /// A `u32` item type, a `u64` count and the items.
    Array = 9,
    /// `u64`.
    Uint64 = 10,
    /// `i64`.
    Int64 = 11,
    /// `f64`.
    Float64 = 12,
}

impl GgufValueType {
    /// The tag for id `id`, if it is one.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => Uint8,
            1 => Int8,
            2 => Uint16,
            3 => Int16,
            4 => Uint32,
            5 => Int32,
            6 => Float32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => Uint64,
            11 => Int64,
            12 => Float64,
            _ => return None,
        })
    }

    /// gguf-py's name of the type (`"UINT32"`, `"STRING"`, ...).
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            Uint8 => "UINT8",
            Int8 => "INT8",
            Uint16 => "UINT16",
            Int16 => "INT16",
            Uint32 => "UINT32",
            Int32 => "INT32",
            Float32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            Uint64 => "UINT64",
            Int64 => "INT64",
            Float64 => "FLOAT64",
        }
    }

    /// The fewest bytes a value of this type takes in the file (bounds array preallocation).
    fn min_size(self) -> usize {
        use GgufValueType::*;
        match self {
            Uint8 | Int8 | Bool => 1,
            Uint16 | Int16 => 2,
            Uint32 | Int32 | Float32 => 4,
            Uint64 | Int64 | Float64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    String(String),
    /// `ARRAY`: the item type and the items (all of that type).
    Array(GgufValueType, Vec<GgufValue>),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl GgufValue {
    /// The value's type tag.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            Self::U8(_) => GgufValueType::Uint8,
            Self::I8(_) => GgufValueType::Int8,
            Self::U16(_) => GgufValueType::Uint16,
            Self::I16(_) => GgufValueType::Int16,
            Self::U32(_) => GgufValueType::Uint32,
            Self::I32(_) => GgufValueType::Int32,
            Self::F32(_) => GgufValueType::Float32,
            Self::Bool(_) => GgufValueType::Bool,
            Self::String(_) => GgufValueType::String,
            Self::Array(..) => GgufValueType::Array,
            Self::U64(_) => GgufValueType::Uint64,
            Self::I64(_) => GgufValueType::Int64,
            Self::F64(_) => GgufValueType::Float64,
        }
    }

    /// The string, for a `STRING` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an `i128`, for any integer type (bools excluded).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as an `f64`, for `FLOAT32` and `FLOAT64` (exact).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The items, for an `ARRAY` value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(_, items) => Some(items),
            _ => None,
        }
    }
}

/// One tensor of the file's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name as stored (llama.cpp or city96 key names, not converted).
    pub name: String,
    /// The shape in PyTorch order (outermost first): the reverse of GGUF's stored dims.
    pub shape: Vec<usize>,
    /// The GGML type of the stored values.
    pub ggml_type: GgmlType,
    /// The tensor's bytes in the file (absolute offsets).
    pub byte_range: Range<usize>,
}

impl GgufTensorInfo {
    /// The number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values per row (the innermost dimension; 1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
}

/// A memory-mapped `.gguf` file: its metadata and tensor table parsed and checked, tensor bytes
/// borrowed from the map on demand.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens, maps and checks a `.gguf` file without reading its tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| diffusers_core::Error::io(&path, e))?;
        // SAFETY: the mapping is read-only. Like every mmap-based loader (safetensors, candle,
        // llama.cpp) this assumes the file is not truncated by another process while mapped.
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| diffusers_core::Error::io(&path, e))?;
        match Header::parse(&mmap) {
            Ok(h) => Ok(Self {
                path,
                mmap,
                version: h.version,
                alignment: h.alignment,
                data_offset: h.data_offset,
                metadata: h.metadata,
                index: h
                    .tensors
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.name.clone(), i))
                    .collect(),
                tensors: h.tensors,
            }),
            Err(reason) => Err(Error::Gguf { path, reason }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, 32 when absent).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Every metadata key/value (`general.architecture`, ...).
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The tensor names, in the file's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// Every tensor's info, in the file's order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if any.
    pub fn info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The packed bytes of tensor `name` (checked against the file's length at open).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info(name).ok_or_else(|| Error::Gguf {
            path: self.path.clone(),
            reason: format!("no tensor `{name}`"),
        })?;
        self.mmap
            .get(info.byte_range.clone())
            .ok_or_else(|| Error::Gguf {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: bytes {:?} past the end", info.byte_range),
            })
    }

    /// Tensor `name` dequantized to f32, in PyTorch's row-major order for [`GgufTensorInfo::shape`].
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(name)?;
        let info = self.info(name).ok_or_else(|| Error::Gguf {
            path: self.path.clone(),
            reason: format!("no tensor `{name}`"),
        })?;
        let mut out = vec![0.0; info.numel()];
        super::dequantize(info.ggml_type, bytes, &mut out)?;
        Ok(out)
    }
}

/// What [`Header::parse`] reads.
struct Header {
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
}

/// A bounds-checked little-endian reader; errors are one-line reasons naming what was read.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated: {} needs {n} bytes at offset {}, the file has {}",
                what(),
                self.pos,
                self.buf.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A `u64` length that must fit `usize`.
    fn len(&mut self, what: &dyn Fn() -> String) -> Result<usize, String> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| format!("{}: length {n} does not fit in memory", what()))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, String> {
        let n = self.len(&|| format!("the length of {}", what()))?;
        let bytes = self.take(n, &|| format!("{} ({n}-byte string)", what()))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("{} is not UTF-8: {e}", what()))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn value(
        &mut self,
        ty: GgufValueType,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<GgufValue, String> {
        use GgufValueType as T;
        Ok(match ty {
            T::Uint8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            T::Int8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            T::Uint16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            T::Int16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            T::Uint32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            T::Int32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            T::Float32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            T::Uint64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            T::Int64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            T::Float64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            T::Bool => match self.array::<1>(what)? {
                [0] => GgufValue::Bool(false),
                [1] => GgufValue::Bool(true),
                [b] => return Err(format!("{}: bool byte {b} is neither 0 nor 1", what())),
            },
            T::String => GgufValue::String(self.string(what)?),
            T::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels",
                        what()
                    ));
                }
                let id = self.u32(&|| format!("the item type of {}", what()))?;
                let item = GgufValueType::from_id(id)
                    .ok_or_else(|| format!("{}: unknown array item type {id}", what()))?;
                let count = self.len(&|| format!("the length of {}", what()))?;
                let fits = count
                    .checked_mul(item.min_size())
                    .is_some_and(|n| n <= self.remaining());
                if !fits {
                    return Err(format!(
                        "truncated: {} holds {count} {} items, past the end of the file \
                         ({} bytes left at offset {})",
                        what(),
                        item.name(),
                        self.remaining(),
                        self.pos
                    ));
                }
                let mut items = Vec::with_capacity(count);
                for i in 0..count {
                    items.push(self.value(item, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                GgufValue::Array(item, items)
            }
        })
    }
}

impl Header {
    fn parse(buf: &[u8]) -> Result<Self, String> {
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.array::<4>(&|| "the magic".into())?;
        if &magic != b"GGUF" {
            let hex: Vec<String> = magic.iter().map(|b| format!("{b:02x}")).collect();
            return Err(format!(
                "not a GGUF file: magic bytes {} (expected \"GGUF\", 47 47 55 46)",
                hex.join(" ")
            ));
        }
        let version = c.u32(&|| "the version".into())?;
        match version {
            2 | 3 => {}
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(format!(
                    "big-endian GGUF (version {}) is not supported",
                    v.swap_bytes()
                ));
            }
            v => return Err(format!("GGUF version {v} is not supported (only 2 and 3)")),
        }
        let n_tensors = c.len(&|| "the tensor count".into())?;
        let n_kv = c.len(&|| "the metadata count".into())?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata `{key}`");
            let id = c.u32(&|| format!("the type of {}", what()))?;
            let ty = GgufValueType::from_id(id)
                .ok_or_else(|| format!("{}: unknown value type {id}", what()))?;
            let value = c.value(ty, 0, &what)?;
            if metadata.contains_key(&key) {
                return Err(format!("{} appears twice", what()));
            }
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => *a as usize,
            Some(v) => {
                return Err(format!(
                    "metadata `general.alignment` is {v:?}, not a power-of-two UINT32"
                ));
            }
        };

        let mut raw = Vec::with_capacity(n_tensors.min(c.remaining() / 24));
        let mut seen = HashMap::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor #{i}"))?;
            let what = || format!("tensor `{name}`");
            let rank = c.u32(&|| format!("the rank of {}", what()))? as usize;
            if rank > MAX_DIMS {
                return Err(format!(
                    "{} has {rank} dimensions (at most {MAX_DIMS})",
                    what()
                ));
            }
            let mut dims = Vec::with_capacity(rank);
            for d in 0..rank {
                let n = c.u64(&|| format!("dimension {d} of {}", what()))?;
                dims.push(
                    usize::try_from(n)
                        .map_err(|_| format!("{}: dimension {d} is {n}, too large", what()))?,
                );
            }
            let id = c.u32(&|| format!("the type of {}", what()))?;
            let ggml_type = GgmlType::try_from(id).map_err(|e| format!("{}: {e}", what()))?;
            let offset = c.u64(&|| format!("the offset of {}", what()))?;
            if seen.insert(name.clone(), i).is_some() {
                return Err(format!("{} appears twice", what()));
            }
            raw.push((name, dims, ggml_type, offset));
        }

        let data_offset = c
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| "the data section's offset overflows".to_string())?;
        let available = buf.len().saturating_sub(data_offset);
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ggml_type, offset) in raw {
            let shape: Vec<usize> = dims.iter().rev().copied().collect();
            let numel = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
            let row = dims.first().copied().unwrap_or(1);
            let bs = ggml_type.block_size();
            if !row.is_multiple_of(bs) {
                return Err(format!(
                    "tensor `{name}` ({ggml_type}, shape {shape:?}): rows of {row} values are not \
                     a whole number of {bs}-value blocks"
                ));
            }
            let n_bytes = ggml_type
                .bytes_for(numel)
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            if offset % alignment as u64 != 0 {
                return Err(format!(
                    "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
                ));
            }
            let start = usize::try_from(offset).ok().filter(|&o| o <= available);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            let (start, end) = match (start, end) {
                (Some(s), Some(e)) if e <= available => (s, e),
                _ => {
                    return Err(format!(
                        "truncated: tensor `{name}` ({ggml_type}, shape {shape:?}) needs {n_bytes} \
                         bytes at data offset {offset}, the data section has {available} bytes"
                    ));
                }
            };
            tensors.push(GgufTensorInfo {
                name,
                shape,
                ggml_type,
                byte_range: data_offset + start..data_offset + end,
            });
        }
        Ok(Self {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }
}
