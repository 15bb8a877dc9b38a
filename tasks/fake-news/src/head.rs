//! The classifier head over pooled sentence embeddings: logistic regression (one linear layer and
//! a softmax) or a one-hidden-layer MLP (ReLU), trained by zoo itself with candle-nn.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{loss, Linear, Optimizer};
use serde::{Deserialize, Serialize};
use zoo_runtime::{Error, Model, Result};

/// What `head.json` records beside the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadInfo {
    /// Class names, in the order of the weight's rows.
    pub labels: Vec<String>,
    /// The encoder the head was trained on: a model reference zoo resolves.
    pub encoder: String,
    pub window: usize,
    pub overlap: usize,
    /// How it was trained and what it scored, for `zoo info` and the catalogue.
    #[serde(default)]
    pub training: serde_json::Value,
}

pub struct Head {
    /// The hidden layer of an MLP head (ReLU after it); none for logistic regression.
    hidden: Option<Linear>,
    linear: Linear,
    pub info: HeadInfo,
}

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
        Ok(Head { hidden, linear: Linear::new(weight, Some(bias)), info })
    }

    /// The length of the embeddings the head takes.
    pub fn dim(&self) -> usize {
        self.hidden.as_ref().unwrap_or(&self.linear).weight().dim(1).unwrap_or(0)
    }

    /// Class probabilities for each row of `embeddings` (rows x dim).
    pub fn probabilities(&self, embeddings: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        let x = match &self.hidden {
            Some(hidden) => hidden.forward(embeddings)?.relu()?,
            None => embeddings.clone(),
        };
        candle_nn::ops::softmax_last_dim(&self.linear.forward(&x)?)?.to_vec2()
    }
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
    pub train: Scores,
    pub val: Option<Scores>,
}

/// Uniform numbers in (-bound, bound) from a SplitMix64 stream: the same seed gives the same head on
/// every machine, which candle's CPU generator does not promise.
fn uniform(shape: (usize, usize), bound: f32, state: &mut u64, device: &Device) -> candle_core::Result<Var> {
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| {
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let unit = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * bound
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, device)?)
}

/// Logits of `x` through layers given as (weight, bias) pairs, ReLU between them.
fn forward(layers: &[(Tensor, Tensor)], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (i, (w, b)) in layers.iter().enumerate() {
        if i > 0 {
            h = h.relu()?;
        }
        h = h.matmul(&w.t()?)?.broadcast_add(b)?;
    }
    Ok(h)
}

/// Full-batch AdamW on the cross-entropy, keeping the weights of the epoch with the lowest
/// validation loss. Logistic regression starts from zero weights: the problem is convex, so the
/// result depends on the data and settings alone. An MLP starts from seeded uniform weights
/// (PyTorch's default bounds, 1/sqrt(fan-in)); no shuffling either way.
pub fn train(
    x: &Tensor,
    y: &[usize],
    val: Option<(&Tensor, &[usize])>,
    classes: usize,
    settings: &TrainSettings,
    mut on_epoch: impl FnMut(usize, f32),
) -> candle_core::Result<Trained> {
    let device = x.device();
    let dim = x.dim(1)?;
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
    let targets = Tensor::from_vec(y.iter().map(|&v| v as u32).collect::<Vec<_>>(), y.len(), device)?;
    let val_targets = match val {
        Some((_, vy)) => Some(Tensor::from_vec(vy.iter().map(|&v| v as u32).collect::<Vec<_>>(), vy.len(), device)?),
        None => None,
    };
    let live: Vec<(Tensor, Tensor)> =
        vars.iter().map(|(_, w, b)| (w.as_tensor().clone(), b.as_tensor().clone())).collect();
    let snapshot = || -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        vars.iter().map(|(_, w, b)| Ok((w.as_tensor().copy()?, b.as_tensor().copy()?))).collect()
    };
    let mut best = (f32::INFINITY, 0usize, snapshot()?);
    let mut epochs_run = 0;
    for epoch in 1..=settings.epochs {
        let loss = loss::cross_entropy(&forward(&live, x)?, &targets)?;
        opt.backward_step(&loss)?;
        epochs_run = epoch;
        // The loss of the weights as they are after this step, which are the ones kept if best.
        let watched = match (val, &val_targets) {
            (Some((vx, _)), Some(vt)) => loss::cross_entropy(&forward(&live, vx)?, vt)?.to_scalar::<f32>()?,
            _ => loss::cross_entropy(&forward(&live, x)?, &targets)?.to_scalar::<f32>()?,
        };
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
    let (_, best_epoch, layers) = best;
    let predict = |x: &Tensor| -> candle_core::Result<Vec<usize>> {
        Ok(forward(&layers, x)?.argmax(1)?.to_vec1::<u32>()?.into_iter().map(|v| v as usize).collect())
    };
    let train_scores = score(&predict(x)?, y, classes);
    let val_scores = match val {
        Some((vx, vy)) => Some(score(&predict(vx)?, vy, classes)),
        None => None,
    };
    let mut tensors = HashMap::new();
    for ((prefix, _, _), (w, b)) in vars.iter().zip(layers) {
        tensors.insert(format!("{prefix}weight"), w);
        tensors.insert(format!("{prefix}bias"), b);
    }
    Ok(Trained { tensors, epochs_run, best_epoch, train: train_scores, val: val_scores })
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

    #[test]
    fn learns_a_separable_problem_deterministically() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], &dev).unwrap();
        let y = [0, 0, 1, 1];
        for hidden in [0, 8] {
            let settings =
                TrainSettings { epochs: 200, learning_rate: 0.1, weight_decay: 0.0, patience: 50, hidden, seed: 3 };
            let a = train(&x, &y, None, 2, &settings, |_, _| {}).unwrap();
            let b = train(&x, &y, None, 2, &settings, |_, _| {}).unwrap();
            assert_eq!(a.train.accuracy, 1.0, "hidden {hidden}");
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
