//! Raw system calls used by the shim.
//!
//! The shim exports `mmap`, `munmap`, `mremap`, `brk` and `sbrk`, so calling the libc
//! functions of those names from inside the shim would call the shim itself. Everything
//! the shim maps for its own use goes through the raw syscalls below instead.

use core::ffi::c_void;

/// Maps `len` bytes read-write with the raw syscall: `fd` -1 for anonymous memory.
fn map(len: usize, flags: i32, fd: i32) -> Option<*mut u8> {
    // SAFETY: a new mapping at a kernel-chosen address touches no existing memory.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            core::ptr::null_mut::<c_void>(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0usize,
        )
    };
    (p >= 0).then_some(p as *mut u8)
}

/// Maps `len` bytes of private anonymous read-write memory. `noreserve` asks the kernel
/// not to account the whole range against overcommit (pages cost nothing until touched).
pub fn map_anon(len: usize, noreserve: bool) -> Option<*mut u8> {
    let noreserve = if noreserve { libc::MAP_NORESERVE } else { 0 };
    map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve, -1)
}

/// Unmaps a range the shim mapped for itself and no longer uses.
pub fn unmap(r: crate::base::range::Range) {
    // SAFETY: the caller's own mapping, which nothing refers to any more: unmapping it
    // touches no memory of the program's.
    unsafe { libc::syscall(libc::SYS_munmap, r.start, r.len()) };
}

/// Maps `len` bytes of `fd` shared and read-write.
pub fn map_shared_fd(fd: i32, len: usize) -> Option<*mut u8> {
    map(len, libc::MAP_SHARED, fd)
}

/// Tells the kernel the pages of a range the shim owns may be dropped (they read as zero).
///
/// # Safety
/// `[addr, addr+len)` must be the shim's own memory whose contents are no longer needed.
pub unsafe fn discard(addr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees the range is the shim's own and its contents are dead.
    unsafe { libc::syscall(libc::SYS_madvise, addr, len, libc::MADV_DONTNEED) };
}

pub fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(v: i32) {
    // SAFETY: as above; writing errno is what the slot is for.
    unsafe { *libc::__errno_location() = v };
}

/// Writes all of `bytes` to `fd`, retrying on EINTR and short writes; gives up on error.
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live byte slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A signal mask saved by [`block_signals`], restored on drop.
pub struct SignalsBlocked {
    /// None on a shim thread, which runs with every signal blocked anyway.
    old: Option<libc::sigset_t>,
}

fn full_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset initialises it fully.
    let mut all: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: a valid sigset.
    unsafe { libc::sigfillset(&mut all) };
    all
}

/// Blocks every signal in the calling thread until the guard drops, so that a signal
/// handler cannot re-enter a critical section of the shim on the same thread. Free on
/// the shim's own threads (their signals are always blocked; the fault thread takes
/// the engine lock several times per trap).
pub fn block_signals() -> SignalsBlocked {
    if crate::base::shim_thread::is_current() {
        return SignalsBlocked { old: None };
    }
    let all = full_set();
    // SAFETY: sigset_t is plain data; pthread_sigmask fills it.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: both pointers are valid sigsets; pthread_sigmask only reads/writes them.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    SignalsBlocked { old: Some(old) }
}

impl SignalsBlocked {
    /// The mask that was in force before the signals were blocked.
    pub fn old_mask(&self) -> libc::sigset_t {
        self.old.unwrap_or_else(full_set)
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            // SAFETY: restores the mask saved by block_signals.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, core::ptr::null_mut()) };
        }
    }
}

/// Sleeps on `word` while it holds `expected`, at most `timeout_ms` (0: no limit).
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ms: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    let tp = if timeout_ms == 0 {
        core::ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    // SAFETY: `word` is a live u32 in the shim's memory; FUTEX_WAIT only reads it and
    // sleeps; the timeout pointer is null or a valid timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            tp,
        )
    };
}

/// Wakes every thread sleeping on `word`.
pub fn futex_wake(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: waking waiters of a live u32 in the shim's memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// `poll` of `fd` for input with a zero timeout (never sleeps): 1 when readable now, 0
/// when not, -1 on an error (a number that is not open, say).
pub fn poll_in_now(fd: i32) -> i32 {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd (a negative fd is ignored); a zero timeout never sleeps.
    unsafe { libc::poll(&mut pfd, 1, 0) }
}

/// Sleeps for `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    sleep_us(ms * 1000);
}

/// Sleeps for `us` microseconds.
pub fn sleep_us(us: u64) {
    let ts = libc::timespec {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_nsec: ((us % 1_000_000) * 1000) as libc::c_long,
    };
    // SAFETY: a valid timespec; the remainder pointer may be null.
    unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
}

/// A value that tells the calling thread from every other live thread: its thread
/// pointer, read from the register the ABI keeps it in. This needs no TLS access (a
/// `__tls_get_addr` call from a shared library, which glibc may even serve with malloc).
#[inline(always)]
pub fn thread_key() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let tp: u64;
        // SAFETY: on x86-64 Linux %fs:0 holds the thread control block's own address
        // (required by the ABI for TLS); reading it has no side effects.
        unsafe {
            core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
        };
        tp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let tp: u64;
        // SAFETY: tpidr_el0 holds the thread pointer; reading it has no side effects.
        unsafe {
            core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags))
        };
        tp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_self() as u64 }
    }
}

/// The process's minor faults so far (`getrusage`; a copy-on-write fault is one, so is a
/// first touch of fresh memory).
pub fn minor_faults() -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: a valid out-pointer for the calling process's usage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    usage.ru_minflt as u64
}

/// The process's anonymous pages resident now (`RssAnon` in /proc/self/status: the
/// shim's own memory too); `u64::MAX` when it cannot be read.
pub fn anon_resident_pages() -> u64 {
    let text = crate::base::fds::read_file(c"/proc/self/status", 16 << 10);
    kib_field(&text, "RssAnon:").map_or(u64::MAX, |kib| kib / 4)
}

/// The value of the `KEY: N kB` line of a /proc text (status, smaps_rollup), in KiB.
pub fn kib_field(text: &[u8], key: &str) -> Option<u64> {
    text.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(key.as_bytes()))
        .and_then(|v| core::str::from_utf8(v).ok())
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The monotonic clock, nanoseconds.
pub fn monotonic_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec.
    let mut t: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: `t` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
