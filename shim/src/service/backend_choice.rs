//! `MEMSHADOW_BACKEND=auto`: each snapshot is held by shadows or by a holder child,
//! whichever the last epochs say costs the program less.
//!
//! What an epoch costs the program, per backend, from what each measures:
//! - shadows: what the overhead governor measures the snapshots cost the program's own
//!   threads in the epoch (traps, faults held by the pass; see `engine::governor`; not
//!   the shim's CPU: priced in, the prefetcher's copying on another core moved sweeps and
//!   hot sets to holders, where they ran slower), at least [`TRAP_NS`] per trap (bench/RESULTS.md, "Where a trap's time goes": 13.8-16.8
//!   us with the handler polling); per trap, that is what a first write not copied ahead
//!   costs;
//! - a holder: the clone stops the program (the page-table copy: measured at each holder
//!   pass; before the first, [`CLONE_NS_PER_MIB`] per MiB tracked), and every first write
//!   after it is copied by the kernel, [`COW_NS`] each (2.4-2.8 us measured with a child
//!   that only waits, `../shared/probes/holder.c`), plus the governor's measure.
//!
//! Shadow epochs count their first writes exactly (traps plus prefetched pages written);
//! holder epochs count the program's minor faults (`getrusage`: a copy-on-write fault is
//! one; so is a first touch of fresh memory, which makes the count a little high). The
//! first snapshot is a holder's when the memory tracked is large
//! ([`HOLDER_FIRST_BYTES`]), shadows' otherwise; after it, the backend in use is compared with the other's cost predicted for the same first writes
//! (for shadows, with the hit rate the prefetcher last earned); it changes after
//! [`SWITCH_AFTER`] epochs in a row in which the other would have cost less than
//! 1 / [`MARGIN`] of it, or (from shadows to a holder) at once when it would have cost
//! less than 1 / [`DECISIVE`]. Switching has a cost (a holder after shadows drops the
//! protection the shadows' passes set; shadows after holders protect everything again), so
//! one odd epoch does not switch.

/// A first write that traps, all told (the writer's stop).
pub const TRAP_NS: u64 = 15_000;
/// The most a trap is priced at: traps measured 6-37 us here; an epoch's cost beyond
/// that per trap is the pass's own work (the first after the start registers all the
/// program's memory), which a write would not cost, and priced into the traps it kept a
/// quiet program on holders for the few faults of the shim's own pages.
pub const MAX_TRAP_NS: u64 = 60_000;
/// A first write the kernel copies for a holder.
pub const COW_NS: u64 = 3_000;
/// The clone's page-table copy per MiB tracked, before one is measured (7.7-8.4 ms for
/// 256 MiB, 11-35 ms per GiB here).
pub const CLONE_NS_PER_MIB: u64 = 32_000;
/// How much cheaper the other backend must look.
pub const MARGIN: u64 = 2;
/// Epochs in a row that must favour the other backend.
pub const SWITCH_AFTER: u32 = 3;
/// Tracked memory from which the first snapshot is a holder's: with nothing measured
/// yet, what decides is the worst first epoch. A scattered writer's first epoch on
/// shadows traps all through it: at 1 GiB 33-35 thousand traps, a 2.2 s worst batch on
/// uniform_random and 0.68 s on zipf_updates at fork's cadence (bench/RESULTS.md), where a
/// holder's worst is its clone and a copy per first write. Below this, a full-miss
/// shadow epoch costs little and shadows cost nothing until the program writes.
pub const HOLDER_FIRST_BYTES: u64 = 64 << 20;
/// How much cheaper a holder must look to switch to one at once: a scattered writer
/// on shadows loses most of each epoch to traps, and three such epochs before the switch
/// cost it more than the holders save in many.
pub const DECISIVE: u64 = 4;

/// What one epoch measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epoch {
    /// Its snapshot was held by a holder.
    pub held: bool,
    /// Shadow epoch: traps, and prefetched pages written (first writes that did not
    /// trap).
    pub traps: u64,
    pub prefetch_hits: u64,
    /// Holder epoch: the program's minor faults, and the clone's duration.
    pub minor_faults: u64,
    pub clone_ns: u64,
    /// Bytes tracked (for the clone's estimate before one is measured).
    pub tracked_bytes: u64,
    /// What the governor measured the snapshots cost the program's threads in the epoch
    /// (traps, held faults; not the shim's CPU).
    pub cost_ns: u64,
}

/// The rule's state: kept by the epoch thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chooser {
    /// The next snapshot is to be held by a holder.
    holder: bool,
    /// Epochs in a row that favoured the other backend.
    streak: u32,
    /// The last clone measured, ns (0: none yet).
    clone_ns: u64,
    /// The prefetcher's hit rate in the last shadow epoch, per mille.
    hits_per_mille: u64,
    /// What a trap cost the program in the last shadow epoch with traps, ns.
    trap_ns: u64,
}

impl Default for Chooser {
    fn default() -> Self {
        Chooser::new()
    }
}

impl Chooser {
    /// Shadows until [`Chooser::first_snapshot`] says otherwise: they cost nothing until
    /// the program writes.
    pub const fn new() -> Chooser {
        Chooser {
            holder: false,
            streak: 0,
            clone_ns: 0,
            hits_per_mille: 0,
            trap_ns: TRAP_NS,
        }
    }

    /// Chooses the first snapshot's backend, before any epoch was measured, from the
    /// memory it would cover (see [`HOLDER_FIRST_BYTES`]).
    pub fn first_snapshot(&mut self, tracked_bytes: u64) {
        self.holder = tracked_bytes >= HOLDER_FIRST_BYTES;
    }

    /// Whether the next snapshot should be held by a holder.
    pub fn holder_next(&self) -> bool {
        self.holder
    }

    /// Takes in the epoch that just ended (between the last two passes); true when the
    /// backend changes for the next snapshot.
    pub fn after_epoch(&mut self, e: &Epoch) -> bool {
        let (used, other) = if e.held {
            self.clone_ns = e.clone_ns;
            let used = e.clone_ns + e.minor_faults * COW_NS + e.cost_ns;
            let missed = 1000 - self.hits_per_mille.min(1000);
            (used, e.minor_faults * missed / 1000 * self.trap_ns)
        } else {
            let writes = e.traps + e.prefetch_hits;
            if let Some(rate) = (e.prefetch_hits * 1000).checked_div(writes) {
                self.hits_per_mille = rate;
            }
            let clone = if self.clone_ns > 0 {
                self.clone_ns
            } else {
                (e.tracked_bytes >> 20) * CLONE_NS_PER_MIB
            };
            let used = e.cost_ns.max(e.traps * TRAP_NS);
            if let Some(per_trap) = used.checked_div(e.traps) {
                self.trap_ns = per_trap.min(MAX_TRAP_NS);
            }
            (used, clone + writes * COW_NS)
        };
        // The epoch tells about the backend it ran with; a snapshot taken with the
        // other one (a fallback) says nothing about switching.
        if e.held != self.holder {
            self.streak = 0;
            return false;
        }
        if other.saturating_mul(MARGIN) < used {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        // From shadows to a holder at once when the traps are that much dearer; back
        // only after a streak (shadows after holders protect everything again).
        let decisive = !self.holder && other.saturating_mul(DECISIVE) < used;
        if self.streak >= SWITCH_AFTER || decisive {
            self.holder = !self.holder;
            self.streak = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(traps: u64, hits: u64) -> Epoch {
        Epoch {
            held: false,
            traps,
            prefetch_hits: hits,
            tracked_bytes: 256 << 20,
            ..Epoch::default()
        }
    }

    fn holder(minor_faults: u64, clone_ms: u64) -> Epoch {
        Epoch {
            held: true,
            minor_faults,
            clone_ns: clone_ms * 1_000_000,
            tracked_bytes: 256 << 20,
            ..Epoch::default()
        }
    }

    #[test]
    fn the_first_snapshot_of_much_memory_is_a_holders() {
        let mut c = Chooser::new();
        c.first_snapshot(HOLDER_FIRST_BYTES - 4096);
        assert!(!c.holder_next(), "little memory: shadows first");
        let mut c = Chooser::new();
        c.first_snapshot(1 << 30);
        assert!(c.holder_next(), "1 GiB: a holder first");
        // A quiet program found on a holder goes to shadows as before: 42 faults of
        // the shim's own pages against a 30 ms clone, three epochs in a row.
        assert!(!c.after_epoch(&holder(42, 30)));
        assert!(!c.after_epoch(&holder(42, 30)));
        assert!(c.after_epoch(&holder(42, 30)));
        assert!(!c.holder_next());
        // A scattered writer stays: 200,000 first writes (0.6 s of copies) against
        // 3 s of traps.
        let mut c = Chooser::new();
        c.first_snapshot(1 << 30);
        for _ in 0..10 {
            assert!(!c.after_epoch(&holder(200_000, 30)));
        }
        assert!(c.holder_next());
    }

    #[test]
    fn a_scattered_writer_moves_to_holders_at_once() {
        let mut c = Chooser::new();
        assert!(!c.holder_next(), "shadows first");
        // 60,000 traps an epoch (0.9 s of stops) against a clone of ~8 ms and 61,000
        // copies (0.18 s): more than 4x cheaper, no need to wait.
        assert!(c.after_epoch(&shadow(60_000, 1_000)));
        assert!(c.holder_next());
        // It stays with holders while the writes stay scattered.
        for _ in 0..10 {
            assert!(!c.after_epoch(&holder(61_000, 8)));
        }
        assert!(c.holder_next());
    }

    #[test]
    fn a_writer_holders_suit_less_clearly_moves_after_three_epochs() {
        let mut c = Chooser::new();
        // 20,000 traps (0.3 s) against a clone of ~8 ms and 0.1 s of copies: 2.8x.
        assert!(!c.after_epoch(&shadow(20_000, 13_000)));
        assert!(!c.after_epoch(&shadow(20_000, 13_000)));
        assert!(c.after_epoch(&shadow(20_000, 13_000)));
        assert!(c.holder_next());
    }

    #[test]
    fn a_hot_set_the_prefetcher_catches_stays_on_shadows() {
        let mut c = Chooser::new();
        // 2,000 first writes, nearly all copied ahead: 40 traps (0.6 ms) against a clone.
        for _ in 0..20 {
            assert!(!c.after_epoch(&shadow(40, 1_960)));
        }
        assert!(!c.holder_next());
    }

    #[test]
    fn what_the_governor_measured_counts_beyond_the_traps() {
        let mut c = Chooser::new();
        // 500 traps (7.5 ms at 15 us) but 80 ms of the program lost in all (held faults,
        // the shim's CPU): against a clone of ~8 ms and 3 ms of copies.
        let costly = Epoch {
            cost_ns: 80_000_000,
            ..shadow(500, 500)
        };
        // 80 ms against ~11 ms: decisive, at once.
        assert!(c.after_epoch(&costly));
        assert!(c.holder_next());
        // Back on holders, a write not copied ahead is priced at what a trap cost then
        // (160 us): 600 minor faults, half caught ahead, would cost 48 ms against 10 ms.
        for _ in 0..5 {
            assert!(!c.after_epoch(&holder(600, 8)));
        }
        assert!(c.holder_next());
    }

    #[test]
    fn one_odd_epoch_does_not_switch() {
        let mut c = Chooser::new();
        for _ in 0..5 {
            c.after_epoch(&shadow(20_000, 13_000));
            c.after_epoch(&shadow(20_000, 13_000));
            assert!(!c.after_epoch(&shadow(10, 0)), "the streak starts over");
        }
        assert!(!c.holder_next());
    }

    #[test]
    fn a_dear_first_epoch_does_not_price_every_trap_at_its_cost() {
        let mut c = Chooser::new();
        // 186 traps in an epoch whose passes cost 48 ms (the start registering all the
        // memory): 258 us a trap as measured, priced at MAX_TRAP_NS.
        c.after_epoch(&Epoch {
            cost_ns: 48_000_000,
            ..shadow(186, 0)
        });
        assert_eq!(c.trap_ns, MAX_TRAP_NS);
        // Then quiet on a holder: 42 faults of the shim's own pages an epoch against a
        // 3 ms clone and 6.6 ms of the governor's cost; back to shadows after three.
        c.holder = true;
        let quiet = Epoch {
            cost_ns: 6_600_000,
            ..holder(42, 3)
        };
        assert!(!c.after_epoch(&quiet));
        assert!(!c.after_epoch(&quiet));
        assert!(c.after_epoch(&quiet));
    }

    #[test]
    fn a_program_that_calms_down_goes_back_to_shadows() {
        let mut c = Chooser::new();
        for _ in 0..3 {
            c.after_epoch(&shadow(60_000, 30_000));
        }
        assert!(c.holder_next());
        // A few minor faults an epoch: the 8 ms clone is the larger cost, and half of
        // those writes would be caught ahead (the hit rate the shadows last earned).
        assert!(!c.after_epoch(&holder(100, 8)));
        assert!(!c.after_epoch(&holder(100, 8)));
        assert!(c.after_epoch(&holder(100, 8)));
        assert!(!c.holder_next());
    }

    #[test]
    fn a_fallback_snapshot_neither_counts_nor_switches() {
        let mut c = Chooser::new();
        c.after_epoch(&shadow(60_000, 0));
        c.after_epoch(&shadow(60_000, 0));
        // Holders chosen, but this one came back a shadow (a clone refused): no switch
        // back on its word, and the streak towards holders is not carried on either.
        c.holder = true;
        assert!(!c.after_epoch(&shadow(10, 0)));
        assert!(c.holder_next());
    }
}
