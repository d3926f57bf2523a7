//! The store on a real S3 server (SeaweedFS `weed mini`, started here; never a mock):
//! round trip, retention, damage, a failed source, kill -9 of a writer. One server for
//! all of them, stopped at the end.

mod common;

#[test]
fn s3_store_on_seaweedfs() {
    let weed = common::weed::Weed::start();
    common::round_trip(&weed.target("round"), 21, 30);
    common::retention_while_writing(&weed.target("retain"), 22);
    common::damage(&weed.target("damage"), 23);
    common::failed_source(&weed.target("failed"));
    // A prefix is a store of its own: "round" is untouched by the others.
    let mut s = memshadow_store::Store::open(&weed.target("round")).unwrap();
    assert_eq!(s.version_numbers().unwrap().len(), 30);
    assert!(s.verify().unwrap().ok());
    let e = memshadow_store::Store::open(&weed.target("nothing"))
        .err()
        .unwrap();
    assert!(
        matches!(e, memshadow_store::StoreError::NotAStore(_)),
        "{e}"
    );
    common::crash::kill_writer(&weed.target("crash"), 24, 6, 4);
}
