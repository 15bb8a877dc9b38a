//! Fidelity of EfficientNet-Lite0 against the independent references in `../shared/assets`:
//! network parity on the stored 224x224 crops (numpy/onnxruntime logits), and top-1/top-5 on the
//! labelled ImageNet dev images through zoo's whole pipeline (decode, resize, crop).

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;
use zoo_image_classification::Classifier;
use zoo_runtime::test_support::shared_assets;
use zoo_runtime::{HubSettings, Input, Model, ModelRef};

fn load(reference: &str) -> Classifier {
    let hub = HubSettings::from_env(true);
    let model = Model::resolve(&ModelRef::parse(reference).unwrap(), &hub);
    Classifier::load(&model, &Device::Cpu).unwrap()
}

/// Max |logit difference| and whether top-5 agrees, over every golden image.
fn golden_parity(classifier: &Classifier, assets: &Path) -> (f32, Vec<String>) {
    let golden: Value =
        serde_json::from_slice(&std::fs::read(assets.join("reference/tf_efficientnet_lite0.golden.json")).unwrap())
            .unwrap();
    let mut max_diff = 0f32;
    let mut top5_mismatches = Vec::new();
    for image in golden["images"].as_array().unwrap() {
        let crop = image::open(assets.join(image["input_crop_png"].as_str().unwrap())).unwrap().to_rgb8();
        assert_eq!(crop.dimensions(), (224, 224));
        let x = classifier.preprocess().tensor(&crop, &Device::Cpu).unwrap();
        let logits: Vec<f32> = classifier.logits(&x).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let expected: Vec<f32> =
            image["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(logits.len(), expected.len());
        let diff = logits.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        max_diff = max_diff.max(diff);
        let top5: Vec<usize> = top_indices(&logits, 5);
        let want: Vec<usize> =
            image["top5"].as_array().unwrap().iter().map(|t| t[0].as_u64().unwrap() as usize).collect();
        if top5 != want {
            top5_mismatches.push(format!("{}: {top5:?} != {want:?}", image["file"]));
        }
    }
    (max_diff, top5_mismatches)
}

fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(k);
    order
}

#[test]
fn f32_weights_match_the_reference_logits() {
    let Some(assets) = shared_assets("f32_weights_match_the_reference_logits") else { return };
    let classifier = load(assets.join("models/tf_efficientnet_lite0").to_str().unwrap());
    let (max_diff, mismatches) = golden_parity(&classifier, &assets);
    eprintln!("f32 EfficientNet-Lite0: max |logit diff| vs reference = {max_diff:.2e}");
    assert!(max_diff <= 1e-3, "max logit difference {max_diff} over the 1e-3 tolerance");
    assert!(mismatches.is_empty(), "top-5 differs: {mismatches:?}");
}

#[test]
fn bundled_f16_weights_stay_close_to_the_reference_logits() {
    let Some(assets) = shared_assets("bundled_f16_weights_stay_close_to_the_reference_logits") else { return };
    let classifier = load("efficientnet-lite0");
    let (max_diff, mismatches) = golden_parity(&classifier, &assets);
    eprintln!("bundled f16 EfficientNet-Lite0: max |logit diff| vs f32 reference = {max_diff:.2e}");
    // float16 weights round each value to 11 significant bits; over 1000 logits of magnitude ~10
    // that moves them by about 1e-2, far below the gaps between classes that decide the top-5.
    assert!(max_diff <= 0.05, "max logit difference {max_diff}");
    assert!(mismatches.is_empty(), "top-5 differs: {mismatches:?}");
}

struct Accuracy {
    top1: usize,
    top5: usize,
    total: usize,
    predictions: Vec<usize>,
    logits: Vec<Vec<f32>>,
}

fn dev_accuracy(classifier: &Classifier, assets: &Path) -> Accuracy {
    let dir = assets.join("data/images/imagenet-dev");
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).unwrap();
    let mut rows: Vec<(String, usize)> = Vec::new();
    for line in labels.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        rows.push((cols[0].to_string(), cols[1].parse().unwrap()));
    }
    let mut acc = Accuracy { top1: 0, top5: 0, total: rows.len(), predictions: Vec::new(), logits: Vec::new() };
    for chunk in rows.chunks(16) {
        let xs: Vec<Tensor> =
            chunk.iter().map(|(file, _)| classifier.prepare(&Input::file(dir.join(file))).unwrap().0).collect();
        let logits = classifier.logits(&Tensor::cat(&xs, 0).unwrap()).unwrap().to_vec2::<f32>().unwrap();
        for ((_, label), row) in chunk.iter().zip(logits) {
            let top5 = top_indices(&row, 5);
            acc.top1 += usize::from(top5[0] == *label);
            acc.top5 += usize::from(top5.contains(label));
            acc.predictions.push(top5[0]);
            acc.logits.push(row);
        }
    }
    acc
}

/// The README of imagenet-dev sets the bar for a correct port: top-1 >= 129/150, top-5 >= 141/150
/// (the numpy reference gets 131 and 143; a preprocessing bug costs ~10 points).
#[test]
fn dev_set_accuracy_meets_the_reference_for_f32_and_bundled_f16() {
    let Some(assets) = shared_assets("dev_set_accuracy") else { return };
    let f32_acc = dev_accuracy(&load(assets.join("models/tf_efficientnet_lite0").to_str().unwrap()), &assets);
    let f16_acc = dev_accuracy(&load("efficientnet-lite0"), &assets);
    let changed = f32_acc.predictions.iter().zip(&f16_acc.predictions).filter(|(a, b)| a != b).count();
    eprintln!(
        "imagenet-dev: f32 top-1 {}/{} top-5 {}/{}; bundled f16 top-1 {}/{} top-5 {}/{}; top-1 changed by f16: {changed}",
        f32_acc.top1, f32_acc.total, f32_acc.top5, f32_acc.total, f16_acc.top1, f16_acc.total, f16_acc.top5, f16_acc.total
    );
    assert_eq!(f32_acc.total, 150);
    for (name, acc) in [("f32", &f32_acc), ("f16", &f16_acc)] {
        assert!(acc.top1 >= 129, "{name} top-1 {}/150 below 129", acc.top1);
        assert!(acc.top5 >= 141, "{name} top-5 {}/150 below 141", acc.top5);
    }
    assert!(f16_acc.top1 >= f32_acc.top1 - 1, "float16 loses accuracy: {} vs {}", f16_acc.top1, f32_acc.top1);
}

/// The int8 model against the float one it is quantized from, on the same dev images: top-1 and
/// top-5 within one image of it, and the logits' distance to it, reported.
#[test]
fn int8_model_keeps_the_float_models_accuracy() {
    let Some(assets) = shared_assets("int8_model_keeps_the_float_models_accuracy") else { return };
    let (float, int8) = (load("efficientnet-lite0"), load("efficientnet-lite0-int8"));
    let (float_acc, int8_acc) = (dev_accuracy(&float, &assets), dev_accuracy(&int8, &assets));
    let changed = float_acc.predictions.iter().zip(&int8_acc.predictions).filter(|(a, b)| a != b).count();
    let pairs = float_acc.logits.iter().flatten().zip(int8_acc.logits.iter().flatten());
    let diffs: Vec<f32> = pairs.map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().copied().fold(0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!(
        "imagenet-dev: float top-1 {}/{} top-5 {}/{}; int8 top-1 {}/{} top-5 {}/{}; top-1 changed by int8: {changed}; \
         int8 logits vs float: max |diff| {max:.3}, mean {mean:.4}",
        float_acc.top1,
        float_acc.total,
        float_acc.top5,
        float_acc.total,
        int8_acc.top1,
        int8_acc.total,
        int8_acc.top5,
        int8_acc.total
    );
    assert!(int8_acc.top1 + 1 >= float_acc.top1, "int8 top-1 {} vs float {}", int8_acc.top1, float_acc.top1);
    assert!(int8_acc.top5 + 1 >= float_acc.top5, "int8 top-5 {} vs float {}", int8_acc.top5, float_acc.top5);
    // Logits span about -10..25; quantization moves them by tenths. A kernel that mixed up
    // channels or dropped the zero point's correction moves them by whole units.
    assert!(max < 1.5 && mean < 0.1, "int8 logits far from the float model's: max {max}, mean {mean}");
}

/// The bundled calibration is what `make calibrate-int8` measures on the images it names (none
/// of them the dev images), so it can be remade and checked.
#[test]
fn int8_calibration_is_reproducible_from_the_images_it_names() {
    let Some(assets) = shared_assets("int8_calibration_is_reproducible_from_the_images_it_names") else { return };
    let bytes = zoo_runtime::bundled::file("efficientnet-lite0-int8/calibration.json").unwrap();
    let bundled: zoo_image_classification::Calibration = serde_json::from_slice(bytes).unwrap();
    assert!(bundled.images.iter().all(|i| !i.contains("imagenet-dev")), "calibrated on dev images");
    let inputs: Vec<Input> = bundled.images.iter().map(|i| Input::file(assets.join(i))).collect();
    let measured = load("efficientnet-lite0").calibrate(&inputs).unwrap();
    assert_eq!(measured.len(), bundled.inputs.len());
    for (i, (m, b)) in measured.iter().zip(&bundled.inputs).enumerate() {
        let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + y.abs());
        assert!(
            close(m.min, b.min) && close(m.max, b.max),
            "layer {i}: measured {}..{}, bundled {}..{}",
            m.min,
            m.max,
            b.min,
            b.max
        );
    }
}
