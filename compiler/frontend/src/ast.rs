//! The graft AST: every node carries the [`Span`] of the source text it came from, and
//! definitions keep their `///` doc comments.

use graft_ir::DType;

/// Index of a loaded source file in the [`crate::source::SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// The file.
    pub file: FileId,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

/// A name with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// A string literal with its span (the span includes the quotes).
#[derive(Clone, Debug, PartialEq)]
pub struct StrLit {
    /// The unescaped text.
    pub value: String,
    /// Where it is written.
    pub span: Span,
}

/// One parsed source file.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceFile {
    /// The file.
    pub file: FileId,
    /// Its items, in order.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `use models.llama`, `use peft.{lora, dora}`, `use "./mine.graft"`.
    Use(UseItem),
    /// `const name = expr`.
    Const(ConstItem),
    /// `fn name(params) = expr`.
    Fn(FnDef),
    /// `module name(params) { members }` or `adapter name(params) wraps kind(names) { ... }`.
    Module(ModuleDef),
    /// `model name = kind(args) weights "..." quantize fmt(args) at target`.
    Model(ModelDecl),
    /// `adapt model { adapter(args) at target ... }`.
    Adapt(AdaptBlock),
    /// `train { key value ... }`.
    Train(TrainBlock),
}

/// What a `use` names.
#[derive(Clone, Debug, PartialEq)]
pub enum UseTarget {
    /// A dotted path, possibly ending in a group: `peft.{lora, dora}` is `["peft"]` with
    /// group `[lora, dora]`.
    Path {
        /// The dotted prefix.
        path: Vec<Ident>,
        /// The names in braces, if any.
        group: Vec<Ident>,
    },
    /// A file path in quotes, relative to the importing file.
    File(StrLit),
}

/// A `use` item.
#[derive(Clone, Debug, PartialEq)]
pub struct UseItem {
    /// What is imported.
    pub target: UseTarget,
    /// The whole item.
    pub span: Span,
}

/// `const name = expr`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstItem {
    /// Doc comment lines.
    pub doc: Vec<String>,
    /// The name.
    pub name: Ident,
    /// The value.
    pub value: Expr,
    /// The whole item.
    pub span: Span,
}

/// A scalar parameter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarType {
    /// Compile-time integer.
    Int,
    /// Compile-time float.
    Float,
    /// Compile-time boolean.
    Bool,
    /// Compile-time string.
    String,
}

impl ScalarType {
    /// The type's name in source.
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::Int => "int",
            ScalarType::Float => "float",
            ScalarType::Bool => "bool",
            ScalarType::String => "string",
        }
    }
}

/// A tensor type annotation: `[B, S, hidden] f32`. Dimension expressions that are a bare,
/// unbound name bind that name to the actual extent; the others are checked.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorTypeAnn {
    /// `[.., d]`: any number of leading axes of any extent before `dims` (parameter
    /// annotations only).
    pub rest: bool,
    /// One expression per (trailing) axis.
    pub dims: Vec<Expr>,
    /// The element type, if stated.
    pub dtype: Option<DType>,
    /// The whole annotation.
    pub span: Span,
}

/// A type annotation.
#[derive(Clone, Debug, PartialEq)]
pub enum TypeAnn {
    /// A compile-time scalar.
    Scalar(ScalarType, Span),
    /// A tensor.
    Tensor(TensorTypeAnn),
}

/// A function or forward parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    /// The name.
    pub name: Ident,
    /// Its type, if annotated.
    pub ty: Option<TypeAnn>,
    /// Its default value.
    pub default: Option<Expr>,
}

/// `fn name(params) body`, and module `forward(params) body`.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    /// Doc comment lines.
    pub doc: Vec<String>,
    /// The name (`forward` for a module's forward).
    pub name: Ident,
    /// The parameters.
    pub params: Vec<FnParam>,
    /// The body.
    pub body: Block,
    /// The whole definition.
    pub span: Span,
}

/// A module or adapter parameter: `r: int = 8`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// The name.
    pub name: Ident,
    /// Its scalar type.
    pub ty: ScalarType,
    /// The key that sets it from a Hugging Face `config.json` (`hidden: int as
    /// "hidden_size"`), for `model m = kind from "folder"`.
    pub config_key: Option<StrLit>,
    /// Its default value.
    pub default: Option<Expr>,
}

/// `wraps linear(in, out)`: the wrapped module kind and the parameters of it the adapter sees.
#[derive(Clone, Debug, PartialEq)]
pub struct Wraps {
    /// The wrapped module kind.
    pub kind: Ident,
    /// Names of the wrapped module's parameters made visible to the adapter.
    pub names: Vec<Ident>,
}

/// A `module` or an `adapter` definition.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleDef {
    /// Doc comment lines.
    pub doc: Vec<String>,
    /// The name.
    pub name: Ident,
    /// Compile-time parameters.
    pub params: Vec<Param>,
    /// For adapters: what they wrap.
    pub wraps: Option<Wraps>,
    /// The body.
    pub members: Vec<Member>,
    /// The whole definition.
    pub span: Span,
}

/// A member of a module body.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Doc comment lines.
    pub doc: Vec<String>,
    /// What it is.
    pub kind: MemberKind,
    /// The whole member.
    pub span: Span,
}

/// The kinds of module member.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberKind {
    /// `weight W: [out, in] as "weight"`: a frozen tensor loaded from the weights file.
    Weight {
        /// Name inside graft source.
        name: Ident,
        /// Its shape (and dtype).
        ty: TensorTypeAnn,
        /// Its path segment in the checkpoint, if different from `name`.
        rename: Option<StrLit>,
    },
    /// `param A: [r, in] as "lora_A.weight" = init`: a trainable tensor.
    Param {
        /// Name inside graft source.
        name: Ident,
        /// Its shape (and dtype).
        ty: TensorTypeAnn,
        /// Its path segment, if different from `name`.
        rename: Option<StrLit>,
        /// The initializer expression.
        init: Expr,
    },
    /// `shared P: [r, in] as "/vera_A" = init`: a frozen tensor computed by `@init`, one per
    /// path however many instances declare it; it is as large as the largest declaration
    /// along each axis, and each instance reads its leading block.
    Shared {
        /// Name inside graft source.
        name: Ident,
        /// This instance's shape (and dtype).
        ty: TensorTypeAnn,
        /// Its path segment (`/…` for a path from the root, as sharing needs).
        rename: Option<StrLit>,
        /// The initializer expression, evaluated once for the whole tensor.
        init: Expr,
    },
    /// `buffer P: [n] i64 = init`: a frozen tensor of this instance computed by `@init`
    /// (PyTorch's `register_buffer`): read like a weight, never trained, not saved.
    Buffer {
        /// Name inside graft source.
        name: Ident,
        /// Its shape (and dtype).
        ty: TensorTypeAnn,
        /// Its path segment, if different from `name`.
        rename: Option<StrLit>,
        /// The initializer expression.
        init: Expr,
    },
    /// `state S: [r, in]`: a per-instance tensor of training state, zero before the first
    /// step, read and given a new value by `after_step`, saved in checkpoints (never in the
    /// adapter file).
    State {
        /// Name inside graft source.
        name: Ident,
        /// Its shape (and dtype).
        ty: TensorTypeAnn,
        /// Its path segment, if different from `name`.
        rename: Option<StrLit>,
    },
    /// `input name: [dims] dtype`: a batch input the module reads (a task or language id),
    /// one input of the forward for every instance that names it.
    Input {
        /// Its name, the batch input's.
        name: Ident,
        /// Its shape (and dtype).
        ty: TensorTypeAnn,
    },
    /// `penalty expr`: a scalar the training loss adds, once per instance.
    Penalty(Expr),
    /// `after_step(step) { ... }`: runs after every optimizer step with the updated params,
    /// their gradients (`grad(p)`) and the states; assigning a param or state gives its new
    /// value. Statements run in lockstep over every instance of the adapter, so `across(x)`
    /// lists a name's value in each of them.
    AfterStep(FnDef),
    /// `peft_mask "rank_pattern" at E { A: 0, E: 0, B: 1 }`: a PEFT folder whose config's
    /// `rank_pattern` maps E's path to a list of bools stores A, E and B holding only the
    /// true indices along the given axes; they load to full size with zeros elsewhere.
    PeftMask {
        /// The config field holding the masks, keyed by path.
        field: StrLit,
        /// The tensor whose path keys this module's mask.
        key: Ident,
        /// Each cut tensor and its axis.
        axes: Vec<Arg>,
    },
    /// `peft_stack "prompt_embeddings" { K: 1, V: 1 }`: PEFT stores these params of every
    /// instance of the adapter as one root tensor under that key, concatenated along the
    /// given axis in instance order (and member order within one); they load back split.
    PeftStack {
        /// The PEFT key of the whole tensor.
        key: StrLit,
        /// Each part and the axis it is concatenated along.
        parts: Vec<Arg>,
    },
    /// `unfreeze W`: the wrapped module's weights become trainable.
    Unfreeze(Vec<Ident>),
    /// `replace W = value`: `@init` computes the wrapped module's frozen weight `W` anew
    /// (after every initializer, which `value` may read), and everything reads the new value.
    Replace {
        /// The wrapped module's weight.
        name: Ident,
        /// Its new value.
        value: Expr,
    },
    /// `require cond, "message"`: elaboration stops with `message` at this member, and the
    /// place the module or adapter was instantiated, when the compile-time `cond` is false.
    Require {
        /// The condition.
        cond: Expr,
        /// What is wrong when it fails.
        message: StrLit,
    },
    /// `let name = expr` (compile time).
    Let {
        /// The name.
        name: Ident,
        /// The value.
        value: Expr,
    },
    /// `for i in lo..hi { members }`, unrolled.
    For {
        /// Loop variable.
        var: Ident,
        /// First value.
        lo: Expr,
        /// One past the last value.
        hi: Expr,
        /// Body.
        body: Vec<Member>,
    },
    /// `if cond { members } else { members }`, resolved at compile time.
    If {
        /// The condition.
        cond: Expr,
        /// Members when true.
        then: Vec<Member>,
        /// Members when false.
        otherwise: Vec<Member>,
    },
    /// `forward(params) body`.
    Forward(FnDef),
    /// `peft "LORA" { r: r, lora_alpha: alpha }`: how the adapter is described in Hugging Face
    /// PEFT's `adapter_config.json`.
    Peft {
        /// PEFT's `peft_type`.
        peft_type: StrLit,
        /// Config fields, evaluated per adapted module.
        fields: Vec<Arg>,
    },
    /// `name = kind(args)`, `name[i] = kind(args)` or `name as "seg" = kind(args)`;
    /// `output` marks the output head.
    Instance {
        /// The instance name.
        name: Ident,
        /// Index for `name[i]`; the path segment becomes `name.i`.
        index: Option<Expr>,
        /// Marked `output` (excluded from `all-linear`).
        output: bool,
        /// `as "seg"`: the path segment when it differs from the name (a checkpoint's name
        /// that is a graft keyword, like Hugging Face BERT's `attention.output`).
        rename: Option<StrLit>,
        /// The constructor call.
        value: Expr,
    },
}

/// A target pattern, with PEFT's `target_modules` semantics.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetKind {
    /// A string: a regex that must match the whole module path; `"all-linear"` is special.
    Regex(String),
    /// A list of names: a path equal to a name or ending in `.name`.
    Names(Vec<StrLit>),
}

/// A target pattern with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The pattern.
    pub kind: TargetKind,
    /// Where it is written.
    pub span: Span,
}

/// `quantize nf4(block: 64) at target`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeClause {
    /// The format call.
    pub format: Expr,
    /// What it applies to.
    pub target: Target,
    /// The whole clause.
    pub span: Span,
}

/// `model base = llama(...) weights "..." quantize ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDecl {
    /// Doc comment lines.
    pub doc: Vec<String>,
    /// The model's name in the spec.
    pub name: Ident,
    /// The constructor call.
    pub value: Expr,
    /// The weights file.
    pub weights: Option<StrLit>,
    /// A Hugging Face model folder (`from "path"`): its `config.json` sets the module's
    /// parameters that name a config key, and its `model.safetensors` is the weights file
    /// unless `weights` says otherwise.
    pub from: Option<StrLit>,
    /// Quantization clauses.
    pub quantize: Vec<QuantizeClause>,
    /// The whole item.
    pub span: Span,
}

/// `where "pattern" { r: 16 }`: per-module argument overrides, like PEFT's `rank_pattern`.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// The pattern, matched as `(.*\.)?(pattern)$`.
    pub pattern: StrLit,
    /// Replacement arguments.
    pub args: Vec<Arg>,
    /// The whole clause.
    pub span: Span,
}

/// `lora(r: 16) at target where ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptRule {
    /// The adapter call.
    pub adapter: Expr,
    /// What it applies to.
    pub target: Target,
    /// Per-pattern overrides.
    pub overrides: Vec<Override>,
    /// The whole rule.
    pub span: Span,
}

/// `adapt base { rules }`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptBlock {
    /// The adapted model.
    pub model: Ident,
    /// The rules, applied in order.
    pub rules: Vec<AdaptRule>,
    /// The whole block.
    pub span: Span,
}

/// One `key value` setting of a `train` block.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The key.
    pub key: Ident,
    /// The value.
    pub value: Expr,
}

/// `train { settings }`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainBlock {
    /// The settings, in order.
    pub settings: Vec<Setting>,
    /// The whole block.
    pub span: Span,
}

/// A statement block ending in an optional result expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Statements.
    pub stmts: Vec<Stmt>,
    /// The result.
    pub result: Option<Box<Expr>>,
    /// The whole block.
    pub span: Span,
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `let name: type = value`.
    Let {
        /// The name.
        name: Ident,
        /// Optional annotation, checked.
        ty: Option<TypeAnn>,
        /// The value.
        value: Expr,
    },
    /// `name = value`: rebinds a name from an enclosing scope.
    Assign {
        /// The name.
        name: Ident,
        /// The new value.
        value: Expr,
    },
    /// `for i in lo..hi { body }`, unrolled.
    For {
        /// Loop variable.
        var: Ident,
        /// First value.
        lo: Expr,
        /// One past the last value.
        hi: Expr,
        /// Body.
        body: Block,
    },
}

/// A call argument, positional or named.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The name, for `name: value`.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
    /// `@` (matrix product)
    MatMul,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::MatMul => "@",
        }
    }
}

/// Prefix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `!x`
    Not,
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is written.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// Integer literal.
    Int(i64),
    /// Float literal.
    Float(f64),
    /// Boolean literal.
    Bool(bool),
    /// String literal.
    Str(String),
    /// A name.
    Name(String),
    /// `[a, b, c]`.
    List(Vec<Expr>),
    /// `-x`, `!x`.
    Unary(UnOp, Box<Expr>),
    /// `a op b`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `x^T`: swap the last two axes.
    Transpose(Box<Expr>),
    /// `f(args)`.
    Call(Box<Expr>, Vec<Arg>),
    /// `x[i]`.
    Index(Box<Expr>, Box<Expr>),
    /// `instance.member`.
    Field(Box<Expr>, Ident),
    /// `if c { a } else { b }`.
    If(Box<Expr>, Block, Block),
    /// `{ stmts; result }`.
    Block(Block),
}

impl MemberKind {
    /// The keyword of a member only adapters may have.
    pub fn adapter_only(&self) -> Option<&'static str> {
        match self {
            MemberKind::State { .. } => Some("state"),
            MemberKind::Penalty(_) => Some("penalty"),
            MemberKind::AfterStep(_) => Some("after_step"),
            MemberKind::PeftMask { .. } => Some("peft_mask"),
            MemberKind::PeftStack { .. } => Some("peft_stack"),
            _ => None,
        }
    }
}
