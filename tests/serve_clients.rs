//! `zoo serve` through the clients its protocols' users already have, unchanged: OpenAI's `openai`
//! Python package on the audio routes and Triton's `tritonclient[http]` on the Open Inference
//! Protocol (tests/python/clients.py). Both are installed from the package registry into a venv
//! under target/ by this test; where that fails it fails under CI and skips loudly elsewhere. Their
//! answers must equal what `zoo run` prints for the same inputs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use server::Server;
use zoo_bin::{cli_json, data, pinned_venv, run_bounded, zoo_with};
use zoo_runtime::test_support::{repo_root, shared_assets, shared_hub_cache};

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;

/// The clients, pinned so that a new release cannot change what is tested without a commit.
const CLIENTS: &[&str] = &["openai==3.57.0", "tritonclient[http]==2.73.0"];

fn client_python() -> Option<PathBuf> {
    pinned_venv("serve-clients-venv", CLIENTS, "the openai and tritonclient tests did not run")
}

fn without_input(value: &Value) -> Value {
    let mut value = value.clone();
    value.as_object_mut().unwrap().remove("input");
    value
}

#[test]
fn openai_and_tritonclient_get_what_the_cli_prints() {
    let test = "openai_and_tritonclient_get_what_the_cli_prints";
    let (Some(cache), Some(assets)) = (shared_hub_cache(test), shared_assets(test)) else { return };
    let Some(python) = client_python() else { return };
    let server = Server::start(
        &cache,
        &["--task", "speech-recognition", "--task", "fake-news", "--task", "image-classification"],
    );
    let audio = assets.join("data/speech/audio/jfk.wav");
    let image = data("coffee.png");
    let text = "Drinking hot water every fifteen minutes kills the coronavirus, says a viral message.";
    let mut cmd = Command::new(&python);
    cmd.arg(repo_root().join("tests/python/clients.py"))
        .arg(&server.base)
        .arg(&audio)
        .arg(&image)
        .arg(text)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    let run = run_bounded(cmd, None, Duration::from_secs(600)).finished("tests/python/clients.py");
    assert_eq!(run.code, 0, "{}\n--- server\n{}", run.describe(), server.stderr());
    let out: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));

    let audio_arg = audio.to_str().unwrap();
    let speech = &cli_json(&cache, &["asr", audio_arg])[0];
    assert_eq!(out["openai_json"], speech["text"]);
    assert_eq!(out["openai_verbose"]["text"], speech["text"]);
    assert_eq!(out["openai_verbose"]["segments"], speech["segments"].as_array().unwrap().len());
    let explained = &cli_json(&cache, &["asr", audio_arg, "--explain"])[0];
    let words: Vec<Value> = explained["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["words"].as_array().unwrap().iter().map(|w| w["text"].clone()))
        .collect();
    assert_eq!(out["openai_verbose"]["words"], Value::Array(words));
    let srt = zoo_with(Some(&cache), &["run", "asr", audio_arg, "--format", "srt"], None);
    assert_eq!(out["openai_srt"].as_str().unwrap().trim_end(), srt.stdout.trim_end());
    assert_eq!(out["openai_unknown_model"], 404);

    assert_eq!(out["triton_live"], true);
    assert_eq!(out["triton_ready"], true);
    assert_eq!(out["triton_metadata_outputs"], serde_json::json!(["json", "label", "score"]));
    let second = "The WHO published its weekly situation report today.";
    let texts =
        [&cli_json(&cache, &["fake-news", "--text", text])[0], &cli_json(&cache, &["fake-news", "--text", second])[0]];
    for (i, cli) in texts.iter().enumerate() {
        assert_eq!(out["triton_text"]["label"][i], cli["label"]);
        let score = out["triton_text"]["score"][i].as_f64().unwrap();
        let expected = cli["scores"][cli["label"].as_str().unwrap()].as_f64().unwrap();
        assert!((score - expected).abs() < 1e-5, "{score} vs {expected}");
        let served = without_input(&out["triton_text"]["json"][i]);
        let cli = without_input(cli);
        assert_eq!(served["label"], cli["label"]);
        assert_eq!(served["windows"], cli["windows"]);
    }
    let classified = &cli_json(&cache, &["image-classification", image.to_str().unwrap()])[0];
    assert_eq!(out["triton_image"]["label"][0], classified["predictions"][0]["label"]);
    assert_eq!(without_input(&out["triton_image"]["json"][0]), without_input(classified));
}
