//! Values of the elaborator: compile-time scalars and lists, tensors in the function being
//! built, declared weights/params, module instances, and callables.

use graft_ir::{DType, ValueId};
use std::collections::{BTreeMap, HashMap};

/// Index of a declared weight or param in [`super::Elaborator::decls`].
pub type DeclId = usize;
/// Index of a module instance in [`super::Elaborator::instances`].
pub type InstId = usize;

/// A value during elaboration.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A compile-time integer.
    Int(i64),
    /// A compile-time float.
    Float(f64),
    /// A compile-time boolean.
    Bool(bool),
    /// A compile-time string.
    Str(String),
    /// A dtype name used as a value (`cast(x, bf16)`).
    DType(DType),
    /// A compile-time list.
    List(Vec<Value>),
    /// A tensor in the function being built.
    Tensor(ValueId),
    /// A declared weight or param; becomes a tensor when used in a function.
    Decl(DeclId),
    /// A batch input a module declares (`input task: [batch] i64`), by name and type; an
    /// input of the function that uses it.
    Batch(String, graft_ir::TensorType),
    /// The leading block of a `shared` tensor that one instance declared with this shape.
    Part(DeclId, Vec<usize>),
    /// A module instance; calling it runs its forward (through its adapters).
    Inst(InstId),
    /// Indexed instances `layers[i]`.
    Group(BTreeMap<i64, Value>),
    /// `base` inside an adapter: the instance with the adapters below `level`.
    Base(InstId, usize),
    /// A global definition (fn, module or adapter) by name.
    Def(String),
}

impl Value {
    /// A short description of the value's kind for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a bool",
            Value::Str(_) => "a string",
            Value::DType(_) => "a dtype",
            Value::List(_) => "a list",
            Value::Tensor(_) | Value::Decl(_) | Value::Part(..) | Value::Batch(..) => "a tensor",
            Value::Inst(_) | Value::Base(..) => "a module instance",
            Value::Group(_) => "a group of instances",
            Value::Def(_) => "a definition",
        }
    }
}

/// Names visible in a scope: a shared base (an instance's members or the globals) plus local
/// frames pushed by blocks, loops and calls.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// The captured environment (module parameters, members).
    pub base: HashMap<String, Value>,
    /// Local frames, innermost last.
    pub frames: Vec<HashMap<String, Value>>,
}

impl Env {
    /// A scope over `base` with one empty frame.
    pub fn new(base: HashMap<String, Value>) -> Env {
        Env {
            base,
            frames: vec![HashMap::new()],
        }
    }

    /// Looks a name up, innermost first.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.frames
            .iter()
            .rev()
            .find_map(|f| f.get(name))
            .or_else(|| self.base.get(name))
    }

    /// Binds a name in the innermost frame.
    pub fn bind(&mut self, name: &str, v: Value) {
        if let Some(f) = self.frames.last_mut() {
            f.insert(name.to_string(), v);
        } else {
            self.base.insert(name.to_string(), v);
        }
    }

    /// Rebinds an existing local; returns false if no frame has it.
    pub fn assign(&mut self, name: &str, v: Value) -> bool {
        for f in self.frames.iter_mut().rev() {
            if let Some(slot) = f.get_mut(name) {
                *slot = v;
                return true;
            }
        }
        false
    }

    /// Every visible name (for "did you mean" hints).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.base.keys().cloned().collect();
        for f in &self.frames {
            out.extend(f.keys().cloned());
        }
        out
    }
}
