//! OpenAI's audio API: `POST /v1/audio/transcriptions` and `/v1/audio/translations`, as the
//! official clients send them (multipart `file`, `model`, `language`, `prompt`, `temperature`,
//! `response_format`, `timestamp_granularities[]`), answered from the speech task's own result.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use zoo_runtime::InputKind;

use crate::api::{self, ApiError};
use crate::worker::Worker;
use crate::App;

/// What OpenAI clients send when the user names no model.
const DEFAULT_MODEL: &str = "whisper-1";

pub async fn transcriptions(State(app): State<Arc<App>>, request: Request) -> Response {
    answer(app, request, false).await
}

pub async fn translations(State(app): State<Arc<App>>, request: Request) -> Response {
    answer(app, request, true).await
}

async fn answer(app: Arc<App>, request: Request, translate: bool) -> Response {
    let speech = app.workers.iter().find(|w| w.task.input().kind == InputKind::Audio).map(|w| w.task.name());
    let response = transcribe(&app, request, translate).await.unwrap_or_else(IntoResponse::into_response);
    api::labelled(speech.unwrap_or(""), response)
}

/// The served speech model `name` asks for: `whisper-1` (or nothing) is the first one served.
fn speech_worker<'a>(app: &'a App, name: Option<&str>) -> Result<&'a Arc<Worker>, ApiError> {
    let mut speech = app.workers.iter().filter(|w| w.task.input().kind == InputKind::Audio);
    let served: Vec<&str> = speech.clone().map(|w| w.model_id.as_str()).collect();
    let found = match name.map(str::trim) {
        None | Some("") | Some(DEFAULT_MODEL) => speech.next(),
        Some(id) => speech.find(|w| w.model_id == id),
    };
    found.ok_or_else(|| {
        let message = match name {
            Some(id) if !served.is_empty() => {
                format!(
                    "model '{id}' is not served here; speech models served: {} (or {DEFAULT_MODEL})",
                    served.join(", ")
                )
            }
            _ => "no speech recognition model is served here (start zoo serve with --task speech-recognition)".into(),
        };
        ApiError::new(StatusCode::NOT_FOUND, message)
    })
}

async fn transcribe(app: &App, request: Request, translate: bool) -> Result<Response, ApiError> {
    let mut form = api::read_form(app, api::multipart(request).await?).await?;
    let worker = speech_worker(app, form.field("model"))?;
    let mut files = std::mem::take(&mut form.files).into_iter().filter(|(field, _, _)| field == "file");
    let Some((_, file_name, bytes)) = files.next() else {
        return Err(ApiError::bad_request("no audio given: send the recording as the multipart field 'file'"));
    };
    if files.next().is_some() {
        return Err(ApiError::bad_request("one 'file' per request"));
    }
    let response_format = form.field("response_format").unwrap_or("json").trim().to_ascii_lowercase();
    let granularities: Vec<&str> = form
        .fields
        .iter()
        .filter(|(name, _)| name == "timestamp_granularities[]" || name == "timestamp_granularities")
        .map(|(_, value)| value.trim())
        .collect();
    if let Some(bad) = granularities.iter().find(|g| !matches!(**g, "segment" | "word")) {
        return Err(ApiError::bad_request(format!("timestamp_granularities: '{bad}' is not segment or word")));
    }
    let words = granularities.contains(&"word");
    if words && response_format != "verbose_json" {
        return Err(ApiError::bad_request("timestamp_granularities needs response_format verbose_json"));
    }

    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (field, option) in [("language", "language"), ("prompt", "prompt"), ("temperature", "temperature")] {
        if let Some(value) = form.field(field).filter(|v| !v.trim().is_empty()) {
            pairs.push((option, value.to_string()));
        }
    }
    if translate {
        pairs.push(("task", "translate".into()));
    }
    // Not in OpenAI's API: the field OpenAI-style servers for faster-whisper (speaches) take for
    // its vad_filter, so their clients' requests keep their meaning here.
    if let Some(value) = form.field("vad_filter").filter(|v| !v.trim().is_empty()) {
        pairs.push(("vad", value.trim().to_string()));
    }
    match response_format.as_str() {
        "json" | "text" | "verbose_json" => {}
        "srt" | "vtt" => pairs.push(("format", response_format.clone())),
        other => {
            return Err(ApiError::bad_request(format!(
                "response_format '{other}' is not one of json, text, srt, verbose_json, vtt"
            )))
        }
    }
    if words {
        pairs.push(("explain", "true".into()));
    }
    let options =
        zoo_pipeline::request_options(worker.task, pairs).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let input_bytes = bytes.len();
    let input = api::upload(&file_name, bytes, 0);
    let outcomes = api::run_on(worker, vec![input], options, crate::deadline(&app.config, input_bytes)).await?;
    if let Some(error) = api::all_failed(&outcomes) {
        return Err(error);
    }
    let outcome = &outcomes[0];
    let text = outcome.result.as_ref().ok().and_then(|p| p.text()).unwrap_or_default();
    let plain = |body: String| ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    Ok(match response_format.as_str() {
        "json" => Json(json!({"text": text})).into_response(),
        "text" => plain(format!("{text}\n")),
        "srt" | "vtt" => plain(outcome.document().unwrap_or_default()),
        _ => Json(verbose(outcome.json(), translate, words)).into_response(),
    })
}

/// OpenAI's `verbose_json` from zoo's result object: its segments with ids and seek positions,
/// and every word at the top level when words were asked for.
fn verbose(zoo: Map<String, Value>, translate: bool, words: bool) -> Value {
    let segments: Vec<Value> = zoo
        .get("segments")
        .and_then(Value::as_array)
        .map(|segments| {
            segments
                .iter()
                .enumerate()
                .map(|(id, s)| {
                    let start = s["start"].as_f64().unwrap_or(0.0);
                    json!({
                        "id": id, "seek": (start * 100.0).round() as u64, "start": s["start"], "end": s["end"],
                        "text": format!(" {}", s["text"].as_str().unwrap_or("")), "tokens": [],
                        "temperature": s["temperature"], "avg_logprob": s["avg_logprob"],
                        "no_speech_prob": s["no_speech_prob"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = json!({
        "task": if translate { "translate" } else { "transcribe" },
        "language": zoo.get("language").cloned().unwrap_or(Value::Null),
        "duration": zoo.get("duration").cloned().unwrap_or(Value::Null),
        "text": zoo.get("text").cloned().unwrap_or(Value::Null),
        "segments": segments,
    });
    if words {
        let all: Vec<Value> = zoo
            .get("segments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|s| s.get("words").and_then(Value::as_array).cloned().unwrap_or_default())
            .map(|w| json!({"word": w["text"], "start": w["start"], "end": w["end"]}))
            .collect();
        out["words"] = all.into();
    }
    out
}
