//! `snapshot-costs`: what snapshots cost, each figure a median over N runs next to a
//! baseline measured in the same run (see the crate documentation for the list).
//!
//! The workload, `bench/workloads/snapshot_costs.c`, times itself and prints `key value`
//! lines; it copies the shim's stats page at the points where the bench reads counters.

use crate::common::{
    build_workload, clear_shim_env, make_private_dir, read_stats_copies, run_limited, shim_lib,
    workspace_root, Scratch, Spread,
};
use memshadow_format::stats::{Counter, StatsRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Buffer of the trap and write-heavy measurements, MiB.
const BUFFER_MIB: usize = 256;
/// Sweeps of the write-heavy program over its buffer (about a second natively here).
const SWEEPS: u32 = 100;
/// Period of the automatic snapshots while the write-heavy program runs.
const INTERVAL_MS: u32 = 100;
/// `MEMSHADOW_FAULT_AROUND` values of the trap measurement.
const FAULT_AROUND: [u32; 3] = [1, 16, 64];
/// Longest a workload may run before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// One run of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Job {
    /// `protect MIB cold|warm`: fork(), then two snapshots in a row.
    Protect { warm: bool },
    /// `trap 256 seq|shuffled` under `MEMSHADOW_FAULT_AROUND`.
    Trap { shuffled: bool, fault_around: u32 },
    /// `sweep 256 SWEEPS`.
    Sweep(SweepMode),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SweepMode {
    /// Without the shim.
    Native,
    /// Under the shim, no snapshots.
    Shim,
    /// Under the shim with `MEMSHADOW_INTERVAL_MS`.
    Periodic,
}

/// How a job runs the workload.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Invocation {
    args: Vec<String>,
    /// The shim's settings, or None to run without the shim.
    shim: Option<Vec<(&'static str, String)>>,
}

impl Job {
    /// Every job of one run.
    fn all() -> Vec<Job> {
        let mut jobs = vec![Job::Protect { warm: false }, Job::Protect { warm: true }];
        for shuffled in [false, true] {
            for fault_around in FAULT_AROUND {
                jobs.push(Job::Trap {
                    shuffled,
                    fault_around,
                });
            }
        }
        for mode in [SweepMode::Native, SweepMode::Shim, SweepMode::Periodic] {
            jobs.push(Job::Sweep(mode));
        }
        jobs
    }

    fn invocation(self, mib: usize) -> Invocation {
        let (mode, size, variant, shim) = match self {
            Job::Protect { warm } => (
                "protect",
                mib,
                if warm { "warm" } else { "cold" }.to_string(),
                Some(vec![]),
            ),
            Job::Trap {
                shuffled,
                fault_around,
            } => (
                "trap",
                BUFFER_MIB,
                if shuffled { "shuffled" } else { "seq" }.to_string(),
                Some(vec![("MEMSHADOW_FAULT_AROUND", fault_around.to_string())]),
            ),
            Job::Sweep(sweep) => (
                "sweep",
                BUFFER_MIB,
                SWEEPS.to_string(),
                match sweep {
                    SweepMode::Native => None,
                    SweepMode::Shim => Some(vec![]),
                    SweepMode::Periodic => {
                        Some(vec![
                            ("MEMSHADOW_INTERVAL_MS", INTERVAL_MS.to_string()),
                            // Every period's snapshot, however much it costs.
                            ("MEMSHADOW_MAX_OVERHEAD", "1".to_string()),
                        ])
                    }
                },
            ),
        };
        Invocation {
            args: vec![mode.to_string(), size.to_string(), variant],
            shim,
        }
    }
}

/// Parses the workload's output: one `key value` pair per line, value an unsigned integer.
fn parse_values(out: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut values = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(k), Some(v), None) => v.parse().ok().map(|v| (k.to_string(), v)),
            _ => None,
        };
        let (k, v) = parsed.ok_or_else(|| format!("unexpected workload output line {line:?}"))?;
        values.insert(k, v);
    }
    Ok(values)
}

/// `x` with three significant digits (no exponent; at least the units digit).
fn sig3(x: f64) -> String {
    let a = x.abs();
    let decimals = if a >= 100.0 || a == 0.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    format!("{x:.decimals$}")
}

/// A duration given in nanoseconds, in the unit that suits it.
fn fmt_ns(ns: f64) -> String {
    let (v, unit) = match ns.abs() {
        a if a < 1e3 => (ns, "ns"),
        a if a < 1e6 => (ns / 1e3, "us"),
        a if a < 1e9 => (ns / 1e6, "ms"),
        _ => (ns / 1e9, "s"),
    };
    format!("{} {unit}", sig3(v))
}

/// One run's output: the printed values and the copies of the stats page by label.
struct Sample {
    values: BTreeMap<String, u64>,
    stats: BTreeMap<String, StatsRecord>,
}

impl Sample {
    fn value(&self, key: &str) -> Result<f64, String> {
        self.values
            .get(key)
            .map(|&v| v as f64)
            .ok_or_else(|| format!("the workload printed no {key}"))
    }

    fn counter(&self, label: &str, c: Counter) -> Result<f64, String> {
        self.stats
            .get(label)
            .map(|s| s.counter(c) as f64)
            .ok_or_else(|| format!("no copy of the stats page at {label} (was the shim tracking?)"))
    }

    /// How much counter `c` grew between two copies of the stats page.
    fn counter_delta(&self, from: &str, to: &str, c: Counter) -> Result<f64, String> {
        Ok(self.counter(to, c)? - self.counter(from, c)?)
    }
}

/// Runs the workload, compiled, under the given shim, with its run-time files in `dir`.
struct Runner {
    prog: PathBuf,
    lib: PathBuf,
    dir: PathBuf,
    dumps: PathBuf,
    mib: usize,
}

impl Runner {
    fn run(&self, job: Job) -> Result<Sample, String> {
        let _ = std::fs::remove_dir_all(&self.dumps);
        make_private_dir(&self.dumps)?;
        let how = job.invocation(self.mib);
        let mut c = Command::new(&self.prog);
        c.args(&how.args);
        // Only the settings chosen here: nothing from the caller's environment.
        clear_shim_env(&mut c);
        c.env("MEMSHADOW_DIR", &self.dir)
            .env("SNAPSHOT_COSTS_STATS", &self.dumps);
        if let Some(env) = how.shim {
            c.env("LD_PRELOAD", &self.lib).envs(env);
        }
        let values = parse_values(&run_limited(&mut c, RUN_LIMIT)?)?;
        Ok(Sample {
            values,
            stats: read_stats_copies(&self.dumps)?,
        })
    }
}

/// A table row: what was measured, the spread of its samples (nanoseconds), and the ratio
/// of their median to the baseline's.
struct Row {
    what: String,
    spread: Spread,
    ratio: f64,
    note: String,
}

/// The samples `f` gives for every run of the matching jobs.
fn samples(
    results: &BTreeMap<Job, Vec<Sample>>,
    select: impl Fn(Job) -> bool,
    f: impl Fn(&Sample) -> Result<f64, String>,
) -> Result<Vec<f64>, String> {
    results
        .iter()
        .filter(|(&j, _)| select(j))
        .flat_map(|(_, runs)| runs)
        .map(f)
        .collect()
}

/// The median of `samples`, for notes.
fn median(samples: &[f64]) -> f64 {
    Spread::of(samples).median
}

fn row(what: impl Into<String>, samples: &[f64], baseline: &[f64], note: String) -> Row {
    let spread = Spread::of(samples);
    Row {
        what: what.into(),
        ratio: spread.median / median(baseline),
        spread,
        note,
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}\n");
    println!("| what | median | spread (min - max) | ratio to baseline | note |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} - {} | {} | {} |",
            r.what,
            fmt_ns(r.spread.median),
            fmt_ns(r.spread.min),
            fmt_ns(r.spread.max),
            sig3(r.ratio),
            r.note
        );
    }
}

fn protect_rows(results: &BTreeMap<Job, Vec<Sample>>, mib: usize) -> Result<Vec<Row>, String> {
    let per_gib = |ns: &[f64]| format!("{} per GiB", fmt_ns(median(ns) * 1024.0 / mib as f64));
    let protect = |j: Job| matches!(j, Job::Protect { .. });
    let warm = |w: bool| move |j: Job| j == Job::Protect { warm: w };
    let pass_us = |label: &'static str| {
        move |s: &Sample| Ok(s.counter(label, Counter::ProtectPassUsLast)? * 1e3)
    };

    let fork = samples(results, protect, |s| s.value("fork_ns"))?;
    let mut rows = vec![row(
        "fork(), the parent's pause (baseline)",
        &fork,
        &fork,
        per_gib(&fork),
    )];
    for (w, what) in [
        (true, "first snapshot, engine already started"),
        (
            false,
            "first snapshot of the process (engine start-up included)",
        ),
    ] {
        let snap = samples(results, warm(w), |s| s.value("snap1_ns"))?;
        let pages = samples(results, warm(w), |s| {
            s.counter_delta("before", "snap1", Counter::PagesProtected)
        })?;
        rows.push(row(
            format!("{what}: memshadow_snapshot()"),
            &snap,
            &fork,
            format!("{}; {} pages protected", per_gib(&snap), median(&pages)),
        ));
        let pass = samples(results, warm(w), pass_us("snap1"))?;
        rows.push(row(
            "- the same pass: protect_pass_us_last",
            &pass,
            &fork,
            per_gib(&pass),
        ));
    }
    let snap2 = samples(results, protect, |s| s.value("snap2_ns"))?;
    let again = samples(results, protect, |s| {
        s.counter_delta("snap1", "snap2", Counter::PagesProtected)
    })?;
    rows.push(row(
        "second snapshot, nothing written since: memshadow_snapshot()",
        &snap2,
        &fork,
        format!("{} pages protected again", median(&again)),
    ));
    let pass2 = samples(results, protect, pass_us("snap2"))?;
    rows.push(row(
        "- the same pass: protect_pass_us_last",
        &pass2,
        &fork,
        String::new(),
    ));
    Ok(rows)
}

fn trap_rows(results: &BTreeMap<Job, Vec<Sample>>, shuffled: bool) -> Result<Vec<Row>, String> {
    let order = |j: Job| matches!(j, Job::Trap { shuffled: s, .. } if s == shuffled);
    let per_page = |key: &'static str| move |s: &Sample| Ok(s.value(key)? / s.value("pages")?);
    let name = if shuffled { "shuffled" } else { "in order" };
    let base = samples(results, order, per_page("base_ns"))?;
    let mut rows = vec![row(
        format!("{name}: no snapshot (baseline)"),
        &base,
        &base,
        String::new(),
    )];
    for fa in FAULT_AROUND {
        let this = |j: Job| {
            j == Job::Trap {
                shuffled,
                fault_around: fa,
            }
        };
        let trap = samples(results, this, per_page("trap_ns"))?;
        let traps = samples(results, this, |s| {
            Ok(s.counter("trap", Counter::Traps)? / s.value("pages")?)
        })?;
        let p50 = samples(results, this, |s| s.counter("trap", Counter::TrapUsP50))?;
        rows.push(row(
            format!("{name}: after a snapshot, MEMSHADOW_FAULT_AROUND={fa}"),
            &trap,
            &base,
            format!(
                "{} traps per page; shim trap_us_p50 {} us",
                sig3(median(&traps)),
                median(&p50)
            ),
        ));
    }
    Ok(rows)
}

fn sweep_rows(results: &BTreeMap<Job, Vec<Sample>>) -> Result<Vec<Row>, String> {
    let sweep = |m: SweepMode| move |j: Job| j == Job::Sweep(m);
    let all_sweeps = |j: Job| matches!(j, Job::Sweep(_));
    let sums = samples(results, all_sweeps, |s| s.value("checksum"))?;
    if sums.iter().any(|&c| c != sums[0]) {
        return Err(format!(
            "the write-heavy program computed different checksums: {sums:?}"
        ));
    }
    let work = |m| samples(results, sweep(m), |s| s.value("work_ns"));
    let native = work(SweepMode::Native)?;
    let delta = |c: Counter| move |s: &Sample| s.counter_delta("sweep_start", "sweep_end", c);
    let periodic = sweep(SweepMode::Periodic);
    let epochs = samples(results, periodic, delta(Counter::Epochs))?;
    let copied = samples(results, periodic, |s| {
        Ok(delta(Counter::PagesCopied)(s)? / delta(Counter::Epochs)(s)?.max(1.0))
    })?;
    let incomplete = samples(results, periodic, delta(Counter::IncompleteSnapshots))?;
    let mut note = format!(
        "{} snapshots during the work, {} pages copied per snapshot",
        median(&epochs),
        median(&copied).round()
    );
    if incomplete.iter().any(|&n| n > 0.0) {
        note += &format!(
            "; {} snapshots abandoned (shadow budget) in the worst run",
            Spread::of(&incomplete).max
        );
    }
    Ok(vec![
        row(
            "without the shim (baseline)",
            &native,
            &native,
            String::new(),
        ),
        row(
            "under the shim, no snapshots",
            &work(SweepMode::Shim)?,
            &native,
            String::new(),
        ),
        row(
            format!("under the shim, MEMSHADOW_INTERVAL_MS={INTERVAL_MS}"),
            &work(SweepMode::Periodic)?,
            &native,
            note,
        ),
    ])
}

/// The `snapshot-costs` subcommand.
pub fn run(runs: usize, mib: usize, lib: Option<PathBuf>) -> Result<(), String> {
    let explicit_lib = lib.is_some();
    let lib = shim_lib(lib)?;
    let prog = build_workload("snapshot_costs")?;
    let scratch =
        Scratch(std::env::temp_dir().join(format!("memshadow-bench-{}", std::process::id())));
    let dir = scratch.0.join("run");
    make_private_dir(&dir)?;
    let runner = Runner {
        prog,
        lib,
        dir,
        dumps: scratch.0.join("stats"),
        mib,
    };

    let started = Instant::now();
    let mut results: BTreeMap<Job, Vec<Sample>> = BTreeMap::new();
    let mut jobs = Job::all();
    for i in 0..runs {
        eprintln!(
            "memshadow-bench: run {}/{runs} ({:.0} s so far)",
            i + 1,
            started.elapsed().as_secs_f64()
        );
        for &job in &jobs {
            results.entry(job).or_default().push(runner.run(job)?);
        }
        jobs.rotate_left(1); // a different neighbour order each run
    }

    let mut command = format!(
        "cargo run --release -p memshadow-bench -- snapshot-costs --runs {runs} --mib {mib}"
    );
    if explicit_lib {
        command += &format!(" --lib {}", runner.lib.display());
    }
    println!("command: {command}");
    println!(
        "shim: {}; {runs} run(s) of each measurement, medians; times taken inside the \
         program (bench/workloads/snapshot_costs.c, CLOCK_MONOTONIC)",
        runner
            .lib
            .strip_prefix(workspace_root())
            .unwrap_or(&runner.lib)
            .display()
    );
    print_table(
        &format!(
            "Protect pass, {mib} MiB touched in one malloc block (baseline: fork() of the same process)"
        ),
        &protect_rows(&results, mib)?,
    );
    let mut traps = trap_rows(&results, false)?;
    traps.extend(trap_rows(&results, true)?);
    print_table(
        &format!(
            "First write per page after a snapshot, one byte to each page of {BUFFER_MIB} MiB, \
             time per page (baseline: the same writes without a snapshot)"
        ),
        &traps,
    );
    print_table(
        &format!(
            "Write-heavy program: {SWEEPS} sweeps adding to every 8th word of {BUFFER_MIB} MiB \
             (baseline: without the shim)"
        ),
        &sweep_rows(&results)?,
    );
    println!("\ntook {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value_lines() {
        let v = parse_values("fork_ns 123\n\nsnap1_ns  456 \n").unwrap();
        assert_eq!(v["fork_ns"], 123);
        assert_eq!(v["snap1_ns"], 456);
        assert_eq!(v.len(), 2);
        assert!(parse_values("fork_ns\n").is_err());
        assert!(parse_values("fork_ns 1 2\n").is_err());
        assert!(parse_values("fork_ns -1\n").is_err());
        assert!(parse_values("FAIL something broke\n").is_err());
    }

    #[test]
    fn formats_numbers_and_durations() {
        assert_eq!(sig3(0.0), "0");
        assert_eq!(sig3(0.01234), "0.012");
        assert_eq!(sig3(1.234), "1.23");
        assert_eq!(sig3(12.34), "12.3");
        assert_eq!(sig3(1234.4), "1234");
        assert_eq!(fmt_ns(24.4), "24.4 ns");
        assert_eq!(fmt_ns(4_710.0), "4.71 us");
        assert_eq!(fmt_ns(21_660_000.0), "21.7 ms");
        assert_eq!(fmt_ns(1_500_000_000.0), "1.50 s");
    }

    #[test]
    fn every_job_has_a_distinct_invocation() {
        let jobs = Job::all();
        let mut seen: Vec<_> = jobs.iter().map(|j| j.invocation(1024)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), jobs.len());
    }
}
