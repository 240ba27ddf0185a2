//! Ctrl-C: the first SIGINT asks the running record/replay to stop cleanly (the trace is
//! closed, nothing is lost); a second one kills the process as usual.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_sigint(_signal: libc::c_int) {
    if let Some(flag) = FLAG.get() {
        if flag.swap(true, Ordering::Relaxed) {
            // Second Ctrl-C: restore the default action and re-raise.
            // SAFETY: signal() and raise() are async-signal-safe.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::raise(libc::SIGINT);
            }
        }
    }
}

/// The flag set by Ctrl-C (installs the handler on first use).
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = FLAG
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    // SAFETY: the handler only touches an already-initialised atomic and async-signal-safe
    // libc functions.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    flag
}
