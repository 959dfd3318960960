//! SVG charts with `plotters` (SVG backend only, no system font libraries:
//! text is written as SVG `<text>` and laid out with plotters' built-in
//! estimate of glyph widths).
//!
//! * `ratios.svg` — per configuration and implementation, the measured
//!   lean / plain, authors / plain, ACL / plain and RoCL / plain ratios,
//!   each with the FLOP model's ratio drawn beside it;
//! * `peak_fraction.svg` — achieved GFLOP/s of every step kind as a
//!   fraction of the implementation's measured GEMM peak.

use crate::flops::StepKind;
use crate::overhead::analysis::StepRow;
use crate::overhead::{BenchError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const LIGHT_BLUE: RGBColor = RGBColor(174, 199, 232);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const LIGHT_ORANGE: RGBColor = RGBColor(255, 187, 120);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const LIGHT_RED: RGBColor = RGBColor(255, 152, 150);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const LIGHT_PURPLE: RGBColor = RGBColor(197, 176, 213);
const GREY: RGBColor = RGBColor(120, 120, 120);

fn chart_err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Chart {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Two short label lines for a row: configuration, implementation.
fn row_label(r: &StepRow) -> (String, String) {
    (
        format!("{} N{} {}", r.config.size, r.config.n, r.config.loss),
        r.imp.to_string(),
    )
}

/// One bar series: name, colour, value per category (None: no bar).
struct Series {
    name: &'static str,
    color: RGBColor,
    values: Vec<Option<f64>>,
}

/// Grouped bars over categories with two-line labels under each group.
fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    labels: &[(String, String)],
    series: &[Series],
    reference_line: Option<(f64, &str)>,
) -> Result<()> {
    let k = labels.len().max(1);
    let per_group = 40 + 22 * series.len().max(4);
    let width = (160 + per_group * k).max(640) as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let (upper, lower) = root.split_vertically(400);
    let ymax = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .chain(reference_line.iter().map(|r| &r.0))
        .fold(0.0f64, |m, &v| m.max(v))
        * 1.6; // head room for the legend
    let ymax = if ymax > 0.0 { ymax } else { 1.0 };
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(0)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..k as f64, 0f64..ymax)
        .map_err(|e| chart_err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(|e| chart_err(path, e))?;
    let m = series.len() as f64;
    let bar_w = 0.8 / m;
    for (si, s) in series.iter().enumerate() {
        let color = s.color;
        let bars = s.values.iter().enumerate().filter_map(move |(ci, v)| {
            v.map(|v| {
                let x0 = ci as f64 + 0.1 + si as f64 * bar_w;
                Rectangle::new([(x0, 0.0), (x0 + bar_w * 0.92, v)], color.filled())
            })
        });
        chart
            .draw_series(bars)
            .map_err(|e| chart_err(path, e))?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        // The value on top of each bar.
        let texts = s.values.iter().enumerate().filter_map(move |(ci, v)| {
            v.map(|v| {
                let x = ci as f64 + 0.1 + (si as f64 + 0.46) * bar_w;
                Text::new(
                    format!("{v:.2}"),
                    (x, v),
                    ("sans-serif", 9)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            })
        });
        chart.draw_series(texts).map_err(|e| chart_err(path, e))?;
    }
    if let Some((y, name)) = reference_line {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, y), (k as f64, y)],
                GREY.stroke_width(1),
            )))
            .map_err(|e| chart_err(path, e))?
            .label(name)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], GREY.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_err(path, e))?;
    draw_labels(&lower, &chart, labels, path)?;
    root.present().map_err(|e| chart_err(path, e))?;
    Ok(())
}

fn draw_labels(
    lower: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &ChartContext<
        '_,
        SVGBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    labels: &[(String, String)],
    path: &Path,
) -> Result<()> {
    let y_top = lower.get_base_pixel().1;
    for (i, (a, b)) in labels.iter().enumerate() {
        let (x, _) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        for (line, text) in [a, b].iter().enumerate() {
            let style = ("sans-serif", 11)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            lower
                .draw(&Text::new(
                    text.to_string(),
                    (x - lower.get_base_pixel().0, 8 + 16 * line as i32),
                    style,
                ))
                .map_err(|e| chart_err(path, e))?;
        }
        let _ = y_top;
    }
    Ok(())
}

/// The methods beside a plain step, with their chart names and colours
/// (measured, FLOP model).
const METHODS: [(StepKind, &str, &str, RGBColor, RGBColor); 4] = [
    (
        StepKind::Lean,
        "CLAE lean / plain, measured",
        "CLAE lean / plain, FLOP model",
        BLUE,
        LIGHT_BLUE,
    ),
    (
        StepKind::Authors,
        "CLAE authors / plain, measured",
        "CLAE authors / plain, FLOP model",
        ORANGE,
        LIGHT_ORANGE,
    ),
    (
        StepKind::ACL,
        "ACL / plain, measured",
        "ACL / plain, FLOP model",
        RED,
        LIGHT_RED,
    ),
    (
        StepKind::ROCL,
        "RoCL / plain, measured",
        "RoCL / plain, FLOP model",
        PURPLE,
        LIGHT_PURPLE,
    ),
];

/// `ratios.svg`: every method's measured time over the plain step's, each
/// with the FLOP model's ratio beside it.
pub fn ratio_chart(rows: &[StepRow], path: &Path) -> Result<()> {
    let labels: Vec<_> = rows.iter().map(row_label).collect();
    let series: Vec<Series> = METHODS
        .iter()
        .flat_map(|&(kind, measured, model, c, lc)| {
            [
                Series {
                    name: measured,
                    color: c,
                    values: rows.iter().map(|r| r.over_plain(kind).measured).collect(),
                },
                Series {
                    name: model,
                    color: lc,
                    values: rows
                        .iter()
                        .map(|r| Some(r.over_plain(kind).model))
                        .collect(),
                },
            ]
        })
        .collect();
    grouped_bars(
        path,
        "Step time relative to a plain step: measured vs FLOP model",
        "step time / plain step time",
        &labels,
        &series,
        Some((1.0, "plain = 1")),
    )
}

/// `peak_fraction.svg`: achieved GFLOP/s over the measured GEMM peak.
pub fn peak_fraction_chart(rows: &[StepRow], path: &Path) -> Result<()> {
    let labels: Vec<_> = rows.iter().map(row_label).collect();
    let frac = |k: StepKind| rows.iter().map(|r| r.peak_fraction(k)).collect::<Vec<_>>();
    let series = [
        Series {
            name: "plain step",
            color: GREEN,
            values: frac(StepKind::Plain),
        },
        Series {
            name: "lean CLAE step",
            color: BLUE,
            values: frac(StepKind::Lean),
        },
        Series {
            name: "authors' CLAE step",
            color: ORANGE,
            values: frac(StepKind::Authors),
        },
        Series {
            name: "ACL step",
            color: RED,
            values: frac(StepKind::ACL),
        },
        Series {
            name: "RoCL step",
            color: PURPLE,
            values: frac(StepKind::ROCL),
        },
    ];
    grouped_bars(
        path,
        "Achieved GFLOP/s as a fraction of the measured GEMM peak",
        "fraction of GEMM peak",
        &labels,
        &series,
        Some((1.0, "GEMM peak")),
    )
}
