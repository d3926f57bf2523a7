//! The offline store commands (`log`, `restore`, `diff`, `verify`, `read STORE`) on
//! stores written through the library, against what the model process wrote.

mod common;
#[path = "../../store/tests/common/model.rs"]
mod model;
#[path = "../../store/tests/common/weed.rs"]
mod weed;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use memshadow_format::image::ImageReader;
use memshadow_format::store as layout;
use memshadow_store::Store;
use model::{Model, PAGE};

const LIMIT: Duration = Duration::from_secs(60);
const SEED: u64 = 31;
const VERSIONS: u64 = 12;

fn memshadow(args: &[&str]) -> Output {
    let mut c = Command::new(common::memshadow_bin());
    c.args(args);
    common::run_with_timeout(&mut c, LIMIT)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A store of versions 1..=VERSIONS of the model, in `dir/store`.
fn make_store(dir: &Path) -> String {
    let target = dir.join("store").to_str().unwrap().to_string();
    fill_store(&target);
    target
}

fn fill_store(target: &str) {
    let mut store = Store::create_or_open(target, PAGE as u32).unwrap();
    let mut m = Model::new();
    for v in 1..=VERSIONS {
        m.step(SEED, v);
        let changed = m.take_changed();
        store
            .record(&m.info(v), (v > 1).then(|| v - 1), &changed, &mut m)
            .unwrap();
    }
}

fn image_regions(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let mut r = ImageReader::new(&bytes[..]).unwrap();
    let mut out = Vec::new();
    while let Some(region) = r.next_region().unwrap() {
        let mut data = vec![0u8; region.len as usize];
        std::io::Read::read_exact(&mut r, &mut data).unwrap();
        out.push((region.start, data));
    }
    out
}

/// One `memshadow:` line on stderr, and the exit code.
fn one_line_failure(o: &Output, code: i32) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("memshadow: "), "{e}");
    e
}

#[test]
fn log_lists_every_version_with_totals() {
    let dir = common::temp_dir("slog");
    let store = make_store(dir.path());
    let o = memshadow(&["log", &store, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["versions"].as_array().unwrap();
    assert_eq!(rows.len() as u64, VERSIONS);
    let lib = Store::open(&store).unwrap().versions().unwrap();
    for (row, l) in rows.iter().zip(&lib) {
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "version",
                "time_ms",
                "changed_pages",
                "stored_bytes",
                "base",
                "crash"
            ]
        );
        // No version of this store was taken as the program died (the flight recorder's).
        assert!(row["crash"].is_null(), "{row}");
        assert_eq!(row["version"], l.version);
        assert_eq!(row["time_ms"], 1_000_000 + l.version * 1000);
        assert_eq!(row["changed_pages"], l.changed_pages);
        assert_eq!(row["stored_bytes"], l.stored_bytes);
        assert_eq!(row["base"], l.base.unwrap());
    }
    assert_eq!(rows[0]["base"], 1);
    let pages: u64 = lib.iter().map(|r| r.changed_pages).sum();
    let stored: u64 = lib.iter().map(|r| r.stored_bytes).sum();
    assert_eq!(v["totals"]["changed_pages"], pages);
    assert_eq!(v["totals"]["stored_bytes"], stored);
    let ratio = v["totals"]["compression_ratio"].as_f64().unwrap();
    assert!((ratio - (pages * PAGE) as f64 / stored as f64).abs() < 0.01);
    let o = memshadow(&["log", &store]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count() as u64, VERSIONS + 2, "{text}");
    assert!(text.starts_with(" VERSION  TIME"), "{text}");
    assert!(text.contains("1970-01-01T00:16:41.000Z"), "{text}");
    assert!(
        text.lines().last().unwrap().contains("compression ratio"),
        "{text}"
    );
}

#[test]
fn restore_by_version_and_by_time() {
    let dir = common::temp_dir("srestore");
    let store = make_store(dir.path());
    for (how, at, v) in [
        ("--version", "7", 7),
        ("--at", "1009500", 9),
        ("--at", "1970-01-01T00:16:44Z", 4),
        ("--at", "1970-01-01T01:16:44.999+01:00", 4),
        ("--at", "99999999999999", VERSIONS),
    ] {
        let out = dir.path().join(format!("img-{v}"));
        let o = memshadow(&["restore", &store, how, at, "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("restored version {v} ")),
            "{}",
            stderr(&o)
        );
        assert_eq!(
            image_regions(&out),
            Model::replay(SEED, v).image(),
            "{how} {at}"
        );
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let out = dir.path().join("none");
    let o = memshadow(&[
        "restore",
        &store,
        "--at",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = one_line_failure(&o, 2);
    assert!(e.contains("no version was taken at or before"), "{e}");
    let o = memshadow(&[
        "restore",
        &store,
        "--version",
        "99",
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = one_line_failure(&o, 2);
    assert!(e.contains("version 99 is not in the store"), "{e}");
    assert!(!out.exists());
    let o = memshadow(&[
        "restore",
        &store,
        "--at",
        "tomorrow",
        "-o",
        out.to_str().unwrap(),
    ]);
    one_line_failure(&o, 2);
}

#[test]
fn read_and_diff() {
    let dir = common::temp_dir("sread");
    let store = make_store(dir.path());
    let m = Model::replay(SEED, 6);
    let (start, len) = m.regions[0];
    let addr = start + 100;
    let n = len - 200;
    let out = dir.path().join("bytes");
    let o = memshadow(&[
        "read",
        &store,
        "--version",
        "6",
        &format!("{addr:#x}"),
        &n.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), m.bytes(addr, n));
    // To standard output too.
    let o = memshadow(&["read", &store, "--version", "6", &addr.to_string(), "64"]);
    assert_eq!(o.stdout, m.bytes(addr, 64));
    // Outside the regions: refused, nothing written.
    let bad = dir.path().join("bad");
    let o = memshadow(&[
        "read",
        &store,
        "--version",
        "6",
        &format!("{:#x}", start + len - 8),
        "4096",
        "--out",
        bad.to_str().unwrap(),
    ]);
    let e = one_line_failure(&o, 2);
    assert!(e.contains("not in the regions of version 6"), "{e}");
    assert!(!bad.exists());

    let o = memshadow(&["diff", &store, "5", "6", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let lib = Store::open(&store).unwrap().diff(5, 6).unwrap();
    assert_eq!(v["pages_differing"], lib.pages_differing);
    assert_eq!(v["bytes_changed"], lib.bytes_changed);
    assert!(lib.pages_differing > 0);
    assert_eq!(v["changed"].as_array().unwrap().len(), lib.changed.len());
    let o = memshadow(&["diff", &store, "5", "6"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains(&format!("{} page(s) differ", lib.pages_differing)),
        "{text}"
    );
}

#[test]
fn verify_names_the_damaged_object_and_the_versions_it_breaks() {
    let dir = common::temp_dir("sverify");
    let store = make_store(dir.path());
    let o = memshadow(&["verify", &store]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains(&format!("ok: {VERSIONS} version(s)")),
        "{text}"
    );
    // Damage the data of the newest version.
    let s = Store::open(&store).unwrap();
    let prefix = format!("data/{VERSIONS:020}-");
    let name = s
        .backend()
        .list(layout::DATA_DIR)
        .unwrap()
        .into_iter()
        .find(|x| x.0.starts_with(&prefix))
        .unwrap()
        .0;
    let path = Path::new(&store).join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[layout::DATA_HEADER_SIZE + 3] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let o = memshadow(&["verify", &store]);
    let e = one_line_failure(&o, 1);
    assert!(e.contains(&name), "{e}");
    assert!(e.contains(&format!("breaks version(s) {VERSIONS}")), "{e}");
    // The damaged version fails to restore and read; the others still do.
    let out = dir.path().join("img");
    let o = memshadow(&[
        "restore",
        &store,
        "--version",
        &VERSIONS.to_string(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = one_line_failure(&o, 1);
    assert!(e.contains("is damaged") && e.contains(&name), "{e}");
    assert!(!out.exists());
    let o = memshadow(&[
        "restore",
        &store,
        "--version",
        "3",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image_regions(&out), Model::replay(SEED, 3).image());
    // A newer format is refused clearly.
    let meta = Path::new(&store).join("STORE");
    let mut b = std::fs::read(&meta).unwrap();
    b[8] = 9;
    std::fs::write(&meta, &b).unwrap();
    let o = memshadow(&["log", &store]);
    let e = one_line_failure(&o, 1);
    assert!(e.contains("written by a newer memshadow"), "{e}");
    let o = memshadow(&["verify", &store]);
    one_line_failure(&o, 1);
}

#[test]
fn bad_targets_and_help() {
    let dir = common::temp_dir("sbad");
    let o = memshadow(&["log", dir.path().join("missing").to_str().unwrap()]);
    let e = one_line_failure(&o, 2);
    assert!(e.contains("is not a memshadow store"), "{e}");
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let o = memshadow(&["verify", dir.path().join("empty").to_str().unwrap()]);
    let e = one_line_failure(&o, 2);
    assert!(e.contains("is not a memshadow store"), "{e}");
    for cmd in ["log", "restore", "diff", "verify", "read"] {
        let o = memshadow(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}");
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains("Usage: memshadow"), "{cmd}: {text}");
    }
}

#[test]
fn the_commands_on_an_s3_store() {
    let weed = weed::Weed::start();
    let target = weed.target("cli");
    fill_store(&target);
    let o = memshadow(&["log", &target, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len() as u64, VERSIONS);
    let dir = common::temp_dir("ss3");
    let out = dir.path().join("img");
    let o = memshadow(&[
        "restore",
        &target,
        "--version",
        "8",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = Model::replay(SEED, 8);
    assert_eq!(image_regions(&out), m.image());
    let addr = m.regions[0].0 + 7;
    let o = memshadow(&["read", &target, "--version", "8", &addr.to_string(), "100"]);
    assert_eq!(o.stdout, m.bytes(addr, 100));
    let o = memshadow(&["verify", &target]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Damage on the server: verify names it.
    let s = Store::open(&target).unwrap();
    let name = layout::manifest_name(5);
    let mut b = s.backend().get(&name).unwrap();
    b[20] ^= 4;
    s.backend().put_replace(&name, &b).unwrap();
    let o = memshadow(&["verify", &target]);
    let e = one_line_failure(&o, 1);
    assert!(e.contains(&name), "{e}");
    let o = memshadow(&[
        "restore",
        &target,
        "--version",
        "4",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}
