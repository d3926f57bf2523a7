//! Parsing `/proc/self/maps` into the regions the shim tracks.
//!
//! A line is a candidate when it is writable and private (`rw?p`) and anonymous (inode
//! 0: no path, `[heap]`, `[stack]` or `[anon:...]`). Its kind: `[heap]` is the brk heap,
//! `[stack]` the main thread's stack, an anonymous mapping that starts where a
//! file-backed one ends is that object's .bss, anything else is anonymous memory
//! (malloc arenas, large allocations, the program's own mmaps).

use crate::base::range::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Heap,
    Bss,
    Anon,
    Stack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub range: Range,
    pub kind: Kind,
}

/// One parsed line of the maps file.
#[derive(Debug, PartialEq, Eq)]
pub struct MapsLine<'a> {
    pub range: Range,
    pub readable: bool,
    pub writable: bool,
    pub private: bool,
    pub inode: u64,
    pub path: &'a str,
}

fn hex(s: &str) -> Option<usize> {
    usize::from_str_radix(s, 16).ok()
}

/// Parses one line; `None` for a line that does not have the expected shape.
pub fn parse_line(line: &str) -> Option<MapsLine<'_>> {
    let mut it = line.splitn(6, ' ');
    let (a, b) = it.next()?.split_once('-')?;
    let perms = it.next()?.as_bytes();
    let _offset = it.next()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start();
    if perms.len() < 4 {
        return None;
    }
    Some(MapsLine {
        range: Range::new(hex(a)?, hex(b)?),
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        private: perms[3] == b'p',
        inode,
        path,
    })
}

/// Parses one line of bytes: a path need not be UTF-8, the fields before it are (the
/// path is then cut where it stops being UTF-8).
fn parse_bytes(line: &[u8]) -> Option<MapsLine<'_>> {
    let text = match core::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => core::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or(""),
    };
    parse_line(text)
}

/// The mappings of /proc/self/smaps text marked `MADV_DONTFORK` (`dc`) or
/// `MADV_WIPEONFORK` (`wf`) in their `VmFlags`, into `out`: a child made with clone or
/// fork does not have them as they are (absent, or zero), so a holder does not hold them.
pub fn not_inherited(smaps: &[u8], out: &mut Vec<Range>) {
    let mut current = None;
    for line in smaps.split(|&b| b == b'\n') {
        if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            let has = |f: &[u8]| flags.split(|&b| b == b' ').any(|w| w == f);
            if let Some(r) = current.filter(|_| has(b"dc") || has(b"wf")) {
                out.push(r);
            }
            continue;
        }
        if let Some(m) = parse_bytes(line) {
            current = Some(m.range);
        }
    }
}

/// The mappings of a maps listing (`/proc/PID/maps` text), in address order, into
/// `out`; lines of another shape are left out.
pub fn mappings(text: &[u8], out: &mut Vec<Range>) {
    for line in text.split(|&b| b == b'\n') {
        if let Some(m) = parse_bytes(line) {
            out.push(m.range);
        }
    }
}

/// Calls `out` with each part of `tracked` (sorted, free of overlaps) that none of
/// `mappings` (sorted, as a maps listing gives them) covers: in a child's listing, the
/// memory it did not get (`MADV_DONTFORK`, or unmapped before it was made).
pub fn not_mapped(mappings: &[Range], tracked: &[Range], out: &mut dyn FnMut(Range)) {
    for &r in tracked {
        let mut covered = r.start;
        let first = mappings.partition_point(|m| m.end <= r.start);
        for m in mappings[first..].iter().take_while(|m| m.start < r.end) {
            if m.start > covered {
                out(Range::new(covered, m.start));
            }
            covered = covered.max(m.end);
        }
        if covered < r.end {
            out(Range::new(covered, r.end));
        }
    }
}

/// The stacks of `kept` (stacks glibc kept from exited threads, sorted, each the part
/// above its guard page) that `text` still shows as glibc leaves them: an inaccessible
/// private anonymous mapping ending where the stack starts (the guard), and writable
/// private anonymous memory over the whole stack. glibc unmaps a kept stack it no
/// longer wants with its own munmap, which no interposer sees; memory mapped there
/// after it is taken for a stack only if it has that very shape. They are handed to
/// `out` in `kept`'s order.
pub fn kept_stacks_present(text: &str, kept: &[Range], out: &mut dyn FnMut(Range)) {
    if kept.is_empty() {
        return;
    }
    // The private anonymous lines: (range, inaccessible, writable), in address order.
    let mut anon: Vec<(Range, bool, bool)> = Vec::new();
    for l in text.lines().filter_map(parse_line) {
        if l.inode == 0 && l.private && !l.path.starts_with('/') {
            anon.push((l.range, !l.readable && !l.writable, l.writable));
        }
    }
    for &k in kept {
        let i = anon.partition_point(|(r, _, _)| r.end < k.start);
        let guarded = anon
            .get(i)
            .is_some_and(|&(r, none, _)| none && r.end == k.start);
        let mut covered = k.start;
        for &(r, _, writable) in anon[i..].iter().take_while(|(r, _, _)| r.start < k.end) {
            if r.start <= covered && writable && r.end > covered {
                covered = r.end;
            }
        }
        if guarded && covered >= k.end {
            out(k);
        }
    }
}

/// Turns maps text into candidate regions, in address order. `stacks` are thread stacks
/// known to the shim: the parts of a candidate inside one become [`Kind::Stack`]. `own`
/// ranges (the shim's memory) are cut out. Lines that do not parse are skipped.
pub fn candidates(text: &str, own: &[Range], stacks: &[Range], out: &mut dyn FnMut(Region)) {
    let mut prev_file_end = 0usize;
    for line in text.lines() {
        let Some(l) = parse_line(line) else { continue };
        let anon = l.inode == 0
            && (l.path.is_empty()
                || l.path == "[heap]"
                || l.path == "[stack]"
                || l.path.starts_with("[anon:"));
        let follows_file = prev_file_end == l.range.start;
        prev_file_end = if l.inode != 0 { l.range.end } else { 0 };
        if !(anon && l.writable && l.private) {
            continue;
        }
        let kind = match l.path {
            "[heap]" => Kind::Heap,
            "[stack]" => Kind::Stack,
            _ if follows_file => Kind::Bss,
            _ => Kind::Anon,
        };
        crate::base::range::subtract(l.range, own, &mut |piece| {
            split_stacks(piece, kind, stacks, out);
        });
    }
}

/// Emits `r` as `kind`, except the parts covered by `stacks`, which are emitted as stacks.
fn split_stacks(r: Range, kind: Kind, stacks: &[Range], out: &mut dyn FnMut(Region)) {
    if kind == Kind::Stack {
        out(Region { range: r, kind });
        return;
    }
    // Walk the stacks that cut `r` in address order.
    let mut cursor = r.start;
    loop {
        let next = stacks
            .iter()
            .filter(|s| s.end > cursor && s.start < r.end)
            .min_by_key(|s| s.start);
        match next {
            None => {
                if cursor < r.end {
                    out(Region {
                        range: Range::new(cursor, r.end),
                        kind,
                    });
                }
                return;
            }
            Some(s) => {
                if s.start > cursor {
                    out(Region {
                        range: Range::new(cursor, s.start),
                        kind,
                    });
                }
                let end = s.end.min(r.end);
                out(Region {
                    range: Range::new(cursor.max(s.start), end),
                    kind: Kind::Stack,
                });
                cursor = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234 /usr/bin/prog
55d0c0a02000-55d0c0a03000 rw-p 00002000 fd:01 1234 /usr/bin/prog
55d0c0a03000-55d0c0a05000 rw-p 00000000 00:00 0 
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f0000021000-7f0004000000 ---p 00000000 00:00 0 
7f1000000000-7f1000100000 rw-s 00000000 00:01 99 /dev/shm/x
7f2000000000-7f2000200000 rw-p 00000000 00:00 0 
7f3000000000-7f3000001000 r--p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00102000 r--p 00000000 00:00 0                          [vvar]
garbage line
";

    fn collect(own: &[Range], stacks: &[Range]) -> Vec<(usize, usize, Kind)> {
        let mut v = Vec::new();
        candidates(MAPS, own, stacks, &mut |r| {
            v.push((r.range.start, r.range.end, r.kind))
        });
        v
    }

    #[test]
    fn a_kept_stack_counts_while_it_has_its_guard_below_and_is_mapped_whole() {
        let text = "\
7f0000000000-7f0000001000 ---p 00000000 00:00 0
7f0000001000-7f0000801000 rw-p 00000000 00:00 0
7f1000000000-7f1000801000 rw-p 00000000 00:00 0
7f2000000000-7f2000001000 ---p 00000000 00:00 0
7f2000001000-7f2000400000 rw-p 00000000 00:00 0
";
        let kept = [
            // As glibc keeps it.
            Range::new(0x7f0000001000, 0x7f0000801000),
            // Unmapped, and a 8 MiB malloc block mapped over it: no guard below.
            Range::new(0x7f1000001000, 0x7f1000801000),
            // Only partly mapped now.
            Range::new(0x7f2000001000, 0x7f2000801000),
            // Gone.
            Range::new(0x7f3000001000, 0x7f3000801000),
        ];
        let mut present = Vec::new();
        kept_stacks_present(text, &kept, &mut |k| present.push(k));
        assert_eq!(present, vec![kept[0]]);
    }

    #[test]
    fn classifies_heap_bss_anon_stack() {
        let v = collect(&[], &[]);
        assert_eq!(
            v,
            vec![
                (0x55d0c0a03000, 0x55d0c0a05000, Kind::Bss),
                (0x55d0c1000000, 0x55d0c1100000, Kind::Heap),
                (0x7f0000000000, 0x7f0000021000, Kind::Anon),
                (0x7f2000000000, 0x7f2000200000, Kind::Anon),
                (0x7ffd00000000, 0x7ffd00021000, Kind::Stack),
            ]
        );
    }

    #[test]
    fn own_ranges_are_cut_and_thread_stacks_split() {
        let own = [Range::new(0x7f2000000000, 0x7f2000100000)];
        let stacks = [Range::new(0x7f2000180000, 0x7f20001c0000)];
        let v = collect(&own, &stacks);
        let anon: Vec<_> = v
            .iter()
            .filter(|r| r.0 >= 0x7f2000000000 && r.0 < 0x7f3000000000)
            .collect();
        assert_eq!(
            anon,
            vec![
                &(0x7f2000100000, 0x7f2000180000, Kind::Anon),
                &(0x7f2000180000, 0x7f20001c0000, Kind::Stack),
                &(0x7f20001c0000, 0x7f2000200000, Kind::Anon),
            ]
        );
    }

    #[test]
    fn dontfork_and_wipeonfork_mappings_are_named() {
        let smaps = b"7f0000000000-7f0000002000 rw-p 00000000 00:00 0 \n\
Rss:                   8 kB\n\
VmFlags: rd wr mr mw me ac sd \n\
7f0000010000-7f0000011000 rw-p 00000000 00:00 0 \n\
VmFlags: rd wr mr mw me dc ac sd \n\
7f0000020000-7f0000023000 rw-p 00000000 00:00 0 \n\
VmFlags: rd wr mr mw me ac wf sd \n";
        let mut out = Vec::new();
        not_inherited(smaps, &mut out);
        assert_eq!(
            out,
            vec![
                Range::new(0x7f00_0001_0000, 0x7f00_0001_1000),
                Range::new(0x7f00_0002_0000, 0x7f00_0002_3000)
            ]
        );
    }

    #[test]
    fn the_tracked_memory_a_child_has_no_mapping_for_is_named() {
        let listing = b"\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0 
7f0000004000-7f0000008000 rw-p 00000000 00:00 0 [anon:x \xff]
7f0000010000-7f0000020000 rw-p 00000000 00:00 0 
garbage
7f0000030000-7f0000031000 r--p 00000000 fd:01 12 /lib/x.so
";
        let mut m = Vec::new();
        mappings(listing, &mut m);
        assert_eq!(m.len(), 4);
        let at = |a: usize, b: usize| Range::new(0x7f00_0000_0000 + a, 0x7f00_0000_0000 + b);
        let tracked = [
            // Covered by two adjacent mappings.
            at(0x0, 0x8000),
            // A hole in the middle and at the end.
            at(0xc000, 0x24000),
            // Not mapped at all.
            at(0x40000, 0x41000),
        ];
        let mut gone = Vec::new();
        not_mapped(&m, &tracked, &mut |r| gone.push(r));
        assert_eq!(
            gone,
            vec![
                at(0xc000, 0x10000),
                at(0x20000, 0x24000),
                at(0x40000, 0x41000)
            ]
        );
    }

    #[test]
    fn parses_paths_with_spaces() {
        let l = parse_line("7f00-7f10 rw-p 00000000 fd:01 55 /tmp/a file (deleted)").unwrap();
        assert_eq!(l.path, "/tmp/a file (deleted)");
        assert_eq!(l.inode, 55);
        assert!(parse_line("nonsense").is_none());
    }
}
