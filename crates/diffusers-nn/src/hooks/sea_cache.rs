//! SeaCache (diffusers' `hooks/sea_cache.py`), for Wan text-to-video: the noisy latents the
//! transformer gets are filtered with a spectral (Wiener-like) gain that depends on the current
//! sigma; while the accumulated relative change of that indicator since the last full call
//! stays under `threshold`, every block is skipped and the last residual of the blocks
//! (linearly extrapolated over the step with `residual_order = 1`) is added to the first
//! block's input.
//!
//! The pipeline must pass the step, the step count and sigma with the cache context and the
//! transformer's raw 5-D latents with [`set_model_input`](super::cache_utils::set_model_input)
//! (WanPipeline does both, as diffusers' built-in Wan T2V adapter takes `hidden_states`);
//! without them every call computes (diffusers' fail-open mode): on Flux and HunyuanVideo,
//! whose pipelines pass neither (diffusers 0.42.1 has no adapter for them), it never skips.

use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use super::cache_utils::{CacheError, CacheMethod, PerContext, parse_value, unknown_option};
use super::{BlockStates, CallInfo};
use diffusers_core::config::ConfigMeta;

/// `SeaCacheConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeaCacheConfig {
    /// Accumulated indicator distance at which a call computes.
    pub threshold: f64,
    /// 0: reuse the last residual; 1: extrapolate it linearly from the last two.
    pub residual_order: usize,
    /// The first steps always compute.
    pub retention_steps: usize,
    /// The last steps always compute.
    pub cache_end_steps: usize,
    /// Most calls skipped in a row (0: no limit).
    pub max_consecutive_cached: usize,
    /// The exponent of the clean signal's power law.
    pub power_exp: f64,
    /// Keys this crate does not know.
    #[serde(flatten)]
    pub meta: ConfigMeta,
}

impl Default for SeaCacheConfig {
    fn default() -> Self {
        Self {
            threshold: 0.25,
            residual_order: 1,
            retention_steps: 1,
            cache_end_steps: 1,
            max_consecutive_cached: 2,
            power_exp: 3.0,
            meta: ConfigMeta::default(),
        }
    }
}

const OPTIONS: [&str; 6] = [
    "threshold",
    "residual_order",
    "retention_steps",
    "cache_end_steps",
    "max_consecutive_cached",
    "power_exp",
];

impl SeaCacheConfig {
    pub(crate) fn from_options(pairs: &[(&str, &str)]) -> Result<Self, CacheError> {
        let m = "seacache";
        let mut c = Self::default();
        for (k, v) in pairs {
            match *k {
                "threshold" => c.threshold = parse_value(m, k, v)?,
                "residual_order" => c.residual_order = parse_value(m, k, v)?,
                "retention_steps" => c.retention_steps = parse_value(m, k, v)?,
                "cache_end_steps" => c.cache_end_steps = parse_value(m, k, v)?,
                "max_consecutive_cached" => c.max_consecutive_cached = parse_value(m, k, v)?,
                "power_exp" => c.power_exp = parse_value(m, k, v)?,
                _ => return Err(unknown_option(m, k, &OPTIONS)),
            }
        }
        Ok(c)
    }

    /// diffusers' `__post_init__` checks.
    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        if !self.threshold.is_finite() || self.threshold < 0.0 {
            return Err(CacheError::Threshold {
                method: "seacache",
                threshold: self.threshold,
            });
        }
        if self.residual_order > 1 {
            return Err(CacheError::Invalid(format!(
                "seacache: residual_order must be 0 or 1, got {}",
                self.residual_order
            )));
        }
        if !self.power_exp.is_finite() || self.power_exp <= 0.0 {
            return Err(CacheError::Invalid(format!(
                "seacache: power_exp must be a positive number, got {}",
                self.power_exp
            )));
        }
        Ok(())
    }
}

/// What the current model call gives the gate (diffusers' `_SeaCacheForwardMetadata`).
#[derive(Debug, Clone)]
struct Meta {
    step: usize,
    sigma: f64,
    steps: usize,
    /// Per batch element, the latent `[C, T, H, W]` as f32 values with its dims.
    raw: RawLatents,
}

/// Per batch element, a latent `[C, T, H, W]` as f32 values with its dims.
type RawLatents = Vec<(Vec<f32>, [usize; 4])>;

#[derive(Debug)]
struct State<B: Backend> {
    history: Vec<(usize, Tensor<B, 3>)>,
    gate_key: Option<(usize, u64)>,
    gate_should_compute: bool,
    previous_indicator: Option<Vec<Vec<f32>>>,
    accumulated_distance: f64,
    consecutive_cached: usize,
    skip_remaining: bool,
    full_execution_pending: bool,
    cacheable_execution: bool,
    step_index: Option<usize>,
    gen_input: Option<Tensor<B, 3>>,
}

impl<B: Backend> Default for State<B> {
    fn default() -> Self {
        Self {
            history: Vec::new(),
            gate_key: None,
            gate_should_compute: true,
            previous_indicator: None,
            accumulated_distance: 0.0,
            consecutive_cached: 0,
            skip_remaining: false,
            full_execution_pending: false,
            cacheable_execution: false,
            step_index: None,
            gen_input: None,
        }
    }
}

impl<B: Backend> State<B> {
    fn reset_forward(&mut self) {
        self.skip_remaining = false;
        self.full_execution_pending = false;
        self.cacheable_execution = false;
        self.step_index = None;
        self.gen_input = None;
    }

    fn reset_trajectory(&mut self) {
        self.history.clear();
        self.gate_key = None;
        self.gate_should_compute = true;
        self.previous_indicator = None;
        self.accumulated_distance = 0.0;
        self.consecutive_cached = 0;
    }
}

/// The SeaCache hook of one model (diffusers' root, leader, block and tail hooks).
#[derive(Debug)]
pub(crate) struct SeaCache<B: Backend> {
    config: SeaCacheConfig,
    head: String,
    tail: String,
    blocks: Vec<String>,
    state: PerContext<State<B>>,
    pending_input: Mutex<Option<RawLatents>>,
    meta: Mutex<Option<Meta>>,
}

impl<B: Backend> SeaCache<B> {
    pub(crate) fn new(config: SeaCacheConfig, blocks: Vec<String>) -> Result<Self, CacheError> {
        let (Some(head), Some(tail)) = (blocks.first().cloned(), blocks.last().cloned()) else {
            return Err(CacheError::TooFewBlocks {
                method: "seacache",
                needed: 1,
                found: 0,
            });
        };
        Ok(Self {
            config,
            head,
            tail,
            blocks,
            state: PerContext::default(),
            pending_input: Mutex::new(None),
            meta: Mutex::new(None),
        })
    }

    fn meta(&self) -> Option<Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// diffusers' `resolve_gate`.
    fn resolve_gate(&self, s: &mut State<B>, meta: &Meta, indicator: Vec<Vec<f32>>) -> bool {
        let c = &self.config;
        let key = (meta.step, meta.sigma.to_bits());
        if s.gate_key == Some(key) {
            return s.gate_should_compute;
        }
        let non_adjacent = s.gate_key.is_some_and(|(k, _)| meta.step != k + 1);
        if non_adjacent {
            tracing::warn!("SeaCache received non-adjacent scheduler steps; running full");
            s.reset_trajectory();
        }
        let retained = meta.step < c.retention_steps;
        let cache_end = meta.step + c.cache_end_steps >= meta.steps;
        let max_consecutive =
            c.max_consecutive_cached > 0 && s.consecutive_cached >= c.max_consecutive_cached;
        let forced = non_adjacent
            || retained
            || cache_end
            || s.previous_indicator.is_none()
            || max_consecutive;
        let mut candidate = 0.0;
        let should_compute = if forced {
            true
        } else {
            let prev = s.previous_indicator.as_deref().unwrap_or_default();
            let distance = if prev.len() != indicator.len() || indicator.is_empty() {
                f64::INFINITY
            } else {
                let mut d = 0.0;
                for (cur, prev) in indicator.iter().zip(prev) {
                    if cur.len() != prev.len() {
                        d = f64::INFINITY;
                        break;
                    }
                    let n = cur.len().max(1) as f64;
                    let num: f64 = cur
                        .iter()
                        .zip(prev)
                        .map(|(a, b)| f64::from((a - b).abs()))
                        .sum::<f64>()
                        / n;
                    let den: f64 = prev.iter().map(|b| f64::from(b.abs())).sum::<f64>() / n;
                    // f32 on diffusers' side: mean|cur - prev| / (mean|prev| + 1e-16).
                    d += f64::from((num as f32) / (den as f32 + 1e-16));
                }
                d / indicator.len() as f64
            };
            candidate = s.accumulated_distance + distance;
            !distance.is_finite() || candidate >= c.threshold
        };
        s.accumulated_distance = if should_compute { 0.0 } else { candidate };
        s.gate_key = Some(key);
        s.gate_should_compute = should_compute;
        s.previous_indicator = Some(indicator);
        should_compute
    }
}

/// The per-axis gain of diffusers' `_apply_sea_filter` (f32, as torch computes it).
fn axis_gain(n: usize, sigma: f64, power_exp: f64) -> Vec<f32> {
    let s = sigma.clamp(1e-6, 1.0 - 1e-6);
    let signal = (1.0 - s) as f32;
    let (signal2, noise2) = (((1.0 - s) * (1.0 - s)) as f32, (s * s) as f32);
    let step = 1.0f32 / n as f32;
    (0..n)
        .map(|i| {
            // torch.fft.fftfreq: [0, 1, .., (n-1)/2, -(n/2), .., -1] / n.
            let k = if i < n.div_ceil(2) {
                i as f32
            } else {
                i as f32 - n as f32
            };
            let f = k * step;
            let clean = 1.0f32 / (f.abs().powf(power_exp as f32) + 1e-16);
            signal * clean / (signal2 * clean + noise2 + 1e-16)
        })
        .collect()
}

/// Circular filtering along one axis of a `[T, H, W]` block with the real, even gain `g`
/// (`real(ifft(g * fft(x)))` as one convolution).
fn filter_axis(x: &mut [f64], dims: [usize; 3], axis: usize, g: &[f64]) {
    let n = dims[axis];
    // The kernel: (1/n) sum_k g[k] cos(2 pi k d / n).
    let kernel: Vec<f64> = (0..n)
        .map(|d| {
            g.iter()
                .enumerate()
                .map(|(k, gk)| gk * (2.0 * std::f64::consts::PI * (k * d) as f64 / n as f64).cos())
                .sum::<f64>()
                / n as f64
        })
        .collect();
    let strides = [dims[1] * dims[2], dims[2], 1];
    let stride = strides[axis];
    let mut line = vec![0.0; n];
    let total: usize = dims.iter().product();
    for base in 0..total {
        // Visit each line once, from its first element.
        if !(base / stride).is_multiple_of(n) {
            continue;
        }
        for (j, v) in line.iter_mut().enumerate() {
            *v = x[base + j * stride];
        }
        for i in 0..n {
            let mut acc = 0.0;
            for (j, v) in line.iter().enumerate() {
                acc += kernel[(i + n - j) % n] * v;
            }
            x[base + i * stride] = acc;
        }
    }
}

/// diffusers' `_build_indicator` for one latent `[C, T, H, W]`: each channel filtered over
/// (T, H, W), returned in `[T, H, W, C]` order as f32.
fn indicator(values: &[f32], dims: [usize; 4], sigma: f64, power_exp: f64) -> Vec<f32> {
    let [c, t, h, w] = dims;
    let gains: Vec<Vec<f32>> = [t, h, w]
        .iter()
        .map(|&n| axis_gain(n, sigma, power_exp))
        .collect();
    // Normalised to unit mean (the mean of an outer product is the product of the means).
    let mean: f64 = gains
        .iter()
        .map(|g| g.iter().map(|&v| f64::from(v)).sum::<f64>() / g.len().max(1) as f64)
        .product();
    let norm = if mean.is_finite() && mean > 0.0 {
        mean
    } else {
        1.0
    };
    let g64: Vec<Vec<f64>> = gains
        .iter()
        .map(|g| g.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let plane = t * h * w;
    let mut out = vec![0.0f32; plane * c];
    for ch in 0..c {
        let mut x: Vec<f64> = values[ch * plane..(ch + 1) * plane]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        for (axis, g) in g64.iter().enumerate() {
            filter_axis(&mut x, [t, h, w], axis, g);
        }
        for (i, v) in x.iter().enumerate() {
            out[i * c + ch] = (v / norm) as f32;
        }
    }
    out
}

impl<B: Backend> CacheMethod<B> for SeaCache<B> {
    fn hooks(&self, name: &str) -> bool {
        self.blocks.iter().any(|b| b == name)
    }

    fn set_model_input(&self, latents: Tensor<B, 5>) {
        let [b, c, t, h, w] = latents.dims();
        let values = latents
            .cast(DType::F32)
            .into_data()
            .to_vec::<f32>()
            .unwrap_or_default();
        let per = c * t * h * w;
        let raw = (0..b)
            .filter_map(|i| values.get(i * per..(i + 1) * per))
            .map(|v| (v.to_vec(), [c, t, h, w]))
            .collect();
        *self.pending_input.lock().unwrap_or_else(|e| e.into_inner()) = Some(raw);
    }

    fn on_model_call(&self, info: &CallInfo<'_>) {
        let raw = self
            .pending_input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let meta = match (info.step, info.sigma, raw) {
            (Some((step, steps)), Some(sigma), Some(raw))
                if step < steps && sigma.is_finite() && (0.0..=1.0).contains(&sigma) =>
            {
                (!raw.is_empty()).then_some(Meta {
                    step,
                    sigma,
                    steps,
                    raw,
                })
            }
            _ => None,
        };
        if meta.is_none() {
            tracing::debug!("SeaCache: no step, sigma or latents for this call; running full");
        }
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = meta;
    }

    fn block_forward(
        &self,
        info: &CallInfo<'_>,
        states: BlockStates<B>,
        original: &mut dyn FnMut(BlockStates<B>) -> BlockStates<B>,
    ) -> BlockStates<B> {
        let ctx = info.context;
        if info.name == self.head {
            let meta = self.meta();
            let residual = self.state.with(ctx, |s| {
                s.reset_forward();
                s.full_execution_pending = true;
                s.gen_input = Some(states.hidden_states.clone());
                let meta = meta.as_ref()?;
                s.step_index = Some(meta.step);
                s.cacheable_execution = true;
                let ind: Vec<Vec<f32>> = meta
                    .raw
                    .iter()
                    .map(|(v, d)| indicator(v, *d, meta.sigma, self.config.power_exp))
                    .collect();
                let compute = self.resolve_gate(s, meta, ind);
                if compute || s.history.is_empty() {
                    if !compute {
                        s.accumulated_distance = 0.0;
                    }
                    return None;
                }
                let hist = &s.history;
                let (latest_step, latest) = hist.last()?.clone();
                let mut residual = latest.clone();
                if self.config.residual_order == 1 && hist.len() >= 2 {
                    let (prev_step, prev) = hist[hist.len() - 2].clone();
                    if latest_step != prev_step {
                        let scale = (meta.step as f64 - latest_step as f64)
                            / (latest_step as f64 - prev_step as f64);
                        residual = latest.clone() + (latest - prev) * scale as f32;
                    }
                }
                if residual.dims() != states.hidden_states.dims() {
                    s.history.clear();
                    s.accumulated_distance = 0.0;
                    return None;
                }
                s.skip_remaining = true;
                s.full_execution_pending = false;
                s.consecutive_cached += 1;
                Some(residual)
            });
            if let Some(res) = residual {
                return BlockStates::new(states.hidden_states + res, states.encoder_hidden_states);
            }
        } else if self.state.with(ctx, |s| s.skip_remaining) {
            return states;
        }
        let out = original(states);
        if info.name == self.tail {
            self.state.with(ctx, |s| {
                if s.skip_remaining || !s.full_execution_pending {
                    return;
                }
                s.consecutive_cached = 0;
                if let (true, Some(step), Some(input)) =
                    (s.cacheable_execution, s.step_index, s.gen_input.clone())
                    && input.dims() == out.hidden_states.dims()
                {
                    s.history.push((step, out.hidden_states.clone() - input));
                    let keep = self.config.residual_order + 1;
                    if s.history.len() > keep {
                        let drop = s.history.len() - keep;
                        s.history.drain(..drop);
                    }
                }
            });
        }
        out
    }

    fn reset(&self) {
        self.state.clear();
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.pending_input.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
