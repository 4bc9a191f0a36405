//! PTX for NVIDIA GPUs from the same kernel bodies the CPU runs. A CPU kernel is a loop over
//! its range `[lo, hi)` around a body for one range item; on the GPU the same body runs once
//! per thread, for range item `lo + blockIdx.x · blockDim.x + threadIdx.x` when it is below
//! `hi`. So the elementwise, reduction and softmax kernels are written once (`kernels.rs`,
//! `expr.rs`), and every CPU test of them tests the GPU's bodies too.
//!
//! The module (`gpu.module` of `gpu.func` kernels with bare-pointer memrefs, the constant
//! tables and the helpers they call) is lowered with [`GPU_PIPELINE`]: `scf` to `cf`, the
//! GPU dialect to NVVM (libdevice for the transcendental functions), and
//! `gpu-module-to-binary` to PTX text, with no CUDA toolkit. GEMMs and their packs are not
//! here: on a GPU they are cuBLAS's. Host steps run on the host.

use crate::lower::{FuncText, Lowered};
use crate::schedule::StepKind;
use crate::{CodegenError, CpuTarget};
use graft_ir::Function;
use std::fmt::Write as _;

/// The pass pipeline from the GPU module to PTX; `{chip}`, `{features}` and `{libs}` are
/// filled in (`nvvm-attach-target`'s options).
pub const GPU_PIPELINE: &str = "builtin.module(\
nvvm-attach-target{chip={chip} features={features} O=3 {libs}},\
gpu.module(convert-scf-to-cf,arith-expand{include-bf16=true},\
expand-strided-metadata,lower-affine,\
convert-gpu-to-nvvm{use-bare-ptr-memref-call-conv=1},\
canonicalize,cse,reconcile-unrealized-casts),\
gpu-module-to-binary{format=isa})";

/// What [`emit_ptx`] made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ptx {
    /// The PTX module's text.
    pub text: String,
    /// Its kernels (entry points), in schedule order.
    pub kernels: Vec<String>,
    /// Steps that are not GPU kernels here, with why (GEMMs and packs: cuBLAS; host steps).
    pub elsewhere: Vec<(String, &'static str)>,
}

/// A GPU architecture PTX is generated for: `sm_80` (A100) or `sm_90` (H100, H200).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuArch {
    /// The chip, as `nvvm-attach-target` and `ptxas -arch` name it.
    pub chip: &'static str,
    /// The PTX ISA version feature.
    pub features: &'static str,
}

/// The architectures graft generates PTX for.
pub const GPU_ARCHS: [GpuArch; 2] = [
    GpuArch {
        chip: "sm_80",
        features: "+ptx80",
    },
    GpuArch {
        chip: "sm_90",
        features: "+ptx80",
    },
];

/// The PTX of `f`'s elementwise, reduction and softmax kernels for `arch`. `libdevice` is
/// the path of CUDA's `libdevice.10.bc`, linked for the transcendental functions (`None`
/// leaves calls to them unresolved, which `ptxas` refuses).
///
/// # Errors
/// As [`crate::compile`], or MLIR's diagnostics when the GPU pipeline fails.
pub fn emit_ptx(
    f: &Function,
    arch: GpuArch,
    libdevice: Option<&std::path::Path>,
) -> Result<Ptx, CodegenError> {
    let (_, plan, lowered) = crate::lowered(f, &CpuTarget::host())?;
    let mut kernels = Vec::new();
    let mut elsewhere = Vec::new();
    for s in &plan.steps {
        if s.symbol.is_empty() || kernels.contains(&s.symbol) {
            continue;
        }
        match s.kind {
            StepKind::Fused | StepKind::Reduce | StepKind::Softmax => {
                kernels.push(s.symbol.clone());
            }
            StepKind::Gemm(_) | StepKind::MatMulScalar(_) => {
                elsewhere.push((s.symbol.clone(), "a matmul (cuBLAS on a GPU)"));
            }
            StepKind::Pack(_) | StepKind::PackA(_) | StepKind::PackBound(..) => {
                elsewhere.push((
                    s.symbol.clone(),
                    "a GEMM pack (cuBLAS reads unpacked operands)",
                ));
            }
            StepKind::Host => {}
        }
    }
    if kernels.is_empty() {
        return Ok(Ptx {
            elsewhere,
            ..Ptx::default()
        });
    }
    let text = gpu_module(&lowered, &kernels)?;
    let libs = libdevice.map_or(String::new(), |p| format!("l={}", p.display()));
    let pipeline = GPU_PIPELINE
        .replace("{chip}", arch.chip)
        .replace("{features}", arch.features)
        .replace("{libs}", &libs);
    let lowered_text = crate::jit::run_pipeline(&text, &pipeline)?;
    Ok(Ptx {
        text: binary_text(&lowered_text)?,
        kernels,
        elsewhere,
    })
}

/// The GPU module holding `kernels` (and the helpers and tables they use).
pub(crate) fn gpu_module(lowered: &Lowered, kernels: &[String]) -> Result<String, CodegenError> {
    let mut out =
        String::from("module attributes {gpu.container_module} {\n  gpu.module @graft_kernels {\n");
    lowered.render_tables(&mut out);
    let chosen: Vec<&FuncText> = kernels
        .iter()
        .filter_map(|k| lowered.funcs.iter().find(|f| &f.name == k))
        .collect();
    for h in lowered.funcs.iter().filter(|h| !h.ranged) {
        let call = format!("@{}(", h.name);
        if chosen.iter().any(|k| k.body.contains(&call)) {
            h.render_into(&mut out, None, None);
        }
    }
    for k in chosen {
        let body = per_thread(&k.body).ok_or_else(|| {
            CodegenError::Internal(format!("kernel `{}` has no range loop", k.name))
        })?;
        let mut params = vec!["%lo: index".to_string(), "%hi: index".to_string()];
        params.extend(k.params.iter().cloned());
        let _ = writeln!(
            out,
            "  gpu.func @{}({}) kernel {{\n{body}    gpu.return\n  }}",
            k.name,
            params.join(", ")
        );
    }
    out += "  }\n}\n";
    Ok(out)
}

/// A kernel body with its range loop (`scf.for %o = %lo to %hi step %c {`) replaced by the
/// thread's range item and a bounds check; the loop's body and closing brace stay.
fn per_thread(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len() + 400);
    let mut found = false;
    for line in body.lines() {
        let t = line.trim_start();
        if !found && t.starts_with("scf.for ") && t.contains(" = %lo to %hi step ") {
            let o = t.strip_prefix("scf.for ")?.split(' ').next()?;
            let pad = &line[..line.len() - t.len()];
            for l in [
                "%gpu_block = gpu.block_id x".to_string(),
                "%gpu_dim = gpu.block_dim x".to_string(),
                "%gpu_thread = gpu.thread_id x".to_string(),
                "%gpu_first = arith.muli %gpu_block, %gpu_dim : index".to_string(),
                "%gpu_item = arith.addi %gpu_first, %gpu_thread : index".to_string(),
                format!("{o} = arith.addi %lo, %gpu_item : index"),
                format!("%gpu_in = arith.cmpi ult, {o}, %hi : index"),
                "scf.if %gpu_in {".to_string(),
            ] {
                let _ = writeln!(out, "{pad}{l}");
            }
            found = true;
        } else {
            out += line;
            out.push('\n');
        }
    }
    found.then_some(out)
}

/// The PTX text inside the `gpu.binary` op `gpu-module-to-binary` leaves: the object's string
/// attribute, unescaped (MLIR prints bytes outside printable ASCII, `"` and `\` as `\XX`).
fn binary_text(module: &str) -> Result<String, CodegenError> {
    let missing = || CodegenError::Internal("the GPU pipeline produced no PTX object".into());
    let at = module.find("gpu.binary").ok_or_else(missing)?;
    let rest = &module[at..];
    let target = rest.find("#nvvm.target").ok_or_else(missing)?;
    let rest = &rest[target..];
    // `#gpu.object<#nvvm.target<…>, properties = {…}, assembly = "…">` (MLIR 22), or the
    // string right after the target.
    let open = match rest.find("assembly = \"") {
        Some(i) => i + "assembly = \"".len(),
        None => rest.find(">, \"").ok_or_else(missing)? + 4,
    };
    let bytes = &rest.as_bytes()[open..];
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() && bytes[i] != b'"' {
        if bytes[i] == b'\\' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            let b = u8::from_str_radix(hex, 16)
                .map_err(|_| CodegenError::Internal(format!("bad escape `\\{hex}` in PTX")))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| CodegenError::Internal(format!("PTX is not text: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_range_loop_becomes_the_thread_index() {
        let body = "    %c1 = arith.constant 1 : index\n    scf.for %v3 = %lo to %hi step %c1 {\n      memref.store\n    }\n";
        let t = per_thread(body).unwrap();
        assert!(t.contains("%v3 = arith.addi %lo, %gpu_item : index"), "{t}");
        assert!(
            t.contains("scf.if %gpu_in {\n      memref.store\n    }\n"),
            "{t}"
        );
        assert_eq!(per_thread("    return\n"), None);
    }

    #[test]
    fn escaped_ptx_is_unescaped() {
        let m = "gpu.binary @k  [#gpu.object<#nvvm.target<chip = \"sm_90\">, \"//\\0A.version 8.0\\0A\\22x\\22\">]";
        assert_eq!(binary_text(m).unwrap(), "//\n.version 8.0\n\"x\"");
        let m = "gpu.binary @k  [#gpu.object<#nvvm.target<O = 3, chip = \"sm_80\">, properties = {O = 3 : i32}, assembly = \"//\\0A.entry\">]";
        assert_eq!(binary_text(m).unwrap(), "//\n.entry");
    }
}
