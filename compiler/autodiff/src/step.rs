//! The training step as one IR function: forward, causal-LM loss, backward (trainable params
//! only), global-norm clipping, the learning-rate schedule and the optimizer update, with the
//! optimizer state carried as IR inputs and outputs.
//!
//! `@train_step` inputs: the forward's inputs (weights, params, `input_ids`), `labels`
//! (`i64[B, S]`), `step` (`f32[]`, steps done so far) and per-param optimizer state
//! (`adam.m.<path>`, `adam.v.<path>` or `sgd.momentum.<path>`). Outputs: `loss`, `grad_norm`,
//! `lr`, every param under its path, every state under its name, and `step` + 1.
//!
//! Two functions the front end builds from adapters join the step when present: `@penalty`
//! (its `penalty` output is added to the loss before differentiation, so `loss` is Hugging
//! Face's loss with the adapters' regularizers) and `@after_step`, inlined after the
//! optimizer. It reads each param as the optimizer left it, `grad.<path>` (the gradient the
//! optimizer used), `step` (steps done before this one) and its own states (state inputs,
//! zero at first); the params it outputs replace the optimizer's, its states are outputs.
//!
//! With gradient accumulation over k > 1 micro-batches the step runs once per micro-batch
//! and has three more kinds of input: `loss_weight` (`f32[]`: this micro-batch's share of
//! the targets of the whole accumulated batch, so the sum is Hugging Face's loss over every
//! target), `micro` (state, `f32[]`: micro-batches done of this step) and `accum.<path>`
//! (state: the weighted gradients so far). The gradient g = `accum` + w·∇loss feeds
//! clipping and the optimizer, whose results are taken only on the k-th micro-batch
//! (`micro` = k − 1); before it, params, optimizer state and `step` pass through unchanged
//! and `accum` keeps g.

use crate::AdError;
use crate::grad::grad;
use graft_ir::Emitter;
use graft_ir::{BinaryOp, DType, Function, InputKind, Op, ReduceOp, TensorType, UnaryOp, ValueId};

/// The optimizer.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// `torch.optim.AdamW`: bias correction, decoupled weight decay, ε added to √v̂.
    AdamW {
        /// Learning rate.
        lr: f64,
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
    /// Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), as
    /// lion-pytorch computes it: p ← p·(1 − lr·λ) − lr·sign(β₁·m + (1 − β₁)·g), then
    /// m ← β₂·m + (1 − β₂)·g.
    Lion {
        /// Learning rate.
        lr: f64,
        /// β₁ (interpolation for the update's sign).
        beta1: f64,
        /// β₂ (the moment's decay).
        beta2: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
        /// The moment stored in 8 bits (QFT's int8 optimizer state): `lion.m8.<path>` holds
        /// u8 codes in blocks of [`STATE_BLOCK`] and `lion.m8.absmax.<path>` each block's
        /// absmax, m = (code − 128) / 127 · absmax, re-quantized after every update (round
        /// to nearest).
        int8_state: bool,
    },
    /// `torch.optim.SGD` with momentum (no dampening, no Nesterov).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum.
        momentum: f64,
        /// L2 weight decay added to the gradient.
        weight_decay: f64,
    },
}

/// Learning-rate schedules, as Hugging Face's `get_*_schedule_with_warmup` (the factor for
/// step s, counted from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// s/w during warm-up, then 1.
    Constant {
        /// Warm-up steps w.
        warmup: usize,
    },
    /// s/w during warm-up, then (T - s)/(T - w), floored at 0.
    Linear {
        /// Warm-up steps w.
        warmup: usize,
    },
    /// s/w during warm-up, then ½(1 + cos(π·(s - w)/(T - w))), floored at 0.
    Cosine {
        /// Warm-up steps w.
        warmup: usize,
    },
}

/// Optimizer settings for the trainable tensors a pattern names (torch's parameter groups):
/// LoRA+'s larger learning rate for `lora_B`, no weight decay for some tensors, ...
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// A param path, or its last components (`lora_B.weight` names every LoRA B).
    pub pattern: String,
    /// The learning rate is the optimizer's times this.
    pub lr_scale: f64,
    /// Weight decay instead of the optimizer's.
    pub weight_decay: Option<f64>,
}

impl ParamGroup {
    /// Whether the group covers the param at `path`: the whole path, or its last
    /// dot-separated components.
    pub fn matches(&self, path: &str) -> bool {
        path == self.pattern
            || path
                .strip_suffix(self.pattern.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }
}

/// What the training step does besides the forward.
#[derive(Clone, Debug, PartialEq)]
pub struct StepConfig {
    /// The optimizer.
    pub optimizer: Optimizer,
    /// The schedule.
    pub schedule: Schedule,
    /// Total steps T (for linear and cosine decay): the step reads it as the input
    /// `total_steps` (`f32[]`, [`TOTAL_STEPS`]), so one compiled step serves runs of any
    /// length; this value is what the caller feeds.
    pub total_steps: usize,
    /// Clip gradients to this global L2 norm.
    pub clip: Option<f64>,
    /// Label value that is not a target (Hugging Face: -100).
    pub ignore_index: i64,
    /// Micro-batches per optimizer step (gradient accumulation; 1: none). See
    /// [`train_step`].
    pub accumulate: usize,
    /// Per-param learning-rate scales and weight decays; the first group that matches a
    /// param applies to it.
    pub groups: Vec<ParamGroup>,
    /// `@penalty` (output `penalty`, `f32[]`), added to the loss: adapters' `penalty` terms.
    pub penalty: Option<Function>,
    /// `@after_step`, run on the optimizer's results (see the module docs).
    pub after_step: Option<Function>,
    /// `@loss` (inputs `logits` and `labels`, output `loss`, `f32[]`): the objective in
    /// place of [`causal_lm_loss`]; its `labels` input's type is the step's.
    pub loss: Option<Function>,
    /// The decay d of the moving averages `ema.<path>` the objective reads (a teacher with
    /// the params' EMA): each step, ema ← d·ema + (1 − d)·p after the update.
    pub ema: Option<f64>,
}

/// Causal-LM cross-entropy as Hugging Face computes it: logits `[B, S', V]`, labels `[B, S]`
/// (left-padded with the ignore index when prompt tokens make S' > S), position t predicts
/// label t+1, averaged over the targets that are not ignored.
pub fn causal_lm_loss(
    e: &mut Emitter,
    logits: ValueId,
    labels: ValueId,
    ignore: i64,
) -> Result<ValueId, AdError> {
    let lt = e.ty(logits);
    let yt = e.ty(labels);
    if lt.rank() != 3
        || yt.rank() != 2
        || lt.shape[0] != yt.shape[0]
        || lt.shape[1] < yt.shape[1]
        || lt.shape[1] < 2
    {
        return Err(AdError::Shape(format!(
            "causal-LM loss needs logits [B, S', V] and labels [B, S] with S' ≥ S ≥ 1, got {lt} and {yt}"
        )));
    }
    let (b, s, v) = (lt.shape[0], lt.shape[1], lt.shape[2]);
    let labels = if yt.shape[1] < s {
        let pad = e.constant(
            ignore as f64,
            TensorType::new(yt.dtype, vec![b, s - yt.shape[1]]),
        )?;
        e.op(Op::Concat { axis: 1 }, &[pad, labels])?
    } else {
        labels
    };
    let logits = e.cast(logits, DType::F32)?;
    let shifted = e.op(
        Op::Slice {
            axis: 1,
            start: 0,
            end: s - 1,
        },
        &[logits],
    )?;
    let targets = e.op(
        Op::Slice {
            axis: 1,
            start: 1,
            end: s,
        },
        &[labels],
    )?;
    let logp = e.op(Op::LogSoftmax { axis: 2 }, &[shifted])?;
    let classes = e.op_typed(
        Op::Iota { axis: 2 },
        &[],
        TensorType::new(yt.dtype, vec![b, s - 1, v]),
    )?;
    let t3 = e.reshape(targets, &[b, s - 1, 1])?;
    let t3 = e.broadcast(t3, &[b, s - 1, v])?;
    let hit = e.bin(BinaryOp::Eq, classes, t3)?;
    let zero = e.like(0.0, logp)?;
    let picked = e.select(hit, logp, zero)?;
    let picked = e.reduce(ReduceOp::Sum, picked, vec![2], false)?;
    let ign = e.like(ignore as f64, targets)?;
    let keep = e.bin(BinaryOp::Ne, targets, ign)?;
    let mask = e.cast(keep, DType::F32)?;
    let kept = e.mul(picked, mask)?;
    let total = e.sum_all(kept)?;
    let count = e.sum_all(mask)?;
    let mean = e.div(total, count)?;
    Ok(e.neg(mean)?)
}

/// The loss the step differentiates: `@loss` inlined on `logits` and `labels` when the spec
/// names an objective, else [`causal_lm_loss`]; plus `@penalty`'s output (inlined, reading
/// the function's params by name) when the adapters have penalties.
pub fn training_loss(
    e: &mut Emitter,
    logits: ValueId,
    labels: Option<ValueId>,
    ignore: i64,
    objective: Option<&Function>,
    penalty: Option<&Function>,
) -> Result<ValueId, AdError> {
    let loss = match objective {
        None => {
            let labels = labels.ok_or_else(|| AdError::Missing("input `labels`".into()))?;
            causal_lm_loss(e, logits, labels, ignore)?
        }
        Some(obj) => {
            let outs = e.f.inline(obj, |name, _| match name {
                "logits" => Some(logits),
                "labels" => labels,
                _ => None,
            })?;
            outs.iter()
                .find(|(n, _)| n == "loss")
                .map(|(_, v)| *v)
                .ok_or_else(|| AdError::Missing("output `loss` of @loss".into()))?
        }
    };
    let Some(pen) = penalty else {
        return Ok(loss);
    };
    let outs = e.f.inline(pen, |_, _| None)?;
    let p = outs
        .iter()
        .find(|(n, _)| n == "penalty")
        .map(|(_, v)| *v)
        .ok_or_else(|| AdError::Missing("output `penalty` of @penalty".into()))?;
    Ok(e.add(loss, p)?)
}

fn scalar(e: &mut Emitter, x: f64) -> Result<ValueId, AdError> {
    Ok(e.constant(x, TensorType::scalar(DType::F32))?)
}

/// The name of the step's input holding the run's total steps (schedules that decay).
pub const TOTAL_STEPS: &str = "total_steps";

/// The schedule's factor for step `s` (an `f32[]` value); `total` is the input
/// [`TOTAL_STEPS`], for the schedules that read it.
fn schedule_factor(
    e: &mut Emitter,
    sched: Schedule,
    total: Option<ValueId>,
    s: ValueId,
) -> Result<ValueId, AdError> {
    let (Schedule::Constant { warmup } | Schedule::Linear { warmup } | Schedule::Cosine { warmup }) =
        sched;
    let w = warmup as f64;
    let warm = e.scale(s, 1.0 / w.max(1.0))?;
    let zero = scalar(e, 0.0)?;
    // max(T − warmup, 1), as Hugging Face's `max(1, num_training_steps − num_warmup_steps)`.
    let decay_steps = |e: &mut Emitter| -> Result<ValueId, AdError> {
        let tot = total.ok_or_else(|| {
            AdError::Missing("the total_steps input of a decaying schedule".into())
        })?;
        let wv = scalar(e, w)?;
        let d = e.sub(tot, wv)?;
        let one = scalar(e, 1.0)?;
        Ok(e.bin(BinaryOp::Max, d, one)?)
    };
    let after = match sched {
        Schedule::Constant { .. } => scalar(e, 1.0)?,
        Schedule::Linear { .. } => {
            let tot = total.ok_or_else(|| {
                AdError::Missing("the total_steps input of a decaying schedule".into())
            })?;
            let rem = e.sub(tot, s)?;
            let d = decay_steps(e)?;
            let f = e.div(rem, d)?;
            e.bin(BinaryOp::Max, f, zero)?
        }
        Schedule::Cosine { .. } => {
            let wv = scalar(e, w)?;
            let done = e.sub(s, wv)?;
            let d = decay_steps(e)?;
            let progress = e.div(done, d)?;
            let angle = e.scale(progress, std::f64::consts::PI)?;
            let c = e.un(UnaryOp::Cos, angle)?;
            let one = scalar(e, 1.0)?;
            let c1 = e.add(one, c)?;
            let f = e.scale(c1, 0.5)?;
            e.bin(BinaryOp::Max, f, zero)?
        }
    };
    if warmup == 0 {
        return Ok(after);
    }
    let wv = scalar(e, w)?;
    let in_warmup = e.bin(BinaryOp::Lt, s, wv)?;
    Ok(e.select(in_warmup, warm, after)?)
}

/// Builds `@train_step` from `@forward` (which must output `logits` and read `input_ids`).
pub fn train_step(forward: &Function, cfg: &StepConfig) -> Result<Function, AdError> {
    let logits = forward
        .output("logits")
        .ok_or_else(|| AdError::Missing("output `logits`".into()))?;
    // Labels as the objective reads them: `@loss`'s (none when it reads none), else one per
    // input token. The objective's other batch inputs join the step when it is inlined.
    let labels_ty = match &cfg.loss {
        Some(l) => l.input("labels").map(|l| l.ty.clone()),
        None => Some(
            forward
                .input("input_ids")
                .ok_or_else(|| AdError::Missing("input `input_ids`".into()))?
                .ty
                .clone(),
        ),
    };
    let mut f = forward.clone();
    f.name = "train_step".into();
    f.outputs.clear();
    let params: Vec<(String, ValueId)> = f
        .inputs()
        .filter(|i| i.kind == InputKind::Param)
        .map(|i| (i.name.to_string(), i.value))
        .collect();
    let labels = labels_ty.map(|ty| f.add_input("labels", InputKind::Data, ty, None));
    let step = f.add_input(
        "step",
        InputKind::State,
        TensorType::scalar(DType::F32),
        None,
    );
    let total_steps = match cfg.schedule {
        Schedule::Constant { .. } => None,
        Schedule::Linear { .. } | Schedule::Cosine { .. } => Some(f.add_input(
            TOTAL_STEPS,
            InputKind::Data,
            TensorType::scalar(DType::F32),
            None,
        )),
    };
    let state_names: Vec<Vec<String>> = params
        .iter()
        .map(|(p, _)| match cfg.optimizer {
            Optimizer::AdamW { .. } => vec![format!("adam.m.{p}"), format!("adam.v.{p}")],
            Optimizer::Sgd { .. } => vec![format!("sgd.momentum.{p}")],
            Optimizer::Lion {
                int8_state: true, ..
            } => vec![format!("lion.m8.{p}"), format!("lion.m8.absmax.{p}")],
            Optimizer::Lion { .. } => vec![format!("lion.m.{p}")],
        })
        .collect();
    let int8 = matches!(
        cfg.optimizer,
        Optimizer::Lion {
            int8_state: true,
            ..
        }
    );
    let mut states = Vec::new();
    for ((_, v), names) in params.iter().zip(&state_names) {
        let ty = f.ty(*v).clone();
        let blocks = ty.numel().div_ceil(STATE_BLOCK);
        let types = if int8 {
            vec![
                TensorType::new(DType::U8, vec![blocks, STATE_BLOCK]),
                TensorType::new(DType::F32, vec![blocks]),
            ]
        } else {
            vec![ty.clone(); names.len()]
        };
        states.push(
            names
                .iter()
                .zip(types)
                .map(|(n, t)| f.add_input(n.clone(), InputKind::State, t, None))
                .collect::<Vec<_>>(),
        );
    }

    let k = cfg.accumulate.max(1);
    let accum = if k > 1 {
        let scalar_ty = TensorType::scalar(DType::F32);
        let weight = f.add_input("loss_weight", InputKind::Data, scalar_ty.clone(), None);
        let micro = f.add_input("micro", InputKind::State, scalar_ty, None);
        let sums: Vec<ValueId> = params
            .iter()
            .map(|(p, v)| {
                let ty = f.ty(*v).clone();
                f.add_input(format!("accum.{p}"), InputKind::State, ty, None)
            })
            .collect();
        Some((weight, micro, sums))
    } else {
        None
    };

    let mut e = Emitter::new(&mut f);
    let loss = training_loss(
        &mut e,
        logits,
        labels,
        cfg.ignore_index,
        cfg.loss.as_ref(),
        cfg.penalty.as_ref(),
    )?;
    let wrt: Vec<ValueId> = params.iter().map(|(_, v)| *v).collect();
    let mut grads = grad(e.f, loss, &wrt)?;
    if let Some((weight, _, sums)) = &accum {
        for (g, sum) in grads.iter_mut().zip(sums) {
            let shape = e.ty(*g).shape;
            let dt = e.ty(*g).dtype;
            let w = e.cast(*weight, dt)?;
            let w = e.broadcast(w, &shape)?;
            let wg = e.mul(*g, w)?;
            *g = e.add(*sum, wg)?;
        }
    }

    // Global L2 norm over every gradient, as torch.nn.utils.clip_grad_norm_.
    let mut sq = scalar(&mut e, 0.0)?;
    for g in &grads {
        let g32 = e.cast(*g, DType::F32)?;
        let g2 = e.mul(g32, g32)?;
        let s = e.sum_all(g2)?;
        sq = e.add(sq, s)?;
    }
    let norm = e.un(UnaryOp::Sqrt, sq)?;
    if let Some(max) = cfg.clip {
        let eps = scalar(&mut e, 1e-6)?;
        let denom = e.add(norm, eps)?;
        let maxv = scalar(&mut e, max)?;
        let coef = e.div(maxv, denom)?;
        let one = scalar(&mut e, 1.0)?;
        let coef = e.bin(BinaryOp::Min, coef, one)?;
        for g in grads.iter_mut() {
            let shape = e.ty(*g).shape;
            let c = e.broadcast(coef, &shape)?;
            *g = e.mul(*g, c)?;
        }
    }

    let base_lr = match cfg.optimizer {
        Optimizer::AdamW { lr, .. } | Optimizer::Sgd { lr, .. } | Optimizer::Lion { lr, .. } => lr,
    };
    let factor = schedule_factor(&mut e, cfg.schedule, total_steps, step)?;
    let lr = e.scale(factor, base_lr)?;
    let one = scalar(&mut e, 1.0)?;
    let t = e.add(step, one)?;

    let mut outputs: Vec<(String, ValueId)> = vec![
        ("loss".into(), loss),
        ("grad_norm".into(), norm),
        ("lr".into(), lr),
    ];
    for (i, ((path, p), g)) in params.iter().zip(&grads).enumerate() {
        let shape = e.ty(*p).shape;
        let group = cfg.groups.iter().find(|gr| gr.matches(path));
        let lr = match group {
            Some(gr) if gr.lr_scale != 1.0 => e.scale(lr, gr.lr_scale)?,
            _ => lr,
        };
        let lr_b = e.broadcast(lr, &shape)?;
        let optimizer = match (&cfg.optimizer, group.and_then(|gr| gr.weight_decay)) {
            (o, None) => o.clone(),
            (
                Optimizer::AdamW {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    ..
                },
                Some(w),
            ) => Optimizer::AdamW {
                lr: *lr,
                beta1: *beta1,
                beta2: *beta2,
                eps: *eps,
                weight_decay: w,
            },
            (
                Optimizer::Lion {
                    lr,
                    beta1,
                    beta2,
                    int8_state,
                    ..
                },
                Some(w),
            ) => Optimizer::Lion {
                lr: *lr,
                beta1: *beta1,
                beta2: *beta2,
                weight_decay: w,
                int8_state: *int8_state,
            },
            (Optimizer::Sgd { lr, momentum, .. }, Some(w)) => Optimizer::Sgd {
                lr: *lr,
                momentum: *momentum,
                weight_decay: w,
            },
        };
        match optimizer {
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                let (m, v) = (states[i][0], states[i][1]);
                // p ← p·(1 - lr·λ)
                let decay = e.scale(lr_b, weight_decay)?;
                let onep = e.like(1.0, decay)?;
                let keep = e.sub(onep, decay)?;
                let p1 = e.mul(*p, keep)?;
                // m ← m + (1 - β₁)(g - m)   (torch's lerp)
                let gm = e.sub(*g, m)?;
                let gm = e.scale(gm, 1.0 - beta1)?;
                let m1 = e.add(m, gm)?;
                // v ← β₂·v + (1 - β₂)·g²
                let vb = e.scale(v, beta2)?;
                let g2 = e.mul(*g, *g)?;
                let g2 = e.scale(g2, 1.0 - beta2)?;
                let v1 = e.add(vb, g2)?;
                // bias corrections 1 - βᵗ
                let b1 = scalar(&mut e, beta1)?;
                let b2 = scalar(&mut e, beta2)?;
                let b1t = e.bin(BinaryOp::Pow, b1, t)?;
                let b2t = e.bin(BinaryOp::Pow, b2, t)?;
                let one = scalar(&mut e, 1.0)?;
                let bc1 = e.sub(one, b1t)?;
                let bc2 = e.sub(one, b2t)?;
                // p ← p - (lr / bc1) · m / (√v / √bc2 + ε)
                let step_size = e.div(lr, bc1)?;
                let bc2s = e.un(UnaryOp::Sqrt, bc2)?;
                let sv = e.un(UnaryOp::Sqrt, v1)?;
                let bc2b = e.broadcast(bc2s, &shape)?;
                let denom = e.div(sv, bc2b)?;
                let epsv = e.like(eps, denom)?;
                let denom = e.add(denom, epsv)?;
                let upd = e.div(m1, denom)?;
                let ss = e.broadcast(step_size, &shape)?;
                let upd = e.mul(upd, ss)?;
                let p2 = e.sub(p1, upd)?;
                outputs.push((path.clone(), p2));
                outputs.push((state_names[i][0].clone(), m1));
                outputs.push((state_names[i][1].clone(), v1));
            }
            Optimizer::Lion {
                beta1,
                beta2,
                weight_decay,
                int8_state,
                ..
            } => {
                let m = if int8_state {
                    dequantize_state(&mut e, states[i][0], states[i][1], &shape)?
                } else {
                    states[i][0]
                };
                // p ← p·(1 - lr·λ)
                let decay = e.scale(lr_b, weight_decay)?;
                let onep = e.like(1.0, decay)?;
                let keep = e.sub(onep, decay)?;
                let p1 = e.mul(*p, keep)?;
                // c = β₁·m + (1 - β₁)·g;  sign(c) = [c > 0] - [c < 0] (0 at 0, as torch.sign)
                let mb = e.scale(m, beta1)?;
                let gb = e.scale(*g, 1.0 - beta1)?;
                let c = e.add(mb, gb)?;
                let zero = e.like(0.0, c)?;
                let dt = e.ty(c).dtype;
                let pos = e.bin(BinaryOp::Gt, c, zero)?;
                let neg = e.bin(BinaryOp::Lt, c, zero)?;
                let pos = e.cast(pos, dt)?;
                let neg = e.cast(neg, dt)?;
                let sign = e.sub(pos, neg)?;
                let upd = e.mul(sign, lr_b)?;
                let p2 = e.sub(p1, upd)?;
                // m ← β₂·m + (1 - β₂)·g
                let mb2 = e.scale(m, beta2)?;
                let gb2 = e.scale(*g, 1.0 - beta2)?;
                let m1 = e.add(mb2, gb2)?;
                outputs.push((path.clone(), p2));
                if int8_state {
                    let (codes, absmax) = quantize_state(&mut e, m1)?;
                    outputs.push((state_names[i][0].clone(), codes));
                    outputs.push((state_names[i][1].clone(), absmax));
                } else {
                    outputs.push((state_names[i][0].clone(), m1));
                }
            }
            Optimizer::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                let buf = states[i][0];
                // d = g + λ·p;  buf ← μ·buf + d;  p ← p - lr·buf
                let d = if weight_decay != 0.0 {
                    let wp = e.scale(*p, weight_decay)?;
                    e.add(*g, wp)?
                } else {
                    *g
                };
                let mb = e.scale(buf, momentum)?;
                let b1 = e.add(mb, d)?;
                let upd = e.mul(b1, lr_b)?;
                let p1 = e.sub(*p, upd)?;
                outputs.push((path.clone(), p1));
                outputs.push((state_names[i][0].clone(), b1));
            }
        }
    }
    if let Some(after) = &cfg.after_step {
        after_step(&mut e, after, &mut outputs, &params, &grads, step)?;
    }
    // The moving averages the objective reads (`ema.<path>`, a teacher's weights): after the
    // update, ema ← d·ema + (1 − d)·p.
    for (path, _) in &params {
        let name = format!("ema.{path}");
        let Some(ema) = e.f.input(&name).map(|i| i.value) else {
            continue;
        };
        let d = cfg.ema.ok_or_else(|| {
            AdError::Missing(format!(
                "an `ema` decay in the `train` block: the objective reads `{name}`"
            ))
        })?;
        let Some(&(_, updated)) = outputs.iter().find(|(n, _)| n == path) else {
            continue;
        };
        let kept = e.scale(ema, d)?;
        let new = e.scale(updated, 1.0 - d)?;
        let avg = e.add(kept, new)?;
        outputs.push((name, avg));
    }
    outputs.push(("step".into(), t));
    if let Some((_, micro, sums)) = &accum {
        outputs = accumulate(&mut e, outputs, *micro, sums, &grads, k)?;
    }
    for (name, v) in outputs {
        f.add_output(name, v);
    }
    Ok(f)
}

/// Elements per absmax block of an 8-bit optimizer state.
pub const STATE_BLOCK: usize = 64;

/// An 8-bit state's value of `shape`: (code − 128) / 127 · absmax of its block.
fn dequantize_state(
    e: &mut Emitter,
    codes: ValueId,
    absmax: ValueId,
    shape: &[usize],
) -> Result<ValueId, AdError> {
    let block = e.ty(codes).shape;
    let x = e.cast(codes, DType::F32)?;
    let off = e.like(128.0, x)?;
    let x = e.sub(x, off)?;
    let s = e.scale(absmax, 1.0 / 127.0)?;
    let s = e.reshape(s, &[block[0], 1])?;
    let s = e.broadcast(s, &block)?;
    let x = e.mul(x, s)?;
    let x = e.reshape(x, &[block[0] * block[1]])?;
    let n: usize = shape.iter().product();
    let x = e.slice(x, 0, 0, n)?;
    Ok(e.reshape(x, shape)?)
}

/// `m` in 8 bits: u8 codes [blocks, STATE_BLOCK] (round to nearest of m / absmax · 127, plus
/// 128; the padding past its end codes 0) and each block's absmax.
fn quantize_state(e: &mut Emitter, m: ValueId) -> Result<(ValueId, ValueId), AdError> {
    let n = e.ty(m).numel();
    let blocks = n.div_ceil(STATE_BLOCK);
    let mut x = e.reshape(m, &[n])?;
    if blocks * STATE_BLOCK > n {
        let pad = e.constant(
            0.0,
            TensorType::new(DType::F32, vec![blocks * STATE_BLOCK - n]),
        )?;
        x = e.op(Op::Concat { axis: 0 }, &[x, pad])?;
    }
    let x = e.reshape(x, &[blocks, STATE_BLOCK])?;
    let a = e.un(UnaryOp::Abs, x)?;
    let absmax = e.reduce(ReduceOp::Max, a, vec![1], false)?;
    let tiny = e.like(1e-30, absmax)?;
    let safe = e.bin(BinaryOp::Max, absmax, tiny)?;
    let k = e.constant(127.0, TensorType::new(DType::F32, vec![blocks]))?;
    let s = e.div(k, safe)?;
    let s = e.reshape(s, &[blocks, 1])?;
    let s = e.broadcast(s, &[blocks, STATE_BLOCK])?;
    let q = e.mul(x, s)?;
    // q + 128.5 ∈ [1.5, 255.5]: truncation is round-half-up of q, plus 128.
    let half = e.like(128.5, q)?;
    let q = e.add(q, half)?;
    let q = e.cast(q, DType::I64)?;
    let codes = e.cast(q, DType::U8)?;
    Ok((codes, absmax))
}

/// Inlines `@after_step` on the optimizer's results: its params are the updated ones, its
/// `grad.<path>` inputs the gradients; the params it outputs replace those in `outputs`,
/// and its states are added.
fn after_step(
    e: &mut Emitter,
    after: &Function,
    outputs: &mut Vec<(String, ValueId)>,
    params: &[(String, ValueId)],
    grads: &[ValueId],
    step: ValueId,
) -> Result<(), AdError> {
    let updated: Vec<(String, ValueId)> = outputs.clone();
    let outs = e.f.inline(after, |name, kind| match kind {
        InputKind::Param => updated.iter().find(|(n, _)| n == name).map(|(_, v)| *v),
        InputKind::State if name == "step" => Some(step),
        _ => name
            .strip_prefix("grad.")
            .and_then(|p| params.iter().position(|(q, _)| q == p).map(|i| grads[i])),
    })?;
    for (name, v) in outs {
        match outputs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) if params.iter().any(|(p, _)| *p == name) => slot.1 = v,
            Some(_) => {
                return Err(AdError::Shape(format!(
                    "@after_step outputs `{name}`, which the training step already has"
                )));
            }
            None => outputs.push((name, v)),
        }
    }
    Ok(())
}

/// Gradient accumulation's outputs (see the module docs): every update taken only on the
/// last micro-batch, the gradient sums and the micro-batch counter carried otherwise.
fn accumulate(
    e: &mut Emitter,
    outputs: Vec<(String, ValueId)>,
    micro: ValueId,
    sums: &[ValueId],
    grads: &[ValueId],
    k: usize,
) -> Result<Vec<(String, ValueId)>, AdError> {
    let last = scalar(e, (k - 1) as f64)?;
    let apply = e.bin(BinaryOp::Eq, micro, last)?;
    let mut out = Vec::new();
    for (name, v) in outputs {
        // The value this output replaces: the input of the same name.
        let old = match e.f.input(&name) {
            Some(i) if !matches!(name.as_str(), "loss" | "grad_norm" | "lr") => Some(i.value),
            _ => None,
        };
        let v = match old {
            Some(old) => {
                let shape = e.ty(v).shape;
                let c = e.broadcast(apply, &shape)?;
                e.select(c, v, old)?
            }
            None => v,
        };
        out.push((name, v));
    }
    for (sum, g) in sums.iter().zip(grads) {
        let shape = e.ty(*g).shape;
        let c = e.broadcast(apply, &shape)?;
        let zero = e.like(0.0, *g)?;
        let kept = e.select(c, zero, *g)?;
        let name =
            e.f.nodes
                .get(sum.index())
                .and_then(|n| match &n.op {
                    Op::Input { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .ok_or_else(|| AdError::Missing("accumulator input".into()))?;
        out.push((name, kept));
    }
    let one = scalar(e, 1.0)?;
    let next = e.add(micro, one)?;
    let zero = scalar(e, 0.0)?;
    let micro_out = e.select(apply, zero, next)?;
    out.push(("micro".into(), micro_out));
    Ok(out)
}
