//! Reads, from `/proc/PID`, what a core file of a version needs that the shim does not
//! track (see `memshadow_format::store_context`): the auxiliary vector, the mappings,
//! the process's name and command line, and the small file-backed pages gdb needs
//! (every private writable file-backed mapping, the executable's `.dynamic`). Read at
//! the moment it is called: by the recorder right after each snapshot, by `memshadow
//! core PID` when it writes the core.

use std::fmt;
use std::io::IoSliceMut;
use std::time::{SystemTime, UNIX_EPOCH};

use memshadow_format::store_context::{
    Captured, CoreContext, Mapping, PERM_PRIVATE, PERM_R, PERM_W, PERM_X,
};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

/// A writable file-backed mapping larger than this is not captured (it is no `.data`
/// of a program or library; gdb reads such a file itself).
const MAX_CAPTURED_MAPPING: u64 = 1 << 20;
/// At most this many bytes are captured per version.
const MAX_CAPTURED_TOTAL: u64 = 16 << 20;

/// `AT_PHDR`, `AT_PHENT`, `AT_PHNUM` of the auxiliary vector.
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
/// Program header types.
const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;

/// Why the context could not be read.
#[derive(Debug)]
pub enum ContextError {
    /// A `/proc/PID` file could not be read.
    Proc {
        file: &'static str,
        error: std::io::Error,
    },
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextError::Proc { file, error } => {
                write!(f, "cannot read /proc/PID/{file}: {error}")
            }
        }
    }
}

fn proc_file(pid: u32, file: &'static str) -> Result<Vec<u8>, ContextError> {
    std::fs::read(format!("/proc/{pid}/{file}")).map_err(|error| ContextError::Proc { file, error })
}

/// Reads the context of process `pid` now, for `version`.
pub fn read(pid: u32, version: u64) -> Result<CoreContext, ContextError> {
    let auxv = parse_auxv(&proc_file(pid, "auxv")?);
    let mappings = parse_maps(&proc_file(pid, "maps")?);
    let mut comm = proc_file(pid, "comm")?;
    while comm.last() == Some(&b'\n') {
        comm.pop();
    }
    let cmdline = proc_file(pid, "cmdline")?;
    let read_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let captured = capture(pid, &auxv, &mappings);
    Ok(CoreContext {
        version,
        pid,
        read_ms,
        comm,
        cmdline,
        auxv,
        mappings,
        captured,
    })
}

/// The (type, value) pairs of `/proc/PID/auxv`, up to `AT_NULL`.
fn parse_auxv(b: &[u8]) -> Vec<(u64, u64)> {
    b.chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().expect("8")),
                u64::from_ne_bytes(c[8..].try_into().expect("8")),
            )
        })
        .take_while(|&(t, _)| t != 0)
        .collect()
}

/// The lines of `/proc/PID/maps`.
fn parse_maps(b: &[u8]) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in b.split(|&c| c == b'\n') {
        let mut fields = line.splitn(6, |&c| c == b' ');
        let (Some(range), Some(perms), Some(offset)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (_dev, _inode) = (fields.next(), fields.next());
        let path = fields
            .next()
            .map(|p| p.trim_ascii_start().to_vec())
            .unwrap_or_default();
        let hex = |s: &[u8]| {
            std::str::from_utf8(s)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        };
        let Some((start, end)) = range
            .iter()
            .position(|&c| c == b'-')
            .and_then(|i| Some((hex(&range[..i])?, hex(&range[i + 1..])?)))
        else {
            continue;
        };
        let Some(offset) = hex(offset) else { continue };
        let flag = |i: usize, c: u8, bit: u32| if perms.get(i) == Some(&c) { bit } else { 0 };
        let perms = flag(0, b'r', PERM_R)
            | flag(1, b'w', PERM_W)
            | flag(2, b'x', PERM_X)
            | flag(3, b'p', PERM_PRIVATE);
        if end > start {
            out.push(Mapping {
                start,
                end,
                offset,
                perms,
                path,
            });
        }
    }
    out
}

/// Whether a mapping is of a file (not anonymous, not `[heap]` and the like).
pub fn is_file(m: &Mapping) -> bool {
    !m.path.is_empty() && !m.path.starts_with(b"[")
}

/// Reads `len` bytes at `addr` of process `pid`; None if any of it cannot be read.
fn read_remote(pid: u32, addr: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    let remote = [RemoteIoVec {
        base: usize::try_from(addr).ok()?,
        len: buf.len(),
    }];
    let n = process_vm_readv(
        Pid::from_raw(i32::try_from(pid).ok()?),
        &mut [IoSliceMut::new(&mut buf)],
        &remote,
    )
    .ok()?;
    (n == buf.len()).then_some(buf)
}

/// The ranges gdb needs that the shim does not track, read now: every private writable
/// file-backed mapping (`.data` and the start of `.bss` of the executable and the
/// libraries, ld.so's `_r_debug` and `link_map`s) and the pages of the executable's
/// `.dynamic` (in its RELRO, read-only by now; ld.so wrote `DT_DEBUG` there).
fn capture(pid: u32, auxv: &[(u64, u64)], mappings: &[Mapping]) -> Vec<Captured> {
    let mut want: Vec<(u64, u64)> = mappings
        .iter()
        .filter(|m| {
            is_file(m)
                && m.perms & (PERM_W | PERM_PRIVATE | PERM_R) == PERM_W | PERM_PRIVATE | PERM_R
                && m.end - m.start <= MAX_CAPTURED_MAPPING
        })
        .map(|m| (m.start, m.end))
        .collect();
    if let Some(dynamic) = executable_dynamic(pid, auxv) {
        let page = crate::recorder::page_size() as u64;
        let (start, end) = (
            dynamic.0 & !(page - 1),
            (dynamic.1 + page - 1) & !(page - 1),
        );
        if !want.iter().any(|&(s, e)| s <= start && end <= e) {
            want.push((start, end));
        }
    }
    want.sort_unstable();
    let mut total = 0;
    let mut out: Vec<Captured> = Vec::new();
    for (start, end) in want {
        // Overlaps with one captured already (the .dynamic in a writable mapping).
        let start = out
            .last()
            .map_or(start, |c| start.max(c.addr + c.bytes.len() as u64));
        if start >= end || total + (end - start) > MAX_CAPTURED_TOTAL {
            continue;
        }
        if let Some(bytes) = read_remote(pid, start, end - start) {
            total += end - start;
            out.push(Captured { addr: start, bytes });
        }
    }
    out
}

/// The executable's `.dynamic` (start, end), from its program headers in memory.
fn executable_dynamic(pid: u32, auxv: &[(u64, u64)]) -> Option<(u64, u64)> {
    let get = |t: u64| auxv.iter().find(|a| a.0 == t).map(|a| a.1);
    let (phdr, phent, phnum) = (get(AT_PHDR)?, get(AT_PHENT)?, get(AT_PHNUM)?);
    if phent < 56 || phnum == 0 || phnum > 512 {
        return None;
    }
    let table = read_remote(pid, phdr, phent * phnum)?;
    let headers: Vec<(u32, u64, u64)> = table
        .chunks_exact(phent as usize)
        .map(|h| {
            let u64_at = |o: usize| u64::from_ne_bytes(h[o..o + 8].try_into().expect("8"));
            (
                u32::from_ne_bytes(h[..4].try_into().expect("4")),
                u64_at(16), // p_vaddr
                u64_at(40), // p_memsz
            )
        })
        .collect();
    // The load bias: where the program headers are against where they say they are.
    let bias = match headers.iter().find(|h| h.0 == PT_PHDR) {
        Some(h) => phdr.wrapping_sub(h.1),
        None => 0,
    };
    let d = headers.iter().find(|h| h.0 == PT_DYNAMIC)?;
    let start = bias.wrapping_add(d.1);
    Some((start, start.checked_add(d.2)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_and_auxv() {
        let maps = b"55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1234 /usr/bin/my prog\n\
55d0c0a02000-55d0c0a03000 rw-p 00002000 fd:01 1234 /usr/bin/my prog\n\
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]\n\
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n";
        let m = parse_maps(maps);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, b"/usr/bin/my prog");
        assert_eq!(m[1].perms, PERM_R | PERM_W | PERM_PRIVATE);
        assert_eq!(
            (m[1].start, m[1].end, m[1].offset),
            (0x55d0c0a02000, 0x55d0c0a03000, 0x2000)
        );
        assert!(is_file(&m[1]) && !is_file(&m[2]) && !is_file(&m[3]));
        let mut auxv = Vec::new();
        for v in [3u64, 0x40, 6, 4096, 0, 0, 9, 9] {
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&auxv), vec![(3, 0x40), (6, 4096)]);
    }
}
