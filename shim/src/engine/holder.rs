//! A version held by the kernel: a *holder* is a child of the host made with a raw
//! `clone` whose address space is this process's memory as it was at that instant. The
//! program's later writes are copied by the kernel's copy-on-write (a few microseconds,
//! no trap, no shim thread involved); the version is read back from the holder with
//! `process_vm_readv`.
//!
//! The holder changes nothing the host can see:
//! - a raw `clone`, so no atfork handler runs (glibc's, the host's, the shim's own);
//! - exit signal 0: the host gets no SIGCHLD, and its `wait(-1)`/`waitpid(-1)` never see
//!   it (the kernel skips such "clone children" unless asked with `__WALL`/`__WCLONE`);
//! - `CLONE_FILES`: it shares the host's descriptor table instead of holding a copy, so a
//!   pipe or socket the host closes is closed (its reader sees EOF), and it opens nothing;
//! - `CLONE_PIDFD`: the shim reaches it only through a descriptor of its own (see `fds`),
//!   so a holder the host reaped anyway (`waitpid(-1, __WALL)`) can never make the shim
//!   signal or read a process that reused its pid;
//! - it runs no host code and takes no lock: with every signal blocked (inherited from
//!   the shim thread that made it) it asks the kernel to kill it when that thread ends
//!   (`PR_SET_PDEATHSIG`) and waits in `pause` until the shim kills it.
//!
//! Making one costs the page-table copy, like fork (tens of ms per GiB: a stall, counted
//! as one); killing and reaping it costs the kernel freeing those tables, so it is done
//! off the fault path.
//!
//! A holder alive makes every first write of the program a kernel copy, with the other
//! cores' TLBs flushed (4.2 us a fault with one writer thread here, 17 with two), for as
//! long as its version is retained. For a program that rewrites most of its memory
//! between snapshots a holder can take those copies itself, at once
//! ([`Holder::copy_now`]): it writes each resident page of the tracked memory back onto
//! itself, so the kernel gives the holder the copy, in the holder's time and with no
//! flush on the program's cores, and the program's own first writes find pages nobody
//! shares (a write fault, no copy). The holder then keeps the whole resident memory,
//! where a lazy one keeps the pages written after it: for such a program, about the same.

use crate::base::page::PAGE;
use crate::base::range::Range;

/// Why no holder could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderError {
    /// `clone` failed (errno): no memory for the page tables, a process limit.
    Clone(i32),
    /// Its pidfd could not be kept among the shim's descriptors.
    Pidfd(crate::base::fds::FdError),
    /// Its pidfd was closed (or its number reused) by the program before the shim
    /// could keep it.
    PidfdLost,
    /// What it holds could not be checked (the named file of its /proc directory could
    /// not be read, or it ended meanwhile): it is not used.
    Unchecked(&'static str),
}

impl core::fmt::Display for HolderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HolderError::Clone(e) => write!(f, "clone failed (errno {e})"),
            HolderError::Pidfd(e) => write!(f, "the holder's pidfd: {e}"),
            HolderError::PidfdLost => write!(f, "the holder's pidfd was closed by the program"),
            HolderError::Unchecked(what) => {
                write!(f, "what the holder holds could not be checked ({what})")
            }
        }
    }
}

/// Why a read from a holder gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderReadError {
    /// The holder is gone (killed by someone else, or its pidfd lost).
    Gone,
    /// The range is not mapped in the holder (not memory of that version).
    Unmapped,
    /// The shim let the holder go once a recorder said the version is in its store.
    Recorded,
}

/// A live holder: its pid (for `process_vm_readv`) and its pidfd (to tell whether that
/// pid is still it, and to kill it).
#[derive(Debug)]
pub struct Holder {
    pid: i32,
    pidfd: i32,
}

impl Holder {
    /// Makes a holder of this process's memory as it is now. The calling thread must be
    /// a shim thread with every signal blocked (the child inherits the mask), which
    /// lives as long as the holders it makes (their `PR_SET_PDEATHSIG`).
    pub fn hold_now() -> Result<Holder, HolderError> {
        Self::make(&[], CopyWhen::Asked)
    }

    /// Makes a holder that first copies the resident pages of `ranges` (the tracked
    /// memory, address order) into itself, then holds like any other (see the module
    /// doc); as [`hold_now`](Self::hold_now) otherwise.
    pub fn copy_now(ranges: &[Range]) -> Result<Holder, HolderError> {
        Self::make(ranges, CopyWhen::Now)
    }

    /// Makes a holder that holds lazily, as [`hold_now`](Self::hold_now), until
    /// [`ask_to_copy`](Self::ask_to_copy) makes it copy the resident pages of `ranges`
    /// into itself, as [`copy_now`](Self::copy_now) does at once.
    pub fn copy_when_asked(ranges: &[Range]) -> Result<Holder, HolderError> {
        Self::make(ranges, CopyWhen::Asked)
    }

    /// Asks a holder made by [`copy_when_asked`](Self::copy_when_asked) to copy its
    /// ranges into itself now (a signal through its pidfd, which it waits for with every
    /// signal blocked; a second ask, or one to a holder with nothing to copy, does
    /// nothing).
    pub fn ask_to_copy(&self) {
        send_signal(self.pidfd, COPY_SIGNAL);
    }

    fn make(copy: &[Range], when: CopyWhen) -> Result<Holder, HolderError> {
        let parent = std::process::id() as libc::pid_t;
        let mut pidfd: libc::c_int = -1;
        let pid = raw_clone(&mut pidfd);
        if pid == 0 {
            holder_body(parent, copy, when);
        }
        if pid < 0 {
            return Err(HolderError::Clone(crate::base::sys::errno()));
        }
        let pid = pid as i32;
        // The number the kernel gave the pidfd is low and not guarded yet: a program
        // that closes numbers it did not open may have closed it, and its next pipe or
        // open may have taken it. Only a live pidfd of a child of ours is adopted (and
        // so moved away and closed); anything else is left alone, as the program's.
        // From that check to the move the program's closes are held off (see `fds`).
        let adopted = crate::base::fds::creating(|| {
            if !is_childs_pidfd(pidfd) {
                return Err(HolderError::PidfdLost);
            }
            crate::base::fds::adopt(pidfd).map_err(HolderError::Pidfd)
        });
        match adopted {
            Ok(fd) => Ok(Holder { pid, pidfd: fd }),
            Err(e) => {
                // The pidfd is not ours any more (the host closed or replaced that
                // number before the shim could guard it). The holder is microseconds
                // old and not reaped (no SIGCHLD, invisible to wait(-1)): its pid is
                // still it.
                kill_and_reap_by_pid(pid);
                Err(e)
            }
        }
    }

    /// See [`HolderView::not_inherited`].
    pub fn not_inherited(&self, tracked: &[Range]) -> Result<Vec<Range>, HolderError> {
        self.view().not_inherited(tracked)
    }

    /// The holder's pid.
    #[cfg(test)]
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fills `dst` with the held memory at `addr`. Checked after the read through the
    /// pidfd: bytes read from a pid that has been reused are never returned.
    pub fn read(&self, addr: usize, dst: &mut [u8]) -> Result<(), HolderReadError> {
        if !self.alive() {
            return Err(HolderReadError::Gone);
        }
        let local = libc::iovec {
            iov_base: dst.as_mut_ptr().cast(),
            iov_len: dst.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut _,
            iov_len: dst.len(),
        };
        // SAFETY: `dst` is writable for its length; the kernel reads the holder's
        // address space and stops cleanly where it is unmapped.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        // ESRCH: exiting (its memory goes before its pidfd says so).
        if !self.alive() || (n < 0 && crate::base::sys::errno() == libc::ESRCH) {
            return Err(HolderReadError::Gone);
        }
        if n < 0 || n as usize != dst.len() {
            return Err(HolderReadError::Unmapped);
        }
        Ok(())
    }

    /// Whether the holder still runs (its pidfd is not readable: it has not exited).
    pub fn alive(&self) -> bool {
        self.view().alive()
    }

    /// The holder's ids, for the thread that alone releases holders (the epoch thread)
    /// to look at it outside the engine lock.
    pub fn view(&self) -> HolderView {
        HolderView {
            pid: self.pid,
            pidfd: self.pidfd,
        }
    }

    /// Kills and reaps the holder, giving its copied pages back (the kernel frees its
    /// page tables: milliseconds per GiB).
    pub fn release(self) {
        kill_and_reap(self.pidfd);
        crate::base::fds::release(self.pidfd);
    }

    /// In a forked child: the parent's holders are not the child's children; forget them
    /// (their pidfds are closed with the other inherited shim descriptors).
    pub fn forget(self) {
        // A Holder has no Drop: only `release` signals or waits for its process, so
        // letting it go here leaves the parent's holder alone.
        let Holder { pid: _, pidfd: _ } = self;
    }
}

/// A holder's pid and pidfd, copied: valid while the holder is not released (only the
/// epoch thread releases holders, so it may use a view outside the engine lock). Every
/// use checks the pidfd is still the shim's and the process still runs.
#[derive(Clone, Copy, Debug)]
pub struct HolderView {
    pid: i32,
    pidfd: i32,
}

impl HolderView {
    /// The parts of `tracked` (sorted, free of overlaps) this holder does not hold as
    /// they were at its clone, read from the holder itself once it is made, so that
    /// nothing the program changes between a check and the clone slips by: memory it
    /// has no mapping for (`MADV_DONTFORK` is not copied into a child; nor is what was
    /// unmapped before the clone), and mappings marked `MADV_WIPEONFORK` (empty in a
    /// child: they read as zero there). A mapping with a page present in the holder is
    /// not a wiped one, as the kernel copies no page of those, and the holder's own
    /// copying touches only pages it has; only when a mapping of the tracked memory has
    /// none (never touched, swapped out, or wiped) are the holder's smaps read, whose
    /// `VmFlags` say, a walk of its page tables (tens of ms a GiB) where this check
    /// is one page-table probe a mapping. Before the version is read: a read maps pages.
    pub fn not_inherited(&self, tracked: &[Range]) -> Result<Vec<Range>, HolderError> {
        use crate::base::fds;
        use crate::tracking::maps;
        let listing = fds::read_file(&self.proc_file("maps"), MAPS_MAX);
        let mut mapped = Vec::new();
        maps::mappings(&listing, &mut mapped);
        drop(listing);
        if mapped.is_empty() {
            return Err(HolderError::Unchecked("maps"));
        }
        let mut out = Vec::new();
        maps::not_mapped(&mapped, tracked, &mut |r| out.push(r));
        let pagemap =
            fds::open_proc(&self.proc_file("pagemap")).ok_or(HolderError::Unchecked("pagemap"))?;
        let in_tracked = |m: &Range| {
            let i = tracked.partition_point(|t| t.end <= m.start);
            tracked.get(i).is_some_and(|t| t.start < m.end)
        };
        let mut unsure = false;
        for m in mapped.iter().filter(|m| in_tracked(m)) {
            match crate::engine::pagemap::any_present(pagemap.raw(), *m) {
                Ok(true) => {}
                Ok(false) => {
                    crate::base::log::debug!(
                        "holder check: nothing present in {:#x}..{:#x}: reading its smaps",
                        m.start,
                        m.end
                    );
                    unsure = true;
                    break;
                }
                Err(_) => return Err(HolderError::Unchecked("pagemap")),
            }
        }
        drop(pagemap);
        if unsure {
            // Only the wiped are in a child's listing; the others are found above.
            if !not_inherited_per_smaps(&self.proc_file("smaps"), tracked, &mut out) {
                return Err(HolderError::Unchecked("smaps"));
            }
            out.sort_unstable_by_key(|r| r.start);
            out.dedup();
        }
        // Alive after the reads: the pid was the holder's all along (an unreaped child's
        // pid is not reused).
        if !self.alive() {
            return Err(HolderError::Unchecked("the holder ended"));
        }
        Ok(out)
    }

    /// The path of a file of the holder's /proc directory.
    fn proc_file(&self, name: &str) -> std::ffi::CString {
        std::ffi::CString::new(format!("/proc/{}/{name}", self.pid))
            .expect("a pid and a file name hold no NUL")
    }

    /// Whether the holder still runs (its pidfd is not readable: it has not exited).
    pub fn alive(&self) -> bool {
        if !crate::base::fds::verify(self.pidfd) {
            return false;
        }
        crate::base::sys::poll_in_now(self.pidfd) == 0
    }

    /// Bytes of memory only the holder keeps now: the pages the program wrote since it
    /// was made, which the kernel copied (its private resident memory). Walks its page
    /// tables: not for the fault path.
    pub fn pinned_bytes(&self) -> u64 {
        let path = format!("/proc/{}/smaps_rollup\0", self.pid);
        let Ok(path) = core::ffi::CStr::from_bytes_with_nul(path.as_bytes()) else {
            return 0;
        };
        let text = crate::base::fds::read_file(path, 4096);
        let kib = |key: &str| crate::base::sys::kib_field(&text, key).unwrap_or(0);
        if !self.alive() {
            return 0;
        }
        (kib("Private_Clean:") + kib("Private_Dirty:")) * 1024
    }
}

/// `clone(CLONE_FILES | CLONE_PIDFD, exit signal 0)` on the caller's stack (the child
/// runs on its own copy of it, as after fork). Returns the child's pid, 0 in the child,
/// or -1 with errno set.
fn raw_clone(pidfd: &mut libc::c_int) -> libc::c_long {
    let flags = (libc::CLONE_FILES | libc::CLONE_PIDFD) as libc::c_ulong;
    // SAFETY: no new stack and no CLONE_VM: the child gets a copy-on-write copy of this
    // address space and returns here on its copy of this stack, like fork; `pidfd` is a
    // valid int for the kernel to fill (CLONE_PIDFD uses the parent-tid argument).
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    }
}

/// The holder's whole life: only raw system calls and its own memory (no lock, no
/// allocation, nothing of the host's). It copies the resident pages of `copy` into
/// itself, then waits until the shim thread that made it ends, or it is killed.
fn holder_body(parent: libc::pid_t, copy: &[Range], when: CopyWhen) -> ! {
    // SAFETY: raw system calls with integer arguments; none touches memory.
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The maker may have ended before the prctl took effect.
        if libc::syscall(libc::SYS_getppid) as libc::pid_t != parent {
            libc::syscall(libc::SYS_exit_group, 0);
        }
    }
    if when == CopyWhen::Asked && !copy.is_empty() {
        wait_for_copy_order();
    }
    for &r in copy {
        copy_into_holder(r);
    }
    loop {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_pause) };
    }
}

/// When a holder copies its ranges into itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyWhen {
    /// As soon as it is made.
    Now,
    /// When the shim asks ([`Holder::ask_to_copy`]).
    Asked,
}

/// The signal that asks a holder to copy (sent to the holder alone, through its pidfd;
/// blocked there like every other, and taken with `rt_sigtimedwait`, so no handler, the
/// host's or any, ever runs in the holder).
const COPY_SIGNAL: libc::c_int = libc::SIGUSR1;

/// In a holder: waits until [`COPY_SIGNAL`] is sent to it.
fn wait_for_copy_order() {
    let wanted: u64 = 1 << (COPY_SIGNAL - 1);
    loop {
        // SAFETY: `wanted` is a kernel signal set (8 bytes) on the holder's own stack; no
        // siginfo is asked for and there is no timeout.
        let got = unsafe {
            libc::syscall(
                libc::SYS_rt_sigtimedwait,
                &wanted as *const u64,
                core::ptr::null_mut::<libc::siginfo_t>(),
                core::ptr::null::<libc::timespec>(),
                core::mem::size_of::<u64>(),
            )
        };
        if got == COPY_SIGNAL as libc::c_long {
            return;
        }
    }
}

/// Appends to `out` the parts of `tracked` (sorted, free of overlaps) that the smaps
/// file at `path` (the program's own, or a holder's) marks `MADV_DONTFORK` or
/// `MADV_WIPEONFORK` (see `tracking::maps::not_inherited`). A walk of that process's page
/// tables: not for the fault path. `false` when the file could not be read.
pub fn not_inherited_per_smaps(
    path: &core::ffi::CStr,
    tracked: &[Range],
    out: &mut Vec<Range>,
) -> bool {
    let smaps = crate::base::fds::read_file(path, SMAPS_MAX);
    if smaps.is_empty() {
        return false;
    }
    let mut marked = Vec::new();
    crate::tracking::maps::not_inherited(&smaps, &mut marked);
    drop(smaps);
    for &m in &marked {
        crate::engine::reprotect::within(tracked, m, &mut |part| out.push(part));
    }
    true
}

/// Bytes of a holder's maps listing read at most (a line per mapping: the kernel's
/// default limit of 65,530 mappings fits).
const MAPS_MAX: usize = 16 << 20;
/// Bytes of a smaps file read at most (about 1 KiB per mapping).
const SMAPS_MAX: usize = 64 << 20;

/// Pages asked about per `mincore` call (its answer lives on the holder's stack).
const RESIDENT_BATCH: usize = 4096;

/// In a holder: writes each resident page of `r` back onto itself (one byte, its own
/// value), so the kernel copies it into the holder now; the version's bytes do not
/// change. Pages never populated are left (the program's first write there copies
/// nothing). A range the holder cannot make writable (unmapped since the scan) is left
/// shared: the program's writes there are then copied by the kernel as for any holder.
fn copy_into_holder(r: Range) {
    // SAFETY: changes the protection of the holder's own copy of the range only (a part
    // the program made inaccessible since the scan becomes writable here, unchanged).
    let writable = unsafe {
        libc::mprotect(
            r.start as *mut libc::c_void,
            r.len(),
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if writable != 0 {
        return;
    }
    let mut resident = [0u8; RESIDENT_BATCH];
    let mut at = r.start;
    while at < r.end {
        let pages = ((r.end - at) / PAGE).min(RESIDENT_BATCH);
        // SAFETY: `resident` has room for `pages` entries; the range is mapped (above).
        let asked = unsafe {
            libc::mincore(
                at as *mut libc::c_void,
                pages * PAGE,
                resident.as_mut_ptr().cast(),
            )
        };
        if asked == 0 {
            for (i, _) in resident[..pages]
                .iter()
                .enumerate()
                .filter(|(_, &b)| b & 1 == 1)
            {
                let p = (at + i * PAGE) as *mut u8;
                // SAFETY: a mapped, writable page of the holder's own address space (no
                // other thread runs in it); the byte written is the one read.
                unsafe { p.write_volatile(p.read_volatile()) };
            }
        }
        at += pages * PAGE;
    }
}

/// Kills the holder through its pidfd (never by pid) and waits for it (`__WALL`: it is
/// a clone child).
fn kill_and_reap(pidfd: i32) {
    send_kill(pidfd);
    // P_PIDFD waits for that process only, so a pid reused meanwhile is never reaped.
    reap(libc::P_PIDFD, pidfd as libc::id_t);
}

/// Waits for the child `id` names (`idtype` P_PIDFD or P_PID) to exit and reaps it
/// (`__WALL`: a holder is a clone child), through interruptions.
fn reap(idtype: libc::idtype_t, id: libc::id_t) {
    let mut info: libc::siginfo_t = zeroed_siginfo();
    loop {
        // SAFETY: `info` is a valid out-pointer; waits for that one child only.
        let r = unsafe { libc::waitid(idtype, id, &mut info, libc::WEXITED | libc::__WALL) };
        if r == 0 || crate::base::sys::errno() != libc::EINTR {
            break;
        }
    }
}

/// Whether `fd` is a pidfd of a live child of this process: `waitid` on it (without
/// waiting or reaping) fails for anything else (EINVAL or EBADF for another file,
/// ECHILD for another process's pidfd) and reports no exit.
fn is_childs_pidfd(fd: i32) -> bool {
    let mut info: libc::siginfo_t = zeroed_siginfo();
    // SAFETY: `info` is a valid out-pointer; WNOHANG never blocks, WNOWAIT reaps nothing.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            fd as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL,
        )
    };
    // SAFETY: reading the pid field of a siginfo the kernel filled (zero: no event).
    r == 0 && unsafe { info.si_pid() } == 0
}

/// Only for a holder just made whose pidfd was lost before the shim could keep it: by
/// pid (unreaped, so not reused), then reaped (`__WALL`: a clone child).
fn kill_and_reap_by_pid(pid: i32) {
    // SAFETY: signalling our own child, which nothing has reaped; no memory is passed.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(libc::P_PID, pid as libc::id_t);
}

/// SIGKILL through the pidfd (never by pid), if it is still the shim's.
fn send_kill(pidfd: i32) {
    send_signal(pidfd, libc::SIGKILL);
}

/// Sends `signal` to the holder of `pidfd` if that descriptor is still the shim's.
fn send_signal(pidfd: i32, signal: libc::c_int) {
    if crate::base::fds::verify(pidfd) {
        // SAFETY: signalling through our own pidfd; no memory is passed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                signal,
                core::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

fn zeroed_siginfo() -> libc::siginfo_t {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    unsafe { core::mem::zeroed() }
}

/// A version held by a holder: the holder; the ranges it does not hold as they were
/// (`MADV_DONTFORK`, `MADV_WIPEONFORK`: see [`HolderView::not_inherited`]) that the pass
/// kept on shadows instead (`shadowed`: protected before the clone, with faults held
/// until the version opened, so their first writes after it leave shadows stamped with
/// it, as in a shadow epoch); and those it neither holds nor kept (`not_held`: met only
/// in the holder, after its clone), whose reads are refused.
///
/// Once a recorder says the version is in its store (`recorded V`), the holder process
/// is let go (`holder` None: the program's later writes no longer copy pages for it,
/// fork's economics) while the version stays in the history: its epoch's written list
/// still counts for the recorder's next delta, and its reads say where to read it.
#[derive(Debug)]
pub struct HeldVersion {
    pub version: u64,
    pub holder: Option<Holder>,
    pub not_held: Vec<Range>,
    pub shadowed: Vec<Range>,
    /// What its holder keeps, as the budget counts it.
    pub kept: Kept,
}

impl HeldVersion {
    /// A version the new holder `holder` holds (its number set when the version opens),
    /// with `shadowed` kept on shadows.
    pub fn new(
        holder: Holder,
        not_held: Vec<Range>,
        shadowed: Vec<Range>,
        kept: Kept,
    ) -> HeldVersion {
        HeldVersion {
            version: 0,
            holder: Some(holder),
            not_held,
            shadowed,
            kept,
        }
    }

    /// Reads `dst` at `addr` from the holder (see [`Holder::read`]).
    pub fn read(&self, addr: usize, dst: &mut [u8]) -> Result<(), HolderReadError> {
        match &self.holder {
            Some(h) => h.read(addr, dst),
            None => Err(HolderReadError::Recorded),
        }
    }

    /// Kills and reaps the holder, if it was not let go already.
    pub fn release(self) {
        if let Some(h) = self.holder {
            h.release();
        }
    }

    /// In a forked child: see [`Holder::forget`].
    pub fn forget(self) {
        if let Some(h) = self.holder {
            h.forget();
        }
    }

    /// Whether `page` lies in a range the holder does not hold as it was and the pass
    /// did not keep on shadows.
    pub fn not_held_at(&self, page: usize) -> bool {
        self.not_held
            .iter()
            .any(|r| r.start <= page && page < r.end)
    }

    /// Whether `page` lies in a range the pass kept on shadows: it is read as a shadow
    /// version's is, not from the holder.
    pub fn shadowed_at(&self, page: usize) -> bool {
        self.shadowed
            .iter()
            .any(|r| r.start <= page && page < r.end)
    }
}

/// The memory a holder alone keeps, as the epoch thread counts it against
/// `MEMSHADOW_SHADOW_BUDGET_MB` and publishes it (`holder_pinned_bytes`) without walking
/// the holders' page tables after every pass: that walk (smaps_rollup, tens of ms per GiB
/// a holder, while the program meets its first copies) stalls the program itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// It copies the resident memory into itself at once ([`Holder::copy_now`]): the
    /// program's anonymous memory resident at the clone, in bytes, what it keeps once its
    /// copy is done (the program's own first writes then copy nothing for it). Never
    /// walked.
    Copied(u64),
    /// It keeps the pages the program writes after it: `bytes` when it was last measured
    /// (its private memory, from its smaps_rollup), the program's minor faults being
    /// `faults` then. While it is the newest holder, every fault since may have copied a
    /// page for it (first touches of new memory copy nothing: this errs high until the
    /// next measure).
    Lazy { bytes: u64, faults: u64 },
}

impl Kept {
    /// A lazy holder made now, the program's minor faults being `faults`.
    pub const fn lazy_from(faults: u64) -> Kept {
        Kept::Lazy { bytes: 0, faults }
    }

    /// Bytes counted for it, the program's minor faults being `faults_now`; `newest`: it
    /// is the newest live holder, the only one the program's writes copy pages for (a
    /// page older holders share too is copied once, for it).
    pub fn bytes(self, faults_now: u64, newest: bool) -> u64 {
        match self {
            Kept::Copied(bytes) => bytes,
            Kept::Lazy { bytes, faults } if newest => bytes.saturating_add(
                faults_now
                    .saturating_sub(faults)
                    .saturating_mul(PAGE as u64),
            ),
            Kept::Lazy { bytes, .. } => bytes,
        }
    }

    /// As counted once a newer holder is made, the program's minor faults being
    /// `faults_now` (at that holder's clone): a lazy one keeps what it was counted for
    /// as the newest (the pages the faults since its last measure may have copied for
    /// it) and gains no more, until it is measured again. Without this, a lazy holder
    /// that stopped being the newest was counted at its last measure only (none, for
    /// one never measured), and a budget check counting only such holders never found
    /// itself over and never measured them: 8 versions of a program rewriting 64 MiB
    /// stayed under a 16 MiB budget.
    pub fn superseded(self, faults_now: u64) -> Kept {
        match self {
            Kept::Copied(_) => self,
            Kept::Lazy { .. } => Kept::Lazy {
                bytes: self.bytes(faults_now, true),
                faults: faults_now,
            },
        }
    }

    /// Whether counting it needs a measure now and then (a lazy holder).
    pub fn measured(self) -> bool {
        matches!(self, Kept::Lazy { .. })
    }
}

/// A live holder as the budget counts it: its version, its ids, what it keeps.
#[derive(Clone, Copy, Debug)]
pub struct KeptBy {
    pub version: u64,
    pub view: HolderView,
    pub kept: Kept,
}

/// Whether this process ever kept a holder (the shadow backend never looks further).
static HOLDERS_MADE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether a holder was ever installed in this process (or a parent it was forked from).
pub fn any_made() -> bool {
    HOLDERS_MADE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Most holders alive at once: each keeps a pidfd among the shim's descriptors
/// (`fds::SLOTS`, which also holds the shim's own few and one per request or file being
/// read). Versions past it (`MEMSHADOW_MAX_VERSIONS` above it, or pins) are shadow
/// snapshots.
pub const MAX_HOLDERS: usize = 40;

/// Most holders the engine keeps: one per retained version at most.
pub fn capacity(max_versions: usize) -> usize {
    max_versions.max(1) + crate::engine::shadow::PIN_EXTRA_VERSIONS + 1
}

impl crate::engine::Engine {
    /// The holder of version `v`, if a holder holds it.
    pub fn held(&self, v: u64) -> Option<&HeldVersion> {
        self.holders.iter().find(|h| h.version == v)
    }

    /// The holder of the oldest retained version after `v` that holds `page` itself
    /// (did not keep it on shadows), if any: its pass may have dropped the page's
    /// protection, so records stamped at or after it are not to be trusted for `v`.
    pub fn first_held_after(&self, v: u64, page: usize) -> Option<&HeldVersion> {
        let oldest = self.pool.retained().map(|r| r.0);
        self.holders
            .iter()
            .filter(|h| h.version > v && oldest.is_some_and(|o| h.version >= o))
            .filter(|h| !h.shadowed_at(page))
            .min_by_key(|h| h.version)
    }

    /// After the check of version `v`'s holder (see `HolderView::not_inherited`): the
    /// ranges it neither holds nor kept on shadows, whose reads are refused. The list it
    /// replaces comes back, to be dropped outside the engine lock.
    pub fn set_not_held(&mut self, v: u64, not_held: Vec<Range>) -> Vec<Range> {
        match self.holders.iter_mut().find(|h| h.version == v) {
            Some(h) => core::mem::replace(&mut h.not_held, not_held),
            None => not_held,
        }
    }

    /// The first part of `r` some retained holder version keeps on shadows, if any (a
    /// discard there needs its pages saved, as under shadows).
    pub fn first_shadowed_within(&self, r: Range) -> Option<Range> {
        let oldest = self.pool.retained().map(|r| r.0)?;
        self.holders
            .iter()
            .filter(|h| h.version >= oldest)
            .flat_map(|h| h.shadowed.iter())
            .filter(|s| s.start < r.end && r.start < s.end)
            .map(|s| Range::new(s.start.max(r.start), s.end.min(r.end)))
            .min_by_key(|s| s.start)
    }

    /// How many holder versions the engine keeps (retained versions' and evicted ones'
    /// not yet released), their holder processes let go or not.
    pub fn holder_count(&self) -> usize {
        self.holders.len()
    }

    /// How many holder processes are alive (each keeps a pidfd among the shim's
    /// descriptors: at most [`MAX_HOLDERS`]).
    pub fn live_holder_count(&self) -> usize {
        self.holders.iter().filter(|h| h.holder.is_some()).count()
    }

    /// A recorder has every version up to `v` in its store: takes out (into `out`,
    /// without growing it) the holder processes of the versions up to `v`, to be killed
    /// and reaped outside the engine lock. The versions stay (see [`HeldVersion`]).
    pub fn let_go_recorded(&mut self, v: u64, out: &mut Vec<Holder>) {
        for h in self.holders.iter_mut().filter(|h| h.version <= v) {
            if out.len() == out.capacity() {
                break;
            }
            if let Some(p) = h.holder.take() {
                out.push(p);
            }
        }
        self.publish();
    }

    /// Whether the newest version is held by a holder.
    pub fn newest_held(&self) -> bool {
        self.held(self.version).is_some()
    }

    /// Hands the engine the holder of the newest version (opened by `open_version`),
    /// after [`take_released`](Self::take_released) made room; nothing allocates. The
    /// pages that lose protection meanwhile are not tracked by the holder version, so
    /// the next shadow pass protects everything. Gives `h` back when there is no room.
    /// `faults_at_clone`: the program's minor faults at its clone, when the holder before
    /// it stopped gaining pages ([`Kept::superseded`]).
    pub fn install_holder(
        &mut self,
        h: HeldVersion,
        faults_at_clone: u64,
    ) -> Result<(), HeldVersion> {
        if h.version != self.version || self.holders.len() == self.holders.capacity() {
            return Err(h);
        }
        if let Some(newest) = self.holders.iter_mut().rev().find(|h| h.holder.is_some()) {
            newest.kept = newest.kept.superseded(faults_at_clone);
        }
        HOLDERS_MADE.store(true, core::sync::atomic::Ordering::Relaxed);
        self.reprotect.note_all();
        // What the version before kept on shadows would trap once per page for nothing
        // where this holder holds it: after a shadow version, all the tracked memory;
        // after a holder version, the ranges that one kept on shadows. Reads of older
        // versions take from this holder what no record before it covers (see
        // `readback::copy_at`). What this version keeps on shadows stays protected.
        // (Lists moved out and back: nothing allocates here.)
        let before = self
            .holders
            .iter_mut()
            .find(|p| p.version + 1 == self.version);
        let mut was_shadowed = before.map(|p| core::mem::take(&mut p.shadowed));
        let unprotect = |e: &mut Self, r: Range| {
            crate::base::range::subtract(r, &h.shadowed, &mut |part| e.unprotect(part));
        };
        match &was_shadowed {
            None => {
                for i in 0..self.tracked.len() {
                    let r = self.tracked[i].range;
                    unprotect(self, r);
                }
            }
            Some(ranges) => {
                for &r in ranges {
                    unprotect(self, r);
                }
            }
        }
        if let Some(p) = self
            .holders
            .iter_mut()
            .find(|p| p.version + 1 == self.version)
        {
            p.shadowed = was_shadowed.take().unwrap_or_default();
        }
        self.holders.push(h);
        Ok(())
    }

    /// Moves the holders whose versions are no longer retained (every holder when `all`)
    /// into `out` (without growing it: as many as fit) for the caller to release
    /// outside the engine lock.
    pub fn take_released(&mut self, out: &mut Vec<HeldVersion>, all: bool) {
        let oldest = self.pool.retained().map(|r| r.0);
        let mut i = 0;
        while i < self.holders.len() && out.len() < out.capacity() {
            let gone = all || oldest.is_none_or(|o| self.holders[i].version < o);
            if gone {
                out.push(self.holders.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// Gives up the oldest retained version for the budget (see the epoch thread's
    /// `keep_holders_within_budget`), unless it is the newest; false when nothing went.
    pub fn evict_oldest_for_budget(&mut self) -> bool {
        match self.pool.retained() {
            Some((oldest, newest)) if oldest < newest => {
                self.pool.evict_oldest();
                self.prune_lost();
                self.publish();
                true
            }
            _ => false,
        }
    }

    /// Before a holder is made for the next version, while the program's memory is
    /// its own (no copies pending): gives up the oldest retained version for the budget
    /// (see the epoch thread's `make_room_before_clone`). The newest goes too only when
    /// `newest_too`, every retained version is a live holder's and none is pinned: the
    /// holder about to be made replaces it. False when nothing went.
    pub fn evict_oldest_before_holder(&mut self, newest_too: bool) -> bool {
        let Some((oldest, newest)) = self.pool.retained() else {
            return false;
        };
        let may = oldest < newest
            || (newest_too
                && !self.pool.any_pinned()
                && (oldest..=newest).all(|v| self.held(v).is_some_and(|h| h.holder.is_some())));
        if may {
            self.pool.evict_oldest();
            self.prune_lost();
            self.publish();
        }
        may
    }

    /// Whether every retained version is held by a holder (a copy ahead would then be
    /// for no version; a save before a discard only for what they keep on shadows).
    pub fn only_holders_retained(&self) -> bool {
        match self.pool.retained() {
            None => false,
            Some((oldest, newest)) => (oldest..=newest).all(|v| self.held(v).is_some()),
        }
    }

    /// Whether no retained version needs shadows at all: every one is held by a holder
    /// that kept nothing on shadows.
    pub fn holders_keep_everything(&self) -> bool {
        self.only_holders_retained()
            && self.holders.iter().all(|h| {
                h.shadowed.is_empty() || self.pool.retained().is_none_or(|(o, _)| h.version < o)
            })
    }

    /// The live holders as the budget counts them, oldest first, into `out` (without
    /// growing it).
    pub fn kept_by_holders(&self, out: &mut Vec<KeptBy>) {
        let from = out.len();
        let room = out.capacity() - out.len();
        out.extend(
            self.holders
                .iter()
                .filter_map(|h| {
                    h.holder.as_ref().map(|p| KeptBy {
                        version: h.version,
                        view: p.view(),
                        kept: h.kept,
                    })
                })
                .take(room),
        );
        out[from..].sort_unstable_by_key(|k| k.version);
    }

    /// Asks the holder of `version`, lazy so far, to copy the memory it was given into
    /// itself now ([`Holder::ask_to_copy`]); it is counted as `kept` from now on. False
    /// when no such holder lives or it is not lazy.
    pub fn ask_to_copy(&mut self, version: u64, kept: Kept) -> bool {
        let Some(h) = self
            .holders
            .iter_mut()
            .find(|h| h.version == version && h.kept.measured())
        else {
            return false;
        };
        let Some(p) = h.holder.as_ref() else {
            return false;
        };
        p.ask_to_copy();
        h.kept = kept;
        true
    }

    /// Notes what the holder of `version` was measured to keep.
    pub fn note_kept(&mut self, version: u64, kept: Kept) {
        if let Some(h) = self.holders.iter_mut().find(|h| h.version == version) {
            h.kept = kept;
        }
    }
}

/// Holders taken from an engine that was torn down (`engine::stop`, on whatever
/// thread found the descriptor lost): killed and reaped by the epoch thread or at exit
/// ([`release_parked`]), never on the fault path.
static PARKED: crate::base::sync::SpinLock<Vec<HeldVersion>> =
    crate::base::sync::SpinLock::new(Vec::new());

/// Parks the holders of `list` to be killed and reaped by [`release_parked`] (this may
/// run on the fault thread, which never signals or waits for a holder).
pub fn park(mut list: Vec<HeldVersion>) {
    let _s = crate::base::sys::block_signals();
    let mut parked = PARKED.lock();
    if parked.is_empty() {
        core::mem::swap(&mut *parked, &mut list);
    } else {
        parked.append(&mut list);
    }
}

/// Reaps the parked holders (the epoch thread, and exit).
pub fn release_parked() {
    let list = {
        let _s = crate::base::sys::block_signals();
        let mut parked = PARKED.lock();
        if parked.is_empty() {
            return;
        }
        core::mem::take(&mut *parked)
    };
    for h in list {
        h.release();
    }
}

/// In a forked child: the parked holders are the parent's children; forget them.
pub fn forget_parked_after_fork() {
    PARKED.release();
    let list = core::mem::take(&mut *PARKED.lock());
    for h in list {
        h.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::page::PAGE;

    #[test]
    fn a_holder_is_counted_for_what_it_alone_keeps() {
        let page = PAGE as u64;
        // A holder that copied at once keeps the memory resident at its clone, whatever
        // the program does after.
        let copied = Kept::Copied(100 * page);
        assert_eq!(copied.bytes(1_000_000, true), 100 * page);
        assert_eq!(copied.bytes(0, false), 100 * page);
        assert!(!copied.measured());
        // A lazy one: what was measured, and while it is the newest, a page for each of
        // the program's faults since.
        let lazy = Kept::Lazy {
            bytes: 10 * page,
            faults: 500,
        };
        assert_eq!(lazy.bytes(530, true), 40 * page);
        assert_eq!(
            lazy.bytes(530, false),
            10 * page,
            "an older one does not grow"
        );
        assert_eq!(lazy.bytes(400, true), 10 * page, "faults never go back");
        assert!(lazy.measured());
        assert_eq!(
            Kept::lazy_from(7).bytes(7, true),
            0,
            "a new lazy holder keeps nothing"
        );
        // Once a newer holder is made (its clone at 530 faults), an older lazy one keeps
        // what it was counted for as the newest, and gains nothing more.
        let older = lazy.superseded(530);
        assert_eq!(older.bytes(530, false), 40 * page);
        assert_eq!(older.bytes(9_000, false), 40 * page);
        assert!(older.measured());
        assert_eq!(copied.superseded(530), copied);
    }

    fn buffer(pages: usize, byte: u8) -> Range {
        let p = crate::base::sys::map_anon(pages * PAGE, false).unwrap() as usize;
        // SAFETY: the mapping was just made, `pages * PAGE` bytes.
        unsafe { core::ptr::write_bytes(p as *mut u8, byte, pages * PAGE) };
        Range::new(p, p + pages * PAGE)
    }

    fn hold() -> Holder {
        let _s = crate::base::sys::block_signals();
        Holder::hold_now().expect("a holder")
    }

    #[test]
    fn a_holder_names_the_memory_it_does_not_keep_as_it_was() {
        let advise = |r: Range, advice: libc::c_int| {
            // SAFETY: a mapping of this test's own.
            let rc = unsafe { libc::madvise(r.start as *mut libc::c_void, r.len(), advice) };
            assert_eq!(rc, 0, "madvise({advice})");
        };
        let written = buffer(8, 5);
        let wiped = buffer(4, 6);
        advise(wiped, libc::MADV_WIPEONFORK);
        let not_copied = buffer(2, 7);
        advise(not_copied, libc::MADV_DONTFORK);
        // Emptied: nothing present in the holder either, as in a wiped one, but not
        // wiped (it reads zero in the version as in the program). Its own mapping
        // (MADV_DONTDUMP: no neighbour merges with it), so the holder's smaps are read.
        let untouched = buffer(3, 0);
        advise(untouched, libc::MADV_DONTDUMP);
        advise(untouched, libc::MADV_DONTNEED);
        let mut tracked = vec![written, wiped, not_copied, untouched];
        tracked.sort_unstable_by_key(|r| r.start);
        let h = hold();
        let mut expected = vec![wiped, not_copied];
        expected.sort_unstable_by_key(|r| r.start);
        assert_eq!(h.not_inherited(&tracked), Ok(expected));
        // Only what is tracked is named.
        assert_eq!(h.not_inherited(&[written, untouched]), Ok(vec![]));
        h.release();
        for r in [written, wiped, not_copied, untouched] {
            // SAFETY: the test's own mappings, no longer used.
            unsafe { libc::syscall(libc::SYS_munmap, r.start, r.len()) };
        }
    }

    #[test]
    fn a_holder_keeps_the_memory_as_it_was_while_the_program_writes() {
        let buf = buffer(16, 1);
        let h = hold();
        // SAFETY: our own mapping.
        unsafe { core::ptr::write_bytes(buf.start as *mut u8, 2, buf.len()) };
        let mut then = vec![0u8; buf.len()];
        h.read(buf.start, &mut then).unwrap();
        assert!(then.iter().all(|&b| b == 1), "the holder saw a later write");
        // Memory it never had is refused, not invented. (Another test thread may have
        // had a mapping at that address at the clone, unmapped since: then the holder
        // gives that memory, never this page's.)
        let later = buffer(1, 3);
        let mut page = vec![0u8; PAGE];
        match h.read(later.start, &mut page) {
            Err(e) => assert_eq!(e, HolderReadError::Unmapped),
            Ok(()) => assert!(
                page.iter().any(|&b| b != 3),
                "the holder saw a later mapping"
            ),
        }
        h.release();
    }

    #[test]
    fn a_copying_holder_takes_the_resident_pages_at_once_and_keeps_the_version() {
        // 64 pages written (resident), 64 never touched.
        let p = crate::base::sys::map_anon(128 * PAGE, false).unwrap() as usize;
        let buf = Range::new(p, p + 128 * PAGE);
        // SAFETY: the first half of our own mapping.
        unsafe { core::ptr::write_bytes(buf.start as *mut u8, 5, 64 * PAGE) };
        let _s = crate::base::sys::block_signals();
        let h = Holder::copy_now(&[buf]).expect("a holder");
        // Before the program writes anything, the holder has its own copy of every
        // resident page (a lazy holder keeps none yet; other tests' threads write too,
        // so the holder may keep a few more of the process's pages).
        let copied = || h.view().pinned_bytes();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while copied() < 64 * PAGE as u64 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let pinned = copied();
        assert!(
            pinned >= 64 * PAGE as u64,
            "the holder keeps {pinned} bytes of its own, not the 64 resident pages"
        );
        // SAFETY: our own mapping.
        unsafe { core::ptr::write_bytes(buf.start as *mut u8, 6, buf.len()) };
        let mut then = vec![0u8; buf.len()];
        h.read(buf.start, &mut then).unwrap();
        assert!(
            then[..64 * PAGE].iter().all(|&b| b == 5),
            "a copied page changed"
        );
        assert!(
            then[64 * PAGE..].iter().all(|&b| b == 0),
            "an untouched page changed"
        );
        h.release();
    }

    #[test]
    fn the_hosts_wait_never_sees_a_holder_and_a_released_one_is_gone() {
        let h = hold();
        let pid = h.pid();
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert_eq!(r, -1, "waitpid without __WALL found the holder");
        assert_eq!(crate::base::sys::errno(), libc::ECHILD);
        assert!(h.alive());
        h.release();
        // SAFETY: kill with signal 0 only checks for existence.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the holder still exists");
    }

    #[test]
    fn a_pipe_the_host_closes_reaches_eof_with_a_holder_alive() {
        let mut ends = [0; 2];
        // SAFETY: `ends` is two ints for the kernel to fill.
        let made = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(made, 0);
        let h = hold();
        // SAFETY: closing the write end we made; the holder shares the table, so this
        // was the last reference.
        unsafe { libc::close(ends[1]) };
        let mut byte = [0u8; 1];
        // SAFETY: reading into a local byte.
        let n = unsafe { libc::read(ends[0], byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "no EOF: the holder kept the write end open");
        h.release();
        // SAFETY: our read end.
        unsafe { libc::close(ends[0]) };
    }
}
