//! Multi-panel 2-D scatter figures (GU Fig. 2 style), written as PNG and SVG.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::Result;

/// One panel: a title and its points.
pub struct Panel<'a> {
    pub title: String,
    pub points: &'a [[f64; 2]],
    pub color: RGBColor,
}

/// Layout shared by all panels.
pub struct ScatterSpec<'a> {
    /// Square axis range [-extent, extent] on both axes.
    pub extent: f64,
    /// Marked with small crosses on every panel (e.g. mode centres).
    pub markers: &'a [[f64; 2]],
    pub caption: String,
}

struct ScatterFigure<'a, 'b> {
    panels: &'a [Panel<'b>],
    spec: &'a ScatterSpec<'b>,
}

impl super::Figure for ScatterFigure<'_, '_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        let (panels, spec, radius) = (self.panels, self.spec, 1);
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 - 28);
        bottom
            .titled(
                &spec.caption,
                ("sans-serif", 15).into_font().color(&BLACK.mix(0.75)),
            )
            .map_err(e)?;
        for (area, panel) in top.split_evenly((1, panels.len())).iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(28)
                .y_label_area_size(36)
                .build_cartesian_2d(-spec.extent..spec.extent, -spec.extent..spec.extent)
                .map_err(e)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(7)
                .y_labels(7)
                .draw()
                .map_err(e)?;
            let style = panel.color.mix(0.35).filled();
            chart
                .draw_series(
                    panel
                        .points
                        .iter()
                        .map(|p| Circle::new((p[0], p[1]), radius, style)),
                )
                .map_err(e)?;
            chart
                .draw_series(
                    spec.markers
                        .iter()
                        .map(|c| Cross::new((c[0], c[1]), 4, BLACK.mix(0.6).stroke_width(1))),
                )
                .map_err(e)?;
        }
        root.present().map_err(e)
    }
}

/// Write `stem.png` and `stem.svg` into `dir`.
pub fn write_scatter(
    dir: &Path,
    stem: &str,
    panels: &[Panel<'_>],
    spec: &ScatterSpec<'_>,
) -> Result<()> {
    let size = (520 * panels.len() as u32, 560);
    super::write_png_svg(dir, stem, size, &ScatterFigure { panels, spec })
}
