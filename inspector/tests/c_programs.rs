//! The C programs of `c-tests/`, run natively, under the shim (`LD_PRELOAD`) and through
//! `memshadow run`: the shim must not change what they print or how they exit, and it
//! must attach and see their memory.
//!
//! Needs `cargo build --release --workspace` first (for `target/release/libmemshadow.so`)
//! and a C compiler (`cc`).

mod common;

use std::time::Duration;

use common::{assert_native_ok, assert_same_behaviour, c_program, Prog};

/// Runs `c-tests/NAME.c` natively (expecting exit `code` and no FAIL line), under the
/// shim (expecting identical stdout, stderr and exit status), and through
/// `memshadow run --stats-json` (expecting the same stdout and exit status, and a JSON
/// record showing the shim attached, counted allocations and tracked memory).
/// Returns the stats run for program-specific checks.
fn check_program(name: &str, code: i32, timeout: Duration) -> common::StatsRun {
    let prog = Prog::new(c_program(name)).timeout(timeout);
    let native = prog.run_native();
    assert_native_ok(name, &native, code);

    let shimmed = prog.run_shimmed();
    assert_same_behaviour(name, &native, &shimmed, true);

    // With a snapshot every 10 ms the program must still behave identically: every
    // write after a snapshot traps, held faults, fork, threads and munmap all go through
    // the snapshot engine.
    let periodic = prog
        .clone()
        .env("MEMSHADOW_INTERVAL_MS", "10")
        .timeout(PERIODIC_LIMIT)
        .run_shimmed();
    assert_same_behaviour(
        &format!("{name} (10 ms snapshots)"),
        &native,
        &periodic,
        true,
    );

    let stats = prog.run_memshadow();
    assert_same_behaviour(
        &format!("{name} (through memshadow run)"),
        &native,
        &stats.output,
        false,
    );
    stats.assert_attached(&native, true);
    stats
}

const T: Duration = common::DEFAULT_TIMEOUT;
/// Per-run limit with 10 ms snapshots: plain copy-on-write makes write-heavy programs
/// (big_heap writes 1 GiB) many times slower until the prefetcher exists, and more so on
/// a loaded machine. This limit is about hangs, not speed.
const PERIODIC_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn periodic_snapshots_trap_and_keep_versions() {
    // big_heap writes 1 GiB over about a second: with 10 ms snapshots its stats show
    // epochs, traps and copied pages, and nothing incomplete.
    // Shadows named: under `auto` a program this large starts on holder children,
    // which take no traps and save no freed pages (holder.rs tests those).
    let prog = big_heap_every_10_ms().env("MEMSHADOW_BACKEND", "shadow");
    let native = prog.run_native();
    assert_native_ok("big_heap", &native, 0);
    let stats = prog.run_memshadow();
    assert_same_behaviour("big_heap (10 ms snapshots)", &native, &stats.output, false);
    stats.assert_attached(&native, true);
    // Its frees of 1 MiB blocks (glibc unmaps them) keep their pages for older versions;
    // the shim's threads used CPU time.
    for key in [
        "epochs",
        "traps",
        "pages_copied",
        "pages_protected",
        "pages_preserved",
        "shim_cpu_us",
    ] {
        assert!(
            stats.u64(key) > 0,
            "{key} is 0 with 10 ms snapshots: {}",
            stats.json
        );
    }
    assert_eq!(stats.u64("incomplete_snapshots"), 0, "{}", stats.json);
    assert!(stats.u64("versions_retained") >= 1, "{}", stats.json);
    assert!(
        stats.u64("shadow_peak_bytes") >= stats.u64("shadow_bytes")
            && stats.u64("shadow_peak_bytes") > 0,
        "shadow_peak_bytes is the most shadow memory in use: {}",
        stats.json
    );
}

#[test]
fn shadow_budget_exhaustion_is_counted_and_changes_nothing() {
    // A 1 MiB shadow budget cannot hold big_heap's writes between 10 ms snapshots: the
    // snapshots are abandoned (counted), the program's output is unchanged, and the shim
    // says so in one stderr line. Shadows named: under `auto` this program starts on
    // holders, which keep within the budget by giving up older versions, silently
    // (holder.rs: holders_stay_within_the_shadow_budget).
    let prog = big_heap_every_10_ms()
        .env("MEMSHADOW_BACKEND", "shadow")
        .env("MEMSHADOW_SHADOW_BUDGET_MB", "1");
    let line = big_heap_runs_as_natively_with_one_line(&prog);
    assert!(
        line.starts_with("memshadow: shadow budget exhausted"),
        "{line}"
    );
    let stats = prog.run_memshadow();
    assert!(
        stats.u64("incomplete_snapshots") > 0,
        "no incomplete snapshot counted: {}",
        stats.json
    );
}

#[test]
fn a_budget_too_large_to_index_is_one_line_and_changes_nothing() {
    // The largest budget the variable takes (1 TiB) needs about 12 GiB of bookkeeping:
    // the engine does not start (one line) and the program runs as without the shim; it
    // used to die of the shim's failed allocation.
    let prog = big_heap_every_10_ms().env("MEMSHADOW_SHADOW_BUDGET_MB", "1048576");
    let line = big_heap_runs_as_natively_with_one_line(&prog);
    assert!(
        line.starts_with("memshadow: ")
            && line.contains("cannot reserve a 1048576 MiB shadow budget"),
        "{line}"
    );
}

/// big_heap (1 GiB written over about a second) with a snapshot every 10 ms.
fn big_heap_every_10_ms() -> Prog {
    Prog::new(c_program("big_heap"))
        .timeout(PERIODIC_LIMIT)
        .env("MEMSHADOW_INTERVAL_MS", "10")
}

/// Runs big_heap natively and under the shim as `prog` sets it up: the same exit status
/// and stdout, and exactly one line on the shimmed run's stderr, returned.
fn big_heap_runs_as_natively_with_one_line(prog: &Prog) -> String {
    let native = prog.run_native();
    assert_native_ok("big_heap", &native, 0);
    let shimmed = prog.run_shimmed();
    assert_eq!(shimmed.status, native.status, "exit status changed");
    assert_eq!(shimmed.stdout, native.stdout, "stdout changed");
    let stderr = String::from_utf8_lossy(&shimmed.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one memshadow line on stderr, got:\n{stderr}"
    );
    lines[0].to_string()
}

#[test]
fn kernel_writes_into_protected_buffers() {
    // read, pread, recv and getrandom write into heap buffers right after a snapshot
    // (taken through the C API when the shim is loaded): each completes with the right
    // data, with or without the shim.
    check_program("kernel_writes", 0, T);
}

#[test]
fn alloc_api() {
    check_program("alloc_api", 0, T);
}

#[test]
fn large_mmap() {
    check_program("large_mmap", 0, T);
}

#[test]
fn realloc_churn() {
    // Exits 3 on success: exit codes must pass through unchanged.
    check_program("realloc_churn", 3, T);
}

#[test]
fn threads_alloc() {
    let stats = check_program("threads_alloc", 0, T);
    // 16 workers, one on a malloc'd stack and two idle ones: 19 threads made 192000
    // allocations between them.
    assert!(
        stats.u64("allocs") >= 192_000,
        "threads_alloc made at least 192000 allocations, the shim counted {}",
        stats.u64("allocs")
    );
}

#[test]
fn fork_child() {
    check_program("fork_child", 0, T);
}

#[test]
fn fork_exec() {
    // Exits 5 on success.
    let stats = check_program("fork_exec", 5, T);
    // It execs /bin/echo four times, sh five times and itself three times, all with
    // LD_PRELOAD inherited: each of those is a shimmed process of the run.
    let procs = stats.processes();
    let mut pids: Vec<u64> = procs
        .iter()
        .filter_map(|p| p.get("pid").and_then(serde_json::Value::as_u64))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert!(
        pids.len() >= 4,
        "fork_exec starts at least 12 dynamically linked programs under LD_PRELOAD, but `processes` lists {} distinct pids: {}",
        pids.len(),
        serde_json::to_string_pretty(&stats.json).unwrap_or_default()
    );
}

#[test]
fn signal_alloc() {
    check_program("signal_alloc", 0, T);
}

#[test]
fn dlopen_lib() {
    check_program("dlopen_lib", 0, T);
}

#[test]
fn big_heap() {
    let stats = check_program("big_heap", 0, Duration::from_secs(180));
    // 1 GiB was live at the peak; at exit most of it is freed, so only check the
    // allocation count: 896 big blocks plus about 65000 small ones.
    assert!(
        stats.u64("allocs") >= 60_000,
        "big_heap made more than 60000 allocations, the shim counted {}",
        stats.u64("allocs")
    );
}

/// A bad configuration value makes the shim say so in exactly one `memshadow:` line on
/// stderr and run the program untracked, with its output and exit status unchanged.
#[test]
fn bad_configuration_is_reported_once_and_changes_nothing() {
    let prog = Prog::new(c_program("alloc_api"));
    let native = prog.run_native();
    assert_native_ok("alloc_api", &native, 0);
    let native_stderr = String::from_utf8_lossy(&native.stderr).into_owned();

    for (var, value) in [
        ("MEMSHADOW_TRACK", "bogus"),
        ("MEMSHADOW_LOG", "loud"),
        ("MEMSHADOW_INTERVAL_MS", "abc"),
        // A period whose nanoseconds overflow: it once wrapped into ~300 snapshots a second.
        ("MEMSHADOW_INTERVAL_MS", "18446744073709551615"),
        ("MEMSHADOW_INTERVAL_MS", "18446744073709"),
        ("MEMSHADOW_MAX_OVERHEAD", "0"),
    ] {
        let shimmed = prog.run_shimmed_with(&[(var, value)]);
        let what = format!("alloc_api with {var}={value}");
        let stderr = String::from_utf8_lossy(&shimmed.stderr).into_owned();
        let (ours, rest): (Vec<&str>, Vec<&str>) =
            stderr.lines().partition(|l| l.starts_with("memshadow:"));
        assert_eq!(
            ours.len(),
            1,
            "{what}: expected exactly one stderr line starting `memshadow:`, got:\n{stderr}"
        );
        assert!(
            ours[0].contains(var),
            "{what}: the complaint should name {var}: {:?}",
            ours[0]
        );
        assert_eq!(
            rest,
            native_stderr.lines().collect::<Vec<_>>(),
            "{what}: stderr apart from the memshadow line differs from the native run's"
        );
        assert_eq!(
            shimmed.status.code(),
            native.status.code(),
            "{what}: exit status changed:\n{stderr}"
        );
        assert!(
            shimmed.stdout == native.stdout,
            "{what}: stdout differs: {}",
            common::first_difference(&native.stdout, &shimmed.stdout)
        );
    }
}

/// The harness itself: a program that outlives its time limit is killed together with
/// everything it started, and the panic names the command.
#[test]
fn harness_timeout_kills_the_process_group() {
    let dir = common::temp_dir("timeout");
    let pid_file = dir.path().join("pid");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("sleep 30 & echo $! > \"$1\"; wait")
        .arg("sh")
        .arg(&pid_file);
    let started = std::time::Instant::now();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::run_with_timeout(&mut cmd, Duration::from_secs(1))
    }))
    .expect_err("run_with_timeout should panic on expiry");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("timed out") && msg.contains("sleep 30"),
        "unexpected panic message: {msg}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "took too long");
    let pid = std::fs::read_to_string(&pid_file).expect("the background pid was written");
    let stat = format!("/proc/{}/stat", pid.trim());
    // Killed: gone, or a zombie until its new parent reaps it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                break
            }
            Ok(s) if std::time::Instant::now() > deadline => {
                panic!("the background sleep survived the timeout: {s}")
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
