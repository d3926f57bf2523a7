//! Predictors: which pages the program is about to write in this epoch.
//!
//! The prefetch thread (`prefetch`) asks a [`Predictor`] for a plan at each epoch start,
//! hands it every trap the fault thread reports during the epoch, and tells it at the
//! next epoch start which pages were written and how its guesses fared. Predictors are
//! plain data structures: no syscalls, no locks, no shared state, so they are tested on
//! synthetic fault streams (see the tests of each module). They run on the prefetch
//! thread and allocate only from the shim's own arena (the global allocator), never
//! while the engine lock is held.
//!
//! One module per predictor, all behind [`Predictor`]:
//! - `history`: pages written in recent epochs, weighted by how often;
//! - `stride`: runs and strides in each thread's fault stream;
//! - `markov`: a bounded successor table over page deltas;
//! - `score`: per-segment priority from access rate, change rate and recency;
//! - `auto`: all four, each weighted by the hit rate it has earned;
//! - `sim` (tests only): the prefetcher simulated over synthetic write streams, and the
//!   hit and waste bounds each predictor is held to.

pub mod auto;
pub mod history;
pub mod markov;
pub mod score;
#[cfg(test)]
mod sim;
pub mod stride;

/// A page number: a page's address shifted right by 12.
pub type PageNo = usize;

/// The predictors, as bits of [`Guess::by`] and indices of the feedback arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    History = 0,
    Stride = 1,
    Markov = 2,
    Score = 3,
}

/// How many kinds of predictor there are.
pub const KINDS: usize = 4;

impl Kind {
    pub const ALL: [Kind; KINDS] = [Kind::History, Kind::Stride, Kind::Markov, Kind::Score];

    /// This kind's bit in [`Guess::by`].
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::History => "history",
            Kind::Stride => "stride",
            Kind::Markov => "markov",
            Kind::Score => "score",
        }
    }
}

/// `MEMSHADOW_PREDICT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Only(Kind),
    Off,
}

/// Settings the predictors read (from the configuration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// `score`'s segment size in pages (MEMSHADOW_SEGMENT_KB / 4).
    pub segment_pages: usize,
    /// `score`'s weights: priority = baseline + alpha*access_rate + beta*change_rate
    /// - gamma*time_since_last_access.
    pub alpha: f32,
    pub beta: f32,
    pub gamma: f32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            segment_pages: 16,
            alpha: 1.0,
            beta: 1.0,
            gamma: 0.5,
        }
    }
}

/// A trap the fault thread handed over: the page written, the writing thread, when, and
/// how many pages from `page` on the trap saved and unprotected (its fault-around run,
/// at least 1): the program writes those without trapping again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultNote {
    pub page: PageNo,
    pub tid: u32,
    pub ns: u64,
    pub pages: u32,
}

impl FaultNote {
    /// The last page the trap saved.
    pub fn last_page(&self) -> PageNo {
        self.page + self.pages.max(1) as PageNo - 1
    }
}

/// A guess: the `pages` pages from `page` on will be written in this epoch, with
/// probability `confidence` (0 to 1), proposed by the predictors in `by` (bits of
/// [`Kind`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guess {
    pub page: PageNo,
    pub pages: u32,
    pub confidence: f32,
    pub by: u8,
}

/// How each predictor's prefetched pages fared in one epoch, indexed by [`Kind`]: hits
/// were written in their epoch, waste was not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Feedback {
    pub hits: [u64; KINDS],
    pub waste: [u64; KINDS],
}

pub trait Predictor: Send {
    /// A new epoch starts at `now_ns`. `written` lists the pages known to have been
    /// written in the epoch that just ended (sorted, unique: the pages that trapped and
    /// the prefetched pages found changed), `feedback` how the guesses that were
    /// prefetched in it fared. Push the plan for the new epoch into `plan`, best first,
    /// at most about `max_pages` pages in all; the prefetcher copies the guesses at or
    /// above its confidence threshold, within its budget.
    fn new_epoch(
        &mut self,
        written: &[PageNo],
        feedback: &Feedback,
        now_ns: u64,
        max_pages: usize,
        plan: &mut Vec<Guess>,
    );

    /// A trap during the epoch: push guesses of the pages about to be written, ahead of
    /// the program (usually a few runs; nothing when it has no idea).
    fn on_fault(&mut self, fault: FaultNote, out: &mut Vec<Guess>);
}

/// Sorts `guesses` best first (ties by address) and pushes them into `out` until they
/// hold `max_pages` pages, the last one cut to fit.
pub fn push_best_first(guesses: &mut [Guess], max_pages: usize, out: &mut Vec<Guess>) {
    guesses.sort_unstable_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then(a.page.cmp(&b.page))
    });
    let mut budget = max_pages;
    for g in guesses.iter() {
        if budget == 0 {
            break;
        }
        let pages = g.pages.min(budget.min(u32::MAX as usize) as u32);
        budget -= pages as usize;
        out.push(Guess { pages, ..*g });
    }
}

/// The predictor `MEMSHADOW_PREDICT` chose, or `None` for `off`.
pub fn make(choice: Choice, params: &Params) -> Option<Box<dyn Predictor>> {
    Some(match choice {
        Choice::Off => return None,
        Choice::Auto => Box::new(auto::Auto::new(params)),
        Choice::Only(Kind::History) => Box::new(history::History::new(params)),
        Choice::Only(Kind::Stride) => Box::new(stride::Stride::new(params)),
        Choice::Only(Kind::Markov) => Box::new(markov::Markov::new(params)),
        Choice::Only(Kind::Score) => Box::new(score::Score::new(params)),
    })
}
