//! graft's runtime: weights (memory-mapped safetensors), training data, Hugging Face PEFT
//! adapter files, and training sessions that run a program's `@init` and `@train_step`.
//!
//! Sessions run on the reference interpreter or on a compiled backend (`graft-codegen`'s),
//! behind the same [`Session`] API; [`cache`] keeps optimized steps between runs.

pub mod backend;
pub mod cache;
pub mod data;
pub mod peft;
pub mod session;
pub mod weights;

pub use backend::{Backend, Interpreter, MappedInput, Prepared, PreparedInfo, RunProfile};
pub use cache::cache_dir;
pub use data::{Batcher, DataError, load_tokens};
pub use peft::{PeftError, adapter_config, graft_path, load_adapter, peft_key, save_adapter};
pub use session::{Session, SessionError, SessionOptions, StepStats, step_config};
pub use weights::{TensorEntry, WeightsError, WeightsFile};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename,
/// so an interrupted write never leaves a truncated file behind.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let thread = format!("{:?}", std::thread::current().id()).replace(['(', ')'], "");
    let tmp = dir.join(format!(".{name}.tmp-{}-{thread}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
