//! Starting the shim's own threads.
//!
//! A shim thread runs on a stack carved from the shim's arena (so its stack and the
//! TLS glibc places at the top of it are the shim's own memory, never tracked), with
//! every signal blocked (the host's signal handlers must never run on it), detached,
//! and started with the real `pthread_create` (not the interposed one).

use core::ffi::c_void;
use std::alloc::Layout;

/// Bytes of stack each shim thread gets.
pub const STACK_BYTES: usize = 256 * 1024;

/// Starts `entry(arg)` on a new shim thread.
pub fn spawn(
    entry: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> Result<(), String> {
    let real =
        crate::forward::real_blocking().ok_or("the C library's pthread_create was not found")?;
    let layout = Layout::from_size_align(STACK_BYTES, 4096).expect("constant layout");
    // SAFETY: non-zero layout; the block is given to the thread for its whole life.
    let stack = unsafe { std::alloc::alloc(layout) };
    if stack.is_null() {
        return Err("no memory for a thread stack".into());
    }
    let _blocked = crate::sys::block_signals();
    // SAFETY: `attr` is initialised before use and destroyed after; the stack is
    // STACK_BYTES of memory owned by the new thread from here on.
    let rc = unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstack(&mut attr, stack.cast(), STACK_BYTES);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut tid: libc::pthread_t = 0;
        let rc = (real.pthread_create)(&mut tid, &attr, entry, arg);
        libc::pthread_attr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        // SAFETY: the thread was not created, so the stack is unused.
        unsafe { std::alloc::dealloc(stack, layout) };
        return Err(format!(
            "pthread_create failed: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok(())
}
