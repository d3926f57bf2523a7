//! Keeping what retained versions need of memory the program is about to discard.
//!
//! munmap, madvise(DONTNEED/FREE/REMOVE), a shrinking mremap or brk, and free() of a
//! block glibc mmapped throw pages away. A page still write-protected and not yet saved
//! in this epoch holds the contents of the newest version (and of older versions with no
//! shadow of their own); once the kernel zaps it those contents are gone, and the zap
//! removes the protection without a write fault. The kernel's REMOVE event cannot help:
//! it releases the caller as soon as it is read, before anyone could copy the pages. So
//! the interposed calls save those pages *before* forwarding ([`before_discard`]), into
//! shadows stamped with the newest version, exactly as a first write would.
//!
//! The saving is done by the fault thread, never by the host thread: a host thread must
//! not take the engine lock (a write-protect fault on its own TLS, which the kernel
//! writes on its behalf for rseq, would wait for the fault thread while it holds the
//! lock the fault thread needs). The host thread posts the range, writes a byte to a pipe
//! the fault thread polls, and waits on a futex.
//!
//! If a protect pass opens a new version between the save and the zap, the new
//! version's copy of those pages is lost: [`after_discard`] notices and has the fault
//! thread record them as lost, so reading them gives a clear error, never wrong bytes.
//!
//! glibc's own trims call `__munmap`/`__madvise` directly, which no interposer sees: the
//! engine raises `M_TRIM_THRESHOLD` when it starts (so `free` never trims the heap),
//! `malloc_trim` is interposed, and what remains (a whole non-main arena heap freed at
//! once) is recorded as lost from the kernel's UNMAP event.

use crate::base::mailbox::Mailbox;
use crate::base::page::PAGE;
use crate::base::range::Range;
use crate::engine::pagemap::Pagemap;
use crate::engine::{self, Engine};
use crate::{base::shim_thread, base::sys};
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

const SAVE: u64 = 1;
const LOST: u64 = 2;
/// Pages saved per engine-lock hold, so faults and a pass are never kept waiting long.
const PAGES_PER_HOLD: usize = 64;
/// Most unpopulated pages recorded per step of a hold (a step counts as one page).
const ZERO_PAGES_PER_HOLD: usize = 4096;

/// A save restarted this many times by passes opening new versions gives up: the pages
/// it could not keep are recorded as lost instead.
const MAX_RESTARTS: u32 = 4;
/// The answer when nothing was saved.
const NOT_SAVED: u64 = u64::MAX;

/// Requests (kind, start, end) from host threads, one at a time; the answer is the
/// engine stamp (see `engine::stamp`) the pages were saved at, or NOT_SAVED.
static REQUESTS: Mailbox<3> = Mailbox::new();
/// The pipe that wakes the fault thread for a request: it polls the read end, host
/// threads write a byte to the other. A pipe rather than an eventfd: every pipe has an
/// inode of its own, so the shim can tell that the number is still its pipe (see `fds`).
static KICK_FD: AtomicI32 = AtomicI32::new(-1);
static KICK_WRITE_FD: AtomicI32 = AtomicI32::new(-1);
/// A save is under way: a pass waits for it (see [`wait_for_saves`]).
static SAVING: AtomicBool = AtomicBool::new(false);

/// Why the wake-up pipe could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickError {
    Pipe(i32),
    Adopt(crate::base::fds::FdError),
}

impl core::fmt::Display for KickError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KickError::Pipe(e) => write!(f, "pipe failed (errno {e})"),
            KickError::Adopt(e) => write!(f, "the fault thread's wake-up pipe: {e}"),
        }
    }
}

/// Creates the wake-up pipe (when the engine starts); its read end, for the fault thread.
pub fn init() -> Result<i32, KickError> {
    // Made and moved with the program's closes held off (see `fds`).
    let (read, write) = crate::base::fds::creating(|| {
        let mut ends = [-1; 2];
        // SAFETY: `ends` is two ints for the kernel to fill.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(KickError::Pipe(sys::errno()));
        }
        Ok((
            crate::base::fds::adopt(ends[0]),
            crate::base::fds::adopt(ends[1]),
        ))
    })?;
    let (read, write) = match (read, write) {
        (Ok(r), Ok(w)) => (r, w),
        (r, w) => {
            if let Ok(fd) = r {
                crate::base::fds::release(fd);
            }
            if let Ok(fd) = w {
                crate::base::fds::release(fd);
            }
            return Err(KickError::Adopt(r.and(w).unwrap_err()));
        }
    };
    KICK_WRITE_FD.store(write, Ordering::Release);
    KICK_FD.store(read, Ordering::Release);
    Ok(read)
}

/// The pipe end the fault thread polls for requests (-1 before the engine starts).
pub fn kick_fd() -> i32 {
    KICK_FD.load(Ordering::Acquire)
}

/// Whether both ends of the wake-up pipe are still the shim's (see `fds::verify`).
pub fn kick_intact() -> bool {
    let (r, w) = (
        KICK_FD.load(Ordering::Acquire),
        KICK_WRITE_FD.load(Ordering::Acquire),
    );
    r < 0 || crate::base::fds::verify(r) && crate::base::fds::verify(w)
}

/// Closes the wake-up pipe (in a forked child: the parent's fault thread answers
/// nothing here; when the engine stops). Requests waiting are answered "not saved".
pub fn close_kick() {
    for fd in [
        KICK_FD.swap(-1, Ordering::AcqRel),
        KICK_WRITE_FD.swap(-1, Ordering::AcqRel),
    ] {
        if fd >= 0 {
            crate::base::fds::release(fd);
        }
    }
    REQUESTS.wake_posters();
}

/// In a forked child: the parent's fault thread answers nothing here.
pub fn forget_after_fork() {
    close_kick();
    SAVING.store(false, Ordering::Release);
    REQUESTS.forget_after_fork();
}

/// Whether requests can be served: the engine runs and this is a host thread (a shim
/// thread never discards tracked memory, and the fault thread must never wait on
/// itself).
fn active() -> bool {
    engine::started() && KICK_FD.load(Ordering::Acquire) >= 0 && !shim_thread::is_current()
}

/// Posts a request and waits for the fault thread's answer.
fn request(kind: u64, r: Range) -> u64 {
    let _s = sys::block_signals();
    let posted = REQUESTS.post([kind, r.start as u64, r.end as u64]);
    let fd = KICK_WRITE_FD.load(Ordering::Acquire);
    if !crate::base::fds::verify(fd) {
        // Lost to a raw system call: no version is readable from now on, and the fault
        // thread stops the engine when it next wakes (it checks the pipe then).
        engine::revoke();
        return NOT_SAVED;
    }
    // SAFETY: writing one byte to our non-blocking pipe (a full pipe already wakes it).
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    // In a forked child (or once the engine stopped) the answer never comes.
    posted
        .wait(100, || KICK_FD.load(Ordering::Acquire) < 0)
        .unwrap_or(NOT_SAVED)
}

/// Before `r` is discarded: saves the pages retained versions need. Returns what to
/// hand to [`after_discard`].
pub fn before_discard(r: Range) -> Option<u64> {
    if r.is_empty() || !active() {
        return None;
    }
    // Holders keep every retained version whole (nothing kept on shadows): nothing to
    // save, and no trip to the fault thread. Taken at a stamp with no pass running; if a pass opens a version
    // before the discard is done, `after_discard` records the range lost for it.
    let before = engine::stamp();
    if before & 1 == 0 && engine::holders_keep_everything() && engine::stamp() == before {
        return Some(before);
    }
    let errno = sys::errno();
    let at = request(SAVE, r);
    sys::set_errno(errno);
    Some(at)
}

/// After `r` was discarded: if a pass opened a version since the save (or nothing was
/// saved), the pages that version did not keep are recorded as lost.
pub fn after_discard(r: Range, saved: Option<u64>) {
    let Some(at) = saved else { return };
    if at != NOT_SAVED && engine::stamp() == at {
        return;
    }
    let errno = sys::errno();
    request(LOST, r);
    sys::set_errno(errno);
}

/// Runs `discard` on `r` with the pages retained versions need saved first.
pub fn around_discard<T>(r: Range, discard: impl FnOnce() -> T) -> T {
    let saved = before_discard(r);
    let out = discard();
    after_discard(r, saved);
    out
}

/// A protect pass waits for a save under way to finish, so a large save is not cut
/// short by new versions again and again.
pub fn wait_for_saves() {
    while SAVING.load(Ordering::Acquire) {
        sys::sleep_ms(1);
    }
}

/// The fault thread's side: serves the pending request, if any. `between` is called
/// between engine-lock holds (the fault thread reads its events there).
pub fn serve(between: &mut dyn FnMut()) {
    let fd = KICK_FD.load(Ordering::Acquire);
    if crate::base::fds::verify(fd) {
        let mut bytes = [0u8; 64];
        // SAFETY: draining our non-blocking pipe into a local buffer.
        while unsafe { libc::read(fd, bytes.as_mut_ptr().cast(), bytes.len()) } > 0 {}
    }
    let Some(request) = REQUESTS.pending() else {
        return;
    };
    let [kind, start, end] = request.words;
    let r = Range::new(start as usize, end as usize);
    let answer = match kind {
        SAVE => {
            SAVING.store(true, Ordering::Release);
            let at = save(r, between);
            SAVING.store(false, Ordering::Release);
            at
        }
        LOST => {
            engine::with(|e| e.mark_lost(r));
            NOT_SAVED
        }
        _ => NOT_SAVED,
    };
    REQUESTS.answer(request.ticket, answer);
}

/// On the epoch thread, before a pass opens its version: saves the pages of `r` that
/// retained versions need, `r` being memory the last pass tracked and the coming one
/// will not though it is still mapped (a thread stack known as one only now). Once it
/// is no longer tracked nothing keeps its pages for those versions: as before a
/// discard, they are saved now. Returns whether they were.
pub fn save_before_untracking(r: Range) -> bool {
    save(r, &mut || {}) != NOT_SAVED
}

/// Saves every page of `r` that the newest version needs, all at one stamp. Returns that
/// stamp, or NOT_SAVED.
fn save(r: Range, between: &mut dyn FnMut()) -> u64 {
    let r = Range::new(
        crate::base::page::floor(r.start),
        crate::base::page::ceil(r.end),
    );
    let pagemap = Pagemap::shared();
    for _ in 0..MAX_RESTARTS {
        let mut at = r.start;
        let mut stamp = None;
        let outcome = loop {
            let step = engine::with(|e| {
                if e.pass_running {
                    return Step::Restart;
                }
                let now = engine::stamp();
                if stamp.is_some_and(|s| s != now) {
                    return Step::Restart;
                }
                stamp = Some(now);
                if e.version == 0 || e.incomplete || e.pool.retained().is_none() {
                    return Step::Done;
                }
                // Holders keep their versions whole but for what they kept on shadows
                // (see `HeldVersion`): only that is saved for them.
                let part = if e.only_holders_retained() {
                    match e.first_shadowed_within(Range::new(at, r.end)) {
                        Some(part) => part,
                        None => return Step::Done,
                    }
                } else {
                    Range::new(at, r.end)
                };
                match e.save_before_discard(part, &pagemap) {
                    Some(next) if next < r.end => Step::Continue(next),
                    Some(_) => Step::Done,
                    None => Step::Full,
                }
            });
            match step {
                None | Some(Step::Full) => return NOT_SAVED,
                Some(Step::Done) => break stamp,
                Some(Step::Restart) => break None,
                Some(Step::Continue(next)) => {
                    at = next;
                    between();
                }
            }
        };
        if let Some(s) = outcome {
            return s;
        }
        between();
        wait_for_pass(between);
    }
    NOT_SAVED
}

enum Step {
    Continue(usize),
    Done,
    Restart,
    Full,
}

/// Waits for the running pass to end, reading events meanwhile (the pass needs them
/// read to protect).
fn wait_for_pass(between: &mut dyn FnMut()) {
    while engine::stamp() & 1 == 1 {
        between();
        sys::sleep_ms(1);
    }
}

impl Engine {
    /// Saves up to PAGES_PER_HOLD pages of `r` that are tracked at the newest version, not
    /// saved in it yet and not lost; returns where it stopped, or None when the shadow
    /// budget ran out (the snapshot is then given up, as on a trap).
    pub fn save_before_discard(&mut self, r: Range, pagemap: &Pagemap) -> Option<usize> {
        let v = self.version;
        let mut p = r.start;
        let mut budget = PAGES_PER_HOLD;
        while p < r.end && budget > 0 {
            // Skip to the next tracked page.
            let Some(t) = self.tracked_at_or_after(p) else {
                return Some(r.end);
            };
            if t.range.start >= r.end {
                return Some(r.end);
            }
            p = p.max(t.range.start);
            let run_end = t.range.end.min(r.end);
            if t.since > v {
                p = run_end;
                continue;
            }
            // Runs of pages to save, at most `budget` pages in all.
            while p < run_end && budget > 0 {
                if self.saved_or_lost(p) {
                    p += PAGE;
                    budget -= 1;
                    continue;
                }
                // Never-written pages hold zeros: recorded, not copied (a program that frees
                // a large buffer it touched a little of, as sort does with its default
                // buffer, would otherwise have the whole of it copied).
                let zeros = pagemap.run(p, run_end, ZERO_PAGES_PER_HOLD, false);
                if zeros > 0 && self.mark_zero(Range::new(p, p + zeros * PAGE)) {
                    p += zeros * PAGE;
                    budget -= 1;
                    continue;
                }
                let run = if zeros > 0 {
                    zeros // no room to record them: copied
                } else {
                    pagemap.run(p, run_end, budget, true).max(1)
                };
                let (n, copied) = self.save_run(p, (p + run * PAGE).min(run_end), budget)?;
                crate::stats::add(
                    memshadow_format::stats::Counter::PagesPreserved,
                    copied as u64,
                );
                p += n * PAGE;
                budget -= n;
            }
        }
        self.publish();
        Some(p)
    }
}
