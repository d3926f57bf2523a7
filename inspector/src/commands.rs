//! The `run`, `ps` and `stats` subcommands, and [`Target`], the shimmed process that
//! `stats`, `snapshot` and `read` talk to.

use std::io::{self, Write};

use memshadow_format::control::ReplyError;
use memshadow_format::paths;
use memshadow_format::stats::ProcessState;

use crate::cli::{PsArgs, RunArgs, StatsArgs};
use crate::control_client::{self, ControlError, Endpoint};
use crate::error::{Failure, Result};
use crate::launch;
use crate::registry::{self, DirError, Kind, PageError, ProcInfo, RunDir};
use crate::report;
use crate::safe_file::{self, SafeFile};

/// `memshadow run`: never returns on success, it exits like the program did.
pub fn run(args: RunArgs) -> Result<i32> {
    let launch = launch::prepare(&args.command, args.lib.as_deref())?;
    let json_out = match &args.stats_json {
        Some(path) => Some(
            SafeFile::create(path)
                .map_err(|e| Failure::runtime(safe_file::cannot_write(path, &e)))?,
        ),
        None => None,
    };
    if args.record.is_none() && args.recording.any() {
        return Err(Failure::usage(
            "--every, --keep and --keep-for go with --record STORE",
        ));
    }
    let mut recorder: Option<crate::recorder::Background> = None;
    let outcome = match &args.record {
        None => launch.run(None)?,
        Some(store) => {
            // The recorder starts as soon as the program's pid is known and waits for
            // its shim's socket.
            let mut start = |pid: u32, _: std::time::Duration| {
                if recorder.is_none() {
                    recorder = Some(crate::recorder::Background::start(
                        pid,
                        store,
                        &args.recording,
                    ));
                }
            };
            launch.run(Some((RECORDER_START_POLL, &mut start)))?
        }
    };
    if let Some(r) = recorder {
        let store = r.store.clone();
        // A failure was said when it happened.
        if let (Ok(done), false) = (r.finish(), args.quiet) {
            eprintln!("memshadow: {}", crate::recorder::summary(&done, &store));
        }
    }
    if !args.quiet {
        for line in report::run_summary(&outcome) {
            eprintln!("memshadow: {line}");
        }
    }
    if let (Some(file), Some(path)) = (json_out, &args.stats_json) {
        let mut w = file.file();
        serde_json::to_writer_pretty(&mut w, &report::run_json(&outcome))
            .map_err(io::Error::from)
            .and_then(|()| writeln!(w))
            .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))?;
        file.commit()
            .map_err(|e| Failure::runtime(safe_file::cannot_write(path, &e)))?;
    }
    launch::exit_like(outcome.status)
}

/// How soon after the program starts `run --record` starts its recorder.
const RECORDER_START_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// `memshadow ps`.
pub fn ps(args: PsArgs) -> Result<i32> {
    let scan = registry::scan(&registry::scan_dirs());
    for (dir, why) in &scan.refused_dirs {
        eprintln!(
            "memshadow: ignoring {}: {why}; another user may have squatted it, so the processes of its uid publish elsewhere or run untracked",
            dir.display()
        );
    }
    for (file, why) in &scan.refused_files {
        eprintln!("memshadow: ignoring {}: {why}", file.display());
    }
    match scan.removed {
        0 => {}
        1 => eprintln!("memshadow: removed the leftover files of 1 dead process"),
        n => eprintln!("memshadow: removed the leftover files of {n} dead processes"),
    }
    if args.json {
        let list: Vec<_> = scan
            .running
            .iter()
            .map(|r| serde_json::Value::Object(report::process_json(r)))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if scan.running.is_empty() {
        println!("no processes are running under memshadow");
    } else {
        print!("{}", report::ps_table(&scan.running));
    }
    Ok(0)
}

/// A shimmed process found by pid.
pub struct Target {
    pub pid: u32,
    pub comm: String,
    start_time_ticks: u64,
    uid: u32,
    pub socket: Endpoint,
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
                        uid: *uid,
                        socket: Endpoint {
                            connect_path: dir.socket_connect_path(pid),
                            shown,
                            pid,
                            _dir: Some(dir.handle()),
                        },
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

    /// Whether the process has exited (or its pid now names another process).
    pub fn gone(&self) -> bool {
        ProcInfo::read(self.pid).map_or(true, |p| {
            p.is_zombie() || p.start_time_ticks != self.start_time_ticks
        })
    }

    fn query(&self) -> std::result::Result<Vec<(String, String)>, ControlError> {
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

/// `memshadow stats`.
pub fn stats(args: StatsArgs) -> Result<i32> {
    let target = Target::find(args.pid)?;
    let mut first = true;
    loop {
        let fields = match target.query() {
            Ok(f) => f,
            Err(_) if !first && target.gone() => break,
            Err(e) => return Err(target.explain(e)),
        };
        if args.json {
            println!("{}", report::stats_json(&fields));
        } else {
            if !first {
                println!();
            }
            print!("{}", report::stats_text(&fields));
        }
        let Some(every) = args.watch else {
            return Ok(0);
        };
        let _ = io::stdout().flush();
        std::thread::sleep(every);
        if target.gone() {
            break;
        }
        first = false;
    }
    eprintln!("memshadow: process {} ({}) exited", target.pid, target.comm);
    Ok(0)
}
