//! The real-program suite's harness (`real_programs_*.rs`): programs nobody here wrote,
//! run natively and through `memshadow run` with a snapshot every 10 ms (some also every
//! 1 ms), compared on stdout, stderr, exit status and the files they left; and servers
//! driven over loopback by clients that run natively, their replies compared.
//!
//! Every run gets a fresh working directory that the case's set-up fills with inputs
//! generated here (no network, fixed seeds, fixed file times), and the programs are
//! given relative paths, so that a native and a shimmed run see the same world.
//!
//! Each comparison prints `real-program: NAME native X.XXs shim10ms Y.YYs ratio Z.ZZx`
//! on stderr and, when `MEMSHADOW_REAL_TIMES=FILE` is set, appends the same as a JSON
//! line to FILE. No timing is asserted: a run only has to end within its time limit.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::{
    assert_same_behaviour, describe_status, first_difference, live_stats, run_explained, temp_dir,
    wait_until, Guard, Prog, StatsRun,
};

/// Time limit of a native run.
pub const NATIVE_LIMIT: Duration = Duration::from_secs(120);
/// Time limit of a run with frequent snapshots: generous, it is about hangs, not speed.
pub const SNAPSHOT_LIMIT: Duration = Duration::from_secs(300);
/// Stands for the run's working directory (absolute) in arguments and environment.
pub const DIR: &str = "@DIR@";
/// The time every input file is given (2024-01-01T00:00:00Z), so that archivers store
/// the same bytes in every run.
const FIXED_MTIME: u64 = 1_704_067_200;

/// How one run of a case is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    /// Through `memshadow run` with `MEMSHADOW_INTERVAL_MS` set to this.
    Snapshots(u32),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Native => "native".into(),
            Mode::Snapshots(ms) => format!("{ms} ms snapshots"),
        }
    }
}

type Setup = Box<dyn Fn(&Path)>;

/// A program of a case, the exit status it has natively, and the file (relative path)
/// that receives its stdout after it ran, if any.
struct Step {
    prog: Prog,
    code: i32,
    stdout_to: Option<String>,
}

/// One real program's comparison: a set-up that writes inputs into a fresh directory,
/// then one or more steps (programs run in that directory, one after the other).
pub struct Case {
    name: String,
    setup: Option<Setup>,
    steps: Vec<Step>,
    one_ms: bool,
    ignore: Vec<String>,
}

/// What the native run of a case did: each step's output, and its directory.
pub struct Outcome {
    pub outputs: Vec<Output>,
    pub dir: tempfile::TempDir,
}

impl Outcome {
    /// Stdout of step `i`, as text.
    pub fn stdout(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.outputs[i].stdout).into_owned()
    }

    /// The contents of a file the run left, by relative path.
    pub fn file(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(rel))
            .unwrap_or_else(|e| panic!("the native run left no {rel}: {e}"))
    }
}

/// One run of a case.
struct Run {
    outputs: Vec<Output>,
    stats: Vec<StatsRun>,
    tree: BTreeMap<String, Entry>,
    wall: Duration,
    dir: tempfile::TempDir,
}

impl Case {
    pub fn new(name: &str) -> Self {
        Case {
            name: name.to_string(),
            setup: None,
            steps: Vec::new(),
            one_ms: false,
            ignore: Vec::new(),
        }
    }

    /// Writes the inputs into the run's directory (called once per run).
    pub fn setup(mut self, f: impl Fn(&Path) + 'static) -> Self {
        self.setup = Some(Box::new(f));
        self
    }

    /// A program run in the directory, expected to exit 0. `@DIR@` in its arguments and
    /// environment stands for the directory; a relative `current_dir` is inside it.
    pub fn step(self, prog: Prog) -> Self {
        self.step_exit(prog, 0)
    }

    /// [`Case::step`] for a program that exits with `code` natively (diff, cmp).
    pub fn step_exit(mut self, prog: Prog, code: i32) -> Self {
        self.steps.push(Step {
            prog,
            code,
            stdout_to: None,
        });
        self
    }

    /// [`Case::step_exit`] whose stdout is also written to `rel` in the directory once
    /// it ended, for the next steps to read (as a shell's `>` would, without a shell).
    pub fn step_to(mut self, prog: Prog, code: i32, rel: &str) -> Self {
        self.steps.push(Step {
            prog,
            code,
            stdout_to: Some(rel.to_string()),
        });
        self
    }

    /// Also compare a run with a snapshot every 1 ms.
    pub fn one_ms(mut self) -> Self {
        self.one_ms = true;
        self
    }

    /// A file or directory (relative path) whose contents legitimately differ between
    /// runs: it and everything under it are left out of the comparison of files.
    pub fn ignore(mut self, rel: &str) -> Self {
        self.ignore.push(rel.to_string());
        self
    }

    /// Runs the case natively, then with 10 ms snapshots (and 1 ms when asked), asserts
    /// the same behaviour and files and that the shim attached and took snapshots, prints
    /// the timing line, and returns the native run for further checks.
    pub fn run(self) -> Outcome {
        assert!(!self.steps.is_empty(), "{}: a case needs a step", self.name);
        let native = self.run_once(Mode::Native);
        for (i, (step, out)) in self.steps.iter().zip(&native.outputs).enumerate() {
            assert_native_ok_code(&self.step_name(i, &step.prog), out, step.code);
        }
        let ten = self.run_once(Mode::Snapshots(10));
        self.assert_same(&native, &ten, Mode::Snapshots(10));
        let one = self.one_ms.then(|| {
            let one = self.run_once(Mode::Snapshots(1));
            self.assert_same(&native, &one, Mode::Snapshots(1));
            one
        });
        let counts = |r: &Run| json!({"epochs": sum_stat(&r.stats, "epochs"), "traps": sum_stat(&r.stats, "traps")});
        let mut extra = vec![("shim10ms_stats", counts(&ten))];
        if let Some(one) = &one {
            extra.push(("shim1ms_s", json!(secs(one.wall))));
            extra.push(("shim1ms_stats", counts(one)));
        }
        report_times(&self.name, native.wall, ten.wall, &extra);
        Outcome {
            outputs: native.outputs,
            dir: native.dir,
        }
    }

    fn step_name(&self, i: usize, prog: &Prog) -> String {
        if self.steps.len() == 1 {
            self.name.clone()
        } else {
            format!("{} (step {}: {})", self.name, i + 1, short(prog))
        }
    }

    fn run_once(&self, mode: Mode) -> Run {
        let dir = temp_dir(&slug(&self.name));
        if let Some(setup) = &self.setup {
            setup(dir.path());
        }
        fix_mtimes(dir.path());
        let mut outputs = Vec::new();
        let mut stats = Vec::new();
        let mut wall = Duration::ZERO;
        for step in &self.steps {
            let prog = in_dir(&step.prog, dir.path());
            let started = Instant::now();
            match mode {
                Mode::Native => outputs.push(prog.timeout(NATIVE_LIMIT).run_native()),
                Mode::Snapshots(ms) => {
                    let run = prog
                        .env("MEMSHADOW_INTERVAL_MS", ms.to_string())
                        .timeout(SNAPSHOT_LIMIT)
                        .run_memshadow();
                    outputs.push(run.output.clone());
                    stats.push(run);
                }
            }
            wall += started.elapsed();
            if let (Some(rel), Some(out)) = (&step.stdout_to, outputs.last()) {
                write(dir.path(), rel, &out.stdout);
            }
        }
        let tree = read_tree(dir.path(), &self.ignore);
        Run {
            outputs,
            stats,
            tree,
            wall,
            dir,
        }
    }

    fn assert_same(&self, native: &Run, other: &Run, mode: Mode) {
        for (i, step) in self.steps.iter().enumerate() {
            let what = format!("{} ({})", self.step_name(i, &step.prog), mode.label());
            assert_same_behaviour(&what, &native.outputs[i], &other.outputs[i], true);
            other.stats[i].assert_attached(&native.outputs[i], false);
        }
        if let Some(diff) = tree_difference(&native.tree, &other.tree) {
            panic!(
                "{} ({}) left different files: {diff}",
                self.name,
                mode.label()
            );
        }
        assert_snapshots_taken(&format!("{} ({})", self.name, mode.label()), &other.stats);
    }
}

/// The program and its arguments with `@DIR@` replaced, in `dir` (or a relative
/// directory inside it).
fn in_dir(prog: &Prog, dir: &Path) -> Prog {
    let subst = |s: &OsString| -> OsString {
        let text = s.to_string_lossy();
        if text.contains(DIR) {
            text.replace(DIR, &dir.to_string_lossy()).into()
        } else {
            s.clone()
        }
    };
    let mut p = prog.clone();
    p.args = p.args.iter().map(subst).collect();
    p.env = p.env.iter().map(|(k, v)| (k.clone(), subst(v))).collect();
    p.cwd = Some(match &p.cwd {
        Some(rel) if rel.is_relative() => dir.join(rel),
        Some(abs) => abs.clone(),
        None => dir.to_path_buf(),
    });
    p
}

/// The program's file name and first arguments, for messages.
fn short(prog: &Prog) -> String {
    let mut s = prog
        .program
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    for a in prog.args.iter().take(4) {
        s.push(' ');
        s.push_str(&a.to_string_lossy().chars().take(40).collect::<String>());
    }
    s
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(20)
        .collect()
}

/// [`super::assert_native_ok`] without the `FAIL` line rule (real programs may print
/// such lines as data).
fn assert_native_ok_code(what: &str, native: &Output, code: i32) {
    assert!(
        native.status.code() == Some(code),
        "{what} fails natively (without the shim), expected exit {code}, got {}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe_status(native.status),
        super::tail(&native.stdout),
        super::tail(&native.stderr)
    );
}

/// Panics naming the Debian package to install when `check` (a native run that needs
/// `what`) fails.
pub fn require_feature(check: Prog, what: &str, debian_package: &str) {
    let dir = temp_dir("check");
    let out = check
        .current_dir(dir.path())
        .timeout(NATIVE_LIMIT)
        .run_native();
    assert!(
        out.status.success(),
        "{what} is not installed ({}: {}): install the Debian package `{debian_package}` (apt-get install -y {debian_package}); CI installs it",
        describe_status(out.status),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A statistic summed over every shimmed process of every run.
pub fn sum_stat(runs: &[StatsRun], key: &str) -> u64 {
    runs.iter()
        .flat_map(|r| r.processes().iter())
        .map(|p| p[key].as_u64().unwrap_or(0))
        .sum()
}

/// With periodic snapshots, the runs' processes took snapshots and trapped writes (or,
/// under holders, held them in holder children), summed over every shimmed process of
/// the runs, and none was incomplete.
pub fn assert_snapshots_taken(what: &str, runs: &[StatsRun]) {
    let all = || {
        runs.iter()
            .map(|r| r.json.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Under holders (`MEMSHADOW_TEST_BACKEND=holder`) nothing traps: the snapshots were
    // held by holder children instead. Under `auto` (the default) either: a program
    // with 64 MiB or more tracked starts on holders (redis-server's 77 MiB).
    assert!(
        sum_stat(runs, "epochs") > 0,
        "{what}: no epochs with periodic snapshots: {}",
        all()
    );
    let (traps, held) = (sum_stat(runs, "traps"), sum_stat(runs, "holder_snapshots"));
    let kept = match super::test_backend().as_deref() {
        Some("holder") => held > 0,
        Some("shadow") => traps > 0,
        _ => traps > 0 || held > 0,
    };
    assert!(
        kept,
        "{what}: no traps and no holder snapshots with periodic snapshots: {}",
        all()
    );
    assert_eq!(
        sum_stat(runs, "incomplete_snapshots"),
        0,
        "{what}: incomplete snapshots: {}",
        all()
    );
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Prints the timing line of a program and appends it as JSON to `MEMSHADOW_REAL_TIMES`.
pub fn report_times(name: &str, native: Duration, shim10: Duration, extra: &[(&str, Value)]) {
    let ratio = shim10.as_secs_f64() / native.as_secs_f64().max(1e-3);
    eprintln!(
        "real-program: {name} native {:.2}s shim10ms {:.2}s ratio {ratio:.2}x",
        native.as_secs_f64(),
        shim10.as_secs_f64()
    );
    let Some(path) = std::env::var_os("MEMSHADOW_REAL_TIMES").filter(|p| !p.is_empty()) else {
        return;
    };
    let mut line = json!({
        "program": name,
        "native_s": secs(native),
        "shim10ms_s": secs(shim10),
        "ratio": (ratio * 100.0).round() / 100.0,
    });
    for (k, v) in extra {
        line[*k] = v.clone();
    }
    // One write of a whole line to a file opened for appending: lines of tests running
    // at the same time do not interleave.
    let text = format!("{line}\n");
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot append to MEMSHADOW_REAL_TIMES={}: {e}",
            PathBuf::from(path).display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// What a run left at one path.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

/// Every file, directory and symbolic link under `root` by relative path, except the
/// `ignore`d ones and what is under them.
fn read_tree(root: &Path, ignore: &[String]) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, ignore: &[String], out: &mut BTreeMap<String, Entry>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            if ignore
                .iter()
                .any(|i| rel == *i || rel.starts_with(&format!("{i}/")))
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
            let e = if meta.is_dir() {
                walk(root, &path, ignore, out);
                Entry::Dir
            } else if meta.file_type().is_symlink() {
                Entry::Link(std::fs::read_link(&path).expect("read link"))
            } else {
                Entry::File(
                    std::fs::read(&path)
                        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
                )
            };
            out.insert(rel, e);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, ignore, &mut out);
    out
}

/// The first difference between two runs' files, if any.
fn tree_difference(
    native: &BTreeMap<String, Entry>,
    other: &BTreeMap<String, Entry>,
) -> Option<String> {
    for (k, v) in native {
        match other.get(k) {
            None => return Some(format!("{k} is missing")),
            Some(w) if w != v => {
                return Some(match (v, w) {
                    (Entry::File(a), Entry::File(b)) => {
                        format!("{k} differs: {}", first_difference(a, b))
                    }
                    _ => format!("{k}: {v:?} vs {w:?}"),
                })
            }
            Some(_) => {}
        }
    }
    other
        .keys()
        .find(|k| !native.contains_key(*k))
        .map(|k| format!("{k} appeared (not in the native run)"))
}

/// Gives every file and directory under `root` the same modification time.
fn fix_mtimes(root: &Path) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(FIXED_MTIME);
    for entry in std::fs::read_dir(root).expect("list the run's directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            fix_mtimes(&path);
        }
        if !path.is_symlink() {
            File::open(&path)
                .and_then(|f| f.set_modified(t))
                .unwrap_or_else(|e| panic!("cannot set the time of {}: {e}", path.display()));
        }
    }
    File::open(root)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("cannot set the time of {}: {e}", root.display()));
}

/// Writes `contents` to `dir/rel`, creating directories on the way.
pub fn write(dir: &Path, rel: &str, contents: impl AsRef<[u8]>) {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    std::fs::write(&p, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
}

// ---------------------------------------------------------------------------------------
// Deterministic inputs
// ---------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: [&str; 32] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "shadow", "memory", "page", "fault",
    "snapshot", "epoch",
];

/// `lines` lines of words and numbers: compressible text, like a log.
pub fn text(seed: u64, lines: usize) -> String {
    let mut r = Rng::new(seed);
    let mut s = String::with_capacity(lines * 48);
    for i in 0..lines {
        s.push_str(&format!("{i:07} "));
        for _ in 0..(3 + r.below(6)) {
            s.push_str(WORDS[r.below(WORDS.len() as u64) as usize]);
            s.push(' ');
        }
        s.push_str(&format!("{}\n", r.below(1_000_000)));
    }
    s
}

/// `n` bytes, half text and half noise, in blocks: compresses by about half.
pub fn mixed_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let text = text(seed ^ 0x55, n / 80 + 1).into_bytes();
    let mut out = Vec::with_capacity(n);
    let mut t = 0;
    while out.len() < n {
        if r.below(2) == 0 {
            let len = 512.min(text.len() - t);
            out.extend_from_slice(&text[t..t + len]);
            t = (t + len) % (text.len() - 512).max(1);
        } else {
            out.extend((0..512).map(|_| r.next() as u8));
        }
    }
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// What a client of a server under test needs: the server's port and directory, and
/// the run-time directory of its shimmed processes (to show their statistics when a
/// client times out).
pub struct ServerCtx {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    rt: PathBuf,
}

impl ServerCtx {
    /// Runs a client natively (never shimmed) in the server's directory; a timeout is a
    /// failure that shows the server's live statistics.
    pub fn client(&self, prog: Prog) -> Output {
        let prog = in_dir(&prog, &self.dir);
        let mut cmd = prog.native_command(&self.rt);
        let rt = self.rt.clone();
        run_explained(&mut cmd, prog.stdin.as_deref(), prog.timeout, &|| {
            live_stats(&rt)
        })
    }

    /// A TCP connection to the server with 60 s read and write time limits.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .unwrap_or_else(|e| panic!("{}: cannot connect to port {}: {e}", self.name, self.port));
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set a read timeout");
        s.set_write_timeout(Some(Duration::from_secs(60)))
            .expect("set a write timeout");
        s
    }

    /// Panics about a failed exchange with the server, with its live statistics.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n{}--- server log ---\n{}",
            self.name,
            live_stats(&self.rt),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        )
    }

    /// Sends `request`, then reads until `done` says the reply is complete.
    pub fn exchange(
        &self,
        stream: &mut TcpStream,
        request: &[u8],
        done: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        if let Err(e) = stream.write_all(request) {
            self.fail(&format!("cannot send a request: {e}"));
        }
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        while !done(&reply) {
            match stream.read(&mut buf) {
                Ok(0) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return reply;
                }
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) => self.fail(&format!(
                    "no complete reply ({e}) after {} bytes: {}",
                    reply.len(),
                    String::from_utf8_lossy(&reply[..reply.len().min(300)])
                )),
            }
        }
        reply
    }
}

/// How a server's run ended.
struct ServerRun {
    transcript: String,
    status: ExitStatus,
    stats: Option<StatsRun>,
    load: Duration,
}

/// A server started by `start(port)` in a directory that `setup(dir, port)` filled (a program in the foreground that writes its
/// log wherever it likes; its stdout and stderr go to `server.log`), driven by
/// `drive`, which returns a transcript of the replies that must not change, then
/// stopped with SIGTERM. Run natively and with 10 ms snapshots: same transcript, same
/// exit status, the shim attached and took snapshots; the load's wall times are
/// reported like a program's.
pub fn server_case(
    name: &str,
    setup: impl Fn(&Path, u16),
    start: impl Fn(u16) -> Prog,
    drive: impl Fn(&ServerCtx) -> String,
) -> String {
    let run = |mode: Mode| -> ServerRun {
        let dir = temp_dir(&slug(name));
        let rt = dir.path().join("rt");
        std::fs::create_dir(&rt).expect("create run-time dir");
        let port = free_port();
        setup(dir.path(), port);
        let prog = in_dir(&start(port), dir.path());
        let log = File::create(dir.path().join("server.log")).expect("create server.log");
        let json_path = dir.path().join("stats.json");
        let mut cmd = match mode {
            Mode::Native => prog.native_command(&rt),
            Mode::Snapshots(ms) => prog
                .clone()
                .env("MEMSHADOW_INTERVAL_MS", ms.to_string())
                .memshadow_command(&rt, &json_path),
        };
        cmd.stdout(log.try_clone().expect("dup log")).stderr(log);
        let guard = Guard::spawn(&mut cmd, SNAPSHOT_LIMIT + Duration::from_secs(60));
        let ctx = ServerCtx {
            name: format!("{name} ({})", mode.label()),
            port,
            dir: dir.path().to_path_buf(),
            rt,
        };
        let up = wait_until(Duration::from_secs(30), || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
        });
        if !up {
            ctx.fail(&format!("does not listen on port {port} after 30 s"));
        }
        let started = Instant::now();
        let transcript = drive(&ctx);
        let load = started.elapsed();
        let pid = Pid::from_raw(i32::try_from(guard.pid()).expect("pid fits in i32"));
        kill(pid, Signal::SIGTERM).expect("send SIGTERM to the server");
        let status = guard.wait(Duration::from_secs(60));
        let stats = match mode {
            Mode::Native => None,
            Mode::Snapshots(_) => {
                let output = Output {
                    status,
                    stdout: Vec::new(),
                    stderr: std::fs::read(dir.path().join("server.log")).unwrap_or_default(),
                };
                Some(StatsRun::read(ctx.name.clone(), output, &json_path))
            }
        };
        ServerRun {
            transcript,
            status,
            stats,
            load,
        }
    };
    let native = run(Mode::Native);
    let shim = run(Mode::Snapshots(10));
    assert!(
        native.transcript == shim.transcript,
        "{name} answers differently with 10 ms snapshots: {}\n--- with snapshots ---\n{}",
        first_difference(native.transcript.as_bytes(), shim.transcript.as_bytes()),
        super::tail(shim.transcript.as_bytes())
    );
    assert!(
        native.status.code() == shim.status.code()
            && native.status.signal() == shim.status.signal(),
        "{name} ended differently: native {}, with 10 ms snapshots {}",
        describe_status(native.status),
        describe_status(shim.status)
    );
    let stats = shim.stats.expect("a snapshot run has statistics");
    let as_native = Output {
        status: native.status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    stats.assert_attached(&as_native, false);
    let stats = [stats];
    assert_snapshots_taken(&format!("{name} (10 ms snapshots)"), &stats);
    let counts = json!({"epochs": sum_stat(&stats, "epochs"), "traps": sum_stat(&stats, "traps")});
    report_times(name, native.load, shim.load, &[("shim10ms_stats", counts)]);
    native.transcript
}

/// Returns stdout of a client run after checking it exited 0 with nothing on stderr.
pub fn client_ok(ctx: &ServerCtx, prog: Prog) -> String {
    let what = prog.describe();
    let out = ctx.client(prog);
    if !out.status.success() || !out.stderr.is_empty() {
        ctx.fail(&format!(
            "client {what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            describe_status(out.status),
            super::tail(&out.stdout),
            super::tail(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}
