//! Padding along one dimension, with zeros or by replicating the edge (`F.pad` modes).

use burn::prelude::*;

/// How padded values are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PadMode {
    /// Zeros (`mode="constant"`).
    Zeros,
    /// Copies of the edge value (`mode="replicate"`).
    Replicate,
}

/// Pads `before` and `after` elements along `dim`.
pub fn pad_dim<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    dim: usize,
    before: usize,
    after: usize,
    mode: PadMode,
) -> Tensor<B, D> {
    if before == 0 && after == 0 {
        return x;
    }
    let dims = x.dims();
    let len = dims[dim];
    let part = |n: usize, edge: usize| -> Tensor<B, D> {
        match mode {
            PadMode::Zeros => {
                let mut shape = dims;
                shape[dim] = n;
                Tensor::zeros(shape, (&x.device(), x.dtype()))
            }
            PadMode::Replicate => x.clone().narrow(dim, edge, 1).repeat_dim(dim, n),
        }
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(part(before, 0));
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(part(after, len.saturating_sub(1)));
    }
    Tensor::cat(parts, dim)
}
