//! Scenarios run against a local directory and against a real S3 server.

#![allow(dead_code)]

pub mod crash;
pub mod model;
pub mod weed;

use std::collections::BTreeSet;
use std::time::Duration;

use memshadow_format::image::ImageReader;
use memshadow_format::store::{self as layout, DATA_HEADER_SIZE};
use memshadow_store::{PageSource, SourceError, Store, StoreError};
use model::{Model, Rng, PAGE};

/// The regions and bytes of a restored image.
pub fn parse_image(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut r = ImageReader::new(bytes).expect("an image");
    let mut out = Vec::new();
    while let Some(region) = r.next_region().expect("a complete image") {
        let mut data = vec![0u8; region.len as usize];
        std::io::Read::read_exact(&mut r, &mut data).expect("region bytes");
        out.push((region.start, data));
    }
    out
}

pub fn restore(store: &mut Store, v: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    store.restore(v, &mut out)?;
    Ok(parse_image(&out))
}

/// Records versions 1..=n of run `seed`; `since` is unknown for about one version in
/// twenty. Returns the model after the last.
pub fn record_run(store: &mut Store, seed: u64, n: u64, retain: Option<usize>) -> Model {
    let mut m = Model::new();
    let mut rng = Rng::new(seed ^ 77);
    for v in 1..=n {
        m.step(seed, v);
        let changed = m.take_changed();
        let since = (v > 1 && !rng.chance(5)).then(|| v - 1);
        let info = m.info(v);
        let r = store.record(&info, since, &changed, &mut m).unwrap();
        assert_eq!(r.version, v);
        if since.is_none() {
            assert!(
                r.base,
                "version {v} without a known previous version is a base"
            );
        }
        if let Some(k) = retain {
            store.retain(Some(k), None).unwrap();
        }
    }
    m
}

/// Every version of run `seed` in the store restores, reads and diffs as the model says.
pub fn check_run(store: &mut Store, seed: u64, n: u64) {
    let kept: BTreeSet<u64> = store.version_numbers().unwrap().into_iter().collect();
    let rows = store.versions().unwrap();
    assert_eq!(rows.len(), kept.len());
    let mut m = Model::new();
    let mut prev: Option<Model> = None;
    let mut rng = Rng::new(seed ^ 99);
    for v in 1..=n {
        m.step(seed, v);
        if !kept.contains(&v) {
            continue;
        }
        assert_eq!(restore(store, v).unwrap(), m.image(), "version {v}");
        // Unaligned reads, across pages.
        for _ in 0..4 {
            let (s, l) = m.regions[rng.below(m.regions.len() as u64) as usize];
            let off = rng.below(l);
            let len = 1 + rng.below(l - off);
            assert_eq!(
                store.read(v, s + off, len).unwrap(),
                m.bytes(s + off, len),
                "v{v}"
            );
        }
        // A range that leaves the regions is refused.
        let (s, l) = *m.regions.last().unwrap();
        assert!(matches!(
            store.read(v, s + l - 1, 2),
            Err(StoreError::NotInVersion { .. })
        ));
        let row = rows.iter().find(|r| r.version == v).unwrap();
        let base = row.base.expect("a chain that reaches a base");
        assert!(base <= v);
        assert!(
            kept.range(base..=v).count() <= layout::MAX_CHAIN_DELTAS + 1,
            "version {v}'s chain is too long"
        );
        assert_eq!(row.time_ms, m.info(v).time_ms);
        assert_eq!(store.version_at(row.time_ms).unwrap(), Some(v));
        assert_eq!(store.version_at(row.time_ms + 999).unwrap(), Some(v));
        if let Some(p) = &prev {
            let pv = v - 1;
            let d = store.diff(pv, v).unwrap();
            let mut pages = 0;
            let mut bytes = 0;
            for &(s, l) in &p.regions {
                for a in (s..s + l).step_by(PAGE as usize) {
                    let inside = m.regions.iter().any(|&(ms, ml)| a >= ms && a < ms + ml);
                    if inside {
                        let (x, y) = (p.bytes(a, PAGE), m.bytes(a, PAGE));
                        if x != y {
                            pages += 1;
                            bytes += x.iter().zip(&y).filter(|(a, b)| a != b).count() as u64;
                        }
                    }
                }
            }
            assert_eq!(
                (d.pages_differing, d.bytes_changed),
                (pages, bytes),
                "diff {pv} {v}"
            );
            let added: u64 = d.added.iter().map(|r| r.1).sum();
            let removed: u64 = d.removed.iter().map(|r| r.1).sum();
            let size = |x: &Model| x.regions.iter().map(|r| r.1).sum::<u64>();
            assert_eq!(
                size(&m) as i64 - size(p) as i64,
                added as i64 - removed as i64
            );
        }
        prev = kept.contains(&(v + 1)).then(|| m.clone());
    }
    assert_eq!(store.version_at(0).unwrap(), None);
}

/// Round trip over many versions with regions appearing, moving and going.
pub fn round_trip(target: &str, seed: u64, n: u64) {
    let mut store = Store::create_or_open(target, PAGE as u32).unwrap();
    record_run(&mut store, seed, n, None);
    assert_eq!(store.version_numbers().unwrap().len() as u64, n);
    // A fresh reader sees the same.
    let mut store = Store::open(target).unwrap();
    check_run(&mut store, seed, n);
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.damage);
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    assert_eq!(report.versions as u64, n);
    // Both kinds, and chains of several deltas.
    let rows = store.versions().unwrap();
    let bases = rows.iter().filter(|r| r.base == Some(r.version)).count();
    if n >= 20 {
        assert!(bases > 1 && bases < rows.len() / 2, "{bases} bases");
        assert!(rows.iter().any(|r| r.version - r.base.unwrap() >= 3));
    }
    // A published object is never overwritten by a new one (conditional put on S3).
    let name = layout::manifest_name(n);
    let before = store.backend().get(&name).unwrap();
    assert!(matches!(
        store.backend().put_new(&name, b"other"),
        Err(memshadow_store::BackendError::Exists(_))
    ));
    assert_eq!(store.backend().get(&name).unwrap(), before);
    // Versions must be recorded in order; a second writer of the same version loses.
    let mut m = Model::replay(seed, n);
    let info = m.info(n);
    assert!(matches!(
        store.record(&info, Some(n), &[], &mut m),
        Err(StoreError::Invalid(_))
    ));
}

/// Retention after every version keeps exactly the newest `keep`, all intact.
pub fn retention_while_writing(target: &str, seed: u64) {
    let mut store = Store::create_or_open(target, PAGE as u32).unwrap();
    let n = 30;
    record_run(&mut store, seed, n, Some(4));
    assert_eq!(store.version_numbers().unwrap(), [27, 28, 29, 30]);
    let mut store = Store::open(target).unwrap();
    check_run(&mut store, seed, n);
    let rows = store.versions().unwrap();
    assert_eq!(rows[0].base, Some(27), "the oldest kept version is a base");
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.damage);
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    // Only what the four manifests reference is left.
    let referenced: BTreeSet<String> = store
        .backend()
        .list(layout::DATA_DIR)
        .unwrap()
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert!(referenced.len() <= 8, "{referenced:?}");
    // keep_for: everything older than a day ago (the model's clock is 1970) goes but the
    // newest.
    let out = store
        .retain(None, Some(Duration::from_secs(86400)))
        .unwrap();
    assert_eq!(out.dropped, [27, 28, 29]);
    assert_eq!(store.version_numbers().unwrap(), [30]);
    let m = Model::replay(seed, n);
    assert_eq!(restore(&mut store, 30).unwrap(), m.image());
    assert!(store.verify().unwrap().ok());
}

/// Flips one byte of `name` (at `offset`, or the middle).
pub fn flip(store: &Store, name: &str, offset: Option<usize>) -> Vec<u8> {
    let orig = store.backend().get(name).unwrap();
    let mut b = orig.clone();
    let at = offset.unwrap_or(b.len() / 2);
    b[at] ^= 0x40;
    store.backend().put_replace(name, &b).unwrap();
    orig
}

/// Every kind of object damaged in turn: verify names it and what it breaks, reads of
/// the versions that need it fail (never give other bytes), the others read.
pub fn damage(target: &str, seed: u64) {
    let n = 10;
    {
        let mut store = Store::create_or_open(target, PAGE as u32).unwrap();
        let mut m = Model::new();
        for v in 1..=n {
            m.step(seed, v);
            let changed = m.take_changed();
            store
                .record(&m.info(v), (v > 1).then(|| v - 1), &changed, &mut m)
                .unwrap();
        }
    }
    let models: Vec<Model> = (0..=n).map(|v| Model::replay(seed, v)).collect();
    let mut store = Store::open(target).unwrap();
    let rows = store.versions().unwrap();
    // Every version builds on the one before (since = v - 1): the chain of w is
    // base(w)..=w, and damage to version v breaks the versions whose chain holds v.
    let base = |w: u64| rows[w as usize - 1].base.unwrap();
    let breaks_of = |v: u64| -> Vec<u64> { (v..=n).filter(|&w| base(w) <= v).collect() };
    let a_delta = (2..=n).rev().find(|&w| base(w) < w).expect("a delta");
    let a_base = (1..n)
        .find(|&w| base(w) == w && base(w + 1) == w)
        .expect("a base with a delta");
    let data_of = |store: &mut Store, v: u64| -> String {
        let list = store.backend().list(layout::DATA_DIR).unwrap();
        let prefix = format!("{}/{v:020}-", layout::DATA_DIR);
        list.into_iter()
            .find(|x| x.0.starts_with(&prefix))
            .expect("an object")
            .0
    };
    let cases: Vec<(String, Option<usize>, u64)> = vec![
        // (object, where, first version broken)
        (
            data_of(&mut store, a_delta),
            Some(DATA_HEADER_SIZE + 30),
            a_delta,
        ),
        (data_of(&mut store, 4), Some(DATA_HEADER_SIZE + 2), 4),
        (layout::manifest_name(8), None, 8),
        (data_of(&mut store, a_base), None, a_base),
        // The trailer: reads do not use it, verify does.
        (data_of(&mut store, 3), Some(usize::MAX), 3),
    ];
    for (name, at, first) in cases {
        let len = store.backend().get(&name).unwrap().len();
        let at = at.map(|a| a.min(len - 3));
        let orig = flip(&store, &name, at);
        let mut store = Store::open(target).unwrap();
        let report = store.verify().unwrap();
        assert!(!report.ok());
        assert_eq!(report.damage[0].object, name, "{:?}", report.damage);
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert!(report.orphans.is_empty(), "{:?}", report.orphans);
        let breaks = breaks_of(first);
        assert_eq!(report.damage[0].breaks, breaks, "{name}");
        let trailer = at == Some(len - 3);
        for v in 1..=n {
            let got = restore(&mut store, v);
            if !breaks.contains(&v) {
                assert_eq!(
                    got.unwrap(),
                    models[v as usize].image(),
                    "v{v} after {name}"
                );
            } else if v == first && !trailer {
                let e = got.expect_err("a damaged version must not restore");
                assert!(e.is_damage(), "{e}");
                assert!(e.to_string().contains(name.as_str()), "{e}");
            } else if let Ok(img) = got {
                // Later versions may not need the damaged page; never wrong bytes.
                assert_eq!(img, models[v as usize].image(), "v{v} after {name}");
            }
        }
        store.backend().put_replace(&name, &orig).unwrap();
        assert!(store.verify().unwrap().ok());
    }
    // STORE itself: the store no longer opens, and says why.
    let s = Store::open(target).unwrap();
    let orig = flip(&s, layout::META_NAME, Some(13));
    let e = Store::open(target).err().expect("refused");
    assert!(e.to_string().starts_with("STORE: checksum"), "{e}");
    s.backend().put_replace(layout::META_NAME, &orig).unwrap();
    // A newer format is refused clearly, in STORE and in a manifest.
    let mut newer = orig.clone();
    newer[8] = 2;
    s.backend().put_replace(layout::META_NAME, &newer).unwrap();
    let e = Store::open(target).err().expect("refused");
    assert!(e.to_string().contains("newer memshadow"), "{e}");
    s.backend().put_replace(layout::META_NAME, &orig).unwrap();
    let mname = layout::manifest_name(5);
    let morig = s.backend().get(&mname).unwrap();
    let mut m = morig.clone();
    m[8] = 9;
    s.backend().put_replace(&mname, &m).unwrap();
    let mut store = Store::open(target).unwrap();
    let e = store.read(5, models[5].regions[0].0, 1).unwrap_err();
    assert!(e.to_string().contains("newer memshadow"), "{e}");
    assert_eq!(
        store.read(4, models[4].regions[0].0, 1).unwrap(),
        models[4].bytes(models[4].regions[0].0, 1)
    );
    s.backend().put_replace(&mname, &morig).unwrap();
}

/// A source that fails after some pages.
struct Failing(u64);

impl PageSource for Failing {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        if self.0 == 0 {
            return Err(SourceError::Refused("gone".into()));
        }
        self.0 -= 1;
        buf.fill((addr >> 12) as u8);
        Ok(())
    }
}

/// A version whose pages cannot all be read is not published and leaves no data.
pub fn failed_source(target: &str) {
    let mut store = Store::create_or_open(target, PAGE as u32).unwrap();
    let info = memshadow_store::VersionInfo {
        version: 3,
        time_ms: 5,
        pid: 1,
        // Two objects' worth would take long; 3000 pages with a failure at the end.
        regions: vec![(0x10000, 3000 * PAGE)],
        crash_signal: 0,
    };
    store.set_object_limit(16 << 10);
    let e = store
        .record(&info, None, &[], &mut Failing(11))
        .unwrap_err();
    assert!(matches!(e, StoreError::Source { .. }), "{e}");
    assert!(store.version_numbers().unwrap().is_empty());
    assert!(store.backend().list(layout::DATA_DIR).unwrap().is_empty());
    store
        .record(&info, None, &[], &mut Failing(u64::MAX))
        .unwrap();
    assert!(store.backend().list(layout::DATA_DIR).unwrap().len() > 1);
    let second = 0x10000 + 256 * PAGE;
    assert_eq!(
        store.read(3, second + 5, 1).unwrap(),
        [(second >> 12) as u8]
    );
    let report = store.verify().unwrap();
    assert!(report.ok() && report.orphans.is_empty(), "{report:?}");
}
