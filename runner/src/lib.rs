//! The program inside a binary `graft build` makes: it trains the spec it was built from
//! with the kernels linked beside it, through the same training loop as `graft train`
//! (`graft_runtime::train`: data, checkpoints and resume, metrics, evaluation, signals,
//! saving the adapter). No compiler runs: the kernels are object code linked in, the
//! optimized steps and their execution plans come from the binary's payload
//! ([`payload::Payload`]), and the spec is elaborated again from the copies of its files
//! the payload carries, so the folders it was built from need not exist.
//!
//! `graft build` writes a C `main` that calls [`graft_runner_main`] with the payload and
//! the table of kernel wrappers, and links it with this static library.

pub mod backend;
pub mod cpu;
pub mod payload;

use clap::Parser;
use payload::{FORMAT, Payload};
use std::path::{Path, PathBuf};

/// One linked kernel: its link symbol and the address of its packed wrapper.
#[repr(C)]
pub struct KernelEntry {
    /// The symbol, NUL-terminated.
    pub name: *const std::ffi::c_char,
    /// The wrapper (`void (*)(void **)`).
    pub wrapper: *const std::ffi::c_void,
}

/// The entry point the generated `main` calls: `payload` is the JSON document of `len`
/// bytes, `table` the `count` linked kernels. Returns the process's exit status.
///
/// # Safety
/// `payload` points at `len` readable bytes and `table` at `count` entries whose names are
/// NUL-terminated strings, all alive for the whole process (they are the binary's read-only
/// data).
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_runner_main(
    payload: *const u8,
    len: usize,
    table: *const KernelEntry,
    count: usize,
) -> i32 {
    // SAFETY: the caller's contract.
    let (bytes, entries) = unsafe {
        (
            std::slice::from_raw_parts(payload, len),
            std::slice::from_raw_parts(table, count),
        )
    };
    let kernels = entries
        .iter()
        .map(|e| {
            // SAFETY: each name is a NUL-terminated string in the binary's data.
            let name = unsafe { std::ffi::CStr::from_ptr(e.name) };
            (name.to_string_lossy().into_owned(), e.wrapper as usize)
        })
        .collect();
    let code = run(bytes, kernels);
    // `ExitCode` has no accessor; the statuses used are these.
    match code {
        Status::Ok => 0,
        Status::Failed => 1,
        Status::Usage => 2,
        Status::Cpu => 3,
        Status::Interrupted => 130,
    }
}

/// How a run ended.
enum Status {
    Ok,
    Failed,
    Usage,
    Cpu,
    Interrupted,
}

/// Trains the spec this binary was built from.
#[derive(Parser)]
#[command(
    disable_version_flag = true,
    after_help = "The binary was built by `graft build` from a graft spec; its kernels are \
                  native code linked in. It needs no LLVM, MLIR, Rust or Python.\n\n\
                  Example:\n  ./train --weights model/ --data train.jsonl --steps 100 --out adapter/"
)]
struct Args {
    /// The weights: a Hugging Face model folder (model.safetensors or its shard index) or
    /// a safetensors file [default: the weights embedded in the binary, else the spec's,
    /// as built].
    #[arg(long, value_name = "PATH")]
    weights: Option<PathBuf>,
    /// The training data (JSONL) [default: the spec's `data`, relative to where it was
    /// built].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Number of steps [default: the `train` block's, or what `--epochs` gives].
    #[arg(long)]
    steps: Option<usize>,
    /// Passes over the data; the number of steps follows from it (`--steps` wins).
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Write the trained adapter here: PEFT's adapter_config.json and
    /// adapter_model.safetensors, and trainable.safetensors.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Keep a checkpoint here (written atomically every `--every` steps and at the end); a
    /// run that finds one resumes from it. SIGINT/SIGTERM/SIGHUP finish the step and save.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 10)]
    every: usize,
    /// Resume from a checkpoint written with other settings.
    #[arg(long)]
    force_resume: bool,
    /// Threads the kernels run on [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Seed for initializers, dropout and data order [default: the `train` block's].
    #[arg(long)]
    seed: Option<u64>,
    /// Held-out data for the eval loss [default: the spec's `eval_data`].
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,
    /// Steps between evaluations [default: the spec's `eval_every`].
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Append one JSON record per step to this file [default: metrics.jsonl in the
    /// --checkpoint folder, else in the --out folder].
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Start from the trained tensors in this folder (a PEFT adapter or trainable.safetensors).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Skip data lines that are not valid records (each reported) instead of stopping.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Draw batches in file order instead of a seeded random order each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Print what the binary was built from and for, and exit.
    #[arg(long)]
    info: bool,
}

fn run(bytes: &[u8], kernels: std::collections::HashMap<String, usize>) -> Status {
    let payload: Payload = match serde_json::from_slice(bytes) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: this binary's payload is damaged ({e}); build it again");
            return Status::Failed;
        }
    };
    if payload.format != FORMAT {
        eprintln!(
            "error: this binary's payload has format {} but its runner reads {FORMAT}",
            payload.format
        );
        return Status::Failed;
    }
    // Before anything else runs a kernel (or parses arguments: `--help` should work on any
    // CPU, but training must not start on one that lacks the kernels' instructions).
    let missing = cpu::missing(&payload.required);
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Status::Usage
            } else {
                Status::Ok
            };
        }
    };
    if args.info {
        println!("spec      {}", payload.spec.display());
        println!("graft     {}", payload.graft_version);
        println!(
            "cpu       {} (built on {}; needs {})",
            payload.cpu,
            payload.built_on,
            payload.required.join(",")
        );
        for f in &payload.functions {
            println!(
                "function  @{} ({} kernel launches)",
                f.role,
                f.plan.steps.len()
            );
        }
        if let Some((_, len)) = std::env::current_exe()
            .ok()
            .and_then(|exe| payload::embedded_weights(&exe))
        {
            println!("weights   embedded ({:.1} MB)", len as f64 / 1e6);
        }
        for f in &payload.files {
            let what = f
                .text
                .as_ref()
                .map_or("exists".into(), |t| format!("{} bytes", t.len()));
            println!("file      {} ({what})", f.path.display());
        }
        return Status::Ok;
    }
    if !missing.is_empty() {
        eprintln!(
            "error: this binary was built for CPU level {} (on {}), and this CPU lacks {}; \
             build it with `graft build --cpu x86-64-v3` (or a level this CPU has) to run here",
            payload.cpu,
            payload.built_on,
            missing.join(", ")
        );
        return Status::Cpu;
    }
    match train(&payload, kernels, args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            Status::Failed
        }
    }
}

/// The weights file of a folder or a file path, as the spec's `from` folder would give it.
fn weights_file(p: &Path) -> Result<PathBuf, String> {
    if !p.is_dir() {
        return Ok(p.to_path_buf());
    }
    for name in ["model.safetensors", "model.safetensors.index.json"] {
        if p.join(name).is_file() {
            return Ok(p.join(name));
        }
    }
    Err(format!(
        "{} has no model.safetensors or model.safetensors.index.json",
        p.display()
    ))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn train(
    payload: &Payload,
    kernels: std::collections::HashMap<String, usize>,
    args: Args,
) -> Result<Status, String> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| format!("--threads {n}: {e}"))?;
    }
    let files = payload
        .files
        .iter()
        .map(|f| (f.path.clone(), f.text.clone().map(String::into_bytes)))
        .collect();
    graft_frontend::source::overlay::install(files);
    let stdlib = match &payload.stdlib {
        Some(d) => graft_frontend::Stdlib::Dir(d.clone()),
        None => graft_frontend::Stdlib::Embedded,
    };
    let (loaded, mut program) = match graft_frontend::compile_file(&payload.spec, &stdlib) {
        Ok(x) => x,
        Err(graft_frontend::CompileFileError::Compile(e)) => {
            return Err(format!(
                "the spec carried by this binary does not elaborate:\n{}",
                e.render(false)
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    drop(loaded);
    let embedded = std::env::current_exe()
        .ok()
        .and_then(|exe| Some((payload::embedded_weights(&exe)?, exe)));
    let chosen = match (&args.weights, embedded) {
        (Some(w), _) => Some(weights_file(&absolute(w))?),
        (None, Some(((offset, len), exe))) => {
            graft_runtime::weights::embed(&exe, offset, len);
            Some(exe)
        }
        (None, None) => None,
    };
    if let Some(path) = chosen {
        let span = program.weights.as_ref().map_or(
            graft_frontend::ast::Span {
                file: graft_frontend::ast::FileId(0),
                start: 0,
                end: 0,
            },
            |(_, s)| *s,
        );
        program.weights = Some((path, span));
    }
    if let Some(d) = &args.data {
        program.train.data = Some(absolute(d).display().to_string());
    }
    if let Some(e) = args.epochs {
        program.train.epochs = Some(e.max(1));
    }
    if args.no_shuffle {
        program.train.shuffle = false;
    }
    let backend = backend::LinkedBackend::new(&payload.functions, kernels)?;
    let session_opts = graft_runtime::SessionOptions {
        optimize: true,
        backend: &backend,
    };
    let metrics = args.metrics.map(|m| absolute(&m)).or_else(|| {
        args.checkpoint
            .as_ref()
            .or(args.out.as_ref())
            .map(|d| absolute(d).join("metrics.jsonl"))
    });
    let opts = graft_runtime::TrainOptions {
        steps: args.steps,
        seed: args.seed,
        checkpoint: args.checkpoint.map(|p| absolute(&p)),
        every: args.every,
        save: args.out.map(|p| absolute(&p)),
        force_resume: args.force_resume,
        debug_non_finite: false,
        metrics,
        eval: args.eval.map(|p| absolute(&p)),
        eval_every: args.eval_every,
        adapter: args.adapter.map(|p| absolute(&p)),
        skip_bad_lines: args.skip_bad_lines,
    };
    let t = &program.train;
    let mut printer = graft_runtime::progress::Printer::new(t.batch * t.seq * t.accumulate.max(1));
    let outcome = graft_runtime::train(&payload.spec, program, &session_opts, &opts, &mut |e| {
        printer.event(e)
    });
    printer.finish();
    match outcome.map_err(|e| e.to_string())? {
        graft_runtime::Outcome::Finished => Ok(Status::Ok),
        graft_runtime::Outcome::Interrupted(why) => {
            eprintln!("stopped by {why}; the state above is saved");
            Ok(Status::Interrupted)
        }
    }
}
