//! What the fake-news head knows about its own reach, on the research-only dev data in
//! `../shared/assets/data/fake-news`: the out-of-domain warning on a head trained on one domain, and
//! the bundled default's per-source figures, calibration included, against what its head.json states.

use std::path::Path;

use candle_core::Device;
use serde_json::Value;
use zoo_fake_news::calibration::{expected_calibration_error, ECE_BINS};
use zoo_fake_news::recipe;
use zoo_fake_news::{table, Classifier};
use zoo_runtime::test_support::{shared_assets, shared_hub_cache};
use zoo_runtime::{Context, HubSettings, Model, ModelRef, Task, TaskArgs};

fn context(cache: &Path) -> Context {
    let mut hub = HubSettings::from_env(true);
    hub.cache_dir = cache.to_path_buf();
    Context { device: Device::Cpu, hub, progress: false, outputs: Default::default() }
}

/// The share of `texts` the classifier calls out of its domain.
fn warned_share(classifier: &Classifier, texts: &[&str]) -> f64 {
    let domain = classifier.domain().expect("a head zoo trained records its domain");
    let warned = classifier
        .classify(texts, 32)
        .into_iter()
        .filter(|r| domain.percentile(r.as_ref().unwrap().distance.unwrap()) > domain.warn_percentile)
        .count();
    warned as f64 / texts.len() as f64
}

/// A head trained on COVID-19 tweets only must warn on celebrity news (articles and headlines, a
/// domain absent from its training) and stay quiet on the tweets of Constraint val it never saw.
/// Political news articles (Horne 2017) are not used here: Constraint's tweets include political
/// news, and only about a fifth of those articles fall past the threshold.
#[test]
fn the_warning_fires_on_an_absent_domain_and_not_on_unseen_in_domain_texts() {
    let (Some(assets), Some(cache)) =
        (shared_assets("out-of-domain warning"), shared_hub_cache("out-of-domain warning"))
    else {
        return;
    };
    let data = assets.join("data/fake-news");
    let out = tempfile::tempdir().unwrap();
    let mut args = TaskArgs::new();
    args.set("train", data.join("constraint_covid19/Constraint_Train.csv").display().to_string())
        .set("val", data.join("constraint_covid19/Constraint_Val.csv").display().to_string())
        .set("text-column", "tweet")
        .set("limit", "1000")
        .set("out", out.path().display().to_string());
    let ctx = context(&cache);
    let report = zoo_fake_news::FakeNews.train(&args, &ctx).unwrap().json();
    let model = Model::resolve(&ModelRef::Local(out.path().to_path_buf()), &ctx.hub);
    let classifier = Classifier::load(&model, &ctx).unwrap();

    // Val rows past the limit: the head was neither trained nor validated on them.
    let val = table::read(&data.join("constraint_covid19/Constraint_Val.csv"), "tweet", None).unwrap();
    let unseen: Vec<&str> = val[1000..].iter().map(|r| r.text.as_str()).collect();
    let in_domain = warned_share(&classifier, &unseen);

    let mut celebrity = table::read(&data.join("general/celebrity_val.csv"), "text", None).unwrap();
    let headlines = table::read(&data.join("general/fakenewsnet_gossipcop_val.csv"), "text", None).unwrap();
    celebrity.extend(headlines.into_iter().take(200));
    let celebrity: Vec<&str> = celebrity.iter().map(|r| r.text.as_str()).collect();
    let absent = warned_share(&classifier, &celebrity);
    eprintln!(
        "head on 1,000 Constraint tweets: warned {:.1}% of {} unseen tweets, {:.1}% of {} celebrity news texts \
         (val: {:.1}% warned, error rate {} warned against {} not)",
        in_domain * 100.0,
        unseen.len(),
        absent * 100.0,
        celebrity.len(),
        report["domain"]["warned"].as_f64().unwrap() * 100.0,
        report["domain"]["error_warned"],
        report["domain"]["error_unwarned"],
    );
    assert!(in_domain <= 0.03, "warned {in_domain} of in-domain texts");
    assert!(absent >= 0.85, "warned only {absent} of out-of-domain texts");
}

/// The bundled default on every source's val file: the accuracy, macro-F1 and calibration error
/// its head.json (and so its catalogue entry) states, within one text.
#[test]
fn the_bundled_default_scores_what_it_states_on_every_source() {
    let (Some(assets), Some(cache)) =
        (shared_assets("bundled default per source"), shared_hub_cache("bundled default"))
    else {
        return;
    };
    let ctx = context(&cache);
    let model = Model::resolve(&ModelRef::parse("minilm-fake-news").unwrap(), &ctx.hub);
    let classifier = Classifier::load(&model, &ctx).unwrap();
    let info: Value = model.json("head.json").unwrap();
    let stated = info["training"]["sources"].as_array().unwrap();
    let recipe_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/general.toml");
    let sources = recipe::parse(&recipe_path, Some(&assets.join("data/fake-news"))).unwrap();
    assert_eq!(sources.len(), stated.len(), "the recipe names the sources the head was trained on");
    let labels = classifier.labels().to_vec();
    let (mut all_p, mut all_truth) = (Vec::new(), Vec::new());
    for (files, stated) in sources.into_iter().zip(stated) {
        let name = files.name.clone();
        assert_eq!(stated["name"], name.as_str());
        let rows = files.read(None).unwrap().val.unwrap();
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let truth: Vec<usize> =
            rows.iter().map(|r| labels.iter().position(|l| Some(l) == r.label.as_ref()).unwrap()).collect();
        let p: Vec<Vec<f32>> = classifier.classify(&texts, 32).into_iter().map(|r| r.unwrap().probabilities).collect();
        let predicted: Vec<usize> =
            p.iter().map(|p| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0).collect();
        let s = zoo_fake_news::head::score(&predicted, &truth, labels.len());
        let want = stated["val"]["accuracy"].as_f64().unwrap() as f32;
        let one_text = 1.0 / texts.len() as f32 + 1e-5;
        eprintln!("{name}: val accuracy {:.4} (states {want:.4}), macro-F1 {:.4}", s.accuracy, s.macro_f1);
        assert!((s.accuracy - want).abs() <= one_text, "{name}: measured {}, head.json states {want}", s.accuracy);
        all_p.extend(p);
        all_truth.extend(truth);
    }
    let ece = expected_calibration_error(&all_p, &all_truth, ECE_BINS);
    let stated_ece = info["training"]["calibration"]["ece_after"].as_f64().unwrap() as f32;
    eprintln!("all val texts: calibration error {ece:.4} (states {stated_ece:.4})");
    assert!((ece - stated_ece).abs() < 0.005 && ece <= 0.05, "calibration error {ece}, stated {stated_ece}");
}

/// `--fine-tune 2` on a few hundred tweets: the two trained layers must beat the frozen encoder's
/// head on the val split, and the model folder it writes must give, through `Classifier` (the path
/// `zoo run` takes), the val accuracy the training report states.
#[test]
fn fine_tuning_two_layers_beats_the_frozen_head_on_its_val_split() {
    let (Some(assets), Some(cache)) = (shared_assets("fine-tuning"), shared_hub_cache("fine-tuning")) else {
        return;
    };
    let data = assets.join("data/fake-news/constraint_covid19");
    let out = tempfile::tempdir().unwrap();
    let mut args = TaskArgs::new();
    args.set("train", data.join("Constraint_Train.csv").display().to_string())
        .set("val", data.join("Constraint_Val.csv").display().to_string())
        .set("text-column", "tweet")
        .set("limit", "300")
        .set("fine-tune", "2")
        .set("out", out.path().display().to_string());
    let ctx = context(&cache);
    let report = zoo_fake_news::FakeNews.train(&args, &ctx).unwrap().json();
    let (tuned, frozen) =
        (report["val"]["accuracy"].as_f64().unwrap(), report["frozen_val"]["accuracy"].as_f64().unwrap());
    let fine_tune = &report["fine_tune"];
    eprintln!("300 tweets: val accuracy {frozen:.3} frozen, {tuned:.3} with two layers fine-tuned ({fine_tune})");
    assert_eq!(fine_tune["kept"], "fine-tuned", "{fine_tune}");
    assert!(tuned > frozen, "fine-tuned {tuned} against frozen {frozen}");
    assert!(!out.path().join(".fine-tune").exists(), "the checkpoint is removed when the run ends");
    let encoder = candle_core::safetensors::load(out.path().join("encoder.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(encoder.len(), 32, "two layers of 16 tensors");
    assert!(encoder.keys().all(|k| k.starts_with("encoder.layer.4.") || k.starts_with("encoder.layer.5.")));

    let model = Model::resolve(&ModelRef::Local(out.path().to_path_buf()), &ctx.hub);
    let classifier = Classifier::load(&model, &ctx).unwrap();
    let val = table::read(&data.join("Constraint_Val.csv"), "tweet", Some("label")).unwrap();
    let val = &val[..300];
    let texts: Vec<&str> = val.iter().map(|r| r.text.as_str()).collect();
    let labels = classifier.labels().to_vec();
    let correct = classifier
        .classify(&texts, 32)
        .into_iter()
        .zip(val)
        .filter(|(r, row)| {
            let p = &r.as_ref().unwrap().probabilities;
            let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            Some(labels[best].as_str()) == row.label.as_deref()
        })
        .count();
    let accuracy = correct as f64 / val.len() as f64;
    assert!((accuracy - tuned).abs() <= 1.0 / 300.0 + 1e-6, "the model folder gives {accuracy}, the report {tuned}");
}
