//! Weight-only float8 e4m3 (`torch.float8_e4m3fn`: 4 exponent bits, bias 7, 3 mantissa bits,
//! no infinities, largest 448) with a per-tensor or per-row scale:
//!
//! ```text
//! scale = max(amax / 448, eps)       (f32; amax over the tensor or the row)
//! q     = e4m3fn(w / scale)          (round to nearest even, as PyTorch's conversion)
//! w'    = f32(q) * scale
//! ```

use crate::{Error, Result};

/// The largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;

/// How many scales an fp8 weight has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per row (output channel).
    PerRow,
}

/// An e4m3fn matrix with its scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8E4m3 {
    /// Row length.
    pub cols: usize,
    /// The e4m3fn bytes.
    pub data: Vec<u8>,
    /// One scale (per tensor) or one per row.
    pub scales: Vec<f32>,
    /// Which of the two.
    pub granularity: Fp8Granularity,
}

/// `f32 -> float8_e4m3fn` as PyTorch converts (c10's `fp8e4m3fn_from_fp32_value`): round to
/// nearest even, magnitudes from 464 up (and NaN) become NaN (0x7f), no saturation.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a.is_nan() || a >= 464.0 {
        return sign | 0x7f;
    }
    if a < 2f32.powi(-6) {
        // Subnormal: multiples of 2^-9 (exact in f32, rounded half to even).
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let bits = a.to_bits();
    // Round the 23-bit mantissa to 3 bits, half to even, then rebias the exponent (127 -> 7).
    let rounded = bits + ((1 << 19) - 1) + ((bits >> 20) & 1);
    sign | ((rounded >> 20) - ((127 - 7) << 3)) as u8
}

/// `float8_e4m3fn -> f32` (exact).
pub fn e4m3_to_f32(q: u8) -> f32 {
    let sign = if q & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((q >> 3) & 0x0f) as i32;
    let m = (q & 0x07) as f32;
    if e == 0x0f && q & 0x07 == 0x07 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m * 2f32.powi(-9)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

impl Fp8E4m3 {
    /// Quantizes a row-major `[rows, cols]` matrix.
    pub fn quantize(x: &[f32], cols: usize, granularity: Fp8Granularity) -> Result<Self> {
        if cols == 0 || x.is_empty() || !x.len().is_multiple_of(cols) {
            return Err(Error::Invalid(format!(
                "fp8: {} values are not whole rows of {cols}",
                x.len()
            )));
        }
        let amax = |v: &[f32]| v.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale_of = |am: f32| (am / E4M3_MAX).max(f32::EPSILON);
        let scales: Vec<f32> = match granularity {
            Fp8Granularity::PerTensor => vec![scale_of(amax(x))],
            Fp8Granularity::PerRow => x.chunks(cols).map(|r| scale_of(amax(r))).collect(),
        };
        let per_row = granularity == Fp8Granularity::PerRow;
        let data = x
            .iter()
            .enumerate()
            .map(|(i, &v)| f32_to_e4m3(v / scales[if per_row { i / cols } else { 0 }]))
            .collect();
        Ok(Fp8E4m3 {
            cols,
            data,
            scales,
            granularity,
        })
    }

    /// Dequantizes elements `start .. start + out.len()` (row-major) into `out`.
    pub fn dequantize_range(&self, start: usize, out: &mut [f32]) {
        let per_row = self.granularity == Fp8Granularity::PerRow;
        for (k, o) in out.iter_mut().enumerate() {
            let e = start + k;
            let s = self.scales[if per_row { e / self.cols } else { 0 }];
            *o = E4M3_TABLE[self.data[e] as usize] * s;
        }
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }
}

/// Every e4m3fn byte as f32.
static E4M3_TABLE: std::sync::LazyLock<[f32; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0.0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = e4m3_to_f32(i as u8);
    }
    t
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for q in 0..=255u8 {
            let v = e4m3_to_f32(q);
            if v.is_nan() {
                continue;
            }
            assert_eq!(f32_to_e4m3(v), q, "{q:#x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(f32_to_e4m3(463.9), 0x7e);
        assert_eq!(f32_to_e4m3(464.0), 0x7f);
    }
}
