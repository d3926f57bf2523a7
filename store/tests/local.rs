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
