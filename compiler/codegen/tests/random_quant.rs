//! Random draws, dropout and NF4 (de)quantization compiled against the interpreter (all
//! exact: the counter-based generator and the NF4 tables give identical bits), plus the
//! run-time errors and input checks of `CompiledFunction::run`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{check, random_inputs};
use graft_codegen::{CodegenError, compile};
use graft_interp::Tensor;
use graft_ir::{
    BinaryOp, DType, Distribution, Function, InputKind, Op, QuantFormat, QuantPart, TensorType,
    UnaryOp,
};
use std::collections::HashMap;

fn ty(dt: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dt, shape.to_vec())
}

fn seeded(seed: i64) -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    m.insert("seed".to_string(), Tensor::scalar_i64(seed));
    m
}

#[test]
fn random_draws_are_bit_identical() {
    let mut f = Function::new("rand");
    let s = f.add_input(
        "seed",
        InputKind::Data,
        TensorType::scalar(DType::I64),
        None,
    );
    let dists = [
        (Distribution::Uniform { lo: -0.5, hi: 2.0 }, DType::F32),
        (Distribution::Uniform { lo: 0.0, hi: 1.0 }, DType::BF16),
        (Distribution::Uniform { lo: -3.0, hi: 3.0 }, DType::F64),
        (
            Distribution::Normal {
                mean: 0.0,
                std: 0.02,
            },
            DType::F32,
        ),
        (
            Distribution::Normal {
                mean: 1.0,
                std: 2.0,
            },
            DType::F16,
        ),
        (Distribution::Int { lo: -5, hi: 17 }, DType::I64),
        (Distribution::Int { lo: 0, hi: 256 }, DType::U8),
        (
            Distribution::Int {
                lo: i64::MIN,
                hi: i64::MAX,
            },
            DType::I32,
        ),
        (Distribution::Int { lo: -3, hi: 40 }, DType::U4),
    ];
    for (i, (dist, dt)) in dists.into_iter().enumerate() {
        let r = f
            .add_typed(
                Op::Random {
                    dist,
                    stream: 7 + i as u64,
                },
                &[s],
                Some(ty(dt, &[5, 33])),
                None,
            )
            .unwrap();
        f.add_output(format!("r{i}"), r);
    }
    for seed in [0, 1, -3, i64::MAX] {
        check(&f, &seeded(seed), 0.0);
    }
}

#[test]
fn dropout_masks_are_bit_identical() {
    for dt in [DType::F32, DType::F64, DType::BF16] {
        let mut f = Function::new("drop");
        let x = f.add_input("x", InputKind::Data, ty(dt, &[4, 50]), None);
        let s = f.add_input(
            "seed",
            InputKind::Data,
            TensorType::scalar(DType::I64),
            None,
        );
        for (i, p) in [0.0, 0.1, 0.5, 0.9].into_iter().enumerate() {
            let d = f
                .add(
                    Op::Dropout {
                        p,
                        stream: i as u64,
                    },
                    &[x, s],
                    None,
                )
                .unwrap();
            // Fused into a consumer too (an exact one: the masks must match bit for bit).
            let e = f.add(Op::Unary(UnaryOp::Neg), &[d], None).unwrap();
            f.add_output(format!("d{i}"), e);
        }
        let mut inputs = random_inputs(&f, 3, -2.0, 2.0);
        inputs.insert("seed".into(), Tensor::scalar_i64(42));
        check(&f, &inputs, 0.0);
    }
}

#[test]
fn nf4_dequantize_plain_and_nested_and_quantize_on_the_host() {
    let shape = [8, 70];
    let n: usize = shape.iter().product();
    let mut rng = common::Rng(5);
    let w: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let block = 64;
    let blocks = n.div_ceil(block);

    // Plain absmax: quantize in the graph (host step), dequantize in a kernel.
    let mut f = Function::new("nf4");
    let x = f.add_input("w", InputKind::Data, ty(DType::F32, &shape), None);
    let q = f
        .add(
            Op::Quantize {
                format: QuantFormat::Nf4,
                block,
                part: QuantPart::Codes,
            },
            &[x],
            None,
        )
        .unwrap();
    let a = f
        .add(
            Op::Quantize {
                format: QuantFormat::Nf4,
                block,
                part: QuantPart::Absmax,
            },
            &[x],
            None,
        )
        .unwrap();
    for dt in [DType::F32, DType::BF16, DType::F64] {
        let d = f
            .add_typed(
                Op::Dequantize {
                    format: QuantFormat::Nf4,
                    block,
                    nested: 0,
                },
                &[q, a],
                Some(ty(dt, &shape)),
                None,
            )
            .unwrap();
        f.add_output(format!("w_{dt}"), d);
    }
    f.add_output("codes", q);
    let mut inputs = HashMap::new();
    inputs.insert(
        "w".to_string(),
        Tensor::f32(shape.to_vec(), w.clone()).unwrap(),
    );
    check(&f, &inputs, 0.0);

    // Nested absmax, as the runtime stores it, fused into a matmul operand.
    let (packed, nested) = graft_quant::quantize_nf4_nested(&w, block).unwrap();
    let codes: Vec<u8> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                packed[i / 2] >> 4
            } else {
                packed[i / 2] & 15
            }
        })
        .collect();
    let n2 = nested.absmax2.len();
    let mut f = Function::new("nested");
    let c = f.add_input("c", InputKind::Weight, ty(DType::U4, &shape), None);
    let q = f.add_input("q", InputKind::Weight, ty(DType::U8, &[blocks]), None);
    let a2 = f.add_input("a2", InputKind::Weight, ty(DType::F32, &[n2]), None);
    let off = f.add_input(
        "off",
        InputKind::Weight,
        TensorType::scalar(DType::F32),
        None,
    );
    let d = f
        .add_typed(
            Op::Dequantize {
                format: QuantFormat::Nf4,
                block,
                nested: 256,
            },
            &[c, q, a2, off],
            Some(ty(DType::F32, &shape)),
            None,
        )
        .unwrap();
    let scaled = f.add(Op::Binary(BinaryOp::Mul), &[d, d], None).unwrap();
    f.add_output("w", d);
    f.add_output("w2", scaled);
    let mut inputs = HashMap::new();
    inputs.insert("c".to_string(), Tensor::u4(shape.to_vec(), codes).unwrap());
    inputs.insert(
        "q".to_string(),
        Tensor::u8(vec![blocks], nested.codes).unwrap(),
    );
    inputs.insert(
        "a2".to_string(),
        Tensor::f32(vec![n2], nested.absmax2).unwrap(),
    );
    inputs.insert(
        "off".to_string(),
        Tensor::f32(Vec::<usize>::new(), vec![nested.offset]).unwrap(),
    );
    check(&f, &inputs, 0.0);
}

fn gather_fn() -> Function {
    let mut f = Function::new("g");
    let t = f.add_input("t", InputKind::Data, ty(DType::F32, &[4, 3]), None);
    let i = f.add_input("i", InputKind::Data, ty(DType::I64, &[5]), None);
    let g = f.add(Op::Gather { axis: 0 }, &[t, i], None).unwrap();
    f.add_output("g", g);
    f
}

#[test]
fn out_of_range_gather_is_an_error_like_the_interpreter() {
    let f = gather_fn();
    let compiled = compile(&f).unwrap();
    for bad in [-1i64, 4, 1000] {
        let mut inputs = random_inputs(&f, 1, -1.0, 1.0);
        inputs.insert(
            "i".into(),
            Tensor::i64(vec![5], vec![0, 1, bad, 2, 3]).unwrap(),
        );
        let e = compiled.run(&inputs).unwrap_err();
        assert!(
            matches!(e, CodegenError::IndexOutOfRange { node: 2, value, extent: 4 } if value == bad),
            "{e}"
        );
        assert!(graft_interp::run(&f, &inputs).is_err());
    }
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let mut f = Function::new("div");
    let x = f.add_input("x", InputKind::Data, ty(DType::I32, &[3]), None);
    let y = f.add_input("y", InputKind::Data, ty(DType::I32, &[3]), None);
    let d = f.add(Op::Binary(BinaryOp::Div), &[x, y], None).unwrap();
    f.add_output("d", d);
    let compiled = compile(&f).unwrap();
    let mut inputs = HashMap::new();
    inputs.insert(
        "x".to_string(),
        Tensor::i32(vec![3], vec![1, 2, 3]).unwrap(),
    );
    inputs.insert(
        "y".to_string(),
        Tensor::i32(vec![3], vec![1, 0, 3]).unwrap(),
    );
    let e = compiled.run(&inputs).unwrap_err();
    assert!(matches!(e, CodegenError::DivisionByZero { node: 2 }), "{e}");
}

#[test]
fn inputs_are_checked_by_name_and_type() {
    let f = gather_fn();
    let compiled = compile(&f).unwrap();
    let mut inputs = random_inputs(&f, 1, 0.0, 3.0);
    inputs.remove("t");
    assert!(matches!(
        compiled.run(&inputs).unwrap_err(),
        CodegenError::MissingInput { name } if name == "t"
    ));
    inputs.insert("t".into(), Tensor::f32(vec![3, 4], vec![0.0; 12]).unwrap());
    assert!(matches!(
        compiled.run(&inputs).unwrap_err(),
        CodegenError::InputTypeMismatch { .. }
    ));
    // Extra inputs are ignored; outputs that are inputs come back unchanged.
    let mut g = Function::new("id");
    let x = g.add_input("x", InputKind::Data, ty(DType::Bool, &[3]), None);
    let r = g
        .add_typed(Op::Reshape, &[x], Some(ty(DType::Bool, &[1, 3])), None)
        .unwrap();
    g.add_output("x", x);
    g.add_output("r", r);
    let mut inputs = HashMap::new();
    inputs.insert(
        "x".to_string(),
        Tensor::bool(vec![3], vec![true, false, true]).unwrap(),
    );
    inputs.insert("unused".to_string(), Tensor::scalar_f32(1.0));
    check(&g, &inputs, 0.0);
}

#[test]
fn invalid_functions_are_rejected_before_lowering() {
    let mut f = Function::new("bad");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[2]), None);
    f.nodes.push(graft_ir::Node {
        op: Op::Unary(UnaryOp::Exp),
        args: vec![graft_ir::ValueId(7)],
        ty: ty(DType::F32, &[2]),
        loc: None,
    });
    f.add_output("x", x);
    assert!(matches!(compile(&f), Err(CodegenError::Invalid(_))));
    // An op the IR does not define on a dtype is reported, not lowered.
    let mut g = Function::new("undefined");
    let b = g.add_input("b", InputKind::Data, ty(DType::U8, &[2]), None);
    g.nodes.push(graft_ir::Node {
        op: Op::Binary(BinaryOp::Add),
        args: vec![b, b],
        ty: ty(DType::U8, &[2]),
        loc: None,
    });
    g.add_output("s", graft_ir::ValueId(1));
    let e = compile(&g).err().expect("u8 add is undefined");
    assert!(
        matches!(e, CodegenError::Unsupported { node: 1, .. }),
        "{e}"
    );
}

#[test]
fn compiled_functions_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<graft_codegen::CompiledFunction>();
    send_sync::<graft_codegen::Gemm>();
    // Concurrent runs of one compiled function (each takes what the buffer pool holds).
    let mut f = Function::new("par");
    let x = f.add_input("x", InputKind::Data, ty(DType::F32, &[64, 64]), None);
    let y = f
        .add(
            Op::MatMul {
                ta: false,
                tb: true,
            },
            &[x, x],
            None,
        )
        .unwrap();
    let z = f.add(Op::Unary(UnaryOp::Tanh), &[y], None).unwrap();
    f.add_output("z", z);
    let compiled = compile(&f).unwrap();
    let inputs = random_inputs(&f, 9, -1.0, 1.0);
    let want = compiled.run(&inputs).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(compiled.run(&inputs).unwrap(), want);
                }
            });
        }
    });
    compiled.release_buffers();
    assert_eq!(compiled.run(&inputs).unwrap(), want);
}

#[test]
fn fused_quantized_matmul_matches_dequantize_then_matmul() {
    // `qmatmul` (the optimizer's fused `matmul(x, dequantize(..))`), plain and nested absmax,
    // with the weight read transposed or not, in f32 (packed GEMM) and bf16 (scalar loop).
    let (out_f, in_f): (usize, usize) = (48, 70);
    let n = out_f * in_f;
    let mut rng = common::Rng(17);
    let w: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let block = 64;
    let blocks = n.div_ceil(block);
    let (packed, absmax) = graft_quant::quantize_nf4(&w, block).unwrap();
    let (npacked, nested) = graft_quant::quantize_nf4_nested(&w, block).unwrap();
    let unpack = |p: &[u8]| -> Vec<u8> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    p[i / 2] >> 4
                } else {
                    p[i / 2] & 15
                }
            })
            .collect()
    };
    for dt in [DType::F32, DType::BF16] {
        for nest in [0usize, 256] {
            for (tb, wshape) in [(true, [out_f, in_f]), (false, [in_f, out_f])] {
                let mut f = Function::new("qmm");
                let x = f.add_input("x", InputKind::Data, ty(dt, &[2, 9, in_f]), None);
                let c = f.add_input("c", InputKind::Weight, ty(DType::U4, &wshape), None);
                let mut args = vec![x, c];
                let mut inputs = random_inputs(&f, 3, -1.0, 1.0);
                if nest == 0 {
                    args.push(f.add_input("a", InputKind::Weight, ty(DType::F32, &[blocks]), None));
                    inputs.insert(
                        "a".into(),
                        Tensor::f32(vec![blocks], absmax.clone()).unwrap(),
                    );
                    inputs.insert(
                        "c".into(),
                        Tensor::u4(wshape.to_vec(), unpack(&packed)).unwrap(),
                    );
                } else {
                    let n2 = nested.absmax2.len();
                    args.push(f.add_input("q", InputKind::Weight, ty(DType::U8, &[blocks]), None));
                    args.push(f.add_input("a2", InputKind::Weight, ty(DType::F32, &[n2]), None));
                    let off = TensorType::scalar(DType::F32);
                    args.push(f.add_input("off", InputKind::Weight, off, None));
                    inputs.insert(
                        "c".into(),
                        Tensor::u4(wshape.to_vec(), unpack(&npacked)).unwrap(),
                    );
                    inputs.insert(
                        "q".into(),
                        Tensor::u8(vec![blocks], nested.codes.clone()).unwrap(),
                    );
                    inputs.insert(
                        "a2".into(),
                        Tensor::f32(vec![n2], nested.absmax2.clone()).unwrap(),
                    );
                    inputs.insert(
                        "off".into(),
                        Tensor::f32(Vec::<usize>::new(), vec![nested.offset]).unwrap(),
                    );
                }
                let op = Op::QuantMatMul {
                    format: QuantFormat::Nf4,
                    block,
                    nested: nest,
                    ta: false,
                    tb,
                };
                let y = f.add(op, &args, None).unwrap();
                f.add_output("y", y);
                if dt == DType::F32 {
                    common::check_norm(&f, &inputs, 1e-5);
                } else {
                    check(&f, &inputs, 0.0);
                }
            }
        }
    }
}

/// PyTorch's generator (`random_torch_uniform`, `random_torch_randperm`) is sequential:
/// compiled code refuses it with the reason, since only `@init` uses it and `@init` runs on
/// the interpreter.
#[test]
fn pytorchs_sequential_generator_is_refused_with_its_reason() {
    for (dist, dtype) in [
        (Distribution::TorchUniform { lo: -1.0, hi: 1.0 }, DType::F32),
        (Distribution::TorchRandperm { n: 100 }, DType::I64),
    ] {
        let mut f = Function::new("init");
        let s = f.add_input(
            "seed",
            InputKind::Data,
            TensorType::scalar(DType::I64),
            None,
        );
        let shape: &[usize] = if dtype == DType::I64 { &[32] } else { &[4, 8] };
        let r = f
            .add_typed(
                Op::Random { dist, stream: 0 },
                &[s],
                Some(ty(dtype, shape)),
                None,
            )
            .unwrap();
        f.add_output("r", r);
        match compile(&f) {
            Err(e) => assert!(e.to_string().contains("sequential"), "{dist:?}: {e}"),
            Ok(_) => panic!("compiled a sequential generator: {dist:?}"),
        }
    }
}
