//! One-position decoding with a cache (a KV cache, when the model is a transformer), derived
//! from a causal forward with no knowledge of the model.
//!
//! Input: the forward `f` (logits for one sequence of `L` tokens, dropout off) and the same
//! forward elaborated for another length `L'`, `g`. An axis whose extent differs between the
//! two is a *sequence axis*. Decoding position `t` needs every value only where it serves
//! position `t`:
//! - along a sequence axis a value is needed in one of two *roles*: **row** (only row `t`:
//!   the query position, extent 1) or **full** (all `L` rows: keys, values, anything a
//!   contraction, reduction or softmax runs across positions);
//! - roles flow from the output (`logits`, row) to the operands, op by op;
//! - a value that depends on the tokens and is needed full is **cached**: an input
//!   `cache.<k>` holding its rows so far, into which row `t` (computed in row role) is
//!   written by a `select` on the position; the updated cache is an output;
//! - layout ops (reshape, transpose, broadcast) needed full are applied to their operand's
//!   full value instead, so a cache sits before them (the keys before their heads are
//!   repeated for grouped-query attention);
//! - a constant with a sequence axis (rotary angles, the causal mask) is computed at row `t`
//!   only: an iota along that axis is the position itself; where that cannot be followed
//!   (an input, random values), it is computed whole and its row picked by a select and a
//!   sum.
//!
//! Rows after `t` of a cache hold zeros; the model's own causal mask keeps them out. The
//! derivation is exact only for a causal model (earlier rows never change when a token is
//! appended); callers check the first decoded logits against the full forward.
//!
//! The decode function's inputs: the forward's (weights, params), `input_ids` `[1, 1]`,
//! `position` (`f32[]`, t) and the caches; its outputs: `logits` (`[.., 1, vocab]`) and the
//! caches under their input names.

use crate::{BinaryOp, DType, Function, InputKind, Op, ReduceOp, TensorType, ValueId};
use std::collections::HashMap;

/// A derived decode function.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// `@decode`.
    pub function: Function,
    /// Cache inputs (and outputs), with their types; they start at zero.
    pub caches: Vec<(String, TensorType)>,
    /// Positions the caches hold.
    pub window: usize,
}

/// Why a forward cannot be decoded one position at a time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode this forward one position at a time: {0}")]
pub struct DecodeError(pub String);

/// Roles of a value's sequence axes, in axis order: `true` = full, `false` = row.
type Mode = Vec<bool>;

/// Derives `@decode` from `f` and `g` (see the module docs); `ids` names the token input
/// (`[1, L]`) and `logits` the output.
///
/// # Errors
/// The two forwards differ in more than their lengths, or a value mixes positions in a way
/// one-position decoding cannot follow (a slice or concatenation along a sequence axis, a
/// value needed whole along two sequence axes).
pub fn derive_decode(
    f: &Function,
    g: &Function,
    ids: &str,
    logits: &str,
) -> Result<Decoder, DecodeError> {
    let err = |m: String| DecodeError(m);
    let id_in = f
        .input(ids)
        .ok_or_else(|| err(format!("no input `{ids}`")))?;
    let out = f
        .output(logits)
        .ok_or_else(|| err(format!("no output `{logits}`")))?;
    if id_in.ty.shape.len() != 2 || id_in.ty.shape[0] != 1 {
        return Err(err(format!("`{ids}` is {}, not [1, L]", id_in.ty)));
    }
    let window = id_in.ty.shape[1];
    if f.nodes.len() != g.nodes.len() {
        return Err(err("the two lengths elaborate to different graphs".into()));
    }
    let mut seq = Vec::with_capacity(f.nodes.len());
    let mut dep = Vec::with_capacity(f.nodes.len());
    for (i, (a, b)) in f.nodes.iter().zip(&g.nodes).enumerate() {
        if a.op != b.op || a.args != b.args || a.ty.rank() != b.ty.rank() {
            return Err(err(format!("%{i} differs between the two lengths")));
        }
        let axes: Vec<usize> = (0..a.ty.rank())
            .filter(|&k| a.ty.shape[k] != b.ty.shape[k])
            .collect();
        if axes.iter().any(|&k| a.ty.shape[k] != window) {
            return Err(err(format!(
                "%{i} ({}) has an axis that grows with the sequence but is not its length",
                a.op.name()
            )));
        }
        seq.push(axes);
        let from_ids = matches!(&a.op, Op::Input { name, .. } if name == ids);
        dep.push(from_ids || a.args.iter().any(|x| dep[x.index()]));
    }
    let mut d = Deriver {
        f,
        seq,
        dep,
        ids,
        out: Function::new("decode"),
        memo: HashMap::new(),
        consts: HashMap::new(),
        position: None,
        caches: Vec::new(),
        cache_outputs: Vec::new(),
    };
    let mode = vec![false; d.seq[out.index()].len()];
    let v = d.build(out.index(), &mode)?;
    d.out.add_output(logits, v);
    for (name, v) in std::mem::take(&mut d.cache_outputs) {
        d.out.add_output(name, v);
    }
    Ok(Decoder {
        function: d.out,
        caches: d.caches,
        window,
    })
}

struct Deriver<'a> {
    f: &'a Function,
    /// Sequence axes of each node of `f`.
    seq: Vec<Vec<usize>>,
    /// Whether a node depends on the tokens.
    dep: Vec<bool>,
    ids: &'a str,
    out: Function,
    memo: HashMap<(usize, Mode), ValueId>,
    /// Copies of token-independent nodes, whole.
    consts: HashMap<usize, ValueId>,
    position: Option<ValueId>,
    caches: Vec<(String, TensorType)>,
    cache_outputs: Vec<(String, ValueId)>,
}

impl Deriver<'_> {
    fn err(&self, n: usize, why: &str) -> DecodeError {
        DecodeError(format!("%{n} ({}): {why}", self.f.nodes[n].op.name()))
    }

    fn emit(&mut self, op: Op, args: &[ValueId], ty: TensorType) -> Result<ValueId, DecodeError> {
        let declared = op.needs_declared_type().then(|| ty.clone());
        let v = self
            .out
            .add_typed(op, args, declared, None)
            .map_err(|e| DecodeError(e.to_string()))?;
        if *self.out.ty(v) != ty {
            return Err(DecodeError(format!(
                "internal: built {} where {ty} was due",
                self.out.ty(v)
            )));
        }
        Ok(v)
    }

    /// Node `n` with its sequence axes in `mode`.
    fn build(&mut self, n: usize, mode: &Mode) -> Result<ValueId, DecodeError> {
        if let Some(&v) = self.memo.get(&(n, mode.clone())) {
            return Ok(v);
        }
        let v = if !self.dep[n] && mode.iter().all(|&m| m) {
            self.whole(n)?
        } else if !self.dep[n] {
            self.const_rows(n, mode)?
        } else if !mode.is_empty() && mode.iter().all(|&m| m) {
            self.full(n)?
        } else {
            self.rows(n, mode)?
        };
        self.memo.insert((n, mode.clone()), v);
        Ok(v)
    }

    /// A token-independent node at the position's row: a constant or iota made at that
    /// size (an iota along a sequence axis is the position itself), other ops on their
    /// operands' rows (so the causal mask's row costs O(L), not O(L²)), and what cannot be
    /// sliced that way (an input, random values) computed whole and its row picked.
    fn const_rows(&mut self, n: usize, mode: &Mode) -> Result<ValueId, DecodeError> {
        let node = &self.f.nodes[n];
        let mut ty = node.ty.clone();
        let mut row_axes = Vec::new();
        for (k, &axis) in self.seq[n].iter().enumerate() {
            if !mode[k] {
                ty.shape[axis] = 1;
                row_axes.push(axis);
            }
        }
        match node.op.clone() {
            Op::Constant { value } => return self.emit(Op::Constant { value }, &[], ty),
            Op::Iota { axis } if row_axes.contains(&axis) => {
                let p = self.position();
                let f = self.emit(
                    Op::Broadcast,
                    &[p],
                    TensorType::new(DType::F32, ty.shape.clone()),
                )?;
                return if ty.dtype == DType::F32 {
                    Ok(f)
                } else {
                    self.emit(Op::Cast, &[f], ty)
                };
            }
            Op::Iota { axis } => return self.emit(Op::Iota { axis }, &[], ty),
            Op::Input { .. } | Op::Random { .. } => {}
            _ => {
                let mark = self.out.nodes.len();
                match self.rows(n, mode) {
                    Ok(v) => return Ok(v),
                    // Cannot follow it row by row: whole, then its row (what was built is dead).
                    Err(_) => debug_assert!(self.out.nodes.len() >= mark),
                }
            }
        }
        let mut v = self.whole(n)?;
        for axis in row_axes {
            v = self.pick_row(v, axis)?;
        }
        Ok(v)
    }

    /// A token-independent node, copied whole.
    fn whole(&mut self, n: usize) -> Result<ValueId, DecodeError> {
        if let Some(&v) = self.consts.get(&n) {
            return Ok(v);
        }
        let node = &self.f.nodes[n];
        let args: Vec<usize> = node.args.iter().map(|a| a.index()).collect();
        let mut vs = Vec::new();
        for a in args {
            vs.push(self.whole(a)?);
        }
        let node = &self.f.nodes[n];
        let v = match &node.op {
            Op::Input { name, kind } => {
                self.out
                    .add_input(name.clone(), *kind, node.ty.clone(), node.loc)
            }
            op => self.emit(op.clone(), &vs, node.ty.clone())?,
        };
        self.consts.insert(n, v);
        Ok(v)
    }

    fn position(&mut self) -> ValueId {
        *self.position.get_or_insert_with(|| {
            self.out.add_input(
                "position",
                InputKind::Data,
                TensorType::scalar(DType::F32),
                None,
            )
        })
    }

    /// `iota(axis) == position` over `shape`.
    fn at_position(&mut self, shape: &[usize], axis: usize) -> Result<ValueId, DecodeError> {
        let ty = TensorType::new(DType::F32, shape.to_vec());
        let iota = self.emit(Op::Iota { axis }, &[], ty.clone())?;
        let p = self.position();
        let pb = self.emit(Op::Broadcast, &[p], ty)?;
        self.emit(
            Op::Binary(BinaryOp::Eq),
            &[iota, pb],
            TensorType::new(DType::Bool, shape.to_vec()),
        )
    }

    /// Row `position` of `v` along `axis` (extent 1 after), exactly: a select and a sum.
    fn pick_row(&mut self, v: ValueId, axis: usize) -> Result<ValueId, DecodeError> {
        let ty = self.out.ty(v).clone();
        let float = if ty.dtype == DType::F32 || ty.dtype == DType::BF16 || ty.dtype == DType::F16 {
            v
        } else {
            self.emit(
                Op::Cast,
                &[v],
                TensorType::new(DType::F32, ty.shape.clone()),
            )?
        };
        let fty = self.out.ty(float).clone();
        let hit = self.at_position(&ty.shape, axis)?;
        let zero = self.emit(Op::Constant { value: 0.0 }, &[], fty.clone())?;
        let kept = self.emit(Op::Select, &[hit, float, zero], fty.clone())?;
        let mut shape = ty.shape.clone();
        shape[axis] = 1;
        let row = self.emit(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![axis],
                keepdim: true,
            },
            &[kept],
            TensorType::new(fty.dtype, shape.clone()),
        )?;
        match ty.dtype {
            d if d == fty.dtype => Ok(row),
            DType::Bool => {
                let zero = self.emit(
                    Op::Constant { value: 0.0 },
                    &[],
                    TensorType::new(fty.dtype, shape.clone()),
                )?;
                self.emit(
                    Op::Binary(BinaryOp::Ne),
                    &[row, zero],
                    TensorType::new(DType::Bool, shape),
                )
            }
            d => self.emit(Op::Cast, &[row], TensorType::new(d, shape)),
        }
    }

    /// A token-dependent node needed whole along its sequence axes.
    fn full(&mut self, n: usize) -> Result<ValueId, DecodeError> {
        let node = &self.f.nodes[n];
        if matches!(node.op, Op::Reshape | Op::Transpose { .. } | Op::Broadcast) {
            let a = node.args[0].index();
            let m = vec![true; self.seq[a].len()];
            let op = node.op.clone();
            let ty = node.ty.clone();
            let x = self.build(a, &m)?;
            return self.emit(op, &[x], ty);
        }
        let [axis] = self.seq[n][..] else {
            return Err(self.err(n, "needed whole along more than one sequence axis"));
        };
        let row = self.build(n, &vec![false])?;
        let ty = self.f.nodes[n].ty.clone();
        let name = format!("cache.{}", self.caches.len());
        let cache = self
            .out
            .add_input(name.clone(), InputKind::Data, ty.clone(), None);
        self.caches.push((name.clone(), ty.clone()));
        let hit = self.at_position(&ty.shape, axis)?;
        let wide = self.emit(Op::Broadcast, &[row], ty.clone())?;
        let updated = self.emit(Op::Select, &[hit, wide, cache], ty)?;
        self.cache_outputs.push((name, updated));
        Ok(updated)
    }

    /// A token-dependent node in `mode` (some axis in row role): its op on its operands in
    /// the roles it needs of them.
    fn rows(&mut self, n: usize, mode: &Mode) -> Result<ValueId, DecodeError> {
        let node = &self.f.nodes[n];
        let role: HashMap<usize, bool> = self.seq[n].iter().copied().zip(mode.clone()).collect();
        let mut ty = node.ty.clone();
        for (&axis, &full) in &role {
            if !full {
                ty.shape[axis] = 1;
            }
        }
        if let Op::Input { name, .. } = &node.op {
            if name != self.ids || mode != &vec![false] {
                return Err(self.err(n, "the tokens are needed whole"));
            }
            let ty = TensorType::new(node.ty.dtype, vec![1, 1]);
            return Ok(self.out.add_input(self.ids, InputKind::Data, ty, node.loc));
        }
        let rank = node.ty.rank();
        let args: Vec<usize> = node.args.iter().map(|a| a.index()).collect();
        // For each operand: the output axis each of its axes follows (None: it is contracted,
        // reduced or normalized over, so needed whole).
        let mut operand_modes = Vec::new();
        for (i, &a) in args.iter().enumerate() {
            let ar = self.f.nodes[a].ty.rank();
            let follow = |k: usize| -> Option<Option<usize>> {
                match &node.op {
                    Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast | Op::StopGrad => {
                        Some(Some(k))
                    }
                    Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                        Some((k != *axis).then_some(k))
                    }
                    Op::Concat { axis } | Op::Slice { axis, .. } => (k != *axis).then_some(Some(k)),
                    Op::Broadcast => Some(Some(k + rank - ar)),
                    Op::Transpose { perm } => Some(perm.iter().position(|&p| p == k)),
                    Op::Reduce { axes, keepdim, .. } => Some(if axes.contains(&k) {
                        None
                    } else if *keepdim {
                        Some(k)
                    } else {
                        Some(k - axes.iter().filter(|&&x| x < k).count())
                    }),
                    Op::MatMul { ta, tb } | Op::QuantMatMul { ta, tb, .. } if i < 2 => {
                        let (t, is_a) = if i == 0 { (*ta, true) } else { (*tb, false) };
                        let (row_axis, col_axis) = if t {
                            (ar - 1, ar - 2)
                        } else {
                            (ar - 2, ar - 1)
                        };
                        // a: [.., m, k]; b: [.., k, n] (before transposes).
                        let (keep, contract) = if is_a {
                            (row_axis, col_axis)
                        } else {
                            (col_axis, row_axis)
                        };
                        Some(if k == contract {
                            None
                        } else if k == keep {
                            Some(if is_a { rank - 2 } else { rank - 1 })
                        } else if ar == rank {
                            Some(k)
                        } else {
                            return None;
                        })
                    }
                    Op::Gather { axis } if i == 1 => Some(Some(k + axis)),
                    Op::Gather { axis } => Some(Some(if k < *axis {
                        k
                    } else {
                        k + self.f.nodes[args[1]].ty.rank() - 1
                    })),
                    _ => None,
                }
            };
            let mut m = Vec::new();
            for &k in &self.seq[a] {
                if matches!(node.op, Op::Reshape) {
                    break;
                }
                let Some(to) = follow(k) else {
                    return Err(self.err(n, "mixes positions in a way decoding cannot follow"));
                };
                m.push(match to {
                    None => true,
                    Some(o) => *role.get(&o).ok_or_else(|| {
                        self.err(n, "an operand's sequence axis is not the result's")
                    })?,
                });
            }
            if matches!(node.op, Op::Reshape) {
                // Rows stay rows only if the reshape keeps the sequence axes apart.
                let (from, to) = (&self.f.nodes[a].ty.shape, &node.ty.shape);
                let (sa, so) = (&self.seq[a], &self.seq[n]);
                let before = |s: &[usize], k: usize| s[..k].iter().product::<usize>();
                if sa.len() != so.len()
                    || sa
                        .iter()
                        .zip(so)
                        .any(|(&x, &y)| before(from, x) != before(to, y))
                {
                    return Err(self.err(n, "a reshape merges a sequence axis with another"));
                }
                m = so.iter().map(|y| role[y]).collect();
            }
            operand_modes.push(m);
        }
        let op = node.op.clone();
        let mut vs = Vec::new();
        for (a, m) in args.iter().zip(&operand_modes) {
            vs.push(self.build(*a, m)?);
        }
        self.emit(op, &vs, ty)
    }
}
