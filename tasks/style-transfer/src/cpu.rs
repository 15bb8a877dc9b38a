//! The style networks on the CPU over plain NHWC buffers. candle's path pads, upsamples, normalises
//! and activates in separate full passes over memory (each with a round of thread synchronisation)
//! and builds a full patch matrix for every convolution (a 9x9 one over a 2048x2048 picture would
//! be 4 GB). Here a convolution multiplies each output row by weights packed once, reading its
//! input rows in place (reflection at the top and bottom is a choice of rows, at the left and right
//! a few gathered patches), so nothing is padded or copied; the instance-norm sums are taken while
//! each band of rows is still in cache, and one more pass normalises, activates and adds the
//! residual. A run's buffers are kept for the next run.

use std::sync::Mutex;

use rayon::prelude::*;

use zoo_runtime::cpu::packed::{Epilogue, Lhs, PackedMatrix, Start, ONE_TAP};
use zoo_runtime::cpu::{ensure, LANES};

use crate::layers::{reflect_index, NORM_EPS};
use crate::network::{Activation, ConvLayer, Norms, StyleNet};

/// Patch-matrix floats per tile: 64k floats (256 kB) keeps a tile in L2.
const TILE_FLOATS: usize = 64 * 1024;
/// Layers with at most this many outputs take [`CpuLayer::conv_narrow`] (measured on
/// multistyle26: 8 outputs are 1.6x faster through the row products, 4 are 1.7x slower).
const NARROW: usize = 4;
/// What the tiles of one [`CpuLayer::conv_narrow`] share: the planar padded input and the taps.
struct NarrowTile<'a> {
    planes: &'a [f32],
    plane_w: usize,
    ph: usize,
    k: usize,
    cin: usize,
    weights: &'a [f32],
}

impl NarrowTile<'_> {
    /// Outputs `first..first + NARROW_PIXELS` of row `oy`, each of the C channels.
    fn compute<const C: usize>(&self, oy: usize, first: usize) -> [[f32; NARROW_PIXELS]; C] {
        let k = self.k;
        assert!((self.cin * self.ph - 1) * self.plane_w + first + NARROW_PIXELS + k - 1 <= self.planes.len());
        assert!(oy + k <= self.ph && self.weights.len() >= self.cin * k * k * C);
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
        // SAFETY: AVX-512F is compiled in; the asserts bound every row and tap read.
        unsafe {
            use std::arch::x86_64::*;
            let mut acc = [[_mm512_setzero_ps(); 2]; C];
            for ci in 0..self.cin {
                for ky in 0..k {
                    let row = self.planes.as_ptr().add((ci * self.ph + oy + ky) * self.plane_w + first);
                    let taps = self.weights.as_ptr().add((ci * k + ky) * k * C);
                    for kx in 0..k {
                        let (lo, hi) = (_mm512_loadu_ps(row.add(kx)), _mm512_loadu_ps(row.add(kx + LANES)));
                        for (c, acc) in acc.iter_mut().enumerate() {
                            let wt = _mm512_set1_ps(*taps.add(kx * C + c));
                            acc[0] = _mm512_fmadd_ps(wt, lo, acc[0]);
                            acc[1] = _mm512_fmadd_ps(wt, hi, acc[1]);
                        }
                    }
                }
            }
            let mut out = [[0f32; NARROW_PIXELS]; C];
            for (o, a) in out.iter_mut().zip(acc) {
                _mm512_storeu_ps(o.as_mut_ptr(), a[0]);
                _mm512_storeu_ps(o.as_mut_ptr().add(LANES), a[1]);
            }
            return out;
        }
        #[allow(unreachable_code)]
        self.compute_portable(oy, first)
    }

    /// [`NarrowTile::compute`] in plain Rust, for builds without AVX-512.
    fn compute_portable<const C: usize>(&self, oy: usize, first: usize) -> [[f32; NARROW_PIXELS]; C] {
        let k = self.k;
        {
            let mut acc = [[0f32; NARROW_PIXELS]; C];
            for ci in 0..self.cin {
                for ky in 0..k {
                    let row = &self.planes[(ci * self.ph + oy + ky) * self.plane_w + first..][..NARROW_PIXELS + k - 1];
                    for kx in 0..k {
                        let tap = &self.weights[((ci * k + ky) * k + kx) * C..][..C];
                        for (acc, &wt) in acc.iter_mut().zip(tap) {
                            for (a, &x) in acc.iter_mut().zip(&row[kx..kx + NARROW_PIXELS]) {
                                *a = wt.mul_add(x, *a);
                            }
                        }
                    }
                }
            }
            acc
        }
    }
}

/// Output pixels per tile of [`CpuLayer::conv_narrow`]: two vectors.
const NARROW_PIXELS: usize = 2 * LANES;

pub struct CpuLayer {
    /// (k*k*in, out): row (ky*k + kx)*in + ci, packed once for every product.
    weights: PackedMatrix,
    /// For layers with at most NARROW outputs: (in, k, k, out), the outputs of each tap together.
    narrow: Option<Vec<f32>>,
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
        let narrow = (cout <= NARROW && layer.stride == 1)
            .then(|| -> candle_core::Result<Vec<f32>> { layer.weight.permute((1, 2, 3, 0))?.flatten_all()?.to_vec1() })
            .transpose()?;
        let bias = match &layer.bias {
            Some(b) => b.to_vec1()?,
            None => vec![0.0; cout],
        };
        Ok(CpuLayer {
            weights,
            narrow,
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
    /// `staging` holds what a layer makes of its input first (upsampled, or planar), kept
    /// between layers and runs.
    fn conv(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        out: &mut [f32],
        norm: bool,
        staging: &mut Vec<f32>,
    ) -> Option<Vec<(f64, f64)>> {
        let (oh, ow) = self.output_hw(h, w);
        let out = &mut out[..oh * ow * self.cout];
        let partial: Vec<Vec<(f64, f64)>> = if let Some(weights) = &self.narrow {
            match self.cout {
                1 => self.conv_narrow::<1>(weights, x, h, w, out, norm, staging),
                2 => self.conv_narrow::<2>(weights, x, h, w, out, norm, staging),
                3 => self.conv_narrow::<3>(weights, x, h, w, out, norm, staging),
                _ => self.conv_narrow::<NARROW>(weights, x, h, w, out, norm, staging),
            }
        } else {
            self.conv_rows(x, h, w, out, norm, staging)
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
            // Summed over whole registers of pixels (see normalise_with), then folded per channel.
            let (c, period) = (self.cout, self.cout * LANES);
            let (mut sums, mut squares) = (vec![0f32; period], vec![0f32; period]);
            for block in out_tile.chunks(period) {
                for ((s, q), &v) in sums.iter_mut().zip(squares.iter_mut()).zip(block) {
                    *s += v;
                    *q += v * v;
                }
            }
            let mut total = vec![(0f64, 0f64); c];
            for (i, (s, q)) in sums.into_iter().zip(squares).enumerate() {
                total[i % c].0 += f64::from(s);
                total[i % c].1 += f64::from(q);
            }
            return total;
        }
        for px in out_tile.chunks_exact_mut(self.cout) {
            for (v, b) in px.iter_mut().zip(&self.bias) {
                *v = activate(*v + b, self.activation);
            }
        }
        Vec::new()
    }

    /// Without a patch matrix or a padded copy: for the outputs whose windows lie inside the
    /// input, the inputs of kernel row ky for consecutive outputs of a row are consecutive
    /// windows of k * cin floats, stride * cin apart, in the input row that ky reads (reflected
    /// at the top and bottom), so the product reads them in place, one tap per kernel row, with
    /// the accumulators in registers over the whole kernel and each output row written once
    /// where it belongs. The few outputs at the left and right edges, whose windows reflect,
    /// are gathered into a small patch matrix. An upsampled layer's input is upsampled first.
    fn conv_rows(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        norm: bool,
        staging: &mut Vec<f32>,
    ) -> Vec<Vec<(f64, f64)>> {
        let (oh, ow) = self.output_hw(h, w);
        let (x, h, w) = if self.upsample {
            ensure(staging, 4 * h * w * self.cin);
            upsample2_nhwc(x, h, w, self.cin, staging);
            (&staging[..4 * h * w * self.cin], 2 * h, 2 * w)
        } else {
            (x, h, w)
        };
        let (k, s, cin, cout) = (self.kernel, self.stride, self.cin, self.cout);
        let (p, depth) = (k / 2, k * k * cin);
        // Outputs first..last read columns first * s - p.. last * s - p + k - 1 of the input.
        let first = p.div_ceil(s).min(ow);
        let last = if w + p >= k { ((w + p - k) / s + 1).clamp(first, ow) } else { first };
        let edges: Vec<usize> = (0..first).chain(last..ow).collect();
        // Each edge output's k input columns, reflected: the same on every row.
        let edge_cols: Vec<usize> = edges
            .iter()
            .flat_map(|&ox| (0..k).map(move |kx| reflect_index((ox * s + kx) as isize - p as isize, w)))
            .collect();
        let band = (TILE_FLOATS / (ow * cout)).clamp(1, oh);
        let sums = Epilogue { start: Start::Zero, residual: None, activation: zoo_runtime::cpu::Activation::Identity };
        out.par_chunks_mut(band * ow * cout)
            .enumerate()
            .map_init(
                || (vec![0usize; k], vec![0f32; edges.len() * depth], vec![0f32; edges.len() * cout]),
                |(taps, patches, edge_out), (b, out_band)| {
                    for (r, out_row) in out_band.chunks_exact_mut(ow * cout).enumerate() {
                        let oy = b * band + r;
                        for (ky, tap) in taps.iter_mut().enumerate() {
                            *tap = reflect_index((oy * s + ky) as isize - p as isize, h) * w * cin;
                        }
                        if last > first {
                            let lhs = Lhs {
                                x: &x[(first * s - p) * cin..],
                                stride: s * cin,
                                m: last - first,
                                k: 0..k * cin,
                                taps,
                            };
                            self.weights.multiply(&lhs, &mut out_row[first * cout..last * cout], &sums);
                        }
                        if edges.is_empty() {
                            continue;
                        }
                        for (patch, cols) in patches.chunks_exact_mut(depth).zip(edge_cols.chunks_exact(k)) {
                            for (ky, &row) in taps.iter().enumerate() {
                                for (kx, &col) in cols.iter().enumerate() {
                                    patch[(ky * k + kx) * cin..][..cin].copy_from_slice(&x[row + col * cin..][..cin]);
                                }
                            }
                        }
                        let lhs = Lhs { x: patches, stride: depth, m: edges.len(), k: 0..depth, taps: ONE_TAP };
                        self.weights.multiply(&lhs, edge_out, &sums);
                        for (got, &ox) in edge_out.chunks_exact(cout).zip(&edges) {
                            out_row[ox * cout..][..cout].copy_from_slice(got);
                        }
                    }
                    self.epilogue(out_band, norm)
                },
            )
            .collect()
    }

    /// Stride 1 with few outputs (the last layers, 8, 4 and 3 channels): a matrix product would
    /// fill 16-lane registers with those few channels. Here the lanes hold 16 neighbouring
    /// pixels instead, read from a planar copy of the padded input (each plane's rows widened
    /// with zeros to whole tiles), and each channel's weight is broadcast; the channels of a tile
    /// of NARROW_PIXELS pixels are C rows of accumulators, two AVX-512 registers each (plain
    /// loops elsewhere).
    #[allow(clippy::too_many_arguments)]
    fn conv_narrow<const C: usize>(
        &self,
        weights: &[f32],
        x: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        norm: bool,
        staging: &mut Vec<f32>,
    ) -> Vec<Vec<(f64, f64)>> {
        let (oh, ow) = self.output_hw(h, w);
        let (k, cin) = (self.kernel, self.cin);
        let cout = self.cout;
        assert!(cout <= C && weights.len() == cin * k * k * C);
        let (rows, cols) = (self.source_table(h), self.source_table(w));
        let ph = rows.len();
        let tiles = ow.div_ceil(NARROW_PIXELS);
        let plane_w = tiles * NARROW_PIXELS + k - 1;
        ensure(staging, cin * ph * plane_w);
        let planes = &mut staging[..cin * ph * plane_w];
        planes.par_chunks_mut(plane_w).enumerate().for_each(|(i, dst)| {
            let (ci, r) = (i / ph, i % ph);
            let src = rows[r] * w;
            for (d, &col) in dst.iter_mut().zip(&cols) {
                *d = x[(src + col) * cin + ci];
            }
            // The widening feeds only outputs that are dropped; zeros keep them finite.
            dst[cols.len()..].fill(0.0);
        });
        let band = (TILE_FLOATS / (ow * cout)).clamp(1, oh);
        out.par_chunks_mut(band * ow * cout)
            .enumerate()
            .map(|(b, out_band)| {
                for (r, out_row) in out_band.chunks_exact_mut(ow * cout).enumerate() {
                    let oy = b * band + r;
                    for t in 0..tiles {
                        let tile = NarrowTile { planes, plane_w, ph, k, cin, weights };
                        let acc = tile.compute::<C>(oy, t * NARROW_PIXELS);
                        let first = t * NARROW_PIXELS;
                        for p in 0..NARROW_PIXELS.min(ow - first) {
                            for (c, acc) in acc.iter().enumerate().take(cout) {
                                out_row[(first + p) * cout + c] = acc[p];
                            }
                        }
                    }
                }
                self.epilogue(out_band, norm)
            })
            .collect()
    }
}

/// Nearest-neighbour 2x upsampling of an NHWC image of `c` channels into `up`.
fn upsample2_nhwc(x: &[f32], h: usize, w: usize, c: usize, up: &mut [f32]) {
    up[..4 * h * w * c].par_chunks_mut(2 * w * c).enumerate().for_each(|(row, dst)| {
        let src = &x[row / 2 * w * c..][..w * c];
        for (pair, px) in dst.chunks_exact_mut(2 * c).zip(src.chunks_exact(c)) {
            pair[..c].copy_from_slice(px);
            pair[c..].copy_from_slice(px);
        }
    });
}

#[inline(always)]
fn activate(v: f32, activation: Activation) -> f32 {
    match activation {
        Activation::None => v,
        Activation::Relu => v.max(0.0),
        // zoo-runtime's exp, not libm's: it vectorises.
        Activation::Sigmoid => 1.0 / (1.0 + zoo_runtime::cpu::exp(-v)),
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
    let x = &mut x[..pixels * c];
    let residual = residual.map(|res| &mut res[..pixels * c]);
    match activation {
        Activation::None => normalise_with(x, (&scale, &shift), residual, |v| v),
        Activation::Relu => normalise_with(x, (&scale, &shift), residual, |v| v.max(0.0)),
        Activation::Sigmoid => normalise_with(x, (&scale, &shift), residual, |v| activate(v, Activation::Sigmoid)),
    }
}

/// [`normalise`] with its activation known when compiled, so that the loops vectorise. They run
/// over whole registers of pixels at once (LANES pixels' channels, the scales and shifts
/// repeated to match) rather than pixel by pixel: three channels, the last layer's, would
/// otherwise leave each vector mostly empty.
fn normalise_with(
    x: &mut [f32],
    (scale, shift): (&[f32], &[f32]),
    residual: Option<&mut [f32]>,
    activate: impl Fn(f32) -> f32 + Sync,
) {
    const CHUNK: usize = 4096;
    let c = scale.len();
    let period = c * LANES;
    let scale: Vec<f32> = scale.iter().copied().cycle().take(period).collect();
    let shift: Vec<f32> = shift.iter().copied().cycle().take(period).collect();
    let (scale, shift) = (scale.as_slice(), shift.as_slice());
    match residual {
        Some(res) => res.par_chunks_mut(CHUNK * c).zip(x.par_chunks(CHUNK * c)).for_each(|(res, x)| {
            for (res, x) in res.chunks_mut(period).zip(x.chunks(period)) {
                for (((r, &v), &a), &b) in res.iter_mut().zip(x).zip(scale).zip(shift) {
                    *r += activate(v * a + b);
                }
            }
        }),
        None => x.par_chunks_mut(CHUNK * c).for_each(|x| {
            for x in x.chunks_mut(period) {
                for ((v, &a), &b) in x.iter_mut().zip(scale).zip(shift) {
                    *v = activate(*v * a + b);
                }
            }
        }),
    }
}

/// A run's buffers: two for the layers' inputs and outputs in turn, one for the residual
/// blocks' inner maps, one for what a layer stages from its input.
type Buffers = [Vec<f32>; 4];

/// Runs keep their buffers for the next one up to this many floats in all (1 GiB, about what
/// multistyle26 takes at 2048x2048), so that a folder of pictures reuses memory rather than
/// faulting in fresh pages for each (measured: the faults and zeroing cost a third of the run
/// at 512x512 and at 2048x2048); a larger picture's buffers go back to the system.
const KEPT_FLOATS: usize = 256 << 20;

pub struct CpuNet {
    layers: Vec<CpuLayer>,
    contract: usize,
    blocks: usize,
    /// The buffers of finished runs, one set per run that was in flight at once.
    kept: Mutex<Vec<Buffers>>,
}

impl CpuNet {
    pub fn new(net: &StyleNet) -> candle_core::Result<Self> {
        let layers = net.layers.iter().map(CpuLayer::new).collect::<candle_core::Result<_>>()?;
        Ok(CpuNet { layers, contract: net.contract, blocks: net.residual_blocks, kept: Mutex::new(Vec::new()) })
    }

    /// One layer from `x` (h, w, cin) into `out`; with `residual`, the result is added there instead.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        i: usize,
        norms: &Norms,
        x: &[f32],
        (h, w): (usize, usize),
        out: &mut Vec<f32>,
        residual: Option<&mut [f32]>,
        staging: &mut Vec<f32>,
    ) -> (usize, usize) {
        let layer = &self.layers[i];
        let (oh, ow) = layer.output_hw(h, w);
        ensure(out, oh * ow * layer.cout);
        let norm = norms[i].as_ref();
        let stats = layer.conv(x, (h, w), out, norm.is_some(), staging);
        if let (Some(stats), Some((gamma, beta))) = (stats, norm) {
            normalise(out, &stats, oh * ow, (gamma, beta), layer.activation, residual);
        } else if let Some(res) = residual {
            res[..oh * ow * layer.cout].iter_mut().zip(out.iter()).for_each(|(r, v)| *r += v);
        }
        (oh, ow)
    }

    /// x: (h, w, 3) NHWC in the network's pixel scale; returns (h, w, 3).
    pub fn forward(&self, x: &[f32], h: usize, w: usize, norms: &Norms) -> Vec<f32> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let [mut a, mut b, mut t, mut staging] = kept.unwrap_or_default();
        // The first layer's output, in `a`, is the largest map; a run ends with `a` and `b` the
        // other way round when it has an odd number of layers outside the residual blocks.
        if a.len() < b.len() {
            std::mem::swap(&mut a, &mut b);
        }
        let mut hw = self.layer(0, norms, x, (h, w), &mut a, None, &mut staging);
        for i in 1..self.contract {
            hw = self.layer(i, norms, &a, hw, &mut b, None, &mut staging);
            std::mem::swap(&mut a, &mut b);
        }
        for r in 0..self.blocks {
            let first = self.contract + 2 * r;
            let inner = self.layer(first, norms, &a, hw, &mut b, None, &mut staging);
            let c = self.layers[first + 1].cout;
            ensure(&mut t, inner.0 * inner.1 * c);
            // The block's input (in `a`) takes the second convolution's normalised output in place.
            self.layer(first + 1, norms, &b, inner, &mut t, Some(&mut a[..hw.0 * hw.1 * c]), &mut staging);
        }
        for i in self.contract + 2 * self.blocks..self.layers.len() {
            hw = self.layer(i, norms, &a, hw, &mut b, None, &mut staging);
            std::mem::swap(&mut a, &mut b);
        }
        let image = a[..hw.0 * hw.1 * 3].to_vec();
        let buffers = [a, b, t, staging];
        if buffers.iter().map(Vec::len).sum::<usize>() <= KEPT_FLOATS {
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).push(buffers);
        }
        image
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Style;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    /// The narrow-output convolution against the matrix-product one on odd shapes: each output
    /// count it takes, widths short of and past a tile, upsampled or not, with the norm's sums
    /// and with bias and activation.
    #[test]
    fn narrow_convolutions_match_the_product_path() {
        let dev = Device::Cpu;
        let numbers = zoo_runtime::test_support::pseudo_random;
        for (cout, cin, k, upsample, h, w) in [
            (1, 2, 3, false, 5, 7),
            (3, 4, 9, false, 11, 40),
            (4, 8, 3, true, 6, 17),
            (4, 32, 3, true, 9, 33),
            (2, 3, 5, false, 4, 1),
        ] {
            let seed = (cout * 100 + cin) as u32;
            let weight = Tensor::from_vec(numbers(cout * cin * k * k, seed), (cout, cin, k, k), &dev).unwrap();
            let bias = Tensor::from_vec(numbers(cout, seed + 1), cout, &dev).unwrap();
            let conv =
                ConvLayer { weight, bias: Some(bias), stride: 1, upsample, norm: None, activation: Activation::Relu };
            let layer = CpuLayer::new(&conv).unwrap();
            let mut product = CpuLayer::new(&conv).unwrap();
            product.narrow = None;
            let x = numbers(h * w * cin, seed + 2);
            let (oh, ow) = layer.output_hw(h, w);
            for norm in [false, true] {
                let (mut got, mut want) = (vec![0f32; oh * ow * cout], vec![0f32; oh * ow * cout]);
                let got_stats = layer.conv(&x, (h, w), &mut got, norm, &mut Vec::new());
                let want_stats = product.conv(&x, (h, w), &mut want, norm, &mut Vec::new());
                let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-4, "{cin}->{cout} k{k} {h}x{w} upsample {upsample} norm {norm}: max diff {diff}");
                for ((a, b), (c, d)) in got_stats.unwrap_or_default().iter().zip(want_stats.unwrap_or_default()) {
                    // Summed in f32 per band, and the bands differ: relative agreement.
                    let close = |u: f64, v: f64| (u - v).abs() <= 1e-4 * (1.0 + v.abs());
                    assert!(close(*a, c) && close(*b, d), "{cin}->{cout}: norm sums {a}, {b} vs {c}, {d}");
                }
            }
        }
    }

    /// The in-place row products against candle's pad, upsample and convolution, one layer at a
    /// time, on shapes that reach every edge case: strides 1 and 2 on odd sides, a kernel wider
    /// than the picture (every output an edge), a width of 1, channels off the register width,
    /// upsampled or not.
    #[test]
    fn row_products_match_candle_on_odd_shapes() {
        use crate::layers::{reflect_pad, upsample2};
        let dev = Device::Cpu;
        let numbers = zoo_runtime::test_support::pseudo_random;
        for (cin, cout, k, stride, upsample, h, w) in [
            (3, 32, 9, 1, false, 13, 21),
            (32, 32, 3, 2, false, 9, 15),
            (5, 17, 3, 2, false, 6, 1),
            (4, 40, 9, 1, false, 5, 3),
            (16, 24, 3, 1, true, 5, 7),
            (7, 9, 5, 2, true, 3, 4),
            (2, 3, 3, 1, false, 1, 1),
        ] {
            let seed = (cin * 1000 + cout * 10 + k) as u32;
            let weight = Tensor::from_vec(numbers(cout * cin * k * k, seed), (cout, cin, k, k), &dev).unwrap();
            let bias = Tensor::from_vec(numbers(cout, seed + 1), cout, &dev).unwrap();
            let conv = ConvLayer {
                weight: weight.clone(),
                bias: Some(bias.clone()),
                stride,
                upsample,
                norm: None,
                activation: Activation::None,
            };
            let mut layer = CpuLayer::new(&conv).unwrap();
            layer.narrow = None;
            let x = numbers(h * w * cin, seed + 2);
            let (oh, ow) = layer.output_hw(h, w);
            let mut got = vec![f32::NAN; oh * ow * cout];
            layer.conv(&x, (h, w), &mut got, false, &mut vec![f32::NAN; 7]);

            let image =
                Tensor::from_vec(x, (1, h, w, cin), &dev).unwrap().permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
            let image = if upsample { upsample2(&image).unwrap() } else { image };
            let p = k / 2;
            let want = reflect_pad(&image, p, p, p, p)
                .unwrap()
                .conv2d(&weight, 0, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(want.len(), got.len(), "{cin}->{cout} k{k} s{stride}: output size");
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "{cin}->{cout} k{k} stride {stride} upsample {upsample} {h}x{w}: max diff {diff}");
        }
    }

    /// The narrow kernel's AVX-512 tile (where the build has it) and its portable one agree,
    /// for every channel count it is built for and both kernel sizes.
    #[test]
    fn narrow_tile_paths_agree() {
        let numbers = zoo_runtime::test_support::pseudo_random;
        fn both<const C: usize>(tile: &NarrowTile, oy: usize, first: usize) -> f32 {
            let (fast, portable) = (tile.compute::<C>(oy, first), tile.compute_portable::<C>(oy, first));
            fast.iter().flatten().zip(portable.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
        }
        for (k, cin) in [(3, 5), (9, 4)] {
            let (ph, plane_w) = (k + 2, 2 * NARROW_PIXELS + k - 1);
            let planes = numbers(cin * ph * plane_w, k as u32);
            let weights = numbers(cin * k * k * NARROW, 5);
            let tile = NarrowTile { planes: &planes, plane_w, ph, k, cin, weights: &weights };
            for (oy, first) in [(0, 0), (2, NARROW_PIXELS)] {
                let diffs = [both::<1>(&tile, oy, first), both::<3>(&tile, oy, first), both::<4>(&tile, oy, first)];
                assert!(diffs.iter().all(|d| *d < 1e-5), "k{k}: {diffs:?}");
            }
        }
    }

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
