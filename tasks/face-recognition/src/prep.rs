//! The networks' inputs as face-api makes them on its tensor path (`NetInput.toBatchTensor`):
//! the picture or crop padded to a square with zeros, then resized with TensorFlow's legacy
//! bilinear resize (no half-pixel centres, no antialiasing), then normalised per network. Each
//! step reproduces tfjs's arithmetic, so that the crops cut from the landmarks (floored pixel
//! positions) fall where face-api's fall.

use image::RgbImage;

use crate::nets::Map;

/// An integer rectangle of a picture: x, y, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// `rect` of `picture` as `toBatchTensor(size, centre)` makes it: padded to a square with zeros
/// (`ops/padToSquare.ts`: `centre`d puts `round(diff / 2)` after the pixels and the rest before
/// them, else all of it after), then resized to `size` unless already that size. The padding is
/// never made: the resize reads zeros where it would be.
pub fn batch_input(picture: &RgbImage, rect: Rect, size: usize, centre: bool) -> Map {
    let (w, h) = (rect.width as usize, rect.height as usize);
    let side = w.max(h);
    let diff = side - w.min(h);
    // JavaScript's Math.round: halves go up.
    let after = if centre { diff.div_ceil(2) } else { diff };
    let before = diff - after;
    let (top, left) = if h < w { (before, 0) } else { (0, before) };
    let at = |y: usize, x: usize, ch: usize| -> f64 {
        match (y.checked_sub(top), x.checked_sub(left)) {
            (Some(sy), Some(sx)) if sy < h && sx < w => {
                f64::from(picture.get_pixel(rect.x + sx as u32, rect.y + sy as u32).0[ch])
            }
            _ => 0.0,
        }
    };
    resize_bilinear(side, size, at)
}

/// `tf.image.resizeBilinear` of a `side` x `side` RGB square read through `at`, to `size`, with
/// alignCorners and halfPixelCenters off, as tfjs's CPU kernel computes it: the source is the
/// destination times in / out, the arithmetic in double precision, stored as f32. At equal sizes
/// every sample falls on a pixel: a copy.
fn resize_bilinear(side: usize, size: usize, at: impl Fn(usize, usize, usize) -> f64) -> Map {
    let ratio = side as f64 / size as f64;
    let axis: Vec<(usize, usize, f64)> = (0..size)
        .map(|i| {
            let source = ratio * i as f64;
            let lo = source.floor().max(0.0);
            (lo as usize, (source.ceil() as usize).min(side - 1), source - lo)
        })
        .collect();
    let mut data = Vec::with_capacity(size * size * 3);
    for &(r0, r1, fr) in &axis {
        for &(c0, c1, fc) in &axis {
            for ch in 0..3 {
                let (tl, tr, bl, br) = (at(r0, c0, ch), at(r0, c1, ch), at(r1, c0, ch), at(r1, c1, ch));
                let top = tl + (tr - tl) * fc;
                let bottom = bl + (br - bl) * fc;
                data.push((top + (bottom - top) * fr) as f32);
            }
        }
    }
    Map { h: size, w: size, c: 3, data }
}

/// The detector's input: v / 127.5 - 1.
pub fn detector_input(picture: &RgbImage) -> Map {
    let whole = Rect { x: 0, y: 0, width: picture.width(), height: picture.height() };
    let mut x = batch_input(picture, whole, crate::nets::SSD_INPUT, false);
    x.data.iter_mut().for_each(|v| *v = *v / 127.5 - 1.0);
    x
}

/// The landmark and descriptor nets' normalisation: minus the mean RGB, over 255.
const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];

/// The landmark or descriptor net's input, of `size`, from `crop` of `picture`.
pub fn face_input(picture: &RgbImage, crop: Rect, size: usize) -> Map {
    let mut x = batch_input(picture, crop, size, true);
    for pixel in x.data.chunks_exact_mut(3) {
        pixel.iter_mut().zip(MEAN_RGB).for_each(|(v, m)| *v = (*v - m) / 255.0);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32, v: impl Fn(u32, u32) -> u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([v(x, y); 3]))
    }

    fn red(m: &Map) -> Vec<f32> {
        m.data.chunks_exact(3).map(|p| p[0]).collect()
    }

    #[test]
    fn padding_goes_after_or_round_half_up_after_when_centred() {
        // 4 wide, 1 high: 3 rows to add; no resize at size 4.
        let picture = grey(4, 1, |_, _| 1);
        let whole = Rect { x: 0, y: 0, width: 4, height: 1 };
        let corner = red(&batch_input(&picture, whole, 4, false));
        assert_eq!(&corner[..4], &[1.0; 4]);
        assert!(corner[4..].iter().all(|&v| v == 0.0));
        // round(3 / 2) = 2 rows after, so one before.
        let centred = red(&batch_input(&picture, whole, 4, true));
        assert!(centred[..4].iter().all(|&v| v == 0.0));
        assert_eq!(&centred[4..8], &[1.0; 4]);
        assert!(centred[8..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn legacy_bilinear_samples_at_destination_times_ratio() {
        // 2x2 -> 4x4: sources 0, 0.5, 1, 1.5 (clamped to the last pixel), no half-pixel shift.
        let picture = grey(2, 2, |x, y| (4 * x + 8 * y) as u8);
        let y = red(&batch_input(&picture, Rect { x: 0, y: 0, width: 2, height: 2 }, 4, false));
        assert_eq!(&y[..4], &[0.0, 2.0, 4.0, 4.0]);
        assert_eq!(&y[4..8], &[4.0, 6.0, 8.0, 8.0]);
        assert_eq!(&y[12..], &[8.0, 10.0, 12.0, 12.0]);
        // A crop reads from its own corner.
        let picture = grey(5, 5, |x, y| (10 * y + x) as u8);
        let crop = red(&batch_input(&picture, Rect { x: 2, y: 3, width: 2, height: 2 }, 2, true));
        assert_eq!(crop, [32.0, 33.0, 42.0, 43.0]);
    }
}
