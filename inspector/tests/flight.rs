//! The flight recorder: `memshadow run --record` keeps the memory of a program that dies
//! of SIGSEGV, SIGBUS, SIGABRT, SIGFPE or SIGILL as the store's last version, marked in
//! `memshadow log`, and opens in gdb through `memshadow core --version last`.
//!
//! `c-tests/flight_crash.c` builds a linked list on the heap (global `head`, global
//! `counter` = its length) 600 ms after it starts, then crashes; it is recorded with
//! `--every 1000`, so no periodic version holds the list: only the last snapshot taken as
//! it dies can. Its exit status must be the one it has without the shim. A program's own
//! handler runs and decides (exit 3); a forked child's crash does not wait for the
//! parent's recorder; without `--record` the shim takes no signal at all.
//!
//! Needs `cargo build --release --workspace` first, a C compiler, gdb (Debian package
//! gdb) and userfaultfd (root). Every process started has a time limit.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{c_program, clean_env_in, finish, memshadow_bin, temp_dir, Finished};

/// Well under the shim's 30 s wait for the recorder: a crash that waited it out fails.
const LIMIT: Duration = Duration::from_secs(25);
const NODES: i64 = 50;

fn memshadow(dir: &Path) -> Command {
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, dir);
    c
}

/// gdb, or a failure naming the package.
fn gdb() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join("gdb");
        if p.is_file() {
            return p;
        }
    }
    panic!("gdb is not installed: install gdb (Debian package gdb)");
}

/// The program run without the shim.
fn plain(dir: &Path, args: &[&str]) -> Finished {
    let mut c = Command::new(c_program("flight_crash"));
    clean_env_in(&mut c, dir);
    c.args(args).current_dir(dir);
    finish(&mut c, LIMIT)
}

/// The program under `memshadow run --record STORE --every 1000`.
fn recorded(dir: &Path, store: &Path, args: &[&str]) -> Finished {
    finish(
        memshadow(dir)
            .current_dir(dir)
            .args(["run", "--record"])
            .arg(store)
            .args(["--every", "1000", "--"])
            .arg(c_program("flight_crash"))
            .args(args),
        LIMIT,
    )
}

/// `memshadow log STORE --json`: each version and its crash mark (None: none).
fn log_json(dir: &Path, store: &Path) -> Vec<(u64, Option<String>)> {
    let f = finish(memshadow(dir).args(["log", "--json"]).arg(store), LIMIT);
    assert!(f.status.success(), "{f:#?}");
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_u64().unwrap(),
                r["crash"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Same death as without the shim: the signal, and whether a core was dumped.
fn assert_same_death(plain: &Finished, shimmed: &Finished, sig: i32) {
    assert_eq!(plain.status.signal(), Some(sig), "plain run: {plain:#?}");
    assert_eq!(
        (shimmed.status.signal(), shimmed.status.core_dumped()),
        (plain.status.signal(), plain.status.core_dumped()),
        "under the shim: {shimmed:#?}\nwithout: {plain:#?}"
    );
}

/// The crash: marked as the last version, and only it.
fn assert_last_is_crash(dir: &Path, store: &Path, name: &str) {
    let log = log_json(dir, store);
    let (last, mark) = log.last().cloned().expect("no version recorded");
    assert_eq!(mark.as_deref(), Some(name), "log: {log:?}");
    assert!(
        log.iter().all(|(v, m)| *v == last || m.is_none()),
        "only the last version is a crash: {log:?}"
    );
    // The table says it too.
    let table = finish(memshadow(dir).arg("log").arg(store), LIMIT);
    let row = table
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&last.to_string()))
        .unwrap_or_else(|| panic!("no row for version {last}: {table:#?}"));
    assert!(row.ends_with(&format!("crash: {name}")), "{row}");
}

#[test]
fn a_crash_is_the_last_version_and_opens_in_gdb_as_it_was() {
    let gdb = gdb();
    let dir = temp_dir("flight-segv");
    let n = NODES.to_string();
    let plain = plain(dir.path(), &["segv", &n]);
    let store = dir.path().join("store");
    let run = recorded(dir.path(), &store, &["segv", &n]);
    assert_same_death(&plain, &run, libc::SIGSEGV);
    assert!(run.stdout.contains(&format!("built {NODES}")), "{run:#?}");
    assert!(!run.stderr.contains("could not"), "{run:#?}");
    assert!(
        run.stderr.contains("taken as the program died of SIGSEGV"),
        "{run:#?}"
    );
    assert_last_is_crash(dir.path(), &store, "SIGSEGV");
    let core = dir.path().join("crash.core");
    let made = finish(
        memshadow(dir.path())
            .arg("core")
            .arg(&store)
            .args(["--version", "last", "--out"])
            .arg(&core),
        LIMIT,
    );
    assert!(made.status.success(), "{made:#?}");
    let script = dir.path().join("list.gdb");
    std::fs::write(
        &script,
        "print counter\nprint head->value\nset $n = head\nset $len = 0\nset $ok = 1\n\
         while $n != 0\n  if $n->value != counter - $len\n    set $ok = 0\n  end\n  \
         set $len = $len + 1\n  set $n = $n->next\nend\nprintf \"LIST len=%ld ok=%d\\n\", $len, $ok\n",
    )
    .unwrap();
    let seen = finish(
        Command::new(gdb)
            .args(["-batch", "-nx", "-x"])
            .arg(&script)
            .arg(c_program("flight_crash"))
            .arg(&core),
        LIMIT,
    );
    assert!(seen.status.success(), "{seen:#?}");
    // All the nodes, the counter their number: the heap as it was at the crash.
    assert!(
        seen.stdout.contains(&format!("$1 = {NODES}\n")),
        "{seen:#?}"
    );
    assert!(
        seen.stdout.contains(&format!("$2 = {NODES}\n")),
        "{seen:#?}"
    );
    assert!(
        seen.stdout.contains(&format!("LIST len={NODES} ok=1")),
        "{seen:#?}"
    );
}

#[test]
fn abort_fpe_ill_bus_and_a_threaded_crash_are_recorded_and_die_as_without_the_shim() {
    for (mode, sig, name) in [
        ("abort", libc::SIGABRT, "SIGABRT"),
        ("fpe", libc::SIGFPE, "SIGFPE"),
        ("ill", libc::SIGILL, "SIGILL"),
        ("bus", libc::SIGBUS, "SIGBUS"),
        // Another thread writes the heap flat out while the crashing one waits.
        ("thread", libc::SIGSEGV, "SIGSEGV"),
    ] {
        let dir = temp_dir(&format!("flight-{mode}"));
        let plain = plain(dir.path(), &[mode, "5"]);
        let store = dir.path().join("store");
        let run = recorded(dir.path(), &store, &[mode, "5"]);
        assert_same_death(&plain, &run, sig);
        assert!(!run.stderr.contains("could not"), "{run:#?}");
        assert_last_is_crash(dir.path(), &store, name);
    }
}

#[test]
fn the_program_handler_runs_first_and_decides() {
    let dir = temp_dir("flight-handler");
    let plain = plain(dir.path(), &["handler", "5"]);
    assert_eq!(plain.status.code(), Some(3), "{plain:#?}");
    let store = dir.path().join("store");
    let run = recorded(dir.path(), &store, &["handler", "5"]);
    // signal() returned the program's previous handler (not the shim's), sigaction
    // showed the program's new one (else it exits 4), and it ran: exit 3.
    assert_eq!(run.status.code(), Some(3), "{run:#?}");
    assert_eq!(run.stdout, plain.stdout, "{run:#?}");
    assert!(run.stdout.contains("old=SIG_DFL\n") && run.stdout.contains("handled\n"));
    let log = log_json(dir.path(), &store);
    assert!(log.iter().all(|(_, m)| m.is_none()), "no crash: {log:?}");
}

#[test]
fn a_forked_child_crash_does_not_wait_for_the_parent_recorder() {
    let dir = temp_dir("flight-fork");
    let store = dir.path().join("store");
    // A child that waited for a recorder would take the shim's 30 s: past LIMIT.
    let run = recorded(dir.path(), &store, &["fork", "5"]);
    assert_eq!(run.status.code(), Some(0), "{run:#?}");
    assert!(run.stdout.contains("child SIGSEGV\n"), "{run:#?}");
    let log = log_json(dir.path(), &store);
    assert!(log.iter().all(|(_, m)| m.is_none()), "no crash: {log:?}");
}

/// Whether signal `sig` is set in a `SigCgt:` line's hex mask.
fn caught(stdout: &str, sig: i32) -> bool {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .unwrap_or_else(|| panic!("no SigCgt line: {stdout}"));
    let mask = u64::from_str_radix(line.trim(), 16).unwrap();
    mask & (1 << (sig - 1)) != 0
}

#[test]
fn only_record_takes_the_signals_and_the_program_sees_its_own_disposition() {
    let dir = temp_dir("flight-query");
    let program = c_program("flight_crash");
    let untracked = finish(
        memshadow(dir.path())
            .args(["run", "--quiet", "--"])
            .arg(&program)
            .arg("query"),
        LIMIT,
    );
    assert_eq!(untracked.status.code(), Some(0), "{untracked:#?}");
    assert!(
        untracked.stdout.contains("SIGSEGV=SIG_DFL\n"),
        "{untracked:#?}"
    );
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGABRT,
        libc::SIGFPE,
        libc::SIGILL,
    ] {
        assert!(
            !caught(&untracked.stdout, sig),
            "signal {sig}: {untracked:#?}"
        );
    }
    // Under --record the kernel's disposition is the shim's, the program's view its own.
    let store = dir.path().join("store");
    let run = recorded(dir.path(), &store, &["query"]);
    assert_eq!(run.status.code(), Some(0), "{run:#?}");
    assert!(run.stdout.contains("SIGSEGV=SIG_DFL\n"), "{run:#?}");
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGABRT,
        libc::SIGFPE,
        libc::SIGILL,
    ] {
        assert!(caught(&run.stdout, sig), "signal {sig}: {run:#?}");
    }
    assert!(!caught(&run.stdout, libc::SIGINT), "{run:#?}");
}
