//! The training loop, shared by `graft run` and anything else that trains a spec: steps over
//! the spec's data, checkpoints on a cadence, a non-finite or stuck run stopped before any
//! state is written, SIGINT/SIGTERM/SIGHUP turned into "finish this step, save, exit", and
//! the trained result saved without losing it when saving fails.
//!
//! Policies, in the order they apply after each step:
//! - **Non-finite.** A NaN or infinite loss or gradient norm stops the run on that step;
//!   nothing is written after it (the last checkpoint is the last good state). With
//!   [`TrainOptions::debug_non_finite`] the step is run again on the interpreter, from a copy
//!   of the state taken before it, and the error names the first op whose value is not
//!   finite, with its source location.
//! - **Stuck.** A gradient norm of exactly 0 on [`ZERO_GRAD_STEPS`] steps in a row (or on
//!   every step of a shorter run) stops it: nothing is training.
//! - **Checkpoint** every `every` steps and at the last, into a folder this run locks; the
//!   metrics file (one JSON record per step) is fsynced with it.
//! - **Signals.** The first SIGINT, SIGTERM or SIGHUP lets the current step finish, then a
//!   checkpoint and the adapter are written; a second one exits at once (status 130).
//! - **Evaluation** on held-out data (at most [`EVAL_BATCHES`] batches) every `eval_every`
//!   steps and after the last, with the compiled `@eval` ([`crate::eval`]).

use crate::checkpoint::{Fingerprint, Resumed};
use crate::data::{Batches, Layout};
use crate::labeled::{Batch, LabeledBatches, Source};
use crate::session::{Session, SessionError, SessionOptions, StepStats};
use crate::signals::Signals;
use crate::tokenizer::TextTokenizer;
use crate::weights::WeightsFile;
use graft_frontend::Program;
use graft_interp::Tensor;
use graft_ir::InputKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Steps in a row with a zero gradient norm after which a run is stopped as stuck.
pub const ZERO_GRAD_STEPS: usize = 10;
/// The checkpoint's file name inside its folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Files `--save` writes; any of them left in the folder from an earlier save that this
/// one does not write is removed (a LoRA save after a prompt-tuning one must not leave the
/// old adapter beside the new tensors).
const SAVED_FILES: &[&str] = &[
    "trainable.safetensors",
    "adapter_model.safetensors",
    "adapter_config.json",
];

/// How to train.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Steps to run in all (default: the `train` block's).
    pub steps: Option<usize>,
    /// Seed for initializers, dropout and data order (default: the `train` block's).
    pub seed: Option<u64>,
    /// Keep a checkpoint in this folder; a run that finds one resumes from it.
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (at least 1).
    pub every: usize,
    /// Save the trained tensors (and the PEFT adapter) into this folder at the end.
    pub save: Option<PathBuf>,
    /// Resume from a checkpoint whose fingerprint differs (new hyperparameters).
    pub force_resume: bool,
    /// On a non-finite step, name the first op that produced a non-finite value.
    pub debug_non_finite: bool,
    /// Append one JSON record per step to this file ([`crate::metrics`]).
    pub metrics: Option<PathBuf>,
    /// Held-out data for the eval loss (default: the `train` block's `eval_data`).
    pub eval: Option<PathBuf>,
    /// Steps between evaluations (default: the `train` block's `eval_every`; 0: only after
    /// the last step).
    pub eval_every: Option<usize>,
    /// Start from the trained tensors in this folder (a PEFT adapter or graft's
    /// `trainable.safetensors`) unless a checkpoint is resumed.
    pub adapter: Option<PathBuf>,
    /// Skip data lines that are not valid records (each reported) instead of stopping.
    pub skip_bad_lines: bool,
}

/// Evaluations use at most this many batches of the eval data (its first ones).
pub const EVAL_BATCHES: usize = 64;

/// What the loop reports as it goes, for the caller to print.
pub enum Event<'a> {
    /// The session is ready; `steps` will run in all.
    Ready(&'a Session, usize),
    /// Resumed from a checkpoint.
    Resumed(&'a Path, &'a Resumed),
    /// A step finished.
    Step(StepStats, f64),
    /// A signal arrived; the run stops after the current step.
    Stopping(&'static str),
    /// A file or folder was written.
    Wrote(String),
    /// Something the user should know that is not an error.
    Note(String),
    /// An evaluation after this many steps.
    Eval(usize, crate::eval::EvalStats),
}

/// How a run ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step ran.
    Finished,
    /// A signal stopped it after a step; the state was saved.
    Interrupted(&'static str),
}

/// Why training stopped with an error. The state written before it is intact.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A file could not be used.
    #[error("{0}")]
    Input(String),
    /// The loss or gradient norm is NaN or infinite.
    #[error(
        "the {what} is not finite at step {step} (loss {loss}, grad_norm {grad_norm}); \
         nothing was written after it ({kept}){culprit}"
    )]
    NonFinite {
        /// The step.
        step: usize,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// Its loss.
        loss: f32,
        /// Its gradient norm.
        grad_norm: f32,
        /// Where the last good state is.
        kept: String,
        /// The first op with a non-finite value, or a hint.
        culprit: String,
    },
    /// The gradients are all zero step after step.
    #[error(
        "the gradient norm has been exactly 0 for {steps} steps in a row (to step {step}): \
         nothing is training (are the trainable tensors disconnected from the loss, or the \
         learning rate 0?){kept}"
    )]
    Stuck {
        /// Steps with a zero norm.
        steps: usize,
        /// The last of them.
        step: usize,
        /// Where the state was kept.
        kept: String,
    },
    /// Saving the result failed; the state was kept elsewhere.
    #[error("saving failed: {error}; the trained state is kept in {kept}")]
    Save {
        /// What failed.
        error: String,
        /// Where the state is.
        kept: String,
    },
}

/// Loads the spec's data and weights, starts a session, and trains; see the module docs.
///
/// # Errors
/// See [`TrainError`]; whatever was written before the error is intact.
pub fn train(
    spec: &Path,
    program: Program,
    session_opts: &SessionOptions,
    opts: &TrainOptions,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome, TrainError> {
    // Before anything compiles: LLVM installs handlers for SIGINT/SIGTERM/SIGHUP when it
    // JIT-compiles (they re-raise the signal with its default action, killing the process).
    // Registered first, ours are what LLVM's restore and re-raise to.
    let signals = Signals::install();
    let dir = spec.parent().unwrap_or(Path::new("."));
    let weights = match &program.weights {
        Some((path, _)) => Some(WeightsFile::open(path).map_err(SessionError::from)?),
        None => {
            on(Event::Note(
                "the spec names no weights file; frozen weights are seeded stand-ins".into(),
            ));
            None
        }
    };
    let data = program
        .train
        .data
        .clone()
        .ok_or_else(|| TrainError::Input("the `train` block names no `data` file".into()))?;
    let vocab = crate::data::vocab(&program)
        .ok_or_else(|| TrainError::Input("the model has no logits".into()))?;
    let text_batches = crate::labeled::reads_text(&program);
    let tok = crate::data::tokenizer(&program, dir).map_err(TrainError::Input)?;
    let mut program = program;
    if let Some(seed) = opts.seed {
        program.train.seed = seed;
    }
    let data_path = dir.join(&data);
    // Read once: parsed here, and hashed for the checkpoint's fingerprint below.
    let data_bytes =
        crate::data::read_bytes(&data_path).map_err(|e| TrainError::Input(e.to_string()))?;
    let layout = Layout::of(&program, tok.as_ref());
    let cx = crate::labeled::context(&program, tok.as_ref());
    let inputs = crate::labeled::batch_inputs(&program);
    // A file's batches, from its bytes (read from `path` when `None`).
    let load = |path: &Path, bytes: Option<&[u8]>, layout: Layout, on: &mut dyn FnMut(Event)| {
        let input = |e: crate::DataError| TrainError::Input(e.to_string());
        let bytes = match bytes {
            Some(b) => std::borrow::Cow::Borrowed(b),
            None => std::borrow::Cow::Owned(crate::data::read_bytes(path).map_err(input)?),
        };
        if text_batches {
            let text = crate::data::text_of(path, &bytes).map_err(input)?;
            let b = load_batches(text, path, tok.as_ref(), vocab, layout, opts, on)?;
            return Ok::<_, TrainError>(Source::Text(b));
        }
        let (b, skipped) = LabeledBatches::from_bytes(
            path,
            &bytes,
            inputs.clone(),
            &cx,
            layout.shuffle,
            opts.skip_bad_lines,
        )
        .map_err(|e| TrainError::Input(e.to_string()))?;
        report_skipped(&skipped, path, on);
        Ok(Source::Labeled(b))
    };
    let mut batches = load(&data_path, Some(&data_bytes), layout.clone(), on)?;
    let accumulate = program.train.accumulate;
    let steps = match (opts.steps, program.train.epochs) {
        (Some(n), _) => n,
        (None, Some(e)) => (batches.per_epoch() * e).div_ceil(accumulate),
        (None, None) => program.train.steps,
    };
    program.train.steps = steps;
    let seed = program.train.seed;
    let mut fingerprint =
        Fingerprint::with_data(&program, Some((data_path.as_path(), &data_bytes)));
    if let Some(t) = &tok {
        fingerprint
            .add_file("tokenizer", &t.path)
            .map_err(TrainError::Input)?;
    }
    drop(data_bytes);
    crate::memory::check_fits(&program).map_err(TrainError::Input)?;
    // Lock the checkpoint folder before anything is read from it.
    let lock = match &opts.checkpoint {
        Some(d) => Some(crate::files::lock_dir(d).map_err(TrainError::Input)?),
        None => None,
    };
    let eval_path = opts
        .eval
        .clone()
        .or_else(|| program.train.eval_data.as_ref().map(|d| dir.join(d)));
    let eval_every = opts.eval_every.unwrap_or(program.train.eval_every);
    let eval_batches = match &eval_path {
        Some(p) => {
            let layout = Layout {
                shuffle: None,
                ..layout
            };
            let mut b = load(p, None, layout, on)?;
            (0..b.per_epoch().min(EVAL_BATCHES))
                .map(|_| b.next_batch())
                .collect()
        }
        None => Vec::new(),
    };
    let program_tokens = program.train.batch * program.train.seq * accumulate;
    let mut session = Session::with_options(program, weights.as_ref(), seed, session_opts)?;
    if !eval_batches.is_empty() {
        session.prepare_eval(session_opts.backend, session_opts.optimize)?;
    }
    let ckpt = opts.checkpoint.as_ref().map(|d| d.join(CHECKPOINT_FILE));
    if let Some(file) = &ckpt
        && file.exists()
    {
        crate::files::regular_file(file, "checkpoint").map_err(TrainError::Input)?;
        let resumed = session.load_checkpoint(file, &fingerprint, opts.force_resume)?;
        batches.skip(resumed.steps_done * accumulate);
        on(Event::Resumed(file, &resumed));
        if let Some(a) = &opts.adapter {
            on(Event::Note(format!(
                "resumed from the checkpoint; {} was not loaded",
                a.display()
            )));
        }
    } else if let Some(a) = &opts.adapter {
        let (n, missing) = session.load_trained(a)?;
        on(Event::Note(format!(
            "started from {n} trained tensors in {}",
            a.display()
        )));
        if !missing.is_empty() {
            on(Event::Note(format!(
                "{} trainable tensors were not in {} and start from their initializers: {}",
                missing.len(),
                a.display(),
                missing.join(", ")
            )));
        }
    }
    let metrics = match &opts.metrics {
        Some(p) => Some(
            crate::metrics::Metrics::open(p, session.steps_done()).map_err(TrainError::Input)?,
        ),
        None => None,
    };
    on(Event::Ready(&session, steps));
    let mut run = Run {
        eval: (eval_batches, eval_every),
        metrics,
        tokens: program_tokens,
        session: &mut session,
        fingerprint: &fingerprint,
        opts,
        ckpt: ckpt.as_deref(),
        steps,
        on,
        last_saved: None,
        signals,
    };
    let outcome = run.steps(&mut batches);
    drop(lock);
    outcome
}

/// The batches of a data file's `text`; with `skip`, bad lines are left out and reported
/// (the first few by line, then a count).
fn load_batches(
    text: &str,
    path: &Path,
    tok: Option<&TextTokenizer>,
    vocab: usize,
    layout: Layout,
    opts: &TrainOptions,
    on: &mut dyn FnMut(Event),
) -> Result<Batches, TrainError> {
    let input = |e: crate::DataError| TrainError::Input(e.to_string());
    let (examples, skipped) =
        crate::data::examples_of(text, path, tok, vocab, opts.skip_bad_lines).map_err(input)?;
    report_skipped(&skipped, path, on);
    let b = Batches::new(examples, layout, &path.display().to_string()).map_err(input)?;
    if b.dropped > 0 {
        on(Event::Note(format!(
            "{} of {}'s blocks have no target and are left out",
            b.dropped,
            path.display()
        )));
    }
    Ok(b)
}

/// Bad lines left out (`--skip-bad-lines`): the first few by line, then a count.
fn report_skipped(skipped: &[crate::DataError], path: &Path, on: &mut dyn FnMut(Event)) {
    for e in skipped.iter().take(5) {
        on(Event::Note(format!("skipped {e}")));
    }
    if skipped.len() > 5 {
        on(Event::Note(format!(
            "skipped {} bad lines of {} in all",
            skipped.len(),
            path.display()
        )));
    }
}

/// One run's loop and what it needs to save.
struct Run<'a, 's> {
    session: &'s mut Session,
    fingerprint: &'a Fingerprint,
    opts: &'a TrainOptions,
    ckpt: Option<&'a Path>,
    steps: usize,
    on: &'a mut dyn FnMut(Event),
    /// The step of the last checkpoint written (or resumed from).
    last_saved: Option<usize>,
    signals: Signals,
    metrics: Option<crate::metrics::Metrics>,
    /// Tokens per step.
    tokens: usize,
    /// The eval batches (none: no evaluation) and the steps between evaluations.
    eval: (Vec<Batch>, usize),
}

impl Run<'_, '_> {
    fn steps(&mut self, batches: &mut Source) -> Result<Outcome, TrainError> {
        let every = self.opts.every.max(1);
        let mut zero_run = 0;
        if self.ckpt.is_some_and(Path::exists) {
            self.last_saved = Some(self.session.steps_done());
        }
        while self.session.steps_done() < self.steps {
            // A signal while compiling or since the last step.
            if let Some(why) = self.signals.raised() {
                (self.on)(Event::Stopping(why));
                self.save_interrupted()?;
                self.plot();
                return Ok(Outcome::Interrupted(why));
            }
            let group: Vec<Batch> = (0..self.session.program.train.accumulate.max(1))
                .map(|_| batches.next_batch())
                .collect();
            let before = self.opts.debug_non_finite.then(|| self.state());
            let start = std::time::Instant::now();
            let s = self.session.step_group_named(&group)?;
            let secs = start.elapsed().as_secs_f64();
            (self.on)(Event::Step(s, secs));
            if let Some(m) = &mut self.metrics {
                m.record(&s, secs, self.tokens).map_err(TrainError::Input)?;
            }
            if !s.loss.is_finite() || !s.grad_norm.is_finite() {
                return Err(self.non_finite(s, before, &group[0]));
            }
            zero_run = if s.grad_norm == 0.0 { zero_run + 1 } else { 0 };
            if zero_run >= ZERO_GRAD_STEPS.min(self.steps) {
                let kept = match self.checkpoint() {
                    Ok(Some(p)) => format!("; the state is saved in {}", p.display()),
                    Ok(None) => String::new(),
                    Err(e) => format!("; {e}"),
                };
                return Err(TrainError::Stuck {
                    steps: zero_run,
                    step: s.step,
                    kept,
                });
            }
            if s.step % every == 0 || s.step == self.steps {
                self.checkpoint()?;
            }
            if self.eval.1 > 0 && s.step % self.eval.1 == 0 && s.step < self.steps {
                self.evaluate()?;
            }
        }
        if let Some(why) = self.signals.raised() {
            (self.on)(Event::Stopping(why));
            self.save_interrupted()?;
            self.plot();
            return Ok(Outcome::Interrupted(why));
        }
        self.evaluate()?;
        self.save_result()?;
        self.plot();
        Ok(Outcome::Finished)
    }

    /// `loss.svg` beside the metrics file: the training and held-out loss curves. A plot
    /// that cannot be drawn is a note, not a failed run.
    fn plot(&mut self) {
        let Some(m) = &self.metrics else {
            return;
        };
        let out = m.path().with_file_name("loss.svg");
        let drawn = crate::metrics::Metrics::read(m.path())
            .and_then(|records| crate::plot::write_loss_plot(&records, &out));
        match drawn {
            Ok(true) => (self.on)(Event::Wrote(format!(
                "the loss curves in {}",
                out.display()
            ))),
            Ok(false) => {}
            Err(e) => (self.on)(Event::Note(format!("no loss plot: {e}"))),
        }
    }

    /// The eval loss on the eval batches, reported and recorded (nothing without eval data).
    fn evaluate(&mut self) -> Result<(), TrainError> {
        if self.eval.0.is_empty() {
            return Ok(());
        }
        let stats = self.session.evaluate_named(&self.eval.0)?;
        let step = self.session.steps_done();
        if let Some(m) = &mut self.metrics {
            m.record_eval(step, &stats).map_err(TrainError::Input)?;
        }
        (self.on)(Event::Eval(step, stats));
        Ok(())
    }

    /// A copy of the trainable tensors and optimizer state (what a step changes).
    fn state(&self) -> HashMap<String, Tensor> {
        self.session
            .step_fn
            .inputs()
            .filter(|i| matches!(i.kind, InputKind::Param | InputKind::State))
            .filter_map(|i| {
                self.session
                    .value(i.name)
                    .map(|t| (i.name.to_string(), t.clone()))
            })
            .collect()
    }

    fn kept(&self) -> String {
        match (self.ckpt, self.last_saved) {
            (Some(p), Some(n)) => format!("the last checkpoint, {}, holds step {n}", p.display()),
            (Some(p), None) => format!("no checkpoint was written yet to {}", p.display()),
            (None, _) => "no --checkpoint folder was given".into(),
        }
    }

    fn non_finite(
        &mut self,
        s: StepStats,
        before: Option<HashMap<String, Tensor>>,
        batch: &Batch,
    ) -> TrainError {
        let what = if s.loss.is_finite() {
            "gradient norm"
        } else {
            "loss"
        };
        let culprit = match before {
            None => "; lower the learning rate or enable `clip`; --debug-non-finite names the \
                     first op whose value is not finite"
                .to_string(),
            Some(state) => match self.session.first_non_finite(state, batch) {
                Ok(Some(at)) => format!("; the first non-finite value: {at}"),
                Ok(None) => "; on the interpreter every value of that step is finite (the \
                             compiled step differs from the interpreter: please report it)"
                    .to_string(),
                Err(e) => format!("; re-running the step on the interpreter failed: {e}"),
            },
        };
        TrainError::NonFinite {
            step: s.step,
            what,
            loss: s.loss,
            grad_norm: s.grad_norm,
            kept: self.kept(),
            culprit,
        }
    }

    /// Writes the checkpoint if the run keeps one; returns its path.
    fn checkpoint(&mut self) -> Result<Option<PathBuf>, TrainError> {
        let Some(file) = self.ckpt else {
            return Ok(None);
        };
        if let Some(m) = &mut self.metrics {
            m.sync().map_err(TrainError::Input)?;
        }
        self.session.save_checkpoint(file, self.fingerprint)?;
        self.last_saved = Some(self.session.steps_done());
        (self.on)(Event::Wrote(format!(
            "checkpoint {} (step {})",
            file.display(),
            self.session.steps_done()
        )));
        Ok(Some(file.to_path_buf()))
    }

    /// After a signal: the checkpoint (into the checkpoint folder, else the save folder, else
    /// `graft-checkpoint/`), then the adapter.
    fn save_interrupted(&mut self) -> Result<(), TrainError> {
        let file = match (self.ckpt, &self.opts.save) {
            (Some(f), _) => f.to_path_buf(),
            (None, Some(d)) => d.join(CHECKPOINT_FILE),
            (None, None) => PathBuf::from("graft-checkpoint").join(CHECKPOINT_FILE),
        };
        self.session.save_checkpoint(&file, self.fingerprint)?;
        (self.on)(Event::Wrote(format!(
            "checkpoint {} (step {}); resume with --checkpoint {}",
            file.display(),
            self.session.steps_done(),
            file.parent()
                .map_or_else(String::new, |d| d.display().to_string())
        )));
        self.save_result()
    }

    /// `--save`: the trained tensors and the PEFT adapter. When writing fails, the state is
    /// kept in a checkpoint (the run's own, else a new one in the temporary folder) and the
    /// error says where.
    fn save_result(&mut self) -> Result<(), TrainError> {
        if let Some(m) = &mut self.metrics {
            m.sync().map_err(TrainError::Input)?;
        }
        let Some(out) = self.opts.save.clone() else {
            return Ok(());
        };
        match save_outputs(self.session, &out) {
            Ok(notes) => {
                for n in notes {
                    (self.on)(n);
                }
                Ok(())
            }
            Err(error) => {
                let kept = match (self.ckpt, self.last_saved) {
                    (Some(f), Some(n)) if n == self.session.steps_done() => {
                        format!("the checkpoint {}", f.display())
                    }
                    _ => {
                        let rescue = std::env::temp_dir()
                            .join(format!("graft-rescue-{}", std::process::id()))
                            .join(CHECKPOINT_FILE);
                        match self.session.save_checkpoint(&rescue, self.fingerprint) {
                            Ok(()) => format!("the checkpoint {}", rescue.display()),
                            Err(e) => format!("no file: the rescue checkpoint failed too ({e})"),
                        }
                    }
                };
                Err(TrainError::Save { error, kept })
            }
        }
    }
}

/// Writes `trainable.safetensors` and, when the methods have a PEFT form, the PEFT adapter
/// into `out`, then removes files of an earlier save that this one did not write.
fn save_outputs<'e>(session: &Session, out: &Path) -> Result<Vec<Event<'e>>, String> {
    crate::files::remove_stale_temporaries(out);
    let params = session.params();
    let bytes = crate::weights::to_safetensors(&params)?;
    let trainable = out.join("trainable.safetensors");
    crate::write_atomic(&trainable, &bytes).map_err(|e| e.to_string())?;
    let mut notes = vec![Event::Wrote(trainable.display().to_string())];
    let mut written = vec!["trainable.safetensors"];
    match crate::save_adapter(
        out,
        &session.program.adapters,
        crate::peft::task_type(&session.program).as_deref(),
        &params,
    ) {
        Ok(()) => {
            written.extend(["adapter_model.safetensors", "adapter_config.json"]);
            notes.push(Event::Wrote(format!("a PEFT adapter in {}", out.display())));
        }
        Err(crate::PeftError::Io(e)) => return Err(e),
        Err(e) => notes.push(Event::Note(format!("no PEFT adapter written: {e}"))),
    }
    for stale in SAVED_FILES.iter().filter(|f| !written.contains(f)) {
        let p = out.join(stale);
        if p.exists() {
            std::fs::remove_file(&p)
                .map_err(|e| format!("cannot remove the stale {}: {e}", p.display()))?;
            notes.push(Event::Note(format!(
                "removed {} left by an earlier save",
                p.display()
            )));
        }
    }
    Ok(notes)
}
