//! `graft`: the command-line driver. Each subcommand runs the pipeline up to the stage it needs.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use graft_frontend::{CompileFileError, DeclKind, Program, Stdlib, compile_file};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod build;
mod compare;

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

/// `--bad-lines`.
#[derive(Clone, Copy, ValueEnum)]
enum BadLines {
    /// Stop at the first bad line.
    Stop,
    /// Skip bad lines, reporting each.
    Skip,
}

/// How the data becomes batches; each flag overrides the `train` block's setting.
#[derive(Clone, Copy, Debug, clap::Args)]
struct DataArgs {
    /// Passes over the data; the number of steps follows from it (`--steps` wins)
    /// [`train`: `epochs`].
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Pad each record to `seq` tokens instead of packing records into `seq`-token blocks
    /// [`train`: `packing false`].
    #[arg(long, conflicts_with = "pack")]
    pad: bool,
    /// Pack records into `seq`-token blocks [`train`: `packing true`, the default].
    #[arg(long)]
    pack: bool,
    /// Draw batches in file order instead of a seeded random order each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Micro-batches whose gradients are summed before each optimizer step
    /// [`train`: `accumulate`].
    #[arg(long, value_name = "N")]
    accumulate: Option<usize>,
}

impl DataArgs {
    fn apply(self, t: &mut graft_frontend::TrainConfig) {
        if let Some(e) = self.epochs {
            t.epochs = Some(e.max(1));
        }
        if self.pad {
            t.packing = false;
        }
        if self.pack {
            t.packing = true;
        }
        if self.no_shuffle {
            t.shuffle = false;
        }
        if let Some(a) = self.accumulate {
            t.accumulate = a.max(1);
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The parsed spec, one line per item with its position.
    Ast,
    /// The elaborated IR: `forward` and `init`.
    Ir,
    /// The training step after the e-graph optimizer.
    Opt,
    /// The optimized training step after each lowering pass (or those `--print-after` names).
    Lowered,
    /// The kernel schedule of the optimized training step: buffers and one line per launch.
    Schedule,
    /// The optimized training step lowered to MLIR (linalg/vector/scf on memrefs).
    Mlir,
    /// The optimized training step as LLVM IR, after the MLIR pass pipeline.
    Llvm,
    /// The optimized training step's elementwise, reduction and softmax kernels as PTX for
    /// sm_90 (libdevice from `$GRAFT_CUDA_TOOLS`, else `target/cuda-tools`, when there).
    Ptx,
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
        /// With `--emit=lowered`: only the IR after these lowering passes (comma-separated:
        /// chunk-vocabulary, decompose-log-softmax, hoist-reductions, rematerialize).
        /// `GRAFT_PRINT_AFTER=<passes>|all` prints them to stderr on every compile.
        #[arg(long, value_delimiter = ',')]
        print_after: Vec<String>,
    },
    /// Train a spec on its `train` block's data: a progress bar on a terminal (loss, tokens/s,
    /// ETA), a line per step otherwise.
    #[command(
        visible_alias = "run",
        after_help = "Examples:\n  graft train dsl-examples/tiny_lora.graft --steps 20 --save out/lora\n  graft train dsl-examples/tiny_dora.graft --interpret --steps 5 --checkpoint out/run"
    )]
    Train {
        /// The spec.
        file: PathBuf,
        /// Run on the reference interpreter instead of compiled native code.
        #[arg(long)]
        interpret: bool,
        /// Number of steps (default: the `train` block's `steps`).
        #[arg(long)]
        steps: Option<usize>,
        /// Seed for initializers and dropout (default: the `train` block's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Skip the e-graph optimizer (run the training step as elaborated).
        #[arg(long)]
        no_optimize: bool,
        /// Keep a checkpoint here (`checkpoint.safetensors`, written atomically every
        /// `--every` steps and at the end, with a checksum and the run's fingerprint); a run
        /// that finds one resumes from it. The folder is locked while the run uses it.
        /// SIGINT/SIGTERM/SIGHUP finish the current step and save (a second one exits).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
        /// Steps between checkpoints.
        #[arg(long, default_value_t = 10)]
        every: usize,
        /// Write the trained adapter here: PEFT's `adapter_config.json` +
        /// `adapter_model.safetensors` when the methods have a PEFT form, and
        /// `trainable.safetensors` with every trained tensor under its graft path.
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
        /// Resume from the checkpoint even though it was written with other settings
        /// (learning rate, schedule, data, seed, ...); the changes are listed as warnings.
        #[arg(long)]
        force_resume: bool,
        /// Held-out data for the eval loss and perplexity [default: the `train` block's
        /// `eval_data`].
        #[arg(long, value_name = "FILE")]
        eval: Option<PathBuf>,
        /// Steps between evaluations [default: the `train` block's `eval_every`, else only
        /// after the last step].
        #[arg(long, value_name = "N")]
        eval_every: Option<usize>,
        /// Start from the trained tensors in this folder: a PEFT adapter (made by PEFT or by
        /// graft) or graft's trainable.safetensors (a resumed checkpoint takes precedence).
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// What to do with a data line that is not a valid record: stop (the error names
        /// the file and line) or skip it (each skipped line is reported).
        #[arg(long, value_name = "POLICY", default_value = "stop")]
        bad_lines: BadLines,
        /// Append one JSON record per step (step, loss, grad_norm, lr, seconds, tokens_per_s)
        /// to this file [default: metrics.jsonl in the --checkpoint folder, else in the --save
        /// folder, else none].
        #[arg(long, value_name = "FILE")]
        metrics: Option<PathBuf>,
        /// When a step's loss or gradient norm is not finite, run that step again on the
        /// interpreter and name the first op whose value is not finite (keeps a copy of the
        /// trainable state before every step).
        #[arg(long)]
        debug_non_finite: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// The held-out loss and perplexity of a spec's model, with trained tensors from a PEFT
    /// adapter folder or graft's trainable.safetensors (or the initial ones).
    #[command(
        after_help = "Examples:\n  graft eval dsl-examples/tiny_lora.graft --adapter out/lora\n  graft eval dsl-examples/tiny_lora.graft --adapter out/lora --data data/heldout.jsonl"
    )]
    Eval {
        /// The spec.
        file: PathBuf,
        /// The trained tensors.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// The data [default: the `train` block's `eval_data`, else its `data`].
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
        /// Also write the first batch's input_ids and logits (from the interpreter) to this
        /// safetensors file, to compare with another implementation.
        #[arg(long, value_name = "FILE")]
        logits: Option<PathBuf>,
        /// Run on the reference interpreter.
        #[arg(long)]
        interpret: bool,
        #[command(flatten)]
        layout: DataArgs,
    },
    /// Continue a prompt with the spec's model and trained tensors (greedy by default, or
    /// sampled with --temperature and --top-p), printing the text as it is generated.
    #[command(
        after_help = "Examples:\n  graft generate dsl-examples/stories_lora.graft --adapter out/stories --prompt \"Every morning\"\n  graft generate dsl-examples/stories_lora.graft --adapter out/stories --chat --prompt \"What does Mia keep in the garden?\" --temperature 0.7 --top-p 0.9"
    )]
    Generate {
        /// The spec.
        file: PathBuf,
        /// The trained tensors: a PEFT adapter folder or graft's trainable.safetensors.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// The text to continue.
        #[arg(long)]
        prompt: String,
        /// Send the prompt as a user message through the tokenizer's chat template.
        #[arg(long)]
        chat: bool,
        /// Tokens to generate at most (it stops earlier at eos).
        #[arg(long, default_value_t = 48)]
        max_new_tokens: usize,
        /// 0 is greedy; above 0, logits are divided by it and the token is sampled.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Nucleus sampling: draw from the most likely tokens whose probability reaches it.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Recompute the whole window for every token instead of decoding one position at
        /// a time against a KV cache.
        #[arg(long)]
        no_kv_cache: bool,
        /// Keep generating past the end-of-sequence token (to measure speed).
        #[arg(long)]
        ignore_eos: bool,
        /// Run on the reference interpreter.
        #[arg(long)]
        interpret: bool,
    },
    /// Write a model folder with the trained adapters folded into the base weights
    /// (model.safetensors in f32, config.json and the tokenizer files), which transformers
    /// loads as a plain model.
    #[command(
        after_help = "Example:\n  graft export dsl-examples/stories_lora.graft --adapter out/stories --merged out/stories-merged"
    )]
    Export {
        /// The spec.
        file: PathBuf,
        /// The trained tensors: a PEFT adapter folder or graft's trainable.safetensors.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// The folder to write the merged model into.
        #[arg(long, value_name = "DIR")]
        merged: PathBuf,
    },
    /// Optimize a spec's training step and show what the optimizer did: rules fired, cost
    /// before and after (FLOPs, bytes, peak memory), and the optimized IR.
    #[command(
        after_help = "Examples:\n  graft explain dsl-examples/tiny_lora.graft\n  graft explain dsl-examples/small_lora.graft --target cuda --no-ir\n  graft explain dsl-examples/tiny_lora.graft --merge   # inference with adapters folded in\n  graft explain dsl-examples/tiny_lora.graft --compare 'lora(r: 16)' 'dora(r: 8)' 'nf4: lora(r: 8)'"
    )]
    Explain {
        /// The spec.
        file: PathBuf,
        /// The cost model's target: cpu or cuda.
        #[arg(long, default_value = "cpu")]
        target: String,
        /// Optimize the forward for inference with adapters folded into the weights.
        #[arg(long)]
        merge: bool,
        /// Print only the report, not the optimized IR.
        #[arg(long)]
        no_ir: bool,
        /// Compare candidate adapters before training: each an adapt rule such as
        /// `lora(r: 16)` (the spec's first target unless it says `at ...`; a leading `nf4:`
        /// quantizes the base to NF4), with its trainable parameters and estimated cost.
        #[arg(long, num_args = 1.., value_name = "RULE")]
        compare: Vec<String>,
    },
    /// Measure training-step throughput and memory on random tokens; prints one JSON line
    /// (`scripts/bench.py` compares it with PyTorch + PEFT).
    #[command(
        after_help = "Example:\n  graft bench tests/opt-specs/tiny_qkvo.graft --steps 5 --warmup 2"
    )]
    Bench {
        /// The spec.
        #[arg(required_unless_present = "peak")]
        file: Option<PathBuf>,
        /// Measure the host's fp32 FMA peak instead (a register-resident FMA loop on every
        /// thread) and print `{"fma_peak_flops_per_s": …, "threads": …, "isa": …}`.
        #[arg(long, conflicts_with = "file")]
        peak: bool,
        /// Threads for `--peak` (default: every CPU).
        #[arg(long, requires = "peak")]
        threads: Option<usize>,
        /// Timed steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Run on the reference interpreter.
        #[arg(long)]
        interpret: bool,
        /// Skip the e-graph optimizer.
        #[arg(long)]
        no_optimize: bool,
        /// After the warm-up, print `{"ready": true}` and run one timed step per `step` line
        /// read from stdin (printing `{"seconds": ...}` for each) until `end` or the end of
        /// input, then the summary line: for benchmarks that alternate steps with another
        /// process (`scripts/bench.py`), so both see the same machine. A `profile` line runs
        /// an extra step, not counted in the summary, whose kernels are timed, and prints
        /// its time and where it went (`gemm_seconds`, `gemm_flops`, `pack_seconds`,
        /// `other_seconds`, `launches`; only `seconds` with the interpreter).
        #[arg(long, conflicts_with = "steps")]
        serve: bool,
    },
    /// Build a standalone training binary: the spec's optimized training step compiled ahead
    /// of time for a CPU level and linked with the runtime's training loop, its tokenizer
    /// and its elaborated sources. It needs no LLVM, MLIR, Rust or Python to run; run it
    /// with `--help` for its flags (weights, data, steps, output, checkpoint, threads, seed).
    #[command(
        after_help = "Examples:\n  graft build dsl-examples/tiny_lora.graft -o train-tiny\n  ./train-tiny --steps 20 --out out/lora\n  graft build spec.graft -o train --cpu x86-64-v3"
    )]
    Build {
        /// The spec.
        file: PathBuf,
        /// The executable to write.
        #[arg(short, long, value_name = "BINARY")]
        output: PathBuf,
        /// The CPU the binary may assume: `native` (this machine's features), `x86-64-v3`
        /// (AVX2 and FMA) or `x86-64-v4` (AVX-512). A binary started on a CPU that lacks
        /// them says so and exits (status 3).
        #[arg(long, default_value = "native", value_name = "LEVEL")]
        cpu: String,
        /// Append the spec's weights file (one safetensors file) to the binary, so that it
        /// needs no `--weights` (which still overrides them).
        #[arg(long)]
        embed_weights: bool,
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
            if let Some(code) = check_library(&file, stdlib, color)? {
                return Ok(code);
            }
            let Some((_, program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            if !check_weights(&program) {
                return Ok(ExitCode::FAILURE);
            }
            let need = graft_runtime::memory::estimate(&program);
            if let Some(m) = graft_runtime::memory::too_big(
                need,
                "training this model (weights and trainable state)",
            ) {
                eprintln!("warning: {m}");
            }
            println!("{}", summary(&program));
            Ok(ExitCode::SUCCESS)
        }
        Command::Ir {
            file,
            emit,
            print_after,
        } => match emit {
            Emit::Ast => {
                let text = graft_frontend::source::read_regular(&file)
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
            Emit::Opt => {
                let Some((_, program)) = compile(&file, stdlib, color)? else {
                    return Ok(ExitCode::FAILURE);
                };
                let opt = optimize_program(&program, graft_opt::Target::CPU, false)?;
                print!("{}", graft_ir::print_function(&opt.func));
                Ok(ExitCode::SUCCESS)
            }
            Emit::Lowered | Emit::Schedule => {
                if let Some(p) = print_after
                    .iter()
                    .find(|p| graft_codegen::pass(p).is_none())
                {
                    let names: Vec<&str> = graft_codegen::PASSES.iter().map(|p| p.name).collect();
                    anyhow::bail!("no lowering pass `{p}` (passes: {})", names.join(", "));
                }
                let Some((_, program)) = compile(&file, stdlib, color)? else {
                    return Ok(ExitCode::FAILURE);
                };
                let opt = optimize_program(&program, graft_opt::Target::CPU, false)?;
                let target = graft_codegen::CpuTarget::host();
                if matches!(emit, Emit::Schedule) {
                    print!("{}", graft_codegen::schedule_text(&opt.func, &target)?);
                    return Ok(ExitCode::SUCCESS);
                }
                graft_codegen::run_passes(&opt.func, &target, true, &mut |name, f| {
                    if print_after.is_empty() || print_after.iter().any(|p| p == name) {
                        println!("// IR after {name}");
                        print!("{}", graft_ir::print_function(f));
                    }
                })?;
                Ok(ExitCode::SUCCESS)
            }
            Emit::Mlir | Emit::Llvm => {
                let Some((_, program)) = compile(&file, stdlib, color)? else {
                    return Ok(ExitCode::FAILURE);
                };
                let opt = optimize_program(&program, graft_opt::Target::CPU, false)?;
                let text = if matches!(emit, Emit::Mlir) {
                    graft_codegen::emit_mlir(&opt.func)?
                } else {
                    graft_codegen::emit_llvm(&opt.func)?
                };
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Emit::Ptx => {
                let Some((_, program)) = compile(&file, stdlib, color)? else {
                    return Ok(ExitCode::FAILURE);
                };
                let opt = optimize_program(&program, graft_opt::Target::CPU, false)?;
                let tools = std::env::var_os("GRAFT_CUDA_TOOLS")
                    .map_or_else(|| PathBuf::from("target/cuda-tools"), PathBuf::from);
                let libdevice = tools.join("libdevice.10.bc");
                let arch = graft_codegen::GPU_ARCHS[1];
                let ptx = graft_codegen::emit_ptx(
                    &opt.func,
                    arch,
                    libdevice.is_file().then_some(libdevice.as_path()),
                )?;
                print!("{}", ptx.text);
                eprintln!(
                    "{} kernels for {}; {} steps elsewhere (matmuls and packs: cuBLAS)",
                    ptx.kernels.len(),
                    arch.chip,
                    ptx.elsewhere.len()
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Explain {
            file,
            target,
            merge,
            no_ir,
            compare,
        } => {
            let target = graft_opt::Target::by_name(&target)
                .ok_or_else(|| anyhow::anyhow!("unknown target `{target}` (cpu or cuda)"))?;
            let Some((_, program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            if !compare.is_empty() {
                print!(
                    "{}",
                    compare::compare(&file, &program, &compare, stdlib, target)?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let opt = optimize_program(&program, target, merge)?;
            print!("{}", explain(&opt, target, merge));
            if !no_ir {
                println!();
                print!("{}", graft_ir::print_function(&opt.func));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            file,
            interpret,
            steps,
            seed,
            save,
            no_optimize,
            checkpoint,
            every,
            force_resume,
            debug_non_finite,
            metrics,
            eval,
            eval_every,
            adapter,
            bad_lines,
            data,
        } => {
            let Some((_, mut program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            data.apply(&mut program.train);
            let backend = pick_backend(interpret);
            let opts = graft_runtime::SessionOptions {
                optimize: !no_optimize,
                backend: backend.as_ref(),
            };
            let metrics = metrics.or_else(|| {
                checkpoint
                    .as_ref()
                    .or(save.as_ref())
                    .map(|d| d.join("metrics.jsonl"))
            });
            let train_opts = graft_runtime::TrainOptions {
                steps,
                seed,
                checkpoint,
                every,
                save,
                force_resume,
                debug_non_finite,
                metrics,
                eval,
                eval_every,
                adapter,
                skip_bad_lines: matches!(bad_lines, BadLines::Skip),
            };
            train(&file, program, &train_opts, &opts)
        }
        Command::Eval {
            file,
            adapter,
            data,
            logits,
            interpret,
            layout,
        } => {
            let Some((_, mut program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            layout.apply(&mut program.train);
            let backend = pick_backend(interpret);
            let opts = graft_runtime::SessionOptions {
                optimize: true,
                backend: backend.as_ref(),
            };
            let e = graft_runtime::eval::evaluate_spec(
                &file,
                program,
                &opts,
                adapter.as_deref(),
                data.as_deref(),
                logits.as_deref(),
            )?;
            println!(
                "eval loss {:.4}{}  ({} batches)",
                e.loss,
                e.metrics_text(),
                e.batches
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            file,
            adapter,
            merged,
        } => {
            let Some((loaded, _)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            for f in graft_runtime::export::export_merged(&loaded, adapter.as_deref(), &merged)? {
                eprintln!("wrote {}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            file,
            adapter,
            prompt,
            chat,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            no_kv_cache,
            ignore_eos,
            interpret,
        } => {
            let Some((loaded, program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            let backend = pick_backend(interpret);
            let opts = graft_runtime::SessionOptions {
                optimize: true,
                backend: backend.as_ref(),
            };
            let req = graft_runtime::generate::Request {
                prompt: &prompt,
                chat,
                adapter: adapter.as_deref(),
                kv_cache: !no_kv_cache,
                ignore_eos,
                sampling: graft_runtime::generate::Sampling {
                    max_new_tokens,
                    temperature,
                    top_p: top_p.clamp(0.0, 1.0),
                    seed,
                },
            };
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if !chat {
                let _ = write!(out, "{prompt}");
            }
            let started = std::time::Instant::now();
            let (_, done) = graft_runtime::generate::generate_spec(
                &file,
                &loaded,
                &program,
                &opts,
                &req,
                &mut |t| {
                    let _ = write!(out, "{t}");
                    let _ = out.flush();
                },
                &mut |note| eprintln!("note: {note}"),
            )?;
            let _ = writeln!(out);
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{} tokens in {secs:.2} s ({:.1} tokens/s, {})",
                done.tokens.len(),
                done.tokens.len() as f64 / secs.max(1e-9),
                if done.cached {
                    "KV cache"
                } else {
                    "recomputing the window"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            file,
            peak,
            threads,
            steps,
            warmup,
            interpret,
            no_optimize,
            serve,
        } => {
            let Some(file) = file.filter(|_| !peak) else {
                let threads = threads.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                });
                let p = graft_codegen::fma_peak(threads, 0.5);
                println!(
                    "{}",
                    serde_json::json!({
                        "fma_peak_flops_per_s": p.flops_per_s,
                        "threads": p.threads,
                        "isa": p.isa,
                        // Unoptimized code does not reach the peak: a debug build's figure
                        // is not the host's.
                        "optimized_build": !cfg!(debug_assertions),
                    })
                );
                return Ok(ExitCode::SUCCESS);
            };
            let baseline = graft_runtime::memory::rss_bytes("VmRSS");
            let Some((_, program)) = compile(&file, stdlib, color)? else {
                return Ok(ExitCode::FAILURE);
            };
            let backend = pick_backend(interpret);
            let opts = graft_runtime::SessionOptions {
                optimize: !no_optimize,
                backend: backend.as_ref(),
            };
            let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
            let (mut input, mut output) = (stdin.lock(), stdout.lock());
            let steps = if serve {
                graft_runtime::bench::Steps::Served {
                    input: &mut input,
                    output: &mut output,
                }
            } else {
                graft_runtime::bench::Steps::Count(steps)
            };
            let report =
                graft_runtime::bench::bench(&file, program, steps, warmup, baseline, &opts)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Build {
            file,
            output,
            cpu,
            embed_weights,
        } => {
            let cpu = graft_codegen::CpuLevel::parse(&cpu).map_err(anyhow::Error::msg)?;
            if !cpu.runs_here() {
                eprintln!(
                    "note: this CPU lacks some of {}'s features; the binary will not run here",
                    cpu.name()
                );
            }
            let started = std::time::Instant::now();
            let built = build::build(&build::BuildRequest {
                spec: &file,
                output: &output,
                cpu,
                stdlib,
                embed_weights,
            })?;
            let fns: Vec<String> = built
                .functions
                .iter()
                .map(|(r, n)| format!("@{r} ({n} launches)"))
                .collect();
            println!(
                "wrote {} ({:.1} MB, {} object files, {}; cpu {}) in {:.1} s \
                 ({:.1} s optimizing and compiling, {:.1} s linking)",
                output.display(),
                built.bytes as f64 / 1e6,
                built.objects,
                fns.join(", "),
                cpu.name(),
                started.elapsed().as_secs_f64(),
                built.compile_seconds,
                built.link_seconds
            );
            Ok(ExitCode::SUCCESS)
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
            if cfg!(debug_assertions) {
                println!("fma peak  not measured: this is a debug build (run a release build)");
            } else {
                let threads =
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
                let p = graft_codegen::fma_peak(threads, 0.2);
                println!(
                    "fma peak  {:.1} GFLOP/s fp32 ({}, {} threads; graft bench --peak)",
                    p.flops_per_s / 1e9,
                    p.isa,
                    p.threads
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the e-graph optimizer on the training step (or, with `merge`, the forward).
fn optimize_program(
    p: &Program,
    target: graft_opt::Target,
    merge: bool,
) -> Result<graft_opt::Optimized> {
    let forward = p
        .module
        .function("forward")
        .ok_or_else(|| anyhow::anyhow!("no forward"))?;
    let (f, mode) = if merge {
        (forward.clone(), graft_opt::Mode::Merge)
    } else {
        (
            graft_autodiff::train_step(forward, &graft_runtime::step_config(&p))?,
            graft_opt::Mode::Train,
        )
    };
    Ok(graft_opt::optimize(
        &f,
        &graft_opt::Options {
            target,
            mode,
            ..graft_opt::Options::default()
        },
    )?)
}

/// The human-readable optimizer report.
fn explain(o: &graft_opt::Optimized, target: graft_opt::Target, merge: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let what = if merge {
        "forward, adapters merged"
    } else {
        "training step"
    };
    let _ = writeln!(s, "optimized the {what} for {}", target.name);
    let _ = writeln!(s, "rules fired:");
    let mut rules: Vec<(&String, &usize)> = o.run.applied.iter().collect();
    rules.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (name, n) in rules {
        let _ = writeln!(s, "  {name:<32} {n:>6}");
    }
    let _ = writeln!(
        s,
        "e-graph: {} nodes, {} classes, {} iterations in {:.2} s ({:.2} s with extraction); phases stopped: {}",
        o.run.nodes,
        o.run.classes,
        o.run.iterations,
        o.run.time.as_secs_f64(),
        o.time.as_secs_f64(),
        o.run.stops.join(", ")
    );
    let _ = writeln!(
        s,
        "shared-input batching groups adopted: {}",
        o.batched_groups
    );
    let row = |s: &mut String, name: &str, a: f64, b: f64| {
        let change = if a > 0.0 { 100.0 * (b - a) / a } else { 0.0 };
        let _ = writeln!(s, "  {name:<14} {a:>12.4e} {b:>12.4e} {change:>+8.1}%");
    };
    let _ = writeln!(s, "cost             before        after   change");
    row(&mut s, "FLOPs", o.before.flops, o.after.flops);
    row(&mut s, "bytes moved", o.before.bytes, o.after.bytes);
    row(
        &mut s,
        "kernels",
        o.before.kernels as f64,
        o.after.kernels as f64,
    );
    row(
        &mut s,
        "peak memory",
        o.before.peak_memory,
        o.after.peak_memory,
    );
    row(&mut s, "est. seconds", o.before.seconds, o.after.seconds);
    s
}

/// The backend `run` and `bench` use.
fn pick_backend(interpret: bool) -> Box<dyn graft_runtime::Backend> {
    if interpret {
        Box::new(graft_runtime::Interpreter)
    } else {
        Box::new(graft_codegen::CpuBackend)
    }
}

/// Trains through the runtime's loop, printing what it reports (`graft_runtime::progress`).
fn train(
    spec: &Path,
    program: Program,
    opts: &graft_runtime::TrainOptions,
    session_opts: &graft_runtime::SessionOptions,
) -> Result<ExitCode> {
    let t = &program.train;
    let mut printer = graft_runtime::progress::Printer::new(t.batch * t.seq * t.accumulate.max(1));
    let outcome =
        graft_runtime::train(spec, program, session_opts, opts, &mut |e| printer.event(e));
    printer.finish();
    match outcome? {
        graft_runtime::Outcome::Finished => Ok(ExitCode::SUCCESS),
        graft_runtime::Outcome::Interrupted(why) => {
            eprintln!("stopped by {why}; the state above is saved");
            Ok(ExitCode::from(130))
        }
    }
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
    // What the session reads from the file: frozen weights, and unfrozen ones' start values.
    let expected: Vec<(String, graft_ir::TensorType)> = p
        .tensors
        .iter()
        .filter(|t| t.from_weights)
        .map(|t| (t.path.clone(), t.ty.clone()))
        .collect();
    match file.fit(&expected) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

/// `graft check` on a file that declares no model: each adapter on a probe module. `None`
/// when the file declares a model (or fails to load: `compile` reports that).
fn check_library(file: &Path, stdlib: &Stdlib, color: bool) -> Result<Option<ExitCode>> {
    let Ok(text) = graft_frontend::source::read_regular(file) else {
        return Ok(None);
    };
    let name = file.display().to_string();
    let Ok(loaded) = graft_frontend::load(&name, Some(file.to_path_buf()), text, stdlib) else {
        return Ok(None);
    };
    let entry = loaded.files.iter().filter(|f| f.file == loaded.entry);
    if entry
        .flat_map(|f| f.items.iter())
        .any(|i| matches!(i, graft_frontend::ast::Item::Model(_)))
    {
        return Ok(None);
    }
    match graft_frontend::check_library(&loaded) {
        Ok(probes) => {
            for p in probes {
                let inputs: Vec<String> = p.input.iter().map(ToString::to_string).collect();
                println!(
                    "ok: adapter `{}` on {} (input {}): forward has {} nodes",
                    p.adapter,
                    p.module,
                    inputs.join(", "),
                    p.nodes
                );
                for (path, ty, kind) in p.tensors {
                    let what = match kind {
                        DeclKind::Param => "trainable",
                        DeclKind::Buffer => "computed at init",
                        DeclKind::Weight => "frozen",
                        DeclKind::State => "training state",
                    };
                    println!("  {path}: {ty} ({what})");
                }
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        Err(d) => {
            eprint!("{}", d.render(&loaded.sources, color));
            Ok(Some(ExitCode::FAILURE))
        }
    }
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
    let (nb, eb) = count(DeclKind::Buffer);
    if nb > 0 {
        s += &format!("; {nb} computed at init, {eb} elements");
    }
    s += &format!(
        "), {np} trainable tensors ({ep} elements, {:.3}% of all), forward has {nodes} nodes",
        100.0 * ep as f64 / (ew + eb + ep).max(1) as f64
    );
    s
}
