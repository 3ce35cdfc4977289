//! Line-with-band figures (mean ± std over samples against sampler progress, AU Fig. 3 style),
//! written as PNG and SVG.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::Result;

/// One curve: x, mean and std per point.
pub struct BandSeries<'a> {
    pub label: String,
    pub x: &'a [f64],
    pub mean: &'a [f64],
    pub std: &'a [f64],
    pub color: RGBColor,
}

/// Axes and annotations.
pub struct BandSpec<'a> {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Shaded x-intervals (e.g. the score window).
    pub highlight: Option<(f64, f64)>,
    pub caption: &'a str,
}

struct BandFigure<'a, 'b> {
    series: &'a [BandSeries<'b>],
    spec: &'a BandSpec<'b>,
}

impl super::Figure for BandFigure<'_, '_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        let (series, spec) = (self.series, self.spec);
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 - 28);
        bottom
            .titled(
                spec.caption,
                ("sans-serif", 14).into_font().color(&BLACK.mix(0.75)),
            )
            .map_err(e)?;
        let xs = series.iter().flat_map(|s| s.x.iter().copied());
        let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let ys = series
            .iter()
            .flat_map(|s| s.mean.iter().zip(s.std).flat_map(|(m, d)| [m - d, m + d]));
        let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let pad = ((y1 - y0) * 0.05).max(1e-12);
        let mut chart = ChartBuilder::on(&top)
            .caption(&spec.title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(&spec.x_label)
            .y_desc(&spec.y_label)
            .draw()
            .map_err(e)?;
        if let Some((a, b)) = spec.highlight {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(a, y0 - pad), (b, y1 + pad)],
                    BLACK.mix(0.08).filled(),
                )))
                .map_err(e)?;
        }
        for s in series {
            let upper =
                s.x.iter()
                    .zip(s.mean.iter().zip(s.std))
                    .map(|(x, (m, d))| (*x, m + d));
            let lower =
                s.x.iter()
                    .zip(s.mean.iter().zip(s.std))
                    .map(|(x, (m, d))| (*x, m - d));
            let polygon: Vec<(f64, f64)> = upper.chain(lower.rev()).collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    polygon,
                    s.color.mix(0.25).filled(),
                )))
                .map_err(e)?;
            chart
                .draw_series(LineSeries::new(
                    s.x.iter().copied().zip(s.mean.iter().copied()),
                    s.color.stroke_width(2),
                ))
                .map_err(e)?
                .label(&s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], s.color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(e)?;
        root.present().map_err(e)
    }
}

/// Write `stem.png` and `stem.svg` into `dir`.
pub fn write_band(
    dir: &Path,
    stem: &str,
    series: &[BandSeries<'_>],
    spec: &BandSpec<'_>,
) -> Result<()> {
    super::write_png_svg(dir, stem, (900, 560), &BandFigure { series, spec })
}
