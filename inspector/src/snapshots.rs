//! The `snapshot`, `read` and `image` subcommands: take a snapshot of a shimmed process,
//! and copy its memory out as it was at a version, a range or all of it.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use memshadow_format::control::{RegionsReply, MAX_READ};
use memshadow_format::image::{ImageError, ImageHeader, ImageWriter};

use crate::cli::{ImageArgs, ReadArgs, SnapshotArgs};
use crate::control_client;
use crate::error::{Failure, Result};
use crate::safe_file::{self, SafeFile, Sink};
use crate::target::Target;

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
    // TARGET: a pid (all digits) or a store.
    if args.target.is_empty() || !args.target.bytes().all(|b| b.is_ascii_digit()) {
        return crate::store_cmds::read(&args);
    }
    let pid = args
        .target
        .parse()
        .map_err(|_| Failure::usage(format!("{} is not a pid", args.target)))?;
    let target = Target::find(pid)?;
    // Held until the range is written: new snapshots cannot evict the version meanwhile.
    let pin =
        control_client::pin(&target.socket, args.at_version).map_err(|e| target.explain(e))?;
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
            failure.message = gave_way(failure.message, pin.is_some());
            if let Some(s) = sink {
                // Say where it stopped (and that FILE was removed again).
                let removed = s.abandon();
                let done = addr - args.addr;
                failure.message = match &args.out {
                    Some(path) if removed => format!(
                        "{} (after {done} of {} bytes; {} not written)",
                        failure.message,
                        args.len,
                        path.display()
                    ),
                    _ => format!("{} (after {done} of {} bytes)", failure.message, args.len),
                };
            }
            return Err(failure);
        }
        Sink::write_opening(&mut sink, args.out.as_deref(), part)?;
        addr += n as u64;
    }
    if let Some(s) = sink {
        s.finish()?;
    }
    Ok(0)
}

/// `memshadow image`: asks the process which regions the version holds, then reads
/// each in [`MAX_READ`] chunks (one connection each, as `read` does) and appends every
/// chunk to the image as it arrives: one chunk in memory at a time. Each chunk is taken
/// by the process under its engine lock, page by page, from the version's shadow or
/// the unchanged live page, so writers running meanwhile never tear it; a version
/// evicted meanwhile fails the read instead of giving newer bytes.
pub fn image(args: ImageArgs) -> Result<i32> {
    let target = Target::find(args.pid)?;
    let version = args.at_version;
    // Held until the image is written: new snapshots cannot evict the version meanwhile.
    let pin = control_client::pin(&target.socket, version).map_err(|e| target.explain(e))?;
    let layout = control_client::regions(&target.socket, version).map_err(|e| target.explain(e))?;
    let page_size = u32::try_from(layout.page_size).map_err(|_| {
        Failure::runtime(format!(
            "process {} ({}) reports a page size of {} bytes",
            target.pid, target.comm, layout.page_size
        ))
    })?;
    let total: u64 = layout.regions.iter().map(|&(_, len)| len).sum();
    let header = ImageHeader {
        page_size,
        pid: target.pid,
        version,
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let out = SafeFile::create(&args.out)
        .map_err(|e| Failure::runtime(safe_file::cannot_write(&args.out, &e)))?;
    let mut progress = Progress::default();
    match write_image(&target, &layout, header, out.file(), &mut progress) {
        Ok(()) => out
            .commit()
            .map_err(|e| Failure::runtime(safe_file::cannot_write(&args.out, &e)))?,
        Err(e) => {
            let message = match e {
                StreamError::Process(f) => gave_way(f.message, pin.is_some()),
                StreamError::File(e) => format!("cannot write {}: {e}", args.out.display()),
            };
            let regions = layout.regions.len();
            let removed = if out.is_new_file() {
                format!("; {} not written", args.out.display())
            } else {
                String::new()
            };
            drop(out);
            return Err(Failure::runtime(format!(
                "{message} (in region {} of {regions}, after {} of {total} bytes{removed})",
                progress.region, progress.bytes
            )));
        }
    }
    eprintln!(
        "memshadow: wrote version {version} of process {} ({}): {} region(s), {total} bytes ({:.1} MiB), to {}",
        target.pid,
        target.comm,
        layout.regions.len(),
        total as f64 / (1 << 20) as f64,
        args.out.display()
    );
    Ok(0)
}

/// A refusal of a pinned version: its pin gave way, and why that happens.
fn gave_way(message: String, pinned: bool) -> String {
    if pinned && message.contains("is no longer retained") {
        format!(
            "{message}; its pin gave way: the shadow budget ran out (MEMSHADOW_SHADOW_BUDGET_MB), or {} newer versions piled up behind it",
            memshadow_format::control::PIN_EXTRA_VERSIONS
        )
    } else {
        message
    }
}

/// How far an image got: the region being written (from 1) and the bytes written.
#[derive(Default)]
struct Progress {
    region: usize,
    bytes: u64,
}

/// Why an image could not be written.
enum StreamError {
    /// The process refused a read or stopped answering (message ready for the user).
    Process(Failure),
    /// Writing the file failed.
    File(ImageError),
}

fn write_image(
    target: &Target,
    layout: &RegionsReply,
    header: ImageHeader,
    file: &File,
    progress: &mut Progress,
) -> std::result::Result<(), StreamError> {
    let mut image = ImageWriter::new(BufWriter::with_capacity(256 << 10, file), &header)
        .map_err(StreamError::File)?;
    let mut buf = vec![0u8; MAX_READ];
    for (i, &(start, len)) in layout.regions.iter().enumerate() {
        progress.region = i + 1;
        image.begin_region(start, len).map_err(StreamError::File)?;
        let end = start + len;
        let mut addr = start;
        while addr < end {
            let n = usize::try_from(end - addr).map_or(MAX_READ, |left| left.min(MAX_READ));
            let part = &mut buf[..n];
            control_client::read(&target.socket, header.version, addr, part)
                .map_err(|e| StreamError::Process(target.explain(e)))?;
            image.write_bytes(part).map_err(StreamError::File)?;
            addr += n as u64;
            progress.bytes += n as u64;
        }
    }
    let mut out = image.finish().map_err(StreamError::File)?;
    out.flush()
        .map_err(|e| StreamError::File(ImageError::Io(e)))?;
    Ok(())
}
