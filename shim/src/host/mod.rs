//! The exported C symbols (`interpose`, thin) and what the interposed allocation and
//! mapping calls do.

pub mod heap;
pub mod interpose;
pub mod mapping;
