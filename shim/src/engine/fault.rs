//! The fault path: the thread that reads userfaultfd messages and resolves write faults.
//!
//! On the first write to a protected page in an epoch: copy the page's pre-image (its
//! contents at the newest snapshot) into a shadow slot stamped with that version, copy
//! the following still-protected pages of the same range the same way, as many as the
//! adaptive window allows (see `fault_window`), then remove the protection from the whole run with one ioctl, which wakes the
//! writer. Faults that arrive during a protect pass are held for the pass to resolve.
//!
//! This thread runs on its own stack with every signal blocked, allocates nothing, and
//! touches tracked memory only through `process_vm_readv`.

use crate::base::page::PAGE;
use crate::base::range::Range;
use crate::engine::uffd::{Event, Uffd};
use crate::engine::{self, Engine, MAX_RUN};
use crate::stats;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, Ordering};
use memshadow_format::stats::Counter;

static BUDGET_SAID: AtomicBool = AtomicBool::new(false);

/// The fault thread's body; `arg` is the userfaultfd descriptor. It also serves the
/// host threads' requests to save pages before they discard them (see `preserve`).
pub extern "C" fn serve(arg: *mut c_void) -> *mut c_void {
    let fd = arg as usize as i32;
    let kick = crate::engine::preserve::kick_fd();
    // SAFETY: the descriptor handed to this thread stays open while the engine runs;
    // the loop ends as soon as the engine's number is no longer it (a stop or a fork).
    let u = unsafe { Uffd::borrowed(fd) };
    let mut cpu = 0;
    let mut accounted = 0;
    while engine::uffd_fd() == fd {
        let now = engine::now_ns();
        if now - accounted > ACCOUNT_NS {
            // Reading the thread's CPU clock is a system call: not once per trap.
            crate::stats::account_cpu(&mut cpu);
            accounted = now;
        }
        let waiting = engine::with(|e| !e.retry.is_empty()).unwrap_or(false);
        let mut pfd = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: kick,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (a negative fd is ignored). With unprotects
        // waiting, poll briefly and retry.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, if waiting { 1 } else { 1000 }) };
        if let Some(lost) = lost_descriptor(fd, &pfd, n == 0) {
            engine::stop(lost);
            break;
        }
        if pfd[0].revents != 0 && handle_ready(&u) > 0 {
            spin_for_events(&u);
        } else {
            // Woken by the timeout: retry the unprotects the kernel refused.
            engine::with(|e| e.retry_unprotects());
        }
        if pfd[1].revents != 0 {
            crate::engine::preserve::serve(&mut || {
                read_events(&u);
            });
        }
    }
    core::ptr::null_mut()
}

/// Which of the fault thread's descriptors is no longer the shim's, if one is (see
/// `fds`): checked before reading from one that poll reported, and all of them when poll
/// timed out or a host thread found the wake-up pipe lost (`engine::revoke`). Every
/// read of events checks again (see `read_and_handle`).
fn lost_descriptor(uffd: i32, pfd: &[libc::pollfd; 2], timed_out: bool) -> Option<&'static str> {
    if (timed_out || pfd[0].revents != 0) && !crate::base::fds::verify(uffd) {
        return Some("the shim's userfaultfd descriptor");
    }
    if (timed_out || pfd[1].revents != 0 || engine::stopped())
        && !crate::engine::preserve::kick_intact()
    {
        return Some("the fault thread's wake-up pipe");
    }
    None
}

/// How often the fault thread adds its CPU time to the statistics.
const ACCOUNT_NS: u64 = 10_000_000;

/// How long the fault thread keeps looking for the next event after one, before it
/// sleeps in poll: traps come in bursts, and waking a sleeping thread on another CPU
/// costs more than the trap itself on a VM.
const SPIN_NS: u64 = 50_000;

/// Reads and handles events as they come for up to SPIN_NS after the last one.
fn spin_for_events(u: &Uffd) {
    let mut last = engine::now_ns();
    loop {
        if read_events(u) > 0 {
            last = engine::now_ns();
        } else if engine::now_ns() - last > SPIN_NS {
            return;
        } else {
            core::hint::spin_loop();
        }
    }
}

/// Set from before each read of events until the discard events it returned are
/// handled (see [`events_in_hand`]).
static IN_HAND: AtomicBool = AtomicBool::new(false);

/// Whether the fault thread is reading events or has read discard events it has not
/// handled yet. The kernel lets a thread that discards memory go on once its event is
/// read, so a protect pass must not open a version in between: it waits (see
/// `epoch::snapshot`). Handling a discard takes the engine lock, so a copy made under
/// that lock with this false before and after it raced no discard (see `prefetch`).
pub fn events_in_hand() -> bool {
    IN_HAND.load(Ordering::SeqCst)
}

/// In a forked child: the parent's fault thread may have been holding events when the
/// child was forked; the child's own fault thread starts with none.
pub fn forget_after_fork() {
    IN_HAND.store(false, Ordering::SeqCst);
}

/// Reads and handles the events queued now (without waiting); if there were any,
/// retries the unprotects the kernel refused while they were queued. Returns how many
/// it read.
fn read_events(u: &Uffd) -> usize {
    if !u.events_queued() {
        return 0;
    }
    handle_ready(u)
}

/// [`read_events`] once poll has said events are queued.
fn handle_ready(u: &Uffd) -> usize {
    let total = read_and_handle(u);
    if total > 0 {
        engine::with(|e| e.retry_unprotects());
    }
    total
}

fn read_and_handle(u: &Uffd) -> usize {
    let mut events = [Event::Unknown(0); 32];
    let mut total = 0;
    loop {
        // Before every read: a number the program took over (a raw close and reuse) may
        // carry its data, which the shim must never consume.
        if !crate::base::fds::verify(u.fd()) {
            engine::stop("the shim's userfaultfd descriptor");
            break;
        }
        IN_HAND.store(true, Ordering::SeqCst);
        let got = u.read_events(&mut events);
        // Discards first: their senders go on (and zap) as soon as the batch is read,
        // so a fault handled before them could copy a page already zapped and stamp
        // it with the version (see `Engine::mark_lost`).
        for ev in events[..got].iter().filter(|ev| !is_fault(ev)) {
            handle(*ev, u);
        }
        // Faults read but not handled yet change nothing behind anyone's back: they
        // are handled in whatever version is open by then, like those still queued.
        IN_HAND.store(false, Ordering::SeqCst);
        for ev in events[..got].iter().filter(|ev| is_fault(ev)) {
            handle(*ev, u);
        }
        total += got;
        if got < events.len() {
            break;
        }
    }
    total
}

fn is_fault(ev: &Event) -> bool {
    matches!(ev, Event::WriteFault { .. } | Event::OtherFault { .. })
}

fn handle(ev: Event, u: &Uffd) {
    match ev {
        Event::WriteFault { addr, tid } => {
            let t0 = engine::now_ns();
            let done = engine::with_for_faults(|e| {
                let mut pages = 0;
                if e.pass_running && e.held.len() < e.held.capacity() {
                    e.held.push(addr);
                    stats::add(Counter::HeldFaults, 1);
                } else {
                    if e.queued.holds(crate::base::page::floor(addr), e.version) {
                        stats::add(Counter::PrefetchLate, 1);
                    }
                    pages = e.resolve(addr);
                    e.record_trap(engine::now_ns() - t0);
                }
                (e.version, pages)
            });
            if let Some((v, pages)) = done {
                crate::engine::trap_notes::note_fault(addr, tid, v, t0, pages.max(1) as u32);
            }
        }
        Event::Unmap(r) | Event::Remove(r) => {
            // A held fault in a range that is going away must not be copied later; wake
            // its thread now (it retries: a zapped page is no longer protected, an
            // unmapped one faults as it would without the shim).
            let scan = engine::scan_number();
            engine::with(|e| {
                e.reprotect.note_changed(r, scan);
                if e.version > 0 {
                    e.mark_lost(r);
                }
                e.held.retain(|&a| {
                    let inside = r.start <= a && a < r.end;
                    if inside {
                        let _ = u.wake(Range::new(
                            crate::base::page::floor(a),
                            crate::base::page::floor(a) + PAGE,
                        ));
                    }
                    !inside
                })
            });
        }
        Event::Remap { from, to, len } => {
            // The pages moved with their protection state; the new address is protected
            // again by the next passes, and the old one is gone.
            let scan = engine::scan_number();
            let len = crate::base::page::ceil(len);
            engine::with(|e| {
                e.reprotect.note_changed(Range::new(to, to + len), scan);
                e.reprotect.note_changed(Range::new(from, from + len), scan);
                if e.version > 0 {
                    e.mark_lost(Range::new(from, from + len));
                }
            });
        }
        Event::OtherFault { .. } | Event::Unknown(_) => {}
    }
}

/// Most pages a trap on unpopulated memory makes writable at once (2 MiB).
const MAX_ZERO_RUN: usize = 512;

impl Engine {
    /// Resolves a write fault at `addr` in the newest epoch: shadow then unprotect. Returns
    /// how many pages from the faulting one on it unprotected.
    pub fn resolve(&mut self, addr: usize) -> usize {
        let page = crate::base::page::floor(addr);
        let v = self.version;
        let mut end = page + PAGE;
        if !self.incomplete {
            // The run to save: this page (unless already saved, or zapped in this epoch) and
            // the following pages of the same range up to the fault-around limit, stopping
            // at one already saved (it is unprotected already) or at the end of the range.
            let window = self.fault_window.window_for(page);
            let range_end = self
                .tracked_at(page, v)
                .map_or(page + PAGE, |t| t.range.end);
            let limit = range_end.min(page + window * PAGE);
            let first = if self.saved_or_lost(page) {
                page + PAGE
            } else {
                page
            };
            // The pages after this one that were never written hold zeros at this
            // version: recorded, not copied, and the whole run of them goes writable with
            // this page (a program filling fresh memory traps once per 2 MiB, not once per
            // fault-around window). This page itself the kernel filled with zeros to fault
            // on it: copied as usual.
            let after = page + PAGE;
            let zeros = self.zero_run(after, range_end);
            if zeros > 0 && self.mark_zero(Range::new(after, after + zeros * PAGE)) {
                stats::add(Counter::PagesZeroed, zeros as u64);
                end = after + zeros * PAGE;
                if first == page {
                    if let Some((_, copied)) = self.save_run(page, after, 1) {
                        stats::add(Counter::PagesCopied, copied as u64);
                    }
                }
            } else if let Some((_, copied)) = self.save_run(first, limit, MAX_RUN) {
                stats::add(Counter::PagesCopied, copied as u64);
                end = end.max(first + copied * PAGE);
            }
            self.fault_window.ran(end);
        }
        self.unprotect(Range::new(page, end));
        self.publish();
        (end - page) / PAGE
    }

    /// How many pages from `page` on (below `end`) are unpopulated and not saved or lost in
    /// this epoch: they held zeros at the newest version. A page zapped in this epoch (lost)
    /// held something else then, so the run stops there.
    fn zero_run(&self, page: usize, end: usize) -> usize {
        let n = crate::engine::pagemap::Pagemap::shared().run(page, end, MAX_ZERO_RUN, false);
        (0..n)
            .take_while(|&i| !self.saved_or_lost(page + i * PAGE))
            .count()
    }

    /// The shadow budget ran out with only the newest version left: that snapshot cannot be
    /// completed. Drop every version, unprotect everything, count it, and let the program
    /// run on; the next snapshot starts afresh.
    pub(super) fn give_up(&mut self) {
        self.abandon();
        // Said once: the program's stderr gets one line, the count keeps the rest.
        if !BUDGET_SAID.swap(true, Ordering::Relaxed) {
            crate::base::log::error!(
            "shadow budget exhausted: snapshot {} is incomplete and no version is readable; incomplete_snapshots counts the rest (raise MEMSHADOW_SHADOW_BUDGET_MB)",
            self.version
        );
        }
    }

    /// Marks the newest snapshot incomplete: every version is dropped, everything is
    /// unprotected (the next pass protects everything again), and it is counted.
    pub fn abandon(&mut self) {
        self.pool.clear();
        self.incomplete = true;
        self.reprotect.note_all();
        for i in 0..self.tracked.len() {
            let r = self.tracked[i].range;
            self.unprotect(r);
        }
        stats::add(Counter::IncompleteSnapshots, 1);
    }
}
