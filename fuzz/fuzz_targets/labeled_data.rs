//! Fuzzes what reads a user's labeled data: the bytes as a JSONL file of records
//! (classification, SQuAD, seq2seq, preference pairs, raw fields) and as a `.safetensors`
//! tensor file, each loaded for a classification, a QA, a seq2seq and an image step's batch
//! inputs with the shipped WordPiece tokenizer, and a batch drawn. Any bytes give batches or
//! an error, never a panic.
#![no_main]

use graft_ir::{DType, TensorType};
use graft_runtime::labeled::{Context, LabeledBatches};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn shipped() -> Option<&'static graft_runtime::TextTokenizer> {
    static TOK: OnceLock<Option<graft_runtime::TextTokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsl-examples/models/tiny-wordpiece");
        graft_runtime::TextTokenizer::open(&dir).ok()
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("graft-fuzz-labeled-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let ids = |n| TensorType::new(DType::I64, vec![2, n]);
    let steps: Vec<Vec<(String, TensorType)>> = vec![
        vec![("input_ids".into(), ids(8)), ("labels".into(), TensorType::new(DType::I64, vec![2]))],
        vec![("input_ids".into(), ids(8)), ("token_type_ids".into(), ids(8)), ("labels".into(), ids(2))],
        vec![("input_ids".into(), ids(8)), ("decoder_input_ids".into(), ids(4)), ("labels".into(), ids(4))],
        vec![
            ("pixel_values".into(), TensorType::new(DType::F32, vec![2, 3, 2, 2])),
            ("labels".into(), TensorType::new(DType::I64, vec![2])),
        ],
    ];
    let cx = Context {
        tok: shipped(),
        decoder_start: 0,
        classes: 3,
        id_limits: vec![("input_ids".into(), 96)],
    };
    for ext in ["jsonl", "safetensors"] {
        let file = dir.join(format!("d.{ext}"));
        if std::fs::write(&file, data).is_err() {
            continue;
        }
        for inputs in &steps {
            if let Ok((mut b, _)) = LabeledBatches::load(&file, inputs.clone(), &cx, Some(1), true) {
                let _ = b.next_batch();
            }
        }
    }
});
