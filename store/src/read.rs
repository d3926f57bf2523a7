//! Reading versions: where each page of a version lives along its chain, and the reads,
//! restores and diffs built on that.

use std::io::{BufWriter, Write};
use std::sync::Arc;

use memshadow_format::image::{ImageError, ImageHeader, ImageWriter};
use memshadow_format::store::{self as layout, FormatError, Manifest, PageDecoder};

use crate::backend::Backend;
use crate::{damaged, ranges, Store, StoreError};

/// Pages decoded at a time by restore and diff.
const CHUNK_PAGES: u64 = 256;

/// Pages `[addr, addr + pages * page size)` are page `skip` on of run `run` of
/// `chain[member]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub(crate) addr: u64,
    pub(crate) pages: u64,
    pub(crate) member: usize,
    pub(crate) run: usize,
    pub(crate) skip: u64,
}

/// Where each page of `[start, end)` lives: for each page the first manifest of the
/// chain whose runs hold it. Every page of the top version's regions must be found.
pub(crate) fn locate(
    chain: &[Arc<Manifest>],
    page_size: u64,
    start: u64,
    end: u64,
) -> Result<Vec<Piece>, StoreError> {
    let mut gaps = vec![(start, end)];
    let mut pieces = Vec::new();
    for (member, m) in chain.iter().enumerate() {
        let mut left = Vec::new();
        for &(gs, ge) in &gaps {
            let mut cursor = gs;
            let first = m
                .runs
                .partition_point(|r| r.addr + r.pages * page_size <= gs);
            for (i, r) in m.runs.iter().enumerate().skip(first) {
                if r.addr >= ge {
                    break;
                }
                let s = r.addr.max(gs);
                let e = (r.addr + r.pages * page_size).min(ge);
                if s > cursor {
                    left.push((cursor, s));
                }
                pieces.push(Piece {
                    addr: s,
                    pages: (e - s) / page_size,
                    member,
                    run: i,
                    skip: (s - r.addr) / page_size,
                });
                cursor = e;
            }
            if cursor < ge {
                left.push((cursor, ge));
            }
        }
        gaps = left;
        if gaps.is_empty() {
            break;
        }
    }
    if let Some(&(s, _)) = gaps.first() {
        return Err(damaged(
            layout::manifest_name(chain[0].version),
            FormatError::Corrupt(format!(
                "page {s:#x} of version {} is in no manifest of its chain",
                chain[0].version
            )),
        ));
    }
    pieces.sort_unstable_by_key(|p| p.addr);
    Ok(pieces)
}

/// Reads pages along a chain, keeping the last run it decoded.
pub(crate) struct ChainReader {
    decoder: PageDecoder,
    page_size: u64,
    /// Object name and run offset of `pages`.
    cached: Option<(String, u64)>,
    pages: Vec<u8>,
}

impl ChainReader {
    pub fn new(page_size: u32) -> Result<Self, StoreError> {
        Ok(ChainReader {
            decoder: PageDecoder::new(page_size).map_err(|e| StoreError::Invalid(e.to_string()))?,
            page_size: u64::from(page_size),
            cached: None,
            pages: Vec::new(),
        })
    }

    /// Fills `out` with the chain's top version's bytes from `addr` (whole pages, inside
    /// the version's regions).
    pub fn read(
        &mut self,
        backend: &dyn Backend,
        chain: &[Arc<Manifest>],
        addr: u64,
        out: &mut [u8],
    ) -> Result<(), StoreError> {
        let ps = self.page_size;
        let end = addr + out.len() as u64;
        for p in locate(chain, ps, addr, end)? {
            let m = &chain[p.member];
            let run = m.runs[p.run];
            let name = m.objects[run.object as usize].name();
            if self.cached.as_ref() != Some(&(name.clone(), run.offset)) {
                self.cached = None;
                let bytes = backend.get_range(&name, run.offset, run.bytes)?;
                self.pages.resize((run.pages * ps) as usize, 0);
                self.decoder
                    .decode_run(&bytes, run.addr, run.pages, &mut self.pages)
                    .map_err(|e| damaged(name.clone(), e))?;
                self.cached = Some((name, run.offset));
            }
            let from = (p.skip * ps) as usize;
            let to = ((p.addr - addr) as usize, (p.pages * ps) as usize);
            out[to.0..to.0 + to.1].copy_from_slice(&self.pages[from..from + to.1]);
        }
        Ok(())
    }
}

/// How two versions differ. Ranges are (start, len).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Addresses in the second version's regions only.
    pub added: Vec<(u64, u64)>,
    /// Addresses in the first version's regions only.
    pub removed: Vec<(u64, u64)>,
    /// Pages in both whose bytes differ, as coalesced ranges.
    pub changed: Vec<(u64, u64)>,
    /// Pages in both whose bytes differ.
    pub pages_differing: u64,
    /// Bytes in both that differ.
    pub bytes_changed: u64,
}

/// Whether every page of `[start, end)` comes from the same page record in both chains.
fn same_records(
    c1: &[Arc<Manifest>],
    c2: &[Arc<Manifest>],
    page_size: u64,
    start: u64,
    end: u64,
) -> Result<bool, StoreError> {
    let ids = |chain: &[Arc<Manifest>]| -> Result<Vec<(u64, usize, usize, u64)>, StoreError> {
        Ok(locate(chain, page_size, start, end)?
            .into_iter()
            .map(|p| {
                let m = &chain[p.member];
                (p.addr, Arc::as_ptr(m) as usize, p.run, p.skip)
            })
            .collect())
    };
    Ok(ids(c1)? == ids(c2)?)
}

fn as_regions(v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.into_iter().map(|(s, e)| (s, e - s)).collect()
}

impl Store {
    /// The bytes `[addr, addr + out.len())` of `version` into `out`; the range must lie in
    /// the version's regions. Every page used is checked: damage is an error, never
    /// wrong bytes.
    pub fn read_into(&mut self, version: u64, addr: u64, out: &mut [u8]) -> Result<(), StoreError> {
        let len = out.len() as u64;
        let ps = u64::from(self.page_size);
        let chain = self.chain(version)?;
        let regions = ranges::of_regions(&chain[0].regions);
        let Some(end) = addr.checked_add(len) else {
            return Err(StoreError::NotInVersion { version, addr, len });
        };
        if len == 0 || !ranges::covers(&regions, addr, end) {
            return Err(StoreError::NotInVersion { version, addr, len });
        }
        let first = addr - addr % ps;
        let last = end.div_ceil(ps) * ps;
        let mut reader = ChainReader::new(self.page_size)?;
        let mut buf = vec![0u8; ((last - first).min(CHUNK_PAGES * ps)) as usize];
        let mut at = first;
        while at < last {
            let n = (last - at).min(CHUNK_PAGES * ps);
            let chunk = &mut buf[..n as usize];
            reader.read(&*self.backend, &chain, at, chunk)?;
            // The part of this chunk inside [addr, end).
            let s = at.max(addr);
            let e = (at + n).min(end);
            out[(s - addr) as usize..(e - addr) as usize]
                .copy_from_slice(&chunk[(s - at) as usize..(e - at) as usize]);
            at += n;
        }
        Ok(())
    }

    /// The bytes `[addr, addr + len)` of `version` (see [`read_into`](Self::read_into)).
    pub fn read(&mut self, version: u64, addr: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let size = usize::try_from(len)
            .map_err(|_| StoreError::Invalid(format!("{len} bytes do not fit in memory")))?;
        let mut out = vec![0u8; size];
        self.read_into(version, addr, &mut out)?;
        Ok(out)
    }

    /// Writes every region of `version` to `out` in the image format
    /// (`memshadow_format::image`); returns the bytes of memory written.
    pub fn restore(&mut self, version: u64, out: impl Write) -> Result<u64, StoreError> {
        self.restore_with(version, out, &mut |_, _| {})
    }

    /// [`restore`](Self::restore), calling `progress(bytes done, bytes in all)` as it goes.
    pub fn restore_with(
        &mut self,
        version: u64,
        out: impl Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, StoreError> {
        let chain = self.chain(version)?;
        let top = chain[0].clone();
        let ps = u64::from(self.page_size);
        let total: u64 = top.regions.iter().map(|r| r.1).sum();
        let header = ImageHeader {
            page_size: self.page_size,
            pid: top.pid,
            version,
            time_ms: top.time_ms,
        };
        let image_err = |e: ImageError| match e {
            ImageError::Io(e) => StoreError::Output(e),
            e => StoreError::Invalid(e.to_string()),
        };
        let mut image =
            ImageWriter::new(BufWriter::with_capacity(1 << 20, out), &header).map_err(image_err)?;
        let mut reader = ChainReader::new(self.page_size)?;
        let mut buf = vec![0u8; (CHUNK_PAGES * ps) as usize];
        let mut done = 0;
        for &(start, len) in &top.regions {
            image.begin_region(start, len).map_err(image_err)?;
            let mut at = start;
            while at < start + len {
                let n = (start + len - at).min(CHUNK_PAGES * ps);
                let chunk = &mut buf[..n as usize];
                reader.read(&*self.backend, &chain, at, chunk)?;
                image.write_bytes(chunk).map_err(image_err)?;
                at += n;
                done += n;
                progress(done, total);
            }
        }
        let mut w = image.finish().map_err(image_err)?;
        w.flush().map_err(StoreError::Output)?;
        Ok(total)
    }

    /// How `v2` differs from `v1`.
    pub fn diff(&mut self, v1: u64, v2: u64) -> Result<Diff, StoreError> {
        let c1 = self.chain(v1)?;
        let c2 = self.chain(v2)?;
        let r1 = ranges::of_regions(&c1[0].regions);
        let r2 = ranges::of_regions(&c2[0].regions);
        let ps = u64::from(self.page_size);
        let mut diff = Diff {
            added: as_regions(ranges::subtract(&r2, &r1)),
            removed: as_regions(ranges::subtract(&r1, &r2)),
            ..Diff::default()
        };
        let mut a = ChainReader::new(self.page_size)?;
        let mut b = ChainReader::new(self.page_size)?;
        let mut buf_a = vec![0u8; (CHUNK_PAGES * ps) as usize];
        let mut buf_b = buf_a.clone();
        let mut changed = Vec::new();
        for (start, end) in ranges::intersect(&r1, &r2) {
            let mut at = start;
            while at < end {
                let n = (end - at).min(CHUNK_PAGES * ps);
                // Pages both versions take from the same record are equal: a chunk of
                // only those is not read at all.
                if same_records(&c1, &c2, ps, at, at + n)? {
                    at += n;
                    continue;
                }
                let (x, y) = (&mut buf_a[..n as usize], &mut buf_b[..n as usize]);
                a.read(&*self.backend, &c1, at, x)?;
                b.read(&*self.backend, &c2, at, y)?;
                for (i, (p, q)) in x
                    .chunks_exact(ps as usize)
                    .zip(y.chunks_exact(ps as usize))
                    .enumerate()
                {
                    if p != q {
                        let bytes = p.iter().zip(q).filter(|(u, v)| u != v).count();
                        diff.bytes_changed += bytes as u64;
                        diff.pages_differing += 1;
                        let page = at + i as u64 * ps;
                        changed.push((page, page + ps));
                    }
                }
                at += n;
            }
        }
        diff.changed = as_regions(ranges::normalize(changed));
        Ok(diff)
    }
}
