//! The `graft` binary as a user runs it: exit codes, what goes to stdout and stderr, and the
//! help text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn graft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(repo())
        .env("GRAFT_STDLIB", repo().join("stdlib"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run graft: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_accepts_every_example() {
    for entry in std::fs::read_dir(repo().join("dsl-examples"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_none_or(|e| e != "graft") {
            continue;
        }
        let out = graft(&["check", &p.display().to_string()]);
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).starts_with("ok: model `base`"),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn check_rejects_malformed_input_with_a_location() {
    let out = graft(&[
        "check",
        "tests/malformed/names_match_nothing.graft",
        "--color",
        "never",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "error: tests/malformed/names_match_nothing.graft:6:19: target matches no module"
        ),
        "{err}"
    );
    assert!(err.contains("nearest module paths"), "{err}");
}

#[test]
fn ir_prints_a_module_that_parses_and_verifies() {
    let out = graft(&["ir", "dsl-examples/tiny_qlora.graft", "--emit=ir"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = graft_ir::parse_module(&text(&out.stdout)).unwrap_or_else(|e| panic!("{e}"));
    graft_ir::verify_module(&m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        m.functions
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        vec!["forward", "init"]
    );
}

/// `--emit=lowered` prints the step after each named lowering pass as IR that parses and
/// verifies; an unknown pass name is an error naming the passes; `--emit=schedule` lists the
/// kernel launches.
#[test]
fn ir_prints_the_step_after_lowering_passes_and_its_schedule() {
    let out = graft(&[
        "ir",
        "dsl-examples/tiny_lora.graft",
        "--emit=lowered",
        "--print-after",
        "rematerialize",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ir = text(&out.stdout);
    let body = ir
        .strip_prefix("// IR after rematerialize\n")
        .unwrap_or_else(|| panic!("{ir}"));
    let m = graft_ir::parse_module(body).unwrap_or_else(|e| panic!("{e}"));
    graft_ir::verify_module(&m).unwrap_or_else(|e| panic!("{e}"));
    let all = graft(&["ir", "dsl-examples/tiny_lora.graft", "--emit=lowered"]);
    assert_eq!(text(&all.stdout).matches("// IR after ").count(), 4);
    let bad = graft(&[
        "ir",
        "dsl-examples/tiny_lora.graft",
        "--emit=lowered",
        "--print-after",
        "nope",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("hoist-reductions"),
        "{}",
        text(&bad.stderr)
    );
    let plan = graft(&["ir", "dsl-examples/tiny_lora.graft", "--emit=schedule"]);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let plan = text(&plan.stdout);
    assert!(
        plan.contains(": gemm ") && plan.contains("output loss"),
        "{plan}"
    );
}

#[test]
fn ir_emits_the_ast() {
    let out = graft(&["ir", "dsl-examples/tiny_custom_adapter.graft", "--emit=ast"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ast = text(&out.stdout);
    assert!(
        ast.contains("adapter gated_lowrank(r: int = 4) wraps linear(in, out)"),
        "{ast}"
    );
    assert!(
        ast.contains("/// Gated low-rank adaptation"),
        "doc comments are printed: {ast}"
    );
}

#[test]
fn help_shows_examples() {
    let out = graft(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("Examples:") && help.contains("graft check dsl-examples/tiny_lora.graft"),
        "{help}"
    );
    let out = graft(&["ir", "--help"]);
    assert!(
        text(&out.stdout).contains("--emit"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let out = graft(&["check", "no/such/spec.graft"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read no/such/spec.graft"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_weights_file_that_does_not_fit_is_reported() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("graft-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let data = vec![0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data)?;
    safetensors::serialize_to_file(
        vec![("model.embed_tokens.weight", view)],
        None,
        &dir.join("w.safetensors"),
    )?;
    let spec = std::fs::read_to_string(repo().join("dsl-examples/tiny_lora.graft"))?
        .replace("../tests/fixtures/base.safetensors", "w.safetensors");
    std::fs::write(dir.join("spec.graft"), spec)?;
    let out = graft(&["check", &dir.join("spec.graft").display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("`model.embed_tokens.weight` has shape [2, 2]")
            && err.contains("expects [256, 64]"),
        "{err}"
    );
    assert!(err.contains("`lm_head.weight` is missing"), "{err}");
    Ok(())
}

#[test]
fn doctor_reports_llvm_22() {
    let out = graft(&["doctor"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("LLVM      22."),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn run_trains_and_saves_a_peft_adapter() {
    let out_dir = std::env::temp_dir().join(format!("graft-run-{}", std::process::id()));
    let out = graft(&[
        "run",
        "dsl-examples/tiny_lora.graft",
        "--interpret",
        "--steps",
        "2",
        "--save",
        &out_dir.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 2, "{stdout}");
    assert!(
        steps[0].contains("loss ") && steps[0].contains("tok/s"),
        "{stdout}"
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainable.safetensors",
    ] {
        assert!(
            out_dir.join(f).exists(),
            "{f} missing in {}",
            out_dir.display()
        );
    }
}

#[test]
fn run_without_data_explains_what_is_missing() {
    let dir = std::env::temp_dir().join(format!("graft-nodata-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok();
    let spec = "use models.llama\nmodel base = llama(vocab: 32, hidden: 16, layers: 1, heads: 2, ffn: 32)\n";
    std::fs::write(dir.join("s.graft"), spec).ok();
    let out = graft(&[
        "run",
        &dir.join("s.graft").display().to_string(),
        "--interpret",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("names no `data` file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_interrupted_run_resumes_from_its_checkpoint() {
    let dir = std::env::temp_dir().join(format!("graft-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display().to_string();
    let first = graft(&[
        "run",
        "dsl-examples/tiny_lora.graft",
        "--interpret",
        "--no-optimize",
        "--steps",
        "2",
        "--checkpoint",
        &d,
        "--every",
        "1",
    ]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(dir.join("checkpoint.safetensors").exists());
    let resumed = graft(&[
        "run",
        "dsl-examples/tiny_lora.graft",
        "--interpret",
        "--no-optimize",
        "--steps",
        "4",
        "--checkpoint",
        &d,
    ]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let out = text(&resumed.stdout);
    assert!(out.contains("after step 2"), "{out}");
    let steps: Vec<&str> = out.lines().filter(|l| l.starts_with("step ")).collect();
    assert!(
        steps.len() == 2 && steps[0].starts_with("step    3"),
        "runs steps 3 and 4 only: {out}"
    );
    // The same four steps in one go give the same losses (the data position resumes too).
    let whole = graft(&[
        "run",
        "dsl-examples/tiny_lora.graft",
        "--interpret",
        "--no-optimize",
        "--steps",
        "4",
    ]);
    let whole_out = text(&whole.stdout);
    let loss = |l: &str| {
        l.split("loss ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    let w: Vec<_> = whole_out
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(loss)
        .collect();
    let r: Vec<_> = steps.iter().map(|l| loss(l)).collect();
    assert_eq!(
        &w[2..],
        &r[..],
        "resumed losses equal the uninterrupted run's"
    );
}

/// `graft bench --serve` (how `scripts/bench.py` pairs graft's steps with PyTorch's): a ready
/// line, one timing line per `step` read from stdin, a profile of an extra step per
/// `profile`, an error line for anything else, and the summary after `end`, counting the
/// served steps only; the compiled step reports the frozen weights it packed once.
#[test]
fn bench_serves_steps_read_from_stdin() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args([
            "bench",
            "dsl-examples/tiny_lora.graft",
            "--serve",
            "--warmup",
            "0",
        ])
        .current_dir(repo())
        .env("GRAFT_STDLIB", repo().join("stdlib"))
        .env(
            "GRAFT_CACHE_DIR",
            std::env::temp_dir().join("graft-cli-serve-cache"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run graft: {e}"));
    child
        .stdin
        .take()
        .map(|mut i| i.write_all(b"step\nprofile\nstep\nwhat\nend\n"))
        .transpose()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(lines[0]["ready"], true);
    let secs = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key}: {stdout}"))
    };
    assert!(secs(&lines[1], "seconds") > 0.0 && secs(&lines[3], "seconds") > 0.0);
    // The profiled step: its kernels' times add up to at most its wall time, and it has
    // GEMMs (the projections), packs and other kernels (norms, softmax, AdamW).
    let p = &lines[2];
    let parts = ["gemm_seconds", "pack_seconds", "other_seconds"].map(|k| secs(p, k));
    assert!(parts.iter().all(|&s| s > 0.0), "{stdout}");
    assert!(parts.iter().sum::<f64>() <= secs(p, "seconds"), "{stdout}");
    assert!(
        secs(p, "gemm_flops") > 0.0 && secs(p, "launches") > 0.0,
        "{stdout}"
    );
    assert!(lines[4]["error"].is_string(), "{stdout}");
    assert_eq!(lines[5]["steps"], 2, "{stdout}");
    assert!(
        lines[5]["bound_bytes"].as_u64().is_some_and(|b| b > 0),
        "{stdout}"
    );
}

/// `graft train` (`run` is its alias) writes one JSON record per step into the checkpoint
/// folder's metrics.jsonl, and a resumed run continues the file without repeating a step.
#[test]
fn train_keeps_a_metrics_file_that_resumes_with_the_run() {
    let dir = std::env::temp_dir().join(format!("graft-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display().to_string();
    for steps in ["3", "5"] {
        let out = graft(&[
            "train",
            "dsl-examples/tiny_lora.graft",
            "--interpret",
            "--steps",
            steps,
            "--checkpoint",
            &d,
            "--every",
            "2",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = records
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    for r in &records {
        let loss = r["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{r}");
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Evaluation: `graft train --eval` reports the held-out loss every `--eval-every` steps and
/// after the last (also in the metrics file), and `graft eval --adapter` on the saved folder
/// gives the same loss as the run's last evaluation, on compiled code and on the
/// interpreter; a PEFT-made adapter folder (the fixture PEFT saved) loads too.
#[test]
fn eval_reports_the_held_out_loss_and_reads_saved_adapters() {
    let dir = std::env::temp_dir().join(format!("graft-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display().to_string();
    let eval = "dsl-examples/data/tiny_eval_tokens.jsonl";
    let out = graft(&[
        "train",
        "dsl-examples/tiny_lora.graft",
        "--steps",
        "6",
        "--eval",
        eval,
        "--eval-every",
        "3",
        "--save",
        &d,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let evals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("eval after step"))
        .collect();
    assert_eq!(evals.len(), 2, "{stdout}");
    assert!(
        evals[0].starts_with("eval after step 3:") && evals[1].starts_with("eval after step 6:")
    );
    let last = evals[1]
        .split("loss ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    for backend in [&[][..], &["--interpret"][..]] {
        let mut args = vec![
            "eval",
            "dsl-examples/tiny_lora.graft",
            "--adapter",
            &d,
            "--data",
            eval,
        ];
        args.extend_from_slice(backend);
        let out = graft(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = text(&out.stdout);
        assert!(
            line.starts_with(&format!("eval loss {last} ")),
            "{line} vs {last}"
        );
    }
    let svg = std::fs::read_to_string(dir.join("loss.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("eval"),
        "the loss plot"
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"eval\""))
            .count(),
        2
    );
    let peft = graft(&[
        "eval",
        "tests/parity/lora_qv.graft",
        "--adapter",
        "tests/fixtures/peft_lora_qv",
        "--data",
        eval,
        "--interpret",
    ]);
    assert!(peft.status.success(), "{}", text(&peft.stderr));
    let base = graft(&[
        "eval",
        "tests/parity/lora_qv.graft",
        "--data",
        eval,
        "--interpret",
    ]);
    assert_ne!(
        text(&peft.stdout),
        text(&base.stdout),
        "the PEFT adapter changed nothing"
    );
    // Training continues from a saved adapter.
    let more = graft(&[
        "train",
        "dsl-examples/tiny_lora.graft",
        "--adapter",
        &d,
        "--steps",
        "1",
        "--interpret",
    ]);
    assert!(more.status.success(), "{}", text(&more.stderr));
    assert!(
        text(&more.stderr).contains("started from 8 trained tensors"),
        "{}",
        text(&more.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model read from a Hugging Face folder (config.json + model.safetensors) trains exactly as
/// the same model with its dimensions written out (the fixture's transformers config).
#[test]
fn a_model_from_a_hugging_face_folder_trains_as_the_explicit_one() {
    let hf = train_losses("dsl-examples/tiny_lora_hf.graft");
    assert_eq!(hf.len(), 3);
    assert_eq!(hf, train_losses("dsl-examples/tiny_lora.graft"));
}

/// A sharded checkpoint (Hugging Face's model.safetensors.index.json and its shards, made
/// here by splitting the fixture) trains exactly as the single file does, on compiled code
/// that reads the frozen weights in place from both shards.
#[test]
fn a_sharded_checkpoint_trains_as_the_single_file() {
    use safetensors::tensor::TensorView;
    let dir = std::env::temp_dir().join(format!("graft-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let bytes = std::fs::read(repo().join("tests/fixtures/base.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", k + 1);
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| {
                let t = st.tensor(n).unwrap();
                (
                    n.clone(),
                    TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap(),
                )
            })
            .collect();
        std::fs::write(hf.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(hf.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/tiny-llama-hf/config.json"),
        hf.join("config.json"),
    )
    .unwrap();
    let spec = dir.join("sharded.graft");
    let spec_text = std::fs::read_to_string(repo().join("dsl-examples/tiny_lora_hf.graft"))
        .unwrap()
        .replace("\"../tests/fixtures/tiny-llama-hf\"", "\"hf\"")
        .replace(
            "\"data/tiny_tokens.jsonl\"",
            &format!("{:?}", repo().join("dsl-examples/data/tiny_tokens.jsonl")),
        );
    std::fs::write(&spec, spec_text).unwrap();
    let check = graft(&["check", &spec.display().to_string()]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let sharded = train_losses(&spec.display().to_string());
    assert_eq!(sharded.len(), 3);
    assert_eq!(sharded, train_losses("dsl-examples/tiny_lora.graft"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The losses `graft train SPEC --steps 3` prints, in order.
fn train_losses(spec: &str) -> Vec<String> {
    let out = graft(&["train", spec, "--steps", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("step "))
        .filter_map(|l| {
            l.split("loss ")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(String::from)
        })
        .collect()
}

/// A library file (no model) is checked adapter by adapter on probe modules: every stdlib
/// method passes and lists its tensors with their probe shapes; a broken adapter fails at
/// its own line; a file with neither a model nor an adapter says so.
#[test]
fn check_probes_the_adapters_of_a_library_file() -> Result<(), Box<dyn std::error::Error>> {
    for entry in std::fs::read_dir(repo().join("stdlib/peft"))?.flatten() {
        let p = entry.path();
        let out = graft(&["check", &p.display().to_string()]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            text(&out.stderr)
        );
        assert!(stdout.starts_with("ok: adapter `"), "{stdout}");
    }
    let out = graft(&["check", "stdlib/peft/vera.graft"]);
    let stdout = text(&out.stdout);
    // The probe linear is in = 64, out = 96; VeRA's default r is 256.
    assert!(
        stdout.contains("on linear(in: 64, out: 96) (input f32[2, 4, 64])"),
        "{stdout}"
    );
    assert!(
        stdout.contains("vera_B: f32[96, 256] (computed at init)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("probe.vera_lambda_d: f32[256] (trainable)"),
        "{stdout}"
    );

    let dir = std::env::temp_dir().join(format!("graft-library-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let broken = dir.join("broken.graft");
    std::fs::write(
        &broken,
        "use nn\n\nadapter fine() wraps linear(in, out) {\n    forward(x) = base(x)\n}\n\n\
         adapter broken(r: int = 4) wraps linear(in, out) {\n    param A: [r, out] = zeros()\n    \
         forward(x) = base(x) + x @ A^T\n}\n",
    )?;
    let out = graft(&["check", &broken.display().to_string(), "--color", "never"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("broken.graft:9:"), "{err}");
    let empty = dir.join("empty.graft");
    std::fs::write(&empty, "fn twice(x) = 2.0 * x\n")?;
    let out = graft(&["check", &empty.display().to_string(), "--color", "never"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("declares no model and no adapter"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
