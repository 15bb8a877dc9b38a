//! A tiny randomly initialised ViTForImageClassification checkpoint in exact transformers naming
//! (config.json, preprocessor_config.json, model.safetensors), with a classifier head whose
//! weights are zero, so that its probabilities are known in closed form whatever the backbone does.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

pub const HIDDEN: usize = 32;
pub const LAYERS: usize = 2;
pub const INTERMEDIATE: usize = 64;
pub const IMAGE: usize = 32;
pub const PATCH: usize = 8;
pub const LABELS: [&str; 3] = ["cat", "dog", "teapot"];
/// Classifier bias; with a zero weight matrix the logits are exactly this, for any image.
pub const BIAS: [f32; 3] = [0.5, 2.0, -1.0];

pub fn write(dir: &std::path::Path) {
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
