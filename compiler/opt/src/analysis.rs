//! The e-class analysis: every tensor class knows its type, whether it is a splat constant
//! (and of which value), and whether it is step-invariant (computed only from frozen weights
//! and constants, so a training loop can hoist it). Merging two classes of different types is
//! a bug in a rule and fails loudly.

use crate::lang::{G, op_from_leaves};
use egg::{Analysis, DidMerge, EGraph, Id};
use graft_ir::{BinaryOp, InputKind, Op, TensorType};

/// What is known about one e-class.
#[derive(Clone, Debug, PartialEq)]
pub enum Info {
    /// An attribute leaf.
    Leaf(String),
    /// A tensor.
    Tensor {
        /// Its type.
        ty: TensorType,
        /// The value of every element, when it is a splat constant.
        splat: Option<f64>,
        /// Depends only on frozen weights and constants.
        invariant: bool,
    },
    /// The root node listing a function's outputs.
    Results,
}

impl Info {
    /// The tensor type, if this is a tensor class.
    pub fn ty(&self) -> Option<&TensorType> {
        match self {
            Info::Tensor { ty, .. } => Some(ty),
            _ => None,
        }
    }

    /// The splat value, if this is a splat constant.
    pub fn splat(&self) -> Option<f64> {
        match self {
            Info::Tensor { splat, .. } => *splat,
            _ => None,
        }
    }

    /// The leaf text, if this is a leaf.
    pub fn leaf(&self) -> Option<&str> {
        match self {
            Info::Leaf(s) => Some(s),
            _ => None,
        }
    }
}

/// The analysis.
#[derive(Default, Clone, Debug)]
pub struct TensorAnalysis;

/// The e-graph type used throughout the optimizer.
pub type Graph = EGraph<G, TensorAnalysis>;

/// Splits an e-node's children into leaf texts and operand classes.
pub fn split_children<'a>(egraph: &'a Graph, children: &[Id]) -> (Vec<&'a str>, Vec<Id>) {
    let mut leaves = Vec::new();
    let mut args = Vec::new();
    for c in children {
        match &egraph[*c].data {
            Info::Leaf(s) => leaves.push(s.as_str()),
            _ => args.push(*c),
        }
    }
    (leaves, args)
}

impl Analysis<G> for TensorAnalysis {
    type Data = Info;

    fn make(egraph: &mut Graph, enode: &G, _id: Id) -> Info {
        let (name, children) = match enode {
            G::Leaf(s) => return Info::Leaf(s.to_string()),
            G::Node(name, children) => (name.as_str(), children),
        };
        if name == "results" {
            return Info::Results;
        }
        let (leaves, args) = split_children(egraph, children);
        let (op, declared) = match op_from_leaves(name, &leaves) {
            Ok(x) => x,
            Err(e) => panic!("optimizer built an invalid node `{name}`: {e}"),
        };
        let arg_info: Vec<&Info> = args.iter().map(|a| &egraph[*a].data).collect();
        let arg_types: Vec<&TensorType> = arg_info.iter().filter_map(|i| i.ty()).collect();
        let ty = match op.result_type(&arg_types, declared.as_ref()) {
            Ok(t) => t,
            Err(e) => panic!("optimizer built an ill-typed node: {e}"),
        };
        let splats: Vec<Option<f64>> = arg_info.iter().map(|i| i.splat()).collect();
        let splat = match &op {
            Op::Constant { value } => Some(*value),
            // A layout op of one operand that neither picks nor joins elements keeps a splat.
            op if op.class().is_layout()
                && !matches!(op, Op::Concat { .. } | Op::Gather { .. }) =>
            {
                splats[0]
            }
            // Arithmetic on two float splats folds by the scalar table (not a division by 0).
            Op::Binary(b @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div))
                if ty.dtype.is_float() =>
            {
                match (splats[0], splats[1]) {
                    (_, Some(y)) if *b == BinaryOp::Div && y == 0.0 => None,
                    (Some(x), Some(y)) => b.eval_float(x, y),
                    _ => None,
                }
            }
            _ => None,
        };
        let invariant = match &op {
            Op::Input { kind, .. } => *kind == InputKind::Weight,
            Op::Constant { .. } | Op::Iota { .. } => true,
            Op::Random { .. } | Op::Dropout { .. } => false,
            _ => arg_info.iter().all(|i| {
                matches!(
                    i,
                    Info::Tensor {
                        invariant: true,
                        ..
                    }
                )
            }),
        };
        Info::Tensor {
            ty,
            splat,
            invariant,
        }
    }

    fn merge(&mut self, a: &mut Info, b: Info) -> DidMerge {
        match (&mut *a, b) {
            (
                Info::Tensor {
                    ty,
                    splat,
                    invariant,
                },
                Info::Tensor {
                    ty: ty2,
                    splat: s2,
                    invariant: i2,
                },
            ) => {
                assert_eq!(*ty, ty2, "a rewrite merged e-classes of different types");
                let mut changed_a = false;
                if splat.is_none() && s2.is_some() {
                    *splat = s2;
                    changed_a = true;
                }
                if !*invariant && i2 {
                    *invariant = true;
                    changed_a = true;
                }
                DidMerge(changed_a, true)
            }
            (x, y) => {
                assert_eq!(*x, y, "a rewrite merged a leaf with something else");
                DidMerge(false, false)
            }
        }
    }
}
