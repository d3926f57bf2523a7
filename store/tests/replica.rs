//! Replicas through the library (`memshadow_store::replica`), on stores of the model
//! process: what the source's retention does to a sync in progress.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::model::{Model, PAGE};
use common::parse_image;
use memshadow_store::replica::Follower;
use memshadow_store::Store;

const SEED: u64 = 77;

fn record(store: &mut Store, m: &mut Model, v: u64) {
    m.step(SEED, v);
    let changed = m.take_changed();
    store
        .record(&m.info(v), (v > 1).then(|| v - 1), &changed, m)
        .unwrap();
}

fn restored(target: &str, v: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    Store::open(target).unwrap().restore(v, &mut out).unwrap();
    parse_image(&out)
}

#[test]
fn a_version_dropped_while_syncing_moves_the_follower_to_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src").to_str().unwrap().to_string();
    let rep = dir.path().join("rep");
    let mut store = Store::create_or_open(&src, PAGE as u32).unwrap();
    // Small objects: the version's pages are in many runs, fetched one by one.
    store.set_object_limit(8 * PAGE);
    let mut m = Model::new();
    for v in 1..=10 {
        record(&mut store, &mut m, v);
    }
    let mut f = Follower::open(&src, &rep).unwrap();
    let changed = Rc::new(RefCell::new(Some((store, m))));
    let hook = changed.clone();
    // After the first run fetched: three more versions, and retention keeps only two
    // (1-11, and the data only they used, go).
    f.between_fetches = Some(Box::new(move || {
        if let Some((mut store, mut m)) = hook.borrow_mut().take() {
            for v in 11..=13 {
                record(&mut store, &mut m, v);
            }
            let out = store.retain(Some(2), None).unwrap();
            assert!(out.dropped.contains(&10), "{out:?}");
        }
    }));
    let v = f.sync(None).unwrap();
    assert!(changed.borrow().is_none(), "the hook never ran");
    assert_eq!(v, 13, "{:?}", f.metrics);
    assert!(f.metrics.retargets >= 1, "{:?}", f.metrics);
    let want = Model::replay(SEED, 13).image();
    assert_eq!(restored(rep.to_str().unwrap(), 13), want);
    assert_eq!(restored(&src, 13), want);
    let report = Store::open(rep.to_str().unwrap())
        .unwrap()
        .verify()
        .unwrap();
    assert!(report.ok() && report.orphans.is_empty(), "{report:?}");
}

/// Pages of a region at `BASE`: `fill(page index)` gives each page's bytes.
struct Pages<F: Fn(u64) -> Vec<u8>>(F);

const BASE: u64 = 0x7000_0000;
const PS: usize = PAGE as usize;

impl<F: Fn(u64) -> Vec<u8>> memshadow_store::PageSource for Pages<F> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), memshadow_store::SourceError> {
        for (i, page) in buf.chunks_mut(PS).enumerate() {
            page.copy_from_slice(&(self.0)((addr - BASE) / PAGE + i as u64));
        }
        Ok(())
    }
}

fn random_page(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..PS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A run of `gap` pages (compressible, or incompressible with `uniform`), then `want`
/// incompressible ones, the first part replaced by version 2: a follower syncs version
/// 2 (exact, verified) and says what it fetched.
fn sync_after_a_replaced_stretch(
    gap: u64,
    want: u64,
    uniform: bool,
) -> memshadow_store::replica::Metrics {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src").to_str().unwrap().to_string();
    let rep = dir.path().join("rep");
    let mut store = Store::create_or_open(&src, PAGE as u32).unwrap();
    let pages = gap + want;
    let info = |version: u64| memshadow_store::VersionInfo {
        version,
        time_ms: version,
        pid: 1,
        regions: vec![(BASE, pages * PAGE)],
        crash_signal: 0,
    };
    let first = |i: u64| match (i < gap, uniform) {
        (true, false) => vec![i as u8; PS],
        _ => random_page(i),
    };
    let second = |i: u64| match (i < gap, uniform) {
        (true, false) => vec![!(i as u8); PS],
        (true, true) => random_page(i + pages),
        _ => random_page(i),
    };
    store
        .record(&info(1), None, &[], &mut Pages(first))
        .unwrap();
    store
        .record(&info(2), Some(1), &[(BASE, gap * PAGE)], &mut Pages(second))
        .unwrap();
    let mut f = Follower::open(&src, &rep).unwrap();
    assert_eq!(f.sync(None).unwrap(), 2);
    let want: Vec<u8> = (0..pages).flat_map(second).collect();
    let got = Store::open(rep.to_str().unwrap())
        .unwrap()
        .read(2, BASE, pages * PAGE)
        .unwrap();
    assert!(got == want, "the replica's version 2 differs");
    let report = Store::open(rep.to_str().unwrap())
        .unwrap()
        .verify()
        .unwrap();
    assert!(report.ok(), "{report:?}");
    f.metrics.clone()
}

/// A stretch of a run that a later version replaced: records of unequal sizes are read
/// through in the same request as the wanted ones (no header requested one by one: on
/// an object store each is a request); records that all take a page and a header are at
/// known offsets and skipped unread. Each declared version is exact.
#[test]
fn replaced_stretches_are_read_through_or_skipped_unread_and_the_version_is_exact() {
    let mixed = sync_after_a_replaced_stretch(128, 128, false);
    assert_eq!(mixed.header_reads, 0, "{mixed:?}");
    let uniform = sync_after_a_replaced_stretch(128, 128, true);
    assert_eq!(uniform.header_reads, 0, "{uniform:?}");
    assert_eq!(uniform.unneeded_bytes, 0, "{uniform:?}");
    assert!(
        uniform.sync_bytes * 10 <= uniform.image_bytes * 11,
        "fetched {} for an image of {}: {uniform:?}",
        uniform.sync_bytes,
        uniform.image_bytes
    );
}
