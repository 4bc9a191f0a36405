//! Elementwise ops: `constant`, `iota`, unary and binary arithmetic, comparisons, logic,
//! `select` and `cast`.
//!
//! Float ops compute in `f32` (bf16/f16 values widen exactly to `f32`) or in `f64` for `f64`
//! tensors, then round the result to the node dtype. See the crate docs for the exact
//! definitions.

use crate::tensor::{Data, Num, build, round_f32};
use crate::{Ctx, InterpError, Tensor};
use graft_ir::scalar::IntError;
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

/// An elementwise unary op, each element by [`UnaryOp`]'s scalar formulas
/// ([`graft_ir::scalar`]): floats in `f32` (rounded to the node dtype) or `f64`, `neg`/`abs`
/// on `i64`/`i32` wrapping; `abs` on `u8`/`u4` is the identity; `not` on bool.
pub(crate) fn unary(ctx: &Ctx<'_>, u: UnaryOp) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let dt = ctx.ty.dtype;
    let undefined = || ctx.unsupported(format!("`{}` is not defined on {}", u.name(), x.dtype()));
    let data = match (x.data(), u) {
        (Data::F32(v), _) => Data::F32(
            v.iter()
                .map(|&a| u.eval_float(a).map(|r| round_f32(dt, r)))
                .collect::<Option<_>>()
                .ok_or_else(undefined)?,
        ),
        (Data::F64(v), _) => Data::F64(
            v.iter()
                .map(|&a| u.eval_float(a))
                .collect::<Option<_>>()
                .ok_or_else(undefined)?,
        ),
        (Data::I64(v), _) => Data::I64(
            v.iter()
                .map(|&a| u.eval_int(a))
                .collect::<Option<_>>()
                .ok_or_else(undefined)?,
        ),
        (Data::I32(v), _) => Data::I32(
            v.iter()
                .map(|&a| u.eval_int(a))
                .collect::<Option<_>>()
                .ok_or_else(undefined)?,
        ),
        (Data::U8(_) | Data::U4(_), UnaryOp::Abs) => x.data().clone(),
        (Data::Bool(v), _) => Data::Bool(
            v.iter()
                .map(|&a| u.eval_bool(a))
                .collect::<Option<_>>()
                .ok_or_else(undefined)?,
        ),
        _ => return Err(undefined()),
    };
    ctx.result(data)
}

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
                    (Num::F(p), Num::F(q)) => b.compare(p, q),
                    (Num::I(p), Num::I(q)) => b.compare(p, q),
                    (Num::B(p), Num::B(q)) => b.compare(p, q),
                    _ => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| ctx.unsupported("operands of different kinds"))?;
            Data::Bool(v)
        }
        (Data::F32(p), Data::F32(q)) => Data::F32(zip_map(ctx, b, p, q, |a, c| {
            Ok(b.eval_float(a, c).map(|r| round_f32(dt, r)))
        })?),
        (Data::F64(p), Data::F64(q)) => {
            Data::F64(zip_map(ctx, b, p, q, |a, c| Ok(b.eval_float(a, c)))?)
        }
        (Data::I64(p), Data::I64(q)) => {
            Data::I64(zip_map(ctx, b, p, q, |a, c| int(b.eval_int(a, c)))?)
        }
        (Data::I32(p), Data::I32(q)) => {
            Data::I32(zip_map(ctx, b, p, q, |a, c| int(b.eval_int(a, c)))?)
        }
        (Data::U8(p), Data::U8(q)) => {
            Data::U8(zip_map(ctx, b, p, q, |a, c| Ok(b.eval_unsigned(a, c)))?)
        }
        (Data::U4(p), Data::U4(q)) => {
            Data::U4(zip_map(ctx, b, p, q, |a, c| Ok(b.eval_unsigned(a, c)))?)
        }
        (Data::Bool(p), Data::Bool(q)) => {
            Data::Bool(zip_map(ctx, b, p, q, |a, c| Ok(b.eval_bool(a, c)))?)
        }
        _ => return Err(ctx.unsupported("operands have different storage")),
    };
    ctx.result(data)
}

/// An integer result in [`zip_map`]'s terms: undefined is `None`, division by zero `Err`.
fn int<T>(r: Result<T, IntError>) -> Result<Option<T>, ()> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(IntError::Undefined) => Ok(None),
        Err(IntError::DivisionByZero) => Err(()),
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
