//! Node order before scheduling: a reduction to a much smaller value (a loss, a norm, a row
//! statistic) runs as soon as its operands exist, together with the single-use elementwise
//! chain feeding it, instead of wherever the optimizer's extraction happened to put it. The
//! large values it reads then die earlier: the training step's loss, which extraction emits
//! last, otherwise keeps the `[batch, seq, vocab]` log-probabilities alive through the whole
//! backward pass.

use graft_ir::{Function, Op};

/// How much smaller than its operand a reduction's result must be to be moved.
const SHRINK: usize = 64;

/// Ops a moved reduction may carry along when they feed only it.
fn carried(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Select
            | Op::Cast
            | Op::Broadcast
            | Op::Reshape
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Constant { .. }
    )
}

/// `f` with its small reductions moved as early as their operands allow (same nodes, same
/// outputs, another topological order). Returns `f` unchanged when nothing moves.
pub(crate) fn hoist_reductions(f: &Function) -> Function {
    let n = f.nodes.len();
    let mut users = vec![0usize; n];
    for node in &f.nodes {
        for a in &node.args {
            users[a.index()] += 1;
        }
    }
    for o in &f.outputs {
        users[o.value.index()] += 1;
    }
    // Groups: a reduction and the single-use chain feeding it, in original order.
    let mut group_of = vec![None; n];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for r in 0..n {
        let node = &f.nodes[r];
        let Op::Reduce { .. } = node.op else { continue };
        let Some(x) = node.args.first() else { continue };
        if node.ty.numel().saturating_mul(SHRINK) > f.ty(*x).numel() {
            continue;
        }
        let mut members = vec![r];
        let mut stack: Vec<usize> = node.args.iter().map(|a| a.index()).collect();
        while let Some(v) = stack.pop() {
            if users[v] == 1 && group_of[v].is_none() && carried(&f.nodes[v].op) {
                members.push(v);
                stack.extend(f.nodes[v].args.iter().map(|a| a.index()));
            }
        }
        members.sort_unstable();
        let g = groups.len();
        for &m in &members {
            group_of[m] = Some(g);
        }
        groups.push(members);
    }
    if groups.is_empty() {
        return f.clone();
    }
    // Emit in original order, skipping group members; a group goes out as soon as every
    // value it reads from outside has been emitted.
    let mut order = Vec::with_capacity(n);
    let mut emitted = vec![false; n];
    let mut done = vec![false; groups.len()];
    let ready = |g: &[usize], emitted: &[bool]| {
        g.iter().all(|&m| {
            f.nodes[m]
                .args
                .iter()
                .all(|a| emitted[a.index()] || g.contains(&a.index()))
        })
    };
    let mut flush = |order: &mut Vec<usize>, emitted: &mut Vec<bool>| loop {
        let next = (0..groups.len()).find(|&g| !done[g] && ready(&groups[g], emitted));
        let Some(g) = next else { break };
        done[g] = true;
        for &m in &groups[g] {
            order.push(m);
            emitted[m] = true;
        }
    };
    flush(&mut order, &mut emitted);
    for v in 0..n {
        if group_of[v].is_none() {
            order.push(v);
            emitted[v] = true;
            flush(&mut order, &mut emitted);
        }
    }
    if order.len() != n || order.iter().enumerate().all(|(i, &v)| i == v) {
        return f.clone();
    }
    // `order` is a topological order of every node: renumbering it cannot fail.
    f.reordered(&order).unwrap_or_else(|| f.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use graft_ir::{BinaryOp, DType, InputKind, ReduceOp, TensorType, UnaryOp, verify_function};

    #[test]
    fn a_loss_moves_up_to_its_operand_and_the_rest_keeps_its_order() {
        // x → e = exp(x) → s = Σ(e·x) (a "loss", emitted last), with unrelated work between.
        let mut f = Function::new("t");
        let t = TensorType::new(DType::F32, vec![8, 64]);
        let x = f.add_input("x", InputKind::Data, t.clone(), None);
        let e = f.add(Op::Unary(UnaryOp::Exp), &[x], None).unwrap();
        let w = f.add_input("w", InputKind::Data, t, None);
        let mut h = w;
        for _ in 0..4 {
            h = f.add(Op::Unary(UnaryOp::Tanh), &[h], None).unwrap();
        }
        let p = f.add(Op::Binary(BinaryOp::Mul), &[e, x], None).unwrap();
        let sum = Op::Reduce {
            op: ReduceOp::Sum,
            axes: vec![0, 1],
            keepdim: false,
        };
        let s = f.add(sum, &[p], None).unwrap();
        f.add_output("h", h);
        f.add_output("loss", s);
        let g = hoist_reductions(&f);
        verify_function(&g, usize::MAX).unwrap();
        let pos = |op: &str| g.nodes.iter().position(|n| n.op.name() == op).unwrap();
        assert!(
            pos("reduce_sum") < pos("tanh"),
            "{}",
            graft_ir::print_function(&g)
        );
        assert_eq!(pos("mul") + 1, pos("reduce_sum"));
        assert_eq!(g.outputs.len(), 2);
        assert_eq!(g.ty(g.outputs[1].value), f.ty(s));
        // Nothing to move: the function comes back as it was.
        let mut plain = Function::new("p");
        let y = plain.add_input(
            "y",
            InputKind::Data,
            TensorType::new(DType::F32, vec![4]),
            None,
        );
        let z = plain.add(Op::Unary(UnaryOp::Neg), &[y], None).unwrap();
        plain.add_output("z", z);
        assert_eq!(hoist_reductions(&plain), plain);
    }
}
