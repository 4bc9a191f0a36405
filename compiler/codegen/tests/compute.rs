//! Accumulating ops and layout ops compiled through MLIR/LLVM against the interpreter:
//! `matmul` (every transpose flag, batched and shared operands, tails, threading, f64/bf16),
//! reductions, `softmax`/`log_softmax`, and `gather`. Layout ops alone and fused into
//! consumers are a file test (`tests/filetests/schedule/layout_ops.ir`).
//!
//! Tolerances: matmul 1e-4 norm-wise relative (`f32` GEMM accumulates in `f32` with FMA; the
//! interpreter in `f64`); reductions and softmax 1e-5 element-wise (both accumulate in `f64`);
//! layout ops exact.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{check, check_norm, check_with, random_inputs};
use graft_codegen::compile;
use graft_ir::{BinaryOp, DType, Function, InputKind, Op, ReduceOp, TensorType, UnaryOp, ValueId};
use std::collections::HashMap;

fn ty(dt: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dt, shape.to_vec())
}

fn matmul_fn(dt: DType, a: &[usize], b: &[usize], ta: bool, tb: bool) -> Function {
    let mut f = Function::new("mm");
    let x = f.add_input("a", InputKind::Data, ty(dt, a), None);
    let y = f.add_input("b", InputKind::Data, ty(dt, b), None);
    let c = f.add(Op::MatMul { ta, tb }, &[x, y], None).unwrap();
    f.add_output("c", c);
    f
}

#[test]
fn matmul_every_transpose_and_tail() {
    for (m, k, n) in [
        (1, 1, 1),
        (5, 7, 9),
        (6, 16, 16),
        (13, 3, 33),
        (17, 300, 40),
        (64, 64, 4),
    ] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if ta { [k, m] } else { [m, k] };
            let b = if tb { [n, k] } else { [k, n] };
            let f = matmul_fn(DType::F32, &a, &b, ta, tb);
            check_norm(&f, &random_inputs(&f, 1, -1.0, 1.0), 1e-4);
        }
    }
}

#[test]
fn matmul_with_every_vector_shape() {
    // The host's shape is tested everywhere; the AVX2 (8 lanes) and SSE/NEON (4 lanes)
    // shapes run here too, since the JIT targets the host whatever the vector width.
    let shapes = [
        graft_codegen::CpuTarget::from_features(|f| f == "avx2"),
        graft_codegen::CpuTarget::from_features(|_| false),
        graft_codegen::CpuTarget::from_features(|f| f == "avx512f"),
    ];
    for target in shapes {
        // 45 columns read A in place with 32-wide panels and pack it with narrower ones;
        // 140 columns pack A for every shape.
        for (a, b, ta, tb) in [
            (vec![37, 300], vec![300, 45], false, false),
            (vec![2, 300, 13], vec![2, 45, 300], true, true),
            (vec![37, 300], vec![140, 300], false, true),
            (vec![2, 300, 13], vec![2, 300, 140], true, false),
        ] {
            let f = matmul_fn(DType::F32, &a, &b, ta, tb);
            let inputs = random_inputs(&f, 21, -1.0, 1.0);
            let want = graft_interp::run(&f, &inputs).unwrap();
            let got = graft_codegen::compile_for(&f, &target)
                .unwrap()
                .run(&inputs)
                .unwrap();
            let scale = want[0]
                .1
                .to_f64_vec()
                .iter()
                .fold(0f64, |m, x| m.max(x.abs()));
            let e = common::rel_err(&got[0].1, &want[0].1, scale);
            assert!(e <= 1e-4, "{target:?}: {e:e}");
        }
    }
}

#[test]
fn matmul_batched_and_shared_operands() {
    let cases: [(&[usize], &[usize], bool, bool); 5] = [
        (&[3, 5, 7], &[3, 7, 4], false, false),
        (&[2, 3, 5, 7], &[7, 9], false, false),
        (&[8, 6], &[2, 2, 6, 10], false, false),
        (&[2, 3, 7, 5], &[2, 3, 9, 7], true, true),
        (&[4, 16, 8], &[4, 16, 8], false, true),
    ];
    for (a, b, ta, tb) in cases {
        let f = matmul_fn(DType::F32, a, b, ta, tb);
        check_norm(&f, &random_inputs(&f, 2, -1.0, 1.0), 1e-4);
    }
}

#[test]
fn matmul_large_enough_to_thread_and_block_k() {
    // K = 600 spans three KC blocks; 200 rows split across threads.
    let f = matmul_fn(DType::F32, &[200, 600], &[600, 70], false, false);
    check_norm(&f, &random_inputs(&f, 3, -1.0, 1.0), 1e-4);
    let f = matmul_fn(DType::F32, &[600, 130], &[90, 600], true, true);
    check_norm(&f, &random_inputs(&f, 4, -1.0, 1.0), 1e-4);
}

#[test]
fn gemms_with_more_weight_than_activation_split_panels_across_threads() {
    // B (shared by both batches) outweighs A, so threads split B's panels: 8 panels, the
    // last one partial (230 = 7·32 + 6), over 1, 2 and 3 threads (the thread whose range
    // ends the GEMM takes the partial panel); rows 25 per batch (a row tail), K = 300 (two
    // KC blocks), B read as stored and transposed. Against the interpreter, 1e-4 norm-wise.
    for tb in [false, true] {
        let b = if tb { [230, 300] } else { [300, 230] };
        let f = matmul_fn(DType::F32, &[2, 25, 300], &b, false, tb);
        let inputs = random_inputs(&f, 13, -1.0, 1.0);
        let want = graft_interp::run(&f, &inputs).unwrap();
        for threads in [1, 2, 3] {
            let c = compile(&f).unwrap().with_threads(threads);
            assert!(
                c.mlir().contains("arith.addi %lo"),
                "the GEMM does not split its panels"
            );
            let got = c.run(&inputs).unwrap();
            let (g, w) = (got[0].1.to_f64_vec(), want[0].1.to_f64_vec());
            let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
            let err = g
                .iter()
                .zip(&w)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-4 * scale, "{threads} threads: error {err:e}");
        }
    }
}

#[test]
fn matmul_in_other_float_types_accumulates_in_f64() {
    for dt in [DType::F64, DType::BF16, DType::F16] {
        let f = matmul_fn(dt, &[2, 5, 7], &[7, 3], false, false);
        check(&f, &random_inputs(&f, 5, -1.0, 1.0), 0.0);
        let f = matmul_fn(dt, &[7, 5], &[3, 7], true, true);
        check(&f, &random_inputs(&f, 6, -1.0, 1.0), 0.0);
    }
}

#[test]
fn matmul_with_empty_contraction_is_zero() {
    let f = matmul_fn(DType::F32, &[3, 0], &[0, 5], false, false);
    check(&f, &random_inputs(&f, 7, -1.0, 1.0), 0.0);
}

#[test]
fn reductions_over_any_axes() {
    let shape = [3, 4, 5];
    let axes_sets: [&[usize]; 6] = [&[], &[0], &[1], &[2], &[0, 2], &[0, 1, 2]];
    for dt in [DType::F32, DType::F64, DType::BF16] {
        let mut f = Function::new("red");
        let x = f.add_input("x", InputKind::Data, ty(dt, &shape), None);
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
            for (i, axes) in axes_sets.iter().enumerate() {
                for keepdim in [false, true] {
                    let r = f
                        .add(
                            Op::Reduce {
                                op,
                                axes: axes.to_vec(),
                                keepdim,
                            },
                            &[x],
                            None,
                        )
                        .unwrap();
                    f.add_output(format!("{}_{i}_{keepdim}", op.name()), r);
                }
            }
        }
        check(&f, &random_inputs(&f, 8, -3.0, 3.0), 1e-5);
    }
    for dt in [DType::I64, DType::I32, DType::U8, DType::Bool] {
        let mut f = Function::new("red");
        let x = f.add_input("x", InputKind::Data, ty(dt, &shape), None);
        for op in [ReduceOp::Max, ReduceOp::Min] {
            for (i, axes) in axes_sets.iter().enumerate() {
                let r = f
                    .add(
                        Op::Reduce {
                            op,
                            axes: axes.to_vec(),
                            keepdim: false,
                        },
                        &[x],
                        None,
                    )
                    .unwrap();
                f.add_output(format!("{}_{i}", op.name()), r);
            }
        }
        check(&f, &random_inputs(&f, 9, -100.0, 100.0), 0.0);
    }
}

/// Reductions that keep the operand's last axis and reduce at most 16 elements per output run
/// by rows (a loop along the last axis, the reduction inside it), others per output element:
/// both against the interpreter, with fused operands (a product and a `concat`, like the
/// vocabulary-chunked loss's two-term stored sums), reduced axes not next to each other,
/// NaN, and outputs spread over threads. Sums of at most 51 terms accumulate in `f64`:
/// relative error 1e-6.
#[test]
fn reductions_keeping_the_last_axis_run_by_rows() {
    let mut f = Function::new("rows");
    let a = f.add_input("a", InputKind::Data, ty(DType::F32, &[2, 5, 33]), None);
    let b = f.add_input("b", InputKind::Data, ty(DType::F32, &[2, 5, 33]), None);
    let c = f.add_input("c", InputKind::Data, ty(DType::F32, &[17, 3, 40]), None);
    let ab = f.add(Op::Binary(BinaryOp::Mul), &[a, b], None).unwrap();
    let one = |f: &mut Function, v| {
        f.add_typed(
            Op::Reshape,
            &[v],
            Some(ty(DType::F32, &[1, 2, 5, 33])),
            None,
        )
        .unwrap()
    };
    let (x0, x1) = (one(&mut f, ab), one(&mut f, a));
    let x = f.add(Op::Concat { axis: 0 }, &[x0, x1], None).unwrap();
    let cases: [(ValueId, ReduceOp, &[usize]); 7] = [
        (x, ReduceOp::Sum, &[0]),
        (x, ReduceOp::Sum, &[0, 1]),
        (x, ReduceOp::Mean, &[0, 2]),
        (x, ReduceOp::Max, &[1]),
        (c, ReduceOp::Sum, &[0]),
        (c, ReduceOp::Mean, &[0, 1]),
        (c, ReduceOp::Min, &[1]),
    ];
    for (i, (v, op, axes)) in cases.into_iter().enumerate() {
        for keepdim in [false, true] {
            let r = f
                .add(
                    Op::Reduce {
                        op,
                        axes: axes.to_vec(),
                        keepdim,
                    },
                    &[v],
                    None,
                )
                .unwrap();
            f.add_output(format!("r{i}_{keepdim}"), r);
        }
    }
    let mut inputs = random_inputs(&f, 21, -2.0, 2.0);
    let mut a_vals = inputs["a"].to_f64_vec();
    a_vals[40] = f64::NAN;
    inputs.insert(
        "a".into(),
        graft_interp::Tensor::f32(vec![2, 5, 33], a_vals.iter().map(|&v| v as f32).collect())
            .unwrap(),
    );
    check(&f, &inputs, 1e-6);
}

#[test]
fn reductions_propagate_nan_and_fuse_their_operand() {
    let mut f = Function::new("red");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[4, 6]), None);
    let sq = f.add(Op::Binary(BinaryOp::Mul), &[x, x], None).unwrap();
    let s = f
        .add(
            Op::Reduce {
                op: ReduceOp::Mean,
                axes: vec![1],
                keepdim: true,
            },
            &[sq],
            None,
        )
        .unwrap();
    let m = f
        .add(
            Op::Reduce {
                op: ReduceOp::Max,
                axes: vec![0],
                keepdim: false,
            },
            &[x],
            None,
        )
        .unwrap();
    f.add_output("ms", s);
    f.add_output("max", m);
    let compiled = graft_codegen::compile(&f).unwrap();
    assert_eq!(
        compiled.kernel_count(),
        2,
        "{:?}",
        compiled.kernel_summary()
    );
    let mut inputs = random_inputs(&f, 10, -3.0, 3.0);
    let mut v = inputs["x"].as_f32().unwrap().to_vec();
    v[7] = f32::NAN;
    v[1] = f32::INFINITY;
    inputs.insert(
        "x".into(),
        graft_interp::Tensor::f32(vec![4, 6], v).unwrap(),
    );
    check(&f, &inputs, 1e-5);
}

/// A float max or min over a last axis that is a multiple of 16 long runs as 16 interleaved
/// accumulators (which LLVM vectorizes): against the interpreter exactly, in `f32`, `f64`
/// and `bf16`, with rows holding a NaN (in the middle of a lane), `+inf`, only `-inf`, their
/// extremum in the last element or in the first, and a fused operand (`x · x − x`).
#[test]
fn max_and_min_over_a_long_last_axis_run_split() {
    for dt in [DType::F32, DType::F64, DType::BF16] {
        let mut f = Function::new("red");
        let x = f.add_input("x", InputKind::Data, ty(dt, &[2, 3, 48]), None);
        let sq = f.add(Op::Binary(BinaryOp::Mul), &[x, x], None).unwrap();
        let y = f.add(Op::Binary(BinaryOp::Sub), &[sq, x], None).unwrap();
        for (name, v) in [("x", x), ("y", y)] {
            for op in [ReduceOp::Max, ReduceOp::Min] {
                for keepdim in [false, true] {
                    let r = f
                        .add(
                            Op::Reduce {
                                op,
                                axes: vec![2],
                                keepdim,
                            },
                            &[v],
                            None,
                        )
                        .unwrap();
                    f.add_output(format!("{}_{name}_{keepdim}", op.name()), r);
                }
            }
        }
        let compiled = compile(&f).unwrap();
        assert!(
            compiled.mlir().contains(":16 = scf.for"),
            "{dt:?}: not split"
        );
        let mut inputs = random_inputs(&f, 12, -3.0, 3.0);
        let mut v = inputs["x"].to_f64_vec();
        v[20] = f64::NAN; // row 0
        v[48 + 5] = f64::INFINITY; // row 1
        v[2 * 48..3 * 48].fill(f64::NEG_INFINITY); // row 2
        v[3 * 48 + 47] = 100.0; // row 3: largest last
        v[4 * 48] = -100.0; // row 4: smallest first
        let t = match dt {
            DType::F64 => graft_interp::Tensor::f64(vec![2, 3, 48], v),
            DType::F32 => {
                graft_interp::Tensor::f32(vec![2, 3, 48], v.iter().map(|&x| x as f32).collect())
            }
            _ => graft_interp::Tensor::bf16(vec![2, 3, 48], v.iter().map(|&x| x as f32).collect()),
        };
        inputs.insert("x".into(), t.unwrap());
        check(&f, &inputs, 0.0);
    }
}

#[test]
fn softmax_and_log_softmax_on_every_axis() {
    for dt in [DType::F32, DType::F64, DType::BF16] {
        let mut f = Function::new("sm");
        // The last axis is 16 long: the max pass's eight-way split (other axes: one chain).
        let x = f.add_input("x", InputKind::Data, ty(dt, &[3, 5, 16]), None);
        for axis in 0..3 {
            let s = f.add(Op::Softmax { axis }, &[x], None).unwrap();
            let l = f.add(Op::LogSoftmax { axis }, &[x], None).unwrap();
            f.add_output(format!("s{axis}"), s);
            f.add_output(format!("l{axis}"), l);
        }
        let mut inputs = random_inputs(&f, 11, -20.0, 20.0);
        if dt == DType::F32 {
            let mut v = inputs["x"].as_f32().unwrap().to_vec();
            v[0] = f32::INFINITY;
            v[40] = f32::NAN;
            v[50] = f32::NEG_INFINITY;
            inputs.insert(
                "x".into(),
                graft_interp::Tensor::f32(vec![3, 5, 16], v).unwrap(),
            );
        }
        check(&f, &inputs, 1e-5);
    }
}

/// Attention's causal mask (`-1e30`) and differences near the bottom of `f32`'s normal range:
/// the kernel flushes `exp(x - max)` below `2⁻¹²⁵` to zero (no subnormal arithmetic), which
/// moves no output by more than that (checked against the interpreter with a 1e-30 floor:
/// relative 1e-5 above it, absolute 1e-35 below). Masked entries are exactly zero.
#[test]
fn softmax_of_masked_and_tiny_terms() {
    let mut f = Function::new("sm");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[3, 16]), None);
    let s = f.add(Op::Softmax { axis: 1 }, &[x], None).unwrap();
    let l = f.add(Op::LogSoftmax { axis: 1 }, &[x], None).unwrap();
    f.add_output("s", s);
    f.add_output("l", l);
    let row = [
        0.0, -1e30, -86.0, -86.4, -86.6, -87.0, -87.4, -90.0, -100.0, -103.0, -104.5, -1e30, 1.5,
        -1e30, -0.25, -1e30,
    ];
    let v: Vec<f32> = (0..3).flat_map(|r| row.map(|x| x + r as f32)).collect();
    let mut inputs = HashMap::new();
    inputs.insert(
        "x".into(),
        graft_interp::Tensor::f32(vec![3, 16], v).unwrap(),
    );
    check_with(&f, &inputs, 1e-5, 1e-30);
    let got = compile(&f).unwrap().run(&inputs).unwrap();
    let probs = got[0].1.as_f32().unwrap();
    assert!(
        probs
            .iter()
            .enumerate()
            .filter(|(i, _)| row[i % 16] < -1e29)
            .all(|(_, &p)| p == 0.0),
        "masked entries are not exactly zero: {probs:?}"
    );
}

/// A large `log_softmax` (≥ 2¹² elements) is decomposed into `x − lse(x)`, recomputed by
/// each consumer (here two: a masked sum, as the loss's, and an `exp`, as its gradient's),
/// with `lse` stored: against the interpreter at 1e-5 (floor 1e-6), including slices with
/// NaN, +inf and all -inf, which are NaN throughout. Not stored: the memory plan holds no
/// buffer of the log-probabilities' size besides the input and the `exp` output.
#[test]
fn large_log_softmax_is_recomputed_from_its_input() {
    let (rows, cols) = (64, 1100);
    let mut f = Function::new("ls");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[rows, cols]), None);
    let l = f.add(Op::LogSoftmax { axis: 1 }, &[x], None).unwrap();
    let zero = f
        .add_typed(
            Op::Constant { value: 0.0 },
            &[],
            Some(ty(DType::F32, &[rows, cols])),
            None,
        )
        .unwrap();
    let neg = f.add(Op::Binary(BinaryOp::Lt), &[l, zero], None).unwrap();
    let picked = f.add(Op::Select, &[neg, l, zero], None).unwrap();
    let loss = f
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![1],
                keepdim: false,
            },
            &[picked],
            None,
        )
        .unwrap();
    let p = f.add(Op::Unary(UnaryOp::Exp), &[l], None).unwrap();
    f.add_output("loss", loss);
    f.add_output("p", p);
    let mut inputs = random_inputs(&f, 17, -30.0, 30.0);
    let mut v = inputs["x"].as_f32().unwrap().to_vec();
    v[3 * cols + 5] = f32::NAN;
    v[7 * cols + 9] = f32::INFINITY;
    v[9 * cols..10 * cols].fill(f32::NEG_INFINITY);
    inputs.insert(
        "x".into(),
        graft_interp::Tensor::f32(vec![rows, cols], v).unwrap(),
    );
    check(&f, &inputs, 1e-5);
    let c = compile(&f).unwrap();
    let report = c.memory();
    let slice = 4 * rows * cols;
    assert!(
        report.arena_bytes < slice / 2,
        "the log-probabilities were stored: arena {} bytes for {slice}-byte values",
        report.arena_bytes
    );
}

/// Attention-shaped: `p = softmax(q·kᵀ + mask)` is read right away (`p·v`) and again, by a
/// matmul, after 40 unrelated nodes (as a backward pass reads it; `q` and `k` are inputs):
/// `p` is recomputed for its late reader instead of kept (the compiled graph has a second
/// softmax, which the late product reads), with the interpreter's results
/// (1e-4 norm-wise, as every matmul here).
#[test]
fn long_lived_attention_probabilities_are_recomputed() {
    let (b, h, s, d) = (2, 8, 64, 32);
    let mut f = Function::new("attn");
    let q = f.add_input("q", InputKind::Data, ty(DType::F32, &[b, h, s, d]), None);
    let k = f.add_input("k", InputKind::Data, ty(DType::F32, &[b, h, d, s]), None);
    let v = f.add_input("v", InputKind::Data, ty(DType::F32, &[b, h, s, d]), None);
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[s, s]), None);
    let mask = f
        .add_typed(
            Op::Broadcast,
            &[x],
            Some(ty(DType::F32, &[b, h, s, s])),
            None,
        )
        .unwrap();
    let mm = Op::MatMul {
        ta: false,
        tb: false,
    };
    let scores = f.add(mm.clone(), &[q, k], None).unwrap();
    let scores = f
        .add(Op::Binary(BinaryOp::Add), &[scores, mask], None)
        .unwrap();
    let p = f.add(Op::Softmax { axis: 3 }, &[scores], None).unwrap();
    let o = f.add(mm, &[p, v], None).unwrap();
    let mut t = v;
    for _ in 0..40 {
        t = f.add(Op::Unary(UnaryOp::Tanh), &[t], None).unwrap();
    }
    let late = f
        .add(
            Op::MatMul {
                ta: false,
                tb: false,
            },
            &[p, t],
            None,
        )
        .unwrap();
    let qt = f.add(Op::Binary(BinaryOp::Mul), &[q, t], None).unwrap();
    let sum = |f: &mut Function, x| {
        f.add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![3],
                keepdim: false,
            },
            &[x],
            None,
        )
        .unwrap()
    };
    let qt = sum(&mut f, qt);
    let kk = sum(&mut f, k);
    f.add_output("o", o);
    f.add_output("late", late);
    f.add_output("qt", qt);
    f.add_output("k", kk);
    let inputs = random_inputs(&f, 23, -1.0, 1.0);
    check_norm(&f, &inputs, 1e-4);
    let c = compile(&f).unwrap();
    let g = c.function();
    let softmaxes: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| matches!(g.nodes[i].op, Op::Softmax { .. }))
        .collect();
    assert_eq!(softmaxes.len(), 2, "the probabilities are not recomputed");
    // The early product reads the first softmax, the late one the second.
    let readers = |sm: usize| {
        (0..g.nodes.len())
            .filter(|&i| matches!(g.nodes[i].op, Op::MatMul { .. }))
            .filter(|&i| g.nodes[i].args.first().map(|a| a.index()) == Some(sm))
            .count()
    };
    assert_eq!((readers(softmaxes[0]), readers(softmaxes[1])), (1, 1));
}

#[test]
fn gather_with_i64_and_i32_indices() {
    for idt in [DType::I64, DType::I32] {
        let mut f = Function::new("gather");
        let table = f.add_input("t", InputKind::Data, ty(DType::F32, &[10, 4, 3]), None);
        let idx = f.add_input("i", InputKind::Data, ty(idt, &[2, 5]), None);
        let g0 = f.add(Op::Gather { axis: 0 }, &[table, idx], None).unwrap();
        let idx1 = f.add_input("j", InputKind::Data, ty(idt, &[6]), None);
        let g1 = f.add(Op::Gather { axis: 1 }, &[table, idx1], None).unwrap();
        let g2 = f.add(Op::Gather { axis: 2 }, &[table, idx1], None).unwrap();
        // Gathered then fused into arithmetic.
        let sc = f.add(Op::Unary(UnaryOp::Tanh), &[g0], None).unwrap();
        f.add_output("g0", g0);
        f.add_output("g1", g1);
        f.add_output("sc", sc);
        let mut inputs = random_inputs(&f, 13, -1.0, 1.0);
        let mut rng = common::Rng(99);
        let mk = |n: usize, hi: usize, rng: &mut common::Rng| -> Vec<i64> {
            (0..n).map(|_| (rng.next() % hi as u64) as i64).collect()
        };
        let (i, j) = (mk(10, 10, &mut rng), mk(6, 3, &mut rng));
        let t = |shape: Vec<usize>, v: Vec<i64>| match idt {
            DType::I64 => graft_interp::Tensor::i64(shape, v).unwrap(),
            _ => graft_interp::Tensor::i32(shape, v.iter().map(|&x| x as i32).collect()).unwrap(),
        };
        inputs.insert("i".into(), t(vec![2, 5], i));
        inputs.insert("j".into(), t(vec![6], j));
        // g2 gathers along an axis of extent 3 with the same indices (all < 3).
        f.add_output("g2", g2);
        check(&f, &inputs, 0.0);
    }
}

#[test]
fn threaded_runs_are_bit_identical_to_single_threaded_ones() {
    // Every kernel splits its outer range into per-thread chunks; each element is computed
    // the same way whatever the split, so results must match bit for bit.
    let mut f = Function::new("threads");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[96, 200]), None);
    let w = f.add_input("w", InputKind::Data, ty(DType::F32, &[300, 200]), None);
    let h = f
        .add(
            Op::MatMul {
                ta: false,
                tb: true,
            },
            &[x, w],
            None,
        )
        .unwrap();
    let a = f.add(Op::Unary(UnaryOp::Silu), &[h], None).unwrap();
    let s = f.add(Op::Softmax { axis: 1 }, &[a], None).unwrap();
    let r = f
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![0],
                keepdim: false,
            },
            &[a],
            None,
        )
        .unwrap();
    f.add_output("s", s);
    f.add_output("r", r);
    let inputs = random_inputs(&f, 31, -1.0, 1.0);
    let one = graft_codegen::compile(&f)
        .unwrap()
        .with_threads(1)
        .run(&inputs)
        .unwrap();
    let many = graft_codegen::compile(&f)
        .unwrap()
        .with_threads(7)
        .run(&inputs)
        .unwrap();
    assert_eq!(one, many);
    check_norm(&f, &inputs, 1e-4);
}

#[test]
fn empty_tensors_and_empty_reductions() {
    let mut f = Function::new("empty");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[0, 3]), None);
    let y = f.add_input("y", InputKind::Data, ty(DType::F32, &[2, 3]), None);
    let e = f.add(Op::Unary(UnaryOp::Exp), &[x], None).unwrap();
    let s = f
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![0],
                keepdim: false,
            },
            &[x],
            None,
        )
        .unwrap();
    let m = f
        .add(
            Op::Reduce {
                op: ReduceOp::Mean,
                axes: vec![0],
                keepdim: true,
            },
            &[x],
            None,
        )
        .unwrap();
    let c = f.add(Op::Concat { axis: 0 }, &[x, y, x], None).unwrap();
    let t = f.add(Op::Unary(UnaryOp::Tanh), &[c], None).unwrap();
    for (name, v) in [("e", e), ("s", s), ("m", m), ("t", t)] {
        f.add_output(name, v);
    }
    check(&f, &random_inputs(&f, 41, -1.0, 1.0), 0.0);
}

/// Kernels of an `f32` matmul with `n` result columns on this host: pack B and the GEMM, and
/// pack A when more than two `NR`-wide panels of B pass over A.
fn kernels_per_matmul(n: usize) -> usize {
    2 + usize::from(n.div_ceil(graft_codegen::CpuTarget::host().nr) > 2)
}

#[test]
fn an_add_of_a_matmul_becomes_the_gemm_epilogue() {
    // y = x·Wᵀ + x·Aᵀ·Bᵀ (a LoRA-shaped sum; x batched, every extent a tail of the register
    // tile, K over one K block so both the addend and the running sum are exercised), then
    // z = y·V + c: the first sum is read by a matmul (so it is stored), the second is an
    // output. Both adds must be GEMM epilogues: no add kernel is left.
    let t = |s: &[usize]| ty(DType::F32, s);
    let mut f = Function::new("epilogue");
    let x = f.add_input("x", InputKind::Data, t(&[2, 13, 300]), None);
    let w = f.add_input("w", InputKind::Weight, t(&[45, 300]), None);
    let a = f.add_input("a", InputKind::Param, t(&[8, 300]), None);
    let b = f.add_input("b", InputKind::Param, t(&[45, 8]), None);
    // 100 columns: more than two panels of B on any host, so y·V packs its A.
    let v = f.add_input("v", InputKind::Weight, t(&[45, 100]), None);
    let c = f.add_input("c", InputKind::Data, t(&[2, 13, 100]), None);
    let tb = Op::MatMul {
        ta: false,
        tb: true,
    };
    let base = f.add(tb.clone(), &[x, w], None).unwrap();
    let down = f.add(tb.clone(), &[x, a], None).unwrap();
    let up = f.add(tb, &[down, b], None).unwrap();
    let y = f.add(Op::Binary(BinaryOp::Add), &[base, up], None).unwrap();
    let mm = Op::MatMul {
        ta: false,
        tb: false,
    };
    let yv = f.add(mm, &[y, v], None).unwrap();
    let z = f.add(Op::Binary(BinaryOp::Add), &[c, yv], None).unwrap();
    f.add_output("z", z);
    let compiled = graft_codegen::compile(&f).unwrap();
    let kernels = compiled.kernel_summary();
    assert!(
        kernels.iter().all(|k| !k.contains("_add ")),
        "an add kernel is left: {kernels:?}"
    );
    // Per matmul: pack B and the GEMM, plus pack A when over two panels of B pass over it.
    assert_eq!(
        kernels.len(),
        [45, 8, 45, 100]
            .map(kernels_per_matmul)
            .iter()
            .sum::<usize>(),
        "{kernels:?}"
    );
    check_norm(&f, &random_inputs(&f, 21, -1.0, 1.0), 1e-4);

    // With `up` read twice, `base` (read once) is folded instead; with both read twice, the
    // sum keeps its add kernel.
    let out = f.add(Op::Unary(UnaryOp::Neg), &[up], None).unwrap();
    f.add_output("neg_up", out);
    let kernels = graft_codegen::compile(&f).unwrap().kernel_summary();
    assert!(kernels.iter().all(|k| !k.contains("_add ")), "{kernels:?}");
    check_norm(&f, &random_inputs(&f, 23, -1.0, 1.0), 1e-4);
    // With both read twice the sum is not an epilogue: read once, by the next GEMM, it is
    // computed while that GEMM packs its A; stored (an output), it is an add kernel.
    let out = f.add(Op::Unary(UnaryOp::Neg), &[base], None).unwrap();
    f.add_output("neg_base", out);
    let kernels = graft_codegen::compile(&f).unwrap().kernel_summary();
    assert!(kernels.iter().all(|k| !k.contains("_add ")), "{kernels:?}");
    check_norm(&f, &random_inputs(&f, 24, -1.0, 1.0), 1e-4);
    f.add_output("y", y);
    let kernels = graft_codegen::compile(&f).unwrap().kernel_summary();
    assert!(kernels.iter().any(|k| k.contains("_add ")), "{kernels:?}");
    check_norm(&f, &random_inputs(&f, 22, -1.0, 1.0), 1e-4);
}

#[test]
fn a_lora_path_adds_to_its_columns_of_a_batched_product_in_the_gemm() {
    // The optimizer's batched projections: qkv = x·[Wq; Wk; Wv]ᵀ, then q = qkv[.., 0..45] +
    // x·Aᵀ·Bᵀ and v = qkv[.., 45..128][.., 38..83] + x·Aᵥᵀ·Bᵥᵀ, each an output and read by
    // a matmul. The
    // up-projections' GEMMs start from their slices of qkv (row stride 128, columns from
    // 0 and from 83: not a multiple of the vector width) instead of add kernels. Every extent
    // is a tail of the register tile. Against the interpreter, 1e-4 norm-wise.
    let t = |s: &[usize]| ty(DType::F32, s);
    let mut f = Function::new("sliced_epilogue");
    let x = f.add_input("x", InputKind::Data, t(&[2, 13, 300]), None);
    let w = f.add_input("w", InputKind::Weight, t(&[128, 300]), None);
    let tb = Op::MatMul {
        ta: false,
        tb: true,
    };
    let qkv = f.add(tb.clone(), &[x, w], None).unwrap();
    // v's columns through a slice of a slice, as the optimizer's batching makes them.
    let kv = f
        .add(
            Op::Slice {
                axis: 2,
                start: 45,
                end: 128,
            },
            &[qkv],
            None,
        )
        .unwrap();
    let mut outs = Vec::new();
    for (i, (src, start, end)) in [(qkv, 0usize, 45usize), (kv, 38, 83)]
        .into_iter()
        .enumerate()
    {
        let a = f.add_input(format!("a{i}"), InputKind::Param, t(&[8, 300]), None);
        let b = f.add_input(format!("b{i}"), InputKind::Param, t(&[45, 8]), None);
        let cols = f
            .add(
                Op::Slice {
                    axis: 2,
                    start,
                    end,
                },
                &[src],
                None,
            )
            .unwrap();
        let down = f.add(tb.clone(), &[x, a], None).unwrap();
        let up = f.add(tb.clone(), &[down, b], None).unwrap();
        let y = f.add(Op::Binary(BinaryOp::Add), &[cols, up], None).unwrap();
        let v = f.add_input(format!("v{i}"), InputKind::Weight, t(&[45, 100]), None);
        let mm = Op::MatMul {
            ta: false,
            tb: false,
        };
        outs.push(f.add(mm, &[y, v], None).unwrap());
        f.add_output(format!("y{i}"), y);
    }
    // k's columns are read too (by an output), so qkv stays whole.
    let k = f
        .add(
            Op::Slice {
                axis: 2,
                start: 45,
                end: 83,
            },
            &[qkv],
            None,
        )
        .unwrap();
    let k = f.add(Op::Unary(UnaryOp::Neg), &[k], None).unwrap();
    f.add_output("k", k);
    for (i, o) in outs.into_iter().enumerate() {
        f.add_output(format!("o{i}"), o);
    }
    let kernels = graft_codegen::compile(&f).unwrap().kernel_summary();
    assert!(
        kernels.iter().all(|k| !k.contains("_add ")),
        "an add kernel is left: {kernels:?}"
    );
    check_norm(&f, &random_inputs(&f, 25, -1.0, 1.0), 1e-4);
}

#[test]
fn a_concat_of_weights_is_read_while_packing() {
    // The optimizer's batching: x·[W₁; W₂]ᵀ (forward) and d·[W₁; W₂] (backward) read a concat
    // of weights, which is never stored: both pack kernels evaluate it per element.
    let t = |s: &[usize]| ty(DType::F32, s);
    let mut f = Function::new("batched");
    let x = f.add_input("x", InputKind::Data, t(&[2, 13, 40]), None);
    let w1 = f.add_input("w1", InputKind::Weight, t(&[24, 40]), None);
    let w2 = f.add_input("w2", InputKind::Weight, t(&[21, 40]), None);
    let d = f.add_input("d", InputKind::Data, t(&[2, 13, 45]), None);
    let cat = f.add(Op::Concat { axis: 0 }, &[w1, w2], None).unwrap();
    let fwd = Op::MatMul {
        ta: false,
        tb: true,
    };
    let y = f.add(fwd, &[x, cat], None).unwrap();
    let bwd = Op::MatMul {
        ta: false,
        tb: false,
    };
    let dx = f.add(bwd, &[d, cat], None).unwrap();
    f.add_output("y", y);
    f.add_output("dx", dx);
    let kernels = graft_codegen::compile(&f).unwrap().kernel_summary();
    assert!(
        kernels.iter().all(|k| !k.contains("concat")),
        "the concat is stored: {kernels:?}"
    );
    assert_eq!(
        kernels.len(),
        [45, 40].map(kernels_per_matmul).iter().sum::<usize>(),
        "{kernels:?}"
    );
    check_norm(&f, &random_inputs(&f, 31, -1.0, 1.0), 1e-4);
}

#[test]
fn large_gemms_run_as_chunks_of_panels_or_of_k() {
    // A tiny packing budget forces chunking on small shapes: along B's panels when C is
    // larger than A, along K (later chunks adding to C, the addend taken once) otherwise;
    // batched and shared operands, tails, every transpose flag.
    let host = graft_codegen::CpuTarget::host();
    let target = graft_codegen::CpuTarget {
        pack_budget: 32 << 10,
        ..host
    };
    let t = |s: &[usize]| ty(DType::F32, s);
    // B with rows of 1024 floats or more (a page) is packed row by row: tail panels, chunks
    // of panels, batches.
    let cases: [(&[usize], &[usize], bool, bool, bool); 7] = [
        (&[37, 64], &[64, 700], false, false, false),
        (&[37, 64], &[64, 1100], false, false, false),
        (&[2, 13, 50], &[2, 50, 1030], false, false, true),
        (&[2, 13, 300], &[200, 300], false, true, false),
        (&[37, 1000], &[1000, 40], false, false, true),
        (&[1000, 37], &[40, 1000], true, true, true),
        (&[2, 1000, 13], &[2, 1000, 70], true, false, false),
    ];
    for (a, b, ta, tb, with_addend) in cases {
        let mut f = Function::new("chunked");
        let x = f.add_input("a", InputKind::Data, t(a), None);
        // A data input: a frozen weight read as `x · Wᵀ` would be bound, whole.
        let w = f.add_input("b", InputKind::Data, t(b), None);
        let c = f.add(Op::MatMul { ta, tb }, &[x, w], None).unwrap();
        if with_addend {
            let d = f.add_input("d", InputKind::Data, f.ty(c).clone(), None);
            let y = f.add(Op::Binary(BinaryOp::Add), &[c, d], None).unwrap();
            f.add_output("y", y);
        } else {
            f.add_output("c", c);
        }
        let inputs = random_inputs(&f, 41, -1.0, 1.0);
        let want = graft_interp::run(&f, &inputs).unwrap();
        let whole = graft_codegen::compile_for(&f, &host).unwrap();
        let chunked = graft_codegen::compile_for(&f, &target).unwrap();
        assert!(
            chunked.kernel_count() > whole.kernel_count() + 2,
            "{a:?}·{b:?} is not chunked: {:?}",
            chunked.kernel_summary()
        );
        assert!(
            chunked
                .kernel_summary()
                .iter()
                .all(|k| !k.contains("_add ")),
            "the addend stays an epilogue"
        );
        let scale = want[0]
            .1
            .to_f64_vec()
            .iter()
            .fold(0f64, |m, v| m.max(v.abs()));
        for (how, c) in [("chunked", &chunked), ("whole", &whole)] {
            let got = c.run(&inputs).unwrap();
            let e = common::rel_err(&got[0].1, &want[0].1, scale);
            assert!(e <= 1e-4, "{how} {a:?}·{b:?} (ta {ta}, tb {tb}): {e:e}");
        }
    }
}

#[test]
fn the_standalone_gemm_matches_the_interpreter() {
    // `Gemm` (the benchmarks' entry point) puts its packed operands in the memory plan's
    // arena; 37 × 300 · 300 × 140 packs both A and B on every vector shape. Tolerance 1e-4
    // norm-wise, as for every f32 matmul.
    let (m, k, n) = (37, 300, 140);
    let f = matmul_fn(DType::F32, &[m, k], &[k, n], false, false);
    let inputs = random_inputs(&f, 51, -1.0, 1.0);
    let want = graft_interp::run(&f, &inputs).unwrap();
    let slice = |name: &str| {
        inputs[name]
            .to_f64_vec()
            .iter()
            .map(|&x| x as f32)
            .collect::<Vec<_>>()
    };
    let (a, b) = (slice("a"), slice("b"));
    let mut c = vec![0f32; m * n];
    let mut gemm = graft_codegen::Gemm::new(m, k, n).unwrap();
    for _ in 0..2 {
        gemm.run(&a, &b, &mut c).unwrap();
        let got = graft_interp::Tensor::f32(vec![m, n], c.clone()).unwrap();
        let scale = want[0]
            .1
            .to_f64_vec()
            .iter()
            .fold(0f64, |s, x| s.max(x.abs()));
        let e = common::rel_err(&got, &want[0].1, scale);
        assert!(e <= 1e-4, "{e:e}");
    }
    assert!(
        gemm.run(&a[1..], &b, &mut c).is_err(),
        "a wrong length is an error"
    );
}

/// Several threads run compiled functions at once: one holds graft's team of threads, the
/// others launch on rayon's pool (see `team.rs`). Every run, on either, gives the one-thread
/// result exactly, and none deadlocks (the test would hang).
#[test]
fn concurrent_runs_share_the_team_or_use_rayon() {
    let mut f = Function::new("mix");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[3, 40, 300]), None);
    let w = f.add_input("w", InputKind::Data, ty(DType::F32, &[300, 140]), None);
    let e = f.add(Op::Unary(UnaryOp::Silu), &[x], None).unwrap();
    let c = f
        .add(
            Op::MatMul {
                ta: false,
                tb: false,
            },
            &[e, w],
            None,
        )
        .unwrap();
    let s = f.add(Op::Softmax { axis: 2 }, &[c], None).unwrap();
    f.add_output("s", s);
    let inputs = random_inputs(&f, 61, -1.0, 1.0);
    let want = compile(&f).unwrap().with_threads(1).run(&inputs).unwrap();
    let compiled = compile(&f).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..25 {
                    assert!(compiled.run(&inputs).unwrap() == want);
                }
            });
        }
    });
    check_norm(&f, &inputs, 1e-4);
}

/// `f` checked against the interpreter (1e-4 norm-wise), compiled, run unbound on `inputs`,
/// then bound on a copy of them: the compiled function, the unbound outputs, what binding
/// left of the copy, the inputs it released and the bytes it bound.
#[allow(clippy::type_complexity)]
fn compile_and_bind(
    f: &Function,
    inputs: &HashMap<String, graft_interp::Tensor>,
) -> (
    graft_codegen::CompiledFunction,
    graft_codegen::Outputs,
    HashMap<String, graft_interp::Tensor>,
    Vec<String>,
    usize,
) {
    check_norm(f, inputs, 1e-4);
    let c = compile(f).unwrap();
    let unbound = c.run(inputs).unwrap();
    let mut owned = inputs.clone();
    let mut released = Vec::new();
    let bytes = c
        .bind(&mut owned, &[], &mut |n| released.push(n.to_string()))
        .unwrap();
    (c, unbound, owned, released, bytes)
}

/// Frozen weights bound once ([`graft_codegen::CompiledFunction::bind`]): `x · Vᵀ` with V a
/// concat of three weights (rows 32 + 21 + 19, 40 columns: partial panels) is packed at
/// binding, and each weight read the other way (`d · W`, as a backward's input gradient
/// does) is packed from those panels: W₁ at row 0, W₂ at row 32 (blocks of lanes, then a
/// tail of 5 rows) and W₃ at row 53 (not a multiple of the lanes: element by element). A
/// weight something else reads (`g`, also summed) is not bound. Against the interpreter,
/// 1e-4 norm-wise; the bound runs equal the unbound one exactly (the same products), need
/// no bound-only input, and binding releases exactly those.
#[test]
fn bound_weights_pack_once_and_serve_both_orientations() {
    let f32t = |s: &[usize]| ty(DType::F32, s);
    let mut f = Function::new("bound");
    let x = f.add_input("x", InputKind::Data, f32t(&[6, 40]), None);
    let ws: Vec<_> = [("w1", 32), ("w2", 21), ("w3", 19)]
        .iter()
        .map(|&(n, r)| f.add_input(n, InputKind::Weight, f32t(&[r, 40]), None))
        .collect();
    let g = f.add_input("g", InputKind::Weight, f32t(&[24, 40]), None);
    let v = f
        .add(Op::Concat { axis: 0 }, &[ws[1], ws[2]], None)
        .unwrap();
    let v = f.add(Op::Concat { axis: 0 }, &[ws[0], v], None).unwrap();
    let mm =
        |f: &mut Function, a, b, tb| f.add(Op::MatMul { ta: false, tb }, &[a, b], None).unwrap();
    let y = mm(&mut f, x, v, true);
    f.add_output("y", y);
    for (i, (&w, rows)) in ws.iter().zip([32, 21, 19]).enumerate() {
        let d = f.add_input(format!("d{i}"), InputKind::Data, f32t(&[6, rows]), None);
        let z = mm(&mut f, d, w, false);
        f.add_output(format!("z{i}"), z);
    }
    let yg = mm(&mut f, x, g, true);
    let sg = f
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![0, 1],
                keepdim: false,
            },
            &[g],
            None,
        )
        .unwrap();
    f.add_output("yg", yg);
    f.add_output("sg", sg);
    let inputs = random_inputs(&f, 21, -1.0, 1.0);
    let (c, unbound, owned, mut released, bytes) = compile_and_bind(&f, &inputs);
    released.sort();
    assert_eq!(released, ["w1", "w2", "w3"]);
    assert_eq!(c.bind_only_inputs().len(), 3);
    assert!(released.iter().all(|n| !owned.contains_key(n)) && owned.contains_key("g"));
    // 72 rows of V in panels of NR, 40 long.
    let nr = graft_codegen::CpuTarget::host().nr;
    assert_eq!(bytes, 4 * 72usize.next_multiple_of(nr) * 40);
    for _ in 0..2 {
        assert!(c.run(&owned).unwrap() == unbound, "a bound run differs");
    }
    // Binding ignores later values of the bound inputs; unbinding reads them again.
    let mut changed = inputs.clone();
    changed.insert("w2".into(), random_inputs(&f, 22, -1.0, 1.0)["w2"].clone());
    assert!(c.run(&changed).unwrap() == unbound);
    c.unbind();
    assert!(c.run(&changed).unwrap() != unbound);
    assert!(matches!(
        c.run(&owned),
        Err(graft_codegen::CodegenError::MissingInput { .. })
    ));
    // A missing weight: an error, and the caller's map keeps what it had.
    let mut partial = inputs.clone();
    partial.remove("w3");
    assert!(c.bind(&mut partial, &[], &mut |_| {}).is_err());
    assert!(partial.contains_key("w1") && partial.contains_key("w2"));
}

/// A weight two layers share (`x₁ · Wᵀ` and `x₂ · Wᵀ`, and `d · W`) is bound once: one
/// packed copy, released after binding, and the runs equal the unbound run exactly and the
/// interpreter within 1e-4 norm-wise.
#[test]
fn a_shared_weight_is_bound_once() {
    let f32t = |s: &[usize]| ty(DType::F32, s);
    let mut f = Function::new("shared");
    let w = f.add_input("w", InputKind::Weight, f32t(&[48, 40]), None);
    let mm =
        |f: &mut Function, a, b, tb| f.add(Op::MatMul { ta: false, tb }, &[a, b], None).unwrap();
    for i in 0..2 {
        let x = f.add_input(format!("x{i}"), InputKind::Data, f32t(&[6 + i, 40]), None);
        let y = mm(&mut f, x, w, true);
        f.add_output(format!("y{i}"), y);
    }
    let d = f.add_input("d", InputKind::Data, f32t(&[5, 48]), None);
    let z = mm(&mut f, d, w, false);
    f.add_output("z", z);
    let inputs = random_inputs(&f, 23, -1.0, 1.0);
    let (c, unbound, owned, released, bytes) = compile_and_bind(&f, &inputs);
    let nr = graft_codegen::CpuTarget::host().nr;
    assert_eq!(bytes, 4 * 48usize.next_multiple_of(nr) * 40);
    assert_eq!(released, ["w"]);
    assert!(c.run(&owned).unwrap() == unbound);
}
