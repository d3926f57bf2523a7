//! The shim's own memory: its arena, stats page, thread stacks and its own loaded
//! segments (.data/.bss). None of it is ever tracked: the shim's threads write there,
//! and tracking it would make them fault on themselves.

use crate::base::range::{Range, RangeList};
use core::sync::atomic::{AtomicU64, Ordering};

static OWN: RangeList<64> = RangeList::new();

/// Odd while the shim maps or unmaps memory of its own and has not yet recorded it;
/// bumped on every change. A reader of `/proc/self/maps` compares it before and after
/// ([`generation`]): a listing read while it was odd, or across a change, may show the
/// shim's memory as the program's.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Records a range as the shim's own. Returns false if the list is full (the caller
/// must then not use the memory for anything a tracked write could reach).
pub fn register(r: Range) -> bool {
    let _change = Change::begin();
    OWN.insert(r)
}

/// Maps `len` bytes of private anonymous memory for the shim and records them as its
/// own in one change: no listing of the maps file taken in between counts as current.
pub fn map(len: usize, noreserve: bool) -> Option<Range> {
    let _change = Change::begin();
    let p = crate::base::sys::map_anon(len, noreserve)? as usize;
    let r = Range::new(p, p + len);
    if !OWN.insert(r) {
        crate::base::sys::unmap(r);
        return None;
    }
    Some(r)
}

/// Unmaps memory [`map`] returned and forgets it, in one change.
pub fn unmap(r: Range) {
    let _change = Change::begin();
    crate::base::sys::unmap(r);
    OWN.remove_first(|o| *o == r);
}

/// The shim's own ranges.
pub fn ranges() -> Vec<Range> {
    OWN.to_vec()
}

/// The generation of the shim's own memory: read it before [`ranges`] and before
/// reading the maps file, and again before using what was read; a listing is current
/// only if both reads return the same even number.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// One change to the shim's own memory: the generation is odd while it lasts.
struct Change;

impl Change {
    fn begin() -> Change {
        GENERATION.fetch_add(1, Ordering::AcqRel);
        Change
    }
}

impl Drop for Change {
    fn drop(&mut self) {
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }
}

pub(crate) fn lock_for_fork() {
    OWN.lock_for_fork();
}

pub(crate) fn unlock_after_fork() {
    OWN.unlock_after_fork();
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
