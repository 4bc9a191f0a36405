//! Loop-nest kernels: fused elementwise groups, reductions, softmax / log-softmax, and the
//! scalar `f64`-accumulating matmul used for non-`f32` dtypes.
//!
//! Every kernel is a `func.func @kN(%lo: index, %hi: index, %a0.., %out[, %err])` whose
//! outermost loop runs over `[lo, hi)` of its [`crate::schedule::Step::range`], so the
//! executor can split it across threads. Buffers are statically shaped memrefs passed as bare
//! pointers; a kernel may view a buffer with any shape of the same element count.

use crate::CodegenError;
use crate::expr::KernelCx;
use crate::gemm::GemmShape;
use crate::scalar;
use crate::text::{Ix, mem_elem, memref_ty, reg_ty};
use graft_ir::{DType, ReduceOp, ValueId};

/// Opens `scf.for %v = lo to hi` over the step range and returns the induction variable.
fn range_loop(k: &mut KernelCx<'_>) -> Ix {
    let one = k.b.idx(1);
    let o = k.b.fresh();
    k.b.open(format!("scf.for {o} = %lo to %hi step {one} {{"));
    Ix::V(o)
}

/// Opens `scf.for %v = 0 to n` and returns the induction variable.
fn count_loop(k: &mut KernelCx<'_>, n: usize) -> Ix {
    let (zero, one, end) = (k.b.idx(0), k.b.idx(1), k.b.idx(n));
    let i = k.b.fresh();
    k.b.open(format!("scf.for {i} = {zero} to {end} step {one} {{"));
    Ix::V(i)
}

/// The range of a fused kernel over `shape`: all axes but the last, collapsed.
pub(crate) fn fused_range(shape: &[usize]) -> usize {
    shape[..shape.len().saturating_sub(1)].iter().product()
}

/// Reduced elements per output up to which a reduction that keeps its operand's last axis
/// runs by rows (see [`reduce_rows`]).
const ROW_REDUCE_MAX: usize = 16;

/// The last axis's extent when a reduction of an operand of shape `x` over `axes` runs by
/// rows: one range item per row of the output's leading axes, a loop along its last axis
/// (the operand's, kept), and the few reduced elements of each output summed inside it. LLVM
/// unrolls the short reduction and vectorizes along the row. Per output element instead, the
/// range index is split into coordinates for every element and the loop does not vectorize:
/// the vocabulary-chunked loss's two-term stored sums over `[2, 508, 512]` took 0.5–0.8 ms.
pub(crate) fn reduce_rows(x: &[usize], axes: &[usize]) -> Option<usize> {
    let last = x.len().checked_sub(1)?;
    let count: usize = axes.iter().map(|&a| x[a]).product();
    (!axes.contains(&last) && count <= ROW_REDUCE_MAX).then_some(x[last])
}

/// A fused elementwise kernel computing node `root` into `%out`: for each row of the
/// collapsed leading axes, a loop over the last axis evaluating the fused expression.
/// Returns the output's memref type.
pub(crate) fn emit_fused(k: &mut KernelCx<'_>, root: ValueId) -> Result<String, CodegenError> {
    let ty = k.f.ty(root).clone();
    let out_ty = memref_ty(&ty.shape, mem_elem(ty.dtype));
    let rank = ty.rank();
    let o = range_loop(k);
    k.push_scope();
    let mut idx = k.b.delinearize(&o, &ty.shape[..rank.saturating_sub(1)]);
    if rank > 0 {
        let j = count_loop(k, ty.shape[rank - 1]);
        k.push_scope();
        idx.push(j);
        let v = k.eval_root(root, &idx)?;
        k.store(ty.dtype, &v, "%out", &out_ty, &idx);
        k.pop_scope();
        k.b.close("}", false);
    } else {
        let v = k.eval_root(root, &[])?;
        k.store(ty.dtype, &v, "%out", &out_ty, &[]);
    }
    k.pop_scope();
    k.b.close("}", false);
    Ok(out_ty)
}

/// The single operand of node `root` (an `op` node; verified IR has one).
fn operand(f: &graft_ir::Function, root: ValueId, op: &str) -> Result<ValueId, CodegenError> {
    f.node(root)
        .args
        .first()
        .copied()
        .ok_or_else(|| CodegenError::Internal(format!("{op} without an operand")))
}

/// A reduction kernel: one output element per range item (or one row of outputs, see
/// [`reduce_rows`]), the reduced axes as nested loops carrying the accumulator. `sum`/`mean` accumulate in `f64`; `max`/`min` propagate NaN and
/// keep the first of equal values.
pub(crate) fn emit_reduce(
    k: &mut KernelCx<'_>,
    root: ValueId,
    op: ReduceOp,
    axes: &[usize],
) -> Result<String, CodegenError> {
    let f = k.f;
    let x = operand(f, root, "reduce")?;
    let xs = f.ty(x).shape.clone();
    let dt = f.ty(x).dtype;
    let out = f.ty(root).clone();
    let kept: Vec<usize> = (0..xs.len()).filter(|a| !axes.contains(a)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&a| xs[a]).collect();
    let red_shape: Vec<usize> = axes.iter().map(|&a| xs[a]).collect();
    let count: usize = red_shape.iter().product();
    let n_out: usize = kept_shape.iter().product();
    let out_ty = memref_ty(&[n_out], mem_elem(out.dtype));
    let sum = matches!(op, ReduceOp::Sum | ReduceOp::Mean);
    if !sum && count == 0 && n_out > 0 {
        return Err(CodegenError::Unsupported {
            node: root.index(),
            op: op.name().to_string(),
            message: "max/min over an empty axis".into(),
        });
    }
    let acc_t = if sum { "f64" } else { reg_ty(dt) };
    let init = match (sum, op, dt) {
        (true, ..) => k.b.f64c(0.0),
        (_, ReduceOp::Max, d) if d.is_float() => k.b.fc(f64::NEG_INFINITY, acc_t),
        (_, _, d) if d.is_float() => k.b.fc(f64::INFINITY, acc_t),
        (_, ReduceOp::Max, DType::I64) => k.b.int(i64::MIN, acc_t),
        (_, ReduceOp::Max, DType::I32) => k.b.int(i64::from(i32::MIN), acc_t),
        (_, _, DType::I64) => k.b.int(i64::MAX, acc_t),
        (_, _, DType::I32) => k.b.int(i64::from(i32::MAX), acc_t),
        (_, ReduceOp::Max, _) => k.b.int(0, acc_t),
        (_, _, DType::Bool) => k.b.int(1, acc_t),
        (_, _, _) => k.b.int(-1, acc_t),
    };
    let o = range_loop(k);
    k.push_scope();
    // By rows (see `reduce_rows`): the range covers the output's leading axes and a loop its
    // last; else one output element per range item.
    let rows = reduce_rows(&xs, axes);
    let (kept_idx, o) = match rows {
        Some(cols) => {
            let lead = &kept_shape[..kept_shape.len().saturating_sub(1)];
            let mut idx = k.b.delinearize(&o, lead);
            let j = count_loop(k, cols);
            k.push_scope();
            let row = k.b.ix_mul(&o, cols);
            let flat = k.b.ix_add(&row, &j);
            idx.push(j);
            (idx, flat)
        }
        None => (k.b.delinearize(&o, &kept_shape), o),
    };
    // A float max or min over the last axis keeps `SPLIT` independent accumulators (element
    // `j` goes to `j mod SPLIT`), combined at the end: LLVM vectorizes neither a `select`
    // chain nor a NaN-propagating `maximumf` reduction (which `arith-expand` turns into
    // one), but it does vectorize the accumulators' identical independent chains (SLP):
    // the vocabulary-chunked loss's row max over `[508, 2048]` takes 0.17 ms instead of
    // 1.0. The result is the same value; only the sign of a zero extremum can differ (`-0`
    // and `+0` tie, and the first one seen stays).
    const SPLIT: usize = 16;
    let split = !sum
        && dt.is_float()
        && axes == [xs.len() - 1]
        && count >= SPLIT
        && count.is_multiple_of(SPLIT);
    if split {
        let parts = interleaved(k, SPLIT, count, &init, acc_t, |k, j, acc| {
            let mut full = vec![Ix::C(0); xs.len()];
            for (slot, &ax) in kept.iter().enumerate() {
                full[ax] = kept_idx.get(slot).cloned().unwrap_or(Ix::C(0));
            }
            full[xs.len() - 1] = j;
            let val = k.eval(x, &full)?;
            Ok(combine(k, op, dt, acc, &val))
        })?;
        let mut r = parts[0].clone();
        for p in &parts[1..] {
            r = combine(k, op, dt, &r, p);
        }
        k.store(out.dtype, &r, "%out", &out_ty, &[o]);
        k.pop_scope();
        k.b.close("}", false);
        return Ok(out_ty);
    }
    // Nested loops over the reduced axes, threading the accumulator through iter_args.
    let mut ivs = Vec::new();
    let mut results = Vec::new();
    let mut acc = init;
    for &n in &red_shape {
        let (zero, one, end) = (k.b.idx(0), k.b.idx(1), k.b.idx(n));
        let (res, iv, a) = (k.b.fresh(), k.b.fresh(), k.b.fresh());
        k.b.open(format!(
            "{res} = scf.for {iv} = {zero} to {end} step {one} iter_args({a} = {acc}) -> ({acc_t}) {{"
        ));
        k.push_scope();
        ivs.push(Ix::V(iv));
        results.push(res);
        acc = a;
    }
    let mut full = vec![Ix::C(0); xs.len()];
    for (slot, &a) in kept.iter().enumerate() {
        full[a] = kept_idx.get(slot).cloned().unwrap_or(Ix::C(0));
    }
    for (slot, &a) in axes.iter().enumerate() {
        full[a] = ivs.get(slot).cloned().unwrap_or(Ix::C(0));
    }
    let val = k.eval(x, &full)?;
    let next = combine(k, op, dt, &acc, &val);
    let mut yielded = next;
    for res in results.iter().rev() {
        k.b.line(format!("scf.yield {yielded} : {acc_t}"));
        k.pop_scope();
        k.b.close("}", false);
        yielded = res.clone();
    }
    let result = if sum {
        let r = if op == ReduceOp::Mean {
            let c = k.b.f64c(count as f64);
            k.b.op(format!("arith.divf {yielded}, {c} : f64"))
        } else {
            yielded
        };
        scalar::round_f64(&mut k.b, out.dtype, &r)
    } else {
        yielded
    };
    k.store(out.dtype, &result, "%out", &out_ty, &[o]);
    if rows.is_some() {
        k.pop_scope();
        k.b.close("}", false);
    }
    k.pop_scope();
    k.b.close("}", false);
    Ok(out_ty)
}

/// A loop over `0..end` (a multiple of `n`) in steps of `n` that carries `n` accumulators of
/// type `ty`, each starting at `init`: accumulator `u` takes elements `u, n + u, ...`, its
/// next value being `step(k, index, acc)`. Returns the `n` results. Independent chains run in
/// parallel and LLVM vectorizes them (SLP), where one chain of compares or NaN-aware choices
/// it does not.
fn interleaved(
    k: &mut KernelCx<'_>,
    n: usize,
    end: usize,
    init: &str,
    ty: &str,
    mut step: impl FnMut(&mut KernelCx<'_>, Ix, &str) -> Result<String, CodegenError>,
) -> Result<Vec<String>, CodegenError> {
    let (zero, stride, end) = (k.b.idx(0), k.b.idx(n), k.b.idx(end));
    let (res, iv) = (k.b.fresh(), k.b.fresh());
    let accs: Vec<String> = (0..n).map(|_| k.b.fresh()).collect();
    let iter: Vec<String> = accs.iter().map(|a| format!("{a} = {init}")).collect();
    let tys = vec![ty; n].join(", ");
    k.b.open(format!(
        "{res}:{n} = scf.for {iv} = {zero} to {end} step {stride} iter_args({}) -> ({tys}) {{",
        iter.join(", ")
    ));
    k.push_scope();
    let mut next = Vec::with_capacity(n);
    for (u, a) in accs.iter().enumerate() {
        let j = k.b.ix_add(&Ix::V(iv.clone()), &Ix::C(u));
        next.push(step(k, j, a)?);
    }
    k.b.line(format!("scf.yield {} : {tys}", next.join(", ")));
    k.pop_scope();
    k.b.close("}", false);
    Ok((0..n).map(|u| format!("{res}#{u}")).collect())
}

/// Fast-math flags of an `f64` accumulation: reassociation lets LLVM vectorize the loop
/// (partial sums per lane, added at the end). The terms are `f32` (or narrower) values summed
/// in `f64`, so the order changes the sum by a few `f64` ulps, far below the result's
/// precision; an `f64` input's sum can differ from the interpreter's sequential one by
/// about `n · 2⁻⁵³` relative.
const SUM_FLAGS: &str = "fastmath<reassoc>";

/// One accumulation step of a reduction.
fn combine(k: &mut KernelCx<'_>, op: ReduceOp, dt: DType, acc: &str, v: &str) -> String {
    let t = reg_ty(dt);
    match op {
        ReduceOp::Sum | ReduceOp::Mean => {
            let w = scalar::to_f64(&mut k.b, dt, v);
            k.b.op(format!("arith.addf {acc}, {w} {SUM_FLAGS} : f64"))
        }
        ReduceOp::Max | ReduceOp::Min => {
            let max = op == ReduceOp::Max;
            if dt.is_float() {
                // The current value stays once NaN; a NaN value wins; else strictly better.
                let p = if max { "ogt" } else { "olt" };
                let better = k.b.op(format!("arith.cmpf {p}, {v}, {acc} : {t}"));
                let vnan = k.b.op(format!("arith.cmpf uno, {v}, {v} : {t}"));
                let anan = k.b.op(format!("arith.cmpf uno, {acc}, {acc} : {t}"));
                let take = k.b.op(format!("arith.ori {better}, {vnan} : i1"));
                let r = k.b.op(format!("arith.select {take}, {v}, {acc} : {t}"));
                k.b.op(format!("arith.select {anan}, {acc}, {r} : {t}"))
            } else {
                let name = match (max, dt) {
                    (true, DType::Bool) => "ori",
                    (false, DType::Bool) => "andi",
                    (true, DType::U8 | DType::U4) => "maxui",
                    (false, DType::U8 | DType::U4) => "minui",
                    (true, _) => "maxsi",
                    (false, _) => "minsi",
                };
                k.b.op(format!("arith.{name} {acc}, {v} : {t}"))
            }
        }
    }
}

/// `softmax` / `log_softmax` along `axis`, per slice, with the interpreter's results: the
/// max (a non-finite max gives NaN; a NaN input makes the whole slice NaN), the sum of
/// `exp(x - max)` in `f64`, then the outputs (for an `f32`-stored result, `exp` is the
/// arithmetic `exp_f32` and the quotient a product with `1 / sum`; see below). Every pass is
/// written so that LLVM vectorizes it.
pub(crate) fn emit_softmax(
    k: &mut KernelCx<'_>,
    root: ValueId,
    axis: usize,
    log: bool,
) -> Result<String, CodegenError> {
    let f = k.f;
    let x = operand(f, root, "softmax")?;
    let ty = f.ty(root).clone();
    let xdt = f.ty(x).dtype;
    let xs = f.ty(x).shape.clone();
    let ext = xs.get(axis).copied().unwrap_or(1);
    let inner_shape = xs[axis + 1..].to_vec();
    let outer_shape = xs[..axis].to_vec();
    let inner: usize = inner_shape.iter().product();
    let out_ty = memref_ty(&ty.shape, mem_elem(ty.dtype));
    let o = range_loop(k);
    k.push_scope();
    let oo = k.b.ix_div(&o, inner);
    let ki = k.b.ix_rem(&o, inner);
    let pre = k.b.delinearize(&oo, &outer_shape);
    let post = k.b.delinearize(&ki, &inner_shape);
    // The operand index of element j of the slice.
    let at = |j: &Ix| -> Vec<Ix> {
        let mut i = pre.clone();
        i.push(j.clone());
        i.extend(post.iter().cloned());
        i
    };
    let (zero, one, end) = (k.b.idx(0), k.b.idx(1), k.b.idx(ext));
    let ninf = k.b.f64c(f64::NEG_INFINITY);
    type Step<'s> = &'s dyn Fn(&mut KernelCx<'_>, &str, &str) -> String;
    let pass = |k: &mut KernelCx<'_>, init: &str, body: Step<'_>| -> Result<String, CodegenError> {
        let (res, iv, a) = (k.b.fresh(), k.b.fresh(), k.b.fresh());
        k.b.open(format!(
            "{res} = scf.for {iv} = {zero} to {end} step {one} iter_args({a} = {init}) -> (f64) {{"
        ));
        k.push_scope();
        let idx = at(&Ix::V(iv));
        let raw = k.eval(x, &idx)?;
        let y = scalar::to_f64(&mut k.b, xdt, &raw);
        let next = body(k, &a, &y);
        k.b.line(format!("scf.yield {next} : f64"));
        k.pop_scope();
        k.b.close("}", false);
        Ok(res)
    };
    // The max, with `maxnumf` (a reduction LLVM vectorizes; it skips NaN) on the operand's
    // own type (exact in either): a NaN input still makes every output NaN, as in the
    // interpreter (whose max takes NaN), because its `exp(x - max)` is NaN and so is the
    // sum every output is divided by (or whose log is subtracted).
    let m = {
        let narrow = xdt == DType::F32;
        let t = if narrow { "f32" } else { "f64" };
        let init = if narrow {
            k.b.fc(f64::NEG_INFINITY, "f32")
        } else {
            ninf.clone()
        };
        // LLVM does not vectorize a `maxnum` reduction without fast-math flags, so the loop
        // keeps `lanes` independent maxima (when the extent is a multiple of it), which run
        // in parallel instead of one serial chain of compares.
        let lanes = if ext % 8 == 0 { 8 } else { 1 };
        let parts = interleaved(k, lanes, ext, &init, t, |k, j, acc| {
            let raw = k.eval(x, &at(&j))?;
            let y = if narrow {
                raw
            } else {
                scalar::to_f64(&mut k.b, xdt, &raw)
            };
            Ok(k.b.op(format!("arith.maxnumf {acc}, {y} : {t}")))
        })?;
        let mut m = parts[0].clone();
        for p in &parts[1..] {
            m = k.b.op(format!("arith.maxnumf {m}, {p} : {t}"));
        }
        let res = m;
        if narrow {
            k.b.op(format!("arith.extf {res} : f32 to f64"))
        } else {
            res
        }
    };
    let inf = k.b.f64c(f64::INFINITY);
    let qnan = k.b.f64c(f64::NAN);
    let am = k.b.op(format!("math.absf {m} : f64"));
    let finite = k.b.op(format!("arith.cmpf olt, {am}, {inf} : f64"));
    let m = k.b.op(format!("arith.select {finite}, {m}, {qnan} : f64"));
    let z = k.b.f64c(0.0);
    let mm = m.clone();
    let m32 = (xdt == DType::F32).then(|| k.b.op(format!("arith.truncf {m} : f64 to f32")));
    // An `f64` result: the sum of `exp(x - max)` in one pass (libm's exp). An `f32`-stored
    // result needs `exp` only to `f32` precision: `exp(x - max)` with the arithmetic
    // `exp_f32` (the difference rounded to f32 once) is stored into the output by a loop
    // without a loop-carried value, which LLVM vectorizes, and the sum reads it back in f64.
    let wide = ty.dtype == DType::F64;
    let load_out = |k: &mut KernelCx<'_>, idx: &[Ix]| -> String {
        let ix: Vec<String> = idx.iter().map(|i| k.b.ix(i)).collect();
        let e =
            k.b.op(format!("memref.load %out[{}] : {out_ty}", ix.join(", ")));
        k.b.op(format!("arith.extf {e} : f32 to f64"))
    };
    let s = if wide {
        pass(k, &z, &|k, acc, y| {
            let d = k.b.op(format!("arith.subf {y}, {mm} : f64"));
            let e = k.b.op(format!("math.exp {d} : f64"));
            k.b.op(format!("arith.addf {acc}, {e} : f64"))
        })?
    } else {
        let j = count_loop(k, ext);
        k.push_scope();
        let idx = at(&j);
        let raw = k.eval(x, &idx)?;
        // An f32 operand: `x - max` in f32 (the max is one of the operand's values, so
        // both are f32 and the subtraction rounds once, as the f64 one rounded to f32).
        let d32 = match &m32 {
            Some(m32) => k.b.op(format!("arith.subf {raw}, {m32} : f32")),
            None => {
                let y = scalar::to_f64(&mut k.b, xdt, &raw);
                let d = k.b.op(format!("arith.subf {y}, {m} : f64"));
                k.b.op(format!("arith.truncf {d} : f64 to f32"))
            }
        };
        let e = scalar::exp_f32_flushed(&mut k.b, &d32);
        k.store(DType::F32, &e, "%out", &out_ty, &idx);
        k.pop_scope();
        k.b.close("}", false);
        let (res, iv, acc) = (k.b.fresh(), k.b.fresh(), k.b.fresh());
        k.b.open(format!(
            "{res} = scf.for {iv} = {zero} to {end} step {one} iter_args({acc} = {z}) -> (f64) {{"
        ));
        let e = load_out(k, &at(&Ix::V(iv)));
        let next = k.b.op(format!("arith.addf {acc}, {e} {SUM_FLAGS} : f64"));
        k.b.line(format!("scf.yield {next} : f64"));
        k.b.close("}", false);
        res
    };
    let ln = log.then(|| k.b.op(format!("math.log {s} : f64")));
    let inv = {
        let one = k.b.f64c(1.0);
        k.b.op(format!("arith.divf {one}, {s} : f64"))
    };
    // The outputs: x - max - ln(sum), or exp(x - max) / sum (the stored exp when narrow).
    let j = count_loop(k, ext);
    k.push_scope();
    let idx = at(&j);
    let r = match &ln {
        Some(ln) => {
            let raw = k.eval(x, &idx)?;
            let y = scalar::to_f64(&mut k.b, xdt, &raw);
            let d = k.b.op(format!("arith.subf {y}, {m} : f64"));
            k.b.op(format!("arith.subf {d}, {ln} : f64"))
        }
        None => {
            if wide {
                let raw = k.eval(x, &idx)?;
                let y = scalar::to_f64(&mut k.b, xdt, &raw);
                let d = k.b.op(format!("arith.subf {y}, {m} : f64"));
                let e = k.b.op(format!("math.exp {d} : f64"));
                k.b.op(format!("arith.divf {e}, {s} : f64"))
            } else {
                // Times 1/sum in f64, rounded to f32 once: within an ulp of the quotient.
                let e = load_out(k, &idx);
                k.b.op(format!("arith.mulf {e}, {inv} : f64"))
            }
        }
    };
    let r = scalar::round_f64(&mut k.b, ty.dtype, &r);
    k.store(ty.dtype, &r, "%out", &out_ty, &idx);
    k.pop_scope();
    k.b.close("}", false);
    k.pop_scope();
    k.b.close("}", false);
    Ok(out_ty)
}

/// The stored extents of a matmul operand as `[batches, rows, cols]` (batches 1 when the
/// operand is rank 2 and shared).
pub(crate) fn as_batched(shape: &[usize]) -> [usize; 3] {
    let r = shape.len();
    if r < 2 {
        return [1, 1, shape.first().copied().unwrap_or(1)];
    }
    [shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1]]
}

/// The scalar matmul for non-`f32` dtypes: one output row per range item, products and sums
/// in `f64` with `k` ascending, one rounding at the end (the interpreter's exact order).
pub(crate) fn emit_matmul_scalar(
    k: &mut KernelCx<'_>,
    root: ValueId,
    s: &GemmShape,
) -> Result<String, CodegenError> {
    let dt = k.f.ty(root).dtype;
    let e = mem_elem(dt);
    let (m, kk, n) = (s.m, s.k, s.n);
    let cty = memref_ty(&[s.batches, m, n], e);
    let o = range_loop(k);
    let bi = k.b.ix_div(&o, m.max(1));
    let i = k.b.ix_rem(&o, m.max(1));
    let j = count_loop(k, n);
    let r = if kk == 0 {
        k.b.fc(0.0, reg_ty(dt))
    } else {
        let (aty, bty) = (memref_ty(&s.a, e), memref_ty(&s.b, e));
        let an = k.arg_as(s.a_src, &aty);
        let bn = if s.quant.is_none() {
            k.arg_as(s.b_src, &bty)
        } else {
            String::new()
        };
        let abi = if s.a[0] == 1 { Ix::C(0) } else { bi.clone() };
        let bbi = if s.b[0] == 1 { Ix::C(0) } else { bi.clone() };
        let (zero, one, end) = (k.b.idx(0), k.b.idx(1), k.b.idx(kk));
        let init = k.b.f64c(0.0);
        let (res, kv, acc) = (k.b.fresh(), k.b.fresh(), k.b.fresh());
        k.b.open(format!(
            "{res} = scf.for {kv} = {zero} to {end} step {one} iter_args({acc} = {init}) -> (f64) {{"
        ));
        let kx = Ix::V(kv);
        let ai = if s.ta {
            [abi, kx.clone(), i.clone()]
        } else {
            [abi, i.clone(), kx.clone()]
        };
        let bix = if s.tb {
            [bbi, j.clone(), kx]
        } else {
            [bbi, kx, j.clone()]
        };
        let ai: Vec<String> = ai.iter().map(|x| k.b.ix(x)).collect();
        let x =
            k.b.op(format!("memref.load {an}[{}] : {aty}", ai.join(", ")));
        let y = match s.quant {
            None => {
                let bix: Vec<String> = bix.iter().map(|x| k.b.ix(x)).collect();
                k.b.op(format!("memref.load {bn}[{}] : {bty}", bix.join(", ")))
            }
            Some((block, nested)) => {
                // qmatmul: B's element dequantized in place, in the weight's own shape.
                let shape = k.f.ty(s.b_src).shape.clone();
                let lead = shape.len().saturating_sub(2);
                let mut w = k.b.delinearize(&bix[0], &shape[..lead]);
                w.extend(bix[1..].iter().cloned());
                let args: Vec<ValueId> = k.f.node(root).args.iter().skip(1).copied().collect();
                k.dequant_at(root, &args, dt, &w, block, nested)?
            }
        };
        let (x, y) = (
            scalar::to_f64(&mut k.b, dt, &x),
            scalar::to_f64(&mut k.b, dt, &y),
        );
        let p = k.b.op(format!("arith.mulf {x}, {y} : f64"));
        let sum = k.b.op(format!("arith.addf {acc}, {p} : f64"));
        k.b.line(format!("scf.yield {sum} : f64"));
        k.b.close("}", false);
        scalar::round_f64(&mut k.b, dt, &res)
    };
    let bc = k.b.ix(&bi);
    let (ic, jc) = (k.b.ix(&i), k.b.ix(&j));
    k.b.line(format!("memref.store {r}, %out[{bc}, {ic}, {jc}] : {cty}"));
    k.b.close("}", false);
    k.b.close("}", false);
    Ok(cty)
}

/// True when a matmul is computed by [`emit_matmul_scalar`] rather than the vector GEMM:
/// non-`f32` dtypes, and empty products (nothing to tile).
pub(crate) fn scalar_matmul(dt: DType, s: &GemmShape) -> bool {
    dt != DType::F32 || s.k == 0 || s.m * s.n * s.batches == 0
}
