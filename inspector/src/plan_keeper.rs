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
//! Best effort: a version without a plan is a follower ordering by history, never a
//! reason to stop recording.

use std::collections::HashMap;

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
}

impl Default for PlanKeeper {
    fn default() -> Self {
        PlanKeeper {
            threshold: FIRST_THRESHOLD,
            planning: true,
            planned: true,
            prints: HashMap::new(),
            pending: Vec::new(),
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
    /// A version was recorded: `prints` are the fingerprints of the pages it recorded
    /// (`base`: every page of the version). Audits the last plan against them, then
    /// asks the process for the plan at `version` and stores it.
    pub fn after_version(
        &mut self,
        socket: &Endpoint,
        store: &Store,
        version: u64,
        base: bool,
        prints: &[(u64, u32)],
    ) {
        if !self.planning {
            return;
        }
        let fresh: HashMap<u64, u32> = prints.iter().copied().collect();
        let rate = self.audit(&fresh, base);
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
            }
            return;
        }
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
        self.pending = runs
            .iter()
            .flat_map(|r| (0..u64::from(r.pages)).map(move |i| r.addr + i * ps))
            .take(MAX_AUDITED)
            .collect();
        let plan = StorePlan {
            page_size: u32::try_from(ps).unwrap_or(0),
            version,
            planned_at: reply.planned_at,
            threshold: self.threshold,
            audited_hit_rate: rate.map_or(NO_RATE, |r| (r * 1000.0).round() as u16),
            cut: u32::try_from(reply.cut).unwrap_or(u32::MAX),
            runs,
        };
        let _ = store.put_plan(&plan);
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
