//! A clear exit instead of a crash when a memory-mapped file shrinks under graft.
//!
//! graft reads weights files (and cached kernels) through memory maps. If another process
//! truncates such a file during a run, touching a page past the new end raises SIGBUS, which
//! would kill the process with no word of why. [`guard`] installs a SIGBUS handler that
//! writes one line naming the files mapped for reading and exits with status 75
//! (`EX_TEMPFAIL`: run again once the file is whole). Checkpoints are written atomically, so
//! the last one is intact and the run resumes from it.
#![allow(unsafe_code)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The message the handler writes: a leaked `&[u8]`, replaced (never freed, so the handler
/// can always read it) when another file is mapped; one pointer, so the handler never sees
/// one message's address with another's length.
static MESSAGE: AtomicPtr<&'static [u8]> = AtomicPtr::new(std::ptr::null_mut());
/// The files named in the message.
static FILES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The exit status after a SIGBUS on a mapped file.
pub const EXIT_STATUS: i32 = 75;

/// Names `path` as mapped for reading and installs the handler (once per process).
pub fn guard(path: &std::path::Path) {
    let Ok(mut files) = FILES.lock() else {
        return;
    };
    let name = path.display().to_string();
    if !files.contains(&name) {
        files.push(name);
    }
    let text = format!(
        "error: a memory-mapped file changed size while graft was reading it (truncated or \
         rewritten by another process?); mapped for reading: {}. The run stopped; checkpoints \
         already written are intact.\n",
        files.join(", ")
    );
    let bytes: &'static [u8] = Box::leak(text.into_bytes().into_boxed_slice());
    MESSAGE.store(Box::into_raw(Box::new(bytes)), Ordering::SeqCst);
    install();
}

#[cfg(unix)]
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `on_sigbus` only calls async-signal-safe functions (write, _exit) on memory
        // that is never freed; the sigaction struct is zeroed and then filled as POSIX says.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

#[cfg(not(unix))]
fn install() {}

#[cfg(unix)]
extern "C" fn on_sigbus(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let message = MESSAGE.load(Ordering::SeqCst);
    // SAFETY: `message` is null or a leaked, never-freed `&'static [u8]`; write(2) and
    // _exit(2) are async-signal-safe.
    unsafe {
        if let Some(bytes) = message.as_ref() {
            libc::write(2, bytes.as_ptr().cast(), bytes.len());
        }
        libc::_exit(EXIT_STATUS);
    }
}
