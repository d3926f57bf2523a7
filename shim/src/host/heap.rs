//! The host's allocator, forwarded and counted.
//!
//! Each function calls the real implementation (see `forward`) and records the block in
//! the stats page. Before the real functions are known (while `dlsym` runs) blocks come
//! from the bootstrap pool. Nothing here takes a lock or makes a syscall.

use crate::{base::bootstrap, base::forward, base::sys, engine::preserve, stats};
use core::ffi::{c_int, c_void};

const PTR: usize = core::mem::size_of::<*mut c_void>();

fn page_size() -> usize {
    // SAFETY: getauxval only reads the auxiliary vector.
    match unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize {
        0 => 4096,
        n => n,
    }
}

#[inline]
fn counted(p: *mut c_void, real: &forward::RealFns) -> *mut c_void {
    if !p.is_null() {
        // SAFETY: `p` is a live block just returned by the real allocator.
        stats::on_alloc(unsafe { real.usable_size(p) });
    }
    p
}

fn boot(size: usize, align: usize) -> *mut c_void {
    let p = bootstrap::alloc(size, align);
    if p.is_null() {
        sys::set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// # Safety
/// `malloc(3)`.
#[inline]
pub unsafe fn malloc(size: usize) -> *mut c_void {
    match forward::real() {
        // SAFETY: forwarded unchanged.
        Some(r) => counted(unsafe { (r.malloc)(size) }, r),
        None => boot(size, 16),
    }
}

/// # Safety
/// `free(3)`: `p` is null or a live block of this allocator.
#[inline]
pub unsafe fn free(p: *mut c_void) {
    if p.is_null() || bootstrap::owns(p.cast()) {
        return;
    }
    if let Some(r) = forward::real() {
        // SAFETY: `p` is a live block of the real allocator (bootstrap blocks returned above).
        stats::on_free(unsafe { r.usable_size(p) });
        // SAFETY: as above.
        match unsafe { leaving_chunk(r, p) } {
            // SAFETY: forwarded unchanged.
            Some(chunk) => preserve::around_discard(chunk, || unsafe { (r.free)(p) }),
            // SAFETY: forwarded unchanged.
            None => unsafe { (r.free)(p) },
        }
    }
}

/// # Safety
/// `calloc(3)`.
pub unsafe fn calloc(n: usize, size: usize) -> *mut c_void {
    match forward::real() {
        // SAFETY: forwarded unchanged.
        Some(r) => counted(unsafe { (r.calloc)(n, size) }, r),
        None => match n.checked_mul(size) {
            Some(total) => boot(total, 16), // the pool is static, hence zeroed, never reused
            None => {
                sys::set_errno(libc::ENOMEM);
                core::ptr::null_mut()
            }
        },
    }
}

/// Moves a bootstrap block into a new block of `size` bytes (glibc semantics for 0).
unsafe fn realloc_from_bootstrap(p: *mut c_void, size: usize) -> *mut c_void {
    if size == 0 {
        return core::ptr::null_mut();
    }
    // SAFETY: plain allocation.
    let q = unsafe { malloc(size) };
    if !q.is_null() {
        // SAFETY: `p` is a bootstrap block of `size_of(p)` bytes; `q` has `size` bytes.
        unsafe {
            let old = bootstrap::size_of(p.cast());
            core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old.min(size));
        }
    }
    q
}

/// Records a resize done by the real realloc/reallocarray. `zero_request` tells whether
/// the new size was zero, in which case glibc freed the block and returned null.
fn count_resize(r: &forward::RealFns, old_usable: usize, q: *mut c_void, zero_request: bool) {
    if !q.is_null() {
        // SAFETY: `q` is the live block realloc returned.
        stats::on_resize(old_usable, unsafe { r.usable_size(q) });
    } else if zero_request {
        stats::on_free(old_usable);
    }
}

/// # Safety
/// `realloc(3)`.
pub unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        // SAFETY: realloc(NULL, n) is malloc(n).
        return unsafe { malloc(size) };
    }
    if bootstrap::owns(p.cast()) {
        // SAFETY: `p` is a bootstrap block.
        return unsafe { realloc_from_bootstrap(p, size) };
    }
    let Some(r) = forward::real() else {
        return core::ptr::null_mut();
    };
    // SAFETY: `p` is a live block of the real allocator.
    let old = unsafe { r.usable_size(p) };
    // SAFETY: as above.
    let chunk = unsafe { leaving_chunk(r, p) };
    // SAFETY: forwarded unchanged.
    let forward = || unsafe { (r.realloc)(p, size) };
    let q = match chunk {
        Some(chunk) => preserve::around_discard(chunk, forward),
        None => forward(),
    };
    count_resize(r, old, q, size == 0);
    q
}

/// The pages of `p`'s chunk if glibc mmapped it and snapshots are being taken: freeing
/// or resizing it unmaps or moves them behind the interposer's back (`__munmap`,
/// `__mremap`), so they are saved first (see `preserve`).
///
/// # Safety
/// `p` must be a live block of the real allocator.
#[inline]
unsafe fn leaving_chunk(r: &forward::RealFns, p: *mut c_void) -> Option<crate::base::range::Range> {
    if !crate::engine::started() {
        return None;
    }
    // SAFETY: the caller's contract.
    unsafe { r.mmapped_chunk(p) }
}

/// # Safety
/// `malloc_trim(3)`.
pub unsafe fn malloc_trim(pad: usize) -> c_int {
    let Some(trim) = forward::real().and_then(|r| r.malloc_trim) else {
        return 0;
    };
    if !crate::engine::started() {
        // SAFETY: forwarded unchanged.
        return unsafe { trim(pad) };
    }
    // glibc trims with its own __madvise: save what retained versions need of every
    // heap it may trim first (the brk heap and the arena heaps).
    let heaps = crate::tracking::regions::malloc_heaps();
    let mut saved = [None; crate::tracking::regions::MAX_MALLOC_HEAPS];
    for (s, &h) in saved.iter_mut().zip(heaps.iter()) {
        *s = preserve::before_discard(h);
    }
    // SAFETY: forwarded unchanged.
    let rc = unsafe { trim(pad) };
    for (&s, &h) in saved.iter().zip(heaps.iter()) {
        preserve::after_discard(h, s);
    }
    rc
}

/// # Safety
/// `reallocarray(3)`.
pub unsafe fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        sys::set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    let Some(real_fn) = forward::real().and_then(|r| r.reallocarray) else {
        // SAFETY: with the product checked, reallocarray is realloc.
        return unsafe { realloc(p, total) };
    };
    if p.is_null() || bootstrap::owns(p.cast()) {
        // SAFETY: as above.
        return unsafe { realloc(p, total) };
    }
    let r = forward::real().expect("checked above");
    // SAFETY: `p` is a live block of the real allocator.
    let old = unsafe { r.usable_size(p) };
    // SAFETY: as above.
    let chunk = unsafe { leaving_chunk(r, p) };
    // SAFETY: forwarded unchanged.
    let forward = || unsafe { real_fn(p, n, size) };
    let q = match chunk {
        Some(chunk) => preserve::around_discard(chunk, forward),
        None => forward(),
    };
    count_resize(r, old, q, total == 0);
    q
}

/// # Safety
/// `posix_memalign(3)`.
pub unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    match forward::real() {
        Some(r) => {
            let Some(f) = r.posix_memalign else {
                return libc::ENOMEM;
            };
            // SAFETY: forwarded unchanged.
            let rc = unsafe { f(out, align, size) };
            if rc == 0 {
                // SAFETY: on success `*out` holds the new block.
                counted(unsafe { *out }, r);
            }
            rc
        }
        None => {
            if !align.is_power_of_two() || !align.is_multiple_of(PTR) {
                return libc::EINVAL;
            }
            let p = bootstrap::alloc(size, align);
            if p.is_null() {
                return libc::ENOMEM;
            }
            // SAFETY: the caller passes a valid out-pointer.
            unsafe { *out = p.cast() };
            0
        }
    }
}

/// Forwards one of the aligned allocators that return a pointer.
unsafe fn aligned(
    pick: fn(&forward::RealFns) -> Option<forward::AlignedFn>,
    align: usize,
    size: usize,
) -> *mut c_void {
    match forward::real() {
        Some(r) => match pick(r) {
            // SAFETY: forwarded unchanged.
            Some(f) => counted(unsafe { f(align, size) }, r),
            None => {
                sys::set_errno(libc::ENOMEM);
                core::ptr::null_mut()
            }
        },
        None if align.is_power_of_two() => boot(size, align),
        None => {
            sys::set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

/// # Safety
/// `aligned_alloc(3)`.
pub unsafe fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { aligned(|r| r.aligned_alloc, align, size) }
}

/// # Safety
/// `memalign(3)`.
pub unsafe fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { aligned(|r| r.memalign, align, size) }
}

/// Forwards `valloc`/`pvalloc`.
unsafe fn page_aligned(
    pick: fn(&forward::RealFns) -> Option<forward::MallocFn>,
    size: usize,
) -> *mut c_void {
    match forward::real() {
        Some(r) => match pick(r) {
            // SAFETY: forwarded unchanged.
            Some(f) => counted(unsafe { f(size) }, r),
            None => {
                sys::set_errno(libc::ENOMEM);
                core::ptr::null_mut()
            }
        },
        None => {
            let page = page_size();
            boot(size.div_ceil(page).max(1) * page, page)
        }
    }
}

/// # Safety
/// `valloc(3)`.
pub unsafe fn valloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { page_aligned(|r| r.valloc, size) }
}

/// # Safety
/// `pvalloc(3)`.
pub unsafe fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { page_aligned(|r| r.pvalloc, size) }
}

/// # Safety
/// `malloc_usable_size(3)`.
pub unsafe fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    if bootstrap::owns(p.cast()) {
        // SAFETY: `p` is a bootstrap block.
        return unsafe { bootstrap::size_of(p.cast()) };
    }
    match forward::real() {
        // SAFETY: forwarded unchanged.
        Some(r) => unsafe { (r.malloc_usable_size)(p) },
        None => 0,
    }
}
