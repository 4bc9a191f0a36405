//! Every op of the IR through every stage, in one place: for each op (and each unary and
//! binary operator) a small function that uses it is printed and parsed back identically,
//! run on the interpreter, differentiated and checked against central finite differences in
//! f64 (or shown to be blocked or not differentiable, as declared), compiled for the CPU and
//! compared with the interpreter, and given an explicit cost by the optimizer's cost model.
//!
//! `kind` matches every op without a wildcard, so a new op does not compile until it is named
//! here, and the test fails until a case uses it.
//!
//! Tolerances: finite differences within 1e-6·(1 + |g|) (h = 1e-6, f64); compiled against the
//! interpreter within 1e-5 norm-wise relative (f32).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_autodiff::{AdError, grad};
use graft_interp::{Tensor, run};
use graft_ir::{
    BinaryOp, DType, Distribution, FactorOp, Function, InputKind, Module, Op, QuantFormat,
    QuantPart, ReduceOp, TensorType, UnaryOp, ValueId,
};
use graft_ir::{Emitter, TypeError};
use std::collections::{BTreeSet, HashMap};

/// The name of an op's kind; exhaustive over ops, so that a new op must be named (and
/// tested). Unary and binary operators use their IR names, and `UnaryOp::ALL` /
/// `BinaryOp::ALL` enumerate them.
fn kind(op: &Op) -> String {
    match op {
        Op::Unary(u) => format!("unary {}", u.name()),
        Op::Binary(b) => format!("binary {}", b.name()),
        Op::Factor(f) => format!("factor {}", f.name()),
        Op::Solve => "solve".into(),
        Op::Sort { .. } => "sort".into(),
        Op::Input { .. } => "input".into(),
        Op::Constant { .. } => "constant".into(),
        Op::Iota { .. } => "iota".into(),
        Op::Random { .. } => "random".into(),
        Op::Select => "select".into(),
        Op::MatMul { .. } => "matmul".into(),
        Op::Reduce { .. } => "reduce".into(),
        Op::Reshape => "reshape".into(),
        Op::Transpose { .. } => "transpose".into(),
        Op::Broadcast => "broadcast".into(),
        Op::Concat { .. } => "concat".into(),
        Op::Slice { .. } => "slice".into(),
        Op::Gather { .. } => "gather".into(),
        Op::Softmax { .. } => "softmax".into(),
        Op::LogSoftmax { .. } => "log_softmax".into(),
        Op::Cast => "cast".into(),
        Op::StopGrad => "stop_grad".into(),
        Op::Dropout { .. } => "dropout".into(),
        Op::Quantize { .. } => "quantize".into(),
        Op::Dequantize { .. } => "dequantize".into(),
        Op::QuantMatMul { .. } => "qmatmul".into(),
    }
}

/// Every kind `kind` can return.
fn all_kinds() -> BTreeSet<String> {
    let other = [
        "input",
        "constant",
        "iota",
        "random",
        "select",
        "matmul",
        "reduce",
        "reshape",
        "transpose",
        "broadcast",
        "concat",
        "slice",
        "gather",
        "softmax",
        "log_softmax",
        "cast",
        "stop_grad",
        "dropout",
        "quantize",
        "dequantize",
        "qmatmul",
        "solve",
        "sort",
    ];
    let unary = UnaryOp::ALL.iter().map(|u| kind(&Op::Unary(*u)));
    let binary = BinaryOp::ALL.iter().map(|b| kind(&Op::Binary(*b)));
    let factor = FactorOp::ALL.iter().map(|f| kind(&Op::Factor(*f)));
    unary
        .chain(binary)
        .chain(factor)
        .chain(other.iter().map(|o| o.to_string()))
        .collect()
}

/// What the gradient of a case must be.
#[derive(Clone, Copy, PartialEq)]
enum Grad {
    /// Autodiff's against finite differences.
    Fd,
    /// Zero by design (`stop_grad`).
    Blocked,
    /// Autodiff refuses (quantized storage, a factorization).
    Refused,
}

/// A case: its float inputs (shape, value range), and a body over them (plus the seed, an
/// `i64` scalar input, and `idx`, `i64[2]` row indices below 3) giving a float value of the
/// function's float dtype.
struct Case {
    /// Also the function's name: an IR identifier.
    name: String,
    floats: Vec<(Vec<usize>, (f64, f64))>,
    body: fn(&mut Emitter, &Ctx) -> Result<ValueId, TypeError>,
    grad: Grad,
    /// The operator of a unary or binary case.
    unary: Option<UnaryOp>,
    binary: Option<BinaryOp>,
}

impl Case {
    fn new(
        name: &str,
        floats: Vec<(Vec<usize>, (f64, f64))>,
        grad: Grad,
        body: fn(&mut Emitter, &Ctx) -> Result<ValueId, TypeError>,
    ) -> Case {
        Case {
            name: name.to_string(),
            floats,
            body,
            grad,
            unary: None,
            binary: None,
        }
    }
}

/// The inputs a body reads.
struct Ctx {
    x: Vec<ValueId>,
    seed: ValueId,
    idx: ValueId,
    dt: DType,
    unary: Option<UnaryOp>,
    binary: Option<BinaryOp>,
}

const POS: (f64, f64) = (0.5, 2.0);
const ANY: (f64, f64) = (-2.0, 2.0);

fn s23() -> Vec<usize> {
    vec![2, 3]
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // Every float operator (`not` is in the logic case).
    for u in UnaryOp::ALL.into_iter().filter(|u| *u != UnaryOp::Not) {
        v.push(Case {
            unary: Some(u),
            ..Case::new(
                &kind(&Op::Unary(u)).replace(' ', "_"),
                vec![(
                    s23(),
                    if matches!(u, UnaryOp::Relu | UnaryOp::Abs) {
                        ANY
                    } else {
                        POS
                    },
                )],
                Grad::Fd,
                |e, c| e.un(c.unary.unwrap(), c.x[0]),
            )
        });
    }
    // Every arithmetic and comparison operator (`and`/`or` are in the logic case).
    for b in BinaryOp::ALL
        .into_iter()
        .filter(|b| !matches!(b, BinaryOp::And | BinaryOp::Or))
    {
        v.push(Case {
            binary: Some(b),
            ..Case::new(
                &kind(&Op::Binary(b)).replace(' ', "_"),
                vec![(s23(), POS), (s23(), POS)],
                Grad::Fd,
                |e, c| {
                    let r = e.bin(c.binary.unwrap(), c.x[0], c.x[1])?;
                    // Comparisons give booleans: as numbers, times x (zero gradient through
                    // the comparison, x's own factor).
                    if e.ty(r).dtype == DType::Bool {
                        let n = e.cast(r, c.dt)?;
                        e.mul(n, c.x[0])
                    } else {
                        Ok(r)
                    }
                },
            )
        });
    }
    v.extend([
        Case::new(
            "logic_not_and_or",
            vec![(s23(), POS), (s23(), POS)],
            Grad::Fd,
            |e, c| {
                let one = e.like(1.0, c.x[0])?;
                let a = e.bin(BinaryOp::Gt, c.x[0], one)?;
                let b = e.bin(BinaryOp::Lt, c.x[1], one)?;
                let and = e.bin(BinaryOp::And, a, b)?;
                let not = e.un(UnaryOp::Not, and)?;
                let or = e.bin(BinaryOp::Or, not, a)?;
                let n = e.cast(or, c.dt)?;
                e.mul(n, c.x[1])
            },
        ),
        Case::new("constant_iota", vec![(s23(), ANY)], Grad::Fd, |e, c| {
            let t = e.ty(c.x[0]);
            let k = e.constant(2.5, t.clone())?;
            let i = e.op_typed(Op::Iota { axis: 1 }, &[], t)?;
            let a = e.mul(c.x[0], k)?;
            e.add(a, i)
        }),
        Case::new("random", vec![(s23(), ANY)], Grad::Fd, |e, c| {
            let t = e.ty(c.x[0]);
            let r = e.op_typed(
                Op::Random {
                    dist: Distribution::Normal {
                        mean: 0.0,
                        std: 1.0,
                    },
                    stream: 3,
                },
                &[c.seed],
                t,
            )?;
            e.mul(c.x[0], r)
        }),
        Case::new(
            "select",
            vec![(s23(), ANY), (s23(), ANY)],
            Grad::Fd,
            |e, c| {
                let m = e.bin(BinaryOp::Gt, c.x[0], c.x[1])?;
                let a = e.mul(c.x[0], c.x[1])?;
                e.select(m, a, c.x[1])
            },
        ),
        Case::new(
            "matmul",
            vec![(vec![2, 3], ANY), (vec![4, 3], ANY), (vec![4, 5], ANY)],
            Grad::Fd,
            |e, c| {
                let ab = e.matmul(c.x[0], c.x[1], false, true)?; // [2, 4]
                let t = e.matmul(ab, c.x[2], false, false)?; // [2, 5]
                let u = e.matmul(c.x[2], ab, true, true)?; // [5, 2]
                e.matmul(t, u, false, false) // [2, 2]
            },
        ),
        Case::new("reduce", vec![(vec![2, 3, 4], ANY)], Grad::Fd, |e, c| {
            let s = e.reduce(ReduceOp::Sum, c.x[0], vec![2], false)?;
            let m = e.reduce(ReduceOp::Mean, c.x[0], vec![2], false)?;
            let hi = e.reduce(ReduceOp::Max, c.x[0], vec![2], false)?;
            let lo = e.reduce(ReduceOp::Min, c.x[0], vec![0], true)?;
            let lo = e.reshape(lo, &[3, 4])?;
            let lo = e.reduce(ReduceOp::Sum, lo, vec![1], false)?;
            let lo = e.broadcast(lo, &[2, 3])?;
            let a = e.mul(s, m)?;
            let b = e.add(hi, lo)?;
            e.add(a, b)
        }),
        Case::new(
            "layout_reshape_transpose_broadcast_concat_slice",
            vec![(vec![2, 3], ANY), (vec![3], ANY)],
            Grad::Fd,
            |e, c| {
                let r = e.reshape(c.x[0], &[3, 2])?;
                let t = e.transpose(r, vec![1, 0])?; // [2, 3]
                let b = e.broadcast(c.x[1], &[2, 3])?;
                let cat = e.op(Op::Concat { axis: 0 }, &[t, b])?; // [4, 3]
                let sl = e.op(
                    Op::Slice {
                        axis: 0,
                        start: 1,
                        end: 3,
                    },
                    &[cat],
                )?;
                e.mul(sl, t)
            },
        ),
        Case::new("gather", vec![(vec![3, 4], ANY)], Grad::Fd, |e, c| {
            let g = e.op(Op::Gather { axis: 0 }, &[c.x[0], c.idx])?; // [2, 4]
            e.mul(g, g)
        }),
        // A middle axis of a rank-3 table, indices of rank 2 (`idx` twice, one row repeated).
        Case::new(
            "gather_axis_1",
            vec![(vec![2, 3, 4], ANY)],
            Grad::Fd,
            |e, c| {
                let i2 = e.reshape(c.idx, &[1, 2])?;
                let i2 = e.broadcast(i2, &[2, 2])?;
                let g = e.op(Op::Gather { axis: 1 }, &[c.x[0], i2])?; // [2, 2, 2, 4]
                e.mul(g, g)
            },
        ),
        Case::new(
            "softmax_log_softmax",
            vec![(vec![2, 5], ANY)],
            Grad::Fd,
            |e, c| {
                let s = e.op(Op::Softmax { axis: 1 }, &[c.x[0]])?;
                let l = e.op(Op::LogSoftmax { axis: 1 }, &[c.x[0]])?;
                e.add(s, l)
            },
        ),
        // Through f32 and back: finite differences in f64 see f32 rounding (checked at
        // f32 scale).
        Case::new("cast", vec![(s23(), ANY)], Grad::Fd, |e, c| {
            let other = if c.dt == DType::F64 {
                DType::F32
            } else {
                DType::F64
            };
            let a = e.cast(c.x[0], other)?;
            let a = e.mul(a, a)?;
            e.cast(a, c.dt)
        }),
        Case::new("stop_grad", vec![(s23(), ANY)], Grad::Blocked, |e, c| {
            let s = e.op(Op::StopGrad, &[c.x[0]])?;
            let k = e.like(3.0, s)?;
            e.mul(s, k)
        }),
        Case::new("dropout", vec![(vec![4, 8], ANY)], Grad::Fd, |e, c| {
            e.op(Op::Dropout { p: 0.25, stream: 7 }, &[c.x[0], c.seed])
        }),
        Case::new(
            "quantize_dequantize_qmatmul",
            vec![(vec![4, 64], ANY), (vec![2, 64], ANY)],
            Grad::Refused,
            |e, c| {
                let q = |part| Op::Quantize {
                    format: QuantFormat::Nf4,
                    block: 64,
                    part,
                };
                let codes = e.op(q(QuantPart::Codes), &[c.x[0]])?;
                let absmax = e.op(q(QuantPart::Absmax), &[c.x[0]])?;
                let w = e.op_typed(
                    Op::Dequantize {
                        format: QuantFormat::Nf4,
                        block: 64,
                        nested: 0,
                    },
                    &[codes, absmax],
                    TensorType::new(c.dt, vec![4, 64]),
                )?;
                let y = e.op(
                    Op::QuantMatMul {
                        format: QuantFormat::Nf4,
                        block: 64,
                        nested: 0,
                        ta: false,
                        tb: true,
                    },
                    &[c.x[1], codes, absmax],
                )?; // [2, 4]
                let z = e.matmul(c.x[1], w, false, true)?;
                e.add(y, z)
            },
        ),
        // x [5, 3] and xᵀ [3, 5]: U·diag(S)·Vh − x and Q·R − x (zero), UᵀU and QᵀQ (the
        // identity), R's lower triangle (zero), all in one output.
        Case::new(
            "factor_svd_qr",
            vec![(vec![5, 3], ANY)],
            Grad::Refused,
            |e, c| {
                let mut parts = Vec::new();
                for x in [c.x[0], e.transpose(c.x[0], vec![1, 0])?] {
                    let f = |e: &mut Emitter, op| e.op(Op::Factor(op), &[x]);
                    let (u, s, vh) = (
                        f(e, FactorOp::SvdU)?,
                        f(e, FactorOp::SvdS)?,
                        f(e, FactorOp::SvdVh)?,
                    );
                    let (q, r) = (f(e, FactorOp::QrQ)?, f(e, FactorOp::QrR)?);
                    let us = {
                        let ut = e.ty(u);
                        let sb = e.broadcast(s, &ut.shape)?;
                        e.mul(u, sb)?
                    };
                    let usv = e.matmul(us, vh, false, false)?;
                    let qr = e.matmul(q, r, false, false)?;
                    let d1 = e.sub(usv, x)?;
                    let d2 = e.sub(qr, x)?;
                    parts.push(e.sum_all(d1)?);
                    parts.push(e.sum_all(d2)?);
                    for m in [u, q] {
                        let mtm = e.matmul(m, m, true, false)?;
                        parts.push(e.sum_all(mtm)?);
                    }
                    let rt = e.ty(r);
                    let i = e.op_typed(Op::Iota { axis: 0 }, &[], rt.clone())?;
                    let j = e.op_typed(Op::Iota { axis: 1 }, &[], rt)?;
                    let below = e.bin(BinaryOp::Gt, i, j)?;
                    let z = e.like(0.0, r)?;
                    let low = e.select(below, r, z)?;
                    parts.push(e.sum_all(low)?);
                }
                let parts: Vec<ValueId> = parts
                    .into_iter()
                    .map(|p| e.reshape(p, &[1]))
                    .collect::<Result<_, _>>()?;
                e.op(Op::Concat { axis: 0 }, &parts)
            },
        ),
        // X = (A + 8·I)⁻¹B for A [2, 3, 3] on (−2, 2) (diagonally dominant, so well
        // conditioned) and B [2, 3, 2].
        Case::new(
            "solve",
            vec![(vec![2, 3, 3], ANY), (vec![2, 3, 2], ANY)],
            Grad::Fd,
            |e, c| {
                let a = shifted(e, c.x[0])?;
                e.op(Op::Solve, &[a, c.x[1]])
            },
        ),
        // x [3, 4] sorted along each axis, both in one output.
        Case::new("sort", vec![(vec![3, 4], ANY)], Grad::Refused, |e, c| {
            let a = e.op(Op::Sort { axis: 0 }, &[c.x[0]])?;
            let b = e.op(Op::Sort { axis: 1 }, &[c.x[0]])?;
            let a = e.reshape(a, &[12])?;
            let b = e.reshape(b, &[12])?;
            e.op(Op::Concat { axis: 0 }, &[a, b])
        }),
    ]);
    v
}

/// The sort case's oracle: each lane of the result is non-decreasing and holds the same
/// values as the operand's lane (compared exactly, after sorting both in f64 here).
fn check_sorted(case: &Case) {
    let (mut f, x, y) = build(case, DType::F32);
    f.add_output("y", y);
    f.add_output("x", x[0]);
    let vals = inputs(case, DType::F32, 0x5eed);
    let out = run(&f, &vals).unwrap();
    let (y, x) = (out[0].1.to_f64_vec(), out[1].1.to_f64_vec());
    let lane = |v: &[f64], axis: usize, i: usize| -> Vec<f64> {
        if axis == 0 {
            (0..3).map(|r| v[r * 4 + i]).collect()
        } else {
            v[i * 4..i * 4 + 4].to_vec()
        }
    };
    for (axis, lanes, off) in [(0, 4, 0), (1, 3, 12)] {
        for i in 0..lanes {
            let got = lane(&y[off..off + 12], axis, i);
            let mut want = lane(&x, axis, i);
            want.sort_by(f64::total_cmp);
            assert_eq!(got, want, "axis {axis}, lane {i}");
        }
    }
}

/// `a + 8·I` for a batch of square matrices `a`.
fn shifted(e: &mut Emitter, a: ValueId) -> Result<ValueId, TypeError> {
    let t = e.ty(a);
    let r = t.rank();
    let i = e.op_typed(Op::Iota { axis: r - 2 }, &[], t.clone())?;
    let j = e.op_typed(Op::Iota { axis: r - 1 }, &[], t)?;
    let on = e.bin(BinaryOp::Eq, i, j)?;
    let (eight, zero) = (e.like(8.0, a)?, e.like(0.0, a)?);
    let d = e.select(on, eight, zero)?;
    e.add(a, d)
}

/// The solve case's oracle: in f64, (A + 8·I)·X − B is zero within 1e-12.
fn check_solve_residual(case: &Case) {
    let (mut f, x, y) = build(case, DType::F64);
    let mut e = Emitter::new(&mut f);
    let a = shifted(&mut e, x[0]).unwrap();
    let ax = e.matmul(a, y, false, false).unwrap();
    let d = e.sub(ax, x[1]).unwrap();
    f.add_output("d", d);
    let out = run(&f, &inputs(case, DType::F64, 0x5eed)).unwrap()[0]
        .1
        .to_f64_vec();
    assert!(out.iter().all(|d| d.abs() < 1e-12), "residual {out:?}");
}

/// The case's function in `dt`: inputs x0, x1, … (params), `seed`, `idx`; output `y`.
fn build(case: &Case, dt: DType) -> (Function, Vec<ValueId>, ValueId) {
    let mut f = Function::new(case.name.clone());
    let x: Vec<ValueId> = case
        .floats
        .iter()
        .enumerate()
        .map(|(i, (s, _))| {
            f.add_input(
                format!("x{i}"),
                InputKind::Param,
                TensorType::new(dt, s.clone()),
                None,
            )
        })
        .collect();
    let seed = f.add_input(
        "seed",
        InputKind::Data,
        TensorType::scalar(DType::I64),
        None,
    );
    let idx = f.add_input(
        "idx",
        InputKind::Data,
        TensorType::new(DType::I64, vec![2]),
        None,
    );
    let ctx = Ctx {
        x: x.clone(),
        seed,
        idx,
        dt,
        unary: case.unary,
        binary: case.binary,
    };
    let y = (case.body)(&mut Emitter::new(&mut f), &ctx)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    (f, x, y)
}

fn inputs(case: &Case, dt: DType, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = common::Rng(seed);
    let mut m = HashMap::new();
    for (i, (s, (lo, hi))) in case.floats.iter().enumerate() {
        let n: usize = s.iter().product();
        let d: Vec<f64> = (0..n).map(|_| rng.uniform(*lo, *hi)).collect();
        let t = match dt {
            DType::F64 => Tensor::f64(s.clone(), d),
            _ => Tensor::f32(s.clone(), d.iter().map(|x| *x as f32).collect()),
        };
        m.insert(format!("x{i}"), t.unwrap());
    }
    m.insert("seed".into(), Tensor::scalar_i64(11));
    m.insert("idx".into(), Tensor::i64(vec![2], vec![2, 0]).unwrap());
    m
}

/// Text round trip and an explicit, finite cost for every node.
fn text_and_cost(f: &Function, name: &str) {
    let m = Module {
        files: Vec::new(),
        functions: vec![f.clone()],
    };
    let text = graft_ir::print_module(&m);
    let back = graft_ir::parse_module(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
    assert_eq!(
        graft_ir::print_module(&back),
        text,
        "{name}: text round trip"
    );
    for n in &f.nodes {
        let args: Vec<&TensorType> = n.args.iter().map(|a| f.ty(*a)).collect();
        let w = graft_opt::cost::work(&n.op, &args, &n.ty);
        assert!(
            w.flops.is_finite() && w.bytes.is_finite(),
            "{name}: {}",
            kind(&n.op)
        );
    }
}

/// The loss Σ y·w over the case's output and its gradients with respect to every x, in f64.
fn with_gradients(case: &Case) -> Result<Function, AdError> {
    with_gradients_in(case, DType::F64)
}

fn with_gradients_in(case: &Case, dt: DType) -> Result<Function, AdError> {
    let (mut f, x, y) = build(case, dt);
    let yt = f.ty(y).clone();
    let w = f.add_input("w", InputKind::Data, yt, None);
    let loss = {
        let mut e = Emitter::new(&mut f);
        let yw = e.mul(y, w)?;
        e.sum_all(yw)?
    };
    let grads = grad(&mut f, loss, &x)?;
    f.add_output("loss", loss);
    for (i, g) in grads.iter().enumerate() {
        f.add_output(format!("g{i}"), *g);
    }
    Ok(f)
}

fn check_gradient(case: &Case) {
    let name = case.name.as_str();
    let f = match (with_gradients(case), case.grad) {
        (Err(AdError::NotDifferentiable(op)), Grad::Refused) => {
            assert!(
                ["quantize", "dequantize", "qmatmul", "sort"].contains(&op.as_str())
                    || FactorOp::from_name(&op).is_some(),
                "{name}: {op}"
            );
            return;
        }
        (Err(e), _) => panic!("{name}: {e}"),
        (Ok(_), Grad::Refused) => {
            panic!("{name}: differentiated through quantized storage or a factorization")
        }
        (Ok(f), _) => f,
    };
    text_and_cost(&f, name);
    let mut vals = inputs(case, DType::F64, 0x5eed);
    let (_, _, y) = build(case, DType::F64);
    let yt = build(case, DType::F64).0.ty(y).clone();
    let mut rng = common::Rng(77);
    let wd: Vec<f64> = (0..yt.numel()).map(|_| rng.uniform(-1.0, 1.0)).collect();
    vals.insert("w".into(), Tensor::f64(yt.shape.clone(), wd).unwrap());
    let eval = |v: &HashMap<String, Tensor>| -> Vec<Vec<f64>> {
        run(&f, v)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .into_iter()
            .map(|(_, t)| t.to_f64_vec())
            .collect()
    };
    let base = eval(&vals);
    // A cast through f32 rounds by ~1e-7 relative: its finite differences take a wider step
    // (exact for the case's square) and an f32-scale tolerance.
    let (h, tol) = if name == "cast" {
        (1e-3, 1e-4)
    } else {
        (1e-6, 1e-6)
    };
    for (i, (s, _)) in case.floats.iter().enumerate() {
        let key = format!("x{i}");
        for j in 0..s.iter().product::<usize>() {
            let g = base[1 + i][j];
            if case.grad == Grad::Blocked {
                assert_eq!(g, 0.0, "{name}: gradient through stop_grad");
                continue;
            }
            let at = |delta: f64| {
                let mut v = vals.clone();
                let mut d = v[&key].to_f64_vec();
                d[j] += delta;
                v.insert(key.clone(), Tensor::f64(s.clone(), d).unwrap());
                eval(&v)[0][0]
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - g).abs() <= tol * (1.0 + g.abs()),
                "{name}: ∂L/∂x{i}[{j}] autodiff {g} vs finite differences {fd}"
            );
        }
    }
}

/// The gradient function in f32, compiled for the CPU, against the interpreter: within 1e-5
/// norm-wise relative, as the forward.
fn compiled_gradients_match(case: &Case) {
    let f = with_gradients_in(case, DType::F32).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut vals = inputs(case, DType::F32, 0x5eed);
    let yt = build(case, DType::F32)
        .0
        .ty(build(case, DType::F32).2)
        .clone();
    let mut rng = common::Rng(77);
    let wd: Vec<f32> = (0..yt.numel())
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    vals.insert("w".into(), Tensor::f32(yt.shape.clone(), wd).unwrap());
    let name = &case.name;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::check_norm(&f, &vals, 1e-5)
    }));
    if let Err(e) = r {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "{name}: compiled gradients: {msg}\n{}",
            graft_ir::print_function(&f)
        );
    }
}

/// The factorization case's oracle: in f64 its output is the identities' residuals,
/// [0, 0, k, k, 0] per matrix (within 1e-12, k = 3).
fn check_factor_identities(case: &Case) {
    let (mut f, _, y) = build(case, DType::F64);
    f.add_output("y", y);
    let out = run(&f, &inputs(case, DType::F64, 0x5eed)).unwrap()[0]
        .1
        .to_f64_vec();
    let want = [0.0, 0.0, 3.0, 3.0, 0.0];
    for (i, (g, w)) in out.iter().zip(want.iter().cycle()).enumerate() {
        assert!((g - w).abs() < 1e-12, "{}: part {i}: {g} vs {w}", case.name);
    }
}

#[test]
fn every_op_round_trips_runs_differentiates_compiles_and_costs() {
    let cases = cases();
    let mut covered = BTreeSet::new();
    for case in &cases {
        let (mut f, _, y) = build(case, DType::F32);
        f.add_output("y", y);
        graft_ir::verify_function(&f, 0).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        covered.extend(f.nodes.iter().map(|n| kind(&n.op)));
        text_and_cost(&f, &case.name);
        let vals = inputs(case, DType::F32, 0x5eed);
        run(&f, &vals).unwrap_or_else(|e| panic!("{}: interpreter: {e}", case.name));
        common::check_norm(&f, &vals, 1e-5);
        if case.name == "factor_svd_qr" {
            check_factor_identities(case);
        }
        if case.name == "solve" {
            check_solve_residual(case);
        }
        if case.name == "sort" {
            check_sorted(case);
        }
        check_gradient(case);
        if case.grad == Grad::Fd {
            compiled_gradients_match(case);
        }
    }
    let missing: Vec<String> = all_kinds().difference(&covered).cloned().collect();
    assert!(missing.is_empty(), "ops no case uses: {missing:?}");
}
