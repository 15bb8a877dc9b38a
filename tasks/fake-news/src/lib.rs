//! zoo task: fake-news classification.
//!
//! The default model is a sentence encoder (all-MiniLM-L6-v2, from the Hub at a pinned commit)
//! under a small MLP head that zoo trains itself (`zoo train fake-news`) and
//! bundles. `--model` also takes the Hub's fine-tuned Transformers classifiers (BERT, DistilBERT,
//! RoBERTa, XLM-R: [`hub`]). Texts longer than the model's window are split into overlapping
//! windows; a text's label probabilities are the windows' probabilities averaged, weighted by
//! their token counts.

pub mod cpu;
pub mod encoder;
pub mod explain;
pub mod head;
pub mod hub;
pub mod kernels;
pub mod table;
pub mod windows;

use std::collections::BTreeMap;
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
        help: "Labelled validation data, for early stopping and the report",
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
    TaskOption { name: "learning-rate", value_name: Some("LR"), help: "AdamW learning rate", default: Some("0.05") },
    TaskOption {
        name: "weight-decay",
        value_name: Some("W"),
        help: "AdamW weight decay (regularisation)",
        default: Some("0.0001"),
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
        help: "Train a one-hidden-layer MLP (ReLU) of this many units instead of logistic regression (0)",
        default: Some("0"),
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
        "Tell fake from real news texts (COVID-19 claims by default); train your own head, or run a Hub BERT/RoBERTa classifier"
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
    Head { encoder: Box<SentenceEncoder>, head: Head },
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
        let encoder = load_encoder(&head.info.encoder, ctx)?;
        if encoder.dim != head.dim() {
            return Err(Error::model(
                &model.id,
                format!("the head takes {} features, the encoder gives {}", head.dim(), encoder.dim),
            ));
        }
        Ok(Classifier { network: Network::Head { encoder: Box::new(encoder), head } })
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

    fn window_probabilities(&self, windows: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        match &self.network {
            Network::Head { encoder, head } => {
                let e = encoder.embed(windows)?;
                let x = Tensor::from_vec(
                    e.into_iter().flatten().collect::<Vec<_>>(),
                    (windows.len(), encoder.dim),
                    &Device::Cpu,
                )?;
                head.probabilities(&x)
            }
            Network::Hub(hub) => hub.probabilities(windows),
        }
    }

    /// Label probabilities for each text, and how many windows it took.
    pub fn classify(&self, texts: &[&str], batch_size: usize) -> Vec<std::result::Result<(Vec<f32>, usize), String>> {
        let windows: Vec<std::result::Result<Windows, String>> = texts.iter().map(|t| self.windows(t)).collect();
        let flat: Vec<&[u32]> = windows.iter().flatten().flat_map(|w| w.0.iter().map(Vec::as_slice)).collect();
        let mut probs = Vec::with_capacity(flat.len());
        for chunk in flat.chunks(batch_size) {
            match self.window_probabilities(chunk) {
                Ok(p) => probs.extend(p),
                Err(e) => return texts.iter().map(|_| Err(format!("classification failed: {e}"))).collect(),
            }
        }
        let mut next = probs.into_iter();
        windows
            .into_iter()
            .map(|w| {
                let w = w?;
                let mut total = vec![0f32; self.labels().len()];
                let mut weight = 0f32;
                for window in &w.0 {
                    let p = next.next().expect("one probability row per window");
                    let tokens = window.len() as f32;
                    total.iter_mut().zip(&p).for_each(|(t, p)| *t += p * tokens);
                    weight += tokens;
                }
                total.iter_mut().for_each(|t| *t /= weight);
                Ok((total, w.0.len()))
            })
            .collect()
    }
}

fn load_encoder(reference: &str, ctx: &Context) -> Result<SentenceEncoder> {
    let model = Model::resolve(&ModelRef::parse(reference)?, &ctx.hub);
    SentenceEncoder::load(&model, &ctx.device)
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
                let (scores, windows) = results
                    .next()
                    .expect("one result per text")
                    .map_err(|reason| Error::input(input.path(), reason))?;
                let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
                let explanation = self
                    .explain
                    .then(|| explain::attribute(&self.classifier, &text, best, scores[best], self.batch_size))
                    .map(|attribution| (text, attribution));
                Ok(Box::new(Verdict {
                    label: labels[best].clone(),
                    scores: labels.iter().cloned().zip(scores).collect(),
                    windows,
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
    /// With `--explain`: the text and its words' scores.
    pub explanation: Option<(String, explain::Attribution)>,
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
        if let Some((_, attribution)) = &self.explanation {
            map.insert(zoo_runtime::explain::JSON_FIELD.into(), json!(attribution));
        }
        map
    }

    fn human(&self) -> String {
        let scores: Vec<String> = self.scores.iter().map(|(l, p)| format!("{l} {:.1}%", p * 100.0)).collect();
        let windows = if self.windows > 1 { format!(" ({} windows)", self.windows) } else { String::new() };
        let mut text = format!("{}  [{}]{windows}", self.label, scores.join(", "));
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

impl Prediction for TrainReport {
    fn json(&self) -> Map<String, Value> {
        self.0.as_object().cloned().unwrap_or_default()
    }

    fn human(&self) -> String {
        let r = &self.0;
        let mut text = format!(
            "wrote {} (labels {}, {} training windows, best epoch {} of {})\ntrain: accuracy {:.4}, macro-F1 {:.4}",
            r["out"].as_str().unwrap_or_default(),
            r["labels"],
            r["examples"],
            r["best_epoch"],
            r["epochs_run"],
            r["train"]["accuracy"].as_f64().unwrap_or_default(),
            r["train"]["macro_f1"].as_f64().unwrap_or_default()
        );
        if let Some(val) = r.get("val").filter(|v| !v.is_null()) {
            text.push_str(&format!(
                "\nval:   accuracy {:.4}, macro-F1 {:.4}",
                val["accuracy"].as_f64().unwrap_or_default(),
                val["macro_f1"].as_f64().unwrap_or_default()
            ));
        }
        text
    }
}

fn required<'a>(args: &'a TaskArgs, name: &str) -> Result<&'a str> {
    args.value(name).ok_or_else(|| Error::Usage(format!("--{name} is required")))
}

/// Embeds every row's windows; each window is one training example carrying its row's label.
fn embed_rows(
    encoder: &SentenceEncoder,
    rows: &[table::Row],
    labels: &[String],
    path: &Path,
    what: &str,
) -> Result<(Tensor, Vec<usize>)> {
    let mut windows = Vec::new();
    let mut targets = Vec::new();
    for row in rows {
        let label = row.label.as_deref().unwrap_or_default();
        let Some(index) = labels.iter().position(|l| l == label) else {
            return Err(Error::input(
                path,
                format!("row {}: label '{label}' is not one of the training labels {labels:?}", row.number),
            ));
        };
        let w =
            encoder.windows(&row.text).map_err(|reason| Error::input(path, format!("row {}: {reason}", row.number)))?;
        for window in w.0 {
            windows.push(window);
            targets.push(index);
        }
    }
    let bar = progress::items(windows.len() as u64, what, true);
    let mut embeddings = Vec::with_capacity(windows.len() * encoder.dim);
    for chunk in windows.chunks(64) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        embeddings.extend(encoder.embed(&refs)?.into_iter().flatten());
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((Tensor::from_vec(embeddings, (targets.len(), encoder.dim), &Device::Cpu)?, targets))
}

fn train(args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Prediction>> {
    let train_path = PathBuf::from(required(args, "train")?);
    let out = PathBuf::from(required(args, "out")?);
    let text_column = args.value("text-column").unwrap_or("text");
    let label_column = args.value("label-column").unwrap_or("label");
    let limit: Option<usize> = args.parse("limit")?;
    let settings = TrainSettings {
        epochs: args.parse("epochs")?.unwrap_or(2000),
        learning_rate: args.parse("learning-rate")?.unwrap_or(0.05),
        weight_decay: args.parse("weight-decay")?.unwrap_or(1e-4),
        patience: args.parse("patience")?.unwrap_or(100),
        hidden: args.parse("hidden")?.unwrap_or(0),
        seed: args.parse("seed")?.unwrap_or(0),
    };
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
    let force = args.flag("force");
    for file in ["head.safetensors", "head.json"] {
        if out.join(file).exists() && !force {
            return Err(Error::input(out.join(file), "already exists (use --force to overwrite it)"));
        }
    }
    let take = |mut rows: Vec<table::Row>| {
        if let Some(n) = limit {
            rows.truncate(n);
        }
        rows
    };
    let train_rows = take(table::read(&train_path, text_column, Some(label_column))?);
    if train_rows.is_empty() {
        return Err(Error::input(&train_path, "no rows"));
    }
    let mut labels: Vec<String> = train_rows.iter().filter_map(|r| r.label.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        return Err(Error::input(
            &train_path,
            format!("needs at least two labels in '{label_column}', found {labels:?}"),
        ));
    }
    let encoder_ref = args.value("encoder").unwrap_or(DEFAULT_ENCODER);
    let encoder = load_encoder(encoder_ref, ctx)?;
    let (x, y) = embed_rows(&encoder, &train_rows, &labels, &train_path, "encoding train")?;
    let val = match args.value("val") {
        Some(path) => {
            let path = PathBuf::from(path);
            let rows = take(table::read(&path, text_column, Some(label_column))?);
            if rows.is_empty() {
                return Err(Error::input(&path, "no rows"));
            }
            Some(embed_rows(&encoder, &rows, &labels, &path, "encoding val")?)
        }
        None => None,
    };
    let bar = progress::items(settings.epochs as u64, "training", true);
    let trained =
        head::train(&x, &y, val.as_ref().map(|(vx, vy)| (vx, vy.as_slice())), labels.len(), &settings, |_, _| {
            bar.inc(1)
        })?;
    bar.finish_and_clear();
    if trained.best_epoch == 0 {
        return Err(Error::Usage(
            "training did not improve on the untrained head (is the learning rate far too large?); nothing was written"
                .into(),
        ));
    }

    let training = json!({
        "train_file": train_path.display().to_string(),
        "val_file": args.value("val"),
        "text_column": text_column, "label_column": label_column, "limit": limit,
        "examples": y.len(), "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
        "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
        "hidden": settings.hidden, "seed": settings.seed,
        "train": trained.train, "val": trained.val,
    });
    let info = HeadInfo {
        labels: labels.clone(),
        encoder: encoder_ref.to_string(),
        window: WINDOW,
        overlap: OVERLAP,
        training: training.clone(),
    };
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let tensors = trained.tensors;
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
