//! The Open Inference Protocol v2 (KServe, Triton's REST API), with the binary tensor data
//! extension that `tritonclient` uses by default. A served model is named by its task (or its
//! catalogue id); its one input is a `BYTES` tensor `input` of shape `[n]`: text for text tasks,
//! a file's bytes for pictures and recordings (base64 in JSON). Its outputs: `json` (the
//! `zoo run --json` object) always, and `label` + `score`, `text` or `image` where the task has them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use zoo_pipeline::Outcome;
use zoo_runtime::{ImageFormat, Input, InputKind};

use crate::api::{self, ApiError};
use crate::worker::{State as ModelState, Worker};
use crate::App;

const BINARY_HEADER: &str = "inference-header-content-length";
const VERSION: &str = "1";

pub async fn server_metadata() -> Response {
    Json(json!({"name": "zoo", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]}))
        .into_response()
}

fn find<'a>(app: &'a App, name: &str, version: Option<&str>) -> Result<&'a Arc<Worker>, ApiError> {
    if let Some(v) = version.filter(|v| *v != VERSION) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model '{name}' has only version {VERSION}, not '{v}'"),
        ));
    }
    app.worker(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model '{name}' is not served here; served: {}", app.served_names()),
        )
    })
}

fn metadata(app: &App, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let worker = find(app, name, version)?;
    let outputs: Vec<Value> = worker
        .outputs()
        .iter()
        .map(|o| json!({"name": o, "datatype": if *o == "score" { "FP32" } else { "BYTES" }, "shape": [-1]}))
        .collect();
    Ok(Json(json!({
        "name": name, "versions": [VERSION], "platform": "zoo",
        "inputs": [{"name": "input", "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
        "parameters": {"task": worker.task.name(), "model": worker.model_id, "input": worker.task.input().kind.name()},
    }))
    .into_response())
}

/// `/v2/models/{name}` or `/v2/models/{name}/versions/{version}`, and what follows.
#[derive(serde::Deserialize)]
pub struct ModelPath {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

pub async fn model_metadata(State(app): State<Arc<App>>, Path(path): Path<ModelPath>) -> Response {
    metadata(&app, &path.name, path.version.as_deref()).unwrap_or_else(IntoResponse::into_response)
}

fn readiness(app: &App, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let worker = find(app, name, version)?;
    match worker.state() {
        ModelState::Ready => Ok(Json(json!({"name": name, "ready": true})).into_response()),
        ModelState::Loading => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model '{name}' is still loading")))
        }
        ModelState::Failed(why) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model '{name}' failed to load: {why}")))
        }
    }
}

pub async fn model_ready(State(app): State<Arc<App>>, Path(path): Path<ModelPath>) -> Response {
    readiness(&app, &path.name, path.version.as_deref()).unwrap_or_else(IntoResponse::into_response)
}

pub async fn infer(State(app): State<Arc<App>>, Path(path): Path<ModelPath>, request: Request) -> Response {
    let label = app.worker(&path.name).map(|w| w.task.name()).unwrap_or("");
    let response =
        run(&app, &path.name, path.version.as_deref(), request).await.unwrap_or_else(IntoResponse::into_response);
    api::labelled(label, response)
}

/// The JSON header and the binary tensors after it (the binary data extension), or all JSON.
fn split_body(headers: &HeaderMap, body: &Bytes) -> Result<(Value, Bytes), ApiError> {
    let json_length = match headers.get(BINARY_HEADER) {
        None => body.len(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                ApiError::bad_request(format!("{BINARY_HEADER} must be the JSON header's length, at most the body's"))
            })?,
    };
    let header: Value = serde_json::from_slice(&body[..json_length])
        .map_err(|e| ApiError::bad_request(format!("the inference request is not JSON: {e}")))?;
    Ok((header, body.slice(json_length..)))
}

/// The elements of a binary `BYTES` tensor: each a 4-byte little-endian length and its bytes.
fn bytes_elements(mut data: &[u8]) -> Result<Vec<&[u8]>, ApiError> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let bad = || ApiError::bad_request("the binary BYTES tensor is cut short (each element: u32 length, bytes)");
        let length = u32::from_le_bytes(data.get(..4).ok_or_else(bad)?.try_into().expect("4 bytes")) as usize;
        elements.push(data.get(4..4 + length).ok_or_else(bad)?);
        data = &data[4 + length..];
    }
    Ok(elements)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

async fn run(app: &App, name: &str, version: Option<&str>, request: Request) -> Result<Response, ApiError> {
    let worker = find(app, name, version)?.clone();
    let headers = request.headers().clone();
    let body = api::read_body(app, request.into_body()).await?;
    let (header, mut binary) = split_body(&headers, &body)?;
    let tensors = header.get("inputs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let [tensor] = tensors else {
        return Err(ApiError::bad_request(format!(
            "model '{name}' takes one input tensor, 'input' (BYTES, shape [n]); got {}",
            tensors.len()
        )));
    };
    if tensor.get("name").and_then(Value::as_str) != Some("input") {
        return Err(ApiError::bad_request("the input tensor must be named 'input'"));
    }
    if tensor.get("datatype").and_then(Value::as_str) != Some("BYTES") {
        return Err(ApiError::bad_request("the input tensor's datatype must be BYTES"));
    }
    let kind = worker.task.input().kind;
    let binary_size = tensor.pointer("/parameters/binary_data_size").and_then(Value::as_u64);
    let element_name = |i: usize| format!("input[{i}]");
    let mut input_bytes = 0;
    let inputs: Vec<Input> = match binary_size {
        Some(size) => {
            let size = size as usize;
            if size > binary.len() {
                return Err(ApiError::bad_request("binary_data_size is larger than the binary data sent"));
            }
            let data = binary.split_to(size);
            bytes_elements(&data)?
                .into_iter()
                .enumerate()
                // Raw bytes for every task: a text task checks them as it checks an uploaded
                // file (UTF-8, no NUL bytes), instead of having bad bytes replaced unseen.
                .map(|(i, bytes)| {
                    input_bytes += bytes.len();
                    Input::bytes(element_name(i), bytes)
                })
                .collect()
        }
        None => {
            let mut flat = Vec::new();
            flatten(tensor.get("data").unwrap_or(&Value::Null), &mut flat);
            flat.into_iter()
                .enumerate()
                .map(|(i, v)| match (v, kind) {
                    (Value::String(text), InputKind::Text) => {
                        input_bytes += text.len();
                        Ok(Input::text(element_name(i), text.clone()))
                    }
                    (Value::String(text), _) => api::base64_bytes(text)
                        .map(|bytes| {
                            input_bytes += bytes.len();
                            Input::bytes(element_name(i), bytes)
                        })
                        .map_err(|why| ApiError::bad_request(format!("{}: {why}", element_name(i)))),
                    _ => Err(ApiError::bad_request(format!("{} is not a string", element_name(i)))),
                })
                .collect::<Result<_, _>>()?
        }
    };
    if let Some(shape) = tensor.get("shape").and_then(Value::as_array) {
        let declared: Option<u64> = shape.iter().map(Value::as_u64).product();
        if declared != Some(inputs.len() as u64) {
            return Err(ApiError::bad_request(format!(
                "the input's shape {} does not match its {} elements",
                Value::Array(shape.clone()),
                inputs.len()
            )));
        }
    }
    if inputs.is_empty() {
        return Err(ApiError::bad_request("the input tensor has no elements"));
    }

    let parameters = header.get("parameters").and_then(Value::as_object).cloned().unwrap_or_default();
    let binary_output = parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let pairs = parameters.iter().filter(|(k, _)| k.as_str() != "binary_data_output").map(|(k, v)| {
        (
            k.as_str(),
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        )
    });
    let options =
        zoo_pipeline::request_options(worker.task, pairs).map_err(|e| ApiError::unprocessable(e.to_string()))?;

    // Which outputs, and which of them go as binary.
    let available = worker.outputs();
    let requested: Vec<(String, bool)> = match header.get("outputs").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|o| {
                let name = o.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                let binary = o.pointer("/parameters/binary_data").and_then(Value::as_bool).unwrap_or(binary_output);
                (name, binary)
            })
            .collect(),
        _ => available.iter().map(|o| (o.to_string(), binary_output)).collect(),
    };
    if let Some((bad, _)) = requested.iter().find(|(n, _)| !available.contains(&n.as_str())) {
        return Err(ApiError::bad_request(format!(
            "model '{name}' has no output '{bad}'; its outputs: {}",
            available.join(", ")
        )));
    }

    let deadline = crate::deadline(&app.config, input_bytes);
    let outcomes = api::run_on(&worker, inputs, options, deadline).await?;
    if let Some(failed) = outcomes.iter().find(|o| o.error().is_some()) {
        let status = if failed.is_input_error() { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
        return Err(ApiError::new(status, failed.error().unwrap_or_default()));
    }

    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for (output, binary) in &requested {
        let tensor = Tensor::of(output, &outcomes)?;
        let shape = json!([outcomes.len()]);
        let mut entry = json!({"name": output, "datatype": tensor.datatype(), "shape": shape});
        if *binary {
            let data = tensor.binary();
            entry["parameters"] = json!({"binary_data_size": data.len()});
            tail.extend_from_slice(&data);
        } else {
            entry["data"] = tensor.json();
        }
        outputs.push(entry);
    }
    let mut reply = Map::new();
    reply.insert("model_name".into(), name.into());
    reply.insert("model_version".into(), VERSION.into());
    if let Some(id) = header.get("id") {
        reply.insert("id".into(), id.clone());
    }
    reply.insert("outputs".into(), outputs.into());
    let reply = Value::Object(reply).to_string();
    if tail.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], reply).into_response());
    }
    let json_length = reply.len();
    let mut body = reply.into_bytes();
    body.extend_from_slice(&tail);
    let mut response = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    response.headers_mut().insert(BINARY_HEADER, HeaderValue::from(json_length));
    Ok(response)
}

fn prediction(outcome: &Outcome) -> Option<&dyn zoo_runtime::Prediction> {
    outcome.result.as_ref().ok().map(|b| b.as_ref())
}

/// One output tensor's elements, one per input.
enum Tensor {
    Bytes(Vec<Vec<u8>>),
    Fp32(Vec<f32>),
}

impl Tensor {
    fn of(output: &str, outcomes: &[Outcome]) -> Result<Self, ApiError> {
        let missing = || ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("a result has no '{output}'"));
        Ok(match output {
            "json" => {
                Tensor::Bytes(outcomes.iter().map(|o| Value::Object(o.json()).to_string().into_bytes()).collect())
            }
            "label" => Tensor::Bytes(
                outcomes
                    .iter()
                    .map(|o| prediction(o).and_then(|p| p.label()).map(|(l, _)| l.into_bytes()).ok_or_else(missing))
                    .collect::<Result<_, _>>()?,
            ),
            "score" => Tensor::Fp32(
                outcomes
                    .iter()
                    .map(|o| prediction(o).and_then(|p| p.label()).map(|(_, s)| s).ok_or_else(missing))
                    .collect::<Result<_, _>>()?,
            ),
            "text" => Tensor::Bytes(
                outcomes
                    .iter()
                    .map(|o| prediction(o).and_then(|p| p.text()).map(String::into_bytes).ok_or_else(missing))
                    .collect::<Result<_, _>>()?,
            ),
            "image" => Tensor::Bytes(
                outcomes
                    .iter()
                    .map(|o| match o.image(ImageFormat::Png) {
                        Some(Ok(png)) => Ok(png),
                        Some(Err(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
                        None => Err(missing()),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(missing()),
        })
    }

    fn datatype(&self) -> &'static str {
        match self {
            Tensor::Bytes(_) => "BYTES",
            Tensor::Fp32(_) => "FP32",
        }
    }

    fn binary(&self) -> Vec<u8> {
        match self {
            Tensor::Bytes(elements) => {
                let mut out = Vec::new();
                for e in elements {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
                out
            }
            Tensor::Fp32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// As JSON: text elements as strings, others (pictures) in base64.
    fn json(&self) -> Value {
        match self {
            Tensor::Bytes(elements) => elements
                .iter()
                .map(|e| match std::str::from_utf8(e) {
                    Ok(text) => Value::String(text.to_string()),
                    Err(_) => Value::String(api::base64_text(e)),
                })
                .collect(),
            Tensor::Fp32(values) => values.iter().map(|v| json!(v)).collect(),
        }
    }
}
