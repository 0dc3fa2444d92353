//! Group normalisation for the CPU backend ([`Cpu`](diffusers_core::backend::Cpu)), f32.
//!
//! Composed of burn ops, `GroupNorm` makes six passes over its input on burn-flex (the mean,
//! `x - mean`, its square, the sum, then `x·a` and `+ b`), each allocating a fresh tensor:
//! 18x PyTorch's one-pass kernel at `[1, 320, 64, 64]` (docs/PERFORMANCE.md). This kernel does
//! what PyTorch's CPU kernel does: per `(sample, group)`, in parallel on rayon's pool, the mean
//! and the biased variance of the group's contiguous values, then `y = x·a + b` per channel with
//! `a = γ·rstd`, `b = β - mean·a`, in place; the loops vectorise (AVX-512/AVX2 chosen at run
//! time).

use rayon::prelude::*;

use crate::host_math::lane_sum;

/// Normalises `x` (`[n, c, spatial]` contiguous, `spatial` = the product of the trailing dims)
/// in place over `groups` groups of channels. `weight`/`bias` hold `c` values. `false` (and `x`
/// untouched) when the sizes do not fit.
pub(crate) fn group_norm_f32(
    x: &mut [f32],
    sizes: [usize; 3],
    groups: usize,
    eps: f32,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> bool {
    let Some(group_len) = group_len(x.len(), sizes, groups, weight, bias) else {
        return false;
    };
    x.par_chunks_mut(group_len)
        .enumerate()
        .for_each(|(i, chunk)| {
            let group = Group::new(i, sizes, groups, eps, weight, bias);
            pulp::Arch::new().dispatch(NormalizeGroup {
                group,
                target: Target::InPlace(chunk),
            });
        });
    true
}

/// [`group_norm_f32`] reading `src` and writing a fresh vector (for an input whose storage is
/// shared, which normalising in place would first copy); `None` when the sizes do not fit.
pub(crate) fn group_norm_into_f32(
    src: &[f32],
    sizes: [usize; 3],
    groups: usize,
    eps: f32,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let group_len = group_len(src.len(), sizes, groups, weight, bias)?;
    let mut out = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(group_len)
        .zip(src.par_chunks(group_len))
        .enumerate()
        .for_each(|(i, (chunk, src))| {
            let group = Group::new(i, sizes, groups, eps, weight, bias);
            pulp::Arch::new().dispatch(NormalizeGroup {
                group,
                target: Target::Fresh(src, chunk),
            });
        });
    // SAFETY: the first `src.len()` elements of the capacity were all initialised: the
    // chunks above cover them exactly (`group_len` divides `src.len()`), and
    // `NormalizeGroup` writes every element of its chunk (the rows of `spatial` values of
    // `chunk` and `src` pair up one to one, since `spatial` divides `group_len`).
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(src.len());
    }
    Some(out)
}

/// Values per `(sample, group)`, when `len` values of `[n, c, spatial]` split into `groups`
/// groups and the affine parameters hold `c` values; `None` otherwise.
fn group_len(
    len: usize,
    [n, c, spatial]: [usize; 3],
    groups: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Option<usize> {
    let fits = groups > 0
        && c.is_multiple_of(groups)
        && len == n * c * spatial
        && spatial > 0
        && n > 0
        && weight.is_none_or(|w| w.len() == c)
        && bias.is_none_or(|b| b.len() == c);
    fits.then(|| c / groups * spatial)
}

/// The `(sample, group)` number `i`: its channels' slices of the affine parameters.
struct Group<'a> {
    spatial: usize,
    eps: f32,
    weight: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
}

impl<'a> Group<'a> {
    fn new(
        i: usize,
        [_, c, spatial]: [usize; 3],
        groups: usize,
        eps: f32,
        weight: Option<&'a [f32]>,
        bias: Option<&'a [f32]>,
    ) -> Self {
        let per_group = c / groups;
        let first = (i % groups) * per_group;
        let range = first..first + per_group;
        Group {
            spatial,
            eps,
            weight: weight.map(|w| &w[range.clone()]),
            bias: bias.map(|b| &b[range]),
        }
    }
}

/// Where a group's values come from and go.
enum Target<'a> {
    InPlace(&'a mut [f32]),
    Fresh(&'a [f32], &'a mut [std::mem::MaybeUninit<f32>]),
}

/// One `(sample, group)`: `per_group` channel rows of `spatial` values.
struct NormalizeGroup<'a> {
    group: Group<'a>,
    target: Target<'a>,
}

impl pulp::WithSimd for NormalizeGroup<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Group {
            spatial,
            eps,
            weight,
            bias,
        } = self.group;
        let values: &[f32] = match &self.target {
            Target::InPlace(chunk) => chunk,
            Target::Fresh(src, _) => src,
        };
        let len = values.len() as f64;
        let mean = (lane_sum(values, |x| x) / len) as f32;
        let var = (lane_sum(values, |x| (x - mean) * (x - mean)) / len) as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        let coefficients = |ch: usize| {
            let a = weight.map_or(1.0, |w| w[ch]) * rstd;
            (a, bias.map_or(0.0, |b| b[ch]) - mean * a)
        };
        match self.target {
            Target::InPlace(chunk) => {
                for (ch, row) in chunk.chunks_exact_mut(spatial).enumerate() {
                    let (a, b) = coefficients(ch);
                    for v in row.iter_mut() {
                        *v = *v * a + b;
                    }
                }
            }
            Target::Fresh(src, out) => {
                let rows = out.chunks_exact_mut(spatial).zip(src.chunks_exact(spatial));
                for (ch, (row, src_row)) in rows.enumerate() {
                    let (a, b) = coefficients(ch);
                    for (v, &x) in row.iter_mut().zip(src_row) {
                        v.write(x * a + b);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_f64_reference() {
        let (n, c, spatial, groups) = (2, 6, 37, 3);
        let mut s = 7u32;
        let x: Vec<f32> = (0..n * c * spatial)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 6.0 + 3.0
            })
            .collect();
        let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
        let b: Vec<f32> = (0..c).map(|i| i as f32 * -0.1).collect();
        let mut got = x.clone();
        assert!(group_norm_f32(
            &mut got,
            [n, c, spatial],
            groups,
            1e-5,
            Some(&w),
            Some(&b)
        ));
        let fresh = group_norm_into_f32(&x, [n, c, spatial], groups, 1e-5, Some(&w), Some(&b));
        assert_eq!(
            fresh.as_ref(),
            Some(&got),
            "into a fresh vector and in place agree"
        );
        let per = c / groups * spatial;
        for (gi, group) in x.chunks(per).enumerate() {
            let mean = group.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
            let var = group
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / per as f64;
            for (j, &v) in group.iter().enumerate() {
                let ch = (gi % groups) * (c / groups) + j / spatial;
                let want = (v as f64 - mean) / (var + 1e-5).sqrt() * w[ch] as f64 + b[ch] as f64;
                let err = (got[gi * per + j] as f64 - want).abs();
                assert!(err < 2e-6, "group {gi}, element {j}: error {err}");
            }
        }
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        let mut x = vec![1.0f32; 12];
        assert!(!group_norm_f32(&mut x, [1, 6, 2], 4, 1e-5, None, None));
        assert!(!group_norm_f32(&mut x, [1, 6, 3], 3, 1e-5, None, None));
        assert!(!group_norm_f32(
            &mut x,
            [1, 6, 2],
            3,
            1e-5,
            Some(&[1.0; 5]),
            None
        ));
        assert!(group_norm_into_f32(&x[..11], [1, 6, 2], 3, 1e-5, None, None).is_none());
        assert!(group_norm_into_f32(&x, [1, 6, 2], 4, 1e-5, None, None).is_none());
        assert_eq!(x, vec![1.0f32; 12]);
    }
}
