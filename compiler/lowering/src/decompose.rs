//! Rewrites before scheduling that trade a stored value for a cheap recomputation.
//!
//! A large `f32` `log_softmax` becomes `x − lse(x)`, with the per-slice `lse(x) = max +
//! log(Σ exp(x − max))` in `f64`: the scheduler stores only `lse` (one value per slice) and
//! recomputes `x − lse` in each consumer (one load and one subtraction per element).
//! The training step's loss reads the log-probabilities twice, once for the loss in the
//! forward and once (as `exp`) for the gradient of the logits in the backward, so they were
//! stored, and lived through the forward's peak next to the logits: at the mid-size Llama,
//! 33 MB of the memory plan's peak. The results stay within an `f32` rounding of the fused
//! kernel's (see [`decompose`]); NaN and infinite inputs give NaN slices, as the
//! interpreter's.

use graft_ir::{
    BinaryOp, DType, Function, Node, Op, ReduceOp, TensorType, TypeError, UnaryOp, ValueId,
};

/// Elements below which a `log_softmax` keeps its fused kernel (nothing worth saving; low
/// enough that the example specs' training steps, checked against the interpreter, use the
/// decomposition).
pub(crate) const LOG_SOFTMAX_MIN: usize = 1 << 12;

/// `f` with every `f32` `log_softmax` of at least `min_elems` elements decomposed (same
/// outputs, same input order); `f` itself when there is none.
///
/// # Errors
/// A node that does not type-check (`f` was not verified: a bug in an earlier pass).
pub(crate) fn log_softmax(f: &Function, min_elems: usize) -> Result<Function, TypeError> {
    let big = |n: &Node| {
        matches!(n.op, Op::LogSoftmax { .. })
            && n.ty.dtype == DType::F32
            && n.ty.numel() >= min_elems
    };
    if !f.nodes.iter().any(big) {
        return Ok(f.clone());
    }
    let mut g = Function {
        name: f.name.clone(),
        nodes: Vec::with_capacity(f.nodes.len() + 16),
        outputs: f.outputs.clone(),
    };
    let mut new_id = Vec::with_capacity(f.nodes.len());
    for node in &f.nodes {
        let args: Vec<ValueId> = node.args.iter().map(|a| new_id[a.index()]).collect();
        let id = match (&node.op, args.first()) {
            (&Op::LogSoftmax { axis }, Some(&x)) if big(node) => decompose(&mut g, node, x, axis)?,
            _ => g.add_copy(node, &args)?,
        };
        new_id.push(id);
    }
    for o in &mut g.outputs {
        o.value = new_id[o.value.index()];
    }
    Ok(g)
}

/// Appends a node of type `ty` (stated for the ops that need it, checked by the IR's typing
/// rule) with `like`'s source location.
fn push(
    g: &mut Function,
    op: Op,
    args: &[ValueId],
    ty: &TensorType,
    like: &Node,
) -> Result<ValueId, TypeError> {
    let declared = op.needs_declared_type().then(|| ty.clone());
    g.add_typed(op, args, declared, like.loc)
}

/// The nodes of `x − lse(x)` along `axis` for `node` (an `f32` `log_softmax` of `x`): the
/// max and `exp(x − max)` in `f32` (exact, and graft's vectorized `exp`), the sum accumulated
/// in `f64` (rounded to `f32`: a relative 2⁻²⁴, i.e. 6e-8 after the log), `lse` in `f64`,
/// and `x − lse` in `f64`, rounded once.
fn decompose(g: &mut Function, node: &Node, x: ValueId, axis: usize) -> Result<ValueId, TypeError> {
    let full = node.ty.clone();
    let mut kept = full.shape.clone();
    if let Some(k) = kept.get_mut(axis) {
        *k = 1;
    }
    let ty = |dt: DType, shape: &[usize]| TensorType::new(dt, shape.to_vec());
    let (f32_full, f32_kept) = (ty(DType::F32, &full.shape), ty(DType::F32, &kept));
    let (f64_full, f64_kept) = (ty(DType::F64, &full.shape), ty(DType::F64, &kept));
    let mut add = |op: Op, args: Vec<ValueId>, t: &TensorType| push(g, op, &args, t, node);
    let reduce = |op| Op::Reduce {
        op,
        axes: vec![axis],
        keepdim: true,
    };
    let max = add(reduce(ReduceOp::Max), vec![x], &f32_kept)?;
    let max_b = add(Op::Broadcast, vec![max], &f32_full)?;
    let shifted = add(Op::Binary(BinaryOp::Sub), vec![x, max_b], &f32_full)?;
    let e = add(Op::Unary(UnaryOp::Exp), vec![shifted], &f32_full)?;
    let sum = add(reduce(ReduceOp::Sum), vec![e], &f32_kept)?;
    let sum = add(Op::Cast, vec![sum], &f64_kept)?;
    let log = add(Op::Unary(UnaryOp::Log), vec![sum], &f64_kept)?;
    let max = add(Op::Cast, vec![max], &f64_kept)?;
    let lse = add(Op::Binary(BinaryOp::Add), vec![max, log], &f64_kept)?;
    let lse_b = add(Op::Broadcast, vec![lse], &f64_full)?;
    let wide = add(Op::Cast, vec![x], &f64_full)?;
    let y = add(Op::Binary(BinaryOp::Sub), vec![wide, lse_b], &f64_full)?;
    add(Op::Cast, vec![y], &full)
}
