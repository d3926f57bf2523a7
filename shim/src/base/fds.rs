//! The shim's own descriptors (the userfaultfd, the fault thread's wake-up pipe, the
//! control socket and its connections, files it reads briefly), kept out of the
//! program's way.
//!
//! A program may close a descriptor number it does not own: bash closes a pipe's
//! descriptor a second time after a pipeline. If that number was the shim's, the program
//! then gets it back from its next `pipe()` or `open()`, and the shim would read the
//! program's data from it (its fault thread), write into it, or close it (after fork).
//! Three defences:
//!
//! 1. Every descriptor the shim keeps is moved to a high number ([`floor`]) with
//!    `F_DUPFD_CLOEXEC`, away from the low numbers the kernel hands out first, so a
//!    program's own descriptors never take a number the shim uses.
//! 2. The interposed `close`, `close_range`, `closefrom`, `dup2` and `dup3` treat a
//!    shim descriptor as a number that is not open (EBADF; `close_range` and `closefrom`
//!    close everything around it) and leave it open, as tools that live in other
//!    processes do.
//! 3. Before the shim closes, reads, writes or ioctls one of them where a raw system call
//!    may have closed it behind the interposer, it checks the file's identity (device and
//!    inode, recorded when it was adopted: a userfaultfd, a pipe and a socket each have an
//!    inode of their own, an eventfd does not, so the shim uses none). A descriptor lost
//!    anyway is forgotten and never touched again; its owner stops with one `memshadow:`
//!    line (see `engine::stop`).
//!
//! The table is a fixed array of atomics: the interposed `close` reads it without a lock
//! and without allocating, from any thread and from signal handlers.
//!
//! One window is left by 1. alone: a descriptor the shim has just opened sits on a low
//! number until it is moved. A program closing every number it did not open (daemons,
//! `stray_close`) could close it there, get the number back from its next `pipe()`, and
//! the shim would then move and close the program's pipe. So a shim thread opens and
//! moves a descriptor inside [`create_and_adopt`], and the interposed close family does
//! not run meanwhile (nor the opening while one runs): two counters, each side raising
//! its own before reading the other's (a Dekker pair), waited out for microseconds.

use crate::base::forward::real;
use core::ffi::{c_int, c_uint};
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// How many descriptors the shim can hold at once (it keeps four, plus one per request
/// being answered and per file being read, plus a pidfd per holder child: see
/// `engine::holder::MAX_HOLDERS`).
pub const SLOTS: usize = 64;
const FREE: i32 = -1;
const CLAIMED: i32 = -2;

struct Slot {
    fd: AtomicI32,
    dev: AtomicU64,
    ino: AtomicU64,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        fd: AtomicI32::new(FREE),
        dev: AtomicU64::new(0),
        ino: AtomicU64::new(0),
    }
}; SLOTS];

/// Why a descriptor could not be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdError {
    /// `fstat` failed (the errno).
    Stat(i32),
    /// Moving it to a high number failed (the errno).
    Move(i32),
    /// The shim already holds [`SLOTS`] descriptors.
    TableFull,
    /// Creating it failed (the errno).
    Create(i32),
}

impl core::fmt::Display for FdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FdError::Stat(e) => write!(f, "fstat failed (errno {e})"),
            FdError::Move(e) => write!(
                f,
                "cannot move a descriptor out of the program's way (errno {e})"
            ),
            FdError::TableFull => write!(f, "the shim holds {SLOTS} descriptors already"),
            FdError::Create(e) => write!(f, "cannot create it (errno {e})"),
        }
    }
}

/// The (device, inode) of the file open on `fd`, or the errno.
fn identity(fd: i32) -> Result<(u64, u64), i32> {
    // SAFETY: all-zero is a valid stat buffer.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; fstat on a number that is not open just fails.
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        Ok((st.st_dev, st.st_ino))
    } else {
        Err(crate::base::sys::errno())
    }
}

/// The lowest number the shim moves its descriptors to: 64 below the soft
/// `RLIMIT_NOFILE` limit, or below 1024 when the limit is higher (a descriptor at a huge
/// number would make the kernel grow the process's descriptor table to that size).
pub fn floor() -> i32 {
    // SAFETY: all-zero is a valid rlimit.
    let mut rl: libc::rlimit = unsafe { core::mem::zeroed() };
    // SAFETY: `rl` is a valid out-pointer.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur.min(1024) as i32
    } else {
        1024
    };
    if soft >= 128 {
        soft - 64
    } else {
        (soft / 2).max(3)
    }
}

/// Closes `fd` with the system call itself (the shim exports `close`, so `libc::close`
/// from inside the shim would come back to [`close`]).
fn close_raw(fd: i32) {
    // SAFETY: closing a descriptor the caller owns; the kernel checks the number.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

fn find(fd: i32) -> Option<&'static Slot> {
    if fd < 0 {
        return None;
    }
    TABLE.iter().find(|s| s.fd.load(Ordering::Acquire) == fd)
}

/// Shim threads between creating a descriptor and moving it out of the program's way.
static CREATING: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
/// Program threads inside the interposed close family.
static CLOSING: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The process whose threads raise the counters (set at start-up and in a forked child;
/// 0 before): a child forked without the shim's fork handlers (a raw `fork` system call)
/// inherits them raised by threads it does not have, and must not wait for those.
static COUNTERS_PID: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

/// The longest either side waits for the other (a thread descheduled in the middle of a
/// creation): past it the close or the creation goes ahead, so that no program ever hangs
/// on the shim. Creations take microseconds.
const WAIT_LIMIT_NS: u64 = 200_000_000;

/// Waits a moment for the other side (see the module doc), at most [`WAIT_LIMIT_NS`];
/// counters inherited by a forked child that did not reset them are cleared.
fn wait_while(counter: &core::sync::atomic::AtomicU32) {
    let mut spins = 0u32;
    let mut since = None;
    while counter.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if !spins.is_multiple_of(64) {
            core::hint::spin_loop();
            continue;
        }
        let owner = COUNTERS_PID.load(Ordering::SeqCst);
        // SAFETY: getpid has no arguments and no memory effects.
        if owner != 0 && owner != unsafe { libc::getpid() } {
            after_fork_in_child();
            return;
        }
        let now = crate::base::sys::monotonic_ns();
        if now.saturating_sub(*since.get_or_insert(now)) > WAIT_LIMIT_NS {
            return;
        }
        // SAFETY: sched_yield has no arguments and no memory effects.
        unsafe { libc::sched_yield() };
    }
}

/// Records this process as the one whose threads raise the counters (start-up, while
/// it has one thread; and a forked child).
pub fn note_counters_pid() {
    // SAFETY: getpid has no arguments and no memory effects.
    COUNTERS_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
}

/// Creates a descriptor with `create` (a raw system call returning it, or -1 with errno)
/// and adopts it ([`adopt`]) with no close, dup2 or dup3 of the program's running in
/// between. `Err(FdError::Create(errno))` when `create` fails.
pub fn create_and_adopt(create: impl FnOnce() -> i32) -> Result<i32, FdError> {
    creating(|| {
        let fd = create();
        if fd < 0 {
            Err(FdError::Create(crate::base::sys::errno()))
        } else {
            adopt(fd)
        }
    })
}

/// Runs `f`, which creates descriptors and adopts them ([`adopt`]) before it returns,
/// with no close, dup2 or dup3 of the program's running meanwhile. `f` makes system
/// calls that return at once: the program's closes wait for it.
pub fn creating<R>(f: impl FnOnce() -> R) -> R {
    CREATING.fetch_add(1, Ordering::SeqCst);
    wait_while(&CLOSING);
    let r = f();
    CREATING.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Runs `f`, one of the interposed close family, when no shim thread is between creating
/// a descriptor and moving it (see [`create_and_adopt`]).
fn closing<R>(f: impl FnOnce() -> R) -> R {
    hold_off_creations();
    let r = f();
    CLOSING.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Waits until no shim thread is creating a descriptor and keeps new ones from starting
/// until [`CLOSING`] is lowered again.
fn hold_off_creations() {
    loop {
        CLOSING.fetch_add(1, Ordering::SeqCst);
        if CREATING.load(Ordering::SeqCst) == 0 {
            return;
        }
        CLOSING.fetch_sub(1, Ordering::SeqCst);
        wait_while(&CREATING);
    }
}

/// Before fork: no descriptor is half created (a child would inherit it on a low
/// number, unguarded), and none starts until [`after_fork_in_parent`] or
/// [`after_fork_in_child`].
pub fn hold_off_creations_for_fork() {
    hold_off_creations();
}

pub fn after_fork_in_parent() {
    CLOSING.fetch_sub(1, Ordering::SeqCst);
}

/// In the child only the forking thread exists: nobody is creating or closing.
pub fn after_fork_in_child() {
    CLOSING.store(0, Ordering::SeqCst);
    CREATING.store(0, Ordering::SeqCst);
    note_counters_pid();
}

/// Takes `fd`, a descriptor the shim has just opened, out of the program's way: moves it
/// to a high, close-on-exec number, closes the original and records the file's identity.
/// Returns the new number. On error `fd` is closed.
pub fn adopt(fd: i32) -> Result<i32, FdError> {
    let id = match identity(fd) {
        Ok(id) => id,
        Err(e) => {
            close_raw(fd);
            return Err(FdError::Stat(e));
        }
    };
    let Some(slot) = TABLE.iter().find(|s| {
        s.fd.compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }) else {
        close_raw(fd);
        return Err(FdError::TableFull);
    };
    // SAFETY: F_DUPFD_CLOEXEC takes an int and returns a new descriptor or -1.
    let mut high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor()) };
    let err = crate::base::sys::errno();
    if high >= 0 {
        close_raw(fd);
    } else if err == libc::EMFILE || err == libc::EINVAL {
        // Every high number is taken (or the limit is lower than it was): the
        // descriptor stays where it is, still guarded and checked.
        // SAFETY: F_SETFD on the descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        high = fd;
    } else {
        close_raw(fd);
        slot.fd.store(FREE, Ordering::Release);
        return Err(FdError::Move(err));
    }
    slot.dev.store(id.0, Ordering::Relaxed);
    slot.ino.store(id.1, Ordering::Relaxed);
    slot.fd.store(high, Ordering::Release);
    Ok(high)
}

/// Whether `fd` is a descriptor the shim holds and the file open on that number is still
/// the one it adopted. On a mismatch (closed or replaced by a raw system call) the number
/// is forgotten: it is the program's now, and the shim never touches it again.
pub fn verify(fd: i32) -> bool {
    verified(fd).is_some()
}

/// [`verify`], giving the table's slot of a descriptor still the shim's.
fn verified(fd: i32) -> Option<&'static Slot> {
    let slot = find(fd)?;
    let want = (
        slot.dev.load(Ordering::Relaxed),
        slot.ino.load(Ordering::Relaxed),
    );
    if identity(fd) == Ok(want) {
        return Some(slot);
    }
    let _ = slot
        .fd
        .compare_exchange(fd, FREE, Ordering::AcqRel, Ordering::Acquire);
    None
}

/// Closes a descriptor the shim adopted, if it is still the shim's; forgets it either way.
pub fn release(fd: i32) {
    if let Some(slot) = verified(fd) {
        slot.fd.store(FREE, Ordering::Release);
        close_raw(fd);
    }
}

/// In a forked child: every descriptor in the table is the parent's shim's (the threads
/// that would release them do not exist here). Closes the child's copies (the parent
/// keeps its own) and empties the table; the child's shim adopts its own afresh.
pub fn release_all_after_fork() {
    for s in &TABLE {
        let fd = s.fd.load(Ordering::Acquire);
        if fd == CLAIMED {
            s.fd.store(FREE, Ordering::Release);
        } else if fd >= 0 {
            release(fd);
        }
    }
}

/// A descriptor the shim opened for a moment (a file it reads, a connection it answers),
/// released when dropped.
pub struct ShimFd(i32);

impl ShimFd {
    /// Creates a descriptor with `create` and adopts it, with the program's closes held
    /// off in between (see [`create_and_adopt`]).
    pub fn create(create: impl FnOnce() -> i32) -> Result<ShimFd, FdError> {
        create_and_adopt(create).map(ShimFd)
    }

    pub fn raw(&self) -> i32 {
        self.0
    }

    /// Reads into `buf` once the descriptor is verified to be still the shim's; -1
    /// (nothing read) when it is not.
    pub fn read(&self, buf: &mut [u8]) -> isize {
        if !verify(self.0) {
            return -1;
        }
        // SAFETY: `buf` is writable for its length; the descriptor is ours.
        unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) }
    }
}

impl Drop for ShimFd {
    fn drop(&mut self) {
        release(self.0);
    }
}

/// Whether `fd` is open on a file of /proc.
fn on_procfs(fd: i32) -> bool {
    // SAFETY: all-zero is a valid statfs buffer.
    let mut st: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; a number that is not open just fails.
    unsafe { libc::fstatfs(fd, &mut st) == 0 && st.f_type == libc::PROC_SUPER_MAGIC }
}

/// Opens a file of /proc for reading, out of the program's way; `None` if it cannot be
/// opened or is not on /proc.
pub fn open_proc(path: &core::ffi::CStr) -> Option<ShimFd> {
    // Opened and moved with the program's closes held off (see `create_and_adopt`).
    let f = ShimFd::create(|| {
        // SAFETY: `path` is a valid C string; the flags open it for reading only.
        unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        }
    })
    .ok()?;
    on_procfs(f.raw()).then_some(f)
}

/// Reads a whole file of /proc through a descriptor out of the program's way; empty if
/// it cannot be read, at most `max` bytes.
pub fn read_file(path: &core::ffi::CStr, max: usize) -> Vec<u8> {
    let Some(f) = open_proc(path) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    while out.len() < max {
        let n = f.read(&mut chunk);
        if n < 0 && crate::base::sys::errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n as usize]);
    }
    out.truncate(max);
    out
}

// ---------------------------------------------------------------------------------------
// The interposed calls (exported from `interpose`): a shim descriptor is a number that is
// not open, and stays open.

/// The answer for a shim descriptor: EBADF, as for a number that is not open.
fn not_open() -> c_int {
    crate::base::sys::set_errno(libc::EBADF);
    -1
}

/// The answer when the C library has no such call.
fn missing() -> c_int {
    crate::base::sys::set_errno(libc::ENOSYS);
    -1
}

/// `close(2)`.
///
/// # Safety
/// As `close(2)`.
pub unsafe fn close(fd: c_int) -> c_int {
    closing(|| {
        if verify(fd) {
            return not_open();
        }
        match real().and_then(|r| r.close) {
            // SAFETY: the C library's close, as the caller's.
            Some(close) => unsafe { close(fd) },
            // SAFETY: as the caller's close.
            None => unsafe { libc::syscall(libc::SYS_close, fd) as c_int },
        }
    })
}

/// `dup2(2)`: a shim descriptor as either number is EBADF.
///
/// # Safety
/// As `dup2(2)`.
pub unsafe fn dup2(old: c_int, new: c_int) -> c_int {
    closing(|| {
        if verify(old) || verify(new) {
            return not_open();
        }
        match real().and_then(|r| r.dup2) {
            // SAFETY: the C library's dup2, as the caller's.
            Some(dup2) => unsafe { dup2(old, new) },
            None => missing(),
        }
    })
}

/// `dup3(2)`: a shim descriptor as either number is EBADF.
///
/// # Safety
/// As `dup3(2)`.
pub unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    closing(|| {
        if verify(old) || verify(new) {
            return not_open();
        }
        match real().and_then(|r| r.dup3) {
            // SAFETY: the C library's dup3, as the caller's.
            Some(dup3) => unsafe { dup3(old, new, flags) },
            None => missing(),
        }
    })
}

/// The shim descriptors in `[first, last]`, ascending (at most [`SLOTS`]).
fn guarded_within(first: u32, last: u32) -> ([i32; SLOTS], usize) {
    let mut out = [0i32; SLOTS];
    let mut n = 0;
    for s in &TABLE {
        let fd = s.fd.load(Ordering::Acquire);
        if fd >= 0 && first <= fd as u32 && fd as u32 <= last && verify(fd) {
            out[n] = fd;
            n += 1;
        }
    }
    out[..n].sort_unstable();
    (out, n)
}

/// The parts of `[first, last]` around the shim's descriptors, in order, for `f`; stops
/// at the first part `f` fails on and returns its result.
fn around_guarded(first: u32, last: u32, mut f: impl FnMut(u32, u32) -> c_int) -> c_int {
    let (ours, n) = guarded_within(first, last);
    let mut from = first;
    for &fd in &ours[..n] {
        let fd = fd as u32;
        if fd > from {
            let r = f(from, fd - 1);
            if r != 0 {
                return r;
            }
        }
        from = fd + 1;
    }
    if from <= last {
        return f(from, last);
    }
    0
}

/// `close_range(2)`: closes (or marks close-on-exec) the range around the shim's
/// descriptors.
///
/// # Safety
/// As `close_range(2)`.
pub unsafe fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let real = real().and_then(|r| r.close_range);
    closing(|| {
        around_guarded(first, last, |a, b| match real {
            // SAFETY: the C library's close_range, on a part of the caller's range.
            Some(close_range) => unsafe { close_range(a, b, flags) },
            // SAFETY: as the caller's close_range, on a part of its range.
            None => unsafe { libc::syscall(libc::SYS_close_range, a, b, flags) as c_int },
        })
    })
}

/// `closefrom(3)`: closes every descriptor from `low` on but the shim's.
///
/// # Safety
/// As `closefrom(3)`.
pub unsafe fn closefrom(low: c_int) {
    // SAFETY: as the caller's closefrom.
    closing(|| unsafe { closefrom_around_guarded(low) })
}

/// [`closefrom`] once no shim thread is creating a descriptor.
///
/// # Safety
/// As `closefrom(3)`.
unsafe fn closefrom_around_guarded(low: c_int) {
    let low = low.max(0) as u32;
    let (ours, n) = guarded_within(low, u32::MAX);
    let tail = if n == 0 { low } else { ours[n - 1] as u32 + 1 };
    if n > 0 {
        // The parts below the last shim descriptor, with close_range itself: glibc's
        // closefrom falls back to closing what /proc/self/fd lists, the shim's too.
        around_guarded(low, tail - 1, |a, b| {
            // SAFETY: closing part of the caller's range.
            if unsafe { libc::syscall(libc::SYS_close_range, a, b, 0) } != 0 {
                for fd in a..=b {
                    close_raw(fd as i32);
                }
            }
            0
        });
    }
    match real().and_then(|r| r.closefrom) {
        // SAFETY: the C library's closefrom, above every shim descriptor.
        Some(closefrom) => unsafe { closefrom(tail as c_int) },
        // SAFETY: closing the caller's range above every shim descriptor.
        None => unsafe {
            libc::syscall(libc::SYS_close_range, tail, u32::MAX, 0);
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (i32, i32) {
        let mut p = [0; 2];
        // SAFETY: `p` is two ints.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        (p[0], p[1])
    }

    #[test]
    fn a_child_forked_during_a_creation_does_not_wait_for_it() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        // A raw fork runs none of the shim's fork handlers: the child inherits the
        // counter a creating thread raised, a thread it does not have. Its close must not
        // wait for it (a unit test's fork hung here for 20 minutes).
        note_counters_pid();
        let entered = Arc::new(AtomicBool::new(false));
        let shim = {
            let entered = entered.clone();
            std::thread::spawn(move || {
                creating(|| {
                    entered.store(true, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(500));
                })
            })
        };
        while !entered.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let t0 = crate::base::sys::monotonic_ns();
            // SAFETY: the interposed close of a number nobody opened.
            unsafe { close(1000) };
            let waited_ms = (crate::base::sys::monotonic_ns() - t0) / 1_000_000;
            // SAFETY: ends the child.
            unsafe { libc::_exit(if waited_ms < 100 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's close waited for the parent's creation: {status:#x}"
        );
        shim.join().unwrap();
    }

    #[test]
    fn a_close_waits_until_a_descriptor_being_created_is_out_of_the_way() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        // The program's close of a number it did not open, made while the shim has
        // just opened a descriptor on a low number, must not run until the shim has
        // moved it: else the program's next pipe() takes the number and the shim
        // closes the program's pipe.
        let entered = Arc::new(AtomicBool::new(false));
        let created = Arc::new(AtomicBool::new(false));
        let shim = {
            let (entered, created) = (entered.clone(), created.clone());
            std::thread::spawn(move || {
                let fd = create_and_adopt(|| {
                    entered.store(true, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    created.store(true, Ordering::SeqCst);
                    // SAFETY: opening /dev/null for reading.
                    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
                })
                .expect("adopted");
                release(fd);
            })
        };
        while !entered.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // SAFETY: the interposed close of a number nobody opened (EBADF either way).
        unsafe { close(1000) };
        assert!(
            created.load(Ordering::SeqCst),
            "the close ran while a shim descriptor was being created"
        );
        shim.join().unwrap();
    }

    #[test]
    fn adopted_descriptors_move_high_and_survive_the_programs_close() {
        let (r, w) = pipe();
        let high = adopt(r).unwrap();
        assert!(high >= floor(), "{high} below {}", floor());
        assert!(verify(high));
        // The original number is free again.
        // SAFETY: fcntl F_GETFD on a closed number fails with EBADF.
        assert_eq!(unsafe { libc::fcntl(r, libc::F_GETFD) }, -1);
        // SAFETY: as close(2).
        assert_eq!(unsafe { close(high) }, -1);
        assert_eq!(crate::base::sys::errno(), libc::EBADF);
        // SAFETY: as dup2(2).
        assert_eq!(unsafe { dup2(w, high) }, -1);
        // SAFETY: as dup3(2).
        assert_eq!(unsafe { dup3(high, w + 100, 0) }, -1);
        assert!(verify(high), "still open and the shim's");
        release(high);
        assert!(!verify(high));
        // SAFETY: as close(2), on the pipe's write end the test owns.
        assert_eq!(unsafe { close(w) }, 0);
    }

    #[test]
    fn a_number_replaced_behind_the_shim_is_forgotten() {
        let (r, w) = pipe();
        let high = adopt(r).unwrap();
        // A raw dup3 onto the number (a raw close and a reuse, in one step): the file
        // there is no longer the shim's.
        let (r2, w2) = pipe();
        // SAFETY: dup3 onto the shim's number, as a program's raw system call would.
        let moved = unsafe { libc::syscall(libc::SYS_dup3, r2, high, 0) };
        assert_eq!(moved, high as i64);
        assert!(!verify(high), "a different pipe on the same number");
        assert!(find(high).is_none(), "forgotten");
        // The program's close of its own number goes through.
        // SAFETY: as close(2).
        assert_eq!(unsafe { close(high) }, 0);
        for fd in [w, r2, w2] {
            close_raw(fd);
        }
    }

    #[test]
    fn read_file_reads_proc() {
        let maps = read_file(c"/proc/self/maps", 1 << 20);
        assert!(!maps.is_empty());
        assert!(read_file(c"/nonexistent/file", 10).is_empty());
    }

    /// Runs `close_all` in a child process (it closes the test harness's descriptors
    /// too) on two pipes and a shim descriptor: the pipes must be closed, the shim's
    /// descriptor open and still the shim's.
    fn spares_the_shims_descriptor(close_all: unsafe fn()) {
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let (r, _w) = pipe();
            let high = adopt(r).unwrap();
            let (a, b) = pipe();
            // SAFETY: the caller's close_range or closefrom, in this child.
            unsafe { close_all() };
            // SAFETY: F_GETFD on numbers.
            let ok = unsafe {
                libc::fcntl(a, libc::F_GETFD) == -1
                    && libc::fcntl(b, libc::F_GETFD) == -1
                    && libc::fcntl(high, libc::F_GETFD) >= 0
            };
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(if ok && verify(high) { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn a_forked_child_closes_its_copies_and_the_parent_keeps_its_own() {
        let (r, w) = pipe();
        let high = adopt(r).unwrap();
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            release_all_after_fork();
            // SAFETY: F_GETFD on a number.
            let closed = unsafe { libc::fcntl(high, libc::F_GETFD) } == -1;
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(if closed && find(high).is_none() { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(
            verify(high),
            "the parent's descriptor stays open and the shim's"
        );
        release(high);
        close_raw(w);
    }

    #[test]
    fn closefrom_spares_the_shims_descriptors() {
        // SAFETY: as closefrom(3).
        spares_the_shims_descriptor(|| unsafe { closefrom(3) });
    }

    #[test]
    fn close_range_spares_the_shims_descriptors() {
        // SAFETY: as close_range(2).
        spares_the_shims_descriptor(|| unsafe {
            close_range(3, u32::MAX, 0);
        });
    }
}
