//! The one error type of the CLI: a message for stderr and the exit code that goes with it.

use std::fmt::Display;

/// Exit code for a command that was asked for something it cannot do as asked.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a failure while doing what was asked.
pub const EXIT_RUNTIME: i32 = 1;

/// A failure, reported as `memshadow: MESSAGE` on one line.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    /// A bad request: wrong program, bad value.
    pub fn usage(message: impl Display) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }

    /// Something failed while carrying the request out.
    pub fn runtime(message: impl Display) -> Self {
        Failure {
            code: EXIT_RUNTIME,
            message: message.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;
