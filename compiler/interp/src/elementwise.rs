//! Elementwise ops: `constant`, `iota`, unary and binary arithmetic, comparisons, logic,
//! `select` and `cast`.
//!
//! Float ops compute in `f32` (bf16/f16 values widen exactly to `f32`) or in `f64` for `f64`
//! tensors, then round the result to the node dtype. See the crate docs for the exact
//! definitions.

use crate::tensor::{Data, Num, build, round_f32};
use crate::{Ctx, InterpError, Tensor};
use graft_ir::{BinaryOp, UnaryOp};

/// `constant{value}`: every element is `value` converted to the node dtype like `cast`.
pub(crate) fn constant(ctx: &Ctx<'_>, value: f64) -> Result<Tensor, InterpError> {
    let n = ctx.ty.numel();
    ctx.result(build(ctx.ty.dtype, std::iter::repeat_n(Num::F(value), n)))
}

/// `iota{axis}`: each element is its index along `axis`, converted to the node dtype.
pub(crate) fn iota(ctx: &Ctx<'_>, axis: usize) -> Result<Tensor, InterpError> {
    let shape = &ctx.ty.shape;
    let Some(&extent) = shape.get(axis) else {
        return Err(ctx.unsupported(format!("axis {axis} is out of range")));
    };
    let inner: usize = shape[axis + 1..].iter().product();
    let vals = (0..ctx.ty.numel()).map(|i| Num::I(((i / inner.max(1)) % extent.max(1)) as i64));
    ctx.result(build(ctx.ty.dtype, vals))
}

/// Generates the unary float function for one float type.
macro_rules! unary_float {
    ($name:ident, $t:ty) => {
        /// The unary op on one float, or `None` for ops undefined on floats.
        fn $name(u: UnaryOp, x: $t) -> Option<$t> {
            Some(match u {
                UnaryOp::Neg => -x,
                UnaryOp::Exp => x.exp(),
                UnaryOp::Log => x.ln(),
                UnaryOp::Sqrt => x.sqrt(),
                UnaryOp::Rsqrt => 1.0 / x.sqrt(),
                UnaryOp::Sin => x.sin(),
                UnaryOp::Cos => x.cos(),
                UnaryOp::Tanh => x.tanh(),
                UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                UnaryOp::Silu => x / (1.0 + (-x).exp()),
                UnaryOp::Relu => {
                    if x < 0.0 {
                        0.0
                    } else {
                        x
                    }
                }
                UnaryOp::Abs => x.abs(),
                UnaryOp::Recip => 1.0 / x,
                UnaryOp::Not => return None,
            })
        }
    };
}
unary_float!(unary_f32, f32);
unary_float!(unary_f64, f64);

/// An elementwise unary op. Floats: see [`unary_f32`]. `neg`/`abs` on `i64`/`i32` wrap
/// (`i64::MIN` stays `i64::MIN`); `abs` on `u8`/`u4` is the identity; `not` on bool.
pub(crate) fn unary(ctx: &Ctx<'_>, u: UnaryOp) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let dt = ctx.ty.dtype;
    let undefined = || ctx.unsupported(format!("`{}` is not defined on {}", u.name(), x.dtype()));
    let data = match (x.data(), u) {
        (Data::F32(v), _) => Data::F32(
            v.iter()
                .map(|&a| unary_f32(u, a).map(|r| round_f32(dt, r)))
                .collect::<Option<_>>()
                .ok_or_else(undefined)?,
        ),
        (Data::F64(v), _) => Data::F64(
            v.iter()
                .map(|&a| unary_f64(u, a))
                .collect::<Option<_>>()
                .ok_or_else(undefined)?,
        ),
        (Data::I64(v), UnaryOp::Neg) => Data::I64(v.iter().map(|a| a.wrapping_neg()).collect()),
        (Data::I64(v), UnaryOp::Abs) => Data::I64(v.iter().map(|a| a.wrapping_abs()).collect()),
        (Data::I32(v), UnaryOp::Neg) => Data::I32(v.iter().map(|a| a.wrapping_neg()).collect()),
        (Data::I32(v), UnaryOp::Abs) => Data::I32(v.iter().map(|a| a.wrapping_abs()).collect()),
        (Data::U8(_) | Data::U4(_), UnaryOp::Abs) => x.data().clone(),
        (Data::Bool(v), UnaryOp::Not) => Data::Bool(v.iter().map(|a| !a).collect()),
        _ => return Err(undefined()),
    };
    ctx.result(data)
}

/// Generates the binary float function for one float type.
macro_rules! binary_float {
    ($name:ident, $t:ty) => {
        /// The arithmetic binary op on two floats, or `None` for comparisons and logic.
        /// `max`/`min` return NaN when either operand is NaN (and `a` on ties).
        fn $name(b: BinaryOp, x: $t, y: $t) -> Option<$t> {
            Some(match b {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                BinaryOp::Pow => x.powf(y),
                BinaryOp::Max => {
                    if x.is_nan() || y.is_nan() {
                        <$t>::NAN
                    } else if y > x {
                        y
                    } else {
                        x
                    }
                }
                BinaryOp::Min => {
                    if x.is_nan() || y.is_nan() {
                        <$t>::NAN
                    } else if y < x {
                        y
                    } else {
                        x
                    }
                }
                _ => return None,
            })
        }
    };
}
binary_float!(binary_f32, f32);
binary_float!(binary_f64, f64);

/// A comparison on any ordered element type (IEEE semantics for floats).
fn compare<T: PartialOrd>(b: BinaryOp, x: T, y: T) -> Option<bool> {
    Some(match b {
        BinaryOp::Eq => x == y,
        BinaryOp::Ne => x != y,
        BinaryOp::Lt => x < y,
        BinaryOp::Le => x <= y,
        BinaryOp::Gt => x > y,
        BinaryOp::Ge => x >= y,
        _ => return None,
    })
}

/// Generates integer arithmetic for one signed integer type.
macro_rules! binary_int {
    ($name:ident, $t:ty) => {
        /// Integer `add`/`sub`/`mul` (wrapping), `div` (toward zero; `Err` on zero; `MIN / -1`
        /// wraps), `max`, `min`; `Ok(None)` for ops undefined on integers.
        fn $name(b: BinaryOp, x: $t, y: $t) -> Result<Option<$t>, ()> {
            Ok(Some(match b {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Div => {
                    if y == 0 {
                        return Err(());
                    }
                    x.wrapping_div(y)
                }
                BinaryOp::Max => x.max(y),
                BinaryOp::Min => x.min(y),
                _ => return Ok(None),
            }))
        }
    };
}
binary_int!(binary_i64, i64);
binary_int!(binary_i32, i32);

/// Applies `f` pairwise, mapping `None` to "undefined" and `Err` to division by zero.
fn zip_map<T: Copy, R>(
    ctx: &Ctx<'_>,
    b: BinaryOp,
    x: &[T],
    y: &[T],
    f: impl Fn(T, T) -> Result<Option<R>, ()>,
) -> Result<Vec<R>, InterpError> {
    x.iter()
        .zip(y)
        .map(|(&a, &c)| match f(a, c) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(ctx.unsupported(format!("`{}` is not defined here", b.name()))),
            Err(()) => Err(InterpError::DivisionByZero { node: ctx.node }),
        })
        .collect()
}

/// An elementwise binary op on two operands of one type. Comparisons give bool on every
/// dtype; `and`/`or` (and `max`/`min`, as or/and) on bool; arithmetic on floats and on
/// `i64`/`i32`; `max`/`min` on `u8`/`u4` too.
pub(crate) fn binary(ctx: &Ctx<'_>, b: BinaryOp) -> Result<Tensor, InterpError> {
    let (x, y) = (ctx.arg(0)?, ctx.arg(1)?);
    let dt = x.dtype();
    let data = match (x.data(), y.data()) {
        _ if b.is_comparison() => {
            let n = x.numel().min(y.numel());
            let v: Vec<bool> = (0..n)
                .map(|i| match (x.data().num(i), y.data().num(i)) {
                    (Num::F(p), Num::F(q)) => compare(b, p, q),
                    (Num::I(p), Num::I(q)) => compare(b, p, q),
                    (Num::B(p), Num::B(q)) => compare(b, p, q),
                    _ => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| ctx.unsupported("operands of different kinds"))?;
            Data::Bool(v)
        }
        (Data::F32(p), Data::F32(q)) => Data::F32(zip_map(ctx, b, p, q, |a, c| {
            Ok(binary_f32(b, a, c).map(|r| round_f32(dt, r)))
        })?),
        (Data::F64(p), Data::F64(q)) => {
            Data::F64(zip_map(ctx, b, p, q, |a, c| Ok(binary_f64(b, a, c)))?)
        }
        (Data::I64(p), Data::I64(q)) => {
            Data::I64(zip_map(ctx, b, p, q, |a, c| binary_i64(b, a, c))?)
        }
        (Data::I32(p), Data::I32(q)) => {
            Data::I32(zip_map(ctx, b, p, q, |a, c| binary_i32(b, a, c))?)
        }
        (Data::U8(p), Data::U8(q)) => {
            Data::U8(zip_map(ctx, b, p, q, |a, c| Ok(unsigned(b, a, c)))?)
        }
        (Data::U4(p), Data::U4(q)) => {
            Data::U4(zip_map(ctx, b, p, q, |a, c| Ok(unsigned(b, a, c)))?)
        }
        (Data::Bool(p), Data::Bool(q)) => Data::Bool(zip_map(ctx, b, p, q, |a, c| {
            Ok(match b {
                BinaryOp::And | BinaryOp::Min => Some(a && c),
                BinaryOp::Or | BinaryOp::Max => Some(a || c),
                _ => None,
            })
        })?),
        _ => return Err(ctx.unsupported("operands have different storage")),
    };
    ctx.result(data)
}

/// `max`/`min` on unsigned codes; other ops are undefined on `u8`/`u4`.
fn unsigned(b: BinaryOp, x: u8, y: u8) -> Option<u8> {
    match b {
        BinaryOp::Max => Some(x.max(y)),
        BinaryOp::Min => Some(x.min(y)),
        _ => None,
    }
}

/// `select(c, a, b)`: `a[i]` where `c[i]`, else `b[i]`.
pub(crate) fn select(ctx: &Ctx<'_>) -> Result<Tensor, InterpError> {
    let (c, a, b) = (ctx.arg(0)?, ctx.arg(1)?, ctx.arg(2)?);
    let Some(c) = c.as_bool() else {
        return Err(ctx.unsupported("the condition must be bool"));
    };
    // Indices into the concatenation [a; b].
    let n = a.numel();
    let idx: Vec<usize> = c
        .iter()
        .enumerate()
        .map(|(i, &k)| if k { i } else { n + i })
        .collect();
    let both = crate::layout::join(&[a.data(), b.data()])
        .ok_or_else(|| ctx.unsupported("the two values have different storage"))?;
    ctx.result(both.take(&idx))
}

/// `cast`: converts every element to the node dtype (rules in the crate docs).
pub(crate) fn cast(ctx: &Ctx<'_>) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    if x.dtype() == ctx.ty.dtype {
        return Ok(x.clone());
    }
    let d = x.data();
    ctx.result(build(ctx.ty.dtype, (0..d.len()).map(|i| d.num(i))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_max_min_propagate_nan() {
        assert!(binary_f32(BinaryOp::Max, f32::NAN, 1.0).is_some_and(f32::is_nan));
        assert!(binary_f32(BinaryOp::Min, 1.0, f32::NAN).is_some_and(f32::is_nan));
        assert_eq!(binary_f64(BinaryOp::Max, 1.0, 2.0), Some(2.0));
    }

    #[test]
    fn int_division() {
        assert_eq!(binary_i64(BinaryOp::Div, -7, 2), Ok(Some(-3)));
        assert_eq!(binary_i32(BinaryOp::Div, 1, 0), Err(()));
        assert_eq!(binary_i64(BinaryOp::Div, i64::MIN, -1), Ok(Some(i64::MIN)));
        assert_eq!(binary_i64(BinaryOp::Add, i64::MAX, 1), Ok(Some(i64::MIN)));
    }
}
