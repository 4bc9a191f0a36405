//! Ops that accumulate: `matmul`, the reductions, `softmax` and `log_softmax`.
//!
//! All float accumulation is in `f64`, rounded once to the node dtype at the end.

use crate::layout::for_each_index;
use crate::tensor::{Data, Num, build, round_f64};
use crate::{Ctx, InterpError, Tensor};
use graft_ir::{DType, ReduceOp};

/// Float elements widened to `f64` (exact), or `None` for non-float storage.
fn floats(t: &Tensor) -> Option<Vec<f64>> {
    match t.data() {
        Data::F32(v) => Some(v.iter().map(|&x| f64::from(x)).collect()),
        Data::F64(v) => Some(v.clone()),
        _ => None,
    }
}

/// Rounds `f64` results to the node's float dtype.
fn float_result(ctx: &Ctx<'_>, v: Vec<f64>) -> Result<Tensor, InterpError> {
    let dt = ctx.ty.dtype;
    let data = match dt {
        DType::F64 => Data::F64(v),
        DType::F32 | DType::BF16 | DType::F16 => {
            Data::F32(v.into_iter().map(|x| round_f64(dt, x)).collect())
        }
        _ => return Err(ctx.unsupported(format!("{dt} is not a float dtype"))),
    };
    ctx.result(data)
}

/// `matmul{ta, tb}(a, b)`: `c[.., i, j] = Σ_k A[.., i, k] · B[.., k, j]` where `A` is `a`
/// with its last two axes swapped when `ta` (likewise `B`, `tb`). The batch axes (all but the
/// last two) are the result's: operands of equal rank share them index for index, and a
/// rank-2 operand is used for every batch of the other. Products and sums in `f64`, one
/// rounding at the end; `k` ascending.
pub(crate) fn matmul(ctx: &Ctx<'_>, ta: bool, tb: bool) -> Result<Tensor, InterpError> {
    let (a, b) = (ctx.arg(0)?, ctx.arg(1)?);
    let (Some(av), Some(bv)) = (floats(a), floats(b)) else {
        return Err(ctx.unsupported("operands must be floats"));
    };
    let (sa, sb) = (a.shape(), b.shape());
    let (ra, rb) = (sa.len(), sb.len());
    if ra < 2 || rb < 2 {
        return Err(ctx.unsupported("operands must have rank 2 or more"));
    }
    // Stored extents of the last two axes, and the logical (m, k) / (k, n).
    let (a0, a1) = (sa[ra - 2], sa[ra - 1]);
    let (b0, b1) = (sb[rb - 2], sb[rb - 1]);
    let (m, ka) = if ta { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if tb { (b1, b0) } else { (b0, b1) };
    if ka != kb {
        return Err(ctx.unsupported(format!("contraction extents differ: {ka} vs {kb}")));
    }
    let batches: usize = ctx.ty.shape[..ctx.ty.shape.len().saturating_sub(2)]
        .iter()
        .product();
    // A rank-2 operand is shared by every batch (offset 0).
    let a_batch = if ra == 2 { 0 } else { a0 * a1 };
    let b_batch = if rb == 2 { 0 } else { b0 * b1 };
    let mut out = Vec::with_capacity(batches * m * n);
    for bi in 0..batches {
        let (ao, bo) = (bi * a_batch, bi * b_batch);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for k in 0..ka {
                    let x = if ta {
                        av[ao + k * a1 + i]
                    } else {
                        av[ao + i * a1 + k]
                    };
                    let y = if tb {
                        bv[bo + j * b1 + k]
                    } else {
                        bv[bo + k * b1 + j]
                    };
                    acc += x * y;
                }
                out.push(acc);
            }
        }
    }
    float_result(ctx, out)
}

/// `reduce_{sum,mean,max,min}{axes, keepdim}`. `sum` and `mean` (floats only) accumulate in
/// `f64` in row-major order; `mean` divides by the number of reduced elements (an empty
/// reduction gives 0 for sum and NaN for mean). `max`/`min` propagate NaN, work on every
/// dtype (on bool: any/all) and fail on an empty reduction. With `axes = []` the result is
/// the operand.
pub(crate) fn reduce(
    ctx: &Ctx<'_>,
    op: ReduceOp,
    axes: &[usize],
    // Kept extent-1 axes do not change the row-major order; the node type has the shape.
    _keepdim: bool,
) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let shape = x.shape();
    if axes.iter().any(|&a| a >= shape.len()) {
        return Err(ctx.unsupported(format!("axes {axes:?} are out of range")));
    }
    // The result position of each operand element: drop (or zero) the reduced axes.
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&a| shape[a]).collect();
    let ks = crate::layout::strides(&kept_shape);
    let outs: usize = kept_shape.iter().product();
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let mut dest = Vec::with_capacity(x.numel());
    for_each_index(shape, |_, i| {
        dest.push(kept.iter().zip(&ks).map(|(&a, &s)| i[a] * s).sum::<usize>());
    });
    match op {
        ReduceOp::Sum | ReduceOp::Mean => {
            let Some(v) = floats(x) else {
                return Err(ctx.unsupported("sum and mean need a float operand"));
            };
            let mut acc = vec![0.0f64; outs];
            for (&d, &val) in dest.iter().zip(&v) {
                acc[d] += val;
            }
            if op == ReduceOp::Mean {
                for a in &mut acc {
                    *a /= count as f64;
                }
            }
            float_result(ctx, acc)
        }
        ReduceOp::Max | ReduceOp::Min => {
            if count == 0 && outs > 0 {
                return Err(ctx.unsupported("max/min over an empty axis"));
            }
            let want_max = op == ReduceOp::Max;
            let mut acc: Vec<Option<Num>> = vec![None; outs];
            for (i, &d) in dest.iter().enumerate() {
                let v = x.data().num(i);
                acc[d] = Some(match acc[d] {
                    None => v,
                    Some(cur) => pick(cur, v, want_max),
                });
            }
            let vals: Vec<Num> = acc.into_iter().map(|a| a.unwrap_or(Num::I(0))).collect();
            ctx.result(build(ctx.ty.dtype, vals.into_iter()))
        }
    }
}

/// The larger (`max`) or smaller of two elements; NaN wins; the current one on ties.
fn pick(cur: Num, v: Num, want_max: bool) -> Num {
    let better = match (cur, v) {
        (Num::F(c), Num::F(x)) => {
            if c.is_nan() {
                false
            } else if x.is_nan() {
                true
            } else if want_max {
                x > c
            } else {
                x < c
            }
        }
        (Num::I(c), Num::I(x)) => (want_max && x > c) || (!want_max && x < c),
        (Num::B(c), Num::B(x)) => (want_max && x && !c) || (!want_max && !x && c),
        _ => false,
    };
    if better { v } else { cur }
}

/// `softmax{axis}` / `log_softmax{axis}`, entirely in `f64` for each slice along `axis`:
/// `m = max x`, `s = Σ exp(x - m)`; softmax is `exp(x - m) / s`, log-softmax is
/// `(x - m) - ln s`; then one rounding to the node dtype. A slice whose max is infinite or
/// NaN gives NaN.
pub(crate) fn softmax(ctx: &Ctx<'_>, axis: usize, log: bool) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let Some(v) = floats(x) else {
        return Err(ctx.unsupported("softmax needs a float operand"));
    };
    let shape = x.shape();
    let Some(&ext) = shape.get(axis) else {
        return Err(ctx.unsupported(format!("axis {axis} is out of range")));
    };
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = vec![0.0f64; v.len()];
    for o in 0..outer {
        for k in 0..inner {
            let at = |j: usize| (o * ext + j) * inner + k;
            let m = (0..ext).map(|j| v[at(j)]).fold(f64::NEG_INFINITY, |m, y| {
                if y > m || y.is_nan() { y } else { m }
            });
            let m = if m.is_finite() { m } else { f64::NAN };
            let s: f64 = (0..ext).map(|j| (v[at(j)] - m).exp()).sum();
            for j in 0..ext {
                let d = v[at(j)] - m;
                out[at(j)] = if log { d - s.ln() } else { d.exp() / s };
            }
        }
    }
    float_result(ctx, out)
}
