//! Ctrl-C and SIGTERM for the commands that run until told to stop (`record`,
//! `follow`): the signal sets a flag the command's loop looks at, so it ends between two
//! steps and says what it did, instead of dying halfway.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Failure, Result};

/// Set by SIGINT or SIGTERM once [`stop_on_interrupt`] is in place.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set [`INTERRUPTED`] from now on.
pub fn stop_on_interrupt() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let handler = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &handler) }
            .map_err(|e| Failure::runtime(format!("cannot handle {sig}: {e}")))?;
    }
    Ok(())
}
