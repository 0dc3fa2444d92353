//! diffusers' `Transformer2DModel` over continuous inputs (`models/transformers/transformer_2d.py`)
//! with its `BasicTransformerBlock` (`models/attention.py`, `norm_type="layer_norm"`,
//! `activation_fn="geglu"`), as the SD 1.x/2.x and SDXL UNets use them.
//!
//! The input/output projections are 1x1 convolutions (`use_linear_projection=false`, SD 1.x) or
//! linear layers (SD 2.x, SDXL); [`Projection`]'s variant name is dropped from checkpoint keys
//! by the crate's key map.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use diffusers_nn::activation::{Geglu, GegluConfig};
use diffusers_nn::attention::scaled_dot_product_attention;
use diffusers_nn::conv::{Conv2d, Conv2dConfig};
use diffusers_nn::linear::{Linear, LinearConfig};
use diffusers_nn::norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};

/// diffusers' `Attention` with `AttnProcessor2_0`, without bias on `to_q/k/v`
/// (`attention_bias=False`), self-attention or cross-attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query.
    pub to_q: Linear<B>,
    /// Key (from the context width for cross-attention).
    pub to_k: Linear<B>,
    /// Value.
    pub to_v: Linear<B>,
    /// Output projection (`to_out.0`).
    pub to_out: Vec<Linear<B>>,
    heads: usize,
    upcast: bool,
}

impl<B: Backend> Attention<B> {
    /// `heads` heads of `head_dim` over `query_dim`, keys and values from `context_dim`.
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        upcast: bool,
        device: &B::Device,
    ) -> Self {
        let inner = heads * head_dim;
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            to_q: lin(query_dim, inner),
            to_k: lin(context_dim, inner),
            to_v: lin(context_dim, inner),
            to_out: vec![LinearConfig::new(inner, query_dim).init(device)],
            heads,
            upcast,
        }
    }

    /// Attends from `x: [b, s, query_dim]` to `context` (or to `x` itself).
    ///
    /// With `upcast_attention`, half-precision attention is computed in f32 (what diffusers'
    /// option is for; in f32 it changes nothing).
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let dtype = x.dtype();
        let ctx = context.unwrap_or_else(|| x.clone());
        let split = |t: Tensor<B, 3>| {
            let [_, n, inner] = t.dims();
            t.reshape([b, n, self.heads, inner / self.heads])
                .swap_dims(1, 2)
        };
        let mut q = split(self.to_q.forward(x));
        let mut k = split(self.to_k.forward(ctx.clone()));
        let mut v = split(self.to_v.forward(ctx));
        let upcast = self.upcast && dtype != DType::F32;
        if upcast {
            q = q.cast(DType::F32);
            k = k.cast(DType::F32);
            v = v.cast(DType::F32);
        }
        let o = scaled_dot_product_attention(q, k, v, None, None, false);
        let o = if upcast { o.cast(dtype) } else { o };
        let [_, h, _, d] = o.dims();
        let o = o.swap_dims(1, 2).reshape([b, s, h * d]);
        match self.to_out.first() {
            Some(l) => l.forward(o),
            None => o,
        }
    }
}

/// `FeedForward(activation_fn="geglu")`: `net.0` (GEGLU projection to `4 * dim`), `net.2`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `net.0`.
    pub net_0: Geglu<B>,
    /// `net.2`.
    pub net_2: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            net_0: GegluConfig::new(dim, 4 * dim).init(device),
            net_2: LinearConfig::new(4 * dim, dim).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.net_2.forward(self.net_0.forward(x))
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each after a
/// layer norm and with a residual connection.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// Norm before self-attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn1: Attention<B>,
    /// Norm before cross-attention.
    pub norm2: LayerNorm<B>,
    /// Cross-attention over the text states.
    pub attn2: Attention<B>,
    /// Norm before the feed-forward.
    pub norm3: LayerNorm<B>,
    /// Feed-forward.
    pub ff: FeedForward<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    fn forward(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `proj_in`/`proj_out`: a 1x1 convolution or a linear layer.
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// `use_linear_projection=False`.
    Conv(Conv2d<B>),
    /// `use_linear_projection=True`.
    Linear(Linear<B>),
}

impl<B: Backend> Projection<B> {
    fn new(i: usize, o: usize, linear: bool, device: &B::Device) -> Self {
        if linear {
            Self::Linear(LinearConfig::new(i, o).init(device))
        } else {
            Self::Conv(Conv2dConfig::new(i, o, [1, 1]).init(device))
        }
    }
}

/// Configuration of a [`Transformer2DModel`] (the arguments the UNet blocks pass).
#[derive(Config, Debug)]
pub struct Transformer2DModelConfig {
    /// Heads.
    pub num_attention_heads: usize,
    /// Width of each head.
    pub attention_head_dim: usize,
    /// Input (and output) channels.
    pub in_channels: usize,
    /// Width of the cross-attention context.
    pub cross_attention_dim: usize,
    /// Transformer blocks.
    #[config(default = 1)]
    pub num_layers: usize,
    /// Groups of the input group norm.
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// Linear instead of 1x1-conv projections.
    #[config(default = false)]
    pub use_linear_projection: bool,
    /// Attention in f32 for half-precision inputs.
    #[config(default = false)]
    pub upcast_attention: bool,
}

/// `Transformer2DModel` over `[b, c, h, w]` feature maps.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// Group norm over the input (eps 1e-6).
    pub norm: GroupNorm<B>,
    /// Input projection to `heads * head_dim`.
    pub proj_in: Projection<B>,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// Output projection back to `in_channels`.
    pub proj_out: Projection<B>,
}

impl Transformer2DModelConfig {
    /// Builds the model with lazily-initialised parameters.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Transformer2DModel<B> {
        let inner = self.num_attention_heads * self.attention_head_dim;
        let ln = || LayerNormConfig::new(inner).init(device);
        let attn = |ctx| {
            Attention::new(
                inner,
                ctx,
                self.num_attention_heads,
                self.attention_head_dim,
                self.upcast_attention,
                device,
            )
        };
        Transformer2DModel {
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels)
                .with_eps(1e-6)
                .init(device),
            proj_in: Projection::new(self.in_channels, inner, self.use_linear_projection, device),
            transformer_blocks: (0..self.num_layers)
                .map(|_| BasicTransformerBlock {
                    norm1: ln(),
                    attn1: attn(inner),
                    norm2: ln(),
                    attn2: attn(self.cross_attention_dim),
                    norm3: ln(),
                    ff: FeedForward::new(inner, device),
                })
                .collect(),
            proj_out: Projection::new(inner, self.in_channels, self.use_linear_projection, device),
        }
    }
}

impl<B: Backend> Transformer2DModel<B> {
    /// Applies the model to `x: [b, c, h, w]` with the text states `context: [b, seq, dim]`,
    /// adding the input back.
    pub fn forward(&self, x: Tensor<B, 4>, context: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        let mut hs: Tensor<B, 3> = match &self.proj_in {
            Projection::Conv(conv) => {
                let y = conv.forward(n);
                let inner = y.dims()[1];
                y.reshape([b, inner, h * w]).swap_dims(1, 2)
            }
            Projection::Linear(l) => l.forward(n.reshape([b, c, h * w]).swap_dims(1, 2)),
        };
        for block in &self.transformer_blocks {
            hs = block.forward(hs, context.clone());
        }
        let inner = hs.dims()[2];
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(hs.swap_dims(1, 2).reshape([b, inner, h, w])),
            Projection::Linear(l) => {
                let y = l.forward(hs);
                let co = y.dims()[2];
                y.swap_dims(1, 2).reshape([b, co, h, w])
            }
        };
        out + x
    }
}
