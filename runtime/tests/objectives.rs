//! Objectives beyond the causal-LM loss, against computations written here from their
//! papers' formulas.
//!
//! DPO (`objectives.dpo`) on the tiny Llama with LoRA: the reference is the model with its
//! adapters disabled, so before any update policy and reference agree and the loss is
//! exactly ln 2 (1e-6); the second step's loss is DPO computed here in f64 from the
//! forward's logits after one step and the reference's logits (the forward before any step,
//! LoRA's B being zero), within 1e-5 relative; over twenty steps it falls below a third of
//! ln 2.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_interp::Tensor;

/// Each row's summed log-probability of its labelled next tokens.
fn sequence_logprob(logits: &Tensor, labels: &[i64]) -> Vec<f64> {
    let shape = &logits.ty().shape;
    let (n, s, v) = (shape[0], shape[1], shape[2]);
    let x = logits.to_f64_vec();
    (0..n)
        .map(|r| {
            (0..s - 1)
                .filter(|&t| labels[r * s + t + 1] != -100)
                .map(|t| {
                    let row = &x[(r * s + t) * v..(r * s + t + 1) * v];
                    let m = row.iter().fold(f64::MIN, |a, &b| a.max(b));
                    let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
                    row[labels[r * s + t + 1] as usize] - lse
                })
                .sum()
        })
        .collect()
}

/// −mean log σ(β((π_c − ref_c) − (π_r − ref_r))), chosen rows first, then rejected.
fn dpo(policy: &Tensor, reference: &Tensor, labels: &[i64], beta: f64) -> f64 {
    let p = sequence_logprob(policy, labels);
    let r = sequence_logprob(reference, labels);
    let h = p.len() / 2;
    let log_sigmoid = |x: f64| -(1.0 + (-x).exp()).ln();
    -(0..h)
        .map(|i| log_sigmoid(beta * ((p[i] - r[i]) - (p[h + i] - r[h + i]))))
        .sum::<f64>()
        / h as f64
}

#[test]
fn dpo_against_the_frozen_reference_matches_its_formula_and_trains() {
    let p = common::program(|s| {
        s.replace("use peft.lora", "use peft.lora\nuse objectives")
            .replace("loss causal_lm", "loss dpo(beta: 0.5)")
    });
    assert_eq!(p.train.loss, "dpo");
    let ids = common::ids(&p);
    // Rows 0 and 1 are chosen, 2 and 3 rejected; the first 5 tokens are the prompt.
    let seq = ids.ty().shape[1];
    let labels: Vec<i64> = (ids.as_i64().unwrap().iter().enumerate())
        .map(|(i, &t)| if i % seq < 5 { -100 } else { t })
        .collect();
    let labels_t = Tensor::i64(ids.ty().shape.clone(), labels.clone()).unwrap();
    let steps = p.train.steps;
    let mut session = common::session(p);
    let reference = session.forward(&ids).unwrap();
    let batch = [("input_ids", ids.clone()), ("labels", labels_t)];
    let mut losses = Vec::new();
    for step in 0..steps {
        let want = match step {
            0 => Some(std::f64::consts::LN_2),
            1 => Some(dpo(
                &session.forward(&ids).unwrap(),
                &reference,
                &labels,
                0.5,
            )),
            _ => None,
        };
        let loss = f64::from(session.step_named(&batch).unwrap().loss);
        if let Some(w) = want {
            let tol = if step == 0 { 1e-6 } else { 1e-5 * w };
            assert!((loss - w).abs() <= tol, "step {}: {loss} vs {w}", step + 1);
        }
        losses.push(loss);
    }
    let last = losses[steps - 1];
    assert!(
        last < std::f64::consts::LN_2 / 3.0,
        "the DPO loss did not fall: {losses:?}"
    );
}
