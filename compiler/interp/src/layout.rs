//! Layout ops, which move elements without computing on them: `reshape`, `transpose`,
//! `broadcast`, `concat`, `slice`, `gather` and `sort` (which moves each lane's elements into
//! ascending order).
//!
//! Each op computes, for every result element in row-major order, the flat index of the
//! operand element it copies, then picks those elements. Simple and obviously correct.

use crate::tensor::Data;
use crate::{Ctx, InterpError, Tensor};

/// Row-major strides of `shape` (the stride of the last axis is 1).
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f(flat, multi_index)` for every position of `shape`, in row-major order.
pub(crate) fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &idx);
        // advance the multi-index like an odometer
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

/// The elements of `parts` one after another, or `None` when their storage variants differ.
pub(crate) fn join(parts: &[&Data]) -> Option<Data> {
    let Some(first) = parts.first() else {
        return Some(Data::F32(Vec::new()));
    };
    let mut out = (*first).clone();
    for p in &parts[1..] {
        match (&mut out, p) {
            (Data::F32(a), Data::F32(b)) => a.extend_from_slice(b),
            (Data::F64(a), Data::F64(b)) => a.extend_from_slice(b),
            (Data::I64(a), Data::I64(b)) => a.extend_from_slice(b),
            (Data::I32(a), Data::I32(b)) => a.extend_from_slice(b),
            (Data::U8(a), Data::U8(b)) => a.extend_from_slice(b),
            (Data::U4(a), Data::U4(b)) => a.extend_from_slice(b),
            (Data::Bool(a), Data::Bool(b)) => a.extend_from_slice(b),
            _ => return None,
        }
    }
    Some(out)
}

/// `reshape`: the same elements in the same row-major order, with the node's shape.
pub(crate) fn reshape(ctx: &Ctx<'_>) -> Result<Tensor, InterpError> {
    ctx.result(ctx.arg(0)?.data().clone())
}

/// `transpose{perm}`: result axis `i` is operand axis `perm[i]`, i.e.
/// `result[i_0, .., i_{r-1}] = x[j]` with `j[perm[i]] = i_i`.
pub(crate) fn transpose(ctx: &Ctx<'_>, perm: &[usize]) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let xs = strides(x.shape());
    if perm.len() != xs.len() || perm.iter().any(|&p| p >= xs.len()) {
        return Err(ctx.unsupported(format!("{perm:?} is not a permutation")));
    }
    let mut src = Vec::with_capacity(ctx.ty.numel());
    for_each_index(&ctx.ty.shape, |_, o| {
        src.push(o.iter().zip(perm).map(|(&i, &p)| i * xs[p]).sum());
    });
    ctx.result(x.data().take(&src))
}

/// `broadcast`: NumPy rules. The operand's axes align with the result's trailing axes; an
/// operand axis of extent 1 repeats its one element along that result axis.
pub(crate) fn broadcast(ctx: &Ctx<'_>) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let (xshape, out) = (x.shape(), &ctx.ty.shape);
    if xshape.len() > out.len() {
        return Err(ctx.unsupported("the operand has more axes than the result"));
    }
    let lead = out.len() - xshape.len();
    let xs = strides(xshape);
    let mut src = Vec::with_capacity(ctx.ty.numel());
    for_each_index(out, |_, o| {
        let j: usize = (0..xshape.len())
            .map(|k| {
                if xshape[k] == 1 {
                    0
                } else {
                    o[lead + k] * xs[k]
                }
            })
            .sum();
        src.push(j);
    });
    ctx.result(x.data().take(&src))
}

/// `concat{axis}`: the operands one after another along `axis`.
pub(crate) fn concat(ctx: &Ctx<'_>, axis: usize) -> Result<Tensor, InterpError> {
    let datas: Vec<&Data> = ctx.args.iter().map(|t| t.data()).collect();
    let all = join(&datas).ok_or_else(|| ctx.unsupported("operands have different storage"))?;
    // Start of each operand in `all`, and each operand's extent along `axis`.
    let mut starts = Vec::with_capacity(ctx.args.len());
    let mut bounds = Vec::with_capacity(ctx.args.len());
    let (mut start, mut at) = (0usize, 0usize);
    for t in &ctx.args {
        let Some(&ext) = t.shape().get(axis) else {
            return Err(ctx.unsupported(format!("axis {axis} is out of range")));
        };
        starts.push(start);
        bounds.push((at, at + ext, strides(t.shape())));
        start += t.numel();
        at += ext;
    }
    let mut src = Vec::with_capacity(ctx.ty.numel());
    for_each_index(&ctx.ty.shape, |_, o| {
        let pos = o[axis];
        for (k, (lo, hi, st)) in bounds.iter().enumerate() {
            if (*lo..*hi).contains(&pos) {
                let j: usize = o
                    .iter()
                    .enumerate()
                    .map(|(ax, &i)| {
                        if ax == axis {
                            (i - lo) * st[ax]
                        } else {
                            i * st[ax]
                        }
                    })
                    .sum();
                src.push(starts[k] + j);
                return;
            }
        }
    });
    if src.len() != ctx.ty.numel() {
        return Err(ctx.unsupported("the operands do not fill the result"));
    }
    ctx.result(all.take(&src))
}

/// `slice{axis, start, end}`: elements `start..end` along `axis`.
pub(crate) fn slice(
    ctx: &Ctx<'_>,
    axis: usize,
    start: usize,
    end: usize,
) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    if x.shape().get(axis).is_none_or(|&e| start > end || end > e) {
        return Err(ctx.unsupported(format!("{start}..{end} is outside axis {axis}")));
    }
    let xs = strides(x.shape());
    let mut src = Vec::with_capacity(ctx.ty.numel());
    for_each_index(&ctx.ty.shape, |_, o| {
        let j: usize = o
            .iter()
            .enumerate()
            .map(|(ax, &i)| (if ax == axis { i + start } else { i }) * xs[ax])
            .sum();
        src.push(j);
    });
    ctx.result(x.data().take(&src))
}

/// `gather{axis}(table, indices)`: result shape `table[..axis] ++ indices ++ table[axis+1..]`;
/// `result[p, i, q] = table[p, indices[i], q]`. A negative index or one not below
/// `table.shape[axis]` is [`InterpError::IndexOutOfRange`] (no wrap-around).
pub(crate) fn gather(ctx: &Ctx<'_>, axis: usize) -> Result<Tensor, InterpError> {
    let (table, idx) = (ctx.arg(0)?, ctx.arg(1)?);
    let Some(&extent) = table.shape().get(axis) else {
        return Err(ctx.unsupported(format!("axis {axis} is out of range")));
    };
    let indices: Vec<i64> = match idx.data() {
        Data::I64(v) => v.clone(),
        Data::I32(v) => v.iter().map(|&i| i64::from(i)).collect(),
        _ => return Err(ctx.unsupported("indices must be i64 or i32")),
    };
    let mut checked = Vec::with_capacity(indices.len());
    for &i in &indices {
        match usize::try_from(i) {
            Ok(u) if u < extent => checked.push(u),
            _ => {
                return Err(InterpError::IndexOutOfRange {
                    node: ctx.node,
                    value: i,
                    extent,
                });
            }
        }
    }
    let outer: usize = table.shape()[..axis].iter().product();
    let inner: usize = table.shape()[axis + 1..].iter().product();
    let mut src = Vec::with_capacity(outer * checked.len() * inner);
    for o in 0..outer {
        for &i in &checked {
            for k in 0..inner {
                src.push((o * extent + i) * inner + k);
            }
        }
    }
    ctx.result(table.data().take(&src))
}

/// `sort`: every lane along `axis` in ascending order, NaN last (IEEE total order on the
/// magnitudes, so -0 sorts before +0 as in `torch.sort`); the sort is stable.
pub(crate) fn sort(ctx: &Ctx<'_>, axis: usize) -> Result<Tensor, InterpError> {
    let x = ctx.arg(0)?;
    let key: Vec<f64> = match x.data() {
        Data::F32(v) => v.iter().map(|&a| f64::from(a)).collect(),
        Data::F64(v) => v.clone(),
        _ => return Err(ctx.unsupported("sort needs a float operand")),
    };
    let shape = x.shape();
    let Some(&ext) = shape.get(axis) else {
        return Err(ctx.unsupported(format!("axis {axis} is out of range")));
    };
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut src = vec![0usize; key.len()];
    let mut lane: Vec<usize> = Vec::with_capacity(ext);
    for o in 0..outer {
        for k in 0..inner {
            let at = |j: usize| (o * ext + j) * inner + k;
            lane.clear();
            lane.extend((0..ext).map(at));
            lane.sort_by(|&a, &b| match (key[a].is_nan(), key[b].is_nan()) {
                (false, false) => key[a].total_cmp(&key[b]),
                (na, nb) => na.cmp(&nb),
            });
            for (j, &from) in lane.iter().enumerate() {
                src[at(j)] = from;
            }
        }
    }
    ctx.result(x.data().take(&src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
    }

    #[test]
    fn odometer_visits_in_order() {
        let mut seen = Vec::new();
        for_each_index(&[2, 2], |f, i| seen.push((f, i.to_vec())));
        assert_eq!(
            seen,
            vec![
                (0, vec![0, 0]),
                (1, vec![0, 1]),
                (2, vec![1, 0]),
                (3, vec![1, 1])
            ]
        );
        let mut n = 0;
        for_each_index(&[], |_, _| n += 1);
        assert_eq!(n, 1, "a scalar has one position");
        for_each_index(&[3, 0], |_, _| n += 1);
        assert_eq!(n, 1, "an empty shape has none");
    }
}
