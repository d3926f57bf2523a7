//! The per-version *plan* object of a store: the pages the recorded process's predictor
//! expected to be written next when the recorder wrote that version, with their
//! confidence (the prefetcher's plan, asked of the shim with `plan V`, see
//! [`crate::control`]). A follower (`memshadow follow`) orders its first sync by the
//! newest plan: pages expected to stay cold first, those likely to change last.
//!
//! Named `plan/<version, 20 decimal digits>` ([`plan_name`]); written after the
//! version's manifest (the prefetcher plans once the snapshot's protect pass has ended),
//! so the newest version may have none yet; optional: stores written before plans
//! existed, programs recorded with `MEMSHADOW_PREDICT=off` and holder epochs have none.
//! A plan without its manifest is an orphan (`verify` lists it, retention removes it).
//!
//! Layout, little-endian, fixed-width integers:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MSHPLAN\0` ([`PLAN_MAGIC`]) |
//! | 8 | 4 | format version ([`PLAN_FORMAT`]) |
//! | 12 | 4 | page size |
//! | 16 | 8 | the version it is beside |
//! | 24 | 8 | the process's version the plan was made at (the epoch after it; at least the version) |
//! | 32 | 2 | the recorder's confidence threshold, per mille: runs below it were left out |
//! | 34 | 2 | hit rate of the version before's plan as the recorder audited it, per mille; `0xffff` none |
//! | 36 | 4 | runs the shim left out of its reply (its cap) |
//! | 40 | 4 | N, runs |
//! | 44 | 16 N | runs: address u64, pages u32, confidence per mille u16, reserved u16 (0) |
//! | 44 + 16 N | 4 | CRC-32C of every byte before |

use crate::store::{checksum, FormatError};

/// First eight bytes of a plan object.
pub const PLAN_MAGIC: [u8; 8] = *b"MSHPLAN\0";
/// The layout's version.
pub const PLAN_FORMAT: u32 = 1;
/// Folder of the plan objects.
pub const PLAN_DIR: &str = "plan";
/// Most runs a plan object holds.
pub const MAX_PLAN_RUNS: usize = 1 << 20;
/// "No audit" in [`StorePlan::audited_hit_rate`].
pub const NO_RATE: u16 = 0xffff;
const HEADER: usize = 44;
const RUN: usize = 16;
const WHAT: &str = "plan object";

/// Name of the plan object of `version`.
pub fn plan_name(version: u64) -> String {
    format!("{PLAN_DIR}/{version:020}")
}

/// The version a plan object's name stands for.
pub fn parse_plan_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PLAN_DIR)?.strip_prefix('/')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Pages the predictor expects written, with its confidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRun {
    pub addr: u64,
    pub pages: u32,
    /// Per mille (0..=1000).
    pub confidence: u16,
}

/// A plan object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorePlan {
    pub page_size: u32,
    pub version: u64,
    /// The process's version the prefetcher planned at.
    pub planned_at: u64,
    /// The recorder's threshold, per mille.
    pub threshold: u16,
    /// The recorder's audit of the version before's plan, per mille ([`NO_RATE`]: none).
    pub audited_hit_rate: u16,
    /// Runs the shim left out of its reply.
    pub cut: u32,
    /// Best first.
    pub runs: Vec<PlanRun>,
}

impl StorePlan {
    /// The object's bytes (at most [`MAX_PLAN_RUNS`] runs are written).
    pub fn encode(&self) -> Vec<u8> {
        let runs = &self.runs[..self.runs.len().min(MAX_PLAN_RUNS)];
        let mut b = Vec::with_capacity(HEADER + RUN * runs.len() + 4);
        b.extend_from_slice(&PLAN_MAGIC);
        b.extend_from_slice(&PLAN_FORMAT.to_le_bytes());
        b.extend_from_slice(&self.page_size.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.planned_at.to_le_bytes());
        b.extend_from_slice(&self.threshold.to_le_bytes());
        b.extend_from_slice(&self.audited_hit_rate.to_le_bytes());
        b.extend_from_slice(&self.cut.to_le_bytes());
        b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for r in runs {
            b.extend_from_slice(&r.addr.to_le_bytes());
            b.extend_from_slice(&r.pages.to_le_bytes());
            b.extend_from_slice(&r.confidence.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
        }
        let crc = checksum(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks and reads a plan object (`version` is the one its name says).
    pub fn decode(b: &[u8], version: u64) -> Result<StorePlan, FormatError> {
        if b.len() < HEADER + 4 {
            return Err(FormatError::Truncated(format!("{WHAT}: {} bytes", b.len())));
        }
        if b[..8] != PLAN_MAGIC {
            return Err(FormatError::BadMagic(WHAT));
        }
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let format = u32_at(8);
        if format != PLAN_FORMAT {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                found: format,
            });
        }
        let n = u32_at(40) as usize;
        if n > MAX_PLAN_RUNS || b.len() != HEADER + RUN * n + 4 {
            return Err(FormatError::Truncated(format!(
                "{WHAT}: {} bytes for {n} runs",
                b.len()
            )));
        }
        let end = HEADER + RUN * n;
        if checksum(&b[..end]) != u32_at(end) {
            return Err(FormatError::Checksum(WHAT.into()));
        }
        let plan = StorePlan {
            page_size: u32_at(12),
            version: u64_at(16),
            planned_at: u64_at(24),
            threshold: u16_at(32),
            audited_hit_rate: u16_at(34),
            cut: u32_at(36),
            runs: (0..n)
                .map(|i| {
                    let o = HEADER + RUN * i;
                    PlanRun {
                        addr: u64_at(o),
                        pages: u32_at(o + 8),
                        confidence: u16_at(o + 12),
                    }
                })
                .collect(),
        };
        if plan.version != version {
            return Err(FormatError::Corrupt(format!(
                "{WHAT} of version {version} says version {}",
                plan.version
            )));
        }
        if plan.page_size == 0 || !plan.page_size.is_power_of_two() {
            return Err(FormatError::Corrupt(format!(
                "{WHAT}: page size {}",
                plan.page_size
            )));
        }
        if let Some(r) = plan
            .runs
            .iter()
            .find(|r| r.confidence > 1000 || r.pages == 0)
        {
            return Err(FormatError::Corrupt(format!(
                "{WHAT}: run at {:#x} of {} pages at {} per mille",
                r.addr, r.pages, r.confidence
            )));
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let plan = StorePlan {
            page_size: 4096,
            version: 7,
            planned_at: 8,
            threshold: 100,
            audited_hit_rate: NO_RATE,
            cut: 3,
            runs: vec![
                PlanRun {
                    addr: 0x5000,
                    pages: 4,
                    confidence: 900,
                },
                PlanRun {
                    addr: 0x1_0000,
                    pages: 1,
                    confidence: 120,
                },
            ],
        };
        let b = plan.encode();
        assert_eq!(StorePlan::decode(&b, 7).unwrap(), plan);
        assert!(matches!(
            StorePlan::decode(&b, 8),
            Err(FormatError::Corrupt(_))
        ));
        for at in [0, 9, 20, 41, 50, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            assert!(StorePlan::decode(&bad, 7).is_err(), "flip at {at}");
        }
        assert!(StorePlan::decode(&b[..b.len() - 1], 7).is_err());
        assert_eq!(plan_name(7), "plan/00000000000000000007");
        assert_eq!(parse_plan_name(&plan_name(7)), Some(7));
        assert_eq!(parse_plan_name("plan/7"), None);
    }
}
