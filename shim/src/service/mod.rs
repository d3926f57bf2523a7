//! What the shim serves: snapshot requests and the epoch thread (the protect pass), the
//! control socket and its pins, and the files it publishes and cleans up.

pub mod backend_choice;
pub mod control;
pub mod epoch;
pub mod exit_files;
pub mod flight;
pub mod leftovers;
pub mod pins;
pub mod written;
