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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memshadow_format::store::{
    self as layout, DataWriter, EncodedPage, FormatError, Kind, Manifest, ObjectRef, PageDecoder,
    Run, DATA_HEADER_SIZE, RECORD_HEADER_SIZE,
};
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
    /// The source or the replica failed (see [`StoreError`]).
    Store(StoreError),
    /// DIR cannot be a replica of that source (exists and is something else...).
    Refused(String),
    /// A local file of the replica could not be written or read.
    Io { what: String, source: io::Error },
    /// The source has no version yet.
    Empty,
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Store(e) => write!(f, "{e}"),
            ReplicaError::Refused(why) => write!(f, "{why}"),
            ReplicaError::Io { what, source } => write!(f, "{what}: {source}"),
            ReplicaError::Empty => write!(f, "the store has no version yet"),
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
    /// under us), as opposed to a refusal or damage.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ReplicaError::Store(StoreError::Backend(
                BackendError::Remote(_) | BackendError::Io { .. }
            )) | ReplicaError::Empty
        )
    }
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
    /// Bytes fetched in runs for records of pages a newer version replaced (a run is
    /// fetched whole: its records' boundaries are not known before it is read).
    pub unneeded_bytes: u64,
    /// Runs the sync found in the replica already (a restart) and did not fetch.
    pub reused_runs: u64,
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

/// A run of records held by the replica.
#[derive(Debug, Clone)]
struct LocalRun {
    object: String,
    offset: u64,
    bytes: u64,
}

/// Identity of a record run of the source: its object and offset.
type RunId = (String, u64);

/// The nonce of the replica object holding the source run `id`: a hash of its name, so a
/// restarted follower finds it.
fn stage_nonce(id: &RunId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.0.bytes().chain(id.1.to_le_bytes()) {
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
    pub metrics: Metrics,
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
        Ok(Follower {
            src,
            dst,
            held,
            have,
            lengths: HashMap::new(),
            metrics: Metrics::default(),
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
        let t_mine = self.dst.manifest(mine)?.time_ms;
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
        self.copy_context(v)?;
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
            Err(e) => return Err(StoreError::from(e).into()),
        }
        self.held.insert(name.to_string(), b.len() as u64);
        Ok(())
    }

    fn copy_context(&mut self, v: u64) -> Result<(), ReplicaError> {
        if let Some(ctx) = self.src.context(v)? {
            self.dst.put_context(&ctx)?;
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
            Err(e) => return Err(StoreError::from(e).into()),
        }
        self.have.insert(v);
        Ok(())
    }

    /// Where the replica holds the source run `run` of `m`, if it does.
    fn local_run(&self, m: &Manifest, run: &Run) -> Option<LocalRun> {
        let obj = &m.objects[run.object as usize];
        let name = obj.name();
        if self.held.contains_key(&name) {
            return Some(LocalRun {
                object: name,
                offset: run.offset,
                bytes: run.bytes,
            });
        }
        let staged = layout::data_name(obj.version, stage_nonce(&(name, run.offset)));
        self.held.contains_key(&staged).then_some(LocalRun {
            object: staged,
            offset: DATA_HEADER_SIZE as u64,
            bytes: run.bytes,
        })
    }

    /// Fetches the source run `run` of `m`, checks every record and keeps it as a data
    /// object of the replica.
    fn fetch_run(
        &mut self,
        m: &Manifest,
        run: &Run,
        wanted: &[(u64, u64)],
    ) -> Result<(), ReplicaError> {
        let obj = &m.objects[run.object as usize];
        let name = obj.name();
        let b = self.src.backend.get_range(&name, run.offset, run.bytes)?;
        self.metrics.sync_bytes += b.len() as u64;
        let ps = self.src.page_size;
        let mut decoder = PageDecoder::new(ps).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let nonce = stage_nonce(&(name.clone(), run.offset));
        let mut w = DataWriter::new(ps, obj.version, nonce)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut page = vec![0u8; ps as usize];
        let mut at = 0usize;
        for i in 0..run.pages {
            let addr = run.addr + i * u64::from(ps);
            let n = decoder
                .decode_record(&b[at..], addr, &mut page)
                .map_err(|e| damaged(name.clone(), e))?;
            let rec = &b[at..at + n];
            let encoded = EncodedPage {
                flags: u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes")),
                crc: u32::from_le_bytes(rec[16..20].try_into().expect("4 bytes")),
                payload: rec[RECORD_HEADER_SIZE..].to_vec(),
            };
            w.push_encoded(addr, &encoded);
            let ps = u64::from(ps);
            if !wanted
                .iter()
                .any(|&(a, pages)| (a..a + pages * ps).contains(&addr))
            {
                self.metrics.unneeded_bytes += n as u64;
            }
            at += n;
        }
        if at != b.len() {
            return Err(damaged(name, FormatError::Corrupt("a run's length".into())).into());
        }
        let staged = layout::data_name(obj.version, nonce);
        self.put_data(&staged, &w.finish())
    }

    /// The record lengths of a local run.
    fn lengths_of(&mut self, lr: &LocalRun, pages: u64) -> Result<Arc<Vec<u64>>, ReplicaError> {
        let key = (lr.object.clone(), lr.offset);
        if let Some(l) = self.lengths.get(&key) {
            return Ok(l.clone());
        }
        let b = self
            .dst
            .backend
            .get_range(&lr.object, lr.offset, lr.bytes)?;
        let l = Arc::new(record_lengths(&b, pages, &lr.object)?);
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
        self.metrics.sync_bytes += chain.iter().map(|m| encoded_len(m)).sum::<u64>();
        let first_target = chain[0].version;
        // Identity of each page's record at the first target, and which are hot.
        let first_ids = page_ids(&chain, ps)?;
        let hot: HashSet<u64> = first_ids
            .iter()
            .filter(|(_, (v, _))| *v + HOT_VERSIONS > first_target && chain.len() > 1)
            .filter(|(_, (v, _))| *v != chain.last().expect("not empty").version)
            .map(|(a, _)| *a)
            .collect();
        // Page -> identity of the record fetched for it (by this sync).
        let mut fetched: HashMap<u64, RunId> = HashMap::new();
        let mut listed = Instant::now();
        let mut first_pass = true;
        'target: loop {
            // Source runs that hold a newest copy, with the pages they hold one of.
            let mut needed: HashMap<(usize, usize), Vec<(u64, u64)>> = HashMap::new();
            for p in pieces_of(&chain, ps)? {
                needed
                    .entry((p.member, p.run))
                    .or_default()
                    .push((p.addr, p.pages));
            }
            let mut missing: Vec<(u64, usize, usize)> = Vec::new();
            for &(member, run) in needed.keys() {
                let m = &chain[member];
                match self.local_run(m, &m.runs[run]) {
                    None => missing.push((m.version, member, run)),
                    Some(_) if first_pass => self.metrics.reused_runs += 1,
                    Some(_) => {}
                }
            }
            first_pass = false;
            // Coldest first: records of older versions, then by address.
            missing.sort_unstable_by_key(|&(v, member, run)| (v, chain[member].runs[run].addr));
            for (_, member, run_i) in missing {
                let m = chain[member].clone();
                let run = m.runs[run_i];
                let wanted = &needed[&(member, run_i)];
                match self.fetch_run(&m, &run, wanted) {
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
                for &(addr, pages) in wanted {
                    for i in 0..pages {
                        fetched.insert(addr + i * ps, id.clone());
                    }
                }
                if listed.elapsed() >= RELIST_EVERY {
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
                            self.metrics.sync_bytes +=
                                chain.iter().map(|m| encoded_len(m)).sum::<u64>();
                            self.metrics.retargets += 1;
                            continue 'target;
                        }
                    }
                }
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
            let lr = self.local_run(&m, &src_run).ok_or_else(|| {
                ReplicaError::Refused(format!("internal: page {:#x} was not fetched", p.addr))
            })?;
            let lens = self.lengths_of(&lr, src_run.pages)?;
            let obj = match index.get(&lr.object) {
                Some(&i) => i,
                None => {
                    let (version, nonce) = layout::parse_data_name(&lr.object)
                        .ok_or_else(|| ReplicaError::Refused(format!("bad name {}", lr.object)))?;
                    objects.push(ObjectRef {
                        version,
                        nonce,
                        size: self.held[&lr.object],
                    });
                    index.insert(lr.object.clone(), objects.len() as u32 - 1);
                    objects.len() as u32 - 1
                }
            };
            let mut off = lr.offset + lens[..p.skip as usize].iter().sum::<u64>();
            for i in 0..p.pages {
                let addr = p.addr + i * ps;
                let len = lens[(p.skip + i) as usize];
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
                off += len;
            }
        }
        let base = Manifest {
            kind: Kind::Base,
            objects,
            runs,
            ..(*top).clone()
        };
        let encoded = base
            .encode()
            .map_err(|e| StoreError::Invalid(format!("the replica's base: {e}")))?;
        self.copy_context(top.version)?;
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

    /// Deletes the replica's data objects no manifest of it references (runs fetched for
    /// pages a newer version replaced, or left by a killed follower).
    fn collect_garbage(&mut self) -> Result<(), ReplicaError> {
        let mut referenced = HashSet::new();
        for v in self.have.clone() {
            let m = self.dst.manifest(v)?;
            referenced.extend(m.objects.iter().map(ObjectRef::name));
        }
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|n| !referenced.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.dst.backend.delete(&name).map_err(StoreError::from)?;
            self.held.remove(&name);
        }
        self.lengths.clear();
        Ok(())
    }
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
