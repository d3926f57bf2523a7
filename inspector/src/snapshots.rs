//! The `snapshot` and `read` subcommands: take a snapshot of a shimmed process, and
//! copy its memory out as it was at a version.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use memshadow_format::control::MAX_READ;

use crate::cli::{ReadArgs, SnapshotArgs};
use crate::commands::Target;
use crate::control_client;
use crate::error::{Failure, Result};

/// `memshadow snapshot`: prints the new version alone on stdout.
pub fn snapshot(args: SnapshotArgs) -> Result<i32> {
    let target = Target::find(args.pid)?;
    let version = control_client::snapshot(&target.socket).map_err(|e| target.explain(e))?;
    println!("{version}");
    Ok(0)
}

/// `memshadow read`: streams the range in [`MAX_READ`] chunks, one connection each, so
/// at most one chunk is in memory at a time.
pub fn read(args: ReadArgs) -> Result<i32> {
    let Some(end) = args.addr.checked_add(args.len) else {
        return Err(Failure::usage(format!(
            "ADDR {:#x} + LEN {} is past the end of the address space",
            args.addr, args.len
        )));
    };
    if args.out.is_none() && io::stdout().is_terminal() {
        return Err(Failure::usage(
            "refusing to write raw memory to a terminal: use --out FILE or redirect standard output",
        ));
    }
    let target = Target::find(args.pid)?;
    let chunk = usize::try_from(args.len).map_or(MAX_READ, |l| l.min(MAX_READ));
    let mut buf = vec![0u8; chunk];
    // Opened once the first chunk has arrived: a refused read leaves no file behind.
    let mut sink: Option<Sink> = None;
    let mut addr = args.addr;
    while addr < end {
        let n = usize::try_from(end - addr).map_or(chunk, |left| left.min(chunk));
        let part = &mut buf[..n];
        if let Err(e) = control_client::read(&target.socket, args.at_version, addr, part) {
            let mut failure = target.explain(e);
            if let Some(s) = sink {
                // Say where it stopped (and that FILE was removed again).
                let removed = s.abandon();
                let done = addr - args.addr;
                failure.message = match &args.out {
                    Some(path) if removed => format!(
                        "{} (after {done} of {} bytes; removed {})",
                        failure.message,
                        args.len,
                        path.display()
                    ),
                    _ => format!("{} (after {done} of {} bytes)", failure.message, args.len),
                };
            }
            return Err(failure);
        }
        let mut s = match sink.take() {
            Some(s) => s,
            None => Sink::open(args.out.as_deref())?,
        };
        if let Err(e) = s.write(part) {
            let message = s.write_error(&e);
            s.abandon();
            return Err(Failure::runtime(message));
        }
        sink = Some(s);
        addr += n as u64;
    }
    if let Some(s) = sink {
        s.finish()?;
    }
    Ok(0)
}

/// Where `read` writes: standard output, or a file removed again if the read fails.
enum Sink {
    Stdout(io::Stdout),
    File {
        file: File,
        path: PathBuf,
        /// A regular file (not a device or pipe): remove it when the read fails.
        remove_on_failure: bool,
    },
}

impl Sink {
    fn open(out: Option<&Path>) -> Result<Sink> {
        let Some(path) = out else {
            return Ok(Sink::Stdout(io::stdout()));
        };
        let file = File::create(path)
            .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))?;
        let remove_on_failure = file.metadata().is_ok_and(|m| m.is_file());
        Ok(Sink::File {
            file,
            path: path.to_path_buf(),
            remove_on_failure,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    fn write_error(&self, e: &io::Error) -> String {
        match self {
            Sink::Stdout(_) => format!("cannot write to standard output: {e}"),
            Sink::File { path, .. } => format!("cannot write {}: {e}", path.display()),
        }
    }

    /// Flushes standard output (a file is written unbuffered).
    fn finish(self) -> Result<()> {
        let flushed = match &self {
            Sink::Stdout(s) => s.lock().flush(),
            Sink::File { .. } => Ok(()),
        };
        flushed.map_err(|e| {
            let message = self.write_error(&e);
            self.abandon();
            Failure::runtime(message)
        })
    }

    /// Gives up: a partly written regular file is removed. True if it was.
    fn abandon(self) -> bool {
        match self {
            Sink::File {
                file,
                path,
                remove_on_failure: true,
            } => {
                drop(file);
                fs::remove_file(path).is_ok()
            }
            _ => false,
        }
    }
}
