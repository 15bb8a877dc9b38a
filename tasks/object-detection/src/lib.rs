//! zoo task: object detection.
//!
//! Finds the objects of COCO's 80 classes in a photo with FastestDet (bundled, 250 k parameters,
//! read from its authors' PyTorch state dict), prepared and decoded as the authors' example does
//! it: the picture stretched to 352x352 with OpenCV's area resize, one box per cell of a 22x22
//! grid, greedy suppression of overlapping boxes. For more accuracy, Transformers YOLOS
//! checkpoints (`yolos.rs`) run as Transformers runs them. Boxes are reported in the picture's
//! own pixels.

pub mod decode;
pub mod explain;
pub mod fastestdet;
pub mod resize;
pub mod yolos;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use zoo_runtime::image_io;
use zoo_runtime::{
    Context, Error, Input, InputSpec, Model, Prediction, PredictionResult, ReadLimit, Result, Runner, Task, TaskArgs,
    TaskOption,
};

use crate::fastestdet::{FastestDet, INPUT};
use crate::yolos::Yolos;

pub struct ObjectDetection;

/// The reference's score threshold and suppression overlap (the authors' onnxruntime example).
const DEFAULT_MIN_SCORE: f32 = 0.65;
/// Transformers' object-detection pipeline's threshold, for its detectors.
const TRANSFORMERS_MIN_SCORE: f32 = 0.5;
const DEFAULT_IOU: f64 = 0.45;

const OPTIONS: &[TaskOption] = &[
    TaskOption {
        name: "min-score",
        value_name: Some("S"),
        help: "Report objects scoring above this (0..1). Default: 0.65 for FastestDet (score = objectness^0.6 x class probability^0.4, as its authors' example), 0.5 for YOLOS (the class probability, as Transformers' pipeline)",
        default: None,
    },
    TaskOption {
        name: "iou",
        value_name: Some("R"),
        help: "Drop a box that overlaps a better one by more than this intersection over union (0..1; FastestDet: YOLOS predicts a set and suppresses nothing)",
        default: Some("0.45"),
    },
    TaskOption {
        name: "classes",
        value_name: Some("NAMES"),
        help: "Report only these classes, comma-separated (e.g. person,dog): the plain run's objects of those classes",
        default: None,
    },
    TaskOption {
        name: "output-dir",
        value_name: Some("DIR"),
        help: "Also write each picture with its boxes and labels drawn on it, as DIR/<name>.png",
        default: None,
    },
    TaskOption {
        name: "force",
        value_name: None,
        help: "Overwrite pictures that exist in --output-dir",
        default: None,
    },
    TaskOption { name: "batch-size", value_name: Some("N"), help: "Images per forward pass", default: Some("8") },
    image_io::MAX_PIXELS_OPTION,
];

impl Task for ObjectDetection {
    fn name(&self) -> &'static str {
        "object-detection"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["detect", "objects"]
    }

    fn summary(&self) -> &'static str {
        "Find and box the objects in a photo (COCO's 80 classes: people, animals, vehicles, ...)"
    }

    fn input(&self) -> InputSpec {
        image_io::INPUT
    }

    fn options(&self) -> &'static [TaskOption] {
        OPTIONS
    }

    fn examples(&self) -> &'static [&'static str] {
        &[
            "zoo run object-detection street.jpg",
            "zoo run detect photos/ --classes person,dog --json",
            "zoo run detect photo.jpg --min-score 0.5 --output-dir boxed/",
        ]
    }

    fn explains(&self) -> zoo_runtime::Explains {
        zoo_runtime::Explains::Yes(
            "for each object, an occlusion map over its box and surroundings: how much hiding each part lowers its score (JSON grid, text shades; a PNG overlay per photo in --explain-out)",
        )
    }

    fn warmup_input(&self) -> Option<Input> {
        Some(image_io::warmup_input())
    }

    fn load(&self, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>> {
        let fraction = |name: &str, default: f64| -> Result<f64> {
            let value: f64 = args.parse(name)?.unwrap_or(default);
            match (0.0..=1.0).contains(&value) {
                true => Ok(value),
                false => Err(Error::InvalidOption {
                    option: name.into(),
                    value: args.value(name).unwrap_or_default().into(),
                    reason: "must be between 0 and 1".into(),
                }),
            }
        };
        let mut detector = Detector::load(model, &ctx.device)?;
        let min_score = fraction("min-score", f64::from(detector.min_score))? as f32;
        let iou = fraction("iou", DEFAULT_IOU)?;
        let batch_size: usize = args.parse("batch-size")?.unwrap_or(8);
        if batch_size == 0 {
            return Err(Error::InvalidOption {
                option: "batch-size".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let max_pixels: u64 = args.parse("max-pixels")?.unwrap_or(image_io::DEFAULT_MAX_PIXELS);
        let drawn = zoo_runtime::fsutil::output_dir(args, ctx.outputs)?;
        if let Some(names) = args.value("classes") {
            detector.wanted = Some(detector.class_indices(names)?);
        }
        detector.min_score = min_score;
        detector.iou = iou;
        detector.batch_size = batch_size;
        detector.max_pixels = max_pixels;
        detector.drawn = drawn;
        detector.force = args.flag("force");
        detector.explain = zoo_runtime::explain::Request::from_args(args);
        if let Some(request) = &detector.explain {
            // Before any input: a folder that cannot be made is a mistake in the command line.
            request.ensure_out_dir()?;
        }
        Ok(Box::new(detector))
    }
}

/// The network a detector runs.
enum Network {
    /// The bundled default: OpenCV's area resize to 352x352, one box per cell, suppression.
    FastestDet(Box<FastestDet>),
    /// A Transformers YOLOS checkpoint with its image processor's settings: one box per
    /// detection token, no suppression.
    Yolos(Box<Yolos>, Processor),
}

/// The `preprocessor_config.json` fields of YOLOS's image processor that zoo honours: the
/// shorter side resized to `size` unless the longer would pass the longest edge, both sides
/// rounded down to multiples of 16, then x / 255, less the mean, over the deviation.
#[derive(Debug, Clone, serde::Deserialize)]
struct Processor {
    /// `{"shortest_edge", "longest_edge"}`, or (older files) a number with `max_size` beside it.
    size: SizeField,
    max_size: Option<u32>,
    #[serde(default = "imagenet_mean")]
    image_mean: [f32; 3],
    #[serde(default = "imagenet_std")]
    image_std: [f32; 3],
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
enum SizeField {
    Edges { shortest_edge: u32, longest_edge: Option<u32> },
    Shortest(u32),
}

fn imagenet_mean() -> [f32; 3] {
    [0.485, 0.456, 0.406]
}
fn imagenet_std() -> [f32; 3] {
    [0.229, 0.224, 0.225]
}

/// The largest side zoo resizes a picture to for a Transformers detector: attention grows with
/// the square of the patches.
const MAX_EDGE: u32 = 4096;

impl Processor {
    /// The default (YOLOS's: 800, at most 1333) when the model has no file.
    fn yolos_default() -> Self {
        Processor {
            size: SizeField::Edges { shortest_edge: 800, longest_edge: Some(1333) },
            max_size: None,
            image_mean: imagenet_mean(),
            image_std: imagenet_std(),
        }
    }

    /// (shortest, longest) edges, checked.
    fn edges(&self) -> std::result::Result<(u32, u32), String> {
        let (shortest, longest) = match self.size {
            SizeField::Edges { shortest_edge, longest_edge } => (shortest_edge, longest_edge.or(self.max_size)),
            SizeField::Shortest(shortest) => (shortest, self.max_size),
        };
        let Some(longest) = longest else {
            return Err("preprocessor_config.json: no longest edge (size.longest_edge or max_size)".into());
        };
        if shortest == 0 || shortest > longest || longest > MAX_EDGE {
            return Err(format!(
                "preprocessor_config.json: edges {shortest} and {longest} must satisfy 1 <= shortest <= longest <= {MAX_EDGE}"
            ));
        }
        Ok((shortest, longest))
    }

    /// The resized (width, height), as YOLOS's `get_size_with_aspect_ratio` computes it: Python's
    /// rounding (halves to even), truncating divisions, sides rounded down to multiples of 16.
    /// Transformers leaves a square picture at its own size; zoo sizes it like any other (a large
    /// square photo would otherwise ask for tens of GB of attention).
    fn output_size(&self, (width, height): (u32, u32)) -> (u32, u32) {
        let (shortest, longest) = self.edges().unwrap_or((800, 1333));
        let (w, h) = (f64::from(width), f64::from(height));
        let (small, large) = (w.min(h), w.max(h));
        let mut size = f64::from(shortest);
        if large / small * size > f64::from(longest) {
            size = (f64::from(longest) * small / large).round_ties_even();
        }
        let (ow, oh) = if width < height {
            (size, (size * h / w).floor())
        } else if height < width {
            ((size * w / h).floor(), size)
        } else {
            (size, size)
        };
        let clamp = |v: f64| (v.min(f64::from(MAX_EDGE)) as u32) / 16 * 16;
        (clamp(ow), clamp(oh))
    }
}

/// A loaded detector.
pub struct Detector {
    network: Network,
    labels: Vec<String>,
    device: Device,
    min_score: f32,
    iou: f64,
    /// With `--classes`: which classes to keep, by index.
    wanted: Option<Vec<bool>>,
    batch_size: usize,
    max_pixels: u64,
    /// With `--output-dir`: where the pictures with their boxes go, and whether they may replace files.
    drawn: Option<PathBuf>,
    force: bool,
    explain: Option<zoo_runtime::explain::Request>,
}

impl Detector {
    /// The network in the model's `fastestdet.pth` and the class names in its `coco.names`, or
    /// a Transformers YOLOS checkpoint (`config.json` naming `YolosForObjectDetection`).
    pub fn load(model: &Model, device: &Device) -> Result<Self> {
        let transformers = match model.architecture() {
            Some("fastestdet") => false,
            Some("yolos (Transformers)") => true,
            None => model.optional_file("config.json")?.is_some(),
            Some(other) => {
                return Err(Error::model(
                    &model.id,
                    format!("unsupported architecture {other}; object detection runs fastestdet and YOLOS"),
                ))
            }
        };
        if transformers {
            return Self::load_transformers(model, device);
        }
        let file = model.file(WEIGHTS)?;
        let bytes = file.bytes()?;
        let tensors = zoo_runtime::model::pth_tensors(&bytes, device)
            .map_err(|reason| Error::model(&model.id, format!("{WEIGHTS}: {reason}")))?;
        let network = FastestDet::load(&tensors).map_err(|e| Error::model(&model.id, format!("{WEIGHTS}: {e}")))?;
        let labels: Vec<String> =
            model.file(LABELS)?.text()?.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        if labels.len() != network.classes {
            return Err(Error::model(
                &model.id,
                format!("{LABELS} names {} classes but the network has {}", labels.len(), network.classes),
            ));
        }
        Ok(Self::with(Network::FastestDet(Box::new(network)), labels, device))
    }

    fn with(network: Network, labels: Vec<String>, device: &Device) -> Self {
        let min_score = match network {
            Network::FastestDet(_) => DEFAULT_MIN_SCORE,
            Network::Yolos(..) => TRANSFORMERS_MIN_SCORE,
        };
        Detector {
            network,
            labels,
            device: device.clone(),
            min_score,
            iou: DEFAULT_IOU,
            wanted: None,
            batch_size: 8,
            max_pixels: image_io::DEFAULT_MAX_PIXELS,
            drawn: None,
            force: false,
            explain: None,
        }
    }

    fn load_transformers(model: &Model, device: &Device) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Architectures {
            #[serde(default)]
            architectures: Vec<String>,
        }
        let text = model.file("config.json")?.text()?;
        let named: Architectures =
            serde_json::from_str(&text).map_err(|e| Error::model(&model.id, format!("config.json: {e}")))?;
        if !named.architectures.iter().any(|a| a == "YolosForObjectDetection") {
            return Err(Error::model(
                &model.id,
                format!(
                    "unsupported architecture {}; object detection runs YolosForObjectDetection checkpoints",
                    named.architectures.join(", ")
                ),
            ));
        }
        let config = yolos::read_config(&text).map_err(|e| Error::model(&model.id, e))?;
        let processor: Processor =
            model.optional_json("preprocessor_config.json")?.unwrap_or_else(Processor::yolos_default);
        processor.edges().map_err(|e| Error::model(&model.id, e))?;
        let vb = model.transformers_weights(candle_core::DType::F32, device)?;
        let network = Yolos::load(config, vb).map_err(|e| Error::model(&model.id, e))?;
        let labels = network.labels.clone();
        Ok(Self::with(Network::Yolos(Box::new(network), processor), labels, device))
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    fn class_indices(&self, names: &str) -> Result<Vec<bool>> {
        let mut wanted = vec![false; self.labels.len()];
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match self.labels.iter().position(|l| l.eq_ignore_ascii_case(name)) {
                Some(i) => wanted[i] = true,
                None => {
                    let some: Vec<&str> = self.labels.iter().take(8).map(String::as_str).collect();
                    return Err(Error::InvalidOption {
                        option: "classes".into(),
                        value: names.into(),
                        reason: format!(
                            "'{name}' is not one of the model's {} classes ({}, ...)",
                            self.labels.len(),
                            some.join(", ")
                        ),
                    });
                }
            }
        }
        if !wanted.contains(&true) {
            return Err(Error::InvalidOption {
                option: "classes".into(),
                value: names.into(),
                reason: "names no class".into(),
            });
        }
        Ok(wanted)
    }

    /// The network's input for one picture, as a (1, 3, H, W) tensor. FastestDet: stretched to
    /// 352x352 as the reference resizes, in BGR order (the authors' OpenCV pipeline), scaled to
    /// 0..1. YOLOS: resized keeping its shape as the checkpoint's image processor says
    /// (bilinear, antialiased, as PIL), RGB, normalised.
    pub fn tensor(&self, picture: &image::RgbImage) -> candle_core::Result<Tensor> {
        if let Network::Yolos(network, processor) = &self.network {
            let (w, h) = processor.output_size(picture.dimensions());
            let patch = network.config.patch_size as u32;
            if w < patch || h < patch {
                let (pw, ph) = picture.dimensions();
                candle_core::bail!(
                    "a {pw}x{ph} picture resizes to {w}x{h}, smaller than the detector's {patch}x{patch} patches"
                )
            }
            let resized = image::imageops::resize(picture, w, h, image::imageops::FilterType::Triangle);
            let plane = (w * h) as usize;
            let mut chw = vec![0f32; 3 * plane];
            for (i, pixel) in resized.pixels().enumerate() {
                for (c, &value) in pixel.0.iter().enumerate() {
                    chw[c * plane + i] = (f32::from(value) / 255.0 - processor.image_mean[c]) / processor.image_std[c];
                }
            }
            return Tensor::from_vec(chw, (1, 3, h as usize, w as usize), &self.device);
        }
        let resized = resize::area(picture, INPUT as u32, INPUT as u32);
        let plane = INPUT * INPUT;
        let mut chw = vec![0f32; 3 * plane];
        for (i, pixel) in resized.pixels().enumerate() {
            for (c, &value) in pixel.0.iter().rev().enumerate() {
                chw[c * plane + i] = f32::from(value) / 255.0;
            }
        }
        Tensor::from_vec(chw, (1, 3, INPUT, INPUT), &self.device)
    }

    /// The outputs for a batch of inputs made by [`Detector::tensor`]: FastestDet's maps
    /// (batch, 5 + classes, 22, 22); YOLOS's (batch, tokens, classes + 1 + 4), each token's
    /// class logits then its box. YOLOS inputs differ in size with their pictures: one each.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.network {
            Network::FastestDet(network) => network.forward(x),
            Network::Yolos(network, _) => {
                let outputs = (0..x.dim(0)?)
                    .map(|i| {
                        let (logits, boxes) = network.forward(&x.get(i)?.unsqueeze(0)?)?;
                        Tensor::cat(&[logits, boxes], 1)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&outputs, 0)
            }
        }
    }

    /// The input value that hides a pixel: mid grey, as the network's input encodes it.
    pub fn grey(&self) -> [f32; 3] {
        match &self.network {
            Network::FastestDet(_) => [0.5; 3],
            Network::Yolos(_, p) => std::array::from_fn(|c| (0.5 - p.image_mean[c]) / p.image_std[c]),
        }
    }

    /// The score the `i`th of a batch of outputs gives to what found `object` (its grid cell or
    /// detection token) for the object's class.
    pub fn score_at(&self, outputs: &Tensor, i: usize, object: &Object) -> candle_core::Result<f32> {
        match &self.network {
            Network::FastestDet(_) => {
                let (_, channels, h, w) = outputs.dims4()?;
                let values = outputs.get(i)?.reshape((channels, h * w))?;
                let objectness = values.get(0)?.get(object.cell)?.to_scalar::<f32>()?;
                let probability = values.get(5 + object.index)?.get(object.cell)?.to_scalar::<f32>()?;
                Ok(objectness.powf(0.6) * probability.powf(0.4))
            }
            Network::Yolos(..) => {
                let row: Vec<f32> = outputs.get(i)?.get(object.cell)?.to_vec1()?;
                let probabilities = softmax(&row[..self.labels.len() + 1]);
                Ok(probabilities[object.index])
            }
        }
    }

    /// The objects in one picture's outputs (from [`Detector::forward`], without the batch), best first.
    pub fn objects(&self, map: &Tensor, picture: (u32, u32)) -> candle_core::Result<Vec<Object>> {
        if let Network::Yolos(..) = &self.network {
            return self.yolos_objects(map, picture);
        }
        let (cells, shape) = fastestdet::cell_vectors(map)?;
        let found = decode::candidates(&cells, shape, picture, self.min_score);
        // --classes picks among what the plain run finds: suppression is across classes, as the
        // reference does it, so filtering first would bring back boxes another class suppressed.
        let wanted = |class: usize| self.wanted.as_ref().is_none_or(|w| w[class]);
        Ok(decode::suppress(found, self.iou)
            .into_iter()
            .filter(|c| wanted(c.class))
            .map(|c| Object {
                label: self.labels[c.class].clone(),
                index: c.class,
                score: c.score,
                bbox: decode::clipped_box(c.corners, picture),
                cell: c.cell,
                explanation: None,
            })
            // A box wholly outside the picture clips to nothing.
            .filter(|o| o.bbox[2] > 0 && o.bbox[3] > 0)
            .collect())
    }

    /// Transformers' `post_process_object_detection`: per token, the most probable class but
    /// "no object" (the last), kept above `--min-score`; boxes from centre and size relative to
    /// the input, scaled to the picture. Set prediction: nothing is suppressed.
    fn yolos_objects(&self, outputs: &Tensor, (width, height): (u32, u32)) -> candle_core::Result<Vec<Object>> {
        let classes = self.labels.len();
        let (tokens, _) = outputs.dims2()?;
        let values: Vec<f32> = outputs.flatten_all()?.to_vec1()?;
        let wanted = |class: usize| self.wanted.as_ref().is_none_or(|w| w[class]);
        let mut objects: Vec<Object> = values
            .chunks_exact(classes + 5)
            .take(tokens)
            .enumerate()
            .filter_map(|(token, row)| {
                let probabilities = softmax(&row[..classes + 1]);
                let (class, score) = probabilities[..classes]
                    .iter()
                    .copied()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, p)| if p > best.1 { (i, p) } else { best });
                // NaN scores are never kept.
                if score.partial_cmp(&self.min_score) != Some(std::cmp::Ordering::Greater) || !wanted(class) {
                    return None;
                }
                let [cx, cy, w, h] = [row[classes + 1], row[classes + 2], row[classes + 3], row[classes + 4]];
                let (sx, sy) = (width as f32, height as f32);
                let corners = [(cx - w / 2.0) * sx, (cy - h / 2.0) * sy, (cx + w / 2.0) * sx, (cy + h / 2.0) * sy];
                let bbox = decode::clipped_box(corners.map(|v| v.round() as i64), (width, height));
                Some(Object {
                    label: self.labels[class].clone(),
                    index: class,
                    score,
                    bbox,
                    cell: token,
                    explanation: None,
                })
            })
            .filter(|o| o.bbox[2] > 0 && o.bbox[3] > 0)
            .collect();
        objects.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(objects)
    }

    /// The network's input, and the picture itself when it is to be drawn on.
    fn prepare(&self, input: &Input) -> Result<(Tensor, (u32, u32), Option<image::RgbImage>)> {
        let picture = image_io::decode(input, self.max_pixels)?.to_rgb8();
        let size = picture.dimensions();
        let x = self.tensor(&picture).map_err(|e| Error::input(input.path(), format!("detection failed: {e}")))?;
        let keep = self.drawn.is_some() || self.explain.as_ref().is_some_and(|e| e.out_dir.is_some());
        Ok((x, size, keep.then_some(picture)))
    }

    /// `DIR/<name>.png` for an input (`stdin.png` for `-`).
    fn drawn_path(dir: &Path, input: &Input) -> PathBuf {
        let stem = zoo_runtime::fsutil::output_stem(input.path());
        dir.join(format!("{stem}.png"))
    }

    fn write_drawn(
        &self,
        dir: &Path,
        input: &Input,
        mut picture: image::RgbImage,
        objects: &[Object],
    ) -> Result<PathBuf> {
        let path = Self::drawn_path(dir, input);
        let boxes: Vec<zoo_runtime::draw::Labelled> = objects
            .iter()
            .map(|o| zoo_runtime::draw::Labelled {
                bbox: o.bbox,
                text: format!("{} {:.0}%", o.label, o.score * 100.0),
                colour: o.index,
            })
            .collect();
        zoo_runtime::draw::boxes(&mut picture, &boxes);
        zoo_runtime::fsutil::write_png(&path, &picture, self.force)?;
        Ok(path)
    }
}

impl Runner for Detector {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn read_limit(&self) -> ReadLimit {
        image_io::read_limit(self.max_pixels)
    }

    fn run(&mut self, batch: &[Input]) -> Vec<PredictionResult> {
        type Prepared = Result<(Tensor, (u32, u32), Option<image::RgbImage>)>;
        let prepared: Vec<Prepared> = batch.par_iter().map(|input| self.prepare(input)).collect();
        let ready: Vec<&Tensor> = prepared.iter().filter_map(|p| p.as_ref().ok().map(|(x, ..)| x)).collect();
        // One output per prepared input. FastestDet's inputs are stacked and run together; YOLOS's
        // keep their pictures' shapes, so each runs alone and fails alone.
        let outputs: Vec<candle_core::Result<Tensor>> = match (&self.network, ready.is_empty()) {
            (_, true) => Vec::new(),
            (Network::FastestDet(_), false) => match Tensor::cat(&ready, 0).and_then(|x| self.forward(&x)) {
                Ok(maps) => (0..ready.len()).map(|i| maps.get(i)).collect(),
                Err(e) => {
                    let reason = e.to_string();
                    ready.iter().map(|_| Err(candle_core::Error::Msg(reason.clone()))).collect()
                }
            },
            (Network::Yolos(..), false) => ready.iter().map(|x| self.forward(x).and_then(|o| o.get(0))).collect(),
        };
        let mut outputs = outputs.into_iter();
        prepared
            .into_iter()
            .zip(batch)
            .map(|(p, input)| {
                let (x, size, picture) = p?;
                let failed = |e: &dyn std::fmt::Display| Error::input(input.path(), format!("detection failed: {e}"));
                let map = outputs.next().expect("one output per prepared input").map_err(|e| failed(&e))?;
                // Before the explanations' passes: a picture that may not be replaced stops here.
                if let Some(dir) = &self.drawn {
                    let path = Self::drawn_path(dir, input);
                    if !self.force && path.exists() {
                        return Err(Error::input(&path, "already exists (use --force to overwrite it)"));
                    }
                }
                let mut objects = self.objects(&map, size).map_err(|e| failed(&e))?;
                let mut overlay = None;
                if let Some(request) = &self.explain {
                    let heats = objects
                        .iter()
                        .map(|object| explain::occlusion(self, &x, size, object, self.batch_size))
                        .collect::<candle_core::Result<Vec<_>>>()
                        .map_err(|e| failed(&e))?;
                    for (object, heat) in objects.iter_mut().zip(heats) {
                        object.explanation = Some(heat);
                    }
                    if let (Some(dir), Some(picture)) = (&request.out_dir, &picture) {
                        overlay = Some(explain::write_overlay(dir, input.path(), picture, &objects)?);
                    }
                }
                let output = match (&self.drawn, picture) {
                    (Some(dir), Some(picture)) => Some(self.write_drawn(dir, input, picture, &objects)?),
                    _ => None,
                };
                Ok(Box::new(Detections { objects, picture: size, output, overlay }) as Box<dyn Prediction>)
            })
            .collect()
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let mut row = logits.to_vec();
    zoo_runtime::cpu::softmax(&mut row);
    row
}

const WEIGHTS: &str = "fastestdet.pth";
const LABELS: &str = "coco.names";

/// One object found: its class, the score, and its box `[x, y, width, height]` in the picture's
/// pixels (clipped to the picture).
#[derive(Debug, Clone, Serialize)]
pub struct Object {
    pub label: String,
    pub index: usize,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
    /// The detector's grid cell that found it, row-major.
    #[serde(skip)]
    pub cell: usize,
    /// With `--explain`: what the score rested on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<explain::Occlusion>,
}

/// The objects of one picture, best first.
#[derive(Debug, Clone)]
pub struct Detections {
    pub objects: Vec<Object>,
    /// The picture's width and height, after its EXIF orientation.
    pub picture: (u32, u32),
    /// The picture with the boxes drawn on it, when `--output-dir` asked for one.
    pub output: Option<PathBuf>,
    /// The picture with each object's heat over its region, when `--explain-out` asked for one.
    pub overlay: Option<PathBuf>,
}

impl Prediction for Detections {
    fn json(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        map.insert("objects".into(), serde_json::to_value(&self.objects).expect("objects serialise"));
        map.insert("width".into(), self.picture.0.into());
        map.insert("height".into(), self.picture.1.into());
        if let Some(path) = &self.output {
            map.insert("output".into(), path.display().to_string().into());
        }
        if let Some(path) = &self.overlay {
            map.insert("explanation_overlay".into(), path.display().to_string().into());
        }
        map
    }

    fn human(&self) -> String {
        let mut lines: Vec<String> = self
            .objects
            .iter()
            .map(|o| {
                let [x, y, w, h] = o.bbox;
                let mut line =
                    format!("{:>6.2}%  {} ({})  at x {x}, y {y}, {w}x{h}", o.score * 100.0, o.label, o.index);
                if let Some(e) = &o.explanation {
                    line.push_str(&zoo_runtime::explain::region_lines(
                        e.region,
                        &e.grid,
                        "the box and its surroundings",
                    ));
                }
                line
            })
            .collect();
        if lines.is_empty() {
            lines.push("no objects found".into());
        }
        if let Some(path) = &self.output {
            lines.push(format!("drawn: {}", path.display()));
        }
        if let Some(path) = &self.overlay {
            lines.push(format!("overlay: {}", path.display()));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor(json: &str) -> Processor {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn yolos_pictures_are_sized_as_transformers_sizes_them() {
        let p = processor(r#"{"size": {"shortest_edge": 800, "longest_edge": 1333}}"#);
        // Shorter side to 800, the other scaled and truncated, both down to multiples of 16.
        assert_eq!(p.output_size((640, 480)), (1056, 800));
        // 2:1: the longest edge rules: round(666.5) is 666 in Python (halves to even).
        assert_eq!(p.output_size((2000, 1000)), (1328, 656));
        assert_eq!(p.output_size((1000, 2000)), (656, 1328));
        // The older form of the same settings.
        let old = processor(r#"{"size": 512, "max_size": 1333}"#);
        assert_eq!(old.edges().unwrap(), (512, 1333));
        assert_eq!(old.output_size((640, 480)), (672, 512));
        // Squares are sized too; extremes stay bounded.
        assert_eq!(old.output_size((3000, 3000)), (512, 512));
        let (w, h) = old.output_size((100_000, 1));
        assert!(w <= 1333 && h == 0, "{w}x{h}");
        let missing = processor(r#"{"size": {"shortest_edge": 800}}"#).edges().unwrap_err();
        assert!(missing.contains("no longest edge"), "{missing}");
        assert!(processor(r#"{"size": 10, "max_size": 100000}"#).edges().is_err());
    }
}
