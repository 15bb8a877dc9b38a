//! The sentence encoder against the independent reference in `../shared/assets/reference`
//! (a numpy re-implementation on the same weights), and a small training run that must reach a
//! stated accuracy on real data.

use std::path::Path;

use candle_core::Device;
use serde_json::Value;
use zoo_fake_news::encoder::{Backend, SentenceEncoder, OVERLAP, WINDOW};
use zoo_runtime::test_support::{shared_assets, shared_hub_cache};
use zoo_runtime::{Context, HubSettings, Model, ModelRef, Task, TaskArgs};

fn offline_hub(cache: &Path) -> HubSettings {
    let mut hub = HubSettings::from_env(true);
    hub.cache_dir = cache.to_path_buf();
    hub
}

fn encoder(cache: &Path) -> SentenceEncoder {
    encoder_with(cache, Backend::Cpu)
}

fn encoder_with(cache: &Path, backend: Backend) -> SentenceEncoder {
    let model = Model::resolve(&ModelRef::parse("all-minilm-l6-v2").unwrap(), &offline_hub(cache));
    SentenceEncoder::load_with(&model, &Device::Cpu, backend).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn embeddings_match_the_reference_alone_and_in_a_padded_batch() {
    let (Some(assets), Some(cache)) = (shared_assets("encoder golden"), shared_hub_cache("encoder golden")) else {
        return;
    };
    let golden: Value =
        serde_json::from_slice(&std::fs::read(assets.join("reference/all-MiniLM-L6-v2.golden.json")).unwrap()).unwrap();
    let encoder = encoder(&cache);
    let sentences: Vec<&str> = golden["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let windows: Vec<Vec<u32>> = sentences.iter().map(|s| encoder.windows(s).unwrap().0.remove(0)).collect();
    let mut worst = 0f32;
    for (i, window) in windows.iter().enumerate() {
        let ids: Vec<u32> =
            golden["input_ids"][i].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let real = golden["attention_mask"][i].as_array().unwrap().iter().filter(|m| m.as_u64() == Some(1)).count();
        assert_eq!(window, &ids[..real], "token ids of sentence {i}");
        let alone = encoder.embed(&[window.as_slice()]).unwrap().remove(0);
        worst = worst.max(max_diff(&alone[..8], &floats(&golden["embedding_first8"][i])));
        let cls = encoder.cls_hidden(window).unwrap();
        worst = worst.max(max_diff(&cls[..8], &floats(&golden["cls_hidden_first8"][i])));
        let norm: f32 = alone.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embeddings are L2-normalised");
    }
    // Padding must not change anything: the whole set as one batch.
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    for (i, e) in encoder.embed(&refs).unwrap().iter().enumerate() {
        worst = worst.max(max_diff(&e[..8], &floats(&golden["embedding_first8"][i])));
    }
    eprintln!("all-MiniLM-L6-v2: max |difference| from the reference = {worst:.2e}");
    assert!(worst < 1e-4, "max difference {worst}");
}

/// The CPU encoder against candle's BertModel (the generic path, kept as the reference) on one
/// padded batch: texts from one token to a full window, and the windows of a long text.
#[test]
fn the_cpu_encoder_matches_candles_bert_on_a_padded_batch() {
    let Some(cache) = shared_hub_cache("cpu encoder against candle") else { return };
    let (fast, reference) = (encoder(&cache), encoder_with(&cache, Backend::Candle));
    let texts = [
        "Hi".to_string(),
        "5G towers spread the coronavirus, a viral post claims.".to_string(),
        "Health officials reported 1,234 new cases and 12 deaths on Tuesday; testing rose by a fifth. ".repeat(30),
        "Masks".to_string(),
    ];
    let windows: Vec<Vec<u32>> = texts.iter().flat_map(|t| fast.windows(t).unwrap().0).collect();
    assert!(windows.len() > texts.len() && windows.iter().any(|w| w.len() == WINDOW), "a long text in full windows");
    let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let (got, want) = (fast.embed(&refs).unwrap(), reference.embed(&refs).unwrap());
    let worst = got.iter().zip(&want).map(|(g, w)| max_diff(g, w)).fold(0f32, f32::max);
    eprintln!("CPU encoder against candle's BertModel: max |difference| = {worst:.2e}");
    assert!(worst < 1e-5, "max difference {worst}");
    for w in &refs[..3] {
        assert!(max_diff(&fast.cls_hidden(w).unwrap(), &reference.cls_hidden(w).unwrap()) < 1e-4, "[CLS] state");
    }
}

#[test]
fn long_texts_are_split_into_overlapping_windows_that_cover_every_token() {
    let Some(cache) = shared_hub_cache("windows") else { return };
    let encoder = encoder(&cache);
    let text = "The vaccine trial enrolled volunteers in several countries. ".repeat(60);
    let all = encoder.tokenize_plain(&text);
    let body: Vec<u32> = all[1..all.len() - 1].to_vec();
    let windows = encoder.windows(&text).unwrap().0;
    assert!(windows.len() >= 3, "{} tokens in {} windows", body.len(), windows.len());
    let step = WINDOW - 2 - OVERLAP;
    for (i, w) in windows.iter().enumerate() {
        assert!(w.len() <= WINDOW);
        assert_eq!((w[0], w[w.len() - 1]), (all[0], all[all.len() - 1]), "[CLS] ... [SEP]");
        assert_eq!(&w[1..w.len() - 1], &body[i * step..(i * step + WINDOW - 2).min(body.len())], "window {i}");
    }
    assert_eq!(
        windows.last().unwrap()[windows.last().unwrap().len() - 2],
        body[body.len() - 1],
        "the last token is covered"
    );
    assert!(encoder.windows("   ").is_err(), "blank text has no windows");
}

#[test]
fn a_small_training_run_reaches_the_stated_accuracy() {
    let (Some(assets), Some(cache)) = (shared_assets("small training run"), shared_hub_cache("small training run"))
    else {
        return;
    };
    let data = assets.join("data/fake-news/constraint_covid19");
    let out = tempfile::tempdir().unwrap();
    let mut args = TaskArgs::new();
    args.set("train", data.join("Constraint_Train.csv").display().to_string())
        .set("val", data.join("Constraint_Val.csv").display().to_string())
        .set("text-column", "tweet")
        .set("label-column", "label")
        .set("limit", "300")
        .set("out", out.path().display().to_string());
    let ctx = Context { device: Device::Cpu, hub: offline_hub(&cache), progress: false, outputs: Default::default() };
    let report = zoo_fake_news::FakeNews.train(&args, &ctx).unwrap().json();
    let val_accuracy = report["val"]["accuracy"].as_f64().unwrap();
    eprintln!("300-row training run: val accuracy {val_accuracy:.4}, macro-F1 {:.4}", report["val"]["macro_f1"]);
    // 300 tweets are a twentieth of the training set; the full set reaches ~0.92.
    assert!(val_accuracy >= 0.85, "val accuracy {val_accuracy}");
    assert_eq!(report["labels"], serde_json::json!(["fake", "real"]));

    // The folder it wrote is a model: it classifies, deterministically.
    let model = Model::resolve(&ModelRef::Local(out.path().to_path_buf()), &ctx.hub);
    let classifier = zoo_fake_news::Classifier::load(&model, &ctx).unwrap();
    let claim = "Drinking bleach cures COVID-19, doctors confirm.";
    let first = classifier.classify(&[claim], 8).remove(0).unwrap();
    let again = classifier.classify(&[claim], 1).remove(0).unwrap();
    assert!((first.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert!(max_diff(&first.probabilities, &again.probabilities) < 1e-5, "batch size does not change the result");
}
