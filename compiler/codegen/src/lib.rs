//! Code generation: the only crate that links LLVM and MLIR (through inkwell and melior).
//!
//! Today it reports what the host toolchain offers ([`host_info`]): the linked LLVM version,
//! the host CPU and its features, detected at run time, and a check that MLIR parses and
//! verifies a module with its dialects registered. Lowering the IR lands here next.

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

/// An LLVM or MLIR set-up failure.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// LLVM could not initialize the native target.
    #[error("LLVM could not initialize the native target: {0}")]
    NativeTarget(String),
    /// MLIR rejected a module that should be valid.
    #[error("MLIR did not accept a trivial module; is libmlir 22 installed? (scripts/setup.sh)")]
    Mlir,
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

#[cfg(test)]
mod tests {
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
}
