//! zoo task: fake-news classification.
//!
//! The default model is a sentence encoder (all-MiniLM-L6-v2, from the Hub at a pinned commit)
//! under a small MLP head that zoo trains itself (`zoo train fake-news`) and
//! bundles. `--model` also takes the Hub's fine-tuned Transformers classifiers (BERT, DistilBERT,
//! RoBERTa, XLM-R: [`hub`]). Texts longer than the model's window are split into overlapping
//! windows; a text's label probabilities are the windows' probabilities averaged, weighted by
//! their token counts.

pub mod calibration;
pub mod cpu;
pub mod domain;
pub mod encoder;
pub mod explain;
pub mod finetune;
pub mod head;
pub mod hub;
pub mod kernels;
pub mod recipe;
pub mod table;
pub mod windows;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use zoo_runtime::{
    fsutil, progress, Context, Error, Explains, Input, InputSpec, Model, ModelRef, Prediction, PredictionResult,
    ReadLimit, Result, Runner, Task, TaskArgs, TaskOption,
};

use crate::encoder::{SentenceEncoder, OVERLAP, WINDOW};
use crate::head::{Head, HeadInfo, TrainSettings};
use crate::hub::HubClassifier;
use crate::windows::Windows;

pub struct FakeNews;

/// The next number of a SplitMix64 stream: seeded randomness that is the same on every machine,
/// which candle's CPU generator does not promise.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const RUN_OPTIONS: &[TaskOption] = &[
    TaskOption {
        name: "text",
        value_name: Some("TEXT"),
        help: "Classify this text (instead of, or as well as, files)",
        default: None,
    },
    TaskOption {
        name: "text-column",
        value_name: Some("COLUMN"),
        help: "Read the inputs as tables (.csv, .tsv, .jsonl) and classify this column of each row",
        default: None,
    },
    TaskOption { name: "batch-size", value_name: Some("N"), help: "Windows per forward pass", default: Some("32") },
    TaskOption {
        name: "max-text-mb",
        value_name: Some("MB"),
        help: "Refuse text files larger than this, before reading them (a long article is well under 1 MB)",
        default: Some("10"),
    },
];

const TRAIN_OPTIONS: &[TaskOption] = &[
    TaskOption {
        name: "train",
        value_name: Some("FILE"),
        help: "Labelled training data (.csv, .tsv, .jsonl)",
        default: None,
    },
    TaskOption {
        name: "val",
        value_name: Some("FILE"),
        help: "Labelled validation data, for early stopping, calibration, the domain's scale and the report",
        default: None,
    },
    TaskOption {
        name: "recipe",
        value_name: Some("TOML"),
        help: "Train on several sources at once instead of --train/--val: a file of [[source]] tables (name, train, val, text_column, label_column, columns, quoting, labels); see tasks/fake-news/recipes/",
        default: None,
    },
    TaskOption {
        name: "data-root",
        value_name: Some("DIR"),
        help: "The folder a recipe's paths are relative to, instead of the recipe's own root",
        default: None,
    },
    TaskOption {
        name: "weighting",
        value_name: Some("HOW"),
        help: "Each source's share of the loss: sqrt (of its rows), equal, or rows (every row the same)",
        default: Some("sqrt"),
    },
    TaskOption {
        name: "balance-classes",
        value_name: None,
        help: "Split each source's share evenly over its labels, so a source that is mostly one label does not teach that label",
        default: None,
    },
    TaskOption {
        name: "text-column",
        value_name: Some("COLUMN"),
        help: "The column holding the text",
        default: Some("text"),
    },
    TaskOption {
        name: "label-column",
        value_name: Some("COLUMN"),
        help: "The column holding the label",
        default: Some("label"),
    },
    TaskOption {
        name: "out",
        value_name: Some("DIR"),
        help: "Folder to write the head into (a model folder for --model)",
        default: None,
    },
    TaskOption {
        name: "encoder",
        value_name: Some("MODEL"),
        help: "The sentence encoder to train on",
        default: Some(DEFAULT_ENCODER),
    },
    TaskOption {
        name: "epochs",
        value_name: Some("N"),
        help: "At most this many passes over the data",
        default: Some("2000"),
    },
    TaskOption { name: "learning-rate", value_name: Some("LR"), help: "AdamW learning rate", default: Some("0.005") },
    TaskOption {
        name: "weight-decay",
        value_name: Some("W"),
        help: "AdamW weight decay (regularisation)",
        default: Some("0.001"),
    },
    TaskOption {
        name: "patience",
        value_name: Some("N"),
        help: "Stop after this many epochs without a better validation loss",
        default: Some("100"),
    },
    TaskOption {
        name: "hidden",
        value_name: Some("UNITS"),
        help: "Units of the head's hidden layer (ReLU); 0 trains logistic regression",
        default: Some("256"),
    },
    TaskOption {
        name: "seed",
        value_name: Some("N"),
        help: "Seed of an MLP's initial weights (the same seed, data and settings give the same head)",
        default: Some("0"),
    },
    TaskOption {
        name: "limit",
        value_name: Some("N"),
        help: "Use only the first N rows of each file (quick runs)",
        default: None,
    },
    TaskOption {
        name: "warn-percentile",
        value_name: Some("PCT"),
        help: "Warn on texts farther from the training data than this percentile of the val texts",
        default: Some("99"),
    },
    TaskOption {
        name: "embedding-cache",
        value_name: Some("DIR"),
        help: "Keep the encoder's output for each file here, so that a second run with other settings skips encoding",
        default: None,
    },
    TaskOption {
        name: "fine-tune",
        value_name: Some("LAYERS"),
        help: "Also train the encoder's top LAYERS layers with the head (2 is a good start; the lower layers stay frozen). Needs val data; the run checkpoints into <out>/.fine-tune and the same command resumes it after an interrupt",
        default: None,
    },
    TaskOption {
        name: "fine-tune-epochs",
        value_name: Some("N"),
        help: "At most this many passes over the data while fine-tuning (it stops when the val loss stops falling)",
        default: Some("3"),
    },
    TaskOption {
        name: "fine-tune-learning-rate",
        value_name: Some("LR"),
        help: "Peak learning rate of the encoder's layers while fine-tuning (the head's is 20 times it)",
        default: Some("0.00005"),
    },
    TaskOption {
        name: "calibrate",
        value_name: Some("MODEL"),
        help: "Instead of training a head: fit a temperature and a bias per label to a Transformers classifier (a Hub id or a folder) on --val, into --out, a folder that --model then runs calibrated",
        default: None,
    },
    TaskOption { name: "force", value_name: None, help: "Overwrite a head already in --out", default: None },
];

const DEFAULT_ENCODER: &str = "all-minilm-l6-v2";

impl Task for FakeNews {
    fn name(&self) -> &'static str {
        "fake-news"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["fake-news-detection", "text-classification"]
    }

    fn summary(&self) -> &'static str {
        "Tell fake from real news texts (claims, headlines, articles), with a warning on texts unlike the training data; train your own head, or run a Hub BERT/RoBERTa classifier"
    }

    fn warmup_input(&self) -> Option<Input> {
        Some(Input::text("warm-up", "A short text that runs the encoder and the head once."))
    }

    fn input(&self) -> InputSpec {
        InputSpec {
            description: "text files, - for stdin, or tables with --text-column (or give --text)",
            extensions: &["txt", "md"],
            stdin: true,
            required: false,
            kind: zoo_runtime::InputKind::Text,
        }
    }

    fn options(&self) -> &'static [TaskOption] {
        RUN_OPTIONS
    }

    fn examples(&self) -> &'static [&'static str] {
        &[
            "zoo run fake-news article.txt",
            "zoo run fake-news --text \"5G towers spread the coronavirus\"",
            "zoo run fake-news claims.csv --text-column tweet --json",
            "zoo run text-classification article.txt --model ./my-finetuned-bert   # a Transformers classifier",
            "zoo train fake-news --train train.csv --val val.csv --text-column tweet --out my-head",
            "zoo train fake-news --recipe tasks/fake-news/recipes/general.toml --out my-head   # several sources",
        ]
    }

    fn train_options(&self) -> &'static [TaskOption] {
        TRAIN_OPTIONS
    }

    fn explains(&self) -> Explains {
        Explains::Yes("each word's weight in the label, by deleting it (coloured on a terminal, [[marked]] when piped, scores in JSON)")
    }

    /// A request brings its texts, so `--text` and `--text-column` do not apply to it.
    fn request_options(&self) -> Vec<&'static TaskOption> {
        RUN_OPTIONS.iter().filter(|o| o.settable_per_request() && !matches!(o.name, "text" | "text-column")).collect()
    }

    fn expand_inputs(&self, raw: &[String], args: &TaskArgs, stdin_limit: ReadLimit) -> Result<Vec<Input>> {
        let mut inputs = Vec::new();
        if let Some(column) = args.value("text-column") {
            for path in raw {
                let rows = table::read(Path::new(path), column, None)?;
                inputs.extend(rows.into_iter().map(|r| Input::text(r.number.to_string(), r.text)));
            }
        } else {
            inputs = zoo_runtime::inputs::expand(raw, &self.input(), stdin_limit)?;
        }
        if let Some(text) = args.value("text") {
            inputs.push(Input::text("--text", text));
        }
        if inputs.is_empty() {
            return Err(Error::Usage("no text given: name text files, - for stdin, or use --text".into()));
        }
        Ok(inputs)
    }

    fn load(&self, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>> {
        let batch_size: usize = args.parse("batch-size")?.unwrap_or(32);
        if batch_size == 0 {
            return Err(Error::InvalidOption {
                option: "batch-size".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let max_text_bytes = (args.positive("max-text-mb", DEFAULT_MAX_TEXT_MB, "megabytes")? * 1e6) as u64;
        let classifier = Classifier::load(model, ctx)?;
        let explain = zoo_runtime::explain::Request::from_args(args).is_some();
        Ok(Box::new(ClassifierRunner { classifier, batch_size, explain, max_text_bytes }))
    }

    fn train(&self, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Prediction>> {
        train(args, ctx)
    }
}

/// What scores a window: an encoder and the head trained on it, or a Transformers classifier.
enum Network {
    Head { encoder: Box<SentenceEncoder>, head: Box<Head> },
    Hub(Box<HubClassifier>),
}

pub struct Classifier {
    network: Network,
}

impl Classifier {
    /// A folder with head.json is a head from `zoo train`; one with config.json a Transformers
    /// sequence classifier.
    pub fn load(model: &Model, ctx: &Context) -> Result<Self> {
        if model.optional_file("head.json")?.is_none() {
            if model.optional_file(hub::CALIBRATION)?.is_some() {
                let calibration: hub::Calibration = model.json(hub::CALIBRATION)?;
                if let Err(why) = calibration.scaling.check(calibration.labels.len()) {
                    return Err(Error::model(&model.id, format!("{}: {why}", hub::CALIBRATION)));
                }
                let inner = Model::resolve(&ModelRef::parse(&calibration.model)?, &ctx.hub);
                let mut hub = HubClassifier::load(&inner, &ctx.device)?;
                if hub.labels() != calibration.labels.as_slice() {
                    return Err(Error::model(
                        &model.id,
                        format!(
                            "calibrated for the labels {:?}, but {} has {:?}",
                            calibration.labels,
                            calibration.model,
                            hub.labels()
                        ),
                    ));
                }
                hub.calibrate(calibration.scaling);
                return Ok(Classifier { network: Network::Hub(Box::new(hub)) });
            }
            if model.optional_file("config.json")?.is_some() {
                let hub = HubClassifier::load(model, &ctx.device)?;
                return Ok(Classifier { network: Network::Hub(Box::new(hub)) });
            }
            return Err(Error::model(
                &model.id,
                "neither head.json (a classifier head, made by `zoo train fake-news`) nor config.json (a Transformers sequence classifier)",
            ));
        }
        let head = Head::load(model, &ctx.device)?;
        let replaced = match &head.info.encoder_tensors {
            Some(file) => {
                let bytes = model.file(file)?.bytes()?;
                let tensors = candle_core::safetensors::load_buffer(&bytes, &ctx.device)
                    .map_err(|e| Error::model(&model.id, format!("{file}: {e}")))?;
                Some(tensors)
            }
            None => None,
        };
        let encoder_model = Model::resolve(&ModelRef::parse(&head.info.encoder)?, &ctx.hub);
        let encoder = SentenceEncoder::load_tuned(&encoder_model, &ctx.device, replaced)?;
        if encoder.dim != head.dim() {
            return Err(Error::model(
                &model.id,
                format!("the head takes {} features, the encoder gives {}", head.dim(), encoder.dim),
            ));
        }
        Ok(Classifier { network: Network::Head { encoder: Box::new(encoder), head: Box::new(head) } })
    }

    pub fn labels(&self) -> &[String] {
        match &self.network {
            Network::Head { head, .. } => &head.info.labels,
            Network::Hub(hub) => hub.labels(),
        }
    }

    /// The Transformers classifier, when that is what this is.
    pub fn hub(&self) -> Option<&HubClassifier> {
        match &self.network {
            Network::Hub(hub) => Some(hub),
            Network::Head { .. } => None,
        }
    }

    /// The text's tokens as the model sees them, special tokens included, uncut.
    pub fn tokenize_plain(&self, text: &str) -> Vec<u32> {
        match &self.network {
            Network::Head { encoder, .. } => encoder.tokenize_plain(text),
            Network::Hub(hub) => hub.tokenize_plain(text),
        }
    }

    fn windows(&self, text: &str) -> std::result::Result<Windows, String> {
        match &self.network {
            Network::Head { encoder, .. } => encoder.windows(text),
            Network::Hub(hub) => hub.windows(text),
        }
    }

    /// Probabilities for each window, and each window's distance to the training data where the
    /// model knows it.
    fn window_scores(&self, windows: &[&[u32]]) -> candle_core::Result<WindowScores> {
        match &self.network {
            Network::Head { encoder, head } => {
                let e: Vec<f32> = encoder.embed(windows)?.into_iter().flatten().collect();
                let distances = head.distances(&e);
                let x = Tensor::from_vec(e, (windows.len(), encoder.dim), &Device::Cpu)?;
                Ok((head.probabilities(&x)?, distances))
            }
            Network::Hub(hub) => Ok((hub.probabilities(windows)?, None)),
        }
    }

    /// The training data's domain, for heads that zoo trained and that recorded it.
    pub fn domain(&self) -> Option<&domain::DomainInfo> {
        match &self.network {
            Network::Head { head, .. } => head.info.domain.as_ref(),
            Network::Hub(_) => None,
        }
    }

    /// Label probabilities for each text, how many windows it took and its distance to the
    /// training data.
    pub fn classify(&self, texts: &[&str], batch_size: usize) -> Vec<std::result::Result<Classified, String>> {
        let windows: Vec<std::result::Result<Windows, String>> = texts.iter().map(|t| self.windows(t)).collect();
        let flat: Vec<&[u32]> = windows.iter().flatten().flat_map(|w| w.0.iter().map(Vec::as_slice)).collect();
        let mut probs = Vec::with_capacity(flat.len());
        let mut distances = Vec::with_capacity(flat.len());
        for chunk in flat.chunks(batch_size) {
            match self.window_scores(chunk) {
                Ok((p, d)) => {
                    probs.extend(p);
                    distances.extend(d.unwrap_or_default());
                }
                Err(e) => return texts.iter().map(|_| Err(format!("classification failed: {e}"))).collect(),
            }
        }
        let known = distances.len() == probs.len();
        let mut at = 0;
        windows
            .into_iter()
            .map(|w| {
                let w = w?;
                let n = w.0.len();
                let tokens: Vec<usize> = w.0.iter().map(Vec::len).collect();
                let probabilities = pool_by_tokens(&probs[at..at + n], &tokens);
                let distance = known.then(|| {
                    let d: Vec<Vec<f32>> = distances[at..at + n].iter().map(|&d| vec![d]).collect();
                    pool_by_tokens(&d, &tokens)[0]
                });
                at += n;
                Ok(Classified { probabilities, windows: n, distance })
            })
            .collect()
    }
}

/// Each window's label probabilities, and its distance to the training data where that is known.
type WindowScores = (Vec<Vec<f32>>, Option<Vec<f32>>);

/// What [`Classifier::classify`] finds for one text.
#[derive(Debug, Clone)]
pub struct Classified {
    /// Label probabilities, in the order of [`Classifier::labels`].
    pub probabilities: Vec<f32>,
    pub windows: usize,
    /// Cosine distance of the text to the nearest training centroid (its windows' distances
    /// averaged by tokens), for heads that recorded their training data's domain.
    pub distance: Option<f32>,
}

/// The mean of a text's window rows, each weighted by its tokens: how a text's windows add up.
pub fn pool_by_tokens(rows: &[Vec<f32>], tokens: &[usize]) -> Vec<f32> {
    let mut total = vec![0f32; rows.first().map_or(0, Vec::len)];
    let mut weight = 0f32;
    for (row, &n) in rows.iter().zip(tokens) {
        total.iter_mut().zip(row).for_each(|(t, v)| *t += v * n as f32);
        weight += n as f32;
    }
    total.iter_mut().for_each(|t| *t /= weight);
    total
}

struct ClassifierRunner {
    classifier: Classifier,
    batch_size: usize,
    explain: bool,
    max_text_bytes: u64,
}

fn text_limit(max_bytes: u64) -> ReadLimit {
    ReadLimit { max_bytes, raised_by: "--max-text-mb" }
}

/// The default of `--max-text-mb`.
const DEFAULT_MAX_TEXT_MB: f64 = 10.0;

/// Text from an input: UTF-8, not binary, not blank, at most `max_bytes` (a file's size is checked
/// before it is read).
fn read_text(input: &Input, max_bytes: u64) -> Result<String> {
    let bytes = input.read(text_limit(max_bytes))?;
    if bytes.contains(&0) {
        return Err(Error::input(input.path(), "looks like a binary file (it holds NUL bytes), not text"));
    }
    let text = String::from_utf8(bytes.into_owned()).map_err(|e| {
        Error::input(
            input.path(),
            format!("is not valid UTF-8 text (bad byte at offset {})", e.utf8_error().valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Error::input(input.path(), "the text is empty (only whitespace)"));
    }
    Ok(text)
}

impl Runner for ClassifierRunner {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn read_limit(&self) -> ReadLimit {
        text_limit(self.max_text_bytes)
    }

    fn run(&mut self, batch: &[Input]) -> Vec<PredictionResult> {
        let texts: Vec<Result<String>> = batch.iter().map(|input| read_text(input, self.max_text_bytes)).collect();
        let ok: Vec<&str> = texts.iter().filter_map(|t| t.as_deref().ok()).collect();
        let mut results = self.classifier.classify(&ok, self.batch_size).into_iter();
        let labels = self.classifier.labels();
        texts
            .into_iter()
            .zip(batch)
            .map(|(text, input)| {
                let text = text?;
                let Classified { probabilities: scores, windows, distance } = results
                    .next()
                    .expect("one result per text")
                    .map_err(|reason| Error::input(input.path(), reason))?;
                let domain = self.classifier.domain().zip(distance).map(|(info, distance)| {
                    let percentile = info.percentile(distance);
                    Domain { distance, percentile, in_domain: percentile <= info.warn_percentile }
                });
                let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
                let explanation = self
                    .explain
                    .then(|| explain::attribute(&self.classifier, &text, best, scores[best], self.batch_size))
                    .map(|attribution| (text, attribution));
                Ok(Box::new(Verdict {
                    label: labels[best].clone(),
                    scores: labels.iter().cloned().zip(scores).collect(),
                    windows,
                    domain,
                    explanation,
                }) as Box<dyn Prediction>)
            })
            .collect()
    }
}

/// The result for one text.
pub struct Verdict {
    pub label: String,
    pub scores: BTreeMap<String, f32>,
    pub windows: usize,
    /// How close the text is to the training data, for heads that recorded it.
    pub domain: Option<Domain>,
    /// With `--explain`: the text and its words' scores.
    pub explanation: Option<(String, explain::Attribution)>,
}

/// A text's place against the training data.
#[derive(Debug, Clone, Copy)]
pub struct Domain {
    /// Cosine distance to the nearest training centroid.
    pub distance: f32,
    /// Where that distance falls among the validation texts' (0-100).
    pub percentile: f32,
    /// Whether the percentile is within the head's threshold.
    pub in_domain: bool,
}

/// The warning on a text out of the training data's domain.
pub const OUT_OF_DOMAIN: &str = "unlike the texts this model was trained on; treat the label with care";

impl Verdict {
    pub fn warnings(&self) -> Vec<String> {
        match self.domain {
            Some(d) if !d.in_domain => vec![format!(
                "{OUT_OF_DOMAIN} (farther from the training data than {:.1}% of the validation texts)",
                d.percentile.min(99.9)
            )],
            _ => Vec::new(),
        }
    }
}

impl Prediction for Verdict {
    fn label(&self) -> Option<(String, f32)> {
        Some((self.label.clone(), self.scores.get(&self.label).copied().unwrap_or(0.0)))
    }

    fn json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("label".into(), self.label.clone().into());
        map.insert("scores".into(), json!(self.scores));
        map.insert("windows".into(), self.windows.into());
        if let Some(d) = self.domain {
            map.insert("in_domain".into(), d.in_domain.into());
            map.insert("domain_distance".into(), json!(d.distance));
            map.insert("domain_percentile".into(), json!(d.percentile));
        }
        map.insert("warnings".into(), json!(self.warnings()));
        if let Some((_, attribution)) = &self.explanation {
            map.insert(zoo_runtime::explain::JSON_FIELD.into(), json!(attribution));
        }
        map
    }

    fn human(&self) -> String {
        let scores: Vec<String> = self.scores.iter().map(|(l, p)| format!("{l} {:.1}%", p * 100.0)).collect();
        let windows = if self.windows > 1 { format!(" ({} windows)", self.windows) } else { String::new() };
        let mut text = format!("{}  [{}]{windows}", self.label, scores.join(", "));
        for warning in self.warnings() {
            text.push_str(&format!("\nwarning: {warning}"));
        }
        if let Some((input, attribution)) = &self.explanation {
            let color = zoo_runtime::explain::color();
            let how = if color { "the redder, the more" } else { "[[marked]]: the words that most" };
            text.push_str(&format!("\nwhy ({how} made it '{}'):\n", attribution.label));
            text.push_str(&zoo_runtime::explain::render_spans(input, &attribution.words, explain::MARKED, color));
            if attribution.total_words > attribution.words.len() {
                text.push_str(&format!(
                    "\n(only the first {} of {} words were explained)",
                    attribution.words.len(),
                    attribution.total_words
                ));
            }
        }
        text
    }
}

/// The report of `zoo train fake-news`.
struct TrainReport(Value);

fn fixed(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// A calibration's biases by label, for the reports.
fn labelled(labels: &[String], bias: &[f32]) -> Value {
    Value::Object(labels.iter().zip(bias).map(|(l, &b)| (l.clone(), json!(b))).collect())
}

/// ", bias fake +0.071 real -0.071" from a report's `bias` object; nothing when it has none.
fn bias_text(bias: &Value) -> String {
    let Some(bias) = bias.as_object().filter(|b| !b.is_empty()) else { return String::new() };
    let parts: Vec<String> =
        bias.iter().map(|(label, b)| format!("{label} {:+.3}", b.as_f64().unwrap_or_default())).collect();
    format!(", bias {}", parts.join(" "))
}

impl Prediction for TrainReport {
    fn json(&self) -> Map<String, Value> {
        self.0.as_object().cloned().unwrap_or_default()
    }

    fn human(&self) -> String {
        let r = &self.0;
        let mut text = format!(
            "wrote {} (labels {}, {} training windows, best epoch {} of {})\n",
            r["out"].as_str().unwrap_or_default(),
            r["labels"],
            r["examples"],
            r["best_epoch"],
            r["epochs_run"],
        );
        text.push_str(&format!(
            "{:<28} {:>6} {:>6}  {:>8} {:>8} {:>8} {:>8}\n",
            "source", "share", "texts", "train", "val", "val F1", "majority"
        ));
        for source in r["sources"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "{:<28} {:>6} {:>6}  {:>8} {:>8} {:>8} {:>8}\n",
                source["name"].as_str().unwrap_or_default(),
                fixed(&source["share"]),
                source["val"]["texts"].as_u64().map_or("-".into(), |n| n.to_string()),
                fixed(&source["train"]["accuracy"]),
                fixed(&source["val"]["accuracy"]),
                fixed(&source["val"]["macro_f1"]),
                fixed(&source["val"]["majority"]),
            ));
        }
        text.push_str(&format!(
            "{:<28} {:>6} {:>6}  {:>8} {:>8} {:>8}\n",
            "all texts",
            "",
            r["val"]["texts"].as_u64().map_or("-".into(), |n| n.to_string()),
            fixed(&r["train"]["accuracy"]),
            fixed(&r["val"]["accuracy"]),
            fixed(&r["val"]["macro_f1"]),
        ));
        let f = &r["fine_tune"];
        if !f.is_null() {
            let frozen = &r["frozen_val"];
            text.push_str(&format!(
                "fine-tuning {} layers: best epoch {} of {}; val accuracy {} with the frozen encoder; kept the {} one\n",
                f["layers"],
                f["best_epoch"],
                f["epochs_run"],
                fixed(&frozen["accuracy"]),
                f["kept"].as_str().unwrap_or_default(),
            ));
        }
        let c = &r["calibration"];
        if !c["temperature"].is_null() {
            text.push_str(&format!(
                "calibration: temperature {}{}, expected calibration error on val {} before, {} after\n",
                fixed(&c["temperature"]),
                bias_text(&c["bias"]),
                fixed(&c["ece_before"]),
                fixed(&c["ece_after"])
            ));
        }
        let d = &r["domain"];
        if !d["warned"].is_null() {
            text.push_str(&format!(
                "out-of-domain warning past the {}th percentile: {} of val texts warned, error rate {} warned against {} not\n",
                d["warn_percentile"],
                fixed(&d["warned"]),
                fixed(&d["error_warned"]),
                fixed(&d["error_unwarned"])
            ));
        }
        text.trim_end().to_string()
    }
}

fn required<'a>(args: &'a TaskArgs, name: &str) -> Result<&'a str> {
    args.value(name).ok_or_else(|| Error::Usage(format!("--{name} is required")))
}

/// A split's texts after the encoder: window embeddings (windows x dim, in text order), the
/// windows of each text and the tokens of each window.
struct Embedded {
    rows: Vec<f32>,
    windows: Vec<usize>,
    tokens: Vec<usize>,
}

impl Embedded {
    fn window_count(&self) -> usize {
        self.tokens.len()
    }
}

/// What the embedding cache is keyed by: the encoder, the windowing and every text.
fn cache_key(encoder_ref: &str, texts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(format!("{encoder_ref}\n{WINDOW}\n{OVERLAP}\n"));
    for text in texts {
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    }
    hash.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn read_cached(path: &Path, dim: usize, texts: usize) -> Option<Embedded> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    let rows: Vec<f32> = tensors.get("embeddings")?.flatten_all().ok()?.to_vec1().ok()?;
    let as_counts = |name: &str| -> Option<Vec<usize>> {
        Some(tensors.get(name)?.to_vec1::<u32>().ok()?.into_iter().map(|v| v as usize).collect())
    };
    let (windows, tokens) = (as_counts("windows")?, as_counts("tokens")?);
    let consistent =
        windows.len() == texts && windows.iter().sum::<usize>() == tokens.len() && rows.len() == tokens.len() * dim;
    consistent.then_some(Embedded { rows, windows, tokens })
}

/// Embeds every text's windows, or reads them from `cache` where an earlier run left them.
fn embed_texts(
    encoder: &SentenceEncoder,
    encoder_ref: &str,
    rows: &[table::Row],
    path: &Path,
    what: &str,
    cache: Option<&Path>,
) -> Result<Embedded> {
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let cached = cache.map(|dir| dir.join(format!("{}.safetensors", cache_key(encoder_ref, &texts))));
    if let Some(found) = cached.as_deref().and_then(|c| read_cached(c, encoder.dim, texts.len())) {
        return Ok(found);
    }
    let mut windows = Vec::new();
    let mut per_text = Vec::with_capacity(rows.len());
    for row in rows {
        let w =
            encoder.windows(&row.text).map_err(|reason| Error::input(path, format!("row {}: {reason}", row.number)))?;
        per_text.push(w.0.len());
        windows.extend(w.0);
    }
    let bar = progress::items(windows.len() as u64, what, true);
    let mut embeddings = Vec::with_capacity(windows.len() * encoder.dim);
    for chunk in windows.chunks(64) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        embeddings.extend(encoder.embed(&refs)?.into_iter().flatten());
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let embedded = Embedded { rows: embeddings, windows: per_text, tokens: windows.iter().map(Vec::len).collect() };
    if let (Some(file), Some(dir)) = (cached, cache) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let counts = |v: &[usize]| Tensor::new(v.iter().map(|&n| n as u32).collect::<Vec<_>>(), &Device::Cpu);
        let tensors = HashMap::from([
            (
                "embeddings".to_string(),
                Tensor::from_slice(&embedded.rows, (embedded.window_count(), encoder.dim), &Device::Cpu)?,
            ),
            ("windows".to_string(), counts(&embedded.windows)?),
            ("tokens".to_string(), counts(&embedded.tokens)?),
        ]);
        let tmp = file.with_extension("tmp");
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, &file).map_err(|e| Error::io(&file, e))?;
    }
    Ok(embedded)
}

/// The class of each row, by its (mapped) label.
fn classes_of(rows: &[table::Row], labels: &[String], path: &Path) -> Result<Vec<usize>> {
    rows.iter()
        .map(|row| {
            let label = row.label.as_deref().unwrap_or_default();
            labels.iter().position(|l| l == label).ok_or_else(|| {
                Error::input(
                    path,
                    format!("row {}: label '{label}' is not one of the training labels {labels:?}", row.number),
                )
            })
        })
        .collect()
}

/// Several sources' texts as one set of examples.
#[derive(Default)]
struct Split {
    rows: Vec<f32>,
    /// Per text: its class, its source, its windows.
    classes: Vec<usize>,
    sources: Vec<usize>,
    windows: Vec<usize>,
    /// Per window.
    tokens: Vec<usize>,
    /// The windows of each source, as a range of window indices.
    source_windows: Vec<(usize, std::ops::Range<usize>)>,
}

impl Split {
    fn add(&mut self, source: usize, embedded: Embedded, classes: Vec<usize>) {
        let start = self.tokens.len();
        self.rows.extend(embedded.rows);
        self.sources.extend(std::iter::repeat_n(source, classes.len()));
        self.classes.extend(classes);
        self.windows.extend(embedded.windows);
        self.tokens.extend(embedded.tokens);
        self.source_windows.push((source, start..self.tokens.len()));
    }

    fn window_classes(&self) -> Vec<usize> {
        self.classes.iter().zip(&self.windows).flat_map(|(&c, &n)| std::iter::repeat_n(c, n)).collect()
    }

    fn tensor(&self, dim: usize) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.rows, (self.tokens.len(), dim), &Device::Cpu)?)
    }

    /// Pools per-window rows into per-text rows, by tokens.
    fn per_text(&self, window_rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let mut at = 0;
        self.windows
            .iter()
            .map(|&n| {
                let pooled = pool_by_tokens(&window_rows[at..at + n], &self.tokens[at..at + n]);
                at += n;
                pooled
            })
            .collect()
    }
}

fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Accuracy, macro-F1, the majority class's accuracy and the share given each label, over texts.
fn text_scores(probabilities: &[Vec<f32>], truth: &[usize], labels: &[String]) -> Value {
    let predicted: Vec<usize> = probabilities.iter().map(|p| argmax(p)).collect();
    let s = head::score(&predicted, truth, labels.len());
    let share = |c: usize, of: &[usize]| of.iter().filter(|&&v| v == c).count() as f32 / of.len().max(1) as f32;
    let majority = (0..labels.len()).map(|c| share(c, truth)).fold(0f32, f32::max);
    let predicted_share: Map<String, Value> =
        labels.iter().enumerate().map(|(c, l)| (l.clone(), json!(share(c, &predicted)))).collect();
    json!({"texts": truth.len(), "accuracy": s.accuracy, "macro_f1": s.macro_f1, "majority": majority,
           "predicted": predicted_share})
}

/// The labelled data a run trains on: a recipe's sources, or `--train`/`--val` as one source.
fn training_sources(args: &TaskArgs) -> Result<Vec<recipe::SourceFiles>> {
    match (args.value("recipe"), args.value("train")) {
        (Some(_), Some(_)) => Err(Error::Usage("give --recipe or --train, not both".into())),
        (Some(path), None) => {
            if args.value("val").is_some() {
                return Err(Error::Usage("--val goes with --train; a recipe names each source's val file".into()));
            }
            recipe::parse(Path::new(path), args.value("data-root").map(Path::new))
        }
        (None, Some(train)) => {
            let train = PathBuf::from(train);
            Ok(vec![recipe::SourceFiles {
                name: train.file_stem().map_or_else(|| "train".into(), |s| s.to_string_lossy().into_owned()),
                val: args.value("val").map(PathBuf::from),
                train,
                text_column: args.value("text-column").unwrap_or("text").into(),
                label_column: args.value("label-column").unwrap_or("label").into(),
                layout: table::Layout::default(),
                labels: Default::default(),
            }])
        }
        (None, None) => Err(Error::Usage("--train (a labelled file) or --recipe (several) is required".into())),
    }
}

/// Centroids shared out over the sources when the head records its domain.
const DOMAIN_CENTROIDS: usize = 256;

fn train(args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Prediction>> {
    if let Some(model) = args.value("calibrate") {
        return calibrate(args, ctx, model);
    }
    let out = PathBuf::from(required(args, "out")?);
    let limit: Option<usize> = args.parse("limit")?;
    let settings = TrainSettings {
        epochs: args.parse("epochs")?.unwrap_or(2000),
        learning_rate: args.parse("learning-rate")?.unwrap_or(0.005),
        weight_decay: args.parse("weight-decay")?.unwrap_or(1e-3),
        patience: args.parse("patience")?.unwrap_or(100),
        hidden: args.parse("hidden")?.unwrap_or(256),
        seed: args.parse("seed")?.unwrap_or(0),
    };
    let weighting: recipe::Weighting = args.parse("weighting")?.unwrap_or(recipe::Weighting::Sqrt);
    let warn_percentile: f32 = args.parse("warn-percentile")?.unwrap_or(DEFAULT_WARN_PERCENTILE);
    if !(warn_percentile > 0.0 && warn_percentile <= 100.0) {
        return Err(Error::InvalidOption {
            option: "warn-percentile".into(),
            value: warn_percentile.to_string(),
            reason: "must be a percentile above 0 and at most 100".into(),
        });
    }
    if settings.epochs == 0 || settings.patience == 0 {
        return Err(Error::Usage("--epochs and --patience must be at least 1".into()));
    }
    for (name, value) in [("learning-rate", settings.learning_rate), ("weight-decay", settings.weight_decay)] {
        if !value.is_finite() || value < 0.0 || (name == "learning-rate" && value == 0.0) {
            return Err(Error::InvalidOption {
                option: name.into(),
                value: value.to_string(),
                reason: "must be a positive number".into(),
            });
        }
    }
    let fine_tune = fine_tune_settings(args)?;
    let force = args.flag("force");
    for file in ["head.safetensors", "head.json", TUNED_ENCODER] {
        if out.join(file).exists() && !force {
            return Err(Error::input(out.join(file), "already exists (use --force to overwrite it)"));
        }
    }
    let files = training_sources(args)?;
    if fine_tune.is_some() && files.iter().all(|f| f.val.is_none()) {
        return Err(Error::Usage("--fine-tune needs val data (--val, or val files in the recipe) to stop on".into()));
    }
    let sources: Vec<recipe::Source> = files.into_iter().map(|s| s.read(limit)).collect::<Result<_>>()?;
    let mut labels: Vec<String> = sources.iter().flat_map(|s| s.train.iter().filter_map(|r| r.label.clone())).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        let first = &sources[0].files;
        return Err(Error::input(
            &first.train,
            format!("needs at least two labels in '{}', found {labels:?}", first.label_column),
        ));
    }
    let encoder_ref = args.value("encoder").unwrap_or(DEFAULT_ENCODER);
    let encoder_model = Model::resolve(&ModelRef::parse(encoder_ref)?, &ctx.hub);
    let encoder = SentenceEncoder::load(&encoder_model, &ctx.device)?;
    let layers = encoder.config.num_hidden_layers;
    if let Some(f) = fine_tune.as_ref().filter(|f| f.layers > layers) {
        return Err(Error::InvalidOption {
            option: "fine-tune".into(),
            value: f.layers.to_string(),
            reason: format!("the encoder has {layers} layers"),
        });
    }
    // The windows' tokens, for fine-tuning: in the same order as the splits' rows.
    let (mut train_tokens, mut val_tokens) = (Vec::new(), Vec::new());
    let cache = args.value("embedding-cache").map(PathBuf::from);
    let (mut train_split, mut val_split) = (Split::default(), Split::default());
    for (i, source) in sources.iter().enumerate() {
        let f = &source.files;
        let classes = classes_of(&source.train, &labels, &f.train)?;
        let what = format!("encoding {} train", f.name);
        let embedded = embed_texts(&encoder, encoder_ref, &source.train, &f.train, &what, cache.as_deref())?;
        train_split.add(i, embedded, classes);
        if fine_tune.is_some() {
            train_tokens.extend(window_tokens(&encoder, &source.train, &f.train)?);
        }
        if let (Some(rows), Some(path)) = (&source.val, &f.val) {
            let classes = classes_of(rows, &labels, path)?;
            if fine_tune.is_some() {
                val_tokens.extend(window_tokens(&encoder, rows, path)?);
            }
            let what = format!("encoding {} val", f.name);
            val_split.add(i, embed_texts(&encoder, encoder_ref, rows, path, &what, cache.as_deref())?, classes);
        }
    }
    let shares = weighting.shares(&sources.iter().map(|s| s.train.len()).collect::<Vec<_>>());
    let dim = encoder.dim;
    let mut x = train_split.tensor(dim)?;
    let y = train_split.window_classes();
    let balance = args.flag("balance-classes");
    let weights_of = |split: &Split| {
        recipe::window_weights(&shares, &split.sources, balance.then_some(&split.classes[..]), &split.windows)
    };
    let weights = weights_of(&train_split);
    let has_val = !val_split.classes.is_empty();
    let (mut vx, vy) = (val_split.tensor(dim)?, val_split.window_classes());
    let val_weights = weights_of(&val_split);
    let bar = progress::items(settings.epochs as u64, "training", true);
    let trained = head::train(
        head::Examples { x: &x, y: &y, weights: &weights },
        has_val.then_some(head::Examples { x: &vx, y: &vy, weights: &val_weights }),
        labels.len(),
        &settings,
        |_, _| bar.inc(1),
    )?;
    bar.finish_and_clear();
    if trained.best_epoch == 0 {
        return Err(Error::Usage(
            "training did not improve on the untrained head (is the learning rate far too large?); nothing was written"
                .into(),
        ));
    }

    let mut head_tensors = trained.tensors;
    let mut tuned_encoder = HashMap::new();
    // Calibration's weights: every val text counts once, however many windows it has.
    let val_text_weights = per_text_weights(&val_split.windows);
    let mut frozen_val_text = None;
    let mut fine_tune_report = Value::Null;
    if let Some(settings) = &fine_tune {
        // Calibrated as the fine-tuned model will be, so the two are compared on the same terms.
        let frozen_logits: Vec<Vec<f32>> = head::logits(&head_tensors, &vx)?.to_vec2()?;
        let frozen_scaling = calibration::fit(&frozen_logits, &vy, &val_text_weights)
            .map_err(|why| Error::model(encoder_ref, format!("the frozen head on the val texts: {why}")))?;
        frozen_val_text = Some(val_split.per_text(&frozen_scaling.rows(&frozen_logits)));
        let base = encoder::tensors(&encoder_model, &Device::Cpu)?;
        let tuned = finetune::fine_tune(
            &base,
            &encoder.config,
            finetune::Windows { tokens: &train_tokens, classes: &y, weights: &weights },
            finetune::Windows { tokens: &val_tokens, classes: &vy, weights: &val_weights },
            &head_tensors,
            settings,
            Some(&out.join(FINE_TUNE_CHECKPOINTS)),
        )?
        .expect("a run without a step limit runs to its end");
        train_split.rows = tuned.train_embeddings;
        val_split.rows = tuned.val_embeddings;
        (x, vx) = (train_split.tensor(dim)?, val_split.tensor(dim)?);
        head_tensors = tuned.head;
        tuned_encoder = tuned.encoder;
        fine_tune_report = json!({
            "layers": settings.layers, "epochs_run": tuned.epochs_run, "best_epoch": tuned.best_epoch,
            "val_losses": tuned.val_losses, "steps": tuned.steps, "resumed": tuned.resumed,
            "learning_rate": settings.encoder_learning_rate, "head_learning_rate": settings.head_learning_rate,
            "batch_tokens": settings.batch_tokens,
            "kept": if tuned_encoder.is_empty() { "frozen" } else { "fine-tuned" },
            "frozen_calibration": {"temperature": frozen_scaling.temperature,
                                   "bias": labelled(&labels, &frozen_scaling.bias)},
        });
    }

    // Calibration: a temperature and a bias per class on the val windows, each text counting once.
    let train_logits: Vec<Vec<f32>> = head::logits(&head_tensors, &x)?.to_vec2()?;
    let val_logits: Vec<Vec<f32>> = if has_val { head::logits(&head_tensors, &vx)?.to_vec2()? } else { Vec::new() };
    let scaling = if has_val {
        calibration::fit(&val_logits, &vy, &val_text_weights)
            .map_err(|why| Error::model(encoder_ref, format!("the head on the val texts: {why}")))?
    } else {
        calibration::Scaling::identity()
    };
    let train_text = train_split.per_text(&scaling.rows(&train_logits));
    let val_raw = val_split.per_text(&calibration::Scaling::identity().rows(&val_logits));
    let val_text = val_split.per_text(&scaling.rows(&val_logits));
    let ece =
        |p: &[Vec<f32>], truth: &[usize]| calibration::expected_calibration_error(p, truth, calibration::ECE_BINS);

    // The domain: centroids of the training windows, and where the val texts fall from them.
    let ranges: Vec<std::ops::Range<usize>> = train_split.source_windows.iter().map(|(_, r)| r.clone()).collect();
    let centroids = domain::centroids_by_source(&train_split.rows, dim, &ranges, DOMAIN_CENTROIDS);
    let text_distances = |split: &Split| -> Vec<f32> {
        let d: Vec<Vec<f32>> = domain::distances(&centroids, &split.rows, dim).into_iter().map(|d| vec![d]).collect();
        split.per_text(&d).into_iter().map(|d| d[0]).collect()
    };
    // Without val texts the training texts set the scale, though they sit closer to their own centroids.
    let reference = if has_val { &val_split } else { &train_split };
    let reference_distances = text_distances(reference);
    let domain_info = domain::DomainInfo {
        centroids: centroids.len() / dim,
        quantiles: domain::quantiles(&reference_distances),
        warn_percentile,
    };
    let threshold = domain_info.threshold();
    let mut warned = (0usize, 0usize);
    let mut unwarned = (0usize, 0usize);
    if has_val {
        for ((d, p), &truth) in reference_distances.iter().zip(&val_text).zip(&val_split.classes) {
            let slot = if *d > threshold { &mut warned } else { &mut unwarned };
            slot.0 += 1;
            slot.1 += usize::from(argmax(p) != truth);
        }
    }
    let rate = |(n, wrong): (usize, usize)| (n > 0).then(|| wrong as f32 / n as f32);

    let pick = |split: &Split, rows: &[Vec<f32>], source: usize| -> (Vec<Vec<f32>>, Vec<usize>) {
        split
            .sources
            .iter()
            .zip(rows.iter().zip(&split.classes))
            .filter(|(&s, _)| s == source)
            .map(|(_, (p, &c))| (p.clone(), c))
            .unzip()
    };
    let per_source: Vec<Value> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (tp, tc) = pick(&train_split, &train_text, i);
            let val = s.val.as_ref().map(|_| {
                let (vp, vc) = pick(&val_split, &val_text, i);
                let mut v = text_scores(&vp, &vc, &labels);
                v["ece"] = json!(ece(&vp, &vc));
                if let Some(frozen) = &frozen_val_text {
                    let (fp, fc) = pick(&val_split, frozen, i);
                    v["frozen"] = text_scores(&fp, &fc, &labels);
                }
                v
            });
            json!({"name": s.files.name, "train_file": s.files.train.display().to_string(),
                   "val_file": s.files.val.as_ref().map(|p| p.display().to_string()),
                   "share": shares[i], "train": text_scores(&tp, &tc, &labels), "val": val})
        })
        .collect();
    let val_report = has_val.then(|| text_scores(&val_text, &val_split.classes, &labels));
    let training = json!({
        "sources": per_source,
        "weighting": weighting.name(),
        "balance_classes": balance,
        "limit": limit,
        "examples": y.len(), "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
        "best_loss": trained.best_loss,
        "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
        "hidden": settings.hidden, "seed": settings.seed,
        "train": text_scores(&train_text, &train_split.classes, &labels),
        "val": val_report,
        "frozen_val": frozen_val_text.as_ref().map(|p| text_scores(p, &val_split.classes, &labels)),
        "fine_tune": fine_tune_report,
        "calibration": if has_val {
            json!({"temperature": scaling.temperature, "bias": labelled(&labels, &scaling.bias), "bins": calibration::ECE_BINS,
                   "ece_before": ece(&val_raw, &val_split.classes), "ece_after": ece(&val_text, &val_split.classes)})
        } else {
            json!({"temperature": null, "note": "no val data: not calibrated"})
        },
        "domain": {"centroids": domain_info.centroids, "warn_percentile": warn_percentile, "threshold": threshold,
                   "warned": has_val.then(|| warned.0 as f32 / reference_distances.len().max(1) as f32),
                   "error_warned": rate(warned), "error_unwarned": rate(unwarned)},
    });
    let info = HeadInfo {
        labels: labels.clone(),
        encoder: encoder_ref.to_string(),
        window: WINDOW,
        overlap: OVERLAP,
        temperature: scaling.temperature,
        bias: scaling.bias.clone(),
        domain: Some(domain_info),
        encoder_tensors: (!tuned_encoder.is_empty()).then(|| TUNED_ENCODER.to_string()),
        training: training.clone(),
    };
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let tuned_path = out.join(TUNED_ENCODER);
    if tuned_encoder.is_empty() {
        // A stale file from an earlier run would be unused, and misleading beside this head.
        if tuned_path.exists() {
            std::fs::remove_file(&tuned_path).map_err(|e| Error::io(&tuned_path, e))?;
        }
    } else {
        let tmp = out.join(".encoder.safetensors.tmp");
        candle_core::safetensors::save(&tuned_encoder, &tmp)?;
        std::fs::rename(&tmp, &tuned_path).map_err(|e| Error::io(&tuned_path, e))?;
    }
    let mut tensors = head_tensors;
    let k = centroids.len() / dim;
    tensors.insert(head::CENTROIDS.into(), Tensor::from_vec(centroids, (k, dim), &Device::Cpu)?);
    // Written beside the final name and renamed, so an interrupted run leaves no half file.
    let tmp = out.join(".head.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, out.join("head.safetensors")).map_err(|e| Error::io(out.join("head.safetensors"), e))?;
    let info_json = serde_json::to_vec_pretty(&info).expect("head info serialises");
    fsutil::write_atomic(&out.join("head.json"), &info_json, true)?;

    let mut report = training;
    report["out"] = out.display().to_string().into();
    report["labels"] = json!(labels);
    Ok(Box::new(TrainReport(report)))
}

/// Each window's weight when every text counts once, given each text's number of windows.
fn per_text_weights(windows: &[usize]) -> Vec<f32> {
    windows.iter().flat_map(|&n| std::iter::repeat_n(1.0 / n as f32, n)).collect()
}

/// `--calibrate MODEL`: a temperature and biases for a Transformers classifier's logits, fitted on the val
/// windows (each text counting once) as for a trained head.
fn calibrate(args: &TaskArgs, ctx: &Context, reference: &str) -> Result<Box<dyn Prediction>> {
    let out = PathBuf::from(required(args, "out")?);
    for other in ["train", "recipe", "fine-tune"] {
        if args.value(other).is_some() {
            return Err(Error::Usage(format!("--calibrate fits its scaling on --val alone; drop --{other}")));
        }
    }
    let val_path = PathBuf::from(
        args.value("val").ok_or_else(|| Error::Usage("--calibrate needs --val, labelled texts to fit on".into()))?,
    );
    let file = out.join(hub::CALIBRATION);
    if file.exists() && !args.flag("force") {
        return Err(Error::input(&file, "already exists (use --force to overwrite it)"));
    }
    let model_ref = ModelRef::parse(reference)?;
    // A folder is recorded by its absolute path, so the calibrated folder runs from anywhere.
    let recorded = match &model_ref {
        ModelRef::Local(path) => std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?.display().to_string(),
        _ => reference.to_string(),
    };
    let model = Model::resolve(&model_ref, &ctx.hub);
    if model.optional_file("head.json")?.is_some() {
        return Err(Error::Usage(format!(
            "{reference} is a head zoo trained, calibrated when it was trained; --calibrate is for Transformers classifiers"
        )));
    }
    let classifier = HubClassifier::load(&model, &ctx.device)?;
    if classifier.multi_label() {
        return Err(Error::Usage(format!(
            "{reference} scores each label on its own (a sigmoid per label); --calibrate fits single-label classifiers"
        )));
    }
    let labels = classifier.labels().to_vec();
    let text_column = args.value("text-column").unwrap_or("text");
    let label_column = args.value("label-column").unwrap_or("label");
    let mut rows = table::read(&val_path, text_column, Some(label_column))?;
    if let Some(limit) = args.parse::<usize>("limit")? {
        rows.truncate(limit);
    }
    if rows.is_empty() {
        return Err(Error::input(&val_path, "no labelled rows to calibrate on"));
    }
    let classes = classes_of(&rows, &labels, &val_path)?;
    let tokens = window_tokens_with(&rows, &val_path, |t| classifier.windows(t))?;
    let per_text: Vec<usize> = tokens.iter().map(|(n, _)| *n).collect();
    let windows: Vec<Vec<u32>> = tokens.into_iter().flat_map(|(_, w)| w).collect();
    let bar = progress::items(windows.len() as u64, "calibrating", true);
    let mut logits = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(32) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        logits.extend(classifier.logits(&refs)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let window_classes: Vec<usize> =
        classes.iter().zip(&per_text).flat_map(|(&c, &n)| std::iter::repeat_n(c, n)).collect();
    let weights = per_text_weights(&per_text);
    let scaling = calibration::fit(&logits, &window_classes, &weights)
        .map_err(|why| Error::model(reference, format!("on {}: {why}", val_path.display())))?;
    let window_lengths: Vec<usize> = windows.iter().map(Vec::len).collect();
    let text_probabilities = |s: &calibration::Scaling| -> Vec<Vec<f32>> {
        let p = s.rows(&logits);
        let mut at = 0;
        per_text
            .iter()
            .map(|&n| {
                let pooled = pool_by_tokens(&p[at..at + n], &window_lengths[at..at + n]);
                at += n;
                pooled
            })
            .collect()
    };
    let (before, after) = (text_probabilities(&calibration::Scaling::identity()), text_probabilities(&scaling));
    let ece = |p: &[Vec<f32>]| calibration::expected_calibration_error(p, &classes, calibration::ECE_BINS);
    let report = json!({
        "val_file": val_path.display().to_string(), "limit": args.parse::<usize>("limit")?,
        "temperature": scaling.temperature, "bias": labelled(&labels, &scaling.bias), "bins": calibration::ECE_BINS,
        "ece_before": ece(&before), "ece_after": ece(&after),
        "val": text_scores(&after, &classes, &labels),
    });
    let calibration = hub::Calibration { model: recorded, labels, scaling, report: report.clone() };
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    fsutil::write_atomic(&file, &serde_json::to_vec_pretty(&calibration).expect("calibration serialises"), true)?;
    let mut report = report;
    report["out"] = out.display().to_string().into();
    report["model"] = calibration.model.into();
    Ok(Box::new(CalibrationReport(report)))
}

struct CalibrationReport(Value);

impl Prediction for CalibrationReport {
    fn json(&self) -> Map<String, Value> {
        self.0.as_object().cloned().unwrap_or_default()
    }

    fn human(&self) -> String {
        let r = &self.0;
        format!(
            "wrote {}/{}: temperature {}{} for {}; expected calibration error on {} val texts {} before, {} after (accuracy {})",
            r["out"].as_str().unwrap_or_default(),
            hub::CALIBRATION,
            fixed(&r["temperature"]),
            bias_text(&r["bias"]),
            r["model"].as_str().unwrap_or_default(),
            r["val"]["texts"],
            fixed(&r["ece_before"]),
            fixed(&r["ece_after"]),
            fixed(&r["val"]["accuracy"]),
        )
    }
}

/// The encoder layers `--fine-tune` trained, in the model folder beside the head.
const TUNED_ENCODER: &str = "encoder.safetensors";
/// Where `--fine-tune` keeps its checkpoint, inside `--out`.
const FINE_TUNE_CHECKPOINTS: &str = ".fine-tune";

fn fine_tune_settings(args: &TaskArgs) -> Result<Option<finetune::Settings>> {
    let Some(layers) = args.parse::<usize>("fine-tune")? else { return Ok(None) };
    let learning_rate: f64 = args.parse("fine-tune-learning-rate")?.unwrap_or(5e-5);
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return Err(Error::InvalidOption {
            option: "fine-tune-learning-rate".into(),
            value: learning_rate.to_string(),
            reason: "must be a positive number".into(),
        });
    }
    let epochs: usize = args.parse("fine-tune-epochs")?.unwrap_or(3);
    if epochs == 0 || layers == 0 {
        return Err(Error::Usage("--fine-tune and --fine-tune-epochs must be at least 1".into()));
    }
    Ok(Some(finetune::Settings {
        layers,
        epochs,
        patience: 1,
        encoder_learning_rate: learning_rate,
        head_learning_rate: 20.0 * learning_rate,
        weight_decay: 0.01,
        batch_tokens: 2048,
        seed: args.parse("seed")?.unwrap_or(0),
        checkpoint_every: 50,
        max_steps: None,
    }))
}

/// Every text's windows, one after another, as the encoder sees them.
fn window_tokens(encoder: &SentenceEncoder, rows: &[table::Row], path: &Path) -> Result<Vec<Vec<u32>>> {
    Ok(window_tokens_with(rows, path, |t| encoder.windows(t))?.into_iter().flat_map(|(_, w)| w).collect())
}

/// Each text's window count and windows, by `windows`.
fn window_tokens_with(
    rows: &[table::Row],
    path: &Path,
    windows: impl Fn(&str) -> std::result::Result<Windows, String>,
) -> Result<Vec<(usize, Vec<Vec<u32>>)>> {
    rows.iter()
        .map(|row| {
            let w = windows(&row.text).map_err(|reason| Error::input(path, format!("row {}: {reason}", row.number)))?;
            Ok((w.0.len(), w.0))
        })
        .collect()
}

/// The default of `--warn-percentile`.
const DEFAULT_WARN_PERCENTILE: f32 = 99.0;
