//! Hugging Face Transformers sequence classifiers (`BertForSequenceClassification`,
//! `DistilBertForSequenceClassification`, `RobertaForSequenceClassification`,
//! `XLMRobertaForSequenceClassification`) as the Hub publishes them: the architecture from
//! `config.json`, labels from its `id2label`, weights from `model.safetensors` (or a zip-format
//! `pytorch_model.bin`), tokens from `tokenizer.json`.
//!
//! candle-transformers runs the encoders, with two detours:
//! - DistilBERT is read as a BERT without token types: candle's own `distilbert` module applies
//!   the tanh approximation of GELU where transformers applies the exact (erf) one, which moves
//!   probabilities by ~1e-3. The layers are otherwise BERT's, so its weights are renamed onto
//!   `BertModel`, which is exact, with an all-zero token-type table.
//! - `BertModel` stops at the last hidden state: the pooler and classifier are added here.

use candle_core::{DType, Device, IndexOp, Module, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::bert::{self, BertModel};
use candle_transformers::models::xlm_roberta::{self, XLMRobertaForSequenceClassification};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zoo_runtime::model::TransformerSizes;
use zoo_runtime::{Error, Model, Result};

use crate::calibration::Scaling;
use crate::windows::{pad_batch, Windowing, Windows};

/// The `architectures` zoo runs, as config.json names them.
pub const SUPPORTED: [&str; 4] = [
    "BertForSequenceClassification",
    "DistilBertForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    Bert,
    DistilBert,
    Roberta,
}

enum Network {
    /// BERT, and DistilBERT renamed onto it; `dense` is BERT's pooler (tanh) or DistilBERT's
    /// pre_classifier (ReLU), applied to the first token.
    Bert {
        encoder: Box<BertModel>,
        dense: Linear,
        tanh: bool,
        classifier: Linear,
    },
    Roberta(Box<XLMRobertaForSequenceClassification>),
}

pub struct HubClassifier {
    network: Network,
    windowing: Windowing,
    labels: Vec<String>,
    /// Independent per-label sigmoids instead of one softmax, as transformers' pipeline does for
    /// `multi_label_classification` and single-output models.
    sigmoid: bool,
    /// Applied to the logits before the softmax: none, or what `zoo train --calibrate` fitted.
    scaling: Scaling,
    pad: u32,
    device: Device,
}

fn architecture(model_id: &str, config: &Value) -> Result<Arch> {
    let named = config.pointer("/architectures/0").and_then(Value::as_str);
    let from_type = || match config.get("model_type").and_then(Value::as_str) {
        Some("bert") => Some(SUPPORTED[0]),
        Some("distilbert") => Some(SUPPORTED[1]),
        Some("roberta") => Some(SUPPORTED[2]),
        Some("xlm-roberta") => Some(SUPPORTED[3]),
        _ => None,
    };
    match named.or_else(from_type) {
        Some("BertForSequenceClassification") => Ok(Arch::Bert),
        Some("DistilBertForSequenceClassification") => Ok(Arch::DistilBert),
        Some("RobertaForSequenceClassification" | "XLMRobertaForSequenceClassification") => Ok(Arch::Roberta),
        other => {
            let found = other
                .map(str::to_string)
                .or_else(|| config.get("model_type").and_then(Value::as_str).map(|t| format!("model_type {t}")))
                .unwrap_or_else(|| "none given".into());
            Err(Error::model(
                model_id,
                format!(
                    "unsupported architecture ({found}); fake-news runs a classifier head made by `zoo train fake-news` or a Transformers sequence classifier: {}",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    }
}

/// `config` with `defaults` filled in where it leaves them out (older configs omit some fields
/// transformers defaults).
fn with_defaults(config: &Value, defaults: Value) -> Value {
    let mut merged = defaults;
    if let (Some(m), Some(c)) = (merged.as_object_mut(), config.as_object()) {
        m.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    merged
}

/// transformers' activation names as candle's BERT spells them: its tanh-approximated GELU is
/// what transformers calls gelu_new, gelu_fast and gelu_pytorch_tanh. Others stay as they are, for
/// the config error to name.
fn bert_activation(name: &Value) -> Value {
    match name.as_str() {
        Some("gelu_new" | "gelu_fast" | "gelu_pytorch_tanh") => "geluapproximate".into(),
        _ => name.clone(),
    }
}

fn usize_field(config: &Value, name: &str, default: usize) -> usize {
    config.get(name).and_then(Value::as_u64).map_or(default, |v| v as usize)
}

/// Labels by class index from `id2label`, or transformers' own LABEL_i names when it is absent.
fn labels(model_id: &str, config: &Value, classes: usize) -> Result<Vec<String>> {
    let Some(map) = config.get("id2label").and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return Ok((0..classes).map(|i| format!("LABEL_{i}")).collect());
    };
    let mut labels = vec![None; classes];
    for (id, label) in map {
        let slot = id.parse::<usize>().ok().and_then(|i| labels.get_mut(i));
        match (slot, label.as_str()) {
            (Some(slot), Some(label)) => *slot = Some(label.to_string()),
            _ => {
                return Err(Error::model(
                    model_id,
                    format!(
                    "config.json: id2label entry {id}: {label} does not name one of the classifier's {classes} classes"
                ),
                ))
            }
        }
    }
    labels.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
        Error::model(
            model_id,
            format!("config.json: id2label names {} of the classifier's {classes} classes", map.len()),
        )
    })
}

/// The weights as a VarBuilder whose names are BERT's (for DistilBERT too) and whose old
/// TensorFlow-style LayerNorm names (gamma, beta) are read as weight and bias, as transformers
/// reads them.
struct HfNames {
    inner: VarBuilder<'static>,
    distilbert: bool,
}

impl HfNames {
    const TOKEN_TYPES: &'static str = "embeddings.token_type_embeddings.weight";

    fn resolve(&self, name: &str) -> String {
        let name = if self.distilbert { distilbert_name(name) } else { name.to_string() };
        if self.inner.contains_tensor(&name) {
            return name;
        }
        let old = [(".weight", ".gamma"), (".bias", ".beta")]
            .iter()
            .find_map(|(new, old)| name.strip_suffix(new).map(|stem| format!("{stem}{old}")));
        old.filter(|o| self.inner.contains_tensor(o)).unwrap_or(name)
    }
}

/// A BertModel tensor name (under `bert.`) as DistilBERT's checkpoint calls it.
fn distilbert_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("bert.") else { return name.to_string() };
    if let Some(layer) = rest.strip_prefix("encoder.layer.") {
        let (index, part) = layer.split_once('.').unwrap_or((layer, ""));
        const PARTS: [(&str, &str); 8] = [
            ("attention.self.query.", "attention.q_lin."),
            ("attention.self.key.", "attention.k_lin."),
            ("attention.self.value.", "attention.v_lin."),
            ("attention.output.dense.", "attention.out_lin."),
            ("attention.output.LayerNorm.", "sa_layer_norm."),
            ("intermediate.dense.", "ffn.lin1."),
            ("output.dense.", "ffn.lin2."),
            ("output.LayerNorm.", "output_layer_norm."),
        ];
        for (bert, distil) in PARTS {
            if let Some(param) = part.strip_prefix(bert) {
                return format!("distilbert.transformer.layer.{index}.{distil}{param}");
            }
        }
    }
    format!("distilbert.{rest}")
}

impl SimpleBackend for HfNames {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if self.distilbert && name.strip_prefix("bert.") == Some(Self::TOKEN_TYPES) {
            // DistilBERT has no token types: a zero table adds nothing, as its embeddings don't.
            return Tensor::zeros(s, dtype, dev);
        }
        self.inner.get_with_hints_dtype(s, &self.resolve(name), h, dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked_dtype(&self.resolve(name), dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.distilbert && name.strip_prefix("bert.") == Some(Self::TOKEN_TYPES))
            || self.inner.contains_tensor(&self.resolve(name))
    }
}

/// Checks a text encoder's sizes (see [`TransformerSizes`]), bounded well above any published
/// model's (XLM-R's vocabulary is 250k, long-context encoders' position tables 8k). A macro
/// because BERT's and XLM-R's configs are different types that name these fields alike.
macro_rules! check_sizes {
    ($id:expr, $cfg:expr) => {
        TransformerSizes {
            hidden_size: $cfg.hidden_size,
            num_attention_heads: $cfg.num_attention_heads,
            num_hidden_layers: $cfg.num_hidden_layers,
            intermediate_size: $cfg.intermediate_size,
        }
        .check(
            $id,
            &[
                ("vocab_size", $cfg.vocab_size, 1..=1 << 22),
                ("max_position_embeddings", $cfg.max_position_embeddings, 1..=1 << 16),
                ("type_vocab_size", $cfg.type_vocab_size, 1..=1024),
            ],
        )
    };
}

impl HubClassifier {
    pub fn load(model: &Model, device: &Device) -> Result<Self> {
        let id = model.id.as_str();
        let config: Value = model.json("config.json")?;
        let arch = architecture(id, &config)?;
        let sigmoid = match config.get("problem_type").and_then(Value::as_str) {
            Some("regression") => {
                return Err(Error::model(id, "a regression model (problem_type regression), not a classifier"))
            }
            Some("multi_label_classification") => true,
            _ => false,
        };
        let Some(tokenizer) = model.optional_file("tokenizer.json")? else {
            return Err(Error::model(
                id,
                "no tokenizer.json: zoo reads the fast-tokenizer file (save one from Python with \
                 AutoTokenizer.from_pretrained(...).save_pretrained(folder))",
            ));
        };
        let bad = |e: candle_core::Error| Error::model(id, e);
        let bad_config = |e: serde_json::Error| Error::model(id, format!("config.json: {e}"));
        let vb = VarBuilder::from_backend(
            Box::new(HfNames {
                inner: model.transformers_weights(DType::F32, device)?,
                distilbert: arch == Arch::DistilBert,
            }),
            DType::F32,
            device.clone(),
        );
        let classes_of = |name: &str| -> Result<usize> {
            let w = vb.get_unchecked(name).map_err(bad)?;
            Ok(w.dims2().map_err(bad)?.0)
        };
        let pad = usize_field(&config, "pad_token_id", if arch == Arch::Roberta { 1 } else { 0 });
        let (network, classes, window) = match arch {
            Arch::Bert | Arch::DistilBert => {
                let mut cfg = if arch == Arch::Bert {
                    with_defaults(
                        &config,
                        json!({"hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 512,
                               "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}),
                    )
                } else {
                    // DistilBERT's fields under BERT's names; its LayerNorms are built with eps 1e-12.
                    json!({
                        "vocab_size": usize_field(&config, "vocab_size", 30522),
                        "hidden_size": usize_field(&config, "dim", 768),
                        "num_hidden_layers": usize_field(&config, "n_layers", 6),
                        "num_attention_heads": usize_field(&config, "n_heads", 12),
                        "intermediate_size": usize_field(&config, "hidden_dim", 3072),
                        "hidden_act": config.get("activation").cloned().unwrap_or("gelu".into()),
                        "hidden_dropout_prob": 0.1,
                        "max_position_embeddings": usize_field(&config, "max_position_embeddings", 512),
                        "type_vocab_size": 1, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": pad,
                    })
                };
                cfg["hidden_act"] = bert_activation(&cfg["hidden_act"]);
                let cfg: bert::Config = serde_json::from_value(cfg).map_err(bad_config)?;
                check_sizes!(id, cfg)?;
                let classes = classes_of("classifier.weight")?;
                let h = cfg.hidden_size;
                let (dense_name, tanh) =
                    if arch == Arch::Bert { ("bert.pooler.dense", true) } else { ("pre_classifier", false) };
                let network = Network::Bert {
                    encoder: Box::new(BertModel::load(vb.pp("bert"), &cfg).map_err(bad)?),
                    dense: candle_nn::linear(h, h, vb.pp(dense_name)).map_err(bad)?,
                    tanh,
                    classifier: candle_nn::linear(h, classes, vb.pp("classifier")).map_err(bad)?,
                };
                (network, classes, cfg.max_position_embeddings)
            }
            Arch::Roberta => {
                let cfg = with_defaults(
                    &config,
                    json!({"hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                           "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
                           "position_embedding_type": "absolute", "pad_token_id": 1}),
                );
                let cfg: xlm_roberta::Config = serde_json::from_value(cfg).map_err(bad_config)?;
                check_sizes!(id, cfg)?;
                // candle reads the field but always computes absolute positions.
                if cfg.position_embedding_type != "absolute" {
                    return Err(Error::model(
                        id,
                        format!(
                            "position_embedding_type {} is not supported (only absolute)",
                            cfg.position_embedding_type
                        ),
                    ));
                }
                let classes = classes_of("classifier.out_proj.weight")?;
                let net = XLMRobertaForSequenceClassification::new(classes, &cfg, vb.clone()).map_err(bad)?;
                // Positions count from pad_token_id + 1, so that many fewer fit in the table.
                let window = cfg.max_position_embeddings.saturating_sub(cfg.pad_token_id as usize + 1);
                (Network::Roberta(Box::new(net)), classes, window)
            }
        };
        let windowing = Windowing::new(id, &tokenizer.bytes()?, window, window / 4)?;
        let labels = labels(id, &config, classes)?;
        Ok(HubClassifier {
            network,
            windowing,
            labels,
            sigmoid: sigmoid || classes == 1,
            scaling: Scaling::identity(),
            pad: pad as u32,
            device: device.clone(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Tokens per window, special tokens included: the model's longest input.
    pub fn window(&self) -> usize {
        self.windowing.window()
    }

    pub fn windows(&self, text: &str) -> std::result::Result<Windows, String> {
        self.windowing.windows(text)
    }

    pub fn tokenize_plain(&self, text: &str) -> Vec<u32> {
        self.windowing.tokenize_plain(text)
    }

    /// The classifier's logits for each window, padded together into one batch.
    pub fn logits_tensor(&self, windows: &[&[u32]]) -> candle_core::Result<Tensor> {
        let (ids, mask) = pad_batch(windows, self.pad, &self.device)?;
        let types = ids.zeros_like()?;
        match &self.network {
            Network::Bert { encoder, dense, tanh, classifier } => {
                let first = encoder.forward(&ids, &types, Some(&mask))?.i((.., 0))?;
                let pooled = dense.forward(&first)?;
                let pooled = if *tanh { pooled.tanh()? } else { pooled.relu()? };
                classifier.forward(&pooled)
            }
            Network::Roberta(net) => net.forward(&ids, &mask, &types),
        }
    }

    pub fn logits(&self, windows: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        self.logits_tensor(windows)?.to_vec2()
    }

    /// Whether the labels are independent sigmoids rather than one softmax.
    pub fn multi_label(&self) -> bool {
        self.sigmoid
    }

    /// Applies a scaling fitted on validation data (see [`Calibration`]).
    pub fn calibrate(&mut self, scaling: Scaling) {
        self.scaling = scaling;
    }

    /// Label probabilities for each window: a softmax over the labels, or a sigmoid per label.
    pub fn probabilities(&self, windows: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let logits = self.scaling.apply(&self.logits_tensor(windows)?)?;
        let p =
            if self.sigmoid { candle_nn::ops::sigmoid(&logits)? } else { candle_nn::ops::softmax_last_dim(&logits)? };
        p.to_vec2()
    }
}

/// What `zoo train fake-news --calibrate MODEL` writes: a folder that `--model` runs as MODEL with
/// its logits divided by a temperature and shifted by a bias per label, fitted on labelled val texts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// The classifier: a Hub id or catalogue name as given, or a folder's absolute path.
    pub model: String,
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub scaling: Scaling,
    /// The val data and what calibration did on it, for the record.
    #[serde(default)]
    pub report: Value,
}

/// The file [`Calibration`] is kept in.
pub const CALIBRATION: &str = "calibration.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distilbert_names_map_onto_bert_names() {
        for (bert, distil) in [
            ("bert.embeddings.word_embeddings.weight", "distilbert.embeddings.word_embeddings.weight"),
            ("bert.embeddings.LayerNorm.bias", "distilbert.embeddings.LayerNorm.bias"),
            (
                "bert.encoder.layer.0.attention.self.query.weight",
                "distilbert.transformer.layer.0.attention.q_lin.weight",
            ),
            (
                "bert.encoder.layer.3.attention.output.dense.bias",
                "distilbert.transformer.layer.3.attention.out_lin.bias",
            ),
            (
                "bert.encoder.layer.1.attention.output.LayerNorm.weight",
                "distilbert.transformer.layer.1.sa_layer_norm.weight",
            ),
            ("bert.encoder.layer.1.intermediate.dense.weight", "distilbert.transformer.layer.1.ffn.lin1.weight"),
            ("bert.encoder.layer.11.output.dense.weight", "distilbert.transformer.layer.11.ffn.lin2.weight"),
            ("bert.encoder.layer.1.output.LayerNorm.bias", "distilbert.transformer.layer.1.output_layer_norm.bias"),
            ("pre_classifier.weight", "pre_classifier.weight"),
        ] {
            assert_eq!(distilbert_name(bert), distil);
        }
    }

    #[test]
    fn labels_come_from_id2label_or_fall_back_to_transformers_names() {
        let config = json!({"id2label": {"1": "real", "0": "fake"}});
        assert_eq!(labels("m", &config, 2).unwrap(), ["fake", "real"]);
        assert_eq!(labels("m", &json!({}), 3).unwrap(), ["LABEL_0", "LABEL_1", "LABEL_2"]);
        for bad in [json!({"id2label": {"0": "fake"}}), json!({"id2label": {"0": "a", "2": "b"}})] {
            let err = labels("m", &bad, 2).unwrap_err().to_string();
            assert!(err.contains("id2label"), "{err}");
        }
    }

    #[test]
    fn tanh_gelus_are_candles_approximate_gelu() {
        for (hf, candle) in
            [("gelu", "gelu"), ("gelu_new", "geluapproximate"), ("gelu_pytorch_tanh", "geluapproximate")]
        {
            let act: bert::HiddenAct = serde_json::from_value(bert_activation(&json!(hf))).unwrap();
            assert_eq!(act, serde_json::from_value(json!(candle)).unwrap(), "{hf}");
        }
    }

    #[test]
    fn architecture_comes_from_architectures_or_model_type() {
        assert_eq!(
            architecture("m", &json!({"architectures": ["DistilBertForSequenceClassification"]})).unwrap(),
            Arch::DistilBert
        );
        assert_eq!(architecture("m", &json!({"model_type": "xlm-roberta"})).unwrap(), Arch::Roberta);
        let err = architecture("m", &json!({"architectures": ["BertModel"]})).unwrap_err().to_string();
        assert!(err.contains("unsupported architecture (BertModel)") && err.contains(SUPPORTED[3]), "{err}");
    }
}
