//! `history`: pages written in recent epochs, weighted by how often.
//!
//! For every page written in the last [`K`] epochs the predictor keeps a [`K`]-bit
//! pattern, bit `i` set when the page was written `i + 1` epochs ago. A page's
//! confidence is the measured probability that a page with its pattern is written in the
//! next epoch: at each epoch start, every remembered page is one observation of its
//! pattern (was it written in the epoch that just ended?), counted in a table of
//! 2^[`K`] decayed (written, seen) counts. So "written in each of the last 8 epochs"
//! earns what it is worth on this program (near 1 for a stable working set), "written
//! once, 3 epochs ago" too (near 0 for a sweep or random writes). Before a pattern has
//! been seen its confidence is the square of the recency-weighted fraction of epochs it
//! was written in ([`prior`]), with the weight of [`PRIOR_SEEN`] observations.
//!
//! One correction: when far more pages than usual arrive at once in a pattern that ends
//! with an epoch without a write (a whole working set stopped being written: it moved
//! or the phase ended), the pages beyond the usual number are counted as unlikely. A
//! pattern's rate was learnt from the few pages that usually skip an epoch; a thousand
//! pages skipping together are another thing.
//!
//! The plan is every remembered page whose pattern is worth at least [`FLOOR`],
//! consecutive pages of the same pattern as one run, best first. The predictor does
//! nothing on a fault (it knows epochs, not order).
//!
//! Memory: one `u64` per remembered page (page number and pattern packed), at most
//! [`MAX_PAGES`] of them (8 MiB, twice while merging), plus the 2^[`K`]-entry count
//! table and the plan's scratch. `new_epoch` merges the sorted `written` into the sorted
//! pages in O(remembered + written), then sorts the plan.

use super::{push_best_first, FaultNote, Feedback, Guess, Kind, PageNo, Params, Predictor};

/// Epochs remembered: 8 epochs (0.8 s at 100 ms epochs) tell a stable set from a
/// passing one, and 2^8 patterns keep each pattern's count table entry well fed.
pub const K: u32 = 8;
const PATTERNS: usize = 1 << K;
/// Pages remembered at most (4 GiB of memory written within [`K`] epochs); beyond it
/// the pages of the weakest patterns are forgotten.
pub const MAX_PAGES: usize = 1 << 20;
/// Per-epoch decay of the pattern counts: a change of behaviour is learnt within a few
/// epochs.
pub const KEEP: f32 = 0.7;
/// Weight of an older epoch relative to the next newer one in the prior.
pub const RECENCY: f32 = 0.7;
/// The prior counts as this many observations of a pattern.
pub const PRIOR_SEEN: f32 = 8.0;
/// Pages below this confidence are not proposed.
pub const FLOOR: f32 = 0.05;

/// The confidence of a pattern never observed: the square of its recency-weighted
/// fraction of epochs (1 for every epoch, 0.1 for the last one alone: cautious until
/// the pattern has been seen).
pub fn prior(pattern: u8) -> f32 {
    let (mut w, mut sum, mut got) = (1.0, 0.0, 0.0);
    for i in 0..K {
        if pattern & (1 << i) != 0 {
            got += w;
        }
        sum += w;
        w *= RECENCY;
    }
    (got / sum) * (got / sum)
}

pub struct History {
    /// Remembered pages, sorted: page << 8 | pattern.
    pages: Vec<u64>,
    spare: Vec<u64>,
    /// Per pattern: decayed counts of pages written in the next epoch, and seen.
    written: [f32; PATTERNS],
    seen: [f32; PATTERNS],
    confidence: [f32; PATTERNS],
    /// Per pattern: pages with it now, and its decayed average of that.
    population: [f32; PATTERNS],
    usual: [f32; PATTERNS],
    scratch: Vec<Guess>,
}

fn pack(page: PageNo, pattern: u8) -> u64 {
    (page as u64) << 8 | pattern as u64
}

fn unpack(x: u64) -> (PageNo, u8) {
    ((x >> 8) as PageNo, x as u8)
}

impl History {
    pub fn new(_: &Params) -> History {
        History {
            pages: Vec::new(),
            spare: Vec::new(),
            written: [0.0; PATTERNS],
            seen: [0.0; PATTERNS],
            confidence: [0.0; PATTERNS],
            population: [0.0; PATTERNS],
            usual: [0.0; PATTERNS],
            scratch: Vec::new(),
        }
    }

    /// The confidence of pages with `pattern` (as of the last epoch start).
    #[cfg(test)]
    pub fn confidence(&self, pattern: u8) -> f32 {
        self.confidence[pattern as usize]
    }

    /// Pages remembered.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.pages.len()
    }

    fn merge(&mut self, written: &[PageNo]) {
        for i in 0..PATTERNS {
            self.written[i] *= KEEP;
            self.seen[i] *= KEEP;
        }
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        let (mut i, mut j) = (0, 0);
        while i < self.pages.len() || j < written.len() {
            let old = self.pages.get(i).map(|&x| unpack(x));
            let new = written.get(j).copied();
            let take_old = match (old, new) {
                (Some((p, _)), Some(w)) => p <= w,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if let (true, Some((p, pat))) = (take_old, old) {
                let hit = new == Some(p);
                self.seen[pat as usize] += 1.0;
                if hit {
                    self.written[pat as usize] += 1.0;
                    j += 1;
                }
                i += 1;
                let pat = pat << 1 | hit as u8;
                if pat != 0 {
                    out.push(pack(p, pat));
                }
            } else if let Some(w) = new {
                j += 1;
                if out.last().is_none_or(|&x| unpack(x).0 < w) {
                    out.push(pack(w, 1));
                }
            }
        }
        self.spare = std::mem::replace(&mut self.pages, out);
        self.population = [0.0; PATTERNS];
        for &x in &self.pages {
            self.population[unpack(x).1 as usize] += 1.0;
        }
        for pat in 0..PATTERNS {
            let rate =
                (self.written[pat] + PRIOR_SEEN * prior(pat as u8)) / (self.seen[pat] + PRIOR_SEEN);
            // A surge of pages that were not written in the last epoch: count the pages
            // beyond the usual number as unlikely.
            let (now, usual) = (self.population[pat], self.usual[pat]);
            let surge = if pat & 1 == 0 && self.seen[pat] > 0.0 && now > usual + PRIOR_SEEN {
                (usual + PRIOR_SEEN) / now
            } else {
                1.0
            };
            self.confidence[pat] = rate * surge;
            self.usual[pat] = KEEP * usual + (1.0 - KEEP) * now;
        }
        if self.pages.len() > MAX_PAGES {
            let conf = self.confidence;
            let key = |x: &u64| conf[unpack(*x).1 as usize];
            self.pages
                .select_nth_unstable_by(MAX_PAGES, |a, b| key(b).total_cmp(&key(a)));
            self.pages.truncate(MAX_PAGES);
            self.pages.sort_unstable();
        }
    }
}

impl Predictor for History {
    fn new_epoch(
        &mut self,
        written: &[PageNo],
        _: &Feedback,
        _: u64,
        max_pages: usize,
        plan: &mut Vec<Guess>,
    ) {
        self.merge(written);
        let by = Kind::History.bit();
        let confidence = &self.confidence;
        let guess = |(page, pages, pat): (PageNo, u32, u8)| Guess {
            page,
            pages,
            confidence: confidence[pat as usize],
            by,
        };
        let guesses = &mut self.scratch;
        guesses.clear();
        // Runs of consecutive pages with the same pattern.
        let mut run: Option<(PageNo, u32, u8)> = None;
        for &x in &self.pages {
            let (p, pat) = unpack(x);
            if confidence[pat as usize] < FLOOR {
                continue;
            }
            match &mut run {
                Some((first, n, rp)) if *rp == pat && *first + *n as usize == p => *n += 1,
                _ => {
                    guesses.extend(run.map(guess));
                    run = Some((p, 1, pat));
                }
            }
        }
        guesses.extend(run.map(guess));
        push_best_first(guesses, max_pages, plan);
    }

    fn on_fault(&mut self, _: FaultNote, _: &mut Vec<Guess>) {}
}

#[cfg(test)]
mod tests {
    use super::super::sim;
    use super::*;

    #[test]
    fn prior_weights_recent_epochs_more() {
        assert_eq!(prior(0xff), 1.0);
        assert_eq!(prior(0), 0.0);
        assert!(prior(0b1) > prior(0b10));
        assert!(prior(0b11) > prior(0b1));
    }

    #[test]
    fn patterns_learn_what_they_are_worth() {
        let mut h = History::new(&Params::default());
        let mut plan = Vec::new();
        // Pages 0..100 written every epoch, 1000.. a new hundred each epoch.
        for e in 0..10 {
            let mut w: Vec<PageNo> = (0..100).collect();
            w.extend(1000 + e * 100..1100 + e * 100);
            plan.clear();
            h.new_epoch(&w, &Feedback::default(), 0, 1 << 20, &mut plan);
        }
        assert!(h.confidence(0xff) > 0.9);
        assert!(h.confidence(0b1) < 0.1, "{}", h.confidence(0b1));
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!((plan[0].page, plan[0].pages), (0, 100));
        assert!(h.remembered() <= 100 + 8 * 100);
        // The budget cuts the plan.
        plan.clear();
        h.new_epoch(&[], &Feedback::default(), 0, 10, &mut plan);
        assert_eq!(plan.iter().map(|g| g.pages).sum::<u32>(), 10);
    }

    #[test]
    fn simulated_streams() {
        sim::check_history();
    }
}
