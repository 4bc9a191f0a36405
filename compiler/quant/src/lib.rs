//! Quantization formats: NF4 with double quantization, bit-exact with bitsandbytes, and
//! symmetric blockwise int8 ([`int8`]).
//!
//! This crate reproduces, bit for bit, what `bitsandbytes` 0.50.2 computes on the CPU for
//! `bitsandbytes.functional.quantize_4bit(w, blocksize, quant_type="nf4", compress_statistics=...)`
//! and the matching `dequantize_4bit`, including the nested ("double") quantization of the
//! per-block scales. The reference values live in `tests/fixtures/nf4.safetensors`, written by
//! `scripts/make_fixtures.py`; the integration tests compare against them with zero tolerance.
//!
//! Layout, as bitsandbytes stores it:
//! - the tensor is flattened (row-major) and cut into blocks of `block` elements (the last
//!   block may be shorter);
//! - `absmax[b]` is the largest magnitude in block `b`; every element is divided by its
//!   block's absmax and mapped to the nearest of the 16 [`NF4_CODE`] values;
//! - two 4-bit codes per byte, element `2i` in the HIGH nibble and `2i + 1` in the low one; an
//!   odd element count pads the last low nibble with the code of `0.0` (7);
//! - with double quantization the absmax vector is centred on its mean (`offset`) and quantized
//!   to 8 bits in blocks of [`NESTED_BLOCK`] with bitsandbytes' signed dynamic map
//!   ([`DYNAMIC_SIGNED_CODE`]), giving `u8` codes plus one `f32` scale per nested block.
//!
//! Where bitsandbytes' CPU and CUDA kernels differ, this crate follows the CPU kernels (the
//! ones the fixtures were made with); see [`nf4`] and [`dynamic8`] for the exact differences.

#![deny(unsafe_code)]

pub mod double_quant;
pub mod dynamic8;
mod error;
pub mod int8;
pub mod nf4;

pub use double_quant::{
    NESTED_BLOCK, NestedAbsmax, dequantize_absmax, dequantize_nf4_nested, double_quantize,
    double_quantize_with_offset, quantize_nf4_nested, torch_cpu_mean,
};
pub use dynamic8::{DYNAMIC_SIGNED_CODE, dequantize_blockwise_dynamic, quantize_blockwise_dynamic};
pub use error::QuantError;
pub use int8::{INT8_CODE, dequantize_int8, quantize_int8};
pub use nf4::{
    BNB_BLOCK_SIZES, NF4_CODE, NF4_THRESHOLDS, dequantize_nf4, nf4_index, packed_len, quantize_nf4,
};
