//! Epochs: the protect pass that takes a snapshot.
//!
//! A pass re-scans the regions, registers every tracked range with userfaultfd
//! (registering an already registered range is a no-op), opens version `v+1` and
//! write-protects what is not protected already: what the fault path unprotected since
//! the last pass, what is new, and what the kernel reported unmapped, zapped or moved
//! (see `reprotect`). Every other tracked page still carries the protection of an
//! earlier pass, so its first write traps all the same. Write faults that arrive while the pass runs are held (not
//! resolved) until it ends: resolving one early would let its thread go on to write a
//! page the pass has not protected yet, and the snapshot would be a state that never
//! existed. Held this way, the snapshot is the memory as the last protection ends.
//! Before the held writes go on, the pass copies the pages written lately, which the
//! prefetcher published (see `boundary_copy`), so the program does not trap on them.

use crate::base::mailbox::Mailbox;
use crate::base::range::{coalesce, Range};
use crate::base::sync::SpinLock;
use crate::config::Backend;
use crate::engine::holder;
use crate::engine::reprotect::{self, PassWork};
use crate::engine::uffd::Uffd;
use crate::engine::{self, RetiredRange, TrackedRange};
use crate::service::backend_choice::{Chooser, Epoch};
use crate::service::written;
use crate::{base::sys, stats, tracking::regions};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use memshadow_format::stats::Counter;

/// Pages write-protected per ioctl: large enough to be cheap, small enough that a fault
/// in a protected part is not held behind a long ioctl.
const PROTECT_CHUNK: usize = 512 * 4096;

/// What the last pass left: the tracked and retired lists (the engine holds the same
/// lists for readers; the next pass builds its own from this copy without the engine
/// lock).
struct PassState {
    tracked: Vec<TrackedRange>,
    retired: Vec<RetiredRange>,
    /// The ranges registered with the asynchronous write-protect descriptor (holder
    /// epochs tracked for a recorder, see `written`), sorted.
    async_ranges: Vec<Range>,
}

/// Passes run one at a time, holding this lock.
static PASS: SpinLock<PassState> = SpinLock::new(PassState {
    tracked: Vec::new(),
    retired: Vec::new(),
    async_ranges: Vec::new(),
});

/// The parts of `old` that `new` no longer holds, retired at version `v` (tracked from
/// their `since` up to `v`). Both lists are sorted and free of overlaps.
pub fn retire(old: &[TrackedRange], new: &[Range], v: u64) -> Vec<RetiredRange> {
    let mut out = Vec::new();
    for t in old {
        let mut cursor = t.range.start;
        let first = new.partition_point(|r| r.end <= t.range.start);
        for r in new[first..].iter().take_while(|r| r.start < t.range.end) {
            if r.start > cursor {
                out.push(RetiredRange {
                    range: Range::new(cursor, r.start),
                    since: t.since,
                    until: v,
                });
            }
            cursor = cursor.max(r.end);
        }
        if cursor < t.range.end {
            out.push(RetiredRange {
                range: Range::new(cursor, t.range.end),
                since: t.since,
                until: v,
            });
        }
    }
    out
}

/// Memory the last pass tracked and this one will not, though it is still mapped: a
/// thread stack the shim knows as one only now (the thread had not run when the last
/// pass listed it, or it runs on a stack glibc kept from an exited thread, which was
/// plain memory in between). The versions that tracked it keep its pages, saved now.
fn save_what_leaves_tracking(last: &[TrackedRange], wanted: &[Range]) {
    let leaving: Vec<Range> = retire(last, wanted, 0).iter().map(|r| r.range).collect();
    if leaving.is_empty() {
        return;
    }
    let mut mapped = Vec::new();
    regions::with_table(|t| t.untracked_within(&leaving, &mut |r| mapped.push(r)));
    for r in mapped {
        if !crate::engine::preserve::save_before_untracking(r) {
            crate::base::log::debug!(
                "{:#x}..{:#x} is no longer tracked and its pages could not be kept",
                r.start,
                r.end
            );
        }
    }
}

/// Which parts of `new` were tracked before (keep their `since`) and which are new
/// (tracked since `v`). Both lists are sorted and free of overlaps.
pub fn carry_since(old: &[TrackedRange], new: &[Range], v: u64) -> Vec<TrackedRange> {
    let mut out = Vec::with_capacity(new.len() + old.len());
    for &r in new {
        let mut cursor = r.start;
        let first = old.partition_point(|t| t.range.end <= r.start);
        for t in old[first..].iter().take_while(|t| t.range.start < r.end) {
            let start = t.range.start.max(r.start);
            if start > cursor {
                out.push(TrackedRange {
                    range: Range::new(cursor, start),
                    since: v,
                });
            }
            let end = t.range.end.min(r.end);
            out.push(TrackedRange {
                range: Range::new(start, end),
                since: t.since,
            });
            cursor = end;
        }
        if cursor < r.end {
            out.push(TrackedRange {
                range: Range::new(cursor, r.end),
                since: v,
            });
        }
    }
    out
}

/// Unprotected runs closer than this are protected with one ioctl, gap included: the
/// pages between are protected already (protecting them again changes nothing), and
/// each ioctl that changes a page flushes the TLB of every CPU the program runs on,
/// which costs far more than walking the gap's page table entries. A program writing
/// at random leaves thousands of short runs; one ioctl each made passes of 100-600 ms.
const MERGE_GAP: usize = PROTECT_CHUNK;

/// How long a pass keeps retrying write-protection the kernel refuses with EAGAIN.
const EAGAIN_LIMIT_NS: u64 = 1_000_000_000;

/// How a range's write-protection went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protected {
    Yes,
    /// Not registered any more (unmapped meanwhile): nothing to protect.
    Gone,
    /// The kernel kept answering EAGAIN past the pass's deadline.
    Refused,
}

/// Write-protects `r`. While an UNMAP/REMOVE/REMAP event is queued the kernel answers
/// EAGAIN until the fault thread has read it: yield and try again, until `deadline`.
fn protect_retrying(u: &Uffd, r: Range, deadline: u64) -> Protected {
    loop {
        match u.write_protect(r, true) {
            Ok(()) => return Protected::Yes,
            Err(e) if e.is_again() => {
                if engine::now_ns() > deadline {
                    return Protected::Refused;
                }
                // SAFETY: sched_yield has no arguments and no memory effects.
                unsafe { libc::sched_yield() };
            }
            Err(_) => return Protected::Gone,
        }
    }
}

/// Write-protects the parts of `r` inside `registered`, in chunks; returns the pages.
fn protect_within(
    u: &Uffd,
    registered: &[Range],
    r: Range,
    deadline: u64,
    refused: &mut bool,
) -> u64 {
    let mut pages = 0u64;
    reprotect::within(registered, r, &mut |part| {
        let mut start = part.start;
        while start < part.end && !*refused {
            let end = (start + PROTECT_CHUNK).min(part.end);
            match protect_retrying(u, Range::new(start, end), deadline) {
                Protected::Yes => pages += ((end - start) / crate::base::page::PAGE) as u64,
                Protected::Gone => {}
                Protected::Refused => *refused = true,
            }
            start = end;
        }
    });
    pages
}

/// Takes a snapshot: runs a protect pass and returns its version once it has ended.
/// Why a snapshot was not taken, or not whole.
#[derive(Debug)]
pub enum SnapshotError {
    /// The shim does not track this process (set-up failed).
    NotTracking,
    /// The engine could not start (or stopped for good: no snapshot will be taken).
    Start(engine::StartError),
    /// The engine stopped for good during the pass (a descriptor lost).
    Stopped,
    /// Part of the memory could not be protected: the snapshot was abandoned; the next
    /// one starts afresh.
    Incomplete { version: u64, ms: u64 },
}

impl SnapshotError {
    /// Whether later snapshots can succeed (the engine runs).
    pub fn passing(&self) -> bool {
        matches!(self, SnapshotError::Incomplete { .. })
    }
}

impl core::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnapshotError::NotTracking => write!(f, "memshadow is not tracking this process"),
            SnapshotError::Start(e) => write!(f, "{e}"),
            SnapshotError::Stopped => {
                write!(f, "snapshots stopped: the program closed the shim's userfaultfd")
            }
            SnapshotError::Incomplete { version, ms } => write!(
                f,
                "the kernel kept refusing to write-protect memory (EAGAIN) for {ms} ms; snapshot {version} is incomplete"
            ),
        }
    }
}

pub fn snapshot() -> Result<u64, SnapshotError> {
    let _blocked = sys::block_signals();
    let mut last = PASS.lock();
    let config = crate::config::current().ok_or(SnapshotError::NotTracking)?;
    if !engine::started() {
        engine::ensure_started(&config).map_err(SnapshotError::Start)?;
        // The prefetch thread comes with the engine (it copies for it); snapshots work
        // without it, by plain copy-on-write.
        if let Err(e) = crate::prefetch::start(&config) {
            crate::base::log::error!("no prefetching: {e}");
        }
    }
    if !crate::base::fds::verify(engine::uffd_fd()) {
        engine::stop("the shim's userfaultfd descriptor");
        return Err(SnapshotError::Stopped);
    }
    let started = engine::now_ns();
    crate::engine::preserve::wait_for_saves();

    // The first pass has no epoch before it: the faults since start-up are the program
    // populating its memory, not rewriting it; nor are the faults of later epochs that
    // grew its resident memory (see `rewrites`).
    let faults = sys::minor_faults();
    // The program's anonymous memory resident now, read once a pass: the rule for
    // copying, and for a holder its count and the governor's price.
    let resident_now = if config.backend == Backend::Shadow {
        UNREAD
    } else {
        sys::anon_resident_pages()
    };
    let resident_before = RESIDENT_AT_LAST_PASS.swap(resident_now, Ordering::Relaxed);
    let epoch_rewrites = match FAULTS_AT_LAST_PASS.swap(faults, Ordering::Relaxed) {
        NO_PASS_YET => 0,
        last => rewrites(faults.saturating_sub(last), resident_before, resident_now),
    };
    let scan = engine::start_scan();
    regions::rescan();
    let rescanned = engine::now_ns();
    let wanted = regions::with_table(|t| t.tracked_ranges());
    save_what_leaves_tracking(&last.tracked, &wanted);
    let u = engine::uffd();
    // Under `holder`, a holder child keeps this version: made now, after the scan (its
    // instant is the clone), on this thread (the epoch thread: its PDEATHSIG is tied to
    // it). Nothing is registered or protected for it. A clone refused: this version
    // is a shadow snapshot, protecting everything.
    let wants_holder = ON_EPOCH_THREAD.with(|t| t.get())
        && match config.backend {
            Backend::Shadow => false,
            Backend::Holder => true,
            Backend::Auto => auto_wants_holder(&wanted),
        };
    // The ranges a holder does not keep as they are (`MADV_DONTFORK`: absent in it;
    // `MADV_WIPEONFORK`: zero there). At the first holder pass, and from then on while
    // the program has any, they are looked for in /proc/self/smaps before the clone and
    // kept on shadows in the holder's version: protected once the version is open, with
    // faults held, and the holder made then (see `make_holder_in_pass`). What the
    // holder's own check after the clone finds beyond them (marked in between) is
    // refused: under `holder` always; under `auto` a holder made before the version
    // opened with any is let go and the pass takes shadows (see `hold`).
    let mut kept_on_shadows = if wants_holder && NOT_HELD_MET.load(Ordering::Relaxed) {
        let found = not_held_in(&wanted);
        NOT_HELD_MET.store(!found.is_empty(), Ordering::Relaxed);
        found
    } else {
        Vec::new()
    };
    // Holder epochs tracked for a recorder (see `written`): the pages written in the
    // epoch ending, scanned just before the clone.
    let track_writes = wants_holder && written::wanted() && written::prepare();
    let mut before_clone = Vec::new();
    if track_writes {
        written::take(&last.async_ranges, &mut before_clone);
    }
    // What is kept on shadows is registered with the synchronous descriptor (out of the
    // asynchronous one first, where a recorder's tracking put it). A part that will not
    // register (the program's own userfaultfd holds it): a shadow snapshot, which does
    // not track it either.
    let wants_holder = wants_holder && {
        written::move_back(&kept_on_shadows);
        let all = kept_on_shadows.iter().all(|&r| u.register(r).is_ok());
        if !all {
            crate::base::log::debug!("memory a holder would not keep will not register: shadows");
        }
        all
    };
    if !wants_holder {
        kept_on_shadows.clear();
    }
    let in_pass = !kept_on_shadows.is_empty();
    // What the holder itself keeps: the tracked memory but what is kept on shadows. The
    // asynchronous descriptor takes it under a tracked holder, and a holder that copies
    // copies it (a holder has none of the rest, and its copy of a range stops where part
    // of it is not mapped there).
    let mut held_by_holder = Vec::new();
    if wants_holder {
        for &r in &wanted {
            crate::base::range::subtract(r, &kept_on_shadows, &mut |part| {
                held_by_holder.push(part)
            });
        }
    }
    let hold_started = engine::now_ns();
    // A new pass: the lazy holder watched so far is not the newest any more.
    *LAZY_WATCH.lock() = None;
    let mut watch_resident = None;
    let mut pending = None;
    let mut holding = if wants_holder {
        if engine::with(|e| e.live_holder_count()).unwrap_or(0) < holder::MAX_HOLDERS {
            let resident = resident_now;
            let at_once = copy_at_once(&config, epoch_rewrites, resident);
            crate::base::log::debug!(
                "holder: the epoch ending rewrote {epoch_rewrites} of {resident} resident pages: {}",
                if at_once { "copies at once" } else { "lazy" }
            );
            // Under `auto` a lazy holder is given the memory too: it copies when the
            // program starts rewriting it after all (see `watch_lazy_holder`).
            // A holder copies only what it has: nothing of memory it has no mapping
            // for, or of a wiped mapping (nothing there is resident).
            let copy = if config.holder_copy != crate::config::HolderCopy::Never {
                held_by_holder.clone()
            } else {
                Vec::new()
            };
            let kept = if at_once {
                holder::Kept::Copied(resident.saturating_mul(crate::base::page::PAGE as u64))
            } else {
                holder::Kept::lazy_from(faults)
            };
            if let holder::Kept::Copied(coming) = kept {
                make_room_before_clone(config.shadow_budget_mb, coming);
            }
            let on_demand = !at_once && !copy.is_empty();
            let refuse_not_held = config.backend == Backend::Auto;
            let made = if in_pass {
                // Made once the version is open (see `make_holder_in_pass`).
                pending = Some(PendingHolder {
                    copy,
                    at_once,
                    kept,
                });
                None
            } else {
                hold(&wanted, copy, at_once, kept, refuse_not_held)
            };
            if made.is_some() || pending.is_some() {
                HELD_RESIDENT_PAGES.store(resident, Ordering::Relaxed);
                if on_demand {
                    watch_resident = Some(resident);
                }
            }
            made
        } else {
            if !HOLDERS_FULL_SAID.swap(true, Ordering::Relaxed) {
                crate::base::log::error!(
                    "{} holders are alive (the most the shim keeps): versions past them use shadows",
                    holder::MAX_HOLDERS
                );
            }
            None
        }
    } else {
        None
    };
    let holder_coming = holding.is_some() || pending.is_some();
    // ... and just after it (pages written around the clone count in both epochs). A
    // holder made in the pass is cloned with faults held, when nothing may allocate:
    // that scan comes once the pass is over (later than just after: more pages in both
    // lists, none missing).
    let tracking = track_writes && holder_coming;
    let mut after_clone = Vec::new();
    if tracking && !in_pass {
        written::take(&last.async_ranges, &mut after_clone);
    }
    let mut moves = tracking.then(|| written::Moves::with_room(&wanted, &last.async_ranges));
    // Shadows after tracked holder epochs: the memory goes back to the synchronous
    // descriptor (below), written whole in the epoch ending.
    let mut moved_back = (!tracking && !last.async_ranges.is_empty()).then(|| {
        written::move_back(&last.async_ranges);
        core::mem::take(&mut last.async_ranges)
    });
    // Checked once the pass is over: the holder made in it, and what it keeps on shadows.
    let shadowed_check = kept_on_shadows.clone();
    let mut ranges = Vec::with_capacity(wanted.len());
    if holder_coming {
        ranges = wanted;
    } else {
        for r in wanted {
            match u.register(r) {
                Ok(()) => ranges.push(r),
                // Gone meanwhile, or already registered by the program's own userfaultfd.
                Err(e) => {
                    crate::base::log::debug!("not tracking {:#x}..{:#x}: {e}", r.start, r.end)
                }
            }
        }
    }
    // Room for every holder there is, and this one.
    let mut released = Vec::with_capacity(if holder_coming {
        engine::with(|e| e.holder_count()).unwrap_or(0) + 1
    } else {
        0
    });
    // Everything that allocates happens before the version opens. Once faults are held,
    // a forking host thread may be among the held, holding the arena lock (atfork): the
    // pass must then need nothing but ioctls and the engine lock until it has released
    // the held faults.
    let mut held = Vec::with_capacity(engine::HELD_CAPACITY);
    let Some((v, (unprotected_cap, changed_cap), oldest)) = engine::with(|e| e.next_version())
    else {
        if let Some((h, _)) = holding {
            h.release();
        }
        return Err(SnapshotError::Stopped);
    };
    let mut work = PassWork::with_capacity(unprotected_cap, changed_cap);
    let tracked = carry_since(&last.tracked, &ranges, v);
    crate::tracking::stacks::publish_tracked(tracked.iter().map(|t| t.range));
    // Retired ranges stay while a retained version may need them.
    let mut retired: Vec<RetiredRange> = last
        .retired
        .iter()
        .filter(|r| r.until > oldest)
        .copied()
        .collect();
    retired.extend(retire(&last.tracked, &ranges, v));
    last.tracked = tracked.clone();
    last.retired = retired.clone();
    let mut tracked = Some(tracked);
    let mut retired = Some(retired);

    // Open the new version: from here on write faults are held. Not while the fault
    // thread holds events it has read but not yet handled: the kernel lets a discarding
    // thread go on as soon as its event is read, so such an event belongs before this
    // version (its range must be in this pass's work, its losses counted before it).
    // When writes began to be held.
    let mut opened_at;
    loop {
        opened_at = engine::now_ns();
        let opened = engine::with(|e| e.open_version(v, scan, &mut work));
        if opened != Some(false) {
            break;
        }
        // SAFETY: sched_yield has no arguments and no memory effects.
        unsafe { libc::sched_yield() };
    }

    // Protect again what lost its protection since the last pass, and what is new.
    let mut pages = 0u64;
    let deadline = engine::now_ns() + EAGAIN_LIMIT_NS;
    let mut refused = false;
    let mut holder_us = None;
    let (mut install_started, mut installed) = (0, 0);
    let mut made_in_pass = None;
    if let Some(p) = pending.take() {
        for &r in &kept_on_shadows {
            pages += protect_within(&u, &kept_on_shadows, r, deadline, &mut refused);
        }
        match make_holder_in_pass(p, core::mem::take(&mut kept_on_shadows), refused) {
            Ok((h, view)) => {
                holding = Some(h);
                made_in_pass = Some(Ok(view));
            }
            Err(e) => {
                // A shadow snapshot after all: the memory goes back to the synchronous
                // descriptor, and everything is protected below. A range that will
                // not register now was counted as tracked: the snapshot is given up
                // rather than read it live.
                moves = None;
                if !last.async_ranges.is_empty() {
                    written::move_back(&last.async_ranges);
                    moved_back = Some(core::mem::take(&mut last.async_ranges));
                }
                for &r in &ranges {
                    if u.register(r).is_err() {
                        refused = true;
                    }
                }
                made_in_pass = Some(Err(e));
            }
        }
    }
    if let Some((mut h, us)) = holding {
        if let Some(m) = moves.as_mut() {
            written::move_to_async(&u, &held_by_holder, &last.async_ranges, m);
        }
        h.version = v;
        // The holder is the version; the holders of evicted versions go once the pass
        // is over. No room for it (never, with one holder per retained version): the
        // version is given up.
        holder_us = Some(us);
        let mut unplaced = Some(h);
        install_started = engine::now_ns();
        engine::with(|e| {
            e.take_released(&mut released, false);
            if let Some(h) = unplaced.take() {
                unplaced = e.install_holder(h, faults).err();
            }
        });
        installed = engine::now_ns();
        // No room, or the engine stopped meanwhile: released with the others.
        if let Some(h) = unplaced {
            refused = true;
            released.push(h);
        }
    } else if work.all {
        for &r in &ranges {
            pages += protect_within(&u, &ranges, r, deadline, &mut refused);
        }
    } else {
        work.unprotected.sort_unstable_by_key(|r| r.start);
        coalesce(&mut work.unprotected, MERGE_GAP);
        for &r in work.unprotected.iter().chain(&work.changed) {
            pages += protect_within(&u, &ranges, r, deadline, &mut refused);
        }
        for t in tracked.as_ref().expect("set above") {
            if t.since == v {
                pages += protect_within(&u, &ranges, t.range, deadline, &mut refused);
            }
        }
    }

    // Everything is protected: this is the snapshot's instant. The engine takes this
    // pass's lists (what the copy below may save is what version `v` tracks); before the
    // held writes go on, copy the pages they are most likely to write first.
    engine::with(|e| {
        e.install_lists(
            tracked.as_mut().expect("set above"),
            retired.as_mut().expect("set above"),
        )
    });
    if !refused && holder_us.is_none() {
        // A fifth of the period in force: when the governor has stretched it, a
        // program that rewrites its working set every period has more of it copied
        // here, in runs, instead of page by page in traps.
        let period = crate::engine::governor::interval_ms(INTERVAL_MS.load(Ordering::Relaxed));
        let cap = crate::engine::boundary_copy::cap_ns(period);
        crate::engine::boundary_copy::copy_at_pass(v, cap);
    }

    // The pass is over. Release the held faults before anything is freed (freeing takes
    // the arena lock).
    let ending = engine::now_ns();
    engine::with(|e| e.end_pass(&mut held, refused));
    for &addr in &held {
        engine::with(|e| e.resolve(addr));
    }
    let ended = engine::now_ns();
    let held_count = held.len();
    // A holder's clone stalled the program too (the page-table copy), before the version
    // opened (or in the pass, counted there): the governor counts it with the pass.
    let stalled_from = match (holder_us, &made_in_pass) {
        (Some(us), None) => opened_at.saturating_sub(us * 1000),
        _ => opened_at,
    };
    crate::engine::governor::note_pass(engine::now_ns() - stalled_from, held.len());
    crate::prefetch::epoch_opened();
    drop(tracked); // the previous lists
    drop(retired);
    drop(held);
    drop(work);
    match made_in_pass {
        Some(Ok(view)) if !refused => check_holder_made_in_pass(v, view, &ranges, &shadowed_check),
        Some(Err(e)) => say_no_holder(e),
        _ => {}
    }
    if in_pass && moves.is_some() {
        written::take(&last.async_ranges, &mut after_clone);
    }
    let noting = engine::now_ns();
    if moves.is_some() {
        // Kept on shadows: no scan lists its writes; written whole in both epochs.
        before_clone.extend_from_slice(&shadowed_check);
        after_clone.extend_from_slice(&shadowed_check);
    }
    note_written(v, before_clone, after_clone, moves, moved_back, &mut last);
    let reap_started = engine::now_ns();
    // Killed and reaped here, on the epoch thread, outside the engine lock.
    for h in released {
        h.release();
    }
    let reaped = engine::now_ns();
    if config.backend == Backend::Auto {
        AUTO.lock().1.held_ns = holder_us.map(|us| us * 1000);
    }
    if let (Some(resident), false) = (watch_resident, refused) {
        *LAZY_WATCH.lock() = Some(LazyWatch {
            version: v,
            at: engine::now_ns(),
            faults: sys::minor_faults(),
            resident,
            resident_seen: sys::anon_resident_pages(),
            course: LazyCourse::default(),
        });
    }
    if let Some(clone_us) = holder_us {
        stats::add(Counter::HolderSnapshots, 1);
        let max = stats::page().counter(Counter::HolderPauseUsMax);
        max.fetch_max(clone_us, Ordering::Relaxed);
        keep_holders_within_budget(config.shadow_budget_mb);
        let us = |from: u64, to: u64| to.saturating_sub(from) / 1000;
        crate::base::log::debug!(
            "holder pass {v}: rescan {} us, room, clone and checks {} us; the program stopped {} us (clone {clone_us}, opening {} us, installing {} us, listing {} us, {} held faults resolved in {} us); then {} us, noting written {} us, reap {} us, pinned and budget {} us",
            us(started, rescanned),
            us(hold_started, stalled_from + clone_us * 1000),
            us(stalled_from, ended),
            us(opened_at, install_started),
            us(install_started, installed),
            us(installed, ending),
            held_count,
            us(ending, ended),
            us(ended, noting),
            us(noting, reap_started),
            us(reap_started, reaped),
            us(reaped, engine::now_ns())
        );
    }

    let us = (engine::now_ns() - started) / 1000;
    stats::add(Counter::Epochs, 1);
    stats::add(Counter::PagesProtected, pages);
    stats::set(Counter::ProtectPassUsLast, us);
    let max = stats::page().counter(Counter::ProtectPassUsMax);
    max.fetch_max(us, Ordering::Relaxed);
    if refused {
        return Err(SnapshotError::Incomplete {
            version: v,
            ms: EAGAIN_LIMIT_NS / 1_000_000,
        });
    }
    Ok(v)
}

/// Hands the engine what a pass learnt of the pages written (see `written`): under a
/// tracked holder (`moves`: what the pass registered), epoch `v - 1`'s pages (scanned before and after the clone) and epoch
/// `v`'s so far (after the clone, and the memory newly registered, whole); back on
/// shadows, the memory that left the asynchronous descriptor, whole, in epoch `v - 1`.
/// Lists no retained version needs come back out and are dropped here, outside the
/// engine lock.
fn note_written(
    v: u64,
    mut before_clone: Vec<Range>,
    mut after_clone: Vec<Range>,
    moves: Option<written::Moves>,
    moved_back: Option<Vec<Range>>,
    last: &mut PassState,
) {
    let mut lists = Vec::with_capacity(2);
    let tracking = moves.is_some();
    if let Some(moves) = moves {
        before_clone.extend_from_slice(&after_clone);
        after_clone.extend_from_slice(&moves.whole);
        lists.push((v - 1, before_clone));
        lists.push((v, after_clone));
        last.async_ranges = moves.now_async;
    } else if let Some(back) = moved_back {
        lists.push((v - 1, back));
    }
    let kept = engine::with(|e| e.written_lists()).unwrap_or(0);
    if lists.is_empty() && kept == 0 {
        return;
    }
    let mut old = Vec::with_capacity(kept);
    let began = tracking.then_some(v);
    let noted = engine::with(|e| {
        let noted = e.note_written(began, &mut lists);
        e.take_old_written(&mut old);
        noted
    });
    if noted == Some(false) && !WRITTEN_FULL_SAID.swap(true, Ordering::Relaxed) {
        crate::base::log::debug!("written lists full: holder epochs count whole until the next");
    }
    drop(old);
    drop(lists);
}

static WRITTEN_FULL_SAID: AtomicBool = AtomicBool::new(false);

/// `MEMSHADOW_BACKEND=auto`: the rule, and what the last pass left for it (the counters
/// then, and whether it made a holder and how long the clone took). The epoch thread
/// alone takes it, once per pass.
static AUTO: SpinLock<(Chooser, AutoMark)> = SpinLock::new((Chooser::new(), AutoMark::NONE));

/// The counters at the last pass under `auto`, and what that pass was.
#[derive(Clone, Copy)]
struct AutoMark {
    /// No pass yet.
    first: bool,
    traps: u64,
    prefetch_hits: u64,
    minor_faults: u64,
    /// The clone's duration when the last pass made a holder.
    held_ns: Option<u64>,
}

impl AutoMark {
    const NONE: AutoMark = AutoMark {
        first: true,
        traps: 0,
        prefetch_hits: 0,
        minor_faults: 0,
        held_ns: None,
    };
}

/// Under `auto`, on the epoch thread before a pass over `tracked`: the epoch since the
/// last pass goes to the rule, which says whether this snapshot is a holder's.
fn auto_wants_holder(tracked: &[Range]) -> bool {
    let counter = |c: Counter| stats::page().counter(c).load(Ordering::Relaxed);
    let now = AutoMark {
        first: false,
        traps: counter(Counter::Traps),
        prefetch_hits: counter(Counter::PrefetchHits),
        minor_faults: sys::minor_faults(),
        held_ns: None,
    };
    let tracked_bytes = tracked.iter().map(|r| r.len() as u64).sum();
    let mut auto = AUTO.lock();
    let (chooser, last) = &mut *auto;
    if last.first {
        chooser.first_snapshot(tracked_bytes);
    } else {
        let epoch = Epoch {
            held: last.held_ns.is_some(),
            traps: now.traps.saturating_sub(last.traps),
            prefetch_hits: now.prefetch_hits.saturating_sub(last.prefetch_hits),
            minor_faults: now.minor_faults.saturating_sub(last.minor_faults),
            clone_ns: last.held_ns.unwrap_or(0),
            tracked_bytes,
            cost_ns: crate::engine::governor::program_cost_so_far_ns(),
        };
        crate::base::log::debug!(
            "auto: held {} traps {} hits {} minor {} clone {} cost {}",
            epoch.held,
            epoch.traps,
            epoch.prefetch_hits,
            epoch.minor_faults,
            epoch.clone_ns,
            epoch.cost_ns
        );
        if chooser.after_epoch(&epoch) {
            stats::add(Counter::BackendSwitches, 1);
        }
    }
    *last = now;
    chooser.holder_next()
}

/// The parts of `tracked` a holder would not keep as they are now (see
/// `tracking::maps::not_inherited`), from /proc/self/smaps: under `auto`, before a clone,
/// once it has met such memory (a walk of the program's page tables; the holder itself
/// is checked after the clone in any case, see `hold`).
fn not_held_in(tracked: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    // Unreadable: none found here; the check of the holder after its clone still holds.
    holder::not_inherited_per_smaps(c"/proc/self/smaps", tracked, &mut out);
    out
}

/// Whether the program had memory a holder would not keep as it was when last looked
/// (see `snapshot`): set at start, so the first holder pass looks too.
static NOT_HELD_MET: AtomicBool = AtomicBool::new(true);
static NOT_HELD_SAID: AtomicBool = AtomicBool::new(false);

/// Why no holder was made for a pass that wanted one.
#[derive(Debug, Clone, Copy)]
enum NoHolder {
    /// The program is not dumpable: a holder of its memory could not be read.
    NotDumpable,
    /// The kept-on-shadows memory could not be protected (the pass is given up).
    NotProtected,
    Holder(holder::HolderError),
}

/// Says once (each kind) why a pass that wanted a holder took shadows.
fn say_no_holder(why: NoHolder) {
    match why {
        NoHolder::NotDumpable => {
            if !NOT_DUMPABLE_SAID.swap(true, Ordering::Relaxed) {
                crate::base::log::error!(
                    "the program is not dumpable (PR_SET_DUMPABLE), so a holder of its memory could not be read; its snapshots use shadows"
                );
            }
        }
        NoHolder::NotProtected => {}
        NoHolder::Holder(e) => {
            if !HOLDER_ERROR_SAID.swap(true, Ordering::Relaxed) {
                crate::base::log::error!(
                    "cannot make a holder ({e}); this snapshot and others like it use shadows"
                );
            }
        }
    }
}

static NOT_DUMPABLE_SAID: AtomicBool = AtomicBool::new(false);

/// Makes a holder of this process's memory now (see `Holder`), `at_once` copying
/// `copy` into itself; with the clone's duration in microseconds (a stall of the
/// program, like fork's). No allocation: it may run with faults held.
fn clone_holder(copy: &[Range], at_once: bool) -> Result<(holder::Holder, u64), NoHolder> {
    use crate::engine::holder::Holder;
    // A program that made itself not dumpable (PR_SET_DUMPABLE 0: ssh-agent, gpg-agent)
    // makes its children so too: a holder then could not be read (process_vm_readv of
    // another process needs ptrace access), so its versions stay on shadows.
    // SAFETY: PR_GET_DUMPABLE takes no pointer.
    if unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } != 1 {
        return Err(NoHolder::NotDumpable);
    }
    let mut t0 = engine::now_ns();
    let make = || {
        if at_once {
            Holder::copy_now(copy)
        } else if copy.is_empty() {
            Holder::hold_now()
        } else {
            Holder::copy_when_asked(copy)
        }
    };
    let mut made = make();
    // A pidfd lost to the host before the shim could guard it (a program that closes
    // or dup2s onto numbers it did not open, in the microseconds between): the holder
    // was reaped; try again.
    for _ in 0..PIDFD_RETRIES {
        if !matches!(
            made,
            Err(holder::HolderError::Pidfd(_) | holder::HolderError::PidfdLost)
        ) {
            break;
        }
        t0 = engine::now_ns();
        made = make();
    }
    let us = (engine::now_ns() - t0) / 1000;
    made.map(|h| (h, us)).map_err(NoHolder::Holder)
}

/// Makes the holder of the version about to open, of `tracked`, and the clone's
/// duration in microseconds. Then the holder is asked which parts of `tracked` it does
/// not hold as they were (see `HolderView::not_inherited`): with `refuse_not_held`
/// (under `auto`), a holder with any is let go, and the caller takes a shadow snapshot,
/// which keeps every range; otherwise their reads are refused. Either way the next pass
/// looks for such memory before its clone and keeps it on shadows. `None`, said once,
/// when the clone is refused or the holder cannot be checked: a shadow snapshot.
fn hold(
    tracked: &[Range],
    copy: Vec<Range>,
    at_once: bool,
    kept: holder::Kept,
    refuse_not_held: bool,
) -> Option<(crate::engine::holder::HeldVersion, u64)> {
    use crate::engine::holder::HeldVersion;
    let checked = clone_holder(&copy, at_once).and_then(|(h, us)| match h.not_inherited(tracked) {
        Ok(not_held) => Ok((h, not_held, us)),
        Err(e) => {
            h.release();
            Err(NoHolder::Holder(e))
        }
    });
    match checked {
        Ok((h, not_held, _)) if !not_held.is_empty() && refuse_not_held => {
            h.release();
            NOT_HELD_MET.store(true, Ordering::Relaxed);
            if !NOT_HELD_SAID.swap(true, Ordering::Relaxed) {
                crate::base::log::debug!(
                    "auto: MADV_DONTFORK or MADV_WIPEONFORK memory met after the clone: shadows this pass"
                );
            }
            None
        }
        Ok((h, not_held, us)) => {
            if !not_held.is_empty() {
                NOT_HELD_MET.store(true, Ordering::Relaxed);
            }
            if at_once {
                stats::add(Counter::HolderCopiedAtOnce, 1);
            }
            // Nothing allocates once the version is open: the version is set there.
            Some((HeldVersion::new(h, not_held, Vec::new(), kept), us))
        }
        Err(e) => {
            say_no_holder(e);
            None
        }
    }
}

/// A holder a pass makes once its version is open (it keeps memory on shadows).
struct PendingHolder {
    copy: Vec<Range>,
    at_once: bool,
    kept: holder::Kept,
}

/// With the version open (faults held) and the memory kept on shadows (`shadowed`)
/// protected: makes the holder, whose clone is the version's instant, so that memory's
/// first writes after it leave shadows stamped with the version, as in a shadow epoch.
/// No allocation (faults are held). Not when the protection was refused (`refused`).
fn make_holder_in_pass(
    p: PendingHolder,
    shadowed: Vec<Range>,
    refused: bool,
) -> Result<((holder::HeldVersion, u64), holder::HolderView), NoHolder> {
    if refused {
        return Err(NoHolder::NotProtected);
    }
    let (h, us) = clone_holder(&p.copy, p.at_once)?;
    if p.at_once {
        stats::add(Counter::HolderCopiedAtOnce, 1);
    }
    let view = h.view();
    Ok((
        (
            holder::HeldVersion::new(h, Vec::new(), shadowed, p.kept),
            us,
        ),
        view,
    ))
}

/// Once a pass that made its holder with the version open is over: what that holder
/// does not hold as it was (see `HolderView::not_inherited`) beyond what the pass kept
/// on shadows (`shadowed`), marked by the program between its look in smaps and the
/// clone, is refused in version `v`; so is everything it holds if it cannot be checked.
fn check_holder_made_in_pass(
    v: u64,
    view: holder::HolderView,
    tracked: &[Range],
    shadowed: &[Range],
) {
    let mut beyond = Vec::new();
    match view.not_inherited(tracked) {
        Ok(found) => {
            for r in found {
                crate::base::range::subtract(r, shadowed, &mut |part| beyond.push(part));
            }
        }
        Err(e) => {
            crate::base::log::error!(
                "cannot check version {v}'s holder ({e}): its reads are refused but for what it keeps on shadows"
            );
            for &r in tracked {
                crate::base::range::subtract(r, shadowed, &mut |part| beyond.push(part));
            }
        }
    }
    if beyond.is_empty() {
        return;
    }
    NOT_HELD_MET.store(true, Ordering::Relaxed);
    crate::base::log::debug!(
        "holder of version {v}: {} ranges marked MADV_DONTFORK or MADV_WIPEONFORK since the look before its clone: refused",
        beyond.len()
    );
    let old = engine::with(|e| e.set_not_held(v, beyond));
    drop(old);
}

/// Whether the holder about to be made copies the tracked memory it holds into itself at
/// once (see `engine::holder`): `MEMSHADOW_HOLDER_COPY=always`, or under `auto` when the
/// program's rewrites since the last pass (the epoch ending; see [`rewrites`]) number at
/// least half the anonymous pages it has resident (`resident_pages`): a program that
/// rewrites most of its memory between snapshots, for which a lazy holder costs a kernel
/// copy with the other cores' TLBs flushed on every first write (17 us with two writers
/// here) and ends up keeping as many pages.
fn copy_at_once(config: &crate::config::Config, epoch_rewrites: u64, resident_pages: u64) -> bool {
    use crate::config::HolderCopy;
    match config.holder_copy {
        HolderCopy::Never => false,
        HolderCopy::Always => true,
        HolderCopy::Auto => epoch_rewrites.saturating_mul(2) >= resident_pages,
    }
}

/// Of the program's `faults` while its anonymous resident pages went from `before` to
/// `after`, those that may have rewritten a page it had: a fault that grew its resident
/// memory populated a page (a first touch), which no holder shares, and a holder
/// never copies it. Under a lazy holder a rewrite leaves the program's resident count as
/// it was (its page is replaced by a copy), so the growth is the population. hot_set_only
/// (1 GiB, its memory touched for the first time over its first seconds) had its lazy
/// holders asked to copy the whole gigabyte for faults that were all first touches, and
/// met a 103 ms batch where it met 28 ms. [`UNREAD`] counts no growth.
fn rewrites(faults: u64, before: u64, after: u64) -> u64 {
    if before == UNREAD || after == UNREAD {
        return faults;
    }
    faults.saturating_sub(after.saturating_sub(before))
}

/// The newest holder while it is lazy and was given the memory to copy when asked: its
/// version, the last look at the program (when, and its minor faults then), and its
/// anonymous pages resident at the clone. Only the epoch thread uses it.
#[derive(Clone, Copy)]
struct LazyWatch {
    version: u64,
    at: u64,
    faults: u64,
    resident: u64,
    /// The program's anonymous resident pages at the last look (see [`rewrites`]).
    resident_seen: u64,
    /// What the looks so far saw (see [`LazyCourse`]).
    course: LazyCourse,
}

static LAZY_WATCH: SpinLock<Option<LazyWatch>> = SpinLock::new(None);

/// How often the epoch thread looks at the program's faults under a lazy holder.
const LAZY_WATCH_MS: u64 = 50;

/// Windows in a row on course before a lazy holder is asked to copy: a program whose
/// hot set is rewritten right after a snapshot faults in a burst and then no more.
/// hot_set_only, 1 GiB, a snapshot every 1.6 s: its hot set (13 K pages) is rewritten
/// in about 80 ms after each snapshot, 6-8 K faults a window (a rate that would fault
/// every resident page within the period), then nothing; asked after one window, 4 of
/// its holders in a run copied the whole gigabyte, after two 0 and 2, after three
/// none. The price is paid by a program that goes on rewriting slowly: multi_writer,
/// 1 GiB, two writers, every 4 s, its holder made idle: 255-279 M ops/s asked after one
/// window, 247-257 M after three (worst batch 0.42-0.70 s, 0.61-0.63 s; fork 0.55 s).
/// A burst that rewrites most of the memory is asked sooner (see [`LazyCourse::asks`]).
const LAZY_WINDOWS_ON_COURSE: u32 = 3;

/// On the epoch thread between passes, about every [`LAZY_WATCH_MS`]: when the
/// program's rewrites under the newest holder, still lazy, show it rewriting its memory
/// at the rate [`copy_at_once`] applies to the epoch before a clone (over the period,
/// `period_ms`; see [`LazyCourse::asks`]), the holder is asked to copy that memory into
/// itself now. A holder made after epochs that wrote little stays lazy otherwise, and a
/// program that starts rewriting its memory then pays a kernel copy with the other
/// cores' TLBs flushed on every first write (multi_writer, two writers, 1 GiB: 21.7 us a
/// fault, a first batch of 1.1-1.2 s after an idle start).
fn watch_lazy_holder(period_ms: u64) {
    let Some(w) = *LAZY_WATCH.lock() else {
        return;
    };
    let now = engine::now_ns();
    let window = now.saturating_sub(w.at);
    let period = period_ms.saturating_mul(1_000_000);
    if period == 0 {
        // Snapshots only when asked: no period to project the faults over.
        *LAZY_WATCH.lock() = None;
        return;
    }
    if window < LAZY_WATCH_MS * 1_000_000 / 2 {
        return;
    }
    let faults_now = sys::minor_faults();
    let resident_now = sys::anon_resident_pages();
    let rewritten = rewrites(
        faults_now.saturating_sub(w.faults),
        w.resident_seen,
        resident_now,
    );
    let course = w.course.after(rewritten, window, period, w.resident);
    if !course.asks(w.resident) {
        *LAZY_WATCH.lock() = Some(LazyWatch {
            at: now,
            faults: faults_now,
            resident_seen: resident_now,
            course,
            ..w
        });
        return;
    }
    *LAZY_WATCH.lock() = None;
    let copied = holder::Kept::Copied(w.resident.saturating_mul(crate::base::page::PAGE as u64));
    if engine::with(|e| e.ask_to_copy(w.version, copied)).unwrap_or(false) {
        stats::add(Counter::HolderCopiedAtOnce, 1);
        crate::base::log::debug!(
            "holder of version {}: {rewritten} rewrites in {} ms, {} since it was made, asked to copy",
            w.version,
            window / 1_000_000,
            course.rewrites
        );
    }
}

/// What the looks at the program under a lazy holder saw: the windows in a row, up to
/// the last, on course (their rewrites over their length would reach half the resident
/// pages within the period: the rule [`copy_at_once`] applies to an epoch), and the
/// rewrites since the holder was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LazyCourse {
    windows: u32,
    rewrites: u64,
}

impl LazyCourse {
    /// After one more window of `window_ns` with `rewrites`.
    fn after(self, rewrites: u64, window_ns: u64, period_ns: u64, resident: u64) -> LazyCourse {
        // rewrites / window * period >= resident / 2
        let on_course = u128::from(rewrites) * u128::from(period_ns) * 2
            >= u128::from(resident) * u128::from(window_ns);
        LazyCourse {
            windows: if on_course { self.windows + 1 } else { 0 },
            rewrites: self.rewrites.saturating_add(rewrites),
        }
    }

    /// Whether the holder should copy now: the last window on course, and either
    /// [`LAZY_WINDOWS_ON_COURSE`] of them in a row (a program that goes on rewriting,
    /// however slowly its faults go: multi_writer) or an eighth of the `resident` pages
    /// rewritten already (one that rewrites its memory in a burst: scatter_writer over
    /// 64 MiB rewrites it all within 65 ms of a snapshot). A hot set rewritten in a burst
    /// after each snapshot is neither (hot_set_only, 1 GiB: 5% of its pages, in two
    /// windows).
    fn asks(self, resident: u64) -> bool {
        self.windows > 0
            && (self.windows >= LAZY_WINDOWS_ON_COURSE
                || self.rewrites.saturating_mul(8) >= resident)
    }
}

/// The program's anonymous pages resident at the clone of the holder the last pass
/// made (read by the epoch loop for the governor); [`NOT_HELD`] when it made none.
static HELD_RESIDENT_PAGES: AtomicU64 = AtomicU64::new(NOT_HELD);
const NOT_HELD: u64 = u64::MAX;

/// The program's minor faults at the last pass (for [`copy_at_once`]).
static FAULTS_AT_LAST_PASS: AtomicU64 = AtomicU64::new(NO_PASS_YET);
const NO_PASS_YET: u64 = u64::MAX;

/// The program's anonymous resident pages at the last pass (for [`rewrites`]);
/// [`UNREAD`] under `shadow`, or when /proc/self/status could not be read.
static RESIDENT_AT_LAST_PASS: AtomicU64 = AtomicU64::new(UNREAD);
const UNREAD: u64 = u64::MAX;

/// Clones tried again when the pidfd was lost (see [`hold`]).
const PIDFD_RETRIES: usize = 3;

static HOLDER_ERROR_SAID: AtomicBool = AtomicBool::new(false);
static HOLDERS_FULL_SAID: AtomicBool = AtomicBool::new(false);

/// `holder_pinned_bytes`: the memory the live holders alone keep, as counted by
/// [`holder::Kept`], published here; `measure`: the lazy holders are measured first (it
/// walks their page tables). Returns the count. Never on the fault path.
/// A walk slows the program itself, not only the epoch thread: reading the
/// smaps_rollup of 4 holders of 256 MiB takes 21-23 ms here, and a parent writing
/// random pages meanwhile (`../shared/probes/holder_rollup.c`, every 100 ms) lost 37% of
/// its throughput and its worst batch went from 11-13 ms to 35-39 ms. So the lazy
/// holders are measured only when asked (a `stats` request, see
/// [`measure_pinned_for_control`]), at most every [`PINNED_EVERY_NS`] after a holder
/// pass, and when their count would give a version up for the budget; holders that copy
/// at once never (hash_table, 1 GiB, a snapshot every 2 s: measuring every holder after
/// every eviction took 420-530 ms a pass, and the program met 5-8 batches of 30-50 ms
/// after each clone; now 108-167 ms, mostly reaping the holder given up, and one batch,
/// the clone's).
fn count_kept(measure: bool) -> u64 {
    let mut holders = Vec::with_capacity(engine::with(|e| e.holder_count()).unwrap_or(0));
    engine::with(|e| e.kept_by_holders(&mut holders));
    let faults = sys::minor_faults();
    if measure {
        PINNED_AT.store(engine::now_ns(), Ordering::Relaxed);
        for h in holders.iter_mut().filter(|h| h.kept.measured()) {
            // Only this thread releases holders: the views stay valid while measured.
            h.kept = holder::Kept::Lazy {
                bytes: h.view.pinned_bytes(),
                faults,
            };
            engine::with(|e| e.note_kept(h.version, h.kept));
        }
    }
    let newest = holders.last().map(|h| h.version);
    let bytes = holders
        .iter()
        .map(|h| h.kept.bytes(faults, Some(h.version) == newest))
        .sum();
    stats::set(Counter::HolderPinnedBytes, bytes);
    bytes
}

/// When the lazy holders were last measured (0: never).
static PINNED_AT: AtomicU64 = AtomicU64::new(0);
const PINNED_EVERY_NS: u64 = 10_000_000_000;
static HOLDER_BUDGET_SAID: AtomicBool = AtomicBool::new(false);

/// Shadows and holders' copied pages together stay within `MEMSHADOW_SHADOW_BUDGET_MB`:
/// after a holder pass, while the shadows and the holders' count ([`count_kept`]) are
/// over it, the oldest retained version goes (its holder released, a pin on it giving
/// way as when shadows run out); the newest version always stays. The lazy holders are
/// measured once before anything is given up (their count errs high), and every
/// [`PINNED_EVERY_NS`] anyway. A lazy holder only keeps pages the program wrote after
/// it, so what it pins is within the written set of the retained versions; a holder
/// that copied at once keeps the resident memory, chosen only when the epoch before
/// rewrote at least half of it.
fn keep_holders_within_budget(budget_mb: usize) {
    let last = PINNED_AT.load(Ordering::Relaxed);
    let due = last == 0 || engine::now_ns().saturating_sub(last) >= PINNED_EVERY_NS;
    give_up_for_budget(budget_mb, 0, due, &mut |e| e.evict_oldest_for_budget());
}

/// While the shadows, the live holders' count ([`count_kept`]) and `coming` bytes are
/// over `MEMSHADOW_SHADOW_BUDGET_MB`, gives up a version with `evict` (false: nothing
/// went, stop) and reaps the holders that go. The lazy holders are measured first
/// (their count errs high) unless `measure_now` measures them at once.
fn give_up_for_budget(
    budget_mb: usize,
    coming: u64,
    measure_now: bool,
    evict: &mut dyn FnMut(&mut engine::Engine) -> bool,
) {
    let budget = (budget_mb as u64) << 20;
    let mut measured = measure_now;
    let mut kept = count_kept(measured);
    for _ in 0..=holder::MAX_HOLDERS {
        let shadows = stats::page()
            .counter(Counter::ShadowBytes)
            .load(Ordering::Relaxed);
        if shadows.saturating_add(kept).saturating_add(coming) <= budget {
            return;
        }
        if !measured {
            kept = count_kept(true);
            measured = true;
            continue;
        }
        let evicted = engine::with(|e| evict(e)).unwrap_or(false);
        engine::release_expired_holders();
        if !evicted {
            return;
        }
        // Like shadows making room in their pool: retention, not a failure (the
        // versions retained say it), so no line but a debug one.
        if !HOLDER_BUDGET_SAID.swap(true, Ordering::Relaxed) {
            crate::base::log::debug!(
                "holders and shadows hold more than MEMSHADOW_SHADOW_BUDGET_MB ({budget_mb} MiB): older versions are given up"
            );
        }
        kept = count_kept(false);
    }
}

/// Before the clone of a holder that will copy `coming` bytes into itself at once:
/// while the shadows, the live holders' count ([`count_kept`]) and `coming` are over
/// `MEMSHADOW_SHADOW_BUDGET_MB`, the oldest retained version goes, its holder reaped now,
/// while the program's pages are its own, rather than right after the clone, when the
/// program meets its first copies and the kernel's freeing of the holder's memory slows
/// them (uniform_random, 1 GiB, a snapshot every 2 s, room for one version: the worst
/// batch 145-186 ms reaping after the clone, 119-124 ms with nothing to reap). The
/// newest version goes too, for the holder about to replace it, unless a recorder
/// follows the written pages or a reader pins a version (see
/// `Engine::evict_oldest_before_holder`); a clone refused after that leaves the next
/// version a shadow one. The lazy holders are measured once before anything goes.
fn make_room_before_clone(budget_mb: usize, coming: u64) {
    let newest_too = !written::wanted();
    give_up_for_budget(budget_mb, coming, false, &mut |e| {
        e.evict_oldest_before_holder(newest_too)
    });
}

thread_local! {
    /// Set on the epoch thread: only it makes holders.
    static ON_EPOCH_THREAD: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Requests to the epoch thread. A protect pass must never run on a host thread: a
/// host thread's own writes during the pass (errno, in its TLS, which is tracked memory)
/// would be held until the pass ends, by itself. Host threads (the C API) post a request
/// and wait on these futex words, which live in the shim's own memory.
static REQUESTS: Mailbox<2> = Mailbox::new();
/// What a request asks (its first word): a snapshot, a fresh `holder_pinned_bytes`, or
/// to let go the holders of the versions up to the second word (recorded).
const ASK_SNAPSHOT: u64 = 0;
const ASK_PINNED: u64 = 1;
const ASK_LET_GO: u64 = 2;
/// Period of automatic snapshots in ms (0: only on request).
static INTERVAL_MS: AtomicU64 = AtomicU64::new(0);
static THREAD_STARTED: AtomicBool = AtomicBool::new(false);
static THREAD_START: SpinLock<()> = SpinLock::new(());
static API_ERROR_SAID: AtomicBool = AtomicBool::new(false);
static PERIODIC_ERROR_SAID: AtomicBool = AtomicBool::new(false);

/// Starts the epoch thread (once per process; again in a forked child).
pub fn start_thread(
    config: &crate::config::Config,
) -> Result<(), crate::base::shim_thread::SpawnError> {
    let (interval_ms, max_overhead) = (config.interval_ms, config.max_overhead);
    if INTERVAL_MS.swap(interval_ms, Ordering::Relaxed) != interval_ms
        || !THREAD_STARTED.load(Ordering::Acquire)
    {
        // A new period, or a new thread (a forked child's): the governor starts afresh.
        let budget_pages = (config.shadow_budget_mb as u64) << 8;
        crate::engine::governor::reset(interval_ms, max_overhead, budget_pages);
    }
    if THREAD_STARTED.load(Ordering::Acquire) {
        sys::futex_wake(REQUESTS.posted_word()); // pick up a new interval
        return Ok(());
    }
    let _s = sys::block_signals();
    let _g = THREAD_START.lock();
    if THREAD_STARTED.load(Ordering::Acquire) {
        return Ok(());
    }
    crate::base::shim_thread::spawn(epoch_thread, core::ptr::null_mut())?;
    THREAD_STARTED.store(true, Ordering::Release);
    Ok(())
}

/// In a forked child: the epoch thread is the parent's.
///
/// The parent's epoch thread may have been in a pass when the child was forked: its
/// lock is released and its lists (the parent's, possibly half-changed) are forgotten,
/// not freed; the child's first pass starts from nothing, like its fresh engine.
pub fn forget_after_fork() {
    crate::engine::boundary_copy::forget_after_fork();
    THREAD_STARTED.store(false, Ordering::Release);
    THREAD_START.release();
    REQUESTS.forget_after_fork();
    // The child's `auto` starts afresh (its counters are not the parent's epochs).
    AUTO.release();
    *AUTO.lock() = (Chooser::new(), AutoMark::NONE);
    // The parent's lazy holder is not the child's.
    LAZY_WATCH.release();
    *LAZY_WATCH.lock() = None;
    FAULTS_AT_LAST_PASS.store(NO_PASS_YET, Ordering::Relaxed);
    RESIDENT_AT_LAST_PASS.store(UNREAD, Ordering::Relaxed);
    CONTROL_REQUEST.release();
    REQUEST_ERROR.release();
    core::mem::forget(REQUEST_ERROR.lock().take());
    PASS.release();
    let mut pass = PASS.lock();
    core::mem::forget(core::mem::replace(
        &mut *pass,
        PassState {
            tracked: Vec::new(),
            retired: Vec::new(),
            async_ranges: Vec::new(),
        },
    ));
    written::forget_after_fork();
}

/// The epoch thread: a snapshot on every request, and every `MEMSHADOW_INTERVAL_MS`.
///
/// A periodic pass starts `MEMSHADOW_INTERVAL_MS` after the previous one started, but
/// never sooner after it ended than it lasted: when passes take longer than the period,
/// the program still runs unhindered at least half of the time.
extern "C" fn epoch_thread(_: *mut core::ffi::c_void) -> *mut core::ffi::c_void {
    // Requests not yet answered are pending, including one posted before this thread
    // first ran.
    let mut next_due = engine::now_ns();
    let mut last_started = next_due;
    let mut earliest = next_due;
    let mut due_interval = 0;
    let mut cpu = 0;
    ON_EPOCH_THREAD.with(|t| t.set(true));
    loop {
        crate::stats::account_cpu(&mut cpu);
        // Holders whose versions went (a pin released, the shadow budget) or whose
        // engine stopped: reaped here, never on the fault path.
        engine::release_expired_holders();
        let configured = INTERVAL_MS.load(Ordering::Relaxed);
        let interval = crate::engine::governor::interval_ms(configured);
        if interval != due_interval {
            // A new period (or the first): count it from now.
            next_due = engine::now_ns().saturating_add(interval.saturating_mul(1_000_000));
            due_interval = interval;
        }
        // Never longer than the configured period between looks at the shadow budget.
        let wait_ms = if interval == 0 {
            0
        } else {
            next_due
                .saturating_sub(engine::now_ns())
                .div_ceil(1_000_000)
                .min(configured.max(1))
        };
        // Under a lazy holder given the memory, a look at the program's faults now and
        // then (see `watch_lazy_holder`).
        let wait_ms = if wait_ms > 0 && LAZY_WATCH.lock().is_some() {
            wait_ms.min(LAZY_WATCH_MS)
        } else {
            wait_ms
        };
        if interval == 0 || wait_ms > 0 {
            sys::futex_wait(REQUESTS.posted_word(), REQUESTS.answered(), wait_ms);
        }
        if !crate::tracking::regions::tracking() {
            break;
        }
        watch_lazy_holder(interval);
        if crate::service::flight::asked() {
            // A crashing thread waits for its last snapshot (`service::flight`).
            crate::service::flight::taken(snapshot());
            continue;
        }
        let request = REQUESTS.pending();
        if let Some(r) = request.filter(|r| r.words[0] == ASK_PINNED) {
            count_kept(true);
            REQUESTS.answer(r.ticket, 0);
            continue;
        }
        if let Some(r) = request.filter(|r| r.words[0] == ASK_LET_GO) {
            let n = let_go_recorded(r.words[1]);
            REQUESTS.answer(r.ticket, n as u64);
            continue;
        }
        // Pulled forward by the budget, never sooner than the configured period after
        // the last pass started, nor sooner after it ended than it lasted.
        let pressed = interval > 0
            && engine::budget_pressed()
            && engine::now_ns()
                >= earliest.max(last_started.saturating_add(configured * 1_000_000));
        let due = interval > 0 && engine::now_ns() >= next_due || pressed;
        if request.is_none() && !due {
            continue;
        }
        if request.is_none() && !pressed {
            // An automatic pass only: it waits if the period so far cost too much.
            if let Some(longer) =
                crate::engine::governor::before_due_pass(configured, engine::now_ns())
            {
                due_interval = longer;
                next_due = last_started.saturating_add(longer.saturating_mul(1_000_000));
                continue;
            }
        }
        let started = engine::now_ns();
        last_started = started;
        HELD_RESIDENT_PAGES.store(NOT_HELD, Ordering::Relaxed);
        let result = snapshot();
        let ended = engine::now_ns();
        // The governor may stretch the period (or shrink it back) after any pass.
        let held = match HELD_RESIDENT_PAGES.load(Ordering::Relaxed) {
            NOT_HELD => None,
            pages => Some(pages),
        };
        let interval = crate::engine::governor::after_pass(configured, ended, held);
        due_interval = interval;
        earliest = ended + (ended - started);
        next_due = started
            .saturating_add(interval.saturating_mul(1_000_000))
            .max(earliest);
        if let Some(request) = request {
            let answer = match &result {
                Ok(v) => *v as i64,
                Err(msg) => {
                    let text = msg.to_string();
                    *REQUEST_ERROR.lock() = Some(text);
                    // A stop has said why already, in its own line.
                    if !engine::stopped() && !API_ERROR_SAID.swap(true, Ordering::Relaxed) {
                        crate::base::log::error!("memshadow_snapshot: {msg}");
                    }
                    -1
                }
            };
            REQUESTS.answer(request.ticket, answer as u64);
        } else if let Err(e) = result {
            if e.passing() {
                // This snapshot was abandoned (counted); the next one starts afresh.
                if !PERIODIC_ERROR_SAID.swap(true, Ordering::Relaxed) {
                    crate::base::log::error!("periodic snapshot: {e}");
                }
            } else {
                if !engine::stopped() {
                    crate::base::log::error!("periodic snapshots stopped: {e}");
                }
                INTERVAL_MS.store(0, Ordering::Relaxed);
            }
        }
    }
    core::ptr::null_mut()
}

/// `memshadow_snapshot_v1()`: asks the epoch thread for a snapshot and waits for it. The
/// version, or -1 with errno ENOSYS (and one `memshadow:` line, the first time) when none
/// can be taken. errno is otherwise left as it was.
pub fn snapshot_for_api() -> i64 {
    let saved = sys::errno();
    let started = match crate::config::current() {
        Some(config) => start_thread(&config).map_err(|e| e.to_string()),
        None => Err(SnapshotError::NotTracking.to_string()),
    };
    if let Err(msg) = started {
        if !engine::stopped() && !API_ERROR_SAID.swap(true, Ordering::Relaxed) {
            crate::base::log::error!("memshadow_snapshot: {msg}");
        }
        sys::set_errno(libc::ENOSYS);
        return -1;
    }
    let v = {
        let _s = sys::block_signals();
        let posted = REQUESTS.post([ASK_SNAPSHOT, 0]);
        sys::futex_wake(REQUESTS.posted_word());
        // The epoch thread answers every request (-1 for a failure).
        posted.wait(0, || false).map_or(-1, |a| a as i64)
    };
    sys::set_errno(if v < 0 { libc::ENOSYS } else { saved });
    v
}

/// Wakes the epoch thread to look at the flight recorder's request (async-signal-safe).
pub fn wake_for_flight() {
    sys::futex_wake(REQUESTS.posted_word());
}

/// `snapshot` over the control socket. Under `holder` the epoch thread takes it (a
/// holder is made there, see [`hold`]): the request goes through the same mailbox as
/// the C API's, and the error, if any, comes back in [`REQUEST_ERROR`]. Otherwise the
/// control thread runs the pass itself, as it always has.
pub fn snapshot_for_control() -> Result<u64, String> {
    let config = crate::config::current().ok_or(SnapshotError::NotTracking.to_string())?;
    if config.backend == Backend::Shadow {
        return snapshot().map_err(|e| e.to_string());
    }
    start_thread(&config).map_err(|e| e.to_string())?;
    match ask_epoch_thread([ASK_SNAPSHOT, 0]) {
        Some(a) if (a as i64) >= 0 => Ok(a),
        _ => Err(REQUEST_ERROR
            .lock()
            .take()
            .unwrap_or_else(|| "the snapshot failed".to_string())),
    }
}

/// `stats` over the control socket under `holder`: the epoch thread measures
/// `holder_pinned_bytes` now (only it may touch the holders: it alone releases them),
/// and this waits for it. Nothing to do without holders or without the epoch thread.
pub fn measure_pinned_for_control() {
    if !crate::engine::holder::any_made() || !THREAD_STARTED.load(Ordering::Acquire) {
        return;
    }
    ask_epoch_thread([ASK_PINNED, 0]);
}

/// `recorded V` over the control socket: a recorder has every version up to `v` in its
/// store, so the holders of those versions go (the program's writes stop copying pages
/// for them); the epoch thread kills and reaps them (only it releases holders). How many
/// went, or None without holders or an epoch thread.
pub fn let_go_recorded_for_control(v: u64) -> Option<usize> {
    if !crate::engine::holder::any_made() || !THREAD_STARTED.load(Ordering::Acquire) {
        return Some(0);
    }
    ask_epoch_thread([ASK_LET_GO, v]).map(|n| n as usize)
}

/// The epoch thread's part of [`let_go_recorded_for_control`].
fn let_go_recorded(v: u64) -> usize {
    let n = engine::with(|e| e.holder_count()).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    engine::with(|e| e.let_go_recorded(v, &mut out));
    let gone = out.len();
    for h in out {
        h.release();
    }
    if gone > 0 {
        count_kept(false);
    }
    gone
}

/// A control-socket request to the epoch thread (one at a time: [`CONTROL_REQUEST`]):
/// its answer, or None once the thread has stopped answering.
fn ask_epoch_thread(what: [u64; 2]) -> Option<u64> {
    let _s = sys::block_signals();
    let _one = CONTROL_REQUEST.lock();
    let posted = REQUESTS.post(what);
    sys::futex_wake(REQUESTS.posted_word());
    posted.wait(EPOCH_GONE_CHECK_MS, epoch_thread_gone)
}

/// How often a control request waiting on the epoch thread looks whether it is gone.
const EPOCH_GONE_CHECK_MS: u64 = 100;

/// The epoch thread ended its loop (tracking stopped): it answers no more requests.
fn epoch_thread_gone() -> bool {
    !crate::tracking::regions::tracking()
}

/// The last failed request's error, for [`snapshot_for_control`] (one control request
/// at a time: [`CONTROL_REQUEST`]).
static REQUEST_ERROR: SpinLock<Option<String>> = SpinLock::new(None);
static CONTROL_REQUEST: SpinLock<()> = SpinLock::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_incomplete_snapshot_lets_later_ones_run() {
        let incomplete = SnapshotError::Incomplete {
            version: 7,
            ms: 2000,
        };
        assert!(incomplete.passing());
        assert!(incomplete.to_string().contains("snapshot 7 is incomplete"));
        for e in [
            SnapshotError::NotTracking,
            SnapshotError::Stopped,
            SnapshotError::Start(engine::StartError::Budget(64)),
        ] {
            assert!(!e.passing(), "{e}");
        }
        assert_eq!(
            SnapshotError::Start(engine::StartError::Budget(64)).to_string(),
            "cannot reserve a 64 MiB shadow budget (MEMSHADOW_SHADOW_BUDGET_MB) or index it (about 48 bytes a page)"
        );
    }

    fn t(a: usize, b: usize, since: u64) -> TrackedRange {
        TrackedRange {
            range: Range::new(a, b),
            since,
        }
    }

    #[test]
    fn parts_no_longer_tracked_are_retired() {
        let old = [
            t(0x1000, 0x5000, 1),
            t(0x8000, 0x9000, 2),
            t(0xa000, 0xb000, 3),
        ];
        let new = [Range::new(0x2000, 0x3000), Range::new(0xa000, 0xc000)];
        let r = |a, b, since| RetiredRange {
            range: Range::new(a, b),
            since,
            until: 4,
        };
        assert_eq!(
            retire(&old, &new, 4),
            vec![
                r(0x1000, 0x2000, 1),
                r(0x3000, 0x5000, 1),
                r(0x8000, 0x9000, 2)
            ]
        );
        assert_eq!(retire(&old, &[Range::new(0, 0x10000)], 4), vec![]);
    }

    #[test]
    fn new_parts_are_tracked_since_this_version() {
        let old = [t(0x1000, 0x5000, 1), t(0x8000, 0x9000, 2)];
        let new = [
            Range::new(0x0000, 0x6000),
            Range::new(0x8000, 0x9000),
            Range::new(0xa000, 0xb000),
        ];
        assert_eq!(
            carry_since(&old, &new, 3),
            vec![
                t(0x0000, 0x1000, 3),
                t(0x1000, 0x5000, 1),
                t(0x5000, 0x6000, 3),
                t(0x8000, 0x9000, 2),
                t(0xa000, 0xb000, 3),
            ]
        );
        assert_eq!(
            carry_since(&old, &[Range::new(0x2000, 0x3000)], 5),
            vec![t(0x2000, 0x3000, 1)]
        );
    }

    #[test]
    fn faults_that_grew_the_resident_memory_are_no_rewrites() {
        // 1000 faults, 900 of them first touches: 100 may have rewritten a page.
        assert_eq!(rewrites(1000, 5000, 5900), 100);
        // The memory shrank meanwhile (freed): every fault counts.
        assert_eq!(rewrites(1000, 5000, 4000), 1000);
        // More growth than faults (the counters are read apart): none.
        assert_eq!(rewrites(10, 5000, 6000), 0);
        // Either count unread: every fault counts, as before the rule.
        assert_eq!(rewrites(1000, UNREAD, 5900), 1000);
        assert_eq!(rewrites(1000, 5000, UNREAD), 1000);
    }

    #[test]
    fn a_burst_of_rewrites_after_a_snapshot_does_not_get_a_holder_asked_to_copy() {
        // 50 ms windows, a snapshot every 1.6 s.
        let (period, window) = (1_600_000_000, 50_000_000);
        // Whether a holder is asked over these windows' rewrites, `resident` pages.
        let asked = |resident: u64, windows: &[u64]| {
            let mut c = LazyCourse::default();
            windows.iter().any(|&w| {
                c = c.after(w, window, period, resident);
                c.asks(resident)
            })
        };
        // hot_set_only at 1 GiB: its hot set (13 K of 262 K pages) rewritten in a burst,
        // then nothing; the hot set moved meanwhile: a second burst.
        assert!(!asked(262_144, &[8_005, 6_456, 300, 0, 0]));
        assert!(!asked(262_144, &[8_000, 5_000, 0, 7_000, 6_000, 10]));
        // multi_writer: slow faults, on and on: asked at the third window.
        assert!(!asked(262_144, &[4_600, 4_700]));
        assert!(asked(262_144, &[4_600, 4_700, 4_600]));
        // scatter_writer over 64 MiB: most of its memory in the first window.
        assert!(asked(19_760, &[12_000]));
        // A rate that covers half the memory within the period only just counts.
        let one = |w| {
            LazyCourse::default()
                .after(w, window, period, 262_144)
                .windows
        };
        assert_eq!((one(4_096), one(4_095)), (1, 0));
        // Rewrites enough, but the last window quiet: too late to be worth a copy.
        let c = LazyCourse::default().after(40_000, window, period, 262_144);
        assert!(c.asks(262_144) && !c.after(0, window, period, 262_144).asks(262_144));
    }
}
