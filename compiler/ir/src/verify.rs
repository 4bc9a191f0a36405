//! The verifier: SSA order, operand types against each op's typing rule, unique names.
//! Tests run it after every pass.

use crate::graph::{Function, Module};
use crate::op::TypeError;
use std::collections::HashSet;

/// A broken invariant, naming the function and node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// An operand refers to a value not defined before its use.
    #[error("@{func} %{node}: operand %{arg} is not defined before it is used")]
    NotDominated {
        /// The function.
        func: String,
        /// The node index.
        node: usize,
        /// The bad operand.
        arg: u32,
    },
    /// The node's operands do not fit its op, or its stated type is wrong.
    #[error("@{func} %{node}: {error}")]
    Type {
        /// The function.
        func: String,
        /// The node index.
        node: usize,
        /// The typing error.
        error: TypeError,
    },
    /// The stated type differs from the inferred one.
    #[error("@{func} %{node}: `{op}` has type {stated} but its operands give {inferred}")]
    WrongType {
        /// The function.
        func: String,
        /// The node index.
        node: usize,
        /// The op name.
        op: String,
        /// The type written on the node.
        stated: String,
        /// The type the op's rule gives.
        inferred: String,
    },
    /// Two inputs, two outputs or two functions share a name.
    #[error("@{func}: duplicate {what} `{name}`")]
    Duplicate {
        /// The function.
        func: String,
        /// `input`, `output` or `function`.
        what: &'static str,
        /// The repeated name.
        name: String,
    },
    /// An output refers to a value that does not exist.
    #[error("@{func}: output `{name}` refers to %{value}, which does not exist")]
    BadOutput {
        /// The function.
        func: String,
        /// The output's name.
        name: String,
        /// The missing value.
        value: u32,
    },
    /// A location names a file that is not in the file table.
    #[error("@{func} %{node}: location refers to file {file}, which is not declared")]
    BadLoc {
        /// The function.
        func: String,
        /// The node index.
        node: usize,
        /// The missing file index.
        file: u32,
    },
}

/// Verifies one function; `files` is the number of entries in the module's file table.
pub fn verify_function(f: &Function, files: usize) -> Result<(), VerifyError> {
    let func = || f.name.clone();
    let mut inputs = HashSet::new();
    for (i, n) in f.nodes.iter().enumerate() {
        if let Some(&a) = n.args.iter().find(|a| a.index() >= i) {
            return Err(VerifyError::NotDominated {
                func: func(),
                node: i,
                arg: a.0,
            });
        }
        if let Some(l) = n.loc {
            if l.file as usize >= files {
                return Err(VerifyError::BadLoc {
                    func: func(),
                    node: i,
                    file: l.file,
                });
            }
        }
        if let crate::Op::Input { name, .. } = &n.op {
            if !inputs.insert(name.as_str()) {
                return Err(VerifyError::Duplicate {
                    func: func(),
                    what: "input",
                    name: name.clone(),
                });
            }
        }
        let arg_types: Vec<_> = n.args.iter().map(|&a| f.ty(a)).collect();
        let inferred =
            n.op.result_type(&arg_types, Some(&n.ty))
                .map_err(|error| VerifyError::Type {
                    func: func(),
                    node: i,
                    error,
                })?;
        if inferred != n.ty {
            return Err(VerifyError::WrongType {
                func: func(),
                node: i,
                op: n.op.name().to_string(),
                stated: n.ty.to_string(),
                inferred: inferred.to_string(),
            });
        }
    }
    let mut outputs = HashSet::new();
    for o in &f.outputs {
        if o.value.index() >= f.nodes.len() {
            return Err(VerifyError::BadOutput {
                func: func(),
                name: o.name.clone(),
                value: o.value.0,
            });
        }
        if !outputs.insert(o.name.as_str()) {
            return Err(VerifyError::Duplicate {
                func: func(),
                what: "output",
                name: o.name.clone(),
            });
        }
    }
    Ok(())
}

/// Verifies every function of a module.
pub fn verify_module(m: &Module) -> Result<(), VerifyError> {
    let mut names = HashSet::new();
    for f in &m.functions {
        if !names.insert(f.name.as_str()) {
            return Err(VerifyError::Duplicate {
                func: f.name.clone(),
                what: "function",
                name: f.name.clone(),
            });
        }
        verify_function(f, m.files.len())?;
    }
    Ok(())
}
