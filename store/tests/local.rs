//! The store on a local directory: round trips against a model, retention, damage,
//! newer formats, failed sources, permissions.

mod common;

use std::os::unix::fs::PermissionsExt;

use memshadow_store::{Store, StoreError};

fn target(dir: &tempfile::TempDir) -> String {
    dir.path().join("store").to_str().unwrap().to_string()
}

#[test]
fn round_trip_many_versions() {
    let dir = tempfile::tempdir().unwrap();
    common::round_trip(&target(&dir), 1, 90);
}

#[test]
fn retention_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    common::retention_while_writing(&target(&dir), 2);
}

#[test]
fn damage_in_each_kind_of_object() {
    let dir = tempfile::tempdir().unwrap();
    common::damage(&target(&dir), 3);
}

#[test]
fn a_failed_source_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    common::failed_source(&target(&dir));
}

#[test]
fn files_are_private_and_page_size_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let t = target(&dir);
    common::round_trip(&t, 4, 3);
    let mut stack = vec![dir.path().join("store")];
    while let Some(d) = stack.pop() {
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                assert_eq!(mode, 0o600, "{}", e.path().display());
            }
        }
    }
    assert!(matches!(
        Store::create_or_open(&t, 16384),
        Err(StoreError::PageSize {
            store: 4096,
            asked: 16384
        })
    ));
    let e = Store::open(dir.path().to_str().unwrap()).err().unwrap();
    assert!(matches!(e, StoreError::NotAStore(_)), "{e}");
    let e = Store::open(dir.path().join("nothing").to_str().unwrap())
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::NotAStore(_)), "{e}");
}

/// Fills pages with random bytes (incompressible), but the page at 0x100000 with
/// `first` bytes if given.
struct Pages(u64, Option<u8>);

impl memshadow_store::PageSource for Pages {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), memshadow_store::SourceError> {
        for (i, b) in buf.iter_mut().enumerate() {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = match self.1 {
                Some(f) if addr + (i as u64) < 0x101000 => f,
                _ => (self.0 >> 56) as u8,
            };
        }
        Ok(())
    }
}

#[test]
fn the_base_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create_or_open(&target(&dir), 4096).unwrap();
    let region = (0x100000u64, 64 * 4096u64);
    let info = |v: u64| memshadow_store::VersionInfo {
        version: v,
        time_ms: v,
        pid: 1,
        regions: vec![region],
        crash_signal: 0,
    };
    let one_page = [(region.0, 4096)];
    let mut bases = Vec::new();
    for v in 1..=70 {
        let r = store
            .record(
                &info(v),
                Some(v - 1),
                &one_page,
                &mut Pages(v, Some(v as u8)),
            )
            .unwrap();
        if r.base {
            bases.push(v);
        } else {
            assert_eq!(r.pages, 1);
        }
    }
    // The first, then after 64 deltas.
    assert_eq!(bases, [1, 66]);
    // `since` not the newest version: a base.
    assert!(
        store
            .record(&info(71), Some(69), &one_page, &mut Pages(1, None))
            .unwrap()
            .base
    );
    // Deltas rewriting every page: the second one's bytes pass the base's.
    let all = [(region.0, region.1)];
    let kinds: Vec<bool> = (72..=75)
        .map(|v| {
            store
                .record(&info(v), Some(v - 1), &all, &mut Pages(v, None))
                .unwrap()
                .base
        })
        .collect();
    assert_eq!(kinds, [false, false, true, false]);
    let rows = store.versions().unwrap();
    assert_eq!(rows.last().unwrap().base, Some(74));
    assert_eq!(rows[64].base, Some(1));
    assert_eq!(rows[65].base, Some(66));
    // Every version reads back what was written last to its first page.
    for v in [1, 30, 65, 66, 70] {
        assert_eq!(store.read(v, region.0, 4096).unwrap(), vec![v as u8; 4096]);
    }
    assert!(store.verify().unwrap().ok());
    // Regions out of order, overlapping or not whole pages are refused before any read.
    for regions in [
        vec![(0x200000u64, 4096u64), (0x100000, 4096)],
        vec![(0x100000, 8192), (0x101000, 4096)],
        vec![(0x100000, 100)],
    ] {
        let bad = memshadow_store::VersionInfo {
            version: 90,
            time_ms: 0,
            pid: 1,
            regions,
            crash_signal: 0,
        };
        let e = store
            .record(&bad, None, &[], &mut Pages(0, None))
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    }
    assert_eq!(store.version_numbers().unwrap().len(), 75);
}

#[test]
fn a_crash_mark_survives_a_rebase_and_verify_checks_version_statistics() {
    use memshadow_format::version_stats;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create_or_open(&target(&dir), 4096).unwrap();
    let region = (0x100000u64, 4 * 4096u64);
    let info = |v: u64, crash_signal: u32| memshadow_store::VersionInfo {
        version: v,
        time_ms: v,
        pid: 1,
        regions: vec![region],
        crash_signal,
    };
    let one_page = [(region.0, 4096)];
    for v in 1..=3 {
        let crash = if v == 3 { 11 } else { 0 };
        store
            .record(
                &info(v, crash),
                v.checked_sub(1).filter(|&p| p > 0),
                &one_page,
                &mut Pages(v, Some(v as u8)),
            )
            .unwrap();
    }
    let marks = |store: &mut Store| -> Vec<(u64, u32)> {
        store
            .versions()
            .unwrap()
            .iter()
            .map(|r| (r.version, r.crash_signal))
            .collect()
    };
    assert_eq!(marks(&mut store), [(1, 0), (2, 0), (3, 11)]);
    // Keeping the newest rewrites version 3 as a base: the mark stays.
    store.retain(Some(1), None).unwrap();
    assert_eq!(marks(&mut store), [(3, 11)]);
    let mut reopened = Store::open(&target(&dir)).unwrap();
    assert_eq!(marks(&mut reopened), [(3, 11)]);

    // Statistics beside the version: checked by verify, damage named, no version broken.
    let name = version_stats::version_stats_name(3);
    let good = version_stats::encode(3, &[("traps", 5)]);
    store.backend().put_replace(&name, &good).unwrap();
    let report = store.verify().unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.version_stats, 1);
    let mut bad = good.clone();
    bad[26] ^= 1;
    store.backend().put_replace(&name, &bad).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(report.damage[0].object, name);
    assert!(report.damage[0].breaks.is_empty(), "{report:?}");
    assert!(
        report.damage[0].problem.contains("memshadow report"),
        "{report:?}"
    );
    // Another version's statistics under this version's name.
    store
        .backend()
        .put_replace(&name, &version_stats::encode(2, &[("traps", 5)]))
        .unwrap();
    let report = store.verify().unwrap();
    assert!(
        report.damage[0].problem.contains("names version 2"),
        "{report:?}"
    );
}

/// An attempt that stored a version's context and then failed (the process exited
/// before its pages were read) takes the context back: it is no orphan for `verify`,
/// which retention could not remove while it is newer than the newest version. A
/// published version's context stays.
#[test]
fn an_abandoned_attempt_leaves_no_orphan_and_a_published_version_keeps_its_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create_or_open(&target(&dir), 4096).unwrap();
    let region = (0x100000u64, 4096u64);
    let context = |version: u64| memshadow_format::store_context::CoreContext {
        version,
        pid: 1,
        ..Default::default()
    };
    store.put_context(&context(1)).unwrap();
    let info = memshadow_store::VersionInfo {
        version: 1,
        time_ms: 1,
        pid: 1,
        regions: vec![region],
        crash_signal: 0,
    };
    store
        .record(&info, None, &[(region.0, 4096)], &mut Pages(1, Some(1)))
        .unwrap();
    store.put_context(&context(2)).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(
        report.orphans,
        ["context/00000000000000000002"],
        "{report:?}"
    );

    store.abandon(2).unwrap();
    store.abandon(1).unwrap();
    let report = store.verify().unwrap();
    assert!(report.ok() && report.orphans.is_empty(), "{report:?}");
    assert_eq!(report.contexts, 1, "{report:?}");
    assert!(store.context(1).unwrap().is_some());
    assert!(store.context(2).unwrap().is_none());
}
