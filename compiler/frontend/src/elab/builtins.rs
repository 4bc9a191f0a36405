//! Built-in functions: elementwise math, reductions, layout, initializers and shape queries.
//! On compile-time scalars the math functions compute at compile time; on tensors they emit IR.

use super::Elaborator;
use super::eval::{ArgVal, as_f64, broadcast_shape};
use super::value::Value;
use crate::ast::Span;
use crate::diag::Diagnostic;
use graft_ir::{
    BinaryOp, DType, Distribution, FactorOp, InputKind, Op, ReduceOp, TensorType, UnaryOp, ValueId,
};

/// The built-ins that are not one op of an op table: reductions by their source names,
/// layout, initializers, shape queries, conversions and the rest.
const SURFACE: &[&str] = &[
    "sum",
    "mean",
    "amax",
    "amin",
    "softmax",
    "log_softmax",
    "reshape",
    "flatten",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "broadcast",
    "concat",
    "slice",
    "gather",
    "select",
    "cast",
    "stop_grad",
    "dropout",
    "arange",
    "zeros",
    "ones",
    "full",
    "kaiming_uniform",
    "normal",
    "uniform",
    "torch_uniform",
    "torch_randperm",
    "randint",
    "dim",
    "shape",
    "numel",
    "rank",
    "target_shape",
    "shared_shape",
    "int",
    "float",
    "floor",
    "solve",
    "sort",
    "grad",
    "across",
];

/// True for a built-in function name: an elementwise op's (every unary op but `neg` and
/// `not`, which are operators; `pow`, `max`, `min`), a factorization's, or one of
/// [`SURFACE`].
pub fn is_builtin(name: &str) -> bool {
    UnaryOp::from_name(name).is_some_and(|u| !matches!(u, UnaryOp::Neg | UnaryOp::Not))
        || matches!(
            BinaryOp::from_name(name),
            Some(BinaryOp::Pow | BinaryOp::Max | BinaryOp::Min)
        )
        || FactorOp::from_name(name).is_some()
        || SURFACE.contains(&name)
}

/// Positional and named arguments of one built-in call.
struct Args {
    func: String,
    positional: Vec<Option<ArgVal>>,
    named: Vec<Option<ArgVal>>,
    span: Span,
}

impl Args {
    fn new(func: &str, args: Vec<ArgVal>, span: Span) -> Args {
        let (named, positional): (Vec<_>, Vec<_>) =
            args.into_iter().partition(|a| a.name.is_some());
        Args {
            func: func.to_string(),
            positional: positional.into_iter().map(Some).collect(),
            named: named.into_iter().map(Some).collect(),
            span,
        }
    }

    /// Takes the argument named `key`, or else the `pos`-th positional one.
    fn take(&mut self, pos: usize, key: &str) -> Option<ArgVal> {
        if let Some(slot) = self.named.iter_mut().find(|a| {
            a.as_ref()
                .is_some_and(|a| a.name.as_ref().is_some_and(|n| n.name == key))
        }) {
            return slot.take();
        }
        self.positional.get_mut(pos).and_then(Option::take)
    }

    fn need(&mut self, pos: usize, key: &str) -> Result<ArgVal, Diagnostic> {
        self.take(pos, key).ok_or_else(|| {
            Diagnostic::error(
                self.span,
                format!("`{}` needs the argument `{key}`", self.func),
                "missing argument",
            )
        })
    }

    fn finish(self) -> Result<(), Diagnostic> {
        match self
            .positional
            .into_iter()
            .chain(self.named)
            .flatten()
            .next()
        {
            None => Ok(()),
            Some(a) => Err(Diagnostic::error(
                a.span,
                format!("unexpected argument to `{}`", self.func),
                "not used",
            )
            .with_help(match a.name {
                Some(n) => format!("`{}` has no parameter `{}`", self.func, n.name),
                None => "too many positional arguments".to_string(),
            })),
        }
    }
}

fn int_of(a: &ArgVal, what: &str) -> Result<i64, Diagnostic> {
    match a.value {
        Value::Int(i) => Ok(i),
        _ => Err(Diagnostic::error(
            a.span,
            format!(
                "`{what}` must be a compile-time int, this is {}",
                a.value.kind()
            ),
            "expected an int",
        )),
    }
}

fn float_of(a: &ArgVal, what: &str) -> Result<f64, Diagnostic> {
    as_f64(&a.value).ok_or_else(|| {
        Diagnostic::error(
            a.span,
            format!(
                "`{what}` must be a compile-time number, this is {}",
                a.value.kind()
            ),
            "expected a number",
        )
    })
}

fn bool_of(a: &ArgVal, what: &str) -> Result<bool, Diagnostic> {
    match a.value {
        Value::Bool(b) => Ok(b),
        _ => Err(Diagnostic::error(
            a.span,
            format!(
                "`{what}` must be a compile-time bool, this is {}",
                a.value.kind()
            ),
            "expected a bool",
        )),
    }
}

fn ints_of(a: &ArgVal, what: &str) -> Result<Vec<i64>, Diagnostic> {
    match &a.value {
        Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Ok(*i),
                other => Err(Diagnostic::error(
                    a.span,
                    format!("`{what}` must list ints, it holds {}", other.kind()),
                    "expected ints",
                )),
            })
            .collect(),
        Value::Int(i) => Ok(vec![*i]),
        other => Err(Diagnostic::error(
            a.span,
            format!("`{what}` must be a list of ints, this is {}", other.kind()),
            "expected a list",
        )),
    }
}

fn dtype_of(a: &ArgVal) -> Result<DType, Diagnostic> {
    match a.value {
        Value::DType(d) => Ok(d),
        _ => Err(Diagnostic::error(
            a.span,
            format!("expected a dtype like `f32`, this is {}", a.value.kind()),
            "expected a dtype",
        )),
    }
}

/// A shape as a compile-time list.
fn shape_list(shape: &[usize]) -> Value {
    Value::List(shape.iter().map(|&d| Value::Int(d as i64)).collect())
}

/// Normalizes a possibly negative axis against `rank`.
fn axis(a: i64, rank: usize, span: Span) -> Result<usize, Diagnostic> {
    let r = rank as i64;
    let x = if a < 0 { a + r } else { a };
    if (0..r).contains(&x) {
        Ok(x as usize)
    } else {
        Err(Diagnostic::error(
            span,
            format!("axis {a} is out of range for rank {rank}"),
            "bad axis",
        ))
    }
}

/// 64-bit FNV-1a, for stable random stream ids.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl<'a> Elaborator<'a> {
    fn ty(&self, v: ValueId, span: Span) -> Result<TensorType, Diagnostic> {
        Ok(self.fb_ref(span)?.func.ty(v).clone())
    }

    fn tensor_arg(&mut self, a: &ArgVal) -> Result<ValueId, Diagnostic> {
        self.need_tensor(&a.value, a.span)
    }

    /// A shape: from an explicit argument, or the param being initialized.
    fn target_shape(&self, given: Option<ArgVal>, span: Span) -> Result<TensorType, Diagnostic> {
        match given {
            Some(a) => {
                let dims = ints_of(&a, "shape")?;
                if dims.iter().any(|&d| d < 0) {
                    return Err(Diagnostic::error(
                        a.span,
                        "a shape has non-negative extents",
                        "negative extent",
                    ));
                }
                Ok(TensorType::new(
                    DType::F32,
                    dims.into_iter().map(|d| d as usize).collect::<Vec<_>>(),
                ))
            }
            None => self
                .init_target
                .as_ref()
                .map(|(t, _)| t.clone())
                .ok_or_else(|| {
                    Diagnostic::error(
                        span,
                        "no shape: give one, or use this in a param's initializer",
                        "shape unknown",
                    )
                    .with_help("e.g. `zeros([4, 8])`")
                }),
        }
    }

    /// A data input by name, created once per function.
    fn named_input(
        &mut self,
        name: &str,
        ty: TensorType,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        if let Some(i) = self.fb_ref(span)?.func.input(name) {
            return Ok(i.value);
        }
        let loc = self.loc(span);
        let fb = self.fb_mut(span)?;
        let v = fb.func.add_input(name, InputKind::Data, ty, Some(loc));
        fb.origins.push(span);
        Ok(v)
    }

    fn next_stream(&mut self) -> u64 {
        self.stream += 1;
        let path = self
            .init_target
            .as_ref()
            .map_or("forward", |(_, p)| p.as_str())
            .to_string();
        fnv(&format!("{path}#{}", self.stream)) >> 1
    }

    fn random(
        &mut self,
        dist: Distribution,
        ty: TensorType,
        span: Span,
    ) -> Result<Value, Diagnostic> {
        let seed = self.named_input("seed", TensorType::scalar(DType::I64), span)?;
        let stream = self.next_stream();
        Ok(Value::Tensor(self.emit(
            Op::Random { dist, stream },
            &[seed],
            Some(ty),
            span,
        )?))
    }

    /// A draw from PyTorch's CPU generator (`torch_uniform`, `torch_randperm`): arguments
    /// `seed` (at position `at`), `skip` and `shape` after the distribution's own; `dist`
    /// checks those against the target type and gives the distribution, or the reason not.
    fn torch_generator(
        &mut self,
        a: &mut Args,
        at: usize,
        span: Span,
        dist: impl FnOnce(&TensorType) -> Result<Distribution, String>,
    ) -> Result<Value, Diagnostic> {
        let seed_arg = a.need(at, "seed")?;
        let seed = int_of(&seed_arg, "seed")?;
        let skip = a
            .take(at + 1, "skip")
            .map(|v| int_of(&v, "skip"))
            .transpose()?
            .unwrap_or(0);
        let ty = self.target_shape(a.take(at + 2, "shape"), span)?;
        let dist = dist(&ty).map_err(|m| Diagnostic::error(span, m, "here"))?;
        if !(0..1 << 53).contains(&seed) || skip < 0 {
            return Err(Diagnostic::error(
                span,
                format!(
                    "PyTorch's generator needs 0 ≤ seed < 2⁵³ and skip ≥ 0, got seed {seed} and skip {skip}"
                ),
                "here",
            ));
        }
        let seed = self.splat(seed as f64, TensorType::scalar(DType::I64), seed_arg.span)?;
        Ok(Value::Tensor(self.emit(
            Op::Random {
                dist,
                stream: skip as u64,
            },
            &[seed],
            Some(ty),
            span,
        )?))
    }

    /// Calls a built-in.
    pub(crate) fn call_builtin(
        &mut self,
        name: &str,
        args: Vec<ArgVal>,
        span: Span,
        _callee: Span,
    ) -> Result<Value, Diagnostic> {
        let mut a = Args::new(name, args, span);
        let v = self.builtin(name, &mut a, span)?;
        a.finish()?;
        Ok(v)
    }

    fn builtin(&mut self, name: &str, a: &mut Args, span: Span) -> Result<Value, Diagnostic> {
        if let Some(u) = UnaryOp::from_name(name) {
            let x = a.need(0, "x")?;
            if let Some(f) = as_f64(&x.value) {
                if let (UnaryOp::Abs, Value::Int(i)) = (u, &x.value) {
                    return i.checked_abs().map(Value::Int).ok_or_else(|| {
                        Diagnostic::error(span, "integer overflow", "in this call")
                    });
                }
                let Some(r) = u.eval_float(f) else {
                    return Err(Diagnostic::error(
                        x.span,
                        format!("`{name}` needs a bool"),
                        "here",
                    ));
                };
                if !r.is_finite() {
                    return Err(Diagnostic::error(
                        span,
                        format!("`{name}` of {f} is not a finite number"),
                        "here",
                    ));
                }
                return Ok(Value::Float(r));
            }
            let t = self.tensor_arg(&x)?;
            return Ok(Value::Tensor(self.emit(Op::Unary(u), &[t], None, span)?));
        }
        if let Some(f) = FactorOp::from_name(name) {
            let x = a.need(0, "x")?;
            let t = self.tensor_arg(&x)?;
            return Ok(Value::Tensor(self.emit(Op::Factor(f), &[t], None, span)?));
        }
        match name {
            "pow" | "max" | "min" => {
                let (x, y) = (a.need(0, "a")?, a.need(1, "b")?);
                match (&x.value, &y.value) {
                    (Value::Int(p), Value::Int(q)) if name != "pow" => {
                        return Ok(Value::Int(if name == "max" {
                            *p.max(q)
                        } else {
                            *p.min(q)
                        }));
                    }
                    (p, q) if as_f64(p).is_some() && as_f64(q).is_some() => {
                        let (p, q) = (as_f64(p).unwrap_or(0.0), as_f64(q).unwrap_or(0.0));
                        let op = BinaryOp::from_name(name).unwrap_or(BinaryOp::Pow);
                        return Ok(Value::Float(op.eval_float(p, q).unwrap_or(f64::NAN)));
                    }
                    _ => {}
                }
                let op = match name {
                    "pow" => BinaryOp::Pow,
                    "max" => BinaryOp::Max,
                    _ => BinaryOp::Min,
                };
                let (l, r) = self.unify_pub(x.value, y.value, span, x.span, y.span)?;
                Ok(Value::Tensor(self.emit(
                    Op::Binary(op),
                    &[l, r],
                    None,
                    span,
                )?))
            }
            "sum" | "mean" | "amax" | "amin" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                let rank = self.ty(t, span)?.rank();
                let mut axes: Vec<usize> = match a.take(1, "axis") {
                    Some(ax) => ints_of(&ax, "axis")?
                        .into_iter()
                        .map(|i| axis(i, rank, ax.span))
                        .collect::<Result<_, _>>()?,
                    None => (0..rank).collect(),
                };
                axes.sort_unstable();
                axes.dedup();
                let keepdim = a
                    .take(2, "keepdim")
                    .map(|k| bool_of(&k, "keepdim"))
                    .transpose()?
                    .unwrap_or(false);
                let op = match name {
                    "sum" => ReduceOp::Sum,
                    "mean" => ReduceOp::Mean,
                    "amax" => ReduceOp::Max,
                    _ => ReduceOp::Min,
                };
                Ok(Value::Tensor(self.emit(
                    Op::Reduce { op, axes, keepdim },
                    &[t],
                    None,
                    span,
                )?))
            }
            "softmax" | "log_softmax" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                let rank = self.ty(t, span)?.rank();
                let ax = match a.take(1, "axis") {
                    Some(v) => axis(int_of(&v, "axis")?, rank, v.span)?,
                    None => axis(-1, rank, span)?,
                };
                let op = if name == "softmax" {
                    Op::Softmax { axis: ax }
                } else {
                    Op::LogSoftmax { axis: ax }
                };
                Ok(Value::Tensor(self.emit(op, &[t], None, span)?))
            }
            "reshape" => {
                let x = a.need(0, "x")?;
                let s = a.need(1, "shape")?;
                let t = self.tensor_arg(&x)?;
                let ty = self.ty(t, span)?;
                let dims = ints_of(&s, "shape")?;
                let known: i64 = dims.iter().filter(|&&d| d != -1).product();
                let holes = dims.iter().filter(|&&d| d == -1).count();
                if holes > 1 || dims.iter().any(|&d| d < -1 || d == 0) || known <= 0 {
                    return Err(Diagnostic::error(
                        s.span,
                        "a shape has positive extents and at most one -1",
                        "bad shape",
                    ));
                }
                let numel = ty.numel() as i64;
                let shape: Vec<usize> = dims
                    .iter()
                    .map(|&d| {
                        if d == -1 {
                            (numel / known) as usize
                        } else {
                            d as usize
                        }
                    })
                    .collect();
                if shape.iter().product::<usize>() as i64 != numel {
                    return Err(Diagnostic::error(
                        s.span,
                        format!("cannot reshape {ty} ({numel} elements) to {dims:?}"),
                        "element counts differ",
                    )
                    .with_label(self.origin(t), format!("this is {ty}")));
                }
                Ok(Value::Tensor(self.emit(
                    Op::Reshape,
                    &[t],
                    Some(TensorType::new(ty.dtype, shape)),
                    span,
                )?))
            }
            "flatten" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                let ty = self.ty(t, span)?;
                Ok(Value::Tensor(self.emit(
                    Op::Reshape,
                    &[t],
                    Some(TensorType::new(ty.dtype, vec![ty.numel()])),
                    span,
                )?))
            }
            "transpose" | "permute" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                let rank = self.ty(t, span)?.rank();
                let perm: Vec<usize> = if name == "transpose" {
                    let (p, q) = (a.need(1, "a")?, a.need(2, "b")?);
                    let (p, q) = (
                        axis(int_of(&p, "a")?, rank, p.span)?,
                        axis(int_of(&q, "b")?, rank, q.span)?,
                    );
                    let mut perm: Vec<usize> = (0..rank).collect();
                    perm.swap(p, q);
                    perm
                } else {
                    let p = a.need(1, "perm")?;
                    ints_of(&p, "perm")?
                        .into_iter()
                        .map(|i| axis(i, rank, p.span))
                        .collect::<Result<_, _>>()?
                };
                Ok(Value::Tensor(self.emit(
                    Op::Transpose { perm },
                    &[t],
                    None,
                    span,
                )?))
            }
            "unsqueeze" | "squeeze" => {
                let x = a.need(0, "x")?;
                let ax = a.need(1, "axis")?;
                let t = self.tensor_arg(&x)?;
                let ty = self.ty(t, span)?;
                let mut shape = ty.shape.clone();
                if name == "unsqueeze" {
                    let i = axis(int_of(&ax, "axis")?, ty.rank() + 1, ax.span)?;
                    shape.insert(i, 1);
                } else {
                    let i = axis(int_of(&ax, "axis")?, ty.rank(), ax.span)?;
                    if shape[i] != 1 {
                        return Err(Diagnostic::error(
                            ax.span,
                            format!("axis {i} of {ty} has extent {}, not 1", shape[i]),
                            "cannot squeeze",
                        ));
                    }
                    shape.remove(i);
                }
                Ok(Value::Tensor(self.emit(
                    Op::Reshape,
                    &[t],
                    Some(TensorType::new(ty.dtype, shape)),
                    span,
                )?))
            }
            "broadcast" => {
                let x = a.need(0, "x")?;
                let s = a.need(1, "shape")?;
                let t = self.tensor_arg(&x)?;
                let dims: Vec<usize> = ints_of(&s, "shape")?
                    .into_iter()
                    .map(|d| d.max(0) as usize)
                    .collect();
                let ty = self.ty(t, span)?;
                if !graft_ir::broadcastable(&ty.shape, &dims) {
                    return Err(Diagnostic::error(
                        s.span,
                        format!("{ty} does not broadcast to {dims:?}"),
                        "target shape",
                    )
                    .with_label(self.origin(t), format!("this is {ty}")));
                }
                Ok(Value::Tensor(self.emit(
                    Op::Broadcast,
                    &[t],
                    Some(TensorType::new(ty.dtype, dims)),
                    span,
                )?))
            }
            "concat" => {
                let xs = a.need(0, "xs")?;
                let Value::List(items) = &xs.value else {
                    return Err(Diagnostic::error(
                        xs.span,
                        "`concat` takes a list of tensors",
                        "not a list",
                    ));
                };
                let mut ts = Vec::new();
                for v in items {
                    ts.push(self.need_tensor(v, xs.span)?);
                }
                let Some(&first) = ts.first() else {
                    return Err(Diagnostic::error(
                        xs.span,
                        "`concat` needs at least one tensor",
                        "empty list",
                    ));
                };
                let rank = self.ty(first, span)?.rank();
                let ax = match a.take(1, "axis") {
                    Some(v) => axis(int_of(&v, "axis")?, rank, v.span)?,
                    None => 0,
                };
                Ok(Value::Tensor(self.emit(
                    Op::Concat { axis: ax },
                    &ts,
                    None,
                    span,
                )?))
            }
            "slice" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                let ty = self.ty(t, span)?;
                let axv = a.need(1, "axis")?;
                let ax = axis(int_of(&axv, "axis")?, ty.rank(), axv.span)?;
                let n = ty.shape[ax] as i64;
                let norm = |i: i64| if i < 0 { i + n } else { i };
                let start = a
                    .take(2, "start")
                    .map(|v| int_of(&v, "start"))
                    .transpose()?
                    .map_or(0, norm);
                let end = a
                    .take(3, "end")
                    .map(|v| int_of(&v, "end"))
                    .transpose()?
                    .map_or(n, norm);
                if !(0 <= start && start <= end && end <= n) {
                    return Err(Diagnostic::error(
                        span,
                        format!("slice {start}..{end} is outside axis {ax} (extent {n})"),
                        "out of range",
                    )
                    .with_label(self.origin(t), format!("this is {ty}")));
                }
                Ok(Value::Tensor(self.emit(
                    Op::Slice {
                        axis: ax,
                        start: start as usize,
                        end: end as usize,
                    },
                    &[t],
                    None,
                    span,
                )?))
            }
            "solve" => {
                let (m, r) = (a.need(0, "a")?, a.need(1, "b")?);
                let (m, r) = (self.tensor_arg(&m)?, self.tensor_arg(&r)?);
                Ok(Value::Tensor(self.emit(Op::Solve, &[m, r], None, span)?))
            }
            "sort" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                let rank = self.ty(t, span)?.rank();
                let ax = match a.take(1, "axis") {
                    Some(v) => axis(int_of(&v, "axis")?, rank, v.span)?,
                    None => axis(-1, rank, span)?,
                };
                Ok(Value::Tensor(self.emit(
                    Op::Sort { axis: ax },
                    &[t],
                    None,
                    span,
                )?))
            }
            "grad" => {
                let x = a.need(0, "param")?;
                let t = self.tensor_arg(&x)?;
                Ok(Value::Tensor(self.grad_of(t, span)?))
            }
            "across" => Err(Diagnostic::error(
                span,
                "`across` is only available in `after_step`",
                "here",
            )),
            "gather" => {
                let table = a.need(0, "table")?;
                let idx = a.need(1, "indices")?;
                let t = self.tensor_arg(&table)?;
                let i = self.tensor_arg(&idx)?;
                let rank = self.ty(t, span)?.rank();
                let ax = match a.take(2, "axis") {
                    Some(v) => axis(int_of(&v, "axis")?, rank, v.span)?,
                    None => 0,
                };
                Ok(Value::Tensor(self.emit(
                    Op::Gather { axis: ax },
                    &[t, i],
                    None,
                    span,
                )?))
            }
            "select" => {
                let c = a.need(0, "cond")?;
                let x = a.need(1, "a")?;
                let y = a.need(2, "b")?;
                let ct = self.tensor_arg(&c)?;
                let cty = self.ty(ct, span)?;
                let xt = self.as_tensor(&x.value, x.span)?;
                let yt = self.as_tensor(&y.value, y.span)?;
                let dtype = match (xt, yt) {
                    (Some(t), _) | (None, Some(t)) => self.ty(t, span)?.dtype,
                    (None, None) => DType::F32,
                };
                let mut vals = Vec::new();
                for (arg, t) in [(&x, xt), (&y, yt)] {
                    vals.push(match t {
                        Some(t) => t,
                        None => {
                            let f = float_of(arg, "value")?;
                            self.splat(f, TensorType::scalar(dtype), arg.span)?
                        }
                    });
                }
                let mut shape = cty.shape.clone();
                for v in &vals {
                    let s = self.ty(*v, span)?.shape;
                    shape = broadcast_shape(&shape, &s).ok_or_else(|| {
                        Diagnostic::error(
                            span,
                            "the operands of `select` do not broadcast to one shape",
                            "here",
                        )
                    })?;
                }
                let c2 = self.broadcast_to(ct, &shape, c.span)?;
                let a2 = self.broadcast_to(vals[0], &shape, x.span)?;
                let b2 = self.broadcast_to(vals[1], &shape, y.span)?;
                Ok(Value::Tensor(self.emit(
                    Op::Select,
                    &[c2, a2, b2],
                    None,
                    span,
                )?))
            }
            "cast" => {
                let x = a.need(0, "x")?;
                let d = dtype_of(&a.need(1, "dtype")?)?;
                let t = self.tensor_arg(&x)?;
                let ty = self.ty(t, span)?;
                if ty.dtype == d {
                    return Ok(Value::Tensor(t));
                }
                Ok(Value::Tensor(self.emit(
                    Op::Cast,
                    &[t],
                    Some(ty.with_dtype(d)),
                    span,
                )?))
            }
            "stop_grad" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                Ok(Value::Tensor(self.emit(Op::StopGrad, &[t], None, span)?))
            }
            "dropout" => {
                let x = a.need(0, "x")?;
                let p = a.need(1, "p")?;
                let pf = float_of(&p, "p")?;
                if !(0.0..1.0).contains(&pf) {
                    return Err(Diagnostic::error(
                        p.span,
                        format!("dropout probability {pf} is outside [0, 1)"),
                        "bad probability",
                    ));
                }
                let t = self.tensor_arg(&x)?;
                if pf == 0.0 {
                    return Ok(Value::Tensor(t));
                }
                let seed =
                    self.named_input("dropout_seed", TensorType::scalar(DType::I64), span)?;
                let stream = self.next_stream();
                Ok(Value::Tensor(self.emit(
                    Op::Dropout { p: pf, stream },
                    &[t, seed],
                    None,
                    span,
                )?))
            }
            "arange" => {
                let first = a.need(0, "start")?;
                let (start, end) = match a.take(1, "end") {
                    Some(e) => (int_of(&first, "start")?, int_of(&e, "end")?),
                    None => (0, int_of(&first, "end")?),
                };
                let step = a
                    .take(2, "step")
                    .map(|s| int_of(&s, "step"))
                    .transpose()?
                    .unwrap_or(1);
                let dtype = a
                    .take(3, "dtype")
                    .map(|d| dtype_of(&d))
                    .transpose()?
                    .unwrap_or(DType::F32);
                if step <= 0 || end <= start {
                    return Err(Diagnostic::error(
                        span,
                        format!("arange({start}, {end}, {step}) is empty"),
                        "empty range",
                    ));
                }
                let n = ((end - start) + step - 1) / step;
                let ty = TensorType::new(dtype, vec![n as usize]);
                let mut t = self.emit(Op::Iota { axis: 0 }, &[], Some(ty.clone()), span)?;
                if step != 1 {
                    let s = self.splat(step as f64, ty.clone(), span)?;
                    t = self.emit(Op::Binary(BinaryOp::Mul), &[t, s], None, span)?;
                }
                if start != 0 {
                    let s = self.splat(start as f64, ty, span)?;
                    t = self.emit(Op::Binary(BinaryOp::Add), &[t, s], None, span)?;
                }
                Ok(Value::Tensor(t))
            }
            "zeros" | "ones" | "full" => {
                let shape = a.take(0, "shape");
                let value = if name == "full" {
                    float_of(&a.need(1, "value")?, "value")?
                } else if name == "ones" {
                    1.0
                } else {
                    0.0
                };
                let dtype = a.take(2, "dtype").map(|d| dtype_of(&d)).transpose()?;
                let mut ty = self.target_shape(shape, span)?;
                if let Some(d) = dtype {
                    ty.dtype = d;
                }
                Ok(Value::Tensor(self.splat(value, ty, span)?))
            }
            "kaiming_uniform" => {
                let av = a
                    .take(0, "a")
                    .map(|v| float_of(&v, "a"))
                    .transpose()?
                    .unwrap_or(5f64.sqrt());
                let ty = self.target_shape(a.take(1, "shape"), span)?;
                if ty.rank() < 2 {
                    return Err(Diagnostic::error(
                        span,
                        format!(
                            "kaiming_uniform needs a tensor of rank 2 or more, the target is {ty}"
                        ),
                        "fan-in undefined",
                    ));
                }
                // torch.nn.init.kaiming_uniform_: fan_in = size(1) · receptive field.
                let fan_in = ty.shape[1] * ty.shape[2..].iter().product::<usize>();
                let gain = (2.0 / (1.0 + av * av)).sqrt();
                let bound = gain * (3.0 / fan_in as f64).sqrt();
                self.random(
                    Distribution::Uniform {
                        lo: -bound,
                        hi: bound,
                    },
                    ty,
                    span,
                )
            }
            "normal" => {
                let mean = a
                    .take(0, "mean")
                    .map(|v| float_of(&v, "mean"))
                    .transpose()?
                    .unwrap_or(0.0);
                let std = a
                    .take(1, "std")
                    .map(|v| float_of(&v, "std"))
                    .transpose()?
                    .unwrap_or(1.0);
                let ty = self.target_shape(a.take(2, "shape"), span)?;
                if std < 0.0 {
                    return Err(Diagnostic::error(
                        span,
                        "the standard deviation must be non-negative",
                        "here",
                    ));
                }
                self.random(Distribution::Normal { mean, std }, ty, span)
            }
            "uniform" => {
                let lo = a
                    .take(0, "lo")
                    .map(|v| float_of(&v, "lo"))
                    .transpose()?
                    .unwrap_or(0.0);
                let hi = a
                    .take(1, "hi")
                    .map(|v| float_of(&v, "hi"))
                    .transpose()?
                    .unwrap_or(1.0);
                let ty = self.target_shape(a.take(2, "shape"), span)?;
                if hi < lo {
                    return Err(Diagnostic::error(
                        span,
                        format!("uniform({lo}, {hi}) has hi < lo"),
                        "here",
                    ));
                }
                self.random(Distribution::Uniform { lo, hi }, ty, span)
            }
            "torch_uniform" => {
                // PyTorch's CPU generator, seeded by the source rather than the run's seed:
                // `torch.Generator().manual_seed(seed)`, `skip` draws made before this tensor.
                let lo = float_of(&a.need(0, "lo")?, "lo")?;
                let hi = float_of(&a.need(1, "hi")?, "hi")?;
                self.torch_generator(a, 2, span, |ty| {
                    (hi >= lo)
                        .then_some(Distribution::TorchUniform { lo, hi })
                        .ok_or_else(|| format!("torch_uniform({lo}, {hi}) into {ty} needs lo ≤ hi"))
                })
            }
            "torch_randperm" => {
                // `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`, its first
                // entries: as many as the target's one axis holds.
                let n = int_of(&a.need(0, "n")?, "n")?;
                self.torch_generator(a, 1, span, |ty| {
                    let max = graft_ir::TORCH_RANDPERM_MAX;
                    (ty.rank() == 1 && ty.numel() as i64 <= n && (1..=max).contains(&n))
                        .then_some(Distribution::TorchRandperm { n })
                        .ok_or_else(|| {
                            format!(
                                "torch_randperm({n}) into {ty} needs a rank-1 target of at most n entries and 1 ≤ n ≤ {max}"
                            )
                        })
                })
            }
            "randint" => {
                let lo = int_of(&a.need(0, "lo")?, "lo")?;
                let hi = int_of(&a.need(1, "hi")?, "hi")?;
                let shape = a.need(2, "shape")?;
                let dims: Vec<usize> = ints_of(&shape, "shape")?
                    .into_iter()
                    .map(|d| d.max(0) as usize)
                    .collect();
                if hi <= lo {
                    return Err(Diagnostic::error(
                        span,
                        format!("randint({lo}, {hi}) is an empty range"),
                        "here",
                    ));
                }
                self.random(
                    Distribution::Int { lo, hi },
                    TensorType::new(DType::I64, dims),
                    span,
                )
            }
            "dim" | "shape" | "numel" | "rank" => {
                let x = a.need(0, "x")?;
                let t = self.tensor_arg(&x)?;
                let ty = self.ty(t, span)?;
                Ok(match name {
                    "dim" => {
                        let ax = a.need(1, "axis")?;
                        let i = axis(int_of(&ax, "axis")?, ty.rank(), ax.span)?;
                        Value::Int(ty.shape[i] as i64)
                    }
                    "shape" => {
                        Value::List(ty.shape.iter().map(|&d| Value::Int(d as i64)).collect())
                    }
                    "numel" => Value::Int(ty.numel() as i64),
                    _ => Value::Int(ty.rank() as i64),
                })
            }
            "target_shape" => match &self.init_target {
                Some((ty, _)) => Ok(shape_list(&ty.shape)),
                None => Err(Diagnostic::error(
                    span,
                    "`target_shape()` is the shape of the tensor an initializer fills",
                    "not in an initializer",
                )),
            },
            "shared_shape" => {
                let x = a.need(0, "x")?;
                match x.value {
                    Value::Part(id, _) | Value::Decl(id) => {
                        Ok(shape_list(&self.decls[id].ty.shape))
                    }
                    _ => Err(Diagnostic::error(
                        x.span,
                        format!(
                            "`shared_shape` takes a shared tensor, this is {}",
                            x.value.kind()
                        ),
                        "not a shared tensor",
                    )),
                }
            }
            "int" | "float" | "floor" => {
                let x = a.need(0, "x")?;
                let f = float_of(&x, "x")?;
                Ok(match name {
                    "float" => Value::Float(f),
                    _ if f.abs() < 9e15 => Value::Int(f.floor() as i64),
                    _ => {
                        return Err(Diagnostic::error(
                            x.span,
                            "the value is too large for an int",
                            "here",
                        ));
                    }
                })
            }
            _ => Err(Diagnostic::error(
                span,
                format!("internal error: built-in `{name}` has no implementation"),
                "here",
            )),
        }
    }

    /// Broadcasting unification for built-ins.
    fn unify_pub(
        &mut self,
        l: Value,
        r: Value,
        span: Span,
        lspan: Span,
        rspan: Span,
    ) -> Result<(ValueId, ValueId), Diagnostic> {
        // Reuse `a + b`'s rules by building both operands as tensors of one type.
        let lt = self.as_tensor(&l, lspan)?;
        let rt = self.as_tensor(&r, rspan)?;
        let like = match (lt, rt) {
            (Some(t), _) | (None, Some(t)) => self.ty(t, span)?,
            (None, None) => TensorType::scalar(DType::F32),
        };
        let mk = |el: &mut Self,
                  v: &Value,
                  t: Option<ValueId>,
                  s: Span|
         -> Result<ValueId, Diagnostic> {
            match t {
                Some(t) => Ok(t),
                None => {
                    let f = as_f64(v).ok_or_else(|| {
                        Diagnostic::error(
                            s,
                            format!("expected a number or tensor, found {}", v.kind()),
                            "here",
                        )
                    })?;
                    el.splat(f, TensorType::scalar(like.dtype), s)
                }
            }
        };
        let a = mk(self, &l, lt, lspan)?;
        let b = mk(self, &r, rt, rspan)?;
        let (sa, sb) = (self.ty(a, span)?.shape, self.ty(b, span)?.shape);
        let shape = broadcast_shape(&sa, &sb).ok_or_else(|| {
            Diagnostic::error(
                span,
                format!(
                    "shapes {} and {} do not broadcast",
                    graft_ir::shape_str(&sa),
                    graft_ir::shape_str(&sb)
                ),
                "incompatible shapes",
            )
        })?;
        Ok((
            self.broadcast_to(a, &shape, lspan)?,
            self.broadcast_to(b, &shape, rspan)?,
        ))
    }
}
