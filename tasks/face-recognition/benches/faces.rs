//! `make bench` for face recognition: each of face-api's networks on the inputs
//! scripts/face_tfjs/bench.js times tfjs on (the 512 detector input of faces.jpg, the first face's
//! landmark and descriptor crops), and the whole pipeline on faces.jpg, batch 1. Prints one JSON
//! line each, in the peers' field names.

use std::time::Duration;

use serde_json::json;
use zoo_face_recognition::{prep, Recognizer};
use zoo_runtime::test_support::{peak_rss_mb, repo_root, time_loop};
use zoo_runtime::{HubSettings, Model, ModelRef};

fn emit(input: &str, (n, secs, _): (u32, f64, f64)) {
    let per_s = f64::from(n) / secs;
    println!(
        "{}",
        json!({"task": "face", "peer": "zoo (candle)", "model": "face-api", "input": input, "batch": 1,
               "threads": candle_core::utils::get_num_threads(), "iters": n, "wall_s": secs,
               "items_per_s": per_s, "ms_per_item": 1000.0 / per_s, "peak_rss_mb": peak_rss_mb()})
    );
}

fn main() {
    let min =
        Duration::from_secs_f64(std::env::var("ZOO_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0));
    let model = Model::resolve(&ModelRef::parse("face-api").unwrap(), &HubSettings::from_env(true));
    let recognizer = Recognizer::load(&model).unwrap();
    let decoded = repo_root().join("../shared/assets/reference/face/inputs/faces.rgb.png");
    let (picture, name) = if decoded.is_file() {
        (image::open(&decoded).unwrap().to_rgb8(), "faces.jpg")
    } else {
        eprintln!("bench: ../shared/assets not found; timing a bundled test photo instead");
        (image::open(repo_root().join("tests/data/astronaut.jpg")).unwrap().to_rgb8(), "astronaut.jpg")
    };
    let faces = recognizer.faces(&picture).unwrap();
    let first = faces.first().and_then(|f| f.detection).expect("a face in the bench photo");
    let landmark_crop = zoo_face_recognition::locate::clip(first.bbox, picture.dimensions()).unwrap();
    let points: Vec<[f64; 2]> = faces[0].landmarks.iter().map(|p| [f64::from(p[0]), f64::from(p[1])]).collect();
    let descriptor_crop =
        zoo_face_recognition::locate::dlib_crop(&points, landmark_crop, picture.dimensions()).unwrap();
    let x = prep::detector_input(&picture);
    emit(
        "ssd 512x512",
        time_loop(min, || {
            recognizer.detect_input(&x).unwrap();
        }),
    );
    emit(
        "landmarks 112x112",
        time_loop(min, || {
            recognizer.landmarks_raw(&picture, landmark_crop).unwrap();
        }),
    );
    emit(
        "descriptor 150x150",
        time_loop(min, || {
            recognizer.descriptor(&picture, descriptor_crop).unwrap();
        }),
    );
    let (w, h) = picture.dimensions();
    emit(
        &format!("{name} {w}x{h}"),
        time_loop(min, || {
            recognizer.faces(&picture).unwrap();
        }),
    );
}
