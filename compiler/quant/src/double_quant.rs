//! Double quantization of NF4 absmax values (bitsandbytes' `compress_statistics=True`).
//!
//! bitsandbytes 0.50.2, `quantize_4bit(..., compress_statistics=True)`:
//! ```text
//! offset = absmax.mean()                                   # torch float32 mean
//! qabsmax, state2 = quantize_blockwise(absmax - offset, blocksize=256)
//! ```
//! and `dequantize_4bit` rebuilds `absmax = code[qabsmax] * state2.absmax[b] + offset` (all `f32`)
//! before the NF4 dequantization. The packed 4-bit codes are the same with or without it.
//!
//! The offset is a float32 mean, so its last bit depends on the summation order. On the CPU,
//! torch sums a contiguous float32 vector with a fixed cascade (8-wide vector accumulators, four
//! interleaved rows, chunks of 16); [`torch_cpu_mean`] replays that order and so reproduces
//! torch's value exactly for up to 32768 elements (an NF4 tensor of up to 2,097,152 weights at
//! block 64). Above that torch splits the sum across its worker threads and the result depends
//! on the thread count; CUDA uses yet another order. To reproduce a particular stored
//! bitsandbytes state, pass its stored offset to [`double_quantize_with_offset`].

use crate::dynamic8::{dequantize_blockwise_dynamic, quantize_blockwise_dynamic};
use crate::error::{QuantError, check_finite};
use crate::nf4::{dequantize_nf4, quantize_nf4};

/// Block size of the nested 8-bit quantization of the absmax vector (fixed by bitsandbytes).
pub const NESTED_BLOCK: usize = 256;

/// A double-quantized absmax vector (bitsandbytes' `QuantState` with `nested=True`).
#[derive(Debug, Clone, PartialEq)]
pub struct NestedAbsmax {
    /// One 8-bit code per NF4 block (`quant_state.absmax`, `uint8`), indices into
    /// [`crate::DYNAMIC_SIGNED_CODE`].
    pub codes: Vec<u8>,
    /// One `f32` scale per [`NESTED_BLOCK`] codes (`quant_state.state2.absmax`).
    pub absmax2: Vec<f32>,
    /// The mean that was subtracted before quantizing (`quant_state.offset`).
    pub offset: f32,
}

/// The float32 mean of `values` exactly as torch computes it on the CPU (single-threaded
/// reduction, i.e. up to 32768 elements): torch's cascade sum, then `sum / n` in `f32`.
///
/// Returns NaN for an empty slice, as torch does.
#[must_use]
pub fn torch_cpu_mean(values: &[f32]) -> f32 {
    torch_cpu_sum(values) / values.len() as f32
}

/// Width of torch's float `Vectorized` accumulator for its sum kernel. Measured: torch 2.15
/// gives the same float sums with `ATEN_CPU_CAPABILITY` = default, avx2 and avx512 (its sum
/// kernel keeps 8 lanes).
const LANES: usize = 8;
/// `ilp_factor` in torch's `row_sum`: rows summed side by side.
const ILP: usize = 4;
/// `num_levels` in torch's `multi_row_sum`.
const LEVELS: usize = 4;

/// torch's `cascade_sum` for a contiguous float32 vector (`vectorized_inner_sum`, or
/// `scalar_inner_sum` when shorter than one vector), in `aten/src/ATen/native/cpu/SumKernel.cpp`.
fn torch_cpu_sum(x: &[f32]) -> f32 {
    let n = x.len();
    if n < LANES {
        return row_sum::<f32>(n, |i| x[i]);
    }
    let vec_count = n / LANES;
    let vacc = row_sum::<[f32; LANES]>(vec_count, |i| {
        let mut v = [0.0f32; LANES];
        v.copy_from_slice(&x[i * LANES..(i + 1) * LANES]);
        v
    });
    let mut acc = 0.0f32;
    for &v in &x[vec_count * LANES..] {
        acc += v;
    }
    for lane in vacc {
        acc += lane;
    }
    acc
}

/// What torch's sum kernel adds: a scalar or a vector of lanes.
trait Acc: Copy {
    const ZERO: Self;
    fn add(self, other: Self) -> Self;
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    fn add(self, other: Self) -> Self {
        self + other
    }
}

impl Acc for [f32; LANES] {
    const ZERO: Self = [0.0; LANES];
    fn add(mut self, other: Self) -> Self {
        for (a, b) in self.iter_mut().zip(other) {
            *a += b;
        }
        self
    }
}

/// torch's `row_sum`: `size` items viewed as rows of [`ILP`], summed by `multi_row_sum`, then
/// the leftovers added to row 0 and the rows added together in order.
fn row_sum<T: Acc>(size: usize, load: impl Fn(usize) -> T) -> T {
    let rows = size / ILP;
    let mut partial = multi_row_sum::<T>(rows, |i, k| load(i * ILP + k));
    for i in rows * ILP..size {
        partial[0] = partial[0].add(load(i));
    }
    let mut total = partial[0];
    for p in &partial[1..] {
        total = total.add(*p);
    }
    total
}

/// torch's `multi_row_sum` with `nrows = ILP`: a cascade of [`LEVELS`] accumulators, each
/// level flushed into the next every `2^level_power` items.
fn multi_row_sum<T: Acc>(size: usize, load: impl Fn(usize, usize) -> T) -> [T; ILP] {
    let level_power = (ceil_log2(size) / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[T::ZERO; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a = a.add(load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (a, prev) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *a = a.add(*prev);
                *prev = T::ZERO;
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a = a.add(load(i, k));
        }
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, b) in first[0].iter_mut().zip(level) {
            *a = a.add(*b);
        }
    }
    first[0]
}

/// torch's `utils::CeilLog2`: 1 for `x <= 2`, else the number of bits of `x - 1`.
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// Double-quantizes an absmax vector with `offset = torch_cpu_mean(absmax)`, bit-identical to
/// bitsandbytes' CPU `compress_statistics=True` path for up to 32768 absmax values.
///
/// # Errors
/// [`QuantError::Empty`] for an empty vector; [`QuantError::NonFinite`] for NaN or infinite
/// values.
pub fn double_quantize(absmax: &[f32]) -> Result<NestedAbsmax, QuantError> {
    if absmax.is_empty() {
        return Err(QuantError::Empty);
    }
    check_finite("absmax", absmax)?;
    double_quantize_with_offset(absmax, torch_cpu_mean(absmax))
}

/// Double-quantizes an absmax vector around a given `offset` (for example the one stored in a
/// bitsandbytes checkpoint): 8-bit dynamic blockwise quantization of `absmax - offset` in
/// blocks of [`NESTED_BLOCK`].
///
/// # Errors
/// [`QuantError::NonFinite`] for NaN or infinite values or offset.
pub fn double_quantize_with_offset(
    absmax: &[f32],
    offset: f32,
) -> Result<NestedAbsmax, QuantError> {
    check_finite("absmax", absmax)?;
    check_finite("offset", &[offset])?;
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (codes, absmax2) = quantize_blockwise_dynamic(&centred, NESTED_BLOCK)?;
    Ok(NestedAbsmax {
        codes,
        absmax2,
        offset,
    })
}

/// Rebuilds the absmax vector: `DYNAMIC_SIGNED_CODE[code] * absmax2[b] + offset` in `f32`,
/// bit-identical to bitsandbytes.
///
/// # Errors
/// [`QuantError::LengthMismatch`] unless `absmax2` has one value per [`NESTED_BLOCK`] codes.
pub fn dequantize_absmax(nested: &NestedAbsmax) -> Result<Vec<f32>, QuantError> {
    let mut absmax = dequantize_blockwise_dynamic(&nested.codes, &nested.absmax2, NESTED_BLOCK)?;
    for a in &mut absmax {
        *a += nested.offset;
    }
    Ok(absmax)
}

/// NF4 quantization with double-quantized statistics, bit-identical to bitsandbytes'
/// `quantize_4bit(w, blocksize=block, quant_type="nf4", compress_statistics=True)` on the CPU
/// (for up to 32768 blocks; see [`torch_cpu_mean`]).
///
/// # Errors
/// As [`crate::quantize_nf4`]; also [`QuantError::Empty`] for empty `weights`.
pub fn quantize_nf4_nested(
    weights: &[f32],
    block: usize,
) -> Result<(Vec<u8>, NestedAbsmax), QuantError> {
    let (packed, absmax) = quantize_nf4(weights, block)?;
    let nested = double_quantize(&absmax)?;
    Ok((packed, nested))
}

/// Dequantizes NF4 with double-quantized statistics (bitsandbytes' `dequantize_4bit` when
/// `quant_state.nested`).
///
/// # Errors
/// As [`crate::dequantize_nf4`] and [`dequantize_absmax`].
pub fn dequantize_nf4_nested(
    packed: &[u8],
    nested: &NestedAbsmax,
    block: usize,
    n: usize,
) -> Result<Vec<f32>, QuantError> {
    let absmax = dequantize_absmax(nested)?;
    dequantize_nf4(packed, &absmax, block, n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_sums_are_left_to_right() {
        // Below 8 elements torch sums rows of 4 then adds the rows: ((x0+x4)+(x1+x5))+...
        let x = [1.0f32, 1e8, -1e8, 3.0, 5.0];
        // rows: acc = [x0, x1, x2, x3], then x4 added to row 0, rows summed in order.
        let expected = (((1.0f32 + 5.0) + 1e8) + -1e8) + 3.0;
        assert_eq!(torch_cpu_sum(&x).to_bits(), expected.to_bits());
    }

    #[test]
    fn mean_of_constant_is_exact() {
        for n in [1usize, 7, 8, 9, 100, 1000, 5000] {
            let x = vec![0.375f32; n];
            assert_eq!(torch_cpu_mean(&x), 0.375, "n = {n}");
        }
    }

    #[test]
    fn ceil_log2_matches_torch() {
        assert_eq!(ceil_log2(0), 1);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(4), 2);
        assert_eq!(ceil_log2(5), 3);
        assert_eq!(ceil_log2(65536), 16);
        assert_eq!(ceil_log2(65537), 17);
    }

    #[test]
    fn double_quant_round_trip_is_close() {
        let absmax: Vec<f32> = (0..600)
            .map(|i| 0.5 + (i as f32 * 0.37).sin().abs())
            .collect();
        let nested = double_quantize(&absmax).unwrap();
        assert_eq!(nested.codes.len(), 600);
        assert_eq!(nested.absmax2.len(), 3);
        let back = dequantize_absmax(&nested).unwrap();
        for (a, b) in absmax.iter().zip(&back) {
            // the dynamic map's coarsest step near +-1 is ~0.0141 of the block scale
            assert!((a - b).abs() <= 0.01 * 1.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn empty_and_non_finite_are_errors() {
        assert_eq!(double_quantize(&[]), Err(QuantError::Empty));
        assert!(matches!(
            double_quantize(&[1.0, f32::NAN]),
            Err(QuantError::NonFinite { index: 1, .. })
        ));
    }
}
