//! `--explain` for image classification: an occlusion heatmap for the top class.
//!
//! A grey square (the preprocessing's mean, i.e. zero after normalisation) is slid over the crop
//! the model saw; each occluded copy is classified, in batches through the same fast path as a
//! plain run, and a cell's heat is the mean drop of the top class's probability over the squares
//! covering it (drops below zero count as zero). Occlusion needs no gradients, so it works the same
//! for EfficientNet-Lite and ViT, at the price of [`OCCLUSIONS`] extra forward passes per image.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use image::{Rgb, RgbImage};
use serde::Serialize;

pub use zoo_runtime::explain::{overlay, shades, write_overlay};

use crate::preprocess::Preprocess;

/// Heat cells per side of the crop.
pub const GRID: usize = 14;
/// The occluding square's side and its stride, in cells: every cell is covered by 2 x 2 squares.
const PATCH: usize = 4;
const STRIDE: usize = 2;
/// Top-left cells of the squares along one side, starting half a square outside the crop so that
/// border cells are covered as often as central ones.
const STARTS: usize = (GRID + PATCH - STRIDE) / STRIDE;
/// Extra forward passes per explained image.
pub const OCCLUSIONS: usize = STARTS * STARTS;

/// The heatmap of one image, as it goes into the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Saliency {
    pub method: &'static str,
    pub class_index: usize,
    /// GRID rows of GRID non-negative drops in probability, top row first, over the crop.
    pub grid: Vec<Vec<f32>>,
    /// The overlay PNG (the heat over the crop, at the crop's size), when `--explain-out` was given.
    pub overlay: Option<PathBuf>,
    /// Width and height of the crop the grid covers (the image as the model saw it).
    pub crop: [u32; 2],
    /// The part of the original picture the crop shows, as fractions of its width and height:
    /// [left, top, width, height] (a centre crop of a wide photo leaves its sides out), so that
    /// the grid can be laid over the photo itself.
    pub region: [f64; 4],
}

/// Pixel edges of `GRID` cells over `len` pixels.
fn edges(len: usize) -> Vec<usize> {
    (0..=GRID).map(|i| i * len / GRID).collect()
}

/// The occlusion heat grid for `class` of one preprocessed image `x` (1, ...), classified by
/// `logits` in batches of `batch`.
pub fn occlusion(
    x: &Tensor,
    preprocess: &Preprocess,
    class: usize,
    batch: usize,
    logits: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let (h, w) = preprocess.output_hw();
    let (h, w) = (h as usize, w as usize);
    let base = x.flatten_all()?.to_vec1::<f32>()?;
    let (rows, cols) = (edges(h), edges(w));
    let first = -(PATCH as isize - STRIDE as isize);
    let cells = |start: usize| -> (usize, usize) {
        let from = (first + (start * STRIDE) as isize).max(0) as usize;
        (from, (first + (start * STRIDE + PATCH) as isize).min(GRID as isize) as usize)
    };
    // The unoccluded image goes first, so that its probability comes from the same batches.
    let mut variants = vec![base.clone()];
    for sy in 0..STARTS {
        for sx in 0..STARTS {
            let ((r0, r1), (c0, c1)) = (cells(sy), cells(sx));
            let mut v = base.clone();
            for y in rows[r0]..rows[r1] {
                for xx in cols[c0]..cols[c1] {
                    for ch in 0..3 {
                        let i = if preprocess.channels_last { (y * w + xx) * 3 + ch } else { ch * w * h + y * w + xx };
                        v[i] = 0.0;
                    }
                }
            }
            variants.push(v);
        }
    }
    let mut probs = Vec::with_capacity(variants.len());
    for chunk in variants.chunks(batch.max(1)) {
        let n = chunk.len();
        let shape: Vec<usize> = std::iter::once(n).chain(x.dims()[1..].iter().copied()).collect();
        let t = Tensor::from_vec(chunk.concat(), shape, x.device())?;
        let p = candle_nn::ops::softmax_last_dim(&logits(&t)?)?;
        probs.extend(p.narrow(1, class, 1)?.flatten_all()?.to_vec1::<f32>()?);
    }
    let p0 = probs[0];
    let mut heat = vec![vec![0f32; GRID]; GRID];
    let mut covered = vec![vec![0u32; GRID]; GRID];
    for sy in 0..STARTS {
        for sx in 0..STARTS {
            let drop = (p0 - probs[1 + sy * STARTS + sx]).max(0.0);
            let ((r0, r1), (c0, c1)) = (cells(sy), cells(sx));
            for r in r0..r1 {
                for c in c0..c1 {
                    heat[r][c] += drop;
                    covered[r][c] += 1;
                }
            }
        }
    }
    for (row, n) in heat.iter_mut().zip(&covered) {
        row.iter_mut().zip(n).for_each(|(h, &n)| *h /= n.max(1) as f32);
    }
    Ok(heat)
}

/// The crop as the model saw it, back in 0..255 pixels.
pub fn crop_image(x: &Tensor, preprocess: &Preprocess) -> candle_core::Result<RgbImage> {
    let (h, w) = preprocess.output_hw();
    let data = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = (w * h) as usize;
    Ok(RgbImage::from_fn(w, h, |xx, y| {
        let i = (y * w + xx) as usize;
        Rgb(std::array::from_fn(|ch| {
            let v = if preprocess.channels_last { data[i * 3 + ch] } else { data[ch * plane + i] };
            (v * preprocess.scale[ch] + preprocess.offset[ch]).round().clamp(0.0, 255.0) as u8
        }))
    }))
}

/// The share of the heat in each quadrant of the grid: top-left, top-right, bottom-left,
/// bottom-right (a cell on a middle line, for odd grids, is split between its neighbours).
pub fn quadrant_shares(grid: &[Vec<f32>]) -> [f32; 4] {
    let n = grid.len();
    let mut q = [0f32; 4];
    for (r, row) in grid.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let half = |i: usize| -> [(usize, f32); 2] {
                match (2 * i + 1).cmp(&n) {
                    std::cmp::Ordering::Less => [(0, 1.0), (1, 0.0)],
                    std::cmp::Ordering::Equal => [(0, 0.5), (1, 0.5)],
                    std::cmp::Ordering::Greater => [(1, 1.0), (0, 0.0)],
                }
            };
            for (qr, wr) in half(r) {
                for (qc, wc) in half(c) {
                    q[qr * 2 + qc] += v * wr * wc;
                }
            }
        }
    }
    let total: f32 = q.iter().sum();
    if total > 0.0 {
        q.iter_mut().for_each(|v| *v /= total);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_is_covered_by_the_same_number_of_squares() {
        assert_eq!(STARTS, 8);
        let mut covered = [0; GRID];
        let first = -(PATCH as isize - STRIDE as isize);
        for s in 0..STARTS {
            for cell in
                (first + (s * STRIDE) as isize).max(0)..(first + (s * STRIDE + PATCH) as isize).min(GRID as isize)
            {
                covered[cell as usize] += 1;
            }
        }
        assert!(covered.iter().all(|&n| n == PATCH / STRIDE), "{covered:?}");
    }

    #[test]
    fn quadrant_shares_sum_to_one_and_find_the_hot_corner() {
        let mut grid = vec![vec![0.01f32; GRID]; GRID];
        grid[GRID - 2][1] = 1.0;
        let q = quadrant_shares(&grid);
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(q[2] > 0.5, "{q:?}");
    }
}
