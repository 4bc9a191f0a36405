//! One JSONL line of labeled data into its rows: the value of each batch input, fitted to
//! the step's per-row shape.
//!
//! A line is one example, read by its fields (Hugging Face's dataset columns):
//! - `{"text", "label"}`, optionally `"text_pair"`: sequence classification. The text (or
//!   pair, cut longest first) is tokenized with the special tokens to `seq` tokens; the label
//!   is a class index.
//! - `{"question", "context", "answers": {"text": [..], "answer_start": [..]}}`: extractive
//!   QA (SQuAD). The pair is tokenized with only the context cut; the labels are the first
//!   answer's start and end tokens, found by offsets as transformers' `run_qa.py` does, or
//!   both 0 (the first token) when the cut left the answer out.
//! - `{"source", "target"}`: seq2seq. The source is the encoder's input; the target,
//!   tokenized with the special tokens (T5 appends `</s>`) to the labels' length, is the
//!   labels, and the decoder's input is the labels shifted right after the decoder start
//!   token.
//! - `{"prompt", "chosen", "rejected"}`: a preference pair (TRL's DPO format): two rows,
//!   prompt + response + eos each, labelled on the response only. A batch of `batch` rows
//!   holds `batch / 2` pairs, every chosen row first and the rejected rows after, as
//!   `objectives.dpo` reads them.
//! - otherwise, fields named like batch inputs holding numbers or (nested) lists of numbers:
//!   taken as they are (`{"input_ids": [...], "attention_mask": [...], "labels": 2}`);
//!   labels default to the ids, as for pre-tokenized text.
//!
//! A batch input the record's kind does not give (a task or client id a module declares
//! with `input`) is read from the field of its name: `{"text": ..., "label": 1, "task": 0}`.
//!
//! Sequences are right-padded: ids with the pad token, masks with 0, labels with -100. Token
//! ids must be below the size of the table the forward reads them from.

use super::{Context, Rows};
use crate::records::IGNORE;
use graft_ir::TensorType;
use serde_json::Value;

/// Field values of one row before they are fitted to the inputs' shapes.
type Fields = Vec<(&'static str, Vec<f64>)>;

/// The rows one JSONL line gives.
pub(super) fn example(
    line: &str,
    inputs: &[(String, TensorType)],
    cx: &Context,
) -> Result<Rows, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let len = |name: &str| {
        inputs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, t)| t.shape.get(1).copied())
    };
    let seq = len("input_ids").unwrap_or(0);
    let need_tok = |what: &str| {
        cx.tok.ok_or_else(|| {
            format!(
                "{what} records need a tokenizer: name one with `tokenizer \"path\"` in the \
                 `train` block, or load the model from a Hugging Face folder that has \
                 tokenizer.json"
            )
        })
    };
    let str_field = |k: &str| -> Result<&str, String> {
        obj.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`{k}` must be a string"))
    };
    let rows: Vec<Fields> = if obj.contains_key("chosen") || obj.contains_key("rejected") {
        let t = need_tok("preference")?;
        let prompt = ids(&t.encode(str_field("prompt")?, true)?.ids);
        let mut rows = Vec::new();
        for k in ["chosen", "rejected"] {
            let mut resp = ids(&t.encode(str_field(k)?, false)?.ids);
            if let Some((_, eos)) = &t.eos {
                resp.push(f64::from(*eos));
            }
            let mut all = prompt.clone();
            all.extend(&resp);
            let labels = (0..all.len())
                .map(|i| {
                    if i < prompt.len() {
                        IGNORE as f64
                    } else {
                        all[i]
                    }
                })
                .collect();
            rows.push(vec![
                ("attention_mask", vec![1.0; all.len()]),
                ("input_ids", all),
                ("labels", labels),
            ]);
        }
        rows
    } else if obj.contains_key("question") {
        let t = need_tok("question-answering")?;
        let context = str_field("context")?;
        let f = t.encode_fit(str_field("question")?, Some(context), seq, true)?;
        let (start, end) = answer_span(obj.get("answers"), context, &f)?;
        vec![vec![
            ("attention_mask", vec![1.0; f.ids.len()]),
            (
                "token_type_ids",
                f.type_ids.iter().map(|&x| f64::from(x)).collect(),
            ),
            ("input_ids", ids(&f.ids)),
            ("labels", vec![start as f64, end as f64]),
        ]]
    } else if obj.contains_key("source") || obj.contains_key("target") {
        let t = need_tok("seq2seq")?;
        let src = t.encode_fit(str_field("source")?, None, seq, false)?;
        let target_len = len("labels").or(len("decoder_input_ids")).unwrap_or(seq);
        if target_len == 0 {
            return Err(
                "seq2seq records need a step that reads `labels` or `input_ids` per token".into(),
            );
        }
        let mut tgt = ids(&t
            .encode_fit(str_field("target")?, None, target_len, false)?
            .ids);
        tgt.resize(target_len, IGNORE as f64);
        // The labels shifted right, their padding the pad token (T5's `_shift_right`).
        let pad = t.pad.as_ref().map_or(0.0, |(_, id)| f64::from(*id));
        let mut dec = vec![cx.decoder_start as f64];
        dec.extend(
            tgt[..target_len - 1]
                .iter()
                .map(|&x| if x == IGNORE as f64 { pad } else { x }),
        );
        vec![vec![
            ("attention_mask", vec![1.0; src.ids.len()]),
            ("input_ids", ids(&src.ids)),
            ("decoder_input_ids", dec),
            ("labels", tgt),
        ]]
    } else if obj.contains_key("label") && obj.contains_key("text") {
        let t = need_tok("text classification")?;
        let pair = match obj.get("text_pair") {
            Some(_) => Some(str_field("text_pair")?),
            None => None,
        };
        let f = t.encode_fit(str_field("text")?, pair, seq, false)?;
        let label = obj
            .get("label")
            .and_then(Value::as_i64)
            .filter(|&l| l >= 0 && (l as usize) < cx.classes)
            .ok_or_else(|| {
                format!(
                    "`label` must be a class index below {} (the model's classes)",
                    cx.classes
                )
            })?;
        vec![vec![
            ("attention_mask", vec![1.0; f.ids.len()]),
            (
                "token_type_ids",
                f.type_ids.iter().map(|&x| f64::from(x)).collect(),
            ),
            ("input_ids", ids(&f.ids)),
            ("labels", vec![label as f64]),
        ]]
    } else {
        return raw(obj, inputs, &cx.id_limits).map(|row| vec![row]);
    };
    let pad = cx
        .tok
        .and_then(|t| t.pad.as_ref())
        .map_or(0.0, |(_, id)| f64::from(*id));
    rows.into_iter()
        .map(|fields| fit(fields, inputs, pad, obj, &cx.id_limits))
        .collect()
}

fn ids(v: &[u32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// A row's fields fitted to each batch input's per-row shape: sequences padded, every input
/// given by some field.
fn fit(
    fields: Fields,
    inputs: &[(String, TensorType)],
    pad: f64,
    obj: &serde_json::Map<String, Value>,
    limits: &[(String, usize)],
) -> Result<Vec<Vec<f64>>, String> {
    let kind = obj.keys().cloned().collect::<Vec<_>>().join(", ");
    inputs
        .iter()
        .map(|(name, ty)| {
            let given = fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone());
            // Else a field of the record by that name (a task or client id).
            let v = match (given, obj.get(name)) {
                (Some(v), _) => v,
                (None, Some(x)) => {
                    let mut flat = Vec::new();
                    numbers(x, &mut flat).map_err(|e| format!("`{name}`: {e}"))?;
                    flat
                }
                (None, None) => {
                    return Err(format!(
                        "the step reads `{name}` ({ty}), which records with fields {kind} do \
                         not give"
                    ));
                }
            };
            let fill = match name.as_str() {
                "input_ids" | "decoder_input_ids" => pad,
                "labels" => IGNORE as f64,
                _ => 0.0,
            };
            let v = shaped(name, v, &ty.shape[1..], fill)?;
            within_limits(name, &v, limits)?;
            Ok(v)
        })
        .collect()
}

/// Token ids below the size of the table the forward reads them from.
fn within_limits(name: &str, v: &[f64], limits: &[(String, usize)]) -> Result<(), String> {
    if let Some((_, limit)) = limits.iter().find(|(n, _)| n == name)
        && let Some(bad) = v.iter().find(|&&x| x < 0.0 || x >= *limit as f64)
    {
        return Err(format!(
            "`{name}` holds {bad}, outside the model's table of {limit} rows (token ids must \
             be below the vocabulary's size: is the tokenizer the model's?)"
        ));
    }
    Ok(())
}

/// `v` as a row of shape `per_row`: a sequence (rank 1) cut or padded with `fill`, anything
/// else of exactly its size.
fn shaped(name: &str, mut v: Vec<f64>, per_row: &[usize], fill: f64) -> Result<Vec<f64>, String> {
    let n: usize = per_row.iter().product();
    if per_row.len() == 1 {
        v.truncate(n);
        v.resize(n, fill);
    }
    if v.len() != n {
        return Err(format!(
            "`{name}` has {} values; the step reads {n} per example ({per_row:?})",
            v.len()
        ));
    }
    Ok(v)
}

/// A record whose fields are named like batch inputs, with numbers or lists of numbers.
fn raw(
    obj: &serde_json::Map<String, Value>,
    inputs: &[(String, TensorType)],
    limits: &[(String, usize)],
) -> Result<Vec<Vec<f64>>, String> {
    inputs
        .iter()
        .map(|(name, ty)| {
            // Pre-tokenized text without labels: every token is a target, as for text data.
            let v = obj.get(name).or_else(|| {
                (name == "labels")
                    .then(|| obj.get("input_ids"))
                    .flatten()
                    .filter(|_| {
                        inputs
                            .iter()
                            .any(|(n, t)| n == "input_ids" && t.shape == ty.shape)
                    })
            });
            let v = v.ok_or_else(|| {
                format!(
                    "the step reads `{name}` ({ty}); a record gives it as a field `{name}`, or \
                     is a text-classification (`text`, `label`), QA (`question`, `context`, \
                     `answers`), seq2seq (`source`, `target`) or preference (`prompt`, \
                     `chosen`, `rejected`) record"
                )
            })?;
            let mut flat = Vec::new();
            numbers(v, &mut flat).map_err(|e| format!("`{name}`: {e}"))?;
            let fill = if name == "labels" { IGNORE as f64 } else { 0.0 };
            let v = shaped(name, flat, &ty.shape[1..], fill)?;
            within_limits(name, &v, limits)?;
            Ok(v)
        })
        .collect()
}

fn numbers(v: &Value, out: &mut Vec<f64>) -> Result<(), String> {
    match v {
        Value::Number(n) => out.push(n.as_f64().ok_or("not a number")?),
        Value::Array(a) => {
            for x in a {
                numbers(x, out)?;
            }
        }
        other => return Err(format!("{other} is not a number or a list of numbers")),
    }
    Ok(())
}

/// The token span of the first answer (transformers' `run_qa.py`): the tokens whose context
/// offsets cover its characters, or (0, 0) when the cut context does not hold it all.
fn answer_span(
    answers: Option<&Value>,
    context: &str,
    f: &crate::tokenizer::Fitted,
) -> Result<(usize, usize), String> {
    let a = answers.ok_or("a QA record needs `answers`")?;
    let text = a
        .get("text")
        .and_then(|t| t.get(0))
        .and_then(Value::as_str)
        .ok_or("`answers.text` must be a list of strings")?;
    let start_char =
        a.get("answer_start")
            .and_then(|t| t.get(0))
            .and_then(Value::as_u64)
            .ok_or("`answers.answer_start` must be a list of character offsets")? as usize;
    // SQuAD counts characters; the tokenizer's offsets are bytes.
    let byte = |c: usize| {
        context
            .char_indices()
            .nth(c)
            .map_or(context.len(), |(b, _)| b)
    };
    let start = byte(start_char);
    let end = byte(start_char + text.chars().count());
    if context.get(start..end) != Some(text) {
        return Err(format!(
            "`answers`: the context at character {start_char} is not {text:?}"
        ));
    }
    let in_context: Vec<usize> = (0..f.ids.len())
        .filter(|&i| f.sequence[i] == Some(1))
        .collect();
    let (Some(&first), Some(&last)) = (in_context.first(), in_context.last()) else {
        return Ok((0, 0));
    };
    if !(f.offsets[first].0 <= start && f.offsets[last].1 >= end) {
        return Ok((0, 0));
    }
    let mut s = first;
    while s <= last && f.offsets[s].0 <= start {
        s += 1;
    }
    // One past: the scan may step below the first context token.
    let mut e1 = last + 1;
    while e1 > first && f.offsets[e1 - 1].1 >= end {
        e1 -= 1;
    }
    Ok((s - 1, e1))
}
