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
