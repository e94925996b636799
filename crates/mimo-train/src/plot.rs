//! `loss.png`: total, main and MTP loss against the step (plotters bitmap backend). Axis labels need a font;
//! the DejaVu Sans of the system is used when present, else the curves are drawn without text.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::metrics::StepMetrics;

/// A curve: name, colour, value of a metrics line.
type Series = (&'static str, RGBColor, fn(&StepMetrics) -> f64);

/// Registers the system's DejaVu Sans (or Liberation Sans) for plotters' `sans-serif`, once.
pub fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .any(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// Draws the loss curves of `metrics` to `path` (PNG, 900×500).
pub fn plot_losses(metrics: &[StepMetrics], path: &Path) -> Result<(), String> {
    if metrics.is_empty() {
        return Err("no metrics".into());
    }
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max_step = metrics.iter().map(|m| m.step).max().unwrap_or(1).max(2) as f64;
    let ymax = metrics
        .iter()
        .flat_map(|m| [m.loss, m.loss_main, m.loss_mtp])
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        * 1.05;
    let series: [Series; 3] = [
        ("total", BLACK, |m| m.loss),
        ("main", BLUE, |m| m.loss_main),
        ("MTP", RED, |m| m.loss_mtp),
    ];
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..max_step, 0f64..ymax.max(1e-3))
        .map_err(|e| e.to_string())?;
    // Without a usable font plotters panics on text: then draw bare axes.
    if font_available() {
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| e.to_string())?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    let text = font_available();
    for (name, color, f) in series {
        let s = chart
            .draw_series(LineSeries::new(
                metrics.iter().map(|m| (m.step as f64, f(m))),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        if text {
            s.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if text {
        draw_legend(&mut chart)?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// A named curve of (x, y) points.
pub struct Curve {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// Draws curves to `path` (PNG, 900×500) with axis descriptions and a legend of the curve names.
pub fn plot_lines(curves: &[Curve], x_desc: &str, y_desc: &str, path: &Path) -> Result<(), String> {
    plot_lines_marked(curves, &[], x_desc, y_desc, path)
}

/// [`plot_lines`] with vertical dashed lines at the `marks` x positions, each labelled with its name (e.g. the
/// boundaries of training stages).
pub fn plot_lines_marked(
    curves: &[Curve],
    marks: &[(f64, String)],
    x_desc: &str,
    y_desc: &str,
    path: &Path,
) -> Result<(), String> {
    let pts = || {
        curves
            .iter()
            .flat_map(|c| c.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    if pts().next().is_none() {
        return Err("no points".into());
    }
    let (x0, x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(
            x0..x1.max(x0 + 1.0),
            (y0 - pad).min(0.0f64.max(y0 - pad))..y1 + pad,
        )
        .map_err(|e| e.to_string())?;
    let text = font_available();
    if text {
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    let (ylo, yhi) = ((y0 - pad).min(0.0f64.max(y0 - pad)), y1 + pad);
    for (x, name) in marks {
        chart
            .draw_series(DashedLineSeries::new(
                [(*x, ylo), (*x, yhi)],
                6,
                4,
                RGBColor(120, 120, 120).stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        if text {
            chart
                .draw_series(std::iter::once(Text::new(
                    name.clone(),
                    (*x, yhi),
                    ("sans-serif", 13).into_font().color(&RGBColor(80, 80, 80)),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    for c in curves {
        let color = c.color;
        let series = chart
            .draw_series(LineSeries::new(
                c.points.iter().copied(),
                c.color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        if text {
            series.label(c.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        if c.points.len() <= 12 {
            chart
                .draw_series(
                    c.points
                        .iter()
                        .map(|&p| Circle::new(p, 5, c.color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
    }
    if text {
        draw_legend(&mut chart)?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// One bar of [`plot_bars`]: a value with a ± error.
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// Half-length of the error bar (e.g. one standard error); 0 draws none.
    pub err: f64,
}

/// A bar chart with error bars to `path` (PNG, 700×450): one bar per entry, labelled below, the value (and
/// error) printed above.
pub fn plot_bars(bars: &[Bar], y_desc: &str, path: &Path) -> Result<(), String> {
    if bars.is_empty()
        || bars
            .iter()
            .any(|b| !(b.value.is_finite() && b.err.is_finite()))
    {
        return Err("no bars, or a non-finite value".into());
    }
    let top = bars
        .iter()
        .map(|b| b.value + b.err.abs())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.2;
    let n = bars.len() as f64;
    let root = BitMapBackend::new(path, (700, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(|e| e.to_string())?;
    let text = font_available();
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(0);
    if text {
        mesh.y_desc(y_desc).draw().map_err(|e| e.to_string())?;
    } else {
        mesh.y_labels(0)
            .disable_y_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
    }
    let palette = [
        RGBColor(120, 120, 120),
        RGBColor(0, 120, 0),
        RGBColor(0, 0, 200),
        RGBColor(200, 120, 0),
    ];
    for (i, b) in bars.iter().enumerate() {
        let x = i as f64;
        let color = palette[i % palette.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.2, 0.0), (x + 0.8, b.value)],
                color.mix(0.8).filled(),
            )))
            .map_err(|e| e.to_string())?;
        if b.err > 0.0 {
            let (lo, hi) = ((b.value - b.err).max(0.0), b.value + b.err);
            let whisker = |y: f64| {
                PathElement::new(vec![(x + 0.42, y), (x + 0.58, y)], BLACK.stroke_width(2))
            };
            chart
                .draw_series([
                    PathElement::new(vec![(x + 0.5, lo), (x + 0.5, hi)], BLACK.stroke_width(2)),
                    whisker(lo),
                    whisker(hi),
                ])
                .map_err(|e| e.to_string())?;
        }
        if text {
            let label = if b.err > 0.0 {
                format!("{}: {:.3} ± {:.3}", b.label, b.value, b.err)
            } else {
                format!("{}: {:.3}", b.label, b.value)
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x + 0.15, b.value + b.err + top * 0.06),
                    ("sans-serif", 14).into_font(),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// The series legend, boxed in the upper right corner.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_drawn_with_a_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let curves = [
            Curve {
                name: "reward".into(),
                color: BLUE,
                points: (0..20)
                    .map(|i| (i as f64, (i as f64 / 5.0).sin()))
                    .collect(),
            },
            Curve {
                name: "held-out pass@1".into(),
                color: RED,
                points: vec![(0.0, 0.2), (10.0, 0.4), (19.0, 0.5)],
            },
        ];
        plot_lines(&curves, "step", "value", &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(plot_lines(&[], "x", "y", &path).is_err());
        let marks = [(5.0, "stage 2".to_string()), (12.0, "SFT".to_string())];
        plot_lines_marked(&curves, &marks, "step", "value", &path).unwrap();
        if let Ok(keep) = std::env::var("MIMO_KEEP_PLOT") {
            std::fs::copy(&path, keep).unwrap();
        }
    }

    #[test]
    fn bars_with_error_bars() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        let bar = |label: &str, value: f64, err: f64| Bar {
            label: label.into(),
            value,
            err,
        };
        plot_bars(
            &[
                bar("base", 0.02, 0.004),
                bar("SFT", 0.44, 0.02),
                bar("RL", 0.5, 0.021),
            ],
            "held-out pass@1",
            &path,
        )
        .unwrap();
        if let Ok(keep) = std::env::var("MIMO_KEEP_BARS") {
            std::fs::copy(&path, keep).unwrap();
        }
        assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG");
        assert!(plot_bars(&[], "y", &path).is_err());
        assert!(plot_bars(&[bar("x", f64::NAN, 0.0)], "y", &path).is_err());
    }
}
