//! What elaboration must do, checked on small specs: paths match Hugging Face, targets follow
//! PEFT's rules, adapters and quantization change the IR as specified, initializers read the
//! frozen weights, and named dimensions are checked.

mod common;

use common::{compile_ok, compile_text, repo};
use graft_frontend::DeclKind;
use graft_ir::{DType, InputKind, Op};

const TINY: &str = "use models.llama\nuse peft.{lora, dora, ia3, prompt_tuning, full_ft}\n\
model base = llama(vocab: 64, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 48)\n";

fn spec(adapt: &str, train: &str) -> String {
    format!("{TINY}adapt base {{\n{adapt}\n}}\ntrain {{ {train} }}\n")
}

fn input_kind(
    p: &graft_frontend::Program,
    func: &str,
    name: &str,
) -> Option<(InputKind, graft_ir::TensorType)> {
    p.module
        .function(func)?
        .input(name)
        .map(|i| (i.kind, i.ty.clone()))
}

#[test]
fn parameter_paths_are_hugging_face_names() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_lora.graft"));
    let names: Vec<&str> = p.tensors.iter().map(|t| t.path.as_str()).collect();
    for n in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        "model.layers.1.self_attn.v_proj.lora_B.weight",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let a = p
        .tensors
        .iter()
        .find(|t| t.path == "model.layers.0.self_attn.v_proj.lora_B.weight")
        .map(|t| (t.kind, t.ty.shape.clone()));
    assert_eq!(
        a,
        Some((DeclKind::Param, vec![32, 4])),
        "lora_B of v_proj is [out = kv_heads·head_dim, r]"
    );
}

#[test]
fn batch_and_seq_come_from_the_train_block() -> Result<(), String> {
    let (_, p) = compile_text(&spec("lora() at [\"q_proj\"]", "batch 3 seq 5"))?;
    assert_eq!(
        input_kind(&p, "forward", "input_ids").map(|x| x.1.shape),
        Some(vec![3, 5])
    );
    let out = p
        .module
        .function("forward")
        .and_then(|f| f.output("logits").map(|v| f.ty(v).clone()));
    assert_eq!(out.map(|t| t.shape), Some(vec![3, 5, 64]));
    Ok(())
}

#[test]
fn all_linear_skips_the_output_head() -> Result<(), String> {
    let (_, p) = compile_text(&spec("lora(r: 2) at \"all-linear\"", ""))?;
    let adapted: Vec<&str> = p
        .tensors
        .iter()
        .filter(|t| t.path.ends_with("lora_A.weight"))
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        adapted.len(),
        2 * 7,
        "7 linear layers per decoder layer: {adapted:?}"
    );
    assert!(!adapted.iter().any(|a| a.starts_with("lm_head")));
    Ok(())
}

#[test]
fn regex_targets_must_match_the_whole_path() -> Result<(), String> {
    let (_, p) = compile_text(&spec(
        r#"lora(r: 2) at "model\.layers\.1\.self_attn\.(q|k)_proj""#,
        "",
    ))?;
    let adapted: Vec<&str> = p
        .tensors
        .iter()
        .filter(|t| t.path.ends_with("lora_A.weight"))
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        adapted,
        vec![
            "model.layers.1.self_attn.q_proj.lora_A.weight",
            "model.layers.1.self_attn.k_proj.lora_A.weight"
        ]
    );
    let err = compile_text(&spec(r#"lora(r: 2) at "layers\.1\.self_attn\.q_proj""#, ""))
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("matches no module"),
        "a partial match must not count:\n{err}"
    );
    assert!(
        err.contains("model.layers.1.self_attn.q_proj"),
        "the error lists the nearest paths:\n{err}"
    );
    Ok(())
}

#[test]
fn overrides_work_like_rank_pattern() -> Result<(), String> {
    let (_, p) = compile_text(&spec(
        "lora(r: 2, alpha: 4.0) at [\"q_proj\", \"v_proj\"]\n    where \"layers.1.self_attn.q_proj\" { r: 6 }",
        "",
    ))?;
    let shape = |n: &str| {
        p.tensors
            .iter()
            .find(|t| t.path == n)
            .map(|t| t.ty.shape.clone())
    };
    assert_eq!(
        shape("model.layers.1.self_attn.q_proj.lora_A.weight"),
        Some(vec![6, 32])
    );
    assert_eq!(
        shape("model.layers.0.self_attn.q_proj.lora_A.weight"),
        Some(vec![2, 32])
    );
    assert_eq!(
        shape("model.layers.1.self_attn.v_proj.lora_A.weight"),
        Some(vec![2, 32])
    );
    Ok(())
}

#[test]
fn frozen_weights_and_trainable_params_are_separate_input_kinds() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_lora.graft"));
    assert_eq!(
        input_kind(&p, "forward", "model.layers.0.self_attn.q_proj.weight").map(|x| x.0),
        Some(InputKind::Weight)
    );
    assert_eq!(
        input_kind(
            &p,
            "forward",
            "model.layers.0.self_attn.q_proj.lora_A.weight"
        )
        .map(|x| x.0),
        Some(InputKind::Param)
    );
    let init = p.module.function("init").map(|f| f.outputs.len());
    assert_eq!(init, Some(8), "init produces every trainable param");
}

#[test]
fn dora_magnitude_is_initialized_from_the_frozen_weight() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_dora.graft"));
    let init = p.module.function("init").expect("init exists");
    let w = init
        .input("model.layers.0.self_attn.q_proj.weight")
        .expect("init reads the frozen q_proj weight");
    assert_eq!(w.kind, InputKind::Weight);
    let m = init
        .output("model.layers.0.self_attn.q_proj.lora_magnitude_vector")
        .expect("magnitude initialized");
    assert_eq!(init.ty(m).shape, vec![64]);
    // The norm in forward is not differentiated.
    let fwd = p.module.function("forward").expect("forward exists");
    assert!(fwd.nodes.iter().any(|n| n.op == Op::StopGrad));
}

#[test]
fn quantized_weights_stay_packed_and_are_dequantized_in_the_graph() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_qlora.graft"));
    let fwd = p.module.function("forward").expect("forward exists");
    let q = fwd
        .input("model.layers.0.mlp.up_proj.weight")
        .expect("codes input");
    assert_eq!(
        (q.kind, q.ty.dtype, q.ty.shape.clone()),
        (InputKind::Weight, DType::U4, vec![128, 64])
    );
    let absmax = fwd
        .input("model.layers.0.mlp.up_proj.weight.absmax")
        .expect("absmax codes");
    assert_eq!(
        absmax.ty.dtype,
        DType::U8,
        "double quantization stores absmax as u8"
    );
    let deq = fwd
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                Op::Dequantize {
                    block: 64,
                    nested: 256,
                    ..
                }
            )
        })
        .count();
    assert_eq!(deq, 14, "every decoder linear layer is dequantized once");
    assert_eq!(
        fwd.input("lm_head.weight").map(|i| i.ty.dtype),
        Some(DType::F32),
        "the output head is not quantized"
    );
    assert_eq!(
        fwd.input("model.norm.weight").map(|i| i.ty.dtype),
        Some(DType::F32),
        "vectors are not quantized"
    );
}

#[test]
fn ia3_vectors_have_pefts_shapes() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_ia3.graft"));
    let shape = |n: &str| {
        p.tensors
            .iter()
            .find(|t| t.path == n)
            .map(|t| t.ty.shape.clone())
    };
    assert_eq!(
        shape("model.layers.0.self_attn.k_proj.ia3_l"),
        Some(vec![32, 1])
    );
    assert_eq!(
        shape("model.layers.0.mlp.down_proj.ia3_l"),
        Some(vec![1, 128])
    );
}

#[test]
fn prompt_tuning_prepends_virtual_tokens() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_prompt_tuning.graft"));
    let fwd = p.module.function("forward").expect("forward exists");
    let logits = fwd.output("logits").map(|v| fwd.ty(v).shape.clone());
    assert_eq!(
        logits,
        Some(vec![2, 12, 256]),
        "4 virtual tokens + 8 real ones"
    );
    let init = p.module.function("init").expect("init exists");
    assert!(
        init.input("model.embed_tokens.weight").is_some(),
        "prompt embeddings start from vocabulary rows"
    );
    assert!(init.nodes.iter().any(|n| matches!(
        n.op,
        Op::Random {
            dist: graft_ir::Distribution::Int { lo: 0, hi: 256 },
            ..
        }
    )));
}

#[test]
fn full_fine_tuning_unfreezes_the_chosen_weight() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_full_ft.graft"));
    assert_eq!(
        input_kind(&p, "forward", "model.layers.1.mlp.down_proj.weight").map(|x| x.0),
        Some(InputKind::Param)
    );
    assert_eq!(
        input_kind(&p, "forward", "model.layers.0.mlp.down_proj.weight").map(|x| x.0),
        Some(InputKind::Weight)
    );
    let init = p.module.function("init").expect("init exists");
    let out = init
        .output("model.layers.1.mlp.down_proj.weight")
        .expect("init gives the start value");
    assert!(
        matches!(
            &init.node(out).op,
            Op::Input {
                kind: InputKind::Weight,
                ..
            }
        ),
        "it starts from the loaded weight"
    );
}

#[test]
fn tied_embeddings_have_no_lm_head() {
    let (_, p) = compile_ok(&repo().join("dsl-examples/tiny_custom_adapter.graft"));
    assert!(!p.tensors.iter().any(|t| t.path.starts_with("lm_head")));
    let g: Vec<&str> = p
        .tensors
        .iter()
        .filter(|t| t.path.ends_with(".g"))
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        g.len(),
        8,
        "the inline adapter lands on q/k/v/o of both layers: {g:?}"
    );
}

#[test]
fn docs_are_kept_in_the_ast() {
    let (loaded, _) = compile_ok(&repo().join("dsl-examples/tiny_custom_adapter.graft"));
    let docs: Vec<String> = loaded
        .files
        .iter()
        .flat_map(|f| &f.items)
        .filter_map(|i| match i {
            graft_frontend::ast::Item::Module(m) if m.name.name == "gated_lowrank" => {
                Some(m.doc.join("\n"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        docs,
        vec![
            "Gated low-rank adaptation: the gate g opens as training finds the update useful."
                .to_string()
        ]
    );
}

#[test]
fn named_dimensions_are_bound_and_checked() {
    let text = format!(
        "{TINY}fn heads_of(x: [B, S, H, D], H: int) = x\nadapter probe() wraps linear(in, out) {{\n forward(x: [B, S, in]) = base(x)\n}}\nadapt base {{ probe() at [\"q_proj\"] }}\n"
    );
    assert!(compile_text(&text).is_ok(), "matching annotation accepted");
    let bad = format!(
        "{TINY}adapter probe() wraps linear(in, out) {{\n forward(x: [B, S, out]) = base(x)\n}}\nadapt base {{ probe() at [\"k_proj\"] }}\n"
    );
    let err = compile_text(&bad).err().unwrap_or_default();
    assert!(
        err.contains("f32[1, 16, 32]") && err.contains("`out` = 16"),
        "the error names both shapes:\n{err}"
    );
}

#[test]
fn unused_trainable_params_warn() -> Result<(), String> {
    let text = format!(
        "{TINY}adapter idle() wraps linear(in, out) {{\n param p: [out] = zeros()\n}}\nadapt base {{ idle() at [\"o_proj\"] }}\n"
    );
    let (_, p) = compile_text(&text)?;
    assert_eq!(p.warnings.len(), 2);
    assert!(p.warnings[0].message.contains("never used"));
    Ok(())
}

#[test]
fn train_block_settings_are_read() -> Result<(), String> {
    let (_, p) = compile_text(&spec(
        "lora() at [\"q_proj\"]",
        "optimizer adamw(lr: 2e-4, weight_decay: 0.0) schedule cosine(warmup: 10) clip 1.0 steps 50 seed 7",
    ))?;
    assert_eq!(
        p.train.optimizer,
        graft_frontend::Optimizer::AdamW {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0
        }
    );
    assert_eq!(
        p.train.schedule,
        graft_frontend::Schedule::Cosine { warmup: 10 }
    );
    assert_eq!(
        (p.train.clip, p.train.steps, p.train.seed),
        (Some(1.0), 50, 7)
    );
    Ok(())
}

#[test]
fn adapters_stack_in_rule_order() -> Result<(), String> {
    let (_, p) = compile_text(&spec(
        "lora(r: 2) at [\"q_proj\"]\n    ia3() at [\"q_proj\"]",
        "",
    ))?;
    let names: Vec<&str> = p
        .tensors
        .iter()
        .filter(|t| t.path.starts_with("model.layers.0.self_attn.q_proj."))
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.q_proj.lora_B.weight",
            "model.layers.0.self_attn.q_proj.ia3_l"
        ]
    );
    Ok(())
}

/// A doc comment after a member whose value ends an expression documents the next member;
/// it is not read as a division (`ones() /// doc` once parsed as `ones() / ...`).
#[test]
fn a_doc_comment_after_an_expression_is_not_a_division() -> Result<(), String> {
    let adapter = "adapter gated(r: int = 2) wraps linear(in, out) {\n    param g: [r] = ones()\n    \
                   /// 1 for a dropped component.\n    state dropped: [r]\n    forward(x) = base(x)\n}\n";
    let (_, p) = compile_text(&format!(
        "{adapter}{}",
        spec("gated() at [\"q_proj\"]", "batch 1 seq 4")
    ))?;
    let paths: Vec<&str> = p.tensors.iter().map(|t| t.path.as_str()).collect();
    assert!(
        paths.contains(&"model.layers.0.self_attn.q_proj.dropped"),
        "{paths:?}"
    );
    Ok(())
}

/// A module's `input` is a batch input of the forward, one for every instance that names it,
/// and `batch` and `seq` are visible in module bodies.
#[test]
fn a_module_input_is_one_batch_input() -> Result<(), String> {
    let adapter = "adapter tasked(tasks: int = 3) wraps linear(in, out) {\n    input task: [batch] i64\n    \
                   param s: [tasks] = ones()\n    forward(x: [N, S, in]) = base(x) * reshape(gather(s, task), [N, 1, 1])\n}\n";
    let (_, p) = compile_text(&format!(
        "{adapter}{}",
        spec("tasked() at [\"q_proj\", \"v_proj\"]", "batch 3 seq 5")
    ))?;
    let f = p.module.function("forward").ok_or("no forward")?;
    let tasks: Vec<_> = f.inputs().filter(|i| i.name == "task").collect();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].kind, InputKind::Data);
    assert_eq!(*tasks[0].ty, graft_ir::TensorType::new(DType::I64, vec![3]));
    Ok(())
}
