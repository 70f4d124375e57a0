//! A grouped bar chart written as a PNG with no plotting or image library:
//! a small RGB canvas, a built-in 5x7 font, and zlib from `miniz_oxide`.

use std::path::Path;

use anyhow::{Context, Result};

/// One chart panel: a value per (group, series); None draws "N/A".
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Group labels along the x axis.
    pub groups: Vec<String>,
    /// `values[group][series]`.
    pub values: Vec<Vec<Option<f64>>>,
}

const W: usize = 1000;
const H: usize = 520;
const PANEL_W: usize = W / 2;
const SCALE: usize = 2;
const CHAR_W: usize = 6 * SCALE;
const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [30, 30, 30];
const GRID: [u8; 3] = [220, 220, 220];
const COLORS: [[u8; 3]; 4] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];

struct Canvas {
    px: Vec<[u8; 3]>,
}

impl Canvas {
    fn rect(&mut self, x0: usize, y0: usize, w: usize, h: usize, c: [u8; 3]) {
        for y in y0.min(H)..(y0 + h).min(H) {
            for x in x0.min(W)..(x0 + w).min(W) {
                self.px[y * W + x] = c;
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (x + i * CHAR_W + col * SCALE, y + row * SCALE);
                        self.rect(px, py, SCALE, SCALE, c);
                    }
                }
            }
        }
    }

    fn text_centered(&mut self, cx: usize, y: usize, s: &str, c: [u8; 3]) {
        let w = s.chars().count() * CHAR_W;
        self.text(cx.saturating_sub(w / 2), y, s, c);
    }
}

/// Round `v` up to 1, 2 or 5 times a power of ten.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn draw_panel(c: &mut Canvas, x0: usize, p: &Panel, series: usize) {
    let (left, top, bottom) = (x0 + 70, 60, 420);
    let right = x0 + PANEL_W - 20;
    c.text_centered(x0 + PANEL_W / 2, 20, &p.title, BLACK);
    let max = p
        .values
        .iter()
        .flatten()
        .flatten()
        .fold(0.0f64, |a, &b| a.max(b));
    let top_value = nice_ceiling(max * 1.1);
    let y_of = |v: f64| bottom - ((v / top_value) * (bottom - top) as f64) as usize;
    for i in 0..=5 {
        let v = top_value * i as f64 / 5.0;
        let y = y_of(v);
        c.rect(left, y, right - left, 1, GRID);
        let label = format!("{v:.1}");
        c.text(left - 8 - label.len() * CHAR_W, y - 6, &label, BLACK);
    }
    c.rect(left, top, 2, bottom - top, BLACK);
    c.rect(left, bottom, right - left, 2, BLACK);
    let group_w = (right - left) / p.groups.len().max(1);
    let bar_w = (group_w - 30) / series.max(1);
    for (g, (label, vals)) in p.groups.iter().zip(&p.values).enumerate() {
        let gx = left + g * group_w + 15;
        c.text_centered(gx + (group_w - 30) / 2, bottom + 12, label, BLACK);
        for (s, v) in vals.iter().enumerate() {
            let bx = gx + s * bar_w;
            match v {
                Some(v) => {
                    let y = y_of(*v);
                    c.rect(bx + 2, y, bar_w - 4, bottom - y, COLORS[s % COLORS.len()]);
                    c.text_centered(bx + bar_w / 2, y - 18, &format!("{v:.2}"), BLACK);
                }
                None => c.text_centered(bx + bar_w / 2, bottom - 18, "N/A", BLACK),
            }
        }
    }
}

/// Draw two panels side by side with a legend naming the series, as a PNG.
pub fn bar_chart(path: &Path, panels: [&Panel; 2], series: &[&str]) -> Result<()> {
    let mut c = Canvas {
        px: vec![WHITE; W * H],
    };
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut c, i * PANEL_W, p, series.len());
    }
    let mut x = 80;
    for (s, name) in series.iter().enumerate() {
        c.rect(x, 478, 20, 20, COLORS[s % COLORS.len()]);
        c.text(x + 28, 482, name, BLACK);
        x += 28 + (name.len() + 3) * CHAR_W;
    }
    std::fs::write(path, encode_png(&c.px)).with_context(|| format!("write {}", path.display()))
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for b in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

fn encode_png(px: &[[u8; 3]]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(H * (1 + 3 * W));
    for row in px.chunks(W) {
        raw.push(0); // filter: none
        raw.extend(row.iter().flatten());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(W as u32).to_be_bytes());
    ihdr.extend_from_slice(&(H as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// 5x7 glyphs, one byte per row, bit 4 leftmost. Letters are upper case.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_input() {
        assert_eq!(crc32(&[b"IEND"]), 0xAE42_6082);
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(3.3), 5.0);
        assert_eq!(nice_ceiling(0.8), 1.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
    }
}
