//! bitsandbytes' 4-bit weights (NF4 and FP4), as `bitsandbytes.functional.quantize_4bit` and
//! `dequantize_4bit` lay them out: the tensor flattened row-major, cut into blocks of
//! `blocksize` (64) elements, each scaled by its absolute maximum (`absmax`, f32) and mapped to
//! the nearest of 16 code values; two 4-bit indices per byte, the first element in the high
//! nibble. With double quantization (`bnb_4bit_use_double_quant`) the absmax values, less their
//! mean (`offset`), are themselves quantized to 8 bits with bitsandbytes' dynamic map in blocks
//! of 256 (`quantize_blockwise`).
//!
//! The quantizer follows bitsandbytes 0.50's CPU path: the 4-bit step is its default (PyTorch)
//! kernel (`clamp(x * (1 / absmax), -1, 1)` then the bucket of the code's midpoints), the 8-bit
//! nested step its C kernel (`x / absmax`, a binary search to the left neighbour, then the
//! closer of it and the next code value).

use crate::{Error, Result};

/// Which 4-bit code (`bnb_4bit_quant_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bnb4bitType {
    /// NormalFloat 4 (`"nf4"`).
    Nf4,
    /// bitsandbytes' 4-bit float (`"fp4"`).
    Fp4,
}

impl Bnb4bitType {
    /// The name bitsandbytes and diffusers use (`"nf4"`, `"fp4"`).
    pub fn name(self) -> &'static str {
        match self {
            Bnb4bitType::Nf4 => "nf4",
            Bnb4bitType::Fp4 => "fp4",
        }
    }

    /// Parses `"nf4"`/`"fp4"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "nf4" => Ok(Bnb4bitType::Nf4),
            "fp4" => Ok(Bnb4bitType::Fp4),
            other => Err(Error::Invalid(format!(
                "unknown 4-bit quant type `{other}` (expected nf4 or fp4)"
            ))),
        }
    }

    /// The 16 code values (`bitsandbytes.functional.get_4bit_type`, the `quant_map` saved
    /// with a weight).
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            Bnb4bitType::Nf4 => &NF4_CODE,
            Bnb4bitType::Fp4 => &FP4_CODE,
        }
    }

    /// The values bitsandbytes' CPU kernel decodes (`dDequantizeFP4` gives index 8, the FP4
    /// code's sign bit over a zero, as -0.0 where the code table holds +0.0).
    fn dequant_table(self) -> &'static [f32; 16] {
        match self {
            Bnb4bitType::Nf4 => &NF4_CODE,
            Bnb4bitType::Fp4 => &FP4_DEQUANT,
        }
    }
}

/// bitsandbytes' NF4 code (`get_4bit_type("nf4")`, already of absolute maximum 1).
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// bitsandbytes' FP4 code (`get_4bit_type("fp4")`: the values below divided by 12 in f32; its
/// `-0` is a Python integer, so both zeros are +0).
pub const FP4_CODE: [f32; 16] = {
    let v = [
        0.0f32, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0,
        -3.0,
    ];
    let mut out = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = v[i] / 12.0;
        i += 1;
    }
    out
};

/// [`FP4_CODE`] as bitsandbytes' CPU kernel decodes it (index 8 is -0.0).
const FP4_DEQUANT: [f32; 16] = {
    let mut t = FP4_CODE;
    t[8] = -0.0;
    t
};

/// The block sizes bitsandbytes accepts.
pub const BLOCK_SIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// The absmax of each block: plain f32, or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block (`weight.absmax`).
    Plain(Vec<f32>),
    /// `bnb_4bit_use_double_quant`: `absmax[i] = code[q[i]] * nested_absmax[i / nested_blocksize] + offset`.
    Nested {
        /// One byte per block (`weight.absmax`, uint8).
        q: Vec<u8>,
        /// One f32 per nested block (`weight.nested_absmax`).
        nested_absmax: Vec<f32>,
        /// The 256-value dynamic map (`weight.nested_quant_map`).
        code: Vec<f32>,
        /// Blocks per nested block (256).
        nested_blocksize: usize,
        /// The mean subtracted before quantizing (`nested_offset`).
        offset: f32,
    },
}

impl Absmax {
    /// The absmax of block `i` (f32, as bitsandbytes dequantizes it).
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Absmax::Plain(v) => v[i],
            Absmax::Nested {
                q,
                nested_absmax,
                code,
                nested_blocksize,
                offset,
            } => code[q[i] as usize] * nested_absmax[i / nested_blocksize] + offset,
        }
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(v) => v.len(),
            Absmax::Nested { q, .. } => q.len(),
        }
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        match self {
            Absmax::Plain(v) => 4 * v.len(),
            Absmax::Nested {
                q,
                nested_absmax,
                code,
                ..
            } => q.len() + 4 * nested_absmax.len() + 4 * code.len() + 4,
        }
    }
}

/// A 4-bit quantized tensor in bitsandbytes' layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Bnb4bit {
    /// NF4 or FP4.
    pub quant_type: Bnb4bitType,
    /// Elements per block (64 unless configured).
    pub blocksize: usize,
    /// Number of elements (the product of the logical shape).
    pub numel: usize,
    /// Packed indices, two per byte, the first in the high nibble (`weight`, uint8).
    pub data: Vec<u8>,
    /// The blocks' scales.
    pub absmax: Absmax,
}

impl Bnb4bit {
    /// Quantizes `x` (row-major) as `quantize_4bit(x, blocksize, quant_type=..,
    /// compress_statistics=double_quant)`.
    pub fn quantize(
        x: &[f32],
        blocksize: usize,
        quant_type: Bnb4bitType,
        double_quant: bool,
    ) -> Result<Self> {
        if !BLOCK_SIZES.contains(&blocksize) {
            return Err(Error::Invalid(format!(
                "invalid 4-bit block size {blocksize} (bitsandbytes takes {BLOCK_SIZES:?})"
            )));
        }
        if x.is_empty() {
            return Err(Error::Invalid("cannot quantize an empty tensor".into()));
        }
        let code = quant_type.code();
        // The code's order and the midpoints between neighbours (bitsandbytes'
        // `_get_4bit_quantize_bounds`: NF4 is sorted, FP4 is not).
        let mut order: Vec<usize> = (0..16).collect();
        order.sort_by(|&a, &b| code[a].total_cmp(&code[b]).then(a.cmp(&b)));
        // -0.0 and 0.0 compare equal in PyTorch's sort; keep index order between them.
        let sorted: Vec<f32> = order.iter().map(|&i| code[i]).collect();
        let bounds: Vec<f32> = sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let blocks = x.len().div_ceil(blocksize);
        let mut absmax = Vec::with_capacity(blocks);
        let mut data = vec![0u8; x.len().div_ceil(2)];
        for (b, block) in x.chunks(blocksize).enumerate() {
            let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            absmax.push(am);
            let inv = 1.0f32 / am.max(1e-38);
            for (j, &v) in block.iter().enumerate() {
                let s = (v * inv).clamp(-1.0, 1.0);
                // torch.bucketize(s, bounds, right=False): how many bounds are < s.
                let k = bounds.partition_point(|&bd| bd < s);
                let q = order[k] as u8;
                let i = b * blocksize + j;
                if i & 1 == 0 {
                    data[i / 2] |= q << 4;
                } else {
                    data[i / 2] |= q;
                }
            }
        }
        let absmax = if double_quant {
            let offset = mean_f32(&absmax);
            let shifted: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
            let code = dynamic_map();
            let (q, nested_absmax) = quantize_blockwise(&shifted, &code, NESTED_BLOCKSIZE);
            Absmax::Nested {
                q,
                nested_absmax,
                code,
                nested_blocksize: NESTED_BLOCKSIZE,
                offset,
            }
        } else {
            Absmax::Plain(absmax)
        };
        Ok(Bnb4bit {
            quant_type,
            blocksize,
            numel: x.len(),
            data,
            absmax,
        })
    }

    /// Dequantizes elements `start .. start + out.len()` into `out` (`dequantize_4bit`'s
    /// `code[q] * absmax` in f32).
    pub fn dequantize_range(&self, start: usize, out: &mut [f32]) {
        let code = self.quant_type.dequant_table();
        let end = start + out.len();
        debug_assert!(end <= self.numel);
        let mut i = start;
        while i < end {
            let block = i / self.blocksize;
            let block_end = ((block + 1) * self.blocksize).min(end);
            let scale = self.absmax.get(block);
            for (k, o) in out[i - start..block_end - start].iter_mut().enumerate() {
                let e = i + k;
                let byte = self.data[e / 2];
                let q = if e & 1 == 0 { byte >> 4 } else { byte & 0x0f };
                *o = code[q as usize] * scale;
            }
            i = block_end;
        }
    }

    /// Bytes held (packed data and scales).
    pub fn nbytes(&self) -> usize {
        self.data.len() + self.absmax.nbytes()
    }
}

/// Blocks of absmax values per nested block (bitsandbytes' `quantize_blockwise(blocksize=256)`).
pub const NESTED_BLOCKSIZE: usize = 256;

/// `absmax.mean()` as PyTorch computes it on the CPU: an f32 sum in ATen's order (its
/// `vectorized_inner_sum`: 8-lane vectors, four interleaved accumulators, a cascade of four
/// levels, then the tail and the lanes), divided by the count in f32. The order is that of
/// PyTorch's AVX2 kernels (the oracle machine's `get_cpu_capability()`); an AVX-512 build of
/// PyTorch sums 16 lanes and can differ from it in the last bit.
fn mean_f32(v: &[f32]) -> f32 {
    torch_sum_f32(v) / v.len() as f32
}

/// ATen's CPU `sum` of a contiguous f32 vector (AVX2: 8 lanes), bit for bit.
pub fn torch_sum_f32(x: &[f32]) -> f32 {
    const W: usize = 8;
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    type V = [f32; W];
    let add = |a: &mut V, b: &V| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    let vec_size = x.len() / W;
    let vec = |i: usize| -> V {
        let mut v = [0.0; W];
        v.copy_from_slice(&x[i * W..(i + 1) * W]);
        v
    };
    // multi_row_sum over `size` groups of ILP vectors.
    let size = vec_size / ILP;
    let mut partial = [[0.0f32; W]; ILP];
    if size > 0 {
        let ceil_log2 = usize::BITS - (size - 1).leading_zeros();
        let level_power = 4.max(ceil_log2 as usize / LEVELS);
        let level_step = 1usize << level_power;
        let level_mask = level_step - 1;
        let mut acc = [[[0.0f32; W]; ILP]; LEVELS];
        let mut i = 0;
        while i + level_step <= size {
            for _ in 0..level_step {
                for (k, a) in acc[0].iter_mut().enumerate() {
                    add(a, &vec(i * ILP + k));
                }
                i += 1;
            }
            for j in 1..LEVELS {
                let (below, above) = acc.split_at_mut(j);
                for (upper, lower) in above[0].iter_mut().zip(below[j - 1].iter_mut()) {
                    add(upper, lower);
                    *lower = [0.0; W];
                }
                if i & (level_mask << (j * level_power)) != 0 {
                    break;
                }
            }
        }
        while i < size {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, &vec(i * ILP + k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (first, rest) = acc.split_at_mut(1);
            for (a, upper) in first[0].iter_mut().zip(rest[j - 1].iter()) {
                add(a, upper);
            }
        }
        partial = acc[0];
    }
    let mut total = partial[0];
    for i in size * ILP..vec_size {
        add(&mut total, &vec(i));
    }
    for p in &partial[1..] {
        add(&mut total, p);
    }
    let mut out = 0.0f32;
    for &v in &x[vec_size * W..] {
        out += v;
    }
    for v in total {
        out += v;
    }
    out
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`, sorted): the
/// `nested_quant_map` saved with a double-quantized weight.
pub fn dynamic_map() -> Vec<f32> {
    let (max_exponent_bits, non_sign_bits) = (7i32, 7i32);
    let mut data: Vec<f32> = Vec::with_capacity(256);
    let linspace = |n: usize| -> Vec<f32> {
        // torch.linspace(0.1, 1, n) in f32 as ATen's CPU kernel computes it: from both ends
        // towards the middle, `start + step * i` contracted to one fused multiply-add by the
        // compiler (measured: the unfused form differs in the last bit from n = 9 on).
        let (start, end) = (0.1f32, 1.0f32);
        let step = (end - start) / (n - 1) as f32;
        let half = n / 2;
        (0..n)
            .map(|i| {
                if i < half {
                    step.mul_add(i as f32, start)
                } else {
                    (-step).mul_add((n - 1 - i) as f32, end)
                }
            })
            .collect()
    };
    let additional_items = 2i32.pow((non_sign_bits - max_exponent_bits) as u32) - 1;
    for i in 0..max_exponent_bits {
        let fraction_items = 2usize.pow((i + non_sign_bits - max_exponent_bits) as u32) + 1;
        let b = linspace(fraction_items);
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i) as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    debug_assert_eq!(additional_items, 0);
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data
}

/// bitsandbytes' CPU `quantize_blockwise` (8 bits): per block of `blocksize`, the absmax, then
/// for each `x / absmax` the left neighbour in `code` by binary search, or the right one when
/// strictly closer. Returns the indices and the absmax values. As the C kernel, the search
/// takes the code's first value as -1 (the dynamic map's is -0.99297).
pub fn quantize_blockwise(x: &[f32], code: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let mut code = code.to_vec();
    if let Some(first) = code.first_mut() {
        *first = -1.0;
    }
    let mut q = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        let am = block.iter().fold(-f32::MAX, |m, v| m.max(v.abs()));
        absmax.push(am);
        for &v in block {
            let n = v / am;
            // The last index whose code value is <= n (0 when n is below every value).
            let mut idx = code.partition_point(|&c| c <= n).saturating_sub(1);
            if idx < code.len() - 1 {
                let left = (n - code[idx]).abs();
                let right = (n - code[idx + 1]).abs();
                if right < left {
                    idx += 1;
                }
            }
            q.push(idx as u8);
        }
    }
    (q, absmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_where_bitsandbytes_assumes_it() {
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        let m = dynamic_map();
        assert_eq!(m.len(), 256);
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m[255], 1.0);
    }

    #[test]
    fn round_trip_is_within_half_a_code_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for t in [Bnb4bitType::Nf4, Bnb4bitType::Fp4] {
            for dq in [false, true] {
                let q = Bnb4bit::quantize(&x, 64, t, dq).expect("valid");
                let mut y = vec![0.0; x.len()];
                q.dequantize_range(0, &mut y);
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                // The largest gap between neighbouring code values is 1/3 (FP4) of the
                // absmax (7.2 here): half of it bounds the error.
                assert!(worst <= 7.2 / 6.0 + 0.05, "{t:?} {dq}: {worst}");
            }
        }
        assert!(Bnb4bit::quantize(&x, 48, Bnb4bitType::Nf4, false).is_err());
        assert!(Bnb4bit::quantize(&[], 64, Bnb4bitType::Nf4, false).is_err());
    }
}
