//! CPU kernels for MobileNet-style networks (EfficientNet-Lite, MobileNetV2, and PyTorch's
//! ShuffleNets) in NHWC with TensorFlow "same" or PyTorch's symmetric padding: the depthwise and
//! stem convolutions (bias and the activation fused in), 1x1 convolutions as one matrix product
//! each with the bias, the residual and the activation (ReLU or ReLU6) fused around it,
//! and [`MobileNet`], which runs a stem, inverted-residual blocks, a head and optionally a last
//! dense layer over reused buffers. Work is split across output rows or pixels between threads;
//! inner loops run over contiguous channels so the compiler vectorises them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{Result, Tensor};

use super::packed::{Epilogue, Lhs, PackedMatrix, Start, ONE_TAP, TILE_ROWS};
use super::quantized::{self, Quantization, QuantizedMatrix};
use super::{ensure, Activation, Kernel, LANES};
use rayon::prelude::*;

/// (before, after) padding so that the output has ceil(size / stride) elements; TensorFlow puts
/// the odd pixel after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Where a convolution's zero padding goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Padding {
    /// TensorFlow's "same": the odd pixel after (for a 3x3 window at stride 2 on an even size,
    /// none before).
    Same,
    /// PyTorch's `padding = kernel / 2`: as much before as after. The output has the same size
    /// as with `Same` for the odd kernels taken here; only where the window starts differs.
    Symmetric,
}

impl Padding {
    /// The padding before the first pixel along a side of `size`.
    fn before(self, size: usize, kernel: usize, stride: usize) -> usize {
        match self {
            Padding::Same => same_padding(size, kernel, stride).0,
            Padding::Symmetric => kernel / 2,
        }
    }
}

/// A spatial convolution laid out for [`ConvWeights::run`]: depthwise (k, k, C) or dense
/// (k, k, C_in, C_out).
pub struct ConvWeights {
    weights: Vec<f32>,
    bias: Vec<f32>,
    /// A dense convolution's weights as the (k * k * in, out) matrix its patches multiply.
    dense: Option<Pointwise>,
    pub kernel: usize,
    pub stride: usize,
    pub in_ch: usize,
    pub out_ch: usize,
    depthwise: bool,
    activation: Activation,
    padding: Padding,
}

impl ConvWeights {
    /// `weight`: (out, in/groups, k, k) as PyTorch stores it; `bias`: (out).
    pub fn new(weight: &Tensor, bias: &Tensor, stride: usize, depthwise: bool, relu6: bool) -> Result<Self> {
        let (out_ch, in_per_group, kernel, _) = weight.dims4()?;
        if kernel > MAX_KERNEL {
            candle_core::bail!("{kernel}x{kernel} convolutions are not supported (at most 7x7)")
        }
        if kernel % 2 == 0 {
            candle_core::bail!("{kernel}x{kernel} convolutions are not supported (odd kernels only)")
        }
        let weights = if depthwise { weight.squeeze(1)?.permute((1, 2, 0))? } else { weight.permute((2, 3, 1, 0))? };
        let weights: Vec<f32> = weights.flatten_all()?.to_vec1()?;
        let bias: Vec<f32> = bias.to_vec1()?;
        let dense =
            (!depthwise).then(|| Pointwise::from_matrix(&weights, bias.clone(), kernel * kernel * in_per_group, relu6));
        Ok(ConvWeights {
            weights,
            bias,
            dense,
            kernel,
            stride,
            in_ch: if depthwise { out_ch } else { in_per_group },
            out_ch,
            depthwise,
            activation: Activation::relu6(relu6),
            padding: Padding::Same,
        })
    }

    /// The same layer with another activation and padding (PyTorch's networks: ReLU, and
    /// windows centred on their pixel).
    pub fn with(mut self, activation: Activation, padding: Padding) -> Self {
        self.activation = activation;
        self.padding = padding;
        if let Some(dense) = &mut self.dense {
            dense.activation = activation;
        }
        self
    }

    pub fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (h.div_ceil(self.stride), w.div_ceil(self.stride))
    }

    /// x: (batch, h, w, in_ch); out: (batch, ceil(h/s), ceil(w/s), out_ch), on every thread.
    pub fn run(&self, x: &[f32], batch: usize, h: usize, w: usize, out: &mut [f32]) {
        self.run_on(x, batch, h, w, out, candle_core::utils::get_num_threads())
    }

    /// As [`ConvWeights::run`], split over output rows on `threads` (1: on the calling thread).
    pub fn run_on(&self, x: &[f32], batch: usize, h: usize, w: usize, out: &mut [f32], threads: usize) {
        let (oh, ow) = self.output_hw(h, w);
        let total = batch * oh;
        // Depthwise rows are cheap: one per task; dense ones in groups, each group one product.
        let per_task = if self.depthwise { 1 } else { oh.div_ceil(2 * threads.max(1)).clamp(1, DENSE_ROWS) };
        let out = &mut out[..total * ow * self.out_ch];
        let task = |(i, out): (usize, &mut [f32])| {
            let first = i * per_task;
            self.run_rows(x, batch, h, w, first..(first + per_task).min(total), out)
        };
        if threads > 1 {
            out.par_chunks_mut(per_task * ow * self.out_ch).enumerate().for_each(task)
        } else {
            self.run_rows(x, batch, h, w, 0..total, out)
        }
    }

    /// Output rows `rows` (counted over the whole batch: image b's row y is b * out_h + y) into
    /// `out`, which holds just those rows.
    pub fn run_rows(&self, x: &[f32], batch: usize, h: usize, w: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        let (c, cout) = (self.in_ch, self.out_ch);
        let (oh, ow) = self.output_hw(h, w);
        let image = h * w * c;
        assert!(x.len() >= batch * image && rows.end <= batch * oh, "convolution input too short");
        assert!(out.len() >= rows.len() * ow * cout, "convolution output too short");
        let row_len = ow * cout;
        let mut r = rows.start;
        while r < rows.end {
            let (b, oy) = (r / oh, r % oh);
            let x = &x[b * image..(b + 1) * image];
            let at = (r - rows.start) * row_len;
            if self.depthwise {
                self.depthwise_row(RowSource::image(x, h, w), oy, 0..ow, &mut out[at..at + row_len], Kernel::Fastest);
                r += 1;
            } else {
                // A few rows of one image at a time: their patches stay in cache for the product.
                let n = DENSE_ROWS.min(rows.end - r).min(oh - oy);
                self.dense_rows(x, h, w, oy, &mut out[at..at + n * row_len]);
                r += n;
            }
        }
    }

    /// Output rows `oy..` of a dense convolution of one image, as many as `out` holds. A pixel
    /// whose window is inside the image reads it in place: its kernel rows are pieces of the
    /// input `w * c` apart and its neighbour's window starts `s * c` further on, so the product
    /// takes the image as it is. The pixels whose windows reach into the padding (a row or
    /// column at the edges) get their windows copied into a row of patches each, with zeros
    /// for the padding. Copying every window had been two thirds of EfficientNet's stem.
    fn dense_rows(&self, x: &[f32], h: usize, w: usize, oy: usize, out: &mut [f32]) {
        match self.in_ch {
            3 => self.dense_rows_of::<3>(x, h, w, oy, out),
            1 => self.dense_rows_of::<1>(x, h, w, oy, out),
            _ => self.dense_rows_of::<0>(x, h, w, oy, out),
        }
    }

    /// [`ConvWeights::dense_rows`] with `C` input channels known when compiled (0: not known),
    /// so that copying one tap's few values is a move, not a call to memcpy.
    fn dense_rows_of<const C: usize>(&self, x: &[f32], h: usize, w: usize, oy: usize, out: &mut [f32]) {
        let (k, s, cout) = (self.kernel, self.stride, self.out_ch);
        let c = if C == 0 { self.in_ch } else { C };
        let (_, ow) = self.output_hw(h, w);
        let (pad_top, pad_left) = (self.padding.before(h, k, s), self.padding.before(w, k, s));
        let matrix = self.dense.as_ref().expect("a dense convolution has its matrix");
        // The output columns whose windows are inside the image's columns.
        let inside = pad_left.div_ceil(s)..if w + pad_left >= k { ((w + pad_left - k) / s + 1).min(ow) } else { 0 };
        let kernel_rows: [usize; MAX_KERNEL] = std::array::from_fn(|ky| ky * w * c);
        let window = k * k * c;
        let rows = out.len().checked_div(ow * cout).unwrap_or(0);
        let mut edges = Vec::new();
        for y in oy..oy + rows {
            let out_row = &mut out[(y - oy) * ow * cout..(y - oy + 1) * ow * cout];
            let top = (y * s).checked_sub(pad_top).filter(|&iy| iy + k <= h);
            match top {
                Some(iy) if !inside.is_empty() => {
                    let at = (iy * w + inside.start * s - pad_left) * c;
                    let pieces = Pieces { stride: s * c, starts: &kernel_rows[..k], len: k * c };
                    let out = &mut out_row[inside.start * cout..inside.end * cout];
                    matrix.run_pieces(&x[at..], pieces, inside.len(), None, out, 1);
                    edges.extend((0..inside.start).chain(inside.end..ow).map(|ox| (y, ox)));
                }
                _ => edges.extend((0..ow).map(|ox| (y, ox))),
            }
        }
        if edges.is_empty() {
            return;
        }
        let mut patches = vec![0f32; edges.len() * window];
        for (&(y, x0), patch) in edges.iter().zip(patches.chunks_exact_mut(window)) {
            for ky in 0..k {
                let Some(iy) = (y * s + ky).checked_sub(pad_top).filter(|&iy| iy < h) else { continue };
                for kx in 0..k {
                    if let Some(ix) = (x0 * s + kx).checked_sub(pad_left).filter(|&ix| ix < w) {
                        let (to, from) = ((ky * k + kx) * c, (iy * w + ix) * c);
                        if C == 0 {
                            patch[to..to + c].copy_from_slice(&x[from..from + c]);
                        } else {
                            patch[to..to + C].copy_from_slice(&x[from..from + C]);
                        }
                    }
                }
            }
        }
        let mut outs = vec![0f32; edges.len() * cout];
        matrix.run(&patches, edges.len(), None, &mut outs, 1);
        for (&(y, ox), pixel) in edges.iter().zip(outs.chunks_exact(cout)) {
            let at = ((y - oy) * ow + ox) * cout;
            out[at..at + cout].copy_from_slice(pixel);
        }
    }

    /// Output pixels `pixels` (counted over the batch, row after row; they may start and end
    /// inside a row) of a depthwise convolution into `out`, which holds just those pixels.
    pub fn run_pixels(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        pixels: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        assert!(self.depthwise, "pixels one by one are for depthwise convolutions");
        let c = self.in_ch;
        let (oh, ow) = self.output_hw(h, w);
        let image = h * w * c;
        assert!(x.len() >= batch * image && pixels.end <= batch * oh * ow, "convolution input too short");
        assert!(out.len() >= pixels.len() * c, "convolution output too short");
        let mut p = pixels.start;
        while p < pixels.end {
            let (r, ox) = (p / ow, p % ow);
            let (b, oy) = (r / oh, r % oh);
            let cols = ox..ow.min(ox + pixels.end - p);
            let at = (p - pixels.start) * c;
            let out = &mut out[at..at + cols.len() * c];
            let x = &x[b * image..(b + 1) * image];
            p += cols.len();
            self.depthwise_row(RowSource::image(x, h, w), oy, cols, out, Kernel::Fastest);
        }
    }

    /// Output pixels `cols` of row `oy` of a depthwise convolution of one image, read from
    /// `input`, into `out` (which starts at the first of them).
    fn depthwise_row(
        &self,
        input: RowSource,
        oy: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
        kernel: Kernel,
    ) {
        assert!(
            cols.end <= self.output_hw(input.h, input.w).1 && out.len() >= cols.len() * self.in_ch,
            "depthwise row out of bounds"
        );
        match (self.kernel, self.stride, kernel) {
            (_, _, Kernel::Plain) => self.depthwise_row_plain(input, oy, cols, out),
            (3, 1, _) => self.depthwise_row_tiled::<3, 1>(input, oy, cols, out, kernel),
            (3, 2, _) => self.depthwise_row_tiled::<3, 2>(input, oy, cols, out, kernel),
            (5, 1, _) => self.depthwise_row_tiled::<5, 1>(input, oy, cols, out, kernel),
            (5, 2, _) => self.depthwise_row_tiled::<5, 2>(input, oy, cols, out, kernel),
            _ => self.depthwise_row_plain(input, oy, cols, out),
        }
    }

    /// The definition, one output value at a time: the reference the tiled kernels are tested
    /// against, and the path for kernel sizes and strides they are not built for.
    fn depthwise_row_plain(&self, input: RowSource, oy: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
        let RowSource { x, rows, h, w } = input;
        let (k, s, c) = (self.kernel, self.stride, self.in_ch);
        let (pad_top, pad_left) = (self.padding.before(h, k, s), self.padding.before(w, k, s));
        let first = cols.start;
        for ox in cols {
            for ch in 0..c {
                let mut acc = self.bias[ch];
                for ky in 0..k {
                    let Some(iy) = (oy * s + ky).checked_sub(pad_top).filter(|&iy| iy < h) else { continue };
                    for kx in 0..k {
                        if let Some(ix) = (ox * s + kx).checked_sub(pad_left).filter(|&ix| ix < w) {
                            let at = rows.offset(iy, w * c) + ix * c + ch;
                            acc = self.weights[(ky * k + kx) * c + ch].mul_add(x[at], acc);
                        }
                    }
                }
                out[(ox - first) * c + ch] = self.activation.apply(acc);
            }
        }
    }

    /// Pixels `cols` of one output row in tiles of neighbouring pixels times LANES channels (on
    /// AVX2 at stride 1, times all the channels: see [`TileRow::avx2`]). At stride 1 a tile
    /// loads each input column of its window once per kernel row and uses it for every pixel
    /// whose window covers it (up to K of them), so the loads, not the multiplications, set the
    /// pace no more than they must (see [`TileRow::avx512`] for stride 2). Tiles whose windows
    /// cross the image's edge, or hold fewer pixels or channels than a whole tile, take the
    /// masked form of the same kernel.
    fn depthwise_row_tiled<const K: usize, const S: usize>(
        &self,
        input: RowSource,
        oy: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
        kernel: Kernel,
    ) {
        let RowSource { x, rows, h, w } = input;
        let c = self.in_ch;
        let (pad_top, pad_left) = (self.padding.before(h, K, S), self.padding.before(w, K, S));
        // The kernel rows whose input row is inside the image.
        let top = oy * S;
        let ky_first = pad_top.saturating_sub(top);
        let ky_end = K.min((h + pad_top).saturating_sub(top));
        assert!(ky_first < ky_end && out.len() >= cols.len() * c, "depthwise row out of bounds");
        let tile = TileRow {
            x,
            rows: std::array::from_fn(|r| rows.offset((top + ky_first + r).saturating_sub(pad_top), w * c)),
            kernel_rows: ky_first..ky_end,
            w,
            c,
            weights: &self.weights,
            bias: &self.bias,
            activation: self.activation,
        };
        // What every tile of the row reads besides its own columns, checked once for them all.
        assert!(
            tile.rows[..tile.kernel_rows.len()].iter().all(|&row| row + w * c <= x.len())
                && self.weights.len() >= K * K * c
                && self.bias.len() >= c,
            "depthwise rows or weights out of bounds"
        );
        let path = DepthwisePath::of(kernel);
        let (pixels, lanes) = match path {
            DepthwisePath::Avx512 => (TILE, LANES),
            DepthwisePath::Avx2 => (TILE, AVX2_LANES),
            DepthwisePath::Portable => (PORTABLE_TILE, LANES),
        };
        #[cfg(fma256)]
        if path == DepthwisePath::Avx2 && S == 1 {
            for ox in cols.clone().step_by(pixels) {
                let count = pixels.min(cols.end - ox);
                let first_col = ox as isize - pad_left as isize;
                let whole = count == pixels && first_col >= 0 && first_col as usize + pixels - 1 + K <= w;
                let out = &mut out[(ox - cols.start) * c..];
                // SAFETY: AVX2 and FMA are compiled in, and `whole` is the unmasked form's condition.
                unsafe {
                    if whole {
                        tile.avx2::<K, false>(first_col, count, out)
                    } else {
                        tile.avx2::<K, true>(first_col, count, out)
                    }
                }
            }
            return;
        }
        for ch in (0..c).step_by(lanes) {
            for ox in cols.clone().step_by(pixels) {
                let count = pixels.min(cols.end - ox);
                let first_col = (ox * S) as isize - pad_left as isize;
                let whole = count == pixels
                    && ch + lanes <= c
                    && first_col >= 0
                    && first_col as usize + S * (pixels - 1) + K <= w;
                let out = &mut out[(ox - cols.start) * c..];
                // SAFETY: each path is only chosen where its instructions are compiled in, and
                // `whole` is the unmasked forms' condition.
                match (path, whole) {
                    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
                    (DepthwisePath::Avx512, true) => unsafe { tile.avx512::<K, S, false>(first_col, ch, count, out) },
                    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
                    (DepthwisePath::Avx512, false) => unsafe { tile.avx512::<K, S, true>(first_col, ch, count, out) },
                    #[cfg(fma256)]
                    (DepthwisePath::Avx2, true) => unsafe {
                        tile.avx2_strided::<K, S, false, false>(first_col, ch, count, out)
                    },
                    #[cfg(fma256)]
                    (DepthwisePath::Avx2, false) if ch + lanes <= c => unsafe {
                        tile.avx2_strided::<K, S, true, false>(first_col, ch, count, out)
                    },
                    #[cfg(fma256)]
                    (DepthwisePath::Avx2, false) => unsafe {
                        tile.avx2_strided::<K, S, true, true>(first_col, ch, count, out)
                    },
                    _ => tile.portable::<K, S>(first_col, ch, count, out),
                }
            }
        }
    }
}

/// What every tile of one depthwise output row shares: the input rows its kernel rows read and
/// the layer's weights.
struct TileRow<'a> {
    x: &'a [f32],
    /// Offset in x of the input row each kernel row from `kernel_rows.start` on reads.
    rows: [usize; MAX_KERNEL],
    kernel_rows: std::ops::Range<usize>,
    w: usize,
    c: usize,
    weights: &'a [f32],
    bias: &'a [f32],
    activation: Activation,
}

/// What the blocks of channels of one stride-1 AVX2 depthwise tile share.
#[cfg(fma256)]
#[derive(Clone, Copy)]
struct Window {
    /// Offset in a row of the window's column `lo`, at channel 0.
    base: usize,
    /// The window's columns inside the image.
    lo: usize,
    hi: usize,
    /// Pixels written.
    count: usize,
    /// The activation's bounds, and whether it has any.
    bounds: (f32, f32),
    clamp: bool,
}

impl TileRow<'_> {
    /// `count` pixels from input column `first_col` (negative: in the padding) times channels
    /// `ch..` (up to LANES of them), into `out` (which starts at the first pixel). `MASKED`: some
    /// columns are outside the image, or the tile is not whole.
    ///
    /// # Safety
    /// AVX-512F must be available (it is compiled in). Every offset is checked against the
    /// slices' lengths: rows, weights and bias once per row where the `TileRow` is made, the
    /// output here, and, masked, columns by the bounds lo..hi (no column outside the image is
    /// read) and channels by the lane mask.
    /// Unmasked, the caller must have checked that the tile is whole: `first_col >= 0`,
    /// `first_col + S * (TILE - 1) + K <= w`, all LANES channels from `ch` present, and
    /// `count` all TILE pixels.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[inline(always)]
    unsafe fn avx512<const K: usize, const S: usize, const MASKED: bool>(
        &self,
        first_col: isize,
        ch: usize,
        count: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (c, w) = (self.c, self.w);
        let columns = S * (TILE - 1) + K;
        let lanes = (c - ch).min(LANES);
        let lane_mask: u16 = if lanes == LANES { u16::MAX } else { (1u16 << lanes) - 1 };
        assert!(out.len() >= (count - 1) * c + ch + lanes);
        // Masked, the window's columns lo..hi are inside the image; the others are padding,
        // zeros that add nothing. Bounds, not a table per column: a table kept the loop's
        // addresses and masks on the stack.
        debug_assert!(MASKED || (first_col >= 0 && first_col as usize + columns <= w && lanes == LANES));
        let (lo, hi) = if MASKED {
            ((-first_col).max(0) as usize, (w as isize - first_col).clamp(0, columns as isize) as usize)
        } else {
            (0, columns)
        };
        // Where column lo of the window is (unmasked, lo is 0 and first_col >= 0).
        let base = (first_col + lo as isize) as usize * c + ch;
        let bias = _mm512_maskz_loadu_ps(lane_mask, self.bias.as_ptr().add(ch));
        let mut acc = [bias; TILE];
        // At stride 2, the kernel row's columns lo..hi (masked: copied here first, the padding's
        // columns left zero, which they are for every kernel row).
        let mut window = [_mm512_setzero_ps(); MAX_COLUMNS];
        for (r, ky) in self.kernel_rows.clone().enumerate() {
            let row = self.x.as_ptr().add(self.rows[r]);
            let wrow = self.weights.as_ptr().add(ky * K * c + ch);
            let wt: [__m512; K] = std::array::from_fn(|kx| _mm512_maskz_loadu_ps(lane_mask, wrow.add(kx * c)));
            if S == 1 {
                // Column by column: each is loaded once, for the up to K pixels whose windows
                // hold it, and padding columns are skipped.
                for j in 0..columns {
                    if MASKED && (j < lo || j >= hi) {
                        continue;
                    }
                    let at = row.add(base + (j - lo) * c);
                    let v = if MASKED { _mm512_maskz_loadu_ps(lane_mask, at) } else { _mm512_loadu_ps(at) };
                    for (p, acc) in acc.iter_mut().enumerate() {
                        if j >= p && j - p < K {
                            *acc = _mm512_fmadd_ps(wt[j - p], v, *acc);
                        }
                    }
                }
                continue;
            }
            // Pixel by pixel, each column loaded into the multiply for every pixel whose window
            // holds it: at stride 2 a column serves at most (K + 1) / 2 pixels, and the loop
            // above stayed rolled there, with a branch per column and pixel (about 1.5x slower
            // in a benchmark of EfficientNet's strided layers).
            if MASKED {
                for (j, column) in window.iter_mut().enumerate().take(hi).skip(lo) {
                    *column = _mm512_maskz_loadu_ps(lane_mask, row.add(base + (j - lo) * c));
                }
            }
            for (p, acc) in acc.iter_mut().enumerate() {
                for (kx, wt) in wt.iter().enumerate() {
                    let j = S * p + kx;
                    let v = if MASKED { window[j] } else { _mm512_loadu_ps(row.add(base + j * c)) };
                    *acc = _mm512_fmadd_ps(*wt, v, *acc);
                }
            }
        }
        let (lo, hi) = self.activation.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (p, mut a) in acc.into_iter().enumerate().take(if MASKED { count } else { TILE }) {
            if self.activation != Activation::Identity {
                a = _mm512_min_ps(_mm512_max_ps(a, lo), hi);
            }
            let at = out.as_mut_ptr().add(p * c + ch);
            if MASKED {
                _mm512_mask_storeu_ps(at, lane_mask, a)
            } else {
                _mm512_storeu_ps(at, a)
            }
        }
    }

    /// [`TileRow::avx512`] at stride 1 on AVX2 registers, for all the channels at once: `count`
    /// pixels from input column `first_col`, AVX2_LANES channels at a time. What the channels
    /// share (the checks, the window's bounds, the rows) is worked out once here: for a 3x3
    /// kernel a block of channels is only 72 multiplies, and with that setup repeated for each
    /// block, EfficientNet-Lite0's stride-1 layers ran up to 1.5x slower on a Zen 3 (3x3; 5x5:
    /// up to 1.25x).
    ///
    /// # Safety
    /// AVX2 and FMA must be available (they are compiled in). Unmasked, the caller must have
    /// checked that the tile is whole: `first_col >= 0`, `first_col + TILE - 1 + K <= w`, and
    /// `count` all TILE pixels; masked, the bounds lo..hi keep every column read inside the
    /// image. `out` is checked here, the rows, weights and bias where the `TileRow` is made, and
    /// no channel past `c` is touched (lane masks).
    #[cfg(fma256)]
    #[inline(always)]
    unsafe fn avx2<const K: usize, const MASKED: bool>(&self, first_col: isize, count: usize, out: &mut [f32]) {
        let (c, w) = (self.c, self.w);
        let columns = TILE - 1 + K;
        // Unmasked, all TILE pixels are written.
        let count = if MASKED { count } else { TILE };
        assert!(out.len() >= count * c);
        debug_assert!(MASKED || (first_col >= 0 && first_col as usize + columns <= w));
        // Masked, the window's columns lo..hi are inside the image, as in the AVX-512 tile.
        let (lo, hi) = if MASKED {
            ((-first_col).max(0) as usize, (w as isize - first_col).clamp(0, columns as isize) as usize)
        } else {
            (0, columns)
        };
        let window = Window {
            base: (first_col + lo as isize) as usize * c,
            lo,
            hi,
            count,
            bounds: self.activation.bounds(),
            clamp: self.activation != Activation::Identity,
        };
        let whole = c / AVX2_LANES * AVX2_LANES;
        for ch in (0..whole).step_by(AVX2_LANES) {
            self.avx2_channels::<K, MASKED, false>(&window, ch, out);
        }
        if whole < c {
            self.avx2_channels::<K, true, true>(&window, whole, out);
        }
    }

    /// One block of AVX2_LANES channels from `ch` of [`TileRow::avx2`]'s tile (`SHORT`: fewer,
    /// at the channels' end, read and written through lane masks, which are slower than plain
    /// loads and stores; `SHORT` is only ever masked). Column by column: each is loaded once,
    /// for the up to K pixels whose windows hold it, and padding columns are skipped.
    ///
    /// # Safety
    /// As for [`TileRow::avx2`], whose checks cover every block; besides, `window` must be the
    /// one [`TileRow::avx2`] made for this tile, `ch < c`, and `SHORT` must hold exactly where
    /// fewer than AVX2_LANES channels are left from `ch` (unmasked loads would read past them).
    #[cfg(fma256)]
    #[inline(always)]
    unsafe fn avx2_channels<const K: usize, const MASKED: bool, const SHORT: bool>(
        &self,
        window: &Window,
        ch: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let c = self.c;
        let lanes = (c - ch).min(AVX2_LANES);
        debug_assert!(SHORT == (lanes < AVX2_LANES) && (MASKED || !SHORT));
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let load = |at: *const f32| if SHORT { _mm256_maskload_ps(at, mask) } else { _mm256_loadu_ps(at) };
        let Window { base, lo, hi, .. } = *window;
        let base = base + ch;
        let mut acc = [load(self.bias.as_ptr().add(ch)); TILE];
        for (r, ky) in self.kernel_rows.clone().enumerate() {
            let row = self.x.as_ptr().add(self.rows[r]);
            let wrow = self.weights.as_ptr().add(ky * K * c + ch);
            let wt: [__m256; K] = std::array::from_fn(|kx| load(wrow.add(kx * c)));
            for j in 0..TILE - 1 + K {
                if MASKED && (j < lo || j >= hi) {
                    continue;
                }
                let v = load(row.add(base + (j - lo) * c));
                for (p, acc) in acc.iter_mut().enumerate() {
                    if j >= p && j - p < K {
                        *acc = _mm256_fmadd_ps(wt[j - p], v, *acc);
                    }
                }
            }
        }
        let (lo, hi) = (_mm256_set1_ps(window.bounds.0), _mm256_set1_ps(window.bounds.1));
        for (p, mut a) in acc.into_iter().enumerate().take(window.count) {
            if window.clamp {
                a = _mm256_min_ps(_mm256_max_ps(a, lo), hi);
            }
            let at = out.as_mut_ptr().add(p * c + ch);
            if SHORT {
                _mm256_maskstore_ps(at, mask, a)
            } else {
                _mm256_storeu_ps(at, a)
            }
        }
    }

    /// [`TileRow::avx512`] at stride 2 on AVX2 registers: TILE pixels times AVX2_LANES channels
    /// from `ch` (`SHORT`: fewer, at the channels' end, read and written through lane masks,
    /// which are slower than plain loads and stores; a runtime choice between them stayed in the
    /// loop). The stride-1 tile, [`TileRow::avx2`], takes all the channels in one call; built
    /// that way this one ran up to 30% slower (Zen 3), so it keeps one call per block of channels.
    ///
    /// # Safety
    /// AVX2 and FMA must be available (they are compiled in); as for [`TileRow::avx512`], with
    /// AVX2_LANES channels making a whole tile, and `SHORT` (which implies `MASKED`) exactly
    /// where fewer than AVX2_LANES channels are left from `ch`.
    #[cfg(fma256)]
    #[inline(always)]
    unsafe fn avx2_strided<const K: usize, const S: usize, const MASKED: bool, const SHORT: bool>(
        &self,
        first_col: isize,
        ch: usize,
        count: usize,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        debug_assert!(S > 1, "stride 1 takes TileRow::avx2");
        let (c, w) = (self.c, self.w);
        let columns = S * (TILE - 1) + K;
        let lanes = (c - ch).min(AVX2_LANES);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        assert!(out.len() >= (count - 1) * c + ch + lanes);
        debug_assert!(MASKED || (first_col >= 0 && first_col as usize + columns <= w && lanes == AVX2_LANES));
        debug_assert!(SHORT == (lanes < AVX2_LANES) && (MASKED || !SHORT));
        // Masked loads only where channels run short: the columns' bounds are lo..hi as in the
        // AVX-512 tile.
        let whole_lanes = !SHORT;
        let load = |at: *const f32| if whole_lanes { _mm256_loadu_ps(at) } else { _mm256_maskload_ps(at, mask) };
        let (lo, hi) = if MASKED {
            ((-first_col).max(0) as usize, (w as isize - first_col).clamp(0, columns as isize) as usize)
        } else {
            (0, columns)
        };
        let base = (first_col + lo as isize) as usize * c + ch;
        let mut acc = [load(self.bias.as_ptr().add(ch)); TILE];
        let mut window = [_mm256_setzero_ps(); MAX_COLUMNS];
        for (r, ky) in self.kernel_rows.clone().enumerate() {
            let row = self.x.as_ptr().add(self.rows[r]);
            let wrow = self.weights.as_ptr().add(ky * K * c + ch);
            let wt: [__m256; K] = std::array::from_fn(|kx| load(wrow.add(kx * c)));
            if MASKED {
                for (j, column) in window.iter_mut().enumerate().take(hi).skip(lo) {
                    *column = load(row.add(base + (j - lo) * c));
                }
            }
            for (p, acc) in acc.iter_mut().enumerate() {
                for (kx, wt) in wt.iter().enumerate() {
                    let j = S * p + kx;
                    let v = if MASKED { window[j] } else { _mm256_loadu_ps(row.add(base + j * c)) };
                    *acc = _mm256_fmadd_ps(*wt, v, *acc);
                }
            }
        }
        let (lo, hi) = self.activation.bounds();
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        for (p, mut a) in acc.into_iter().enumerate().take(if MASKED { count } else { TILE }) {
            if self.activation != Activation::Identity {
                a = _mm256_min_ps(_mm256_max_ps(a, lo), hi);
            }
            let at = out.as_mut_ptr().add(p * c + ch);
            if whole_lanes {
                _mm256_storeu_ps(at, a)
            } else {
                _mm256_maskstore_ps(at, mask, a)
            }
        }
    }

    /// [`TileRow::avx512`] in plain Rust, for builds without AVX-512: PORTABLE_TILE pixels (the
    /// accumulators of eight would not fit in sixteen AVX2 registers), columns outside the image
    /// skipped.
    #[inline(always)]
    fn portable<const K: usize, const S: usize>(&self, first_col: isize, ch: usize, count: usize, out: &mut [f32]) {
        let (c, w) = (self.c, self.w);
        let lanes = (c - ch).min(LANES);
        // A whole register's copy has a size known when compiled, so it is a few moves; a copy
        // of `lanes` values is a call to memcpy (which took a sixth of an AVX2 build's time).
        let load = |xs: &[f32], at: usize| -> [f32; LANES] {
            if lanes == LANES {
                return xs[at..at + LANES].try_into().expect("a whole register");
            }
            let mut v = [0f32; LANES];
            v[..lanes].copy_from_slice(&xs[at..at + lanes]);
            v
        };
        let mut acc = [load(self.bias, ch); PORTABLE_TILE];
        for (r, ky) in self.kernel_rows.clone().enumerate() {
            let row = self.rows[r];
            let wt: [[f32; LANES]; K] = std::array::from_fn(|kx| load(self.weights, (ky * K + kx) * c + ch));
            for j in 0..S * (PORTABLE_TILE - 1) + K {
                let col = first_col + j as isize;
                if col < 0 || col as usize >= w {
                    continue;
                }
                let v = load(self.x, row + col as usize * c + ch);
                for (p, acc) in acc.iter_mut().enumerate() {
                    if j >= S * p && j - S * p < K {
                        let wt = &wt[j - S * p];
                        for l in 0..LANES {
                            acc[l] = wt[l].mul_add(v[l], acc[l]);
                        }
                    }
                }
            }
        }
        for (p, acc) in acc.iter_mut().enumerate().take(count) {
            if self.activation != Activation::Identity {
                acc.iter_mut().for_each(|v| *v = self.activation.apply(*v));
            }
            if lanes == LANES {
                out[p * c + ch..][..LANES].copy_from_slice(acc);
            } else {
                out[p * c + ch..][..lanes].copy_from_slice(&acc[..lanes]);
            }
        }
    }
}

/// Which depthwise tile a row takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DepthwisePath {
    #[cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx512f")), allow(dead_code))]
    Avx512,
    #[cfg_attr(not(fma256), allow(dead_code))]
    Avx2,
    Portable,
}

impl DepthwisePath {
    fn of(kernel: Kernel) -> Self {
        match kernel {
            Kernel::Fastest if cfg!(all(target_arch = "x86_64", target_feature = "avx512f")) => DepthwisePath::Avx512,
            Kernel::Fastest if cfg!(fma256) => DepthwisePath::Avx2,
            #[cfg(fma256)]
            Kernel::Avx2 => DepthwisePath::Avx2,
            _ => DepthwisePath::Portable,
        }
    }
}

/// Output pixels per depthwise tile: eight accumulators, up to five weights and a column take
/// 14 of AVX-512's 32 registers, and as many of AVX2's 16 (one register of channels, not two).
const TILE: usize = 8;
const PORTABLE_TILE: usize = 4;
/// f32 lanes of an AVX2 register.
const AVX2_LANES: usize = 8;
/// The largest kernel [`ConvWeights::new`] takes.
const MAX_KERNEL: usize = 7;
/// Input columns a depthwise tile's windows span at most: stride 2, the largest kernel.
#[cfg_attr(not(any(fma256, all(target_arch = "x86_64", target_feature = "avx512f"))), allow(dead_code))]
const MAX_COLUMNS: usize = 2 * (TILE - 1) + MAX_KERNEL;

/// What a depthwise output row reads: an h x w image of the layer's channels, whose rows `x`
/// holds as `rows` says.
#[derive(Clone, Copy)]
struct RowSource<'a> {
    x: &'a [f32],
    rows: Rows,
    h: usize,
    w: usize,
}

impl<'a> RowSource<'a> {
    /// A whole image, its rows in order.
    fn image(x: &'a [f32], h: usize, w: usize) -> Self {
        RowSource { x, rows: Rows::Image, h, w }
    }
}

/// Where a depthwise convolution finds each input row in its buffer.
#[derive(Clone, Copy, Debug)]
enum Rows {
    /// Every row, in order.
    Image,
    /// A ring of this many rows: row iy is in slot iy % slots.
    Ring(usize),
}

impl Rows {
    fn offset(self, iy: usize, row_len: usize) -> usize {
        match self {
            Rows::Image => iy * row_len,
            Rows::Ring(slots) => iy % slots * row_len,
        }
    }
}

/// Output rows of a dense convolution whose patches are gathered and multiplied together.
const DENSE_ROWS: usize = 8;

/// A 1x1 convolution (or a dense layer): out = x * W + bias [+ residual], then its activation.
pub struct Pointwise {
    weights: Weights,
    bias: Vec<f32>,
    pub in_ch: usize,
    pub out_ch: usize,
    activation: Activation,
}

enum Weights {
    F32(PackedMatrix),
    /// Quantized per output channel, for inputs quantized as the matrix says.
    Int8(QuantizedMatrix),
}

impl Pointwise {
    /// `weight`: (out, in) or (out, in, 1, 1).
    pub fn new(weight: &Tensor, bias: &Tensor, relu6: bool) -> Result<Self> {
        let (weights, in_ch) = Self::matrix(weight)?;
        Ok(Self::from_matrix(&weights, bias.to_vec1()?, in_ch, relu6))
    }

    /// As [`Pointwise::new`], the product in int8: the weights quantized per output channel and
    /// each input quantized as `input` says (a range calibrated for it).
    pub fn new_int8(weight: &Tensor, bias: &Tensor, relu6: bool, input: Quantization) -> Result<Self> {
        let (weights, in_ch) = Self::matrix(weight)?;
        let bias: Vec<f32> = bias.to_vec1()?;
        let out_ch = bias.len();
        let matrix = QuantizedMatrix::new(&weights, in_ch, out_ch, &bias, input);
        Ok(Pointwise { weights: Weights::Int8(matrix), bias, in_ch, out_ch, activation: Activation::relu6(relu6) })
    }

    /// The (in, out) row-major matrix of a (out, in[, 1, 1]) weight, and its rows.
    fn matrix(weight: &Tensor) -> Result<(Vec<f32>, usize)> {
        let out_ch = weight.dim(0)?;
        let weight = weight.reshape((out_ch, ()))?;
        let in_ch = weight.dim(1)?;
        Ok((weight.t()?.flatten_all()?.to_vec1()?, in_ch))
    }

    /// `weights`: (in, out) row-major.
    fn from_matrix(weights: &[f32], bias: Vec<f32>, in_ch: usize, relu6: bool) -> Self {
        let out_ch = bias.len();
        let activation = Activation::relu6(relu6);
        Pointwise { weights: Weights::F32(PackedMatrix::new(weights, in_ch, out_ch)), bias, in_ch, out_ch, activation }
    }

    /// The same layer with another activation (PyTorch's networks use ReLU).
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// x: (rows, in_ch); out: (rows, out_ch); residual, if any: (rows, out_ch). Split over
    /// `threads` by rows (1: on the calling thread).
    pub fn run(&self, x: &[f32], rows: usize, residual: Option<&[f32]>, out: &mut [f32], threads: usize) {
        self.run_with(x, self.whole_rows(), rows, residual, out, threads, Kernel::Fastest)
    }

    /// Its float weights, in the panels of columns threads can share out (an int8 layer has
    /// none, and is not shared out).
    fn packed(&self) -> Option<&PackedMatrix> {
        match &self.weights {
            Weights::F32(matrix) => Some(matrix),
            Weights::Int8(_) => None,
        }
    }

    /// One row x through panels `panels` of `matrix`, the layer's [`Pointwise::packed`] weights
    /// (see [`PackedMatrix::multiply_panels`]), into `out`: their columns.
    fn run_panels(&self, matrix: &PackedMatrix, x: &[f32], panels: std::ops::Range<usize>, out: &mut [f32]) {
        let lhs = Lhs { x: &x[..self.in_ch], stride: self.in_ch, m: 1, k: 0..self.in_ch, taps: ONE_TAP };
        let epilogue = Epilogue { start: Start::Bias(&self.bias), residual: None, activation: self.activation };
        matrix.multiply_panels(&lhs, out, &epilogue, panels);
    }

    /// Rows of the input that are just the layer's inputs, one after the other.
    fn whole_rows(&self) -> Pieces<'static> {
        Pieces { stride: self.in_ch, starts: ONE_TAP, len: self.in_ch }
    }

    /// As [`Pointwise::run`], with each row of the input made of pieces of `x` (see [`Pieces`]):
    /// a layer over several tensors concatenated along the channels, read where they are.
    pub fn run_pieces(
        &self,
        x: &[f32],
        pieces: Pieces,
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
        threads: usize,
    ) {
        self.run_with(x, pieces, rows, residual, out, threads, Kernel::Fastest)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_with(
        &self,
        x: &[f32],
        pieces: Pieces,
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
        threads: usize,
        kernel: Kernel,
    ) {
        let (cin, cout) = (self.in_ch, self.out_ch);
        let Pieces { stride, starts, len } = pieces;
        assert_eq!(starts.len() * len, cin, "the pieces of a row are not the layer's inputs");
        let reach = starts.iter().max().map_or(0, |&s| s + rows.saturating_sub(1) * stride + len);
        assert!(rows == 0 || x.len() >= reach, "pointwise input too short");
        assert!(out.len() >= rows * cout, "pointwise output too short");
        assert!(residual.is_none_or(|r| r.len() >= rows * cout), "pointwise residual too short");
        // Enough blocks of rows to share out, each a whole number of tiles.
        let block_rows = rows.div_ceil(4 * threads.max(1)).next_multiple_of(TILE_ROWS).max(TILE_ROWS);
        let block = |(i, out): (usize, &mut [f32])| {
            let (r0, nr) = (i * block_rows, out.len() / cout);
            let x = &x[r0 * stride..];
            let residual = residual.map(|r| &r[r0 * cout..(r0 + nr) * cout]);
            match &self.weights {
                Weights::F32(matrix) => {
                    let lhs = Lhs { x, stride, m: nr, k: 0..len, taps: starts };
                    let epilogue = Epilogue { start: Start::Bias(&self.bias), residual, activation: self.activation };
                    matrix.multiply_with(&lhs, out, &epilogue, kernel);
                }
                Weights::Int8(matrix) => {
                    assert!(stride == cin && starts == ONE_TAP, "an int8 layer reads whole rows");
                    let x = &x[..nr * cin];
                    let epilogue = quantized::Epilogue { residual, activation: self.activation };
                    matrix.multiply_with(x, nr, out, &epilogue, kernel);
                }
            }
        };
        let out = &mut out[..rows * cout];
        if threads > 1 && rows > block_rows {
            out.par_chunks_mut(block_rows * cout).enumerate().for_each(block)
        } else {
            block((0, out))
        }
    }
}

/// Where each row of a layer's input is: row r is the concatenation, over the `starts`, of the
/// `len` values at `x[start + r * stride..]`.
#[derive(Clone, Copy)]
pub struct Pieces<'a> {
    pub stride: usize,
    pub starts: &'a [usize],
    pub len: usize,
}

/// One inverted-residual block: an optional 1x1 expansion (with ReLU6), a depthwise convolution
/// (with ReLU6) and a linear 1x1 projection, with the input added back when `residual`.
pub struct InvertedResidual {
    pub expand: Option<Pointwise>,
    pub depthwise: ConvWeights,
    pub project: Pointwise,
    pub residual: bool,
}

impl InvertedResidual {
    /// Whether a pass runs this block fused, on maps `w` wide: row by row, each expanded row
    /// made once into a ring of `kernel` rows, read there by the depthwise rows that need it
    /// while it is still in cache, each depthwise row projected at once. The six-times-wider
    /// expansion then never goes out to memory, which on the wide maps is most of the block's
    /// time; on narrow ones a band of it stays in cache anyway, and a row is too few pixels
    /// for the products to pay their way. A block without an expansion (MobileNet's first)
    /// projects each depthwise row as it is made, likewise.
    fn fused(&self, w: usize) -> bool {
        w >= FUSED_MIN_WIDTH
    }

    /// Floats of the ring of expanded rows on maps `w` wide (none without an expansion).
    fn ring_len(&self, w: usize) -> usize {
        self.expand.as_ref().map_or(0, |_| self.depthwise.kernel * w * self.depthwise.in_ch)
    }

    /// Floats a thread needs for [`InvertedResidual::fused_rows`] on maps `w` wide.
    fn fused_scratch(&self, w: usize) -> usize {
        let (c, (_, ow)) = (self.depthwise.in_ch, self.depthwise.output_hw(1, w));
        self.ring_len(w) + ow * c
    }

    /// The block's output rows `rows` (counted over the batch) into `out`, fused (see
    /// [`InvertedResidual::fused`]); x: the block's input, (batch, h, w, in), all of it.
    /// `scratch`: [`InvertedResidual::fused_scratch`] floats.
    #[allow(clippy::too_many_arguments)]
    fn fused_rows(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let dw = &self.depthwise;
        let (c, c_out) = (dw.in_ch, self.project.out_ch);
        let c_in = self.expand.as_ref().map_or(c, |e| e.in_ch);
        let (oh, ow) = dw.output_hw(h, w);
        let (k, s) = (dw.kernel, dw.stride);
        let pad_top = dw.padding.before(h, k, s);
        let (ring, dw_row) = scratch.split_at_mut(self.ring_len(w));
        let dw_row = &mut dw_row[..ow * c];
        // The input row (counted over the batch) each slot of the ring holds.
        let mut held = [usize::MAX; MAX_KERNEL];
        for r in rows.clone() {
            let (b, oy) = (r / oh, r % oh);
            let image = &x[b * h * w * c_in..(b + 1) * h * w * c_in];
            match &self.expand {
                Some(expand) => {
                    for iy in (oy * s).saturating_sub(pad_top)..(oy * s + k - pad_top).min(h) {
                        // A window's rows are k in a row, so each has a slot of its own.
                        let slot = iy % k;
                        if held[slot] != b * h + iy {
                            let into = &mut ring[slot * w * c..(slot + 1) * w * c];
                            expand.run(&image[iy * w * c_in..(iy + 1) * w * c_in], w, None, into, 1);
                            held[slot] = b * h + iy;
                        }
                    }
                    dw.depthwise_row(
                        RowSource { x: ring, rows: Rows::Ring(k), h, w },
                        oy,
                        0..ow,
                        dw_row,
                        Kernel::Fastest,
                    );
                }
                None => dw.depthwise_row(RowSource::image(image, h, w), oy, 0..ow, dw_row, Kernel::Fastest),
            }
            // A residual block keeps the shape: its output row oy adds input row oy.
            let residual = self.residual.then(|| &image[oy * w * c_in..(oy + 1) * w * c_in]);
            let at = (r - rows.start) * ow * c_out;
            self.project.run(dw_row, ow, residual, &mut out[at..at + ow * c_out], 1);
        }
    }
}

/// A stem, inverted-residual blocks and a 1x1 head, ending in a global average pool (and, with
/// [`MobileNet::pooled_then`], a last dense layer): the body of EfficientNet-Lite and of
/// MobileNetV2, which differ only in their tables and final layer. Element-wise ops in candle
/// would each be a pass over memory and a round of thread synchronisation; here bias, residual
/// and ReLU6 ride along with the convolutions, and the buffers of a pass are reused throughout.
pub struct MobileNet {
    stem: ConvWeights,
    blocks: Vec<InvertedResidual>,
    head: Pointwise,
    /// The buffers of each pass in flight, kept for the next call.
    scratch: Mutex<Vec<[Vec<f32>; BUFFERS]>>,
}

impl MobileNet {
    /// Refuses layers that do not take what the one before gives: a pass slices its buffers by
    /// these counts.
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
        Ok(MobileNet { stem, blocks, head, scratch: Mutex::new(Vec::new()) })
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
    /// averaged over the pixels.
    pub fn pooled(&self, input: &[f32], batch: usize, h: usize, w: usize) -> Vec<f32> {
        self.run(input, batch, h, w, None)
    }

    /// What [`MobileNet::pooled`] returns, through one more dense layer `last` (a classifier, a
    /// style bottleneck): (batch, last.out_ch). At batch 1 a team shares out `last`'s panels of
    /// columns (an int8 layer runs on one thread): a classifier's weights (5 MB for a thousand
    /// classes) are the largest layer a pass reads, for one product of one row, which on one
    /// thread took a twentieth of the pass. A team over several images (more cores than
    /// images) runs it on one thread.
    pub fn pooled_then(&self, input: &[f32], batch: usize, h: usize, w: usize, last: &Pointwise) -> Vec<f32> {
        assert_eq!(last.in_ch, self.head.out_ch, "the last layer does not take the pooled features");
        self.run(input, batch, h, w, Some(last))
    }

    fn run(&self, input: &[f32], batch: usize, h: usize, w: usize, last: Option<&Pointwise>) -> Vec<f32> {
        let image = h * w * self.stem.in_ch;
        assert_eq!(input.len(), batch * image, "input is not (batch, h, w, channels)");
        let threads = rayon::current_num_threads();
        let features = self.head.out_ch;
        if batch > 1 && batch >= threads {
            // One image per thread, each through the whole network: no hand-offs between
            // layers, and each thread's activations stay in its own cache (also on one thread,
            // where a whole batch's would not).
            let mut pooled = vec![0f32; batch * features];
            pooled.par_chunks_mut(features).zip(input.par_chunks(image)).for_each(|(pooled, image)| {
                let mut buffers = self.take_scratch(1, h, w, 1, 0);
                self.forward(image, 1, h, w, &Team::alone(), &Buffers::new(&mut buffers), None);
                pooled.copy_from_slice(&buffers[POOLED_BUFFER][..features]);
                self.scratch.lock().unwrap_or_else(|e| e.into_inner()).push(buffers);
            });
            // The last layer over the whole batch at once: its weights read once per tile of
            // images, not once per image.
            let Some(last) = last else { return pooled };
            let mut out = vec![0f32; batch * last.out_ch];
            last.run(&pooled, batch, None, &mut out, threads);
            return out;
        }
        // Only one team at a time, and never from inside the pool: a team needs every pool
        // thread, and two waiting for each other's would wait for ever. Nor while the cores are
        // taken by other work (see `TEAM_STALLS`). Otherwise the pass runs on the calling thread.
        let team_lock = TEAM.try_lock();
        let as_team =
            threads > 1 && team_lock.is_ok() && rayon::current_thread_index().is_none() && !TEAM_STALLS.skip();
        let last_len = last.map_or(0, |l| batch * l.out_ch);
        let mut buffers = self.take_scratch(batch, h, w, if as_team { threads } else { 1 }, last_len);
        let shared = Buffers::new(&mut buffers);
        if as_team {
            let barrier = SpinBarrier::new(threads);
            rayon::broadcast(|ctx| {
                let team = Team { index: ctx.index(), size: ctx.num_threads(), barrier: Some(&barrier) };
                self.forward(input, batch, h, w, &team, &shared, last);
            });
            TEAM_STALLS.after_team_pass(barrier.stalls.load(Ordering::Relaxed) >= STALLS_TO_GO_ALONE);
        } else {
            self.forward(input, batch, h, w, &Team::alone(), &shared, last);
        }
        drop(team_lock);
        let out = match last {
            Some(_) => buffers[LAST_BUFFER][..last_len].to_vec(),
            None => buffers[POOLED_BUFFER][..batch * features].to_vec(),
        };
        self.scratch.lock().unwrap_or_else(|e| e.into_inner()).push(buffers);
        out
    }

    /// The 1x1 layers in the order [`MobileNet::observe_pointwise_inputs`] numbers them: each
    /// block's expansion (if it has one) and projection, then the head.
    pub fn pointwise_layers(&self) -> impl Iterator<Item = &Pointwise> {
        self.blocks.iter().flat_map(|b| b.expand.iter().chain([&b.project])).chain([&self.head])
    }

    /// A pass over `batch` images, whole layer by whole layer, that hands each 1x1 layer's input
    /// to `observe` with the layer's number (what calibrating an int8 copy of the network
    /// measures) and returns what [`MobileNet::pooled`] does (the reference its fused, banded
    /// pass is tested against).
    pub fn observe_pointwise_inputs(
        &self,
        input: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        observe: &mut dyn FnMut(usize, &[f32]),
    ) -> Vec<f32> {
        assert_eq!(input.len(), batch * h * w * self.stem.in_ch, "input is not (batch, h, w, channels)");
        let threads = candle_core::utils::get_num_threads();
        let (in_h, in_w) = (h, w);
        let (mut h, mut w) = self.stem.output_hw(in_h, in_w);
        let mut x = vec![0f32; batch * h * w * self.stem.out_ch];
        self.stem.run(input, batch, in_h, in_w, &mut x);
        let mut layer = 0;
        let mut pointwise = |pw: &Pointwise, x: &[f32], residual: Option<&[f32]>, layer: &mut usize| {
            observe(*layer, x);
            *layer += 1;
            let rows = x.len() / pw.in_ch;
            let mut out = vec![0f32; rows * pw.out_ch];
            pw.run(x, rows, residual, &mut out, threads);
            out
        };
        for block in &self.blocks {
            let expanded = match &block.expand {
                Some(expand) => pointwise(expand, &x, None, &mut layer),
                None => x.clone(),
            };
            let dw = &block.depthwise;
            let (oh, ow) = dw.output_hw(h, w);
            let mut y = vec![0f32; batch * oh * ow * dw.out_ch];
            dw.run(&expanded, batch, h, w, &mut y);
            x = pointwise(&block.project, &y, block.residual.then_some(&x), &mut layer);
            (h, w) = (oh, ow);
        }
        let head = pointwise(&self.head, &x, None, &mut layer);
        let mut pooled = vec![0f32; batch * self.head.out_ch];
        average_pool(&head, h * w, self.head.out_ch, &mut pooled);
        pooled
    }

    /// Floats each thread needs for the fused blocks of a pass over h x w images.
    fn fused_scratch(&self, h: usize, w: usize) -> usize {
        let (mut h, mut w) = self.stem.output_hw(h, w);
        let mut most = 0;
        for block in &self.blocks {
            if block.fused(w) {
                most = most.max(block.fused_scratch(w));
            }
            (h, w) = block.depthwise.output_hw(h, w);
        }
        most
    }

    /// The buffers of a pass over `batch` images, each long enough for the tensors
    /// [`MobileNet::forward`] puts in it (found by walking the same assignment).
    /// `last`: the floats of the last layer's output, if the pass has one.
    fn take_scratch(&self, batch: usize, h: usize, w: usize, threads: usize, last: usize) -> [Vec<f32>; BUFFERS] {
        let alone = threads == 1;
        let mut buffers = self.scratch.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        let mut lens = [0usize; BUFFERS];
        lens[FUSED_BUFFER] = threads * self.fused_scratch(h, w);
        lens[POOLED_BUFFER] = batch * self.head.out_ch;
        lens[LAST_BUFFER] = last;
        let mut need = |buffer: usize, len: usize| lens[buffer] = lens[buffer].max(batch * len);
        let (mut h, mut w) = self.stem.output_hw(h, w);
        let mut x = 0;
        need(x, h * w * self.stem.out_ch);
        for (i, block) in self.blocks.iter().enumerate() {
            if block.expand.is_some() && !block.fused(w) {
                need(expansion_buffer(alone, i, x), h * w * block.depthwise.in_ch);
            }
            let fused = block.fused(w);
            (h, w) = block.depthwise.output_hw(h, w);
            if !fused {
                need(DEPTHWISE_BUFFER, h * w * block.depthwise.out_ch);
            }
            need(1 - x, h * w * block.project.out_ch);
            x = 1 - x;
        }
        need(expansion_buffer(alone, self.blocks.len(), x), h * w * self.head.out_ch);
        for (buffer, len) in buffers.iter_mut().zip(lens) {
            ensure(buffer, len);
        }
        buffers
    }

    /// The network over `batch` images. Each thread of the team owns a band of every layer's
    /// output (rows, or pixels where the maps are narrow) and keeps it through the next layers
    /// that need only those pixels (a projection, the next expansion); it waits for the others
    /// where a depthwise convolution reads the rows around its band (before a fused block, its
    /// expansion does), before thread 0 pools the head's output into the pooled buffer, and
    /// before the `last` layer over that goes into the last buffer, its columns shared out at
    /// batch 1.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        input: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        team: &Team,
        buffers: &Buffers,
        last: Option<&Pointwise>,
    ) {
        // Why each step may touch what it does (SAFETY for the unsafe blocks below): a thread
        // writes only its own band of one buffer per step and reads only its own band (as a
        // slice of that band alone: others may be writing theirs), except that a depthwise
        // convolution reads all of its input after the barrier in front of it, and so may a
        // residual (the bands of pixels after that barrier need not be the block's input's);
        // after the head's barrier thread 0 alone reads the head's output and writes the pooled
        // features, which the last layer reads after a barrier of its own, each thread writing
        // its own columns of the last buffer.
        // Its input is written again only two blocks later (the expansions alternate between
        // two buffers), by which time every thread has passed the next barrier; the block
        // outputs alternate between two buffers likewise. A thread alone needs none of that:
        // the block's expansion goes where its output will, which is free until the projection.
        // A fused block reads all of its input after the barrier in front of it and writes its
        // band of the other block buffer, which every thread has finished reading by then (it
        // held the input of the block before, or of the one before that); its expansions and
        // depthwise rows stay in the thread's own part of the fused buffer.
        let (mut x, d) = (0, DEPTHWISE_BUFFER);
        let alone = team.size == 1;
        let spare = |x: usize| 1 - x;
        let expansion = |i: usize, x: usize| expansion_buffer(alone, i, x);
        let (in_h, in_w) = (h, w);
        let (mut h, mut w) = self.stem.output_hw(in_h, in_w);
        // This thread's band of the stem's output rows (counted over the batch); `pixels` is
        // its band of the current tensor's pixels, counted over the batch row after row.
        let band = team.share(batch * h);
        let row_len = w * self.stem.out_ch;
        self.stem.run_rows(input, batch, in_h, in_w, band.clone(), unsafe { buffers.rows(x, band.clone(), row_len) });
        let mut pixels = band.start * w..band.end * w;
        let mut ch = self.stem.out_ch;
        let fused_len = self.fused_scratch(in_h, in_w);
        for (i, block) in self.blocks.iter().enumerate() {
            let dw = &block.depthwise;
            let (oh, ow) = dw.output_hw(h, w);
            let out_ch = block.project.out_ch;
            if block.fused(w) {
                // It reads the rows around its band of the block's input: wait for them.
                team.wait();
                let band = team.share(batch * oh);
                let scratch = unsafe { buffers.rows(FUSED_BUFFER, team.index..team.index + 1, fused_len) };
                let out = unsafe { buffers.rows(spare(x), band.clone(), ow * out_ch) };
                block.fused_rows(unsafe { buffers.all(x) }, h, w, band.clone(), out, scratch);
                x = spare(x);
                pixels = band.start * ow..band.end * ow;
                (h, w, ch) = (oh, ow, out_ch);
                continue;
            }
            let dw_input = match &block.expand {
                Some(expand) => {
                    let e = expansion(i, x);
                    let input = unsafe { buffers.part(x, pixels.start * ch..pixels.end * ch) };
                    let out = unsafe { buffers.rows(e, pixels.clone(), expand.out_ch) };
                    expand.run(input, pixels.len(), None, out, 1);
                    e
                }
                None => x,
            };
            team.wait();
            // Bands of pixels, not of rows: a 7x7 map's seven rows split four to three, its
            // 49 pixels 25 to 24.
            pixels = team.share(batch * oh * ow);
            let out = unsafe { buffers.rows(d, pixels.clone(), dw.out_ch) };
            dw.run_pixels(unsafe { buffers.all(dw_input) }, batch, h, w, pixels.clone(), out);
            let residual =
                block.residual.then(|| unsafe { buffers.part(x, pixels.start * out_ch..pixels.end * out_ch) });
            let input = unsafe { buffers.part(d, pixels.start * dw.out_ch..pixels.end * dw.out_ch) };
            let out = unsafe { buffers.rows(spare(x), pixels.clone(), out_ch) };
            block.project.run(input, pixels.len(), residual, out, 1);
            x = spare(x);
            (h, w, ch) = (oh, ow, out_ch);
        }
        let features = self.head.out_ch;
        let head = expansion(self.blocks.len(), x);
        let input = unsafe { buffers.part(x, pixels.start * ch..pixels.end * ch) };
        self.head.run(input, pixels.len(), None, unsafe { buffers.rows(head, pixels, features) }, 1);
        team.wait();
        let pooled_len = batch * features;
        if team.index == 0 {
            let pooled = unsafe { buffers.rows(POOLED_BUFFER, 0..1, pooled_len) };
            average_pool(unsafe { buffers.all(head) }, h * w, features, pooled);
        }
        let Some(last) = last else { return };
        match last.packed() {
            Some(matrix) if team.size > 1 && batch == 1 => {
                team.wait();
                // With fewer panels than threads some get none.
                let panels = team.share(matrix.panel_count());
                let columns = matrix.panel_columns(panels.clone());
                let pooled = unsafe { buffers.part(POOLED_BUFFER, 0..features) };
                last.run_panels(matrix, pooled, panels, unsafe { buffers.rows(LAST_BUFFER, columns, 1) });
            }
            _ if team.index == 0 => {
                let pooled = unsafe { buffers.part(POOLED_BUFFER, 0..pooled_len) };
                let out = unsafe { buffers.rows(LAST_BUFFER, 0..1, batch * last.out_ch) };
                last.run(pooled, batch, None, out, 1);
            }
            _ => {}
        }
    }
}

/// Each image's mean over its `pixels` pixels of `x` (images one after the other, `features`
/// channels last), into `pooled` (one row of features per image).
fn average_pool(x: &[f32], pixels: usize, features: usize, pooled: &mut [f32]) {
    for (b, sum) in pooled.chunks_exact_mut(features).enumerate() {
        sum.fill(0.0);
        for pixel in x[b * pixels * features..(b + 1) * pixels * features].chunks_exact(features) {
            sum.iter_mut().zip(pixel).for_each(|(s, p)| *s += p);
        }
        let n = pixels as f32;
        sum.iter_mut().for_each(|s| *s /= n);
    }
}

/// The buffers of one pass: block inputs and outputs in 0 and 1 by turns, expansions in 2 and 3
/// by turns (a team) or in whichever of 0 and 1 is free (alone), depthwise outputs in 4, each
/// thread's scratch for fused blocks in 5, the pooled features in 6 and the last layer's output
/// in 7.
const BUFFERS: usize = 8;
const DEPTHWISE_BUFFER: usize = 4;
const FUSED_BUFFER: usize = 5;
const POOLED_BUFFER: usize = 6;
const LAST_BUFFER: usize = 7;
/// Maps at least this wide run their blocks fused ([`InvertedResidual::fused`]).
const FUSED_MIN_WIDTH: usize = 28;

/// Where block `i`'s expansion goes, the block's input being in buffer `x`.
fn expansion_buffer(alone: bool, i: usize, x: usize) -> usize {
    if alone {
        1 - x
    } else {
        2 + i % 2
    }
}

/// Held while a team runs (see [`MobileNet::pooled`]).
static TEAM: Mutex<()> = Mutex::new(());

/// Whether the next passes should run alone. A team whose members are not all on a core at once
/// (another process holds one) waits at every barrier for a descheduled thread, about a hundred
/// times a pass: on 2 cores beside one busy process, batch 1 fell from 360 images/s to 74-152,
/// below one thread's speed. A pass with waits that spun to the end is taken as that sign; the
/// passes after it run on one thread, twice as many after each further stalled try, until a team
/// pass gathers cleanly again (measured: 193-198 images/s beside the busy process, onnxruntime
/// 177-185; unchanged alone).
static TEAM_STALLS: TeamStalls = TeamStalls { alone_left: AtomicUsize::new(0), backoff: AtomicUsize::new(0) };

/// Barriers in one pass with a wait that spun to the end before the pass counts as stalled: one
/// alone can be a pool thread slow to wake for the pass (a virtual CPU that was halted).
const STALLS_TO_GO_ALONE: usize = 2;

/// Passes run alone after the first stalled team pass, and at most after many in a row.
const ALONE_AFTER_STALL: usize = 16;
const ALONE_AFTER_STALL_MAX: usize = 1024;

struct TeamStalls {
    /// Passes still to run alone.
    alone_left: AtomicUsize,
    /// How many passes alone the next stall brings (0: the first stall's).
    backoff: AtomicUsize,
}

impl TeamStalls {
    /// True for a pass that should run alone (and counts it).
    fn skip(&self) -> bool {
        self.alone_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    }

    fn after_team_pass(&self, stalled: bool) {
        if !stalled {
            self.backoff.store(0, Ordering::Relaxed);
            return;
        }
        let passes = self.backoff.load(Ordering::Relaxed).max(ALONE_AFTER_STALL);
        self.alone_left.store(passes, Ordering::Relaxed);
        self.backoff.store((2 * passes).min(ALONE_AFTER_STALL_MAX), Ordering::Relaxed);
    }
}

/// The threads running one pass together: this one's index among them, and how they wait for
/// each other between layers.
struct Team<'a> {
    index: usize,
    size: usize,
    barrier: Option<&'a SpinBarrier>,
}

impl Team<'_> {
    fn alone() -> Self {
        Team { index: 0, size: 1, barrier: None }
    }

    /// This thread's share of `total` rows, pixels or panels.
    fn share(&self, total: usize) -> std::ops::Range<usize> {
        let at = |i: usize| total * i / self.size;
        at(self.index)..at(self.index + 1)
    }

    fn wait(&self) {
        if let Some(barrier) = self.barrier {
            barrier.wait()
        }
    }
}

/// A barrier whose waiters spin (then yield) rather than sleep: at batch 1 a layer takes tens of
/// microseconds, about what waking a sleeping thread costs on a virtual machine, so a pool that
/// sleeps between layers loses most of what a second thread brings. onnxruntime's pool spins
/// for the same reason.
struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Barriers at which some wait spun through the whole spin phase (about a millisecond, tens
    /// of layers' time): a party was off its core.
    stalls: AtomicUsize,
    /// The generation of the last barrier counted in `stalls`.
    stalled_generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        SpinBarrier {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            stalls: AtomicUsize::new(0),
            stalled_generation: AtomicUsize::new(usize::MAX),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.store(generation.wrapping_add(1), Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 1 << 16 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                // Someone in the team is descheduled or busy with other work: stop burning the
                // core it may need.
                if spins == 1 << 16 {
                    // Once per barrier, however many of the team wait at it.
                    if self.stalled_generation.swap(generation, Ordering::Relaxed) != generation {
                        self.stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    spins += 1;
                }
                std::thread::yield_now();
            }
        }
    }
}

/// A pass's buffers, shared by a team: each thread writes its own rows of one of them.
struct Buffers {
    parts: [(*mut f32, usize); BUFFERS],
}

// SAFETY: the pointers come from `Vec`s that outlive every use (see `MobileNet::pooled`); the
// threads' accesses are disjoint or ordered by the team's barrier (see `MobileNet::forward`).
unsafe impl Sync for Buffers {}

impl Buffers {
    fn new(buffers: &mut [Vec<f32>; BUFFERS]) -> Self {
        Buffers { parts: std::array::from_fn(|i| (buffers[i].as_mut_ptr(), buffers[i].len())) }
    }

    /// # Safety
    /// No thread may write buffer `i` while the slice lives.
    unsafe fn all(&self, i: usize) -> &[f32] {
        let (ptr, len) = self.parts[i];
        std::slice::from_raw_parts(ptr, len)
    }

    /// Values `range` of buffer `i`.
    ///
    /// # Safety
    /// No thread may write those values while the slice lives.
    unsafe fn part(&self, i: usize, range: std::ops::Range<usize>) -> &[f32] {
        let (ptr, len) = self.parts[i];
        assert!(range.start <= range.end && range.end <= len, "scratch buffer too short");
        std::slice::from_raw_parts(ptr.add(range.start), range.len())
    }

    /// Rows `rows` of `row_len` values of buffer `i`.
    ///
    /// # Safety
    /// No other thread may touch those rows, nor this one read them elsewhere, while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, i: usize, rows: std::ops::Range<usize>, row_len: usize) -> &mut [f32] {
        let (ptr, len) = self.parts[i];
        assert!(rows.end * row_len <= len, "scratch buffer too short");
        std::slice::from_raw_parts_mut(ptr.add(rows.start * row_len), rows.len() * row_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pseudo_random as numbers;

    fn conv(
        c_out: usize,
        c_in: usize,
        k: usize,
        stride: usize,
        depthwise: bool,
        relu6: bool,
        seed: u32,
    ) -> ConvWeights {
        let dev = candle_core::Device::Cpu;
        let weight = Tensor::from_vec(numbers(c_out * c_in * k * k, seed), (c_out, c_in, k, k), &dev).unwrap();
        let bias = Tensor::from_vec(numbers(c_out, seed + 1), c_out, &dev).unwrap();
        ConvWeights::new(&weight, &bias, stride, depthwise, relu6).unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    }

    /// The AVX-512 and AVX2 tiles (where the build has them) and the portable ones against the definition,
    /// on shapes that exercise every edge: channels short of, equal to and past a block of 16,
    /// widths of 1 and widths that leave part of a tile, rows where the window sticks out at the
    /// top and bottom, both strides and both kernel sizes, each activation and both paddings.
    #[test]
    fn depthwise_tiles_match_the_definition_on_odd_shapes() {
        let mut seed = 0;
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            for c in [1, 5, 16, 21, 37] {
                for ((h, w), activation, padding) in
                    [(1, 1), (3, 2), (6, 7), (2, 9), (5, 13), (4, 17), (7, 40), (8, 18)]
                        .into_iter()
                        .flat_map(|size| [Activation::Relu6, Activation::Identity, Activation::Relu].map(|a| (size, a)))
                        .flat_map(|(size, a)| [Padding::Same, Padding::Symmetric].map(|p| (size, a, p)))
                {
                    seed += 3;
                    let dw = conv(c, 1, k, s, true, false, seed).with(activation, padding);
                    let x: Vec<f32> = numbers(h * w * c, seed + 2).iter().map(|v| v * 4.0).collect();
                    let (oh, ow) = dw.output_hw(h, w);
                    for oy in 0..oh {
                        let mut want = vec![0f32; ow * c];
                        dw.depthwise_row(RowSource::image(&x, h, w), oy, 0..ow, &mut want, Kernel::Plain);
                        // The whole row, and a part of it (what a team's band that starts or
                        // ends inside a row asks for).
                        for cols in [0..ow, ow / 3..ow - ow / 4] {
                            let n = cols.len() * c;
                            for kernel in Kernel::built() {
                                // Values past the pixels must survive: the masked tiles write only theirs.
                                let mut got = vec![f32::NAN; n + 3];
                                dw.depthwise_row(RowSource::image(&x, h, w), oy, cols.clone(), &mut got, kernel);
                                assert!(got[n..].iter().all(|v| v.is_nan()), "{kernel:?} wrote past the pixels");
                                let diff = max_diff(&got[..n], &want[cols.start * c..cols.end * c]);
                                assert!(
                                    diff < 1e-5,
                                    "{kernel:?} k{k} s{s} c{c} {h}x{w} {activation:?} {padding:?} row {oy} {cols:?}: {diff}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 and AVX2 tiles (where the build has them) and the portable product against the
    /// definition: output widths short of, between and past the 16-lane registers and the
    /// 48-lane panels, row counts that leave a short tile, with a residual and ReLU6 or without,
    /// on one thread and on several.
    #[test]
    fn pointwise_matches_the_definition_on_odd_shapes() {
        let dev = candle_core::Device::Cpu;
        for (cin, cout) in [(1, 1), (3, 5), (27, 16), (16, 24), (40, 47), (96, 100), (7, 145)] {
            for rows in [1, 7, 8, 9, 30, 100] {
                for (relu6, with_residual) in [(true, false), (false, true), (true, true)] {
                    let seed = (cin * 1000 + cout * 10 + rows) as u32;
                    let weights = numbers(cout * cin, seed);
                    let weight = Tensor::from_vec(weights.clone(), (cout, cin), &dev).unwrap();
                    let bias = Tensor::from_vec(numbers(cout, seed + 1), cout, &dev).unwrap();
                    let layer = Pointwise::new(&weight, &bias, relu6).unwrap();
                    let x: Vec<f32> = numbers(rows * cin, seed + 2).iter().map(|v| v * 3.0).collect();
                    let residual = numbers(rows * cout, seed + 3);
                    let residual = with_residual.then_some(residual.as_slice());
                    let mut want = vec![0f32; rows * cout];
                    for (r, o) in (0..rows).flat_map(|r| (0..cout).map(move |o| (r, o))) {
                        let mut v = layer.bias[o] + residual.map_or(0.0, |res| res[r * cout + o]);
                        v += (0..cin).map(|k| x[r * cin + k] * weights[o * cin + k]).sum::<f32>();
                        want[r * cout + o] = if relu6 { v.clamp(0.0, 6.0) } else { v };
                    }
                    for kernel in Kernel::built() {
                        for threads in [1, 3] {
                            let mut got = vec![f32::NAN; rows * cout + 2];
                            layer.run_with(&x, layer.whole_rows(), rows, residual, &mut got, threads, kernel);
                            assert!(got[rows * cout..].iter().all(|v| v.is_nan()), "{kernel:?} wrote past the output");
                            let diff = max_diff(&got[..rows * cout], &want);
                            assert!(
                                diff < 1e-4,
                                "{kernel:?} {rows}x{cin} -> {cout}, relu6 {relu6}, residual {with_residual}, \
                                 {threads} threads: max diff {diff}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn pointwise(c_out: usize, c_in: usize, relu6: bool, seed: u32) -> Pointwise {
        let dev = candle_core::Device::Cpu;
        let weight: Vec<f32> = numbers(c_out * c_in, seed).iter().map(|v| v * 0.3).collect();
        let weight = Tensor::from_vec(weight, (c_out, c_in), &dev).unwrap();
        Pointwise::new(&weight, &Tensor::from_vec(numbers(c_out, seed + 1), c_out, &dev).unwrap(), relu6).unwrap()
    }

    /// A stem, a block without expansion (with its residual), blocks at both strides and
    /// kernel sizes, and a 1x1 head of 40 features.
    fn small_network() -> MobileNet {
        let block = |c_in: usize, expanded: Option<usize>, c_out: usize, k: usize, s: usize, seed: u32| {
            let c = expanded.unwrap_or(c_in);
            InvertedResidual {
                expand: expanded.map(|e| pointwise(e, c_in, true, seed)),
                depthwise: conv(c, 1, k, s, true, true, seed + 2),
                project: pointwise(c_out, c, false, seed + 4),
                residual: c_in == c_out && s == 1,
            }
        };
        let blocks = vec![
            block(8, None, 8, 3, 1, 10),
            block(8, Some(24), 12, 3, 2, 20),
            block(12, Some(36), 12, 5, 1, 30),
            block(12, Some(36), 20, 5, 2, 40),
        ];
        MobileNet::new(conv(8, 3, 3, 2, false, true, 1), blocks, pointwise(40, 20, true, 50)).unwrap()
    }

    /// A pass split over the pool's threads (a team at batch 1, an image per thread for larger
    /// batches) gives what one thread alone gives, also where some thread's band is empty or
    /// starts inside a row, and through a last layer whose columns the team shares out.
    #[test]
    fn a_team_pass_equals_a_pass_alone() {
        let net = small_network();
        // Four panels of columns: a team at batch 1 shares them out.
        let last = pointwise(150, 40, false, 60);
        for (batch, h, w) in [(1, 37, 29), (1, 3, 2), (3, 16, 16)] {
            let input = numbers(batch * h * w * 3, (h * w) as u32);
            // A stall elsewhere in the tests (the cores are shared) must not make this pass alone.
            TEAM_STALLS.alone_left.store(0, Ordering::Relaxed);
            let pooled = net.pooled(&input, batch, h, w);
            TEAM_STALLS.alone_left.store(0, Ordering::Relaxed);
            let through = net.pooled_then(&input, batch, h, w, &last);
            let mut buffers = net.take_scratch(batch, h, w, 1, batch * last.out_ch);
            net.forward(&input, batch, h, w, &Team::alone(), &Buffers::new(&mut buffers), Some(&last));
            let alone = &buffers[POOLED_BUFFER][..pooled.len()];
            assert!(max_diff(&pooled, alone) < 1e-6, "{batch}x{h}x{w}: {pooled:?} vs {alone:?}");
            assert!(alone.iter().any(|v| *v != 0.0));
            let alone_through = &buffers[LAST_BUFFER][..through.len()];
            assert!(max_diff(&through, alone_through) < 1e-6, "{batch}x{h}x{w} through the last layer");
            let mut want = vec![0f32; batch * last.out_ch];
            last.run(&pooled, batch, None, &mut want, 1);
            assert!(max_diff(&through, &want) < 1e-5, "{batch}x{h}x{w}: the last layer is not of the pooled features");
        }
    }

    /// Teams of any size over several images (what a machine with more cores than the batch
    /// has), run here on threads of their own: every band, of rows in the fused blocks and of
    /// pixels in the others, across images and inside rows, gives what one thread alone gives.
    #[test]
    fn teams_of_any_size_over_several_images_equal_a_pass_alone() {
        let net = small_network();
        let last = pointwise(150, 40, false, 60);
        // 61 wide: the first two blocks fused (31 wide), the others not.
        // At batch 1 the last layer's four panels are shared out: one each on 3 threads, some
        // threads without one on 5.
        for (batch, h, w, size) in [(2, 23, 61, 3), (3, 9, 13, 2), (1, 30, 61, 5), (1, 17, 40, 3), (2, 5, 7, 4)] {
            let input = numbers(batch * h * w * 3, (h * w + size) as u32);
            let mut alone = net.take_scratch(batch, h, w, 1, batch * last.out_ch);
            net.forward(&input, batch, h, w, &Team::alone(), &Buffers::new(&mut alone), Some(&last));
            let mut team = net.take_scratch(batch, h, w, size, batch * last.out_ch);
            let shared = Buffers::new(&mut team);
            let barrier = SpinBarrier::new(size);
            std::thread::scope(|scope| {
                for index in 0..size {
                    let (net, input, shared, barrier, last) = (&net, &input, &shared, &barrier, &last);
                    scope.spawn(move || {
                        let team = Team { index, size, barrier: Some(barrier) };
                        net.forward(input, batch, h, w, &team, shared, Some(last));
                    });
                }
            });
            for buffer in [POOLED_BUFFER, LAST_BUFFER] {
                let len = if buffer == POOLED_BUFFER { batch * 40 } else { batch * last.out_ch };
                let diff = max_diff(&team[buffer][..len], &alone[buffer][..len]);
                assert!(diff < 1e-5, "{batch}x{h}x{w} on {size} threads, buffer {buffer}: max diff {diff}");
            }
            assert!(alone[LAST_BUFFER][..batch * last.out_ch].iter().any(|v| *v != 0.0));
        }
    }

    /// After a stalled team pass the next passes run alone, twice as many after each stalled try
    /// in a row, up to a bound; a clean team pass starts the count over.
    #[test]
    fn a_stalled_team_runs_alone_for_a_while() {
        let stalls = TeamStalls { alone_left: AtomicUsize::new(0), backoff: AtomicUsize::new(0) };
        let alone_passes = |stalls: &TeamStalls| std::iter::from_fn(|| stalls.skip().then_some(())).count();
        assert_eq!(alone_passes(&stalls), 0, "a team until something stalls");
        stalls.after_team_pass(false);
        assert_eq!(alone_passes(&stalls), 0);
        let mut runs = Vec::new();
        for _ in 0..9 {
            stalls.after_team_pass(true);
            runs.push(alone_passes(&stalls));
        }
        assert_eq!(runs, [16, 32, 64, 128, 256, 512, 1024, 1024, 1024]);
        stalls.after_team_pass(false);
        stalls.after_team_pass(true);
        assert_eq!(alone_passes(&stalls), ALONE_AFTER_STALL, "a clean pass forgets the stalls before it");
    }

    /// The banded pass (fused blocks on wide maps, three passes on narrow ones; a team at batch
    /// 1, an image per thread for larger batches) against whole layers one after the other.
    #[test]
    fn a_pass_equals_its_layers_one_after_the_other() {
        let block = |c_in: usize, expanded: usize, c_out: usize, k: usize, s: usize, seed: u32| InvertedResidual {
            expand: Some(pointwise(expanded, c_in, true, seed)),
            depthwise: conv(expanded, 1, k, s, true, true, seed + 2),
            project: pointwise(c_out, expanded, false, seed + 4),
            residual: c_in == c_out && s == 1,
        };
        // First, a block without an expansion (run fused too), with its residual.
        let separable = InvertedResidual {
            expand: None,
            depthwise: conv(8, 1, 3, 1, true, true, 5),
            project: pointwise(8, 8, false, 7),
            residual: true,
        };
        let blocks = vec![
            separable,
            block(8, 24, 8, 3, 1, 10),
            block(8, 24, 12, 3, 2, 20),
            block(12, 36, 12, 5, 1, 30),
            block(12, 36, 20, 5, 2, 40),
            block(20, 40, 20, 3, 1, 50),
        ];
        let net = MobileNet::new(conv(8, 3, 3, 2, false, true, 1), blocks, pointwise(40, 20, true, 60)).unwrap();
        // 130 wide: fused at 65 and 33 wide, not at 17 and 9; 57 wide: fused at 29 only.
        for (batch, h, w) in [(1, 9, 130), (1, 61, 57), (3, 20, 130), (2, 3, 2)] {
            let input = numbers(batch * h * w * 3, (h * w) as u32);
            let want = net.observe_pointwise_inputs(&input, batch, h, w, &mut |_, _| {});
            let got = net.pooled(&input, batch, h, w);
            assert!(max_diff(&got, &want) < 1e-5, "{batch}x{h}x{w}: {got:?} vs {want:?}");
        }
    }

    /// PyTorch's padding against candle's convolution (which pads as PyTorch does), depthwise
    /// and dense, at both strides on even and odd sides: where the window starts differs from
    /// TensorFlow's at stride 2 on even sides.
    #[test]
    fn symmetric_padding_matches_pytorchs() {
        let dev = candle_core::Device::Cpu;
        for (k, s, c_in, c_out, h, w, depthwise) in
            [(3, 2, 5, 5, 8, 9, true), (5, 1, 3, 3, 6, 4, true), (3, 2, 3, 7, 10, 6, false), (3, 1, 2, 4, 5, 5, false)]
        {
            let conv = conv(c_out, if depthwise { 1 } else { c_in }, k, s, depthwise, false, (k * h) as u32)
                .with(Activation::Relu, Padding::Symmetric);
            let x = numbers(h * w * c_in, 5);
            let (oh, ow) = conv.output_hw(h, w);
            let mut got = vec![0f32; oh * ow * c_out];
            conv.run_on(&x, 1, h, w, &mut got, 1);
            let nchw = Tensor::from_vec(x, (1, h, w, c_in), &dev).unwrap().permute((0, 3, 1, 2)).unwrap();
            let weight = if depthwise {
                Tensor::from_vec(conv.weights.clone(), (k, k, c_out), &dev).unwrap().permute((2, 0, 1)).unwrap()
            } else {
                Tensor::from_vec(conv.weights.clone(), (k, k, c_in, c_out), &dev)
                    .unwrap()
                    .permute((3, 2, 0, 1))
                    .unwrap()
            };
            let weight = weight.reshape((c_out, if depthwise { 1 } else { c_in }, k, k)).unwrap();
            let bias = Tensor::from_vec(conv.bias.clone(), (1, c_out, 1, 1), &dev).unwrap();
            let want = nchw
                .contiguous()
                .unwrap()
                .conv2d(&weight.contiguous().unwrap(), k / 2, s, 1, if depthwise { c_in } else { 1 })
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
                .relu()
                .unwrap();
            assert_eq!(want.dims(), [1, c_out, oh, ow]);
            let want: Vec<f32> = want.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "k{k} s{s} {h}x{w} depthwise {depthwise}: max diff {diff}");
        }
    }

    /// A layer over rows made of pieces (two tensors side by side, read in place) equals the
    /// same layer over the rows copied together, for row counts that leave a short tile, on
    /// one thread and on several.
    #[test]
    fn pointwise_over_pieces_equals_pointwise_over_copies() {
        let dev = candle_core::Device::Cpu;
        for (rows, half, cout) in [(1, 3, 5), (13, 8, 17), (40, 21, 48), (9, 12, 100)] {
            let weight = Tensor::from_vec(numbers(cout * 2 * half, 3), (cout, 2 * half), &dev).unwrap();
            let bias = Tensor::from_vec(numbers(cout, 4), cout, &dev).unwrap();
            let layer = Pointwise::new(&weight, &bias, false).unwrap().with_activation(Activation::Relu);
            // Two blocks of (rows, half) one after the other: row r is block 0's row r, then block 1's.
            let blocks = numbers(2 * rows * half, rows as u32);
            let joined: Vec<f32> = (0..rows)
                .flat_map(|r| blocks[r * half..(r + 1) * half].iter().chain(&blocks[(rows + r) * half..][..half]))
                .copied()
                .collect();
            let residual = numbers(rows * cout, 6);
            let mut want = vec![0f32; rows * cout];
            layer.run(&joined, rows, Some(&residual), &mut want, 1);
            for threads in [1, 3] {
                let mut got = vec![0f32; rows * cout];
                let pieces = Pieces { stride: half, starts: &[0, rows * half], len: half };
                layer.run_pieces(&blocks, pieces, rows, Some(&residual), &mut got, threads);
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "{rows} rows of 2x{half} -> {cout} on {threads} threads: max diff {diff}");
            }
        }
    }

    /// A dense convolution (im2col and a product) against the definition, split over threads or
    /// not, for several images and row groups that do not divide the height.
    #[test]
    fn dense_convolution_matches_the_definition() {
        // Windows inside the image in place and at its edges through patches: odd and even
        // sides, edge rows and columns only (1 wide), and more channels than the specialised 1 and 3.
        for (k, s, c_in, c_out, h, w) in [
            (3, 2, 3, 32, 11, 9),
            (3, 1, 2, 5, 1, 4),
            (5, 2, 3, 17, 13, 1),
            (3, 2, 3, 32, 24, 30),
            (3, 1, 4, 9, 7, 13),
            (5, 1, 1, 16, 9, 8),
            (5, 2, 6, 20, 12, 17),
        ] {
            let dense = conv(c_out, c_in, k, s, false, true, (k * c_out) as u32);
            let batch = 2;
            let x = numbers(batch * h * w * c_in, 9);
            let (oh, ow) = dense.output_hw(h, w);
            let (pad_top, _) = same_padding(h, k, s);
            let (pad_left, _) = same_padding(w, k, s);
            let mut want = vec![0f32; batch * oh * ow * c_out];
            for b in 0..batch {
                for (oy, ox, co) in (0..oh).flat_map(|y| (0..ow).flat_map(move |x| (0..c_out).map(move |o| (y, x, o))))
                {
                    let mut acc = dense.bias[co];
                    for (ky, kx, ci) in (0..k).flat_map(|a| (0..k).flat_map(move |b| (0..c_in).map(move |c| (a, b, c))))
                    {
                        let (iy, ix) =
                            ((oy * s + ky) as isize - pad_top as isize, (ox * s + kx) as isize - pad_left as isize);
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            let v = x[((b * h + iy as usize) * w + ix as usize) * c_in + ci];
                            acc += v * dense.weights[((ky * k + kx) * c_in + ci) * c_out + co];
                        }
                    }
                    want[((b * oh + oy) * ow + ox) * c_out + co] = acc.clamp(0.0, 6.0);
                }
            }
            for threads in [1, 3] {
                let mut got = vec![0f32; want.len()];
                dense.run_on(&x, batch, h, w, &mut got, threads);
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "k{k} s{s} {h}x{w} on {threads} threads: max diff {diff}");
            }
        }
    }
}
