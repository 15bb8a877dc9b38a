//! Pictures with what a vision task found drawn on them (what `--output-dir` writes): boxes in a
//! colour of their class, each with its text on a bar above it (inside the box when the box
//! touches the top edge), and points.

use font8x8::legacy::BASIC_LEGACY;
use image::{Rgb, RgbImage};

/// One box to draw: `[x, y, width, height]` in the picture's pixels, its text, and which colour
/// of the palette it takes (a class index: the same class, the same colour).
#[derive(Debug, Clone)]
pub struct Labelled {
    pub bbox: [u32; 4],
    pub text: String,
    pub colour: usize,
}

/// Distinct, saturated colours; classes beyond them reuse the list.
const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [255, 225, 25],
];

/// The palette's colour for class `index`.
pub fn colour(index: usize) -> Rgb<u8> {
    Rgb(PALETTE[index % PALETTE.len()])
}

/// Draws `boxes`, the first on top.
pub fn boxes(picture: &mut RgbImage, boxes: &[Labelled]) {
    let (width, height) = picture.dimensions();
    let side = width.min(height);
    let line = (side / 250).clamp(2, 8);
    let scale = (side / 250).clamp(1, 4);
    // Worst last, so the best boxes and labels are drawn on top.
    for labelled in boxes.iter().rev() {
        let colour = colour(labelled.colour);
        let [x, y, w, h] = labelled.bbox;
        if w == 0 || h == 0 {
            continue;
        }
        for t in 0..line {
            rectangle(picture, (x + t, y + t), (x + w).saturating_sub(1 + t), (y + h).saturating_sub(1 + t), colour);
        }
        let text = &labelled.text;
        let (tw, th) = (text.len() as u32 * 8 * scale + 2 * scale, 8 * scale + 2 * scale);
        let top = if y >= th { y - th } else { y };
        fill(picture, (x, top), (x + tw).min(width), (top + th).min(height), colour);
        let ink = if luma(colour) > 150 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) };
        text_at(picture, text, (x + scale, top + scale), scale, ink);
    }
}

/// A filled square of side `2 * radius + 1` centred on `(x, y)`, clipped to the picture.
pub fn point(picture: &mut RgbImage, (x, y): (f32, f32), radius: u32, colour: Rgb<u8>) {
    if !(x.is_finite() && y.is_finite()) || x < 0.0 || y < 0.0 {
        return;
    }
    let (x, y) = (x.round() as u32, y.round() as u32);
    fill(picture, (x.saturating_sub(radius), y.saturating_sub(radius)), x + radius + 1, y + radius + 1, colour);
}

fn luma(Rgb([r, g, b]): Rgb<u8>) -> u32 {
    (299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b)) / 1000
}

fn put(picture: &mut RgbImage, x: u32, y: u32, colour: Rgb<u8>) {
    if x < picture.width() && y < picture.height() {
        picture.put_pixel(x, y, colour);
    }
}

/// The outline from `(x0, y0)` to `(x1, y1)`, both inclusive.
fn rectangle(picture: &mut RgbImage, (x0, y0): (u32, u32), x1: u32, y1: u32, colour: Rgb<u8>) {
    if x1 < x0 || y1 < y0 {
        return;
    }
    for x in x0..=x1 {
        put(picture, x, y0, colour);
        put(picture, x, y1, colour);
    }
    for y in y0..=y1 {
        put(picture, x0, y, colour);
        put(picture, x1, y, colour);
    }
}

/// The filled area from `(x0, y0)` up to, not including, `(x1, y1)`.
fn fill(picture: &mut RgbImage, (x0, y0): (u32, u32), x1: u32, y1: u32, colour: Rgb<u8>) {
    for y in y0..y1 {
        for x in x0..x1 {
            put(picture, x, y, colour);
        }
    }
}

fn text_at(picture: &mut RgbImage, text: &str, (x, y): (u32, u32), scale: u32, ink: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let glyph = BASIC_LEGACY.get(c as usize).copied().unwrap_or(BASIC_LEGACY[b'?' as usize]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    let (px, py) = (x + (i as u32 * 8 + col) * scale, y + row as u32 * scale);
                    fill(picture, (px, py), px + scale, py + scale, ink);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_is_outlined_in_its_class_colour_and_labelled() {
        let mut picture = RgbImage::from_pixel(200, 100, Rgb([128, 128, 128]));
        let object = Labelled { bbox: [50, 40, 100, 50], text: "dog 50%".into(), colour: 1 };
        boxes(&mut picture, std::slice::from_ref(&object));
        let colour = Rgb(PALETTE[1]);
        assert_eq!(*picture.get_pixel(50, 60), colour, "left edge");
        assert_eq!(*picture.get_pixel(149, 60), colour, "right edge");
        assert_eq!(*picture.get_pixel(100, 89), colour, "bottom edge");
        assert_eq!(*picture.get_pixel(100, 65), Rgb([128, 128, 128]), "inside untouched");
        // The label bar sits above the box and holds ink of another colour.
        let bar: Vec<Rgb<u8>> = (51..100).map(|x| *picture.get_pixel(x, 34)).collect();
        assert!(bar.contains(&colour) && bar.iter().any(|p| *p != colour), "{bar:?}");
        // Boxes at the picture's edges are clipped, not a panic.
        let edge = Labelled { bbox: [190, 90, 10, 10], ..object };
        boxes(&mut picture, &[edge]);
        point(&mut picture, (199.6, 99.9), 2, colour);
        point(&mut picture, (-3.0, f32::NAN), 2, colour);
        assert_eq!(*picture.get_pixel(198, 98), colour);
    }
}
