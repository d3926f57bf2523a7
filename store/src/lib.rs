//! The durable history of memshadow: versions of a process's memory kept as base images
//! and compressed, checksummed deltas in a local directory (the default) or under
//! `s3://BUCKET/PREFIX`. The layout is documented in `memshadow_format::store`.
//!
//! The recorder writes with [`Store::record`] and trims with [`Store::retain`]; the
//! offline commands read with [`Store::versions`], [`Store::read`], [`Store::restore`],
//! [`Store::diff`] and [`Store::verify`]. The API is synchronous.

pub mod backend;
pub mod local;
mod ranges;
mod read;
pub mod replica;
#[cfg(feature = "aws")]
pub mod s3;
mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memshadow_format::store::{
    self as layout, DataWriter, EncodedPage, FormatError, Kind, Manifest, ObjectRef, Run,
    StoreMeta, MAX_CHAIN_DELTAS, META_NAME,
};
use memshadow_format::store_context::{self as context_layout, CoreContext};
use memshadow_format::store_plan::{self as plan_layout, StorePlan};

pub use backend::{Backend, BackendError};
pub use read::Diff;
pub use verify::{Damage, VerifyReport};

/// A data object is closed once its records reach this size (bounds the memory a write
/// holds and the size of one upload).
pub const OBJECT_LIMIT: u64 = 64 << 20;
/// A run holds at most this many pages (bounds what one read fetches and decodes).
pub const RUN_MAX_PAGES: u64 = 256;
/// Pages asked of a [`PageSource`] at a time.
const SOURCE_CHUNK_PAGES: u64 = 256;

/// Why a page could not be read from the recorded process.
#[derive(Debug)]
pub enum SourceError {
    /// The read failed (the process is gone, the socket broke...).
    Io(io::Error),
    /// The process refused (the version is gone...).
    Refused(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Io(e) => write!(f, "{e}"),
            SourceError::Refused(why) => write!(f, "{why}"),
        }
    }
}

/// Where [`Store::record`] reads the version's pages.
pub trait PageSource {
    /// Fills `buf` (whole pages) with the version's bytes from `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError>;
}

/// A version to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub time_ms: u64,
    pub pid: u32,
    /// (start, len); sorted, page-aligned, not overlapping.
    pub regions: Vec<(u64, u64)>,
    /// The fatal signal the program was dying of when the version was taken (the flight
    /// recorder), 0 for an ordinary version.
    pub crash_signal: u32,
}

/// What [`Store::record`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub version: u64,
    /// A base (else a delta).
    pub base: bool,
    /// Pages written.
    pub pages: u64,
    /// Bytes of data objects written.
    pub stored_bytes: u64,
}

/// What [`Store::retain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainOutcome {
    /// Versions dropped.
    pub dropped: Vec<u64>,
    /// The version rewritten as a base first, if the oldest kept one was a delta.
    pub rebased: Option<u64>,
    /// Unreferenced objects removed (data and leftover temporary files).
    pub deleted_objects: usize,
}

/// One row of [`Store::versions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionSummary {
    pub version: u64,
    pub time_ms: u64,
    pub pid: u32,
    /// Pages this version recorded.
    pub changed_pages: u64,
    /// Bytes of this version's data objects.
    pub stored_bytes: u64,
    /// Bytes of its regions.
    pub region_bytes: u64,
    /// The base its chain ends at (itself for a base); None if the chain is broken.
    pub base: Option<u64>,
    /// The fatal signal the program was dying of when it was taken (0: none).
    pub crash_signal: u32,
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// The backend failed (missing object, I/O, remote error).
    Backend(BackendError),
    /// An object is damaged or of another format version.
    Damaged { object: String, error: FormatError },
    /// There is no store there.
    NotAStore(String),
    /// The store holds pages of another size.
    PageSize { store: u32, asked: u32 },
    /// No such version in the store.
    NoVersion(u64),
    /// A version's chain does not reach a base.
    BrokenChain { version: u64, missing: u64 },
    /// The range is not (all) in the version's regions.
    NotInVersion { version: u64, addr: u64, len: u64 },
    /// The caller asked for something the store cannot hold.
    Invalid(String),
    /// A version of that number is stored already.
    Exists(u64),
    /// Reading the process failed (nothing was published).
    Source { addr: u64, error: SourceError },
    /// Writing the output failed.
    Output(io::Error),
    /// `s3://` targets need the `aws` feature.
    NoS3,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Backend(e) => write!(f, "{e}"),
            StoreError::Damaged { object, error } => write!(f, "{object}: {error}"),
            StoreError::NotAStore(what) => write!(f, "{what} is not a memshadow store"),
            StoreError::PageSize { store, asked } => write!(
                f,
                "the store holds pages of {store} bytes, not {asked}"
            ),
            StoreError::NoVersion(v) => write!(f, "version {v} is not in the store"),
            StoreError::BrokenChain { version, missing } => write!(
                f,
                "version {version} cannot be read: version {missing}, which it builds on, is missing"
            ),
            StoreError::NotInVersion { version, addr, len } => write!(
                f,
                "{addr:#x} + {len} bytes is not in the regions of version {version}"
            ),
            StoreError::Invalid(why) => write!(f, "{why}"),
            StoreError::Exists(v) => write!(f, "version {v} is in the store already"),
            StoreError::Source { addr, error } => {
                write!(f, "cannot read the page at {addr:#x} of the process: {error}")
            }
            StoreError::Output(e) => write!(f, "cannot write the output: {e}"),
            StoreError::NoS3 => write!(f, "this build has no S3 support (feature `aws`)"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        StoreError::Backend(e)
    }
}

/// Whether an error means the store is damaged (as opposed to a bad request or an
/// unreachable backend).
impl StoreError {
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Damaged { .. }
                | StoreError::BrokenChain { .. }
                | StoreError::Backend(BackendError::NotFound(_))
        )
    }
}

fn damaged(object: impl Into<String>, error: FormatError) -> StoreError {
    StoreError::Damaged {
        object: object.into(),
        error,
    }
}

/// The newest version and its chain, for the base rule.
#[derive(Debug, Clone, Copy)]
struct Tip {
    version: u64,
    deltas: usize,
    base_bytes: u64,
    delta_bytes: u64,
}

/// A store, open for reading and (if opened so) writing.
pub struct Store {
    backend: Box<dyn Backend>,
    page_size: u32,
    /// Manifests read so far.
    manifests: BTreeMap<u64, Arc<Manifest>>,
    /// Known after the first record or retain.
    tip: Option<Option<Tip>>,
    object_limit: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn backend_for(target: &str, create: bool) -> Result<Box<dyn Backend>, StoreError> {
    if target.starts_with("s3://") {
        #[cfg(feature = "aws")]
        return Ok(Box::new(s3::S3::open(target)?));
        #[cfg(not(feature = "aws"))]
        return Err(StoreError::NoS3);
    }
    match local::LocalDir::open(Path::new(target), create) {
        Err(BackendError::NotFound(_)) => Err(StoreError::NotAStore(target.to_string())),
        r => Ok(Box::new(r?)),
    }
}

impl Store {
    /// Opens the store at `target` (a directory, or `s3://BUCKET/PREFIX`), creating it
    /// if there is none. Its page size must be `page_size`.
    pub fn create_or_open(target: &str, page_size: u32) -> Result<Store, StoreError> {
        let backend = backend_for(target, true)?;
        let meta = match backend.get(META_NAME) {
            Ok(b) => StoreMeta::decode(&b).map_err(|e| damaged(META_NAME, e))?,
            Err(BackendError::NotFound(_)) => {
                let meta = StoreMeta {
                    page_size,
                    created_ms: now_ms(),
                };
                // Refuses a page size the format cannot hold.
                if layout::PageDecoder::new(page_size).is_err() {
                    return Err(StoreError::Invalid(format!("page size {page_size}")));
                }
                match backend.put_new(META_NAME, &meta.encode()) {
                    Ok(()) => meta,
                    // Someone created it meanwhile.
                    Err(BackendError::Exists(_)) => StoreMeta::decode(&backend.get(META_NAME)?)
                        .map_err(|e| damaged(META_NAME, e))?,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        if meta.page_size != page_size {
            return Err(StoreError::PageSize {
                store: meta.page_size,
                asked: page_size,
            });
        }
        Ok(Store::with(backend, meta))
    }

    /// Opens an existing store.
    pub fn open(target: &str) -> Result<Store, StoreError> {
        let backend = backend_for(target, false)?;
        let meta = match backend.get(META_NAME) {
            Ok(b) => StoreMeta::decode(&b).map_err(|e| damaged(META_NAME, e))?,
            Err(BackendError::NotFound(_)) => {
                return Err(StoreError::NotAStore(format!(
                    "{target} (it has no {META_NAME} object)"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Store::with(backend, meta))
    }

    fn with(backend: Box<dyn Backend>, meta: StoreMeta) -> Store {
        Store {
            backend,
            page_size: meta.page_size,
            manifests: BTreeMap::new(),
            tip: None,
            object_limit: OBJECT_LIMIT,
        }
    }

    /// The objects, as stored (for tests and tools that inspect or damage a store).
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Closes data objects at `bytes` instead of [`OBJECT_LIMIT`] (tests).
    #[doc(hidden)]
    pub fn set_object_limit(&mut self, bytes: u64) {
        self.object_limit = bytes.max(1);
    }

    /// Page size of the recorded process.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Where the store is, as named.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Published versions, ascending.
    pub fn version_numbers(&self) -> Result<Vec<u64>, StoreError> {
        let mut v: Vec<u64> = self
            .backend
            .list(layout::MANIFEST_DIR)?
            .iter()
            .filter_map(|(n, _)| layout::parse_manifest_name(n))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// The manifest of `version` (read once, then cached).
    fn manifest(&mut self, version: u64) -> Result<Arc<Manifest>, StoreError> {
        if let Some(m) = self.manifests.get(&version) {
            return Ok(m.clone());
        }
        let name = layout::manifest_name(version);
        let bytes = match self.backend.get(&name) {
            Err(BackendError::NotFound(_)) => return Err(StoreError::NoVersion(version)),
            r => r?,
        };
        let m = self.decode_manifest(&name, version, &bytes)?;
        let m = Arc::new(m);
        self.manifests.insert(version, m.clone());
        Ok(m)
    }

    fn decode_manifest(&self, name: &str, version: u64, b: &[u8]) -> Result<Manifest, StoreError> {
        let m = Manifest::decode(b).map_err(|e| damaged(name, e))?;
        if m.version != version {
            return Err(damaged(
                name,
                FormatError::Corrupt(format!("it describes version {}", m.version)),
            ));
        }
        if m.page_size != self.page_size {
            return Err(damaged(
                name,
                FormatError::Corrupt(format!(
                    "page size {}, the store's is {}",
                    m.page_size, self.page_size
                )),
            ));
        }
        Ok(m)
    }

    /// The chain of `version`: itself first, its base last.
    fn chain(&mut self, version: u64) -> Result<Vec<Arc<Manifest>>, StoreError> {
        let mut chain = vec![self.manifest(version)?];
        while let Some(prev) = chain.last().expect("not empty").prev() {
            match self.manifest(prev) {
                Ok(m) => chain.push(m),
                Err(StoreError::NoVersion(_)) => {
                    return Err(StoreError::BrokenChain {
                        version,
                        missing: prev,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(chain)
    }

    /// Every version's summary, ascending.
    pub fn versions(&mut self) -> Result<Vec<VersionSummary>, StoreError> {
        let numbers = self.version_numbers()?;
        let mut base_of: BTreeMap<u64, Option<u64>> = BTreeMap::new();
        let mut out = Vec::with_capacity(numbers.len());
        for v in numbers {
            let m = match self.manifest(v) {
                Ok(m) => m,
                // Dropped by a retention meanwhile.
                Err(StoreError::NoVersion(_)) => continue,
                Err(e) => return Err(e),
            };
            let base = match m.prev() {
                None => Some(v),
                Some(p) => base_of.get(&p).copied().flatten(),
            };
            base_of.insert(v, base);
            out.push(VersionSummary {
                version: v,
                time_ms: m.time_ms,
                pid: m.pid,
                changed_pages: m.changed_pages(),
                stored_bytes: m.stored_bytes(),
                region_bytes: m.regions.iter().map(|r| r.1).sum(),
                base,
                crash_signal: m.crash_signal,
            });
        }
        Ok(out)
    }

    /// The newest version taken at or before `time_ms`.
    pub fn version_at(&mut self, time_ms: u64) -> Result<Option<u64>, StoreError> {
        let mut best: Option<(u64, u64)> = None;
        for v in self.version_numbers()? {
            let m = match self.manifest(v) {
                Ok(m) => m,
                Err(StoreError::NoVersion(_)) => continue,
                Err(e) => return Err(e),
            };
            if m.time_ms <= time_ms && best.is_none_or(|(t, _)| m.time_ms >= t) {
                best = Some((m.time_ms, v));
            }
        }
        Ok(best.map(|b| b.1))
    }

    /// The regions of `version`, (start, len).
    pub fn regions(&mut self, version: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(self.manifest(version)?.regions.clone())
    }

    fn load_tip(&mut self) -> Result<Option<Tip>, StoreError> {
        let Some(&newest) = self.version_numbers()?.last() else {
            return Ok(None);
        };
        let chain = match self.chain(newest) {
            Ok(c) => c,
            // A damaged chain: the next version is a base.
            Err(e) if e.is_damage() => {
                return Ok(Some(Tip {
                    version: newest,
                    deltas: usize::MAX,
                    base_bytes: 0,
                    delta_bytes: 0,
                }))
            }
            Err(e) => return Err(e),
        };
        let (base, deltas) = chain.split_last().expect("not empty");
        Ok(Some(Tip {
            version: newest,
            deltas: deltas.len(),
            base_bytes: base.stored_bytes(),
            delta_bytes: deltas.iter().map(|m| m.stored_bytes()).sum(),
        }))
    }

    fn tip(&mut self) -> Result<Option<Tip>, StoreError> {
        if let Some(t) = self.tip {
            return Ok(t);
        }
        let t = self.load_tip()?;
        self.tip = Some(t);
        Ok(t)
    }

    /// The version a [`Store::record`] with `since` would write a delta of; `None` when
    /// it would write a base. A recorder asks first, so that it fetches only the pages
    /// the store will take.
    pub fn delta_of_next(&mut self, since: Option<u64>) -> Result<Option<u64>, StoreError> {
        let tip = self.tip()?;
        Ok(Self::delta_of(tip, since))
    }

    /// The base rule: a delta of the newest version when `since` is it and its chain is
    /// short enough.
    fn delta_of(tip: Option<Tip>, since: Option<u64>) -> Option<u64> {
        match tip {
            Some(t)
                if since == Some(t.version)
                    && t.deltas < MAX_CHAIN_DELTAS
                    && t.delta_bytes <= t.base_bytes =>
            {
                Some(t.version)
            }
            _ => None,
        }
    }

    /// Records a version (see the layout's base rule): a delta of the pages in `changed`
    /// (page-aligned ranges written since version `since`) when `since` is the newest
    /// stored version and its chain is short enough, else a base of every page. Pages of
    /// regions the previous version did not have are read too. Data objects are written
    /// first, the manifest that publishes the version last; on any failure nothing is
    /// published (and what was written is removed again, best effort).
    pub fn record(
        &mut self,
        info: &VersionInfo,
        since: Option<u64>,
        changed: &[(u64, u64)],
        source: &mut dyn PageSource,
    ) -> Result<Recorded, StoreError> {
        let ps = u64::from(self.page_size);
        let tip = self.tip()?;
        if let Some(t) = tip {
            if info.version <= t.version {
                return Err(StoreError::Invalid(format!(
                    "version {} is not newer than the store's newest, {}",
                    info.version, t.version
                )));
            }
        }
        let mut end = 0u64;
        for (i, &(start, len)) in info.regions.iter().enumerate() {
            let bad = start % ps != 0
                || len % ps != 0
                || len == 0
                || start.checked_add(len).is_none()
                || (i > 0 && start < end);
            if bad {
                return Err(StoreError::Invalid(format!(
                    "region {start:#x} + {len} is not whole pages after the regions before it"
                )));
            }
            end = start + len;
        }
        for &(start, len) in changed {
            if start % ps != 0 || len % ps != 0 {
                return Err(StoreError::Invalid(format!(
                    "changed range {start:#x} + {len} is not whole pages"
                )));
            }
        }
        let regions = ranges::of_regions(&info.regions);
        let delta_of = Self::delta_of(tip, since);
        let pages = match delta_of {
            None => regions.clone(),
            Some(prev) => {
                let prev_regions = ranges::of_regions(&self.manifest(prev)?.regions);
                let changed = ranges::normalize(
                    changed
                        .iter()
                        .map(|&(s, l)| (s, s.saturating_add(l)))
                        .collect(),
                );
                let mut want = ranges::intersect(&changed, &regions);
                want.extend(ranges::subtract(&regions, &prev_regions));
                ranges::normalize(want)
            }
        };
        let kind = match delta_of {
            None => Kind::Base,
            Some(prev) => Kind::Delta { prev },
        };
        let mut written = Vec::new();
        let result = self.write_version(info, kind, &pages, source, &mut written);
        let manifest = match result {
            Ok(m) => m,
            Err(e) => {
                for name in &written {
                    let _ = self.backend.delete(name);
                }
                return Err(e);
            }
        };
        let stored = manifest.stored_bytes();
        let recorded = Recorded {
            version: info.version,
            base: delta_of.is_none(),
            pages: manifest.changed_pages(),
            stored_bytes: stored,
        };
        self.manifests.insert(info.version, Arc::new(manifest));
        self.tip = Some(Some(match (delta_of, tip) {
            (Some(_), Some(t)) => Tip {
                version: info.version,
                deltas: t.deltas + 1,
                base_bytes: t.base_bytes,
                delta_bytes: t.delta_bytes + stored,
            },
            _ => Tip {
                version: info.version,
                deltas: 0,
                base_bytes: stored,
                delta_bytes: 0,
            },
        }));
        Ok(recorded)
    }

    /// Writes the data objects of `pages` (normalized ranges) read from `source`, then
    /// the manifest; `written` collects the names of objects put.
    fn write_version(
        &mut self,
        info: &VersionInfo,
        kind: Kind,
        pages: &[(u64, u64)],
        source: &mut dyn PageSource,
        written: &mut Vec<String>,
    ) -> Result<Manifest, StoreError> {
        let ps = u64::from(self.page_size);
        let mut w = ObjectsWriter::new(self, info.version);
        let mut buf = vec![0u8; (SOURCE_CHUNK_PAGES * ps) as usize];
        for &(start, end) in pages {
            let mut addr = start;
            while addr < end {
                let n = ((end - addr) / ps).min(SOURCE_CHUNK_PAGES);
                let chunk = &mut buf[..(n * ps) as usize];
                source
                    .read(addr, chunk)
                    .map_err(|error| StoreError::Source { addr, error })?;
                w.push_chunk(addr, chunk, written)?;
                addr += n * ps;
            }
        }
        let (objects, runs) = w.finish(written)?;
        let manifest = Manifest {
            version: info.version,
            time_ms: info.time_ms,
            kind,
            pid: info.pid,
            page_size: self.page_size,
            regions: info.regions.clone(),
            objects,
            runs,
            crash_signal: info.crash_signal,
        };
        let bytes = manifest.encode().map_err(|e| match e {
            FormatError::Invalid(m) => StoreError::Invalid(m),
            e => StoreError::Invalid(e.to_string()),
        })?;
        match self
            .backend
            .put_new(&layout::manifest_name(info.version), &bytes)
        {
            Err(BackendError::Exists(_)) => Err(StoreError::Exists(info.version)),
            r => Ok(r.map(|()| manifest)?),
        }
    }

    /// Stores the context of a version (what `memshadow core` needs beside its pages).
    /// Call it before [`record`](Self::record) publishes the version, as for its data: a
    /// context whose version was never published is an orphan retention removes.
    pub fn put_context(&self, ctx: &CoreContext) -> Result<(), StoreError> {
        self.put_beside(&context_layout::context_name(ctx.version), &ctx.encode())
    }

    /// Removes what an attempt at `version` put beside it (context, plan) when the
    /// attempt ends without publishing the version; a published version's are left.
    /// The recorder calls it as an attempt fails: retention only collects such orphans
    /// below the newest version, since newer ones may be a write in progress.
    pub fn abandon(&self, version: u64) -> Result<(), StoreError> {
        if self.version_numbers()?.contains(&version) {
            return Ok(());
        }
        self.delete_beside(version)
    }

    /// Deletes the objects kept beside `version` (context, plan), if any.
    fn delete_beside(&self, version: u64) -> Result<(), StoreError> {
        self.backend
            .delete(&context_layout::context_name(version))?;
        self.backend.delete(&plan_layout::plan_name(version))?;
        Ok(())
    }

    /// Puts an object kept beside a version (context, plan): new, or replacing one left
    /// by an attempt at this version that never published it.
    fn put_beside(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match self.backend.put_new(name, bytes) {
            Err(BackendError::Exists(_)) => Ok(self.backend.put_replace(name, bytes)?),
            r => Ok(r?),
        }
    }

    /// An object kept beside `version`, decoded: None when the store has none; damage
    /// when `decode` refuses it.
    fn get_beside<T>(
        &self,
        name: String,
        decode: impl FnOnce(&[u8]) -> Result<T, FormatError>,
    ) -> Result<Option<T>, StoreError> {
        match self.backend.get(&name) {
            Ok(b) => decode(&b).map(Some).map_err(|e| damaged(name, e)),
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The context of `version`: None when the store has none for it (written by an
    /// older memshadow, or the process's context could not be read); an error when it is
    /// damaged.
    pub fn context(&self, version: u64) -> Result<Option<CoreContext>, StoreError> {
        self.get_beside(context_layout::context_name(version), |b| {
            CoreContext::decode(b, version)
        })
    }

    /// Stores the plan object of a version (see `memshadow_format::store_plan`), after
    /// its manifest; replaces one left by an earlier attempt.
    pub fn put_plan(&self, plan: &StorePlan) -> Result<(), StoreError> {
        self.put_beside(&plan_layout::plan_name(plan.version), &plan.encode())
    }

    /// The plan of `version`: None when the store has none for it; an error when it is
    /// damaged.
    pub fn plan(&self, version: u64) -> Result<Option<StorePlan>, StoreError> {
        self.get_beside(plan_layout::plan_name(version), |b| {
            StorePlan::decode(b, version)
        })
    }

    /// The versions that have a plan object, ascending (published or not).
    pub fn plan_versions(&self) -> Result<Vec<u64>, StoreError> {
        let mut v: Vec<u64> = self
            .backend
            .list(plan_layout::PLAN_DIR)?
            .into_iter()
            .filter_map(|(n, _)| plan_layout::parse_plan_name(&n))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Drops old versions: all but the `keep` newest, and those taken more than
    /// `keep_for` ago (the newest version is always kept). If the oldest version kept
    /// is a delta it is first rewritten as a base (published by replacing its manifest),
    /// then older manifests are deleted newest first, then unreferenced data objects
    /// and leftover temporary files. One retention at a time per store.
    pub fn retain(
        &mut self,
        keep: Option<usize>,
        keep_for: Option<Duration>,
    ) -> Result<RetainOutcome, StoreError> {
        let numbers = self.version_numbers()?;
        let mut out = RetainOutcome::default();
        let Some(&newest) = numbers.last() else {
            return Ok(out);
        };
        let cutoff = keep_for.map(|d| now_ms().saturating_sub(d.as_millis() as u64));
        let mut first_kept = numbers.len() - 1;
        for (i, &v) in numbers.iter().enumerate() {
            let by_count = keep.is_none_or(|n| i + n.max(1) >= numbers.len());
            let by_time = match cutoff {
                None => true,
                Some(c) => self.manifest(v)?.time_ms >= c,
            };
            if by_count && by_time {
                first_kept = i;
                break;
            }
        }
        let oldest_kept = numbers[first_kept];
        if first_kept > 0 {
            let m = self.manifest(oldest_kept)?;
            if m.prev().is_some() {
                self.rebase(oldest_kept)?;
                out.rebased = Some(oldest_kept);
            }
            for &v in numbers[..first_kept].iter().rev() {
                self.backend.delete(&layout::manifest_name(v))?;
                self.manifests.remove(&v);
                out.dropped.push(v);
            }
            // Without its manifest a context is garbage; it never holds a version up.
            for &v in &numbers[..first_kept] {
                self.delete_beside(v)?;
            }
            out.dropped.reverse();
        }
        out.deleted_objects = self.collect_garbage(newest)?;
        self.tip = None;
        Ok(out)
    }

    /// Rewrites `version` as a base of the same version, synthesised from the store.
    fn rebase(&mut self, version: u64) -> Result<(), StoreError> {
        let chain = self.chain(version)?;
        let top = chain[0].clone();
        let ps = u64::from(self.page_size);
        let mut reader = read::ChainReader::new(self.page_size)?;
        let mut written = Vec::new();
        let result = (|| {
            let mut w = ObjectsWriter::new(self, version);
            let mut buf = vec![0u8; (SOURCE_CHUNK_PAGES * ps) as usize];
            for &(start, end) in &ranges::of_regions(&top.regions) {
                let mut addr = start;
                while addr < end {
                    let n = ((end - addr) / ps).min(SOURCE_CHUNK_PAGES);
                    let chunk = &mut buf[..(n * ps) as usize];
                    reader.read(&*self.backend, &chain, addr, chunk)?;
                    w.push_chunk(addr, chunk, &mut written)?;
                    addr += n * ps;
                }
            }
            let (objects, runs) = w.finish(&mut written)?;
            let base = Manifest {
                kind: Kind::Base,
                objects,
                runs,
                ..(*top).clone()
            };
            let bytes = base
                .encode()
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            self.backend
                .put_replace(&layout::manifest_name(version), &bytes)?;
            Ok(base)
        })();
        match result {
            Ok(base) => {
                self.manifests.insert(version, Arc::new(base));
                Ok(())
            }
            Err(e) => {
                for name in &written {
                    let _ = self.backend.delete(name);
                }
                Err(e)
            }
        }
    }

    /// Deletes data objects no manifest references (only those written for versions
    /// older than `newest`: newer ones may be a write in progress) and temporary files
    /// of writers that are gone. Returns how many went.
    fn collect_garbage(&mut self, newest: u64) -> Result<usize, StoreError> {
        let mut referenced = std::collections::HashSet::new();
        let published: std::collections::HashSet<u64> =
            self.version_numbers()?.into_iter().collect();
        for v in self.version_numbers()? {
            match self.manifest(v) {
                Ok(m) => referenced.extend(m.objects.iter().map(ObjectRef::name)),
                Err(StoreError::NoVersion(_)) => {}
                // A damaged manifest: its data may still matter to whoever repairs it.
                Err(e) if e.is_damage() => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let mut deleted = 0;
        for dir in [
            layout::DATA_DIR,
            layout::MANIFEST_DIR,
            context_layout::CONTEXT_DIR,
            plan_layout::PLAN_DIR,
        ] {
            for (name, _) in self.backend.list(dir)? {
                let file = name.rsplit('/').next().unwrap_or("");
                let drop = if let Some(pid) = local::temp_file_pid(file) {
                    !process_alive(pid)
                } else if let Some(v) = context_layout::parse_context_name(&name)
                    .or_else(|| plan_layout::parse_plan_name(&name))
                {
                    v < newest && !published.contains(&v)
                } else if let Some((v, _)) = layout::parse_data_name(&name) {
                    v < newest && !referenced.contains(&name)
                } else {
                    false
                };
                if drop {
                    self.backend.delete(&name)?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Writes page records into data objects of at most [`OBJECT_LIMIT`] bytes, putting
/// each as it fills, and collects the runs.
struct ObjectsWriter<'a> {
    store: &'a Store,
    version: u64,
    current: Option<(DataWriter, u64)>,
    objects: Vec<ObjectRef>,
    runs: Vec<Run>,
    /// One page encoder per worker thread, and the pages of a chunk as encoded.
    encoders: Vec<layout::PageEncoder>,
    encoded: Vec<EncodedPage>,
}

/// Most threads that encode (checksum and compress) a chunk's pages at once.
const MAX_ENCODERS: usize = 8;
/// Chunks of fewer pages are encoded on the calling thread.
const MIN_PAGES_TO_SHARE: usize = 64;

impl<'a> ObjectsWriter<'a> {
    fn new(store: &'a Store, version: u64) -> Self {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_ENCODERS);
        ObjectsWriter {
            store,
            version,
            current: None,
            objects: Vec::new(),
            runs: Vec::new(),
            encoders: (0..workers)
                .filter_map(|_| layout::PageEncoder::new(store.page_size).ok())
                .collect(),
            encoded: Vec::new(),
        }
    }

    /// Pushes the pages of `chunk` (whole pages from `addr` on), encoded by all the
    /// encoders at once (compression is most of a record's cost), appended in order.
    fn push_chunk(
        &mut self,
        addr: u64,
        chunk: &[u8],
        written: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let ps = self.store.page_size as usize;
        let pages = chunk.len() / ps;
        if self.encoders.is_empty() {
            return Err(StoreError::Invalid("no zstd encoder could be made".into()));
        }
        self.encoded.resize_with(pages, EncodedPage::default);
        // Threads only where there is enough to share.
        let workers = if pages < MIN_PAGES_TO_SHARE {
            1
        } else {
            self.encoders.len()
        };
        let per = pages.div_ceil(workers).max(1);
        let failed = std::thread::scope(|scope| {
            if workers == 1 {
                let enc = &mut self.encoders[0];
                return self
                    .encoded
                    .iter_mut()
                    .zip(chunk.chunks_exact(ps))
                    .find_map(|(o, page)| enc.encode_into(page, o).err());
            }
            let jobs: Vec<_> = self
                .encoders
                .iter_mut()
                .zip(self.encoded.chunks_mut(per).zip(chunk.chunks(per * ps)))
                .map(|(enc, (out, bytes))| {
                    scope.spawn(move || {
                        for (o, page) in out.iter_mut().zip(bytes.chunks_exact(ps)) {
                            enc.encode_into(page, o)?;
                        }
                        Ok::<(), FormatError>(())
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| {
                    j.join()
                        .unwrap_or(Err(FormatError::Invalid("an encoder panicked".into())))
                })
                .find_map(Result::err)
        });
        if let Some(e) = failed {
            return Err(StoreError::Invalid(e.to_string()));
        }
        let encoded = std::mem::take(&mut self.encoded);
        for (i, page) in encoded.iter().enumerate() {
            self.push(addr + (i * ps) as u64, page, written)?;
        }
        self.encoded = encoded;
        Ok(())
    }

    fn push(
        &mut self,
        addr: u64,
        page: &EncodedPage,
        written: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let ps = u64::from(self.store.page_size);
        if self.current.is_none() {
            let nonce = rand::random::<u64>();
            let w = DataWriter::new(self.store.page_size, self.version, nonce)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            self.current = Some((w, nonce));
        }
        let (w, _) = self.current.as_mut().expect("just set");
        let offset = w.len();
        let len = w.push_encoded(addr, page);
        let object = self.objects.len() as u32;
        match self.runs.last_mut() {
            Some(r)
                if r.object == object
                    && r.addr + r.pages * ps == addr
                    && r.pages < RUN_MAX_PAGES =>
            {
                r.pages += 1;
                r.bytes += len;
            }
            _ => self.runs.push(Run {
                addr,
                pages: 1,
                object,
                offset,
                bytes: len,
            }),
        }
        if w.len() >= self.store.object_limit {
            self.close(written)?;
        }
        Ok(())
    }

    fn close(&mut self, written: &mut Vec<String>) -> Result<(), StoreError> {
        if let Some((w, nonce)) = self.current.take() {
            let bytes = w.finish();
            let name = layout::data_name(self.version, nonce);
            self.store.backend.put_new(&name, &bytes)?;
            written.push(name);
            self.objects.push(ObjectRef {
                version: self.version,
                nonce,
                size: bytes.len() as u64,
            });
        }
        Ok(())
    }

    fn finish(
        mut self,
        written: &mut Vec<String>,
    ) -> Result<(Vec<ObjectRef>, Vec<Run>), StoreError> {
        self.close(written)?;
        Ok((self.objects, self.runs))
    }
}
