//! NF4 (4-bit NormalFloat) blockwise quantization and dequantization, bit-exact with bitsandbytes.
//!
//! # What bitsandbytes does (0.50.2, CPU, `float32` input)
//! `quantize_4bit` on the CPU runs the pure-PyTorch kernel in `backends/default/ops.py`:
//! - full blocks: `absmax = max|x|`, `scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1)`;
//! - the partial last block (when `n % block != 0`): `am = max(max|x|, 1e-38)`,
//!   `scaled = clamp(x / am, -1, 1)` (a true division, not a reciprocal multiply), and the
//!   *clamped* `am` is what gets stored as that block's absmax;
//! - `code = bucketize(scaled, midpoints)`, i.e. the number of midpoints strictly below
//!   `scaled`, with the midpoints `(c[i] + c[i+1]) / 2` computed in `f32`.
//!
//! The CUDA kernel (`dQuantizeNF4` in `csrc/kernels.cu`) decides with a decision tree over
//! the same midpoints and the same strict `>`, so a value lying exactly on a midpoint goes to
//! the LOWER code on both backends. [`nf4_index`] is that decision tree over the CPU's `f32`
//! midpoints.
//!
//! Known CPU/CUDA differences (this crate follows the CPU):
//! - four of the CUDA tree's thresholds are one `f32` ulp off the CPU midpoints (see
//!   [`NF4_THRESHOLDS`]), which matters only for scaled values exactly on those ulps;
//! - the partial last block: CUDA multiplies by `1 / absmax` and stores the raw absmax;
//! - an all-zero block: the CPU maps its elements to code 7 (`0.0`), CUDA computes
//!   `0 * inf = NaN` and its tree sends NaN to code 0 (dequantizing to `-0.0`).
//!
//! `dequantize_4bit` is `NF4_CODE[code] * absmax[block]` in `f32`, on both backends.

use crate::error::{QuantError, check_finite, check_len};

/// The 16 NF4 code values, in code order, exactly as bitsandbytes has them
/// (`get_4bit_type("nf4")`, the quantiles of N(0, 1) normalised to [-1, 1]).
#[allow(clippy::excessive_precision)] // verbatim from bitsandbytes
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Decision thresholds between consecutive NF4 codes: `NF4_THRESHOLDS[i]` separates code `i`
/// from code `i + 1`; they are `(NF4_CODE[i] + NF4_CODE[i + 1]) / 2` computed in `f32`, the
/// boundaries bitsandbytes' CPU kernel bucketizes with (a unit test recomputes them).
///
/// bitsandbytes' CUDA decision tree (`dQuantizeNF4`) writes its thresholds as decimal `f32`
/// literals (midpoints computed in `f64`). Rounded to `f32` by the compiler, four of them are
/// one ulp away from these (between codes 0/1, 8/9, 12/13 and 14/15), so exactly one `f32`
/// scaled value per such boundary gets a different code on CUDA than on the CPU.
pub const NF4_THRESHOLDS: [f32; 15] = [
    -0.8480964,
    -0.6106329,
    -0.45999527,
    -0.33967942,
    -0.2346074,
    -0.13791174,
    -0.045525018,
    0.03979015,
    0.12025525,
    0.20352125,
    0.29201376,
    0.38931254,
    0.50166345,
    0.6427869,
    0.86147845,
];

/// The block sizes bitsandbytes' `quantize_4bit` accepts. The functions here accept any
/// block size of at least 1; only these produce states that bitsandbytes can load.
pub const BNB_BLOCK_SIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// bitsandbytes clamps a block's absmax to at least this before dividing by it (CPU kernel).
const MIN_ABSMAX: f32 = 1e-38;

/// The NF4 code of an already-scaled value: bitsandbytes' `dQuantizeNF4` decision tree.
///
/// Equivalent to counting the [`NF4_THRESHOLDS`] strictly below `x`; a value exactly on a
/// threshold gets the lower code. NaN maps to 0, as on CUDA.
#[must_use]
pub fn nf4_index(x: f32) -> u8 {
    let t = &NF4_THRESHOLDS;
    if x > t[7] {
        if x > t[11] {
            if x > t[13] {
                if x > t[14] { 15 } else { 14 }
            } else if x > t[12] {
                13
            } else {
                12
            }
        } else if x > t[9] {
            if x > t[10] { 11 } else { 10 }
        } else if x > t[8] {
            9
        } else {
            8
        }
    } else if x > t[3] {
        if x > t[5] {
            if x > t[6] { 7 } else { 6 }
        } else if x > t[4] {
            5
        } else {
            4
        }
    } else if x > t[1] {
        if x > t[2] { 3 } else { 2 }
    } else if x > t[0] {
        1
    } else {
        0
    }
}

/// Number of bytes of packed NF4 codes for `n` elements (two per byte, rounded up).
#[must_use]
pub fn packed_len(n: usize) -> usize {
    n.div_ceil(2)
}

/// Quantizes `weights` (flattened, row-major) to NF4 in blocks of `block` elements.
///
/// Returns the packed codes (`packed_len(n)` bytes, element `2i` in the high nibble) and one
/// absmax per block (`n.div_ceil(block)` values), bit-identical to bitsandbytes'
/// `quantize_4bit(w, blocksize=block, quant_type="nf4", compress_statistics=False)` on the CPU.
///
/// # Errors
/// [`QuantError::ZeroBlockSize`] if `block == 0`; [`QuantError::NonFinite`] if any weight is
/// NaN or infinite.
pub fn quantize_nf4(weights: &[f32], block: usize) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    if block == 0 {
        return Err(QuantError::ZeroBlockSize);
    }
    check_finite("weights", weights)?;
    let n = weights.len();
    let full_blocks = n / block;
    let mut absmax = Vec::with_capacity(n.div_ceil(block));
    let mut codes = Vec::with_capacity(n + 1);
    for (b, chunk) in weights.chunks(block).enumerate() {
        let am = chunk.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        if b < full_blocks {
            absmax.push(am);
            let inv = 1.0f32 / am.max(MIN_ABSMAX);
            codes.extend(chunk.iter().map(|&x| nf4_index((x * inv).clamp(-1.0, 1.0))));
        } else {
            // bitsandbytes' remainder path: divide, and store the clamped absmax.
            let am = am.max(MIN_ABSMAX);
            absmax.push(am);
            codes.extend(chunk.iter().map(|&x| nf4_index((x / am).clamp(-1.0, 1.0))));
        }
    }
    Ok((pack_nibbles(&codes), absmax))
}

/// Packs 4-bit codes two per byte, the first in the high nibble; an odd count is padded with
/// the code of `0.0`, as bitsandbytes pads the scaled tensor with a zero.
fn pack_nibbles(codes: &[u8]) -> Vec<u8> {
    let pad = nf4_index(0.0);
    codes
        .chunks(2)
        .map(|pair| {
            let hi = pair[0];
            let lo = pair.get(1).copied().unwrap_or(pad);
            (hi << 4) | (lo & 0x0f)
        })
        .collect()
}

/// The 4-bit code of element `i` of a packed buffer (high nibble first).
#[inline]
fn nibble(packed: &[u8], i: usize) -> u8 {
    let byte = packed[i / 2];
    if i.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// Dequantizes `n` NF4 elements: `NF4_CODE[code] * absmax[block]` in `f32`, bit-identical to
/// bitsandbytes' `dequantize_4bit` with `dtype=float32`.
///
/// # Errors
/// [`QuantError::ZeroBlockSize`] if `block == 0`; [`QuantError::LengthMismatch`] unless
/// `packed.len() == packed_len(n)` and `absmax.len() == n.div_ceil(block)`.
pub fn dequantize_nf4(
    packed: &[u8],
    absmax: &[f32],
    block: usize,
    n: usize,
) -> Result<Vec<f32>, QuantError> {
    if block == 0 {
        return Err(QuantError::ZeroBlockSize);
    }
    check_len("packed", packed_len(n), packed.len())?;
    check_len("absmax", n.div_ceil(block), absmax.len())?;
    Ok((0..n)
        .map(|i| NF4_CODE[usize::from(nibble(packed, i))] * absmax[i / block])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The literals of bitsandbytes' CUDA `dQuantizeNF4`, parsed as `f32` the way nvcc/gcc do.
    #[allow(clippy::excessive_precision)]
    const CUDA_TREE_LITERALS: [f32; 15] = [
        -0.8480964004993439,
        -0.6106329262256622,
        -0.4599952697753906,
        -0.33967943489551544,
        -0.23460740596055984,
        -0.13791173323988914,
        -0.045525018125772476,
        0.03979014977812767,
        0.1202552504837513,
        0.2035212516784668,
        0.2920137718319893,
        0.3893125355243683,
        0.5016634166240692,
        0.6427869200706482,
        0.8614784181118011,
    ];

    #[test]
    fn cuda_tree_thresholds_are_one_ulp_off_at_four_boundaries() {
        for (i, (&cuda, &cpu)) in CUDA_TREE_LITERALS.iter().zip(&NF4_THRESHOLDS).enumerate() {
            if [0, 8, 12, 14].contains(&i) {
                assert_ne!(cuda.to_bits(), cpu.to_bits(), "boundary {i}");
                assert!(
                    cuda == cpu.next_up() || cuda == cpu.next_down(),
                    "boundary {i}"
                );
            } else {
                assert_eq!(cuda.to_bits(), cpu.to_bits(), "boundary {i}");
            }
        }
    }

    #[test]
    fn thresholds_are_f32_midpoints() {
        for i in 0..15 {
            let mid = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
            assert_eq!(mid.to_bits(), NF4_THRESHOLDS[i].to_bits(), "threshold {i}");
        }
    }

    #[test]
    fn tree_matches_counting_thresholds() {
        let mut probes: Vec<f32> = vec![-1.0, 1.0, 0.0, -0.0, f32::NAN];
        for &t in &NF4_THRESHOLDS {
            probes.extend([t, t.next_up(), t.next_down()]);
        }
        for &c in &NF4_CODE {
            probes.extend([c, c.next_up(), c.next_down()]);
        }
        for x in probes {
            let count = NF4_THRESHOLDS.iter().filter(|&&t| x > t).count();
            assert_eq!(usize::from(nf4_index(x)), count, "x = {x:e}");
        }
    }

    #[test]
    fn ties_go_to_the_lower_code() {
        for (i, &t) in NF4_THRESHOLDS.iter().enumerate() {
            assert_eq!(usize::from(nf4_index(t)), i);
            assert_eq!(usize::from(nf4_index(t.next_up())), i + 1);
        }
    }

    #[test]
    fn each_code_value_maps_to_itself() {
        for (i, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(usize::from(nf4_index(c)), i);
        }
    }
}
