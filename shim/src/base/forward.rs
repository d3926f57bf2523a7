//! The real implementations behind the interposed symbols.
//!
//! They are found with `dlsym(RTLD_NEXT, ...)`, so a program that links another
//! allocator (jemalloc, tcmalloc) keeps it. `dlsym` may itself call `calloc`/`malloc`
//! before the lookup is done: while resolution is in progress, allocations are served
//! from a small static [bootstrap pool](crate::base::bootstrap) that `free` recognises.

use core::ffi::{c_char, c_int, c_uint, c_void};
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

pub type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
pub type FreeFn = unsafe extern "C" fn(*mut c_void);
pub type CallocFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
pub type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
pub type ReallocArrayFn = unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void;
pub type PosixMemalignFn = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int;
pub type AlignedFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
pub type UsableFn = unsafe extern "C" fn(*mut c_void) -> usize;
pub type MmapFn = unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, c_int, i64) -> *mut c_void;
pub type MunmapFn = unsafe extern "C" fn(*mut c_void, usize) -> c_int;
/// `mremap` is variadic; on x86-64 and aarch64 Linux the optional fifth argument travels
/// in the same register as a fixed one, so it is declared with five fixed arguments.
pub type MremapFn =
    unsafe extern "C" fn(*mut c_void, usize, usize, c_int, *mut c_void) -> *mut c_void;
pub type BrkFn = unsafe extern "C" fn(*mut c_void) -> c_int;
pub type MadviseFn = unsafe extern "C" fn(*mut c_void, usize, c_int) -> c_int;
pub type MallocTrimFn = unsafe extern "C" fn(usize) -> c_int;
pub type SbrkFn = unsafe extern "C" fn(isize) -> *mut c_void;
pub type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;
pub type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
pub type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
pub type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
pub type CloseRangeFn = unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
pub type ClosefromFn = unsafe extern "C" fn(c_int);
pub type ExitFn = unsafe extern "C" fn(c_int) -> !;
pub type PthreadCreateFn = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    StartRoutine,
    *mut c_void,
) -> c_int;

/// A glibc chunk header word, and the size field's bit for a chunk mmapped on its own.
const WORD: usize = core::mem::size_of::<usize>();
const IS_MMAPPED: usize = 0x2;

/// The next definition of every interposed symbol. A function the C library lacks
/// stays `None` and its interposed twin fails with ENOMEM/ENOSYS.
pub struct RealFns {
    pub malloc: MallocFn,
    pub free: FreeFn,
    pub calloc: CallocFn,
    pub realloc: ReallocFn,
    pub reallocarray: Option<ReallocArrayFn>,
    pub posix_memalign: Option<PosixMemalignFn>,
    pub aligned_alloc: Option<AlignedFn>,
    pub memalign: Option<AlignedFn>,
    pub valloc: Option<MallocFn>,
    pub pvalloc: Option<MallocFn>,
    pub malloc_usable_size: UsableFn,
    pub mmap: MmapFn,
    pub mmap64: MmapFn,
    pub munmap: MunmapFn,
    pub mremap: MremapFn,
    pub brk: BrkFn,
    pub sbrk: SbrkFn,
    pub madvise: MadviseFn,
    pub malloc_trim: Option<MallocTrimFn>,
    pub pthread_create: PthreadCreateFn,
    /// The descriptor calls `base::fds` guards, and `_exit` (`service::exit_files`);
    /// `None` where the C library lacks one (the callers fall back to the system call).
    pub close: Option<CloseFn>,
    pub dup2: Option<Dup2Fn>,
    pub dup3: Option<Dup3Fn>,
    pub close_range: Option<CloseRangeFn>,
    pub closefrom: Option<ClosefromFn>,
    pub exit: Option<ExitFn>,
    /// The next `malloc` is glibc's own (it is `__libc_malloc`), so a block's usable size
    /// can be read from its chunk header.
    pub glibc_chunks: bool,
}

impl RealFns {
    /// The usable size of a live block of the real allocator.
    ///
    /// glibc's `malloc_usable_size` also reads the *next* chunk's header to check that the
    /// block is in use, a likely cache miss that cost a fifth of an allocation-heavy
    /// program's time. For glibc's allocator the block's own size field (just below it,
    /// on the line `free` is about to touch anyway) gives the same answer for a live
    /// block: chunk size minus one header word, or minus two for an mmapped chunk.
    ///
    /// # Safety
    /// `p` must be a live block returned by this allocator.
    #[inline]
    pub unsafe fn usable_size(&self, p: *mut c_void) -> usize {
        if self.glibc_chunks {
            // SAFETY: every live glibc block is preceded by its chunk's size field.
            let field = unsafe { (p as *const usize).sub(1).read() };
            let chunk = field & !0x7;
            chunk
                - if field & IS_MMAPPED != 0 {
                    2 * WORD
                } else {
                    WORD
                }
        } else {
            // SAFETY: forwarded; the caller guarantees `p` is live.
            unsafe { (self.malloc_usable_size)(p) }
        }
    }
}

impl RealFns {
    /// The pages of `p`'s chunk when glibc mmapped it (its `free` unmaps them with its
    /// own `__munmap`), else `None`.
    ///
    /// # Safety
    /// `p` must be a live block returned by this allocator.
    pub unsafe fn mmapped_chunk(&self, p: *mut c_void) -> Option<crate::base::range::Range> {
        if !self.glibc_chunks {
            return None;
        }
        // SAFETY: every live glibc block is preceded by its chunk's size field, and an
        // mmapped chunk's prev_size field (one word lower) holds the distance from the
        // mapping's start to the chunk.
        let (size, lead) = unsafe {
            let size = (p as *const usize).sub(1).read();
            if size & IS_MMAPPED == 0 {
                return None;
            }
            (size & !0x7, (p as *const usize).sub(2).read())
        };
        let chunk = p as usize - 2 * WORD;
        Some(crate::base::range::Range::new(chunk - lead, chunk + size))
    }
}

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const FAILED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);
/// The resolved functions; null until the lookup has finished. One load on the hot path.
static REAL: AtomicPtr<RealFns> = AtomicPtr::new(core::ptr::null_mut());
static mut STORAGE: Option<RealFns> = None;

fn lookup(name: &[u8]) -> *mut c_void {
    // SAFETY: `name` is a NUL-terminated literal; RTLD_NEXT searches the objects loaded
    // after this one, which is what interposition forwards to.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const c_char) }
}

macro_rules! sym {
    ($name:literal) => {{
        let p = lookup(concat!($name, "\0").as_bytes());
        // SAFETY: a non-null result of dlsym for this name is that C function, whose
        // signature matches the alias (checked against glibc's declarations).
        (!p.is_null()).then(|| unsafe { core::mem::transmute::<*mut c_void, _>(p) })
    }};
}

fn resolve_all() -> Option<RealFns> {
    let malloc: MallocFn = sym!("malloc")?;
    let libc_malloc: Option<MallocFn> = sym!("__libc_malloc");
    Some(RealFns {
        glibc_chunks: libc_malloc.is_some_and(|m| m as usize == malloc as usize),
        malloc,
        free: sym!("free")?,
        calloc: sym!("calloc")?,
        realloc: sym!("realloc")?,
        reallocarray: sym!("reallocarray"),
        posix_memalign: sym!("posix_memalign"),
        aligned_alloc: sym!("aligned_alloc"),
        memalign: sym!("memalign"),
        valloc: sym!("valloc"),
        pvalloc: sym!("pvalloc"),
        malloc_usable_size: sym!("malloc_usable_size")?,
        mmap: sym!("mmap")?,
        mmap64: sym!("mmap64").or(sym!("mmap"))?,
        munmap: sym!("munmap")?,
        mremap: sym!("mremap")?,
        brk: sym!("brk")?,
        sbrk: sym!("sbrk")?,
        madvise: sym!("madvise")?,
        malloc_trim: sym!("malloc_trim"),
        pthread_create: sym!("pthread_create")?,
        close: sym!("close"),
        dup2: sym!("dup2"),
        dup3: sym!("dup3"),
        close_range: sym!("close_range"),
        closefrom: sym!("closefrom"),
        exit: sym!("_exit"),
    })
}

/// The real functions, or `None` while they are being looked up (by this thread or
/// another) or if the lookup failed. Callers fall back to the bootstrap pool or to raw
/// syscalls.
#[inline]
pub fn real() -> Option<&'static RealFns> {
    let p = REAL.load(Ordering::Acquire);
    if p.is_null() {
        return real_slow();
    }
    // SAFETY: REAL is set once, to STORAGE after it was written (Release), never changed.
    Some(unsafe { &*p })
}

#[cold]
fn real_slow() -> Option<&'static RealFns> {
    if STATE
        .compare_exchange(UNRESOLVED, RESOLVING, Ordering::Acquire, Ordering::Acquire)
        .is_err()
    {
        // Being resolved (re-entered from dlsym, or by another thread), failed, or
        // resolved by another thread since the first load.
        let p = REAL.load(Ordering::Acquire);
        // SAFETY: as in `real`.
        return (!p.is_null()).then(|| unsafe { &*p });
    }
    match resolve_all() {
        Some(fns) => {
            // SAFETY: only the thread that won the CAS writes STORAGE, once, before
            // publishing it through REAL; nobody reads it before that.
            let p = unsafe { (*core::ptr::addr_of_mut!(STORAGE)).insert(fns) as *mut RealFns };
            REAL.store(p, Ordering::Release);
            // SAFETY: just written, never changed again.
            Some(unsafe { &*p })
        }
        None => {
            STATE.store(FAILED, Ordering::Release);
            None
        }
    }
}

/// Waits for the lookup to finish (another thread may be doing it). For callers that
/// have no fallback, such as `pthread_create`.
pub fn real_blocking() -> Option<&'static RealFns> {
    loop {
        if let Some(r) = real() {
            return Some(r);
        }
        if STATE.load(Ordering::Acquire) == FAILED {
            return None;
        }
        core::hint::spin_loop();
    }
}
