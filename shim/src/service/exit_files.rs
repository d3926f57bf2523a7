//! `_exit` and `_Exit`: a process that ends without `exit()` (a forked child, Python's
//! `os._exit`, multiprocessing workers) runs no destructor, so its stats page and socket
//! would stay behind. The interposed `_exit`/`_Exit` remove them (the page only when no
//! launcher keeps it) and forward to the C library's.
//!
//! `_exit` is async-signal-safe, and so is this: the paths are kept as C strings in
//! static buffers, written while the process is single-threaded or before they are
//! published (start-up, a forked child), and read here with two `unlink` calls and atomic
//! loads; no lock, no allocation. A `vfork` child shares the parent's memory but not its
//! pid: the files belong to the pid that published them, so it removes nothing.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const MAX_PATH: usize = 4096;

struct PathBuf0(UnsafeCell<[u8; MAX_PATH]>);
// SAFETY: written only while `PUBLISHED` is 0 (nobody reads it), read only after.
unsafe impl Sync for PathBuf0 {}

static STATS: PathBuf0 = PathBuf0(UnsafeCell::new([0; MAX_PATH]));
static SOCK: PathBuf0 = PathBuf0(UnsafeCell::new([0; MAX_PATH]));
/// The pid whose files the buffers name (0: none).
static PUBLISHED: AtomicU32 = AtomicU32::new(0);
/// Whether the stats page stays for the launcher.
static KEEP_STATS: AtomicU32 = AtomicU32::new(0);

fn store(buf: &PathBuf0, p: &Path) -> bool {
    let bytes = p.as_os_str().as_bytes();
    if bytes.len() >= MAX_PATH || bytes.contains(&0) {
        return false;
    }
    // SAFETY: PUBLISHED is 0 (see `publish`): no reader looks at the buffer now.
    let b = unsafe { &mut *buf.0.get() };
    b[..bytes.len()].copy_from_slice(bytes);
    b[bytes.len()] = 0;
    true
}

/// Records this process's files (`stats`, `sock`) for `_exit`; `keep_stats` when a
/// launcher collects the page.
pub fn publish(stats: &Path, sock: &Path, keep_stats: bool) {
    PUBLISHED.store(0, Ordering::SeqCst);
    if store(&STATS, stats) && store(&SOCK, sock) {
        KEEP_STATS.store(keep_stats as u32, Ordering::Relaxed);
        PUBLISHED.store(std::process::id(), Ordering::SeqCst);
    }
}

/// Nothing to remove any more (the files are gone, or the process runs untracked).
pub fn forget() {
    PUBLISHED.store(0, Ordering::SeqCst);
}

/// Removes this process's files, once, if it published them.
fn remove_own() {
    // getpid (behind process::id) is async-signal-safe.
    let me = std::process::id();
    if me == 0
        || PUBLISHED
            .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
    {
        return;
    }
    // SAFETY: the buffers hold NUL-terminated paths while PUBLISHED was `me`.
    unsafe { libc::unlink((*SOCK.0.get()).as_ptr().cast()) };
    if KEEP_STATS.load(Ordering::Relaxed) == 0 {
        // SAFETY: as above.
        unsafe { libc::unlink((*STATS.0.get()).as_ptr().cast()) };
    } else {
        crate::stats::set_state(memshadow_format::stats::ProcessState::Exited);
    }
}

/// The interposed `_exit`/`_Exit`: cleans up, then ends the process as the C library's
/// `_exit` would.
pub fn quick_exit(status: i32) -> ! {
    remove_own();
    // Resolved by the constructor (see `runtime::on_load`): a load, never a lookup.
    if let Some(exit) = crate::base::forward::real().and_then(|r| r.exit) {
        // SAFETY: the C library's `_exit`, as the caller's.
        unsafe { exit(status) };
    }
    loop {
        // SAFETY: exit_group ends the process; it does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}
