//! `memshadow report STORE --out report.html`: one self-contained HTML page about a
//! recording, its charts inline SVG drawn with `plotters` (no script, no external URL):
//!
//! - a write heat map: the recorded address ranges (the union of every version's
//!   regions, cut into rows) against the versions, each cell coloured by the pages that
//!   version recorded in that range (a delta's pages are the ones written since the
//!   version before; a base records every page, and is marked);
//! - the version timeline: pages changed and bytes stored against time;
//! - prefetch hits and waste per version, and trap latency (the shim's p50, p99 and
//!   max) per version, from the statistics the recorder keeps beside each version
//!   (`memshadow_format::version_stats`; a store recorded before that has none, and the
//!   page says so);
//! - the counters: the store's totals and the newest statistics kept beside a version.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use memshadow_format::store::{manifest_name, Manifest};
use memshadow_format::version_stats;
use memshadow_store::{Store, VersionSummary};
use plotters::prelude::*;

use crate::cli::ReportArgs;
use crate::error::{Failure, Result};
use crate::report::{human_bytes, human_us, thousands};
use crate::safe_file::{self, SafeFile};

/// Width of every chart, pixels.
const WIDTH: u32 = 1100;
/// Most rows of the heat map (address ranges).
const MAX_ROWS: usize = 48;
/// Height of one heat-map row, pixels.
const ROW_H: u32 = 14;
/// Left margin of the heat map, for the range labels.
const LABEL_W: u32 = 230;

/// One version as the report uses it.
struct Version {
    summary: VersionSummary,
    base: bool,
    /// (first address, pages) of each run of pages it recorded.
    runs: Vec<(u64, u64)>,
    regions: Vec<(u64, u64)>,
    /// Its statistics, when the recorder kept them.
    stats: Option<Vec<(String, u64)>>,
}

impl Version {
    fn stat(&self, key: &str) -> Option<u64> {
        let stats = self.stats.as_ref()?;
        stats.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// A row of the heat map: `[start, end)`, in region `region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
    pub region: usize,
}

/// `memshadow report`.
pub fn report(args: ReportArgs) -> Result<i32> {
    if !args.target.is_empty() && args.target.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::usage(format!(
            "report reads a store, not a live process: record it first (memshadow record {} --to DIR), then memshadow report DIR --out {}",
            args.target,
            args.out.display()
        )));
    }
    let mut store =
        Store::open(&args.target).map_err(|e| Failure::runtime(format!("{}: {e}", args.target)))?;
    let versions = load(&mut store, &args.target)?;
    if versions.is_empty() {
        return Err(Failure::runtime(format!(
            "{}: the store holds no version yet",
            args.target
        )));
    }
    let page = render(&args.target, store.page_size(), &versions);
    write_out(&args.out, page.as_bytes())?;
    eprintln!(
        "memshadow: wrote {} ({} versions, {})",
        args.out.display(),
        versions.len(),
        human_bytes(page.len() as u64)
    );
    Ok(0)
}

fn write_out(path: &Path, bytes: &[u8]) -> Result<()> {
    let file =
        SafeFile::create(path).map_err(|e| Failure::runtime(safe_file::cannot_write(path, &e)))?;
    file.file()
        .write_all(bytes)
        .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))?;
    file.commit()
        .map_err(|e| Failure::runtime(safe_file::cannot_write(path, &e)))
}

fn load(store: &mut Store, target: &str) -> Result<Vec<Version>> {
    let fail = |e: &dyn std::fmt::Display| Failure::runtime(format!("{target}: {e}"));
    let summaries = store.versions().map_err(|e| fail(&e))?;
    let mut out = Vec::with_capacity(summaries.len());
    for summary in summaries {
        let v = summary.version;
        let name = manifest_name(v);
        let bytes = store.backend().get(&name).map_err(|e| fail(&e))?;
        let m = Manifest::decode(&bytes).map_err(|e| fail(&format!("{name} is damaged: {e}")))?;
        let stats = store
            .backend()
            .get(&version_stats::version_stats_name(v))
            .ok()
            .and_then(|b| version_stats::decode(&b).ok())
            .filter(|(sv, _)| *sv == v)
            .map(|(_, f)| f);
        out.push(Version {
            base: m.prev().is_none(),
            runs: m.runs.iter().map(|r| (r.addr, r.pages)).collect(),
            regions: m.regions.clone(),
            summary,
            stats,
        });
    }
    Ok(out)
}

/// Sorted, merged union of `ranges` (start, len).
fn union(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in ranges {
        let e = s.saturating_add(l);
        match out.last_mut() {
            Some((ls, ll)) if s <= *ls + *ll => *ll = (*ll).max(e - *ls),
            _ => out.push((s, l)),
        }
    }
    out
}

/// Cuts `regions` (sorted, not overlapping) into at most `max_rows` rows: every region
/// gets one row, the rows left go to the large regions in proportion to their size (so
/// a 1 GiB heap is seen in more detail than a 4 KiB page); more regions than rows share
/// rows, consecutive ones together.
pub fn rows(regions: &[(u64, u64)], page: u64, max_rows: usize) -> Vec<Range> {
    let max_rows = max_rows.max(1);
    if regions.len() > max_rows {
        let per = regions.len().div_ceil(max_rows);
        return regions
            .chunks(per)
            .enumerate()
            .map(|(i, c)| Range {
                start: c[0].0,
                end: c[c.len() - 1].0 + c[c.len() - 1].1,
                region: i * per,
            })
            .collect();
    }
    let total: u64 = regions.iter().map(|r| r.1).sum::<u64>().max(1);
    let spare = (max_rows - regions.len()) as u64;
    let mut out = Vec::new();
    for (i, &(start, len)) in regions.iter().enumerate() {
        let pages = (len / page).max(1);
        let extra = (u128::from(spare) * u128::from(len) / u128::from(total)) as u64;
        let n = (1 + extra).min(pages);
        // Page-aligned cuts, the last row takes the rest.
        let step = pages.div_ceil(n) * page;
        let mut s = start;
        while s < start + len {
            let e = (s + step).min(start + len);
            out.push(Range {
                start: s,
                end: e,
                region: i,
            });
            s = e;
        }
    }
    out
}

/// Pages of `runs` ((first address, pages)) inside `[start, end)`.
pub fn pages_in(runs: &[(u64, u64)], page: u64, start: u64, end: u64) -> u64 {
    runs.iter()
        .map(|&(a, n)| {
            let b = a + n * page;
            let (s, e) = (a.max(start), b.min(end));
            if e > s {
                (e - s).div_ceil(page)
            } else {
                0
            }
        })
        .sum()
}

/// White-yellow-red by `t` in 0..=1 (the YlOrRd scheme); light grey for nothing.
fn heat(pages: u64, max: u64) -> RGBColor {
    if pages == 0 || max == 0 {
        return RGBColor(242, 242, 242);
    }
    let t = ((pages as f64).ln_1p() / (max as f64).ln_1p()).clamp(0.0, 1.0);
    let stops = [
        (255.0, 255.0, 178.0),
        (254.0, 204.0, 92.0),
        (253.0, 141.0, 60.0),
        (240.0, 59.0, 32.0),
        (189.0, 0.0, 38.0),
    ];
    let x = t * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    let (a, b) = (stops[i], stops[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page.
fn render(target: &str, page_size: u32, versions: &[Version]) -> String {
    let page = u64::from(page_size);
    let regions = union(versions.iter().flat_map(|v| v.regions.clone()).collect());
    let ranges = rows(&regions, page, MAX_ROWS);
    let first = versions.first().map_or(0, |v| v.summary.time_ms);
    let last = versions.last().map_or(0, |v| v.summary.time_ms);
    let with_stats = versions.iter().filter(|v| v.stats.is_some()).count();
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>memshadow report: {t}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: {w}px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ccc; }}
p.note {{ color: #555; font-size: 13px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }}
td, th {{ text-align: left; }} td.v, #store-totals td + td {{ text-align: right; padding-right: 28px; }}
.absent {{ color: #a00; }}
</style></head><body>
<h1>memshadow report: {t}</h1>
<p>{n} version{s} ({first_v} to {last_v}) of process {pid}, recorded over {secs:.1} s; page size {page_size} bytes.</p>
"#,
        t = escape(target),
        w = WIDTH + 40,
        n = versions.len(),
        s = if versions.len() == 1 { "" } else { "s" },
        first_v = versions[0].summary.version,
        last_v = versions[versions.len() - 1].summary.version,
        pid = versions[versions.len() - 1].summary.pid,
        secs = (last - first) as f64 / 1000.0,
    );
    let _ = write!(
        h,
        r#"<section id="heatmap" data-versions="{}" data-ranges="{}">
<h2>Where and when the program writes</h2>
<p class="note">Rows: the recorded address ranges (the regions of every version, each cut into rows in proportion to its size; the first row of a region is labelled with its address and size). Columns: the versions in order. Colour: pages the version recorded in that range, on a log scale. A base (marked B under its column) records every page of its regions, a delta only the pages written since the version before.</p>
{}
</section>
"#,
        versions.len(),
        ranges.len(),
        heat_map(versions, &ranges, &regions, page)
    );
    let _ = write!(
        h,
        r#"<section id="timeline"><h2>Version timeline</h2>
<p class="note">Pages each version recorded and the bytes its data objects take in the store, against the time the snapshot was taken.</p>
{}</section>
"#,
        timeline(versions)
    );
    if with_stats == 0 {
        let _ = write!(
            h,
            r#"<section id="prefetch"><h2>Prefetching per version</h2><p class="absent">Absent: this store keeps no statistics beside its versions (recorded by a memshadow from before they were kept).</p></section>
<section id="latency"><h2>Trap latency</h2><p class="absent">Absent: this store keeps no statistics beside its versions.</p></section>
"#
        );
    } else {
        let _ = write!(
            h,
            r#"<section id="prefetch"><h2>Prefetching per version</h2>
<p class="note">Prefetched pages judged between a version and the one before: hits were written in their epoch (a trap saved), waste was not (a copy for nothing). {with_stats} of {} versions have statistics.</p>
{}</section>
<section id="latency"><h2>Trap latency</h2>
<p class="note">Time from a trap's message to its page being writable, as the shim reported it when each version was recorded: median, 99th percentile and longest (log scale). The shim keeps these three, not a histogram.</p>
{}</section>
"#,
            versions.len(),
            prefetch_chart(versions),
            latency_chart(versions)
        );
    }
    let _ = write!(
        h,
        r#"<section id="counters"><h2>Counters</h2>{}</section>
</body></html>
"#,
        counters(versions)
    );
    h
}

/// Draws with plotters into an SVG string.
fn svg(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>),
) -> String {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        draw(&root);
        let _ = root.present();
    }
    // Inline SVG in HTML needs no namespace: the page then names no URL at all.
    out.replace(r#" xmlns="http://www.w3.org/2000/svg""#, "")
}

/// Marks the first `<svg` of `svg` with `class`.
fn with_class(svg: String, class: &str) -> String {
    svg.replacen("<svg", &format!("<svg class=\"{class}\""), 1)
}

fn heat_map(versions: &[Version], ranges: &[Range], regions: &[(u64, u64)], page: u64) -> String {
    let cells: Vec<Vec<u64>> = versions
        .iter()
        .map(|v| {
            ranges
                .iter()
                .map(|r| pages_in(&v.runs, page, r.start, r.end))
                .collect()
        })
        .collect();
    let max = cells.iter().flatten().copied().max().unwrap_or(0);
    let top = 10u32;
    let plot_w = WIDTH - LABEL_W - 20;
    let height = top + ROW_H * ranges.len() as u32 + 70;
    let cell_w = f64::from(plot_w) / versions.len() as f64;
    let cells_svg = svg(WIDTH, height, |root| {
        let font = ("sans-serif", 12).into_font();
        let x_of = |i: usize| LABEL_W as i32 + (i as f64 * cell_w).round() as i32;
        for (vi, col) in cells.iter().enumerate() {
            for (ri, &pages) in col.iter().enumerate() {
                let y = (top + ROW_H * ri as u32) as i32;
                let _ = root.draw(&Rectangle::new(
                    [
                        (x_of(vi), y),
                        (x_of(vi + 1).max(x_of(vi) + 1), y + ROW_H as i32),
                    ],
                    heat(pages, max).filled(),
                ));
            }
        }
        // Region labels and the lines between regions.
        let mut shown = None;
        for (ri, r) in ranges.iter().enumerate() {
            if shown == Some(r.region) {
                continue;
            }
            shown = Some(r.region);
            let y = (top + ROW_H * ri as u32) as i32;
            let len = regions
                .iter()
                .find(|g| g.0 <= r.start && r.start < g.0 + g.1)
                .map_or(r.end - r.start, |g| g.1);
            let _ = root.draw(&Text::new(
                format!("{:#x}  {}", r.start, human_bytes(len)),
                (6, y + 1),
                font.clone(),
            ));
            let _ = root.draw(&PathElement::new(
                [(LABEL_W as i32 - 4, y), (WIDTH as i32 - 20, y)],
                RGBColor(90, 90, 90).stroke_width(1),
            ));
        }
        // Version numbers under the columns (as many as fit), B under bases.
        let bottom = (top + ROW_H * ranges.len() as u32) as i32;
        let every = ((40.0 / cell_w).ceil() as usize).max(1);
        for (vi, v) in versions.iter().enumerate() {
            let x = x_of(vi);
            if v.base && cell_w >= 3.0 {
                let _ = root.draw(&Text::new(
                    "B",
                    (x, bottom + 4),
                    ("sans-serif", 10).into_font(),
                ));
            }
            if vi % every == 0 {
                let _ = root.draw(&Text::new(
                    v.summary.version.to_string(),
                    (x, bottom + 18),
                    font.clone(),
                ));
            }
        }
        let _ = root.draw(&Text::new(
            "version",
            (LABEL_W as i32 + plot_w as i32 / 2 - 20, bottom + 36),
            font.clone(),
        ));
    });
    format!(
        "{}\n{}",
        with_class(cells_svg, "heatmap-cells"),
        heat_legend(max)
    )
}

/// The colour scale of the heat map: from 1 page to `max`, log scale.
fn heat_legend(max: u64) -> String {
    let steps = 12u64;
    svg(WIDTH, 34, |root| {
        let font = ("sans-serif", 12).into_font();
        let _ = root.draw(&Text::new(
            "pages recorded in the range:",
            (LABEL_W as i32 - 190, 10),
            font.clone(),
        ));
        let _ = root.draw(&Rectangle::new(
            [(LABEL_W as i32, 6), (LABEL_W as i32 + 18, 22)],
            heat(0, max).filled(),
        ));
        let _ = root.draw(&Text::new("0", (LABEL_W as i32 + 5, 24), font.clone()));
        for i in 0..steps {
            // Pages at this step, spaced evenly on the log scale from 1 to max.
            let t = (i + 1) as f64 / steps as f64;
            let pages = ((max.max(1) as f64).ln_1p() * t).exp_m1().round().max(1.0) as u64;
            let x = LABEL_W as i32 + 30 + 26 * i as i32;
            let _ = root.draw(&Rectangle::new(
                [(x, 6), (x + 26, 22)],
                heat(pages, max).filled(),
            ));
        }
        let end = LABEL_W as i32 + 30 + 26 * steps as i32;
        let _ = root.draw(&Text::new(format!("1 to {max}"), (end + 8, 10), font));
    })
}

/// A version number on an axis: whole numbers only (plotters may put ticks between).
fn whole(x: &f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// Seconds since the first version, for the time axes.
fn seconds(versions: &[Version]) -> Vec<f64> {
    let t0 = versions[0].summary.time_ms;
    versions
        .iter()
        .map(|v| (v.summary.time_ms.saturating_sub(t0)) as f64 / 1000.0)
        .collect()
}

fn timeline(versions: &[Version]) -> String {
    let t = seconds(versions);
    let t_max = t.last().copied().unwrap_or(0.0).max(1.0);
    let pages_max = versions
        .iter()
        .map(|v| v.summary.changed_pages)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bytes_max = versions
        .iter()
        .map(|v| v.summary.stored_bytes)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    svg(WIDTH, 320, |root| {
        let _ = root.fill(&WHITE);
        let Ok(chart) = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .right_y_label_area_size(80)
            .build_cartesian_2d(0f64..t_max * 1.02, 0f64..pages_max * 1.1)
        else {
            return;
        };
        let mut chart = chart.set_secondary_coord(0f64..t_max * 1.02, 0f64..bytes_max * 1.1);
        let _ = chart
            .configure_mesh()
            .x_desc("seconds since the first version")
            .y_desc("pages recorded")
            .y_label_formatter(&|y| thousands(*y as u64))
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        let _ = chart
            .configure_secondary_axes()
            .y_desc("bytes stored")
            .y_label_formatter(&|b| human_bytes(*b as u64))
            .draw();
        let blue = RGBColor(31, 119, 180);
        let orange = RGBColor(255, 127, 14);
        if let Ok(s) = chart.draw_series(
            versions
                .iter()
                .zip(&t)
                .map(|(v, &x)| Circle::new((x, v.summary.changed_pages as f64), 3, blue.filled())),
        ) {
            s.label("pages recorded")
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, blue.filled()));
        }
        if let Ok(s) = chart.draw_secondary_series(LineSeries::new(
            versions
                .iter()
                .zip(&t)
                .map(|(v, &x)| (x, v.summary.stored_bytes as f64)),
            orange.stroke_width(2),
        )) {
            s.label("bytes stored").legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 16, y)], orange.stroke_width(2))
            });
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw();
    })
}

/// Hits and waste between each version with statistics and the one before it.
fn prefetch_per_version(versions: &[Version]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut before: Option<(u64, u64)> = None;
    for v in versions {
        let (Some(h), Some(w)) = (v.stat("prefetch_hits"), v.stat("prefetch_waste")) else {
            before = None;
            continue;
        };
        let (h0, w0) = before.unwrap_or((0, 0));
        out.push((
            v.summary.version,
            h.saturating_sub(h0),
            w.saturating_sub(w0),
        ));
        before = Some((h, w));
    }
    out
}

fn prefetch_chart(versions: &[Version]) -> String {
    let rows = prefetch_per_version(versions);
    let v_lo = rows.first().map_or(0, |r| r.0);
    let v_hi = rows.last().map_or(1, |r| r.0) + 1;
    let y_max = rows.iter().map(|r| r.1.max(r.2)).max().unwrap_or(0).max(4) as f64;
    svg(WIDTH, 300, |root| {
        let _ = root.fill(&WHITE);
        let Ok(mut chart) = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(v_lo as f64..v_hi as f64, 0f64..y_max * 1.15)
        else {
            return;
        };
        let _ = chart
            .configure_mesh()
            .x_desc("version")
            .y_desc("prefetched pages")
            .x_label_formatter(&whole)
            .y_label_formatter(&|y| {
                if y.fract() == 0.0 {
                    thousands(*y as u64)
                } else {
                    String::new()
                }
            })
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        let green = RGBColor(44, 160, 44);
        let red = RGBColor(214, 39, 40);
        if let Ok(s) = chart.draw_series(rows.iter().map(|&(v, h, _)| {
            let x = v as f64;
            Rectangle::new([(x + 0.05, 0.0), (x + 0.45, h as f64)], green.filled())
        })) {
            s.label("hits").legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], green.filled())
            });
        }
        if let Ok(s) = chart.draw_series(rows.iter().map(|&(v, _, w)| {
            let x = v as f64;
            Rectangle::new([(x + 0.5, 0.0), (x + 0.9, w as f64)], red.filled())
        })) {
            s.label("waste")
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], red.filled()));
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw();
    })
}

fn latency_chart(versions: &[Version]) -> String {
    let keys = [
        ("trap_us_p50", "p50", RGBColor(31, 119, 180)),
        ("trap_us_p99", "p99", RGBColor(255, 127, 14)),
        ("trap_us_max", "max", RGBColor(214, 39, 40)),
    ];
    let points: Vec<Vec<(f64, f64)>> = keys
        .iter()
        .map(|(k, _, _)| {
            versions
                .iter()
                .filter_map(|v| Some((v.summary.version as f64, v.stat(k)?.max(1) as f64)))
                .collect()
        })
        .collect();
    let v_lo = versions[0].summary.version as f64;
    let v_hi = (versions[versions.len() - 1].summary.version as f64).max(v_lo + 1.0);
    let y_max = points.iter().flatten().map(|p| p.1).fold(10.0, f64::max);
    svg(WIDTH, 300, |root| {
        let _ = root.fill(&WHITE);
        let Ok(mut chart) = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(v_lo..v_hi, (1f64..y_max * 2.0).log_scale())
        else {
            return;
        };
        let _ = chart
            .configure_mesh()
            .x_desc("version")
            .y_desc("trap latency")
            .x_label_formatter(&whole)
            .y_label_formatter(&|y| human_us(*y as u64))
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        for ((_, name, color), pts) in keys.iter().zip(&points) {
            let color = *color;
            if let Ok(s) =
                chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            {
                s.label(*name).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw();
    })
}

fn counters(versions: &[Version]) -> String {
    let pages: u64 = versions.iter().map(|v| v.summary.changed_pages).sum();
    let stored: u64 = versions.iter().map(|v| v.summary.stored_bytes).sum();
    let bases = versions.iter().filter(|v| v.base).count();
    let last = &versions[versions.len() - 1];
    let mut h = String::from("<table id=\"store-totals\"><tr><th>store</th><th></th></tr>");
    let mut row = |k: &str, v: String| {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(&v));
    };
    row("versions", thousands(versions.len() as u64));
    row("bases", thousands(bases as u64));
    row("pages recorded", thousands(pages));
    row("bytes stored", human_bytes(stored));
    row(
        "memory of the last version",
        human_bytes(last.summary.region_bytes),
    );
    h.push_str("</table>");
    // The newest version with statistics beside it: they are written after the version
    // is published, and the last one of a program that exits may have none.
    let with_stats = versions
        .iter()
        .rev()
        .find_map(|v| Some((v.summary.version, v.stats.as_ref()?)));
    match with_stats {
        None => h.push_str("<p class=\"absent\">Absent: no version has statistics beside it.</p>"),
        Some((version, stats)) => {
            let _ = write!(
                h,
                "<p class=\"note\">The process's statistics when version {version} was recorded (the keys of <code>memshadow stats --json</code>):</p><table id=\"stats\">"
            );
            for (i, (k, v)) in stats.iter().enumerate() {
                let shown = if k.ends_with("_bytes") {
                    human_bytes(*v)
                } else if k.ends_with("_us") || k.contains("_us_") {
                    human_us(*v)
                } else {
                    thousands(*v)
                };
                let open = if i % 3 == 0 { "<tr>" } else { "" };
                let close = if i % 3 == 2 || i + 1 == stats.len() {
                    "</tr>"
                } else {
                    ""
                };
                let _ = write!(
                    h,
                    "{open}<td>{}</td><td class=\"v\">{}</td>{close}",
                    escape(k),
                    shown
                );
            }
            h.push_str("</table>");
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_large_regions_and_keep_every_region() {
        let page = 4096;
        let regions = [(0x1000, 4096), (0x100000, 100 * 4096), (0x900000, 8192)];
        let r = rows(&regions, page, 12);
        assert!(r.len() <= 12, "{r:?}");
        for (i, g) in regions.iter().enumerate() {
            let mine: Vec<_> = r.iter().filter(|x| x.region == i).collect();
            assert!(!mine.is_empty(), "region {i} has a row");
            assert_eq!(mine[0].start, g.0);
            assert_eq!(mine[mine.len() - 1].end, g.0 + g.1);
        }
        assert!(r.iter().filter(|x| x.region == 1).count() > 5);
        // More regions than rows: they share rows.
        let many: Vec<_> = (0..100u64).map(|i| (i * 0x10000, 4096)).collect();
        assert_eq!(rows(&many, page, 10).len(), 10);
    }

    #[test]
    fn pages_are_counted_inside_a_range() {
        let runs = [(0x1000, 4), (0x10000, 1)];
        assert_eq!(pages_in(&runs, 4096, 0, 0x100000), 5);
        assert_eq!(pages_in(&runs, 4096, 0x2000, 0x4000), 2);
        assert_eq!(pages_in(&runs, 4096, 0x5000, 0x10000), 0);
        assert_eq!(union(vec![(0, 10), (5, 10), (30, 1)]), [(0, 15), (30, 1)]);
    }
}
