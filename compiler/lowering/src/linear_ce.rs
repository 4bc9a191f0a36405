//! Fused linear cross-entropy: the language-model head and its loss computed over chunks of
//! the vocabulary, so the logits never exist whole.
//!
//! A causal-LM training step computes `logits = h · Wᵀ` (`[rows, V]`), their `log_softmax`,
//! the loss from the labels' log-probabilities, and in the backward `dh = (g − softmax ∘ s) · W`,
//! where `g` is the loss's gradient (non-zero only at each row's label) and `s` its per-row sum.
//! The logits are kept from the forward to that product, at the memory plan's peak (every
//! activation the backward needs is live then): 33 MB at the mid-size Llama (vocabulary
//! 16384), 263 MB for a 128k vocabulary.
//!
//! The rewrite, as the fused linear cross-entropy kernels of Liger and Unsloth do it, but as
//! a graph rewrite that the scheduler then fuses like any other graph: for each chunk `i` of
//! vocabulary rows of `W`,
//!
//! ```text
//! xᵢ = h · Wᵢᵀ    mᵢ = max xᵢ    eᵢ = exp(xᵢ − mᵢ)    sᵢ = Σ eᵢ    aᵢ = eᵢ · Wᵢ
//! tᵢ = Σ select(labelᵢ, xᵢ, …)                                  (the label's logit)
//! ```
//!
//! combined online with a running max `M` (`acc ← acc·e^{M−M'} + aᵢ·e^{mᵢ−M'}`, likewise the
//! sum `S`, in `f64`), so that `lse = M + log S`, `softmax · W = acc / S`, the loss's term is
//! `Σ tᵢ − lse`, and `g · W` is the label's row of `W` times the gradient's per-row value (a
//! gather instead of a product). Each `xᵢ` lives only while its chunk is processed; the
//! products are the same FLOPs as before (the forward and the backward GEMM, split over `K`),
//! and the backward's GEMM moves into the forward.
//!
//! The chunks' size is [`crate::Options::vocab_chunk`] (4 MiB of logits: eight chunks at
//! a vocabulary of 16384 and 508 rows; 0 turns the rewrite off). Each update of the
//! accumulator is stored (a two-term reduction, see `Builder::stored_sum`), so at most two
//! accumulators and one chunk's product are live at a time.
//!
//! The pattern is matched exactly (what autodiff makes of `log_softmax` followed by the
//! label's pick and a masked mean, with or without the causal shift); any other use of the
//! logits or the log-probabilities leaves the graph as it is.

use graft_ir::{
    BinaryOp, DType, Emitter, Function, Loc, Node, Op, ReduceOp, TensorType, UnaryOp, ValueId,
};

/// The logits' size (elements) from which they are chunked: nothing to save below, and low
/// enough that the tiny parity specs' training steps (`[2, 7, 256]` logits), checked against
/// the interpreter and PyTorch for every PEFT method, go through the rewrite.
pub(crate) const MIN_ELEMS: usize = 1 << 11;
/// At most this many chunks (each costs a handful of launches and an update of the
/// `[rows, hidden]` accumulator).
const MAX_CHUNKS: usize = 16;

/// A use of the log-probabilities in the loss: `reduce_sum(select(cond, logp, other))` over
/// the vocabulary.
struct LossUse {
    /// The `reduce_sum` node.
    reduce: usize,
    cond: ValueId,
    other: ValueId,
}

/// A use in the backward: `matmul(pad(g − exp(logp) ∘ broadcast(sx)), W)` (or with the
/// difference the other way round), where `g = select(iota == label, broadcast(tr), 0)`.
struct GradUse {
    /// The `matmul` node.
    matmul: usize,
    /// The difference (`sub`) node.
    diff: usize,
    /// The `concat` node with zeros: its axis, whether the difference comes first, and the
    /// padded result's zero block type.
    pad: Option<(usize, usize, bool, TensorType)>,
    /// `+1` for `g − p·s`, `-1` for `p·s − g`.
    negate: bool,
    sx: ValueId,
    label: ValueId,
    tr: ValueId,
}

/// One logits computation to chunk.
struct Site {
    /// The forward `matmul` (replaced).
    matmul: usize,
    /// The chunk loop is emitted after this node: the matmul or, if later, the last operand
    /// of the label picks.
    at: usize,
    h: ValueId,
    w: ValueId,
    /// The slice between the matmul and `log_softmax` (the causal shift), if any.
    shift: Option<Op>,
    /// The logits' type (after the shift).
    x: TensorType,
    chunks: usize,
    /// Nodes replaced by the rewrite (not copied).
    replaced: Vec<usize>,
    losses: Vec<LossUse>,
    grads: Vec<GradUse>,
}

/// `f` with every matched language-model head and loss chunked over the vocabulary (same
/// outputs, same input order); `f` itself when there is none. `chunk_bytes` sets the
/// chunks' size (at least two chunks, at most [`MAX_CHUNKS`]).
pub(crate) fn chunk_vocabulary(f: &Function, min_elems: usize, chunk_bytes: usize) -> Function {
    let users = f.users();
    let mut output = vec![false; f.nodes.len()];
    for o in &f.outputs {
        output[o.value.index()] = true;
    }
    let sites: Vec<Site> = (0..f.nodes.len())
        .filter_map(|l| site(f, &users, &output, l, min_elems, chunk_bytes))
        .collect();
    if sites.is_empty() {
        return f.clone();
    }
    rewrite(f, &sites).map_or_else(|| f.clone(), |g| g.without_dead(true))
}

/// Whether `v` is all zeros: a zero constant, or a broadcast or reshape of one.
fn is_zero(f: &Function, v: ValueId) -> bool {
    let node = f.node(v);
    match node.op {
        Op::Constant { value } => value == 0.0,
        Op::Broadcast | Op::Reshape => node.args.first().is_some_and(|&a| is_zero(f, a)),
        _ => false,
    }
}

/// The `other` operand of a binary node with operand `v`, and whether `v` comes first.
fn other_arg(node: &Node, v: ValueId) -> Option<(ValueId, bool)> {
    match node.args.as_slice() {
        [a, b] if *a == v && *b != v => Some((*b, true)),
        [a, b] if *b == v && *a != v => Some((*a, false)),
        _ => None,
    }
}

/// Matches the pattern at `l` (a `log_softmax`).
fn site(
    f: &Function,
    users: &[Vec<usize>],
    output: &[bool],
    l: usize,
    min_elems: usize,
    chunk_bytes: usize,
) -> Option<Site> {
    let node = &f.nodes[l];
    let rank = node.ty.rank();
    let last = rank.checked_sub(1)?;
    if !matches!(node.op, Op::LogSoftmax { axis } if axis == last)
        || node.ty.dtype != DType::F32
        || node.ty.numel() < min_elems
        || rank < 2
        || output[l]
    {
        return None;
    }
    let x = node.args[0];
    let mut replaced = vec![l];
    // The causal shift, then the forward matmul.
    let (mm, shift) = match &f.node(x).op {
        Op::Slice { axis, .. } if *axis != last => (f.node(x).args[0], Some(f.node(x).op.clone())),
        _ => (x, None),
    };
    if shift.is_some() {
        if users[x.index()] != [l] || output[x.index()] {
            return None;
        }
        replaced.push(x.index());
    }
    if users[mm.index()] != [if shift.is_some() { x.index() } else { l }] || output[mm.index()] {
        return None;
    }
    replaced.push(mm.index());
    let mm_node = f.node(mm);
    let (h, w) = match (&mm_node.op, mm_node.args.as_slice()) {
        (
            Op::MatMul {
                ta: false,
                tb: true,
            },
            &[h, w],
        ) => (h, w),
        (
            Op::MatMul {
                ta: false,
                tb: false,
            },
            &[h, t],
        ) => match &f.node(t).op {
            Op::Transpose { perm } if perm == &[1, 0] => (h, f.node(t).args[0]),
            _ => return None,
        },
        _ => return None,
    };
    let wt = f.ty(w);
    let vocab = *node.ty.shape.last()?;
    if wt.rank() != 2 || wt.shape[0] != vocab || wt.dtype != DType::F32 {
        return None;
    }
    let chunks = (node.ty.numel() * 4)
        .div_ceil(chunk_bytes)
        .clamp(2, MAX_CHUNKS);
    if vocab < 2 * chunks {
        return None;
    }
    let mut losses = Vec::new();
    let mut grads = Vec::new();
    for &u in &users[l] {
        let un = &f.nodes[u];
        if output[u] {
            return None;
        }
        match un.op {
            Op::Select if un.args[1] == ValueId(l as u32) && un.args[0] != un.args[1] => {
                let (cond, other) = (un.args[0], un.args[2]);
                if other == un.args[1] {
                    return None;
                }
                replaced.push(u);
                for &r in &users[u] {
                    let rn = &f.nodes[r];
                    if !matches!(&rn.op, Op::Reduce { op: ReduceOp::Sum, axes, .. } if axes == &[last])
                    {
                        return None;
                    }
                    losses.push(LossUse {
                        reduce: r,
                        cond,
                        other,
                    });
                    replaced.push(r);
                }
            }
            Op::Unary(UnaryOp::Exp) => {
                replaced.push(u);
                for &q in &users[u] {
                    grads_of_product(f, users, output, q, ValueId(u as u32), w, &mut grads)?;
                    replaced.push(q);
                }
            }
            _ => return None,
        }
    }
    for g in &grads {
        replaced.extend([g.matmul, g.diff]);
        if let Some((c, ..)) = &g.pad {
            replaced.push(*c);
        }
    }
    // The chunk loop goes where the matmul was, or after the label picks' operands if they
    // come later (they depend on the labels only), and before every use of its results.
    let at = losses
        .iter()
        .flat_map(|u| [u.cond.index(), u.other.index()])
        .fold(mm.index(), usize::max);
    let first_use = losses
        .iter()
        .map(|u| u.reduce)
        .chain(grads.iter().map(|g| g.matmul))
        .min()?;
    if first_use <= at {
        return None;
    }
    replaced.sort_unstable();
    replaced.dedup();
    Some(Site {
        matmul: mm.index(),
        at,
        h,
        w,
        shift,
        x: node.ty.clone(),
        chunks,
        replaced,
        losses,
        grads,
    })
}

/// Matches `q = p ∘ broadcast(sx)` (`p = exp(logp)`) and its uses `g − q` (or `q − g`), each
/// read by a `matmul` with `w` (through a zero `concat` or not), pushing one [`GradUse`] per
/// matmul; `None` on anything else.
fn grads_of_product(
    f: &Function,
    users: &[Vec<usize>],
    output: &[bool],
    q: usize,
    p: ValueId,
    w: ValueId,
    grads: &mut Vec<GradUse>,
) -> Option<()> {
    let qn = &f.nodes[q];
    let full = &qn.ty;
    let row = row_shape(full);
    if !matches!(qn.op, Op::Binary(BinaryOp::Mul)) || output[q] {
        return None;
    }
    let (b, _) = other_arg(qn, p)?;
    let sx = match f.node(b).op {
        Op::Broadcast if f.ty(f.node(b).args[0]).shape == row => f.node(b).args[0],
        _ => return None,
    };
    let qv = ValueId(q as u32);
    for &d in &users[q] {
        let dn = &f.nodes[d];
        if !matches!(dn.op, Op::Binary(BinaryOp::Sub)) || output[d] {
            return None;
        }
        let (g, q_first) = other_arg(dn, qv)?;
        let (label, tr) = one_hot_gradient(f, g)?;
        let dv = ValueId(d as u32);
        for &c in &users[d] {
            let cn = &f.nodes[c];
            if output[c] {
                return None;
            }
            // `matmul(·, W)`, or `matmul{tb}(·, transpose(W))` (the forward's operand).
            let backward = |m: usize| {
                let mn = &f.nodes[m];
                let b = mn.args[1];
                let reads_w = match mn.op {
                    Op::MatMul {
                        ta: false,
                        tb: false,
                    } => b == w,
                    Op::MatMul {
                        ta: false,
                        tb: true,
                    } => {
                        matches!(&f.node(b).op, Op::Transpose { perm } if perm == &[1, 0])
                            && f.node(b).args[0] == w
                    }
                    _ => false,
                };
                reads_w && !output[m]
            };
            match cn.op {
                Op::MatMul { .. } if cn.args[0] == dv && backward(c) => grads.push(GradUse {
                    matmul: c,
                    diff: d,
                    pad: None,
                    negate: q_first,
                    sx,
                    label,
                    tr,
                }),
                Op::Concat { axis } if axis + 1 < full.rank() => {
                    let (z, d_first) = other_arg(cn, dv)?;
                    if !is_zero(f, z) || users[c].is_empty() {
                        return None;
                    }
                    let mut zt = f.ty(z).clone();
                    *zt.shape.last_mut()? = f.ty(w).shape[1];
                    for &m in &users[c] {
                        if f.nodes[m].args[0] != ValueId(c as u32) || !backward(m) {
                            return None;
                        }
                        grads.push(GradUse {
                            matmul: m,
                            diff: d,
                            pad: Some((c, axis, d_first, zt.clone())),
                            negate: q_first,
                            sx,
                            label,
                            tr,
                        });
                    }
                }
                _ => return None,
            }
        }
    }
    Some(())
}

/// `g = select(iota == broadcast(label), broadcast(tr), 0)` with `label` and `tr` one value
/// per row (`label` an `i64`): the loss's gradient with respect to the log-probabilities.
fn one_hot_gradient(f: &Function, g: ValueId) -> Option<(ValueId, ValueId)> {
    let gn = f.node(g);
    let full = &gn.ty;
    let row = row_shape(full);
    if !matches!(gn.op, Op::Select) || !is_zero(f, gn.args[2]) {
        return None;
    }
    let per_row = |v: ValueId, dtype: DType| {
        let n = f.node(v);
        match n.op {
            Op::Broadcast => {
                let a = n.args[0];
                (f.ty(a).shape == row && f.ty(a).dtype == dtype).then_some(a)
            }
            _ => None,
        }
    };
    let tr = per_row(gn.args[1], DType::F32)?;
    let cn = f.node(gn.args[0]);
    if !matches!(cn.op, Op::Binary(BinaryOp::Eq)) {
        return None;
    }
    let last = full.rank() - 1;
    let is_iota = |v: ValueId| matches!(f.node(v).op, Op::Iota { axis } if axis == last);
    let label = match *cn.args.as_slice() {
        [a, b] if is_iota(a) => per_row(b, DType::I64)?,
        [a, b] if is_iota(b) => per_row(a, DType::I64)?,
        _ => return None,
    };
    Some((label, tr))
}

/// `full`'s shape with the last axis 1 (one value per row).
fn row_shape(full: &TensorType) -> Vec<usize> {
    let mut s = full.shape.to_vec();
    if let Some(l) = s.last_mut() {
        *l = 1;
    }
    s
}

/// Appends nodes to the rewritten graph through graft-ir's [`Emitter`] (each type-checked);
/// `None` on a type error (the rewrite is dropped).
struct Builder {
    g: Function,
    loc: Option<Loc>,
}

impl Builder {
    fn e(&mut self) -> Emitter<'_> {
        Emitter::at(&mut self.g, self.loc)
    }
    fn add(&mut self, op: Op, args: &[ValueId]) -> Option<ValueId> {
        self.e().op(op, args).ok()
    }
    fn constant(&mut self, value: f64, ty: TensorType) -> Option<ValueId> {
        self.e().constant(value, ty).ok()
    }
    fn bin(&mut self, op: BinaryOp, a: ValueId, b: ValueId) -> Option<ValueId> {
        self.e().bin(op, a, b).ok()
    }
    fn un(&mut self, op: UnaryOp, a: ValueId) -> Option<ValueId> {
        self.e().un(op, a).ok()
    }
    fn cast(&mut self, a: ValueId, dtype: DType) -> Option<ValueId> {
        self.e().cast(a, dtype).ok()
    }
    fn broadcast(&mut self, a: ValueId, shape: &[usize]) -> Option<ValueId> {
        self.e().broadcast(a, shape).ok()
    }
    fn reshape(&mut self, a: ValueId, shape: &[usize]) -> Option<ValueId> {
        self.e().reshape(a, shape).ok()
    }
    fn reduce(&mut self, op: ReduceOp, a: ValueId, axis: usize, keepdim: bool) -> Option<ValueId> {
        self.e().reduce(op, a, vec![axis], keepdim).ok()
    }
    fn slice(&mut self, a: ValueId, axis: usize, start: usize, end: usize) -> Option<ValueId> {
        self.e().slice(a, axis, start, end).ok()
    }
    /// `a + b` written as a reduction over the two stacked terms, so that the scheduler
    /// stores it where it stands: an elementwise `add` would be fused into its consumer, and
    /// the accumulator's chain of updates into one loop at the end, which would keep every
    /// chunk's product live until then. Same result: a two-term sum rounded once.
    fn stored_sum(&mut self, a: ValueId, b: ValueId) -> Option<ValueId> {
        let mut shape = vec![1];
        shape.extend(self.g.ty(a).shape.iter());
        let (a, b) = (self.reshape(a, &shape)?, self.reshape(b, &shape)?);
        let both = self.add(Op::Concat { axis: 0 }, &[a, b])?;
        self.reduce(ReduceOp::Sum, both, 0, false)
    }
}

/// What the chunk loop leaves for the loss and gradient uses.
struct Chunked {
    /// `M + log S` per row (`f64`, the row shape).
    lse: ValueId,
    /// `S` (`f64`).
    sum: ValueId,
    /// `Σ eᵢ·Wᵢ` scaled to the running max (`f32`, rows × hidden), if any gradient use.
    acc: Option<ValueId>,
    /// Per loss use: `Σᵢ tᵢ`.
    picked: Vec<ValueId>,
}

/// The rewritten graph (with dead nodes), or `None` if a node failed to type.
fn rewrite(f: &Function, sites: &[Site]) -> Option<Function> {
    let mut b = Builder {
        g: Function {
            name: f.name.clone(),
            nodes: Vec::with_capacity(f.nodes.len() + 64),
            outputs: f.outputs.clone(),
        },
        loc: None,
    };
    let mut skip = vec![false; f.nodes.len()];
    for s in sites {
        for &r in &s.replaced {
            skip[r] = true;
        }
    }
    let mut new_id: Vec<Option<ValueId>> = vec![None; f.nodes.len()];
    let mut chunked: Vec<Option<Chunked>> = sites.iter().map(|_| None).collect();
    for (v, node) in f.nodes.iter().enumerate() {
        b.loc = node.loc;
        copy(&mut b, sites, &skip, v, node, &mut new_id, &chunked)?;
        if let Some(k) = sites.iter().position(|s| s.at == v) {
            b.loc = f.nodes[sites[k].matmul].loc;
            chunked[k] = Some(chunk_loop(&mut b, &sites[k], &new_id)?);
        }
    }
    for o in &mut b.g.outputs {
        o.value = new_id[o.value.index()]?;
    }
    Some(b.g)
}

/// Copies node `v` into the rewritten graph, or emits its replacement (a loss use's or a
/// gradient use's), or nothing (a replaced node).
#[allow(clippy::too_many_arguments)]
fn copy(
    b: &mut Builder,
    sites: &[Site],
    skip: &[bool],
    v: usize,
    node: &Node,
    new_id: &mut [Option<ValueId>],
    chunked: &[Option<Chunked>],
) -> Option<()> {
    let site_of = |pick: &dyn Fn(&Site) -> bool| sites.iter().position(pick);
    if let Some(k) = site_of(&|s| s.losses.iter().any(|u| u.reduce == v)) {
        let c = chunked[k].as_ref()?;
        let j = sites[k].losses.iter().position(|u| u.reduce == v)?;
        new_id[v] = Some(loss(b, &sites[k], j, c, node, new_id)?);
        return Some(());
    }
    if let Some(k) = site_of(&|s| s.grads.iter().any(|u| u.matmul == v)) {
        let c = chunked[k].as_ref()?;
        let j = sites[k].grads.iter().position(|u| u.matmul == v)?;
        let id = gradient(b, &sites[k], j, c, new_id)?;
        if *b.g.ty(id) != node.ty {
            return None;
        }
        new_id[v] = Some(id);
        return Some(());
    }
    if skip[v] {
        return Some(());
    }
    let args = node
        .args
        .iter()
        .map(|a| new_id[a.index()])
        .collect::<Option<Vec<_>>>()?;
    new_id[v] = Some(b.g.add_copy(node, &args).ok()?);
    Some(())
}

/// The chunk loop (at [`Site::at`]).
fn chunk_loop(b: &mut Builder, s: &Site, new_id: &[Option<ValueId>]) -> Option<Chunked> {
    let id = |v: ValueId| new_id[v.index()];
    let (h, w) = (id(s.h)?, id(s.w)?);
    let last = s.x.rank() - 1;
    let vocab = s.x.shape[last];
    let row = row_shape(&s.x);
    let width = vocab.div_ceil(s.chunks).next_multiple_of(16);
    let losses: Vec<(ValueId, ValueId)> = s
        .losses
        .iter()
        .map(|u| Some((id(u.cond)?, id(u.other)?)))
        .collect::<Option<_>>()?;
    let mut picked: Vec<Option<ValueId>> = vec![None; losses.len()];
    let mut state: Option<(ValueId, ValueId, Option<ValueId>)> = None; // (M, S, acc)
    let mut start = 0;
    while start < vocab {
        let end = (start + width).min(vocab);
        let wi = b.slice(w, 0, start, end)?;
        let mut xi = b.add(
            Op::MatMul {
                ta: false,
                tb: true,
            },
            &[h, wi],
        )?;
        if let Some(shift) = &s.shift {
            xi = b.add(shift.clone(), &[xi])?;
        }
        let shape = b.g.ty(xi).shape.to_vec();
        let mi = b.reduce(ReduceOp::Max, xi, last, true)?;
        let mb = b.broadcast(mi, &shape)?;
        let d = b.bin(BinaryOp::Sub, xi, mb)?;
        let ei = b.un(UnaryOp::Exp, d)?;
        let si = b.reduce(ReduceOp::Sum, ei, last, true)?;
        let si = b.cast(si, DType::F64)?;
        for (j, &(cond, other)) in losses.iter().enumerate() {
            let (c, o) = (
                b.slice(cond, last, start, end)?,
                b.slice(other, last, start, end)?,
            );
            let sel = b.add(Op::Select, &[c, xi, o])?;
            let t = b.reduce(ReduceOp::Sum, sel, last, false)?;
            picked[j] = Some(match picked[j] {
                Some(p) => b.bin(BinaryOp::Add, p, t)?,
                None => t,
            });
        }
        let ai = if s.grads.is_empty() {
            None
        } else {
            Some(b.add(
                Op::MatMul {
                    ta: false,
                    tb: false,
                },
                &[ei, wi],
            )?)
        };
        state = Some(match state {
            None => (mi, si, ai),
            Some((m, sum, acc)) => {
                let mn = b.bin(BinaryOp::Max, m, mi)?;
                let da = b.bin(BinaryOp::Sub, m, mn)?;
                let ea = b.un(UnaryOp::Exp, da)?;
                let db = b.bin(BinaryOp::Sub, mi, mn)?;
                let eb = b.un(UnaryOp::Exp, db)?;
                let (ea64, eb64) = (b.cast(ea, DType::F64)?, b.cast(eb, DType::F64)?);
                let l = b.bin(BinaryOp::Mul, sum, ea64)?;
                let r = b.bin(BinaryOp::Mul, si, eb64)?;
                let sum = b.bin(BinaryOp::Add, l, r)?;
                let acc = match (acc, ai) {
                    (Some(acc), Some(ai)) => {
                        let hs = b.g.ty(acc).shape.to_vec();
                        let (eab, ebb) = (b.broadcast(ea, &hs)?, b.broadcast(eb, &hs)?);
                        let l = b.bin(BinaryOp::Mul, acc, eab)?;
                        let r = b.bin(BinaryOp::Mul, ai, ebb)?;
                        Some(b.stored_sum(l, r)?)
                    }
                    _ => None,
                };
                (mn, sum, acc)
            }
        });
        start = end;
    }
    let (m, sum, acc) = state?;
    let m64 = b.cast(m, DType::F64)?;
    let log = b.un(UnaryOp::Log, sum)?;
    let lse = b.bin(BinaryOp::Add, m64, log)?;
    debug_assert_eq!(b.g.ty(lse).shape.to_vec(), row);
    Some(Chunked {
        lse,
        sum,
        acc,
        picked: picked.into_iter().collect::<Option<_>>()?,
    })
}

/// A loss use's `reduce_sum(select(cond, x − lse, other))` = `Σᵢ tᵢ − lse · Σ select(cond,
/// 1, 0)`, in `f64`, at the reduce's position and of its type.
fn loss(
    b: &mut Builder,
    s: &Site,
    j: usize,
    c: &Chunked,
    node: &Node,
    new_id: &[Option<ValueId>],
) -> Option<ValueId> {
    let u = &s.losses[j];
    let cond = new_id[u.cond.index()]?;
    let last = s.x.rank() - 1;
    let full = s.x.clone();
    let one = b.constant(1.0, full.clone())?;
    let zero = b.constant(0.0, full)?;
    let hit = b.add(Op::Select, &[cond, one, zero])?;
    let count = b.reduce(ReduceOp::Sum, hit, last, false)?;
    let count = b.cast(count, DType::F64)?;
    let rows = b.g.ty(count).shape.to_vec();
    let lse = b.reshape(c.lse, &rows)?;
    let picked = b.cast(c.picked[j], DType::F64)?;
    let minus = b.bin(BinaryOp::Mul, lse, count)?;
    let y = b.bin(BinaryOp::Sub, picked, minus)?;
    let y = b.cast(y, DType::F32)?;
    if b.g.ty(y).shape == node.ty.shape {
        Some(y)
    } else {
        b.reshape(y, &node.ty.shape.to_vec())
    }
}

/// A gradient use's `(g − p ∘ sx) · W` = `tr · W[label] − sx ∘ acc / S` (with the label's
/// row only for labels in range, as the one-hot select has it), padded as the original.
fn gradient(
    b: &mut Builder,
    s: &Site,
    j: usize,
    c: &Chunked,
    new_id: &[Option<ValueId>],
) -> Option<ValueId> {
    let u = &s.grads[j];
    let (sx, label, tr, w) = (
        new_id[u.sx.index()]?,
        new_id[u.label.index()]?,
        new_id[u.tr.index()]?,
        new_id[s.w.index()]?,
    );
    let acc = c.acc?;
    let row_ty = b.g.ty(label).clone();
    let vocab = s.x.shape[s.x.rank() - 1];
    let zero_i = b.constant(0.0, row_ty.clone())?;
    let vocab_i = b.constant(vocab as f64, row_ty.clone())?;
    let ge = b.bin(BinaryOp::Ge, label, zero_i)?;
    let lt = b.bin(BinaryOp::Lt, label, vocab_i)?;
    let valid = b.bin(BinaryOp::And, ge, lt)?;
    let index = b.add(Op::Select, &[valid, label, zero_i])?;
    let rows = &row_ty.shape[..row_ty.rank() - 1];
    let index = b.reshape(index, rows)?;
    let picked = b.add(Op::Gather { axis: 0 }, &[w, index])?;
    let hs = b.g.ty(acc).shape.to_vec();
    let zero_f = b.constant(0.0, row_ty.with_dtype(DType::F32))?;
    let coef = b.add(Op::Select, &[valid, tr, zero_f])?;
    let coef = b.broadcast(coef, &hs)?;
    let g_w = b.bin(BinaryOp::Mul, coef, picked)?;
    let sum = b.cast(c.sum, DType::F32)?;
    let k = b.bin(BinaryOp::Div, sx, sum)?;
    let k = b.broadcast(k, &hs)?;
    let p_w = b.bin(BinaryOp::Mul, k, acc)?;
    let mut d = if u.negate {
        b.bin(BinaryOp::Sub, p_w, g_w)?
    } else {
        b.bin(BinaryOp::Sub, g_w, p_w)?
    };
    if let Some((_, axis, d_first, zt)) = &u.pad {
        let z = b.constant(0.0, zt.clone())?;
        let args = if *d_first { [d, z] } else { [z, d] };
        d = b.add(Op::Concat { axis: *axis }, &args)?;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use graft_interp::Tensor;
    use std::collections::HashMap;
    use std::path::Path;

    /// The spec at `spec`: its program, `@forward` and training step.
    fn compile(spec: &Path) -> (graft_frontend::Program, Function, Function) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let stdlib = graft_frontend::Stdlib::Dir(repo.join("stdlib"));
        let (_, program) =
            graft_frontend::compile_file(spec, &stdlib).unwrap_or_else(|e| panic!("{e}"));
        let forward = program
            .module
            .function("forward")
            .unwrap_or_else(|| panic!("no forward"))
            .clone();
        let cfg = graft_runtime::step_config(&program);
        let step = graft_autodiff::train_step(&forward, &cfg).unwrap_or_else(|e| panic!("{e}"));
        (program, forward, step)
    }

    /// `dsl-examples/tiny_lora.graft`'s forward and training step, and the step's inputs:
    /// fixture weights, `@init`'s params, zero optimizer state, random tokens with a quarter
    /// of the labels ignored.
    fn tiny_lora() -> (Function, Function, HashMap<String, Tensor>) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let (program, forward, step) = compile(&repo.join("dsl-examples/tiny_lora.graft"));
        let weights =
            graft_runtime::WeightsFile::open(&repo.join("tests/fixtures/base.safetensors"))
                .unwrap_or_else(|e| panic!("{e}"));
        let mut values = HashMap::new();
        for t in program.tensors.iter().filter(|t| t.from_weights) {
            values.insert(
                t.path.clone(),
                weights.read(&t.path).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        values.insert("seed".to_string(), Tensor::scalar_i64(3));
        let init = program
            .module
            .function("init")
            .unwrap_or_else(|| panic!("no init"));
        for (name, t) in graft_interp::run(init, &values).unwrap_or_else(|e| panic!("{e}")) {
            values.insert(name, t);
        }
        for i in step
            .inputs()
            .filter(|i| i.kind == graft_ir::InputKind::State)
        {
            values.insert(i.name.to_string(), Tensor::zeros(i.ty.clone()));
        }
        let draw = |i: u64| graft_interp::splitmix64(0x2545_f491_4f6c_dd1d ^ i);
        let ids: Vec<i64> = (0..64).map(|i| (draw(i) % 256) as i64).collect();
        let labels = (0..64)
            .map(|i| {
                if draw(64 + i) % 4 == 0 {
                    -100
                } else {
                    ids[i as usize]
                }
            })
            .collect();
        let tensor = |v| Tensor::i64(vec![4, 16], v).unwrap_or_else(|e| panic!("{e}"));
        values.insert("input_ids".to_string(), tensor(ids));
        values.insert("labels".to_string(), tensor(labels));
        (forward, step, values)
    }

    /// The rewritten step against the original, both run by the interpreter, with 2, 3
    /// (unequal: 96, 96, 64 columns) and 16 chunks. Tolerance: every output within 1e-5
    /// relative to its largest element (the chunked `lse` and softmax sums round
    /// differently; the label's logit is exact).
    #[test]
    fn chunked_step_computes_what_the_original_does() {
        let (_, step, values) = tiny_lora();
        let want = graft_interp::run(&step, &values).unwrap_or_else(|e| panic!("{e}"));
        let logits_bytes = 4 * 15 * 256 * 4;
        for (chunk_bytes, chunks) in [(4 << 20, 2), (logits_bytes / 3, 3), (1, 16)] {
            let g = chunk_vocabulary(&step, MIN_ELEMS, chunk_bytes);
            graft_ir::verify_function(&g, usize::MAX).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !g.nodes
                    .iter()
                    .any(|n| matches!(n.op, Op::LogSoftmax { .. }))
            );
            let forward_chunks = g
                .nodes
                .iter()
                .filter(|n| matches!(n.op, Op::MatMul { tb: true, .. }) && n.ty.rank() == 3)
                .filter(|n| f_arg_is_slice(&g, n))
                .count();
            assert_eq!(forward_chunks, chunks, "chunk_bytes {chunk_bytes}");
            // Each update of the accumulator after the first chunk is a stored sum.
            let stored_sums = g
                .nodes
                .iter()
                .filter(|n| matches!(&n.op, Op::Reduce { axes, .. } if axes == &[0]))
                .filter(|n| matches!(g.node(n.args[0]).op, Op::Concat { axis: 0 }))
                .count();
            assert_eq!(stored_sums, chunks - 1, "chunk_bytes {chunk_bytes}");
            let got = graft_interp::run(&g, &values).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.len(), want.len());
            for ((name, a), (_, b)) in got.iter().zip(&want) {
                let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
                let err = a
                    .iter()
                    .zip(&b)
                    .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    err / scale <= 1e-5,
                    "{chunks} chunks: `{name}` differs by {:e} relative",
                    err / scale
                );
            }
        }
    }

    fn f_arg_is_slice(g: &Function, n: &Node) -> bool {
        n.args
            .get(1)
            .is_some_and(|&b| matches!(g.node(b).op, Op::Slice { axis: 0, .. }))
    }

    /// Logits that are also an output of the step are not chunked.
    #[test]
    fn logits_that_are_an_output_stay_whole() {
        let (_, mut step, _) = tiny_lora();
        assert_ne!(
            chunk_vocabulary(&step, MIN_ELEMS, 1).nodes.len(),
            step.nodes.len()
        );
        let logits = step
            .nodes
            .iter()
            .position(|n| matches!(n.op, Op::MatMul { .. }) && n.ty.shape.last() == Some(&256))
            .unwrap_or_else(|| panic!("no logits"));
        step.add_output("logits", ValueId(logits as u32));
        let g = chunk_vocabulary(&step, MIN_ELEMS, 1);
        assert_eq!(g.nodes.len(), step.nodes.len());
        assert!(g.nodes.iter().zip(&step.nodes).all(|(a, b)| a.op == b.op));
    }

    /// The training step of the spec at `spec`, optimized by graft-opt.
    fn optimized_step(spec: &Path) -> Function {
        let (_, _, step) = compile(spec);
        graft_opt::optimize(&step, &graft_opt::Options::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .func
    }

    fn log_softmaxes(f: &Function) -> usize {
        f.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::LogSoftmax { .. }))
            .count()
    }

    /// Every parity spec's optimized training step (the graphs the sessions tests check
    /// against the interpreter and PyTorch, for LoRA, QLoRA, DoRA, IA³, prompt tuning and
    /// full fine-tuning of one projection) is chunked; a trained LM head is not (its weight
    /// gradient reads the logits' gradient whole).
    #[test]
    fn parity_specs_are_chunked_unless_the_lm_head_is_trained() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for name in [
            "lora_qv",
            "lora_all",
            "qlora",
            "dora",
            "ia3",
            "prompt_tuning",
            "full_ft",
        ] {
            let step = optimized_step(&repo.join(format!("tests/parity/{name}.graft")));
            assert_eq!(log_softmaxes(&step), 1, "{name}");
            let g = chunk_vocabulary(&step, MIN_ELEMS, 1);
            assert_eq!(log_softmaxes(&g), 0, "{name}");
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spec = dir.path().join("lm_head_ft.graft");
        let weights = repo.join("tests/fixtures/base.safetensors");
        let text = format!(
            "use models.llama\nuse peft.full_ft\n\
             model base = llama(vocab: 256, hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 128)\n\
             \x20   weights \"{}\"\n\
             adapt base {{\n    full_ft() at [\"lm_head\"]\n}}\n\
             train {{\n    optimizer adamw(lr: 1e-2)\n    batch 2  seq 8  steps 3\n}}\n",
            weights.display()
        );
        std::fs::write(&spec, text).unwrap_or_else(|e| panic!("{e}"));
        let step = optimized_step(&spec);
        assert_eq!(log_softmaxes(&step), 1);
        let g = chunk_vocabulary(&step, MIN_ELEMS, 1);
        assert_eq!(
            g.nodes.len(),
            step.nodes.len(),
            "a trained LM head was chunked"
        );
    }
}
