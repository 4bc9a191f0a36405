//! The IR text form round-trips, and the verifier rejects broken graphs with errors that name
//! the op and the shapes.

use graft_ir::*;

const SAMPLE: &str = r#"file 0 = "spec.graft"

func @forward {
  %0: f32[2, 8, 64] = input{name = "x", kind = data} loc(0:3:9)
  %1: f32[4, 64] = input{name = "layer.lora_A.weight", kind = param}
  %2: u4[64, 64] = input{name = "layer.weight", kind = weight}
  %3: f32[64] = input{name = "layer.weight.absmax", kind = weight}
  %4: f32[64, 64] = dequantize{format = nf4, block = 64}(%2, %3)
  %5: f32[2, 8, 64] = matmul{tb = true}(%0, %4) loc(0:4:5)
  %6: f32[2, 8, 4] = matmul{tb = true}(%0, %1)
  %7: f32[] = constant{value = 0.1}
  %8: f32[2, 8, 64] = broadcast(%7)
  %9: f32[2, 8, 64] = mul(%5, %8)
  %10: f32[2, 8] = reduce_sum{axes = [2]}(%9)
  %11: f32[8, 2] = transpose{perm = [1, 0]}(%10)
  %12: f32[16] = reshape(%11)
  %13: f32[2, 8, 68] = concat{axis = 2}(%5, %6)
  %14: f32[2, 8, 3] = slice{axis = 2, start = 1, end = 4}(%13)
  %15: bool[2, 8, 3] = gt(%14, %14)
  %16: f32[2, 8, 3] = select(%15, %14, %14)
  %17: f32[2, 8, 3] = softmax{axis = 2}(%16)
  %18: bf16[2, 8, 3] = cast(%17)
  %19: f32[] = constant{value = -inf}
  %20: i64[] = input{name = "seed", kind = data}
  %21: f32[3, 3] = random_uniform{lo = -0.5, hi = 0.5, stream = 7}(%20)
  %22: f32[2, 8, 3] = dropout{p = 0.1, stream = 3}(%17, %20)
  return y = %18, loss = %12, z = %21, d = %22
}
"#;

#[test]
fn text_form_round_trips() -> Result<(), Box<dyn std::error::Error>> {
    let m = parse_module(SAMPLE)?;
    verify_module(&m)?;
    assert_eq!(print_module(&m), SAMPLE);
    assert_eq!(parse_module(&print_module(&m))?, m);
    Ok(())
}

#[test]
fn floats_keep_their_bits() -> Result<(), Box<dyn std::error::Error>> {
    for x in [
        0.1,
        -0.12499999999999999,
        1e-30,
        6.02214076e23,
        f64::MIN_POSITIVE,
        1.0 / 3.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        let text = format!(
            "func @f {{\n  %0: f32[] = constant{{value = {}}}\n  return a = %0\n}}\n",
            attr::fmt_float(x)
        );
        let m = parse_module(&text)?;
        assert_eq!(
            m.functions[0].nodes[0].op,
            Op::Constant { value: x },
            "{text}"
        );
        assert_eq!(print_module(&m), text);
    }
    Ok(())
}

fn verify_err(body: &str) -> String {
    let text = format!("func @f {{\n{body}\n}}\n");
    match parse_module(&text) {
        Err(e) => format!("parse: {e}"),
        Ok(m) => match verify_module(&m) {
            Ok(()) => "verified".into(),
            Err(e) => e.to_string(),
        },
    }
}

#[test]
fn the_verifier_names_the_op_and_shapes() {
    let e = verify_err(
        "  %0: f32[2, 3] = input{name = \"a\", kind = data}\n  %1: f32[4, 5] = input{name = \"b\", kind = data}\n  %2: f32[2, 5] = matmul(%0, %1)\n  return c = %2",
    );
    assert!(
        e.contains("`matmul`") && e.contains("3 vs 4") && e.contains("f32[2, 3], f32[4, 5]"),
        "{e}"
    );
    let e = verify_err(
        "  %0: f32[2, 3] = input{name = \"a\", kind = data}\n  %1: f32[2, 4] = exp(%0)\n  return c = %1",
    );
    assert!(
        e.contains("has type f32[2, 4] but its operands give f32[2, 3]"),
        "{e}"
    );
    let e = verify_err(
        "  %0: f32[2] = exp(%1)\n  %1: f32[2] = input{name = \"a\", kind = data}\n  return c = %0",
    );
    assert!(e.contains("not defined before it is used"), "{e}");
    let e = verify_err(
        "  %0: f32[2] = input{name = \"a\", kind = data}\n  %1: f32[2] = input{name = \"a\", kind = data}\n  return c = %0",
    );
    assert!(e.contains("duplicate input `a`"), "{e}");
    let e = verify_err("  %0: f32[2] = input{name = \"a\", kind = data}\n  return c = %5");
    assert!(e.contains("does not exist"), "{e}");
    let e =
        verify_err("  %0: f32[2] = input{name = \"a\", kind = data} loc(3:1:1)\n  return c = %0");
    assert!(e.contains("not declared"), "{e}");
    let e = verify_err(
        "  %0: f32[2, 3] = input{name = \"a\", kind = data}\n  %1: f32[7] = reshape(%0)\n  return c = %1",
    );
    assert!(e.contains("cannot reshape"), "{e}");
    let e = verify_err(
        "  %0: f32[2, 3] = input{name = \"a\", kind = data}\n  %1: f32[3, 3] = broadcast(%0)\n  return c = %1",
    );
    assert!(e.contains("cannot broadcast"), "{e}");
}

#[test]
fn parse_errors_have_positions() {
    for (body, want) in [
        ("  %0: f32[2] = frobnicate(%1)", "unknown op `frobnicate`"),
        ("  %0: q7[2] = exp(%1)", "unknown dtype `q7`"),
        (
            "  %1: f32[2] = input{name = \"a\", kind = data}",
            "expected %0",
        ),
        (
            "  %0: f32[2] = input{name = \"a\", kind = data, color = 3}",
            "unexpected attribute `color`",
        ),
        (
            "  %0: f32[2] = input{name = \"a\"}",
            "missing attribute `kind`",
        ),
        (
            "  %0: f32[2] = input{name = \"a, kind = data}",
            "unterminated string",
        ),
    ] {
        let e = verify_err(body);
        assert!(
            e.starts_with("parse: 2:") && e.contains(want),
            "{body}: {e}"
        );
    }
}

#[test]
fn every_dtype_and_op_name_round_trips() -> Result<(), Box<dyn std::error::Error>> {
    for d in DType::ALL {
        assert_eq!(DType::from_name(d.name()), Some(d));
    }
    for u in UnaryOp::ALL {
        assert_eq!(Op::from_parts(u.name(), Attrs::default())?, Op::Unary(u));
    }
    for b in BinaryOp::ALL {
        assert_eq!(Op::from_parts(b.name(), Attrs::default())?, Op::Binary(b));
    }
    Ok(())
}

#[test]
fn matmul_broadcasts_a_shared_matrix_over_batches() -> Result<(), TypeError> {
    let a = TensorType::new(DType::F32, vec![2, 8, 64]);
    let w = TensorType::new(DType::F32, vec![32, 64]);
    let t = Op::MatMul {
        ta: false,
        tb: true,
    }
    .result_type(&[&a, &w], None)?;
    assert_eq!(t.shape, vec![2, 8, 32]);
    let t = Op::MatMul {
        ta: true,
        tb: false,
    }
    .result_type(
        &[
            &TensorType::new(DType::F32, vec![3, 5]),
            &TensorType::new(DType::F32, vec![3, 7]),
        ],
        None,
    )?;
    assert_eq!(t.shape, vec![5, 7]);
    Ok(())
}

#[test]
fn nested_dequantize_checks_its_scale_operands() {
    let codes = TensorType::new(DType::U4, vec![16, 64]);
    let op = Op::Dequantize {
        format: QuantFormat::Nf4,
        block: 64,
        nested: 256,
    };
    let ok = op.result_type(
        &[
            &codes,
            &TensorType::new(DType::U8, vec![16]),
            &TensorType::new(DType::F32, vec![1]),
            &TensorType::scalar(DType::F32),
        ],
        Some(&TensorType::new(DType::F32, vec![16, 64])),
    );
    assert!(ok.is_ok(), "{ok:?}");
    let bad = op.result_type(
        &[&codes, &TensorType::new(DType::F32, vec![16])],
        Some(&TensorType::new(DType::F32, vec![16, 64])),
    );
    assert!(bad.is_err());
    assert_eq!(TensorType::new(DType::U4, vec![3, 5]).size_bytes(), 8);
}

#[test]
fn stream_ids_use_all_64_bits() -> Result<(), Box<dyn std::error::Error>> {
    let mut f = Function::new("f");
    let seed = f.add_input(
        "seed",
        InputKind::Data,
        TensorType::scalar(DType::I64),
        None,
    );
    let r = f.add_typed(
        Op::Random {
            dist: Distribution::Uniform { lo: 0.0, hi: 1.0 },
            stream: u64::MAX - 5,
        },
        &[seed],
        Some(TensorType::new(DType::F32, vec![2])),
        None,
    )?;
    f.add_output("r", r);
    let t = f.add_typed(
        Op::Random {
            dist: Distribution::TorchUniform { lo: -0.5, hi: 0.5 },
            stream: u64::MAX - 1,
        },
        &[seed],
        Some(TensorType::new(DType::F32, vec![3])),
        None,
    )?;
    f.add_output("t", t);
    let p = f.add_typed(
        Op::Random {
            dist: Distribution::TorchRandperm { n: 10 },
            stream: 7,
        },
        &[seed],
        Some(TensorType::new(DType::I64, vec![5])),
        None,
    )?;
    f.add_output("p", p);
    let m = Module {
        files: vec![],
        functions: vec![f],
    };
    let text = print_module(&m);
    assert_eq!(parse_module(&text)?, m, "{text}");
    Ok(())
}

/// Strings (file names, input names) holding control and other non-printable characters
/// print with `\u{…}` escapes, which parse back (found by the `ir_text` fuzz target: a file
/// named "\u{11}" printed to text that did not parse). A malformed `\u` escape is an error
/// at its position.
#[test]
fn escaped_characters_round_trip() -> Result<(), Box<dyn std::error::Error>> {
    let mut f = Function::new("f");
    let x = f.add_input(
        "x\u{11}\u{7f}\u{200b}\u{10ffff}\"\\\n\t",
        InputKind::Data,
        TensorType::scalar(DType::F32),
        None,
    );
    f.add_output("y", x);
    let m = Module {
        files: vec!["\u{11}dir\u{0}/spec\r.graft".into()],
        functions: vec![f],
    };
    let text = print_module(&m);
    assert!(text.contains("\\u{11}"), "{text}");
    assert_eq!(parse_module(&text)?, m, "{text}");
    for bad in [
        r#"file 0 = "\u{zz}""#,
        r#"file 0 = "\u{110000}""#,
        r#"file 0 = "\u{d800}""#,
        r#"file 0 = "\u{}""#,
        r#"file 0 = "\u{1234567}""#,
        r#"file 0 = "\u{+11}""#,
        r#"file 0 = "\u11""#,
        r#"file 0 = "\u{11""#,
    ] {
        let e = parse_module(bad).err().map(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_some_and(|e| e.contains("1:") && e.contains("\\u")),
            "{bad}: {e:?}"
        );
    }
    Ok(())
}
