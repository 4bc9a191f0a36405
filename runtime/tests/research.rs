//! What the research examples' constructs compute, checked by hand:
//! - `topk_mask` (nn): the k largest entries of each row, ties with the k-th kept;
//! - FedPDPO's FedAvg: after the first step every client's copy of the shared LoRA is the
//!   clients' mean (equal slices, exactly), while the personal LoRA is not averaged;
//! - FAAR's shrinking rank: after step k of T the gates of components i ≥ r − (r − final)·k/T
//!   are zero for every task, the others not.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_frontend::{Stdlib, compile, compile_file};
use graft_interp::Tensor;
use graft_runtime::labeled::{LabeledBatches, batch_inputs, context};
use graft_runtime::{Session, TextTokenizer, WeightsFile};

#[test]
fn topk_mask_keeps_the_k_largest_of_each_row() {
    let src = "use nn\nmodule pick(k: int) {\n    forward(x: [batch, seq]) = cast(topk_mask(x, k), f32)\n}\n\
               model m = pick(k: 2)\ntrain {\n    batch 3  seq 4\n}\n";
    let (_, p) = compile(
        "pick.graft",
        None,
        src.to_string(),
        &Stdlib::Dir(common::repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let f = p.module.function("forward").unwrap();
    let x = Tensor::f32(
        vec![3, 4],
        vec![1.0, 5.0, 3.0, 2.0, 4.0, 4.0, 0.0, -1.0, -2.0, 7.0, 7.0, 7.0],
    )
    .unwrap();
    let out = graft_interp::run(f, &[("x".to_string(), x)].into_iter().collect()).unwrap();
    let got = out[0].1.as_f32().unwrap().to_vec();
    // Row 3 ties three ways at the largest value: all three are kept.
    let want = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    assert_eq!(got, want);
}

fn research(name: &str) -> graft_frontend::Program {
    let spec = common::repo().join(format!("dsl-examples/research/{name}.graft"));
    compile_file(&spec, &Stdlib::Dir(common::repo().join("stdlib")))
        .unwrap_or_else(|e| panic!("{e:?}"))
        .1
}

#[test]
fn fedavg_averages_the_shared_lora_and_not_the_personal_one() {
    let p = research("fedpdpo");
    let tok = TextTokenizer::open(&common::repo().join("dsl-examples/models/tiny-llama")).unwrap();
    let cx = context(&p, Some(&tok));
    let data = common::repo().join("dsl-examples/data/dpo_clients_tiny.jsonl");
    let (mut b, _) = LabeledBatches::load(&data, batch_inputs(&p), &cx, None, false).unwrap();
    let batch = b.next_batch();
    let w = WeightsFile::open(&p.weights.as_ref().unwrap().0).unwrap();
    let mut s = Session::new(p, Some(&w), 0).unwrap();
    let named: Vec<(&str, Tensor)> = batch.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    s.step_named(&named).unwrap();
    let halves = |name: &str| {
        let v = s
            .value(name)
            .unwrap_or_else(|| panic!("{name}"))
            .to_f64_vec();
        let h = v.len() / 2;
        (v[..h].to_vec(), v[h..].to_vec())
    };
    let (a0, a1) = halves("model.layers.0.self_attn.q_proj.A");
    assert_eq!(a0, a1, "the shared LoRA's client copies are averaged");
    let (p0, p1) = halves("model.layers.0.mlp.down_proj.A");
    assert_ne!(p0, p1, "the personal LoRA is not");
}

#[test]
fn faar_drops_rank_components_on_its_schedule() {
    let p = research("faar");
    let w = WeightsFile::open(&common::repo().join("tests/fixtures/base.safetensors")).unwrap();
    let mut s = Session::new(p, Some(&w), 0).unwrap();
    let ids = common::ids(&common::program(|t| t));
    let task = Tensor::i64(vec![4], vec![0, 1, 0, 1]).unwrap();
    let batch = [("input_ids", ids.clone()), ("labels", ids), ("task", task)];
    // r = 8, final_r = 2, T = 20: after step k, keep = 8 − 6·k/20 components.
    for k in 1..=10usize {
        s.step_named(&batch).unwrap();
        let keep = 8.0 - 6.0 * k as f64 / 20.0;
        let gates = s
            .value("model.layers.1.self_attn.v_proj.gates")
            .unwrap()
            .to_f64_vec();
        for (j, g) in gates.iter().enumerate() {
            let i = (j % 8) as f64;
            assert_eq!(
                *g == 0.0,
                i >= keep,
                "step {k}: gate of component {i} is {g}"
            );
        }
    }
}
