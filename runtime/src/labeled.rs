//! Labeled data: batches for an objective other than the causal-LM loss, one tensor per
//! batch input the step reads (the forward's `input_ids`, `token_type_ids`,
//! `attention_mask`, `pixel_values`, `decoder_input_ids`, ... and the objective's `labels`),
//! shaped as the step declares them.
//!
//! JSONL records are read by their fields (Hugging Face's dataset columns: text
//! classification, SQuAD, seq2seq, preference pairs, or fields named like the inputs;
//! see `labeled/records.rs`).
//!
//! A `.safetensors` data file holds one tensor per batch input with a leading example axis
//! (`pixel_values` f32 [N, C, H, W] and `labels` i64 [N] for image classification): graft's
//! image format, written by any script from whatever reads the images.
//!
//! Sequences are right-padded: ids with the pad token, masks with 0, labels with -100. A
//! batch input no field gives is an error naming it. Batches are drawn as text batches are
//! (a seeded order, a new one each epoch); the examples that do not fill a last batch are left
//! out of that epoch, since a padding row would count in a classification or DPO mean.

mod records;

use crate::data::DataError;
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
                match records::example(line, &inputs, cx) {
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
        let text = graft_frontend::source::read_regular(&d.join("config.json")).ok()?;
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
