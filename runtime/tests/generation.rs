//! Padding and generation on the shipped tiny-llama folder, on the interpreter (the oracle):
//! right padding never changes the logits of real tokens or the loss, and greedy generation
//! on a padded window picks what the unpadded forward of exactly the tokens so far picks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo;
use graft_frontend::{Loaded, Program, Stdlib, elaborate_for, load};
use graft_interp::Tensor;
use graft_runtime::generate::{Generator, Sampling};
use graft_runtime::{Interpreter, Session, WeightsFile};

fn loaded() -> Loaded {
    let path = repo().join("dsl-examples/stories_lora.graft");
    let text = std::fs::read_to_string(&path).unwrap();
    load(
        "stories_lora.graft",
        Some(path),
        text,
        &Stdlib::Dir(repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)))
}

fn session(p: Program) -> Session {
    let w = WeightsFile::open(&p.weights.as_ref().unwrap().0).unwrap();
    let mut s = Session::new(p, Some(&w), 0).unwrap();
    // Trained-looking adapters: LoRA's B starts at zero, which would hide the adapter.
    for (path, t) in s
        .params()
        .into_iter()
        .map(|(p, t)| (p, t.clone()))
        .collect::<Vec<_>>()
    {
        let data: Vec<f32> = (0..t.numel())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        s.set_param(&path, Tensor::f32(t.shape().to_vec(), data).unwrap())
            .unwrap();
    }
    s
}

fn row(t: &Tensor, pos: usize) -> Vec<f32> {
    let v = t.shape()[2];
    t.as_f32().unwrap()[pos * v..(pos + 1) * v].to_vec()
}

#[test]
fn right_padding_changes_neither_the_real_tokens_logits_nor_the_loss() {
    let l = loaded();
    let mut s = session(elaborate_for(&l, 1, 16).unwrap());
    let real = [0i64, 337, 336, 311, 335, 279, 263];
    let (mut a, mut b) = (real.to_vec(), real.to_vec());
    a.resize(16, 2);
    b.extend((0..9).map(|i| 40 + 13 * i));
    let t = |v: &[i64]| Tensor::i64(vec![1, 16], v.to_vec()).unwrap();
    let (la, lb) = (s.forward(&t(&a)).unwrap(), s.forward(&t(&b)).unwrap());
    for pos in 0..real.len() {
        // Tolerance 0: causal attention gives the padding a weight of exactly 0.
        assert_eq!(row(&la, pos), row(&lb, pos), "position {pos}");
    }
    assert_ne!(
        row(&la, 10),
        row(&lb, 10),
        "the padded positions themselves differ"
    );
    let mut labels = real.to_vec();
    labels.resize(16, -100);
    let labels = Tensor::i64(vec![1, 16], labels).unwrap();
    let (ea, eb) = (
        s.eval_loss(&t(&a), &labels).unwrap(),
        s.eval_loss(&t(&b), &labels).unwrap(),
    );
    assert_eq!(ea, eb);
    assert!(ea.is_finite() && ea > 0.0);
}

#[test]
fn greedy_generation_picks_the_argmax_of_the_exact_length_forward() {
    let l = loaded();
    let prompt = [0u32, 337, 336];
    let mut s = session(elaborate_for(&l, 1, 16).unwrap());
    let g = Generator::new(&s, &Interpreter, false).unwrap();
    let sampling = Sampling {
        max_new_tokens: 5,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    let mut seen = Vec::new();
    let got = g
        .generate(&mut s, &prompt, None, sampling, &mut |t| seen.push(t))
        .unwrap();
    assert_eq!(got, seen);
    assert_eq!(got.len(), 5);
    let params: Vec<(String, Tensor)> = s
        .params()
        .into_iter()
        .map(|(p, t)| (p, t.clone()))
        .collect();
    let mut ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    for &tok in &got {
        let mut exact = session(elaborate_for(&l, 1, ids.len()).unwrap());
        for (p, t) in &params {
            exact.set_param(p, t.clone()).unwrap();
        }
        let logits = exact
            .forward(&Tensor::i64(vec![1, ids.len()], ids.clone()).unwrap())
            .unwrap();
        let last = row(&logits, ids.len() - 1);
        let argmax = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap();
        assert_eq!(tok as usize, argmax);
        ids.push(i64::from(tok));
    }
}
