//! The process's live statistics page (layout in `memshadow_format::stats`).
//!
//! Until the page file exists (before the constructor, or when the shim runs untracked)
//! counts go to a static page in the shim's own .bss; creating the file copies them over.
//! On the malloc path each thread updates a stripe of its own with plain relaxed
//! load/store: no lock, no locked instruction, no syscall.

use crate::base::range::Range;
use crate::base::sys;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*};
use memshadow_format::stats::{
    Counter, HeapStripe, ProcessState, StatsPage, COMMAND_BYTES, HEAP_STRIPES, OVERFLOW_STRIPE,
    STATS_LAYOUT_VERSION, STATS_MAGIC, STATS_PAGE_SIZE,
};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// SAFETY: every field of StatsPage is an integer, atomic or byte array: all-zero is valid.
static EARLY: StatsPage = unsafe { core::mem::zeroed() };
/// The current page: the static one until the file is created.
static PAGE: AtomicPtr<StatsPage> = AtomicPtr::new(&EARLY as *const StatsPage as *mut StatsPage);

/// The current page.
#[inline]
pub fn page() -> &'static StatsPage {
    // SAFETY: PAGE points either to EARLY or to a published page, a live shared mapping
    // that is never unmapped; both are only accessed through atomics.
    unsafe { &*PAGE.load(Acquire) }
}

pub use crate::base::sys::thread_key;

const EXCLUSIVE: usize = memshadow_format::stats::EXCLUSIVE_STRIPES;
const _: () = assert!(EXCLUSIVE.is_power_of_two());
/// `owner_key` of a stripe never owned; it ends a probe sequence.
const NEVER_OWNED: u64 = 0;
/// `owner_key` of a stripe released by an exited thread; it may be claimed again.
const RELEASED: u64 = 1;

fn home_stripe(key: u64) -> usize {
    ((key >> 6).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & (EXCLUSIVE - 1)
}

/// The calling thread's stripe and whether it is exclusive (else the shared overflow).
/// Stripes form an open-addressing table keyed by thread pointer: the fast path is one
/// load of the owner word, on the cache line the counts are then written to.
#[inline]
fn my_stripe(page: &'static StatsPage) -> (&'static HeapStripe, bool) {
    let key = thread_key();
    let s = &page.stripes[home_stripe(key)];
    if s.owner_key.load(Relaxed) == key {
        return (s, true);
    }
    find_or_claim_stripe(page, key)
}

#[cold]
fn find_or_claim_stripe(page: &'static StatsPage, key: u64) -> (&'static HeapStripe, bool) {
    let home = home_stripe(key);
    loop {
        // Probe from the home slot until our key or a never-owned slot; remember the
        // first claimable slot on the way.
        let mut claimable = None;
        for i in 0..EXCLUSIVE {
            let idx = (home + i) & (EXCLUSIVE - 1);
            match page.stripes[idx].owner_key.load(Relaxed) {
                k if k == key => return (&page.stripes[idx], true),
                RELEASED => {
                    claimable.get_or_insert((idx, RELEASED));
                }
                NEVER_OWNED => {
                    claimable.get_or_insert((idx, NEVER_OWNED));
                    break;
                }
                _ => {}
            }
        }
        let Some((idx, old)) = claimable else {
            return (&page.stripes[OVERFLOW_STRIPE], false);
        };
        let s = &page.stripes[idx];
        if s.owner_key
            .compare_exchange(old, key, Relaxed, Relaxed)
            .is_ok()
        {
            return (s, true);
        }
        // Another thread took that slot first: probe again.
    }
}

/// Gives up the calling thread's stripe (at thread exit). Its counts stay: they are sums.
pub fn release_stripe() {
    let key = thread_key();
    let page = page();
    let home = home_stripe(key);
    for i in 0..EXCLUSIVE {
        let s = &page.stripes[(home + i) & (EXCLUSIVE - 1)];
        match s.owner_key.load(Relaxed) {
            k if k == key => {
                s.owner_key.store(RELEASED, Relaxed);
                return;
            }
            NEVER_OWNED => return,
            _ => {}
        }
    }
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

/// Why the run-time directory or the stats page could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// A path with a NUL byte in it.
    Nul(PathBuf),
    /// `mkdir` or `open` failed.
    Create(PathBuf, std::io::Error),
    /// The directory is not a private directory of ours.
    Dir(PathBuf, memshadow_format::paths::DirProblem),
    /// Sizing or mapping the page failed.
    Map(PathBuf, std::io::Error),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::Nul(p) => write!(f, "{} has a NUL byte in it", p.display()),
            SetupError::Create(p, e) => write!(f, "cannot create {}: {e}", p.display()),
            SetupError::Dir(p, problem) => write!(f, "{} {problem}", p.display()),
            SetupError::Map(p, e) => write!(f, "cannot map {}: {e}", p.display()),
        }
    }
}

/// Creates (or re-creates) the run-time directory `dir` with mode 0700, or checks that an
/// existing one is a real directory of ours that nobody else can write to.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SetupError> {
    let c =
        CString::new(dir.as_os_str().as_bytes()).map_err(|_| SetupError::Nul(dir.to_path_buf()))?;
    // SAFETY: `c` is a valid C string.
    if unsafe { libc::mkdir(c.as_ptr(), 0o700) } != 0 && sys::errno() != libc::EEXIST {
        return Err(SetupError::Create(
            dir.to_path_buf(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    // The rule the CLI applies when it looks for processes: a real directory of ours that
    // nobody else can write to, never followed through a symbolic link.
    match memshadow_format::paths::dir_problem(dir, me, false) {
        None => Ok(()),
        Some(problem) => Err(SetupError::Dir(dir.to_path_buf(), problem)),
    }
}

/// Reads a small file from /proc into a byte vector.
fn read_proc(path: &core::ffi::CStr) -> Vec<u8> {
    crate::base::fds::read_file(path, 1 << 16)
}

/// The start time of process `pid` in clock ticks after boot (field 22 of
/// `/proc/PID/stat`), if it runs. The command in field 2 may be any bytes; the fields
/// after it are ASCII.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/stat")).ok()?;
    let stat = crate::base::fds::read_file(&path, 1 << 16);
    memshadow_format::paths::start_ticks_of_stat(&String::from_utf8_lossy(&stat))
}

fn command_line() -> [u8; COMMAND_BYTES] {
    let mut out = [0u8; COMMAND_BYTES];
    let raw = read_proc(c"/proc/self/cmdline");
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
    let pid = std::process::id();
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let path = memshadow_format::paths::stats_path(dir, pid);
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| SetupError::Nul(path.clone()))?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid C string; unlink and open touch only that path.
    let fd = unsafe {
        libc::unlink(c.as_ptr());
        libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint)
    };
    if fd < 0 {
        return Err(SetupError::Create(path, std::io::Error::last_os_error()));
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
    // The mapping (if any) keeps the file alive. The system call itself: the shim's own
    // `close` is the program's (this descriptor, open for these few lines, is not moved
    // out of its way).
    // SAFETY: `fd` is the file just opened, used by nothing else.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    let Some(p) = mapped else {
        // SAFETY: `c` is a valid C string naming the file we created.
        unsafe { libc::unlink(c.as_ptr()) };
        return Err(SetupError::Map(path, err));
    };
    let range = Range::new(p as usize, p as usize + STATS_PAGE_SIZE);
    crate::base::own::register(range);
    // SAFETY: the fresh mapping is STATS_PAGE_SIZE zeroed bytes, page aligned, and all
    // zero is a valid StatsPage; nobody else in this process references it yet.
    let page = unsafe { &mut *(p as *mut StatsPage) };
    page.layout_version.store(STATS_LAYOUT_VERSION, Relaxed);
    page.state.store(ProcessState::Starting as u32, Relaxed);
    page.pid.store(pid, Relaxed);
    page.uid.store(uid, Relaxed);
    page.start_time_ticks
        .store(start_ticks(pid).unwrap_or(0), Relaxed);
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

/// Adds the CPU time the calling shim thread used since `*last` (its previous reading,
/// nanoseconds) to the `shim_cpu_us` statistic; returns the microseconds added.
pub fn account_cpu(last: &mut u64) -> u64 {
    let now = crate::base::shim_thread::thread_cpu_ns();
    let us = (now / 1000).saturating_sub(*last / 1000);
    if us > 0 {
        add(Counter::ShimCpuUs, us);
        *last = now - now % 1000;
    }
    us
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests that count into the shared static page run one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn exclusive_stripes_count_per_thread() {
        let _g = SERIAL.lock().unwrap();
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
    fn more_threads_than_stripes_share_the_overflow_exactly() {
        let _g = SERIAL.lock().unwrap();
        let before = page().read();
        let n = 2 * HEAP_STRIPES;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait(); // all alive at once: no stripe can be taken over
                    for _ in 0..500 {
                        on_alloc(8);
                    }
                    let (s, exclusive) = my_stripe(page());
                    b.wait();
                    (s as *const HeapStripe as usize, exclusive)
                })
            })
            .collect();
        let got: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let after = page().read();
        assert_eq!(after.allocs - before.allocs, (n * 500) as u64);
        assert_eq!(after.alloc_bytes - before.alloc_bytes, (n * 500 * 8) as u64);
        let mut exclusive: Vec<_> = got.iter().filter(|g| g.1).map(|g| g.0).collect();
        let shared = got.len() - exclusive.len();
        exclusive.sort();
        exclusive.dedup();
        assert_eq!(
            exclusive.len() + shared,
            n,
            "two live threads share an exclusive stripe"
        );
        assert!(
            shared >= n - EXCLUSIVE,
            "{shared} threads on the overflow stripe"
        );
    }

    #[test]
    fn command_line_is_nul_padded_text() {
        let c = command_line();
        let n = c.iter().position(|&b| b == 0).unwrap_or(COMMAND_BYTES);
        assert!(n > 0);
        assert!(std::str::from_utf8(&c[..n]).is_ok());
        assert!(start_ticks(std::process::id()).is_some_and(|t| t > 0));
    }
}
