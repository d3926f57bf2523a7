//! The `run`, `ps` and `stats` subcommands.

use std::io::{self, Write};

use crate::cli::{PsArgs, RunArgs, StatsArgs};
use crate::error::{Failure, Result};
use crate::launch;
use crate::registry;
use crate::report;
use crate::safe_file::{self, SafeFile};
use crate::target::Target;

/// `memshadow run`: never returns on success, it exits like the program did.
pub fn run(args: RunArgs) -> Result<i32> {
    let mut launch = launch::prepare(&args.command, args.lib.as_deref())?;
    if args.record.is_some() {
        // The flight recorder: a last snapshot, recorded, when the program crashes.
        launch.env.push((FLIGHT_ENV.into(), "1".into()));
    }
    if args.record.is_some() && std::env::var_os(BUDGET_ENV).is_none() {
        // The recorder pins the version it writes and the last one written while the
        // program goes on writing: the shadows must hold what it writes meanwhile.
        launch
            .env
            .push((BUDGET_ENV.into(), recording_budget_mb().to_string().into()));
    }
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
            // its shim's socket; once started, nothing more to do until the program ends
            // (the launcher then sleeps in poll instead of waking every 2 ms).
            let mut start = |pid: u32, _: std::time::Duration| {
                if recorder.is_none() {
                    recorder = Some(crate::recorder::Background::start(
                        pid,
                        store,
                        &args.recording,
                    ));
                }
                false
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

/// The shim's flight recorder variable (see the shim's `service::flight`).
const FLIGHT_ENV: &str = "MEMSHADOW_FLIGHT";

/// The shim's shadow budget variable.
const BUDGET_ENV: &str = "MEMSHADOW_SHADOW_BUDGET_MB";

/// The shadow budget `run --record` gives the program when the user set none: a quarter
/// of the machine's memory, at least the shim's default of 1024 MiB (reserved address
/// space; memory is used only as versions need it).
fn recording_budget_mb() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    (total_kib / 1024 / 4).max(1024)
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
