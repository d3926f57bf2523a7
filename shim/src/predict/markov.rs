//! `markov`: a bounded successor table over page deltas, learnt from each thread's fault
//! stream (a Markov prefetcher in the manner of Joseph and Grunwald).
//!
//! The table maps a page to up to two successor deltas (the page written next after it
//! by the same thread) with saturating counts. It is direct mapped by a hash of the page
//! ([`TABLE`] entries); a colliding page takes an entry over only once the entry's counts
//! have worn down to at most one, so established links survive a flood of one-off ones.
//!
//! On a trap the predictor follows the chain of strongest successors from the trapped
//! page, up to [`CHAIN`] steps, and proposes each page with the product of the links'
//! confidences (stopping below [`FLOOR`]). A link's confidence is measured, not assumed:
//! links are grouped by their count (and whether they have a rival), every proposed link
//! is logged (at most [`PENDING`] per epoch), and at the next epoch start each logged
//! link is checked against `written`: its group's decayed (written, proposed) counts
//! give the confidence, and the link itself is strengthened or weakened. So a program
//! whose links never repeat (random writes) drives the confidence down to nothing.
//!
//! Learning. Prefetched pages never trap, so after a chain has been proposed the next
//! trap is usually the first page past the chain's end: the link learnt is then from the
//! chain's last confident page to the trap. A trap on a page of the chain itself (a
//! page proposed below the prefetcher's threshold) teaches nothing new; with no chain,
//! the link is from the previous trap.
//!
//! Memory: [`TABLE`] entries of 24 bytes (1.5 MiB, allocated at the first trap), a
//! per-thread record of the last chain for [`MAX_THREADS`] threads, and the
//! [`PENDING`]-link log. `on_fault` is O([`CHAIN`]); `new_epoch` is O(logged links *
//! log(written)). It proposes nothing at epoch start.

use super::stride::PerThread;
use super::{FaultNote, Feedback, Guess, Kind, PageNo, Params, Predictor};

/// Table entries: 64 Ki pages' successors (256 MiB of pages written in chains).
pub const TABLE: usize = 1 << 16;
/// Steps followed from a trap: one trap per 33 writes on a perfect chain.
pub const CHAIN: usize = 32;
/// Counts saturate here (a link seen 63 times is as good as certain).
pub const MAX_COUNT: u8 = 63;
/// Links checked per epoch (the rest are proposed unchecked).
pub const PENDING: usize = 8192;
/// Threads whose last chain is remembered.
pub const MAX_THREADS: usize = 64;
/// Chain pages below this confidence are not proposed.
pub const FLOOR: f32 = 0.05;
/// A chain page at or above this confidence is assumed prefetched (the prefetcher's
/// default threshold): the next link is learnt from the last such page.
pub const ANCHOR: f32 = 0.2;
/// Per-epoch decay of the link groups' counts.
pub const KEEP: f32 = 0.8;
/// The weight, in checked links, of a group's confidence before it has been checked
/// ([`prior`]).
const PRIOR_WEIGHT: f32 = 4.0;
/// Link groups: 8 count classes (1, 2-3, 4-7, ..., 64+... by log2), with and without a
/// rival successor.
const GROUPS: usize = 16;

#[derive(Clone, Copy)]
struct Entry {
    key: u64,
    delta: [i32; 2],
    count: [u8; 2],
}

const EMPTY: Entry = Entry {
    key: u64::MAX,
    delta: [0; 2],
    count: [0; 2],
};

#[derive(Default)]
struct Thread {
    last: Option<PageNo>,
    /// The chain proposed at the last trap, and how many of its pages were at or above
    /// [`ANCHOR`].
    chain: Vec<PageNo>,
    confident: usize,
}

#[derive(Clone, Copy)]
struct Link {
    from: PageNo,
    delta: i32,
    group: u8,
}

pub struct Markov {
    table: Vec<Entry>,
    threads: PerThread<Thread>,
    pending: Vec<Link>,
    written: [f32; GROUPS],
    proposed: [f32; GROUPS],
    confidence: [f32; GROUPS],
}

fn slot(page: PageNo) -> usize {
    ((page as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TABLE.trailing_zeros())) as usize
}

fn group(e: &Entry) -> u8 {
    let class = (8 - e.count[0].leading_zeros()).min(7) as u8;
    class + if e.count[1] > 0 { 8 } else { 0 }
}

/// A link group's confidence before any check: 1 - 2^-count for its count class (a link
/// seen once is a coin toss, one seen 4 times is 94% sure), 0.6 times that with a rival.
fn prior(group: usize) -> f32 {
    let class = (group % 8) as i32;
    let sure = 1.0 - 0.5f32.powi(class);
    if group >= 8 {
        0.6 * sure
    } else {
        sure
    }
}

fn add(page: PageNo, delta: i32) -> Option<PageNo> {
    let p = page as i64 + delta as i64;
    (p >= 0).then_some(p as PageNo)
}

impl Markov {
    pub fn new(_: &Params) -> Markov {
        Markov {
            table: Vec::new(),
            threads: PerThread::new(MAX_THREADS),
            pending: Vec::new(),
            written: [0.0; GROUPS],
            proposed: [0.0; GROUPS],
            confidence: std::array::from_fn(prior),
        }
    }

    fn entry(&mut self, page: PageNo) -> Option<&mut Entry> {
        let e = self.table.get_mut(slot(page))?;
        (e.key == page as u64).then_some(e)
    }

    /// Learns that `to` followed `from`.
    fn learn(&mut self, from: PageNo, to: PageNo) {
        let Ok(delta) = i32::try_from(to as i64 - from as i64) else {
            return;
        };
        if delta == 0 {
            return;
        }
        if self.table.is_empty() {
            self.table = vec![EMPTY; TABLE];
        }
        let e = &mut self.table[slot(from)];
        if e.key != from as u64 {
            if e.count[0] > 1 {
                // Wear the established entry down rather than replace it at once.
                e.count[0] -= 1;
                e.count[1] = e.count[1].saturating_sub(1);
                return;
            }
            *e = Entry {
                key: from as u64,
                delta: [delta, 0],
                count: [1, 0],
            };
            return;
        }
        if let Some(i) = (0..2).find(|&i| e.count[i] > 0 && e.delta[i] == delta) {
            e.count[i] = (e.count[i] + 1).min(MAX_COUNT);
        } else if e.count[0] == 0 {
            e.delta[0] = delta;
            e.count[0] = 1;
        } else if e.count[1] <= 1 {
            e.delta[1] = delta;
            e.count[1] = 1;
        } else {
            e.count[1] -= 1;
        }
        if e.count[1] > e.count[0] {
            e.delta.swap(0, 1);
            e.count.swap(0, 1);
        }
    }

    /// A checked link: strengthen it when it was right, weaken it when not.
    fn judge(&mut self, link: Link, right: bool) {
        let Some(e) = self.entry(link.from) else {
            return;
        };
        if let Some(i) = (0..2).find(|&i| e.count[i] > 0 && e.delta[i] == link.delta) {
            e.count[i] = if right {
                (e.count[i] + 1).min(MAX_COUNT)
            } else {
                e.count[i] - 1
            };
        }
        if e.count[1] > e.count[0] {
            e.delta.swap(0, 1);
            e.count.swap(0, 1);
        }
    }
}

impl Predictor for Markov {
    fn new_epoch(
        &mut self,
        written: &[PageNo],
        _: &Feedback,
        _: u64,
        _: usize,
        _: &mut Vec<Guess>,
    ) {
        for g in 0..GROUPS {
            self.written[g] *= KEEP;
            self.proposed[g] *= KEEP;
        }
        let pending = std::mem::take(&mut self.pending);
        for &link in &pending {
            let right =
                add(link.from, link.delta).is_some_and(|p| written.binary_search(&p).is_ok());
            self.proposed[link.group as usize] += 1.0;
            self.written[link.group as usize] += right as u8 as f32;
            self.judge(link, right);
        }
        self.pending = pending;
        self.pending.clear();
        for g in 0..GROUPS {
            self.confidence[g] =
                (self.written[g] + prior(g) * PRIOR_WEIGHT) / (self.proposed[g] + PRIOR_WEIGHT);
        }
        // Pages were protected again: a chain proposed in the last epoch is no reason
        // to skip learning now, but its end is still where the program was heading.
        for t in self.threads.iter_mut() {
            t.chain.clear();
        }
    }

    fn on_fault(&mut self, fault: FaultNote, out: &mut Vec<Guess>) {
        let p = fault.page;
        let (ti, t) = self.threads.get(fault.tid);
        let on_chain = t.chain.contains(&p);
        let from = if t.confident > 0 && !t.chain.is_empty() {
            Some(t.chain[t.confident.min(t.chain.len()) - 1])
        } else {
            t.last
        };
        t.last = Some(p);
        if !on_chain {
            if let Some(from) = from {
                self.learn(from, p);
            }
        }
        // Follow the chain.
        let Some(t) = self.threads.at(ti) else { return };
        let mut chain = std::mem::take(&mut t.chain);
        chain.clear();
        let mut confident = 0;
        let (mut cur, mut conf) = (p, 1.0f32);
        for _ in 0..CHAIN {
            let Some(e) = self.table.get(slot(cur)).filter(|e| e.key == cur as u64) else {
                break;
            };
            if e.count[0] == 0 {
                break;
            }
            let g = group(e);
            let delta = e.delta[0];
            conf *= self.confidence[g as usize];
            let Some(next) = add(cur, delta) else { break };
            if self.pending.len() < PENDING {
                self.pending.push(Link {
                    from: cur,
                    delta,
                    group: g,
                });
            }
            if conf < FLOOR || next == p || chain.contains(&next) {
                break;
            }
            out.push(Guess {
                page: next,
                pages: 1,
                confidence: conf,
                by: Kind::Markov.bit(),
            });
            chain.push(next);
            if conf >= ANCHOR {
                confident = chain.len();
            }
            cur = next;
        }
        if let Some(t) = self.threads.at(ti) {
            t.chain = chain;
            t.confident = confident;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim;
    use super::*;

    #[test]
    fn learns_a_chain_and_follows_it() {
        let mut m = Markov::new(&Params::default());
        let mut out = Vec::new();
        let chain = [500, 7, 90_000, 12, 3_000_000, 44];
        let mut written = chain.to_vec();
        written.sort_unstable();
        for _ in 0..2 {
            for &p in &chain {
                sim::trap(&mut m, p, 1, &mut out);
            }
            m.new_epoch(&written, &Feedback::default(), 0, 0, &mut Vec::new());
        }
        sim::trap(&mut m, 500, 1, &mut out);
        let pages: Vec<_> = out.iter().map(|g| g.page).collect();
        assert_eq!(&pages[..], &chain[1..], "{out:?}");
        assert!(out.windows(2).all(|w| w[0].confidence >= w[1].confidence));
        assert!(out
            .iter()
            .all(|g| g.pages == 1 && g.by == Kind::Markov.bit()));
    }

    #[test]
    fn wrong_links_lose_confidence() {
        let mut m = Markov::new(&Params::default());
        let mut out = Vec::new();
        // Random traps: each link seen once, never right.
        let mut rng = sim::Rng::new(3);
        for _ in 0..20 {
            for _ in 0..2000 {
                sim::trap(&mut m, rng.below(5000), 1, &mut out);
            }
            m.new_epoch(&[], &Feedback::default(), 0, 0, &mut Vec::new());
        }
        assert!(m.proposed.iter().sum::<f32>() > 1000.0);
        for g in 0..GROUPS {
            assert!(
                m.proposed[g] < 100.0 || m.confidence[g] < 0.05,
                "{:?}",
                m.confidence
            );
        }
    }

    #[test]
    fn simulated_streams() {
        sim::check_markov();
    }
}
