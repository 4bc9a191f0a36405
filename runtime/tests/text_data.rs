//! Text data against its oracle: `tests/fixtures/tokenizer/expected.json`, made by
//! scripts/make_tiny_model.py with Python's `tokenizers` and jinja2 from the shipped
//! tokenizer. Ids, rendered chats and loss masks must be identical (tolerance: none).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo;
use graft_runtime::TextTokenizer;
use graft_runtime::records::{IGNORE, parse_line};
use serde_json::{Value, json};

fn tok() -> TextTokenizer {
    TextTokenizer::open(&repo().join("dsl-examples/models/tiny-llama")).unwrap()
}

fn expected() -> Value {
    let p = repo().join("tests/fixtures/tokenizer/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn text_records_tokenize_as_python_tokenizers_does_with_eos_appended() {
    let t = tok();
    let eos = i64::from(t.eos.as_ref().unwrap().1);
    for r in expected()["text"].as_array().unwrap() {
        let text = r["text"].as_str().unwrap();
        let raw: Vec<i64> = t
            .encode(text, true)
            .unwrap()
            .ids
            .iter()
            .map(|&i| i64::from(i))
            .collect();
        assert_eq!(raw, ids(&r["ids"]), "{text:?}");
        let ex = parse_line(&json!({ "text": text }).to_string(), Some(&t), 512).unwrap();
        let mut want = ids(&r["ids"]);
        want.push(eos);
        assert_eq!(ex.ids, want, "{text:?}");
        assert_eq!(ex.labels, want, "every token of a text record is a target");
    }
}

#[test]
fn chats_render_as_jinja2_does_and_only_assistant_turns_are_targets() {
    let t = tok();
    for r in expected()["chat"].as_array().unwrap() {
        let msgs = r["messages"].as_array().unwrap();
        assert_eq!(
            t.render_chat(msgs, false).unwrap(),
            r["rendered"].as_str().unwrap()
        );
        let ex = parse_line(&json!({ "messages": msgs }).to_string(), Some(&t), 512).unwrap();
        assert_eq!(ex.ids, ids(&r["ids"]));
        let mask: Vec<i64> = ex.labels.iter().map(|&l| i64::from(l != IGNORE)).collect();
        assert_eq!(mask, ids(&r["assistant_mask"]));
        // The targets spell the assistant's reply and its end marker.
        let targets: Vec<u32> = ex
            .labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
        let reply = msgs[1]["content"].as_str().unwrap();
        assert!(t.decode(&targets).unwrap().contains(reply));
    }
}

#[test]
fn prompt_completion_pairs_train_on_the_completion_only() {
    let t = tok();
    let eos = i64::from(t.eos.as_ref().unwrap().1);
    for r in expected()["prompt_completion"].as_array().unwrap() {
        let ex = parse_line(&r.to_string(), Some(&t), 512).unwrap();
        let mut want = ids(&r["ids"]);
        want.push(eos);
        assert_eq!(ex.ids, want);
        let n = r["prompt_len"].as_u64().unwrap() as usize;
        assert!(ex.labels[..n].iter().all(|&l| l == IGNORE));
        assert_eq!(ex.labels[n..], want[n..]);
    }
}

#[test]
fn bad_tokenizer_files_are_named_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, "{\n  \"model\": [1,\n").unwrap();
    let e = TextTokenizer::open(&p).err().unwrap();
    assert!(
        e.contains("tokenizer.json:3:") && e.contains("not valid JSON"),
        "{e}"
    );
    std::fs::write(&p, "{\"model\": 3}").unwrap();
    let e = TextTokenizer::open(&p).err().unwrap();
    assert!(e.contains("tokenizer.json: not a tokenizer"), "{e}");
    let e = TextTokenizer::open(dir.path().join("none").as_path())
        .err()
        .unwrap();
    assert!(e.contains("none"), "{e}");
    // A config naming a token the vocabulary lacks.
    let src = repo().join("dsl-examples/models/tiny-llama/tokenizer.json");
    std::fs::copy(src, &p).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<nope>"}"#,
    )
    .unwrap();
    let e = TextTokenizer::open(dir.path()).err().unwrap();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("<nope>"),
        "{e}"
    );
}

#[test]
fn chat_records_without_a_template_or_with_bad_messages_are_errors() {
    let mut t = tok();
    let bad = parse_line(r#"{"messages": [{"role": "user"}]}"#, Some(&t), 512).unwrap_err();
    assert!(bad.contains("message 0 needs"), "{bad}");
    t.chat_template = None;
    let e = parse_line(
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        Some(&t),
        512,
    )
    .unwrap_err();
    assert!(e.contains("chat template"), "{e}");
    let e = parse_line(r#"{"text": "hi"}"#, Some(&t), 3).unwrap_err();
    assert!(e.contains("outside the model's vocabulary"), "{e}");
}

#[test]
fn generation_stops_at_eos_and_at_the_end_of_a_chat_turn() {
    let t = tok();
    let dir = repo().join("dsl-examples/models/tiny-llama");
    let stop = graft_runtime::generate::stop_tokens(&t, Some(&dir));
    let id = |s: &str| t.encode(s, false).unwrap().ids;
    assert_eq!(id("<|end_of_text|>").len(), 1);
    let want = [id("<|end_of_text|>")[0], id("<|im_end|>")[0]];
    assert_eq!(stop, want);
    assert_eq!(graft_runtime::generate::stop_tokens(&t, None), want[..1]);
}
