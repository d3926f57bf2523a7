//! Thread stacks of the host, which are not tracked unless `MEMSHADOW_TRACK=heap+stacks`.
//!
//! glibc maps thread stacks with its internal `__mmap`, so they look like any other
//! anonymous memory in `/proc/self/maps`. The interposed `pthread_create` starts each
//! thread through [`thread_start`], which records the thread's stack range here; a
//! pthread key destructor moves it to the kept stacks when the thread exits (also
//! through `pthread_exit`), since glibc keeps the stacks it mapped for later threads,
//! while rescans find them still there ([`KEPT`]). Rescans classify memory inside a
//! recorded or kept stack as a stack. Whatever a snapshot tracked and a later one
//! finds to be a stack has its pages saved for the older versions as it leaves tracking
//! (`epoch`), or as its thread exits when the newest pass tracks it ([`forget_stack`]).
//!
//! Between glibc mapping a new thread's stack (inside `pthread_create`) and the thread
//! recording it, the stack is plain anonymous memory in the maps file. A snapshot that
//! listed it then would track it, and the next one, finding it a stack, would stop
//! tracking it: the older version would lose it (its reads refused as discarded). So
//! threads being started are counted ([`STARTING`]), and a rescan on a shim thread waits
//! for them and reads again if one began meanwhile (see [`wait_for_starts`]).

use crate::base::forward::{self, StartRoutine};
use crate::base::range::{Range, RangeList};
use crate::base::sync::SpinLock;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use memshadow_format::stats::Counter;

static STACKS: RangeList<4096> = RangeList::new();
/// Stacks of exited threads that glibc keeps for later threads (those it mapped itself,
/// with a guard page): still stacks, never the program's data, so never tracked; each
/// rescan checks that one is still there (see `maps::kept_stacks_present`).
static KEPT: RangeList<4096> = RangeList::new();
/// Most ranges [`PASS_TRACKED`] holds; past that every stack counts as tracked.
const PASS_TRACKED_MAX: usize = 4096;

/// The memory the newest protect pass tracks, sorted, as the epoch thread published it
/// (see [`publish_tracked`]): an exiting thread checks its stack against it.
struct PassTracked {
    ranges: [Range; PASS_TRACKED_MAX],
    len: usize,
    /// More ranges than room: assume every stack is tracked.
    overflow: bool,
}

static PASS_TRACKED: SpinLock<PassTracked> = SpinLock::new(PassTracked {
    ranges: [Range::EMPTY; PASS_TRACKED_MAX],
    len: 0,
    overflow: false,
});

/// Publishes what the coming protect pass tracks (the epoch thread, before it opens the
/// version; `tracked` is sorted). A stack glibc kept from an exited thread is plain
/// memory to a pass that lists it meanwhile, so a later thread may run on memory the
/// newest version tracks.
pub fn publish_tracked(tracked: impl ExactSizeIterator<Item = Range>) {
    let _s = crate::base::sys::block_signals();
    let mut p = PASS_TRACKED.lock();
    p.overflow = tracked.len() > PASS_TRACKED_MAX;
    p.len = 0;
    for r in tracked.take(PASS_TRACKED_MAX) {
        let i = p.len;
        p.ranges[i] = r;
        p.len += 1;
    }
}

/// Whether the newest pass tracks any part of `r`.
fn pass_tracks_any(r: Range) -> bool {
    let _s = crate::base::sys::block_signals();
    let p = PASS_TRACKED.lock();
    if p.overflow {
        return true;
    }
    let listed = &p.ranges[..p.len];
    let i = listed.partition_point(|t| t.end <= r.start);
    listed.get(i).is_some_and(|t| t.start < r.end)
}
static KEY: AtomicU32 = AtomicU32::new(0);
static KEY_READY: AtomicBool = AtomicBool::new(false);
/// Threads the interposed `pthread_create` is starting whose stacks are not recorded yet.
static STARTING: AtomicUsize = AtomicUsize::new(0);
/// Threads the interposed `pthread_create` began to start, ever (see [`wait_for_starts`]).
static BEGUN: AtomicU64 = AtomicU64::new(0);

/// A thread start begins: before glibc maps its stack. `STARTING` first, so a reader
/// that saw no start pending and the old `BEGUN` sees this start by `BEGUN` afterwards.
pub(in crate::tracking) fn start_begins() {
    STARTING.fetch_add(1, Ordering::SeqCst);
    BEGUN.fetch_add(1, Ordering::SeqCst);
}

/// A thread start is over: its stack is recorded, or it will never run.
pub(in crate::tracking) fn start_ends() {
    STARTING.fetch_sub(1, Ordering::SeqCst);
}

/// Waits, sleeping, up to `limit_ms` for every thread being started to record its stack.
/// Returns the count of starts begun, to be given to [`no_start_since`] after the maps
/// file is read, or None when starts were still pending at the limit.
pub fn wait_for_starts(limit_ms: u64) -> Option<u64> {
    let mut waited = 0;
    loop {
        let begun = BEGUN.load(Ordering::SeqCst);
        if STARTING.load(Ordering::SeqCst) == 0 {
            return Some(begun);
        }
        if waited >= limit_ms {
            return None;
        }
        crate::base::sys::sleep_ms(1);
        waited += 1;
    }
}

/// Whether no thread start began since [`wait_for_starts`] returned `begun`: then no
/// stack was mapped but not yet recorded in between.
pub fn no_start_since(begun: u64) -> bool {
    BEGUN.load(Ordering::SeqCst) == begun
}

/// In a forked child the threads the parent was starting do not exist, nor do the
/// parent's passes.
pub fn forget_after_fork() {
    STARTING.store(0, Ordering::SeqCst);
    let mut p = PASS_TRACKED.lock();
    p.len = 0;
    p.overflow = false;
}

pub(in crate::tracking) fn register(r: Range) {
    // A thread on a kept stack: the stack is a live thread's again.
    while KEPT.remove_first(|k| k.overlaps(&r)).is_some() {}
    STACKS.insert(r);
}

/// The kept stacks of exited threads, sorted (allocates from the shim's arena).
pub fn kept() -> Vec<Range> {
    let mut k = KEPT.to_vec();
    k.sort_unstable_by_key(|r| r.start);
    k
}

/// Forgets the kept stack `r`: the maps file no longer shows it as glibc keeps it.
pub fn forget_kept(r: Range) {
    KEPT.remove_first(|k| *k == r);
}

/// Forgets the stack starting at `start`, and returns it.
pub(in crate::tracking) fn unregister_starting_at(start: usize) -> Option<Range> {
    STACKS.remove_first(|r| r.start == start)
}

/// The recorded stacks (allocates from the shim's arena: not for interposed paths).
pub fn snapshot() -> Vec<Range> {
    STACKS.to_vec()
}

/// The pthread key destructor, run as a thread started by the host exits. glibc then
/// discards most of the stack with its own `madvise` (which no interposer sees) and keeps
/// it for a later thread. A stack the newest pass tracks (a kept stack it listed as
/// plain memory, see [`publish_tracked`]) has the pages retained versions need saved
/// first, as before any discard; a version opened between this save and glibc's discard
/// learns of the discard from the kernel's REMOVE event.
extern "C" fn forget_stack(key_value: *mut c_void) {
    let (start, guarded) = (key_value as usize & !1, key_value as usize & 1 == 1);
    if let Some(stack) = unregister_starting_at(start) {
        // glibc keeps the stacks it mapped (they have a guard page); a stack the program
        // gave (pthread_attr_setstack) is the program's memory again.
        if guarded {
            KEPT.insert(stack);
        }
        if let Some(save) = SAVE_BEFORE_DISCARD.get() {
            if pass_tracks_any(stack) {
                save(stack);
            }
        }
    }
    crate::stats::release_stripe();
}

/// What saves the pages of a range retained versions need before it is discarded (set
/// by the engine when it starts; tracking sits below the engine and cannot call it).
static SAVE_BEFORE_DISCARD: std::sync::OnceLock<fn(Range)> = std::sync::OnceLock::new();

/// Sets what an exiting thread calls to save its stack's pages when the newest pass
/// tracks it (see [`forget_stack`]); the first setting stays.
pub fn save_before_discard_with(save: fn(Range)) {
    let _ = SAVE_BEFORE_DISCARD.set(save);
}

/// Creates the pthread key whose destructor forgets a thread's stack at exit.
pub fn init() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor is a plain extern "C" fn.
    if unsafe { libc::pthread_key_create(&mut key, Some(forget_stack)) } == 0 {
        KEY.store(key, Ordering::Relaxed);
        KEY_READY.store(true, Ordering::Release);
    }
}

/// The calling thread's stack as glibc reports it, and whether it has a guard page
/// (glibc mapped it; a stack the program gave has none).
fn current_stack() -> Option<(Range, bool)> {
    // SAFETY: `attr` is initialised by pthread_getattr_np before use and destroyed after;
    // the out-pointers are valid.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut c_void = core::ptr::null_mut();
        let mut size: usize = 0;
        let mut guard: usize = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0
            && libc::pthread_attr_getguardsize(&attr, &mut guard) == 0;
        libc::pthread_attr_destroy(&mut attr);
        (ok && !addr.is_null())
            .then(|| (Range::new(addr as usize, addr as usize + size), guard > 0))
    }
}

/// What the interposed `pthread_create` passes to the new thread.
struct ThreadStart {
    start: StartRoutine,
    arg: *mut c_void,
}

extern "C" fn thread_start(p: *mut c_void) -> *mut c_void {
    // SAFETY: `p` is the ThreadStart written by `create`, handed to this thread alone.
    let ThreadStart { start, arg } = unsafe { (p as *mut ThreadStart).read() };
    if let Some(r) = forward::real() {
        // SAFETY: the block came from the real malloc in `create`.
        unsafe { (r.free)(p) };
    }
    if let Some((stack, guarded)) = current_stack() {
        register(stack);
        if KEY_READY.load(Ordering::Acquire) {
            // The stack's start (page-aligned) with whether it is guarded in bit 0.
            let value = stack.start | guarded as usize;
            // SAFETY: the key exists; the value is only a number handed back to
            // forget_stack, never dereferenced.
            unsafe {
                libc::pthread_setspecific(KEY.load(Ordering::Relaxed), value as *const c_void)
            };
        }
    }
    start_ends();
    crate::stats::add(Counter::ThreadsStarted, 1);
    start(arg)
}

/// The interposed `pthread_create`: starts the thread through [`thread_start`] when the
/// shim is tracking, directly otherwise.
///
/// # Safety
/// Same contract as `pthread_create(3)`.
pub unsafe fn create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    let Some(real) = forward::real_blocking() else {
        return libc::EAGAIN;
    };
    if !crate::tracking::regions::tracking() {
        // SAFETY: forwarded unchanged.
        return unsafe { (real.pthread_create)(thread, attr, start, arg) };
    }
    // The hand-off block comes from the host's allocator (uncounted): the new thread
    // frees it before running the host's code.
    // SAFETY: plain allocation of a small block.
    let p = unsafe { (real.malloc)(core::mem::size_of::<ThreadStart>()) } as *mut ThreadStart;
    if p.is_null() {
        // SAFETY: forwarded unchanged.
        return unsafe { (real.pthread_create)(thread, attr, start, arg) };
    }
    // SAFETY: `p` is a fresh block large and aligned enough for ThreadStart.
    unsafe { p.write(ThreadStart { start, arg }) };
    start_begins();
    // SAFETY: the caller's arguments are forwarded; only the start routine is wrapped.
    let rc = unsafe { (real.pthread_create)(thread, attr, thread_start, p.cast()) };
    if rc != 0 {
        start_ends();
        // SAFETY: the thread was not created, so the block is still ours.
        unsafe { (real.free)(p.cast()) };
    }
    rc
}

pub(crate) fn lock_for_fork() {
    STACKS.lock_for_fork();
    KEPT.lock_for_fork();
    PASS_TRACKED.acquire();
}

pub(crate) fn unlock_after_fork() {
    PASS_TRACKED.release();
    KEPT.unlock_after_fork();
    STACKS.unlock_after_fork();
}
