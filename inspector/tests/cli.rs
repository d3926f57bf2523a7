//! Tests of the `memshadow` command line, run against the release build:
//! `cargo build --release --workspace && cargo test --release --workspace`.
//!
//! Every test uses its own `MEMSHADOW_DIR`, and every process it starts is killed if it
//! outlives its time limit.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::{
    c_program, clean_env, clean_env_in, finish, is_root, memshadow_bin, shim_lib, spawn_shimmed,
    temp_dir, wait_until, Guard,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A command for the memshadow binary with a clean environment and its own run-time dir.
fn memshadow(dir: &Path) -> Command {
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, dir);
    c
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let dir = temp_dir("cli");
    for args in [
        &["--no-such-option"][..],
        &["frobnicate"],
        &["run"],
        &["run", "--"],
        &["stats"],
        &["stats", "not-a-pid"],
        &["stats", "1", "--watch", "0"],
        &["stats", "1", "--watch", "-1"],
        &["stats", "1", "--watch", "soon"],
        &["ps", "extra"],
    ] {
        let f = finish(memshadow(dir.path()).args(args), LIMIT);
        assert_eq!(f.status.code(), Some(2), "{args:?}: {f:#?}");
        f.stderr_line();
    }
    let f = finish(
        memshadow(dir.path()).args(["stats", "1", "--watch", "0"]),
        LIMIT,
    );
    assert!(f.stderr.contains("at least 0.05 seconds"), "{f:#?}");
}

#[test]
fn every_subcommand_has_help() {
    let dir = temp_dir("cli");
    let top = finish(memshadow(dir.path()).arg("--help"), LIMIT);
    assert!(top.status.success(), "{top:#?}");
    assert!(
        !top.stdout.contains("demo-workload"),
        "hidden command shown: {top:#?}"
    );
    for sub in ["run", "ps", "stats"] {
        assert!(top.stdout.contains(sub), "{top:#?}");
        let f = finish(memshadow(dir.path()).args([sub, "--help"]), LIMIT);
        assert!(f.status.success(), "{sub}: {f:#?}");
        assert!(f.stdout.contains("Usage: memshadow"), "{sub}: {f:#?}");
    }
}

#[test]
fn stats_of_a_nonexistent_pid() {
    let dir = temp_dir("cli");
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (2..pid_max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let f = finish(
        memshadow(dir.path()).args(["stats", &pid.to_string()]),
        LIMIT,
    );
    assert_eq!(f.status.code(), Some(1), "{f:#?}");
    assert_eq!(
        f.stderr_line(),
        format!("memshadow: no process with pid {pid}")
    );
}

#[test]
fn stats_of_a_process_without_the_shim() {
    let dir = temp_dir("cli");
    let mut c = Command::new("sleep");
    c.arg("5");
    clean_env_in(&mut c, dir.path());
    let sleeper = Guard::spawn(&mut c, LIMIT);
    let pid = sleeper.pid();
    let f = finish(
        memshadow(dir.path()).args(["stats", &pid.to_string()]),
        LIMIT,
    );
    assert_eq!(f.status.code(), Some(1), "{f:#?}");
    assert_eq!(
        f.stderr_line(),
        format!("memshadow: process {pid} (sleep) is not running under memshadow")
    );
}

/// Builds a statically linked program from C source `code` in `dir`.
fn build_static(dir: &Path, name: &str, code: &str) -> PathBuf {
    let libc_a = Path::new("/usr/lib/x86_64-linux-gnu/libc.a");
    assert!(
        libc_a.exists(),
        "{} is missing: install Debian's libc6-dev (apt-get install libc6-dev) to build the static test program",
        libc_a.display()
    );
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    fs::write(&src, code).unwrap();
    let mut gcc = Command::new("gcc");
    clean_env(&mut gcc);
    let cc = finish(
        gcc.arg("-static").arg("-o").arg(&exe).arg(&src),
        Duration::from_secs(60),
    );
    assert!(cc.status.success(), "gcc -static failed: {cc:#?}");
    exe
}

#[test]
fn run_rejects_a_statically_linked_program() {
    let dir = temp_dir("cli");
    let exe = build_static(dir.path(), "static-prog", "int main(void) { return 0; }\n");
    let f = finish(memshadow(dir.path()).arg("run").arg("--").arg(&exe), LIMIT);
    assert_eq!(f.status.code(), Some(2), "{f:#?}");
    assert_eq!(
        f.stderr_line(),
        format!(
            "memshadow: cannot be preloaded: {} is statically linked",
            exe.display()
        )
    );
}

#[test]
fn run_rejects_missing_and_non_executable_programs() {
    let dir = temp_dir("cli");
    let f = finish(
        memshadow(dir.path()).args(["run", "--", "memshadow-no-such-program"]),
        LIMIT,
    );
    assert_eq!(f.status.code(), Some(2), "{f:#?}");
    assert!(f.stderr_line().contains("command not found"), "{f:#?}");
    let data = dir.path().join("data.txt");
    fs::write(&data, "hello\n").unwrap();
    let f = finish(memshadow(dir.path()).arg("run").arg(&data), LIMIT);
    assert_eq!(f.status.code(), Some(2), "{f:#?}");
    assert!(f.stderr_line().contains("is not executable"), "{f:#?}");
}

#[test]
fn run_reports_a_missing_library() {
    let dir = temp_dir("cli");
    let f = finish(
        memshadow(dir.path()).args(["run", "--lib", "/no/such/libmemshadow.so", "--", "true"]),
        LIMIT,
    );
    assert_eq!(f.status.code(), Some(1), "{f:#?}");
    let line = f.stderr_line();
    assert!(line.contains("/no/such/libmemshadow.so"), "{line}");
    assert!(line.contains("cargo build --release"), "{line}");
}

#[test]
fn run_passes_the_exit_code_through() {
    let dir = temp_dir("cli");
    let f = finish(
        memshadow(dir.path()).args(["run", "--", "sh", "-c", "exit 7"]),
        LIMIT,
    );
    assert_eq!(f.status.code(), Some(7), "{f:#?}");
    assert!(f.stderr.contains("sh (pid "), "{f:#?}");
    assert!(f.stderr.contains("exited 7 after"), "{f:#?}");
    let q = finish(
        memshadow(dir.path()).args(["run", "--quiet", "--", "sh", "-c", "exit 3"]),
        LIMIT,
    );
    assert_eq!(q.status.code(), Some(3), "{q:#?}");
    assert_eq!(q.stderr, "", "{q:#?}");
}

#[test]
fn run_dies_of_the_signal_that_killed_the_program() {
    let dir = temp_dir("cli");
    let f = finish(
        memshadow(dir.path()).args(["run", "--", "sh", "-c", "kill -TERM $$"]),
        LIMIT,
    );
    assert_eq!(f.status.signal(), Some(libc::SIGTERM), "{f:#?}");
    assert!(f.stderr.contains("was killed by SIGTERM"), "{f:#?}");
}

#[test]
fn run_ignores_sigint_and_forwards_sigterm() {
    let dir = temp_dir("cli");
    let mut c = memshadow(dir.path());
    c.args([
        "run",
        "--quiet",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 30",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut launcher = Guard::spawn(&mut c, LIMIT);
    let mut ready = String::new();
    BufReader::new(launcher.child().stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let pid = launcher.pid() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions; pid is our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    thread::sleep(Duration::from_millis(300));
    assert!(
        launcher.child().try_wait().unwrap().is_none(),
        "SIGINT (sent to the launcher only) ended the run"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = launcher.wait(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[test]
fn run_prepends_to_an_existing_ld_preload() {
    let dir = temp_dir("cli");
    let f = finish(
        memshadow(dir.path())
            .env("LD_PRELOAD", "/some/existing.so")
            .args(["run", "--quiet", "--", "sh", "-c", "echo \"$LD_PRELOAD\""]),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    assert_eq!(
        f.stdout.trim_end(),
        format!("{}:/some/existing.so", shim_lib().display()),
        "{f:#?}"
    );
}

#[test]
fn run_says_when_the_shim_did_not_attach() {
    let dir = temp_dir("cli");
    let src = dir.path().join("empty.c");
    let lib = dir.path().join("libempty.so");
    // Passes for the shim (it exports the shim's symbol) but publishes nothing.
    fs::write(
        &src,
        "long long memshadow_snapshot_v1(void) { return -1; }\n",
    )
    .unwrap();
    let mut gcc = Command::new("gcc");
    clean_env(&mut gcc);
    let cc = finish(
        gcc.args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&src),
        Duration::from_secs(60),
    );
    assert!(cc.status.success(), "gcc failed: {cc:#?}");
    let json = dir.path().join("stats.json");
    let f = finish(
        memshadow(dir.path())
            .arg("run")
            .arg("--lib")
            .arg(&lib)
            .arg("--stats-json")
            .arg(&json)
            .args(["--", "true"]),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    assert!(
        f.stderr_line().contains("the shim did not attach"),
        "{f:#?}"
    );
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["shim_attached"], false, "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(v["allocs"].is_null(), "{v}");
    assert!(v["prefetch_cpu_s"].is_null(), "{v}");
    assert_eq!(v["processes"], serde_json::json!([]), "{v}");
}

#[test]
fn run_writes_stats_json() {
    let dir = temp_dir("cli");
    let json = dir.path().join("stats.json");
    let f = finish(
        memshadow(dir.path())
            .arg("run")
            .arg("--stats-json")
            .arg(&json)
            .args(["--", "python3", "-c", "print(1)"]),
        Duration::from_secs(60),
    );
    assert!(f.status.success(), "{f:#?}");
    assert_eq!(f.stdout, "1\n", "{f:#?}");
    let text = fs::read_to_string(&json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "pid",
        "command",
        "exit_code",
        "signal",
        "wall_s",
        "shim_attached",
        "allocs",
        "frees",
        "live_bytes",
        "tracked_regions",
        "tracked_bytes",
        "prefetch_cpu_us",
        "prefetch_cpu_s",
        "processes",
    ] {
        assert!(v.get(key).is_some(), "no {key:?} in {text}");
    }
    // The prefetch thread's CPU time also in seconds, a float, for scripts.
    assert!(v["prefetch_cpu_s"].is_f64(), "{text}");
    assert_eq!(v["shim_attached"], true, "{text}");
    assert_eq!(v["exit_code"], 0, "{text}");
    assert!(v["signal"].is_null(), "{text}");
    assert!(v["wall_s"].as_f64().unwrap() > 0.0, "{text}");
    assert!(v["allocs"].as_u64().unwrap() > 0, "{text}");
    assert!(v["tracked_bytes"].as_u64().unwrap() > 0, "{text}");
    assert!(v["tracked_regions"].as_u64().unwrap() > 0, "{text}");
    let processes = v["processes"].as_array().unwrap();
    let main = processes
        .iter()
        .find(|p| p["pid"] == v["pid"])
        .unwrap_or_else(|| panic!("main process missing from processes: {text}"));
    assert_eq!(main["state"], "exited", "{text}");
    assert_eq!(main["tracked_bytes"], v["tracked_bytes"], "{text}");
    assert_eq!(main["prefetch_cpu_s"], v["prefetch_cpu_s"], "{text}");
    // The run collected every page it produced.
    assert!(no_run_files(dir.path()), "files left in the run-time dir");
}

fn no_run_files(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().flatten().all(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        !name.ends_with(".stats") && !name.ends_with(".sock")
    })
}

#[test]
fn run_collects_shimmed_descendants() {
    let dir = temp_dir("cli");
    let json = dir.path().join("stats.json");
    let f = finish(
        memshadow(dir.path())
            .arg("run")
            .arg("--stats-json")
            .arg(&json)
            .args(["--", "sh", "-c", "cat /dev/null | sort; true"]),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    assert!(f.stderr.contains("more shimmed process"), "{f:#?}");
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let commands: Vec<&str> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["command"].as_str().unwrap())
        .collect();
    assert!(commands.iter().any(|c| c.starts_with("cat")), "{v}");
    assert!(commands.iter().any(|c| c.starts_with("sort")), "{v}");
    assert!(no_run_files(dir.path()), "files left in the run-time dir");
}

/// A file mapped into this process until dropped, as a shimmed process maps its page.
struct MappedFile {
    addr: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    fn new(path: &Path) -> MappedFile {
        use std::os::fd::AsRawFd;
        let f = fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: a new read-only shared mapping of a file we opened; nothing else is
        // touched, and Drop unmaps exactly this range.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
        MappedFile { addr, len }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, which nothing references any more.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Builds a stats page the way the shim lays it out (format/src/stats.rs).
fn fake_page(pid: u32, state: u32, start_time_ticks: u64, run_id: u64, command: &str) -> Vec<u8> {
    use memshadow_format::stats::{STATS_LAYOUT_VERSION, STATS_MAGIC, STATS_PAGE_SIZE};
    let mut p = vec![0u8; STATS_PAGE_SIZE];
    p[0..8].copy_from_slice(&STATS_MAGIC);
    p[8..12].copy_from_slice(&STATS_LAYOUT_VERSION.to_le_bytes());
    p[12..16].copy_from_slice(&state.to_le_bytes());
    p[16..20].copy_from_slice(&pid.to_le_bytes());
    // SAFETY: getuid has no preconditions and cannot fail.
    p[20..24].copy_from_slice(&unsafe { libc::getuid() }.to_le_bytes());
    p[24..32].copy_from_slice(&start_time_ticks.to_le_bytes());
    p[32..40].copy_from_slice(&run_id.to_le_bytes());
    p[64..64 + command.len()].copy_from_slice(command.as_bytes());
    // counters[1] = tracked_bytes; stripe 0: allocs, frees, alloc_bytes, free_bytes.
    p[512 + 8..512 + 16].copy_from_slice(&(3u64 << 20).to_le_bytes());
    p[2048..2056].copy_from_slice(&5u64.to_le_bytes());
    p[2064..2072].copy_from_slice(&4096u64.to_le_bytes());
    p
}

fn start_time_of(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn dead_pid() -> u32 {
    let mut c = Command::new("true");
    clean_env(&mut c);
    let g = Guard::spawn(&mut c, LIMIT);
    let pid = g.pid();
    g.wait(LIMIT);
    pid
}

#[test]
fn ps_lists_live_pages_and_removes_leftovers() {
    let dir = temp_dir("cli");
    let d = dir.path();
    let me = std::process::id();
    let my_start = start_time_of(me);
    let (running, exited) = (1, 2);
    // A live process: this test (its page is fake, but its pid and start time are real,
    // and it maps the page as a shimmed process does).
    let live_page = d.join(format!("{me}.stats"));
    fs::write(&live_page, fake_page(me, running, my_start, 0, "cli-test")).unwrap();
    let _mapped = MappedFile::new(&live_page);
    // A dead process, with its socket.
    let dead = dead_pid();
    fs::write(
        d.join(format!("{dead}.stats")),
        fake_page(dead, running, 1, 0, "dead"),
    )
    .unwrap();
    fs::write(d.join(format!("{dead}.sock")), "").unwrap();
    // A socket whose process is gone, without a page.
    let dead2 = dead_pid();
    fs::write(d.join(format!("{dead2}.sock")), "").unwrap();
    // An exited process whose launcher (this test) is alive: kept for the launcher.
    let dead3 = dead_pid();
    fs::write(
        d.join(format!("{dead3}.stats")),
        fake_page(dead3, exited, 1, u64::from(me), "collected-later"),
    )
    .unwrap();

    let f = finish(memshadow(d).args(["ps", "--json"]), LIMIT);
    assert!(f.status.success(), "{f:#?}");
    assert_eq!(
        f.stderr_line(),
        "memshadow: removed the leftover files of 2 dead processes"
    );
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["pid"], me, "{v}");
    assert_eq!(list[0]["command"], "cli-test", "{v}");
    assert_eq!(list[0]["tracked_bytes"], 3 << 20, "{v}");
    assert_eq!(list[0]["live_bytes"], 4096, "{v}");
    assert_eq!(list[0]["allocs"], 5, "{v}");
    assert!(!d.join(format!("{dead}.stats")).exists());
    assert!(!d.join(format!("{dead}.sock")).exists());
    assert!(!d.join(format!("{dead2}.sock")).exists());
    assert!(d.join(format!("{dead3}.stats")).exists());

    let text = finish(memshadow(d).arg("ps"), LIMIT);
    assert!(text.status.success(), "{text:#?}");
    assert_eq!(text.stderr, "", "{text:#?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{text:#?}");
    for column in ["PID", "COMMAND", "TRACKED", "LIVE", "ALLOCS"] {
        assert!(lines[0].contains(column), "{text:#?}");
    }
    assert!(
        lines[1].contains("cli-test") && lines[1].contains("3.0 MiB"),
        "{text:#?}"
    );

    fs::remove_file(d.join(format!("{me}.stats"))).unwrap();
    let empty = finish(memshadow(d).arg("ps"), LIMIT);
    assert_eq!(empty.stdout, "no processes are running under memshadow\n");
    let empty = finish(memshadow(d).args(["ps", "--json"]), LIMIT);
    assert_eq!(empty.stdout.trim(), "[]");
}

#[test]
fn ps_drops_a_process_that_execd_a_program_without_the_shim() {
    // Same pid and start time after exec, but the new program has no shim: its old
    // page and socket must not make it look shimmed.
    let dir = temp_dir("cli");
    let sleeper = build_static(
        dir.path(),
        "static-sleep",
        "#include <unistd.h>\nint main(void) { sleep(20); return 0; }\n",
    );
    let script = format!("sleep 0.5; exec {}", sleeper.display());
    let guard = spawn_shimmed(dir.path(), LIMIT, &["/bin/sh", "-c", &script]);
    let pid = guard.pid();
    assert!(
        wait_until(Duration::from_secs(10), || {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "static-sleep")
        }),
        "the shell did not exec the static program"
    );
    let ps = finish(memshadow(dir.path()).args(["ps", "--json"]), LIMIT);
    assert_eq!(ps.stdout.trim(), "[]", "{ps:#?}");
    assert!(
        !dir.path().join(format!("{pid}.stats")).exists(),
        "ps left the stale page of {pid}"
    );
    let st = finish(
        memshadow(dir.path()).args(["stats", &pid.to_string()]),
        LIMIT,
    );
    assert_eq!(st.status.code(), Some(1), "{st:#?}");
    assert_eq!(
        st.stderr_line(),
        format!("memshadow: process {pid} (static-sleep) is not running under memshadow")
    );
}

/// `tracked_regions` and `tracked_bytes` of a live process, via `memshadow stats --json`.
fn tracked(dir: &Path, pid: u32) -> (u64, u64) {
    let f = finish(
        memshadow(dir).args(["stats", "--json", &pid.to_string()]),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    (
        v["tracked_regions"].as_u64().unwrap(),
        v["tracked_bytes"].as_u64().unwrap(),
    )
}

#[test]
fn thread_stacks_are_tracked_only_with_heap_plus_stacks() {
    let prog = c_program("stack_threads");
    let threads = 8u64;
    let mut seen = Vec::new();
    for mode in ["heap", "heap+stacks"] {
        let dir = temp_dir("cli");
        let mut c = Command::new(&prog);
        c.arg(threads.to_string());
        clean_env_in(&mut c, dir.path());
        c.env("LD_PRELOAD", shim_lib())
            .env("MEMSHADOW_TRACK", mode)
            .stdout(Stdio::piped());
        let mut guard = Guard::spawn(&mut c, LIMIT);
        let mut line = String::new();
        BufReader::new(guard.child().stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n", "stack_threads under {mode}");
        seen.push((mode, tracked(dir.path(), guard.pid())));
        let pid = nix::unistd::Pid::from_raw(guard.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap(); // threads finish
        assert!(guard.wait(LIMIT).success(), "stack_threads under {mode}");
    }
    let (heap, stacks) = (seen[0].1, seen[1].1);
    // Each thread has a 1 MiB stack; the main thread's stack comes on top.
    assert!(stacks.0 >= heap.0 + threads, "{seen:?}");
    assert!(stacks.1 >= heap.1 + threads * (1 << 20), "{seen:?}");
}

#[test]
fn ps_and_stats_see_a_shimmed_process() {
    let dir = temp_dir("cli");
    let sleeper = spawn_shimmed(dir.path(), LIMIT, &["sleep", "20"]);
    let pid = sleeper.pid();
    let ps = finish(memshadow(dir.path()).args(["ps", "--json"]), LIMIT);
    let v: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    assert_eq!(v[0]["pid"], pid, "{ps:#?}");
    let text = finish(
        memshadow(dir.path()).args(["stats", &pid.to_string()]),
        LIMIT,
    );
    assert!(text.status.success(), "{text:#?}");
    assert!(text.stdout.contains("tracked_bytes"), "{text:#?}");
    assert!(text.stdout.contains(" bytes)"), "{text:#?}");
    let json = finish(
        memshadow(dir.path()).args(["stats", "--json", &pid.to_string()]),
        LIMIT,
    );
    assert!(json.status.success(), "{json:#?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["pid"], pid, "{v}");
    assert!(v["command"].as_str().unwrap().starts_with("sleep"), "{v}");
    assert!(v["tracked_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["allocs"].is_u64(), "{v}");
    assert!(v["prefetch_cpu_s"].is_f64(), "{v}");
}

#[test]
fn stats_watch_ends_when_the_process_exits() {
    let dir = temp_dir("cli");
    let sleeper = spawn_shimmed(dir.path(), LIMIT, &["sleep", "1.5"]);
    let pid = sleeper.pid();
    let f = finish(
        memshadow(dir.path()).args(["stats", "--json", "--watch", "0.2", &pid.to_string()]),
        LIMIT,
    );
    assert!(f.status.success(), "{f:#?}");
    assert!(f.stderr_line().contains("exited"), "{f:#?}");
    let objects: Vec<serde_json::Value> = f
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(objects.len() >= 2, "{f:#?}");
    assert!(objects.iter().all(|o| o["pid"] == pid), "{f:#?}");
    drop(sleeper);
}

#[test]
fn stats_refuses_another_users_process() {
    let dir = temp_dir("cli");
    if !is_root() {
        // Without root we cannot start a process as someone else; init is not ours.
        let f = finish(memshadow(dir.path()).args(["stats", "1"]), LIMIT);
        assert_eq!(f.status.code(), Some(1), "{f:#?}");
        assert!(f.stderr_line().contains("belongs to uid"), "{f:#?}");
        return;
    }
    let sleeper = spawn_shimmed(dir.path(), LIMIT, &["sleep", "20"]);
    let pid = sleeper.pid();
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(memshadow_bin())
        .args(["stats", &pid.to_string()]);
    clean_env_in(&mut c, dir.path());
    let f = finish(&mut c, LIMIT);
    assert_eq!(f.status.code(), Some(1), "{f:#?}");
    assert_eq!(
        f.stderr_line(),
        format!(
            "memshadow: process {pid} belongs to uid 0; you can only inspect your own processes"
        )
    );
}

/// No file of the demo's (its report file, put in TMPDIR) is left in `dir`.
fn no_demo_files(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().flatten().all(|e| {
        !e.file_name()
            .to_string_lossy()
            .starts_with("memshadow-demo-")
    })
}

/// The versions on the demo's live lines (`memshadow [ 1.0 s]: ... | v2: ...`).
fn demo_versions(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("  memshadow ["))
        .filter_map(|l| l.split_once(" | v"))
        .map(|(_, rest)| {
            let (v, _) = rest.split_once(':').expect("a version ends with ':'");
            v.parse()
                .unwrap_or_else(|_| panic!("bad version in {rest:?}"))
        })
        .collect()
}

/// The demo's look back: (version, generation, newest) per line
/// `    version  5 (taken at  2.6 s): "generation 25 at 2.5 s, phase 3/4"`.
fn demo_look_back(stdout: &str) -> Vec<(u64, u64, bool)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("    version "))
        .filter(|l| l.contains(": \"generation "))
        .map(|l| {
            let version = l.split_whitespace().next().unwrap().parse().unwrap();
            let (_, after) = l.split_once("\"generation ").unwrap();
            let generation = after.split_whitespace().next().unwrap().parse().unwrap();
            (version, generation, l.ends_with("(newest)"))
        })
        .collect()
}

#[test]
fn demo_takes_snapshots_and_reads_the_past_back() {
    let dir = temp_dir("cli");
    let started = std::time::Instant::now();
    let f = finish(
        memshadow(dir.path()).env("TMPDIR", dir.path()),
        Duration::from_secs(30),
    );
    let wall = started.elapsed();
    assert!(f.status.success(), "{f:#?}");
    assert!(f.stdout.contains("workload: phase 1/4"), "{f:#?}");
    assert!(f.stdout.contains("memshadow ["), "no live line: {f:#?}");
    assert!(f.stdout.contains("What happened"), "{f:#?}");
    assert!(f.stdout.contains("memshadow run -- "), "{f:#?}");
    for command in [
        "memshadow snapshot PID",
        "memshadow read PID --version V ADDR LEN",
        "memshadow image PID --version V --out FILE",
        "memshadow run --record DIR -- your-program",
        "memshadow log DIR",
    ] {
        assert!(f.stdout.contains(command), "no {command:?}: {f:#?}");
    }
    assert!(no_run_files(dir.path()), "files left in the run-time dir");
    assert!(no_demo_files(dir.path()), "the demo left its report file");
    assert!(
        !f.stdout.contains("the demo did not answer"),
        "the workload waited in vain: {f:#?}"
    );
    assert!(wall < Duration::from_secs(15), "took {wall:?}: {f:#?}");
    if f.stdout.contains("no snapshots in this demo: ") && !is_root() {
        // userfaultfd is refused to us: the demo says so and shows statistics only.
        eprintln!("snapshots are not available to this user; checked the statistics only");
        return;
    }

    let versions = demo_versions(&f.stdout);
    assert!(versions.len() >= 3, "{versions:?}: {f:#?}");
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions do not increase: {versions:?}"
    );
    let back = demo_look_back(&f.stdout);
    assert!(
        back.len() >= 3,
        "too few versions read back: {back:?}: {f:#?}"
    );
    let (newest_version, newest_generation, newest) = *back.last().unwrap();
    assert!(
        newest,
        "the last version read back is not marked newest: {f:#?}"
    );
    assert_eq!(Some(&newest_version), versions.last(), "{f:#?}");
    for w in back.windows(2) {
        assert!(
            w[0].0 < w[1].0 && w[0].1 < w[1].1,
            "an older version does not show an older generation: {back:?}: {f:#?}"
        );
    }
    assert!(back.iter().all(|&(_, g, _)| g <= newest_generation));
    // The first version is gone by then (4 are kept) and the demo says so.
    assert!(
        f.stdout.contains("version 1 is no longer retained"),
        "{f:#?}"
    );
    // Versions the default `auto` kept in holders are counted on the live lines and
    // explained after, never one without the other.
    assert_eq!(
        f.stdout.contains(" by holders, "),
        f.stdout.contains("held by the kernel instead"),
        "{f:#?}"
    );
}

/// Where userfaultfd is refused (uid 65534 with vm.unprivileged_userfaultfd=0), the
/// demo says why in one line, shows the statistics and exits 0.
#[test]
fn demo_without_snapshots_still_shows_statistics() {
    let open_to_others = fs::metadata("/dev/userfaultfd")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 != 0)
        .unwrap_or(false);
    let unprivileged = fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map_or(true, |v| v.trim() != "0");
    if !is_root() || open_to_others || unprivileged {
        eprintln!("skipped: needs root, and userfaultfd refused to other users");
        return;
    }
    let dir = temp_dir("cli");
    nix::unistd::chown(
        dir.path(),
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    // The build may sit where uid 65534 cannot look (a clone in a 0700 directory): run
    // copies of memshadow and the shim, side by side in the directory it owns.
    let bin = dir.path().join("memshadow");
    fs::copy(memshadow_bin(), &bin).unwrap();
    fs::copy(common::shim_lib(), dir.path().join("libmemshadow.so")).unwrap();
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin);
    clean_env_in(&mut c, dir.path());
    c.env("TMPDIR", dir.path());
    let f = finish(&mut c, Duration::from_secs(30));
    assert!(f.status.success(), "{f:#?}");
    let refusals: Vec<&str> = f
        .stdout
        .lines()
        .filter(|l| l.starts_with("  memshadow: no snapshots in this demo: "))
        .collect();
    assert_eq!(refusals.len(), 1, "{f:#?}");
    assert!(refusals[0].contains("userfaultfd"), "{f:#?}");
    assert!(f.stdout.contains("memshadow ["), "no live line: {f:#?}");
    assert!(demo_versions(&f.stdout).is_empty(), "{f:#?}");
    assert!(demo_look_back(&f.stdout).is_empty(), "{f:#?}");
    assert!(
        f.stdout.contains("Snapshots could not be taken here"),
        "{f:#?}"
    );
    assert!(!f.stdout.contains("the demo did not answer"), "{f:#?}");
    assert!(no_run_files(dir.path()), "files left in the run-time dir");
    assert!(no_demo_files(dir.path()), "the demo left its report file");
}

/// A client finds a process by its stats page and then connects to its control socket
/// (`run --record` does so the moment the page appears, every 5 ms): the socket must be
/// there first. It was made second, and a recorder under CI load once found the page
/// and no socket ("does not answer on ...sock (No such file or directory)"). The run
/// directory's inotify events give the order.
#[test]
fn the_control_socket_is_made_before_the_stats_page() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dir = common::temp_dir("order");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).expect("inotify");
    inotify
        .add_watch(
            dir.path(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )
        .expect("watch the run directory");
    let running = common::shimmed::Running::start(
        &common::c_program("stack_threads"),
        &["1"],
        dir.path(),
        &[],
        Duration::from_secs(10),
        Duration::from_secs(60),
    );
    let pid = running.pid();
    let mut created = Vec::new();
    while let Ok(events) = inotify.read_events() {
        created.extend(
            events
                .into_iter()
                .filter_map(|e| e.name.map(|n| n.to_string_lossy().into_owned())),
        );
    }
    let at = |name: String| created.iter().position(|n| *n == name);
    let (sock, page) = (at(format!("{pid}.sock")), at(format!("{pid}.stats")));
    assert!(
        sock.is_some() && page.is_some() && sock < page,
        "made in this order: {created:?}"
    );
    running.stop(Duration::from_secs(10));
}
