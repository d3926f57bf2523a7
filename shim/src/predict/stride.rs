//! `stride`: runs and strides in each thread's fault stream, prefetched through a window
//! that grows on hits and shrinks on waste.
//!
//! Each thread that traps gets a stream (at most [`MAX_STREAMS`], least recently used
//! replaced). A stream remembers the last [`DELTAS`] deltas between its traps and, like
//! Leap (USENIX ATC 2020), looks for a majority delta: first among the last
//! [`SHORT_DELTAS`], then among all of them. A majority delta of at most [`MAX_STRIDE`]
//! pages is the stream's stride, and the stream then proposes the next `window` pages
//! along it (one run for stride 1 or -1, single pages otherwise).
//!
//! Prefetched pages never trap, so once a stream is predicted right the next trap is the
//! first page past what it proposed (the program caught up with the window): as in Linux
//! readahead that is a hit, the window doubles (up to [`MAX_WINDOW`]) and the stream
//! proposes further ahead. A trap elsewhere is a miss: the window halves and the stream
//! looks for a majority again. At each epoch start the stream finds how far the program
//! got in what was proposed (the last proposed page in `written`), continues from there,
//! counts the proposed pages that were not written (waste) and halves the window when
//! more than [`WASTE_SHRINK`] of them were. The window is also capped by the
//! square-root rule [`window_cap`]: a window of `W` pages wastes about `W/2` pages when
//! the epoch ends in the middle of it and costs one trap per `W` pages written, so for a
//! stream that writes `N` pages an epoch the cheapest window is `sqrt(2 * N * T)`, `T`
//! being the cost of a trap in page copies ([`TRAP_COPIES`]).
//!
//! A guess's confidence is the fraction of the stream's proposed pages that were written
//! (decayed counts), starting from the fraction earned by all streams.
//!
//! Memory: [`MAX_STREAMS`] streams of fixed size plus a log of at most [`MAX_SPANS`]
//! proposed runs per epoch (to count their hits at the epoch's end): a few tens of KiB.
//! `on_fault` is O([`MAX_STREAMS`] + [`DELTAS`]) plus one guess per page it proposes
//! (one per run for stride 1); `new_epoch` is O(streams * log(written)) for unit strides.

use super::{FaultNote, Feedback, Guess, Kind, PageNo, Params, Predictor};

/// Thread streams kept: more threads than this writing at once in patterns is rare, and a
/// stream costs a few hundred bytes.
pub const MAX_STREAMS: usize = 64;
/// Deltas remembered per stream: Leap looks at the last 8 to 32.
pub const DELTAS: usize = 32;
/// The short history looked at first, so that a new trend wins quickly.
pub const SHORT_DELTAS: usize = 8;
/// A majority needs at least this many votes (2 agreeing deltas are a coincidence too
/// often in random streams).
pub const MIN_VOTES: usize = 3;
/// Larger deltas are jumps, not strides: proposing single pages further apart than this
/// rarely pays.
pub const MAX_STRIDE: i64 = 64;
/// A new stream's window, in strides (Linux readahead starts small too).
pub const INITIAL_WINDOW: u32 = 16;
/// The window never shrinks below this.
pub const MIN_WINDOW: u32 = 4;
/// The window never grows beyond this (4 MiB of unit-stride pages: enough for a sweep,
/// and a bound on one mistake's cost).
pub const MAX_WINDOW: u32 = 1024;
/// A trap costs about this many background page copies (17 us against 0.9 us, see the
/// design notes): the window cap balances one against the other.
pub const TRAP_COPIES: f32 = 19.0;
/// Halve a stream's window when more than this fraction of the pages it proposed in an
/// epoch were not written.
pub const WASTE_SHRINK: f32 = 0.25;
/// Per-epoch decay of the hit counts behind a stream's confidence: about the last 4
/// epochs count.
pub const KEEP: f32 = 0.75;
/// Proposed runs logged per epoch for the waste count (one per trap that starts or
/// extends a run; a sweep logs one per window).
pub const MAX_SPANS: usize = 4096;
/// A stream that proposed nothing that was written and did not trap for this many epochs
/// forgets its stride.
pub const IDLE_EPOCHS: u8 = 2;
/// Guesses below this confidence are not proposed at all.
pub const FLOOR: f32 = 0.05;
/// Pseudo-pages of the all-streams hit rate in a stream's confidence.
const PRIOR_PAGES: f32 = 8.0;
/// Strides before a stream's last trap looked at to tell a sweep whose pages in
/// between were prefetched by someone else from a true stride.
const DENSE_STRIDES: usize = 4;
/// A trap at most this many strides past the window's end is still the stream going on.
const TOLERANCE: i64 = 4;

/// The cheapest window for a stream that writes `pages_per_epoch` pages an epoch.
pub fn window_cap(pages_per_epoch: f32) -> u32 {
    let w = (2.0 * pages_per_epoch.max(0.0) * TRAP_COPIES).sqrt();
    (w as u32).clamp(MIN_WINDOW, MAX_WINDOW)
}

/// Per-thread slots, least recently used replaced: the thread tables of `stride` and
/// `markov`.
pub(super) struct PerThread<T> {
    slots: Vec<(u32, u64, T)>,
    clock: u64,
    cap: usize,
}

impl<T: Default> PerThread<T> {
    pub(super) fn new(cap: usize) -> Self {
        PerThread {
            slots: Vec::with_capacity(cap),
            clock: 0,
            cap,
        }
    }

    /// The slot of `tid` (a fresh default one if it had none) and its index.
    pub(super) fn get(&mut self, tid: u32) -> (usize, &mut T) {
        self.clock += 1;
        let i = match self.slots.iter().position(|s| s.0 == tid) {
            Some(i) => i,
            None if self.slots.len() < self.cap => {
                self.slots.push((tid, 0, T::default()));
                self.slots.len() - 1
            }
            None => {
                let i = (0..self.slots.len())
                    .min_by_key(|&i| self.slots[i].1)
                    .unwrap_or(0);
                self.slots[i] = (tid, 0, T::default());
                i
            }
        };
        self.slots[i].1 = self.clock;
        (i, &mut self.slots[i].2)
    }

    pub(super) fn at(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i).map(|s| &mut s.2)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().map(|s| &mut s.2)
    }
}

/// Pages `first + i*stride` for `i` in `0..n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    first: PageNo,
    n: u32,
    stride: i64,
}

impl Span {
    fn page(&self, i: u32) -> Option<PageNo> {
        let p = self.first as i64 + i as i64 * self.stride;
        (p >= 0).then_some(p as PageNo)
    }

    /// How many of the span's pages are in `written` (sorted).
    fn written(&self, written: &[PageNo]) -> u32 {
        if self.n == 0 {
            return 0;
        }
        if self.stride.abs() == 1 {
            let (lo, hi) = self.bounds();
            let a = written.partition_point(|&p| p < lo);
            let b = written.partition_point(|&p| p <= hi);
            return (b - a) as u32;
        }
        (0..self.n)
            .filter_map(|i| self.page(i))
            .filter(|p| written.binary_search(p).is_ok())
            .count() as u32
    }

    /// The lowest and highest page.
    fn bounds(&self) -> (PageNo, PageNo) {
        let last = self.page(self.n - 1).unwrap_or(0);
        (self.first.min(last), self.first.max(last))
    }

    /// The index of the last page along the stride that is in `written`.
    fn last_written(&self, written: &[PageNo]) -> Option<u32> {
        if self.n == 0 {
            return None;
        }
        if self.stride.abs() == 1 {
            let (lo, hi) = self.bounds();
            if self.stride > 0 {
                let b = written.partition_point(|&p| p <= hi);
                return (b > 0 && written[b - 1] >= lo).then(|| (written[b - 1] - lo) as u32);
            }
            let a = written.partition_point(|&p| p < lo);
            return (a < written.len() && written[a] <= hi).then(|| (hi - written[a]) as u32);
        }
        (0..self.n).rev().find(|&i| {
            self.page(i)
                .is_some_and(|p| written.binary_search(&p).is_ok())
        })
    }

    fn push(&self, confidence: f32, out: &mut Vec<Guess>) {
        let by = Kind::Stride.bit();
        if self.n == 0 {
            return;
        }
        if self.stride.abs() == 1 {
            let (lo, _) = self.bounds();
            out.push(Guess {
                page: lo,
                pages: self.n,
                confidence,
                by,
            });
            return;
        }
        for i in 0..self.n {
            if let Some(page) = self.page(i) {
                out.push(Guess {
                    page,
                    pages: 1,
                    confidence,
                    by,
                });
            }
        }
    }
}

#[derive(Default)]
struct Stream {
    /// The last trapped page, if any.
    last: Option<PageNo>,
    deltas: [i64; DELTAS],
    n_deltas: usize,
    head: usize,
    /// The detected stride, 0 for none.
    stride: i64,
    window: u32,
    /// The run proposed since the last miss (or epoch start).
    span: Span,
    /// Decayed counts of proposed pages and of those written.
    issued: f32,
    hits: f32,
    /// This epoch: traps, proposed pages, written proposed pages.
    ep_traps: u32,
    ep_issued: u32,
    ep_hits: u32,
    /// Pages the stream writes per epoch (decayed), 0 before the first epoch end.
    rate: f32,
    idle: u8,
}

impl Stream {
    fn push_delta(&mut self, d: i64) {
        self.deltas[self.head] = d;
        self.head = (self.head + 1) % DELTAS;
        self.n_deltas = (self.n_deltas + 1).min(DELTAS);
    }

    /// The majority delta of the last `k` deltas, if there is one.
    fn majority_of(&self, k: usize) -> Option<i64> {
        let k = k.min(self.n_deltas);
        let recent = (1..=k).map(|i| self.deltas[(self.head + DELTAS - i) % DELTAS]);
        let (mut cand, mut votes) = (0i64, 0usize);
        for d in recent.clone() {
            if votes == 0 {
                cand = d;
                votes = 1;
            } else if d == cand {
                votes += 1;
            } else {
                votes -= 1;
            }
        }
        let count = recent.filter(|&d| d == cand).count();
        (count * 2 > k && count >= MIN_VOTES && cand != 0 && cand.abs() <= MAX_STRIDE)
            .then_some(cand)
    }

    fn majority(&self) -> Option<i64> {
        self.majority_of(SHORT_DELTAS)
            .or_else(|| self.majority_of(DELTAS))
    }

    fn cap(&self) -> u32 {
        if self.rate > 0.0 {
            window_cap(self.rate)
        } else {
            MAX_WINDOW
        }
    }

    fn confidence(&self, prior: f32) -> f32 {
        (self.hits + PRIOR_PAGES * prior) / (self.issued + PRIOR_PAGES)
    }

    /// Starts the stream's next run, a window along its stride from the trap at `p`
    /// whose fault-around run ended at `end` (see [`beyond`]), and proposes it, unless
    /// it would start below page 0 or confidence `c` is under [`FLOOR`].
    fn propose_past(&mut self, p: PageNo, end: PageNo, c: f32, out: &mut Vec<Guess>) {
        let first = beyond(p, end, self.stride);
        if first >= 0 && c >= FLOOR {
            self.span = Span {
                first: first as PageNo,
                n: self.window,
                stride: self.stride,
            };
            self.span.push(c, out);
        }
    }
}

pub struct Stride {
    streams: PerThread<Stream>,
    /// Runs proposed this epoch and closed (the stream moved on), by stream index.
    spans: Vec<(usize, Span)>,
    /// Decayed counts over all streams: the confidence of a new stream.
    issued: f32,
    hits: f32,
    /// Scratch for the plan: (stream index, confidence).
    order: Vec<(usize, f32)>,
}

impl Stride {
    pub fn new(_: &Params) -> Stride {
        Stride {
            streams: PerThread::new(MAX_STREAMS),
            spans: Vec::new(),
            issued: 0.0,
            hits: 0.0,
            order: Vec::new(),
        }
    }

    fn prior(&self) -> f32 {
        (self.hits + 1.0) / (self.issued + 2.0)
    }

    fn log_span(&mut self, i: usize) {
        if let Some(s) = self.streams.at(i) {
            let span = std::mem::take(&mut s.span);
            if span.n > 0 && self.spans.len() < MAX_SPANS {
                self.spans.push((i, span));
            }
        }
    }
}

impl Predictor for Stride {
    fn new_epoch(
        &mut self,
        written: &[PageNo],
        _: &Feedback,
        _: u64,
        max_pages: usize,
        plan: &mut Vec<Guess>,
    ) {
        // Count the hits of every run proposed in the epoch that ended.
        let mut spans = std::mem::take(&mut self.spans);
        for (i, span) in spans.drain(..) {
            if let Some(s) = self.streams.at(i) {
                s.ep_issued += span.n;
                s.ep_hits += span.written(written);
            }
        }
        self.spans = spans;
        self.issued *= KEEP;
        self.hits *= KEEP;
        let (mut all_issued, mut all_hits) = (0.0, 0.0);
        for s in self.streams.iter_mut() {
            let span = std::mem::take(&mut s.span);
            s.ep_issued += span.n;
            s.ep_hits += span.written(written);
            s.issued = s.issued * KEEP + s.ep_issued as f32;
            s.hits = s.hits * KEEP + s.ep_hits as f32;
            all_issued += s.ep_issued as f32;
            all_hits += s.ep_hits as f32;
            let pages = (s.ep_hits + s.ep_traps) as f32;
            s.rate = if s.rate > 0.0 {
                0.5 * (s.rate + pages)
            } else {
                pages
            };
            if s.ep_issued > 0 {
                let waste = (s.ep_issued - s.ep_hits) as f32 / s.ep_issued as f32;
                if waste > WASTE_SHRINK {
                    s.window = (s.window / 2).max(MIN_WINDOW);
                }
            }
            s.window = s.window.min(s.cap());
            let active = s.ep_hits > 0 || s.ep_traps > 0;
            s.idle = if active { 0 } else { s.idle.saturating_add(1) };
            if s.idle >= IDLE_EPOCHS {
                s.stride = 0;
            }
            // Where the program got to in the run: go on from there.
            s.span = Span::default();
            let mut span = span;
            if let (true, Some(last)) = (s.stride.abs() > 1, s.last) {
                // Were the pages between the strides before the last trap written too
                // (prefetched by someone else, so they never trapped)? Then the stream
                // is a sweep: go on from the last trap one page at a time.
                let gap = s.stride.unsigned_abs() as usize;
                let (lo, hi) = if s.stride > 0 {
                    (last.saturating_sub(DENSE_STRIDES * gap - 1), last)
                } else {
                    (last, last.saturating_add(DENSE_STRIDES * gap - 1))
                };
                let a = written.partition_point(|&p| p < lo);
                let b = written.partition_point(|&p| p <= hi);
                if (b - a) * 2 > hi - lo + 1 {
                    s.stride = s.stride.signum();
                    for _ in 0..MIN_VOTES {
                        s.push_delta(s.stride);
                    }
                    span = Span {
                        first: last,
                        n: (s.window.max(MIN_WINDOW) as usize * gap).min(MAX_WINDOW as usize)
                            as u32,
                        stride: s.stride,
                    };
                }
            }
            if s.stride != 0 {
                // The page after the last written one of the run, or the run's start if
                // the program trapped just before it and the epoch ended.
                let next = match span.last_written(written) {
                    Some(k) => span.page(k).and_then(|p| {
                        s.last = Some(p);
                        let q = p as i64 + s.stride;
                        (q >= 0).then_some(q as PageNo)
                    }),
                    None if s.ep_traps > 0 && span.n > 0 => Some(span.first),
                    None => None,
                };
                if let Some(first) = next {
                    s.span = Span {
                        first,
                        n: s.window.max(MIN_WINDOW),
                        stride: s.stride,
                    };
                }
            }
            s.ep_traps = 0;
            s.ep_issued = 0;
            s.ep_hits = 0;
        }
        self.issued += all_issued;
        self.hits += all_hits;

        // The plan: every going stream's next window, most confident first.
        let prior = self.prior();
        self.order.clear();
        for (i, s) in self.streams.iter_mut().enumerate() {
            if s.span.n > 0 {
                let c = s.confidence(prior);
                if c >= FLOOR {
                    self.order.push((i, c));
                } else {
                    s.span = Span::default();
                }
            }
        }
        self.order
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut budget = max_pages;
        for k in 0..self.order.len() {
            let (i, c) = self.order[k];
            if let Some(s) = self.streams.at(i) {
                s.span.n = s.span.n.min(budget.min(u32::MAX as usize) as u32);
                budget -= s.span.n as usize;
                s.span.push(c, plan);
            }
        }
    }

    fn on_fault(&mut self, fault: FaultNote, out: &mut Vec<Guess>) {
        let prior = self.prior();
        let p = fault.page;
        // Where the trap's fault-around run ended: a stream moving up continues past it
        // (the run is saved already), and its next delta is measured from there.
        let end = fault.last_page();
        let (i, s) = self.streams.get(fault.tid);
        s.ep_traps += 1;
        s.idle = 0;
        // On track: the trap is in the proposed run or just past its end.
        let span = s.span;
        if s.stride != 0 && span.n > 0 {
            let off = p as i64 - span.first as i64;
            if off % s.stride == 0 {
                let k = off / s.stride;
                if (0..span.n as i64 + TOLERANCE).contains(&k) {
                    s.push_delta(s.stride);
                    s.last = Some(end);
                    let c = s.confidence(prior);
                    if k < span.n as i64 {
                        // A trap inside the run (its copy was late or skipped): make
                        // sure the run reaches a window past the trap.
                        let from = span.n;
                        let to = (k + 1 + s.window as i64).min(u32::MAX as i64) as u32;
                        if to > from && c >= FLOOR && span.page(to - 1).is_some() {
                            let ext = Span {
                                first: span.page(from).unwrap_or(0),
                                n: to - from,
                                stride: s.stride,
                            };
                            s.span.n = to;
                            ext.push(c, out);
                        }
                        return;
                    }
                    // The program used the whole window: grow it, and go on past the
                    // trap.
                    s.window = (s.window * 2).min(s.cap()).max(MIN_WINDOW);
                    self.log_span(i);
                    let Some(s) = self.streams.at(i) else { return };
                    s.propose_past(p, end, c, out);
                    return;
                }
            }
        }
        // A miss: forget the run, shrink the window, look for a trend.
        if let Some(last) = s.last {
            s.push_delta(p as i64 - last as i64);
        }
        s.last = Some(end);
        let had_run = span.n > 0;
        if had_run {
            s.window = (s.window / 2).max(MIN_WINDOW);
        }
        let stride = s.majority();
        if had_run {
            self.log_span(i);
        }
        let Some(s) = self.streams.at(i) else { return };
        s.stride = stride.unwrap_or(0);
        if s.stride == 0 {
            return;
        }
        if s.window == 0 {
            s.window = INITIAL_WINDOW.min(s.cap());
        }
        let c = s.confidence(prior);
        s.propose_past(p, end, c, out);
    }
}

/// The first page a stream with `stride` proposes after a trap at `p` whose run ended
/// at `end`: past the run for an upward stream, a stride below the trap otherwise.
fn beyond(p: PageNo, end: PageNo, stride: i64) -> i64 {
    if stride > 0 {
        end as i64 + stride
    } else {
        p as i64 + stride
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim;
    use super::*;

    #[test]
    fn majority_needs_votes_and_a_small_stride() {
        let mut s = Stream::default();
        for d in [5, 1, 1] {
            s.push_delta(d);
        }
        assert_eq!(s.majority(), None, "2 votes are not enough");
        s.push_delta(1);
        assert_eq!(s.majority(), Some(1));
        let mut s = Stream::default();
        for _ in 0..8 {
            s.push_delta(1000);
        }
        assert_eq!(s.majority(), None, "a jump is not a stride");
        let mut s = Stream::default();
        for d in [3, -2, 3, 7, 3, 9, 3, 3] {
            s.push_delta(d);
        }
        assert_eq!(s.majority(), Some(3));
    }

    #[test]
    fn window_cap_is_the_square_root_rule() {
        assert_eq!(window_cap(0.0), MIN_WINDOW);
        assert_eq!(window_cap(2000.0), 275);
        assert_eq!(window_cap(1e9), MAX_WINDOW);
    }

    #[test]
    fn a_sweep_grows_the_window() {
        let mut s = Stride::new(&Params::default());
        let mut out = Vec::new();
        for p in 100..104 {
            sim::trap(&mut s, p, 1, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let g = out[0];
        assert_eq!(
            (g.page, g.pages, g.by),
            (104, INITIAL_WINDOW, Kind::Stride.bit())
        );
        // The program reaches the end of the window: the window doubles.
        let next = 104 + INITIAL_WINDOW as usize;
        sim::trap(&mut s, next, 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].page, next + 1);
        assert_eq!(out[0].pages, 2 * INITIAL_WINDOW);
        // Another thread's random traps do not disturb it.
        for p in [7, 9000, 31, 77777] {
            sim::trap(&mut s, p, 2, &mut out);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_sweep_seen_through_fault_around_runs_is_a_unit_stride_past_the_runs() {
        // A sweeping writer whose traps each save a 64-page run: the traps are 64 pages
        // apart, but the writes between them are contiguous. Read as single pages, the
        // stream would look like a stride of 64 and propose one page per run.
        let mut s = Stride::new(&Params::default());
        let mut out = Vec::new();
        let run = 64;
        let note = |page| FaultNote {
            page,
            tid: 1,
            ns: 0,
            pages: run,
        };
        for k in 0..4 {
            out.clear();
            s.on_fault(note(1000 + k * run as usize), &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let g = out[0];
        let last_run_end = 1000 + 4 * run as usize;
        assert_eq!((g.page, g.pages), (last_run_end, INITIAL_WINDOW));
        // The program reaches the end of the window and traps there, saving another
        // run: the window doubles and starts past that run.
        let next = last_run_end + INITIAL_WINDOW as usize;
        out.clear();
        s.on_fault(note(next), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            (out[0].page, out[0].pages),
            (next + run as usize, 2 * INITIAL_WINDOW)
        );
    }

    #[test]
    fn negative_strides_stop_at_page_zero() {
        let mut s = Stride::new(&Params::default());
        let mut out = Vec::new();
        for p in [40, 38, 36, 34] {
            sim::trap(&mut s, p, 1, &mut out);
        }
        let pages: Vec<_> = out.iter().map(|g| g.page).collect();
        assert_eq!(pages.len(), INITIAL_WINDOW as usize);
        assert_eq!(&pages[..3], &[32, 30, 28]);
        assert!(out.iter().all(|g| g.pages == 1));
        for p in [3, 2, 1, 0] {
            sim::trap(&mut s, p, 3, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn simulated_streams() {
        sim::check_stride();
    }
}
