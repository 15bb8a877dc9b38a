//! The contact sheet: the photo and its 26 built-in styles in a grid, each cell numbered, so a
//! user can pick a `--style` by eye (upstream gives the styles only as indices).

use image::{imageops, Rgb, RgbImage};

/// Cells per row: 7 x 4 holds the original and 26 styles.
pub const COLUMNS: u32 = 7;
/// Pixels between cells and around the grid.
pub const GAP: u32 = 6;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);

/// 3x5 bitmaps of the digits, one row per u8 (three low bits, left to right).
const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];

/// Writes `number` at (x, y) in white on a black box, each font pixel `scale` pixels wide.
pub fn draw_number(image: &mut RgbImage, number: usize, x: u32, y: u32, scale: u32) {
    let text: Vec<usize> = number.to_string().bytes().map(|b| usize::from(b - b'0')).collect();
    let (w, h) = ((text.len() as u32 * 4 + 1) * scale, 7 * scale);
    for py in y..(y + h).min(image.height()) {
        for px in x..(x + w).min(image.width()) {
            image.put_pixel(px, py, Rgb([0, 0, 0]));
        }
    }
    for (i, &digit) in text.iter().enumerate() {
        for (row, bits) in DIGITS[digit].iter().enumerate() {
            for col in 0..3u32 {
                if bits & (0b100 >> col) == 0 {
                    continue;
                }
                let left = x + (1 + i as u32 * 4 + col) * scale;
                let top = y + (1 + row as u32) * scale;
                for py in top..(top + scale).min(image.height()) {
                    for px in left..(left + scale).min(image.width()) {
                        image.put_pixel(px, py, Rgb([255, 255, 255]));
                    }
                }
            }
        }
    }
}

/// The grid: `cells[0]` the original (unnumbered), `cells[i]` style i-1, all the same size.
pub fn compose(cells: &[RgbImage]) -> RgbImage {
    let (cw, ch) = cells[0].dimensions();
    let rows = (cells.len() as u32).div_ceil(COLUMNS);
    let mut sheet = RgbImage::from_pixel(GAP + COLUMNS * (cw + GAP), GAP + rows * (ch + GAP), BACKGROUND);
    let scale = (cw.min(ch) / 40).clamp(1, 4);
    for (i, cell) in cells.iter().enumerate() {
        let (col, row) = (i as u32 % COLUMNS, i as u32 / COLUMNS);
        let (x, y) = (GAP + col * (cw + GAP), GAP + row * (ch + GAP));
        imageops::replace(&mut sheet, cell, i64::from(x), i64::from(y));
        if i > 0 {
            draw_number(&mut sheet, i - 1, x, y, scale);
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_drawn_from_the_bitmaps() {
        let mut image = RgbImage::from_pixel(20, 10, Rgb([9, 9, 9]));
        draw_number(&mut image, 17, 0, 0, 1);
        // "1" starts with a pixel in its middle column, "7" with a full top row.
        let on = |x: u32, y: u32| image.get_pixel(x, y).0 == [255, 255, 255];
        assert!(!on(1, 1) && on(2, 1) && !on(3, 1));
        assert!(on(5, 1) && on(6, 1) && on(7, 1));
        assert_eq!(image.get_pixel(0, 0).0, [0, 0, 0], "a black box behind the number");
        assert_eq!(image.get_pixel(15, 8).0, [9, 9, 9], "nothing drawn outside it");
    }

    #[test]
    fn the_grid_holds_every_cell() {
        let cells: Vec<RgbImage> = (0..27).map(|i| RgbImage::from_pixel(10, 8, Rgb([i as u8, 0, 0]))).collect();
        let sheet = compose(&cells);
        assert_eq!(sheet.dimensions(), (GAP + 7 * 16, GAP + 4 * 14));
        // The last cell (style 25) is row 3, column 5; its bottom-right pixel is its own colour.
        assert_eq!(sheet.get_pixel(GAP + 5 * 16 + 9, GAP + 3 * 14 + 7).0, [26, 0, 0]);
    }
}
