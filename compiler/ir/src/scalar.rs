//! What each elementwise op computes on one element: the scalar semantics every part of the
//! compiler that evaluates an op reads (the front end's constant folding, the reference
//! interpreter, the optimizer's splat analysis). Code generators emit these formulas as
//! instructions; their results are checked against these.
//!
//! - Floats compute in the float type given (`f32` or `f64`); `max`/`min` return NaN when
//!   either operand is NaN, and `a` on ties.
//! - Signed integers wrap on `add`/`sub`/`mul`/`neg`/`abs`; `div` rounds toward zero and
//!   is undefined on zero (`MIN / -1` wraps).
//! - Comparisons follow IEEE on floats (NaN compares unequal to everything).
//! - `None` means the op is not defined on that kind of element.

use crate::op::{BinaryOp, UnaryOp};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A float type the scalar formulas compute in.
pub trait Float:
    Copy
    + PartialOrd
    + Neg<Output = Self>
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Not a number.
    const NAN: Self;
    /// `eˣ`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Sine.
    fn sin(self) -> Self;
    /// Cosine.
    fn cos(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// The error function (the `libm` crate's, a port of musl's: within 1 ulp).
    fn erf(self) -> Self;
    /// `selfʸ`.
    fn powf(self, y: Self) -> Self;
    /// True for NaN.
    fn is_nan(self) -> bool;
}

/// Implements [`Float`] for one primitive float type.
macro_rules! float {
    ($t:ty, $erf:path) => {
        impl Float for $t {
            const ZERO: $t = 0.0;
            const ONE: $t = 1.0;
            const NAN: $t = <$t>::NAN;
            fn exp(self) -> $t {
                <$t>::exp(self)
            }
            fn ln(self) -> $t {
                <$t>::ln(self)
            }
            fn sqrt(self) -> $t {
                <$t>::sqrt(self)
            }
            fn sin(self) -> $t {
                <$t>::sin(self)
            }
            fn cos(self) -> $t {
                <$t>::cos(self)
            }
            fn tanh(self) -> $t {
                <$t>::tanh(self)
            }
            fn abs(self) -> $t {
                <$t>::abs(self)
            }
            fn erf(self) -> $t {
                $erf(self)
            }
            fn powf(self, y: $t) -> $t {
                <$t>::powf(self, y)
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
float!(f32, libm::erff);
float!(f64, libm::erf);

/// A signed integer type the scalar formulas compute in.
pub trait Int: Copy + Ord {
    /// Zero.
    const ZERO: Self;
    /// Wrapping `+`.
    fn wrapping_add(self, y: Self) -> Self;
    /// Wrapping `-`.
    fn wrapping_sub(self, y: Self) -> Self;
    /// Wrapping `*`.
    fn wrapping_mul(self, y: Self) -> Self;
    /// `/` toward zero, `MIN / -1` wrapping (the caller rules out zero).
    fn wrapping_div(self, y: Self) -> Self;
    /// Wrapping negation.
    fn wrapping_neg(self) -> Self;
    /// Wrapping absolute value.
    fn wrapping_abs(self) -> Self;
}

/// Implements [`Int`] for one primitive signed integer type.
macro_rules! int {
    ($t:ty) => {
        impl Int for $t {
            const ZERO: $t = 0;
            fn wrapping_add(self, y: $t) -> $t {
                <$t>::wrapping_add(self, y)
            }
            fn wrapping_sub(self, y: $t) -> $t {
                <$t>::wrapping_sub(self, y)
            }
            fn wrapping_mul(self, y: $t) -> $t {
                <$t>::wrapping_mul(self, y)
            }
            fn wrapping_div(self, y: $t) -> $t {
                <$t>::wrapping_div(self, y)
            }
            fn wrapping_neg(self) -> $t {
                <$t>::wrapping_neg(self)
            }
            fn wrapping_abs(self) -> $t {
                <$t>::wrapping_abs(self)
            }
        }
    };
}
int!(i64);
int!(i32);

/// Why an integer op gives no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntError {
    /// The op is not defined on integers.
    Undefined,
    /// Integer division by zero.
    DivisionByZero,
}

impl UnaryOp {
    /// The op on one float; `None` for `not`.
    pub fn eval_float<F: Float>(self, x: F) -> Option<F> {
        Some(match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => F::ONE / x.sqrt(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => F::ONE / (F::ONE + (-x).exp()),
            UnaryOp::Silu => x / (F::ONE + (-x).exp()),
            UnaryOp::Relu => {
                if x < F::ZERO {
                    F::ZERO
                } else {
                    x
                }
            }
            UnaryOp::Abs => x.abs(),
            UnaryOp::Recip => F::ONE / x,
            UnaryOp::Erf => x.erf(),
            UnaryOp::Not => return None,
        })
    }

    /// The op on one signed integer: `neg` and `abs` (wrapping); `None` for the rest.
    pub fn eval_int<I: Int>(self, x: I) -> Option<I> {
        match self {
            UnaryOp::Neg => Some(x.wrapping_neg()),
            UnaryOp::Abs => Some(x.wrapping_abs()),
            _ => None,
        }
    }

    /// The op on one bool: `not`; `None` for the rest.
    pub fn eval_bool(self, x: bool) -> Option<bool> {
        (self == UnaryOp::Not).then_some(!x)
    }
}

impl BinaryOp {
    /// The arithmetic op on two floats; `None` for comparisons and logic.
    pub fn eval_float<F: Float>(self, x: F, y: F) -> Option<F> {
        Some(match self {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Pow => x.powf(y),
            BinaryOp::Max | BinaryOp::Min if x.is_nan() || y.is_nan() => F::NAN,
            BinaryOp::Max => {
                if y > x {
                    y
                } else {
                    x
                }
            }
            BinaryOp::Min => {
                if y < x {
                    y
                } else {
                    x
                }
            }
            _ => return None,
        })
    }

    /// The arithmetic op on two signed integers: `add`/`sub`/`mul` wrap, `div` rounds toward
    /// zero, `max`/`min`.
    pub fn eval_int<I: Int>(self, x: I, y: I) -> Result<I, IntError> {
        Ok(match self {
            BinaryOp::Add => x.wrapping_add(y),
            BinaryOp::Sub => x.wrapping_sub(y),
            BinaryOp::Mul => x.wrapping_mul(y),
            BinaryOp::Div if y == I::ZERO => return Err(IntError::DivisionByZero),
            BinaryOp::Div => x.wrapping_div(y),
            BinaryOp::Max => x.max(y),
            BinaryOp::Min => x.min(y),
            _ => return Err(IntError::Undefined),
        })
    }

    /// `max`/`min` on unsigned codes (`u8`, `u4`); `None` for the rest.
    pub fn eval_unsigned(self, x: u8, y: u8) -> Option<u8> {
        match self {
            BinaryOp::Max => Some(x.max(y)),
            BinaryOp::Min => Some(x.min(y)),
            _ => None,
        }
    }

    /// `and`/`or` on bools (and `max`/`min`, which are `or`/`and` there); `None` for the
    /// rest (comparisons: [`BinaryOp::compare`]).
    pub fn eval_bool(self, x: bool, y: bool) -> Option<bool> {
        match self {
            BinaryOp::And | BinaryOp::Min => Some(x && y),
            BinaryOp::Or | BinaryOp::Max => Some(x || y),
            _ => None,
        }
    }

    /// A comparison on any ordered element type; `None` for the other ops.
    pub fn compare<T: PartialOrd>(self, x: T, y: T) -> Option<bool> {
        Some(match self {
            BinaryOp::Eq => x == y,
            BinaryOp::Ne => x != y,
            BinaryOp::Lt => x < y,
            BinaryOp::Le => x <= y,
            BinaryOp::Gt => x > y,
            BinaryOp::Ge => x >= y,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_max_min_propagate_nan_and_keep_the_first_on_ties() {
        assert!(
            BinaryOp::Max
                .eval_float(f32::NAN, 1.0)
                .is_some_and(f32::is_nan)
        );
        assert!(
            BinaryOp::Min
                .eval_float(1.0, f64::NAN)
                .is_some_and(f64::is_nan)
        );
        assert_eq!(BinaryOp::Max.eval_float(1.0f64, 2.0), Some(2.0));
        let (pz, nz) = (0.0f32, -0.0f32);
        let tie = BinaryOp::Max.eval_float(pz, nz).map(f32::to_bits);
        assert_eq!(tie, Some(pz.to_bits()));
    }

    #[test]
    fn integer_arithmetic_wraps_and_division_rounds_toward_zero() {
        assert_eq!(BinaryOp::Div.eval_int(-7i64, 2), Ok(-3));
        assert_eq!(
            BinaryOp::Div.eval_int(1i32, 0),
            Err(IntError::DivisionByZero)
        );
        assert_eq!(BinaryOp::Div.eval_int(i64::MIN, -1), Ok(i64::MIN));
        assert_eq!(BinaryOp::Add.eval_int(i64::MAX, 1), Ok(i64::MIN));
        assert_eq!(BinaryOp::Pow.eval_int(2i64, 3), Err(IntError::Undefined));
        assert_eq!(UnaryOp::Abs.eval_int(i32::MIN), Some(i32::MIN));
    }

    #[test]
    fn each_float_formula_matches_its_definition() {
        // Hand-computed values (tolerance 1e-15).
        let x = 0.5f64;
        let cases = [
            (UnaryOp::Sigmoid, 1.0 / (1.0 + (-0.5f64).exp())),
            (UnaryOp::Silu, 0.5 / (1.0 + (-0.5f64).exp())),
            (UnaryOp::Rsqrt, std::f64::consts::SQRT_2),
            (UnaryOp::Recip, 2.0),
            (UnaryOp::Relu, 0.5),
        ];
        for (u, want) in cases {
            let got = u.eval_float(x).unwrap_or(f64::NAN);
            assert!((got - want).abs() <= 1e-15, "{}: {got} vs {want}", u.name());
        }
        assert_eq!(UnaryOp::Relu.eval_float(-2.0f32), Some(0.0));
        assert_eq!(UnaryOp::Not.eval_float(1.0f32), None);
        assert_eq!(BinaryOp::Lt.compare(f64::NAN, 1.0), Some(false));
        assert_eq!(BinaryOp::Add.compare(1, 2), None);
    }
}
