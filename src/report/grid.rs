//! Image grids (GU Fig. 4 style, the mini model's samples per class): one row per group, each
//! row labelled, grayscale images drawn pixel by pixel, written as PNG and SVG.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::Result;

/// Pixels per image pixel, and the margins.
const ZOOM: u32 = 3;
const LABEL_W: u32 = 110;
const GAP: u32 = 2;
const CAPTION_H: u32 = 26;

struct Grid<'a> {
    rows: &'a [Vec<&'a [u8]>],
    side: usize,
    labels: &'a [&'a str],
    caption: &'a str,
}

impl Grid<'_> {
    fn size(&self) -> (u32, u32) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
        let cell = self.side as u32 * ZOOM + GAP;
        (
            (LABEL_W + cols * cell + GAP).max(480),
            CAPTION_H + self.rows.len() as u32 * cell + GAP,
        )
    }
}

impl super::Figure for Grid<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let cell = self.side as i32 * ZOOM as i32 + GAP as i32;
        root.draw(&Text::new(
            self.caption.to_string(),
            (6, 6),
            ("sans-serif", 14).into_font(),
        ))
        .map_err(e)?;
        for (r, row) in self.rows.iter().enumerate() {
            let y0 = CAPTION_H as i32 + r as i32 * cell;
            let label = self.labels.get(r).copied().unwrap_or("");
            root.draw(&Text::new(
                label.to_string(),
                (6, y0 + cell / 2 - 6),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(e)?;
            for (k, img) in row.iter().enumerate() {
                let x0 = LABEL_W as i32 + k as i32 * cell;
                for (p, &v) in img.iter().enumerate() {
                    let (py, px) = ((p / self.side) as i32, (p % self.side) as i32);
                    let (x, y) = (x0 + px * ZOOM as i32, y0 + py * ZOOM as i32);
                    root.draw(&Rectangle::new(
                        [(x, y), (x + ZOOM as i32, y + ZOOM as i32)],
                        RGBColor(v, v, v).filled(),
                    ))
                    .map_err(e)?;
                }
            }
        }
        root.present().map_err(e)
    }
}

/// Write `stem.png` and `stem.svg`: row r holds the images of `rows[r]` (each side × side,
/// uint8 grayscale, row-major), labelled `labels[r]`.
pub fn write_grid(
    dir: &Path,
    stem: &str,
    rows: &[Vec<&[u8]>],
    side: usize,
    labels: &[&str],
    caption: &str,
) -> Result<()> {
    let g = Grid {
        rows,
        side,
        labels,
        caption,
    };
    super::write_png_svg(dir, stem, g.size(), &g)
}
