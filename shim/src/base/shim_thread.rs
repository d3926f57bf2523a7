//! Starting the shim's own threads.
//!
//! A shim thread runs on a stack carved from the shim's arena (so its stack and the
//! TLS glibc places at the top of it are the shim's own memory, never tracked), with
//! every signal blocked (the host's signal handlers must never run on it), detached,
//! and started with the real `pthread_create` (not the interposed one).

use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, Ordering};
use std::alloc::Layout;

/// Bytes of stack each shim thread gets.
pub const STACK_BYTES: usize = 256 * 1024;

/// Thread keys (see `sys::thread_key`) of the running shim threads; 0 is free.
static RUNNING: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Whether the calling thread is one of the shim's own.
pub fn is_current() -> bool {
    let me = crate::base::sys::thread_key();
    RUNNING.iter().any(|k| k.load(Ordering::Acquire) == me)
}

/// In a forked child the parent's shim threads do not exist (their keys may be reused).
pub fn forget_after_fork() {
    for k in &RUNNING {
        k.store(0, Ordering::Release);
    }
}

/// CPU time the calling thread has used, nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Start {
    entry: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
}

/// Every shim thread starts here: it records itself, then runs its body.
extern "C" fn trampoline(start: *mut c_void) -> *mut c_void {
    // SAFETY: `spawn` passes a leaked Box<Start>, taken back once, here.
    let start = unsafe { Box::from_raw(start.cast::<Start>()) };
    let me = crate::base::sys::thread_key();
    let slot = RUNNING.iter().find(|k| {
        k.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    });
    let out = (start.entry)(start.arg);
    if let Some(k) = slot {
        k.store(0, Ordering::Release);
    }
    out
}

/// Why a shim thread could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// The C library's `pthread_create` was not found.
    NoPthreadCreate,
    /// No memory for the thread's stack.
    NoStack,
    /// `pthread_create` failed (its error number).
    Create(i32),
}

impl core::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpawnError::NoPthreadCreate => {
                write!(f, "the C library's pthread_create was not found")
            }
            SpawnError::NoStack => write!(f, "no memory for a thread stack"),
            SpawnError::Create(rc) => write!(
                f,
                "pthread_create failed: {}",
                std::io::Error::from_raw_os_error(*rc)
            ),
        }
    }
}

/// Starts `entry(arg)` on a new shim thread.
pub fn spawn(
    entry: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> Result<(), SpawnError> {
    let real = crate::base::forward::real_blocking().ok_or(SpawnError::NoPthreadCreate)?;
    let layout = Layout::from_size_align(STACK_BYTES, 4096).expect("constant layout");
    // SAFETY: non-zero layout; the block is given to the thread for its whole life.
    let stack = unsafe { std::alloc::alloc(layout) };
    if stack.is_null() {
        return Err(SpawnError::NoStack);
    }
    let start = Box::into_raw(Box::new(Start { entry, arg })).cast::<c_void>();
    let _blocked = crate::base::sys::block_signals();
    // SAFETY: `attr` is initialised before use and destroyed after; the stack is
    // STACK_BYTES of memory owned by the new thread from here on.
    let rc = unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstack(&mut attr, stack.cast(), STACK_BYTES);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut tid: libc::pthread_t = 0;
        // EAGAIN can be passing (memory, a thread limit, a process exiting): a few
        // tries, 15 ms in all at most.
        let mut rc = (real.pthread_create)(&mut tid, &attr, trampoline, start);
        for wait_ms in [1, 2, 4, 8] {
            if rc != libc::EAGAIN {
                break;
            }
            crate::base::sys::sleep_ms(wait_ms);
            rc = (real.pthread_create)(&mut tid, &attr, trampoline, start);
        }
        libc::pthread_attr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        // SAFETY: the thread was not created, so the stack and the start record are
        // unused.
        unsafe {
            std::alloc::dealloc(stack, layout);
            drop(Box::from_raw(start.cast::<Start>()));
        }
        return Err(SpawnError::Create(rc));
    }
    Ok(())
}
