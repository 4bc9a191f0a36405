//! Helpers for the optimizer's tests: compile specs, build training steps, feed the
//! interpreter.
#![allow(dead_code)] // Each test binary uses a different subset.

use graft_frontend::{Program, Stdlib, compile_file};
use graft_interp::Tensor;
use graft_ir::{Function, InputKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    r.canonicalize().unwrap_or(r)
}

/// Compiles a spec.
pub fn program(rel: &str) -> Program {
    match compile_file(&repo().join(rel), &Stdlib::Dir(repo().join("stdlib"))) {
        Ok((_, p)) => p,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    }
}

/// The training step of a spec.
pub fn train_step(p: &Program) -> Function {
    let forward = p.module.function("forward").expect("forward");
    graft_autodiff::train_step(forward, &graft_runtime::step_config(&p)).expect("train step")
}

/// Deterministic pseudo-random inputs for every input of `f` (weights, params and state
/// ~U(-0.5, 0.5) scaled by 1/√fan-in for matrices; token ids in range; `step` = 2).
pub fn random_inputs(f: &Function, vocab: i64, seed: u64) -> HashMap<String, Tensor> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = HashMap::new();
    for i in f.inputs() {
        let t = match (i.ty.dtype, i.kind) {
            (graft_ir::DType::I64, _) if i.ty.rank() == 0 => Tensor::scalar_i64(seed as i64),
            (graft_ir::DType::I64, _) => Tensor::i64(
                i.ty.shape.clone(),
                (0..i.ty.numel())
                    .map(|_| (next() * vocab as f64) as i64)
                    .collect(),
            )
            .expect("ids"),
            (graft_ir::DType::U4, _) => Tensor::u4(
                i.ty.shape.clone(),
                (0..i.ty.numel()).map(|_| (next() * 16.0) as u8).collect(),
            )
            .expect("codes"),
            (graft_ir::DType::U8, _) => Tensor::u8(
                i.ty.shape.clone(),
                (0..i.ty.numel()).map(|_| (next() * 256.0) as u8).collect(),
            )
            .expect("codes"),
            (_, InputKind::State) if i.name == "step" => Tensor::scalar_f32(2.0),
            (_, InputKind::State) => Tensor::f32(
                i.ty.shape.clone(),
                (0..i.ty.numel()).map(|_| (next() * 0.01) as f32).collect(),
            )
            .expect("state"),
            _ => {
                let scale = if i.ty.rank() >= 2 {
                    1.0 / (i.ty.shape[i.ty.rank() - 1] as f64).sqrt()
                } else {
                    1.0
                };
                let data: Vec<f32> = (0..i.ty.numel())
                    .map(|_| ((next() - 0.5) * 2.0 * scale) as f32)
                    .collect();
                if i.ty.rank() == 0 {
                    Tensor::scalar_f32(data[0].abs() + 0.01)
                } else {
                    Tensor::f32(i.ty.shape.clone(), data).expect("tensor")
                }
            }
        };
        out.insert(i.name.to_string(), t);
    }
    out
}

/// max |a − b| / max(|b|, floor) over every output, and the worst output's name.
pub fn worst_rel_err(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for ((n1, x), (n2, y)) in a.iter().zip(b) {
        assert_eq!(n1, n2, "outputs in the same order");
        let (x, y) = (x.to_f64_vec(), y.to_f64_vec());
        let scale = y.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let e = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f64, f64::max)
            / scale;
        if e > worst.0 {
            worst = (e, n1.clone());
        }
    }
    worst
}
