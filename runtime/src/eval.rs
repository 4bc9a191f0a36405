//! Evaluation: the held-out loss and perplexity of a session's current parameters, computed
//! by an `@eval` function (the forward and its causal-LM loss, dropout off, no backward)
//! compiled on the session's backend like the training step; and loading trained tensors
//! (a PEFT adapter folder, or graft's `trainable.safetensors`) into a session.

use crate::Backend as _;
use crate::session::{Session, SessionError};
use graft_interp::Tensor;
use graft_ir::{Function, InputKind, Node, Op, ValueId};
use std::path::Path;

/// The mean held-out loss over some batches.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalStats {
    /// The mean loss (over target tokens for the causal-LM loss, over batches otherwise).
    pub loss: f64,
    /// exp(loss) for the causal-LM loss; NaN for another objective.
    pub perplexity: f64,
    /// Batches evaluated.
    pub batches: usize,
    /// The `train` block's `metrics`, by name, averaged like the loss.
    pub metrics: Vec<(String, f64)>,
}

impl EvalStats {
    /// What is printed after the loss: `  perplexity 2.457` (when there is one), then
    /// `  accuracy 0.8750` for each metric.
    pub fn metrics_text(&self) -> String {
        let ppl = if self.perplexity.is_finite() {
            format!("  perplexity {:.3}", self.perplexity)
        } else {
            String::new()
        };
        ppl + &self
            .metrics
            .iter()
            .map(|(n, x)| format!("  {n} {x:.4}"))
            .collect::<String>()
    }
}

/// `@eval` for a forward: its nodes with every `dropout` replaced by its input (evaluation
/// runs the model deterministically, as `model.eval()` does), then the causal-LM loss of the
/// logits against a `labels` input, the only output.
///
/// # Errors
/// The forward has no logits or input ids.
pub fn eval_function(forward: &Function) -> Result<Function, SessionError> {
    objective_eval_function(forward, None, &[])
}

/// `@eval` with the spec's objective: `objective` (`@loss`, its reference forward without
/// dropout too) inlined on the logits, or the causal-LM loss when `None`; and each metric
/// (`@metric_<name>`, output `value`) inlined on them as output `metric.<name>`.
///
/// # Errors
/// The forward has no logits or input ids, or the objective or a metric does not fit it.
pub fn objective_eval_function(
    forward: &Function,
    objective: Option<&Function>,
    metrics: &[&Function],
) -> Result<Function, SessionError> {
    let (mut f, logits) = inference_copy(forward, "eval")?;
    let loss = match objective {
        None => {
            let ids_ty = forward
                .input("input_ids")
                .ok_or(SessionError::Missing("forward"))?
                .ty
                .clone();
            let labels = f.add_input("labels", InputKind::Data, ids_ty, None);
            graft_autodiff::causal_lm_loss(
                &mut graft_ir::Emitter::new(&mut f),
                logits,
                labels,
                -100,
            )?
        }
        Some(obj) => {
            let (obj, _) = without_dropout(obj);
            let outs = f
                .inline(&obj, |name, _| (name == "logits").then_some(logits))
                .map_err(|e| SessionError::Value(e.to_string()))?;
            outs.into_iter()
                .find(|(n, _)| n == "loss")
                .map(|(_, v)| v)
                .ok_or(SessionError::Missing("loss"))?
        }
    };
    f.add_output("loss", loss);
    for m in metrics {
        let (m, _) = without_dropout(m);
        let outs = f
            .inline(&m, |n, _| (n == "logits").then_some(logits))
            .map_err(|e| SessionError::Value(e.to_string()))?;
        let value = outs
            .into_iter()
            .find(|(n, _)| n == "value")
            .map(|(_, v)| v)
            .ok_or(SessionError::Missing("a metric's value"))?;
        let name = m.name.strip_prefix("metric_").unwrap_or(&m.name);
        f.add_output(format!("metric.{name}"), value);
    }
    graft_ir::verify_function(&f, usize::MAX).map_err(|e| SessionError::Value(e.to_string()))?;
    Ok(f)
}

/// The program's metric functions (`@metric_<name>`), in the `train` block's order.
/// `@eval` of a program, before optimization: its objective (or the causal-LM loss) and its
/// metrics on the forward, dropout off. (`graft build` compiles exactly this.)
///
/// # Errors
/// The program has no forward, or its objective does not fit it.
pub fn program_eval_function(p: &graft_frontend::Program) -> Result<Function, SessionError> {
    let forward = p
        .module
        .function("forward")
        .ok_or(SessionError::Missing("forward"))?;
    objective_eval_function(forward, p.module.function("loss"), &metric_functions(p))
}

fn metric_functions(p: &graft_frontend::Program) -> Vec<&Function> {
    p.train
        .metrics
        .iter()
        .filter_map(|m| p.module.function(&format!("metric_{m}")))
        .collect()
}

/// `@logits`: the forward with dropout removed (inference), `logits` its only output.
///
/// # Errors
/// The forward has no logits.
pub fn logits_function(forward: &Function) -> Result<Function, SessionError> {
    let (mut f, logits) = inference_copy(forward, "logits")?;
    f.add_output("logits", logits);
    graft_ir::verify_function(&f, usize::MAX).map_err(|e| SessionError::Value(e.to_string()))?;
    Ok(f)
}

/// The forward's nodes under a new name, each dropout replaced by its input, with no
/// outputs; and where its logits are.
fn inference_copy(forward: &Function, name: &str) -> Result<(Function, ValueId), SessionError> {
    let logits = forward
        .output("logits")
        .ok_or(SessionError::Missing("forward"))?;
    let (mut f, map) = without_dropout(forward);
    f.name = name.to_string();
    f.outputs.clear();
    Ok((f, map[logits.index()]))
}

/// `f` with every dropout replaced by its input (what `model.eval()` runs), outputs kept;
/// and where each old value went.
pub fn without_dropout(f: &Function) -> (Function, Vec<ValueId>) {
    let mut g = Function::new(f.name.clone());
    let mut map: Vec<ValueId> = Vec::with_capacity(f.nodes.len());
    for node in &f.nodes {
        let args: Vec<ValueId> = node.args.iter().map(|a| map[a.index()]).collect();
        if let Op::Dropout { .. } = node.op {
            map.push(args[0]);
            continue;
        }
        map.push(ValueId(g.nodes.len() as u32));
        g.nodes.push(Node {
            op: node.op.clone(),
            args,
            ty: node.ty.clone(),
            loc: node.loc,
        });
    }
    for o in &f.outputs {
        g.add_output(o.name.clone(), map[o.value.index()]);
    }
    (g, map)
}

impl Session {
    /// Prepares `@eval` on `backend` (optimized first when `optimize`), so that
    /// [`Session::eval_loss`] runs compiled code. Without it, evaluation runs on the
    /// interpreter.
    ///
    /// # Errors
    /// The function cannot be built, optimized or prepared.
    pub fn prepare_eval(
        &mut self,
        backend: &dyn crate::Backend,
        optimize: bool,
    ) -> Result<(), SessionError> {
        let mut f = program_eval_function(&self.program)?;
        if optimize {
            f = crate::cache::optimized_for(backend, &self.program.module.files, &f)
                .map_err(SessionError::Value)?
                .0;
        }
        let runner = backend.prepare(&f).map_err(SessionError::Backend)?;
        self.eval = Some((f, runner));
        Ok(())
    }

    /// The loss of one batch under the current parameters (no update).
    ///
    /// # Errors
    /// The run failed.
    pub fn eval_loss(&mut self, input_ids: &Tensor, labels: &Tensor) -> Result<f32, SessionError> {
        self.eval_loss_named(&vec![
            ("input_ids".to_string(), input_ids.clone()),
            ("labels".to_string(), labels.clone()),
        ])
    }

    /// The loss of one batch given by input name under the current parameters (no update).
    ///
    /// # Errors
    /// The run failed.
    pub fn eval_loss_named(&mut self, batch: &crate::labeled::Batch) -> Result<f32, SessionError> {
        self.eval_outputs(batch)?
            .into_iter()
            .find(|(n, _)| n == "loss")
            .map(|(_, x)| x)
            .ok_or(SessionError::Missing("eval"))
    }

    /// `@eval`'s scalar outputs on one batch: `loss` and each `metric.<name>`.
    fn eval_outputs(
        &mut self,
        batch: &crate::labeled::Batch,
    ) -> Result<Vec<(String, f32)>, SessionError> {
        // Weights the training step's backend let go of after binding them.
        self.restore_dropped()?;
        if self.eval.is_none() {
            let f = program_eval_function(&self.program)?;
            let runner = crate::Interpreter
                .prepare(&f)
                .map_err(SessionError::Backend)?;
            self.eval = Some((f, runner));
        }
        let eval = self.eval.take();
        let out = match &eval {
            Some((_, runner)) => self.with_batch(
                batch.iter().map(|(n, t)| (n.as_str(), t.clone())).collect(),
                |v, m| runner.run_mapped(v, m),
            ),
            None => Err("no eval function".into()),
        };
        self.eval = eval;
        let out = out.map_err(SessionError::Backend)?;
        Ok(out
            .into_iter()
            .filter_map(|(n, t)| t.as_f32().and_then(|d| d.first().copied()).map(|x| (n, x)))
            .collect())
    }

    /// The loss and perplexity over `batches` of `(input_ids, labels)`: the mean over
    /// every target token (each batch's mean weighted by its targets), and its exp.
    ///
    /// # Errors
    /// A batch failed.
    pub fn evaluate(
        &mut self,
        batches: impl IntoIterator<Item = (Tensor, Tensor)>,
    ) -> Result<EvalStats, SessionError> {
        let named: Vec<crate::labeled::Batch> = batches
            .into_iter()
            .map(|(ids, labels)| vec![("input_ids".into(), ids), ("labels".into(), labels)])
            .collect();
        self.evaluate_named(&named)
    }

    /// [`Session::evaluate`] over batches given by input name, each weighing what it weighs
    /// in training (its share of the targets for the causal-LM loss, an equal share for an
    /// objective that is a mean over its batch), with the `train` block's metrics.
    ///
    /// # Errors
    /// A batch failed.
    pub fn evaluate_named(
        &mut self,
        batches: &[crate::labeled::Batch],
    ) -> Result<EvalStats, SessionError> {
        let weights = crate::session::batch_weights(&self.program, batches);
        let mut loss = 0.0f64;
        let mut metrics: Vec<(String, f64)> = (self.program.train.metrics.iter())
            .map(|m| (m.clone(), 0.0))
            .collect();
        for (b, w) in batches.iter().zip(weights) {
            for (name, x) in self.eval_outputs(b)? {
                let x = w * f64::from(x);
                match name.strip_prefix("metric.") {
                    None if name == "loss" => loss += x,
                    None => {}
                    Some(m) => {
                        if let Some((_, sum)) = metrics.iter_mut().find(|(n, _)| n == m) {
                            *sum += x;
                        }
                    }
                }
            }
        }
        // Perplexity is the causal-LM loss's; another objective has none.
        let perplexity = if self.program.train.loss == "causal_lm" {
            loss.exp()
        } else {
            f64::NAN
        };
        Ok(EvalStats {
            loss,
            perplexity,
            batches: batches.len(),
            metrics,
        })
    }

    /// The value of a frozen tensor that `@init` computes (a `shared` declaration), by path.
    fn computed_buffer(&self, path: &str) -> Option<&Tensor> {
        self.program
            .tensors
            .iter()
            .find(|t| t.path == path && t.kind == graft_frontend::DeclKind::Buffer)
            .and_then(|_| self.value(path))
    }

    /// Sets the trainable tensors from a folder of trained tensors: a PEFT adapter
    /// (`adapter_config.json` + `adapter_model.safetensors`, as PEFT or `graft train --save`
    /// writes it) or graft's `trainable.safetensors`. Returns how many were set and the
    /// trainable tensors the folder did not have (they keep their initial values).
    ///
    /// # Errors
    /// The folder has neither, a file is damaged, or a tensor is not a trainable tensor of
    /// this spec or has another shape.
    pub fn load_trained(&mut self, dir: &Path) -> Result<(usize, Vec<String>), SessionError> {
        let tensors = if dir.join("adapter_model.safetensors").is_file() {
            let (config, mut tensors) =
                crate::load_adapter(dir).map_err(|e| SessionError::Value(e.to_string()))?;
            let full = |path: &str| {
                self.program
                    .tensors
                    .iter()
                    .find(|t| t.path == path)
                    .map(|t| t.ty.shape.clone())
            };
            let at = |e: crate::PeftError| SessionError::Value(format!("{}: {e}", dir.display()));
            crate::peft_storage::restore_cut(&self.program.adapters, &config, &mut tensors, full)
                .map_err(at)?;
            crate::peft_storage::unstack(&self.program.adapters, &mut tensors, full).map_err(at)?;
            if let Ok(spec) = crate::adapter_config(
                &self.program.adapters,
                crate::peft::task_type(&self.program).as_deref(),
            ) {
                let diff = crate::peft::config_mismatches(&spec, &config);
                if !diff.is_empty() {
                    return Err(SessionError::Value(format!(
                        "the adapter in {} was made with other settings than the spec's: {}",
                        dir.display(),
                        diff.join("; ")
                    )));
                }
            }
            tensors
        } else if dir.join("trainable.safetensors").is_file() {
            let file = crate::WeightsFile::open(&dir.join("trainable.safetensors"))?;
            let mut out = Vec::new();
            for name in file.entries().keys() {
                out.push((name.clone(), file.read(name)?));
            }
            out
        } else {
            return Err(SessionError::Value(format!(
                "{} has no adapter_model.safetensors or trainable.safetensors",
                dir.display()
            )));
        };
        let n = tensors.len();
        let mut set = std::collections::HashSet::new();
        for (path, t) in tensors {
            // A frozen tensor the spec computes itself (a `shared` projection PEFT saved too)
            // must be the one this spec draws; it is not set.
            if let Some(ours) = self.computed_buffer(&path) {
                if ours.shape() != t.shape() || rel_diff(ours, &t) > 1e-6 {
                    return Err(SessionError::Value(format!(
                        "{}: `{path}` is not the tensor this spec computes (drawn with another seed?)",
                        dir.display()
                    )));
                }
                continue;
            }
            self.set_param(&path, t)
                .map_err(|e| SessionError::Value(format!("{}: {e}", dir.display())))?;
            set.insert(path);
        }
        let missing = self
            .params()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !set.contains(p))
            .collect();
        Ok((n, missing))
    }
}

/// `graft eval`: the held-out loss of a spec's model with the trained tensors in `adapter`
/// (or the initial ones), over every batch of `data` (default: the `train` block's
/// `eval_data`, else its `data`; relative to the spec's folder), in file order. With
/// `logits_out`, the first batch's `input_ids` and `logits` are written there
/// (safetensors).
///
/// # Errors
/// A file cannot be used, or the session fails.
pub fn evaluate_spec(
    spec: &Path,
    program: graft_frontend::Program,
    session_opts: &crate::SessionOptions,
    adapter: Option<&Path>,
    data: Option<&Path>,
    logits_out: Option<&Path>,
) -> Result<EvalStats, SessionError> {
    let dir = spec.parent().unwrap_or(Path::new("."));
    let data = match data {
        Some(d) => d.to_path_buf(),
        None => dir.join(
            program
                .train
                .eval_data
                .as_ref()
                .or(program.train.data.as_ref())
                .ok_or_else(|| {
                    SessionError::Value(
                        "no data to evaluate on: pass --data, or name `eval_data` or `data` in \
                         the `train` block"
                            .into(),
                    )
                })?,
        ),
    };
    let value = |e: String| SessionError::Value(e);
    let tok = crate::data::tokenizer(&program, dir).map_err(value)?;
    let data_error = |e: crate::DataError| value(e.to_string());
    let all: Vec<crate::labeled::Batch> = if crate::labeled::reads_text(&program) {
        let (mut b, _) =
            crate::data::load(&program, &data, tok.as_ref(), false, false).map_err(data_error)?;
        (0..b.per_epoch())
            .map(|_| {
                let (ids, labels) = b.next_batch();
                vec![("input_ids".into(), ids), ("labels".into(), labels)]
            })
            .collect()
    } else {
        let cx = crate::labeled::context(&program, tok.as_ref());
        let inputs = crate::labeled::batch_inputs(&program);
        let (mut b, _) = crate::labeled::LabeledBatches::load(&data, inputs, &cx, None, false)
            .map_err(data_error)?;
        (0..b.per_epoch()).map(|_| b.next_batch()).collect()
    };
    let weights = match &program.weights {
        Some((path, _)) => Some(crate::WeightsFile::open(path)?),
        None => None,
    };
    crate::memory::check_fits(&program).map_err(SessionError::Value)?;
    let seed = program.train.seed;
    let mut session = Session::with_options(program, weights.as_ref(), seed, session_opts)?;
    if let Some(a) = adapter {
        session.load_trained(a)?;
    }
    session.prepare_eval(session_opts.backend, session_opts.optimize)?;
    if let (Some(out), Some(first)) = (logits_out, all.first()) {
        // The first batch's logits, on the interpreter (the oracle), for comparing with
        // another implementation (scripts/peft_roundtrip.py).
        let batch: Vec<(&str, Tensor)> =
            first.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let logits = session.forward_named(&batch)?;
        let mut tensors: Vec<(String, &Tensor)> = first
            .iter()
            .filter(|(n, _)| n != "labels")
            .map(|(n, t)| (n.clone(), t))
            .collect();
        tensors.push(("logits".to_string(), &logits));
        let bytes = crate::weights::to_safetensors(&tensors).map_err(value)?;
        crate::write_atomic(out, &bytes).map_err(|e| value(e.to_string()))?;
    }
    session.evaluate_named(&all)
}

/// max |a − b| / max |b| (0 when b is all zero and a equals it).
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b
        .iter()
        .fold(0f64, |m, x| m.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max)
        / scale
}
