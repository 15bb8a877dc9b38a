//! Temperature scaling (Guo et al. 2017): one number that divides the head's logits, fitted on
//! validation data so that a score of 0.8 is right about 80 % of the time; and the expected
//! calibration error that says how far from that the scores are.

/// Softmax of `logits / temperature`.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|z| ((z - max) / temperature).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Weighted mean negative log-likelihood of `targets` under `logits / temperature`.
fn nll(logits: &[Vec<f32>], targets: &[usize], weights: &[f32], temperature: f64) -> f64 {
    let mut total = 0.0;
    let mut weight = 0.0;
    for ((z, &t), &w) in logits.iter().zip(targets).zip(weights) {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = z.iter().map(|&v| ((v as f64 - max) / temperature).exp()).sum::<f64>().ln();
        total += w as f64 * (log_sum - (z[t] as f64 - max) / temperature);
        weight += w as f64;
    }
    total / weight.max(f64::MIN_POSITIVE)
}

/// The temperature in [1/20, 20] with the lowest weighted NLL: golden-section search on its
/// logarithm, where the NLL is unimodal for all but pathological data.
pub fn fit_temperature(logits: &[Vec<f32>], targets: &[usize], weights: &[f32]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    let f = |log_t: f64| nll(logits, targets, weights, log_t.exp());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (-(20f64.ln()), 20f64.ln());
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > 1e-4 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - ratio * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + ratio * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp() as f32
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

    /// Labels drawn with known probabilities sigmoid(z), and logits that are z made three times too
    /// confident: the fitted temperature must undo the factor, and the calibration error must fall
    /// to sampling noise.
    #[test]
    fn recovers_a_known_overconfidence_on_synthetic_data() {
        let mut state = 7;
        let (mut logits, mut truth) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let z = (uniform(&mut state) * 8.0 - 4.0) as f32;
            let p_one = 1.0 / (1.0 + (-z as f64).exp());
            truth.push(usize::from(uniform(&mut state) < p_one));
            logits.push(vec![0.0, 3.0 * z]);
        }
        let weights = vec![1f32; truth.len()];
        let t = fit_temperature(&logits, &truth, &weights);
        assert!((t - 3.0).abs() < 0.15, "temperature {t}");
        let raw: Vec<Vec<f32>> = logits.iter().map(|z| softmax(z, 1.0)).collect();
        let scaled: Vec<Vec<f32>> = logits.iter().map(|z| softmax(z, t)).collect();
        let (before, after) =
            (expected_calibration_error(&raw, &truth, ECE_BINS), expected_calibration_error(&scaled, &truth, ECE_BINS));
        assert!(before > 0.08, "overconfident scores are miscalibrated: {before}");
        assert!(after < 0.015, "after scaling {after}");
    }

    #[test]
    fn calibration_error_by_hand() {
        // Two texts at 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1-0.6|*2/4 = 0.4.
        let p = vec![vec![0.9, 0.1], vec![0.9, 0.1], vec![0.4, 0.6], vec![0.4, 0.6]];
        let ece = expected_calibration_error(&p, &[0, 1, 1, 1], 10);
        assert!((ece - 0.4).abs() < 1e-6, "{ece}");
    }
}
