//! The boundary copy: the protect pass itself copies the pages most likely to be written
//! first, while writes are held, so that a program writing a hot set does not trap on it.
//!
//! A program that writes a hot set at full speed touches all of it within a millisecond
//! of a pass's end, long before the prefetch thread (woken by that end) has copied a
//! tenth of it: every page it has not reached yet traps. So the prefetch thread publishes
//! here, during each epoch, the pages known to have been written lately (those its last
//! audit found written, and those that trapped since), and the next pass, once
//! everything is protected and before it releases the held writes, copies them and
//! unprotects them run by run, within a page budget (the prefetcher's, which follows how
//! many of these copies turn out written) and a time cap (a fifth of the snapshot
//! interval, at most [`MAX_NS`]).
//!
//! Why the snapshot stays exact: the copy starts when every tracked page is protected,
//! so from then on no write reaches memory until its page is saved (writes to protected
//! pages are held until the pass ends) and each copy is the page as the snapshot holds
//! it. A copied run is unprotected at once: a write to it comes after the snapshot, and
//! since no other page is unprotected, no write after it can be in the snapshot. The
//! snapshot is the memory as the last protection ended.
//!
//! The pass needs nothing but this lock, the engine lock and ioctls while it holds
//! writes (a held writer may hold the allocator's lock): the runs are built and
//! published by the prefetch thread, and the pass only reads them.

use crate::base::page::PAGE;
use crate::base::range::Range;
use crate::base::sync::SpinLock;
use crate::engine;
use crate::engine::save_ahead::{wait_for_events, CopyOutcome};
use crate::stats;
use memshadow_format::stats::Counter;

/// The longest a pass copies, whatever the interval.
pub const MAX_NS: u64 = 20_000_000;
/// The shortest cap (for intervals of a few milliseconds).
const MIN_NS: u64 = 1_000_000;
/// Pages copied per engine-lock hold: while the pass runs the fault thread only needs
/// the lock to hold a fault, so holds may be longer than the prefetch thread's.
const PAGES_PER_HOLD: usize = engine::MAX_RUN;

/// The runs the next pass copies, and what the last pass did with them.
pub struct BoundarySet {
    /// Runs to copy, densest first.
    runs: Vec<Range>,
    /// The version whose pass copied from these runs (0: none has yet)...
    copied_in: u64,
    /// ... and how many of them, from the first, it went through.
    done: usize,
}

static SET: SpinLock<BoundarySet> = SpinLock::new(BoundarySet {
    runs: Vec::new(),
    copied_in: 0,
    done: 0,
});

/// The prefetch thread publishes `runs` (disjoint, in the order to copy them) for the
/// next pass and gets the previous set's buffer back in `runs`. Refused (false, `runs`
/// untouched) while a pass is copying, and while a pass's copies have not been
/// collected: they are audited at the next epoch.
pub fn publish(runs: &mut Vec<Range>) -> bool {
    let Some(mut set) = SET.try_lock() else {
        return false;
    };
    if set.copied_in != 0 {
        return false;
    }
    core::mem::swap(&mut set.runs, runs);
    set.done = 0;
    true
}

/// The prefetch thread at the start of epoch `v`: the runs the pass of `v` went through
/// (their pages are prefetched pages of epoch `v`, to audit at the next), handed to `f`.
/// The set is emptied either way.
pub fn collect(v: u64, mut f: impl FnMut(Range)) {
    let mut set = SET.lock();
    if set.copied_in == v {
        for &r in &set.runs[..set.done] {
            f(r);
        }
    }
    set.runs.clear();
    set.copied_in = 0;
    set.done = 0;
}

/// The time cap of a pass's copy for snapshots every `interval_ms` (0: on request only).
pub fn cap_ns(interval_ms: u64) -> u64 {
    if interval_ms == 0 {
        MAX_NS
    } else {
        (interval_ms * 1_000_000 / 5).clamp(MIN_NS, MAX_NS)
    }
}

/// Run by the pass of version `v` once everything is protected, before it releases the
/// held writes: copies the published runs, until `cap_ns` has passed or the shadow
/// slots the prefetcher may use run out. Returns the pages copied.
pub fn copy_at_pass(v: u64, cap_ns: u64) -> u64 {
    let Some(mut set) = SET.try_lock() else {
        // Being published (a few instructions): this pass goes without.
        return 0;
    };
    if set.runs.is_empty() {
        return 0;
    }
    let started = engine::now_ns();
    let deadline = started + cap_ns;
    let mut pages = 0u64;
    let mut done = 0;
    let mut stopped = false;
    while done < set.runs.len() && !stopped {
        let r = set.runs[done];
        let mut at = r.start;
        while at < r.end {
            if engine::now_ns() > deadline {
                stopped = true;
                break;
            }
            let copy = engine::with(|e| {
                if e.version != v || e.incomplete {
                    return CopyOutcome::Stop;
                }
                e.save_ahead(at, r.end, PAGES_PER_HOLD)
            });
            match copy.unwrap_or(CopyOutcome::Stop) {
                CopyOutcome::Done { copied, next, .. } => {
                    pages += copied as u64;
                    at = next.max(at + PAGE);
                }
                CopyOutcome::Stop => {
                    stopped = true;
                    break;
                }
                CopyOutcome::Busy => wait_for_events(),
            }
        }
        // What was gone through of this run (all of it unless stopped).
        set.runs[done].end = at.min(r.end);
        done += 1;
    }
    set.copied_in = v;
    set.done = done;
    if pages > 0 {
        stats::add(Counter::PrefetchAtPass, pages);
        let us = (engine::now_ns() - started) / 1000;
        stats::page()
            .counter(Counter::PrefetchAtPassUsMax)
            .fetch_max(us, core::sync::atomic::Ordering::Relaxed);
    }
    pages
}

/// In a forked child: the parent's pass may have held the set; its runs are forgotten,
/// not freed (the parent's threads may have been using the allocator).
pub fn forget_after_fork() {
    SET.release();
    let mut set = SET.lock();
    core::mem::forget(core::mem::take(&mut set.runs));
    set.copied_in = 0;
    set.done = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_a_fifth_of_the_interval_within_bounds() {
        assert_eq!(cap_ns(100), 20_000_000);
        assert_eq!(cap_ns(50), 10_000_000);
        assert_eq!(cap_ns(1), MIN_NS);
        assert_eq!(cap_ns(10_000), MAX_NS);
        assert_eq!(cap_ns(0), MAX_NS, "snapshots on request only");
    }

    #[test]
    fn a_passs_copies_are_collected_once_by_their_epoch_before_a_new_set() {
        let page = |n: usize| {
            Range::new(
                crate::base::page::address(n),
                crate::base::page::address(n + 1),
            )
        };
        let mut runs = vec![page(10), page(20)];
        assert!(publish(&mut runs));
        assert!(runs.is_empty(), "the previous set's buffer comes back");
        // No engine runs in unit tests: the pass stops at once, having gone through
        // none of the first run, and says so.
        assert_eq!(copy_at_pass(7, MAX_NS), 0);
        assert!(!publish(&mut vec![page(30)]), "copies not collected yet");
        let mut seen = Vec::new();
        collect(6, |r| seen.push(r));
        assert!(seen.is_empty(), "another epoch's collection finds nothing");
        let mut runs = vec![page(10)];
        assert!(publish(&mut runs), "the set was emptied");
        assert_eq!(copy_at_pass(8, MAX_NS), 0);
        collect(8, |r| seen.push(r));
        assert_eq!(
            seen,
            vec![Range::new(
                crate::base::page::address(10),
                crate::base::page::address(10)
            )]
        );
        assert!(publish(&mut Vec::new()));
    }
}
