//! Small hand-written SVG charts for the `--report` directory: lines over a numeric x axis,
//! and grouped bars over labelled categories. Axes start at zero; ticks are round numbers.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Titles and axis labels.
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

/// A line chart; each series gets a colour, dots at its points and an entry in the legend.
pub fn line_chart(labels: &Labels, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = nice(all().map(|p| p.0).fold(0.0, f64::max));
    let y_max = nice(all().map(|p| p.1).fold(0.0, f64::max));
    let mut svg = frame(labels, y_max);
    x_ticks(&mut svg, x_max);
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x, x_max), py(y, y_max)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        if s.points.len() <= 60 {
            for &(x, y) in &s.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(x, x_max),
                    py(y, y_max)
                );
            }
        }
        legend(&mut svg, i, &s.name, color);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Grouped bars: one group per category, one bar per series (`values[series][category]`).
pub fn bar_chart(
    labels: &Labels,
    categories: &[String],
    names: &[&str],
    values: &[Vec<f64>],
) -> String {
    let y_max = nice(values.iter().flatten().copied().fold(0.0, f64::max));
    let mut svg = frame(labels, y_max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let group_w = plot_w / categories.len().max(1) as f64;
    let bar_w = group_w * 0.8 / names.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let x0 = LEFT + group_w * c as f64 + group_w * 0.1;
        for (s, row) in values.iter().enumerate() {
            let v = row.get(c).copied().unwrap_or(0.0);
            let y = py(v, y_max);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                x0 + bar_w * s as f64,
                bar_w * 0.9,
                HEIGHT - BOTTOM - y,
                COLORS[s % COLORS.len()]
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + group_w * 0.4,
            HEIGHT - BOTTOM + 18.0,
            escape(category)
        );
    }
    for (s, name) in names.iter().enumerate() {
        legend(&mut svg, s, name, COLORS[s % COLORS.len()]);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Header, background, title, axis labels, y grid with ticks.
fn frame(labels: &Labels, y_max: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(labels.title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 10.0,
        escape(labels.x)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        escape(labels.y)
    );
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = py(v, y_max);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/>"##,
            WIDTH - RIGHT
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v)
        );
    }
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#333333" points="{LEFT},{TOP} {LEFT},{:.1} {:.1},{:.1}"/>"##,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM
    );
    svg
}

fn x_ticks(svg: &mut String, x_max: f64) {
    for i in 0..=5 {
        let v = x_max * i as f64 / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(v, x_max),
            HEIGHT - BOTTOM + 18.0,
            tick_label(v)
        );
    }
}

fn legend(svg: &mut String, i: usize, name: &str, color: &str) {
    let y = TOP + 10.0 + 20.0 * i as f64;
    let x = WIDTH - RIGHT + 15.0;
    let _ = writeln!(
        svg,
        r#"<rect x="{x}" y="{:.1}" width="14" height="10" fill="{color}"/>"#,
        y - 9.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{y:.1}">{}</text>"#,
        x + 20.0,
        escape(name)
    );
}

fn px(x: f64, x_max: f64) -> f64 {
    LEFT + x / x_max * (WIDTH - LEFT - RIGHT)
}

fn py(y: f64, y_max: f64) -> f64 {
    HEIGHT - BOTTOM - y / y_max * (HEIGHT - TOP - BOTTOM)
}

/// The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k at or above `v` (1 for nothing
/// to show), so the data fills most of the axis.
fn nice(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&n| n >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

fn tick_label(v: f64) -> String {
    if v == v.round() {
        format!("{v:.0}")
    } else if (v * 10.0) == (v * 10.0).round() {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 8.0);
        assert_eq!(nice(11.0), 12.0);
        assert_eq!(nice(180.0), 200.0);
        assert_eq!(nice(2.2), 2.5);
        assert_eq!(nice(0.045), 0.05);
        assert_eq!(nice(500.0), 500.0);
    }

    #[test]
    fn charts_are_svg() {
        let labels = Labels {
            title: "a <b>",
            x: "s",
            y: "n",
        };
        let series = [Series {
            name: "ok".into(),
            points: vec![(0.0, 1.0), (1.0, 3.0)],
        }];
        let svg = line_chart(&labels, &series);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("<polyline"));
        let bars = bar_chart(&labels, &["100/s".into()], &["p50"], &[vec![2.0]]);
        assert_eq!(bars.matches("<rect").count(), 3); // background, bar, legend
    }
}
