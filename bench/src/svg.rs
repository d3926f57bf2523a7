//! The chart of the default command: grouped bars, one group per workload and size, one
//! bar per mode, in panels stacked vertically (throughput ratio; worst stall).
//!
//! Written by hand rather than with a plotting crate: the chart is a few dozen `<rect>`,
//! `<line>` and `<text>` elements, and `plotters` (even with only its SVG backend) brings
//! several crates and a font stack to draw the same thing, with less control over the
//! log-scale axes (ratios from 0.0001 to 1, stalls from microseconds to seconds) and
//! the "n/a" marks this chart needs.

use std::fmt::Write;

/// How a panel's vertical axis maps values: decades, the lowest below the smallest
/// positive value (a value of 0 is drawn as an empty bar); `reference` draws a dashed
/// line at that value (1.0 for ratios).
#[derive(Clone, Copy, Debug)]
pub enum Scale {
    Log10 { reference: Option<f64> },
}

/// One panel: a title, a scale, a value per group and series (None: not measured).
pub struct Panel<'a> {
    pub title: &'a str,
    pub scale: Scale,
    /// Formats a tick value (a power of ten).
    pub tick: &'a dyn Fn(f64) -> String,
    /// Formats a bar's value, for its tooltip.
    pub value: &'a dyn Fn(f64) -> String,
    /// `values[group][series]`.
    pub values: Vec<Vec<Option<f64>>>,
}

/// A series: its name in the legend and its fill colour.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
}

const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const BAR: f64 = 12.0;
const GAP: f64 = 16.0;
const HEADER: f64 = 60.0;
const PANEL_TITLE: f64 = 26.0;
const PLOT: f64 = 180.0;
const LABELS: f64 = 96.0;

/// Escapes text for an SVG text node or attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Decades of a log axis covering the positive values: (lowest, highest) exponents.
fn log_range(values: impl Iterator<Item = f64>) -> (i32, i32) {
    let pos: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    if pos.is_empty() {
        return (0, 1);
    }
    let lo = pos.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = pos.iter().cloned().fold(0.0, f64::max);
    let lo = lo.log10().floor() as i32;
    let hi = (hi.log10().ceil() as i32).max(lo + 1);
    (lo, hi)
}

/// The chart as an SVG document.
pub fn render(title: &str, groups: &[String], series: &[Series], panels: &[Panel]) -> String {
    let group_w = series.len().max(1) as f64 * BAR + GAP;
    // Wide enough for the titles too (about 7 px per character at these sizes).
    let longest = panels
        .iter()
        .map(|p| p.title.len())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    let plot_w = (groups.len().max(1) as f64 * group_w).max(longest as f64 * 7.5);
    let width = LEFT + plot_w + RIGHT;
    let panel_h = PANEL_TITLE + PLOT + LABELS;
    let height = HEADER + panels.len() as f64 * panel_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let mut x = LEFT;
    for se in series {
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="32" width="12" height="12" fill="{}"/><text x="{:.1}" y="42">{}</text>"#,
            escape(se.color),
            x + 16.0,
            escape(se.name)
        );
        x += 24.0 + 7.0 * se.name.len() as f64;
    }
    for (p, panel) in panels.iter().enumerate() {
        let top = HEADER + p as f64 * panel_h;
        let y0 = top + PANEL_TITLE; // top of the plot area
        let base = y0 + PLOT; // the x axis
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.1}" font-size="12" font-weight="bold">{}</text>"#,
            top + 16.0,
            escape(panel.title)
        );
        let all = panel.values.iter().flatten().flatten().copied();
        // Where a value goes: its height above the axis, in pixels.
        let Scale::Log10 { reference } = panel.scale;
        let (lo, hi) = log_range(all.chain(reference));
        let ticks: Vec<f64> = (lo..=hi).map(|e| 10f64.powi(e)).collect();
        let span = (hi - lo) as f64;
        // Where a value goes: its height above the axis, in pixels.
        let to_px = |v: f64| {
            if v > 0.0 {
                ((v.log10() - lo as f64) / span * PLOT).clamp(0.0, PLOT)
            } else {
                0.0
            }
        };
        for t in &ticks {
            let y = base - to_px(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                escape(&(panel.tick)(*t))
            );
        }
        if let Some(r) = reference {
            let y = base - to_px(r);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333333" stroke-dasharray="4 3"/>"##,
                LEFT + plot_w
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y0:.1}" x2="{LEFT}" y2="{base:.1}" stroke="#333333"/><line x1="{LEFT}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#333333"/>"##,
            LEFT + plot_w
        );
        for (g, name) in groups.iter().enumerate() {
            let gx = LEFT + g as f64 * group_w + GAP / 2.0;
            for (k, se) in series.iter().enumerate() {
                let bx = gx + k as f64 * BAR;
                match panel
                    .values
                    .get(g)
                    .and_then(|v| v.get(k))
                    .copied()
                    .flatten()
                {
                    Some(v) => {
                        let h = to_px(v);
                        let _ = writeln!(
                            s,
                            r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                            base - h,
                            BAR - 1.0,
                            escape(se.color),
                            escape(name),
                            escape(se.name),
                            escape(&(panel.value)(v))
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r##"<text x="{:.1}" y="{:.1}" font-size="8" fill="#888888" transform="rotate(-90 {:.1} {:.1})">n/a</text>"##,
                            bx + BAR / 2.0 + 3.0,
                            base - 3.0,
                            bx + BAR / 2.0 + 3.0,
                            base - 3.0
                        );
                    }
                }
            }
            let lx = gx + series.len() as f64 * BAR / 2.0;
            let ly = base + 12.0;
            let _ = writeln!(
                s,
                r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="end" transform="rotate(-35 {lx:.1} {ly:.1})">{}</text>"#,
                escape(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: f64) -> String {
        format!("{v} us")
    }

    fn chart() -> String {
        let groups = vec!["seq_sweep 256 MiB".to_string(), "a<b & \"c\"".to_string()];
        let series = [
            Series {
                name: "baseline",
                color: "#7f7f7f",
            },
            Series {
                name: "cow",
                color: "#d62728",
            },
        ];
        let ratio = Panel {
            title: "throughput ratio to baseline",
            scale: Scale::Log10 {
                reference: Some(1.0),
            },
            tick: &|v| format!("{v:.1}"),
            value: &|v| format!("{v:.3}"),
            values: vec![vec![Some(1.0), Some(0.4)], vec![Some(1.0), None]],
        };
        let stall = Panel {
            title: "worst stall",
            scale: Scale::Log10 { reference: None },
            tick: &us,
            value: &us,
            values: vec![vec![Some(12.0), Some(45_000.0)], vec![Some(0.0), None]],
        };
        render("memshadow <bench>", &groups, &series, &[ratio, stall])
    }

    #[test]
    fn chart_is_well_formed_svg() {
        let svg = chart();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        // 3 drawn bars per panel minus... : values present: panel 1 three, panel 2 three.
        let bars = root
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.children().any(|c| c.has_tag_name("title")))
            .count();
        assert_eq!(bars, 6);
        let texts: Vec<&str> = root
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert!(texts.contains(&"memshadow <bench>"), "{texts:?}");
        assert!(texts.contains(&"a<b & \"c\""), "{texts:?}");
        assert_eq!(texts.iter().filter(|t| **t == "n/a").count(), 2);
        // Log ticks: decades from 1 us (0 is not drawn, 12 -> 10) to 100000 us.
        assert!(
            texts.contains(&"10 us") && texts.contains(&"100000 us"),
            "{texts:?}"
        );
        for n in root.descendants().filter(|n| n.has_tag_name("rect")) {
            let h: f64 = n.attribute("height").unwrap().parse().unwrap();
            assert!(h >= 0.0 && h.is_finite());
        }
    }

    #[test]
    fn empty_chart_is_well_formed() {
        let svg = render("nothing", &[], &[], &[]);
        roxmltree::Document::parse(&svg).expect("well-formed XML");
    }

    #[test]
    fn ticks() {
        assert_eq!(log_range([12.0, 45_000.0].into_iter()), (1, 5));
        assert_eq!(log_range([0.0].into_iter()), (0, 1));
        assert_eq!(log_range([100.0].into_iter()), (2, 3));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
