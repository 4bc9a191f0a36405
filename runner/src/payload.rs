//! What a built binary carries besides its kernels' object code, as one JSON document
//! linked into its read-only data: the spec and every file its elaboration read (graft
//! sources, the model folder's `config.json`, the tokenizer's files), the CPU features its
//! kernels need, and for each function a run prepares, the optimized function, the function
//! as scheduled, its execution plan and the link symbol of each step's kernel.

use graft_exec::ExecPlan;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bumped when the payload's layout changes.
pub const FORMAT: u32 = 1;

/// Everything a built binary knows about its spec.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Payload {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// graft's version that built it.
    pub graft_version: String,
    /// The spec's absolute path when it was built (relative paths in it resolve against its
    /// folder, through [`Payload::files`]).
    pub spec: PathBuf,
    /// The stdlib folder the build read (`None`: the stdlib embedded in graft).
    pub stdlib: Option<PathBuf>,
    /// Files elaboration read, with their text (`None`: only their existence was checked).
    pub files: Vec<SourceFile>,
    /// The CPU level the kernels were compiled for (`native`, `x86-64-v3`, `x86-64-v4`).
    pub cpu: String,
    /// The CPU features the kernels need (Rust's `is_x86_feature_detected!` names).
    pub required: Vec<String>,
    /// The host CPU that built it, for messages.
    pub built_on: String,
    /// The functions a run prepares.
    pub functions: Vec<BuiltFunction>,
}

/// A file elaboration read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceFile {
    /// Its absolute path when built.
    pub path: PathBuf,
    /// Its text (`None` when only its existence mattered, like the weights file's).
    pub text: Option<String>,
}

/// One compiled function.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuiltFunction {
    /// What it is (`train_step`, `eval`).
    pub role: String,
    /// [`function_key`] of the function before optimization (what the runtime builds and
    /// asks the backend to optimize).
    pub unoptimized: String,
    /// The optimized function in IR text (what the runtime prepares).
    pub optimized: String,
    /// The function as scheduled, in IR text (the graph the plan's nodes index).
    pub scheduled: String,
    /// Its execution plan.
    pub plan: ExecPlan,
    /// The link symbol of each step's kernel wrapper (empty for host steps).
    pub symbols: Vec<String>,
}

/// The key a function is found by: the SHA-256 of its text form.
pub fn function_key(f: &graft_ir::Function) -> String {
    graft_runtime::cache::digest(&["graft built function", &graft_ir::print_function(f)])
}

/// The trailer after a binary's embedded weights: this magic, then the weights' offset and
/// length in the file (little-endian `u64`s), then 8 zero bytes.
pub const WEIGHTS_MAGIC: &[u8; 8] = b"GRAFTWTS";

/// Bytes of the trailer.
pub const TRAILER: usize = 32;

/// The trailer for weights of `len` bytes at `offset`.
pub fn weights_trailer(offset: u64, len: u64) -> [u8; TRAILER] {
    let mut t = [0u8; TRAILER];
    t[..8].copy_from_slice(WEIGHTS_MAGIC);
    t[8..16].copy_from_slice(&offset.to_le_bytes());
    t[16..24].copy_from_slice(&len.to_le_bytes());
    t
}

/// The embedded weights' offset and length, from the last [`TRAILER`] bytes of `file`.
pub fn embedded_weights(file: &std::path::Path) -> Option<(u64, usize)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file).ok()?;
    let size = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(size.checked_sub(TRAILER as u64)?))
        .ok()?;
    let mut t = [0u8; TRAILER];
    f.read_exact(&mut t).ok()?;
    if &t[..8] != WEIGHTS_MAGIC {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap_or([0; 8]));
    let (offset, len) = (word(8), word(16));
    (offset.checked_add(len)? + TRAILER as u64 <= size)
        .then_some((offset, usize::try_from(len).ok()?))
}
