//! The flight recorder (`MEMSHADOW_FLIGHT=1`, set by `memshadow run --record`): when the
//! program dies of SIGSEGV, SIGBUS, SIGABRT, SIGFPE or SIGILL, a last snapshot is taken
//! and written to the recorder's store before the default action goes on.
//!
//! Only with the flight recorder on does the shim take these five signals: at start-up
//! its handler is installed for them and the program's own disposition (the kernel's at
//! that moment) is remembered. From then on the interposed `sigaction`, `signal` and
//! `bsd_signal` (`host::interpose`) show and change the program's disposition only,
//! here; the kernel's stays the shim's handler (with the program's `SA_ONSTACK`,
//! `SA_RESTART`, `SA_NODEFER` and mask, so an alternate signal stack still works). Every
//! other signal, and all five when the flight recorder is off, pass straight through.
//!
//! The handler ([`on_signal`]):
//! - the program's handler: called (with `SA_SIGINFO` or not, its mask added, reset to
//!   `SIG_DFL` first under `SA_RESETHAND`), then the handler returns: a program that
//!   handles its own SIGSEGV keeps its behaviour;
//! - `SIG_IGN`: a signal someone sent is ignored; one the kernel raised for a fault is
//!   fatal, as the kernel makes it (it would loop on the faulting instruction otherwise);
//! - `SIG_DFL` (or fatal as above): the crashing thread asks the epoch thread for a
//!   snapshot (futex words in the shim's memory: no host malloc, no lock), which
//!   publishes its version in the stats page (`flight_version`, `flight_signal`); the
//!   recorder writes it, marked, and says so (control `flight V`). The thread waits
//!   for that at most [`WAIT_MS`] (then one `memshadow:` line), sets the kernel's
//!   disposition to `SIG_DFL`, sends itself the signal with `tgkill` and returns: the
//!   signal, pending, is delivered as the handler returns, so the exit status and the
//!   core are the kernel's own.
//!
//! No waiting when: no recorder has written a version of this process yet (stats
//! `recorded_version` is 0: a crash in the first moments, a program started by `exec`
//! from the recorded one, `MEMSHADOW_FLIGHT=1` without a recorder), the fault is in the
//! shim's own code, the thread is already crashing (a crash inside the handler), or this
//! is a forked child (the recorder records the parent). Another thread crashing
//! meanwhile waits for the same version.

use crate::base::sync::SpinLock;
use crate::base::sys;
use crate::stats;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use memshadow_format::control::{encode_error, encode_ok};
use memshadow_format::stats::Counter;

/// The signals the flight recorder takes.
pub const SIGNALS: [c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGFPE,
    libc::SIGILL,
];

/// How long a crashing thread waits for its last snapshot to be recorded.
pub const WAIT_MS: u64 = 30_000;

/// How often the waiting thread wakes the epoch thread again (a wake-up it missed).
const NUDGE_MS: u64 = 50;

/// Words of a `sigset_t`.
const MASK_WORDS: usize = core::mem::size_of::<libc::sigset_t>() / 8;
const _: () = assert!(core::mem::size_of::<libc::sigset_t>() == MASK_WORDS * 8);

/// The program's disposition of one signal, under a sequence lock: the handler reads it
/// without a lock; writers (the interposed calls, signals blocked) take [`WRITE`].
struct ProgramAction {
    seq: AtomicU32,
    handler: AtomicUsize,
    flags: AtomicI32,
    restorer: AtomicUsize,
    mask: [AtomicU64; MASK_WORDS],
}

impl ProgramAction {
    const fn new() -> Self {
        ProgramAction {
            seq: AtomicU32::new(0),
            handler: AtomicUsize::new(libc::SIG_DFL),
            flags: AtomicI32::new(0),
            restorer: AtomicUsize::new(0),
            mask: [const { AtomicU64::new(0) }; MASK_WORDS],
        }
    }

    /// A consistent copy, or None when a writer kept it busy (then: the default).
    fn read(&self) -> Option<libc::sigaction> {
        for _ in 0..10_000 {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let mut words = [0u64; MASK_WORDS];
            for (w, m) in words.iter_mut().zip(&self.mask) {
                *w = m.load(Ordering::Relaxed);
            }
            // SAFETY: sigaction is plain data; all-zero is valid.
            let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
            act.sa_sigaction = self.handler.load(Ordering::Relaxed);
            act.sa_flags = self.flags.load(Ordering::Relaxed);
            act.sa_restorer = restorer_from(self.restorer.load(Ordering::Relaxed));
            // SAFETY: sigset_t is MASK_WORDS plain words (checked above).
            act.sa_mask =
                unsafe { core::mem::transmute::<[u64; MASK_WORDS], libc::sigset_t>(words) };
            core::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(act);
            }
        }
        None
    }

    /// Writes `act`; the caller holds [`WRITE`].
    fn write(&self, act: &libc::sigaction) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.handler.store(act.sa_sigaction, Ordering::Relaxed);
        self.flags.store(act.sa_flags, Ordering::Relaxed);
        self.restorer
            .store(act.sa_restorer.map_or(0, |f| f as usize), Ordering::Relaxed);
        // SAFETY: sigset_t is MASK_WORDS plain words (checked above).
        let words =
            unsafe { core::mem::transmute::<libc::sigset_t, [u64; MASK_WORDS]>(act.sa_mask) };
        for (m, w) in self.mask.iter().zip(words) {
            m.store(w, Ordering::Relaxed);
        }
        self.seq.fetch_add(1, Ordering::Release);
    }
}

fn restorer_from(p: usize) -> Option<extern "C" fn()> {
    // SAFETY: a non-zero value is a restorer the program (or the C library) passed.
    (p != 0).then(|| unsafe { core::mem::transmute::<usize, extern "C" fn()>(p) })
}

static ACTIONS: [ProgramAction; 5] = [const { ProgramAction::new() }; 5];
/// Writers of [`ACTIONS`] (and of the kernel's disposition behind them).
static WRITE: SpinLock<()> = SpinLock::new(());
/// Whether the shim's handler is installed (for good: it stays after a fork).
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The process whose crash waits for the recorder (not a forked child).
static ARMED_PID: AtomicI32 = AtomicI32::new(0);
/// The shim's own code: a fault there is the shim's, never waited on.
static SHIM_CODE: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// The C library's `sigaction`.
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGNAL: AtomicUsize = AtomicUsize::new(0);

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;

/// The crash: its phase, signal, thread and version.
static PHASE: AtomicU32 = AtomicU32::new(IDLE);
const IDLE: u32 = 0;
const ASKED: u32 = 1;
const TAKEN: u32 = 2;
const RECORDED: u32 = 3;
const FAILED: u32 = 4;
static CRASH_SIGNAL: AtomicI32 = AtomicI32::new(0);
static CRASH_TID: AtomicI32 = AtomicI32::new(0);
static CRASH_VERSION: AtomicU64 = AtomicU64::new(0);

fn slot(sig: c_int) -> Option<usize> {
    SIGNALS.iter().position(|&s| s == sig)
}

fn lookup(name: &[u8]) -> usize {
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT finds the C library's definition.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const libc::c_char) as usize }
}

fn real_sigaction() -> Option<SigactionFn> {
    let mut p = REAL_SIGACTION.load(Ordering::Acquire);
    if p == 0 {
        p = lookup(b"sigaction\0");
        REAL_SIGACTION.store(p, Ordering::Release);
    }
    // SAFETY: dlsym's `sigaction` has this signature.
    (p != 0).then(|| unsafe { core::mem::transmute::<usize, SigactionFn>(p) })
}

fn real_signal() -> Option<SignalFn> {
    let mut p = REAL_SIGNAL.load(Ordering::Acquire);
    if p == 0 {
        p = lookup(b"signal\0");
        REAL_SIGNAL.store(p, Ordering::Release);
    }
    // SAFETY: dlsym's `signal` has this signature.
    (p != 0).then(|| unsafe { core::mem::transmute::<usize, SignalFn>(p) })
}

/// Looks up the C library's `sigaction` and `signal` now, from the constructor, so that
/// the interposed ones never run dlsym later (a program may call `sigaction` in a signal
/// handler).
pub fn resolve_real() {
    let _ = (real_sigaction(), real_signal());
}

/// Why the flight recorder could not be set up.
#[derive(Debug)]
pub enum FlightError {
    NoSigaction,
    Install(c_int, i32),
    EpochThread(crate::base::shim_thread::SpawnError),
}

impl core::fmt::Display for FlightError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FlightError::NoSigaction => write!(f, "the C library's sigaction was not found"),
            FlightError::Install(sig, errno) => {
                write!(f, "cannot handle signal {sig} (errno {errno})")
            }
            FlightError::EpochThread(e) => write!(f, "{e}"),
        }
    }
}

/// At start-up with `MEMSHADOW_FLIGHT=1`: installs the handler for [`SIGNALS`] and
/// starts the epoch thread that will take the last snapshot. On failure nothing of it
/// stays installed (the program runs as without the flight recorder).
pub fn install(config: &crate::config::Config) -> Result<(), FlightError> {
    let real = real_sigaction().ok_or(FlightError::NoSigaction)?;
    crate::service::epoch::start_thread(config).map_err(FlightError::EpochThread)?;
    note_shim_code();
    let _blocked = sys::block_signals();
    let _w = WRITE.lock();
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: sigaction is plain data; all-zero is valid.
        let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: a query into a local.
        if unsafe { real(sig, core::ptr::null(), &mut old) } != 0 {
            return Err(FlightError::Install(sig, sys::errno()));
        }
        ACTIONS[i].write(&old);
        if let Err(e) = take(real, sig, &old) {
            // Give back the ones taken so far.
            for (j, &s) in SIGNALS.iter().enumerate().take(i) {
                if let Some(a) = ACTIONS[j].read() {
                    // SAFETY: restores the program's own action.
                    unsafe { real(s, &a, core::ptr::null_mut()) };
                }
            }
            return Err(e);
        }
    }
    // SAFETY: getpid cannot fail.
    ARMED_PID.store(unsafe { libc::getpid() }, Ordering::Release);
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Points the kernel's disposition of `sig` at the shim's handler, with what of the
/// program's `act` shapes how a handler runs.
fn take(real: SigactionFn, sig: c_int, program: &libc::sigaction) -> Result<(), FlightError> {
    // SAFETY: sigaction is plain data; all-zero is valid.
    let mut ours: libc::sigaction = unsafe { core::mem::zeroed() };
    ours.sa_sigaction = on_signal as *const () as usize;
    ours.sa_flags = libc::SA_SIGINFO
        | (program.sa_flags & (libc::SA_ONSTACK | libc::SA_RESTART | libc::SA_NODEFER));
    ours.sa_mask = program.sa_mask;
    // SAFETY: installs a handler that lives as long as the process.
    if unsafe { real(sig, &ours, core::ptr::null_mut()) } != 0 {
        return Err(FlightError::Install(sig, sys::errno()));
    }
    Ok(())
}

/// Records where the shim's executable code is (a fault there is the shim's own).
fn note_shim_code() {
    extern "C" fn visit(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> i32 {
        let marker = data as usize;
        // SAFETY: the loader passes a valid dl_phdr_info whose phdr array has phnum entries.
        let info = unsafe { &*info };
        // SAFETY: as above.
        let phdrs =
            unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr as usize;
        let code = || {
            phdrs
                .iter()
                .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0)
                .map(move |p| {
                    let start = base + p.p_vaddr as usize;
                    (start, start + p.p_memsz as usize)
                })
        };
        if !code().any(|(s, e)| s <= marker && marker < e) {
            return 0;
        }
        let start = code().map(|c| c.0).min().unwrap_or(0);
        let end = code().map(|c| c.1).max().unwrap_or(0);
        SHIM_CODE[0].store(start, Ordering::Relaxed);
        SHIM_CODE[1].store(end, Ordering::Relaxed);
        1
    }
    let marker = on_signal as *const () as *mut c_void;
    // SAFETY: the callback only reads the loader's program headers.
    unsafe { libc::dl_iterate_phdr(Some(visit), marker) };
}

/// The interposed `sigaction(2)`.
///
/// # Safety
/// `sigaction(2)`.
pub unsafe fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let Some(real) = real_sigaction() else {
        sys::set_errno(libc::ENOSYS);
        return -1;
    };
    let Some(i) = slot(sig).filter(|_| INSTALLED.load(Ordering::Acquire)) else {
        // SAFETY: forwarded.
        return unsafe { real(sig, act, old) };
    };
    let _blocked = sys::block_signals();
    let _w = WRITE.lock();
    if !old.is_null() {
        let Some(current) = ACTIONS[i].read() else {
            sys::set_errno(libc::EAGAIN);
            return -1;
        };
        // SAFETY: the caller's out-pointer.
        unsafe { old.write(current) };
    }
    if !act.is_null() {
        // SAFETY: the caller's action.
        let act = unsafe { act.read() };
        ACTIONS[i].write(&act);
        if take(real, sig, &act).is_err() {
            return -1;
        }
    }
    0
}

/// The interposed `signal(3)` (and `bsd_signal`): glibc's BSD semantics (`SA_RESTART`,
/// the signal blocked while its handler runs).
///
/// # Safety
/// `signal(3)`.
pub unsafe fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if slot(sig).is_none() || !INSTALLED.load(Ordering::Acquire) {
        return match real_signal() {
            // SAFETY: forwarded.
            Some(real) => unsafe { real(sig, handler) },
            None => libc::SIG_ERR,
        };
    }
    // SAFETY: sigaction is plain data; all-zero is valid.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: a local set.
    unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaddset(&mut act.sa_mask, sig);
    }
    // SAFETY: sigaction is plain data; all-zero is valid.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: local pointers.
    match unsafe { sigaction(sig, &act, &mut old) } {
        0 => old.sa_sigaction,
        _ => libc::SIG_ERR,
    }
}

/// The shim's handler of [`SIGNALS`] (see the module documentation).
extern "C" fn on_signal(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let errno = sys::errno();
    let Some(i) = slot(sig) else { return };
    let program = ACTIONS[i].read();
    let handler = program.map_or(libc::SIG_DFL, |a| a.sa_sigaction);
    // SAFETY: the kernel passes a valid siginfo (SA_SIGINFO).
    let by_kernel = !info.is_null() && unsafe { (*info).si_code } > 0;
    match (handler, program) {
        (libc::SIG_IGN, _) if !by_kernel => {}
        (libc::SIG_IGN, _) | (libc::SIG_DFL, _) | (_, None) => die(sig, uctx),
        (h, Some(act)) => {
            if act.sa_flags & libc::SA_RESETHAND != 0 {
                // A writer holding the lock is setting a new action anyway.
                if let Some(_w) = WRITE.try_lock() {
                    let mut reset = act;
                    reset.sa_sigaction = libc::SIG_DFL;
                    reset.sa_flags &= !libc::SA_SIGINFO;
                    ACTIONS[i].write(&reset);
                }
            }
            let mut mask = act.sa_mask;
            // SAFETY: a local set; pthread_sigmask is async-signal-safe, and the mask
            // the program had comes back when the handler returns (sigreturn).
            unsafe {
                if act.sa_flags & libc::SA_NODEFER == 0 {
                    libc::sigaddset(&mut mask, sig);
                }
                libc::pthread_sigmask(libc::SIG_BLOCK, &mask, core::ptr::null_mut());
            }
            sys::set_errno(errno);
            if act.sa_flags & libc::SA_SIGINFO != 0 {
                type Action = extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void);
                // SAFETY: the program's SA_SIGINFO handler has this signature.
                let f = unsafe { core::mem::transmute::<usize, Action>(h) };
                f(sig, info, uctx);
            } else {
                type Handler = extern "C" fn(c_int);
                // SAFETY: the program's plain handler has this signature.
                let f = unsafe { core::mem::transmute::<usize, Handler>(h) };
                f(sig);
            }
        }
    }
}

/// The program dies of `sig`: the last snapshot (when this process is the recorded
/// one), then the kernel's default action.
fn die(sig: c_int, uctx: *mut c_void) {
    // SAFETY: gettid and getpid cannot fail.
    let (pid, tid) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as c_int) };
    // Without tracking the epoch thread has stopped: no snapshot can come.
    let armed = ARMED_PID.load(Ordering::Acquire) == pid
        && crate::tracking::regions::tracking()
        && recorder_heard()
        && !in_shim(uctx);
    if armed && CRASH_TID.load(Ordering::Acquire) != tid {
        if CRASH_SIGNAL
            .compare_exchange(0, sig, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            CRASH_TID.store(tid, Ordering::Release);
            stats::set(Counter::FlightSignal, sig as u64);
            PHASE.store(ASKED, Ordering::Release);
        }
        wait_recorded();
    }
    default_action(pid, tid, sig);
}

/// Whether a recorder has written a version of this process (it says so with
/// `recorded V MS`): only then is there one to wait for. Not after an `exec` (the
/// recording ends there), nor with `MEMSHADOW_FLIGHT=1` and no recorder.
fn recorder_heard() -> bool {
    stats::page()
        .counter(Counter::RecordedVersion)
        .load(Ordering::Relaxed)
        > 0
}

/// Waits until the last snapshot is recorded (or failed), at most [`WAIT_MS`].
fn wait_recorded() {
    let start = crate::engine::now_ns();
    loop {
        let phase = PHASE.load(Ordering::Acquire);
        if phase == RECORDED || phase == FAILED {
            return;
        }
        let waited_ms = (crate::engine::now_ns() - start) / 1_000_000;
        if waited_ms >= WAIT_MS {
            let sig = CRASH_SIGNAL.load(Ordering::Relaxed);
            match phase {
                TAKEN => crate::base::log::error!(
                    "signal {sig}: the recorder did not write the last snapshot (version {}) within {} s; the program goes on dying",
                    CRASH_VERSION.load(Ordering::Relaxed),
                    WAIT_MS / 1000
                ),
                _ => crate::base::log::error!(
                    "signal {sig}: no last snapshot was taken within {} s; the program goes on dying",
                    WAIT_MS / 1000
                ),
            }
            return;
        }
        if phase == ASKED && !crate::tracking::regions::tracking() {
            return; // the epoch thread stopped (and said why)
        }
        if phase == ASKED {
            crate::service::epoch::wake_for_flight();
        }
        sys::futex_wait(&PHASE, phase, NUDGE_MS.min(WAIT_MS - waited_ms));
    }
}

/// Whether the interrupted code is the shim's.
fn in_shim(uctx: *mut c_void) -> bool {
    let pc = interrupted_pc(uctx);
    let (start, end) = (
        SHIM_CODE[0].load(Ordering::Relaxed),
        SHIM_CODE[1].load(Ordering::Relaxed),
    );
    pc.is_some_and(|pc| start <= pc && pc < end)
}

#[cfg(target_arch = "x86_64")]
fn interrupted_pc(uctx: *mut c_void) -> Option<usize> {
    // SAFETY: the kernel passes the interrupted context (SA_SIGINFO).
    (!uctx.is_null()).then(|| unsafe {
        (*(uctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as usize
    })
}

#[cfg(target_arch = "aarch64")]
fn interrupted_pc(uctx: *mut c_void) -> Option<usize> {
    // SAFETY: the kernel passes the interrupted context (SA_SIGINFO).
    (!uctx.is_null())
        .then(|| unsafe { (*(uctx as *const libc::ucontext_t)).uc_mcontext.pc as usize })
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn interrupted_pc(_: *mut c_void) -> Option<usize> {
    None
}

/// The kernel's `struct sigaction` (what `rt_sigaction` takes).
#[repr(C)]
struct KernelAction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Sets the kernel's disposition of `sig` to the default and sends it to this thread:
/// pending (it is blocked while its handler runs) it is delivered as the handler
/// returns, with the faulting context restored, so the core and the exit status are
/// those of a program without the shim.
fn default_action(pid: c_int, tid: c_int, sig: c_int) {
    let dfl = KernelAction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction with a valid kernel action and the kernel's sigset size;
    // tgkill to this very thread. Both are async-signal-safe system calls.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &dfl as *const KernelAction,
            core::ptr::null_mut::<KernelAction>(),
            8usize,
        );
        libc::syscall(libc::SYS_tgkill, pid, tid, sig);
    }
}

/// On the epoch thread: whether a crashing thread asks for the last snapshot.
pub fn asked() -> bool {
    PHASE.load(Ordering::Acquire) == ASKED
}

/// On the epoch thread: the last snapshot was taken (its version) or failed.
pub fn taken(result: Result<u64, impl core::fmt::Display>) {
    match result {
        Ok(v) => {
            CRASH_VERSION.store(v, Ordering::Release);
            stats::set(Counter::FlightVersion, v);
            PHASE.store(TAKEN, Ordering::Release);
        }
        Err(e) => {
            crate::base::log::error!(
                "signal {}: the last snapshot failed ({e}); the program goes on dying",
                CRASH_SIGNAL.load(Ordering::Relaxed)
            );
            PHASE.store(FAILED, Ordering::Release);
        }
    }
    sys::futex_wake(&PHASE);
}

/// `flight V` over the control socket: the recorder has written the last snapshot.
pub fn recorded_reply(args: &[&str]) -> Vec<u8> {
    let v = match args {
        [v] => v.parse::<u64>().ok(),
        _ => None,
    };
    let Some(v) = v else {
        return encode_error("usage: flight VERSION (decimal)").into_bytes();
    };
    if PHASE.load(Ordering::Acquire) != TAKEN || CRASH_VERSION.load(Ordering::Acquire) != v {
        return encode_error(&format!("version {v} is not a crash's last snapshot")).into_bytes();
    }
    PHASE.store(RECORDED, Ordering::Release);
    sys::futex_wake(&PHASE);
    encode_ok(&[("version", v.to_string())]).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_action_reads_back_as_written() {
        let a = ProgramAction::new();
        let read = a.read().unwrap();
        assert_eq!((read.sa_sigaction, read.sa_flags), (libc::SIG_DFL, 0));
        // SAFETY: plain data.
        let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
        act.sa_sigaction = 0x1234;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        // SAFETY: a local set.
        unsafe { libc::sigaddset(&mut act.sa_mask, libc::SIGUSR1) };
        a.write(&act);
        let read = a.read().unwrap();
        assert_eq!((read.sa_sigaction, read.sa_flags), (0x1234, act.sa_flags));
        // SAFETY: a local set.
        let member = unsafe { libc::sigismember(&read.sa_mask, libc::SIGUSR1) };
        assert_eq!(member, 1);
        // A writer in the middle of writing: the reader gives up rather than tear.
        a.seq.fetch_add(1, Ordering::AcqRel);
        assert!(a.read().is_none());
    }

    #[test]
    fn only_the_five_fatal_signals_are_taken() {
        assert!(SIGNALS.iter().all(|&s| slot(s).is_some()));
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD, libc::SIGUSR1] {
            assert_eq!(slot(s), None);
        }
    }
}
