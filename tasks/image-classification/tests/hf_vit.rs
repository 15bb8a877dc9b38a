//! Hugging Face ViTForImageClassification checkpoints load and classify: a tiny randomly
//! initialised model in exact transformers naming, written here, with a classifier head set so
//! that the expected probabilities are known in closed form whatever the random backbone does.

#[path = "support/tiny_vit.rs"]
mod tiny_vit;

use candle_core::Device;
use tiny_vit::{BIAS, IMAGE, LABELS};
use zoo_image_classification::preprocess::Resize;
use zoo_image_classification::Classifier;
use zoo_runtime::{HubSettings, Input, Model, ModelRef};

#[test]
fn vit_checkpoint_in_transformers_naming_classifies_with_its_own_labels() {
    let dir = tempfile::tempdir().unwrap();
    tiny_vit::write(dir.path());
    let image_path = dir.path().join("photo.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 128])).save(&image_path).unwrap();

    let model = Model::resolve(&ModelRef::Local(dir.path().to_path_buf()), &HubSettings::from_env(true));
    let classifier = Classifier::load(&model, &Device::Cpu).unwrap();
    assert_eq!(classifier.labels(), LABELS);
    // preprocessor_config.json decides the input: 32x32 exactly, (p/255 - 0.5) / 0.5, NCHW.
    assert!(matches!(classifier.preprocess().resize, Resize::Exact { height: 32, width: 32 }));
    let (x, _) = classifier.prepare(&Input::file(&image_path)).unwrap();
    assert_eq!(x.dims(), &[1, 3, IMAGE, IMAGE]);
    let pixels: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert!(pixels.iter().all(|v| (-1.0..=1.0).contains(v)));

    let result = classifier.top_k(&classifier.logits(&x).unwrap(), 3).unwrap().remove(0);
    let exp: Vec<f32> = BIAS.iter().map(|b| b.exp()).collect();
    let sum: f32 = exp.iter().sum();
    let labels: Vec<&str> = result.predictions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["dog", "cat", "teapot"]);
    for p in &result.predictions {
        let expected = exp[p.index] / sum;
        assert!((p.score - expected).abs() < 1e-5, "{}: {} vs {expected}", p.label, p.score);
    }
}

#[test]
fn unsupported_architectures_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"architectures": ["SwinForImageClassification"]}"#).unwrap();
    let model = Model::resolve(&ModelRef::Local(dir.path().to_path_buf()), &HubSettings::from_env(true));
    let err = Classifier::load(&model, &Device::Cpu).err().expect("Swin is not supported").to_string();
    assert!(err.contains("SwinForImageClassification") && err.contains("unsupported"), "{err}");
}
