//! The style networks on the CPU over plain NHWC buffers. candle's path pads, upsamples, normalises
//! and activates in separate full passes over memory (each with a round of thread synchronisation)
//! and builds a full patch matrix for every convolution (a 9x9 one over a 2048x2048 picture would
//! be 4 GB). Here upsampling and reflection padding are one gather through index tables; stride-1
//! convolutions multiply bands of output rows by weights packed once, reading the padded input in place, strided
//! ones gather cache-sized tiles of patches; the instance-norm sums are taken while each band is
//! still in cache, and one more pass normalises, activates and adds the residual.

use rayon::prelude::*;

use zoo_runtime::cpu::packed::{Epilogue, Lhs, PackedMatrix, Start};

use crate::layers::{reflect_index, NORM_EPS};
use crate::network::{Activation, ConvLayer, Norms, StyleNet};

/// Patch-matrix floats per tile: 64k floats (256 kB) keeps a tile in L2.
const TILE_FLOATS: usize = 64 * 1024;

pub struct CpuLayer {
    /// (k*k*in, out): row (ky*k + kx)*in + ci, packed once for every product.
    weights: PackedMatrix,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    upsample: bool,
    cin: usize,
    cout: usize,
    activation: Activation,
}

impl CpuLayer {
    fn new(layer: &ConvLayer) -> candle_core::Result<Self> {
        let (cout, cin, k, _) = layer.weight.dims4()?;
        let weights: Vec<f32> = layer.weight.permute((2, 3, 1, 0))?.flatten_all()?.to_vec1()?;
        let weights = PackedMatrix::new(&weights, k * k * cin, cout);
        let bias = match &layer.bias {
            Some(b) => b.to_vec1()?,
            None => vec![0.0; cout],
        };
        Ok(CpuLayer {
            weights,
            bias,
            kernel: k,
            stride: layer.stride,
            upsample: layer.upsample,
            cin,
            cout,
            activation: layer.activation,
        })
    }

    fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let (uh, uw) = if self.upsample { (2 * h, 2 * w) } else { (h, w) };
        let p = self.kernel / 2;
        ((uh + 2 * p - self.kernel) / self.stride + 1, (uw + 2 * p - self.kernel) / self.stride + 1)
    }

    /// For each padded coordinate along an axis of `n` input pixels, the input pixel it reads.
    fn source_table(&self, n: usize) -> Vec<usize> {
        let up = if self.upsample { 2 } else { 1 };
        let p = self.kernel / 2;
        (0..n * up + 2 * p).map(|i| reflect_index(i as isize - p as isize, n * up) / up).collect()
    }

    /// The convolution of `x` (h, w, cin) into `out` (oh, ow, cout). With `norm`, returns each
    /// channel's (sum, sum of squares) for the instance norm and leaves the bias out (the norm's
    /// mean removes it); without, adds the bias and applies the activation.
    fn conv(&self, x: &[f32], h: usize, w: usize, out: &mut [f32], norm: bool) -> Option<Vec<(f64, f64)>> {
        let (oh, ow) = self.output_hw(h, w);
        let out = &mut out[..oh * ow * self.cout];
        // Reading strided windows in place would compute every skipped output too, so strided
        // layers gather patches instead (measured: the in-place products are 1.4x faster at stride 1).
        let partial: Vec<Vec<(f64, f64)>> = if self.stride == 1 {
            self.conv_stride1(x, h, w, out, norm)
        } else {
            self.conv_patches(x, h, w, out, norm)
        };
        norm.then(|| {
            let mut total = vec![(0f64, 0f64); self.cout];
            for tile in partial {
                for (acc, (a, b)) in total.iter_mut().zip(tile) {
                    acc.0 += a;
                    acc.1 += b;
                }
            }
            total
        })
    }

    /// What follows the product on a tile still in cache: the norm's partial sums, or bias and activation.
    fn epilogue(&self, out_tile: &mut [f32], norm: bool) -> Vec<(f64, f64)> {
        if norm {
            let mut sums = vec![(0f32, 0f32); self.cout];
            for px in out_tile.chunks_exact(self.cout) {
                for (acc, &v) in sums.iter_mut().zip(px) {
                    acc.0 += v;
                    acc.1 += v * v;
                }
            }
            return sums.into_iter().map(|(a, b)| (f64::from(a), f64::from(b))).collect();
        }
        for px in out_tile.chunks_exact_mut(self.cout) {
            for (v, b) in px.iter_mut().zip(&self.bias) {
                *v = activate(*v + b, self.activation);
            }
        }
        Vec::new()
    }

    /// The padded (and upsampled) input, (rows, cols, cin), and its width.
    fn pad_input(&self, x: &[f32], h: usize, w: usize) -> (Vec<f32>, usize) {
        let cin = self.cin;
        let rows = self.source_table(h);
        let cols = self.source_table(w);
        let pw = cols.len();
        let mut padded = vec![0f32; rows.len() * pw * cin];
        padded.par_chunks_mut(pw * cin).zip(rows.par_iter()).for_each(|(dst, &row)| {
            for (px, &col) in dst.chunks_exact_mut(cin).zip(&cols) {
                let src = (row * w + col) * cin;
                px.copy_from_slice(&x[src..src + cin]);
            }
        });
        (padded, pw)
    }

    /// Stride 1 without a patch matrix: the padded (and upsampled) input is materialised once;
    /// then, numbering outputs along the padded width (the k - 1 extra columns per row are computed
    /// and dropped), the inputs of kernel row ky for consecutive outputs are consecutive windows of
    /// k * cin floats cin apart, which is a matrix the product reads in place with a row stride of cin.
    /// So each band of output rows is k products accumulated, and no patch is ever copied.
    fn conv_stride1(&self, x: &[f32], h: usize, w: usize, out: &mut [f32], norm: bool) -> Vec<Vec<(f64, f64)>> {
        let (oh, ow) = self.output_hw(h, w);
        let (k, cin, cout) = (self.kernel, self.cin, self.cout);
        let (padded, pw) = self.pad_input(x, h, w);
        debug_assert_eq!(pw, ow + k - 1);
        let band = (TILE_FLOATS / (pw * cout)).clamp(1, oh);
        let span = k * cin;
        out.par_chunks_mut(band * ow * cout)
            .enumerate()
            .map_init(
                || vec![0f32; band * pw * cout],
                |tmp, (t, out_band)| {
                    let first_row = t * band;
                    let band_rows = out_band.len() / (ow * cout);
                    // The last row's dropped columns are not computed: they would read past the input.
                    let m = band_rows * pw - (pw - ow);
                    for ky in 0..k {
                        let lhs = Lhs {
                            x: &padded[(first_row + ky) * pw * cin..],
                            stride: cin,
                            m,
                            k: ky * span..(ky + 1) * span,
                        };
                        let start = if ky > 0 { Start::Output } else { Start::Zero };
                        self.weights.multiply(&lhs, tmp, &Epilogue { start, residual: None, relu6: false });
                    }
                    for (r, dst) in out_band.chunks_exact_mut(ow * cout).enumerate() {
                        dst.copy_from_slice(&tmp[r * pw * cout..(r * pw + ow) * cout]);
                    }
                    self.epilogue(out_band, norm)
                },
            )
            .collect()
    }

    /// Strided convolutions (the two downsampling layers, 32 channels in): tiles of a patch matrix
    /// gathered through the reflection tables, each multiplied while in cache.
    fn conv_patches(&self, x: &[f32], h: usize, w: usize, out: &mut [f32], norm: bool) -> Vec<Vec<(f64, f64)>> {
        let (_, ow) = self.output_hw(h, w);
        let (k, s, cin, cout) = (self.kernel, self.stride, self.cin, self.cout);
        let patch = k * k * cin;
        let tile = (TILE_FLOATS / patch).max(16);
        let rows = self.source_table(h);
        let cols = self.source_table(w);
        out.par_chunks_mut(tile * cout)
            .enumerate()
            .map_init(
                || vec![0f32; tile * patch],
                |patches, (t, out_tile)| {
                    let first = t * tile;
                    let count = out_tile.len() / cout;
                    for (i, dst) in patches.chunks_exact_mut(patch).take(count).enumerate() {
                        let (oy, ox) = ((first + i) / ow, (first + i) % ow);
                        for ky in 0..k {
                            let row = rows[oy * s + ky] * w;
                            for kx in 0..k {
                                let src = (row + cols[ox * s + kx]) * cin;
                                let at = (ky * k + kx) * cin;
                                dst[at..at + cin].copy_from_slice(&x[src..src + cin]);
                            }
                        }
                    }
                    let lhs = Lhs { x: &patches[..count * patch], stride: patch, m: count, k: 0..patch };
                    self.weights.multiply(
                        &lhs,
                        out_tile,
                        &Epilogue { start: Start::Zero, residual: None, relu6: false },
                    );
                    self.epilogue(out_tile, norm)
                },
            )
            .collect()
    }
}

#[inline(always)]
fn activate(v: f32, activation: Activation) -> f32 {
    match activation {
        Activation::None => v,
        Activation::Relu => v.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
    }
}

/// y = act((x - mean) / sqrt(var + eps) * gamma + beta), plus `residual` when given (written there).
fn normalise(
    x: &mut [f32],
    stats: &[(f64, f64)],
    pixels: usize,
    (gamma, beta): (&[f32], &[f32]),
    activation: Activation,
    residual: Option<&mut [f32]>,
) {
    let c = stats.len();
    let n = pixels as f64;
    let (scale, shift): (Vec<f32>, Vec<f32>) = stats
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(sum, sumsq), (&g, &b))| {
            let mean = sum / n;
            let var = (sumsq / n - mean * mean).max(0.0);
            let scale = f64::from(g) / (var + NORM_EPS).sqrt();
            (scale as f32, (f64::from(b) - mean * scale) as f32)
        })
        .unzip();
    const CHUNK: usize = 4096;
    let x = &mut x[..pixels * c];
    match residual {
        Some(res) => res[..pixels * c].par_chunks_mut(CHUNK * c).zip(x.par_chunks(CHUNK * c)).for_each(|(res, x)| {
            for (r_px, x_px) in res.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                for i in 0..c {
                    r_px[i] += activate(x_px[i] * scale[i] + shift[i], activation);
                }
            }
        }),
        None => x.par_chunks_mut(CHUNK * c).for_each(|x| {
            for px in x.chunks_exact_mut(c) {
                for i in 0..c {
                    px[i] = activate(px[i] * scale[i] + shift[i], activation);
                }
            }
        }),
    }
}

pub struct CpuNet {
    layers: Vec<CpuLayer>,
    contract: usize,
    blocks: usize,
}

fn ensure(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

impl CpuNet {
    pub fn new(net: &StyleNet) -> candle_core::Result<Self> {
        let layers = net.layers.iter().map(CpuLayer::new).collect::<candle_core::Result<_>>()?;
        Ok(CpuNet { layers, contract: net.contract, blocks: net.residual_blocks })
    }

    /// One layer from `x` (h, w, cin) into `out`; with `residual`, the result is added there instead.
    fn layer(
        &self,
        i: usize,
        norms: &Norms,
        x: &[f32],
        (h, w): (usize, usize),
        out: &mut Vec<f32>,
        residual: Option<&mut [f32]>,
    ) -> (usize, usize) {
        let layer = &self.layers[i];
        let (oh, ow) = layer.output_hw(h, w);
        ensure(out, oh * ow * layer.cout);
        let norm = norms[i].as_ref();
        let stats = layer.conv(x, h, w, out, norm.is_some());
        if let (Some(stats), Some((gamma, beta))) = (stats, norm) {
            normalise(out, &stats, oh * ow, (gamma, beta), layer.activation, residual);
        } else if let Some(res) = residual {
            res[..oh * ow * layer.cout].iter_mut().zip(out.iter()).for_each(|(r, v)| *r += v);
        }
        (oh, ow)
    }

    /// x: (h, w, 3) NHWC in the network's pixel scale; returns (h, w, 3).
    pub fn forward(&self, x: &[f32], h: usize, w: usize, norms: &Norms) -> Vec<f32> {
        let (mut a, mut b, mut t) = (Vec::new(), Vec::new(), Vec::new());
        let mut hw = self.layer(0, norms, x, (h, w), &mut a, None);
        for i in 1..self.contract {
            hw = self.layer(i, norms, &a, hw, &mut b, None);
            std::mem::swap(&mut a, &mut b);
        }
        for r in 0..self.blocks {
            let first = self.contract + 2 * r;
            let inner = self.layer(first, norms, &a, hw, &mut b, None);
            let c = self.layers[first + 1].cout;
            ensure(&mut t, inner.0 * inner.1 * c);
            // The block's input (in `a`) takes the second convolution's normalised output in place.
            self.layer(first + 1, norms, &b, inner, &mut t, Some(&mut a[..hw.0 * hw.1 * c]));
        }
        for i in self.contract + 2 * self.blocks..self.layers.len() {
            hw = self.layer(i, norms, &a, hw, &mut b, None);
            std::mem::swap(&mut a, &mut b);
        }
        a.truncate(hw.0 * hw.1 * 3);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Style;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    /// The CPU path against candle's ops on the bundled multistyle26, at a size whose padding
    /// reflects across tile edges, and with a mix of styles.
    #[test]
    fn cpu_path_matches_candle_ops() {
        let bytes = zoo_runtime::bundled::file("multistyle26/multistyle26.safetensors").unwrap();
        let vb = VarBuilder::from_slice_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
        let net = StyleNet::multistyle(&vb).unwrap();
        let mut weights = vec![0f32; 26];
        weights[4] = 0.25;
        weights[11] = 0.75;
        let norms = net.norms(&Style::Mix(weights)).unwrap();
        // A fixed pseudo-random picture, so that a failure reproduces on the next run.
        let pixels: Vec<f32> =
            (0..3 * 44 * 72u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0).collect();
        let x = Tensor::from_vec(pixels, (1, 3, 44, 72), &Device::Cpu).unwrap();
        let reference = net.forward(&x, &norms).unwrap();
        let fast = net.run(&x, &norms).unwrap();
        let diff: Vec<f32> = (reference - fast).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let max = diff.iter().copied().fold(0f32, f32::max);
        let mean = diff.iter().sum::<f32>() / diff.len() as f32;
        // Sixteen layers summed in another order drift by up to ~5e-4 at a few pixels, by CPU and
        // input; the output is a sigmoid in 0..1, so half an 8-bit level is the bar that matters
        // for the saved picture, and the mean catches a kernel that is slightly wrong everywhere.
        assert!(max < 0.5 / 255.0 && mean < 1e-4, "max diff {max}, mean {mean}");
    }
}
