//! The run-time directories: finding stats pages, deciding whether their processes are
//! alive, decoding them and removing what dead processes left behind.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memshadow_format::paths;
use memshadow_format::stats::{DecodeError, ProcessState, StatsRecord, STATS_PAGE_SIZE};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{getuid, unlinkat, Uid, UnlinkatFlags};

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

/// The `$XDG_RUNTIME_DIR` of user `uid` for the shim's fallback directory: ours from the
/// environment; for another user, where systemd puts it (`/run/user/UID`).
fn runtime_dir_of(uid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() && uid == getuid().as_raw() => PathBuf::from(d),
        _ => PathBuf::from(format!("/run/user/{uid}")),
    }
}

/// The directories a process of `uid` may publish in, each with the uid it must belong
/// to: `$MEMSHADOW_DIR` when set and `uid` is ours; otherwise the default and the
/// fallback directory of `uid`.
pub fn dirs_of(uid: u32) -> Vec<(PathBuf, u32)> {
    let mine = getuid().as_raw();
    if uid == mine && std::env::var_os(paths::DIR_ENV).is_some_and(|d| !d.is_empty()) {
        return vec![(own_dir(), uid)];
    }
    paths::candidate_dirs(uid, Some(&runtime_dir_of(uid)))
        .into_iter()
        .map(|d| (d, uid))
        .collect()
}

/// The directories to look in, each with the uid that must own it: `$MEMSHADOW_DIR` if
/// set; otherwise the caller's own (default and fallback) and, for root, every user's.
pub fn scan_dirs() -> Vec<(PathBuf, u32)> {
    let me = getuid().as_raw();
    let mut dirs = dirs_of(me);
    if std::env::var_os(paths::DIR_ENV).is_some_and(|d| !d.is_empty()) || !is_root() {
        return dirs;
    }
    if let Ok(entries) = fs::read_dir(paths::DEFAULT_PARENT) {
        for e in entries.flatten() {
            let name = e.file_name();
            let uid = name
                .to_str()
                .and_then(|n| n.strip_prefix(paths::DIR_PREFIX))
                .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|u| u.parse::<u32>().ok());
            if let Some(uid) = uid {
                for d in dirs_of(uid) {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
            }
        }
    }
    dirs
}

/// Why a run-time directory is not used.
#[derive(Debug)]
pub enum DirError {
    /// It does not exist.
    Missing,
    /// It cannot be opened as a directory without following a symlink.
    Open(Errno),
    /// It is a symlink.
    Symlink,
    /// It belongs to another user than the one whose processes publish there.
    Owner { owner: u32, expected: u32 },
    /// Group or others may write into it.
    Writable { mode: u32 },
}

impl fmt::Display for DirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirError::Missing => write!(f, "it does not exist"),
            DirError::Open(e) => write!(f, "cannot open it: {}", e.desc()),
            DirError::Symlink => write!(f, "it is a symlink"),
            DirError::Owner { owner, expected } => {
                write!(f, "it belongs to uid {owner}, not to uid {expected}")
            }
            DirError::Writable { mode } => {
                write!(f, "group or others may write into it (mode {mode:o})")
            }
        }
    }
}

/// A run-time directory, opened once (`O_DIRECTORY|O_NOFOLLOW`) and checked: a
/// directory owned by the uid whose processes publish there (or root), not writable by
/// group or others. Everything in it is then reached through the descriptor, never
/// through a path another user could swap.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The uid it belongs to.
    pub uid: u32,
    fd: Arc<OwnedFd>,
}

/// The file kinds [`RunDir::entry`] checks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Socket,
}

/// Why a file in a run-time directory was refused.
#[derive(Debug)]
pub enum FileRefusal {
    /// Not the kind expected (a FIFO, a symlink, a directory...).
    Kind(&'static str),
    /// Owned by another uid than the directory's.
    Owner(u32),
}

impl fmt::Display for FileRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileRefusal::Kind(k) => write!(f, "it is {k}"),
            FileRefusal::Owner(u) => write!(f, "it belongs to uid {u}"),
        }
    }
}

impl RunDir {
    /// Opens and checks `path` for the processes of `uid`.
    pub fn open(path: &Path, uid: u32) -> Result<RunDir, DirError> {
        let fd = match nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(DirError::Missing),
            Err(Errno::ELOOP) => return Err(DirError::Symlink),
            Err(Errno::ENOTDIR) if is_symlink(path) => return Err(DirError::Symlink),
            Err(e) => return Err(DirError::Open(e)),
        };
        // SAFETY: `fd` was just returned by open and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd()).map_err(DirError::Open)?;
        if st.st_uid != uid && st.st_uid != 0 {
            return Err(DirError::Owner {
                owner: st.st_uid,
                expected: uid,
            });
        }
        if st.st_mode & 0o022 != 0 {
            return Err(DirError::Writable {
                mode: st.st_mode & 0o7777,
            });
        }
        Ok(RunDir {
            uid,
            fd: Arc::new(fd),
        })
    }

    /// Checks the file `name` (not following a symlink): of `kind`, owned by the
    /// directory's uid or root. `Ok(None)` when there is none.
    pub fn entry(&self, name: &str, kind: Kind) -> io::Result<Option<Result<(), FileRefusal>>> {
        let st = match fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(self.check(&st, kind)))
    }

    fn check(&self, st: &FileStat, kind: Kind) -> Result<(), FileRefusal> {
        let found = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let wanted = match kind {
            Kind::Regular => SFlag::S_IFREG,
            Kind::Socket => SFlag::S_IFSOCK,
        };
        if found != wanted {
            return Err(FileRefusal::Kind(match found {
                SFlag::S_IFREG => "a regular file",
                SFlag::S_IFSOCK => "a socket",
                SFlag::S_IFIFO => "a FIFO",
                SFlag::S_IFLNK => "a symlink",
                SFlag::S_IFDIR => "a directory",
                SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
                _ => "of an unknown kind",
            }));
        }
        if st.st_uid != self.uid && st.st_uid != 0 {
            return Err(FileRefusal::Owner(st.st_uid));
        }
        Ok(())
    }

    /// Reads and decodes the stats page of `pid`: opened `O_NONBLOCK|O_NOFOLLOW` (a
    /// FIFO or a symlink planted there can neither block nor redirect us), then checked
    /// to be a regular file of the directory's uid.
    pub fn read_page(&self, pid: u32) -> Result<StatsRecord, PageError> {
        let name = stats_name(pid);
        let fd = openat(
            Some(self.fd.as_raw_fd()),
            name.as_str(),
            OFlag::O_RDONLY
                | OFlag::O_NONBLOCK
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP => PageError::Refused(FileRefusal::Kind("a symlink")),
            e => PageError::Io(e.into()),
        })?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        let file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let st = fstat(file.as_raw_fd()).map_err(|e| PageError::Io(e.into()))?;
        self.check(&st, Kind::Regular).map_err(PageError::Refused)?;
        let mut bytes = Vec::with_capacity(STATS_PAGE_SIZE);
        file.take(STATS_PAGE_SIZE as u64)
            .read_to_end(&mut bytes)
            .map_err(PageError::Io)?;
        StatsRecord::decode(&bytes).map_err(PageError::Decode)
    }

    /// The path of `pid`'s socket through this directory's descriptor
    /// (`/proc/self/fd/N/PID.sock`): connecting to it cannot be redirected by renaming
    /// the directory.
    pub fn socket_connect_path(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(socket_name(pid))
    }

    /// Keeps the directory open as long as the returned handle lives.
    pub fn handle(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd)
    }

    /// Removes the stats page and the socket of `pid`; true if anything was removed.
    pub fn remove_files(&self, pid: u32) -> bool {
        let mut any = false;
        for name in [stats_name(pid), socket_name(pid)] {
            any |= unlinkat(
                Some(self.fd.as_raw_fd()),
                name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            )
            .is_ok();
        }
        any
    }

    /// Which files of which pids the directory holds.
    fn pid_files(&self) -> BTreeMap<u32, PidFiles> {
        let mut map = BTreeMap::<u32, PidFiles>::new();
        let Ok(mut dir) = nix::dir::Dir::openat(
            Some(self.fd.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            return map;
        };
        for e in dir.iter().flatten() {
            let Ok(name) = e.file_name().to_str() else {
                continue;
            };
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
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn stats_name(pid: u32) -> String {
    format!("{pid}.stats")
}

fn socket_name(pid: u32) -> String {
    format!("{pid}.sock")
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

/// The real and effective uids of a running process, from `/proc/PID/status`.
pub fn process_uids(pid: u32) -> io::Result<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ids: Option<Vec<u32>> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        });
    match ids.as_deref() {
        Some([real, effective, ..]) => Ok((*real, *effective)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no Uid in /proc/PID/status",
        )),
    }
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
    /// Not a regular file of the directory's uid.
    Refused(FileRefusal),
}

/// Which files of a pid a directory holds.
#[derive(Debug, Default, Clone, Copy)]
struct PidFiles {
    stats: bool,
    sock: bool,
}

/// The result of scanning the run-time directories.
#[derive(Debug, Default)]
pub struct Scan {
    /// Pages of running processes, by pid.
    pub running: Vec<StatsRecord>,
    /// Dead processes whose files were removed.
    pub removed: usize,
    /// Directories not used, and why (squatted, a symlink, writable by others).
    pub refused_dirs: Vec<(PathBuf, DirError)>,
    /// Files refused in the directories used: path and why.
    pub refused_files: Vec<(PathBuf, FileRefusal)>,
}

/// Lists the running shimmed processes in `dirs` and removes the leftovers of dead ones.
///
/// Kept: pages of running processes, pages that cannot be judged yet (being created, or
/// unreadable to us), and exited pages whose launcher (`memshadow run`) is still alive
/// and will collect them.
pub fn scan(dirs: &[(PathBuf, u32)]) -> Scan {
    let mut scan = Scan::default();
    for (path, uid) in dirs {
        let dir = match RunDir::open(path, *uid) {
            Ok(d) => d,
            Err(DirError::Missing) => continue,
            Err(e) => {
                scan.refused_dirs.push((path.clone(), e));
                continue;
            }
        };
        for (pid, files) in dir.pid_files() {
            if !files.stats {
                // A socket alone: we cannot check the start time, only the pid.
                if !pid_running(pid) && dir.remove_files(pid) {
                    scan.removed += 1;
                }
                continue;
            }
            let stale = match dir.read_page(pid) {
                Ok(rec) if page_process_running(&rec) => {
                    scan.running.push(rec);
                    false
                }
                Ok(rec) => !kept_for_launcher(&rec) && !being_created(&rec),
                // Vanished meanwhile, or not ours to read.
                Err(PageError::Io(_)) => false,
                // Half-written by a process still starting, or garbage left by a dead one.
                Err(PageError::Decode(_)) => !pid_running(pid),
                // Planted by someone else: left alone, pointed out.
                Err(PageError::Refused(why)) => {
                    scan.refused_files.push((paths::stats_path(path, pid), why));
                    false
                }
            };
            if stale && dir.remove_files(pid) {
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
pub fn collect_run(path: &Path, run_id: u32, since_unix_ms: u64) -> Vec<StatsRecord> {
    let mut pages = Vec::new();
    let Ok(dir) = RunDir::open(path, getuid().as_raw()) else {
        return pages;
    };
    for (pid, files) in dir.pid_files() {
        if !files.stats {
            continue;
        }
        let Ok(rec) = dir.read_page(pid) else {
            continue;
        };
        if rec.run_id != u64::from(run_id) || rec.created_unix_ms < since_unix_ms {
            continue;
        }
        if !page_process_running(&rec) {
            dir.remove_files(pid);
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
        let me = (getuid().as_raw(), nix::unistd::geteuid().as_raw());
        assert_eq!(process_uids(std::process::id()).unwrap(), me);
    }
}
