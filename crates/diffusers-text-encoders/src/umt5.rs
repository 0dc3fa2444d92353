//! transformers' `UMT5EncoderModel` (`models/umt5/modeling_umt5.py`): Wan's text encoder.
//!
//! UMT5's encoder is T5's (the same checkpoint keys, RMS norms, gated-GELU feed-forward,
//! unscaled attention with a bucketed relative position bias) but for one thing: every block has
//! its own `relative_attention_bias` table, where T5 computes the bias in the first block and
//! shares it. So the model is [`T5EncoderModel`] built from a config whose `model_type` is `umt5`,
//! as every UMT5 `config.json` says; the names here are transformers'. transformers writes every
//! key of a config, so T5's defaults do not stand in for UMT5's in a saved `config.json`.
//!
//! ```no_run
//! use burn::tensor::{Int, Tensor};
//! use diffusers_core::backend::Cpu;
//! use diffusers_text_encoders::umt5::UMT5EncoderModel;
//!
//! let device = Default::default();
//! let encoder = UMT5EncoderModel::<Cpu>::from_folder("Wan2.1-T2V-1.3B-Diffusers/text_encoder", None, &device)?;
//! let ids = Tensor::<Cpu, 2, Int>::from_data([[6, 57, 1, 0]], &device);
//! let mask = Tensor::<Cpu, 2, Int>::from_data([[1, 1, 1, 0]], &device);
//! let hidden = encoder.forward_masked(ids, Some(mask))?; // [1, 4, d_model]
//! # Ok::<(), diffusers_text_encoders::Error>(())
//! ```

use crate::t5::{T5Config, T5EncoderModel};

/// transformers' `UMT5Config`: [`T5Config`] with `model_type` `umt5`.
pub type UMT5Config = T5Config;

/// transformers' `UMT5EncoderModel`: [`T5EncoderModel`] with a relative attention bias in every
/// block (from a config whose `model_type` is `umt5`).
pub type UMT5EncoderModel<B> = T5EncoderModel<B>;
