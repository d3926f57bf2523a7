//! The shim's own memory: its arena, stats page, thread stacks and its own loaded
//! segments (.data/.bss). None of it is ever tracked: the shim's threads write there,
//! and tracking it would make them fault on themselves.

use crate::sync::SpinLock;

/// A half-open address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: usize,
    pub end: usize,
}

impl Range {
    pub const EMPTY: Range = Range { start: 0, end: 0 };

    pub fn new(start: usize, end: usize) -> Range {
        Range { start, end }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end
    }
}

const CAPACITY: usize = 64;

struct OwnList {
    ranges: [Range; CAPACITY],
    len: usize,
}

static OWN: SpinLock<OwnList> = SpinLock::new(OwnList {
    ranges: [Range::EMPTY; CAPACITY],
    len: 0,
});

/// Records a range as the shim's own. Returns false if the list is full (the caller
/// must then not use the memory for anything a tracked write could reach).
pub fn register(r: Range) -> bool {
    let _s = crate::sys::block_signals();
    let mut l = OWN.lock();
    if l.len == CAPACITY {
        return false;
    }
    let n = l.len;
    l.ranges[n] = r;
    l.len += 1;
    true
}

/// Copies the current list into `out`, returning how many ranges were written.
pub fn snapshot(out: &mut [Range; CAPACITY]) -> usize {
    let _s = crate::sys::block_signals();
    let l = OWN.lock();
    out[..l.len].copy_from_slice(&l.ranges[..l.len]);
    l.len
}

/// An empty buffer for [`snapshot`].
pub fn empty_snapshot() -> [Range; CAPACITY] {
    [Range::EMPTY; CAPACITY]
}

/// Calls `keep` for each part of `r` that is not the shim's own, in address order.
pub fn subtract_own(r: Range, own: &[Range], keep: &mut dyn FnMut(Range)) {
    // `own` is small; find the first own range that cuts `r`, recurse on the pieces.
    for o in own {
        if o.overlaps(&r) {
            let left = Range::new(r.start, o.start.max(r.start));
            let right = Range::new(o.end.min(r.end), r.end);
            if !left.is_empty() {
                subtract_own(left, own, keep);
            }
            if !right.is_empty() {
                subtract_own(right, own, keep);
            }
            return;
        }
    }
    keep(r);
}

pub(crate) fn lock_for_fork() {
    OWN.acquire();
}

pub(crate) fn unlock_after_fork() {
    OWN.release();
}

/// Registers the shim's own loaded segments (its .data and .bss, where the bootstrap
/// pool, the static stats page and every lock live).
pub fn register_shim_object() {
    extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut core::ffi::c_void,
    ) -> i32 {
        let marker = data as usize;
        // SAFETY: the loader passes a valid dl_phdr_info whose phdr array has phnum entries.
        let info = unsafe { &*info };
        // SAFETY: as above.
        let phdrs =
            unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr as usize;
        let page = 4096usize;
        let loads = || {
            phdrs
                .iter()
                .filter(|p| p.p_type == libc::PT_LOAD)
                .map(move |p| {
                    let start = (base + p.p_vaddr as usize) & !(page - 1);
                    let end =
                        (base + p.p_vaddr as usize + p.p_memsz as usize + page - 1) & !(page - 1);
                    Range::new(start, end)
                })
        };
        if !loads().any(|r| r.start <= marker && marker < r.end) {
            return 0;
        }
        for r in loads() {
            register(r);
        }
        1
    }
    static MARKER: u8 = 0;
    let marker = &MARKER as *const u8 as *mut core::ffi::c_void;
    // SAFETY: the callback only reads the loader's program headers and returns.
    unsafe { libc::dl_iterate_phdr(Some(visit), marker) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(r: Range, own: &[Range]) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        subtract_own(r, own, &mut |p| v.push((p.start, p.end)));
        v
    }

    #[test]
    fn subtraction_cuts_holes() {
        let own = [Range::new(20, 30), Range::new(50, 60), Range::new(0, 5)];
        assert_eq!(
            pieces(Range::new(10, 70), &own),
            vec![(10, 20), (30, 50), (60, 70)]
        );
        assert_eq!(pieces(Range::new(22, 28), &own), vec![]);
        assert_eq!(pieces(Range::new(100, 200), &own), vec![(100, 200)]);
        assert_eq!(pieces(Range::new(0, 25), &own), vec![(5, 20)]);
    }
}
