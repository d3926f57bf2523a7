//! Memory images: every tracked region of a process as it was at one snapshot version,
//! with the address of each, in one file (`memshadow image`).
//!
//! An image is written and read as a stream: a header, then one record per region
//! followed by that region's bytes, then an end record. Neither side needs more than a
//! chunk of it in memory, and a file cut short anywhere (a full disk, a killed writer)
//! is told apart from a complete one by its missing or inconsistent end record.
//!
//! All integers are little-endian and fixed-width.
//!
//! Header, [`HEADER_SIZE`] bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `MSHIMAGE` ([`IMAGE_MAGIC`]) |
//! | 8 | 4 | format version ([`IMAGE_FORMAT_VERSION`]) |
//! | 12 | 4 | page size of the process, bytes (the granularity of the snapshot) |
//! | 16 | 4 | pid of the process |
//! | 20 | 4 | reserved, written 0 |
//! | 24 | 8 | snapshot version the bytes are from |
//! | 32 | 8 | time writing began, milliseconds since the Unix epoch |
//!
//! Then records, each [`RECORD_SIZE`] bytes:
//!
//! | offset | size | region record | end record |
//! |---|---|---|---|
//! | 0 | 4 | kind 1 ([`KIND_REGION`]) | kind 2 ([`KIND_END`]) |
//! | 4 | 4 | reserved, written 0 | reserved, written 0 |
//! | 8 | 8 | first address of the region | number of region records |
//! | 16 | 8 | length of the region, bytes (1 or more) | sum of the region lengths |
//!
//! A region record is followed by exactly its length in bytes: the region's contents at
//! the snapshot version. Regions come in increasing address order and do not overlap
//! (in the images memshadow writes they are also page-aligned). The end record is the
//! last thing in the file; its counts must match the regions before it. A file that
//! stops before its end record, or whose end record disagrees, is truncated or corrupt,
//! and [`ImageReader`] says so.
//!
//! An image holds the program's memory: create it readable by its owner only (0600).

use std::io::{self, Read, Write};

/// First eight bytes of every image.
pub const IMAGE_MAGIC: [u8; 8] = *b"MSHIMAGE";
/// Bumped whenever the layout changes.
pub const IMAGE_FORMAT_VERSION: u32 = 1;
/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 40;
/// Size of a region or end record in bytes (a region's contents follow its record).
pub const RECORD_SIZE: usize = 24;
/// Kind of a region record.
pub const KIND_REGION: u32 = 1;
/// Kind of the end record.
pub const KIND_END: u32 = 2;

/// What the header says about the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Page size of the process, bytes.
    pub page_size: u32,
    /// The process the memory belongs to.
    pub pid: u32,
    /// The snapshot version the bytes are from.
    pub version: u64,
    /// When writing began, milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl ImageHeader {
    /// The header's [`HEADER_SIZE`] bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&IMAGE_MAGIC);
        b[8..12].copy_from_slice(&IMAGE_FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.pid.to_le_bytes());
        b[24..32].copy_from_slice(&self.version.to_le_bytes());
        b[32..40].copy_from_slice(&self.time_ms.to_le_bytes());
        b
    }

    /// Decodes a header (magic and format version checked).
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self, ImageError> {
        if b[0..8] != IMAGE_MAGIC {
            return Err(ImageError::NotAnImage);
        }
        let format = u32_at(b, 8);
        if format != IMAGE_FORMAT_VERSION {
            return Err(ImageError::UnsupportedVersion(format));
        }
        Ok(ImageHeader {
            page_size: u32_at(b, 12),
            pid: u32_at(b, 16),
            version: u64_at(b, 24),
            time_ms: u64_at(b, 32),
        })
    }
}

/// One region of an image: where its bytes were in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionHeader {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RegionHeader {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn record(kind: u32, a: u64, b: u64) -> [u8; RECORD_SIZE] {
    let mut r = [0u8; RECORD_SIZE];
    r[0..4].copy_from_slice(&kind.to_le_bytes());
    r[8..16].copy_from_slice(&a.to_le_bytes());
    r[16..24].copy_from_slice(&b.to_le_bytes());
    r
}

/// Why an image could not be written or read.
#[derive(Debug)]
pub enum ImageError {
    /// Reading or writing the underlying stream failed.
    Io(io::Error),
    /// The file does not start with [`IMAGE_MAGIC`].
    NotAnImage,
    /// The header names a format version this build does not read.
    UnsupportedVersion(u32),
    /// The file ends before its end record (what was cut short is said).
    Truncated(String),
    /// The file breaks a rule of the format (which is said).
    Corrupt(String),
    /// The writer was asked for something the format cannot hold.
    InvalidRegion(String),
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::Io(e) => write!(f, "{e}"),
            ImageError::NotAnImage => {
                write!(f, "not a memshadow image (it does not start with MSHIMAGE)")
            }
            ImageError::UnsupportedVersion(v) => write!(
                f,
                "image format version {v} is not supported (this build reads version {IMAGE_FORMAT_VERSION})"
            ),
            ImageError::Truncated(what) => write!(f, "truncated image: {what}"),
            ImageError::Corrupt(what) => write!(f, "corrupt image: {what}"),
            ImageError::InvalidRegion(what) => write!(f, "cannot write the image: {what}"),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ImageError {
    fn from(e: io::Error) -> Self {
        ImageError::Io(e)
    }
}

/// Writes an image to `W` as it goes: the header at once, each region's record when it
/// begins, its bytes as they are given, the end record at [`finish`](Self::finish).
///
/// `W` gets many small writes (records) between large ones: give it a buffered writer.
pub struct ImageWriter<W: Write> {
    out: W,
    regions: u64,
    total: u64,
    /// End of the last region begun (the next must start at or after it).
    next_start: u64,
    /// Bytes the current region still needs.
    left: u64,
    /// Where the current region's next byte goes (for messages).
    at: u64,
}

impl<W: Write> ImageWriter<W> {
    /// Writes the header.
    pub fn new(mut out: W, header: &ImageHeader) -> Result<Self, ImageError> {
        out.write_all(&header.encode())?;
        Ok(ImageWriter {
            out,
            regions: 0,
            total: 0,
            next_start: 0,
            left: 0,
            at: 0,
        })
    }

    /// Begins a region of `len` bytes at `start`; exactly `len` bytes must follow
    /// through [`write_bytes`](Self::write_bytes) before the next region or the end.
    pub fn begin_region(&mut self, start: u64, len: u64) -> Result<(), ImageError> {
        self.check_region_done()?;
        let Some(end) = start.checked_add(len) else {
            return Err(ImageError::InvalidRegion(format!(
                "region {start:#x} + {len} bytes is past the end of the address space"
            )));
        };
        if len == 0 {
            return Err(ImageError::InvalidRegion(format!(
                "region at {start:#x} is empty"
            )));
        }
        if self.regions > 0 && start < self.next_start {
            return Err(ImageError::InvalidRegion(format!(
                "region {start:#x}-{end:#x} starts before the end of the previous one ({:#x}): regions must be in address order and not overlap",
                self.next_start
            )));
        }
        self.out.write_all(&record(KIND_REGION, start, len))?;
        self.regions += 1;
        self.total += len;
        self.next_start = end;
        self.left = len;
        self.at = start;
        Ok(())
    }

    /// Writes the next bytes of the current region (no more than it still needs).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        if bytes.len() as u64 > self.left {
            return Err(ImageError::InvalidRegion(format!(
                "{} bytes given at {:#x}, but the region needs only {} more",
                bytes.len(),
                self.at,
                self.left
            )));
        }
        self.out.write_all(bytes)?;
        self.left -= bytes.len() as u64;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// Bytes the current region still needs.
    pub fn region_bytes_left(&self) -> u64 {
        self.left
    }

    /// Regions begun so far.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Sum of the lengths of the regions begun so far.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Writes the end record, flushes, and gives the stream back.
    pub fn finish(mut self) -> Result<W, ImageError> {
        self.check_region_done()?;
        self.out
            .write_all(&record(KIND_END, self.regions, self.total))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn check_region_done(&self) -> Result<(), ImageError> {
        if self.left > 0 {
            return Err(ImageError::InvalidRegion(format!(
                "the region being written still needs {} bytes at {:#x}",
                self.left, self.at
            )));
        }
        Ok(())
    }
}

/// Reads an image from `R` as a stream: [`next_region`](Self::next_region) gives each
/// region's address and length, then the region's bytes are read with
/// [`read_bytes`](Self::read_bytes) (or `Read`, or skipped by asking for the next
/// region). After the last region, `next_region` checks the end record and that nothing
/// follows it, and returns `None`: only then is the image known to be complete.
pub struct ImageReader<R: Read> {
    input: R,
    header: ImageHeader,
    current: Option<RegionHeader>,
    /// Bytes of the current region not read yet.
    left: u64,
    regions: u64,
    total: u64,
    next_start: u64,
    done: bool,
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
fn fill<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<R: Read> ImageReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, ImageError> {
        let mut b = [0u8; HEADER_SIZE];
        let got = fill(&mut input, &mut b)?;
        if got < HEADER_SIZE {
            let n = got.min(IMAGE_MAGIC.len());
            if b[..n] != IMAGE_MAGIC[..n] {
                return Err(ImageError::NotAnImage);
            }
            return Err(ImageError::Truncated(format!(
                "{got} bytes, less than the {HEADER_SIZE}-byte header"
            )));
        }
        let header = ImageHeader::decode(&b)?;
        Ok(ImageReader {
            input,
            header,
            current: None,
            left: 0,
            regions: 0,
            total: 0,
            next_start: 0,
            done: false,
        })
    }

    pub fn header(&self) -> &ImageHeader {
        &self.header
    }

    /// The region being read, if any.
    pub fn current(&self) -> Option<RegionHeader> {
        self.current
    }

    /// Skips what is left of the current region and reads the next record: the next
    /// region, or `None` once the end record has been checked (and nothing follows it).
    pub fn next_region(&mut self) -> Result<Option<RegionHeader>, ImageError> {
        if self.done {
            return Ok(None);
        }
        if self.left > 0 {
            let skipped = io::copy(&mut (&mut self.input).take(self.left), &mut io::sink())?;
            if skipped < self.left {
                return Err(self.cut_in_region(skipped));
            }
            self.left = 0;
        }
        self.current = None;
        let mut r = [0u8; RECORD_SIZE];
        let got = fill(&mut self.input, &mut r)?;
        if got < RECORD_SIZE {
            return Err(ImageError::Truncated(format!(
                "it ends after {} region(s) ({} bytes) without its end record",
                self.regions, self.total
            )));
        }
        let (kind, a, b) = (u32_at(&r, 0), u64_at(&r, 8), u64_at(&r, 16));
        match kind {
            KIND_REGION => {
                let region = RegionHeader { start: a, len: b };
                if b == 0 || a.checked_add(b).is_none() {
                    return Err(ImageError::Corrupt(format!(
                        "region {} has an impossible extent ({a:#x} + {b} bytes)",
                        self.regions + 1
                    )));
                }
                if self.regions > 0 && a < self.next_start {
                    return Err(ImageError::Corrupt(format!(
                        "region {} at {a:#x} starts before the end of the previous one ({:#x})",
                        self.regions + 1,
                        self.next_start
                    )));
                }
                self.regions += 1;
                self.total += b;
                self.next_start = region.end();
                self.left = b;
                self.current = Some(region);
                Ok(Some(region))
            }
            KIND_END => {
                if (a, b) != (self.regions, self.total) {
                    return Err(ImageError::Corrupt(format!(
                        "the end record counts {a} region(s) and {b} bytes, the file holds {} and {}",
                        self.regions, self.total
                    )));
                }
                let mut extra = [0u8; 1];
                if fill(&mut self.input, &mut extra)? > 0 {
                    return Err(ImageError::Corrupt(
                        "bytes follow the end record".to_string(),
                    ));
                }
                self.done = true;
                Ok(None)
            }
            k => Err(ImageError::Corrupt(format!(
                "record {} has unknown kind {k}",
                self.regions + 1
            ))),
        }
    }

    /// Reads the next bytes of the current region into `buf`; 0 at its end (or with no
    /// current region). A file that ends inside the region is [`ImageError::Truncated`].
    pub fn read_bytes(&mut self, buf: &mut [u8]) -> Result<usize, ImageError> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = loop {
            match self.input.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n == 0 {
            return Err(self.cut_in_region(0));
        }
        self.left -= n as u64;
        Ok(n)
    }

    fn cut_in_region(&self, read_more: u64) -> ImageError {
        let region = self.current.expect("bytes left means a current region");
        let had = region.len - self.left + read_more;
        ImageError::Truncated(format!(
            "region {} ({:#x}, {} bytes) ends after {had} bytes",
            self.regions, region.start, region.len
        ))
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> R {
        self.input
    }
}

/// The current region's bytes (see [`ImageReader::read_bytes`]); a truncated file is an
/// error of kind `UnexpectedEof` wrapping the [`ImageError`].
impl<R: Read> Read for ImageReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_bytes(buf).map_err(|e| match e {
            ImageError::Io(e) => e,
            e @ ImageError::Truncated(_) => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: ImageHeader = ImageHeader {
        page_size: 4096,
        pid: 4242,
        version: 7,
        time_ms: 1_700_000_000_123,
    };

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37_79b9)) as u8)
            .collect()
    }

    /// An image of `regions`, each region's bytes given in chunks of `chunk`.
    fn image(regions: &[(u64, Vec<u8>)], chunk: usize) -> Vec<u8> {
        let mut w = ImageWriter::new(Vec::new(), &HEADER).unwrap();
        for (start, bytes) in regions {
            w.begin_region(*start, bytes.len() as u64).unwrap();
            for c in bytes.chunks(chunk) {
                w.write_bytes(c).unwrap();
            }
            assert_eq!(w.region_bytes_left(), 0);
        }
        w.finish().unwrap()
    }

    fn sample() -> Regions {
        vec![
            (0x1000, pattern(1, 4096)),
            (0x2000, pattern(2, 3 * 4096)),
            (0x7f00_0000_0000, pattern(3, 5000)),
        ]
    }

    /// Each region's address and bytes.
    type Regions = Vec<(u64, Vec<u8>)>;

    /// Everything in an image, or the first error.
    fn read_all(bytes: &[u8]) -> Result<(ImageHeader, Regions), ImageError> {
        let mut r = ImageReader::new(bytes)?;
        let header = *r.header();
        let mut regions = Vec::new();
        while let Some(region) = r.next_region()? {
            let mut data = Vec::new();
            let mut buf = [0u8; 1000];
            loop {
                let n = r.read_bytes(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            assert_eq!(data.len() as u64, region.len);
            regions.push((region.start, data));
        }
        Ok((header, regions))
    }

    #[test]
    fn round_trip() {
        let regions = sample();
        for chunk in [1, 777, 4096, 1 << 20] {
            let bytes = image(&regions, chunk);
            let total: usize = regions.iter().map(|r| r.1.len()).sum();
            assert_eq!(
                bytes.len(),
                HEADER_SIZE + 4 * RECORD_SIZE + total,
                "no padding anywhere"
            );
            assert_eq!(&bytes[..8], b"MSHIMAGE");
            let (header, got) = read_all(&bytes).unwrap();
            assert_eq!(header, HEADER);
            assert_eq!(got, regions);
        }
        // The fields sit where the module documentation says.
        let bytes = image(&regions, 4096);
        assert_eq!(u32_at(&bytes, 8), IMAGE_FORMAT_VERSION);
        assert_eq!(u32_at(&bytes, 12), 4096);
        assert_eq!(u32_at(&bytes, 16), 4242);
        assert_eq!(u64_at(&bytes, 24), 7);
        assert_eq!(u64_at(&bytes, 32), 1_700_000_000_123);
        assert_eq!(u32_at(&bytes, HEADER_SIZE), KIND_REGION);
        assert_eq!(u64_at(&bytes, HEADER_SIZE + 8), 0x1000);
        assert_eq!(u64_at(&bytes, HEADER_SIZE + 16), 4096);
        let end = bytes.len() - RECORD_SIZE;
        assert_eq!(u32_at(&bytes, end), KIND_END);
        assert_eq!(u64_at(&bytes, end + 8), 3);
        assert_eq!(u64_at(&bytes, end + 16), (4 * 4096 + 5000) as u64);

        // No regions at all is a complete image too.
        let (_, none) = read_all(&image(&[], 1)).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn unread_bytes_are_skipped_and_read_works() {
        let bytes = image(&sample(), 4096);
        let mut r = ImageReader::new(&bytes[..]).unwrap();
        let first = r.next_region().unwrap().unwrap();
        assert_eq!(
            first,
            RegionHeader {
                start: 0x1000,
                len: 4096
            }
        );
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        assert_eq!(&two, &sample()[0].1[..2]);
        // The rest of the first region and all of the second are skipped.
        assert_eq!(r.next_region().unwrap().unwrap().start, 0x2000);
        let third = r.next_region().unwrap().unwrap();
        assert_eq!(third.end(), 0x7f00_0000_0000 + 5000);
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        assert_eq!(data, sample()[2].1);
        assert!(r.next_region().unwrap().is_none());
        assert!(r.next_region().unwrap().is_none());
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = image(&sample(), 4096);
        for cut in 0..bytes.len() {
            match read_all(&bytes[..cut]) {
                Err(ImageError::Truncated(m)) => assert!(!m.is_empty()),
                other => panic!("cut at {cut} of {}: {other:?}", bytes.len()),
            }
        }
        // Skipping over a cut region notices it too, and Read reports UnexpectedEof.
        let cut = &bytes[..HEADER_SIZE + RECORD_SIZE + 100];
        let mut r = ImageReader::new(cut).unwrap();
        r.next_region().unwrap();
        assert!(matches!(r.next_region(), Err(ImageError::Truncated(_))));
        let mut r = ImageReader::new(cut).unwrap();
        r.next_region().unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("ends after 100 bytes"), "{e}");
    }

    #[test]
    fn bad_magic_and_version_are_rejected() {
        let mut bytes = image(&sample(), 4096);
        for junk in [&b"ELF"[..], b"hello world", &[0u8; 100]] {
            assert!(matches!(read_all(junk), Err(ImageError::NotAnImage)));
        }
        bytes[0] = b'X';
        assert!(matches!(read_all(&bytes), Err(ImageError::NotAnImage)));
        bytes[0] = b'M';
        bytes[8] = 9;
        match read_all(&bytes) {
            Err(e @ ImageError::UnsupportedVersion(9)) => {
                assert!(e.to_string().contains("version 9"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read_all(b""), Err(ImageError::Truncated(_))));
        assert!(matches!(read_all(b"MSHIM"), Err(ImageError::Truncated(_))));
    }

    #[test]
    fn corrupt_records_are_rejected() {
        let good = image(&sample(), 4096);
        let end = good.len() - RECORD_SIZE;
        let corrupt = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            edit(&mut b);
            match read_all(&b) {
                Err(ImageError::Corrupt(m)) => m,
                other => panic!("{other:?}"),
            }
        };
        // Wrong counts in the end record.
        let m = corrupt(&|b| b[end + 8] = 2);
        assert!(m.contains("counts 2 region(s)"), "{m}");
        corrupt(&|b| b[end + 16] ^= 1);
        // Trailing bytes, an unknown kind, a region before the previous one, empty.
        let m = corrupt(&|b| b.push(0));
        assert!(m.contains("follow the end record"), "{m}");
        corrupt(&|b| b[HEADER_SIZE] = 9);
        let second = HEADER_SIZE + RECORD_SIZE + 4096;
        corrupt(&|b| b[second + 8..second + 16].copy_from_slice(&0x1800u64.to_le_bytes()));
        corrupt(&|b| b[HEADER_SIZE + 16..HEADER_SIZE + 24].fill(0));
    }

    #[test]
    fn the_writer_refuses_what_the_format_cannot_hold() {
        let mut w = ImageWriter::new(Vec::new(), &HEADER).unwrap();
        assert!(matches!(
            w.begin_region(0x1000, 0),
            Err(ImageError::InvalidRegion(_))
        ));
        assert!(matches!(
            w.begin_region(u64::MAX - 10, 100),
            Err(ImageError::InvalidRegion(_))
        ));
        w.begin_region(0x2000, 8).unwrap();
        assert!(matches!(
            w.write_bytes(&[0; 9]),
            Err(ImageError::InvalidRegion(_))
        ));
        w.write_bytes(&[1; 4]).unwrap();
        // The region is not complete: neither a new region nor the end may follow.
        assert!(matches!(
            w.begin_region(0x3000, 8),
            Err(ImageError::InvalidRegion(_))
        ));
        w.write_bytes(&[2; 4]).unwrap();
        // Overlapping or out of order.
        assert!(matches!(
            w.begin_region(0x2004, 8),
            Err(ImageError::InvalidRegion(_))
        ));
        assert!(matches!(
            w.begin_region(0x1000, 8),
            Err(ImageError::InvalidRegion(_))
        ));
        w.begin_region(0x2008, 4).unwrap(); // adjacent is fine
        assert_eq!((w.regions(), w.total_bytes()), (2, 12));
        assert!(matches!(
            ImageWriter::finish(w),
            Err(ImageError::InvalidRegion(_))
        ));
    }
}
