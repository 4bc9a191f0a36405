//! Labeled data (`graft_runtime::labeled`) against transformers: the first batch the loader
//! draws from each shipped labeled file, in file order, equals what transformers' tokenizers
//! make of the same records at the same lengths (tests/fixtures/labeled_oracle.json, written
//! by scripts/make_labeled_fixtures.py): ids, token types, attention masks, classification
//! labels, the extractive-QA spans of transformers' run_qa.py (answers cut away by the
//! truncation get the CLS token's span), and T5's labels and shifted decoder inputs. Exact
//! (integers).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use graft_ir::{DType, TensorType};
use graft_runtime::TextTokenizer;
use graft_runtime::labeled::{Context, LabeledBatches};
use serde_json::Value;

fn oracle(part: &str) -> Vec<Value> {
    let path = common::repo().join("tests/fixtures/labeled_oracle.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[part].as_array().unwrap().clone()
}

/// The first batch of `data` for `inputs` (name, per-row shape), against the oracle's
/// records of `part`, field by field.
fn check(part: &str, data: &str, tokenizer: &str, inputs: &[(&str, Vec<usize>)], classes: usize) {
    let want = oracle(part);
    let n = want.len();
    let tok = TextTokenizer::open(&common::repo().join(tokenizer)).unwrap();
    let typed: Vec<(String, TensorType)> = inputs
        .iter()
        .map(|(name, row)| {
            let mut shape = vec![n];
            shape.extend(row);
            (name.to_string(), TensorType::new(DType::I64, shape))
        })
        .collect();
    let cx = Context {
        tok: Some(&tok),
        decoder_start: 0,
        classes,
    };
    let path = common::repo().join(data);
    let (mut b, skipped) = LabeledBatches::load(&path, typed, &cx, None, false).unwrap();
    assert!(skipped.is_empty());
    let batch = b.next_batch();
    for (name, t) in &batch {
        let got = t.as_i64().unwrap();
        let per = got.len() / n;
        for (r, rec) in want.iter().enumerate() {
            let w: Vec<i64> = match &rec[name] {
                Value::Array(a) => a.iter().map(|x| x.as_i64().unwrap()).collect(),
                x => vec![x.as_i64().unwrap()],
            };
            assert_eq!(
                &got[r * per..(r + 1) * per],
                &w[..],
                "{part} record {r}: `{name}`"
            );
        }
    }
}

#[test]
fn text_classification_records_match_transformers() {
    let seq = vec![9];
    check(
        "sentiment",
        "dsl-examples/data/sentiment_tiny.jsonl",
        "dsl-examples/models/tiny-wordpiece",
        &[
            ("input_ids", seq.clone()),
            ("token_type_ids", seq.clone()),
            ("attention_mask", seq),
            ("labels", vec![]),
        ],
        3,
    );
}

#[test]
fn squad_records_match_transformers_run_qa() {
    let seq = vec![12];
    check(
        "squad",
        "dsl-examples/data/squad_tiny.jsonl",
        "dsl-examples/models/tiny-wordpiece",
        &[
            ("input_ids", seq.clone()),
            ("token_type_ids", seq.clone()),
            ("attention_mask", seq),
            ("labels", vec![2]),
        ],
        12,
    );
}

#[test]
fn seq2seq_records_match_transformers_t5() {
    check(
        "seq2seq",
        "dsl-examples/data/seq2seq_tiny.jsonl",
        "dsl-examples/models/tiny-t5-wordpiece",
        &[
            ("input_ids", vec![9]),
            ("attention_mask", vec![9]),
            ("decoder_input_ids", vec![6]),
            ("labels", vec![6]),
        ],
        64,
    );
}

/// Loads `text` (written to a temporary `name`) for `inputs`; the error's text.
fn load_error(name: &str, text: &[u8], inputs: &[(&str, TensorType)]) -> String {
    let dir = std::env::temp_dir().join(format!("graft-labeled-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let tok =
        TextTokenizer::open(&common::repo().join("dsl-examples/models/tiny-wordpiece")).unwrap();
    let cx = Context {
        tok: Some(&tok),
        decoder_start: 0,
        classes: 3,
    };
    let typed = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let r = LabeledBatches::load(&path, typed, &cx, None, false);
    std::fs::remove_dir_all(&dir).unwrap();
    match r {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_labeled_records_are_located_errors() {
    let ids = TensorType::new(DType::I64, vec![2, 8]);
    let labels = TensorType::new(DType::I64, vec![2]);
    let cls = [("input_ids", ids.clone()), ("labels", labels.clone())];
    let e = load_error(
        "range.jsonl",
        b"{\"text\": \"a good film\", \"label\": 1}\n{\"text\": \"bad\", \"label\": 3}\n",
        &cls,
    );
    assert!(e.contains("range.jsonl:2:") && e.contains("below 3"), "{e}");
    let e = load_error("kind.jsonl", b"{\"prompt\": \"x\"}\n", &cls);
    assert!(
        e.contains("kind.jsonl:1:") && e.contains("`input_ids`"),
        "{e}"
    );
    let e = load_error("few.jsonl", b"{\"text\": \"good\", \"label\": 1}\n", &cls);
    assert!(e.contains("needs 2 examples"), "{e}");
    let e = load_error(
        "answer.jsonl",
        br#"{"question": "who", "context": "the cat", "answers": {"text": ["dog"], "answer_start": [4]}}"#,
        &[("input_ids", ids), ("labels", TensorType::new(DType::I64, vec![2, 2]))],
    );
    assert!(
        e.contains("answer.jsonl:1:") && e.contains("is not \"dog\""),
        "{e}"
    );
    // A tensor file without an input the step reads names what it has.
    let bytes = graft_runtime::weights::to_safetensors(&[(
        "labels".to_string(),
        &graft_interp::Tensor::i64(vec![2], vec![0, 1]).unwrap(),
    )])
    .unwrap();
    let pixels = TensorType::new(DType::F32, vec![2, 3, 4, 4]);
    let e = load_error(
        "images.safetensors",
        &bytes,
        &[("pixel_values", pixels), ("labels", labels)],
    );
    assert!(
        e.contains("`pixel_values`") && e.contains("its tensors: labels"),
        "{e}"
    );
}
