//! Calibration: a temperature that divides the head's logits and a bias per class added after it
//! (Platt scaling; temperature scaling, Guo et al. 2017, is the case of no bias), fitted on
//! validation data so that a score of 0.8 is right about 80 % of the time; and the expected
//! calibration error that says how far from that the scores are. The bias matters when the
//! training loss weighs the classes otherwise than the texts the model meets: sources weighted by
//! the square root of their size leave the decision boundary where no real mix of texts has it.

use serde::{Deserialize, Serialize};

/// softmax(logits / temperature + bias).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    pub temperature: f32,
    /// One per class, or none (heads and calibrations from before zoo fitted a bias).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bias: Vec<f32>,
}

impl Scaling {
    /// Leaves the softmax of the logits as it is.
    pub fn identity() -> Self {
        Scaling { temperature: 1.0, bias: Vec::new() }
    }

    /// Why a stored scaling cannot be used for `classes` classes, if it cannot.
    pub fn check(&self, classes: usize) -> std::result::Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("temperature {} is not positive", self.temperature));
        }
        if !(self.bias.is_empty() || self.bias.len() == classes) {
            return Err(format!("{} biases for {classes} classes", self.bias.len()));
        }
        if let Some(b) = self.bias.iter().find(|b| !b.is_finite()) {
            return Err(format!("bias {b} is not finite"));
        }
        Ok(())
    }

    /// Calibrated probabilities of one row of logits.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        let scaled: Vec<f32> = logits
            .iter()
            .enumerate()
            .map(|(k, &z)| z / self.temperature + self.bias.get(k).copied().unwrap_or(0.0))
            .collect();
        softmax(&scaled)
    }

    /// Calibrated probabilities of each row of logits.
    pub fn rows(&self, logits: &[Vec<f32>]) -> Vec<Vec<f32>> {
        logits.iter().map(|z| self.probabilities(z)).collect()
    }

    /// Calibrated logits of a batch (rows x classes), for a softmax after.
    pub fn apply(&self, logits: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let scaled = (logits / self.temperature as f64)?;
        if self.bias.is_empty() {
            return Ok(scaled);
        }
        scaled.broadcast_add(&candle_core::Tensor::new(self.bias.as_slice(), logits.device())?)
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// The parameters being fitted: the inverse temperature, then the biases of classes 1.. (class 0's
/// is 0: adding the same number to every bias changes nothing).
type Params = Vec<f64>;

/// A weak pull of the centred biases towards 0, so that a class no val text has gets a finite
/// bias, the same whatever its place among the labels.
const BIAS_RIDGE: f64 = 1e-4;

/// Added to the Hessian's diagonal for the Newton solve alone, so that a direction the data
/// cannot tell (logits that are the same for every class) gets no step rather than no solve.
const DAMPING: f64 = 1e-9;

/// The temperature's range, as 1/T.
const INVERSE_TEMPERATURE: std::ops::RangeInclusive<f64> = 0.05..=20.0;

/// The biases of all classes, class 0's being 0, centred.
fn centred_biases(params: &[f64]) -> Vec<f64> {
    let bias: Vec<f64> = (0..params.len()).map(|k| if k == 0 { 0.0 } else { params[k] }).collect();
    let mean = bias.iter().sum::<f64>() / bias.len() as f64;
    bias.iter().map(|b| b - mean).collect()
}

/// Row `z`'s class probabilities under `params`.
fn softmax_of(z: &[f32], params: &[f64]) -> Vec<f64> {
    let u: Vec<f64> =
        z.iter().enumerate().map(|(k, &v)| params[0] * v as f64 + if k == 0 { 0.0 } else { params[k] }).collect();
    let max = u.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = u.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Weighted mean negative log-likelihood of `targets`, plus the biases' ridge.
fn objective(logits: &[Vec<f32>], targets: &[usize], weights: &[f32], params: &[f64]) -> f64 {
    let mut total = 0.0;
    let mut weight = 0.0;
    for ((z, &t), &w) in logits.iter().zip(targets).zip(weights) {
        total -= w as f64 * softmax_of(z, params)[t].max(f64::MIN_POSITIVE).ln();
        weight += w as f64;
    }
    let ridge = BIAS_RIDGE / 2.0 * centred_biases(params).iter().map(|b| b * b).sum::<f64>();
    total / weight.max(f64::MIN_POSITIVE) + ridge
}

/// The objective's gradient and Hessian in the parameters. Each class's logit is linear in them
/// (feature z_k for 1/T, 1 for its own bias), so the Hessian is the features' covariance under the
/// softmax, positive semi-definite, and Newton's method finds the one minimum. With p the
/// probabilities and m = sum_k p_k z_k: H_00 = sum_k p_k z_k^2 - m^2, H_0j = p_j (z_j - m),
/// H_ij = p_i (i == j) - p_i p_j, which is O(classes^2) a row.
fn derivatives(logits: &[Vec<f32>], targets: &[usize], weights: &[f32], params: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = params.len();
    let mut gradient = vec![0.0; n];
    let mut hessian = vec![vec![0.0; n]; n];
    let mut weight = 0.0;
    for ((z, &t), &w) in logits.iter().zip(targets).zip(weights) {
        let p = softmax_of(z, params);
        let w = w as f64;
        weight += w;
        let m: f64 = p.iter().zip(z).map(|(p, &z)| p * z as f64).sum();
        let second: f64 = p.iter().zip(z).map(|(p, &z)| p * (z as f64) * (z as f64)).sum();
        gradient[0] += w * (m - z[t] as f64);
        hessian[0][0] += w * (second - m * m);
        for j in 1..n {
            gradient[j] += w * (p[j] - f64::from(u8::from(j == t)));
            let h0j = w * p[j] * (z[j] as f64 - m);
            hessian[0][j] += h0j;
            hessian[j][0] += h0j;
            for (i, h) in hessian[j].iter_mut().enumerate().skip(1) {
                *h += w * (if i == j { p[j] } else { 0.0 } - p[i] * p[j]);
            }
        }
    }
    let weight = weight.max(f64::MIN_POSITIVE);
    let centred = centred_biases(params);
    for j in 0..n {
        gradient[j] /= weight;
        hessian[j].iter_mut().for_each(|h| *h /= weight);
    }
    // The ridge on the centred biases c: d/db_j = c_j, d2/db_i db_j = (i == j) - 1/classes.
    for j in 1..n {
        gradient[j] += BIAS_RIDGE * centred[j];
        for (i, h) in hessian[j].iter_mut().enumerate().skip(1) {
            *h += BIAS_RIDGE * (f64::from(u8::from(i == j)) - 1.0 / n as f64);
        }
    }
    (gradient, hessian)
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; none when `a` is singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// The Newton step, with 1/T held where it is when it sits at a bound of its range and the
/// gradient pushes it past (a projected step: the biases are then fitted for that temperature).
fn newton_step(gradient: &[f64], mut hessian: Vec<Vec<f64>>, params: &[f64]) -> Option<Vec<f64>> {
    let a = params[0];
    let held = (a <= *INVERSE_TEMPERATURE.start() && gradient[0] > 0.0)
        || (a >= *INVERSE_TEMPERATURE.end() && gradient[0] < 0.0);
    for (j, row) in hessian.iter_mut().enumerate() {
        row[j] += DAMPING;
    }
    if !held {
        return solve(hessian, gradient.to_vec());
    }
    let biases: Vec<Vec<f64>> = hessian[1..].iter().map(|row| row[1..].to_vec()).collect();
    let mut step = vec![0.0];
    step.extend(solve(biases, gradient[1..].to_vec())?);
    Some(step)
}

/// The temperature and biases with the lowest weighted NLL on `logits` (rows x classes):
/// Newton's method with a backtracking line search, from the identity. Refuses logits that are
/// not finite, which no scaling can calibrate.
pub fn fit(logits: &[Vec<f32>], targets: &[usize], weights: &[f32]) -> std::result::Result<Scaling, String> {
    let Some(classes) = logits.first().map(Vec::len) else { return Ok(Scaling::identity()) };
    if let Some(row) = logits.iter().position(|z| z.iter().any(|v| !v.is_finite())) {
        return Err(format!("window {row}'s logits are not finite, so they cannot be calibrated"));
    }
    let mut params: Params = vec![0.0; classes];
    params[0] = 1.0;
    let mut value = objective(logits, targets, weights, &params);
    for _ in 0..100 {
        let (gradient, hessian) = derivatives(logits, targets, weights, &params);
        let Some(step) = newton_step(&gradient, hessian, &params) else { break };
        let mut size = 1.0;
        let moved = loop {
            let mut next: Params = params.iter().zip(&step).map(|(p, s)| p - size * s).collect();
            next[0] = next[0].clamp(*INVERSE_TEMPERATURE.start(), *INVERSE_TEMPERATURE.end());
            // Armijo on the move made, which the clamp may have shortened.
            let decrease: f64 = gradient.iter().zip(params.iter().zip(&next)).map(|(g, (p, q))| g * (p - q)).sum();
            let next_value = objective(logits, targets, weights, &next);
            if next_value <= value - 1e-4 * decrease.max(0.0) {
                break Some((next, next_value));
            }
            size /= 2.0;
            if size < 1e-6 {
                break None;
            }
        };
        let Some((next, next_value)) = moved else { break };
        let change = next.iter().zip(&params).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        (params, value) = (next, next_value);
        if change < 1e-7 {
            break;
        }
    }
    Ok(Scaling {
        temperature: (1.0 / params[0]) as f32,
        bias: centred_biases(&params).into_iter().map(|b| b as f32).collect(),
    })
}

/// Expected calibration error of the top label's score, over `bins` equal-width bins: the mean
/// of |accuracy - confidence| in each bin, weighted by the bin's share of the texts.
pub fn expected_calibration_error(probabilities: &[Vec<f32>], truth: &[usize], bins: usize) -> f32 {
    let mut count = vec![0usize; bins];
    let mut confidence = vec![0f64; bins];
    let mut correct = vec![0usize; bins];
    for (p, &t) in probabilities.iter().zip(truth) {
        let (best, &score) = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("a class");
        let bin = ((score as f64 * bins as f64) as usize).min(bins - 1);
        count[bin] += 1;
        confidence[bin] += score as f64;
        correct[bin] += usize::from(best == t);
    }
    let n = probabilities.len().max(1) as f64;
    (0..bins).filter(|&b| count[b] > 0).map(|b| (correct[b] as f64 - confidence[b]).abs() / n).sum::<f64>() as f32
}

/// The number of bins zoo reports the calibration error over (as Guo et al. do).
pub const ECE_BINS: usize = 15;

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform in (0, 1), the same everywhere.
    fn uniform(state: &mut u64) -> f64 {
        ((crate::splitmix64(state) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// `n` texts with z uniform in (-span, span) and class 1 drawn with probability sigmoid(z),
    /// scored by `logits_of(z)`.
    fn synthetic(n: usize, seed: u64, span: f64, logits_of: impl Fn(f32) -> Vec<f32>) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut state = seed;
        (0..n)
            .map(|_| {
                let z = (uniform(&mut state) * 2.0 * span - span) as f32;
                let class = usize::from(uniform(&mut state) < 1.0 / (1.0 + (-z as f64).exp()));
                (logits_of(z), class)
            })
            .unzip()
    }

    /// Labels drawn with known probabilities sigmoid(z), and logits that are z made three times too
    /// confident and leaning 1.5 towards class 1: the fit must undo both, and the calibration error
    /// must fall to sampling noise.
    #[test]
    fn recovers_a_known_overconfidence_and_lean_on_synthetic_data() {
        let (logits, truth) = synthetic(20_000, 7, 4.0, |z| vec![0.0, 3.0 * z + 1.5]);
        let weights = vec![1f32; truth.len()];
        let fitted = fit(&logits, &truth, &weights).unwrap();
        assert!((fitted.temperature - 3.0).abs() < 0.15, "{fitted:?}");
        // (3z + 1.5) / 3 + b1 - b0 = z: the biases differ by -0.5.
        assert!((fitted.bias[1] - fitted.bias[0] + 0.5).abs() < 0.06, "{fitted:?}");
        assert!((fitted.bias[0] + fitted.bias[1]).abs() < 1e-6, "centred: {fitted:?}");
        let raw: Vec<Vec<f32>> = logits.iter().map(|z| Scaling::identity().probabilities(z)).collect();
        let scaled: Vec<Vec<f32>> = logits.iter().map(|z| fitted.probabilities(z)).collect();
        let (before, after) =
            (expected_calibration_error(&raw, &truth, ECE_BINS), expected_calibration_error(&scaled, &truth, ECE_BINS));
        assert!(before > 0.08, "overconfident scores are miscalibrated: {before}");
        assert!(after < 0.015, "after scaling {after}");
        // The temperature alone would leave the lean: class 1 predicted more often than it occurs.
        let rate = truth.iter().sum::<usize>() as f64 / truth.len() as f64;
        let mean_one = |p: &[Vec<f32>]| p.iter().map(|p| p[1] as f64).sum::<f64>() / p.len() as f64;
        let temperature_only = Scaling { temperature: fitted.temperature, bias: Vec::new() };
        let leaning: Vec<Vec<f32>> = logits.iter().map(|z| temperature_only.probabilities(z)).collect();
        assert!((mean_one(&scaled) - rate).abs() < 0.01, "{} against {rate}", mean_one(&scaled));
        assert!(mean_one(&leaning) - rate > 0.04, "{} against {rate}", mean_one(&leaning));
    }

    /// Three classes, one of which no text has: the fit stays finite and gives that class little.
    #[test]
    fn a_class_without_val_texts_gets_a_finite_bias() {
        let (logits, truth) = synthetic(2_000, 3, 2.0, |z| vec![0.0, z, 0.5]);
        let fitted = fit(&logits, &truth, &vec![1.0; truth.len()]).unwrap();
        assert!(fitted.check(3).is_ok(), "{fitted:?}");
        let p = fitted.probabilities(&[0.0, 0.0, 0.5]);
        assert!(p[2] < 0.05, "{p:?} from {fitted:?}");
        assert!((fitted.temperature - 1.0).abs() < 0.2, "{fitted:?}");
    }

    /// Balanced, calibrated logits: the fit leaves them alone.
    #[test]
    fn calibrated_logits_stay_as_they_are() {
        let (logits, truth) = synthetic(20_000, 11, 3.0, |z| vec![-z / 2.0, z / 2.0]);
        let fitted = fit(&logits, &truth, &vec![1.0; truth.len()]).unwrap();
        assert!((fitted.temperature - 1.0).abs() < 0.05 && fitted.bias[0].abs() < 0.03, "{fitted:?}");
    }

    /// Far too little confidence: 1/T wants to go past its bound of 20. Held there, the bias must
    /// still fit the labels' lean (an unprojected step left it worse than no bias at all).
    #[test]
    fn a_temperature_at_its_bound_still_gets_its_bias() {
        let (logits, truth) = synthetic(5_000, 5, 3.0, |z| vec![0.0, 0.01 * z + 0.02]);
        let weights = vec![1f32; truth.len()];
        let fitted = fit(&logits, &truth, &weights).unwrap();
        assert!((fitted.temperature - 0.05).abs() < 1e-6, "{fitted:?}");
        let nll = |s: &Scaling| {
            logits.iter().zip(&truth).map(|(z, &t)| -(s.probabilities(z)[t] as f64).ln()).sum::<f64>()
                / truth.len() as f64
        };
        let unbiased = Scaling { temperature: fitted.temperature, bias: Vec::new() };
        assert!(nll(&fitted) < nll(&unbiased) - 1e-3, "{} against {} unbiased", nll(&fitted), nll(&unbiased));
        // The best bias at this temperature, by a scan: the fit is within the scan's step of it.
        let best = (-200..=200)
            .map(|i| i as f32 / 200.0)
            .min_by(|&a, &b| {
                let at = |lean: f32| nll(&Scaling { temperature: 0.05, bias: vec![-lean / 2.0, lean / 2.0] });
                at(a).total_cmp(&at(b))
            })
            .unwrap();
        assert!((fitted.bias[1] - fitted.bias[0] - best).abs() < 0.01, "{fitted:?} against a lean of {best}");
    }

    /// Logits that say nothing (the same for every text and class): the temperature has nothing
    /// to act on, and the bias alone gives the classes their shares.
    #[test]
    fn uninformative_logits_get_the_classes_shares() {
        let logits = vec![vec![0.3f32, 0.3]; 400];
        let truth: Vec<usize> = (0..400).map(|i| usize::from(i % 4 == 0)).collect();
        let fitted = fit(&logits, &truth, &vec![1.0; 400]).unwrap();
        let p = fitted.probabilities(&logits[0]);
        assert!((p[1] - 0.25).abs() < 0.005, "{p:?} from {fitted:?}");
    }

    #[test]
    fn logits_that_are_not_finite_are_refused() {
        let logits = vec![vec![0.0, 1.0], vec![f32::NAN, 0.0]];
        assert_eq!(
            fit(&logits, &[0, 1], &[1.0, 1.0]).unwrap_err(),
            "window 1's logits are not finite, so they cannot be calibrated"
        );
    }

    /// A class with no val texts gets the same bias wherever it stands among the labels.
    #[test]
    fn the_fit_does_not_depend_on_the_order_of_the_labels() {
        let (logits, truth) = synthetic(2_000, 3, 2.0, |z| vec![0.0, z, 0.5]);
        let forward = fit(&logits, &truth, &vec![1.0; truth.len()]).unwrap();
        let reversed: Vec<Vec<f32>> = logits.iter().map(|z| z.iter().rev().copied().collect()).collect();
        let flipped: Vec<usize> = truth.iter().map(|&t| 2 - t).collect();
        let backward = fit(&reversed, &flipped, &vec![1.0; truth.len()]).unwrap();
        assert!((forward.temperature - backward.temperature).abs() < 1e-4, "{forward:?} {backward:?}");
        for k in 0..3 {
            assert!((forward.bias[k] - backward.bias[2 - k]).abs() < 1e-4, "{forward:?} {backward:?}");
        }
    }

    /// The batch form the heads use gives the probabilities the rows do.
    #[test]
    fn the_tensor_form_applies_the_bias_as_the_rows_do() {
        let scaling = Scaling { temperature: 1.7, bias: vec![0.4, -0.1, -0.3] };
        let rows = [[0.5f32, -1.0, 2.0], [3.0, 0.0, 0.1]];
        let tensor = candle_core::Tensor::new(&rows, &candle_core::Device::Cpu).unwrap();
        let batch: Vec<Vec<f32>> =
            candle_nn::ops::softmax_last_dim(&scaling.apply(&tensor).unwrap()).unwrap().to_vec2().unwrap();
        for (row, got) in rows.iter().zip(&batch) {
            let want = scaling.probabilities(row);
            assert!(want.iter().zip(got).all(|(a, b)| (a - b).abs() < 1e-6), "{want:?} against {got:?}");
        }
    }

    /// Files written before zoo fitted a bias have a temperature alone.
    #[test]
    fn a_scaling_without_a_bias_reads_as_before() {
        let old: Scaling = serde_json::from_str(r#"{"temperature": 1.25}"#).unwrap();
        assert_eq!(old, Scaling { temperature: 1.25, bias: Vec::new() });
        let p = old.probabilities(&[0.0, 1.0]);
        assert!((p[1] - 1.0 / (1.0 + (-0.8f32).exp())).abs() < 1e-6, "{p:?}");
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"temperature":1.25}"#);
    }

    #[test]
    fn a_stored_scaling_that_does_not_fit_is_refused() {
        let scaling = |temperature, bias: &[f32]| Scaling { temperature, bias: bias.to_vec() };
        assert!(scaling(1.2, &[]).check(2).is_ok());
        assert!(scaling(1.2, &[0.1, -0.1]).check(2).is_ok());
        for (bad, why) in [
            (scaling(0.0, &[]), "temperature 0 is not positive"),
            (scaling(f32::NAN, &[]), "temperature NaN is not positive"),
            (scaling(1.0, &[0.1, 0.0, -0.1]), "3 biases for 2 classes"),
            (scaling(1.0, &[f32::INFINITY, 0.0]), "bias inf is not finite"),
        ] {
            assert_eq!(bad.check(2).unwrap_err(), why);
        }
    }

    #[test]
    fn calibration_error_by_hand() {
        // Two texts at 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1-0.6|*2/4 = 0.4.
        let p = vec![vec![0.9, 0.1], vec![0.9, 0.1], vec![0.4, 0.6], vec![0.4, 0.6]];
        let ece = expected_calibration_error(&p, &[0, 1, 1, 1], 10);
        assert!((ece - 0.4).abs() < 1e-6, "{ece}");
    }
}
