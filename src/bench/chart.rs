//! A grouped bar chart as a PNG, with its own 5×7 bitmap font (upper case, digits and a few
//! signs): enough for `ddim bench --compare` without a font or plotting dependency.

use std::path::Path;

use anyhow::{ensure, Result};

/// One group of bars (a kernel), one value per series (an adapter); None leaves a gap.
pub struct Group {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub series: Vec<String>,
    pub groups: Vec<Group>,
}

const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];
const BAR: u32 = 16;
const GAP: u32 = 28;
const LEFT: u32 = 70;
const PLOT_H: u32 = 300;
const TEXT: [u8; 3] = [20, 20, 20];

/// Rows of each glyph, `#` for ink, 5 columns × 7 rows.
const GLYPHS: &[(char, &str)] = &[
    ('A', ".###. #...# #...# ##### #...# #...# #...#"),
    ('B', "####. #...# #...# ####. #...# #...# ####."),
    ('C', ".###. #...# #.... #.... #.... #...# .###."),
    ('D', "####. #...# #...# #...# #...# #...# ####."),
    ('E', "##### #.... #.... ####. #.... #.... #####"),
    ('F', "##### #.... #.... ####. #.... #.... #...."),
    ('G', ".###. #...# #.... #.### #...# #...# .####"),
    ('H', "#...# #...# #...# ##### #...# #...# #...#"),
    ('I', ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###."),
    ('J', "..### ...#. ...#. ...#. ...#. #..#. .##.."),
    ('K', "#...# #..#. #.#.. ##... #.#.. #..#. #...#"),
    ('L', "#.... #.... #.... #.... #.... #.... #####"),
    ('M', "#...# ##.## #.#.# #.#.# #...# #...# #...#"),
    ('N', "#...# #...# ##..# #.#.# #..## #...# #...#"),
    ('O', ".###. #...# #...# #...# #...# #...# .###."),
    ('P', "####. #...# #...# ####. #.... #.... #...."),
    ('Q', ".###. #...# #...# #...# #.#.# #..#. .##.#"),
    ('R', "####. #...# #...# ####. #.#.. #..#. #...#"),
    ('S', ".#### #.... #.... .###. ....# ....# ####."),
    ('T', "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."),
    ('U', "#...# #...# #...# #...# #...# #...# .###."),
    ('V', "#...# #...# #...# #...# #...# .#.#. ..#.."),
    ('W', "#...# #...# #...# #.#.# #.#.# #.#.# .#.#."),
    ('X', "#...# #...# .#.#. ..#.. .#.#. #...# #...#"),
    ('Y', "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#.."),
    ('Z', "##### ....# ...#. ..#.. .#... #.... #####"),
    ('0', ".###. #...# #..## #.#.# ##..# #...# .###."),
    ('1', "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###."),
    ('2', ".###. #...# ....# ...#. ..#.. .#... #####"),
    ('3', "##### ...#. ..#.. ...#. ....# #...# .###."),
    ('4', "...#. ..##. .#.#. #..#. ##### ...#. ...#."),
    ('5', "##### #.... ####. ....# ....# #...# .###."),
    ('6', "..##. .#... #.... ####. #...# #...# .###."),
    ('7', "##### ....# ...#. ..#.. .#... .#... .#..."),
    ('8', ".###. #...# #...# .###. #...# #...# .###."),
    ('9', ".###. #...# #...# .#### ....# ...#. .##.."),
    ('.', "..... ..... ..... ..... ..... .##.. .##.."),
    (',', "..... ..... ..... ..... .##.. ..#.. .#..."),
    (':', "..... .##.. .##.. ..... .##.. .##.. ....."),
    ('-', "..... ..... ..... ##### ..... ..... ....."),
    ('_', "..... ..... ..... ..... ..... ..... #####"),
    ('/', "..... ....# ...#. ..#.. .#... #.... ....."),
    ('(', "...#. ..#.. .#... .#... .#... ..#.. ...#."),
    (')', ".#... ..#.. ...#. ...#. ...#. ..#.. .#..."),
    ('%', "##... ##..# ...#. ..#.. .#... #..## ...##"),
    ('+', "..... ..#.. ..#.. ##### ..#.. ..#.. ....."),
    ('=', "..... ..... ##### ..... ##### ..... ....."),
    ('>', ".#... ..#.. ...#. ....# ...#. ..#.. .#..."),
    ('<', "...#. ..#.. .#... #.... .#... ..#.. ...#."),
    ('#', ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#."),
    ('\'', "..#.. ..#.. ..... ..... ..... ..... ....."),
    ('[', ".###. .#... .#... .#... .#... .#... .###."),
    (']', ".###. ...#. ...#. ...#. ...#. ...#. .###."),
    (' ', "..... ..... ..... ..... ..... ..... ....."),
];
const UNKNOWN: &str = "##### #...# #...# #...# #...# #...# #####";

fn glyph(c: char) -> impl Iterator<Item = bool> {
    let c = c.to_ascii_uppercase();
    let rows = GLYPHS
        .iter()
        .find(|(g, _)| *g == c)
        .map_or(UNKNOWN, |(_, r)| r);
    rows.chars().filter(|c| *c != ' ').map(|c| c == '#')
}

/// Width in pixels of `text` at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 6 * scale
}

struct Canvas {
    img: image::RgbImage,
}

impl Canvas {
    fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, color: [u8; 3]) {
        let (iw, ih) = self.img.dimensions();
        for yy in y..(y + h).min(ih) {
            for xx in x..(x + w).min(iw) {
                self.img.put_pixel(xx, yy, image::Rgb(color));
            }
        }
    }

    fn text(&mut self, x: u32, y: u32, text: &str, scale: u32, color: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            let x0 = x + i as u32 * 6 * scale;
            for (p, ink) in glyph(c).enumerate() {
                if ink {
                    let (gx, gy) = (p as u32 % 5, p as u32 / 5);
                    self.rect(x0 + gx * scale, y + gy * scale, scale, scale, color);
                }
            }
        }
    }
}

/// A round axis maximum at or above `max` (1, 2 or 5 times a power of ten).
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl BarChart {
    /// Draws the chart and writes it to `path` (as every output: see `ddim_wgpu::output`).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        ensure!(!self.groups.is_empty(), "chart: nothing to draw");
        let n = self.series.len().max(1) as u32;
        let label_w = self
            .groups
            .iter()
            .map(|g| text_width(&g.label, 1))
            .max()
            .unwrap_or(0);
        let group_w = (n * BAR).max(label_w) + GAP;
        let legend_h = 14 * n + 8;
        let top = 40 + legend_h;
        let width = (LEFT + group_w * self.groups.len() as u32 + 20)
            .max(
                LEFT + self
                    .series
                    .iter()
                    .map(|s| text_width(s, 1))
                    .max()
                    .unwrap_or(0)
                    + 40,
            )
            .max(text_width(&self.title, 2) + 40);
        let height = top + PLOT_H + 40;
        let mut c = Canvas {
            img: image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255])),
        };
        c.text(20, 12, &self.title, 2, TEXT);
        for (i, s) in self.series.iter().enumerate() {
            let y = 40 + 14 * i as u32;
            c.rect(LEFT, y, 10, 8, PALETTE[i % PALETTE.len()]);
            c.text(LEFT + 16, y, s, 1, TEXT);
        }
        let max = self
            .groups
            .iter()
            .flat_map(|g| g.values.iter().flatten())
            .copied()
            .fold(0.0, f64::max);
        let y_max = nice_max(max);
        // Axis, grid lines at quarters, and their values.
        let base = top + PLOT_H;
        for q in 0..=4 {
            let y = base - PLOT_H * q / 4;
            c.rect(LEFT, y, width - LEFT - 10, 1, [225, 225, 225]);
            let v = short(y_max * q as f64 / 4.0);
            c.text(
                LEFT - 6 - text_width(&v, 1),
                y.saturating_sub(3),
                &v,
                1,
                TEXT,
            );
        }
        c.rect(LEFT, top, 1, PLOT_H + 1, TEXT);
        c.text(4, top.saturating_sub(12), &self.y_label, 1, TEXT);
        for (gi, g) in self.groups.iter().enumerate() {
            let x0 = LEFT + 10 + gi as u32 * group_w;
            for (si, v) in g.values.iter().enumerate() {
                let Some(v) = v else { continue };
                let h = ((v / y_max) * PLOT_H as f64)
                    .round()
                    .clamp(1.0, PLOT_H as f64) as u32;
                let x = x0 + si as u32 * BAR;
                c.rect(x, base - h, BAR - 3, h, PALETTE[si % PALETTE.len()]);
            }
            c.text(x0, base + 8, &g.label, 1, TEXT);
        }
        let (w, h) = c.img.dimensions();
        let png = ddim_wgpu::image_io::encode_png(w, h, 3, c.img.as_raw())?;
        ddim_wgpu::output::write_atomic(path, &png)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_has_35_cells() {
        for (c, rows) in GLYPHS {
            assert_eq!(glyph(*c).count(), 35, "{c:?}");
            assert_eq!(rows.split(' ').count(), 7, "{c:?}");
        }
        assert_eq!(
            glyph('a').collect::<Vec<_>>(),
            glyph('A').collect::<Vec<_>>()
        );
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(13.7), 20.0);
        assert_eq!(nice_max(0.31), 0.5);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn draws_bars_of_each_series_colour() {
        let chart = BarChart {
            title: "test".into(),
            y_label: "GFLOP/s".into(),
            series: vec!["a".into(), "b".into()],
            groups: vec![
                Group {
                    label: "conv".into(),
                    values: vec![Some(10.0), Some(5.0)],
                },
                Group {
                    label: "matmul".into(),
                    values: vec![None, Some(20.0)],
                },
            ],
        };
        let path = std::env::temp_dir().join(format!("ddim-chart-{}.png", std::process::id()));
        chart.write_png(&path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        // Legend squares plus bars: series b (two bars) has more ink than series a (one bar).
        assert!(count(PALETTE[0]) > 80 && count(PALETTE[1]) > count(PALETTE[0]));
        let _ = std::fs::remove_file(&path);
    }
}
