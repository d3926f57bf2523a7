//! `score`: a priority per segment of `segment_pages` pages, from how much and how often
//! it is written and how long ago it last was.
//!
//! For each segment written in the last [`MAX_AGE`] epochs:
//! `priority = BASELINE + alpha * access_rate + beta * change_rate - gamma * age`, where
//! over a rolling window (an exponential average that keeps [`KEEP`] of its value each
//! epoch, about 4 epochs) `access_rate` is the fraction of the segment's pages written
//! per epoch and `change_rate` the fraction of epochs in which it was written at all,
//! and `age` is the number of epochs since it was last written (0: in the epoch that
//! just ended). `alpha`, `beta`, `gamma` come from [`Params`].
//!
//! Priority to confidence: the priority range `[BASELINE - gamma * MAX_AGE, BASELINE +
//! alpha + beta]` is cut into [`BINS`] bins, and each bin's confidence is what its
//! segments earned: the decayed fraction of their pages written in the next epoch (with
//! [`PRIOR_PAGES`] pages at the rate of the bin below), made non-decreasing in priority
//! by pooling adjacent violators (a bin seen little or never takes its neighbours'
//! rate). So the weights decide which segments are judged alike and in which order, and
//! the program decides what that is worth: on random writes every bin falls below the
//! threshold.
//!
//! The plan is every segment whose bin is worth at least [`FLOOR`], as one run, best
//! first. On a trap, the rest of the trapped page's segment is proposed with the
//! confidence of "the other pages of a segment of this bin, given one was written":
//! measured the same way (segments that were not tracked have a bin of their own), this
//! is what catches a sweep over memory never written before, a segment at a time.
//!
//! Memory: 24 bytes per tracked segment, at most [`MAX_SEGMENTS`] (1.5 MiB; the
//! lowest-priority ones are dropped beyond it), twice while merging. `new_epoch` merges
//! the sorted `written` into the sorted segments in O(segments + written) and sorts the
//! plan; `on_fault` is a binary search.

use super::{push_best_first, FaultNote, Feedback, Guess, Kind, PageNo, Params, Predictor};

/// Segments tracked at most: 64 Ki of them (4 GiB with 16-page segments).
pub const MAX_SEGMENTS: usize = 1 << 16;
/// A segment not written for this many epochs is forgotten (its priority would be
/// `gamma * MAX_AGE` below a fresh one's).
pub const MAX_AGE: u32 = 16;
/// The rolling windows keep this much of their value per epoch (about 4 epochs).
pub const KEEP: f32 = 0.75;
/// The priority of a segment never written.
pub const BASELINE: f32 = 0.0;
/// Priority bins, plus one for segments not tracked.
pub const BINS: usize = 32;
const NEW_BIN: usize = BINS;
/// Per-epoch decay of the bins' counts (about the last 10 epochs count).
pub const BIN_KEEP: f32 = 0.9;
/// A bin's prior counts as this many pages.
pub const PRIOR_PAGES: f32 = 4.0;
/// Segments and rests of segments below this confidence are not proposed.
pub const FLOOR: f32 = 0.05;

#[derive(Clone, Copy, Debug)]
struct Segment {
    id: usize,
    access: f32,
    change: f32,
    /// The epoch it was last written in.
    last: u32,
    /// Its bin as of the last epoch start.
    bin: u8,
}

/// Decayed counts of pages written and pages observed.
#[derive(Clone, Copy, Default)]
struct Rate {
    written: f32,
    pages: f32,
}

pub struct Score {
    segment_pages: usize,
    alpha: f32,
    beta: f32,
    gamma: f32,
    segments: Vec<Segment>,
    spare: Vec<Segment>,
    /// The number of the epoch that starts next.
    epoch: u32,
    /// Per bin: pages of its segments written in the next epoch.
    next: [Rate; BINS + 1],
    /// Per bin: the other pages of its segments written, in epochs they were written.
    touched: [Rate; BINS + 1],
    plan_conf: [f32; BINS + 1],
    fault_conf: [f32; BINS + 1],
    /// The segment whose rest was proposed last, not proposed again at once.
    last_fault: Option<usize>,
    scratch: Vec<Guess>,
}

impl Score {
    pub fn new(params: &Params) -> Score {
        let mut s = Score {
            segment_pages: params.segment_pages.clamp(1, u32::MAX as usize),
            alpha: params.alpha,
            beta: params.beta,
            gamma: params.gamma,
            segments: Vec::new(),
            spare: Vec::new(),
            epoch: 0,
            next: [Rate::default(); BINS + 1],
            touched: [Rate::default(); BINS + 1],
            plan_conf: [0.0; BINS + 1],
            fault_conf: [0.0; BINS + 1],
            last_fault: None,
            scratch: Vec::new(),
        };
        s.calibrate();
        s
    }

    fn range(&self) -> (f32, f32) {
        let lo = BASELINE - self.gamma.max(0.0) * MAX_AGE as f32;
        let hi = BASELINE + self.alpha.max(0.0) + self.beta.max(0.0);
        (lo, hi.max(lo + 1e-3))
    }

    /// The priority of `s` at the start of epoch `self.epoch`.
    pub fn priority(&self, access: f32, change: f32, age: u32) -> f32 {
        BASELINE + self.alpha * access + self.beta * change - self.gamma * age as f32
    }

    fn bin(&self, priority: f32) -> usize {
        let (lo, hi) = self.range();
        let x = ((priority - lo) / (hi - lo)).clamp(0.0, 1.0);
        ((x * (BINS - 1) as f32).round() as usize).min(BINS - 1)
    }

    /// Sets the bins' confidences from their counts: each bin's rate, with
    /// [`PRIOR_PAGES`] pages at the rate of the bin below it (for the lowest, of all bins
    /// together; 1/10 before any count), then made non-decreasing in priority by pooling
    /// adjacent violators, weighted by the pages seen. So a bin seen little is judged by
    /// its neighbours, and a bin never seen is worth no more than the one below it unless
    /// a bin above it is worth less.
    fn calibrate(&mut self) {
        fn fit(rates: &[Rate], out: &mut [f32]) {
            let (w, p) = rates
                .iter()
                .fold((0.0, 0.0), |(w, p), r| (w + r.written, p + r.pages));
            let mut below = (w + 0.1 * PRIOR_PAGES) / (p + PRIOR_PAGES);
            // Blocks of (written, pages, bins).
            let mut blocks = [(0.0f32, 0.0f32, 0usize); BINS + 1];
            let mut n = 0;
            for r in rates {
                let rate = (r.written + below * PRIOR_PAGES) / (r.pages + PRIOR_PAGES);
                below = rate;
                // Pooled by the pages seen: a bin never seen takes its neighbours' rate.
                let weight = r.pages + 1e-3;
                blocks[n] = (rate * weight, weight, 1);
                n += 1;
                while n >= 2
                    && blocks[n - 2].0 / blocks[n - 2].1 > blocks[n - 1].0 / blocks[n - 1].1
                {
                    let b = blocks[n - 1];
                    n -= 1;
                    blocks[n - 1].0 += b.0;
                    blocks[n - 1].1 += b.1;
                    blocks[n - 1].2 += b.2;
                }
            }
            let mut i = 0;
            for b in &blocks[..n] {
                for _ in 0..b.2 {
                    out[i] = b.0 / b.1;
                    i += 1;
                }
            }
        }
        fit(&self.next[..BINS], &mut self.plan_conf[..BINS]);
        fit(&self.touched[..BINS], &mut self.fault_conf[..BINS]);
        let new = self.touched[NEW_BIN];
        self.fault_conf[NEW_BIN] = (new.written + 0.25 * PRIOR_PAGES) / (new.pages + PRIOR_PAGES);
    }

    fn observe(&mut self, bin: usize, written: usize) {
        let sp = self.segment_pages as f32;
        if bin != NEW_BIN {
            self.next[bin].written += written as f32;
            self.next[bin].pages += sp;
        }
        if written > 0 && self.segment_pages > 1 {
            self.touched[bin].written += (written - 1) as f32;
            self.touched[bin].pages += sp - 1.0;
        }
    }

    fn merge(&mut self, written: &[PageNo]) {
        let ended = self.epoch;
        self.epoch += 1;
        for r in self.next.iter_mut().chain(self.touched.iter_mut()) {
            r.written *= BIN_KEEP;
            r.pages *= BIN_KEEP;
        }
        let sp = self.segment_pages;
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        let (mut i, mut j) = (0, 0);
        loop {
            // The next segment written, and how many of its pages.
            let w = written.get(j).map(|&p| p / sp);
            let mut k = 0;
            if let Some(id) = w {
                while j + k < written.len() && written[j + k] / sp == id {
                    k += 1;
                }
            }
            let old = self.segments.get(i).copied();
            let take_old = match (old, w) {
                (Some(s), Some(w)) => s.id <= w,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (mut seg, n) = match (take_old, old, w) {
                (true, Some(s), w) => {
                    i += 1;
                    let n = if w == Some(s.id) {
                        j += k;
                        k
                    } else {
                        0
                    };
                    self.observe(s.bin as usize, n);
                    (s, n)
                }
                (_, _, Some(id)) => {
                    j += k;
                    self.observe(NEW_BIN, k);
                    let s = Segment {
                        id,
                        access: 0.0,
                        change: 0.0,
                        last: ended,
                        bin: 0,
                    };
                    (s, k)
                }
                _ => break,
            };
            seg.access = KEEP * seg.access + (1.0 - KEEP) * (n as f32 / sp as f32).min(1.0);
            seg.change = KEEP * seg.change + (1.0 - KEEP) * (n > 0) as u8 as f32;
            if n > 0 {
                seg.last = ended;
            }
            let age = ended - seg.last;
            if age < MAX_AGE {
                seg.bin = self.bin(self.priority(seg.access, seg.change, age)) as u8;
                out.push(seg);
            }
        }
        self.spare = std::mem::replace(&mut self.segments, out);
        if self.segments.len() > MAX_SEGMENTS {
            self.segments
                .select_nth_unstable_by(MAX_SEGMENTS, |a, b| b.bin.cmp(&a.bin));
            self.segments.truncate(MAX_SEGMENTS);
            self.segments.sort_unstable_by_key(|s| s.id);
        }
        self.calibrate();
    }

    /// Segments tracked.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.segments.len()
    }
}

impl Predictor for Score {
    fn new_epoch(
        &mut self,
        written: &[PageNo],
        _: &Feedback,
        _: u64,
        max_pages: usize,
        plan: &mut Vec<Guess>,
    ) {
        self.merge(written);
        self.last_fault = None;
        let sp = self.segment_pages;
        let by = Kind::Score.bit();
        let guesses = &mut self.scratch;
        guesses.clear();
        for s in &self.segments {
            let confidence = self.plan_conf[s.bin as usize];
            if confidence >= FLOOR {
                guesses.push(Guess {
                    page: s.id * sp,
                    pages: sp as u32,
                    confidence,
                    by,
                });
            }
        }
        push_best_first(guesses, max_pages, plan);
    }

    fn on_fault(&mut self, fault: FaultNote, out: &mut Vec<Guess>) {
        let sp = self.segment_pages;
        let id = fault.page / sp;
        if sp == 1 || self.last_fault == Some(id) {
            return;
        }
        let bin = match self.segments.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => self.segments[i].bin as usize,
            Err(_) => NEW_BIN,
        };
        let confidence = self.fault_conf[bin];
        if confidence < FLOOR {
            return;
        }
        self.last_fault = Some(id);
        let (first, end) = (id * sp, id * sp + sp);
        let by = Kind::Score.bit();
        // The trapped page's neighbours after it first: a sweep goes on upwards.
        if fault.page + 1 < end {
            out.push(Guess {
                page: fault.page + 1,
                pages: (end - fault.page - 1) as u32,
                confidence,
                by,
            });
        }
        if fault.page > first {
            out.push(Guess {
                page: first,
                pages: (fault.page - first) as u32,
                confidence,
                by,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim;
    use super::*;

    #[test]
    fn priority_follows_the_weights() {
        let s = Score::new(&Params::default());
        assert!(s.priority(1.0, 1.0, 0) > s.priority(0.1, 1.0, 0));
        assert!(s.priority(0.1, 1.0, 0) > s.priority(0.1, 0.2, 0));
        assert!(s.priority(0.1, 0.2, 0) > s.priority(0.1, 0.2, 3));
        assert_eq!(s.bin(100.0), BINS - 1);
        assert_eq!(s.bin(-100.0), 0);
    }

    #[test]
    fn dense_segments_are_planned_and_old_ones_forgotten() {
        let p = Params {
            segment_pages: 4,
            ..Params::default()
        };
        let mut s = Score::new(&p);
        let mut plan = Vec::new();
        for _ in 0..30 {
            plan.clear();
            s.new_epoch(
                &[8, 9, 10, 11, 100],
                &Feedback::default(),
                0,
                100,
                &mut plan,
            );
        }
        assert_eq!((plan[0].page, plan[0].pages), (8, 4), "{plan:?}");
        assert!(plan[0].confidence > 0.9);
        // Segment 25 (page 100) is a quarter written: worth about a quarter.
        let g = plan.iter().find(|g| g.page == 100).expect("segment 25");
        assert!((0.2..0.35).contains(&g.confidence), "{g:?}");
        for _ in 0..MAX_AGE {
            s.new_epoch(&[], &Feedback::default(), 0, 100, &mut plan);
        }
        assert_eq!(s.tracked(), 0);
    }

    #[test]
    fn a_trap_proposes_the_rest_of_its_segment_once() {
        let mut s = Score::new(&Params::default());
        let mut out = Vec::new();
        sim::trap(&mut s, 37, 1, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].page, out[0].pages), (38, 10));
        assert_eq!((out[1].page, out[1].pages), (32, 5));
        sim::trap(&mut s, 40, 1, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn simulated_streams() {
        sim::check_score();
    }
}
