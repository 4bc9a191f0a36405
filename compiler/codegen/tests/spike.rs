#![allow(unsafe_code, missing_docs)]
use melior::Context;
use melior::dialect::DialectRegistry;
use melior::ir::Module;
use melior::ir::operation::OperationLike;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};

const SRC: &str = r#"
module {
  func.func @k(%lo: index, %hi: index, %a: memref<4x8xf32>, %b: memref<4x8xf32>, %c: memref<4x8xf32>) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    scf.for %i = %lo to %hi step %c1 {
      %va = vector.load %a[%i, %c0] : memref<4x8xf32>, vector<8xf32>
      %vb = vector.load %b[%i, %c0] : memref<4x8xf32>, vector<8xf32>
      %vc = vector.fma %va, %vb, %vb : vector<8xf32>
      vector.store %vc, %c[%i, %c0] : memref<4x8xf32>, vector<8xf32>
      %s = memref.load %a[%i, %c1] : memref<4x8xf32>
      %t = math.tanh %s : f32
      %bf = arith.truncf %t : f32 to bf16
      %h = arith.truncf %t : f32 to f16
      %he = arith.extf %h : f16 to f32
      %bfe = arith.extf %bf : bf16 to f32
      %sum = arith.addf %he, %bfe : f32
      memref.store %sum, %c[%i, %c1] : memref<4x8xf32>
    }
    return
  }
}
"#;

#[test]
fn spike() {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    register_all_passes();
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    register_all_llvm_translations(&context);
    let mut module = Module::parse(&context, SRC).expect("parse");
    assert!(module.as_operation().verify());
    let pm = PassManager::new(&context);
    parse_pass_pipeline(pm.as_operation_pass_manager(), "builtin.module(canonicalize,cse,convert-scf-to-cf,convert-math-to-libm,convert-math-to-llvm,arith-expand{include-bf16=true},convert-vector-to-llvm,expand-strided-metadata,lower-affine,finalize-memref-to-llvm,convert-arith-to-llvm,convert-index-to-llvm,convert-func-to-llvm{use-bare-ptr-memref-call-conv=1},convert-cf-to-llvm,reconcile-unrealized-casts)").expect("pipeline");
    pm.run(&mut module).expect("passes");
    println!("{}", module.as_operation());
    unsafe {
        let s = mlir_sys::mlirTranslateModuleToLLVMIRToString(module.as_operation().to_raw());
        println!("{}", std::ffi::CStr::from_ptr(s).to_string_lossy());
    }
    let engine = unsafe {
        mlir_sys::mlirExecutionEngineCreate(module.to_raw(), 3, 0, std::ptr::null(), false, false)
    };
    assert!(!engine.ptr.is_null());
    let name = "k";
    let f = unsafe {
        mlir_sys::mlirExecutionEngineLookupPacked(
            engine,
            mlir_sys::MlirStringRef {
                data: name.as_ptr() as _,
                length: name.len(),
            },
        )
    };
    assert!(!f.is_null());
    let fp: extern "C" fn(*mut *mut std::ffi::c_void) = unsafe { std::mem::transmute(f) };
    let a: Vec<f32> = (0..32).map(|x| x as f32 * 0.1).collect();
    let b: Vec<f32> = (0..32).map(|x| 1.0 + x as f32).collect();
    let mut c = vec![0f32; 32];
    let mut lo: i64 = 0;
    let mut hi: i64 = 4;
    let mut pa = a.as_ptr() as *mut f32;
    let mut pb = b.as_ptr() as *mut f32;
    let mut pc = c.as_mut_ptr();
    let mut args: Vec<*mut std::ffi::c_void> = vec![
        &mut lo as *mut i64 as _,
        &mut hi as *mut i64 as _,
        &mut pa as *mut *mut f32 as _,
        &mut pb as *mut *mut f32 as _,
        &mut pc as *mut *mut f32 as _,
    ];
    fp(args.as_mut_ptr());
    println!("{c:?}");
    assert_eq!(c[0], a[0] * b[0] + b[0]);
    unsafe { mlir_sys::mlirExecutionEngineDestroy(engine) };
}
