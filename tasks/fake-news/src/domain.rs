//! How close a text is to what a head was trained on. Training summarises the training windows'
//! embeddings as centroids (spherical k-means within each source, so a small source keeps its own);
//! a text's distance is its windows' cosine distance to the nearest centroid, averaged by tokens,
//! and is reported as a percentile of the validation texts' distances. Past a set percentile the
//! text is called out of domain.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// What head.json records about the training data's domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Rows of `domain.centroids` in head.safetensors.
    pub centroids: usize,
    /// The validation texts' distances at percentiles 0, 1, ..., 100.
    pub quantiles: Vec<f32>,
    /// Texts whose distance is past this percentile of the validation texts' are out of domain.
    pub warn_percentile: f32,
}

impl DomainInfo {
    pub fn threshold(&self) -> f32 {
        quantile(&self.quantiles, self.warn_percentile)
    }

    /// Where `distance` falls among the validation texts', 0-100 (interpolated between quantiles).
    pub fn percentile(&self, distance: f32) -> f32 {
        let q = &self.quantiles;
        if q.len() < 2 || distance <= q[0] {
            return 0.0;
        }
        let step = 100.0 / (q.len() - 1) as f32;
        for i in 1..q.len() {
            if distance <= q[i] {
                let span = q[i] - q[i - 1];
                let within = if span > 0.0 { (distance - q[i - 1]) / span } else { 1.0 };
                return ((i - 1) as f32 + within) * step;
            }
        }
        100.0
    }
}

/// The value at `percentile` of sorted values or a quantile table (linear between entries).
fn quantile(quantiles: &[f32], percentile: f32) -> f32 {
    let at = percentile.clamp(0.0, 100.0) / 100.0 * (quantiles.len() - 1) as f32;
    let (lo, frac) = (at.floor() as usize, at.fract());
    let hi = (lo + 1).min(quantiles.len() - 1);
    quantiles[lo] + frac * (quantiles[hi] - quantiles[lo])
}

/// Percentiles 0..=100 of `values` (linear interpolation, as numpy's default).
pub fn quantiles(values: &[f32]) -> Vec<f32> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    (0..=100).map(|p| quantile(&sorted, p as f32)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Cosine distance of each unit-length row of `rows` to its nearest centroid.
pub fn distances(centroids: &[f32], rows: &[f32], dim: usize) -> Vec<f32> {
    rows.par_chunks_exact(dim)
        .map(|row| {
            let best = centroids.chunks_exact(dim).map(|c| dot(c, row)).fold(f32::NEG_INFINITY, f32::max);
            1.0 - best
        })
        .collect()
}

fn normalise(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Spherical k-means of unit-length `rows` into `k` centroids: k-means++ seeding from a SplitMix64
/// stream (the same on every machine), then Lloyd's iterations on cosine similarity.
pub fn kmeans(rows: &[f32], dim: usize, k: usize, seed: u64) -> Vec<f32> {
    let n = rows.len() / dim;
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let row = |i: usize| &rows[i * dim..(i + 1) * dim];
    let mut state = seed;
    let mut centroids: Vec<f32> = row((crate::splitmix64(&mut state) % n as u64) as usize).to_vec();
    let mut nearest: Vec<f32> = (0..n).map(|i| (1.0 - dot(row(i), &centroids)).max(0.0)).collect();
    while centroids.len() < k * dim {
        let total: f64 = nearest.iter().map(|&d| d as f64).sum();
        let pick = if total <= 0.0 {
            (crate::splitmix64(&mut state) % n as u64) as usize
        } else {
            let mut target = (crate::splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64 * total;
            let mut chosen = n - 1;
            for (i, &d) in nearest.iter().enumerate() {
                target -= d as f64;
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        };
        let c = row(pick).to_vec();
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min((1.0 - dot(row(i), &c)).max(0.0));
        }
        centroids.extend(c);
    }
    let mut assignment = vec![usize::MAX; n];
    for _ in 0..25 {
        let changed: usize = assignment
            .par_iter_mut()
            .enumerate()
            .map(|(i, a)| {
                let (best, _) = centroids
                    .chunks_exact(dim)
                    .map(|c| dot(c, row(i)))
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |acc, (j, s)| if s > acc.1 { (j, s) } else { acc });
                let moved = usize::from(*a != best);
                *a = best;
                moved
            })
            .sum();
        let mut sums = vec![0f32; k * dim];
        for (i, &a) in assignment.iter().enumerate() {
            sums[a * dim..(a + 1) * dim].iter_mut().zip(row(i)).for_each(|(s, v)| *s += v);
        }
        for (j, sum) in sums.chunks_exact_mut(dim).enumerate() {
            // An emptied centroid keeps its place rather than collapsing to zero.
            if sum.iter().any(|&v| v != 0.0) {
                normalise(sum);
                centroids[j * dim..(j + 1) * dim].copy_from_slice(sum);
            }
        }
        if changed == 0 {
            break;
        }
    }
    centroids
}

/// Centroids for several sources at once: `total` of them shared out in proportion to the square
/// root of each source's rows (at least two each), k-means within each source.
pub fn centroids_by_source(rows: &[f32], dim: usize, sources: &[std::ops::Range<usize>], total: usize) -> Vec<f32> {
    let roots: Vec<f64> = sources.iter().map(|r| (r.len() as f64).sqrt()).collect();
    let sum: f64 = roots.iter().sum();
    let mut centroids = Vec::new();
    for (i, (range, root)) in sources.iter().zip(&roots).enumerate() {
        let k = ((total as f64 * root / sum).round() as usize).max(2);
        centroids.extend(kmeans(&rows[range.start * dim..range.end * dim], dim, k, i as u64));
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_and_saturate() {
        let values: Vec<f32> = (0..=100).map(|v| v as f32 / 100.0).collect();
        let info = DomainInfo { centroids: 0, quantiles: quantiles(&values), warn_percentile: 95.0 };
        assert!((info.percentile(0.5) - 50.0).abs() < 1e-3);
        assert!((info.percentile(0.255) - 25.5).abs() < 1e-3);
        assert_eq!(info.percentile(-1.0), 0.0);
        assert_eq!(info.percentile(2.0), 100.0);
        assert!((info.threshold() - 0.95).abs() < 1e-6);
    }

    #[test]
    fn kmeans_finds_separated_clusters_and_distances_measure_them() {
        // Two tight clusters on the unit circle in 3-d, around x and around y.
        let mut rows = Vec::new();
        for i in 0..20 {
            let e = i as f32 * 0.01;
            let mut a = vec![1.0, e, 0.0];
            let mut b = vec![e, 1.0, 0.0];
            normalise(&mut a);
            normalise(&mut b);
            rows.extend(a);
            rows.extend(b);
        }
        let c = kmeans(&rows, 3, 2, 1);
        let near = distances(&c, &rows, 3);
        assert!(near.iter().all(|&d| d < 0.01), "{near:?}");
        let far = distances(&c, &[0.0, 0.0, 1.0], 3);
        assert!((far[0] - 1.0).abs() < 1e-5, "orthogonal to both clusters: {far:?}");
        assert_eq!(kmeans(&rows, 3, 2, 1), c, "seeded");
    }
}
