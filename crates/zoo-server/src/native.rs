//! zoo's own API: `POST /v1/run/{task}` answers what `zoo run <task> --json` prints, one object
//! per input; `GET /v1/tasks` and `GET /v1/models` say what is served.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use zoo_runtime::{Explains, ImageFormat, Input, InputKind};

use crate::api::{self, ApiError};
use crate::worker::State as ModelState;
use crate::App;

/// Query parameters as (name, value) pairs.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// An option's value from JSON: text as it is, numbers and booleans as they print.
fn option_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn run(
    State(app): State<Arc<App>>,
    Path(task): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let label = app.worker(&task).map(|w| w.task.name()).unwrap_or("");
    let result = run_inner(&app, &task, query, &headers, request).await;
    api::labelled(label, result.unwrap_or_else(IntoResponse::into_response))
}

async fn run_inner(
    app: &Arc<App>,
    task_name: &str,
    query: Option<String>,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let mut pairs = query_pairs(query.as_deref());
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut inputs = Vec::new();
    let mut option_files = Vec::new();
    let mut input_bytes = 0;
    let mut model = pairs.iter().position(|(k, _)| k == "model").map(|at| pairs.remove(at).1);
    // Known before the body is read, so that a wrong task costs no upload.
    let served = app.worker(task_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("task '{task_name}' is not served here; served: {}", app.served_names()),
        )
    })?;
    let task = served.task;

    if content_type.starts_with("multipart/form-data") {
        let multipart = api::multipart(request).await?;
        let form = api::read_form(app, multipart).await?;
        for (index, (field, file_name, bytes)) in form.files.into_iter().enumerate() {
            input_bytes += bytes.len();
            let upload = api::upload(&file_name, bytes, index);
            if matches!(field.as_str(), "file" | "file[]" | "files" | "files[]") {
                inputs.push(upload);
            } else if let Some(option) = zoo_pipeline::upload_option(task, &field) {
                option_files.push((option, upload));
            } else {
                let mut fields = vec!["file".to_string()];
                fields.extend(task.upload_options().iter().map(|o| o.replace('-', "_")));
                return Err(ApiError::bad_request(format!(
                    "unexpected file field '{field}'; file fields here: {}",
                    fields.join(", ")
                )));
            }
        }
        for (name, value) in form.fields {
            if name == "model" {
                model = Some(value);
            } else {
                pairs.push((name, value));
            }
        }
    } else {
        let body = api::read_body(app, request.into_body()).await?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not JSON ({e}); send {{\"inputs\": [...]}} as application/json, or files as multipart/form-data"
            ))
        })?;
        let Value::Object(mut object) = value else {
            return Err(ApiError::bad_request(
                "the JSON body must be an object: {\"inputs\": [...], \"options\": {...}}",
            ));
        };
        if let Some(Value::String(id)) = object.remove("model") {
            model = Some(id);
        }
        match object.remove("options") {
            None | Some(Value::Null) => {}
            Some(Value::Object(options)) => pairs.extend(options.iter().map(|(k, v)| (k.clone(), option_text(v)))),
            Some(_) => return Err(ApiError::unprocessable("'options' must be an object of option names and values")),
        }
        let kind = task.input().kind;
        let texts = match object.remove("inputs") {
            Some(Value::Array(items)) => items,
            Some(Value::String(one)) => vec![Value::String(one)],
            _ => return Err(ApiError::bad_request("the JSON body needs \"inputs\": a list of strings")),
        };
        if let Some(key) = object.keys().next() {
            return Err(ApiError::bad_request(format!(
                "unknown field '{key}'; the body takes inputs, options and model"
            )));
        }
        for (index, item) in texts.into_iter().enumerate() {
            let Value::String(text) = item else {
                return Err(ApiError::bad_request(format!("inputs[{index}] is not a string")));
            };
            let name = format!("inputs[{index}]");
            input_bytes += text.len();
            inputs.push(match kind {
                InputKind::Text => Input::text(name, text),
                InputKind::Image | InputKind::Audio => {
                    let bytes =
                        api::base64_bytes(&text).map_err(|why| ApiError::bad_request(format!("{name}: {why}")))?;
                    Input::bytes(name, bytes)
                }
            });
        }
    }
    let worker = match &model {
        None => served,
        Some(id) => {
            app.workers.iter().find(|w| w.task.name() == task.name() && w.model_id == *id).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("model '{id}' is not served for task '{}'; served: {}", task.name(), app.served_names()),
                )
            })?
        }
    };
    if inputs.is_empty() {
        return Err(ApiError::bad_request(format!(
            "no input given: send files as multipart 'file' fields, or JSON {{\"inputs\": [...]}} ({} inputs)",
            task.input().kind.name()
        )));
    }
    let mut options = zoo_pipeline::request_options(task, pairs.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    for (option, upload) in option_files {
        options.attach(option, upload);
    }
    let deadline = crate::deadline(&app.config, input_bytes);
    let outcomes = api::run_on(worker, inputs, options, deadline).await?;

    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let wants_json = accept.contains("application/json") && !accept.contains("image/");
    if let [only] = outcomes.as_slice() {
        let format = if accept.contains("image/jpeg") { ImageFormat::Jpeg } else { ImageFormat::Png };
        if !wants_json {
            if let Some(image) = only.image(format) {
                let bytes = image.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                return Ok(([(header::CONTENT_TYPE, format.mime())], bytes).into_response());
            }
        }
    }
    let results: Vec<Value> = outcomes
        .iter()
        .map(|outcome| {
            let mut object = outcome.json();
            if let Some(Ok(png)) = outcome.image(ImageFormat::Png) {
                object.insert("image_png_base64".into(), api::base64_text(&png).into());
            }
            // A document the request asked for with a format option (subtitles, a transcript).
            if let Some(document) = outcome.document() {
                object.insert("document".into(), document.into());
            }
            Value::Object(object)
        })
        .collect();
    if let Some(error) = api::all_failed(&outcomes) {
        return Ok((error.status, Json(json!({"error": error.message, "results": results}))).into_response());
    }
    Ok(Json(json!({"results": results})).into_response())
}

/// The served tasks: what each takes, the options a request may set, and its models.
pub async fn tasks(State(app): State<Arc<App>>) -> Response {
    let mut seen: Vec<&str> = Vec::new();
    let mut tasks = Vec::new();
    for worker in &app.workers {
        let task = worker.task;
        if seen.contains(&task.name()) {
            continue;
        }
        seen.push(task.name());
        let mut options: Vec<Value> = task
            .request_options()
            .iter()
            .map(|o| json!({"name": o.name, "value": o.value_name, "help": o.help, "default": o.default}))
            .collect();
        // Files a request sends as multipart fields, and files it may ask back for (as a flag).
        for option in task.options() {
            let (upload, returned) =
                (task.upload_options().contains(&option.name), task.returned_options().contains(&option.name));
            if upload || returned {
                let mut entry = json!({"name": option.name, "value": option.value_name, "help": option.help});
                entry[if upload { "upload" } else { "returned" }] = true.into();
                options.push(entry);
            }
        }
        let explains = match task.explains() {
            Explains::Yes(what) => json!({"available": true, "what": what}),
            Explains::No(why) => json!({"available": false, "why": why}),
        };
        let models: Vec<&str> =
            app.workers.iter().filter(|w| w.task.name() == task.name()).map(|w| w.model_id.as_str()).collect();
        tasks.push(json!({
            "task": task.name(), "aliases": task.aliases(), "summary": task.summary(),
            "input": task.input().kind.name(), "extensions": task.input().extensions,
            "options": options, "explain": explains, "models": models,
        }));
    }
    api::labelled("", Json(json!({"tasks": tasks})).into_response())
}

/// The served models as `zoo list --json` shows them, in the list shape OpenAI clients read.
pub async fn models(State(app): State<Arc<App>>) -> Response {
    let hub = &app.config.context.hub;
    let data: Vec<Value> = app
        .workers
        .iter()
        .map(|w| {
            let entry = zoo_runtime::Catalog::bundled().get(&w.model_id).filter(|e| e.task == w.task.name());
            let listed = match entry {
                Some(entry) => zoo_pipeline::model_json(w.task, entry, hub),
                None => json!({"task": w.task.name(), "model": w.model_id, "available": "local or Hub, outside the catalogue"}),
            };
            let mut object = Map::new();
            object.insert("id".into(), w.model_id.clone().into());
            object.insert("object".into(), "model".into());
            object.insert("owned_by".into(), "zoo".into());
            object.insert("ready".into(), (w.state() == ModelState::Ready).into());
            if let Value::Object(fields) = listed {
                object.extend(fields);
            }
            Value::Object(object)
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
