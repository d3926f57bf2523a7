//! The `run`, `ps` and `stats` subcommands, and [`Target`], the shimmed process that
//! `stats`, `snapshot` and `read` talk to.

use std::io::{self, Write};
use std::path::PathBuf;

use memshadow_format::control::ReplyError;
use memshadow_format::paths;
use memshadow_format::stats::ProcessState;

use crate::cli::{PsArgs, RunArgs, StatsArgs};
use crate::control_client::{self, ControlError};
use crate::error::{Failure, Result};
use crate::launch;
use crate::registry::{self, PageError, ProcInfo};
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
    let outcome = launch.run(None)?;
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

/// `memshadow ps`.
pub fn ps(args: PsArgs) -> Result<i32> {
    let scan = registry::scan(&registry::scan_dirs());
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
    pub socket: PathBuf,
}

impl Target {
    /// Finds the stats page of `pid` and checks that we may talk to it.
    pub fn find(pid: u32) -> Result<Self> {
        let info = ProcInfo::read(pid).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Failure::runtime(format!("no process with pid {pid}")),
            _ => Failure::runtime(format!("cannot read /proc/{pid}: {e}")),
        })?;
        let process_uid = registry::process_uid(pid).ok();
        let mut denied = false;
        let mut undecodable = None;
        for dir in registry::scan_dirs() {
            match registry::read_page(&paths::stats_path(&dir, pid)) {
                Ok(rec) if rec.start_time_ticks == info.start_time_ticks => {
                    if !registry::may_inspect(rec.uid) {
                        return Err(foreign(pid, Some(rec.uid)));
                    }
                    if info.is_zombie() || rec.state == Some(ProcessState::Exited) {
                        return Err(Failure::runtime(format!(
                            "process {pid} ({}) has exited",
                            info.comm
                        )));
                    }
                    return Ok(Target {
                        pid,
                        comm: info.comm,
                        start_time_ticks: info.start_time_ticks,
                        uid: rec.uid,
                        socket: paths::socket_path(&dir, pid),
                    });
                }
                Err(PageError::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                    denied = true;
                }
                Err(PageError::Decode(e)) => undecodable = Some(e),
                _ => {}
            }
        }
        if denied || process_uid.is_some_and(|u| !registry::may_inspect(u)) {
            return Err(foreign(pid, process_uid));
        }
        if let Some(e) = undecodable {
            return Err(Failure::runtime(format!(
                "process {pid} ({}): cannot read its stats page: {e}",
                info.comm
            )));
        }
        Err(Failure::runtime(format!(
            "process {pid} ({}) is not running under memshadow",
            info.comm
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
            ControlError::NotListening(_)
            | ControlError::Io(_)
            | ControlError::Reply(ReplyError::Malformed(_))
                if self.gone() =>
            {
                Failure::runtime(format!("process {pid} ({comm}) has exited"))
            }
            ControlError::NotListening(e) => Failure::runtime(format!(
                "process {pid} ({comm}) has a memshadow stats page but does not answer on {} ({e})",
                self.socket.display()
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
