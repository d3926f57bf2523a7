//! Recording into a store: `memshadow record PID --to STORE` and `memshadow run --record
//! STORE`, read back through the store library (`memshadow_store`) with no process.
//!
//! - what a C program knows it wrote (`c-tests/snap_exact.c`'s checksums) is what the
//!   store gives back, byte for byte, and the same as a live read of the same version;
//! - versions of four concurrent writers (`c-tests/snap_consistency.c`) are never torn,
//!   over hundreds of recorded versions, deltas and bases alike;
//! - kill -9 of the program or of the recorder at random moments leaves a store that
//!   verifies and whose every published version restores.
//!
//! Needs `cargo build --release --workspace` first, a C compiler and userfaultfd (root).
//! Every process started has a time limit.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use memshadow_format::image::ImageReader;
use memshadow_store::Store;

use common::shimmed::{chain_fault, fnv1a64, parse_chains, Running};
use common::{
    aws_env, c_program, clean_env_in, finish, memshadow_bin, temp_dir, wait_until, Guard,
};

const LIMIT: Duration = Duration::from_secs(60);

/// The tests here each run a program of four writer threads and a recorder: on a
/// machine of 2 cores, several at once starve one another's recorders (the recorder
/// yields to the program by design). One at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command for the memshadow binary with a clean environment and its own run-time dir.
fn memshadow(dir: &Path) -> Command {
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, dir);
    c
}

/// Records `pid` into `target` (a directory or s3://...) every `every_ms` until the
/// store holds `versions` versions, then interrupts the recorder (Ctrl-C), which must
/// end well; returns what it said. Waits for progress, not for a time (60 s at most).
fn record_until(dir: &Path, pid: u32, target: &str, every_ms: u64, versions: usize) -> String {
    let mut c = memshadow(dir);
    aws_env(&mut c);
    c.args(["record", &pid.to_string(), "--to", target])
        .args(["--every", &every_ms.to_string()])
        .stderr(std::process::Stdio::piped());
    let mut recorder = Guard::spawn(&mut c, LIMIT);
    let stderr = recorder.child().stderr.take().unwrap();
    let said = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let held = || {
        Store::open(target)
            .and_then(|s| s.version_numbers())
            .map_or(0, |v| v.len())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while held() < versions {
        assert!(
            Instant::now() < deadline,
            "the recorder published {} of {versions} versions in 60 s",
            held()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupt(recorder);
    said.join().unwrap()
}

/// The bytes at `addr` of version `v` in the store.
fn stored(store: &mut Store, v: u64, addr: u64, len: u64) -> Vec<u8> {
    store
        .read(v, addr, len)
        .unwrap_or_else(|e| panic!("version {v} at {addr:#x}+{len}: {e}"))
}

#[test]
fn a_recording_gives_back_what_the_program_wrote_and_what_a_live_read_gives() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-exact");
    let d = dir.path();
    let store_dir = d.join("store");
    let running = exact_writer(d);
    let pid = running.pid();
    let said = record_until(d, pid, store_dir.to_str().unwrap(), 50, 3);
    assert!(said.contains("recorded"), "{said}");
    // --for ends a recording by itself, into the same store.
    let mut c = memshadow(d);
    c.args(["record", &pid.to_string(), "--to"])
        .arg(&store_dir)
        .args(["--every", "50", "--for", "0.2"]);
    let f = finish(&mut c, LIMIT);
    assert!(f.status.success(), "{f:#?}");
    let mut store = Store::open(store_dir.to_str().unwrap()).expect("the store opens");
    let versions = store.versions().expect("versions");
    assert!(versions.len() >= 2, "{versions:?}");
    assert!(
        versions[0].base == Some(versions[0].version),
        "the first is a base"
    );
    let last = versions.last().unwrap().version;
    check_live_checksums(&mut store, &versions, &running.lines);
    // A recorder tells the process what it wrote (`memshadow top`'s recording lag)
    // while it records, and that nothing records it once it stopped.
    let recorded = || -> (u64, u64) {
        let f = finish(
            memshadow(d).args(["stats", &pid.to_string(), "--json"]),
            LIMIT,
        );
        assert!(f.status.success(), "{f:#?}");
        let stats: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
        (
            stats["recorded_version"].as_u64().unwrap(),
            stats["recorded_time_ms"].as_u64().unwrap(),
        )
    };
    assert_eq!(recorded(), (0, 0), "the recorder stopped");
    let lag_store = d.join("lag-store");
    let mut c = memshadow(d);
    c.args(["record", &pid.to_string(), "--to"])
        .arg(&lag_store)
        .args(["--every", "50"]);
    let recorder = Guard::spawn(&mut c, LIMIT);
    assert!(
        wait_until(Duration::from_secs(30), || recorded().0 >= 2),
        "the process never heard of a second recorded version"
    );
    let (v, ms) = recorded();
    let lag_versions = Store::open(lag_store.to_str().unwrap())
        .unwrap()
        .versions()
        .unwrap();
    let told = lag_versions.iter().find(|r| r.version == v);
    assert!(
        told.is_some_and(|r| ms > 0 && ms <= r.time_ms),
        "told version {v} taken at {ms}: {lag_versions:?}"
    );
    interrupt(recorder);
    assert_eq!(recorded(), (0, 0), "the recorder stopped");

    // The whole last version, restored, is the image a live read makes of a snapshot
    // taken now (nothing was written since "ready"; a recorded version itself may have
    // been let go, if a holder held it).
    let restored = d.join("restored.img");
    let live = d.join("live.img");
    let mut out = std::fs::File::create(&restored).unwrap();
    store.restore(last, &mut out).expect("restore");
    let snap = memshadow(d)
        .args(["snapshot", &pid.to_string()])
        .output()
        .unwrap();
    assert!(snap.status.success(), "{snap:?}");
    let now = String::from_utf8_lossy(&snap.stdout).trim().to_string();
    let mut c = memshadow(d);
    c.args(["image", &pid.to_string(), "--version", &now, "--out"])
        .arg(&live);
    let f = finish(&mut c, LIMIT);
    assert!(f.status.success(), "{f:#?}");
    assert_same_regions(&restored, &live);
    running.stop(Duration::from_secs(10));
}

/// Every buffer snap_exact reported as it left it ("live NAME ADDR LEN CHECKSUM") reads
/// the same from every version of the store: nothing wrote it after "ready".
fn check_live_checksums(
    store: &mut Store,
    versions: &[memshadow_store::VersionSummary],
    lines: &[String],
) {
    let mut checked = 0;
    for line in lines {
        let w: Vec<&str> = line.split_whitespace().collect();
        let ["live", name, addr, len, sum] = w[..] else {
            continue;
        };
        let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
        let len: u64 = len.parse().unwrap();
        let want = u64::from_str_radix(sum, 16).unwrap();
        for v in versions {
            let bytes = stored(store, v.version, addr, len);
            assert_eq!(
                fnv1a64(&bytes),
                want,
                "buffer {name} at version {} differs from what the program wrote",
                v.version
            );
        }
        checked += 1;
    }
    assert!(checked >= 4, "no live checksums in {lines:?}");
}

/// The two images hold the same regions with the same bytes (their headers may differ
/// in when they were written, and in the version when the program wrote nothing
/// between the two).
fn assert_same_regions(a: &Path, b: &Path) {
    let mut ra = ImageReader::new(std::fs::File::open(a).unwrap()).unwrap();
    let mut rb = ImageReader::new(std::fs::File::open(b).unwrap()).unwrap();
    let mut regions = 0;
    loop {
        let (x, y) = (ra.next_region().unwrap(), rb.next_region().unwrap());
        assert_eq!(x, y, "region {regions} differs");
        let Some(r) = x else { break };
        let mut left = r.len;
        let (mut bx, mut by) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        while left > 0 {
            let n = left.min(1 << 16) as usize;
            read_full(&mut ra, &mut bx[..n]);
            read_full(&mut rb, &mut by[..n]);
            assert!(
                bx[..n] == by[..n],
                "bytes differ in region {:#x} at {:#x}",
                r.start,
                r.start + (r.len - left)
            );
            left -= n as u64;
        }
        regions += 1;
    }
    assert!(regions > 0);
}

fn read_full<R: std::io::Read>(r: &mut ImageReader<R>, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read_bytes(&mut buf[got..]).unwrap();
        assert!(n > 0, "image cut short");
        got += n;
    }
}

/// snap_exact under the shim, past "ready": its buffers written, their checksums
/// printed ("live ..."), nothing written after.
fn exact_writer(dir: &Path) -> Running {
    Running::start(
        &c_program("snap_exact"),
        &[],
        dir,
        &[],
        Duration::from_secs(20),
        LIMIT,
    )
}

/// snap_consistency under the shim for at most `secs` seconds (killed after `limit`),
/// its chains printed and its writers running.
fn concurrent_writers(dir: &Path, secs: u64, limit: Duration) -> Running {
    Running::start(
        &c_program("snap_consistency"),
        &[&secs.to_string()],
        dir,
        &[],
        Duration::from_secs(10),
        limit,
    )
}

/// Every chain of snap_consistency in version `v`, read from the store.
fn chains_at(store: &mut Store, v: u64, chains: &[Vec<u64>]) -> Vec<Vec<u64>> {
    // The chains' pages are 16 runs of 16 adjacent pages: one read per run.
    let mut pages: Vec<u64> = chains.iter().flatten().copied().collect();
    pages.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some((_, end)) if *end == p => *end = p + 4096,
            _ => runs.push((p, p + 4096)),
        }
    }
    let blocks: Vec<(u64, Vec<u8>)> = runs
        .iter()
        .map(|&(s, e)| (s, stored(store, v, s, e - s)))
        .collect();
    let word = |a: u64| {
        let (s, b) = blocks
            .iter()
            .find(|(s, b)| *s <= a && a + 8 <= s + b.len() as u64)
            .unwrap();
        let off = (a - s) as usize;
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    };
    chains
        .iter()
        .map(|pages| pages.iter().map(|&a| word(a)).collect())
        .collect()
}

/// Checks every recorded version of snap_consistency: no chain torn, none going
/// backwards from one version to the next, and the writers' progress seen (a delta that
/// missed the pages written would restore them as they were: frozen, not torn). Returns
/// how many versions there were.
fn check_consistent(store_dir: &Path, chains: &[Vec<u64>]) -> usize {
    let mut store = Store::open(store_dir.to_str().unwrap()).expect("the store opens");
    let versions = store.versions().expect("versions");
    let mut prev: Option<(u64, Vec<Vec<u64>>)> = None;
    let mut unchanged = Vec::new();
    for s in &versions {
        let v = s.version;
        let values = chains_at(&mut store, v, chains);
        for (t, vals) in values.iter().enumerate() {
            if let Some(why) = chain_fault(vals) {
                panic!("recorded version {v} is torn: chain {t} {why}: {vals:?}");
            }
        }
        if let Some((pv, before)) = &prev {
            for (t, (now, was)) in values.iter().zip(before).enumerate() {
                assert!(
                    now.iter().zip(was).all(|(a, b)| a >= b),
                    "chain {t} went backwards from recorded version {pv} to {v}"
                );
            }
            if &values == before {
                unchanged.push(v);
            }
        }
        prev = Some((v, values));
    }
    // The writers never stop: at most a few versions may catch none of them between two
    // recordings.
    assert!(
        unchanged.len() * 10 <= versions.len(),
        "{} of {} recorded versions show no write since the one before (stale deltas?), the first: {:?}",
        unchanged.len(),
        versions.len(),
        &unchanged[..unchanged.len().min(8)]
    );
    versions.len()
}

#[test]
fn hundreds_of_recorded_versions_of_concurrent_writers_are_never_torn() {
    record_concurrent_writers(&[], 200);
}

/// Memory the program registered with a userfaultfd of its own cannot be registered with
/// the shim's asynchronous one, so no scan lists its writes: under holders every epoch
/// must count it whole (a delta without it would restore the chains frozen), and the
/// program's registration must survive.
#[test]
fn recorded_holder_versions_hold_writes_to_memory_the_program_registered_itself() {
    // 60 versions: each delta is the whole memory here (about 2.5 versions a second
    // alone on this machine, under 1 a second loaded: 200 did not fit in 160 s with the
    // machine busy).
    let (_dir, rest) = record_concurrent_writers(
        &[("MEMSHADOW_BACKEND", "holder"), ("SNAP_OWN_UFFD", "1")],
        60,
    );
    assert!(
        rest.contains("own userfaultfd still registered\n"),
        "{rest}"
    );
}

/// Half the block marked `MADV_WIPEONFORK` (zero in a holder): under holders that half
/// is kept on shadows beside them, on the synchronous descriptor, so no scan lists its
/// writes and every delta must count it whole; every chain crosses it and the half the
/// holders keep. The recorded versions are never torn.
#[test]
fn recorded_holder_versions_with_memory_kept_on_shadows_are_never_torn() {
    record_concurrent_writers(
        &[
            ("MEMSHADOW_BACKEND", "holder"),
            ("SNAP_MARK_HALF", "wipeonfork"),
        ],
        60,
    );
}

/// Under holders nothing traps: the deltas come from the pages the asynchronous
/// write-protect scans listed (shim/src/service/written.rs). A page they missed would
/// restore stale and tear a chain; pages they listed needlessly would make every delta
/// the whole memory.
#[test]
fn recorded_holder_versions_are_never_torn_and_take_only_the_pages_written() {
    let (dir, _) = record_concurrent_writers(&[("MEMSHADOW_BACKEND", "holder")], 200);
    let store_dir = dir.path().join("store");
    let mut store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let versions = store.versions().unwrap();
    let deltas: Vec<_> = versions
        .iter()
        .filter(|v| v.base != Some(v.version))
        .collect();
    let (changed, whole): (u64, u64) = deltas.iter().fold((0, 0), |(c, w), v| {
        (c + v.changed_pages, w + v.region_bytes / 4096)
    });
    assert!(
        !deltas.is_empty() && changed * 4 < whole,
        "{} deltas took {changed} of their {whole} pages",
        deltas.len()
    );
}

/// Holder children the process `pid` has alive now (from every thread's `children`).
fn live_children(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .map(|t| {
                    std::fs::read_to_string(t.path().join("children"))
                        .map_or(0, |c| c.split_whitespace().count())
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Once a version is in the store its holder goes (`recorded V`): the program's later
/// writes no longer copy pages for it. Four snapshots taken before recording keep four
/// holders alive (the live history); recording every 20 ms, once the first recorded
/// version is published at most two are alive at any moment (the version being
/// recorded, and the next being taken). A recorded version
/// read live says to read the store, and the store gives it.
#[test]
fn recorded_holder_versions_let_their_holders_go() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-let-go");
    let d = dir.path();
    let store_dir = d.join("store");
    let running = Running::start(
        &c_program("snap_consistency"),
        &["60"],
        d,
        &[("MEMSHADOW_BACKEND", "holder")],
        Duration::from_secs(10),
        Duration::from_secs(90),
    );
    let pid = running.pid();
    let chains = parse_chains(&running.lines);
    for _ in 0..4 {
        let out = memshadow(d)
            .args(["snapshot", &pid.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(
        live_children(pid),
        4,
        "four retained holder versions, four holders"
    );
    let mut c = memshadow(d);
    c.args(["record", &pid.to_string(), "--to"])
        .arg(&store_dir)
        .args(["--every", "20"]);
    let recorder = Guard::spawn(&mut c, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(50);
    let mut most = 0;
    while newest_published(&store_dir) < 40 {
        assert!(Instant::now() < deadline, "fewer than 40 versions in 50 s");
        // From the second version on (the first found the four taken before).
        if newest_published(&store_dir) >= 6 {
            most = most.max(live_children(pid));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    interrupt(recorder);
    assert!(most <= 2, "{most} holders alive at once while recording");
    let recorded = newest_published(&store_dir);
    let page = format!("{:#x}", chains[0][0]);
    let live = memshadow(d)
        .args([
            "read",
            "--version",
            &recorded.to_string(),
            &pid.to_string(),
            &page,
            "8",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&live.stderr);
    assert!(
        !live.status.success() && said.contains("recorder's store") && said.lines().count() == 1,
        "{live:?}"
    );
    let from_store = memshadow(d)
        .args(["read", "--version", &recorded.to_string()])
        .arg(&store_dir)
        .args([&page, "8"])
        .output()
        .unwrap();
    assert!(
        from_store.status.success() && from_store.stdout.len() == 8,
        "{from_store:?}"
    );
    let rest = running.stop(Duration::from_secs(10));
    assert!(rest.ends_with("stopped by SIGUSR1\n"), "{rest}");
    check_consistent(&store_dir, &chains);
}

/// Records `want` versions of snap_consistency's writers every 10 ms under `env`, checks
/// that none is torn and the store verifies; returns the temporary directory that holds
/// the store (`store`) and what the program printed after it was told to stop.
fn record_concurrent_writers(env: &[(&str, &str)], want: usize) -> (tempfile::TempDir, String) {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-torn");
    let d = dir.path();
    let store_dir = d.join("store");
    // The program outlives the recording; the recording has time for `want` versions
    // on a loaded machine (about 70 s on a quiet one; CI once needed over 100 s under
    // holders with the memory counted whole). What is tested is their consistency, not
    // the recorder's pace.
    let running = Running::start(
        &c_program("snap_consistency"),
        &["180"],
        d,
        env,
        Duration::from_secs(10),
        Duration::from_secs(210),
    );
    let pid = running.pid();
    let chains = parse_chains(&running.lines);
    let mut c = memshadow(d);
    c.args(["record", &pid.to_string(), "--to"])
        .arg(&store_dir)
        .args(["--every", "10", "--for", "160"]);
    let recorder = Guard::spawn(&mut c, Duration::from_secs(170));
    // Until the store holds `want` versions, then Ctrl-C the recorder.
    let manifests = store_dir.join("manifests");
    let deadline = Instant::now() + Duration::from_secs(160);
    while std::fs::read_dir(&manifests).map_or(0, |d| d.count()) < want {
        assert!(
            Instant::now() < deadline,
            "the recorder wrote fewer than {want} versions in 160 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    interrupt(recorder);
    let rest = running.stop(Duration::from_secs(10));
    assert!(rest.ends_with("stopped by SIGUSR1\n"), "{rest}");
    let n = check_consistent(&store_dir, &chains);
    assert!(n >= want, "{n} versions");
    let mut store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let versions = store.versions().unwrap();
    assert!(
        versions.iter().any(|v| v.base != Some(v.version)),
        "no deltas among {n} versions"
    );
    let report = store.verify().expect("verify runs");
    assert!(report.ok(), "{report:?}");
    (dir, rest)
}

/// The newest version published in the store at `dir` (0 if none), from its manifests'
/// names (a manifest is published whole, by rename, or not at all).
fn newest_published(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("manifests"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Waits (at most 60 s, else the test fails) until the store at `dir` has published a
/// version numbered `n` or later: tests wait for progress, not for a time.
fn wait_for_version(dir: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while newest_published(dir) < n {
        assert!(
            Instant::now() < deadline,
            "the recorder published no version {n} in 60 s (newest {})",
            newest_published(dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Interrupts (SIGINT) a `memshadow record` and expects it to end well.
fn interrupt(recorder: Guard) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(recorder.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(recorder.wait(Duration::from_secs(20)).success());
}

/// A random duration in `[lo, hi)` ms (from the clock: enough for picking moments).
fn random_ms(lo: u64, hi: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(lo + nanos % (hi - lo))
}

/// Every published version of the store restores, and the store verifies (leftovers of
/// an interrupted write are reported as such, not as damage).
fn assert_store_whole(store_dir: &Path, chains: &[Vec<u64>]) -> usize {
    let mut store = Store::open(store_dir.to_str().unwrap()).expect("the store opens");
    let report = store.verify().expect("verify runs");
    assert!(report.ok(), "after a kill: {report:?}");
    for v in store.versions().unwrap() {
        store
            .restore(v.version, std::io::sink())
            .unwrap_or_else(|e| panic!("version {} does not restore: {e}", v.version));
    }
    check_consistent(store_dir, chains)
}

#[test]
fn kill_9_of_the_program_or_the_recorder_leaves_a_store_that_restores() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-kill");
    let d = dir.path();
    for round in 0..3 {
        // The program killed while `memshadow run --record` records it.
        let store_dir = d.join(format!("prog-{round}"));
        let mut c = memshadow(d);
        c.args(["run", "-q", "--record"])
            .arg(&store_dir)
            .args(["--every", "10", "--"])
            .arg(c_program("snap_consistency"))
            .arg("60")
            .stdout(std::process::Stdio::piped());
        let mut run = Guard::spawn(&mut c, LIMIT);
        let mut out = std::io::BufReader::new(run.child().stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            assert!(
                std::io::BufRead::read_line(&mut out, &mut l).unwrap() > 0,
                "no ready: {lines:?}"
            );
            if l == "ready\n" {
                break;
            }
            lines.push(l.trim_end().to_string());
        }
        let chains = parse_chains(&lines);
        // Once something is published, at a random moment after.
        wait_for_version(&store_dir, 1);
        std::thread::sleep(random_ms(0, 1000));
        let program = program_pid(run.pid());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(program as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        run.wait(Duration::from_secs(20));
        let n = assert_store_whole(&store_dir, &chains);
        assert!(n >= 1, "round {round}: nothing recorded");

        // The recorder killed while it writes.
        let store_dir = d.join(format!("rec-{round}"));
        let running = Running::start(
            &c_program("snap_consistency"),
            &["60"],
            d,
            &[],
            Duration::from_secs(10),
            LIMIT,
        );
        let chains = parse_chains(&running.lines);
        let mut c = memshadow(d);
        c.args(["record", &running.pid().to_string(), "--to"])
            .arg(&store_dir)
            .args(["--every", "10"]);
        let recorder = Guard::spawn(&mut c, LIMIT);
        wait_for_version(&store_dir, 1);
        std::thread::sleep(random_ms(0, 1000));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(recorder.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        recorder.wait(Duration::from_secs(20));
        let before = assert_store_whole(&store_dir, &chains);
        // A new recorder carries on into the same store.
        let newest = newest_published(&store_dir);
        let mut c = memshadow(d);
        c.args(["record", &running.pid().to_string(), "--to"])
            .arg(&store_dir)
            .args(["--every", "20"]);
        let again = Guard::spawn(&mut c, LIMIT);
        wait_for_version(&store_dir, newest + 2);
        interrupt(again);
        let after = assert_store_whole(&store_dir, &chains);
        assert!(
            after > before,
            "round {round}: {before} then {after} versions"
        );
        running.stop(Duration::from_secs(10));
    }
}

/// The program `memshadow run` (pid `launcher`) started: its only child.
fn program_pid(launcher: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children"))
        .unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("memshadow run ({launcher}) has no child"))
}

#[path = "../../store/tests/common/weed.rs"]
mod weed;

#[test]
fn a_recording_into_s3_gives_back_what_the_program_wrote() {
    let _one = one_at_a_time();
    let server = weed::Weed::start();
    let target = server.target("recorded");
    let dir = temp_dir("rec-s3");
    let d = dir.path();
    let running = exact_writer(d);
    record_until(d, running.pid(), &target, 50, 2);
    let mut store = Store::open(&target).expect("the S3 store opens");
    let versions = store.versions().expect("versions");
    assert!(!versions.is_empty());
    check_live_checksums(&mut store, &versions, &running.lines);
    assert!(store.verify().unwrap().ok());
    running.stop(Duration::from_secs(10));
}

/// A tmpfs of `kib` KiB mounted on a new directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(kib: u64) -> SmallDisk {
        assert!(
            common::is_root(),
            "mounting a small tmpfs (a full disk) needs root"
        );
        let dir = temp_dir("rec-full");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount (util-linux)");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

#[test]
fn a_full_disk_stops_the_recording_with_one_line_and_the_program_carries_on() {
    let _one = one_at_a_time();
    let disk = SmallDisk::mount(256);
    let dir = temp_dir("rec-full-rt");
    let d = dir.path();
    // A program whose memory does not fit: 8 MiB of bytes that do not compress, written
    // again and again for 3 s (the recorder's first version fills the disk long before),
    // then it says it finished.
    let script = "import os, time\n\
                  b = bytearray(os.urandom(8 << 20))\n\
                  for i in range(150):\n    \
                      b[i * 4096:(i + 1) * 4096] = os.urandom(4096)\n    \
                      time.sleep(0.02)\n\
                  print('finished', sum(b[:4096]) >= 0)\n";
    let mut c = memshadow(d);
    c.args(["run", "-q", "--record"])
        .arg(disk.dir.path().join("store"))
        .args(["--every", "20", "--", "/usr/bin/python3", "-c", script]);
    let f = finish(&mut c, LIMIT);
    assert!(f.status.success(), "the program must carry on: {f:#?}");
    assert_eq!(f.stdout, "finished True\n", "{f:#?}");
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line about the recording: {f:#?}");
    assert!(
        lines[0].starts_with("memshadow: ") && lines[0].contains("No space left on device"),
        "{f:#?}"
    );
    // Nothing half-written is published: what the store holds verifies.
    let mut store = Store::open(disk.dir.path().join("store").to_str().unwrap()).unwrap();
    assert!(store.verify().unwrap().ok());
}

#[test]
fn keep_drops_old_versions_while_recording_and_the_rest_restore() {
    let _one = one_at_a_time();
    const KEEP: usize = 5;
    let dir = temp_dir("rec-keep");
    let d = dir.path();
    let store_dir = d.join("store");
    let running = concurrent_writers(d, 60, LIMIT);
    let chains = parse_chains(&running.lines);
    let mut c = memshadow(d);
    c.args(["record", &running.pid().to_string(), "--to"])
        .arg(&store_dir)
        .args(["--every", "10", "--keep", &KEEP.to_string()]);
    let recorder = Guard::spawn(&mut c, LIMIT);
    // Well past KEEP versions, then Ctrl-C.
    wait_for_version(&store_dir, 3 * KEEP as u64);
    interrupt(recorder);
    running.stop(Duration::from_secs(10));
    let mut store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let versions = store.versions().unwrap();
    assert_eq!(versions.len(), KEEP, "{versions:?}");
    // The recording went on well past KEEP versions: the oldest kept is not the first.
    assert!(versions[0].version > KEEP as u64, "{versions:?}");
    // The oldest kept version stands alone (its old chain went after a new base).
    assert_eq!(versions[0].base, Some(versions[0].version), "{versions:?}");
    assert_store_whole(&store_dir, &chains);
}

#[test]
fn a_version_given_up_for_lack_of_budget_is_skipped_and_the_recording_goes_on() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-skip");
    let d = dir.path();
    let store_dir = d.join("store");
    // 32 MiB that does not compress, recorded; then rewritten whole in one go (more than
    // the 8 MiB shadow budget holds: that snapshot is given up); then 2 s of quiet writes
    // (on a loaded machine writing the new 32 MiB base takes most of a second).
    let script = "import os, time\n\
                  b = bytearray(os.urandom(32 << 20))\n\
                  time.sleep(0.6)\n\
                  b[:] = os.urandom(32 << 20)\n\
                  for i in range(100):\n    \
                      b[i] = i\n    \
                      time.sleep(0.02)\n\
                  print('finished')\n";
    let mut c = memshadow(d);
    // On shadows: the budget running out mid-snapshot is theirs (holders give up older
    // versions instead; the default `auto` may choose either).
    c.env("MEMSHADOW_SHADOW_BUDGET_MB", "8")
        .env("MEMSHADOW_BACKEND", "shadow")
        .args(["run", "-q", "--record"])
        .arg(&store_dir)
        .args(["--every", "100", "--", "/usr/bin/python3", "-c", script]);
    let f = finish(&mut c, LIMIT);
    assert!(f.status.success(), "{f:#?}");
    assert_eq!(f.stdout, "finished\n", "{f:#?}");
    // The snapshot given up is the recorder's own (then it says so, once) or one the
    // version after it no longer finds its delta's start in: either way a new base.
    assert!(
        f.stderr.matches("a version could not be recorded").count() <= 1,
        "said once at most: {f:#?}"
    );
    assert!(f.stderr.contains("shadow budget exhausted"), "{f:#?}");
    assert!(!f.stderr.contains("recording stopped"), "{f:#?}");
    let mut store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let versions = store.versions().unwrap();
    // Recorded before the rewrite, and again after it, from a new base.
    let rebased = versions
        .iter()
        .skip(1)
        .position(|v| v.base == Some(v.version));
    let Some(i) = rebased else {
        panic!("no new base after the budget ran out: {versions:?}");
    };
    assert!(
        versions.len() > i + 2,
        "the recording stopped: {versions:?}"
    );
    assert!(store.verify().unwrap().ok());
}

#[test]
fn bad_recording_requests_get_one_line_and_a_nonzero_exit() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-bad");
    let d = dir.path();
    let me = std::process::id().to_string();
    let store = d.join("store");
    let store = store.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["record", &me, "--to", store],
            "not running under memshadow",
        ),
        (
            &["record", "1", "--to", store, "--every", "5"],
            "at least 10 ms",
        ),
        (&["record", "1", "--to", store, "--keep", "0"], "at least 1"),
        (
            &["record", "1", "--to", store, "--keep-for", "soon"],
            "not a duration",
        ),
        (
            &["record", "1", "--to", store, "--for", "-1"],
            "more than 0",
        ),
        (&["run", "--every", "100", "--", "true"], "go with --record"),
    ];
    for (args, says) in cases {
        let mut c = memshadow(d);
        c.args(*args);
        let f = finish(&mut c, LIMIT);
        assert!(!f.status.success(), "{args:?}: {f:#?}");
        assert_eq!(f.stderr.lines().count(), 1, "{args:?}: {f:#?}");
        assert!(
            f.stderr.starts_with("memshadow: ") && f.stderr.contains(says),
            "{args:?}: {f:#?}"
        );
    }
}

#[test]
fn a_store_of_another_process_is_refused() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-other");
    let d = dir.path();
    let store_dir = d.join("store");
    let first = concurrent_writers(d, 30, LIMIT);
    record_until(d, first.pid(), store_dir.to_str().unwrap(), 50, 1);
    first.stop(Duration::from_secs(10));
    let second = concurrent_writers(d, 30, LIMIT);
    let mut c = memshadow(d);
    c.args(["record", &second.pid().to_string(), "--to"])
        .arg(&store_dir)
        .args(["--for", "0.2"]);
    let f = finish(&mut c, LIMIT);
    assert_eq!(f.status.code(), Some(1), "{f:#?}");
    assert!(
        f.stderr.contains("holds a recording of process") && f.stderr.lines().count() == 1,
        "{f:#?}"
    );
    second.stop(Duration::from_secs(10));
}

/// The number after `key` in `line` (digits up to the next space).
fn number_after(line: &str, key: &str) -> u64 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
        + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key:?} in {line:?}"))
}

/// The recorder reads a version only once the program stops trapping (or its patience
/// per version runs out): a program that writes scattered pages flat out traps on most
/// writes after each snapshot, and the recorder gives way to it, and still records it
/// whole; a program that writes nothing never makes it wait.
#[test]
fn the_recorder_gives_way_to_a_trapping_program_and_not_to_a_quiet_one() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-courtesy");
    let d = dir.path();
    // 200 million 8-byte writes at random places of 64 MiB: 16,384 pages, each trapping
    // once after every snapshot; natively about 2 s (half of it the replay check).
    let args = ["64", "200"];
    let native = finish(Command::new(c_program("scatter_writer")).args(args), LIMIT);
    assert!(native.status.success(), "{native:#?}");
    let store_dir = d.join("store");
    let mut c = memshadow(d);
    // Shadows named: under `auto` its 128 MiB start on holder children, which take no
    // traps to give way to.
    c.env("MEMSHADOW_BACKEND", "shadow");
    c.args(["run", "--record"])
        .arg(&store_dir)
        .args(["--every", "300", "--"])
        .arg(c_program("scatter_writer"))
        .args(args);
    let f = finish(&mut c, LIMIT);
    assert!(f.status.success(), "{f:#?}");
    assert_eq!(f.stdout, native.stdout, "the program's output is unchanged");
    let line = f
        .stderr
        .lines()
        .find(|l| l.contains(" version(s) "))
        .unwrap_or_else(|| panic!("no summary of the recording: {f:#?}"));
    assert!(number_after(line, "recorded ") >= 2, "{line}");
    assert!(
        number_after(line, "gave way to the program's traps for ") > 0,
        "a program trapping flat out must make the recorder wait: {line}"
    );
    let mut store = Store::open(store_dir.to_str().unwrap()).unwrap();
    assert!(store.verify().unwrap().ok());

    // snap_exact past "ready" writes nothing: no traps, no waiting.
    let quiet_dir = temp_dir("rec-courtesy-quiet");
    let running = exact_writer(quiet_dir.path());
    let quiet_store = quiet_dir.path().join("store");
    let said = record_until(
        quiet_dir.path(),
        running.pid(),
        quiet_store.to_str().unwrap(),
        50,
        3,
    );
    running.stop(Duration::from_secs(10));
    let line = said
        .lines()
        .find(|l| l.contains(" version(s) "))
        .unwrap_or_else(|| panic!("no summary of the recording: {said}"));
    assert_eq!(
        number_after(line, "gave way to the program's traps for "),
        0,
        "{line}"
    );
}

/// `memshadow run --record` of a command that runs exec (a shell's `exec`, `env`, a
/// wrapper script as pyenv's `python3` is): each program the process becomes is
/// recorded in turn, its versions numbered on after the last one's, the first of each a
/// base; the recording does not stop at the exec (it did: "does not answer ...
/// Connection refused", or "version 1 is not newer than the store's newest").
#[test]
fn a_process_that_runs_exec_is_recorded_program_after_program() {
    let _one = one_at_a_time();
    let dir = temp_dir("rec-exec");
    let d = dir.path();
    let store_dir = d.join("store");
    let target = store_dir.to_str().unwrap();
    let writer = c_program("follow_writer");
    let script = format!(
        "sleep 0.5; exec env MEMSHADOW_TEST=1 {} 16 64 2",
        writer.display()
    );
    let mut c = memshadow(d);
    c.args([
        "run", "--record", target, "--every", "100", "--", "sh", "-c",
    ])
    .arg(&script);
    let f = finish(&mut c, LIMIT);
    assert!(f.status.success(), "{f:#?}");
    assert!(!f.stderr.contains("recording stopped"), "{f:#?}");
    let mut store = Store::open(target).unwrap();
    let versions = store.versions().unwrap();
    let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let (first, last) = (&versions[0], versions.last().unwrap());
    // The shell's memory first, the writer's 16 MiB buffer last.
    assert!(
        first.region_bytes < 8 << 20,
        "version {} (the shell) holds {} bytes",
        first.version,
        first.region_bytes
    );
    assert!(
        last.region_bytes >= 16 << 20,
        "version {} (the writer) holds {} bytes",
        last.version,
        last.region_bytes
    );
    let report = store.verify().unwrap();
    assert!(report.ok(), "{report:?}");
    for v in &numbers {
        let mut sink = std::io::sink();
        store
            .restore(*v, &mut sink)
            .unwrap_or_else(|e| panic!("version {v} does not restore: {e}"));
    }
}
