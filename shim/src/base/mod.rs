//! The shim's own primitives, never the host's: raw system calls, ranges, pages, locks,
//! the log, its allocator, the forwarding to the C library, its threads and descriptors.

pub mod arena;
pub mod bootstrap;
pub mod fds;
pub mod forward;
pub mod log;
pub mod mailbox;
pub mod own;
pub mod page;
pub mod range;
pub mod shim_thread;
pub mod sync;
pub mod sys;
