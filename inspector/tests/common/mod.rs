//! Helpers shared by the integration tests (`cli.rs`, `snapshots.rs`, `c_programs.rs`,
//! `real_programs.rs`): locating the build, running programs natively, under the shim
//! and through `memshadow`, and comparing what they did.
//!
//! Every program a test starts has a time limit and runs in a process group of its own:
//! [`run_with_timeout`] (and [`finish`] and [`Prog`], which use it) kills the whole group
//! when the time is up and panics naming the command; a background program started with
//! [`Guard::spawn`] has its group killed when the guard is dropped (also when the test
//! panics) or, by a watchdog thread, when its time limit passes first.

// `mod common;` compiles this file into each test binary separately, and each uses only
// a subset of these helpers: without this, every binary warns about the ones it does not
// use.
#![allow(dead_code)]

pub mod real;
pub mod shimmed;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use wait_timeout::ChildExt;

/// Time limit of one program run unless a test says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

const BUILD_FIRST: &str = "build first: cargo build --release --workspace";

/// The workspace root: the parent of this package's directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("the inspector package lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` if set, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// `target/release/memshadow`.
///
/// Cargo builds the package's binary before its integration tests and names it in
/// `CARGO_BIN_EXE_memshadow` (`target/release/memshadow` under `--release`), so this is
/// always the binary of the sources under test, never a stale one.
pub fn memshadow_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_memshadow"));
    assert!(bin.is_file(), "{} is missing: {BUILD_FIRST}", bin.display());
    bin
}

/// `target/release/libmemshadow.so`, canonicalized (as `memshadow run` names the
/// library it finds beside itself).
pub fn shim_lib() -> PathBuf {
    let lib = target_dir().join("release").join("libmemshadow.so");
    assert!(lib.is_file(), "{} is missing: {BUILD_FIRST}", lib.display());
    warn_if_stale(&lib);
    lib.canonicalize()
        .unwrap_or_else(|e| panic!("cannot canonicalize {}: {e}", lib.display()))
}

/// Says so (once) when the library is older than the shim's sources: the tests would
/// then exercise an old shim.
fn warn_if_stale(lib: &Path) {
    static WARNED: Mutex<bool> = Mutex::new(false);
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if *warned {
        return;
    }
    *warned = true;
    let Some(lib_time) = mtime(lib) else { return };
    let root = workspace_root();
    let newest = [root.join("shim/src"), root.join("format/src")]
        .iter()
        .filter_map(|d| newest_mtime(d))
        .max();
    if newest.is_some_and(|t| t > lib_time) {
        eprintln!(
            "warning: {} is older than the shim's sources; rebuild with: cargo build --release --workspace",
            lib.display()
        );
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Newest modification time of the files under `dir`, recursively.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            mtime(&path)
        };
        newest = newest.max(t);
    }
    newest
}

/// The directory of the C test programs' sources.
pub fn c_tests_dir() -> PathBuf {
    workspace_root().join("c-tests")
}

/// A fresh temporary directory, removed when dropped. Kept short (under the system's
/// temporary directory) so that socket paths inside it stay well below `sockaddr_un`'s
/// limit.
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ms-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

// ---------------------------------------------------------------------------------------
// Building the C programs
// ---------------------------------------------------------------------------------------

/// Flags every C program and library is compiled with.
const CFLAGS: [&str; 7] = [
    "-std=gnu11",
    "-O1",
    "-g",
    "-pthread",
    "-Wall",
    "-Werror",
    "-fno-omit-frame-pointer",
];

/// C build products of this test binary, by output file name.
static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Where this test binary keeps its C build products: `target/c-tests/<test name>/`.
/// Each test binary has its own directory, so concurrently running binaries never race
/// on one output file.
pub fn c_build_dir() -> PathBuf {
    let dir = target_dir().join("c-tests").join(env!("CARGO_CRATE_NAME"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `c-tests/NAME.c` compiled to an executable (with `-ldl` for `dlopen_lib`, which also
/// gets `libplugin.so` built beside it). Built once per test binary; reused across runs
/// while it is newer than its sources and than the test binary itself.
pub fn c_program(name: &str) -> PathBuf {
    if name == "dlopen_lib" {
        c_library("libplugin");
    }
    let libs: &[&str] = if name == "dlopen_lib" { &["-ldl"] } else { &[] };
    build_c(name, name, &[], libs)
}

/// `c-tests/NAME.c` compiled with `-shared -fPIC` to `NAME.so` in [`c_build_dir`].
pub fn c_library(name: &str) -> PathBuf {
    build_c(name, &format!("{name}.so"), &["-shared", "-fPIC"], &[])
}

fn build_c(name: &str, output: &str, extra: &[&str], libs: &[&str]) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(output) {
        return p.clone();
    }
    let src_dir = c_tests_dir();
    let source = src_dir.join(format!("{name}.c"));
    assert!(source.is_file(), "no C source {}", source.display());
    let out = c_build_dir().join(output);
    if !up_to_date(&out, &source) {
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let mut cmd = Command::new("cc");
        clean_env(&mut cmd);
        cmd.args(CFLAGS)
            .args(extra)
            .arg("-I")
            .arg(&src_dir)
            .arg("-I")
            .arg(src_dir.join("include"))
            .arg("-o")
            .arg(&tmp)
            .arg(&source)
            .args(libs);
        let o = run_with_timeout(&mut cmd, Duration::from_secs(120));
        assert!(
            o.status.success(),
            "compiling {} failed ({}):\n{}{}",
            source.display(),
            describe_status(o.status),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::rename(&tmp, &out)
            .unwrap_or_else(|e| panic!("cannot move {} into place: {e}", tmp.display()));
    }
    built.insert(output.to_string(), out.clone());
    out
}

/// True when `out` exists and is newer than the C sources and headers and than the
/// running test binary (whose flags may have changed).
fn up_to_date(out: &Path, source: &Path) -> bool {
    let Some(out_time) = mtime(out) else {
        return false;
    };
    let dir = c_tests_dir();
    let mut inputs = vec![
        mtime(source),
        newest_header(&dir),
        newest_header(&dir.join("include")),
    ];
    if let Ok(exe) = std::env::current_exe() {
        inputs.push(mtime(&exe));
    }
    inputs.into_iter().flatten().all(|t| t < out_time)
}

fn newest_header(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .filter_map(|p| mtime(&p))
        .max()
}

// ---------------------------------------------------------------------------------------
// Running programs
// ---------------------------------------------------------------------------------------

/// Runs `cmd` with standard input from `/dev/null`, capturing stdout and stderr.
///
/// The child runs in a new process group. If it has not exited after `timeout`, the whole
/// group is killed with SIGKILL and this panics naming the command. It also panics when
/// the program exits but processes it left behind keep its output pipes open.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_inner(cmd, None, timeout, &String::new)
}

/// [`run_with_timeout`] with `input` written to the program's standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    run_inner(cmd, Some(input.to_vec()), timeout, &String::new)
}

/// [`run_with_timeout`] (with `input` on standard input when given) that, when the
/// time is up, calls `on_timeout` before killing the group and adds what it returns
/// (for instance the live statistics of the shimmed processes) to the panic message.
pub fn run_explained(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
    on_timeout: &dyn Fn() -> String,
) -> Output {
    run_inner(cmd, input.map(<[u8]>::to_vec), timeout, on_timeout)
}

fn run_inner(
    cmd: &mut Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
    on_timeout: &dyn Fn() -> String,
) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pgid = pgid_of(&child);

    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A program that exits without reading its input closes the pipe: not an error.
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let stdout = reader(child.stdout.take().expect("stdout is piped"));
    let stderr = reader(child.stderr.take().expect("stderr is piped"));

    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let context = on_timeout();
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            let out = stdout
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            let err = stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!(
                "timed out after {:.0} s, killed its process group: {what}\n{context}--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
                timeout.as_secs_f64(),
                tail(&out),
                tail(&err)
            );
        }
        Err(e) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            panic!("cannot wait for {what}: {e}");
        }
    };

    // The pipes close when every process holding them has exited.
    let grace = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(5));
    let deadline = Instant::now() + grace;
    let left = |d: Instant| d.saturating_duration_since(Instant::now());
    let out = stdout.recv_timeout(left(deadline));
    let err = stderr.recv_timeout(left(deadline));
    match (out, err) {
        (Ok(stdout), Ok(stderr)) => Output {
            status,
            stdout,
            stderr,
        },
        _ => {
            let _ = killpg(pgid, Signal::SIGKILL);
            panic!(
                "{what} exited ({}) but processes it started still hold its stdout/stderr open after {:.0} s; killed its process group",
                describe_status(status),
                grace.as_secs_f64()
            );
        }
    }
}

/// Reads `r` to its end on a thread of its own; the bytes arrive on the channel.
fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// The last few KiB of `bytes`, as text.
pub fn tail(bytes: &[u8]) -> String {
    const MAX: usize = 4000;
    let s = String::from_utf8_lossy(bytes);
    if s.len() <= MAX {
        return s.into_owned();
    }
    let mut cut = s.len() - MAX;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[... {cut} bytes cut ...]{}", &s[cut..])
}

/// "exit 3" or "signal 9".
pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// Removes everything from the inherited environment that would change how a program
/// runs under test: any `LD_PRELOAD`, every `MEMSHADOW_*` variable; and sets `LC_ALL=C`.
/// The exceptions: `MEMSHADOW_TEST_BACKEND` (if set when the tests run) becomes the
/// programs' `MEMSHADOW_BACKEND`, so a suite runs under another snapshot backend
/// (`MEMSHADOW_TEST_BACKEND=holder cargo test ...`), and `MEMSHADOW_TEST_HOLDER_COPY`
/// their `MEMSHADOW_HOLDER_COPY`; unset, the shim's defaults.
pub fn clean_env(cmd: &mut Command) {
    cmd.env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MEMSHADOW_") {
            cmd.env_remove(&k);
        }
    }
    if let Some(b) = test_backend() {
        cmd.env("MEMSHADOW_BACKEND", b);
    }
    if let Some(c) = std::env::var("MEMSHADOW_TEST_HOLDER_COPY")
        .ok()
        .filter(|c| !c.is_empty())
    {
        cmd.env("MEMSHADOW_HOLDER_COPY", c);
    }
    cmd.env("LC_ALL", "C");
}

/// `MEMSHADOW_TEST_BACKEND`, the backend the shimmed programs of this test run use.
pub fn test_backend() -> Option<String> {
    std::env::var("MEMSHADOW_TEST_BACKEND")
        .ok()
        .filter(|b| !b.is_empty())
}

/// [`clean_env`] plus `MEMSHADOW_DIR=dir`: the command sees only the run-time
/// directory of its own test.
pub fn clean_env_in(cmd: &mut Command, dir: &Path) {
    clean_env(cmd);
    cmd.env("MEMSHADOW_DIR", dir);
}

/// Starts `program` with the shim preloaded (as a shell would with LD_PRELOAD, without
/// `memshadow run`) and `MEMSHADOW_DIR=dir`, killed after `limit`, and waits for its
/// control socket.
pub fn spawn_shimmed(dir: &Path, limit: Duration, program: &[&str]) -> Guard {
    let mut c = Command::new(program[0]);
    c.args(&program[1..]);
    clean_env_in(&mut c, dir);
    c.env("LD_PRELOAD", shim_lib())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let guard = Guard::spawn(&mut c, limit);
    assert!(
        wait_until(Duration::from_secs(10), || published(dir, guard.pid())),
        "the shim did not publish {} and its stats page for {program:?}",
        memshadow_format::paths::socket_path(dir, guard.pid()).display()
    );
    guard
}

/// Whether the shim of process `pid` has published itself in `dir`: its control socket,
/// then its stats page (made last: clients find a process by it), complete (the page
/// exists a moment before its header is written, and a reader skips it meanwhile).
pub fn published(dir: &Path, pid: u32) -> bool {
    memshadow_format::paths::socket_path(dir, pid).exists()
        && std::fs::read(memshadow_format::paths::stats_path(dir, pid))
            .is_ok_and(|b| memshadow_format::stats::StatsRecord::decode(&b).is_ok())
}

/// What a finished program left, as text (for readable `{:#?}` in assertion messages).
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The one line `memshadow` prints on stderr when it fails, which starts with
    /// "memshadow: "; panics when stderr is anything else.
    pub fn stderr_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:#?}");
        assert!(
            lines[0].starts_with("memshadow: "),
            "stderr does not start with \"memshadow: \": {self:#?}"
        );
        lines[0]
    }
}

impl From<Output> for Finished {
    fn from(o: Output) -> Self {
        Finished {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// `memshadow stats --json PID` for the process `pid` whose run-time directory is `dir`,
/// within `limit`: its statistics, parsed (a reply that is not JSON fails the test).
pub fn stats_json(dir: &Path, pid: u32, limit: Duration) -> Value {
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, dir);
    let f = finish(c.args(["stats", "--json", &pid.to_string()]), limit);
    serde_json::from_str(&f.stdout).unwrap_or_else(|e| panic!("stats JSON: {e}: {f:#?}"))
}

/// [`run_with_timeout`] with the output as text.
pub fn finish(cmd: &mut Command, limit: Duration) -> Finished {
    run_with_timeout(cmd, limit).into()
}

/// The process group a child started with `process_group(0)` leads.
fn pgid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"))
}

/// A program running in the background while a test talks to it.
///
/// It runs in a process group of its own, with standard input from `/dev/null`. Its
/// group is killed with SIGKILL when the guard is dropped unless [`Guard::wait`] reaped
/// it, and by a watchdog thread when the time limit given to [`Guard::spawn`] passes
/// first (which also unblocks a test stuck reading the program's output).
pub struct Guard {
    child: Option<Child>,
    what: String,
    limit: Duration,
    /// Dropping it (with the guard) stops the watchdog.
    disarm: mpsc::Sender<()>,
    /// Set by the watchdog when it killed the group.
    expired: Arc<AtomicBool>,
}

impl Guard {
    /// Starts `cmd`, to be killed after `limit` at the latest.
    pub fn spawn(cmd: &mut Command, limit: Duration) -> Self {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let pgid = pgid_of(&child);
        let (disarm, disarmed) = mpsc::channel::<()>();
        let expired = Arc::new(AtomicBool::new(false));
        let (flag, name) = (Arc::clone(&expired), what.clone());
        thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                let _ = killpg(pgid, Signal::SIGKILL);
                eprintln!(
                    "timed out after {:.0} s, killed its process group: {name}",
                    limit.as_secs_f64()
                );
            }
        });
        Guard {
            child: Some(child),
            what,
            limit,
            disarm,
            expired,
        }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the child has not been reaped")
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the child has not been reaped")
            .id()
    }

    /// Waits at most `limit` (and at most the guard's own limit) for the program to
    /// exit. When it has not, kills its process group and panics naming the command.
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the child has not been reaped");
        let status = child.wait_timeout(limit);
        let _ = self.disarm.send(());
        match status {
            Ok(Some(status)) if !self.expired.load(Ordering::SeqCst) => status,
            Ok(Some(_)) => panic!(
                "timed out after {:.0} s, killed its process group: {}",
                self.limit.as_secs_f64(),
                self.what
            ),
            Ok(None) => {
                let _ = killpg(pgid_of(&child), Signal::SIGKILL);
                let _ = child.wait();
                panic!(
                    "timed out after {:.0} s, killed its process group: {}",
                    limit.as_secs_f64(),
                    self.what
                );
            }
            Err(e) => {
                let _ = killpg(pgid_of(&child), Signal::SIGKILL);
                let _ = child.wait();
                panic!("cannot wait for {}: {e}", self.what);
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(pgid_of(&child), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Polls `cond` every 20 ms for at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A program with its arguments, environment and working directory, to be run natively,
/// under the shim (`LD_PRELOAD`), or through `memshadow run`, each run with a fresh
/// `MEMSHADOW_DIR`.
#[derive(Clone, Debug)]
pub struct Prog {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Prog {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Prog {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    /// [`Prog::env`] for each pair.
    pub fn envs(self, pairs: &[(&str, &str)]) -> Self {
        pairs.iter().fold(self, |p, (k, v)| p.env(k, v))
    }

    pub fn current_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.cwd = Some(d.into());
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The program and its arguments, for messages.
    pub fn describe(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// A command that runs `program` with `leading` arguments, then this program's
    /// arguments, in a clean environment plus this program's variables.
    fn command(&self, program: &Path, leading: &[OsString]) -> Command {
        let mut cmd = Command::new(program);
        clean_env(&mut cmd);
        cmd.args(leading).args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd
    }

    fn run(&self, cmd: &mut Command) -> Output {
        match &self.stdin {
            Some(input) => run_with_input(cmd, input, self.timeout),
            None => run_with_timeout(cmd, self.timeout),
        }
    }

    /// Runs the program without the shim.
    pub fn run_native(&self) -> Output {
        let dir = temp_dir("native");
        let mut cmd = self.command(&self.program, &[]);
        cmd.env("MEMSHADOW_DIR", dir.path());
        self.run(&mut cmd)
    }

    /// Runs the program with `LD_PRELOAD=libmemshadow.so` and a fresh `MEMSHADOW_DIR`.
    pub fn run_shimmed(&self) -> Output {
        self.run_shimmed_with(&[])
    }

    /// [`Prog::run_shimmed`] with extra environment variables (set last).
    pub fn run_shimmed_with(&self, extra: &[(&str, &str)]) -> Output {
        let dir = temp_dir("shim");
        let mut cmd = self.command(&self.program, &[]);
        cmd.env("LD_PRELOAD", shim_lib())
            .env("MEMSHADOW_DIR", dir.path());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        self.run(&mut cmd)
    }

    /// Runs `memshadow run --quiet --stats-json FILE -- program args...` with a fresh
    /// `MEMSHADOW_DIR` (and `MEMSHADOW_LIB` naming the library the other runs preload)
    /// and reads the JSON it wrote. On a timeout the panic shows the live statistics of
    /// the run's shimmed processes.
    pub fn run_memshadow(&self) -> StatsRun {
        let dir = temp_dir("run");
        let json_path = dir.path().join("stats.json");
        let rt = dir.path().join("rt");
        std::fs::create_dir(&rt).expect("create run-time dir");
        let mut cmd = self.memshadow_command(&rt, &json_path);
        let output = run_explained(&mut cmd, self.stdin.as_deref(), self.timeout, &|| {
            live_stats(&rt)
        });
        StatsRun::read(self.describe(), output, &json_path)
    }

    /// The command `memshadow run --quiet --stats-json JSON -- program args...` with
    /// `MEMSHADOW_DIR=rt` and `MEMSHADOW_LIB` naming the library the other runs preload,
    /// for a test that starts it itself (a server in the background).
    pub fn memshadow_command(&self, rt: &Path, json: &Path) -> Command {
        let leading: Vec<OsString> = vec![
            "run".into(),
            "--quiet".into(),
            "--stats-json".into(),
            json.into(),
            "--".into(),
            self.program.clone().into(),
        ];
        let mut cmd = self.command(&memshadow_bin(), &leading);
        cmd.env("MEMSHADOW_DIR", rt)
            .env("MEMSHADOW_LIB", shim_lib());
        cmd
    }

    /// The command that runs the program without the shim, with `MEMSHADOW_DIR=rt`.
    pub fn native_command(&self, rt: &Path) -> Command {
        let mut cmd = self.command(&self.program, &[]);
        cmd.env("MEMSHADOW_DIR", rt);
        cmd
    }
}

/// `memshadow ps --json` in the run-time directory `rt`: the live statistics of the
/// shimmed processes there, as a paragraph for a failure message.
pub fn live_stats(rt: &Path) -> String {
    let mut ps = Command::new(memshadow_bin());
    clean_env_in(&mut ps, rt);
    ps.args(["ps", "--json"]);
    let mut child = match ps
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return format!("--- cannot run memshadow ps: {e} ---\n"),
    };
    let out = reader(child.stdout.take().expect("stdout is piped"));
    match child.wait_timeout(Duration::from_secs(10)) {
        Ok(Some(_)) => {}
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return "--- memshadow ps did not answer within 10 s ---\n".to_string();
        }
    }
    let text = out.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    format!(
        "--- live statistics of the run's shimmed processes (memshadow ps --json) ---\n{}\n",
        String::from_utf8_lossy(&text).trim_end()
    )
}

/// The result of a `memshadow run --stats-json`.
#[derive(Debug)]
pub struct StatsRun {
    pub what: String,
    pub output: Output,
    pub json: Value,
}

impl StatsRun {
    /// Reads the `--stats-json` file `json_path` that `memshadow run` wrote for `what`.
    pub fn read(what: String, output: Output, json_path: &Path) -> Self {
        let text = std::fs::read_to_string(json_path).unwrap_or_else(|e| {
            panic!(
                "memshadow run wrote no {} ({e}) for {what} ({}); its stderr:\n{}",
                json_path.display(),
                describe_status(output.status),
                tail(&output.stderr)
            )
        });
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("--stats-json of {what} is not JSON ({e}):\n{text}"));
        StatsRun { what, output, json }
    }

    fn ctx(&self) -> String {
        format!(
            "memshadow run of {}; JSON:\n{}\nstderr:\n{}",
            self.what,
            serde_json::to_string_pretty(&self.json).unwrap_or_default(),
            tail(&self.output.stderr)
        )
    }

    /// An unsigned integer at the top level of the JSON (the main process).
    pub fn u64(&self, key: &str) -> u64 {
        self.json
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("`{key}` is not an unsigned integer in the {}", self.ctx()))
    }

    /// The `processes` array.
    pub fn processes(&self) -> &[Value] {
        self.json
            .get("processes")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("no `processes` array in the {}", self.ctx()))
    }

    /// Checks the main process's record: the shim attached, it tracked memory (and, with
    /// `want_allocs`, counted allocations), the exit status matches `native`'s, and the
    /// main process is among `processes`.
    pub fn assert_attached(&self, native: &Output, want_allocs: bool) {
        let j = &self.json;
        assert_eq!(
            j.get("shim_attached"),
            Some(&Value::Bool(true)),
            "the shim did not attach: {}",
            self.ctx()
        );
        let pid = self.u64("pid");
        assert!(pid > 0, "pid 0 in the {}", self.ctx());
        assert!(
            j.get("command")
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty()),
            "no command in the {}",
            self.ctx()
        );
        assert!(
            j.get("wall_s").is_some_and(Value::is_number),
            "no wall_s in the {}",
            self.ctx()
        );
        let want_code = native.status.code().map(Value::from).unwrap_or(Value::Null);
        let want_signal = native
            .status
            .signal()
            .map(Value::from)
            .unwrap_or(Value::Null);
        assert_eq!(
            j.get("exit_code"),
            Some(&want_code),
            "exit_code differs from the native run's ({}): {}",
            describe_status(native.status),
            self.ctx()
        );
        assert_eq!(
            j.get("signal"),
            Some(&want_signal),
            "signal differs from the native run's: {}",
            self.ctx()
        );
        assert!(
            self.u64("tracked_bytes") > 0,
            "tracked_bytes is 0: {}",
            self.ctx()
        );
        assert!(
            self.u64("tracked_regions") > 0,
            "tracked_regions is 0: {}",
            self.ctx()
        );
        if want_allocs {
            assert!(self.u64("allocs") > 0, "allocs is 0: {}", self.ctx());
            // Key present and an integer; frees may legitimately trail allocs.
            let _ = self.u64("frees");
            let _ = self.u64("live_bytes");
        }
        assert!(
            self.processes()
                .iter()
                .any(|p| p.get("pid").and_then(Value::as_u64) == Some(pid)),
            "the main process {pid} is not in `processes`: {}",
            self.ctx()
        );
    }
}

/// Asserts that two runs of `what` behaved the same: exit status, stdout and (with
/// `compare_stderr`) stderr byte for byte. The message shows the first difference.
pub fn assert_same_behaviour(what: &str, native: &Output, shimmed: &Output, compare_stderr: bool) {
    let status_ok = native.status.code() == shimmed.status.code()
        && native.status.signal() == shimmed.status.signal();
    let mut problems = Vec::new();
    if !status_ok {
        problems.push(format!(
            "exit status: native {}, shimmed {}",
            describe_status(native.status),
            describe_status(shimmed.status)
        ));
    }
    if native.stdout != shimmed.stdout {
        problems.push(format!(
            "stdout differs: {}",
            first_difference(&native.stdout, &shimmed.stdout)
        ));
    }
    if compare_stderr && native.stderr != shimmed.stderr {
        problems.push(format!(
            "stderr differs: {}",
            first_difference(&native.stderr, &shimmed.stderr)
        ));
    }
    assert!(
        problems.is_empty(),
        "{what} behaves differently under the shim:\n  {}\n--- shimmed stderr ---\n{}\n--- shimmed stdout (tail) ---\n{}",
        problems.join("\n  "),
        tail(&shimmed.stderr),
        tail(&shimmed.stdout)
    );
}

/// "line N: native `...` vs shimmed `...`" for the first differing line.
pub fn first_difference(a: &[u8], b: &[u8]) -> String {
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    let mut la = a.lines();
    let mut lb = b.lines();
    let mut n = 1;
    loop {
        match (la.next(), lb.next()) {
            (None, None) => {
                return format!(
                    "same lines, different bytes ({} vs {} bytes)",
                    a.len(),
                    b.len()
                )
            }
            (x, y) if x == y => n += 1,
            (x, y) => {
                return format!(
                    "line {n}: native {:?} vs shimmed {:?} ({} vs {} lines in all)",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>"),
                    a.lines().count(),
                    b.lines().count()
                )
            }
        }
    }
}

/// Asserts that a native run ended with `code` and printed no `FAIL` line.
pub fn assert_native_ok(what: &str, native: &Output, code: i32) {
    let stdout = String::from_utf8_lossy(&native.stdout);
    assert!(
        native.status.code() == Some(code) && !stdout.lines().any(|l| l.starts_with("FAIL")),
        "{what} fails natively (without the shim), expected exit {code}, got {}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe_status(native.status),
        tail(&native.stdout),
        tail(&native.stderr)
    );
}

/// Finds an installed tool, preferring Debian's `/usr/bin` and `/bin`, then `PATH`.
/// Panics naming the Debian package to install when it is missing: these tests never
/// skip.
pub fn require_tool(tool: &str, debian_package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = vec!["/usr/bin".into(), "/bin".into()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for d in dirs {
        let p = d.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{tool}` is not installed: install the Debian package `{debian_package}` (apt-get install -y {debian_package}); CI installs it"
    );
}

/// Passes to `c` the AWS_* variables the store reads, as a test S3 server set them (the
/// memshadow processes the tests start get a clean environment plus these).
pub fn aws_env(c: &mut Command) {
    for k in [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ALLOW_HTTP",
    ] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
}
