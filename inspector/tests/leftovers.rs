//! Files left in the run-time directory: processes that end with `_exit`/`_Exit` remove
//! their stats page and socket; a shim that starts removes those of processes that are
//! gone (never a symlink, a FIFO, or a live process's); a `MEMSHADOW_RUN_ID` that does not
//! name a running `memshadow run` is ignored with one line.
//!
//! Needs `cargo build --release --workspace` first, a C compiler (`cc`) and `python3`.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    assert_native_ok, assert_same_behaviour, c_program, clean_env_in, require_tool,
    run_with_timeout, shim_lib, temp_dir, Prog,
};

const LIMIT: Duration = Duration::from_secs(120);

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Runs `program args` under the shim with `MEMSHADOW_DIR=dir` and `extra` variables.
fn shimmed(
    dir: &Path,
    program: &Path,
    args: &[&str],
    extra: &[(&str, &str)],
) -> std::process::Output {
    let mut c = Command::new(program);
    c.args(args);
    clean_env_in(&mut c, dir);
    c.env("LD_PRELOAD", shim_lib());
    for (k, v) in extra {
        c.env(k, v);
    }
    run_with_timeout(&mut c, LIMIT)
}

#[test]
fn children_that_exit_with_underscore_exit_leave_nothing() {
    let prog = c_program("fork_exit_many");
    let native = Prog::new(&prog).timeout(LIMIT).run_native();
    assert_native_ok("fork_exit_many", &native, 0);
    for interval in ["0", "10"] {
        let dir = temp_dir("left");
        let out = shimmed(
            dir.path(),
            &prog,
            &["200"],
            &[("MEMSHADOW_INTERVAL_MS", interval)],
        );
        assert_same_behaviour("fork_exit_many", &native, &out, true);
        assert_eq!(
            names(dir.path()),
            Vec::<String>::new(),
            "200 children ending in _exit/_Exit (snapshots every {interval} ms) left files"
        );
    }
}

#[test]
fn under_memshadow_run_the_launcher_collects_them_and_removes_everything() {
    let prog = Prog::new(c_program("fork_exit_many"))
        .arg("50")
        .timeout(LIMIT);
    let native = prog.run_native();
    assert_native_ok("fork_exit_many", &native, 0);
    let run = prog.run_memshadow();
    assert_same_behaviour(
        "fork_exit_many (memshadow run)",
        &native,
        &run.output,
        false,
    );
    run.assert_attached(&native, true);
    // Every child kept its page for the launcher (its run id was honoured: children
    // starting later swept the directory and left those pages alone), which read them
    // all: 1 + 50 processes.
    assert_eq!(
        run.processes().len(),
        51,
        "the launcher should have read the parent's and the 50 children's pages"
    );
    assert!(
        !String::from_utf8_lossy(&run.output.stderr).contains("MEMSHADOW_RUN_ID"),
        "the run id was refused: {}",
        String::from_utf8_lossy(&run.output.stderr)
    );
}

#[test]
fn a_multiprocessing_pool_with_one_task_per_child_leaves_nothing() {
    let python = require_tool("python3", "python3");
    let script = "import multiprocessing as mp\n\
                  def f(x):\n    return x * x\n\
                  if __name__ == '__main__':\n\
                  \x20   mp.set_start_method('fork')\n\
                  \x20   p = mp.Pool(2, maxtasksperchild=1)\n\
                  \x20   print(sum(p.map(f, range(40), chunksize=1)))\n\
                  \x20   p.close()\n\
                  \x20   p.join()\n";
    let native = Prog::new(&python)
        .args(["-c", script])
        .timeout(LIMIT)
        .run_native();
    assert_native_ok("python3 multiprocessing", &native, 0);
    let dir = temp_dir("left");
    let out = shimmed(dir.path(), &python, &["-c", script], &[]);
    assert_same_behaviour("python3 multiprocessing", &native, &out, true);
    assert_eq!(
        names(dir.path()),
        Vec::<String>::new(),
        "workers left files"
    );
}

#[test]
fn a_run_id_that_is_not_a_running_launcher_is_ignored_with_one_line() {
    let prog = c_program("fork_exit_many");
    let native = Prog::new(&prog).arg("3").timeout(LIMIT).run_native();
    assert_native_ok("fork_exit_many", &native, 0);
    // pid 1 runs, and is no memshadow run; the token is well formed but matches nothing.
    for extra in [
        &[("MEMSHADOW_RUN_ID", "1")][..],
        &[
            ("MEMSHADOW_RUN_ID", "1"),
            ("MEMSHADOW_RUN_TOKEN", "0123456789abcdef0123456789abcdef"),
        ],
    ] {
        let dir = temp_dir("left");
        let out = shimmed(dir.path(), &prog, &["3"], extra);
        assert_eq!(out.stdout, native.stdout, "{extra:?}");
        assert_eq!(out.status.code(), Some(0), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{extra:?}: expected one line:\n{stderr}");
        assert!(
            lines[0].starts_with("memshadow: MEMSHADOW_RUN_ID=1 is not a running memshadow run")
                && lines[0].contains("ignored"),
            "{}",
            lines[0]
        );
        assert_eq!(
            names(dir.path()),
            Vec::<String>::new(),
            "{extra:?}: the pages were kept for a launcher that is not one"
        );
    }
}

/// A pid that no process has now.
fn unused_pid() -> u32 {
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (2..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

#[test]
fn a_starting_shim_removes_files_of_gone_processes_and_nothing_else() {
    let dir = temp_dir("left");
    let d = dir.path();
    let dead = unused_pid();
    // Files of a process that is gone: an empty page and a socket-named file.
    fs::write(d.join(format!("{dead}.stats")), b"").unwrap();
    fs::write(d.join(format!("{dead}.sock")), b"").unwrap();
    // A launcher's run file whose launcher is gone.
    fs::write(
        d.join(format!("{dead}.run")),
        format!("memshadow-run {dead} 1 0123456789abcdef0123456789abcdef\n"),
    )
    .unwrap();
    // Not ours to remove: a symlink, a FIFO, files of a live process (this test), and
    // names that are no process's.
    let target = d.join("target");
    fs::write(&target, b"keep").unwrap();
    symlink(&target, d.join(format!("{}.stats", dead - 1))).unwrap();
    nix::unistd::mkfifo(
        &d.join(format!("{}.stats", dead - 2)),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let me = std::process::id();
    fs::write(d.join(format!("{me}.sock")), b"").unwrap();
    fs::write(d.join("notes.txt"), b"").unwrap();

    let truth = require_tool("true", "coreutils");
    let out = shimmed(d, &truth, &[], &[]);
    assert!(out.status.success(), "{out:?}");
    let mut want = vec![
        format!("{}.stats", dead - 1),
        format!("{}.stats", dead - 2),
        format!("{me}.sock"),
        "notes.txt".to_string(),
        "target".to_string(),
    ];
    want.sort();
    assert_eq!(names(d), want);
    assert!(fs::symlink_metadata(d.join(format!("{}.stats", dead - 2)))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(fs::read(&target).unwrap(), b"keep");
}

#[test]
fn a_live_process_whose_command_is_not_utf8_keeps_its_files() {
    // The start time of a process is read from /proc/PID/stat after its command, which
    // may be any bytes: a live process whose command is not UTF-8 read as gone, and the
    // next shim to start removed its stats page and socket.
    use std::os::unix::ffi::OsStrExt;
    let dir = temp_dir("left");
    let d = dir.path();
    let bin = temp_dir("left-bin");
    let odd = bin
        .path()
        .join(std::ffi::OsStr::from_bytes(b"sl\xff\xfeep"));
    // A link, not a copy: the kernel names the process after the path it ran (so its
    // command is these bytes), and no writable descriptor of a new executable is open
    // while other tests fork (which made the run fail with "Text file busy").
    std::os::unix::fs::symlink(require_tool("sleep", "coreutils"), &odd).unwrap();
    let mut c = Command::new(&odd);
    c.arg("30");
    clean_env_in(&mut c, d);
    c.env("LD_PRELOAD", shim_lib())
        .stdout(std::process::Stdio::null());
    let sleeper = common::Guard::spawn(&mut c, LIMIT);
    let pid = sleeper.pid();
    let sock = d.join(format!("{pid}.sock"));
    assert!(
        common::wait_until(Duration::from_secs(10), || common::published(d, pid)),
        "the shim did not publish {} and its stats page",
        sock.display()
    );
    let truth = require_tool("true", "coreutils");
    let out = shimmed(d, &truth, &[], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        d.join(format!("{pid}.stats")).exists() && sock.exists(),
        "the files of live process {pid} were removed: {:?}",
        names(d)
    );
}
