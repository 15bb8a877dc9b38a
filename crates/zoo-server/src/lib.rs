//! `zoo serve`: every served model over HTTP, on the same [`zoo_pipeline::Pipeline`] as `zoo run`.
//!
//! The split follows text-embeddings-inference's: the router (axum handlers, one module per
//! protocol: [`native`], [`openai`], [`oip`]) parses requests and renders answers and never runs
//! a model; each model's [`worker`] thread owns its pipeline and a bounded queue, and batches
//! waiting requests. Errors are `{"error": "<the CLI's one-line message>"}` with the status that
//! says whose fault it was.

mod api;
mod metrics;
mod native;
mod oip;
mod openai;
mod web;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use zoo_pipeline::Pipeline;
use zoo_runtime::{Context, Outputs, Task};

pub use api::ApiError;
use metrics::Metrics;
use worker::{State as ModelState, Worker};

/// One model to serve: a task and, optionally, the model to load for it (else the task's default).
#[derive(Clone)]
pub struct ServedSpec {
    pub task: &'static dyn Task,
    pub model: Option<String>,
}

/// One option a served task is loaded with.
#[derive(Clone)]
pub struct TaskOptionSetting {
    pub task: &'static dyn Task,
    pub name: String,
    pub value: String,
}

/// A model to serve, found, with the options it is loaded with.
struct Chosen {
    task: &'static dyn Task,
    model: zoo_runtime::Model,
    args: zoo_runtime::TaskArgs,
}

/// Everything `zoo serve` was told.
#[derive(Clone)]
pub struct Config {
    /// The models to serve; empty: the default model of every task that is available offline.
    pub models: Vec<ServedSpec>,
    /// Options every model of a task is loaded with (`zoo serve --set TASK.NAME=VALUE`): what a
    /// request may not set (compute type, batched pieces), and defaults for what it may.
    pub task_options: Vec<TaskOptionSetting>,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Inputs per model run; `None`: each task's batch size.
    pub max_batch: Option<usize>,
    /// Requests waiting per model before new ones get 429.
    pub max_queue: usize,
    /// The largest request body, in bytes (413 past it).
    pub payload_limit: usize,
    /// A request's base time limit; audio and other large inputs get more (see [`deadline`]).
    pub timeout: Duration,
    pub cors_allow_origins: Vec<String>,
    pub context: Context,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("{0}")]
    Usage(String),
    #[error("model '{model}' of task '{task}' failed to load: {reason}")]
    Load { task: String, model: String, reason: String },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
pub(crate) struct App {
    pub workers: Vec<Arc<Worker>>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
}

impl App {
    /// The worker for a task name or alias (the first served model of it), or a model's id.
    pub fn worker(&self, name: &str) -> Option<&Arc<Worker>> {
        let lower = name.to_ascii_lowercase();
        self.workers
            .iter()
            .find(|w| w.task.name() == lower || w.task.aliases().contains(&lower.as_str()))
            .or_else(|| self.workers.iter().find(|w| w.model_id == name))
    }

    pub fn served_names(&self) -> String {
        self.workers.iter().map(|w| format!("{} ({})", w.task.name(), w.model_id)).collect::<Vec<_>>().join(", ")
    }

    pub fn all_ready(&self) -> bool {
        self.workers.iter().all(|w| w.state() == ModelState::Ready)
    }
}

/// A request's time limit: the base, plus a second for every 32 kB it brings (about a second of
/// 16 kHz WAV, several of compressed audio), so long recordings get the time they need.
pub(crate) fn deadline(config: &Config, input_bytes: usize) -> Instant {
    Instant::now() + config.timeout + Duration::from_secs((input_bytes / 32_000) as u64)
}

/// Which models `config` asks for: its list, or every task's default that needs no download.
fn chosen_models(config: &Config) -> Result<Vec<Chosen>, ServeError> {
    let registry = zoo_pipeline::registry();
    let specs: Vec<ServedSpec> = if config.models.is_empty() {
        registry
            .tasks()
            .filter_map(|task| {
                let entry = zoo_runtime::Catalog::bundled().default_for(task.name())?;
                (zoo_pipeline::availability(entry, &config.context.hub) != "not downloaded")
                    .then_some(ServedSpec { task, model: None })
            })
            .collect()
    } else {
        config.models.clone()
    };
    if specs.is_empty() {
        return Err(ServeError::Usage(
            "no task's default model is available offline; fetch one with `zoo download TASK` or name one with --task TASK=MODEL".into(),
        ));
    }
    if let Some(unserved) = config.task_options.iter().find(|o| !specs.iter().any(|s| s.task.name() == o.task.name())) {
        let task = unserved.task.name();
        return Err(ServeError::Usage(format!(
            "--set {task}.{}: task '{task}' is not served; serve it with --task {task}",
            unserved.name
        )));
    }
    let mut chosen: Vec<Chosen> = Vec::new();
    for spec in specs {
        let model = zoo_pipeline::resolve(spec.task, spec.model.as_deref(), &config.context)
            .map_err(|e| ServeError::Usage(e.to_string()))?;
        if chosen.iter().any(|c| c.task.name() == spec.task.name() && c.model.id == model.id) {
            continue;
        }
        let settings = config.task_options.iter().filter(|o| o.task.name() == spec.task.name());
        let args = zoo_pipeline::load_options(spec.task, settings.map(|o| (o.name.as_str(), o.value.as_str())))
            .map_err(|e| ServeError::Usage(format!("--set: {e}")))?;
        chosen.push(Chosen { task: spec.task, model, args });
    }
    Ok(chosen)
}

/// Serves until SIGTERM or Ctrl-C, then stops taking requests, finishes those in flight and
/// returns. Prints `listening on http://ADDRESS` on stderr once it listens (before the models are
/// loaded: the health routes say when they are).
pub fn serve(config: Config) -> Result<(), ServeError> {
    let chosen = chosen_models(&config)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("zoo-http")
        .enable_all()
        .build()?;
    runtime.block_on(serve_async(config, chosen))
}

async fn serve_async(config: Config, chosen: Vec<Chosen>) -> Result<(), ServeError> {
    let address = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| ServeError::Bind { address: address.clone(), source })?;
    let local: SocketAddr = listener.local_addr()?;
    eprintln!("zoo serve: listening on http://{local}");

    let metrics = Arc::new(Metrics::new());
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for Chosen { task, model, args } in chosen {
        if let Some(warning) = zoo_pipeline::unpinned_warning(&model) {
            eprintln!("zoo: warning: {warning}");
        }
        let worker = Worker::new(task, model.id.clone(), config.max_queue, config.max_batch, metrics.clone());
        let mut ctx = config.context.clone();
        ctx.progress = false;
        ctx.outputs = Outputs::Memory;
        let thread_worker = worker.clone();
        let thread = std::thread::Builder::new()
            .name(format!("zoo-{}", task.name()))
            .spawn(move || thread_worker.run(move || Pipeline::load(task, model, args, ctx)))?;
        workers.push(worker);
        threads.push(thread);
    }
    let app = Arc::new(App { workers, config, metrics });
    let router = router(app.clone());

    // Say when every model is ready, or stop at the first that cannot load.
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<ServeError>(1);
    let watcher = app.clone();
    tokio::spawn(async move {
        loop {
            for w in &watcher.workers {
                if let ModelState::Failed(reason) = w.state() {
                    let error = ServeError::Load { task: w.task.name().into(), model: w.model_id.clone(), reason };
                    let _ = failed_tx.send(error).await;
                    return;
                }
            }
            if watcher.all_ready() {
                eprintln!("zoo serve: ready: {}", watcher.served_names());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let load_failure = Arc::new(std::sync::Mutex::new(None));
    let failure_seen = load_failure.clone();
    let shutdown = async move {
        tokio::select! {
            _ = stop_signal() => eprintln!("zoo serve: stopping: finishing the requests in flight"),
            // The sender goes when every model is ready; a closed channel is no failure.
            Some(failure) = failed_rx.recv() => *failure_seen.lock().expect("failure lock") = Some(failure),
        }
    };
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    for w in &app.workers {
        w.close();
    }
    let load_failure = load_failure.lock().expect("failure lock").take();
    // A model still loading when the server stops is left to the process's exit.
    if load_failure.is_none() {
        for thread in threads {
            let _ = thread.join();
        }
    }
    match load_failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/v1/run/{task}", post(native::run))
        .route("/v1/tasks", get(native::tasks))
        .route("/v1/models", get(native::models))
        .route("/v1/audio/transcriptions", post(openai::transcriptions))
        .route("/v1/audio/translations", post(openai::translations))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/models/{name}", get(oip::model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(oip::model_metadata))
        .route("/v2/models/{name}/ready", get(oip::model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(oip::model_ready))
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(oip::infer))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_key));
    let open = Router::new()
        .route("/health", get(health))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        // The page asks for the key itself, so it loads without one.
        .route("/", get(web::index))
        .route("/ui/app.js", get(web::script))
        .route("/ui/app.css", get(web::style));
    let mut router = api
        .merge(open)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), count_and_limit))
        .layer(DefaultBodyLimit::max(app.config.payload_limit));
    if !app.config.cors_allow_origins.is_empty() {
        let origins: Vec<HeaderValue> =
            app.config.cors_allow_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        router = router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT]),
        );
    }
    router.with_state(app)
}

/// With an API key, every route but health, metrics and the page needs `Authorization: Bearer KEY`,
/// compared in constant time.
async fn require_key(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(key) = &app.config.api_key else { return next.run(request).await };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or("");
    if bool::from(subtle::ConstantTimeEq::ct_eq(given.trim().as_bytes(), key.as_bytes())) {
        return next.run(request).await;
    }
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key (send Authorization: Bearer KEY)")
            .into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Counts every answer by route, task and status, and refuses a body whose declared length is
/// over the limit before any of it is read.
async fn count_and_limit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let response = match declared {
        Some(length) if length > app.config.payload_limit as u64 => {
            api::too_large(app.config.payload_limit).into_response()
        }
        _ => next.run(request).await,
    };
    let task = response.extensions().get::<api::TaskLabel>().map(|t| t.0).unwrap_or("");
    app.metrics.request(route.as_deref().unwrap_or("(unmatched)"), task, response.status().as_u16());
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {} {}", request.method(), request.uri().path()))
}

fn health_body(app: &App) -> serde_json::Value {
    let models: Vec<serde_json::Value> = app
        .workers
        .iter()
        .map(|w| {
            let (state, error) = match w.state() {
                ModelState::Loading => ("loading", None),
                ModelState::Ready => ("ready", None),
                ModelState::Failed(e) => ("failed", Some(e)),
            };
            let mut m = json!({"task": w.task.name(), "model": w.model_id, "state": state, "queue": w.queue_depth()});
            if let Some(e) = error {
                m["error"] = e.into();
            }
            m
        })
        .collect();
    json!({"status": if app.all_ready() { "ok" } else { "loading" }, "models": models})
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let status = if app.all_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health_body(&app))).into_response()
}

async fn live() -> Response {
    (StatusCode::OK, Json(json!({"live": true}))).into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.all_ready() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the models are still loading").into_response()
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let models = app.workers.iter().map(|w| (w.model_id.clone(), w.queue_depth(), w.state() == ModelState::Ready));
    let text = app.metrics.render(models);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
