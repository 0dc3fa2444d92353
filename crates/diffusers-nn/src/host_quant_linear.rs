//! The CPU host kernel of a quantized [`Linear`](crate::linear::Linear): `y = x W^T` with `W`
//! packed, dequantized a tile of output rows at a time into a per-task buffer, so the dense
//! matrix never exists. Tiles run in parallel (rayon), each tile one single-threaded GEMM.

use rayon::prelude::*;

use crate::host_gemm::{Mat, gemm_f32};
use diffusers_quantization::QuantizedTensor;

/// Output rows (of `W`) per tile: 64 rows of a 12288-wide weight are 3 MiB of f32.
const TILE: usize = 64;

/// `x` is `[rows, in]` row-major; returns `x W^T` as `[rows, out]` row-major.
pub(crate) fn matmul_packed(x: &[f32], rows: usize, w: &QuantizedTensor) -> Vec<f32> {
    let [out, inp] = w.shape();
    if rows == 0 || out == 0 {
        return vec![0.0; rows * out];
    }
    debug_assert_eq!(x.len(), rows * inp);
    // y^T, [out, rows]: each tile of W's rows fills a contiguous chunk of it.
    let mut yt = vec![0.0f32; out * rows];
    yt.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(t, chunk)| {
            let first = t * TILE;
            let n = chunk.len() / rows;
            let mut buf = vec![0.0f32; n * inp];
            w.dequantize_rows(first, &mut buf)
                .expect("the tile lies inside the weight");
            // chunk[j, i] = sum_k W[first + j, k] · x[i, k]
            gemm_f32(
                chunk,
                [rows, 1],
                Mat {
                    data: &buf,
                    at: 0,
                    rs: inp,
                    cs: 1,
                },
                Mat {
                    data: x,
                    at: 0,
                    rs: 1,
                    cs: inp,
                },
                [n, rows, inp],
                false,
                1.0,
            );
        });
    // Back to [rows, out].
    let mut y = vec![0.0f32; rows * out];
    y.par_chunks_mut(out).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = yt[j * rows + i];
        }
    });
    y
}
