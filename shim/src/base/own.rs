//! The shim's own memory: its arena, stats page, thread stacks and its own loaded
//! segments (.data/.bss). None of it is ever tracked: the shim's threads write there,
//! and tracking it would make them fault on themselves.

use crate::base::range::{Range, RangeList};

static OWN: RangeList<64> = RangeList::new();

/// Records a range as the shim's own. Returns false if the list is full (the caller
/// must then not use the memory for anything a tracked write could reach).
pub fn register(r: Range) -> bool {
    OWN.insert(r)
}

/// The shim's own ranges.
pub fn ranges() -> Vec<Range> {
    OWN.to_vec()
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
