//! The recorder's side of plans (`memshadow_format::store_plan`): after each version it
//! asks the process for its predictor's plan (`plan V`) and keeps, beside the version,
//! the runs at or above its own confidence threshold.
//!
//! **Its own audit sets the threshold.** The next version tells which planned pages
//! were written: the recorder fingerprints (CRC-32C) every page it records, so a planned
//! page whose fingerprint changed from one recorded version to the next was written, one
//! recorded again with the same bytes (a page copied ahead and never written is in a
//! delta all the same) or not recorded at all was not. Of the pages a plan kept, the
//! share written is its hit rate: under [`LOW_HIT_RATE`] the threshold rises by
//! [`STEP_UP`] (fewer, likelier pages: a follower puts fewer pages last for nothing),
//! over [`HIGH_HIT_RATE`] it falls by [`STEP_DOWN`] (more of the pages that will change
//! are put last), between [`MIN_THRESHOLD`] and [`MAX_THRESHOLD`]. The hit rate is kept
//! in the next plan object (`audited_hit_rate`).
//!
//! **Epochs the predictor does not plan** (a holder's: nothing traps there, so nothing
//! is predicted) get the recorder's own plan, from the exact deltas it records: a page
//! written in k of the last [`HISTORY_DELTAS`] deltas is planned with confidence
//! k / [`HISTORY_DELTAS`] (a frequency predictor over what the process measured). Its
//! audit is the next delta itself: under holders a delta lists exactly the pages written
//! (the shim's `PAGEMAP_SCAN`), so a planned page in it was written.
//!
//! Best effort: a version without a plan is a follower ordering by history, never a
//! reason to stop recording.

use std::collections::{HashMap, VecDeque};

use memshadow_format::store_plan::{PlanRun, StorePlan, MAX_PLAN_RUNS, NO_RATE};
use memshadow_store::{PageSource, SourceError, Store};

use crate::control_client::{self, Endpoint};

/// The first threshold, per mille.
pub const FIRST_THRESHOLD: u16 = 100;
pub const MIN_THRESHOLD: u16 = 20;
pub const MAX_THRESHOLD: u16 = 900;
pub const LOW_HIT_RATE: f64 = 0.25;
pub const HIGH_HIT_RATE: f64 = 0.5;
pub const STEP_UP: u16 = 50;
pub const STEP_DOWN: u16 = 25;
/// Most planned pages audited per version.
const MAX_AUDITED: usize = 1 << 20;
/// Deltas the recorder's own plan counts writes over.
pub const HISTORY_DELTAS: usize = 8;

/// What recording one version saw, for the plan keeper.
#[derive(Default)]
pub struct Seen {
    /// Whether to fingerprint the pages recorded.
    pub fingerprint: bool,
    /// (page address, CRC-32C of its bytes) of every page recorded, when fingerprinting.
    pub prints: Vec<(u64, u32)>,
    /// The ranges the process listed as changed (address, bytes).
    pub changed: Vec<(u64, u64)>,
}

impl Seen {
    /// Ready for the next version.
    pub fn clear(&mut self, fingerprint: bool) {
        self.fingerprint = fingerprint;
        self.prints.clear();
        self.changed.clear();
    }
}

/// What the recorder keeps between versions for plans.
pub struct PlanKeeper {
    /// Per mille.
    pub threshold: u16,
    /// Whether the process plans at all (false once it said prediction is off).
    pub planning: bool,
    /// Whether the last reply held a plan: pages are fingerprinted only then (a holder's
    /// epochs have none, and their versions list every page: fingerprinting them would
    /// slow the recorder for nothing).
    planned: bool,
    /// Fingerprint of each page as last recorded.
    prints: HashMap<u64, u32>,
    /// The pages the last plan kept, to audit at the next version.
    pending: Vec<u64>,
    /// Whether `pending` is the recorder's own plan (audited by the next delta's list).
    pending_is_own: bool,
    /// The pages each of the last deltas listed, oldest first.
    history: VecDeque<Vec<u64>>,
    /// In how many of `history`'s deltas each page was listed.
    written_in: HashMap<u64, u8>,
}

impl Default for PlanKeeper {
    fn default() -> Self {
        PlanKeeper {
            threshold: FIRST_THRESHOLD,
            planning: true,
            planned: true,
            prints: HashMap::new(),
            pending: Vec::new(),
            pending_is_own: false,
            history: VecDeque::new(),
            written_in: HashMap::new(),
        }
    }
}

impl PlanKeeper {
    /// Whether to fingerprint the next version's pages.
    pub fn fingerprinting(&self) -> bool {
        self.planning && self.planned
    }
}

/// The threshold after an audit that found `rate` of the planned pages written.
pub fn adapt(threshold: u16, rate: f64) -> u16 {
    if rate < LOW_HIT_RATE {
        threshold.saturating_add(STEP_UP).min(MAX_THRESHOLD)
    } else if rate > HIGH_HIT_RATE {
        threshold.saturating_sub(STEP_DOWN).max(MIN_THRESHOLD)
    } else {
        threshold
    }
}

impl PlanKeeper {
    /// A version was recorded (`base`: every page of the version); `seen` is what its
    /// recording saw. Audits the last plan against it, then asks the process for the plan
    /// at `version` (or, where the process has none, makes one from the deltas) and
    /// stores it.
    /// `version` is the process's number of the version, `stored` the store's.
    pub fn after_version(
        &mut self,
        socket: &Endpoint,
        store: &Store,
        version: u64,
        stored: u64,
        base: bool,
        seen: &Seen,
    ) {
        if !self.planning {
            return;
        }
        let ps = u64::from(store.page_size());
        // A base lists every page: it says nothing of what was written.
        let listed: Option<Vec<u64>> = (!base).then(|| pages_of(&seen.changed, ps));
        let fresh: HashMap<u64, u32> = seen.prints.iter().copied().collect();
        let rate = if self.pending_is_own {
            self.audit_by_listing(listed.as_deref())
        } else {
            self.audit(&fresh, base)
        };
        if let Some(pages) = listed {
            self.remember(pages);
        }
        if base {
            self.prints = fresh;
        } else {
            self.prints.extend(fresh);
        }
        if let Some(r) = rate {
            self.threshold = adapt(self.threshold, r);
        }
        let Ok(reply) = control_client::plan(socket, version) else {
            return;
        };
        self.planned = !reply.runs.is_empty();
        if reply.planned_at == 0 {
            if reply.why.as_deref().is_some_and(|w| w.contains("off")) {
                self.planning = false;
                return;
            }
            let plan = self.own_plan(stored, ps, rate);
            self.pending = to_audit(&plan.runs, ps);
            self.pending_is_own = true;
            if !plan.runs.is_empty() {
                let _ = store.put_plan(&plan);
            }
            return;
        }
        self.pending_is_own = false;
        let ps = reply.page_size;
        let runs: Vec<PlanRun> = reply
            .runs
            .iter()
            .filter(|r| r.permille >= self.threshold)
            .take(MAX_PLAN_RUNS)
            .map(|r| PlanRun {
                addr: r.addr,
                pages: r.pages,
                confidence: r.permille,
            })
            .collect();
        self.pending = to_audit(&runs, ps);
        let plan = StorePlan {
            page_size: u32::try_from(ps).unwrap_or(0),
            version: stored,
            planned_at: reply.planned_at + (stored - version),
            threshold: self.threshold,
            audited_hit_rate: rate.map_or(NO_RATE, |r| (r * 1000.0).round() as u16),
            cut: u32::try_from(reply.cut).unwrap_or(u32::MAX),
            runs,
        };
        let _ = store.put_plan(&plan);
    }

    /// Keeps the pages a delta listed among the last [`HISTORY_DELTAS`].
    fn remember(&mut self, pages: Vec<u64>) {
        for &p in &pages {
            *self.written_in.entry(p).or_insert(0) += 1;
        }
        self.history.push_back(pages);
        while self.history.len() > HISTORY_DELTAS {
            for p in self
                .history
                .pop_front()
                .expect("longer than HISTORY_DELTAS")
            {
                if let Some(n) = self.written_in.get_mut(&p) {
                    *n -= 1;
                    if *n == 0 {
                        self.written_in.remove(&p);
                    }
                }
            }
        }
    }

    /// The recorder's own plan at `version`: the pages the last deltas listed, with
    /// confidence the share of [`HISTORY_DELTAS`] deltas that listed them, at or above
    /// the threshold; runs of neighbouring pages of equal confidence, best first.
    fn own_plan(&self, version: u64, ps: u64, rate: Option<f64>) -> StorePlan {
        let mut pages: Vec<(u64, u16)> = self
            .written_in
            .iter()
            .map(|(&p, &n)| (p, (u64::from(n) * 1000 / HISTORY_DELTAS as u64) as u16))
            .filter(|&(_, c)| c >= self.threshold)
            .collect();
        pages.sort_unstable();
        let mut runs: Vec<PlanRun> = Vec::new();
        for (addr, confidence) in pages {
            match runs.last_mut() {
                Some(r)
                    if r.confidence == confidence
                        && r.addr + u64::from(r.pages) * ps == addr
                        && r.pages < u32::MAX =>
                {
                    r.pages += 1
                }
                _ => runs.push(PlanRun {
                    addr,
                    pages: 1,
                    confidence,
                }),
            }
        }
        runs.sort_by(|a, b| b.confidence.cmp(&a.confidence).then(a.addr.cmp(&b.addr)));
        let cut = runs.len().saturating_sub(MAX_PLAN_RUNS);
        runs.truncate(MAX_PLAN_RUNS);
        StorePlan {
            page_size: u32::try_from(ps).unwrap_or(0),
            version,
            planned_at: version,
            threshold: self.threshold,
            audited_hit_rate: rate.map_or(NO_RATE, |r| (r * 1000.0).round() as u16),
            cut: u32::try_from(cut).unwrap_or(u32::MAX),
            runs,
        }
    }

    /// The share of the last (own) plan's pages that this version's delta listed; None
    /// for a base (it lists every page) or when nothing was planned.
    fn audit_by_listing(&mut self, listed: Option<&[u64]>) -> Option<f64> {
        let pending = std::mem::take(&mut self.pending);
        let listed: std::collections::HashSet<u64> = listed?.iter().copied().collect();
        if pending.is_empty() {
            return None;
        }
        let hits = pending.iter().filter(|p| listed.contains(p)).count();
        Some(hits as f64 / pending.len() as f64)
    }

    /// The share of the last plan's pages that `fresh` (this version's fingerprints)
    /// shows written; None when nothing could be judged.
    fn audit(&mut self, fresh: &HashMap<u64, u32>, base: bool) -> Option<f64> {
        let pending = std::mem::take(&mut self.pending);
        let (mut judged, mut hits) = (0u64, 0u64);
        for page in pending {
            let Some(&old) = self.prints.get(&page) else {
                continue;
            };
            match fresh.get(&page) {
                Some(&new) => {
                    judged += 1;
                    hits += u64::from(new != old);
                }
                // Not recorded in a delta: not written.
                None if !base => judged += 1,
                None => {}
            }
        }
        if judged == 0 {
            None
        } else {
            Some(hits as f64 / judged as f64)
        }
    }
}

/// The pages of a plan's runs that the next version audits (at most [`MAX_AUDITED`]).
fn to_audit(runs: &[PlanRun], ps: u64) -> Vec<u64> {
    runs.iter()
        .flat_map(|r| (0..u64::from(r.pages)).map(move |i| r.addr + i * ps))
        .take(MAX_AUDITED)
        .collect()
}

/// The addresses of the pages of `ranges` (address, bytes).
fn pages_of(ranges: &[(u64, u64)], ps: u64) -> Vec<u64> {
    ranges
        .iter()
        .flat_map(|&(a, len)| (0..len.div_ceil(ps)).map(move |i| a + i * ps))
        .collect()
}

/// A [`PageSource`] that fingerprints every page it gives.
pub struct Fingerprinting<'a> {
    pub inner: &'a mut dyn PageSource,
    pub page_size: u64,
    /// (page address, CRC-32C of its bytes); None: not fingerprinting.
    pub prints: Option<&'a mut Vec<(u64, u32)>>,
}

impl PageSource for Fingerprinting<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.inner.read(addr, buf)?;
        if let Some(prints) = self.prints.as_mut() {
            for (i, page) in buf.chunks(self.page_size as usize).enumerate() {
                prints.push((
                    addr + i as u64 * self.page_size,
                    memshadow_format::store::checksum(page),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_follows_the_audit_within_its_bounds() {
        assert_eq!(adapt(100, 0.1), 150);
        assert_eq!(adapt(100, 0.3), 100);
        assert_eq!(adapt(100, 0.9), 75);
        assert_eq!(adapt(MAX_THRESHOLD, 0.0), MAX_THRESHOLD);
        assert_eq!(adapt(MIN_THRESHOLD, 1.0), MIN_THRESHOLD);
    }

    #[test]
    fn the_own_plan_ranks_pages_by_how_many_recent_deltas_wrote_them() {
        let ps = 0x1000;
        let mut k = PlanKeeper {
            threshold: 250,
            ..PlanKeeper::default()
        };
        // 0x10000..0x12000 in every delta, 0x20000 in 2 of 8, 0x30000 in 1 (under the
        // threshold of 250 per mille), across 10 deltas (the first two fall out).
        for i in 0..10u64 {
            let mut pages = vec![0x10000, 0x11000];
            if i >= 8 {
                pages.push(0x20000);
            }
            if i == 9 {
                pages.push(0x30000);
            }
            if i < 2 {
                pages.push(0x40000);
            }
            k.remember(pages);
        }
        let plan = k.own_plan(12, ps, Some(0.5));
        assert_eq!(
            plan.runs,
            vec![
                PlanRun {
                    addr: 0x10000,
                    pages: 2,
                    confidence: 1000
                },
                PlanRun {
                    addr: 0x20000,
                    pages: 1,
                    confidence: 250
                },
            ]
        );
        assert_eq!(
            (plan.version, plan.planned_at, plan.audited_hit_rate),
            (12, 12, 500)
        );
        assert!(
            !k.written_in.contains_key(&0x40000),
            "fell out of the history"
        );
        // Audited by the next delta's listing: one of the three planned pages written.
        k.pending = vec![0x10000, 0x11000, 0x20000];
        assert_eq!(
            k.audit_by_listing(Some(&[0x11000, 0x50000])),
            Some(1.0 / 3.0)
        );
        k.pending = vec![0x10000];
        assert_eq!(k.audit_by_listing(None), None, "a base lists every page");
    }

    #[test]
    fn the_audit_counts_planned_pages_whose_bytes_changed() {
        // 0x1000 rewritten with new bytes, 0x2000 recorded with the same bytes (copied
        // ahead, never written), 0x3000 not in the delta, 0x4000 never seen.
        let mut k = PlanKeeper {
            prints: [(0x1000, 1), (0x2000, 2), (0x3000, 3)]
                .into_iter()
                .collect(),
            pending: vec![0x1000, 0x2000, 0x3000, 0x4000],
            ..PlanKeeper::default()
        };
        let fresh: HashMap<u64, u32> = [(0x1000, 9), (0x2000, 2)].into_iter().collect();
        assert_eq!(k.audit(&fresh, false), Some(1.0 / 3.0));
        assert!(k.pending.is_empty());
        assert_eq!(k.audit(&fresh, false), None, "nothing planned");
    }
}
