//! Definitions shared by `libmemshadow.so` (the shim) and the `memshadow` inspector.
//!
//! Nothing here is interposed or touches the host process: it is layouts, names and
//! encoders that both sides must agree on.

pub mod control;
pub mod image;
pub mod paths;
pub mod stats;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "store")]
pub mod store_context;
#[cfg(feature = "store")]
pub mod store_plan;
#[cfg(feature = "store")]
pub mod version_stats;
