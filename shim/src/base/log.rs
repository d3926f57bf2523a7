//! `memshadow:` lines on stderr, formatted on the stack: logging never allocates, so it
//! is safe from interposed calls and from the shim's own threads.

use core::fmt::Write;
use core::sync::atomic::{AtomicU8, Ordering};

/// How much the shim says (`MEMSHADOW_LOG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Off = 0,
    Error = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Error as u8);

pub fn set_level(l: Level) {
    LEVEL.store(l as u8, Ordering::Relaxed);
}

pub fn enabled(l: Level) -> bool {
    l != Level::Off && LEVEL.load(Ordering::Relaxed) >= l as u8
}

/// A fixed buffer that truncates instead of failing.
struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - 1 - self.len; // keep one byte for the newline
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes one `memshadow: ...` line to stderr if `level` is enabled.
pub fn emit(level: Level, args: core::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let mut line = LineBuf {
        buf: [0; 512],
        len: 0,
    };
    let _ = line.write_str("memshadow: ");
    let _ = line.write_fmt(args);
    line.buf[line.len] = b'\n';
    crate::base::sys::write_all(2, &line.buf[..line.len + 1]);
}

macro_rules! error {
    ($($t:tt)*) => { $crate::base::log::emit($crate::base::log::Level::Error, format_args!($($t)*)) };
}
macro_rules! info {
    ($($t:tt)*) => { $crate::base::log::emit($crate::base::log::Level::Info, format_args!($($t)*)) };
}
macro_rules! debug {
    ($($t:tt)*) => { $crate::base::log::emit($crate::base::log::Level::Debug, format_args!($($t)*)) };
}
pub(crate) use {debug, error, info};
