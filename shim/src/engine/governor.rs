//! The overhead governor: automatic snapshots never cost the program more than
//! `MEMSHADOW_MAX_OVERHEAD` of its time.
//!
//! The pacing rule of the epoch thread bounds the protect pass, not the traps after it: a
//! program that writes at random spends each whole period trapping, and ran 20-370 times
//! slower under 10 ms snapshots. So the shim measures what snapshots cost the program in
//! each window between two automatic decisions (one per pass), as time its threads spend
//! stopped by them:
//!
//! - every trap: the fault thread's time from reading the message to the page being
//!   writable, plus [`TRAP_UNSEEN_NS`] for what that thread cannot see (the fault's entry
//!   into the kernel, the message's delivery, the wake-ups of both threads);
//! - every fault held by a pass: the whole time the pass held writes (from the version's
//!   opening until the held faults are resolved, the boundary copy included). A held
//!   thread waited at most that long; counting all of it errs towards stretching;
//! - while a holder keeps the version (`engine::holder`), the process's minor faults,
//!   [`HOLDER_FAULT_NS`] each, up to as many as it had anonymous pages resident at the
//!   holder's clone: the kernel copies each first write to such a page for the holder, in
//!   the writer's own system time, where no trap shows it (a first touch of fresh memory
//!   is a minor fault too, but copies nothing: hence the cap). Without this the governor
//!   never stretched for holders, and a program rewriting scattered pages ran 5-36x
//!   slower under them;
//! - the CPU time of the shim's own threads (fault, prefetch, epoch): on a machine whose
//!   cores the program keeps busy (xz -T2 on two cores) it is taken from the program. For
//!   a single-threaded program with a core to spare this counts trap service twice, which
//!   again errs towards stretching: without it, `xz -T2` stayed 4x slower.
//!
//! The cost is summed over threads, so with several writers the fraction may exceed 1.
//! When the cost of a window exceeds the limit the automatic interval is multiplied by
//! the power of two at or above cost / limit, at least 2 (up to [`MAX_STRETCHED_MS`]): a
//! window four times over the limit stretches it 4x at once; once [`QUIET_WINDOWS`] windows in a row cost less than a quarter
//! of the limit it is halved, never below the configured interval. Halving a period whose
//! fixed cost per snapshot was under a quarter of the limit at most doubles the fraction,
//! which stays under half of it: the rule does not swing. Explicit snapshots (the CLI,
//! the C API) are always taken; their cost counts in the window like any other.
//!
//! Why 0.5 by default: a program whose threads lose half their time to snapshots runs
//! about twice as long; what the shim cannot see (the copies' memory traffic, its own
//! threads' CPU on a machine with few cores, TLB flushes) adds to that, and the goal is
//! that no program runs more than 3x slower under 10 ms snapshots than without them.
//! `MEMSHADOW_MAX_OVERHEAD=1` turns the governor off: snapshots come at the configured
//! interval whatever they cost.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use memshadow_format::stats::Counter;

/// What a trap costs its thread beyond the fault thread's measured service time (read to
/// unprotected): the fault's entry into the kernel, the message's delivery and the wake-up
/// of the writer. Measured here (bench/RESULTS.md, "Where a trap's time goes"): with the
/// handler polling, as the fault thread does in a burst, a write costs its thread
/// 13.8-16.8 us in all, of which the copy and the unprotect the handler times are 9-12.
pub const TRAP_UNSEEN_NS: u64 = 5_000;

/// What a first write costs the program while a holder keeps the page: the kernel's
/// copy-on-write fault, and the TLB work after it. Measured here, natively against under
/// `MEMSHADOW_BACKEND=holder`: python rewriting random bytes of 256 MiB (snapshots every
/// 300 ms) spent 3.17 s more system time for 498,000 more minor faults (6.4 us each);
/// scatter_writer over 128 MiB, 4.7 us each; with two writers 17 us (bench/RESULTS.md).
pub const HOLDER_FAULT_NS: u64 = 6_000;

/// The longest the governor stretches the automatic interval to (a minute): a program
/// that writes that much still gets a snapshot every minute.
pub const MAX_STRETCHED_MS: u64 = 60_000;

/// Windows in a row that must cost under a quarter of the limit before the interval is
/// halved: one quiet window (the program waiting for input) is not a trend.
pub const QUIET_WINDOWS: u32 = 4;

/// The limit that means "no governor".
pub const OFF: f32 = 1.0;

/// What the governor decided for the next window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The automatic interval from now on, ms.
    pub interval_ms: u64,
    /// Whether this window stretched it.
    pub stretched: bool,
    /// Quiet windows in a row so far (for the next decision).
    pub quiet: u32,
}

/// The rule, a pure function: a window of `wall_ns` in which snapshots cost the program
/// `cost_ns`, under the interval `current_ms` (configured: `configured_ms`), with the limit
/// `max_overhead` (a fraction of wall time, 1 = off) and `quiet` quiet windows before it.
pub fn decide(
    configured_ms: u64,
    current_ms: u64,
    cost_ns: u64,
    wall_ns: u64,
    max_overhead: f32,
    quiet: u32,
) -> Decision {
    let current = current_ms.max(configured_ms);
    let keep = Decision {
        interval_ms: current,
        stretched: false,
        quiet: 0,
    };
    if configured_ms == 0 || max_overhead >= OFF || wall_ns == 0 {
        return keep;
    }
    let fraction = cost_ns as f64 / wall_ns as f64;
    let limit = f64::from(max_overhead);
    if fraction > limit {
        // As many doublings at once as the cost is over the limit (at least one): a
        // program that runs for a fraction of a second must not spend it in a ramp of
        // one doubling per window.
        let factor = ((fraction / limit).ceil() as u64).clamp(2, 1 << 16);
        let longer = current
            .saturating_mul(factor.next_power_of_two())
            .min(MAX_STRETCHED_MS.max(configured_ms));
        return Decision {
            interval_ms: longer,
            stretched: longer > current,
            quiet: 0,
        };
    }
    if fraction < limit / 4.0 && current > configured_ms {
        let quiet = quiet + 1;
        if quiet >= QUIET_WINDOWS {
            return Decision {
                interval_ms: (current / 2).max(configured_ms),
                stretched: false,
                quiet: 0,
            };
        }
        return Decision { quiet, ..keep };
    }
    keep
}

/// Cost of snapshots to the program since the last decision, ns (summed over threads).
static COST_NS: AtomicU64 = AtomicU64::new(0);
/// The automatic interval in force, ms (0: not decided yet: the configured one).
static EFFECTIVE_MS: AtomicU64 = AtomicU64::new(0);
/// When the current window began (`engine::now_ns`), 0: not yet.
static WINDOW_START: AtomicU64 = AtomicU64::new(0);
static QUIET: AtomicU32 = AtomicU32::new(0);
/// The limit, as `f32` bits (set at start-up from the configuration).
static MAX_OVERHEAD_BITS: AtomicU32 = AtomicU32::new(0x3f00_0000); // 0.5
static SAID: AtomicBool = AtomicBool::new(false);
/// `shim_cpu_us` at the start of the window.
static CPU_US: AtomicU64 = AtomicU64::new(0);
/// [`pages_copied`] at the start of the window.
static COPIED_AT_START: AtomicU64 = AtomicU64::new(0);
/// The shadow budget, in pages (0: unknown, no cap).
static BUDGET_PAGES: AtomicU64 = AtomicU64::new(0);
/// The process's minor faults when the window began, if a holder keeps its version
/// ([`NOT_HELD`]: shadows do).
static HELD_FAULTS_FROM: AtomicU64 = AtomicU64::new(NOT_HELD);
const NOT_HELD: u64 = u64::MAX;
/// The process's anonymous pages resident when that window began: the most the
/// kernel can copy for its holder.
static HELD_PAGES: AtomicU64 = AtomicU64::new(0);

/// The shim's threads' CPU time so far, us.
fn shim_cpu_us() -> u64 {
    crate::stats::page()
        .counter(Counter::ShimCpuUs)
        .load(Ordering::Relaxed)
}

/// Sets the limit and the shadow budget (`budget_pages`, for [`budget_cap_ms`]) and
/// starts afresh at the configured interval (start-up, and a forked child's new epoch
/// thread).
pub fn reset(configured_ms: u64, max_overhead: f32, budget_pages: u64) {
    MAX_OVERHEAD_BITS.store(max_overhead.to_bits(), Ordering::Relaxed);
    EFFECTIVE_MS.store(configured_ms, Ordering::Relaxed);
    COST_NS.store(0, Ordering::Relaxed);
    WINDOW_START.store(0, Ordering::Relaxed);
    QUIET.store(0, Ordering::Relaxed);
    CPU_US.store(shim_cpu_us(), Ordering::Relaxed);
    COPIED_AT_START.store(pages_copied(), Ordering::Relaxed);
    BUDGET_PAGES.store(budget_pages, Ordering::Relaxed);
    HELD_FAULTS_FROM.store(NOT_HELD, Ordering::Relaxed);
    crate::stats::set(Counter::IntervalMsEffective, configured_ms);
}

/// A trap the fault thread served in `service_ns` (message read to page writable).
#[inline]
pub fn note_trap(service_ns: u64) {
    COST_NS.fetch_add(service_ns + TRAP_UNSEEN_NS, Ordering::Relaxed);
}

/// A pass held writes for `held_ns`, and `held` faults waited for it.
pub fn note_pass(held_ns: u64, held: usize) {
    let n = held as u64;
    COST_NS.fetch_add(
        held_ns.saturating_mul(n) + n * TRAP_UNSEEN_NS,
        Ordering::Relaxed,
    );
}

/// The automatic interval in force for `configured_ms`.
pub fn interval_ms(configured_ms: u64) -> u64 {
    if configured_ms == 0 {
        return 0;
    }
    EFFECTIVE_MS.load(Ordering::Relaxed).max(configured_ms)
}

/// The epoch thread after a pass, at `now`: ends the window, decides, returns the interval
/// for the next one. `held`: the pass's version is a holder's, made with that many of
/// the program's anonymous pages resident, so the window it opens counts the kernel's
/// copies.
pub fn after_pass(configured_ms: u64, now: u64, held: Option<u64>) -> u64 {
    let (start, cost, copied) = window(now, true);
    let faults_from = match held {
        Some(pages) => {
            HELD_PAGES.store(pages, Ordering::Relaxed);
            crate::base::sys::minor_faults()
        }
        None => NOT_HELD,
    };
    HELD_FAULTS_FROM.store(faults_from, Ordering::Relaxed);
    let current = interval_ms(configured_ms);
    if start == 0 || configured_ms == 0 {
        // The first window starts now.
        return current;
    }
    let d = decide_now(
        configured_ms,
        current,
        cost,
        now.saturating_sub(start),
        copied,
    );
    QUIET.store(d.quiet, Ordering::Relaxed);
    apply(&d, configured_ms, cost, now.saturating_sub(start));
    d.interval_ms
}

/// What snapshots have cost the program's own threads since the last pass ended: traps
/// and held faults, without the shim's CPU (on another core, the prefetcher's copying
/// delays no program thread).
pub fn program_cost_so_far_ns() -> u64 {
    COST_NS.load(Ordering::Relaxed)
}

/// The current window at `now`: when it began (0: not yet), what snapshots have cost the
/// program in it (traps, held faults, the kernel's copies for a holder, the shim's CPU)
/// and the pages copied in it (for the budget cap). `end` ends it: the next window counts
/// from `now`.
fn window(now: u64, end: bool) -> (u64, u64, u64) {
    let take = |counter: &AtomicU64, from_now: u64| {
        if end {
            counter.swap(from_now, Ordering::Relaxed)
        } else {
            counter.load(Ordering::Relaxed)
        }
    };
    let start = take(&WINDOW_START, now);
    let cpu_us = shim_cpu_us();
    let cpu_ns = cpu_us.saturating_sub(take(&CPU_US, cpu_us)) * 1000;
    let cost = take(&COST_NS, 0) + cpu_ns + kernel_copies_ns();
    let copied_now = pages_copied();
    let copied = copied_now.saturating_sub(take(&COPIED_AT_START, copied_now));
    (start, cost, copied)
}

/// What the kernel's copies for the holder keeping this window's version have cost the
/// program so far (0 under shadows).
fn kernel_copies_ns() -> u64 {
    match HELD_FAULTS_FROM.load(Ordering::Relaxed) {
        NOT_HELD => 0,
        from => {
            let faults = crate::base::sys::minor_faults().saturating_sub(from);
            faults.min(HELD_PAGES.load(Ordering::Relaxed)) * HOLDER_FAULT_NS
        }
    }
}

/// The rule on this window's cost so far, with the limit in force, and no stretch past
/// what the shadow budget holds (see [`budget_cap_ms`]).
fn decide_now(configured_ms: u64, current: u64, cost: u64, wall_ns: u64, copied: u64) -> Decision {
    let max = f32::from_bits(MAX_OVERHEAD_BITS.load(Ordering::Relaxed));
    let mut d = decide(
        configured_ms,
        current,
        cost,
        wall_ns,
        max,
        QUIET.load(Ordering::Relaxed),
    );
    if d.stretched {
        let cap = budget_cap_ms(BUDGET_PAGES.load(Ordering::Relaxed), copied, wall_ns);
        d.interval_ms = d.interval_ms.min(cap.max(current));
        d.stretched = d.interval_ms > current;
    }
    d
}

/// The longest period whose copies, at the rate of `copied_pages` in `wall_ns`, fill at
/// most half of a shadow budget of `budget_pages`: a longer epoch's version would not
/// fit beside the others, and the snapshot would be given up (a program rewriting a
/// heap as large as the budget, in a period the governor stretched, ran out).
pub fn budget_cap_ms(budget_pages: u64, copied_pages: u64, wall_ns: u64) -> u64 {
    if budget_pages == 0 || copied_pages == 0 {
        return u64::MAX;
    }
    let ns = (budget_pages / 2) as u128 * wall_ns as u128 / copied_pages as u128;
    (ns / 1_000_000).min(u64::MAX as u128) as u64
}

/// Pages copied into shadows so far (by traps and by the prefetcher).
fn pages_copied() -> u64 {
    let page = crate::stats::page();
    page.counter(Counter::PagesCopied).load(Ordering::Relaxed)
        + page
            .counter(Counter::PrefetchCopied)
            .load(Ordering::Relaxed)
}

/// Puts decision `d` in force: the interval, the statistics, the one line.
fn apply(d: &Decision, configured_ms: u64, cost: u64, wall_ns: u64) {
    EFFECTIVE_MS.store(d.interval_ms, Ordering::Relaxed);
    crate::stats::set(Counter::IntervalMsEffective, d.interval_ms);
    if d.stretched {
        crate::stats::add(Counter::GovernorStretches, 1);
        if !SAID.swap(true, Ordering::Relaxed) {
            let max = f32::from_bits(MAX_OVERHEAD_BITS.load(Ordering::Relaxed));
            crate::base::log::info!(
                "snapshots cost this program {:.0}% of its time (more than MEMSHADOW_MAX_OVERHEAD={max}): automatic snapshots now every {} ms instead of {configured_ms} ms, shorter again when the cost falls (interval_ms_effective, governor_stretches in the stats)",
                cost as f64 * 100.0 / wall_ns.max(1) as f64,
                d.interval_ms
            );
        }
    }
}

/// The epoch thread when an automatic pass is due, at `now`: if the window so far has
/// already cost more than the limit, the pass waits: the stretched interval (counted from
/// the last pass), else `None`. Without this the first decision came only after the
/// second pass, and a program that runs for a tenth of a second paid for both.
pub fn before_due_pass(configured_ms: u64, now: u64) -> Option<u64> {
    let (start, cost, copied) = window(now, false);
    if start == 0 || configured_ms == 0 {
        return None;
    }
    let wall = now.saturating_sub(start);
    let d = decide_now(
        configured_ms,
        interval_ms(configured_ms),
        cost,
        wall,
        copied,
    );
    if !d.stretched {
        return None;
    }
    // The window goes on: the pass that ends it decides on all of it.
    apply(&d, configured_ms, cost, wall);
    Some(d.interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn costly_windows_stretch_the_interval_as_far_as_they_are_over_up_to_the_cap() {
        let d = decide(10, 10, 8 * MS, 10 * MS, 0.5, 0);
        assert_eq!((d.interval_ms, d.stretched), (20, true));
        // 3.5 times the limit: 4x at once; 10 times: 16x.
        let d = decide(10, 10, 17_500_000, 10 * MS, 0.5, 0);
        assert_eq!((d.interval_ms, d.stretched), (40, true));
        let d = decide(10, 10, 50 * MS, 10 * MS, 0.5, 0);
        assert_eq!((d.interval_ms, d.stretched), (160, true));
        let d = decide(10, 40, 30 * MS, 40 * MS, 0.5, 3);
        assert_eq!((d.interval_ms, d.stretched, d.quiet), (80, true, 0));
        let d = decide(10, MAX_STRETCHED_MS, 60_000 * MS, 60_000 * MS, 0.5, 0);
        assert_eq!((d.interval_ms, d.stretched), (MAX_STRETCHED_MS, false));
        let d = decide(10, 40_000, 60_000 * MS, 60_000 * MS, 0.5, 0);
        assert_eq!((d.interval_ms, d.stretched), (MAX_STRETCHED_MS, true));
    }

    #[test]
    fn the_cost_is_summed_over_threads_and_may_exceed_the_window() {
        let d = decide(1, 1, 3 * MS, MS, 0.9, 0);
        assert_eq!((d.interval_ms, d.stretched), (4, true));
    }

    #[test]
    fn cheap_windows_keep_the_interval() {
        for cost in [0, MS, 5 * MS] {
            let d = decide(10, 10, cost, 10 * MS, 0.5, 0);
            assert_eq!((d.interval_ms, d.stretched), (10, false), "cost {cost}");
        }
    }

    #[test]
    fn quiet_windows_in_a_row_halve_it_back_to_the_configured_interval() {
        let mut current = 80;
        let mut quiet = 0;
        let mut seen = Vec::new();
        for _ in 0..(QUIET_WINDOWS * 4) {
            let d = decide(10, current, MS, current * MS, 0.5, quiet);
            assert!(!d.stretched);
            current = d.interval_ms;
            quiet = d.quiet;
            seen.push(current);
        }
        let q = QUIET_WINDOWS as usize;
        assert_eq!(seen[q - 2], 80, "not before {QUIET_WINDOWS} quiet windows");
        assert_eq!(seen[q - 1], 40);
        assert_eq!(seen[2 * q - 1], 20);
        assert_eq!(seen[3 * q - 1], 10);
        assert_eq!(
            *seen.last().unwrap(),
            10,
            "never below the configured interval"
        );
    }

    #[test]
    fn a_window_between_a_quarter_and_the_limit_ends_a_quiet_run() {
        let d = decide(10, 80, 30 * MS, 80 * MS, 0.5, QUIET_WINDOWS - 1);
        assert_eq!((d.interval_ms, d.quiet), (80, 0));
    }

    #[test]
    fn a_fixed_cost_per_snapshot_settles_without_swinging() {
        // 6 ms of traps per snapshot whatever the period: doubling from 10 ms stops at
        // the first period where the cost is under half of it and stays there.
        let mut current = 10;
        let mut quiet = 0;
        let mut seen = Vec::new();
        for _ in 0..40 {
            let d = decide(10, current, 6 * MS, current * MS, 0.5, quiet);
            current = d.interval_ms;
            quiet = d.quiet;
            seen.push(current);
        }
        assert_eq!(seen[0], 20);
        assert!(seen[1..].iter().all(|&i| i == 20), "{seen:?}");
    }

    #[test]
    fn the_budget_caps_a_stretch_at_half_of_it_per_period() {
        // 262,144 pages (1 GiB) copied at 262 pages a millisecond: 500 ms fill half.
        assert_eq!(budget_cap_ms(262_144, 262_000, 1_000 * MS), 500);
        assert_eq!(
            budget_cap_ms(262_144, 0, 1_000 * MS),
            u64::MAX,
            "nothing copied"
        );
        assert_eq!(budget_cap_ms(0, 10, MS), u64::MAX, "no budget known");
    }

    #[test]
    fn one_turns_it_off_and_no_interval_means_nothing_to_govern() {
        let d = decide(10, 10, 100 * MS, 10 * MS, OFF, 0);
        assert_eq!((d.interval_ms, d.stretched), (10, false));
        let d = decide(0, 0, 100 * MS, 10 * MS, 0.5, 0);
        assert_eq!((d.interval_ms, d.stretched), (0, false));
        let d = decide(10, 10, 100 * MS, 0, 0.5, 0);
        assert!(!d.stretched, "an empty window decides nothing");
    }

    #[test]
    fn a_configured_interval_above_the_cap_is_never_shortened() {
        let d = decide(100_000, 100_000, 100_000 * MS, 100_000 * MS, 0.5, 0);
        assert_eq!((d.interval_ms, d.stretched), (100_000, false));
    }
}
