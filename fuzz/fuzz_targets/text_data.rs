//! Fuzzes what reads a user's text data: a `tokenizer.json` (with the shipped
//! `tokenizer_config.json` beside it) and data lines (text, prompt/completion, chat through
//! the chat template, pre-tokenized) tokenized by the shipped tokenizer. Any bytes give a
//! value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn shipped() -> Option<&'static graft_runtime::TextTokenizer> {
    static TOK: OnceLock<Option<graft_runtime::TextTokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsl-examples/models/tiny-llama");
        graft_runtime::TextTokenizer::open(&dir).ok()
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("graft-fuzz-text-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("tokenizer.json");
    if std::fs::write(&file, data).is_ok() {
        if let Ok(t) = graft_runtime::TextTokenizer::open(&file) {
            let _ = t.encode("a probe", true);
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = graft_runtime::data::examples_of(&text, &dir.join("d.jsonl"), shipped(), 512, true);
});
