//! GGML's block formats and the `.gguf` single-file format, as llama.cpp's `ggml` defines them
//! and its Python package `gguf` (gguf-py, what diffusers' `GGUFQuantizer` calls) reads them.
//!
//! A GGUF weight is stored row by row (a row is the innermost, `in_features` dimension), each row
//! a whole number of blocks: [`GgmlType::block_size`] elements packed into
//! [`GgmlType::type_size`] bytes. [`dequantize`] unpacks whole blocks to f32 bit for bit as
//! `gguf.quants.dequantize` does (numpy in float32: f16 scales widened to f32, then each product
//! and sum rounded once, in numpy's order); [`dequantize_rows`] does it for a range of rows of a
//! weight, what a matmul kernel needs. [`GgufFile`] reads the container (header, metadata,
//! tensor table) from a memory map.

mod file;

pub use file::{GgufFile, GgufTensorInfo, GgufValue, GgufValueType};

use half::f16;

use crate::{Error, Result};

/// Elements per block of the K-quants (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// The GGML tensor types this crate dequantizes, with ggml's type ids as discriminants.
///
/// Others (the i-quants, ternary types, `Q8_1`, `Q8_K`, integers, F64) are read as errors that
/// name the id: diffusion checkpoints (city96's Flux and Wan conversions) do not use them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    /// IEEE f32.
    F32 = 0,
    /// IEEE f16.
    F16 = 1,
    /// Blocks of 32: an f16 scale `d` and 4-bit values, `d * (q - 8)`.
    Q4_0 = 2,
    /// Blocks of 32: f16 `d` and `m`, 4-bit values, `d * q + m`.
    Q4_1 = 3,
    /// Blocks of 32: an f16 scale and 5-bit values (high bits in a `u32`), `d * (q - 16)`.
    Q5_0 = 6,
    /// Blocks of 32: f16 `d` and `m`, 5-bit values, `d * q + m`.
    Q5_1 = 7,
    /// Blocks of 32: an f16 scale and `i8` values, `q * d`.
    Q8_0 = 8,
    /// Super-blocks of 256: 16 groups with 4-bit scales and mins, 2-bit values.
    Q2_K = 10,
    /// Super-blocks of 256: 16 groups with 6-bit signed scales, 3-bit values.
    Q3_K = 11,
    /// Super-blocks of 256: 8 groups with 6-bit scales and mins, 4-bit values.
    Q4_K = 12,
    /// Super-blocks of 256: 8 groups with 6-bit scales and mins, 5-bit values.
    Q5_K = 13,
    /// Super-blocks of 256: 16 groups with `i8` scales, 6-bit values.
    Q6_K = 14,
    /// bfloat16.
    BF16 = 30,
}

/// Every supported type, in id order.
const ALL: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::BF16,
];

/// ggml's name of a type id this crate does not dequantize, for error messages.
fn unsupported_name(id: u32) -> Option<&'static str> {
    Some(match id {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

impl GgmlType {
    /// ggml's type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name of the type (`"Q4_K"`, `"BF16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::BF16 => "BF16",
        }
    }

    /// The type named `name` as ggml spells it (`"Q4_K"`), if supported.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|t| t.name() == name)
    }

    /// Elements per block (ggml's `blck_size`): 1 for the float types, 32 for the legacy
    /// quants, 256 for the K-quants.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
            Self::Q5_0 => 2 + 4 + 16,
            Self::Q5_1 => 2 + 2 + 4 + 16,
            Self::Q8_0 => 2 + 32,
            Self::Q2_K => 2 + 2 + QK_K / 16 + QK_K / 4,
            Self::Q3_K => 2 + QK_K / 4 + QK_K / 8 + 12,
            Self::Q4_K => 2 + 2 + QK_K / 2 + 12,
            Self::Q5_K => 2 + 2 + QK_K / 2 + QK_K / 8 + 12,
            Self::Q6_K => 2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
        }
    }

    /// Whether the type packs blocks with scales (everything but F32, F16 and BF16).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// The bytes `elements` values take: an error unless `elements` is a whole number of
    /// blocks (or when the byte count overflows).
    pub fn bytes_for(self, elements: usize) -> Result<usize> {
        let bs = self.block_size();
        if !elements.is_multiple_of(bs) {
            return Err(Error::Invalid(format!(
                "{elements} {self} values are not a whole number of {bs}-element blocks"
            )));
        }
        (elements / bs)
            .checked_mul(self.type_size())
            .ok_or_else(|| {
                Error::Invalid(format!("{elements} {self} values overflow the byte count"))
            })
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for GgmlType {
    type Error = Error;

    fn try_from(id: u32) -> Result<Self> {
        if let Some(t) = ALL.into_iter().find(|t| t.id() == id) {
            return Ok(t);
        }
        Err(Error::Invalid(match unsupported_name(id) {
            Some(name) => format!("GGML type {name} (id {id}) is not supported"),
            None => format!("unknown GGML type id {id}"),
        }))
    }
}

/// Dequantizes whole blocks of `ty` from `data` into `out`, bit for bit as
/// `gguf.quants.dequantize` computes them.
///
/// `out.len()` must be a whole number of blocks and `data` exactly their bytes; otherwise
/// `Error::Invalid` names the sizes.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let bs = ty.block_size();
    if !out.len().is_multiple_of(bs) {
        return Err(Error::Invalid(format!(
            "dequantize {ty}: {} output values are not a whole number of {bs}-element blocks",
            out.len()
        )));
    }
    let expected = (out.len() / bs).checked_mul(ty.type_size());
    if expected != Some(data.len()) {
        return Err(Error::Invalid(format!(
            "dequantize {ty}: {} values need {} bytes ({} per {bs}-element block), got {}",
            out.len(),
            expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
            ty.type_size(),
            data.len()
        )));
    }
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.as_chunks::<2>().0) {
                *o = f16::from_le_bytes(*b).to_f32();
            }
        }
        GgmlType::BF16 => {
            // numpy: `(int16 as int32) << 16` viewed as f32; the sign extension is shifted out.
            for (o, b) in out.iter_mut().zip(data.as_chunks::<2>().0) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
            }
        }
        GgmlType::Q4_0 => blocks::<18, 32>(data, out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(data, out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(data, out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(data, out, q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(data, out, q8_0),
        GgmlType::Q2_K => blocks::<84, QK_K>(data, out, q2_k),
        GgmlType::Q3_K => blocks::<110, QK_K>(data, out, q3_k),
        GgmlType::Q4_K => blocks::<144, QK_K>(data, out, q4_k),
        GgmlType::Q5_K => blocks::<176, QK_K>(data, out, q5_k),
        GgmlType::Q6_K => blocks::<210, QK_K>(data, out, q6_k),
    }
    Ok(())
}

/// Dequantizes rows `first_row..first_row + rows` of a weight stored as `ty`, whose rows hold
/// `row_len` values each, into `out` (`rows * row_len` values, row-major).
///
/// `data` is the whole weight's bytes (as [`GgufFile::tensor_bytes`] gives them); `row_len`
/// must be a whole number of blocks, as GGUF requires of every row. A matmul over a packed
/// weight calls this for a few rows at a time into a reused buffer.
pub fn dequantize_rows(
    ty: GgmlType,
    data: &[u8],
    row_len: usize,
    first_row: usize,
    rows: usize,
    out: &mut [f32],
) -> Result<()> {
    let row_bytes = ty.bytes_for(row_len).map_err(|_| {
        Error::Invalid(format!(
            "dequantize_rows {ty}: rows of {row_len} values are not a whole number of {}-element blocks",
            ty.block_size()
        ))
    })?;
    let range = first_row
        .checked_add(rows)
        .and_then(|end| Some(first_row.checked_mul(row_bytes)?..end.checked_mul(row_bytes)?))
        .filter(|r| r.end <= data.len())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "dequantize_rows {ty}: rows {first_row}..{first_row}+{rows} of {row_bytes} bytes \
                 each are past the weight's {} bytes",
                data.len()
            ))
        })?;
    if Some(out.len()) != rows.checked_mul(row_len) {
        return Err(Error::Invalid(format!(
            "dequantize_rows {ty}: {rows} rows of {row_len} values need an output of {} values, got {}",
            rows.saturating_mul(row_len),
            out.len()
        )));
    }
    dequantize(ty, &data[range], out)
}

/// Runs `f` over each `TS`-byte block and its `BS` outputs; lengths are checked by the caller.
#[inline(always)]
fn blocks<const TS: usize, const BS: usize>(
    data: &[u8],
    out: &mut [f32],
    f: fn(&[u8; TS], &mut [f32; BS]),
) {
    for (b, o) in data
        .as_chunks::<TS>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<BS>().0)
    {
        f(b, o);
    }
}

/// The f16 at `b[i..i + 2]`, widened to f32 (exact).
#[inline(always)]
fn f16_at<const N: usize>(b: &[u8; N], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline(always)]
fn q4_0(b: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        out[j] = d * (i32::from(q & 0x0F) - 8) as f32;
        out[j + 16] = d * (i32::from(q >> 4) - 8) as f32;
    }
}

#[inline(always)]
fn q4_1(b: &[u8; 20], out: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        out[j] = d * f32::from(q & 0x0F) + m;
        out[j + 16] = d * f32::from(q >> 4) + m;
    }
}

#[inline(always)]
fn q5_0(b: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = u32::from(q & 0x0F) | ((qh >> j) & 1) << 4;
        let hi = u32::from(q >> 4) | ((qh >> (j + 16)) & 1) << 4;
        out[j] = d * (lo as i32 - 16) as f32;
        out[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

#[inline(always)]
fn q5_1(b: &[u8; 24], out: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = u32::from(q & 0x0F) | ((qh >> j) & 1) << 4;
        let hi = u32::from(q >> 4) | ((qh >> (j + 16)) & 1) << 4;
        out[j] = d * lo as f32 + m;
        out[j + 16] = d * hi as f32 + m;
    }
}

#[inline(always)]
fn q8_0(b: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        out[j] = f32::from(b[2 + j] as i8) * d;
    }
}

/// Q2_K: `scales[16]` (low nibble scale, high nibble min), `qs[64]`, `d`, `dmin`. Value `e`
/// is bits `2 * (e % 128 / 32)` of `qs[e / 128 * 32 + e % 32]`, in group `e / 16`.
#[inline(always)]
fn q2_k(b: &[u8; 84], out: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for g in 0..16 {
        let sc = b[g];
        let dl = d * f32::from(sc & 0x0F);
        let ml = dmin * f32::from(sc >> 4);
        // Group g: half g / 8, shift 2 * (g % 8 / 2), bytes 16 * (g % 2) .. + 16 of the half.
        let (half, shift, start) = (g / 8, 2 * (g % 8 / 2), 16 * (g % 2));
        for l in 0..16 {
            let q = (b[16 + half * 32 + start + l] >> shift) & 3;
            out[g * 16 + l] = dl * f32::from(q) - ml;
        }
    }
}

/// Q3_K: `hmask[32]`, `qs[64]`, `scales[12]` (16 six-bit scales), `d`. The low two bits as
/// Q2_K's; the high bit of value `e` is bit `e / 32` of `hmask[e % 32]`, and a clear bit
/// subtracts 4.
#[inline(always)]
fn q3_k(b: &[u8; 110], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 108);
    let sc = |i: usize| b[96 + i];
    // Values half * 128 + shift * 32 + l: bits 2 * shift of qs[half * 32 + l], high bit
    // half * 4 + shift of hmask[l]; groups of 16 share a scale.
    for half in 0..2 {
        for shift in 0..4 {
            let bit = half * 4 + shift;
            for k in 0..2 {
                let g = half * 8 + shift * 2 + k;
                let lo = (sc(g % 8) >> (4 * (g / 8))) & 0x0F;
                let hi = (sc(8 + g % 4) >> (2 * (g / 4))) & 0x03;
                let dl = d * f32::from((lo | hi << 4) as i8 - 32);
                let qs = &b[32 + half * 32 + k * 16..][..16];
                let hm = &b[k * 16..][..16];
                let o = &mut out[g * 16..][..16];
                for l in 0..16 {
                    let ql = (qs[l] >> (2 * shift)) & 3;
                    let qh = ((hm[l] >> bit) & 1) ^ 1;
                    o[l] = dl * f32::from(ql as i8 - (qh << 2) as i8);
                }
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of Q4_K/Q5_K's 12 packed bytes (ggml's
/// `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3F, s[j + 4] & 0x3F)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30),
            (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30),
        )
    }
}

/// Q4_K: `d`, `dmin`, `scales[12]`, `qs[128]`. Sub-block `j` (32 values) is nibble `j % 2` of
/// `qs[j / 2 * 32..][..32]`.
#[inline(always)]
fn q4_k(b: &[u8; 144], out: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(&b[4..16], j);
        let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = (b[16 + j / 2 * 32 + l] >> shift) & 0x0F;
            out[j * 32 + l] = dj * f32::from(q) - mj;
        }
    }
}

/// Q5_K: `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`: Q4_K's nibbles plus bit `j` of
/// `qh[l]` as the fifth bit of sub-block `j`.
#[inline(always)]
fn q5_k(b: &[u8; 176], out: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(&b[4..16], j);
        let (dj, mj) = (d * f32::from(sc), dmin * f32::from(m));
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = ((b[48 + j / 2 * 32 + l] >> shift) & 0x0F) | ((b[16 + l] >> j) & 1) << 4;
            out[j * 32 + l] = dj * f32::from(q) - mj;
        }
    }
}

/// Q6_K: `ql[128]`, `qh[64]`, `scales[16]` (`i8`), `d`. In each half of 128 values, value `r`
/// has low nibble `r / 64` of `ql[r % 64]` and high bits `2 * (r / 32)` of `qh[r % 32]`.
#[inline(always)]
fn q6_k(b: &[u8; 210], out: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    // Values half * 128 + s * 32 + l: nibble s / 2 of ql[half * 64 + s % 2 * 32 + l], bits
    // 2 * s of qh[half * 32 + l]; groups of 16 share a scale.
    for half in 0..2 {
        for s in 0..4 {
            for k in 0..2 {
                let g = half * 8 + s * 2 + k;
                let dg = d * f32::from(b[192 + g] as i8);
                let ql = &b[half * 64 + s % 2 * 32 + k * 16..][..16];
                let qh = &b[128 + half * 32 + k * 16..][..16];
                let o = &mut out[g * 16..][..16];
                for l in 0..16 {
                    let lo = (ql[l] >> (4 * (s / 2))) & 0x0F;
                    let hi = (qh[l] >> (2 * s)) & 0x03;
                    o[l] = dg * f32::from((lo | hi << 4) as i8 - 32);
                }
            }
        }
    }
}
