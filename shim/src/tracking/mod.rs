//! What is tracked: the table of the program's writable anonymous memory, read from
//! `/proc/self/maps` and kept current by the interposed calls, and the threads' stacks.

pub mod maps;
pub mod regions;
pub mod stacks;
