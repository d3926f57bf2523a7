//! What changed between two versions: the pages a copy of version `to` must take anew
//! when it already holds version `from` (a recorder's delta, see `service::control`'s
//! `changes`).
//!
//! Every write to tracked memory after snapshot `k` is saved first (a trap, a copy
//! ahead, a save before a discard) into a shadow stamped `k`, or recorded as a zero
//! record stamped `k` when the page was never populated; a discard the engine could not
//! save is recorded as lost at `k`. So the pages that may differ between `from` and `to`
//! are those with a shadow, zero record or loss stamped from `from` up to `to`, plus the
//! ranges tracked at `to` and not at `from`. Pages copied ahead and never written are
//! among them too (a few pages more, never fewer). What is no longer tracked at `to` is
//! told by its regions.
//!
//! In a holder epoch (version `k` held by a holder child) nothing traps: the pages written
//! are those the asynchronous write-protect scans listed, stamped `k` like the records
//! (see `written`), once a recorder asked for changes. An epoch in `[from, to)` held by a
//! holder and not listed (before any recorder asked) makes every page of `to`'s regions
//! count as changed.

use crate::base::page::{self, PAGE};
use crate::base::range::{coalesce, Range};
use crate::engine::readback::{readable, regions_at, ReadError};
use crate::engine::{self, Engine};

impl Engine {
    /// At most how many ranges [`Engine::changed_between`] gives (to size its list
    /// outside the engine lock).
    fn changed_bound(&self, from: u64, to: u64) -> usize {
        self.pool.stamped_between(from, to)
            + self.zeros.len()
            + self.lost.len()
            + self.tracked.len()
            + self.retired.len()
            + self.written.count_between(from, to)
    }

    /// Appends to `out` (without growing it: false when it is too small) the ranges that
    /// may differ between versions `from` and `to`, unsorted; both must be readable.
    fn changed_between(&self, from: u64, to: u64, out: &mut Vec<Range>) -> bool {
        if self.changed_bound(from, to) > out.capacity() - out.len() {
            return false;
        }
        let stamped = |v: u64| from <= v && v < to;
        self.pool
            .for_each_stamped_between(from, to, |p| out.push(Range::new(p, p + PAGE)));
        out.extend(self.zeros.iter().filter(|z| stamped(z.1)).map(|z| z.0));
        out.extend(self.lost.iter().filter(|l| stamped(l.1)).map(|l| l.0));
        self.written.for_each_between(from, to, |r| out.push(r));
        let new_since = |since: u64| from < since && since <= to;
        out.extend(
            self.tracked
                .iter()
                .filter(|t| new_since(t.since))
                .map(|t| t.range),
        );
        out.extend(
            self.retired
                .iter()
                .filter(|r| new_since(r.since) && to < r.until)
                .map(|r| r.range),
        );
        true
    }

    /// Whether every page must be taken as changed since `from`: the loss list
    /// overflowed in an epoch since, or an epoch since was held by a holder and its
    /// writes were not listed.
    fn all_changed_since(&self, from: u64, to: u64) -> bool {
        self.lost_all_since.is_some_and(|l| from <= l && l < to)
            || self
                .holders
                .iter()
                .any(|h| from <= h.version && h.version < to && !self.written.covers(h.version))
    }
}

/// The regions of version `to` and, within them, the page-aligned ranges (in address
/// order, adjacent ones merged) that may differ from version `from`; every region whole
/// when `from` is 0. Refused like a read of either version.
pub fn changed(from: u64, to: u64) -> Result<(Vec<Range>, Vec<Range>), ReadError> {
    let regions = regions_at(to)?;
    if from == 0 {
        return Ok((regions.clone(), regions));
    }
    // Nothing may allocate under the engine lock: the list is sized outside it.
    let mut capacity = 0;
    let mut out: Vec<Range> = loop {
        let mut out = Vec::with_capacity(capacity);
        let need = engine::with(|e| {
            readable(e, to)?;
            readable(e, from)?;
            if e.all_changed_since(from, to) {
                return Ok(Some(None));
            }
            if e.changed_between(from, to, &mut out) {
                Ok(None)
            } else {
                Ok(Some(Some(e.changed_bound(from, to))))
            }
        })
        .ok_or(ReadError::NoEngine)??;
        match need {
            None => break out,
            Some(None) => return Ok((regions.clone(), regions)),
            // A little more, in case the lists grow again meanwhile.
            Some(Some(n)) => capacity = n + n / 8 + 16,
        }
    };
    for r in &mut out {
        *r = Range::new(page::floor(r.start), page::ceil(r.end));
    }
    out.sort_unstable_by_key(|r| r.start);
    coalesce(&mut out, 0);
    Ok((regions.clone(), clip(&out, &regions)))
}

/// The parts of `changes` (sorted, disjoint) inside `regions` (sorted, disjoint).
fn clip(changes: &[Range], regions: &[Range]) -> Vec<Range> {
    let mut out = Vec::with_capacity(changes.len() + regions.len());
    let mut i = 0;
    for c in changes {
        while i < regions.len() && regions[i].end <= c.start {
            i += 1;
        }
        let mut j = i;
        while j < regions.len() && regions[j].start < c.end {
            let (s, e) = (c.start.max(regions[j].start), c.end.min(regions[j].end));
            if s < e {
                out.push(Range::new(s, e));
            }
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: usize, e: usize) -> Range {
        Range::new(s, e)
    }

    /// The ranges `changed_between(from, to)` gives, sorted and merged.
    fn between(e: &Engine, from: u64, to: u64) -> Vec<Range> {
        let mut out = Vec::with_capacity(e.changed_bound(from, to));
        assert!(e.changed_between(from, to, &mut out));
        out.sort_unstable_by_key(|r| r.start);
        coalesce(&mut out, 0);
        out
    }

    #[test]
    fn saved_zeroed_and_new_pages_count_as_changed_in_their_epochs() {
        let pages = 8;
        let buf = crate::base::sys::map_anon(pages * PAGE, false).unwrap() as usize;
        let newer = crate::base::sys::map_anon(2 * PAGE, false).unwrap() as usize;
        let mem = crate::base::sys::map_anon(64 * PAGE, false).unwrap() as usize;
        let config = crate::config::Config::parse(|_| None).unwrap();
        let pool = crate::engine::shadow::ShadowPool::new(r(mem, mem + 64 * PAGE), 4)
            .expect("a test pool");
        let mut e = Engine::new(pool, &config);
        let at = |i: usize| buf + i * PAGE;
        // Version 1 tracks `buf`; in its epoch pages 2..4 are written and page 6 is
        // found never written.
        e.version = 1;
        e.pool.begin_version(1);
        e.tracked = vec![crate::engine::TrackedRange {
            range: r(buf, at(pages)),
            since: 1,
        }];
        assert_eq!(e.save_run(at(2), at(4), 2), Some((2, 2)));
        assert!(e.mark_zero(r(at(6), at(7))));
        // Version 2 also tracks `newer`; in its epoch page 0 is written.
        e.version = 2;
        e.pool.begin_version(2);
        e.tracked.push(crate::engine::TrackedRange {
            range: r(newer, newer + 2 * PAGE),
            since: 2,
        });
        assert_eq!(e.save_run(at(0), at(1), 1), Some((1, 1)));
        let mut want = vec![r(at(2), at(4)), r(at(6), at(7)), r(newer, newer + 2 * PAGE)];
        want.sort_unstable_by_key(|x| x.start);
        assert_eq!(between(&e, 1, 2), want);
        assert_eq!(between(&e, 2, 3), vec![r(at(0), at(1))]);
        // A page unmapped in epoch 2 without a save counts too.
        e.mark_lost(r(at(7), at(8)));
        assert_eq!(between(&e, 2, 3), vec![r(at(0), at(1)), r(at(7), at(8))]);
    }

    #[test]
    fn changes_are_clipped_to_the_regions_of_the_version() {
        let regions = [r(0x1000, 0x5000), r(0x8000, 0x9000)];
        let changes = [r(0, 0x2000), r(0x4000, 0x9000), r(0xa000, 0xb000)];
        assert_eq!(
            clip(&changes, &regions),
            vec![r(0x1000, 0x2000), r(0x4000, 0x5000), r(0x8000, 0x9000)]
        );
    }
}
