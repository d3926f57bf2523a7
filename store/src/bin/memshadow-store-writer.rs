//! Test helper (not installed for users): records the model process of the store's
//! tests into a store, version after version, until killed. With `--retain N` it keeps
//! only the newest N versions as it goes. The tests kill it with SIGKILL at random
//! moments and check that every published version restores exactly.
//!
//! Usage: memshadow-store-writer TARGET SEED [--retain N] [--max VERSIONS]

#[path = "../../tests/common/model.rs"]
mod model;

use memshadow_store::Store;
use model::{Model, PAGE};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: memshadow-store-writer TARGET SEED [--retain N] [--max VERSIONS]");
        std::process::exit(2)
    };
    if args.len() < 3 {
        usage();
    }
    let target = &args[1];
    let seed: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let mut retain = None;
    let mut max = u64::MAX;
    let mut rest = args[3..].iter();
    while let Some(a) = rest.next() {
        let value = rest
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| usage());
        match a.as_str() {
            "--retain" => retain = Some(value as usize),
            "--max" => max = value,
            _ => usage(),
        }
    }
    let mut store = Store::create_or_open(target, PAGE as u32).unwrap_or_else(|e| {
        eprintln!("memshadow-store-writer: {e}");
        std::process::exit(1)
    });
    let newest = store
        .version_numbers()
        .map(|v| v.last().copied().unwrap_or(0))
        .unwrap_or_else(|e| {
            eprintln!("memshadow-store-writer: {e}");
            std::process::exit(1)
        });
    let mut m = Model::replay(seed, newest);
    for v in newest + 1..=max {
        m.step(seed, v);
        let changed = m.take_changed();
        // After a restart the changes since the newest stored version are not known to
        // a real recorder either: the first version is a base.
        let since = (v > newest + 1).then(|| v - 1);
        if let Err(e) = store.record(&m.info(v), since, &changed, &mut m) {
            eprintln!("memshadow-store-writer: version {v}: {e}");
            std::process::exit(1);
        }
        if let Some(n) = retain {
            if v % 5 == 0 {
                if let Err(e) = store.retain(Some(n), None) {
                    eprintln!("memshadow-store-writer: retain: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}
