//! `quantize` and `dequantize` for NF4 (bit-exact with bitsandbytes' CPU kernels) and int8,
//! through `graft-quant`.
//!
//! The IR's `u4` values are unpacked codes (one per element, see [`crate::Data::U4`]);
//! graft-quant works on bitsandbytes' packed layout (two codes per byte, element `2i` in the
//! high nibble, an odd count padded with code 7), so codes are packed and unpacked here.

use crate::tensor::{Data, round_f64};
use crate::{Ctx, InterpError, Tensor};
use graft_ir::{QuantFormat, QuantPart};
use graft_quant::{
    QuantError, dequantize_blockwise_dynamic, dequantize_int8, dequantize_nf4, quantize_int8,
    quantize_nf4,
};

/// The NF4 code of `0.0`, which pads an odd element count (as bitsandbytes does).
const PAD_CODE: u8 = 7;

/// Packs unpacked 4-bit codes two per byte, element `2i` in the high nibble.
pub(crate) fn pack_codes(codes: &[u8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|pair| {
            let hi = pair.first().copied().unwrap_or(PAD_CODE) & 0x0f;
            let lo = pair.get(1).copied().unwrap_or(PAD_CODE) & 0x0f;
            (hi << 4) | lo
        })
        .collect()
}

/// Unpacks the first `n` codes of a packed buffer (high nibble first).
pub(crate) fn unpack_codes(packed: &[u8], n: usize) -> Vec<u8> {
    packed
        .iter()
        .flat_map(|&b| [b >> 4, b & 0x0f])
        .take(n)
        .collect()
}

fn quant_err(ctx: &Ctx<'_>, error: QuantError) -> InterpError {
    InterpError::Quant {
        node: ctx.node,
        op: ctx.op.name().to_string(),
        error,
    }
}

/// `quantize{format = nf4, block, part}(w)`: bitsandbytes' `quantize_4bit(w.flatten(),
/// blocksize = block, quant_type = "nf4", compress_statistics = False)` on the CPU. `part =
/// codes` gives the codes as `u4` with `w`'s shape; `part = absmax` the `f32` absmax per
/// block. The input is converted to `f32` first (exact for f32/bf16/f16; f64 rounds). A NaN
/// or infinite element is an error.
pub(crate) fn quantize(
    ctx: &Ctx<'_>,
    format: QuantFormat,
    block: usize,
    part: QuantPart,
) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let w: Vec<f32> = match x.data() {
        Data::F32(v) => v.clone(),
        Data::F64(v) => v.iter().map(|&a| a as f32).collect(),
        _ => return Err(ctx.unsupported("quantize needs a float operand")),
    };
    if format == QuantFormat::Int8 {
        let (codes, absmax) = quantize_int8(&w, block).map_err(|e| quant_err(ctx, e))?;
        return match part {
            QuantPart::Codes => ctx.result(Data::U8(codes)),
            QuantPart::Absmax => ctx.result(Data::F32(absmax)),
        };
    }
    let (packed, absmax) = quantize_nf4(&w, block).map_err(|e| quant_err(ctx, e))?;
    match part {
        QuantPart::Codes => ctx.result(Data::U4(unpack_codes(&packed, w.len()))),
        QuantPart::Absmax => ctx.result(Data::F32(absmax)),
    }
}

/// `dequantize{format = nf4, block, nested}`: bitsandbytes' `dequantize_4bit`, i.e.
/// `NF4_CODE[code[i]] · absmax[i / block]` in `f32`, then rounded to the node dtype.
///
/// Operands: `codes: u4`, `absmax: f32[blocks]`; or, with `nested != 0` (double
/// quantization), `codes: u4`, `absmax_codes: u8[blocks]`, `absmax2: f32[ceil(blocks /
/// nested)]`, `offset: f32[]`, and the absmax vector is first rebuilt as
/// `DYNAMIC_SIGNED_CODE[absmax_codes[b]] · absmax2[b / nested] + offset` in `f32` (what
/// `graft_quant::dequantize_absmax` does for bitsandbytes' nested block of 256).
pub(crate) fn dequantize(
    ctx: &Ctx<'_>,
    format: QuantFormat,
    block: usize,
    nested: usize,
) -> Result<Tensor, InterpError> {
    if format == QuantFormat::Int8 {
        let (Some(codes), Some(absmax)) = (ctx.arg(0)?.as_u8(), ctx.arg(1)?.as_f32()) else {
            return Err(ctx.unsupported("int8 codes must be u8 with an f32 absmax"));
        };
        let w = dequantize_int8(codes, absmax, block).map_err(|e| quant_err(ctx, e))?;
        return ctx.result(rounded(ctx.ty.dtype, w));
    }
    let Some(codes) = ctx.arg(0)?.as_u4() else {
        return Err(ctx.unsupported("the codes must be u4"));
    };
    let absmax: Vec<f32> = if nested == 0 {
        match ctx.arg(1)?.as_f32() {
            Some(a) if ctx.arg(1)?.dtype() == graft_ir::DType::F32 => a.to_vec(),
            _ => return Err(ctx.unsupported("absmax must be f32")),
        }
    } else {
        let (Some(q), Some(absmax2), Some(&[offset])) = (
            ctx.arg(1)?.as_u8(),
            ctx.arg(2)?.as_f32(),
            ctx.arg(3)?.as_f32(),
        ) else {
            return Err(ctx.unsupported("nested scales must be u8 codes, f32 scales, f32[] offset"));
        };
        let mut a =
            dequantize_blockwise_dynamic(q, absmax2, nested).map_err(|e| quant_err(ctx, e))?;
        for v in &mut a {
            *v += offset;
        }
        a
    };
    let n = codes.len();
    let w = dequantize_nf4(&pack_codes(codes), &absmax, block, n).map_err(|e| quant_err(ctx, e))?;
    ctx.result(rounded(ctx.ty.dtype, w))
}

/// Dequantized `f32` values as the node's dtype.
fn rounded(dt: graft_ir::DType, w: Vec<f32>) -> Data {
    match dt {
        graft_ir::DType::F64 => Data::F64(w.into_iter().map(f64::from).collect()),
        _ => Data::F32(w.into_iter().map(|x| round_f64(dt, f64::from(x))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_pads_with_seven() {
        let codes = vec![1, 2, 15, 0, 9];
        let packed = pack_codes(&codes);
        assert_eq!(packed, vec![0x12, 0xf0, 0x97]);
        assert_eq!(unpack_codes(&packed, 5), codes);
        assert!(pack_codes(&[]).is_empty());
    }
}
