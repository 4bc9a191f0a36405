//! Checkpoints: a session's training state (trainable tensors, optimizer state, steps done)
//! in one safetensors file, with a checksum of its tensors and a fingerprint of the run that
//! wrote it in the header's `__metadata__`.
//!
//! The fingerprint records what the state is only valid for: the elaborated model with its
//! adapters (locations stripped, so editing a comment does not count), which adapter sits on
//! which module, the optimizer, the schedule, clipping, batch × seq, the seed and the data
//! file's identity (path and SHA-256 of its bytes). Resuming compares it field by field and
//! refuses a mismatch with what changed (old → new) unless forced; a damaged file (checksum),
//! a missing or extra tensor, or a step count that disagrees with the optimizer's own counter
//! is refused always. Loading checks everything before it changes the session.

use crate::session::{Session, SessionError};
use crate::weights::WeightsFile;
use graft_frontend::Program;
use graft_interp::{Data, Tensor};
use graft_ir::{InputKind, Module};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The metadata key of the tensors' checksum.
const CHECKSUM: &str = "graft.checksum";
/// The tensor holding the number of steps done.
const STEPS: &str = "graft.steps_done";
/// Fingerprint keys are stored under this prefix.
const PREFIX: &str = "graft.run.";

/// What a checkpoint's state is valid for: named fields, each a short printable value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(pub BTreeMap<String, String>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Fingerprint {
    /// The fingerprint of training `program` on `data` (the data file, if any).
    ///
    /// # Errors
    /// The data file cannot be read.
    pub fn of(program: &Program, data: Option<&Path>) -> Result<Fingerprint, String> {
        let data = match data {
            Some(p) => Some((
                p,
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
            )),
            None => None,
        };
        Ok(Fingerprint::with_data(
            program,
            data.as_ref().map(|(p, b)| (*p, b.as_slice())),
        ))
    }

    /// [`Fingerprint::of`] with the data file's bytes already read.
    pub fn with_data(program: &Program, data: Option<(&Path, &[u8])>) -> Fingerprint {
        let t = &program.train;
        let mut m = BTreeMap::new();
        let mut module = Module {
            files: Vec::new(),
            functions: program.module.functions.clone(),
        };
        for f in &mut module.functions {
            for n in &mut f.nodes {
                n.loc = None;
            }
        }
        let text = graft_ir::print_module(&module);
        m.insert(
            "model".into(),
            hex(&Sha256::digest(text.as_bytes()))[..16].to_string(),
        );
        let mut adapters: Vec<String> = program
            .adapters
            .iter()
            .map(|a| format!("{}@{}", a.adapter, a.module_path))
            .collect();
        adapters.sort();
        m.insert("adapters".into(), adapters.join(" "));
        m.insert("optimizer".into(), format!("{:?}", t.optimizer));
        if !t.param_groups.is_empty() {
            let groups: Vec<String> = t
                .param_groups
                .iter()
                .map(|(g, _)| format!("{g:?}"))
                .collect();
            m.insert("param groups".into(), groups.join(", "));
        }
        // A decaying schedule depends on the run's length; a constant one does not (a run
        // may be extended).
        let schedule = match t.schedule {
            graft_frontend::Schedule::Constant { .. } => format!("{:?}", t.schedule),
            _ => format!("{:?} over {} steps", t.schedule, t.steps),
        };
        m.insert("schedule".into(), schedule);
        m.insert("clip".into(), format!("{:?}", t.clip));
        m.insert("batch".into(), format!("{} × {}", t.batch, t.seq));
        m.insert("seed".into(), t.seed.to_string());
        m.insert(
            "data layout".into(),
            format!(
                "{}, {}, {} micro-batches a step",
                if t.packing { "packed" } else { "padded" },
                if t.shuffle { "shuffled" } else { "in order" },
                t.accumulate
            ),
        );
        if let Some((p, bytes)) = data {
            let sum = hex(&Sha256::digest(bytes));
            let name = p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into());
            m.insert(
                "data".into(),
                format!("{name} ({} bytes, sha256 {})", bytes.len(), &sum[..16]),
            );
        }
        Fingerprint(m)
    }

    /// Records a file the run depends on (the tokenizer) under `key`: its name and SHA-256.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn add_file(&mut self, key: &str, path: &Path) -> Result<(), String> {
        let bytes = graft_frontend::source::overlay::read_file(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into());
        let sum = hex(&Sha256::digest(&bytes));
        self.0
            .insert(key.into(), format!("{name} (sha256 {})", &sum[..16]));
        Ok(())
    }

    /// The fields that differ from `other` (what a checkpoint was written with), as lines
    /// `field: old → new`, in field order.
    pub fn changes_from(&self, written: &Fingerprint) -> Vec<String> {
        let mut keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(written.0.keys()).collect();
        // Moved adapters change the forward too; the adapters' line says more.
        if self.0.get("adapters") != written.0.get("adapters") {
            keys.retain(|k| k.as_str() != "model");
        }
        let none = String::from("(none)");
        keys.into_iter()
            .filter_map(|k| {
                let (old, new) = (
                    written.0.get(k).unwrap_or(&none),
                    self.0.get(k).unwrap_or(&none),
                );
                (old != new).then(|| match k.as_str() {
                    "model" => "the model, its adapters or their settings changed (the \
                                elaborated forward differs)"
                        .to_string(),
                    "adapters" => adapter_change(old, new),
                    _ => format!("{k}: {old} → {new}"),
                })
            })
            .collect()
    }
}

/// Which adapter placements were added and removed.
fn adapter_change(old: &str, new: &str) -> String {
    let o: std::collections::BTreeSet<&str> = old.split(' ').filter(|s| !s.is_empty()).collect();
    let n: std::collections::BTreeSet<&str> = new.split(' ').filter(|s| !s.is_empty()).collect();
    let list = |s: Vec<&&str>| {
        let mut v: Vec<String> = s.iter().take(4).map(|x| x.replace('@', " at ")).collect();
        if s.len() > 4 {
            v.push(format!("and {} more", s.len() - 4));
        }
        v.join(", ")
    };
    let added: Vec<&&str> = n.difference(&o).collect();
    let removed: Vec<&&str> = o.difference(&n).collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", list(added)));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", list(removed)));
    }
    format!("adapters: {}", parts.join("; "))
}

/// SHA-256 over every tensor (sorted by name): its name, dtype, shape and data.
fn checksum<'t>(tensors: impl IntoIterator<Item = (&'t String, &'t Tensor)>) -> String {
    let mut h = Sha256::new();
    for (name, t) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(t.ty().to_string().as_bytes());
        match t.data() {
            Data::F32(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
            Data::I64(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
            other => h.update(format!("{other:?}").as_bytes()),
        }
    }
    hex(&h.finalize())
}

/// What a successful resume reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resumed {
    /// Steps done when the checkpoint was written.
    pub steps_done: usize,
    /// Fingerprint fields that changed and were accepted because the resume was forced.
    pub forced: Vec<String>,
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> SessionError {
    SessionError::Value(format!("checkpoint {}: {message}", path.display()))
}

impl Session {
    /// Writes every trainable tensor, the optimizer state and the step count to `path`
    /// (safetensors, durably and atomically: an interrupted write leaves the previous
    /// checkpoint), with their checksum and `fingerprint` in the header.
    ///
    /// # Errors
    /// The write failed (the message names the path).
    pub fn save_checkpoint(
        &self,
        path: &Path,
        fingerprint: &Fingerprint,
    ) -> Result<(), SessionError> {
        let steps = Tensor::i64(Vec::<usize>::new(), vec![self.steps_done as i64])
            .map_err(|e| SessionError::Value(e.to_string()))?;
        // Borrowed, in name order (the checksum's order), not copied.
        let mut tensors: BTreeMap<String, &Tensor> = self
            .step_fn
            .inputs()
            .filter(|i| matches!(i.kind, InputKind::Param | InputKind::State))
            .filter_map(|i| self.values.get(i.name).map(|t| (i.name.to_string(), t)))
            .collect();
        tensors.insert(STEPS.into(), &steps);
        let mut meta: HashMap<String, String> = fingerprint
            .0
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.clone()))
            .collect();
        meta.insert(
            CHECKSUM.into(),
            checksum(tensors.iter().map(|(k, v)| (k, *v))),
        );
        let list: Vec<(String, &Tensor)> = tensors.into_iter().collect();
        let bytes =
            crate::weights::to_safetensors_with(&list, Some(meta)).map_err(SessionError::Value)?;
        crate::write_atomic(path, &bytes)
            .map_err(|e| SessionError::Value(format!("cannot write checkpoint: {e}")))
    }

    /// Restores a checkpoint written by [`Session::save_checkpoint`]. Everything is checked
    /// before the session changes: the checksum, every tensor of the training state present
    /// with its type and nothing else, the step count against the optimizer's counter, and
    /// `expected` against the fingerprint it was written with (a difference is an error that
    /// lists it, unless `force`, when it is reported in [`Resumed::forced`]).
    ///
    /// # Errors
    /// What is wrong, naming the file.
    pub fn load_checkpoint(
        &mut self,
        path: &Path,
        expected: &Fingerprint,
        force: bool,
    ) -> Result<Resumed, SessionError> {
        let file = WeightsFile::open(path)?;
        let meta = file.metadata();
        let mut tensors = BTreeMap::new();
        for name in file.entries().keys() {
            tensors.insert(name.clone(), file.read(name)?);
        }
        match meta.get(CHECKSUM) {
            Some(sum) if *sum == checksum(&tensors) => {}
            Some(_) => {
                return Err(invalid(
                    path,
                    "its tensors do not match the checksum it was written with: the file is \
                     damaged; delete it to start over, or restore a copy",
                ));
            }
            None if force => {}
            None => {
                return Err(invalid(
                    path,
                    "it has no checksum or fingerprint (written by an older graft, or not by \
                     graft); pass --force-resume to use it anyway",
                ));
            }
        }
        let written = Fingerprint(
            meta.iter()
                .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k.to_string(), v.clone())))
                .collect(),
        );
        let changes = if meta.contains_key(CHECKSUM) {
            expected.changes_from(&written)
        } else {
            Vec::new()
        };
        if !changes.is_empty() && !force {
            return Err(invalid(
                path,
                format!(
                    "it was written by a different run:\n  {}\npass --force-resume to continue \
                     from it with the new settings, or use another checkpoint folder",
                    changes.join("\n  ")
                ),
            ));
        }
        let steps = tensors
            .remove(STEPS)
            .ok_or_else(|| invalid(path, format!("no `{STEPS}` tensor")))?;
        let steps = match steps.as_i64() {
            Some([n]) if *n >= 0 => *n as usize,
            _ => return Err(invalid(path, format!("`{STEPS}` is not a count of steps"))),
        };
        let mut missing = Vec::new();
        for i in self
            .step_fn
            .inputs()
            .filter(|i| matches!(i.kind, InputKind::Param | InputKind::State))
        {
            match tensors.get(i.name) {
                None => missing.push(i.name.to_string()),
                Some(t) if t.ty() != i.ty => {
                    return Err(invalid(
                        path,
                        format!("tensor `{}` is {}, this spec's is {}", i.name, t.ty(), i.ty),
                    ));
                }
                Some(_) => {}
            }
        }
        if !missing.is_empty() {
            let more = if missing.len() > 5 {
                format!(" and {} more", missing.len() - 5)
            } else {
                String::new()
            };
            missing.truncate(5);
            return Err(invalid(
                path,
                format!(
                    "it lacks tensors of this spec's training state: {}{more}",
                    missing.join(", ")
                ),
            ));
        }
        if let Some(extra) = tensors.keys().find(|n| self.step_fn.input(n).is_none()) {
            return Err(invalid(
                path,
                format!("tensor `{extra}` is not part of this spec's training state"),
            ));
        }
        // The optimizer's own step counter (an f32, exact below 2²⁴) must agree.
        if let Some(counter) = tensors
            .get("step")
            .and_then(|t| t.as_f32())
            .and_then(|v| v.first())
            && f64::from(*counter) != steps as f64
        {
            return Err(invalid(
                path,
                format!(
                    "it says {steps} steps were done, but its optimizer step counter says {counter}"
                ),
            ));
        }
        for (name, t) in tensors {
            self.values.insert(name, t);
        }
        self.steps_done = steps;
        Ok(Resumed {
            steps_done: steps,
            forced: changes,
        })
    }
}
