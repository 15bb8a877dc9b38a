//! `make bench` for image classification: the bundled EfficientNet-Lite0 on preprocessed 224x224
//! inputs (what the onnxruntime peer in ../shared/bench times), at batch 1 and 32, plus the whole
//! pipeline from a PNG file (decode, resize, crop, forward), alone and with --explain's heatmap. Prints one JSON line per measurement,
//! in the peer's field names, so both can be tabled side by side.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde_json::json;
use zoo_image_classification::Classifier;
use zoo_runtime::test_support::{peak_rss_mb, time_loop};
use zoo_runtime::{HubSettings, Input, Model, ModelRef};

fn main() {
    let min =
        Duration::from_secs_f64(std::env::var("ZOO_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0));
    let threads = candle_core::utils::get_num_threads();
    // ZOO_BENCH_MODEL times another catalogue model (efficientnet-lite0-int8) on the same
    // inputs, in a process of its own so that its peak memory is its own.
    let id = std::env::var("ZOO_BENCH_MODEL").unwrap_or_else(|_| "efficientnet-lite0".into());
    let model = Model::resolve(&ModelRef::parse(&id).unwrap(), &HubSettings::from_env(true));
    let load_start = Instant::now();
    let classifier = Classifier::load(&model, &Device::Cpu).unwrap();
    let load_s = load_start.elapsed().as_secs_f64();

    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/chelsea.png");
    let (one, _) = classifier.prepare(&Input::file(&photo)).unwrap();
    for batch in [1usize, 32] {
        let x = Tensor::cat(&vec![&one; batch], 0).unwrap();
        let (n, secs, cpu) = time_loop(min, || {
            classifier.logits(&x).unwrap();
        });
        let items = (n as usize * batch) as f64;
        let per_s = items / secs;
        println!(
            "{}",
            json!({"task": "image", "peer": "zoo (candle)", "model": id, "input": "224x224",
                   "batch": batch, "threads": threads, "wall_s": secs, "items_per_s": per_s, "ms_per_item": 1000.0 / per_s,
                   "items_per_cpu_s": items / cpu, "peak_rss_mb": peak_rss_mb(), "load_s": load_s})
        );
    }

    if id != "efficientnet-lite0" {
        return;
    }
    let (n, secs, _) = time_loop(min, || {
        let (x, _) = classifier.prepare(&Input::file(&photo)).unwrap();
        classifier.top_k(&classifier.logits(&x).unwrap(), 5).unwrap();
    });
    println!(
        "{}",
        json!({"task": "image", "peer": "zoo (candle)", "model": "efficientnet-lite0", "input": "chelsea.png file (decode+resize+crop+forward)",
               "batch": 1, "threads": threads, "wall_s": secs, "items_per_s": n as f64 / secs, "peak_rss_mb": peak_rss_mb()})
    );

    // What --explain costs: the same pipeline plus the occlusion heatmap for the top class.
    let plain_per_s = n as f64 / secs;
    let (n, secs, _) = time_loop(min, || {
        let (x, picture) = classifier.prepare(&Input::file(&photo)).unwrap();
        let top = classifier.top_k(&classifier.logits(&x).unwrap(), 5).unwrap().remove(0);
        classifier.saliency(&x, picture, top.predictions[0].index, &photo, None).unwrap();
    });
    let per_s = n as f64 / secs;
    println!(
        "{}",
        json!({"task": "image", "peer": "zoo (candle)", "model": "efficientnet-lite0", "input": "chelsea.png file, --explain (occlusion)",
               "batch": 1, "threads": threads, "wall_s": secs, "items_per_s": per_s,
               "explain_cost_x": plain_per_s / per_s, "peak_rss_mb": peak_rss_mb()})
    );
}
