//! From FastestDet's output map to boxes, as the authors' onnxruntime example decodes it: one box
//! per grid cell, scored `objectness^0.6 * class^0.4`, then greedy non-maximum suppression across
//! classes. The arithmetic is in f32, as the example's numpy does it, so that scores and truncated
//! pixel corners come out the same.

/// A box found in one cell, in the picture's pixels: corners truncated toward zero and not clipped
/// (a box may reach past the picture's edge), as the reference gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub class: usize,
    pub score: f32,
    pub corners: [i64; 4],
    /// The grid cell, row-major.
    pub cell: usize,
}

/// Every cell whose score is above `min_score`. `cells` holds one
/// vector of `5 + classes` values per cell of an `h x w` grid; `picture` is (width, height).
pub fn candidates(cells: &[f32], [channels, h, w]: [usize; 3], picture: (u32, u32), min_score: f32) -> Vec<Candidate> {
    let (width, height) = (picture.0 as f32, picture.1 as f32);
    let mut found = Vec::new();
    for (cell, d) in cells.chunks_exact(channels).enumerate().take(h * w) {
        let (row, col) = ((cell / w) as f32, (cell % w) as f32);
        // The first largest class, as numpy's argmax; a NaN anywhere makes the score NaN (never kept).
        let (class, best) = d[5..].iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv || v.is_nan() && !bv.is_nan() {
                (i, v)
            } else {
                (bi, bv)
            }
        });
        let score = d[0].powf(0.6) * best.powf(0.4);
        // Strictly above, as the reference compares; a NaN score is never kept.
        let above = score > min_score;
        if !above {
            continue;
        }
        let tanh = |x: f32| 2.0 / (1.0 + (-2.0 * x).exp()) - 1.0;
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let cx = (col + tanh(d[1])) / w as f32;
        let cy = (row + tanh(d[2])) / h as f32;
        let (bw, bh) = (sigmoid(d[3]), sigmoid(d[4]));
        let corners = [
            ((cx - 0.5 * bw) * width) as i64,
            ((cy - 0.5 * bh) * height) as i64,
            ((cx + 0.5 * bw) * width) as i64,
            ((cy + 0.5 * bh) * height) as i64,
        ];
        found.push(Candidate { class, score, corners, cell });
    }
    found
}

/// Greedy suppression, best score first: a box is kept unless it overlaps a kept one by an
/// intersection over union above `iou` (areas counted inclusively, `x2 - x1 + 1` wide, as the
/// reference does). Boxes of different classes suppress each other: one cell holds one object.
pub fn suppress(mut candidates: Vec<Candidate>, iou: f64) -> Vec<Candidate> {
    // Ties go to the later cell, as the reference's reversed argsort orders them.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.cell.cmp(&a.cell)));
    let area = |c: &[i64; 4]| ((c[2] - c[0] + 1) * (c[3] - c[1] + 1)) as f64;
    let mut kept: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        let a = &candidate.corners;
        let overlaps = kept.iter().any(|k| {
            let b = &k.corners;
            let iw = (a[2].min(b[2]) - a[0].max(b[0]) + 1).max(0) as f64;
            let ih = (a[3].min(b[3]) - a[1].max(b[1]) + 1).max(0) as f64;
            let inter = iw * ih;
            inter / (area(a) + area(b) - inter) > iou
        });
        if !overlaps {
            kept.push(candidate);
        }
    }
    kept
}

/// A box as `[x, y, width, height]` within a picture of (width, height).
pub fn clipped_box(corners: [i64; 4], picture: (u32, u32)) -> [u32; 4] {
    let clamp = |v: i64, max: u32| v.clamp(0, i64::from(max)) as u32;
    let (x1, y1) = (clamp(corners[0], picture.0), clamp(corners[1], picture.1));
    let (x2, y2) = (clamp(corners[2], picture.0), clamp(corners[3], picture.1));
    [x1, y1, x2 - x1, y2 - y1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(score: f32, corners: [i64; 4], cell: usize) -> Candidate {
        Candidate { class: 0, score, corners, cell }
    }

    #[test]
    fn overlapping_boxes_keep_the_best_and_distant_ones_stay() {
        let boxes = vec![
            candidate(0.7, [0, 0, 99, 99], 0),
            candidate(0.9, [10, 10, 109, 109], 1),
            candidate(0.8, [200, 200, 260, 260], 2),
        ];
        let kept = suppress(boxes, 0.45);
        assert_eq!(kept.iter().map(|c| c.cell).collect::<Vec<_>>(), vec![1, 2]);
        // Inclusive areas: corners 0..9 and 5..14 overlap 5x10 of two 10x10 boxes, IoU 50/150 =
        // 0.333 (counted exclusively it would be 36/126 = 0.286), so at 0.3 one suppresses the other.
        let pair = || vec![candidate(0.7, [0, 0, 9, 9], 0), candidate(0.9, [5, 0, 14, 9], 1)];
        assert_eq!(suppress(pair(), 0.3).len(), 1);
        assert_eq!(suppress(pair(), 0.34).len(), 2);
    }

    #[test]
    fn a_cell_decodes_to_its_box_and_the_threshold_is_strict() {
        // One 2x2 grid, two classes; cell 3 (row 1, col 1) is centred with a box half the picture.
        let mut cells = vec![0f32; 4 * 7];
        cells[3 * 7..4 * 7].copy_from_slice(&[0.9, 0.0, 0.0, 0.0, 0.0, 0.2, 0.8]);
        let found = candidates(&cells, [7, 2, 2], (200, 100), 0.5);
        assert_eq!(found.len(), 1);
        let c = found[0];
        assert_eq!(c.class, 1);
        assert!((c.score - 0.9f32.powf(0.6) * 0.8f32.powf(0.4)).abs() < 1e-7);
        // Centre (1/2 + 0) * ... = (1 + 0) / 2 = 0.5 of each side, size sigmoid(0) = 0.5.
        assert_eq!(c.corners, [50, 25, 150, 75]);
        assert!(candidates(&cells, [7, 2, 2], (200, 100), c.score).is_empty());
        cells[3 * 7 + 5] = f32::NAN;
        assert!(candidates(&cells, [7, 2, 2], (200, 100), 0.0).is_empty(), "a NaN class probability is never kept");
        assert_eq!(clipped_box([-20, 5, 230, 90], (200, 100)), [0, 5, 200, 85]);
    }
}
