//! `memshadow report`: a store recorded from a shimmed C program becomes one HTML page
//! whose structure is checked (balanced SVG, every section, one heat-map cell per
//! version and range, no URL), which headless chromium draws (a screenshot that is not
//! blank), and a store without the per-version statistics (as recorded before they
//! were kept) gives a page that says they are absent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{aws_env, c_program, clean_env_in, finish, memshadow_bin, temp_dir};

#[path = "../../store/tests/common/weed.rs"]
mod weed;

/// `memshadow` with a clean environment, `MEMSHADOW_DIR=rt`, and the AWS_* variables a
/// test S3 server set, if any.
fn memshadow(rt: &Path) -> Command {
    let mut c = Command::new(memshadow_bin());
    clean_env_in(&mut c, rt);
    aws_env(&mut c);
    c
}

/// Records `snap_consistency` (four writer threads) for about 3 s, a version every
/// 100 ms, into `store` (fewer on a busy machine: the recorder gives way to the
/// program).
fn record(rt: &Path, store: impl AsRef<std::ffi::OsStr>) {
    let prog = c_program("snap_consistency");
    let mut c = memshadow(rt);
    // On shadows: the trap latency chart needs traps (under the default `auto` these
    // four scattered writers move to holders, where nothing traps).
    c.env("MEMSHADOW_BACKEND", "shadow")
        .arg("run")
        .arg("--record")
        .arg(store)
        .args(["--every", "100", "--"])
        .arg(&prog)
        .arg("3");
    let done = finish(&mut c, Duration::from_secs(60));
    assert!(done.status.success(), "the recording failed: {done:#?}");
}

fn report(rt: &Path, store: impl AsRef<std::ffi::OsStr>, out: &Path) -> String {
    let mut c = memshadow(rt);
    c.arg("report").arg(store).arg("--out").arg(out);
    let done = finish(&mut c, Duration::from_secs(60));
    assert!(done.status.success(), "report failed: {done:#?}");
    std::fs::read_to_string(out).expect("the report is written")
}

/// The versions `memshadow log --json` lists.
fn versions(rt: &Path, store: &Path) -> usize {
    let mut c = memshadow(rt);
    c.arg("log").arg(store).arg("--json");
    let done = finish(&mut c, Duration::from_secs(30));
    assert!(done.status.success(), "log failed: {done:#?}");
    let v: serde_json::Value = serde_json::from_str(&done.stdout).expect("log --json");
    v["versions"].as_array().expect("versions").len()
}

/// The text between `<section id="ID"` and its `</section>`.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}"));
    let end = html[start..].find("</section>").expect("section closed") + start;
    &html[start..end]
}

/// The value of attribute `name` in `tag`.
fn attr(tag: &str, name: &str) -> usize {
    let key = format!("{name}=\"");
    let at = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag:.200}"))
        + key.len();
    tag[at..]
        .split('"')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {name} in {tag:.200}"))
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("install chromium (Debian package chromium): this test looks at the report in it; CI installs it");
}

/// Screenshot of `page` by headless chromium, decoded: (width, height, RGBA bytes).
fn screenshot(page: &Path, dir: &Path) -> (u32, u32, Vec<u8>) {
    let png = dir.join("shot.png");
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,2000",
    ])
    .arg(format!("--user-data-dir={}", dir.join("profile").display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("file://{}", page.display()))
    .env("HOME", dir);
    let done = finish(&mut c, Duration::from_secs(120));
    assert!(
        done.status.success() && png.is_file(),
        "chromium took no screenshot: {done:#?}"
    );
    let decoder = png::Decoder::new(std::fs::File::open(&png).expect("open the screenshot"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    buf.truncate(info.buffer_size());
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgba)
}

#[test]
fn a_recorded_store_gives_a_page_with_every_chart_that_chromium_draws() {
    let rt = temp_dir("report");
    let store = rt.path().join("store");
    record(rt.path(), &store);
    let n = versions(rt.path(), &store);
    assert!(n >= 2, "only {n} versions recorded");
    let out = rt.path().join("report.html");
    let html = report(rt.path(), &store, &out);

    // Well-formed enough: balanced svg elements, every section, nothing from outside.
    assert!(html.starts_with("<!DOCTYPE html>"), "{html:.200}");
    assert!(html.trim_end().ends_with("</html>"));
    let opened = html.matches("<svg").count();
    assert_eq!(opened, html.matches("</svg>").count(), "unbalanced <svg>");
    assert!(opened >= 5, "{opened} charts");
    for id in ["heatmap", "timeline", "prefetch", "latency", "counters"] {
        section(&html, id);
    }
    for url in ["http://", "https://", "src=", "<script", "<link"] {
        assert!(!html.contains(url), "the page refers to {url:?}");
    }

    // One heat-map cell per version and range.
    let heat = section(&html, "heatmap");
    assert_eq!(attr(heat, "data-versions"), n);
    let ranges = attr(heat, "data-ranges");
    assert!(ranges >= 1);
    let cells_at = heat
        .find("<svg class=\"heatmap-cells\"")
        .expect("the cells' svg");
    let cells = &heat[cells_at..];
    let cells = &cells[..cells.find("</svg>").expect("closed")];
    assert_eq!(cells.matches("<rect").count(), n * ranges, "cells");

    // The statistics kept beside each version feed the prefetch and latency charts.
    for id in ["prefetch", "latency"] {
        let s = section(&html, id);
        assert!(!s.contains("Absent"), "{id} is absent:\n{s:.400}");
        assert!(s.contains("<svg"), "{id} has no chart");
    }
    assert!(section(&html, "counters").contains("trap_us_p99"));

    // Chromium draws it: a screenshot with a good share of non-white pixels in many
    // colours (the heat map alone has a dozen).
    let (w, h, rgba) = screenshot(&out, rt.path());
    assert!(w >= 1000 && h >= 1000, "{w}x{h}");
    let pixels = rgba.chunks(4);
    let inked = pixels.clone().filter(|p| p[..3] != [255, 255, 255]).count();
    let mut colours: Vec<[u8; 3]> = pixels.map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort_unstable();
    colours.dedup();
    let share = inked as f64 / (w as f64 * h as f64);
    assert!(
        share > 0.05,
        "the screenshot is nearly blank: {share:.3} inked"
    );
    assert!(colours.len() > 50, "only {} colours", colours.len());
}

#[test]
fn a_store_without_version_statistics_says_they_are_absent() {
    let rt = temp_dir("report-old");
    let store = rt.path().join("store");
    record(rt.path(), &store);
    // As recorded by a memshadow from before the statistics were kept.
    let mut removed = 0;
    for e in std::fs::read_dir(&store).expect("the store").flatten() {
        if e.file_name().to_string_lossy().starts_with("stats-") {
            std::fs::remove_file(e.path()).expect("remove");
            removed += 1;
        }
    }
    assert!(
        removed >= 2,
        "the recorder kept {removed} statistics objects"
    );
    let html = report(rt.path(), &store, &rt.path().join("old.html"));
    for id in ["prefetch", "latency"] {
        assert!(section(&html, id).contains("Absent"), "{id}");
    }
    assert!(section(&html, "counters").contains("Absent"));
    // The rest is there.
    assert!(section(&html, "heatmap").contains("<svg"));
    assert!(section(&html, "timeline").contains("<svg"));
}

#[test]
fn bad_report_requests_get_one_line() {
    let rt = temp_dir("report-bad");
    let out = rt.path().join("r.html");
    for (target, says) in [
        ("12345", "not a live process"),
        (
            rt.path().join("nothing").to_str().unwrap(),
            "is not a memshadow store",
        ),
    ] {
        let mut c = memshadow(rt.path());
        c.arg("report").arg(target).arg("--out").arg(&out);
        let done = finish(&mut c, Duration::from_secs(30));
        assert!(!done.status.success(), "{done:#?}");
        assert!(done.stderr_line().contains(says), "{done:#?}");
        assert!(!out.exists());
    }
}

#[test]
fn statistics_go_with_the_versions_retention_drops_and_the_store_verifies() {
    let rt = temp_dir("report-keep");
    let store = rt.path().join("store");
    let mut c = memshadow(rt.path());
    c.arg("run")
        .arg("--record")
        .arg(&store)
        .args(["--every", "100", "--keep", "2", "--"])
        .arg(c_program("snap_consistency"))
        .arg("3");
    let done = finish(&mut c, Duration::from_secs(60));
    assert!(done.status.success(), "the recording failed: {done:#?}");

    let mut c = memshadow(rt.path());
    c.arg("log").arg(&store).arg("--json");
    let done = finish(&mut c, Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_str(&done.stdout).expect("log --json");
    let mut kept: Vec<u64> = v["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|r| r["version"].as_u64().expect("version"))
        .collect();
    kept.sort_unstable();
    let mut with_stats: Vec<u64> = std::fs::read_dir(&store)
        .expect("the store")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("stats-")?.parse().ok())
        .collect();
    with_stats.sort_unstable();
    assert!(kept.len() <= 2, "{kept:?}");
    assert_eq!(
        with_stats, kept,
        "statistics kept for exactly the versions kept"
    );

    let mut c = memshadow(rt.path());
    c.arg("verify").arg(&store);
    let done = finish(&mut c, Duration::from_secs(30));
    assert!(done.status.success(), "verify: {done:#?}");
}

#[test]
fn a_store_on_s3_gives_the_same_page_with_its_statistics() {
    let server = weed::Weed::start();
    let target = server.target("report");
    let rt = temp_dir("report-s3");
    record(rt.path(), &target);
    let html = report(rt.path(), &target, &rt.path().join("s3.html"));
    let heat = section(&html, "heatmap");
    assert!(attr(heat, "data-versions") >= 2, "{heat:.300}");
    for id in ["prefetch", "latency"] {
        let s = section(&html, id);
        assert!(!s.contains("Absent"), "{id} is absent:\n{s:.400}");
    }
}
