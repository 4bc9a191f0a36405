//! The IR's random numbers: a counter-based generator (splitmix64) that gives every element
//! of every random tensor from `(seed, stream, element index)` alone, so any backend can
//! reproduce the interpreter's values exactly, in any order and in parallel.
//!
//! Definitions (all arithmetic wrapping on `u64`):
//! - `key = splitmix64(seed as u64 ^ splitmix64(stream))`
//! - `bits(i) = splitmix64(key ^ i * 0xD2B74407B1CE6E93)`
//! - `u(i) = (bits(i) >> 11) · 2⁻⁵³`, uniform on `[0, 1)`
//! - `random_uniform{lo, hi}`: element `i` is `lo + (hi - lo) · u(i)`
//! - `random_normal{mean, std}`: element `i` is `mean + std · sqrt(-2 ln(1 - u(2i))) ·
//!   cos(2π u(2i+1))` (Box–Muller; `1 - u` is in `(0, 1]`, so the log is finite)
//! - `random_int{lo, hi}`: element `i` is `lo + bits(i) mod (hi - lo)`
//! - `random_torch_uniform{lo, hi, stream}`: PyTorch's CPU `uniform_` (`mt19937.rs`), the
//!   seed operand seeding the generator and `stream` the draws made before this tensor
//! - `random_torch_randperm{n, stream}`: the leading entries of PyTorch's CPU `randperm(n)`
//!   (`mt19937.rs`), seeded and skipped the same way
//! - `dropout{p}`: element `i` is kept iff `u(i) >= p`
//!
//! Values are computed in `f64` and rounded once to the node dtype (integers converted like
//! `cast`), so a uniform draw may round up to exactly `hi` in a narrow dtype.

use crate::tensor::{Data, Num, build, round_f64};
use crate::{Ctx, InterpError, Tensor};
use graft_ir::{DType, Distribution};

/// The splitmix64 finalizer step: `x += 0x9E3779B97F4A7C15` then two xor-shift-multiply
/// rounds and a final xor-shift (Steele, Lea & Flood; the standard constants).
pub fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one random tensor: `splitmix64(seed as u64 ^ splitmix64(stream))`.
pub fn stream_key(seed: i64, stream: u64) -> u64 {
    splitmix64(seed as u64 ^ splitmix64(stream))
}

/// Element `i`'s 64 random bits for a key: `splitmix64(key ^ i * 0xD2B74407B1CE6E93)`.
fn bits_at(key: u64, i: u64) -> u64 {
    splitmix64(key ^ i.wrapping_mul(0xD2B7_4407_B1CE_6E93))
}

/// The top 53 bits of `bits` as a float in `[0, 1)`.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `bits(i)`: element `i`'s 64 random bits for `(seed, stream)`.
pub fn uniform_bits(seed: i64, stream: u64, i: u64) -> u64 {
    bits_at(stream_key(seed, stream), i)
}

/// `u(i)`: element `i`'s uniform value on `[0, 1)` for `(seed, stream)`.
pub fn uniform_unit(seed: i64, stream: u64, i: u64) -> f64 {
    unit(uniform_bits(seed, stream, i))
}

/// Element `i` of `random_uniform{lo, hi, stream}(seed)`, before rounding to the dtype.
pub fn uniform_value(seed: i64, stream: u64, i: u64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * uniform_unit(seed, stream, i)
}

/// Element `i` of `random_normal{mean, std, stream}(seed)`, before rounding to the dtype.
pub fn normal_value(seed: i64, stream: u64, i: u64, mean: f64, std: f64) -> f64 {
    normal_at(stream_key(seed, stream), i, mean, std)
}

fn normal_at(key: u64, i: u64, mean: f64, std: f64) -> f64 {
    let u1 = unit(bits_at(key, i.wrapping_mul(2)));
    let u2 = unit(bits_at(key, i.wrapping_mul(2).wrapping_add(1)));
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    mean + std * r * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Element `i` of `random_int{lo, hi, stream}(seed)` (needs `lo < hi`), before conversion to
/// the dtype: `lo + bits(i) mod (hi - lo)`.
pub fn int_value(seed: i64, stream: u64, i: u64, lo: i64, hi: i64) -> i64 {
    int_at(stream_key(seed, stream), i, lo, hi)
}

fn int_at(key: u64, i: u64, lo: i64, hi: i64) -> i64 {
    // hi - lo fits a u64 for any lo < hi.
    let range = hi.wrapping_sub(lo) as u64;
    if range == 0 {
        return lo;
    }
    lo.wrapping_add((bits_at(key, i) % range) as i64)
}

/// Whether `dropout{p, stream}(x, seed)` keeps element `i`: `u(i) >= p`.
pub fn dropout_keep(seed: i64, stream: u64, i: u64, p: f64) -> bool {
    uniform_unit(seed, stream, i) >= p
}

/// The value of an `i64[]` seed operand.
fn seed_of(ctx: &Ctx<'_>, i: usize) -> Result<i64, InterpError> {
    match ctx.arg(i)?.as_i64() {
        Some(&[s]) => Ok(s),
        _ => Err(ctx.unsupported("the seed must be an i64 scalar")),
    }
}

/// `random_uniform`, `random_normal`, `random_int`: element `i` (row-major) as defined in
/// the module docs, rounded or converted to the node dtype.
pub(crate) fn random(
    ctx: &Ctx<'_>,
    dist: Distribution,
    stream: u64,
) -> Result<Tensor, InterpError> {
    let key = stream_key(seed_of(ctx, 0)?, stream);
    let n = ctx.ty.numel() as u64;
    let dt = ctx.ty.dtype;
    let data = match dist {
        Distribution::Uniform { lo, hi } => build(
            dt,
            (0..n).map(|i| Num::F(lo + (hi - lo) * unit(bits_at(key, i)))),
        ),
        Distribution::TorchUniform { lo, hi } => {
            let v =
                crate::mt19937::torch_uniform(seed_of(ctx, 0)? as u64, stream, n as usize, lo, hi);
            build(dt, v.into_iter().map(|x| Num::F(f64::from(x))))
        }
        Distribution::TorchRandperm { n: range } => {
            let v = crate::mt19937::torch_randperm(
                seed_of(ctx, 0)? as u64,
                stream,
                range as u64,
                n as usize,
            );
            build(dt, v.into_iter().map(|x| Num::I(x as i64)))
        }
        Distribution::Normal { mean, std } => {
            build(dt, (0..n).map(|i| Num::F(normal_at(key, i, mean, std))))
        }
        Distribution::Int { lo, hi } => {
            if lo >= hi {
                return Err(ctx.unsupported("random_int needs lo < hi"));
            }
            build(dt, (0..n).map(|i| Num::I(int_at(key, i, lo, hi))))
        }
    };
    ctx.result(data)
}

/// `dropout{p, stream}(x, seed)`: element `i` is `x[i] / (1 - p)` (computed in `f64`, rounded
/// once to the dtype) when `u(i) >= p`, else `+0.0` (even for NaN or infinite `x`).
pub(crate) fn dropout(ctx: &Ctx<'_>, p: f64, stream: u64) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let key = stream_key(seed_of(ctx, 1)?, stream);
    let keep = |i: usize| unit(bits_at(key, i as u64)) >= p;
    let scale = 1.0 - p;
    let dt = ctx.ty.dtype;
    let data = match (x.data(), dt) {
        (Data::F64(v), DType::F64) => Data::F64(
            v.iter()
                .enumerate()
                .map(|(i, &a)| if keep(i) { a / scale } else { 0.0 })
                .collect(),
        ),
        (Data::F32(v), _) => Data::F32(
            v.iter()
                .enumerate()
                .map(|(i, &a)| {
                    if keep(i) {
                        round_f64(dt, f64::from(a) / scale)
                    } else {
                        0.0
                    }
                })
                .collect(),
        ),
        _ => return Err(ctx.unsupported("dropout needs a float operand")),
    };
    ctx.result(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // The first outputs of the reference splitmix64 generator seeded with 0
        // (state advances by the golden gamma each call; this function adds it first).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn unit_is_in_range() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
    }

    #[test]
    fn int_covers_extreme_ranges() {
        let v = int_value(1, 2, 3, i64::MIN, i64::MAX);
        assert!(v < i64::MAX);
        assert_eq!(int_value(1, 2, 3, 5, 6), 5);
    }
}
