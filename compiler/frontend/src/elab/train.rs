//! The `train` block: settings read into a [`TrainConfig`], each checked with a diagnostic.

use super::Elaborator;
use super::eval::as_f64;
use super::value::{Env, Value};
use crate::ast::{Expr, ExprKind, Span, TrainBlock};
use crate::diag::Diagnostic;
use std::collections::HashMap;

pub use graft_autodiff::{Optimizer, ParamGroup, Schedule};

/// Training settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Training data (JSONL with a text field, or pre-tokenized).
    pub data: Option<String>,
    /// A Hugging Face `tokenizer.json`.
    pub tokenizer: Option<String>,
    /// The loss: `causal_lm` (built in), or the name of a graft function of the logits and
    /// the labels (elaborated as `@loss`).
    pub loss: String,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Global-norm gradient clipping.
    pub clip: Option<f64>,
    /// Seed for initializers, dropout and data order.
    pub seed: u64,
    /// Held-out data (same formats as `data`) for the eval loss and perplexity.
    pub eval_data: Option<String>,
    /// Steps between evaluations (0: only after the last step).
    pub eval_every: usize,
    /// Records concatenated and cut into `seq`-token blocks (true), or each record
    /// truncated and right-padded to `seq` tokens (false).
    pub packing: bool,
    /// Batches drawn in a seeded random order, a new one each epoch.
    pub shuffle: bool,
    /// Passes over the data; when set, the number of steps follows from it.
    pub epochs: Option<usize>,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub accumulate: usize,
    /// Optimizer settings for the params a pattern names, with where each group is written.
    pub param_groups: Vec<(ParamGroup, Span)>,
    /// The decay of the trainable tensors' moving averages (`ema.<path>`), which an
    /// objective reads as a teacher (`ema_logits`).
    pub ema: Option<f64>,
    /// Graft functions evaluation reports beside the loss (`metrics [accuracy]`), each built
    /// as `@metric_<name>`.
    pub metrics: Vec<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: None,
            tokenizer: None,
            loss: "causal_lm".into(),
            optimizer: Optimizer::AdamW {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            schedule: Schedule::Constant { warmup: 0 },
            batch: 1,
            seq: 16,
            steps: 100,
            clip: None,
            seed: 0,
            eval_data: None,
            eval_every: 0,
            packing: true,
            shuffle: true,
            epochs: None,
            accumulate: 1,
            param_groups: Vec::new(),
            ema: None,
            metrics: Vec::new(),
        }
    }
}

const KEYS: &[&str] = &[
    "data",
    "tokenizer",
    "loss",
    "optimizer",
    "schedule",
    "batch",
    "seq",
    "steps",
    "clip",
    "seed",
    "eval_data",
    "eval_every",
    "packing",
    "shuffle",
    "epochs",
    "accumulate",
    "param_groups",
    "ema",
    "metrics",
];

impl<'a> Elaborator<'a> {
    pub(super) fn train_config(&mut self, t: &'a TrainBlock) -> Result<TrainConfig, Diagnostic> {
        let mut c = TrainConfig::default();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for s in &t.settings {
            let key = s.key.name.as_str();
            if let Some(prev) = seen.insert(key, s.key.span) {
                return Err(Diagnostic::error(
                    s.key.span,
                    format!("`{key}` is set twice"),
                    "set again",
                )
                .with_label(prev, "first set here"));
            }
            let v = &s.value;
            match key {
                "data" => c.data = Some(self.setting_str(v)?),
                "tokenizer" => c.tokenizer = Some(self.setting_str(v)?),
                "loss" => {
                    // `name`, or `name(setting: value, ...)` for a function's settings.
                    let (name, args): (String, &'a [crate::ast::Arg]) = match &v.kind {
                        ExprKind::Call(f, args) => (word(f).unwrap_or_default(), args),
                        _ => (word(v).unwrap_or_default(), &[]),
                    };
                    if name.is_empty() || (name == "causal_lm" && !args.is_empty()) {
                        return Err(Diagnostic::error(v.span, "expected a loss name", "here")
                            .with_help(LOSS_HELP));
                    }
                    if name != "causal_lm" {
                        self.loss_at = Some((v.span, args));
                    }
                    c.loss = name;
                }
                "optimizer" => c.optimizer = self.optimizer(v)?,
                "schedule" => c.schedule = self.schedule(v, &c)?,
                "batch" | "seq" | "steps" => {
                    let n = self.positive(v)?;
                    match key {
                        "batch" => c.batch = n,
                        "seq" => c.seq = n,
                        _ => c.steps = n,
                    }
                }
                "clip" => {
                    let x = self.number(v)?;
                    if x <= 0.0 {
                        return Err(Diagnostic::error(
                            v.span,
                            "the clipping norm must be positive",
                            "here",
                        ));
                    }
                    c.clip = Some(x);
                }
                "seed" => c.seed = self.positive_or_zero(v)?,
                "eval_data" => c.eval_data = Some(self.setting_str(v)?),
                "eval_every" => c.eval_every = self.positive(v)?,
                "packing" => c.packing = self.flag(v)?,
                "shuffle" => c.shuffle = self.flag(v)?,
                "epochs" => c.epochs = Some(self.positive(v)?),
                "accumulate" => c.accumulate = self.positive(v)?,
                "param_groups" => c.param_groups = self.param_groups(v)?,
                "metrics" => {
                    let ExprKind::List(items) = &v.kind else {
                        return Err(Diagnostic::error(
                            v.span,
                            "expected a list of metrics",
                            "here",
                        )
                        .with_help("e.g. `metrics [accuracy]` (use objectives)"));
                    };
                    for item in items {
                        let (name, args): (String, &'a [crate::ast::Arg]) = match &item.kind {
                            ExprKind::Call(f, args) => (word(f).unwrap_or_default(), args),
                            _ => (word(item).unwrap_or_default(), &[]),
                        };
                        if name.is_empty() {
                            return Err(Diagnostic::error(
                                item.span,
                                "expected a metric name",
                                "here",
                            )
                            .with_help("a metric is a graft function such as `accuracy`"));
                        }
                        c.metrics.push(name.clone());
                        self.metrics_at.push((name, item.span, args));
                    }
                }
                "ema" => {
                    let d = self.number(v)?;
                    if !(0.0..1.0).contains(&d) {
                        return Err(Diagnostic::error(
                            v.span,
                            format!("the moving average's decay is in [0, 1), not {d}"),
                            "here",
                        )
                        .with_help("e.g. `ema 0.99`: the average keeps 99% of itself each step"));
                    }
                    c.ema = Some(d);
                }
                _ => {
                    let mut d = Diagnostic::error(
                        s.key.span,
                        format!("unknown train setting `{key}`"),
                        "unknown setting",
                    );
                    d = d.with_help(match super::eval::suggest(key, KEYS.iter().copied()) {
                        Some(k) => format!("did you mean `{k}`?"),
                        None => format!("settings: {}", KEYS.join(", ")),
                    });
                    return Err(d);
                }
            }
        }
        if let (Some(st), Some(ep)) = (seen.get("steps"), seen.get("epochs")) {
            return Err(Diagnostic::error(
                *ep,
                "`epochs` and `steps` both set the run's length",
                "here",
            )
            .with_label(*st, "steps set here")
            .with_help("keep one: `epochs` counts passes over the data, `steps` optimizer steps"));
        }
        Ok(c)
    }

    fn value(&mut self, e: &'a Expr) -> Result<Value, Diagnostic> {
        self.eval(e, &mut Env::new(HashMap::new()))
    }

    fn setting_str(&mut self, e: &'a Expr) -> Result<String, Diagnostic> {
        match self.value(e)? {
            Value::Str(s) => Ok(s),
            other => Err(Diagnostic::error(
                e.span,
                format!("expected a quoted path, found {}", other.kind()),
                "here",
            )),
        }
    }

    fn number(&mut self, e: &'a Expr) -> Result<f64, Diagnostic> {
        let v = self.value(e)?;
        as_f64(&v).ok_or_else(|| {
            Diagnostic::error(
                e.span,
                format!("expected a number, found {}", v.kind()),
                "here",
            )
        })
    }

    fn flag(&mut self, e: &'a Expr) -> Result<bool, Diagnostic> {
        match self.value(e)? {
            Value::Bool(b) => Ok(b),
            other => Err(Diagnostic::error(
                e.span,
                format!("expected true or false, found {}", describe(&other)),
                "here",
            )),
        }
    }

    fn positive_or_zero(&mut self, e: &'a Expr) -> Result<u64, Diagnostic> {
        match self.value(e)? {
            Value::Int(i) if i >= 0 => Ok(i as u64),
            other => Err(Diagnostic::error(
                e.span,
                format!("expected a non-negative int, found {}", describe(&other)),
                "here",
            )),
        }
    }

    fn positive(&mut self, e: &'a Expr) -> Result<usize, Diagnostic> {
        match self.value(e)? {
            Value::Int(i) if i > 0 && i < (1 << 40) => Ok(i as usize),
            other => Err(Diagnostic::error(
                e.span,
                format!("expected a positive int, found {}", describe(&other)),
                "here",
            )),
        }
    }

    /// Named numeric arguments of a call like `adamw(lr: 2e-4)`.
    fn call_args(
        &mut self,
        e: &'a Expr,
        allowed: &[&str],
    ) -> Result<(String, HashMap<String, (f64, Span)>), Diagnostic> {
        let (name, args) = match &e.kind {
            ExprKind::Call(c, args) => (word(c), args.as_slice()),
            ExprKind::Name(n) => (Some(n.clone()), &[][..]),
            _ => (None, &[][..]),
        };
        let name = name.ok_or_else(|| {
            Diagnostic::error(e.span, "expected a call like `adamw(lr: 1e-3)`", "here")
        })?;
        let mut out = HashMap::new();
        for a in args {
            let Some(n) = &a.name else {
                return Err(Diagnostic::error(
                    a.value.span,
                    format!("arguments of `{name}` are named"),
                    "unnamed",
                )
                .with_help(format!("options: {}", allowed.join(", "))));
            };
            if !allowed.contains(&n.name.as_str()) {
                return Err(Diagnostic::error(
                    n.span,
                    format!("`{name}` has no option `{}`", n.name),
                    "unknown option",
                )
                .with_help(format!("options: {}", allowed.join(", "))));
            }
            let x = self.number(&a.value)?;
            if !x.is_finite() || x < 0.0 {
                return Err(Diagnostic::error(
                    a.value.span,
                    format!("`{}` must be a non-negative number", n.name),
                    "here",
                ));
            }
            out.insert(n.name.clone(), (x, a.value.span));
        }
        Ok((name, out))
    }

    fn optimizer(&mut self, e: &'a Expr) -> Result<Optimizer, Diagnostic> {
        let (name, a) = match &e.kind {
            ExprKind::Call(c, _) if word(c).as_deref() == Some("sgd") => {
                self.call_args(e, &["lr", "momentum", "weight_decay"])?
            }
            ExprKind::Call(c, _) if word(c).as_deref() == Some("lion") => {
                self.call_args(e, &["lr", "beta1", "beta2", "weight_decay", "state_bits"])?
            }
            _ => self.call_args(e, &["lr", "beta1", "beta2", "eps", "weight_decay"])?,
        };
        let get = |k: &str, d: f64| a.get(k).map_or(d, |v| v.0);
        match name.as_str() {
            "adamw" => Ok(Optimizer::AdamW { lr: get("lr", 1e-3), beta1: get("beta1", 0.9), beta2: get("beta2", 0.999), eps: get("eps", 1e-8), weight_decay: get("weight_decay", 0.01) }),
            "lion" => {
                let int8_state = match a.get("state_bits") {
                    None => false,
                    Some((b, _)) if *b == 32.0 => false,
                    Some((b, _)) if *b == 8.0 => true,
                    Some((_, span)) => {
                        return Err(Diagnostic::error(
                            *span,
                            "Lion keeps its moment in 32 or 8 bits",
                            "here",
                        )
                        .with_help("`state_bits: 8` stores it as u8 codes with a scale per block of 64"));
                    }
                };
                Ok(Optimizer::Lion {
                    lr: get("lr", 1e-4),
                    beta1: get("beta1", 0.9),
                    beta2: get("beta2", 0.99),
                    weight_decay: get("weight_decay", 0.0),
                    int8_state,
                })
            }
            "sgd" => Ok(Optimizer::Sgd { lr: get("lr", 1e-3), momentum: get("momentum", 0.0), weight_decay: get("weight_decay", 0.0) }),
            other => Err(Diagnostic::error(e.span, format!("unknown optimizer `{other}`"), "unknown").with_help("supported: adamw(lr, beta1, beta2, eps, weight_decay), lion(lr, beta1, beta2, weight_decay, state_bits), sgd(lr, momentum, weight_decay)")),
        }
    }

    /// `[group("lora_B.weight", lr_scale: 16.0, weight_decay: 0.0), ...]`.
    fn param_groups(&mut self, e: &'a Expr) -> Result<Vec<(ParamGroup, Span)>, Diagnostic> {
        let help = "write `param_groups [group(\"lora_B.weight\", lr_scale: 16.0)]`: a param \
                    path or its last components, then `lr_scale` and/or `weight_decay`";
        let ExprKind::List(items) = &e.kind else {
            return Err(
                Diagnostic::error(e.span, "expected a list of `group(...)`", "here")
                    .with_help(help),
            );
        };
        let mut out = Vec::new();
        for item in items {
            let ExprKind::Call(c, args) = &item.kind else {
                return Err(
                    Diagnostic::error(item.span, "expected `group(...)`", "here").with_help(help),
                );
            };
            if word(c).as_deref() != Some("group") {
                return Err(
                    Diagnostic::error(item.span, "expected `group(...)`", "here").with_help(help),
                );
            }
            let mut g = ParamGroup {
                pattern: String::new(),
                lr_scale: 1.0,
                weight_decay: None,
            };
            let mut have_pattern = false;
            for a in args {
                match a.name.as_ref().map(|n| n.name.as_str()) {
                    None if !have_pattern => {
                        g.pattern = self.setting_str(&a.value)?;
                        have_pattern = true;
                    }
                    Some("lr_scale") => g.lr_scale = self.number(&a.value)?,
                    Some("weight_decay") => g.weight_decay = Some(self.number(&a.value)?),
                    _ => {
                        return Err(Diagnostic::error(
                            a.value.span,
                            "`group` takes a pattern, then `lr_scale:` and `weight_decay:`",
                            "not one of them",
                        )
                        .with_help(help));
                    }
                }
            }
            if !have_pattern || g.pattern.is_empty() {
                return Err(
                    Diagnostic::error(item.span, "the group names no params", "here")
                        .with_help(help),
                );
            }
            if !(g.lr_scale.is_finite() && g.lr_scale >= 0.0)
                || g.weight_decay.is_some_and(|w| !(w.is_finite() && w >= 0.0))
            {
                return Err(Diagnostic::error(
                    item.span,
                    "`lr_scale` and `weight_decay` must be non-negative numbers",
                    "here",
                ));
            }
            out.push((g, item.span));
        }
        Ok(out)
    }

    fn schedule(&mut self, e: &'a Expr, _c: &TrainConfig) -> Result<Schedule, Diagnostic> {
        let (name, a) = self.call_args(e, &["warmup"])?;
        let warmup = a.get("warmup").map_or(0, |v| v.0 as usize);
        match name.as_str() {
            "constant" => Ok(Schedule::Constant { warmup }),
            "linear" => Ok(Schedule::Linear { warmup }),
            "cosine" => Ok(Schedule::Cosine { warmup }),
            other => {
                Err(
                    Diagnostic::error(e.span, format!("unknown schedule `{other}`"), "unknown")
                        .with_help("supported: constant(warmup), linear(warmup), cosine(warmup)"),
                )
            }
        }
    }
}

/// What a `loss` setting may name.
pub(super) const LOSS_HELP: &str = "a loss is `causal_lm` or a graft function returning a \
     float scalar, such as `cross_entropy` or `dpo(beta: 0.1)` (use objectives)";

fn word(e: &Expr) -> Option<String> {
    match &e.kind {
        ExprKind::Name(n) => Some(n.clone()),
        _ => None,
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        other => other.kind().to_string(),
    }
}
