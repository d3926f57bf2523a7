//! Files processes leave behind in the run-time directory, and whether
//! `MEMSHADOW_RUN_ID` really names the `memshadow run` that launched this process.
//!
//! A process removes its `PID.stats` and `PID.sock` at `exit` (see `runtime`) and at
//! `_exit`/`_Exit` (see `exit_files`); one killed by a signal cannot. So each shim, as it
//! starts, removes the files of processes of its own user that are gone: a pid that no
//! longer runs, or runs with another start time than its page records (a reused pid).
//! It only looks in its own private directory, never follows a symlink, never opens a
//! FIFO (`O_NONBLOCK` and a regular-file check), and unlinks only regular files and
//! sockets owned by its user. A page kept for a launcher (`run_id`) stays while that
//! launcher runs: it collects it.
//!
//! `MEMSHADOW_RUN_ID` makes a process keep its stats page at exit. Honoured blindly, a
//! stale or made-up value (a pid that is not a launcher) would keep every page forever,
//! so it is honoured only when `RUNID.run` in the same directory (written by the launcher,
//! 0600, in a directory only this user can write to) names a live process with the start
//! time it records and the token in this process's `MEMSHADOW_RUN_TOKEN`: only that
//! launcher and its descendants know the token, and the file goes when the run ends.

use crate::stats::start_ticks;
use memshadow_format::paths::{self, RunToken, RUN_FILE_MAX};
use memshadow_format::stats::{ProcessState, StatsRecord, STATS_PAGE_SIZE};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Why `MEMSHADOW_RUN_ID` is not honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunIdError {
    /// `MEMSHADOW_RUN_TOKEN` is missing or malformed.
    NoToken,
    /// No readable run file for that pid in the directory.
    NoRunFile,
    /// The run file names another process than a live launcher with that start time.
    NotRunning,
    /// The token differs from the run file's.
    WrongToken,
}

impl core::fmt::Display for RunIdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RunIdError::NoToken => "no valid MEMSHADOW_RUN_TOKEN beside it",
            RunIdError::NoRunFile => "no run file of that launcher in the run-time directory",
            RunIdError::NotRunning => "that launcher is no longer running",
            RunIdError::WrongToken => "MEMSHADOW_RUN_TOKEN does not match the launcher's",
        })
    }
}

/// Reads at most `max` bytes of `path` if it is a regular file owned by this user (never
/// following a symlink, never blocking on a FIFO).
fn read_own_file(path: &Path, max: usize) -> Option<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid C string; the descriptor is ours and closed below.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return None;
    }
    let mut buf = vec![0u8; max];
    let got = read_if_own(fd, &mut buf);
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    buf.truncate(got?);
    Some(buf)
}

/// Reads `fd` into `buf` if it is a regular file owned by this user.
fn read_if_own(fd: i32, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: all-zero is a valid `stat`; fstat fills it from our descriptor.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is open; `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    // SAFETY: geteuid cannot fail.
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != unsafe { libc::geteuid() } {
        return None;
    }
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let r = unsafe { libc::read(fd, buf[n..].as_mut_ptr().cast(), buf.len() - n) };
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    Some(n)
}

/// The run file of launcher `run_id` in `dir`.
fn run_file(dir: &Path, run_id: u32) -> Option<RunToken> {
    let bytes = read_own_file(&paths::run_token_path(dir, run_id), RUN_FILE_MAX)?;
    RunToken::parse(core::str::from_utf8(&bytes).ok()?)
}

/// Whether the launcher `run_id` named by a run file in `dir` still runs.
fn launcher_runs(dir: &Path, run_id: u64) -> bool {
    let Ok(id) = u32::try_from(run_id) else {
        return false;
    };
    run_file(dir, id).is_some_and(|r| r.pid == id && start_ticks(id) == Some(r.start_ticks))
}

/// Checks `MEMSHADOW_RUN_ID=run_id` with `MEMSHADOW_RUN_TOKEN=token` against `dir`.
pub fn check_run_id(dir: &Path, run_id: u64, token: Option<&str>) -> Result<(), RunIdError> {
    let token = token
        .filter(|t| paths::valid_token(t))
        .ok_or(RunIdError::NoToken)?;
    let id = u32::try_from(run_id).map_err(|_| RunIdError::NoRunFile)?;
    let file = run_file(dir, id).ok_or(RunIdError::NoRunFile)?;
    if file.pid != id || start_ticks(id) != Some(file.start_ticks) {
        return Err(RunIdError::NotRunning);
    }
    if file.token != token {
        return Err(RunIdError::WrongToken);
    }
    Ok(())
}

/// What a stats page says about its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    pub start_ticks: u64,
    pub run_id: u64,
    pub exited: bool,
}

/// Whether the files of a process whose page says `page` are left over: the process is
/// gone (`now` is its start time now, `None` when no such pid runs), reused or exited,
/// and no running launcher (`launcher_runs`) is to collect the page.
pub fn page_is_stale(page: PageInfo, now: Option<u64>, launcher_runs: bool) -> bool {
    let alive = now == Some(page.start_ticks) && !page.exited;
    let kept_for_launcher = page.run_id != 0 && launcher_runs;
    !(alive || kept_for_launcher)
}

fn read_page(dir: &Path, pid: u32) -> Option<PageInfo> {
    let bytes = read_own_file(&paths::stats_path(dir, pid), STATS_PAGE_SIZE)?;
    let r = StatsRecord::decode(&bytes).ok()?;
    (r.pid == pid).then_some(PageInfo {
        start_ticks: r.start_time_ticks,
        run_id: r.run_id,
        exited: r.state == Some(ProcessState::Exited),
    })
}

/// Unlinks `dir/name` if it is a regular file or a socket owned by this user (lstat: a
/// symlink is neither).
fn unlink_own(dir: &Path, name: &str) -> bool {
    let Ok(c) = CString::new(dir.join(name).as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `c` is a valid C string, `st` a valid out-pointer.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    // SAFETY: geteuid cannot fail.
    if (kind != libc::S_IFREG && kind != libc::S_IFSOCK) || st.st_uid != unsafe { libc::geteuid() }
    {
        return false;
    }
    // SAFETY: `c` is a valid C string naming a file of ours.
    unsafe { libc::unlink(c.as_ptr()) == 0 }
}

/// Removes from `dir` (this process's private directory) the files of processes that are
/// gone and of launchers that ended. Returns how many files went.
pub fn sweep(dir: &Path) -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".run") {
            let Ok(id) = stem.parse::<u32>() else {
                continue;
            };
            // A run file whose launcher is gone (killed before it could remove it).
            let runs = run_file(dir, id).is_some_and(|r| start_ticks(id) == Some(r.start_ticks));
            if !runs && unlink_own(dir, name) {
                removed += 1;
            }
            continue;
        }
        let Some(pid) = paths::pid_of_file(name) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let stale = match read_page(dir, pid) {
            Some(page) => page_is_stale(page, start_ticks(pid), launcher_runs(dir, page.run_id)),
            // No readable page (a socket alone, a page being created, anything else of
            // that name): left over only if no such pid runs.
            None => start_ticks(pid).is_none(),
        };
        if stale && unlink_own(dir, name) {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(start: u64, run_id: u64, exited: bool) -> PageInfo {
        PageInfo {
            start_ticks: start,
            run_id,
            exited,
        }
    }

    #[test]
    fn a_live_process_keeps_its_files() {
        assert!(!page_is_stale(page(100, 0, false), Some(100), false));
    }

    #[test]
    fn a_gone_reused_or_exited_process_leaves_leftovers() {
        assert!(page_is_stale(page(100, 0, false), None, false), "gone");
        assert!(
            page_is_stale(page(100, 0, false), Some(200), false),
            "pid reused"
        );
        assert!(
            page_is_stale(page(100, 0, true), Some(100), false),
            "exited"
        );
    }

    #[test]
    fn a_page_kept_for_a_running_launcher_stays_until_it_collects_it() {
        assert!(!page_is_stale(page(100, 77, true), None, true));
        assert!(
            page_is_stale(page(100, 77, true), None, false),
            "launcher gone"
        );
        assert!(
            page_is_stale(page(100, 0, true), None, true),
            "no launcher of its own"
        );
    }

    #[test]
    fn a_run_id_needs_a_token_and_a_run_file() {
        let dir = std::env::temp_dir();
        assert_eq!(check_run_id(&dir, 1, None), Err(RunIdError::NoToken));
        assert_eq!(check_run_id(&dir, 1, Some("xyz")), Err(RunIdError::NoToken));
        let token = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            check_run_id(Path::new("/nonexistent"), 1, Some(token)),
            Err(RunIdError::NoRunFile)
        );
    }

    #[test]
    fn this_process_has_a_start_time() {
        let me = std::process::id();
        assert!(start_ticks(me).is_some());
    }
}
