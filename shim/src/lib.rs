//! `libmemshadow.so`: preloaded into a host program, it interposes the allocator and the
//! memory-mapping calls, keeps a table of the program's writable anonymous memory, and
//! publishes live statistics (a shared-memory page) and a control socket.
//!
//! The modules are layers, each importing only those below it (lowest first): `predict`
//! (a pure leaf), `base`, `config`, `stats`, `tracking`, `engine`, `prefetch`, `service`,
//! `host` (the exported symbols) and `runtime` (load, fork, exit). `shim/ARCHITECTURE.md`
//! draws them and walks a trap and a snapshot through them; `shim/tests/layers.rs`
//! keeps the order.

// Unit tests do not register the constructor or export the symbols, so the code only
// they reach is unused there.
#![cfg_attr(test, allow(dead_code))]

mod base;
mod config;
mod engine;
mod host;
mod predict;
mod prefetch;
mod runtime;
mod service;
mod stats;
mod tracking;

/// Every Rust allocation of the shim comes from its own arena, never the host's malloc.
#[cfg_attr(not(test), global_allocator)]
static ALLOCATOR: base::arena::ShimArena = base::arena::ShimArena::new();

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = runtime::on_load;

#[cfg(not(test))]
#[used]
#[link_section = ".fini_array"]
static ON_UNLOAD: extern "C" fn() = runtime::on_unload;
