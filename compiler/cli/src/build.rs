//! `graft build SPEC -o BINARY`: one executable that trains the spec with no compiler. It
//! compiles the functions a training run prepares (the optimized `@train_step`, and `@eval`)
//! to object code for the chosen CPU level, renames each object's global symbols so that
//! the functions' kernels cannot collide, and links them with the runner's static library
//! (`libgraft_runner.a`: the runtime's training loop, `graft_runner`) and a generated C
//! `main` holding the table of kernel wrappers and the payload (`graft_runner::payload`).
//!
//! The system C compiler driver links (`cc`, as for the kernel cache) and binutils' `nm`
//! and `objcopy` rename symbols. The weights are not embedded: the binary takes them with
//! `--weights` (default: the spec's path as built).

use anyhow::{Context, Result, bail};
use graft_codegen::{CompileOptions, CpuLevel};
use graft_runner::payload::{BuiltFunction, FORMAT, Payload, SourceFile, function_key};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `graft build` was asked for.
pub struct BuildRequest<'a> {
    /// The spec.
    pub spec: &'a Path,
    /// The executable to write.
    pub output: &'a Path,
    /// The CPU level of the kernels.
    pub cpu: CpuLevel,
    /// The stdlib the spec is elaborated with.
    pub stdlib: &'a graft_frontend::Stdlib,
    /// Append the spec's weights file to the binary.
    pub embed_weights: bool,
}

/// What a build produced, for the summary line.
pub struct Built {
    /// Kernel launches per function.
    pub functions: Vec<(String, usize)>,
    /// Object files linked.
    pub objects: usize,
    /// The executable's size in bytes.
    pub bytes: u64,
    /// Seconds optimizing and compiling the functions.
    pub compile_seconds: f64,
    /// Seconds linking.
    pub link_seconds: f64,
}

/// Builds the binary.
///
/// # Errors
/// The spec does not compile, a tool fails, or the runner library is not found.
pub fn build(req: &BuildRequest) -> Result<Built> {
    let spec = std::fs::canonicalize(req.spec)
        .with_context(|| format!("cannot read {}", req.spec.display()))?;
    let runner = runner_library()?;
    graft_frontend::source::overlay::start_recording();
    let compiled = graft_frontend::compile_file(&spec, req.stdlib);
    let (_, program) = match compiled {
        Ok(x) => x,
        Err(graft_frontend::CompileFileError::Compile(e)) => {
            let _ = graft_frontend::source::overlay::take_recording();
            eprint!("{}", e.render(false));
            bail!("{} does not compile", req.spec.display());
        }
        Err(e) => return Err(e.into()),
    };
    // The tokenizer a run reads (recorded with its files, so the binary carries it).
    let dir = spec.parent().unwrap_or(Path::new("."));
    let _ = graft_runtime::data::tokenizer(&program, dir);
    let files: Vec<SourceFile> = graft_frontend::source::overlay::take_recording()
        .into_iter()
        .map(|(path, bytes)| {
            let text = bytes
                .map(|b| {
                    String::from_utf8(b)
                        .with_context(|| format!("{} is not UTF-8 text", path.display()))
                })
                .transpose()?;
            Ok(SourceFile { path, text })
        })
        .collect::<Result<_>>()?;

    let mut functions = vec![("train_step", graft_runtime::step_function(&program)?)];
    match graft_runtime::eval::program_eval_function(&program) {
        Ok(f) => functions.push(("eval", f)),
        Err(e) => {
            eprintln!("note: no compiled evaluation ({e}); the binary evaluates on the interpreter")
        }
    }
    let work = tempdir()?;
    let started = std::time::Instant::now();
    let target = req.cpu.target();
    let mut built = Vec::new();
    let mut objects = Vec::new();
    let mut table = Vec::new();
    for (i, (role, unoptimized)) in functions.iter().enumerate() {
        let (optimized, _) = graft_runtime::cache::optimized_step(
            graft_runtime::cache_dir().as_deref(),
            &program.module.files,
            unoptimized,
            &graft_opt::Options::default(),
        )
        .map_err(anyhow::Error::msg)?;
        let out = work.join(format!("f{i}"));
        std::fs::create_dir_all(&out)?;
        let compiled = graft_codegen::compile_with(
            &optimized,
            &CompileOptions {
                target,
                cache_dir: None,
                objects: Some(out.clone()),
            },
        )
        .with_context(|| format!("compiling @{role}"))?;
        // Helpers are copied into every module that calls them, so each module's globals
        // get a prefix of their own.
        let mut module_of = std::collections::HashMap::new();
        for (j, (obj, kernels)) in compiled.compile_info().objects.iter().enumerate() {
            let prefix = format!("graft_f{i}m{j}_");
            prefix_symbols(obj, &prefix)?;
            objects.push(obj.clone());
            for k in kernels {
                module_of.insert(k.clone(), prefix.clone());
            }
        }
        let plan = compiled.plan().clone();
        let symbols: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match module_of.get(&s.symbol) {
                Some(prefix) => format!("{prefix}_mlir_{}", s.symbol),
                None => String::new(),
            })
            .collect();
        for s in &symbols {
            if !s.is_empty() && !table.contains(s) {
                table.push(s.clone());
            }
        }
        built.push(BuiltFunction {
            role: role.to_string(),
            unoptimized: function_key(unoptimized),
            optimized: module_text(&program, &optimized),
            scheduled: module_text(&program, compiled.function()),
            plan,
            symbols,
        });
    }
    let payload = Payload {
        format: FORMAT,
        graft_version: env!("CARGO_PKG_VERSION").to_string(),
        spec: spec.clone(),
        stdlib: match req.stdlib {
            graft_frontend::Stdlib::Dir(d) => Some(std::fs::canonicalize(d).unwrap_or(d.clone())),
            graft_frontend::Stdlib::Embedded => None,
        },
        files,
        cpu: req.cpu.name().to_string(),
        required: req.cpu.required(),
        built_on: graft_codegen::host_info()
            .map(|h| h.cpu)
            .unwrap_or_else(|_| "unknown".into()),
        functions: built,
    };
    let json = serde_json::to_vec(&payload)?;
    std::fs::write(work.join("payload.json"), &json)?;
    std::fs::write(work.join("main.c"), main_c(&table))?;
    std::fs::write(
        work.join("payload.s"),
        format!(
            ".section .rodata\n.balign 64\n.globl graft_payload\ngraft_payload:\n.incbin \"{}\"\n.globl graft_payload_end\ngraft_payload_end:\n.byte 0\n.section .note.GNU-stack,\"\",@progbits\n",
            work.join("payload.json").display()
        ),
    )?;
    let compile_seconds = started.elapsed().as_secs_f64();
    let embed = match (&program.weights, req.embed_weights) {
        (_, false) => None,
        (Some((w, _)), true) if !w.to_string_lossy().ends_with(".index.json") => Some(w.clone()),
        (Some((w, _)), true) => bail!(
            "--embed-weights takes one safetensors file, and {} is a sharded checkpoint's index",
            w.display()
        ),
        (None, true) => bail!("--embed-weights: the spec names no weights file"),
    };
    link(&work, &objects, &runner, req.output, embed.as_deref())?;
    let link_seconds = started.elapsed().as_secs_f64() - compile_seconds;
    let bytes = std::fs::metadata(req.output)?.len();
    let _ = std::fs::remove_dir_all(&work);
    Ok(Built {
        functions: payload
            .functions
            .iter()
            .map(|f| (f.role.clone(), f.plan.steps.len()))
            .collect(),
        objects: objects.len(),
        bytes,
        compile_seconds,
        link_seconds,
    })
}

/// A function as one-function module text, with the program's file table (its locations).
fn module_text(program: &graft_frontend::Program, f: &graft_ir::Function) -> String {
    graft_ir::print_module(&graft_ir::Module {
        files: program.module.files.clone(),
        functions: vec![f.clone()],
    })
}

/// The C `main`: the kernel table and the call into the runner.
fn main_c(table: &[String]) -> String {
    let mut s = String::from(
        "/* Generated by graft build. */\n#include <stddef.h>\n\
         struct graft_kernel { const char *name; const void *wrapper; };\n\
         extern const unsigned char graft_payload[], graft_payload_end[];\n\
         extern int graft_runner_main(const unsigned char *, size_t, const struct graft_kernel *, size_t);\n",
    );
    for t in table {
        let _ = writeln!(s, "extern void {t}(void **);");
    }
    s += "static const struct graft_kernel kernels[] = {\n";
    for t in table {
        let _ = writeln!(s, "  {{\"{t}\", (const void *){t}}},");
    }
    if table.is_empty() {
        s += "  {0, 0},\n";
    }
    let _ = write!(
        s,
        "}};\nint main(void) {{\n  return graft_runner_main(graft_payload, (size_t)(graft_payload_end - graft_payload), kernels, {});\n}}\n",
        table.len()
    );
    s
}

/// Renames every global symbol `obj` defines to `prefix` + its name.
fn prefix_symbols(obj: &Path, prefix: &str) -> Result<()> {
    let out = Command::new("nm")
        .args(["--defined-only", "--extern-only", "--format=posix"])
        .arg(obj)
        .output()
        .context("running nm (binutils)")?;
    if !out.status.success() {
        bail!(
            "nm {}: {}",
            obj.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut map = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.split_whitespace().next() {
            let _ = writeln!(map, "{name} {prefix}{name}");
        }
    }
    let map_file = obj.with_extension("syms");
    std::fs::write(&map_file, map)?;
    let status = Command::new("objcopy")
        .arg(format!("--redefine-syms={}", map_file.display()))
        .arg(obj)
        .output()
        .context("running objcopy (binutils)")?;
    if !status.status.success() {
        bail!(
            "objcopy {}: {}",
            obj.display(),
            String::from_utf8_lossy(&status.stderr)
        );
    }
    Ok(())
}

/// Links the executable: the generated main and payload, the kernels' objects, the runner;
/// then appends `weights` when given (page-aligned, followed by the trailer the runner looks
/// for: `graft_runner::payload::weights_trailer`).
fn link(
    work: &Path,
    objects: &[PathBuf],
    runner: &Path,
    output: &Path,
    weights: Option<&Path>,
) -> Result<()> {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let partial = output.with_extension("partial");
    let out = Command::new(&cc)
        .arg("-O2")
        .arg("-o")
        .arg(&partial)
        .arg(work.join("main.c"))
        .arg(work.join("payload.s"))
        .args(objects)
        .arg(runner)
        .args([
            "-Wl,--gc-sections",
            // Symbols stay (profilers name the kernels); the runtime's debug info goes.
            "-Wl,--strip-debug",
            "-lm",
            "-lpthread",
            "-ldl",
            "-lrt",
            "-lutil",
            "-lgcc_s",
            "-lc",
        ])
        .output()
        .with_context(|| format!("running {}", cc.to_string_lossy()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "linking {} failed: {}",
            output.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Some(w) = weights {
        append_weights(&partial, w).inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })?;
    }
    std::fs::rename(&partial, output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}

/// Appends the safetensors file `weights` to the executable `exe`, at a page boundary, and
/// the trailer. The loader ignores bytes after the ELF's segments; `strip` drops them.
fn append_weights(exe: &Path, weights: &Path) -> Result<()> {
    use std::io::Write as _;
    const PAGE: u64 = 1 << 16; // a multiple of every page size Linux uses on x86-64 and arm64
    graft_runtime::WeightsFile::open(weights)
        .with_context(|| format!("--embed-weights: {}", weights.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(exe)
        .with_context(|| format!("cannot append to {}", exe.display()))?;
    let end = f.metadata()?.len();
    let offset = end.next_multiple_of(PAGE);
    f.write_all(&vec![0u8; (offset - end) as usize])?;
    let mut src = std::fs::File::open(weights)
        .with_context(|| format!("cannot read {}", weights.display()))?;
    let len = std::io::copy(&mut src, &mut f)?;
    f.write_all(&graft_runner::payload::weights_trailer(offset, len))?;
    f.sync_all()?;
    Ok(())
}

/// The runner's static library: `$GRAFT_RUNNER_LIB`, else the newest of `libgraft_runner.a`
/// beside this executable (where `cargo build` puts both) and those in cargo's `deps/` beside
/// it (where `cargo test` rebuilds it without copying it up).
fn runner_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GRAFT_RUNNER_LIB") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("GRAFT_RUNNER_LIB={} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("where is graft?")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let in_deps = std::fs::read_dir(dir.join("deps"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libgraft_runner-") && n.ends_with(".a"))
        });
    let mut found: Vec<(std::time::SystemTime, PathBuf)> =
        std::iter::once(dir.join("libgraft_runner.a"))
            .chain(in_deps)
            .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
            .collect();
    found.sort();
    match found.pop() {
        Some((_, p)) => Ok(p),
        None => bail!(
            "the runner library libgraft_runner.a is not beside {} (build it with `cargo build --release -p graft-cli -p graft-runner`, or set GRAFT_RUNNER_LIB)",
            exe.display()
        ),
    }
}

/// A fresh private folder for the build's intermediate files.
fn tempdir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!(
        "graft-build-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    Ok(base)
}
