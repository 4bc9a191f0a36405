//! Training behaviour on the reference interpreter: the loss goes down on the shipped example,
//! learning-rate schedules follow Hugging Face's formulas, clipping and SGD follow torch, and
//! initializers follow PEFT (seeded and reproducible).

use graft_frontend::{Stdlib, compile};
use graft_interp::Tensor;
use graft_runtime::{Session, WeightsFile};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    r.canonicalize().unwrap_or(r)
}

/// Compiles `dsl-examples/<example>` with its `train` block replaced, and opens a session on
/// the fixture weights.
fn session(example: &str, train: Option<&str>, seed: u64) -> Session {
    let path = repo().join("dsl-examples").join(example);
    let mut text = std::fs::read_to_string(&path).expect("example");
    if let Some(t) = train {
        let at = text.find("train {").expect("train block");
        text = format!("{}train {{ {t} }}\n", &text[..at]);
    }
    let (_, program) = compile(
        example,
        Some(&path),
        text,
        &Stdlib::Dir(repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let weights =
        WeightsFile::open(&repo().join("tests/fixtures/base.safetensors")).expect("weights");
    Session::new(program, Some(&weights), seed).unwrap_or_else(|e| panic!("{e}"))
}

fn batch() -> Tensor {
    WeightsFile::open(&repo().join("tests/fixtures/base.safetensors"))
        .expect("weights")
        .read("input_ids")
        .expect("ids")
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.as_f32().expect("f32").to_vec()
}

#[test]
fn loss_goes_down_on_the_tiny_example() {
    let mut s = session("tiny_lora.graft", None, 0);
    let mut b = graft_runtime::data::load(
        &s.program,
        &repo().join("dsl-examples/data/tiny_tokens.jsonl"),
        None,
        false,
        false,
    )
    .expect("data")
    .0;
    let losses: Vec<f32> = (0..12)
        .map(|_| {
            let (ids, labels) = b.next_batch();
            s.step(&ids, &labels).expect("step").loss
        })
        .collect();
    let first: f32 = losses[..3].iter().sum::<f32>() / 3.0;
    let last: f32 = losses[9..].iter().sum::<f32>() / 3.0;
    assert!(
        last < first - 0.4,
        "mean loss of steps 10-12 ({last}) should be well below steps 1-3 ({first}): {losses:?}"
    );
}

/// Hugging Face's schedule factors, computed independently in f64.
fn hf_factor(kind: &str, s: usize, warmup: usize, total: usize) -> f64 {
    if s < warmup {
        return s as f64 / warmup.max(1) as f64;
    }
    let progress = (s - warmup) as f64 / (total - warmup).max(1) as f64;
    match kind {
        "constant" => 1.0,
        "linear" => ((total - s) as f64 / (total - warmup).max(1) as f64).max(0.0),
        _ => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[test]
fn learning_rate_schedules_match_hugging_face() {
    let ids = batch();
    for kind in ["constant", "linear", "cosine"] {
        let mut s = session(
            "tiny_lora.graft",
            Some(&format!(
                "optimizer adamw(lr: 0.5) schedule {kind}(warmup: 3) steps 8 batch 2 seq 8"
            )),
            0,
        );
        for step in 0..8 {
            let lr = s.step(&ids, &ids).expect("step").lr as f64;
            let want = 0.5 * hf_factor(kind, step, 3, 8);
            assert!(
                (lr - want).abs() <= 1e-6 * want.max(1e-3),
                "{kind} step {step}: lr {lr} vs {want} (tolerance 1e-6 relative)"
            );
        }
    }
}

#[test]
fn clipping_and_sgd_follow_torch() {
    let ids = batch();
    // Plain SGD, lr 1, clip to 0.01: Δp = -g · min(1, c / (‖g‖ + 1e-6)) (clip_grad_norm_).
    let mut s = session(
        "tiny_lora.graft",
        Some("optimizer sgd(lr: 1.0) clip 0.01 batch 2 seq 8"),
        1,
    );
    // Start from a nonzero B so every gradient is nonzero.
    let b0 = s
        .value("model.layers.0.self_attn.q_proj.lora_A.weight")
        .expect("A")
        .clone();
    let _ = b0;
    let (_, grads) = s.gradients(&ids, &ids).expect("grads");
    let norm = grads
        .iter()
        .flat_map(|(_, g)| f32s(g))
        .map(|x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let coef = (0.01 / (norm + 1e-6)).min(1.0);
    let before: Vec<(String, Vec<f32>)> =
        s.params().into_iter().map(|(p, t)| (p, f32s(t))).collect();
    let stats = s.step(&ids, &ids).expect("step");
    assert!(
        (stats.grad_norm as f64 - norm).abs() <= 1e-5 * norm,
        "grad_norm {} vs {norm}",
        stats.grad_norm
    );
    for ((path, p0), (_, g)) in before.iter().zip(&grads) {
        let p1 = f32s(s.value(path).expect("param"));
        for ((a, b), g) in p1.iter().zip(p0).zip(f32s(g)) {
            let want = *b as f64 - coef * g as f64;
            assert!(
                (*a as f64 - want).abs() <= 1e-6 + 1e-5 * want.abs(),
                "{path}: {a} vs {want}"
            );
        }
    }

    // SGD with momentum μ over two steps: buf₁ = g₀, buf₂ = μ·g₀ + g₁, p ← p − lr·buf.
    let mut s = session(
        "tiny_lora.graft",
        Some("optimizer sgd(lr: 0.1, momentum: 0.9) batch 2 seq 8"),
        1,
    );
    let p0: Vec<(String, Vec<f32>)> = s.params().into_iter().map(|(p, t)| (p, f32s(t))).collect();
    let (_, g0) = s.gradients(&ids, &ids).expect("g0");
    s.step(&ids, &ids).expect("step 1");
    let (_, g1) = s.gradients(&ids, &ids).expect("g1");
    s.step(&ids, &ids).expect("step 2");
    for (((path, p), (_, g0)), (_, g1)) in p0.iter().zip(&g0).zip(&g1) {
        let got = f32s(s.value(path).expect("param"));
        for (i, x) in got.iter().enumerate() {
            let (a, b) = (f32s(g0)[i] as f64, f32s(g1)[i] as f64);
            let want = p[i] as f64 - 0.1 * a - 0.1 * (0.9 * a + b);
            assert!(
                (*x as f64 - want).abs() <= 1e-6 + 1e-5 * want.abs(),
                "{path}[{i}]: {x} vs {want}"
            );
        }
    }
}

#[test]
fn initializers_follow_peft_and_are_reproducible() {
    let s = session("tiny_lora.graft", None, 7);
    let a = f32s(
        s.value("model.layers.0.self_attn.q_proj.lora_A.weight")
            .expect("A"),
    );
    // kaiming_uniform(a = √5) on [r, in = 64]: bound = √(2 / (1 + 5)) · √(3 / 64) = 1/8.
    let bound = 0.125f32;
    assert!(a.iter().all(|x| x.abs() <= bound), "lora_A within ±1/8");
    let var = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64;
    let want = (bound as f64).powi(2) / 3.0;
    assert!(
        (var - want).abs() < 0.2 * want,
        "variance {var} vs uniform's {want} (±20% for 256 samples)"
    );
    assert!(
        f32s(
            s.value("model.layers.0.self_attn.q_proj.lora_B.weight")
                .expect("B")
        )
        .iter()
        .all(|x| *x == 0.0)
    );

    let again = session("tiny_lora.graft", None, 7);
    assert_eq!(
        a,
        f32s(
            again
                .value("model.layers.0.self_attn.q_proj.lora_A.weight")
                .expect("A")
        ),
        "same seed, same values"
    );
    let other = session("tiny_lora.graft", None, 8);
    assert_ne!(
        a,
        f32s(
            other
                .value("model.layers.0.self_attn.q_proj.lora_A.weight")
                .expect("A")
        ),
        "another seed, other values"
    );
    let v = f32s(
        s.value("model.layers.0.self_attn.v_proj.lora_A.weight")
            .expect("A"),
    );
    assert_ne!(a[..64], v[..64], "each param draws its own stream");

    let ia3 = session("tiny_ia3.graft", None, 0);
    assert!(
        f32s(ia3.value("model.layers.1.mlp.down_proj.ia3_l").expect("l"))
            .iter()
            .all(|x| *x == 1.0)
    );

    let dora = session("tiny_dora.graft", None, 0);
    let w = f32s(
        dora.value("model.layers.0.self_attn.v_proj.weight")
            .expect("W"),
    );
    let m = f32s(
        dora.value("model.layers.0.self_attn.v_proj.lora_magnitude_vector")
            .expect("m"),
    );
    for (row, mi) in m.iter().enumerate() {
        let norm = w[row * 64..(row + 1) * 64]
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (*mi as f64 - norm).abs() <= 1e-5 * norm,
            "row {row}: m {mi} vs ‖W‖ {norm}"
        );
    }

    let pt = session("tiny_prompt_tuning.graft", None, 0);
    let p = f32s(pt.value("prompt_embeddings").expect("P"));
    let e = f32s(pt.value("model.embed_tokens.weight").expect("E"));
    for row in p.chunks(64) {
        assert!(
            e.chunks(64).any(|v| v == row),
            "every prompt row is a vocabulary row"
        );
    }
}

/// Lion over two steps against its formula (lion-pytorch's), with the session's own
/// gradients (interpreter forward + backward) as g: c = β₁·m + (1 − β₁)·g,
/// p ← p·(1 − lr·λ) − lr·sign(c), m ← β₂·m + (1 − β₂)·g, m₀ = 0. Tolerance 1e-6 absolute
/// + 1e-5 relative (f32 arithmetic in the step).
/// One Lion step in f64 from params `p` and moment `m` with gradient `g`:
/// p ← p·(1 − lr·λ) − lr·sign(β₁·m + (1 − β₁)·g), checked against the step's params `got`
/// (1e-6 absolute + 1e-5 relative), then set to them; returns β₂·m + (1 − β₂)·g.
fn lion_check(
    p: &mut [f64],
    m: &[f64],
    g: &[f32],
    got: &[f32],
    (lr, b1, b2, wd): (f64, f64, f64, f64),
    what: &str,
) -> Vec<f64> {
    let mut next = vec![0.0; p.len()];
    for i in 0..p.len() {
        let gi = f64::from(g[i]);
        let c = b1 * m[i] + (1.0 - b1) * gi;
        let want = p[i] * (1.0 - lr * wd) - lr * c.signum() * f64::from(u8::from(c != 0.0));
        next[i] = b2 * m[i] + (1.0 - b2) * gi;
        let got = f64::from(got[i]);
        assert!(
            (got - want).abs() <= 1e-6 + 1e-5 * want.abs(),
            "{what}[{i}]: {got} vs {want}"
        );
        p[i] = got;
    }
    next
}

#[test]
fn lion_follows_its_formula() {
    let ids = batch();
    let (lr, b1, b2, wd) = (0.01, 0.9, 0.99, 0.1);
    let mut s = session(
        "tiny_lora.graft",
        Some("optimizer lion(lr: 0.01, beta1: 0.9, beta2: 0.99, weight_decay: 0.1) batch 2 seq 8"),
        1,
    );
    let mut p: Vec<(String, Vec<f64>)> = s
        .params()
        .into_iter()
        .map(|(n, t)| (n, f32s(t).iter().map(|x| f64::from(*x)).collect()))
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|(_, v)| vec![0.0; v.len()]).collect();
    for step in 0..2 {
        let (_, grads) = s.gradients(&ids, &ids).expect("grads");
        s.step(&ids, &ids).expect("step");
        for (((path, pv), mv), (_, g)) in p.iter_mut().zip(&mut m).zip(&grads) {
            let g = f32s(g);
            let got = f32s(s.value(path).expect("param"));
            let moment = lion_check(
                pv,
                mv,
                &g,
                &got,
                (lr, b1, b2, wd),
                &format!("step {step}, {path}"),
            );
            mv.copy_from_slice(&moment);
        }
    }
    assert!(
        s.value("lion.m.model.layers.0.self_attn.q_proj.lora_A.weight")
            .is_some()
    );
}

/// Lion with its moment in 8 bits, against the formula computed here in f64 with an
/// independent blockwise quantizer: per block of 64 of the flattened moment,
/// code = ⌊m / absmax · 127 + 128.5⌋ and m̂ = (code − 128) / 127 · absmax. Each step the
/// stored codes are those of β₂·m̂ + (1 − β₂)·g (within one code: f32 rounding at a half) and
/// the absmax within 1e-6 relative; the params follow p ← p·(1 − lr·λ) − lr·sign(β₁·m̂ +
/// (1 − β₁)·g), with m̂ read back from the stored codes (1e-6 absolute + 1e-5 relative).
#[test]
fn lion_with_an_8_bit_moment_follows_its_formula() {
    let ids = batch();
    let (lr, b1, b2, wd) = (0.01, 0.9, 0.99, 0.1);
    let mut s = session(
        "tiny_lora.graft",
        Some(
            "optimizer lion(lr: 0.01, beta1: 0.9, beta2: 0.99, weight_decay: 0.1, state_bits: 8) batch 2 seq 8",
        ),
        1,
    );
    let mut p: Vec<(String, Vec<f64>)> = s
        .params()
        .into_iter()
        .map(|(n, t)| (n, f32s(t).iter().map(|x| f64::from(*x)).collect()))
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|(_, v)| vec![0.0; v.len()]).collect();
    for step in 0..3 {
        let (_, grads) = s.gradients(&ids, &ids).expect("grads");
        s.step(&ids, &ids).expect("step");
        for (((path, pv), mv), (_, g)) in p.iter_mut().zip(&mut m).zip(&grads) {
            let g = f32s(g);
            let got = f32s(s.value(path).expect("param"));
            let codes = s.value(&format!("lion.m8.{path}")).expect("codes");
            let codes = codes.as_u8().expect("u8 codes");
            let absmax = f32s(s.value(&format!("lion.m8.absmax.{path}")).expect("absmax"));
            let m_new = lion_check(
                pv,
                mv,
                &g,
                &got,
                (lr, b1, b2, wd),
                &format!("step {step}, {path}"),
            );
            for (b, block) in m_new.chunks(64).enumerate() {
                let a = block.iter().fold(0f64, |x, y| x.max(y.abs()));
                let stored = f64::from(absmax[b]);
                assert!(
                    (stored - a).abs() <= 1e-6 * a.max(1e-30),
                    "{path} block {b}: absmax {stored} vs {a}"
                );
                for (j, x) in block.iter().enumerate() {
                    let want = (x / a.max(1e-30) * 127.0 + 128.5).floor();
                    let code = f64::from(codes[b * 64 + j]);
                    assert!(
                        (code - want).abs() <= 1.0,
                        "{path}[{}]: code {code} vs {want}",
                        b * 64 + j
                    );
                    mv[b * 64 + j] = (code - 128.0) / 127.0 * stored;
                }
            }
        }
    }
}

#[test]
fn hra_lokr_and_loha_start_as_the_base_model() {
    // PEFT's inits: HRA's reflections come in equal pairs (H = I), LoKr's first factor and
    // LoHa's last are zero. The base model's logits come from PyTorch (base.safetensors).
    let base = WeightsFile::open(&repo().join("tests/fixtures/base.safetensors"))
        .expect("weights")
        .read("logits")
        .expect("logits");
    let want = f32s(&base);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for example in ["tiny_hra.graft", "tiny_lokr.graft", "tiny_loha.graft"] {
        let mut s = session(example, Some("batch 2  seq 8  steps 1"), 7);
        let got = f32s(&s.forward(&batch()).expect("forward"));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // Tolerance 1e-5 of the largest logit: HRA's two reflections cancel up to rounding.
        assert!(err <= 1e-5 * scale, "{example}: {err}");
        let moved = s
            .params()
            .iter()
            .any(|(_, t)| f32s(t).iter().any(|&x| x != 0.0));
        assert!(moved, "{example}: every trainable tensor is zero");
    }
}

/// A base frozen in int8: the session holds each linear weight as the codes and absmaxes
/// `graft_quant::quantize_int8` makes of the file's weight (exactly), and the forward stays
/// within 3e-2 of the largest of PyTorch's f32 logits (int8's error, half a step of
/// absmax / 127 per weight, through two layers; measured 1.7e-2).
#[test]
fn int8_weights_are_quantized_at_load_and_read_through_dequantize() {
    let file = WeightsFile::open(&repo().join("tests/fixtures/base.safetensors")).expect("weights");
    let mut s = session("tiny_int8_lora.graft", Some("batch 2  seq 8  steps 1"), 0);
    let path = "model.layers.1.mlp.down_proj.weight";
    let w = file.read(path).expect("weight");
    let (codes, absmax) = graft_quant::quantize_int8(w.as_f32().expect("f32"), 64).expect("int8");
    assert_eq!(s.value(path).and_then(Tensor::as_u8), Some(&codes[..]));
    assert_eq!(
        s.value(&format!("{path}.absmax")).and_then(Tensor::as_f32),
        Some(&absmax[..])
    );
    let want = f32s(&file.read("logits").expect("logits"));
    let got = f32s(&s.forward(&batch()).expect("forward"));
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 3e-2 * scale, "{err} vs scale {scale}");
}
