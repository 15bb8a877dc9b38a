//! What the protocol modules share: errors as JSON, reading bodies within the limits, uploads,
//! and handing inputs to a model's worker.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::multipart::{Multipart, MultipartError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::json;
use zoo_pipeline::Outcome;
use zoo_runtime::{Input, TaskArgs};

use crate::worker::{Refused, Worker};
use crate::App;

/// An answer that is an error: `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds a client should wait before trying again (429, 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.message}))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The task a response was for, read by the metrics layer.
#[derive(Clone, Copy)]
pub struct TaskLabel(pub &'static str);

/// Marks `response` as one for `task`, for the request counter.
pub fn labelled(task: &'static str, mut response: Response) -> Response {
    response.extensions_mut().insert(TaskLabel(task));
    response
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over the server's limit of {} (--payload-limit)", human_size(limit)),
    )
}

fn human_size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn timed_out(app: &App) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!("the request body did not arrive within {} s", app.config.timeout.as_secs()),
    )
}

/// A whole body, refused with 413 as soon as it passes the limit and with 408 when it does not
/// arrive in time.
pub async fn read_body(app: &App, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.config.payload_limit;
    let read = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    };
    tokio::time::timeout(app.config.timeout, read).await.map_err(|_| timed_out(app))?
}

/// A multipart body: its files (field name, file name, bytes) and its text fields, in order.
pub struct Form {
    pub files: Vec<(String, String, Bytes)>,
    pub fields: Vec<(String, String)>,
}

impl Form {
    /// The last value of a text field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    ApiError::new(e.status(), format!("reading the multipart body: {}", e.body_text()))
}

/// The body as multipart, refused with the usual JSON error when it is not.
pub async fn multipart(request: axum::extract::Request) -> Result<Multipart, ApiError> {
    use axum::extract::FromRequest;
    Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("{}; send the request as multipart/form-data", e.body_text())))
}

/// Reads every part of a multipart body, within the body limit and the time limit.
pub async fn read_form(app: &App, mut multipart: Multipart) -> Result<Form, ApiError> {
    let read = async {
        let mut form = Form { files: Vec::new(), fields: Vec::new() };
        while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or("").to_string();
            match field.file_name().map(str::to_string) {
                Some(file_name) => {
                    let bytes = field.bytes().await.map_err(multipart_error)?;
                    form.files.push((name, file_name, bytes));
                }
                None => {
                    let text = field.text().await.map_err(multipart_error)?;
                    form.fields.push((name, text));
                }
            }
        }
        Ok(form)
    };
    tokio::time::timeout(app.config.timeout, read).await.map_err(|_| timed_out(app))?
}

/// An upload as an input, named by its file name (only the last path part, as browsers send it),
/// so that errors name what the client sent.
pub fn upload(file_name: &str, bytes: Bytes, index: usize) -> Input {
    let name = file_name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    let name = if name.is_empty() { format!("upload-{index}") } else { name.to_string() };
    Input::bytes(name, &bytes[..])
}

/// Decodes base64 (standard or URL-safe, padded or not; a `data:...;base64,` prefix allowed).
pub fn base64_bytes(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let data = match text.split_once(";base64,") {
        Some((head, data)) if head.starts_with("data:") => data,
        _ => text,
    };
    let data: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut last = String::new();
    for engine in engines {
        match engine.decode(&data) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("not base64 ({last})"))
}

pub fn base64_text(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Queues `inputs` on `worker` and waits for them: 429 when its queue is full, 503 while it
/// loads, 504 past `deadline`, 422/500 when the options cannot be used. A client that leaves
/// drops the wait, and the worker then skips the job.
pub async fn run_on(
    worker: &Worker,
    inputs: Vec<Input>,
    options: TaskArgs,
    deadline: Instant,
) -> Result<Vec<Outcome>, ApiError> {
    let receiver = worker.submit(inputs, options, deadline).map_err(|refused| match refused {
        Refused::Full(limit) => ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "model '{}' has {limit} requests waiting already (--max-queue); try again shortly",
                worker.model_id
            ),
            retry_after: Some(1),
        },
        Refused::Loading => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("model '{}' is still loading", worker.model_id),
            retry_after: Some(2),
        },
        Refused::Failed(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model '{}' failed to load: {why}", worker.model_id))
        }
        Refused::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"),
    })?;
    let wait = deadline.saturating_duration_since(Instant::now());
    let done = match tokio::time::timeout(wait, receiver).await {
        Ok(Ok(done)) => done,
        Ok(Err(_)) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server stopped before this request ran"))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("model '{}' did not finish this request within {} s", worker.model_id, wait.as_secs()),
            ))
        }
    };
    done.outcomes.map_err(|e| {
        if e.usage {
            ApiError::unprocessable(e.message)
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.message)
        }
    })
}

/// When every input failed: the first one's error, with 400 when the input was at fault and 500
/// when the model was. `None` when any input succeeded.
pub fn all_failed(outcomes: &[Outcome]) -> Option<ApiError> {
    if outcomes.is_empty() || outcomes.iter().any(|o| o.error().is_none()) {
        return None;
    }
    let first = &outcomes[0];
    let status = if first.is_input_error() { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
    Some(ApiError::new(status, first.error().unwrap_or_default()))
}
