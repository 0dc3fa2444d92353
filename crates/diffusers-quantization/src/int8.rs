//! Weight-only int8 with one symmetric scale per output channel (row), torchao's
//! `int8_weight_only` formula (`choose_qparams_affine` with `MappingType.SYMMETRIC`,
//! `quant_min = -128`, `quant_max = 127`, `eps = torch.finfo(torch.float32).eps`):
//!
//! ```text
//! amax  = max(|min(row, 0)|, max(row, 0))
//! scale = max(amax / 127.5, eps)                 (f32)
//! q     = clamp(round_half_even(w * (1 / scale)), -128, 127)
//! w'    = q * scale
//! ```

use crate::{Error, Result};

/// An int8 matrix with one scale per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Rowwise {
    /// Row length (`in_features`).
    pub cols: usize,
    /// `rows x cols` quantized values.
    pub data: Vec<i8>,
    /// One scale per row.
    pub scales: Vec<f32>,
}

impl Int8Rowwise {
    /// Quantizes a row-major `[rows, cols]` matrix.
    pub fn quantize(x: &[f32], cols: usize) -> Result<Self> {
        if cols == 0 || x.is_empty() || !x.len().is_multiple_of(cols) {
            return Err(Error::Invalid(format!(
                "int8: {} values are not whole rows of {cols}",
                x.len()
            )));
        }
        let mut data = Vec::with_capacity(x.len());
        let mut scales = Vec::with_capacity(x.len() / cols);
        for row in x.chunks(cols) {
            let (lo, hi) = row
                .iter()
                .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let amax = (-lo).max(hi);
            let scale = (amax / 127.5).max(f32::EPSILON);
            let inv = 1.0 / scale;
            scales.push(scale);
            data.extend(
                row.iter()
                    .map(|&v| (v * inv).round_ties_even().clamp(-128.0, 127.0) as i8),
            );
        }
        Ok(Int8Rowwise { cols, data, scales })
    }

    /// Dequantizes elements `start .. start + out.len()` (row-major) into `out`.
    pub fn dequantize_range(&self, start: usize, out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            let e = start + k;
            *o = self.data[e] as f32 * self.scales[e / self.cols];
        }
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }
}
