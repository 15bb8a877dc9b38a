//! `--explain`: what a decision rested on, one notion for every task.
//!
//! The CLI adds `--explain` and `--explain-out DIR` to every `zoo run <task>` and puts them in
//! [`TaskArgs`]; a task declares through [`crate::Task::explains`] whether it has anything to
//! explain. A task that explains reads the request with [`Request::from_args`] in its loader and
//! does the extra work only then, so plain runs cost nothing more. Its prediction carries the
//! explanation: in `json()` under [`JSON_FIELD`] (or, where it belongs to parts of the output,
//! such as words of a transcript's segments, beside those parts), and in `human()`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use crate::error::Result;
use crate::task::TaskArgs;

/// The flag asking for explanations.
pub const FLAG: &str = "explain";
/// The option naming the folder for explanations that are files (heatmap overlays).
pub const OUT: &str = "explain-out";
/// The key of a prediction's JSON object that holds its explanation.
pub const JSON_FIELD: &str = "explanation";

/// Whether a task explains its decisions, as it declares it.
#[derive(Debug, Clone, Copy)]
pub enum Explains {
    /// What `--explain` adds, shown in the task's `--help`.
    Yes(&'static str),
    /// Why there is nothing to explain; `--explain` is then a usage error saying so.
    No(&'static str),
}

/// What the user asked `--explain` for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Where explanation files go; without it, explanations are only in the output.
    pub out_dir: Option<PathBuf>,
}

impl Request {
    /// The request in `args`, or `None` for a plain run. `--explain-out` alone implies `--explain`.
    pub fn from_args(args: &TaskArgs) -> Option<Request> {
        let out_dir = args.value(OUT).map(PathBuf::from);
        (args.flag(FLAG) || out_dir.is_some()).then_some(Request { out_dir })
    }

    /// The folder for explanation files, created if needed; `None` when none was asked for.
    pub fn ensure_out_dir(&self) -> Result<Option<&Path>> {
        let Some(dir) = &self.out_dir else { return Ok(None) };
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        Ok(Some(dir))
    }
}

/// Whether explanations printed for people may use colour: stdout is a terminal and `NO_COLOR`
/// (<https://no-color.org>) is not set.
pub fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A scored stretch of a text (a word), by byte offsets into it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Span {
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// The text with its most important spans shown: on a terminal, ANSI backgrounds whose strength
/// follows the score (for every span scoring above zero); otherwise `[[span]]` around the
/// `marked` best-scoring spans above zero, so that piped output stays plain text.
pub fn render_spans(text: &str, spans: &[Span], marked: usize, color: bool) -> String {
    let max = spans.iter().map(|s| s.score).fold(0f32, f32::max);
    let mut order: Vec<usize> = (0..spans.len()).filter(|&i| spans[i].score > 0.0).collect();
    order.sort_by(|&a, &b| spans[b].score.total_cmp(&spans[a].score));
    order.truncate(if color { usize::MAX } else { marked });
    order.sort_by_key(|&i| spans[i].start);
    let mut out = String::with_capacity(text.len() + order.len() * 24);
    let mut at = 0;
    for i in order {
        let span = &spans[i];
        if span.start < at || span.end > text.len() {
            continue;
        }
        out.push_str(&text[at..span.start]);
        let word = &text[span.start..span.end];
        if color {
            // Five steps of a red ramp (256-colour palette), light to strong, with black text so
            // that it reads on dark and light themes alike.
            const RAMP: [u8; 5] = [224, 217, 210, 203, 196];
            let step = ((span.score / max) * RAMP.len() as f32).ceil().clamp(1.0, RAMP.len() as f32) as usize - 1;
            out.push_str(&format!("\x1b[48;5;{};30m{word}\x1b[0m", RAMP[step]));
        } else {
            out.push_str(&format!("[[{word}]]"));
        }
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

// Heat maps over pictures (occlusion), shared by the vision tasks.

/// A blue-to-red colour for `t` in 0..1 (the "jet" ramp).
fn ramp(t: f32) -> [f32; 3] {
    let c = |centre: f32| (1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0;
    [c(3.0), c(2.0), c(1.0)]
}

/// The heat (rows of cells over the picture), bilinearly upsampled and coloured, blended over it: the stronger the heat,
/// the more colour; cold regions show the photo as it is.
pub fn overlay(crop: &RgbImage, grid: &[Vec<f32>]) -> RgbImage {
    let (w, h) = crop.dimensions();
    let max = grid.iter().flatten().copied().fold(0f32, f32::max);
    let (rows, cols) = (grid.len(), grid.first().map_or(0, Vec::len));
    if rows == 0 || cols == 0 {
        return crop.clone();
    }
    let at = |r: isize, c: isize| grid[r.clamp(0, rows as isize - 1) as usize][c.clamp(0, cols as isize - 1) as usize];
    RgbImage::from_fn(w, h, |x, y| {
        // Cell centres sit at (i + 0.5) * size; interpolate between the four around the pixel.
        let fy = (y as f32 + 0.5) * rows as f32 / h as f32 - 0.5;
        let fx = (x as f32 + 0.5) * cols as f32 / w as f32 - 0.5;
        let (r, c) = (fy.floor() as isize, fx.floor() as isize);
        let (dy, dx) = (fy - r as f32, fx - c as f32);
        let v = at(r, c) * (1.0 - dy) * (1.0 - dx)
            + at(r, c + 1) * (1.0 - dy) * dx
            + at(r + 1, c) * dy * (1.0 - dx)
            + at(r + 1, c + 1) * dy * dx;
        let t = if max > 0.0 { v / max } else { 0.0 };
        let (colour, alpha) = (ramp(t), 0.65 * t);
        let px = crop.get_pixel(x, y).0;
        Rgb(std::array::from_fn(|ch| (px[ch] as f32 * (1.0 - alpha) + colour[ch] * alpha).round() as u8))
    })
}

/// Writes the overlay as `<stem>.explain.png` in `dir`, atomically; returns its path.
pub fn write_overlay(dir: &Path, input_path: &Path, image: &RgbImage) -> Result<PathBuf> {
    let path = dir.join(format!("{}.explain.png", crate::fsutil::output_stem(input_path)));
    crate::fsutil::write_png(&path, image, true)?;
    Ok(path)
}

/// A found thing's occlusion map, as it goes into its JSON: `GRID` rows of drops in its score
/// (negative where hiding a cell raised it), top row first, over `region`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Occlusion {
    pub method: &'static str,
    /// The part of the picture the grid covers, `[x, y, width, height]` in its pixels.
    pub region: [u32; 4],
    pub grid: Vec<Vec<f32>>,
}

/// The region an occlusion map covers around a box `[x, y, width, height]`: the box grown by half
/// its size on each side (the context counts), within the picture.
pub fn context_region(bbox: [f64; 4], (width, height): (u32, u32)) -> [u32; 4] {
    const CONTEXT: f64 = 0.5;
    let [x, y, w, h] = bbox;
    let x0 = (x - w * CONTEXT).max(0.0).floor();
    let y0 = (y - h * CONTEXT).max(0.0).floor();
    let x1 = (x + w * (1.0 + CONTEXT)).min(f64::from(width)).ceil();
    let y1 = (y + h * (1.0 + CONTEXT)).min(f64::from(height)).ceil();
    [x0 as u32, y0 as u32, (x1 - x0).max(1.0) as u32, (y1 - y0).max(1.0) as u32]
}

/// `picture` with each heat map blended over its region (`[x, y, width, height]`), written as
/// `<stem>.explain.png` in `dir`. Each is blended over what is drawn already (cold cells leave it
/// as it is), in the order given, so overlapping regions keep every map and the last is on top.
pub fn write_region_overlays<'a>(
    dir: &Path,
    input_path: &Path,
    picture: &RgbImage,
    heats: impl IntoIterator<Item = ([u32; 4], &'a [Vec<f32>])>,
) -> Result<PathBuf> {
    let mut out = picture.clone();
    for ([x, y, w, h], grid) in heats {
        let crop = image::imageops::crop_imm(&out, x, y, w, h).to_image();
        let blended = overlay(&crop, grid);
        image::imageops::replace(&mut out, &blended, i64::from(x), i64::from(y));
    }
    write_overlay(dir, input_path, &out)
}

/// What a person reads for one region's heat map: a line saying where the grid lies and what
/// `around` it covers (`the object and its surroundings`), then the grid as shades, indented.
pub fn region_lines(region: [u32; 4], grid: &[Vec<f32>], around: &str) -> String {
    let [x, y, w, h] = region;
    let rows: Vec<String> = shades(grid).lines().map(|l| format!("    |{l}|")).collect();
    format!("\n  where it rests (occlusion over x {x}, y {y}, {w}x{h}: {around}):\n{}", rows.join("\n"))
}

/// The grid as shades, two characters per cell, for people.
pub fn shades(grid: &[Vec<f32>]) -> String {
    const SHADES: &[u8] = b" .:-=+*#%@";
    let max = grid.iter().flatten().copied().fold(0f32, f32::max);
    grid.iter()
        .map(|row| {
            row.iter()
                .map(|&v| {
                    let i = if max > 0.0 { ((v / max) * (SHADES.len() - 1) as f32).round() as usize } else { 0 };
                    let c = SHADES[i] as char;
                    format!("{c}{c}")
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(text: &str, word: &str, score: f32) -> Span {
        let start = text.find(word).unwrap();
        Span { text: word.into(), start, end: start + word.len(), score }
    }

    #[test]
    fn plain_rendering_marks_only_the_best_positive_spans_in_text_order() {
        let text = "garlic water cures the virus";
        let spans =
            [span(text, "garlic", 0.3), span(text, "cures", 0.5), span(text, "virus", 0.1), span(text, "the", -0.2)];
        assert_eq!(render_spans(text, &spans, 2, false), "[[garlic]] water [[cures]] the virus");
        let coloured = render_spans(text, &spans, 2, true);
        assert!(coloured.contains("\x1b[48;5;196;30mcures\x1b[0m"), "{coloured:?}");
        assert!(coloured.contains("virus\x1b[0m") && !coloured.contains("the\x1b[0m"), "{coloured:?}");
    }

    #[test]
    fn regions_add_context_within_the_picture() {
        assert_eq!(context_region([100.0, 100.0, 40.0, 20.0], (400, 300)), [80, 90, 80, 40]);
        assert_eq!(context_region([0.0, 0.0, 400.0, 300.0], (400, 300)), [0, 0, 400, 300]);
        assert_eq!(context_region([390.0, 295.0, 10.0, 5.0], (400, 300)), [385, 292, 15, 8]);
        assert_eq!(context_region([390.5, 295.2, 9.5, 4.8], (400, 300)), [385, 292, 15, 8]);
    }

    #[test]
    fn explain_out_alone_asks_for_explanations() {
        let mut args = TaskArgs::new();
        assert!(Request::from_args(&args).is_none());
        args.set(OUT, "heat");
        assert_eq!(Request::from_args(&args).unwrap().out_dir, Some(PathBuf::from("heat")));
    }
}
