//! What face-api does between its networks: suppressing overlapping detections and mapping them
//! to the picture's pixels, cutting the landmark crop, turning the landmark net's outputs into
//! picture positions, and cutting dlib's alignment crop for the descriptor. Each follows
//! face-api's code, quirks included, so that the integer crops match its crops.

use crate::nets::{SsdOutput, LANDMARK_INPUT, SSD_INPUT};
use crate::prep::Rect;

/// face-api's SSD defaults: 100 faces at most, suppressed at an overlap above 0.5.
const MAX_RESULTS: usize = 100;
const IOU: f32 = 0.5;

/// A detection in picture pixels, unclipped fractions as face-api reports them.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    pub score: f32,
    /// x, y, width, height.
    pub bbox: [f64; 4],
    /// The anchor that found it.
    pub anchor: usize,
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let norm = |r: &[f32; 4]| [r[0].min(r[2]), r[1].min(r[3]), r[0].max(r[2]), r[1].max(r[3])];
    let (a, b) = (norm(a), norm(b));
    let (area_a, area_b) = ((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]));
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let inter = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    inter / (area_a + area_b - inter)
}

/// The faces scoring above `min_score`, best first, overlaps suppressed, in the pixels of a
/// `width` x `height` picture (`locateFaces` in SsdMobilenetv1.ts).
pub fn detections(raw: &SsdOutput, (width, height): (u32, u32), min_score: f32) -> Vec<Detection> {
    let mut candidates: Vec<usize> = (0..raw.scores.len()).filter(|&i| raw.scores[i] > min_score).collect();
    candidates.sort_by(|&a, &b| raw.scores[b].total_cmp(&raw.scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for i in candidates {
        if kept.len() >= MAX_RESULTS {
            break;
        }
        if kept.iter().all(|&j| iou(&raw.boxes[i], &raw.boxes[j]) <= IOU) {
            kept.push(i);
        }
    }
    let (w, h) = (f64::from(width), f64::from(height));
    // The picture fills the top-left of the square: its share of each side.
    let scale = SSD_INPUT as f64 / w.max(h);
    let (pad_x, pad_y) = (SSD_INPUT as f64 / (w * scale).round(), SSD_INPUT as f64 / (h * scale).round());
    kept.into_iter()
        .map(|i| {
            let [y0, x0, y1, x1] = raw.boxes[i].map(f64::from);
            let (top, bottom) = (y0.max(0.0) * pad_y, y1.min(1.0) * pad_y);
            let (left, right) = (x0.max(0.0) * pad_x, x1.min(1.0) * pad_x);
            Detection {
                score: raw.scores[i],
                bbox: [left * w, top * h, (right - left) * w, (bottom - top) * h],
                anchor: i,
            }
        })
        .collect()
}

/// `Box.clipAtImageBorders`: clipped to the picture, then each of x, y, width, height floored.
/// `None` when nothing of the box is inside.
pub fn clip(bbox: [f64; 4], (width, height): (u32, u32)) -> Option<Rect> {
    if !bbox.iter().all(|v| v.is_finite()) {
        return None;
    }
    let [x, y, w, h] = bbox;
    let (x0, y0) = (x.max(0.0), y.max(0.0));
    let cw = (x + w - x0).min(f64::from(width) - x0);
    let ch = (y + h - y0).min(f64::from(height) - y0);
    let rect = Rect { x: x0.floor() as u32, y: y0.floor() as u32, width: cw.floor() as u32, height: ch.floor() as u32 };
    let inside = cw.is_finite() && ch.is_finite() && rect.width > 0 && rect.height > 0;
    (inside && rect.x + rect.width <= width && rect.y + rect.height <= height).then_some(rect)
}

/// The 68 points in picture pixels, from the landmark net's 136 outputs on `crop`
/// (`FaceLandmark68NetBase.postProcess`, then shifted by the detection's unfloored corner).
pub fn landmarks(raw: &[f32], crop: Rect, origin: (f64, f64)) -> Vec<[f64; 2]> {
    let size = LANDMARK_INPUT as f64;
    let (cw, ch) = (f64::from(crop.width), f64::from(crop.height));
    let scale = size / cw.max(ch);
    let (w, h) = (cw * scale, ch * scale);
    // face-api assumes padding split evenly, which differs from padToSquare's rounding by at
    // most half a pixel at 112; its formula is kept.
    let pad_x = if w < h { (w - h).abs() / 2.0 } else { 0.0 };
    let pad_y = if h < w { (w - h).abs() / 2.0 } else { 0.0 };
    raw.chunks_exact(2)
        .map(|p| {
            let rx = (f64::from(p[0]) * size - pad_x) / w;
            let ry = (f64::from(p[1]) * size - pad_y) / h;
            [rx * cw + origin.0, ry * ch + origin.1]
        })
        .collect()
}

/// dlib's alignment box (`FaceLandmarks.alignDlib`): a square around the eyes and mouth, sized
/// from their distances, clipped to the picture. face-api limits its width and height by the
/// landmark crop's (not the picture's) size plus the corner, a quirk kept for identical crops.
pub fn dlib_crop(points: &[[f64; 2]], landmark_crop: Rect, picture: (u32, u32)) -> Option<Rect> {
    if points.len() != 68 {
        return None;
    }
    let centre = |range: std::ops::Range<usize>| {
        let n = range.len() as f64;
        let (sx, sy) = points[range].iter().fold((0.0, 0.0), |(sx, sy), p| (sx + p[0], sy + p[1]));
        [sx / n, sy / n]
    };
    let (left_eye, right_eye, mouth) = (centre(36..42), centre(42..48), centre(48..68));
    let distance = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let size = ((distance(mouth, left_eye) + distance(mouth, right_eye)) / 2.0 / 0.45).floor();
    let reference = [(left_eye[0] + right_eye[0] + mouth[0]) / 3.0, (left_eye[1] + right_eye[1] + mouth[1]) / 3.0];
    let x = (reference[0] - 0.5 * size).max(0.0).floor();
    let y = (reference[1] - 0.43 * size).max(0.0).floor();
    let w = size.min(f64::from(landmark_crop.width) + x);
    let h = size.min(f64::from(landmark_crop.height) + y);
    clip([x, y, w, h], picture)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_detections_keep_the_best_and_map_to_pixels() {
        let raw = SsdOutput {
            boxes: vec![[0.0, 0.0, 0.5, 0.5], [0.01, 0.01, 0.5, 0.5], [0.5, 0.5, 1.2, 1.0], [0.0, 0.0, 0.1, 0.1]],
            scores: vec![0.8, 0.9, 0.7, 0.4],
        };
        // A 1000x500 picture fills the top half of the square.
        let found = detections(&raw, (1000, 500), 0.5);
        assert_eq!(found.iter().map(|d| d.anchor).collect::<Vec<_>>(), [1, 2]);
        let [x, y, w, h] = found[1].bbox;
        assert!((x - 500.0).abs() < 1e-9 && (y - 500.0).abs() < 1e-9, "{x} {y}");
        // The bottom was clipped at the square's edge (1.0), which is twice the picture's height.
        assert!((w - 500.0).abs() < 1e-9 && (h - 500.0).abs() < 1e-9, "{w} {h}");
    }

    #[test]
    fn clipping_floors_each_field_and_refuses_boxes_outside() {
        let rect = clip([-3.5, 10.7, 20.0, 100.0], (50, 60)).unwrap();
        assert_eq!(rect, Rect { x: 0, y: 10, width: 16, height: 49 });
        assert_eq!(clip([60.0, 0.0, 10.0, 10.0], (50, 60)), None);
        assert_eq!(clip([f64::NAN, 0.0, 10.0, 10.0], (50, 60)), None);
    }
}
