//! Measures the store on a live process's memory: records its writable private mappings
//! (read through /proc/PID/mem) as one base version into a store, then reports the
//! compression, and what zstd-1 over runs of 16 pages would have given instead.
//!
//! Usage: cargo run --release -p memshadow-store --example measure -- PID STORE

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use memshadow_store::{PageSource, SourceError, Store, VersionInfo};

struct Mem(File);

impl PageSource for Mem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.0.read_exact_at(buf, addr).map_err(SourceError::Io)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pid: u32 = args[1].parse().expect("PID");
    let target = &args[2];
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut regions = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Writable private mappings that are anonymous or the heap.
        if f[1] != "rw-p" || (f.len() > 5 && f[5] != "[heap]") {
            continue;
        }
        let (s, e) = f[0].split_once('-').unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        regions.push((s, e - s));
    }
    let mem = File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut store = Store::create_or_open(target, 4096).unwrap();
    let info = VersionInfo {
        version: 1,
        time_ms: 0,
        pid,
        regions: regions.clone(),
        crash_signal: 0,
    };
    let t = Instant::now();
    let r = store
        .record(&info, None, &[], &mut Mem(mem.try_clone().unwrap()))
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let total: u64 = regions.iter().map(|r| r.1).sum();
    let mut zero = 0u64;
    let mut run_bytes = 0usize;
    let mut buf = vec![0u8; 16 * 4096];
    for &(s, l) in &regions {
        let mut a = s;
        while a < s + l {
            let n = (s + l - a).min(buf.len() as u64) as usize;
            mem.read_exact_at(&mut buf[..n], a).unwrap();
            zero += buf[..n]
                .chunks(4096)
                .filter(|p| p.iter().all(|&b| b == 0))
                .count() as u64;
            run_bytes += zstd::bulk::compress(&buf[..n], 1).unwrap().len();
            a += n as u64;
        }
    }
    let t = Instant::now();
    let mut out = Vec::new();
    store.restore(1, &mut out).unwrap();
    let restore = t.elapsed().as_secs_f64();
    println!(
        "{} regions, {:.1} MiB, {:.0}% zero pages; stored {} bytes: ratio {:.2} (record {:.2} s, {:.0} MiB/s; restore {:.2} s); zstd-1 over 16-page runs: ratio {:.2}",
        regions.len(),
        total as f64 / 1048576.0,
        100.0 * zero as f64 * 4096.0 / total as f64,
        r.stored_bytes,
        total as f64 / r.stored_bytes as f64,
        took,
        total as f64 / 1048576.0 / took,
        restore,
        total as f64 / run_bytes as f64
    );
}
