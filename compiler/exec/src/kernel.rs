//! Calling a kernel: MLIR's packed calling convention (`_mlir_<name>(void **args)`, one
//! pointer per argument), and the error codes a kernel reports in its status buffer.
#![allow(unsafe_code)]

use std::ffi::c_void;

/// Error codes a kernel writes into its status buffer (`err[0]`): a `gather` index out of
/// range.
pub const ERR_GATHER: i64 = 1;
/// An integer division by zero.
pub const ERR_DIV_ZERO: i64 = 2;

/// Calls a kernel's packed wrapper on range `[lo, hi)` with buffer addresses `bufs` (the
/// arguments then the output) and, when `err` is given, a 4-element status buffer.
///
/// # Safety
/// The caller guarantees (and [`crate::exec`] maintains) that `wrapper` is the packed
/// wrapper of a kernel whose memref parameters match `bufs` one to one, that every buffer
/// holds at least as many elements of the right type as the kernel's static memref type,
/// that the output buffer is not read or written by anyone else during the call except other
/// calls of the same kernel on disjoint ranges, and that the code holding `wrapper` is alive.
pub unsafe fn call_kernel(
    wrapper: usize,
    lo: usize,
    hi: usize,
    bufs: &[usize],
    err: Option<&mut [i64; 4]>,
) {
    let mut lo = lo as i64;
    let mut hi = hi as i64;
    let mut ptrs: Vec<*mut c_void> = bufs.iter().map(|&a| a as *mut c_void).collect();
    let mut errp: *mut c_void = match err {
        Some(e) => e.as_mut_ptr().cast(),
        None => std::ptr::null_mut(),
    };
    let mut packed: Vec<*mut c_void> = Vec::with_capacity(ptrs.len() + 3);
    packed.push((&mut lo as *mut i64).cast());
    packed.push((&mut hi as *mut i64).cast());
    for p in ptrs.iter_mut() {
        packed.push((p as *mut *mut c_void).cast());
    }
    if !errp.is_null() {
        packed.push((&mut errp as *mut *mut c_void).cast());
    }
    // SAFETY: see the function's contract. The packed wrapper reads each argument through
    // the pointers in `packed`, all of which point at live locals of this frame.
    unsafe {
        let f: extern "C" fn(*mut *mut c_void) = std::mem::transmute(wrapper as *const ());
        f(packed.as_mut_ptr());
    }
}
