//! SIGINT, SIGTERM and SIGHUP during a training run: the first sets a flag the loop reads
//! after each step (finish it, save, exit); a second exits at once with status 130.
//! Registered with signal-hook before anything compiles: LLVM's JIT installs handlers of its
//! own for these signals that re-raise them with the default action (killing the process),
//! and registered first, ours are what LLVM's restore and re-raise to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Signal flags for one run: set by SIGINT/SIGTERM/SIGHUP; a second signal exits at once.
/// The handlers are removed when the run ends.
pub(crate) struct Signals {
    flag: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
    ids: Vec<signal_hook::SigId>,
}

impl Signals {
    pub(crate) fn install() -> Signals {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let flag = Arc::new(AtomicBool::new(false));
        let which = Arc::new(AtomicUsize::new(0));
        let mut ids = Vec::new();
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            // Registered first, so it runs first: with the flag already set (a second
            // signal), it exits at once.
            let registered = [
                signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone()),
                signal_hook::flag::register_usize(sig, which.clone(), sig as usize),
                signal_hook::flag::register(sig, flag.clone()),
            ];
            ids.extend(registered.into_iter().flatten());
        }
        Signals { flag, which, ids }
    }

    /// The signal that arrived, if one did.
    pub(crate) fn raised(&self) -> Option<&'static str> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        if !self.flag.load(Ordering::SeqCst) {
            return None;
        }
        Some(match self.which.load(Ordering::SeqCst) as i32 {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            SIGHUP => "SIGHUP",
            _ => "a signal",
        })
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
