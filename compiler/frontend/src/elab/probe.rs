//! `graft check` on a library file (a file that declares no model): every adapter the file
//! defines is applied, with its default arguments, to a probe instance of the module kind it
//! wraps, and the probe's `forward`, `init`, `penalty` and `after_step` are elaborated, so the
//! adapter's names, shapes and `require`s are checked as a spec that used it would check them.
//!
//! The probe instance gets its kind's defaults and, for each int parameter without one, a
//! size from [`PROBE_SIZES`] (different sizes, so a swapped `in` and `out` shows). Its input
//! is the kind's `forward` annotation with `..` made `[2, 4]`.

use super::eval::ArgVal;
use super::value::Env;
use super::value::Value;
use super::{DeclKind, Def, Elaborator};
use crate::ast::{ExprKind, Ident, Item, ModuleDef, Param, ScalarType, Span, TypeAnn};
use crate::diag::Diagnostic;
use crate::load::Loaded;
use graft_ir::TensorType;

/// Sizes given, in order, to the probe module's int parameters that have no default.
pub const PROBE_SIZES: [i64; 4] = [64, 96, 32, 48];

/// Leading axes that a `..` annotation stands for in a probe input.
const PROBE_LEADING: [usize; 2] = [2, 4];

/// Extents given, in order, to the names a probe input's annotation binds (`B` and `S` in
/// `k: [B, heads, S, d]`).
const PROBE_FREE: [i64; 4] = [2, 5, 3, 7];

/// One adapter checked on its probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// The adapter's name.
    pub adapter: String,
    /// The probe: the wrapped kind and its arguments, e.g. `linear(in: 64, out: 96)`.
    pub module: String,
    /// The probe's input type.
    pub input: Vec<TensorType>,
    /// The tensors the adapter declares: path in the probe, type, trainable or computed.
    pub tensors: Vec<(String, TensorType, DeclKind)>,
    /// Nodes in the probe's forward.
    pub nodes: usize,
}

/// Checks every adapter of a library file on a probe module.
///
/// # Errors
/// The first adapter that does not elaborate on its probe, or a file with no adapter.
pub fn check_library(loaded: &Loaded) -> Result<Vec<Probe>, Diagnostic> {
    let adapters: Vec<&ModuleDef> = loaded
        .files
        .iter()
        .filter(|f| f.file == loaded.entry)
        .flat_map(|f| f.items.iter())
        .filter_map(|i| match i {
            Item::Module(d) if d.wraps.is_some() => Some(d),
            _ => None,
        })
        .collect();
    if adapters.is_empty() {
        let text = &loaded.sources.file(loaded.entry).text;
        let end = text.len() as u32;
        let span = Span {
            file: loaded.entry,
            start: end,
            end,
        };
        return Err(Diagnostic::error(span, "this file declares no model and no adapter", "expected a `model` or an `adapter` item")
            .with_help("a spec needs e.g. `model base = llama(vocab: 256, hidden: 64, layers: 2, heads: 4, ffn: 128)`; a library of adapters is checked on probe modules"));
    }
    let mut out = Vec::new();
    for a in adapters {
        let mut el = Elaborator::new(loaded, Some((1, 1)), false);
        el.collect_defs()?;
        out.push(el.probe(a)?);
    }
    Ok(out)
}

/// Probe values for the parameters of `params` that have no default.
fn probe_args(params: &[Param], span: Span) -> (Vec<ArgVal>, Vec<String>) {
    let mut sizes = PROBE_SIZES.iter();
    let mut args = Vec::new();
    let mut shown = Vec::new();
    for p in params.iter().filter(|p| p.default.is_none()) {
        let value = match p.ty {
            ScalarType::Int => Value::Int(*sizes.next().unwrap_or(&16)),
            ScalarType::Float => Value::Float(1.0),
            ScalarType::Bool => Value::Bool(false),
            ScalarType::String => Value::Str(String::new()),
        };
        shown.push(format!("{}: {}", p.name.name, show(&value)));
        args.push(ArgVal {
            name: Some(Ident {
                name: p.name.name.clone(),
                span,
            }),
            value,
            span,
        });
    }
    (args, shown)
}

fn show(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => format!("{s:?}"),
        _ => v.kind().to_string(),
    }
}

impl<'a> Elaborator<'a> {
    fn probe(&mut self, adapter: &'a ModuleDef) -> Result<Probe, Diagnostic> {
        let span = adapter.name.span;
        let wraps = adapter.wraps.as_ref().ok_or_else(|| {
            Diagnostic::error(span, "internal error: adapter without wraps", "here")
        })?;
        let kind = match self.defs.get(&wraps.kind.name) {
            Some(Def::Module(d)) if d.wraps.is_none() => *d,
            _ => {
                return Err(Diagnostic::error(
                    wraps.kind.span,
                    format!("unknown module `{}`", wraps.kind.name),
                    "the wrapped kind",
                )
                .with_help("a library file `use`s the file that defines the module it wraps, e.g. `use nn`"));
            }
        };
        let (args, shown) = probe_args(&kind.params, wraps.kind.span);
        let module = format!("{}({})", kind.name.name, shown.join(", "));
        let inst = self.instantiate(kind, args, "probe".into(), wraps.kind.span, false)?;
        let (adapter_args, _) = probe_args(&adapter.params, span);
        self.attach_adapter(inst, adapter, adapter_args, span)?;

        let Some(fwd) = self.instances[inst].forward else {
            return Err(Diagnostic::error(
                kind.name.span,
                format!("module `{}` has no `forward` to probe", kind.name.name),
                "defined here",
            ));
        };
        self.start_function("forward", false);
        let mut inputs = Vec::new();
        let mut call = Vec::new();
        // One scope for every input, so a name bound by one annotation has its extent in all.
        let mut env = Env::new(self.instances[inst].members.clone());
        let mut free = PROBE_FREE.iter();
        for p in &fwd.params {
            let Some(TypeAnn::Tensor(t)) = &p.ty else {
                return Err(Diagnostic::error(
                    p.name.span,
                    format!(
                        "`{}`'s forward needs annotated inputs for a probe to be made",
                        kind.name.name
                    ),
                    "no tensor type",
                )
                .with_help("annotate it with its trailing axes, e.g. `x: [.., in]`"));
            };
            for d in &t.dims {
                if let ExprKind::Name(n) = &d.kind
                    && env.get(n).is_none()
                {
                    env.bind(n, Value::Int(*free.next().unwrap_or(&2)));
                }
            }
            let lead = if t.rest {
                PROBE_LEADING.to_vec()
            } else {
                Vec::new()
            };
            let (arg, ty) = self.data_input(&p.name, t, lead, &mut env)?;
            inputs.push(ty);
            call.push(arg);
        }
        let y = self.call_instance(inst, 1, call, span)?;
        // A tensor, or a list of them (a module that passes several on, like `attention_kv`).
        let ys = match &y {
            Value::List(items) => items.clone(),
            _ => vec![y.clone()],
        };
        let mut outputs = Vec::new();
        for (i, v) in ys.iter().enumerate() {
            let Some(t) = self.as_tensor(v, span)? else {
                return Err(Diagnostic::error(
                    span,
                    "the adapted module's forward must return a tensor or a list of tensors",
                    format!("returns {}", y.kind()),
                ));
            };
            let name = if ys.len() == 1 {
                "y".to_string()
            } else {
                format!("y{i}")
            };
            outputs.push((name, t));
        }
        let forward = self.finish_function(outputs)?;
        self.build_init()?;
        // Penalties and after-step blocks are checked too (on the one probe instance).
        self.build_penalty()?;
        self.build_after_step()?;
        let tensors = self
            .decls
            .iter()
            .filter(|d| d.kind != DeclKind::Weight)
            .map(|d| (d.path.clone(), d.ty.clone(), d.kind))
            .collect();
        Ok(Probe {
            adapter: adapter.name.name.clone(),
            module,
            input: inputs,
            tensors,
            nodes: forward.nodes.len(),
        })
    }
}
