//! Labeled data: batches for an objective other than the causal-LM loss, one tensor per
//! batch input the step reads (the forward's `input_ids`, `token_type_ids`,
//! `attention_mask`, `pixel_values`, `decoder_input_ids`, ... and the objective's `labels`),
//! shaped as the step declares them.
//!
//! A JSONL line is one example, read by its fields (Hugging Face's dataset columns):
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
//! A `.safetensors` data file holds one tensor per batch input with a leading example axis
//! (`pixel_values` f32 [N, C, H, W] and `labels` i64 [N] for image classification): graft's
//! image format, written by any script from whatever reads the images.
//!
//! Sequences are right-padded: ids with the pad token, masks with 0, labels with -100. A
//! batch input no field gives is an error naming it. Batches are drawn as text batches are
//! (a seeded order, a new one each epoch); the examples that do not fill a last batch are left
//! out of that epoch, since a padding row would count in a classification or DPO mean.

use crate::data::DataError;
use crate::records::IGNORE;
use crate::tokenizer::TextTokenizer;
use graft_interp::Tensor;
use graft_ir::{DType, InputKind, TensorType};
use serde_json::Value;
use std::path::Path;

/// A batch by input name.
pub type Batch = Vec<(String, Tensor)>;

/// The batch inputs a program's training step reads, with their types: the forward's data
/// inputs and `@loss`'s (but `logits`, which the forward computes), or for the causal-LM
/// loss `labels` like the ids.
pub fn batch_inputs(program: &graft_frontend::Program) -> Vec<(String, TensorType)> {
    let mut out: Vec<(String, TensorType)> = Vec::new();
    if program.module.function("loss").is_none()
        && let Some(ids) = program
            .module
            .function("forward")
            .and_then(|f| f.input("input_ids"))
    {
        out.push(("labels".into(), ids.ty.clone()));
    }
    let fns = ["forward", "loss"].map(|n| program.module.function(n));
    for f in fns.into_iter().flatten() {
        for i in f.inputs().filter(|i| i.kind == InputKind::Data) {
            if i.name != "logits" && !out.iter().any(|(n, _)| n == i.name) {
                out.push((i.name.to_string(), i.ty.clone()));
            }
        }
    }
    out
}

/// True when the program trains on text batches (`input_ids` and `labels` for the
/// causal-LM loss, [`crate::Batches`]); false when its step reads more, or another
/// objective's inputs, which labeled records give by name.
pub fn reads_text(program: &graft_frontend::Program) -> bool {
    program.train.loss == "causal_lm"
        && batch_inputs(program)
            .iter()
            .all(|(n, _)| n == "input_ids" || n == "labels")
}

/// What labeled records are tokenized with.
pub struct Context<'a> {
    /// The tokenizer (text fields need one).
    pub tok: Option<&'a TextTokenizer>,
    /// The decoder's first input token (`decoder_start_token_id`).
    pub decoder_start: i64,
    /// The number of classes (the logits' last axis), which a label must be below.
    pub classes: usize,
    /// For a batch input of token ids, the size of the table the forward looks them up in
    /// (an embedding's vocabulary), which every id must be below.
    pub id_limits: Vec<(String, usize)>,
}

/// One example: per row (two for a preference pair), the value of each batch input, in the
/// order of the batch inputs, already padded to the row's shape.
type Rows = Vec<Vec<Vec<f64>>>;

/// Batches of labeled examples, epoch after epoch (see the module docs).
pub struct LabeledBatches {
    inputs: Vec<(String, TensorType)>,
    examples: Vec<Rows>,
    /// Examples per batch.
    per_batch: usize,
    shuffle: Option<u64>,
    pos: usize,
    order: (usize, Vec<usize>),
}

impl LabeledBatches {
    /// Reads `path` (JSONL records, or a `.safetensors` file) into batches of `inputs`.
    /// Bad lines are skipped and returned when `skip`.
    ///
    /// # Errors
    /// The file cannot be read, a line is bad (without `skip`), a batch input is given by no
    /// field, or there are not enough examples for one batch.
    pub fn load(
        path: &Path,
        inputs: Vec<(String, TensorType)>,
        cx: &Context,
        shuffle: Option<u64>,
        skip: bool,
    ) -> Result<(LabeledBatches, Vec<DataError>), DataError> {
        // A tensor file is mapped, not read.
        let bytes = if is_tensor_file(path) {
            Vec::new()
        } else {
            crate::data::read_bytes(path)?
        };
        Self::from_bytes(path, &bytes, inputs, cx, shuffle, skip)
    }

    /// [`LabeledBatches::load`] on the file's bytes, already read (`path` names it and says
    /// whether it is a tensor file, which is mapped from `path` itself).
    ///
    /// # Errors
    /// As [`LabeledBatches::load`].
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        inputs: Vec<(String, TensorType)>,
        cx: &Context,
        shuffle: Option<u64>,
        skip: bool,
    ) -> Result<(LabeledBatches, Vec<DataError>), DataError> {
        let name = path.display().to_string();
        if inputs.is_empty() {
            return Err(DataError::Batching {
                path: name,
                message: "the step reads no batch inputs to fill".into(),
            });
        }
        let rows = inputs
            .first()
            .map_or(0, |(_, t)| t.shape.first().copied().unwrap_or(0));
        if let Some((input, ty)) = inputs
            .iter()
            .find(|(_, t)| t.shape.first().is_none_or(|&b| b != rows || b == 0))
        {
            return Err(DataError::Batching {
                path: name,
                message: format!(
                    "the step reads `{input}` as {ty}, which has no batch axis of {rows} rows \
                     like the others"
                ),
            });
        }
        let (examples, skipped) = if is_tensor_file(path) {
            (tensor_file(path, &inputs)?, Vec::new())
        } else {
            let text = crate::data::text_of(path, bytes)?;
            let mut out = Vec::new();
            let mut skipped = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match example(line, &inputs, cx) {
                    Ok(rows) => out.push(rows),
                    Err(message) => {
                        let e = DataError::Format {
                            path: name.clone(),
                            line: i + 1,
                            message,
                        };
                        if !skip {
                            return Err(e);
                        }
                        skipped.push(e);
                    }
                }
            }
            (out, skipped)
        };
        let k = examples.first().map_or(1, Vec::len);
        let batching = |message: String| DataError::Batching {
            path: name.clone(),
            message,
        };
        if examples.iter().any(|e| e.len() != k) {
            return Err(batching(
                "it mixes preference pairs with single examples".into(),
            ));
        }
        if k == 0 || rows % k != 0 {
            return Err(batching(format!(
                "its examples are {k} rows each (a preference pair is two), which do not \
                 divide a batch of {rows} rows: make `batch` a multiple of {k}"
            )));
        }
        if examples.len() < rows / k {
            return Err(batching(format!(
                "a batch of {rows} rows needs {} examples, it has {}",
                rows / k,
                examples.len()
            )));
        }
        let b = LabeledBatches {
            inputs,
            examples,
            per_batch: rows / k,
            shuffle,
            pos: 0,
            order: (usize::MAX, Vec::new()),
        };
        Ok((b, skipped))
    }

    /// Batches in one epoch.
    pub fn per_epoch(&self) -> usize {
        self.examples.len() / self.per_batch
    }

    /// Skips `n` batches (to resume where a run stopped).
    pub fn skip(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n);
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        let per = self.per_epoch();
        let (epoch, k) = (self.pos / per, self.pos % per);
        self.pos += 1;
        if self.order.0 != epoch {
            let mut order: Vec<usize> = (0..self.examples.len()).collect();
            if let Some(seed) = self.shuffle {
                crate::data::shuffle(&mut order, seed, epoch as u64);
            }
            self.order = (epoch, order);
        }
        let chosen = &self.order.1[k * self.per_batch..(k + 1) * self.per_batch];
        let rows_each = self.examples[chosen[0]].len();
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| {
                let mut data = Vec::with_capacity(ty.numel());
                // Row j of every example, then row j + 1: a pair's chosen rows come first.
                for j in 0..rows_each {
                    for &e in chosen {
                        data.extend_from_slice(&self.examples[e][j][i]);
                    }
                }
                (name.clone(), to_tensor(ty, data))
            })
            .collect()
    }
}

/// A `.safetensors` data file (else JSONL).
fn is_tensor_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

fn to_tensor(ty: &TensorType, data: Vec<f64>) -> Tensor {
    let shape = ty.shape.clone();
    let t = match ty.dtype {
        DType::I64 => Tensor::i64(shape, data.iter().map(|&x| x as i64).collect()),
        _ => Tensor::f32(shape, data.iter().map(|&x| x as f32).collect()),
    };
    t.unwrap_or_else(|_| Tensor::zeros(ty.clone()))
}

/// The examples of a tensor file: entry `name` [N, ...] for each batch input `name` [B, ...].
fn tensor_file(path: &Path, inputs: &[(String, TensorType)]) -> Result<Vec<Rows>, DataError> {
    let name = path.display().to_string();
    let bad = |message: String| DataError::Format {
        path: name.clone(),
        line: 1,
        message,
    };
    let file = crate::WeightsFile::open(path).map_err(|e| bad(e.to_string()))?;
    let mut columns = Vec::new();
    let mut n = None;
    for (input, ty) in inputs {
        let t = file.read(input).map_err(|_| {
            bad(format!(
                "the step reads `{input}` ({ty}), which the file does not have (its tensors: {})",
                file.entries()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let per_row = &ty.shape[1..];
        if t.ty().shape.get(1..) != Some(per_row)
            || (t.ty().dtype == DType::I64) != (ty.dtype == DType::I64)
        {
            return Err(bad(format!(
                "`{input}` is {}; the step reads {ty}, so the file needs {:?}[N, {}]",
                t.ty(),
                ty.dtype,
                per_row
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let rows = t.ty().shape[0];
        if *n.get_or_insert(rows) != rows {
            return Err(bad(format!(
                "`{input}` has {rows} examples, an earlier tensor {}",
                n.unwrap_or(0)
            )));
        }
        columns.push(t.to_f64_vec());
    }
    let n = n.unwrap_or(0);
    Ok((0..n)
        .map(|r| {
            let row = columns
                .iter()
                .zip(inputs)
                .map(|(c, (_, ty))| {
                    let w = ty.shape[1..].iter().product::<usize>();
                    c[r * w..(r + 1) * w].to_vec()
                })
                .collect();
            vec![row]
        })
        .collect())
}

/// Field values of one row before they are fitted to the inputs' shapes.
type Fields = Vec<(&'static str, Vec<f64>)>;

/// The rows one JSONL line gives.
fn example(line: &str, inputs: &[(String, TensorType)], cx: &Context) -> Result<Rows, String> {
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

/// A run's batches: text for the causal-LM loss, labeled examples for another objective.
pub enum Source {
    /// Packed or padded text ([`crate::Batches`]).
    Text(crate::Batches),
    /// Labeled examples.
    Labeled(LabeledBatches),
}

impl Source {
    /// Batches in one epoch.
    pub fn per_epoch(&self) -> usize {
        match self {
            Source::Text(b) => b.per_epoch(),
            Source::Labeled(b) => b.per_epoch(),
        }
    }

    /// Skips `n` batches.
    pub fn skip(&mut self, n: usize) {
        match self {
            Source::Text(b) => b.skip(n),
            Source::Labeled(b) => b.skip(n),
        }
    }

    /// The next batch, by input name.
    pub fn next_batch(&mut self) -> Batch {
        match self {
            Source::Text(b) => {
                let (ids, labels) = b.next_batch();
                vec![("input_ids".into(), ids), ("labels".into(), labels)]
            }
            Source::Labeled(b) => b.next_batch(),
        }
    }
}

/// The labeled-data context of a program: its tokenizer, its classes (the logits' last
/// axis) and its decoder start token (the model folder's `decoder_start_token_id`, else the
/// pad token, else 0).
pub fn context<'a>(
    program: &graft_frontend::Program,
    tok: Option<&'a TextTokenizer>,
) -> Context<'a> {
    let from_config = program.model_dir.as_ref().and_then(|d| {
        let text = std::fs::read_to_string(d.join("config.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v.get("decoder_start_token_id")?.as_i64()
    });
    let pad = tok
        .and_then(|t| t.pad.as_ref())
        .map(|(_, id)| i64::from(*id));
    Context {
        tok,
        decoder_start: from_config.or(pad).unwrap_or(0),
        classes: crate::data::vocab(program).unwrap_or(0),
        id_limits: id_limits(program),
    }
}

/// Each batch input the forward gathers rows of a table with (token ids into an embedding),
/// with the table's row count.
fn id_limits(program: &graft_frontend::Program) -> Vec<(String, usize)> {
    let Some(f) = program.module.function("forward") else {
        return Vec::new();
    };
    let mut out: Vec<(String, usize)> = Vec::new();
    for node in &f.nodes {
        let (graft_ir::Op::Gather { axis: 0 }, [table, idx]) = (&node.op, node.args.as_slice())
        else {
            continue;
        };
        if let graft_ir::Op::Input { name, .. } = &f.node(*idx).op {
            let rows = f.ty(*table).shape.first().copied().unwrap_or(0);
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, r)) => *r = (*r).min(rows),
                None => out.push((name.clone(), rows)),
            }
        }
    }
    out
}
