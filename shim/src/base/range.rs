//! Address ranges, and the small fixed-capacity locked lists of them the shim keeps
//! (its own memory, the host's thread stacks). The lists never allocate, so they can be
//! updated from interposed calls; they are changed with signals blocked.

use crate::base::sync::SpinLock;

/// A half-open address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: usize,
    pub end: usize,
}

impl Range {
    pub const EMPTY: Range = Range { start: 0, end: 0 };

    pub fn new(start: usize, end: usize) -> Range {
        Range { start, end }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// A locked list of at most `N` ranges.
pub struct RangeList<const N: usize> {
    inner: SpinLock<Ranges<N>>,
}

struct Ranges<const N: usize> {
    ranges: [Range; N],
    len: usize,
}

impl<const N: usize> RangeList<N> {
    pub const fn new() -> Self {
        RangeList {
            inner: SpinLock::new(Ranges {
                ranges: [Range::EMPTY; N],
                len: 0,
            }),
        }
    }

    /// Adds `r` unless it is already there. False if the list is full.
    pub fn insert(&self, r: Range) -> bool {
        let _s = crate::base::sys::block_signals();
        let mut l = self.inner.lock();
        let n = l.len;
        if l.ranges[..n].contains(&r) {
            return true;
        }
        if n == N {
            return false;
        }
        l.ranges[n] = r;
        l.len += 1;
        true
    }

    /// Removes the first range that `pred` selects, and returns it.
    pub fn remove_first(&self, pred: impl Fn(&Range) -> bool) -> Option<Range> {
        let _s = crate::base::sys::block_signals();
        let mut l = self.inner.lock();
        let n = l.len;
        let i = l.ranges[..n].iter().position(pred)?;
        let r = l.ranges[i];
        l.ranges[i] = l.ranges[n - 1];
        l.len -= 1;
        Some(r)
    }

    /// A copy of the list (allocates from the shim's arena: not for interposed paths).
    pub fn to_vec(&self) -> Vec<Range> {
        let _s = crate::base::sys::block_signals();
        let l = self.inner.lock();
        l.ranges[..l.len].to_vec()
    }

    pub fn lock_for_fork(&self) {
        self.inner.acquire();
    }

    pub fn unlock_after_fork(&self) {
        self.inner.release();
    }
}

/// Calls `keep` for each part of `r` outside every range of `holes`, in address order.
pub fn subtract(r: Range, holes: &[Range], keep: &mut dyn FnMut(Range)) {
    // `holes` is small: find the first one that cuts `r`, recurse on the pieces.
    for o in holes {
        if o.overlaps(&r) {
            let left = Range::new(r.start, o.start.max(r.start));
            let right = Range::new(o.end.min(r.end), r.end);
            if !left.is_empty() {
                subtract(left, holes, keep);
            }
            if !right.is_empty() {
                subtract(right, holes, keep);
            }
            return;
        }
    }
    keep(r);
}

/// Merges sorted ranges that overlap or lie at most `gap` bytes apart, in place.
pub fn coalesce(ranges: &mut Vec<Range>, gap: usize) {
    ranges.dedup_by(|next, prev| {
        let close = next.start <= prev.end.saturating_add(gap);
        if close {
            prev.end = prev.end.max(next.end);
        }
        close
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(r: Range, own: &[Range]) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        subtract(r, own, &mut |p| v.push((p.start, p.end)));
        v
    }

    #[test]
    fn subtraction_cuts_holes() {
        let own = [Range::new(20, 30), Range::new(50, 60), Range::new(0, 5)];
        assert_eq!(
            pieces(Range::new(10, 70), &own),
            vec![(10, 20), (30, 50), (60, 70)]
        );
        assert_eq!(pieces(Range::new(22, 28), &own), vec![]);
        assert_eq!(pieces(Range::new(100, 200), &own), vec![(100, 200)]);
        assert_eq!(pieces(Range::new(0, 25), &own), vec![(5, 20)]);
    }

    #[test]
    fn close_runs_are_coalesced() {
        let r = Range::new;
        let mut v = vec![
            r(0x1000, 0x2000),
            r(0x1800, 0x1900),
            r(0x3000, 0x4000),
            r(0x9000, 0xa000),
        ];
        coalesce(&mut v, 0x1000);
        assert_eq!(v, vec![r(0x1000, 0x4000), r(0x9000, 0xa000)]);
        let mut none: Vec<Range> = Vec::new();
        coalesce(&mut none, 0x1000);
        assert!(none.is_empty());
        // Gap 0: only touching ranges merge.
        let mut touching = vec![r(0x1000, 0x2000), r(0x2000, 0x3000), r(0x4000, 0x5000)];
        coalesce(&mut touching, 0);
        assert_eq!(touching, vec![r(0x1000, 0x3000), r(0x4000, 0x5000)]);
    }
}
