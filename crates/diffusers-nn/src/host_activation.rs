//! Element-wise activations for the CPU backend ([`Cpu`](diffusers_core::backend::Cpu)), f32,
//! in place.
//!
//! burn-flex computes `exp`, `tanh`, `powf` and `erf` one element at a time through libm:
//! GELU(tanh) alone was 12 % of a Flux double-stream block (`powf` for `x³`, `tanhf`, and the
//! `expm1f` inside it). These loops use the vectorised [`exp_f32`] and run on rayon's pool.
//!
//! Both are written as `x · sigmoid(z)`: SiLU is `x / (1 + exp(-x))`, and the tanh GELU
//! `0.5 x (1 + tanh(u))` equals `x / (1 + exp(-2u))` with `u = √(2/π) (x + 0.044715 x³)`
//! (`(1 + tanh u) / 2 = sigmoid(2u)`), which has no cancellation near `u = 0`.

use rayon::prelude::*;

use crate::host_math::{erf_f32, exp_f32};

/// Elements per rayon task.
const PIECE: usize = 1 << 16;

/// `x = x / (1 + exp(-x))`.
pub(crate) fn silu_f32(xs: &mut [f32]) {
    map_in_place(xs, Act::Silu);
}

/// `x = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
pub(crate) fn gelu_tanh_f32(xs: &mut [f32]) {
    map_in_place(xs, Act::GeluTanh);
}

/// GEGLU's `hidden · gelu(gate)` (exact GELU, `0.5 g (1 + erf(g / √2))`) for `proj: [rows,
/// 2·inner]` holding `[hidden | gate]` in each row; returns `[rows, inner]`. `None` when
/// `proj`'s length is not a multiple of `2·inner`.
pub(crate) fn geglu_f32(proj: &[f32], inner: usize) -> Option<Vec<f32>> {
    if inner == 0 || !proj.len().is_multiple_of(2 * inner) {
        return None;
    }
    let mut out = vec![0.0f32; proj.len() / 2];
    let rows_per_piece = (PIECE / inner).max(1);
    out.par_chunks_mut(rows_per_piece * inner)
        .zip(proj.par_chunks(rows_per_piece * 2 * inner))
        .for_each(|(out, proj)| pulp::Arch::new().dispatch(Geglu { out, proj, inner }));
    Some(out)
}

struct Geglu<'a> {
    out: &'a mut [f32],
    proj: &'a [f32],
    inner: usize,
}

impl pulp::WithSimd for Geglu<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
        for (out, row) in self
            .out
            .chunks_exact_mut(self.inner)
            .zip(self.proj.chunks_exact(2 * self.inner))
        {
            let (hidden, gate) = row.split_at(self.inner);
            for ((o, &h), &g) in out.iter_mut().zip(hidden).zip(gate) {
                *o = h * (0.5 * g * (1.0 + erf_f32(g * FRAC_1_SQRT_2)));
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Act {
    Silu,
    GeluTanh,
}

fn map_in_place(xs: &mut [f32], act: Act) {
    xs.par_chunks_mut(PIECE)
        .for_each(|piece| pulp::Arch::new().dispatch(Apply { piece, act }));
}

struct Apply<'a> {
    piece: &'a mut [f32],
    act: Act,
}

impl pulp::WithSimd for Apply<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        match self.act {
            Act::Silu => {
                for x in self.piece.iter_mut() {
                    *x = *x / (1.0 + exp_f32(-*x));
                }
            }
            Act::GeluTanh => {
                // √(2/π), as PyTorch's kernel (M_SQRT2 · M_2_SQRTPI · 0.5).
                const BETA: f32 = 0.797_884_6;
                const KAPPA: f32 = 0.044_715;
                for x in self.piece.iter_mut() {
                    let v = *x;
                    let u = BETA * (v + KAPPA * v * v * v);
                    *x = v / (1.0 + exp_f32(-2.0 * u));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_math::tests::erf64;

    fn inputs() -> Vec<f32> {
        (0..200_001)
            .map(|i| (i as f32 - 100_000.0) * 1e-3)
            .collect()
    }

    #[test]
    fn silu_matches_f64() {
        let mut got = inputs();
        silu_f32(&mut got);
        for (x, y) in inputs().into_iter().zip(got) {
            let x = x as f64;
            let want = x / (1.0 + (-x).exp());
            assert!(
                (y as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "silu({x}) = {y}, want {want}"
            );
        }
    }

    #[test]
    fn gelu_tanh_matches_f64() {
        let mut got = inputs();
        gelu_tanh_f32(&mut got);
        for (x, y) in inputs().into_iter().zip(got) {
            let x = x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            let want = 0.5 * x * (1.0 + u.tanh());
            assert!(
                (y as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu_tanh({x}) = {y}, want {want}"
            );
        }
    }

    #[test]
    fn geglu_matches_f64() {
        let inner = 300;
        let proj: Vec<f32> = (0..7 * 2 * inner)
            .map(|i| ((i * 37) % 1000) as f32 * 8e-3 - 4.0)
            .collect();
        let got = geglu_f32(&proj, inner).expect("a multiple of 2 * inner");
        for (r, row) in proj.chunks(2 * inner).enumerate() {
            for j in 0..inner {
                let (h, g) = (row[j] as f64, row[inner + j] as f64);
                let phi = 0.5 * (1.0 + erf64(g / std::f64::consts::SQRT_2));
                let want = h * g * phi;
                let y = got[r * inner + j] as f64;
                // The f32 erf's bound (5e-7 absolute, see host_math::erf_f32) through h · g / 2,
                // plus f32 rounding.
                let bound = 2.5e-7 * (h * g).abs() + 1e-6 * want.abs().max(1e-3);
                assert!(
                    (y - want).abs() <= bound,
                    "geglu({h}, {g}) = {y}, want {want}"
                );
            }
        }
        assert!(geglu_f32(&proj[1..], inner).is_none());
    }

    #[test]
    fn extremes_saturate() {
        let mut xs = [-1e4f32, -100.0, 100.0, 1e4, 0.0];
        silu_f32(&mut xs);
        assert_eq!(&xs[2..], &[100.0, 1e4, 0.0]);
        assert!(xs[0] <= 0.0 && xs[0] > -1e-30 && xs[1] <= 0.0 && xs[1] > -1e-30);
        let mut xs = [-1e4f32, 1e4, 0.0];
        gelu_tanh_f32(&mut xs);
        assert_eq!(&xs[1..], &[1e4, 0.0]);
        assert!(xs[0] <= 0.0 && xs[0] > -1e-30);
    }
}
