//! The CPU building blocks of zoo's Whisper: dense layers over `gemm`, layer norm, and the
//! vectorisable exp, GELU and dot products the encoder and decoder loops use.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

pub struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// A linear layer with its weight stored `in x out`, the layout `gemm` reads fastest as the right
/// operand.
pub struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    pub d_in: usize,
    pub d_out: usize,
}

pub fn vec_of(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

impl Dense {
    /// From Transformers' `out x in` weight(s), stacked along the output.
    pub fn from_linears(weights: &[Tensor], biases: &[Tensor]) -> Result<Self> {
        let weight = Tensor::cat(weights, 0)?.t()?.contiguous()?;
        let (d_in, d_out) = weight.dims2()?;
        Ok(Self { weight: vec_of(&weight)?, bias: vec_of(&Tensor::cat(biases, 0)?)?, d_in, d_out })
    }

    /// From a convolution weight `out x in x kernel`, unfolded as rows `k * in + c`.
    pub fn from_conv(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (d_out, d_in, k) = weight.dims3()?;
        let weight = weight.permute((2, 1, 0))?.reshape((k * d_in, d_out))?.contiguous()?;
        Ok(Self { weight: vec_of(&weight)?, bias: vec_of(bias)?, d_in: k * d_in, d_out })
    }

    /// `out (rows x d_out) = x (rows x d_in) W + b`, or `out += x W + b` when `accumulate`.
    pub fn apply(&self, x: &[f32], rows: usize, out: &mut [f32], accumulate: bool) {
        assert!(x.len() >= rows * self.d_in && out.len() >= rows * self.d_out, "dense shapes");
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        zoo_runtime::cpu::matmul(
            (x, self.d_in),
            &self.weight,
            out,
            (rows, self.d_in, self.d_out),
            accumulate,
            parallelism,
        );
        out[..rows * self.d_out].par_chunks_mut(self.d_out * 64).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(self.d_out) {
                for (y, b) in row.iter_mut().zip(&self.bias) {
                    *y += b;
                }
            }
        });
    }
}

impl Dense {
    /// `out = x W + b` for a single row, as a sum of W's rows scaled by x: every step of the loop
    /// is a contiguous multiply-add over the outputs, which vectorises.
    pub fn apply_row(&self, x: &[f32], out: &mut [f32]) {
        out[..self.d_out].copy_from_slice(&self.bias);
        for (i, &xi) in x[..self.d_in].iter().enumerate() {
            let row = &self.weight[i * self.d_out..][..self.d_out];
            for (y, w) in out[..self.d_out].iter_mut().zip(row) {
                *y = xi.mul_add(*w, *y);
            }
        }
    }

    /// [`Dense::apply`] or, for one row, [`Dense::apply_row`].
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.d_out];
        if rows == 1 {
            self.apply_row(x, &mut out);
        } else {
            self.apply(x, rows, &mut out, false);
        }
        out
    }
}

impl LayerNorm {
    pub fn load(vb: &VarBuilder, name: &str, d: usize) -> Result<Self> {
        Ok(Self {
            gamma: vec_of(&vb.get(d, &format!("{name}.weight"))?)?,
            beta: vec_of(&vb.get(d, &format!("{name}.bias"))?)?,
        })
    }

    pub fn apply(&self, x: &[f32], out: &mut [f32]) {
        let d = self.gamma.len();
        out.par_chunks_mut(d * 64).zip(x.par_chunks(d * 64)).for_each(|(out, x)| {
            for (o, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let mean = lane_sum(row, |v| v) / d as f32;
                let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
                let inv = 1.0 / (var + 1e-5).sqrt();
                for i in 0..d {
                    o[i] = (row[i] - mean) * inv * self.gamma[i] + self.beta[i];
                }
            }
        });
    }
}

/// `e^x` from `2^n * 2^f` with a degree-6 polynomial for `2^f`, `|f| <= 0.5`: relative error
/// below 2e-6 (the rounding of `x log2 e` in f32), and only arithmetic, so loops over it vectorise.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let y = x * std::f32::consts::LOG2_E;
    // Round to nearest by the float-add trick (no libm call).
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let shifted = y + MAGIC;
    let n = shifted - MAGIC;
    let f = (y - n) * std::f32::consts::LN_2;
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    // n sits in the low mantissa bits of `shifted`: integer arithmetic on those bits builds 2^n
    // where `n as i32` (a saturating cast) would keep the loops around this function scalar.
    let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// GELU with the exact erf (as Whisper was trained), erf by Abramowitz & Stegun 7.1.26
/// (absolute error below 1.5e-7).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let erf = 1.0 - poly * fast_exp(-z * z);
    let erf = if x < 0.0 { -erf } else { erf };
    0.5 * x * (1.0 + erf)
}

pub fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(|v| *v = gelu(*v)));
}

/// A dot product in independent lanes: a plain `.sum()` is one serial chain of adds (floats do not
/// reassociate), which the compiler cannot vectorise.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_main, a_rest) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_rest) = b.split_at(a_main.len());
    for (ca, cb) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] = ca[i].mul_add(cb[i], acc[i]);
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// [`dot`] with `a` in half precision: the vocabulary projection reads the whole embedding matrix
/// per token, so halving its bytes halves the memory traffic that bounds it. The checkpoints hold
/// these weights in f16 to begin with.
#[inline]
pub fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
    use half::slice::HalfFloatSliceExt;
    const LANES: usize = 32;
    let mut acc = [0f32; LANES];
    let mut wide = [0f32; LANES];
    let main = a.len() - a.len() % LANES;
    for (ca, cb) in a[..main].chunks_exact(LANES).zip(b[..main].chunks_exact(LANES)) {
        ca.convert_to_f32_slice(&mut wide);
        for i in 0..LANES {
            acc[i] = wide[i].mul_add(cb[i], acc[i]);
        }
    }
    let tail: f32 = a[main..].iter().zip(&b[main..]).map(|(x, y)| x.to_f32() * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The sum of `f` over `values` in independent lanes (see [`dot`]).
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for i in 0..LANES {
            acc[i] += f(chunk[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Softmax of `row` in place, its max and sum taken in independent lanes: a plain fold is one
/// serial chain (floats do not reassociate), which kept the encoder's 1500-wide attention rows,
/// its largest elementwise work, in scalar code.
pub fn softmax_in_place(row: &mut [f32]) {
    const LANES: usize = 16;
    let whole = row.len() - row.len() % LANES;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in row[..whole].chunks_exact(LANES) {
        for i in 0..LANES {
            lanes[i] = lanes[i].max(chunk[i]);
        }
    }
    let max = row[whole..].iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; LANES];
    for chunk in row[..whole].chunks_exact_mut(LANES) {
        for i in 0..LANES {
            chunk[i] = fast_exp(chunk[i] - max);
            sums[i] += chunk[i];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in &mut row[whole..] {
        *v = fast_exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_plain_f64() {
        for n in [1, 7, 16, 33, 1500] {
            let mut row: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let want: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp() / total).collect();
            softmax_in_place(&mut row);
            for (got, want) in row.iter().zip(want) {
                assert!((*got as f64 - want).abs() < 1e-6 * (1.0 + want), "{n}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn fast_exp_and_gelu_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            let rel = ((fast_exp(x) as f64 - want) / want).abs();
            assert!(rel < 2e-6, "exp({x}): relative error {rel}");
        }
        // GELU against candle's exact-erf GELU.
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let want = t.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        for (x, w) in xs.iter().zip(want) {
            assert!((gelu(*x) - w).abs() < 1e-6 * (1.0 + w.abs()), "gelu({x}) = {} vs {w}", gelu(*x));
        }
    }
}
