//! Which tracked pages hold contents: `/proc/self/pagemap`, read to tell populated pages
//! (present, or swapped out) from unpopulated ones (never written since they were
//! mapped, or discarded). An unpopulated page reads as zero, so its pre-image need not be
//! copied: the engine records it as zero instead (see `Engine::zeros`), when the program
//! discards it (`preserve`), and for the pages after a trapped write (`fault::resolve`;
//! the written page itself the kernel has just filled with zeros to fault on it).
//!
//! One descriptor for the process, opened on first use and kept out of the program's way
//! (see `fds`); without it every page counts as populated and is copied, as before.

use crate::base::page::PAGE;
use crate::base::range::Range;
use core::sync::atomic::{AtomicI32, Ordering};

/// Whether a pagemap entry is a page with contents: present (the shared zero page too),
/// or swapped out. A page never written and write-protected through
/// `UFFD_FEATURE_WP_UNPOPULATED` holds a uffd-wp pte marker, which pagemap reports as a
/// swap entry of the marker type (the last of the 32 swap types) with the uffd-wp bit:
/// not populated.
fn is_populated(entry: u64) -> bool {
    const PRESENT: u64 = 1 << 63;
    const SWAP: u64 = 1 << 62;
    const UFFD_WP: u64 = 1 << 57;
    const SWAP_TYPE_MASK: u64 = 0x1f;
    const PTE_MARKER_TYPE: u64 = 31;
    let marker =
        entry & SWAP != 0 && entry & UFFD_WP != 0 && entry & SWAP_TYPE_MASK == PTE_MARKER_TYPE;
    entry & PRESENT != 0 || entry & SWAP != 0 && !marker
}

/// The process's pagemap descriptor (-1: not opened yet, or unusable).
static FD: AtomicI32 = AtomicI32::new(-1);

/// A view of the shared pagemap descriptor, if it could be opened.
pub struct Pagemap(Option<i32>);

impl Pagemap {
    /// The shared descriptor, opened on first use.
    pub fn shared() -> Pagemap {
        let fd = FD.load(Ordering::Acquire);
        if fd >= 0 {
            return Pagemap(Some(fd));
        }
        let flags = libc::O_RDONLY | libc::O_CLOEXEC;
        // Opened and moved with the program's closes held off (see `fds`).
        let opened = crate::base::fds::create_and_adopt(|| {
            // SAFETY: a valid C string; opens for reading only.
            unsafe { libc::open(c"/proc/self/pagemap".as_ptr(), flags) }
        });
        let Ok(fd) = opened else {
            return Pagemap(None);
        };
        match FD.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Pagemap(Some(fd)),
            Err(other) => {
                // Another thread opened it first.
                crate::base::fds::release(fd);
                Pagemap(Some(other))
            }
        }
    }

    /// How many pages from `p` on (below `end`, at most `max`) are populated (`true`) or
    /// unpopulated (`false`). Without a usable pagemap every page counts as populated.
    pub fn run(&self, p: usize, end: usize, max: usize, populated: bool) -> usize {
        let want = (end.saturating_sub(p) / PAGE).min(max);
        let all_populated = if populated { want } else { 0 };
        let Some(fd) = self.0 else {
            return all_populated;
        };
        if !crate::base::fds::verify(fd) {
            let _ = FD.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Acquire);
            return all_populated;
        }
        let mut entries = [0u64; 512];
        let mut n = 0;
        // The first entry alone first: most runs asked about end at their first page.
        let mut chunk = 1;
        while n < want {
            chunk = chunk.min(want - n).min(entries.len());
            let offset = ((p / PAGE + n) * 8) as libc::off_t;
            // SAFETY: reading `chunk` 8-byte entries into a local buffer that holds them.
            let got = unsafe { libc::pread(fd, entries.as_mut_ptr().cast(), chunk * 8, offset) };
            if got <= 0 {
                return if populated { want } else { n };
            }
            for &entry in &entries[..got as usize / 8] {
                if is_populated(entry) != populated {
                    return n;
                }
                n += 1;
            }
            chunk = entries.len();
        }
        n
    }
}

/// `PAGEMAP_SCAN` (Linux 6.7): `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | (96 << 16) | (0x66 << 8) | 16;
/// Protect again (uffd-wp) the pages the scan reports, in the same walk.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (EPERM) on memory not registered with an asynchronous write-protect descriptor.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// A page written since it was last protected (its uffd-wp bit is clear).
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// A page present in memory (the shared zero page too), for `PAGEMAP_SCAN`.
const PAGE_IS_PRESENT: u64 = 1 << 3;

/// `struct pm_scan_arg`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// Why the written pages of a range could not be listed.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanError {
    /// No usable pagemap descriptor.
    NoPagemap,
    /// The kernel refused the scan (errno); EPERM: part of the range is not registered
    /// with the asynchronous descriptor (unmapped and mapped again meanwhile).
    Refused(i32),
    /// More written runs than the caller keeps.
    TooMany,
}

impl Pagemap {
    /// Appends to `out` the runs of pages in `r` written since they were last protected
    /// through the asynchronous write-protect descriptor, and protects them again, in one
    /// walk (`PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`); at most `max` runs in `out`.
    /// `r` must be registered with that descriptor.
    pub fn take_written(
        &self,
        r: Range,
        out: &mut Vec<Range>,
        max: usize,
    ) -> Result<(), ScanError> {
        let fd = self.0.ok_or(ScanError::NoPagemap)?;
        if !crate::base::fds::verify(fd) {
            let _ = FD.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Acquire);
            return Err(ScanError::NoPagemap);
        }
        let mut found = [PageRegion {
            start: 0,
            end: 0,
            categories: 0,
        }; 256];
        let flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
        walk(fd, r, flags, PAGE_IS_WRITTEN, 0, &mut found, &mut |runs| {
            for f in runs {
                if out.len() >= max {
                    return Err(ScanError::TooMany);
                }
                out.push(Range::new(f.start as usize, f.end as usize));
            }
            Ok(true)
        })
    }
}

/// Whether any page of `r` is present in the address space `fd` is the pagemap of
/// (`PAGEMAP_SCAN`, which stops at the first such page; it reads only page-table bits,
/// where /proc/PID/smaps looks at every page it finds). A page swapped out does not
/// count. Not for the fault path.
pub fn any_present(fd: i32, r: Range) -> Result<bool, ScanError> {
    let mut found = [PageRegion {
        start: 0,
        end: 0,
        categories: 0,
    }; 1];
    let mut any = false;
    walk(fd, r, 0, PAGE_IS_PRESENT, 1, &mut found, &mut |runs| {
        any = !runs.is_empty();
        Ok(!any)
    })?;
    Ok(any)
}

/// Walks `r` with `PAGEMAP_SCAN` calls (see [`scan`]), each resuming where the last
/// stopped, handing `each` the runs every call found, until the end of `r` or until
/// `each` says no more (`Ok(false)`).
fn walk(
    fd: i32,
    r: Range,
    flags: u64,
    category: u64,
    max_pages: u64,
    found: &mut [PageRegion],
    each: &mut dyn FnMut(&[PageRegion]) -> Result<bool, ScanError>,
) -> Result<(), ScanError> {
    let mut start = r.start;
    while start < r.end {
        let (n, walk_end) = scan(
            fd,
            Range::new(start, r.end),
            flags,
            category,
            max_pages,
            found,
        )?;
        if !each(&found[..n])? || walk_end as usize <= start {
            break;
        }
        start = walk_end as usize;
    }
    Ok(())
}

/// One `PAGEMAP_SCAN` over `r` of the address space `fd` is the pagemap of, with
/// `flags`, for the pages in every category of `category` (at most `max_pages` of them,
/// 0: no limit): the runs found go into `found`. Their count, and where the walk ended
/// (it stops early when `found` is full).
fn scan(
    fd: i32,
    r: Range,
    flags: u64,
    category: u64,
    max_pages: u64,
    found: &mut [PageRegion],
) -> Result<(usize, u64), ScanError> {
    let mut arg = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        flags,
        start: r.start as u64,
        end: r.end as u64,
        walk_end: 0,
        vec: found.as_mut_ptr() as u64,
        vec_len: found.len() as u64,
        max_pages,
        category_inverted: 0,
        category_mask: category,
        category_anyof_mask: 0,
        return_mask: category,
    };
    // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` regions into `found`
    // (which holds them) and `walk_end` into `arg`.
    let n = unsafe { libc::ioctl(fd, PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
    if n < 0 {
        return Err(ScanError::Refused(crate::base::sys::errno()));
    }
    Ok((n as usize, arg.walk_end))
}

/// In a forked child: the parent's descriptor was closed with the others (see `fds`).
pub fn forget_after_fork() {
    FD.store(-1, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries_tell_populated_pages_from_markers_and_holes() {
        let present = 1u64 << 63;
        let swap = 1u64 << 62;
        let uffd_wp = 1u64 << 57;
        assert!(is_populated(present | 0x1234));
        assert!(is_populated(present | uffd_wp));
        // Swapped out to swap file 0 or 2, write-protected or not: contents to copy.
        assert!(is_populated(swap | (77 << 5)));
        assert!(is_populated(swap | uffd_wp | 2 | (77 << 5)));
        // A hole, and the uffd-wp marker of a page never written.
        assert!(!is_populated(0));
        assert!(!is_populated(uffd_wp));
        assert!(!is_populated(swap | uffd_wp | 31 | (1 << 5)));
    }

    #[test]
    fn pagemap_scan_takes_the_pages_written_since_the_last_scan() {
        use crate::engine::uffd::{Uffd, WANTED_ASYNC};
        assert_eq!(core::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        let u = Uffd::open(WANTED_ASYNC).unwrap_or_else(|e| {
            panic!("userfaultfd with WP_ASYNC is required for this test and the kernel refused it: {e}")
        });
        let pm = Pagemap::shared();
        let len = 32 * PAGE;
        let base = crate::base::sys::map_anon(len, false).unwrap() as usize;
        let r = Range::new(base, base + len);
        let write = |i: usize| {
            // SAFETY: page `i` of the mapping made above.
            unsafe { ((base + i * PAGE + 8) as *mut u64).write_volatile(i as u64 + 1) }
        };
        write(1);
        u.register(r).unwrap();
        u.write_protect(r, true).unwrap();
        let mut out = Vec::new();
        pm.take_written(r, &mut out, 64).unwrap();
        assert_eq!(out, vec![], "nothing written since the protection");
        // Populated before, never touched before (a marker), and a run of two: each
        // write goes on at once (the kernel resolves it) and is listed once.
        write(1);
        write(7);
        write(20);
        write(21);
        pm.take_written(r, &mut out, 64).unwrap();
        let at = |i: usize, j: usize| Range::new(base + i * PAGE, base + j * PAGE);
        assert_eq!(out, vec![at(1, 2), at(7, 8), at(20, 22)]);
        // Taken means protected again: only what is written after shows next time.
        out.clear();
        write(7);
        pm.take_written(r, &mut out, 64).unwrap();
        assert_eq!(out, vec![at(7, 8)]);
        // A read of a page never written maps the zero page: not a write.
        out.clear();
        // SAFETY: page 30 of the mapping.
        let _ = unsafe { ((base + 30 * PAGE) as *const u64).read_volatile() };
        write(3);
        write(5);
        assert_eq!(pm.take_written(r, &mut out, 1), Err(ScanError::TooMany));
        // Memory not registered with an asynchronous descriptor is refused.
        u.unregister(r).unwrap();
        out.clear();
        assert_eq!(
            pm.take_written(r, &mut out, 64),
            Err(ScanError::Refused(libc::EPERM))
        );
        // SAFETY: our mapping, no longer used.
        unsafe { libc::syscall(libc::SYS_munmap, base, len) };
    }

    #[test]
    fn a_scan_finds_whether_any_page_of_a_range_is_present() {
        let pm = Pagemap::shared();
        let fd = pm.0.expect("/proc/self/pagemap opens");
        let len = 64 * PAGE;
        let base = crate::base::sys::map_anon(len, false).unwrap() as usize;
        let r = Range::new(base, base + len);
        assert_eq!(any_present(fd, r), Ok(false), "a mapping never touched");
        // SAFETY: page 50 of the fresh mapping; a read maps the shared zero page.
        let _ = unsafe { ((base + 50 * PAGE) as *const u8).read_volatile() };
        assert_eq!(any_present(fd, r), Ok(true), "the zero page is present");
        assert_eq!(
            any_present(fd, Range::new(base, base + 50 * PAGE)),
            Ok(false)
        );
        // SAFETY: page 3 of the mapping.
        unsafe { ((base + 3 * PAGE) as *mut u8).write_volatile(1) };
        assert_eq!(
            any_present(fd, Range::new(base, base + 50 * PAGE)),
            Ok(true)
        );
        // Discarded: gone again.
        // SAFETY: our mapping; its contents are not needed.
        unsafe { libc::madvise(base as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        assert_eq!(any_present(fd, r), Ok(false));
        // SAFETY: our mapping, no longer used.
        unsafe { libc::syscall(libc::SYS_munmap, base, len) };
    }

    #[test]
    fn pagemap_runs_of_this_process() {
        let pm = Pagemap::shared();
        assert!(pm.0.is_some(), "/proc/self/pagemap opens");
        let len = 16 * PAGE;
        let base = crate::base::sys::map_anon(len, false).unwrap() as usize;
        // SAFETY: pages 0 and 1 of the fresh mapping.
        unsafe {
            (base as *mut u8).write_volatile(1);
            ((base + PAGE) as *mut u8).write_volatile(1);
        }
        let end = base + len;
        assert_eq!(pm.run(base, end, 16, true), 2);
        assert_eq!(pm.run(base, end, 16, false), 0);
        assert_eq!(pm.run(base + 2 * PAGE, end, 16, false), 14);
        assert_eq!(pm.run(base + 2 * PAGE, end, 5, false), 5);
        // SAFETY: our mapping, no longer used.
        unsafe { libc::syscall(libc::SYS_munmap, base, len) };
    }
}
