//! graft's tensor IR: a typed SSA graph with static shapes.
//!
//! A [`Module`] holds functions (`forward`, `init`, and later `train_step`); each
//! [`Function`] is a list of [`Node`]s in topological order, node `i` defining value `%i`.
//! Inputs are `input` nodes that name a weight, a trainable param, a batch input or training
//! state. Every op's typing rule lives in [`op`]; the [`verify`] pass checks a whole module
//! against them, and [`text`] gives a text form with `print(parse(s)) == s`.

pub mod attr;
pub mod build;
pub mod class;
pub mod decode;
pub mod dtype;
pub mod graph;
pub mod op;
pub mod rewrite;
pub mod scalar;
pub mod text;
pub mod verify;

pub use attr::{AttrValue, Attrs};
pub use build::Emitter;
pub use class::OpClass;
pub use dtype::{DType, Shape, TensorType, shape_str};
pub use graph::{Function, InputRef, Loc, Module, Node, Output, ValueId};
pub use op::{
    BinaryOp, Distribution, FactorOp, InputKind, Op, QuantFormat, QuantPart, ReduceOp,
    TORCH_RANDPERM_MAX, TypeError, UnaryOp, broadcastable,
};
pub use text::{ParseError, parse_module, print_function, print_module};
pub use verify::{VerifyError, verify_function, verify_module};
