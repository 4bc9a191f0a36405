#![allow(missing_docs, clippy::unwrap_used)]
use graft_ir::*;
fn f32t(shape: &[usize]) -> TensorType { TensorType::new(DType::F32, shape.to_vec()) }
#[test]
fn dump() {
    let mut f = Function::new("sample");
    let x = f.add_input("x", InputKind::Data, f32t(&[64, 512]), None);
    let y = f.add_input("y", InputKind::Data, f32t(&[64, 512]), None);
    let g = f.add_input("g", InputKind::Data, f32t(&[512]), None);
    let gb = f.add_typed(Op::Broadcast, &[g], Some(f32t(&[64, 512])), None).unwrap();
    let a = f.add(Op::Binary(BinaryOp::Mul), &[x, y], None).unwrap();
    let b = f.add(Op::Binary(BinaryOp::Add), &[a, gb], None).unwrap();
    f.add_output("p", b);
    std::fs::write("/tmp/dump.ll", graft_codegen::emit_llvm(&f).unwrap()).unwrap();
}
