//! The graft language front end: source loading, the pest grammar, the AST, diagnostics,
//! target patterns, and elaboration of a spec into the IR.
//!
//! Entry point: [`compile`] (or [`compile_file`]) loads a spec and its imports, parses them,
//! and elaborates the model into a [`Program`] whose IR has a `forward` and an `init`
//! function.

pub mod ast;
pub mod ast_print;
pub mod diag;
pub mod elab;
pub mod load;
pub mod parse;
pub mod source;

pub use diag::{Diagnostic, Label, Severity};
pub use elab::{
    AdapterRecord, ConfigValue, DeclKind, Optimizer, PeftExport, PeftMask, PeftStack, Probe,
    Program, QuantSpec, Schedule, TensorInfo, TrainConfig, check_library, elaborate, elaborate_for,
    elaborate_merged,
};
pub use load::{Loaded, load};
pub use parse::parse_source;
pub use source::{SourceMap, Stdlib};

use std::path::Path;

/// A failed compilation: the diagnostic and the sources it points into.
#[derive(Debug)]
pub struct CompileError {
    /// What went wrong.
    pub diagnostic: Diagnostic,
    /// The files loaded so far.
    pub sources: SourceMap,
}

impl CompileError {
    /// Renders the diagnostic.
    pub fn render(&self, color: bool) -> String {
        self.diagnostic.render(&self.sources, color)
    }
}

/// Loads, parses and elaborates a spec given as text.
pub fn compile(
    name: &str,
    disk_path: Option<&Path>,
    text: String,
    stdlib: &Stdlib,
) -> Result<(Loaded, Program), Box<CompileError>> {
    let loaded = load(name, disk_path.map(Path::to_path_buf), text, stdlib)?;
    match elaborate(&loaded) {
        Ok(p) => Ok((loaded, p)),
        Err(diagnostic) => Err(Box::new(CompileError {
            diagnostic,
            sources: loaded.sources,
        })),
    }
}

/// Reads and compiles a spec file.
pub fn compile_file(path: &Path, stdlib: &Stdlib) -> Result<(Loaded, Program), CompileFileError> {
    let text = source::read_regular(path)
        .map_err(|e| CompileFileError::Io(path.display().to_string(), e))?;
    compile(&path.display().to_string(), Some(path), text, stdlib)
        .map_err(CompileFileError::Compile)
}

/// Why [`compile_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileFileError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    /// The spec has an error.
    #[error("compilation failed")]
    Compile(Box<CompileError>),
}
