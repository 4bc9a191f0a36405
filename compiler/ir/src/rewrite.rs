//! What passes ask of a function's graph: each value's users, the values its outputs need,
//! and the function rebuilt from some of its nodes in a new order (renumbered, outputs
//! following). Passes that drop or reorder nodes go through [`Function::select`] or
//! [`Function::reordered`]; those that copy nodes into a new function, through
//! [`Function::add_copy`] (type-checked like every other node built).

use crate::{Function, Node, Op, TypeError, ValueId};

impl Function {
    /// Each node's users: the nodes reading its value, ascending, each once.
    pub fn users(&self) -> Vec<Vec<usize>> {
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (u, node) in self.nodes.iter().enumerate() {
            for a in &node.args {
                if users[a.index()].last() != Some(&u) {
                    users[a.index()].push(u);
                }
            }
        }
        users
    }

    /// `live[v]`: some output depends on value `v`.
    pub fn live(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for o in &self.outputs {
            if let Some(l) = live.get_mut(o.value.index()) {
                *l = true;
            }
        }
        for v in (0..self.nodes.len()).rev() {
            if live[v] {
                for a in &self.nodes[v].args {
                    if let Some(l) = live.get_mut(a.index()) {
                        *l = true;
                    }
                }
            }
        }
        live
    }

    /// The function made of the nodes `order` lists, in that order, renumbered; outputs
    /// follow their values. `None` when a listed node or an output reads a node that is not
    /// listed before it.
    pub fn reordered(&self, order: &[usize]) -> Option<Function> {
        let mut new_id: Vec<Option<ValueId>> = vec![None; self.nodes.len()];
        let mut out = Function::new(self.name.clone());
        out.nodes.reserve(order.len());
        for &old in order {
            let mut node = self.nodes.get(old)?.clone();
            for a in &mut node.args {
                *a = new_id[a.index()]?;
            }
            new_id[old] = Some(ValueId(out.nodes.len() as u32));
            out.nodes.push(node);
        }
        for o in &self.outputs {
            out.add_output(o.name.clone(), new_id[o.value.index()]?);
        }
        Some(out)
    }

    /// The nodes `keep` selects, every node they or the outputs read, and the outputs' nodes,
    /// in their order (inputs first, in their order, when `inputs_first`), renumbered.
    pub fn select(&self, keep: impl Fn(usize) -> bool, inputs_first: bool) -> Function {
        let mut kept = self.live();
        for v in (0..self.nodes.len()).rev() {
            if kept[v] || keep(v) {
                kept[v] = true;
                for a in &self.nodes[v].args {
                    kept[a.index()] = true;
                }
            }
        }
        let is_input = |v: &usize| matches!(self.nodes[*v].op, Op::Input { .. });
        let all = (0..self.nodes.len()).filter(|&v| kept[v]);
        let order: Vec<usize> = if inputs_first {
            all.clone()
                .filter(is_input)
                .chain(all.filter(|v| !is_input(v)))
                .collect()
        } else {
            all.collect()
        };
        // The order holds every operand of its nodes and of the outputs, before its readers
        // (inputs read nothing): renumbering it cannot fail.
        self.reordered(&order).unwrap_or_else(|| self.clone())
    }

    /// Appends a copy of `src` (another function's node) reading `args`, type-checked as
    /// [`Function::add_typed`] does; its type must come out as `src`'s.
    ///
    /// # Errors
    /// The op's typing rule rejects `args`, or gives another type than `src`'s.
    pub fn add_copy(&mut self, src: &Node, args: &[ValueId]) -> Result<ValueId, TypeError> {
        let declared = src.op.needs_declared_type().then(|| src.ty.clone());
        let id = self.add_typed(src.op.clone(), args, declared, src.loc)?;
        if *self.ty(id) != src.ty {
            let got = self.ty(id).clone();
            self.nodes.pop();
            return Err(TypeError {
                op: src.op.name().to_string(),
                message: format!("the copy is {got}, the original {}", src.ty),
                operands: args.iter().map(|a| self.ty(*a).clone()).collect(),
            });
        }
        Ok(id)
    }

    /// This function without the nodes no output needs; inputs stay when `keep_inputs` (they
    /// are its signature).
    pub fn without_dead(&self, keep_inputs: bool) -> Function {
        self.select(
            |v| keep_inputs && matches!(self.nodes[v].op, Op::Input { .. }),
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::{DType, Function, InputKind, Op, TensorType, UnaryOp, verify_function};

    /// x → exp → neg (output), x → tanh (dead), w (an unread input).
    fn sample() -> Function {
        let t = TensorType::new(DType::F32, vec![4]);
        let mut f = Function::new("f");
        let x = f.add_input("x", InputKind::Data, t.clone(), None);
        let e = f.add(Op::Unary(UnaryOp::Exp), &[x], None).unwrap();
        f.add(Op::Unary(UnaryOp::Tanh), &[x], None).unwrap();
        f.add_input("w", InputKind::Data, t, None);
        let n = f.add(Op::Unary(UnaryOp::Neg), &[e], None).unwrap();
        f.add_output("y", n);
        f.add_output("e", e);
        f
    }

    #[test]
    fn users_and_liveness() {
        let f = sample();
        assert_eq!(f.users(), vec![vec![1, 2], vec![4], vec![], vec![], vec![]]);
        assert_eq!(f.live(), vec![true, true, false, false, true]);
    }

    /// Dead nodes go (and unread inputs too, unless kept); the outputs follow their values;
    /// inputs move first when asked; an order that reads a node before listing it is refused.
    #[test]
    fn selecting_nodes_renumbers_and_keeps_the_outputs() {
        let f = sample();
        let kept = f.without_dead(true);
        verify_function(&kept, usize::MAX).unwrap();
        assert_eq!(kept.nodes.len(), 4);
        assert!(kept.input("w").is_some());
        let bare = f.without_dead(false);
        assert_eq!(bare.nodes.len(), 3);
        assert!(bare.input("w").is_none());
        assert_eq!(
            bare.node(bare.output("y").unwrap()).op,
            Op::Unary(UnaryOp::Neg)
        );
        let first = f.select(|_| true, true);
        verify_function(&first, usize::MAX).unwrap();
        assert_eq!(first.nodes.len(), 5);
        assert!(matches!(first.nodes[1].op, Op::Input { .. }));
        let moved = f.reordered(&[3, 0, 1, 4]).unwrap();
        verify_function(&moved, usize::MAX).unwrap();
        assert_eq!(
            moved.inputs().map(|i| i.name).collect::<Vec<_>>(),
            vec!["w", "x"]
        );
        assert_eq!(moved.output("e"), Some(crate::ValueId(2)));
        assert!(f.reordered(&[1, 0]).is_none());
        assert!(f.reordered(&[0, 1]).is_none(), "output y's node is missing");
    }

    /// A copy reading operands of the original's types is the same node; one reading others
    /// is refused and leaves the function as it was.
    #[test]
    fn copies_are_type_checked() {
        let f = sample();
        let mut g = Function::new("g");
        let x = g.add_input(
            "x",
            InputKind::Data,
            TensorType::new(DType::F32, vec![4]),
            None,
        );
        let e = g.add_copy(&f.nodes[1], &[x]).unwrap();
        assert_eq!(g.nodes[e.index()], f.nodes[1]);
        let y = g.add_input(
            "y",
            InputKind::Data,
            TensorType::new(DType::F32, vec![5]),
            None,
        );
        let e = g.add_copy(&f.nodes[1], &[y]).unwrap_err();
        assert!(e.to_string().contains("f32[5]"), "{e}");
        assert_eq!(g.nodes.len(), 3);
    }
}
