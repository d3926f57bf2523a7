//! The chart of the default command: grouped bars, one group per workload and size, one
//! bar per mode, in panels stacked vertically (throughput ratio; worst stall).
//!
//! Drawn with `plotters` (its SVG backend), the crate `memshadow report` draws its
//! charts with. The vertical axes are logarithmic (ratios from 0.0001 to 1, stalls from
//! microseconds to seconds): values are drawn at their log10 on a linear axis whose
//! ticks are the decades, a value of 0 as an empty bar, a value not measured as "n/a".

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// A series: its name in the legend and its fill colour (`#rrggbb`).
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
}

const LEFT: u32 = 80;
const RIGHT: u32 = 20;
const BAR: f64 = 12.0;
const GAP: f64 = 16.0;
const HEADER: u32 = 60;
const PANEL_TITLE: u32 = 26;
const PLOT: u32 = 180;
const LABELS: u32 = 140;
/// The opacity bars are drawn with, which marks them in plotters' output so that each
/// gets its tooltip (`<title>`) afterwards; drawn as opaque.
const BAR_MARK: f64 = 0.999;
const BAR_MARK_ATTR: &str = "opacity=\"0.999\"";

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

/// `#rrggbb` as a colour (grey when it is not one).
fn color(hex: &str) -> RGBColor {
    let h = hex.trim_start_matches('#');
    let byte = |i: usize| {
        h.get(i..i + 2)
            .and_then(|b| u8::from_str_radix(b, 16).ok())
            .unwrap_or(128)
    };
    RGBColor(byte(0), byte(2), byte(4))
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
    let width = LEFT + plot_w.ceil() as u32 + RIGHT;
    let panel_h = PANEL_TITLE + PLOT + LABELS;
    let height = HEADER + panels.len() as u32 * panel_h;
    let mut out = String::new();
    let mut titles = Vec::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let font = |size: u32| ("sans-serif", size).into_font();
        let _ = root.draw(&Text::new(
            title.to_string(),
            (LEFT as i32, 8),
            font(14).style(FontStyle::Bold),
        ));
        let mut x = LEFT as i32;
        for se in series {
            let _ = root.draw(&Rectangle::new(
                [(x, 32), (x + 12, 44)],
                color(se.color).filled(),
            ));
            let _ = root.draw(&Text::new(se.name.to_string(), (x + 16, 33), font(11)));
            x += 24 + 7 * se.name.len() as i32;
        }
        let (_, below) = root.split_vertically(HEADER);
        for (p, panel) in panels.iter().enumerate() {
            let top = p as u32 * panel_h;
            let area = below.clone().shrink((0, top), (width, panel_h));
            titles.extend(draw_panel(&area, panel, groups, series, plot_w, group_w));
        }
        let _ = root.present();
    }
    with_titles(&out, &titles)
}

/// Gives the marked bars of `svg`, in order, their tooltips and full opacity.
fn with_titles(svg: &str, titles: &[String]) -> String {
    let mut out = String::with_capacity(svg.len() + titles.len() * 40);
    let mut rest = svg;
    let mut titles = titles.iter();
    while let Some(at) = rest.find(BAR_MARK_ATTR) {
        let Some(end) = rest[at..].find("/>").map(|e| e + at) else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str("opacity=\"1\"");
        out.push_str(&rest[at + BAR_MARK_ATTR.len()..end]);
        match titles.next() {
            Some(t) => {
                out.push_str("><title>");
                out.push_str(&escape(t));
                out.push_str("</title></rect>");
            }
            None => out.push_str("/>"),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn draw_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    panel: &Panel,
    groups: &[String],
    series: &[Series],
    plot_w: f64,
    group_w: f64,
) -> Vec<String> {
    let mut titles = Vec::new();
    let font = |size: u32| ("sans-serif", size).into_font();
    let _ = area.draw(&Text::new(
        panel.title.to_string(),
        (LEFT as i32, 4),
        font(12).style(FontStyle::Bold),
    ));
    let Scale::Log10 { reference } = panel.scale;
    let all = panel.values.iter().flatten().flatten().copied();
    let (lo, hi) = log_range(all.chain(reference));
    // x in pixels from the left of the plot, y in log10 of the value.
    let Ok(mut chart) = ChartBuilder::on(area)
        .margin_top(PANEL_TITLE)
        .margin_right(RIGHT)
        .x_label_area_size(LABELS)
        .y_label_area_size(LEFT)
        .build_cartesian_2d(0f64..plot_w, f64::from(lo)..f64::from(hi))
    else {
        return titles;
    };
    let tick = panel.tick;
    let _ = chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .disable_y_mesh()
        .y_labels((hi - lo + 1) as usize)
        .y_label_formatter(&|e: &f64| {
            if e.fract() == 0.0 {
                tick(10f64.powf(*e))
            } else {
                String::new()
            }
        })
        .axis_style(RGBColor(51, 51, 51))
        .label_style(font(11))
        .draw();
    // The decades' grid lines, and the reference line dashed.
    for e in lo..=hi {
        let y = f64::from(e);
        let _ = chart.draw_series(LineSeries::new(
            [(0.0, y), (plot_w, y)],
            RGBColor(221, 221, 221),
        ));
    }
    if let Some(r) = reference.filter(|r| *r > 0.0) {
        let y = r.log10();
        let _ = chart.draw_series(DashedLineSeries::new(
            [(0.0, y), (plot_w, y)],
            4,
            3,
            RGBColor(51, 51, 51).into(),
        ));
    }
    // The x axis.
    let _ = chart.draw_series(LineSeries::new(
        [(0.0, f64::from(lo)), (plot_w, f64::from(lo))],
        RGBColor(51, 51, 51),
    ));
    // Pixel positions relative to the panel (chart coordinates give the backend's).
    let (ox, oy) = area.get_base_pixel();
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let at = |x: f64, y: f64| {
        let px = f64::from(xr.start) + x / plot_w * f64::from(xr.end - xr.start);
        let fy = (y - f64::from(lo)) / f64::from(hi - lo);
        let py = f64::from(yr.end) - fy * f64::from(yr.end - yr.start);
        (px.round() as i32 - ox, py.round() as i32 - oy)
    };
    // Where a value goes: its log10, clamped to the axis.
    let to_y = |v: f64| v.log10().clamp(f64::from(lo), f64::from(hi));
    let label_style = TextStyle::from(font(11)).pos(Pos::new(HPos::Right, VPos::Center));
    for (g, name) in groups.iter().enumerate() {
        let gx = g as f64 * group_w + GAP / 2.0;
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
                    // A value of 0 is an empty bar (still there, with its tooltip).
                    let top = if v > 0.0 { to_y(v) } else { f64::from(lo) };
                    let drawn = chart.draw_series([Rectangle::new(
                        [(bx, f64::from(lo)), (bx + BAR - 1.0, top)],
                        color(se.color).mix(BAR_MARK).filled(),
                    )]);
                    if drawn.is_ok() {
                        titles.push(format!("{name} {}: {}", se.name, (panel.value)(v)));
                    }
                }
                None => {
                    let (px, py) = at(bx + BAR / 2.0, f64::from(lo));
                    let _ = area.draw(&Text::new(
                        "n/a",
                        (px, py - 3),
                        font(8)
                            .color(&RGBColor(136, 136, 136))
                            .transform(FontTransform::Rotate270)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    ));
                }
            }
        }
        // The group's name under its bars, reading upwards.
        let lx = gx + series.len() as f64 * BAR / 2.0;
        let (px, py) = at(lx, f64::from(lo));
        let _ = area.draw(&Text::new(
            name.clone(),
            (px, py + 8),
            label_style.clone().transform(FontTransform::Rotate270),
        ));
    }
    titles
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
            .map(str::trim)
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
