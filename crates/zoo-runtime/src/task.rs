//! The contract between zoo and a task plugin.
//!
//! A task is a unit struct implementing [`Task`]: it names itself, describes its inputs and
//! options, and loads a [`Runner`] from a resolved [`Model`]. The runner turns batches of
//! [`Input`]s into [`Prediction`]s, which render for people and as JSON. The CLI knows nothing
//! task-specific: everything it shows or parses comes through these traits.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;

use crate::catalog::{Catalog, CatalogEntry};
use crate::error::{Error, Result};
use crate::explain::Explains;
use crate::hub::HubSettings;
use crate::model::Model;

/// What a task reads, for `--help`, for expanding folders into files, and for stdin.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    /// Shown in help, e.g. "image files (JPEG, PNG, WebP, BMP, GIF), folders or globs".
    pub description: &'static str,
    /// Lower-case extensions picked from folders and globs.
    pub extensions: &'static [&'static str],
    /// Whether `-` reads the input from stdin.
    pub stdin: bool,
    /// Whether at least one input must be named (a task may take its input from an option too).
    pub required: bool,
    /// What one input is, for doors that must say (a protocol's tensor, a page's widget).
    pub kind: InputKind,
}

/// What one input of a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A picture file's bytes.
    Image,
    /// A recording file's bytes.
    Audio,
    /// UTF-8 text.
    Text,
}

impl InputKind {
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Image => "image",
            InputKind::Audio => "audio",
            InputKind::Text => "text",
        }
    }
}

/// A task-specific command-line option, e.g. `--top-k N`.
#[derive(Debug, Clone, Copy)]
pub struct TaskOption {
    /// The long name without dashes.
    pub name: &'static str,
    /// `Some("N")` for an option taking a value; `None` for a flag.
    pub value_name: Option<&'static str>,
    pub help: &'static str,
    pub default: Option<&'static str>,
}

impl TaskOption {
    /// Whether a request to a server may set this option (see [`Task::request_options`]): not when
    /// it names a path on the server's machine (a `FILE` or `DIR` value) or sets a limit or a
    /// resource (`max-*`, `batch-size`, `threads`), which are the operator's to choose.
    pub fn settable_per_request(&self) -> bool {
        !matches!(self.value_name, Some("FILE" | "DIR"))
            && !self.name.starts_with("max-")
            && !matches!(self.name, "batch-size" | "threads")
    }
}

/// Values of a task's options as given on the command line (defaults filled in by the caller).
#[derive(Debug, Clone, Default)]
pub struct TaskArgs {
    values: HashMap<String, String>,
    /// Files given as bytes rather than paths (a server's uploads), by option name; the value of
    /// the option is then the upload's file name, for messages and outputs.
    attached: HashMap<String, Input>,
}

impl TaskArgs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.to_string(), value.into());
        self
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|v| v == "true")
    }

    /// Gives a file option its content: `input` is read where the option's path would be, and
    /// named by its own name (an upload's file name).
    pub fn attach(&mut self, name: &str, input: Input) -> &mut Self {
        self.values.insert(name.to_string(), input.name.clone());
        self.attached.insert(name.to_string(), input);
        self
    }

    /// A file option as an input: its attached bytes, else the file its value names.
    pub fn input(&self, name: &str) -> Option<Input> {
        self.attached.get(name).cloned().or_else(|| self.value(name).map(Input::file))
    }

    /// The values, sorted by name: one text per distinct set of options (attached files count by
    /// their content, so two uploads of one name differ).
    pub fn canonical(&self) -> String {
        use sha2::Digest;
        let mut pairs: Vec<(&String, String)> = self
            .values
            .iter()
            .map(|(k, v)| match self.attached.get(k).map(|input| &input.source) {
                Some(InputSource::Bytes(bytes) | InputSource::Stdin(bytes)) => {
                    (k, format!("{v}@sha256:{:x}", sha2::Sha256::digest(bytes)))
                }
                _ => (k, v.clone()),
            })
            .collect();
        pairs.sort();
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\u{1f}")
    }

    /// These values, with `other`'s on top.
    pub fn merged(&self, other: &TaskArgs) -> TaskArgs {
        let mut merged = self.clone();
        for (name, value) in &other.values {
            merged.values.insert(name.clone(), value.clone());
            match other.attached.get(name) {
                Some(input) => merged.attached.insert(name.clone(), input.clone()),
                None => merged.attached.remove(name),
            };
        }
        merged
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Parses an option's value; a value that does not parse is a usage error naming the option.
    pub fn parse<T: FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        let Some(raw) = self.value(name) else { return Ok(None) };
        raw.parse().map(Some).map_err(|e: T::Err| Error::InvalidOption {
            option: name.to_string(),
            value: raw.to_string(),
            reason: e.to_string(),
        })
    }

    /// A limit given as a number of `unit`s: the option's value or `default`; anything but a finite
    /// number above zero is a usage error naming the option.
    pub fn positive(&self, name: &str, default: f64, unit: &str) -> Result<f64> {
        let value: f64 = self.parse(name)?.unwrap_or(default);
        if !(value.is_finite() && value > 0.0) {
            return Err(Error::InvalidOption {
                option: name.into(),
                value: value.to_string(),
                reason: format!("must be a positive number of {unit}"),
            });
        }
        Ok(value)
    }
}

/// One input of a run: a file, bytes read from stdin or uploaded, or text.
#[derive(Debug, Clone)]
pub struct Input {
    /// What outputs call it: the path as given, or `-`.
    pub name: String,
    pub source: InputSource,
}

#[derive(Debug, Clone)]
pub enum InputSource {
    File(PathBuf),
    Stdin(std::sync::Arc<[u8]>),
    /// Bytes that arrived with a name (an upload): read and refused as a file of that name would be.
    Bytes(std::sync::Arc<[u8]>),
    /// Text given directly: a `--text` option or a row of a table.
    Text(String),
}

impl Input {
    pub fn file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Input { name: path.display().to_string(), source: InputSource::File(path) }
    }

    pub fn text(name: impl Into<String>, text: impl Into<String>) -> Self {
        Input { name: name.into(), source: InputSource::Text(text.into()) }
    }

    /// Bytes named as their sender named them (an upload's file name); errors name it.
    pub fn bytes(name: impl Into<String>, bytes: impl Into<std::sync::Arc<[u8]>>) -> Self {
        Input { name: name.into(), source: InputSource::Bytes(bytes.into()) }
    }

    /// The path errors name (`-` for stdin, the input's name for text).
    pub fn path(&self) -> &Path {
        match &self.source {
            InputSource::File(path) => path,
            InputSource::Stdin(_) => Path::new("-"),
            InputSource::Text(_) | InputSource::Bytes(_) => Path::new(&self.name),
        }
    }

    /// The whole input, refused without reading it past `limit`. Files are read once, here; a
    /// missing or unreadable file is an error naming it.
    pub fn read(&self, limit: ReadLimit) -> Result<Cow<'_, [u8]>> {
        match &self.source {
            InputSource::Stdin(bytes) => {
                if bytes.len() as u64 > limit.max_bytes {
                    return Err(limit.exceeded(self.path(), None));
                }
                Ok(Cow::Borrowed(bytes))
            }
            InputSource::Bytes(bytes) => {
                if bytes.len() as u64 > limit.max_bytes {
                    return Err(limit.exceeded(self.path(), Some(bytes.len() as u64)));
                }
                if bytes.is_empty() {
                    return Err(Error::input(self.path(), "the file is empty"));
                }
                Ok(Cow::Borrowed(bytes))
            }
            InputSource::Text(text) => {
                if text.len() as u64 > limit.max_bytes {
                    return Err(limit.exceeded(self.path(), Some(text.len() as u64)));
                }
                Ok(Cow::Borrowed(text.as_bytes()))
            }
            InputSource::File(path) => {
                let bytes = read_file(path, limit)?;
                if bytes.is_empty() {
                    return Err(Error::input(path, "the file is empty"));
                }
                Ok(Cow::Owned(bytes))
            }
        }
    }
}

fn read_file(path: &Path, limit: ReadLimit) -> Result<Vec<u8>> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::IsADirectory => "is a folder, not a file".to_string(),
            _ => e.to_string(),
        };
        Error::input(path, reason)
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    if size > limit.max_bytes {
        return Err(limit.exceeded(path, Some(size)));
    }
    // The size is only a hint: devices and pipes report 0 and may never end, so the read itself
    // stops one byte past the limit.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit.max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > limit.max_bytes {
        return Err(limit.exceeded(path, None));
    }
    Ok(bytes)
}

/// The most bytes zoo reads from one input, file or stdin. Each task derives it from the limit
/// its users know (pixels, duration, text size), so that one flag raises both; a larger input is
/// refused before it fills memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    pub max_bytes: u64,
    /// The flag that raises it, named in the error; empty when none does.
    pub raised_by: &'static str,
}

impl ReadLimit {
    /// For runners that do not say: 1 GiB.
    pub const DEFAULT: ReadLimit = ReadLimit { max_bytes: 1 << 30, raised_by: "" };

    /// The error for an input over the limit; `size` when it is known without reading it all.
    pub fn exceeded(&self, path: &Path, size: Option<u64>) -> Error {
        let limit = human_size(self.max_bytes);
        let what = match size {
            Some(size) => format!("the input is {}, over the limit of {limit}", human_size(size)),
            None => format!("the input holds more than the limit of {limit}"),
        };
        let raise =
            if self.raised_by.is_empty() { String::new() } else { format!(" (raise it with {})", self.raised_by) };
        Error::input(path, format!("{what}{raise}"))
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} bytes"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.1} GB", bytes as f64 / 1e9),
    }
}

/// What every task's loader gets besides the model.
#[derive(Debug, Clone)]
pub struct Context {
    pub device: Device,
    pub hub: HubSettings,
    /// Whether progress bars may be drawn (they are, only on a terminal).
    pub progress: bool,
    /// Where results that are files (a styled picture, subtitles) go.
    pub outputs: Outputs,
}

/// Where a task puts results that are files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outputs {
    /// Where the options say (`--output`, `--output-dir`): the command line.
    #[default]
    Files,
    /// Kept in the prediction (see [`Prediction::image`]) and never written: a server, which must
    /// not write where a request says, and options naming paths are refused there anyway.
    Memory,
}

/// How [`Prediction::image`] encodes a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }
}

/// The result for one input, as the task chooses to show it.
pub trait Prediction: Send {
    /// Fields of the input's JSON object; the caller adds `input` and `model`.
    fn json(&self) -> serde_json::Map<String, serde_json::Value>;
    /// Lines for a person, without the input's name (the caller prints that).
    fn human(&self) -> String;
    /// A document of its own (subtitles, a transcript file) that the caller prints verbatim
    /// instead of the name-and-lines layout, when the user asked for one.
    fn document(&self) -> Option<String> {
        None
    }
    /// What the user should know about this result that did not stop it (a cut file decoded as
    /// far as it goes); the caller prints each on stderr and lists them in the JSON.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The picture a task made (style transfer), encoded, when it was kept in memory
    /// ([`Outputs::Memory`]); `None` for tasks whose result is not a picture.
    fn image(&self, _format: ImageFormat) -> Option<Result<Vec<u8>>> {
        None
    }
    /// The decision of a classifier: its best label and that label's score, for protocols with
    /// fixed `label` and `score` outputs.
    fn label(&self) -> Option<(String, f32)> {
        None
    }
    /// The text a task produced (a transcript), for protocols with a fixed `text` output.
    fn text(&self) -> Option<String> {
        None
    }
}

pub type PredictionResult = Result<Box<dyn Prediction>>;

/// A loaded model, ready to run many inputs.
pub trait Runner: Send {
    /// How many inputs [`Runner::run`] takes at once.
    fn batch_size(&self) -> usize {
        1
    }

    /// The most bytes one input may hold, stdin included (read before the runner sees it).
    fn read_limit(&self) -> ReadLimit {
        ReadLimit::DEFAULT
    }

    /// One result per input, in order; one bad input does not spoil the others.
    fn run(&mut self, batch: &[Input]) -> Vec<PredictionResult>;
}

/// The value of a [`Task::returned_options`] option whose file goes back in the answer.
pub const RETURNED: &str = "(returned)";

/// A task plugin. Register it in the CLI's task list; nothing else in zoo names it.
pub trait Task: Send + Sync {
    /// Canonical name, as in the catalogue: `image-classification`.
    fn name(&self) -> &'static str;
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    /// One line for `zoo list` and `--help`.
    fn summary(&self) -> &'static str;
    fn input(&self) -> InputSpec;
    fn options(&self) -> &'static [TaskOption] {
        &[]
    }
    /// Command lines shown under `zoo run <task> --help`.
    fn examples(&self) -> &'static [&'static str] {
        &[]
    }
    /// The catalogue's models for this task.
    fn models(&self) -> Vec<&'static CatalogEntry> {
        Catalog::bundled().for_task(self.name()).collect()
    }
    /// Builds a runner: reads the model's files, checks the options (a bad value is a usage
    /// error, reported before any input is read).
    fn load(&self, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>>;

    /// Turns the command line's inputs (and the task's options) into inputs; by default files,
    /// folders, globs and `-`. A task reading tables or `--text` expands them here.
    /// `stdin_limit` bounds what `-` reads.
    fn expand_inputs(&self, raw: &[String], _args: &TaskArgs, stdin_limit: ReadLimit) -> Result<Vec<Input>> {
        crate::inputs::expand(raw, &self.input(), stdin_limit)
    }

    /// The options a request to a server may set; by default those that
    /// [`TaskOption::settable_per_request`]. A task whose options choose where inputs come from
    /// (a table column, text given as an option) leaves those out too: a request brings its inputs.
    fn request_options(&self) -> Vec<&'static TaskOption> {
        self.options().iter().filter(|o| o.settable_per_request()).collect()
    }

    /// A small input that runs the model once, so that a server's first request does not pay for
    /// what is set up lazily (thread pools, caches, packed weights); `None` to skip the warm-up.
    fn warmup_input(&self) -> Option<Input> {
        None
    }

    /// `FILE` options the task reads (a picture to take a style from), which a server's request
    /// may send as uploads, attached with [`TaskArgs::attach`].
    fn upload_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// `FILE` options the task writes (a contact sheet), which a server's request may set to
    /// `true` to get that file in the answer instead: the runner, loaded with
    /// [`Outputs::Memory`], sees the value [`RETURNED`].
    fn returned_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether `--explain` shows what the task's decisions rested on (see [`crate::explain`]).
    fn explains(&self) -> Explains {
        Explains::No("it has no explanations yet")
    }

    /// Options of `zoo train <task>`; a task without any cannot be trained from the CLI.
    fn train_options(&self) -> &'static [TaskOption] {
        &[]
    }

    /// Trains what the task can train (e.g. a classifier head) as `args` say, writing its
    /// output where they say; returns a report.
    fn train(&self, _args: &TaskArgs, _ctx: &Context) -> Result<Box<dyn Prediction>> {
        Err(Error::Usage(format!("task '{}' cannot be trained", self.name())))
    }
}

/// The tasks a build of zoo knows, in the order they were registered.
#[derive(Default)]
pub struct Registry {
    tasks: Vec<Box<dyn Task>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, task: impl Task + 'static) -> &mut Self {
        self.tasks.push(Box::new(task));
        self
    }

    pub fn tasks(&self) -> impl Iterator<Item = &dyn Task> {
        self.tasks.iter().map(|t| t.as_ref())
    }

    pub fn find(&self, name: &str) -> Result<&dyn Task> {
        let name = name.to_ascii_lowercase();
        self.tasks().find(|t| t.name() == name || t.aliases().contains(&name.as_str())).ok_or_else(|| {
            Error::UnknownTask { name, known: self.tasks().map(|t| t.name()).collect::<Vec<_>>().join(", ") }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: ReadLimit = ReadLimit { max_bytes: 1000, raised_by: "--max-things" };

    /// An attached upload reads as its bytes under its own name, and tells option sets apart by
    /// content: a cached runner for one painting must not serve another of the same file name.
    #[test]
    fn attached_files_read_as_their_bytes_and_key_by_content() {
        let mut one = TaskArgs::new();
        one.set("strength", "0.5").attach("style-image", Input::bytes("painting.png", vec![1u8, 2, 3]));
        let input = one.input("style-image").unwrap();
        assert_eq!(input.name, "painting.png");
        assert_eq!(&*input.read(LIMIT).unwrap(), &[1u8, 2, 3][..]);
        assert_eq!(one.value("style-image"), Some("painting.png"));

        let mut other = TaskArgs::new();
        other.set("strength", "0.5").attach("style-image", Input::bytes("painting.png", vec![9u8]));
        assert_ne!(one.canonical(), other.canonical());
        let mut same = TaskArgs::new();
        same.attach("style-image", Input::bytes("painting.png", vec![1u8, 2, 3])).set("strength", "0.5");
        assert_eq!(one.canonical(), same.canonical());

        // A path given later replaces the upload; without an upload the value names a file.
        let mut path = TaskArgs::new();
        path.set("style-image", "/tmp/p.png");
        let merged = one.merged(&path);
        assert!(matches!(merged.input("style-image").unwrap().source, InputSource::File(_)));
        assert!(matches!(path.merged(&one).input("style-image").unwrap().source, InputSource::Bytes(_)));
        assert!(TaskArgs::new().input("style-image").is_none());
    }

    #[test]
    fn inputs_over_the_read_limit_are_refused_naming_size_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let exact = dir.path().join("exact.bin");
        std::fs::write(&exact, vec![7u8; 1000]).unwrap();
        assert_eq!(Input::file(&exact).read(LIMIT).unwrap().len(), 1000);

        let big = dir.path().join("big.bin");
        std::fs::write(&big, vec![7u8; 2500]).unwrap();
        let error = Input::file(&big).read(LIMIT).unwrap_err().to_string();
        assert!(error.contains("big.bin") && error.contains("is 2.5 kB, over the limit of 1.0 kB"), "{error}");
        assert!(error.ends_with("(raise it with --max-things)"), "{error}");

        let text = Input::text("--text", "x".repeat(1001));
        assert!(text.read(LIMIT).unwrap_err().to_string().contains("1.0 kB"));
        let piped = Input { name: "-".into(), source: InputSource::Stdin(vec![0u8; 1001].into()) };
        assert!(piped.read(LIMIT).unwrap_err().to_string().starts_with("-: the input holds more"));
    }

    #[cfg(unix)]
    #[test]
    fn endless_files_stop_at_the_limit() {
        // /dev/zero reports a size of 0 and never ends.
        let error = Input::file("/dev/zero").read(LIMIT).unwrap_err().to_string();
        assert!(error.contains("holds more than the limit of 1.0 kB"), "{error}");
    }
}
