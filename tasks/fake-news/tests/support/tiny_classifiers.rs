//! Tiny randomly initialised Transformers sequence classifiers, written as the Hub publishes them:
//! `config.json` as transformers writes it, `model.safetensors` with every tensor the transformers
//! class has under its own name and shape, and a `tokenizer.json` (WordPiece for BERT and
//! DistilBERT, byte-level BPE for RoBERTa and XLM-R). The weights come from a seeded generator and
//! are returned too, for an independent computation to check against.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

pub const HIDDEN: usize = 32;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const INTERMEDIATE: usize = 37;
/// Tokens per window, special tokens included (max_position_embeddings, less RoBERTa's offset).
pub const WINDOW: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Bert,
    DistilBert,
    Roberta,
    XlmRoberta,
}

impl Arch {
    pub fn class_name(self) -> &'static str {
        match self {
            Arch::Bert => "BertForSequenceClassification",
            Arch::DistilBert => "DistilBertForSequenceClassification",
            Arch::Roberta => "RobertaForSequenceClassification",
            Arch::XlmRoberta => "XLMRobertaForSequenceClassification",
        }
    }

    pub fn is_roberta(self) -> bool {
        matches!(self, Arch::Roberta | Arch::XlmRoberta)
    }

    pub fn pad_id(self) -> u32 {
        if self.is_roberta() {
            1
        } else {
            0
        }
    }

    pub fn layer_norm_eps(self) -> f64 {
        if self.is_roberta() {
            1e-5
        } else {
            1e-12
        }
    }
}

/// What was written: every tensor (shape, values) by name, and the config.
pub struct Checkpoint {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub config: Value,
}

impl Checkpoint {
    pub fn get(&self, name: &str) -> &[f32] {
        &self.tensors.get(name).unwrap_or_else(|| panic!("no tensor {name}")).1
    }
}

/// xorshift64*: the same numbers on every machine, without a dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn wordpiece_vocab() -> Vec<String> {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from).to_vec();
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    vocab.extend(chars.iter().map(|c| c.to_string()));
    vocab.extend(".,!?'-:".chars().map(|c| c.to_string()));
    vocab.extend(chars.iter().map(|c| format!("##{c}")));
    vocab.extend(["the", "virus", "news", "vaccine", "cure", "covid", "towers", "spread", "5g"].map(String::from));
    vocab
}

fn added(tokens: &[&str]) -> Value {
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect()
}

/// `tokenizer.json` as the tokenizers library writes it for the architecture's tokenizer, and the
/// vocabulary size.
pub fn tokenizer_json(arch: Arch) -> (Value, usize) {
    if !arch.is_roberta() {
        let vocab = wordpiece_vocab();
        let ids: serde_json::Map<String, Value> =
            vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let special = |t: &str, id: u32| json!({"id": t, "ids": [id], "tokens": [t]});
        let json = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added(&["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {"[CLS]": special("[CLS]", 2), "[SEP]": special("[SEP]", 3)}
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": ids}
        });
        return (json, vocab.len());
    }
    // Byte-level BPE without merges: every byte of the text is one token.
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let mut vocab: Vec<String> = ["<s>", "<pad>", "</s>", "<unk>"].map(String::from).to_vec();
    vocab.extend(alphabet.iter().map(|c| c.to_string()));
    vocab.push("<mask>".into());
    let ids: serde_json::Map<String, Value> = vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let mut added_tokens = added(&["<s>", "<pad>", "</s>", "<unk>"]);
    added_tokens.as_array_mut().unwrap().push(json!({"id": vocab.len() - 1, "content": "<mask>", "single_word": false,
        "lstrip": true, "rstrip": false, "normalized": false, "special": true}));
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                           "trim_offsets": true, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": ids, "merges": []}
    });
    (json, vocab.len())
}

/// `config.json` as transformers writes it for the class.
fn config(arch: Arch, vocab: usize, labels: Option<&[&str]>, problem_type: Option<&str>) -> Value {
    let mut config = match arch {
        Arch::Bert => json!({
            "_name_or_path": "tiny-bert", "architectures": [arch.class_name()], "attention_probs_dropout_prob": 0.1,
            "classifier_dropout": null, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": HIDDEN,
            "initializer_range": 0.02, "intermediate_size": INTERMEDIATE, "layer_norm_eps": 1e-12,
            "max_position_embeddings": WINDOW, "model_type": "bert", "num_attention_heads": HEADS,
            "num_hidden_layers": LAYERS, "pad_token_id": 0, "position_embedding_type": "absolute",
            "torch_dtype": "float32", "transformers_version": "4.46.3", "type_vocab_size": 2, "use_cache": true,
            "vocab_size": vocab
        }),
        Arch::DistilBert => json!({
            "_name_or_path": "tiny-distilbert", "activation": "gelu", "architectures": [arch.class_name()],
            "attention_dropout": 0.1, "dim": HIDDEN, "dropout": 0.1, "hidden_dim": INTERMEDIATE,
            "initializer_range": 0.02, "max_position_embeddings": WINDOW, "model_type": "distilbert",
            "n_heads": HEADS, "n_layers": LAYERS, "pad_token_id": 0, "qa_dropout": 0.1, "seq_classif_dropout": 0.2,
            "sinusoidal_pos_embds": false, "tie_weights_": true, "torch_dtype": "float32",
            "transformers_version": "4.46.3", "vocab_size": vocab
        }),
        Arch::Roberta | Arch::XlmRoberta => json!({
            "_name_or_path": "tiny-roberta", "architectures": [arch.class_name()], "attention_probs_dropout_prob": 0.1,
            "bos_token_id": 0, "classifier_dropout": null, "eos_token_id": 2, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": HIDDEN, "initializer_range": 0.02,
            "intermediate_size": INTERMEDIATE, "layer_norm_eps": 1e-5, "max_position_embeddings": WINDOW + 2,
            "model_type": if arch == Arch::Roberta { "roberta" } else { "xlm-roberta" },
            "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "pad_token_id": 1,
            "position_embedding_type": "absolute", "torch_dtype": "float32", "transformers_version": "4.46.3",
            "type_vocab_size": 1, "use_cache": true, "vocab_size": vocab
        }),
    };
    if let Some(labels) = labels {
        let id2label: serde_json::Map<String, Value> =
            labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
        let label2id: serde_json::Map<String, Value> =
            labels.iter().enumerate().map(|(i, l)| (l.to_string(), json!(i))).collect();
        config["id2label"] = id2label.into();
        config["label2id"] = label2id.into();
    }
    if let Some(problem_type) = problem_type {
        config["problem_type"] = json!(problem_type);
    }
    config
}

/// The class's tensors, as (name, shape).
fn shapes(arch: Arch, vocab: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (HIDDEN, INTERMEDIATE);
    let mut t: Vec<(String, Vec<usize>)> = Vec::new();
    let linear = |t: &mut Vec<(String, Vec<usize>)>, name: String, out: usize, inp: usize| {
        t.push((format!("{name}.weight"), vec![out, inp]));
        t.push((format!("{name}.bias"), vec![out]));
    };
    let norm = |t: &mut Vec<(String, Vec<usize>)>, name: String| {
        t.push((format!("{name}.weight"), vec![h]));
        t.push((format!("{name}.bias"), vec![h]));
    };
    if arch == Arch::DistilBert {
        let p = "distilbert";
        t.push((format!("{p}.embeddings.word_embeddings.weight"), vec![vocab, h]));
        t.push((format!("{p}.embeddings.position_embeddings.weight"), vec![WINDOW, h]));
        norm(&mut t, format!("{p}.embeddings.LayerNorm"));
        for l in 0..LAYERS {
            let p = format!("{p}.transformer.layer.{l}");
            for lin in ["q_lin", "k_lin", "v_lin", "out_lin"] {
                linear(&mut t, format!("{p}.attention.{lin}"), h, h);
            }
            norm(&mut t, format!("{p}.sa_layer_norm"));
            linear(&mut t, format!("{p}.ffn.lin1"), i, h);
            linear(&mut t, format!("{p}.ffn.lin2"), h, i);
            norm(&mut t, format!("{p}.output_layer_norm"));
        }
        linear(&mut t, "pre_classifier".into(), h, h);
        linear(&mut t, "classifier".into(), classes, h);
        return t;
    }
    let (p, positions, types) = if arch.is_roberta() { ("roberta", WINDOW + 2, 1) } else { ("bert", WINDOW, 2) };
    t.push((format!("{p}.embeddings.word_embeddings.weight"), vec![vocab, h]));
    t.push((format!("{p}.embeddings.position_embeddings.weight"), vec![positions, h]));
    t.push((format!("{p}.embeddings.token_type_embeddings.weight"), vec![types, h]));
    norm(&mut t, format!("{p}.embeddings.LayerNorm"));
    for l in 0..LAYERS {
        let p = format!("{p}.encoder.layer.{l}");
        for lin in ["query", "key", "value"] {
            linear(&mut t, format!("{p}.attention.self.{lin}"), h, h);
        }
        linear(&mut t, format!("{p}.attention.output.dense"), h, h);
        norm(&mut t, format!("{p}.attention.output.LayerNorm"));
        linear(&mut t, format!("{p}.intermediate.dense"), i, h);
        linear(&mut t, format!("{p}.output.dense"), h, i);
        norm(&mut t, format!("{p}.output.LayerNorm"));
    }
    if arch.is_roberta() {
        // RobertaForSequenceClassification builds its encoder without the pooler.
        linear(&mut t, "classifier.dense".into(), h, h);
        linear(&mut t, "classifier.out_proj".into(), classes, h);
    } else {
        linear(&mut t, "bert.pooler.dense".into(), h, h);
        linear(&mut t, "classifier".into(), classes, h);
    }
    t
}

/// Writes a tiny classifier into `dir`: `classes` outputs, labelled by `labels` when given
/// (without, config.json has no id2label).
pub fn write(
    dir: &std::path::Path,
    arch: Arch,
    classes: usize,
    labels: Option<&[&str]>,
    problem_type: Option<&str>,
    seed: u64,
) -> Checkpoint {
    let (tokenizer, vocab) = tokenizer_json(arch);
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec_pretty(&tokenizer).unwrap()).unwrap();
    let config = config(arch, vocab, labels, problem_type);
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut tensors = HashMap::new();
    let mut safetensors = HashMap::new();
    for (name, shape) in shapes(arch, vocab, classes) {
        let n: usize = shape.iter().product();
        let is_norm = name.contains("LayerNorm") || name.contains("layer_norm");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let u = rng.uniform();
                if is_norm && name.ends_with(".weight") {
                    1.0 + 0.2 * u
                } else if name.ends_with(".bias") {
                    0.1 * u
                } else if name.contains("embeddings") {
                    0.5 * u
                } else {
                    0.3 * u
                }
            })
            .collect();
        safetensors.insert(name.clone(), Tensor::from_vec(values.clone(), shape.as_slice(), &Device::Cpu).unwrap());
        tensors.insert(name, (shape, values));
    }
    if arch == Arch::Bert {
        // Checkpoints saved by transformers before 4.31 carry this buffer; loaders must ignore it.
        let ids = Tensor::arange(0i64, WINDOW as i64, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        safetensors.insert("bert.embeddings.position_ids".into(), ids);
    }
    candle_core::safetensors::save(&safetensors, dir.join("model.safetensors")).unwrap();
    Checkpoint { tensors, config }
}
