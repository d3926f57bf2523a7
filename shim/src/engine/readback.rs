//! Reading memory as it was at a version.
//!
//! A version a holder child holds (`MEMSHADOW_BACKEND=holder`) is read from that
//! holder, by `process_vm_readv`, under the engine lock (so the epoch thread cannot
//! release it meanwhile); a holder gone, or a range it does not hold as it was, is
//! refused, but for the ranges its pass kept on shadows (`MADV_DONTFORK`,
//! `MADV_WIPEONFORK` memory met before the clone, see `HeldVersion`), which are read as
//! below. Otherwise, per page, under the engine lock: the slot [`ShadowPool::find`]
//! names, else the live page. A page with no shadow at or after the version has not been unprotected since
//! the newest snapshot (every unprotect follows a copy), so no write can land while the
//! engine lock keeps the fault thread from unprotecting it: the live copy is exact.
//!
//! Two things break "not written since, so a newer shadow or the live page shows it":
//! a zap (it changes a page without a write fault) and an unmap. So a page lost
//! between the version and its newer shadow, or lost since the version with no shadow,
//! or in a range the newest snapshot no longer tracks with no shadow, is refused
//! (`Gone`), never answered with another version's bytes. The interposed discards save
//! pages first (see `preserve`), and so does a pass for memory that leaves tracking
//! while still mapped (a thread stack known as one only later, see `epoch`), so this is
//! left for glibc's internal discards and races.

use crate::base::page::PAGE;
use crate::base::range::{coalesce, Range};
use crate::engine::holder::{HeldVersion, HolderReadError};
use crate::engine::{self, Engine, Holding};

/// Why a read was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    NoEngine,
    /// Snapshots stopped for good (see `engine::stop`): no version is kept.
    Stopped,
    NotTaken {
        version: u64,
        newest: u64,
    },
    NotRetained {
        version: u64,
        retained: Option<(u64, u64)>,
    },
    Incomplete(u64),
    NotTracked {
        page: usize,
        version: u64,
    },
    Gone {
        page: usize,
        version: u64,
    },
    /// The version is held by a holder child that is gone (killed by someone else):
    /// nothing of it can be read.
    HolderGone {
        version: u64,
    },
    /// A holder holds the version, but `page` lies in a range it does not hold as it
    /// was (`MADV_DONTFORK`: absent in the holder; `MADV_WIPEONFORK`: zero there).
    NotHeld {
        page: usize,
        version: u64,
    },
    /// Version `version` (or, for an older version, the page the holder of `held` kept
    /// for it) was let go once a recorder had it in its store.
    Recorded {
        version: u64,
        held: u64,
    },
}

impl core::fmt::Display for ReadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ReadError::NoEngine if engine::stopped() => write!(
                f,
                "snapshots stopped in this process (the program closed a descriptor of the shim's; see its stderr)"
            ),
            ReadError::NoEngine => write!(f, "no snapshot has been taken in this process"),
            ReadError::Stopped => write!(
                f,
                "snapshots stopped in this process (the program closed a descriptor of the shim's; see its stderr)"
            ),
            ReadError::NotTaken { version, newest } => {
                write!(
                    f,
                    "version {version} has not been taken yet (newest is {newest})"
                )
            }
            ReadError::NotRetained {
                version,
                retained: Some((a, b)),
            } => {
                write!(
                    f,
                    "version {version} is no longer retained (retained: {a} to {b})"
                )
            }
            ReadError::NotRetained {
                version,
                retained: None,
            } => {
                write!(f, "version {version} is no longer retained (no version is)")
            }
            ReadError::Incomplete(v) => {
                write!(f, "snapshot {v} is incomplete: the shadow budget ran out")
            }
            ReadError::NotTracked { page, version } => {
                write!(f, "{page:#x} was not tracked memory at version {version}")
            }
            ReadError::Gone { page, version } => write!(
                f,
                "{page:#x} was unmapped or discarded after version {version} and its contents were not kept"
            ),
            ReadError::HolderGone { version } => write!(
                f,
                "version {version} was held by a child process that is gone (killed outside memshadow); it cannot be read"
            ),
            ReadError::Recorded { version, held } if version == held => write!(
                f,
                "version {version} is in the recorder's store and was let go here once recorded; read it from the store"
            ),
            ReadError::Recorded { version, held } => write!(
                f,
                "version {version} shares pages with version {held}, which is in the recorder's store and was let go here once recorded; read it from the store"
            ),
            ReadError::NotHeld { page, version } => write!(
                f,
                "{page:#x} is in a MADV_DONTFORK or MADV_WIPEONFORK range, which the holder of version {version} does not hold"
            ),
        }
    }
}

/// Pages read per engine-lock hold, so a large read never stalls faults for long.
const PAGES_PER_LOCK: usize = 16;

/// Whether version `v` can be read now (called under the engine lock).
pub fn readable(e: &Engine, v: u64) -> Result<(), ReadError> {
    if engine::stopped() {
        return Err(ReadError::Stopped);
    }
    let newest = e.version;
    if v == 0 || v > newest || (v == newest && e.pass_running) {
        return Err(ReadError::NotTaken {
            version: v,
            newest: newest - e.pass_running as u64,
        });
    }
    if e.incomplete && v == newest {
        return Err(ReadError::Incomplete(v));
    }
    match e.pool.retained() {
        Some((oldest, _)) if v >= oldest => Ok(()),
        retained => Err(ReadError::NotRetained {
            version: v,
            retained,
        }),
    }
}

/// The ranges version `v` holds, in address order, adjacent ones merged: those the
/// newest snapshot still tracks and those retired since (unmapped memory whose pages
/// were kept).
pub fn regions_at(v: u64) -> Result<Vec<Range>, ReadError> {
    // Nothing may allocate under the engine lock: the list is sized outside it, and
    // sized again if a protect pass grew the tracked list in between.
    let mut capacity = 0;
    loop {
        let mut out: Vec<Range> = Vec::with_capacity(capacity);
        let need = engine::with(|e| {
            readable(e, v)?;
            let tracked = e.tracked.iter().filter(|t| t.since <= v).map(|t| t.range);
            let retired = e
                .retired
                .iter()
                .filter(|r| r.since <= v && v < r.until)
                .map(|r| r.range);
            let n = tracked.clone().count() + retired.clone().count();
            if n > out.capacity() {
                return Ok(Some(n));
            }
            out.extend(tracked.chain(retired));
            out.sort_unstable_by_key(|r| r.start);
            // Parts of one mapping tracked since different versions sit side by side:
            // one range for the reader.
            coalesce(&mut out, 0);
            Ok(None)
        })
        .ok_or(ReadError::NoEngine)??;
        match need {
            None => return Ok(out),
            // A little more, in case the list grows again meanwhile.
            Some(n) => capacity = n + n / 8 + 16,
        }
    }
}

/// Fills `dst` (within one page) with the memory at `at` as it was at version `v`,
/// under the engine lock; the caller has checked that `v` is [`readable`].
pub fn copy_at(e: &Engine, v: u64, at: usize, dst: &mut [u8]) -> Result<(), ReadError> {
    let page = crate::base::page::floor(at);
    let n = dst.len();
    let Some(holding) = e.holding(page, v) else {
        return Err(ReadError::NotTracked { page, version: v });
    };
    // A version a holder holds is read from it, and only from it, but for the ranges
    // its pass kept on shadows: those are read as a shadow version's are.
    if let Some(h) = e.held(v).filter(|h| !h.shadowed_at(page)) {
        return read_held(h, at, dst, v);
    }
    // The first holder after `v` that holds this page itself, if one is retained: it
    // holds every page not written since `v` (a write before it trapped and left a
    // record stamped before it), and records stamped at or after it are not to be
    // trusted for `v` (protection may have been dropped at it: later writes leave none).
    // A holder whose pass kept the page on shadows kept it protected: its records go on.
    let next_holder = e.first_held_after(v, page);
    let before_holder = |stamp: u64| next_holder.is_none_or(|h| stamp < h.version);
    // The oldest record at or after `v` (and before that holder): a shadow, or a zero
    // record (the page was discarded unpopulated, see `Engine::zeros`), whichever is
    // older.
    let slot = e
        .pool
        .find(page, v)
        .filter(|&s| before_holder(e.pool.stamp_of(s)));
    let zero = e
        .zero_since(page, v)
        .filter(|&z| before_holder(z))
        .filter(|&z| slot.is_none_or(|s| z < e.pool.stamp_of(s)));
    if let Some(z) = zero {
        if z > v && e.lost_between(page, v, z) {
            return Err(ReadError::Gone { page, version: v });
        }
        dst.fill(0);
        return Ok(());
    }
    match slot {
        Some(slot)
            if e.pool.stamp_of(slot) > v && e.lost_between(page, v, e.pool.stamp_of(slot)) =>
        {
            Err(ReadError::Gone { page, version: v })
        }
        Some(slot) => {
            dst.copy_from_slice(&e.pool.slot(slot)[at - page..at - page + n]);
            Ok(())
        }
        None if next_holder.is_some() => {
            let h = next_holder.expect("checked");
            if e.lost_between(page, v, h.version) {
                return Err(ReadError::Gone { page, version: v });
            }
            read_held(h, at, dst, v)
        }
        None => {
            // The live page holds version `v` only where the newest snapshot still
            // tracks it and nothing discarded it since.
            if holding == Holding::Retired
                || e.lost_since(page, v)
                || engine::copy_tracked(at, dst.as_mut_ptr(), n) < n
            {
                return Err(ReadError::Gone { page, version: v });
            }
            Ok(())
        }
    }
}

/// Bytes read from a holder per engine-lock hold, in one `process_vm_readv`.
const HELD_BYTES_PER_LOCK: usize = 256 << 10;

/// Fills the start of `dst` (at least one byte, at most [`HELD_BYTES_PER_LOCK`]) with
/// the memory at `at` as the holder of version `v` holds it, in one read, up to the
/// first page the version does not hold (which the next call refuses); returns the bytes
/// filled. Under the engine lock; `v` is readable and held.
pub fn copy_held(e: &Engine, v: u64, at: usize, dst: &mut [u8]) -> Result<usize, ReadError> {
    let Some(h) = e.held(v) else {
        return Err(ReadError::NoEngine);
    };
    let want = dst.len().min(HELD_BYTES_PER_LOCK);
    let mut page = crate::base::page::floor(at);
    // A page the pass kept on shadows: read as a shadow version's, alone.
    if h.shadowed_at(page) {
        let n = (page + PAGE - at).min(dst.len());
        copy_at(e, v, at, &mut dst[..n])?;
        return Ok(n);
    }
    let mut n = 0;
    while n < want {
        if h.shadowed_at(page) {
            break;
        }
        let refused = if e.holding(page, v).is_none() {
            Some(ReadError::NotTracked { page, version: v })
        } else if h.not_held_at(page) {
            Some(ReadError::NotHeld { page, version: v })
        } else {
            None
        };
        if let Some(r) = refused {
            if n == 0 {
                return Err(r);
            }
            break;
        }
        n = (page + PAGE - at).min(want);
        page += PAGE;
    }
    let first = (crate::base::page::floor(at) + PAGE - at).min(n);
    match h.read(at, &mut dst[..n]) {
        Ok(()) => Ok(n),
        // Part of the span is not there: its first page alone, so the refusal (on the
        // next call) names the page that is missing.
        Err(HolderReadError::Unmapped) if n > first => h
            .read(at, &mut dst[..first])
            .map(|()| first)
            .map_err(|e| held_read_error(e, crate::base::page::floor(at), v, v)),
        Err(e) => Err(held_read_error(e, crate::base::page::floor(at), v, v)),
    }
}

/// Reads `dst` at `at` from holder `h`, for version `v` (`h`'s own, or an older shadow
/// version whose page nothing recorded before `h`).
fn read_held(h: &HeldVersion, at: usize, dst: &mut [u8], v: u64) -> Result<(), ReadError> {
    let page = crate::base::page::floor(at);
    if h.not_held_at(page) {
        return Err(ReadError::NotHeld {
            page,
            version: h.version,
        });
    }
    h.read(at, dst)
        .map_err(|e| held_read_error(e, page, v, h.version))
}

/// A refusal of the holder of version `held` to read `page` of version `v` (`held`
/// itself or an older one), as readers say it.
fn held_read_error(e: HolderReadError, page: usize, v: u64, held: u64) -> ReadError {
    match e {
        HolderReadError::Gone => ReadError::HolderGone { version: held },
        // Unmapped between the region scan and the clone.
        HolderReadError::Unmapped => ReadError::Gone { page, version: v },
        HolderReadError::Recorded => ReadError::Recorded { version: v, held },
    }
}

/// How long a reader waits, at most, for faults queued on the userfaultfd to be
/// served before its next engine-lock hold.
const FAULTS_FIRST_NS: u64 = 100_000;

/// A reader (`read`, `changes`) takes the engine lock thousands of times for a large
/// version; each hold delays a trap that comes meanwhile. While faults are queued (the
/// userfaultfd is readable), or the fault thread is handling what it read, it steps
/// aside: the program's writes go first, for up to [`FAULTS_FIRST_NS`] per hold (a trap
/// takes tens of microseconds; a program that traps without end must not starve the reader).
fn let_faults_go_first() {
    let u = engine::uffd();
    let t0 = engine::now_ns();
    loop {
        let queued = u.events_queued();
        if !(queued || crate::engine::fault::events_in_hand())
            || engine::now_ns() - t0 > FAULTS_FIRST_NS
        {
            return;
        }
        crate::base::sys::sleep_us(20);
    }
}

/// Fills `out` with the memory at `addr` as it was at version `v`.
pub fn read(v: u64, addr: usize, out: &mut [u8]) -> Result<(), ReadError> {
    let mut done = 0;
    while done < out.len() {
        let_faults_go_first();
        let r = engine::with(|e| {
            readable(e, v)?;
            if e.held(v).is_some() {
                done += copy_held(e, v, addr + done, &mut out[done..])?;
                return Ok(());
            }
            for _ in 0..PAGES_PER_LOCK {
                if done == out.len() {
                    break;
                }
                let at = addr + done;
                let page = crate::base::page::floor(at);
                let n = (page + PAGE - at).min(out.len() - done);
                copy_at(e, v, at, &mut out[done..done + n])?;
                done += n;
            }
            Ok(())
        });
        r.ok_or(ReadError::NoEngine)??;
    }
    Ok(())
}
