//! # diffusers-unets
//!
//! Denoising UNets, loading diffusers checkpoints key for key:
//!
//! - [`unet_2d_condition::UNet2DConditionModel`]: SD 1.x (conv projections, one head count for
//!   every block), SD 2.x (linear projections, head counts per block, `upcast_attention`), SDXL
//!   (`transformer_layers_per_block`, `addition_embed_type="text_time"` from the pooled text
//!   embedding and the six time ids) and LCM (`time_cond_proj_dim`); any latent size, odd sizes
//!   upsampled to the skip states' sizes as diffusers does.
//! - [`unet_2d_blocks`]: `CrossAttnDownBlock2D`, `DownBlock2D`, `UNetMidBlock2DCrossAttn`,
//!   `CrossAttnUpBlock2D`, `UpBlock2D`;
//! - [`transformer_2d`]: `Transformer2DModel` with its `BasicTransformerBlock`.
//!
//! Config values outside these (other block types, class embeddings, ...) are an
//! [`Error::InvalidConfig`] naming the key.
//!
//! ```
//! use diffusers_core::backend::Cpu;
//! use diffusers_unets::unet_2d_condition::{UNet2DConditionModel, UNet2DConditionModelConfig};
//!
//! // SD 1.5's config: the defaults.
//! let config: UNet2DConditionModelConfig = serde_json::from_str(r#"{"cross_attention_dim": 768}"#).unwrap();
//! // Parameters are created lazily: building the full-size model allocates nothing.
//! let unet = UNet2DConditionModel::<Cpu>::new(&config, &Default::default()).unwrap();
//! assert_eq!(unet.down_blocks.len(), 4);
//! ```

mod error;
pub mod transformer_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;

pub use error::{Error, Result};
