//! Training data: a JSONL file of records ([`crate::records`]: text, prompt/completion,
//! chat, or pre-tokenized ids) read into examples, then cut into `[batch, seq]` batches of
//! `input_ids` and `labels`:
//! - **Packing** (the default): every example's ids and labels concatenated in file order
//!   and cut into `seq`-token blocks (the tail that does not fill one is dropped).
//! - **Padding**: each example truncated to `seq` tokens and right-padded with the pad
//!   token, labelled `-100`. Attention is causal, so a real token never attends to the
//!   padding after it, and the loss skips it: padding changes nothing.
//!
//! A block with no target (nothing after its first token, which no position predicts) is
//! dropped. Blocks are drawn in a seeded random order, a new permutation each epoch (or in
//! file order without `shuffle`); the last batch of an epoch is filled up with rows that are
//! all padding, which the loss ignores.

use crate::records::{Example, IGNORE};
use crate::tokenizer::TextTokenizer;
use graft_interp::Tensor;
use std::path::{Path, PathBuf};

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
    /// Labeled examples that do not make a batch.
    #[error("{path}: {message}")]
    Batching {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Not enough tokens for one batch.
    #[error("{path} has no {seq}-token block with a target{why}")]
    TooShort {
        /// The file.
        path: String,
        /// Tokens per sequence.
        seq: usize,
        /// Why, when known.
        why: String,
    },
}

/// The vocabulary size of a program's model: the last axis of its forward's `logits`.
pub fn vocab(program: &graft_frontend::Program) -> Option<usize> {
    let f = program.module.function("forward")?;
    f.output("logits")
        .and_then(|v| f.ty(v).shape.last().copied())
}

/// The tokenizer a spec uses: the `train` block's `tokenizer` (a tokenizer.json or a folder
/// holding one, relative to the spec's folder `dir`), else the model folder's tokenizer.json
/// when it has one, else none (pre-tokenized data only).
///
/// # Errors
/// The tokenizer named cannot be read.
pub fn tokenizer(
    program: &graft_frontend::Program,
    dir: &Path,
) -> Result<Option<TextTokenizer>, String> {
    let path: PathBuf = match (&program.train.tokenizer, &program.model_dir) {
        (Some(t), _) => dir.join(t),
        (None, Some(m)) if graft_frontend::source::overlay::exists(&m.join("tokenizer.json")) => {
            m.clone()
        }
        _ => return Ok(None),
    };
    TextTokenizer::open(&path).map(Some)
}

/// A data file's text (a regular file only: a FIFO would block the read forever).
///
/// # Errors
/// The file cannot be read.
pub fn read_data(path: &Path) -> Result<String, DataError> {
    String::from_utf8(read_bytes(path)?).map_err(|e| not_utf8(path, e.utf8_error()))
}

/// A data file's bytes (a regular file only: a FIFO would block the read forever).
///
/// # Errors
/// The file cannot be read.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let name = path.display().to_string();
    crate::files::regular_file(path, "data file").map_err(|m| DataError::Io {
        path: name.clone(),
        source: std::io::Error::other(m),
    })?;
    std::fs::read(path).map_err(|source| DataError::Io { path: name, source })
}

/// A data file's bytes as text.
///
/// # Errors
/// They are not UTF-8.
pub fn text_of<'b>(path: &Path, bytes: &'b [u8]) -> Result<&'b str, DataError> {
    std::str::from_utf8(bytes).map_err(|e| not_utf8(path, e))
}

fn not_utf8(path: &Path, e: std::str::Utf8Error) -> DataError {
    DataError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    }
}

/// The examples of a data file's `text` (read from `path`, named in errors). Bad lines are
/// skipped and returned when `skip`, else the first is the error.
///
/// # Errors
/// The first bad line, without `skip`.
pub fn examples_of(
    text: &str,
    path: &Path,
    tok: Option<&TextTokenizer>,
    vocab: usize,
    skip: bool,
) -> Result<(Vec<Example>, Vec<DataError>), DataError> {
    let name = path.display().to_string();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match crate::records::parse_line(line, tok, vocab) {
            Ok(ex) => out.push(ex),
            Err(message) => {
                let e = DataError::Format {
                    path: name.clone(),
                    line: i + 1,
                    message,
                };
                if skip {
                    skipped.push(e);
                } else {
                    return Err(e);
                }
            }
        }
    }
    Ok((out, skipped))
}

/// How examples become batches.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Rows per batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Pack (true) or pad (false).
    pub packing: bool,
    /// The id padding rows are filled with.
    pub pad: i64,
    /// Shuffle each epoch with this seed (none: file order).
    pub shuffle: Option<u64>,
}

impl Layout {
    /// The layout a program's `train` block asks for, padding with `tok`'s pad token (or 0).
    pub fn of(program: &graft_frontend::Program, tok: Option<&TextTokenizer>) -> Layout {
        let t = &program.train;
        Layout {
            batch: t.batch,
            seq: t.seq,
            packing: t.packing,
            pad: tok
                .and_then(|t| t.pad.as_ref())
                .map_or(0, |(_, id)| i64::from(*id)),
            shuffle: t.shuffle.then_some(t.seed),
        }
    }
}

/// Batches of `input_ids` and `labels`, epoch after epoch (see the module docs).
pub struct Batches {
    blocks: Vec<Example>,
    layout: Layout,
    /// Batches drawn so far.
    pos: usize,
    /// The epoch `order` is for, and the order of its blocks.
    order: (usize, Vec<usize>),
    /// Examples dropped for having no target.
    pub dropped: usize,
}

impl Batches {
    /// Batches of `examples`; `source` names the data in errors.
    ///
    /// # Errors
    /// Not one block has a target.
    pub fn new(examples: Vec<Example>, layout: Layout, source: &str) -> Result<Batches, DataError> {
        let seq = layout.seq;
        let n_examples = examples.len();
        let blocks: Vec<Example> = if layout.packing {
            let mut all = Example::default();
            for e in examples {
                all.ids.extend(e.ids);
                all.labels.extend(e.labels);
            }
            all.ids
                .chunks_exact(seq)
                .zip(all.labels.chunks_exact(seq))
                .map(|(i, l)| Example {
                    ids: i.to_vec(),
                    labels: l.to_vec(),
                })
                .collect()
        } else {
            examples
                .into_iter()
                .map(|mut e| {
                    e.ids.truncate(seq);
                    e.labels.truncate(seq);
                    e.labels.resize(seq, IGNORE);
                    e.ids.resize(seq, layout.pad);
                    e
                })
                .collect()
        };
        let made = blocks.len();
        let blocks: Vec<Example> = blocks
            .into_iter()
            .filter(|b| b.labels.iter().skip(1).any(|&l| l != IGNORE))
            .collect();
        if blocks.is_empty() {
            return Err(DataError::TooShort {
                path: source.to_string(),
                seq,
                why: if n_examples == 0 {
                    ": it has no records".into()
                } else if made == 0 {
                    format!(
                        ": its {n_examples} records do not fill one block (pack fewer tokens \
                         with a smaller `seq`, or pad with `packing false`)"
                    )
                } else {
                    ": every token is masked out of the loss".into()
                },
            });
        }
        Ok(Batches {
            dropped: made - blocks.len(),
            order: (usize::MAX, Vec::new()),
            blocks,
            layout,
            pos: 0,
        })
    }

    /// Batches in one epoch.
    pub fn per_epoch(&self) -> usize {
        self.blocks.len().div_ceil(self.layout.batch)
    }

    /// Rows (blocks) in one epoch.
    pub fn rows(&self) -> usize {
        self.blocks.len()
    }

    /// Skips `n` batches (to resume a run where it stopped): the next batch is the one an
    /// uninterrupted run would draw after `n` more.
    pub fn skip(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n);
    }

    /// The next batch: `input_ids` and `labels`, both `i64[batch, seq]`.
    pub fn next_batch(&mut self) -> (Tensor, Tensor) {
        let per = self.per_epoch();
        let (epoch, k) = (self.pos / per, self.pos % per);
        self.pos += 1;
        if self.order.0 != epoch {
            let mut order: Vec<usize> = (0..self.blocks.len()).collect();
            if let Some(seed) = self.layout.shuffle {
                shuffle(&mut order, seed, epoch as u64);
            }
            self.order = (epoch, order);
        }
        let (b, s) = (self.layout.batch, self.layout.seq);
        let mut ids = Vec::with_capacity(b * s);
        let mut labels = Vec::with_capacity(b * s);
        for row in 0..b {
            match self.order.1.get(k * b + row) {
                Some(&i) => {
                    ids.extend_from_slice(&self.blocks[i].ids);
                    labels.extend_from_slice(&self.blocks[i].labels);
                }
                None => {
                    ids.resize(ids.len() + s, self.layout.pad);
                    labels.resize(labels.len() + s, IGNORE);
                }
            }
        }
        let t = |v| {
            Tensor::i64(vec![b, s], v).unwrap_or_else(|_| {
                Tensor::zeros(graft_ir::TensorType::new(graft_ir::DType::I64, vec![b, s]))
            })
        };
        (t(ids), t(labels))
    }
}

/// Target tokens in a batch's labels: those after each row's first (which no position
/// predicts) that are not [`IGNORE`].
pub fn targets(labels: &Tensor) -> usize {
    let (Some(l), Some(&seq)) = (labels.as_i64(), labels.ty().shape.last()) else {
        return 0;
    };
    l.chunks(seq.max(1))
        .map(|row| row.iter().skip(1).filter(|&&x| x != IGNORE).count())
        .sum()
}

/// Fisher–Yates with splitmix64 seeded by (seed, epoch): the same order on every machine.
pub(crate) fn shuffle(v: &mut [usize], seed: u64, epoch: u64) {
    let mut state = seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Reads a data file into batches for `program` (its tokenizer, layout and vocabulary);
/// bad lines are skipped (and returned) when `skip`. For callers that need no more control.
///
/// # Errors
/// The file, a line, or the tokenizer is bad, or the data fills no block.
pub fn load(
    program: &graft_frontend::Program,
    path: &Path,
    tok: Option<&TextTokenizer>,
    shuffle: bool,
    skip: bool,
) -> Result<(Batches, Vec<DataError>), DataError> {
    let vocab = vocab(program).unwrap_or(0);
    let text = read_data(path)?;
    let (examples, skipped) = examples_of(&text, path, tok, vocab, skip)?;
    let mut layout = Layout::of(program, tok);
    if !shuffle {
        layout.shuffle = None;
    }
    let b = Batches::new(examples, layout, &path.display().to_string())?;
    Ok((b, skipped))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ex(ids: &[i64]) -> Example {
        Example {
            ids: ids.to_vec(),
            labels: ids.to_vec(),
        }
    }

    fn layout(batch: usize, seq: usize, packing: bool, shuffle: Option<u64>) -> Layout {
        Layout {
            batch,
            seq,
            packing,
            pad: 0,
            shuffle,
        }
    }

    fn rows(t: &Tensor) -> Vec<i64> {
        t.as_i64().unwrap().to_vec()
    }

    #[test]
    fn skipping_equals_drawing_the_batches_one_by_one() {
        let examples: Vec<Example> = (0..23).map(|i| ex(&[i, i + 1])).collect();
        for shuffle in [None, Some(7)] {
            for start in 0..4 {
                for n in [0, 1, 2, 3, 4, 7, 30] {
                    let mk = || Batches::new(examples.clone(), layout(2, 3, true, shuffle), "t");
                    let (mut a, mut b) = (mk().unwrap(), mk().unwrap());
                    for _ in 0..start {
                        a.next_batch();
                        b.next_batch();
                    }
                    for _ in 0..n {
                        a.next_batch();
                    }
                    b.skip(n);
                    assert_eq!(rows(&a.next_batch().0), rows(&b.next_batch().0));
                }
            }
        }
    }

    #[test]
    fn packing_concatenates_and_padding_masks_the_pad() {
        let examples = vec![ex(&[1, 2, 3]), ex(&[4, 5]), ex(&[6, 7, 8, 9, 10])];
        let mut p = Batches::new(examples.clone(), layout(1, 4, true, None), "t").unwrap();
        assert_eq!(p.per_epoch(), 2);
        assert_eq!(rows(&p.next_batch().0), [1, 2, 3, 4]);
        assert_eq!(rows(&p.next_batch().0), [5, 6, 7, 8]);
        let mut q = Batches::new(examples, layout(2, 4, false, None), "t").unwrap();
        let (ids, labels) = q.next_batch();
        assert_eq!(rows(&ids), [1, 2, 3, 0, 4, 5, 0, 0]);
        assert_eq!(rows(&labels), [1, 2, 3, -100, 4, 5, -100, -100]);
        // The last batch is filled with rows the loss ignores.
        let (ids, labels) = q.next_batch();
        assert_eq!(rows(&ids), [6, 7, 8, 9, 0, 0, 0, 0]);
        assert_eq!(rows(&labels), [6, 7, 8, 9, -100, -100, -100, -100]);
    }

    #[test]
    fn each_epoch_is_a_permutation_of_the_blocks_and_epochs_differ() {
        let examples: Vec<Example> = (0..40).map(|i| ex(&[i, i])).collect();
        let mut b = Batches::new(examples, layout(4, 2, false, Some(3)), "t").unwrap();
        let epoch = |b: &mut Batches| {
            let mut firsts: Vec<i64> = (0..10)
                .flat_map(|_| rows(&b.next_batch().0).into_iter().step_by(2))
                .collect();
            let order = firsts.clone();
            firsts.sort_unstable();
            assert_eq!(firsts, (0..40).collect::<Vec<_>>());
            order
        };
        let (e0, e1) = (epoch(&mut b), epoch(&mut b));
        assert_ne!(e0, e1);
        assert_ne!(e0, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn blocks_without_a_target_are_dropped_and_none_at_all_is_an_error() {
        let masked = Example {
            ids: vec![1, 2, 3],
            labels: vec![1, IGNORE, IGNORE],
        };
        let b = Batches::new(
            vec![masked.clone(), ex(&[4, 5])],
            layout(1, 4, false, None),
            "t",
        )
        .unwrap();
        assert_eq!((b.rows(), b.dropped), (1, 1));
        let e = Batches::new(vec![masked], layout(1, 4, false, None), "d.jsonl")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("d.jsonl") && e.contains("masked"), "{e}");
    }

    #[test]
    fn bad_lines_stop_the_load_or_are_skipped_with_their_line_numbers() {
        let text = "{\"input_ids\": [1, 2]}\nnot json\n\n{\"input_ids\": [3, 99]}\n{\"text\": \"hi\"}\n{\"input_ids\": [4]}\n";
        let p = Path::new("d.jsonl");
        let e = examples_of(text, p, None, 10, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.jsonl:2: not JSON"), "{e}");
        let (examples, skipped) = examples_of(text, p, None, 10, true).unwrap();
        assert_eq!(examples, [ex(&[1, 2]), ex(&[4])]);
        let lines: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains(":2: not JSON"), "{lines:?}");
        assert!(lines[1].contains(":4: token 99 is outside"), "{lines:?}");
        assert!(
            lines[2].contains(":5: text records need a tokenizer"),
            "{lines:?}"
        );
    }
}
