//! End-to-end tests of `zoo run object-detection`: what a user types, what it prints and writes,
//! the exit codes. Every run gets an empty Hugging Face cache and no reachable Hub, which also
//! proves the bundled detector needs no download. The detections themselves are checked against
//! the independent reference in `tasks/object-detection/tests/reference.rs`.

use std::path::Path;

use serde_json::Value;
use zoo_bin::{data, zoo};

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn objects(line: &Value) -> Vec<(String, f64, Vec<u64>)> {
    line["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let bbox = o["box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            (o["label"].as_str().unwrap().to_string(), o["score"].as_f64().unwrap(), bbox)
        })
        .collect()
}

#[test]
fn the_bundled_detector_finds_the_cat_and_the_cups_offline() {
    let (cat, cups) = (data("chelsea.png"), data("coffee.png"));
    let run = zoo(&["run", "detect", s(&cat), s(&cups), "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.stderr, "");
    let lines = run.json_lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["model"], "fastestdet");
    assert_eq!((lines[0]["width"].as_u64(), lines[0]["height"].as_u64()), (Some(451), Some(300)));
    let found = objects(&lines[0]);
    assert_eq!(found.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(), ["cat"], "{found:?}");
    let [x, y, w, h] = found[0].2[..] else { panic!() };
    assert!(x + w <= 451 && y + h <= 300 && w > 300 && h > 200, "the cat fills the photo: {found:?}");
    assert!(objects(&lines[1]).iter().any(|o| o.0 == "cup"), "{:?}", lines[1]);

    // The same run for people: one block per picture, an object per line.
    let human = zoo(&["run", "objects", s(&cat)]);
    assert_eq!(human.code, 0, "{}", human.describe());
    assert!(human.stdout.contains("cat (15)  at x "), "{}", human.stdout);
}

#[test]
fn options_filter_and_lower_the_threshold() {
    let cups = data("coffee.png");
    let all = objects(&zoo(&["run", "detect", s(&cups), "--json", "--min-score", "0.3"]).json_lines()[0]);
    let default = objects(&zoo(&["run", "detect", s(&cups), "--json"]).json_lines()[0]);
    assert!(all.len() > default.len(), "a lower threshold finds more: {all:?} / {default:?}");
    assert!(default.iter().all(|o| o.1 > 0.65 && all.contains(o)), "{default:?} within {all:?}");
    assert!(all.windows(2).all(|w| w[0].1 >= w[1].1), "best first: {all:?}");

    // --classes keeps only the named classes (case as the user types it).
    let cups_only =
        objects(&zoo(&["run", "detect", s(&cups), "--json", "--min-score", "0.3", "--classes", "Cup"]).json_lines()[0]);
    assert!(!cups_only.is_empty() && cups_only.iter().all(|o| o.0 == "cup"), "{cups_only:?}");
    let all_cups: Vec<_> = all.iter().filter(|o| o.0 == "cup").cloned().collect();
    assert_eq!(cups_only, all_cups, "the plain run's cups, no more");

    // --iou 0 lets no two boxes overlap.
    let apart =
        objects(&zoo(&["run", "detect", s(&cups), "--json", "--min-score", "0.3", "--iou", "0"]).json_lines()[0]);
    for (i, a) in apart.iter().enumerate() {
        for b in &apart[i + 1..] {
            let overlap_x = a.2[0] < b.2[0] + b.2[2] && b.2[0] < a.2[0] + a.2[2];
            let overlap_y = a.2[1] < b.2[1] + b.2[3] && b.2[1] < a.2[1] + a.2[3];
            assert!(!(overlap_x && overlap_y), "{a:?} overlaps {b:?}");
        }
    }
}

#[test]
fn output_dir_draws_the_boxes_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("boxed");
    let cat = data("chelsea.png");
    let run = zoo(&["run", "detect", s(&cat), "--output-dir", s(&out), "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let line = &run.json_lines()[0];
    let written = out.join("chelsea.png");
    assert_eq!(line["output"], s(&written));
    let drawn = image::open(&written).unwrap().to_rgb8();
    let original = image::open(&cat).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    // The box's left edge is drawn; the middle of the picture is as it was.
    let [x, y, _, h] = objects(line)[0].2[..] else { panic!() };
    let edge = (x as u32, (y + h / 2) as u32);
    assert_ne!(drawn.get_pixel(edge.0, edge.1), original.get_pixel(edge.0, edge.1));
    assert_eq!(drawn.get_pixel(225, 150), original.get_pixel(225, 150));

    // A second run does not replace the picture unless told to.
    let again = zoo(&["run", "detect", s(&cat), "--output-dir", s(&out)]);
    assert_eq!(again.code, 1, "{}", again.describe());
    assert!(again.error_line().contains("chelsea.png: already exists (use --force"), "{}", again.stderr);
    let forced = zoo(&["run", "detect", s(&cat), "--output-dir", s(&out), "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.describe());
}

#[test]
fn bad_options_and_inputs_get_one_line_errors() {
    let cat = data("chelsea.png");
    for (args, says) in [
        (vec!["--classes", "unicorn"], "'unicorn' is not one of the model's 80 classes (person, bicycle"),
        (vec!["--classes", ","], "names no class"),
        (vec!["--min-score", "1.5"], "--min-score: must be between 0 and 1"),
        (vec!["--iou", "1.5"], "--iou: must be between 0 and 1"),
        (vec!["--batch-size", "0"], "--batch-size: must be at least 1"),
    ] {
        let mut all = vec!["run", "detect", s(&cat)];
        all.extend(&args);
        let run = zoo(&all);
        assert_eq!(run.code, 2, "{args:?}: {}", run.describe());
        let line = run.error_line();
        assert!(line.contains(says), "{args:?}: {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "not a picture").unwrap();
    let run = zoo(&["run", "detect", s(&text), s(&cat), "--json"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(run.stderr.starts_with("zoo: error: ") && run.stderr.contains("notes.jpg: not an image zoo can read"));
    let lines = run.json_lines();
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .ends_with("notes.jpg: not an image zoo can read (JPEG, PNG, WebP, BMP or GIF)"));
    assert_eq!(lines[1]["objects"][0]["label"], "cat", "the good input still ran");
}

#[test]
fn explain_maps_each_object_over_its_box_and_surroundings() {
    let dir = tempfile::tempdir().unwrap();
    let heat = dir.path().join("heat");
    let cat = data("chelsea.png");
    let run = zoo(&["run", "detect", s(&cat), "--explain-out", s(&heat), "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let line = &run.json_lines()[0];
    let objects = line["objects"].as_array().unwrap();
    assert!(!objects.is_empty());
    for object in objects {
        let e = &object["explanation"];
        assert_eq!(e["method"], "occlusion");
        let grid = e["grid"].as_array().unwrap();
        assert_eq!(grid.len(), 8);
        assert!(grid.iter().all(|row| row.as_array().unwrap().len() == 8));
        // The region holds the box.
        let r: Vec<u64> = e["region"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let b: Vec<u64> = object["box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert!(
            r[0] <= b[0] && r[1] <= b[1] && r[0] + r[2] >= b[0] + b[2] && r[1] + r[3] >= b[1] + b[3],
            "{r:?} {b:?}"
        );
        // Hiding some part of a cat matters to the cat.
        let best = grid.iter().flat_map(|row| row.as_array().unwrap()).map(|v| v.as_f64().unwrap()).fold(0.0, f64::max);
        assert!(best > 0.05, "no cell lowers the score: {grid:?}");
    }
    let overlay = heat.join("chelsea.explain.png");
    assert_eq!(line["explanation_overlay"], s(&overlay));
    assert_eq!(image::image_dimensions(&overlay).unwrap(), (451, 300));
    // The same objects as without --explain: explaining does not change what is found.
    let plain = zoo(&["run", "detect", s(&cat), "--json"]).json_lines();
    assert_eq!(objects.len(), plain[0]["objects"].as_array().unwrap().len());
    let human = zoo(&["run", "detect", s(&cat), "--explain"]);
    assert!(human.stdout.contains("where it rests (occlusion over x "), "{}", human.stdout);
}

/// A tiny randomly initialised YolosForObjectDetection checkpoint in exact Transformers naming
/// (config.json, preprocessor_config.json, model.safetensors), with mid-layer position
/// embeddings and a trained size other than the picture's, so that interpolation is exercised.
fn write_tiny_yolos(dir: &Path) {
    use candle_core::{Device, Tensor};
    let (hidden, layers, inner, patch, tokens, classes) = (16usize, 2usize, 32usize, 8usize, 5usize, 3usize);
    let trained = [40usize, 56usize];
    let sequence = 1 + (trained[0] / patch) * (trained[1] / patch) + tokens;
    let mut t = std::collections::HashMap::new();
    let mut seed = 0u64;
    let mut put = |name: &str, shape: &[usize], std: f32| {
        seed += 1;
        // Deterministic, so that a failure reproduces.
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let v = ((i as u64 + 1) * 2654435761 + seed * 40503) % 10007;
                (v as f32 / 10007.0 - 0.5) * 2.0 * std
            })
            .collect();
        t.insert(name.to_string(), Tensor::from_vec(values, shape, &Device::Cpu).unwrap());
    };
    put("vit.embeddings.cls_token", &[1, 1, hidden], 0.5);
    put("vit.embeddings.detection_tokens", &[1, tokens, hidden], 0.5);
    put("vit.embeddings.position_embeddings", &[1, sequence, hidden], 0.5);
    put("vit.embeddings.patch_embeddings.projection.weight", &[hidden, 3, patch, patch], 0.1);
    put("vit.embeddings.patch_embeddings.projection.bias", &[hidden], 0.1);
    put("vit.encoder.mid_position_embeddings", &[layers - 1, 1, sequence, hidden], 0.5);
    for i in 0..layers {
        let p = format!("vit.encoder.layer.{i}");
        for (name, o, n) in [
            ("attention.attention.query", hidden, hidden),
            ("attention.attention.key", hidden, hidden),
            ("attention.attention.value", hidden, hidden),
            ("attention.output.dense", hidden, hidden),
            ("intermediate.dense", inner, hidden),
            ("output.dense", hidden, inner),
        ] {
            put(&format!("{p}.{name}.weight"), &[o, n], 0.4);
            put(&format!("{p}.{name}.bias"), &[o], 0.1);
        }
        for norm in ["layernorm_before", "layernorm_after"] {
            put(&format!("{p}.{norm}.weight"), &[hidden], 1.0);
            put(&format!("{p}.{norm}.bias"), &[hidden], 0.2);
        }
    }
    put("vit.layernorm.weight", &[hidden], 1.0);
    put("vit.layernorm.bias", &[hidden], 0.2);
    for (head, out) in [("class_labels_classifier", classes + 1), ("bbox_predictor", 4)] {
        for (k, o) in [(0, hidden), (1, hidden), (2, out)] {
            put(&format!("{head}.layers.{k}.weight"), &[o, hidden], 0.6);
            put(&format!("{head}.layers.{k}.bias"), &[o], 0.3);
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["YolosForObjectDetection"], "model_type": "yolos",
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 2, "intermediate_size": inner,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": trained, "patch_size": patch,
        "num_channels": 3, "qkv_bias": true, "num_detection_tokens": tokens, "use_mid_position_embeddings": true,
        "id2label": {"0": "N/A", "1": "person", "2": "dog"}, "label2id": {"N/A": 0, "person": 1, "dog": 2},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let processor = serde_json::json!({
        "image_processor_type": "YolosImageProcessor", "do_resize": true,
        "size": {"shortest_edge": 32, "longest_edge": 48}, "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    });
    std::fs::write(dir.join("preprocessor_config.json"), processor.to_string()).unwrap();
}

/// A Transformers YOLOS checkpoint runs through `--model DIR` and finds what an independent numpy
/// YOLOS (tests/python/yolos_reference.py, written from Transformers' code) finds: every
/// detection token's class and score, and its box, at a picture of 6x4 patches where the
/// checkpoint's position embeddings are for 7x5.
#[test]
fn a_transformers_yolos_checkpoint_detects_as_an_independent_computation_does() {
    let Some(python) = zoo_bin::pinned_venv("yolos-reference-venv", &["numpy==2.4.6"], "YOLOS was not checked") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-yolos");
    std::fs::create_dir(&model).unwrap();
    write_tiny_yolos(&model);
    // 48x32: the processor's own output size (shorter side 32, sides multiples of 16), so no
    // resize differs; the reference checks that too.
    let (w, h) = (48u32, 32u32);
    let picture =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 6) as u8, (y * 10) as u8, ((x * y) % 251) as u8]));
    let png = dir.path().join("photo.png");
    picture.save(&png).unwrap();
    let raw = dir.path().join("photo.rgb");
    std::fs::write(&raw, picture.as_raw()).unwrap();

    let threshold = "0.05";
    let run = zoo(&["run", "detect", s(&png), "--model", s(&model), "--min-score", threshold, "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let ours = objects(&run.json_lines()[0]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/yolos_reference.py");
    let reference = std::process::Command::new(python)
        .arg(script)
        .args([s(&model), s(&raw), &w.to_string(), &h.to_string(), threshold])
        .output()
        .unwrap();
    assert!(reference.status.success(), "{}", String::from_utf8_lossy(&reference.stderr));
    let want: Vec<Value> = serde_json::from_slice(&reference.stdout).unwrap();
    assert!(want.len() >= 3, "the tiny model keeps most of its 5 tokens: {want:?}");
    assert_eq!(ours.len(), want.len(), "ours {ours:?}\nreference {want:?}");
    for ((label, score, bbox), want) in ours.iter().zip(&want) {
        assert_eq!(label, want["label"].as_str().unwrap());
        assert!((score - want["score"].as_f64().unwrap()).abs() < 1e-4, "{score} vs {want}");
        let c: Vec<f64> = want["corners"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let clip = |v: f64, max: u32| v.round().clamp(0.0, f64::from(max)) as u64;
        let (x0, y0, x1, y1) = (clip(c[0], w), clip(c[1], h), clip(c[2], w), clip(c[3], h));
        let expected = [x0, y0, x1 - x0, y1 - y0];
        for (a, b) in bbox.iter().zip(expected) {
            assert!(a.abs_diff(b) <= 1, "{bbox:?} vs {expected:?} ({want})");
        }
    }
    // --classes names the checkpoint's own labels; --explain works on YOLOS too.
    let dogs =
        zoo(&["run", "detect", s(&png), "--model", s(&model), "--min-score", threshold, "--classes", "dog", "--json"]);
    let dogs = objects(&dogs.json_lines()[0]);
    assert_eq!(dogs.len(), want.iter().filter(|o| o["label"] == "dog").count(), "{dogs:?}");
    let explained =
        zoo(&["run", "detect", s(&png), "--model", s(&model), "--min-score", threshold, "--explain", "--json"]);
    assert_eq!(explained.code, 0, "{}", explained.describe());
    let line = &explained.json_lines()[0];
    assert_eq!(line["objects"][0]["explanation"]["grid"].as_array().unwrap().len(), 8);
}
