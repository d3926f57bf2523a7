//! The trap hand-off: the fault thread hands every trap it serves to the prefetch thread
//! (what the predictors learn from) through a bounded lock-free queue, made once and
//! never grown, so the fault path never allocates or blocks: when it is full the note is
//! dropped and counted (`queue_dropped`). It also wakes the prefetch thread, at every
//! trap while the predictors' answers to traps are worth acting on at once ("eager"),
//! else once a batch has queued up (a wake-up is a system call on the fault path).

use crate::predict::FaultNote;
use crate::{base::page, base::sys, stats};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use crossbeam_queue::ArrayQueue;
use memshadow_format::stats::Counter;

/// Fault notes waiting for the prefetch thread; beyond this many they are dropped.
const CAPACITY: usize = 8192;
/// Notes that wake the thread when it is not eager.
const WAKE_BATCH: usize = 64;

/// A trap as the fault thread hands it over: the note and the version it was in.
#[derive(Clone, Copy)]
pub struct Handed {
    pub note: FaultNote,
    pub version: u64,
}

static QUEUE: AtomicPtr<ArrayQueue<Handed>> = AtomicPtr::new(core::ptr::null_mut());
/// Futex word the prefetch thread sleeps on; bumped to wake it.
static WAKE: AtomicU32 = AtomicU32::new(0);
static SLEEPING: AtomicBool = AtomicBool::new(false);
/// Set while the predictor's answers to traps have been worth acting on at once: then
/// every trap wakes the thread; otherwise only a fuller queue does.
static EAGER: AtomicBool = AtomicBool::new(true);

/// Makes the queue (when the prefetch thread starts). A previous one (the parent's, in
/// a forked child) is left as it is: the child never frees what its parent's threads
/// may have been using.
pub fn open() {
    let queue = Box::into_raw(Box::new(ArrayQueue::new(CAPACITY)));
    QUEUE.store(queue, Ordering::Release);
}

/// In a forked child: no prefetch thread reads the parent's queue here.
pub fn forget_after_fork() {
    SLEEPING.store(false, Ordering::Release);
    QUEUE.store(core::ptr::null_mut(), Ordering::Release);
}

/// The fault thread hands over a trap at `addr` by thread `tid` in `version`, read at
/// `ns`, that saved `pages` pages from there on (never blocks: when the queue is full
/// the note is dropped and counted).
pub fn note_fault(addr: usize, tid: u32, version: u64, ns: u64, pages: u32) {
    let q = QUEUE.load(Ordering::Acquire);
    if q.is_null() {
        return;
    }
    let h = Handed {
        note: FaultNote {
            page: page::number(addr),
            tid,
            ns,
            pages,
        },
        version,
    };
    // SAFETY: the queue is leaked when made and never freed.
    let q = unsafe { &*q };
    if q.push(h).is_err() {
        stats::add(Counter::QueueDropped, 1);
    }
    if EAGER.load(Ordering::Relaxed) || q.len() >= WAKE_BATCH {
        wake();
    }
}

/// The next note, for the prefetch thread.
pub fn pop() -> Option<Handed> {
    let q = QUEUE.load(Ordering::Acquire);
    // SAFETY: the queue is leaked when made and never freed.
    (!q.is_null()).then(|| unsafe { &*q }.pop()).flatten()
}

/// Whether every trap should wake the prefetch thread (see the module doc).
pub fn set_eager(eager: bool) {
    EAGER.store(eager, Ordering::Relaxed);
}

/// Wakes the prefetch thread if it sleeps.
pub fn wake() {
    if SLEEPING.load(Ordering::Acquire) {
        SLEEPING.store(false, Ordering::Release);
        WAKE.fetch_add(1, Ordering::AcqRel);
        sys::futex_wake(&WAKE);
    }
}

/// The prefetch thread sleeps until woken (a trap, a new version) or for `ms`.
pub fn idle(ms: u64) {
    let seen = WAKE.load(Ordering::Acquire);
    SLEEPING.store(true, Ordering::SeqCst);
    let q = QUEUE.load(Ordering::Acquire);
    // SAFETY: the queue is leaked when made and never freed.
    let has_notes = !q.is_null() && !unsafe { &*q }.is_empty();
    if !has_notes {
        sys::futex_wait(&WAKE, seen, ms);
    }
    SLEEPING.store(false, Ordering::Release);
}
