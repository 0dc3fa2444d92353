//! `Embedding`: a lookup table (as `torch.nn.Embedding`).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::Int;

/// Configuration of an [`Embedding`].
#[derive(Config, Debug)]
pub struct EmbeddingConfig {
    /// Number of rows (vocabulary or positions).
    pub num_embeddings: usize,
    /// Size of each row.
    pub embedding_dim: usize,
}

/// A table of `[num_embeddings, embedding_dim]` rows looked up by index.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[num_embeddings, embedding_dim]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl EmbeddingConfig {
    /// Builds the table with lazily-initialised parameters (normal, as torch).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Embedding<B> {
        Embedding {
            weight: burn::module::Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            }
            .init([self.num_embeddings, self.embedding_dim], device),
        }
    }
}

impl<B: Backend> Embedding<B> {
    /// Looks up `[batch, seq]` indices, giving `[batch, seq, embedding_dim]`.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let dim = self.weight.lazy_shape()[1];
        self.weight
            .val()
            .select(0, ids.reshape([b * s]))
            .reshape([b, s, dim])
    }

    /// Number of rows, without materialising the table.
    pub fn num_embeddings(&self) -> usize {
        self.weight.lazy_shape()[0]
    }
}
