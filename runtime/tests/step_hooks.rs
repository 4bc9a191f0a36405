//! What adapters add to the training step, against analytic oracles on the tiny model (the
//! interpreter): a `penalty` adds its value to the loss and its gradient to the params'
//! (P = ½·Σ(g − 1)², so ∂P/∂g = g − 1); an `after_step` sees the optimizer's params, their
//! gradients, its states and the step count, and runs in lockstep over the instances
//! (`across`). Tolerances: 1e-5 relative (only f32 summation order differs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{batches, program, session};
use graft_interp::Tensor;

/// The tiny example with the adapter `tilt` (a trainable gain per output) on q and v, `hooks`
/// added to its body, and SGD so that one step's update is −lr·∇.
fn tilt(hooks: &str) -> graft_frontend::Program {
    let adapter = format!(
        "\nadapter tilt() wraps linear(in, out) {{\n    param g: [out] as \"tilt_g\" = ones()\n{hooks}\n    forward(x) = base(x) * g\n}}\n"
    );
    program(|s| {
        s.replace("lora(r: 4, alpha: 8.0)", "tilt()")
            .replace("adamw(lr: 3e-2, weight_decay: 0.01)", "sgd(lr: 0.1)")
            + &adapter
    })
}

const PATHS: [&str; 4] = [
    "model.layers.0.self_attn.q_proj.tilt_g",
    "model.layers.0.self_attn.v_proj.tilt_g",
    "model.layers.1.self_attn.q_proj.tilt_g",
    "model.layers.1.self_attn.v_proj.tilt_g",
];

/// Gains that differ from 1 (and from each other): 1 + 0.05·sin(7i + 3k) on instance k.
fn gains(s: &mut graft_runtime::Session) {
    for (k, path) in PATHS.iter().enumerate() {
        let n = s.value(path).unwrap().numel();
        let v: Vec<f32> = (0..n)
            .map(|i| 1.0 + 0.05 * ((7 * i + 3 * k) as f32).sin())
            .collect();
        s.set_param(path, Tensor::f32(vec![n], v).unwrap()).unwrap();
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.as_f32().unwrap().to_vec()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert_eq!(a.len(), b.len(), "{what}");
    assert!(err <= 1e-5 * scale, "{what}: off by {err} (scale {scale})");
}

#[test]
fn a_penalty_adds_its_value_to_the_loss_and_its_gradient_to_the_params() {
    let plain = tilt("");
    let (ids, labels) = batches(&plain).next_batch();
    let mut a = session(plain);
    let mut b = session(tilt("    penalty 0.5 * sum((g - 1.0) * (g - 1.0))"));
    gains(&mut a);
    gains(&mut b);
    let (la, ga) = a.gradients(&ids, &labels).unwrap();
    let (lb, gb) = b.gradients(&ids, &labels).unwrap();
    let mut p = 0.0f64;
    for ((path, x), (_, y)) in ga.iter().zip(&gb) {
        let g = f32s(a.value(path).unwrap());
        p += g
            .iter()
            .map(|v| 0.5 * f64::from(v - 1.0).powi(2))
            .sum::<f64>();
        let want: Vec<f32> = f32s(x).iter().zip(&g).map(|(d, v)| d + (v - 1.0)).collect();
        close(&f32s(y), &want, path);
    }
    close(&[lb], &[(f64::from(la) + p) as f32], "loss");
    // The training step's loss is the same sum.
    let sb = b.step(&ids, &labels).unwrap();
    close(&[sb.loss], &[lb], "the step's loss");
}

#[test]
fn after_step_sees_the_update_the_gradient_its_state_and_every_instance() {
    // Each gain divided by the largest gain of all four instances (`across`), a running sum
    // of gradients and the step count as state.
    let hooks = "    state gsum: [out]\n    state last: [1]\n    after_step(step) {\n        \
                 gsum = gsum + grad(g)\n        last = last * 0.0 + step\n        \
                 let top = reshape(amax(g), [1])\n        \
                 let best = amax(concat(across(top), axis: 0))\n        g = g / best\n    }";
    let plain = tilt("");
    let mut data = batches(&plain);
    let mut a = session(plain);
    let mut b = session(tilt(hooks));
    let mut sums = vec![vec![0f32; 0]; PATHS.len()];
    for step in 0..3 {
        let (ids, labels) = data.next_batch();
        // The oracle: the plain step from b's params, then the hook by hand.
        for path in PATHS {
            a.set_param(path, b.value(path).unwrap().clone()).unwrap();
        }
        let (_, grads) = a.gradients(&ids, &labels).unwrap();
        a.step(&ids, &labels).unwrap();
        let updated: Vec<Vec<f32>> = PATHS.iter().map(|p| f32s(a.value(p).unwrap())).collect();
        let best = updated.iter().flatten().fold(f32::MIN, |m, x| m.max(*x));
        b.step(&ids, &labels).unwrap();
        for (k, path) in PATHS.iter().enumerate() {
            let want: Vec<f32> = updated[k].iter().map(|x| x / best).collect();
            close(&f32s(b.value(path).unwrap()), &want, path);
            let g = f32s(&grads.iter().find(|(p, _)| p == path).unwrap().1);
            sums[k] = if sums[k].is_empty() {
                g
            } else {
                sums[k].iter().zip(&g).map(|(s, x)| s + x).collect()
            };
            let inst = path.trim_end_matches(".tilt_g");
            let gsum = f32s(b.value(&format!("{inst}.gsum")).unwrap());
            close(&gsum, &sums[k], "gsum");
            let last = f32s(b.value(&format!("{inst}.last")).unwrap());
            assert_eq!(last, vec![step as f32], "the step count before this step");
        }
    }
}

/// A checkpoint carries the adapters' training state: AdaLoRA (tiny_adalora.graft's schedule
/// shortened so that pruning starts at step 3) resumed after 3 steps reproduces 6
/// uninterrupted steps bit for bit, params and states.
#[test]
fn a_checkpoint_resumes_adaloras_schedule_exactly() {
    let ada = || {
        program(|s| {
            s.replace("use peft.lora", "use peft.adalora").replace(
                "lora(r: 4, alpha: 8.0)",
                "adalora(init_r: 6, target_r: 4, tinit: 2, tfinal: 1, total_step: 6)",
            )
        })
    };
    let p = ada();
    let fp = graft_runtime::Fingerprint::of(&p, Some(&common::data())).unwrap();
    let mut data = batches(&p);
    let group: Vec<(Tensor, Tensor)> = (0..6).map(|_| data.next_batch()).collect();
    let mut whole = session(p);
    let mut first = session(ada());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoint.safetensors");
    for (i, (ids, labels)) in group.iter().enumerate() {
        whole.step(ids, labels).unwrap();
        if i < 3 {
            first.step(ids, labels).unwrap();
        }
    }
    first.save_checkpoint(&file, &fp).unwrap();
    let mut resumed = session(ada());
    resumed.load_checkpoint(&file, &fp, false).unwrap();
    for (ids, labels) in &group[3..] {
        resumed.step(ids, labels).unwrap();
    }
    let mut states = 0;
    for i in resumed.step_fn.inputs() {
        if matches!(
            i.kind,
            graft_ir::InputKind::Param | graft_ir::InputKind::State
        ) {
            assert_eq!(resumed.value(i.name), whole.value(i.name), "{}", i.name);
            states += usize::from(i.name.ends_with(".kept"));
        }
    }
    assert_eq!(states, 4, "every instance's rank mask");
    let pruned: usize = PATHS
        .iter()
        .map(|p| {
            let e = p.replace("tilt_g", "lora_E");
            f32s(whole.value(&e).unwrap())
                .iter()
                .filter(|x| **x == 0.0)
                .count()
        })
        .sum();
    assert_eq!(pruned, 8, "24 triplets pruned to the budget of 16");
}
