//! 2D convolution (stride 1, no dilation, one group) for the CPU backend
//! ([`Cpu`](diffusers_core::backend::Cpu)), f32.
//!
//! burn-flex 0.21 convolves through im2col: it transposes the input to NHWC on one thread,
//! builds a `[positions, c_in · kh · kw]` patch matrix per tile of 512 output positions, runs a
//! `gemm` per tile, and scatters each result back one element at a time with a stride of the
//! whole output plane. At SD's 3x3 convolutions that was 1.5x-2.4x PyTorch's time
//! (docs/PERFORMANCE.md).
//!
//! This kernel builds no patch matrix. The input is copied once into a zero-padded plane per
//! channel (`[c_in, hp, wp]`, rows of `wp = w + 2·pw`). An output is computed at every column
//! of the padded width (`oh · wp + ow`, the last `kw - 1` columns of each row are discarded),
//! and then the kernel tap `(i, j)` reads the input at a *constant* offset `i · wp + j` from
//! the output position: for each tap, the patch values form a plain strided matrix
//! `[positions, c_in]` (column stride `hp · wp`) inside the padded input. A convolution is then
//! `kh · kw` accumulating `gemm`s, `out[q, co] += x_pad[ci, q + i·wp + j] · w[co, ci, i, j]`,
//! over blocks of output rows run in parallel on rayon's pool. Sums are over `c_in` per tap,
//! taps in order, in f32, as PyTorch's CPU convolutions accumulate (not bit-equal to them:
//! oneDNN orders its sums differently).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::host_gemm::{Mat, gemm_f32};

/// Shapes of one call: input `[batch, c_in, h, w]`, weight `[c_out, c_in, kh, kw]`, symmetric
/// zero padding `[ph, pw]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvDims {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub ph: usize,
    pub pw: usize,
}

/// Output positions (of the padded width) per task, about: `gemm` packs each tap's weights once
/// per task, so tasks are large (measured at SD's 320-channel 3x3: 512 positions 30.1 ms,
/// 2048 25.6 ms, 4096 25.4 ms; the rows are then split evenly over the pool's threads).
const POSITIONS_PER_TASK: usize = 4096;

impl ConvDims {
    /// `(h_out, w_out)`, or `None` when the kernel does not fit the padded input.
    pub(crate) fn out_hw(&self) -> Option<(usize, usize)> {
        let (hp, wp) = (self.h + 2 * self.ph, self.w + 2 * self.pw);
        (self.kh >= 1 && self.kw >= 1 && hp >= self.kh && wp >= self.kw)
            .then(|| (hp - self.kh + 1, wp - self.kw + 1))
    }
}

/// `conv2d(x, w, bias)` for contiguous `x: [batch, c_in, h, w]`, `w: [c_out, c_in, kh, kw]`,
/// `bias: [c_out]`; returns `[batch, c_out, h_out, w_out]`. `None` when a slice does not have
/// the size `dims` names or a dimension is zero (the caller falls back to burn's op).
pub(crate) fn conv2d_f32(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    dims: ConvDims,
) -> Option<Vec<f32>> {
    let ConvDims {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        ph,
        pw,
    } = dims;
    let (h_out, w_out) = dims.out_hw()?;
    if batch == 0 || c_in == 0 || c_out == 0 || h == 0 || w == 0 {
        return None;
    }
    if x.len() != batch * c_in * h * w
        || weight.len() != c_out * c_in * kh * kw
        || bias.is_some_and(|b| b.len() != c_out)
    {
        return None;
    }
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let plane = hp * wp;
    let image = c_in * plane;
    let taps = kh * kw;

    // Zero-padded input, one image after another, and `kw - 1` zeros of slack at the end: the
    // discarded columns of the last row read up to `kw - 1` values past the last plane. Every
    // value is written once (no zeroing pass first).
    let xp_len = batch * image + kw - 1;
    let mut xp: Vec<f32> = Vec::with_capacity(xp_len);
    let (planes, slack) = xp.spare_capacity_mut()[..xp_len].split_at_mut(batch * image);
    slack.iter_mut().for_each(|v| {
        v.write(0.0);
    });
    planes
        .par_chunks_mut(plane)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            let (top, rest) = dst.split_at_mut(ph * wp);
            let (middle, bottom) = rest.split_at_mut(h * wp);
            for v in top.iter_mut().chain(bottom.iter_mut()) {
                v.write(0.0);
            }
            for (row, src) in middle.chunks_exact_mut(wp).zip(src.chunks_exact(w)) {
                let (left, rest) = row.split_at_mut(pw);
                let (inner, right) = rest.split_at_mut(w);
                for v in left.iter_mut().chain(right.iter_mut()) {
                    v.write(0.0);
                }
                for (d, &s) in inner.iter_mut().zip(src) {
                    d.write(s);
                }
            }
        });
    // SAFETY: the first `xp_len` elements were all written just above: the slack, and every
    // plane (`x` has exactly `batch · c_in` planes of `h · w`, checked at the top, so the zip
    // pairs each of the `batch · c_in` padded planes with one) in full: its `ph` top and
    // `hp - ph - h = ph` bottom rows, and each of its `h` middle rows' left padding, `w`
    // values and right padding (`pw + w + pw = wp`).
    #[allow(unsafe_code)]
    unsafe {
        xp.set_len(xp_len);
    }

    // Blocks of output rows of about POSITIONS_PER_TASK positions, as many in all as a
    // multiple of the pool's threads so none idles at the end.
    let threads = rayon::current_num_threads().max(1);
    let per_image = (h_out * wp).div_ceil(POSITIONS_PER_TASK);
    let per_image = (batch * per_image)
        .next_multiple_of(threads)
        .div_ceil(batch);
    let rows_per_task = h_out.div_ceil(per_image.clamp(1, h_out));
    let blocks = h_out.div_ceil(rows_per_task);
    let out_image = c_out * h_out * w_out;
    let mut out: Vec<f32> = Vec::with_capacity(batch * out_image);
    // Tasks: (image, block of output rows); each writes its rows of every output channel, so
    // its destination is one slice per channel plane.
    let mut tasks: Vec<Vec<&mut [MaybeUninit<f32>]>> = (0..batch * blocks)
        .map(|_| Vec::with_capacity(c_out))
        .collect();
    let planes = &mut out.spare_capacity_mut()[..batch * out_image];
    for (p, plane_out) in planes.chunks_mut(h_out * w_out).enumerate() {
        let b = p / c_out;
        for (k, rows) in plane_out.chunks_mut(rows_per_task * w_out).enumerate() {
            tasks[b * blocks + k].push(rows);
        }
    }
    tasks.into_par_iter().enumerate().for_each_init(
        Vec::new,
        |acc: &mut Vec<f32>, (task, mut dst)| {
            let (b, k) = (task / blocks, task % blocks);
            let r0 = k * rows_per_task;
            let rows = rows_per_task.min(h_out - r0);
            let m = rows * wp;
            // The thread's scratch, reused from task to task: the first tap overwrites it.
            if acc.len() < m * c_out {
                acc.resize(m * c_out, 0.0);
            }
            let acc = &mut acc[..m * c_out];
            let base = b * image + r0 * wp;
            for i in 0..kh {
                for j in 0..kw {
                    let t = i * kw + j;
                    let off = base + i * wp + j;
                    // acc[q, co] (+)= Σ_ci xp[off + ci·plane + q] · w[co, ci, i, j]: the patch
                    // matrix is a strided view of the padded input, the tap's weights are
                    // read in place (`gemm` packs them; a reordered copy measured slower).
                    let patches = Mat {
                        data: &xp,
                        at: off,
                        rs: 1,
                        cs: plane,
                    };
                    let w_tap = Mat {
                        data: weight,
                        at: t,
                        rs: taps,
                        cs: c_in * taps,
                    };
                    gemm_f32(acc, [1, m], patches, w_tap, [m, c_out, c_in], t > 0, 1.0);
                }
            }
            // The valid columns of each row, with the bias.
            for (co, dst) in dst.iter_mut().enumerate() {
                let add = bias.map_or(0.0, |bias| bias[co]);
                let src = &acc[co * m..(co + 1) * m];
                for (d, row) in dst.chunks_exact_mut(w_out).zip(src.chunks_exact(wp)) {
                    for (d, s) in d.iter_mut().zip(&row[..w_out]) {
                        d.write(s + add);
                    }
                }
            }
        },
    );
    // SAFETY: the first `batch · out_image` elements were all written just above: they split
    // into the `batch · c_out` planes, each plane into `blocks` row blocks handed to exactly
    // one task (block `k` of image `b` to task `b · blocks + k`), and each task writes all
    // `w_out` values of each of its rows in every one of its `c_out` planes (its block holds
    // `rows` rows, matched one to one with the `rows` rows of its sums).
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(batch * out_image);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, d: ConvDims) -> Vec<f64> {
        let (ho, wo) = d.out_hw().expect("the kernel fits");
        let mut out = vec![0f64; d.batch * d.c_out * ho * wo];
        for b in 0..d.batch {
            for co in 0..d.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = bias.map_or(0.0, |bias| f64::from(bias[co]));
                        for ci in 0..d.c_in {
                            for i in 0..d.kh {
                                for j in 0..d.kw {
                                    let (y, xx) = (oy + i, ox + j);
                                    if y < d.ph || xx < d.pw || y - d.ph >= d.h || xx - d.pw >= d.w
                                    {
                                        continue;
                                    }
                                    let xv =
                                        x[((b * d.c_in + ci) * d.h + y - d.ph) * d.w + xx - d.pw];
                                    let wv = w[((co * d.c_in + ci) * d.kh + i) * d.kw + j];
                                    s += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        out[((b * d.c_out + co) * ho + oy) * wo + ox] = s;
                    }
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn check(d: ConvDims, with_bias: bool) {
        let x = data(d.batch * d.c_in * d.h * d.w, 1);
        let w = data(d.c_out * d.c_in * d.kh * d.kw, 2);
        let bias = data(d.c_out, 3);
        let bias = with_bias.then_some(bias.as_slice());
        let got = conv2d_f32(&x, &w, bias, d).expect("sizes match");
        let want = reference(&x, &w, bias, d);
        assert_eq!(got.len(), want.len());
        let scale = ((d.c_in * d.kh * d.kw) as f64).sqrt();
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (f64::from(*g) - w).abs())
            .fold(0.0, f64::max);
        assert!(err <= 2e-6 * scale, "{d:?}: max error {err}");
    }

    #[test]
    fn matches_f64_reference() {
        let d = |batch, c_in, h, w, c_out, kh, kw, ph, pw| ConvDims {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            ph,
            pw,
        };
        // SD's 3x3 with padding 1, two images; a 1x1; no padding; uneven kernel and padding; a kernel as wide as the input.
        check(d(2, 5, 37, 40, 7, 3, 3, 1, 1), true);
        // 131 x 42 padded positions: more than one block of rows, the last one shorter.
        check(d(1, 3, 131, 40, 4, 3, 3, 1, 1), true);
        check(d(1, 3, 9, 11, 4, 1, 1, 0, 0), true);
        check(d(1, 4, 8, 6, 3, 3, 3, 0, 0), false);
        check(d(2, 3, 7, 9, 5, 3, 2, 2, 1), true);
        check(d(1, 2, 5, 4, 3, 5, 4, 0, 0), true);
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let d = ConvDims {
            batch: 1,
            c_in: 2,
            h: 4,
            w: 4,
            c_out: 3,
            kh: 3,
            kw: 3,
            ph: 1,
            pw: 1,
        };
        let x = vec![0f32; 32];
        let w = vec![0f32; 54];
        assert!(conv2d_f32(&x, &w, None, d).is_some());
        assert!(conv2d_f32(&x[..31], &w, None, d).is_none());
        assert!(conv2d_f32(&x, &w[..53], None, d).is_none());
        assert!(conv2d_f32(&x, &w, Some(&[0.0; 2]), d).is_none());
        let too_big = ConvDims { kh: 7, ..d };
        assert!(conv2d_f32(&x, &w, None, too_big).is_none());
    }
}
