//! Dirty tracking under holders: which pages a holder epoch wrote, for a recorder's
//! deltas (see `engine::written`, `engine::changes`).
//!
//! A holder keeps its version by the kernel's copy-on-write; nothing traps, so no record
//! says which pages changed. Once a recorder asks for changes ([`want`]), each holder
//! pass registers the tracked memory with a second userfaultfd in `WP_ASYNC` mode
//! (a range can be registered with one descriptor at a time: it leaves the synchronous
//! one) and protects it; the kernel then resolves a first write itself, clearing the
//! page's uffd-wp bit in the same fault as the copy-on-write, and `PAGEMAP_SCAN` lists
//! and protects again the pages written. A scan cannot be at the clone's instant, so the
//! pass scans just before the clone (pages written in the epoch ending) and just after
//! (pages written around the clone: counted in both epochs); a pass that keeps memory on
//! shadows beside its holder clones it with faults held, when nothing may allocate, so
//! its second scan comes once the pass is over. Memory kept on shadows stays on the
//! synchronous descriptor and counts as written whole in both epochs. Memory newly registered
//! with the descriptor counts as written whole in the new epoch (writes between the clone
//! and its protection are not seen one by one), and memory going back to shadows counts
//! as written whole in the epoch ending. So each list holds every page written in its
//! epoch, and a few more, never fewer.
//!
//! Measured here (issue 15 notes): a write-protect fault resolved by the kernel costs
//! 1.6-5.3 us, and a scan of 65,536 written pages takes 1.2 ms; with no recorder nothing
//! is registered with the descriptor and a holder epoch costs what it did.

use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::base::range::{subtract, Range};
use crate::engine::pagemap::{Pagemap, ScanError};
use crate::engine::reprotect::within;
use crate::engine::uffd::{Uffd, WANTED_ASYNC};

/// Set by the first `changes` request that asks for a delta: holder epochs are listed
/// from the next holder pass on.
static WANTED: AtomicBool = AtomicBool::new(false);

/// The asynchronous descriptor, opened by the first pass that tracks (-1: not yet, or
/// the kernel refused it).
static ASYNC_FD: AtomicI32 = AtomicI32::new(-1);
static ASYNC_REFUSED_SAID: AtomicBool = AtomicBool::new(false);

/// Most written runs one scan keeps; past them its range counts as written whole.
const MAX_RUNS: usize = 1 << 20;

/// A recorder asked for the changes between two versions.
pub fn want() {
    WANTED.store(true, Ordering::Relaxed);
}

/// Whether holder passes track written pages.
pub fn wanted() -> bool {
    WANTED.load(Ordering::Relaxed)
}

/// The asynchronous descriptor if it is open and still the shim's.
fn opened() -> Option<core::mem::ManuallyDrop<Uffd>> {
    let fd = ASYNC_FD.load(Ordering::Acquire);
    if fd < 0 {
        return None;
    }
    if !crate::base::fds::verify(fd) {
        ASYNC_FD.store(-1, Ordering::Release);
        return None;
    }
    // SAFETY: our descriptor (verified), kept open until `forget_after_fork` or the
    // process ends.
    Some(unsafe { Uffd::borrowed(fd) })
}

/// The asynchronous descriptor, opened on first use (on the epoch thread).
fn async_uffd() -> Option<core::mem::ManuallyDrop<Uffd>> {
    if let Some(u) = opened() {
        return Some(u);
    }
    match Uffd::open(WANTED_ASYNC) {
        Ok(u) => {
            let fd = u.fd();
            core::mem::forget(u);
            ASYNC_FD.store(fd, Ordering::Release);
            // SAFETY: just opened and owned by the shim (see above).
            Some(unsafe { Uffd::borrowed(fd) })
        }
        Err(e) => {
            if !ASYNC_REFUSED_SAID.swap(true, Ordering::Relaxed) {
                crate::base::log::error!(
                    "no dirty tracking under holders ({e}): a recorder's deltas of holder versions hold every page"
                );
            }
            None
        }
    }
}

/// Appends to `out` the pages of `ranges` (registered with the asynchronous descriptor)
/// written since the last scan, protecting them again; a range the scan cannot list
/// goes in whole.
pub fn take(ranges: &[Range], out: &mut Vec<Range>) {
    let pm = Pagemap::shared();
    for &r in ranges {
        let before = out.len();
        match pm.take_written(r, out, before + MAX_RUNS) {
            Ok(()) => {}
            Err(ScanError::NoPagemap | ScanError::Refused(_) | ScanError::TooMany) => {
                out.truncate(before);
                out.push(r);
            }
        }
    }
}

/// What a holder pass changes in the registrations: room made before the version
/// opens, filled while faults are held (no allocation then).
pub struct Moves {
    /// The ranges registered with the asynchronous descriptor after the pass.
    pub now_async: Vec<Range>,
    /// The ranges newly registered with it: written whole in the new epoch.
    pub whole: Vec<Range>,
}

impl Moves {
    pub fn with_room(wanted: &[Range], was_async: &[Range]) -> Moves {
        let room = 2 * (wanted.len() + was_async.len()) + 1;
        Moves {
            now_async: Vec::with_capacity(room),
            whole: Vec::with_capacity(room),
        }
    }
}

/// Registers `wanted` with the asynchronous descriptor and protects it: what was already
/// there stays (its pages were scanned), the rest leaves the synchronous descriptor
/// `sync` first and counts as written whole; what was there and is no longer wanted is
/// unregistered. Runs with faults held: it only makes ioctls and fills `m`'s room.
///
/// A part the descriptor will not take (the program's own userfaultfd holds it, or it
/// went meanwhile), and everything when the descriptor is gone, counts as written whole
/// in the new epoch: no scan will list its writes, and it is tried again next pass.
pub fn move_to_async(sync: &Uffd, wanted: &[Range], was_async: &[Range], m: &mut Moves) {
    fn push(list: &mut Vec<Range>, r: Range) {
        if list.len() < list.capacity() {
            list.push(r);
        }
    }
    let Some(a) = opened() else {
        for &w in wanted {
            push(&mut m.whole, w);
        }
        return;
    };
    for &w in wanted {
        within(was_async, w, &mut |kept| push(&mut m.now_async, kept));
        subtract(w, was_async, &mut |part| {
            let _ = sync.unregister(part);
            if a.register(part).is_ok() && a.write_protect(part, true).is_ok() {
                push(&mut m.now_async, part);
            }
            push(&mut m.whole, part);
        });
    }
    for &r in was_async {
        subtract(r, wanted, &mut |gone| {
            let _ = a.unregister(gone);
        });
    }
    m.now_async.sort_unstable_by_key(|r| r.start);
}

/// Shadows again: every range registered with the asynchronous descriptor leaves it
/// (the synchronous one takes it in the pass) and counts as written whole in the epoch
/// ending (its writes after the last scan are not seen one by one).
pub fn move_back(was_async: &[Range]) {
    let Some(a) = opened() else {
        return;
    };
    for &r in was_async {
        let _ = a.unregister(r);
    }
}

/// Opens the asynchronous descriptor before faults are held (opening allocates in the
/// descriptor table); [`move_to_async`] only uses it.
pub fn prepare() -> bool {
    async_uffd().is_some()
}

/// In a forked child: the parent's descriptor was closed with the shim's others (see
/// `fds`), and the child's memory is not registered with it (no
/// `UFFD_FEATURE_EVENT_FORK`); the parent's recorder is not the child's.
pub fn forget_after_fork() {
    ASYNC_FD.store(-1, Ordering::Release);
    WANTED.store(false, Ordering::Relaxed);
}
