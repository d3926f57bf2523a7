//! `auto` (the default): all four predictors, each weighted by the hit rate it has
//! earned.
//!
//! Every member proposes as if alone; `auto` merges the proposals page by page. A member
//! `k`'s trust is the Laplace hit rate of the pages it proposed that were prefetched,
//! `t = (hits + 1) / (hits + waste + 2)`, over decayed counts ([`KEEP`] per epoch) from
//! [`Feedback`]: 1/2 before any feedback. A member's claim `c` for a page counts as
//! `min(c, sqrt(c * t))`: trust never raises a claim, but a member that earns less than
//! it claims is cut towards what it earns (a member claiming 0.9 that earns 0.1 counts
//! for 0.3, then less as its waste piles up and its trust falls further). A page's
//! confidence is the best of its proposers' counted claims, and its guess carries the
//! bits of all its proposers. The members calibrate their own confidences on what the
//! program writes, so on writes nobody can predict they all fall below the threshold,
//! and trust is the second line of defence. Since counts decay, a member that fell
//! silent gets a new chance after a few tens of epochs.
//!
//! The merged plan and the guesses of a trap are runs without duplicate pages, best
//! first; the plan is cut at `max_pages` pages.
//!
//! Memory: the four members' (see their modules; about 30 MiB at worst, mostly
//! `history`'s 1 Mi pages) plus scratch vectors as long as the members' plans. Merging is
//! O(g log g) in the number of guesses `g`; a trap's guesses are a few runs.

use super::history::History;
use super::markov::Markov;
use super::score::Score;
use super::stride::Stride;
use super::{push_best_first, FaultNote, Feedback, Guess, PageNo, Params, Predictor, KINDS};

/// Per-epoch decay of the trust counts: half-life of about 7 epochs, so trust follows a
/// change of phase within a second at 100 ms epochs.
pub const KEEP: f32 = 0.9;

pub struct Auto {
    members: [Box<dyn Predictor>; KINDS],
    hits: [f32; KINDS],
    waste: [f32; KINDS],
    trust: [f32; KINDS],
    guesses: Vec<Guess>,
    events: Vec<(PageNo, u32)>,
    active: Vec<u32>,
    merged: Vec<Guess>,
}

impl Auto {
    pub fn new(params: &Params) -> Auto {
        // In the order of Kind.
        let members: [Box<dyn Predictor>; KINDS] = [
            Box::new(History::new(params)),
            Box::new(Stride::new(params)),
            Box::new(Markov::new(params)),
            Box::new(Score::new(params)),
        ];
        Auto {
            members,
            hits: [0.0; KINDS],
            waste: [0.0; KINDS],
            trust: [0.5; KINDS],
            guesses: Vec::new(),
            events: Vec::new(),
            active: Vec::new(),
            merged: Vec::new(),
        }
    }

    /// Each member's trust: its decayed Laplace hit rate.
    #[cfg(test)]
    pub fn trust(&self) -> [f32; KINDS] {
        self.trust
    }

    /// The counted claim of the member whose bit is `by`.
    fn counted(&self, g: &Guess) -> f32 {
        let k = g.by.trailing_zeros() as usize;
        let t = self.trust.get(k).copied().unwrap_or(0.5);
        g.confidence.min((g.confidence * t).sqrt())
    }

    /// Merges `self.guesses` into `out`: runs without duplicates, best first, at most
    /// `max_pages` pages.
    fn merge(&mut self, max_pages: usize, out: &mut Vec<Guess>) {
        self.events.clear();
        for (i, g) in self.guesses.iter().enumerate() {
            let i = i as u32;
            self.events.push((g.page, i << 1 | 1)); // start
            self.events.push((g.page + g.pages as usize, i << 1)); // end
        }
        self.events.sort_unstable();
        self.active.clear();
        self.merged.clear();
        let mut e = 0;
        while e < self.events.len() {
            let x = self.events[e].0;
            while e < self.events.len() && self.events[e].0 == x {
                let (i, start) = (self.events[e].1 >> 1, self.events[e].1 & 1 == 1);
                if start {
                    self.active.push(i);
                } else if let Some(j) = self.active.iter().position(|&a| a == i) {
                    self.active.swap_remove(j);
                }
                e += 1;
            }
            if self.active.is_empty() || e == self.events.len() {
                continue;
            }
            let end = self.events[e].0;
            let (mut confidence, mut by) = (0.0f32, 0u8);
            for &i in &self.active {
                let g = &self.guesses[i as usize];
                confidence = confidence.max(self.counted(g));
                by |= g.by;
            }
            let pages = (end - x) as u32;
            match self.merged.last_mut() {
                Some(m)
                    if m.page + m.pages as usize == x
                        && m.by == by
                        && m.confidence == confidence =>
                {
                    m.pages += pages
                }
                _ => self.merged.push(Guess {
                    page: x,
                    pages,
                    confidence,
                    by,
                }),
            }
        }
        push_best_first(&mut self.merged, max_pages, out);
    }
}

impl Predictor for Auto {
    fn new_epoch(
        &mut self,
        written: &[PageNo],
        feedback: &Feedback,
        now_ns: u64,
        max_pages: usize,
        plan: &mut Vec<Guess>,
    ) {
        for k in 0..KINDS {
            self.hits[k] = self.hits[k] * KEEP + feedback.hits[k] as f32;
            self.waste[k] = self.waste[k] * KEEP + feedback.waste[k] as f32;
            self.trust[k] = (self.hits[k] + 1.0) / (self.hits[k] + self.waste[k] + 2.0);
        }
        self.guesses.clear();
        for m in self.members.iter_mut() {
            m.new_epoch(written, feedback, now_ns, max_pages, &mut self.guesses);
        }
        self.merge(max_pages, plan);
    }

    fn on_fault(&mut self, fault: FaultNote, out: &mut Vec<Guess>) {
        self.guesses.clear();
        for m in self.members.iter_mut() {
            m.on_fault(fault, &mut self.guesses);
        }
        let Some(first) = self.guesses.first() else {
            return;
        };
        if self.guesses.iter().all(|g| g.by == first.by) {
            // One member proposed (the usual case): its guesses are already without
            // duplicates; only the order may change with the counted claims.
            let start = out.len();
            for i in 0..self.guesses.len() {
                let g = self.guesses[i];
                out.push(Guess {
                    confidence: self.counted(&g),
                    ..g
                });
            }
            let mine = &mut out[start..];
            if !mine.is_sorted_by(|a, b| a.confidence >= b.confidence) {
                mine.sort_unstable_by(|a, b| b.confidence.total_cmp(&a.confidence));
            }
            return;
        }
        self.merge(usize::MAX, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{sim, Kind};
    use super::*;

    #[test]
    fn merging_keeps_every_proposer_and_no_duplicate() {
        let mut a = Auto::new(&Params::default());
        a.trust = [1.0, 1.0, 0.01, 1.0];
        let (h, s, m) = (Kind::History.bit(), Kind::Stride.bit(), Kind::Markov.bit());
        a.guesses = vec![
            Guess {
                page: 10,
                pages: 10,
                confidence: 0.5,
                by: s,
            },
            Guess {
                page: 12,
                pages: 1,
                confidence: 0.9,
                by: h,
            },
            Guess {
                page: 15,
                pages: 1,
                confidence: 0.9,
                by: m,
            },
            Guess {
                page: 40,
                pages: 1,
                confidence: 0.3,
                by: h,
            },
        ];
        let mut out = Vec::new();
        a.merge(usize::MAX, &mut out);
        let runs: Vec<_> = out.iter().map(|g| (g.page, g.pages, g.by)).collect();
        assert_eq!(
            runs,
            [
                (12, 1, h | s),
                (10, 2, s),
                (13, 2, s),
                (15, 1, s | m),
                (16, 4, s),
                (40, 1, h)
            ]
        );
        assert_eq!(out[0].confidence, 0.9);
        // Markov's 0.9 is worth sqrt(0.009) < 0.5 with trust 0.01: the run's 0.5 wins.
        assert_eq!(out[3].confidence, 0.5);
        out.clear();
        a.merge(3, &mut out);
        assert_eq!(out.iter().map(|g| g.pages).sum::<u32>(), 3);
    }

    #[test]
    fn trust_follows_feedback() {
        let mut a = Auto::new(&Params::default());
        let fb = Feedback {
            hits: [100, 0, 5, 0],
            waste: [0, 0, 500, 0],
        };
        for _ in 0..3 {
            a.new_epoch(&[], &fb, 0, 100, &mut Vec::new());
        }
        let t = a.trust();
        assert!(
            t[0] > 0.99 && t[1] == 0.5 && t[2] < 0.02 && t[3] == 0.5,
            "{t:?}"
        );
    }

    #[test]
    fn simulated_streams() {
        sim::check_auto();
    }
}
