//! The pages written in holder epochs, as the asynchronous write-protect scans found
//! them (see `service::written`): what a recorder's delta needs where no trap left a
//! record. A holder gives its version, not the pages written since the one before; these
//! lists give those pages.
//!
//! A list is stamped like a shadow: stamp `k` holds pages written after version `k` was
//! taken (in epoch `k`), perhaps a few more (a superset, never fewer). Lists are made on
//! the epoch thread and handed over whole; the engine only moves them (nothing allocates
//! or frees under the engine lock: [`WrittenLists::take_older`] hands the old ones back
//! to be dropped outside it).

use crate::base::range::Range;

/// At most how many lists the engine keeps: two per holder epoch of the retained
/// versions (`holder::MAX_HOLDERS`), with room to spare.
pub const CAPACITY: usize = 2 * crate::engine::holder::MAX_HOLDERS + 16;

/// Pages written in one epoch.
pub struct WrittenList {
    pub stamp: u64,
    pub ranges: Vec<Range>,
}

/// The engine's lists, and since when they cover every holder epoch.
pub struct WrittenLists {
    lists: Vec<WrittenList>,
    /// The first epoch from which every holder epoch is listed (tracking began at that
    /// version's pass); None: holder epochs are not tracked.
    from: Option<u64>,
}

impl WrittenLists {
    pub fn new() -> WrittenLists {
        WrittenLists {
            lists: Vec::with_capacity(CAPACITY),
            from: None,
        }
    }

    /// Tracking began at version `v`'s pass: epochs from `v` on are listed.
    pub fn begin(&mut self, v: u64) {
        if self.from.is_none() {
            self.from = Some(v);
        }
    }

    /// Tracking stopped (a list found no room): holder epochs count whole again until it
    /// begins anew.
    pub fn end(&mut self) {
        self.from = None;
    }

    /// Whether holder epoch `k` is listed.
    pub fn covers(&self, k: u64) -> bool {
        self.from.is_some_and(|f| k >= f)
    }

    /// Keeps `ranges` as written in epoch `stamp`; gives them back when there is no room.
    pub fn add(&mut self, stamp: u64, ranges: Vec<Range>) -> Result<(), Vec<Range>> {
        if self.lists.len() == self.lists.capacity() {
            return Err(ranges);
        }
        self.lists.push(WrittenList { stamp, ranges });
        Ok(())
    }

    /// Moves the lists no retained version can need (stamped before `oldest`) into `out`
    /// (as far as its capacity goes), to be dropped outside the engine lock.
    pub fn take_older(&mut self, oldest: u64, out: &mut Vec<WrittenList>) {
        let mut i = 0;
        while i < self.lists.len() && out.len() < out.capacity() {
            if self.lists[i].stamp < oldest {
                out.push(self.lists.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// How many lists there are (to size a [`WrittenLists::take_older`] outside the lock).
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// How many ranges the lists stamped in `[from, to)` hold.
    pub fn count_between(&self, from: u64, to: u64) -> usize {
        self.between(from, to).map(|l| l.ranges.len()).sum()
    }

    /// Every range of the lists stamped in `[from, to)`.
    pub fn for_each_between(&self, from: u64, to: u64, mut f: impl FnMut(Range)) {
        for l in self.between(from, to) {
            l.ranges.iter().for_each(|&r| f(r));
        }
    }

    fn between(&self, from: u64, to: u64) -> impl Iterator<Item = &WrittenList> {
        self.lists
            .iter()
            .filter(move |l| from <= l.stamp && l.stamp < to)
    }
}

impl crate::engine::Engine {
    /// Takes a pass's lists: `(stamp, ranges)`, moved out of `lists`; `began`: tracking
    /// began at this version's pass. False when a list found no room: tracking ends
    /// (holder epochs count whole until it begins again) and what is left in `lists`
    /// goes back to the caller.
    pub fn note_written(&mut self, began: Option<u64>, lists: &mut Vec<(u64, Vec<Range>)>) -> bool {
        if let Some(v) = began {
            self.written.begin(v);
        }
        while let Some((stamp, ranges)) = lists.pop() {
            if let Err(back) = self.written.add(stamp, ranges) {
                lists.push((stamp, back));
                self.written.end();
                return false;
            }
        }
        true
    }

    /// How many lists the engine keeps.
    pub fn written_lists(&self) -> usize {
        self.written.len()
    }

    /// Moves the lists no retained version needs into `out`, to be dropped outside the
    /// engine lock.
    pub fn take_old_written(&mut self, out: &mut Vec<WrittenList>) {
        let oldest = self.pool.retained().map_or(u64::MAX, |r| r.0);
        self.written.take_older(oldest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: usize, e: usize) -> Range {
        Range::new(s, e)
    }

    #[test]
    fn lists_are_stamped_counted_and_taken_out_when_old() {
        let mut w = WrittenLists::new();
        assert!(!w.covers(3));
        w.begin(3);
        w.begin(5);
        assert!(w.covers(3) && w.covers(9) && !w.covers(2));
        w.add(3, vec![r(0x1000, 0x2000)]).unwrap();
        w.add(4, vec![r(0x5000, 0x7000), r(0x9000, 0xa000)])
            .unwrap();
        w.add(4, vec![r(0x1000, 0x2000)]).unwrap();
        assert_eq!(w.count_between(4, 5), 3);
        assert_eq!(w.count_between(3, 5), 4);
        let mut got = Vec::new();
        w.for_each_between(3, 4, |x| got.push(x));
        assert_eq!(got, vec![r(0x1000, 0x2000)]);
        let mut old = Vec::with_capacity(w.len());
        w.take_older(4, &mut old);
        assert_eq!(old.len(), 1);
        assert_eq!(w.count_between(0, 10), 3);
        w.end();
        assert!(!w.covers(9));
    }

    #[test]
    fn a_full_engine_gives_the_list_back() {
        let mut w = WrittenLists::new();
        for k in 0..CAPACITY as u64 {
            w.add(k, Vec::new()).unwrap();
        }
        assert!(w.add(99, vec![r(0, 0x1000)]).is_err());
    }
}
