//! Elementwise ops compiled through MLIR/LLVM against the reference interpreter: every unary
//! and binary op on every dtype that defines it, `select`, `cast` between all dtypes,
//! `constant` and `iota`, on random inputs and on special values (NaN, ±inf, ±0, extremes).
//!
//! Tolerance: 1e-5 relative per element for float results (in practice the results are
//! bit-identical: same operations, same libm, except `exp`, `sigmoid` and `silu` of `f32`,
//! whose `exp` is graft's arithmetic one, within 2 ulp of libm's, which
//! `f32_exp_is_within_two_ulp_of_libm` checks on its own); integer and bool results must be
//! equal.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Rng, check};
use graft_interp::{Data, Tensor};
use graft_ir::{BinaryOp, DType, Function, InputKind, Op, TensorType, UnaryOp};
use std::collections::HashMap;

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];
const TOL: f64 = 1e-5;

fn ty(dt: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dt, shape.to_vec())
}

/// Special float values followed by random ones, `n` in all.
fn special_floats(n: usize, seed: u64) -> Vec<f64> {
    let mut v = vec![
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -2.5,
        1e-30,
        65504.0,
        70000.0,
        3e38,
        -3e38,
        1e300,
        2147483647.5,
        -2147483649.0,
        9.3e18,
        -9.3e18,
        255.9,
        15.5,
        -0.7,
    ];
    let mut rng = Rng(seed);
    while v.len() < n {
        v.push(rng.uniform(-4.0, 4.0));
    }
    v.truncate(n);
    v
}

fn special_tensor(dt: DType, n: usize, seed: u64) -> Tensor {
    let v = special_floats(n, seed);
    let mut rng = Rng(seed ^ 77);
    let data = match dt {
        DType::F64 => Data::F64(v),
        DType::F32 | DType::BF16 | DType::F16 => Data::F32(v.iter().map(|&x| x as f32).collect()),
        DType::I64 => Data::I64(
            [i64::MIN, i64::MAX, 0, -1, 1, 255, 256, -7]
                .into_iter()
                .chain((0..).map(|_| (rng.next() as i64) >> (rng.next() % 60)))
                .take(n)
                .collect(),
        ),
        DType::I32 => Data::I32(
            [i32::MIN, i32::MAX, 0, -1, 1, 255, 256, -7]
                .into_iter()
                .chain((0..).map(|_| (rng.next() as i32) >> (rng.next() % 28)))
                .take(n)
                .collect(),
        ),
        DType::U8 => Data::U8((0..n).map(|i| (i * 37 % 256) as u8).collect()),
        DType::U4 => Data::U4((0..n).map(|i| (i * 7 % 16) as u8).collect()),
        DType::Bool => Data::Bool((0..n).map(|i| i % 3 == 0).collect()),
    };
    Tensor::new(ty(dt, &[n]), data).unwrap()
}

/// One function computing every op in `ops` of the inputs `x` (and `y`), one output each.
fn build(dt: DType, shape: &[usize], binary: bool, ops: &[Op]) -> (Function, Vec<String>) {
    let mut f = Function::new("ops");
    let x = f.add_input("x", InputKind::Data, ty(dt, shape), None);
    let y = f.add_input("y", InputKind::Data, ty(dt, shape), None);
    let mut names = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let args = if binary { vec![x, y] } else { vec![x] };
        let v = f.add(op.clone(), &args, None).unwrap();
        let name = format!("{}_{i}", op.name());
        f.add_output(name.clone(), v);
        names.push(name);
    }
    (f, names)
}

#[test]
fn unary_ops_on_floats() {
    let ops: Vec<Op> = UnaryOp::ALL
        .into_iter()
        .filter(|u| *u != UnaryOp::Not)
        .map(Op::Unary)
        .collect();
    for dt in FLOATS {
        let (f, _) = build(dt, &[3, 37], false, &ops);
        let inputs = common::random_inputs(&f, 1, -4.0, 4.0);
        check(&f, &inputs, TOL);
        let (f, _) = build(dt, &[40], false, &ops);
        let mut inputs = HashMap::new();
        inputs.insert("x".to_string(), special_tensor(dt, 40, 3));
        inputs.insert("y".to_string(), special_tensor(dt, 40, 4));
        check(&f, &inputs, TOL);
    }
}

#[test]
fn unary_ops_on_integers_and_bools() {
    for dt in [DType::I64, DType::I32] {
        let (f, _) = build(
            dt,
            &[24],
            false,
            &[Op::Unary(UnaryOp::Neg), Op::Unary(UnaryOp::Abs)],
        );
        let mut inputs = HashMap::new();
        inputs.insert("x".to_string(), special_tensor(dt, 24, 5));
        inputs.insert("y".to_string(), special_tensor(dt, 24, 6));
        check(&f, &inputs, 0.0);
    }
    for dt in [DType::U8, DType::U4] {
        let (f, _) = build(dt, &[2, 9], false, &[Op::Unary(UnaryOp::Abs)]);
        check(&f, &common::random_inputs(&f, 2, 0.0, 1.0), 0.0);
    }
    let (f, _) = build(DType::Bool, &[5, 3], false, &[Op::Unary(UnaryOp::Not)]);
    check(&f, &common::random_inputs(&f, 3, 0.0, 1.0), 0.0);
}

#[test]
fn binary_ops_on_every_dtype() {
    let arith = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
    ];
    let cmp = [
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
    ];
    for dt in FLOATS {
        let ops: Vec<Op> = arith
            .iter()
            .chain(&cmp)
            .chain(&[BinaryOp::Pow])
            .map(|&b| Op::Binary(b))
            .collect();
        let (f, _) = build(dt, &[4, 33], true, &ops);
        check(&f, &common::random_inputs(&f, 7, -3.0, 3.0), TOL);
        let (f, _) = build(dt, &[44], true, &ops);
        let mut inputs = HashMap::new();
        inputs.insert("x".to_string(), special_tensor(dt, 44, 8));
        inputs.insert("y".to_string(), special_tensor(dt, 44, 9));
        check(&f, &inputs, TOL);
    }
    for dt in [DType::I64, DType::I32] {
        let ops: Vec<Op> = arith.iter().chain(&cmp).map(|&b| Op::Binary(b)).collect();
        let (f, _) = build(dt, &[30], true, &ops);
        let mut inputs = HashMap::new();
        inputs.insert("x".to_string(), special_tensor(dt, 30, 10));
        // Divisors: no zero (that is an error, tested separately), but -1 and extremes.
        let mut y = special_tensor(dt, 30, 11).to_f64_vec();
        for v in &mut y {
            if *v == 0.0 {
                *v = -1.0;
            }
        }
        let y = match dt {
            DType::I64 => Tensor::i64(vec![30], y.iter().map(|&v| v as i64).collect()),
            _ => Tensor::i32(vec![30], y.iter().map(|&v| v as i32).collect()),
        };
        inputs.insert("y".to_string(), y.unwrap());
        check(&f, &inputs, 0.0);
    }
    for dt in [DType::U8, DType::U4] {
        let ops: Vec<Op> = [BinaryOp::Max, BinaryOp::Min]
            .iter()
            .chain(&cmp)
            .map(|&b| Op::Binary(b))
            .collect();
        let (f, _) = build(dt, &[3, 11], true, &ops);
        check(&f, &common::random_inputs(&f, 12, 0.0, 1.0), 0.0);
    }
    let ops: Vec<Op> = [BinaryOp::And, BinaryOp::Or, BinaryOp::Max, BinaryOp::Min]
        .iter()
        .chain(&cmp)
        .map(|&b| Op::Binary(b))
        .collect();
    let (f, _) = build(DType::Bool, &[17], true, &ops);
    check(&f, &common::random_inputs(&f, 13, 0.0, 1.0), 0.0);
}

#[test]
fn select_picks_elementwise() {
    for dt in [DType::F32, DType::I64, DType::Bool, DType::BF16] {
        let mut f = Function::new("sel");
        let c = f.add_input("c", InputKind::Data, ty(DType::Bool, &[5, 6]), None);
        let a = f.add_input("a", InputKind::Data, ty(dt, &[5, 6]), None);
        let b = f.add_input("b", InputKind::Data, ty(dt, &[5, 6]), None);
        let s = f.add(Op::Select, &[c, a, b], None).unwrap();
        f.add_output("s", s);
        check(&f, &common::random_inputs(&f, 14, -9.0, 9.0), 0.0);
    }
}

#[test]
fn casts_between_every_pair_of_dtypes() {
    for from in DType::ALL {
        let mut f = Function::new("cast");
        let x = f.add_input("x", InputKind::Data, ty(from, &[48]), None);
        for to in DType::ALL {
            let c = f
                .add_typed(Op::Cast, &[x], Some(ty(to, &[48])), None)
                .unwrap();
            f.add_output(format!("to_{to}"), c);
        }
        let mut inputs = HashMap::new();
        inputs.insert("x".to_string(), special_tensor(from, 48, 15));
        check(&f, &inputs, TOL);
    }
}

#[test]
fn constants_and_iota_in_every_dtype() {
    let mut f = Function::new("fill");
    for dt in DType::ALL {
        for value in [0.0, 1.0, -2.75, 300.7, 1e10, f64::NAN, f64::NEG_INFINITY] {
            let c = f
                .add_typed(Op::Constant { value }, &[], Some(ty(dt, &[2, 3])), None)
                .unwrap();
            f.add_output(format!("c_{dt}_{value}"), c);
        }
        for axis in 0..3 {
            let i = f
                .add_typed(Op::Iota { axis }, &[], Some(ty(dt, &[3, 20, 4])), None)
                .unwrap();
            f.add_output(format!("iota_{dt}_{axis}"), i);
        }
    }
    check(&f, &HashMap::new(), 0.0);
}

#[test]
fn fused_chains_match_node_by_node_evaluation() {
    // gelu-ish / rms-norm-ish chains with broadcasts, all fused into few kernels.
    let mut f = Function::new("chain");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[6, 40]), None);
    let g = f.add_input("g", InputKind::Data, ty(DType::F32, &[40]), None);
    let gb = f
        .add_typed(Op::Broadcast, &[g], Some(ty(DType::F32, &[6, 40])), None)
        .unwrap();
    let half = f
        .add_typed(
            Op::Constant { value: 0.5 },
            &[],
            Some(ty(DType::F32, &[6, 40])),
            None,
        )
        .unwrap();
    let t = f.add(Op::Unary(UnaryOp::Tanh), &[x], None).unwrap();
    let m = f.add(Op::Binary(BinaryOp::Mul), &[t, half], None).unwrap();
    // relu, not silu: `e` (the bf16 round trip's error) is ill-conditioned, one ulp of `y`
    // can move it by a bf16 ulp, so `y` must be exact (silu's exp is within 2 ulp only).
    let s = f.add(Op::Unary(UnaryOp::Relu), &[m], None).unwrap();
    let y = f.add(Op::Binary(BinaryOp::Mul), &[s, gb], None).unwrap();
    let c = f
        .add_typed(Op::Cast, &[y], Some(ty(DType::BF16, &[6, 40])), None)
        .unwrap();
    let d = f
        .add_typed(Op::Cast, &[c], Some(ty(DType::F32, &[6, 40])), None)
        .unwrap();
    let e = f.add(Op::Binary(BinaryOp::Sub), &[d, y], None).unwrap();
    f.add_output("y", y);
    f.add_output("e", e);
    let compiled = graft_codegen::compile(&f).unwrap();
    assert!(
        compiled.kernel_count() <= 2,
        "expected the chain to fuse: {:?}",
        compiled.kernel_summary()
    );
    check(&f, &common::random_inputs(&f, 16, -2.0, 2.0), TOL);
}

#[test]
fn f32_exp_is_within_two_ulp_of_libm() {
    // Every 97th f32 bit pattern between -104 and 89 (about 20 million values), plus the
    // edges: the compiled `exp` against Rust's `f32::exp` (the interpreter's), in ulps of the
    // reference; NaN, ±inf, overflow and underflow exactly.
    let mut xs: Vec<f32> = Vec::new();
    let mut bits = 0u32;
    while bits < 0xffff_ffff - 97 {
        let x = f32::from_bits(bits);
        if (-104.0..=89.0).contains(&x) {
            xs.push(x);
        }
        bits += 97;
    }
    xs.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        88.72,
        88.73,
        -87.33,
        -103.9,
        -150.0,
        1e-30,
    ]);
    let n = xs.len();
    let mut f = Function::new("exp");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[n]), None);
    let e = f.add(Op::Unary(UnaryOp::Exp), &[x], None).unwrap();
    f.add_output("e", e);
    let inputs = HashMap::from([("x".to_string(), Tensor::f32(vec![n], xs.clone()).unwrap())]);
    let out = graft_codegen::compile(&f).unwrap().run(&inputs).unwrap();
    let Data::F32(got) = out[0].1.data() else {
        panic!("not f32")
    };
    let mut worst = 0u32;
    for (x, g) in xs.iter().zip(got) {
        let want = x.exp();
        if want.is_nan() {
            assert!(g.is_nan(), "exp({x}) = {g}");
            continue;
        }
        let ulps = (g.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
        assert!(ulps <= 2, "exp({x}) = {g}, libm says {want} ({ulps} ulp)");
        worst = worst.max(ulps);
    }
    eprintln!("{n} values, worst {worst} ulp");
}
