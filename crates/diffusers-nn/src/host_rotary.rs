//! Rotary position embedding for the CPU backend ([`Cpu`](diffusers_core::backend::Cpu)), f32,
//! in place.
//!
//! Composed of burn ops, `apply_rotary_emb` builds the rotated copy of `x` from two strided
//! views and a `cat`, then makes four broadcast passes (`x·cos`, `rot·sin`, the sum): 8 % of a
//! Flux double-stream block. This is one pass over `x`'s rows on rayon's pool, computing what
//! diffusers computes, `x·cos + rot(x)·sin` with `rot` pairing features as
//! [`RotaryPairing`](crate::embeddings::RotaryPairing) says, the products and the sum each
//! rounded to f32 as PyTorch's separate element-wise ops round them.

use rayon::prelude::*;

use crate::embeddings::RotaryPairing;

/// Rotates `x` (`[rows, seq, dim]` contiguous, `rows` = batch · heads) in place with `cos`,
/// `sin` (`[seq, dim]`). `false` (and `x` untouched) when the sizes do not fit.
pub(crate) fn rotary_f32(
    x: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    [seq, dim]: [usize; 2],
    pairing: RotaryPairing,
) -> bool {
    let plane = seq * dim;
    if plane == 0
        || !dim.is_multiple_of(2)
        || !x.len().is_multiple_of(plane)
        || cos.len() != plane
        || sin.len() != plane
    {
        return false;
    }
    x.par_chunks_mut(plane).for_each(|head| {
        let rows = head
            .chunks_exact_mut(dim)
            .zip(cos.chunks_exact(dim).zip(sin.chunks_exact(dim)));
        for (row, (c, s)) in rows {
            match pairing {
                RotaryPairing::Interleaved => {
                    let pairs = row.chunks_exact_mut(2);
                    for ((p, c), s) in pairs.zip(c.chunks_exact(2)).zip(s.chunks_exact(2)) {
                        let (x0, x1) = (p[0], p[1]);
                        p[0] = x0 * c[0] + (-x1) * s[0];
                        p[1] = x1 * c[1] + x0 * s[1];
                    }
                }
                RotaryPairing::Halves => {
                    let half = dim / 2;
                    let (lo, hi) = row.split_at_mut(half);
                    let (c_lo, c_hi) = c.split_at(half);
                    let (s_lo, s_hi) = s.split_at(half);
                    for i in 0..half {
                        let (x0, x1) = (lo[i], hi[i]);
                        lo[i] = x0 * c_lo[i] + (-x1) * s_lo[i];
                        hi[i] = x1 * c_hi[i] + x0 * s_hi[i];
                    }
                }
            }
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * k).sin() * 3.0).collect()
    }

    #[test]
    fn matches_the_definition() {
        let (rows, seq, dim) = (3, 5, 8);
        let x = values(rows * seq * dim, 0.37);
        let cos = values(seq * dim, 0.11);
        let sin = values(seq * dim, 0.23);
        for pairing in [RotaryPairing::Interleaved, RotaryPairing::Halves] {
            let mut got = x.clone();
            assert!(rotary_f32(&mut got, &cos, &sin, [seq, dim], pairing));
            for (i, &g) in got.iter().enumerate() {
                let (j, pos) = (i % dim, (i / dim) % seq);
                let partner = match pairing {
                    RotaryPairing::Interleaved if j % 2 == 0 => -x[i + 1],
                    RotaryPairing::Interleaved => x[i - 1],
                    RotaryPairing::Halves if j < dim / 2 => -x[i + dim / 2],
                    RotaryPairing::Halves => x[i - dim / 2],
                };
                let want = x[i] * cos[pos * dim + j] + partner * sin[pos * dim + j];
                assert_eq!(g, want, "{pairing:?}, element {i}");
            }
        }
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        let mut x = vec![1.0f32; 24];
        let cs = vec![0.5f32; 12];
        assert!(!rotary_f32(&mut x, &cs, &cs, [4, 3], RotaryPairing::Halves));
        assert!(!rotary_f32(
            &mut x,
            &cs[..8],
            &cs,
            [3, 4],
            RotaryPairing::Halves
        ));
        assert!(!rotary_f32(
            &mut x[..20],
            &cs,
            &cs,
            [3, 4],
            RotaryPairing::Halves
        ));
        assert_eq!(x, vec![1.0f32; 24]);
    }
}
