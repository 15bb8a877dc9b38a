//! `make bench` for style transfer: the bundled networks on preprocessed square inputs, what the
//! onnxruntime peer in ../shared/bench/style_ort.py times (multistyle26 at 256, 512, 1024 and 2048;
//! Magenta's predictor at 256 and transformer at 256, 384, 512). Each configuration runs in a fresh
//! process, as the peer's do, so that peak memory is per configuration. Prints one JSON line each,
//! in the peer's field names.

use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::imageops::FilterType;
use serde_json::json;
use zoo_runtime::test_support::{peak_rss_mb, time_loop};
use zoo_style_transfer::network::{Style, StyleNet};
use zoo_style_transfer::predictor::StylePredictor;

const CONFIGS: &[(&str, u32)] = &[
    ("multistyle26", 256),
    ("multistyle26", 512),
    ("multistyle26", 1024),
    ("multistyle26", 2048),
    ("magenta-predict", 256),
    ("magenta-transform", 256),
    ("magenta-transform", 384),
    ("magenta-transform", 512),
];

fn vb(path: &str) -> VarBuilder<'static> {
    let bytes = zoo_runtime::bundled::file(path).expect("bundled");
    VarBuilder::from_slice_safetensors(bytes, DType::F32, &Device::Cpu).unwrap()
}

/// The peer's content: amber.jpg from the shared assets (or a bundled photo), resized to size x size.
fn content(size: u32) -> Tensor {
    let shared = zoo_runtime::test_support::repo_root().join("../shared/assets/data/style/content-images/amber.jpg");
    let path =
        if shared.is_file() { shared } else { zoo_runtime::test_support::repo_root().join("tests/data/chelsea.png") };
    let rgb = image::open(path).unwrap().resize_exact(size, size, FilterType::Triangle).to_rgb8();
    let n = size as usize;
    let data: Vec<f32> = rgb.into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect();
    Tensor::from_vec(data, (1, n, n, 3), &Device::Cpu).unwrap().permute((0, 3, 1, 2)).unwrap().contiguous().unwrap()
}

fn one(model: &str, size: u32, min: Duration) {
    let load_start = Instant::now();
    let x = content(size);
    let (n, secs, weights) = match model {
        "multistyle26" => {
            let net = StyleNet::multistyle(&vb("multistyle26/multistyle26.safetensors")).unwrap();
            let mut w = vec![0f32; net.style_size];
            w[0] = 1.0;
            let norms = net.norms(&Style::Mix(w)).unwrap();
            let (n, s, _) = time_loop(min, || {
                net.run(&x, &norms).unwrap();
            });
            (n, s, "bundled f32")
        }
        "magenta-predict" => {
            let predictor = StylePredictor::load(&vb("magenta-arbitrary/style_predict.safetensors")).unwrap();
            // The predictor takes pictures as they are stored, NHWC.
            let x = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let (n, s, _) = time_loop(min, || {
                predictor.forward(&x).unwrap();
            });
            (n, s, "bundled f32")
        }
        _ => {
            let predictor = StylePredictor::load(&vb("magenta-arbitrary/style_predict.safetensors")).unwrap();
            let net = StyleNet::magenta(&vb("magenta-arbitrary/style_transform.safetensors")).unwrap();
            let content = content(256).permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let style = predictor.forward(&content).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let norms = net.norms(&Style::Vector(style)).unwrap();
            let (n, s, _) = time_loop(min, || {
                net.run(&x, &norms).unwrap();
            });
            (n, s, "bundled f32")
        }
    };
    let load_s = load_start.elapsed().as_secs_f64() - secs;
    let per_s = f64::from(n) / secs;
    println!(
        "{}",
        json!({"task": "style", "peer": "zoo (candle + gemm)", "model": model, "weights": weights,
               "input": format!("{size}x{size}"), "batch": 1, "threads": candle_core::utils::get_num_threads(),
               "iters": n, "wall_s": secs, "items_per_s": per_s, "ms_per_item": 1000.0 / per_s,
               "peak_rss_mb": peak_rss_mb(), "setup_s": load_s})
    );
}

fn main() {
    let min =
        Duration::from_secs_f64(std::env::var("ZOO_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0));
    if let Ok(config) = std::env::var("ZOO_BENCH_ONE") {
        let (model, size) = config.split_once(':').expect("model:size");
        one(model, size.parse().expect("size"), min);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (model, size) in CONFIGS {
        // cargo bench passes --bench; the child needs nothing but the configuration.
        let status = Command::new(&exe).env("ZOO_BENCH_ONE", format!("{model}:{size}")).status().unwrap();
        assert!(status.success(), "{model} {size}: {status}");
    }
}
