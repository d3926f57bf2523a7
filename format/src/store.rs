//! The durable store: a process's memory at many snapshot versions, kept as full base
//! images and compressed, checksummed deltas, in a local directory or under an S3
//! prefix (crate `memshadow-store` reads and writes it; this module is the layout).
//!
//! Behind the cargo feature `store`: it links zstd and crc32c, which the shim must not.
//!
//! # Objects
//!
//! A store is a flat set of named objects (files under the store directory, or keys
//! under the S3 prefix):
//!
//! | name | what |
//! |---|---|
//! | `STORE` | the store's meta object: magic, format version, page size |
//! | `manifests/<version, 20 decimal digits>` | one per published version |
//! | `data/<version, 20 digits>-<nonce, 16 hex digits>` | compressed page records |
//! | `context/<version, 20 digits>` | what `memshadow core` needs beside the pages (auxiliary vector, mappings, the small file-backed pages read at record time): see [`crate::store_context`]; optional, absent in stores of older versions |
//! | `plan/<version, 20 digits>` | the pages the predictor expected written next, with confidence, when that version was recorded (a follower orders its first sync by it): see [`crate::store_plan`]; optional |
//!
//! A data object's name carries the version it was written for and a random nonce, so
//! two writers (or a retry, or a retention rebase) never pick the same name. Names that
//! fit none of these patterns are ignored by readers; a local store's temporary files
//! (`*.tmp`, left by a crash) are removed by retention and reported by `verify` as
//! orphans.
//!
//! All integers are little-endian and fixed-width. Every checksum is CRC-32C
//! (Castagnoli, crate `crc32c`; 6-7 GB/s here).
//!
//! # `STORE`, [`META_SIZE`] bytes
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MSHSTORE` ([`STORE_MAGIC`]) |
//! | 8 | 4 | format version ([`STORE_FORMAT_VERSION`]) |
//! | 12 | 4 | page size of the recorded process, bytes |
//! | 16 | 8 | when the store was created, ms since the Unix epoch |
//! | 24 | 4 | reserved, written 0 |
//! | 28 | 4 | CRC-32C of bytes 0..28 |
//!
//! # Manifests
//!
//! A manifest describes one version: its regions (what was mapped and tracked), and
//! where the pages it recorded live. Header, [`MANIFEST_HEADER_SIZE`] bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MSHMANIF` ([`MANIFEST_MAGIC`]) |
//! | 8 | 4 | format version |
//! | 12 | 4 | kind: 1 base ([`KIND_BASE`]), 2 delta ([`KIND_DELTA`]) |
//! | 16 | 8 | version (1 or more; also the manifest's name) |
//! | 24 | 8 | wall-clock time of the snapshot, ms since the Unix epoch |
//! | 32 | 8 | previous version in the chain (delta), 0 (base) |
//! | 40 | 4 | pid of the recorded process |
//! | 44 | 4 | page size (equal to the store's) |
//! | 48 | 4 | R, number of regions |
//! | 52 | 4 | O, number of data objects referenced |
//! | 56 | 4 | N, number of page runs |
//! | 60 | 4 | crash signal: the fatal signal the program was dying of when this version was taken (the flight recorder, `memshadow run --record`), 0 otherwise; stores older than it wrote 0 here |
//! | 64 | 8 | pages recorded by this version (sum of the runs' page counts) |
//! | 72 | 8 | stored bytes: sum of the sizes of the data objects referenced |
//!
//! Then R regions of 16 bytes (first address, length in bytes; page-aligned, sorted,
//! not overlapping, length 1 page or more); then O data objects of 24 bytes (the
//! version and nonce of its name, its size in bytes); then N runs of 40 bytes:
//!
//! | offset | size | run field |
//! |---|---|---|
//! | 0 | 8 | first address (page-aligned) |
//! | 8 | 8 | number of pages (1 or more) |
//! | 16 | 4 | index of the data object in the table above |
//! | 20 | 4 | reserved, written 0 |
//! | 24 | 8 | offset in that object of the first page's record |
//! | 32 | 8 | bytes the run's records take there (consecutive, one per page, in address order) |
//!
//! Runs are sorted, do not overlap, and lie inside the version's regions. Last, 4 bytes:
//! the CRC-32C of everything before them. A manifest is exactly
//! `80 + 16 R + 24 O + 40 N + 4` bytes.
//!
//! # Data objects
//!
//! Header, [`DATA_HEADER_SIZE`] bytes: magic `MSHDATA\0` ([`DATA_MAGIC`]), format version
//! (4), page size (4), the version it was written for (8), its nonce (8), reserved (4),
//! CRC-32C of the 36 bytes before (4). Then page records, each a
//! [`RECORD_HEADER_SIZE`]-byte header and its payload:
//!
//! | offset | size | record field |
//! |---|---|---|
//! | 0 | 8 | address of the page |
//! | 8 | 4 | flags: [`FLAG_ZERO`] (1) the page is all zeroes, no payload; [`FLAG_RAW`] (2) the payload is the page itself (zstd did not make it smaller) |
//! | 12 | 4 | payload length (0 for a zero page; the page size when raw) |
//! | 16 | 4 | CRC-32C of the page's bytes (uncompressed) |
//! | 20 | 4 | CRC-32C of bytes 0..20 of this header |
//!
//! A payload without a flag is one zstd frame (level 1) that decompresses to exactly one
//! page. Compression is per page: a read decompresses only the pages it needs, a zero page
//! costs its header alone. Measured on a python3 heap of 165 MiB (`cargo run --example
//! measure` in memshadow-store): per-page zstd-1 stores it 7.1x smaller, zstd-1 over runs of
//! 16 pages 8.9x; the runs' extra 25% would make every read decompress 16 pages.
//! Last, the trailer, [`DATA_TRAILER_SIZE`] bytes: magic `MSHDEND\0` ([`DATA_END_MAGIC`]),
//! number of records (8), reserved (4, written 0), CRC-32C of every byte of the object
//! before this field (4): the object's last four bytes.
//!
//! Reads check the records they use (header checksum, address, decompressed length, page
//! checksum); `verify` checks every object whole, its trailer too.
//!
//! # Versions, chains and the base rule
//!
//! A version is published by its manifest alone: readers list `manifests/` and nothing
//! else, and a manifest is written only after every data object it references is
//! complete and durable. A base manifest's runs hold every page of its regions. A delta's
//! runs hold the pages written since its previous version (`prev`), plus every page of
//! its regions that the previous version's regions did not cover (regions that appeared
//! or moved); every other page of its regions is the page of the same address in `prev`,
//! recursively. So the page at address A of version V is in the first manifest along the
//! chain V, prev(V), prev(prev(V)), ... whose runs hold A; the chain ends at a base.
//!
//! The writer starts a new base (see `memshadow-store`): for the first version; when the
//! version the caller's changes are relative to is not the newest stored one (or is
//! unknown); and when the chain since its base has [`MAX_CHAIN_DELTAS`] deltas already or
//! its deltas' stored bytes add up to more than its base's. A restore therefore reads at
//! most 65 manifests and at most about twice a base's bytes.
//!
//! # Retention
//!
//! Versions are dropped oldest first. If the oldest version kept is a delta, a base of it
//! is synthesised from the store (new data object), then its manifest is atomically
//! replaced by the base manifest of the same version (rename over it locally, a plain put
//! on S3): the versions after it reach a base one step earlier and read the same bytes.
//! Then the older manifests are deleted, then every data object no manifest references.
//! A crash between any two steps leaves only complete versions and unreferenced data.
//!
//! # Crash safety and permissions
//!
//! Every object is written whole under a temporary name, fsynced, and renamed into place
//! with `RENAME_NOREPLACE` (the directory is then fsynced), or put with an S3
//! conditional put (`If-None-Match: *`). Readers never see part of an object, and data
//! written by a writer killed before its manifest is an orphan: unreferenced, harmless,
//! reported by `verify` as an orphan and removed by retention. The objects hold the
//! program's memory: local files are created 0600 in 0700 directories owned by the user.
//!
//! # Format version
//!
//! [`STORE_FORMAT_VERSION`] is in every object; a reader refuses an object with another
//! version (a newer one: "written by a newer memshadow"), never guessing at its layout.

use std::fmt;

/// First eight bytes of `STORE`.
pub const STORE_MAGIC: [u8; 8] = *b"MSHSTORE";
/// First eight bytes of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"MSHMANIF";
/// First eight bytes of a data object.
pub const DATA_MAGIC: [u8; 8] = *b"MSHDATA\0";
/// First eight bytes of a data object's trailer.
pub const DATA_END_MAGIC: [u8; 8] = *b"MSHDEND\0";
/// Bumped whenever the layout changes.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Size of `STORE`.
pub const META_SIZE: usize = 32;
/// Size of a manifest's fixed header.
pub const MANIFEST_HEADER_SIZE: usize = 80;
/// Size of a region entry in a manifest.
pub const REGION_ENTRY_SIZE: usize = 16;
/// Size of a data object entry in a manifest.
pub const OBJECT_ENTRY_SIZE: usize = 24;
/// Size of a run entry in a manifest.
pub const RUN_ENTRY_SIZE: usize = 40;
/// Size of a data object's header.
pub const DATA_HEADER_SIZE: usize = 40;
/// Size of a page record's header.
pub const RECORD_HEADER_SIZE: usize = 24;
/// Size of a data object's trailer.
pub const DATA_TRAILER_SIZE: usize = 24;
/// Manifest kind: every page of the regions is in the runs.
pub const KIND_BASE: u32 = 1;
/// Manifest kind: the runs hold what changed since `prev`.
pub const KIND_DELTA: u32 = 2;
/// Record flag: the page is all zeroes; no payload.
pub const FLAG_ZERO: u32 = 1;
/// Record flag: the payload is the page, uncompressed.
pub const FLAG_RAW: u32 = 2;
/// zstd level of the payloads.
pub const ZSTD_LEVEL: i32 = 1;
/// A chain holds at most this many deltas after its base.
pub const MAX_CHAIN_DELTAS: usize = 64;
/// Name of the meta object.
pub const META_NAME: &str = "STORE";
/// Folder of the manifests.
pub const MANIFEST_DIR: &str = "manifests";
/// Folder of the data objects.
pub const DATA_DIR: &str = "data";

/// Name of the manifest of `version`.
pub fn manifest_name(version: u64) -> String {
    format!("{MANIFEST_DIR}/{version:020}")
}

/// The version a manifest name stands for.
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(MANIFEST_DIR)?.strip_prefix('/')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Name of a data object.
pub fn data_name(version: u64, nonce: u64) -> String {
    format!("{DATA_DIR}/{version:020}-{nonce:016x}")
}

/// The version and nonce a data object name stands for.
pub fn parse_data_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(DATA_DIR)?.strip_prefix('/')?;
    let (v, n) = rest.split_once('-')?;
    if v.len() != 20 || !v.bytes().all(|b| b.is_ascii_digit()) || n.len() != 16 {
        return None;
    }
    if !n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some((v.parse().ok()?, u64::from_str_radix(n, 16).ok()?))
}

/// CRC-32C.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Why an object could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// It does not start with the magic of its kind (`what` it should have been).
    BadMagic(&'static str),
    /// It was written in a format version this build does not read.
    UnsupportedVersion { what: &'static str, found: u32 },
    /// It ends early (what was cut short is said).
    Truncated(String),
    /// A checksum does not match (where is said).
    Checksum(String),
    /// It breaks a rule of the format (which is said).
    Corrupt(String),
    /// A payload does not decompress to one page.
    Decompress(String),
    /// The writer was asked for something the format cannot hold.
    Invalid(String),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::BadMagic(what) => write!(f, "not a memshadow {what} (bad magic)"),
            FormatError::UnsupportedVersion { what, found } if *found > STORE_FORMAT_VERSION => write!(
                f,
                "{what} written by a newer memshadow (store format version {found}; this build reads version {STORE_FORMAT_VERSION})"
            ),
            FormatError::UnsupportedVersion { what, found } => write!(
                f,
                "{what} has store format version {found}, which this build does not read (it reads version {STORE_FORMAT_VERSION})"
            ),
            FormatError::Truncated(what) => write!(f, "truncated: {what}"),
            FormatError::Checksum(what) => write!(f, "checksum mismatch: {what}"),
            FormatError::Corrupt(what) => write!(f, "corrupt: {what}"),
            FormatError::Decompress(what) => write!(f, "cannot decompress: {what}"),
            FormatError::Invalid(what) => write!(f, "invalid: {what}"),
        }
    }
}

impl std::error::Error for FormatError {}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn check_format(what: &'static str, found: u32) -> Result<(), FormatError> {
    if found == STORE_FORMAT_VERSION {
        Ok(())
    } else {
        Err(FormatError::UnsupportedVersion { what, found })
    }
}

fn valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (512..=(1 << 30)).contains(&page_size)
}

/// What `STORE` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMeta {
    pub page_size: u32,
    pub created_ms: u64,
}

impl StoreMeta {
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut b = [0u8; META_SIZE];
        b[0..8].copy_from_slice(&STORE_MAGIC);
        b[8..12].copy_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = checksum(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes `STORE` (magic, then format version, then checksum and size).
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < 12 {
            return Err(if STORE_MAGIC.starts_with(&b[..b.len().min(8)]) {
                FormatError::Truncated(format!("{} bytes", b.len()))
            } else {
                FormatError::BadMagic("store")
            });
        }
        if b[0..8] != STORE_MAGIC {
            return Err(FormatError::BadMagic("store"));
        }
        check_format("store", u32_at(b, 8))?;
        if b.len() != META_SIZE {
            return Err(FormatError::Truncated(format!(
                "{} bytes, not {META_SIZE}",
                b.len()
            )));
        }
        if checksum(&b[..28]) != u32_at(b, 28) {
            return Err(FormatError::Checksum("store meta".into()));
        }
        let page_size = u32_at(b, 12);
        if !valid_page_size(page_size) {
            return Err(FormatError::Corrupt(format!("page size {page_size}")));
        }
        Ok(StoreMeta {
            page_size,
            created_ms: u64_at(b, 16),
        })
    }
}

/// Base or delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Base,
    Delta { prev: u64 },
}

/// A data object a manifest references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef {
    /// The version it was written for (in its name).
    pub version: u64,
    /// Its nonce (in its name).
    pub nonce: u64,
    /// Its size, bytes.
    pub size: u64,
}

impl ObjectRef {
    pub fn name(&self) -> String {
        data_name(self.version, self.nonce)
    }
}

/// Consecutive pages whose records follow each other in one data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub addr: u64,
    pub pages: u64,
    /// Index into [`Manifest::objects`].
    pub object: u32,
    /// Offset of the first page's record in the object.
    pub offset: u64,
    /// Bytes the run's records take.
    pub bytes: u64,
}

/// One version's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: u64,
    pub time_ms: u64,
    pub kind: Kind,
    pub pid: u32,
    pub page_size: u32,
    /// (first address, length), sorted, page-aligned, not overlapping.
    pub regions: Vec<(u64, u64)>,
    pub objects: Vec<ObjectRef>,
    pub runs: Vec<Run>,
    /// The fatal signal the program was dying of when this version was taken (the
    /// flight recorder), 0 for an ordinary version.
    pub crash_signal: u32,
}

impl Manifest {
    /// Pages recorded by this version.
    pub fn changed_pages(&self) -> u64 {
        self.runs.iter().map(|r| r.pages).sum()
    }

    /// Sum of the sizes of the data objects it references.
    pub fn stored_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    /// The previous version in the chain (None for a base).
    pub fn prev(&self) -> Option<u64> {
        match self.kind {
            Kind::Base => None,
            Kind::Delta { prev } => Some(prev),
        }
    }

    /// Checks the rules of the format (see the module documentation).
    pub fn check(&self) -> Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::Invalid(m));
        let ps = u64::from(self.page_size);
        if !valid_page_size(self.page_size) {
            return bad(format!("page size {}", self.page_size));
        }
        if self.version == 0 {
            return bad("version 0".into());
        }
        if let Kind::Delta { prev } = self.kind {
            if prev == 0 || prev >= self.version {
                return bad(format!(
                    "delta {} follows version {prev}, which is not older",
                    self.version
                ));
            }
        }
        let mut end = 0u64;
        for (i, &(start, len)) in self.regions.iter().enumerate() {
            let Some(e) = start.checked_add(len) else {
                return bad(format!("region {start:#x} + {len} overflows"));
            };
            if start % ps != 0 || len % ps != 0 || len == 0 {
                return bad(format!(
                    "region {start:#x} + {len} is not whole pages of {ps}"
                ));
            }
            if i > 0 && start < end {
                return bad(format!(
                    "region {start:#x} is out of order or overlaps the one before"
                ));
            }
            end = e;
        }
        let mut run_end = 0u64;
        let mut region = 0usize;
        for (i, run) in self.runs.iter().enumerate() {
            let len = run.pages.checked_mul(ps);
            let e = len.and_then(|l| run.addr.checked_add(l));
            let Some(e) = e.filter(|_| run.pages > 0 && run.addr % ps == 0) else {
                return bad(format!("run {i} at {:#x} has a bad extent", run.addr));
            };
            if i > 0 && run.addr < run_end {
                return bad(format!(
                    "run {i} at {:#x} is out of order or overlaps",
                    run.addr
                ));
            }
            run_end = e;
            // Runs are sorted: advance to the region that may hold this one.
            while region < self.regions.len()
                && self.regions[region].0 + self.regions[region].1 <= run.addr
            {
                region += 1;
            }
            // A run may span adjacent regions.
            let mut covered = run.addr;
            let mut r = region;
            while covered < e && r < self.regions.len() && self.regions[r].0 <= covered {
                covered = covered.max(self.regions[r].0 + self.regions[r].1);
                r += 1;
            }
            if covered < e {
                return bad(format!(
                    "run {i} at {:#x} ({} pages) is not inside the regions",
                    run.addr, run.pages
                ));
            }
            let Some(obj) = self.objects.get(run.object as usize) else {
                return bad(format!("run {i} names data object {}", run.object));
            };
            let min = run.pages.saturating_mul(RECORD_HEADER_SIZE as u64);
            let fits = run
                .offset
                .checked_add(run.bytes)
                .is_some_and(|e| e + DATA_TRAILER_SIZE as u64 <= obj.size);
            if run.offset < DATA_HEADER_SIZE as u64 || run.bytes < min || !fits {
                return bad(format!(
                    "run {i} at {:#x} lies outside its data object",
                    run.addr
                ));
            }
        }
        Ok(())
    }

    /// Encodes (after [`check`](Self::check)).
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        self.check()?;
        let count = |n: usize, what: &str| {
            u32::try_from(n).map_err(|_| FormatError::Invalid(format!("{n} {what}")))
        };
        let (r, o, n) = (
            count(self.regions.len(), "regions")?,
            count(self.objects.len(), "objects")?,
            count(self.runs.len(), "runs")?,
        );
        let mut b = Vec::with_capacity(encoded_len(r, o, n));
        b.extend_from_slice(&MANIFEST_MAGIC);
        b.extend_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
        let (kind, prev) = match self.kind {
            Kind::Base => (KIND_BASE, 0),
            Kind::Delta { prev } => (KIND_DELTA, prev),
        };
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.time_ms.to_le_bytes());
        b.extend_from_slice(&prev.to_le_bytes());
        b.extend_from_slice(&self.pid.to_le_bytes());
        b.extend_from_slice(&self.page_size.to_le_bytes());
        for x in [r, o, n, self.crash_signal] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&self.changed_pages().to_le_bytes());
        b.extend_from_slice(&self.stored_bytes().to_le_bytes());
        for &(start, len) in &self.regions {
            b.extend_from_slice(&start.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
        }
        for obj in &self.objects {
            for x in [obj.version, obj.nonce, obj.size] {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        for run in &self.runs {
            b.extend_from_slice(&run.addr.to_le_bytes());
            b.extend_from_slice(&run.pages.to_le_bytes());
            b.extend_from_slice(&run.object.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&run.offset.to_le_bytes());
            b.extend_from_slice(&run.bytes.to_le_bytes());
        }
        let crc = checksum(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), encoded_len(r, o, n));
        Ok(b)
    }

    /// Decodes and checks a manifest.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < 12 {
            return Err(if MANIFEST_MAGIC.starts_with(&b[..b.len().min(8)]) {
                FormatError::Truncated(format!("{} bytes", b.len()))
            } else {
                FormatError::BadMagic("manifest")
            });
        }
        if b[0..8] != MANIFEST_MAGIC {
            return Err(FormatError::BadMagic("manifest"));
        }
        check_format("manifest", u32_at(b, 8))?;
        if b.len() < MANIFEST_HEADER_SIZE + 4 {
            return Err(FormatError::Truncated(format!(
                "{} bytes, less than a header",
                b.len()
            )));
        }
        let (r, o, n) = (u32_at(b, 48), u32_at(b, 52), u32_at(b, 56));
        let want = encoded_len(r, o, n);
        if b.len() != want {
            // A bad count is caught by the checksum below only if the length agrees.
            let body = &b[..b.len() - 4];
            if checksum(body) != u32_at(b, b.len() - 4) {
                return Err(FormatError::Truncated(format!(
                    "{} bytes, its counts need {want}",
                    b.len()
                )));
            }
            return Err(FormatError::Corrupt(format!(
                "{} bytes, its counts need {want}",
                b.len()
            )));
        }
        let body = &b[..b.len() - 4];
        if checksum(body) != u32_at(b, b.len() - 4) {
            return Err(FormatError::Checksum("manifest".into()));
        }
        let kind = match (u32_at(b, 12), u64_at(b, 32)) {
            (KIND_BASE, 0) => Kind::Base,
            (KIND_DELTA, prev) => Kind::Delta { prev },
            (k, p) => {
                return Err(FormatError::Corrupt(format!(
                    "kind {k} with previous version {p}"
                )))
            }
        };
        let mut at = MANIFEST_HEADER_SIZE;
        let regions = (0..r)
            .map(|i| {
                let e = at + i as usize * REGION_ENTRY_SIZE;
                (u64_at(b, e), u64_at(b, e + 8))
            })
            .collect();
        at += r as usize * REGION_ENTRY_SIZE;
        let objects = (0..o)
            .map(|i| {
                let e = at + i as usize * OBJECT_ENTRY_SIZE;
                ObjectRef {
                    version: u64_at(b, e),
                    nonce: u64_at(b, e + 8),
                    size: u64_at(b, e + 16),
                }
            })
            .collect();
        at += o as usize * OBJECT_ENTRY_SIZE;
        let runs = (0..n)
            .map(|i| {
                let e = at + i as usize * RUN_ENTRY_SIZE;
                Run {
                    addr: u64_at(b, e),
                    pages: u64_at(b, e + 8),
                    object: u32_at(b, e + 16),
                    offset: u64_at(b, e + 24),
                    bytes: u64_at(b, e + 32),
                }
            })
            .collect();
        let m = Manifest {
            version: u64_at(b, 16),
            time_ms: u64_at(b, 24),
            kind,
            pid: u32_at(b, 40),
            page_size: u32_at(b, 44),
            regions,
            objects,
            runs,
            crash_signal: u32_at(b, 60),
        };
        m.check().map_err(|e| match e {
            FormatError::Invalid(m) => FormatError::Corrupt(m),
            e => e,
        })?;
        if (m.changed_pages(), m.stored_bytes()) != (u64_at(b, 64), u64_at(b, 72)) {
            return Err(FormatError::Corrupt(
                "its page and byte totals disagree with its runs and objects".into(),
            ));
        }
        Ok(m)
    }
}

fn encoded_len(r: u32, o: u32, n: u32) -> usize {
    MANIFEST_HEADER_SIZE
        + r as usize * REGION_ENTRY_SIZE
        + o as usize * OBJECT_ENTRY_SIZE
        + n as usize * RUN_ENTRY_SIZE
        + 4
}

/// Builds a data object in memory: header, then a record per [`push`](Self::push),
/// then the trailer at [`finish`](Self::finish).
pub struct DataWriter {
    buf: Vec<u8>,
    records: u64,
    encoder: PageEncoder,
}

/// A page as its record carries it: flags, the checksum of its bytes, and its payload
/// (none for a zero page, zstd-1 bytes, or the page itself when that is not smaller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedPage {
    pub flags: u32,
    pub crc: u32,
    pub payload: Vec<u8>,
}

/// Encodes pages into [`EncodedPage`]s: one per thread (it keeps a zstd context).
pub struct PageEncoder {
    page_size: usize,
    compressor: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl PageEncoder {
    pub fn new(page_size: u32) -> Result<Self, FormatError> {
        if !valid_page_size(page_size) {
            return Err(FormatError::Invalid(format!("page size {page_size}")));
        }
        let compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map_err(|e| FormatError::Invalid(format!("zstd: {e}")))?;
        Ok(PageEncoder {
            page_size: page_size as usize,
            compressor,
            scratch: vec![0u8; page_size as usize],
        })
    }

    /// The record contents of `page` (exactly one page).
    pub fn encode(&mut self, page: &[u8]) -> Result<EncodedPage, FormatError> {
        let mut out = EncodedPage::default();
        self.encode_into(page, &mut out)?;
        Ok(out)
    }

    /// [`PageEncoder::encode`] into `out`, reusing its payload's allocation.
    pub fn encode_into(&mut self, page: &[u8], out: &mut EncodedPage) -> Result<(), FormatError> {
        if page.len() != self.page_size {
            return Err(FormatError::Invalid(format!(
                "a page of {} bytes, not {}",
                page.len(),
                self.page_size
            )));
        }
        out.crc = checksum(page);
        out.payload.clear();
        if page.iter().all(|&b| b == 0) {
            out.flags = FLAG_ZERO;
            return Ok(());
        }
        match self
            .compressor
            .compress_to_buffer(page, &mut self.scratch[..])
        {
            Ok(n) if n < self.page_size => {
                out.flags = 0;
                out.payload.extend_from_slice(&self.scratch[..n]);
            }
            // It did not fit in less than a page.
            _ => {
                out.flags = FLAG_RAW;
                out.payload.extend_from_slice(page);
            }
        }
        Ok(())
    }
}

impl DataWriter {
    pub fn new(page_size: u32, version: u64, nonce: u64) -> Result<Self, FormatError> {
        let encoder = PageEncoder::new(page_size)?;
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(&DATA_MAGIC);
        buf.extend_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(&page_size.to_le_bytes());
        buf.extend_from_slice(&version.to_le_bytes());
        buf.extend_from_slice(&nonce.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        let crc = checksum(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        Ok(DataWriter {
            buf,
            records: 0,
            encoder,
        })
    }

    /// Bytes so far (the offset the next record gets).
    pub fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Appends the record of the page at `addr`; returns its length in bytes.
    pub fn push(&mut self, addr: u64, page: &[u8]) -> Result<u64, FormatError> {
        let encoded = self.encoder.encode(page)?;
        Ok(self.push_encoded(addr, &encoded))
    }

    /// Appends a page record encoded (checksummed and compressed) beforehand, perhaps on
    /// another thread by another [`PageEncoder`]; returns the record's length.
    pub fn push_encoded(&mut self, addr: u64, page: &EncodedPage) -> u64 {
        let start = self.buf.len();
        self.buf.extend_from_slice(&addr.to_le_bytes());
        self.buf.extend_from_slice(&page.flags.to_le_bytes());
        self.buf
            .extend_from_slice(&(page.payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&page.crc.to_le_bytes());
        let hcrc = checksum(&self.buf[start..]);
        self.buf.extend_from_slice(&hcrc.to_le_bytes());
        self.buf.extend_from_slice(&page.payload);
        self.records += 1;
        (self.buf.len() - start) as u64
    }

    /// Appends the trailer and gives the object's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&DATA_END_MAGIC);
        self.buf.extend_from_slice(&self.records.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        let crc = checksum(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Decodes page records, checking each (see [`decode_run`]).
pub struct PageDecoder {
    page_size: usize,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl PageDecoder {
    pub fn new(page_size: u32) -> Result<Self, FormatError> {
        if !valid_page_size(page_size) {
            return Err(FormatError::Invalid(format!("page size {page_size}")));
        }
        Ok(PageDecoder {
            page_size: page_size as usize,
            decompressor: zstd::bulk::Decompressor::new()
                .map_err(|e| FormatError::Invalid(format!("zstd: {e}")))?,
        })
    }

    /// Decodes the record at the start of `b`, which must be the page at `addr`, into
    /// `out` (one page); returns the record's length.
    pub fn decode_record(
        &mut self,
        b: &[u8],
        addr: u64,
        out: &mut [u8],
    ) -> Result<usize, FormatError> {
        let (flags, payload, crc) = self.parse_record(b, addr)?;
        if flags & FLAG_ZERO != 0 {
            out.fill(0);
        } else if flags & FLAG_RAW != 0 {
            out.copy_from_slice(payload);
        } else {
            let n = self
                .decompressor
                .decompress_to_buffer(payload, out)
                .map_err(|e| FormatError::Decompress(format!("page {addr:#x}: {e}")))?;
            if n != self.page_size {
                return Err(FormatError::Decompress(format!(
                    "page {addr:#x} decompresses to {n} bytes"
                )));
            }
        }
        if checksum(out) != crc {
            return Err(FormatError::Checksum(format!("page {addr:#x}")));
        }
        Ok(RECORD_HEADER_SIZE + payload.len())
    }

    /// Checks a record's header and returns its flags, payload and page checksum.
    fn parse_record<'a>(
        &self,
        b: &'a [u8],
        addr: u64,
    ) -> Result<(u32, &'a [u8], u32), FormatError> {
        if b.len() < RECORD_HEADER_SIZE {
            return Err(FormatError::Truncated(format!(
                "the record of page {addr:#x}"
            )));
        }
        if checksum(&b[..20]) != u32_at(b, 20) {
            return Err(FormatError::Checksum(format!(
                "the record header of page {addr:#x}"
            )));
        }
        let (at, flags, len, crc) = (u64_at(b, 0), u32_at(b, 8), u32_at(b, 12), u32_at(b, 16));
        if at != addr {
            return Err(FormatError::Corrupt(format!(
                "the record of page {addr:#x} is of page {at:#x}"
            )));
        }
        let len = len as usize;
        let ok = match flags {
            FLAG_ZERO => len == 0,
            FLAG_RAW => len == self.page_size,
            0 => len > 0 && len < self.page_size,
            _ => false,
        };
        if !ok {
            return Err(FormatError::Corrupt(format!(
                "the record of page {addr:#x} has flags {flags} and {len} payload bytes"
            )));
        }
        if b.len() < RECORD_HEADER_SIZE + len {
            return Err(FormatError::Truncated(format!(
                "the payload of page {addr:#x}"
            )));
        }
        Ok((flags, &b[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + len], crc))
    }

    /// Decodes the records of `pages` consecutive pages from `addr`, which must fill `b`
    /// exactly, into `out` (`pages` pages).
    pub fn decode_run(
        &mut self,
        b: &[u8],
        addr: u64,
        pages: u64,
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        let ps = self.page_size;
        let mut at = 0usize;
        for i in 0..pages as usize {
            let page_addr = addr + (i * ps) as u64;
            at += self.decode_record(&b[at..], page_addr, &mut out[i * ps..(i + 1) * ps])?;
        }
        if at != b.len() {
            return Err(FormatError::Corrupt(format!(
                "the records of the run at {addr:#x} take {at} bytes, not {}",
                b.len()
            )));
        }
        Ok(())
    }
}

/// What a whole, checked data object holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSummary {
    pub version: u64,
    pub nonce: u64,
    pub page_size: u32,
    /// Offset and page address of every record.
    pub records: Vec<(u64, u64)>,
}

/// Checks a whole data object: header, every record (decompressed and checksummed),
/// trailer and the object's checksum.
pub fn check_data_object(b: &[u8]) -> Result<DataSummary, FormatError> {
    if b.len() < 12 {
        return Err(if DATA_MAGIC.starts_with(&b[..b.len().min(8)]) {
            FormatError::Truncated(format!("{} bytes", b.len()))
        } else {
            FormatError::BadMagic("data object")
        });
    }
    if b[0..8] != DATA_MAGIC {
        return Err(FormatError::BadMagic("data object"));
    }
    check_format("data object", u32_at(b, 8))?;
    if b.len() < DATA_HEADER_SIZE + DATA_TRAILER_SIZE {
        return Err(FormatError::Truncated(format!("{} bytes", b.len())));
    }
    if checksum(&b[..36]) != u32_at(b, 36) {
        return Err(FormatError::Checksum("data object header".into()));
    }
    let t = b.len() - DATA_TRAILER_SIZE;
    if b[t..t + 8] != DATA_END_MAGIC {
        return Err(FormatError::Truncated("no trailer at its end".into()));
    }
    if checksum(&b[..t + 20]) != u32_at(b, t + 20) {
        return Err(FormatError::Checksum("data object".into()));
    }
    let page_size = u32_at(b, 12);
    let mut decoder = PageDecoder::new(page_size)
        .map_err(|_| FormatError::Corrupt(format!("page size {page_size}")))?;
    let mut page = vec![0u8; page_size as usize];
    let mut records = Vec::new();
    let mut at = DATA_HEADER_SIZE;
    while at < t {
        let addr = if t - at >= 8 { u64_at(b, at) } else { 0 };
        let n = decoder.decode_record(&b[at..t], addr, &mut page)?;
        records.push((at as u64, addr));
        at += n;
    }
    if records.len() as u64 != u64_at(b, t + 8) {
        return Err(FormatError::Corrupt(format!(
            "the trailer counts {} records, the object holds {}",
            u64_at(b, t + 8),
            records.len()
        )));
    }
    Ok(DataSummary {
        version: u64_at(b, 16),
        nonce: u64_at(b, 24),
        page_size,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u32 = 4096;

    fn page(seed: u8) -> Vec<u8> {
        (0..PS as usize)
            .map(|i| if i % 64 < 8 { seed ^ (i as u8) } else { 0 })
            .collect()
    }

    fn random_page(seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..PS as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn pages_encoded_apart_make_the_same_object_as_pages_pushed() {
        let pages = [page(1), vec![0u8; PS as usize], random_page(3)];
        let mut pushed = DataWriter::new(PS, 7, 0xabcd).unwrap();
        let mut apart = DataWriter::new(PS, 7, 0xabcd).unwrap();
        let mut enc = PageEncoder::new(PS).unwrap();
        let mut reused = EncodedPage::default();
        for (i, p) in pages.iter().enumerate() {
            let addr = 0x1000 * (i as u64 + 1);
            let a = pushed.push(addr, p).unwrap();
            enc.encode_into(p, &mut reused).unwrap();
            assert_eq!(apart.push_encoded(addr, &reused), a);
        }
        assert_eq!(pushed.finish(), apart.finish());
        assert_eq!(enc.encode(&page(1)).unwrap().flags, 0, "compressed");
        assert_eq!(enc.encode(&random_page(9)).unwrap().flags, FLAG_RAW);
        assert!(enc.encode(&[0u8; 10]).is_err(), "not a page");
    }

    fn object() -> (Vec<u8>, Vec<u64>) {
        let mut w = DataWriter::new(PS, 7, 0xabcd).unwrap();
        let lens = vec![
            w.push(0x1000, &page(1)).unwrap(),
            w.push(0x2000, &vec![0u8; PS as usize]).unwrap(),
            w.push(0x3000, &random_page(3)).unwrap(),
        ];
        (w.finish(), lens)
    }

    fn manifest() -> Manifest {
        let (obj, lens) = object();
        Manifest {
            version: 7,
            time_ms: 1_700_000_000_000,
            kind: Kind::Delta { prev: 5 },
            pid: 42,
            page_size: PS,
            regions: vec![(0x1000, 0x3000), (0x10000, 0x2000)],
            objects: vec![ObjectRef {
                version: 7,
                nonce: 0xabcd,
                size: obj.len() as u64,
            }],
            runs: vec![Run {
                addr: 0x1000,
                pages: 3,
                object: 0,
                offset: DATA_HEADER_SIZE as u64,
                bytes: lens.iter().sum(),
            }],
            crash_signal: 0,
        }
    }

    #[test]
    fn names() {
        assert_eq!(manifest_name(12), "manifests/00000000000000000012");
        assert_eq!(
            parse_manifest_name(&manifest_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_manifest_name("manifests/12"), None);
        assert_eq!(parse_manifest_name("manifests/0000000000000000001x"), None);
        let n = data_name(3, 0xdead_beef);
        assert_eq!(n, "data/00000000000000000003-00000000deadbeef");
        assert_eq!(parse_data_name(&n), Some((3, 0xdead_beef)));
        assert_eq!(
            parse_data_name("data/00000000000000000003-00000000DEADBEEF"),
            None
        );
        assert_eq!(parse_data_name(&format!("{n}.tmp")), None);
    }

    #[test]
    fn meta_round_trip_and_damage() {
        let m = StoreMeta {
            page_size: PS,
            created_ms: 123,
        };
        let b = m.encode();
        assert_eq!(StoreMeta::decode(&b), Ok(m));
        for i in 0..META_SIZE {
            for bit in 0..8 {
                let mut c = b;
                c[i] ^= 1 << bit;
                assert!(StoreMeta::decode(&c).is_err(), "byte {i} bit {bit}");
            }
        }
        for cut in 0..META_SIZE {
            assert!(StoreMeta::decode(&b[..cut]).is_err());
        }
        let mut newer = b;
        newer[8] = 2;
        let e = StoreMeta::decode(&newer).unwrap_err();
        assert!(e.to_string().contains("newer memshadow"), "{e}");
    }

    #[test]
    fn manifest_round_trip_and_layout() {
        let m = manifest();
        let b = m.encode().unwrap();
        assert_eq!(b.len(), 80 + 2 * 16 + 24 + 40 + 4);
        assert_eq!(&b[..8], b"MSHMANIF");
        assert_eq!(u32_at(&b, 12), KIND_DELTA);
        assert_eq!(u64_at(&b, 16), 7);
        assert_eq!(u64_at(&b, 32), 5);
        assert_eq!(u32_at(&b, 48), 2);
        assert_eq!(u64_at(&b, 64), 3);
        assert_eq!(u64_at(&b, 80), 0x1000);
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        let base = Manifest {
            kind: Kind::Base,
            ..m.clone()
        };
        assert_eq!(Manifest::decode(&base.encode().unwrap()).unwrap(), base);
        // The crash signal sits in what older stores wrote as a reserved 0.
        assert_eq!(u32_at(&b, 60), 0);
        let crashed = Manifest {
            crash_signal: 11,
            ..m.clone()
        };
        let c = crashed.encode().unwrap();
        assert_eq!(u32_at(&c, 60), 11);
        assert_eq!(Manifest::decode(&c).unwrap(), crashed);
    }

    #[test]
    fn every_flipped_bit_of_a_manifest_is_detected() {
        let b = manifest().encode().unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                assert!(Manifest::decode(&c).is_err(), "byte {i} bit {bit}");
            }
        }
        for cut in 0..b.len() {
            assert!(Manifest::decode(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut newer = b.clone();
        newer[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            Manifest::decode(&newer),
            Err(FormatError::UnsupportedVersion {
                what: "manifest",
                found: 7
            })
        );
    }

    #[test]
    fn the_writer_refuses_bad_manifests() {
        let mut m = manifest();
        m.runs[0].addr = 0x800;
        assert!(m.encode().is_err());
        let mut m = manifest();
        m.runs[0].pages = 4; // past the first region
        assert!(m.encode().is_err());
        let mut m = manifest();
        m.regions = vec![(0x1000, 0x3000), (0x2000, 0x1000)];
        assert!(m.encode().is_err());
        let mut m = manifest();
        m.kind = Kind::Delta { prev: 7 };
        assert!(m.encode().is_err());
        let mut m = manifest();
        m.runs[0].object = 1;
        assert!(m.encode().is_err());
        let mut m = manifest();
        m.runs[0].bytes = m.objects[0].size;
        assert!(m.encode().is_err());
        // A run may span two adjacent regions.
        let mut m = manifest();
        m.regions = vec![(0x1000, 0x1000), (0x2000, 0x2000)];
        m.encode().unwrap();
    }

    #[test]
    fn data_round_trip() {
        let (obj, lens) = object();
        // The zero page is a bare header; the random one is stored raw; the sparse one
        // compresses.
        assert_eq!(lens[1], RECORD_HEADER_SIZE as u64);
        assert_eq!(lens[2], (RECORD_HEADER_SIZE + PS as usize) as u64);
        assert!(lens[0] < 1000, "{lens:?}");
        let s = check_data_object(&obj).unwrap();
        assert_eq!((s.version, s.nonce, s.page_size), (7, 0xabcd, PS));
        assert_eq!(
            s.records.iter().map(|r| r.1).collect::<Vec<_>>(),
            [0x1000, 0x2000, 0x3000]
        );
        let mut d = PageDecoder::new(PS).unwrap();
        let mut out = vec![0u8; 3 * PS as usize];
        let total: u64 = lens.iter().sum();
        let run = &obj[DATA_HEADER_SIZE..DATA_HEADER_SIZE + total as usize];
        d.decode_run(run, 0x1000, 3, &mut out).unwrap();
        assert_eq!(&out[..4096], &page(1)[..]);
        assert!(out[4096..8192].iter().all(|&b| b == 0));
        assert_eq!(&out[8192..], &random_page(3)[..]);
        // Wrong address, short, or too long.
        assert!(d.decode_run(run, 0x2000, 3, &mut out).is_err());
        assert!(d
            .decode_run(&run[..run.len() - 1], 0x1000, 3, &mut out)
            .is_err());
        assert!(d
            .decode_run(
                &obj[DATA_HEADER_SIZE..obj.len() - DATA_TRAILER_SIZE + 1],
                0x1000,
                3,
                &mut out
            )
            .is_err());
    }

    #[test]
    fn every_flipped_bit_of_a_data_object_is_detected() {
        let (obj, lens) = object();
        let total: u64 = lens.iter().sum();
        let mut d = PageDecoder::new(PS).unwrap();
        let mut out = vec![0u8; 3 * PS as usize];
        for i in 0..obj.len() {
            for bit in [0, 3, 7] {
                let mut c = obj.clone();
                c[i] ^= 1 << bit;
                assert!(check_data_object(&c).is_err(), "byte {i} bit {bit}");
                // Reads through the run catch every flip in the records.
                if (DATA_HEADER_SIZE..DATA_HEADER_SIZE + total as usize).contains(&i) {
                    let run = &c[DATA_HEADER_SIZE..DATA_HEADER_SIZE + total as usize];
                    assert!(d.decode_run(run, 0x1000, 3, &mut out).is_err(), "byte {i}");
                }
            }
        }
        for cut in 0..obj.len() {
            assert!(check_data_object(&obj[..cut]).is_err(), "cut {cut}");
        }
        let mut newer = obj.clone();
        newer[8] = 2;
        assert!(matches!(
            check_data_object(&newer),
            Err(FormatError::UnsupportedVersion { found: 2, .. })
        ));
    }
}
