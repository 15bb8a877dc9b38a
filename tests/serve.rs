//! End-to-end tests of `zoo serve` with the real models (the bundled ones and the shared hub
//! cache's MiniLM and Whisper tiny.en): every route answers what `zoo run --json` prints for the
//! same inputs, bad requests get the CLI's message with the right status, and the server holds up
//! under overload, disconnects and SIGTERM. Each test starts its own server on an ephemeral port
//! and stops it, whatever happens.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use server::{get, get_with, metric, post, post_json, post_multipart, Part, Server};
use zoo_bin::{cli_json, data, zoo_with};
use zoo_runtime::test_support::{shared_assets, shared_hub_cache};

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;

struct Setup {
    cache: PathBuf,
    speech: PathBuf,
}

fn setup(test: &str) -> Option<Setup> {
    let cache = shared_hub_cache(test)?;
    let assets = shared_assets(test)?;
    Some(Setup { cache, speech: assets.join("data/speech") })
}

/// The CLI's one error line without its `zoo: error: ` prefix.
fn cli_error(cache: &Path, args: &[&str]) -> String {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let run = zoo_with(Some(cache), &all, None);
    assert_ne!(run.code, 0, "{}", run.describe());
    run.error_line().trim_start_matches("zoo: error: ").to_string()
}

/// Equal but for `input` (a path for the CLI, the upload's name for the server), numbers within
/// 1e-5: batches of other sizes may round differently in the last bits.
fn assert_same(served: &Value, cli: &Value, path: &str) {
    match (served, cli) {
        (Value::Object(a), Value::Object(b)) => {
            let keys = |m: &serde_json::Map<String, Value>| -> Vec<String> {
                m.keys().filter(|k| !(path.is_empty() && *k == "input")).cloned().collect()
            };
            assert_eq!(keys(a), keys(b), "fields differ at '{path}'\nserved {served}\ncli    {cli}");
            for key in keys(a) {
                assert_same(&a[&key], &b[&key], &format!("{path}/{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "lengths differ at '{path}'");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{path}/{i}"));
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-5, "'{path}': served {a}, cli {b}");
        }
        (a, b) => assert_eq!(a, b, "'{path}' differs"),
    }
}

/// An OIP inference of one element sent as tritonclient sends it: a JSON header, then the binary
/// `BYTES` tensor (a u32 length and the bytes).
fn infer_binary(server: &Server, model: &str, element: &[u8], outputs: Value) -> server::Reply {
    let header = json!({
        "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": element.len() + 4}}],
        "outputs": outputs,
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&(element.len() as u32).to_le_bytes());
    body.extend_from_slice(element);
    let length = header.len().to_string();
    post(
        &server.url(&format!("/v2/models/{model}/infer")),
        "application/octet-stream",
        &body,
        &[("Inference-Header-Content-Length", &length)],
    )
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

fn results(reply: &server::Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["results"].as_array().expect("results").clone()
}

#[test]
fn every_route_answers_what_the_cli_prints() {
    let Some(setup) = setup("every_route_answers_what_the_cli_prints") else { return };
    let cache = &setup.cache;
    let server = Server::start(cache, &[]);
    let coffee = std::fs::read(data("coffee.png")).unwrap();
    let chelsea = std::fs::read(data("chelsea.png")).unwrap();
    let jfk_path = setup.speech.join("audio/jfk.wav");
    let jfk = std::fs::read(&jfk_path).unwrap();
    let (coffee_path, chelsea_path) = (data("coffee.png"), data("chelsea.png"));
    let (coffee_arg, chelsea_arg) = (coffee_path.to_str().unwrap(), chelsea_path.to_str().unwrap());

    // Every task whose default model is bundled or cached is served.
    let health = get(&server.url("/health")).json();
    let served: Vec<&str> = health["models"].as_array().unwrap().iter().map(|m| m["task"].as_str().unwrap()).collect();
    assert_eq!(
        served,
        [
            "image-classification",
            "fake-news",
            "style-transfer",
            "speech-recognition",
            "object-detection",
            "face-recognition"
        ],
        "{health}"
    );
    assert_eq!(get(&server.url("/v2/health/live")).status, 200);
    assert_eq!(get(&server.url("/v2/health/ready")).status, 200);

    // Native multipart: two images in one request, options as a query parameter.
    let reply = post_multipart(
        &server.url("/v1/run/image-classification?top_k=3"),
        &[("file", Part::File("coffee.png", &coffee)), ("file", Part::File("chelsea.png", &chelsea))],
        &[],
    );
    let served = results(&reply);
    let cli = cli_json(cache, &["image-classification", coffee_arg, chelsea_arg, "--top-k", "3"]);
    assert_eq!(served.len(), 2);
    for (s, c) in served.iter().zip(&cli) {
        assert_same(s, c, "");
    }
    assert_eq!(served[0]["input"], "coffee.png");
    assert_eq!(served[1]["input"], "chelsea.png");
    // The alias, and options as multipart fields.
    let reply = post_multipart(
        &server.url("/v1/run/classify"),
        &[("file", Part::File("coffee.png", &coffee)), ("top_k", Part::Text("3"))],
        &[],
    );
    assert_same(&results(&reply)[0], &cli[0], "");

    // Object detection: the CLI's boxes, options by their snake_case names.
    let reply = post_multipart(
        &server.url("/v1/run/detect?min_score=0.3&classes=cup,bowl"),
        &[("file", Part::File("coffee.png", &coffee))],
        &[],
    );
    let cli = cli_json(cache, &["object-detection", coffee_arg, "--min-score", "0.3", "--classes", "cup,bowl"]);
    assert!(cli[0]["objects"].as_array().unwrap().len() >= 2, "{}", cli[0]);
    assert_same(&results(&reply)[0], &cli[0], "");

    // Face recognition: the CLI's faces and landmarks, through an alias.
    let astronaut_path = data("astronaut.jpg");
    let astronaut = std::fs::read(&astronaut_path).unwrap();
    let reply = post_multipart(
        &server.url("/v1/run/faces?descriptors=true"),
        &[("file", Part::File("astronaut.jpg", &astronaut))],
        &[],
    );
    let cli = cli_json(cache, &["face-recognition", astronaut_path.to_str().unwrap(), "--descriptors"]);
    assert_eq!(cli[0]["faces"].as_array().unwrap().len(), 1, "{}", cli[0]);
    assert_same(&results(&reply)[0], &cli[0], "");

    // Native JSON for text, with explain.
    let claim = "5G towers spread the coronavirus, a viral message claims.";
    let reply = post_json(&server.url("/v1/run/fake-news"), &json!({"inputs": [claim], "options": {"explain": true}}));
    let cli = cli_json(cache, &["fake-news", "--text", claim, "--explain"]);
    assert_same(&results(&reply)[0], &cli[0], "");
    assert!(cli[0].get("explanation").is_some(), "{}", cli[0]);

    // Style transfer answers the picture itself: the same bytes the CLI writes.
    let out = tempfile::tempdir().unwrap();
    let written = out.path().join("styled.png");
    cli_json(cache, &["style-transfer", coffee_arg, "--style", "3", "--output", written.to_str().unwrap()]);
    let reply = post_multipart(
        &server.url("/v1/run/style-transfer?style=3"),
        &[("file", Part::File("coffee.png", &coffee))],
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type, "image/png");
    assert!(reply.body == std::fs::read(&written).unwrap(), "the served picture differs from the CLI's");
    let jpeg = post_multipart(
        &server.url("/v1/run/style-transfer?style=3"),
        &[("file", Part::File("coffee.png", &coffee))],
        &[("Accept", "image/jpeg")],
    );
    assert_eq!(jpeg.content_type, "image/jpeg");
    assert_eq!(&jpeg.body[..2], [0xff, 0xd8]);

    // A painting's style: the painting comes as an upload where the CLI takes --style-image FILE.
    let painted = out.path().join("painted.png");
    let painted_arg = painted.to_str().unwrap();
    let args =
        ["style-transfer", coffee_arg, "--style-image", chelsea_arg, "--strength", "0.7", "--output", painted_arg];
    let cli = cli_json(cache, &args);
    let reply = post_multipart(
        &server.url("/v1/run/style-transfer?strength=0.7"),
        &[("file", Part::File("coffee.png", &coffee)), ("style_image", Part::File("chelsea.png", &chelsea))],
        &[("Accept", "application/json")],
    );
    let served = &results(&reply)[0];
    assert_eq!(served["model"], "magenta-arbitrary");
    assert_eq!(served["style"]["image"], "chelsea.png", "named by the upload's name, as the CLI names its path");
    assert_eq!(served["style"]["strength"], cli[0]["style"]["strength"]);
    assert_eq!((&served["width"], &served["height"]), (&cli[0]["width"], &cli[0]["height"]));
    let png = base64_decode(served["image_png_base64"].as_str().unwrap());
    assert!(png == std::fs::read(&painted).unwrap(), "the served painting's style differs from the CLI's");
    let reply = post_multipart(
        &server.url("/v1/run/style-transfer?style_image=chelsea.png"),
        &[("file", Part::File("coffee.png", &coffee))],
        &[],
    );
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.error().contains("send the file itself"), "{}", reply.error());
    let reply = post_multipart(
        &server.url("/v1/run/style-transfer"),
        &[("file", Part::File("coffee.png", &coffee)), ("style_image", Part::File("notes.txt", b"not a painting"))],
        &[],
    );
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.error().contains("notes.txt") && reply.error().contains("style-image"), "{}", reply.error());

    // The contact sheet comes back instead of being written, with its grid to cut it by.
    let sheet = out.path().join("sheet.png");
    let cli = cli_json(cache, &["style-transfer", coffee_arg, "--contact-sheet", sheet.to_str().unwrap()]);
    let reply = post_multipart(
        &server.url("/v1/run/style-transfer?contact_sheet=true"),
        &[("file", Part::File("coffee.png", &coffee))],
        &[("Accept", "application/json")],
    );
    let served = &results(&reply)[0];
    assert_eq!(served["style"], cli[0]["style"]);
    assert_eq!(served["cells"], cli[0]["cells"]);
    assert_eq!(served["cells"]["columns"], 7, "{served}");
    let png = base64_decode(served["image_png_base64"].as_str().unwrap());
    assert!(png == std::fs::read(&sheet).unwrap(), "the served contact sheet differs from the CLI's");

    // Speech: native, then OpenAI's route in each response format.
    let cli = cli_json(cache, &["speech-recognition", jfk_path.to_str().unwrap()]);
    let reply = post_multipart(&server.url("/v1/run/asr"), &[("file", Part::File("jfk.wav", &jfk))], &[]);
    assert_same(&results(&reply)[0], &cli[0], "");
    let transcript = cli[0]["text"].as_str().unwrap();
    let openai = |format: &str| {
        post_multipart(
            &server.url("/v1/audio/transcriptions"),
            &[
                ("file", Part::File("jfk.wav", &jfk)),
                ("model", Part::Text("whisper-1")),
                ("response_format", Part::Text(format)),
            ],
            &[],
        )
    };
    assert_eq!(openai("json").json(), json!({"text": transcript}));
    assert_eq!(openai("text").text(), format!("{transcript}\n"));
    let srt = zoo_with(Some(cache), &["run", "asr", jfk_path.to_str().unwrap(), "--format", "srt"], None);
    assert_eq!(openai("srt").text().trim_end(), srt.stdout.trim_end());
    // The native route carries the document a format option asks for (the page's SRT download).
    let reply = post_multipart(&server.url("/v1/run/asr?format=srt"), &[("file", Part::File("jfk.wav", &jfk))], &[]);
    assert_eq!(results(&reply)[0]["document"].as_str().unwrap().trim_end(), srt.stdout.trim_end());
    let verbose = openai("verbose_json").json();
    assert_eq!(verbose["text"], transcript);
    assert_eq!(verbose["segments"].as_array().unwrap().len(), cli[0]["segments"].as_array().unwrap().len());
    // --vad as a request option, natively and as the vad_filter field OpenAI-style servers for
    // faster-whisper take: the same speech and times as the CLI's (goforward's speech starts at 0.11 s).
    let goforward_path = setup.speech.join("audio/goforward.wav");
    let goforward = std::fs::read(&goforward_path).unwrap();
    let cli = cli_json(cache, &["speech-recognition", goforward_path.to_str().unwrap(), "--vad"]);
    assert_eq!(cli[0]["speech"], json!([[0.112, 2.786]]), "{}", cli[0]);
    let reply =
        post_multipart(&server.url("/v1/run/asr?vad=true"), &[("file", Part::File("goforward.wav", &goforward))], &[]);
    assert_same(&results(&reply)[0], &cli[0], "");
    let filtered = post_multipart(
        &server.url("/v1/audio/transcriptions"),
        &[
            ("file", Part::File("goforward.wav", &goforward)),
            ("response_format", Part::Text("verbose_json")),
            ("vad_filter", Part::Text("true")),
        ],
        &[],
    )
    .json();
    assert_eq!(filtered["text"], cli[0]["text"]);
    assert_eq!(filtered["segments"][0]["start"], cli[0]["segments"][0]["start"]);
    let unknown = post_multipart(
        &server.url("/v1/audio/transcriptions"),
        &[("file", Part::File("jfk.wav", &jfk)), ("model", Part::Text("whisper-large"))],
        &[],
    );
    assert_eq!(unknown.status, 404);
    assert!(unknown.error().contains("faster-whisper-tiny.en"));

    // The catalogue views equal `zoo list --json` for the served models.
    let list = zoo_with(Some(cache), &["list", "--json"], None).json_lines();
    let models = get(&server.url("/v1/models")).json();
    for m in models["data"].as_array().unwrap() {
        let listed = list.iter().find(|l| l["model"] == m["id"]).unwrap_or_else(|| panic!("{m} not listed"));
        for (key, value) in listed.as_object().unwrap() {
            assert_eq!(&m[key], value, "{key} of {}", m["id"]);
        }
    }
    let tasks = get(&server.url("/v1/tasks")).json();
    let image = tasks["tasks"].as_array().unwrap().iter().find(|t| t["task"] == "image-classification").unwrap();
    let options: Vec<&str> = image["options"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert!(options.contains(&"top-k") && !options.contains(&"max-pixels"), "{options:?}");

    // Open Inference Protocol, JSON: text in, label/score/json out.
    let infer = post_json(
        &server.url("/v2/models/fake-news/infer"),
        &json!({"id": "7", "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [claim]}]}),
    );
    assert_eq!(infer.status, 200, "{}", infer.text());
    let body = infer.json();
    assert_eq!(body["id"], "7");
    let output = |name: &str| body["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).cloned().unwrap();
    let cli = cli_json(cache, &["fake-news", "--text", claim]);
    assert_eq!(output("label")["data"][0], cli[0]["label"]);
    let score = output("score")["data"][0].as_f64().unwrap();
    assert!((score - cli[0]["scores"][cli[0]["label"].as_str().unwrap()].as_f64().unwrap()).abs() < 1e-5);
    let object: Value = serde_json::from_str(output("json")["data"][0].as_str().unwrap()).unwrap();
    assert_same(&object, &cli[0], "");
    // ... and binary, as tritonclient sends it: an image's bytes, answered in binary.
    let outputs = json!([
        {"name": "label", "parameters": {"binary_data": true}},
        {"name": "score", "parameters": {"binary_data": false}},
    ]);
    let infer = infer_binary(&server, "efficientnet-lite0", &coffee, outputs);
    assert_eq!(infer.status, 200, "{}", infer.text());
    let json_length: usize = infer.header("inference-header-content-length").unwrap().parse().unwrap();
    let head: Value = serde_json::from_slice(&infer.body[..json_length]).unwrap();
    let label = &infer.body[json_length + 4..];
    assert_eq!(std::str::from_utf8(label).unwrap(), "espresso", "{head}");
    // Text as binary BYTES is checked as an uploaded text file is: bad UTF-8 is the CLI's error.
    let infer = infer_binary(&server, "fake-news", b"a\xffb", json!([]));
    let bad_text = out.path().join("input[0]");
    std::fs::write(&bad_text, b"a\xffb").unwrap();
    let message = cli_error(cache, &["fake-news", bad_text.to_str().unwrap()]);
    assert_eq!(infer.status, 400);
    assert_eq!(infer.error(), format!("input[0]: {}", message.split_once(": ").unwrap().1));
    let meta = get(&server.url("/v2/models/style-transfer")).json();
    let outputs: Vec<&str> = meta["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(outputs, ["json", "image"], "{meta}");
    assert_eq!(get(&server.url("/v2/models/fake-news/ready")).status, 200);
    assert_eq!(get(&server.url("/v2/models/nothing/ready")).status, 404);

    // Bad input: the CLI's message for the same bytes under the same name, status 400.
    let broken = out.path().join("broken.png");
    std::fs::write(&broken, &coffee[..coffee.len() / 3]).unwrap();
    let message = cli_error(cache, &["image-classification", broken.to_str().unwrap()]);
    let reply = post_multipart(
        &server.url("/v1/run/image-classification"),
        &[("file", Part::File("broken.png", &coffee[..coffee.len() / 3]))],
        &[],
    );
    assert_eq!(reply.status, 400);
    let reason = message.split_once(": ").unwrap().1;
    assert_eq!(reply.error(), format!("broken.png: {reason}"));
    // One bad input among good ones: 200, its error in its place, as the CLI's JSON lines.
    let reply = post_multipart(
        &server.url("/v1/run/image-classification"),
        &[("file", Part::File("coffee.png", &coffee)), ("file", Part::File("broken.png", &coffee[..100]))],
        &[],
    );
    let mixed = results(&reply);
    assert!(mixed[0].get("predictions").is_some() && mixed[1]["error"].as_str().unwrap().starts_with("broken.png: "));
    // A bad option value: 422 and the CLI's message.
    let message = cli_error(cache, &["image-classification", coffee_arg, "--top-k", "many"]);
    let reply = post_multipart(
        &server.url("/v1/run/image-classification?top_k=many"),
        &[("file", Part::File("coffee.png", &coffee))],
        &[],
    );
    assert_eq!((reply.status, reply.error()), (422, message));
    for (query, expect) in
        [("colour=red", "unknown option 'colour'"), ("max_pixels=1", "operator"), ("explain_out=/tmp", "names a path")]
    {
        let reply =
            post_json(&server.url(&format!("/v1/run/image-classification?{query}")), &json!({"inputs": ["AAAA"]}));
        assert_eq!(reply.status, 422, "{query}: {}", reply.text());
        assert!(reply.error().contains(expect), "{query}");
    }
    let reply = post_json(&server.url("/v1/run/style-transfer?explain=true"), &json!({"inputs": ["AAAA"]}));
    assert_eq!(reply.status, 422);
    assert!(reply.error().contains("nothing to explain"));
    let not_json = post(&server.url("/v1/run/fake-news"), "application/json", b"{inputs", &[]);
    assert_eq!(not_json.status, 400);
    assert!(not_json.error().contains("not JSON"));
    let empty = post_multipart(&server.url("/v1/run/fake-news"), &[("file", Part::File("empty.txt", b""))], &[]);
    assert_eq!((empty.status, empty.error()), (400, "empty.txt: the file is empty".to_string()));
    let wrong = post_json(&server.url("/v1/run/pose-estimation"), &json!({"inputs": ["x"]}));
    assert_eq!(wrong.status, 404);
    assert!(wrong.error().contains("not served here"));

    // Every answer was counted.
    assert!(metric(&server, "zoo_requests_total", &["task=\"image-classification\"", "status=\"200\""]) >= 3.0);
    assert!(metric(&server, "zoo_requests_total", &["status=\"422\""]) >= 4.0);
    assert!(metric(&server, "zoo_inference_seconds_count", &["efficientnet-lite0"]) >= 3.0);
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

#[test]
fn overload_answers_429_and_loses_nothing() {
    let Some(setup) = setup("overload_answers_429_and_loses_nothing") else { return };
    let server = Server::start(&setup.cache, &["--task", "style-transfer", "--max-queue", "2", "--max-batch", "1"]);
    let photo = std::fs::read(data("chelsea.png")).unwrap();
    let url = server.url("/v1/run/style-transfer?style=7");
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let (url, photo) = (url.clone(), photo.clone());
            std::thread::spawn(move || {
                let reply = post_multipart(&url, &[("file", Part::File("chelsea.png", &photo))], &[]);
                if reply.status == 429 {
                    assert!(reply.header("retry-after").is_some());
                    assert!(reply.error().contains("--max-queue"));
                }
                reply.status
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().expect("a client")).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + refused, statuses.len(), "only 200 or 429: {statuses:?}");
    assert!(ok >= 1 && refused >= 1, "{statuses:?}");
    assert_eq!(get(&server.url("/health")).status, 200);
    // The server still works, and counted what it refused.
    let reply = post_multipart(&url, &[("file", Part::File("chelsea.png", &photo))], &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(metric(&server, "zoo_requests_total", &["status=\"429\""]) as usize, refused);
}

#[test]
fn api_key_payload_limit_and_broken_uploads() {
    let Some(setup) = setup("api_key_payload_limit_and_broken_uploads") else { return };
    let server = Server::start(
        &setup.cache,
        &["--task", "image-classification", "--api-key", "s3cret", "--payload-limit", "1MB"],
    );
    let coffee = std::fs::read(data("coffee.png")).unwrap();
    let url = server.url("/v1/run/image-classification");
    let file = [("file", Part::File("coffee.png", &coffee[..]))];
    // (Small bodies: the refusal comes before the body is read, and a client still sending a
    // large one then meets a closed connection.)
    let small = br#"{"inputs": ["AAAA"]}"#;
    let missing = post(&url, "application/json", small, &[]);
    assert_eq!(missing.status, 401);
    assert!(missing.error().contains("API key"));
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(post(&url, "application/json", small, &[("Authorization", "Bearer wrong")]).status, 401);
    assert_eq!(get(&server.url("/v1/models")).status, 401);
    let key = [("Authorization", "Bearer s3cret")];
    assert_eq!(post_multipart(&url, &file, &key).status, 200);
    assert_eq!(get_with(&server.url("/v1/models"), &key).status, 200);
    // Health and metrics are for probes and scrapers, which hold no key.
    for open in ["/health", "/v2/health/live", "/v2/health/ready", "/metrics"] {
        assert_eq!(get(&server.url(open)).status, 200, "{open}");
    }

    // Over the limit by its declared length: 413 before the body is read.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(
        stream,
        "POST /v1/run/image-classification HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
         Content-Type: application/json\r\nContent-Length: 3000000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = server::read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--payload-limit"), "{answer}");
    // Over the limit without a declared length (chunked): 413 as the limit passes.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(
        stream,
        "POST /v1/run/image-classification HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    for _ in 0..150 {
        if write!(stream, "2710\r\n{}\r\n", "x".repeat(10_000)).is_err() {
            break;
        }
    }
    let _ = write!(stream, "0\r\n\r\n");
    let answer = server::read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A client that goes away mid-upload leaves the server as it was.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        let (content_type, body) = server::multipart(&file);
        write!(
            stream,
            "POST /v1/run/image-classification HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body[..body.len() / 2]).unwrap();
        drop(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&server.url("/health")).status, 200);
    assert_eq!(post_multipart(&url, &file, &key).status, 200);
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// `--set TASK.OPTION=VALUE` loads the served model with options a request may not set: a long
/// recording served with batched pieces in int8 is what `zoo run` prints with those options
/// (batched pieces make one segment per piece, so a server that dropped them would differ).
#[test]
fn operator_options_load_the_served_model_as_the_cli_runs_it() {
    let Some(setup) = setup("operator_options_load_the_served_model_as_the_cli_runs_it") else { return };
    let cache = setup.cache.as_path();
    let long_path = setup.speech.join("long/long_dev_concat.wav");
    let options = ["--batch-size", "8", "--compute-type", "int8"];
    let mut args = vec!["asr", long_path.to_str().unwrap()];
    args.extend(options);
    let cli = cli_json(cache, &args);
    let server = Server::start(
        cache,
        &["--task", "asr", "--set", "asr.batch-size=8", "--set", "speech-recognition.compute_type=int8"],
    );
    let reply =
        post_multipart(&server.url("/v1/run/asr"), &[("file", Part::File("long.wav", &long_recording(&setup)))], &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_same(&results(&reply)[0], &cli[0], "");
    // What the operator set, a request still may not.
    let reply = post_multipart(
        &server.url("/v1/run/asr?batch_size=1"),
        &[("file", Part::File("jfk.wav", &std::fs::read(setup.speech.join("audio/jfk.wav")).unwrap()))],
        &[],
    );
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.error().contains("operator"), "{}", reply.error());
    drop(server);
    // A name the task does not have, or a task not served: a usage error before anything loads.
    for (set, expect) in [
        ("asr.batchsize=8", "--set: unknown option 'batchsize' for task 'speech-recognition'; its options: "),
        ("classify.top-k=3", "--set image-classification.top-k: task 'image-classification' is not served"),
        ("batch-size=8", "invalid value 'batch-size=8' for --set: TASK.OPTION=VALUE"),
    ] {
        let run = zoo_with(Some(cache), &["serve", "--port", "0", "--task", "asr", "--set", set], None);
        assert_eq!(run.code, 2, "{set}: {}", run.describe());
        assert!(run.error_line().contains(expect), "{set}: {}", run.describe());
    }
}

/// A long recording that keeps the speech model busy for a while on any machine.
fn long_recording(setup: &Setup) -> Vec<u8> {
    std::fs::read(setup.speech.join("long/long_dev_concat.wav")).unwrap()
}

#[test]
fn a_client_that_leaves_before_its_turn_costs_no_inference() {
    let Some(setup) = setup("a_client_that_leaves_before_its_turn_costs_no_inference") else { return };
    let server = Server::start(&setup.cache, &["--task", "speech-recognition", "--max-batch", "1"]);
    let long = long_recording(&setup);
    let jfk = std::fs::read(setup.speech.join("audio/jfk.wav")).unwrap();
    let url = server.url("/v1/run/asr");
    let busy = std::thread::spawn(move || post_multipart(&url, &[("file", Part::File("long.wav", &long))], &[]).status);
    // Wait until the long one runs, then queue a request behind it and leave.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&server, "zoo_queue_seconds_count", &[]) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the long request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (content_type, body) = server::multipart(&[("file", Part::File("jfk.wav", &jfk))]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(
        stream,
        "POST /v1/run/asr HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(&server, "zoo_queue_depth", &[]), 1.0, "the second request is queued");
    drop(stream);
    assert_eq!(busy.join().unwrap(), 200);
    // The long request ran; the abandoned one did not.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(metric(&server, "zoo_inference_seconds_count", &[]), 1.0);
    assert_eq!(metric(&server, "zoo_abandoned_requests_total", &[]), 1.0);
    assert_eq!(metric(&server, "zoo_queue_depth", &[]), 0.0);
}

#[test]
fn sigterm_finishes_the_requests_in_flight_then_exits_0() {
    let Some(setup) = setup("sigterm_finishes_the_requests_in_flight_then_exits_0") else { return };
    let mut server = Server::start(&setup.cache, &["--task", "speech-recognition"]);
    let long = long_recording(&setup);
    let url = server.url("/v1/run/asr");
    let in_flight = std::thread::spawn(move || post_multipart(&url, &[("file", Part::File("long.wav", &long))], &[]));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&server, "zoo_queue_seconds_count", &[]) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = server.port();
    let code = server.terminate(Duration::from_secs(600));
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.json()["results"][0]["text"].as_str().unwrap().to_string();
    assert!(text.contains("ask not what your country can do for you"), "{text}");
    assert_eq!(code, Some(0), "{}", server.stderr());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "still listening after it stopped");
}

#[test]
fn an_upload_slower_than_the_timeout_gets_408() {
    let Some(setup) = setup("an_upload_slower_than_the_timeout_gets_408") else { return };
    let server = Server::start(&setup.cache, &["--task", "image-classification", "--timeout", "1"]);
    let coffee = std::fs::read(data("coffee.png")).unwrap();
    let (content_type, body) = server::multipart(&[("file", Part::File("coffee.png", &coffee))]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(
        stream,
        "POST /v1/run/image-classification HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A tenth of the body, then nothing: the server must not wait for the rest forever.
    stream.write_all(&body[..body.len() / 10]).unwrap();
    let answer = server::read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    let reply = post_multipart(
        &server.url("/v1/run/image-classification"),
        &[("file", Part::File("coffee.png", &coffee))],
        &[],
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
}
