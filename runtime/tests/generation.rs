//! Padding and generation on the shipped tiny-llama folder, on the interpreter (the oracle):
//! right padding never changes the logits of real tokens or the loss; greedy generation, on
//! a padded window or with the KV cache, picks what the unpadded forward of exactly the
//! tokens so far picks; a model that is not causal is not decoded with a cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo;
use graft_frontend::{Loaded, Program, Stdlib, elaborate_for, load};
use graft_interp::Tensor;
use graft_runtime::generate::{Generator, Sampling};
use graft_runtime::{Interpreter, Session, WeightsFile};

fn loaded() -> Loaded {
    loaded_as(|t| t)
}

/// The shipped example with prefix tuning (3 virtual keys and values per layer) in place of
/// its LoRA.
fn loaded_prefix() -> Loaded {
    loaded_as(|t| {
        t.replace("use peft.lora", "use peft.prefix_tuning")
            .replace(
                "lora(r: 16, alpha: 32.0) at \"all-linear\"",
                "prefix_tuning(tokens: 3) at [\"kv\"]",
            )
    })
}

fn loaded_as(edit: impl Fn(String) -> String) -> Loaded {
    let path = repo().join("dsl-examples/stories_lora.graft");
    let text = edit(std::fs::read_to_string(&path).unwrap());
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

fn greedy(max_new_tokens: usize) -> Sampling {
    Sampling {
        max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    }
}

#[test]
fn greedy_generation_picks_the_argmax_of_the_exact_length_forward() {
    greedy_matches_the_exact_forward(&loaded(), true);
}

/// Prefix tuning's keys stand before the sequence, which the KV cache's derivation does not
/// follow: the cache is refused with the reason, and recomputing gives the exact tokens.
#[test]
fn a_prefix_tuned_model_generates_what_its_exact_forward_picks() {
    greedy_matches_the_exact_forward(&loaded_prefix(), false);
}

fn greedy_matches_the_exact_forward(l: &Loaded, decodes: bool) {
    let prompt = [0u32, 337, 336];
    // Both ways: recomputing a padded window, and the KV cache (window 17, checked against
    // a second elaboration at 19).
    for cached in [false, true] {
        let mut s = session(elaborate_for(l, 1, 17).unwrap());
        let mut g = Generator::new(&s, &Interpreter, false).unwrap();
        if cached {
            let longer = elaborate_for(l, 1, 19).unwrap();
            match g.with_kv_cache(&s, &longer, &Interpreter, false) {
                Ok(with) => g = with,
                Err(e) if !decodes => {
                    assert!(e.to_string().contains("cannot decode"), "{e}");
                    g = Generator::new(&s, &Interpreter, false).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut seen = Vec::new();
        let got = g
            .generate(&mut s, &prompt, &[], greedy(6), &mut |t| seen.push(t))
            .unwrap();
        assert_eq!((got.cached, got.note.clone()), (cached && decodes, None));
        let got = got.tokens;
        assert_eq!(got, seen);
        assert_eq!(got.len(), 6);
        let params: Vec<(String, Tensor)> = s
            .params()
            .into_iter()
            .map(|(p, t)| (p, t.clone()))
            .collect();
        let mut ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        for &tok in &got {
            let mut exact = session(elaborate_for(l, 1, ids.len()).unwrap());
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
            assert_eq!(tok as usize, argmax, "cached: {cached}");
            ids.push(i64::from(tok));
        }
    }
}

#[test]
fn the_kv_cache_decodes_the_full_forwards_logits_position_by_position() {
    let l = loaded();
    let f = graft_runtime::eval::logits_function(
        elaborate_for(&l, 1, 9)
            .unwrap()
            .module
            .function("forward")
            .unwrap(),
    )
    .unwrap();
    let g = graft_runtime::eval::logits_function(
        elaborate_for(&l, 1, 11)
            .unwrap()
            .module
            .function("forward")
            .unwrap(),
    )
    .unwrap();
    let d = graft_ir::decode::derive_decode(&f, &g, "input_ids", "logits").unwrap();
    graft_ir::verify_function(&d.function, usize::MAX).unwrap();
    // Two caches per layer: keys (after rotary, [1, kv_heads, 9, head_dim]) and values (the
    // projection, [1, 9, kv_heads · head_dim]), both before grouped-query attention repeats
    // them for every head: 9 · 2 · 16 numbers each.
    assert_eq!(d.caches.len(), 4, "{:?}", d.caches);
    assert!(
        d.caches.iter().all(|(_, t)| t.numel() == 9 * 2 * 16),
        "{:?}",
        d.caches
    );
    let mut s = session(elaborate_for(&l, 1, 9).unwrap());
    let ids = [0i64, 337, 336, 311, 335, 279, 263, 355, 334];
    let full = s
        .forward(&Tensor::i64(vec![1, 9], ids.to_vec()).unwrap())
        .unwrap();
    let mut caches: Vec<(String, Tensor)> = d
        .caches
        .iter()
        .map(|(n, t)| (n.clone(), Tensor::zeros(t.clone())))
        .collect();
    for (t, &id) in ids.iter().enumerate() {
        let mut inputs: std::collections::HashMap<String, Tensor> = s
            .params()
            .into_iter()
            .map(|(p, t)| (p, t.clone()))
            .collect();
        let w = WeightsFile::open(&repo().join("dsl-examples/models/tiny-llama/model.safetensors"))
            .unwrap();
        for i in d.function.inputs() {
            if w.entries().contains_key(i.name) {
                inputs.insert(i.name.to_string(), w.read(i.name).unwrap());
            }
        }
        inputs.insert(
            "input_ids".into(),
            Tensor::i64(vec![1, 1], vec![id]).unwrap(),
        );
        inputs.insert("position".into(), Tensor::scalar_f32(t as f32));
        for (n, c) in &caches {
            inputs.insert(n.clone(), c.clone());
        }
        let out = graft_interp::run(&d.function, &inputs).unwrap();
        let logits = &out.iter().find(|(n, _)| n == "logits").unwrap().1;
        let (a, b) = (logits.as_f32().unwrap(), row(&full, t));
        let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        // Tolerance 1e-5 of the largest logit: the same products, summed in another order.
        assert!(err <= 1e-5 * scale, "position {t}: {err}");
        caches = out
            .into_iter()
            .filter(|(n, _)| n.starts_with("cache."))
            .collect();
    }
}

#[test]
fn a_model_that_is_not_causal_is_not_decoded_with_a_cache() {
    let text = "use nn\n\
        module bidi(vocab: int, hidden: int) {\n\
            embed = embedding(vocab, hidden)\n\
            proj = linear(hidden, vocab)\n\
            forward(input_ids: [batch, seq] i64) {\n\
                let h = embed(input_ids)\n\
                proj(softmax(h @ h^T, axis: -1) @ h)\n\
            }\n\
        }\n\
        model base = bidi(vocab: 64, hidden: 8)\n";
    let l = load(
        "bidi.graft",
        None,
        text.into(),
        &Stdlib::Dir(repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let mut s = Session::new(elaborate_for(&l, 1, 9).unwrap(), None, 0).unwrap();
    let longer = elaborate_for(&l, 1, 11).unwrap();
    let g = Generator::new(&s, &Interpreter, false)
        .unwrap()
        .with_kv_cache(&s, &longer, &Interpreter, false)
        .unwrap();
    let got = g
        .generate(&mut s, &[1, 2, 3, 4], &[], greedy(3), &mut |_| {})
        .unwrap();
    assert!(!got.cached && got.tokens.len() == 3, "{got:?}");
    assert!(got.note.unwrap().contains("causal"));
}
