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

use crate::host_math::{LANES, exp_f32};

/// Shapes of one call: `bh` independent `(batch, head)` pairs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub bh: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

/// Score elements per task (f32): 2 MiB, this machine's L2 per core (1 MiB measured 8 % slower
/// at `[2, 8, 4096, 40]`: `gemm` packs the block's keys and values once per block).
const SCORE_BUDGET: usize = 512 * 1024;

/// `softmax(q kᵀ · scale) v` for contiguous row-major `q: [bh, lq, d]`, `k: [bh, lk, d]`,
/// `v: [bh, lk, dv]`; returns `[bh, lq, dv]`. `None` when the slices do not have the sizes
/// `dims` names (the caller falls back to burn's op).
pub(crate) fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    scale: f32,
) -> Option<Vec<f32>> {
    let Dims { bh, lq, lk, d, dv } = dims;
    if q.len() != bh * lq * d || k.len() != bh * lk * d || v.len() != bh * lk * dv {
        return None;
    }
    if lk == 0 || d == 0 || dv == 0 || lq == 0 || bh == 0 {
        return None;
    }
    let block = (SCORE_BUDGET / lk).clamp(8, 256).min(lq);
    let mut out = vec![0f32; bh * lq * dv];
    out.par_chunks_mut(lq * dv)
        .enumerate()
        .for_each(|(h, out_h)| {
            let qh = &q[h * lq * d..(h + 1) * lq * d];
            let kh = &k[h * lk * d..(h + 1) * lk * d];
            let vh = &v[h * lk * dv..(h + 1) * lk * dv];
            out_h.par_chunks_mut(block * dv).enumerate().for_each_init(
                Vec::new,
                |scores: &mut Vec<f32>, (blk, out_blk)| {
                    let m = out_blk.len() / dv;
                    let q_blk = &qh[blk * block * d..(blk * block + m) * d];
                    scores.clear();
                    scores.resize(m * lk, 0.0);
                    gemm_f32(scores, q_blk, kh, [m, lk, d], true, scale);
                    let inv_sums = softmax_rows(scores, lk);
                    gemm_f32(out_blk, scores, vh, [m, dv, lk], false, 1.0);
                    for (row, inv) in out_blk.chunks_exact_mut(dv).zip(inv_sums) {
                        row.iter_mut().for_each(|x| *x *= inv);
                    }
                },
            );
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

/// `dst[m, n] = alpha · a[m, k] · b` (row-major, dense), `b` is `[k, n]`, or `[n, k]` read
/// transposed when `b_transposed`; single-threaded (the callers run in parallel).
fn gemm_f32(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    [m, n, k]: [usize; 3],
    b_transposed: bool,
    alpha: f32,
) {
    assert!(
        dst.len() == m * n && a.len() == m * k && b.len() == n * k,
        "gemm_f32: slice sizes do not match [{m}, {n}, {k}]"
    );
    let (b_cs, b_rs) = if b_transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: the assertion above makes every index gemm reads or writes lie inside the
    // slices: dst is m x n with row stride n, a is m x k with row stride k, b is k x n with
    // (row, column) strides (n, 1), or (1, k) when stored transposed as n x k. `dst` is a
    // unique borrow, so it aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> Vec<f32> {
        let Dims { bh, lq, lk, d, dv } = dims;
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

    #[test]
    fn matches_f64_reference_across_block_edges() {
        // lq = 300 is not a multiple of the block (256 rows at lk = 1030), and rows of 1030
        // leave a 6-element tail after the 16-lane loops.
        for dims in [
            Dims {
                bh: 3,
                lq: 300,
                lk: 1030,
                d: 40,
                dv: 40,
            },
            Dims {
                bh: 2,
                lq: 7,
                lk: 5,
                d: 8,
                dv: 3,
            },
        ] {
            let q = data(dims.bh * dims.lq * dims.d, 1);
            let k = data(dims.bh * dims.lk * dims.d, 2);
            let v = data(dims.bh * dims.lk * dims.dv, 3);
            let scale = 1.0 / (dims.d as f32).sqrt();
            let got = attention_f32(&q, &k, &v, dims, scale).expect("sizes match");
            let want = reference(&q, &k, &v, dims, scale);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 2e-5, "{dims:?}: max abs error {err}");
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let dims = Dims {
            bh: 1,
            lq: 2,
            lk: 2,
            d: 2,
            dv: 2,
        };
        assert!(attention_f32(&[0.0; 3], &[0.0; 4], &[0.0; 4], dims, 1.0).is_none());
    }
}
