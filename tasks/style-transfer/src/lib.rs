//! zoo task: style transfer.
//!
//! Three networks of one shape (see [`network`]): multistyle26 (26 built-in styles, mixable; the
//! bundled default), Magenta's arbitrary stylisation (any painting, through a MobileNetV2 style
//! predictor; bundled) and pytorch/examples TransformerNet checkpoints (one style each; the user's
//! own safetensors or zip `.pth` file). Pictures of any size are scaled to `--max-size`, padded to
//! what the network needs and cropped back exactly; alpha is kept; the runner writes the files.

pub mod cpu;
pub mod images;
pub mod layers;
pub mod network;
pub mod predictor;
pub mod sheet;
pub mod spec;
pub mod weights;

use std::path::PathBuf;

use candle_core::Device;
use image::{DynamicImage, RgbImage};
use serde_json::{json, Map, Value};
use zoo_runtime::image_io;
use zoo_runtime::{
    fsutil, Catalog, Context, Error, Explains, ImageFormat, Input, InputSpec, Model, ModelRef, Outputs, Prediction,
    PredictionResult, Result, Runner, Task, TaskArgs, TaskOption,
};

use crate::images::Format;
use crate::network::{Norms, Style, StyleNet};
use crate::predictor::StylePredictor;
use crate::spec::StyleMix;

pub struct StyleTransfer;

/// The longest side styled by default: a 1024-pixel picture takes multistyle26 about 0.3 GB.
pub const DEFAULT_MAX_SIZE: u32 = 1024;
/// The longest side of each contact-sheet cell.
const SHEET_CELL: u32 = 256;
/// The catalogue's arbitrary-style model, used when `--style-image` is given without a model that takes one.
const ARBITRARY_MODEL: &str = "magenta-arbitrary";

const OPTIONS: &[TaskOption] = &[
    TaskOption {
        name: "style",
        value_name: Some("STYLE"),
        help: "Built-in style (multistyle26): a number 0-25 or a name, or a mix such as 3:0.7,19:0.3 [default: 0]",
        default: None,
    },
    TaskOption {
        name: "style-image",
        value_name: Some("FILE"),
        help: "Style of any picture (a painting), with the bundled Magenta arbitrary-style model",
        default: None,
    },
    TaskOption {
        name: "strength",
        value_name: Some("0..1"),
        help: "With --style-image: 1 takes the painting's style, 0 keeps the photo's own, between mixes them",
        default: Some("1"),
    },
    TaskOption {
        name: "output",
        value_name: Some("FILE"),
        help: "Where to write the picture (.png or .jpg)",
        default: None,
    },
    TaskOption {
        name: "output-dir",
        value_name: Some("DIR"),
        help: "Write each input's picture here, as <name>.png (for several inputs)",
        default: None,
    },
    TaskOption {
        name: "contact-sheet",
        value_name: Some("FILE"),
        help: "Write the photo in all 26 built-in styles, numbered, to choose a --style",
        default: None,
    },
    TaskOption { name: "force", value_name: None, help: "Overwrite output files that exist", default: None },
    TaskOption {
        name: "max-size",
        value_name: Some("N"),
        help: "Scale the longest side down to N pixels first (0: no limit; memory grows with the area)",
        default: Some("1024"),
    },
    TaskOption { name: "quality", value_name: Some("1-100"), help: "JPEG quality", default: Some("90") },
    image_io::MAX_PIXELS_OPTION,
];

impl Task for StyleTransfer {
    fn name(&self) -> &'static str {
        "style-transfer"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["style", "stylize"]
    }

    fn summary(&self) -> &'static str {
        "Repaint a photo in a painting's style (26 built-in styles, or any picture)"
    }

    fn warmup_input(&self) -> Option<Input> {
        Some(image_io::warmup_input())
    }

    fn upload_options(&self) -> &'static [&'static str] {
        &["style-image"]
    }

    fn returned_options(&self) -> &'static [&'static str] {
        &["contact-sheet"]
    }

    fn input(&self) -> InputSpec {
        image_io::INPUT
    }

    fn options(&self) -> &'static [TaskOption] {
        OPTIONS
    }

    fn explains(&self) -> Explains {
        Explains::No("it repaints images and decides nothing, so there is no decision to explain")
    }

    fn examples(&self) -> &'static [&'static str] {
        &[
            "zoo run style-transfer photo.jpg --contact-sheet sheet.png",
            "zoo run style-transfer photo.jpg --style 7 --output out.png",
            "zoo run style-transfer photo.jpg --style 3:0.7,19:0.3 --output out.jpg --quality 95",
            "zoo run style-transfer photo.jpg --style-image painting.jpg --strength 0.8 --output out.png",
            "zoo run style-transfer photos/ --style 7 --output-dir styled/",
            "zoo run style-transfer photo.jpg --model ./candy.pth --output out.png",
        ]
    }

    fn load(&self, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>> {
        let settings = Settings::parse(args, ctx.outputs)?;
        // A picture's style needs the arbitrary-style network; the default model has built-in styles only.
        let arbitrary;
        let model = match (&settings.style_image, model.architecture()) {
            (Some(_), Some(weights::MULTISTYLE)) => {
                let entry = Catalog::bundled().get(ARBITRARY_MODEL).expect("magenta-arbitrary is catalogued");
                arbitrary = Model::resolve(&ModelRef::Catalog(entry), &ctx.hub);
                &arbitrary
            }
            _ => model,
        };
        let loaded = weights::load(model, &ctx.device)?;
        Ok(Box::new(Stylizer::new(loaded, settings, model.id.clone(), &ctx.device)?))
    }
}

/// Where results go.
#[derive(Debug, Clone)]
enum Destination {
    File(PathBuf),
    Dir(PathBuf),
    /// The contact sheet, written to the file, or kept in memory (`None`) for a server's answer.
    Sheet(Option<PathBuf>),
    /// Kept in the prediction, never written (a server's request).
    Memory,
}

/// The task's options, checked.
struct Settings {
    style: Option<String>,
    style_image: Option<Input>,
    strength: f32,
    destination: Destination,
    force: bool,
    max_size: u32,
    max_pixels: u64,
    quality: u8,
}

fn invalid(option: &str, value: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidOption { option: option.into(), value: value.into(), reason: reason.into() }
}

impl Settings {
    fn parse(args: &TaskArgs, outputs: Outputs) -> Result<Self> {
        let strength: f32 = args.parse("strength")?.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&strength) {
            return Err(invalid("strength", args.value("strength").unwrap_or_default(), "must be between 0 and 1"));
        }
        let quality: u8 = args.parse("quality")?.unwrap_or(90);
        if !(1..=100).contains(&quality) {
            return Err(invalid("quality", quality.to_string(), "must be between 1 and 100"));
        }
        let max_size: u32 = args.parse("max-size")?.unwrap_or(DEFAULT_MAX_SIZE);
        let max_pixels: u64 = args.parse("max-pixels")?.unwrap_or(image_io::DEFAULT_MAX_PIXELS);
        let force = args.flag("force");
        let chosen: Vec<(&str, &str)> = ["output", "output-dir", "contact-sheet"]
            .into_iter()
            .filter_map(|name| args.value(name).map(|v| (name, v)))
            .collect();
        let destination = match chosen.as_slice() {
            [] if outputs == Outputs::Memory => Destination::Memory,
            [("contact-sheet", zoo_runtime::RETURNED)] if outputs == Outputs::Memory => Destination::Sheet(None),
            [(name, _), ..] if outputs == Outputs::Memory => {
                return Err(Error::Usage(format!("--{name}: results are kept in memory here, not written to a file")))
            }
            [] => {
                return Err(Error::Usage(
                    "say where to write the result: --output FILE, --output-dir DIR (several inputs) or --contact-sheet FILE"
                        .into(),
                ))
            }
            [(name, value)] => {
                let path = PathBuf::from(value);
                match *name {
                    "output-dir" => {
                        std::fs::create_dir_all(&path).map_err(|e| invalid(name, *value, e.to_string()))?;
                        Destination::Dir(path)
                    }
                    _ => {
                        Format::of(&path).map_err(|reason| invalid(name, *value, reason))?;
                        if path.exists() && !force {
                            return Err(invalid(name, *value, "the file exists (use --force to overwrite it)"));
                        }
                        if *name == "output" {
                            Destination::File(path)
                        } else {
                            Destination::Sheet(Some(path))
                        }
                    }
                }
            }
            _ => {
                let names: Vec<String> = chosen.iter().map(|(n, _)| format!("--{n}")).collect();
                return Err(Error::Usage(format!("give only one of {}", names.join(", "))));
            }
        };
        let style = args.value("style").map(str::to_string);
        let style_image = args.input("style-image");
        if style.is_some() && style_image.is_some() {
            return Err(Error::Usage(
                "give --style (a built-in style) or --style-image (a picture's), not both".into(),
            ));
        }
        if args.value("strength").is_some_and(|s| s.parse::<f32>() != Ok(1.0)) && style_image.is_none() {
            return Err(Error::Usage("--strength applies to --style-image only".into()));
        }
        if matches!(destination, Destination::Sheet(_)) && (style.is_some() || style_image.is_some()) {
            return Err(Error::Usage(
                "--contact-sheet shows every built-in style; leave out --style and --style-image".into(),
            ));
        }
        Ok(Settings { style, style_image, strength, destination, force, max_size, max_pixels, quality })
    }
}

/// How the network's norms are chosen.
enum Mode {
    Builtin {
        names: Vec<String>,
        mix: StyleMix,
    },
    /// `image`: the painting's name, as given (a path, or an upload's file name).
    Arbitrary {
        predictor: Box<StylePredictor>,
        style: Vec<f32>,
        strength: f32,
        image: String,
    },
    Fixed,
}

/// A loaded style network with its style chosen, ready for many pictures.
pub struct Stylizer {
    net: StyleNet,
    mode: Mode,
    /// The norms when they do not depend on the picture (all but a partial `--strength`).
    norms: Option<Norms>,
    settings: Settings,
    model_id: String,
    device: Device,
}

impl Stylizer {
    fn new(loaded: weights::Loaded, settings: Settings, model_id: String, device: &Device) -> Result<Self> {
        let id = model_id.clone();
        let bad_model = move |e: candle_core::Error| Error::model(&id, e);
        let net = loaded.net;
        let sheet = matches!(settings.destination, Destination::Sheet(_));
        let mode = match (loaded.style_names, loaded.predictor) {
            (Some(names), _) => {
                if settings.style_image.is_some() {
                    return Err(Error::Usage(format!(
                        "model '{model_id}' has built-in styles only; --style-image needs magenta-arbitrary"
                    )));
                }
                let mix = match &settings.style {
                    Some(text) => StyleMix::parse(text, &names)?,
                    None => StyleMix::single(0),
                };
                Mode::Builtin { names, mix }
            }
            (None, Some(predictor)) => {
                if settings.style.is_some() || sheet {
                    return Err(Error::Usage(format!(
                        "model '{model_id}' takes its style from a picture (--style-image FILE); built-in styles (--style, --contact-sheet) are multistyle26's"
                    )));
                }
                let Some(painting) = settings.style_image.clone() else {
                    return Err(Error::Usage(format!("model '{model_id}' needs --style-image FILE (a painting)")));
                };
                let picture = image_io::decode(&painting, settings.max_pixels)
                    .map_err(|e| invalid("style-image", painting.name.clone(), reason_of(e)))?;
                let style = predictor.predict(&picture).map_err(&bad_model)?;
                Mode::Arbitrary { predictor, style, strength: settings.strength, image: painting.name }
            }
            (None, None) => {
                if settings.style.is_some() || settings.style_image.is_some() || sheet {
                    return Err(Error::Usage(format!(
                        "model '{model_id}' has one style built in; --style, --style-image and --contact-sheet do not apply"
                    )));
                }
                Mode::Fixed
            }
        };
        let mut stylizer = Stylizer { net, mode, norms: None, settings, model_id, device: device.clone() };
        stylizer.norms = match &stylizer.mode {
            Mode::Arbitrary { strength, .. } if *strength < 1.0 => None,
            _ => Some(stylizer.norms_for(None).map_err(&bad_model)?),
        };
        Ok(stylizer)
    }

    /// The network's norms for the chosen style; `content` is the picture, needed by a partial strength.
    fn norms_for(&self, content: Option<&DynamicImage>) -> candle_core::Result<Norms> {
        match &self.mode {
            Mode::Builtin { mix, .. } => self.net.norms(&Style::Mix(mix.weights(self.net.style_size))),
            Mode::Fixed => self.net.norms(&Style::Fixed),
            Mode::Arbitrary { predictor, style, strength, .. } => {
                let vector = match content {
                    Some(content) if *strength < 1.0 => {
                        let own = predictor.predict(content)?;
                        style.iter().zip(own).map(|(s, c)| strength * s + (1.0 - strength) * c).collect()
                    }
                    _ => style.clone(),
                };
                self.net.norms(&Style::Vector(vector))
            }
        }
    }

    /// Styles a picture already scaled; the result has its size (and its alpha).
    pub fn stylize(&self, picture: &DynamicImage, norms: &Norms) -> candle_core::Result<DynamicImage> {
        let alpha = images::alpha(picture);
        let rgb = picture.to_rgb8();
        let styled = self.stylize_rgb(&rgb, norms)?;
        Ok(images::with_alpha(styled, alpha.as_ref()))
    }

    fn stylize_rgb(&self, rgb: &RgbImage, norms: &Norms) -> candle_core::Result<RgbImage> {
        let x = images::to_tensor(rgb, &self.device)?;
        let y = self.net.run(&x, norms)?;
        images::to_rgb(&y, rgb.width(), rgb.height())
    }

    fn style_json(&self) -> Value {
        match &self.mode {
            Mode::Builtin { names, mix } => Value::Array(
                mix.parts
                    .iter()
                    .map(|&(index, weight)| json!({"index": index, "name": names[index], "weight": weight}))
                    .collect(),
            ),
            Mode::Arbitrary { image, strength, .. } => {
                json!({"image": image, "strength": strength})
            }
            Mode::Fixed => json!(self.model_id),
        }
    }

    fn output_path(&self, input: &Input) -> Option<PathBuf> {
        match &self.settings.destination {
            Destination::File(path) | Destination::Sheet(Some(path)) => Some(path.clone()),
            Destination::Dir(dir) => {
                let stem = zoo_runtime::fsutil::output_stem(input.path());
                Some(dir.join(format!("{stem}.png")))
            }
            Destination::Memory | Destination::Sheet(None) => None,
        }
    }

    fn process(&self, input: &Input) -> Result<Styled> {
        let output = self.output_path(input);
        let picture = image_io::decode(input, self.settings.max_pixels)?;
        let failed = |e: candle_core::Error| Error::input(input.path(), format!("styling failed: {e}"));
        let mut cells = None;
        let (result, style) = if matches!(self.settings.destination, Destination::Sheet(_)) {
            let (sheet, cell) = self.contact_sheet(&picture).map_err(failed)?;
            cells = Some(json!({"columns": sheet::COLUMNS, "gap": sheet::GAP, "width": cell.0, "height": cell.1}));
            (sheet, self.sheet_json())
        } else {
            let picture = images::limit_size(picture, self.settings.max_size);
            let norms = match &self.norms {
                Some(norms) => norms.clone(),
                None => self.norms_for(Some(&picture)).map_err(failed)?,
            };
            (self.stylize(&picture, &norms).map_err(failed)?, self.style_json())
        };
        let (width, height) = (result.width(), result.height());
        let kept = match output {
            Some(path) => {
                let format = Format::of(&path).map_err(|reason| Error::input(&path, reason))?;
                let bytes = images::encode(&result, format, self.settings.quality, &path)?;
                fsutil::write_atomic(&path, &bytes, self.settings.force)?;
                Kept::Written(path)
            }
            None => Kept::InMemory { picture: result, name: input.name.clone(), quality: self.settings.quality },
        };
        Ok(Styled { kept, style, cells, model: self.model_id.clone(), width, height })
    }

    /// The sheet, and the size of its cells.
    fn contact_sheet(&self, picture: &DynamicImage) -> candle_core::Result<(DynamicImage, (u32, u32))> {
        let Mode::Builtin { names, .. } = &self.mode else { candle_core::bail!("no built-in styles") };
        // --max-size 0 means no limit, not a zero-sized cell.
        let side = match self.settings.max_size {
            0 => SHEET_CELL,
            max => max.min(SHEET_CELL),
        };
        let cell = images::limit_size(picture.clone(), side).to_rgb8();
        let mut cells = vec![cell.clone()];
        for index in 0..names.len() {
            let norms = self.net.norms(&Style::Mix(StyleMix::single(index).weights(names.len())))?;
            cells.push(self.stylize_rgb(&cell, &norms)?);
        }
        let size = cell.dimensions();
        Ok((DynamicImage::ImageRgb8(sheet::compose(&cells)), size))
    }

    fn sheet_json(&self) -> Value {
        let Mode::Builtin { names, .. } = &self.mode else { return Value::Null };
        Value::Array(names.iter().enumerate().map(|(i, n)| json!({"index": i, "name": n})).collect())
    }
}

/// An input error's reason without the path (the caller names the option instead).
fn reason_of(e: Error) -> String {
    match e {
        Error::Input { reason, .. } => reason,
        other => other.to_string(),
    }
}

impl Runner for Stylizer {
    /// One picture at a time (they differ in size); but a single output file takes every input at
    /// once, so that several inputs are refused before anything is written.
    fn batch_size(&self) -> usize {
        match self.settings.destination {
            Destination::Dir(_) | Destination::Memory => 1,
            Destination::File(_) | Destination::Sheet(_) => usize::MAX,
        }
    }

    fn read_limit(&self) -> zoo_runtime::ReadLimit {
        image_io::read_limit(self.settings.max_pixels)
    }

    fn run(&mut self, batch: &[Input]) -> Vec<PredictionResult> {
        if batch.len() > 1 && !matches!(self.settings.destination, Destination::Dir(_) | Destination::Memory) {
            let option =
                if matches!(self.settings.destination, Destination::Sheet(_)) { "--contact-sheet" } else { "--output" };
            return batch
                .iter()
                .map(|_| {
                    Err(Error::Usage(format!(
                        "{} inputs but one {option} file; use --output-dir DIR for several inputs",
                        batch.len()
                    )))
                })
                .collect();
        }
        batch.iter().map(|input| self.process(input).map(|s| Box::new(s) as Box<dyn Prediction>)).collect()
    }
}

/// Where a styled picture went.
enum Kept {
    Written(PathBuf),
    InMemory { picture: DynamicImage, name: String, quality: u8 },
}

/// What was made for one input.
pub struct Styled {
    kept: Kept,
    style: Value,
    /// A contact sheet's grid, so that its cells can be cut out: columns, gap and cell size in pixels.
    cells: Option<Value>,
    model: String,
    width: u32,
    height: u32,
}

impl Prediction for Styled {
    fn json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        if let Kept::Written(path) = &self.kept {
            map.insert("output".into(), path.display().to_string().into());
        }
        map.insert("style".into(), self.style.clone());
        if let Some(cells) = &self.cells {
            map.insert("cells".into(), cells.clone());
        }
        // The default model hands a --style-image run to magenta-arbitrary: say which one ran.
        map.insert("model".into(), self.model.clone().into());
        map.insert("width".into(), self.width.into());
        map.insert("height".into(), self.height.into());
        map
    }

    fn human(&self) -> String {
        let style = match &self.style {
            Value::Array(parts) if parts.iter().all(|p| p.get("weight").is_some()) => parts
                .iter()
                .map(|p| {
                    format!(
                        "{} {} ({:.0}%)",
                        p["index"],
                        p["name"].as_str().unwrap_or(""),
                        p["weight"].as_f64().unwrap_or(0.0) * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join(" + "),
            Value::Array(parts) => format!("all {} styles", parts.len()),
            Value::Object(o) => format!(
                "the style of {} at strength {:.2}",
                o["image"].as_str().unwrap_or(""),
                o["strength"].as_f64().unwrap_or(1.0)
            ),
            other => other.as_str().unwrap_or("").to_string(),
        };
        let what = match &self.kept {
            Kept::Written(path) => format!("wrote {}", path.display()),
            Kept::InMemory { .. } => "styled".to_string(),
        };
        format!("{what} ({}x{}, {style}, model {})", self.width, self.height, self.model)
    }

    fn image(&self, format: ImageFormat) -> Option<Result<Vec<u8>>> {
        let Kept::InMemory { picture, name, quality } = &self.kept else { return None };
        let format = match format {
            ImageFormat::Png => Format::Png,
            ImageFormat::Jpeg => Format::Jpeg,
        };
        Some(images::encode(picture, format, *quality, std::path::Path::new(name)))
    }
}
