//! [`Target`]: the shimmed process, found by pid, that `stats`, `snapshot`, `read`,
//! `image` and `record` talk to, and the one-line messages for what goes wrong with it.

use std::io;

use memshadow_format::control::ReplyError;
use memshadow_format::paths;
use memshadow_format::stats::ProcessState;

use crate::control_client::{self, ControlError, Endpoint};
use crate::error::{Failure, Result};
use crate::registry::{self, DirError, Kind, PageError, ProcInfo, RunDir};

/// A shimmed process found by pid.
pub struct Target {
    pub pid: u32,
    pub comm: String,
    start_time_ticks: u64,
    /// When its shim made its stats page, and the command it shows: a process that
    /// runs exec gets a new shim, which makes a new page.
    image: (u64, String),
    uid: u32,
    pub socket: Endpoint,
    /// The directory of its stats page and socket.
    dir: RunDir,
}

impl Target {
    /// Finds the stats page of `pid` and checks that we may talk to it: the page and
    /// the socket must be in a directory of the uid that owns the process (owned by it,
    /// not writable by others), be a regular file and a socket of that uid; the
    /// socket's peer is checked on every connection.
    pub fn find(pid: u32) -> Result<Self> {
        let info = ProcInfo::read(pid).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Failure::runtime(format!("no process with pid {pid}")),
            _ => Failure::runtime(format!("cannot read /proc/{pid}: {e}")),
        })?;
        let comm = info.comm.clone();
        let (ruid, euid) = registry::process_uids(pid)
            .map_err(|e| Failure::runtime(format!("cannot read /proc/{pid}/status: {e}")))?;
        if !registry::may_inspect(ruid) {
            return Err(foreign(pid, Some(ruid)));
        }
        let mut own_dirs = registry::dirs_of(ruid);
        if euid != ruid {
            own_dirs.extend(registry::dirs_of(euid));
        }
        let mut refusal = None;
        let mut undecodable = None;
        for (path, uid) in &own_dirs {
            let dir = match RunDir::open(path, *uid) {
                Ok(d) => d,
                Err(DirError::Missing) => continue,
                Err(e) => {
                    refusal.get_or_insert(format!("ignoring {}: {e}", path.display()));
                    continue;
                }
            };
            let page = paths::stats_path(path, pid);
            match dir.read_page(pid) {
                Ok(rec) if rec.pid == pid && rec.start_time_ticks == info.start_time_ticks => {
                    if info.is_zombie() || rec.state == Some(ProcessState::Exited) {
                        return Err(Failure::runtime(format!(
                            "process {pid} ({comm}) has exited"
                        )));
                    }
                    let shown = paths::socket_path(path, pid);
                    if let Ok(Some(Err(why))) = dir.entry(&format!("{pid}.sock"), Kind::Socket) {
                        return Err(Failure::runtime(format!(
                            "process {pid} ({comm}): ignoring {}: {why}",
                            shown.display()
                        )));
                    }
                    return Ok(Target {
                        pid,
                        comm,
                        start_time_ticks: info.start_time_ticks,
                        image: (rec.created_unix_ms, rec.command.clone()),
                        uid: *uid,
                        socket: Endpoint {
                            connect_path: dir.socket_connect_path(pid),
                            shown,
                            pid,
                            _dir: Some(dir.handle()),
                        },
                        dir,
                    });
                }
                // Left by an earlier process with this pid.
                Ok(_) => {}
                Err(PageError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(PageError::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(foreign(pid, Some(ruid)));
                }
                Err(PageError::Io(e)) => {
                    refusal.get_or_insert(format!("cannot read {}: {e}", page.display()));
                }
                Err(PageError::Refused(why)) => {
                    refusal.get_or_insert(format!("ignoring {}: {why}", page.display()));
                }
                Err(PageError::Decode(e)) => undecodable = Some(e),
            }
        }
        if let Some(why) = refusal {
            return Err(Failure::runtime(format!("process {pid} ({comm}): {why}")));
        }
        if let Some(e) = undecodable {
            return Err(Failure::runtime(format!(
                "process {pid} ({comm}): cannot read its stats page: {e}"
            )));
        }
        // A page for this pid in another user's directory cannot describe it: say so.
        for (path, uid) in registry::scan_dirs() {
            if own_dirs.iter().any(|(p, _)| *p == path) {
                continue;
            }
            let planted = RunDir::open(&path, uid).is_ok_and(|d| {
                !matches!(d.read_page(pid), Err(PageError::Io(ref e)) if e.kind() == io::ErrorKind::NotFound)
            });
            if planted {
                return Err(Failure::runtime(format!(
                    "process {pid} ({comm}) belongs to uid {ruid}; ignoring {}: it is in the directory of uid {uid}",
                    paths::stats_path(&path, pid).display()
                )));
            }
        }
        Err(Failure::runtime(format!(
            "process {pid} ({comm}) is not running under memshadow"
        )))
    }

    /// Whether `other` (found later, for the same pid) is the same program image: no
    /// exec in between.
    pub fn same_image(&self, other: &Target) -> bool {
        self.pid == other.pid
            && self.start_time_ticks == other.start_time_ticks
            && self.image == other.image
    }

    /// Whether the process runs another program image than the one found (its stats
    /// page was made anew by the shim of a program it exec'd); false when the page
    /// cannot be read just now.
    pub fn image_changed(&self) -> bool {
        self.page()
            .is_some_and(|p| (p.created_unix_ms, p.command) != self.image)
    }

    /// The traps the process has taken so far (its stats page's counter), or None when
    /// the page cannot be read (the process is gone).
    pub fn traps(&self) -> Option<u64> {
        self.page()
            .map(|page| page.counters[memshadow_format::stats::Counter::Traps.index()])
    }

    /// The process's stats page, or None when it cannot be read (the process is gone).
    pub fn page(&self) -> Option<memshadow_format::stats::StatsRecord> {
        let page = self.dir.read_page(self.pid).ok()?;
        (page.pid == self.pid && page.start_time_ticks == self.start_time_ticks).then_some(page)
    }

    /// Whether the process has exited (or its pid now names another process).
    pub fn gone(&self) -> bool {
        ProcInfo::read(self.pid).map_or(true, |p| {
            p.is_zombie() || p.start_time_ticks != self.start_time_ticks
        })
    }

    pub fn query(&self) -> std::result::Result<Vec<(String, String)>, ControlError> {
        control_client::stats(&self.socket)
    }

    /// The one-line message for a failed request.
    pub fn explain(&self, e: ControlError) -> Failure {
        let (pid, comm) = (self.pid, &self.comm);
        match e {
            ControlError::Denied => foreign(pid, Some(self.uid)),
            ControlError::WrongPeer { pid: peer, uid } => Failure::runtime(format!(
                "process {pid} ({comm}): ignoring {}: it is served by process {peer} (uid {uid}), not by process {pid}",
                self.socket.shown.display()
            )),
            ControlError::Timeout {
                after,
                stopped: Some(state),
            } => Failure::runtime(format!(
                "process {pid} ({comm}) did not answer: timed out after {:.1} s because it is stopped (state {state} in /proc/{pid}/stat); resume it with `kill -CONT {pid}`",
                after.as_secs_f64()
            )),
            ControlError::NotListening(_)
            | ControlError::Timeout { .. }
            | ControlError::Io(_)
            | ControlError::Reply(ReplyError::Malformed(_))
                if self.gone() =>
            {
                Failure::runtime(format!("process {pid} ({comm}) has exited"))
            }
            ControlError::NotListening(e) => Failure::runtime(format!(
                "process {pid} ({comm}) has a memshadow stats page but does not answer on {} ({e})",
                self.socket.shown.display()
            )),
            ControlError::Timeout { after, .. } => Failure::runtime(format!(
                "process {pid} ({comm}) did not answer: timed out after {:.1} s",
                after.as_secs_f64()
            )),
            ControlError::Io(e) => {
                Failure::runtime(format!("cannot talk to process {pid} ({comm}): {e}"))
            }
            ControlError::Reply(ReplyError::Refused(m)) => {
                Failure::runtime(format!("process {pid} ({comm}) refused the request: {m}"))
            }
            ControlError::Reply(ReplyError::Malformed(m)) => Failure::runtime(format!(
                "process {pid} ({comm}) sent a malformed reply: {m}"
            )),
        }
    }
}

fn foreign(pid: u32, uid: Option<u32>) -> Failure {
    let owner = uid.map_or_else(|| "another user".to_string(), |u| format!("uid {u}"));
    Failure::runtime(format!(
        "process {pid} belongs to {owner}; you can only inspect your own processes"
    ))
}
