//! The shadow pool: copies of pages as they were at a snapshot, stamped with its version.
//!
//! A shadow of page P stamped `v` holds P's contents at snapshot `v` (copied before the
//! first write after that snapshot). Version `v` of P is its shadow stamped `v`, else the
//! oldest shadow newer than `v`, else the live page (not written since).
//!
//! Retention is by whole versions: at most `max_versions` are kept, and when slots run
//! out the oldest version goes first, all its shadows at once (keeping some shadows of a
//! version would make it read as a newer state).
//!
//! Everything is allocated when the pool is made; nothing here allocates afterwards, so
//! the fault thread never waits on the arena.

use crate::base::range::Range;

pub use crate::base::page::PAGE;
/// No slot.
pub const NONE: u32 = u32::MAX;

/// Page address -> newest slot, open addressing with linear probing; key 0 is empty.
struct PageIndex {
    keys: Vec<usize>,
    vals: Vec<u32>,
    mask: usize,
}

/// Room for `n` values, or None when the allocator cannot give that much: the pool's
/// bookkeeping grows with the budget (about 48 bytes a slot), and a budget the shim's
/// allocator cannot index must fail the start with a line, not abort the program. Every
/// vector is reserved before any is filled, so a refusal comes before pages are touched.
fn room<T>(n: usize) -> Option<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    Some(v)
}

/// `v` (reserved by [`room`]) filled with `n` copies of `value`.
fn filled<T: Clone>(mut v: Vec<T>, n: usize, value: T) -> Vec<T> {
    v.resize(n, value);
    v
}

impl PageIndex {
    fn new(min_capacity: usize) -> Option<PageIndex> {
        let cap = (min_capacity * 2).next_power_of_two().max(16);
        let (keys, vals) = (room(cap)?, room(cap)?);
        Some(PageIndex {
            keys: filled(keys, cap, 0),
            vals: filled(vals, cap, NONE),
            mask: cap - 1,
        })
    }

    fn home(&self, page: usize) -> usize {
        ((crate::base::page::number(page)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) & self.mask
    }

    fn get(&self, page: usize) -> u32 {
        let mut i = self.home(page);
        loop {
            match self.keys[i] {
                0 => return NONE,
                k if k == page => return self.vals[i],
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    fn set(&mut self, page: usize, slot: u32) {
        let mut i = self.home(page);
        loop {
            match self.keys[i] {
                0 => {
                    self.keys[i] = page;
                    self.vals[i] = slot;
                    return;
                }
                k if k == page => {
                    self.vals[i] = slot;
                    return;
                }
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    /// Removes `page`, shifting later entries of its probe run back (no tombstones).
    fn remove(&mut self, page: usize) {
        let mut i = self.home(page);
        loop {
            match self.keys[i] {
                0 => return,
                k if k == page => break,
                _ => i = (i + 1) & self.mask,
            }
        }
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        while self.keys[j] != 0 {
            let home = self.home(self.keys[j]);
            // Move entry j into the hole if its home is not in (hole, j].
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.keys[hole] = self.keys[j];
                self.vals[hole] = self.vals[j];
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.keys[hole] = 0;
        self.vals[hole] = NONE;
    }
}

/// One retained version and the slots stamped with it.
#[derive(Clone, Copy)]
struct VersionEntry {
    version: u64,
    head: u32,
    count: u32,
}

/// Slots could not be found even after evicting every older version.
#[derive(Debug, PartialEq, Eq)]
pub struct PoolFull;

/// Most versions pinned at once, and versions kept beyond `max_versions` while the
/// oldest is pinned (past that the pin gives way, as when the shadow budget runs out).
pub use memshadow_format::control::{MAX_PINS, PIN_EXTRA_VERSIONS};

/// Why a version cannot be pinned.
#[derive(Debug, PartialEq, Eq)]
pub enum PinError {
    /// Not retained (evicted, or not taken yet).
    NotRetained,
    /// [`MAX_PINS`] pins are held already.
    TooMany,
}

pub struct ShadowPool {
    base: usize,
    capacity: u32,
    page_of: Vec<usize>,
    version_of: Vec<u64>,
    /// Next older slot of the same page (or next free slot on the free list).
    older: Vec<u32>,
    /// Next slot stamped with the same version.
    next_same: Vec<u32>,
    free_head: u32,
    free_count: u32,
    index: PageIndex,
    /// Retained versions, oldest first; a ring of `max_versions` entries.
    versions: Vec<VersionEntry>,
    first: usize,
    len: usize,
    /// Versions kept when none is pinned.
    keep: usize,
    /// Pinned versions (0: a free slot); a version may be pinned more than once.
    pinned: [u64; MAX_PINS],
}

impl ShadowPool {
    /// A pool of `budget_bytes` of slots backed by `memory` (page aligned, owned by the
    /// caller for the pool's life), keeping at most `max_versions` versions; None when
    /// its bookkeeping cannot be allocated (see [`room`]).
    pub fn new(memory: Range, max_versions: usize) -> Option<ShadowPool> {
        let capacity = (memory.len() / PAGE).min(NONE as usize - 1) as u32;
        let n = capacity as usize;
        let (page_of, version_of, older, next_same) = (room(n)?, room(n)?, room(n)?, room(n)?);
        let index = PageIndex::new(n)?;
        // The free list runs through every slot in order.
        let mut older = filled(older, n, NONE);
        for (i, next) in older.iter_mut().enumerate().take(n.saturating_sub(1)) {
            *next = i as u32 + 1;
        }
        Some(ShadowPool {
            base: memory.start,
            capacity,
            page_of: filled(page_of, n, 0),
            version_of: filled(version_of, n, 0),
            older,
            next_same: filled(next_same, n, NONE),
            free_head: if n > 0 { 0 } else { NONE },
            free_count: capacity,
            index,
            versions: vec![
                VersionEntry {
                    version: 0,
                    head: NONE,
                    count: 0
                };
                max_versions.max(1) + PIN_EXTRA_VERSIONS
            ],
            first: 0,
            len: 0,
            keep: max_versions.max(1),
            pinned: [0; MAX_PINS],
        })
    }

    pub fn used(&self) -> u32 {
        self.capacity - self.free_count
    }

    /// Gives the memory of every slot back to the kernel (the pool is being dropped for
    /// good; its reservation stays mapped, unused).
    pub fn discard_all(&self) {
        // SAFETY: the slots are the pool's own memory, whose contents nobody needs now.
        unsafe { crate::base::sys::discard(self.base as *mut u8, self.capacity as usize * PAGE) };
    }

    /// The memory of `slot`, for the kernel to copy a page into (`Engine::save_run`);
    /// readers take [`slot`](Self::slot).
    pub(super) fn slot_ptr(&self, slot: u32) -> *mut u8 {
        (self.base + slot as usize * PAGE) as *mut u8
    }

    /// The page held in `slot`. The borrow of the pool (taken under the engine lock)
    /// keeps the slot from being freed or reused while it is read.
    pub fn slot(&self, slot: u32) -> &[u8] {
        assert!(slot < self.capacity, "slot {slot} out of the pool");
        // SAFETY: the slot is PAGE bytes of the pool's own mapping, inside it (checked
        // above), and nothing writes it while the pool is borrowed.
        unsafe { core::slice::from_raw_parts(self.slot_ptr(slot), PAGE) }
    }

    fn entry(&self, i: usize) -> &VersionEntry {
        &self.versions[(self.first + i) % self.versions.len()]
    }

    fn newest_entry_mut(&mut self) -> &mut VersionEntry {
        let n = self.versions.len();
        &mut self.versions[(self.first + self.len - 1) % n]
    }

    /// Shadows of the newest version, and the pool's capacity, in pages.
    pub fn newest_use(&self) -> (u64, u64) {
        let newest = if self.len > 0 {
            self.entry(self.len - 1).count as u64
        } else {
            0
        };
        (newest, self.capacity as u64)
    }

    /// The oldest and newest retained versions, if any.
    pub fn retained(&self) -> Option<(u64, u64)> {
        (self.len > 0).then(|| (self.entry(0).version, self.entry(self.len - 1).version))
    }

    /// Starts version `v` (larger than every retained one), evicting the oldest version
    /// if `max_versions` are already kept.
    pub fn begin_version(&mut self, v: u64) {
        // Retention is oldest first: a pinned oldest version keeps every newer one.
        while self.len >= self.keep && !self.is_pinned(self.entry(0).version) {
            self.evict_oldest();
        }
        if self.len == self.versions.len() {
            self.evict_oldest();
        }
        let n = self.versions.len();
        self.versions[(self.first + self.len) % n] = VersionEntry {
            version: v,
            head: NONE,
            count: 0,
        };
        self.len += 1;
    }

    /// Drops the oldest retained version and every shadow stamped with it.
    pub fn evict_oldest(&mut self) {
        if self.len == 0 {
            return;
        }
        let e = *self.entry(0);
        // A pinned version that goes (the budget ran out) is no longer pinned.
        for p in self.pinned.iter_mut().filter(|p| **p == e.version) {
            *p = 0;
        }
        let mut s = e.head;
        while s != NONE {
            let next = self.next_same[s as usize];
            self.unlink_oldest_of_page(s);
            self.older[s as usize] = self.free_head;
            self.free_head = s;
            self.free_count += 1;
            s = next;
        }
        self.first = (self.first + 1) % self.versions.len();
        self.len -= 1;
    }

    /// Drops every version (after an incomplete snapshot).
    pub fn clear(&mut self) {
        while self.len > 0 {
            self.evict_oldest();
        }
    }

    /// Removes `slot`, the oldest shadow of its page, from the page's chain.
    fn unlink_oldest_of_page(&mut self, slot: u32) {
        let page = self.page_of[slot as usize];
        let head = self.index.get(page);
        if head == slot {
            self.index.remove(page);
            return;
        }
        let mut s = head;
        while s != NONE {
            if self.older[s as usize] == slot {
                self.older[s as usize] = NONE;
                return;
            }
            s = self.older[s as usize];
        }
    }

    /// The slot holding `page` at version `v`: its shadow stamped `v`, else the oldest
    /// one newer than `v`; `None` when the live page holds version `v`.
    pub fn find(&self, page: usize, v: u64) -> Option<u32> {
        let mut s = self.index.get(page);
        let mut best = None;
        while s != NONE && self.version_of[s as usize] >= v {
            best = Some(s);
            s = self.older[s as usize];
        }
        best
    }

    /// The version `slot` is stamped with.
    pub fn stamp_of(&self, slot: u32) -> u64 {
        self.version_of[slot as usize]
    }

    /// Whether `page` has a shadow stamped exactly `v`.
    pub fn has(&self, page: usize, v: u64) -> bool {
        let s = self.index.get(page);
        s != NONE && self.version_of[s as usize] == v
    }

    /// A slot for `page` stamped with the newest version (which must have been begun),
    /// evicting older versions when the pool is full. The caller fills the slot.
    pub fn alloc(&mut self, page: usize) -> Result<u32, PoolFull> {
        let v = match self.retained() {
            Some((_, newest)) => newest,
            None => return Err(PoolFull),
        };
        while self.free_head == NONE {
            if self.len <= 1 {
                return Err(PoolFull);
            }
            self.evict_oldest();
        }
        let s = self.free_head;
        self.free_head = self.older[s as usize];
        self.free_count -= 1;
        self.page_of[s as usize] = page;
        self.version_of[s as usize] = v;
        self.older[s as usize] = self.index.get(page);
        self.index.set(page, s);
        let e = self.newest_entry_mut();
        let head = e.head;
        e.head = s;
        e.count += 1;
        self.next_same[s as usize] = head;
        Ok(s)
    }

    /// Slots free now, without evicting a version.
    pub fn free_slots(&self) -> u32 {
        self.free_count
    }

    /// Takes back `slot`, which must be the latest slot [`alloc`](Self::alloc) returned
    /// with nothing allocated since (undoes in the reverse order of allocation).
    pub fn undo_alloc(&mut self, slot: u32) {
        let i = slot as usize;
        let page = self.page_of[i];
        debug_assert_eq!(self.index.get(page), slot);
        match self.older[i] {
            NONE => self.index.remove(page),
            older => self.index.set(page, older),
        }
        let next = self.next_same[i];
        let e = self.newest_entry_mut();
        debug_assert_eq!(e.head, slot);
        e.head = next;
        e.count -= 1;
        self.next_same[i] = NONE;
        self.older[i] = self.free_head;
        self.free_head = slot;
        self.free_count += 1;
    }

    /// Shadows stamped with a version from `from` up to, not including, `to` (of the
    /// retained ones).
    pub fn stamped_between(&self, from: u64, to: u64) -> usize {
        (0..self.len)
            .map(|i| self.entry(i))
            .filter(|e| from <= e.version && e.version < to)
            .map(|e| e.count as usize)
            .sum()
    }

    /// Calls `f` with the page of every shadow stamped with a version from `from` up to,
    /// not including, `to`.
    pub fn for_each_stamped_between(&self, from: u64, to: u64, mut f: impl FnMut(usize)) {
        for i in 0..self.len {
            let e = self.entry(i);
            if e.version < from || e.version >= to {
                continue;
            }
            let mut s = e.head;
            while s != NONE {
                f(self.page_of[s as usize]);
                s = self.next_same[s as usize];
            }
        }
    }

    /// Versions retained now.
    pub fn versions_retained(&self) -> u64 {
        self.len as u64
    }

    fn is_pinned(&self, v: u64) -> bool {
        v != 0 && self.pinned.contains(&v)
    }

    /// Whether any version is pinned (a pin keeps every newer version too).
    pub fn any_pinned(&self) -> bool {
        self.pinned.iter().any(|&p| p != 0)
    }

    /// Keeps `v` (and so every newer version) from eviction by new versions until
    /// [`unpin`](Self::unpin); running out of shadow slots still evicts it.
    pub fn pin(&mut self, v: u64) -> Result<(), PinError> {
        match self.retained() {
            Some((oldest, newest)) if (oldest..=newest).contains(&v) && v != 0 => {}
            _ => return Err(PinError::NotRetained),
        }
        let slot = self
            .pinned
            .iter_mut()
            .find(|p| **p == 0)
            .ok_or(PinError::TooMany)?;
        *slot = v;
        Ok(())
    }

    /// Drops one pin of `v` (none if it gave way meanwhile), and the versions beyond
    /// `max_versions` it kept.
    pub fn unpin(&mut self, v: u64) {
        if let Some(p) = self.pinned.iter_mut().find(|p| **p == v) {
            *p = 0;
        }
        while self.len > self.keep && !self.is_pinned(self.entry(0).version) {
            self.evict_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(pages: usize, versions: usize) -> (ShadowPool, Vec<u8>) {
        // Slot memory is never touched by these tests except through slot_ptr math.
        let mem = vec![0u8; pages * PAGE + PAGE];
        let start = crate::base::page::ceil(mem.as_ptr() as usize);
        (
            ShadowPool::new(Range::new(start, start + pages * PAGE), versions)
                .expect("a test pool"),
            mem,
        )
    }

    #[test]
    fn version_lookup_follows_the_rules() {
        let (mut p, _m) = pool(16, 8);
        let a = 0x10000;
        p.begin_version(1);
        let s1 = p.alloc(a).unwrap(); // a written in epoch 1
        p.begin_version(2);
        p.begin_version(3);
        let s3 = p.alloc(a).unwrap(); // a written again in epoch 3
        p.begin_version(4);
        assert_eq!(p.find(a, 1), Some(s1));
        assert_eq!(
            p.find(a, 2),
            Some(s3),
            "not written in epoch 2: the next shadow holds it"
        );
        assert_eq!(p.find(a, 3), Some(s3));
        assert_eq!(p.find(a, 4), None, "not written since 4: the live page");
        assert_eq!(p.find(0x20000, 1), None);
        assert!(p.has(a, 3) && !p.has(a, 1) && !p.has(a, 4));
    }

    #[test]
    fn undone_allocations_leave_the_pool_as_it_was() {
        let (mut p, _m) = pool(8, 4);
        let a = 0x10000;
        p.begin_version(1);
        let s1 = p.alloc(a).unwrap();
        p.begin_version(2);
        let keep = p.alloc(0x20000).unwrap();
        let s2 = p.alloc(a).unwrap();
        let s3 = p.alloc(0x30000).unwrap();
        assert_eq!(p.used(), 4);
        p.undo_alloc(s3);
        p.undo_alloc(s2);
        assert_eq!((p.used(), p.free_slots()), (2, 6));
        assert!(!p.has(a, 2) && !p.has(0x30000, 2) && p.has(0x20000, 2));
        assert_eq!(
            p.find(a, 1),
            Some(s1),
            "the older shadow is the page's again"
        );
        // Freed slots are reused; the version keeps what was not undone.
        assert_eq!(p.find(0x20000, 2), Some(keep));
        let again = p.alloc(0x40000).unwrap();
        assert!(again == s2 || again == s3);
        p.begin_version(3);
        p.evict_oldest();
        p.evict_oldest();
        assert_eq!(p.used(), 0);
    }

    /// Every page's chain ends (no slot twice), and slots in chains plus free slots
    /// add up to the capacity.
    fn check_chains(p: &ShadowPool, pages: &[usize]) {
        let mut seen = std::collections::HashSet::new();
        for &page in pages {
            let mut s = p.index.get(page);
            while s != NONE {
                assert!(seen.insert(s), "slot {s} twice (page {page:#x})");
                assert_eq!(p.page_of[s as usize], page);
                s = p.older[s as usize];
            }
        }
        assert_eq!(seen.len() as u32, p.used(), "slots in chains vs used");
    }

    #[test]
    fn allocations_undone_at_random_keep_the_pool_whole() {
        let (mut p, _m) = pool(64, 3);
        let pages: Vec<usize> = (1..=40).map(|i| i * PAGE).collect();
        let mut x = 7u64;
        let mut rnd = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut v = 0;
        for round in 0..3000 {
            if round % 50 == 0 {
                v += 1;
                p.begin_version(v);
            }
            // A run of consecutive pages not saved in v, some of it undone in reverse.
            let start = rnd(40) as usize;
            let mut got = Vec::new();
            for &page in pages[start..].iter().take(1 + rnd(8) as usize) {
                if p.has(page, v) || p.free_slots() < 2 {
                    break;
                }
                got.push(p.alloc(page).unwrap());
            }
            let keep = rnd(got.len() as u64 + 1) as usize;
            for &slot in got[keep..].iter().rev() {
                p.undo_alloc(slot);
            }
            check_chains(&p, &pages);
        }
    }

    #[test]
    fn a_pinned_version_stays_until_unpinned_or_the_slots_run_out() {
        let (mut p, _mem) = pool(4, 2);
        p.begin_version(1);
        p.alloc(10).unwrap();
        p.begin_version(2);
        assert_eq!(p.pin(1), Ok(()));
        assert_eq!(p.pin(3), Err(PinError::NotRetained));
        p.begin_version(3);
        p.begin_version(4);
        assert_eq!(p.retained(), Some((1, 4)), "the pin kept version 1");
        p.unpin(1);
        assert_eq!(p.retained(), Some((3, 4)), "unpinned, back to 2 versions");
        // Slots running out evict a pinned version: the pin gives way.
        p.pin(3).unwrap();
        for page in 0..4 {
            p.alloc(page).unwrap();
        }
        p.begin_version(5);
        p.alloc(100).unwrap();
        assert_eq!(
            p.retained(),
            Some((5, 5)),
            "3 (pinned) and 4 went for the slot"
        );
        assert!(!p.is_pinned(3));
        for _ in 0..MAX_PINS {
            p.pin(5).unwrap();
        }
        assert_eq!(p.pin(5), Err(PinError::TooMany));
    }

    #[test]
    fn old_versions_go_whole_and_first() {
        let (mut p, _m) = pool(4, 3);
        for v in 1..=3 {
            p.begin_version(v);
            p.alloc(0x1000 * v as usize).unwrap();
        }
        assert_eq!(p.retained(), Some((1, 3)));
        p.begin_version(4); // only 3 versions kept: 1 goes
        assert_eq!(p.retained(), Some((2, 4)));
        assert_eq!(p.find(0x1000, 2), None);
        assert_eq!(p.used(), 2);
        // Fill the pool: the next allocation evicts version 2, then 3.
        p.alloc(0x9000).unwrap();
        p.alloc(0xa000).unwrap();
        assert_eq!(p.used(), 4);
        p.alloc(0xb000).unwrap();
        assert_eq!(p.retained(), Some((3, 4)));
        p.alloc(0xc000).unwrap();
        assert_eq!(p.retained(), Some((4, 4)));
        // Only the current version is left and every slot is in use.
        assert_eq!(p.used(), 4);
        assert_eq!(p.alloc(0xd000), Err(PoolFull));
        p.clear();
        assert_eq!(p.used(), 0);
        assert_eq!(p.retained(), None);
    }

    #[test]
    fn index_survives_churn() {
        let (mut p, _m) = pool(512, 4);
        // Many pages whose hashes collide in a small table, across many versions.
        for v in 1..=40u64 {
            p.begin_version(v);
            for i in 0..100usize {
                let page = 0x1000 * ((i * 7 + v as usize) % 300 + 1);
                if !p.has(page, v) {
                    p.alloc(page).unwrap();
                }
            }
            let (oldest, newest) = p.retained().unwrap();
            assert_eq!(newest, v);
            assert!(newest - oldest < 4);
            // Every page shadowed in the newest version is found there.
            for i in 0..100usize {
                let page = 0x1000 * ((i * 7 + v as usize) % 300 + 1);
                let s = p.find(page, v).unwrap();
                assert_eq!(p.version_of[s as usize], v);
            }
        }
        assert!(p.used() <= 4 * 100);
    }
}
