//! `libmemshadow.so`: preloaded into a host program, it interposes the allocator and the
//! memory-mapping calls, keeps a table of the program's writable anonymous memory, and
//! publishes live statistics (a shared-memory page) and a control socket.
//!
//! Module map (data flows top to bottom):
//! - `interpose`: the exported C symbols, thin forwarders;
//! - `heap`, `mapping`, `stacks`: what each interposed call does;
//! - `forward`, `bootstrap`: reaching the real functions;
//! - `regions`, `maps`: the table of tracked memory and the maps-file parser;
//! - `stats`, `control`: what is published;
//! - `engine`, `epoch`, `reprotect`, `preserve`, `fault`, `fault_window`, `shadow`, `readback`, `uffd`: snapshots (started by the
//!   first snapshot request): protect passes, the fault path, shadow copies, reading a
//!   version back, the userfaultfd interface;
//! - `governor`: stretches the automatic interval when snapshots cost too much;
//! - `prefetch`, `predict`: the thread that copies pages ahead of their first write, and
//!   the predictors that choose them;
//! - `runtime`, `config`: start-up, fork, exit, environment; `exit_files`, `leftovers`:
//!   removing this process's files at `_exit` and those of processes that are gone;
//! - `arena`, `own`, `range`, `shim_thread`, `sync`, `sys`, `log`: the shim's own memory,
//!   threads and primitives, never the host's;
//! - `fds`: the shim's own descriptors, moved out of the program's way and guarded against
//!   its `close`, `close_range`, `closefrom`, `dup2` and `dup3`.

// Unit tests do not register the constructor or export the symbols, so the code only
// they reach is unused there.
#![cfg_attr(test, allow(dead_code))]

mod arena;
mod bootstrap;
mod boundary_copy;
mod config;
mod control;
mod engine;
mod epoch;
mod exit_files;
mod fault;
mod fault_window;
mod fds;
mod forward;
mod governor;
mod heap;
mod interpose;
mod leftovers;
mod log;
mod mapping;
mod maps;
mod own;
mod page;
mod pagemap;
mod pins;
mod predict;
mod prefetch;
mod preserve;
mod range;
mod readback;
mod regions;
mod reprotect;
mod runtime;
mod save_ahead;
mod shadow;
mod shim_thread;
mod stacks;
mod stats;
mod sync;
mod sys;
mod trap_notes;
mod uffd;

/// Every Rust allocation of the shim comes from its own arena, never the host's malloc.
#[cfg_attr(not(test), global_allocator)]
static ALLOCATOR: arena::ShimArena = arena::ShimArena::new();

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = runtime::on_load;

#[cfg(not(test))]
#[used]
#[link_section = ".fini_array"]
static ON_UNLOAD: extern "C" fn() = runtime::on_unload;
