//! zoo's one way to run a task, shared by every door: the command line, the HTTP server and the
//! Python package call the same [`Pipeline`], so a result is the same object whichever door it
//! came through.
//!
//! A pipeline is a task with a loaded model and its options: load once, run many. Inputs are
//! files, bytes with a name (uploads) or text; each result is an [`Outcome`], which renders as the
//! JSON object `zoo run --json` prints, as the lines a person reads, or as the task's own document
//! (subtitles). A request may bring options of its own; the pipeline keeps a few runners loaded
//! for option sets other than its own, so repeated requests do not load the model again.

mod catalog_view;
mod options;
mod shard;
mod tasks;

use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use zoo_runtime::catalog::Source;
use zoo_runtime::{
    Catalog, CatalogEntry, Context, Error, ImageFormat, Input, Model, ModelRef, Prediction, ReadLimit, Registry,
    Runner, Task, TaskArgs,
};

pub use catalog_view::{availability, model_json};
pub use options::{defaults, explain_options, load_options, request_options, upload_option, RequestOptionError};
pub use shard::{Shard, ShardError, INDEX_VARIABLE};

/// The tasks this build of zoo knows, in the order they were registered.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(tasks::build)
}

/// A failure to build a pipeline. `Loading` wraps what went wrong reading a model that did not
/// say so itself; its message is the cause's, after "loading model 'id'".
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Runtime(#[from] Error),
    #[error("loading model '{model}'")]
    Loading {
        model: String,
        #[source]
        cause: Error,
    },
}

impl LoadError {
    /// Whether the caller asked for something that does not exist (the CLI's exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            LoadError::Runtime(e) | LoadError::Loading { cause: e, .. } => e.is_usage(),
        }
    }

    /// The message and its causes on one line, as the CLI prints it.
    pub fn one_line(&self) -> String {
        one_line(self)
    }
}

/// An error and its causes on one line, joined by ": ", as zoo prints every error.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// The model `name` names for `task` (a catalogue id, Hub id or folder), or the task's default;
/// a catalogue model of another task is refused.
pub fn resolve(task: &dyn Task, name: Option<&str>, ctx: &Context) -> Result<Model, Error> {
    let reference = match name {
        Some(name) => ModelRef::parse(name)?,
        None => ModelRef::Catalog(Catalog::bundled().default_for(task.name()).ok_or_else(|| {
            Error::Usage(format!("task '{}' has no default model; name one with --model", task.name()))
        })?),
    };
    if let ModelRef::Catalog(entry) = &reference {
        if entry.task != task.name() {
            return Err(Error::WrongTask {
                model: entry.id.clone(),
                model_task: entry.task.clone(),
                task: task.name().into(),
            });
        }
    }
    Ok(Model::resolve(&reference, &ctx.hub))
}

/// The warning for a catalogue model that is not pinned to a commit, if `model` is one.
pub fn unpinned_warning(model: &Model) -> Option<String> {
    match model.entry {
        Some(CatalogEntry { source: Source::Hub { unpinned: Some(why), revision, .. }, .. }) => {
            Some(format!("{} is not pinned to a commit (revision '{revision}'): {why}", model.id))
        }
        _ => None,
    }
}

/// How many runners for requests' own option sets a pipeline keeps besides its own.
const OPTION_RUNNERS: usize = 4;

/// A task with its model loaded and its options checked, ready for many inputs.
pub struct Pipeline {
    task: &'static dyn Task,
    model: Model,
    args: TaskArgs,
    /// `args` as [`TaskArgs::canonical`], to tell a request's options that change nothing.
    args_key: String,
    ctx: Context,
    runner: Box<dyn Runner>,
    /// Runners for other option sets (by [`TaskArgs::canonical`]), the most recently used last.
    variants: Vec<(String, Box<dyn Runner>)>,
}

impl Pipeline {
    /// Loads `model` for `task` with `args` (the task's options; see [`defaults`]). A bad option
    /// is a usage error, reported before any input is read.
    pub fn load(task: &'static dyn Task, model: Model, args: TaskArgs, ctx: Context) -> Result<Self, LoadError> {
        let runner = load_runner(task, &model, &args, &ctx)?;
        let args_key = args.canonical();
        Ok(Pipeline { task, model, args, args_key, ctx, runner, variants: Vec::new() })
    }

    pub fn task(&self) -> &'static dyn Task {
        self.task
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The options the pipeline was loaded with.
    pub fn args(&self) -> &TaskArgs {
        &self.args
    }

    /// How many inputs the model takes at once; [`Pipeline::run`] splits larger lists itself.
    pub fn batch_size(&self) -> usize {
        self.runner.batch_size()
    }

    /// The most bytes one input may hold.
    pub fn read_limit(&self) -> ReadLimit {
        self.runner.read_limit()
    }

    /// The command line's inputs (files, folders, globs, `-`, and what the task's options add).
    pub fn expand(&self, raw: &[String]) -> Result<Vec<Input>, Error> {
        self.task.expand_inputs(raw, &self.args, self.runner.read_limit())
    }

    /// One outcome per input, in order, with the pipeline's own options.
    pub fn run(&mut self, inputs: &[Input]) -> Vec<Outcome> {
        let model = self.model.id.clone();
        run_batches(self.runner.as_mut(), &model, inputs)
    }

    /// As [`Pipeline::run`], with `options` over the pipeline's own (from [`request_options`]).
    /// A new option set loads a runner for it, which is kept for the next request like it; a bad
    /// option value is the error, before any input is read.
    pub fn run_with(&mut self, options: &TaskArgs, inputs: &[Input]) -> Result<Vec<Outcome>, LoadError> {
        if options.is_empty() {
            return Ok(self.run(inputs));
        }
        let merged = self.args.merged(options);
        let key = merged.canonical();
        if key == self.args_key {
            return Ok(self.run(inputs));
        }
        let runner = match self.variants.iter().position(|(k, _)| *k == key) {
            Some(at) => self.variants.remove(at).1,
            None => load_runner(self.task, &self.model, &merged, &self.ctx)?,
        };
        self.variants.push((key, runner));
        if self.variants.len() > OPTION_RUNNERS {
            self.variants.remove(0);
        }
        let runner = &mut self.variants.last_mut().expect("just pushed").1;
        Ok(run_batches(runner.as_mut(), &self.model.id, inputs))
    }
}

fn load_runner(task: &dyn Task, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>, LoadError> {
    task.load(model, args, ctx).map_err(|e| match e {
        // These already name the model; saying it twice only lengthens the line.
        e @ (Error::Model { .. } | Error::Usage(_) | Error::InvalidOption { .. }) => LoadError::Runtime(e),
        cause => LoadError::Loading { model: model.id.clone(), cause },
    })
}

fn run_batches(runner: &mut dyn Runner, model: &str, inputs: &[Input]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(inputs.len());
    for batch in inputs.chunks(runner.batch_size().max(1)) {
        let results = runner.run(batch);
        debug_assert_eq!(results.len(), batch.len(), "a runner returns one result per input");
        outcomes.extend(batch.iter().zip(results).map(|(input, result)| Outcome {
            input: input.name.clone(),
            model: model.to_string(),
            result,
        }));
    }
    outcomes
}

/// What came of one input: its prediction, or the error that stopped it.
pub struct Outcome {
    /// The input's name: its path as given, `-`, an upload's file name, a row number.
    pub input: String,
    /// The catalogue id (or Hub id, or folder) of the model that ran.
    pub model: String,
    pub result: Result<Box<dyn Prediction>, Error>,
}

impl Outcome {
    /// The object `zoo run --json` prints for this input: `input`, `model`, the prediction's
    /// fields and `warnings`, or `input`, `model` and `error`.
    pub fn json(&self) -> Map<String, Value> {
        match &self.result {
            Ok(prediction) => {
                let mut object = Map::new();
                object.insert("input".into(), self.input.clone().into());
                object.insert("model".into(), self.model.clone().into());
                object.extend(prediction.json());
                let warnings = prediction.warnings();
                if !warnings.is_empty() {
                    object.insert("warnings".into(), warnings.into());
                }
                object
            }
            Err(e) => match json!({"input": self.input, "model": self.model, "error": error_line(e)}) {
                Value::Object(object) => object,
                _ => unreachable!("an object literal"),
            },
        }
    }

    /// What a person reads for this input (as `zoo run` prints it): the task's own document when
    /// one was asked for, else the input's name and the prediction's lines, indented. `None` for
    /// an error, which is shown as [`Outcome::error`].
    pub fn human(&self) -> Option<String> {
        let prediction = self.result.as_ref().ok()?;
        Some(match prediction.document() {
            Some(document) => document.trim_end_matches('\n').to_string(),
            None => format!("{}\n{}", self.input, indent(&prediction.human())),
        })
    }

    /// The task's own document (subtitles, a transcript in a format), if it made one.
    pub fn document(&self) -> Option<String> {
        self.result.as_ref().ok()?.document()
    }

    /// What did not stop the input but should be known (printed as `zoo: warning: input: ...`).
    pub fn warnings(&self) -> Vec<String> {
        self.result.as_ref().map(|p| p.warnings()).unwrap_or_default()
    }

    /// The error, on one line, when the input failed.
    pub fn error(&self) -> Option<String> {
        self.result.as_ref().err().map(error_line)
    }

    /// Whether the input failed because of what it held (a bad file) rather than the model.
    pub fn is_input_error(&self) -> bool {
        matches!(self.result, Err(Error::Input { .. } | Error::Usage(_) | Error::InvalidOption { .. }))
    }

    /// The picture the task made, encoded, when it kept one in memory (style transfer).
    pub fn image(&self, format: ImageFormat) -> Option<Result<Vec<u8>, Error>> {
        self.result.as_ref().ok()?.image(format)
    }
}

/// An input's error as one line: some library errors span lines (candle puts context above the
/// cause).
fn error_line(e: &Error) -> String {
    e.to_string().replace('\n', " ")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}
