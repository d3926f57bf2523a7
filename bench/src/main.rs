//! `memshadow-bench`: measures memshadow against the same workload without the shim.
//!
//! `cargo run --release -p memshadow-bench -- overhead` runs an allocation-heavy
//! multi-threaded C workload (`bench/workloads/malloc_churn.c`) alternately without the
//! shim (`baseline`) and under it with tracking on and no snapshots (`idle`), so that
//! machine drift hits both alike, and reports the ratio of median wall times.

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

fn time_run(cmd: &mut Command) -> Result<Duration, String> {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run workload: {e}"))?;
    if !st.success() {
        return Err(format!("workload failed: {st}"));
    }
    Ok(t.elapsed())
}

fn overhead(runs: usize, threads: u32, steps: u64, lib: Option<PathBuf>) -> Result<(), String> {
    let lib = lib.unwrap_or_else(|| workspace_root().join("target/release/libmemshadow.so"));
    if !lib.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first",
            lib.display()
        ));
    }
    let prog = build_workload("malloc_churn")?;
    let dir = std::env::temp_dir().join(format!("memshadow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (mut base, mut idle) = (Vec::new(), Vec::new());
    let args = [threads.to_string(), steps.to_string()];
    for _ in 0..runs.max(1) {
        base.push(time_run(Command::new(&prog).args(&args))?);
        idle.push(time_run(
            Command::new(&prog)
                .args(&args)
                .env("LD_PRELOAD", &lib)
                .env("MEMSHADOW_DIR", &dir),
        )?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (mb, mi) = (median(&mut base), median(&mut idle));
    let ops = 2 * threads as u64 * steps;
    println!("workload: malloc_churn {threads} threads x {steps} steps ({ops} malloc+free calls), {runs} interleaved pairs\n");
    println!("| mode | median wall | ns per call | ratio to baseline |");
    println!("|---|---|---|---|");
    for (name, m) in [("baseline", mb), ("idle", mi)] {
        println!(
            "| {name} | {:.3} s | {:.1} | {:.3} |",
            m.as_secs_f64(),
            m.as_nanos() as f64 / ops as f64,
            m.as_secs_f64() / mb.as_secs_f64()
        );
    }
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
        } => overhead(runs, threads, steps, lib),
    };
    if let Err(e) = r {
        eprintln!("memshadow-bench: {e}");
        std::process::exit(1);
    }
}
