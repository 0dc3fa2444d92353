//! LayerNorm and RMSNorm over the last dimension for the CPU backend
//! ([`Cpu`](diffusers_core::backend::Cpu)), f32.
//!
//! Composed of burn ops, `LayerNorm` makes six passes over its input (the mean, the variance,
//! `x - mean`, the division, the weight, the bias), each allocating a tensor; the Flux blocks
//! normalise four `[tokens, 3072]` activations and the SD transformers three per block. These
//! kernels make one pass per row (statistics, then the row written), rows split over rayon's
//! pool, in PyTorch's formulation: LayerNorm as `(x·rstd + (-mean·rstd))·γ + β`
//! (`layer_norm_kernel.cpp`), RMSNorm as diffusers' `x · rsqrt(mean(x²) + eps)` then `· γ`.

use rayon::prelude::*;

use crate::host_math::lane_sum;

/// Values per rayon task, about.
const PIECE: usize = 1 << 15;

/// Which normalisation, and its affine parameters (`dim` values each, or none).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowNorm<'a> {
    Layer {
        eps: f32,
        weight: Option<&'a [f32]>,
        bias: Option<&'a [f32]>,
    },
    Rms {
        eps: f32,
        weight: Option<&'a [f32]>,
    },
}

impl RowNorm<'_> {
    fn fits(&self, dim: usize) -> bool {
        let ok = |p: Option<&[f32]>| p.is_none_or(|p| p.len() == dim);
        match *self {
            RowNorm::Layer { weight, bias, .. } => ok(weight) && ok(bias),
            RowNorm::Rms { weight, .. } => ok(weight),
        }
    }
}

/// Normalises each row of `dim` values of `dst`: reading `src` when given (the same length),
/// else `dst` itself. `false` (and `dst` untouched) when the sizes do not fit.
pub(crate) fn row_norm_f32(
    src: Option<&[f32]>,
    dst: &mut [f32],
    dim: usize,
    norm: RowNorm<'_>,
) -> bool {
    if dim == 0
        || !dst.len().is_multiple_of(dim)
        || src.is_some_and(|s| s.len() != dst.len())
        || !norm.fits(dim)
    {
        return false;
    }
    let rows_per_task = (PIECE / dim).max(1);
    let piece = rows_per_task * dim;
    dst.par_chunks_mut(piece).enumerate().for_each(|(i, dst)| {
        let src = src.map(|s| &s[i * piece..i * piece + dst.len()]);
        pulp::Arch::new().dispatch(Rows {
            src,
            dst,
            dim,
            norm,
        });
    });
    true
}

struct Rows<'a> {
    src: Option<&'a [f32]>,
    dst: &'a mut [f32],
    dim: usize,
    norm: RowNorm<'a>,
}

impl pulp::WithSimd for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Rows {
            src,
            dst,
            dim,
            norm,
        } = self;
        for (r, row) in dst.chunks_exact_mut(dim).enumerate() {
            let src = src.map(|s| &s[r * dim..(r + 1) * dim]);
            let n = dim as f64;
            // Statistics of the row (from `src`, or the row itself before it is written), then
            // `y = x·scale + shift`, then the affine parameters, each pass over one row in L1.
            let (scale, shift, weight, bias) = {
                let input: &[f32] = src.unwrap_or(row);
                match norm {
                    RowNorm::Layer { eps, weight, bias } => {
                        let mean = (lane_sum(input, |x| x) / n) as f32;
                        let var = (lane_sum(input, |x| (x - mean) * (x - mean)) / n) as f32;
                        let scale = 1.0 / (var + eps).sqrt();
                        (scale, Some(-mean * scale), weight, bias)
                    }
                    RowNorm::Rms { eps, weight } => {
                        let ms = (lane_sum(input, |x| x * x) / n) as f32;
                        (1.0 / (ms + eps).sqrt(), None, weight, None)
                    }
                }
            };
            match (src, shift) {
                (Some(s), Some(shift)) => {
                    for (y, &x) in row.iter_mut().zip(s) {
                        *y = x * scale + shift;
                    }
                }
                (None, Some(shift)) => row.iter_mut().for_each(|y| *y = *y * scale + shift),
                (Some(s), None) => {
                    for (y, &x) in row.iter_mut().zip(s) {
                        *y = x * scale;
                    }
                }
                (None, None) => row.iter_mut().for_each(|y| *y *= scale),
            }
            if let Some(w) = weight {
                row.iter_mut().zip(w).for_each(|(y, &w)| *y *= w);
            }
            if let Some(b) = bias {
                row.iter_mut().zip(b).for_each(|(y, &b)| *y += b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, k: f32, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * k).sin() * 2.0 + offset)
            .collect()
    }

    fn check(norm: RowNorm<'_>, dim: usize, x: &[f32]) {
        let mut got = x.to_vec();
        assert!(row_norm_f32(None, &mut got, dim, norm));
        let mut fresh = vec![0.0f32; x.len()];
        assert!(row_norm_f32(Some(x), &mut fresh, dim, norm));
        assert_eq!(got, fresh, "in place and from a source agree");
        for (r, row) in x.chunks(dim).enumerate() {
            let n = dim as f64;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
            for (j, &v) in row.iter().enumerate() {
                let want = match norm {
                    RowNorm::Layer { eps, weight, bias } => {
                        let y = (v as f64 - mean) / (var + eps as f64).sqrt();
                        y * weight.map_or(1.0, |w| w[j] as f64) + bias.map_or(0.0, |b| b[j] as f64)
                    }
                    RowNorm::Rms { eps, weight } => {
                        v as f64 / (ms + eps as f64).sqrt() * weight.map_or(1.0, |w| w[j] as f64)
                    }
                };
                let err = (got[r * dim + j] as f64 - want).abs();
                assert!(err < 5e-6, "{norm:?} row {r}, element {j}: error {err}");
            }
        }
    }

    #[test]
    fn matches_f64_references() {
        // 3072-wide rows (Flux) across several tasks, and short rows with a tail.
        for (dim, rows) in [(3072, 23), (37, 5)] {
            let x = values(dim * rows, 0.37, 3.0);
            let w = values(dim, 0.11, 1.0);
            let b = values(dim, 0.23, 0.0);
            check(
                RowNorm::Layer {
                    eps: 1e-6,
                    weight: Some(&w),
                    bias: Some(&b),
                },
                dim,
                &x,
            );
            check(
                RowNorm::Layer {
                    eps: 1e-5,
                    weight: None,
                    bias: None,
                },
                dim,
                &x,
            );
            check(
                RowNorm::Rms {
                    eps: 1e-6,
                    weight: Some(&w),
                },
                dim,
                &x,
            );
            check(
                RowNorm::Rms {
                    eps: 1e-6,
                    weight: None,
                },
                dim,
                &x,
            );
        }
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        let mut x = vec![1.0f32; 12];
        let norm = RowNorm::Rms {
            eps: 1e-6,
            weight: None,
        };
        assert!(!row_norm_f32(None, &mut x, 5, norm));
        assert!(!row_norm_f32(None, &mut x, 0, norm));
        assert!(!row_norm_f32(Some(&[1.0; 11]), &mut x, 4, norm));
        let w = [1.0f32; 3];
        let short = RowNorm::Rms {
            eps: 1e-6,
            weight: Some(&w),
        };
        assert!(!row_norm_f32(None, &mut x, 4, short));
        assert_eq!(x, vec![1.0f32; 12]);
    }
}
