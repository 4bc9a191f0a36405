//! Faults a real run meets, driven through the `graft` binary: a diverging or stuck run,
//! damaged checkpoints and cache entries, signals, a full disk (an injected write failure:
//! `GRAFT_FAIL_WRITES`), special files, a weights file truncated under a run, absurd sizes,
//! and two runs sharing a folder. Each asserts that graft exits with a clear message (never
//! a crash signal) and that no state is lost: the last good checkpoint and the last saved
//! adapter stay intact and loadable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{exited, repo, text};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cmd(args: &[&str], cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graft"));
    c.args(args)
        .current_dir(repo())
        .env("GRAFT_STDLIB", repo().join("stdlib"))
        .env("GRAFT_CACHE_DIR", cache);
    c
}

/// Runs graft to the end, failing the test if it takes over two minutes (a hang).
fn graft(args: &[&str], cache: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = cmd(args, cache);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, Duration::from_secs(120), args)
}

fn wait(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("graft {what:?} hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The end of a long output, for assertion messages.
fn tail(s: &str) -> &str {
    let mut at = s.len().saturating_sub(1500);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

fn losses(out: &str) -> Vec<String> {
    out.lines()
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

/// The steps a checkpoint folder resumes after (by resuming it for zero further steps).
fn resumes_after(dir: &Path, cache: &Path, spec: &str) -> usize {
    let d = dir.display().to_string();
    let out = graft(
        &["run", spec, "--steps", "0", "--checkpoint", &d],
        cache,
        &[],
    );
    let all = exited(&out, 0);
    all.split("after step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("did not resume: {all}"))
}

fn no_temporary_files(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(
        left.is_empty(),
        "temporary files left in {}: {left:?}",
        dir.display()
    );
}

/// Writes `text` as a spec at `path`, with the shipped data file's and the fixture weights'
/// relative paths made absolute (the spec lives outside the repository).
fn write_spec(path: &Path, text: &str) {
    let text = text
        .replace(
            "\"../tests/fixtures/base.safetensors\"",
            &format!("{:?}", repo().join("tests/fixtures/base.safetensors")),
        )
        .replace(
            "\"data/tiny_tokens.jsonl\"",
            &format!("{:?}", repo().join("dsl-examples/data/tiny_tokens.jsonl")),
        );
    std::fs::write(path, text).unwrap();
}

/// The tiny LoRA example's text.
fn tiny_text() -> String {
    std::fs::read_to_string(repo().join(TINY)).unwrap()
}

const TINY: &str = "dsl-examples/tiny_lora.graft";
const EXPLODING: &str = "tests/faults/exploding.graft";

#[test]
fn a_diverging_run_stops_on_the_bad_step_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, ck) = (tmp.path().join("cache"), tmp.path().join("ck"));
    let d = ck.display().to_string();
    let out = graft(
        &[
            "run",
            EXPLODING,
            "--checkpoint",
            &d,
            "--every",
            "1",
            "--save",
            &tmp.path().join("out").display().to_string(),
        ],
        &cache,
        &[],
    );
    let all = exited(&out, 1);
    assert!(all.contains("the loss is not finite at step 2"), "{all}");
    assert!(all.contains("holds step 1"), "{all}");
    assert_eq!(
        losses(&all).len(),
        2,
        "stopped on the step that produced it: {all}"
    );
    assert!(
        !tmp.path().join("out").exists(),
        "no adapter saved from a bad state"
    );
    assert_eq!(resumes_after(&ck, &cache, EXPLODING), 1);
    // The debug flag names the op, with its place in the spec.
    let out = graft(&["run", EXPLODING, "--debug-non-finite"], &cache, &[]);
    let all = exited(&out, 1);
    assert!(
        all.contains("= exp") && all.contains("exploding.graft:9:"),
        "{all}"
    );
}

#[test]
fn a_run_whose_gradients_are_all_zero_is_stopped_as_stuck() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("stuck.graft");
    write_spec(
        &spec,
        "use models.llama\n\
         adapter dead_gate() wraps linear(in, out) {\n    param g: [out] = zeros()\n    forward(x) = base(x) + g * 0.0\n}\n\
         model base = llama(vocab: 256, hidden: 16, layers: 1, heads: 2, ffn: 32)\n\
         adapt base { dead_gate() at [\"q_proj\"] }\n\
         train { data \"data/tiny_tokens.jsonl\" batch 2 seq 8 steps 4 }\n",
    );
    let out = graft(
        &["run", &spec.display().to_string(), "--interpret"],
        &tmp.path().join("c"),
        &[],
    );
    let all = exited(&out, 1);
    assert!(
        all.contains("exactly 0 for 4 steps in a row") && all.contains("nothing is training"),
        "{all}"
    );
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused_and_left_as_they_were() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, ck) = (tmp.path().join("cache"), tmp.path().join("ck"));
    let d = ck.display().to_string();
    exited(
        &graft(
            &["run", TINY, "--steps", "2", "--checkpoint", &d],
            &cache,
            &[],
        ),
        0,
    );
    let file = ck.join("checkpoint.safetensors");
    let good = std::fs::read(&file).unwrap();
    // Flipped data bits, a truncation, and garbage: a clear error, the file unchanged.
    let n = good.len();
    let damaged: [(&str, Vec<u8>); 3] = [
        ("flipped", {
            let mut b = good.clone();
            b[n - 2] ^= 1;
            b
        }),
        ("truncated", good[..n / 2].to_vec()),
        ("garbage", b"\x10\0\0\0\0\0\0\0not a header".to_vec()),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&file, &bytes).unwrap();
        let out = graft(
            &["run", TINY, "--steps", "4", "--checkpoint", &d],
            &cache,
            &[],
        );
        let all = exited(&out, 1);
        assert!(all.contains("checkpoint.safetensors"), "{what}: {all}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            bytes,
            "{what}: left as it was"
        );
    }
    std::fs::write(&file, &good).unwrap();
    // Another run's settings: refused with what changed, accepted when forced.
    let spec = tmp.path().join("other_lr.graft");
    write_spec(&spec, &tiny_text().replace("lr: 3e-2", "lr: 1e-2"));
    let s = spec.display().to_string();
    let all = exited(
        &graft(
            &["run", &s, "--steps", "3", "--checkpoint", &d],
            &cache,
            &[],
        ),
        1,
    );
    assert!(
        all.contains("different run") && all.contains("lr: 0.03"),
        "{all}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), good);
    let all = exited(
        &graft(
            &[
                "run",
                &s,
                "--steps",
                "3",
                "--checkpoint",
                &d,
                "--force-resume",
            ],
            &cache,
            &[],
        ),
        0,
    );
    assert!(
        all.contains("warning: resuming with a change") && all.contains("after step 2"),
        "{all}"
    );
    assert_eq!(losses(&all).len(), 1, "{all}");
}

#[test]
fn damaged_cache_entries_are_rebuilt_and_compute_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let first = exited(&graft(&["run", TINY, "--steps", "3"], &cache, &[]), 0);
    let want = losses(&first);
    let entries = |ext: &str| -> Vec<PathBuf> {
        walk(&cache)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    assert!(!entries("so").is_empty() && !entries("graft-ir").is_empty());
    // Truncated kernels (SIGBUS unchecked), zeroed code (wrong numbers or SIGILL), and an
    // optimized step edited into another valid one.
    for (i, p) in entries("so").into_iter().enumerate() {
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        if i == 0 {
            b.truncate(n / 2);
        } else {
            b[n / 3..n / 2].fill(0);
        }
        std::fs::write(&p, b).unwrap();
    }
    for p in entries("graft-ir") {
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{t}\n")).unwrap();
    }
    let again = exited(&graft(&["run", TINY, "--steps", "3"], &cache, &[]), 0);
    assert!(
        again.contains("optimized the step in"),
        "the edited step was not used: {again}"
    );
    assert!(
        again.contains("0 of 2 modules cached"),
        "damaged kernels were not used: {again}"
    );
    assert_eq!(losses(&again), want);
    let third = exited(&graft(&["run", TINY, "--steps", "3"], &cache, &[]), 0);
    assert!(third.contains("2 of 2 modules cached"), "{third}");
    assert_eq!(losses(&third), want);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Starts a long compiled run that keeps a checkpoint in `ck` and saves into `out`, and
/// waits until it is training.
fn long_run(cache: &Path, ck: &Path, out: &Path) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = cmd(
        &[
            "run",
            TINY,
            "--steps",
            "1000000",
            "--every",
            "1000",
            "--checkpoint",
            &ck.display().to_string(),
            "--save",
            &out.display().to_string(),
        ],
        cache,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("step ") {
            return (child, lines);
        }
        line.clear();
    }
    panic!(
        "the run never started: {}",
        text(&child.wait_with_output().unwrap().stderr)
    );
}

fn signal(child: &Child, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn finish(mut child: Child, mut lines: BufReader<std::process::ChildStdout>) -> (Output, String) {
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut lines, &mut rest);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let out = wait(child, Duration::from_secs(60), &["long run"]);
    (out, format!("{rest}{err}"))
}

#[test]
fn a_signal_finishes_the_step_saves_everything_and_a_second_run_cannot_share_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, ck, out) = (
        tmp.path().join("cache"),
        tmp.path().join("ck"),
        tmp.path().join("out"),
    );
    for (sig, name) in [(2, "SIGINT"), (15, "SIGTERM")] {
        let (child, lines) = long_run(&cache, &ck, &out);
        // Meanwhile the folder is locked.
        let other = graft(
            &[
                "run",
                TINY,
                "--steps",
                "2",
                "--checkpoint",
                &ck.display().to_string(),
            ],
            &cache,
            &[],
        );
        let all = exited(&other, 1);
        assert!(all.contains("in use by another graft run"), "{all}");
        signal(&child, sig);
        let (status, all) = finish(child, lines);
        assert_eq!(status.status.signal(), None, "{}", tail(&all));
        assert_eq!(status.status.code(), Some(130), "{all}");
        assert!(
            all.contains(&format!("{name} received")) && all.contains("resume with --checkpoint"),
            "{all}"
        );
        assert!(ck.join("checkpoint.safetensors").exists());
        for f in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "trainable.safetensors",
        ] {
            assert!(out.join(f).exists(), "{f}");
        }
        let saved_at: usize = all
            .split("(step ")
            .last()
            .and_then(|r| r.split(')').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{all}"));
        assert_eq!(resumes_after(&ck, &cache, TINY), saved_at, "{all}");
        no_temporary_files(&ck);
    }
    // Two signals at once: out at once, still no crash; the checkpoint is the last whole one
    // (a write the second signal cut short leaves only its temporary file, which the next run
    // of the folder removes).
    let (child, lines) = long_run(&cache, &ck, &out);
    signal(&child, 15);
    signal(&child, 15);
    let (status, all) = finish(child, lines);
    assert_eq!(
        (status.status.signal(), status.status.code()),
        (None, Some(130)),
        "{}",
        tail(&all)
    );
    resumes_after(&ck, &cache, TINY);
    no_temporary_files(&ck);
}

#[test]
fn a_full_disk_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, ck, out) = (
        tmp.path().join("cache"),
        tmp.path().join("ck"),
        tmp.path().join("out"),
    );
    let (d, o) = (ck.display().to_string(), out.display().to_string());
    exited(
        &graft(
            &[
                "run",
                TINY,
                "--steps",
                "2",
                "--checkpoint",
                &d,
                "--save",
                &o,
            ],
            &cache,
            &[],
        ),
        0,
    );
    let (ckpt, adapter) = (
        std::fs::read(ck.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
    );
    // The checkpoint write fails: the error names it, the old one is intact.
    let all = exited(
        &graft(
            &[
                "run",
                TINY,
                "--steps",
                "4",
                "--checkpoint",
                &d,
                "--every",
                "1",
            ],
            &cache,
            &[("GRAFT_FAIL_WRITES", "checkpoint")],
        ),
        1,
    );
    assert!(
        all.contains("checkpoint.safetensors") && all.contains("No space left"),
        "{all}"
    );
    assert_eq!(
        std::fs::read(ck.join("checkpoint.safetensors")).unwrap(),
        ckpt
    );
    no_temporary_files(&ck);
    // The adapter write fails after training: non-zero, the trained state kept in the
    // checkpoint, the previous adapter intact.
    let all = exited(
        &graft(
            &[
                "run",
                TINY,
                "--steps",
                "4",
                "--checkpoint",
                &d,
                "--save",
                &o,
            ],
            &cache,
            &[("GRAFT_FAIL_WRITES", "adapter_model")],
        ),
        1,
    );
    assert!(
        all.contains("saving failed") && all.contains("kept in the checkpoint"),
        "{all}"
    );
    assert_eq!(resumes_after(&ck, &cache, TINY), 4);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        adapter
    );
    no_temporary_files(&out);
    // Without a checkpoint folder the state goes to a rescue checkpoint.
    let all = exited(
        &graft(
            &["run", TINY, "--steps", "1", "--save", &o],
            &cache,
            &[("GRAFT_FAIL_WRITES", "trainable")],
        ),
        1,
    );
    let rescue = all
        .split("kept in the checkpoint ")
        .nth(1)
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|| panic!("{all}"));
    assert!(Path::new(&rescue).is_file(), "{rescue}");
    let _ = std::fs::remove_dir_all(Path::new(&rescue).parent().unwrap());
}

#[test]
fn special_files_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let f = fifo.display().to_string();
    let cache = tmp.path().join("cache");
    let all = exited(&graft(&["check", &f], &cache, &[]), 1);
    assert!(all.contains("not a regular file"), "{all}");
    for (what, edit) in [
        ("weights", "\"../tests/fixtures/base.safetensors\""),
        ("data", "\"data/tiny_tokens.jsonl\""),
    ] {
        let spec = tmp.path().join(format!("{what}.graft"));
        write_spec(&spec, &tiny_text().replace(edit, &format!("{f:?}")));
        let all = exited(
            &graft(
                &[
                    "run",
                    &spec.display().to_string(),
                    "--interpret",
                    "--steps",
                    "1",
                ],
                &cache,
                &[],
            ),
            1,
        );
        assert!(
            all.contains("not a regular file") && all.contains("fifo"),
            "{what}: {all}"
        );
    }
}

#[test]
fn a_weights_file_truncated_during_a_run_is_a_clear_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("w.safetensors");
    std::fs::copy(repo().join("tests/fixtures/base.safetensors"), &weights).unwrap();
    let spec = tmp.path().join("s.graft");
    write_spec(
        &spec,
        &tiny_text().replace(
            "\"../tests/fixtures/base.safetensors\"",
            &format!("{weights:?}"),
        ),
    );
    let mut child = cmd(
        &["run", &spec.display().to_string(), "--steps", "1000000"],
        &tmp.path().join("cache"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap() > 0 && !line.starts_with("step ") {
        line.clear();
    }
    std::fs::File::create(&weights).unwrap().set_len(0).unwrap();
    let (out, all) = finish(child, lines);
    assert_eq!(out.status.signal(), None, "{all}");
    assert_eq!(out.status.code(), Some(75), "{all}");
    assert!(
        all.contains("memory-mapped file changed size") && all.contains("w.safetensors"),
        "{all}"
    );
}

#[test]
fn a_model_too_large_for_memory_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("huge.graft");
    write_spec(
        &spec,
        "use models.llama\nuse peft.lora\n\
         model base = llama(vocab: 256, hidden: 100000000, layers: 1, heads: 4, ffn: 128)\n\
         adapt base { lora(r: 4) at [\"q_proj\"] }\n\
         train { data \"data/tiny_tokens.jsonl\" batch 1 seq 4 steps 2 }\n",
    );
    let s = spec.display().to_string();
    let cache = tmp.path().join("cache");
    let all = exited(&graft(&["check", &s], &cache, &[]), 0);
    assert!(
        all.contains("warning: training this model") && all.contains("GiB"),
        "{all}"
    );
    for backend in [&["--interpret"][..], &[][..]] {
        let mut args = vec!["run", s.as_str()];
        args.extend_from_slice(backend);
        let all = exited(&graft(&args, &cache, &[]), 1);
        assert!(all.contains("is needed, but only"), "{all}");
    }
}

#[test]
fn saving_another_method_into_a_folder_removes_the_old_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let o = out.display().to_string();
    exited(
        &graft(
            &["run", TINY, "--interpret", "--steps", "1", "--save", &o],
            &cache,
            &[],
        ),
        0,
    );
    assert!(out.join("adapter_config.json").exists());
    // An adapter with no PEFT form: only its tensors are saved, and LoRA's files must go.
    let all = exited(
        &graft(
            &[
                "run",
                "dsl-examples/tiny_custom_adapter.graft",
                "--interpret",
                "--steps",
                "1",
                "--save",
                &o,
            ],
            &cache,
            &[],
        ),
        0,
    );
    assert!(
        all.contains("removed") && all.contains("adapter_config.json"),
        "{all}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["loss.svg", "metrics.jsonl", "trainable.safetensors"]
    );
}

#[test]
fn bad_data_lines_stop_the_run_or_are_skipped_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let mut text =
        std::fs::read_to_string(repo().join("dsl-examples/data/tiny_tokens.jsonl")).unwrap();
    text.insert_str(0, "{\"input_ids\": [1, 2\n");
    text.push_str("{\"input_ids\": [300]}\n");
    std::fs::write(&data, text).unwrap();
    let spec = tmp.path().join("s.graft");
    write_spec(
        &spec,
        &tiny_text().replace("\"data/tiny_tokens.jsonl\"", &format!("{data:?}")),
    );
    let s = spec.display().to_string();
    let cache = tmp.path().join("cache");
    let all = exited(
        &graft(&["train", &s, "--interpret", "--steps", "1"], &cache, &[]),
        1,
    );
    assert!(all.contains("data.jsonl:1: not JSON"), "{all}");
    let all = exited(
        &graft(
            &[
                "train",
                &s,
                "--interpret",
                "--steps",
                "1",
                "--bad-lines",
                "skip",
            ],
            &cache,
            &[],
        ),
        0,
    );
    assert!(
        all.contains("skipped") && all.contains("data.jsonl:1:"),
        "{all}"
    );
    assert!(
        all.contains("data.jsonl:26: token 300 is outside the model's vocabulary"),
        "{all}"
    );
    assert_eq!(losses(&all).len(), 1, "{all}");
}
