//! The live statistics page: one shared-memory file per shimmed process.
//!
//! The shim maps the file read-write and updates it with relaxed atomics only, so a
//! reader never slows or blocks the host. Readers (the inspector) read the file's bytes
//! and decode them with [`StatsRecord::decode`]; they never write.
//!
//! Layout (little-endian, [`STATS_PAGE_SIZE`] bytes, offsets fixed by `#[repr(C)]`):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MSHSTATS` |
//! | 8 | 4 | layout version ([`STATS_LAYOUT_VERSION`]) |
//! | 12 | 4 | state ([`ProcessState`]) |
//! | 16 | 4 | pid |
//! | 20 | 4 | uid |
//! | 24 | 8 | process start time, clock ticks after boot (`/proc/PID/stat` field 22) |
//! | 32 | 8 | run id: pid of the `memshadow run` that launched it, 0 if none |
//! | 40 | 8 | creation time, milliseconds since the Unix epoch |
//! | 48 | 8 | exit time, milliseconds since the Unix epoch, 0 while running |
//! | 64 | 256 | command line, NUL-padded UTF-8 (truncated) |
//! | 512 | 8 x 128 | counters, indexed by [`Counter`] |
//! | 2048 | 65 x 64 | heap stripes ([`HeapStripe`]): 64 exclusive, then the overflow one; summed by the reader |
//!
//! Allocation counters are striped: each host thread owns one 64-byte stripe, found by
//! its thread pointer, and updates it with plain relaxed load/store (no locked
//! instruction on the malloc path). Threads beyond the exclusive stripes share
//! [`OVERFLOW_STRIPE`], which uses `fetch_add`.

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64};

/// First eight bytes of every stats page.
pub const STATS_MAGIC: [u8; 8] = *b"MSHSTATS";
/// Bumped whenever a field moves. Counters appended at unused indices keep the version.
pub const STATS_LAYOUT_VERSION: u32 = 1;
/// Size of the stats file in bytes.
pub const STATS_PAGE_SIZE: usize = 8192;
/// Capacity of the counter array; indices not yet assigned read as zero.
pub const COUNTER_SLOTS: usize = 128;
/// Number of heap stripes: a power of two of exclusive ones, then the overflow stripe.
pub const HEAP_STRIPES: usize = EXCLUSIVE_STRIPES + 1;
/// Stripes a thread can own alone (a power of two, so the home slot is a mask away).
pub const EXCLUSIVE_STRIPES: usize = 64;
/// The shared stripe used (with atomic read-modify-write) when no exclusive one is free.
pub const OVERFLOW_STRIPE: usize = EXCLUSIVE_STRIPES;
/// Bytes reserved for the command line.
pub const COMMAND_BYTES: usize = 256;

/// Lifecycle of the process that owns a stats page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ProcessState {
    /// Page created, shim still starting.
    Starting = 0,
    /// Shim running and tracking.
    Running = 1,
    /// Process exited normally; the page was kept for the `memshadow run` that launched it.
    Exited = 2,
}

impl ProcessState {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Starting),
            1 => Some(Self::Running),
            2 => Some(Self::Exited),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Exited => "exited",
        }
    }
}

/// Global counters. The discriminant is the slot index; it never changes once assigned.
/// The name is the key used in JSON and in the control protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Writable private anonymous regions currently tracked.
    TrackedRegions = 0,
    /// Bytes in those regions.
    TrackedBytes = 1,
    /// Full re-scans of `/proc/self/maps`.
    Rescans = 2,
    /// Interposed mmap/mremap/brk/sbrk calls that added or moved tracked memory.
    RegionMaps = 3,
    /// Interposed munmap/mremap/brk/sbrk calls that removed tracked memory.
    RegionUnmaps = 4,
    /// Threads started through the interposed `pthread_create`.
    ThreadsStarted = 5,
    /// Regions the table could not hold (table full); tracked bytes undercount.
    RegionOverflow = 6,
    /// Snapshots taken (protect passes completed).
    Epochs = 7,
    /// Write faults on protected pages handled by the fault thread.
    Traps = 8,
    /// Pages write-protected by protect passes, summed over passes.
    PagesProtected = 9,
    /// Pages copied into shadows (trap, fault-around and reads).
    PagesCopied = 10,
    /// Faults that arrived during a protect pass and were held until it ended.
    HeldFaults = 11,
    /// Bytes of shadow slots in use.
    ShadowBytes = 12,
    /// Versions that can still be read.
    VersionsRetained = 13,
    /// Snapshots abandoned because the shadow budget ran out.
    IncompleteSnapshots = 14,
    /// Duration of the last protect pass, microseconds.
    ProtectPassUsLast = 15,
    /// Longest protect pass, microseconds.
    ProtectPassUsMax = 16,
    /// Median time from a trap's message to its page being writable, microseconds.
    TrapUsP50 = 17,
    /// 99th percentile of the same.
    TrapUsP99 = 18,
    /// Longest trap.
    TrapUsMax = 19,
    /// The newest snapshot version (0 before the first).
    Version = 20,
    /// The oldest version that can still be read.
    OldestVersion = 21,
    /// Pages saved into shadows just before the program discarded them (munmap,
    /// madvise, free of a large block, a shrinking brk or mremap, malloc_trim).
    PagesPreserved = 22,
    /// The most bytes of shadow slots in use at once.
    ShadowPeakBytes = 23,
    /// CPU time of the shim's own threads (fault, epoch, control, prefetch), microseconds.
    ShimCpuUs = 24,
    /// Pages the prefetcher copied into shadows ahead of their first write.
    PrefetchCopied = 25,
    /// Prefetched pages written in their epoch: first writes that found their page
    /// already copied and unprotected (found by comparing at the next snapshot).
    PrefetchHits = 26,
    /// Prefetched pages not written in their epoch.
    PrefetchWaste = 27,
    /// Traps on pages the prefetcher had queued but not yet copied.
    PrefetchLate = 28,
    /// Fault notes the fault thread could not hand to the prefetcher (queue full).
    QueueDropped = 29,
    /// CPU time of the prefetch thread, microseconds (`prefetch_cpu_s` in JSON).
    PrefetchCpuUs = 30,
    /// How many pages the prefetcher may copy per epoch now (its adaptive budget).
    PrefetchBudget = 31,
    /// Hits and waste of the pages each predictor proposed (a page two predictors
    /// proposed counts for both).
    HistoryHits = 32,
    HistoryWaste = 33,
    StrideHits = 34,
    StrideWaste = 35,
    MarkovHits = 36,
    MarkovWaste = 37,
    ScoreHits = 38,
    ScoreWaste = 39,
    /// Of `PrefetchCopied`, the pages the protect pass copied while writes were held
    /// (the pages found written in the last epochs, see the shim's `boundary_copy`).
    PrefetchAtPass = 40,
    /// The longest such copy, microseconds (part of the pass's time).
    PrefetchAtPassUsMax = 41,
    /// The automatic snapshot interval in force, ms: `MEMSHADOW_INTERVAL_MS`, or longer
    /// while the overhead governor stretches it (0: snapshots on request only).
    IntervalMsEffective = 42,
    /// Times the overhead governor stretched the automatic interval because snapshots
    /// cost the program more than `MEMSHADOW_MAX_OVERHEAD` of its time.
    GovernorStretches = 43,
    /// Pages whose first write after a snapshot found them unpopulated (never written):
    /// recorded as zero at that version and made writable without a copy.
    PagesZeroed = 44,
    /// Snapshots held by a holder child (`MEMSHADOW_BACKEND=holder`) instead of shadows.
    HolderSnapshots = 45,
    /// The longest holder clone, microseconds: the page-table copy stalls the program
    /// (like fork's), so it counts as a pause.
    HolderPauseUsMax = 46,
    /// Bytes only live holders keep: the pages the program wrote since each holder was
    /// made, which the kernel copied (their private resident memory, summed; refreshed
    /// by the epoch thread at each snapshot).
    HolderPinnedBytes = 47,
    /// Times `MEMSHADOW_BACKEND=auto` changed the backend of the next snapshot (shadows
    /// to a holder or back).
    BackendSwitches = 48,
    /// The fatal signal the program is dying of, under the flight recorder
    /// (`MEMSHADOW_FLIGHT=1`): set when its crashing thread asks for a last snapshot.
    FlightSignal = 49,
    /// The version of that last snapshot, once taken (0 before), for the recorder.
    FlightVersion = 50,
    /// The newest version a recorder (`memshadow record`, `run --record`) has written to
    /// its store (0: none), as it told the process (control `recorded V MS`).
    RecordedVersion = 51,
    /// When that version was taken, ms since the Unix epoch: `memshadow top` shows how
    /// far the store is behind the program.
    RecordedTimeMs = 52,
    /// Snapshots whose holder copied the program's resident memory into itself at once
    /// (a program that rewrites most of its memory between snapshots: its own first
    /// writes then find pages nobody shares, where a kernel copy with the other cores'
    /// TLBs flushed costs it 4-17 us each).
    HolderCopiedAtOnce = 53,
}

impl Counter {
    /// Every assigned counter, in slot order.
    pub const ALL: [Counter; 54] = [
        Counter::TrackedRegions,
        Counter::TrackedBytes,
        Counter::Rescans,
        Counter::RegionMaps,
        Counter::RegionUnmaps,
        Counter::ThreadsStarted,
        Counter::RegionOverflow,
        Counter::Epochs,
        Counter::Traps,
        Counter::PagesProtected,
        Counter::PagesCopied,
        Counter::HeldFaults,
        Counter::ShadowBytes,
        Counter::VersionsRetained,
        Counter::IncompleteSnapshots,
        Counter::ProtectPassUsLast,
        Counter::ProtectPassUsMax,
        Counter::TrapUsP50,
        Counter::TrapUsP99,
        Counter::TrapUsMax,
        Counter::Version,
        Counter::OldestVersion,
        Counter::PagesPreserved,
        Counter::ShadowPeakBytes,
        Counter::ShimCpuUs,
        Counter::PrefetchCopied,
        Counter::PrefetchHits,
        Counter::PrefetchWaste,
        Counter::PrefetchLate,
        Counter::QueueDropped,
        Counter::PrefetchCpuUs,
        Counter::PrefetchBudget,
        Counter::HistoryHits,
        Counter::HistoryWaste,
        Counter::StrideHits,
        Counter::StrideWaste,
        Counter::MarkovHits,
        Counter::MarkovWaste,
        Counter::ScoreHits,
        Counter::ScoreWaste,
        Counter::PrefetchAtPass,
        Counter::PrefetchAtPassUsMax,
        Counter::IntervalMsEffective,
        Counter::GovernorStretches,
        Counter::PagesZeroed,
        Counter::HolderSnapshots,
        Counter::HolderPauseUsMax,
        Counter::HolderPinnedBytes,
        Counter::BackendSwitches,
        Counter::FlightSignal,
        Counter::FlightVersion,
        Counter::RecordedVersion,
        Counter::RecordedTimeMs,
        Counter::HolderCopiedAtOnce,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            Counter::TrackedRegions => "tracked_regions",
            Counter::TrackedBytes => "tracked_bytes",
            Counter::Rescans => "rescans",
            Counter::RegionMaps => "region_maps",
            Counter::RegionUnmaps => "region_unmaps",
            Counter::ThreadsStarted => "threads_started",
            Counter::RegionOverflow => "region_overflow",
            Counter::Epochs => "epochs",
            Counter::Traps => "traps",
            Counter::PagesProtected => "pages_protected",
            Counter::PagesCopied => "pages_copied",
            Counter::HeldFaults => "held_faults",
            Counter::ShadowBytes => "shadow_bytes",
            Counter::VersionsRetained => "versions_retained",
            Counter::IncompleteSnapshots => "incomplete_snapshots",
            Counter::ProtectPassUsLast => "protect_pass_us_last",
            Counter::ProtectPassUsMax => "protect_pass_us_max",
            Counter::TrapUsP50 => "trap_us_p50",
            Counter::TrapUsP99 => "trap_us_p99",
            Counter::TrapUsMax => "trap_us_max",
            Counter::Version => "version",
            Counter::OldestVersion => "oldest_version",
            Counter::PagesPreserved => "pages_preserved",
            Counter::ShadowPeakBytes => "shadow_peak_bytes",
            Counter::ShimCpuUs => "shim_cpu_us",
            Counter::PrefetchCopied => "prefetch_copied",
            Counter::PrefetchHits => "prefetch_hits",
            Counter::PrefetchWaste => "prefetch_waste",
            Counter::PrefetchLate => "prefetch_late",
            Counter::QueueDropped => "queue_dropped",
            Counter::PrefetchCpuUs => "prefetch_cpu_us",
            Counter::PrefetchBudget => "prefetch_budget",
            Counter::HistoryHits => "history_hits",
            Counter::HistoryWaste => "history_waste",
            Counter::StrideHits => "stride_hits",
            Counter::StrideWaste => "stride_waste",
            Counter::MarkovHits => "markov_hits",
            Counter::MarkovWaste => "markov_waste",
            Counter::ScoreHits => "score_hits",
            Counter::ScoreWaste => "score_waste",
            Counter::PrefetchAtPass => "prefetch_at_pass",
            Counter::PrefetchAtPassUsMax => "prefetch_at_pass_us_max",
            Counter::IntervalMsEffective => "interval_ms_effective",
            Counter::GovernorStretches => "governor_stretches",
            Counter::PagesZeroed => "pages_zeroed",
            Counter::HolderSnapshots => "holder_snapshots",
            Counter::HolderPauseUsMax => "holder_pause_us_max",
            Counter::HolderPinnedBytes => "holder_pinned_bytes",
            Counter::BackendSwitches => "backend_switches",
            Counter::FlightSignal => "flight_signal",
            Counter::FlightVersion => "flight_version",
            Counter::RecordedVersion => "recorded_version",
            Counter::RecordedTimeMs => "recorded_time_ms",
            Counter::HolderCopiedAtOnce => "holder_copied_at_once",
        }
    }
}

/// One thread's allocation counters, a cache line of its own.
#[repr(C, align(64))]
pub struct HeapStripe {
    /// Blocks handed out (malloc, calloc, realloc(NULL, n), the aligned allocators).
    pub allocs: AtomicU64,
    /// Blocks given back (free, realloc(p, 0)).
    pub frees: AtomicU64,
    /// Usable bytes handed out, including growth by realloc.
    pub alloc_bytes: AtomicU64,
    /// Usable bytes given back, including shrinking by realloc.
    pub free_bytes: AtomicU64,
    /// The owning thread's thread pointer (its TCB address): 0 never owned, 1 released
    /// by an exited thread. A thread pointer belongs to one live thread at a time, so a
    /// stripe is never written by two threads at once. Unused for the overflow stripe.
    pub owner_key: AtomicU64,
    _pad: [u8; 24],
}

/// The page as the shim maps it.
#[repr(C, align(4096))]
pub struct StatsPage {
    pub magic: [u8; 8],
    pub layout_version: AtomicU32,
    pub state: AtomicU32,
    pub pid: AtomicU32,
    pub uid: AtomicU32,
    pub start_time_ticks: AtomicU64,
    pub run_id: AtomicU64,
    pub created_unix_ms: AtomicU64,
    pub exited_unix_ms: AtomicU64,
    _pad0: [u8; 8],
    pub command: [u8; COMMAND_BYTES],
    _pad1: [u8; 512 - 64 - COMMAND_BYTES],
    pub counters: [AtomicU64; COUNTER_SLOTS],
    _pad2: [u8; 2048 - 512 - 8 * COUNTER_SLOTS],
    pub stripes: [HeapStripe; HEAP_STRIPES],
    _pad3: [u8; STATS_PAGE_SIZE - 2048 - 64 * HEAP_STRIPES],
}

const _: () = {
    assert!(size_of::<HeapStripe>() == 64);
    assert!(size_of::<StatsPage>() == STATS_PAGE_SIZE);
    assert!(offset_of!(StatsPage, state) == 12);
    assert!(offset_of!(StatsPage, start_time_ticks) == 24);
    assert!(offset_of!(StatsPage, exited_unix_ms) == 48);
    assert!(offset_of!(StatsPage, command) == 64);
    assert!(offset_of!(StatsPage, counters) == 512);
    assert!(offset_of!(StatsPage, stripes) == 2048);
};

impl StatsPage {
    /// The counter slot for `c`.
    pub fn counter(&self, c: Counter) -> &AtomicU64 {
        &self.counters[c.index()]
    }

    /// Reads the page through its atomics (for the process that maps it; other readers
    /// decode the file's bytes with [`StatsRecord::decode`]).
    pub fn read(&self) -> StatsRecord {
        use core::sync::atomic::Ordering::Relaxed;
        let cmd_len = self
            .command
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(COMMAND_BYTES);
        let mut r = StatsRecord {
            state: ProcessState::from_u32(self.state.load(Relaxed)),
            pid: self.pid.load(Relaxed),
            uid: self.uid.load(Relaxed),
            start_time_ticks: self.start_time_ticks.load(Relaxed),
            run_id: self.run_id.load(Relaxed),
            created_unix_ms: self.created_unix_ms.load(Relaxed),
            exited_unix_ms: self.exited_unix_ms.load(Relaxed),
            command: String::from_utf8_lossy(&self.command[..cmd_len]).into_owned(),
            allocs: 0,
            frees: 0,
            alloc_bytes: 0,
            free_bytes: 0,
            counters: [0; COUNTER_SLOTS],
        };
        for (slot, c) in r.counters.iter_mut().zip(&self.counters) {
            *slot = c.load(Relaxed);
        }
        for s in &self.stripes {
            r.allocs = r.allocs.wrapping_add(s.allocs.load(Relaxed));
            r.frees = r.frees.wrapping_add(s.frees.load(Relaxed));
            r.alloc_bytes = r.alloc_bytes.wrapping_add(s.alloc_bytes.load(Relaxed));
            r.free_bytes = r.free_bytes.wrapping_add(s.free_bytes.load(Relaxed));
        }
        r
    }
}

/// Why a stats file could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a page (file still being created, or truncated).
    Short(usize),
    /// The first eight bytes are not [`STATS_MAGIC`].
    BadMagic,
    /// A layout this build does not know.
    Version(u32),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "stats page is {n} bytes, expected {STATS_PAGE_SIZE}"),
            DecodeError::BadMagic => write!(f, "not a memshadow stats page (bad magic)"),
            DecodeError::Version(v) => write!(
                f,
                "stats page layout {v} is not supported (this memshadow reads layout {STATS_LAYOUT_VERSION})"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A decoded copy of a stats page, stripes summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRecord {
    pub state: Option<ProcessState>,
    pub pid: u32,
    pub uid: u32,
    pub start_time_ticks: u64,
    pub run_id: u64,
    pub created_unix_ms: u64,
    pub exited_unix_ms: u64,
    pub command: String,
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
    /// Every counter slot, assigned or not.
    pub counters: [u64; COUNTER_SLOTS],
}

/// The statistic keys, in the order the CLI prints them: the heap totals, then every
/// counter. They are the JSON keys scripts rely on.
pub fn field_names() -> impl Iterator<Item = &'static str> {
    ["allocs", "frees", "live_bytes"]
        .into_iter()
        .chain(Counter::ALL.iter().map(|c| c.name()))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl StatsRecord {
    /// Decodes the bytes of a stats file.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < STATS_PAGE_SIZE {
            return Err(DecodeError::Short(b.len()));
        }
        if b[0..8] != STATS_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = u32_at(b, offset_of!(StatsPage, layout_version));
        if version != STATS_LAYOUT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let cmd_off = offset_of!(StatsPage, command);
        let cmd = &b[cmd_off..cmd_off + COMMAND_BYTES];
        let cmd_len = cmd.iter().position(|&c| c == 0).unwrap_or(COMMAND_BYTES);
        let mut counters = [0u64; COUNTER_SLOTS];
        let c_off = offset_of!(StatsPage, counters);
        for (i, slot) in counters.iter_mut().enumerate() {
            *slot = u64_at(b, c_off + 8 * i);
        }
        let (mut allocs, mut frees, mut alloc_bytes, mut free_bytes) = (0u64, 0u64, 0u64, 0u64);
        let s_off = offset_of!(StatsPage, stripes);
        for i in 0..HEAP_STRIPES {
            let base = s_off + 64 * i;
            allocs = allocs.wrapping_add(u64_at(b, base + offset_of!(HeapStripe, allocs)));
            frees = frees.wrapping_add(u64_at(b, base + offset_of!(HeapStripe, frees)));
            alloc_bytes =
                alloc_bytes.wrapping_add(u64_at(b, base + offset_of!(HeapStripe, alloc_bytes)));
            free_bytes =
                free_bytes.wrapping_add(u64_at(b, base + offset_of!(HeapStripe, free_bytes)));
        }
        Ok(StatsRecord {
            state: ProcessState::from_u32(u32_at(b, offset_of!(StatsPage, state))),
            pid: u32_at(b, offset_of!(StatsPage, pid)),
            uid: u32_at(b, offset_of!(StatsPage, uid)),
            start_time_ticks: u64_at(b, offset_of!(StatsPage, start_time_ticks)),
            run_id: u64_at(b, offset_of!(StatsPage, run_id)),
            created_unix_ms: u64_at(b, offset_of!(StatsPage, created_unix_ms)),
            exited_unix_ms: u64_at(b, offset_of!(StatsPage, exited_unix_ms)),
            command: String::from_utf8_lossy(&cmd[..cmd_len]).into_owned(),
            allocs,
            frees,
            alloc_bytes,
            free_bytes,
            counters,
        })
    }

    /// Bytes allocated and not yet freed. Saturates at zero: a process may free blocks
    /// that were allocated before the shim could count them.
    pub fn live_bytes(&self) -> u64 {
        self.alloc_bytes.saturating_sub(self.free_bytes)
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c.index()]
    }

    /// Every statistic as `(key, value)`, keys as [`field_names`] lists them.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let heap = [self.allocs, self.frees, self.live_bytes()];
        let counters = Counter::ALL.iter().map(|&c| self.counter(c));
        field_names()
            .zip(heap.into_iter().chain(counters))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::Ordering::Relaxed;

    fn page_bytes(p: &StatsPage) -> Vec<u8> {
        // SAFETY: StatsPage is plain old data made of integers and atomics with no
        // padding that could be uninitialised (all padding is explicit byte arrays).
        unsafe { core::slice::from_raw_parts(p as *const StatsPage as *const u8, STATS_PAGE_SIZE) }
            .to_vec()
    }

    fn zeroed_page() -> Box<StatsPage> {
        // SAFETY: every field of StatsPage is valid when all bits are zero.
        unsafe { Box::new(core::mem::zeroed()) }
    }

    #[test]
    fn decode_sums_stripes_and_reads_header() {
        let mut p = zeroed_page();
        p.magic = STATS_MAGIC;
        p.layout_version.store(STATS_LAYOUT_VERSION, Relaxed);
        p.state.store(ProcessState::Running as u32, Relaxed);
        p.pid.store(4242, Relaxed);
        p.command[..7].copy_from_slice(b"python3");
        p.counter(Counter::TrackedBytes).store(1 << 20, Relaxed);
        p.stripes[0].allocs.store(10, Relaxed);
        p.stripes[5].allocs.store(7, Relaxed);
        p.stripes[OVERFLOW_STRIPE].frees.store(3, Relaxed);
        p.stripes[2].alloc_bytes.store(1000, Relaxed);
        p.stripes[9].free_bytes.store(400, Relaxed);
        let r = StatsRecord::decode(&page_bytes(&p)).unwrap();
        assert_eq!(
            r,
            p.read(),
            "decoding the bytes and reading the atomics agree"
        );
        assert_eq!(r.pid, 4242);
        assert_eq!(r.state, Some(ProcessState::Running));
        assert_eq!(r.command, "python3");
        assert_eq!(r.allocs, 17);
        assert_eq!(r.frees, 3);
        assert_eq!(r.live_bytes(), 600);
        assert_eq!(r.counter(Counter::TrackedBytes), 1 << 20);
        let f = r.fields();
        assert_eq!(f[0], ("allocs", 17));
        assert!(f.contains(&("tracked_bytes", 1 << 20)));
    }

    #[test]
    fn decode_rejects_bad_input() {
        let mut p = zeroed_page();
        assert_eq!(StatsRecord::decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        assert_eq!(
            StatsRecord::decode(&page_bytes(&p)),
            Err(DecodeError::BadMagic)
        );
        p.magic = STATS_MAGIC;
        p.layout_version.store(99, Relaxed);
        assert_eq!(
            StatsRecord::decode(&page_bytes(&p)),
            Err(DecodeError::Version(99))
        );
    }

    #[test]
    fn live_bytes_saturates() {
        let mut p = zeroed_page();
        p.magic = STATS_MAGIC;
        p.layout_version.store(STATS_LAYOUT_VERSION, Relaxed);
        p.stripes[1].free_bytes.store(50, Relaxed);
        assert_eq!(
            StatsRecord::decode(&page_bytes(&p)).unwrap().live_bytes(),
            0
        );
    }

    #[test]
    fn counter_names_are_unique_and_slots_in_range() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(c.index() < COUNTER_SLOTS);
        }
    }
}
