//! Start-up, fork and exit: the shim's life inside the host process.
//!
//! Set-up failures print one `memshadow:` line and leave the program running untracked:
//! the interposed functions keep forwarding, nothing is published.

use crate::base::log::{debug, error, info};
use crate::base::sync::SpinLock;
use crate::config::{Config, TrackMode};
use crate::stats::StatsFile;
use crate::{base::sys, service::control, stats, tracking::regions, tracking::stacks};
use core::cell::Cell;
use memshadow_format::stats::ProcessState;
use std::path::PathBuf;

struct Runtime {
    config: Config,
    stats: StatsFile,
    socket: PathBuf,
}

static RUNTIME: SpinLock<Option<Runtime>> = SpinLock::new(None);

/// The run-time directory for `config`: `MEMSHADOW_DIR`, else the first usable of
/// `/dev/shm/memshadow-UID` and `$XDG_RUNTIME_DIR/memshadow` (another user may have
/// created the first: then the second, which only we can reach). With neither usable,
/// the first: publishing there fails with one line saying why.
fn run_dir(config: &Config) -> PathBuf {
    use memshadow_format::paths;
    if let Some(d) = &config.dir {
        return d.clone();
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    match paths::choose_dir(uid, xdg.as_deref()) {
        Ok(d) => {
            if d != paths::default_dir(uid) {
                info!(
                    "{} is not usable (squatted?); publishing in {}",
                    paths::default_dir(uid).display(),
                    d.display()
                );
            }
            d
        }
        Err(_) => paths::default_dir(uid),
    }
}

/// Why this process could not be published (it then runs untracked).
#[derive(Debug)]
enum PublishError {
    Stats(stats::SetupError),
    Control(control::ControlError),
}

impl core::fmt::Display for PublishError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PublishError::Stats(e) => write!(f, "{e}"),
            PublishError::Control(e) => write!(f, "{e}"),
        }
    }
}

/// Publishes this process: control socket, then stats page (a client finds a process
/// by its page, and then connects: the socket must be there by then). On failure
/// nothing is left behind.
fn publish(config: &Config) -> Result<Runtime, PublishError> {
    let dir = run_dir(config);
    stats::ensure_private_dir(&dir).map_err(PublishError::Stats)?;
    let socket = control::start(&dir).map_err(PublishError::Control)?;
    match stats::create(&dir, config.run_id) {
        Ok(stats) => {
            crate::service::exit_files::publish(&stats.path, &socket, config.run_id != 0);
            Ok(Runtime {
                config: config.clone(),
                stats,
                socket,
            })
        }
        Err(e) => {
            control::stop_listening();
            let _ = std::fs::remove_file(&socket);
            Err(PublishError::Stats(e))
        }
    }
}

/// Honours `MEMSHADOW_RUN_ID` only when it names the running launcher (see
/// `leftovers`); otherwise says so once and ignores it. Then removes what processes that
/// are gone left in the directory.
fn check_run_id(config: &mut Config) {
    let dir = run_dir(config);
    if stats::ensure_private_dir(&dir).is_err() {
        return; // publish says why
    }
    if config.run_id != 0 {
        let token = std::env::var(memshadow_format::paths::RUN_TOKEN_ENV).ok();
        if let Err(e) =
            crate::service::leftovers::check_run_id(&dir, config.run_id, token.as_deref())
        {
            error!(
                "MEMSHADOW_RUN_ID={} is not a running memshadow run ({e}); ignored: this process's files go when it exits",
                config.run_id
            );
            config.run_id = 0;
        }
    }
    let n = crate::service::leftovers::sweep(&dir);
    if n > 0 {
        debug!("removed {n} files of processes that are gone");
    }
}

/// The constructor (`.init_array`): runs before the program's `main`.
pub extern "C" fn on_load() {
    let _blocked = sys::block_signals();
    // The C library's functions, found now from the constructor, so that a `close` or
    // `_exit` in a signal handler or a vfork child never runs dlsym.
    let _ = crate::base::forward::real();
    crate::service::flight::resolve_real();
    let mut config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            error!("{e}; running untracked");
            return;
        }
    };
    crate::base::log::set_level(config.log);
    if let Some(e) = &config.backend_refused {
        error!("{e}; using auto");
    }
    if let Some(e) = &config.holder_copy_refused {
        error!("{e}; using auto");
    }
    // Chosen once: a forked child publishes beside its parent.
    config.dir = Some(run_dir(&config));
    check_run_id(&mut config);
    if crate::base::forward::real().is_none() {
        error!("cannot find the C library's allocator (dlsym failed); running untracked");
        return;
    }
    crate::base::own::register_shim_object();
    crate::base::own::register(crate::base::bootstrap::range());
    crate::base::fds::note_counters_pid();
    stacks::init();
    let rt = match publish(&config) {
        Ok(rt) => rt,
        Err(e) => {
            error!("{e}; running untracked");
            return;
        }
    };
    regions::init(config.track == TrackMode::HeapAndStacks);
    // SAFETY: the handlers are plain extern "C" functions that live as long as the
    // process (the shim is never unloaded while the program runs).
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    let (n, bytes) = regions::with_table(|t| t.totals());
    info!(
        "tracking {n} regions, {bytes} bytes; stats in {}, control socket {}",
        rt.stats.path.display(),
        rt.socket.display()
    );
    crate::config::set_current(Some(rt.config.clone()));
    *RUNTIME.lock() = Some(rt);
    stats::set_state(ProcessState::Running);
    regions::set_tracking(true);
    start_interval_snapshots(&config);
    if config.flight {
        if let Err(e) = crate::service::flight::install(&config) {
            error!("the flight recorder is off: {e}");
        }
    }
}

/// Starts the epoch thread when `MEMSHADOW_INTERVAL_MS` asks for periodic snapshots (it
/// is otherwise started by the first API request).
fn start_interval_snapshots(config: &Config) {
    if config.interval_ms > 0 {
        if let Err(e) = crate::service::epoch::start_thread(config) {
            error!("cannot start periodic snapshots: {e}");
        }
    }
}

/// The destructor (`.fini_array`): runs at `exit()`, after the program's destructors.
pub extern "C" fn on_unload() {
    if !regions::tracking() {
        return;
    }
    let _blocked = sys::block_signals();
    // The holders go with the process: killed and reaped now, not left to init.
    crate::engine::release_all_holders();
    regions::rescan();
    control::stop_listening();
    stats::set_state(ProcessState::Exited);
    crate::service::exit_files::forget();
    if let Some(rt) = RUNTIME.lock().as_ref() {
        let _ = std::fs::remove_file(&rt.socket);
        if rt.config.run_id == 0 {
            stats::remove(&rt.stats);
        }
        debug!(
            "exit: stats {}",
            if rt.config.run_id == 0 {
                "removed"
            } else {
                "kept for memshadow run"
            }
        );
    }
}

thread_local! {
    /// The forking thread's signal mask, saved by the prepare handler.
    // SAFETY: sigset_t is plain data; all-zero is a valid (empty) set.
    static FORK_MASK: Cell<libc::sigset_t> = const { Cell::new(unsafe { core::mem::zeroed() }) };
}

fn lock_all() {
    crate::base::fds::hold_off_creations_for_fork();
    regions::lock_for_fork();
    stacks::lock_for_fork();
    crate::base::own::lock_for_fork();
    crate::ALLOCATOR.lock_for_fork();
    RUNTIME.acquire();
}

fn unlock_all() {
    RUNTIME.release();
    crate::ALLOCATOR.unlock_after_fork();
    crate::base::own::unlock_after_fork();
    stacks::unlock_after_fork();
    regions::unlock_after_fork();
}

/// Before fork: block signals and take every shim lock, so the child inherits
/// consistent, unlocked state.
extern "C" fn fork_prepare() {
    let blocked = sys::block_signals();
    FORK_MASK.with(|m| m.set(blocked.old_mask()));
    core::mem::forget(blocked);
    lock_all();
}

fn restore_mask() {
    let old = FORK_MASK.with(|m| m.get());
    // SAFETY: restores the mask saved in fork_prepare on this thread.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
}

extern "C" fn fork_parent() {
    unlock_all();
    crate::base::fds::after_fork_in_parent();
    restore_mask();
}

/// In the child: the parent's threads are gone. Publish a stats page and socket of its
/// own (counts carried over from the parent) or, if that fails, run untracked.
extern "C" fn fork_child() {
    unlock_all();
    crate::base::fds::after_fork_in_child();
    crate::base::fds::release_all_after_fork();
    crate::engine::pagemap::forget_after_fork();
    crate::base::shim_thread::forget_after_fork();
    crate::engine::fault::forget_after_fork();
    crate::engine::forget_after_fork();
    crate::prefetch::forget_after_fork();
    crate::service::epoch::forget_after_fork();
    crate::service::pins::forget_after_fork();
    crate::tracking::stacks::forget_after_fork();
    // The parent's recorder records the parent, not this child.
    stats::set(memshadow_format::stats::Counter::RecordedVersion, 0);
    stats::set(memshadow_format::stats::Counter::RecordedTimeMs, 0);
    if regions::tracking() {
        control::stop_listening();
        let old = RUNTIME.lock().take();
        if let Some(old) = old {
            match publish(&old.config) {
                Ok(rt) => {
                    stats::set_state(ProcessState::Running);
                    crate::config::set_current(Some(rt.config.clone()));
                    *RUNTIME.lock() = Some(rt);
                    start_interval_snapshots(&old.config);
                }
                Err(e) => {
                    crate::service::exit_files::forget();
                    crate::config::set_current(None);
                    regions::set_tracking(false);
                    error!("forked child: {e}; the child runs untracked");
                }
            }
        }
    }
    restore_mask();
}
