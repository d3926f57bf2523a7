//! Epochs: the protect pass that takes a snapshot.
//!
//! A pass re-scans the regions, registers every tracked range with userfaultfd
//! (registering an already registered range is a no-op), opens version `v+1` and
//! write-protects everything. Write faults that arrive while the pass runs are held (not
//! resolved) until it ends: resolving one early would let its thread go on to write a
//! page the pass has not protected yet, and the snapshot would be a state that never
//! existed. Held this way, the snapshot is the memory at the end of the pass.

use crate::engine::{self, TrackedRange};
use crate::range::Range;
use crate::sync::SpinLock;
use crate::uffd::Uffd;
use crate::{regions, stats, sys};
use memshadow_format::stats::Counter;

/// Pages write-protected per ioctl: large enough to be cheap, small enough that a fault
/// in a protected part is not held behind a long ioctl.
const PROTECT_CHUNK: usize = 512 * 4096;

/// Passes run one at a time. The lock holds the tracked list of the last pass (the
/// engine holds the same list for readers; the pass builds the next one from this copy
/// without the engine lock).
static PASS: SpinLock<Vec<TrackedRange>> = SpinLock::new(Vec::new());

/// Which parts of `new` were tracked before (keep their `since`) and which are new
/// (tracked since `v`). Both lists are sorted and free of overlaps.
pub fn carry_since(old: &[TrackedRange], new: &[Range], v: u64) -> Vec<TrackedRange> {
    let mut out = Vec::with_capacity(new.len() + old.len());
    for &r in new {
        let mut cursor = r.start;
        let first = old.partition_point(|t| t.range.end <= r.start);
        for t in old[first..].iter().take_while(|t| t.range.start < r.end) {
            let start = t.range.start.max(r.start);
            if start > cursor {
                out.push(TrackedRange {
                    range: Range::new(cursor, start),
                    since: v,
                });
            }
            let end = t.range.end.min(r.end);
            out.push(TrackedRange {
                range: Range::new(start, end),
                since: t.since,
            });
            cursor = end;
        }
        if cursor < r.end {
            out.push(TrackedRange {
                range: Range::new(cursor, r.end),
                since: v,
            });
        }
    }
    out
}

/// A borrowed view of the engine's descriptor for ioctls.
fn uffd() -> core::mem::ManuallyDrop<Uffd> {
    // SAFETY: the descriptor stays open for the life of the process (engine::ensure_started
    // never closes it); ManuallyDrop keeps this view from closing it.
    core::mem::ManuallyDrop::new(unsafe { Uffd::from_raw(engine::uffd_fd()) })
}

/// Write-protects `r`. While an UNMAP/REMOVE/REMAP event is queued the kernel answers
/// EAGAIN until the fault thread has read it: yield and try again. False if the range
/// cannot be protected (unmapped meanwhile).
fn protect_retrying(u: &Uffd, r: Range) -> bool {
    for _ in 0..100_000 {
        match u.write_protect(r, true) {
            Ok(()) => return true,
            // SAFETY: sched_yield has no arguments and no memory effects.
            Err(e) if e.is_again() => unsafe {
                libc::sched_yield();
            },
            Err(_) => return false,
        }
    }
    false
}

/// Takes a snapshot: runs a protect pass and returns its version once it has ended.
pub fn snapshot() -> Result<u64, String> {
    let _blocked = sys::block_signals();
    let mut last_tracked = PASS.lock();
    let config = crate::runtime::config().ok_or("memshadow is not tracking this process")?;
    engine::ensure_started(&config)?;
    let started = engine::now_ns();

    regions::rescan();
    let wanted = regions::with_table(|t| t.tracked_ranges());
    let u = uffd();
    let mut ranges = Vec::with_capacity(wanted.len());
    for r in wanted {
        match u.register(r) {
            Ok(()) => ranges.push(r),
            // Gone meanwhile, or already registered by the program's own userfaultfd.
            Err(e) => crate::log::debug!("not tracking {:#x}..{:#x}: {e}", r.start, r.end),
        }
    }
    // Everything that allocates happens before the version opens. Once faults are held,
    // a forking host thread may be among the held, holding the arena lock (atfork): the
    // pass must then need nothing but ioctls and the engine lock until it has released
    // the held faults.
    let mut held = Vec::with_capacity(engine::HELD_CAPACITY);
    let v = engine::with(|e| e.version + 1).ok_or("the engine stopped")?;
    let tracked = carry_since(&last_tracked, &ranges, v);
    *last_tracked = tracked.clone();
    let mut tracked = Some(tracked);

    // Open the new version: from here on write faults are held.
    engine::with(|e| {
        e.version = v;
        e.pass_running = true;
        e.incomplete = false;
        e.pool.begin_version(v);
    });

    let mut pages = 0u64;
    for r in &ranges {
        let mut start = r.start;
        while start < r.end {
            let end = (start + PROTECT_CHUNK).min(r.end);
            if protect_retrying(&u, Range::new(start, end)) {
                pages += ((end - start) / 4096) as u64;
            }
            start = end;
        }
    }

    // The pass is over: this is the snapshot's instant. Release the held faults before
    // anything is freed (freeing takes the arena lock).
    engine::with(|e| {
        e.pass_running = false;
        core::mem::swap(&mut e.tracked, tracked.as_mut().expect("set above"));
        core::mem::swap(&mut e.held, &mut held);
        e.publish();
    });
    for &addr in &held {
        engine::with(|e| crate::fault::resolve(e, addr));
    }
    drop(tracked); // the previous list
    drop(held);

    let us = (engine::now_ns() - started) / 1000;
    stats::add(Counter::Epochs, 1);
    stats::add(Counter::PagesProtected, pages);
    stats::set(Counter::ProtectPassUsLast, us);
    let max = stats::page().counter(Counter::ProtectPassUsMax);
    max.fetch_max(us, core::sync::atomic::Ordering::Relaxed);
    Ok(v)
}

static API_ERROR_SAID: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// `memshadow_snapshot_v1()`: a snapshot from the calling thread. The version, or -1 with
/// errno ENOSYS (and one `memshadow:` line, the first time) when none can be taken.
pub fn snapshot_for_api() -> i64 {
    let e = sys::errno();
    match snapshot() {
        Ok(v) => {
            sys::set_errno(e);
            v as i64
        }
        Err(msg) => {
            if !API_ERROR_SAID.swap(true, core::sync::atomic::Ordering::Relaxed) {
                crate::log::error!("memshadow_snapshot: {msg}");
            }
            sys::set_errno(libc::ENOSYS);
            -1
        }
    }
}

/// The thread behind `MEMSHADOW_INTERVAL_MS`: a snapshot every `arg` milliseconds.
pub extern "C" fn interval_thread(arg: *mut core::ffi::c_void) -> *mut core::ffi::c_void {
    let ms = arg as usize as u64;
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; interruptions just shorten one period.
        unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
        if !crate::runtime::tracking() {
            break;
        }
        if let Err(e) = snapshot() {
            crate::log::error!("periodic snapshots stopped: {e}");
            break;
        }
    }
    core::ptr::null_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(a: usize, b: usize, since: u64) -> TrackedRange {
        TrackedRange {
            range: Range::new(a, b),
            since,
        }
    }

    #[test]
    fn new_parts_are_tracked_since_this_version() {
        let old = [t(0x1000, 0x5000, 1), t(0x8000, 0x9000, 2)];
        let new = [
            Range::new(0x0000, 0x6000),
            Range::new(0x8000, 0x9000),
            Range::new(0xa000, 0xb000),
        ];
        assert_eq!(
            carry_since(&old, &new, 3),
            vec![
                t(0x0000, 0x1000, 3),
                t(0x1000, 0x5000, 1),
                t(0x5000, 0x6000, 3),
                t(0x8000, 0x9000, 2),
                t(0xa000, 0xb000, 3),
            ]
        );
        assert_eq!(
            carry_since(&old, &[Range::new(0x2000, 0x3000)], 5),
            vec![t(0x2000, 0x3000, 1)]
        );
    }
}
