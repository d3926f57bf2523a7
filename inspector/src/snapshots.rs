//! The `snapshot`, `read` and `image` subcommands: take a snapshot of a shimmed process,
//! and copy its memory out as it was at a version, a range or all of it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use memshadow_format::control::{RegionsReply, MAX_READ};
use memshadow_format::image::{ImageError, ImageHeader, ImageWriter};

use crate::cli::{ImageArgs, ReadArgs, SnapshotArgs};
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

/// `memshadow image`: asks the process which regions the version holds, then reads
/// each in [`MAX_READ`] chunks (one connection each, as `read` does) and appends every
/// chunk to the image as it arrives: one chunk in memory at a time. Each chunk is taken
/// by the process under its engine lock, page by page, from the version's shadow or
/// the unchanged live page, so writers running meanwhile never tear it; a version
/// evicted meanwhile fails the read instead of giving newer bytes.
pub fn image(args: ImageArgs) -> Result<i32> {
    let target = Target::find(args.pid)?;
    let version = args.at_version;
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
    let out = ImageFile::create(&args.out)?;
    let mut progress = Progress::default();
    match write_image(&target, &layout, header, &out.file, &mut progress) {
        Ok(()) => {}
        Err(e) => {
            let message = match e {
                StreamError::Process(f) => f.message,
                StreamError::File(e) => format!("cannot write {}: {e}", args.out.display()),
            };
            let regions = layout.regions.len();
            let removed = if out.abandon() {
                format!("; removed {}", args.out.display())
            } else {
                String::new()
            };
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

/// The image file: created 0600 (it holds the program's memory), removed again if
/// writing fails.
struct ImageFile {
    file: File,
    path: PathBuf,
    /// A regular file (not a device or pipe): remove it when writing fails.
    remove_on_failure: bool,
}

impl ImageFile {
    fn create(path: &Path) -> Result<ImageFile> {
        let cannot =
            |e: io::Error| Failure::runtime(format!("cannot write {}: {e}", path.display()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(cannot)?;
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        if regular {
            // An existing file keeps its mode through open(): narrow it.
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(cannot)?;
        }
        Ok(ImageFile {
            file,
            path: path.to_path_buf(),
            remove_on_failure: regular,
        })
    }

    /// Gives up: a partly written regular file is removed. True if it was.
    fn abandon(self) -> bool {
        drop(self.file);
        self.remove_on_failure && fs::remove_file(&self.path).is_ok()
    }
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
