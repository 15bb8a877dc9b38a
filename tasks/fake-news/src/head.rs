//! The classifier head over pooled sentence embeddings: logistic regression (one linear layer and
//! a softmax) or a one-hidden-layer MLP (ReLU), trained by zoo itself with candle-nn.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, Optimizer};
use serde::{Deserialize, Serialize};
use zoo_runtime::{Error, Model, Result};

use crate::calibration::Scaling;
use crate::domain::{self, DomainInfo};

/// What `head.json` records beside the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadInfo {
    /// Class names, in the order of the weight's rows.
    pub labels: Vec<String>,
    /// The encoder the head was trained on: a model reference zoo resolves.
    pub encoder: String,
    pub window: usize,
    pub overlap: usize,
    /// Divides the logits before the softmax; fitted on validation data (1 for heads trained
    /// before zoo calibrated them).
    #[serde(default = "one")]
    pub temperature: f32,
    /// Added to each class's logit after the temperature; fitted with it (none for heads trained
    /// before zoo fitted one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bias: Vec<f32>,
    /// The training data's domain, for telling texts unlike it; heads trained before zoo kept it
    /// have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainInfo>,
    /// A file in the model folder with encoder tensors that replace the encoder's own (the layers
    /// `zoo train --fine-tune` trained), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_tensors: Option<String>,
    /// How it was trained and what it scored, for `zoo info` and the catalogue.
    #[serde(default)]
    pub training: serde_json::Value,
}

fn one() -> f32 {
    1.0
}

impl HeadInfo {
    pub fn scaling(&self) -> Scaling {
        Scaling { temperature: self.temperature, bias: self.bias.clone() }
    }
}

pub struct Head {
    /// The hidden layer of an MLP head (ReLU after it); none for logistic regression.
    hidden: Option<Linear>,
    linear: Linear,
    /// The training windows' centroids (rows x dim), when head.json has a domain.
    pub centroids: Option<Vec<f32>>,
    /// head.json's calibration, checked once at load.
    scaling: Scaling,
    pub info: HeadInfo,
}

/// The name of the centroids in head.safetensors.
pub const CENTROIDS: &str = "domain.centroids";

impl Head {
    pub fn load(model: &Model, device: &Device) -> Result<Self> {
        let info: HeadInfo = model.json("head.json")?;
        let vb = model.var_builder("head.safetensors", DType::F32, device)?;
        let bad = |e: candle_core::Error| Error::model(&model.id, format!("head.safetensors: {e}"));
        let weight = vb.get_unchecked("weight").map_err(bad)?;
        let (labels, inner) = weight.dims2().map_err(bad)?;
        if labels != info.labels.len() || labels < 2 {
            return Err(Error::model(
                &model.id,
                format!("the head has {labels} outputs for {} labels", info.labels.len()),
            ));
        }
        let bias = vb.get(labels, "bias").map_err(bad)?;
        let hidden = if vb.contains_tensor("hidden.weight") {
            let w = vb.get_unchecked("hidden.weight").map_err(bad)?;
            let (units, _) = w.dims2().map_err(bad)?;
            if units != inner {
                return Err(Error::model(
                    &model.id,
                    format!("the hidden layer has {units} units, the output layer takes {inner}"),
                ));
            }
            Some(Linear::new(w, Some(vb.get(units, "hidden.bias").map_err(bad)?)))
        } else {
            None
        };
        let scaling = info.scaling();
        if let Err(why) = scaling.check(labels) {
            return Err(Error::model(&model.id, format!("head.json: {why}")));
        }
        let centroids = match &info.domain {
            Some(domain) => {
                let c = vb.get((domain.centroids, inner_dim(&hidden, inner)), CENTROIDS).map_err(bad)?;
                if domain.quantiles.len() < 2 {
                    return Err(Error::model(&model.id, "head.json: the domain has no distance quantiles"));
                }
                Some(c.flatten_all().and_then(|c| c.to_vec1::<f32>()).map_err(bad)?)
            }
            None => None,
        };
        Ok(Head { hidden, linear: Linear::new(weight, Some(bias)), centroids, scaling, info })
    }

    /// The length of the embeddings the head takes.
    pub fn dim(&self) -> usize {
        self.hidden.as_ref().unwrap_or(&self.linear).weight().dim(1).unwrap_or(0)
    }

    /// Logits, before calibration, for each row of `embeddings` (rows x dim).
    pub fn logits(&self, embeddings: &Tensor) -> candle_core::Result<Tensor> {
        let x = match &self.hidden {
            Some(hidden) => hidden.forward(embeddings)?.relu()?,
            None => embeddings.clone(),
        };
        self.linear.forward(&x)
    }

    /// Calibrated class probabilities for each row of `embeddings`.
    pub fn probabilities(&self, embeddings: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        let logits = self.scaling.apply(&self.logits(embeddings)?)?;
        candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()
    }

    /// Each embedding's distance to the nearest training centroid, when the head has them.
    pub fn distances(&self, embeddings: &[f32]) -> Option<Vec<f32>> {
        let centroids = self.centroids.as_ref()?;
        Some(domain::distances(centroids, embeddings, self.dim()))
    }
}

/// The embedding length a head takes: the hidden layer's input, or the output layer's.
fn inner_dim(hidden: &Option<Linear>, output_inputs: usize) -> usize {
    hidden.as_ref().map(|h| h.weight().dims()[1]).unwrap_or(output_inputs)
}

/// Accuracy and macro-averaged F1.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scores {
    pub accuracy: f32,
    pub macro_f1: f32,
}

pub fn score(predicted: &[usize], truth: &[usize], classes: usize) -> Scores {
    let correct = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    let f1: f32 = (0..classes)
        .map(|c| {
            let tp = predicted.iter().zip(truth).filter(|(p, t)| **p == c && **t == c).count() as f32;
            let fp = predicted.iter().zip(truth).filter(|(p, t)| **p == c && **t != c).count() as f32;
            let fn_ = predicted.iter().zip(truth).filter(|(p, t)| **p != c && **t == c).count() as f32;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            }
        })
        .sum::<f32>()
        / classes as f32;
    Scores { accuracy: correct as f32 / truth.len().max(1) as f32, macro_f1: f1 }
}

pub struct TrainSettings {
    pub epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// Units of the hidden layer; 0 trains logistic regression.
    pub hidden: usize,
    /// Seeds the MLP's initial weights (logistic regression starts from zero and needs none).
    pub seed: u64,
}

pub struct Trained {
    /// The head's weights by the names `head.safetensors` holds.
    pub tensors: HashMap<String, Tensor>,
    pub epochs_run: usize,
    pub best_epoch: usize,
    /// The weighted loss early stopping watched (validation, or training without it), at the best epoch.
    pub best_loss: f32,
}

/// Examples to train on or validate with: embeddings (rows x dim), a class per row, and a weight
/// per row (the loss is the weighted mean).
#[derive(Clone, Copy)]
pub struct Examples<'a> {
    pub x: &'a Tensor,
    pub y: &'a [usize],
    pub weights: &'a [f32],
}

/// Uniform numbers in (-bound, bound) from a SplitMix64 stream: the same seed gives the same head on
/// every machine.
fn uniform(shape: (usize, usize), bound: f32, state: &mut u64, device: &Device) -> candle_core::Result<Var> {
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| {
            let unit = (crate::splitmix64(state) >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * bound
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, device)?)
}

/// Logits of `x` through layers given as (weight, bias) pairs, ReLU between them.
pub(crate) fn forward(layers: &[(Tensor, Tensor)], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (i, (w, b)) in layers.iter().enumerate() {
        if i > 0 {
            h = h.relu()?;
        }
        h = h.matmul(&w.t()?)?.broadcast_add(b)?;
    }
    Ok(h)
}

/// Logits of `x` under a trained head's tensors, as [`Head::logits`] computes them.
pub fn logits(tensors: &HashMap<String, Tensor>, x: &Tensor) -> candle_core::Result<Tensor> {
    let layer = |prefix: &str| -> candle_core::Result<(Tensor, Tensor)> {
        let get = |name: String| {
            tensors.get(&name).cloned().ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))
        };
        Ok((get(format!("{prefix}weight"))?, get(format!("{prefix}bias"))?))
    };
    let mut layers = Vec::new();
    if tensors.contains_key("hidden.weight") {
        layers.push(layer("hidden.")?);
    }
    layers.push(layer("")?);
    forward(&layers, x)
}

/// The weighted mean cross-entropy of `logits` against `targets`.
pub(crate) fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let picked = log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    picked.mul(weights)?.sum_all()? / -(weights.sum_all()?.to_scalar::<f32>()? as f64)
}

/// Full-batch AdamW on the weighted cross-entropy, keeping the weights of the epoch with the lowest
/// validation loss. Logistic regression starts from zero weights: the problem is convex, so the
/// result depends on the data and settings alone. An MLP starts from seeded uniform weights
/// (PyTorch's default bounds, 1/sqrt(fan-in)); no shuffling either way.
pub fn train(
    data: Examples,
    val: Option<Examples>,
    classes: usize,
    settings: &TrainSettings,
    mut on_epoch: impl FnMut(usize, f32),
) -> candle_core::Result<Trained> {
    let device = data.x.device();
    let dim = data.x.dim(1)?;
    let mut state = settings.seed;
    // (name prefix, weight, bias), input side first.
    let vars: Vec<(&str, Var, Var)> = if settings.hidden == 0 {
        vec![("", Var::zeros((classes, dim), DType::F32, device)?, Var::zeros(classes, DType::F32, device)?)]
    } else {
        let (h, b_in, b_out) = (settings.hidden, 1.0 / (dim as f32).sqrt(), 1.0 / (settings.hidden as f32).sqrt());
        vec![
            (
                "hidden.",
                uniform((h, dim), b_in, &mut state, device)?,
                Var::from_tensor(&uniform((1, h), b_in, &mut state, device)?.flatten_all()?)?,
            ),
            (
                "",
                uniform((classes, h), b_out, &mut state, device)?,
                Var::from_tensor(&uniform((1, classes), b_out, &mut state, device)?.flatten_all()?)?,
            ),
        ]
    };
    let params = candle_nn::ParamsAdamW {
        lr: settings.learning_rate,
        weight_decay: settings.weight_decay,
        ..Default::default()
    };
    let mut opt = candle_nn::AdamW::new(vars.iter().flat_map(|(_, w, b)| [w.clone(), b.clone()]).collect(), params)?;
    let tensors = |e: Examples| -> candle_core::Result<(Tensor, Tensor)> {
        let y = Tensor::from_vec(e.y.iter().map(|&v| v as u32).collect::<Vec<_>>(), e.y.len(), device)?;
        Ok((y, Tensor::from_slice(e.weights, e.weights.len(), device)?))
    };
    let (targets, weights) = tensors(data)?;
    let watched_set = match val {
        Some(v) => {
            let (y, w) = tensors(v)?;
            (v.x.clone(), y, w)
        }
        None => (data.x.clone(), targets.clone(), weights.clone()),
    };
    let live: Vec<(Tensor, Tensor)> =
        vars.iter().map(|(_, w, b)| (w.as_tensor().clone(), b.as_tensor().clone())).collect();
    let snapshot = || -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        vars.iter().map(|(_, w, b)| Ok((w.as_tensor().copy()?, b.as_tensor().copy()?))).collect()
    };
    let mut best = (f32::INFINITY, 0usize, snapshot()?);
    let mut epochs_run = 0;
    for epoch in 1..=settings.epochs {
        let loss = weighted_cross_entropy(&forward(&live, data.x)?, &targets, &weights)?;
        opt.backward_step(&loss)?;
        epochs_run = epoch;
        // The loss of the weights as they are after this step, which are the ones kept if best.
        let (vx, vy, vw) = &watched_set;
        let watched = weighted_cross_entropy(&forward(&live, vx)?, vy, vw)?.to_scalar::<f32>()?;
        if !watched.is_finite() {
            candle_core::bail!("the loss became {watched} at epoch {epoch}; try a smaller learning rate")
        }
        on_epoch(epoch, watched);
        if watched < best.0 - 1e-6 {
            best = (watched, epoch, snapshot()?);
        } else if epoch - best.1 >= settings.patience {
            break;
        }
    }
    let (best_loss, best_epoch, layers) = best;
    let mut tensors = HashMap::new();
    for ((prefix, _, _), (w, b)) in vars.iter().zip(layers) {
        tensors.insert(format!("{prefix}weight"), w);
        tensors.insert(format!("{prefix}bias"), b);
    }
    Ok(Trained { tensors, epochs_run, best_epoch, best_loss })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_by_hand() {
        // truth: 0 0 1 1; predicted: 0 1 1 1 -> class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 2 fp 1 fn 0 -> 4/5.
        let s = score(&[0, 1, 1, 1], &[0, 0, 1, 1], 2);
        assert!((s.accuracy - 0.75).abs() < 1e-6);
        assert!((s.macro_f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-6);
    }

    /// The same point labelled both ways, one label weighted three times the other: the loss's
    /// minimum gives that label probability 3/4, which only a weighted loss reaches.
    #[test]
    fn weights_set_each_example_s_pull() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 0.5], [1.0, 0.5]], &dev).unwrap();
        let settings =
            TrainSettings { epochs: 3000, learning_rate: 0.05, weight_decay: 0.0, patience: 3000, hidden: 0, seed: 0 };
        let data = Examples { x: &x, y: &[0, 1], weights: &[1.5, 0.5] };
        let trained = train(data, None, 2, &settings, |_, _| {}).unwrap();
        let z: Vec<Vec<f32>> = logits(&trained.tensors, &x).unwrap().to_vec2().unwrap();
        let p = Scaling::identity().probabilities(&z[0]);
        assert!((p[0] - 0.75).abs() < 1e-3, "{p:?}");
    }

    #[test]
    fn learns_a_separable_problem_deterministically() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], &dev).unwrap();
        let y = [0, 0, 1, 1];
        for hidden in [0, 8] {
            let settings =
                TrainSettings { epochs: 200, learning_rate: 0.1, weight_decay: 0.0, patience: 50, hidden, seed: 3 };
            let data = Examples { x: &x, y: &y, weights: &[1.0; 4] };
            let a = train(data, None, 2, &settings, |_, _| {}).unwrap();
            let b = train(data, None, 2, &settings, |_, _| {}).unwrap();
            let predicted: Vec<u32> = logits(&a.tensors, &x).unwrap().argmax(1).unwrap().to_vec1().unwrap();
            assert_eq!(predicted, [0, 0, 1, 1], "hidden {hidden}");
            let mut names: Vec<&String> = a.tensors.keys().collect();
            names.sort();
            let want: &[&str] =
                if hidden == 0 { &["bias", "weight"] } else { &["bias", "hidden.bias", "hidden.weight", "weight"] };
            assert_eq!(names, want);
            for name in names {
                let (wa, wb) = (a.tensors[name].flatten_all().unwrap(), b.tensors[name].flatten_all().unwrap());
                assert_eq!(wa.to_vec1::<f32>().unwrap(), wb.to_vec1::<f32>().unwrap(), "same data, settings and seed");
            }
        }
    }
}
