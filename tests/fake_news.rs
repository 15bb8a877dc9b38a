//! End-to-end tests of `zoo run fake-news` and `zoo train fake-news`: inputs of every kind, the
//! JSON shape, and one-line errors for bad text. The encoder comes from the shared hub cache
//! (`../shared/bin/test-assets`), offline; the head is the bundled one. A Transformers classifier
//! is a tiny random one in a local folder, written by the task's test support.

use std::path::Path;

use serde_json::Value;
use zoo_bin::{zoo_with, Run};
use zoo_runtime::test_support::shared_hub_cache;

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

#[allow(dead_code)]
#[path = "../tasks/fake-news/tests/support/tiny_classifiers.rs"]
mod tiny;

#[path = "support/pth.rs"]
mod pth;

fn zoo(cache: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    zoo_with(Some(cache), args, stdin)
}

fn lines(run: &Run) -> Vec<Value> {
    run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn classifies_files_stdin_text_and_table_rows_in_order() {
    let Some(cache) = shared_hub_cache("fake-news e2e") else { return };
    let dir = tempfile::tempdir().unwrap();
    let article = dir.path().join("article.txt");
    std::fs::write(&article, "The WHO reported 1,500 new COVID-19 cases in the region this week. ".repeat(40)).unwrap();
    let table = dir.path().join("claims.csv");
    std::fs::write(&table, "id,tweet\n1,\"Garlic water cures coronavirus, share before they delete this!\"\n2,The CDC updated its guidance on testing today.\n").unwrap();

    let run = zoo(
        &cache,
        &["run", "fake-news", article.to_str().unwrap(), "-", "--text", "5G towers spread the virus", "--json"],
        Some(b"Hospitals report record admissions."),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = lines(&run);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0]["input"], article.to_str().unwrap());
    assert_eq!(out[1]["input"], "-");
    assert_eq!(out[2]["input"], "--text");
    assert!(out[0]["windows"].as_u64().unwrap() >= 2, "a long article takes several windows: {}", out[0]);
    for o in &out {
        assert_eq!(o["model"], "minilm-fake-news");
        let scores = o["scores"].as_object().unwrap();
        assert_eq!(scores.len(), 2);
        let total: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4);
        let best = scores.iter().max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap()).unwrap().0;
        assert_eq!(&o["label"], best);
    }

    let run = zoo(&cache, &["run", "fake-news", table.to_str().unwrap(), "--text-column", "tweet", "--json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = lines(&run);
    assert_eq!((out[0]["input"].as_str(), out[1]["input"].as_str()), (Some("1"), Some("2")));
    assert_eq!(out[0]["label"], "fake", "{}", out[0]);
    assert_eq!(out[1]["label"], "real", "{}", out[1]);
}

/// The bundled head knows the texts it was trained on: a recipe and a line of code are far from
/// them and carry the warning, in JSON and in the human output; a news claim does not.
#[test]
fn texts_unlike_the_training_data_carry_a_warning() {
    let Some(cache) = shared_hub_cache("fake-news domain warning") else { return };
    let far = [
        "Preheat the oven to 180C, mix the flour with two eggs and bake for 25 minutes.",
        "for i in range(10): print(i)",
    ];
    let near = "Drinking hot water with lemon kills the coronavirus, a viral post claims.";
    let run = zoo(&cache, &["run", "fake-news", "--text", far[0], "--json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = lines(&run);
    assert_eq!(out[0]["in_domain"], false, "{}", out[0]);
    let warning = out[0]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("unlike the texts this model was trained on"), "{warning}");
    assert!(out[0]["domain_percentile"].as_f64().unwrap() > 99.0);
    for (text, in_domain) in [(far[1], false), (near, true)] {
        let run = zoo(&cache, &["run", "fake-news", "--text", text, "--json"], None);
        let out = lines(&run);
        assert_eq!(out[0]["in_domain"], in_domain, "{text}: {}", out[0]);
        assert_eq!(out[0]["warnings"].as_array().unwrap().is_empty(), in_domain, "{}", out[0]);
    }
    let human = zoo(&cache, &["run", "fake-news", "--text", far[0]], None);
    assert!(human.stdout.contains("warning: unlike the texts this model was trained on"), "{}", human.stdout);
    let human = zoo(&cache, &["run", "fake-news", "--text", near], None);
    assert!(!human.stdout.contains("warning"), "{}", human.stdout);
}

#[test]
fn bad_text_gets_one_line_errors_and_the_rest_still_runs() {
    let Some(cache) = shared_hub_cache("fake-news bad inputs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty.txt", b"", "empty"),
        ("blank.txt", b"  \n\t \n", "empty"),
        ("binary.txt", b"\x7fELF\x02\x01\x01\0\0\0", "binary"),
        ("latin1.txt", b"caf\xe9 au lait", "UTF-8"),
    ];
    let mut args = vec!["run".to_string(), "fake-news".into(), "--json".into()];
    for (name, bytes, _) in &cases {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        args.push(dir.path().join(name).display().to_string());
    }
    args.push("--text".into());
    args.push("Masks reduce transmission, a new study finds.".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = zoo(&cache, &args, None);
    assert_eq!(run.code, 1);
    let out = lines(&run);
    assert_eq!(out.len(), 5);
    for (o, (name, _, cause)) in out.iter().zip(&cases) {
        let error = o["error"].as_str().unwrap_or_else(|| panic!("{name}: {o}"));
        assert!(error.contains(name) && error.contains(cause), "{name}: {error}");
    }
    assert!(out[4]["label"].is_string());

    for (args, expected) in [
        (vec!["run", "fake-news"], "no text given"),
        (vec!["run", "fake-news", "x.csv", "--text-column", "tweet"], "x.csv"),
        (vec!["train", "fake-news", "--out", "/tmp/x"], "--train"),
        (vec!["train", "fake-news", "--out", "/tmp/x", "--train", "a.csv", "--recipe", "r.toml"], "not both"),
        (vec!["train", "fake-news", "--out", "/tmp/x", "--recipe", "missing.toml"], "missing.toml"),
        (
            vec!["train", "fake-news", "--out", "/tmp/x", "--train", "a.csv", "--weighting", "most"],
            "sqrt, equal or rows",
        ),
        (vec!["train", "fake-news", "--out", "/tmp/x", "--train", "a.csv", "--fine-tune", "2"], "needs val data"),
        (vec!["train", "fake-news", "--out", "/tmp/x", "--train", "a.csv", "--fine-tune", "0"], "at least 1"),
        (vec!["train", "fake-news", "--out", "/tmp/x", "--train", "a.csv", "--fine-tune", "two"], "fine-tune"),
    ] {
        let run = zoo(&cache, &args, None);
        assert_ne!(run.code, 0, "{args:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
}

/// `zoo train --calibrate` on a Transformers classifier: a temperature and biases fitted on
/// labelled val texts that lower the calibration error, and a folder that `--model` runs with
/// them. The tiny random classifier's val labels agree with its own predictions on 7 texts in 10,
/// so its scores (near 0.5) are underconfident; each calibrated score must be the uncalibrated one
/// with the logit divided by the temperature and shifted by the biases, and the label its argmax.
#[test]
fn a_calibrated_transformers_classifier_runs_with_its_temperature_and_bias() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-bert");
    std::fs::create_dir(&model).unwrap();
    tiny::write(&model, tiny::Arch::Bert, 2, Some(&["real", "fake"]), None, 11);
    let words = ["the", "virus", "news", "vaccine", "cure", "covid", "towers", "spread", "5g"];
    let texts: Vec<String> = (0..80)
        .map(|i| (0..4 + i % 5).map(|j| words[(i * 7 + j * j * 3 + i / 9) % words.len()]).collect::<Vec<_>>().join(" "))
        .collect();
    let csv = |labels: &[String]| -> String {
        let mut s = String::from("text,label\n");
        for (t, l) in texts.iter().zip(labels) {
            s.push_str(&format!("{t},{l}\n"));
        }
        s
    };
    let unlabelled = dir.path().join("texts.csv");
    std::fs::write(&unlabelled, csv(&vec![String::new(); texts.len()])).unwrap();
    let (model_arg, texts_arg) = (model.to_str().unwrap(), unlabelled.to_str().unwrap());
    let run = zoo_with(
        None,
        &["run", "text-classification", "--model", model_arg, texts_arg, "--text-column", "text", "--json"],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plain = lines(&run);
    let label = |o: &Value| o["label"].as_str().unwrap().to_string();
    let flip = |l: String| if l == "real" { "fake".to_string() } else { "real".to_string() };
    let truth: Vec<String> =
        plain.iter().enumerate().map(|(i, o)| if i % 10 < 7 { label(o) } else { flip(label(o)) }).collect();
    let val = dir.path().join("val.csv");
    std::fs::write(&val, csv(&truth)).unwrap();

    let calibrated = dir.path().join("calibrated");
    let cal_arg = calibrated.to_str().unwrap();
    let args = ["train", "fake-news", "--calibrate", model_arg, "--val", val.to_str().unwrap(), "--out", cal_arg];
    let run = zoo_with(None, &[&args[..], &["--json"]].concat(), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = &lines(&run)[0];
    let t = report["temperature"].as_f64().unwrap();
    let lean = report["bias"]["fake"].as_f64().unwrap() - report["bias"]["real"].as_f64().unwrap();
    let (before, after) = (report["ece_before"].as_f64().unwrap(), report["ece_after"].as_f64().unwrap());
    assert!(after < before, "calibration error {before} before, {after} after");
    let again = zoo_with(None, &args, None);
    assert_ne!(again.code, 0, "an existing calibration is not overwritten without --force");
    assert!(again.stderr.contains("--force"), "{}", again.stderr);

    let run = zoo_with(
        None,
        &["run", "text-classification", "--model", cal_arg, texts_arg, "--text-column", "text", "--json"],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (c, p) in lines(&run).iter().zip(&plain) {
        let fake = |o: &Value| o["scores"]["fake"].as_f64().unwrap();
        let logit = (fake(p) / (1.0 - fake(p))).ln();
        let want = 1.0 / (1.0 + (-(logit / t + lean)).exp());
        assert!((fake(c) - want).abs() < 1e-4, "{} against {want} at temperature {t}, lean {lean}", fake(c));
        assert_eq!(c["label"], if want > 0.5 { "fake" } else { "real" });
    }
    let right = lines(&run).iter().zip(&truth).filter(|(c, t)| c["label"].as_str() == Some(t.as_str())).count();
    let accuracy = report["val"]["accuracy"].as_f64().unwrap();
    assert!((accuracy - right as f64 / truth.len() as f64).abs() < 1e-6, "{report}");

    let elsewhere = dir.path().join("elsewhere");
    let elsewhere = elsewhere.to_str().unwrap();
    for (args, expected) in [
        (vec!["train", "fake-news", "--calibrate", model_arg, "--out", elsewhere], "needs --val"),
        (
            vec!["train", "fake-news", "--calibrate", "minilm-fake-news", "--val", "v.csv", "--out", elsewhere],
            "zoo trained",
        ),
    ] {
        let run = zoo_with(None, &args, None);
        assert_ne!(run.code, 0, "{args:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_transformers_classifier_in_a_folder_runs_with_its_own_labels() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-bert");
    std::fs::create_dir(&model).unwrap();
    tiny::write(&model, tiny::Arch::Bert, 2, Some(&["real", "fake"]), None, 11);
    let article = dir.path().join("article.txt");
    std::fs::write(&article, "The virus news spread: no cure, the vaccine works. ".repeat(12)).unwrap();
    let model_arg = model.to_str().unwrap();

    let args = ["run", "text-classification", "--model", model_arg, article.to_str().unwrap(), "--text", "5G towers"];
    let run = zoo_with(None, &[&args[..], &["--json"]].concat(), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = lines(&run);
    assert_eq!(out.len(), 2);
    for o in &out {
        assert_eq!(o["model"], model_arg);
        let scores = o["scores"].as_object().unwrap();
        assert_eq!(scores.keys().collect::<Vec<_>>(), ["fake", "real"], "{o}");
        let total: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4);
        assert!(o["label"] == "real" || o["label"] == "fake", "{o}");
    }
    assert!(out[0]["windows"].as_u64().unwrap() >= 3, "{}", out[0]);
    assert_eq!(out[1]["windows"], 1);
    let human = zoo_with(None, &args, None);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("fake ") && human.stdout.contains("windows)"), "{}", human.stdout);

    let mut config: Value = serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["GPT2ForSequenceClassification"]);
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let run = zoo_with(None, &["run", "fake-news", "--model", model_arg, "--text", "x"], None);
    assert_ne!(run.code, 0);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("GPT2ForSequenceClassification"), "{}", run.stderr);
    config["architectures"] = serde_json::json!(["DistilBertForSequenceClassification"]);
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let run = zoo_with(None, &["run", "fake-news", "--model", model_arg, "--text", "x"], None);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("no tokenizer.json"), "{}", run.stderr);
}

#[test]
fn a_transformers_classifier_saved_as_pytorch_model_bin_gives_the_same_scores() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), tiny::Arch::Roberta, 2, Some(&["fake", "real"]), None, 5);
    let args = ["run", "fake-news", "--model", dir.path().to_str().unwrap(), "--text", "5G towers spread it", "--json"];
    let from_safetensors = zoo_with(None, &args, None);
    assert_eq!(from_safetensors.code, 0, "{}", from_safetensors.stderr);

    let weights = dir.path().join("model.safetensors");
    let mut tensors: Vec<(String, candle_core::Tensor)> =
        candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    pth::write_pth(&dir.path().join("pytorch_model.bin"), &tensors);
    std::fs::remove_file(&weights).unwrap();
    let from_pickle = zoo_with(None, &args, None);
    assert_eq!(from_pickle.code, 0, "{}", from_pickle.stderr);
    assert_eq!(from_pickle.stdout, from_safetensors.stdout);
}
