//! What the next protect pass must write-protect again.
//!
//! A page keeps its write protection until something removes it, so a pass need not
//! protect every tracked page again, only:
//! - the runs the fault path unprotected since the last pass ([`Reprotect::unprotected`]);
//! - ranges that are new since the last pass (the rescan finds them; see
//!   `epoch::carry_since`);
//! - ranges the kernel reported unmapped, zapped or moved ([`Reprotect::changed`]):
//!   zapping drops protection without a fault, and a new mapping at an address the last
//!   pass saw is neither registered nor protected.
//!
//! The cost of a pass then follows what the program wrote since the last one, not how
//! much memory it has. When a list overflows, the next pass protects everything.
//!
//! Nothing here allocates after [`Reprotect::with_capacity`]: the fault thread records
//! into it.

use crate::base::range::Range;

pub struct Reprotect {
    /// Ranges unprotected since the last pass, in the order they were; a range that
    /// continues the previous one is merged into it.
    unprotected: Vec<Range>,
    /// Ranges unmapped, zapped or moved, each with the number of the newest scan that
    /// had started when the kernel reported it (see [`Reprotect::take`]).
    changed: Vec<(Range, u64)>,
    /// A list overflowed (or tracking was dropped): protect everything.
    all: bool,
}

/// What one pass protects beyond the new ranges (see [`Reprotect::take`]).
pub struct PassWork {
    pub unprotected: Vec<Range>,
    pub changed: Vec<Range>,
    pub all: bool,
}

impl PassWork {
    /// Empty lists with room for everything [`Reprotect::take`] can move into them
    /// (allocated before a pass holds faults).
    pub fn with_capacity(unprotected: usize, changed: usize) -> PassWork {
        PassWork {
            unprotected: Vec::with_capacity(unprotected),
            changed: Vec::with_capacity(changed),
            all: false,
        }
    }
}

impl Reprotect {
    pub fn with_capacity(unprotected: usize, changed: usize) -> Reprotect {
        Reprotect {
            unprotected: Vec::with_capacity(unprotected),
            changed: Vec::with_capacity(changed),
            // The first pass protects everything anyway (every range is new).
            all: true,
        }
    }

    pub fn capacities(&self) -> (usize, usize) {
        (self.unprotected.capacity(), self.changed.capacity())
    }

    /// Records that `r` lost its protection through the fault path.
    pub fn note_unprotected(&mut self, r: Range) {
        if let Some(last) = self.unprotected.last_mut() {
            if last.end == r.start {
                last.end = r.end;
                return;
            }
            if last.start <= r.start && r.end <= last.end {
                return;
            }
        }
        if self.unprotected.len() < self.unprotected.capacity() {
            self.unprotected.push(r);
        } else {
            self.all = true;
        }
    }

    /// Records that the kernel reported `r` unmapped, zapped or moved while scan number
    /// `scan` was the newest one started.
    pub fn note_changed(&mut self, r: Range, scan: u64) {
        if self.changed.len() < self.changed.capacity() {
            self.changed.push((r, scan));
        } else {
            self.all = true;
        }
    }

    /// Everything must be protected again (tracking was dropped).
    pub fn note_all(&mut self) {
        self.all = true;
    }

    /// Moves what pass number `scan` must protect into `work` (whose lists have this
    /// list's capacities, so nothing allocates). The unprotected runs are handed over
    /// and forgotten. A changed range stays for the pass after too: the kernel reports
    /// an unmap once it is done but a zap before it is done, and a new mapping at that
    /// address may appear after this pass's rescan; the pass after rescans once more
    /// and protects it then.
    pub fn take(&mut self, scan: u64, work: &mut PassWork) {
        work.unprotected.clear();
        work.changed.clear();
        core::mem::swap(&mut self.unprotected, &mut work.unprotected);
        work.changed.extend(self.changed.iter().map(|&(r, _)| r));
        self.changed.retain(|&(_, seen)| seen + 1 >= scan);
        work.all = core::mem::take(&mut self.all);
    }
}

/// Calls `f` with each part of `r` that lies inside one of `sorted` (sorted by address,
/// free of overlaps).
pub fn within(sorted: &[Range], r: Range, f: &mut dyn FnMut(Range)) {
    let first = sorted.partition_point(|s| s.end <= r.start);
    for s in sorted[first..].iter().take_while(|s| s.start < r.end) {
        let part = Range::new(s.start.max(r.start), s.end.min(r.end));
        if !part.is_empty() {
            f(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_overflow_means_all() {
        let mut rp = Reprotect::with_capacity(2, 1);
        let mut w = PassWork::with_capacity(2, 1);
        rp.take(1, &mut w);
        assert!(w.all, "the first pass protects everything");
        rp.note_unprotected(Range::new(0x1000, 0x3000));
        rp.note_unprotected(Range::new(0x3000, 0x5000)); // continues: merged
        rp.note_unprotected(Range::new(0x2000, 0x3000)); // inside: nothing new
        rp.note_unprotected(Range::new(0x9000, 0xa000));
        rp.take(2, &mut w);
        assert!(!w.all);
        assert_eq!(
            w.unprotected,
            vec![Range::new(0x1000, 0x5000), Range::new(0x9000, 0xa000)]
        );
        rp.take(3, &mut w);
        assert!(w.unprotected.is_empty(), "handed over once");
        for i in 0..3 {
            rp.note_unprotected(Range::new(0x10000 * (i + 1), 0x10000 * (i + 1) + 0x1000));
        }
        rp.take(4, &mut w);
        assert!(w.all, "a third run does not fit: protect everything");
        assert_eq!(rp.capacities(), (2, 1), "capacities survive the swaps");
    }

    #[test]
    fn changed_ranges_stay_for_the_pass_after() {
        let mut rp = Reprotect::with_capacity(4, 4);
        let mut w = PassWork::with_capacity(4, 4);
        rp.take(1, &mut w);
        // Reported while scan 1 was the newest: passes 2 and 3 protect it, 4 does not.
        rp.note_changed(Range::new(0x1000, 0x2000), 1);
        rp.take(2, &mut w);
        assert_eq!(w.changed, vec![Range::new(0x1000, 0x2000)]);
        rp.take(3, &mut w);
        assert_eq!(w.changed, vec![Range::new(0x1000, 0x2000)]);
        rp.take(4, &mut w);
        assert!(w.changed.is_empty());
        rp.note_changed(Range::new(0x1000, 0x2000), 4);
        rp.note_changed(Range::new(0x5000, 0x6000), 4);
        rp.note_changed(Range::new(0x7000, 0x8000), 4);
        rp.note_changed(Range::new(0x9000, 0xa000), 4);
        rp.note_changed(Range::new(0xb000, 0xc000), 4);
        rp.take(5, &mut w);
        assert!(w.all, "a fifth change does not fit: protect everything");
    }

    #[test]
    fn within_cuts_to_the_registered_ranges() {
        let reg = [
            Range::new(0x1000, 0x3000),
            Range::new(0x5000, 0x6000),
            Range::new(0x8000, 0x9000),
        ];
        let mut got = Vec::new();
        within(&reg, Range::new(0x2000, 0x8800), &mut |r| got.push(r));
        assert_eq!(
            got,
            vec![
                Range::new(0x2000, 0x3000),
                Range::new(0x5000, 0x6000),
                Range::new(0x8000, 0x8800)
            ]
        );
        got.clear();
        within(&reg, Range::new(0x3000, 0x5000), &mut |r| got.push(r));
        assert!(got.is_empty());
    }
}
