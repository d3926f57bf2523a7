//! The process's live statistics page (layout in `memshadow_format::stats`).
//!
//! Until the page file exists (before the constructor, or when the shim runs untracked)
//! counts go to a static page in the shim's own .bss; creating the file copies them over.
//! On the malloc path each thread updates a stripe of its own with plain relaxed
//! load/store: no lock, no locked instruction, no syscall.

use crate::own::Range;
use crate::sys;
use core::cell::Cell;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering::*};
use memshadow_format::stats::{
    Counter, HeapStripe, ProcessState, StatsPage, COMMAND_BYTES, HEAP_STRIPES, OVERFLOW_STRIPE,
    STATS_LAYOUT_VERSION, STATS_MAGIC, STATS_PAGE_SIZE,
};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// SAFETY: every field of StatsPage is an integer, atomic or byte array: all-zero is valid.
static EARLY: StatsPage = unsafe { core::mem::zeroed() };
static PAGE: AtomicPtr<StatsPage> = AtomicPtr::new(core::ptr::null_mut());
/// Bumped whenever a new page is published, so threads re-claim a stripe in it.
static GENERATION: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// `(generation << 8) | (stripe + 1)`, 0 before the first claim.
    static STRIPE: Cell<u32> = const { Cell::new(0) };
}

/// The current page: the file once created, the static one before.
#[inline]
pub fn page() -> &'static StatsPage {
    let p = PAGE.load(Acquire);
    if p.is_null() {
        &EARLY
    } else {
        // SAFETY: a published page is a live shared mapping that is never unmapped.
        unsafe { &*p }
    }
}

#[inline]
fn my_stripe(page: &'static StatsPage) -> (&'static HeapStripe, bool) {
    let gen = GENERATION.load(Relaxed);
    let v = STRIPE.with(|s| s.get());
    let idx = if v >> 8 == gen && v & 0xff != 0 {
        (v & 0xff) as usize - 1
    } else {
        let i = claim_stripe(page);
        STRIPE.with(|s| s.set((gen << 8) | (i as u32 + 1)));
        i
    };
    (&page.stripes[idx], idx != OVERFLOW_STRIPE)
}

/// Finds a stripe no live thread owns; the shared overflow stripe if there is none.
#[cold]
fn claim_stripe(page: &StatsPage) -> usize {
    let tid = sys::gettid();
    for (i, s) in page.stripes[..OVERFLOW_STRIPE].iter().enumerate() {
        if s.owner.compare_exchange(0, tid, Relaxed, Relaxed).is_ok() {
            return i;
        }
    }
    for (i, s) in page.stripes[..OVERFLOW_STRIPE].iter().enumerate() {
        let owner = s.owner.load(Relaxed);
        if owner != tid
            && !sys::thread_alive(owner)
            && s.owner
                .compare_exchange(owner, tid, Relaxed, Relaxed)
                .is_ok()
        {
            return i;
        }
    }
    OVERFLOW_STRIPE
}

#[inline]
fn bump(c: &AtomicU64, n: u64, exclusive: bool) {
    if exclusive {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        c.fetch_add(n, Relaxed);
    }
}

/// A block of `usable` bytes was handed out.
#[inline]
pub fn on_alloc(usable: usize) {
    let (s, ex) = my_stripe(page());
    bump(&s.allocs, 1, ex);
    bump(&s.alloc_bytes, usable as u64, ex);
}

/// A block of `usable` bytes was given back.
#[inline]
pub fn on_free(usable: usize) {
    let (s, ex) = my_stripe(page());
    bump(&s.frees, 1, ex);
    bump(&s.free_bytes, usable as u64, ex);
}

/// A block changed size in place or moved (realloc): neither an allocation nor a free.
#[inline]
pub fn on_resize(old_usable: usize, new_usable: usize) {
    let (s, ex) = my_stripe(page());
    bump(&s.free_bytes, old_usable as u64, ex);
    bump(&s.alloc_bytes, new_usable as u64, ex);
}

pub fn set(c: Counter, v: u64) {
    page().counter(c).store(v, Relaxed);
}

pub fn add(c: Counter, n: u64) {
    page().counter(c).fetch_add(n, Relaxed);
}

/// The published stats file (its path, to remove at exit).
pub struct StatsFile {
    pub path: PathBuf,
}

/// Why the stats page could not be created.
pub type SetupError = String;

/// Creates (or re-creates) the run-time directory `dir` with mode 0700, or checks that an
/// existing one is a real directory of ours that nobody else can write to.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SetupError> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| "NUL in MEMSHADOW_DIR")?;
    // SAFETY: `c` is a valid C string.
    if unsafe { libc::mkdir(c.as_ptr(), 0o700) } != 0 && sys::errno() != libc::EEXIST {
        return Err(format!(
            "cannot create {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `st` is a valid out-pointer, `c` a valid C string.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "cannot stat {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if st.st_uid != me {
        return Err(format!(
            "{} belongs to uid {}, not to us (uid {me})",
            dir.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!("{} is writable by other users", dir.display()));
    }
    Ok(())
}

/// Reads a small file from /proc into a byte vector.
fn read_proc(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// The process start time in clock ticks after boot (field 22 of /proc/self/stat).
fn start_time_ticks() -> u64 {
    let stat = read_proc("/proc/self/stat");
    let after = match stat.iter().rposition(|&b| b == b')') {
        Some(i) => &stat[i + 1..],
        None => return 0,
    };
    // Fields after the command start at field 3; field 22 is the 20th of these.
    std::str::from_utf8(after)
        .ok()
        .and_then(|s| s.split_ascii_whitespace().nth(19))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

fn command_line() -> [u8; COMMAND_BYTES] {
    let mut out = [0u8; COMMAND_BYTES];
    let raw = read_proc("/proc/self/cmdline");
    let mut n = 0;
    for &b in raw.iter().take(COMMAND_BYTES - 1) {
        out[n] = if b == 0 { b' ' } else { b };
        n += 1;
    }
    while n > 0 && out[n - 1] == b' ' {
        n -= 1;
        out[n] = 0;
    }
    // Do not cut a UTF-8 sequence in half.
    while n > 0 && out[n - 1] & 0xc0 == 0x80 {
        n -= 1;
        out[n] = 0;
    }
    if n > 0 && out[n - 1] >= 0xc0 {
        out[n - 1] = 0;
    }
    out
}

/// Creates `DIR/PID.stats` (0600), fills its header, copies the counts gathered so far
/// into it and publishes it. Any stale file of the same name (a previous program of this
/// pid, before exec) is replaced.
pub fn create(dir: &Path, run_id: u64) -> Result<StatsFile, SetupError> {
    // SAFETY: getpid/getuid cannot fail.
    let (pid, uid) = unsafe { (libc::getpid() as u32, libc::getuid()) };
    let path = memshadow_format::paths::stats_path(dir, pid);
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| "NUL in path")?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid C string; unlink and open touch only that path.
    let fd = unsafe {
        libc::unlink(c.as_ptr());
        libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint)
    };
    if fd < 0 {
        return Err(format!(
            "cannot create {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is the file just opened; fchmod/ftruncate act on it only.
    let sized = unsafe {
        libc::fchmod(fd, 0o600) == 0 && libc::ftruncate(fd, STATS_PAGE_SIZE as libc::off_t) == 0
    };
    let mapped = if sized {
        sys::map_shared_fd(fd, STATS_PAGE_SIZE)
    } else {
        None
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: the mapping (if any) keeps the file alive; the descriptor is ours to close.
    unsafe { libc::close(fd) };
    let Some(p) = mapped else {
        // SAFETY: `c` is a valid C string naming the file we created.
        unsafe { libc::unlink(c.as_ptr()) };
        return Err(format!("cannot map {}: {err}", path.display()));
    };
    let range = Range::new(p as usize, p as usize + STATS_PAGE_SIZE);
    crate::own::register(range);
    // SAFETY: the fresh mapping is STATS_PAGE_SIZE zeroed bytes, page aligned, and all
    // zero is a valid StatsPage; nobody else in this process references it yet.
    let page = unsafe { &mut *(p as *mut StatsPage) };
    page.layout_version.store(STATS_LAYOUT_VERSION, Relaxed);
    page.state.store(ProcessState::Starting as u32, Relaxed);
    page.pid.store(pid, Relaxed);
    page.uid.store(uid, Relaxed);
    page.start_time_ticks.store(start_time_ticks(), Relaxed);
    page.run_id.store(run_id, Relaxed);
    page.created_unix_ms.store(sys::unix_ms(), Relaxed);
    page.command = command_line();
    // Carry over what was counted before (the static page, or the parent's page after
    // fork): totals into the first stripe, counters as they are.
    let before = page_snapshot_totals();
    page.stripes[0].allocs.store(before.0, Relaxed);
    page.stripes[0].frees.store(before.1, Relaxed);
    page.stripes[0].alloc_bytes.store(before.2, Relaxed);
    page.stripes[0].free_bytes.store(before.3, Relaxed);
    let old = self::page();
    for (n, o) in page.counters.iter().zip(&old.counters) {
        n.store(o.load(Relaxed), Relaxed);
    }
    page.magic = STATS_MAGIC;
    PAGE.store(p as *mut StatsPage, Release);
    GENERATION.fetch_add(1, Relaxed);
    Ok(StatsFile { path })
}

fn page_snapshot_totals() -> (u64, u64, u64, u64) {
    let old = page();
    let mut t = (0u64, 0u64, 0u64, 0u64);
    for s in old.stripes.iter().take(HEAP_STRIPES) {
        t.0 = t.0.wrapping_add(s.allocs.load(Relaxed));
        t.1 = t.1.wrapping_add(s.frees.load(Relaxed));
        t.2 = t.2.wrapping_add(s.alloc_bytes.load(Relaxed));
        t.3 = t.3.wrapping_add(s.free_bytes.load(Relaxed));
    }
    t
}

pub fn set_state(s: ProcessState) {
    page().state.store(s as u32, Relaxed);
    if s == ProcessState::Exited {
        page().exited_unix_ms.store(sys::unix_ms(), Relaxed);
    }
}

/// Removes the stats file (the mapping stays valid until the process ends).
pub fn remove(f: &StatsFile) {
    if let Ok(c) = CString::new(f.path.as_os_str().as_bytes()) {
        // SAFETY: `c` is a valid C string.
        unsafe { libc::unlink(c.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_stripes_count_per_thread() {
        // Counts land in EARLY (no file in unit tests); sum before and after.
        let before = page().read();
        let hs: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        on_alloc(32);
                        on_free(16);
                    }
                    on_resize(100, 200);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let after = page().read();
        assert_eq!(after.allocs - before.allocs, 8000);
        assert_eq!(after.frees - before.frees, 8000);
        assert_eq!(after.alloc_bytes - before.alloc_bytes, 8 * (32_000 + 200));
    }

    #[test]
    fn command_line_is_nul_padded_text() {
        let c = command_line();
        let n = c.iter().position(|&b| b == 0).unwrap_or(COMMAND_BYTES);
        assert!(n > 0);
        assert!(std::str::from_utf8(&c[..n]).is_ok());
        assert!(start_time_ticks() > 0);
    }
}
