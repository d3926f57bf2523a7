//! `memshadow follow STORE --into DIR`: a replica of a store, kept current (the work is
//! `memshadow_store::replica`; this is the loop, the waiting and the output).

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use memshadow_store::replica::{Follower, Metrics, ReplicaError};
use memshadow_store::StoreError;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde_json::json;

use crate::cli::FollowArgs;
use crate::error::{Failure, Result};

/// Longest wait between two listings of an S3 store (and between two checks of a local
/// one, should an event be missed).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Longest wait between two tries when the store is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

fn failure(store: &str, dir: &Path, e: ReplicaError) -> Failure {
    match e {
        ReplicaError::Refused(_) => Failure::usage(e),
        ReplicaError::Store(StoreError::NotAStore(_)) => Failure::usage(e),
        ReplicaError::Store(e) if e.is_damage() => Failure::runtime(format!(
            "{store} is damaged: {e} (see memshadow verify {store})"
        )),
        e => Failure::runtime(format!("following {store} into {}: {e}", dir.display())),
    }
}

/// Waits for the store to publish something: an inotify event on a local store's
/// `manifests/`, or at most [`POLL_EVERY`].
struct Waiter {
    inotify: Option<Inotify>,
}

impl Waiter {
    fn new(store: &str) -> Waiter {
        if store.starts_with("s3://") {
            return Waiter { inotify: None };
        }
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .ok()
            .filter(|i| {
                i.add_watch(
                    &Path::new(store).join("manifests"),
                    AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE,
                )
                .is_ok()
            });
        Waiter { inotify }
    }

    fn wait(&self) {
        match &self.inotify {
            Some(i) => {
                let mut fds = [PollFd::new(i.as_fd(), PollFlags::POLLIN)];
                let ms = u16::try_from(POLL_EVERY.as_millis()).unwrap_or(u16::MAX);
                let _ = poll(&mut fds, PollTimeout::from(ms));
                let _ = i.read_events();
            }
            None => std::thread::sleep(POLL_EVERY),
        }
    }
}

fn metrics_json(m: &Metrics, newest: Option<u64>) -> serde_json::Value {
    json!({
        "version": newest,
        "synced_version": m.synced_version,
        "sync_s": m.sync_s,
        "sync_bytes": m.sync_bytes,
        "naive_bytes": m.naive_bytes,
        "image_bytes": m.image_bytes,
        "pages_downloaded_twice": m.pages_downloaded_twice,
        "plan_hit_rate": m.plan_hit_rate,
        "plan_pages": m.plan_pages,
        "order": m.order,
        "plan_version": m.plan_version,
        "unneeded_bytes": m.unneeded_bytes,
        "reused_pages": m.reused_pages,
        "header_reads": m.header_reads,
        "retargets": m.retargets,
        "delta_log_bytes": m.delta_log_bytes,
        "delta_versions": m.delta_versions,
        "lag_versions": m.lag_versions,
        "lag_s": m.lag_s,
    })
}

fn summary(m: &Metrics, newest: Option<u64>, dir: &Path) -> String {
    let newest = newest.map_or("none".to_string(), |v| v.to_string());
    let synced = match m.synced_version {
        Some(v) => format!(
            "synced version {v} in {:.2} s fetching {} bytes (base plus chain: {}, one image: {}; {} page(s) fetched twice, {} page(s) kept from before; ordered by {})",
            m.sync_s, m.sync_bytes, m.naive_bytes, m.image_bytes, m.pages_downloaded_twice, m.reused_pages, m.order
        ),
        None => "no sync needed".to_string(),
    };
    format!(
        "replica {}: newest version {newest}; {synced}; then {} version(s), {} bytes of deltas; lag {} version(s), {:.2} s",
        dir.display(),
        m.delta_versions,
        m.delta_log_bytes,
        m.lag_versions,
        m.lag_s
    )
}

/// `memshadow follow STORE --into DIR [--until V] [--json]`.
pub fn follow(args: FollowArgs) -> Result<i32> {
    let (store, dir) = (args.store.as_str(), args.into.as_path());
    let mut f = Follower::open(store, dir).map_err(|e| failure(store, dir, e))?;
    crate::interrupt::stop_on_interrupt()?;
    f.interrupt = Some(&crate::interrupt::INTERRUPTED);
    let waiter = Waiter::new(store);
    let mut backoff = Duration::from_millis(250);
    let mut down = false;
    let mut said_empty = false;
    let mut said_sync = false;
    while !crate::interrupt::INTERRUPTED.load(Ordering::Relaxed) {
        if args
            .until
            .is_some_and(|u| f.newest().is_some_and(|n| n >= u))
        {
            break;
        }
        match f.step(args.until) {
            Ok(_) => {
                if down {
                    eprintln!("memshadow: {store} is reachable again");
                }
                down = false;
                backoff = Duration::from_millis(250);
                let _ = f.measure_lag();
                let ending = args
                    .until
                    .is_some_and(|u| f.newest().is_some_and(|n| n >= u));
                if !said_sync && !ending {
                    if let Some(v) = f.metrics.synced_version {
                        said_sync = true;
                        let m = &f.metrics;
                        eprintln!(
                            "memshadow: synced version {v} into {} in {:.2} s: {} bytes fetched (base plus chain: {}, one image: {}); following",
                            dir.display(), m.sync_s, m.sync_bytes, m.naive_bytes, m.image_bytes
                        );
                    }
                }
                waiter.wait();
            }
            Err(ReplicaError::Interrupted) => break,
            Err(ReplicaError::Empty) => {
                if !said_empty {
                    eprintln!("memshadow: {store} has no version yet; waiting for one");
                    said_empty = true;
                }
                waiter.wait();
            }
            Err(e) if e.is_transient() => {
                if !down {
                    eprintln!(
                        "memshadow: {store} is unreachable ({e}); retrying, at most every {} s",
                        MAX_BACKOFF.as_secs()
                    );
                    down = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(failure(store, dir, e)),
        }
    }
    let _ = f.measure_lag();
    eprintln!("memshadow: {}", summary(&f.metrics, f.newest(), dir));
    if args.json {
        println!("{}", metrics_json(&f.metrics, f.newest()));
    }
    Ok(0)
}
