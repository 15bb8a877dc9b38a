//! `--explain` for object detection: for each object found, an occlusion map over its box and
//! its surroundings. A grey square hides one cell of a grid laid over that region of the
//! network's input; the picture is run again, and the cell's heat is how much the object's score
//! (from what found it, FastestDet's grid cell or YOLOS's detection token, for the same class)
//! drops. Heat outside the box shows what the context lent the decision (a rider for a bicycle, a
//! road for a car).

use candle_core::Tensor;

use crate::{Detector, Object};

/// Heat cells per side of the region.
pub const GRID: usize = 8;

pub use zoo_runtime::explain::Occlusion;

/// The heat map of `object`, found in a picture of `picture` size prepared as `x` (1, 3, 352,
/// 352): its score, from the plain run, is the baseline each occluded copy is measured against.
pub fn occlusion(
    detector: &Detector,
    x: &Tensor,
    picture: (u32, u32),
    object: &Object,
    batch: usize,
) -> candle_core::Result<Occlusion> {
    let region = zoo_runtime::explain::context_region(object.bbox.map(f64::from), picture);
    let (_, _, in_h, in_w) = x.dims4()?;
    let input = x.flatten_all()?.to_vec1::<f32>()?;
    let plane = in_h * in_w;
    let grey = detector.grey();
    // The region's cell edges in the network's input, which is the picture resized.
    let edges = |start: u32, len: u32, side: u32, input: usize| -> Vec<usize> {
        (0..=GRID)
            .map(|i| {
                let at = start as f32 + len as f32 * i as f32 / GRID as f32;
                ((at * input as f32 / side as f32).round() as usize).min(input)
            })
            .collect()
    };
    let (xs, ys) = (edges(region[0], region[2], picture.0, in_w), edges(region[1], region[3], picture.1, in_h));
    let base = object.score;
    let cells: Vec<(usize, usize)> = (0..GRID).flat_map(|r| (0..GRID).map(move |c| (r, c))).collect();
    let mut grid = vec![vec![0f32; GRID]; GRID];
    for chunk in cells.chunks(batch.max(1)) {
        let mut copies = Vec::with_capacity(chunk.len() * input.len());
        for &(r, c) in chunk {
            let mut copy = input.clone();
            for (channel, grey) in copy.chunks_exact_mut(plane).zip(grey) {
                for y in ys[r]..ys[r + 1] {
                    channel[y * in_w + xs[c]..y * in_w + xs[c + 1]].fill(grey);
                }
            }
            copies.extend(copy);
        }
        let batch = Tensor::from_vec(copies, (chunk.len(), 3, in_h, in_w), x.device())?;
        let outputs = detector.forward(&batch)?;
        for (i, &(r, c)) in chunk.iter().enumerate() {
            grid[r][c] = base - detector.score_at(&outputs, i, object)?;
        }
    }
    Ok(Occlusion { method: "occlusion", region, grid })
}

/// The picture with each explained object's heat blended over its region, as
/// `<stem>.explain.png` in `dir`. Each region is blended over what is drawn already (cold cells
/// leave it as it is), worst object first, so overlapping regions keep every object's heat and
/// the best one's is on top.
pub fn write_overlay(
    dir: &std::path::Path,
    input: &std::path::Path,
    picture: &image::RgbImage,
    objects: &[Object],
) -> zoo_runtime::Result<std::path::PathBuf> {
    // Worst first, so the best one's heat is on top.
    let heats = objects.iter().rev().filter_map(|o| o.explanation.as_ref()).map(|e| (e.region, e.grid.as_slice()));
    zoo_runtime::explain::write_region_overlays(dir, input, picture, heats)
}
