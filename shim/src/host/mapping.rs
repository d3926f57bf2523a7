//! The host's memory-mapping calls, forwarded, with the region table kept current.
//!
//! Before the real functions are known these fall back to the raw syscalls (which
//! set errno the same way). Bookkeeping happens after the real call and never
//! changes its result or errno.

use crate::base::range::Range;
use crate::tracking::maps::Kind;
use crate::{base::forward, base::sys, engine::preserve, stats, tracking::regions};
use core::ffi::{c_int, c_void};
use memshadow_format::stats::Counter;

fn page_align_up(n: usize) -> usize {
    crate::base::page::ceil(n)
}

/// Runs region bookkeeping with errno preserved.
fn bookkeep(f: impl FnOnce()) {
    if regions::tracking() {
        let e = sys::errno();
        f();
        sys::set_errno(e);
    }
}

/// Whether an mmap with these arguments creates memory the shim tracks.
fn tracked_kind(prot: c_int, flags: c_int) -> Option<Kind> {
    let anon_private = flags & libc::MAP_ANONYMOUS != 0 && flags & libc::MAP_PRIVATE != 0;
    if !anon_private || prot & libc::PROT_WRITE == 0 {
        return None;
    }
    if flags & (libc::MAP_STACK | libc::MAP_GROWSDOWN) != 0 {
        Some(Kind::Stack)
    } else {
        Some(Kind::Anon)
    }
}

fn after_map(p: *mut c_void, len: usize, prot: c_int, flags: c_int) {
    if p == libc::MAP_FAILED {
        return;
    }
    let r = Range::new(p as usize, p as usize + page_align_up(len));
    bookkeep(|| {
        regions::with_table(|t| match tracked_kind(prot, flags) {
            Some(kind) => t.insert(r, kind),
            None => {
                t.remove(r);
            }
        });
        stats::add(Counter::RegionMaps, 1);
    });
}

/// # Safety
/// `mmap(2)`.
pub unsafe fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
    wide: bool,
) -> *mut c_void {
    let p = match forward::real() {
        // SAFETY: forwarded unchanged.
        Some(r) => unsafe {
            (if wide { r.mmap64 } else { r.mmap })(addr, len, prot, flags, fd, off)
        },
        // SAFETY: the raw syscall takes the same arguments and fails the same way.
        None => unsafe {
            libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) as *mut c_void
        },
    };
    after_map(p, len, prot, flags);
    p
}

/// # Safety
/// `munmap(2)`.
pub unsafe fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let r = Range::new(
        addr as usize,
        (addr as usize).saturating_add(page_align_up(len)),
    );
    let rc = preserve::around_discard(r, || match forward::real() {
        // SAFETY: forwarded unchanged.
        Some(f) => unsafe { (f.munmap)(addr, len) },
        // SAFETY: the raw syscall takes the same arguments and fails the same way.
        None => unsafe { libc::syscall(libc::SYS_munmap, addr, len) as c_int },
    });
    if rc == 0 {
        bookkeep(|| {
            if regions::with_table(|t| t.remove(r)) {
                stats::add(Counter::RegionUnmaps, 1);
            }
        });
    }
    rc
}

/// # Safety
/// `mremap(2)`; `new_addr` is read only with `MREMAP_FIXED`.
pub unsafe fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    // What may leave `old`'s addresses: all of it if the mapping may move, else the
    // tail it shrinks by.
    let start = old as usize;
    let old_end = start.saturating_add(page_align_up(old_len));
    let leaving = if flags & (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) != 0 {
        Range::new(start, old_end)
    } else {
        Range::new(
            start.saturating_add(page_align_up(new_len)).min(old_end),
            old_end,
        )
    };
    let p = preserve::around_discard(leaving, || match forward::real() {
        // SAFETY: forwarded unchanged.
        Some(r) => unsafe { (r.mremap)(old, old_len, new_len, flags, new_addr) },
        // SAFETY: the raw syscall takes the same arguments and fails the same way.
        None => unsafe {
            libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) as *mut c_void
        },
    });
    if p != libc::MAP_FAILED {
        let from = Range::new(old as usize, old as usize + page_align_up(old_len));
        let to = Range::new(p as usize, p as usize + page_align_up(new_len));
        bookkeep(|| {
            regions::with_table(|t| {
                let kind = t.kind_at(old as usize);
                if flags & libc::MREMAP_DONTUNMAP == 0 {
                    t.remove(from);
                }
                match kind {
                    Some(k) => t.insert(to, k),
                    None => {
                        t.remove(to);
                    }
                }
            });
            stats::add(Counter::RegionMaps, 1);
        });
    }
    p
}

/// # Safety
/// `brk(2)`.
pub unsafe fn brk(addr: *mut c_void) -> c_int {
    let Some(r) = forward::real_blocking() else {
        sys::set_errno(libc::ENOMEM);
        return -1;
    };
    // SAFETY: sbrk(0) only reads the current break.
    let current = unsafe { (r.sbrk)(0) } as usize;
    let shrink = Range::new((addr as usize).min(current), current);
    // SAFETY: forwarded unchanged.
    let rc = preserve::around_discard(shrink, || unsafe { (r.brk)(addr) });
    if rc == 0 {
        bookkeep(|| regions::with_table(|t| t.set_heap_end(addr as usize)));
    }
    rc
}

/// # Safety
/// `sbrk(2)`.
pub unsafe fn sbrk(incr: isize) -> *mut c_void {
    let Some(r) = forward::real_blocking() else {
        sys::set_errno(libc::ENOMEM);
        return usize::MAX as *mut c_void;
    };
    let shrink = if incr < 0 {
        // SAFETY: sbrk(0) only reads the current break.
        let current = unsafe { (r.sbrk)(0) } as usize;
        Range::new(current.saturating_sub(incr.unsigned_abs()), current)
    } else {
        Range::EMPTY
    };
    // SAFETY: forwarded unchanged.
    let old = preserve::around_discard(shrink, || unsafe { (r.sbrk)(incr) });
    if old as usize != usize::MAX && incr != 0 {
        let end = (old as usize).wrapping_add_signed(incr);
        bookkeep(|| regions::with_table(|t| t.set_heap_end(end)));
    }
    old
}

/// Whether `advice` throws the pages' contents away.
fn discards(advice: c_int) -> bool {
    matches!(
        advice,
        libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE | MADV_DONTNEED_LOCKED
    )
}

/// `MADV_DONTNEED_LOCKED` (Linux 5.18), missing from older headers.
const MADV_DONTNEED_LOCKED: c_int = 24;

/// # Safety
/// `madvise(2)`.
pub unsafe fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    let r = if discards(advice) {
        Range::new(
            addr as usize,
            (addr as usize).saturating_add(page_align_up(len)),
        )
    } else {
        Range::EMPTY
    };
    preserve::around_discard(r, || match forward::real() {
        // SAFETY: forwarded unchanged.
        Some(f) => unsafe { (f.madvise)(addr, len, advice) },
        // SAFETY: the raw syscall takes the same arguments and fails the same way.
        None => unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) as c_int },
    })
}
