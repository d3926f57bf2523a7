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
        // SAFETY: a valid C string; opens for reading only.
        let raw = unsafe { libc::open(c"/proc/self/pagemap".as_ptr(), flags) };
        let Some(fd) = (raw >= 0)
            .then(|| crate::base::fds::adopt(raw).ok())
            .flatten()
        else {
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
