//! graft's runtime: weights (memory-mapped safetensors), training data, Hugging Face PEFT
//! adapter files, and training sessions that run a program's `@init` and `@train_step`.
//!
//! Sessions run on the reference interpreter or on a compiled backend (`graft-codegen`'s),
//! behind the same [`Session`] API; [`cache`] keeps optimized steps between runs.

pub mod backend;
pub mod bench;
pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod export;
pub mod files;
pub mod generate;
pub mod labeled;
pub mod memory;
pub mod metrics;
pub mod peft;
pub mod peft_storage;
pub mod plot;
pub mod progress;
pub mod records;
pub mod session;
pub mod sigbus;
mod signals;
pub mod tokenizer;
pub mod trainer;
pub mod weights;

pub use backend::{Backend, Interpreter, MappedInput, Prepared, PreparedInfo, RunProfile};
pub use cache::cache_dir;
pub use checkpoint::{Fingerprint, Resumed};
pub use data::{Batches, DataError, Layout};
pub use peft::{PeftError, adapter_config, graft_path, load_adapter, peft_key, save_adapter};
pub use records::Example;
pub use session::{Session, SessionError, SessionOptions, StepStats, step_config, step_function};
pub use tokenizer::TextTokenizer;
pub use trainer::{Event, Outcome, TrainError, TrainOptions, train};
pub use weights::{TensorEntry, WeightsError, WeightsFile};

pub use files::{DirLock, lock_dir, regular_file, write_all_atomic, write_atomic};
