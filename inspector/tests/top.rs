//! `memshadow top` driven in a real terminal: tmux (on a socket of the test's own, its
//! server killed at the end) runs it against a shimmed C program; the test reads the
//! pane with `capture-pane`, presses keys with `send-keys` and checks the effect through
//! `memshadow stats --json`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::shimmed::Running;
use common::{c_program, clean_env_in, finish, memshadow_bin, temp_dir, wait_until};

/// How long a pane may take to show what is expected (top refreshes every second).
const SHOW_WITHIN: Duration = Duration::from_secs(15);

/// tmux, or a failure naming its package.
fn tmux_bin() -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("tmux");
        if p.is_file() {
            return p;
        }
    }
    panic!("install tmux (Debian package tmux): these tests drive `memshadow top` in it; CI installs it");
}

/// A tmux server of this test alone (its own socket), killed with every pane's
/// programs when dropped.
struct Tmux {
    bin: PathBuf,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        let dir = temp_dir("tmux");
        Tmux {
            bin: tmux_bin(),
            socket: dir.path().join("sock"),
            _dir: dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> String {
        let mut c = Command::new(&self.bin);
        c.arg("-S").arg(&self.socket).args(args);
        c.env_remove("TMUX").stdin(Stdio::null());
        let done = finish(&mut c, Duration::from_secs(20));
        assert!(done.status.success(), "tmux {args:?} failed: {done:#?}");
        done.stdout
    }

    /// Opens a session `name` of `width` x `height` running `memshadow top ARGS` with
    /// `MEMSHADOW_DIR=dir`; when top ends the pane says `top exited CODE` and stays.
    fn start_top(&self, name: &str, width: u16, height: u16, dir: &Path, args: &str) {
        let script = format!(
            "env -u LD_PRELOAD MEMSHADOW_DIR='{}' TERM=xterm-256color '{}' top {args}; echo \"top exited $?\"; sleep 120",
            dir.display(),
            memshadow_bin().display()
        );
        self.cmd(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "sh",
            "-c",
            &script,
        ]);
    }

    fn pane(&self, name: &str) -> String {
        self.cmd(&["capture-pane", "-p", "-t", name])
    }

    /// Waits until the pane shows `text`; panics with the pane when it does not.
    fn expect(&self, name: &str, text: &str) -> String {
        let mut last = String::new();
        if wait_until(SHOW_WITHIN, || {
            last = self.pane(name);
            last.contains(text)
        }) {
            return last;
        }
        panic!(
            "the pane of {name} did not show {text:?} within {:.0} s; it shows:\n{last}",
            SHOW_WITHIN.as_secs_f64()
        );
    }

    fn keys(&self, name: &str, keys: &str) {
        self.cmd(&["send-keys", "-t", name, keys]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn epochs(dir: &Path, pid: u32) -> u64 {
    let mut c = Command::new(memshadow_bin());
    c.args(["stats", &pid.to_string(), "--json"]);
    clean_env_in(&mut c, dir);
    let done = finish(&mut c, Duration::from_secs(20));
    assert!(done.status.success(), "stats failed: {done:#?}");
    let v: serde_json::Value = serde_json::from_str(&done.stdout).expect("stats --json");
    v["epochs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epochs: {v}"))
}

#[test]
fn top_shows_the_process_takes_a_snapshot_on_s_and_quits_on_q() {
    let tmux = Tmux::new();
    let dir = temp_dir("top");
    // Four writer threads, snapshots on request only: `s` is the only source of one.
    let prog = Running::start(
        &c_program("snap_consistency"),
        &["90"],
        dir.path(),
        &[],
        Duration::from_secs(30),
        Duration::from_secs(120),
    );
    let pid = prog.pid();
    tmux.start_top("all", 120, 40, dir.path(), "");
    tmux.expect("all", "snap_consistency");
    // A capture can land while top is still writing its first frame (the table drawn,
    // the detail panel below not yet): each part is waited for, not read off one capture.
    for heading in [
        "SNAP/S", "TRAPS/S", "VERSION", "shadow", "budget", "latency",
    ] {
        tmux.expect("all", heading);
    }
    tmux.expect("all", &pid.to_string());
    assert_eq!(epochs(dir.path(), pid), 0, "a snapshot before `s`");

    tmux.keys("all", "s");
    tmux.expect("all", &format!("snapshot of process {pid}: version 1"));
    assert_eq!(epochs(dir.path(), pid), 1, "`s` took one snapshot");
    // The next refresh shows it in the counters too.
    tmux.expect("all", "1 taken");

    tmux.keys("all", "q");
    tmux.expect("all", "top exited 0");
    drop(prog);
}

#[test]
fn top_of_one_pid_and_a_small_terminal_and_nothing_running() {
    let tmux = Tmux::new();
    let dir = temp_dir("top");
    let prog = Running::start(
        &c_program("snap_consistency"),
        &["90"],
        dir.path(),
        &[],
        Duration::from_secs(30),
        Duration::from_secs(120),
    );
    let pid = prog.pid();

    tmux.start_top("one", 100, 30, dir.path(), &pid.to_string());
    tmux.expect("one", &format!("process {pid}"));
    tmux.expect("one", "snap_consistency");

    tmux.start_top("small", 40, 8, dir.path(), "");
    tmux.expect("small", "terminal too small");
    tmux.keys("small", "Escape");
    tmux.expect("small", "top exited 0");

    drop(prog);
    let empty = temp_dir("top-empty");
    tmux.start_top("none", 100, 30, empty.path(), "");
    tmux.expect("none", "no processes are running under memshadow");
    tmux.keys("none", "q");
    tmux.expect("none", "top exited 0");
}

#[test]
fn top_without_a_terminal_says_so_in_one_line() {
    let dir = temp_dir("top");
    let mut c = Command::new(memshadow_bin());
    c.arg("top");
    clean_env_in(&mut c, dir.path());
    let done = finish(&mut c, Duration::from_secs(20));
    assert_eq!(done.status.code(), Some(2), "{done:#?}");
    assert!(done.stderr_line().contains("needs a terminal"), "{done:#?}");
}
