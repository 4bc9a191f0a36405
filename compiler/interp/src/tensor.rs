//! Runtime tensors: a [`TensorType`] plus row-major element storage, and the element
//! conversions (rounding to bf16/f16, casts) that every op shares.
//!
//! Storage by dtype: `f32`, `bf16` and `f16` are [`Data::F32`] (bf16/f16 values are always
//! exactly representable in their type); `f64` is [`Data::F64`]; `i64`, `i32`, `u8` and
//! `bool` have their own vectors; `u4` is [`Data::U4`], one *unpacked* code (0..=15) per
//! element.

use crate::InterpError;
use graft_ir::{DType, Shape, TensorType};

/// Element storage, row-major, one entry per element.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// `f32`, `bf16` and `f16` tensors (bf16/f16 values exactly representable in the type).
    F32(Vec<f32>),
    /// `f64` tensors.
    F64(Vec<f64>),
    /// `i64` tensors.
    I64(Vec<i64>),
    /// `i32` tensors.
    I32(Vec<i32>),
    /// `u8` tensors.
    U8(Vec<u8>),
    /// `u4` tensors: one unpacked 4-bit code per element, each in `0..=15`.
    U4(Vec<u8>),
    /// `bool` tensors.
    Bool(Vec<bool>),
}

/// Applies `$body` (generic over the element type) to the vector inside any [`Data`],
/// rebuilding the same variant.
macro_rules! map_data {
    ($d:expr, $v:ident => $body:expr) => {
        match $d {
            Data::F32($v) => Data::F32($body),
            Data::F64($v) => Data::F64($body),
            Data::I64($v) => Data::I64($body),
            Data::I32($v) => Data::I32($body),
            Data::U8($v) => Data::U8($body),
            Data::U4($v) => Data::U4($body),
            Data::Bool($v) => Data::Bool($body),
        }
    };
}

impl Data {
    /// Number of elements stored.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::U8(v) | Data::U4(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    /// True when no element is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when this storage variant is the one `dtype` uses.
    pub fn fits(&self, dtype: DType) -> bool {
        matches!(
            (self, dtype),
            (Data::F32(_), DType::F32 | DType::BF16 | DType::F16)
                | (Data::F64(_), DType::F64)
                | (Data::I64(_), DType::I64)
                | (Data::I32(_), DType::I32)
                | (Data::U8(_), DType::U8)
                | (Data::U4(_), DType::U4)
                | (Data::Bool(_), DType::Bool)
        )
    }

    /// The elements at `idx`, in order (every index must be below [`Data::len`]).
    pub(crate) fn take(&self, idx: &[usize]) -> Data {
        map_data!(self, v => idx.iter().map(|&i| v[i]).collect())
    }

    /// Element `i` as a [`Num`] (exact: floats widen to f64, integers to i64).
    pub(crate) fn num(&self, i: usize) -> Num {
        match self {
            Data::F32(v) => Num::F(f64::from(v[i])),
            Data::F64(v) => Num::F(v[i]),
            Data::I64(v) => Num::I(v[i]),
            Data::I32(v) => Num::I(i64::from(v[i])),
            Data::U8(v) | Data::U4(v) => Num::I(i64::from(v[i])),
            Data::Bool(v) => Num::B(v[i]),
        }
    }
}

/// One element value, wide enough to hold any dtype's element exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    /// A floating value.
    F(f64),
    /// An integer value.
    I(i64),
    /// A boolean.
    B(bool),
}

/// Rounds an `f32` to the nearest `dtype` value (ties to even); identity for `f32`.
/// Only meaningful for the dtypes stored as [`Data::F32`].
pub fn round_f32(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Rounds an `f64` once, to nearest-even, to a dtype stored as [`Data::F32`] (`f32`, `bf16`,
/// `f16`).
///
/// For bf16/f16 this goes through `f32` with round-to-odd, which has enough extra bits that
/// the final round-to-nearest-even is correct (no double rounding). `half`'s own
/// `from_f64` drops the low 32 mantissa bits first and so can misround exact ties.
pub fn round_f64(dtype: DType, x: f64) -> f32 {
    match dtype {
        DType::BF16 | DType::F16 => round_f32(dtype, f64_to_f32_round_odd(x)),
        _ => x as f32,
    }
}

/// Converts to `f32` rounding to odd: exact values stay, inexact ones are truncated toward
/// zero and get their lowest mantissa bit set.
fn f64_to_f32_round_odd(x: f64) -> f32 {
    let r = x as f32;
    if r.is_nan() || f64::from(r) == x {
        return r;
    }
    let truncated = if f64::from(r).abs() > x.abs() {
        // one step toward zero (r is not zero here: |r| > |x| >= 0)
        f32::from_bits(r.to_bits() - 1)
    } else {
        r
    };
    f32::from_bits(truncated.to_bits() | 1)
}

/// Builds storage for `dtype` from element values, converting each like `cast`:
/// - to a float dtype: floats round to nearest even, integers convert (`as`), bools give 0/1;
/// - to `i64`/`i32`/`u8`: floats truncate toward zero and saturate (Rust `as`; NaN gives 0),
///   integers wrap (Rust `as`), bools give 0/1;
/// - to `u4`: floats saturate to `0..=15`, integers wrap modulo 16;
/// - to `bool`: `value != 0` (NaN gives true).
///
/// Integers beyond ±2⁵³ going to bf16/f16 are first rounded to f64 (a possible double
/// rounding, irrelevant for the values the IR uses).
pub(crate) fn build(dtype: DType, vals: impl Iterator<Item = Num>) -> Data {
    let as_f64 = |n: Num| match n {
        Num::F(x) => x,
        Num::I(i) => i as f64,
        Num::B(b) => f64::from(u8::from(b)),
    };
    let as_i64 = |n: Num| match n {
        Num::F(x) => x as i64,
        Num::I(i) => i,
        Num::B(b) => i64::from(b),
    };
    match dtype {
        DType::F64 => Data::F64(vals.map(as_f64).collect()),
        DType::F32 => Data::F32(
            vals.map(|n| match n {
                Num::I(i) => i as f32,
                n => as_f64(n) as f32,
            })
            .collect(),
        ),
        DType::BF16 | DType::F16 => Data::F32(vals.map(|n| round_f64(dtype, as_f64(n))).collect()),
        DType::I64 => Data::I64(vals.map(as_i64).collect()),
        DType::I32 => Data::I32(
            vals.map(|n| match n {
                Num::F(x) => x as i32,
                n => as_i64(n) as i32,
            })
            .collect(),
        ),
        DType::U8 => Data::U8(
            vals.map(|n| match n {
                Num::F(x) => x as u8,
                n => as_i64(n) as u8,
            })
            .collect(),
        ),
        DType::U4 => Data::U4(
            vals.map(|n| match n {
                Num::F(x) => (x as u8).min(15),
                n => (as_i64(n) as u8) & 0x0f,
            })
            .collect(),
        ),
        DType::Bool => Data::Bool(
            vals.map(|n| match n {
                Num::F(x) => x != 0.0,
                Num::I(i) => i != 0,
                Num::B(b) => b,
            })
            .collect(),
        ),
    }
}

/// A tensor value: its type and its row-major elements. The data always has one element per
/// position of the shape, in the storage variant the dtype uses (see [`Data`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    ty: TensorType,
    data: Data,
}

impl Tensor {
    /// Builds a tensor, checking that `data` is `ty`'s storage variant with one element per
    /// position and that `u4` codes are at most 15. bf16/f16 values are rounded to the
    /// nearest representable value (ties to even).
    ///
    /// # Errors
    /// [`InterpError::InvalidTensor`] when the data does not fit the type.
    pub fn new(ty: TensorType, data: Data) -> Result<Tensor, InterpError> {
        let bad = |message: String| InterpError::InvalidTensor {
            ty: ty.clone(),
            message,
        };
        if !data.fits(ty.dtype) {
            return Err(bad(format!(
                "{} storage does not hold {}",
                kind(&data),
                ty.dtype
            )));
        }
        if data.len() != ty.numel() {
            return Err(bad(format!(
                "{} elements given, the shape has {}",
                data.len(),
                ty.numel()
            )));
        }
        let data = match data {
            Data::U4(v) => {
                if let Some(c) = v.iter().find(|&&c| c > 15) {
                    return Err(bad(format!("u4 code {c} is above 15")));
                }
                Data::U4(v)
            }
            Data::F32(v) if matches!(ty.dtype, DType::BF16 | DType::F16) => {
                Data::F32(v.into_iter().map(|x| round_f32(ty.dtype, x)).collect())
            }
            d => d,
        };
        Ok(Tensor { ty, data })
    }

    /// Internal constructor for results whose data is known to fit `ty`.
    pub(crate) fn from_parts(ty: TensorType, data: Data) -> Tensor {
        Tensor { ty, data }
    }

    /// An `f32` tensor. # Errors: when `data.len()` is not the shape's element count.
    pub fn f32(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::F32, shape), Data::F32(data))
    }

    /// A `bf16` tensor; values are rounded to bf16 (nearest, ties to even).
    /// # Errors: when `data.len()` is not the shape's element count.
    pub fn bf16(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::BF16, shape), Data::F32(data))
    }

    /// An `f16` tensor; values are rounded to f16 (nearest, ties to even).
    /// # Errors: when `data.len()` is not the shape's element count.
    pub fn f16(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::F16, shape), Data::F32(data))
    }

    /// An `f64` tensor. # Errors: when `data.len()` is not the shape's element count.
    pub fn f64(shape: impl Into<Shape>, data: Vec<f64>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::F64, shape), Data::F64(data))
    }

    /// An `i64` tensor. # Errors: when `data.len()` is not the shape's element count.
    pub fn i64(shape: impl Into<Shape>, data: Vec<i64>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::I64, shape), Data::I64(data))
    }

    /// An `i32` tensor. # Errors: when `data.len()` is not the shape's element count.
    pub fn i32(shape: impl Into<Shape>, data: Vec<i32>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::I32, shape), Data::I32(data))
    }

    /// A `u8` tensor. # Errors: when `data.len()` is not the shape's element count.
    pub fn u8(shape: impl Into<Shape>, data: Vec<u8>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::U8, shape), Data::U8(data))
    }

    /// A `u4` tensor from unpacked codes (one per element, each `0..=15`).
    /// # Errors: on a wrong element count or a code above 15.
    pub fn u4(shape: impl Into<Shape>, codes: Vec<u8>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::U4, shape), Data::U4(codes))
    }

    /// A `bool` tensor. # Errors: when `data.len()` is not the shape's element count.
    pub fn bool(shape: impl Into<Shape>, data: Vec<bool>) -> Result<Tensor, InterpError> {
        Tensor::new(TensorType::new(DType::Bool, shape), Data::Bool(data))
    }

    /// A rank-0 `f32` tensor.
    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor::from_parts(TensorType::scalar(DType::F32), Data::F32(vec![x]))
    }

    /// A rank-0 `f64` tensor.
    pub fn scalar_f64(x: f64) -> Tensor {
        Tensor::from_parts(TensorType::scalar(DType::F64), Data::F64(vec![x]))
    }

    /// A rank-0 `i64` tensor (for example a `seed` input).
    pub fn scalar_i64(x: i64) -> Tensor {
        Tensor::from_parts(TensorType::scalar(DType::I64), Data::I64(vec![x]))
    }

    /// A rank-0 `bool` tensor.
    pub fn scalar_bool(x: bool) -> Tensor {
        Tensor::from_parts(TensorType::scalar(DType::Bool), Data::Bool(vec![x]))
    }

    /// A tensor of `ty` filled with zeros (false for bool).
    pub fn zeros(ty: TensorType) -> Tensor {
        let data = build(ty.dtype, std::iter::repeat_n(Num::I(0), ty.numel()));
        Tensor { ty, data }
    }

    /// The tensor's type.
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.ty.shape
    }

    /// The tensor's dtype.
    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The element storage.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The element storage, by value.
    pub fn into_data(self) -> Data {
        self.data
    }

    /// The elements of an `f32`, `bf16` or `f16` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an `f64` tensor.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.data {
            Data::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an `i64` tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an `i32` tensor.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of a `u8` tensor.
    pub fn as_u8(&self) -> Option<&[u8]> {
        match &self.data {
            Data::U8(v) => Some(v),
            _ => None,
        }
    }

    /// The unpacked codes of a `u4` tensor.
    pub fn as_u4(&self) -> Option<&[u8]> {
        match &self.data {
            Data::U4(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of a `bool` tensor.
    pub fn as_bool(&self) -> Option<&[bool]> {
        match &self.data {
            Data::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// Every element as `f64` (integers converted with `as`, bools as 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.data.len())
            .map(|i| match self.data.num(i) {
                Num::F(x) => x,
                Num::I(v) => v as f64,
                Num::B(b) => f64::from(u8::from(b)),
            })
            .collect()
    }
}

fn kind(d: &Data) -> &'static str {
    match d {
        Data::F32(_) => "F32",
        Data::F64(_) => "F64",
        Data::I64(_) => "I64",
        Data::I32(_) => "I32",
        Data::U8(_) => "U8",
        Data::U4(_) => "U4",
        Data::Bool(_) => "Bool",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two neighbours of `r` in `dtype` (as f64), for a finite non-zero `r`.
    fn neighbours(dtype: DType, r: f32) -> (f64, f64) {
        let step = |up: bool| -> f64 {
            match dtype {
                DType::BF16 => {
                    let b = half::bf16::from_f32(r).to_bits();
                    let n = if (r > 0.0) == up { b + 1 } else { b - 1 };
                    f64::from(half::bf16::from_bits(n).to_f32())
                }
                _ => {
                    let b = half::f16::from_f32(r).to_bits();
                    let n = if (r > 0.0) == up { b + 1 } else { b - 1 };
                    f64::from(half::f16::from_bits(n).to_f32())
                }
            }
        };
        (step(false), step(true))
    }

    #[test]
    fn round_f64_is_nearest_even_for_bf16_and_f16() {
        let mut s = 0x1234_5678_9abc_def0u64;
        for i in 0..20_000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // random f64 of moderate magnitude, plus exact ties with a tiny excess or deficit
            let base = f64::from_bits((s >> 12) | 0x3ff0_0000_0000_0000) - 1.5; // [-0.5, 0.5)
            for dtype in [DType::BF16, DType::F16] {
                let x = match i % 3 {
                    0 => base * 3.0,
                    // just above or below the midpoint between two positive neighbours
                    1 => {
                        let r = round_f64(dtype, base.abs() + 0.01);
                        let mid = (f64::from(r) + neighbours(dtype, r).1) / 2.0;
                        let nudge = 2f64.powi(-40);
                        if s & 1 == 0 { mid + nudge } else { mid - nudge }
                    }
                    _ => f64::from(round_f64(dtype, base)),
                };
                let r = round_f64(dtype, x);
                assert_eq!(round_f32(dtype, r), r, "{x}: result is representable");
                if r == 0.0 || !r.is_finite() {
                    continue;
                }
                let (down, up) = neighbours(dtype, r);
                let d = (x - f64::from(r)).abs();
                assert!(
                    d <= (x - down).abs() && d <= (x - up).abs(),
                    "{dtype} {x:e} -> {r:e}"
                );
            }
        }
    }

    #[test]
    fn exact_ties_go_to_even() {
        // 1 + 2^-8 is a bf16 tie between 1 and 1 + 2^-7
        assert_eq!(round_f64(DType::BF16, 1.0 + 2f64.powi(-8)), 1.0);
        assert_eq!(
            round_f64(DType::BF16, 1.0 + 3.0 * 2f64.powi(-8)),
            1.0 + 2f32.powi(-6)
        );
        // f16: 1 + 2^-11 is a tie between 1 and 1 + 2^-10
        assert_eq!(round_f64(DType::F16, 1.0 + 2f64.powi(-11)), 1.0);
        assert_eq!(
            round_f64(DType::F16, 1.0 + 2f64.powi(-11) + 2f64.powi(-50)),
            1.0 + 2f32.powi(-10)
        );
        assert_eq!(round_f64(DType::BF16, 1e300), f32::INFINITY);
        assert!(round_f64(DType::BF16, f64::NAN).is_nan());
    }
}
