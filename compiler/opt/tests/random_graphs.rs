//! Property test on generated graphs: random compositions of the shapes the rules target
//! (products with transposes, low-rank chains, scaled products, sums of products of one input,
//! reshape and transpose chains, elementwise ops) give the same interpreter outputs before and
//! after optimization (training and merge modes), within 1e-4 of each output's largest value.

mod common;

use graft_ir::Emitter;
use graft_ir::{DType, Function, InputKind, Op, TensorType, UnaryOp, ValueId};
use graft_opt::{Mode, Options, optimize};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn t(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, shape.to_vec())
}

/// A random graph over x [6, 8] and a pool of matrices.
fn generate(seed: u64) -> Function {
    let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let mut f = Function::new("random");
    let x = f.add_input("x", InputKind::Data, t(&[6, 8]), None);
    let mats: Vec<ValueId> = (0..4)
        .map(|i| f.add_input(format!("w{i}"), InputKind::Weight, t(&[8, 8]), None))
        .collect();
    let a = f.add_input("a", InputKind::Param, t(&[2, 8]), None);
    let b = f.add_input("b", InputKind::Param, t(&[8, 2]), None);
    let mut e = Emitter::new(&mut f);
    let mut pool: Vec<ValueId> = vec![x];
    for _ in 0..8 {
        let v = pool[rng.below(pool.len())];
        let w = mats[rng.below(mats.len())];
        let new = match rng.below(7) {
            // v·Wᵀ written with an explicit transpose.
            0 => {
                let wt = e.transpose(w, vec![1, 0]).expect("Wᵀ");
                e.matmul(v, wt, false, false).expect("v·Wᵀ")
            }
            // A LoRA-style path, scaled.
            1 => {
                let h = e.matmul(v, a, false, true).expect("v·Aᵀ");
                let h = e.matmul(h, b, false, true).expect("·Bᵀ");
                e.scale(h, 0.5).expect("·s")
            }
            // Two products of one input, summed.
            2 => {
                let w2 = mats[rng.below(mats.len())];
                let p = e.matmul(v, w, false, true).expect("v·Wᵀ");
                let q = e.matmul(v, w2, false, true).expect("v·W₂ᵀ");
                e.add(p, q).expect("sum")
            }
            // Reshape round trip and double transpose.
            3 => {
                let r = e.reshape(v, &[2, 24]).expect("reshape");
                let r = e.reshape(r, &[6, 8]).expect("reshape back");
                let tt = e.transpose(r, vec![1, 0]).expect("T");
                e.transpose(tt, vec![1, 0]).expect("TT")
            }
            4 => e.un(UnaryOp::Tanh, v).expect("tanh"),
            5 => {
                let s = e.op(Op::StopGrad, &[v]).expect("stop_grad");
                e.mul(s, v).expect("mul")
            }
            _ => {
                let k = e.constant(1.0, t(&[6, 8])).expect("one");
                e.mul(v, k).expect("·1")
            }
        };
        pool.push(new);
    }
    let n = pool.len();
    for (i, v) in pool[n - 3..].iter().enumerate() {
        f.add_output(format!("y{i}"), *v);
    }
    f
}

#[test]
fn random_graphs_keep_their_meaning() {
    let mut fired = std::collections::BTreeSet::new();
    for seed in 1..=40u64 {
        let f = generate(seed);
        graft_ir::verify_function(&f, 0).expect("generated graph verifies");
        let inputs = common::random_inputs(&f, 2, seed);
        let before = graft_interp::run(&f, &inputs).expect("before");
        for mode in [Mode::Train, Mode::Merge] {
            let opt = optimize(
                &f,
                &Options {
                    mode,
                    ..Options::default()
                },
            )
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            fired.extend(opt.run.applied.keys().cloned());
            let after = graft_interp::run(&opt.func, &inputs)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let (err, name) = common::worst_rel_err(&after, &before);
            assert!(
                err <= 1e-4,
                "seed {seed} ({mode:?}): `{name}` changed by {err:e}\n{}",
                graft_ir::print_function(&f)
            );
        }
    }
    for rule in [
        "matmul-fold-transpose-b",
        "lowrank-reassociate",
        "scale-into-matmul-a",
        "scale-out-of-matmul-a",
        "scale-out-of-matmul-b",
        "transpose-of-transpose",
        "reshape-of-reshape",
        "matmul-distribute",
        "drop-stop-grad",
        "mul-by-one",
    ] {
        assert!(
            fired.contains(rule),
            "the generator never exercised {rule}: {fired:?}"
        );
    }
}
