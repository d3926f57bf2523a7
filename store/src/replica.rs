//! Replicas: a local store that follows another store (`memshadow follow`).
//!
//! A replica *is* a local store in the layout of `memshadow_format::store`, plus a
//! `follow/` folder holding the name of the store it follows: every command that reads a
//! store (`log`, `read`, `restore`, `diff`, `verify`, `core`) reads a replica unchanged,
//! and it is published the way a store is (data objects whole, fsynced, then the
//! manifest), so a follower killed at any moment leaves only complete versions.
//!
//! **Initial sync.** The follower reads the source's manifests, locates for every page of
//! the newest version the record that holds its newest copy (the first manifest of the
//! chain whose runs hold it), and fetches only the runs holding such records (a range
//! read per run: records are compressed page by page, so a run is the smallest unit whose
//! record boundaries are known without reading it). Each run fetched is checked record by
//! record and kept as a data object of the replica, named after the source object and run
//! (so a restarted follower finds what it has and does not fetch it again). Runs are
//! fetched oldest source version first: pages a recent delta wrote are the likeliest to
//! change again, so they come last. Between runs the follower lists the source again; when
//! a newer version is published it moves its target there (the pages that version wrote
//! are fetched anew; those it had fetched already and that changed are
//! `pages_downloaded_twice`). When nothing is missing for the target, it publishes one
//! base manifest of that version whose runs point into the records it holds, without
//! re-encoding a page.
//!
//! **Following.** A version whose previous version the replica holds (or a base) is
//! copied as stored: its data objects, then its manifest, byte for byte. Otherwise (the
//! source's retention dropped versions the follower had not copied yet) the follower
//! syncs again as above, reusing every record it holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memshadow_format::store::{
    self as layout, DataWriter, EncodedPage, FormatError, Kind, Manifest, ObjectRef, PageDecoder,
    Run, DATA_HEADER_SIZE, DATA_TRAILER_SIZE, RECORD_HEADER_SIZE,
};
use memshadow_format::version_stats;
use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};

use crate::backend::BackendError;
use crate::read::locate;
use crate::{damaged, Store, StoreError, RUN_MAX_PAGES};

/// Folder of a replica that says what it follows.
pub const FOLLOW_DIR: &str = "follow";
/// File in [`FOLLOW_DIR`] holding the source store's name.
pub const SOURCE_FILE: &str = "SOURCE";
/// How often, at most, the source is listed again during a sync.
const RELIST_EVERY: Duration = Duration::from_millis(200);
/// A page whose newest copy is in one of this many newest versions is "hot": fetched last.
const HOT_VERSIONS: u64 = 8;

/// Why a replica could not be made, opened or kept current.
#[derive(Debug)]
pub enum ReplicaError {
    /// The source failed (see [`StoreError`]).
    Store(StoreError),
    /// The replica itself (DIR) failed: never retried as if the source were away.
    Replica(StoreError),
    /// DIR cannot be a replica of that source (exists and is something else...).
    Refused(String),
    /// A local file of the replica could not be written or read.
    Io { what: String, source: io::Error },
    /// The source has no version yet.
    Empty,
    /// The sync was interrupted (see [`Follower::interrupt`]); what it fetched is kept.
    Interrupted,
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Store(e) => write!(f, "{e}"),
            ReplicaError::Replica(e) => write!(f, "the replica: {e}"),
            ReplicaError::Refused(why) => write!(f, "{why}"),
            ReplicaError::Io { what, source } => write!(f, "{what}: {source}"),
            ReplicaError::Empty => write!(f, "the store has no version yet"),
            ReplicaError::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl std::error::Error for ReplicaError {}

impl From<StoreError> for ReplicaError {
    fn from(e: StoreError) -> Self {
        ReplicaError::Store(e)
    }
}

impl From<BackendError> for ReplicaError {
    fn from(e: BackendError) -> Self {
        ReplicaError::Store(StoreError::Backend(e))
    }
}

impl ReplicaError {
    /// Whether trying again later may succeed (the source unreachable, a version dropped
    /// under us), as opposed to a refusal, damage or a failure of the replica's own files.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ReplicaError::Store(StoreError::Backend(
                BackendError::Remote(_) | BackendError::Io { .. }
            )) | ReplicaError::Empty
        )
    }
}

/// An error of the replica's own store (DIR), told apart from the source's.
fn local(e: impl Into<StoreError>) -> ReplicaError {
    ReplicaError::Replica(e.into())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ReplicaError {
    let what = what.into();
    move |source| ReplicaError::Io { what, source }
}

/// What a follower measured (see the README's `follow`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Seconds the initial sync took (listing to publishing its version).
    pub sync_s: f64,
    /// Bytes the initial sync fetched from the source: manifests and records.
    pub sync_bytes: u64,
    /// Newest base plus every delta after it, for the version synced (from manifests).
    pub naive_bytes: u64,
    /// Bytes of the records of the synced version: one compressed image of it.
    pub image_bytes: u64,
    /// Pages fetched during the sync whose copy a newer version replaced before the end.
    pub pages_downloaded_twice: u64,
    /// Of the pages the order put last (hot), the share that changed again during the
    /// sync; None when none was put last.
    pub plan_hit_rate: Option<f64>,
    /// Pages the order put last.
    pub plan_pages: u64,
    /// What ordered the sync: `plan` (the recorder's plan object of `plan_version`) or
    /// `history` (no plan: pages recent deltas wrote last).
    pub order: &'static str,
    /// The source version whose plan ordered the sync.
    pub plan_version: Option<u64>,
    /// Bytes fetched in runs for records of pages a newer version replaced (a run is
    /// fetched whole: its records' boundaries are not known before it is read).
    pub unneeded_bytes: u64,
    /// Pages the sync found in the replica already (a restart) and did not fetch.
    pub reused_pages: u64,
    /// Record headers read one by one (to fetch only some records of a sparse run).
    pub header_reads: u64,
    /// Times the sync moved its target to a newer version.
    pub retargets: u64,
    /// The version the sync published.
    pub synced_version: Option<u64>,
    /// Bytes of data objects copied after the sync (the delta log).
    pub delta_log_bytes: u64,
    /// Versions copied after the sync.
    pub delta_versions: u64,
    /// The source's newest version minus the replica's newest.
    pub lag_versions: u64,
    /// Seconds between the source's newest version and the replica's newest.
    pub lag_s: f64,
}

/// Records held by the replica, consecutive, one per page: a run of a data object copied
/// as stored, or a slice fetched by a sync (a staged file, a data object of its records).
#[derive(Debug, Clone)]
struct LocalRun {
    /// Data object name, or file name in `follow/staged/`.
    object: String,
    staged: bool,
    offset: u64,
    bytes: u64,
    pages: u64,
}

/// Identity of a record run of the source: its object and offset.
type RunId = (String, u64);

/// Records `first..first + pages` of a source run, fetched by a sync and kept in
/// `follow/staged/<file>`, a data object of those records alone. The file's name says
/// which (see [`slice_name`]): a restarted follower knows what it has from the names.
#[derive(Debug, Clone)]
struct Slice {
    file: String,
    /// Version of the source object (and of the data object the slice becomes).
    version: u64,
    first: u64,
    pages: u64,
    size: u64,
}

/// Runs of at most this many bytes are fetched whole.
const SMALL_RUN: u64 = 64 << 10;
/// Runs whose records take fewer bytes than this on average are fetched whole.
const SMALL_RECORD: u64 = 1024;
/// Gaps of unwanted records up to this many bytes (at the run's average record) are read
/// through rather than skipped header by header: a header is one request, and a
/// request to an object store costs as much time as reading 100-200 KB (SeaweedFS here:
/// a redis sync that walked 10,812 headers took 30 s for 204 MB).
const READ_THROUGH: u64 = 4 << 20;

/// Runs read whole that lie within this many bytes of one another in one object are read
/// in one request (the bytes between, other runs' records, are read for nothing).
const BATCH_GAP: u64 = 256 << 10;

/// Runs read whole that lie within [`BATCH_GAP`] of one another in one object are
/// read in one request of at most this many bytes.
const MAX_BATCH: u64 = 8 << 20;

/// Whether a run is read whole: small, or of small (compressed) records, so that
/// skipping a record by its header would save less than a request costs.
fn read_whole(run: &Run) -> bool {
    run.bytes <= SMALL_RUN || run.bytes / run.pages < SMALL_RECORD
}

/// Steps of the follower a version's plan and statistics are looked for after the
/// version was copied (the recorder writes them just after the manifest).
const LATE_TRIES: u32 = 20;

/// `follow/staged/` in a replica.
const STAGED_DIR: &str = "staged";

/// Name of the staged slice of records `first..first + pages` of source run `id`.
fn slice_name(id: &RunId, first: u64, pages: u64) -> Option<String> {
    let (v, n) = layout::parse_data_name(&id.0)?;
    Some(format!("{v:020}-{n:016x}-{:x}-{first}-{pages}", id.1))
}

/// The source run a staged file's name stands for, and its slice.
fn parse_slice_name(file: &str) -> Option<(RunId, u64, u64)> {
    let mut parts = file.split('-');
    let (v, n, off, first, pages) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() {
        return None;
    }
    let object = format!("{}/{v}-{n}", layout::DATA_DIR);
    layout::parse_data_name(&object)?;
    Some((
        (object, u64::from_str_radix(off, 16).ok()?),
        first.parse().ok()?,
        pages.parse().ok().filter(|&p| p > 0)?,
    ))
}

/// Whether the staged file at `path` is whole: a data object of `pages` records whose
/// header names it.
fn staged_file_ok(path: &Path, file: &str, pages: u64) -> bool {
    let Ok(b) = fs::read(path) else {
        return false;
    };
    layout::check_data_object(&b)
        .is_ok_and(|d| d.nonce == stage_nonce(file) && d.records.len() as u64 == pages)
}

/// FNV-1a of a staged file's name: the nonce of the data object it becomes.
fn stage_nonce(file: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in file.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A store followed into a local replica.
pub struct Follower {
    src: Store,
    dst: Store,
    /// Data objects the replica holds, with their sizes.
    held: HashMap<String, u64>,
    /// Versions the replica holds.
    have: BTreeSet<u64>,
    /// Record lengths of local runs read so far.
    lengths: HashMap<(String, u64), Arc<Vec<u64>>>,
    /// `follow/staged/` and the slices in it, by source run.
    staged_dir: PathBuf,
    staged: HashMap<RunId, Vec<Slice>>,
    /// Versions copied before the recorder had written their plan or statistics (it
    /// writes them after the manifest), with the tries left to copy them.
    late: BTreeMap<u64, u32>,
    pub metrics: Metrics,
    /// Called after each run a sync fetches (tests change the source there).
    #[doc(hidden)]
    pub between_fetches: Option<Box<dyn FnMut()>>,
    /// Set (by a signal handler) to stop a sync between two fetches.
    pub interrupt: Option<&'static std::sync::atomic::AtomicBool>,
}

/// Creates or opens the replica `dir` of `source` (named so in its `follow/SOURCE`).
fn open_replica(dir: &Path, source: &str, page_size: u32) -> Result<Store, ReplicaError> {
    let shown = dir.display().to_string();
    match fs::symlink_metadata(dir) {
        Ok(st) if st.file_type().is_symlink() => {
            return Err(ReplicaError::Refused(format!(
                "refusing {shown}: it is a symlink"
            )))
        }
        Ok(st) if !st.is_dir() => {
            return Err(ReplicaError::Refused(format!(
                "refusing {shown}: it exists and is not a directory"
            )))
        }
        Ok(_) => check_marker(dir, source)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_replica(dir, source, page_size)?,
        Err(e) => return Err(io_err(format!("cannot look at {shown}"))(e)),
    }
    let target = dir
        .to_str()
        .ok_or_else(|| ReplicaError::Refused(format!("{shown}: not a UTF-8 path")))?;
    Ok(Store::create_or_open(target, page_size)?)
}

fn check_marker(dir: &Path, source: &str) -> Result<(), ReplicaError> {
    let shown = dir.display();
    let path = dir.join(FOLLOW_DIR).join(SOURCE_FILE);
    let named = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(mut f) if f.metadata().is_ok_and(|m| m.is_file()) => {
            let mut s = String::new();
            io::Read::read_to_string(&mut f, &mut s)
                .map_err(io_err(format!("cannot read {}", path.display())))?;
            s
        }
        _ => {
            return Err(ReplicaError::Refused(format!(
                "refusing {shown}: it exists and is not a replica (no {FOLLOW_DIR}/{SOURCE_FILE})"
            )))
        }
    };
    if named.trim_end() != source {
        return Err(ReplicaError::Refused(format!(
            "refusing {shown}: it is a replica of {}, not of {source}",
            named.trim_end()
        )));
    }
    Ok(())
}

/// Makes the replica under a temporary name beside `dir`, then renames it into place (no
/// replacing): a follower killed meanwhile leaves no half-made replica at `dir`.
fn create_replica(dir: &Path, source: &str, page_size: u32) -> Result<(), ReplicaError> {
    let name = dir
        .file_name()
        .ok_or_else(|| ReplicaError::Refused(format!("{} names no directory", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(
        ".{}.follow.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    let mut b = fs::DirBuilder::new();
    b.mode(0o700);
    b.create(&tmp)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    let made = (|| {
        b.create(tmp.join(FOLLOW_DIR))
            .map_err(io_err("cannot create the replica's follow/"))?;
        let marker = tmp.join(FOLLOW_DIR).join(SOURCE_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&marker)
            .map_err(io_err(format!("cannot create {}", marker.display())))?;
        f.write_all(format!("{source}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err(format!("cannot write {}", marker.display())))?;
        let t = tmp
            .to_str()
            .ok_or_else(|| ReplicaError::Refused(format!("{}: not a UTF-8 path", tmp.display())))?;
        Store::create_or_open(t, page_size)?;
        fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("cannot sync {}", tmp.display())))?;
        match renameat2(None, &tmp, None, dir, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(()),
            // Made meanwhile by another follower: use it if it is a replica of `source`.
            Err(Errno::EEXIST) => {
                let _ = fs::remove_dir_all(&tmp);
                check_marker(dir, source)
            }
            Err(e) => Err(io_err(format!("cannot rename into {}", dir.display()))(
                e.into(),
            )),
        }
    })();
    if made.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    if let Ok(d) = fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    made
}

/// Record lengths of the `pages` consecutive records in `b`.
fn record_lengths(b: &[u8], pages: u64, name: &str) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::with_capacity(pages as usize);
    let mut at = 0usize;
    for _ in 0..pages {
        if b.len() < at + RECORD_HEADER_SIZE {
            return Err(damaged(name, FormatError::Truncated("a run".into())));
        }
        let len = RECORD_HEADER_SIZE
            + u32::from_le_bytes(b[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
        out.push(len as u64);
        at += len;
    }
    if at != b.len() {
        return Err(damaged(name, FormatError::Corrupt("a run's length".into())));
    }
    Ok(out)
}

impl Follower {
    /// Opens `source` and the replica `dir` (created 0700 if absent; an existing
    /// directory must be a replica of `source`).
    pub fn open(source: &str, dir: &Path) -> Result<Follower, ReplicaError> {
        let src = Store::open(source)?;
        let dst = open_replica(dir, source, src.page_size())?;
        let held = dst
            .backend()
            .list(layout::DATA_DIR)?
            .into_iter()
            .filter(|(n, _)| layout::parse_data_name(n).is_some())
            .collect();
        let have = dst.version_numbers()?.into_iter().collect();
        let staged_dir = dir.join(FOLLOW_DIR).join(STAGED_DIR);
        let mut b = fs::DirBuilder::new();
        b.mode(0o700);
        match b.create(&staged_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("cannot create {}", staged_dir.display()))(e)),
        }
        let mut staged: HashMap<RunId, Vec<Slice>> = HashMap::new();
        let entries = fs::read_dir(&staged_dir)
            .map_err(io_err(format!("cannot list {}", staged_dir.display())))?;
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().ok().filter(|m| m.is_file());
            match (parse_slice_name(&file), meta) {
                (Some((id, first, pages)), Some(meta))
                    if staged_file_ok(&entry.path(), &file, pages) =>
                {
                    let version = layout::parse_data_name(&id.0).map_or(0, |x| x.0);
                    staged.entry(id).or_default().push(Slice {
                        file,
                        version,
                        first,
                        pages,
                        size: meta.len(),
                    });
                }
                // Left by a follower killed while writing one, or not written whole
                // before a crash.
                (Some(_), Some(_)) => {
                    let _ = fs::remove_file(entry.path());
                }
                _ if file.ends_with(".tmp") => {
                    let _ = fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        Ok(Follower {
            src,
            dst,
            held,
            have,
            lengths: HashMap::new(),
            staged_dir,
            staged,
            late: BTreeMap::new(),
            metrics: Metrics::default(),
            between_fetches: None,
            interrupt: None,
        })
    }

    /// The replica's newest version.
    pub fn newest(&self) -> Option<u64> {
        self.have.last().copied()
    }

    /// Updates the lag metrics from the source's newest version.
    pub fn measure_lag(&mut self) -> Result<(), ReplicaError> {
        let Some(&src_newest) = self.src.version_numbers()?.last() else {
            return Ok(());
        };
        let Some(mine) = self.newest() else {
            return Ok(());
        };
        self.metrics.lag_versions = src_newest.saturating_sub(mine);
        let t_src = match self.src.manifest(src_newest) {
            Ok(m) => m.time_ms,
            Err(StoreError::NoVersion(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let t_mine = self.dst.manifest(mine).map_err(local)?.time_ms;
        self.metrics.lag_s = t_src.saturating_sub(t_mine) as f64 / 1000.0;
        Ok(())
    }

    /// The newest source version at or below `until` (the newest if none is).
    fn source_target(&self, until: Option<u64>) -> Result<Option<u64>, ReplicaError> {
        let v = self.src.version_numbers()?;
        // None at or below `until`: the newest, which ends the following too.
        Ok(v.iter()
            .rev()
            .find(|&&x| until.is_none_or(|u| x <= u))
            .or(v.last())
            .copied())
    }

    /// Brings the replica up to the source's newest version (at most `until`): copies
    /// the versions that follow what it has, or syncs anew. Returns the versions
    /// published.
    pub fn step(&mut self, until: Option<u64>) -> Result<Vec<u64>, ReplicaError> {
        let Some(target) = self.source_target(until)? else {
            return Err(ReplicaError::Empty);
        };
        let mut published = Vec::new();
        self.copy_late()?;
        if self.newest().is_none() {
            published.push(self.sync(until)?);
            return Ok(published);
        }
        let mine = self.newest().expect("checked");
        let numbers: Vec<u64> = self
            .src
            .version_numbers()?
            .into_iter()
            .filter(|&v| v > mine && v <= target)
            .collect();
        for v in numbers {
            match self.copy_version(v) {
                Ok(true) => published.push(v),
                Ok(false) => {
                    // Its chain does not continue what we have: sync anew.
                    let v = self.sync(until)?;
                    published.push(v);
                    break;
                }
                // Dropped by the source's retention meanwhile: on to a newer one.
                Err(ReplicaError::Store(e)) if e.is_damage() || is_gone(&e) => {
                    self.src.manifests.clear();
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(published)
    }

    /// Copies version `v` as stored when the replica holds what it builds on; false if
    /// it does not.
    fn copy_version(&mut self, v: u64) -> Result<bool, ReplicaError> {
        let m = self.src.manifest(v)?;
        if let Some(prev) = m.prev() {
            if !self.have.contains(&prev) {
                return Ok(false);
            }
        }
        let mut bytes = 0;
        for o in &m.objects {
            let name = o.name();
            if self.held.contains_key(&name) {
                continue;
            }
            let b = self.src.backend.get(&name)?;
            layout::check_data_object(&b).map_err(|e| damaged(name.clone(), e))?;
            self.put_data(&name, &b)?;
            bytes += b.len() as u64;
        }
        self.copy_beside(v)?;
        let encoded = m
            .encode()
            .map_err(|e| damaged(layout::manifest_name(v), e))?;
        self.publish(v, &encoded)?;
        self.metrics.delta_log_bytes += bytes;
        self.metrics.delta_versions += 1;
        Ok(true)
    }

    fn put_data(&mut self, name: &str, b: &[u8]) -> Result<(), ReplicaError> {
        match self.dst.backend.put_new(name, b) {
            Ok(()) | Err(BackendError::Exists(_)) => {}
            Err(e) => return Err(local(e)),
        }
        self.held.insert(name.to_string(), b.len() as u64);
        Ok(())
    }

    /// Copies what the source keeps beside version `v`: its core context, its plan (a
    /// follower of this replica orders its sync by it) and its statistics (`memshadow
    /// report`), when they exist; the plan and statistics are tried again at the next
    /// steps when not there yet.
    fn copy_beside(&mut self, v: u64) -> Result<(), ReplicaError> {
        if let Some(ctx) = self.src.context(v)? {
            self.dst.put_context(&ctx).map_err(local)?;
        }
        if !self.copy_written_after(v)? {
            self.late.insert(v, LATE_TRIES);
        }
        Ok(())
    }

    /// Copies the plan and statistics of `v` that the source has; true when it has both.
    fn copy_written_after(&mut self, v: u64) -> Result<bool, ReplicaError> {
        let plan = match self.src.plan(v) {
            Ok(Some(plan)) => {
                self.dst.put_plan(&plan).map_err(local)?;
                true
            }
            Ok(None) => false,
            // A damaged plan is not copied (the source's `verify` reports it).
            Err(e) if e.is_damage() => true,
            Err(e) => return Err(e.into()),
        };
        let name = version_stats::version_stats_name(v);
        let stats = match self.src.backend.get(&name) {
            Ok(b) => {
                // Copied only whole and of this version (`verify` reports the rest).
                if version_stats::decode(&b).is_ok_and(|(found, _)| found == v) {
                    self.dst.backend.put_replace(&name, &b).map_err(local)?;
                }
                true
            }
            Err(BackendError::NotFound(_)) => false,
            Err(e) => return Err(StoreError::from(e).into()),
        };
        Ok(plan && stats)
    }

    /// Tries again the plans and statistics that were not there when their versions
    /// were copied.
    fn copy_late(&mut self) -> Result<(), ReplicaError> {
        for (v, tries) in std::mem::take(&mut self.late) {
            if self.have.contains(&v) && !self.copy_written_after(v)? && tries > 1 {
                self.late.insert(v, tries - 1);
            }
        }
        Ok(())
    }

    fn publish(&mut self, v: u64, manifest: &[u8]) -> Result<(), ReplicaError> {
        match self
            .dst
            .backend
            .put_new(&layout::manifest_name(v), manifest)
        {
            Ok(()) | Err(BackendError::Exists(_)) => {}
            Err(e) => return Err(local(e)),
        }
        self.have.insert(v);
        Ok(())
    }

    /// Where the replica holds the record of page `k` of the source run `run` of `m`:
    /// the local run and the page's index in it.
    fn held_record(&self, m: &Manifest, run: &Run, k: u64) -> Option<(LocalRun, u64)> {
        let name = m.objects[run.object as usize].name();
        if self.held.contains_key(&name) {
            let lr = LocalRun {
                object: name,
                staged: false,
                offset: run.offset,
                bytes: run.bytes,
                pages: run.pages,
            };
            return Some((lr, k));
        }
        let slices = self.staged.get(&(name, run.offset))?;
        let s = slices
            .iter()
            .find(|s| (s.first..s.first + s.pages).contains(&k))?;
        let lr = LocalRun {
            object: s.file.clone(),
            staged: true,
            offset: DATA_HEADER_SIZE as u64,
            bytes: s.size - (DATA_HEADER_SIZE + DATA_TRAILER_SIZE) as u64,
            pages: s.pages,
        };
        Some((lr, k - s.first))
    }

    /// Reads `len` bytes at `offset` of a local run's object.
    fn read_local(&self, lr: &LocalRun) -> Result<Vec<u8>, ReplicaError> {
        if !lr.staged {
            return Ok(self
                .dst
                .backend
                .get_range(&lr.object, lr.offset, lr.bytes)?);
        }
        let path = self.staged_dir.join(&lr.object);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        let mut b = vec![0u8; lr.bytes as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, lr.offset)
            .map_err(io_err(format!("cannot read {}", path.display())))?;
        Ok(b)
    }

    /// Fetches the records `want` (page indices, ascending) of the source run `run` of
    /// `m`, checks each and keeps them as staged slices. The run's records are walked up
    /// to the last one wanted: wanted records, and gaps of unwanted ones small enough to
    /// read through ([`READ_THROUGH`], at the run's average record size), are read in
    /// windows sized by that average (a quarter more, and a record's most besides; a
    /// window that falls short is read on in one more request); a longer gap is skipped
    /// record by record by reading their headers alone. Small runs, and runs of small
    /// (compressed) records, are read whole.
    fn fetch_records(
        &mut self,
        m: &Manifest,
        run: &Run,
        want: &[u64],
        pre_read: Option<&[u8]>,
    ) -> Result<(), ReplicaError> {
        let obj = m.objects[run.object as usize];
        let name = obj.name();
        let ps = u64::from(self.src.page_size);
        let max_record = RECORD_HEADER_SIZE as u64 + ps;
        let average = run
            .bytes
            .div_ceil(run.pages.max(1))
            .max(RECORD_HEADER_SIZE as u64);
        let last = *want.last().expect("something is wanted");
        let wanted: HashSet<u64> = want.iter().copied().collect();
        let whole = read_whole(run);
        // A run whose records all take a header and a page (incompressible pages), or a
        // header alone (zero pages), has them at fixed offsets: no header to read.
        let fixed_record = [max_record, RECORD_HEADER_SIZE as u64]
            .into_iter()
            .find(|&r| run.bytes == run.pages * r);
        // Windows of records [first, end) to read, in order: wanted stretches merged
        // across small gaps.
        let mut windows: Vec<(u64, u64)> = Vec::new();
        if whole {
            windows.push((0, run.pages));
        } else {
            let gap_pages = (READ_THROUGH / average).max(1);
            let mut i = 0;
            while i <= last {
                if !wanted.contains(&i) {
                    i += 1;
                    continue;
                }
                let first = i;
                let mut end = i + 1;
                loop {
                    while end <= last && wanted.contains(&end) {
                        end += 1;
                    }
                    let gap = (end..=last).take_while(|k| !wanted.contains(k)).count() as u64;
                    if end > last || gap > gap_pages {
                        break;
                    }
                    end += gap;
                }
                windows.push((first, end));
                i = end;
            }
            // A short stretch of unwanted records before the first wanted one is read
            // through too (skipped unread at fixed offsets).
            if let Some(w) = windows.first_mut().filter(|_| fixed_record.is_none()) {
                if w.0 * average <= READ_THROUGH {
                    w.0 = 0;
                }
            }
        }
        let mut decoder =
            PageDecoder::new(ps as u32).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut page = vec![0u8; ps as usize];
        // Offset of record `k` from the run's start, walking forward.
        let (mut k, mut at) = (0u64, 0u64);
        for (first, end) in windows {
            if let Some(r) = fixed_record {
                at = first * r;
                k = first;
            }
            while k < first {
                let h = self.src.backend.get_range(
                    &name,
                    run.offset + at,
                    RECORD_HEADER_SIZE as u64,
                )?;
                self.metrics.header_reads += 1;
                self.metrics.sync_bytes += h.len() as u64;
                at += header_length(&h, run.addr + k * ps, &name)?;
                k += 1;
            }
            let guess = (end - first) * average * 5 / 4 + max_record;
            let span = guess.min(run.bytes - at);
            let mut bytes = match pre_read {
                Some(b) if whole => b.to_vec(),
                _ => {
                    let b = self.src.backend.get_range(&name, run.offset + at, span)?;
                    self.metrics.sync_bytes += span;
                    b
                }
            };
            let id = (name.clone(), run.offset);
            let file = slice_name(&id, first, end - first)
                .ok_or_else(|| ReplicaError::Refused(format!("bad object name {name}")))?;
            let mut w = DataWriter::new(ps as u32, obj.version, stage_nonce(&file))
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let mut used = 0usize;
            for k in first..end {
                let addr = run.addr + k * ps;
                // Records larger than the average guessed: the rest of the window.
                let more = |bytes: &mut Vec<u8>, need: usize| -> Result<u64, ReplicaError> {
                    if bytes.len() >= need {
                        return Ok(0);
                    }
                    let from = at + bytes.len() as u64;
                    let n = ((end - k) * max_record).min(run.bytes - from);
                    let b = self.src.backend.get_range(&name, run.offset + from, n)?;
                    bytes.extend_from_slice(&b);
                    Ok(n)
                };
                self.metrics.sync_bytes += more(&mut bytes, used + RECORD_HEADER_SIZE)?;
                let n = header_length(&bytes[used..used + RECORD_HEADER_SIZE], addr, &name)?;
                self.metrics.sync_bytes += more(&mut bytes, used + n as usize)?;
                let n = decoder
                    .decode_record(&bytes[used..], addr, &mut page)
                    .map_err(|e| damaged(name.clone(), e))?;
                let rec = &bytes[used..used + n];
                if !wanted.contains(&k) {
                    self.metrics.unneeded_bytes += n as u64;
                }
                let encoded = EncodedPage {
                    flags: u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes")),
                    crc: u32::from_le_bytes(rec[16..20].try_into().expect("4 bytes")),
                    payload: rec[RECORD_HEADER_SIZE..].to_vec(),
                };
                w.push_encoded(addr, &encoded);
                used += n;
            }
            // Read past the window's last record (records smaller than guessed).
            self.metrics.unneeded_bytes += bytes.len() as u64 - used as u64;
            at += used as u64;
            k = end;
            let object = w.finish();
            self.write_staged(&file, &object)?;
            self.staged.entry(id).or_default().push(Slice {
                file,
                version: obj.version,
                first,
                pages: end - first,
                size: object.len() as u64,
            });
        }
        Ok(())
    }

    /// Writes `follow/staged/<file>` whole: a new temporary file (0600) renamed into
    /// place. Not fsynced one by one (thousands of them): a restarted follower checks
    /// every staged file whole and drops a damaged one, and publishing syncs them all
    /// at once (`syncfs`) before any manifest names them.
    fn write_staged(&self, file: &str, bytes: &[u8]) -> Result<(), ReplicaError> {
        let tmp = self
            .staged_dir
            .join(format!(".{file}.{}.tmp", std::process::id()));
        let path = self.staged_dir.join(file);
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err(format!("cannot create {}", tmp.display())))?;
        f.write_all(bytes)
            .map_err(io_err(format!("cannot write {}", tmp.display())))?;
        match renameat2(None, &tmp, None, &path, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {}
            // The same records, fetched before a kill.
            Err(Errno::EEXIST) => {
                let _ = fs::remove_file(&tmp);
            }
            Err(e) => return Err(io_err(format!("cannot rename {}", tmp.display()))(e.into())),
        }
        Ok(())
    }

    /// Makes every staged file durable (one `syncfs` of the replica's file system).
    fn sync_staged(&self) -> Result<(), ReplicaError> {
        let d = fs::File::open(&self.staged_dir)
            .map_err(io_err(format!("cannot open {}", self.staged_dir.display())))?;
        // SAFETY: syncfs only reads the descriptor, which `d` owns and keeps open.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
            return Err(io_err("cannot sync the replica's file system")(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The data object a staged slice becomes (hard-linked into `data/`).
    fn adopt(&mut self, lr: &LocalRun) -> Result<String, ReplicaError> {
        if !lr.staged {
            return Ok(lr.object.clone());
        }
        let version = self
            .staged
            .values()
            .flatten()
            .find(|s| s.file == lr.object)
            .map_or(0, |s| s.version);
        let name = layout::data_name(version, stage_nonce(&lr.object));
        if !self.held.contains_key(&name) {
            let data_dir = self.dst_dir().join(layout::DATA_DIR);
            let to = data_dir.join(name.rsplit('/').next().expect("a name"));
            match fs::hard_link(self.staged_dir.join(&lr.object), &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(format!("cannot link {}", to.display()))(e)),
            }
            let size = lr.bytes + (DATA_HEADER_SIZE + DATA_TRAILER_SIZE) as u64;
            self.held.insert(name.clone(), size);
        }
        Ok(name)
    }

    fn dst_dir(&self) -> PathBuf {
        self.staged_dir
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// The record lengths of a local run.
    fn lengths_of(&mut self, lr: &LocalRun) -> Result<Arc<Vec<u64>>, ReplicaError> {
        let key = (lr.object.clone(), lr.offset);
        if let Some(l) = self.lengths.get(&key) {
            return Ok(l.clone());
        }
        let b = self.read_local(lr)?;
        let l = Arc::new(record_lengths(&b, lr.pages, &lr.object)?);
        self.lengths.insert(key, l.clone());
        Ok(l)
    }

    /// The newest version's chain in the source (at most `until`), retrying when the
    /// source's retention changes it under us.
    fn target_chain(&mut self, until: Option<u64>) -> Result<Vec<Arc<Manifest>>, ReplicaError> {
        for _ in 0..20 {
            let Some(t) = self.source_target(until)? else {
                return Err(ReplicaError::Empty);
            };
            match self.src.chain(t) {
                Ok(c) => return Ok(c),
                Err(e) if e.is_damage() || is_gone(&e) => {
                    self.src.manifests.clear();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ReplicaError::Refused(
            "the store changed under the follower 20 times in a row".into(),
        ))
    }

    /// Syncs the replica to the source's newest version (at most `until`) by fetching
    /// the newest copy of each page, and publishes it as a base. Returns that version.
    pub fn sync(&mut self, until: Option<u64>) -> Result<u64, ReplicaError> {
        let started = Instant::now();
        let ps = u64::from(self.src.page_size);
        let mut chain = self.target_chain(until)?;
        // Manifests are fetched once (the source keeps them): each counts once.
        let mut counted: HashSet<u64> = HashSet::new();
        let mut count_manifests = |chain: &[Arc<Manifest>], sync_bytes: &mut u64| {
            for m in chain {
                if counted.insert(m.version) {
                    *sync_bytes += encoded_len(m);
                }
            }
        };
        count_manifests(&chain, &mut self.metrics.sync_bytes);
        let first_target = chain[0].version;
        // Identity of each page's record at the first target, and which are hot: those
        // the newest plan expects written (by confidence), else those recent deltas wrote.
        let first_ids = page_ids(&chain, ps)?;
        let planned = self.newest_plan(first_target)?;
        let confidence: HashMap<u64, u16> = match &planned {
            Some(plan) => {
                let mut c = HashMap::new();
                for r in &plan.runs {
                    for i in 0..u64::from(r.pages) {
                        let e = c.entry(r.addr + i * ps).or_insert(0u16);
                        *e = (*e).max(r.confidence.max(1));
                    }
                }
                c
            }
            None => HashMap::new(),
        };
        self.metrics.order = if planned.is_some() { "plan" } else { "history" };
        self.metrics.plan_version = planned.as_ref().map(|p| p.version);
        let hot: HashSet<u64> = match &planned {
            Some(_) => first_ids
                .keys()
                .filter(|a| confidence.contains_key(a))
                .copied()
                .collect(),
            None => first_ids
                .iter()
                .filter(|(_, (v, _))| *v + HOT_VERSIONS > first_target && chain.len() > 1)
                .filter(|(_, (v, _))| *v != chain.last().expect("not empty").version)
                .map(|(a, _)| *a)
                .collect(),
        };
        // Page -> identity of the record fetched for it (by this sync).
        let mut fetched: HashMap<u64, RunId> = HashMap::new();
        let mut listed = Instant::now();
        let mut first_pass = true;
        // Pages the first pass had to fetch.
        let mut whole_pages: Option<u64> = None;
        'target: loop {
            // Source runs holding a newest copy, with the indices of those pages in them.
            let mut needed: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
            for p in pieces_of(&chain, ps)? {
                let e = needed.entry((p.member, p.run)).or_default();
                e.extend(p.skip..p.skip + p.pages);
            }
            let mut missing: Vec<(u64, usize, usize, Vec<u64>)> = Vec::new();
            for (&(member, run), want) in &needed {
                let m = &chain[member];
                let r = m.runs[run];
                let lacking: Vec<u64> = want
                    .iter()
                    .copied()
                    .filter(|&k| self.held_record(m, &r, k).is_none())
                    .collect();
                if first_pass {
                    self.metrics.reused_pages += (want.len() - lacking.len()) as u64;
                }
                if !lacking.is_empty() {
                    missing.push((m.version, member, run, lacking));
                }
            }
            first_pass = false;
            // Coldest first: by a plan, pages it does not expect written, then by rising
            // confidence (a run goes as its likeliest page); then records of older
            // versions, then by place in their objects.
            missing.sort_unstable_by_key(|x| {
                let r = chain[x.1].runs[x.2];
                let likeliest =
                    x.3.iter()
                        .filter_map(|k| confidence.get(&(r.addr + k * ps)))
                        .max()
                        .copied()
                        .unwrap_or(0);
                (likeliest, x.0, r.object, r.offset)
            });
            // Runs read whole that lie close together in one object are read at once.
            let mut batch: Option<(usize, u32, u64, Vec<u8>)> = None;
            let mut left: u64 = missing.iter().map(|x| x.3.len() as u64).sum();
            let whole = *whole_pages.get_or_insert(left);
            for i in 0..missing.len() {
                let (member, run_i) = (missing[i].1, missing[i].2);
                let mut want = missing[i].3.clone();
                left -= want.len() as u64;
                want.sort_unstable();
                let m = chain[member].clone();
                let run = m.runs[run_i];
                let covered = |b: &Option<(usize, u32, u64, Vec<u8>)>| {
                    b.as_ref().is_some_and(|(bm, bo, start, buf)| {
                        *bm == member
                            && *bo == run.object
                            && run.offset >= *start
                            && run.offset + run.bytes <= *start + buf.len() as u64
                    })
                };
                if read_whole(&run) && !covered(&batch) {
                    let mut end = run.offset + run.bytes;
                    for next in &missing[i + 1..] {
                        let r = chain[next.1].runs[next.2];
                        if next.1 != member
                            || r.object != run.object
                            || !read_whole(&r)
                            || r.offset > end + BATCH_GAP
                            || r.offset + r.bytes - run.offset > MAX_BATCH
                        {
                            break;
                        }
                        end = end.max(r.offset + r.bytes);
                    }
                    let name = m.objects[run.object as usize].name();
                    let got = self
                        .src
                        .backend
                        .get_range(&name, run.offset, end - run.offset);
                    batch = match got {
                        Ok(buf) => {
                            self.metrics.sync_bytes += buf.len() as u64;
                            Some((member, run.object, run.offset, buf))
                        }
                        Err(_) => None,
                    };
                }
                let pre_read = match &batch {
                    Some((_, _, start, buf)) if covered(&batch) => {
                        let from = (run.offset - start) as usize;
                        Some(&buf[from..from + run.bytes as usize])
                    }
                    _ => None,
                };
                let pre_read = pre_read.map(<[u8]>::to_vec);
                match self.fetch_records(&m, &run, &want, pre_read.as_deref()) {
                    Ok(()) => {}
                    Err(ReplicaError::Store(e)) if is_gone(&e) => {
                        // Retention dropped or rebased it: on to the newest version.
                        self.src.manifests.clear();
                        chain = self.target_chain(until)?;
                        self.metrics.retargets += 1;
                        continue 'target;
                    }
                    Err(e) => return Err(e),
                }
                let id = (m.objects[run.object as usize].name(), run.offset);
                for &k in &want {
                    fetched.insert(run.addr + k * ps, id.clone());
                }
                if let Some(f) = self.between_fetches.as_mut() {
                    f();
                }
                if self
                    .interrupt
                    .is_some_and(|i| i.load(std::sync::atomic::Ordering::Relaxed))
                {
                    self.metrics.sync_s += started.elapsed().as_secs_f64();
                    return Err(ReplicaError::Interrupted);
                }
                // Onto a newer version only while a quarter of the first pass is left:
                // past that, finishing and copying the versions after is quicker, and a
                // source that changes as fast as we fetch cannot keep the sync going.
                if listed.elapsed() >= RELIST_EVERY && left * 4 >= whole {
                    listed = Instant::now();
                    if self.source_target(until)? > Some(chain[0].version) {
                        // Onto the newer version if it builds on the same base (only
                        // what it changed is fetched anew); a new base would mean
                        // fetching a whole image again: finish this one first.
                        let newer = self.target_chain(until)?;
                        let same_base =
                            newer.last().map(|m| m.version) == chain.last().map(|m| m.version);
                        if same_base {
                            chain = newer;
                            count_manifests(&chain, &mut self.metrics.sync_bytes);
                            self.metrics.retargets += 1;
                            continue 'target;
                        }
                    }
                }
            }
            // Dropped by the source's retention meanwhile: on to the newest version.
            if !self.src.version_numbers()?.contains(&chain[0].version) {
                self.src.manifests.clear();
                chain = self.target_chain(until)?;
                self.metrics.retargets += 1;
                continue 'target;
            }
            break;
        }
        let top = chain[0].clone();
        let final_ids = page_ids(&chain, ps)?;
        // The base: every page's record where the replica holds it.
        let mut objects: Vec<ObjectRef> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut runs: Vec<Run> = Vec::new();
        for p in pieces_of(&chain, ps)? {
            let m = chain[p.member].clone();
            let src_run = m.runs[p.run];
            for i in 0..p.pages {
                let addr = p.addr + i * ps;
                let (lr, k) = self.held_record(&m, &src_run, p.skip + i).ok_or_else(|| {
                    ReplicaError::Refused(format!("internal: page {addr:#x} was not fetched"))
                })?;
                let lens = self.lengths_of(&lr)?;
                let name = self.adopt(&lr)?;
                let obj = match index.get(&name) {
                    Some(&i) => i,
                    None => {
                        let (version, nonce) = layout::parse_data_name(&name)
                            .ok_or_else(|| ReplicaError::Refused(format!("bad name {name}")))?;
                        objects.push(ObjectRef {
                            version,
                            nonce,
                            size: self.held[&name],
                        });
                        index.insert(name.clone(), objects.len() as u32 - 1);
                        objects.len() as u32 - 1
                    }
                };
                let off = lr.offset + lens[..k as usize].iter().sum::<u64>();
                let len = lens[k as usize];
                match runs.last_mut() {
                    Some(r)
                        if r.object == obj
                            && r.addr + r.pages * ps == addr
                            && r.offset + r.bytes == off
                            && r.pages < RUN_MAX_PAGES =>
                    {
                        r.pages += 1;
                        r.bytes += len;
                    }
                    _ => runs.push(Run {
                        addr,
                        pages: 1,
                        object: obj,
                        offset: off,
                        bytes: len,
                    }),
                }
            }
        }
        // The links into data/ are durable before the manifest names them.
        self.sync_staged()?;
        fs::File::open(self.dst_dir().join(layout::DATA_DIR))
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot sync the replica's data/"))?;
        let base = Manifest {
            kind: Kind::Base,
            objects,
            runs,
            ..(*top).clone()
        };
        let encoded = base
            .encode()
            .map_err(|e| StoreError::Invalid(format!("the replica's base: {e}")))?;
        self.copy_beside(top.version)?;
        self.publish(top.version, &encoded)?;
        self.collect_garbage()?;

        let mt = &mut self.metrics;
        mt.sync_s += started.elapsed().as_secs_f64();
        mt.naive_bytes = chain.iter().map(|m| m.stored_bytes()).sum();
        mt.image_bytes = base.runs.iter().map(|r| r.bytes).sum();
        mt.synced_version = Some(top.version);
        mt.pages_downloaded_twice += fetched
            .iter()
            .filter(|(a, id)| final_ids.get(a).is_some_and(|(_, f)| f != *id))
            .count() as u64;
        mt.plan_pages = hot.len() as u64;
        mt.plan_hit_rate = (!hot.is_empty()).then(|| {
            let changed = hot
                .iter()
                .filter(|a| final_ids.get(a).map(|x| &x.1) != first_ids.get(a).map(|x| &x.1))
                .count();
            changed as f64 / hot.len() as f64
        });
        Ok(top.version)
    }

    /// The newest plan object of the source at or before version `v` and at most
    /// [`HOT_VERSIONS`] older (an older plan foresaw epochs long past); a damaged one is
    /// passed over, as `verify` reports it. Its bytes count in `sync_bytes`.
    fn newest_plan(
        &mut self,
        v: u64,
    ) -> Result<Option<memshadow_format::store_plan::StorePlan>, ReplicaError> {
        let versions = match self.src.plan_versions() {
            Ok(p) => p,
            Err(e) if e.is_damage() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let recent = |pv: u64| pv <= v && v - pv <= HOT_VERSIONS;
        for &pv in versions.iter().rev().filter(|&&pv| recent(pv)).take(4) {
            match self.src.plan(pv) {
                Ok(Some(plan)) if plan.page_size == self.src.page_size => {
                    self.metrics.sync_bytes += plan.encode().len() as u64;
                    return Ok(Some(plan));
                }
                Ok(_) => {}
                Err(e) if e.is_damage() => {}
                Err(StoreError::Backend(BackendError::NotFound(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Deletes the replica's data objects no manifest of it references (runs fetched for
    /// pages a newer version replaced, or left by a killed follower).
    fn collect_garbage(&mut self) -> Result<(), ReplicaError> {
        let mut referenced = HashSet::new();
        for v in self.have.clone() {
            let m = self.dst.manifest(v).map_err(local)?;
            referenced.extend(m.objects.iter().map(ObjectRef::name));
        }
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|n| !referenced.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.dst.backend.delete(&name).map_err(local)?;
            self.held.remove(&name);
        }
        // What the published version uses is linked into data/; the rest is garbage.
        for s in self.staged.drain().flat_map(|(_, v)| v) {
            let _ = fs::remove_file(self.staged_dir.join(&s.file));
        }
        self.lengths.clear();
        Ok(())
    }
}

/// The length of the record whose header is `h`, which must be the page at `addr`.
fn header_length(h: &[u8], addr: u64, name: &str) -> Result<u64, StoreError> {
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    if h.len() != RECORD_HEADER_SIZE || layout::checksum(&h[..20]) != u32_at(20) {
        return Err(damaged(
            name,
            FormatError::Checksum(format!("the record header of page {addr:#x}")),
        ));
    }
    if u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) != addr {
        return Err(damaged(
            name,
            FormatError::Corrupt(format!("the record of page {addr:#x} is of another page")),
        ));
    }
    Ok((RECORD_HEADER_SIZE + u32_at(12) as usize) as u64)
}

fn encoded_len(m: &Manifest) -> u64 {
    (layout::MANIFEST_HEADER_SIZE
        + 16 * m.regions.len()
        + 24 * m.objects.len()
        + 40 * m.runs.len()
        + 4) as u64
}

/// Whether the error means an object or version went away (retention).
fn is_gone(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::NoVersion(_)
            | StoreError::BrokenChain { .. }
            | StoreError::Backend(BackendError::NotFound(_))
    )
}

/// Where each page of the chain's top version lives.
fn pieces_of(chain: &[Arc<Manifest>], ps: u64) -> Result<Vec<crate::read::Piece>, StoreError> {
    let mut out = Vec::new();
    for &(start, len) in &chain[0].regions {
        out.extend(locate(chain, ps, start, start + len)?);
    }
    Ok(out)
}

/// Page -> (version of the manifest holding its record, identity of the run).
fn page_ids(chain: &[Arc<Manifest>], ps: u64) -> Result<HashMap<u64, (u64, RunId)>, StoreError> {
    let mut out = HashMap::new();
    for p in pieces_of(chain, ps)? {
        let m = &chain[p.member];
        let run = m.runs[p.run];
        let id = (m.objects[run.object as usize].name(), run.offset);
        for i in 0..p.pages {
            out.insert(p.addr + i * ps, (m.version, id.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> BackendError {
        BackendError::Io {
            what: "a write".into(),
            source: io::Error::from_raw_os_error(5), // EIO
        }
    }

    #[test]
    fn the_source_away_is_transient_the_replicas_own_failure_is_not() {
        let source_io = ReplicaError::Store(StoreError::Backend(io()));
        let source_remote =
            ReplicaError::Store(StoreError::Backend(BackendError::Remote("timeout".into())));
        let replica_io = local(io());
        assert!(source_io.is_transient());
        assert!(source_remote.is_transient());
        assert!(!replica_io.is_transient());
        assert!(
            replica_io.to_string().starts_with("the replica: "),
            "{replica_io}"
        );
    }
}
