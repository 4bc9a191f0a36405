//! `graft build`: the standalone training binary. It links nothing but libc-class libraries,
//! runs from an empty folder with an empty environment, trains bit for bit as `graft train`
//! does, resumes after `kill -9` as if uninterrupted, refuses a CPU without its
//! instructions, and meets bad input with `graft train`'s errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{exited, graft, repo, text};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Builds `spec` (relative to the repository) into `dir/name`.
fn build(spec: &str, dir: &Path, name: &str, extra: &[&str], cache: &Path) -> PathBuf {
    let bin = dir.join(name);
    let mut args = vec!["build", spec, "-o", bin.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = graft(&args, cache);
    exited(&out, 0);
    bin
}

/// Runs a built binary with an empty environment from an empty folder.
fn run_bin(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin);
    c.args(args).current_dir(empty.path()).env_clear();
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The `(step, loss, grad_norm)` fields of a metrics file's training records, as written.
fn train_records(metrics: &Path) -> Vec<String> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {}", v["step"], v["loss"], v["grad_norm"])
        })
        .collect()
}

fn fixture(name: &str) -> String {
    repo().join(name).display().to_string()
}

const TINY: &str = "dsl-examples/tiny_lora.graft";
const WEIGHTS: &str = "tests/fixtures/base.safetensors";
const DATA: &str = "dsl-examples/data/tiny_tokens.jsonl";

#[test]
fn a_built_binary_needs_only_libc_and_trains_bit_for_bit_as_graft_train() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let bin = build(TINY, tmp.path(), "train-tiny", &[], &cache);

    // Dynamic dependencies: libc-class libraries only (no LLVM, MLIR, libstdc++, Python).
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let libs = text(&ldd.stdout);
    let allowed = [
        "linux-vdso.so",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
        "libutil.so",
    ];
    let deps: Vec<&str> = libs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(deps.len() >= 2, "{libs}");
    for l in &deps {
        assert!(
            allowed.iter().any(|a| l.contains(a)),
            "unexpected dependency `{l}` in:\n{libs}"
        );
    }

    let help = exited(&run_bin(&bin, &["--help"], &[]), 0);
    for flag in [
        "--weights",
        "--data",
        "--steps",
        "--epochs",
        "--out",
        "--checkpoint",
        "--threads",
        "--seed",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }

    // Weights and data from copies elsewhere; an empty environment and folder.
    let (w, d) = (tmp.path().join("w.safetensors"), tmp.path().join("d.jsonl"));
    std::fs::copy(repo().join(WEIGHTS), &w).unwrap();
    std::fs::copy(repo().join(DATA), &d).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ran = run_bin(
        &bin,
        &[
            "--weights",
            w.to_str().unwrap(),
            "--data",
            d.to_str().unwrap(),
            "--steps",
            "6",
            "--seed",
            "3",
            "--threads",
            "2",
            "--out",
            a.to_str().unwrap(),
        ],
        &[],
    );
    let all = exited(&ran, 0);
    assert!(all.contains("step    6"), "{all}");
    let b_s = b.display().to_string();
    exited(
        &graft(
            &["train", TINY, "--steps", "6", "--seed", "3", "--save", &b_s],
            &cache,
        ),
        0,
    );
    let (ra, rb) = (
        train_records(&a.join("metrics.jsonl")),
        train_records(&b.join("metrics.jsonl")),
    );
    assert_eq!(ra.len(), 6);
    assert_eq!(ra, rb, "the binary's losses differ from graft train's");
    for f in [
        "adapter_model.safetensors",
        "trainable.safetensors",
        "adapter_config.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

/// The tiny example with a cosine schedule (which reads the run's length), its paths absolute.
fn cosine_spec(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(TINY))
        .unwrap()
        .replace(
            "\"../tests/fixtures/base.safetensors\"",
            &format!("{:?}", fixture(WEIGHTS)),
        )
        .replace(
            "\"data/tiny_tokens.jsonl\"",
            &format!("{:?}", fixture(DATA)),
        )
        .replace("batch 4", "schedule cosine(warmup: 3)\n    batch 4");
    let p = dir.join("cosine.graft");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_binary_killed_mid_run_resumes_from_its_checkpoint_as_if_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let spec = cosine_spec(tmp.path());
    let bin = build(spec.to_str().unwrap(), tmp.path(), "train", &[], &cache);
    let args = |ck: &Path, out: &Path| -> Vec<String> {
        ["--steps", "200", "--every", "1", "--checkpoint"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                ck.display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ])
            .collect()
    };
    let (ck1, o1, ck2, o2) = (
        tmp.path().join("ck1"),
        tmp.path().join("o1"),
        tmp.path().join("ck2"),
        tmp.path().join("o2"),
    );
    let whole = args(&ck1, &o1);
    let whole: Vec<&str> = whole.iter().map(String::as_str).collect();
    exited(&run_bin(&bin, &whole, &[]), 0);

    let cut = args(&ck2, &o2);
    let cut: Vec<&str> = cut.iter().map(String::as_str).collect();
    let mut child = Command::new(&bin)
        .args(&cut)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut seen = 0;
    while lines.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("step ") {
            seen += 1;
            if seen == 20 {
                break;
            }
        }
        line.clear();
    }
    assert_eq!(seen, 20, "the run ended early");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    let resumed = exited(&run_bin(&bin, &cut, &[]), 0);
    assert!(resumed.contains("resuming from"), "{resumed}");
    assert_eq!(train_records(&ck1.join("metrics.jsonl")).len(), 200);
    assert_eq!(
        train_records(&ck1.join("metrics.jsonl")),
        train_records(&ck2.join("metrics.jsonl")),
        "the resumed run's losses differ"
    );
    for f in ["adapter_model.safetensors", "trainable.safetensors"] {
        assert_eq!(
            std::fs::read(o1.join(f)).unwrap(),
            std::fs::read(o2.join(f)).unwrap(),
            "{f} differs after resuming"
        );
    }
}

/// Instructions using AVX-512's zmm registers in a binary's kernels (the functions `graft
/// build` linked: their symbols start with `graft_f`; the runtime's own code may carry
/// AVX-512 paths it picks at run time).
fn zmm_instructions(bin: &Path) -> usize {
    let out = Command::new("objdump").arg("-d").arg(bin).output().unwrap();
    let mut in_kernel = false;
    let mut count = 0;
    for line in text(&out.stdout).lines() {
        if line.ends_with(">:") {
            in_kernel = line.contains(" <graft_f");
        } else if in_kernel && line.contains("%zmm") {
            count += 1;
        }
    }
    count
}

#[test]
fn the_cpu_level_is_explicit_and_a_cpu_without_it_is_told_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let native = build(TINY, tmp.path(), "native", &[], &cache);
    let v3 = build(TINY, tmp.path(), "v3", &["--cpu", "x86-64-v3"], &cache);

    // A CPU without a feature the kernels need: a clear message, status 3, no SIGILL.
    let info = exited(&run_bin(&v3, &["--info"], &[]), 0);
    assert!(
        info.contains("x86-64-v3") && info.contains("avx2"),
        "{info}"
    );
    let refused = exited(
        &run_bin(&v3, &["--steps", "1"], &[("GRAFT_CPU_HIDE", "avx2,fma")]),
        3,
    );
    assert!(
        refused.contains("lacks avx2, fma") && refused.contains("x86-64-v3"),
        "{refused}"
    );

    // The v3 kernels use no AVX-512 register, whatever this host has; both train alike.
    assert_eq!(
        zmm_instructions(&v3),
        0,
        "the x86-64-v3 binary uses AVX-512"
    );
    let host_has_avx512 = std::arch::is_x86_feature_detected!("avx512f");
    assert_eq!(zmm_instructions(&native) > 0, host_has_avx512);
    let steps = |bin: &Path, out: &Path| {
        let o = out.display().to_string();
        exited(&run_bin(bin, &["--steps", "5", "--out", &o], &[]), 0);
        train_records(&out.join("metrics.jsonl"))
            .iter()
            .map(|r| r.split(' ').nth(1).unwrap().parse::<f64>().unwrap())
            .collect::<Vec<f64>>()
    };
    let (a, b) = (
        steps(&native, &tmp.path().join("a")),
        steps(&v3, &tmp.path().join("b")),
    );
    assert_eq!(a.len(), 5);
    for (x, y) in a.iter().zip(&b) {
        // Another vector width sums the products in another order: f32 rounding only.
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "native {a:?} vs x86-64-v3 {b:?}"
        );
    }
}

/// The `error: ...` lines of an output.
fn errors(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error"))
        .map(String::from)
        .collect()
}

#[test]
fn bad_input_to_a_binary_gets_the_errors_graft_train_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let bin = build(TINY, tmp.path(), "train", &[], &cache);
    let spec_text = std::fs::read_to_string(repo().join(TINY)).unwrap();
    // graft train on the spec with `weights`/`data` replaced, against the binary with flags.
    let compare = |name: &str, weights: &str, data: &str, flags: &[&str]| {
        let spec = tmp.path().join(format!("{name}.graft"));
        std::fs::write(
            &spec,
            spec_text
                .replace(
                    "\"../tests/fixtures/base.safetensors\"",
                    &format!("{weights:?}"),
                )
                .replace("\"data/tiny_tokens.jsonl\"", &format!("{data:?}")),
        )
        .unwrap();
        let reference = graft(&["train", spec.to_str().unwrap(), "--steps", "2"], &cache);
        exited(&reference, 1);
        let mut args = vec!["--weights", weights, "--data", data, "--steps", "2"];
        args.extend_from_slice(flags);
        let ran = run_bin(&bin, &args, &[]);
        exited(&ran, 1);
        let (want, got) = (errors(&reference), errors(&ran));
        assert!(!want.is_empty(), "{name}: graft train printed no error");
        assert_eq!(got, want, "{name}");
        got.join("\n")
    };
    let good_w = fixture(WEIGHTS);
    let good_d = fixture(DATA);
    let missing = tmp.path().join("none.safetensors").display().to_string();
    assert!(compare("missing_weights", &missing, &good_d, &[]).contains("none.safetensors"));
    let corrupt = tmp.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let corrupt = corrupt.display().to_string();
    assert!(compare("corrupt_weights", &corrupt, &good_d, &[]).contains("corrupt.safetensors"));
    // Another architecture's weights: BERT's names and shapes.
    let foreign = fixture("tests/fixtures/bert_classifier.safetensors");
    assert!(compare("foreign_weights", &foreign, &good_d, &[]).contains("bert_classifier"));
    let bad_data = tmp.path().join("bad.jsonl");
    std::fs::write(&bad_data, "{\"input_ids\": [1, 2, 3]}\n{not json\n").unwrap();
    let bad_data = bad_data.display().to_string();
    assert!(compare("bad_data", &good_w, &bad_data, &[]).contains("bad.jsonl:2"));
    let absent = tmp.path().join("absent.jsonl").display().to_string();
    assert!(compare("missing_data", &good_w, &absent, &[]).contains("absent.jsonl"));

    // An output folder that cannot be written: the same refusal as graft train's --save.
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("adapter").display().to_string();
    let ran = run_bin(
        &bin,
        &[
            "--weights",
            &good_w,
            "--data",
            &good_d,
            "--steps",
            "2",
            "--out",
            &out,
        ],
        &[],
    );
    let reference = graft(&["train", TINY, "--steps", "2", "--save", &out], &cache);
    let code = reference.status.code().unwrap();
    assert_ne!(code, 0);
    exited(&ran, code);
    assert_eq!(errors(&ran), errors(&reference));
    assert!(
        errors(&ran).join(" ").contains("a-file"),
        "{:?}",
        errors(&ran)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_binary_carries_its_tokenizer_and_model_config_when_their_folder_is_gone() {
    // The README's main example (a Hugging Face folder with tokenizer.json, text data, an
    // eval file), built from a copy whose folder is then removed.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tmp.path().join("spec");
    copy_dir(
        &repo().join("dsl-examples/models/tiny-llama"),
        &src.join("models/tiny-llama"),
    );
    copy_dir(
        &repo().join("dsl-examples/data/stories"),
        &src.join("data/stories"),
    );
    std::fs::copy(
        repo().join("dsl-examples/stories_lora.graft"),
        src.join("stories_lora.graft"),
    )
    .unwrap();
    let spec = src.join("stories_lora.graft");
    let bin = build(spec.to_str().unwrap(), tmp.path(), "train", &[], &cache);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for (from, to) in [
        ("models/tiny-llama/model.safetensors", "model.safetensors"),
        ("data/stories/train.jsonl", "train.jsonl"),
        ("data/stories/eval.jsonl", "eval.jsonl"),
    ] {
        std::fs::rename(src.join(from), elsewhere.join(to)).unwrap();
    }
    std::fs::remove_dir_all(&src).unwrap();
    let e = |f: &str| elsewhere.join(f).display().to_string();
    let out = e("adapter");
    let ran = run_bin(
        &bin,
        &[
            "--weights",
            &e("model.safetensors"),
            "--data",
            &e("train.jsonl"),
            "--eval",
            &e("eval.jsonl"),
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--out",
            &out,
        ],
        &[],
    );
    let all = exited(&ran, 0);
    assert_eq!(all.matches("eval after step").count(), 2, "{all}");
    assert!(all.contains("kernels linked into this binary"), "{all}");
    let config = std::fs::read_to_string(elsewhere.join("adapter/adapter_config.json")).unwrap();
    assert!(config.contains("\"LORA\""), "{config}");
}

#[test]
fn a_binary_with_embedded_weights_needs_no_weights_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // A copy of the tiny example whose weights file is gone once the binary is built.
    let w = tmp.path().join("w.safetensors");
    std::fs::copy(repo().join(WEIGHTS), &w).unwrap();
    let spec = tmp.path().join("tiny.graft");
    let text = std::fs::read_to_string(repo().join(TINY))
        .unwrap()
        .replace(
            "\"../tests/fixtures/base.safetensors\"",
            &format!("{:?}", w.display().to_string()),
        )
        .replace(
            "\"data/tiny_tokens.jsonl\"",
            &format!("{:?}", fixture(DATA)),
        );
    std::fs::write(&spec, text).unwrap();
    let bin = build(
        spec.to_str().unwrap(),
        tmp.path(),
        "train",
        &["--embed-weights"],
        &cache,
    );
    std::fs::remove_file(&w).unwrap();
    let info = exited(&run_bin(&bin, &["--info"], &[]), 0);
    assert!(info.contains("weights   embedded"), "{info}");
    let a = tmp.path().join("a");
    let ran = exited(
        &run_bin(&bin, &["--steps", "4", "--out", a.to_str().unwrap()], &[]),
        0,
    );
    assert!(ran.contains("step    4"), "{ran}");
    // The same numbers as graft train reading the file.
    let b = tmp.path().join("b");
    let b_s = b.display().to_string();
    exited(
        &graft(&["train", TINY, "--steps", "4", "--save", &b_s], &cache),
        0,
    );
    assert_eq!(
        train_records(&a.join("metrics.jsonl")),
        train_records(&b.join("metrics.jsonl"))
    );
    assert_eq!(
        std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(b.join("adapter_model.safetensors")).unwrap()
    );
    // --weights still wins over the embedded file.
    let missing = tmp.path().join("none.safetensors").display().to_string();
    let refused = exited(
        &run_bin(&bin, &["--weights", &missing, "--steps", "1"], &[]),
        1,
    );
    assert!(refused.contains("none.safetensors"), "{refused}");
}
