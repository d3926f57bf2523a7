//! Helpers shared by the subcommands: where things are, running a child with a time
//! limit, compiling a workload, scratch directories, medians.

use memshadow_format::stats::StatsRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use wait_timeout::ChildExt;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// The shim to preload: `lib`, or the workspace's release build; it must exist.
pub fn shim_lib(lib: Option<PathBuf>) -> Result<PathBuf, String> {
    let lib = lib.unwrap_or_else(|| workspace_root().join("target/release/libmemshadow.so"));
    if lib.exists() {
        Ok(lib)
    } else {
        Err(format!(
            "{} not found: run `cargo build --release --workspace` first",
            lib.display()
        ))
    }
}

/// The `memshadow` launcher of the workspace's release build; it must exist, with the
/// shim beside it.
pub fn memshadow_bin() -> Result<PathBuf, String> {
    shim_lib(None)?;
    let bin = workspace_root().join("target/release/memshadow");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: run `cargo build --release --workspace` first",
            bin.display()
        ))
    }
}

/// Removes every `MEMSHADOW_*` variable and `LD_PRELOAD` that `cmd` would inherit, so
/// that only the settings the bench chooses apply.
pub fn clear_shim_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MEMSHADOW_") || k == "LD_PRELOAD" {
            cmd.env_remove(k);
        }
    }
}

/// A command line for messages.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pids of every descendant of `pid` (children, their children, ...), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: fields after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|f| f.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if seen.insert(c) {
                todo.push(c);
            }
        }
    }
    seen.into_iter().collect()
}

/// Kills `child` and every process it started (a workload under `memshadow run`, a
/// server), by pid, and reaps `child`.
pub fn kill_tree(child: &mut Child) {
    let below = descendants(child.id());
    let _ = child.kill();
    for pid in below {
        // SAFETY: kill(2) on a pid we found below our own child; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let _ = child.wait();
}

/// A child process that is killed, with everything it started, if it is dropped before
/// it was waited for.
pub struct Guarded(Option<Child>);

impl Guarded {
    pub fn spawn(cmd: &mut Command) -> Result<Guarded, String> {
        cmd.spawn()
            .map(|c| Guarded(Some(c)))
            .map_err(|e| format!("cannot run {}: {e}", command_line(cmd)))
    }

    /// Waits up to `limit` for the process to end; kills it (and what it started) if it
    /// does not. Fails unless it exits with status 0.
    pub fn wait_limited(mut self, what: &str, limit: Duration) -> Result<(), String> {
        let mut child = self.0.take().expect("not waited for yet");
        match child.wait_timeout(limit) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(format!("{what} failed: {status}")),
            Ok(None) | Err(_) => {
                kill_tree(&mut child);
                Err(format!(
                    "{what} did not end within {} s: killed",
                    limit.as_secs()
                ))
            }
        }
    }

    /// The process, until it has been waited for.
    pub fn child(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    /// Whether the process has already ended.
    pub fn has_ended(&mut self) -> bool {
        match self.0.as_mut() {
            None => true,
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            kill_tree(&mut child);
        }
    }
}

/// Runs `cmd` to the end with its stdout captured (stderr passes through) and returns
/// that output; the process, and whatever it started, is killed if it runs longer than
/// `limit`. Fails unless it exits with status 0.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let name = command_line(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let waited = child.wait_timeout(limit);
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => {
            kill_tree(&mut child);
            return Err(match waited {
                Err(e) => format!("waiting for {name}: {e} (killed it)"),
                _ => format!("{name} did not finish in {} s: killed", limit.as_secs()),
            });
        }
    };
    let out = reader
        .join()
        .expect("the reader thread does not panic")
        .map_err(|e| format!("reading the output of {name}: {e}"))?;
    if !status.success() {
        return Err(format!("{name} failed: {status}"));
    }
    Ok(out)
}

/// Compiles a workload from `bench/workloads/NAME.c` into `target/bench-workloads/NAME`.
pub fn build_workload(name: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let src = root.join("bench/workloads").join(format!("{name}.c"));
    if !src.exists() {
        return Err(format!("{} does not exist", src.display()));
    }
    let out_dir = root.join("target/bench-workloads");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let out = out_dir.join(name);
    run_limited(
        Command::new("cc")
            .args(["-O2", "-pthread", "-Wall", "-Werror", "-I"])
            .arg(root.join("c-tests/include"))
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .arg("-lm"),
        Duration::from_secs(120),
    )
    .map_err(|e| {
        if e.starts_with("cannot run") {
            format!("{e} (install gcc)")
        } else {
            e
        }
    })?;
    Ok(out)
}

/// Whether `prog` is found in `PATH`.
pub fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(prog);
            p.is_file()
                && std::fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

/// A scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new private directory under the system's temporary directory.
    pub fn new() -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("memshadow-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        make_private_dir(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn make_private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Median and range of a set of samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `samples`, which must not be empty. The median of an even count is
    /// the mean of the two middle samples.
    pub fn of(samples: &[f64]) -> Spread {
        assert!(!samples.is_empty(), "no samples");
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// The median of the samples there are, or None if there are none.
pub fn median_of(samples: impl IntoIterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = samples.into_iter().collect();
    (!v.is_empty()).then(|| Spread::of(&v).median)
}

/// The copies of the shim's stats page a workload made in `dir` (see
/// `bench/workloads/stats_copy.h`), by label (`LABEL.stats`).
pub fn read_stats_copies(dir: &Path) -> Result<BTreeMap<String, StatsRecord>, String> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(label) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".stats"))
        else {
            continue;
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let record = StatsRecord::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        out.insert(label.to_string(), record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_trap_anatomy_probe_builds_warning_free() {
        // bench/RESULTS.md quotes it; it is not part of a harness run, so build it here.
        let src = workspace_root().join("bench/probes/trap_anatomy.c");
        let out = std::env::temp_dir().join(format!("trap_anatomy-{}", std::process::id()));
        let built = run_limited(
            Command::new("cc")
                .args(["-O2", "-pthread", "-Wall", "-Werror", "-o"])
                .arg(&out)
                .arg(&src),
            Duration::from_secs(120),
        );
        let _ = std::fs::remove_file(&out);
        built.unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }

    #[test]
    fn run_limited_returns_stdout_and_kills_on_expiry() {
        let out = run_limited(Command::new("echo").arg("key 1"), Duration::from_secs(10));
        assert_eq!(out.unwrap(), "key 1\n");
        assert!(run_limited(&mut Command::new("false"), Duration::from_secs(10)).is_err());
        let t = Instant::now();
        let err =
            run_limited(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn expiry_kills_grandchildren_too() {
        // sh starts a sleep that would outlive sh; both must be gone.
        let dir = Scratch(
            std::env::temp_dir().join(format!("memshadow-bench-test-{}-kill", std::process::id())),
        );
        make_private_dir(&dir.0).unwrap();
        let pidfile = dir.0.join("pid");
        let err = run_limited(
            Command::new("sh")
                .arg("-c")
                .arg("sleep 30 & echo $! > \"$0\"; wait")
                .arg(&pidfile),
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(err.contains("killed"), "{err}");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was killed; it is a zombie until init reaps it, or gone.
        let t = Instant::now();
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().to_string()));
            match state {
                None => break,
                Some(s) if s.starts_with('Z') => break,
                Some(_) if t.elapsed() > Duration::from_secs(5) => panic!("sleep {pid} lives"),
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn guarded_child_is_killed_when_dropped() {
        let mut g = Guarded::spawn(Command::new("sleep").arg("30")).unwrap();
        assert!(!g.has_ended());
        let pid = g.0.as_ref().unwrap().id();
        drop(g);
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')').unwrap().1.trim().starts_with('Z')
        });
        assert!(gone);
        let g = Guarded::spawn(&mut Command::new("true")).unwrap();
        g.wait_limited("true", Duration::from_secs(10)).unwrap();
        let g = Guarded::spawn(Command::new("sleep").arg("30")).unwrap();
        let err = g
            .wait_limited("sleep", Duration::from_millis(100))
            .unwrap_err();
        assert!(err.contains("killed"), "{err}");
    }

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 8.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 8.0));
        assert_eq!(Spread::of(&[7.0]).median, 7.0);
        assert_eq!(median_of([]), None);
        assert_eq!(median_of([2.0, 9.0, 1.0]), Some(2.0));
        assert_eq!(median_of([2.0, 4.0]), Some(3.0));
    }

    #[test]
    fn finds_programs_in_path() {
        assert!(in_path("sh"));
        assert!(!in_path("no-such-program-memshadow"));
    }
}
