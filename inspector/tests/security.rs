//! Attacks by another local user on root's `memshadow` (issue 12): each test plays uid
//! 65534 (files it owns, processes run with `setpriv --reuid=65534 --regid=65534
//! --clear-groups`) and checks that the attack fails with one clear line.
//!
//! These tests need root (to play another user) and use the real `/dev/shm`, where the
//! attacks happen: `/dev/shm/memshadow-65534` and a few squatted names, each removed
//! again. The tests touching `/dev/shm` take [`SHM`] so they do not trip over each
//! other.

mod common;

use std::fs;
use std::io::Write;
use std::mem::offset_of;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{
    clean_env, clean_env_in, finish, is_root, memshadow_bin, require_tool, shim_lib, spawn_shimmed,
    temp_dir, wait_until, Finished, Guard,
};
use memshadow_format::image::ImageReader;
use memshadow_format::stats::{StatsPage, STATS_LAYOUT_VERSION, STATS_MAGIC, STATS_PAGE_SIZE};

const LIMIT: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

/// Serialises the tests that plant files under `/dev/shm`.
static SHM: Mutex<()> = Mutex::new(());

fn shm_lock() -> MutexGuard<'static, ()> {
    SHM.lock().unwrap_or_else(|e| e.into_inner())
}

fn require_root() {
    assert!(
        is_root(),
        "these tests play another user (uid {NOBODY}) with setpriv, which needs root"
    );
    require_tool("setpriv", "util-linux");
}

/// `program` run as uid/gid 65534 with no supplementary groups, with a clean
/// environment.
fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    clean_env(&mut c);
    c
}

/// root's `memshadow`, looking where it looks by default (no `MEMSHADOW_DIR`).
fn memshadow_default() -> Command {
    let mut c = Command::new(memshadow_bin());
    clean_env(&mut c);
    c
}

/// root's `memshadow` with its own run-time directory.
fn memshadow_in(dir: &Path) -> Command {
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, dir);
    c
}

/// Runs the command with umask 000.
fn umask0(c: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // umask, which is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    }
}

/// Paths planted by a test, removed (whatever they are) when dropped.
struct Planted(Vec<PathBuf>);

impl Planted {
    fn add(&mut self, p: impl Into<PathBuf>) -> PathBuf {
        let p = p.into();
        self.0.push(p.clone());
        p
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = fs::remove_dir_all(p);
                }
                Ok(_) => {
                    let _ = fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

/// `/dev/shm/memshadow-65534`, as uid 65534's shim makes it (0700, its own), created
/// if missing and then removed with the planted files.
fn nobody_dir(planted: &mut Planted) -> PathBuf {
    let dir = PathBuf::from(format!("/dev/shm/memshadow-{NOBODY}"));
    if fs::symlink_metadata(&dir).is_err() {
        fs::create_dir(&dir).unwrap();
        planted.add(&dir);
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    lchown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks.
fn start_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// A stats page that decodes as a running shimmed process `pid` of `uid`.
fn forged_page(pid: u32, uid: u32, command: &str) -> Vec<u8> {
    let mut b = vec![0u8; STATS_PAGE_SIZE];
    let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(&mut b, 0, &STATS_MAGIC);
    put(
        &mut b,
        offset_of!(StatsPage, layout_version),
        &STATS_LAYOUT_VERSION.to_le_bytes(),
    );
    put(&mut b, offset_of!(StatsPage, state), &1u32.to_le_bytes());
    put(&mut b, offset_of!(StatsPage, pid), &pid.to_le_bytes());
    put(&mut b, offset_of!(StatsPage, uid), &uid.to_le_bytes());
    put(
        &mut b,
        offset_of!(StatsPage, start_time_ticks),
        &start_time(pid).to_le_bytes(),
    );
    put(&mut b, offset_of!(StatsPage, command), command.as_bytes());
    b
}

/// Writes `bytes` to `path` as a file of uid 65534 (0600).
fn plant_file(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// A process of uid 65534 that answers every connection on `sock` with forged
/// statistics and a forged snapshot version.
fn forged_server(sock: &Path) -> Guard {
    let python = require_tool("python3", "python3");
    let script = "import os, socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o600); s.listen(8)\n\
        while True:\n\
        \x20   c, _ = s.accept(); c.recv(256)\n\
        \x20   c.sendall(b'ok\\npid 1\\ncommand forged\\nstate running\\nversion 7\\nend\\n'); c.close()\n";
    let mut c = as_nobody(python);
    c.arg("-c").arg(script).arg(sock).stdout(Stdio::null());
    let server = Guard::spawn(&mut c, LIMIT);
    assert!(
        wait_until(Duration::from_secs(10), || sock.exists()),
        "the forged server did not bind {}",
        sock.display()
    );
    server
}

/// An unshimmed `sleep` of uid 65534 (or of root).
fn sleeper(as_other: bool) -> Guard {
    let mut c = if as_other {
        as_nobody("sleep")
    } else {
        let mut c = Command::new("sleep");
        clean_env(&mut c);
        c
    };
    c.arg("30");
    let g = Guard::spawn(&mut c, LIMIT);
    let pid = g.pid();
    // setpriv execs sleep in the same process; wait until it has.
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(format!(
            "/proc/{pid}/comm"
        ))
        .is_ok_and(|c| c.trim() == "sleep")),
        "sleep did not start"
    );
    g
}

fn assert_refused(f: &Finished, code: i32, wanted: &[&str]) {
    assert_eq!(f.status.code(), Some(code), "{f:#?}");
    let line = f.stderr_line();
    for w in wanted {
        assert!(line.contains(w), "no {w:?} in the line: {f:#?}");
    }
}

// ---------------------------------------------------------------------------------------
// 1. Forged processes
// ---------------------------------------------------------------------------------------

/// uid 65534 publishes a page and a socket for a root process that is not shimmed:
/// root's `stats`, `snapshot` and `image` refuse them, naming the directory's uid.
#[test]
fn a_page_and_socket_for_a_root_process_in_another_users_dir_are_refused() {
    require_root();
    let _shm = shm_lock();
    let mut planted = Planted(Vec::new());
    let dir = nobody_dir(&mut planted);
    let target = sleeper(false);
    let pid = target.pid();
    let page = planted.add(dir.join(format!("{pid}.stats")));
    plant_file(&page, &forged_page(pid, 0, "forged"));
    let sock = planted.add(dir.join(format!("{pid}.sock")));
    let _server = forged_server(&sock);

    let out_dir = temp_dir("sec");
    let out = out_dir.path().join("img");
    let p = pid.to_string();
    for args in [
        vec!["stats", &p],
        vec!["snapshot", &p],
        vec![
            "image",
            &p,
            "--version",
            "7",
            "--out",
            out.to_str().unwrap(),
        ],
    ] {
        let f = finish(memshadow_default().args(&args), LIMIT);
        assert_refused(
            &f,
            1,
            &[
                &format!("process {pid} (sleep) belongs to uid 0"),
                &format!(
                    "ignoring {}: it is in the directory of uid {NOBODY}",
                    page.display()
                ),
            ],
        );
        assert!(
            !f.stdout.contains("forged") && !f.stdout.contains('7'),
            "{f:#?}"
        );
    }
    assert!(!out.exists(), "an image of forged memory was written");
}

/// uid 65534 publishes a page for its own unshimmed process and serves the socket from
/// another process: the socket's peer is not the process, so root refuses it.
#[test]
fn a_socket_served_by_another_process_is_refused() {
    require_root();
    let _shm = shm_lock();
    let mut planted = Planted(Vec::new());
    let dir = nobody_dir(&mut planted);
    let target = sleeper(true);
    let pid = target.pid();
    plant_file(
        &planted.add(dir.join(format!("{pid}.stats"))),
        &forged_page(pid, NOBODY, "forged"),
    );
    let sock = planted.add(dir.join(format!("{pid}.sock")));
    let server = forged_server(&sock);
    let f = finish(memshadow_default().args(["stats", &pid.to_string()]), LIMIT);
    assert_refused(
        &f,
        1,
        &[&format!(
            "ignoring {}: it is served by process {} (uid {NOBODY}), not by process {pid}",
            sock.display(),
            server.pid()
        )],
    );
    assert!(!f.stdout.contains("forged"), "{f:#?}");
}

// ---------------------------------------------------------------------------------------
// 2. FIFOs and symlinks where pages are read
// ---------------------------------------------------------------------------------------

/// A FIFO where a stats page should be blocks neither `ps` nor `stats`; a symlink to a
/// page elsewhere is not followed.
#[test]
fn a_fifo_or_a_symlink_in_place_of_a_page_is_refused_without_blocking() {
    require_root();
    let _shm = shm_lock();
    let mut planted = Planted(Vec::new());
    let dir = nobody_dir(&mut planted);
    let target = sleeper(true);
    let pid = target.pid();
    let page = planted.add(dir.join(format!("{pid}.stats")));
    nix::unistd::mkfifo(&page, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    lchown(&page, Some(NOBODY), Some(NOBODY)).unwrap();

    let f = finish(memshadow_default().arg("ps"), LIMIT);
    assert!(f.status.success(), "{f:#?}");
    let wanted = format!("memshadow: ignoring {}: it is a FIFO", page.display());
    assert!(f.stderr.lines().any(|l| l == wanted), "{f:#?}");
    let f = finish(memshadow_default().args(["stats", &pid.to_string()]), LIMIT);
    assert_refused(
        &f,
        1,
        &[&format!("ignoring {}: it is a FIFO", page.display())],
    );

    // A symlink to a well-formed page elsewhere.
    fs::remove_file(&page).unwrap();
    let elsewhere = temp_dir("sec");
    let real = elsewhere.path().join("page");
    fs::write(&real, forged_page(pid, NOBODY, "forged")).unwrap();
    symlink(&real, &page).unwrap();
    lchown(&page, Some(NOBODY), Some(NOBODY)).unwrap();
    let f = finish(memshadow_default().args(["stats", &pid.to_string()]), LIMIT);
    assert_refused(
        &f,
        1,
        &[&format!("ignoring {}: it is a symlink", page.display())],
    );
}

// ---------------------------------------------------------------------------------------
// 5. Squatted directories
// ---------------------------------------------------------------------------------------

/// Directories of other uids that uid 65534 made first (its own, a symlink, one open to
/// all): `ps` names each in one line and reads nothing from them.
#[test]
fn ps_points_out_squatted_directories() {
    require_root();
    let _shm = shm_lock();
    let mut planted = Planted(Vec::new());
    let mine = planted.add("/dev/shm/memshadow-65533");
    let linked = planted.add("/dev/shm/memshadow-65532");
    let open = planted.add("/dev/shm/memshadow-65531");
    let behind = temp_dir("sec");
    for d in [&mine, &open] {
        let _ = fs::remove_dir_all(d);
        fs::create_dir(d).unwrap();
    }
    let _ = fs::remove_file(&linked);
    symlink(behind.path(), &linked).unwrap();
    lchown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
    lchown(&linked, Some(NOBODY), Some(NOBODY)).unwrap();
    lchown(&open, Some(65531), Some(65531)).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();

    let f = finish(memshadow_default().arg("ps"), LIMIT);
    assert!(f.status.success(), "{f:#?}");
    for (dir, why) in [
        (
            &mine,
            format!("it belongs to uid {NOBODY}, not to uid 65533"),
        ),
        (&linked, "it is a symlink".to_string()),
        (
            &open,
            "group or others may write into it (mode 777)".to_string(),
        ),
    ] {
        let start = format!("memshadow: ignoring {}: {why}; ", dir.display());
        assert_eq!(
            f.stderr.lines().filter(|l| l.starts_with(&start)).count(),
            1,
            "no one line {start:?}: {f:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3, 4. Files the CLI writes
// ---------------------------------------------------------------------------------------

/// A shimmed `sleep` with one snapshot taken: its pid, the version, and the first
/// tracked address (from an image).
fn snapshotted_sleeper(dir: &Path) -> (Guard, u32, u64, u64) {
    let guard = spawn_shimmed(dir, LIMIT, &["sleep", "30"]);
    let pid = guard.pid();
    let f = finish(
        memshadow_in(dir).args(["snapshot", &pid.to_string()]),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    let version: u64 = f.stdout.trim().parse().unwrap();
    let img = dir.join("first.img");
    let f = finish(
        memshadow_in(dir)
            .args(["image", &pid.to_string(), "--version", &version.to_string()])
            .arg("--out")
            .arg(&img),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    let mut reader = ImageReader::new(fs::File::open(&img).unwrap()).unwrap();
    let first = reader.next_region().unwrap().expect("a region");
    (guard, pid, version, first.start)
}

/// The commands that write files, each writing to `out`.
fn writers(run_dir: &Path, pid: u32, version: u64, addr: u64, out: &Path) -> Vec<Command> {
    let (p, v) = (pid.to_string(), version.to_string());
    let mut image = memshadow_in(run_dir);
    image
        .args(["image", &p, "--version", &v])
        .arg("--out")
        .arg(out);
    let mut read = memshadow_in(run_dir);
    read.args(["read", &p, "--version", &v, &format!("{addr:#x}"), "4096"])
        .arg("--out")
        .arg(out);
    let mut run = memshadow_in(run_dir);
    run.args(["run", "--quiet", "--stats-json"])
        .arg(out)
        .args(["--", "true"]);
    vec![image, read, run]
}

/// uid 65534 plants a symlink to a root file where root's output goes, in a sticky
/// public directory: every command replaces the link with a new file of its own, 0600
/// even under umask 000, and leaves the root file as it was.
#[test]
fn outputs_replace_planted_symlinks_with_new_0600_files() {
    require_root();
    let run = temp_dir("sec");
    let (_guard, pid, version, addr) = snapshotted_sleeper(run.path());
    let public = temp_dir("sec");
    fs::set_permissions(public.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let private = temp_dir("sec");
    let victim = private.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let out = public.path().join("out");
    for mut cmd in writers(run.path(), pid, version, addr, &out) {
        let _ = fs::remove_file(&out);
        symlink(&victim, &out).unwrap();
        lchown(&out, Some(NOBODY), Some(NOBODY)).unwrap();
        let f = finish(umask0(&mut cmd), LIMIT);
        assert!(f.status.success(), "{cmd:?}: {f:#?}");
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"precious",
            "{cmd:?} wrote through the link"
        );
        let v = fs::metadata(&victim).unwrap();
        assert_eq!(
            (v.mode() & 0o7777, v.uid()),
            (0o644, 0),
            "{cmd:?} changed the victim"
        );
        let m = fs::symlink_metadata(&out).unwrap();
        assert!(m.file_type().is_file(), "{cmd:?}: {m:?}");
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o600, 0), "{cmd:?}");
        assert_eq!(
            fs::read_dir(public.path()).unwrap().count(),
            1,
            "{cmd:?} left a temporary file"
        );
    }
}

/// Every file written is 0600 under umask 000, also a plain new one.
#[test]
fn files_written_are_0600_under_umask_000() {
    require_root();
    let run = temp_dir("sec");
    let (_guard, pid, version, addr) = snapshotted_sleeper(run.path());
    let outs = temp_dir("sec");
    for i in 0..3 {
        let out = outs.path().join(format!("out{i}"));
        let mut cmd = writers(run.path(), pid, version, addr, &out).swap_remove(i);
        let f = finish(umask0(&mut cmd), LIMIT);
        assert!(f.status.success(), "{cmd:?}: {f:#?}");
        let mode = fs::metadata(&out).unwrap().mode() & 0o7777;
        assert_eq!(
            mode,
            0o600,
            "{cmd:?} wrote {} with mode {mode:o}",
            out.display()
        );
    }
}

/// A FIFO of uid 65534 at the output, and a directory of uid 65534: refused at once,
/// with one line, and nothing written.
#[test]
fn outputs_refuse_another_users_fifo_and_directory() {
    require_root();
    let run = temp_dir("sec");
    let (_guard, pid, version, addr) = snapshotted_sleeper(run.path());
    let public = temp_dir("sec");
    fs::set_permissions(public.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let fifo = public.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    lchown(&fifo, Some(NOBODY), Some(NOBODY)).unwrap();
    for mut cmd in writers(run.path(), pid, version, addr, &fifo) {
        let f = finish(&mut cmd, LIMIT);
        assert_refused(
            &f,
            1,
            &[&format!(
                "cannot write {}: refusing to replace it: it is a FIFO",
                fifo.display()
            )],
        );
    }
    let theirs = public.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    lchown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = theirs.join("out");
    for mut cmd in writers(run.path(), pid, version, addr, &out) {
        let f = finish(&mut cmd, LIMIT);
        assert_refused(
            &f,
            1,
            &[&format!(
                "cannot write {}: refusing to write there: the directory belongs to uid {NOBODY}",
                out.display()
            )],
        );
        assert!(!out.exists(), "{cmd:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 8. Smaller ones
// ---------------------------------------------------------------------------------------

/// A stopped process cannot answer: `snapshot` says so within seconds, not a minute.
#[test]
fn snapshot_of_a_stopped_process_says_it_is_stopped() {
    let run = temp_dir("sec");
    let guard = spawn_shimmed(run.path(), LIMIT, &["sleep", "30"]);
    let pid = guard.pid();
    let nix_pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(nix_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let f = finish(
        memshadow_in(run.path()).args(["snapshot", &pid.to_string()]),
        LIMIT,
    );
    let _ = nix::sys::signal::kill(nix_pid, nix::sys::signal::Signal::SIGCONT);
    assert_refused(
        &f,
        1,
        &[
            &format!("process {pid} (sleep) did not answer: timed out after "),
            &format!("because it is stopped (state T in /proc/{pid}/stat)"),
        ],
    );
}

/// `run --lib` takes only the shim: an ELF shared object exporting
/// `memshadow_snapshot_v1`.
#[test]
fn run_lib_refuses_what_is_not_the_shim() {
    let dir = temp_dir("sec");
    let bin = memshadow_bin();
    for lib in [Path::new("/etc/passwd"), bin.as_path()] {
        let f = finish(
            memshadow_in(dir.path())
                .arg("run")
                .arg("--lib")
                .arg(lib)
                .args(["--", "true"]),
            LIMIT,
        );
        assert_refused(
            &f,
            2,
            &[&format!("{} is not the memshadow shim: ", lib.display())],
        );
    }
    let f = finish(
        memshadow_in(dir.path())
            .args(["run", "--quiet", "--lib"])
            .arg(shim_lib())
            .args(["--", "true"]),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
}

#[test]
fn stats_watch_has_a_minimum_period() {
    let dir = temp_dir("sec");
    let f = finish(
        memshadow_in(dir.path()).args(["stats", "1", "--watch", "0.000000001"]),
        LIMIT,
    );
    assert_refused(&f, 2, &["at least 0.05 seconds"]);
}

/// With a snapshot every 5 ms and 2 versions kept, a version lives about 10 ms, far less
/// than writing an image of 128 MiB takes: `image` pins the version it writes, so the
/// image completes. (The version may be gone before `image` has pinned it: then it is
/// refused at once, with no file, and the test asks again.)
#[test]
fn image_of_a_fast_snapshotting_process_completes_with_its_version_pinned() {
    let python = require_tool("python3", "python3");
    let run = temp_dir("sec");
    let mut c = Command::new(python);
    c.args([
        "-c",
        "import time\nb = b'x' * (128 << 20)\ntime.sleep(60)\n",
    ]);
    clean_env_in(&mut c, run.path());
    c.env("LD_PRELOAD", shim_lib())
        .env("MEMSHADOW_INTERVAL_MS", "5")
        .env("MEMSHADOW_MAX_VERSIONS", "2")
        .stdout(Stdio::null());
    let guard = Guard::spawn(&mut c, Duration::from_secs(90));
    let pid = guard.pid().to_string();
    // Ready once the 128 MiB are tracked.
    let tracked = || {
        let f = finish(
            memshadow_in(run.path()).args(["stats", "--json", &pid]),
            LIMIT,
        );
        serde_json::from_str::<serde_json::Value>(&f.stdout)
            .ok()
            .and_then(|j| j["tracked_bytes"].as_u64())
            .is_some_and(|b| b >= 128 << 20)
    };
    assert!(
        wait_until(Duration::from_secs(20), tracked),
        "the 128 MiB are not tracked"
    );
    let out = run.path().join("pinned.img");
    let mut refused_early = Vec::new();
    for _ in 0..20 {
        let f = finish(memshadow_in(run.path()).args(["snapshot", &pid]), LIMIT);
        assert!(f.status.success(), "{f:#?}");
        let v = f.stdout.trim().to_string();
        let f = finish(
            memshadow_in(run.path())
                .args(["image", &pid, "--version", &v])
                .arg("--out")
                .arg(&out),
            LIMIT,
        );
        if f.status.success() {
            let mut reader = ImageReader::new(fs::File::open(&out).unwrap()).unwrap();
            let mut total = 0;
            while let Some(r) = reader.next_region().expect("a complete image") {
                total += r.len;
            }
            assert!(total >= 128 << 20, "only {total} bytes in the image");
            return;
        }
        let line = f.stderr_line().to_string();
        assert!(
            line.contains("is no longer retained") && !line.contains("(in region"),
            "the image failed part-way although its version was pinned: {f:#?}"
        );
        assert!(!out.exists(), "{f:#?}");
        refused_early.push(line);
    }
    panic!("every version was gone before it could be pinned: {refused_early:#?}");
}
