//! The program the demo runs under the shim: a few seconds of ordinary allocation
//! through the system allocator, which the shim interposes, and one small piece of
//! state that changes over time: a buffer rewritten every 100 ms with its generation.
//!
//! Started by the demo, it is told a report file in [`REPORT_ENV`]: it writes the
//! buffer's address and length there (`buffer ADDR LEN`), and `waiting` once its phases
//! are over; then it keeps rewriting the buffer until the demo, having read its past,
//! sends SIGUSR1 (or [`WAIT_AT_MOST`] passes). Run without it, it just runs and exits.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Environment variable naming the file the workload reports to (set by the demo).
pub const REPORT_ENV: &str = "MEMSHADOW_DEMO_REPORT";
/// Size of the generation buffer.
pub const GENERATION_LEN: usize = 64;
/// How often the generation buffer is rewritten.
const GENERATION_EVERY: Duration = Duration::from_millis(100);
/// The longest the workload waits for the demo at the end.
const WAIT_AT_MOST: Duration = Duration::from_secs(10);
/// Value of the phase after the last one: waiting for the demo.
const WAITING: u8 = 5;

const CHURN_THREADS: u64 = 4;
const BIG_BUFFER: usize = 64 << 20;
const PAGE: usize = 4096;

fn say(line: &str) {
    println!("  workload: {line}");
}

/// A small xorshift generator: sizes only need to vary, not to be good random numbers.
struct Sizes(u64);

impl Sizes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Mostly small blocks, some medium, now and then a 1-8 MiB buffer.
    fn size(&mut self) -> usize {
        let r = self.next();
        let size = match r % 1000 {
            0..=899 => 8 + r % 512,
            900..=997 => 4096 + r % (64 << 10),
            _ => (1 << 20) + r % (7 << 20),
        };
        size as usize
    }
}

/// Allocates and frees blocks of mixed sizes until `until`, keeping a window alive.
fn churn(seed: u64, until: Instant) -> u64 {
    let mut sizes = Sizes(0x9e37_79b9_7f4a_7c15 ^ (seed + 1));
    let mut window: Vec<Vec<u8>> = vec![Vec::new(); 1024];
    let mut allocated = 0u64;
    while Instant::now() < until {
        for _ in 0..256 {
            let size = sizes.size();
            let slot = (sizes.next() % window.len() as u64) as usize;
            // Write the block so that it really occupies memory.
            window[slot] = vec![seed as u8; size];
            allocated += size as u64;
        }
        let text: Vec<String> = (0..64).map(|i| format!("item-{seed}-{i}")).collect();
        black_box(&text);
    }
    allocated
}

/// What the workload tells the demo, when the demo started it.
struct Report {
    file: File,
    /// Receives the demo's SIGUSR1 (blocked in every thread of the workload).
    signals: SignalFd,
}

impl Report {
    /// Opens the report file named in [`REPORT_ENV`], if any, and blocks SIGUSR1 (in
    /// this thread and the threads it starts later) so that it is kept for the wait.
    fn open() -> Option<Report> {
        let path = std::env::var_os(REPORT_ENV).filter(|p| !p.is_empty())?;
        let opened = OpenOptions::new().append(true).open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                say(&format!(
                    "cannot open the report file {}: {e}",
                    std::path::Path::new(&path).display()
                ));
                return None;
            }
        };
        let mut usr1 = SigSet::empty();
        usr1.add(Signal::SIGUSR1);
        let signals = usr1
            .thread_block()
            .and_then(|()| SignalFd::with_flags(&usr1, SfdFlags::SFD_CLOEXEC))
            .map_err(|e| say(&format!("cannot wait for SIGUSR1: {e}")))
            .ok()?;
        Some(Report { file, signals })
    }

    /// Appends `line` (one write, so the demo never sees half of it).
    fn tell(&mut self, line: &str) {
        if let Err(e) = self.file.write_all(format!("{line}\n").as_bytes()) {
            say(&format!("cannot write the report file: {e}"));
        }
    }

    /// Waits for SIGUSR1, at most [`WAIT_AT_MOST`]; true if it came.
    fn wait(&self) -> bool {
        let until = Instant::now() + WAIT_AT_MOST;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return false,
                Ok(_) => return matches!(self.signals.read_signal(), Ok(Some(_))),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    say(&format!("cannot wait for SIGUSR1: {e}"));
                    return false;
                }
            }
        }
    }
}

fn phase_name(phase: u8) -> String {
    match phase {
        WAITING => "waiting".to_string(),
        p => format!("phase {p}/4"),
    }
}

/// Rewrites `buffer` every [`GENERATION_EVERY`] with its generation, the time since
/// `started` and the phase, until `stop`.
fn rewrite_generations(
    mut buffer: Box<[u8]>,
    phase: &AtomicU8,
    stop: &AtomicBool,
    started: Instant,
) {
    let mut generation = 0u64;
    while !stop.load(Ordering::Acquire) {
        generation += 1;
        let text = format!(
            "generation {generation} at {:.1} s, {}",
            started.elapsed().as_secs_f64(),
            phase_name(phase.load(Ordering::Acquire))
        );
        let mut next = [0u8; GENERATION_LEN];
        let n = text.len().min(GENERATION_LEN);
        next[..n].copy_from_slice(&text.as_bytes()[..n]);
        buffer.copy_from_slice(&next);
        black_box(&mut buffer);
        thread::sleep(GENERATION_EVERY);
    }
}

pub fn run() -> i32 {
    let started = Instant::now();
    // Before any thread starts, so that they all inherit SIGUSR1 blocked.
    let mut report = Report::open();
    // Allocated here, on the main thread, so it lives in malloc's main heap.
    let buffer = vec![0u8; GENERATION_LEN].into_boxed_slice();
    let addr = buffer.as_ptr() as usize;
    say(&format!(
        "keeps \"generation N at T s, phase P\" in a {GENERATION_LEN}-byte buffer at {addr:#x}, rewritten every {} ms",
        GENERATION_EVERY.as_millis()
    ));
    if let Some(r) = &mut report {
        r.tell(&format!("buffer {addr:#x} {GENERATION_LEN}"));
    }
    let phase = AtomicU8::new(1);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| rewrite_generations(buffer, &phase, &stop, started));
        phases(&phase);
        if let Some(r) = &mut report {
            phase.store(WAITING, Ordering::Release);
            say("done; still rewriting the buffer while the demo reads its past");
            r.tell("waiting");
            if !r.wait() {
                say("the demo did not answer; exiting");
            }
        }
        stop.store(true, Ordering::Release);
    });
    0
}

/// The four phases of allocation, announcing each in `phase`.
fn phases(phase: &AtomicU8) {
    say(&format!(
        "phase 1/4: {CHURN_THREADS} threads allocate and free blocks of mixed sizes (some 1-8 MiB)"
    ));
    let until = Instant::now() + Duration::from_millis(1200);
    let total: u64 = thread::scope(|s| {
        let threads: Vec<_> = (0..CHURN_THREADS)
            .map(|t| s.spawn(move || churn(t, until)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or(0)).sum()
    });
    say(&format!(
        "phase 1 done: the threads allocated {} MiB in all",
        crate::report::thousands(total >> 20)
    ));

    phase.store(2, Ordering::Release);
    say("phase 2/4: a map grows to 200,000 entries, then shrinks back");
    let mut map: HashMap<u64, String> = HashMap::new();
    for i in 0..200_000u64 {
        map.insert(i, format!("value number {i}"));
    }
    thread::sleep(Duration::from_millis(400));
    map.retain(|k, _| k % 100 == 0);
    map.shrink_to_fit();
    thread::sleep(Duration::from_millis(300));

    phase.store(3, Ordering::Release);
    say("phase 3/4: one 64 MiB buffer, written a few MiB at a time");
    let mut big = vec![0u8; BIG_BUFFER];
    for (i, chunk) in big.chunks_mut(4 << 20).enumerate() {
        for page in chunk.chunks_mut(PAGE) {
            page[0] = i as u8 + 1;
        }
        thread::sleep(Duration::from_millis(60));
    }
    black_box(&big);

    phase.store(4, Ordering::Release);
    say("phase 4/4: everything is freed");
    drop(big);
    drop(map);
    thread::sleep(Duration::from_millis(300));
}
