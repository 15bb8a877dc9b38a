//! zoo serve's page (`GET /`) in a real headless Chromium, driven by Playwright
//! (tests/python/page.py) as a person would use it: every task with a real file or text, its
//! explanation, an error, the microphone, downloads and the API key field. What the page shows
//! must be what `zoo run --json` says for the same input, and it must load nothing from anywhere
//! but the server. Screenshots land in target/page-screenshots/.
//!
//! Needs Debian's chromium (.ci/run installs it) and Playwright from the package registry (made
//! into a venv under target/ here); where either is missing it fails under CI and skips loudly
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use server::{get, Server};
use zoo_bin::{cli_json, data, pinned_venv, run_bounded, skip_or_fail, zoo_with};
use zoo_runtime::test_support::{repo_root, shared_assets, shared_hub_cache};

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;

/// Pinned so that a new release cannot change what is tested without a commit.
const PLAYWRIGHT: &str = "playwright==1.65.2";
const KEY: &str = "page-test-key";

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("ZOO_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    if path.exists() {
        Some(path)
    } else {
        let why = format!("{} not found (install Debian's chromium, or set ZOO_CHROMIUM)", path.display());
        skip_or_fail(&why, "the page was not tested in a browser")
    }
}

fn playwright_python() -> Option<PathBuf> {
    // Its own browsers are not downloaded: it drives Debian's.
    pinned_venv("serve-page-venv", &[PLAYWRIGHT], "the page was not tested in a browser")
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_page_shows_what_the_cli_prints_in_a_real_browser() {
    let test = "the_page_shows_what_the_cli_prints_in_a_real_browser";
    let (Some(cache), Some(assets)) = (shared_hub_cache(test), shared_assets(test)) else { return };
    let Some(browser) = chromium() else { return };
    let Some(python) = playwright_python() else { return };
    let server = Server::start(&cache, &["--api-key", KEY]);

    // The page itself: embedded, with a policy that lets it load only from the server.
    let page = get(&server.url("/"));
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    let policy = page.header("content-security-policy").unwrap_or("");
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"), "{policy}");
    assert_eq!(get(&server.url("/ui/app.js")).status, 200);
    assert_eq!(get(&server.url("/v1/tasks")).status, 401, "the API still needs the key");

    // CC0 (tests/data/README.md), so that the screenshots may go in the README.
    let photo = data("chelsea.png");
    let audio = assets.join("data/speech/audio/jfk.wav");
    let text = "Drinking hot water every fifteen minutes kills the coronavirus, says a viral message.";
    let scratch = tempfile::tempdir().unwrap();
    let not_a_photo = scratch.path().join("notes.txt");
    std::fs::write(&not_a_photo, "a shopping list, not a photo\n").unwrap();
    let shots = repo_root().join("target/page-screenshots");

    let mut cmd = Command::new(&python);
    cmd.arg(repo_root().join("tests/python/page.py"))
        .args([&server.base, KEY, arg(&shots), arg(&photo), arg(&not_a_photo), arg(&audio), text])
        .env("ZOO_CHROMIUM", &browser)
        .env("NO_PROXY", "127.0.0.1");
    let run = run_bounded(cmd, None, Duration::from_secs(900)).finished("tests/python/page.py");
    assert_eq!(run.code, 0, "{}\n--- server\n{}", run.describe(), server.stderr());
    let out: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));

    // The key: refused without it, then stored in the browser.
    assert!(out["without_key"].as_str().unwrap().contains("API key"), "{}", out["without_key"]);
    assert_eq!(out["key_box_opened"], true);
    assert_eq!(out["stored_key"], KEY);
    assert_eq!(
        out["tasks"],
        serde_json::json!([
            "image-classification",
            "fake-news",
            "style-transfer",
            "speech-recognition",
            "object-detection",
            "face-recognition"
        ])
    );

    // Image classification: the CLI's labels, in order, with its percentages; the heatmap over
    // the part of the photo the model saw.
    let cli = &cli_json(&cache, &["image-classification", arg(&photo), "--explain"])[0];
    let labels: Vec<&str> =
        cli["predictions"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(out["image_labels"], serde_json::json!(labels));
    let top = cli["predictions"][0]["score"].as_f64().unwrap();
    assert_eq!(out["image_percents"][0], format!("{:.1}%", top * 100.0));
    assert_eq!(out["heat"]["cells"], serde_json::json!([14, 14]));
    assert_eq!(out["heat"]["label"], labels[0]);
    let region = &cli["explanation"]["region"];
    for (axis, covered) in out["heat"]["covers"].as_array().unwrap().iter().enumerate() {
        let expected = region[axis + 2].as_f64().unwrap();
        assert!((covered.as_f64().unwrap() - expected).abs() < 0.01, "heat covers {covered}, region {region}");
    }
    assert_eq!(out["heat_opacity_after_slider"], 0.3);
    assert_eq!(out["image_labels_again"], out["image_labels"], "the page works again after an error");

    // The error is the server's one line, which is the CLI's reason for the same file.
    let cli_error = zoo_with(Some(&cache), &["run", "image-classification", arg(&not_a_photo)], None);
    let line = cli_error.error_line();
    let reason = line.trim_start_matches("zoo: error: ").strip_prefix(&format!("{}: ", arg(&not_a_photo))).unwrap();
    assert_eq!(out["image_error"], format!("notes.txt: {reason}"));
    assert_eq!(out["labels_kept_after_error"], 5, "the last answer stays on the page");

    // Fake news: the label, both probabilities, and the CLI's word scores shading the text.
    let cli = &cli_json(&cache, &["fake-news", "--text", text, "--explain"])[0];
    assert_eq!(out["fake_news_label"], cli["label"]);
    assert_eq!(out["shaded_text"], text, "the shaded text is the text sent, whole");
    let words = cli["explanation"]["words"].as_array().unwrap();
    let shaded = out["shaded_words"].as_array().unwrap();
    assert_eq!(shaded.len(), words.len());
    for (page_word, cli_word) in shaded.iter().zip(words) {
        assert_eq!(page_word["text"], cli_word["text"]);
        let (a, b) = (page_word["score"].as_f64().unwrap(), cli_word["score"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 + 1e-3 * b.abs(), "{}: page {a}, cli {b}", cli_word["text"]);
    }
    let strongest = words.iter().max_by(|a, b| a["score"].as_f64().partial_cmp(&b["score"].as_f64()).unwrap()).unwrap();
    let shade = shaded.iter().find(|w| w["text"] == strongest["text"]).unwrap()["shaded"].as_str().unwrap().to_string();
    assert!(shade.starts_with("rgba(") && !shade.ends_with(", 0)"), "the strongest word is shaded: {shade}");

    // Speech: the CLI's transcript, its unsure words marked, a click plays from the word, and
    // the SRT download is the CLI's --format srt.
    let cli = &cli_json(&cache, &["speech-recognition", arg(&audio), "--explain"])[0];
    assert_eq!(out["transcript"], cli["text"]);
    let segments = cli["segments"].as_array().unwrap();
    assert_eq!(out["segment_times"].as_array().unwrap().len(), segments.len());
    let unsure: Vec<&Value> = segments
        .iter()
        .flat_map(|s| s["words"].as_array().unwrap())
        .filter(|w| w["confidence"].as_f64().unwrap() < 0.5)
        .map(|w| &w["text"])
        .collect();
    assert!(!unsure.is_empty(), "jfk.wav has words under 50% confidence: {cli}");
    assert_eq!(out["low_words"], serde_json::json!(unsure));
    let (clicked, now) = (out["clicked_word_start"].as_f64().unwrap(), out["audio_time_after_click"].as_f64().unwrap());
    assert!((now - clicked).abs() < 0.5, "a click on the word at {clicked} s played from {now} s");
    let srt = zoo_with(Some(&cache), &["run", "asr", arg(&audio), "--format", "srt", "--explain"], None);
    assert_eq!(out["srt"].as_str().unwrap().trim_end(), srt.stdout.trim_end());
    assert_eq!(out["srt_name"], "jfk.srt");
    assert_eq!(out["recording_error"], serde_json::json!([]), "the recorded WAV was refused");
    assert!(out["recording_note"][0].as_str().unwrap().contains("of audio"), "{}", out["recording_note"]);

    // Style transfer: 26 thumbnails from the contact sheet, and style 3 at the CLI's size.
    let cli = &cli_json(
        &cache,
        &["style-transfer", arg(&photo), "--style", "3", "--output", arg(&scratch.path().join("styled.png"))],
    )[0];
    assert_eq!(out["style_buttons"].as_array().unwrap().len(), 26);
    assert_eq!(out["style_buttons"][3], format!("3 {}", cli["style"][0]["name"].as_str().unwrap()));
    assert_eq!(out["styled_size"], serde_json::json!([cli["width"], cli["height"]]));
    assert_eq!(out["download_name"], "chelsea-styled.png");
    let sha256 = |path: &Path| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
    };
    assert_eq!(out["styled_sha256"], sha256(&scratch.path().join("styled.png")), "the page's picture is not the CLI's");
    let painted = scratch.path().join("painted.png");
    let args =
        ["style-transfer", arg(&photo), "--style-image", arg(&photo), "--strength", "0.5", "--output", arg(&painted)];
    cli_json(&cache, &args);
    assert_eq!(out["painted_sha256"], sha256(&painted), "the page's painting-styled picture is not the CLI's");

    // Nothing from anywhere but the server: its own address, or what the page made itself.
    for url in out["requested"].as_array().unwrap() {
        let url = url.as_str().unwrap();
        let own = url.starts_with(&format!("{}/", server.base))
            || url.starts_with(&format!("blob:{}/", server.base))
            || url.starts_with("data:");
        assert!(own, "the page loaded {url}");
    }
    // The only console errors: the request without the key (401) and the text file (400).
    for error in out["console_errors"].as_array().unwrap() {
        let error = error.as_str().unwrap();
        assert!(["401", "400"].iter().any(|status| error.contains(status)), "console: {error}");
    }
    assert_eq!(out["phone_overflow"], 0, "the page is wider than a phone's screen");
    for shot in ["image-classification", "fake-news", "speech-recognition", "style-transfer"] {
        assert!(shots.join(format!("{shot}.png")).exists(), "no screenshot of {shot}");
    }
}
