//! A scheduled function as text, one line per kernel launch: what it runs, the node it
//! computes, the slots it reads and writes, and its parallel range. The file tests
//! (`tests/filetests/schedule/`) compare it; nothing else parses it.

use crate::schedule::{Plan, StepKind};
use graft_ir::Function;
use std::fmt::Write as _;

impl StepKind {
    /// The kind's name, with a GEMM's `m×k×n` (and its flags).
    fn describe(&self) -> String {
        let gemm = |name: &str, g: &crate::gemm::GemmShape| {
            let mut s = format!("{name} {}x{}x{}", g.m, g.k, g.n);
            for (on, flag) in [
                (g.ta, "ta"),
                (g.tb, "tb"),
                (g.quant.is_some(), "nf4"),
                (g.fused_b, "fused-b"),
                (g.addend.is_some(), "addend"),
                (g.accumulate, "accumulate"),
            ] {
                if on {
                    let _ = write!(s, " {flag}");
                }
            }
            if g.k_range != (0, g.k) {
                let _ = write!(s, " k{}..{}", g.k_range.0, g.k_range.1);
            }
            if let Some((a, b)) = g.panel_range {
                let _ = write!(s, " panels{a}..{b}");
            }
            s
        };
        match self {
            StepKind::Fused => "fused".into(),
            StepKind::Reduce => "reduce".into(),
            StepKind::Softmax => "softmax".into(),
            StepKind::MatMulScalar(g) => gemm("matmul-scalar", g),
            StepKind::PackA(g) => gemm("pack-a", g),
            StepKind::Pack(g) => gemm("pack-b", g),
            StepKind::PackBound(g, _) => gemm("pack-b-bound", g),
            StepKind::Gemm(g) => gemm("gemm", g),
            StepKind::Host => "host".into(),
        }
    }
}

impl Plan {
    /// The plan of `f` as text: its slots, then each step.
    pub(crate) fn describe(&self, f: &Function) -> String {
        let mut s = String::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let _ = write!(s, "slot {i}: {}[{}]", slot.dtype, slot.len);
            if let Some(n) = &slot.input {
                let _ = write!(s, " input {n}");
            }
            if let Some((n, _, _)) = self.outputs.iter().find(|(_, _, o)| *o == i) {
                let _ = write!(s, " output {n}");
            }
            s.push('\n');
        }
        let inline: Vec<String> = (0..f.nodes.len())
            .filter(|&v| self.inline[v])
            .map(|v| format!("%{v}"))
            .collect();
        if !inline.is_empty() {
            let _ = writeln!(s, "inlined: {}", inline.join(" "));
        }
        for (i, st) in self.steps.iter().enumerate() {
            let args: Vec<String> = st.args.iter().map(|a| a.to_string()).collect();
            let _ = write!(
                s,
                "step {i}: {} %{} ({}) -> {} range {}",
                st.kind.describe(),
                st.root.index(),
                args.join(", "),
                st.out,
                st.range
            );
            if st.bind {
                s.push_str(" bind");
            }
            s.push('\n');
        }
        s
    }
}
