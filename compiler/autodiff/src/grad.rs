//! Reverse-mode differentiation: IR → IR. Given a scalar loss and the values to differentiate
//! with respect to, it appends the backward graph to the function. Only values that depend on
//! a differentiated input (not through `stop_grad`) get adjoints, so a frozen weight never has
//! a gradient computed for it: the graph contains no dW for it at all.

use crate::AdError;
use graft_ir::Emitter;
use graft_ir::{BinaryOp, Function, Op, OpClass, ReduceOp, UnaryOp, ValueId};

/// Which values depend on one of `wrt` through differentiable ops.
pub fn needs_grad(f: &Function, wrt: &[ValueId]) -> Vec<bool> {
    let mut need = vec![false; f.nodes.len()];
    for w in wrt {
        need[w.index()] = true;
    }
    for (i, n) in f.nodes.iter().enumerate() {
        // Inputs and generated values start no gradient path; `stop_grad` ends one.
        let differentiable = n.ty.dtype.is_float()
            && !matches!(n.op.class(), OpClass::Input | OpClass::Generator)
            && n.op != Op::StopGrad;
        if differentiable && n.args.iter().any(|a| need[a.index()]) {
            need[i] = true;
        }
    }
    need
}

/// Appends the backward pass of `loss` (an `f32[]` or `f64[]` value) to `f` and returns the
/// gradient of each value in `wrt` (a zero constant where the loss does not depend on it).
pub fn grad(f: &mut Function, loss: ValueId, wrt: &[ValueId]) -> Result<Vec<ValueId>, AdError> {
    let lt = f.ty(loss).clone();
    if lt.rank() != 0 || !lt.dtype.is_float() {
        return Err(AdError::NotScalarLoss(lt.to_string()));
    }
    let n_fwd = f.nodes.len();
    let need = needs_grad(f, wrt);
    let mut adj: Vec<Option<ValueId>> = vec![None; n_fwd];
    let mut e = Emitter::new(f);
    adj[loss.index()] = Some(e.constant(1.0, lt)?);
    for i in (0..n_fwd).rev() {
        let Some(g) = adj[i] else { continue };
        if !need[i] {
            continue;
        }
        let node = e.f.nodes[i].clone();
        let out = ValueId(i as u32);
        for (k, &a) in node.args.iter().enumerate() {
            if !need[a.index()] {
                continue;
            }
            let Some(d) = vjp(&mut e, &node.op, &node.args, out, g, k)? else {
                continue;
            };
            adj[a.index()] = Some(match adj[a.index()] {
                Some(prev) => e.add(prev, d)?,
                None => d,
            });
        }
    }
    wrt.iter()
        .map(|w| match adj[w.index()] {
            Some(g) => Ok(g),
            None => Ok(e.like(0.0, *w)?),
        })
        .collect()
}

/// The vector-Jacobian product of one node for operand `k`: the contribution of the output
/// adjoint `g` to operand `k`'s adjoint, or `None` when the operand is not differentiable.
fn vjp(
    e: &mut Emitter,
    op: &Op,
    args: &[ValueId],
    out: ValueId,
    g: ValueId,
    k: usize,
) -> Result<Option<ValueId>, AdError> {
    let a = args[0];
    let d = match op {
        Op::Unary(u) => match u {
            // d(-x) = -g
            UnaryOp::Neg => e.neg(g)?,
            // d(eˣ) = g·eˣ
            UnaryOp::Exp => e.mul(g, out)?,
            // d(ln x) = g / x
            UnaryOp::Log => e.div(g, a)?,
            // d(√x) = g / (2√x)
            UnaryOp::Sqrt => {
                let two = e.scale(out, 2.0)?;
                e.div(g, two)?
            }
            // d(x^-½) = -½·g·y³
            UnaryOp::Rsqrt => {
                let y2 = e.mul(out, out)?;
                let y3 = e.mul(y2, out)?;
                let t = e.mul(g, y3)?;
                e.scale(t, -0.5)?
            }
            // d(sin x) = g·cos x
            UnaryOp::Sin => {
                let c = e.un(UnaryOp::Cos, a)?;
                e.mul(g, c)?
            }
            // d(cos x) = -g·sin x
            UnaryOp::Cos => {
                let s = e.un(UnaryOp::Sin, a)?;
                let t = e.mul(g, s)?;
                e.neg(t)?
            }
            // d(tanh x) = g·(1 - y²)
            UnaryOp::Tanh => {
                let y2 = e.mul(out, out)?;
                let one = e.like(1.0, out)?;
                let t = e.sub(one, y2)?;
                e.mul(g, t)?
            }
            // d(σ(x)) = g·y·(1 - y)
            UnaryOp::Sigmoid => {
                let one = e.like(1.0, out)?;
                let t = e.sub(one, out)?;
                let t = e.mul(out, t)?;
                e.mul(g, t)?
            }
            // d(x·σ(x)) = g·(σ + x·σ·(1 - σ))
            UnaryOp::Silu => {
                let s = e.un(UnaryOp::Sigmoid, a)?;
                let one = e.like(1.0, s)?;
                let oms = e.sub(one, s)?;
                let t = e.mul(a, s)?;
                let t = e.mul(t, oms)?;
                let t = e.add(s, t)?;
                e.mul(g, t)?
            }
            // d(max(x, 0)) = g where x > 0
            UnaryOp::Relu => {
                let zero = e.like(0.0, a)?;
                let pos = e.bin(BinaryOp::Gt, a, zero)?;
                let z = e.like(0.0, g)?;
                e.select(pos, g, z)?
            }
            // d|x| = g·sign(x), sign(0) = 0
            UnaryOp::Abs => {
                let zero = e.like(0.0, a)?;
                let pos = e.bin(BinaryOp::Gt, a, zero)?;
                let negv = e.bin(BinaryOp::Lt, a, zero)?;
                let ng = e.neg(g)?;
                let z = e.like(0.0, g)?;
                let t = e.select(negv, ng, z)?;
                e.select(pos, g, t)?
            }
            // d(1/x) = -g·y²
            UnaryOp::Recip => {
                let y2 = e.mul(out, out)?;
                let t = e.mul(g, y2)?;
                e.neg(t)?
            }
            // d(erf x) = g·(2/√π)·exp(−x²)
            UnaryOp::Erf => {
                let x2 = e.mul(a, a)?;
                let n = e.neg(x2)?;
                let ex = e.un(UnaryOp::Exp, n)?;
                let c = e.like(std::f64::consts::FRAC_2_SQRT_PI, ex)?;
                let t = e.mul(c, ex)?;
                e.mul(g, t)?
            }
            UnaryOp::Not => return Ok(None),
        },
        Op::Binary(b) => {
            let (x, y) = (args[0], args[1]);
            match (b, k) {
                // d(x ± y) = g, ±g
                (BinaryOp::Add, _) | (BinaryOp::Sub, 0) => g,
                (BinaryOp::Sub, _) => e.neg(g)?,
                // d(x·y) = g·y, g·x
                (BinaryOp::Mul, 0) => e.mul(g, y)?,
                (BinaryOp::Mul, _) => e.mul(g, x)?,
                // d(x/y) = g/y, -g·(x/y)/y
                (BinaryOp::Div, 0) => e.div(g, y)?,
                (BinaryOp::Div, _) => {
                    let t = e.mul(g, out)?;
                    let t = e.div(t, y)?;
                    e.neg(t)?
                }
                // d(xʸ) = g·y·x^(y-1), g·xʸ·ln x
                (BinaryOp::Pow, 0) => {
                    let one = e.like(1.0, y)?;
                    let ym1 = e.sub(y, one)?;
                    let p = e.bin(BinaryOp::Pow, x, ym1)?;
                    let t = e.mul(y, p)?;
                    e.mul(g, t)?
                }
                (BinaryOp::Pow, _) => {
                    let l = e.un(UnaryOp::Log, x)?;
                    let t = e.mul(out, l)?;
                    e.mul(g, t)?
                }
                // max: the first operand wins ties; min likewise.
                (BinaryOp::Max | BinaryOp::Min, _) => {
                    let cmp = if *b == BinaryOp::Max {
                        BinaryOp::Ge
                    } else {
                        BinaryOp::Le
                    };
                    let first = e.bin(cmp, x, y)?;
                    let z = e.like(0.0, g)?;
                    if k == 0 {
                        e.select(first, g, z)?
                    } else {
                        e.select(first, z, g)?
                    }
                }
                // Comparisons and logic give booleans: nothing flows back through them.
                (
                    BinaryOp::Eq
                    | BinaryOp::Ne
                    | BinaryOp::Lt
                    | BinaryOp::Le
                    | BinaryOp::Gt
                    | BinaryOp::Ge
                    | BinaryOp::And
                    | BinaryOp::Or,
                    _,
                ) => return Ok(None),
            }
        }
        // select(c, a, b): the adjoint goes to the chosen branch.
        Op::Select => {
            let z = e.like(0.0, g)?;
            match k {
                1 => e.select(args[0], g, z)?,
                2 => e.select(args[0], z, g)?,
                // The condition is boolean.
                _ => return Ok(None),
            }
        }
        Op::MatMul { ta, tb } => matmul_vjp(e, args, g, *ta, *tb, k)?,
        // X = A⁻¹B: gB = A⁻ᵀ·g (a solve with Aᵀ), gA = −gB·Xᵀ.
        Op::Solve => {
            let r = e.ty(a).rank();
            let mut perm: Vec<usize> = (0..r).collect();
            perm.swap(r - 2, r - 1);
            let at = e.transpose(a, perm)?;
            let gb = e.op(Op::Solve, &[at, g])?;
            if k == 1 {
                gb
            } else {
                let t = e.matmul(gb, out, false, true)?;
                e.neg(t)?
            }
        }
        Op::Reduce { op, axes, keepdim } => {
            let in_ty = e.ty(a);
            let kept: Vec<usize> = in_ty
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                .collect();
            let gk = if *keepdim { g } else { e.reshape(g, &kept)? };
            let gb = e.broadcast(gk, &in_ty.shape)?;
            match op {
                // d(Σx) = g broadcast back
                ReduceOp::Sum => gb,
                // d(mean x) = g / n
                ReduceOp::Mean => {
                    let n: usize = axes.iter().map(|&i| in_ty.shape[i]).product();
                    e.scale(gb, 1.0 / n as f64)?
                }
                // d(max x): shared evenly among the elements equal to the max (as torch.amax).
                ReduceOp::Max | ReduceOp::Min => {
                    let ok = if *keepdim {
                        out
                    } else {
                        e.reshape(out, &kept)?
                    };
                    let ob = e.broadcast(ok, &in_ty.shape)?;
                    let hit = e.bin(BinaryOp::Eq, a, ob)?;
                    let hitf = e.cast(hit, in_ty.dtype)?;
                    let count = e.reduce(ReduceOp::Sum, hitf, axes.clone(), true)?;
                    let count = e.broadcast(count, &in_ty.shape)?;
                    let t = e.mul(gb, hitf)?;
                    e.div(t, count)?
                }
            }
        }
        // Layout ops move the adjoint back.
        Op::Reshape => {
            let s = e.ty(a).shape;
            e.reshape(g, &s)?
        }
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            e.transpose(g, inv)?
        }
        Op::Broadcast => unbroadcast(e, g, &e.ty(a).shape)?,
        Op::Concat { axis } => {
            let start: usize = args[..k].iter().map(|v| e.f.ty(*v).shape[*axis]).sum();
            let len = e.ty(args[k]).shape[*axis];
            e.op(
                Op::Slice {
                    axis: *axis,
                    start,
                    end: start + len,
                },
                &[g],
            )?
        }
        Op::Slice { axis, start, end } => {
            let in_ty = e.ty(a);
            let mut parts = Vec::new();
            if *start > 0 {
                let mut s = in_ty.shape.clone();
                s[*axis] = *start;
                parts.push(e.constant(0.0, in_ty.clone_with_shape(s))?);
            }
            parts.push(g);
            if *end < in_ty.shape[*axis] {
                let mut s = in_ty.shape.clone();
                s[*axis] = in_ty.shape[*axis] - end;
                parts.push(e.constant(0.0, in_ty.clone_with_shape(s))?);
            }
            if parts.len() == 1 {
                g
            } else {
                e.op(Op::Concat { axis: *axis }, &parts)?
            }
        }
        Op::Gather { axis } if k == 0 => gather_vjp(e, args, g, *axis)?,
        // dy = y·(g - Σ g·y)
        Op::Softmax { axis } => {
            let gy = e.mul(g, out)?;
            let s = e.reduce(ReduceOp::Sum, gy, vec![*axis], true)?;
            let shape = e.ty(g).shape;
            let s = e.broadcast(s, &shape)?;
            let t = e.sub(g, s)?;
            e.mul(out, t)?
        }
        // dy = g - eʸ·Σ g
        Op::LogSoftmax { axis } => {
            let s = e.reduce(ReduceOp::Sum, g, vec![*axis], true)?;
            let shape = e.ty(g).shape;
            let s = e.broadcast(s, &shape)?;
            let p = e.un(UnaryOp::Exp, out)?;
            let t = e.mul(p, s)?;
            e.sub(g, t)?
        }
        Op::Cast => {
            let dt = e.ty(a).dtype;
            e.cast(g, dt)?
        }
        // The same mask and scale apply to the adjoint.
        Op::Dropout { p, stream } if k == 0 => e.op(
            Op::Dropout {
                p: *p,
                stream: *stream,
            },
            &[g, args[1]],
        )?,
        // Integer operands (gather's indices, dropout's seed) carry no gradient.
        Op::Gather { .. } | Op::Dropout { .. } => return Ok(None),
        // Values with no operands never receive a backward step; `stop_grad` is where
        // gradients stop by definition.
        Op::Input { .. }
        | Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Random { .. }
        | Op::StopGrad => return Ok(None),
        // Quantized storage has no gradient; `qmatmul` only exists after the optimizer,
        // which runs on the finished training step.
        // Factorizations run in `@init`, on frozen values; `sort` ranks values (an
        // adapter's `after_step` uses it, after the gradient).
        Op::Dequantize { .. }
        | Op::Quantize { .. }
        | Op::QuantMatMul { .. }
        | Op::Factor(_)
        | Op::Sort { .. } => {
            return Err(AdError::NotDifferentiable(op.name().to_string()));
        }
    };
    Ok(Some(d))
}

/// Sums an adjoint over the axes a broadcast expanded, back to `shape`.
fn unbroadcast(e: &mut Emitter, g: ValueId, shape: &[usize]) -> Result<ValueId, AdError> {
    let gs = e.ty(g).shape;
    let lead = gs.len() - shape.len();
    let axes: Vec<usize> = (0..gs.len())
        .filter(|&i| i < lead || (shape[i - lead] == 1 && gs[i] != 1))
        .collect();
    let s = e.reduce(ReduceOp::Sum, g, axes, false)?;
    Ok(e.reshape(s, shape)?)
}

/// C = A'·B' with A' = ta ? Aᵀ : A, B' = tb ? Bᵀ : B: dA' = G·B'ᵀ, dB' = A'ᵀ·G. A rank-2
/// operand shared across the other's batch axes gets its adjoint summed over them.
fn matmul_vjp(
    e: &mut Emitter,
    args: &[ValueId],
    g: ValueId,
    ta: bool,
    tb: bool,
    k: usize,
) -> Result<ValueId, AdError> {
    let (a, b) = (args[0], args[1]);
    let d = match (k, ta, tb) {
        // dA = G·B'ᵀ
        (0, false, _) => e.matmul(g, b, false, !tb)?,
        // dA = (G·B'ᵀ)ᵀ = B'·Gᵀ
        (0, true, _) => e.matmul(b, g, tb, true)?,
        // dB = A'ᵀ·G
        (_, _, false) => e.matmul(a, g, !ta, false)?,
        // dB = (A'ᵀ·G)ᵀ = Gᵀ·A'
        (_, _, true) => e.matmul(g, a, true, ta)?,
    };
    let target = e.ty(args[k]).shape;
    let got = e.ty(d).shape;
    if got.len() > target.len() {
        let axes: Vec<usize> = (0..got.len() - target.len()).collect();
        return Ok(e.reduce(ReduceOp::Sum, d, axes, false)?);
    }
    Ok(d)
}

/// The adjoint of `gather(table, idx, axis)`: a scatter-add of `g` into the table's rows on
/// `axis`, as the one-hot product onehot(idx)ᵀ·g. With the table's axes split as
/// pre × rows × post, `g` (pre × idx × post) is moved to idx × pre × post and flattened to
/// [n, pre·post], and the product [rows, pre·post] is moved back to pre × rows × post.
fn gather_vjp(
    e: &mut Emitter,
    args: &[ValueId],
    g: ValueId,
    axis: usize,
) -> Result<ValueId, AdError> {
    let (table, idx) = (args[0], args[1]);
    let tt = e.ty(table);
    let it = e.ty(idx);
    let (pre, rows, post) = (&tt.shape[..axis], tt.shape[axis], &tt.shape[axis + 1..]);
    let (ni, np) = (it.rank(), pre.len());
    let n = it.numel();
    let rest: usize = pre.iter().chain(post).product();
    // g's axes: pre (0..np), idx (np..np+ni), post; idx first.
    let perm: Vec<usize> = (np..np + ni)
        .chain(0..np)
        .chain(np + ni..np + ni + post.len())
        .collect();
    let gt = e.transpose(g, perm)?;
    let g2 = e.reshape(gt, &[n, rest])?;
    let flat = e.reshape(idx, &[n, 1])?;
    let flat = e.broadcast(flat, &[n, rows])?;
    let iota = e.op_typed(
        Op::Iota { axis: 1 },
        &[],
        graft_ir::TensorType::new(it.dtype, vec![n, rows]),
    )?;
    let hit = e.bin(BinaryOp::Eq, flat, iota)?;
    let onehot = e.cast(hit, tt.dtype)?;
    let d = e.matmul(onehot, g2, true, false)?;
    let mut moved = vec![rows];
    moved.extend(pre);
    moved.extend(post);
    let d = e.reshape(d, &moved)?;
    // Axes now rows, pre, post: rows back to position `axis`.
    let back: Vec<usize> = (1..=np).chain([0]).chain(np + 1..tt.rank()).collect();
    Ok(e.transpose(d, back)?)
}

/// Same dtype, another shape.
trait WithShape {
    fn clone_with_shape(&self, shape: Vec<usize>) -> graft_ir::TensorType;
}

impl WithShape for graft_ir::TensorType {
    fn clone_with_shape(&self, shape: Vec<usize>) -> graft_ir::TensorType {
        graft_ir::TensorType::new(self.dtype, shape)
    }
}
