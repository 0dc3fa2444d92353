//! [`QuantizedTensor`]: one packed 2-D weight (`[out_features, in_features]`, row-major) in any
//! of the crate's formats, dequantized a few rows at a time by the matmul that uses it.

use std::cell::RefCell;
use std::sync::Arc;

use crate::bnb_4bit::{Bnb4bit, Bnb4bitType};
use crate::fp8::{Fp8E4m3, Fp8Granularity};
use crate::gguf::{self, GgmlType};
use crate::int8::Int8Rowwise;
use crate::{Error, Result};

/// How to quantize a dense weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMethod {
    /// bitsandbytes 4-bit.
    Bnb4bit {
        /// NF4 or FP4.
        quant_type: Bnb4bitType,
        /// Elements per block (64).
        blocksize: usize,
        /// `bnb_4bit_use_double_quant`.
        double_quant: bool,
    },
    /// Weight-only int8, one scale per row.
    Int8,
    /// Weight-only float8 e4m3.
    Fp8(Fp8Granularity),
}

impl QuantMethod {
    /// Parses the CLI's names: `nf4`, `fp4`, `int8`, `fp8` (per-row scales) and
    /// `fp8-tensor` (one scale).
    pub fn parse(s: &str, double_quant: bool) -> Result<Self> {
        Ok(match s {
            "nf4" | "fp4" => QuantMethod::Bnb4bit {
                quant_type: Bnb4bitType::parse(s)?,
                blocksize: 64,
                double_quant,
            },
            "int8" => QuantMethod::Int8,
            "fp8" => QuantMethod::Fp8(Fp8Granularity::PerRow),
            "fp8-tensor" => QuantMethod::Fp8(Fp8Granularity::PerTensor),
            other => {
                return Err(Error::Invalid(format!(
                    "unknown quantization `{other}` (expected nf4, fp4, int8, fp8 or fp8-tensor)"
                )));
            }
        })
    }

    /// Bytes a `[rows, cols]` weight takes packed in this format, values and scales (what
    /// [`QuantizedTensor::nbytes`] reports for it), without quantizing anything.
    pub fn packed_bytes(&self, rows: usize, cols: usize) -> usize {
        let n = rows * cols;
        match *self {
            QuantMethod::Bnb4bit {
                blocksize,
                double_quant,
                ..
            } => {
                let blocks = n.div_ceil(blocksize);
                let scales = if double_quant {
                    blocks + 4 * blocks.div_ceil(crate::bnb_4bit::NESTED_BLOCKSIZE) + 4 * 256 + 4
                } else {
                    4 * blocks
                };
                n.div_ceil(2) + scales
            }
            QuantMethod::Int8 => n + 4 * rows,
            QuantMethod::Fp8(Fp8Granularity::PerRow) => n + 4 * rows,
            QuantMethod::Fp8(Fp8Granularity::PerTensor) => n + 4,
        }
    }

    /// A short name (`nf4`, `fp4`, `int8`, `fp8`).
    pub fn name(&self) -> &'static str {
        match self {
            QuantMethod::Bnb4bit { quant_type, .. } => quant_type.name(),
            QuantMethod::Int8 => "int8",
            QuantMethod::Fp8(_) => "fp8",
        }
    }
}

/// The packed storage of a [`QuantizedTensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Packed {
    /// bitsandbytes NF4/FP4.
    Bnb4bit(Bnb4bit),
    /// int8 with per-row scales.
    Int8(Int8Rowwise),
    /// float8 e4m3 with scales.
    Fp8(Fp8E4m3),
    /// GGML blocks, rows of whole blocks.
    Gguf {
        /// The block type.
        ty: GgmlType,
        /// The raw blocks, row after row.
        data: Vec<u8>,
    },
}

/// A packed 2-D weight `[rows, cols]` (PyTorch's `[out_features, in_features]`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    rows: usize,
    cols: usize,
    packed: Packed,
}

impl QuantizedTensor {
    /// Quantizes a dense row-major `[rows, cols]` matrix.
    pub fn quantize(x: &[f32], rows: usize, cols: usize, method: QuantMethod) -> Result<Self> {
        if rows.checked_mul(cols) != Some(x.len()) || x.is_empty() {
            return Err(Error::Invalid(format!(
                "{} values are not a [{rows}, {cols}] matrix",
                x.len()
            )));
        }
        let packed = match method {
            QuantMethod::Bnb4bit {
                quant_type,
                blocksize,
                double_quant,
            } => Packed::Bnb4bit(Bnb4bit::quantize(x, blocksize, quant_type, double_quant)?),
            QuantMethod::Int8 => Packed::Int8(Int8Rowwise::quantize(x, cols)?),
            QuantMethod::Fp8(g) => Packed::Fp8(Fp8E4m3::quantize(x, cols, g)?),
        };
        Ok(QuantizedTensor { rows, cols, packed })
    }

    /// Wraps packed storage read from a checkpoint, checking its sizes against the shape.
    pub fn from_packed(rows: usize, cols: usize, packed: Packed) -> Result<Self> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::Invalid(format!("[{rows}, {cols}] overflows")))?;
        let ok = match &packed {
            Packed::Bnb4bit(b) => {
                b.numel == n
                    && b.data.len() == n.div_ceil(2)
                    && b.absmax.len() == n.div_ceil(b.blocksize)
                    && match &b.absmax {
                        crate::bnb_4bit::Absmax::Plain(_) => true,
                        crate::bnb_4bit::Absmax::Nested {
                            q,
                            nested_absmax,
                            code,
                            nested_blocksize,
                            ..
                        } => {
                            *nested_blocksize > 0
                                && nested_absmax.len() == q.len().div_ceil(*nested_blocksize)
                                && code.len() == 256
                        }
                    }
            }
            Packed::Int8(q) => q.cols == cols && q.data.len() == n && q.scales.len() == rows,
            Packed::Fp8(q) => {
                q.cols == cols
                    && q.data.len() == n
                    && q.scales.len()
                        == match q.granularity {
                            Fp8Granularity::PerTensor => 1,
                            Fp8Granularity::PerRow => rows,
                        }
            }
            Packed::Gguf { ty, data } => {
                cols.is_multiple_of(ty.block_size())
                    && data.len() == rows * (cols / ty.block_size()) * ty.type_size()
            }
        };
        if !ok {
            return Err(Error::Invalid(format!(
                "packed {} storage does not hold a [{rows}, {cols}] matrix",
                format_name(&packed)
            )));
        }
        Ok(QuantizedTensor { rows, cols, packed })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The packed storage.
    pub fn packed(&self) -> &Packed {
        &self.packed
    }

    /// The format's name (`nf4`, `fp4`, `int8`, `fp8`, `Q4_0`, ...).
    pub fn format(&self) -> String {
        format_name(&self.packed)
    }

    /// Bytes held: packed values plus scales.
    pub fn nbytes(&self) -> usize {
        match &self.packed {
            Packed::Bnb4bit(b) => b.nbytes(),
            Packed::Int8(q) => q.nbytes(),
            Packed::Fp8(q) => q.nbytes(),
            Packed::Gguf { data, .. } => data.len(),
        }
    }

    /// Dequantizes rows `first .. first + out.len() / cols` into `out` (f32, row-major).
    pub fn dequantize_rows(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let rows = out.len() / self.cols.max(1);
        if !out.len().is_multiple_of(self.cols.max(1)) || first + rows > self.rows {
            return Err(Error::Invalid(format!(
                "rows {first}..{} of a [{}, {}] matrix into {} values",
                first + rows,
                self.rows,
                self.cols,
                out.len()
            )));
        }
        let start = first * self.cols;
        match &self.packed {
            Packed::Bnb4bit(b) => b.dequantize_range(start, out),
            Packed::Int8(q) => q.dequantize_range(start, out),
            Packed::Fp8(q) => q.dequantize_range(start, out),
            Packed::Gguf { ty, data } => {
                let row_bytes = self.cols / ty.block_size() * ty.type_size();
                let bytes = &data[first * row_bytes..(first + rows) * row_bytes];
                gguf::dequantize(*ty, bytes, out)?;
            }
        }
        Ok(())
    }

    /// The whole matrix in f32 (for tests and for backends without a packed kernel).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.dequantize_rows(0, &mut out)?;
        Ok(out)
    }
}

fn format_name(p: &Packed) -> String {
    match p {
        Packed::Bnb4bit(b) => b.quant_type.name().to_string(),
        Packed::Int8(_) => "int8".into(),
        Packed::Fp8(_) => "fp8".into(),
        Packed::Gguf { ty, .. } => format!("{ty:?}"),
    }
}

thread_local! {
    /// The weight a load hook just quantized, waiting for its `Linear` to take it (see
    /// [`stash`]).
    static STASH: RefCell<Option<Arc<QuantizedTensor>>> = const { RefCell::new(None) };
}

/// Hands a packed weight from the loader to the `Linear` being loaded. The loader walks a
/// module's parameters in field order; a `Linear`'s `weight` comes before its packed slot, so
/// the load hook stashes the packed form of the weight it took, and the slot takes it right
/// after (`diffusers_nn::linear::QuantizedWeight`). One per thread; loading is single-threaded.
pub fn stash(q: QuantizedTensor) -> Result<()> {
    STASH.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_some() {
            return Err(Error::Invalid(
                "a quantized weight was stashed before the previous one was taken".into(),
            ));
        }
        *s = Some(Arc::new(q));
        Ok(())
    })
}

/// Takes the stashed weight, if any (see [`stash`]).
pub fn take_stashed() -> Option<Arc<QuantizedTensor>> {
    STASH.with(|s| s.borrow_mut().take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_bytes_is_what_quantizing_holds() {
        for (rows, cols) in [(3, 40), (16, 128), (300, 64)] {
            let x: Vec<f32> = (0..rows * cols).map(|i| (i % 17) as f32 - 8.0).collect();
            for name in ["nf4", "fp4", "int8", "fp8", "fp8-tensor"] {
                for dq in [false, true] {
                    if dq && !name.ends_with('4') {
                        continue;
                    }
                    let m = QuantMethod::parse(name, dq).expect("method");
                    let q = QuantizedTensor::quantize(&x, rows, cols, m).expect("quantize");
                    assert_eq!(
                        m.packed_bytes(rows, cols),
                        q.nbytes(),
                        "{name} {dq} {rows}x{cols}"
                    );
                }
            }
        }
    }
}
