//! The recorder: takes a snapshot of a shimmed process every period and writes each
//! version into a store (`memshadow_store`), as a delta of the pages that changed since
//! the last recorded version or as a base, until the process exits, the time is up or
//! it is interrupted.
//!
//! It runs in the `memshadow` process, never in the host: the shim only answers
//! `snapshot`, `pin` and `changes V SINCE` (which lists the changed ranges and streams
//! their bytes on one connection).
//!
//! A version it still needs is never evicted under it: it pins the version it records
//! (and keeps the pin of the last recorded one, which the next delta is counted from)
//! until the store has published it. The next snapshot waits until the last one is
//! written: when writing takes longer than the period, it says so once and records less
//! often. A version it could not finish is never published (the store writes its
//! manifest last). A failure of the store (a full disk, a refused upload) ends the
//! recording with one line; the program carries on untouched.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memshadow_store::{PageSource, SourceError, Store, StoreError, VersionInfo};

use crate::control_client::{self, ChangesStream, ControlError, Endpoint, Pin};
use crate::target::Target;

/// How long a failed request waits for the process to turn out to have exited.
const EXIT_PATIENCE: Duration = Duration::from_secs(2);

/// What to record and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Time between snapshots.
    pub every: Duration,
    /// Stop after this long (None: until the process exits or a stop is asked).
    pub limit: Option<Duration>,
    /// Keep only the newest N versions.
    pub keep: Option<usize>,
    /// Keep only versions younger than this.
    pub keep_for: Option<Duration>,
}

/// What a recording did.
#[derive(Debug, Default, Clone)]
pub struct Recording {
    pub versions: u64,
    pub bases: u64,
    pub stored_bytes: u64,
    pub pages: u64,
    /// The last version recorded.
    pub last: Option<u64>,
    /// Periods in which writing took longer than the period.
    pub behind: u64,
    /// Time spent waiting for the program to stop trapping (see [`Courtesy`]).
    pub gave_way: Duration,
    /// The program's last snapshot as it died (the flight recorder): version, signal.
    pub crash: Option<(u64, u32)>,
}

/// Why a recording ended early.
#[derive(Debug)]
pub enum RecordError {
    /// The store could not be opened, or failed while writing (nothing half-written is
    /// published).
    Store(StoreError),
    /// The process refused or broke the connection (the message says which).
    Process(String),
    /// The store holds a recording of another process.
    OtherProcess { store_pid: u32, pid: u32 },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Store(e) => write!(f, "{e}"),
            RecordError::Process(m) => write!(f, "{m}"),
            RecordError::OtherProcess { store_pid, pid } => write!(
                f,
                "the store holds a recording of process {store_pid}, not {pid}: record into a new store"
            ),
        }
    }
}

/// Opens (or creates) the store at `target` for recording process `pid`.
pub fn open_store(target: &str, pid: u32, page_size: u32) -> Result<Store, RecordError> {
    let mut store = Store::create_or_open(target, page_size).map_err(RecordError::Store)?;
    let versions = store.versions().map_err(RecordError::Store)?;
    if let Some(v) = versions.iter().find(|v| v.pid != pid) {
        return Err(RecordError::OtherProcess {
            store_pid: v.pid,
            pid,
        });
    }
    Ok(store)
}

/// Records the process `target` into `store` following `plan` until it exits,
/// `plan.limit` runs out or `stop` is set. `behind` is called once when writing falls
/// behind the period, `skip` once when the process refused a version (the recording goes
/// on with a base; it gives up after [`MAX_SKIPPED`] refusals in a row).
pub fn record(
    target: &Target,
    store: &mut Store,
    plan: &Plan,
    stop: &AtomicBool,
    behind: &mut dyn FnMut(Duration),
    skip: &mut dyn FnMut(&str),
) -> Result<Recording, RecordError> {
    let started = Instant::now();
    let mut done = Recording::default();
    let mut newer: Option<Target> = None;
    let mut offset = 0;
    let result = loop {
        let current = newer.as_ref().unwrap_or(target);
        let image = Image {
            target: current,
            offset,
        };
        match record_until_done(&image, store, plan, stop, behind, skip, started, &mut done) {
            // The process ran exec: the new program's versions follow on in the store,
            // from a base (its shim counts its own versions from 1 again).
            Ok(Some(next)) => {
                offset = store
                    .version_numbers()
                    .map_err(RecordError::Store)?
                    .last()
                    .copied()
                    .unwrap_or(0);
                newer = Some(next);
            }
            Ok(None) => break Ok(done),
            Err(e) => break Err(e),
        }
    };
    // Nothing records the process any more (a dying thread of it must not wait for a
    // recorder, see the shim's `service::flight`). Best effort: it may be gone.
    let current = newer.as_ref().unwrap_or(target);
    if !current.gone() {
        let _ = control_client::recorded(&current.socket, 0, Some(0));
    }
    result
}

/// One program image of the recorded process (it changes when the process runs exec):
/// its shim numbers versions from 1, stored as version `offset + V`.
struct Image<'a> {
    target: &'a Target,
    offset: u64,
}

impl Image<'_> {
    /// The store's number for this image's version `v`.
    fn stored(&self, v: u64) -> u64 {
        self.offset + v
    }
}

/// How a failed request to the process turned out.
enum Outcome {
    /// The process exited: the recording is complete.
    Exited,
    /// The process runs another program now (exec), whose shim answers.
    NewImage(Target),
    /// The process is there and does not answer (the message says why).
    Failed(RecordError),
}

/// The process's new program image (it ran exec), once its shim answers: waits at most
/// [`EXIT_PATIENCE`]; the end of the recording if the process exits meanwhile.
fn new_image(target: &Target) -> Result<Option<Target>, RecordError> {
    let waited = Instant::now();
    loop {
        if target.gone() {
            return Ok(None);
        }
        match Target::find(target.pid) {
            Ok(t) if !t.same_image(target) => return Ok(Some(t)),
            Err(f) if waited.elapsed() > EXIT_PATIENCE => {
                return Err(RecordError::Process(format!(
                    "process {} ran exec and its new program cannot be recorded: {}",
                    target.pid, f.message
                )))
            }
            _ if waited.elapsed() > EXIT_PATIENCE => {
                return Err(RecordError::Process(format!(
                    "process {} ran exec, and no new shim answers for it",
                    target.pid
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// After a failed request: the process turned out to have exited, or to run a new
/// program whose shim answers (exec replaces the shim with a new one: new stats page,
/// new socket, versions from 1), or neither within [`EXIT_PATIENCE`]: the failure.
fn after_failure(target: &Target, e: ControlError) -> Outcome {
    match new_image(target) {
        Ok(None) => Outcome::Exited,
        Ok(Some(t)) => Outcome::NewImage(t),
        Err(_) => Outcome::Failed(RecordError::Process(target.explain(e).message)),
    }
}

/// Records one program image of the process into `done`; returns the process's next
/// image when it ran exec, None when the recording is over.
#[allow(clippy::too_many_arguments)]
fn record_until_done(
    image: &Image,
    store: &mut Store,
    plan: &Plan,
    stop: &AtomicBool,
    behind: &mut dyn FnMut(Duration),
    skip: &mut dyn FnMut(&str),
    started: Instant,
    done: &mut Recording,
) -> Result<Option<Target>, RecordError> {
    let target = image.target;
    let socket = &target.socket;
    lower_priority();
    // The last version recorded, pinned: the next delta counts from it.
    let mut last: Option<(u64, Option<Pin>)> = None;
    let mut said_behind = false;
    let (mut skipped, mut said_skipped) = (0, false);
    let mut plans = crate::plan_keeper::PlanKeeper::default();
    let mut seen = crate::plan_keeper::Seen::default();
    loop {
        if stop.load(Ordering::Relaxed) || plan.limit.is_some_and(|l| started.elapsed() >= l) {
            break;
        }
        // The program is dying and waits for its last snapshot to be written: that
        // version ends the recording.
        if let Some(crash) = crashed(target) {
            record_crash(image, store, crash, last.as_ref().map(|l| l.0), done)?;
            break;
        }
        let period_start = Instant::now();
        let since = last.as_ref().map(|(v, _)| *v);
        let mut courtesy = Courtesy::new(target, (plan.every / 2).min(MAX_COURTESY));
        let taken_ms = now_ms();
        // The statistics as the snapshot is asked for: what the version's are when the
        // program has exited (and its page is gone) by the time the version is stored.
        let page_at_snapshot = target.page();
        seen.clear(plans.fingerprinting());
        let attempted = attempt(image, store, since, &mut courtesy, &mut seen);
        done.gave_way += courtesy.waited;
        let (version, outcome, pin) = match attempted {
            Ok(recorded) => {
                skipped = 0;
                recorded
            }
            Err(Failed::Store(e)) => return Err(RecordError::Store(e)),
            Err(Failed::Exec) => return new_image(target),
            // The process refused this version (its snapshot was given up when the
            // shadow budget ran out, or the version went before it was read): what was
            // recorded stays, the next version is a base, and the recording goes on.
            Err(Failed::Process(e)) if refusal(&e) && !target.gone() => {
                skipped += 1;
                if skipped > MAX_SKIPPED {
                    return Err(RecordError::Process(target.explain(e).message));
                }
                if !said_skipped {
                    said_skipped = true;
                    skip(&target.explain(e).message);
                }
                last = None;
                std::thread::sleep(plan.every.min(Duration::from_millis(100)));
                continue;
            }
            // A process in the middle of exiting closes its socket before it is a
            // zombie; one running exec gets a new shim.
            Err(Failed::Process(e)) => match after_failure(target, e) {
                Outcome::Exited => break,
                Outcome::NewImage(next) => return Ok(Some(next)),
                Outcome::Failed(e) => return Err(e),
            },
        };
        done.versions += 1;
        done.bases += outcome.base as u64;
        done.stored_bytes += outcome.stored_bytes;
        done.pages += outcome.pages;
        done.last = Some(image.stored(version));
        keep_version_stats(target, store, image.stored(version), page_at_snapshot, &[]);
        plans.after_version(
            socket,
            store,
            version,
            image.stored(version),
            outcome.base,
            &seen,
        );
        // The new version is published: the old pin can go, and the holders of the
        // versions up to it (their copies of the program's pages are in the store now;
        // a holder let go stops the program's writes copying pages for it). A shim
        // that cannot only keeps them longer: nothing to say.
        last = Some((version, pin));
        let _ = control_client::recorded(socket, version, Some(taken_ms));
        if plan.keep.is_some() || plan.keep_for.is_some() {
            let retained = store
                .retain(plan.keep, plan.keep_for)
                .map_err(RecordError::Store)?;
            keep_version_stats(target, store, 0, None, &retained.dropped);
        }
        let took = period_start.elapsed();
        if took > plan.every {
            done.behind += 1;
            if !said_behind {
                said_behind = true;
                behind(took);
            }
            continue;
        }
        // Sleep out the period in small steps, so a stop or the end of the process is
        // noticed soon.
        let due = period_start + plan.every;
        while Instant::now() < due && !stop.load(Ordering::Relaxed) {
            if plan.limit.is_some_and(|l| started.elapsed() >= l) || crashed(target).is_some() {
                break;
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(20)));
        }
    }
    Ok(None)
}

/// Writes the process's statistics as they are now (else `earlier`, when its page is
/// gone) beside `version` (0: none), for `memshadow report`
/// (`memshadow_format::version_stats`), and removes those of the versions in `dropped`.
/// Best effort: a version's statistics are an extra the report says are absent when
/// missing, never a reason to stop recording.
fn keep_version_stats(
    target: &Target,
    store: &Store,
    version: u64,
    earlier: Option<memshadow_format::stats::StatsRecord>,
    dropped: &[u64],
) {
    use memshadow_format::version_stats;
    if version > 0 {
        if let Some(page) = target.page().or(earlier) {
            let bytes = version_stats::encode(version, &page.fields());
            let _ = store
                .backend()
                .put_replace(&version_stats::version_stats_name(version), &bytes);
        }
    }
    for &v in dropped {
        let _ = store
            .backend()
            .delete(&version_stats::version_stats_name(v));
    }
}

/// The nice value the recorder's threads run at: the program it records comes first.
const RECORDER_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (and so its encoder threads', which inherit it):
/// reading, compressing and writing versions must take the CPU the program leaves.
fn lower_priority() {
    // SAFETY: gettid has no arguments; setpriority on our own thread id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, RECORDER_NICE);
    }
}

/// Versions refused one after the other before the recording gives up.
const MAX_SKIPPED: u32 = 5;

/// Whether the process refused the request (as opposed to the connection failing).
fn refusal(e: &ControlError) -> bool {
    matches!(
        e,
        ControlError::Reply(memshadow_format::control::ReplyError::Refused(_))
    )
}

/// Takes a snapshot, pins it and records it as a delta since `since` (or a base): the
/// version, what the store wrote, and the pin (held until the next one is recorded).
fn attempt(
    image: &Image,
    store: &mut Store,
    since: Option<u64>,
    courtesy: &mut Courtesy,
    seen: &mut crate::plan_keeper::Seen,
) -> Result<(u64, memshadow_store::Recorded, Option<Pin>), Failed> {
    let socket = &image.target.socket;
    let version = control_client::snapshot(socket).map_err(Failed::Process)?;
    let pin = control_client::pin(socket, version).map_err(Failed::Process)?;
    // Taken by the shim of a program the process exec'd since: not this image's.
    if image.target.image_changed() {
        return Err(Failed::Exec);
    }
    // What a core file of the version needs beside its pages, read as close to the
    // snapshot as possible and stored before the version is published.
    put_context(image, store, version)?;
    let recorded = record_one(image, store, version, since, courtesy, 0, Some(seen))
        .inspect_err(|_| abandon(store, image.stored(version)))?;
    Ok((version, recorded, pin))
}

/// Stores the context of the image's `version` (what a core file needs beside the
/// pages); one that cannot be read is said once and the version goes without.
fn put_context(image: &Image, store: &Store, version: u64) -> Result<(), Failed> {
    match crate::core_context::read(image.target.pid, version) {
        Ok(mut ctx) => {
            ctx.version = image.stored(version);
            store.put_context(&ctx).map_err(Failed::Store)
        }
        Err(e) => {
            context_failed(&e);
            Ok(())
        }
    }
}

/// Removes the context an attempt at `stored` put before it failed (the process
/// exited or exec'd meanwhile, or the store refused the version). Best effort: what
/// is left is an orphan `memshadow verify` lists and a later retention removes.
fn abandon(store: &Store, stored: u64) {
    let _ = store.abandon(stored);
}

/// The flight recorder's last snapshot: the fatal signal and the version.
#[derive(Debug, Clone, Copy)]
struct Crash {
    signal: u32,
    version: u64,
}

/// The last snapshot of a dying program, once its shim has taken it (stats
/// `flight_signal` and `flight_version`, see the shim's `service::flight`).
fn crashed(target: &Target) -> Option<Crash> {
    use memshadow_format::stats::Counter;
    let page = target.page()?;
    let (signal, version) = (
        page.counters[Counter::FlightSignal.index()],
        page.counters[Counter::FlightVersion.index()],
    );
    (signal > 0 && version > 0).then_some(Crash {
        signal: signal as u32,
        version,
    })
}

/// Records the crash version, marked with its signal, as a delta since `since` (or a
/// base), then tells the shim (`flight V`) so that the dying thread goes on, also when
/// the version could not be written (it says so). A store failure ends the recording.
fn record_crash(
    image: &Image,
    store: &mut Store,
    crash: Crash,
    since: Option<u64>,
    done: &mut Recording,
) -> Result<(), RecordError> {
    let target = image.target;
    let socket = &target.socket;
    let mut courtesy = Courtesy::new(target, Duration::ZERO);
    let stored = image.stored(crash.version);
    let result = (|| -> Result<memshadow_store::Recorded, Failed> {
        let _pin = control_client::pin(socket, crash.version).map_err(Failed::Process)?;
        put_context(image, store, crash.version)?;
        // A version recorded after the crash began would come after this one.
        let since = since.filter(|&s| s < crash.version);
        let recorded = record_one(
            image,
            store,
            crash.version,
            since,
            &mut courtesy,
            crash.signal,
            None,
        )
        .inspect_err(|_| abandon(store, stored))?;
        // Its statistics too, while the process still waits.
        keep_version_stats(target, store, stored, None, &[]);
        Ok(recorded)
    })();
    let said = control_client::request(
        socket,
        &format!(
            "{} {}",
            memshadow_format::control::CMD_FLIGHT,
            crash.version
        ),
    );
    match result {
        Ok(outcome) => {
            done.versions += 1;
            done.bases += outcome.base as u64;
            done.stored_bytes += outcome.stored_bytes;
            done.pages += outcome.pages;
            done.last = Some(stored);
            done.crash = Some((stored, crash.signal));
        }
        Err(Failed::Store(e)) => return Err(RecordError::Store(e)),
        Err(Failed::Exec) => eprintln!(
            "memshadow: the program's last snapshot (version {stored}, {}) could not be recorded: the process ran exec",
            signal_name(crash.signal),
        ),
        Err(Failed::Process(e)) => eprintln!(
            "memshadow: the program's last snapshot (version {}, {}) could not be recorded: {}",
            stored,
            signal_name(crash.signal),
            target.explain(e).message
        ),
    }
    // The shim lets the dying thread go as it answers: the process may die before its
    // answer arrives. Only a process still alive after that did not hear it.
    let still_alive = || {
        let waited = Instant::now();
        while waited.elapsed() < EXIT_PATIENCE {
            if target.gone() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    };
    if let Err(e) = said
        .map(drop)
        .or_else(|e| if still_alive() { Err(e) } else { Ok(()) })
    {
        eprintln!(
            "memshadow: could not tell the dying program its last snapshot is recorded ({}); it waits out its time",
            target.explain(e).message
        );
    }
    Ok(())
}

/// `SIGSEGV` and the like for the flight recorder's signals, else `signal N`.
pub fn signal_name(sig: u32) -> String {
    match nix::sys::signal::Signal::try_from(sig as i32) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

/// Said once per recorder: the versions recorded meanwhile have no context (a core file
/// of them says so).
fn context_failed(e: &crate::core_context::ContextError) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("memshadow: the process's context for core files could not be read ({e}); versions are recorded without it");
    }
}

/// The recorder's courtesy to the program it records: it reads (and so compresses and
/// writes) a version only while the program is not trapping hard. Right after a
/// snapshot a program that writes scattered pages traps on most of its writes, each one
/// waiting on the shim's fault thread; on a machine with few cores the recorder's work
/// then takes CPU from that thread and lengthens the program's stall. It waits, in steps
/// of [`CALM_CHECK`], while the trap rate is above [`CALM_TRAPS_PER_S`], for at most
/// `patience` per version (half the period, at most [`MAX_COURTESY`]: a program that
/// traps without end is still recorded).
struct Courtesy<'a> {
    target: &'a Target,
    patience: Duration,
    waited: Duration,
    /// The trap counter and when it was read.
    last: Option<(u64, Instant)>,
    /// Whether [`Courtesy::wait_for_calm`] has looked yet (its first look always reads).
    checked: bool,
}

/// The longest the recorder waits for calm per version: the shim gives a stream's
/// reader 30 s per frame, and a storm of first writes lasts well under a second.
const MAX_COURTESY: Duration = Duration::from_secs(2);

/// How often the recorder looks at the trap counter.
const CALM_CHECK: Duration = Duration::from_millis(5);

/// The trap rate under which the program counts as calm: a trap costs it 10-40 us here,
/// so 2,000 a second is a few percent of one thread's time.
const CALM_TRAPS_PER_S: u64 = 2_000;

impl<'a> Courtesy<'a> {
    /// Reads the trap counter now: call it just before the snapshot, so the first check
    /// after it sees the traps the snapshot set off.
    fn new(target: &'a Target, patience: Duration) -> Self {
        Courtesy {
            target,
            patience,
            waited: Duration::ZERO,
            last: target.traps().map(|t| (t, Instant::now())),
            checked: false,
        }
    }

    /// Returns once the program is calm, or at once when it was calm less than
    /// [`CALM_CHECK`] ago, or when the patience is spent.
    fn wait_for_calm(&mut self) {
        if self.checked && self.last.is_some_and(|(_, at)| at.elapsed() < CALM_CHECK) {
            return;
        }
        self.checked = true;
        while self.waited < self.patience {
            let Some(traps) = self.target.traps() else {
                return;
            };
            let now = Instant::now();
            let previous = self.last.replace((traps, now));
            if previous.is_some_and(|(before, at)| calm(traps.saturating_sub(before), now - at)) {
                return;
            }
            std::thread::sleep(CALM_CHECK);
            self.waited += CALM_CHECK;
        }
    }
}

/// Whether `traps` taken over `over` is a calm program's rate.
fn calm(traps: u64, over: Duration) -> bool {
    (traps as f64) < CALM_TRAPS_PER_S as f64 * over.as_secs_f64()
}

/// Why one version was not recorded.
enum Failed {
    Process(ControlError),
    Store(StoreError),
    /// The process ran exec since the image was found: its new shim took the request.
    Exec,
}

/// Records version `version` as a delta since `since` (or a base when `since` is None
/// or no longer retained by the process); with `seen`, notes the ranges it lists as
/// changed and, if asked, fingerprints every page recorded into it (see `plan_keeper`).
#[allow(clippy::too_many_arguments)]
fn record_one(
    image: &Image,
    store: &mut Store,
    version: u64,
    since: Option<u64>,
    courtesy: &mut Courtesy,
    crash_signal: u32,
    seen: Option<&mut crate::plan_keeper::Seen>,
) -> Result<memshadow_store::Recorded, Failed> {
    // The snapshot just taken makes the program trap on its next writes: reading the
    // version meanwhile would take CPU from the fault thread it waits on.
    courtesy.wait_for_calm();
    let (socket, pid) = (&image.target.socket, image.target.pid);
    let base = || control_client::changes(socket, version, 0).map_err(Failed::Process);
    // Only the pages the store will take: every page when it writes a base.
    let stored_since = since.map(|s| image.stored(s));
    let since = match store.delta_of_next(stored_since).map_err(Failed::Store)? {
        Some(_) => since,
        None => None,
    };
    let (stream, since) = match since {
        Some(s) => match control_client::changes(socket, version, s) {
            Ok(stream) => (stream, Some(s)),
            // The last recorded version was given up or evicted (its pin gave way): a
            // base instead.
            Err(ControlError::Reply(memshadow_format::control::ReplyError::Refused(_))) => {
                (base()?, None)
            }
            Err(e) => return Err(Failed::Process(e)),
        },
        None => (base()?, None),
    };
    let info = VersionInfo {
        version: image.stored(version),
        time_ms: now_ms(),
        pid,
        regions: stream.header.regions.clone(),
        crash_signal,
    };
    let changed = stream.header.changes.clone();
    let prints = match seen {
        Some(seen) => {
            seen.changed.clone_from(&changed);
            seen.fingerprint.then_some(&mut seen.prints)
        }
        None => None,
    };
    let mut source = StreamSource::new(socket, version, stream, courtesy);
    let page_size = u64::from(store.page_size());
    let mut printing = crate::plan_keeper::Fingerprinting {
        inner: &mut source,
        page_size,
        prints,
    };
    let result = store.record(
        &info,
        since.map(|s| image.stored(s)),
        &changed,
        &mut printing,
    );
    match (result, source.failure.take()) {
        (Ok(r), _) => Ok(r),
        // The process side failed: say that, not the store's wrapping of it.
        (Err(_), Some(e)) => Err(Failed::Process(e)),
        (Err(e), None) => Err(Failed::Store(e)),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pages of one version as the store asks for them: from the `changes` stream when
/// they come next in it (the store asks in address order, as the stream sends), else
/// with a `read` of the pinned version.
struct StreamSource<'a, 't> {
    socket: &'a Endpoint,
    version: u64,
    /// The stream while it is read in order; dropped at the first page it cannot give
    /// in order (the process serves one connection at a time: a `read` beside an open
    /// stream would wait for the stream, which waits for its reader).
    stream: Option<ChangesStream>,
    /// The changes the stream sends, in order.
    changes: Vec<(u64, u64)>,
    /// Index in `changes` of the range the stream is in.
    next: usize,
    /// Address the stream is at (the next byte it gives).
    at: u64,
    skip: Vec<u8>,
    /// The process side's failure, if a read failed.
    failure: Option<ControlError>,
    courtesy: &'a mut Courtesy<'t>,
}

impl<'a, 't> StreamSource<'a, 't> {
    fn new(
        socket: &'a Endpoint,
        version: u64,
        stream: ChangesStream,
        courtesy: &'a mut Courtesy<'t>,
    ) -> Self {
        let changes = stream.header.changes.clone();
        let at = changes.first().map_or(u64::MAX, |c| c.0);
        StreamSource {
            socket,
            version,
            stream: Some(stream),
            changes,
            next: 0,
            at,
            skip: Vec::new(),
            failure: None,
            courtesy,
        }
    }

    /// Moves the stream forward to `addr` (reading and dropping what comes before it);
    /// true when the stream's next byte is `addr`'s.
    fn seek(&mut self, addr: u64) -> Result<bool, ControlError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        while let Some(&(start, len)) = self.changes.get(self.next) {
            let end = start + len;
            if addr < self.at {
                return Ok(false);
            }
            let until = addr.min(end);
            while self.at < until {
                let n = ((until - self.at) as usize).min(1 << 20);
                self.skip.resize(n, 0);
                stream.read_next(&mut self.skip[..n])?;
                self.at += n as u64;
            }
            if self.at < end {
                return Ok(self.at == addr);
            }
            self.next += 1;
            self.at = self.changes.get(self.next).map_or(u64::MAX, |c| c.0);
        }
        Ok(false)
    }

    /// Fills `out` with the bytes at `addr`.
    fn fill(&mut self, addr: u64, out: &mut [u8]) -> Result<(), ControlError> {
        let mut done = 0usize;
        while done < out.len() {
            let a = addr + done as u64;
            if self.seek(a)? {
                let (start, len) = self.changes[self.next];
                let n = ((start + len - a) as usize).min(out.len() - done);
                let stream = self.stream.as_mut().expect("seek found it open");
                stream.read_next(&mut out[done..done + n])?;
                self.at += n as u64;
                done += n;
                continue;
            }
            // Not next in the stream: the rest is read page range by page range.
            self.stream = None;
            let n = (out.len() - done).min(memshadow_format::control::MAX_READ);
            control_client::read(self.socket, self.version, a, &mut out[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

impl PageSource for StreamSource<'_, '_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.courtesy.wait_for_calm();
        self.fill(addr, buf).map_err(|e| {
            let message = format!("{e:?}");
            self.failure = Some(e);
            SourceError::Refused(message)
        })
    }
}

/// The recording settings of the command line.
fn plan_of(args: &crate::cli::RecordingArgs, limit: Option<Duration>) -> Plan {
    Plan {
        every: Duration::from_millis(args.every.unwrap_or(crate::cli::DEFAULT_EVERY_MS)),
        limit,
        keep: args.keep,
        keep_for: args.keep_for,
    }
}

/// `memshadow record PID --to STORE`.
pub fn record_command(args: crate::cli::RecordArgs) -> crate::error::Result<i32> {
    use crate::error::Failure;
    let target = crate::target::Target::find(args.pid)?;
    let page_size = page_size();
    let mut store = open_store(&args.to, args.pid, page_size)
        .map_err(|e| Failure::runtime(format!("{}: {e}", args.to)))?;
    crate::interrupt::stop_on_interrupt()?;
    let plan = plan_of(&args.recording, args.for_secs);
    let mut said = |took: Duration| behind_line(took, plan.every);
    let done = record(
        &target,
        &mut store,
        &plan,
        &crate::interrupt::INTERRUPTED,
        &mut said,
        &mut skipped_line,
    )
    .map_err(|e| Failure::runtime(format!("recording stopped: {e}")))?;
    eprintln!("memshadow: {}", summary(&done, &args.to));
    Ok(0)
}

/// One line about a recording.
pub fn summary(done: &Recording, store: &str) -> String {
    match done.last {
        None => format!("recorded nothing into {store}"),
        Some(last) => format!(
            "recorded {} version(s) ({} base(s), {} pages, {} bytes stored) into {store}; the last is version {last}{}; gave way to the program's traps for {} ms",
            done.versions,
            done.bases,
            done.pages,
            done.stored_bytes,
            match done.crash {
                Some((v, sig)) if v == last => format!(", taken as the program died of {}", signal_name(sig)),
                _ => String::new(),
            },
            done.gave_way.as_millis()
        ),
    }
}

/// The line said the first time writing a version takes longer than the period.
fn behind_line(took: Duration, every: Duration) {
    eprintln!(
        "memshadow: the recorder falls behind: writing a version took {} ms, more than the {} ms period; recording less often",
        took.as_millis(),
        every.as_millis()
    );
}

/// The line said the first time the process refuses a version.
fn skipped_line(why: &str) {
    eprintln!(
        "memshadow: a version could not be recorded ({why}); recording goes on with a new base"
    );
}

/// The page size of this machine (the shim's granularity).
pub fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as u32)
}

/// A recorder of a program that `memshadow run --record` starts: begins once the
/// program's shim has published its socket, ends when the program exits.
pub struct Background {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<Recording, String>>>,
    pub store: String,
}

/// How long `run --record` waits for the program's control socket to appear.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

impl Background {
    /// Starts recording `pid` into `store_target` on a thread of its own.
    pub fn start(pid: u32, store_target: &str, args: &crate::cli::RecordingArgs) -> Background {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let plan = plan_of(args, None);
        let (flag, target) = (stop.clone(), store_target.to_string());
        let thread = std::thread::spawn(move || -> Result<Recording, String> {
            let mut store = open_store(&target, pid, page_size()).map_err(|e| e.to_string())?;
            let waited = Instant::now();
            let found = loop {
                match crate::target::Target::find(pid) {
                    Ok(t) => break t,
                    Err(_) if flag.load(Ordering::Relaxed) => return Ok(Recording::default()),
                    Err(f) if waited.elapsed() > SOCKET_WAIT => return Err(f.message),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            let mut said = |took: Duration| behind_line(took, plan.every);
            record(
                &found,
                &mut store,
                &plan,
                &flag,
                &mut said,
                &mut skipped_line,
            )
            .map_err(|e| format!("recording stopped: {e}"))
        });
        // Said when it happens (the program carries on), not when the program ends.
        let store_name = store_target.to_string();
        let thread = std::thread::spawn(move || {
            let result = thread
                .join()
                .unwrap_or_else(|_| Err("the recorder panicked".into()));
            if let Err(e) = &result {
                eprintln!("memshadow: {store_name}: {e}");
            }
            result
        });
        Background {
            stop,
            thread: Some(thread),
            store: store_target.to_string(),
        }
    }

    /// Once the program has exited: waits for the recorder and says what it did.
    pub fn finish(mut self) -> Result<Recording, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the recorder thread panicked".into()),
            None => Ok(Recording::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_trapping_after_a_snapshot_is_not_calm() {
        // A storm of first writes: a trap every 25 us is 40,000 a second.
        assert!(!calm(200, Duration::from_millis(5)));
        // Just at the limit is not calm; under it is.
        assert!(!calm(10, Duration::from_millis(5)));
        assert!(calm(9, Duration::from_millis(5)));
        assert!(calm(0, Duration::from_millis(5)));
        // The rate, not the count: a slow check sees more traps of a calm program.
        assert!(calm(150, Duration::from_millis(100)));
    }
}
