//! `zoo._zoo`: the native half of the Python package. It holds a [`zoo_pipeline::Pipeline`] per
//! Python pipeline and hands back what `zoo run --json` prints, as JSON text, so that a result is
//! the same object whichever door it came through. Conversions from numpy arrays and PIL images
//! to files, and the Python-facing API, live in `python/zoo/__init__.py`.

use std::sync::{Arc, Mutex, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::Value;
use zoo_pipeline::{LoadError, Pipeline};
use zoo_runtime::{Context, Error, HubSettings, ImageFormat, Input, Model, ModelRef, Outputs, Task};

pyo3::create_exception!(_zoo, ZooError, PyRuntimeError, "Work zoo could not do: the one-line message the CLI prints.");

/// A usage error (unknown task or model, bad option: the CLI's exit code 2) is a `ValueError`;
/// anything else that failed is a `ZooError`. Either way the message is the CLI's line.
fn runtime_error(e: &Error) -> PyErr {
    let line = zoo_pipeline::one_line(e);
    if e.is_usage() {
        PyValueError::new_err(line)
    } else {
        ZooError::new_err(line)
    }
}

fn load_error(e: &LoadError) -> PyErr {
    if e.is_usage() {
        PyValueError::new_err(e.one_line())
    } else {
        ZooError::new_err(e.one_line())
    }
}

/// The thread count the process's pools were started with: they start once, so the first
/// pipeline fixes it.
static THREADS: OnceLock<Option<usize>> = OnceLock::new();

/// Sets the CPU threads before any pool starts; returns the count in effect (None: all cores),
/// which differs from `threads` when an earlier pipeline chose another.
#[pyfunction]
#[pyo3(signature = (threads=None))]
fn set_threads(threads: Option<usize>) -> Option<usize> {
    *THREADS.get_or_init(|| {
        if let Some(n) = threads {
            // Read by rayon and candle when their pools start, which has not happened yet.
            std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
        }
        threads.map(|n| n.max(1))
    })
}

fn hub(offline: bool) -> HubSettings {
    HubSettings::from_env(offline)
}

fn find_task(name: &str) -> PyResult<&'static dyn Task> {
    zoo_pipeline::registry().find(name).map_err(|e| runtime_error(&e))
}

/// `name`: an option as the command line spells it (`top-k`); Python's spelling in the error.
fn find_option(task: &'static dyn Task, name: &str) -> PyResult<&'static zoo_runtime::TaskOption> {
    task.options().iter().find(|o| o.name == name).ok_or_else(|| {
        let known: Vec<String> = task.options().iter().map(|o| o.name.replace('-', "_")).collect();
        PyValueError::new_err(format!(
            "unknown option '{}' for task '{}'; its options: {}, explain",
            name.replace('-', "_"),
            task.name(),
            known.join(", ")
        ))
    })
}

/// The task's name if `task` names one and it has every option named (command-line
/// spelling); else the `ValueError` a pipeline would raise, without loading a model.
#[pyfunction]
fn check(task: &str, options: Vec<String>) -> PyResult<&'static str> {
    let task = find_task(task)?;
    for name in options.iter().filter(|name| *name != "explain") {
        find_option(task, name)?;
    }
    Ok(task.name())
}

/// One loaded pipeline; calls from several Python threads take turns on it, with the GIL released.
#[pyclass(module = "zoo._zoo", frozen)]
struct NativePipeline {
    pipeline: Mutex<Pipeline>,
    task: &'static dyn Task,
    model: String,
}

/// An input as the Python side sends it: (kind, name, payload), kind "file" (payload: the path
/// as UTF-8), "bytes" or "text" (payload: UTF-8).
type RawInput<'py> = (String, String, Bound<'py, PyBytes>);

/// One input's answer: its JSON text, its error line if it failed, and its picture as PNG if it made one.
type RawResult<'py> = (String, Option<String>, Option<Bound<'py, PyBytes>>);

#[pymethods]
impl NativePipeline {
    /// `options`: (name, value) pairs as the command line takes them (`top-k`, `"3"`; flags
    /// `"true"`); `files`: options whose file is given as bytes (name, file name, bytes).
    #[new]
    #[pyo3(signature = (task, model=None, options=Vec::new(), files=Vec::new(), explain=false, offline=false, device="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        task: &str,
        model: Option<String>,
        options: Vec<(String, String)>,
        files: Vec<(String, String, Vec<u8>)>,
        explain: bool,
        offline: bool,
        device: &str,
    ) -> PyResult<Self> {
        let task = find_task(task)?;
        for (name, _) in &options {
            find_option(task, name)?;
        }
        let pairs = options.iter().map(|(name, value)| (name.as_str(), value.as_str()));
        let mut args = zoo_pipeline::load_options(task, pairs).map_err(|e| PyValueError::new_err(e.to_string()))?;
        for (name, file_name, bytes) in files {
            args.attach(&name, Input::bytes(file_name, bytes));
        }
        zoo_pipeline::explain_options(task, explain, None, &mut args).map_err(|e| runtime_error(&e))?;
        let device = zoo_runtime::device::parse_device(device).map_err(|e| runtime_error(&e))?;
        let ctx = Context { device, hub: hub(offline), progress: false, outputs: Outputs::Memory };
        let model = zoo_pipeline::resolve(task, model.as_deref(), &ctx).map_err(|e| runtime_error(&e))?;
        let id = model.id.clone();
        // A download or a load takes a while: other Python threads go on meanwhile.
        let pipeline = py.detach(move || Pipeline::load(task, model, args, ctx)).map_err(|e| load_error(&e))?;
        Ok(NativePipeline { pipeline: Mutex::new(pipeline), task, model: id })
    }

    #[getter]
    fn task(&self) -> &'static str {
        self.task.name()
    }

    #[getter]
    fn model(&self) -> &str {
        &self.model
    }

    #[getter]
    fn input_kind(&self) -> &'static str {
        self.task.input().kind.name()
    }

    /// Runs the inputs; one (JSON text, error or None, PNG bytes or None) per input, in order.
    /// `pictures=False` skips encoding the pictures a task makes (a caller that keeps only the
    /// JSON).
    #[pyo3(signature = (inputs, pictures=true))]
    fn run<'py>(&self, py: Python<'py>, inputs: Vec<RawInput<'py>>, pictures: bool) -> PyResult<Vec<RawResult<'py>>> {
        // Paths expand as on the command line (folders, patterns); bytes and text pass as they are.
        enum Item {
            Path(String),
            Ready(Input),
        }
        let mut items = Vec::with_capacity(inputs.len());
        for (kind, name, payload) in &inputs {
            let bytes = payload.as_bytes();
            let text =
                || String::from_utf8(bytes.to_vec()).map_err(|_| PyValueError::new_err(format!("{name}: not UTF-8")));
            items.push(match kind.as_str() {
                "file" => Item::Path(text()?),
                "text" => Item::Ready(Input::text(name.clone(), text()?)),
                "bytes" => Item::Ready(Input::bytes(name.clone(), Arc::<[u8]>::from(bytes))),
                other => return Err(PyValueError::new_err(format!("unknown input kind '{other}'"))),
            });
        }
        let outcomes = py.detach(|| {
            let mut pipeline = self.pipeline.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut expanded = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Item::Path(path) => expanded.extend(pipeline.expand(&[path])?),
                    Item::Ready(input) => expanded.push(input),
                }
            }
            // The pipeline batches by the model's batch size itself.
            Ok::<_, Error>(pipeline.run(&expanded))
        });
        let outcomes = outcomes.map_err(|e| runtime_error(&e))?;
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in &outcomes {
            let json = Value::Object(outcome.json()).to_string();
            let image = match pictures.then(|| outcome.image(ImageFormat::Png)).flatten() {
                Some(Ok(png)) => Some(PyBytes::new(py, &png)),
                Some(Err(e)) => return Err(runtime_error(&e)),
                None => None,
            };
            results.push((json, outcome.error(), image));
        }
        Ok(results)
    }
}

/// The registered tasks as JSON: name, aliases, summary, input kind and the file extensions a
/// folder is read for, options, explanations.
#[pyfunction]
fn tasks() -> String {
    let tasks: Vec<Value> = zoo_pipeline::registry()
        .tasks()
        .map(|task| {
            let options: Vec<Value> = task
                .options()
                .iter()
                .map(|o| serde_json::json!({"name": o.name.replace('-', "_"), "value": o.value_name, "help": o.help, "default": o.default}))
                .collect();
            let explains = match task.explains() {
                zoo_runtime::Explains::Yes(what) => serde_json::json!({"available": true, "what": what}),
                zoo_runtime::Explains::No(why) => serde_json::json!({"available": false, "why": why}),
            };
            serde_json::json!({
                "task": task.name(), "aliases": task.aliases(), "summary": task.summary(),
                "input": task.input().kind.name(), "extensions": task.input().extensions,
                "options": options, "explain": explains,
            })
        })
        .collect();
    Value::Array(tasks).to_string()
}

/// `zoo list --json`'s objects, of one task or all, as a JSON array.
#[pyfunction]
#[pyo3(signature = (task=None, offline=false))]
fn models(task: Option<&str>, offline: bool) -> PyResult<String> {
    let hub = hub(offline);
    let chosen: Vec<&'static dyn Task> = match task {
        Some(name) => vec![find_task(name)?],
        None => zoo_pipeline::registry().tasks().collect(),
    };
    let listed: Vec<Value> =
        chosen.iter().flat_map(|t| t.models().into_iter().map(|m| zoo_pipeline::model_json(*t, m, &hub))).collect();
    Ok(Value::Array(listed).to_string())
}

/// Fetches a model (catalogue id, Hub id or a task's models) into the cache; the files' paths.
#[pyfunction]
#[pyo3(signature = (name, offline=false))]
fn download(py: Python<'_>, name: &str, offline: bool) -> PyResult<Vec<String>> {
    let hub = hub(offline);
    let refs: Vec<ModelRef> = match zoo_pipeline::registry().find(name) {
        Ok(task) => task.models().into_iter().map(ModelRef::Catalog).collect(),
        Err(_) => vec![ModelRef::parse(name).map_err(|e| runtime_error(&e))?],
    };
    py.detach(|| {
        let mut files = Vec::new();
        for reference in &refs {
            let model = Model::resolve(reference, &hub);
            files.extend(model.download()?.iter().map(zoo_runtime::ModelFile::display));
        }
        Ok(files)
    })
    .map_err(|e: Error| runtime_error(&e))
}

#[pymodule]
mod _zoo {
    #[pymodule_export]
    use super::{check, download, models, set_threads, tasks, NativePipeline, ZooError};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
