//! Data records into training examples: token ids and their labels (`-100` where a token is
//! not a target), following TRL's `SFTTrainer`:
//! - `{"text": ...}`: tokenized with the tokenizer's special tokens, eos appended; every
//!   token is a target.
//! - `{"prompt": ..., "completion": ...}`: `prompt + completion` tokenized, eos appended; only
//!   the completion's tokens are targets (the first `len(tokenize(prompt))` are not).
//! - `{"messages": [{"role", "content"}, ...]}`: rendered by the chat template and tokenized
//!   without adding special tokens (the template writes them); only assistant turns are
//!   targets. A turn is the text the conversation gains from the prompt before it (rendered
//!   with the generation prompt) to the end of that turn: its content and end marker.
//! - `{"input_ids": [...]}` (optionally `"labels"`, the same length): pre-tokenized.

use crate::tokenizer::TextTokenizer;
use serde_json::Value;

/// Label value that is not a target (Hugging Face's ignore index).
pub const IGNORE: i64 = -100;

/// One example: ids and labels of the same length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Targets, [`IGNORE`] where a token is not one.
    pub labels: Vec<i64>,
}

impl Example {
    /// How many tokens are targets.
    pub fn targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// The example one JSONL line holds, or what is wrong with it. Ids must be below `vocab`.
///
/// # Errors
/// Not JSON, no known fields, a field of the wrong type, a text record without a tokenizer,
/// an id outside the vocabulary.
pub fn parse_line(
    line: &str,
    tok: Option<&TextTokenizer>,
    vocab: usize,
) -> Result<Example, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("expected a JSON object".into());
    };
    let need_tok = |what: &str| {
        tok.ok_or_else(|| {
            format!(
                "{what} records need a tokenizer: name one with `tokenizer \"path\"` in the \
                 `train` block, or load the model from a Hugging Face folder that has \
                 tokenizer.json"
            )
        })
    };
    let ex = if let Some(ids) = obj.get("input_ids") {
        pre_tokenized(ids, obj.get("labels"))?
    } else if let Some(text) = obj.get("text") {
        let text = text.as_str().ok_or("`text` must be a string")?;
        let t = need_tok("text")?;
        let ids = with_eos(t, ids_of(&t.encode(text, true)?));
        Example {
            labels: ids.clone(),
            ids,
        }
    } else if let (Some(p), Some(c)) = (obj.get("prompt"), obj.get("completion")) {
        let (Some(p), Some(c)) = (p.as_str(), c.as_str()) else {
            return Err("`prompt` and `completion` must be strings".into());
        };
        let t = need_tok("prompt/completion")?;
        let prompt = t.encode(p, true)?.ids.len();
        let ids = with_eos(t, ids_of(&t.encode(&format!("{p}{c}"), true)?));
        let labels = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| if i < prompt { IGNORE } else { id })
            .collect();
        Example { ids, labels }
    } else if let Some(m) = obj.get("messages") {
        chat(need_tok("chat")?, m)?
    } else {
        return Err(
            "expected `text`, `prompt` and `completion`, `messages`, or `input_ids`".into(),
        );
    };
    if let Some(&bad) = ex.ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        return Err(format!(
            "token {bad} is outside the model's vocabulary (0..{vocab})"
        ));
    }
    Ok(ex)
}

fn ids_of(e: &crate::tokenizer::Encoded) -> Vec<i64> {
    e.ids.iter().map(|&i| i64::from(i)).collect()
}

/// Appends eos unless the ids already end with it (TRL's `add_eos`).
fn with_eos(t: &TextTokenizer, mut ids: Vec<i64>) -> Vec<i64> {
    if let Some((_, eos)) = &t.eos
        && ids.last() != Some(&i64::from(*eos))
    {
        ids.push(i64::from(*eos));
    }
    ids
}

fn pre_tokenized(ids: &Value, labels: Option<&Value>) -> Result<Example, String> {
    let list = |v: &Value, what: &str| -> Result<Vec<i64>, String> {
        let Value::Array(a) = v else {
            return Err(format!("`{what}` must be a list of integers"));
        };
        a.iter()
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| format!("{what}: {x} is not an integer"))
            })
            .collect()
    };
    let ids = list(ids, "input_ids")?;
    let labels = match labels {
        None => ids.clone(),
        Some(l) => {
            let l = list(l, "labels")?;
            if l.len() != ids.len() {
                return Err(format!(
                    "`labels` has {} entries, `input_ids` {}",
                    l.len(),
                    ids.len()
                ));
            }
            l
        }
    };
    Ok(Example { ids, labels })
}

/// A conversation: rendered, tokenized, targets on assistant turns only.
fn chat(t: &TextTokenizer, messages: &Value) -> Result<Example, String> {
    let Value::Array(msgs) = messages else {
        return Err("`messages` must be a list of {role, content} objects".into());
    };
    for (i, m) in msgs.iter().enumerate() {
        let ok = m.get("role").is_some_and(Value::is_string)
            && m.get("content").is_some_and(Value::is_string);
        if !ok {
            return Err(format!(
                "message {i} needs a string `role` and a string `content`"
            ));
        }
    }
    let full = t.render_chat(msgs, false)?;
    let mut spans = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        let before = t.render_chat(&msgs[..i], true)?;
        let after = t.render_chat(&msgs[..=i], false)?;
        if !full.starts_with(&before) || !full.starts_with(&after) {
            return Err(format!(
                "the chat template does not render message {i}'s conversation so far as a \
                 prefix of the whole, so its assistant turn cannot be found"
            ));
        }
        spans.push((before.len(), after.len()));
    }
    let enc = t.encode(&full, false)?;
    let ids = ids_of(&enc);
    let labels = ids
        .iter()
        .zip(&enc.offsets)
        .map(|(&id, &(s, e))| {
            let inside = spans.iter().any(|&(a, b)| a < e && s < b);
            if inside { id } else { IGNORE }
        })
        .collect();
    Ok(Example { ids, labels })
}
