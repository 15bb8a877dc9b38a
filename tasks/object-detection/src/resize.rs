//! OpenCV's `cv2.resize(..., interpolation=INTER_AREA)` on 8-bit pictures, the resize FastestDet's
//! own example feeds the network with. A stretch to 352x352 changes what a weak detector finds
//! (near-threshold boxes come and go with another filter), so zoo resizes as the reference does:
//! a true area average when both sides shrink (a block mean for whole-number factors), and
//! OpenCV's bilinear variant with area-style weights, in its fixed-point arithmetic, otherwise.

use image::RgbImage;
use rayon::prelude::*;

pub fn area(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (width as usize, height as usize);
    if (sw, sh) == (dw, dh) {
        return src.clone();
    }
    if dw == 0 || dh == 0 || sw == 0 || sh == 0 {
        return RgbImage::new(width, height);
    }
    let (scale_x, scale_y) = (scale(sw, dw), scale(sh, dh));
    let data = if scale_x >= 1.0 && scale_y >= 1.0 {
        if scale_x.fract() == 0.0 && scale_y.fract() == 0.0 {
            block_mean(src, dw, dh, scale_x as usize, scale_y as usize)
        } else {
            area_average(src, dw, dh)
        }
    } else {
        linear_with_area_weights(src, dw, dh)
    };
    RgbImage::from_raw(width, height, data).expect("the output holds width x height pixels")
}

/// Source pixels per output pixel, rounded as OpenCV rounds it (the inverse of the inverse): a
/// position that falls on a whole source pixel must floor the same way.
fn scale(source: usize, target: usize) -> f64 {
    1.0 / (target as f64 / source as f64)
}

fn block_mean(src: &RgbImage, dw: usize, dh: usize, fx: usize, fy: usize) -> Vec<u8> {
    let (sw, pixels) = (src.width() as usize, src.as_raw());
    let count = (fx * fy) as u32;
    let mut out = vec![0u8; dw * dh * 3];
    for (i, value) in out.iter_mut().enumerate() {
        let (x, y, c) = ((i / 3) % dw, i / 3 / dw, i % 3);
        let mut sum = 0u32;
        for sy in y * fy..(y + 1) * fy {
            for sx in x * fx..(x + 1) * fx {
                sum += u32::from(pixels[(sy * sw + sx) * 3 + c]);
            }
        }
        // As OpenCV rounds: its 2x2 kernel in integers, the others through a float product,
        // halves to even.
        *value = if count == 4 {
            ((sum + 2) >> 2) as u8
        } else {
            (sum as f32 * (1.0 / count as f32)).round_ties_even() as u8
        };
    }
    out
}

/// Each output pixel's share of each source pixel along one axis: the fraction of the source
/// pixel its footprint covers, as OpenCV's `computeResizeAreaTab` gives them.
fn area_weights(source: usize, target: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = scale(source, target);
    (0..target)
        .map(|d| {
            let start = d as f64 * scale;
            let end = start + scale;
            let cell = scale.min(source as f64 - start);
            let last = (end.floor() as usize).min(source - 1);
            let first = (start.ceil() as usize).min(last);
            let mut weights = Vec::new();
            if first as f64 - start > 1e-3 {
                weights.push((first - 1, ((first as f64 - start) / cell) as f32));
            }
            weights.extend((first..last).map(|s| (s, (1.0 / cell) as f32)));
            if end - last as f64 > 1e-3 {
                weights.push((last, ((end - last as f64).min(1.0).min(cell) / cell) as f32));
            }
            weights
        })
        .collect()
}

/// In f32 and in OpenCV's order (each source row across, then rows summed down), so that the
/// rounding lands where OpenCV's does.
fn area_average(src: &RgbImage, dw: usize, dh: usize) -> Vec<u8> {
    let (sw, sh, pixels) = (src.width() as usize, src.height() as usize, src.as_raw());
    let (wx, wy) = (area_weights(sw, dw), area_weights(sh, dh));
    // Rows are independent in both passes, so they are split over the threads; each value's
    // sum keeps its order.
    let mut across = vec![0f32; sh * dw * 3];
    across.par_chunks_mut(dw * 3).enumerate().for_each(|(y, row)| {
        let line = &pixels[y * sw * 3..(y + 1) * sw * 3];
        for (pixel, weights) in row.chunks_exact_mut(3).zip(&wx) {
            let mut sum = [0f32; 3];
            for &(s, w) in weights {
                let from = &line[s * 3..s * 3 + 3];
                for c in 0..3 {
                    sum[c] += f32::from(from[c]) * w;
                }
            }
            pixel.copy_from_slice(&sum);
        }
    });
    let mut out = vec![0u8; dw * dh * 3];
    out.par_chunks_mut(dw * 3).zip(&wy).for_each(|(row, weights)| {
        let mut sum = vec![0f32; dw * 3];
        for &(s, w) in weights {
            sum.iter_mut().zip(&across[s * dw * 3..(s + 1) * dw * 3]).for_each(|(a, &v)| *a += w * v);
        }
        // saturate_cast<uchar>: rounded half to even.
        row.iter_mut().zip(&sum).for_each(|(o, v)| *o = v.round_ties_even().clamp(0.0, 255.0) as u8);
    });
    out
}

/// OpenCV's fixed-point scale for interpolation weights (`INTER_RESIZE_COEF_SCALE`).
const ONE: f32 = 2048.0;

/// For each output position, the first of the two source pixels it mixes and their weights.
fn linear_area_taps(source: usize, target: usize) -> Vec<(usize, [i32; 2])> {
    let (scale, inverse) = (scale(source, target), target as f64 / source as f64);
    (0..target)
        .map(|d| {
            let mut s = (d as f64 * scale).floor() as usize;
            let mut f = ((d + 1) as f64 - (s + 1) as f64 * inverse) as f32;
            f = if f <= 0.0 { 0.0 } else { f - f.floor() };
            if s >= source - 1 {
                (s, f) = (source - 1, 0.0);
            }
            let fixed = |w: f32| (w * ONE).round_ties_even() as i32;
            (s, [fixed(1.0 - f), fixed(f)])
        })
        .collect()
}

fn linear_with_area_weights(src: &RgbImage, dw: usize, dh: usize) -> Vec<u8> {
    let (sw, sh, pixels) = (src.width() as usize, src.height() as usize, src.as_raw());
    let (tx, ty) = (linear_area_taps(sw, dw), linear_area_taps(sh, dh));
    let mut rows = vec![0i32; sh * dw * 3];
    for y in 0..sh {
        let row = &pixels[y * sw * 3..(y + 1) * sw * 3];
        for (x, &(s, [a0, a1])) in tx.iter().enumerate() {
            let next = (s + 1).min(sw - 1);
            for c in 0..3 {
                rows[(y * dw + x) * 3 + c] = i32::from(row[s * 3 + c]) * a0 + i32::from(row[next * 3 + c]) * a1;
            }
        }
    }
    let mut out = vec![0u8; dw * dh * 3];
    for (y, &(s, [b0, b1])) in ty.iter().enumerate() {
        let (r0, r1) = (s * dw * 3, (s + 1).min(sh - 1) * dw * 3);
        for i in 0..dw * 3 {
            // OpenCV's 8-bit vertical pass, which drops bits in this order.
            let value = (((b0 * (rows[r0 + i] >> 4)) >> 16) + ((b1 * (rows[r1 + i] >> 4)) >> 16) + 2) >> 2;
            out[y * dw * 3 + i] = value.clamp(0, 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The area average one value at a time, each sum folded in OpenCV's order: what the row-split
    /// version must give bit for bit.
    fn area_average_one_by_one(src: &RgbImage, dw: usize, dh: usize) -> Vec<u8> {
        let (sw, sh, pixels) = (src.width() as usize, src.height() as usize, src.as_raw());
        let (wx, wy) = (area_weights(sw, dw), area_weights(sh, dh));
        let mut across = vec![0f32; sh * dw * 3];
        for y in 0..sh {
            for (x, weights) in wx.iter().enumerate() {
                for c in 0..3 {
                    across[(y * dw + x) * 3 + c] =
                        weights.iter().fold(0f32, |sum, &(s, w)| sum + f32::from(pixels[(y * sw + s) * 3 + c]) * w);
                }
            }
        }
        let mut out = vec![0u8; dw * dh * 3];
        for (y, weights) in wy.iter().enumerate() {
            for i in 0..dw * 3 {
                let value = weights.iter().fold(0f32, |sum, &(s, w)| sum + w * across[s * dw * 3 + i]);
                out[y * dw * 3 + i] = value.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }

    #[test]
    fn the_split_area_average_equals_the_one_by_one_sums() {
        let noise =
            RgbImage::from_fn(173, 131, |x, y| image::Rgb([(x * 37 + y * 11) as u8, (x * y) as u8, (x ^ y) as u8]));
        for (dw, dh) in [(31, 29), (170, 1), (1, 100), (77, 64)] {
            assert_eq!(area_average(&noise, dw, dh), area_average_one_by_one(&noise, dw, dh), "{dw}x{dh}");
        }
        assert_eq!(area(&noise, 0, 5).dimensions(), (0, 5));
    }

    #[test]
    fn whole_factors_average_blocks_and_fractions_share_pixels() {
        let src = RgbImage::from_fn(4, 2, |x, _| image::Rgb([(x * 60) as u8, 10, 255]));
        let half = area(&src, 2, 1);
        assert_eq!(half.get_pixel(0, 0).0, [30, 10, 255]);
        assert_eq!(half.get_pixel(1, 0).0, [150, 10, 255]);
        // 3 -> 2: each output covers 1.5 source pixels; the middle one is split evenly.
        let src = RgbImage::from_fn(3, 1, |x, _| image::Rgb([[0, 90, 180][x as usize], 0, 0]));
        let out = area(&src, 2, 1);
        assert_eq!(out.get_pixel(0, 0).0[0], 30);
        assert_eq!(out.get_pixel(1, 0).0[0], 150);
        let weights = area_weights(3, 2);
        assert_eq!(weights[0], vec![(0, (1.0 / 1.5) as f32), (1, (0.5 / 1.5) as f32)]);
    }

    #[test]
    fn whole_factors_round_as_opencv_does() {
        // 2x1 blocks: sums 3 and 5 are 1.5 and 2.5, both to 2 (halves to even).
        let src = RgbImage::from_fn(4, 1, |x, _| image::Rgb([[1, 2, 2, 3][x as usize], 0, 0]));
        assert_eq!(area(&src, 2, 1).pixels().map(|p| p.0[0]).collect::<Vec<_>>(), [2, 2]);
        // 2x2 blocks go through OpenCV's integer kernel: a sum of 2 is (2 + 2) >> 2 = 1.
        let src = RgbImage::from_fn(2, 2, |x, y| image::Rgb([u8::from(x == 0 && y == 0) * 2, 0, 0]));
        assert_eq!(area(&src, 1, 1).get_pixel(0, 0).0[0], 1);
    }

    #[test]
    fn enlarging_keeps_flat_areas_flat_and_steps_monotone() {
        let flat = RgbImage::from_pixel(5, 3, image::Rgb([77, 128, 200]));
        let out = area(&flat, 8, 7);
        assert!(out.pixels().all(|p| p.0 == [77, 128, 200]));
        let step = RgbImage::from_fn(4, 1, |x, _| image::Rgb([if x < 2 { 0 } else { 255 }, 0, 0]));
        let out = area(&step, 10, 1);
        let reds: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        assert!(reds.windows(2).all(|w| w[0] <= w[1]), "{reds:?}");
        assert_eq!((reds[0], reds[9]), (0, 255));
    }
}
