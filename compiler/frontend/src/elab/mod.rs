//! Elaboration: from the AST of a spec and its imports to the IR.
//!
//! 1. Collect every definition (`fn`, `module`, `adapter`, `const`) into one namespace.
//! 2. Instantiate the spec's model: run module bodies at compile time (loops unrolled, `if`s
//!    resolved), giving a tree of instances with hierarchical paths and declared tensors.
//! 3. Apply `quantize` clauses and `adapt` rules to the instances their targets match.
//! 4. Build the IR: `forward` (the root's forward over the batch inputs) and `init` (every
//!    trainable param's initializer, from the frozen weights and a seed).

mod builtins;
mod eval;
mod hf_config;
mod instance;
mod merge;
mod objective;
mod probe;
mod step_hooks;
pub mod target;
pub mod train;
pub mod value;

use crate::ast::*;
use crate::diag::Diagnostic;
use crate::load::Loaded;
use graft_ir::{Function, InputKind, Loc, Module, Op, TensorType, ValueId};
pub use probe::{PROBE_SIZES, Probe, check_library};
use std::collections::HashMap;
use std::path::PathBuf;
pub use train::{Optimizer, Schedule, TrainConfig};
use value::{DeclId, Env, InstId, Value};

/// Deepest call nesting allowed while elaborating (graft functions may not recurse forever).
const MAX_DEPTH: usize = 64;
/// Iterations one compile-time loop may run (the largest models have about a hundred layers).
const MAX_LOOP: u64 = 100_000;
/// Compile-time loop iterations an elaboration may run in all.
const MAX_ITERATIONS: u64 = 10_000_000;

/// Whether a declared tensor is frozen or trainable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    /// Frozen, loaded from the weights file.
    Weight,
    /// Trainable, initialized by the `init` function.
    Param,
    /// Frozen, computed by the `init` function (a `shared` tensor).
    Buffer,
    /// Training state of an adapter's `after_step`: zero before the first step, kept in
    /// checkpoints, never in the adapter file.
    State,
}

/// How a frozen weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantSpec {
    /// The format.
    pub format: graft_ir::QuantFormat,
    /// Elements per absmax block.
    pub block: usize,
    /// Block size of the double quantization of absmax; 0 for none.
    pub nested: usize,
}

/// A declared weight or param.
#[derive(Clone, Debug)]
pub struct Decl<'a> {
    /// Full path, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub path: String,
    /// Frozen or trainable.
    pub kind: DeclKind,
    /// Its type.
    pub ty: TensorType,
    /// Where it is declared.
    pub span: Span,
    /// Its doc comment.
    pub doc: Vec<String>,
    /// The initializer and the scope it is evaluated in (params only).
    pub init: Option<(&'a Expr, Env)>,
    /// Quantized storage (frozen weights only).
    pub quant: Option<QuantSpec>,
    /// A frozen weight's new value (an adapter's `replace`), with its scope and the span of
    /// the `replace` member.
    pub replace: Option<(&'a Expr, Env, Span)>,
}

/// A module instance in the model tree.
#[derive(Clone, Debug)]
pub struct Instance<'a> {
    /// Full path (`model.layers.0.mlp`); empty for the root.
    pub path: String,
    /// The module definition.
    pub def: &'a ModuleDef,
    /// Parameters and members, by name.
    pub members: HashMap<String, Value>,
    /// Its forward.
    pub forward: Option<&'a FnDef>,
    /// Marked `output`.
    pub output: bool,
    /// Adapters, innermost first.
    pub adapters: Vec<AdapterInst<'a>>,
    /// The PEFT task type its `peft "TASK" {}` declares (`SEQ_CLS`, `CAUSAL_LM`, ...).
    pub task: Option<String>,
    /// Where it was declared.
    pub span: Span,
}

/// An adapter attached to an instance.
#[derive(Clone, Debug)]
pub struct AdapterInst<'a> {
    /// The adapter definition.
    pub def: &'a ModuleDef,
    /// Its parameters and members, plus the wrapped module's names it sees.
    pub members: HashMap<String, Value>,
    /// Its forward (`None`: the wrapped forward unchanged).
    pub forward: Option<&'a FnDef>,
    /// Its `peft` declaration, evaluated for this module.
    pub peft: Option<PeftExport>,
    /// Its `penalty` terms, added to the training loss.
    pub penalties: Vec<&'a Expr>,
    /// Its `after_step`, run after every optimizer step.
    pub after_step: Option<&'a FnDef>,
    /// Its `peft_mask` declarations.
    pub masks: Vec<PeftMask>,
    /// Its `peft_stack` declarations.
    pub stacks: Vec<PeftStack>,
}

/// A config value from a `peft` declaration.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<ConfigValue>),
}

/// How an adapter on one module is described in PEFT's `adapter_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftExport {
    /// PEFT's `peft_type` (`LORA`, `IA3`, ...).
    pub peft_type: String,
    /// Config fields for this module, in declaration order.
    pub fields: Vec<(String, ConfigValue)>,
}

/// A PEFT folder's cut tensors (an adapter's `peft_mask`): when the config's `field` maps
/// `key` (a tensor path) to a list of bools, each of `cut` (path, axis) is stored with only the
/// indices that are true along that axis.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftMask {
    /// The config field (`rank_pattern`).
    pub field: String,
    /// The path that keys the mask in it.
    pub key: String,
    /// The cut tensors: path and axis.
    pub cut: Vec<(String, usize)>,
}

/// Params PEFT stores as one root tensor (an adapter's `peft_stack`): the tensor at `key` is
/// every instance's `parts`, concatenated along `axis` in instance order (the order of
/// [`Program::adapters`]) and in this order within one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftStack {
    /// The PEFT key (a root-level name, like `prompt_embeddings`).
    pub key: String,
    /// The axis the parts are concatenated along.
    pub axis: usize,
    /// This instance's parts: param paths.
    pub parts: Vec<String>,
}

/// One adapter applied to one module.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterRecord {
    /// The adapted module's path.
    pub module_path: String,
    /// The adapter's name in graft.
    pub adapter: String,
    /// Its PEFT description, if it declares one.
    pub peft: Option<PeftExport>,
    /// How PEFT may store some of its tensors cut (`peft_mask`).
    pub masks: Vec<PeftMask>,
    /// Which of its tensors PEFT stores stacked with other instances' (`peft_stack`).
    pub stacks: Vec<PeftStack>,
}

/// A tensor the compiled program reads or trains, as reported to users and the runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Full path.
    pub path: String,
    /// Frozen or trainable.
    pub kind: DeclKind,
    /// Logical type.
    pub ty: TensorType,
    /// Quantized storage, if any.
    pub quant: Option<QuantSpec>,
    /// Read from the weights file (frozen weights, and unfrozen ones as their start value).
    pub from_weights: bool,
    /// `file:line:col` of the declaration.
    pub declared_at: String,
}

/// The result of compiling a spec.
#[derive(Clone, Debug)]
pub struct Program {
    /// The IR: `forward` and `init`.
    pub module: Module,
    /// Every weight and param.
    pub tensors: Vec<TensorInfo>,
    /// The model's name in the spec.
    pub model_name: String,
    /// The weights file, resolved against the spec's folder.
    pub weights: Option<(PathBuf, Span)>,
    /// The Hugging Face folder the model came from (`model m = kind from "folder"`), where
    /// its tokenizer is looked for.
    pub model_dir: Option<PathBuf>,
    /// Training settings.
    pub train: TrainConfig,
    /// Every adapter applied, per module, in application order.
    pub adapters: Vec<AdapterRecord>,
    /// The model's PEFT task type, as its root module declares it (`peft "SEQ_CLS" {}`).
    pub peft_task: Option<String>,
    /// Non-fatal findings.
    pub warnings: Vec<Diagnostic>,
}

/// A global definition.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Def<'a> {
    Fn(&'a FnDef),
    Module(&'a ModuleDef),
    Const(&'a ConstItem),
}

impl Def<'_> {
    fn span(&self) -> Span {
        match self {
            Def::Fn(f) => f.name.span,
            Def::Module(m) => m.name.span,
            Def::Const(c) => c.name.span,
        }
    }
}

/// The function under construction.
pub(crate) struct FnBuilder {
    func: Function,
    /// The source span each value came from, parallel to `func.nodes`.
    origins: Vec<Span>,
    /// Inputs already created, by decl.
    decl_inputs: HashMap<DeclId, ValueId>,
    /// Whether this is the `init` function (all decls read as frozen inputs).
    is_init: bool,
}

/// The elaborator's state for one compilation.
pub(crate) struct Elaborator<'a> {
    loaded: &'a Loaded,
    defs: HashMap<String, Def<'a>>,
    consts: HashMap<String, Value>,
    instances: Vec<Instance<'a>>,
    decls: Vec<Decl<'a>>,
    fb: Option<FnBuilder>,
    module: Module,
    depth: usize,
    /// Type and path of the param whose initializer is being evaluated.
    init_target: Option<(TensorType, String)>,
    stream: u64,
    batch: i64,
    seq: i64,
    /// `batch` and `seq` for the IR instead of the `train` block's (see [`elaborate_for`]).
    shape: Option<(usize, usize)>,
    /// Also build `@merge` ([`elaborate_merged`]).
    merge: bool,
    /// Compile-time loop iterations run so far.
    iterations: u64,
    warnings: Vec<Diagnostic>,
    /// While `@after_step` is built: what `grad` and `across` read.
    after: Option<step_hooks::AfterCx>,
    /// Where the `train` block names a loss function (not `causal_lm`), and the settings it
    /// passes: `@loss` is built.
    loss_at: Option<(Span, &'a [crate::ast::Arg])>,
    /// The `train` block's `metrics`: each function's name, where it is named, its settings.
    metrics_at: Vec<(String, Span, &'a [crate::ast::Arg])>,
    /// While the reference forward is built: every instance runs without its adapters.
    adapters_off: bool,
    /// The model's root instance and where the spec declares it, once `@forward` is built.
    root: Option<(InstId, Span)>,
}

/// Compiles a loaded spec into a [`Program`].
pub fn elaborate(loaded: &Loaded) -> Result<Program, Diagnostic> {
    elaborate_shaped(loaded, None)
}

/// [`elaborate`] with `batch` sequences of `seq` tokens in place of the `train` block's
/// (generation runs the forward on one sequence as long as the prompt and the reply).
pub fn elaborate_for(loaded: &Loaded, batch: usize, seq: usize) -> Result<Program, Diagnostic> {
    elaborate_shaped(loaded, Some((batch.max(1), seq.max(1))))
}

/// [`elaborate`], with a third function `@merge`: every adapted `linear`'s weights with its
/// adapters folded in (see `merge.rs`), for `graft export --merged`.
pub fn elaborate_merged(loaded: &Loaded) -> Result<Program, Diagnostic> {
    elaborate_with(loaded, None, true)
}

fn elaborate_shaped(loaded: &Loaded, shape: Option<(usize, usize)>) -> Result<Program, Diagnostic> {
    elaborate_with(loaded, shape, false)
}

fn elaborate_with(
    loaded: &Loaded,
    shape: Option<(usize, usize)>,
    merge: bool,
) -> Result<Program, Diagnostic> {
    let mut el = Elaborator::new(loaded, shape, merge);
    el.collect_defs()?;
    el.run()
}

impl<'a> Elaborator<'a> {
    fn new(loaded: &'a Loaded, shape: Option<(usize, usize)>, merge: bool) -> Elaborator<'a> {
        Elaborator {
            loaded,
            defs: HashMap::new(),
            consts: HashMap::new(),
            instances: Vec::new(),
            decls: Vec::new(),
            fb: None,
            module: Module::default(),
            depth: 0,
            init_target: None,
            stream: 0,
            batch: 1,
            seq: 16,
            shape,
            merge,
            iterations: 0,
            warnings: Vec::new(),
            after: None,
            loss_at: None,
            metrics_at: Vec::new(),
            adapters_off: false,
            root: None,
        }
    }

    fn collect_defs(&mut self) -> Result<(), Diagnostic> {
        for f in &self.loaded.files {
            for item in &f.items {
                let (name, def) = match item {
                    Item::Fn(d) => (&d.name, Def::Fn(d)),
                    Item::Module(d) => (&d.name, Def::Module(d)),
                    Item::Const(d) => (&d.name, Def::Const(d)),
                    _ => continue,
                };
                if builtins::is_builtin(&name.name) {
                    return Err(Diagnostic::error(
                        name.span,
                        format!("`{}` is a built-in and cannot be redefined", name.name),
                        "defined here",
                    )
                    .with_help("choose another name"));
                }
                if let Some(prev) = self.defs.get(&name.name) {
                    return Err(Diagnostic::error(
                        name.span,
                        format!("`{}` is defined twice", name.name),
                        "second definition",
                    )
                    .with_label(prev.span(), "first definition"));
                }
                self.defs.insert(name.name.clone(), def);
            }
        }
        // Constants are evaluated once, in definition order.
        for f in &self.loaded.files {
            for item in &f.items {
                if let Item::Const(c) = item {
                    let mut env = Env::new(HashMap::new());
                    let v = self.eval(&c.value, &mut env)?;
                    self.consts.insert(c.name.name.clone(), v);
                }
            }
        }
        Ok(())
    }

    fn entry_items(&self) -> Vec<&'a Item> {
        let loaded: &'a Loaded = self.loaded;
        loaded
            .files
            .iter()
            .filter(|f| f.file == loaded.entry)
            .flat_map(|f| f.items.iter())
            .collect()
    }

    fn run(mut self) -> Result<Program, Diagnostic> {
        let entry_file = self.loaded.sources.file(self.loaded.entry);
        let entry_span = Span {
            file: self.loaded.entry,
            start: 0,
            end: 0,
        };

        // The train block first: batch and sequence sizes shape the IR.
        let items = self.entry_items();
        let mut train_blocks = items.iter().filter_map(|i| {
            if let Item::Train(t) = i {
                Some(t)
            } else {
                None
            }
        });
        let train = match train_blocks.next() {
            Some(t) => {
                if let Some(second) = train_blocks.next() {
                    return Err(Diagnostic::error(
                        second.span,
                        "a spec has one `train` block",
                        "second `train` block",
                    )
                    .with_label(t.span, "first one"));
                }
                self.train_config(t)?
            }
            None => TrainConfig::default(),
        };
        let mut train = train;
        if let Some((b, s)) = self.shape {
            (train.batch, train.seq) = (b, s);
        }
        self.batch = train.batch as i64;
        self.seq = train.seq as i64;

        let mut models = items.iter().filter_map(|i| {
            if let Item::Model(m) = i {
                Some(m)
            } else {
                None
            }
        });
        let Some(model) = models.next() else {
            let end = entry_file.text.len() as u32;
            return Err(Diagnostic::error(Span { start: end, end, ..entry_span }, "this file declares no model", "expected a `model` item")
                .with_help("a spec needs e.g. `model base = llama(vocab: 256, hidden: 64, layers: 2, heads: 4, ffn: 128)`; library files are checked through a spec that uses them"));
        };
        if let Some(second) = models.next() {
            return Err(Diagnostic::error(
                second.name.span,
                "a spec declares one model",
                "second model",
            )
            .with_label(model.name.span, "first model"));
        }

        let base = entry_file
            .disk_path
            .as_ref()
            .and_then(|p| p.parent())
            .map(PathBuf::from)
            .unwrap_or_default();
        let root = self.instantiate_model(model, &base)?;
        for q in &model.quantize {
            self.apply_quantize(root, q)?;
        }
        for item in &items {
            if let Item::Adapt(a) = item {
                if a.model.name != model.name.name {
                    return Err(Diagnostic::error(
                        a.model.span,
                        format!("unknown model `{}`", a.model.name),
                        "not declared in this spec",
                    )
                    .with_help(format!("the model is called `{}`", model.name.name)));
                }
                for rule in &a.rules {
                    self.apply_adapt_rule(rule)?;
                }
            }
        }

        let forward = self.build_forward(root, model)?;
        let init = self.build_init()?;
        self.module.functions = vec![forward, init];
        let penalty = self.build_penalty()?;
        let after_step = self.build_after_step()?;
        let loss = self.build_loss(&train.loss)?;
        let metrics = self.build_metrics()?;
        self.module.functions.extend(
            penalty
                .into_iter()
                .chain(after_step)
                .chain(loss)
                .chain(metrics),
        );
        if self.merge {
            let merge = self.build_merge()?;
            self.module.functions.push(merge);
        }
        self.warn_unused_params();

        let weights = match (&model.weights, &model.from) {
            (Some(w), _) => Some((base.join(&w.value), w.span)),
            (None, Some(from)) => Some((
                hf_config::weights(from, &hf_config::folder(from, &base))?,
                from.span,
            )),
            (None, None) => None,
        };
        for (g, span) in &train.param_groups {
            let mut params = self.decls.iter().filter(|d| d.kind == DeclKind::Param);
            if params.clone().any(|d| g.matches(&d.path)) {
                continue;
            }
            // An example of what a group can name: a param's last two components.
            let help = match params.next() {
                Some(p) => {
                    let mut last: Vec<&str> = p.path.rsplit('.').take(2).collect();
                    last.reverse();
                    format!(
                        "a group names a param path or its last components, e.g. `{}`",
                        last.join(".")
                    )
                }
                None => "the spec has no trainable tensors".into(),
            };
            return Err(Diagnostic::error(
                *span,
                format!("`{}` names no trainable tensor", g.pattern),
                "matches nothing",
            )
            .with_help(help));
        }
        let tensors = self
            .decls
            .iter()
            .map(|d| TensorInfo {
                path: d.path.clone(),
                kind: d.kind,
                ty: d.ty.clone(),
                quant: d.quant,
                from_weights: d.kind == DeclKind::Weight
                    || (d.kind != DeclKind::State && d.init.is_none()),
                declared_at: self.loaded.sources.describe(d.span),
            })
            .collect();
        let adapters = self
            .instances
            .iter()
            .flat_map(|i| {
                i.adapters.iter().map(move |a| AdapterRecord {
                    module_path: i.path.clone(),
                    adapter: a.def.name.name.clone(),
                    peft: a.peft.clone(),
                    masks: a.masks.clone(),
                    stacks: a.stacks.clone(),
                })
            })
            .collect();
        let peft_task = self.root.and_then(|(r, _)| self.instances[r].task.clone());
        Ok(Program {
            adapters,
            peft_task,
            module: self.module,
            tensors,
            model_name: model.name.name.clone(),
            weights,
            model_dir: model.from.as_ref().map(|f| hf_config::folder(f, &base)),
            train,
            warnings: self.warnings,
        })
    }

    /// Converts a span to an IR location.
    fn loc(&mut self, span: Span) -> Loc {
        let (line, col) = self.loaded.sources.line_col(span.file, span.start);
        let name = &self.loaded.sources.file(span.file).name;
        Loc {
            file: self.module.file_id(name),
            line,
            col,
        }
    }

    fn build_forward(
        &mut self,
        root: InstId,
        model: &'a ModelDecl,
    ) -> Result<Function, Diagnostic> {
        let inst = &self.instances[root];
        let Some(fwd) = inst.forward else {
            return Err(Diagnostic::error(
                model.value.span,
                format!("module `{}` has no `forward`", inst.def.name.name),
                "cannot run this model",
            )
            .with_label(inst.def.name.span, "defined here"));
        };
        self.start_function("forward", false);
        let args = self.forward_inputs(root, fwd)?;
        let out = self.call_instance(
            root,
            self.instances[root].adapters.len(),
            args,
            model.value.span,
        )?;
        let Some(out) = self.as_tensor(&out, fwd.span)? else {
            return Err(Diagnostic::error(
                fwd.span,
                "the model's forward must return a tensor",
                format!("returns {}", out.kind()),
            ));
        };
        let mut fb = self
            .fb
            .take()
            .ok_or_else(|| Diagnostic::error(fwd.span, "internal error: no function", "here"))?;
        fb.func.add_output("logits", out);
        self.root = Some((root, model.value.span));
        Ok(tidy(fb.func))
    }

    /// The root's forward parameters as batch inputs of the function being built; `batch`
    /// and `seq` are visible in their annotations.
    fn forward_inputs(
        &mut self,
        root: InstId,
        fwd: &'a crate::ast::FnDef,
    ) -> Result<Vec<eval::ArgVal>, Diagnostic> {
        let mut args = Vec::new();
        for p in &fwd.params {
            let Some(TypeAnn::Tensor(t)) = &p.ty else {
                return Err(Diagnostic::error(
                    p.name.span,
                    "the model's forward inputs need tensor types",
                    "no tensor type",
                )
                .with_help("write e.g. `forward(input_ids: [batch, seq] i64)`"));
            };
            instance::no_rest(t)?;
            let mut env = Env::new(self.instances[root].members.clone());
            env.bind("batch", Value::Int(self.batch));
            env.bind("seq", Value::Int(self.seq));
            let (arg, _) = self.data_input(&p.name, t, Vec::new(), &mut env)?;
            args.push(arg);
        }
        Ok(args)
    }

    /// A batch input named and typed by a forward parameter's annotation (`lead` before its
    /// dims), as the argument that passes it.
    fn data_input(
        &mut self,
        name: &crate::ast::Ident,
        t: &'a crate::ast::TensorTypeAnn,
        lead: Vec<usize>,
        env: &mut Env,
    ) -> Result<(eval::ArgVal, TensorType), Diagnostic> {
        let mut shape = lead;
        for d in &t.dims {
            shape.push(self.eval_dim(d, env)?);
        }
        let ty = TensorType::new(t.dtype.unwrap_or(graft_ir::DType::F32), shape);
        let loc = self.loc(name.span);
        let fb = self.fb_mut(name.span)?;
        let id = fb
            .func
            .add_input(name.name.clone(), InputKind::Data, ty.clone(), Some(loc));
        fb.origins.push(name.span);
        let arg = eval::ArgVal {
            name: None,
            value: Value::Tensor(id),
            span: name.span,
        };
        Ok((arg, ty))
    }

    fn build_init(&mut self) -> Result<Function, Diagnostic> {
        self.start_function("init", true);
        let mut outputs = Vec::new();
        for id in 0..self.decls.len() {
            if matches!(self.decls[id].kind, DeclKind::Weight | DeclKind::State) {
                continue;
            }
            let d = self.decls[id].clone();
            let value = match &d.init {
                Some((expr, env)) => self.init_value(&d, expr, env)?,
                // An unfrozen weight starts from its loaded value.
                None => self.frozen_input(id, d.span)?,
            };
            // Later initializers read this value.
            self.fb_mut(d.span)?.decl_inputs.insert(id, value);
            outputs.push((d.path.clone(), value));
        }
        // Replaced weights last: their new values may read every initialized tensor.
        for id in 0..self.decls.len() {
            let d = self.decls[id].clone();
            if let Some((expr, env, _)) = &d.replace {
                let value = self.init_value(&d, expr, env)?;
                outputs.push((d.path.clone(), value));
            }
        }
        self.finish_function(outputs)
    }

    /// `expr`, evaluated in `env` as the initial value of `d`.
    fn init_value(
        &mut self,
        d: &Decl<'a>,
        expr: &'a Expr,
        env: &Env,
    ) -> Result<ValueId, Diagnostic> {
        self.init_target = Some((d.ty.clone(), d.path.clone()));
        self.stream = 0;
        let mut env = env.clone();
        let v = self.eval(expr, &mut env);
        self.init_target = None;
        self.coerce_init(v?, d, expr.span)
    }

    /// Starts building the function `name` (`is_init`: every decl is read as a frozen input).
    fn start_function(&mut self, name: &str, is_init: bool) {
        self.fb = Some(FnBuilder {
            func: Function::new(name),
            origins: Vec::new(),
            decl_inputs: HashMap::new(),
            is_init,
        });
    }

    /// The function being built, with `outputs`, tidied.
    fn finish_function(&mut self, outputs: Vec<(String, ValueId)>) -> Result<Function, Diagnostic> {
        let mut fb = self.fb.take().ok_or_else(|| {
            Diagnostic::error(
                Span {
                    file: self.loaded.entry,
                    start: 0,
                    end: 0,
                },
                "internal error: no function",
                "here",
            )
        })?;
        for (name, v) in outputs {
            fb.func.add_output(name, v);
        }
        Ok(tidy(fb.func))
    }

    fn coerce_init(&mut self, v: Value, d: &Decl<'a>, span: Span) -> Result<ValueId, Diagnostic> {
        match v {
            Value::Int(_) | Value::Float(_) => {
                let x = eval::as_f64(&v).unwrap_or(0.0);
                self.emit(Op::Constant { value: x }, &[], Some(d.ty.clone()), span)
            }
            other => {
                let Some(t) = self.as_tensor(&other, span)? else {
                    return Err(Diagnostic::error(
                        span,
                        format!(
                            "an initializer must give a tensor, this gives {}",
                            other.kind()
                        ),
                        "initializer",
                    ));
                };
                let got = self.fb_ref(span)?.func.ty(t).clone();
                if got == d.ty {
                    Ok(t)
                } else if got.dtype == d.ty.dtype
                    && graft_ir::broadcastable(&got.shape, &d.ty.shape)
                {
                    self.emit(Op::Broadcast, &[t], Some(d.ty.clone()), span)
                } else {
                    Err(Diagnostic::error(
                        span,
                        format!(
                            "initializer of `{}` gives {got}, but the param is {}",
                            d.path, d.ty
                        ),
                        format!("this is {got}"),
                    )
                    .with_label(d.span, format!("declared as {}", d.ty)))
                }
            }
        }
    }

    fn warn_unused_params(&mut self) {
        let Some(fwd) = self.module.function("forward") else {
            return;
        };
        let used: std::collections::HashSet<&str> = fwd.inputs().map(|i| i.name).collect();
        for d in &self.decls {
            if d.kind == DeclKind::Param && !used.contains(d.path.as_str()) {
                self.warnings.push(
                    Diagnostic::warning(
                        d.span,
                        format!("trainable `{}` is never used by forward", d.path),
                        "declared here",
                    )
                    .with_help("it would train nothing; use it in `forward` or remove it"),
                );
            }
        }
    }

    pub(crate) fn fb_mut(&mut self, span: Span) -> Result<&mut FnBuilder, Diagnostic> {
        self.fb.as_mut().ok_or_else(|| {
            Diagnostic::error(
                span,
                "tensor operations are only allowed in `forward`, `fn` bodies and initializers",
                "a tensor is needed here",
            )
            .with_help(
                "module bodies run at compile time: they may compute ints, floats and shapes",
            )
        })
    }

    pub(crate) fn fb_ref(&self, span: Span) -> Result<&FnBuilder, Diagnostic> {
        self.fb.as_ref().ok_or_else(|| {
            Diagnostic::error(
                span,
                "tensor operations are only allowed in `forward`, `fn` bodies and initializers",
                "a tensor is needed here",
            )
        })
    }
}

/// Moves every input to the front (keeping their order) and drops nodes no output needs.
fn tidy(f: Function) -> Function {
    f.select(|v| matches!(f.nodes[v].op, Op::Input { .. }), true)
}
