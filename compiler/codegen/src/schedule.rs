//! The scheduler: partitions a function into kernels and assigns every materialized value a
//! storage slot.
//!
//! Rules, decided from the outputs backwards (a node's consumers are decided before it):
//! - **Materialized** (a buffer): inputs, outputs, operands of scalar matmuls, of host ops
//!   and of `reshape`/`stop_grad` views, B of a GEMM (unless a `concat` or `slice`), A of a
//!   GEMM that does not pack A, and every non-elementwise node (matmul, reductions, softmax,
//!   quantize).
//! - **Inlined** (recomputed inside each consumer's loop, or in a GEMM's pack kernel, never
//!   stored): elementwise ops, casts, random draws, dropout and dequantization, when the
//!   consumers together read each element at most once (a unary op: at most four times);
//!   layout ops that only remap indices (`broadcast`, `transpose`, `slice`, `concat`,
//!   `gather`, `reshape`, `stop_grad`), `select`, and `constant`/`iota` always, since they
//!   cost a load or a choice. A producer read more often (several consumers, an expanding
//!   broadcast, softmax's passes) is materialized instead.
//! - **Kernels**: each materialized elementwise node is the root of one fused loop nest over
//!   its shape; reductions and softmax are kernels whose operand expression is fused in; an
//!   `f32` matmul is pack kernels plus a tiled GEMM (chunked when its packed operands would
//!   be large; an `add` of it may be its epilogue); other matmuls a scalar loop; `quantize`
//!   runs on the host through the interpreter. A materialized `reshape`/`stop_grad` is a view
//!   of its operand's slot (no copy).

use crate::CodegenError;
use crate::gemm::GemmShape;
use crate::host::CpuTarget;
use crate::kernels::{fused_range, reduce_rows, scalar_matmul};
use graft_ir::{BinaryOp, DType, Function, InputKind, Op, OpClass, TensorType, ValueId};

/// What one step of a compiled function does.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum StepKind {
    /// A fused elementwise loop nest computing `root`.
    Fused,
    /// A reduction.
    Reduce,
    /// `softmax` or `log_softmax`.
    Softmax,
    /// A scalar `f64`-accumulating matmul (non-`f32` dtypes).
    MatMulScalar(GemmShape),
    /// Packing A of an `f32` matmul into row tiles (into a scratch slot).
    PackA(GemmShape),
    /// Packing B of an `f32` matmul into panels (into a scratch slot).
    Pack(GemmShape),
    /// Packing B, a frozen weight (or rows of one), from the panels a bound pack made of a
    /// frozen value holding it (see [`Bound`]) instead of from the weight itself.
    PackBound(GemmShape, Bound),
    /// The tiled vector GEMM reading the packed panels.
    Gemm(GemmShape),
    /// A node evaluated on the host by the reference interpreter.
    Host,
}

/// Where a [`StepKind::PackBound`] finds its B: the bound panels of a frozen value `V`
/// (`[rows, k_v]`, packed as B of `x · Vᵀ`: `NR` rows of V per panel, `k_v` long) whose rows
/// from `row_off` on are B's rows (B is row-major, `[k, n]`, with `n = k_v`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bound {
    /// The slot of V's bound panels.
    pub slot: usize,
    /// The row of V that is B's row 0.
    pub row_off: usize,
    /// V's row length (the contraction of the GEMM that packed it).
    pub k_v: usize,
    /// Elements of V's bound panels.
    pub len: usize,
}

/// One kernel launch: what the executor runs ([`graft_exec::Step`], through `Deref`) and,
/// for the lowering, what kind of kernel it is with its GEMM shape.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    /// What it does.
    pub kind: StepKind,
    /// The launch as the executor sees it (its `kind` follows [`Step::kind`]).
    pub run: graft_exec::Step,
}

impl Step {
    /// A launch of a `kind` kernel computing `root` into slot `out` over `range` items of
    /// `cost` each (at least 1); symbol and arguments are filled in by lowering.
    fn new(kind: StepKind, root: ValueId, out: usize, range: usize, cost: usize) -> Step {
        Step {
            run: graft_exec::Step {
                kind: exec_kind(&kind),
                root,
                symbol: String::new(),
                args: Vec::new(),
                out,
                range,
                cost: cost.max(1),
                may_fail: false,
                bind: false,
            },
            kind,
        }
    }
}

impl std::ops::Deref for Step {
    type Target = graft_exec::Step;
    fn deref(&self) -> &graft_exec::Step {
        &self.run
    }
}

impl std::ops::DerefMut for Step {
    fn deref_mut(&mut self) -> &mut graft_exec::Step {
        &mut self.run
    }
}

/// The executor's kind of a step.
fn exec_kind(k: &StepKind) -> graft_exec::Kind {
    use graft_exec::Kind;
    match k {
        StepKind::Fused => Kind::Fused,
        StepKind::Reduce => Kind::Reduce,
        StepKind::Softmax => Kind::Softmax,
        StepKind::MatMulScalar(_) => Kind::MatMulScalar,
        StepKind::PackA(_) => Kind::PackA,
        StepKind::Pack(_) | StepKind::PackBound(..) => Kind::Pack,
        StepKind::Gemm(_) => Kind::Gemm,
        StepKind::Host => Kind::Host,
    }
}

pub(crate) use graft_exec::Slot;

/// A scheduled function.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// `inline[v]`: node `v` is computed inside its consumers.
    pub inline: Vec<bool>,
    /// The slot of each materialized (or viewed) value.
    pub slot_of: Vec<Option<usize>>,
    /// The buffers.
    pub slots: Vec<Slot>,
    /// The kernels, in execution order.
    pub steps: Vec<Step>,
    /// Inputs: name, type, slot.
    pub inputs: Vec<(String, TensorType, usize)>,
    /// Outputs: name, type, slot.
    pub outputs: Vec<(String, TensorType, usize)>,
    /// Inputs only binding steps read (filled in by lowering): runs after binding do not
    /// need them.
    pub bind_only: Vec<String>,
}

impl Plan {
    /// The plan the executor runs (after lowering: every step's arguments known).
    pub(crate) fn to_exec(&self) -> graft_exec::ExecPlan {
        let steps = self
            .steps
            .iter()
            .map(|s| graft_exec::Step {
                kind: exec_kind(&s.kind),
                ..s.run.clone()
            })
            .collect();
        graft_exec::ExecPlan {
            slot_of: self.slot_of.clone(),
            slots: self.slots.clone(),
            steps,
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            bind_only: self.bind_only.clone(),
        }
    }

    /// After lowering (when every step's argument slots are known): a binding step that
    /// reads anything but function inputs runs in every run instead (it would read a value
    /// binding does not compute), and the inputs only binding steps read are listed.
    pub(crate) fn settle_binding(&mut self) {
        let n = self.slots.len();
        for st in &mut self.steps {
            if st.bind && st.args.iter().any(|&a| self.slots[a].input.is_none()) {
                st.bind = false;
                self.slots[st.out].bound = false;
            }
        }
        let mut run_reads = vec![false; n];
        let mut bind_reads = vec![false; n];
        for st in &self.steps {
            for &a in &st.args {
                if st.bind {
                    bind_reads[a] = true;
                } else {
                    run_reads[a] = true;
                }
            }
        }
        for (_, _, s) in &self.outputs {
            run_reads[*s] = true;
        }
        self.bind_only = self
            .inputs
            .iter()
            .filter(|(_, _, s)| bind_reads[*s] && !run_reads[*s])
            .map(|(name, _, _)| name.clone())
            .collect();
    }
}

/// True for ops that can be computed inside a consumer's loop (their class fuses).
pub(crate) fn fusable(op: &Op) -> bool {
    op.class().fuses()
}

/// True for ops cheap enough to recompute in every consumer: a constant, an index remap, or
/// a `select` (a compare and a choice; storing a large masked value, as the loss's, costs
/// more than choosing again in each pass of its consumer).
fn cheap(op: &Op) -> bool {
    op.class().is_layout() || matches!(op, Op::Constant { .. } | Op::Iota { .. } | Op::Select)
}

/// Whether `node` costs one operand load and one operation per element: a unary op, a cast,
/// or a binary op or comparison at most one of whose operands is not a broadcast, an `iota`
/// or a constant.
fn unary_like(f: &Function, node: &graft_ir::Node) -> bool {
    let free = |a: &ValueId| {
        matches!(
            f.node(*a).op,
            Op::Broadcast | Op::Iota { .. } | Op::Constant { .. }
        )
    };
    match node.op {
        Op::Unary(_) | Op::Cast => true,
        Op::Binary(_) => node.args.iter().filter(|a| !free(a)).count() <= 1,
        _ => false,
    }
}

/// The buffer a matmul operand is read from and its transpose flag: a `transpose` that only
/// swaps the last two axes is folded into the flag (the GEMM reads its operand directly).
fn matmul_source(f: &Function, mut v: ValueId, mut flag: bool) -> (ValueId, bool) {
    while let Op::Transpose { perm } = &f.node(v).op {
        let r = perm.len();
        let swap_last = r >= 2
            && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
            && perm[r - 2] == r - 1
            && perm[r - 1] == r - 2;
        match f.node(v).args.first() {
            Some(&x) if swap_last => {
                v = x;
                flag = !flag;
            }
            _ => break,
        }
    }
    (v, flag)
}

/// The GEMM view of `matmul` or `qmatmul` node `v`, with transposed operands folded (a
/// `qmatmul`'s B is its codes' shape, dequantized while packing).
fn gemm_shape(f: &Function, v: ValueId) -> Option<GemmShape> {
    let node = f.node(v);
    let (ta, tb, quant) = match node.op {
        Op::MatMul { ta, tb } => (ta, tb, None),
        Op::QuantMatMul {
            block,
            nested,
            ta,
            tb,
            ..
        } => (ta, tb, Some((block, nested))),
        _ => return None,
    };
    let (a, ta) = matmul_source(f, *node.args.first()?, ta);
    let (b, tb) = match quant {
        None => matmul_source(f, *node.args.get(1)?, tb),
        Some(_) => (*node.args.get(1)?, tb),
    };
    let ty = &node.ty;
    let batches = ty.shape[..ty.rank().saturating_sub(2)].iter().product();
    let mut s = GemmShape::new((a, &f.ty(a).shape), (b, &f.ty(b).shape), batches, ta, tb);
    s.quant = quant;
    Some(s)
}

/// Which values are functions of frozen weights alone, every one of which only reaches
/// matmuls as their B: `weight` inputs read by nothing else, and layout ops (`concat`,
/// `slice`, `transpose`, `reshape`, `stop_grad`) of such values. Binding a packed copy of
/// a weight that something else also reads (a gather of the language-model head's rows
/// for the loss) would hold it twice.
fn frozen_values(f: &Function, live: &[bool], is_output: &[bool]) -> Vec<bool> {
    let n = f.nodes.len();
    let users = f.users();
    // The layout ops a pack reads through: views, and remaps that neither repeat nor pick
    // elements (broadcast, gather) .
    let layout = |op: &Op| {
        op.class() == OpClass::View
            || matches!(
                op,
                Op::Concat { .. } | Op::Slice { .. } | Op::Transpose { .. }
            )
    };
    // `b_only[v]`: every live reader of v is a matmul reading it as B, or a layout op whose
    // value is itself b_only (readers come after v: decided from the end).
    let mut b_only = vec![false; n];
    for v in (0..n).rev() {
        b_only[v] = !is_output[v]
            && users[v].iter().filter(|&&u| live[u]).all(|&u| {
                let node = &f.nodes[u];
                match node.op {
                    Op::MatMul { .. } => {
                        node.args.get(1) == Some(&ValueId(v as u32))
                            && node.args.first() != Some(&ValueId(v as u32))
                    }
                    ref op => layout(op) && b_only[u],
                }
            });
    }
    let mut frozen = vec![false; n];
    for (v, node) in f.nodes.iter().enumerate() {
        frozen[v] = match &node.op {
            Op::Input { kind, .. } => *kind == InputKind::Weight && b_only[v],
            op if layout(op) => {
                !node.args.is_empty() && node.args.iter().all(|a| frozen[a.index()])
            }
            _ => false,
        };
    }
    frozen
}

/// Whether computing `v` where it is read reads nothing but function inputs: `v` is stored
/// in an input's slot (an input, or a view of one), or is inlined from such values.
fn reads_only_inputs(f: &Function, plan: &Plan, v: ValueId) -> bool {
    match plan.slot_of[v.index()] {
        Some(slot) => plan.slots[slot].input.is_some(),
        None => {
            plan.inline[v.index()]
                && f.node(v)
                    .args
                    .iter()
                    .all(|&a| reads_only_inputs(f, plan, a))
        }
    }
}

/// The weight input whose rows `v` is, and the first of them: `v` itself when it is an
/// input, or rows `start..` of one (a `slice` along axis 0, nested or not).
fn weight_rows(f: &Function, mut v: ValueId) -> Option<(ValueId, usize)> {
    let mut start = 0;
    loop {
        let node = f.node(v);
        match &node.op {
            Op::Input { .. } if node.ty.rank() == 2 => return Some((v, start)),
            Op::Slice {
                axis: 0, start: s, ..
            } if node.ty.rank() == 2 => {
                start += s;
                v = *node.args.first()?;
            }
            _ => return None,
        }
    }
}

/// The weights whose rows a frozen value `v` is made of, row-wise: `(weight, first row of
/// the weight, rows, first row in v)`, through `concat`s along axis 0 and row slices.
fn row_pieces(f: &Function, v: ValueId, at: usize, out: &mut Vec<(ValueId, usize, usize, usize)>) {
    let node = f.node(v);
    match &node.op {
        Op::Concat { axis: 0 } if node.ty.rank() == 2 => {
            let mut row = at;
            for &a in &node.args {
                row_pieces(f, a, row, out);
                row += f.ty(a).shape[0];
            }
        }
        _ => {
            if let Some((w, start)) = weight_rows(f, v) {
                out.push((w, start, node.ty.shape[0], at));
            }
        }
    }
}

/// The other orientation of a bound weight: a GEMM reading a frozen weight `W` (or rows of
/// it) as a row-major B (`dy · W`, a backward's input gradient) packs it from the bound
/// panels of the value that holds those rows (the forward's `x · Wᵀ`, or its batched concat),
/// so the weight itself is only read when binding and no second copy is kept.
fn bind_backward_packs(f: &Function, plan: &mut Plan, target: &CpuTarget, frozen: &[bool]) {
    // Rows of weights held by bound panels: (weight, first row, rows, bound source).
    let mut held: Vec<(ValueId, usize, usize, Bound)> = Vec::new();
    for st in plan.steps.iter().filter(|st| st.bind) {
        if let StepKind::Pack(c) = &st.kind {
            let mut pieces = Vec::new();
            row_pieces(f, c.b_src, 0, &mut pieces);
            for (w, start, rows, at) in pieces {
                let src = Bound {
                    slot: st.out,
                    row_off: at,
                    k_v: c.k,
                    len: c.packed_len(target),
                };
                held.push((w, start, rows, src));
            }
        }
    }
    for st in plan.steps.iter_mut().filter(|st| !st.bind) {
        let StepKind::Pack(c) = &st.kind else {
            continue;
        };
        if c.tb || c.quant.is_some() || c.b[0] != 1 {
            continue;
        }
        let Some((w, start)) = weight_rows(f, c.b_src) else {
            continue;
        };
        if !frozen[w.index()] {
            continue;
        }
        let found = held.iter().find(|(hw, hs, rows, src)| {
            *hw == w && *hs <= start && start + c.k <= hs + rows && src.k_v == c.n
        });
        if let Some((_, hs, _, src)) = found {
            let bound = Bound {
                row_off: src.row_off + (start - hs),
                ..*src
            };
            st.kind = StepKind::PackBound(*c, bound);
        }
    }
}

/// An addend a GEMM epilogue reads: the value whose buffer it reads, and that buffer's row
/// stride and first column (see [`GemmShape::addend_view`]).
type Addend = (ValueId, (usize, usize));

/// GEMM epilogues: an `f32` `add` of a matmul's result and another materialized value of
/// the same type, or a slice of one's last axis (one projection's columns of a batched q/k/v
/// product, to which a LoRA path adds its low-rank update), when the add is stored anyway
/// (not fused into a consumer) and the matmul has no other reader, becomes that matmul's GEMM
/// starting from the other value (saving the product's buffer and the add's pass over both).
/// Of two matmul operands, the later one is folded. Returns, per node, the add's
/// `(matmul, Some(addend))`, and which matmuls fold.
#[allow(clippy::type_complexity)]
fn gemm_epilogues(
    f: &Function,
    live: &[bool],
    is_output: &[bool],
    inline: &[bool],
) -> (Vec<Option<(ValueId, Option<Addend>)>>, Vec<bool>) {
    let n = f.nodes.len();
    let mut uses = vec![0usize; n];
    for v in (0..n).filter(|&v| live[v]) {
        for a in &f.nodes[v].args {
            uses[a.index()] += 1;
        }
    }
    let gemm = |m: ValueId| {
        matches!(f.node(m).op, Op::MatMul { .. } | Op::QuantMatMul { .. })
            && gemm_shape(f, m).is_some_and(|s| !scalar_matmul(f.ty(m).dtype, &s))
            && uses[m.index()] == 1
            && !is_output[m.index()]
    };
    let mut epilogue = vec![None; n];
    let mut folded = vec![false; n];
    // The buffer an addend `o` is read from: its own, or, for inlined slices of the last
    // axis of a stored value (a slice of a slice, as the optimizer's batching makes), that
    // value's.
    let view = |o: ValueId, folded: &[bool]| -> Option<Addend> {
        let stored = |v: ValueId| !inline[v.index()] && !folded[v.index()];
        let ty = f.ty(o);
        let last = ty.rank().checked_sub(1)?;
        let (mut v, mut col0) = (o, 0);
        while !stored(v) {
            let node = f.node(v);
            let (Op::Slice { axis, start, .. }, [src]) = (&node.op, node.args.as_slice()) else {
                return None;
            };
            let st = f.ty(*src);
            if *axis != last || st.dtype != ty.dtype || st.shape[..last] != ty.shape[..last] {
                return None;
            }
            (v, col0) = (*src, col0 + start);
        }
        Some((v, (f.ty(v).shape[last], col0)))
    };
    for v in 0..n {
        let node = &f.nodes[v];
        let (true, false, Op::Binary(BinaryOp::Add), [a, b]) =
            (live[v], inline[v], &node.op, node.args.as_slice())
        else {
            continue;
        };
        if node.ty.dtype != DType::F32 || f.ty(*a) != &node.ty || f.ty(*b) != &node.ty {
            continue;
        }
        let (later, earlier) = if a.index() > b.index() {
            (*a, *b)
        } else {
            (*b, *a)
        };
        for (m, o) in [(later, earlier), (earlier, later)] {
            if m == o || !gemm(m) {
                continue;
            }
            if let Some(d) = view(o, &folded) {
                epilogue[v] = Some((m, Some(d)));
                folded[m.index()] = true;
                break;
            }
        }
    }
    (epilogue, folded)
}

/// Schedules a verified function for `target`.
pub(crate) fn plan(f: &Function, target: &CpuTarget) -> Result<Plan, CodegenError> {
    let n = f.nodes.len();
    let numel = |v: usize| f.nodes[v].ty.numel();
    let live = f.live();
    let mut is_output = vec![false; n];
    for o in &f.outputs {
        if let Some(x) = is_output.get_mut(o.value.index()) {
            *x = true;
        }
    }
    let mut inline = vec![false; n];
    let mut must = vec![false; n];
    let mut reads = vec![0usize; n];
    for v in (0..n).rev() {
        if !live[v] {
            continue;
        }
        let node = &f.nodes[v];
        // A unary op (or a cast, or a binary op whose other operand is a broadcast, an
        // iota or a constant: one load and one operation per element all the same) is
        // recomputed by up to four readers rather than stored: its operand is usually kept
        // anyway (a SwiGLU gate is needed for silu's derivative; the logits for the loss's
        // gradient), so this saves a buffer that would live from the forward to the
        // backward.
        let recompute = if unary_like(f, node) { 4 } else { 1 };
        inline[v] = fusable(&node.op)
            && !is_output[v]
            && !must[v]
            && (cheap(&node.op) || reads[v] <= numel(v).saturating_mul(recompute));
        let evals = if inline[v] { reads[v] } else { numel(v) };
        let mut add = |a: ValueId, r: usize| {
            if let Some(x) = reads.get_mut(a.index()) {
                *x = x.saturating_add(r);
            }
        };
        match &node.op {
            Op::Reduce { .. } => node.args.iter().for_each(|&a| add(a, numel(a.index()))),
            Op::Softmax { .. } | Op::LogSoftmax { .. } => node
                .args
                .iter()
                .for_each(|&a| add(a, numel(a.index()).saturating_mul(3))),
            Op::Concat { .. } => {
                for &a in &node.args {
                    let share = evals
                        .saturating_mul(numel(a.index()))
                        .checked_div(numel(v))
                        .unwrap_or(0);
                    add(a, share);
                }
            }
            Op::Reshape | Op::StopGrad if !inline[v] => {
                node.args.iter().for_each(|&a| must[a.index()] = true)
            }
            Op::MatMul { .. } | Op::QuantMatMul { .. } => {
                if let Some(s) = gemm_shape(f, ValueId(v as u32)) {
                    // The A pack evaluates A like an elementwise consumer: a fusable producer
                    // is computed while packing when that is cheap enough (read once, or a
                    // layout op), else it is stored.
                    if scalar_matmul(node.ty.dtype, &s) || !s.packs_a(target) {
                        must[s.a_src.index()] = true;
                    } else {
                        add(s.a_src, numel(s.a_src.index()));
                    }
                    // A concat as B (batched weights) or a slice (a chunk of a weight's
                    // rows) is read by the pack kernel in place of being stored: it fuses
                    // like an elementwise consumer's operand.
                    let fused = matches!(f.node(s.b_src).op, Op::Concat { .. } | Op::Slice { .. });
                    if fused && s.quant.is_none() && !scalar_matmul(node.ty.dtype, &s) {
                        add(s.b_src, numel(s.b_src.index()));
                    } else {
                        must[s.b_src.index()] = true;
                    }
                }
                if matches!(node.op, Op::QuantMatMul { .. }) {
                    node.args.iter().for_each(|&a| must[a.index()] = true);
                }
            }
            op if fusable(op) => node.args.iter().for_each(|&a| add(a, evals)),
            _ => node.args.iter().for_each(|&a| must[a.index()] = true),
        }
    }

    let (epilogue, folded) = gemm_epilogues(f, &live, &is_output, &inline);
    let frozen = frozen_values(f, &live, &is_output);
    let mut plan = Plan {
        inline,
        slot_of: vec![None; n],
        slots: Vec::new(),
        steps: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        bind_only: Vec::new(),
    };
    #[allow(clippy::needless_range_loop)] // `v` indexes several per-node tables
    for v in 0..n {
        if !live[v] || plan.inline[v] {
            continue;
        }
        let node = &f.nodes[v];
        let id = ValueId(v as u32);
        let ty = &node.ty;
        let slot_for = |p: &Plan, a: Option<&ValueId>| -> Result<usize, CodegenError> {
            a.and_then(|a| p.slot_of.get(a.index()).copied().flatten())
                .ok_or_else(|| CodegenError::Internal(format!("%{v}: operand has no buffer")))
        };
        let new_slot = |p: &mut Plan, dtype: DType, len: usize| -> usize {
            p.slots.push(Slot {
                dtype,
                len,
                input: None,
                bound: false,
            });
            p.slots.len() - 1
        };
        let step = |kind: StepKind, out: usize, range: usize, cost: usize| {
            Step::new(kind, id, out, range, cost)
        };
        match &node.op {
            Op::Input { name, .. } => {
                let s = new_slot(&mut plan, ty.dtype, ty.numel());
                plan.slots[s].input = Some(name.clone());
                plan.slot_of[v] = Some(s);
                plan.inputs.push((name.clone(), ty.clone(), s));
            }
            Op::Reshape | Op::StopGrad => {
                plan.slot_of[v] = Some(slot_for(&plan, node.args.first())?);
            }
            // Computed by the GEMM of the `add` it feeds, at that add.
            Op::MatMul { .. } | Op::QuantMatMul { .. } if folded[v] => {}
            _ if epilogue[v].is_some()
                || matches!(node.op, Op::MatMul { .. } | Op::QuantMatMul { .. }) =>
            {
                let (mm, addend) = epilogue[v].unwrap_or((id, None));
                let mut s = gemm_shape(f, mm)
                    .ok_or_else(|| CodegenError::Internal(format!("%{v}: matmul operands")))?;
                if let Some((d, view)) = addend {
                    s.addend = Some(d);
                    s.addend_view = view;
                }
                s.fused_b = plan.inline[s.b_src.index()];
                let out = new_slot(&mut plan, ty.dtype, ty.numel());
                plan.slot_of[v] = Some(out);
                let step = |kind: StepKind, out: usize, range: usize, cost: usize| {
                    Step::new(kind, mm, out, range, cost)
                };
                if scalar_matmul(ty.dtype, &s) {
                    let st = step(StepKind::MatMulScalar(s), out, s.batches * s.m, s.n * s.k);
                    plan.steps.push(st);
                } else {
                    // A GEMM whose packed operands would be large runs as chunks (of B's
                    // panels or of K), each packing only its part: the arena then holds one
                    // chunk's packed operands at a time. A frozen B read as `x · Wᵀ` is
                    // packed once, when the weights are bound, into panels kept outside the
                    // arena (see `bind_backward_packs` for the other orientation): its GEMM
                    // is not chunked.
                    let bind = target.bind_weights
                        && s.quant.is_none()
                        && s.tb
                        && s.b[0] == 1
                        && frozen[s.b_src.index()]
                        && reads_only_inputs(f, &plan, s.b_src);
                    let chunks = if bind {
                        vec![s]
                    } else {
                        s.chunks(target, target.pack_budget)
                    };
                    for mut c in chunks {
                        c.split_n = c.splits_n(target);
                        let (p0, p1) = c.panel_span(target);
                        if c.packs_a(target) {
                            let packed_a = new_slot(&mut plan, DType::F32, c.packed_a_len(target));
                            plan.steps.push(step(
                                StepKind::PackA(c),
                                packed_a,
                                c.a[0] * c.tiles(target),
                                c.k_len() * target.mr,
                            ));
                        }
                        // A weight packed the same way by an earlier GEMM (a shared layer)
                        // is bound once: this pack writes the same slot, and binding runs
                        // only the first.
                        let shared = bind
                            .then(|| {
                                plan.steps.iter().find(|st| {
                                    st.bind
                                        && matches!(&st.kind, StepKind::Pack(o)
                                            if o.b_src == c.b_src && o.tb == c.tb
                                                && o.k_range == c.k_range && o.n == c.n)
                                })
                            })
                            .flatten()
                            .map(|st| st.out);
                        let packed = match shared {
                            Some(slot) => slot,
                            None => new_slot(&mut plan, DType::F32, c.packed_len(target)),
                        };
                        plan.slots[packed].bound = bind;
                        let mut pack = step(
                            StepKind::Pack(c),
                            packed,
                            c.b[0] * (p1 - p0),
                            c.k_len() * target.nr,
                        );
                        pack.bind = bind;
                        plan.steps.push(pack);
                        let flops = 2 * c.batches * c.m * (p1 - p0) * target.nr * c.k_len();
                        plan.steps.push(step(
                            StepKind::Gemm(c),
                            out,
                            c.range(target),
                            flops / c.range(target).max(1),
                        ));
                    }
                }
            }
            op => {
                let out = new_slot(&mut plan, ty.dtype, ty.numel());
                plan.slot_of[v] = Some(out);
                let x = node.args.first().map(|a| f.ty(*a));
                let st = match op {
                    Op::Reduce { axes, .. } => {
                        let count = x.map_or(1, |t| t.numel()) / ty.numel().max(1);
                        match x.and_then(|x| reduce_rows(&x.shape, axes)) {
                            Some(cols) => step(
                                StepKind::Reduce,
                                out,
                                ty.numel().checked_div(cols).unwrap_or(0),
                                count * cols,
                            ),
                            None => step(StepKind::Reduce, out, ty.numel(), count),
                        }
                    }
                    Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                        let ext = ty.shape.get(*axis).copied().unwrap_or(1);
                        let slices = ty.numel().checked_div(ext).unwrap_or(0);
                        step(StepKind::Softmax, out, slices, 3 * ext)
                    }
                    // Run by the interpreter: sequential, or not worth a kernel.
                    Op::Quantize { .. } | Op::Factor(_) | Op::Solve | Op::Sort { .. } => {
                        step(StepKind::Host, out, 1, 1)
                    }
                    op if fusable(op) => {
                        let cols = ty.shape.last().copied().unwrap_or(1);
                        step(StepKind::Fused, out, fused_range(&ty.shape), cols)
                    }
                    other => {
                        return Err(CodegenError::Unsupported {
                            node: v,
                            op: other.name().to_string(),
                            message: "no kernel for this op".into(),
                        });
                    }
                };
                plan.steps.push(st);
            }
        }
    }
    if target.bind_weights {
        bind_backward_packs(f, &mut plan, target, &frozen);
    }
    for o in &f.outputs {
        let s = plan
            .slot_of
            .get(o.value.index())
            .copied()
            .flatten()
            .ok_or_else(|| CodegenError::Internal(format!("output `{}` has no buffer", o.name)))?;
        plan.outputs
            .push((o.name.clone(), f.ty(o.value).clone(), s));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use graft_ir::{InputKind, UnaryOp};

    fn f32t(shape: &[usize]) -> TensorType {
        TensorType::new(DType::F32, shape.to_vec())
    }

    #[test]
    fn elementwise_chains_fuse_into_one_kernel() -> Result<(), Box<dyn std::error::Error>> {
        let mut f = Function::new("t");
        let x = f.add_input("x", InputKind::Data, f32t(&[4, 8]), None);
        let w = f.add_input("w", InputKind::Data, f32t(&[8]), None);
        let wb = f.add_typed(Op::Broadcast, &[w], Some(f32t(&[4, 8])), None)?;
        let m = f.add(Op::Binary(BinaryOp::Mul), &[x, wb], None)?;
        let e = f.add(Op::Unary(UnaryOp::Exp), &[m], None)?;
        let s = f.add(Op::Unary(UnaryOp::Silu), &[e], None)?;
        f.add_output("y", s);
        let p = plan(&f, &CpuTarget::host())?;
        assert_eq!(p.steps.len(), 1, "{:?}", p.steps);
        assert_eq!(p.steps[0].kind, StepKind::Fused);
        assert!(p.inline[m.index()] && p.inline[e.index()] && p.inline[wb.index()]);
        Ok(())
    }

    #[test]
    fn shared_and_expanded_producers_are_materialized() -> Result<(), Box<dyn std::error::Error>> {
        // exp under a 5× broadcast and a product read twice are stored; tanh read twice is
        // recomputed by both readers (a unary op may be, up to four times).
        let mut f = Function::new("t");
        let x = f.add_input("x", InputKind::Data, f32t(&[8]), None);
        let e = f.add(Op::Unary(UnaryOp::Exp), &[x], None)?;
        let eb = f.add_typed(Op::Broadcast, &[e], Some(f32t(&[5, 8])), None)?;
        let m = f.add(Op::Binary(BinaryOp::Mul), &[x, x], None)?;
        let u = f.add(Op::Binary(BinaryOp::Add), &[m, m], None)?;
        let t = f.add(Op::Unary(UnaryOp::Tanh), &[x], None)?;
        let v = f.add(Op::Binary(BinaryOp::Add), &[t, t], None)?;
        f.add_output("a", eb);
        f.add_output("b", u);
        f.add_output("c", v);
        let p = plan(&f, &CpuTarget::host())?;
        assert!(
            !p.inline[e.index()],
            "exp under a 5x expanding broadcast is stored"
        );
        assert!(!p.inline[m.index()], "a product read twice is stored");
        assert!(p.inline[t.index()], "tanh read twice is recomputed");
        assert_eq!(p.steps.len(), 5, "{:?}", p.steps);
        Ok(())
    }

    #[test]
    fn matmuls_pack_then_gemm_and_reshapes_are_views() -> Result<(), Box<dyn std::error::Error>> {
        // Five columns: one panel of B, A read in place; 3·NR + 1: four panels, A packed.
        let target = CpuTarget::host();
        for (n, packs_a) in [(5, false), (3 * target.nr + 1, true)] {
            let mut f = Function::new("t");
            let a = f.add_input("a", InputKind::Data, f32t(&[2, 3, 4]), None);
            let b = f.add_input("b", InputKind::Data, f32t(&[4, n]), None);
            let c = f.add(
                Op::MatMul {
                    ta: false,
                    tb: false,
                },
                &[a, b],
                None,
            )?;
            let r = f.add_typed(Op::Reshape, &[c], Some(f32t(&[6, n])), None)?;
            f.add_output("r", r);
            let p = plan(&f, &target)?;
            let kinds: Vec<_> = p.steps.iter().map(|s| &s.kind).collect();
            if packs_a {
                assert!(matches!(
                    kinds.as_slice(),
                    [StepKind::PackA(_), StepKind::Pack(_), StepKind::Gemm(_)]
                ));
            } else {
                assert!(matches!(
                    kinds.as_slice(),
                    [StepKind::Pack(_), StepKind::Gemm(_)]
                ));
            }
            assert_eq!(p.slot_of[r.index()], p.slot_of[c.index()]);
        }
        Ok(())
    }
}
