//! The run-time directories: finding stats pages, deciding whether their processes are
//! alive, decoding them and removing what dead processes left behind.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use memshadow_format::paths;
use memshadow_format::stats::{DecodeError, ProcessState, StatsRecord, STATS_PAGE_SIZE};
use nix::unistd::{getuid, Uid};

/// The directory this user's shimmed processes publish in: `$MEMSHADOW_DIR`, else the
/// one the shim chooses (`paths::choose_dir`: `/dev/shm/memshadow-UID`, or
/// `$XDG_RUNTIME_DIR/memshadow` when the first is squatted).
pub fn own_dir() -> PathBuf {
    match std::env::var_os(paths::DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let uid = getuid().as_raw();
            let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
            paths::choose_dir(uid, xdg.as_deref()).unwrap_or_else(|_| paths::default_dir(uid))
        }
    }
}

/// The directories to look in: `$MEMSHADOW_DIR` if set; otherwise the caller's own and,
/// for root, every user's.
pub fn scan_dirs() -> Vec<PathBuf> {
    let own = own_dir();
    if std::env::var_os(paths::DIR_ENV).is_some_and(|d| !d.is_empty()) || !is_root() {
        return vec![own];
    }
    let mut dirs = vec![own];
    if let Ok(entries) = fs::read_dir(paths::DEFAULT_PARENT) {
        for e in entries.flatten() {
            let name = e.file_name();
            let is_user_dir = name
                .to_str()
                .and_then(|n| n.strip_prefix(paths::DIR_PREFIX))
                .is_some_and(|uid| uid.parse::<u32>().is_ok());
            if is_user_dir && !dirs.contains(&e.path()) {
                dirs.push(e.path());
            }
        }
    }
    dirs
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub comm: String,
    /// One-letter state; `Z` is a zombie.
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time_ticks: u64,
}

impl ProcInfo {
    /// Reads `/proc/PID/stat`; `NotFound` when there is no such process.
    pub fn read(pid: u32) -> io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Self::parse(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
    }

    fn parse(text: &str) -> Option<Self> {
        // The command name is in parentheses and may itself contain spaces and ')'.
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let mut rest = text.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        // `rest` now starts at field 4; field 22 is 18 further on.
        let start_time_ticks = rest.nth(18)?.parse().ok()?;
        Some(ProcInfo {
            comm,
            state,
            start_time_ticks,
        })
    }

    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// The real uid of a running process, from `/proc/PID/status`.
pub fn process_uid(pid: u32) -> io::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid in /proc/PID/status"))
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_running(pid: u32) -> bool {
    ProcInfo::read(pid).is_ok_and(|p| !p.is_zombie())
}

/// Whether the process a page describes is still running under the shim: same pid, same
/// start time (not a reused pid), not a zombie, its shim has not marked it exited, and it
/// still maps its stats page (a process that exec'd a program without the shim keeps
/// its pid and start time but has dropped the mapping).
pub fn page_process_running(rec: &StatsRecord) -> bool {
    rec.state != Some(ProcessState::Exited)
        && ProcInfo::read(rec.pid)
            .is_ok_and(|p| !p.is_zombie() && p.start_time_ticks == rec.start_time_ticks)
        && maps_stats_page(rec.pid)
}

/// Whether `/proc/PID/maps` shows the process's stats page mapped. When the maps file
/// cannot be read (another user's process), the start-time check has to do.
fn maps_stats_page(pid: u32) -> bool {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return true;
    };
    let name = format!("/{pid}.stats");
    maps.lines().any(|l| {
        let l = l.trim_end().trim_end_matches(" (deleted)");
        l.ends_with(&name)
    })
}

/// Why a stats file could not be read.
#[derive(Debug)]
pub enum PageError {
    Io(io::Error),
    Decode(DecodeError),
}

/// Reads and decodes one stats file.
pub fn read_page(path: &Path) -> Result<StatsRecord, PageError> {
    let mut bytes = Vec::with_capacity(STATS_PAGE_SIZE);
    fs::File::open(path)
        .and_then(|f| f.take(STATS_PAGE_SIZE as u64).read_to_end(&mut bytes))
        .map_err(PageError::Io)?;
    StatsRecord::decode(&bytes).map_err(PageError::Decode)
}

/// Removes the stats page and the socket of `pid`; true if anything was removed.
pub fn remove_files(dir: &Path, pid: u32) -> bool {
    let stats = fs::remove_file(paths::stats_path(dir, pid)).is_ok();
    let sock = fs::remove_file(paths::socket_path(dir, pid)).is_ok();
    stats || sock
}

/// Which files of a pid a directory holds.
#[derive(Debug, Default, Clone, Copy)]
struct PidFiles {
    stats: bool,
    sock: bool,
}

fn pid_files(dir: &Path) -> BTreeMap<u32, PidFiles> {
    let mut map = BTreeMap::<u32, PidFiles>::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return map;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = paths::pid_of_file(name) else {
            continue;
        };
        let f = map.entry(pid).or_default();
        if name.ends_with(".stats") {
            f.stats = true;
        } else {
            f.sock = true;
        }
    }
    map
}

/// The result of scanning the run-time directories.
#[derive(Debug, Default)]
pub struct Scan {
    /// Pages of running processes, by pid.
    pub running: Vec<StatsRecord>,
    /// Dead processes whose files were removed.
    pub removed: usize,
}

/// Lists the running shimmed processes in `dirs` and removes the leftovers of dead ones.
///
/// Kept: pages of running processes, pages that cannot be judged yet (being created, or
/// unreadable to us), and exited pages whose launcher (`memshadow run`) is still alive
/// and will collect them.
pub fn scan(dirs: &[PathBuf]) -> Scan {
    let mut scan = Scan::default();
    for dir in dirs {
        for (pid, files) in pid_files(dir) {
            if !files.stats {
                // A socket alone: we cannot check the start time, only the pid.
                if !pid_running(pid) && remove_files(dir, pid) {
                    scan.removed += 1;
                }
                continue;
            }
            let stale = match read_page(&paths::stats_path(dir, pid)) {
                Ok(rec) if page_process_running(&rec) => {
                    scan.running.push(rec);
                    false
                }
                Ok(rec) => !kept_for_launcher(&rec) && !being_created(&rec),
                // Vanished meanwhile, or not ours to read.
                Err(PageError::Io(_)) => false,
                // Half-written by a process still starting, or garbage left by a dead one.
                Err(PageError::Decode(_)) => !pid_running(pid),
            };
            if stale && remove_files(dir, pid) {
                scan.removed += 1;
            }
        }
    }
    scan.running.sort_by_key(|r| r.pid);
    scan
}

/// An exited page whose `memshadow run` is still alive to collect it.
fn kept_for_launcher(rec: &StatsRecord) -> bool {
    rec.state == Some(ProcessState::Exited)
        && u32::try_from(rec.run_id).is_ok_and(|launcher| launcher != 0 && pid_running(launcher))
}

/// A page the shim of a running process has created but not filled in yet.
fn being_created(rec: &StatsRecord) -> bool {
    rec.state == Some(ProcessState::Starting) && rec.start_time_ticks == 0 && pid_running(rec.pid)
}

/// Collects the pages of every process launched by the run `run_id` (our own pid) and
/// created at or after `since_unix_ms`, removing those of processes that are gone.
/// Pages of descendants still running are returned but left in place.
pub fn collect_run(dir: &Path, run_id: u32, since_unix_ms: u64) -> Vec<StatsRecord> {
    let mut pages = Vec::new();
    for (pid, files) in pid_files(dir) {
        if !files.stats {
            continue;
        }
        let Ok(rec) = read_page(&paths::stats_path(dir, pid)) else {
            continue;
        };
        if rec.run_id != u64::from(run_id) || rec.created_unix_ms < since_unix_ms {
            continue;
        }
        if !page_process_running(&rec) {
            remove_files(dir, pid);
        }
        pages.push(rec);
    }
    pages
}

/// Whether the caller may look at processes of `uid`.
pub fn may_inspect(uid: u32) -> bool {
    is_root() || Uid::current().as_raw() == uid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_comm() {
        let fields: Vec<String> = (4..=30).map(|i| i.to_string()).collect();
        let text = format!("42 (a) b (c)) S {}", fields.join(" "));
        let p = ProcInfo::parse(&text).unwrap();
        assert_eq!(p.comm, "a) b (c)");
        assert_eq!(p.state, 'S');
        assert_eq!(p.start_time_ticks, 22);
    }

    #[test]
    fn a_process_without_the_page_mapped_is_not_shimmed() {
        // This test process maps no stats page, so it does not count as shimmed.
        assert!(!maps_stats_page(std::process::id()));
    }

    #[test]
    fn reads_own_process() {
        let me = ProcInfo::read(std::process::id()).unwrap();
        assert!(me.start_time_ticks > 0);
        assert!(!me.is_zombie());
        assert_eq!(process_uid(std::process::id()).unwrap(), getuid().as_raw());
    }
}
