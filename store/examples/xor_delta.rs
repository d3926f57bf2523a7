//! Measures what deltas finer than a page would store: for each version of a store
//! recorded as a delta, the pages whose bytes differ from its previous version, stored
//! as each page compressed alone (what the store does) against the page XOR its previous
//! bytes compressed (mostly zeroes where a page had a few words written).
//!
//! Usage: cargo run --release -p memshadow-store --example xor_delta -- STORE

use memshadow_store::Store;

/// A version's regions read whole: (first address, bytes).
type Image = Vec<(u64, Vec<u8>)>;

fn main() {
    let target = std::env::args().nth(1).expect("usage: xor_delta STORE");
    let mut store = Store::open(&target).expect("open the store");
    let ps = store.page_size() as usize;
    let versions = store.versions().expect("list the versions");
    let mut zstd = zstd::bulk::Compressor::new(1).expect("zstd");
    println!("version | prev | pages differing | whole pages, zstd-1 (bytes) | page XOR previous, zstd-1 (bytes) | ratio");
    let mut prev: Option<(u64, Image)> = None;
    for v in versions {
        let regions = store.regions(v.version).expect("regions");
        let image: Image = regions
            .iter()
            .map(|&(s, l)| (s, store.read(v.version, s, l).expect("read")))
            .collect();
        if let Some((pv, before)) = &prev {
            let (mut differing, mut whole, mut xored) = (0u64, 0u64, 0u64);
            for (start, bytes) in &image {
                let Some((_, old)) = before
                    .iter()
                    .find(|(s, b)| s == start && b.len() == bytes.len())
                else {
                    continue;
                };
                for (new, old) in bytes.chunks(ps).zip(old.chunks(ps)) {
                    if new == old {
                        continue;
                    }
                    differing += 1;
                    whole += zstd.compress(new).expect("compress").len().min(ps) as u64;
                    let x: Vec<u8> = new.iter().zip(old).map(|(a, b)| a ^ b).collect();
                    xored += zstd.compress(&x).expect("compress").len().min(ps) as u64;
                }
            }
            println!(
                "{} | {pv} | {differing} | {whole} | {xored} | {:.3}",
                v.version,
                xored as f64 / whole.max(1) as f64
            );
        }
        prev = Some((v.version, image));
    }
}
