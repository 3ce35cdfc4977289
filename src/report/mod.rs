//! Figures (plotters, PNG + SVG), tables (Markdown) and the paper comparison (Markdown + LaTeX,
//! against `paper/<artifact>.toml`) — rendering only; numbers come from frames.

pub mod band;
pub mod compare;
pub mod grid;
pub mod paper;
pub mod scatter;
pub mod table;

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, DrawingBackend, IntoDrawingArea, SVGBackend};

use crate::error::{Error, Result};
use crate::tracking::{atomic_write, write_atomically};

/// A figure that can be drawn on any plotters backend (PNG and SVG share one drawing routine).
pub(crate) trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
}

/// Writes `stem.png` and `stem.svg` of `figure` into `dir`, each atomically: the PNG is drawn
/// into a temporary sibling and renamed, the SVG rendered to a string and written atomically.
pub(crate) fn write_png_svg(
    dir: &Path,
    stem: &str,
    size: (u32, u32),
    figure: &impl Figure,
) -> Result<()> {
    let png = dir.join(format!("{stem}.png"));
    write_atomically(&png, |tmp| {
        figure
            .draw(BitMapBackend::new(tmp, size).into_drawing_area())
            .map_err(|reason| Error::Plot {
                path: png.clone(),
                reason,
            })
    })?;
    let svg_path = dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    figure
        .draw(SVGBackend::with_string(&mut svg, size).into_drawing_area())
        .map_err(|reason| Error::Plot {
            path: svg_path.clone(),
            reason,
        })?;
    atomic_write(&svg_path, svg.as_bytes())
}
