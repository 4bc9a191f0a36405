//! MLIR to machine code: parsing and verifying the generated module, the pass pipeline down
//! to the LLVM dialect, translation to LLVM IR, and the JIT (MLIR's `ExecutionEngine`, which
//! compiles for the host CPU with the features it detects, at `-O3`).
//!
//! This module holds the crate's `unsafe` code: the MLIR C API calls melior does not wrap
//! with error checks, and the calls into JIT-compiled kernels.
#![allow(unsafe_code)]

use crate::CodegenError;
use melior::Context;
use melior::dialect::DialectRegistry;
use melior::ir::Module;
use melior::ir::operation::OperationLike;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use mlir_sys::{
    MlirExecutionEngine, MlirStringRef, mlirExecutionEngineCreate, mlirExecutionEngineDestroy,
    mlirExecutionEngineDumpToObjectFile, mlirExecutionEngineLookupPacked,
    mlirTranslateModuleToLLVMIR,
};
use std::cell::RefCell;
use std::ffi::CStr;
use std::rc::Rc;
use std::sync::Once;

/// The pass pipeline from graft's kernels (func, scf, arith, math, memref and vector ops on
/// memrefs; linalg ops, which graft does not emit today, would lower to loops first) to the
/// LLVM dialect. `math` ops become LLVM intrinsics where LLVM has them (`exp`, `log`, `sqrt`,
/// ...; the backend calls libm for the transcendental ones), else libm calls; `bf16` casts
/// expand to integer code; kernels take statically shaped memrefs as bare pointers.
pub const PIPELINE: &str = "builtin.module(\
func.func(convert-linalg-to-loops),\
canonicalize,cse,loop-invariant-code-motion,\
convert-scf-to-cf,\
convert-math-to-llvm,convert-math-to-libm,\
arith-expand{include-bf16=true},\
convert-vector-to-llvm,\
expand-strided-metadata,lower-affine,\
finalize-memref-to-llvm,\
convert-arith-to-llvm,convert-index-to-llvm,\
convert-func-to-llvm{use-bare-ptr-memref-call-conv=1},\
convert-cf-to-llvm,\
reconcile-unrealized-casts)";

/// Parses `text` in a fresh context, verifies it, optionally runs [`PIPELINE`], and hands
/// the module to `then`. MLIR's diagnostics become the error message.
fn with_module<T>(
    text: &str,
    run_pipeline: bool,
    then: impl FnOnce(&Module) -> Result<T, CodegenError>,
) -> Result<T, CodegenError> {
    with_module_pipeline(text, run_pipeline.then_some(PIPELINE), then)
}

/// [`with_module`] with any pass pipeline (`None`: none).
fn with_module_pipeline<T>(
    text: &str,
    pipeline: Option<&str>,
    then: impl FnOnce(&Module) -> Result<T, CodegenError>,
) -> Result<T, CodegenError> {
    static PASSES: Once = Once::new();
    PASSES.call_once(register_all_passes);
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    register_all_llvm_translations(&context);
    let diags: Rc<RefCell<Vec<String>>> = Rc::default();
    let sink = diags.clone();
    let handler = context.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(format!("{} {d}", d.location()));
        true
    });
    let fail = |what: &str| {
        let msgs = diags.borrow();
        let first: Vec<String> = msgs
            .iter()
            .take(5)
            .map(|m| match source_line(m, text) {
                Some(line) => format!("{m} (at `{}`)", line.trim()),
                None => m.clone(),
            })
            .collect();
        CodegenError::Internal(format!("{what}: {}", first.join("; ")))
    };
    let result = (|| {
        let mut module = Module::parse(&context, text).ok_or_else(|| fail("MLIR did not parse"))?;
        if !module.as_operation().verify() {
            return Err(fail("MLIR did not verify"));
        }
        if let Some(pipeline) = pipeline {
            let pm = PassManager::new(&context);
            parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline)
                .map_err(|e| CodegenError::Internal(format!("pass pipeline: {e}")))?;
            pm.run(&mut module)
                .map_err(|_| fail("lowering to the LLVM dialect failed"))?;
        }
        then(&module)
    })();
    context.detach_diagnostic_handler(handler);
    result
}

/// The source line a diagnostic located at `loc("-":LINE:COL)` points at.
fn source_line<'t>(message: &str, text: &'t str) -> Option<&'t str> {
    let at = message.find("\"-\":")? + 4;
    let line: usize = message[at..].split(':').next()?.parse().ok()?;
    text.lines().nth(line.checked_sub(1)?)
}

/// `text` after the pass pipeline `pipeline`, printed.
pub(crate) fn run_pipeline(text: &str, pipeline: &str) -> Result<String, CodegenError> {
    with_module_pipeline(text, Some(pipeline), |m| Ok(m.as_operation().to_string()))
}

/// The module after [`PIPELINE`], in the LLVM dialect.
pub(crate) fn lowered_mlir(text: &str) -> Result<String, CodegenError> {
    with_module(text, true, |m| Ok(m.as_operation().to_string()))
}

/// The module translated to LLVM IR text.
pub(crate) fn llvm_ir(text: &str) -> Result<String, CodegenError> {
    use inkwell::llvm_sys::core::{
        LLVMContextCreate, LLVMContextDispose, LLVMDisposeMessage, LLVMDisposeModule,
        LLVMPrintModuleToString,
    };
    with_module(text, true, |m| {
        // SAFETY: the context and module are created and disposed here; the module operation
        // outlives the call; a null module (failed translation) is checked before use.
        unsafe {
            let ctx = LLVMContextCreate();
            let module = mlirTranslateModuleToLLVMIR(m.as_operation().to_raw(), ctx.cast());
            if module.is_null() {
                LLVMContextDispose(ctx);
                return Err(CodegenError::Internal(
                    "translation to LLVM IR failed".into(),
                ));
            }
            let module = module.cast();
            let s = LLVMPrintModuleToString(module);
            let text = CStr::from_ptr(s).to_string_lossy().into_owned();
            LLVMDisposeMessage(s);
            LLVMDisposeModule(module);
            LLVMContextDispose(ctx);
            Ok(text)
        }
    })
}

fn string_ref(s: &str) -> MlirStringRef {
    MlirStringRef {
        data: s.as_ptr().cast(),
        length: s.len(),
    }
}

/// Initializes LLVM's native target once, before modules are compiled in parallel.
pub(crate) fn init_native() -> Result<(), CodegenError> {
    static INIT: Once = Once::new();
    let mut result = Ok(());
    INIT.call_once(|| {
        result = inkwell::targets::Target::initialize_native(
            &inkwell::targets::InitializationConfig::default(),
        )
        .map_err(CodegenError::NativeTarget);
    });
    result
}

/// A JIT-compiled module.
pub(crate) struct Jit {
    raw: MlirExecutionEngine,
}

// SAFETY: the engine owns an LLVM ORC JIT whose code and data are immutable once created;
// graft only looks symbols up (done once, at compile time) and calls the compiled functions,
// which touch nothing but the buffers passed to them. Destruction happens once, in `Drop`.
unsafe impl Send for Jit {}
// SAFETY: see `Send`; no method mutates the engine.
unsafe impl Sync for Jit {}

impl Jit {
    /// Lowers `text` with [`PIPELINE`] and JIT-compiles it at `-O3` for the host CPU. With
    /// `dumpable`, the code is position independent and kept for [`Jit::dump_object`].
    pub fn new(text: &str, dumpable: bool) -> Result<Jit, CodegenError> {
        with_module(text, true, |m| {
            // SAFETY: the module is valid and in the LLVM dialect; the engine copies what it
            // needs, so the module may be dropped afterwards. A null engine is an error.
            let raw = unsafe {
                mlirExecutionEngineCreate(m.to_raw(), 3, 0, std::ptr::null(), dumpable, dumpable)
            };
            if raw.ptr.is_null() {
                return Err(CodegenError::Internal(
                    "the JIT could not compile the module".into(),
                ));
            }
            Ok(Jit { raw })
        })
    }

    /// The address of the packed wrapper (`_mlir_<name>`) of kernel `name`.
    pub fn lookup(&self, name: &str) -> Result<usize, CodegenError> {
        // SAFETY: the engine is live; the name is a valid string reference for the call.
        let p = unsafe { mlirExecutionEngineLookupPacked(self.raw, string_ref(name)) };
        if p.is_null() {
            return Err(CodegenError::Internal(format!(
                "kernel `{name}` was not compiled"
            )));
        }
        Ok(p as usize)
    }
}

impl Jit {
    /// Writes the compiled object code to `path` (the engine must have been created
    /// `dumpable`, and its symbols looked up, which is when LLVM compiles).
    pub fn dump_object(&self, path: &std::path::Path) -> Result<(), CodegenError> {
        let p = path
            .to_str()
            .ok_or_else(|| CodegenError::Internal(format!("{} is not UTF-8", path.display())))?;
        // SAFETY: the engine is live; the name is a valid string reference for the call.
        unsafe { mlirExecutionEngineDumpToObjectFile(self.raw, string_ref(p)) };
        Ok(())
    }
}

/// Where a module's machine code lives: a JIT engine, or a shared object from the kernel
/// cache. Kernel addresses stay valid while it is alive.
pub(crate) enum Code {
    /// Compiled in this process.
    Jit {
        /// Held for its code.
        _engine: Jit,
    },
    /// Loaded from the on-disk cache.
    Cached {
        /// Held for its code.
        _library: crate::cache::Library,
    },
}

impl Drop for Jit {
    fn drop(&mut self) {
        // SAFETY: created by `mlirExecutionEngineCreate`, destroyed exactly once.
        unsafe { mlirExecutionEngineDestroy(self.raw) }
    }
}
