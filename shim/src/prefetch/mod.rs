//! The prefetch thread: copies the pages the program is about to write into shadows
//! before the write, so the program does not trap on them.
//!
//! During each epoch it publishes the pages the next protect pass copies while it holds
//! writes ([`crate::engine::boundary_copy`]): those its last audit found written and those
//! that trapped since, up to a budget of their own that follows how many of these
//! copies are written. At each epoch start (a protect pass has ended) it
//! 1. audits the pages it prefetched in the epoch that ended: a page whose shadow
//!    differs from what the new snapshot holds was written (a hit), the others were not
//!    (waste); the counts go to the statistics and, per predictor, back to the
//!    predictor, and set the next budget;
//! 2. asks the predictor (`predict`, chosen by `MEMSHADOW_PREDICT`) for a plan, keeps
//!    the guesses at or above `MEMSHADOW_CONFIDENCE` up to its budget of pages, and
//!    publishes them (address order) so the fault path can count late traps;
//! 3. copies them, nearest the program's last write first: per run, under the engine
//!    lock, while the pages are still protected, it saves them into shadow slots
//!    stamped with the version (the same [`Engine::save_run`] a trap uses), then
//!    unprotects the run with one ioctl.
//!
//! During the epoch the fault thread hands it every trap through a bounded lock-free
//! queue (overflow is dropped and counted, never waited for); the predictor's guesses
//! from them are copied before the rest of the plan.
//!
//! Why a prefetched version is exact: a page is copied only while it is tracked at the
//! newest version, protected (no shadow stamped with that version yet, not zapped in
//! it) and no pass is running, under the lock that keeps the fault thread from
//! unprotecting it, so the copy is the page as the snapshot saw it, and a page saved
//! by either thread is skipped by the other (copied once). One race remains: the fault
//! thread reads discard events without the engine lock, and the kernel zaps the range
//! as soon as the event is read. The fault thread handles a batch's discards (under the
//! engine lock) before anything else and says so ([`crate::engine::fault::events_in_hand`]):
//! the copy starts only when no events are in hand and is taken back (slots returned,
//! pages left protected) if some are when it ends.
//!
//! Each epoch's plan, every guess with its confidence (also those under the threshold),
//! is published for the control thread's `plan V` ([`plan_for`]): a recorder keeps it
//! beside the version in its store, and a follower orders its first sync by it.
//!
//! Its cost is bounded: by its budget of pages per epoch, which follows the accuracy
//! it measures (doubling while at least 1 in 4 prefetched pages is written and the
//! budget was the limit, halving below 1 in 10, down to [`MIN_BUDGET`]); by `MEMSHADOW_PREFETCH_CPU`, the share of one
//! core it may use (it sleeps when ahead of it); and by the shadow budget (it never
//! evicts a version and leaves a quarter of the slots to traps).

use crate::base::page::{self, PAGE};
use crate::base::range::Range;
use crate::base::sync::SpinLock;
use crate::config::Config;
use crate::engine::save_ahead::{wait_for_events, CopyOutcome};
use crate::engine::{self, Engine};
use crate::predict::{self, Feedback, Guess, Kind, PageNo, Predictor, KINDS};
use crate::{base::sys, engine::readback, stats};
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, Ordering};
use memshadow_format::control::{PlannedRun, MAX_PLAN_RUNS};
use memshadow_format::stats::Counter;
use std::sync::Arc;

/// Most guesses from traps waiting to be copied (beyond them new ones are dropped).
const URGENT_CAPACITY: usize = 1024;
/// Planned runs this close (in pages) are copied as one, gap included: a run costs an
/// unprotect ioctl, which flushes the TLB of the other CPUs (several microseconds on a
/// VM), while copying a page costs a fraction of one.
const BRIDGE_PAGES: usize = 8;
/// How long the thread tries for the engine lock before it backs off: the fault
/// thread, serving traps, goes first.
const LOCK_PATIENCE_NS: u64 = 20_000;
/// How long it backs off, microseconds.
const BACK_OFF_US: u64 = 100;
/// Pages copied per engine-lock hold: a trap waits at most this long for the lock.
const PAGES_PER_HOLD: usize = 32;
/// Pages audited per engine-lock hold.
const AUDIT_PER_HOLD: usize = 16;
/// The budget never falls below this many pages per epoch, so a predictor that found
/// nothing to do can still show it has learnt something.
const MIN_BUDGET: usize = 64;
/// The budget doubles after an epoch that used at least half of it with at least this
/// share of its copies written...
const GROW_ACCURACY: f64 = 0.25;
/// ... and halves after one with less than this share.
const SHRINK_ACCURACY: f64 = 0.1;
/// The first epoch's budget.
const FIRST_BUDGET: usize = 4096;
/// Marks the pass's copies in [`Prefetched::by`] (above the predictors' bits).
const AT_PASS: u8 = 0x80;
/// How long the thread sleeps when it has nothing to do (it is woken by traps and by
/// new versions before that).
const IDLE_MS: u64 = 20;
/// Most trap pages remembered per epoch as written.
const TRAPPED_CAPACITY: usize = 1 << 20;
/// A trap that saved at least this many pages belongs to a stream (its fault-around
/// window grew): its page is not one for the passes to copy.
const STREAM_TRAP_PAGES: usize = 16;
/// What a trap costs the program here, microseconds (bench/RESULTS.md, "Where a trap's
/// time goes"), and what a page copied at the pass costs it.
const TRAP_US: f64 = 15.0;
const COPY_US: f64 = 0.65;
/// How often, at most, the pages for the next pass are published again during an epoch.
const PUBLISH_EVERY_NS: u64 = 10_000_000;

static STARTED: AtomicBool = AtomicBool::new(false);

/// The newest epoch's plan as the prefetch thread published it (see [`plan_for`]).
/// Swapped whole under the lock (an `Arc`), read by cloning the `Arc`: both threads
/// hold it for a few instructions, and neither is the fault thread.
static SHARED: SpinLock<Option<Arc<SharedPlan>>> = SpinLock::new(None);

/// A plan for the epoch after version `version`, best first.
pub struct SharedPlan {
    pub version: u64,
    pub runs: Vec<PlannedRun>,
    /// Guesses left out beyond [`MAX_PLAN_RUNS`] (the least confident).
    pub cut: u64,
    /// Why the plan is empty, if it is (a holder epoch).
    pub why: Option<&'static str>,
}

/// Whether the prefetch thread runs (prediction is on).
pub fn running() -> bool {
    STARTED.load(Ordering::Acquire)
}

/// The newest plan published, if any (cheap: an `Arc`).
pub fn plan_for() -> Option<Arc<SharedPlan>> {
    SHARED.lock().clone()
}

/// Publishes `plan` (the old one is dropped outside the lock).
fn share(plan: SharedPlan) {
    let old = SHARED.lock().replace(Arc::new(plan));
    drop(old);
}

/// The guesses as plan runs, best first (they come so from the predictor; sorted here
/// again, stable, so that the cut leaves out the least confident): at most
/// [`MAX_PLAN_RUNS`], and how many were left out.
fn shared_runs(guesses: &[Guess]) -> (Vec<PlannedRun>, u64) {
    let mut runs: Vec<PlannedRun> = guesses
        .iter()
        .map(|g| PlannedRun {
            addr: page::address(g.page) as u64,
            pages: g.pages.max(1),
            permille: (g.confidence.clamp(0.0, 1.0) * 1000.0).round() as u16,
        })
        .collect();
    runs.sort_by_key(|r| core::cmp::Reverse(r.permille));
    let cut = runs.len().saturating_sub(MAX_PLAN_RUNS) as u64;
    runs.truncate(MAX_PLAN_RUNS);
    (runs, cut)
}

/// Starts the prefetch thread unless `MEMSHADOW_PREDICT=off` (called once the engine
/// runs; again in a forked child that starts its own engine).
pub fn start(config: &Config) -> Result<(), crate::base::shim_thread::SpawnError> {
    let Some(predictor) = predict::make(config.predict, &config.predict_params) else {
        return Ok(());
    };
    if STARTED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    crate::engine::trap_notes::open();
    let prefetcher = Box::new(Prefetcher::new(config, predictor));
    crate::base::shim_thread::spawn(run, Box::into_raw(prefetcher).cast())
}

/// In a forked child: the parent's prefetch thread does not exist here.
pub fn forget_after_fork() {
    STARTED.store(false, Ordering::Release);
    // The parent's plan is not the child's. The child is one thread: nobody holds the
    // lock legitimately; what it held is leaked, not dropped (it may be half-written).
    SHARED.release();
    core::mem::forget(SHARED.lock().take());
    crate::engine::trap_notes::forget_after_fork();
}

/// A protect pass ended: a new epoch starts.
pub fn epoch_opened() {
    crate::engine::trap_notes::wake();
}

/// One prefetched page: where, and which predictors proposed it.
#[derive(Clone, Copy)]
struct Prefetched {
    page: PageNo,
    by: u8,
}

/// The prefetch thread's own state (on its own heap, the shim's arena).
struct Prefetcher {
    predictor: Box<dyn Predictor>,
    threshold: f32,
    cpu_share: f32,
    /// The version whose plan is being copied (0: none yet).
    epoch: u64,
    budget: usize,
    /// Runs still to copy this epoch: urgent ones first (a stack), then the plan.
    urgent: Vec<(Range, u8)>,
    plan: Vec<(Range, u8)>,
    plan_next: usize,
    /// Pages copied this epoch, and in the one before (audited at the next epoch).
    copied: Vec<Prefetched>,
    /// The pages written in the epoch before this one and not by a stream, as far as
    /// known: those that trapped alone and the prefetched ones its audit found written,
    /// but not stride's; and the same of the epoch before that (see
    /// [`publish_boundary`]).
    last_written: Vec<PageNo>,
    older_written: Vec<PageNo>,
    /// This epoch's traps that saved fewer than [`STREAM_TRAP_PAGES`] pages.
    trapped_alone: Vec<PageNo>,
    /// How many pages this epoch's traps saved each.
    trap_pages: TrapPages,
    /// Most pages the next pass copies (see [`crate::engine::boundary_copy`]).
    pass_budget: usize,
    /// When the boundary set was last published, and how many traps it held.
    published_ns: u64,
    published_traps: usize,
    /// Pages that trapped this epoch (they were written).
    trapped: Vec<PageNo>,
    /// The page of the latest trap seen (where the program writes).
    last_fault: PageNo,
    guesses: Vec<Guess>,
    scratch: Vec<u8>,
    /// CPU pacing: thread CPU and wall clock at the start of the pacing window.
    window_cpu: u64,
    window_wall: u64,
    cpu_seen: u64,
}

impl Prefetcher {
    fn new(config: &Config, predictor: Box<dyn Predictor>) -> Prefetcher {
        Prefetcher {
            predictor,
            threshold: config.confidence,
            cpu_share: config.prefetch_cpu,
            epoch: 0,
            budget: FIRST_BUDGET,
            urgent: Vec::with_capacity(URGENT_CAPACITY),
            plan: Vec::new(),
            plan_next: 0,
            copied: Vec::new(),
            last_written: Vec::new(),
            older_written: Vec::new(),
            trapped_alone: Vec::new(),
            trap_pages: TrapPages::default(),
            pass_budget: FIRST_BUDGET,
            published_ns: 0,
            published_traps: 0,
            trapped: Vec::new(),
            last_fault: 0,
            guesses: Vec::with_capacity(256),
            scratch: vec![0; PAGE],
            window_cpu: 0,
            window_wall: 0,
            cpu_seen: 0,
        }
    }
}

/// The thread's body; `arg` is its `Prefetcher`.
extern "C" fn run(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `start` passes a leaked Box<Prefetcher>, taken back once, here.
    let mut p = unsafe { Box::from_raw(arg.cast::<Prefetcher>()) };
    // The clocks of this thread, not of the one that made the Prefetcher.
    p.cpu_seen = crate::base::shim_thread::thread_cpu_ns();
    p.window_cpu = p.cpu_seen;
    p.window_wall = engine::now_ns();
    let fd = engine::uffd_fd();
    while engine::uffd_fd() == fd && crate::tracking::regions::tracking() {
        account(&mut p);
        let stamp = engine::stamp();
        let (v, pass_running) = (stamp / 2, stamp % 2 == 1);
        if v != p.epoch && !pass_running && v > 0 {
            new_epoch(&mut p, v);
        }
        take_faults(&mut p);
        if !pass_running && v == p.epoch {
            publish_boundary(&mut p, false);
        }
        if pass_running || !copy_next(&mut p) {
            idle();
        }
        pace(&mut p);
    }
    core::ptr::null_mut()
}

/// Adds the thread's CPU time to the statistics.
fn account(p: &mut Prefetcher) {
    let us = crate::stats::account_cpu(&mut p.cpu_seen);
    if us > 0 {
        stats::add(Counter::PrefetchCpuUs, us);
    }
}

/// Sleeps until woken (a trap, a new version) or for `IDLE_MS`.
fn idle() {
    crate::engine::trap_notes::idle(IDLE_MS);
}

/// Keeps the thread within its CPU share: over a window of about a second, CPU used
/// may not exceed the share of the wall time (plus a 10 ms burst).
fn pace(p: &mut Prefetcher) {
    const WINDOW_NS: u64 = 1_000_000_000;
    const BURST_NS: u64 = 10_000_000;
    let wall = engine::now_ns();
    let cpu = crate::base::shim_thread::thread_cpu_ns();
    let elapsed = wall.saturating_sub(p.window_wall);
    let used = cpu.saturating_sub(p.window_cpu);
    let allowed = (elapsed as f64 * p.cpu_share as f64) as u64 + BURST_NS;
    if used > allowed {
        let over = used - allowed;
        let sleep_ns = (over as f64 / p.cpu_share as f64) as u64;
        sys::sleep_ms(sleep_ns.div_ceil(1_000_000).min(100));
    }
    if elapsed > WINDOW_NS {
        // Start a new window that keeps half of the old one's balance.
        p.window_wall = wall - elapsed / 2;
        p.window_cpu = cpu - used / 2;
    }
}

/// Hands the queued traps to the predictor; its guesses become urgent runs.
fn take_faults(p: &mut Prefetcher) {
    let mut fresh = 0;
    let mut notes = 0;
    while let Some(h) = crate::engine::trap_notes::pop() {
        notes += 1;
        if h.version != p.epoch {
            continue;
        }
        p.trap_pages.add(h.note.pages);
        if p.trapped.len() < TRAPPED_CAPACITY {
            p.trapped.push(h.note.page);
            if (h.note.pages as usize) < STREAM_TRAP_PAGES {
                p.trapped_alone.push(h.note.page);
            }
        }
        p.last_fault = h.note.page;
        p.guesses.clear();
        p.predictor.on_fault(h.note, &mut p.guesses);
        for g in p.guesses.iter().filter(|g| g.confidence >= p.threshold) {
            if p.urgent.len() >= URGENT_CAPACITY {
                break;
            }
            let r = Range::new(
                page::address(g.page),
                page::address(g.page + g.pages.max(1) as usize),
            );
            p.urgent.push((r, g.by));
            fresh += 1;
        }
    }
    if notes > 0 {
        // Eager while at least one trap in eight gives something to copy.
        crate::engine::trap_notes::set_eager(fresh * 8 >= notes);
    }
}

/// Copies the next run (urgent ones first). Returns false when there is nothing to do.
fn copy_next(p: &mut Prefetcher) -> bool {
    let (r, by) = if let Some(u) = p.urgent.pop() {
        u
    } else if p.plan_next < p.plan.len() {
        p.plan_next += 1;
        p.plan[p.plan_next - 1]
    } else {
        return false;
    };
    let mut at = r.start;
    while at < r.end {
        let end = r.end.min(at + PAGES_PER_HOLD * PAGE);
        match copy_run(p.epoch, at, end) {
            CopyOutcome::Done {
                first,
                copied,
                next,
            } => {
                for i in 0..copied {
                    p.copied.push(Prefetched {
                        page: page::number(first) + i,
                        by,
                    });
                }
                at = next.max(at + PAGE);
            }
            CopyOutcome::Stop => {
                // A new version, a pass, or no slots to spare: this plan is over.
                p.plan_next = p.plan.len();
                p.urgent.clear();
                return true;
            }
            CopyOutcome::Busy => wait_for_events(),
        }
    }
    true
}

/// Saves and unprotects the pages of `[at, end)` that still need it, up to the first
/// one that does not (one engine-lock hold).
fn copy_run(v: u64, at: usize, end: usize) -> CopyOutcome {
    let r = politely(&mut |e| {
        if !e.copying_for(v) {
            return CopyOutcome::Stop;
        }
        e.save_ahead(at, end, PAGES_PER_HOLD)
    });
    r.unwrap_or(CopyOutcome::Stop)
}

/// Runs `f` under the engine lock, backing off while the fault thread keeps it busy;
/// `None` once the engine has stopped.
fn politely<R>(f: &mut impl FnMut(&mut Engine) -> R) -> Option<R> {
    loop {
        if let Some(r) = engine::with_patience(LOCK_PATIENCE_NS, &mut *f) {
            return Some(r);
        }
        if !engine::started() {
            return None;
        }
        sys::sleep_us(BACK_OFF_US);
    }
}

/// A new epoch (version `v`): audit the last one, plan this one.
fn new_epoch(p: &mut Prefetcher, v: u64) {
    let previous = p.epoch;
    let copied = core::mem::take(&mut p.copied);
    p.epoch = v;
    p.urgent.clear();
    p.plan.clear();
    p.plan_next = 0;
    // The pages the pass just copied are this epoch's prefetched pages.
    let at_pass = &mut p.copied;
    crate::engine::boundary_copy::collect(v, |r| {
        for page in page::number(r.start)..page::number(r.end) {
            at_pass.push(Prefetched { page, by: AT_PASS });
        }
    });
    let feedback = audit(p, &copied, previous);
    let free = politely(&mut |e| e.pool().free_slots()).unwrap_or(0) as usize;
    // The pass's budget follows what its copies saved against what they cost.
    p.pass_budget = next_pass_budget(
        p.pass_budget,
        feedback.pass_hits,
        feedback.pass_waste,
        p.trap_pages.mean(),
    )
    .clamp(MIN_BUDGET, (free / 2).max(MIN_BUDGET));
    p.trap_pages = TrapPages::default();
    let mut copied = copied;
    copied.clear();
    // The pass's copies are this epoch's; the buffer keeps its capacity.
    copied.append(&mut p.copied);
    p.copied = copied;
    let (hits, waste) = (feedback.hits_total, feedback.waste_total);
    // The written set of the epoch that ended: its traps and the hits.
    let mut written = core::mem::take(&mut p.trapped);
    written.extend(feedback.written.iter().copied());
    written.sort_unstable();
    written.dedup();
    // What the next passes copy from: the same without what streams wrote.
    let mut alone = core::mem::take(&mut p.trapped_alone);
    alone.extend(feedback.written_alone.iter().copied());
    alone.sort_unstable();
    alone.dedup();
    // The budget follows the accuracy just measured: a copy costs a few percent of a
    // trap, so prefetching pays while more than about one page in ten is written.
    // It grows while it was the limit, and falls towards nothing when it does not pay.
    let was_limit = (hits + waste) * 2 >= p.budget as u64;
    p.budget = adapt_budget(p.budget, hits, waste, was_limit)
        .clamp(MIN_BUDGET, (free / 2).max(MIN_BUDGET));
    stats::set(Counter::PrefetchBudget, p.budget as u64);

    p.guesses.clear();
    p.predictor.new_epoch(
        &written,
        &feedback.per_kind,
        engine::now_ns(),
        p.budget,
        &mut p.guesses,
    );
    // What the next pass copies starts from it; the older buffer holds the next traps.
    p.trapped = written;
    p.trapped.clear();
    let older = core::mem::replace(&mut p.last_written, alone);
    p.trapped_alone = core::mem::replace(&mut p.older_written, older);
    p.trapped_alone.clear();
    // For `plan V`: every guess, with its confidence; none in a holder epoch (no traps
    // feed the predictor there, and nothing is copied ahead).
    let held = politely(&mut |e| e.newest_held()).unwrap_or(false);
    let (shared, cut) = if held {
        (Vec::new(), 0)
    } else {
        shared_runs(&p.guesses)
    };
    share(SharedPlan {
        version: v,
        runs: shared,
        cut,
        why: held.then_some("the newest version is a holder's: nothing is predicted there"),
    });
    let (order, runs) = plan_runs(&p.guesses, p.threshold, p.budget, p.last_fault);
    p.plan = order;
    politely(&mut |e| e.set_plan(v, &runs));
    publish_boundary(p, true);
}

/// Publishes what the next pass copies (see [`crate::engine::boundary_copy`]), from the pages
/// known written in the last two epochs (their traps, and the prefetched pages their
/// audits found written) and those that trapped in this one, up to the pass's own
/// budget; not the pages of streams: a sweeping writer's traps save long runs each, at
/// less than a microsecond a page, and copying its pages while it is held would cost
/// as much whenever the sweep does not come back to them. Again during the epoch at
/// most every [`PUBLISH_EVERY_NS`], when traps came since (`now`: at once).
fn publish_boundary(p: &mut Prefetcher, now: bool) {
    let t = engine::now_ns();
    let traps = p.trapped_alone.len();
    if !now && (traps == p.published_traps || t < p.published_ns + PUBLISH_EVERY_NS) {
        return;
    }
    p.published_ns = t;
    p.published_traps = traps;
    // Refused while the last pass's copies wait for the next epoch to collect them.
    let written = [&p.older_written[..], &p.last_written, &p.trapped_alone];
    crate::engine::boundary_copy::publish(&mut pass_plan(written, p.pass_budget));
}

/// What the next pass copies of `written`, the pages known written in each of the last
/// epochs: the runs of [`pass_runs`] that hold two pages, or a page written in two of
/// these epochs, densest first, while they fit in `budget` pages (gaps included; the
/// last one cut to fit). A hot set is a dense cluster; a page a hot key lives in is
/// written epoch after epoch (two epochs of three, though it is known only every other
/// epoch once copied: a copied page does not trap, and its audit waits for the next
/// snapshot); a page written once at random is neither, and not copied (copying it and
/// unprotecting it alone costs more than its trap would, at the odds it has).
fn pass_plan(written: [&[PageNo]; 3], budget: usize) -> Vec<Range> {
    let mut pages: Vec<PageNo> = Vec::with_capacity(written.iter().map(|w| w.len()).sum());
    for w in written {
        pages.extend_from_slice(w);
    }
    let mut runs = pass_runs(&mut pages);
    runs.retain(|&(_, n)| n >= 2);
    // Densest first (ties in address order), so that the pass's time cap cuts the rest.
    runs.sort_by_key(|&(_, n)| core::cmp::Reverse(n));
    let mut left = budget;
    runs.into_iter()
        .map_while(|(r, _)| {
            let n = (r.len() / PAGE).min(left);
            left -= n;
            (n > 0).then(|| Range::new(r.start, r.start + n * PAGE))
        })
        .collect()
}

/// The runs of `pages` (sorted here): pages closer than [`BRIDGE_PAGES`] are one run,
/// gap included; with each run, how many entries of `pages` it holds (a page listed
/// twice counts twice; at most 255).
fn pass_runs(pages: &mut [PageNo]) -> Vec<(Range, u8)> {
    pages.sort_unstable();
    let mut runs: Vec<(Range, u8)> = Vec::new();
    for &page in pages.iter() {
        match runs.last_mut() {
            Some((r, n)) if page <= page::number(r.end) + BRIDGE_PAGES => {
                r.end = r.end.max(page::address(page + 1));
                *n = n.saturating_add(1);
            }
            _ => runs.push((Range::new(page::address(page), page::address(page + 1)), 1)),
        }
    }
    runs
}

/// How many pages an epoch's traps saved each, on average.
#[derive(Default)]
struct TrapPages {
    traps: u64,
    pages: u64,
}

impl TrapPages {
    fn add(&mut self, pages: u32) {
        self.traps += 1;
        self.pages += u64::from(pages.max(1));
    }

    /// The mean, 1 without traps.
    fn mean(&self) -> f64 {
        if self.traps == 0 {
            1.0
        } else {
            self.pages as f64 / self.traps as f64
        }
    }
}

/// The pass's budget after an epoch in which `hits` of its copies were written and
/// `waste` were not, while traps saved `trap_pages` pages each: halved (down to
/// [`MIN_BUDGET`]) when the copies did not pay ([`pass_pays`]), doubled when they paid
/// and the budget was the limit, kept otherwise; and kept when fewer than
/// [`MIN_BUDGET`] copies were judged (stray pages while the program does something
/// else are no verdict).
fn next_pass_budget(budget: usize, hits: u64, waste: u64, trap_pages: f64) -> usize {
    if hits + waste < MIN_BUDGET as u64 {
        budget
    } else if !pass_pays(hits, waste, trap_pages) {
        (budget / 2).max(MIN_BUDGET)
    } else if (hits + waste) * 2 >= budget as u64 {
        budget.saturating_mul(2)
    } else {
        budget
    }
}

/// Whether copies at the pass paid in an epoch in which `hits` of them were written and
/// `waste` were not, while its traps saved `trap_pages` pages each: a hit spared its share
/// of a trap ([`TRAP_US`] over the pages a trap saves) and a wasted copy cost
/// [`COPY_US`] while the program was held. A sweeping writer's trap saves 64 pages, so
/// copying its pages at the pass does not pay even at 60% hits; a random writer's saves
/// four, and it pays from about 15%.
fn pass_pays(hits: u64, waste: u64, trap_pages: f64) -> bool {
    hits as f64 * TRAP_US / trap_pages.max(1.0) > waste as f64 * COPY_US
}

/// The plan's budget of pages per epoch after an epoch in which `hits` of its copies
/// were written and `waste` were not: doubled when at least [`GROW_ACCURACY`] of them
/// were written (and `may_grow`), halved down to [`MIN_BUDGET`] below
/// [`SHRINK_ACCURACY`], kept otherwise and when nothing was copied.
fn adapt_budget(budget: usize, hits: u64, waste: u64, may_grow: bool) -> usize {
    if hits + waste == 0 {
        return budget;
    }
    let accuracy = hits as f64 / (hits + waste) as f64;
    if accuracy >= GROW_ACCURACY && may_grow {
        budget.saturating_mul(2)
    } else if accuracy < SHRINK_ACCURACY {
        (budget / 2).max(MIN_BUDGET)
    } else {
        budget
    }
}

/// The runs to copy from a predictor's plan: the guesses at or above `threshold`, up to
/// `budget` pages, in address order with runs closer than [`BRIDGE_PAGES`] merged (gap
/// included; their proposers share the credit), in the order to copy them (starting at
/// the first run that ends after `last_fault`, where the program wrote last: a sweeping
/// writer meets its pages in that order), and the same runs in address order (for the
/// late count).
fn plan_runs(
    guesses: &[Guess],
    threshold: f32,
    budget: usize,
    last_fault: PageNo,
) -> (Vec<(Range, u8)>, Vec<Range>) {
    let mut plan: Vec<(Range, u8)> = Vec::new();
    let mut pages = 0usize;
    for g in guesses {
        if g.confidence < threshold || pages >= budget {
            continue;
        }
        let n = (g.pages.max(1) as usize).min(budget - pages);
        pages += n;
        plan.push((
            Range::new(page::address(g.page), page::address(g.page + n)),
            g.by,
        ));
    }
    plan.sort_unstable_by_key(|(r, _)| r.start);
    let mut merged: Vec<(Range, u8)> = Vec::with_capacity(plan.len());
    for &(r, by) in &plan {
        match merged.last_mut() {
            Some((l, lby)) if r.start <= l.end + BRIDGE_PAGES * PAGE => {
                l.end = l.end.max(r.end);
                *lby |= by;
            }
            _ => merged.push((r, by)),
        }
    }
    let runs: Vec<Range> = merged.iter().map(|&(r, _)| r).collect();
    let at = merged.partition_point(|(r, _)| r.end <= page::address(last_fault));
    merged.rotate_left(at);
    (merged, runs)
}

/// What the audit of an epoch found.
struct Audit {
    per_kind: Feedback,
    hits_total: u64,
    waste_total: u64,
    /// Of those, the pass's (see [`crate::engine::boundary_copy`]).
    pass_hits: u64,
    pass_waste: u64,
    /// Prefetched pages found written.
    written: Vec<PageNo>,
    /// Of those, the ones stride did not propose (not a stream's).
    written_alone: Vec<PageNo>,
}

/// Compares each page prefetched in epoch `v` with what the next snapshot holds.
fn audit(p: &mut Prefetcher, copied: &[Prefetched], v: u64) -> Audit {
    let mut out = Audit {
        per_kind: Feedback::default(),
        hits_total: 0,
        waste_total: 0,
        pass_hits: 0,
        pass_waste: 0,
        written: Vec::with_capacity(copied.len()),
        written_alone: Vec::new(),
    };
    let mut verdicts: Vec<Option<bool>> = Vec::with_capacity(copied.len());
    for chunk in copied.chunks(AUDIT_PER_HOLD) {
        let done = politely(&mut |e| {
            for c in chunk {
                verdicts.push(written_in(e, page::address(c.page), v, &mut p.scratch));
            }
        });
        if done.is_none() {
            break;
        }
    }
    for (c, verdict) in copied.iter().zip(&verdicts) {
        let Some(hit) = *verdict else { continue };
        for k in Kind::ALL {
            if c.by & k.bit() != 0 {
                let slot = if hit {
                    &mut out.per_kind.hits[k as usize]
                } else {
                    &mut out.per_kind.waste[k as usize]
                };
                *slot += 1;
            }
        }
        if c.by & AT_PASS != 0 {
            if hit {
                out.pass_hits += 1;
            } else {
                out.pass_waste += 1;
            }
        }
        if hit {
            out.hits_total += 1;
            out.written.push(c.page);
            if c.by & Kind::Stride.bit() == 0 {
                out.written_alone.push(c.page);
            }
        } else {
            out.waste_total += 1;
        }
    }
    stats::add(Counter::PrefetchHits, out.hits_total);
    stats::add(Counter::PrefetchWaste, out.waste_total);
    const COUNTERS: [(Counter, Counter); KINDS] = [
        (Counter::HistoryHits, Counter::HistoryWaste),
        (Counter::StrideHits, Counter::StrideWaste),
        (Counter::MarkovHits, Counter::MarkovWaste),
        (Counter::ScoreHits, Counter::ScoreWaste),
    ];
    for (k, (h, w)) in COUNTERS.iter().enumerate() {
        stats::add(*h, out.per_kind.hits[k]);
        stats::add(*w, out.per_kind.waste[k]);
    }
    out
}

/// Whether `page`, saved for version `v`, was written in epoch `v`: whether its shadow
/// differs from the page as version `v + 1` reads (`readback`'s rule). `None` when that
/// cannot be told any more (the version is gone, the page was discarded, or `v + 1` is
/// not taken yet).
fn written_in(e: &Engine, page: usize, v: u64, scratch: &mut [u8]) -> Option<bool> {
    if e.lost_since(page, v) {
        return None;
    }
    readback::readable(e, v + 1).ok()?;
    let pool = e.pool();
    let then = pool.find(page, v).filter(|&s| pool.stamp_of(s) == v)?;
    readback::copy_at(e, v + 1, page, scratch).ok()?;
    Some(pool.slot(then) != scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(page: PageNo, pages: u32, confidence: f32, by: u8) -> Guess {
        Guess {
            page,
            pages,
            confidence,
            by,
        }
    }

    fn r(first: PageNo, end: PageNo) -> Range {
        Range::new(page::address(first), page::address(end))
    }

    #[test]
    fn shared_plans_are_best_first_and_cut_to_the_cap() {
        let mut guesses: Vec<Guess> = (0..MAX_PLAN_RUNS + 5)
            .map(|i| g(i * 2, 1, (i % 1000) as f32 / 1000.0, 1))
            .collect();
        guesses.push(g(1, 3, 1.0, 2));
        let (runs, cut) = shared_runs(&guesses);
        assert_eq!((runs.len(), cut), (MAX_PLAN_RUNS, 6));
        assert_eq!(
            runs[0],
            PlannedRun {
                addr: page::address(1) as u64,
                pages: 3,
                permille: 1000
            }
        );
        assert!(runs.windows(2).all(|w| w[0].permille >= w[1].permille));
        // What was cut is the least confident.
        assert!(runs.last().unwrap().permille <= 5);
    }

    #[test]
    fn plans_keep_confident_guesses_within_the_budget() {
        let guesses = [
            g(100, 10, 0.9, 1),
            g(500, 4, 0.1, 2), // below the threshold
            g(300, 20, 0.5, 2),
            g(900, 50, 0.3, 4), // cut by the budget: 40 pages left
        ];
        let (order, runs) = plan_runs(&guesses, 0.2, 70, 0);
        assert_eq!(runs, vec![r(100, 110), r(300, 320), r(900, 940)]);
        assert_eq!(
            order.iter().map(|&(_, by)| by).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        let (_, none) = plan_runs(&guesses, 0.95, 70, 0);
        assert!(none.is_empty());
    }

    #[test]
    fn close_runs_are_copied_as_one_and_from_the_last_write_on() {
        let guesses = [
            g(10, 1, 0.9, 1),
            g(10 + 1 + BRIDGE_PAGES, 1, 0.9, 2), // a gap of BRIDGE_PAGES: bridged
            g(200, 5, 0.9, 4),
            g(400, 5, 0.9, 1),
        ];
        let (order, runs) = plan_runs(&guesses, 0.2, 1000, 202);
        let bridged = r(10, 12 + BRIDGE_PAGES);
        assert_eq!(runs, vec![bridged, r(200, 205), r(400, 405)]);
        // The program last wrote at page 202: copying starts with its run.
        assert_eq!(
            order,
            vec![(r(200, 205), 4), (r(400, 405), 1), (bridged, 1 | 2)]
        );
    }

    #[test]
    fn known_written_pages_make_bridged_runs_that_count_them() {
        let mut pages = [500, 100, 101, 102 + BRIDGE_PAGES, 300, 101];
        let runs = pass_runs(&mut pages);
        assert_eq!(
            runs,
            vec![
                (r(100, 103 + BRIDGE_PAGES), 4), // a gap of BRIDGE_PAGES: bridged
                (r(300, 301), 1),
                (r(500, 501), 1),
            ]
        );
        assert!(pass_runs(&mut []).is_empty());
    }

    #[test]
    fn the_pass_copies_clusters_and_pages_written_twice_densest_first_within_its_budget() {
        // A cluster at 200, page 50 written in two epochs, 10 and 900 written once.
        let older = [10, 50];
        let last = [200, 202, 204, 900];
        let trapped = [201, 205, 203, 50];
        let plan = |budget| pass_plan([&older, &last, &trapped], budget);
        assert_eq!(plan(100), vec![r(200, 206), r(50, 51)]);
        assert_eq!(plan(4), vec![r(200, 204)], "cut to fit");
        assert!(plan(0).is_empty());
        assert!(
            pass_plan([&[10], &[900], &[5000]], 100).is_empty(),
            "pages written once at random"
        );
    }

    #[test]
    fn copies_at_the_pass_pay_against_traps_that_save_few_pages() {
        // A random writer: a trap saves 4 pages; 20% hits pay, 10% do not.
        assert!(pass_pays(200, 800, 4.0));
        assert!(!pass_pays(100, 900, 4.0));
        // A sweep: a trap saves 60 pages; 60% hits do not.
        assert!(!pass_pays(600, 400, 60.0));
        assert!(pass_pays(950, 50, 60.0));
        assert!(!pass_pays(0, 10, 1.0));
        let mut t = TrapPages::default();
        assert_eq!(t.mean(), 1.0);
        t.add(64);
        t.add(0);
        assert_eq!(t.mean(), 32.5);
    }

    #[test]
    fn the_pass_budget_doubles_while_its_copies_pay_and_halves_when_they_do_not() {
        // A random writer's traps save 4 pages: 45% hits pay.
        assert_eq!(next_pass_budget(1000, 450, 550, 4.0), 2000);
        assert_eq!(next_pass_budget(4000, 450, 550, 4.0), 4000, "not the limit");
        // A sweep's save 60: they do not.
        assert_eq!(next_pass_budget(1000, 600, 400, 60.0), 500);
        assert_eq!(next_pass_budget(MIN_BUDGET, 0, 90, 4.0), MIN_BUDGET);
        assert_eq!(next_pass_budget(1000, 0, 63, 4.0), 1000, "no verdict");
        // The plan's budget grows only when it was the limit.
        let plan = |may_grow| adapt_budget(1000, 300, 700, may_grow);
        assert_eq!((plan(true), plan(false)), (2000, 1000));
    }

    #[test]
    fn late_traps_are_traps_on_planned_pages_of_the_current_version() {
        let mut q = crate::engine::Queued::new();
        q.set_plan(7, &[r(10, 12), r(40, 41)]);
        assert!(
            q.holds(page::address(10), 7)
                && q.holds(page::address(11), 7)
                && q.holds(page::address(40), 7)
        );
        assert!(!q.holds(page::address(12), 7) && !q.holds(page::address(9), 7));
        assert!(
            !q.holds(page::address(10), 8),
            "a plan is for its version only"
        );
    }
}
