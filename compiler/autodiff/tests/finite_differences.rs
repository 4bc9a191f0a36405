//! Every op's vector-Jacobian product against central finite differences, in f64.
//!
//! Each case builds `y = op(x₁, …)`, the scalar `L = Σ y·w` with a fixed random `w`, and its
//! gradient by [`graft_autodiff::grad`]; the reference interpreter evaluates both, and every
//! gradient element must match (L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h with h = 1e-6 to within
//! 1e-6 · (1 + |g|) (absolute + relative, f64).

use graft_autodiff::grad;
use graft_interp::{Tensor, run};
use graft_ir::Emitter;
use graft_ir::{BinaryOp, DType, Function, InputKind, Op, ReduceOp, TensorType, UnaryOp, ValueId};
use std::collections::HashMap;

type Build = fn(&mut Emitter, &[ValueId]) -> ValueId;

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Inputs: shapes and the open interval each input's values are drawn from.
fn check(name: &str, inputs: &[(&[usize], (f64, f64))], build: Build) {
    let mut f = Function::new(name);
    let xs: Vec<ValueId> = inputs
        .iter()
        .enumerate()
        .map(|(i, (s, _))| {
            f.add_input(
                format!("x{i}"),
                InputKind::Param,
                TensorType::new(DType::F64, s.to_vec()),
                None,
            )
        })
        .collect();
    let y = build(&mut Emitter::new(&mut f), &xs);
    let yt = f.ty(y).clone();
    let w = f.add_input("w", InputKind::Data, yt.clone(), None);
    let loss = {
        let mut e = Emitter::new(&mut f);
        let yw = e.mul(y, w).expect("y·w");
        e.sum_all(yw).expect("Σ")
    };
    let grads = grad(&mut f, loss, &xs).unwrap_or_else(|e| panic!("{name}: {e}"));
    f.add_output("loss", loss);
    for (i, g) in grads.iter().enumerate() {
        f.add_output(format!("g{i}"), *g);
    }
    graft_ir::verify_function(&f, 0)
        .unwrap_or_else(|e| panic!("{name}: backward graph does not verify: {e}"));

    let mut rng = Rng(0x5eed ^ name.len() as u64);
    let mut vals: HashMap<String, Tensor> = HashMap::new();
    for (i, (s, (lo, hi))) in inputs.iter().enumerate() {
        let n: usize = s.iter().product();
        let data: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect();
        vals.insert(
            format!("x{i}"),
            Tensor::f64(s.to_vec(), data).expect("tensor"),
        );
    }
    let wdata: Vec<f64> = (0..yt.numel()).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    vals.insert(
        "w".into(),
        Tensor::f64(yt.shape.clone(), wdata).expect("tensor"),
    );

    let eval = |vals: &HashMap<String, Tensor>| -> Vec<Vec<f64>> {
        run(&f, vals)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .into_iter()
            .map(|(_, t)| t.to_f64_vec())
            .collect()
    };
    let base = eval(&vals);
    let h = 1e-6;
    for (i, (s, _)) in inputs.iter().enumerate() {
        let key = format!("x{i}");
        let n: usize = s.iter().product();
        for j in 0..n {
            let at = |delta: f64| {
                let mut v = vals.clone();
                let mut d = v[&key].to_f64_vec();
                d[j] += delta;
                v.insert(key.clone(), Tensor::f64(s.to_vec(), d).expect("tensor"));
                eval(&v)[0][0]
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let g = base[1 + i][j];
            assert!(
                (fd - g).abs() <= 1e-6 * (1.0 + g.abs()),
                "{name}: ∂L/∂x{i}[{j}] autodiff {g} vs finite differences {fd}"
            );
        }
    }
}

const POS: (f64, f64) = (0.5, 2.0);
const ANY: (f64, f64) = (-2.0, 2.0);

#[test]
fn unary_ops() {
    let cases: [(UnaryOp, (f64, f64)); 14] = [
        (UnaryOp::Neg, ANY),
        (UnaryOp::Exp, ANY),
        (UnaryOp::Log, POS),
        (UnaryOp::Sqrt, POS),
        (UnaryOp::Rsqrt, POS),
        (UnaryOp::Sin, ANY),
        (UnaryOp::Cos, ANY),
        (UnaryOp::Tanh, ANY),
        (UnaryOp::Sigmoid, ANY),
        (UnaryOp::Silu, ANY),
        (UnaryOp::Relu, ANY),
        (UnaryOp::Abs, ANY),
        (UnaryOp::Recip, POS),
        (UnaryOp::Erf, ANY),
    ];
    for (u, range) in cases {
        let build: Build = match u {
            UnaryOp::Neg => |e, x| e.un(UnaryOp::Neg, x[0]).expect("op"),
            UnaryOp::Exp => |e, x| e.un(UnaryOp::Exp, x[0]).expect("op"),
            UnaryOp::Log => |e, x| e.un(UnaryOp::Log, x[0]).expect("op"),
            UnaryOp::Sqrt => |e, x| e.un(UnaryOp::Sqrt, x[0]).expect("op"),
            UnaryOp::Rsqrt => |e, x| e.un(UnaryOp::Rsqrt, x[0]).expect("op"),
            UnaryOp::Sin => |e, x| e.un(UnaryOp::Sin, x[0]).expect("op"),
            UnaryOp::Cos => |e, x| e.un(UnaryOp::Cos, x[0]).expect("op"),
            UnaryOp::Tanh => |e, x| e.un(UnaryOp::Tanh, x[0]).expect("op"),
            UnaryOp::Sigmoid => |e, x| e.un(UnaryOp::Sigmoid, x[0]).expect("op"),
            UnaryOp::Silu => |e, x| e.un(UnaryOp::Silu, x[0]).expect("op"),
            UnaryOp::Relu => |e, x| e.un(UnaryOp::Relu, x[0]).expect("op"),
            UnaryOp::Abs => |e, x| e.un(UnaryOp::Abs, x[0]).expect("op"),
            UnaryOp::Erf => |e, x| e.un(UnaryOp::Erf, x[0]).expect("op"),
            _ => |e, x| e.un(UnaryOp::Recip, x[0]).expect("op"),
        };
        check(u.name(), &[(&[2, 3], range)], build);
    }
}

#[test]
fn binary_ops() {
    check("add", &[(&[3, 2], ANY), (&[3, 2], ANY)], |e, x| {
        e.add(x[0], x[1]).expect("op")
    });
    check("sub", &[(&[3, 2], ANY), (&[3, 2], ANY)], |e, x| {
        e.sub(x[0], x[1]).expect("op")
    });
    check("mul", &[(&[3, 2], ANY), (&[3, 2], ANY)], |e, x| {
        e.mul(x[0], x[1]).expect("op")
    });
    check("div", &[(&[3, 2], ANY), (&[3, 2], POS)], |e, x| {
        e.div(x[0], x[1]).expect("op")
    });
    check("pow", &[(&[3, 2], POS), (&[3, 2], ANY)], |e, x| {
        e.bin(BinaryOp::Pow, x[0], x[1]).expect("op")
    });
    check("max", &[(&[3, 2], ANY), (&[3, 2], ANY)], |e, x| {
        e.bin(BinaryOp::Max, x[0], x[1]).expect("op")
    });
    check("min", &[(&[3, 2], ANY), (&[3, 2], ANY)], |e, x| {
        e.bin(BinaryOp::Min, x[0], x[1]).expect("op")
    });
    check("select", &[(&[3, 2], ANY), (&[3, 2], ANY)], |e, x| {
        let c = e.bin(BinaryOp::Gt, x[0], x[1]).expect("cmp");
        let p = e.un(UnaryOp::Exp, x[0]).expect("exp");
        e.select(c, p, x[1]).expect("select")
    });
}

#[test]
fn matmul_with_every_transpose_flag_and_shared_operands() {
    check("mm", &[(&[2, 3], ANY), (&[3, 4], ANY)], |e, x| {
        e.matmul(x[0], x[1], false, false).expect("op")
    });
    check("mm_ta", &[(&[3, 2], ANY), (&[3, 4], ANY)], |e, x| {
        e.matmul(x[0], x[1], true, false).expect("op")
    });
    check("mm_tb", &[(&[2, 3], ANY), (&[4, 3], ANY)], |e, x| {
        e.matmul(x[0], x[1], false, true).expect("op")
    });
    check("mm_ta_tb", &[(&[3, 2], ANY), (&[4, 3], ANY)], |e, x| {
        e.matmul(x[0], x[1], true, true).expect("op")
    });
    check("bmm", &[(&[2, 2, 3], ANY), (&[2, 3, 2], ANY)], |e, x| {
        e.matmul(x[0], x[1], false, false).expect("op")
    });
    check(
        "bmm_shared_b",
        &[(&[2, 2, 3], ANY), (&[4, 3], ANY)],
        |e, x| e.matmul(x[0], x[1], false, true).expect("op"),
    );
    check(
        "bmm_shared_a",
        &[(&[3, 2], ANY), (&[2, 3, 4], ANY)],
        |e, x| e.matmul(x[0], x[1], true, false).expect("op"),
    );
}

#[test]
fn reductions() {
    check("sum", &[(&[2, 3, 2], ANY)], |e, x| {
        e.reduce(ReduceOp::Sum, x[0], vec![1], false).expect("op")
    });
    check("sum_keep", &[(&[2, 3, 2], ANY)], |e, x| {
        e.reduce(ReduceOp::Sum, x[0], vec![0, 2], true).expect("op")
    });
    check("mean", &[(&[2, 3, 2], ANY)], |e, x| {
        e.reduce(ReduceOp::Mean, x[0], vec![2], true).expect("op")
    });
    check("amax", &[(&[2, 3], ANY)], |e, x| {
        e.reduce(ReduceOp::Max, x[0], vec![1], false).expect("op")
    });
    check("amin", &[(&[2, 3], ANY)], |e, x| {
        e.reduce(ReduceOp::Min, x[0], vec![0], true).expect("op")
    });
}

#[test]
fn layout_ops() {
    check("reshape", &[(&[2, 3], ANY)], |e, x| {
        e.reshape(x[0], &[3, 2]).expect("op")
    });
    check("transpose", &[(&[2, 3, 4], ANY)], |e, x| {
        e.transpose(x[0], vec![2, 0, 1]).expect("op")
    });
    check("broadcast", &[(&[3, 1], ANY)], |e, x| {
        e.broadcast(x[0], &[2, 3, 4]).expect("op")
    });
    check("concat", &[(&[2, 1], ANY), (&[2, 3], ANY)], |e, x| {
        e.op(Op::Concat { axis: 1 }, &[x[0], x[1], x[0]])
            .expect("op")
    });
    check("slice", &[(&[2, 5], ANY)], |e, x| {
        e.op(
            Op::Slice {
                axis: 1,
                start: 1,
                end: 3,
            },
            &[x[0]],
        )
        .expect("op")
    });
    check("gather", &[(&[5, 3], ANY)], |e, x| {
        let idx = e
            .op_typed(
                Op::Iota { axis: 1 },
                &[],
                TensorType::new(DType::I64, vec![2, 3]),
            )
            .expect("iota");
        e.op(Op::Gather { axis: 0 }, &[x[0], idx]).expect("op")
    });
}

#[test]
fn normalizers_and_casts() {
    check("softmax", &[(&[2, 4], ANY)], |e, x| {
        e.op(Op::Softmax { axis: 1 }, &[x[0]]).expect("op")
    });
    check("log_softmax", &[(&[2, 4], ANY)], |e, x| {
        e.op(Op::LogSoftmax { axis: 0 }, &[x[0]]).expect("op")
    });
    check("dropout", &[(&[4, 4], ANY)], |e, x| {
        let seed = e
            .constant(7.0, TensorType::scalar(DType::I64))
            .expect("seed");
        e.op(Op::Dropout { p: 0.25, stream: 3 }, &[x[0], seed])
            .expect("op")
    });
}

/// `stop_grad` is where autodiff and finite differences must disagree: for
/// L = Σ exp(stop_grad(x))·x the gradient is exp(x), not exp(x)·(1 + x).
#[test]
fn stop_grad_blocks_the_gradient() {
    let mut f = Function::new("stop");
    let x = f.add_input(
        "x",
        InputKind::Param,
        TensorType::new(DType::F64, vec![3]),
        None,
    );
    let mut e = Emitter::new(&mut f);
    let s = e.op(Op::StopGrad, &[x]).expect("stop");
    let s = e.un(UnaryOp::Exp, s).expect("exp");
    let y = e.mul(s, x).expect("mul");
    let loss = e.sum_all(y).expect("sum");
    let g = grad(&mut f, loss, &[x]).expect("grad")[0];
    f.add_output("g", g);
    let xs = vec![-0.5, 0.25, 1.5];
    let inputs = HashMap::from([(
        "x".to_string(),
        Tensor::f64(vec![3], xs.clone()).expect("tensor"),
    )]);
    let out = run(&f, &inputs).expect("run");
    for (got, x) in out[0].1.to_f64_vec().iter().zip(&xs) {
        assert!(
            (got - x.exp()).abs() <= 1e-12,
            "gradient {got} vs exp(x) = {} (tolerance 1e-12)",
            x.exp()
        );
    }
}

#[test]
fn frozen_inputs_get_no_gradient_nodes() {
    let mut f = Function::new("frozen");
    let w = f.add_input(
        "w",
        InputKind::Weight,
        TensorType::new(DType::F32, vec![4, 4]),
        None,
    );
    let a = f.add_input(
        "a",
        InputKind::Param,
        TensorType::new(DType::F32, vec![4, 4]),
        None,
    );
    let x = f.add_input(
        "x",
        InputKind::Data,
        TensorType::new(DType::F32, vec![2, 4]),
        None,
    );
    let mut e = Emitter::new(&mut f);
    let y = e.matmul(x, w, false, true).expect("xWᵀ");
    let z = e.matmul(y, a, false, true).expect("·Aᵀ");
    let loss = e.sum_all(z).expect("Σ");
    let n_fwd = f.nodes.len();
    let g = grad(&mut f, loss, &[a]).expect("grad");
    assert_eq!(g.len(), 1);
    // No backward node reads the frozen weight's adjoint or produces a [4, 4] from x and w's
    // gradient path: the only matmuls after the forward are dA = Gᵀ·y.
    let backward_matmuls: Vec<_> = f.nodes[n_fwd..]
        .iter()
        .filter(|n| matches!(n.op, Op::MatMul { .. }))
        .collect();
    assert_eq!(
        backward_matmuls.len(),
        1,
        "only dA is computed: {backward_matmuls:?}"
    );
    assert!(
        backward_matmuls[0].args.iter().all(|v| *v != x && *v != w),
        "dA reads the adjoint and y, not x or W"
    );
}
