//! `memshadow-bench`: measures memshadow against the same workload without the shim,
//! and against fork()-based snapshots.
//!
//! `cargo run --release -p memshadow-bench -- [--quick] [--json FILE] [--workload NAME...]
//! [--mode NAME...] [--interval-ms T] [--mib M...] [--seconds S] [--runs N] [--full]
//! [--predict NAME]` (no subcommand) runs every workload at every size in every mode, interleaved (in each
//! run, each workload and size runs its modes back to back in an order that rotates), and
//! prints one row per workload, size and mode (medians of the runs):
//!
//! - modes: `baseline` (the workload alone), `idle` (under `memshadow run`, no
//!   snapshots), `cow` (a snapshot every T ms, `MEMSHADOW_PREDICT=off`), `prefetch` (the
//!   same with `MEMSHADOW_PREDICT=NAME`, `--predict NAME`: `auto` (default), `history`,
//!   `stride`, `markov` or `score`, named in the report's header; the same as `cow` with
//!   a shim that has no prefetcher, which the output says), `fork` (the workload forks every T ms and the
//!   child writes all of its data to a new file in the scratch directory, fsynced, as Redis
//!   BGSAVE does), `record` (under `memshadow run --record STORE --every T`, a local store
//!   in the scratch directory, with the predictor of `prefetch`); record and fork rows
//!   also carry the durable copies: snapshots, stored bytes and the time to restore the
//!   last version, and a second table compares them per snapshot;
//! - workloads: seven C programs (`bench/workloads/*.c`, protocol in `workload.h`:
//!   `NAME --mib M --seconds S [--threads N] [--fork-every-ms T] [--seed X]`, printing
//!   `key value` lines), `sqlite` (sqlite3 running `bench/workloads/sqlite_inserts.sql`
//!   scaled to M MiB on an in-memory database; rows/s; no fork mode) and `redis`
//!   (redis-server filled with M MiB, driven by redis-benchmark with SET and INCR; fork
//!   mode = BGSAVE every T ms);
//! - metrics: ops/s and its ratio to the baseline of the same run and size, stalls (the
//!   slowest and the 99th-percentile batch minus the median batch), the shim's counters
//!   from `--stats-json` (traps, epochs, pages copied and preserved, shadow peak, longest
//!   protect pass, the shim's own CPU time, abandoned snapshots), prefetch hit rate
//!   (`prefetch_hits / (prefetch_hits + traps)`) and waste rate (`prefetch_waste /
//!   prefetch_copied`), and in the JSON rows also `prefetch_late` (traps on pages queued
//!   for prefetch but not copied yet), `prefetch_at_pass` (pages the protect passes
//!   copied while holding writes) and `prefetch_cpu_s` (the prefetch thread's CPU
//!   time), forks and the longest fork pause.
//!
//! `--json FILE` writes the rows as a JSON array and a chart (throughput ratio and worst
//! stall per mode) to FILE with the extension `.svg`. `--quick` runs the C workloads at
//! 32 MiB for a second in every mode and fails unless every mode produced its numbers
//! (CI's smoke test; never a speed check).
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
//! `cargo run --release -p memshadow-bench -- replica [--mib M] [--seconds S] [--join-at J]
//! [--workload NAME,...]` records a workload every 100 ms to SeaweedFS for S seconds
//! (default 60) while a follower joins at J seconds (default 30): its first sync's time
//! and bytes against the base plus chain and one image, its order, and its lag while
//! following (`replica.rs`; needs `weed`).
//!
//! Every child process (compiler, workloads) is killed if it outlives its time limit.

mod common;
mod durable;
mod harness;
mod redis;
mod replica;
mod snapshot_costs;
mod svg;

use clap::{Parser, Subcommand};
use common::{build_workload, run_limited, shim_lib, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "Benchmarks memshadow against no shim and against fork(), in one run",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Without a subcommand: every workload in every mode.
    #[command(flatten)]
    modes: harness::Args,
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
    /// A workload recorded every 100 ms to SeaweedFS, a follower joining late: its first
    /// sync against the base plus chain and one image, and its lag (see replica.rs).
    Replica {
        /// MiB of the workload's data.
        #[arg(long, default_value_t = 256)]
        mib: u32,
        /// Seconds recorded.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds after the recording's start when the follower joins.
        #[arg(long, default_value_t = 30)]
        join_at: u64,
        /// Workloads: bench/workloads/NAME.c, or redis (redis-server driven by redis-benchmark).
        #[arg(long, value_delimiter = ',', default_value = "hot_set,zipf_updates")]
        workload: Vec<String>,
        /// MEMSHADOW_BACKEND of the recorded program (default: the shim's).
        #[arg(long)]
        backend: Option<String>,
    },
}

/// A clap parser for counts of 1 or more.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
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
        None => harness::run(cli.modes),
        Some(Cmd::Overhead {
            runs,
            threads,
            steps,
            lib,
            workload,
        }) => overhead(runs, threads, steps, lib, &workload),
        Some(Cmd::SnapshotCosts { runs, mib, lib }) => snapshot_costs::run(runs, mib, lib),
        Some(Cmd::Replica {
            mib,
            seconds,
            join_at,
            workload,
            backend,
        }) => replica::run(mib, seconds, join_at, &workload, backend.as_deref()),
    };
    if let Err(e) = r {
        eprintln!("memshadow-bench: {e}");
        std::process::exit(1);
    }
}
