//! Symmetric 8-bit quantization, blockwise absmax: each element of a block of `block` is
//! stored as the byte `round(127 · x / absmax) + 128` (1..=255; 128 is zero), and read back as
//! [`INT8_CODE`]`[code] · absmax`, with `INT8_CODE[c] = (c − 128) / 127` in `f32`. This is
//! the absmax ("vector-wise" with a block of a row) int8 of LLM.int8 and QFT, without
//! outlier columns; the table makes dequantization one lookup and one product, as NF4's.

use crate::error::{QuantError, check_finite};

/// The value of each 8-bit code relative to its block's absmax: (c − 128) / 127.
pub const INT8_CODE: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as f32 - 128.0) / 127.0;
        c += 1;
    }
    t
};

/// Quantizes `weights` (flattened) in blocks of `block`: the codes (one byte per element)
/// and each block's absmax. A block of zeros has absmax 0 and codes 128.
///
/// # Errors
/// `block` is zero, or a value is not finite.
pub fn quantize_int8(weights: &[f32], block: usize) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    if block == 0 {
        return Err(QuantError::ZeroBlockSize);
    }
    check_finite("weights", weights)?;
    let mut codes = Vec::with_capacity(weights.len());
    let mut absmax = Vec::with_capacity(weights.len().div_ceil(block));
    for chunk in weights.chunks(block) {
        let am = chunk.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        absmax.push(am);
        let scale = if am > 0.0 { 127.0 / am } else { 0.0 };
        codes.extend(
            chunk
                .iter()
                .map(|&x| ((x * scale).round().clamp(-127.0, 127.0) + 128.0) as u8),
        );
    }
    Ok((codes, absmax))
}

/// The values of `codes` with their blocks' `absmax`: `INT8_CODE[code] · absmax[i / block]`.
///
/// # Errors
/// `block` is zero or `absmax` has another length than the blocks of `codes`.
pub fn dequantize_int8(codes: &[u8], absmax: &[f32], block: usize) -> Result<Vec<f32>, QuantError> {
    if block == 0 {
        return Err(QuantError::ZeroBlockSize);
    }
    let blocks = codes.len().div_ceil(block);
    if absmax.len() != blocks {
        return Err(QuantError::LengthMismatch {
            what: "absmax",
            expected: blocks,
            actual: absmax.len(),
        });
    }
    Ok(codes
        .iter()
        .enumerate()
        .map(|(i, &c)| INT8_CODE[c as usize] * absmax[i / block])
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every element comes back within half a step (absmax / 254, up to f32 rounding) of
    /// itself, the block's largest magnitude exactly, and zero blocks stay zero.
    #[test]
    fn round_trips_within_half_a_step() {
        let w: Vec<f32> = (0..200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let (codes, absmax) = quantize_int8(&w, 64).unwrap();
        assert_eq!(absmax.len(), 4);
        let back = dequantize_int8(&codes, &absmax, 64).unwrap();
        for (i, (&x, &y)) in w.iter().zip(&back).enumerate() {
            let am = absmax[i / 64];
            // Half a step, and f32 rounding of a value that falls on a half.
            assert!(
                (x - y).abs() <= am / 254.0 * (1.0 + 1e-4),
                "{i}: {x} vs {y}"
            );
            if x.abs() == am {
                assert_eq!(x, y);
            }
        }
        let (codes, absmax) = quantize_int8(&[0.0; 5], 4).unwrap();
        assert_eq!(codes, vec![128; 5]);
        assert_eq!(dequantize_int8(&codes, &absmax, 4).unwrap(), vec![0.0; 5]);
    }
}
