//! Scaled dot-product attention for the CPU backend ([`Cpu`](diffusers_core::backend::Cpu)),
//! f32, no mask.
//!
//! burn-flex 0.21's `attention` runs every `(batch, head)` pair one after another on one
//! thread, with 64-key tiles and libm's scalar `expf` in the online softmax: at SD's
//! `[2, 8, 4096, 40]` it was 6x slower than PyTorch's CPU kernel (docs/PERFORMANCE.md). This
//! kernel splits the work into `(head, block of query rows)` tasks on rayon's pool; each task
//! computes the block's whole score rows with one `gemm` (`scale · q kᵀ`), a softmax whose `exp`
//! vectorises (dispatched to AVX-512/AVX2 at run time), and `P v` with a second `gemm`. A block
//! is sized so its score rows stay in L2 (2 MiB).
//!
//! Numerically this is the textbook `softmax(q kᵀ · scale) v` in f32 (the row maximum
//! subtracted before `exp`, rows normalised after `P v`), as PyTorch's math and CPU flash
//! kernels compute it; the `exp` is within 2 ulp of libm's over the softmax's range.

use rayon::prelude::*;

use crate::host_gemm::{Mat, gemm_f32};
use crate::host_math::{LANES, exp_f32};

/// One input as it lies in memory: element `[batch, head, row, col]` of a `[b, h, rows, cols]`
/// tensor is `data[offset + batch·s[0] + head·s[1] + row·s[2] + col]` (rows are contiguous,
/// anything else may be a permuted view, e.g. a `[b, n, h, d]` projection seen as
/// `[b, h, n, d]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub strides: [usize; 3],
}

impl View<'_> {
    /// Start of `(batch, head)`'s rows.
    fn at(&self, batch: usize, head: usize) -> usize {
        self.offset + batch * self.strides[0] + head * self.strides[1]
    }

    /// Whether every element of a `[b, h, rows, cols]` tensor is inside `data`.
    fn fits(&self, [b, h, rows, cols]: [usize; 4]) -> bool {
        let last = self.at(b - 1, h - 1) + (rows - 1) * self.strides[2] + cols - 1;
        last < self.data.len()
    }
}

/// Shapes of one call: `batch · heads` independent `(batch, head)` pairs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

/// Score elements per task (f32): 2 MiB, this machine's L2 per core (1 MiB measured 8 % slower
/// at `[2, 8, 4096, 40]`: `gemm` packs the block's keys and values once per block).
const SCORE_BUDGET: usize = 512 * 1024;

/// `softmax(q kᵀ · scale) v` for `q: [b, h, lq, d]`, `k: [b, h, lk, d]`, `v: [b, h, lk, dv]`
/// read where they lie; returns the result laid out as `[b, lq, h, dv]` (what attention
/// layers reshape it to next), i.e. `[b, h, lq, dv]` with strides `(lq·h·dv, dv, h·dv, 1)`.
/// `None` when a view does not fit its buffer or a size is zero (the caller falls back to
/// burn's op).
pub(crate) fn attention_f32(
    q: View<'_>,
    k: View<'_>,
    v: View<'_>,
    dims: Dims,
    scale: f32,
) -> Option<Vec<f32>> {
    let Dims {
        batch,
        heads,
        lq,
        lk,
        d,
        dv,
    } = dims;
    if [batch, heads, lq, lk, d, dv].contains(&0) {
        return None;
    }
    if !q.fits([batch, heads, lq, d]) || !k.fits([batch, heads, lk, d]) {
        return None;
    }
    if !v.fits([batch, heads, lk, dv]) {
        return None;
    }
    let block = (SCORE_BUDGET / lk).clamp(8, 256).min(lq);
    let blocks = lq.div_ceil(block);
    // Each (batch, head, block of query rows) task computes its `[rows, dv]` result; a second
    // pass lays them out as `[b, lq, h, dv]`.
    let results: Vec<Vec<f32>> = (0..batch * heads * blocks)
        .into_par_iter()
        .map_init(Vec::new, |scores: &mut Vec<f32>, task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (b, h) = (bh / heads, bh % heads);
            let row0 = blk * block;
            let m = block.min(lq - row0);
            scores.clear();
            scores.resize(m * lk, 0.0);
            let q_rows = Mat {
                data: q.data,
                at: q.at(b, h) + row0 * q.strides[2],
                rs: q.strides[2],
                cs: 1,
            };
            // kᵀ: column j is key row j.
            let k_t = Mat {
                data: k.data,
                at: k.at(b, h),
                rs: 1,
                cs: k.strides[2],
            };
            gemm_f32(scores, [lk, 1], q_rows, k_t, [m, lk, d], false, scale);
            let inv_sums = softmax_rows(scores, lk);
            let mut out = vec![0.0f32; m * dv];
            let p_rows = Mat {
                data: scores,
                at: 0,
                rs: lk,
                cs: 1,
            };
            let v_rows = Mat {
                data: v.data,
                at: v.at(b, h),
                rs: v.strides[2],
                cs: 1,
            };
            gemm_f32(&mut out, [dv, 1], p_rows, v_rows, [m, dv, lk], false, 1.0);
            for (row, inv) in out.chunks_exact_mut(dv).zip(inv_sums) {
                row.iter_mut().for_each(|x| *x *= inv);
            }
            out
        })
        .collect();
    let mut out = vec![0f32; batch * lq * heads * dv];
    out.par_chunks_mut(lq * heads * dv)
        .enumerate()
        .for_each(|(b, out_b)| {
            for (blk, rows) in out_b.chunks_mut(block * heads * dv).enumerate() {
                for h in 0..heads {
                    let src = &results[(b * heads + h) * blocks + blk];
                    for (dst, src) in rows.chunks_exact_mut(heads * dv).zip(src.chunks_exact(dv)) {
                        dst[h * dv..(h + 1) * dv].copy_from_slice(src);
                    }
                }
            }
        });
    Some(out)
}

/// Replaces each row of `scores` (rows of `len`) by `exp(x - max(row))` and returns each
/// row's `1 / sum`.
fn softmax_rows(scores: &mut [f32], len: usize) -> Vec<f32> {
    let mut inv_sums = Vec::with_capacity(scores.len() / len);
    pulp::Arch::new().dispatch(SoftmaxRows {
        scores,
        len,
        inv_sums: &mut inv_sums,
    });
    inv_sums
}

/// [`softmax_rows`]' loop, compiled once per instruction set (pulp dispatches on the CPU's).
struct SoftmaxRows<'a> {
    scores: &'a mut [f32],
    len: usize,
    inv_sums: &'a mut Vec<f32>,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for row in self.scores.chunks_exact_mut(self.len) {
            self.inv_sums.push(1.0 / exp_row_minus_max(row));
        }
    }
}

/// `row[i] = exp(row[i] - max(row))`; returns the sum. Written with `LANES` independent
/// accumulators so the compiler vectorises the max, the `exp` and the sum.
#[inline(always)]
fn exp_row_minus_max(row: &mut [f32]) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in maxes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in maxes.iter().chain(chunks.remainder()) {
        max = if x > max { x } else { max };
    }
    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (acc, x) in sums.iter_mut().zip(chunk.iter_mut()) {
            let e = exp_f32(*x - max);
            *x = e;
            *acc += e;
        }
    }
    let mut sum = 0.0f32;
    for x in chunks.into_remainder() {
        let e = exp_f32(*x - max);
        *x = e;
        sum += e;
    }
    sum + sums.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense `[b·h, l, d]` inputs, f64 math; the result as `[b·h, lq, dv]`.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> Vec<f32> {
        let Dims {
            batch,
            heads,
            lq,
            lk,
            d,
            dv,
        } = dims;
        let bh = batch * heads;
        let mut out = vec![0f64; bh * lq * dv];
        for h in 0..bh {
            for i in 0..lq {
                let s: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..d)
                            .map(|c| {
                                q[(h * lq + i) * d + c] as f64 * k[(h * lk + j) * d + c] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..dv {
                    out[(h * lq + i) * dv + c] = (0..lk)
                        .map(|j| e[j] * v[(h * lk + j) * dv + c] as f64)
                        .sum::<f64>()
                        / sum;
                }
            }
        }
        out.into_iter().map(|x| x as f32).collect()
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic values in [-2, 2).
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// A dense `[b, h, rows, cols]` view.
    fn dense(data: &[f32], [_, h, rows, cols]: [usize; 4]) -> View<'_> {
        View {
            data,
            offset: 0,
            strides: [h * rows * cols, rows * cols, cols],
        }
    }

    /// `[b, h, rows, cols]` values stored as `[b, rows, h, cols]` after `pad` unused values,
    /// and the view reading them.
    fn permuted(values: &[f32], [b, h, rows, cols]: [usize; 4], pad: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; pad + values.len()];
        for bi in 0..b {
            for hi in 0..h {
                for r in 0..rows {
                    for c in 0..cols {
                        out[pad + ((bi * rows + r) * h + hi) * cols + c] =
                            values[((bi * h + hi) * rows + r) * cols + c];
                    }
                }
            }
        }
        out
    }

    /// The kernel's `[b, lq, h, dv]` result as `[b·h, lq, dv]`.
    fn heads_first(out: &[f32], dims: Dims) -> Vec<f32> {
        let Dims {
            batch,
            heads,
            lq,
            dv,
            ..
        } = dims;
        let mut r = vec![0f32; out.len()];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..lq {
                    for c in 0..dv {
                        r[((b * heads + h) * lq + i) * dv + c] =
                            out[((b * lq + i) * heads + h) * dv + c];
                    }
                }
            }
        }
        r
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_f64_reference_across_block_edges() {
        // lq = 300 is not a multiple of the block (256 rows at lk = 1030), and rows of 1030
        // leave a 6-element tail after the 16-lane loops.
        for dims in [
            Dims {
                batch: 3,
                heads: 1,
                lq: 300,
                lk: 1030,
                d: 40,
                dv: 40,
            },
            Dims {
                batch: 2,
                heads: 3,
                lq: 7,
                lk: 5,
                d: 8,
                dv: 3,
            },
        ] {
            let Dims {
                batch: b,
                heads: h,
                lq,
                lk,
                d,
                dv,
            } = dims;
            let q = data(b * h * lq * d, 1);
            let k = data(b * h * lk * d, 2);
            let v = data(b * h * lk * dv, 3);
            let scale = 1.0 / (d as f32).sqrt();
            let want = reference(&q, &k, &v, dims, scale);
            let (qs, ks, vs) = ([b, h, lq, d], [b, h, lk, d], [b, h, lk, dv]);
            let got = attention_f32(dense(&q, qs), dense(&k, ks), dense(&v, vs), dims, scale)
                .expect("sizes match");
            let err = max_err(&heads_first(&got, dims), &want);
            assert!(err < 2e-5, "{dims:?}: max abs error {err}");

            // The same values read from `[b, n, h, d]` storage, with an offset.
            let (qp, kp, vp) = (
                permuted(&q, qs, 3),
                permuted(&k, ks, 1),
                permuted(&v, vs, 0),
            );
            let view = |data, offset, rows: usize, cols: usize| View {
                data,
                offset,
                strides: [rows * h * cols, cols, h * cols],
            };
            let strided = attention_f32(
                view(&qp, 3, lq, d),
                view(&kp, 1, lk, d),
                view(&vp, 0, lk, dv),
                dims,
                scale,
            )
            .expect("sizes match");
            assert_eq!(strided, got, "{dims:?}: views and dense inputs agree");
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let dims = Dims {
            batch: 1,
            heads: 1,
            lq: 2,
            lk: 2,
            d: 2,
            dv: 2,
        };
        let s = [1, 2, 2, 2];
        let (short, ok) = ([0.0f32; 3], [0.0f32; 4]);
        let run = |q, k, v, dims| attention_f32(dense(q, s), dense(k, s), dense(v, s), dims, 1.0);
        assert!(run(&ok, &ok, &ok, dims).is_some());
        assert!(run(&short, &ok, &ok, dims).is_none());
        assert!(run(&ok, &short, &ok, dims).is_none());
        assert!(run(&ok, &ok, &short, dims).is_none());
        assert!(run(&ok, &ok, &ok, Dims { lk: 0, ..dims }).is_none());
    }
}
