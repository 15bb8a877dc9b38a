//! The classifier head over pooled sentence embeddings: logistic regression (one linear layer and
//! a softmax), trained by zoo itself with candle-nn.

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
    linear: Linear,
    pub info: HeadInfo,
}

impl Head {
    pub fn load(model: &Model, device: &Device) -> Result<Self> {
        let info: HeadInfo = model.json("head.json")?;
        let vb = model.var_builder("head.safetensors", DType::F32, device)?;
        let bad = |e: candle_core::Error| Error::model(&model.id, format!("head.safetensors: {e}"));
        let weight = vb.get_unchecked("weight").map_err(bad)?;
        let (labels, _) = weight.dims2().map_err(bad)?;
        if labels != info.labels.len() || labels < 2 {
            return Err(Error::model(
                &model.id,
                format!("the head has {labels} outputs for {} labels", info.labels.len()),
            ));
        }
        let bias = vb.get(labels, "bias").map_err(bad)?;
        Ok(Head { linear: Linear::new(weight, Some(bias)), info })
    }

    pub fn dim(&self) -> usize {
        self.linear.weight().dim(1).unwrap_or(0)
    }

    /// Class probabilities for each row of `embeddings` (rows x dim).
    pub fn probabilities(&self, embeddings: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        candle_nn::ops::softmax_last_dim(&self.linear.forward(embeddings)?)?.to_vec2()
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut map = HashMap::new();
        map.insert("weight".to_string(), self.linear.weight().clone());
        if let Some(b) = self.linear.bias() {
            map.insert("bias".to_string(), b.clone());
        }
        map
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
}

pub struct Trained {
    pub weight: Tensor,
    pub bias: Tensor,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train: Scores,
    pub val: Option<Scores>,
}

/// Full-batch AdamW on the cross-entropy, from zero weights: the problem is convex, so the result
/// depends on the data and settings alone (no random initialisation, no shuffling), and the
/// weights of the epoch with the lowest validation loss are kept.
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
    let weight = Var::zeros((classes, dim), DType::F32, device)?;
    let bias = Var::zeros(classes, DType::F32, device)?;
    let params = candle_nn::ParamsAdamW {
        lr: settings.learning_rate,
        weight_decay: settings.weight_decay,
        ..Default::default()
    };
    let mut opt = candle_nn::AdamW::new(vec![weight.clone(), bias.clone()], params)?;
    let targets = Tensor::from_vec(y.iter().map(|&v| v as u32).collect::<Vec<_>>(), y.len(), device)?;
    let val_targets = match val {
        Some((_, vy)) => Some(Tensor::from_vec(vy.iter().map(|&v| v as u32).collect::<Vec<_>>(), vy.len(), device)?),
        None => None,
    };
    let forward = |x: &Tensor| x.matmul(&weight.t()?)?.broadcast_add(&bias);
    let mut best = (f32::INFINITY, 0usize, weight.as_tensor().copy()?, bias.as_tensor().copy()?);
    let mut epochs_run = 0;
    for epoch in 1..=settings.epochs {
        let loss = loss::cross_entropy(&forward(x)?, &targets)?;
        opt.backward_step(&loss)?;
        epochs_run = epoch;
        // The loss of the weights as they are after this step, which are the ones kept if best.
        let watched = match (val, &val_targets) {
            (Some((vx, _)), Some(vt)) => loss::cross_entropy(&forward(vx)?, vt)?.to_scalar::<f32>()?,
            _ => loss::cross_entropy(&forward(x)?, &targets)?.to_scalar::<f32>()?,
        };
        if !watched.is_finite() {
            candle_core::bail!("the loss became {watched} at epoch {epoch}; try a smaller learning rate")
        }
        on_epoch(epoch, watched);
        if watched < best.0 - 1e-6 {
            best = (watched, epoch, weight.as_tensor().copy()?, bias.as_tensor().copy()?);
        } else if epoch - best.1 >= settings.patience {
            break;
        }
    }
    let (_, best_epoch, weight, bias) = best;
    let predict = |x: &Tensor| -> candle_core::Result<Vec<usize>> {
        let logits = x.matmul(&weight.t()?)?.broadcast_add(&bias)?;
        Ok(logits.argmax(1)?.to_vec1::<u32>()?.into_iter().map(|v| v as usize).collect())
    };
    let train_scores = score(&predict(x)?, y, classes);
    let val_scores = match val {
        Some((vx, vy)) => Some(score(&predict(vx)?, vy, classes)),
        None => None,
    };
    Ok(Trained { weight, bias, epochs_run, best_epoch, train: train_scores, val: val_scores })
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
        let settings = TrainSettings { epochs: 200, learning_rate: 0.1, weight_decay: 0.0, patience: 50 };
        let a = train(&x, &y, None, 2, &settings, |_, _| {}).unwrap();
        let b = train(&x, &y, None, 2, &settings, |_, _| {}).unwrap();
        assert_eq!(a.train.accuracy, 1.0);
        let (wa, wb): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (a.weight.to_vec2().unwrap(), b.weight.to_vec2().unwrap());
        assert_eq!(wa, wb, "same data and settings, same weights");
    }
}
