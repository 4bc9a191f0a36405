//! `matmul` compiled through MLIR/LLVM against the interpreter over sweeps of shapes (every
//! transpose flag, batched and shared operands, tails, threading, K blocks, chunking, every
//! vector shape, f64/bf16/f16), and the compiled function's API: threads, concurrent runs,
//! the standalone GEMM, binding frozen weights. Single graphs with one claim each (the GEMM
//! epilogue, fused reductions, softmax, gather, recomputation) are file tests under
//! `tests/filetests/`.
//!
//! Tolerances: matmul 1e-4 norm-wise relative (`f32` GEMM accumulates in `f32` with FMA; the
//! interpreter in `f64`); softmax 1e-5 element-wise (both accumulate in `f64`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{check, check_norm, check_with, random_inputs};
use graft_codegen::compile;
use graft_ir::{DType, Function, Op, TensorType, parse_module};
use std::collections::HashMap;

/// The one function in IR `text`.
fn ir(text: &str) -> Function {
    let mut m = parse_module(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(m.functions.len(), 1);
    m.functions.remove(0)
}

/// `c = matmul{ta, tb}(a, b)` on data inputs of `dt`.
fn matmul_fn(dt: DType, a: &[usize], b: &[usize], ta: bool, tb: bool) -> Function {
    let (x, y) = (
        TensorType::new(dt, a.to_vec()),
        TensorType::new(dt, b.to_vec()),
    );
    let c = Op::MatMul { ta, tb }.result_type(&[&x, &y], None).unwrap();
    ir(&format!(
        "func @mm {{
  %0: {x} = input{{name = \"a\", kind = data}}
  %1: {y} = input{{name = \"b\", kind = data}}
  %2: {c} = matmul{{ta = {ta}, tb = {tb}}}(%0, %1)
  return c = %2
}}
"
    ))
}

/// `y = matmul{ta, tb}(a, b) + d` on `f32` data inputs.
fn matmul_add_fn(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Function {
    let (x, y) = (
        TensorType::new(DType::F32, a.to_vec()),
        TensorType::new(DType::F32, b.to_vec()),
    );
    let c = Op::MatMul { ta, tb }.result_type(&[&x, &y], None).unwrap();
    ir(&format!(
        "func @mm_add {{
  %0: {x} = input{{name = \"a\", kind = data}}
  %1: {y} = input{{name = \"b\", kind = data}}
  %2: {c} = matmul{{ta = {ta}, tb = {tb}}}(%0, %1)
  %3: {c} = input{{name = \"d\", kind = data}}
  %4: {c} = add(%2, %3)
  return y = %4
}}
"
    ))
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

/// Attention's causal mask (`-1e30`) and differences near the bottom of `f32`'s normal range:
/// the kernel flushes `exp(x - max)` below `2⁻¹²⁵` to zero (no subnormal arithmetic), which
/// moves no output by more than that (checked against the interpreter with a 1e-30 floor:
/// relative 1e-5 above it, absolute 1e-35 below). Masked entries are exactly zero.
#[test]
fn softmax_of_masked_and_tiny_terms() {
    let f = ir(r#"func @sm {
  %0: f32[3, 16] = input{name = "x", kind = data}
  %1: f32[3, 16] = softmax{axis = 1}(%0)
  %2: f32[3, 16] = log_softmax{axis = 1}(%0)
  return s = %1, l = %2
}
"#);
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

#[test]
fn threaded_runs_are_bit_identical_to_single_threaded_ones() {
    // Every kernel splits its outer range into per-thread chunks; each element is computed
    // the same way whatever the split, so results must match bit for bit.
    let f = ir(r#"func @threads {
  %0: f32[96, 200] = input{name = "x", kind = data}
  %1: f32[300, 200] = input{name = "w", kind = data}
  %2: f32[96, 300] = matmul{tb = true}(%0, %1)
  %3: f32[96, 300] = silu(%2)
  %4: f32[96, 300] = softmax{axis = 1}(%3)
  %5: f32[300] = reduce_sum{axes = [0]}(%3)
  return s = %4, r = %5
}
"#);
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
fn large_gemms_run_as_chunks_of_panels_or_of_k() {
    // A tiny packing budget forces chunking on small shapes: along B's panels when C is
    // larger than A, along K (later chunks adding to C, the addend taken once) otherwise;
    // batched and shared operands, tails, every transpose flag.
    let host = graft_codegen::CpuTarget::host();
    let target = graft_codegen::CpuTarget {
        pack_budget: 32 << 10,
        ..host
    };
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
        // Data inputs: a frozen weight read as `x · Wᵀ` would be bound, whole.
        let f = if with_addend {
            matmul_add_fn(a, b, ta, tb)
        } else {
            matmul_fn(DType::F32, a, b, ta, tb)
        };
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
    let f = ir(r#"func @mix {
  %0: f32[3, 40, 300] = input{name = "x", kind = data}
  %1: f32[300, 140] = input{name = "w", kind = data}
  %2: f32[3, 40, 300] = silu(%0)
  %3: f32[3, 40, 140] = matmul(%2, %1)
  %4: f32[3, 40, 140] = softmax{axis = 2}(%3)
  return s = %4
}
"#);
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
    let f = ir(r#"func @bound {
  %0: f32[6, 40] = input{name = "x", kind = data}
  %1: f32[32, 40] = input{name = "w1", kind = weight}
  %2: f32[21, 40] = input{name = "w2", kind = weight}
  %3: f32[19, 40] = input{name = "w3", kind = weight}
  %4: f32[24, 40] = input{name = "g", kind = weight}
  %5: f32[40, 40] = concat{axis = 0}(%2, %3)
  %6: f32[72, 40] = concat{axis = 0}(%1, %5)
  %7: f32[6, 72] = matmul{tb = true}(%0, %6)
  %8: f32[6, 32] = input{name = "d0", kind = data}
  %9: f32[6, 40] = matmul(%8, %1)
  %10: f32[6, 21] = input{name = "d1", kind = data}
  %11: f32[6, 40] = matmul(%10, %2)
  %12: f32[6, 19] = input{name = "d2", kind = data}
  %13: f32[6, 40] = matmul(%12, %3)
  %14: f32[6, 24] = matmul{tb = true}(%0, %4)
  %15: f32[] = reduce_sum{axes = [0, 1]}(%4)
  return y = %7, z0 = %9, z1 = %11, z2 = %13, yg = %14, sg = %15
}
"#);
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
    let f = ir(r#"func @shared {
  %0: f32[48, 40] = input{name = "w", kind = weight}
  %1: f32[6, 40] = input{name = "x0", kind = data}
  %2: f32[6, 48] = matmul{tb = true}(%1, %0)
  %3: f32[7, 40] = input{name = "x1", kind = data}
  %4: f32[7, 48] = matmul{tb = true}(%3, %0)
  %5: f32[5, 48] = input{name = "d", kind = data}
  %6: f32[5, 40] = matmul(%5, %0)
  return y0 = %2, y1 = %4, z = %6
}
"#);
    let inputs = random_inputs(&f, 23, -1.0, 1.0);
    let (c, unbound, owned, released, bytes) = compile_and_bind(&f, &inputs);
    let nr = graft_codegen::CpuTarget::host().nr;
    assert_eq!(bytes, 4 * 48usize.next_multiple_of(nr) * 40);
    assert_eq!(released, ["w"]);
    assert!(c.run(&owned).unwrap() == unbound);
}
