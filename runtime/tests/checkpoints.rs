//! Checkpoints refuse what they cannot resume correctly: a damaged file, a run with other
//! settings (unless forced), missing tensors, a step count the optimizer's counter denies;
//! and a refused load leaves the session untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{data, ids, program, session};
use graft_interp::Tensor;
use graft_runtime::{Fingerprint, Session, WeightsFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A session after two steps and its checkpoint in a fresh folder.
fn trained() -> (Session, Fingerprint, tempfile::TempDir, PathBuf) {
    let p = program(|t| t);
    let fp = Fingerprint::of(&p, Some(&data())).unwrap();
    let ids = ids(&p);
    let mut s = session(p);
    s.step(&ids, &ids).unwrap();
    s.step(&ids, &ids).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoint.safetensors");
    s.save_checkpoint(&file, &fp).unwrap();
    (s, fp, dir, file)
}

fn err(r: Result<graft_runtime::Resumed, graft_runtime::SessionError>) -> String {
    match r {
        Ok(r) => panic!("loaded: {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_checkpoint_restores_the_state_exactly() {
    let (s, fp, _dir, file) = trained();
    let mut fresh = session(program(|t| t));
    let r = fresh.load_checkpoint(&file, &fp, false).unwrap();
    assert_eq!((r.steps_done, r.forced.len()), (2, 0));
    for (name, t) in s.params() {
        assert_eq!(fresh.value(&name), Some(t), "{name}");
    }
    assert_eq!(fresh.value("step"), s.value("step"));
}

#[test]
fn a_flipped_bit_is_caught_by_the_checksum_and_the_session_is_untouched() {
    let (_, fp, _dir, file) = trained();
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let mut fresh = session(program(|t| t));
    let before: Vec<(String, Tensor)> = fresh
        .params()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    let e = err(fresh.load_checkpoint(&file, &fp, false));
    assert!(e.contains("damaged"), "{e}");
    let e = err(fresh.load_checkpoint(&file, &fp, true));
    assert!(
        e.contains("damaged"),
        "forcing does not accept a damaged file: {e}"
    );
    assert_eq!(fresh.steps_done(), 0);
    for (name, t) in before {
        assert_eq!(fresh.value(&name), Some(&t), "{name} unchanged");
    }
}

#[test]
fn another_runs_settings_are_named_and_accepted_only_when_forced() {
    let (_, _, _dir, file) = trained();
    type Edit = fn(String) -> String;
    let cases: [(&str, Edit, &str); 4] = [
        ("lr", |t| t.replace("lr: 3e-2", "lr: 1e-2"), "lr: 0.03"),
        (
            "alpha",
            |t| t.replace("alpha: 8.0", "alpha: 16.0"),
            "the model, its adapters",
        ),
        (
            "batch",
            |t| t.replace("batch 4", "batch 2"),
            "batch: 4 × 16 → 2 × 16",
        ),
        (
            "seed",
            |t| t.replace("steps 20", "steps 20 seed 7"),
            "seed: 0 → 7",
        ),
    ];
    for (what, edit, says) in cases {
        let p = program(edit);
        let fp = Fingerprint::of(&p, Some(&data())).unwrap();
        let mut s = session(p);
        let e = err(s.load_checkpoint(&file, &fp, false));
        assert!(
            e.contains("different run") && e.contains(says),
            "{what}: {e}"
        );
        assert!(e.contains("--force-resume"), "{what}: {e}");
        if what != "batch" {
            let r = s.load_checkpoint(&file, &fp, true).unwrap();
            assert_eq!(r.steps_done, 2, "{what}");
            assert!(
                r.forced.iter().any(|c| c.contains(says)),
                "{what}: {:?}",
                r.forced
            );
        }
    }
    // Another data file is another run.
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(data(), other.path()).unwrap();
    std::fs::write(other.path(), "{\"input_ids\": [1, 2, 3]}\n").unwrap();
    let p = program(|t| t);
    let fp = Fingerprint::of(&p, Some(other.path())).unwrap();
    let e = err(session(p).load_checkpoint(&file, &fp, false));
    assert!(e.contains("data: tiny_tokens.jsonl"), "{e}");
}

#[test]
fn changed_adapters_are_listed_and_missing_tensors_refused_even_when_forced() {
    let (_, _, _dir, file) = trained();
    let p = program(|t| {
        t.replace(
            "[\"q_proj\", \"v_proj\"]",
            "[\"q_proj\", \"k_proj\", \"v_proj\"]",
        )
    });
    let fp = Fingerprint::of(&p, Some(&data())).unwrap();
    let mut s = session(p);
    let e = err(s.load_checkpoint(&file, &fp, false));
    assert!(
        e.contains("adapters: added lora at model.layers.0.self_attn.k_proj"),
        "{e}"
    );
    let e = err(s.load_checkpoint(&file, &fp, true));
    assert!(
        e.contains("lacks tensors") && e.contains("k_proj.lora_A.weight"),
        "{e}"
    );
    // LoRA switched to DoRA: DoRA's magnitude is missing from a LoRA checkpoint.
    let p = program(|t| {
        t.replace("use peft.lora", "use peft.dora")
            .replace("lora(r: 4, alpha: 8.0)", "dora(r: 4, alpha: 8.0)")
    });
    let fp = Fingerprint::of(&p, Some(&data())).unwrap();
    let mut s = session(p);
    let e = err(s.load_checkpoint(&file, &fp, false));
    assert!(
        e.contains("added dora at") && e.contains("removed lora at"),
        "{e}"
    );
    let e = err(s.load_checkpoint(&file, &fp, true));
    assert!(e.contains("lacks tensors"), "{e}");
}

/// Rewrites a checkpoint's tensors with `edit` and a matching checksum, as a forger (or a
/// bug) would: what the checksum cannot catch, the other checks must.
fn forge(file: &Path, edit: impl Fn(&mut Vec<(String, Tensor)>)) {
    let w = WeightsFile::open(file).unwrap();
    let meta = w.metadata();
    let mut tensors: Vec<(String, Tensor)> = w
        .entries()
        .keys()
        .map(|n| (n.clone(), w.read(n).unwrap()))
        .collect();
    drop(w);
    edit(&mut tensors);
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = sha2::Sha256::default();
    use sha2::Digest;
    for (name, t) in &tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(t.ty().to_string().as_bytes());
        match t.data() {
            graft_interp::Data::F32(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
            graft_interp::Data::I64(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
            other => h.update(format!("{other:?}").as_bytes()),
        }
    }
    let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut meta: HashMap<String, String> = meta.into_iter().collect();
    meta.insert("graft.checksum".into(), sum);
    let list: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let bytes = graft_runtime::weights::to_safetensors_with(&list, Some(meta)).unwrap();
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_step_count_the_optimizer_counter_denies_is_refused_at_once() {
    let (_, fp, _dir, file) = trained();
    let good = std::fs::read(&file).unwrap();
    forge(&file, |ts| {
        for (n, t) in ts.iter_mut() {
            if n == "graft.steps_done" {
                *t = Tensor::i64(Vec::<usize>::new(), vec![1_000_000_000_000]).unwrap();
            }
        }
    });
    let e = err(session(program(|t| t)).load_checkpoint(&file, &fp, true));
    assert!(
        e.contains("1000000000000 steps") && e.contains("step counter says 2"),
        "{e}"
    );
    forge(&file, |ts| {
        for (n, t) in ts.iter_mut() {
            if n == "graft.steps_done" {
                *t = Tensor::i64(Vec::<usize>::new(), vec![-5]).unwrap();
            }
        }
    });
    let e = err(session(program(|t| t)).load_checkpoint(&file, &fp, true));
    assert!(e.contains("not a count of steps"), "{e}");
    // A tensor dropped (and the checksum redone) is missing state, never a silent zero.
    std::fs::write(&file, good).unwrap();
    forge(&file, |ts| ts.retain(|(n, _)| !n.contains("adam.v.")));
    let e = err(session(program(|t| t)).load_checkpoint(&file, &fp, false));
    assert!(e.contains("lacks tensors") && e.contains("adam.v."), "{e}");
}

#[test]
fn a_checkpoint_without_a_fingerprint_needs_forcing() {
    let (_, fp, _dir, file) = trained();
    // Strip the metadata: an old-format checkpoint.
    let w = WeightsFile::open(&file).unwrap();
    let tensors: Vec<(String, Tensor)> = w
        .entries()
        .keys()
        .map(|n| (n.clone(), w.read(n).unwrap()))
        .collect();
    drop(w);
    let list: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    std::fs::write(
        &file,
        graft_runtime::weights::to_safetensors(&list).unwrap(),
    )
    .unwrap();
    let e = err(session(program(|t| t)).load_checkpoint(&file, &fp, false));
    assert!(e.contains("no checksum or fingerprint"), "{e}");
    let r = session(program(|t| t))
        .load_checkpoint(&file, &fp, true)
        .unwrap();
    assert_eq!(r.steps_done, 2);
}
