//! Random numbers that reproduce PyTorch's CPU generator.
//!
//! [`TorchGenerator::new(seed)`](TorchGenerator::new) is `torch.Generator("cpu").manual_seed(seed)`:
//! a Mersenne Twister (MT19937) with torch's seeding, its 24-bit (f32) and 53-bit (f64) uniform
//! draws, and torch's normal sampling: tensors of 16 or more elements are filled in groups of 16
//! by Box-Muller over pre-drawn uniforms (the last group recomputed over fresh uniforms when the
//! size is not a multiple of 16); smaller tensors draw one f64 normal at a time, with the cached
//! second value of each Box-Muller pair, as `at::normal_distribution<double>` does.
//!
//! torch's x86 build fills the 16-groups with AVX2 approximations of `log`/`sin`/`cos`
//! (`avx_mathfun`); this crate uses the platform's `f32` functions, so those values agree to about
//! one unit in the sixth decimal (measured by the tests), and small tensors agree exactly.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};

const N: usize = 624;
const M: usize = 397;

/// PyTorch's CPU random generator state (`torch.Generator("cpu")`).
#[derive(Clone)]
pub struct TorchGenerator {
    state: [u32; N],
    index: usize,
    next_double_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("index", &self.index)
            .finish()
    }
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)` (torch keeps the low 32 bits for MT19937).
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            state,
            index: N,
            next_double_normal: None,
        }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut v = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }

    /// The next 32 random bits (`generator->random()`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// The next 64 random bits (`generator->random64()`: two draws, the first high).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// A uniform f32 in `[0, 1)` from 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        ((self.next_u32() & ((1 << 24) - 1)) as f32) * (1.0 / (1u32 << 24) as f32)
    }

    /// A uniform f64 in `[0, 1)` from 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        ((self.next_u64() & ((1u64 << 53) - 1)) as f64) * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal as `at::normal_distribution<double>` draws it.
    pub fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    fn fill16(data: &mut [f32]) {
        for j in 0..8 {
            let u1 = 1.0f32 - data[j];
            let u2 = data[j + 8];
            let radius = (-2.0f32 * u1.ln()).sqrt();
            let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
            data[j] = radius * theta.cos();
            data[j + 8] = radius * theta.sin();
        }
    }

    /// `torch.randn(n, generator=g, dtype=torch.float32)`, flattened.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for i in (0..n - 15).step_by(16) {
            Self::fill16(&mut data[i..i + 16]);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            Self::fill16(tail);
        }
        data
    }

    /// `torch.randn(n, generator=g, dtype=torch.float64)`, flattened.
    pub fn randn_f64(&mut self, n: usize) -> Vec<f64> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64()).collect();
        }
        let mut data: Vec<f64> = (0..n).map(|_| self.uniform_f64()).collect();
        let fill = |d: &mut [f64]| {
            for j in 0..8 {
                let u1 = 1.0 - d[j];
                let u2 = d[j + 8];
                let radius = (-2.0 * u1.ln()).sqrt();
                let theta = 2.0 * std::f64::consts::PI * u2;
                d[j] = radius * theta.cos();
                d[j + 8] = radius * theta.sin();
            }
        };
        for i in (0..n - 15).step_by(16) {
            fill(&mut data[i..i + 16]);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f64();
            }
            fill(tail);
        }
        data
    }
}

/// A 16-bit float type torch can draw normals in directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfType {
    /// `torch.bfloat16` (8 significant bits).
    BF16,
    /// `torch.float16` (11 significant bits).
    F16,
}

impl HalfType {
    /// Rounds an f32 to this type (round to nearest even, as c10 does) and back.
    fn round(self, x: f32) -> f32 {
        match self {
            HalfType::BF16 => half::bf16::from_f32(x).to_f32(),
            HalfType::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

impl TorchGenerator {
    /// `torch.randn(n, generator=g, dtype=torch.bfloat16 / torch.float16)`, as f32 values that are
    /// exactly representable in the type: torch samples half types in f32 groups of 16 (or through
    /// f64 below 16 elements), then rounds to the type.
    pub fn randn_half(&mut self, n: usize, t: HalfType) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| t.round(self.normal_f64() as f32)).collect();
        }
        // Unlike the f32 path, only whole groups of 16 are pre-drawn; a remainder is covered by
        // 16 fresh uniforms written over the last 16 values (measured against torch 2.15).
        let whole = n / 16 * 16;
        let mut data: Vec<f32> = (0..whole).map(|_| self.uniform_f32()).collect();
        for group in data.chunks_mut(16) {
            Self::fill16(group);
        }
        data.resize(n, 0.0);
        if !n.is_multiple_of(16) {
            let mut tail: Vec<f32> = (0..16).map(|_| self.uniform_f32()).collect();
            Self::fill16(&mut tail);
            data[n - 16..].copy_from_slice(&tail);
        }
        data.into_iter().map(|v| t.round(v)).collect()
    }
}

/// The generators diffusers' `randn_tensor` accepts: one for the whole batch, or one per sample.
#[derive(Debug)]
pub enum Generators<'a> {
    /// `generator=torch.Generator(...)`.
    One(&'a mut TorchGenerator),
    /// `generator=[g0, g1, ...]`, one per batch element.
    PerSample(&'a mut [TorchGenerator]),
}

/// diffusers' `randn_tensor(shape, generator, dtype)` on the CPU, moved to `device`: f32 (and
/// f64) draws for float types, torch's own bf16/f16 sampling for half types. With one generator
/// per sample, each sample is drawn with its own generator.
pub fn randn_tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    generators: Generators<'_>,
    device: &B::Device,
    dtype: DType,
) -> Result<Tensor<B, D>, crate::Error> {
    let numel: usize = shape.iter().product();
    // diffusers draws directly in the latents' dtype: half types have their own sampling path.
    let draw = |g: &mut TorchGenerator, n: usize| match dtype {
        DType::BF16 => g.randn_half(n, HalfType::BF16),
        DType::F16 => g.randn_half(n, HalfType::F16),
        _ => g.randn(n),
    };
    let values = match generators {
        Generators::One(g) => draw(g, numel),
        Generators::PerSample(gs) => {
            let batch = shape.first().copied().unwrap_or(1);
            if gs.len() != batch {
                return Err(crate::Error::GeneratorCount {
                    generators: gs.len(),
                    batch,
                });
            }
            let per = numel / batch.max(1);
            gs.iter_mut().flat_map(|g| draw(g, per)).collect()
        }
    };
    Ok(Tensor::from_data(
        TensorData::new(values, shape),
        (device, dtype),
    ))
}
