//! How many pages a trap saves and unprotects: the adaptive fault-around window.
//!
//! A trap costs a round trip through the fault thread whatever it copies, so a writer
//! that moves through memory in order should trap once per large run; but a write that
//! lands at a random place (a free list link, a hash table slot) makes a large run a
//! waste of copies. Like the kernel's readahead, each stream of traps starts with a
//! small window and grows it while its traps keep landing just past the previous run;
//! a trap anywhere else starts a new stream (the least recently used one is replaced).
//! `MEMSHADOW_FAULT_AROUND` is the largest window.

use crate::base::page::PAGE;

/// The window of a new stream, in pages.
pub const FIRST_WINDOW: usize = 4;
/// How much a continued stream's window grows per trap.
const GROWTH: usize = 4;
/// Streams followed at once (one per writer moving in order).
const STREAMS: usize = 8;

#[derive(Clone, Copy)]
struct Stream {
    /// The first page after the stream's last run.
    next: usize,
    /// The last run's window, in pages.
    window: usize,
    /// When it was last used (a trap count).
    used: u64,
}

pub struct FaultWindow {
    max: usize,
    streams: [Stream; STREAMS],
    traps: u64,
    /// The stream of the latest trap.
    current: usize,
}

impl FaultWindow {
    /// Windows of at most `max` pages (at least 1).
    pub fn new(max: usize) -> FaultWindow {
        FaultWindow {
            max: max.max(1),
            streams: [Stream {
                next: usize::MAX,
                window: 0,
                used: 0,
            }; STREAMS],
            traps: 0,
            current: 0,
        }
    }

    /// The window, in pages, for a trap at `page`. The trap continues a stream if it
    /// lands at or a little past the page after that stream's last run.
    pub fn window_for(&mut self, page: usize) -> usize {
        self.traps += 1;
        let continued = self.streams.iter().position(|s| {
            s.next != usize::MAX && page >= s.next && page - s.next <= s.window * PAGE
        });
        match continued {
            Some(i) => {
                self.current = i;
                let s = &mut self.streams[i];
                s.window = (s.window * GROWTH).min(self.max);
                s.used = self.traps;
                s.window
            }
            None => {
                let i = (0..STREAMS)
                    .min_by_key(|&i| self.streams[i].used)
                    .expect("STREAMS > 0");
                self.streams[i] = Stream {
                    next: usize::MAX,
                    window: FIRST_WINDOW.min(self.max),
                    used: self.traps,
                };
                self.current = i;
                self.streams[i].window
            }
        }
    }

    /// Records where the latest trap's run ended (`end`, exclusive).
    pub fn ran(&mut self, end: usize) {
        self.streams[self.current].next = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trap(w: &mut FaultWindow, page: usize) -> usize {
        let n = w.window_for(page);
        w.ran(page + n * PAGE);
        n
    }

    #[test]
    fn an_orderly_writer_grows_its_window_to_the_maximum() {
        let mut w = FaultWindow::new(64);
        let mut page = 0x10_0000;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let n = trap(&mut w, page);
            seen.push(n);
            page += n * PAGE;
        }
        assert_eq!(seen, vec![4, 16, 64, 64, 64]);
    }

    #[test]
    fn scattered_writes_keep_small_windows() {
        let mut w = FaultWindow::new(64);
        let mut x = 12345usize;
        for _ in 0..100 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let page = 0x1000_0000 + ((x >> 20) % 100_000) * 10 * PAGE;
            assert_eq!(trap(&mut w, page), FIRST_WINDOW);
        }
    }

    #[test]
    fn interleaved_streams_each_grow() {
        let mut w = FaultWindow::new(16);
        let (mut a, mut b) = (0x100_0000, 0x900_0000);
        let mut last = (0, 0);
        for _ in 0..4 {
            let n = trap(&mut w, a);
            a += n * PAGE;
            let m = trap(&mut w, b);
            b += m * PAGE;
            last = (n, m);
        }
        assert_eq!(last, (16, 16));
        // A window never exceeds the maximum, and the maximum may be below the start.
        let mut one = FaultWindow::new(1);
        assert_eq!(trap(&mut one, 0x1000), 1);
        assert_eq!(trap(&mut one, 0x2000), 1);
    }
}
