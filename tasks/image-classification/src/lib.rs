//! zoo task: image classification.
//!
//! Runs timm's EfficientNet-Lite family (the bundled default, `efficientnet-lite0`) and Hugging
//! Face `ViTForImageClassification` checkpoints. Images are decoded by the runtime (format sniffed,
//! EXIF orientation applied, size limits checked), preprocessed as each model family expects, and
//! classified in batches; each input gets its top-k labels with probabilities.

pub mod efficientnet;
pub mod explain;
pub mod hf;
pub mod preprocess;

use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::models::vit;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use zoo_runtime::image_io;
use zoo_runtime::model::TransformerSizes;
use zoo_runtime::{
    Context, Error, Explains, Input, InputSpec, Model, Prediction, PredictionResult, ReadLimit, Result, Runner, Task,
    TaskArgs, TaskOption,
};

use crate::efficientnet::EfficientNetLite;
use crate::hf::{HfConfig, PreprocessorConfig};
use crate::preprocess::Preprocess;
use zoo_runtime::cpu::quantized::Quantization;

pub struct ImageClassification;

const OPTIONS: &[TaskOption] = &[
    TaskOption {
        name: "top-k",
        value_name: Some("N"),
        help: "How many of the most likely labels to show per image",
        default: Some("5"),
    },
    TaskOption { name: "batch-size", value_name: Some("N"), help: "Images per forward pass", default: Some("8") },
    image_io::MAX_PIXELS_OPTION,
];

impl Task for ImageClassification {
    fn name(&self) -> &'static str {
        "image-classification"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["classify", "image"]
    }

    fn summary(&self) -> &'static str {
        "Name what a photo shows (ImageNet's 1000 classes by default)"
    }

    fn warmup_input(&self) -> Option<Input> {
        Some(image_io::warmup_input())
    }

    fn input(&self) -> InputSpec {
        image_io::INPUT
    }

    fn options(&self) -> &'static [TaskOption] {
        OPTIONS
    }

    fn examples(&self) -> &'static [&'static str] {
        &[
            "zoo run image-classification photo.jpg",
            "zoo run image-classification photos/ --top-k 3 --json",
            "zoo run image-classification photo.jpg --model google/vit-base-patch16-224",
        ]
    }

    fn explains(&self) -> Explains {
        Explains::Yes("an occlusion heatmap of the top class over the crop the model saw (JSON grid, text shades; a PNG overlay per image in --explain-out)")
    }

    fn load(&self, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>> {
        let top_k: usize = args.parse("top-k")?.unwrap_or(5);
        let batch_size: usize = args.parse("batch-size")?.unwrap_or(8);
        let max_pixels: u64 = args.parse("max-pixels")?.unwrap_or(image_io::DEFAULT_MAX_PIXELS);
        for (name, value) in [("top-k", top_k), ("batch-size", batch_size)] {
            if value == 0 {
                return Err(Error::InvalidOption {
                    option: name.into(),
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        let mut classifier = Classifier::load(model, &ctx.device)?;
        classifier.top_k = top_k.min(classifier.labels.len());
        classifier.batch_size = batch_size;
        classifier.max_pixels = max_pixels;
        classifier.explain = zoo_runtime::explain::Request::from_args(args);
        if let Some(request) = &classifier.explain {
            // Before any input: a folder that cannot be made is a mistake in the command line.
            request.ensure_out_dir()?;
        }
        Ok(Box::new(classifier))
    }
}

enum Network {
    Lite(Box<EfficientNetLite>),
    Vit(Box<vit::Model>),
}

/// A loaded image classifier.
pub struct Classifier {
    network: Network,
    preprocess: Preprocess,
    labels: Vec<String>,
    device: Device,
    top_k: usize,
    batch_size: usize,
    max_pixels: u64,
    explain: Option<zoo_runtime::explain::Request>,
}

impl Classifier {
    /// Builds the network `config.json` describes: timm's `architecture` field for
    /// EfficientNet-Lite, transformers' `architectures` list for ViT.
    pub fn load(model: &Model, device: &Device) -> Result<Self> {
        let config: Value = model.json("config.json")?;
        let timm_arch = config.get("architecture").and_then(Value::as_str).map(str::to_string);
        let hf: HfConfig = serde_json::from_value(config.clone()).map_err(|e| Error::model(&model.id, e))?;
        let bad = |e: candle_core::Error| Error::model(&model.id, e);
        let (network, preprocess, labels) = match (&timm_arch, hf.architectures.first()) {
            (Some(arch), _) if arch.starts_with("tf_efficientnet_lite") => {
                let net = match config.get("quantization") {
                    None => EfficientNetLite::load(model.var_builder("model.safetensors", DType::F32, device)?),
                    Some(quantization) => {
                        let (float, inputs) = quantized_parts(model, quantization)?;
                        let float = float.as_ref().unwrap_or(model);
                        EfficientNetLite::load_int8(
                            float.var_builder("model.safetensors", DType::F32, device)?,
                            &inputs,
                        )
                    }
                }
                .map_err(bad)?;
                let labels = timm_labels(model, &config, net.num_classes)?;
                let cfg = config.get("pretrained_cfg").unwrap_or(&config);
                let crop = cfg.pointer("/input_size/1").and_then(Value::as_u64).unwrap_or(224) as u32;
                let crop_pct = cfg.get("crop_pct").and_then(Value::as_f64).unwrap_or(0.875) as f32;
                if !((16..=4096).contains(&crop) && crop_pct > 0.0 && crop_pct <= 1.0) {
                    return Err(Error::model(
                        &model.id,
                        format!("config.json: input size {crop} and crop_pct {crop_pct} are not usable"),
                    ));
                }
                (Network::Lite(Box::new(net)), Preprocess::efficientnet_lite(crop, crop_pct), labels)
            }
            (_, Some(arch)) if arch == "ViTForImageClassification" => {
                let cfg: vit::Config = serde_json::from_value(config.clone())
                    .map_err(|e| Error::model(&model.id, format!("config.json: {e}")))?;
                TransformerSizes {
                    hidden_size: cfg.hidden_size,
                    num_attention_heads: cfg.num_attention_heads,
                    num_hidden_layers: cfg.num_hidden_layers,
                    intermediate_size: cfg.intermediate_size,
                }
                .check(
                    &model.id,
                    &[
                        ("image_size", cfg.image_size, 1..=8192),
                        ("patch_size", cfg.patch_size, 1..=cfg.image_size.max(1)),
                        ("num_channels", cfg.num_channels, 3..=3),
                    ],
                )?;
                let labels = hf
                    .labels()
                    .ok_or_else(|| Error::model(&model.id, "config.json: id2label must name classes 0..n"))?;
                let vb = model.var_builder("model.safetensors", DType::F32, device)?;
                let net = vit::Model::new(&cfg, labels.len(), vb).map_err(bad)?;
                let processor: Option<PreprocessorConfig> = model.optional_json("preprocessor_config.json")?;
                let preprocess = PreprocessorConfig::to_preprocess(processor.as_ref(), cfg.image_size as u32)
                    .map_err(|e| Error::model(&model.id, e))?;
                (Network::Vit(Box::new(net)), preprocess, labels)
            }
            (timm, hf_arch) => {
                let found = timm.clone().or(hf_arch.cloned()).unwrap_or_else(|| "none given".into());
                return Err(Error::model(
                    &model.id,
                    format!("unsupported architecture ({found}); image classification runs timm tf_efficientnet_lite0..4 and transformers ViTForImageClassification"),
                ));
            }
        };
        Ok(Classifier {
            network,
            preprocess,
            labels,
            device: device.clone(),
            top_k: 5,
            batch_size: 8,
            max_pixels: image_io::DEFAULT_MAX_PIXELS,
            explain: None,
        })
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits for a batch prepared by [`Preprocess::tensor`] (concatenated on dim 0).
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.network {
            Network::Lite(net) => net.forward(x),
            Network::Vit(net) => net.forward(x),
        }
    }

    /// The range each 1x1 layer's input takes over `inputs`, preprocessed as for classifying
    /// them: what an int8 copy of an EfficientNet-Lite quantizes its activations to. Each range
    /// is the smallest and largest value seen (a percentile would clip the few large values
    /// that the residual stream carries and the logits depend on).
    pub fn calibrate(&self, inputs: &[Input]) -> Result<Vec<InputRange>> {
        let Network::Lite(net) = &self.network else {
            return Err(Error::model("calibration", "only EfficientNet-Lite networks have an int8 form"));
        };
        let mut ranges = Vec::new();
        for input in inputs {
            let (x, _) = self.prepare(input)?;
            net.widen_pointwise_input_ranges(&x, &mut ranges).map_err(|e| Error::model("calibration", e))?;
        }
        Ok(ranges)
    }

    /// Decodes and preprocesses one input into a (1, ...) tensor, with the picture's width and height.
    pub fn prepare(&self, input: &Input) -> Result<(Tensor, [u32; 2])> {
        let image = image_io::decode(input, self.max_pixels)?;
        let rgb = self.preprocess.to_rgb(&image);
        Ok((self.preprocess.tensor(&rgb, &self.device)?, [image.width(), image.height()]))
    }

    /// The occlusion heatmap of `class` for one prepared image (see [`explain`]), and its overlay
    /// PNG written into `out_dir` when given.
    pub fn saliency(
        &self,
        x: &Tensor,
        picture: [u32; 2],
        class: usize,
        input_path: &std::path::Path,
        out_dir: Option<&std::path::Path>,
    ) -> Result<explain::Saliency> {
        let grid = explain::occlusion(x, &self.preprocess, class, self.batch_size.max(16), |t| self.logits(t))?;
        let crop = explain::crop_image(x, &self.preprocess)?;
        let overlay = match out_dir {
            Some(dir) => Some(explain::write_overlay(dir, input_path, &explain::overlay(&crop, &grid))?),
            None => None,
        };
        Ok(explain::Saliency {
            method: "occlusion",
            class_index: class,
            grid,
            overlay,
            crop: [crop.width(), crop.height()],
            region: self.preprocess.source_region(picture),
        })
    }

    /// Top-k labels for each row of `logits`.
    pub fn top_k(&self, logits: &Tensor, k: usize) -> candle_core::Result<Vec<Classification>> {
        let probs = candle_nn::ops::softmax_last_dim(logits)?.to_vec2::<f32>()?;
        Ok(probs
            .into_iter()
            .map(|row| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                let predictions = order[..k.min(row.len())]
                    .iter()
                    .map(|&index| Label { index, label: self.labels[index].clone(), score: row[index] })
                    .collect();
                Classification { predictions, explanation: None }
            })
            .collect())
    }
}

impl Runner for Classifier {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn read_limit(&self) -> ReadLimit {
        image_io::read_limit(self.max_pixels)
    }

    fn run(&mut self, batch: &[Input]) -> Vec<PredictionResult> {
        // Decoding and resizing are independent per image; the network then runs once per batch.
        let prepared: Vec<Result<(Tensor, [u32; 2])>> = batch.par_iter().map(|input| self.prepare(input)).collect();
        let ready: Vec<&Tensor> = prepared.iter().filter_map(|p| p.as_ref().ok().map(|(x, _)| x)).collect();
        let mut outputs = if ready.is_empty() {
            Vec::new()
        } else {
            let run = Tensor::cat(&ready, 0).and_then(|x| self.logits(&x)).and_then(|l| self.top_k(&l, self.top_k));
            match run {
                Ok(outputs) => outputs,
                Err(e) => {
                    // Inputs that failed to decode keep their own reason.
                    let message = e.to_string();
                    return prepared
                        .into_iter()
                        .zip(batch)
                        .map(|(p, input)| {
                            p?;
                            Err(Error::input(input.path(), format!("classification failed: {message}")))
                        })
                        .collect();
                }
            }
        }
        .into_iter();
        let explain = self.explain.clone();
        prepared
            .into_iter()
            .zip(batch)
            .map(|(p, input)| {
                let (x, picture) = p?;
                let mut output = outputs.next().expect("one output per prepared image");
                if let (Some(request), Some(top)) = (&explain, output.predictions.first()) {
                    let out_dir = request.out_dir.as_deref();
                    output.explanation = Some(self.saliency(&x, picture, top.index, input.path(), out_dir)?);
                }
                Ok(Box::new(output) as Box<dyn Prediction>)
            })
            .collect()
    }
}

/// One label with its probability.
#[derive(Debug, Clone, Serialize)]
pub struct Label {
    pub index: usize,
    pub label: String,
    pub score: f32,
}

/// The result for one image: its most likely labels, best first.
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub predictions: Vec<Label>,
    /// With `--explain`: the top class's heatmap.
    pub explanation: Option<explain::Saliency>,
}

impl Prediction for Classification {
    fn label(&self) -> Option<(String, f32)> {
        self.predictions.first().map(|p| (p.label.clone(), p.score))
    }

    fn json(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        map.insert("predictions".into(), serde_json::to_value(&self.predictions).expect("labels serialise"));
        if let Some(explanation) = &self.explanation {
            map.insert(zoo_runtime::explain::JSON_FIELD.into(), serde_json::to_value(explanation).expect("serialises"));
        }
        map
    }

    fn human(&self) -> String {
        let mut text = self
            .predictions
            .iter()
            .map(|p| format!("{:>6.2}%  {} ({})", p.score * 100.0, p.label, p.index))
            .collect::<Vec<_>>()
            .join("\n");
        if let (Some(e), Some(top)) = (&self.explanation, self.predictions.first()) {
            let [w, h] = e.crop;
            text.push_str(&format!("\nwhere '{}' rests (occlusion heat over the {w}x{h} crop):\n", top.label));
            text.push_str(&explain::shades(&e.grid));
            if let Some(path) = &e.overlay {
                text.push_str(&format!("\noverlay: {}", path.display()));
            }
        }
        text
    }
}

/// timm checkpoints name their classes in a file beside the config, in `label_names`, or not at
/// all; an unnamed 1000-class head is ImageNet-1k, whose names are bundled.
/// What an int8 model's `config.json` points to under `"quantization"`: the float model whose
/// weights it quantizes (`"float_model"`, a catalogue model it requires, or `model.safetensors`
/// beside it when absent) and the calibrated range of each 1x1 layer's input (the file named by
/// `"activations"`, as [`Classifier::calibrate`] measures them).
fn quantized_parts(model: &Model, quantization: &Value) -> Result<(Option<Model>, Vec<Quantization>)> {
    let bad = |why: String| Error::model(&model.id, format!("config.json: quantization: {why}"));
    let float = match quantization.get("float_model").and_then(Value::as_str) {
        Some(id) => Some(
            model
                .requirements()
                .into_iter()
                .find(|m| m.id.eq_ignore_ascii_case(id))
                .ok_or_else(|| bad(format!("float_model {id} is not among the models this one requires")))?,
        ),
        None => None,
    };
    let file =
        quantization.get("activations").and_then(Value::as_str).ok_or_else(|| bad("no activations file".into()))?;
    let calibration: Calibration = model.json(file)?;
    let inputs = calibration
        .inputs
        .iter()
        .map(|r| match (r.min.is_finite() && r.max.is_finite()) && r.min <= r.max {
            true => Ok(Quantization::from_range(r.min, r.max)),
            false => Err(bad(format!("{file}: range {}..{} is not usable", r.min, r.max))),
        })
        .collect::<Result<_>>()?;
    Ok((float, inputs))
}

/// Calibrated activation ranges, as `calibration.json` stores them.
#[derive(serde::Deserialize, Serialize)]
pub struct Calibration {
    /// How the ranges were measured, and on which images.
    pub method: String,
    pub images: Vec<String>,
    /// One per 1x1 convolution, in the network's order.
    pub inputs: Vec<InputRange>,
}

#[derive(serde::Deserialize, Serialize, Clone, Copy)]
pub struct InputRange {
    pub min: f32,
    pub max: f32,
}

fn timm_labels(model: &Model, config: &Value, classes: usize) -> Result<Vec<String>> {
    let labels: Vec<String> = if let Some(file) = config.get("label_names_file").and_then(Value::as_str) {
        model.file(file)?.text()?.lines().map(str::to_string).collect()
    } else if let Some(names) = config.get("label_names").and_then(Value::as_array) {
        names.iter().map(|n| n.as_str().unwrap_or_default().to_string()).collect()
    } else if classes == 1000 {
        let bytes = zoo_runtime::bundled::file(IMAGENET_LABELS).expect("ImageNet labels are bundled");
        String::from_utf8_lossy(bytes).lines().map(str::to_string).collect()
    } else {
        (0..classes).map(|i| format!("class {i}")).collect()
    };
    if labels.len() != classes {
        return Err(Error::model(&model.id, format!("{} label names for {classes} classes", labels.len())));
    }
    Ok(labels)
}

const IMAGENET_LABELS: &str = "efficientnet-lite0/labels.txt";
