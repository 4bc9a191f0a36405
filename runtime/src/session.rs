//! A training session: the values a program's functions read (frozen weights, trainable
//! params, optimizer state), its `@init` run once, and `@train_step` run per batch, on a
//! [`Backend`]: the reference interpreter, or compiled code (which reads the frozen weights in
//! place from the memory-mapped weights file).

use crate::backend::{Backend, Interpreter, MappedInput, Prepared, RunProfile};
use crate::weights::{WeightsError, WeightsFile};
use graft_autodiff::{AdError, StepConfig, train_step};
use graft_frontend::{DeclKind, Program};
use graft_interp::{InterpError, Tensor, run};
use graft_ir::{Function, InputKind, TensorType};
use std::collections::HashMap;

/// Why a session could not start or step.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The weights file does not fit the program.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A tensor from the weights file has the wrong shape.
    #[error("`{name}` is {got:?} in the weights file, but the spec declares {want:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// Its shape in the file.
        got: Vec<usize>,
        /// The declared shape.
        want: Vec<usize>,
    },
    /// Building the training step failed.
    #[error("building the training step: {0}")]
    Step(#[from] AdError),
    /// The interpreter failed.
    #[error(transparent)]
    Interp(#[from] InterpError),
    /// Quantizing a weight failed.
    #[error("quantizing `{0}`: {1}")]
    Quant(String, String),
    /// The backend failed to prepare or run the step.
    #[error("backend: {0}")]
    Backend(String),
    /// A function is missing from the program.
    #[error("the program has no `@{0}`")]
    Missing(&'static str),
    /// A value given to the session does not fit.
    #[error("{0}")]
    Value(String),
}

/// What one training step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Steps done, counting this one.
    pub step: usize,
    /// The loss before the update.
    pub loss: f32,
    /// The gradients' global L2 norm (before clipping).
    pub grad_norm: f32,
    /// The learning rate used.
    pub lr: f32,
}

/// The autodiff crate's step configuration for a program: its `train` block, and the
/// `@penalty` and `@after_step` its adapters add.
pub fn step_config(p: &Program) -> StepConfig {
    let t = &p.train;
    StepConfig {
        optimizer: t.optimizer.clone(),
        schedule: t.schedule,
        total_steps: t.steps,
        clip: t.clip,
        ignore_index: -100,
        accumulate: t.accumulate,
        groups: t.param_groups.iter().map(|(g, _)| g.clone()).collect(),
        penalty: p.module.function("penalty").cloned(),
        after_step: p.module.function("after_step").cloned(),
        loss: p.module.function("loss").cloned(),
        ema: t.ema,
    }
}

/// A program with its values, ready to train.
pub struct Session {
    /// The compiled spec.
    pub program: Program,
    /// `@train_step` (optimized when the session was asked to).
    pub step_fn: Function,
    pub(crate) runner: Box<dyn Prepared>,
    backend: &'static str,
    pub(crate) values: HashMap<String, Tensor>,
    /// Frozen weights the backend reads in place from the weights file: name, type, and
    /// byte range in `file`'s map.
    mapped: Vec<(String, TensorType, std::ops::Range<usize>)>,
    /// The weights file those live in (mapped again by the session, so that it owns it).
    file: Option<WeightsFile>,
    /// Seconds optimizing the step took, and whether it came from the cache.
    optimized: Option<(f64, bool)>,
    seed: u64,
    pub(crate) steps_done: usize,
    /// The micro-batch being run, when the step accumulates several.
    micro: usize,
    /// Weights the backend bound and let go of: made again (from the seed, or read from the
    /// weights file) when the interpreter needs them ([`Session::forward`], [`Session::gradients`]).
    /// Whether each was a stand-in (else it is read from the weights file again).
    dropped: Vec<(String, TensorType, bool)>,
    /// The frozen tensors `@init` computed (`shared` ones, replaced weights) that the backend
    /// let go of: kept
    /// here, since neither the weights file nor the seed alone makes them again.
    computed: HashMap<String, Tensor>,
    /// `@eval` and its runner, once prepared ([`crate::eval`]).
    pub(crate) eval: Option<(Function, Box<dyn Prepared>)>,
}

/// Hands the heap's free memory back to the system. Binding frees the frozen weights'
/// tensors while it allocates their packed copies elsewhere; glibc keeps freed blocks that it
/// took from the heap (rather than mapped on their own, which depends on the sizes freed
/// before: its mmap threshold grows) for later allocations, so without this they would
/// stay resident beside the copies (measured: the small Llama with LoRA on every linear layer
/// held 348 MiB instead of 260 after binding).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only releases free heap pages; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The inputs a backend reads in place: each mapped weight's bytes in `file`'s map.
/// The frozen tensors `@init` computes: `shared` buffers, and weights an adapter replaces.
fn computed_frozen(program: &Program) -> std::collections::HashSet<String> {
    let init = program.module.function("init");
    program
        .tensors
        .iter()
        .filter(|t| {
            t.kind == DeclKind::Buffer
                || (t.kind == DeclKind::Weight
                    && init.is_some_and(|f| f.outputs.iter().any(|o| o.name == t.path)))
        })
        .map(|t| t.path.clone())
        .collect()
}

fn mapped_inputs<'a>(
    file: Option<&'a WeightsFile>,
    mapped: &'a [(String, TensorType, std::ops::Range<usize>)],
) -> Vec<MappedInput<'a>> {
    mapped
        .iter()
        .filter_map(|(name, ty, r)| {
            Some(MappedInput {
                name,
                ty,
                bytes: file?.slice(r.clone())?,
            })
        })
        .collect()
}

fn scalar_f32(t: &Tensor) -> f32 {
    t.as_f32()
        .and_then(|d| d.first().copied())
        .unwrap_or(f32::NAN)
}

/// The training step a session prepares for `program`, before optimization: `@forward`
/// differentiated with the `train` block's settings. (`graft build` compiles exactly this.)
///
/// # Errors
/// The program has no forward, or autodiff fails.
pub fn step_function(program: &Program) -> Result<Function, SessionError> {
    let forward = program
        .module
        .function("forward")
        .ok_or(SessionError::Missing("forward"))?;
    Ok(train_step(forward, &step_config(program))?)
}

/// How a session runs its training step.
pub struct SessionOptions<'b> {
    /// Run the e-graph optimizer on `@train_step` first.
    pub optimize: bool,
    /// What runs it.
    pub backend: &'b dyn Backend,
}

impl Session {
    /// A session on the reference interpreter, unoptimized: the oracle configuration.
    pub fn new(
        program: Program,
        weights: Option<&WeightsFile>,
        seed: u64,
    ) -> Result<Session, SessionError> {
        Session::with_options(
            program,
            weights,
            seed,
            &SessionOptions {
                optimize: false,
                backend: &Interpreter,
            },
        )
    }

    /// Loads the frozen weights (from `weights`, or a seeded stand-in when there is no file),
    /// quantizes the ones the spec quantizes, runs `@init`, builds `@train_step` (optimized if
    /// asked) and prepares it on the backend.
    pub fn with_options(
        program: Program,
        weights: Option<&WeightsFile>,
        seed: u64,
        opts: &SessionOptions,
    ) -> Result<Session, SessionError> {
        let mut step_fn = step_function(&program)?;
        let mut optimized = None;
        if opts.optimize {
            let started = std::time::Instant::now();
            let (f, cached) =
                crate::cache::optimized_for(opts.backend, &program.module.files, &step_fn)
                    .map_err(SessionError::Value)?;
            step_fn = f;
            optimized = Some((started.elapsed().as_secs_f64(), cached));
        }
        let runner = opts
            .backend
            .prepare(&step_fn)
            .map_err(SessionError::Backend)?;
        // The memory plan is known now, before the arena or any weight is allocated.
        if let Some(info) = runner.info() {
            let need = crate::memory::estimate(&program)
                + (info.arena_bytes + info.output_bytes + info.bound_bytes) as u128;
            if let Some(m) = crate::memory::too_big(
                need,
                "the training step (weights, trainable state and the memory plan's arena)",
            ) {
                return Err(SessionError::Value(m));
            }
        }
        if let Some(w) = weights {
            let expected: Vec<(String, TensorType)> = program
                .tensors
                .iter()
                .filter(|t| t.from_weights)
                .map(|t| (t.path.clone(), t.ty.clone()))
                .collect();
            w.fit(&expected).map_err(SessionError::Value)?;
        }
        let init = program
            .module
            .function("init")
            .ok_or(SessionError::Missing("init"))?;
        // A backend that reads inputs in place gets the weights stored as it needs them
        // straight from the file's map (the session maps the file again to own it); the rest,
        // and whatever `@init` reads, become tensors.
        let file = match weights {
            Some(w) if runner.reads_in_place() => Some(WeightsFile::open(w.path())?),
            _ => None,
        };
        let mut mapped = Vec::new();
        let mut values = HashMap::new();
        let mut stand_ins = Vec::new();
        for t in program.tensors.iter().filter(|t| t.from_weights) {
            let frozen = step_fn
                .input(&t.path)
                .is_some_and(|i| i.kind == InputKind::Weight);
            if let (Some(f), None, true) = (&file, t.quant, frozen) {
                if let Some(range) = f.in_place(&t.path, &t.ty) {
                    mapped.push((t.path.clone(), t.ty.clone(), range));
                    if init.input(&t.path).is_none() {
                        continue;
                    }
                }
            }
            let tensor = match weights {
                Some(w) => {
                    let x = w.read(&t.path)?;
                    if x.shape() != t.ty.shape.as_slice() {
                        return Err(SessionError::Shape {
                            name: t.path.clone(),
                            got: x.shape().to_vec(),
                            want: t.ty.shape.clone(),
                        });
                    }
                    x
                }
                None => {
                    stand_ins.push((t.path.clone(), t.ty.clone()));
                    stand_in(&t.ty, seed, &t.path)?
                }
            };
            match t.quant {
                Some(q) => quantize_into(&mut values, &t.path, &tensor, q)?,
                None => {
                    values.insert(t.path.clone(), tensor);
                }
            }
        }
        values.insert("seed".into(), Tensor::scalar_i64(seed as i64));
        for (name, t) in run(init, &values)? {
            values.insert(name, t);
        }
        values.remove("seed");
        // A decaying schedule reads the run's length as an input (one compiled step for
        // runs of any length).
        if step_fn.input(graft_autodiff::TOTAL_STEPS).is_some() {
            values.insert(
                graft_autodiff::TOTAL_STEPS.into(),
                Tensor::scalar_f32(program.train.steps as f32),
            );
        }
        // A weight `@init` replaced is not read from the file.
        let computed = computed_frozen(&program);
        mapped.retain(|(name, _, _)| !computed.contains(name));
        for (name, _, _) in &mapped {
            values.remove(name);
        }
        for i in step_fn.inputs().filter(|i| i.kind == InputKind::State) {
            // A moving average starts at its param's initial value; other states at zero.
            let start = i
                .name
                .strip_prefix("ema.")
                .and_then(|p| values.get(p))
                .filter(|t| t.ty() == i.ty)
                .cloned();
            values.insert(
                i.name.to_string(),
                start.unwrap_or_else(|| Tensor::zeros(i.ty.clone())),
            );
        }
        let mut session = Session {
            program,
            step_fn,
            runner,
            backend: opts.backend.name(),
            values,
            mapped,
            file,
            optimized,
            seed,
            steps_done: 0,
            micro: 0,
            dropped: Vec::new(),
            computed: HashMap::new(),
            eval: None,
        };
        session.bind_weights(stand_ins)?;
        Ok(session)
    }

    /// Lets the backend bind the frozen weights ([`Prepared::bind`]: a compiled step packs
    /// them once) and drops what its runs no longer read: a mapped weight's pages of the
    /// weights file (read again from the file if something touches them), or a seeded
    /// stand-in tensor (`stand_ins`, made again from the seed if the interpreter needs it).
    /// The memory the weights take then stays about the same, in the backend's layout.
    fn bind_weights(&mut self, stand_ins: Vec<(String, TensorType)>) -> Result<(), SessionError> {
        let computed: HashMap<String, Tensor> = computed_frozen(&self.program)
            .into_iter()
            .filter_map(|p| Some((p.clone(), self.values.get(&p)?.clone())))
            .collect();
        let inputs = mapped_inputs(self.file.as_ref(), &self.mapped);
        let (file, mapped) = (self.file.as_ref(), &self.mapped);
        let mut released = Vec::new();
        self.runner
            .bind(&mut self.values, &inputs, &mut |name: &str| {
                if let (Some(f), Some((_, _, r))) = (file, mapped.iter().find(|m| m.0 == name)) {
                    f.release(r.clone());
                }
                released.push(name.to_string());
            })
            .map_err(SessionError::Backend)?;
        return_freed_memory();
        // What the backend took out of `values`: stand-ins, or weights read from the file
        // into tensors (a dtype the backend does not read in place).
        for name in released {
            if self.values.contains_key(&name) || mapped.iter().any(|m| m.0 == name) {
                continue;
            }
            if let Some(t) = computed.get(&name) {
                self.computed.insert(name.clone(), t.clone());
            }
            let stand_in = stand_ins.iter().find(|s| s.0 == name);
            let ty = match (stand_in, self.step_fn.input(&name)) {
                (Some((_, ty)), _) => ty.clone(),
                (None, Some(i)) => i.ty.clone(),
                (None, None) => continue,
            };
            self.dropped.push((name, ty, stand_in.is_some()));
        }
        Ok(())
    }

    /// Makes the weights the backend let go of again (the interpreter reads them): a
    /// stand-in from the seed, a file's weight from the file.
    pub(crate) fn restore_dropped(&mut self) -> Result<(), SessionError> {
        for (name, ty, seeded) in std::mem::take(&mut self.dropped) {
            let t = match (&self.file, seeded) {
                _ if self.computed.contains_key(&name) => self.computed[&name].clone(),
                (_, true) => stand_in(&ty, self.seed, &name)?,
                (Some(f), false) => f.read(&name)?,
                (None, false) => return Err(SessionError::Missing("weights file")),
            };
            self.values.insert(name, t);
        }
        Ok(())
    }

    /// When the step was optimized: the seconds it took and whether the optimized step came
    /// from the on-disk cache ([`crate::cache`]).
    pub fn optimizer_run(&self) -> Option<(f64, bool)> {
        self.optimized
    }

    /// Names of the frozen weights read in place from the memory-mapped weights file (not
    /// held as tensors: [`Session::value`] does not return them).
    pub fn mapped_weights(&self) -> Vec<&str> {
        self.mapped.iter().map(|(n, _, _)| n.as_str()).collect()
    }

    /// The backend running the step.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What the backend reports about the prepared step (compile time, kernel cache, static
    /// memory plan); `None` for the interpreter.
    pub fn step_info(&self) -> Option<crate::PreparedInfo> {
        self.runner.info()
    }

    /// A value the session holds (weights, params, optimizer state), by name. Frozen weights
    /// the backend read in place or bound (packed once) and let go of are not held: `None`
    /// (until `forward` or `gradients` needs them again).
    pub fn value(&self, name: &str) -> Option<&Tensor> {
        self.values.get(name)
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    pub(crate) fn with_batch<T>(
        &mut self,
        batch: Vec<(&str, Tensor)>,
        f: impl FnOnce(&HashMap<String, Tensor>, &[MappedInput<'_>]) -> T,
    ) -> T {
        let names: Vec<String> = batch.iter().map(|(k, _)| k.to_string()).collect();
        for (k, v) in batch {
            self.values.insert(k.to_string(), v);
        }
        // One dropout seed per micro-batch (per step without accumulation).
        let k = self.program.train.accumulate.max(1);
        let seed = self
            .seed
            .wrapping_add((self.steps_done * k + self.micro) as u64) as i64;
        self.values
            .insert("dropout_seed".into(), Tensor::scalar_i64(seed));
        let mapped = mapped_inputs(self.file.as_ref(), &self.mapped);
        let r = f(&self.values, &mapped);
        for k in names.iter().map(String::as_str).chain(["dropout_seed"]) {
            self.values.remove(k);
        }
        r
    }

    /// The program's `@forward`.
    fn forward_fn(&self) -> Result<&Function, SessionError> {
        self.program
            .module
            .function("forward")
            .ok_or(SessionError::Missing("forward"))
    }

    /// Runs `f` (a function of this program, or one built from it) on the interpreter with
    /// the session's weights and trainable tensors.
    ///
    /// # Errors
    /// An input is missing or the run fails.
    pub fn run_function(&mut self, f: &Function) -> Result<Vec<(String, Tensor)>, SessionError> {
        self.restore_dropped()?;
        self.with_batch(Vec::new(), |v, m| run_with_copies(f, v, m))
    }

    /// Runs `@forward` on a batch and returns the logits.
    pub fn forward(&mut self, input_ids: &Tensor) -> Result<Tensor, SessionError> {
        self.forward_named(&[("input_ids", input_ids.clone())])
    }

    /// Runs `@forward` on a batch given by input name (`input_ids`, `attention_mask`,
    /// `pixel_values`, ...) and returns the logits.
    ///
    /// # Errors
    /// An input is missing or the run fails.
    pub fn forward_named(&mut self, batch: &[(&str, Tensor)]) -> Result<Tensor, SessionError> {
        self.restore_dropped()?;
        let forward = self.forward_fn()?.clone();
        let out = self.with_batch(batch.to_vec(), |v, m| run_with_copies(&forward, v, m))?;
        out.into_iter()
            .find(|(n, _)| n == "logits")
            .map(|(_, t)| t)
            .ok_or(SessionError::Missing("forward"))
    }

    /// Runs one training step on a batch (labels = the targets, `-100` where ignored).
    pub fn step(&mut self, input_ids: &Tensor, labels: &Tensor) -> Result<StepStats, SessionError> {
        self.step_group(&[(input_ids.clone(), labels.clone())])
    }

    /// Runs one optimizer step over the `train` block's `accumulate` micro-batches of
    /// `(input_ids, labels)`: each weighted by its share of the targets, so the loss is the
    /// mean over every target of the group, as Hugging Face's Trainer computes it.
    ///
    /// # Errors
    /// The group has another number of micro-batches, or a run fails.
    pub fn step_group(&mut self, group: &[(Tensor, Tensor)]) -> Result<StepStats, SessionError> {
        let named: Vec<crate::labeled::Batch> = group
            .iter()
            .map(|(ids, labels)| {
                vec![
                    ("input_ids".to_string(), ids.clone()),
                    ("labels".to_string(), labels.clone()),
                ]
            })
            .collect();
        self.step_group_named(&named)
    }

    /// Runs one optimizer step over the `train` block's `accumulate` micro-batches given by
    /// input name (see [`Session::step_named`]). For the causal-LM loss each weighs its share
    /// of the group's targets (see [`Session::step_group`]); for another objective, which is
    /// a mean over its micro-batch, each weighs the same.
    ///
    /// # Errors
    /// The group has another number of micro-batches, or a run fails.
    pub fn step_group_named(
        &mut self,
        group: &[crate::labeled::Batch],
    ) -> Result<StepStats, SessionError> {
        let k = self.program.train.accumulate.max(1);
        if group.len() != k {
            return Err(SessionError::Value(format!(
                "this training step accumulates {k} micro-batches, got {}",
                group.len()
            )));
        }
        if k == 1 {
            return self
                .step_batch(named(&group[0]), None, false)
                .map(|(s, _)| s);
        }
        let weights = batch_weights(&self.program, group);
        let (mut stats, mut loss) = (None, 0.0f64);
        for (i, (b, &w)) in group.iter().zip(&weights).enumerate() {
            self.micro = i;
            let (s, _) = self.step_batch(named(b), Some(w as f32), false)?;
            loss += w * f64::from(s.loss);
            stats = Some(s);
        }
        self.micro = 0;
        let mut s = stats.ok_or(SessionError::Missing("micro-batch"))?;
        s.loss = loss as f32;
        Ok(s)
    }

    /// [`Session::step`], also reporting where the step's time went, kernel kind by kernel
    /// kind (`None` from a backend that does not time its kernels, like the interpreter).
    pub fn step_profiled(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<(StepStats, Option<RunProfile>), SessionError> {
        self.step_inner(input_ids, labels, None, true)
    }

    /// One run of the step; `weight` is a micro-batch's `loss_weight` when accumulating
    /// (the optimizer step counts only after the last one).
    fn step_inner(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        weight: Option<f32>,
        profile: bool,
    ) -> Result<(StepStats, Option<RunProfile>), SessionError> {
        let batch = vec![("input_ids", input_ids.clone()), ("labels", labels.clone())];
        self.step_batch(batch, weight, profile)
    }

    /// One training step on a batch given by input name: the forward's data inputs (for a
    /// model that reads more than `input_ids`: `token_type_ids`, `attention_mask`,
    /// `pixel_values`, ...) and `labels`, of the type the step's objective reads.
    ///
    /// # Errors
    /// An input is missing or has another type, or the run fails.
    pub fn step_named(&mut self, batch: &[(&str, Tensor)]) -> Result<StepStats, SessionError> {
        if self.program.train.accumulate > 1 {
            return Err(SessionError::Value(
                "a named batch is one micro-batch: accumulation needs `step_group`".into(),
            ));
        }
        let batch = batch.iter().map(|(n, t)| (*n, t.clone())).collect();
        self.step_batch(batch, None, false).map(|(s, _)| s)
    }

    fn step_batch(
        &mut self,
        mut batch: Vec<(&str, Tensor)>,
        weight: Option<f32>,
        profile: bool,
    ) -> Result<(StepStats, Option<RunProfile>), SessionError> {
        let runner = std::mem::replace(&mut self.runner, Box::new(NoRunner));
        if let Some(w) = weight {
            batch.push(("loss_weight", Tensor::scalar_f32(w)));
        }
        let out = self.with_batch(batch, |v, m| {
            if profile {
                runner.run_mapped_profiled(v, m)
            } else {
                runner.run_mapped(v, m).map(|out| (out, None))
            }
        });
        self.runner = runner;
        let (out, run_profile) = out.map_err(SessionError::Backend)?;
        let mut stats = StepStats {
            step: self.steps_done + 1,
            loss: f32::NAN,
            grad_norm: f32::NAN,
            lr: f32::NAN,
        };
        for (name, t) in out {
            match name.as_str() {
                "loss" => stats.loss = scalar_f32(&t),
                "grad_norm" => stats.grad_norm = scalar_f32(&t),
                "lr" => stats.lr = scalar_f32(&t),
                _ => {
                    self.values.insert(name, t);
                }
            }
        }
        let k = self.program.train.accumulate.max(1);
        if weight.is_none() || self.micro + 1 == k {
            self.steps_done += 1;
        }
        Ok((stats, run_profile))
    }

    /// The loss and its gradient with respect to every trainable tensor, without updating
    /// anything (`@forward` + loss + backward).
    pub fn gradients(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<(f32, Vec<(String, Tensor)>), SessionError> {
        self.restore_dropped()?;
        let forward = self.forward_fn()?;
        let mut f = forward.clone();
        f.name = "gradients".into();
        f.outputs.clear();
        let logits = forward
            .output("logits")
            .ok_or(SessionError::Missing("forward"))?;
        let objective = self.program.module.function("loss");
        let ids_ty = objective
            .and_then(|l| l.input("labels"))
            .or_else(|| forward.input("input_ids"))
            .map(|i| i.ty.clone())
            .ok_or(SessionError::Missing("forward"))?;
        let params: Vec<(String, graft_ir::ValueId)> = f
            .inputs()
            .filter(|i| i.kind == InputKind::Param)
            .map(|i| (i.name.to_string(), i.value))
            .collect();
        let lab = f.add_input("labels", InputKind::Data, ids_ty, None);
        let penalty = self.program.module.function("penalty");
        let loss = graft_autodiff::training_loss(
            &mut graft_ir::Emitter::new(&mut f),
            logits,
            Some(lab),
            -100,
            objective,
            penalty,
        )?;
        let wrt: Vec<graft_ir::ValueId> = params.iter().map(|p| p.1).collect();
        let grads = graft_autodiff::grad(&mut f, loss, &wrt)?;
        f.add_output("loss", loss);
        for ((name, _), g) in params.iter().zip(grads) {
            f.add_output(format!("grad.{name}"), g);
        }
        let out = self.with_batch(
            vec![("input_ids", input_ids.clone()), ("labels", labels.clone())],
            |v, m| run_with_copies(&f, v, m),
        )?;
        let mut loss = f32::NAN;
        let mut grads = Vec::new();
        for (name, t) in out {
            match name.strip_prefix("grad.") {
                Some(p) => grads.push((p.to_string(), t)),
                None => loss = scalar_f32(&t),
            }
        }
        Ok((loss, grads))
    }

    /// Runs the step that was just taken again on the interpreter, unoptimized, from `state`
    /// (the trainable tensors and optimizer state as they were before it), and describes the
    /// first op whose value is not finite: `%i = op … at file:line:col: value`. `None` when
    /// every value is finite there.
    ///
    /// # Errors
    /// The step cannot be built or run on the interpreter.
    pub fn first_non_finite(
        &mut self,
        state: HashMap<String, Tensor>,
        batch: &crate::labeled::Batch,
    ) -> Result<Option<String>, SessionError> {
        self.restore_dropped()?;
        let forward = self.forward_fn()?;
        let step = train_step(forward, &step_config(&self.program))?;
        let after: Vec<(String, Tensor)> = state
            .into_iter()
            .filter_map(|(k, v)| self.values.insert(k.clone(), v).map(|old| (k, old)))
            .collect();
        self.steps_done = self.steps_done.saturating_sub(1);
        let mut batch: Vec<(&str, Tensor)> =
            batch.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let k = self.program.train.accumulate.max(1);
        if k > 1 {
            // The step's first micro-batch, at its share of a group of k like it.
            batch.push(("loss_weight", Tensor::scalar_f32(1.0 / k as f32)));
        }
        let found = self.with_batch(batch, |v, m| {
            if m.is_empty() {
                graft_interp::first_non_finite(&step, v).map_err(SessionError::from)
            } else {
                let all = crate::backend::with_copies(v, m).map_err(SessionError::Value)?;
                graft_interp::first_non_finite(&step, &all).map_err(SessionError::from)
            }
        });
        self.steps_done += 1;
        for (k, v) in after {
            self.values.insert(k, v);
        }
        let Some((i, value)) = found? else {
            return Ok(None);
        };
        let node = &step.nodes[i];
        let at = node.loc.map_or_else(
            || " (no source location: made by autodiff or the optimizer step)".to_string(),
            |l| {
                let file = self
                    .program
                    .module
                    .files
                    .get(l.file as usize)
                    .map_or("?", String::as_str);
                format!(" at {file}:{}:{}", l.line, l.col)
            },
        );
        Ok(Some(format!(
            "%{i} = {} : {}{at} is {value}",
            node.op.name(),
            node.ty
        )))
    }

    /// The trainable tensors, in declaration order.
    pub fn params(&self) -> Vec<(String, &Tensor)> {
        self.program
            .tensors
            .iter()
            .filter(|t| t.kind == DeclKind::Param)
            .filter_map(|t| self.values.get(&t.path).map(|v| (t.path.clone(), v)))
            .collect()
    }

    /// Replaces a trainable tensor's value (e.g. from a PEFT adapter file).
    pub fn set_param(&mut self, path: &str, value: Tensor) -> Result<(), SessionError> {
        let Some(t) = self
            .program
            .tensors
            .iter()
            .find(|t| t.path == path && t.kind == DeclKind::Param)
        else {
            let names: Vec<&str> = self
                .program
                .tensors
                .iter()
                .filter(|t| t.kind == DeclKind::Param)
                .map(|t| t.path.as_str())
                .collect();
            return Err(SessionError::Value(format!(
                "`{path}` is not a trainable tensor of this spec (it has: {})",
                names.join(", ")
            )));
        };
        if value.shape() != t.ty.shape.as_slice() {
            return Err(SessionError::Shape {
                name: path.to_string(),
                got: value.shape().to_vec(),
                want: t.ty.shape.clone(),
            });
        }
        self.values.insert(path.to_string(), value);
        Ok(())
    }
}

/// Runs `f` on the interpreter, with copies of the mapped inputs.
fn run_with_copies(
    f: &Function,
    values: &HashMap<String, Tensor>,
    mapped: &[MappedInput<'_>],
) -> Result<Vec<(String, Tensor)>, SessionError> {
    if mapped.is_empty() {
        return Ok(run(f, values)?);
    }
    let all = crate::backend::with_copies(values, mapped).map_err(SessionError::Value)?;
    Ok(run(f, &all)?)
}

/// A seeded stand-in for a weight when the spec names no weights file: N(0, 1/fan-in) for
/// matrices, ones for vectors (norm gains).
fn stand_in(ty: &TensorType, seed: u64, path: &str) -> Result<Tensor, SessionError> {
    let stream = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let data: Vec<f32> = if ty.rank() >= 2 {
        let std = 1.0 / (ty.shape[ty.rank() - 1] as f64).sqrt();
        (0..ty.numel())
            .map(|i| {
                graft_interp::random::normal_value(seed as i64, stream, i as u64, 0.0, std) as f32
            })
            .collect()
    } else {
        vec![1.0; ty.numel()]
    };
    Ok(Tensor::f32(ty.shape.clone(), data)?)
}

/// Quantizes a weight to NF4 and stores the inputs `@forward` reads: the codes under the
/// weight's path, its absmax (and nested scales) beside it.
fn quantize_into(
    values: &mut HashMap<String, Tensor>,
    path: &str,
    w: &Tensor,
    q: graft_frontend::QuantSpec,
) -> Result<(), SessionError> {
    let (block, nested) = (q.block, q.nested);
    let data = w
        .as_f32()
        .ok_or_else(|| SessionError::Quant(path.to_string(), "not f32".into()))?;
    let err = |e: graft_quant::QuantError| SessionError::Quant(path.to_string(), e.to_string());
    if q.format == graft_ir::QuantFormat::Int8 {
        let (codes, absmax) = graft_quant::quantize_int8(data, block).map_err(err)?;
        let blocks = absmax.len();
        values.insert(path.to_string(), Tensor::u8(w.shape().to_vec(), codes)?);
        values.insert(format!("{path}.absmax"), Tensor::f32(vec![blocks], absmax)?);
        return Ok(());
    }
    let unpack = |packed: &[u8]| -> Vec<u8> {
        (0..data.len())
            .map(|i| {
                if i % 2 == 0 {
                    packed[i / 2] >> 4
                } else {
                    packed[i / 2] & 0xF
                }
            })
            .collect()
    };
    let shape = w.shape().to_vec();
    let blocks = data.len().div_ceil(block);
    if nested == 0 {
        let (packed, absmax) = graft_quant::quantize_nf4(data, block).map_err(err)?;
        values.insert(path.to_string(), Tensor::u4(shape, unpack(&packed))?);
        values.insert(format!("{path}.absmax"), Tensor::f32(vec![blocks], absmax)?);
    } else {
        let (packed, n) = graft_quant::quantize_nf4_nested(data, block).map_err(err)?;
        values.insert(path.to_string(), Tensor::u4(shape, unpack(&packed))?);
        values.insert(format!("{path}.absmax"), Tensor::u8(vec![blocks], n.codes)?);
        let n2 = n.absmax2.len();
        values.insert(
            format!("{path}.nested_absmax"),
            Tensor::f32(vec![n2], n.absmax2)?,
        );
        values.insert(
            format!("{path}.nested_offset"),
            Tensor::f32(Vec::<usize>::new(), vec![n.offset])?,
        );
    }

    Ok(())
}

/// Stands in for the runner while it is borrowed during a step.
struct NoRunner;

impl Prepared for NoRunner {
    fn run(&self, _: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, String> {
        Err("the step runner is in use".into())
    }
}

/// Each batch's weight in a mean over `batches`: its share of the targets for the causal-LM
/// loss (a mean over target tokens), else an equal share (an objective's mean over its batch).
pub(crate) fn batch_weights(p: &Program, batches: &[crate::labeled::Batch]) -> Vec<f64> {
    let n = batches.len().max(1);
    if p.train.loss != "causal_lm" {
        return vec![1.0 / n as f64; batches.len()];
    }
    let targets: Vec<usize> = batches
        .iter()
        .map(|b| {
            b.iter()
                .find(|(k, _)| k == "labels")
                .map_or(0, |(_, l)| crate::data::targets(l))
        })
        .collect();
    let total = targets.iter().sum::<usize>().max(1);
    targets.iter().map(|&t| t as f64 / total as f64).collect()
}

/// A named batch as the runner binds it.
fn named(b: &crate::labeled::Batch) -> Vec<(&str, Tensor)> {
    b.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()
}
