//! The CPU building blocks of zoo's Whisper: dense layers over `gemm`, layer norm, GELU and the
//! dot products the decoder's loops use (the elementwise maths is the runtime's [`cpu`]).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use zoo_runtime::cpu;

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
                o.copy_from_slice(row);
                cpu::layer_norm(o, &self.gamma, &self.beta, 1e-5);
            }
        });
    }
}

pub fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(|v| *v = cpu::gelu(*v)));
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

/// Four dot products of `b` with the rows of `a` at once: one chain of multiply-adds waits for
/// the one before it, four independent chains keep the FMA units busy.
#[inline]
pub fn dot4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    const LANES: usize = 16;
    let main = b.len() - b.len() % LANES;
    let (mut s0, mut s1, mut s2, mut s3) = ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let rows = a[0][..main]
        .chunks_exact(LANES)
        .zip(a[1][..main].chunks_exact(LANES))
        .zip(a[2][..main].chunks_exact(LANES))
        .zip(a[3][..main].chunks_exact(LANES));
    for ((((r0, r1), r2), r3), cb) in rows.zip(b[..main].chunks_exact(LANES)) {
        for i in 0..LANES {
            s0[i] = r0[i].mul_add(cb[i], s0[i]);
            s1[i] = r1[i].mul_add(cb[i], s1[i]);
            s2[i] = r2[i].mul_add(cb[i], s2[i]);
            s3[i] = r3[i].mul_add(cb[i], s3[i]);
        }
    }
    let tail = |row: &[f32]| -> f32 { row[main..b.len()].iter().zip(&b[main..]).map(|(x, y)| x * y).sum() };
    [
        s0.iter().sum::<f32>() + tail(a[0]),
        s1.iter().sum::<f32>() + tail(a[1]),
        s2.iter().sum::<f32>() + tail(a[2]),
        s3.iter().sum::<f32>() + tail(a[3]),
    ]
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
