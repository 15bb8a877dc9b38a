//! `--explain` for faces: for each face found, an occlusion map over it and its surroundings. A
//! grey square hides one cell of a grid laid over that region of the detector's input; the
//! detector runs again, and the cell's heat is how much the face's score (at the same anchor)
//! drops. A face found by its eyes and mouth is hot there; heat outside the box shows what the
//! context lent the detection (hair, a collar).

use image::RgbImage;

use crate::nets::{Map, SSD_INPUT};
use crate::{Face, Recognizer};

/// Heat cells per side of the region.
pub const GRID: usize = 8;
/// What hides a cell: mid grey (128), in the detector's -1..1 input.
const GREY: f32 = 128.0 / 127.5 - 1.0;

pub use zoo_runtime::explain::Occlusion;

/// The heat map of `face`, found in a picture of `size` whose detector input is `input`: its
/// score from the plain run is the baseline.
pub fn occlusion(recognizer: &Recognizer, input: &Map, size: (u32, u32), face: &Face) -> Result<Occlusion, String> {
    let Some(detection) = face.detection else { return Err("the face was not detected".into()) };
    let region = zoo_runtime::explain::context_region(face.bbox, size);
    // The picture fills the top-left of the square, scaled by 512 / its longer side.
    let scale = SSD_INPUT as f64 / f64::from(size.0.max(size.1));
    let edges = |start: u32, len: u32| -> Vec<usize> {
        (0..=GRID)
            .map(|i| {
                let at = f64::from(start) + f64::from(len) * i as f64 / GRID as f64;
                ((at * scale).round() as usize).min(SSD_INPUT)
            })
            .collect()
    };
    let (xs, ys) = (edges(region[0], region[2]), edges(region[1], region[3]));
    let mut grid = vec![vec![0f32; GRID]; GRID];
    for (r, row) in grid.iter_mut().enumerate() {
        for (c, heat) in row.iter_mut().enumerate() {
            let mut hidden = input.clone();
            for y in ys[r]..ys[r + 1] {
                hidden.data[(y * SSD_INPUT + xs[c]) * 3..(y * SSD_INPUT + xs[c + 1]) * 3].fill(GREY);
            }
            let raw = recognizer.detect_input(&hidden)?;
            *heat = detection.score - raw.scores[detection.anchor];
        }
    }
    Ok(Occlusion { method: "occlusion", region, grid })
}

/// The picture with each explained face's heat blended over its region, as
/// `<stem>.explain.png` in `dir`, worst face first so the best one's is on top.
pub fn write_overlay(
    dir: &std::path::Path,
    input: &std::path::Path,
    picture: &RgbImage,
    faces: &[Face],
) -> zoo_runtime::Result<std::path::PathBuf> {
    // Worst first, so the best one's heat is on top.
    let heats = faces.iter().rev().filter_map(|o| o.explanation.as_ref()).map(|e| (e.region, e.grid.as_slice()));
    zoo_runtime::explain::write_region_overlays(dir, input, picture, heats)
}
