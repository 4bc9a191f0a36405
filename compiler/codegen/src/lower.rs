//! Lowering a scheduled function to one MLIR module: a `func.func` per kernel (plus private
//! GEMM microkernels) and the constant tables they read.
//!
//! Kernel calling convention (bare pointers, see [`crate::jit`]): `@kN(%lo: index, %hi:
//! index, %a0: memref<..>, .., %out: memref<..> {llvm.noalias}[, %err: memref<4xi64>])`;
//! the output never shares a buffer with an argument. The executor calls the packed wrapper
//! `_mlir_kN` with pointers to each argument.

use crate::CodegenError;
use crate::expr::{KernelCx, Table};
use crate::gemm::{emit_gemm, emit_pack, emit_pack_a, emit_pack_bound, emit_pack_computed};
use crate::host::CpuTarget;
use crate::kernels::{emit_fused, emit_matmul_scalar, emit_reduce, emit_softmax};
use crate::schedule::{Plan, StepKind};
use crate::text::float_lit;
use graft_ir::{Function, Op};
use std::collections::HashMap;
use std::fmt::Write as _;

/// One function of the module, before rendering.
#[derive(Clone, Debug)]
pub(crate) struct FuncText {
    /// The symbol (without `@`).
    pub name: String,
    /// Parameters after `%lo`/`%hi` (`%a0: memref<..>`).
    pub params: Vec<String>,
    /// The body, without the final `return`.
    pub body: String,
    /// A public kernel taking the `%lo`/`%hi` range; otherwise a private helper.
    pub ranged: bool,
}

impl FuncText {
    /// The function's MLIR text; `vector_bits`: the vector width LLVM's own vectorizers
    /// should prefer in it (see [`CpuTarget::auto_vector_bits`]).
    pub(crate) fn render_into(
        &self,
        out: &mut String,
        vector_bits: Option<usize>,
        cpu: Option<&(&str, String)>,
    ) {
        let mut params = Vec::new();
        if self.ranged {
            params.push("%lo: index".to_string());
            params.push("%hi: index".to_string());
        }
        params.extend(self.params.iter().cloned());
        // Helpers stay out of line so that one copy serves every caller.
        let mut passthrough = Vec::new();
        // Under a CPU level, a kernel stays out of its packed wrapper too: the engine
        // compiles the wrapper for the host, and inlined code would take the host's features.
        if !self.ranged || cpu.is_some() {
            passthrough.push("\"noinline\"".to_string());
        }
        if let Some(bits) = vector_bits {
            passthrough.push(format!("[\"prefer-vector-width\", \"{bits}\"]"));
        }
        if let Some((name, features)) = cpu {
            passthrough.push(format!("[\"target-cpu\", \"{name}\"]"));
            passthrough.push(format!("[\"target-features\", \"{features}\"]"));
        }
        let vis = if self.ranged { "" } else { "private " };
        let attrs = if passthrough.is_empty() {
            String::new()
        } else {
            format!(" attributes {{passthrough = [{}]}}", passthrough.join(", "))
        };
        let _ = writeln!(
            out,
            "  func.func {vis}@{}({}){attrs} {{\n{}    return\n  }}",
            self.name,
            params.join(", "),
            self.body
        );
    }
}

/// The lowered functions of a plan and the constant tables they read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lowered {
    /// Kernels and helpers, each once.
    pub funcs: Vec<FuncText>,
    /// Constant tables.
    pub tables: Vec<Table>,
    /// The vector width LLVM should prefer when it vectorizes loops itself.
    pub vector_bits: Option<usize>,
    /// LLVM's `target-cpu` and `target-features` for every function (a CPU level other
    /// than the host's, [`crate::CpuLevel`]).
    pub cpu: Option<(&'static str, String)>,
}

impl Lowered {
    /// One module holding every function.
    pub fn module(&self) -> String {
        let all: Vec<&FuncText> = self.funcs.iter().collect();
        self.render(&all)
    }

    /// The kernels split into `n` modules (helpers copied into the modules that call them),
    /// to compile in parallel: each module's text and the kernels it defines.
    pub fn chunks(&self, n: usize) -> Vec<(String, Vec<String>)> {
        let kernels: Vec<&FuncText> = self.funcs.iter().filter(|f| f.ranged).collect();
        let helpers: Vec<&FuncText> = self.funcs.iter().filter(|f| !f.ranged).collect();
        let per = kernels.len().div_ceil(n.max(1)).max(1);
        kernels
            .chunks(per)
            .map(|group| {
                let mut fs: Vec<&FuncText> = helpers
                    .iter()
                    .filter(|h| {
                        let call = format!("@{}(", h.name);
                        group.iter().any(|k| k.body.contains(&call))
                    })
                    .copied()
                    .collect();
                fs.extend(group.iter().copied());
                (
                    self.render(&fs),
                    group.iter().map(|k| k.name.clone()).collect(),
                )
            })
            .collect()
    }

    /// The constant tables, as `memref.global`s.
    pub(crate) fn render_tables(&self, out: &mut String) {
        for t in &self.tables {
            let (sym, ty) = t.symbol();
            let values: Vec<String> = match t {
                Table::Nf4 => graft_quant::NF4_CODE
                    .iter()
                    .map(|&x| float_lit(x))
                    .collect(),
                Table::Int8 => graft_quant::INT8_CODE
                    .iter()
                    .map(|&x| float_lit(x))
                    .collect(),
                Table::Dynamic => graft_quant::DYNAMIC_SIGNED_CODE
                    .iter()
                    .map(|&x| float_lit(x))
                    .collect(),
            };
            let _ = writeln!(
                out,
                "  memref.global \"private\" constant {sym} : {ty} = dense<[{}]>",
                values.join(", ")
            );
        }
    }

    fn render(&self, funcs: &[&FuncText]) -> String {
        let mut out = String::from("module {\n");
        self.render_tables(&mut out);
        for func in funcs {
            func.render_into(&mut out, self.vector_bits, self.cpu.as_ref());
        }
        out.push_str("}\n");
        out
    }
}

/// Lowers every step of `plan` to MLIR, filling in each step's symbol and argument slots.
pub(crate) fn lower(
    f: &Function,
    plan: &mut Plan,
    target: &CpuTarget,
) -> Result<Lowered, CodegenError> {
    let mut funcs: Vec<FuncText> = Vec::new();
    let mut tables: Vec<Table> = Vec::new();
    // Identical kernels (same parameters and body, e.g. one per layer) are emitted once.
    let mut by_text: HashMap<(Vec<String>, String), String> = HashMap::new();
    let mut add = |funcs: &mut Vec<FuncText>, func: FuncText| -> String {
        if !func.ranged {
            if !funcs.iter().any(|f| f.name == func.name) {
                funcs.push(func.clone());
            }
            return func.name;
        }
        let key = (func.params.clone(), func.body.clone());
        if let Some(name) = by_text.get(&key) {
            return name.clone();
        }
        by_text.insert(key, func.name.clone());
        funcs.push(func.clone());
        func.name
    };
    let slot = |plan: &Plan, v: graft_ir::ValueId| -> Result<usize, CodegenError> {
        plan.slot_of
            .get(v.index())
            .copied()
            .flatten()
            .ok_or_else(|| CodegenError::Internal(format!("%{} has no buffer", v.index())))
    };
    for i in 0..plan.steps.len() {
        let (kind, root) = (plan.steps[i].kind.clone(), plan.steps[i].root);
        let node = f.node(root);
        let name = format!("k{i}_{}", node.op.name());
        let mut args = Vec::new();
        let symbol = match &kind {
            // Run by the interpreter, no kernel; its operands are still its arguments, which
            // the memory plan keeps live until it runs.
            StepKind::Host => {
                plan.steps[i].args = node
                    .args
                    .iter()
                    .map(|&a| slot(plan, a))
                    .collect::<Result<_, _>>()?;
                continue;
            }
            StepKind::Pack(s) if s.quant.is_none() && !s.fused_b => {
                args.push(slot(plan, s.b_src)?);
                add(&mut funcs, emit_pack(&name, s, target))
            }
            StepKind::PackBound(s, bound) => {
                args.push(bound.slot);
                add(&mut funcs, emit_pack_bound(&name, s, target, bound))
            }
            StepKind::Gemm(s) => {
                let before = |back: usize| i.checked_sub(back).and_then(|p| plan.steps.get(p));
                let pack = before(1)
                    .filter(|p| matches!(p.kind, StepKind::Pack(_) | StepKind::PackBound(..)));
                let pack_a = before(2).filter(|p| matches!(p.kind, StepKind::PackA(_)));
                let (Some(pack), true) = (pack, pack_a.is_some() == s.packs_a(target)) else {
                    return Err(CodegenError::Internal("GEMM without its packs".into()));
                };
                match pack_a {
                    Some(p) => args.push(p.out),
                    None => args.push(slot(plan, s.a_src)?),
                }
                args.push(pack.out);
                if let Some(d) = s.addend {
                    args.push(slot(plan, d)?);
                }
                let mut gemm = emit_gemm(&name, s, target).into_iter();
                let main = gemm
                    .next()
                    .ok_or_else(|| CodegenError::Internal("GEMM emitted nothing".into()))?;
                for helper in gemm {
                    add(&mut funcs, helper);
                }
                add(&mut funcs, main)
            }
            kind => {
                let mut k = KernelCx::new(f, &plan.inline);
                let out_ty = match (kind, &node.op) {
                    (StepKind::Reduce, Op::Reduce { op, axes, .. }) => {
                        emit_reduce(&mut k, root, *op, axes)?
                    }
                    (StepKind::Softmax, Op::Softmax { axis }) => {
                        emit_softmax(&mut k, root, *axis, false)?
                    }
                    (StepKind::Softmax, Op::LogSoftmax { axis }) => {
                        emit_softmax(&mut k, root, *axis, true)?
                    }
                    (StepKind::MatMulScalar(m), _) => emit_matmul_scalar(&mut k, root, m)?,
                    (StepKind::Pack(s), _) => emit_pack_computed(&mut k, root, s, target)?,
                    (StepKind::PackA(s), _) => emit_pack_a(&mut k, s, target)?,
                    (StepKind::Fused, _) => emit_fused(&mut k, root)?,
                    (kind, op) => {
                        return Err(CodegenError::Internal(format!(
                            "%{}: the schedule made a {kind:?} step of `{}`, which lowering has no kernel for",
                            root.index(),
                            op.name()
                        )));
                    }
                };
                let mut params: Vec<String> = k
                    .args
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| format!("%a{j}: {}", k.mem_ty(v)))
                    .collect();
                params.push(format!("%out: {out_ty} {{llvm.noalias}}"));
                if k.may_fail {
                    params.push("%err: memref<4xi64>".into());
                }
                for &v in &k.args {
                    args.push(slot(plan, v)?);
                }
                for t in &k.tables {
                    if !tables.contains(t) {
                        tables.push(*t);
                    }
                }
                plan.steps[i].may_fail = k.may_fail;
                add(
                    &mut funcs,
                    FuncText {
                        name: name.clone(),
                        params,
                        body: k.b.finish(),
                        ranged: true,
                    },
                )
            }
        };
        plan.steps[i].symbol = symbol;
        plan.steps[i].args = args;
    }
    plan.settle_binding();
    Ok(Lowered {
        funcs,
        tables,
        vector_bits: (target.auto_vector_bits > 0).then_some(target.auto_vector_bits),
        cpu: target.level.llvm_attributes(),
    })
}
