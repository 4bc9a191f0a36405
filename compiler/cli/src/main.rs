//! `graft`: the command-line driver. Each subcommand runs the pipeline up to the stage it needs.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use graft_frontend::{CompileFileError, DeclKind, Program, Stdlib, compile_file};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "graft", version, about = "A compiler for parameter-efficient fine-tuning", after_help = EXAMPLES)]
struct Cli {
    /// Read the stdlib from this folder instead of the copy built into graft
    /// (also: GRAFT_STDLIB).
    #[arg(long, global = true, value_name = "DIR")]
    stdlib: Option<PathBuf>,
    /// Color diagnostics: auto, always or never.
    #[arg(long, global = true, default_value = "auto")]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  graft check dsl-examples/tiny_lora.graft          check a spec, its imports and its weights file
  graft ir dsl-examples/tiny_lora.graft             print the IR (forward and init)
  graft ir dsl-examples/tiny_dora.graft --emit=ast  print the AST of the spec
  graft doctor                                      show the LLVM/MLIR toolchain and host CPU";

#[derive(Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The parsed spec, one line per item with its position.
    Ast,
    /// The elaborated IR: `forward` and `init`.
    Ir,
}

#[derive(Subcommand)]
enum Command {
    /// Check a spec: syntax, names, shapes, targets, and the weights file if present.
    #[command(after_help = "Example:\n  graft check dsl-examples/tiny_lora.graft")]
    Check {
        /// The spec.
        file: PathBuf,
    },
    /// Print a stage of the pipeline for a spec.
    #[command(
        after_help = "Examples:\n  graft ir dsl-examples/tiny_lora.graft --emit=ir\n  graft ir dsl-examples/tiny_lora.graft --emit=ast"
    )]
    Ir {
        /// The spec.
        file: PathBuf,
        /// Which stage to print.
        #[arg(long, default_value = "ir")]
        emit: Emit,
    },
    /// Train a spec on its `train` block's data and print the loss at each step.
    #[command(
        after_help = "Examples:\n  graft run dsl-examples/tiny_lora.graft --interpret --steps 20\n  graft run dsl-examples/tiny_dora.graft --interpret --steps 5 --save out/dora"
    )]
    Run {
        /// The spec.
        file: PathBuf,
        /// Run on the reference interpreter (the compiled CPU backend is not built yet, so this
        /// is also what happens without the flag).
        #[arg(long)]
        interpret: bool,
        /// Number of steps (default: the `train` block's `steps`).
        #[arg(long)]
        steps: Option<usize>,
        /// Seed for initializers and dropout (default: the `train` block's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the trained adapter here: PEFT's `adapter_config.json` +
        /// `adapter_model.safetensors` when the methods have a PEFT form, and
        /// `trainable.safetensors` with every trained tensor under its graft path.
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
    },
    /// Show the linked LLVM and MLIR and the host CPU's features.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stderr().is_terminal(),
    };
    let stdlib = cli
        .stdlib
        .clone()
        .map_or_else(Stdlib::from_env, Stdlib::Dir);
    match run(cli.command, &stdlib, color) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Compiles a spec, printing diagnostics; `None` when it has errors.
fn compile(
    file: &Path,
    stdlib: &Stdlib,
    color: bool,
) -> Result<Option<(graft_frontend::Loaded, Program)>> {
    match compile_file(file, stdlib) {
        Ok((loaded, program)) => {
            for w in &program.warnings {
                eprint!("{}", w.render(&loaded.sources, color));
            }
            Ok(Some((loaded, program)))
        }
        Err(CompileFileError::Compile(e)) => {
            eprint!("{}", e.render(color));
            Ok(None)
        }
        Err(e @ CompileFileError::Io(..)) => Err(e.into()),
    }
}

fn run(cmd: Command, stdlib: &Stdlib, color: bool) -> Result<ExitCode> {
    match cmd {
        Command::Check { file } => {
            let Some((_, program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            if !check_weights(&program) {
                return Ok(ExitCode::FAILURE);
            }
            println!("{}", summary(&program));
            Ok(ExitCode::SUCCESS)
        }
        Command::Ir { file, emit } => match emit {
            Emit::Ast => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                let name = file.display().to_string();
                let loaded = match graft_frontend::load(&name, Some(file.clone()), text, stdlib) {
                    Ok(l) => l,
                    Err(e) => {
                        eprint!("{}", e.render(color));
                        return Ok(ExitCode::FAILURE);
                    }
                };
                for f in loaded.files.iter().filter(|f| f.file == loaded.entry) {
                    print!(
                        "{}",
                        graft_frontend::ast_print::print_ast(f, &loaded.sources)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Emit::Ir => {
                let Some((_, program)) = compile(&file, stdlib, color)? else {
                    return Ok(ExitCode::FAILURE);
                };
                print!("{}", graft_ir::print_module(&program.module));
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Run {
            file,
            interpret,
            steps,
            seed,
            save,
        } => {
            let Some((_, program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            if !interpret {
                eprintln!(
                    "note: the compiled CPU backend is not built yet; running on the reference interpreter"
                );
            }
            train(&file, program, steps, seed, save.as_deref())
        }
        Command::Doctor => {
            let info = graft_codegen::host_info()?;
            println!("LLVM      {}", info.llvm_version);
            println!("target    {}", info.triple);
            println!("cpu       {}", info.cpu);
            let simd: Vec<&str> = [
                "sse4.2",
                "avx",
                "avx2",
                "fma",
                "avx512f",
                "avx512bf16",
                "neon",
            ]
            .into_iter()
            .filter(|f| info.has_feature(f))
            .collect();
            println!(
                "simd      {}",
                if simd.is_empty() {
                    "none detected".to_string()
                } else {
                    simd.join(" ")
                }
            );
            println!("MLIR      {} dialects registered", info.mlir_dialects);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Trains on the interpreter, printing one line per step.
fn train(
    spec: &Path,
    program: Program,
    steps: Option<usize>,
    seed: Option<u64>,
    save: Option<&Path>,
) -> Result<ExitCode> {
    use anyhow::Context;
    let dir = spec.parent().unwrap_or(Path::new("."));
    let weights = match &program.weights {
        Some((path, _)) => Some(graft_runtime::WeightsFile::open(path)?),
        None => {
            eprintln!("note: the spec names no weights file; frozen weights are seeded stand-ins");
            None
        }
    };
    let data = program
        .train
        .data
        .clone()
        .context("the `train` block names no `data` file")?;
    let vocab = program
        .module
        .function("forward")
        .and_then(|f| {
            f.output("logits")
                .map(|v| f.ty(v).shape.last().copied().unwrap_or(0))
        })
        .context("the model has no logits")?;
    let data_path = dir.join(&data);
    let tokens = graft_runtime::load_tokens(&data_path, vocab)?;
    let (batch, seq) = (program.train.batch, program.train.seq);
    let mut batcher =
        graft_runtime::Batcher::new(tokens, batch, seq, &data_path.display().to_string())?;
    let steps = steps.unwrap_or(program.train.steps);
    let seed = seed.unwrap_or(program.train.seed);
    let mut session = graft_runtime::Session::new(program, weights.as_ref(), seed)?;
    println!(
        "training {} trainable tensors, {batch} × {seq} tokens per step, {steps} steps",
        session.params().len()
    );
    for _ in 0..steps {
        let ids = batcher.next_batch();
        let start = std::time::Instant::now();
        let s = session.step(&ids, &ids)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "step {:>4}  loss {:.4}  lr {:.3e}  grad_norm {:.4}  {:.0} tok/s",
            s.step,
            s.loss,
            s.lr,
            s.grad_norm,
            (batch * seq) as f64 / secs.max(1e-9)
        );
        if !s.loss.is_finite() {
            anyhow::bail!(
                "the loss is not finite at step {}; lower the learning rate or enable `clip`",
                s.step
            );
        }
    }
    if let Some(out) = save {
        let params = session.params();
        let bytes = graft_runtime::weights::to_safetensors(&params).map_err(anyhow::Error::msg)?;
        graft_runtime::write_atomic(&out.join("trainable.safetensors"), &bytes)?;
        println!("saved {}", out.join("trainable.safetensors").display());
        match graft_runtime::save_adapter(out, &session.program.adapters, &params) {
            Ok(()) => println!("saved a PEFT adapter in {}", out.display()),
            Err(e) => eprintln!("note: no PEFT adapter written: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the weights file against the frozen weights the program reads. A missing file is a
/// warning (the spec itself is fine); a file that does not fit is an error.
fn check_weights(p: &Program) -> bool {
    let Some((path, _)) = &p.weights else {
        return true;
    };
    if !path.exists() {
        eprintln!(
            "warning: weights file {} does not exist yet; names and shapes were not checked against it",
            path.display()
        );
        return true;
    }
    let file = match graft_runtime::WeightsFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    let expected: Vec<(String, graft_ir::TensorType)> = p
        .tensors
        .iter()
        .filter(|t| {
            t.kind == DeclKind::Weight
                || t.quant.is_some()
                || !t.path.contains("lora")
                    && t.kind == DeclKind::Param
                    && p.module
                        .function("init")
                        .is_some_and(|f| f.input(&t.path).is_some())
        })
        .map(|t| (t.path.clone(), t.ty.clone()))
        .collect();
    let problems = file.check(&expected);
    for pr in &problems {
        eprintln!("error: {pr}");
    }
    problems.is_empty()
}

fn summary(p: &Program) -> String {
    let count = |k: DeclKind| -> (usize, usize) {
        let ts: Vec<_> = p.tensors.iter().filter(|t| t.kind == k).collect();
        (ts.len(), ts.iter().map(|t| t.ty.numel()).sum())
    };
    let (nw, ew) = count(DeclKind::Weight);
    let (np, ep) = count(DeclKind::Param);
    let nodes = p.module.function("forward").map_or(0, |f| f.nodes.len());
    let quant = p.tensors.iter().filter(|t| t.quant.is_some()).count();
    let mut s = format!(
        "ok: model `{}`: {nw} frozen tensors ({ew} elements",
        p.model_name
    );
    if quant > 0 {
        s += &format!(", {quant} quantized");
    }
    s += &format!(
        "), {np} trainable tensors ({ep} elements, {:.3}% of all), forward has {nodes} nodes",
        100.0 * ep as f64 / (ew + ep).max(1) as f64
    );
    s
}
