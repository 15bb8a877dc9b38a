//! Hugging Face ViTForImageClassification checkpoints load and classify: a tiny randomly
//! initialised model in exact transformers naming, written here, with a classifier head set so
//! that the expected probabilities are known in closed form whatever the random backbone does.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use zoo_image_classification::preprocess::Resize;
use zoo_image_classification::Classifier;
use zoo_runtime::{HubSettings, Input, Model, ModelRef};

const HIDDEN: usize = 32;
const LAYERS: usize = 2;
const INTERMEDIATE: usize = 64;
const IMAGE: usize = 32;
const PATCH: usize = 8;
const LABELS: [&str; 3] = ["cat", "dog", "teapot"];
/// Classifier bias; with a zero weight matrix the logits are exactly this, for any image.
const BIAS: [f32; 3] = [0.5, 2.0, -1.0];

fn write_checkpoint(dir: &std::path::Path) {
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: &str, shape: &[usize]| {
        t.insert(name.to_string(), Tensor::randn(0f32, 0.2, shape, &dev).unwrap());
    };
    let patches = (IMAGE / PATCH) * (IMAGE / PATCH);
    put("vit.embeddings.cls_token", &[1, 1, HIDDEN]);
    put("vit.embeddings.position_embeddings", &[1, patches + 1, HIDDEN]);
    put("vit.embeddings.patch_embeddings.projection.weight", &[HIDDEN, 3, PATCH, PATCH]);
    put("vit.embeddings.patch_embeddings.projection.bias", &[HIDDEN]);
    for i in 0..LAYERS {
        let p = format!("vit.encoder.layer.{i}");
        for name in [
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
            "attention.output.dense",
        ] {
            put(&format!("{p}.{name}.weight"), &[HIDDEN, HIDDEN]);
            put(&format!("{p}.{name}.bias"), &[HIDDEN]);
        }
        put(&format!("{p}.intermediate.dense.weight"), &[INTERMEDIATE, HIDDEN]);
        put(&format!("{p}.intermediate.dense.bias"), &[INTERMEDIATE]);
        put(&format!("{p}.output.dense.weight"), &[HIDDEN, INTERMEDIATE]);
        put(&format!("{p}.output.dense.bias"), &[HIDDEN]);
        for ln in ["layernorm_before", "layernorm_after"] {
            put(&format!("{p}.{ln}.weight"), &[HIDDEN]);
            put(&format!("{p}.{ln}.bias"), &[HIDDEN]);
        }
    }
    put("vit.layernorm.weight", &[HIDDEN]);
    put("vit.layernorm.bias", &[HIDDEN]);
    t.insert("classifier.weight".into(), Tensor::zeros((LABELS.len(), HIDDEN), DType::F32, &dev).unwrap());
    t.insert("classifier.bias".into(), Tensor::new(&BIAS, &dev).unwrap());
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();

    let id2label: serde_json::Map<String, serde_json::Value> =
        LABELS.iter().enumerate().map(|(i, l)| (i.to_string(), (*l).into())).collect();
    let config = serde_json::json!({
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "intermediate_size": INTERMEDIATE, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "image_size": IMAGE, "patch_size": PATCH, "num_channels": 3, "qkv_bias": true,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
        "id2label": id2label,
        "label2id": {"cat": 0, "dog": 1, "teapot": 2},
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let processor = serde_json::json!({
        "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": IMAGE, "width": IMAGE}
    });
    std::fs::write(dir.join("preprocessor_config.json"), serde_json::to_vec_pretty(&processor).unwrap()).unwrap();
}

#[test]
fn vit_checkpoint_in_transformers_naming_classifies_with_its_own_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path());
    let image_path = dir.path().join("photo.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 128])).save(&image_path).unwrap();

    let model = Model::resolve(&ModelRef::Local(dir.path().to_path_buf()), &HubSettings::from_env(true));
    let classifier = Classifier::load(&model, &Device::Cpu).unwrap();
    assert_eq!(classifier.labels(), LABELS);
    // preprocessor_config.json decides the input: 32x32 exactly, (p/255 - 0.5) / 0.5, NCHW.
    assert!(matches!(classifier.preprocess().resize, Resize::Exact { height: 32, width: 32 }));
    let x = classifier.prepare(&Input::file(&image_path)).unwrap();
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
