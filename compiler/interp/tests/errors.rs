//! Every failure is an `InterpError` naming what went wrong, never a panic: missing and
//! mistyped inputs, invalid IR, unknown functions, bad tensor data and undefined op/dtype
//! combinations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::run_body;
use graft_interp::{Data, InterpError, Tensor, run};
use graft_ir::{DType, Function, InputKind, Op, TensorType, UnaryOp, ValueId};
use std::collections::HashMap;

const EXP: &str =
    "  %0: f32[2] = input{name = \"x\", kind = data}\n  %1: f32[2] = exp(%0)\n  return y = %1";

#[test]
fn missing_and_mistyped_inputs() {
    let e = run_body(EXP, vec![]).unwrap_err();
    assert!(
        matches!(&e, InterpError::MissingInput { name } if name == "x"),
        "{e}"
    );
    assert_eq!(e.to_string(), "missing input `x`");
    let e = run_body(EXP, vec![("x", Tensor::f32([3], vec![0.0; 3]).unwrap())]).unwrap_err();
    assert_eq!(e.to_string(), "input `x` expects f32[2], got f32[3]");
    let e = run_body(EXP, vec![("x", Tensor::bf16([2], vec![0.0; 2]).unwrap())]).unwrap_err();
    assert!(matches!(e, InterpError::InputTypeMismatch { .. }), "{e}");
    // extra inputs are ignored
    let ok = run_body(
        EXP,
        vec![
            ("x", Tensor::f32([2], vec![0.0, 1.0]).unwrap()),
            ("unused", Tensor::scalar_f32(1.0)),
        ],
    );
    assert!(ok.is_ok());
}

#[test]
fn invalid_ir_is_rejected_before_running() {
    // hand-built function whose exp node claims the wrong type
    let mut f = Function::new("f");
    let x = f.add_input(
        "x",
        InputKind::Data,
        TensorType::new(DType::F32, vec![2]),
        None,
    );
    f.nodes.push(graft_ir::Node {
        op: Op::Unary(UnaryOp::Exp),
        args: vec![x],
        ty: TensorType::new(DType::F32, vec![5]),
        loc: None,
    });
    f.add_output("y", ValueId(1));
    let inputs = HashMap::from([("x".to_string(), Tensor::f32([2], vec![1.0, 2.0]).unwrap())]);
    let e = run(&f, &inputs).unwrap_err();
    assert!(matches!(e, InterpError::Invalid(_)), "{e}");
    // an operand defined later
    f.nodes[1].args = vec![ValueId(1)];
    assert!(matches!(
        run(&f, &inputs).unwrap_err(),
        InterpError::Invalid(_)
    ));
    let m = graft_ir::Module::default();
    let e = graft_interp::run_module_fn(&m, "forward", &inputs).unwrap_err();
    assert_eq!(e.to_string(), "no function `forward` in the module");
}

#[test]
fn bad_tensor_data_is_an_error() {
    let e = Tensor::f32([2, 2], vec![1.0; 3]).unwrap_err();
    assert!(
        e.to_string().contains("3 elements given, the shape has 4"),
        "{e}"
    );
    let e = Tensor::u4([2], vec![3, 16]).unwrap_err();
    assert!(e.to_string().contains("u4 code 16"), "{e}");
    let e = Tensor::new(TensorType::new(DType::I32, vec![1]), Data::I64(vec![1])).unwrap_err();
    assert!(
        e.to_string().contains("I64 storage does not hold i32"),
        "{e}"
    );
    // bf16 values are rounded on construction
    let t = Tensor::bf16([1], vec![1.0 + 2f32.powi(-10)]).unwrap();
    assert_eq!(t.as_f32().unwrap(), &[1.0]);
}

#[test]
fn undefined_op_dtype_combinations_are_errors() {
    // `neg` types on any dtype, but unsigned codes have no negation
    let e = run_body(
        "  %0: u8[2] = input{name = \"x\", kind = data}\n  %1: u8[2] = neg(%0)\n  return y = %1",
        vec![("x", Tensor::u8([2], vec![1, 2]).unwrap())],
    )
    .unwrap_err();
    assert!(
        matches!(&e, InterpError::Unsupported { op, node: 1, .. } if op == "neg"),
        "{e}"
    );
    assert!(e.to_string().contains("u8[2]"), "{e}");
    // `add` types on bool, but is undefined there
    let e = run_body(
        "  %0: bool[1] = input{name = \"x\", kind = data}\n  %1: bool[1] = add(%0, %0)\n  return y = %1",
        vec![("x", Tensor::bool([1], vec![true]).unwrap())],
    )
    .unwrap_err();
    assert!(matches!(e, InterpError::Unsupported { node: 1, .. }), "{e}");
    // max over an empty axis has no value
    let e = run_body(
        "  %0: f32[2, 0] = input{name = \"x\", kind = data}\n  %1: f32[2] = reduce_max{axes = [1]}(%0)\n  return y = %1",
        vec![("x", Tensor::f32([2, 0], vec![]).unwrap())],
    )
    .unwrap_err();
    assert!(e.to_string().contains("empty axis"), "{e}");
}

/// `solve` on a singular matrix is an error naming the matrix, and pivots where the leading
/// entry is zero: [[0, 1], [1, 0]]·X = B swaps B's rows (exact); the second matrix, with two
/// equal rows, is singular.
#[test]
fn solve_pivots_and_reports_a_singular_matrix() {
    let body = "  %0: f32[2, 2, 2] = input{name = \"a\", kind = data}\n  %1: f32[2, 2, 1] = input{name = \"b\", kind = data}\n  %2: f32[2, 2, 1] = solve(%0, %1)\n  return x = %2";
    let b = Tensor::f32([2, 2, 1], vec![3.0, 5.0, 1.0, 1.0]).unwrap();
    let swap = vec![0.0, 1.0, 1.0, 0.0];
    let ok = Tensor::f32([2, 2, 2], [swap.clone(), swap.clone()].concat()).unwrap();
    let x = run_body(body, vec![("a", ok), ("b", b.clone())]).unwrap();
    assert_eq!(x[0].1.to_f64_vec(), vec![5.0, 3.0, 1.0, 1.0]);
    let bad = Tensor::f32([2, 2, 2], [swap, vec![1.0, 2.0, 1.0, 2.0]].concat()).unwrap();
    let e = run_body(body, vec![("a", bad), ("b", b)]).unwrap_err();
    assert!(matches!(e, InterpError::Singular { batch: 1, .. }), "{e}");
    assert_eq!(e.to_string(), "%2: `solve`: matrix 1 of A is singular");
}
