//! Starting a program under the shim, passing signals through while it runs, and
//! collecting the statistics of every shimmed process of the run when it ends.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memshadow_format::paths::{self, RunToken};
use memshadow_format::stats::StatsRecord;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, raise, signal, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::elf_check;
use crate::error::{Failure, Result};
use crate::registry;

/// Environment variable naming the shim library when `--lib` is not given.
pub const LIB_ENV: &str = "MEMSHADOW_LIB";
/// Environment variable that tells the shim which `memshadow run` launched it.
pub const RUN_ID_ENV: &str = "MEMSHADOW_RUN_ID";
/// File name of the shim library.
pub const LIB_NAME: &str = "libmemshadow.so";

/// Signals passed on to the program while it runs.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
/// Signals the terminal sends to the program too: the launcher ignores them and waits.
const IGNORED: [Signal; 2] = [Signal::SIGINT, Signal::SIGQUIT];

/// A program ready to be started under the shim.
#[derive(Debug)]
pub struct Launch {
    /// Short name of the program, for messages.
    pub name: String,
    /// The executable, found in PATH.
    pub program: PathBuf,
    /// `argv`, `argv[0]` as the user wrote it.
    pub argv: Vec<OsString>,
    /// The shim library, absolute.
    pub lib: PathBuf,
    /// Variables set for the program besides the shim's own.
    pub env: Vec<(OsString, OsString)>,
}

/// How a run ended and what its shimmed processes reported.
#[derive(Debug)]
pub struct RunOutcome {
    /// Short name of the program, for messages.
    pub name: String,
    /// The command line as given.
    pub command_line: String,
    pub pid: u32,
    pub status: ExitStatus,
    pub wall: Duration,
    /// The final page of the program itself, if the shim attached to it.
    pub main: Option<StatsRecord>,
    /// Pages of the other shimmed processes of the run (its descendants), by pid.
    pub others: Vec<StatsRecord>,
}

/// Something to do periodically while the program runs: called with its pid and the
/// time since it started; it returns whether it is to be called again.
pub type Tick<'a> = (Duration, &'a mut dyn FnMut(u32, Duration) -> bool);

/// Finds the shim: `--lib`, else `$MEMSHADOW_LIB`, else beside the running executable.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let (path, source) = match (explicit, std::env::var_os(LIB_ENV)) {
        (Some(p), _) => (p.to_path_buf(), "given with --lib"),
        (None, Some(p)) if !p.is_empty() => (PathBuf::from(p), "named by MEMSHADOW_LIB"),
        _ => {
            let exe = std::env::current_exe().map_err(|e| {
                Failure::runtime(format!("cannot find the memshadow executable: {e}"))
            })?;
            (exe.with_file_name(LIB_NAME), "expected beside memshadow")
        }
    };
    let lib = match path.canonicalize() {
        Ok(p) if p.is_file() => p,
        _ => {
            return Err(Failure::runtime(format!(
                "the shim library {} ({source}) does not exist; build it with `cargo build --release` or pass --lib PATH",
                path.display()
            )))
        }
    };
    // ld.so splits LD_PRELOAD at spaces and colons.
    if lib
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b' ' | b':'))
    {
        return Err(Failure::runtime(format!(
            "the shim library path {} contains a space or colon and cannot be put in LD_PRELOAD",
            lib.display()
        )));
    }
    elf_check::check_shim(&lib)?;
    Ok(lib)
}

/// `lib`, followed by an existing `LD_PRELOAD` if there is one.
/// `RUNID.run` in the run-time directory: proves to the shim in the launched processes
/// that `MEMSHADOW_RUN_ID` names this launcher (see `memshadow_format::paths::RunToken`).
/// Created new (0600, not through a symlink), removed when dropped.
pub struct RunFile {
    path: PathBuf,
    token: RunToken,
}

impl RunFile {
    /// Writes the run file of launcher `run_id` (this process) in `dir`, creating `dir`
    /// (0700) if needed. `None`, with one warning line, when it cannot: the processes then
    /// remove their stats pages at exit and the final counts are missing.
    pub fn create(dir: &Path, run_id: u32) -> Option<RunFile> {
        match Self::try_create(dir, run_id) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "memshadow: warning: cannot write the run file in {}: {e}; final statistics will be missing",
                    dir.display()
                );
                None
            }
        }
    }

    fn try_create(dir: &Path, run_id: u32) -> std::io::Result<RunFile> {
        use std::fs::{DirBuilder, OpenOptions};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        match DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let mut random = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let start_ticks = paths::start_ticks_of_stat(&stat)
            .ok_or_else(|| std::io::Error::other("cannot read this process's start time"))?;
        let token = RunToken {
            pid: run_id,
            start_ticks,
            token: random.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let path = paths::run_token_path(dir, run_id);
        // A file of an earlier process with this pid is stale; never follow a symlink.
        let _ = std::fs::remove_file(&path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        f.write_all(token.encode().as_bytes())?;
        Ok(RunFile { path, token })
    }
}

impl Drop for RunFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn preload_value(lib: &Path, existing: Option<&OsStr>) -> OsString {
    let mut value = lib.as_os_str().to_os_string();
    if let Some(old) = existing.filter(|o| !o.is_empty()) {
        value.push(":");
        value.push(old);
    }
    value
}

/// Checks the program and the library, printing warnings about what will run untracked.
pub fn prepare(command: &[OsString], lib: Option<&Path>) -> Result<Launch> {
    let first = command
        .first()
        .ok_or_else(|| Failure::usage("no program given"))?;
    let program = elf_check::resolve(first)?;
    for warning in elf_check::check(&program)? {
        eprintln!("memshadow: warning: {warning}");
    }
    let name = Path::new(first)
        .file_name()
        .unwrap_or(first)
        .to_string_lossy()
        .into_owned();
    Ok(Launch {
        name,
        program,
        argv: command.to_vec(),
        lib: find_library(lib)?,
        env: Vec::new(),
    })
}

impl Launch {
    /// Runs the program to its end and collects the statistics of the run.
    pub fn run(&self, mut tick: Option<Tick<'_>>) -> Result<RunOutcome> {
        let run_id = std::process::id();
        // Pages with our run id made before we started belong to an earlier launcher
        // that had our pid; a second of slack covers clock adjustments.
        let since_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .saturating_sub(1000);
        // Block the signals we handle before the child exists, so none is lost; the
        // child gets the previous mask back before it execs.
        let mut mask = SigSet::empty();
        for s in FORWARDED.iter().chain(&IGNORED).chain(&[Signal::SIGCHLD]) {
            mask.add(*s);
        }
        let old_mask = mask
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .map_err(|e| Failure::runtime(format!("cannot block signals: {e}")))?;
        let dir = registry::own_dir();
        let run_file = RunFile::create(&dir, run_id);
        let result = self.spawn_and_wait(&mask, old_mask, tick.as_mut(), run_file.as_ref());
        let _ = old_mask.thread_set_mask();
        let (pid, status, wall) = result?;

        let mut pages = registry::collect_run(&dir, run_id, since_unix_ms);
        drop(run_file);
        let main = pages
            .iter()
            .position(|r| r.pid == pid)
            .map(|i| pages.remove(i));
        pages.sort_by_key(|r| r.pid);
        Ok(RunOutcome {
            name: self.name.clone(),
            command_line: self
                .argv
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            pid,
            status,
            wall,
            main,
            others: pages,
        })
    }

    fn spawn_and_wait(
        &self,
        mask: &SigSet,
        child_mask: SigSet,
        tick: Option<&mut Tick<'_>>,
        run_file: Option<&RunFile>,
    ) -> Result<(u32, ExitStatus, Duration)> {
        let signals = SignalFd::with_flags(mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| Failure::runtime(format!("cannot watch signals: {e}")))?;
        let preload = preload_value(&self.lib, std::env::var_os("LD_PRELOAD").as_deref());
        let started = Instant::now();
        let mut command = Command::new(&self.program);
        command
            .arg0(&self.argv[0])
            .args(&self.argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LD_PRELOAD", preload);
        // Without a run file the processes would ignore the run id (and say so).
        if let Some(f) = run_file {
            command
                .env(RUN_ID_ENV, std::process::id().to_string())
                .env(paths::RUN_TOKEN_ENV, &f.token.token);
        }
        // SAFETY: the closure runs in the forked child before exec and only calls
        // pthread_sigmask, which is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(move || child_mask.thread_set_mask().map_err(Into::into));
        }
        let mut child = command
            .spawn()
            .map_err(|e| Failure::runtime(format!("cannot run {}: {e}", self.program.display())))?;
        let pid = child.id();
        let status = wait_passing_signals(&mut child, &signals, started, tick)?;
        let wall = started.elapsed();
        // Drop what the terminal sent us meanwhile (Ctrl-C went to the program too).
        while let Ok(Some(_)) = signals.read_signal() {}
        Ok((pid, status, wall))
    }
}

/// Waits for `child`, forwarding [`FORWARDED`] signals to it, ignoring [`IGNORED`] ones
/// and calling `tick` on schedule.
fn wait_passing_signals(
    child: &mut Child,
    signals: &SignalFd,
    started: Instant,
    mut tick: Option<&mut Tick<'_>>,
) -> Result<ExitStatus> {
    let wait_error =
        |e: std::io::Error| Failure::runtime(format!("cannot wait for the program: {e}"));
    let pid = child.id();
    let mut next_tick = tick.as_ref().map(|(every, _)| started + *every);
    loop {
        if let Some(status) = child.try_wait().map_err(wait_error)? {
            return Ok(status);
        }
        let timeout = match next_tick {
            Some(at) => timeout_until(at, Instant::now()),
            None => PollTimeout::NONE,
        };
        match poll(
            &mut [PollFd::new(signals.as_fd(), PollFlags::POLLIN)],
            timeout,
        ) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(wait_error(e.into())),
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let forwarded = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
                .filter(|s| FORWARDED.contains(s));
            if let Some(sig) = forwarded {
                // The child may have exited already; try_wait above will see it.
                let _ = kill(Pid::from_raw(pid as i32), sig);
            }
        }
        if let (Some(at), Some((every, f))) = (next_tick, tick.as_mut()) {
            if Instant::now() >= at {
                next_tick = f(pid, started.elapsed()).then(|| Instant::now() + *every);
            }
        }
    }
}

/// poll(2)'s timeout to wake at `at`, in whole milliseconds rounded up: rounded down, the
/// last millisecond before `at` would be spent polling with a timeout of 0 in a loop.
fn timeout_until(at: Instant, now: Instant) -> PollTimeout {
    let left = at.saturating_duration_since(now);
    let ms = left.as_micros().div_ceil(1000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// Ends this process the way the program ended: same exit code, or killed by the same
/// signal (exit code 128 + signal if raising it does not kill us).
pub fn exit_like(status: ExitStatus) -> ! {
    let _ = std::io::stdout().flush();
    if let Some(sig) = status.signal() {
        if let Ok(signal_kind) = Signal::try_from(sig) {
            // The program may have dumped core; memshadow itself must not add one.
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
            // SAFETY: restoring the default disposition installs no handler, so no code
            // of ours can run in signal context; we are about to terminate anyway.
            let _ = unsafe { signal(signal_kind, SigHandler::SigDfl) };
            let mut only = SigSet::empty();
            only.add(signal_kind);
            let _ = only.thread_unblock();
            let _ = raise(signal_kind);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_timeout_rounds_up_to_the_next_millisecond() {
        let now = Instant::now();
        let ms = |t: PollTimeout| i32::from(t);
        assert_eq!(ms(timeout_until(now + Duration::from_micros(300), now)), 1);
        assert_eq!(ms(timeout_until(now + Duration::from_micros(1001), now)), 2);
        assert_eq!(ms(timeout_until(now + Duration::from_millis(5), now)), 5);
        // Due or past: poll returns at once and the tick runs.
        assert_eq!(ms(timeout_until(now, now)), 0);
        assert_eq!(ms(timeout_until(now, now + Duration::from_millis(3))), 0);
    }

    #[test]
    fn preload_is_prepended() {
        let lib = Path::new("/x/libmemshadow.so");
        assert_eq!(preload_value(lib, None), "/x/libmemshadow.so");
        assert_eq!(
            preload_value(lib, Some(OsStr::new(""))),
            "/x/libmemshadow.so"
        );
        assert_eq!(
            preload_value(lib, Some(OsStr::new("/a.so:/b.so"))),
            "/x/libmemshadow.so:/a.so:/b.so"
        );
    }

    #[test]
    fn missing_library_names_the_path() {
        let e = find_library(Some(Path::new("/no/such/libmemshadow.so"))).unwrap_err();
        assert!(
            e.message.contains("/no/such/libmemshadow.so"),
            "{}",
            e.message
        );
        assert!(e.message.contains("cargo build --release"), "{}", e.message);
    }
}
