//! Figures (plotters, PNG + SVG) and tables (Markdown) — rendering only; numbers come from frames.

pub mod band;
pub mod scatter;
pub mod table;
