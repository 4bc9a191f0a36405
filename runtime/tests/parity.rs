//! Parity with PyTorch + Hugging Face PEFT: for each case in `tests/fixtures/` (made by
//! `scripts/make_fixtures.py`), graft compiles the matching spec in `tests/parity/`, loads the
//! base weights by their Hugging Face names and the adapter tensors by PEFT's keys, and must
//! reproduce PyTorch's logits and loss (relative error ≤ 1e-4 of the largest reference value),
//! every adapter gradient (≤ 1e-3) and the tensors after three AdamW steps (≤ 1e-3), all on the
//! reference interpreter.

use graft_frontend::{Stdlib, compile_file};
use graft_interp::Tensor;
use graft_runtime::{Session, WeightsFile, graft_path, load_adapter, peft_storage, save_adapter};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    r.canonicalize().unwrap_or(r)
}

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max)
        / scale
}

struct Case {
    session: Session,
    fixture: WeightsFile,
    input_ids: Tensor,
    labels: Tensor,
    trainable: Vec<String>,
}

fn load_case(name: &str) -> Case {
    load_case_with(name, false)
}

/// The case's spec in a session on the base weights, with graft's own initial values.
fn new_session(name: &str, optimize: bool) -> Session {
    let spec = repo().join(format!("tests/parity/{name}.graft"));
    let (_, program) = match compile_file(&spec, &Stdlib::Dir(repo().join("stdlib"))) {
        Ok(r) => r,
        Err(graft_frontend::CompileFileError::Compile(e)) => panic!("{}", e.render(false)),
        Err(e) => panic!("{e}"),
    };
    let base = WeightsFile::open(&fixtures().join("base.safetensors")).expect("base fixture");
    let opts = graft_runtime::SessionOptions {
        optimize,
        backend: &graft_runtime::Interpreter,
    };
    let session = Session::with_options(program, Some(&base), 0, &opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    if optimize {
        assert_ne!(
            session.step_fn,
            graft_autodiff::train_step(
                session.program.module.function("forward").expect("forward"),
                &graft_runtime::step_config(&session.program)
            )
            .expect("step"),
            "the optimizer changed nothing"
        );
    }
    session
}

/// The spec `tests/parity/{name}.graft` against fixture `{name}.safetensors`, or, for a name
/// `spec@fixture`, another spec of the same computation against that fixture.
fn load_case_with(name: &str, optimize: bool) -> Case {
    let (name, fixture_name) = name.split_once('@').unwrap_or((name, name));
    let mut session = new_session(name, optimize);
    let base = WeightsFile::open(&fixtures().join("base.safetensors")).expect("base fixture");
    let fixture = WeightsFile::open(&fixtures().join(format!("{fixture_name}.safetensors")))
        .expect("case fixture");
    let mut trainable = Vec::new();
    let mut tensors = Vec::new();
    for key in fixture.entries().keys() {
        if key == "logits"
            || key == "loss"
            || key == "losses"
            || key.starts_with("grad.")
            || key.starts_with("step")
            || key.starts_with("buffer.")
        {
            continue;
        }
        tensors.push((graft_path(key), fixture.read(key).expect("fixture tensor")));
        trainable.push(key.clone());
    }
    // PEFT's keys, as a PEFT folder's are read: a stacked tensor splits into its parts.
    let shapes: Vec<(String, Vec<usize>)> = (session.program.tensors.iter())
        .map(|t| (t.path.clone(), t.ty.shape.clone()))
        .collect();
    let full = |p: &str| shapes.iter().find(|(q, _)| q == p).map(|(_, s)| s.clone());
    peft_storage::unstack(&session.program.adapters, &mut tensors, full)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let set = tensors.len();
    for (path, t) in tensors {
        session
            .set_param(&path, t)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(
        set,
        session.params().len(),
        "{name}: every trainable tensor of the spec is in the fixture"
    );
    Case {
        session,
        input_ids: base.read("input_ids").expect("ids"),
        labels: base.read("labels").expect("labels"),
        fixture,
        trainable,
    }
}

/// Tensors by graft path as the fixture keys them (PEFT's form): the parts of a `peft_stack`
/// joined under its key.
fn fixture_form<'t>(
    session: &Session,
    tensors: impl Iterator<Item = (String, &'t Tensor)>,
) -> Vec<(String, Tensor)> {
    let tensors: Vec<(String, &Tensor)> = tensors.collect();
    peft_storage::peft_form(&session.program.adapters, &tensors).expect("PEFT's form")
}

fn check_case(name: &str) {
    check_case_with(name, false);
}

/// Logits, loss and gradients at the fixture's params, then its AdamW steps (3, or as many as
/// its `losses`, each step's loss checked against them) and the params after them; returns the
/// case after its steps.
fn check_case_with(name: &str, optimize: bool) -> Case {
    let mut c = load_case_with(name, optimize);
    let logits = c
        .session
        .forward(&c.input_ids)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = c.fixture.read("logits").expect("logits");
    let e = rel_err(&logits, &want);
    assert!(
        e <= 1e-4,
        "{name}: logits differ from PyTorch by {e:e} (relative)"
    );

    let (loss, grads) = c
        .session
        .gradients(&c.input_ids, &c.labels)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want_loss = c.fixture.read("loss").expect("loss").to_f64_vec()[0];
    let le = (loss as f64 - want_loss).abs() / want_loss.abs();
    assert!(
        le <= 1e-4,
        "{name}: loss {loss} vs PyTorch {want_loss} (relative {le:e})"
    );
    let grads = fixture_form(&c.session, grads.iter().map(|(p, t)| (p.clone(), t)));
    for key in &c.trainable {
        let path = graft_path(key);
        let g = grads
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{name}: no gradient for {path}"));
        let want = c.fixture.read(&format!("grad.{key}")).expect("grad");
        let e = rel_err(g, &want);
        assert!(
            e <= 1e-3,
            "{name}: gradient of {key} differs from PyTorch by {e:e}"
        );
    }

    let losses = c.fixture.read("losses").ok().map(|l| l.to_f64_vec());
    let steps = losses.as_ref().map_or(3, Vec::len);
    for i in 0..steps {
        let s = c
            .session
            .step(&c.input_ids, &c.labels)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.loss.is_finite(), "{name}: loss {}", s.loss);
        if let Some(l) = &losses {
            let e = (f64::from(s.loss) - l[i]).abs() / l[i].abs();
            assert!(
                e <= 1e-4,
                "{name}: step {i}'s loss {} vs PyTorch {} (relative {e:e})",
                s.loss,
                l[i]
            );
        }
    }
    let params = fixture_form(&c.session, c.session.params().into_iter());
    for key in &c.trainable {
        let path = graft_path(key);
        let p = params
            .iter()
            .find(|(q, _)| *q == path)
            .map(|(_, t)| t)
            .expect("param");
        let want = c
            .fixture
            .read(&format!("step{steps}.{key}"))
            .expect("params after the steps");
        let e = rel_err(p, &want);
        assert!(
            e <= 1e-3,
            "{name}: {key} after {steps} AdamW steps differs from PyTorch by {e:e}"
        );
    }
    c
}

#[test]
fn lora_on_q_and_v() {
    check_case("lora_qv");
}

#[test]
fn lora_on_all_linear_layers() {
    check_case("lora_all");
}

#[test]
fn dora() {
    check_case("dora");
}

#[test]
fn ia3() {
    check_case("ia3");
}

#[test]
fn prompt_tuning() {
    check_case("prompt_tuning");
}

#[test]
fn full_fine_tuning_of_one_layer() {
    check_case("full_ft");
}

#[test]
fn lora_on_an_nf4_quantized_base() {
    check_case("qlora");
}

/// DoRA on an NF4 base: its magnitude and norms are those of bitsandbytes' dequantized weight.
#[test]
fn dora_on_an_nf4_quantized_base() {
    check_case("qdora");
}

/// AdaLoRA over every phase of its schedule (6 steps: no pruning, budgets 18 and 16, the
/// final allocation and its fixed mask), with the orthogonality penalty in the loss: the usual
/// parity at every step, and the singular values pruned to zero are exactly PEFT's.
#[test]
fn adalora_prunes_pefts_triplets_on_its_budget_schedule() {
    let c = check_case_with("adalora", false);
    let params = c.session.params();
    let mut pruned = 0;
    for key in c.trainable.iter().filter(|k| k.ends_with("lora_E")) {
        let path = graft_path(key);
        let ours = params
            .iter()
            .find(|(q, _)| *q == path)
            .map(|(_, t)| t.to_f64_vec())
            .expect("lora_E");
        let want = c
            .fixture
            .read(&format!("step6.{key}"))
            .expect("E")
            .to_f64_vec();
        let zeros = |v: &[f64]| v.iter().map(|x| *x == 0.0).collect::<Vec<_>>();
        assert_eq!(zeros(&ours), zeros(&want), "{key}: pruned triplets");
        pruned += zeros(&want).iter().filter(|z| **z).count();
    }
    assert_eq!(pruned, 8, "24 triplets pruned to the target budget of 16");
}

#[test]
fn loha() {
    check_case("loha");
}

#[test]
fn lokr_with_full_and_low_rank_factors() {
    check_case("lokr");
}

#[test]
fn hra() {
    check_case("hra");
}

#[test]
fn lora_plus_trains_lora_b_at_its_own_learning_rate() {
    check_case("loraplus");
}

#[test]
fn oft_with_the_cayley_neumann_series() {
    check_case("oft");
}

#[test]
fn oft_with_one_block_shared_and_three_terms() {
    check_case("oft_shared");
}

#[test]
fn oft_with_the_exact_cayley_transform() {
    check_case("oft_exact");
}

/// BOFT with one butterfly factor: block-diagonal exact-Cayley rotations and an output scale
/// (what PEFT trains on a CPU).
#[test]
fn boft_with_one_factor() {
    check_case("boft");
}

/// BOFT with three butterfly factors, against PEFT's CUDA path emulated on the CPU
/// (scripts/make_method_fixtures.py's `CpuBlockDiag`).
#[test]
fn boft_with_three_butterfly_factors() {
    check_case("boft_butterfly");
}

#[test]
fn vera_with_pefts_projections_drawn_bit_for_bit() {
    let c = load_case("vera");
    for name in ["vera_A", "vera_B"] {
        let ours = c.session.value(name).expect("the shared projection");
        let want = c.fixture.read(&format!("buffer.{name}")).expect("PEFT's");
        assert_eq!(ours.shape(), want.shape(), "{name}");
        assert_eq!(
            ours.to_f64_vec(),
            want.to_f64_vec(),
            "{name}: PyTorch's generator reproduced exactly"
        );
    }
    check_case("vera");
}

/// FourierFT's spectral locations are PEFT's `torch.randperm` draw, reproduced exactly on
/// every adapted layer (`buffer.indices.<path>`, row · in + column), then the usual parity.
#[test]
fn fourierft_at_pefts_random_locations() {
    let c = load_case("fourierft");
    let keys: Vec<String> = c.fixture.entries().keys().cloned().collect();
    let mut checked = 0;
    for path in keys
        .iter()
        .filter_map(|k| k.strip_prefix("buffer.indices."))
    {
        let name = format!("{path}.loc");
        let ours = c
            .session
            .value(&name)
            .unwrap_or_else(|| panic!("no buffer {name}"));
        let want = c
            .fixture
            .read(&format!("buffer.indices.{path}"))
            .expect("PEFT's");
        assert_eq!(ours.shape(), want.shape(), "{name}");
        assert_eq!(
            ours.to_f64_vec(),
            want.to_f64_vec(),
            "{name}: torch.randperm reproduced"
        );
        checked += 1;
    }
    assert_eq!(checked, 4, "q and v in both layers");
    check_case("fourierft");
}

/// The same FourierFT with ΔW formed (`delta_weight: "formed"`; the fixture's shapes pick the
/// factored order), against the same fixture.
#[test]
fn fourierft_with_its_delta_weight_formed() {
    check_case("fourierft_formed@fourierft");
}

/// PiSSA and OLoRA: graft's initial `lora_A`/`lora_B` (from its SVD or QR of the frozen
/// weight) and the residual weights it freezes in their place, against PEFT's before the
/// fixture's adapter was randomized (`buffer.init.*`, `buffer.residual.*`): factors within
/// `tol` of the largest reference value, residuals within `res_tol`. With `signed`, each singular pair's sign (arbitrary in an
/// SVD) is taken from PEFT's A before comparing: row i of A and column i of B flip together.
fn check_initial_factors(name: &str, signed: bool, tol: f64, res_tol: f64) {
    let s = new_session(name, false);
    let fixture =
        WeightsFile::open(&fixtures().join(format!("{name}.safetensors"))).expect("case fixture");
    let keys: Vec<String> = fixture.entries().keys().cloned().collect();
    let mut checked = 0;
    for key in keys.iter().filter_map(|k| k.strip_prefix("buffer.init.")) {
        let Some(b_key) = key
            .contains("lora_A")
            .then(|| key.replace("lora_A", "lora_B"))
        else {
            continue;
        };
        let read = |k: &str| fixture.read(&format!("buffer.init.{k}")).expect("PEFT's");
        let ours = |k: &str| s.value(&graft_path(k)).expect("graft's").clone();
        let (a, b, want_a, want_b) = (ours(key), ours(&b_key), read(key), read(&b_key));
        let (r, n_in) = (a.shape()[0], a.shape()[1]);
        let (mut av, mut bv) = (a.to_f64_vec(), b.to_f64_vec());
        if signed {
            let wa = want_a.to_f64_vec();
            for i in 0..r {
                let dot: f64 = (0..n_in).map(|j| av[i * n_in + j] * wa[i * n_in + j]).sum();
                if dot < 0.0 {
                    (0..n_in).for_each(|j| av[i * n_in + j] = -av[i * n_in + j]);
                    (0..b.shape()[0]).for_each(|o| bv[o * r + i] = -bv[o * r + i]);
                }
            }
        }
        let a = Tensor::f64(a.shape().to_vec(), av).expect("A");
        let b = Tensor::f64(b.shape().to_vec(), bv).expect("B");
        for (k, ours, want) in [(key, &a, &want_a), (b_key.as_str(), &b, &want_b)] {
            let e = rel_err(ours, &want);
            assert!(e <= tol, "{name}: initial {k} differs from PEFT's by {e:e}");
        }
        checked += 1;
    }
    for path in keys
        .iter()
        .filter_map(|k| k.strip_prefix("buffer.residual."))
    {
        let want = fixture
            .read(&format!("buffer.residual.{path}"))
            .expect("PEFT's");
        let ours = s.value(path).expect("graft's residual weight");
        let e = rel_err(ours, &want);
        assert!(
            e <= res_tol,
            "{name}: residual {path} differs from PEFT's by {e:e}"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 16,
        "{name}: 8 adapted layers, their factors and residuals"
    );
}

/// Tolerance 5e-4 for the factors: PEFT's SVD is in f32, and on layer 1's down_proj (σ₄ and σ₅
/// 1e-3 apart) its singular vectors are 1.4e-4 from torch's own f64 SVD, where graft's (f64)
/// agrees; measured here: 1.3e-4 (factors), 4.7e-5 (residuals).
#[test]
fn pissa_starts_at_the_principal_singular_triplets_of_w() {
    check_initial_factors("pissa", true, 5e-4, 1e-4);
    check_case("pissa");
}

/// LAPACK's reflector signs reproduced: measured 3.6e-7 (tolerance 1e-5).
#[test]
fn olora_starts_at_the_qr_decomposition_of_w() {
    check_initial_factors("olora", false, 1e-5, 1e-5);
    check_case("olora");
}

/// PEFT's default `save_projection: true` writes the shared matrices as `base_model.vera_A`
/// and `base_model.vera_B` beside the vectors: such a folder loads when they are the
/// projections the spec draws, and is refused when they are not.
#[test]
fn a_vera_adapter_with_its_projections_saved_loads_when_they_match() {
    let mut c = load_case("vera");
    let peft = fixtures().join("peft_vera");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(peft.join("adapter_config.json")).expect("config"),
    )
    .expect("json");
    config["save_projection"] = serde_json::Value::Bool(true);
    let saved = WeightsFile::open(&peft.join("adapter_model.safetensors")).expect("adapter");
    let mut tensors: Vec<(String, Tensor)> = saved
        .entries()
        .keys()
        .map(|k| (k.clone(), saved.read(k).expect("tensor")))
        .collect();
    let a = c.fixture.read("buffer.vera_A").expect("A");
    let b = c.fixture.read("buffer.vera_B").expect("B");
    let write = |name: &str, tensors: &[(String, Tensor)]| {
        let dir = std::env::temp_dir().join(format!("graft-vera-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("adapter_config.json"), config.to_string()).expect("write");
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
        let bytes = graft_runtime::weights::to_safetensors(&refs).expect("encode");
        std::fs::write(dir.join("adapter_model.safetensors"), bytes).expect("write");
        dir
    };
    tensors.push(("base_model.vera_A".into(), a.clone()));
    tensors.push(("base_model.vera_B".into(), b));
    let dir = write("saved", &tensors);
    let (n, missing) = c.session.load_trained(&dir).expect("loads");
    assert_eq!((n, missing.len()), (10, 0));
    let logits = c.session.forward(&c.input_ids).expect("forward");
    let e = rel_err(&logits, &c.fixture.read("logits").expect("logits"));
    assert!(e <= 1e-4, "logits differ by {e:e}");

    let other: Vec<f32> = a.to_f64_vec().iter().map(|x| (x * 0.5) as f32).collect();
    let k = tensors.len() - 2;
    tensors[k].1 = Tensor::f32(a.shape().to_vec(), other).expect("tensor");
    let dir = write("other", &tensors);
    let err = c
        .session
        .load_trained(&dir)
        .expect_err("another projection");
    assert!(err.to_string().contains("vera_A"), "{err}");
}

#[test]
fn ln_tuning() {
    check_case("ln_tuning");
}

#[test]
fn a_peft_saved_adapter_loads_and_gives_the_same_logits() {
    let mut c = load_case("lora_qv");
    let (cfg, tensors) = load_adapter(&fixtures().join("peft_lora_qv")).expect("PEFT adapter");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(tensors.len(), 8);
    for (path, t) in tensors {
        c.session.set_param(&path, t).expect("param from PEFT file");
    }
    let logits = c.session.forward(&c.input_ids).expect("forward");
    let e = rel_err(&logits, &c.fixture.read("logits").expect("logits"));
    assert!(
        e <= 1e-4,
        "logits from PEFT's saved adapter differ by {e:e}"
    );
}

/// PEFT's saved AdaLoRA folder (full size: no allocation had run) loads into graft's adalora,
/// and the logits are PyTorch's (tolerance 1e-4).
#[test]
fn a_peft_saved_adalora_adapter_loads_and_gives_the_same_logits() {
    let c = load_case("adalora");
    let mut s = c.session;
    let (n, missing) = s
        .load_trained(&fixtures().join("peft_adalora"))
        .expect("PEFT's AdaLoRA folder");
    assert_eq!((n, missing.len()), (12, 0));
    let logits = s.forward(&c.input_ids).expect("forward");
    let e = rel_err(&logits, &c.fixture.read("logits").expect("logits"));
    assert!(e <= 1e-4, "logits differ by {e:e}");
}

/// PEFT's AdaLoRA folder saved after the 6 steps (each layer cut to the triplets its final
/// allocation kept, `rank_pattern` in the config) loads back in place: the logits are
/// PyTorch's after those steps (tolerance 1e-4), with 8 of the 24 triplets zero.
#[test]
fn a_pruned_peft_adalora_folder_loads_in_place() {
    let c = load_case("adalora");
    let mut s = c.session;
    let (n, missing) = s
        .load_trained(&fixtures().join("peft_adalora_pruned"))
        .expect("PEFT's pruned AdaLoRA folder");
    assert_eq!((n, missing.len()), (12, 0));
    let logits = s.forward(&c.input_ids).expect("forward");
    let want = c.fixture.read("buffer.pruned_logits").expect("logits");
    let e = rel_err(&logits, &want);
    assert!(e <= 1e-4, "logits differ by {e:e}");
    let zeros: usize = s
        .params()
        .iter()
        .filter(|(p, _)| p.ends_with("lora_E"))
        .map(|(_, t)| t.to_f64_vec().iter().filter(|x| **x == 0.0).count())
        .sum();
    assert_eq!(zeros, 8);
}

/// Prefix tuning (4 virtual keys and values in both layers of a GQA base, the sequence's
/// positions after them), with PEFT's one stacked `prompt_embeddings` split per layer: the
/// usual parity.
#[test]
fn prefix_tuning() {
    check_case("prefix_tuning");
}

/// PEFT's prefix-tuning folder (one `prompt_embeddings` [4, 128]) loads into the per-layer
/// prefixes: the logits are PyTorch's (tolerance 1e-4); a folder whose prefix is shorter than
/// the spec's is refused with both shapes.
#[test]
fn a_peft_prefix_tuning_folder_loads_per_layer() {
    let c = load_case("prefix_tuning");
    let mut s = new_session("prefix_tuning", false);
    let (n, missing) = s
        .load_trained(&fixtures().join("peft_prefix_tuning"))
        .expect("PEFT's prefix-tuning folder");
    assert_eq!((n, missing.len()), (4, 0));
    let logits = s.forward(&c.input_ids).expect("forward");
    let e = rel_err(&logits, &c.fixture.read("logits").expect("logits"));
    assert!(e <= 1e-4, "logits differ by {e:e}");

    let dir = std::env::temp_dir().join(format!("graft-prefix-short-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join("peft_prefix_tuning/adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let short = Tensor::f32(vec![4, 64], vec![0.0; 256]).unwrap();
    let bytes = graft_runtime::weights::to_safetensors(&[("prompt_embeddings".into(), &short)])
        .expect("bytes");
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    let e = s.load_trained(&dir).unwrap_err().to_string();
    assert!(e.contains("[4, 64]") && e.contains("[4, 128]"), "{e}");
}

/// A PiSSA or OLoRA adapter saved by PEFT loads onto the original weights: graft computes the
/// same residual, and the logits are PyTorch's (tolerance 1e-4).
#[test]
fn pefts_pissa_and_olora_folders_load_onto_the_original_weights() {
    for case in ["pissa", "olora"] {
        let mut s = new_session(case, false);
        let (n, missing) = s
            .load_trained(&fixtures().join(format!("peft_{case}")))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!((n, missing.len()), (16, 0), "{case}");
        let ids = WeightsFile::open(&fixtures().join("base.safetensors"))
            .and_then(|b| b.read("input_ids"))
            .expect("ids");
        let logits = s.forward(&ids).expect("forward");
        let want = WeightsFile::open(&fixtures().join(format!("{case}.safetensors")))
            .and_then(|f| f.read("logits"))
            .expect("logits");
        let e = rel_err(&logits, &want);
        assert!(e <= 1e-4, "{case}: logits differ by {e:e}");
    }
}

#[test]
fn adapters_save_in_pefts_format_and_load_back() {
    for case in [
        "lora_qv",
        "ia3",
        "prompt_tuning",
        "loha",
        "lokr",
        "hra",
        "oft",
        "oft_shared",
        "ln_tuning",
        "vera",
        "pissa",
        "olora",
        "fourierft",
        "qdora",
        "oft_exact",
        "boft",
        "boft_butterfly",
        "adalora",
        "prefix_tuning",
    ] {
        let c = load_case(case);
        let dir = std::env::temp_dir().join(format!("graft-peft-{case}-{}", std::process::id()));
        save_adapter(
            &dir,
            &c.session.program.adapters,
            Some("CAUSAL_LM"),
            &c.session.params(),
        )
        .expect("save");
        let (cfg, tensors) = load_adapter(&dir).expect("load");
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("peft_{case}/adapter_config.json")))
                .expect("config"),
        )
        .expect("json");
        assert_eq!(cfg["peft_type"], reference["peft_type"], "{case}");
        for field in [
            "r",
            "lora_alpha",
            "alpha",
            "num_virtual_tokens",
            "token_dim",
            "oft_block_size",
            "num_cayley_neumann_terms",
            "projection_prng_key",
            "d_initial",
            "n_frequency",
            "scaling",
            "random_loc_seed",
            "boft_block_size",
            "boft_block_num",
            "boft_n_butterfly_factor",
            "init_r",
            "target_r",
            "tinit",
            "tfinal",
            "deltaT",
            "total_step",
            "beta1",
            "beta2",
            "orth_reg_weight",
            "num_transformer_submodules",
        ] {
            if let Some(v) = reference.get(field) {
                assert_eq!(cfg[field].as_f64(), v.as_f64(), "{case}: {field}");
            }
        }
        // Fields PEFT fills from the model's config when a config leaves them out.
        for field in ["num_attention_heads", "num_layers"] {
            if let (Some(v), Some(ours)) = (reference.get(field), cfg.get(field)) {
                assert_eq!(ours.as_f64(), v.as_f64(), "{case}: {field}");
            }
        }
        for field in [
            "block_share",
            "use_cayley_neumann",
            "save_projection",
            "prefix_projection",
        ] {
            if let Some(v) = reference.get(field) {
                assert_eq!(&cfg[field], v, "{case}: {field}");
            }
        }
        // `init_weights` left out means PEFT's default, true (null: the method has none).
        if let Some(v) = reference.get("init_weights").filter(|v| !v.is_null()) {
            let ours = cfg
                .get("init_weights")
                .unwrap_or(&serde_json::Value::Bool(true));
            assert_eq!(ours, v, "{case}: init_weights");
        }
        // An initialization that makes a residual (PiSSA's, OLoRA's) is part of the adapter.
        if let Some(serde_json::Value::String(v)) = reference.get("init_lora_weights") {
            assert_eq!(
                cfg["init_lora_weights"].as_str(),
                Some(v.as_str()),
                "{case}"
            );
        }
        for field in ["target_modules", "feedforward_modules"] {
            if let Some(serde_json::Value::Array(want)) = reference.get(field) {
                let mut want: Vec<String> = want.iter().map(|v| v.to_string()).collect();
                want.sort();
                let got: Vec<String> = cfg[field]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.to_string()).collect())
                    .unwrap_or_default();
                assert_eq!(got, want, "{case}: {field}");
            }
        }
        let peft_keys: Vec<String> =
            WeightsFile::open(&fixtures().join(format!("peft_{case}/adapter_model.safetensors")))
                .expect("peft file")
                .entries()
                .keys()
                .cloned()
                .collect();
        let ours: Vec<String> = WeightsFile::open(&dir.join("adapter_model.safetensors"))
            .expect("our file")
            .entries()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            ours, peft_keys,
            "{case}: the same keys as PEFT's save_pretrained"
        );
        let params = fixture_form(&c.session, c.session.params().into_iter());
        assert_eq!(tensors.len(), params.len());
        for (path, t) in &tensors {
            let p = params
                .iter()
                .find(|(q, _)| q == path)
                .map(|(_, t)| t)
                .expect("saved param");
            assert_eq!(
                t.to_f64_vec(),
                p.to_f64_vec(),
                "{case}: {path} round-trips exactly"
            );
        }
    }
}

#[test]
fn the_optimized_training_step_still_matches_pytorch() {
    // LoRA through reassociation and batching; QLoRA through the fused quantized matmul.
    check_case_with("lora_qv", true);
    check_case_with("qlora", true);
}
