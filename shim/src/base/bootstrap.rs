//! A small static pool that serves allocations made while the real allocator is still
//! being looked up (`dlsym` may call `calloc`). Blocks are never reused: `free` of a
//! bootstrap block does nothing. Each block has a 16-byte header with its size, so
//! `realloc` and `malloc_usable_size` work on it.

use core::sync::atomic::{AtomicUsize, Ordering};

const POOL_BYTES: usize = 256 * 1024;
const HEADER: usize = 16;

#[repr(C, align(4096))]
struct Pool([u8; POOL_BYTES]);

static mut POOL: Pool = Pool([0; POOL_BYTES]);
static USED: AtomicUsize = AtomicUsize::new(0);

fn base() -> usize {
    // Only the address is taken; no reference to the mutable static is formed.
    core::ptr::addr_of!(POOL) as usize
}

/// Whether `p` points into the pool.
#[inline]
pub fn owns(p: *const u8) -> bool {
    let a = p as usize;
    a >= base() && a < base() + POOL_BYTES
}

/// A zeroed block of `size` bytes aligned to `align` (a power of two), or null when the
/// pool is exhausted.
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    let align = align.max(HEADER);
    let mut cur = USED.load(Ordering::Relaxed);
    loop {
        let user = (base() + cur + HEADER + align - 1) & !(align - 1);
        let end = match user.checked_add(size) {
            Some(e) if e <= base() + POOL_BYTES => e,
            _ => return core::ptr::null_mut(),
        };
        let next = (end - base() + 15) & !15;
        match USED.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                // SAFETY: the header lies in this block, between `cur` and `user`, which
                // this thread now owns exclusively.
                unsafe { ((user - HEADER) as *mut usize).write(size) };
                return user as *mut u8;
            }
            Err(now) => cur = now,
        }
    }
}

/// The size a bootstrap block was allocated with.
///
/// # Safety
/// `p` must be a block returned by [`alloc`].
pub unsafe fn size_of(p: *const u8) -> usize {
    // SAFETY: the caller guarantees `p` came from `alloc`, which wrote the header.
    unsafe { ((p as usize - HEADER) as *const usize).read() }
}

/// The pool's address range, which the shim never tracks.
pub fn range() -> crate::base::range::Range {
    crate::base::range::Range::new(base(), base() + POOL_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_sized_and_owned() {
        let a = alloc(10, 16);
        let b = alloc(100, 64);
        assert!(owns(a) && owns(b));
        assert_eq!(b as usize % 64, 0);
        // SAFETY: both came from alloc.
        unsafe {
            assert_eq!(size_of(a), 10);
            assert_eq!(size_of(b), 100);
        }
        assert!((b as usize) >= a as usize + 10);
        assert!(!owns(&0u8 as *const u8));
        assert!(alloc(POOL_BYTES, 16).is_null());
    }
}
