//! `memshadow` without arguments: runs the bundled workload under the shim, takes a
//! snapshot of its memory every half second while showing its statistics, then reads
//! one of its buffers back as it was at older versions while it still runs, and
//! explains what happened.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memshadow_format::control::ReplyError;
use memshadow_format::stats::Counter;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::control_client::{self, ControlError};
use crate::demo_workload::REPORT_ENV;
use crate::error::{Failure, Result};
use crate::launch::{self, Launch};
use crate::report::{self, human_bytes, reply_u64, thousands};
use crate::target::Target;

/// The hidden subcommand that runs the workload.
pub const WORKLOAD_COMMAND: &str = "demo-workload";
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Older versions read back at the end, besides the newest.
const OLDER_SHOWN: usize = 3;
/// The longest buffer the demo reads back (the workload's is 64 bytes).
const MAX_BUFFER: usize = 4096;

pub fn run() -> Result<i32> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::runtime(format!("cannot find the memshadow executable: {e}")))?;
    let launch = Launch {
        name: "the demo workload".into(),
        program: exe.clone(),
        argv: vec![exe.into_os_string(), WORKLOAD_COMMAND.into()],
        lib: launch::find_library(None)?,
        env: Vec::new(),
    };
    let report_file = ReportFile::create()?;
    // The workload inherits our environment. No other thread exists yet.
    std::env::set_var(REPORT_ENV, &report_file.path);
    println!("memshadow demo: running a small allocation workload with");
    println!("  LD_PRELOAD={}", launch.lib.display());
    println!("reading its statistics from the shim and taking a snapshot of its memory");
    println!("every half second.\n");

    let mut demo = Demo {
        report: report_file,
        target: None,
        buffer: None,
        waiting: false,
        snapshots: Snapshots::Taking(Vec::new()),
        oldest_retained: 0,
        looked_back: false,
        peak_tracked: 0,
    };
    let mut tick = |pid: u32, elapsed: Duration| {
        demo.tick(pid, elapsed);
        true
    };
    let outcome = launch.run(Some((POLL_EVERY, &mut tick)))?;
    std::env::remove_var(REPORT_ENV);
    println!();
    for line in report::run_summary(&outcome) {
        println!("memshadow: {line}");
    }
    let Some(rec) = &outcome.main else {
        return Err(Failure::runtime(
            "the shim did not attach to the demo workload, so there is nothing to show (if it said why, that is above)",
        ));
    };
    if !outcome.status.success() {
        drop(demo);
        launch::exit_like(outcome.status);
    }
    let peak = human_bytes(demo.peak_tracked.max(rec.counter(Counter::TrackedBytes)));
    println!(
        "
What happened:
  * libmemshadow.so was loaded into the workload before its own code ran and saw every
    malloc, calloc, realloc and free it made: {allocs} allocations and {frees} frees,
    without the program being changed or rebuilt. \"live\" is what was allocated and not
    yet freed. \"tracked\" is the memory the shim watches: the process's writable private
    anonymous memory (malloc's heap and arenas, the large buffers malloc maps on their
    own, such as the 64 MiB one). It peaked at {peak}. That is the program's own
    changing state, and exactly what a snapshot keeps; code, libraries and file contents
    are not copied, because they can be read back from their files.",
        allocs = thousands(rec.allocs),
        frees = thousands(rec.frees),
    );
    match &demo.snapshots {
        Snapshots::Taking(taken) if !taken.is_empty() => {
            let kept = rec.counter(Counter::VersionsRetained);
            println!(
                "  * Every half second the demo asked for a snapshot and got the next version (v{first}
    to v{newest}). A snapshot copies nothing and does not stop the program: the shim
    write-protects the tracked memory, and the first write to a page after that (a
    \"trap\") saves the page's old contents in a shadow before letting the write through
    (\"pages copied\"). The shadows hold the past: the newest {kept} at a time
    (MEMSHADOW_MAX_VERSIONS, 4 by default); older versions are dropped whole.
  * At the end, while the workload went on rewriting its generation buffer, the demo
    read that buffer back as it was at older versions and at the newest: each shows what
    the program had written when that snapshot was taken, although the program had
    overwritten it many times since. Any byte of the tracked memory can be read back
    the same way, or all of it at once as an image.",
                kept = match kept {
                    1 => "1 version".to_string(),
                    n => format!("{n} versions"),
                },
                first = taken.first().map_or(0, |t| t.version),
                newest = taken.last().map_or(0, |t| t.version),
            );
            let held = rec.counter(Counter::HolderSnapshots);
            if held > 0 {
                println!(
                    "  * {held} of the snapshots (\"by holders\") were held by the kernel instead: the
    workload's writes were scattered over many pages, where a trap per page costs more
    than the kernel's own copy-on-write, so the default MEMSHADOW_BACKEND=auto kept those
    versions in a child made with a raw clone that only waits, whose memory is the
    version; the kernel copied the pages the program wrote afterwards, and reads of the
    version came from the child. Versions of both kinds read the same."
                );
            }
        }
        Snapshots::Taking(_) => println!(
            "  * The workload ended before the demo could take a snapshot of it, so there are
    no versions to show."
        ),
        Snapshots::Unavailable => println!(
            "  * Snapshots could not be taken here (the reason is above), so the demo showed
    statistics only. See \"Snapshots\" in README.md for what they need."
        ),
    }
    println!(
        "
Next, try:
  memshadow run -- your-program [ARGS]        run your program under the shim, with a summary at exit
  memshadow ps                                list the programs running under memshadow
  memshadow stats PID [--watch 1]             live statistics of one of them
  memshadow snapshot PID                      take a snapshot of its memory; prints the version
  memshadow read PID --version V ADDR LEN     LEN bytes at ADDR as they were at version V (--out FILE)
  memshadow image PID --version V --out FILE  all its tracked memory at version V, into FILE
  memshadow run --record DIR -- your-program  record a version every second into a store (or s3://...)
  memshadow log DIR                           the versions recorded; then restore, read, diff, verify
  memshadow core DIR --version V --out FILE   a version as an ELF core: gdb your-program FILE
  memshadow report DIR --out report.html      one page of pictures: where and when it wrote
  memshadow top                               a live view of the programs under memshadow"
    );
    Ok(0)
}

/// The file the workload reports to (see `demo_workload`): created empty, 0600,
/// removed when dropped.
struct ReportFile {
    path: PathBuf,
}

impl ReportFile {
    fn create() -> Result<ReportFile> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("memshadow-demo-{}-{stamp}.txt", std::process::id()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Failure::runtime(format!("cannot create {}: {e}", path.display())))?;
        Ok(ReportFile { path })
    }

    /// What the workload said so far: the buffer's address and length, and whether it
    /// is waiting for us. Only whole lines count.
    fn read(&self) -> (Option<(u64, usize)>, bool) {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut buffer = None;
        let mut waiting = false;
        for line in whole.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["buffer", addr, len] => {
                    let addr = addr
                        .strip_prefix("0x")
                        .and_then(|h| u64::from_str_radix(h, 16).ok());
                    match (addr, len.parse()) {
                        (Some(addr), Ok(len)) if (1..=MAX_BUFFER).contains(&len) => {
                            buffer = Some((addr, len));
                        }
                        _ => {}
                    }
                }
                ["waiting"] => waiting = true,
                _ => {}
            }
        }
        (buffer, waiting)
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A snapshot the demo took.
struct Taken {
    version: u64,
    /// Time since the workload started.
    at: Duration,
}

enum Snapshots {
    /// The versions taken so far, oldest first.
    Taking(Vec<Taken>),
    /// A snapshot failed (the demo said why): no more are taken.
    Unavailable,
}

struct Demo {
    report: ReportFile,
    /// The workload, once its stats page is there.
    target: Option<Target>,
    /// Address and length of the generation buffer, once the workload said.
    buffer: Option<(u64, usize)>,
    /// The workload has finished its phases and waits for SIGUSR1.
    waiting: bool,
    snapshots: Snapshots,
    /// The oldest version the workload still had at the last statistics.
    oldest_retained: u64,
    looked_back: bool,
    peak_tracked: u64,
}

impl Demo {
    /// One poll: a snapshot, the statistics, and at the end the look back.
    fn tick(&mut self, pid: u32, elapsed: Duration) {
        (self.buffer, self.waiting) = self.report.read();
        if self.target.is_none() {
            // The stats page and socket appear once the shim has started.
            self.target = Target::find(pid).ok();
        }
        let Some(target) = &self.target else {
            if self.waiting && !self.looked_back {
                // Without the shim there is nothing to look back at: let it end.
                self.looked_back = true;
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGUSR1);
            }
            return;
        };
        let taken = match &mut self.snapshots {
            Snapshots::Taking(taken) => match control_client::snapshot(&target.socket) {
                Ok(version) => {
                    taken.push(Taken {
                        version,
                        at: elapsed,
                    });
                    Some(version)
                }
                Err(_) if target.gone() => return,
                Err(e) => {
                    let why = refusal(target, e);
                    println!("  memshadow: no snapshots in this demo: {why}");
                    self.snapshots = Snapshots::Unavailable;
                    None
                }
            },
            Snapshots::Unavailable => None,
        };
        let Ok(fields) = control_client::stats(&target.socket) else {
            return;
        };
        self.peak_tracked = self.peak_tracked.max(reply_u64(&fields, "tracked_bytes"));
        self.oldest_retained = reply_u64(&fields, "oldest_version");
        let held = match reply_u64(&fields, "holder_snapshots") {
            0 => String::new(),
            n => format!(", {} by holders", thousands(n)),
        };
        let snapshot_part = match taken {
            Some(version) => format!(
                " | v{version}: {} epochs, {} traps, {} pages copied, {} shadow{held}, {} kept",
                thousands(reply_u64(&fields, "epochs")),
                thousands(reply_u64(&fields, "traps")),
                thousands(reply_u64(&fields, "pages_copied")),
                human_bytes(reply_u64(&fields, "shadow_bytes")),
                reply_u64(&fields, "versions_retained"),
            ),
            None => String::new(),
        };
        println!(
            "  memshadow [{:4.1} s]: {}{snapshot_part}",
            elapsed.as_secs_f64(),
            report::live_line(&fields)
        );
        if self.waiting && !self.looked_back {
            self.looked_back = true;
            self.look_back();
            // Lets the workload end; it may have given up waiting already.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGUSR1);
        }
    }

    /// Reads the generation buffer at a few retained versions and at the newest, and
    /// at one that is no longer retained if there is one.
    fn look_back(&self) {
        let (Some(target), Some((addr, len)), Snapshots::Taking(taken)) =
            (&self.target, self.buffer, &self.snapshots)
        else {
            return;
        };
        let retained: Vec<&Taken> = taken
            .iter()
            .filter(|t| t.version >= self.oldest_retained)
            .collect();
        let Some((newest, older)) = retained.split_last() else {
            return;
        };
        println!(
            "\n  The workload is still running. Its generation buffer ({len} bytes at {addr:#x}),"
        );
        println!("  read back at older versions and at the newest:");
        let mut shown: Vec<&Taken> = spread(older, OLDER_SHOWN);
        shown.push(newest);
        let mut buf = vec![0u8; len];
        for t in shown {
            let text = match control_client::read(&target.socket, t.version, addr, &mut buf) {
                Ok(()) => format!("\"{}\"", buffer_text(&buf)),
                Err(e) => format!("cannot read it: {}", refusal(target, e)),
            };
            let newest_mark = if t.version == newest.version {
                "  (newest)"
            } else {
                ""
            };
            println!(
                "    version {:>2} (taken at {:4.1} s): {text}{newest_mark}",
                t.version,
                t.at.as_secs_f64()
            );
        }
        if let Some(gone) = taken.first().filter(|t| t.version < self.oldest_retained) {
            if let Err(e) = control_client::read(&target.socket, gone.version, addr, &mut buf) {
                println!(
                    "    version {:>2} (taken at {:4.1} s): not readable, {}",
                    gone.version,
                    gone.at.as_secs_f64(),
                    refusal(target, e)
                );
            }
        }
    }
}

/// At most `n` of `items`, evenly spread, keeping the first and the last.
fn spread<T: Copy>(items: &[T], n: usize) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    if n <= 1 {
        return items.last().copied().into_iter().collect();
    }
    (0..n)
        .map(|i| items[i * (items.len() - 1) / (n - 1)])
        .collect()
}

/// The buffer's text: up to its first NUL, non-printable bytes as `?`.
fn buffer_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Why a request failed, in one line: the process's own words when it refused.
fn refusal(target: &Target, e: ControlError) -> String {
    match e {
        ControlError::Reply(ReplyError::Refused(m)) => m,
        e => target.explain(e).message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_the_ends() {
        let v: Vec<u32> = (1..=9).collect();
        assert_eq!(spread(&v, 3), vec![1, 5, 9]);
        assert_eq!(spread(&v[..2], 3), vec![1, 2]);
        assert_eq!(spread(&v[..4], 3), vec![1, 2, 4]);
        assert_eq!(spread(&v, 1), vec![9]);
        assert!(spread::<u32>(&[], 3).is_empty());
    }

    #[test]
    fn buffer_text_stops_at_nul() {
        assert_eq!(buffer_text(b"generation 3\0\0xx"), "generation 3");
        assert_eq!(buffer_text(b"a\nb"), "a?b");
        assert_eq!(buffer_text(b""), "");
    }
}
