//! Sinusoidal timestep embeddings and rotary position embeddings, as diffusers computes them.

use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use diffusers_core::backend::with_cpu_f32;

/// diffusers' `get_timestep_embedding`: `timesteps: [N]` to `[N, embedding_dim]`.
///
/// Frequencies are computed in f32 exactly as diffusers does; an odd `embedding_dim` gets a
/// zero column. The result has the dtype of `timesteps`' compute (f32).
pub fn get_timestep_embedding<B: Backend>(
    timesteps: Tensor<B, 1>,
    embedding_dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    scale: f64,
    max_period: f64,
) -> Tensor<B, 2> {
    let device = timesteps.device();
    let n = timesteps.dims()[0];
    let half = embedding_dim / 2;
    // exponent = -ln(max_period) * arange(half) / (half - shift), in f32 like torch.
    let log_p = -(max_period.ln()) as f32;
    let denom = (half as f64 - downscale_freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_p * i as f32) / denom).exp())
        .collect();
    let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), (&device, DType::F32));
    let t = timesteps.cast(DType::F32);
    let emb = t.reshape([n, 1]) * freqs.reshape([1, half]);
    let emb = emb * (scale as f32);
    let (sin, cos) = (emb.clone().sin(), emb.cos());
    let mut emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if embedding_dim % 2 == 1 {
        emb = Tensor::cat(vec![emb, Tensor::zeros([n, 1], (&device, DType::F32))], 1);
    }
    emb
}

/// Options of [`get_1d_rotary_pos_embed`], with diffusers' defaults.
#[derive(Debug, Clone, Copy)]
pub struct RopeOptions {
    /// Base of the frequencies.
    pub theta: f64,
    /// Divides the frequencies (context extrapolation).
    pub linear_factor: f64,
    /// Multiplies `theta` (NTK-aware scaling).
    pub ntk_factor: f64,
    /// `true`: each of cos/sin repeated element-wise (`[c0, c0, c1, c1, ...]`, Flux);
    /// `false`: concatenated with itself (`[c0, c1, ..., c0, c1, ...]`).
    pub repeat_interleave_real: bool,
    /// Compute the frequencies in f64 (Flux) instead of f32.
    pub f64_freqs: bool,
}

impl Default for RopeOptions {
    fn default() -> Self {
        Self {
            theta: 10000.0,
            linear_factor: 1.0,
            ntk_factor: 1.0,
            repeat_interleave_real: true,
            f64_freqs: false,
        }
    }
}

/// Host-side `(cos, sin)` values `[len(pos), dim]`, row-major, as f32.
pub fn rotary_cos_sin(dim: usize, pos: &[f64], opts: RopeOptions) -> (Vec<f32>, Vec<f32>) {
    let half = dim / 2;
    let theta = opts.theta * opts.ntk_factor;
    let mut cos = Vec::with_capacity(pos.len() * dim);
    let mut sin = Vec::with_capacity(pos.len() * dim);
    let freqs64: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64) / opts.linear_factor)
        .collect();
    let freqs32: Vec<f32> = (0..half)
        .map(|i| {
            let e = (2 * i) as f32 / dim as f32;
            1.0f32 / (theta as f32).powf(e) / opts.linear_factor as f32
        })
        .collect();
    for &p in pos {
        let (c, s): (Vec<f32>, Vec<f32>) = (0..half)
            .map(|i| {
                if opts.f64_freqs {
                    let a = p * freqs64[i];
                    (a.cos() as f32, a.sin() as f32)
                } else {
                    let a = (p as f32) * freqs32[i];
                    (a.cos(), a.sin())
                }
            })
            .unzip();
        if opts.repeat_interleave_real {
            for i in 0..half {
                cos.extend([c[i], c[i]]);
                sin.extend([s[i], s[i]]);
            }
        } else {
            cos.extend(&c);
            cos.extend(&c);
            sin.extend(&s);
            sin.extend(&s);
        }
    }
    (cos, sin)
}

/// diffusers' `get_1d_rotary_pos_embed(..., use_real=True)`: `(cos, sin)`, each `[len(pos), dim]`.
pub fn get_1d_rotary_pos_embed<B: Backend>(
    dim: usize,
    pos: &[f64],
    opts: RopeOptions,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (c, s) = rotary_cos_sin(dim, pos, opts);
    let n = pos.len();
    (
        Tensor::from_data(TensorData::new(c, [n, dim]), (device, DType::F32)),
        Tensor::from_data(TensorData::new(s, [n, dim]), (device, DType::F32)),
    )
}

/// Multi-axis rotary embedding (Flux's `FluxPosEmbed`): `ids: [seq, n_axes]` positions, one
/// block of `axes_dim[i]` features per axis, frequencies in f64.
pub fn multi_axis_rotary_pos_embed<B: Backend>(
    ids: &[Vec<f64>],
    axes_dim: &[usize],
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let n = ids.len();
    let total: usize = axes_dim.iter().sum();
    let mut cos = vec![0f32; n * total];
    let mut sin = vec![0f32; n * total];
    let mut offset = 0;
    for (axis, &d) in axes_dim.iter().enumerate() {
        let pos: Vec<f64> = ids
            .iter()
            .map(|row| row.get(axis).copied().unwrap_or(0.0))
            .collect();
        let opts = RopeOptions {
            theta,
            f64_freqs: true,
            ..RopeOptions::default()
        };
        let (c, s) = rotary_cos_sin(d, &pos, opts);
        for r in 0..n {
            cos[r * total + offset..r * total + offset + d].copy_from_slice(&c[r * d..(r + 1) * d]);
            sin[r * total + offset..r * total + offset + d].copy_from_slice(&s[r * d..(r + 1) * d]);
        }
        offset += d;
    }
    (
        Tensor::from_data(TensorData::new(cos, [n, total]), (device, DType::F32)),
        Tensor::from_data(TensorData::new(sin, [n, total]), (device, DType::F32)),
    )
}

/// f32 on the CPU backend: [`crate::host_rotary`], in place on `x`'s data, reading `cos` and
/// `sin` where they are; gives `x` back elsewhere (other backends and dtypes, `cos`/`sin` not
/// contiguous f32, sizes the kernel refuses).
fn host_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
    pairing: RotaryPairing,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [_, _, s, d] = x.dims();
    if cos.dims() != [s, d] || sin.dims() != [s, d] || !crate::host::applies::<B>(x.dtype()) {
        return Err(x);
    }
    // Only when both tables can be borrowed (checked before `x`'s data is taken).
    if with_cpu_f32(cos, |_| ()).is_none() || with_cpu_f32(sin, |_| ()).is_none() {
        return Err(x);
    }
    crate::host::in_place_f32(x, |values| {
        with_cpu_f32(cos, |c| {
            with_cpu_f32(sin, |sn| {
                crate::host_rotary::rotary_f32(values, c, sn, [s, d], pairing)
            })
        })
        .flatten()
        .unwrap_or(false)
    })
}

/// How [`apply_rotary_emb`] pairs features (diffusers' `use_real_unbind_dim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryPairing {
    /// `-1`: adjacent pairs `(x0, x1), (x2, x3)...` (Flux, CogVideoX, HunyuanDiT).
    Interleaved,
    /// `-2`: halves `(x_i, x_{i + d/2})` (Stable Audio, CogView4, Cosmos).
    Halves,
}

/// diffusers' `apply_rotary_emb(x, (cos, sin), use_real=True)` for `x: [batch, heads, seq, dim]`
/// and `cos, sin: [seq, dim]`. Computed in f32, returned in `x`'s dtype.
pub fn apply_rotary_emb<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    pairing: RotaryPairing,
) -> Tensor<B, 4> {
    let dtype = x.dtype();
    let [b, h, s, d] = x.dims();
    let x = match host_rotary(x, &cos, &sin, pairing) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let x = x.cast(DType::F32);
    let rotated = match pairing {
        RotaryPairing::Interleaved => {
            let pairs: Tensor<B, 5> = x.clone().reshape([b, h, s, d / 2, 2]);
            let real = pairs.clone().narrow(4, 0, 1);
            let imag = pairs.narrow(4, 1, 1);
            Tensor::cat(vec![imag.neg(), real], 4).reshape([b, h, s, d])
        }
        RotaryPairing::Halves => {
            let real = x.clone().narrow(3, 0, d / 2);
            let imag = x.clone().narrow(3, d / 2, d / 2);
            Tensor::cat(vec![imag.neg(), real], 3)
        }
    };
    let cos: Tensor<B, 4> = cos.cast(DType::F32).unsqueeze();
    let sin: Tensor<B, 4> = sin.cast(DType::F32).unsqueeze();
    let out = x * cos + rotated * sin;
    if dtype == DType::F32 {
        out
    } else {
        out.cast(dtype)
    }
}
