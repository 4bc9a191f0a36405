//! Rematerialization: a large value read early (in the forward) and again much later (in
//! the backward) is computed a second time just before its late readers, from values that
//! are kept for the backward anyway, instead of being kept itself. Only cheap recomputations
//! qualify: elementwise and layout ops, gathers and reductions, the value's own `softmax`,
//! and at most one matmul with a short contraction. In a Llama training step this recomputes attention's
//! probabilities from the saved queries and keys (one `[S, d]·[d, S]` product per layer and
//! head, `d` = the head size) and the normalized inputs of LoRA-adapted projections from the
//! saved residual stream (layer 0's from the embedding table and the token ids), which are the largest values kept from the forward to the
//! backward besides the MLP's gate and up projections (whose recomputation would cost a
//! full GEMM and is not done).

use graft_ir::{Function, Node, Op, TypeError, ValueId};

/// Values below this many elements are not worth recomputing.
const MIN_ELEMS: usize = 1 << 12;
/// Uses at least this many nodes apart count as two phases (forward, backward).
const MIN_GAP: usize = 32;
/// At most this many nodes are cloned for one value.
const MAX_CLONES: usize = 24;
/// A cloned matmul's contraction may be at most this long: attention's head size (64 or
/// 128 in Llamas), i.e. at most 256 FLOPs per recomputed element, against the 8 bytes the
/// value costs to store and read back. A projection's contraction is the hidden size
/// (≥ 256 in every model graft targets), whose recomputation would cost a GEMM per layer.
const MAX_CONTRACTION: usize = 128;

/// Ops a recomputation may repeat: whatever the scheduler fuses (elementwise, layout,
/// gathers, random draws, which are functions of their seed), reductions, softmax, matmuls
/// (further limited in [`closure`]).
fn repeatable(op: &Op) -> bool {
    op.class().fuses()
        || matches!(
            op,
            Op::Reduce { .. } | Op::Softmax { .. } | Op::MatMul { .. }
        )
}

/// `f` with its long-lived recomputable values recomputed for their late readers (same
/// outputs; the clones are inserted before the first late reader). `f` itself when nothing
/// qualifies.
///
/// # Errors
/// A copied node that does not type-check (`f` was not verified).
pub(crate) fn rematerialize(f: &Function) -> Result<Function, TypeError> {
    let n = f.nodes.len();
    let users = f.users();
    let mut output = vec![false; n];
    for o in &f.outputs {
        output[o.value.index()] = true;
    }
    // Per value: the nodes to clone (ascending) and the first late reader.
    let mut plans: Vec<(usize, Vec<usize>, usize)> = Vec::new();
    for v in 0..n {
        let node = &f.nodes[v];
        let kind = matches!(node.op, Op::Softmax { .. } | Op::Binary(_) | Op::Unary(_));
        if output[v] || !kind || node.ty.numel() < MIN_ELEMS {
            continue;
        }
        let Some(first_late) = late_start(&users[v]) else {
            continue;
        };
        // A value is available at `first_late` when it is an input or read at or after it.
        let alive = |x: usize| {
            matches!(f.nodes[x].op, Op::Input { .. })
                || output[x]
                || users[x].last().is_some_and(|&u| u >= first_late)
        };
        if let Some(clones) = closure(f, v, &alive) {
            plans.push((v, clones, first_late));
        }
    }
    if plans.is_empty() {
        return Ok(f.clone());
    }
    // Rebuild: at each plan's first late reader, emit its clones, then route the late
    // readers of the value to its clone.
    let mut g = Function {
        name: f.name.clone(),
        nodes: Vec::with_capacity(n + plans.iter().map(|p| p.1.len()).sum::<usize>()),
        outputs: f.outputs.clone(),
    };
    let mut new_id: Vec<ValueId> = Vec::with_capacity(n);
    // Per original node: the clone of the value it must read instead (late readers).
    let mut redirect: Vec<Vec<(usize, ValueId)>> = vec![Vec::new(); n];
    for u in 0..n {
        for (v, clones, first_late) in plans.iter().filter(|p| p.2 == u) {
            let mut local: Vec<(usize, ValueId)> = Vec::new();
            for &c in clones {
                let id = copy_node(&mut g, &f.nodes[c], &new_id, &local)?;
                local.push((c, id));
            }
            let clone_of_v = local.iter().find(|(o, _)| o == v).map(|&(_, id)| id);
            if let Some(id) = clone_of_v {
                for &r in users[*v].iter().filter(|&&r| r >= *first_late) {
                    redirect[r].push((*v, id));
                }
            }
        }
        let id = copy_node(&mut g, &f.nodes[u], &new_id, &redirect[u])?;
        new_id.push(id);
    }
    for o in &mut g.outputs {
        o.value = new_id[o.value.index()];
    }
    Ok(g)
}

/// Appends a copy of `src` to `g`, its operands renamed: those listed in `instead` (original
/// value, replacement) to their replacement, the others to their copy in `new_id`.
fn copy_node(
    g: &mut Function,
    src: &Node,
    new_id: &[ValueId],
    instead: &[(usize, ValueId)],
) -> Result<ValueId, TypeError> {
    let args = src
        .args
        .iter()
        .map(|a| {
            instead
                .iter()
                .find(|(o, _)| *o == a.index())
                .map_or(new_id[a.index()], |&(_, id)| id)
        })
        .collect::<Vec<_>>();
    g.add_copy(src, &args)
}

/// The first reader of the late phase: the reader after the widest gap between consecutive
/// readers, if that gap is at least [`MIN_GAP`] nodes.
fn late_start(readers: &[usize]) -> Option<usize> {
    let (gap, at) = readers
        .windows(2)
        .map(|w| (w[1] - w[0], w[1]))
        .max_by_key(|&(gap, _)| gap)?;
    (gap >= MIN_GAP).then_some(at)
}

/// The nodes to clone to recompute `v` from values `alive` at its late readers: `v` and
/// the producers that are not alive, if every one of them is repeatable (at most one short
/// matmul, no softmax but `v`'s own) and there are at most [`MAX_CLONES`].
fn closure(f: &Function, v: usize, alive: &dyn Fn(usize) -> bool) -> Option<Vec<usize>> {
    let mut todo = vec![v];
    let mut set = vec![v];
    let mut matmuls = 0;
    while let Some(x) = todo.pop() {
        let node = &f.nodes[x];
        if !repeatable(&node.op) {
            return None;
        }
        match node.op {
            Op::Softmax { .. } if x != v => return None,
            Op::MatMul { ta, .. } => {
                matmuls += 1;
                let a = f.ty(*node.args.first()?);
                let k = if ta {
                    a.shape.get(a.rank().checked_sub(2)?)
                } else {
                    a.shape.last()
                };
                if matmuls > 1 || *k? > MAX_CONTRACTION {
                    return None;
                }
            }
            _ => {}
        }
        for a in &node.args {
            let a = a.index();
            if !alive(a) && !set.contains(&a) {
                set.push(a);
                todo.push(a);
                if set.len() > MAX_CLONES {
                    return None;
                }
            }
        }
    }
    set.sort_unstable();
    Some(set)
}
