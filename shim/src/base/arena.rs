//! The shim's own allocator: the cdylib's `#[global_allocator]`.
//!
//! Everything Rust allocates inside the shim comes from one large `MAP_NORESERVE`
//! reservation made with a raw `mmap` syscall and registered as the shim's own memory,
//! so the host's malloc is never called and the shim's data is never tracked.
//! Small blocks (up to 4 KiB) come from power-of-two size classes with free lists;
//! larger blocks are page-granular with a first-fit free list. Pages freed in large
//! blocks are handed back to the kernel with `MADV_DONTNEED`.
//!
//! Locks here are taken only on the shim's own threads or with signals blocked
//! (constructor, fork handlers, destructor), never on the host's hot path.

use crate::base::sync::SpinLock;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::base::page::PAGE;
const MIN_CLASS_SHIFT: u32 = 4; // 16 bytes
const CLASSES: usize = 9; // 16 .. 4096
const REFILL: usize = 64 * 1024;
/// Reservation sizes tried in order (strict overcommit may refuse the larger ones).
const RESERVE_TRIES: [usize; 4] = [4 << 30, 1 << 30, 256 << 20, 64 << 20];

struct FreeBlock {
    next: *mut FreeBlock,
    pages: usize,
}

struct ClassList {
    head: *mut FreeBlock,
}

// SAFETY: the raw pointers are only touched with the owning lock held.
unsafe impl Send for ClassList {}

pub struct ShimArena {
    base: AtomicUsize,
    limit: AtomicUsize,
    bump: AtomicUsize,
    reserve_lock: SpinLock<()>,
    classes: [SpinLock<ClassList>; CLASSES],
    large: SpinLock<ClassList>,
}

impl ShimArena {
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)] // a template for array init only
        const EMPTY: SpinLock<ClassList> = SpinLock::new(ClassList { head: null_mut() });
        ShimArena {
            base: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            bump: AtomicUsize::new(0),
            reserve_lock: SpinLock::new(()),
            classes: [EMPTY; CLASSES],
            large: EMPTY,
        }
    }

    /// Makes the reservation if it is not there yet; false if the kernel refused it.
    fn ensure_reserved(&self) -> bool {
        if self.base.load(Ordering::Acquire) != 0 {
            return true;
        }
        let _g = self.reserve_lock.lock();
        if self.base.load(Ordering::Acquire) != 0 {
            return true;
        }
        for len in RESERVE_TRIES {
            if let Some(r) = crate::base::own::map(len, true) {
                let start = r.start;
                self.limit.store(start + len, Ordering::Relaxed);
                self.bump.store(start, Ordering::Relaxed);
                self.base.store(start, Ordering::Release);
                return true;
            }
        }
        false
    }

    /// The reserved range, once made.
    #[cfg(test)]
    pub fn range(&self) -> Option<crate::base::range::Range> {
        let b = self.base.load(Ordering::Acquire);
        (b != 0).then(|| crate::base::range::Range::new(b, self.limit.load(Ordering::Relaxed)))
    }

    /// Carves `len` bytes (a multiple of `align`, itself a power of two <= 64 KiB).
    fn carve(&self, len: usize, align: usize) -> *mut u8 {
        if !self.ensure_reserved() {
            return null_mut();
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let mut cur = self.bump.load(Ordering::Relaxed);
        loop {
            let start = (cur + align - 1) & !(align - 1);
            let end = match start.checked_add(len) {
                Some(e) if e <= limit => e,
                _ => return null_mut(),
            };
            match self
                .bump
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return start as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    fn class_of(layout: Layout) -> Option<usize> {
        let need = layout.size().max(layout.align()).max(1 << MIN_CLASS_SHIFT);
        if need > PAGE {
            return None;
        }
        let shift = usize::BITS - (need - 1).leading_zeros();
        Some((shift - MIN_CLASS_SHIFT) as usize)
    }

    fn alloc_small(&self, class: usize) -> *mut u8 {
        let size = 1usize << (class as u32 + MIN_CLASS_SHIFT);
        let mut list = self.classes[class].lock();
        if list.head.is_null() {
            let chunk = self.carve(REFILL, REFILL.min(PAGE.max(size)));
            if chunk.is_null() {
                return null_mut();
            }
            // Thread the fresh chunk into the free list, lowest address first.
            let n = REFILL / size;
            for i in (0..n).rev() {
                // SAFETY: each block lies inside the chunk just carved for this class.
                let b = unsafe { chunk.add(i * size) } as *mut FreeBlock;
                // SAFETY: `b` is aligned to at least 16 bytes and exclusively ours.
                unsafe {
                    b.write(FreeBlock {
                        next: list.head,
                        pages: 0,
                    })
                };
                list.head = b;
            }
        }
        let b = list.head;
        // SAFETY: `b` is a block on this class's free list, written when it was pushed.
        list.head = unsafe { (*b).next };
        b as *mut u8
    }

    fn alloc_large(&self, layout: Layout) -> *mut u8 {
        let pages = layout.size().div_ceil(PAGE);
        if layout.align() <= PAGE {
            let mut list = self.large.lock();
            let mut prev: *mut *mut FreeBlock = &mut list.head;
            // SAFETY: the list holds only blocks freed by `dealloc_large`, each starting
            // with a valid FreeBlock header; we hold the lock.
            unsafe {
                while !(*prev).is_null() {
                    let b = *prev;
                    if (*b).pages == pages {
                        *prev = (*b).next;
                        return b as *mut u8;
                    }
                    prev = &mut (*b).next;
                }
            }
        }
        self.carve(pages * PAGE, layout.align().max(PAGE))
    }

    fn dealloc_large(&self, p: *mut u8, layout: Layout) {
        let pages = layout.size().div_ceil(PAGE);
        if pages >= 16 {
            // SAFETY: the block is ours and dead; its pages may read back as zero.
            unsafe { crate::base::sys::discard(p, pages * PAGE) };
        }
        let mut list = self.large.lock();
        let b = p as *mut FreeBlock;
        // SAFETY: the block is at least one page, page aligned, and exclusively ours.
        unsafe {
            b.write(FreeBlock {
                next: list.head,
                pages,
            })
        };
        list.head = b;
    }

    /// Takes every lock so that fork() copies a consistent arena.
    pub fn lock_for_fork(&self) {
        self.reserve_lock.acquire();
        for c in &self.classes {
            c.acquire();
        }
        self.large.acquire();
    }

    /// Releases the locks taken by [`ShimArena::lock_for_fork`] (parent and child).
    pub fn unlock_after_fork(&self) {
        self.large.release();
        for c in &self.classes {
            c.release();
        }
        self.reserve_lock.release();
    }
}

impl Default for ShimArena {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks handed out are disjoint, sized and aligned per `layout`, and returned
// only through `dealloc` with the same layout, which puts them back where they came from.
unsafe impl GlobalAlloc for ShimArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class_of(layout) {
            Some(c) => self.alloc_small(c),
            None => self.alloc_large(layout),
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match Self::class_of(layout) {
            Some(c) => {
                let mut list = self.classes[c].lock();
                let b = p as *mut FreeBlock;
                // SAFETY: `p` came from this class, so it is aligned and large enough.
                unsafe {
                    b.write(FreeBlock {
                        next: list.head,
                        pages: 0,
                    })
                };
                list.head = b;
            }
            None => self.dealloc_large(p, layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: `p` points to at least `layout.size()` writable bytes.
            unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_disjoint_and_reused() {
        let a = ShimArena::new();
        let mut seen = Vec::new();
        for (size, align) in [
            (1, 1),
            (24, 8),
            (100, 64),
            (4096, 4096),
            (5000, 8),
            (1 << 20, 4096),
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size layout.
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: p has `size` writable bytes.
            unsafe { core::ptr::write_bytes(p, 0xab, size) };
            seen.push((p as usize, size, l));
        }
        seen.sort_by_key(|x| x.0);
        for w in seen.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "blocks overlap");
        }
        let r = a.range().unwrap();
        for (p, s, _) in &seen {
            assert!(*p >= r.start && p + s <= r.end);
        }
        // Freed blocks come back for the same layout.
        let l = Layout::from_size_align(5000, 8).unwrap();
        let (p, _, _) = *seen.iter().find(|x| x.2 == l).unwrap();
        // SAFETY: p was allocated with l.
        unsafe { a.dealloc(p as *mut u8, l) };
        // SAFETY: non-zero size layout.
        assert_eq!(unsafe { a.alloc(l) } as usize, p);
        let l = Layout::from_size_align(24, 8).unwrap();
        let (p, _, _) = *seen.iter().find(|x| x.2 == l).unwrap();
        // SAFETY: p was allocated with l.
        unsafe { a.dealloc(p as *mut u8, l) };
        // SAFETY: non-zero size layout.
        assert_eq!(unsafe { a.alloc(l) } as usize, p);
    }

    #[test]
    fn zeroed_is_zero_after_reuse() {
        let a = ShimArena::new();
        let l = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: non-zero layout; the block is written then freed with the same layout.
        unsafe {
            let p = a.alloc(l);
            core::ptr::write_bytes(p, 0xff, 64);
            a.dealloc(p, l);
            let q = a.alloc_zeroed(l);
            assert_eq!(p, q);
            assert!(core::slice::from_raw_parts(q, 64).iter().all(|&b| b == 0));
        }
    }
}
