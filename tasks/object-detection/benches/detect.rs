//! `make bench` for object detection: FastestDet's forward pass on the reference's exact 352x352
//! input (what scripts/detection_ort.py times onnxruntime on), and the whole pipeline on the JPEG
//! (decode, area resize, network, decoding), batch 1. Prints one JSON line each, in the peers'
//! field names.

use std::time::Duration;

use candle_core::Device;
use serde_json::json;
use zoo_object_detection::Detector;
use zoo_runtime::test_support::{peak_rss_mb, repo_root, time_loop};
use zoo_runtime::{HubSettings, Input, Model, ModelRef, Runner};

fn emit(what: &str, input: &str, (n, secs, _): (u32, f64, f64)) {
    let per_s = f64::from(n) / secs;
    println!(
        "{}",
        json!({"task": "detection", "peer": "zoo (candle)", "model": "fastestdet", "what": what, "input": input,
               "batch": 1, "threads": candle_core::utils::get_num_threads(), "iters": n, "wall_s": secs,
               "items_per_s": per_s, "ms_per_item": 1000.0 / per_s, "peak_rss_mb": peak_rss_mb()})
    );
}

fn main() {
    let min =
        Duration::from_secs_f64(std::env::var("ZOO_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0));
    let model = Model::resolve(&ModelRef::parse("fastestdet").unwrap(), &HubSettings::from_env(true));
    let mut detector = Detector::load(&model, &Device::Cpu).unwrap();
    let shared = repo_root().join("../shared/assets");
    let resized = shared.join("reference/detection/inputs_352/dog.352.area.png");
    let (picture, photo) = if resized.is_file() {
        (image::open(&resized).unwrap().to_rgb8(), shared.join("data/detection/dog.jpg"))
    } else {
        eprintln!("bench: ../shared/assets not found; timing a bundled test photo instead");
        let photo = repo_root().join("tests/data/coffee.png");
        (image::open(&photo).unwrap().to_rgb8(), photo)
    };
    let x = detector.tensor(&picture).unwrap();
    emit(
        "network",
        "352x352",
        time_loop(min, || {
            detector.forward(&x).unwrap();
        }),
    );
    let input = Input::file(&photo);
    let (w, h) = image::image_dimensions(&photo).unwrap();
    emit(
        "pipeline",
        &format!("{} {w}x{h}", photo.file_name().unwrap().to_string_lossy()),
        time_loop(min, || {
            detector.run(std::slice::from_ref(&input)).pop().unwrap().unwrap();
        }),
    );
}
