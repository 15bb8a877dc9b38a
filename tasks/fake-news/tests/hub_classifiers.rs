//! Hugging Face sequence classifiers (BERT, DistilBERT, RoBERTa, XLM-R) against an independent
//! computation: tiny random checkpoints in exact transformers naming (tests/support), run through
//! zoo in one padded batch, and the same networks written out here as plain loops in f64 over the
//! checkpoint's numbers, one unpadded window at a time, with the windows cut and their scores
//! averaged as the task documents. Nothing here calls candle-transformers.

use std::path::Path;

use candle_core::Device;
use serde_json::Value;
use zoo_fake_news::Classifier;
use zoo_runtime::{Context, HubSettings, Model, ModelRef};

#[allow(dead_code)]
#[path = "support/tiny_classifiers.rs"]
mod tiny;

use tiny::{Arch, Checkpoint, HEADS, HIDDEN, INTERMEDIATE, LAYERS, WINDOW};

/// Probabilities must agree this closely (f32 through candle against f64 here; seen: ~2e-7).
const TOLERANCE: f64 = 1e-4;
/// Logits are held tighter: the tanh approximation of GELU in place of the exact one (candle's
/// own DistilBERT) moves these tiny models' logits by ~1.2e-4 and their probabilities by only
/// ~4e-5, within TOLERANCE; it must still fail. Seen: ~4e-7.
const LOGIT_TOLERANCE: f64 = 1e-5;

const TEXTS: [&str; 4] = [
    "5G towers spread the virus!",
    "The vaccine trial news: no cure yet, but covid cases fell.",
    "Fake",
    // Long enough for several windows with either tokenizer.
    "Officials said the new vaccine was tested on volunteers in three countries before approval, \
     and that the towers rumour has no basis. The virus spread slowed after the measures. Experts \
     warned that news of a miracle cure is false; the agency will publish the full trial data.",
];

fn load(dir: &Path) -> zoo_runtime::Result<Classifier> {
    let ctx =
        Context { device: Device::Cpu, hub: HubSettings::from_env(true), progress: false, outputs: Default::default() };
    Classifier::load(&Model::resolve(&ModelRef::Local(dir.to_path_buf()), &ctx.hub), &ctx)
}

/// erf by its Taylor series (|x| <= 5, where it is accurate to ~1e-13 in f64); beyond, 1 - erf(5)
/// < 2e-12.
fn erf(x: f64) -> f64 {
    if x.abs() > 5.0 {
        return x.signum();
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        let next = term / (2 * n + 1) as f64;
        sum += next;
        if next.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// The network of a checkpoint, by hand.
struct Reference<'a> {
    ck: &'a Checkpoint,
    arch: Arch,
}

impl Reference<'_> {
    fn w(&self, name: &str) -> &[f32] {
        self.ck.get(name)
    }

    /// `x` (n rows of `inp`) times `name.weight` (out x inp) transposed, plus `name.bias`.
    fn linear(&self, x: &[Vec<f64>], name: &str) -> Vec<Vec<f64>> {
        let (w, b) = (self.w(&format!("{name}.weight")), self.w(&format!("{name}.bias")));
        let out = b.len();
        let inp = w.len() / out;
        x.iter()
            .map(|row| {
                (0..out).map(|o| b[o] as f64 + (0..inp).map(|i| w[o * inp + i] as f64 * row[i]).sum::<f64>()).collect()
            })
            .collect()
    }

    fn layer_norm(&self, x: &mut [Vec<f64>], name: &str) {
        let eps = if self.arch == Arch::DistilBert { 1e-12 } else { self.arch.layer_norm_eps() };
        let (g, b) = (self.w(&format!("{name}.weight")), self.w(&format!("{name}.bias")));
        for row in x {
            let mean = row.iter().sum::<f64>() / row.len() as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / row.len() as f64;
            for (i, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + eps).sqrt() * g[i] as f64 + b[i] as f64;
            }
        }
    }

    /// The transformers module names of one layer: query, key, value, attention output,
    /// attention LayerNorm, intermediate, output, output LayerNorm.
    fn layer_names(&self, l: usize) -> [String; 8] {
        if self.arch == Arch::DistilBert {
            let p = format!("distilbert.transformer.layer.{l}");
            [
                "attention.q_lin",
                "attention.k_lin",
                "attention.v_lin",
                "attention.out_lin",
                "sa_layer_norm",
                "ffn.lin1",
                "ffn.lin2",
                "output_layer_norm",
            ]
            .map(|n| format!("{p}.{n}"))
        } else {
            let p = format!("{}.encoder.layer.{l}", if self.arch.is_roberta() { "roberta" } else { "bert" });
            [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ]
            .map(|n| format!("{p}.{n}"))
        }
    }

    /// Logits for one window (special tokens included), unpadded.
    fn logits(&self, ids: &[u32]) -> Vec<f64> {
        let p = match self.arch {
            Arch::Bert => "bert",
            Arch::DistilBert => "distilbert",
            Arch::Roberta | Arch::XlmRoberta => "roberta",
        };
        let (words, positions) = (
            self.w(&format!("{p}.embeddings.word_embeddings.weight")),
            self.w(&format!("{p}.embeddings.position_embeddings.weight")),
        );
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                // RoBERTa numbers positions from padding_idx + 1.
                let pos = if self.arch.is_roberta() { t + self.arch.pad_id() as usize + 1 } else { t };
                (0..HIDDEN)
                    .map(|d| {
                        let types = if self.arch == Arch::DistilBert {
                            0.0
                        } else {
                            self.w(&format!("{p}.embeddings.token_type_embeddings.weight"))[d] as f64
                        };
                        words[id as usize * HIDDEN + d] as f64 + positions[pos * HIDDEN + d] as f64 + types
                    })
                    .collect()
            })
            .collect();
        self.layer_norm(&mut x, &format!("{p}.embeddings.LayerNorm"));
        let head_dim = HIDDEN / HEADS;
        for l in 0..LAYERS {
            let [q, k, v, out, ln1, inter, output, ln2] = self.layer_names(l);
            let (q, k, v) = (self.linear(&x, &q), self.linear(&x, &k), self.linear(&x, &v));
            let n = x.len();
            let mut context = vec![vec![0f64; HIDDEN]; n];
            for h in 0..HEADS {
                let r = h * head_dim..(h + 1) * head_dim;
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| r.clone().map(|d| q[i][d] * k[j][d]).sum::<f64>() / (head_dim as f64).sqrt())
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for d in r.clone() {
                        context[i][d] = (0..n).map(|j| e[j] / total * v[j][d]).sum();
                    }
                }
            }
            let mut a = self.linear(&context, &out);
            a.iter_mut().zip(&x).for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, x)| *a += x));
            self.layer_norm(&mut a, &ln1);
            let mut m = self.linear(&a, &inter);
            m.iter_mut().for_each(|row| row.iter_mut().for_each(|v| *v = gelu(*v)));
            assert_eq!(m[0].len(), INTERMEDIATE);
            let mut y = self.linear(&m, &output);
            y.iter_mut().zip(&a).for_each(|(y, a)| y.iter_mut().zip(a).for_each(|(y, a)| *y += a));
            self.layer_norm(&mut y, &ln2);
            x = y;
        }
        let first = vec![x[0].clone()];
        let (dense, out, activation): (&str, &str, fn(f64) -> f64) = match self.arch {
            Arch::Bert => ("bert.pooler.dense", "classifier", f64::tanh),
            Arch::DistilBert => ("pre_classifier", "classifier", |v| v.max(0.0)),
            Arch::Roberta | Arch::XlmRoberta => ("classifier.dense", "classifier.out_proj", f64::tanh),
        };
        let mut pooled = self.linear(&first, dense);
        pooled[0].iter_mut().for_each(|v| *v = activation(*v));
        self.linear(&pooled, out).remove(0)
    }

    fn probabilities(&self, logits: &[f64], sigmoid: bool) -> Vec<f64> {
        if sigmoid {
            return logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
        }
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = e.iter().sum();
        e.iter().map(|v| v / total).collect()
    }

    /// The windows as the task documents them: the text's tokens without special tokens, in
    /// bodies of WINDOW less the two special tokens, neighbours sharing a quarter of the window.
    fn windows(&self, tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<Vec<u32>> {
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let (start_token, end_token) = if self.arch.is_roberta() { (0, 2) } else { (2, 3) };
        let body = WINDOW - 2;
        let step = body - WINDOW / 4;
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + body).min(ids.len());
            windows.push([&[start_token][..], &ids[start..end], &[end_token]].concat());
            if end == ids.len() {
                return windows;
            }
            start += step;
        }
    }
}

fn check_architecture(arch: Arch, labels: &[&str], problem_type: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny::write(dir.path(), arch, labels.len(), Some(labels), problem_type, arch as u64 + 7);
    let reference = Reference { ck: &ck, arch };
    let sigmoid = problem_type == Some("multi_label_classification");
    let tokenizer = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();

    let classifier = load(dir.path()).unwrap_or_else(|e| panic!("{arch:?}: {e}"));
    assert_eq!(classifier.labels(), labels, "{arch:?}: labels from id2label");
    let hub = classifier.hub().expect("a Transformers classifier");
    assert_eq!(hub.window(), WINDOW, "{arch:?}");

    // Logits of every window of every text, all in one padded batch, against each window alone.
    let windows: Vec<Vec<Vec<u32>>> = TEXTS.iter().map(|t| reference.windows(&tokenizer, t)).collect();
    assert!(windows[3].len() >= 3, "{arch:?}: the long text takes {} windows", windows[3].len());
    let flat: Vec<&[u32]> = windows.iter().flatten().map(Vec::as_slice).collect();
    assert!(flat.iter().any(|w| w.len() < WINDOW / 2), "some windows are padded");
    let zoo_logits = hub.logits(&flat).unwrap();
    let mut worst_logit = 0f64;
    for (w, zoo) in flat.iter().zip(&zoo_logits) {
        let expected = reference.logits(w);
        for (z, e) in zoo.iter().zip(&expected) {
            worst_logit = worst_logit.max((*z as f64 - e).abs());
        }
    }

    // Whole texts through the task: windows cut by zoo, scores averaged by token count.
    let mut worst_p = 0f64;
    let results = classifier.classify(&TEXTS, 8);
    let one_by_one = classifier.classify(&TEXTS, 1);
    for ((text_windows, result), alone) in windows.iter().zip(results).zip(one_by_one) {
        let zoo_fake_news::Classified { probabilities: scores, windows: n, .. } = result.unwrap();
        assert_eq!(n, text_windows.len(), "{arch:?}: windows used");
        let mut expected = vec![0f64; labels.len()];
        let tokens: usize = text_windows.iter().map(Vec::len).sum();
        for w in text_windows {
            let p = reference.probabilities(&reference.logits(w), sigmoid);
            expected.iter_mut().zip(p).for_each(|(e, p)| *e += p * w.len() as f64 / tokens as f64);
        }
        for ((s, e), a) in scores.iter().zip(&expected).zip(alone.unwrap().probabilities) {
            worst_p = worst_p.max((*s as f64 - e).abs()).max((s - a).abs() as f64);
        }
        if !sigmoid {
            assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
    eprintln!("{arch:?}: max |logit difference| {worst_logit:.1e}, max |probability difference| {worst_p:.1e}");
    assert!(worst_logit < LOGIT_TOLERANCE, "{arch:?}: logits differ by {worst_logit}");
    assert!(worst_p < TOLERANCE, "{arch:?}: probabilities differ by {worst_p}");
}

#[test]
fn bert_matches_the_reference() {
    check_architecture(Arch::Bert, &["real", "fake"], None);
}

#[test]
fn distilbert_matches_the_reference() {
    check_architecture(Arch::DistilBert, &["fake", "satire", "real"], None);
}

#[test]
fn roberta_matches_the_reference() {
    check_architecture(Arch::Roberta, &["LABEL_FAKE", "LABEL_REAL"], Some("single_label_classification"));
}

#[test]
fn xlm_roberta_multi_label_matches_the_reference_with_sigmoids() {
    check_architecture(Arch::XlmRoberta, &["false", "misleading", "satire"], Some("multi_label_classification"));
}

#[test]
fn without_id2label_labels_are_transformers_defaults() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), Arch::Bert, 3, None, None, 1);
    let classifier = load(dir.path()).unwrap();
    assert_eq!(classifier.labels(), ["LABEL_0", "LABEL_1", "LABEL_2"]);
    let scores = classifier.classify(&["the virus"], 4).remove(0).unwrap().probabilities;
    assert_eq!(scores.len(), 3);
}

#[test]
fn bad_checkpoints_get_clear_errors() {
    let error = |edit: &dyn Fn(&Path)| {
        let dir = tempfile::tempdir().unwrap();
        tiny::write(dir.path(), Arch::DistilBert, 2, Some(&["fake", "real"]), None, 3);
        edit(dir.path());
        load(dir.path()).err().expect("the checkpoint is refused").to_string()
    };
    let err = error(&|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(err.contains("no tokenizer.json"), "{err}");

    let err = error(&|d| {
        let mut config: Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        config["architectures"] = serde_json::json!(["AlbertForSequenceClassification"]);
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    });
    assert!(err.contains("unsupported architecture (AlbertForSequenceClassification)"), "{err}");
    assert!(
        err.contains("BertForSequenceClassification") && err.contains("XLMRobertaForSequenceClassification"),
        "{err}"
    );

    let err = error(&|d| {
        let mut config: Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        config["id2label"] = serde_json::json!({"0": "fake", "1": "real", "2": "satire"});
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    });
    assert!(err.contains("id2label"), "{err}");

    let err = error(&|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(err.contains("model.safetensors or pytorch_model.bin"), "{err}");

    let err = error(&|d| std::fs::remove_file(d.join("config.json")).unwrap());
    assert!(err.contains("head.json") && err.contains("config.json"), "{err}");
}

#[test]
fn the_reference_gelu_is_exact() {
    // Values of erf from tables (Abramowitz & Stegun 7.1), to check the series the reference uses.
    for (x, e) in [(0.5, 0.520_499_877_8), (1.0, 0.842_700_792_9), (2.0, 0.995_322_265_0), (-1.5, -0.966_105_146_5)] {
        assert!((erf(x) - e).abs() < 1e-9, "erf({x})");
    }
}
