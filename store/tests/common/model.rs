//! A model process for the store's tests: regions that appear, move and go, pages
//! written with zeroes, compressible patterns, random bytes and small edits. Every step
//! is a function of (seed, version), so a test can replay what a writer it killed had
//! recorded.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use memshadow_store::{PageSource, SourceError, VersionInfo};

pub const PAGE: u64 = 4096;
const SLOT_BASE: u64 = 0x7f00_0000_0000;
const SLOT_SIZE: u64 = 0x100_0000;
const SLOTS: u64 = 8;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The memory of a model process.
#[derive(Clone, Default)]
pub struct Model {
    /// (start, len), sorted.
    pub regions: Vec<(u64, u64)>,
    /// Page address -> bytes; pages of the regions only (absent = zero).
    pub pages: BTreeMap<u64, Vec<u8>>,
    /// Pages written (or mapped) since the last [`take_changed`](Self::take_changed).
    pub dirty: BTreeSet<u64>,
    /// Largest region, pages.
    pub max_pages: u64,
    pub writes_per_step: u64,
}

impl Model {
    pub fn new() -> Model {
        Model {
            max_pages: 48,
            writes_per_step: 24,
            ..Model::default()
        }
    }

    fn slot_free(&self, slot: u64) -> bool {
        let s = SLOT_BASE + slot * SLOT_SIZE;
        !self.regions.iter().any(|r| r.0 >= s && r.0 < s + SLOT_SIZE)
    }

    fn map(&mut self, rng: &mut Rng, content: Option<Vec<Vec<u8>>>) {
        let free: Vec<u64> = (0..SLOTS).filter(|&s| self.slot_free(s)).collect();
        if free.is_empty() {
            return;
        }
        let slot = free[rng.below(free.len() as u64) as usize];
        let start = SLOT_BASE + slot * SLOT_SIZE + rng.below(16) * PAGE;
        let pages = content
            .as_ref()
            .map_or_else(|| 1 + rng.below(self.max_pages), |c| c.len() as u64);
        self.regions.push((start, pages * PAGE));
        self.regions.sort_unstable();
        for i in 0..pages {
            let a = start + i * PAGE;
            self.dirty.insert(a);
            match &content {
                Some(c) => {
                    self.pages.insert(a, c[i as usize].clone());
                }
                None => {
                    self.pages.remove(&a);
                }
            }
        }
    }

    fn unmap(&mut self, i: usize) -> Vec<Vec<u8>> {
        let (start, len) = self.regions.remove(i);
        (0..len / PAGE)
            .map(|k| {
                let a = start + k * PAGE;
                self.dirty.remove(&a);
                self.pages
                    .remove(&a)
                    .unwrap_or_else(|| vec![0; PAGE as usize])
            })
            .collect()
    }

    fn content(rng: &mut Rng, old: Option<&Vec<u8>>) -> Vec<u8> {
        match rng.below(5) {
            0 => vec![0; PAGE as usize],
            1 => {
                let b = rng.next() as u8;
                (0..PAGE as usize)
                    .map(|i| {
                        if i % 32 < 4 {
                            b.wrapping_add(i as u8)
                        } else {
                            0
                        }
                    })
                    .collect()
            }
            2 => (0..PAGE / 8)
                .flat_map(|_| rng.next().to_le_bytes())
                .collect(),
            _ => {
                let mut p = old.cloned().unwrap_or_else(|| vec![0; PAGE as usize]);
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(PAGE) as usize;
                    p[at] = rng.next() as u8;
                }
                p
            }
        }
    }

    /// Changes the memory as step `version` of run `seed` does.
    pub fn step(&mut self, seed: u64, version: u64) {
        let mut rng = Rng::new(seed.wrapping_mul(0x1000_0000_01b3) ^ version);
        if self.regions.is_empty() || (self.regions.len() < 5 && rng.chance(15)) {
            self.map(&mut rng, None);
        }
        if self.regions.len() > 1 && rng.chance(8) {
            let i = rng.below(self.regions.len() as u64) as usize;
            self.unmap(i);
        }
        if self.regions.len() > 1 && rng.chance(6) {
            // Moved: the same bytes at a new address.
            let i = rng.below(self.regions.len() as u64) as usize;
            let content = self.unmap(i);
            self.map(&mut rng, Some(content));
        }
        let total: u64 = self.regions.iter().map(|r| r.1 / PAGE).sum();
        for _ in 0..1 + rng.below(self.writes_per_step) {
            let mut k = rng.below(total);
            let addr = self
                .regions
                .iter()
                .find_map(|&(s, l)| {
                    if k < l / PAGE {
                        Some(s + k * PAGE)
                    } else {
                        k -= l / PAGE;
                        None
                    }
                })
                .expect("in a region");
            let p = Self::content(&mut rng, self.pages.get(&addr));
            self.pages.insert(addr, p);
            self.dirty.insert(addr);
        }
    }

    /// The dirty pages as (addr, len) ranges, and forgets them.
    pub fn take_changed(&mut self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &a in &self.dirty {
            match out.last_mut() {
                Some(r) if r.0 + r.1 == a => r.1 += PAGE,
                _ => out.push((a, PAGE)),
            }
        }
        self.dirty.clear();
        out
    }

    pub fn info(&self, version: u64) -> VersionInfo {
        VersionInfo {
            version,
            time_ms: 1_000_000 + version * 1000,
            pid: 4242,
            regions: self.regions.clone(),
            crash_signal: 0,
        }
    }

    pub fn bytes(&self, addr: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        let first = addr - addr % PAGE;
        let mut a = first;
        while a < addr + len {
            if let Some(p) = self.pages.get(&a) {
                for i in 0..PAGE {
                    let x = a + i;
                    if x >= addr && x < addr + len {
                        out[(x - addr) as usize] = p[i as usize];
                    }
                }
            }
            a += PAGE;
        }
        out
    }

    /// Every region with its bytes.
    pub fn image(&self) -> Vec<(u64, Vec<u8>)> {
        self.regions
            .iter()
            .map(|&(s, l)| (s, self.bytes(s, l)))
            .collect()
    }

    /// The model after steps 1..=version of run `seed`.
    pub fn replay(seed: u64, version: u64) -> Model {
        let mut m = Model::new();
        for v in 1..=version {
            m.step(seed, v);
        }
        m.dirty.clear();
        m
    }
}

impl PageSource for Model {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let inside = self
            .regions
            .iter()
            .any(|&(s, l)| addr >= s && addr + buf.len() as u64 <= s + l);
        if !inside {
            return Err(SourceError::Refused(format!("{addr:#x} is not mapped")));
        }
        buf.copy_from_slice(&self.bytes(addr, buf.len() as u64));
        Ok(())
    }
}
