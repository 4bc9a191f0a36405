//! Models beyond Llama against transformers: each `tests/models/*.graft` spec's `@forward` on
//! the interpreter, with the weights and the batch of its fixture
//! (`scripts/make_model_fixtures.py`: a tiny random Hugging Face model, loaded by Hugging
//! Face's names), against the logits transformers computed. Tolerance: 1e-4 relative to the
//! largest logit (f32 on both sides; the interpreter accumulates in f64).
//!
//! Training with an objective written in graft (`cross_entropy`, `token_cross_entropy`):
//! LoRA's B starts at zero, so the first step's loss is the cross-entropy of transformers'
//! logits, computed here from the fixture (1e-5 relative); over twenty steps on the batch it
//! falls at every step, by more than a tenth in all.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use graft_frontend::{Stdlib, compile_file};
use graft_interp::Tensor;
use graft_runtime::{Interpreter, Session, SessionOptions, WeightsFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fixture entries that are transformers' results or labels, not inputs of the forward.
const OUTPUTS: [&str; 4] = ["logits", "loss", "start_positions", "end_positions"];

/// The largest |a − b| over the largest |b|.
fn norm_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.ty(), b.ty());
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// `tests/models/{name}.graft`'s forward on its fixture's weights and batch, against the
/// fixture's logits.
fn check_forward(name: &str) {
    let spec = repo().join(format!("tests/models/{name}.graft"));
    let (_, program) = match compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok(r) => r,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    };
    let fixture = WeightsFile::open(&repo().join(format!("tests/fixtures/{name}.safetensors")))
        .expect("fixture");
    let forward = program.module.function("forward").expect("forward");
    let mut inputs = HashMap::new();
    for input in forward.inputs() {
        let t = fixture
            .read(input.name)
            .unwrap_or_else(|e| panic!("{name}: `{}` is not in the fixture: {e}", input.name));
        assert_eq!(t.ty(), input.ty, "{name}: `{}`", input.name);
        inputs.insert(input.name.to_string(), t);
    }
    // Every weight of the fixture is read: the spec names them all, by Hugging Face's names.
    let weights = (fixture.entries().keys())
        .filter(|k| !OUTPUTS.contains(&k.as_str()))
        .count();
    assert_eq!(
        inputs.len(),
        weights,
        "{name}: the spec reads every fixture tensor"
    );
    let out = graft_interp::run(forward, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let logits = &out.iter().find(|(n, _)| n == "logits").expect("logits").1;
    let want = fixture.read("logits").expect("logits");
    let e = norm_err(logits, &want);
    assert!(
        e <= 1e-4,
        "{name}: logits differ from transformers' by {e:e}"
    );
}

#[test]
fn bert_for_sequence_classification_matches_transformers() {
    check_forward("bert_classifier");
}

#[test]
fn vit_for_image_classification_matches_transformers() {
    check_forward("vit_classifier");
}

/// Mean cross-entropy of `logits` [.., C] against one label per row, in f64.
fn cross_entropy(logits: &Tensor, labels: &[i64]) -> f64 {
    let v = logits.to_f64_vec();
    let c = v.len() / labels.len();
    let rows = v.chunks(c).zip(labels);
    let total: f64 = rows
        .map(|(row, &y)| {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
            m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - row[y as usize]
        })
        .sum();
    total / labels.len() as f64
}

/// Trains `tests/models/{spec}.graft` for its steps on `{fixture}`'s batch with `labels`
/// (one per row of the logits).
fn trains_with_a_graft_objective(spec: &str, fixture: &str, labels: &[i64]) {
    let file = WeightsFile::open(&repo().join(format!("tests/fixtures/{fixture}.safetensors")))
        .expect("fixture");
    let want = cross_entropy(&file.read("logits").expect("logits"), labels);
    trains(spec, fixture, Some(labels), want);
}

/// CLIP's loss, computed here: the mean of the cross-entropies of the rows and of the
/// columns of square logits, the diagonal being every row's and column's target.
fn info_nce(logits: &Tensor) -> f64 {
    let n = logits.ty().shape[0];
    let x = logits.to_f64_vec();
    let ce = |at: &dyn Fn(usize, usize) -> f64| -> f64 {
        (0..n)
            .map(|i| {
                let m = (0..n).map(|j| at(i, j)).fold(f64::MIN, f64::max);
                let lse = m + (0..n).map(|j| (at(i, j) - m).exp()).sum::<f64>().ln();
                lse - at(i, i)
            })
            .sum::<f64>()
            / n as f64
    };
    (ce(&|i, j| x[i * n + j]) + ce(&|i, j| x[j * n + i])) / 2.0
}

/// Trains `tests/models/{spec}.graft` for its steps on `{fixture}`'s batch (with `labels`,
/// one per row of the logits, when the objective reads them); the first loss must be
/// `want`, and transformers' loss when the fixture has one.
fn trains(spec: &str, fixture: &str, labels: Option<&[i64]>, want: f64) {
    let path = repo().join(format!("tests/models/{spec}.graft"));
    let (_, program) = match compile_file(&path, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok(r) => r,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    };
    assert!(
        program.module.function("loss").is_some(),
        "{spec}: no @loss"
    );
    let file = WeightsFile::open(&repo().join(format!("tests/fixtures/{fixture}.safetensors")))
        .expect("fixture");
    let steps = program.train.steps;
    let opts = SessionOptions {
        optimize: true,
        backend: &Interpreter,
    };
    let forward = program.module.function("forward").expect("forward").clone();
    let mut session = Session::with_options(program, Some(&file), 0, &opts)
        .unwrap_or_else(|e| panic!("{spec}: {e}"));
    let mut batch: Vec<(&str, Tensor)> = forward
        .inputs()
        .filter(|i| i.kind == graft_ir::InputKind::Data)
        .map(|i| (i.name, file.read(i.name).expect("batch input")))
        .collect();
    let logits = file.read("logits").expect("logits");
    let shape = logits.ty().shape[..logits.ty().rank() - 1].to_vec();
    if let Some(labels) = labels {
        batch.push((
            "labels",
            Tensor::i64(shape, labels.to_vec()).expect("labels"),
        ));
    }
    // Where transformers computed the loss too (its QA loss), the two agree.
    if let Ok(hf) = file.read("loss") {
        let hf = hf.to_f64_vec()[0];
        assert!(
            (hf - want).abs() <= 1e-5 * hf.abs(),
            "{spec}: {hf} vs {want}"
        );
    }
    let mut losses = Vec::new();
    for _ in 0..steps {
        let s = session
            .step_named(&batch)
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        losses.push(f64::from(s.loss));
    }
    let first = losses[0];
    assert!(
        (first - want).abs() <= 1e-5 * want.abs(),
        "{spec}: first loss {first} vs the cross-entropy of transformers' logits {want}"
    );
    let last = losses[steps - 1];
    let falls = losses.windows(2).all(|w| w[1] <= w[0]);
    assert!(
        falls && last < 0.9 * first,
        "{spec}: the loss did not fall: {losses:?}"
    );
}

#[test]
fn lora_on_bert_trains_a_classifier_with_a_graft_objective() {
    trains_with_a_graft_objective("bert_lora_classifier", "bert_classifier", &[0, 2]);
}

#[test]
fn lora_on_vit_trains_an_image_classifier_with_a_graft_objective() {
    trains_with_a_graft_objective("vit_lora_classifier", "vit_classifier", &[1, 2]);
}

#[test]
fn t5_for_conditional_generation_matches_transformers() {
    check_forward("t5_seq2seq");
}

#[test]
fn lora_on_t5_trains_with_the_teacher_forced_decoder_loss() {
    let labels: Vec<i64> = (0..12).map(|i| (i * 37 + 5) % 64).collect();
    trains_with_a_graft_objective("t5_lora_seq2seq", "t5_seq2seq", &labels);
}

#[test]
fn bert_for_question_answering_matches_transformers() {
    check_forward("bert_qa");
}

#[test]
fn clip_matches_transformers() {
    check_forward("clip");
}

/// `objectives.info_nce` is CLIP's loss: the first step's loss is transformers' `loss` for
/// the fixture's pairs, and the symmetric cross-entropy computed here, within 1e-5.
#[test]
fn lora_on_clip_trains_with_the_contrastive_loss() {
    let file = WeightsFile::open(&repo().join("tests/fixtures/clip.safetensors")).expect("fixture");
    let want = info_nce(&file.read("logits").expect("logits"));
    trains("clip_lora", "clip", None, want);
}

/// The fixture's answer spans, [start, end] per sequence: transformers' QA loss is the first
/// step's.
#[test]
fn lora_on_bert_trains_extractive_qa_on_answer_spans() {
    trains_with_a_graft_objective("bert_lora_qa", "bert_qa", &[1, 4, 3, 6]);
}

/// T5 masks the source's padding: with the fixture's mask the logits are transformers'
/// (`t5_for_conditional_generation_matches_transformers`); reading the padding too moves them
/// by more than a hundredth of the largest, so the mask is seen.
#[test]
fn t5_masks_the_sources_padding() {
    let spec = repo().join("tests/models/t5_seq2seq.graft");
    let (_, program) = compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))).expect("spec");
    let fixture =
        WeightsFile::open(&repo().join("tests/fixtures/t5_seq2seq.safetensors")).expect("fixture");
    let forward = program.module.function("forward").expect("forward");
    let mut inputs = HashMap::new();
    for input in forward.inputs() {
        inputs.insert(
            input.name.to_string(),
            fixture.read(input.name).expect("input"),
        );
    }
    let ones = Tensor::i64(vec![2, 9], vec![1; 18]).expect("mask");
    inputs.insert("attention_mask".into(), ones);
    let out = graft_interp::run(forward, &inputs).expect("run");
    let logits = &out.iter().find(|(n, _)| n == "logits").expect("logits").1;
    let e = norm_err(logits, &fixture.read("logits").expect("logits"));
    assert!(e > 1e-2, "without the mask the logits moved by only {e:e}");
}

/// `metrics [accuracy]` beside `cross_entropy`: on the BERT fixture's batch with labels
/// [0, 2], evaluation reports transformers' logits' cross-entropy (1e-5 relative) and the
/// accuracy computed here from them (the share of rows whose label has the largest logit),
/// exactly.
#[test]
fn evaluation_reports_a_graft_metric_beside_the_loss() {
    let spec = repo().join("tests/models/bert_lora_classifier.graft");
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "loss cross_entropy",
        "loss cross_entropy\n    metrics [accuracy]",
    );
    let (_, program) = graft_frontend::compile(
        "bert.graft",
        Some(&spec),
        text,
        &Stdlib::Dir(repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let file = WeightsFile::open(&repo().join("tests/fixtures/bert_classifier.safetensors"))
        .expect("fixture");
    let mut session = Session::new(program, Some(&file), 0).expect("session");
    let labels = [0i64, 2];
    let mut batch: graft_runtime::labeled::Batch =
        ["input_ids", "token_type_ids", "attention_mask"]
            .iter()
            .map(|k| (k.to_string(), file.read(k).expect("input")))
            .collect();
    batch.push((
        "labels".into(),
        Tensor::i64(vec![2], labels.to_vec()).expect("labels"),
    ));
    let stats = session.evaluate_named(&[batch]).expect("eval");
    let logits = file.read("logits").expect("logits");
    let want = cross_entropy(&logits, &labels);
    assert!(
        (stats.loss - want).abs() <= 1e-5 * want,
        "{} vs {want}",
        stats.loss
    );
    let x = logits.to_f64_vec();
    let right = labels
        .iter()
        .enumerate()
        .filter(|&(r, &l)| (0..3).all(|c| x[r * 3 + c] <= x[r * 3 + l as usize]))
        .count();
    assert_eq!(
        stats.metrics,
        vec![("accuracy".to_string(), right as f64 / 2.0)]
    );
    assert!(stats.perplexity.is_nan());
}

/// Greedy seq2seq generation (`generate::seq2seq`) against transformers' `generate` on the
/// T5 fixture's first source (tests/fixtures/t5_generated.safetensors): the same 5 tokens,
/// exactly. (The LoRA spec, whose B starts at zero: a session needs a training objective.)
#[test]
fn t5_greedy_generation_matches_transformers() {
    let spec = repo().join("tests/models/t5_lora_seq2seq.graft");
    let (loaded, _) = compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))).expect("spec");
    let program = graft_frontend::elaborate_for(&loaded, 1, 9).expect("one sequence");
    let weights =
        WeightsFile::open(&repo().join("tests/fixtures/t5_seq2seq.safetensors")).expect("weights");
    let want = WeightsFile::open(&repo().join("tests/fixtures/t5_generated.safetensors"))
        .expect("fixture");
    let mut session = Session::new(program, Some(&weights), 0).expect("session");
    let inputs = [
        ("input_ids", want.read("input_ids").expect("ids")),
        ("attention_mask", want.read("attention_mask").expect("mask")),
    ];
    let source = graft_runtime::generate::seq2seq::Source {
        inputs: &inputs,
        start: 0,
        pad: 0,
    };
    let s = graft_runtime::generate::Sampling {
        max_new_tokens: 5,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    let got =
        graft_runtime::generate::seq2seq::generate(&mut session, &source, &[], s, &mut |_| {})
            .expect("generate");
    let generated = want.read("generated").expect("generated");
    let hf: Vec<u32> = generated.as_i64().expect("ids")[1..]
        .iter()
        .map(|&t| t as u32)
        .collect();
    assert_eq!(got.tokens, hf);
}
