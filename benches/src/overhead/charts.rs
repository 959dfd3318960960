//! SVG charts with `plotters` (SVG backend only, no system font libraries:
//! text is written as SVG `<text>` and laid out with plotters' built-in
//! estimate of glyph widths).
//!
//! * `ratios.svg` — per configuration and implementation, the measured
//!   lean / plain, authors / plain, ACL / plain and RoCL / plain ratios,
//!   each with the FLOP model's ratio drawn beside it;
//! * `peak_fraction.svg` — achieved GFLOP/s of every step kind as a
//!   fraction of the implementation's measured GEMM peak;
//! * `cost.svg` — a dot plot: per encoder and method, each implementation's
//!   step cost relative to its plain step, the FLOP model's ratio marked;
//! * `scaling.svg` — lean / plain and ACL / plain as `N` grows and as the
//!   encoder widens, measured points beside the FLOP model's curve.

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

/// The colour of an implementation's dots.
fn imp_color(imp: crate::overhead::Impl) -> RGBColor {
    use crate::overhead::Backend;
    match imp.backend {
        Backend::Reference => BLUE,
        Backend::TchCpu => ORANGE,
        Backend::EagerCpu => GREEN,
        Backend::TchCuda => PURPLE,
        Backend::EagerCuda => GREY,
    }
}

/// `cost.svg`: a dot plot, one line per encoder configuration and method
/// (CLAE lean, CLAE authors', ACL, RoCL): each implementation's measured
/// step time over its plain step's as a dot, the FLOP model's ratio as a
/// black bar.
pub fn cost_chart(rows: &[StepRow], path: &Path) -> Result<()> {
    let methods = [
        StepKind::Lean,
        StepKind::Authors,
        StepKind::ACL,
        StepKind::ROCL,
    ];
    let mut configs: Vec<(&str, String)> = Vec::new();
    for r in rows {
        if !configs.iter().any(|c| c.0 == r.group_id) {
            let (a, _) = row_label(r);
            configs.push((r.group_id.as_str(), a));
        }
    }
    let mut imps: Vec<crate::overhead::Impl> = rows.iter().map(|r| r.imp).collect();
    imps.sort();
    imps.dedup();
    // (line index from the top, config, method, model ratio)
    let mut lines: Vec<(usize, &str, String, StepKind, f64)> = Vec::new();
    for (ci, (gid, label)) in configs.iter().enumerate() {
        for (mi, &k) in methods.iter().enumerate() {
            let model = rows
                .iter()
                .find(|r| r.group_id == *gid)
                .map(|r| r.over_plain(k).model)
                .unwrap_or(f64::NAN);
            lines.push((
                ci * methods.len() + mi,
                gid,
                format!("{label} · {}", k.label()),
                k,
                model,
            ));
        }
    }
    let n = lines.len().max(1);
    let xmax = rows
        .iter()
        .flat_map(|r| {
            methods
                .iter()
                .flat_map(move |&k| [r.over_plain(k).measured, Some(r.over_plain(k).model)])
        })
        .flatten()
        .filter(|v| v.is_finite())
        .fold(2.0f64, f64::max)
        * 1.08;
    let height = (110 + 22 * n) as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let (left, right) = root.split_horizontally(300);
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "Step cost relative to a plain step, per encoder and method",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(0)
        .build_cartesian_2d(0.8f64..xmax, -0.5f64..n as f64 - 0.5)
        .map_err(|e| chart_err(path, e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("step time / plain step time of the same implementation (dots: measured; black bar: FLOP model)")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(|e| chart_err(path, e))?;
    let y_of = |line: usize| (n - 1 - line) as f64;
    // separators between configurations and the plain = 1 line
    let seps = (1..configs.len()).map(|c| {
        let y = y_of(c * methods.len()) + 0.5;
        PathElement::new(vec![(0.8, y), (xmax, y)], GREY.mix(0.4).stroke_width(1))
    });
    chart.draw_series(seps).map_err(|e| chart_err(path, e))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, -0.5), (1.0, n as f64 - 0.5)],
            GREY.stroke_width(1),
        )))
        .map_err(|e| chart_err(path, e))?
        .label("plain = 1")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], GREY.stroke_width(1)));
    let ticks = lines.iter().filter(|l| l.4.is_finite()).map(|l| {
        let y = y_of(l.0);
        PathElement::new(vec![(l.4, y - 0.4), (l.4, y + 0.4)], BLACK.stroke_width(3))
    });
    chart
        .draw_series(ticks)
        .map_err(|e| chart_err(path, e))?
        .label("FLOP model")
        .legend(|(x, y)| {
            PathElement::new(vec![(x + 6, y - 6), (x + 6, y + 6)], BLACK.stroke_width(3))
        });
    let k = imps.len().max(1) as f64;
    for (j, &imp) in imps.iter().enumerate() {
        let color = imp_color(imp);
        let offset = (j as f64 - (k - 1.0) / 2.0) * 0.2;
        let dots = lines.iter().filter_map(|l| {
            let r = rows.iter().find(|r| r.group_id == l.1 && r.imp == imp)?;
            let v = r.over_plain(l.3).measured?;
            Some(Circle::new((v, y_of(l.0) + offset), 4, color.filled()))
        });
        chart
            .draw_series(dots)
            .map_err(|e| chart_err(path, e))?
            .label(imp.to_string())
            .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| chart_err(path, e))?;
    for l in &lines {
        let (_, y) = chart.backend_coord(&(1.0, y_of(l.0)));
        let style = ("sans-serif", 11)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        left.draw(&Text::new(l.2.clone(), (292, y), style))
            .map_err(|e| chart_err(path, e))?;
    }
    root.present().map_err(|e| chart_err(path, e))?;
    Ok(())
}

/// `scaling.svg`: lean / plain and ACL / plain against `N` (left) and the
/// hidden width (right), measured points of every implementation beside the
/// FLOP model's curve; both axes in powers of two.
pub fn scaling_chart(points: &[crate::overhead::analysis::ScalePoint], path: &Path) -> Result<()> {
    use crate::flops::model_ratio;
    use crate::overhead::plan::{Model, StepConfig};
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let panels = root.split_evenly((1, 2));
    let mut imps: Vec<crate::overhead::Impl> = points.iter().map(|p| p.imp).collect();
    imps.sort();
    imps.dedup();
    let ymax = points
        .iter()
        .flat_map(|p| {
            [
                p.lean.measured,
                Some(p.lean.model),
                p.acl.measured,
                Some(p.acl.model),
            ]
        })
        .flatten()
        .filter(|v| v.is_finite())
        .fold(2.0f64, f64::max)
        * 1.25;
    for (panel, on_n) in panels.iter().zip([true, false]) {
        let pts: Vec<_> = points
            .iter()
            .filter(|p| if on_n { p.on_n } else { p.on_width })
            .collect();
        let x_of = |p: &crate::overhead::analysis::ScalePoint| {
            (if on_n { p.config.n } else { p.hidden() }).max(1) as f64
        };
        let (lo, hi) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(x_of(p).log2()), b.max(x_of(p).log2()))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let title = match pts.first() {
            Some(p) if on_n => format!("in N ({}, {} loss)", p.config.model, p.config.loss),
            Some(p) => format!(
                "in the hidden width h (N {}, {} loss)",
                p.config.n, p.config.loss
            ),
            None => "no points".into(),
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo - 0.5..hi + 0.5, 0f64..ymax)
            .map_err(|e| chart_err(path, e))?;
        chart
            .configure_mesh()
            .x_labels((2.0 * (hi - lo + 1.0)) as usize + 2)
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 {
                    format!("{}", 2f64.powf(*v).round())
                } else {
                    String::new()
                }
            })
            .x_desc(if on_n {
                "batch size N"
            } else {
                "hidden width h"
            })
            .y_desc("step time / plain step time")
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(|e| chart_err(path, e))?;
        // The FLOP model's curve through the series (the first point's
        // configuration with N or h varied).
        if let Some(base) = pts.first().map(|p| p.config) {
            let at = |x: f64| -> Option<StepConfig> {
                let v = 2f64.powf(x).round().max(2.0) as usize;
                match base.model {
                    Model::Mlp(c) if !on_n => Some(StepConfig {
                        model: Model::Mlp(clae_reference::encoder::MlpConfig { hidden: v, ..c }),
                        ..base
                    }),
                    _ if on_n => Some(StepConfig { n: v, ..base }),
                    _ => None,
                }
            };
            for (kind, color, name) in [
                (StepKind::Lean, LIGHT_BLUE, "CLAE lean / plain, FLOP model"),
                (StepKind::ACL, LIGHT_RED, "ACL / plain, FLOP model"),
            ] {
                let curve: Vec<(f64, f64)> = (0..=40)
                    .filter_map(|t| {
                        let x = lo + (hi - lo) * t as f64 / 40.0;
                        let c = at(x)?;
                        let r = model_ratio(&c.encoder_flops(), kind, c.loss, c.optimizer());
                        r.is_finite().then_some((x, r))
                    })
                    .collect();
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        curve,
                        color.stroke_width(3),
                    )))
                    .map_err(|e| chart_err(path, e))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 12, y)], color.stroke_width(3))
                    });
            }
        }
        for (j, &imp) in imps.iter().enumerate() {
            for (kind, color, name) in [
                (StepKind::Lean, BLUE, "CLAE lean / plain"),
                (StepKind::ACL, RED, "ACL / plain"),
            ] {
                let filled = j % 2 == 0;
                let style = if filled {
                    color.filled()
                } else {
                    color.stroke_width(2)
                };
                let dots = pts.iter().filter(|p| p.imp == imp).filter_map(|p| {
                    let r = if kind == StepKind::Lean {
                        &p.lean
                    } else {
                        &p.acl
                    };
                    Some(Circle::new((x_of(p).log2(), r.measured?), 4, style))
                });
                chart
                    .draw_series(dots)
                    .map_err(|e| chart_err(path, e))?
                    .label(format!("{name}, {imp}"))
                    .legend(move |(x, y)| Circle::new((x + 6, y), 4, style));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 10))
            .draw()
            .map_err(|e| chart_err(path, e))?;
    }
    root.present().map_err(|e| chart_err(path, e))?;
    Ok(())
}
