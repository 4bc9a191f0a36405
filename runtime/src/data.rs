//! Training data: a token stream from a JSONL file (one object per line with `input_ids`, a
//! list of token ids), cut into `[batch, seq]` windows. Labels are the inputs: the causal-LM
//! loss shifts them inside the step.

use graft_interp::Tensor;
use std::path::Path;

/// Why data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not what graft expects.
    #[error("{path}:{line}: {message}")]
    Format {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Not enough tokens for one batch.
    #[error("{path} has {have} tokens; one batch of {batch} × {seq} needs {need}")]
    TooShort {
        /// The file.
        path: String,
        /// Tokens found.
        have: usize,
        /// Tokens needed.
        need: usize,
        /// Sequences per batch.
        batch: usize,
        /// Tokens per sequence.
        seq: usize,
    },
}

/// The vocabulary size of a program's model: the last axis of its forward's `logits`.
pub fn vocab(program: &graft_frontend::Program) -> Option<usize> {
    let f = program.module.function("forward")?;
    f.output("logits")
        .and_then(|v| f.ty(v).shape.last().copied())
}

/// Reads every line's `input_ids` into one stream, checking ids against the vocabulary; the
/// first bad line is an error.
pub fn load_tokens(path: &Path, vocab: usize) -> Result<Vec<i64>, DataError> {
    load_tokens_with(path, vocab, false).map(|(tokens, _)| tokens)
}

/// [`load_tokens`], skipping bad lines when `skip` (each reported in the second result, with
/// its file and line) instead of stopping at the first.
pub fn load_tokens_with(
    path: &Path,
    vocab: usize,
    skip: bool,
) -> Result<(Vec<i64>, Vec<DataError>), DataError> {
    tokens_of(&read_data(path)?, path, vocab, skip)
}

/// A data file's text (a regular file only: a FIFO would block the read forever).
///
/// # Errors
/// The file cannot be read.
pub fn read_data(path: &Path) -> Result<String, DataError> {
    let name = path.display().to_string();
    crate::files::regular_file(path, "data file").map_err(|m| DataError::Io {
        path: name.clone(),
        source: std::io::Error::other(m),
    })?;
    std::fs::read_to_string(path).map_err(|source| DataError::Io { path: name, source })
}

/// The tokens of a data file's `text` (read from `path`, named in errors), bad lines skipped
/// and reported when `skip`, else the first is the error.
///
/// # Errors
/// The first bad line, without `skip`.
pub fn tokens_of(
    text: &str,
    path: &Path,
    vocab: usize,
    skip: bool,
) -> Result<(Vec<i64>, Vec<DataError>), DataError> {
    let mut skipped = Vec::new();
    let tokens = parse_tokens(text, path, vocab, &mut |e| {
        if skip {
            skipped.push(e);
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok((tokens, skipped))
}

fn parse_tokens(
    text: &str,
    path: &Path,
    vocab: usize,
    bad: &mut dyn FnMut(DataError) -> Result<(), DataError>,
) -> Result<Vec<i64>, DataError> {
    let name = path.display().to_string();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fmt = |message: String| DataError::Format {
            path: name.clone(),
            line: i + 1,
            message,
        };
        if line.trim().is_empty() {
            continue;
        }
        match line_tokens(line, vocab) {
            Ok(ids) => out.extend(ids),
            Err(message) => bad(fmt(message))?,
        }
    }
    Ok(out)
}

/// One record's token ids, or what is wrong with it.
fn line_tokens(line: &str, vocab: usize) -> Result<Vec<i64>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let ids = match v.get("input_ids") {
        Some(serde_json::Value::Array(ids)) => ids,
        Some(_) => return Err("`input_ids` must be a list of integers".into()),
        None if v.get("text").is_some() => {
            return Err(
                "text records need a tokenizer, which graft does not load yet; \
                        pre-tokenize into `input_ids`"
                    .into(),
            );
        }
        None => return Err("expected an object with `input_ids`".into()),
    };
    ids.iter()
        .map(|id| {
            let t = id
                .as_i64()
                .ok_or_else(|| format!("token {id} is not an integer"))?;
            if t < 0 || t as usize >= vocab {
                return Err(format!("token {t} is outside the vocabulary (0..{vocab})"));
            }
            Ok(t)
        })
        .collect()
}

/// Cuts a token stream into consecutive `[batch, seq]` windows, wrapping around at the end.
pub struct Batcher {
    tokens: Vec<i64>,
    batch: usize,
    seq: usize,
    pos: usize,
}

impl Batcher {
    /// A batcher over `tokens`; fails if the stream cannot fill one batch.
    pub fn new(
        tokens: Vec<i64>,
        batch: usize,
        seq: usize,
        source: &str,
    ) -> Result<Batcher, DataError> {
        let need = batch * seq;
        if tokens.len() < need || need == 0 {
            return Err(DataError::TooShort {
                path: source.to_string(),
                have: tokens.len(),
                need,
                batch,
                seq,
            });
        }
        Ok(Batcher {
            tokens,
            batch,
            seq,
            pos: 0,
        })
    }

    /// Skips `n` batches (to resume a run where it stopped), in O(1): the windows repeat
    /// every `tokens / (batch · seq)` batches.
    pub fn skip(&mut self, n: usize) {
        let per = self.batch * self.seq;
        let epoch = (self.tokens.len() / per).max(1);
        let next = (self.pos / per) % epoch;
        self.pos = ((next + n % epoch) % epoch) * per;
    }

    /// The next batch of `input_ids` (also the labels).
    pub fn next_batch(&mut self) -> Tensor {
        let n = self.batch * self.seq;
        if self.pos + n > self.tokens.len() {
            self.pos = 0;
        }
        let ids = self.tokens[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Tensor::i64(vec![self.batch, self.seq], ids).unwrap_or_else(|_| {
            Tensor::zeros(graft_ir::TensorType::new(
                graft_ir::DType::I64,
                vec![self.batch, self.seq],
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ids(t: &Tensor) -> Vec<i64> {
        t.as_i64().unwrap().to_vec()
    }

    #[test]
    fn skipping_equals_drawing_the_batches_one_by_one() {
        // 23 tokens, 2 × 3 per batch: 3 batches an epoch, the last 5 tokens never used.
        let tokens: Vec<i64> = (0..23).collect();
        for start in 0..4 {
            for n in [0, 1, 2, 3, 4, 7, 1000, 1_000_000_000_000] {
                let mut a = Batcher::new(tokens.clone(), 2, 3, "t").unwrap();
                let mut b = Batcher::new(tokens.clone(), 2, 3, "t").unwrap();
                for _ in 0..start {
                    a.next_batch();
                    b.next_batch();
                }
                for _ in 0..(n % 3) {
                    a.next_batch();
                }
                b.skip(n);
                assert_eq!(
                    ids(&a.next_batch()),
                    ids(&b.next_batch()),
                    "start {start}, skip {n}"
                );
            }
        }
    }
}

#[cfg(test)]
mod bad_lines {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn bad_lines_stop_the_load_or_are_skipped_with_their_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"input_ids\": [1, 2]}\nnot json\n\n{\"input_ids\": [3, 99]}\n{\"text\": \"hi\"}\n{\"input_ids\": [4]}\n",
        )
        .unwrap();
        let e = load_tokens(&p, 10).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2: not JSON"), "{e}");
        let (tokens, skipped) = load_tokens_with(&p, 10, true).unwrap();
        assert_eq!(tokens, [1, 2, 4]);
        let lines: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains(":2: not JSON"), "{lines:?}");
        assert!(
            lines[1].contains(":4: token 99 is outside the vocabulary"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains(":5: text records need a tokenizer"),
            "{lines:?}"
        );
    }
}
