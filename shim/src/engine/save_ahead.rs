//! Copying pages ahead of their first write: the engine operation the prefetch thread
//! and the protect pass's boundary copy both use. A page is saved into a shadow of the
//! newest version and unprotected while it is still protected, so the program never
//! traps on it; never while the fault thread holds discard events it has read (see
//! `fault::events_in_hand`), and never taking the last free shadow slots from traps.

use crate::base::page::PAGE;
use crate::base::range::Range;
use crate::engine::{self, Engine};
use crate::stats;
use memshadow_format::stats::Counter;

/// How long it waits for the fault thread to handle the events it is reading.
const EVENTS_WAIT_NS: u64 = 20_000;
/// The share of the free shadow slots the prefetcher leaves to traps.
const SLOT_RESERVE_DIVISOR: u32 = 4;

/// What one [`save_ahead`] (or a hold of copies built on it) did.
pub enum CopyOutcome {
    /// Pages up to `next` are dealt with; `copied` of them, from `first` on, were
    /// copied here.
    Done {
        first: usize,
        copied: usize,
        next: usize,
    },
    /// The fault thread is reading events (a discard may be among them): nothing was
    /// copied; try again once they are handled.
    Busy,
    /// A new version, a pass, an abandoned snapshot, no slots to spare, or the engine
    /// stopped: this epoch's copying is over.
    Stop,
}

/// After [`CopyOutcome::Busy`]: waits (spinning, at most [`EVENTS_WAIT_NS`]) until the fault
/// thread has handled the events it is reading, which takes microseconds.
pub fn wait_for_events() {
    let t = engine::now_ns();
    while crate::engine::fault::events_in_hand() && engine::now_ns() - t < EVENTS_WAIT_NS {
        core::hint::spin_loop();
    }
}

impl Engine {
    /// Saves into shadows of the newest version, and unprotects, the pages of `[at, end)`
    /// that still need it, up to `max` of them and up to the first one that does not: ahead
    /// of their first write, while they are protected. The caller holds the engine lock and
    /// has checked the version it copies for.
    pub fn save_ahead(&mut self, at: usize, end: usize, max: usize) -> CopyOutcome {
        let v = self.version;
        if crate::engine::fault::events_in_hand() {
            return CopyOutcome::Busy;
        }
        let Some(t) = self.tracked_at(at, v) else {
            // Not tracked: skip to where tracking resumes.
            let next = self
                .tracked_at_or_after(at)
                .map_or(end, |t| t.range.start.clamp(at + PAGE, end.max(at + PAGE)));
            return CopyOutcome::Done {
                first: at,
                copied: 0,
                next,
            };
        };
        let end = end.min(t.range.end);
        // Skip what is saved already (by a trap, or by us) or lost.
        let mut first = at;
        while first < end && self.saved_or_lost(first) {
            first += PAGE;
        }
        if first == end {
            return CopyOutcome::Done {
                first,
                copied: 0,
                next: end,
            };
        }
        let reserve = self.pool.free_slots() / SLOT_RESERVE_DIVISOR;
        if (self.pool.free_slots() as usize) < reserve as usize + (end - first) / PAGE {
            return CopyOutcome::Stop;
        }
        let Some((n, copied)) = self.save_run(first, end, max) else {
            return CopyOutcome::Stop;
        };
        if crate::engine::fault::events_in_hand() {
            // A discard may have zapped a page while it was copied: take the copies back.
            undo(self, first, n);
            return CopyOutcome::Busy;
        }
        if copied < n {
            // The rest was unmapped under us: those slots hold zeros, not the page.
            undo(self, first + copied * PAGE, n - copied);
        }
        if copied > 0 {
            self.unprotect(Range::new(first, first + copied * PAGE));
            stats::add(Counter::PrefetchCopied, copied as u64);
            stats::add(Counter::PagesCopied, copied as u64);
        }
        CopyOutcome::Done {
            first,
            copied,
            next: first + n.max(1) * PAGE,
        }
    }
}

/// Returns the slots of the `n` pages from `first` on, just saved, newest first.
fn undo(e: &mut Engine, first: usize, n: usize) {
    let v = e.version;
    for i in (0..n).rev() {
        let page = first + i * PAGE;
        if let Some(slot) = e.pool.find(page, v) {
            e.pool.undo_alloc(slot);
        }
    }
}
