//! The per-version *context* object of a store: what `memshadow core` needs to make an
//! ELF core file of a version that the shim does not track, read from `/proc/PID` by the
//! recorder right after it took the snapshot (so at another moment than the version's
//! pages, a few milliseconds later).
//!
//! Named `context/<version, 20 decimal digits>` ([`context_name`]); written before the
//! version's manifest (like its data), so a version published without one is a store
//! written by an older memshadow or a process whose context could not be read. A
//! context without its manifest is an orphan (`verify` lists it, retention removes it).
//!
//! Layout, little-endian, fixed-width integers; a "bytes" field is a u32 length then
//! that many bytes:
//!
//! | field | size |
//! |---|---|
//! | magic `MSHCTXT\0` ([`CONTEXT_MAGIC`]) | 8 |
//! | store format version | 4 |
//! | reserved, 0 | 4 |
//! | version | 8 |
//! | pid | 4 |
//! | reserved, 0 | 4 |
//! | when it was read, ms since the Unix epoch | 8 |
//! | the process's name (`comm`) | bytes |
//! | its command line, NUL-separated (`/proc/PID/cmdline`) | bytes |
//! | A, then A auxiliary vector entries (type u64, value u64), `AT_NULL` excluded | 4 + 16 A |
//! | M, then M mappings: start u64, end u64, file offset u64, permissions u32 ([`PERM_R`] \| [`PERM_W`] \| [`PERM_X`] \| [`PERM_PRIVATE`]), path (bytes, empty for anonymous memory) | 4 + ... |
//! | P, then P captured ranges: address u64, bytes (a whole number of pages) | 4 + ... |
//! | CRC-32C of everything before | 4 |
//!
//! The captured ranges are the small file-backed pages the shim does not track and gdb
//! needs: every private writable file-backed mapping (the executable's and the
//! libraries' `.data` and the start of their `.bss`, ld.so's `_r_debug` and
//! `link_map`s) and the executable's `.dynamic` (in its RELRO, where ld.so wrote
//! `DT_DEBUG`).

use crate::store::{FormatError, STORE_FORMAT_VERSION};

/// First eight bytes of a context object.
pub const CONTEXT_MAGIC: [u8; 8] = *b"MSHCTXT\0";
/// Folder of the context objects.
pub const CONTEXT_DIR: &str = "context";
/// Mapping permission: readable.
pub const PERM_R: u32 = 4;
/// Mapping permission: writable.
pub const PERM_W: u32 = 2;
/// Mapping permission: executable.
pub const PERM_X: u32 = 1;
/// Mapping is private (copy-on-write), not shared.
pub const PERM_PRIVATE: u32 = 8;
/// Size of the fixed header.
const HEADER: usize = 40;

/// Name of the context object of `version`.
pub fn context_name(version: u64) -> String {
    format!("{CONTEXT_DIR}/{version:020}")
}

/// The version a context object's name stands for.
pub fn parse_context_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CONTEXT_DIR)?.strip_prefix('/')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub perms: u32,
    /// The file (or `[heap]`, `[stack]`...), empty for anonymous memory.
    pub path: Vec<u8>,
}

/// Bytes read from the process at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// What a core file needs beside the version's memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CoreContext {
    pub version: u64,
    pub pid: u32,
    /// When it was read from the process, ms since the Unix epoch.
    pub read_ms: u64,
    pub comm: Vec<u8>,
    pub cmdline: Vec<u8>,
    pub auxv: Vec<(u64, u64)>,
    pub mappings: Vec<Mapping>,
    pub captured: Vec<Captured>,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads fields in order, failing with what was cut short.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(FormatError::Truncated(format!("context object: {what}")));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, FormatError> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }
    /// A count of entries of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize, what: &str) -> Result<usize, FormatError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min) > self.b.len() - self.at {
            return Err(FormatError::Corrupt(format!(
                "context object: {n} {what} cannot fit"
            )));
        }
        Ok(n)
    }
}

impl CoreContext {
    /// The object's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self
                .captured
                .iter()
                .map(|c| c.bytes.len() + 12)
                .sum::<usize>(),
        );
        out.extend_from_slice(&CONTEXT_MAGIC);
        out.extend_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.read_ms.to_le_bytes());
        put_bytes(&mut out, &self.comm);
        put_bytes(&mut out, &self.cmdline);
        out.extend_from_slice(&(self.auxv.len() as u32).to_le_bytes());
        for &(t, v) in &self.auxv {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.mappings.len() as u32).to_le_bytes());
        for m in &self.mappings {
            for x in [m.start, m.end, m.offset] {
                out.extend_from_slice(&x.to_le_bytes());
            }
            out.extend_from_slice(&m.perms.to_le_bytes());
            put_bytes(&mut out, &m.path);
        }
        out.extend_from_slice(&(self.captured.len() as u32).to_le_bytes());
        for c in &self.captured {
            out.extend_from_slice(&c.addr.to_le_bytes());
            put_bytes(&mut out, &c.bytes);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Checks and reads a context object (`version` is the one its name says).
    pub fn decode(b: &[u8], version: u64) -> Result<CoreContext, FormatError> {
        if b.len() < HEADER + 4 {
            return Err(FormatError::Truncated("context object header".into()));
        }
        if b[..8] != CONTEXT_MAGIC {
            return Err(FormatError::BadMagic("context object"));
        }
        let found = u32::from_le_bytes(b[8..12].try_into().expect("4"));
        if found != STORE_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "context object",
                found,
            });
        }
        let (body, tail) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != tail {
            return Err(FormatError::Checksum("context object".into()));
        }
        let mut c = Cursor { b: body, at: 16 };
        let mut ctx = CoreContext {
            version: c.u64("version")?,
            ..CoreContext::default()
        };
        if ctx.version != version {
            return Err(FormatError::Corrupt(format!(
                "context object of version {version} says version {}",
                ctx.version
            )));
        }
        ctx.pid = c.u32("pid")?;
        c.u32("reserved")?;
        ctx.read_ms = c.u64("time")?;
        ctx.comm = c.bytes("comm")?;
        ctx.cmdline = c.bytes("cmdline")?;
        for _ in 0..c.count(16, "auxiliary vector entries")? {
            ctx.auxv.push((c.u64("auxv")?, c.u64("auxv")?));
        }
        for _ in 0..c.count(32, "mappings")? {
            let (start, end, offset) = (c.u64("mapping")?, c.u64("mapping")?, c.u64("mapping")?);
            let perms = c.u32("mapping")?;
            let path = c.bytes("mapping path")?;
            if end <= start {
                return Err(FormatError::Corrupt(format!(
                    "context object: mapping {start:#x}-{end:#x}"
                )));
            }
            ctx.mappings.push(Mapping {
                start,
                end,
                offset,
                perms,
                path,
            });
        }
        for _ in 0..c.count(12, "captured ranges")? {
            let addr = c.u64("captured range")?;
            let bytes = c.bytes("captured range")?;
            ctx.captured.push(Captured { addr, bytes });
        }
        if c.at != body.len() {
            return Err(FormatError::Corrupt(format!(
                "context object: {} bytes after its last field",
                body.len() - c.at
            )));
        }
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CoreContext {
        CoreContext {
            version: 7,
            pid: 42,
            read_ms: 1_700_000_000_000,
            comm: b"prog".to_vec(),
            cmdline: b"./prog\0a b\0".to_vec(),
            auxv: vec![(3, 0x5555_0040), (9, 0x5555_1000)],
            mappings: vec![Mapping {
                start: 0x5555_0000,
                end: 0x5555_1000,
                offset: 0,
                perms: PERM_R | PERM_PRIVATE,
                path: b"/bin/prog".to_vec(),
            }],
            captured: vec![Captured {
                addr: 0x5555_3000,
                bytes: vec![7; 4096],
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let ctx = sample();
        let b = ctx.encode();
        assert_eq!(CoreContext::decode(&b, 7).unwrap(), ctx);
        assert!(matches!(
            CoreContext::decode(&b, 8),
            Err(FormatError::Corrupt(_))
        ));
        for at in [0, 9, 20, 60, b.len() / 2, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            assert!(CoreContext::decode(&bad, 7).is_err(), "flip at {at}");
        }
        assert!(CoreContext::decode(&b[..b.len() - 5], 7).is_err());
        assert_eq!(parse_context_name(&context_name(7)), Some(7));
        assert_eq!(parse_context_name("context/7"), None);
    }
}
