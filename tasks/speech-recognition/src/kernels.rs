//! The CPU building blocks of zoo's Whisper: dense layers over `gemm`, layer norm, GELU and the
//! dot products the decoder's loops use (the elementwise maths is the runtime's [`cpu`]).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use zoo_runtime::cpu;
use zoo_runtime::cpu::quantized::{QuantizedMatrix, PANEL_COLUMNS};

pub struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// A linear layer with its weight stored `in x out`, the layout `gemm` reads fastest as the right
/// operand; or, quantized ([`Dense::quantize`]), as int8 column blocks.
pub struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    int8: Vec<Int8Block>,
    pub d_in: usize,
    pub d_out: usize,
}

/// Output columns `first..first + matrix.cols` of a quantized layer: the blocks are what the
/// threads share out, so that one row (a decoding step) still runs on every core.
struct Int8Block {
    first: usize,
    matrix: QuantizedMatrix,
}

pub fn vec_of(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

impl Dense {
    /// From Transformers' `out x in` weight(s), stacked along the output.
    pub fn from_linears(weights: &[Tensor], biases: &[Tensor]) -> Result<Self> {
        let weight = Tensor::cat(weights, 0)?.t()?.contiguous()?;
        let (d_in, d_out) = weight.dims2()?;
        Ok(Self { weight: vec_of(&weight)?, bias: vec_of(&Tensor::cat(biases, 0)?)?, int8: Vec::new(), d_in, d_out })
    }

    /// From a convolution weight `out x in x kernel`, unfolded as rows `k * in + c`.
    pub fn from_conv(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (d_out, d_in, k) = weight.dims3()?;
        let weight = weight.permute((2, 1, 0))?.reshape((k * d_in, d_out))?.contiguous()?;
        Ok(Self { weight: vec_of(&weight)?, bias: vec_of(bias)?, int8: Vec::new(), d_in: k * d_in, d_out })
    }

    /// The weights as int8, per output column, as CTranslate2 quantizes them (the f32 copy is
    /// dropped); inputs are then quantized per row as they come, and products summed in int32.
    fn quantize(&mut self) {
        if self.weight.is_empty() {
            return;
        }
        // About four blocks per thread, each whole panels of the int8 kernel.
        let threads = rayon::current_num_threads().max(1);
        let width = self.d_out.div_ceil(4 * threads).div_ceil(PANEL_COLUMNS).max(1) * PANEL_COLUMNS;
        self.int8 = (0..self.d_out)
            .step_by(width)
            .map(|first| {
                let cols = width.min(self.d_out - first);
                let weights: Vec<f32> = self
                    .weight
                    .chunks_exact(self.d_out)
                    .flat_map(|row| row[first..first + cols].iter().copied())
                    .collect();
                let matrix = QuantizedMatrix::dynamic(&weights, self.d_in, cols, &self.bias[first..first + cols]);
                Int8Block { first, matrix }
            })
            .collect();
        self.weight = Vec::new();
    }

    /// The layer itself, quantized when `int8`: loading quantizes each layer as it is read, so a
    /// model's float weights are never all held at once.
    pub fn quantized_if(mut self, int8: bool) -> Self {
        if int8 {
            self.quantize();
        }
        self
    }

    pub fn is_quantized(&self) -> bool {
        !self.int8.is_empty()
    }

    /// The int8 product: each block of columns (and, for many rows, each band of rows) a task.
    fn apply_int8(&self, x: &[f32], rows: usize, out: &mut [f32], accumulate: bool) {
        const BAND: usize = 64;
        let bands = rows.div_ceil(BAND).max(1);
        let tasks: Vec<(usize, usize)> = (0..bands).flat_map(|b| (0..self.int8.len()).map(move |k| (b, k))).collect();
        let parts: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(band, block)| {
                let (r0, r1) = (band * BAND, ((band + 1) * BAND).min(rows));
                let matrix = &self.int8[block].matrix;
                let mut part = vec![0f32; (r1 - r0) * matrix.cols];
                matrix.multiply_dynamic(&x[r0 * self.d_in..r1 * self.d_in], r1 - r0, &mut part);
                part
            })
            .collect();
        for (&(band, block), part) in tasks.iter().zip(&parts) {
            let Int8Block { first, matrix } = &self.int8[block];
            for (r, values) in part.chunks_exact(matrix.cols).enumerate() {
                let row = &mut out[(band * BAND + r) * self.d_out + first..][..matrix.cols];
                if accumulate {
                    row.iter_mut().zip(values).for_each(|(o, v)| *o += v);
                } else {
                    row.copy_from_slice(values);
                }
            }
        }
    }

    /// `out (rows x d_out) = x (rows x d_in) W + b`, or `out += x W + b` when `accumulate`.
    pub fn apply(&self, x: &[f32], rows: usize, out: &mut [f32], accumulate: bool) {
        assert!(x.len() >= rows * self.d_in && out.len() >= rows * self.d_out, "dense shapes");
        if self.is_quantized() {
            return self.apply_int8(x, rows, out, accumulate);
        }
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
    fn apply_row(&self, x: &[f32], out: &mut [f32]) {
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
        if rows == 1 && !self.is_quantized() {
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

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use zoo_runtime::test_support::pseudo_random as numbers;

    use super::*;

    /// A quantized layer against the same layer in f32, over the column blocks and row bands the
    /// threads share: one row (a decoding step), a few, and more than a band; stored and added.
    #[test]
    fn a_quantized_layer_is_the_float_one_to_its_quantization() {
        for (d_in, d_out) in [(5, 3), (37, 100), (64, 49), (384, 1152), (96, 401)] {
            let w = Tensor::from_vec(numbers(d_in * d_out, d_out as u32), (d_out, d_in), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(numbers(d_out, 3), d_out, &Device::Cpu).unwrap();
            let float = Dense::from_linears(std::slice::from_ref(&w), std::slice::from_ref(&b)).unwrap();
            let mut int8 = Dense::from_linears(&[w], &[b]).unwrap();
            int8.quantize();
            assert!(int8.is_quantized() && int8.weight.is_empty(), "the f32 copy is dropped");
            for rows in [1, 3, 70, 130] {
                let x = numbers(rows * d_in, rows as u32);
                let (x_max, w_max) = (1.0f32, 1.0f32);
                // Each term is off by half a step of each code at most.
                let bound = d_in as f32 * (x_max / 127.0 * w_max + x_max * w_max / 127.0);
                let want = float.forward(&x, rows);
                let got = int8.forward(&x, rows);
                let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff <= bound, "{rows}x{d_in} x ({d_in}, {d_out}): {diff} (bound {bound})");
                // Typical errors are far below the bound: the codes' errors cancel.
                let mean = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).sum::<f32>() / want.len() as f32;
                assert!(mean <= bound / 10.0, "{rows}x{d_in} x ({d_in}, {d_out}): mean error {mean}");
                let mut added = vec![1f32; rows * d_out];
                int8.apply(&x, rows, &mut added, true);
                let diff = added.iter().zip(&got).map(|(a, b)| (a - 1.0 - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-5, "accumulating adds the same product: {diff}");
            }
        }
    }
}
