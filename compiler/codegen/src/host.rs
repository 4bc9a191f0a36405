//! The host: what LLVM and MLIR report about it (for `graft doctor`), and the vector shape
//! the generated kernels use, derived from the CPU features detected at run time.

use crate::CodegenError;
use inkwell::targets::{InitializationConfig, Target, TargetMachine};
use melior::Context;
use melior::dialect::DialectRegistry;
use melior::ir::Module;
use melior::ir::operation::OperationLike;
use melior::utility::register_all_dialects;

/// What the host toolchain offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// The LLVM version linked into graft, `major.minor.patch`.
    pub llvm_version: String,
    /// The host target triple.
    pub triple: String,
    /// The host CPU name as LLVM knows it (`znver3`, ...).
    pub cpu: String,
    /// The host CPU's features as LLVM reports them (`+avx2,+fma,...`).
    pub features: String,
    /// Number of MLIR dialects registered.
    pub mlir_dialects: usize,
}

impl HostInfo {
    /// True when the host CPU has the named feature (`avx2`, `avx512f`, `fma`).
    pub fn has_feature(&self, name: &str) -> bool {
        self.features
            .split(',')
            .any(|f| f.strip_prefix('+') == Some(name))
    }
}

/// Queries LLVM and MLIR about the host.
pub fn host_info() -> Result<HostInfo, CodegenError> {
    Target::initialize_native(&InitializationConfig::default())
        .map_err(CodegenError::NativeTarget)?;
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    let triple = TargetMachine::get_default_triple()
        .as_str()
        .to_string_lossy()
        .into_owned();
    let cpu = TargetMachine::get_host_cpu_name().to_string();
    let features = TargetMachine::get_host_cpu_features().to_string();

    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    let module = Module::parse(
        &context,
        "func.func @probe(%a: f32) -> f32 { return %a : f32 }",
    )
    .ok_or(CodegenError::Mlir)?;
    if !module.as_operation().verify() {
        return Err(CodegenError::Mlir);
    }
    Ok(HostInfo {
        llvm_version: format!("{major}.{minor}.{patch}"),
        triple,
        cpu,
        features,
        mlir_dialects: context.registered_dialect_count(),
    })
}

/// The register shape of generated vector code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTarget {
    /// `f32` lanes per vector register (16 with AVX-512, 8 with AVX/AVX2, else 4).
    pub lanes: usize,
    /// GEMM microkernel rows (accumulator rows held in registers).
    pub mr: usize,
    /// GEMM microkernel columns (two vectors).
    pub nr: usize,
    /// GEMM contraction block: a `KC × NR` panel slice stays in L1.
    pub kc: usize,
    /// GEMM row block: an `MC × KC` block of A stays in L2 while every panel passes.
    pub mc: usize,
    /// Bytes of packed operands (A and B) one GEMM step may use: larger GEMMs run as chunks
    /// of B's panels or of K (see the scheduler), so the arena holds one chunk's at a time.
    /// 8 MiB: the language-model head's backward GEMM runs at the memory peak (next to the
    /// logits and everything the backward keeps), and its chunks' packing is then 8 MiB
    /// (mid-size Llama: 7.6 MiB less at the peak than with 16 MiB, no slower).
    pub pack_budget: usize,
    /// Target bytes of one chunk of logits when the language-model head and its loss run
    /// over vocabulary chunks (graft-lowering's `linear_ce.rs`); 0 keeps the logits whole. 4 MiB: eight
    /// chunks at the mid-size Llama (vocabulary 16384). Its memory plan peaks at 195, 199,
    /// 200 and 206 MB with 2, 4, 8 and 16 MiB chunks (221 MB with whole logits); below
    /// 4 MiB each chunk saves little and adds a pass over the `[rows, hidden]` accumulator
    /// and ten launches.
    pub vocab_chunk: usize,
    /// Pack a row-major B whose rows are at least a page long (a frozen weight in the
    /// backward's `dy · W`) row by row, each thread reading its panels' part of each row as
    /// one run, instead of panel by panel (a strip down every row: a page, so a TLB miss,
    /// per 128 bytes). 1–5 % faster on the mid-size Llama's backward shapes (gemm bench).
    pub pack_rows: bool,
    /// The vector width, in bits, LLVM's own vectorizers should prefer in the kernels (the
    /// elementwise and reduction loops and the pack kernels' fused producers; the GEMM
    /// microkernels are written with vectors of `lanes`); 0 leaves LLVM's default for the CPU.
    /// With AVX-512 it is 512: LLVM's default there is 256 (`prefer-256-bit`, against clock
    /// throttling on older Xeons), which halves the width of every loop it vectorizes, such as
    /// a fused SiLU backward packed as a GEMM's A (0.32–0.42 ms with 256, 0.24 ms with 512 for
    /// `[512, 688]`).
    pub auto_vector_bits: usize,
    /// Let a GEMM whose shared B outweighs A split B's panels across threads instead of A's
    /// row tiles ([`crate::gemm::GemmShape::splits_n`]).
    pub split_n: bool,
    /// Pack frozen weights once, when they are bound ([`crate::CompiledFunction::bind`]),
    /// instead of in every run.
    pub bind_weights: bool,
    /// A GEMM packs A into row tiles when more than this many panels of B reuse it (2: a
    /// power-of-two row stride maps a tile's rows to a few L1 sets; without packing, tiny's
    /// and small's steps were within the noise, and isolated GEMMs 5–10 % faster or slower
    /// by shape).
    pub pack_a_panels: usize,
    /// The CPU the kernels may assume (`native`: the host's features, as the JIT detects).
    pub level: crate::CpuLevel,
}

impl CpuTarget {
    /// The shape for a CPU with these LLVM feature names: `lanes` from the widest vector
    /// extension, `NR = 2 · lanes`, and `MR` filling the vector register file (16 registers
    /// before AVX-512, 32 with it) less the B vectors and the broadcast A value.
    pub fn from_features(has: impl Fn(&str) -> bool) -> Self {
        let (lanes, regs) = if has("avx512f") {
            (16, 32)
        } else if has("avx") || has("avx2") {
            (8, 16)
        } else {
            (4, 16)
        };
        let mr = ((regs - 3) / 2).min(12);
        CpuTarget {
            lanes,
            mr,
            nr: 2 * lanes,
            kc: 256,
            mc: 480,
            pack_budget: 8 << 20,
            vocab_chunk: 4 << 20,
            pack_rows: true,
            auto_vector_bits: if lanes == 16 { 512 } else { 0 },
            split_n: true,
            bind_weights: true,
            pack_a_panels: 2,
            level: crate::CpuLevel::Native,
        }
    }

    /// This shape with blocking parameters changed by a spec like `"kc=512,mc=240"` (keys
    /// `kc`, `mc`, `mr`, `rows` (0 or 1, [`CpuTarget::pack_rows`]), `autovec` (bits,
    /// [`CpuTarget::auto_vector_bits`]), `splitn` and `bind` (0 or 1, [`CpuTarget::split_n`],
    /// [`CpuTarget::bind_weights`]), `packa` ([`CpuTarget::pack_a_panels`]), and in MiB
    /// `budget` and `vocab` ([`CpuTarget::vocab_chunk`])), for tuning experiments (the
    /// benchmarks).
    ///
    /// # Errors
    /// An item that is not `key=number`, or an unknown key.
    pub fn with_blocking(mut self, spec: &str) -> Result<Self, String> {
        for item in spec.split(',').filter(|i| !i.is_empty()) {
            let (key, val) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not key=value"))?;
            let val: usize = val
                .parse()
                .map_err(|_| format!("`{val}` is not a number"))?;
            match key {
                "kc" => self.kc = val,
                "mc" => self.mc = val,
                "mr" => self.mr = val,
                "budget" => self.pack_budget = val << 20,
                "vocab" => self.vocab_chunk = val << 20,
                "rows" => self.pack_rows = val != 0,
                "autovec" => self.auto_vector_bits = val,
                "splitn" => self.split_n = val != 0,
                "bind" => self.bind_weights = val != 0,
                "packa" => self.pack_a_panels = val,
                other => return Err(format!("unknown blocking parameter `{other}`")),
            }
        }
        Ok(self)
    }

    /// What the target-independent lowering passes need of this target.
    pub fn lowering(&self) -> graft_lowering::Options {
        graft_lowering::Options {
            vocab_chunk: self.vocab_chunk,
        }
    }

    /// The shape for the host CPU, from the features LLVM detects at run time.
    pub fn host() -> Self {
        let features = TargetMachine::get_host_cpu_features().to_string();
        CpuTarget::from_features(|name| {
            features
                .split(',')
                .any(|f| f.strip_prefix('+') == Some(name))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn links_llvm_22_and_mlir() -> Result<(), CodegenError> {
        let info = host_info()?;
        assert!(
            info.llvm_version.starts_with("22."),
            "linked LLVM is {}",
            info.llvm_version
        );
        assert!(
            info.triple.starts_with("x86_64") || info.triple.starts_with("aarch64"),
            "{}",
            info.triple
        );
        assert!(!info.cpu.is_empty());
        assert!(
            info.mlir_dialects > 10,
            "only {} MLIR dialects registered",
            info.mlir_dialects
        );
        Ok(())
    }

    #[test]
    fn feature_lookup_reads_llvm_feature_strings() {
        let info = HostInfo {
            llvm_version: "22.1.8".into(),
            triple: "x86_64-pc-linux-gnu".into(),
            cpu: "znver3".into(),
            features: "+avx2,-avx512f,+fma".into(),
            mlir_dialects: 40,
        };
        assert!(info.has_feature("avx2"));
        assert!(!info.has_feature("avx512f"));
        assert!(!info.has_feature("avx"));
    }

    #[test]
    fn blocking_parameters_parse_or_explain() {
        let t = CpuTarget::from_features(|f| f == "avx2");
        let u = t
            .with_blocking("kc=128,mc=240,budget=4,vocab=0,rows=0,autovec=256")
            .unwrap();
        let v = t.with_blocking("splitn=0,bind=0,packa=5").unwrap();
        assert!(t.split_n && t.bind_weights && t.pack_a_panels == 2);
        assert!(!v.split_n && !v.bind_weights && v.pack_a_panels == 5);
        assert_eq!((u.kc, u.mc, u.pack_budget, u.mr), (128, 240, 4 << 20, t.mr));
        assert_eq!((t.vocab_chunk, u.vocab_chunk), (4 << 20, 0));
        assert!(t.pack_rows && !u.pack_rows);
        assert_eq!((t.auto_vector_bits, u.auto_vector_bits), (0, 256));
        assert!(t.with_blocking("kc").unwrap_err().contains("key=value"));
        assert!(
            t.with_blocking("kc=x")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(t.with_blocking("nr=8").unwrap_err().contains("unknown"));
    }

    #[test]
    fn vector_shape_follows_the_features() {
        let avx2 = CpuTarget::from_features(|f| f == "avx2" || f == "avx");
        assert_eq!((avx2.lanes, avx2.mr, avx2.nr), (8, 6, 16));
        let avx512 = CpuTarget::from_features(|f| f == "avx512f");
        assert_eq!((avx512.lanes, avx512.mr, avx512.nr), (16, 12, 32));
        assert_eq!((avx2.auto_vector_bits, avx512.auto_vector_bits), (0, 512));
        let plain = CpuTarget::from_features(|_| false);
        assert_eq!((plain.lanes, plain.nr), (4, 8));
        let host = CpuTarget::host();
        assert!(host.lanes >= 4 && host.mr >= 1);
    }
}
