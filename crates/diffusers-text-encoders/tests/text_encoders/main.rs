//! The text encoders and tokenizers against transformers, one test binary (fewer binaries
//! linking the CUDA backend and compiling the encoders again: a faster CI build).

mod clip;
mod llama;
mod t5;
mod tokenizer;
