//! The exported C symbols: the only entry points the host program calls. Each is a thin
//! forwarder to the module that owns the concern (`heap`, `mapping`, `stacks`, `fds`).
//!
//! `no_mangle` is off in unit tests so that the test binary keeps the system allocator.

use crate::base::forward::StartRoutine;
use crate::{base::fds, host::heap, host::mapping, tracking::stacks};
use core::ffi::{c_int, c_uint, c_void};

/// # Safety
/// `malloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::malloc(size) }
}

/// # Safety
/// `free(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: same contract.
    unsafe { heap::free(p) }
}

/// # Safety
/// `calloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::calloc(n, size) }
}

/// # Safety
/// `realloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::realloc(p, size) }
}

/// # Safety
/// `reallocarray(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::reallocarray(p, n, size) }
}

/// # Safety
/// `posix_memalign(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // SAFETY: same contract.
    unsafe { heap::posix_memalign(out, align, size) }
}

/// # Safety
/// `aligned_alloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::aligned_alloc(align, size) }
}

/// # Safety
/// `memalign(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::memalign(align, size) }
}

/// # Safety
/// `valloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::valloc(size) }
}

/// # Safety
/// `pvalloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { heap::pvalloc(size) }
}

/// # Safety
/// `malloc_usable_size(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: same contract.
    unsafe { heap::malloc_usable_size(p) }
}

/// # Safety
/// `malloc_trim(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc_trim(pad: usize) -> c_int {
    // SAFETY: same contract.
    unsafe { heap::malloc_trim(pad) }
}

/// # Safety
/// `madvise(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { mapping::madvise(addr, len, advice) }
}

/// # Safety
/// `mmap(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { mapping::mmap(addr, len, prot, flags, fd, off, false) }
}

/// # Safety
/// `mmap64(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: i64,
) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { mapping::mmap(addr, len, prot, flags, fd, off, true) }
}

/// # Safety
/// `munmap(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    // SAFETY: same contract.
    unsafe { mapping::munmap(addr, len) }
}

/// `mremap(2)` is variadic in C; its optional fifth argument arrives in the fifth
/// argument register, which is where this fixed-arity definition reads it (x86-64 and
/// aarch64 Linux calling conventions pass variadic integer arguments like fixed ones).
///
/// # Safety
/// `mremap(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { mapping::mremap(old, old_len, new_len, flags, new_addr) }
}

/// # Safety
/// `brk(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn brk(addr: *mut c_void) -> c_int {
    // SAFETY: same contract.
    unsafe { mapping::brk(addr) }
}

/// # Safety
/// `sbrk(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sbrk(incr: isize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { mapping::sbrk(incr) }
}

/// # Safety
/// `pthread_create(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: same contract.
    unsafe { stacks::create(thread, attr, start, arg) }
}

/// The opt-in C API (see `c-tests/include/memshadow.h`): takes a snapshot from the
/// calling thread and returns its version, or -1 with errno set.
///
/// # Safety
/// Callable from any thread outside signal handlers.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn memshadow_snapshot_v1() -> i64 {
    crate::service::epoch::snapshot_for_api()
}

/// `close(2)`: a descriptor of the shim's is not the program's to close (see `fds`).
///
/// # Safety
/// `close(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { fds::close(fd) }
}

/// # Safety
/// `close_range(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { fds::close_range(first, last, flags) }
}

/// # Safety
/// `closefrom(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn closefrom(low: c_int) {
    // SAFETY: same contract.
    unsafe { fds::closefrom(low) }
}

/// # Safety
/// `dup2(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { fds::dup2(old, new) }
}

/// # Safety
/// `dup3(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: same contract.
    unsafe { fds::dup3(old, new, flags) }
}

/// `_exit(2)`: removes this process's stats page and socket (see `exit_files`), then
/// forwards.
///
/// # Safety
/// `_exit(2)`; async-signal-safe.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn _exit(status: c_int) -> ! {
    crate::service::exit_files::quick_exit(status)
}

/// `_Exit(3)`: the same as `_exit`.
///
/// # Safety
/// `_Exit(3)`; async-signal-safe.
#[cfg_attr(not(test), no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn _Exit(status: c_int) -> ! {
    crate::service::exit_files::quick_exit(status)
}

/// `sigaction(2)`: under the flight recorder the program sees and sets its own action
/// of the five fatal signals (see `service::flight`); otherwise forwarded.
///
/// # Safety
/// `sigaction(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: same contract.
    unsafe { crate::service::flight::sigaction(sig, act, old) }
}

/// `signal(3)`: as `sigaction`.
///
/// # Safety
/// `signal(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: same contract.
    unsafe { crate::service::flight::signal(sig, handler) }
}

/// `bsd_signal(3)`: the same as `signal`.
///
/// # Safety
/// `bsd_signal(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: same contract.
    unsafe { crate::service::flight::signal(sig, handler) }
}
