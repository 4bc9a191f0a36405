//! A PEFT method nobody wrote yet, defined inline in a spec, gets the low-rank rules: the
//! optimizer knows algebra, not method names.

mod common;

use graft_frontend::{Stdlib, compile};

#[test]
fn low_rank_rules_fire_on_an_inline_adapter() {
    let spec = r#"
use models.llama

/// "Scaled sandwich": a low-rank update through a learned r×r core, y = base(x) + x·Aᵀ·Cᵀ·Bᵀ·s.
adapter sandwich(r: int = 2, s: float = 0.5) wraps linear(in, out) {
    param A: [r, in] = normal(std: 0.02)
    param C: [r, r] = normal(std: 0.02)
    param B: [out, r] = zeros()
    forward(x) = base(x) + (x @ A^T @ C^T @ B^T) * s
}

model base = llama(vocab: 64, hidden: 32, layers: 1, heads: 4, ffn: 48)
adapt base { sandwich() at ["q_proj", "v_proj"] }
train { batch 2 seq 8 }
"#;
    let (_, p) = compile(
        "novel.graft",
        None,
        spec.to_string(),
        &Stdlib::Dir(common::repo().join("stdlib")),
    )
    .unwrap_or_else(|e| panic!("{}", e.render(false)));
    let step = common::train_step(&p);
    let opt = graft_opt::optimize(&step, &graft_opt::Options::default()).expect("optimize");
    for rule in [
        "lowrank-reassociate",
        "scale-into-matmul-a",
        "matmul-fold-transpose-b",
    ] {
        assert!(
            opt.run.applied.get(rule).copied().unwrap_or(0) > 0,
            "{rule} did not fire on the inline adapter: {:?}",
            opt.run.applied
        );
    }
    let inputs = common::random_inputs(&step, 64, 5);
    let before = graft_interp::run(&step, &inputs).expect("before");
    let after = graft_interp::run(&opt.func, &inputs).expect("after");
    let (err, name) = common::worst_rel_err(&after, &before);
    assert!(err <= 1e-4, "`{name}` changed by {err:e}");
}
