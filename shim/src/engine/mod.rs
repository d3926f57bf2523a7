//! The snapshot engine, as a layer: the `Engine` (below), its shadows (`shadow`), the
//! userfaultfd interface (`uffd`), what to protect again (`reprotect`), the fault-around
//! window, reading a version back (`readback`), the fault thread (`fault`), the saves
//! before discards (`preserve`), the boundary copy and `save_ahead`, the trap hand-off to
//! prediction (`trap_notes`), `pagemap` and the overhead governor.
//!
//! The snapshot engine's shared state, started lazily by the first snapshot request.
//!
//! Until a snapshot is asked for (API call, `memshadow snapshot`, or
//! `MEMSHADOW_INTERVAL_MS`), nothing is registered with userfaultfd and the program pays
//! only the interposition cost.
//!
//! Lock rules (the fault thread must never wait on a host thread):
//! - [`with`] takes the engine lock. Only shim threads and host threads inside the shim
//!   with signals blocked take it, and nothing allocates or takes another shim lock while
//!   holding it (a forking host thread holds the arena and region locks, and may fault
//!   on tracked memory while it does).
//! - Tracked pages are copied with `process_vm_readv` on our own pid, so a page the host
//!   unmaps meanwhile gives EFAULT instead of crashing the host.

pub mod boundary_copy;
pub mod changes;
pub mod fault;
pub mod fault_window;
pub mod governor;
pub mod holder;
pub mod pagemap;
pub mod preserve;
pub mod readback;
pub mod reprotect;
pub mod save_ahead;
pub mod shadow;
pub mod trap_notes;
pub mod uffd;
pub mod written;

use crate::base::page::{self, PAGE};
use crate::base::range::Range;
use crate::base::sync::SpinLock;
use crate::config::Config;
use crate::engine::fault_window::FaultWindow;
use crate::engine::reprotect::Reprotect;
use crate::engine::shadow::ShadowPool;
use crate::engine::uffd::Uffd;
use crate::{base::sys, stats};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use memshadow_format::stats::Counter;

/// A range registered with userfaultfd and the first version whose snapshot holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedRange {
    pub range: Range,
    pub since: u64,
}

/// A range an older snapshot held that the newest one does not (unmapped, or no
/// longer writable anonymous memory): tracked at versions `since` up to, not
/// including, `until`. Only shadows can tell what it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetiredRange {
    pub range: Range,
    pub since: u64,
    pub until: u64,
}

/// How version `v` holds a page (see [`Engine::holding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// Tracked by the newest snapshot: its shadow, else the live page.
    Tracked,
    /// Tracked then, not any more: its shadow only.
    Retired,
}

/// Most pages saved in one run (the MEMSHADOW_FAULT_AROUND maximum).
pub const MAX_RUN: usize = 512;

/// Most faults held during one protect pass (each blocked thread holds at most one).
pub const HELD_CAPACITY: usize = 4096;
/// Most unprotects waiting to be retried (see [`Engine::retry`]).
pub const RETRY_CAPACITY: usize = 4096;
/// Most ranges remembered as lost (see [`Engine::lost`]).
pub const LOST_CAPACITY: usize = 4096;
/// Most ranges remembered as discarded while unpopulated (see [`Engine::zeros`]).
pub const ZEROS_CAPACITY: usize = 4096;
/// Most unprotected runs and kernel-reported changes remembered between two passes
/// (beyond them the next pass protects everything).
pub const UNPROTECTED_CAPACITY: usize = 32768;
pub const CHANGED_CAPACITY: usize = 4096;

/// Most planned runs published for the fault path's late count.
pub const QUEUED_CAPACITY: usize = 16384;

/// What the fault path needs to know of the prefetcher's queue (kept in the engine, read
/// and written under its lock): the runs planned for the newest version, in address
/// order. A trap on one of their pages is late: the page was planned, not yet copied.
pub struct Queued {
    version: u64,
    planned: Vec<Range>,
}

impl Queued {
    pub fn new() -> Queued {
        Queued {
            version: 0,
            planned: Vec::with_capacity(QUEUED_CAPACITY),
        }
    }

    /// Whether `page` was queued for version `v` (a trap on it is late).
    pub fn holds(&self, page: usize, v: u64) -> bool {
        if self.version != v {
            return false;
        }
        let i = self.planned.partition_point(|r| r.end <= page);
        self.planned.get(i).is_some_and(|r| r.start <= page)
    }

    /// Publishes the plan of version `v` (sorted, as many runs as fit; never allocates).
    pub fn set_plan(&mut self, v: u64, runs: &[Range]) {
        self.version = v;
        self.planned.clear();
        let n = runs.len().min(self.planned.capacity());
        self.planned.extend_from_slice(&runs[..n]);
    }
}

pub struct Engine {
    pool: ShadowPool,
    /// The newest snapshot version; 0 before the first.
    version: u64,
    /// A protect pass is running: write faults are held until it ends.
    pass_running: bool,
    /// Faults held during the running pass (preallocated, never grows).
    held: Vec<usize>,
    /// What the newest snapshot covers, sorted by address.
    tracked: Vec<TrackedRange>,
    /// What retained older snapshots covered and the newest does not.
    retired: Vec<RetiredRange>,
    /// The newest snapshot could not be completed (shadow budget exhausted).
    incomplete: bool,
    /// Ranges to unprotect (and so wake) that the kernel refused with EAGAIN because an
    /// event was queued; the fault thread retries them after reading events.
    retry: Vec<Range>,
    /// Ranges unmapped or zapped during an epoch, with that epoch's version: pages there
    /// without a shadow no longer hold what older versions saw. When the list is full,
    /// `lost_all_since` takes over for every page.
    lost: Vec<(Range, u64)>,
    lost_all_since: Option<u64>,
    /// Ranges found unpopulated (never written, so all zero) when a trap beside them or
    /// a discard would have copied them, with the newest version then: each stands for
    /// zero-filled shadows stamped with that version, which were not copied (see
    /// `fault::resolve`, `preserve`). When the list is full, such pages are copied.
    zeros: Vec<(Range, u64)>,
    /// How many pages a trap saves (see `fault_window`).
    fault_window: FaultWindow,
    /// What the next protect pass must protect again.
    reprotect: Reprotect,
    /// What the prefetcher has queued for the newest version (for its late count).
    queued: Queued,
    /// Trap latency histogram: bucket i counts traps of [2^i, 2^(i+1)) ns.
    trap_ns: [u64; 40],
    trap_max_ns: u64,
    /// The userfaultfd the engine's ioctls go to (see [`Engine::attach`]); -1 before.
    uffd: i32,
    /// Versions held by holder children (`MEMSHADOW_BACKEND=holder`), at most one per
    /// retained version (preallocated). A holder whose version is evicted stays here
    /// until the epoch thread takes it out to release it (see `holder`).
    holders: Vec<crate::engine::holder::HeldVersion>,
    /// The pages written in holder epochs (see `written`).
    written: crate::engine::written::WrittenLists,
}

impl Engine {
    /// An engine over `pool` with `config`'s fault-around, before its first version; all
    /// its lists preallocated (nothing allocates under the engine lock).
    pub fn new(pool: ShadowPool, config: &Config) -> Engine {
        Engine {
            pool,
            version: 0,
            pass_running: false,
            held: Vec::with_capacity(HELD_CAPACITY),
            tracked: Vec::new(),
            retired: Vec::new(),
            incomplete: false,
            retry: Vec::with_capacity(RETRY_CAPACITY),
            lost: Vec::with_capacity(LOST_CAPACITY),
            zeros: Vec::with_capacity(ZEROS_CAPACITY),
            lost_all_since: None,
            fault_window: FaultWindow::new(config.fault_around),
            reprotect: Reprotect::with_capacity(UNPROTECTED_CAPACITY, CHANGED_CAPACITY),
            queued: Queued::new(),
            trap_ns: [0; 40],
            trap_max_ns: 0,
            uffd: -1,
            holders: Vec::with_capacity(crate::engine::holder::capacity(config.max_versions)),
            written: crate::engine::written::WrittenLists::new(),
        }
    }

    /// Hands the engine the userfaultfd its tracked memory is registered with: the one
    /// it protects, unprotects and wakes through from now on. The descriptor is the
    /// caller's: it stays open while the engine lives (the engine never closes it).
    pub fn attach(&mut self, uffd: i32) {
        self.uffd = uffd;
    }

    /// A view of the attached userfaultfd for ioctls.
    fn uffd(&self) -> core::mem::ManuallyDrop<Uffd> {
        // SAFETY: `attach`'s caller keeps the descriptor open while the engine lives
        // (`tear_down` takes the engine out of its lock before the descriptor goes); -1
        // before it is attached makes every ioctl fail with EBADF.
        unsafe { Uffd::borrowed(self.uffd) }
    }

    /// The shadow pool, to read (the engine alone changes it).
    pub fn pool(&self) -> &ShadowPool {
        &self.pool
    }

    /// Whether pages may be copied ahead for version `v` now: it is the newest, no pass
    /// runs and it was not given up.
    pub fn copying_for(&self, v: u64) -> bool {
        self.version == v && !self.pass_running && !self.incomplete && !self.newest_held()
    }

    /// Keeps version `v` (and every newer one) from eviction (see `ShadowPool::pin`).
    pub fn pin(&mut self, v: u64) -> Result<(), crate::engine::shadow::PinError> {
        self.pool.pin(v)
    }

    /// Undoes one [`Engine::pin`] of `v`.
    pub fn unpin(&mut self, v: u64) {
        self.pool.unpin(v)
    }

    /// Publishes the prefetcher's plan for version `v`, if `v` is still the newest (for
    /// the fault path's late count).
    pub fn set_plan(&mut self, v: u64, runs: &[Range]) {
        if self.version == v {
            self.queued.set_plan(v, runs);
        }
    }

    /// What a protect pass needs to prepare the next version: its number, the
    /// capacities of the reprotect lists it will take, and the oldest retained version
    /// (the next one, when none is).
    pub fn next_version(&self) -> (u64, (usize, usize), u64) {
        let oldest = self.pool.retained().map_or(self.version + 1, |r| r.0);
        (self.version + 1, self.reprotect.capacities(), oldest)
    }

    /// Opens version `v`: from here on write faults are held until [`end_pass`]
    /// (Self::end_pass), the pool stamps new shadows with `v`, what retained versions
    /// no longer need is forgotten, and `work` receives what lost its protection since
    /// scan `scan` began. Refused (false) while the fault thread holds discard events
    /// it has read: the kernel lets a discarding thread go on as soon as its event is
    /// read, so such an event belongs before this version.
    pub fn open_version(
        &mut self,
        v: u64,
        scan: u64,
        work: &mut crate::engine::reprotect::PassWork,
    ) -> bool {
        if crate::engine::fault::events_in_hand() {
            return false;
        }
        // Before the stamp changes: a discard that saw the old stamp and skipped its
        // save for holders is then recorded lost for this version (`after_discard`).
        ONLY_HOLDERS.store(false, Ordering::Release);
        self.version = v;
        self.set_pass_running(true);
        self.incomplete = false;
        self.pool.begin_version(v);
        self.prune_lost();
        self.reprotect.take(scan, work);
        self.wake_instead_of_retrying();
        true
    }

    /// At the snapshot's instant, the engine takes the pass's lists of what version `v`
    /// tracks and what retained versions tracked; the previous lists come back in their
    /// place (to be freed once the pass is over, never under the engine lock).
    pub fn install_lists(
        &mut self,
        tracked: &mut Vec<TrackedRange>,
        retired: &mut Vec<RetiredRange>,
    ) {
        core::mem::swap(&mut self.tracked, tracked);
        core::mem::swap(&mut self.retired, retired);
    }

    /// Ends the protect pass: the faults held during it come back in `held` (swapped
    /// with an empty list of the same capacity) for the caller to [`resolve`]
    /// (Self::resolve) one hold each; a pass that could not protect everything gives
    /// the version up.
    pub fn end_pass(&mut self, held: &mut Vec<usize>, refused: bool) {
        self.set_pass_running(false);
        core::mem::swap(&mut self.held, held);
        if refused {
            // Part of the memory could not be protected: this snapshot would not be a
            // state that existed. Abandon it, as when the shadow budget runs out.
            self.abandon();
        }
        self.publish();
    }

    /// The tracked range holding `page` at version `v`, if any.
    pub fn tracked_at(&self, page: usize, v: u64) -> Option<&TrackedRange> {
        self.tracked_at_or_after(page)
            .filter(|t| t.range.start <= page && t.since <= v)
    }

    /// Whether `page` must not be saved in the newest version: it is saved already, or it
    /// was zapped in this epoch (it lost its protection without a fault, so what is
    /// there now is not the snapshot's; see `readback`).
    pub fn saved_or_lost(&self, page: usize) -> bool {
        self.pool.has(page, self.version)
            || self.zeroed_now(page)
            || self.lost_since(page, self.version)
    }

    /// Whether `page` was recorded zero at the newest version (see [`Engine::zeros`]):
    /// saved, as far as this version is concerned (and unprotected since).
    fn zeroed_now(&self, page: usize) -> bool {
        let v = self.version;
        self.zeros
            .iter()
            .rev()
            .take_while(|&&(_, z)| z == v)
            .any(|&(r, _)| r.start <= page && page < r.end)
    }

    /// Saves the pages from `first` on into shadows stamped with the newest version, as
    /// a first write would: at most `max` pages (up to [`MAX_RUN`]), below `end`, up to
    /// the first one [`saved_or_lost`](Self::saved_or_lost). Slots of pages unmapped
    /// under us are zeroed, never left with another page's bytes. Returns the pages
    /// taken and the pages copied, or `None` when the shadow budget ran out (the
    /// snapshot is then given up).
    pub fn save_run(&mut self, first: usize, end: usize, max: usize) -> Option<(usize, usize)> {
        let mut slots = [core::ptr::null_mut::<u8>(); MAX_RUN];
        let mut n = 0;
        let mut p = first;
        while p < end && n < max.min(MAX_RUN) && !self.saved_or_lost(p) {
            match self.pool.alloc(p) {
                Ok(slot) => slots[n] = self.pool.slot_ptr(slot),
                Err(_) => {
                    self.give_up();
                    return None;
                }
            }
            n += 1;
            p += PAGE;
        }
        if n == 0 {
            return Some((0, 0));
        }
        let copied = copy_tracked_pages(first, &slots[..n]);
        for &s in &slots[copied..n] {
            // SAFETY: each slot is PAGE bytes of the pool.
            unsafe { core::ptr::write_bytes(s, 0, PAGE) };
        }
        Some((n, copied))
    }

    /// Whether and how version `v` holds `page`.
    pub fn holding(&self, page: usize, v: u64) -> Option<Holding> {
        if self.tracked_at(page, v).is_some() {
            return Some(Holding::Tracked);
        }
        self.retired
            .iter()
            .any(|r| r.since <= v && v < r.until && r.range.start <= page && page < r.range.end)
            .then_some(Holding::Retired)
    }

    /// Records one trap's latency and publishes the percentiles.
    pub fn record_trap(&mut self, ns: u64) {
        let b = (63 - ns.max(1).leading_zeros()) as usize;
        self.trap_ns[b.min(self.trap_ns.len() - 1)] += 1;
        self.trap_max_ns = self.trap_max_ns.max(ns);
        crate::engine::governor::note_trap(ns);
        let total: u64 = self.trap_ns.iter().sum();
        let pct = |p: u64| {
            let want = (total * p).div_ceil(100);
            let mut seen = 0;
            for (i, n) in self.trap_ns.iter().enumerate() {
                seen += n;
                if seen >= want {
                    // The bucket's upper bound (never above the longest trap), in us.
                    return (2u64 << i).min(self.trap_max_ns) / 1000;
                }
            }
            0
        };
        stats::set(Counter::Traps, total);
        stats::set(Counter::TrapUsP50, pct(50));
        stats::set(Counter::TrapUsP99, pct(99));
        stats::set(Counter::TrapUsMax, self.trap_max_ns / 1000);
    }

    /// Records that `r` was unmapped or zapped in the current epoch: its pages tracked
    /// at the newest version and not saved in it no longer hold what that version (and
    /// older ones without a shadow of their own) saw.
    pub fn mark_lost(&mut self, r: Range) {
        let v = self.version;
        if v == 0 {
            return;
        }
        let mut p = page::floor(r.start);
        while p < r.end {
            let Some(t) = self.tracked_at_or_after(p).copied() else {
                return;
            };
            if t.range.start >= r.end {
                return;
            }
            p = p.max(t.range.start);
            let end = t.range.end.min(r.end);
            while p < end {
                if self.pool.has(p, v) {
                    p += PAGE;
                    continue;
                }
                let first = p;
                while p < end && !self.pool.has(p, v) {
                    p += PAGE;
                }
                self.push_lost(Range::new(first, p), v);
            }
        }
    }

    fn push_lost(&mut self, r: Range, v: u64) {
        if let Some((last, lv)) = self.lost.last_mut() {
            if *lv == v && last.end == r.start {
                last.end = r.end;
                return;
            }
        }
        if self.lost.len() < self.lost.capacity() {
            self.lost.push((r, v));
        } else if self.lost_all_since.is_none() {
            self.lost_all_since = Some(v);
        }
    }

    /// The first tracked range that ends after `page`.
    pub fn tracked_at_or_after(&self, page: usize) -> Option<&TrackedRange> {
        let i = self.tracked.partition_point(|t| t.range.end <= page);
        self.tracked.get(i)
    }

    /// Starts or ends a protect pass, and publishes it (see [`stamp`]).
    pub fn set_pass_running(&mut self, running: bool) {
        self.pass_running = running;
        STAMP.store(self.version * 2 + running as u64, Ordering::Release);
    }

    /// Whether the live contents of `page` may differ from what version `v` saw because
    /// it was unmapped or zapped after snapshot `v`.
    ///
    /// Losses are recorded in version order, so the ones at or after `v` are the end of
    /// the list.
    pub fn lost_since(&self, page: usize, v: u64) -> bool {
        self.lost_between(page, v, u64::MAX)
    }

    /// Whether `page` was unmapped or zapped in an epoch from `v` up to, not including,
    /// `until`: then a shadow stamped `until` does not show it as version `v` saw it (a
    /// zap changes a page without a write fault, so "not written since" does not hold).
    pub fn lost_between(&self, page: usize, v: u64, until: u64) -> bool {
        self.lost_all_since.is_some_and(|l| v <= l && l < until)
            || self
                .lost
                .iter()
                .rev()
                .take_while(|&&(_, l)| l >= v)
                .any(|&(r, l)| l < until && r.start <= page && page < r.end)
    }

    /// Records that the pages of `r`, tracked at the newest version and unpopulated,
    /// held zeros then, as zero-filled shadows stamped with it would. Returns false (the
    /// caller copies them instead) when the list is full.
    pub fn mark_zero(&mut self, r: Range) -> bool {
        let v = self.version;
        if let Some((last, zv)) = self.zeros.last_mut() {
            if *zv == v && last.end == r.start {
                last.end = r.end;
                return true;
            }
        }
        if self.zeros.len() == self.zeros.capacity() {
            return false;
        }
        self.zeros.push((r, v));
        true
    }

    /// The oldest version at or after `v` at which `page` was recorded zero (see
    /// [`Engine::zeros`]), if any.
    pub fn zero_since(&self, page: usize, v: u64) -> Option<u64> {
        // Records are appended in version order: those at or after `v` are the end.
        self.zeros
            .iter()
            .rev()
            .take_while(|&&(_, z)| z >= v)
            .filter(|&&(r, _)| r.start <= page && page < r.end)
            .map(|&(_, z)| z)
            .min()
    }

    /// Forgets losses (and zero records) that no retained version can see (called as
    /// versions go).
    pub fn prune_lost(&mut self) {
        let oldest = self.pool.retained().map_or(u64::MAX, |r| r.0);
        self.lost.retain(|&(_, l)| l >= oldest);
        self.zeros.retain(|&(_, z)| z >= oldest);
        if self.lost_all_since.is_some_and(|l| l < oldest) {
            self.lost_all_since = None;
        }
    }

    /// Unprotects `r` (waking its faulters), or queues it for the fault thread when the
    /// kernel says an event must be read first.
    ///
    /// A run can fail as a whole when part of it stopped being registered memory since
    /// the last pass (glibc grows and shrinks its arenas with mprotect and mmap): then
    /// the faulting page alone is unprotected, and failing that its waiters are woken
    /// to retry, so no thread is ever left blocked.
    pub fn unprotect(&mut self, r: Range) {
        let u = self.uffd();
        self.reprotect.note_unprotected(r);
        match u.write_protect(r, false) {
            Ok(()) => {}
            Err(e) if e.is_again() => {
                if self.retry.len() < self.retry.capacity() {
                    self.retry.push(r);
                } else {
                    let _ = u.wake(r);
                }
            }
            Err(_) if r.len() > PAGE => self.unprotect(Range::new(r.start, r.start + PAGE)),
            Err(_) => {
                let _ = u.wake(r);
            }
        }
    }

    /// At a new version, the queued unprotects must not happen: their pages were saved
    /// for the previous version only. Their threads are woken instead, fault again and
    /// are held like any other until the pass ends (UFFDIO_WAKE does not wait for
    /// queued events).
    fn wake_instead_of_retrying(&mut self) {
        let u = self.uffd();
        for &r in &self.retry {
            let _ = u.wake(r);
        }
        self.retry.clear();
    }

    /// Retries the queued unprotects; keeps those the kernel still refuses.
    pub fn retry_unprotects(&mut self) {
        let u = self.uffd();
        let mut i = 0;
        while i < self.retry.len() {
            match u.write_protect(self.retry[i], false) {
                Err(e) if e.is_again() => i += 1,
                _ => {
                    self.retry.swap_remove(i);
                }
            }
        }
    }

    /// Publishes the pool and version counters.
    pub fn publish(&self) {
        let bytes = self.pool.used() as u64 * PAGE as u64;
        stats::set(Counter::ShadowBytes, bytes);
        stats::page()
            .counter(Counter::ShadowPeakBytes)
            .fetch_max(bytes, Ordering::Relaxed);
        stats::set(Counter::VersionsRetained, self.pool.versions_retained());
        ONLY_HOLDERS.store(self.holders_keep_everything(), Ordering::Release);
        stats::set(Counter::Version, self.version);
        let (newest, capacity) = self.pool.newest_use();
        NEWEST_OVER_HALF.store(newest * 2 > capacity, Ordering::Relaxed);
        stats::set(
            Counter::OldestVersion,
            self.pool.retained().map_or(0, |r| r.0),
        );
    }
}

static ENGINE: SpinLock<Option<Engine>> = SpinLock::new(None);
/// The newest version holds more than half of the shadow budget (see [`budget_pressed`]).
static NEWEST_OVER_HALF: AtomicBool = AtomicBool::new(false);

/// Every retained version is held by a holder that kept nothing on shadows (as of the
/// last `Engine::publish`): a discard needs no save (see `preserve::before_discard`).
static ONLY_HOLDERS: AtomicBool = AtomicBool::new(false);

/// See [`ONLY_HOLDERS`]; read by host threads, which never take the engine lock.
pub fn holders_keep_everything() -> bool {
    ONLY_HOLDERS.load(Ordering::Acquire)
}

/// Whether the newest version's shadows fill more than half of the budget: the next
/// snapshot should come now. When one version alone outgrows the budget it is given up
/// and no version is readable; with a newer version opened, the pool evicts the older
/// ones as it fills instead (an epoch the overhead governor stretched, over a program
/// rewriting a heap as large as the budget, ran out).
pub fn budget_pressed() -> bool {
    NEWEST_OVER_HALF.load(Ordering::Relaxed)
}
/// Twice the newest version, plus one while a protect pass runs: read without the lock.
static STAMP: AtomicU64 = AtomicU64::new(0);

/// The engine's stamp: twice the newest version, plus one while a pass runs. Host
/// threads read it to learn whether a version opened since they last looked.
pub fn stamp() -> u64 {
    STAMP.load(Ordering::Acquire)
}
static STARTED: AtomicBool = AtomicBool::new(false);
/// This process's pid for `process_vm_readv` (a syscall each time from glibc), set when
/// the engine starts (again in a forked child); 0 before.
static PID: AtomicI32 = AtomicI32::new(0);
static UFFD_FD: AtomicI32 = AtomicI32::new(-1);
static START: SpinLock<()> = SpinLock::new(());

/// Runs `f` with the engine lock held (signals blocked), or returns `None` before the
/// engine has started.
pub fn with<R>(f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    if !STARTED.load(Ordering::Acquire) {
        return None;
    }
    let _s = sys::block_signals();
    let mut g = ENGINE.lock();
    g.as_mut().map(f)
}

/// Set while the prefetch thread waits for the engine lock (see [`with_patience`]).
static WAITING: AtomicBool = AtomicBool::new(false);

/// Like [`with`], for the prefetch thread, which must not compete with the fault thread
/// for the lock: it tries for up to `patience_ns`, then gives up (`None`) for the
/// caller to come back later. While it tries, the fault thread lets it in before its
/// next hold (see [`with_for_faults`]): otherwise a busy fault thread, releasing and
/// taking the lock back to back, would starve it.
pub fn with_patience<R>(patience_ns: u64, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    if !STARTED.load(Ordering::Acquire) {
        return None;
    }
    let _s = sys::block_signals();
    let t0 = now_ns();
    WAITING.store(true, Ordering::Release);
    loop {
        // A thread waiting in `with` (the epoch thread's pass, a reader, the fault
        // thread past its courtesy) goes first: back-to-back holds here would starve it
        // (measured: the epoch thread waited 170-180 ms behind an audit of 37,000
        // prefetched pages).
        if ENGINE.has_waiters() {
            if now_ns() - t0 > patience_ns {
                WAITING.store(false, Ordering::Release);
                return None;
            }
            core::hint::spin_loop();
            continue;
        }
        if let Some(mut g) = ENGINE.try_lock() {
            WAITING.store(false, Ordering::Release);
            return g.as_mut().map(f);
        }
        if now_ns() - t0 > patience_ns {
            WAITING.store(false, Ordering::Release);
            return None;
        }
        core::hint::spin_loop();
    }
}

/// How long the fault thread lets a waiting prefetch thread go first, at most.
const LET_IN_NS: u64 = 5_000;

/// [`with`] for the fault thread: when the prefetch thread is waiting for the lock, it
/// goes first (the fault thread waits a few microseconds at most; the prefetch thread
/// never waits on the host, so this never blocks for long).
pub fn with_for_faults<R>(f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    if WAITING.load(Ordering::Acquire) {
        let t0 = now_ns();
        while WAITING.load(Ordering::Acquire) && now_ns() - t0 < LET_IN_NS {
            core::hint::spin_loop();
        }
    }
    with(f)
}

pub fn started() -> bool {
    STARTED.load(Ordering::Acquire)
}

/// Scans of the region table started by protect passes so far: the number of the
/// newest, for `Reprotect::take` (what changed since which scan).
static SCANS: AtomicU64 = AtomicU64::new(0);

/// The number of the newest scan started.
pub fn scan_number() -> u64 {
    SCANS.load(Ordering::Acquire)
}

/// A protect pass starts a scan; its number.
pub fn start_scan() -> u64 {
    SCANS.fetch_add(1, Ordering::AcqRel) + 1
}

/// Set for good once a descriptor of the engine's was lost (see [`stop`]).
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Whether snapshots stopped for good in this process: a descriptor the engine needs
/// was closed or replaced behind the shim (see `fds`). Versions are not readable from
/// the moment this is set (host threads set it without the lock, see [`revoke`]).
pub fn stopped() -> bool {
    STOPPED.load(Ordering::Acquire)
}

/// Marks snapshots stopped from a thread that must not take the engine lock (a host
/// thread that found the fault thread's wake-up pipe lost): readers refuse every version
/// from now on, nothing more is saved, and the fault thread, which checks its
/// descriptors each time it wakes, finishes the stop.
pub fn revoke() {
    STOPPED.store(true, Ordering::Release);
}

/// Stops snapshots for good, from a shim thread, when a descriptor the engine needs is
/// no longer the shim's (closed or replaced by a raw system call the interposer did not
/// see): one `memshadow:` line; the userfaultfd is closed if it is still ours (the kernel
/// then removes every protection and wakes every waiting writer), or never touched again
/// if it is not; the shadows go; the program carries on untracked.
pub fn stop(what: &str) {
    let first = !STOPPED.swap(true, Ordering::AcqRel);
    let fd = UFFD_FD.swap(-1, Ordering::AcqRel);
    if !first && fd < 0 {
        return;
    }
    crate::base::log::error!(
        "{what} was closed or replaced by the program behind the shim (a raw system call); snapshots stop, the program carries on untracked"
    );
    STARTED.store(false, Ordering::Release);
    tear_down(fd);
    stats::set(Counter::VersionsRetained, 0);
    stats::set(Counter::ShadowBytes, 0);
}

/// Undoes a start: closes the userfaultfd `fd` if it is still ours (the kernel then
/// removes every protection and wakes every waiting writer), closes the wake-up pipe,
/// and drops the engine, giving its shadows' memory back.
fn tear_down(fd: i32) {
    // The engine first: no ioctl goes through its descriptor once it is out of the
    // lock, so the number is never touched after it is closed (and perhaps reused).
    let engine = {
        let _s = sys::block_signals();
        ENGINE.lock().take()
    };
    if fd >= 0 {
        crate::base::fds::release(fd);
    }
    crate::engine::preserve::close_kick();
    if let Some(mut e) = engine {
        e.pool.discard_all();
        // Killed and reaped by the epoch thread or at exit (this may be the fault
        // thread, which never signals or waits for a holder).
        crate::engine::holder::park(core::mem::take(&mut e.holders));
        // Its lists are the shim's memory, freed with the arena lock: not under ours.
        drop(e);
    }
}

/// The userfaultfd descriptor (ioctls on it are thread-safe).
pub fn uffd_fd() -> i32 {
    UFFD_FD.load(Ordering::Acquire)
}

/// A view of the engine's descriptor, for the protect pass's ioctls (register and
/// protect; ioctls on it are thread-safe). Faults and saves go through the engine's own
/// handle (see [`Engine::attach`]), the fault thread's through the one it was spawned with.
pub fn uffd() -> core::mem::ManuallyDrop<Uffd> {
    // SAFETY: the descriptor stays open while the engine runs; once stopped the number
    // is -1 and every ioctl fails with EBADF.
    unsafe { Uffd::borrowed(uffd_fd()) }
}

/// Why the engine could not start.
#[derive(Debug)]
pub enum StartError {
    /// Snapshots stopped for good in this process (see [`stop`]).
    Stopped,
    /// No userfaultfd with what the engine needs.
    Uffd(crate::engine::uffd::UffdError),
    /// The fault thread's wake-up pipe.
    Kick(crate::engine::preserve::KickError),
    /// The shadow budget could not be reserved (MiB).
    Budget(usize),
    /// The fault thread could not be started.
    FaultThread(crate::base::shim_thread::SpawnError),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartError::Stopped => write!(
                f,
                "snapshots stopped in this process: the program closed a descriptor of the shim's"
            ),
            StartError::Uffd(e) => write!(f, "userfaultfd is not available: {e}"),
            StartError::Kick(e) => write!(f, "{e}"),
            StartError::Budget(mb) => write!(
                f,
                "cannot reserve a {mb} MiB shadow budget (MEMSHADOW_SHADOW_BUDGET_MB) or index it (about 48 bytes a page)"
            ),
            StartError::FaultThread(e) => write!(f, "cannot start the fault thread: {e}"),
        }
    }
}

/// The pool over the shadow budget's memory (reserved, not yet touched) and its index;
/// None when either cannot be had (nothing is left mapped then).
fn reserve_pool(config: &Config) -> Option<ShadowPool> {
    let budget = config.shadow_budget_mb << 20;
    // Recorded as the shim's own as it is mapped: a rescan of the maps file running
    // meanwhile (the control thread's) must not take it for the program's memory.
    let mem = crate::base::own::map(budget, true)?;
    let pool = ShadowPool::new(mem, config.max_versions);
    if pool.is_none() {
        crate::base::own::unmap(mem);
    }
    pool
}

/// Starts the engine: opens userfaultfd, reserves the shadow budget, starts the fault
/// thread (handing it the descriptor). Idempotent; the error says why snapshots cannot
/// be taken.
pub fn ensure_started(config: &Config) -> Result<(), StartError> {
    if started() {
        return Ok(());
    }
    let _g = START.lock();
    if started() {
        return Ok(());
    }
    if stopped() {
        return Err(StartError::Stopped);
    }
    let uffd = Uffd::open(crate::engine::uffd::WANTED).map_err(StartError::Uffd)?;
    crate::engine::preserve::init().map_err(StartError::Kick)?;
    // An exiting thread whose stack the newest pass tracks saves it before glibc
    // discards it (see `tracking::stacks`).
    crate::tracking::stacks::save_before_discard_with(|r| {
        crate::engine::preserve::before_discard(r);
    });
    // glibc's free trims the heap with its own __sbrk/__madvise, which no interposer
    // sees and whose pages retained versions may still need: from now on it does not
    // (malloc_trim, interposed, still does).
    // SAFETY: mallopt only sets a malloc parameter.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
    let Some(pool) = reserve_pool(config) else {
        crate::engine::preserve::close_kick();
        return Err(StartError::Budget(config.shadow_budget_mb));
    };
    let fd = uffd.fd();
    let mut engine = Engine::new(pool, config);
    engine.attach(fd);
    {
        let _s = sys::block_signals();
        *ENGINE.lock() = Some(engine);
    }
    PID.store(std::process::id() as libc::pid_t, Ordering::Release);
    // The descriptor lives until the engine stops: the fault thread, handed it when
    // spawned, reads its events; the engine's ioctls go through it.
    core::mem::forget(uffd);
    UFFD_FD.store(fd, Ordering::Release);
    // Started only once its fault thread runs: an engine that protected memory with no
    // thread to resolve the faults would hang the program (pthread_create can fail,
    // with EAGAIN, for instance while the process exits).
    if let Err(e) = crate::base::shim_thread::spawn(
        crate::engine::fault::serve,
        fd as usize as *mut core::ffi::c_void,
    ) {
        UFFD_FD.store(-1, Ordering::Release);
        tear_down(fd);
        return Err(StartError::FaultThread(e));
    }
    STARTED.store(true, Ordering::Release);
    Ok(())
}

/// This process's pid.
fn own_pid() -> libc::pid_t {
    match PID.load(Ordering::Acquire) {
        0 => std::process::id() as libc::pid_t,
        pid => pid,
    }
}

/// Copies `len` bytes of this process's memory at `src` into `dst`; returns how many
/// bytes were copied (fewer when part of the source is unmapped).
pub fn copy_tracked(src: usize, dst: *mut u8, len: usize) -> usize {
    let local = libc::iovec {
        iov_base: dst.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: src as *mut _,
        iov_len: len,
    };
    // SAFETY: `dst` is `len` writable bytes of the shim's own memory; the kernel reads
    // the source through our own address space and fails cleanly where it is unmapped.
    let n = unsafe { libc::process_vm_readv(own_pid(), &local, 1, &remote, 1, 0) };
    n.max(0) as usize
}

/// Copies the contiguous run of pages at `src` into the given slots (one page each) with
/// one syscall; returns how many whole pages were copied (fewer when the run is cut
/// short by an unmapped page).
pub fn copy_tracked_pages(src: usize, slots: &[*mut u8]) -> usize {
    const MAX: usize = 512;
    let n = slots.len().min(MAX);
    let mut local = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; MAX];
    for (l, &s) in local.iter_mut().zip(&slots[..n]) {
        *l = libc::iovec {
            iov_base: s.cast(),
            iov_len: PAGE,
        };
    }
    let remote = libc::iovec {
        iov_base: src as *mut _,
        iov_len: n * PAGE,
    };
    // SAFETY: every local iovec is one page of the shim's own pool; the kernel reads the
    // source through our own address space and stops cleanly where it is unmapped.
    let got = unsafe { libc::process_vm_readv(own_pid(), local.as_ptr(), n as _, &remote, 1, 0) };
    got.max(0) as usize / PAGE
}

/// Monotonic nanoseconds.
pub fn now_ns() -> u64 {
    sys::monotonic_ns()
}

/// In a forked child: the parent's engine (its descriptor, threads and shadows) is not
/// the child's. The child starts without one; a snapshot request starts a fresh engine.
pub fn forget_after_fork() {
    STARTED.store(false, Ordering::Release);
    STAMP.store(0, Ordering::Release);
    ONLY_HOLDERS.store(false, Ordering::Release);
    PID.store(0, Ordering::Release);
    crate::engine::preserve::forget_after_fork();
    STOPPED.store(false, Ordering::Release);
    let fd = UFFD_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        // The inherited descriptor is the parent's: ioctls on it would change the
        // parent's protection. Closing our copy (if the number is still it) leaves the
        // parent's open.
        crate::base::fds::release(fd);
    }
    ENGINE.release();
    ENGINE.forget_waiters();
    START.release();
    // The parent's engine memory stays mapped in the child, unused. Its holders are the
    // parent's children: forgotten (their pidfds went with the inherited descriptors).
    if let Some(mut e) = ENGINE.lock().take() {
        for h in e.holders.drain(..) {
            h.forget();
        }
        core::mem::forget(e);
    }
    crate::engine::holder::forget_parked_after_fork();
}

/// Kills and reaps every holder (exit, and the shim's tear-down): those of retained
/// versions and the parked ones. Not on the fault path, never under the engine lock.
pub fn release_all_holders() {
    release_holders(true);
}

/// Reaps the holders of versions no longer retained (evicted by a new version, by the
/// shadow budget, or when a pin went), and the parked ones. The epoch thread's.
pub fn release_expired_holders() {
    release_holders(false);
}

fn release_holders(all: bool) {
    if !crate::engine::holder::any_made() {
        return;
    }
    // Sized outside the engine lock; any that came meanwhile go next time.
    let n = with(|e| e.holders.len()).unwrap_or(0);
    if n > 0 {
        let mut out = Vec::with_capacity(n);
        with(|e| e.take_released(&mut out, all));
        for h in out {
            h.release();
        }
    }
    crate::engine::holder::release_parked();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::readback::{copy_at, readable, ReadError};

    /// An engine over a pool of `slots` pages, tracking `tracked` since version 1, with
    /// version 1 open (as a protect pass leaves it).
    fn engine(slots: usize, tracked: Range) -> (Engine, Range) {
        let mem = sys::map_anon(slots * PAGE, false).unwrap() as usize;
        let pool_mem = Range::new(mem, mem + slots * PAGE);
        let config = Config::parse(|_| None).unwrap();
        let mut e = Engine::new(ShadowPool::new(pool_mem, 4).expect("a test pool"), &config);
        e.version = 1;
        e.pool.begin_version(1);
        e.tracked = vec![TrackedRange {
            range: tracked,
            since: 1,
        }];
        (e, pool_mem)
    }

    fn buffer(pages: usize) -> Range {
        let p = sys::map_anon(pages * PAGE, false).unwrap() as usize;
        Range::new(p, p + pages * PAGE)
    }

    fn fill(r: Range, byte: u8) {
        // SAFETY: `r` is a mapping this test made.
        unsafe { core::ptr::write_bytes(r.start as *mut u8, byte, r.len()) };
    }

    fn read_page(e: &Engine, v: u64, at: usize) -> Result<Vec<u8>, ReadError> {
        readable(e, v)?;
        let mut out = vec![0u8; PAGE];
        copy_at(e, v, at, &mut out)?;
        Ok(out)
    }

    /// Version `v` held by a new holder of this process, not holding `not_held`, its
    /// pass having kept `shadowed` on shadows.
    fn held_version(
        v: u64,
        not_held: Vec<Range>,
        shadowed: Vec<Range>,
    ) -> crate::engine::holder::HeldVersion {
        use crate::engine::holder::{HeldVersion, Holder, Kept};
        let _s = sys::block_signals();
        HeldVersion {
            version: v,
            ..HeldVersion::new(
                Holder::hold_now().expect("a holder"),
                not_held,
                shadowed,
                Kept::lazy_from(0),
            )
        }
    }

    #[test]
    fn a_saved_run_reads_back_as_it_was_after_the_page_changes() {
        let buf = buffer(8);
        fill(buf, 0xab);
        let (mut e, _pool) = engine(64, buf);
        // Pages 2..6 saved, as a trap with a 4-page window would.
        assert_eq!(e.save_run(buf.start + 2 * PAGE, buf.end, 4), Some((4, 4)));
        assert!(e.saved_or_lost(buf.start + 2 * PAGE));
        assert!(!e.saved_or_lost(buf.start + 6 * PAGE));
        // Saved again: nothing to do, the run stops at the first saved page.
        assert_eq!(e.save_run(buf.start + 2 * PAGE, buf.end, 4), Some((0, 0)));
        fill(buf, 0xcd);
        // Version 1 of a saved page is its shadow; of an unsaved one, the live page.
        assert_eq!(
            read_page(&e, 1, buf.start + 3 * PAGE).unwrap(),
            vec![0xab; PAGE]
        );
        assert_eq!(
            read_page(&e, 1, buf.start + 7 * PAGE).unwrap(),
            vec![0xcd; PAGE]
        );
        assert!(matches!(
            read_page(&e, 2, buf.start),
            Err(ReadError::NotTaken { .. })
        ));
    }

    #[test]
    fn a_zero_record_reads_as_zeros_and_counts_as_saved() {
        let buf = buffer(4);
        let (mut e, _pool) = engine(16, buf);
        assert!(e.mark_zero(Range::new(buf.start, buf.start + 2 * PAGE)));
        assert!(e.saved_or_lost(buf.start + PAGE));
        assert!(!e.saved_or_lost(buf.start + 2 * PAGE));
        fill(buf, 0x77);
        assert_eq!(read_page(&e, 1, buf.start + PAGE).unwrap(), vec![0; PAGE]);
        assert_eq!(
            read_page(&e, 1, buf.start + 2 * PAGE).unwrap(),
            vec![0x77; PAGE]
        );
    }

    #[test]
    fn before_a_clone_the_budget_gives_up_the_newest_version_only_for_a_holder_to_replace() {
        let buf = buffer(4);
        let (mut e, _pool) = engine(16, buf);
        let held = |v: u64| held_version(v, vec![], vec![]);
        e.install_holder(held(1), 0).expect("room for it");
        e.version = 2;
        e.pool.begin_version(2);
        e.install_holder(held(2), 0).expect("room for it");
        assert_eq!(e.pool.retained(), Some((1, 2)));
        // The oldest goes; the newest stays unless a holder is to replace it.
        assert!(e.evict_oldest_before_holder(false));
        assert_eq!(e.pool.retained(), Some((2, 2)));
        assert!(!e.evict_oldest_before_holder(false));
        // A reader's pin keeps it.
        e.pin(2).expect("retained");
        assert!(!e.evict_oldest_before_holder(true));
        e.unpin(2);
        // A shadow version newest: it stays, whatever comes.
        e.version = 3;
        e.pool.begin_version(3);
        assert!(e.evict_oldest_before_holder(true), "version 2 is older");
        assert_eq!(e.pool.retained(), Some((3, 3)));
        assert!(
            !e.evict_oldest_before_holder(true),
            "a shadow version stays"
        );
        let mut out = Vec::with_capacity(4);
        e.take_released(&mut out, false);
        assert_eq!(out.len(), 2, "both holders are given up");
        for h in out {
            h.release();
        }
        // Every retained version a live holder's and nothing pinned: the newest goes too.
        e.version = 4;
        e.pool.begin_version(4);
        e.install_holder(held(4), 0).expect("room for it");
        assert!(e.evict_oldest_before_holder(true), "version 3 is older");
        assert!(
            e.evict_oldest_before_holder(true),
            "the holder's version goes too"
        );
        assert_eq!(e.pool.retained(), None);
        let mut out = Vec::with_capacity(4);
        e.take_released(&mut out, false);
        assert_eq!(out.len(), 1);
        for h in out {
            h.release();
        }
    }

    #[test]
    fn a_holder_version_reads_what_its_pass_kept_on_shadows_as_a_shadow_version_does() {
        let buf = buffer(8);
        fill(buf, 0x11);
        let (mut e, _pool) = engine(16, buf);
        let kept = Range::new(buf.start + 6 * PAGE, buf.end);
        let held = |v: u64| held_version(v, vec![], vec![kept]);
        e.install_holder(held(1), 0).expect("room for it");
        // The holder's copy of the kept range is not the version's (a wiped one reads
        // zero there): 0x44, written after the clone, stands for the version's bytes.
        fill(kept, 0x44);
        fill(Range::new(buf.start, kept.start), 0x22);
        assert!(e.only_holders_retained() && !e.holders_keep_everything());
        assert_eq!(e.first_shadowed_within(buf), Some(kept));
        assert_eq!(
            e.first_shadowed_within(Range::new(buf.start, kept.start)),
            None
        );
        // A first write to page 6 after the version: its trap saved it, stamped 1.
        assert_eq!(e.save_run(kept.start, kept.start + PAGE, 1), Some((1, 1)));
        fill(Range::new(kept.start, kept.start + PAGE), 0x55);
        assert_eq!(read_page(&e, 1, kept.start).unwrap(), vec![0x44; PAGE]);
        assert_eq!(
            read_page(&e, 1, kept.start + PAGE).unwrap(),
            vec![0x44; PAGE]
        );
        assert_eq!(
            read_page(&e, 1, buf.start + PAGE).unwrap(),
            vec![0x11; PAGE]
        );
        // A span from the holder stops where the kept range starts; from there, shadows.
        let mut span = vec![0u8; 3 * PAGE];
        let at = kept.start - PAGE + 10;
        let n = crate::engine::readback::copy_held(&e, 1, at, &mut span).unwrap();
        assert_eq!(n, PAGE - 10);
        assert!(span[..n].iter().all(|&b| b == 0x11));
        let n = crate::engine::readback::copy_held(&e, 1, kept.start, &mut span).unwrap();
        assert_eq!(n, PAGE);
        assert!(span[..n].iter().all(|&b| b == 0x44));
        // Version 2, a holder keeping the same range on shadows: page 7's first write
        // after it leaves a record stamped 2, which version 1 reads too (the page kept
        // its protection through the holder; its holder has other bytes there).
        e.version = 2;
        e.pool.begin_version(2);
        e.install_holder(held(2), 0).expect("room for it");
        assert!(e.first_held_after(1, kept.start + PAGE).is_none());
        assert_eq!(e.first_held_after(1, buf.start).map(|h| h.version), Some(2));
        assert_eq!(e.save_run(kept.start + PAGE, kept.end, 1), Some((1, 1)));
        fill(Range::new(kept.start + PAGE, kept.end), 0x66);
        assert_eq!(
            read_page(&e, 1, kept.start + PAGE).unwrap(),
            vec![0x44; PAGE]
        );
        assert_eq!(
            read_page(&e, 2, kept.start + PAGE).unwrap(),
            vec![0x44; PAGE]
        );
        let mut out = Vec::with_capacity(4);
        e.take_released(&mut out, true);
        assert_eq!(out.len(), 2);
        for h in out {
            h.release();
        }
    }

    #[test]
    fn a_holder_version_reads_from_its_holder_and_refuses_what_it_cannot() {
        let buf = buffer(8);
        fill(buf, 0x11);
        let (mut e, _pool) = engine(16, buf);
        let wiped = Range::new(buf.start + 6 * PAGE, buf.end);
        e.install_holder(held_version(1, vec![wiped], vec![]), 0)
            .expect("room for it");
        assert!(e.newest_held() && e.only_holders_retained());
        assert!(
            !e.copying_for(1),
            "nothing is copied ahead for a holder version"
        );
        fill(buf, 0x22);
        // Page by page and in one span, the version as it was at the clone.
        assert_eq!(
            read_page(&e, 1, buf.start + PAGE).unwrap(),
            vec![0x11; PAGE]
        );
        let mut span = vec![0u8; 8 * PAGE];
        let n = crate::engine::readback::copy_held(&e, 1, buf.start + 10, &mut span).unwrap();
        assert_eq!(n, 6 * PAGE - 10, "stops before the range it does not hold");
        assert!(span[..n].iter().all(|&b| b == 0x11));
        assert!(matches!(
            read_page(&e, 1, wiped.start),
            Err(ReadError::NotHeld { .. })
        ));
        // The version evicted: its holder comes out, to be released outside the lock.
        e.pool.clear();
        let mut out = Vec::with_capacity(4);
        e.take_released(&mut out, false);
        assert_eq!(out.len(), 1);
        // A holder gone (killed from outside) is refused, never read.
        e.pool.begin_version(1);
        e.install_holder(out.pop().unwrap(), 0)
            .expect("room for it");
        let mut out = Vec::with_capacity(4);
        e.take_released(&mut out, true);
        let h = out.pop().unwrap();
        let pid = h.holder.as_ref().unwrap().pid();
        // SAFETY: kill of the holder this test made (not reaped yet: its pid is its).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut page = vec![0u8; PAGE];
        for _ in 0..1000 {
            if h.read(buf.start, &mut page).is_err() {
                break;
            }
            sys::sleep_ms(1);
        }
        assert_eq!(
            h.read(buf.start, &mut page),
            Err(crate::engine::holder::HolderReadError::Gone),
            "a killed holder still answered, or not as gone"
        );
        e.install_holder(h, 0).expect("room for it");
        assert_eq!(
            read_page(&e, 1, buf.start),
            Err(ReadError::HolderGone { version: 1 })
        );
        let mut out = Vec::with_capacity(4);
        e.take_released(&mut out, true);
        for h in out {
            h.release();
        }
    }

    /// A userfaultfd with what the engine needs, `r` registered and write-protected
    /// (as a protect pass leaves it), attached to `e`.
    fn protected(e: &mut Engine, r: Range) -> Uffd {
        let u = Uffd::open(crate::engine::uffd::WANTED).unwrap_or_else(|err| {
            panic!("userfaultfd with write-protect is required for this test and the kernel refused it: {err}")
        });
        u.register(r).unwrap();
        u.write_protect(r, true).unwrap();
        e.attach(u.fd());
        u
    }

    /// Writes `byte` over page `at` on another thread, which the protection stops; the
    /// write fault the kernel reports for it, and the writer.
    fn trapped_write(u: &Uffd, at: usize, byte: u8) -> (usize, std::thread::JoinHandle<()>) {
        let writer = std::thread::spawn(move || fill(Range::new(at, at + PAGE), byte));
        let mut events = [crate::engine::uffd::Event::Unknown(0); 4];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let n = u.read_events(&mut events);
            if let Some(crate::engine::uffd::Event::WriteFault { addr, .. }) = events[..n]
                .iter()
                .find(|ev| matches!(ev, crate::engine::uffd::Event::WriteFault { .. }))
            {
                return (*addr, writer);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no write fault reported in 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Unmaps a test buffer registered with `u` once `u` is closed (with UNMAP events
    /// registered, munmap would wait for someone to read its event).
    fn unmap_after(u: Uffd, r: Range) {
        drop(u);
        // SAFETY: the test's own mapping, no longer used.
        unsafe { libc::syscall(libc::SYS_munmap, r.start, r.len()) };
    }

    #[test]
    fn a_trapped_write_saves_the_old_page_and_goes_through() {
        let buf = buffer(8);
        fill(buf, 0x11);
        let (mut e, _pool) = engine(64, buf);
        let u = protected(&mut e, buf);
        let page3 = buf.start + 3 * PAGE;
        let (addr, writer) = trapped_write(&u, page3, 0x22);
        assert_eq!(page::floor(addr), page3);
        // The fault path: save the pre-image (and the window after it), unprotect.
        let pages = e.resolve(addr);
        assert!((1..=5).contains(&pages), "{pages} pages unprotected");
        writer.join().unwrap();
        assert!(e.saved_or_lost(page3));
        // Version 1 reads the pre-image; the live page has the write.
        assert_eq!(read_page(&e, 1, page3).unwrap(), vec![0x11; PAGE]);
        let mut live = vec![0u8; PAGE];
        assert_eq!(copy_tracked(page3, live.as_mut_ptr(), PAGE), PAGE);
        assert_eq!(live, vec![0x22; PAGE]);
        // A page before the trap was not saved: it is still protected, and version 1
        // reads it live.
        assert!(!e.saved_or_lost(buf.start));
        assert_eq!(read_page(&e, 1, buf.start).unwrap(), vec![0x11; PAGE]);
        unmap_after(u, buf);
    }

    #[test]
    fn a_trap_on_fresh_memory_records_the_zeros_after_it_and_unprotects_them() {
        // Never written: zero at version 1, unpopulated, protected by markers.
        let buf = buffer(16);
        let (mut e, _pool) = engine(64, buf);
        let u = protected(&mut e, buf);
        let (addr, writer) = trapped_write(&u, buf.start, 0x5a);
        let pages = e.resolve(addr);
        writer.join().unwrap();
        assert_eq!(
            pages, 16,
            "the whole never-written run goes writable at once"
        );
        // Writes to the rest go through without a trap now.
        fill(Range::new(buf.start + PAGE, buf.end), 0x6b);
        for i in 0..16 {
            assert_eq!(
                read_page(&e, 1, buf.start + i * PAGE).unwrap(),
                vec![0; PAGE]
            );
        }
        unmap_after(u, buf);
    }

    #[test]
    fn an_abandoned_version_unprotects_everything_and_is_not_readable() {
        let buf = buffer(4);
        fill(buf, 3);
        let (mut e, _pool) = engine(16, buf);
        let u = protected(&mut e, buf);
        e.abandon();
        // No trap any more: this write would hang the test if the page were protected.
        fill(buf, 4);
        assert!(matches!(
            read_page(&e, 1, buf.start),
            Err(ReadError::Incomplete(1))
        ));
        unmap_after(u, buf);
    }

    #[test]
    fn pages_saved_before_a_discard_read_back_as_they_were() {
        // Pages 0..4 written, 4..8 never: the save copies the first and records the
        // others as zeros.
        let buf = buffer(8);
        fill(Range::new(buf.start, buf.start + 4 * PAGE), 0x33);
        let (mut e, _pool) = engine(64, buf);
        let u = protected(&mut e, buf);
        let pagemap = crate::engine::pagemap::Pagemap::shared();
        assert_eq!(e.save_before_discard(buf, &pagemap), Some(buf.end));
        assert_eq!(e.pool.used(), 4, "only the written pages are copied");
        // The program discards and reuses the memory.
        u.write_protect(buf, false).unwrap();
        fill(buf, 0x44);
        for i in 0..8 {
            let want = if i < 4 { 0x33 } else { 0 };
            assert_eq!(
                read_page(&e, 1, buf.start + i * PAGE).unwrap(),
                vec![want; PAGE],
                "page {i}"
            );
        }
        unmap_after(u, buf);
    }

    #[test]
    fn a_page_lost_after_the_version_is_refused_not_read() {
        let buf = buffer(2);
        fill(buf, 1);
        let (mut e, _pool) = engine(16, buf);
        e.mark_lost(buf);
        assert!(matches!(
            read_page(&e, 1, buf.start),
            Err(ReadError::Gone { .. })
        ));
    }
}
