//! bitsandbytes' 8-bit blockwise quantization, signed dynamic map (for NF4 double quantization).
//!
//! # What bitsandbytes does (0.50.2, CPU, `float32` input)
//! `quantize_blockwise(A, blocksize)` calls the native `quantize_cpu` kernel
//! (`csrc/cpu_ops.cpp`), which does NOT search for the nearest code directly. Per block:
//! - `absmax = max|x|` (0 when the block is all zeros; every code is then 0);
//! - `v = clamp(x * (1 / absmax), -1, 1)`;
//! - `idx = trunc(((v + 1) * 0.5) * 65535 + 0.5)`, each operation rounded in `f32`;
//! - `code = LUT[idx]`, where the 65536-entry table maps `val_i = -1 + (2 * i) / 65535` (in
//!   `f32`) to the number of code midpoints `0.5 * (c[j] + c[j + 1])` strictly below `val_i`.
//!
//! So values are snapped to a grid of 65536 points before the nearest-code decision; near a
//! midpoint this can pick the farther code, and an exact `0.0` becomes code 131 (`2.125e-5`),
//! not code 127 (`0.0`), because the grid point nearest 0 is `1 / 65535`. The CUDA kernel
//! (`dQuantize` in `kernels.cu`) instead binary-searches the code and compares against the
//! exact midpoints, so the CPU and CUDA codes can differ by one step for values close to a
//! midpoint. This crate follows the
//! CPU kernel, which is what the fixtures (and the tests) were made with.
//!
//! Dequantization is `code[q] * absmax[block]` in `f32` on every backend.

use std::sync::OnceLock;

use crate::error::{QuantError, check_finite, check_len};

/// bitsandbytes' signed dynamic 8-bit map, `create_dynamic_map(signed=True)`, as `f32` bit
/// patterns (sorted ascending; index 127 is `0.0`, index 255 is `1.0`, index 0 is `-0.99296875`).
const DYNAMIC_SIGNED_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// bitsandbytes' signed dynamic 8-bit code (`create_dynamic_map(signed=True)`), the map used
/// for the nested quantization of NF4 absmax values.
pub static DYNAMIC_SIGNED_CODE: [f32; 256] = {
    let mut out = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = f32::from_bits(DYNAMIC_SIGNED_BITS[i]);
        i += 1;
    }
    out
};

/// Size of the CPU kernel's lookup table (`kLUTSize` in `cpu_ops.cpp`).
const LUT_SIZE: usize = 65536;

/// The CPU kernel's lookup table for [`DYNAMIC_SIGNED_CODE`], built once.
fn dynamic_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| build_lut(&DYNAMIC_SIGNED_CODE))
}

/// `build_quantize_lut` from bitsandbytes' `cpu_ops.cpp`.
fn build_lut(code: &[f32; 256]) -> Vec<u8> {
    let mut midpoints = [0.0f32; 255];
    for (i, m) in midpoints.iter_mut().enumerate() {
        *m = 0.5f32 * (code[i] + code[i + 1]);
    }
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut code_idx: u8 = 0;
    let denom = (LUT_SIZE - 1) as f32;
    for i in 0..LUT_SIZE {
        let val = -1.0f32 + (2.0f32 * i as f32) / denom;
        while usize::from(code_idx) < midpoints.len() && midpoints[usize::from(code_idx)] < val {
            code_idx += 1;
        }
        lut.push(code_idx);
    }
    lut
}

/// The lookup-table index of a normalised value (`norm_to_lut_index` in `cpu_ops.cpp`).
#[inline]
fn lut_index(v: f32) -> usize {
    let v = v.clamp(-1.0, 1.0);
    let t = ((v + 1.0f32) * 0.5f32) * (LUT_SIZE - 1) as f32 + 0.5f32;
    // t is in [0.5, 65535.5]; the cast truncates like the kernel's cvttps / static_cast.
    (t as usize).min(LUT_SIZE - 1)
}

/// Quantizes `values` in blocks of `block` with [`DYNAMIC_SIGNED_CODE`], bit-identical to
/// bitsandbytes' CPU `quantize_blockwise(values, blocksize=block)`.
///
/// Returns one `u8` code per value and one absmax per block.
///
/// # Errors
/// [`QuantError::ZeroBlockSize`] if `block == 0`; [`QuantError::NonFinite`] if any value is
/// NaN or infinite.
pub fn quantize_blockwise_dynamic(
    values: &[f32],
    block: usize,
) -> Result<(Vec<u8>, Vec<f32>), QuantError> {
    if block == 0 {
        return Err(QuantError::ZeroBlockSize);
    }
    check_finite("values", values)?;
    let lut = dynamic_lut();
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    for chunk in values.chunks(block) {
        let am = chunk.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        absmax.push(am);
        if am == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, chunk.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        codes.extend(chunk.iter().map(|&x| lut[lut_index(x * inv)]));
    }
    Ok((codes, absmax))
}

/// Dequantizes 8-bit dynamic codes: `DYNAMIC_SIGNED_CODE[q] * absmax[block]` in `f32`,
/// bit-identical to bitsandbytes' `dequantize_blockwise` with the default code.
///
/// # Errors
/// [`QuantError::ZeroBlockSize`] if `block == 0`; [`QuantError::LengthMismatch`] unless
/// `absmax.len() == codes.len().div_ceil(block)`.
pub fn dequantize_blockwise_dynamic(
    codes: &[u8],
    absmax: &[f32],
    block: usize,
) -> Result<Vec<f32>, QuantError> {
    if block == 0 {
        return Err(QuantError::ZeroBlockSize);
    }
    check_len("absmax", codes.len().div_ceil(block), absmax.len())?;
    Ok(codes
        .iter()
        .enumerate()
        .map(|(i, &q)| DYNAMIC_SIGNED_CODE[usize::from(q)] * absmax[i / block])
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dynamic_code_shape() {
        let c = &DYNAMIC_SIGNED_CODE;
        assert!(c.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
        assert_eq!(c[127], 0.0);
        assert_eq!(c[255], 1.0);
        assert_eq!(c[0], -0.99296875);
    }

    #[test]
    fn lut_is_monotone_and_spans_the_code() {
        let lut = dynamic_lut();
        assert_eq!(lut.len(), LUT_SIZE);
        assert!(lut.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(lut[0], 0);
        assert_eq!(lut[LUT_SIZE - 1], 255);
        // 0.0 lands on grid point 32768 (= 1/65535 above zero), past the tiny codes near 0:
        // bitsandbytes' CPU kernel encodes an exact 0 as code 131 (2.125e-5 * absmax).
        assert_eq!(lut[lut_index(0.0)], 131);
        assert!((DYNAMIC_SIGNED_CODE[131] - 2.125e-5).abs() < 1e-10);
    }

    #[test]
    fn code_values_round_trip_in_a_unit_block() {
        // With absmax exactly 1 the scale is 1; each code value must come back as itself
        // except where the 65536-point grid is coarser than the code (near 0).
        let mut v: Vec<f32> = DYNAMIC_SIGNED_CODE.to_vec();
        v[0] = -1.0; // make absmax exactly 1 on both ends
        let (q, am) = quantize_blockwise_dynamic(&v, 256).unwrap();
        assert_eq!(am, vec![1.0]);
        let grid = 2.0 / (LUT_SIZE - 1) as f32;
        for (i, &code) in q.iter().enumerate().skip(1) {
            let got = DYNAMIC_SIGNED_CODE[usize::from(code)];
            assert!((got - v[i]).abs() <= grid, "i {i}: {} -> {got}", v[i]);
        }
    }

    #[test]
    fn zero_block_gives_code_zero() {
        let (q, am) = quantize_blockwise_dynamic(&[0.0; 10], 4).unwrap();
        assert_eq!(q, vec![0; 10]);
        assert_eq!(am, vec![0.0; 3]);
    }
}
