//! `memshadow-bench`: measures memshadow against the same workload without the shim.
//!
//! `cargo run --release -p memshadow-bench -- overhead` runs allocation-heavy workloads
//! (a multi-threaded C program, `bench/workloads/malloc_churn.c`, and sqlite3 bulk
//! inserts) alternately without the shim (`baseline`) and under it with tracking on and
//! no snapshots (`idle`), so that machine drift hits both alike, and reports the ratios
//! of median wall and CPU times.
//!
//! `cargo run --release -p memshadow-bench -- snapshot-costs [--runs N] [--mib M]`
//! measures what snapshots cost, with `bench/workloads/snapshot_costs.c` run under the
//! shim (it asks for snapshots through the C API, `c-tests/include/memshadow.h`) and
//! timing itself with `CLOCK_MONOTONIC`; each figure is a median over N runs (default 3,
//! about two minutes on the 2-core project machine), next to its min-max spread and its
//! ratio to a baseline measured in the same run:
//!
//! - protect pass: the first snapshot after touching M MiB (default 1024) in one malloc
//!   block, with the engine already started and with its start-up included, and the
//!   shim's own `protect_pass_us_last`, against the parent's pause in `fork()` of the same
//!   process with the same memory;
//! - a second snapshot right after the first, nothing written in between (only what lost
//!   its protection is protected again), against the same `fork()`;
//! - trap cost: one byte written to each page of 256 MiB after a snapshot, in page order
//!   and in a shuffled order, with `MEMSHADOW_FAULT_AROUND` 1, 16 and 64, per page, against
//!   the same writes without a snapshot;
//! - slowdown of a write-heavy program (sweeps adding to every 8th word of 256 MiB, about
//!   a second natively) under the shim without snapshots and with
//!   `MEMSHADOW_INTERVAL_MS=100`, against the program run without the shim.
//!
//! Every child process (compiler, workloads) is killed if it outlives its time limit.

mod snapshot_costs;

use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wait_timeout::ChildExt;

#[derive(Parser)]
#[command(about = "Benchmarks memshadow against no shim, in one run")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Workload {
    /// bench/workloads/malloc_churn.c: malloc, write 64 bytes, free a cold block, in threads.
    Churn,
    /// sqlite3 running bench/workloads/sqlite_inserts.sql on a fresh database file.
    Sqlite,
}

#[derive(Subcommand)]
enum Cmd {
    /// Overhead of the shim with tracking on and no snapshots, on a malloc/free-heavy
    /// multi-threaded program.
    Overhead {
        /// Pairs of runs (baseline, idle), interleaved.
        #[arg(long, default_value_t = 15)]
        runs: usize,
        /// Worker threads of the workload.
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// malloc/free steps per thread.
        #[arg(long, default_value_t = 3_000_000)]
        steps: u64,
        /// The shim to preload (default: target/release/libmemshadow.so).
        #[arg(long)]
        lib: Option<PathBuf>,
        /// Workloads to measure: `churn` (the C program) and `sqlite` (sqlite3 bulk inserts).
        #[arg(long, value_delimiter = ',', default_value = "churn,sqlite")]
        workload: Vec<Workload>,
    },
    /// Costs of snapshots: protect pass against fork(), a second pass with nothing
    /// written, trap cost per page, and the slowdown of a write-heavy program at 10 Hz.
    SnapshotCosts {
        /// Runs of every measurement; the table shows medians.
        #[arg(long, default_value_t = 3, value_parser = at_least_one())]
        runs: usize,
        /// MiB touched before the protect pass and fork() are timed.
        #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
        mib: usize,
        /// The shim to preload (default: target/release/libmemshadow.so).
        #[arg(long)]
        lib: Option<PathBuf>,
    },
}

/// A clap parser for counts of 1 or more.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// The shim to preload: `lib`, or the workspace's release build; it must exist.
fn shim_lib(lib: Option<PathBuf>) -> Result<PathBuf, String> {
    let lib = lib.unwrap_or_else(|| workspace_root().join("target/release/libmemshadow.so"));
    if lib.exists() {
        Ok(lib)
    } else {
        Err(format!(
            "{} not found: run `cargo build --release --workspace` first",
            lib.display()
        ))
    }
}

/// Runs `cmd` to the end with its stdout captured (stderr passes through) and returns
/// that output; the process is killed if it runs longer than `limit`. Fails unless it
/// exits with status 0.
fn run_limited(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let name = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let waited = child.wait_timeout(limit);
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(match waited {
                Err(e) => format!("waiting for {name}: {e} (killed it)"),
                _ => format!("{name} did not finish in {} s: killed", limit.as_secs()),
            });
        }
    };
    let out = reader
        .join()
        .expect("the reader thread does not panic")
        .map_err(|e| format!("reading the output of {name}: {e}"))?;
    if !status.success() {
        return Err(format!("{name} failed: {status}"));
    }
    Ok(out)
}

/// Compiles a workload from `bench/workloads/NAME.c` into `target/bench-workloads/NAME`.
fn build_workload(name: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let src = root.join("bench/workloads").join(format!("{name}.c"));
    let out_dir = root.join("target/bench-workloads");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let out = out_dir.join(name);
    run_limited(
        Command::new("cc")
            .args(["-O2", "-pthread", "-Wall", "-Werror", "-I"])
            .arg(root.join("c-tests/include"))
            .arg("-o")
            .arg(&out)
            .arg(&src),
        Duration::from_secs(120),
    )
    .map_err(|e| {
        if e.starts_with("cannot run") {
            format!("{e} (install gcc)")
        } else {
            e
        }
    })?;
    Ok(out)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time (user + system) used by all waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall time and CPU time of one run.
struct Timing {
    wall: Duration,
    cpu: Duration,
}

fn time_run(cmd: &mut Command) -> Result<Timing, String> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    run_limited(cmd, Duration::from_secs(600))?;
    Ok(Timing {
        wall: t.elapsed(),
        cpu: children_cpu() - cpu0,
    })
}

/// A workload ready to run: how to build its command, what it does per run.
struct Prepared {
    title: String,
    calls: Option<u64>,
    make: Box<dyn Fn() -> Command>,
}

fn prepare(w: Workload, threads: u32, steps: u64, scratch: &Path) -> Result<Prepared, String> {
    match w {
        Workload::Churn => {
            let prog = build_workload("malloc_churn")?;
            let args = [threads.to_string(), steps.to_string()];
            Ok(Prepared {
                title: format!("malloc_churn {threads} threads x {steps} steps"),
                calls: Some(2 * threads as u64 * steps),
                make: Box::new(move || {
                    let mut c = Command::new(&prog);
                    c.args(&args);
                    c
                }),
            })
        }
        Workload::Sqlite => {
            let sql = workspace_root().join("bench/workloads/sqlite_inserts.sql");
            let db = scratch.join("bench.db");
            Command::new("sqlite3")
                .arg("-version")
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run sqlite3 (apt-get install sqlite3): {e}"))?;
            Ok(Prepared {
                title: "sqlite3 < bench/workloads/sqlite_inserts.sql (400k rows, index, aggregate)"
                    .into(),
                calls: None,
                make: Box::new(move || {
                    let _ = std::fs::remove_file(&db);
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg("exec sqlite3 \"$0\" < \"$1\"")
                        .arg(&db)
                        .arg(&sql);
                    c
                }),
            })
        }
    }
}

fn overhead(
    runs: usize,
    threads: u32,
    steps: u64,
    lib: Option<PathBuf>,
    workloads: &[Workload],
) -> Result<(), String> {
    let lib = shim_lib(lib)?;
    let dir = std::env::temp_dir().join(format!("memshadow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let wl: Vec<String> = workloads
        .iter()
        .map(|w| format!("{w:?}").to_lowercase())
        .collect();
    println!(
        "command: cargo run --release -p memshadow-bench -- overhead --runs {runs} --threads {threads} --steps {steps} --workload {}",
        wl.join(",")
    );
    println!("{runs} interleaved pairs per workload (order alternates), medians\n");
    println!("| workload | mode | median wall | median CPU (user+sys) | wall ratio | CPU ratio |");
    println!("|---|---|---|---|---|---|");
    for &w in workloads {
        let p = prepare(w, threads, steps, &dir)?;
        let (mut base, mut idle) = (Vec::new(), Vec::new());
        for i in 0..runs.max(1) {
            for shim in if i % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                let mut c = (p.make)();
                if shim {
                    c.env("LD_PRELOAD", &lib).env("MEMSHADOW_DIR", &dir);
                    idle.push(time_run(&mut c)?);
                } else {
                    base.push(time_run(&mut c)?);
                }
            }
        }
        let medians = |v: &[Timing]| {
            let mut wall: Vec<_> = v.iter().map(|t| t.wall).collect();
            let mut cpu: Vec<_> = v.iter().map(|t| t.cpu).collect();
            (median(&mut wall), median(&mut cpu))
        };
        let (bw, bc) = medians(&base);
        let (iw, ic) = medians(&idle);
        for (mode, wall, cpu) in [("baseline", bw, bc), ("idle", iw, ic)] {
            println!(
                "| {} | {mode} | {:.3} s | {:.3} s | {:.3} | {:.3} |",
                p.title,
                wall.as_secs_f64(),
                cpu.as_secs_f64(),
                wall.as_secs_f64() / bw.as_secs_f64(),
                cpu.as_secs_f64() / bc.as_secs_f64()
            );
        }
        if let Some(calls) = p.calls {
            println!(
                "|  | idle - baseline CPU per malloc/free call | | {:.1} ns | | |",
                (ic.as_secs_f64() - bc.as_secs_f64()) * 1e9 / calls as f64
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Overhead {
            runs,
            threads,
            steps,
            lib,
            workload,
        } => overhead(runs, threads, steps, lib, &workload),
        Cmd::SnapshotCosts { runs, mib, lib } => snapshot_costs::run(runs, mib, lib),
    };
    if let Err(e) = r {
        eprintln!("memshadow-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_limited_returns_stdout_and_kills_on_expiry() {
        let out = run_limited(Command::new("echo").arg("key 1"), Duration::from_secs(10));
        assert_eq!(out.unwrap(), "key 1\n");
        assert!(run_limited(&mut Command::new("false"), Duration::from_secs(10)).is_err());
        let t = Instant::now();
        let err =
            run_limited(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
