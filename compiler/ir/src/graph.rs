//! Modules, functions and nodes: the IR is a list of functions, each an SSA list of nodes in
//! topological order, where node `i` defines value `%i`.

use crate::dtype::TensorType;
use crate::op::{InputKind, Op, TypeError};
use std::fmt;

/// A value: the result of node `.0` of its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    /// The node index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// A source location: file index into [`Module::files`], 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Index into the module's file table.
    pub file: u32,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub col: u32,
}

/// One SSA node: an op applied to earlier values.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Operands, all defined by earlier nodes.
    pub args: Vec<ValueId>,
    /// The result type.
    pub ty: TensorType,
    /// Where in graft source the node came from.
    pub loc: Option<Loc>,
}

/// A named function result.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// The result's name (`logits`, `loss`, or a parameter path).
    pub name: String,
    /// The returned value.
    pub value: ValueId,
}

/// A function: inputs are its `input` nodes, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// The function's name (`forward`, `init`, `train_step`).
    pub name: String,
    /// The nodes, in topological order.
    pub nodes: Vec<Node>,
    /// The results.
    pub outputs: Vec<Output>,
}

/// A view of one function input.
#[derive(Clone, Copy, Debug)]
pub struct InputRef<'a> {
    /// The input node's value.
    pub value: ValueId,
    /// The input's full name.
    pub name: &'a str,
    /// What it is.
    pub kind: InputKind,
    /// Its type.
    pub ty: &'a TensorType,
}

impl Function {
    /// An empty function.
    pub fn new(name: impl Into<String>) -> Self {
        Function {
            name: name.into(),
            nodes: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.index()].ty
    }

    /// The node defining a value.
    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    /// Appends a node whose type is inferred from its operands.
    pub fn add(
        &mut self,
        op: Op,
        args: &[ValueId],
        loc: Option<Loc>,
    ) -> Result<ValueId, TypeError> {
        self.add_typed(op, args, None, loc)
    }

    /// Appends a node; `declared` gives the type of ops that cannot infer it.
    pub fn add_typed(
        &mut self,
        op: Op,
        args: &[ValueId],
        declared: Option<TensorType>,
        loc: Option<Loc>,
    ) -> Result<ValueId, TypeError> {
        let arg_types: Vec<&TensorType> = args.iter().map(|&a| self.ty(a)).collect();
        let ty = op.result_type(&arg_types, declared.as_ref())?;
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(Node {
            op,
            args: args.to_vec(),
            ty,
            loc,
        });
        Ok(id)
    }

    /// Appends an input node.
    pub fn add_input(
        &mut self,
        name: impl Into<String>,
        kind: InputKind,
        ty: TensorType,
        loc: Option<Loc>,
    ) -> ValueId {
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(Node {
            op: Op::Input {
                name: name.into(),
                kind,
            },
            args: Vec::new(),
            ty,
            loc,
        });
        id
    }

    /// The function's inputs, in order.
    pub fn inputs(&self) -> impl Iterator<Item = InputRef<'_>> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Input { name, kind } => Some(InputRef {
                    value: ValueId(i as u32),
                    name: name.as_str(),
                    kind: *kind,
                    ty: &n.ty,
                }),
                _ => None,
            })
    }

    /// Finds an input by name.
    pub fn input(&self, name: &str) -> Option<InputRef<'_>> {
        self.inputs().find(|i| i.name == name)
    }

    /// Adds a named result.
    pub fn add_output(&mut self, name: impl Into<String>, value: ValueId) {
        self.outputs.push(Output {
            name: name.into(),
            value,
        });
    }

    /// Finds a result by name.
    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.value)
    }

    /// Appends `callee`'s nodes to this function and returns its outputs, by name. Each of
    /// the callee's inputs becomes `bind(name, kind)` when that gives a value, else this
    /// function's input of that name, else a new input like it.
    ///
    /// # Errors
    /// A bound value's type differs from the callee input's.
    pub fn inline(
        &mut self,
        callee: &Function,
        mut bind: impl FnMut(&str, InputKind) -> Option<ValueId>,
    ) -> Result<Vec<(String, ValueId)>, TypeError> {
        let mut map = Vec::with_capacity(callee.nodes.len());
        for n in &callee.nodes {
            let v = match &n.op {
                Op::Input { name, kind } => {
                    let found = bind(name, *kind).or_else(|| self.input(name).map(|i| i.value));
                    match found {
                        Some(v) if *self.ty(v) == n.ty => v,
                        Some(v) => {
                            return Err(TypeError {
                                op: "input".into(),
                                message: format!(
                                    "`{name}` of the inlined `@{}` is {}, bound to {}",
                                    callee.name,
                                    n.ty,
                                    self.ty(v)
                                ),
                                operands: Vec::new(),
                            });
                        }
                        None => self.add_input(name.clone(), *kind, n.ty.clone(), n.loc),
                    }
                }
                op => {
                    let id = ValueId(self.nodes.len() as u32);
                    self.nodes.push(Node {
                        op: op.clone(),
                        args: n.args.iter().map(|a| map[a.index()]).collect(),
                        ty: n.ty.clone(),
                        loc: n.loc,
                    });
                    id
                }
            };
            map.push(v);
        }
        Ok(callee
            .outputs
            .iter()
            .map(|o| (o.name.clone(), map[o.value.index()]))
            .collect())
    }
}

/// A compiled program: the source files its locations point into, and its functions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Module {
    /// Source file paths; [`Loc::file`] indexes this table.
    pub files: Vec<String>,
    /// The functions (`forward`, `init`, later `train_step`).
    pub functions: Vec<Function>,
}

impl Module {
    /// Finds a function by name.
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Finds a function by name, mutably.
    pub fn function_mut(&mut self, name: &str) -> Option<&mut Function> {
        self.functions.iter_mut().find(|f| f.name == name)
    }

    /// The index of `path` in the file table, adding it if new.
    pub fn file_id(&mut self, path: &str) -> u32 {
        if let Some(i) = self.files.iter().position(|f| f == path) {
            return i as u32;
        }
        self.files.push(path.to_string());
        (self.files.len() - 1) as u32
    }
}
