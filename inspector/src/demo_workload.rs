//! The program the demo runs under the shim: a few seconds of ordinary allocation
//! through the system allocator, which the shim interposes.

use std::collections::HashMap;
use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

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

pub fn run() -> i32 {
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

    say("phase 2/4: a map grows to 200,000 entries, then shrinks back");
    let mut map: HashMap<u64, String> = HashMap::new();
    for i in 0..200_000u64 {
        map.insert(i, format!("value number {i}"));
    }
    thread::sleep(Duration::from_millis(400));
    map.retain(|k, _| k % 100 == 0);
    map.shrink_to_fit();
    thread::sleep(Duration::from_millis(300));

    say("phase 3/4: one 64 MiB buffer, written a few MiB at a time");
    let mut big = vec![0u8; BIG_BUFFER];
    for (i, chunk) in big.chunks_mut(4 << 20).enumerate() {
        for page in chunk.chunks_mut(PAGE) {
            page[0] = i as u8 + 1;
        }
        thread::sleep(Duration::from_millis(60));
    }
    black_box(&big);

    say("phase 4/4: everything is freed");
    drop(big);
    drop(map);
    thread::sleep(Duration::from_millis(300));
    0
}
