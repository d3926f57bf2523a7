//! Shimmed C test programs driven from a test: started with the shim preloaded, read
//! up to their `ready` line, stopped with SIGUSR1; and what their output means
//! (`c-tests/snap_consistency.c`'s chains, `testutil.h`'s checksum).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{clean_env_in, shim_lib, Guard};

/// FNV-1a, 64 bits (as `tu_fnv` in `c-tests/testutil.h`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn send_sigusr1(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).expect("send SIGUSR1");
}

/// A program running under the shim (`LD_PRELOAD`) that printed `ready`.
pub struct Running {
    pub guard: Guard,
    /// The lines it printed before `ready`.
    pub lines: Vec<String>,
    /// Its further lines, read by a thread of their own (closed at EOF).
    pub rest: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `program` with the shim preloaded and `MEMSHADOW_DIR=dir`, and reads its
    /// output up to the line `ready`, which must come within `ready_within`. The
    /// program is killed after `limit` at the latest.
    pub fn start(
        program: &Path,
        args: &[&str],
        dir: &Path,
        env: &[(&str, &str)],
        ready_within: Duration,
        limit: Duration,
    ) -> Running {
        let mut c = Command::new(program);
        c.args(args);
        clean_env_in(&mut c, dir);
        c.env("LD_PRELOAD", shim_lib())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = Guard::spawn(&mut c, limit);
        let stdout = BufReader::new(guard.child().stdout.take().expect("stdout is piped"));
        let (tx, rest) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + ready_within;
        let mut lines = Vec::new();
        loop {
            match rest.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line == "ready" => break,
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{} printed no \"ready\" within {:.0} s (killed); its threads were waiting in:\n{}\nits output so far:\n{}",
                    program.display(),
                    ready_within.as_secs_f64(),
                    thread_states(guard.pid()),
                    lines.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = guard.wait(Duration::from_secs(5));
                    panic!(
                        "{} ended ({}) before printing \"ready\"; its output:\n{}",
                        program.display(),
                        super::describe_status(status),
                        lines.join("\n")
                    );
                }
            }
        }
        assert!(
            !lines.iter().any(|l| l.starts_with("FAIL")),
            "{} failed its own checks:\n{}",
            program.display(),
            lines.join("\n")
        );
        Running { guard, lines, rest }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The next line the program prints, which must come within `within`; `what` names
    /// it for the message when it does not.
    pub fn next_line(&self, within: Duration, what: &str) -> String {
        match self.rest.recv_timeout(within) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "no {what} within {:.0} s (the program is killed); its threads were waiting in:\n{}",
                within.as_secs_f64(),
                thread_states(self.pid())
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the program closed its output before printing {what}")
            }
        }
    }

    /// Sends SIGUSR1, expects exit 0 within `limit`, returns what it printed after
    /// `ready`.
    pub fn stop(self, limit: Duration) -> String {
        send_sigusr1(self.pid());
        let status = self.guard.wait(limit);
        // The pipe is closed: the reader thread has seen EOF or soon will.
        let mut rest = String::new();
        while let Ok(line) = self.rest.recv_timeout(Duration::from_secs(5)) {
            rest.push_str(&line);
            rest.push('\n');
        }
        assert!(
            status.success(),
            "the program exited with {} after SIGUSR1; it printed:\n{rest}",
            super::describe_status(status)
        );
        rest
    }
}

/// Where each thread of `pid` waits in the kernel, one line per thread: its `wchan`,
/// and its kernel stack when readable (root), innermost first. For a program that
/// stopped making progress.
pub fn thread_states(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("  (process {pid} is gone)");
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        // "[<0>] handle_userfault+0x366/0x840" -> "handle_userfault"
        let stack: Vec<String> = read("stack")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|f| f.split('+').next().unwrap_or(f).to_string())
            .collect();
        out.push(format!(
            "  thread {} ({}): {}{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim(),
            if stack.is_empty() {
                String::new()
            } else {
                format!(" [{}]", stack.join(" < "))
            }
        ));
    }
    out.sort();
    out.join("\n")
}

/// snap_consistency's chains from the lines it printed before "ready" (and, with
/// SNAP_OWN_UFFD=1, the line saying its block is registered with its own userfaultfd).
pub fn parse_chains(lines: &[String]) -> Vec<Vec<u64>> {
    let mut chains = Vec::new();
    let chain_lines = lines.iter().filter(|l| *l != "own userfaultfd registered");
    for (t, l) in chain_lines.enumerate() {
        let rest = l
            .strip_prefix(&format!("chain {t} "))
            .unwrap_or_else(|| panic!("unexpected line from snap_consistency: {l:?}"));
        let pages: Vec<u64> = rest
            .split_whitespace()
            .map(|a| {
                a.strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .unwrap_or_else(|| panic!("bad address {a:?} in {l:?}"))
            })
            .collect();
        assert_eq!(pages.len(), 64, "{l:?}");
        assert!(pages.iter().all(|p| p % 4096 == 0), "{l:?}");
        chains.push(pages);
    }
    chains
}

/// What is wrong with one chain's values in a snapshot, if anything: along the chain
/// they must not increase, and the first minus the last is at most 1.
pub fn chain_fault(values: &[u64]) -> Option<String> {
    if let Some(i) = values.windows(2).position(|w| w[1] > w[0]) {
        return Some(format!(
            "increases at position {}: {} then {}",
            i + 1,
            values[i],
            values[i + 1]
        ));
    }
    let (first, last) = (values[0], values[values.len() - 1]);
    (first - last > 1).then(|| format!("spans {last}..{first}"))
}
