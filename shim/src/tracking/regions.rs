//! The table of tracked memory: writable private anonymous regions of the host.
//!
//! It is filled from `/proc/self/maps` at start-up ([`rescan`]) and kept current by the
//! interposed mmap/munmap/mremap/brk/sbrk calls. glibc's own `__mmap`/`__brk` calls (large
//! allocations, new arenas, heap growth) cannot be interposed; a rescan picks them up
//! (the control thread rescans when statistics are read, about once a second while
//! the process allocates, and at exit).
//!
//! The table has a fixed capacity allocated once, so the interposed calls never
//! allocate; they take its lock with signals blocked.

use crate::base::range::Range;
use crate::base::sync::SpinLock;
use crate::stats;
use crate::tracking::maps::{Kind, Region};
use memshadow_format::stats::Counter;

/// Regions the table holds at most (a process may have up to 65530 mappings).
pub const CAPACITY: usize = 65536;

pub struct RegionTable {
    entries: Vec<Region>,
    track_stacks: bool,
    heap_start: usize,
    tracked_regions: u64,
    tracked_bytes: u64,
    /// Bumped on every change, so a rescan can tell the table moved under it.
    seq: u64,
    overflow: u64,
}

impl RegionTable {
    pub const fn new() -> Self {
        RegionTable {
            entries: Vec::new(),
            track_stacks: false,
            heap_start: 0,
            tracked_regions: 0,
            tracked_bytes: 0,
            seq: 0,
            overflow: 0,
        }
    }

    /// Allocates the fixed capacity. Must run before the table is shared.
    pub fn init(&mut self, capacity: usize, track_stacks: bool, heap_start: usize) {
        self.entries = Vec::with_capacity(capacity);
        self.track_stacks = track_stacks;
        self.heap_start = heap_start;
    }

    fn tracked(&self, k: Kind) -> bool {
        k != Kind::Stack || self.track_stacks
    }

    fn account(&mut self, r: &Region, sign: i64) {
        if self.tracked(r.kind) {
            self.tracked_regions = self.tracked_regions.wrapping_add(sign as u64);
            self.tracked_bytes = self
                .tracked_bytes
                .wrapping_add((sign * r.range.len() as i64) as u64);
        }
    }

    /// Index of the first entry that ends after `addr`.
    fn first_ending_after(&self, addr: usize) -> usize {
        self.entries.partition_point(|e| e.range.end <= addr)
    }

    fn push_at(&mut self, i: usize, r: Region) -> bool {
        if self.entries.len() == self.entries.capacity() {
            self.overflow += 1;
            return false;
        }
        self.account(&r, 1);
        self.entries.insert(i, r);
        true
    }

    /// Forgets `[r.start, r.end)`: entries inside go, entries across its edges are cut.
    pub fn remove(&mut self, r: Range) -> bool {
        if r.is_empty() {
            return false;
        }
        self.seq += 1;
        let mut i = self.first_ending_after(r.start);
        let mut changed = false;
        while i < self.entries.len() && self.entries[i].range.start < r.end {
            let e = self.entries[i];
            self.account(&e, -1);
            changed = true;
            let left = Range::new(e.range.start, r.start.min(e.range.end));
            let right = Range::new(r.end.max(e.range.start), e.range.end);
            self.entries.remove(i);
            if !left.is_empty() {
                self.push_at(
                    i,
                    Region {
                        range: left,
                        kind: e.kind,
                    },
                );
                i += 1;
            }
            if !right.is_empty() {
                self.push_at(
                    i,
                    Region {
                        range: right,
                        kind: e.kind,
                    },
                );
                i += 1;
            }
        }
        changed
    }

    /// Records `r` as a region of kind `kind`, replacing whatever overlapped it.
    pub fn insert(&mut self, r: Range, kind: Kind) {
        if r.is_empty() {
            return;
        }
        self.remove(r);
        let i = self.first_ending_after(r.start);
        self.push_at(i, Region { range: r, kind });
    }

    /// The kind of the region containing `addr`, if any.
    pub fn kind_at(&self, addr: usize) -> Option<Kind> {
        let i = self.first_ending_after(addr);
        self.entries
            .get(i)
            .filter(|e| e.range.start <= addr)
            .map(|e| e.kind)
    }

    /// The brk heap now ends at `end`.
    pub fn set_heap_end(&mut self, end: usize) {
        if self.heap_start == 0 {
            return;
        }
        let old_end = match self.kind_at(self.heap_start) {
            Some(Kind::Heap) => {
                self.entries[self.first_ending_after(self.heap_start)]
                    .range
                    .end
            }
            _ => self.heap_start,
        };
        if end < old_end {
            self.remove(Range::new(end.max(self.heap_start), old_end));
        }
        if end > self.heap_start {
            self.insert(Range::new(self.heap_start, end), Kind::Heap);
        }
    }

    /// Replaces the whole table with a fresh scan.
    pub fn replace(&mut self, fresh: &[Region]) {
        self.seq += 1;
        self.entries.clear();
        self.tracked_regions = 0;
        self.tracked_bytes = 0;
        for r in fresh {
            if r.kind == Kind::Heap && self.heap_start == 0 {
                self.heap_start = r.range.start;
            }
            let i = self.entries.len();
            self.push_at(i, *r);
        }
    }

    /// The heaps glibc's malloc_trim may trim: the brk heap, and anonymous regions that
    /// start on a 64 MiB boundary (glibc aligns its arena heaps to HEAP_MAX_SIZE).
    pub fn malloc_heaps(&self) -> MallocHeaps {
        const ARENA_ALIGN: usize = 64 << 20;
        let mut out = MallocHeaps {
            ranges: [Range::EMPTY; MAX_MALLOC_HEAPS],
            len: 0,
        };
        let heaps = self.entries.iter().filter(|e| {
            e.kind == Kind::Heap || (e.kind == Kind::Anon && e.range.start % ARENA_ALIGN == 0)
        });
        for e in heaps.take(MAX_MALLOC_HEAPS) {
            out.ranges[out.len] = e.range;
            out.len += 1;
        }
        out
    }

    /// The tracked memory as address-ordered ranges, adjacent regions merged.
    pub fn tracked_ranges(&self) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::with_capacity(self.entries.len());
        for e in self.entries.iter().filter(|e| self.tracked(e.kind)) {
            match out.last_mut() {
                Some(last) if last.end == e.range.start => last.end = e.range.end,
                _ => out.push(e.range),
            }
        }
        out
    }

    /// The parts of `ranges` that the table lists as memory it does not track (thread
    /// stacks, unless stacks are tracked): still mapped, not the program's heap. Calls
    /// `out` with each, in address order.
    pub fn untracked_within(&self, ranges: &[Range], out: &mut dyn FnMut(Range)) {
        for e in self.entries.iter().filter(|e| !self.tracked(e.kind)) {
            for r in ranges
                .iter()
                .filter(|r| r.start < e.range.end && e.range.start < r.end)
            {
                out(Range::new(
                    r.start.max(e.range.start),
                    r.end.min(e.range.end),
                ));
            }
        }
    }

    pub fn totals(&self) -> (u64, u64) {
        (self.tracked_regions, self.tracked_bytes)
    }

    #[cfg(test)]
    pub fn regions(&self) -> &[Region] {
        &self.entries
    }

    fn publish(&self) {
        stats::set(Counter::TrackedRegions, self.tracked_regions);
        stats::set(Counter::TrackedBytes, self.tracked_bytes);
        stats::set(Counter::RegionOverflow, self.overflow);
    }
}

impl Default for RegionTable {
    fn default() -> Self {
        Self::new()
    }
}

static TABLE: SpinLock<RegionTable> = SpinLock::new(RegionTable::new());

/// The shim is tracking this process: set-up succeeded (set by `runtime`).
static TRACKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether the shim is tracking this process (set-up succeeded).
#[inline]
pub fn tracking() -> bool {
    TRACKING.load(core::sync::atomic::Ordering::Acquire)
}

/// Records whether the shim tracks this process (start-up; a forked child that could
/// not publish itself stops).
pub fn set_tracking(on: bool) {
    TRACKING.store(on, core::sync::atomic::Ordering::Release);
}

/// Runs `f` on the table with signals blocked and the lock held, then publishes the
/// totals to the stats page.
/// Most heaps [`malloc_heaps`] lists.
pub const MAX_MALLOC_HEAPS: usize = 64;

/// A fixed list of ranges (no allocation on the host's paths).
pub struct MallocHeaps {
    ranges: [Range; MAX_MALLOC_HEAPS],
    len: usize,
}

impl MallocHeaps {
    pub fn iter(&self) -> core::slice::Iter<'_, Range> {
        self.ranges[..self.len].iter()
    }
}

/// The heaps glibc's malloc_trim may trim (see [`RegionTable::malloc_heaps`]).
pub fn malloc_heaps() -> MallocHeaps {
    with_table(|t| t.malloc_heaps())
}

pub fn with_table<R>(f: impl FnOnce(&mut RegionTable) -> R) -> R {
    let _s = crate::base::sys::block_signals();
    let mut t = TABLE.lock();
    let r = f(&mut t);
    t.publish();
    r
}

/// Reads the current break with the raw syscall (`brk(0)` returns it).
fn current_break() -> usize {
    // SAFETY: brk(0) never moves the break; it only reports it.
    unsafe { libc::syscall(libc::SYS_brk, 0usize) as usize }
}

/// Sets up the table and fills it from the maps file.
pub fn init(track_stacks: bool) {
    with_table(|t| t.init(CAPACITY, track_stacks, 0));
    rescan();
    with_table(|t| {
        if t.heap_start == 0 {
            t.heap_start = current_break();
        }
    });
}

/// Reads the whole maps file.
fn read_maps() -> String {
    // Through a descriptor out of the program's way (see `fds`); a maps file is text.
    String::from_utf8(crate::base::fds::read_file(c"/proc/self/maps", 1 << 28))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A listing of the maps file turned into regions, with what it was read against.
struct Listing {
    /// The table's change count before the read.
    seq: u64,
    /// The shim's own memory's generation before the read.
    own_generation: u64,
    regions: Vec<Region>,
    /// Whether every thread stack in the listing was known as one: no thread start was
    /// pending when it was read, and none began meanwhile (see `stacks`).
    stacks_known: bool,
}

/// How long a rescan on a shim thread waits, per read, for threads being started to
/// record their stacks.
const START_WAIT_MS: u64 = 250;

/// Reads the maps file into regions, the shim's own memory cut out. Waits up to
/// `start_wait_ms` for threads being started first.
fn read_listing(start_wait_ms: u64) -> Listing {
    let begun = crate::tracking::stacks::wait_for_starts(start_wait_ms);
    let seq = with_table(|t| t.seq);
    let own_generation = crate::base::own::generation();
    let own = crate::base::own::ranges();
    let mut stacks = crate::tracking::stacks::snapshot();
    let kept = crate::tracking::stacks::kept();
    let text = read_maps();
    // Kept stacks of exited threads count as stacks while the maps file shows them as
    // glibc keeps them; the others are gone. `present` comes out in `kept`'s order (by
    // start), so one walk of both tells which are gone.
    let mut present = Vec::with_capacity(kept.len());
    crate::tracking::maps::kept_stacks_present(&text, &kept, &mut |k| present.push(k));
    let mut still_kept = present.iter().peekable();
    for &k in &kept {
        if still_kept.next_if_eq(&&k).is_none() {
            crate::tracking::stacks::forget_kept(k);
        }
    }
    stacks.extend_from_slice(&present);
    let mut regions = Vec::with_capacity(256);
    crate::tracking::maps::candidates(&text, &own, &stacks, &mut |r| regions.push(r));
    Listing {
        seq,
        own_generation,
        regions,
        stacks_known: begun.is_some_and(crate::tracking::stacks::no_start_since),
    }
}

/// Puts `listing` in the table if it is still current: nothing changed the table since
/// it was read (a fresh munmap is not undone by an older listing), and the shim neither
/// mapped nor unmapped memory of its own meanwhile (its shadow pool, mapped by the
/// epoch thread while the control thread rescans, is not taken for the program's).
/// With `stacks_needed`, also refused when a thread stack in it may not be known as one.
fn apply_listing(listing: &Listing, stacks_needed: bool) -> bool {
    with_table(|t| {
        let own_generation = crate::base::own::generation();
        if t.seq != listing.seq
            || own_generation != listing.own_generation
            || own_generation % 2 == 1
            || (stacks_needed && !listing.stacks_known)
        {
            return false;
        }
        t.replace(&listing.regions);
        true
    })
}

/// Rebuilds the table from `/proc/self/maps`, reading again (up to three times) while
/// what was read is no longer current (see [`apply_listing`]). On a shim thread it first
/// waits for threads being started to record their stacks, and reads again if one began
/// during a read, but the last read is taken without that (a program that starts
/// threads all the time must not keep its table stale). A host thread (start-up, exit)
/// never waits.
pub fn rescan() {
    let start_wait_ms = if crate::base::shim_thread::is_current() {
        START_WAIT_MS
    } else {
        0
    };
    for attempt in 0..3 {
        let stacks_needed = start_wait_ms > 0 && attempt < 2;
        if apply_listing(&read_listing(start_wait_ms), stacks_needed) {
            break;
        }
    }
    stats::add(Counter::Rescans, 1);
}

pub(crate) fn lock_for_fork() {
    TABLE.acquire();
}

pub(crate) fn unlock_after_fork() {
    TABLE.release();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RegionTable {
        let mut t = RegionTable::new();
        t.init(16, false, 0x1000);
        t
    }

    fn shape(t: &RegionTable) -> Vec<(usize, usize, Kind)> {
        t.regions()
            .iter()
            .map(|r| (r.range.start, r.range.end, r.kind))
            .collect()
    }

    #[test]
    fn insert_remove_split_and_totals() {
        let mut t = table();
        t.insert(Range::new(0x10000, 0x20000), Kind::Anon);
        t.insert(Range::new(0x30000, 0x40000), Kind::Anon);
        t.insert(Range::new(0x50000, 0x51000), Kind::Stack);
        assert_eq!(t.totals(), (2, 0x20000));
        t.insert(Range::new(0x20000, 0x21000), Kind::Bss);
        assert_eq!(
            t.tracked_ranges(),
            vec![Range::new(0x10000, 0x21000), Range::new(0x30000, 0x40000)],
            "adjacent regions merge, stacks are left out"
        );
        t.remove(Range::new(0x20000, 0x21000));
        // A hole in the middle of the first region splits it.
        t.remove(Range::new(0x14000, 0x15000));
        assert_eq!(
            shape(&t)[..2],
            [
                (0x10000, 0x14000, Kind::Anon),
                (0x15000, 0x20000, Kind::Anon)
            ]
        );
        assert_eq!(t.totals(), (3, 0x1f000));
        // A removal across two regions trims both.
        t.remove(Range::new(0x1f000, 0x31000));
        assert_eq!(t.totals(), (3, 0x1f000 - 0x1000 - 0x1000));
        // An insert over existing ones replaces them.
        t.insert(Range::new(0x10000, 0x40000), Kind::Anon);
        assert_eq!(
            shape(&t),
            vec![
                (0x10000, 0x40000, Kind::Anon),
                (0x50000, 0x51000, Kind::Stack)
            ]
        );
        assert_eq!(t.totals(), (1, 0x30000));
        assert_eq!(t.kind_at(0x50800), Some(Kind::Stack));
        assert_eq!(t.kind_at(0x48000), None);
    }

    #[test]
    fn untracked_parts_still_mapped_are_the_stacks_within() {
        let mut t = table();
        t.insert(Range::new(0x10000, 0x20000), Kind::Anon);
        t.insert(Range::new(0x20000, 0x30000), Kind::Stack);
        t.insert(Range::new(0x40000, 0x50000), Kind::Stack);
        let mut got = Vec::new();
        t.untracked_within(
            &[Range::new(0x18000, 0x28000), Range::new(0x60000, 0x70000)],
            &mut |r| got.push(r),
        );
        assert_eq!(got, vec![Range::new(0x20000, 0x28000)]);
    }

    #[test]
    fn heap_grows_and_shrinks() {
        let mut t = table();
        t.set_heap_end(0x5000);
        assert_eq!(shape(&t), vec![(0x1000, 0x5000, Kind::Heap)]);
        t.set_heap_end(0x9000);
        assert_eq!(shape(&t), vec![(0x1000, 0x9000, Kind::Heap)]);
        t.set_heap_end(0x3000);
        assert_eq!(shape(&t), vec![(0x1000, 0x3000, Kind::Heap)]);
        t.set_heap_end(0x1000);
        assert_eq!(shape(&t), vec![]);
        assert_eq!(t.totals(), (0, 0));
    }

    #[test]
    fn full_table_counts_overflow_instead_of_growing() {
        let mut t = table();
        for i in 0..20 {
            t.insert(
                Range::new(0x100000 * (i + 1), 0x100000 * (i + 1) + 0x1000),
                Kind::Anon,
            );
        }
        assert_eq!(t.regions().len(), 16);
        assert_eq!(t.overflow, 4);
        assert_eq!(t.totals(), (16, 16 * 0x1000));
    }

    #[test]
    fn a_listing_read_before_the_shim_maps_memory_of_its_own_is_not_applied() {
        // The epoch thread maps the shadow pool while the control thread rescans: a
        // listing read before the pool was recorded as the shim's must not put it in the
        // table as the program's memory (the stats then counted the 1 GiB pool as
        // tracked, and auto chose holders for a small program).
        let covers = |l: &Listing, r: Range| l.regions.iter().any(|g| g.range.overlaps(&r));
        let stale = read_listing(0);
        let pool = crate::base::own::map(64 * crate::base::page::PAGE, true).unwrap();
        assert!(
            !apply_listing(&stale, false),
            "a listing older than the pool was applied"
        );
        let fresh = read_listing(0);
        assert!(
            !covers(&fresh, pool),
            "the shim's own memory is listed as the program's"
        );
        // Unmapped and forgotten in one change too: a listing from before is refused.
        crate::base::own::unmap(pool);
        assert!(
            !apply_listing(&fresh, false),
            "a listing older than the unmap was applied"
        );
        assert!(!crate::base::own::ranges().contains(&pool));
    }

    #[test]
    fn a_stack_mapped_before_its_thread_records_it_is_listed_as_a_stack() {
        use crate::tracking::stacks;
        // As glibc's pthread_create does: the new thread's stack is mapped, and the
        // thread records it only once it runs. A listing read in between took it for
        // plain memory (tracked by one snapshot, dropped by the next: the older
        // version's reads of it were refused as discarded).
        const LEN: usize = 1 << 20;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let at = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let stack = Range::new(at as usize, at as usize + LEN);
        stacks::start_begins();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            stacks::register(stack);
            stacks::start_ends();
        });
        let listing = read_listing(START_WAIT_MS);
        thread.join().unwrap();
        let kinds: Vec<Kind> = listing
            .regions
            .iter()
            .filter(|r| r.range.overlaps(&stack))
            .map(|r| r.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![Kind::Stack],
            "the stack of a thread not yet running is listed as plain memory"
        );
        assert!(listing.stacks_known);

        // A start still pending at the limit: the listing says so, and a rescan that
        // needs the stacks does not apply it.
        stacks::start_begins();
        let pending = read_listing(5);
        stacks::start_ends();
        assert!(!pending.stacks_known);
        assert!(!apply_listing(&pending, true));
        stacks::unregister_starting_at(stack.start);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(at, LEN) };
    }

    #[test]
    fn rescan_of_this_process_finds_the_heap_memory_we_touch() {
        // A real scan of the test process: a large anonymous buffer we hold must appear.
        let buf = vec![1u8; 8 << 20];
        let mut found = false;
        crate::tracking::maps::candidates(
            &read_maps(),
            &crate::base::own::ranges(),
            &[],
            &mut |r| {
                let a = buf.as_ptr() as usize;
                found |= r.range.start <= a && a < r.range.end && r.kind != Kind::Stack;
            },
        );
        assert!(
            found,
            "an 8 MiB heap buffer is not among the candidate regions"
        );
    }
}
