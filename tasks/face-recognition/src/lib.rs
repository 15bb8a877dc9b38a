//! zoo task: face recognition.
//!
//! Finds faces with face-api's SSD MobileNetV1 detector, places 68 landmarks on each, and
//! describes each face with dlib's ResNet-29 as a 128-number descriptor: two photos of one
//! person lie within 0.6 of each other (the margin dlib's metric training used). With a gallery
//! (a folder of the user's own photos of people) each face is named after the closest person;
//! `--compare` says whether photos show the same person. Everything is computed as face-api
//! computes it (its weights, preprocessing, crops and alignment), so results match its results.
//! Nothing leaves the machine: the networks are bundled and galleries are the user's files.

pub mod explain;
pub mod gallery;
pub mod locate;
pub mod nets;
pub mod prep;

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use zoo_runtime::image_io;
use zoo_runtime::{
    Context, Error, Input, InputSpec, Model, Prediction, PredictionResult, ReadLimit, Result, Runner, Task, TaskArgs,
    TaskOption,
};

use crate::gallery::Gallery;
use crate::locate::Detection;
use crate::nets::{Landmarks, Recognition, Ssd, Weights, DESCRIPTOR_INPUT, LANDMARK_INPUT};
use crate::prep::Rect;

pub struct FaceRecognition;

/// face-api's defaults: a detection threshold of 0.5, a match below 0.6.
const DEFAULT_MIN_SCORE: f32 = 0.5;
const DEFAULT_MAX_DISTANCE: f32 = 0.6;

const OPTIONS: &[TaskOption] = &[
    TaskOption {
        name: "min-score",
        value_name: Some("S"),
        help: "Report faces the detector scores above this (0..1)",
        default: Some("0.5"),
    },
    TaskOption {
        name: "gallery",
        value_name: Some("DIR"),
        help: "Name each face after the closest person in DIR: one subfolder of photos per person, or photos named after their person (alice.jpg, alice_2.jpg). Descriptors are cached in DIR/.zoo-faces.json",
        default: None,
    },
    TaskOption {
        name: "max-distance",
        value_name: Some("D"),
        help: "Call a face by a gallery name, or two faces the same person, only when their descriptors are closer than this",
        default: Some("0.6"),
    },
    TaskOption {
        name: "compare",
        value_name: None,
        help: "Say whether each picture shows the same person as the first one: the distance of their closest faces",
        default: None,
    },
    TaskOption {
        name: "aligned",
        value_name: None,
        help: "The pictures are already face crops (as dlib aligns them): describe each whole picture as one face, without detection",
        default: None,
    },
    TaskOption {
        name: "descriptors",
        value_name: None,
        help: "Include each face's 128-number descriptor in the JSON (to match faces elsewhere)",
        default: None,
    },
    TaskOption {
        name: "output-dir",
        value_name: Some("DIR"),
        help: "Also write each picture with its faces boxed, named and their landmarks drawn, as DIR/<name>.png",
        default: None,
    },
    TaskOption {
        name: "force",
        value_name: None,
        help: "Overwrite pictures that exist in --output-dir",
        default: None,
    },
    image_io::MAX_PIXELS_OPTION,
];

impl Task for FaceRecognition {
    fn name(&self) -> &'static str {
        "face-recognition"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["faces", "face"]
    }

    fn summary(&self) -> &'static str {
        "Find faces, their 68 landmarks and who they are (a gallery of your own photos, or compare two photos)"
    }

    fn input(&self) -> InputSpec {
        image_io::INPUT
    }

    fn options(&self) -> &'static [TaskOption] {
        OPTIONS
    }

    fn examples(&self) -> &'static [&'static str] {
        &[
            "zoo run face-recognition group.jpg",
            "zoo run faces group.jpg --gallery people/ --output-dir named/",
            "zoo run faces passport.jpg holiday.jpg --compare",
        ]
    }

    fn explains(&self) -> zoo_runtime::Explains {
        zoo_runtime::Explains::Yes(
            "for each face, an occlusion map over it and its surroundings: how much hiding each part lowers the detector's score (JSON grid, text shades; a PNG overlay per photo in --explain-out)",
        )
    }

    fn warmup_input(&self) -> Option<Input> {
        Some(image_io::warmup_input())
    }

    /// `--compare` relates the inputs of one run to each other, and a server batches requests
    /// together: it is the command line's and Python's (a list of pictures is one run).
    fn request_options(&self) -> Vec<&'static TaskOption> {
        self.options().iter().filter(|o| o.settable_per_request() && o.name != "compare").collect()
    }

    fn load(&self, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>> {
        let invalid = |option: &str, reason: &str| Error::InvalidOption {
            option: option.into(),
            value: args.value(option).unwrap_or_default().into(),
            reason: reason.into(),
        };
        let min_score: f32 = args.parse("min-score")?.unwrap_or(DEFAULT_MIN_SCORE);
        if !(0.0..=1.0).contains(&min_score) {
            return Err(invalid("min-score", "must be between 0 and 1"));
        }
        let max_distance: f32 = args.parse("max-distance")?.unwrap_or(DEFAULT_MAX_DISTANCE);
        if !(max_distance.is_finite() && max_distance > 0.0) {
            return Err(invalid("max-distance", "must be a positive number"));
        }
        let compare = args.flag("compare");
        let aligned = args.flag("aligned");
        let explain = zoo_runtime::explain::Request::from_args(args);
        if explain.is_some() && aligned {
            return Err(Error::Usage(
                "--explain shows what each detection rested on; with --aligned nothing is detected".into(),
            ));
        }
        if let Some(request) = &explain {
            request.ensure_out_dir()?;
        }
        let drawn = zoo_runtime::fsutil::output_dir(args, ctx.outputs)?;
        let mut recognizer = Recognizer::load(model)?;
        recognizer.min_score = min_score;
        recognizer.max_distance = max_distance;
        recognizer.compare = compare;
        recognizer.aligned = aligned;
        recognizer.descriptors = args.flag("descriptors");
        recognizer.max_pixels = args.parse("max-pixels")?.unwrap_or(image_io::DEFAULT_MAX_PIXELS);
        recognizer.drawn = drawn;
        recognizer.force = args.flag("force");
        recognizer.explain = explain;
        if let Some(dir) = args.value("gallery") {
            recognizer.gallery = Some(Gallery::load(Path::new(dir), &recognizer, &model.id, ctx.progress)?);
        }
        Ok(Box::new(recognizer))
    }
}

/// The model's files: one tfjs manifest per network, each naming its binary shard.
const MANIFESTS: [&str; 3] = [
    "ssd_mobilenetv1_model-weights_manifest.json",
    "face_landmark_68_model-weights_manifest.json",
    "face_recognition_model-weights_manifest.json",
];

/// The three networks and what a run asked of them.
pub struct Recognizer {
    ssd: Ssd,
    landmarks: Landmarks,
    recognition: Recognition,
    min_score: f32,
    max_distance: f32,
    compare: bool,
    aligned: bool,
    descriptors: bool,
    max_pixels: u64,
    gallery: Option<Gallery>,
    drawn: Option<PathBuf>,
    force: bool,
    explain: Option<zoo_runtime::explain::Request>,
}

impl Recognizer {
    /// The networks of `model` (face-api's three weight manifests and their shards), with
    /// face-api's default options.
    pub fn load(model: &Model) -> Result<Self> {
        match model.architecture() {
            Some("face-api") | None => {}
            Some(other) => {
                return Err(Error::model(
                    &model.id,
                    format!("unsupported architecture {other}; face recognition runs face-api's networks"),
                ))
            }
        }
        let weights = |manifest: &str| -> Result<Weights> {
            let text = model.file(manifest)?.text()?;
            let tensors = zoo_runtime::tfjs::read(&text, |path| {
                // A manifest names its shards beside it, never elsewhere.
                if path.is_empty() || path.contains(['/', '\\']) || path.starts_with('.') {
                    return Err(format!("shard path {path:?} is not a file name beside the manifest"));
                }
                let file = model.file(path).map_err(|e| e.to_string())?;
                file.bytes().map(|b| b.into_owned()).map_err(|e| e.to_string())
            })
            .map_err(|reason| Error::model(&model.id, format!("{manifest}: {reason}")))?;
            Ok(Weights::new(tensors))
        };
        let network = |manifest: &str, reason: String| Error::model(&model.id, format!("{manifest}: {reason}"));
        let ssd = Ssd::load(&weights(MANIFESTS[0])?).map_err(|e| network(MANIFESTS[0], e))?;
        let landmarks = Landmarks::load(&weights(MANIFESTS[1])?).map_err(|e| network(MANIFESTS[1], e))?;
        let recognition = Recognition::load(&weights(MANIFESTS[2])?).map_err(|e| network(MANIFESTS[2], e))?;
        Ok(Recognizer {
            ssd,
            landmarks,
            recognition,
            min_score: DEFAULT_MIN_SCORE,
            max_distance: DEFAULT_MAX_DISTANCE,
            compare: false,
            aligned: false,
            descriptors: false,
            max_pixels: image_io::DEFAULT_MAX_PIXELS,
            gallery: None,
            drawn: None,
            force: false,
            explain: None,
        })
    }

    pub fn set_min_score(&mut self, min_score: f32) {
        self.min_score = min_score;
    }

    pub fn set_aligned(&mut self, aligned: bool) {
        self.aligned = aligned;
    }

    pub fn aligned(&self) -> bool {
        self.aligned
    }

    pub fn min_score(&self) -> f32 {
        self.min_score
    }

    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// The detector's output for a picture.
    pub fn detect_raw(&self, picture: &RgbImage) -> std::result::Result<nets::SsdOutput, String> {
        self.ssd.forward(&prep::detector_input(picture))
    }

    /// The detector's output for its prepared input (see [`prep::detector_input`]).
    pub fn detect_input(&self, x: &nets::Map) -> std::result::Result<nets::SsdOutput, String> {
        self.ssd.forward(x)
    }

    /// The landmark net's 136 raw outputs for `crop` of `picture`.
    pub fn landmarks_raw(&self, picture: &RgbImage, crop: Rect) -> std::result::Result<Vec<f32>, String> {
        self.landmarks.forward(&prep::face_input(picture, crop, LANDMARK_INPUT))
    }

    /// The 128-d descriptor of `crop` of `picture`.
    pub fn descriptor(&self, picture: &RgbImage, crop: Rect) -> std::result::Result<Vec<f32>, String> {
        self.recognition.forward(&prep::face_input(picture, crop, DESCRIPTOR_INPUT))
    }

    /// Every face in `picture`, best first; with `--aligned`, the picture as one face.
    pub fn faces(&self, picture: &RgbImage) -> std::result::Result<Vec<Face>, String> {
        let size = picture.dimensions();
        let whole = Rect { x: 0, y: 0, width: size.0, height: size.1 };
        if self.aligned {
            let points = locate::landmarks(&self.landmarks_raw(picture, whole)?, whole, (0.0, 0.0));
            let descriptor = self.descriptor(picture, whole)?;
            let bbox = [0.0, 0.0, f64::from(size.0), f64::from(size.1)];
            return Ok(vec![Face::new(None, bbox, &points, descriptor, None)]);
        }
        let raw = self.detect_raw(picture)?;
        let detections = locate::detections(&raw, size, self.min_score);
        // Side by side: the landmark and descriptor nets run on one thread each (see nets.rs).
        let faces: Vec<Option<Face>> = detections
            .into_par_iter()
            .with_max_len(1)
            .map(|detection| {
                let Some(crop) = locate::clip(detection.bbox, size) else { return Ok(None) };
                let origin = (detection.bbox[0], detection.bbox[1]);
                let points = locate::landmarks(&self.landmarks_raw(picture, crop)?, crop, origin);
                let Some(aligned) = locate::dlib_crop(&points, crop, size) else { return Ok(None) };
                let descriptor = self.descriptor(picture, aligned)?;
                Ok(Some(Face::new(Some(detection.score), detection.bbox, &points, descriptor, Some(detection))))
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(faces.into_iter().flatten().collect())
    }

    /// Names each face after the gallery's closest person.
    fn identify(&self, faces: &mut [Face]) {
        let Some(gallery) = &self.gallery else { return };
        for face in faces {
            if let Some((person, distance)) = gallery.closest(&face.descriptor) {
                let known = distance < self.max_distance;
                face.identity = Some(if known { person.to_string() } else { "unknown".into() });
                face.nearest = (!known).then(|| person.to_string());
                face.distance = Some(distance);
            }
        }
    }

    fn drawn_path(&self, input: &Input) -> Option<PathBuf> {
        let dir = self.drawn.as_ref()?;
        Some(dir.join(format!("{}.png", zoo_runtime::fsutil::output_stem(input.path()))))
    }

    fn prepare(&self, input: &Input) -> Result<(Vec<Face>, RgbImage)> {
        // Before any work: a picture that may not be replaced stops here.
        if let Some(path) = self.drawn_path(input).filter(|p| !self.force && p.exists()) {
            return Err(Error::input(&path, "already exists (use --force to overwrite it)"));
        }
        let picture = image_io::decode(input, self.max_pixels)?.to_rgb8();
        let mut faces =
            self.faces(&picture).map_err(|e| Error::input(input.path(), format!("face recognition failed: {e}")))?;
        self.identify(&mut faces);
        if self.explain.is_some() && !faces.is_empty() {
            let x = prep::detector_input(&picture);
            for face in &mut faces {
                face.explanation = Some(
                    explain::occlusion(self, &x, picture.dimensions(), face)
                        .map_err(|e| Error::input(input.path(), format!("explaining failed: {e}")))?,
                );
            }
        }
        Ok((faces, picture))
    }

    fn finish(
        &self,
        input: &Input,
        faces: Vec<Face>,
        picture: RgbImage,
        comparison: Option<Comparison>,
    ) -> Result<Box<Faces>> {
        let size = picture.dimensions();
        let mut overlay = None;
        if let Some(dir) = self.explain.as_ref().and_then(|e| e.out_dir.as_ref()) {
            overlay = Some(explain::write_overlay(dir, input.path(), &picture, &faces)?);
        }
        let output = match self.drawn_path(input) {
            Some(path) => {
                let mut picture = picture;
                draw(&mut picture, &faces);
                zoo_runtime::fsutil::write_png(&path, &picture, self.force)?;
                Some(path)
            }
            None => None,
        };
        Ok(Box::new(Faces {
            faces,
            picture: size,
            output,
            overlay,
            comparison,
            descriptors: self.descriptors,
            alone: false,
        }))
    }
}

/// The faces' boxes (named, or scored), and their landmarks as dots.
fn draw(picture: &mut RgbImage, faces: &[Face]) {
    let boxes: Vec<zoo_runtime::draw::Labelled> = faces
        .iter()
        .enumerate()
        .filter_map(|(i, face)| {
            let rect = locate::clip(face.bbox, picture.dimensions())?;
            let text = match (&face.identity, face.score) {
                (Some(name), _) => name.clone(),
                (None, Some(score)) => format!("face {:.0}%", score * 100.0),
                (None, None) => "face".into(),
            };
            Some(zoo_runtime::draw::Labelled { bbox: [rect.x, rect.y, rect.width, rect.height], text, colour: i })
        })
        .collect();
    zoo_runtime::draw::boxes(picture, &boxes);
    let radius = (picture.width().min(picture.height()) / 400).clamp(1, 3);
    for (i, face) in faces.iter().enumerate() {
        for p in &face.landmarks {
            zoo_runtime::draw::point(picture, (p[0], p[1]), radius, zoo_runtime::draw::colour(i));
        }
    }
}

impl Runner for Recognizer {
    fn batch_size(&self) -> usize {
        // --compare measures every picture of a run against the first: they come as one batch.
        if self.compare {
            1 << 20
        } else {
            1
        }
    }

    fn read_limit(&self) -> ReadLimit {
        image_io::read_limit(self.max_pixels)
    }

    fn run(&mut self, batch: &[Input]) -> Vec<PredictionResult> {
        // Pictures one after another, each finished (and its pixels dropped) before the next:
        // each network splits its own work across the cores, and `--compare`'s one batch of a
        // whole folder keeps only the first picture's faces.
        let mut reference: Option<std::result::Result<Vec<Face>, String>> = None;
        batch
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let prepared = self.prepare(input);
                if self.compare && i == 0 {
                    reference = Some(match &prepared {
                        Ok((faces, _)) => Ok(faces.clone()),
                        Err(e) => Err(e.to_string()),
                    });
                }
                let (faces, picture) = prepared?;
                let comparison = match &reference {
                    Some(first) if i > 0 => Some(Comparison::new(&batch[0].name, first, &faces, self.max_distance)),
                    _ => None,
                };
                let mut faces = self.finish(input, faces, picture, comparison)?;
                faces.alone = self.compare && batch.len() < 2;
                Ok(faces as Box<dyn Prediction>)
            })
            .collect()
    }
}

/// One face: where it is, the detector's score, its landmarks, and who it is (with a gallery).
#[derive(Debug, Clone, Serialize)]
pub struct Face {
    /// `[x, y, width, height]` in the picture's pixels, as the detector placed it (fractions kept).
    #[serde(rename = "box", serialize_with = "rounded")]
    pub bbox: [f64; 4],
    /// The detector's score; none with `--aligned`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// 68 points `[x, y]` in the picture's pixels, in the iBUG 300-W order (jaw, brows, nose, eyes, mouth).
    #[serde(serialize_with = "rounded_points")]
    pub landmarks: Vec<[f32; 2]>,
    /// With a gallery: the closest person's name, or `unknown` past `--max-distance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// With a gallery: the descriptor's distance to that person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
    /// For an unknown face: the closest person all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearest: Option<String>,
    /// The 128-d descriptor, in the JSON only with `--descriptors`.
    #[serde(skip)]
    pub descriptor: Vec<f32>,
    #[serde(skip)]
    pub detection: Option<Detection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<explain::Occlusion>,
}

fn rounded<S: serde::Serializer>(bbox: &[f64; 4], s: S) -> std::result::Result<S::Ok, S::Error> {
    bbox.map(|v| (v * 1000.0).round() / 1000.0).serialize(s)
}

/// Thousandths of a pixel: finer than any network here places anything.
fn rounded_points<S: serde::Serializer>(points: &[[f32; 2]], s: S) -> std::result::Result<S::Ok, S::Error> {
    let round = |v: f32| (f64::from(v) * 1000.0).round() / 1000.0;
    s.collect_seq(points.iter().map(|p| [round(p[0]), round(p[1])]))
}

/// An f32 as the shortest decimal that reads back as it (not the f64 it widens to).
fn short(v: f32) -> Value {
    v.to_string().parse::<f64>().map(Value::from).unwrap_or(Value::Null)
}

impl Face {
    fn new(
        score: Option<f32>,
        bbox: [f64; 4],
        points: &[[f64; 2]],
        descriptor: Vec<f32>,
        detection: Option<Detection>,
    ) -> Self {
        Face {
            bbox,
            score,
            landmarks: points.iter().map(|p| [p[0] as f32, p[1] as f32]).collect(),
            identity: None,
            distance: None,
            nearest: None,
            descriptor,
            detection,
            explanation: None,
        }
    }
}

/// The Euclidean distance of two descriptors (face-api's `euclideanDistance`).
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

/// A picture measured against the run's first: its closest pair of faces.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The first picture's name.
    pub with: String,
    /// Whether the closest faces are nearer than `--max-distance`; none when a picture has no face.
    pub same_person: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
    /// Which faces: the index in the first picture's faces, then in this one's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faces: Option<[usize; 2]>,
    #[serde(skip)]
    pub max_distance: f32,
    /// Why there was nothing to compare.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Comparison {
    fn new(with: &str, first: &std::result::Result<Vec<Face>, String>, faces: &[Face], max_distance: f32) -> Self {
        let mut comparison = Comparison {
            with: with.into(),
            same_person: None,
            distance: None,
            faces: None,
            max_distance,
            reason: None,
        };
        let first = match first {
            Ok(first) => first,
            Err(e) => {
                comparison.reason = Some(format!("the first picture failed: {e}"));
                return comparison;
            }
        };
        let closest = first
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                faces.iter().enumerate().map(move |(j, b)| (distance(&a.descriptor, &b.descriptor), i, j))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match closest {
            Some((d, i, j)) => {
                comparison.same_person = Some(d < max_distance);
                comparison.distance = Some(d);
                comparison.faces = Some([i, j]);
            }
            None => {
                let which = if first.is_empty() { with } else { "this picture" };
                comparison.reason = Some(format!("no face found in {which}"));
            }
        }
        comparison
    }
}

/// The faces of one picture, best first.
#[derive(Debug, Clone)]
pub struct Faces {
    pub faces: Vec<Face>,
    /// The picture's width and height, after its EXIF orientation.
    pub picture: (u32, u32),
    pub output: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
    pub comparison: Option<Comparison>,
    descriptors: bool,
    /// With `--compare`, the only picture of its run: nothing to compare it with.
    alone: bool,
}

impl Prediction for Faces {
    fn json(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        let mut faces = serde_json::to_value(&self.faces).expect("faces serialise");
        for (value, face) in faces.as_array_mut().into_iter().flatten().zip(&self.faces) {
            if let Some(score) = face.score {
                value["score"] = short(score);
            }
            if let Some(d) = face.distance {
                value["distance"] = short(d);
            }
        }
        if self.descriptors {
            for (value, face) in faces.as_array_mut().into_iter().flatten().zip(&self.faces) {
                value["descriptor"] = face.descriptor.iter().copied().map(short).collect();
            }
        }
        map.insert("faces".into(), faces);
        map.insert("width".into(), self.picture.0.into());
        map.insert("height".into(), self.picture.1.into());
        if let Some(comparison) = &self.comparison {
            map.insert("comparison".into(), serde_json::to_value(comparison).expect("comparison serialises"));
        }
        if let Some(path) = &self.output {
            map.insert("output".into(), path.display().to_string().into());
        }
        if let Some(path) = &self.overlay {
            map.insert("explanation_overlay".into(), path.display().to_string().into());
        }
        map
    }

    fn human(&self) -> String {
        let mut lines = Vec::new();
        for face in &self.faces {
            let [x, y, w, h] = face.bbox;
            let mut line = match face.score {
                Some(score) => format!("{:>6.2}%  face at x {x:.0}, y {y:.0}, {w:.0}x{h:.0}", score * 100.0),
                None => format!("aligned face, {w:.0}x{h:.0}"),
            };
            match (&face.identity, face.distance, &face.nearest) {
                (Some(_), Some(d), Some(nearest)) => {
                    line.push_str(&format!("  unknown (closest: {nearest} at distance {d:.2})"))
                }
                (Some(name), Some(d), None) => line.push_str(&format!("  {name} (distance {d:.2})")),
                _ => {}
            }
            if let Some(e) = &face.explanation {
                line.push_str(&zoo_runtime::explain::region_lines(e.region, &e.grid, "the face and its surroundings"));
            }
            lines.push(line);
        }
        if lines.is_empty() {
            lines.push("no faces found".into());
        }
        if let Some(c) = &self.comparison {
            lines.push(match (c.same_person, c.distance) {
                (Some(true), Some(d)) => {
                    format!("same person as {} (distance {d:.2}, below {:.2})", c.with, c.max_distance)
                }
                (Some(false), Some(d)) => format!(
                    "not the same person as {} (closest faces at distance {d:.2}, not below {:.2})",
                    c.with, c.max_distance
                ),
                _ => format!("cannot compare with {}: {}", c.with, c.reason.as_deref().unwrap_or("no faces")),
            });
        }
        if let Some(path) = &self.output {
            lines.push(format!("drawn: {}", path.display()));
        }
        if let Some(path) = &self.overlay {
            lines.push(format!("overlay: {}", path.display()));
        }
        lines.join("\n")
    }

    fn warnings(&self) -> Vec<String> {
        match &self.comparison {
            Some(Comparison { same_person: None, with, reason, .. }) => {
                vec![format!("cannot compare with {with}: {}", reason.as_deref().unwrap_or("no faces"))]
            }
            _ if self.alone => {
                vec!["--compare: nothing to compare with (give two pictures or more: the first is compared with each of the others)".into()]
            }
            _ => Vec::new(),
        }
    }
}
