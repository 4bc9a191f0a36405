//! The run's metrics file: JSON Lines, one record per step (`kind: "train"`, `step`,
//! `loss`, `grad_norm`, `lr`, `seconds`, `tokens_per_s`) and per evaluation (`kind: "eval"`,
//! `step`, `eval_loss`, `eval_perplexity`), appended as the run goes and fsynced with every
//! checkpoint. A resumed run first rewrites the file (atomically) to the records up to the
//! step it resumes after, so steps redone after a crash are not listed twice and a line torn
//! by the crash is dropped.

use crate::session::StepStats;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One record: a training step's, or an evaluation's after a step. Values that are not
/// finite, or do not apply to the kind, are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `train` or `eval`.
    pub kind: String,
    /// Steps done, counting this one.
    pub step: usize,
    /// The loss before the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f32>,
    /// The gradients' global norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
    /// The learning rate used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f32>,
    /// Wall seconds of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Tokens per second in the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// The held-out loss (an evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// exp(eval_loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
    /// The `train` block's metrics on the held-out data, by name (`eval_accuracy`, ...).
    #[serde(
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty",
        flatten
    )]
    pub eval_metrics: std::collections::BTreeMap<String, f64>,
}

/// An open metrics file.
pub struct Metrics {
    path: PathBuf,
    file: std::fs::File,
}

fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

impl Metrics {
    /// Opens `path` for a run that starts after `resumed` steps: the records of steps up to
    /// it are kept, the rest (and anything unreadable) dropped.
    ///
    /// # Errors
    /// The file cannot be rewritten or opened (the message names it).
    pub fn open(path: &Path, resumed: usize) -> Result<Metrics, String> {
        let kept: Vec<String> = match std::fs::read_to_string(path) {
            Ok(text) if resumed > 0 => text
                .lines()
                .filter(|l| serde_json::from_str::<Record>(l).is_ok_and(|r| r.step <= resumed))
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => Vec::new(),
        };
        crate::write_atomic(path, kept.concat().as_bytes()).map_err(|e| e.to_string())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Metrics {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends a step's record.
    ///
    /// # Errors
    /// The write failed (the message names the file).
    pub fn record(&mut self, s: &StepStats, seconds: f64, tokens: usize) -> Result<(), String> {
        self.append(&Record {
            kind: "train".into(),
            step: s.step,
            loss: finite(s.loss),
            grad_norm: finite(s.grad_norm),
            lr: finite(s.lr),
            seconds: Some(seconds),
            tokens_per_s: Some(tokens as f64 / seconds.max(1e-9)),
            ..Record::default()
        })
    }

    /// Appends an evaluation's record.
    ///
    /// # Errors
    /// The write failed (the message names the file).
    pub fn record_eval(&mut self, step: usize, e: &crate::eval::EvalStats) -> Result<(), String> {
        self.append(&Record {
            kind: "eval".into(),
            step,
            eval_loss: e.loss.is_finite().then_some(e.loss),
            eval_perplexity: e.perplexity.is_finite().then_some(e.perplexity),
            eval_metrics: e
                .metrics
                .iter()
                .filter(|(_, x)| x.is_finite())
                .map(|(n, x)| (format!("eval_{n}"), *x))
                .collect(),
            ..Record::default()
        })
    }

    fn append(&mut self, r: &Record) -> Result<(), String> {
        let line = serde_json::to_string(r).map_err(|e| e.to_string())?;
        writeln!(self.file, "{line}").map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the records so far durable (with each checkpoint).
    ///
    /// # Errors
    /// The fsync failed.
    pub fn sync(&mut self) -> Result<(), String> {
        self.file
            .sync_data()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Reads a metrics file's records.
    ///
    /// # Errors
    /// The file cannot be read, or a line is not a record (with its line number).
    pub fn read(path: &Path) -> Result<Vec<Record>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn stats(step: usize, loss: f32) -> StepStats {
        StepStats {
            step,
            loss,
            grad_norm: 1.0,
            lr: 0.1,
        }
    }

    #[test]
    fn a_resumed_run_keeps_the_records_up_to_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut m = Metrics::open(&p, 0).unwrap();
        for s in 1..=5 {
            m.record(&stats(s, s as f32), 0.5, 64).unwrap();
        }
        m.record(&stats(6, f32::NAN), 0.5, 64).unwrap();
        drop(m);
        // A line torn by a crash.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"step\": 7, \"lo")
            .unwrap();
        let mut m = Metrics::open(&p, 3).unwrap();
        m.record(&stats(4, 9.0), 0.25, 64).unwrap();
        drop(m);
        let r = Metrics::read(&p).unwrap();
        let steps: Vec<usize> = r.iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        assert_eq!((r[3].loss, r[3].tokens_per_s), (Some(9.0), Some(256.0)));
        // A fresh run starts an empty file.
        drop(Metrics::open(&p, 0).unwrap());
        assert!(Metrics::read(&p).unwrap().is_empty());
    }

    #[test]
    fn non_finite_values_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut m = Metrics::open(&p, 0).unwrap();
        m.record(&stats(1, f32::INFINITY), 1.0, 8).unwrap();
        drop(m);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            !text.contains("\"loss\"") && text.contains("\"grad_norm\":1.0"),
            "{text}"
        );
    }
}
