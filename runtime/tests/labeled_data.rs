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
        id_limits: Vec::new(),
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
        id_limits: vec![("input_ids".into(), 96)],
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
    let e = load_error(
        "ids.jsonl",
        b"{\"input_ids\": [1, 2], \"labels\": 0}\n{\"input_ids\": [3, 500], \"labels\": 1}\n",
        &cls,
    );
    assert!(
        e.contains("ids.jsonl:2:") && e.contains("table of 96 rows"),
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

/// Mutated labeled records (truncated, bytes flipped, fields swapped between kinds) and
/// random bytes as a tensor file, loaded for classification, QA, seq2seq and image steps:
/// every one gives batches or an error, never a panic (the fuzz target `labeled_data` runs
/// the same calls on arbitrary bytes).
#[test]
fn mutated_labeled_data_never_panics() {
    let tok =
        TextTokenizer::open(&common::repo().join("dsl-examples/models/tiny-wordpiece")).unwrap();
    let cx = Context {
        tok: Some(&tok),
        decoder_start: 0,
        classes: 3,
        id_limits: vec![("input_ids".into(), 96)],
    };
    let ids = |n| TensorType::new(DType::I64, vec![2, n]);
    let steps: Vec<Vec<(String, TensorType)>> = vec![
        vec![
            ("input_ids".into(), ids(8)),
            ("labels".into(), TensorType::new(DType::I64, vec![2])),
        ],
        vec![
            ("input_ids".into(), ids(8)),
            ("token_type_ids".into(), ids(8)),
            ("labels".into(), ids(2)),
        ],
        vec![
            ("input_ids".into(), ids(8)),
            ("decoder_input_ids".into(), ids(4)),
            ("labels".into(), ids(4)),
        ],
        vec![
            (
                "pixel_values".into(),
                TensorType::new(DType::F32, vec![2, 3, 2, 2]),
            ),
            ("labels".into(), TensorType::new(DType::I64, vec![2])),
        ],
        vec![("labels".into(), TensorType::scalar(DType::I64))],
        vec![],
    ];
    let mut seeds: Vec<String> = Vec::new();
    for f in ["sentiment_tiny", "squad_tiny", "seq2seq_tiny", "dpo_tiny"] {
        let text =
            std::fs::read_to_string(common::repo().join(format!("dsl-examples/data/{f}.jsonl")))
                .unwrap();
        seeds.extend(text.lines().take(3).map(String::from));
    }
    seeds.extend([
        r#"{"question": "q", "context": "é", "answers": {"text": ["é"], "answer_start": [0]}}"#
            .into(),
        r#"{"question": "q", "context": "ab", "answers": {"text": ["b"], "answer_start": [99]}}"#
            .into(),
        r#"{"text": "x", "label": 1e300}"#.into(),
        r#"{"input_ids": [[[[1]]]], "labels": "x"}"#.into(),
        r#"{"source": "", "target": ""}"#.into(),
        r#"{"prompt": 1, "chosen": [], "rejected": {}}"#.into(),
    ]);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let dir = std::env::temp_dir().join(format!("graft-mutated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut loaded, mut refused) = (0, 0);
    for round in 0..300 {
        let mut lines = Vec::new();
        for _ in 0..4 {
            let mut b = seeds[(next() % seeds.len() as u64) as usize]
                .clone()
                .into_bytes();
            match next() % 4 {
                0 => b.truncate((next() % (b.len() as u64 + 1)) as usize),
                1 if !b.is_empty() => {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] = (next() % 256) as u8;
                }
                2 => {
                    let other = seeds[(next() % seeds.len() as u64) as usize].as_bytes();
                    let cut = (next() % (other.len() as u64 + 1)) as usize;
                    b.extend_from_slice(&other[cut..]);
                }
                _ => {}
            }
            lines.push(String::from_utf8_lossy(&b).into_owned());
        }
        let jsonl = dir.join("d.jsonl");
        std::fs::write(&jsonl, lines.join("\n")).unwrap();
        let raw: Vec<u8> = (0..(next() % 64)).map(|_| (next() % 256) as u8).collect();
        let tensors = dir.join("d.safetensors");
        std::fs::write(
            &tensors,
            if round % 2 == 0 {
                &raw[..]
            } else {
                lines[0].as_bytes()
            },
        )
        .unwrap();
        for file in [&jsonl, &tensors] {
            for inputs in &steps {
                match LabeledBatches::load(file, inputs.clone(), &cx, Some(3), true) {
                    Ok((mut b, _)) => {
                        let batch = b.next_batch();
                        assert_eq!(batch.len(), inputs.len());
                        loaded += 1;
                    }
                    Err(_) => refused += 1,
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // Both paths ran: some mutants still make batches, most are refused.
    assert!(
        loaded > 0 && refused > loaded,
        "{loaded} loaded, {refused} refused"
    );
}
