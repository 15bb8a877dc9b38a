//! CPU kernels for MobileNet-style networks (EfficientNet-Lite, MobileNetV2) in NHWC with
//! TensorFlow "same" padding: the depthwise and stem convolutions (bias and ReLU6 fused in), 1x1
//! convolutions as one matrix product each with the bias, the residual and ReLU6 fused around it,
//! and [`MobileNet`], which runs a stem, inverted-residual blocks and a head over three reused
//! buffers. Work is split across output rows with rayon; inner loops run over contiguous channels
//! so the compiler vectorises them.

use std::sync::Mutex;

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// (before, after) padding so that the output has ceil(size / stride) elements; TensorFlow puts
/// the odd pixel after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// A spatial convolution laid out for [`ConvWeights::run`]: depthwise (k, k, C) or dense
/// (k, k, C_in, C_out).
pub struct ConvWeights {
    weights: Vec<f32>,
    bias: Vec<f32>,
    pub kernel: usize,
    pub stride: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    depthwise: bool,
    relu6: bool,
}

impl ConvWeights {
    /// `weight`: (out, in/groups, k, k) as PyTorch stores it; `bias`: (out).
    pub fn new(weight: &Tensor, bias: &Tensor, stride: usize, depthwise: bool, relu6: bool) -> Result<Self> {
        let (out_ch, in_per_group, kernel, _) = weight.dims4()?;
        if kernel > 7 {
            candle_core::bail!("{kernel}x{kernel} convolutions are not supported (at most 7x7)")
        }
        let weights = if depthwise { weight.squeeze(1)?.permute((1, 2, 0))? } else { weight.permute((2, 3, 1, 0))? };
        Ok(ConvWeights {
            weights: weights.flatten_all()?.to_vec1()?,
            bias: bias.to_vec1()?,
            kernel,
            stride,
            in_ch: if depthwise { out_ch } else { in_per_group },
            out_ch,
            depthwise,
            relu6,
        })
    }

    pub fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (h.div_ceil(self.stride), w.div_ceil(self.stride))
    }

    /// x: (batch, h, w, in_ch); out: (batch, ceil(h/s), ceil(w/s), out_ch).
    pub fn run(&self, x: &[f32], batch: usize, h: usize, w: usize, out: &mut [f32]) {
        self.run_fused(x, None, batch, h, w, out)
    }

    /// As [`ConvWeights::run`], for a depthwise convolution whose input still lacks the previous
    /// layer's bias and ReLU6 (`input_bias`): they are applied as each input value is loaded, which
    /// saves a pass over the widest tensors of the network.
    pub fn run_fused(&self, x: &[f32], input_bias: Option<&[f32]>, batch: usize, h: usize, w: usize, out: &mut [f32]) {
        assert!(input_bias.is_none() || self.depthwise, "only depthwise convolutions take a pending input bias");
        let (k, s, c, cout) = (self.kernel, self.stride, self.in_ch, self.out_ch);
        let (oh, ow) = self.output_hw(h, w);
        let (pad_top, _) = same_padding(h, k, s);
        let (pad_left, _) = same_padding(w, k, s);
        debug_assert_eq!(x.len(), batch * h * w * c);
        // Offsets of the k x k taps from the top-left one, for pixels whose window lies inside
        // the image (most of them), which then need no bounds checks per tap.
        let relative: Vec<usize> = (0..k * k).map(|t| ((t / k) * w + t % k) * c).collect();
        // Output columns whose window lies inside the image horizontally.
        let first_inside = pad_left.div_ceil(s).min(ow);
        let last_inside = if w >= k { ((w - k + pad_left) / s + 1).min(ow) } else { 0 };
        out[..batch * oh * ow * cout].par_chunks_mut(ow * cout).enumerate().for_each(|(row, out_row)| {
            let (b, oy) = (row / oh, row % oh);
            let top = (oy * s).checked_sub(pad_top).filter(|&iy| iy + k <= h);
            // The taps inside the image of every pixel of this row, found once and reused for
            // every channel block.
            let mut taps: Vec<(usize, usize)> = Vec::with_capacity(ow * k * k);
            let mut pixels: Vec<Pixels> = Vec::with_capacity(ow);
            let mut ox = 0;
            while ox < ow {
                if let (true, Some(iy)) = (self.depthwise && ox >= first_inside && ox + PIXELS <= last_inside, top) {
                    let bases = std::array::from_fn(|p| ((b * h + iy) * w + (ox + p) * s - pad_left) * c);
                    pixels.push(Pixels::Inside { ox, bases });
                    ox += PIXELS;
                    continue;
                }
                let start = taps.len();
                for ky in 0..k {
                    let Some(iy) = (oy * s + ky).checked_sub(pad_top).filter(|&iy| iy < h) else { continue };
                    for kx in 0..k {
                        if let Some(ix) = (ox * s + kx).checked_sub(pad_left).filter(|&ix| ix < w) {
                            taps.push((ky * k + kx, ((b * h + iy) * w + ix) * c));
                        }
                    }
                }
                pixels.push(Pixels::Edge { ox, taps: start..taps.len() });
                ox += 1;
            }
            if !self.depthwise {
                for p in &pixels {
                    if let Pixels::Edge { ox, taps: range } = p {
                        self.dense_pixel(x, &taps[range.clone()], &mut out_row[ox * cout..(ox + 1) * cout]);
                    }
                }
                return;
            }
            // Channel blocks outermost: a block's slice of the k input rows (k x w x 64 bytes)
            // stays in L1 while the row's pixels, whose windows overlap, are computed.
            let ib = input_bias.unwrap_or(&[]);
            for ch in (0..c / LANES).map(|blk| blk * LANES) {
                for p in &pixels {
                    match (p, input_bias.is_some()) {
                        (Pixels::Inside { ox, bases }, true) => {
                            self.depthwise_block::<true>(x, ib, &relative, *bases, ch, &mut out_row[ox * c..])
                        }
                        (Pixels::Inside { ox, bases }, false) => {
                            self.depthwise_block::<false>(x, ib, &relative, *bases, ch, &mut out_row[ox * c..])
                        }
                        (Pixels::Edge { ox, taps: range }, true) => {
                            self.depthwise_lanes::<true>(x, ib, &taps[range.clone()], ch, &mut out_row[ox * c..])
                        }
                        (Pixels::Edge { ox, taps: range }, false) => {
                            self.depthwise_lanes::<false>(x, ib, &taps[range.clone()], ch, &mut out_row[ox * c..])
                        }
                    }
                }
            }
            if c % LANES != 0 {
                // The last few channels, one at a time, with every pixel's taps listed.
                for ox in 0..ow {
                    let mut list = Vec::with_capacity(k * k);
                    for ky in 0..k {
                        let Some(iy) = (oy * s + ky).checked_sub(pad_top).filter(|&iy| iy < h) else { continue };
                        for kx in 0..k {
                            if let Some(ix) = (ox * s + kx).checked_sub(pad_left).filter(|&ix| ix < w) {
                                list.push((ky * k + kx, ((b * h + iy) * w + ix) * c));
                            }
                        }
                    }
                    self.depthwise_rest(x, ib, &list, &mut out_row[ox * c..(ox + 1) * c]);
                }
            }
        });
    }

    /// Channels `ch..ch + LANES` of PIXELS neighbouring output pixels whose windows are inside the
    /// image, starting at input offsets `bases`; `out` starts at the first pixel's channels.
    /// Four accumulator chains hide the FMA latency, and each weight is loaded once for four.
    #[inline(always)]
    fn depthwise_block<const PENDING: bool>(
        &self,
        x: &[f32],
        in_bias: &[f32],
        relative: &[usize],
        bases: [usize; PIXELS],
        ch: usize,
        out: &mut [f32],
    ) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
        {
            let c = self.in_ch;
            // Every address the block reads, checked once so the loads below can be unchecked.
            let last = bases[PIXELS - 1] + relative.last().copied().unwrap_or(0) + ch + LANES;
            assert!(
                last <= x.len()
                    && self.weights.len() >= relative.len() * c
                    && out.len() >= (PIXELS - 1) * c + ch + LANES
            );
            assert!(!PENDING || in_bias.len() >= ch + LANES);
            // SAFETY: avx512f is enabled at compile time; the asserts above bound every offset.
            unsafe { self.depthwise_block_avx512::<PENDING>(x, in_bias, relative, bases, ch, out) };
            return;
        }
        #[allow(unreachable_code)]
        self.depthwise_block_portable::<PENDING>(x, in_bias, relative, bases, ch, out)
    }

    /// [`ConvWeights::depthwise_block`] in plain Rust, for builds without AVX-512.
    #[inline(always)]
    fn depthwise_block_portable<const PENDING: bool>(
        &self,
        x: &[f32],
        in_bias: &[f32],
        relative: &[usize],
        bases: [usize; PIXELS],
        ch: usize,
        out: &mut [f32],
    ) {
        let c = self.in_ch;
        let load = |v: f32, b: f32| if PENDING { (v + b).clamp(0.0, 6.0) } else { v };
        let bias: [f32; LANES] = self.bias[ch..ch + LANES].try_into().unwrap();
        let mut acc = [bias; PIXELS];
        let ib: [f32; LANES] = if PENDING { in_bias[ch..ch + LANES].try_into().unwrap() } else { [0.0; LANES] };
        for (tap, rel) in relative.iter().enumerate() {
            let wt: &[f32; LANES] = self.weights[tap * c + ch..][..LANES].try_into().unwrap();
            for p in 0..PIXELS {
                let px: &[f32; LANES] = x[bases[p] + rel + ch..][..LANES].try_into().unwrap();
                for l in 0..LANES {
                    acc[p][l] = wt[l].mul_add(load(px[l], ib[l]), acc[p][l]);
                }
            }
        }
        for (p, acc) in acc.iter_mut().enumerate() {
            finish(acc, self.relu6);
            out[p * c + ch..][..LANES].copy_from_slice(acc);
        }
    }

    /// [`ConvWeights::depthwise_block`] in AVX-512: one register per pixel and block of 16
    /// channels, so the four accumulators, the weights and the pending bias never leave registers.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[inline(always)]
    unsafe fn depthwise_block_avx512<const PENDING: bool>(
        &self,
        x: &[f32],
        in_bias: &[f32],
        relative: &[usize],
        bases: [usize; PIXELS],
        ch: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let c = self.in_ch;
        let (xp, wp) = (x.as_ptr(), self.weights.as_ptr().add(ch));
        let bias = _mm512_loadu_ps(self.bias.as_ptr().add(ch));
        let mut acc = [bias; PIXELS];
        let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
        let ib = if PENDING { _mm512_loadu_ps(in_bias.as_ptr().add(ch)) } else { zero };
        for (tap, &rel) in relative.iter().enumerate() {
            let wt = _mm512_loadu_ps(wp.add(tap * c));
            for p in 0..PIXELS {
                let mut v = _mm512_loadu_ps(xp.add(bases[p] + rel + ch));
                if PENDING {
                    v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, ib), zero), six);
                }
                acc[p] = _mm512_fmadd_ps(wt, v, acc[p]);
            }
        }
        for (p, mut a) in acc.into_iter().enumerate() {
            if self.relu6 {
                a = _mm512_min_ps(_mm512_max_ps(a, zero), six);
            }
            _mm512_storeu_ps(out.as_mut_ptr().add(p * c + ch), a);
        }
    }

    /// Channels `ch..ch + LANES` of one output pixel, from the taps listed.
    #[inline(always)]
    fn depthwise_lanes<const PENDING: bool>(
        &self,
        x: &[f32],
        in_bias: &[f32],
        taps: &[(usize, usize)],
        ch: usize,
        out: &mut [f32],
    ) {
        let c = self.in_ch;
        let load = |v: f32, b: f32| if PENDING { (v + b).clamp(0.0, 6.0) } else { v };
        let mut acc: [f32; LANES] = self.bias[ch..ch + LANES].try_into().unwrap();
        let ib: [f32; LANES] = if PENDING { in_bias[ch..ch + LANES].try_into().unwrap() } else { [0.0; LANES] };
        for &(tap, offset) in taps {
            let wt: &[f32; LANES] = self.weights[tap * c + ch..][..LANES].try_into().unwrap();
            let px: &[f32; LANES] = x[offset + ch..][..LANES].try_into().unwrap();
            for l in 0..LANES {
                acc[l] = wt[l].mul_add(load(px[l], ib[l]), acc[l]);
            }
        }
        finish(&mut acc, self.relu6);
        out[ch..ch + LANES].copy_from_slice(&acc);
    }

    /// The channels after the last whole LANES block, of one output pixel.
    fn depthwise_rest(&self, x: &[f32], in_bias: &[f32], taps: &[(usize, usize)], out: &mut [f32]) {
        let c = self.in_ch;
        for (ch, out) in out.iter_mut().enumerate().skip(c / LANES * LANES) {
            let mut acc = self.bias[ch];
            for &(tap, offset) in taps {
                let v = x[offset + ch];
                let v = if in_bias.is_empty() { v } else { (v + in_bias[ch]).clamp(0.0, 6.0) };
                acc = self.weights[tap * c + ch].mul_add(v, acc);
            }
            *out = if self.relu6 { acc.clamp(0.0, 6.0) } else { acc };
        }
    }

    /// One output pixel of a dense convolution (the stem: few input channels), LANES output
    /// channels at a time.
    #[inline(always)]
    fn dense_pixel(&self, x: &[f32], taps: &[(usize, usize)], out: &mut [f32]) {
        let (c, cout) = (self.in_ch, self.out_ch);
        let blocks = cout / LANES;
        for blk in 0..blocks {
            let ch = blk * LANES;
            let mut acc: [f32; LANES] = self.bias[ch..ch + LANES].try_into().unwrap();
            for &(tap, offset) in taps {
                for ci in 0..c {
                    let xv = x[offset + ci];
                    let wt: &[f32; LANES] = self.weights[(tap * c + ci) * cout + ch..][..LANES].try_into().unwrap();
                    for l in 0..LANES {
                        acc[l] = wt[l].mul_add(xv, acc[l]);
                    }
                }
            }
            finish(&mut acc, self.relu6);
            out[ch..ch + LANES].copy_from_slice(&acc);
        }
        for (ch, out) in out.iter_mut().enumerate().skip(blocks * LANES) {
            let mut acc = self.bias[ch];
            for &(tap, offset) in taps {
                for ci in 0..c {
                    acc = self.weights[(tap * c + ci) * cout + ch].mul_add(x[offset + ci], acc);
                }
            }
            *out = if self.relu6 { acc.clamp(0.0, 6.0) } else { acc };
        }
    }
}

/// Output pixels of a row, in the groups the depthwise kernel computes them.
enum Pixels {
    /// PIXELS neighbours whose windows are inside the image.
    Inside { ox: usize, bases: [usize; PIXELS] },
    /// One pixel near an edge, with its taps in a shared list.
    Edge { ox: usize, taps: std::ops::Range<usize> },
}

/// Channels per inner block: one AVX-512 register, or two AVX2 ones.
const LANES: usize = 16;
/// Output floats per block of a 1x1 convolution: 256 KiB, well inside a core's L2.
const BLOCK_FLOATS: usize = 64 * 1024;
/// Output pixels per depthwise block.
const PIXELS: usize = 4;

#[inline(always)]
fn finish(acc: &mut [f32; LANES], relu6: bool) {
    if relu6 {
        for v in acc.iter_mut() {
            *v = v.clamp(0.0, 6.0);
        }
    }
}

/// A 1x1 convolution (or a dense layer): out = x * W + bias [+ residual], then ReLU6 if set.
pub struct Pointwise {
    /// (in, out), row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    pub in_ch: usize,
    pub out_ch: usize,
    relu6: bool,
}

impl Pointwise {
    /// `weight`: (out, in) or (out, in, 1, 1).
    pub fn new(weight: &Tensor, bias: &Tensor, relu6: bool) -> Result<Self> {
        let out_ch = weight.dim(0)?;
        let weight = weight.reshape((out_ch, ()))?;
        let in_ch = weight.dim(1)?;
        Ok(Pointwise { weights: weight.t()?.flatten_all()?.to_vec1()?, bias: bias.to_vec1()?, in_ch, out_ch, relu6 })
    }

    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// x: (rows, in_ch); out: (rows, out_ch); residual, if any: (rows, out_ch).
    pub fn run(&self, x: &[f32], rows: usize, residual: Option<&[f32]>, out: &mut [f32], threads: usize) {
        let (cin, cout) = (self.in_ch, self.out_ch);
        assert!(x.len() >= rows * cin && out.len() >= rows * cout, "pointwise buffers too short");
        assert!(residual.is_none_or(|r| r.len() >= rows * cout), "pointwise residual too short");
        // Blocks of rows whose output fits in L2: the product of a block and its bias, residual
        // and ReLU6 then happen while it is there. One product over a tensor larger than the
        // cache followed by a second pass costs as much again in memory traffic as the product.
        let block_rows = (BLOCK_FLOATS / cout).max(8);
        if rows >= 2 * block_rows * threads.max(1) {
            out[..rows * cout].par_chunks_mut(block_rows * cout).enumerate().for_each(|(i, block)| {
                let r0 = i * block_rows;
                let nr = block.len() / cout;
                self.product(&x[r0 * cin..(r0 + nr) * cin], nr, block, 1);
                self.epilogue(block, residual.map(|r| &r[r0 * cout..(r0 + nr) * cout]));
            });
        } else {
            // Too few rows to share out by blocks: the product parallelises inside, and the
            // output is small enough to stay in cache for the second pass.
            self.product(x, rows, out, threads);
            self.epilogue(&mut out[..rows * cout], residual.map(|r| &r[..rows * cout]));
        }
    }

    /// Adds the bias and the residual and applies ReLU6, row by row.
    fn epilogue(&self, out: &mut [f32], residual: Option<&[f32]>) {
        let cout = self.out_ch;
        for (r, row) in out.chunks_exact_mut(cout).enumerate() {
            match residual {
                Some(res) => {
                    let res = &res[r * cout..(r + 1) * cout];
                    for ((o, b), r) in row.iter_mut().zip(&self.bias).zip(res) {
                        *o += b + r;
                    }
                }
                None => row.iter_mut().zip(&self.bias).for_each(|(o, b)| *o += b),
            }
            if self.relu6 {
                row.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
            }
        }
    }

    /// Only the matrix product x * W into `out`: the caller applies the bias and ReLU6 later,
    /// where it reads the values anyway.
    pub fn product(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize) {
        let (cin, cout) = (self.in_ch, self.out_ch);
        let out = &mut out[..rows * cout];
        assert!(x.len() >= rows * cin, "pointwise input too short");
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: the pointers and strides describe `out` (rows x cout), `x` (rows x cin, checked
        // above) and `weights` (cin x cout), all row-major; `out` does not alias the inputs.
        unsafe {
            gemm::gemm(
                rows,
                cout,
                cin,
                out.as_mut_ptr(),
                1,
                cout as isize,
                false,
                x.as_ptr(),
                1,
                cin as isize,
                self.weights.as_ptr(),
                1,
                cout as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// One inverted-residual block: an optional 1x1 expansion (with ReLU6), a depthwise convolution
/// (with ReLU6) and a linear 1x1 projection, with the input added back when `residual`.
pub struct InvertedResidual {
    pub expand: Option<Pointwise>,
    pub depthwise: ConvWeights,
    pub project: Pointwise,
    pub residual: bool,
}

/// A stem, inverted-residual blocks and a 1x1 head, ending in a global average pool: the body of
/// EfficientNet-Lite and of MobileNetV2, which differ only in their tables and final layer.
/// Element-wise ops in candle would each be a pass over memory and a round of thread
/// synchronisation; here bias, residual and ReLU6 ride along with the convolutions, and three
/// buffers are reused throughout.
pub struct MobileNet {
    stem: ConvWeights,
    blocks: Vec<InvertedResidual>,
    head: Pointwise,
    scratch: Mutex<[Vec<f32>; 3]>,
}

fn ensure(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

impl MobileNet {
    /// Refuses layers that do not take what the one before gives: [`MobileNet::pooled`] slices
    /// its buffers by these counts.
    pub fn new(stem: ConvWeights, blocks: Vec<InvertedResidual>, head: Pointwise) -> Result<Self> {
        if stem.depthwise {
            candle_core::bail!("the stem is a dense convolution, not a depthwise one")
        }
        let mut channels = stem.out_ch;
        for (i, block) in blocks.iter().enumerate() {
            let takes = block.expand.as_ref().map_or(block.depthwise.in_ch, |e| e.in_ch);
            let expanded = block.expand.as_ref().map_or(channels, |e| e.out_ch);
            if takes != channels || !block.depthwise.depthwise || block.depthwise.in_ch != expanded {
                candle_core::bail!("block {i} takes {takes} channels, the layer before gives {channels}")
            }
            if block.project.in_ch != block.depthwise.out_ch
                || (block.residual && (block.project.out_ch != channels || block.depthwise.stride != 1))
            {
                candle_core::bail!("block {i}'s projection does not fit its depthwise convolution or its residual")
            }
            channels = block.project.out_ch;
        }
        if head.in_ch != channels {
            candle_core::bail!("the head takes {} channels, the last block gives {channels}", head.in_ch)
        }
        Ok(MobileNet { stem, blocks, head, scratch: Mutex::new(Default::default()) })
    }

    /// The stem's input channels.
    pub fn in_channels(&self) -> usize {
        self.stem.in_ch
    }

    /// The length of each image's pooled features.
    pub fn features(&self) -> usize {
        self.head.out_ch
    }

    /// input: (batch, h, w, stem input channels); returns (batch, features): the head's output
    /// (bias and ReLU6 applied as it is summed) averaged over the pixels.
    pub fn pooled(&self, input: &[f32], batch: usize, h: usize, w: usize) -> Vec<f32> {
        assert_eq!(input.len(), batch * h * w * self.stem.in_ch, "input is not (batch, h, w, channels)");
        let threads = candle_core::utils::get_num_threads();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let [mut x, mut e, mut d] = std::mem::take(&mut *scratch);

        let (in_h, in_w) = (h, w);
        let (mut h, mut w) = self.stem.output_hw(in_h, in_w);
        ensure(&mut x, batch * h * w * self.stem.out_ch);
        self.stem.run(input, batch, in_h, in_w, &mut x);
        let mut ch = self.stem.out_ch;
        for block in &self.blocks {
            let rows = batch * h * w;
            let dw = &block.depthwise;
            let (oh, ow) = dw.output_hw(h, w);
            ensure(&mut d, batch * oh * ow * dw.out_ch);
            match &block.expand {
                Some(expand) => {
                    // The expansion's bias and ReLU6 are applied by the depthwise kernel as it
                    // reads, so the widest tensor is written once and read once.
                    ensure(&mut e, rows * expand.out_ch);
                    expand.product(&x[..rows * ch], rows, &mut e, threads);
                    dw.run_fused(&e[..rows * dw.in_ch], Some(expand.bias()), batch, h, w, &mut d);
                }
                None => dw.run(&x[..rows * dw.in_ch], batch, h, w, &mut d),
            }
            let out_rows = batch * oh * ow;
            let out_ch = block.project.out_ch;
            // The expansion buffer is free again: the block's output goes there.
            ensure(&mut e, out_rows * out_ch);
            let residual = block.residual.then(|| &x[..out_rows * out_ch]);
            block.project.run(&d[..out_rows * dw.out_ch], out_rows, residual, &mut e, threads);
            std::mem::swap(&mut x, &mut e);
            (h, w, ch) = (oh, ow, out_ch);
        }
        let rows = batch * h * w;
        ensure(&mut e, rows * self.head.out_ch);
        self.head.product(&x[..rows * ch], rows, &mut e, threads);
        let features = self.head.out_ch;
        let mut pooled = vec![0f32; batch * features];
        for (b, sum) in pooled.chunks_exact_mut(features).enumerate() {
            for pixel in e[b * h * w * features..(b + 1) * h * w * features].chunks_exact(features) {
                for ((s, p), bias) in sum.iter_mut().zip(pixel).zip(self.head.bias()) {
                    let v = p + bias;
                    *s += if self.head.relu6 { v.clamp(0.0, 6.0) } else { v };
                }
            }
            let n = (h * w) as f32;
            sum.iter_mut().for_each(|s| *s /= n);
        }
        *scratch = [x, e, d];
        pooled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The AVX-512 block (where the build has it) and the portable one agree.
    #[test]
    fn depthwise_block_paths_agree() {
        let dev = Device::Cpu;
        let (c, k, w) = (2 * LANES, 5, 12);
        let weight = Tensor::randn(0f32, 0.5, (c, 1, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        let conv = ConvWeights::new(&weight, &bias, 1, true, true).unwrap();
        let x: Vec<f32> = Tensor::randn(0f32, 3.0, k * w * c, &dev).unwrap().to_vec1().unwrap();
        let pending: Vec<f32> = Tensor::randn(0f32, 1.0, c, &dev).unwrap().to_vec1().unwrap();
        let relative: Vec<usize> = (0..k * k).map(|t| ((t / k) * w + t % k) * c).collect();
        let bases = std::array::from_fn(|p| (p + 1) * c);
        for ch in [0, LANES] {
            let (mut fast, mut portable) = (vec![0f32; PIXELS * c], vec![0f32; PIXELS * c]);
            conv.depthwise_block::<true>(&x, &pending, &relative, bases, ch, &mut fast);
            conv.depthwise_block_portable::<true>(&x, &pending, &relative, bases, ch, &mut portable);
            let diff = fast.iter().zip(&portable).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "channels {ch}..: max diff {diff}");
            assert!(fast[ch..ch + LANES].iter().any(|v| *v != 0.0), "the block wrote its channels");
        }
    }

    /// A pending input bias and ReLU6 give the same result as applying them first, including for
    /// channels past the last whole block of LANES.
    #[test]
    fn depthwise_applies_a_pending_input_bias_like_a_separate_pass() {
        let dev = Device::Cpu;
        let (c, k, h, w) = (LANES + 5, 3, 9, 13);
        let weight = Tensor::randn(0f32, 0.5, (c, 1, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        let conv = ConvWeights::new(&weight, &bias, 1, true, true).unwrap();
        let x: Vec<f32> = Tensor::randn(0f32, 3.0, h * w * c, &dev).unwrap().to_vec1().unwrap();
        let pending: Vec<f32> = Tensor::randn(0f32, 1.0, c, &dev).unwrap().to_vec1().unwrap();
        let activated: Vec<f32> = x.iter().enumerate().map(|(i, v)| (v + pending[i % c]).clamp(0.0, 6.0)).collect();

        let mut fused = vec![0f32; h * w * c];
        conv.run_fused(&x, Some(&pending), 1, h, w, &mut fused);
        let mut separate = vec![0f32; h * w * c];
        conv.run(&activated, 1, h, w, &mut separate);
        let diff = fused.iter().zip(&separate).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "max diff {diff}");
    }
}
