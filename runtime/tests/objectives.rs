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

/// A momentum teacher: `ema 0.9` keeps `ema.<path>` = 0.9·ema + 0.1·p after every update,
/// starting at the initial value, and `momentum_consistency` reads the forward under those
/// averages. Before any update teacher and student agree, so the first loss is the built-in
/// causal-LM loss of the same batch (1e-6 relative); after one step every average is
/// 0.9·p₀ + 0.1·p₁ (1e-6 of the largest entry); over twenty steps the loss falls by a
/// tenth.
#[test]
fn a_momentum_teacher_averages_the_params_and_starts_at_the_student() {
    let edit = |loss: &'static str| {
        move |s: String| {
            s.replace("use peft.lora", "use peft.lora\nuse objectives")
                .replace("loss causal_lm", loss)
        }
    };
    let p = common::program(edit("loss momentum_consistency(strength: 10.0)  ema 0.9"));
    let plain = common::program(|s| s);
    let ids = common::ids(&p);
    let mut causal = common::session(plain);
    let want = f64::from(causal.step(&ids, &ids).unwrap().loss);
    let steps = p.train.steps;
    let mut s = common::session(p);
    let before: Vec<(String, Tensor)> = s
        .params()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let batch = [("input_ids", ids.clone()), ("labels", ids.clone())];
    let mut losses = vec![f64::from(s.step_named(&batch).unwrap().loss)];
    assert!(
        (losses[0] - want).abs() <= 1e-6 * want,
        "{} vs {want}",
        losses[0]
    );
    for (name, p0) in &before {
        let p1 = s.value(name).unwrap().to_f64_vec();
        let ema = s
            .value(&format!("ema.{name}"))
            .expect("a moving average")
            .to_f64_vec();
        let scale = p1.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
        for ((a, b), e) in p0.to_f64_vec().iter().zip(&p1).zip(&ema) {
            let w = 0.9 * a + 0.1 * b;
            assert!((e - w).abs() <= 1e-6 * scale, "{name}: {e} vs {w}");
        }
    }
    for _ in 1..steps {
        losses.push(f64::from(s.step_named(&batch).unwrap().loss));
    }
    assert!(losses[steps - 1] < 0.9 * losses[0], "{losses:?}");
}
