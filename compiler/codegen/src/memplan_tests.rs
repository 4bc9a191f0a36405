//! The memory plan's invariant on plans the scheduler makes: no two buffers live at the same
//! step overlap, and buffers are reused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use crate::host::CpuTarget;
use crate::schedule;
use graft_exec::{ExecPlan as Plan, MemoryPlan, overlapping, plan_memory, storage_bytes};
use graft_ir::{DType, Function, InputKind, Op, TensorType};
use std::path::Path;

fn planned(f: &Function) -> (Plan, MemoryPlan) {
    let target = CpuTarget::host();
    let mut plan = schedule::plan(f, &target).unwrap();
    crate::lower::lower(f, &mut plan, &target).unwrap();
    let plan = plan.to_exec();
    let mem = plan_memory(&plan);
    (plan, mem)
}

#[test]
fn a_chain_reuses_its_buffers() {
    // x · W₁ · W₂ · … · W₈, each [64, 64]: eight products (and their packed panels), of
    // which at most two products and one panel are live at a time.
    let mut f = Function::new("chain");
    let t = TensorType::new(DType::F32, vec![64, 64]);
    let mut x = f.add_input("x", InputKind::Data, t.clone(), None);
    for i in 0..8 {
        let w = f.add_input(format!("w{i}"), InputKind::Weight, t.clone(), None);
        let mm = Op::MatMul {
            ta: false,
            tb: false,
        };
        x = f.add(mm, &[x, w], None).unwrap();
    }
    f.add_output("y", x);
    let (plan, mem) = planned(&f);
    assert_eq!(overlapping(&plan, &mem), None);
    let one = 64 * 64 * 4;
    assert!(mem.buffers >= 7, "{mem:?}");
    assert!(mem.unshared_bytes >= 7 * one, "{mem:?}");
    assert!(mem.arena_bytes <= 4 * one, "{mem:?}");
    assert_eq!(mem.output_bytes, one);
}

#[test]
fn a_training_step_plan_never_overlaps_live_buffers() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec = repo.join("dsl-examples/tiny_lora.graft");
    let stdlib = graft_frontend::Stdlib::Dir(repo.join("stdlib"));
    let (_, program) =
        graft_frontend::compile_file(&spec, &stdlib).unwrap_or_else(|e| panic!("{e}"));
    let forward = program.module.function("forward").unwrap();
    let cfg = graft_runtime::step_config(&program);
    let step = graft_autodiff::train_step(forward, &cfg).unwrap();
    let (plan, mem) = planned(&step);
    assert_eq!(overlapping(&plan, &mem), None);
    // Activations must stay live for the backward pass, so reuse is partial; on this
    // step it still saves over half.
    assert!(
        mem.arena_bytes * 2 < mem.unshared_bytes,
        "arena {} of {} unshared",
        mem.arena_bytes,
        mem.unshared_bytes
    );
    let largest = plan
        .slots
        .iter()
        .enumerate()
        .filter(|(s, _)| mem.offsets[*s].is_some())
        .map(|(_, s)| s.len * storage_bytes(s.dtype))
        .max()
        .unwrap();
    assert!(mem.arena_bytes >= largest);
}
