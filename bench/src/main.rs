//! `memshadow-bench`: measures memshadow against the same workload without the shim.
//!
//! `cargo run --release -p memshadow-bench -- overhead` runs allocation-heavy workloads
//! (a multi-threaded C program, `bench/workloads/malloc_churn.c`, and sqlite3 bulk
//! inserts) alternately without the shim (`baseline`) and under it with tracking on and
//! no snapshots (`idle`), so that machine drift hits both alike, and reports the ratios
//! of median wall and CPU times.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// Compiles a workload from `bench/workloads/NAME.c` into `target/bench-workloads/NAME`.
fn build_workload(name: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let src = root.join("bench/workloads").join(format!("{name}.c"));
    let out_dir = root.join("target/bench-workloads");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let out = out_dir.join(name);
    let status = Command::new("cc")
        .args(["-O2", "-pthread", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|e| format!("cannot run cc (install gcc): {e}"))?;
    if !status.success() {
        return Err(format!("cc failed on {}", src.display()));
    }
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
    let st = cmd
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run workload: {e}"))?;
    if !st.success() {
        return Err(format!("workload failed: {st}"));
    }
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
    let lib = lib.unwrap_or_else(|| workspace_root().join("target/release/libmemshadow.so"));
    if !lib.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first",
            lib.display()
        ));
    }
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
    };
    if let Err(e) = r {
        eprintln!("memshadow-bench: {e}");
        std::process::exit(1);
    }
}
