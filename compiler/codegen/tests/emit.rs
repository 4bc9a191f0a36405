//! FileCheck tests of the printed forms behind `graft ir --emit=mlir|llvm`: the MLIR module
//! before lowering and the LLVM IR after it. Runs LLVM 22's `FileCheck` (installed with the
//! LLVM packages by `scripts/setup.sh`; a missing binary fails the test, it is not skipped).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_codegen::CpuTarget;
use graft_ir::{
    BinaryOp, DType, Function, InputKind, Op, QuantFormat, ReduceOp, TensorType, UnaryOp,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const FILECHECK: &str = "/usr/lib/llvm-22/bin/FileCheck";

/// Runs FileCheck with `checks` on `input`.
fn filecheck(name: &str, checks: &str, input: &str) {
    let dir = std::env::temp_dir().join(format!("graft-filecheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(format!("{name}.check"));
    std::fs::write(&path, checks).unwrap();
    let mut child = Command::new(FILECHECK)
        .arg(&path)
        .arg("--dump-input=fail")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{FILECHECK}: {e} (install LLVM 22 with scripts/setup.sh)"));
    // FileCheck may stop reading at its first failure; its report says why.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "FileCheck {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn f32t(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape.to_vec())
}

/// `rms(x) · g` then `· w`, a softmax and a row sum: one of each kernel kind.
fn sample() -> Function {
    let mut f = Function::new("sample");
    let x = f.add_input("x", InputKind::Data, f32t(&[16, 64]), None);
    let g = f.add_input("g", InputKind::Weight, f32t(&[64]), None);
    // 160 columns: five panels of B with AVX-512, ten with AVX2, so A is packed either way.
    let w = f.add_input("w", InputKind::Weight, f32t(&[160, 64]), None);
    let sq = f.add(Op::Binary(BinaryOp::Mul), &[x, x], None).unwrap();
    let ms = f
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
    let r = f.add(Op::Unary(UnaryOp::Rsqrt), &[ms], None).unwrap();
    let rb = f
        .add_typed(Op::Broadcast, &[r], Some(f32t(&[16, 64])), None)
        .unwrap();
    let gb = f
        .add_typed(Op::Broadcast, &[g], Some(f32t(&[16, 64])), None)
        .unwrap();
    let xn = f.add(Op::Binary(BinaryOp::Mul), &[x, rb], None).unwrap();
    let y = f.add(Op::Binary(BinaryOp::Mul), &[xn, gb], None).unwrap();
    let z = f
        .add(
            Op::MatMul {
                ta: false,
                tb: true,
            },
            &[y, w],
            None,
        )
        .unwrap();
    let s = f.add(Op::Softmax { axis: 1 }, &[z], None).unwrap();
    let e = f.add(Op::Unary(UnaryOp::Exp), &[s], None).unwrap();
    f.add_output("p", e);
    f
}

#[test]
fn mlir_has_one_kernel_per_group_on_memrefs() {
    let text = graft_codegen::emit_mlir(&sample()).unwrap();
    filecheck(
        "mlir",
        r#"
CHECK: module {
// The mean of squares: x*x fused into the reduction, accumulated in f64.
CHECK-LABEL: func.func @k0_reduce_mean(%lo: index, %hi: index, %a0: memref<16x64xf32>, %out: memref<16xf32> {llvm.noalias})
CHECK: scf.for {{.*}} = %lo to %hi
CHECK: scf.for {{.*}} iter_args({{.*}}) -> (f64)
CHECK: arith.mulf {{.*}} : f32
CHECK: arith.addf {{.*}} : f64
CHECK: arith.divf {{.*}} : f64
// rsqrt is stored (its broadcast reads it 64 times); both products and both broadcasts
// are computed while the GEMM packs A into row tiles (2 tiles x 64 x 12 on AVX-512,
// 3 x 64 x 6 with AVX2): the normalized x is never stored.
CHECK-LABEL: func.func @k1_rsqrt(%lo: index, %hi: index, %a0: memref<16x1xf32>, %out: memref<16x1xf32> {llvm.noalias})
CHECK: math.sqrt
CHECK-LABEL: func.func @k2_matmul(%lo: index, %hi: index, %a0: memref<16x64xf32>, %a1: memref<16x1xf32>, %a2: memref<64xf32>, %out: memref<{{[0-9]+}}xf32> {llvm.noalias})
CHECK: arith.mulf
CHECK: arith.mulf
CHECK: memref.store
// The GEMM: B (read transposed) packed into panels, then tiles of vector FMAs in shared,
// out-of-line microkernels.
CHECK-LABEL: func.func @k3_matmul(%lo: index, %hi: index, %a0: memref<1x160x64xf32>
CHECK: memref.load %a0[{{.*}}] : memref<1x160x64xf32>
CHECK-LABEL: func.func private @graft_gemm_micro_{{[0-9]+}}x{{[0-9]+}}
CHECK-SAME: attributes {passthrough = ["noinline"{{.*}}]}
CHECK: scf.for {{.*}} iter_args(
CHECK: vector.broadcast {{.*}} : f32 to vector<[[L:[0-9]+]]xf32>
CHECK: vector.fma {{.*}} : vector<[[L]]xf32>
CHECK: vector.store
CHECK-LABEL: func.func @k4_matmul
CHECK: memref.reinterpret_cast
CHECK: func.call @graft_gemm_micro_
// Softmax of f32: the max, then exp(x - max) stored by a loop without a carried value (so
// LLVM vectorizes it; graft's arithmetic exp, no libm call), the sum read back in f64, then
// the quotient.
CHECK-LABEL: func.func @k5_softmax
CHECK: arith.maxnumf {{.*}} : f32
CHECK-NOT: math.exp
CHECK: math.roundeven {{.*}} : f32
CHECK: memref.store
CHECK: memref.load %out
CHECK: arith.addf {{.*}} fastmath<reassoc> : f64
CHECK: arith.divf {{.*}} : f64
CHECK: arith.mulf {{.*}} : f64
CHECK-LABEL: func.func @k6_exp
CHECK-NOT: math.exp
CHECK: math.roundeven {{.*}} : f32
CHECK: math.fma {{.*}} : f32
"#,
        &text,
    );
}

#[test]
fn llvm_ir_has_vector_fmas_and_an_arithmetic_exp() {
    let text = graft_codegen::emit_llvm(&sample()).unwrap();
    filecheck(
        "llvm",
        r#"
CHECK-LABEL: define void @k0_reduce_mean(i64 %0, i64 %1, ptr %2, ptr noalias %3)
CHECK: fadd reassoc double
CHECK: define void @graft_gemm_micro_{{[0-9]+}}x{{[0-9]+(_[a-z]+)*}}({{.*}}) #[[NOINLINE:[0-9]+]]
CHECK: call <[[L:[0-9]+]] x float> @llvm.fmuladd.v[[L]]f32(
CHECK-LABEL: define void @k6_exp(
CHECK-NOT: @llvm.exp.f32
CHECK: call float @llvm.roundeven.f32(
CHECK: call float @llvm.fma.f32(
CHECK-DAG: attributes #[[NOINLINE]] = { noinline{{.*}} }
"#,
        &text,
    );
}

/// With AVX-512, every kernel asks LLVM to vectorize its loops 512 bits wide (LLVM's default
/// for those CPUs is 256); with AVX2 the default stands.
#[test]
fn kernels_prefer_the_full_vector_width_with_avx512() {
    let f = sample();
    for (target, want) in [
        (CpuTarget::from_features(|x| x == "avx512f"), true),
        (CpuTarget::from_features(|x| x == "avx2"), false),
    ] {
        let mlir = graft_codegen::compile_for(&f, &target)
            .unwrap()
            .mlir()
            .to_string();
        let kernels = mlir.matches("func.func @k").count();
        let wide = mlir
            .lines()
            .filter(|l| l.contains("func.func @k"))
            .filter(|l| l.contains(r#"["prefer-vector-width", "512"]"#))
            .count();
        assert!(kernels > 3);
        assert_eq!(wide, if want { kernels } else { 0 }, "{target:?}");
    }
}

#[test]
fn lowered_mlir_is_in_the_llvm_dialect_and_pipeline_is_printable() {
    let mut f = Function::new("deq");
    let c = f.add_input(
        "c",
        InputKind::Weight,
        TensorType::new(DType::U4, vec![4, 32]),
        None,
    );
    let a = f.add_input("a", InputKind::Weight, f32t(&[2]), None);
    let d = f
        .add_typed(
            Op::Dequantize {
                format: QuantFormat::Nf4,
                block: 64,
                nested: 0,
            },
            &[c, a],
            Some(TensorType::new(DType::BF16, vec![4, 32])),
            None,
        )
        .unwrap();
    f.add_output("w", d);
    let mlir = graft_codegen::emit_mlir(&f).unwrap();
    filecheck(
        "nf4",
        r#"
CHECK: memref.global "private" constant @graft_nf4_code : memref<16xf32> = dense<[-1.0, -0.6961928
CHECK-LABEL: func.func @k0_dequantize(%lo: index, %hi: index, %a0: memref<4x32xi8>, %a1: memref<2xf32>, %out: memref<4x32xf32> {llvm.noalias})
CHECK: memref.get_global @graft_nf4_code
// Rounding to bf16: add 0x7fff plus the lowest kept bit, keep the top half.
CHECK: arith.bitcast {{.*}} : f32 to i32
CHECK: arith.andi {{.*}} : i32
"#,
        &mlir,
    );
    let lowered = graft_codegen::emit_llvm_dialect(&f).unwrap();
    filecheck(
        "lowered",
        r#"
CHECK: llvm.mlir.global private constant @graft_nf4_code
CHECK-LABEL: llvm.func @k0_dequantize(%arg0: i64, %arg1: i64, %arg2: !llvm.ptr, %arg3: !llvm.ptr, %arg4: !llvm.ptr {llvm.noalias})
CHECK-NOT: scf.for
CHECK-NOT: memref.load
CHECK: llvm.return
"#,
        &lowered,
    );
    assert!(
        graft_codegen::PIPELINE.contains("convert-func-to-llvm{use-bare-ptr-memref-call-conv=1}")
    );
}
