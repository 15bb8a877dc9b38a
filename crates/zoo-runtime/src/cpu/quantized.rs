//! int8 products for quantized 1x1 convolutions: weights stored once as signed 8-bit integers
//! with one scale per output column, activations quantized to unsigned 8-bit with a calibrated
//! scale and zero point as a tile's rows are read, products summed in 32-bit integers, and the
//! result turned back into floats with the bias, residual and ReLU6 as it is stored. On AVX-512
//! VNNI one `vpdpbusd` multiplies 64 byte pairs and adds them in groups of four, four times the
//! multiply-adds of an f32 FMA; AVX-VNNI (Intel's client CPUs since Alder Lake, which lack
//! AVX-512) has the same instruction on 256-bit registers; elsewhere the same codes, held as
//! floats, go through the f32 product.
//!
//! Unsigned activations times signed weights is what VNNI multiplies; the zero point folds into
//! a per-column constant (zero point times the column's weight sum), so no correction runs per
//! value.

use std::sync::OnceLock;

use super::packed::{self, Lhs, PackedMatrix, Start};
use super::{Activation, Kernel, LANES};

/// Columns per panel: three registers of 32-bit accumulators per row of a tile.
const PANEL_LANES: usize = 3 * LANES;
/// Columns per panel, for callers splitting a matrix into column blocks that fill whole panels.
pub const PANEL_COLUMNS: usize = PANEL_LANES;
/// Rows per tile: 8 rows of 3 registers are 24 accumulators, with 3 weights and a broadcast
/// (the 256-bit kernel takes a tile's rows 4 at a time, one 16-column register at a time).
#[cfg(int8_dot)]
const TILE_ROWS: usize = 8;
/// Consecutive matrix rows whose bytes one 32-bit lane holds (what one VNNI instruction sums).
const GROUP: usize = 4;

/// Adding 1.5 * 2^23 to a value in 0..=255 leaves its round-to-nearest-even in the low bits of
/// the sum: arithmetic only, so the loops that quantize vectorise (a saturating cast would not).
const ROUND: f32 = 12_582_912.0;

thread_local! {
    /// A tile's input codes, kept between calls: a fused block makes two products per row.
    #[cfg(int8_dot)]
    static CODES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The input codes as floats, for [`QuantizedMatrix::multiply_float`].
    static FLOAT_CODES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The input codes widened to 16 bits, for [`QuantizedMatrix::multiply_madd`].
    #[cfg(fma256)]
    static WIDE_CODES: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows per tile of the AVX2 product without VNNI: 4 rows of 2 registers are 8 accumulators;
/// with 2 weights, a broadcast and the product being added, 12 of the 16 registers.
#[cfg(fma256)]
const MADD_ROWS: usize = 4;
#[cfg(fma256)]
use super::avx2::LANES as AVX2_LANES;
/// Columns per tile of that product: two registers.
#[cfg(fma256)]
const MADD_COLUMNS: usize = 2 * AVX2_LANES;

/// The shift of [`QuantizedMatrix::multiply_dynamic`]'s codes: signed codes -127..=127 moved into
/// the unsigned bytes VNNI multiplies (the shift times each column's codes is taken off the sum).
const DYNAMIC_ZERO: u8 = 128;

/// A row's quantization for the dynamic product: symmetric about zero, its largest magnitude at
/// code 127 (an all-zero or non-finite row gets scale 1).
fn row_quantization(row: &[f32]) -> Quantization {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 1.0 };
    Quantization { scale, zero_point: DYNAMIC_ZERO }
}

/// How floats map to 8-bit codes: x ≈ scale * (code - zero_point), code in 0..=255.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantization {
    pub scale: f32,
    pub zero_point: u8,
}

impl Quantization {
    /// Codes for values in `min..=max`, widened to hold 0 exactly (zero padding and ReLU's zeros
    /// must stay zero).
    pub fn from_range(min: f32, max: f32) -> Self {
        let (min, max) = (min.min(0.0), max.max(0.0));
        if !(max - min).is_finite() || max - min <= f32::MIN_POSITIVE {
            return Quantization { scale: 1.0, zero_point: 0 };
        }
        let scale = (max - min) / 255.0;
        let zero_point = (-min / scale).round().clamp(0.0, 255.0) as u8;
        Quantization { scale, zero_point }
    }

    /// The nearest code of each value of `x` (clamped to the codes), into `codes`.
    pub fn quantize(&self, x: &[f32], codes: &mut [u8]) {
        let (inv, zero) = (1.0 / self.scale, self.zero_point as f32);
        for (code, &v) in codes.iter_mut().zip(x) {
            *code = Self::code_plus_round(v, inv, zero).to_bits() as u8;
        }
    }

    /// As [`Quantization::quantize`], each code widened to 16 bits.
    #[cfg(fma256)]
    pub fn quantize_to_wide(&self, x: &[f32], codes: &mut [i16]) {
        let (inv, zero) = (1.0 / self.scale, self.zero_point as f32);
        for (code, &v) in codes.iter_mut().zip(x) {
            *code = (Self::code_plus_round(v, inv, zero).to_bits() & 0xff) as i16;
        }
    }

    /// As [`Quantization::quantize`], each code as a float.
    pub fn quantize_to_floats(&self, x: &[f32], codes: &mut [f32]) {
        let (inv, zero) = (1.0 / self.scale, self.zero_point as f32);
        for (code, &v) in codes.iter_mut().zip(x) {
            *code = Self::code_plus_round(v, inv, zero) - ROUND;
        }
    }

    /// v's code plus ROUND, which holds the code in its low bits.
    #[inline(always)]
    fn code_plus_round(v: f32, inv: f32, zero: f32) -> f32 {
        v.mul_add(inv, zero).clamp(0.0, 255.0) + ROUND
    }

    pub fn dequantize(&self, code: u8) -> f32 {
        self.scale * (code as f32 - self.zero_point as f32)
    }
}

/// Columns `first..first + width` of the weights: for each group of GROUP matrix rows, each
/// column's GROUP bytes, columns padded to whole registers.
struct Panel {
    first: usize,
    width: usize,
    weights: Vec<i8>,
}

impl Panel {
    fn registers(&self) -> usize {
        self.width.div_ceil(LANES)
    }
}

/// A (rows, cols) float matrix quantized per column, for products with inputs quantized as
/// `input`: out = x * W + bias, computed as codes(x) * codes(W) rescaled.
pub struct QuantizedMatrix {
    panels: Vec<Panel>,
    pub rows: usize,
    pub cols: usize,
    input: Quantization,
    /// input scale times the column's weight scale: what one unit of the integer sum is worth.
    unit: Vec<f32>,
    /// The bias less the zero point's share of the sum (zero point times the column's codes).
    offset: Vec<f32>,
    /// For [`QuantizedMatrix::multiply_dynamic`] only (boxed: the static matrices sit in the
    /// vision networks' layer enums, which should not grow for it).
    dynamic: Option<Box<DynamicTerms>>,
    /// The weights' codes in the other paths' forms (boxed, as `dynamic` is).
    other_forms: Box<OtherForms>,
}

/// The weights' codes for the paths without an integer dot product: each made when the matrix
/// is where that is the build's path, else the first time a test asks for it.
struct OtherForms {
    /// As floats, for [`QuantizedMatrix::multiply_float`] (and, on AVX2, the dynamic product).
    float_codes: OnceLock<PackedMatrix>,
    /// As pairs of 16-bit integers, for [`QuantizedMatrix::multiply_madd`].
    #[cfg(fma256)]
    pairs: OnceLock<Vec<PairPanel>>,
}

/// Columns `first..first + width` of the weights' codes: for each pair of matrix rows, each
/// column's two codes as 16-bit integers side by side (what one `vpmaddwd` lane multiplies by a
/// pair of input codes and sums), columns padded to whole registers.
#[cfg(fma256)]
struct PairPanel {
    first: usize,
    width: usize,
    weights: Vec<i16>,
}

#[cfg(fma256)]
impl PairPanel {
    /// Columns a pair of rows takes (the width rounded up to whole AVX2 registers).
    fn padded(&self) -> usize {
        self.width.div_ceil(AVX2_LANES) * AVX2_LANES
    }
}

/// What the dynamic product adds to a matrix: the bias, and each column's codes summed times the
/// zero point (the integer share of the sum to take off before each row's scale).
struct DynamicTerms {
    bias: Vec<f32>,
    /// Read by the VNNI kernel only (the float path sums unshifted codes).
    #[cfg_attr(not(int8_dot), allow(dead_code))]
    zero_sums: Vec<i32>,
}

/// How a product's sums are made: by an integer dot-product instruction, or from the same codes
/// held as floats by one of the f32 product's kernels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    #[cfg(vnni512)]
    Avx512Vnni,
    /// Where the build has both, AVX-512's is the fastest and this one runs in tests only.
    #[cfg(vnni256)]
    #[cfg_attr(all(vnni512, not(test)), allow(dead_code))]
    AvxVnni,
    /// AVX2 without VNNI: codes widened to 16 bits, multiplied and summed in pairs by
    /// `vpmaddwd` (exactly: no pair of u8 times i8 products overflows it), twice the
    /// multiply-adds of an f32 FMA. Where the build has VNNI it runs in tests only.
    #[cfg(fma256)]
    #[cfg_attr(all(int8_dot, not(test)), allow(dead_code))]
    Madd,
    Float(Kernel),
}

impl Path {
    /// `Kernel::Fastest` is the widest dot product this build has.
    fn of(kernel: Kernel) -> Path {
        match kernel {
            #[cfg(vnni512)]
            Kernel::Fastest => Path::Avx512Vnni,
            #[cfg(all(vnni256, not(vnni512)))]
            Kernel::Fastest => Path::AvxVnni,
            #[cfg(all(fma256, not(int8_dot)))]
            Kernel::Fastest => Path::Madd,
            kernel => Path::Float(kernel),
        }
    }

    /// Every path this build has (a build for a CPU with both VNNIs tests both).
    #[cfg(test)]
    fn all() -> Vec<Path> {
        let mut paths = vec![];
        #[cfg(vnni512)]
        paths.push(Path::Avx512Vnni);
        #[cfg(vnni256)]
        paths.push(Path::AvxVnni);
        #[cfg(fma256)]
        paths.push(Path::Madd);
        paths.extend(Kernel::built().into_iter().map(Path::Float));
        paths
    }
}

/// A product's options besides the operands.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Added as the output is stored: (m, cols).
    pub residual: Option<&'a [f32]>,
    pub activation: Activation,
}

impl QuantizedMatrix {
    /// `weights`: (rows, cols) row-major; `bias`: cols values; `input`: how the left operand
    /// will be quantized.
    pub fn new(weights: &[f32], rows: usize, cols: usize, bias: &[f32], input: Quantization) -> Self {
        Self::build(weights, rows, cols, bias, input, false)
    }

    fn build(weights: &[f32], rows: usize, cols: usize, bias: &[f32], input: Quantization, dynamic: bool) -> Self {
        assert!(weights.len() == rows * cols && bias.len() == cols, "the matrix is not (rows, cols)");
        let column = |c: usize| (0..rows).map(move |r| weights[r * cols + c]);
        let scales: Vec<f32> = (0..cols)
            .map(|c| {
                let max = column(c).fold(0f32, |m, w| m.max(w.abs()));
                if max > 0.0 {
                    max / 127.0
                } else {
                    1.0
                }
            })
            .collect();
        let code = |r: usize, c: usize| (weights[r * cols + c] / scales[c]).round().clamp(-127.0, 127.0) as i8;
        let groups = rows.div_ceil(GROUP);
        let panels = (0..cols)
            .step_by(PANEL_LANES)
            .map(|first| {
                let width = PANEL_LANES.min(cols - first);
                let padded = width.div_ceil(LANES) * LANES;
                let mut packed = vec![0i8; groups * padded * GROUP];
                for (at, byte) in packed.iter_mut().enumerate() {
                    let (g, rest) = (at / (padded * GROUP), at % (padded * GROUP));
                    let (c, j) = (rest / GROUP, rest % GROUP);
                    let r = g * GROUP + j;
                    if c < width && r < rows {
                        *byte = code(r, first + c);
                    }
                }
                Panel { first, width, weights: packed }
            })
            .collect();
        let unit: Vec<f32> = scales.iter().map(|s| s * input.scale).collect();
        let zero_sums: Vec<i32> =
            (0..cols).map(|c| input.zero_point as i32 * (0..rows).map(|r| code(r, c) as i32).sum::<i32>()).collect();
        let offset = (0..cols).map(|c| bias[c] - unit[c] * zero_sums[c] as f32).collect();
        let dynamic = dynamic.then(|| Box::new(DynamicTerms { bias: bias.to_vec(), zero_sums }));
        let matrix = QuantizedMatrix {
            panels,
            rows,
            cols,
            input,
            unit,
            offset,
            dynamic,
            other_forms: Box::new(OtherForms {
                float_codes: OnceLock::new(),
                #[cfg(fma256)]
                pairs: OnceLock::new(),
            }),
        };
        // This build's path's weights are made when the model loads, not on its first image.
        if cfg!(not(int8_dot)) {
            #[cfg(fma256)]
            if matrix.dynamic.is_none() {
                matrix.pairs();
                return matrix;
            }
            matrix.float_codes();
        }
        matrix
    }

    /// A matrix for [`QuantizedMatrix::multiply_dynamic`], whose inputs are quantized row by row
    /// as they come (CTranslate2's int8: no calibration, each row's own scale).
    pub fn dynamic(weights: &[f32], rows: usize, cols: usize, bias: &[f32]) -> Self {
        Self::build(weights, rows, cols, bias, Quantization { scale: 1.0, zero_point: DYNAMIC_ZERO }, true)
    }

    /// out (m, cols) = x (m rows of `rows` floats) times the matrix, plus the bias, each row of x
    /// quantized symmetrically with its own scale (its largest magnitude at code 127), on the
    /// calling thread. For a matrix made by [`QuantizedMatrix::dynamic`].
    pub fn multiply_dynamic(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.multiply_dynamic_on(x, m, out, Path::of(Kernel::Fastest))
    }

    // Where the build has no integer product, the match has one arm; it is written for all.
    #[cfg_attr(not(any(int8_dot, fma256)), allow(clippy::infallible_destructuring_match))]
    fn multiply_dynamic_on(&self, x: &[f32], m: usize, out: &mut [f32], path: Path) {
        let (k, n) = (self.rows, self.cols);
        assert!(x.len() >= m * k && out.len() >= m * n, "quantized product's operands too short");
        let terms = self.dynamic.as_deref().expect("a matrix for dynamic inputs (QuantizedMatrix::dynamic)");
        let kernel = match path {
            Path::Float(kernel) => kernel,
            // The text encoder's dynamic rows (its only user) go through the float product.
            #[cfg(fma256)]
            Path::Madd => Kernel::Fastest,
            #[cfg(int8_dot)]
            dot => return self.multiply_int8_dynamic(x, m, out, dot),
        };
        if m == 0 {
            return;
        }
        let mut scales = vec![0f32; m];
        FLOAT_CODES.with_borrow_mut(|codes| {
            super::ensure(codes, m * k);
            for (r, scale) in scales.iter_mut().enumerate() {
                let (row, codes) = (&x[r * k..(r + 1) * k], &mut codes[r * k..(r + 1) * k]);
                let q = row_quantization(row);
                *scale = q.scale;
                // The codes the VNNI path multiplies, less their shift: the sums need no correction.
                q.quantize_to_floats(row, codes);
                codes.iter_mut().for_each(|c| *c -= DYNAMIC_ZERO as f32);
            }
            let lhs = Lhs { x: codes, stride: k, m, k: 0..k, taps: packed::ONE_TAP };
            let sums = packed::Epilogue { start: Start::Zero, residual: None, activation: Activation::Identity };
            self.float_codes().multiply_with(&lhs, out, &sums, kernel);
        });
        for (row, scale) in out[..m * n].chunks_exact_mut(n).zip(&scales) {
            for ((o, unit), bias) in row.iter_mut().zip(&self.unit).zip(&terms.bias) {
                *o = o.mul_add(unit * scale, *bias);
            }
        }
    }

    /// The weights' codes packed for the f32 product (made the first time they are needed).
    fn float_codes(&self) -> &PackedMatrix {
        self.other_forms.float_codes.get_or_init(|| PackedMatrix::new(&self.weight_codes(), self.rows, self.cols))
    }

    /// Bytes per quantized input row: the rows padded to whole groups.
    #[cfg(int8_dot)]
    fn row_bytes(&self) -> usize {
        self.rows.div_ceil(GROUP) * GROUP
    }

    /// out (m, cols) = x (m rows of `rows` floats, contiguous) times the matrix, plus the bias,
    /// then the residual and ReLU6, on the calling thread.
    pub fn multiply(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: &Epilogue) {
        self.multiply_on(x, m, out, epilogue, Path::of(Kernel::Fastest))
    }

    pub(crate) fn multiply_with(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: &Epilogue, kernel: Kernel) {
        self.multiply_on(x, m, out, epilogue, Path::of(kernel))
    }

    fn multiply_on(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: &Epilogue, path: Path) {
        let (k, n) = (self.rows, self.cols);
        assert!(x.len() >= m * k && out.len() >= m * n, "quantized product's operands too short");
        assert!(epilogue.residual.is_none_or(|r| r.len() >= m * n), "quantized product's residual too short");
        match path {
            Path::Float(kernel) => self.multiply_float(x, m, out, epilogue, kernel),
            #[cfg(fma256)]
            Path::Madd => self.multiply_madd(x, m, out, epilogue),
            #[cfg(int8_dot)]
            dot => self.multiply_int8(x, m, out, epilogue, dot),
        }
    }

    /// The same sums from the same codes held as floats, through the f32 product: where there
    /// is no integer dot-product instruction, that is the fastest way to them (a float holds
    /// every sum up to 2^24 exactly, and rounds larger ones by less than one part in 10^7).
    fn multiply_float(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: &Epilogue, kernel: Kernel) {
        let (k, n) = (self.rows, self.cols);
        if m == 0 {
            return;
        }
        FLOAT_CODES.with_borrow_mut(|codes| {
            super::ensure(codes, m * k);
            self.input.quantize_to_floats(&x[..m * k], &mut codes[..m * k]);
            let lhs = Lhs { x: codes, stride: k, m, k: 0..k, taps: packed::ONE_TAP };
            let sums = packed::Epilogue { start: Start::Zero, residual: None, activation: Activation::Identity };
            self.float_codes().multiply_with(&lhs, out, &sums, kernel);
        });
        for (r, row) in out[..m * n].chunks_exact_mut(n).enumerate() {
            for (c, o) in row.iter_mut().enumerate() {
                let mut v = o.mul_add(self.unit[c], self.offset[c]);
                if let Some(res) = epilogue.residual {
                    v += res[r * n + c];
                }
                *o = epilogue.activation.apply(v);
            }
        }
    }

    /// The weights' codes as a (rows, cols) row-major float matrix, read back from the panels.
    fn weight_codes(&self) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        let mut codes = vec![0f32; rows * cols];
        for panel in &self.panels {
            let padded = panel.registers() * LANES;
            for (r, c) in (0..rows).flat_map(|r| (0..panel.width).map(move |c| (r, c))) {
                let at = (r / GROUP) * padded * GROUP + c * GROUP + r % GROUP;
                codes[r * cols + panel.first + c] = panel.weights[at] as f32;
            }
        }
        codes
    }

    /// One tile's codes at a time: quantized once, used for every panel, still in L1.
    #[cfg(int8_dot)]
    fn multiply_int8(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: &Epilogue, dot: Path) {
        let (k, n) = (self.rows, self.cols);
        let stride = self.row_bytes();
        // Bytes past a row's `k` codes may hold anything: the weights there are zero.
        CODES.with_borrow_mut(|codes| {
            if codes.len() < TILE_ROWS * stride {
                codes.resize(TILE_ROWS * stride, 0);
            }
            for r0 in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - r0);
                for r in 0..rows {
                    self.input.quantize(&x[(r0 + r) * k..(r0 + r + 1) * k], &mut codes[r * stride..r * stride + k]);
                }
                let mut tile = Tile {
                    codes: &codes[..rows * stride],
                    stride,
                    residual: epilogue.residual.map(|res| &res[r0 * n..(r0 + rows) * n]),
                    out: &mut out[r0 * n..(r0 + rows) * n],
                    activation: epilogue.activation,
                    row_scales: None,
                };
                for panel in &self.panels {
                    self.tile_int8(panel, &mut tile, dot);
                }
            }
        });
    }

    /// [`QuantizedMatrix::multiply_int8`] with each row quantized by its own scale.
    #[cfg(int8_dot)]
    fn multiply_int8_dynamic(&self, x: &[f32], m: usize, out: &mut [f32], dot: Path) {
        let (k, n) = (self.rows, self.cols);
        let stride = self.row_bytes();
        CODES.with_borrow_mut(|codes| {
            if codes.len() < TILE_ROWS * stride {
                codes.resize(TILE_ROWS * stride, 0);
            }
            let mut scales = [0f32; TILE_ROWS];
            for r0 in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - r0);
                for (r, scale) in scales.iter_mut().enumerate().take(rows) {
                    let row = &x[(r0 + r) * k..(r0 + r + 1) * k];
                    let q = row_quantization(row);
                    *scale = q.scale;
                    q.quantize(row, &mut codes[r * stride..r * stride + k]);
                }
                let mut tile = Tile {
                    codes: &codes[..rows * stride],
                    stride,
                    residual: None,
                    out: &mut out[r0 * n..(r0 + rows) * n],
                    activation: Activation::Identity,
                    row_scales: Some(&scales[..rows]),
                };
                for panel in &self.panels {
                    self.tile_int8(panel, &mut tile, dot);
                }
            }
        });
    }

    /// The tile times one panel, on the dot product `dot`.
    #[cfg(int8_dot)]
    fn tile_int8(&self, panel: &Panel, tile: &mut Tile, dot: Path) {
        // SAFETY: the instruction set is compiled in (its cfg); the tile's slices hold whole rows
        // of codes and of outputs (checked by multiply_on), the panel `groups` groups of whole
        // registers, the row scales one value per tile row, and the lane masks keep column
        // accesses inside the panel.
        unsafe {
            match dot {
                #[cfg(vnni512)]
                Path::Avx512Vnni => self.tile_vnni(panel, tile),
                #[cfg(vnni256)]
                Path::AvxVnni => self.tile_avxvnni(panel, tile),
                _ => unreachable!("{dot:?} is not in this build"),
            }
        }
    }

    /// The tile's rows in blocks of 8, then 4, then one at a time, times one panel.
    #[cfg(vnni512)]
    unsafe fn tile_vnni(&self, panel: &Panel, tile: &mut Tile) {
        let rows = tile.codes.len() / tile.stride;
        let mut r0 = 0;
        while r0 < rows {
            let block = match rows - r0 {
                8.. => 8,
                4..=7 => 4,
                _ => 1,
            };
            match (panel.registers(), block) {
                (1, 8) => self.tile_vnni_of::<1, 8>(panel, tile, r0),
                (2, 8) => self.tile_vnni_of::<2, 8>(panel, tile, r0),
                (_, 8) => self.tile_vnni_of::<3, 8>(panel, tile, r0),
                (1, 4) => self.tile_vnni_of::<1, 4>(panel, tile, r0),
                (2, 4) => self.tile_vnni_of::<2, 4>(panel, tile, r0),
                (_, 4) => self.tile_vnni_of::<3, 4>(panel, tile, r0),
                (1, _) => self.tile_vnni_of::<1, 1>(panel, tile, r0),
                (2, _) => self.tile_vnni_of::<2, 1>(panel, tile, r0),
                (_, _) => self.tile_vnni_of::<3, 1>(panel, tile, r0),
            }
            r0 += block;
        }
    }

    /// Rows `r0..r0 + R` of the tile times `V` registers of the panel's columns.
    #[cfg(vnni512)]
    #[inline(always)]
    unsafe fn tile_vnni_of<const V: usize, const R: usize>(&self, panel: &Panel, tile: &mut Tile, r0: usize) {
        use std::arch::x86_64::*;
        let (n, groups) = (self.cols, self.row_bytes() / GROUP);
        assert!(panel.weights.len() >= groups * V * LANES * GROUP);
        assert!((r0 + R) * tile.stride <= tile.codes.len() && tile.out.len() >= (r0 + R) * n);
        assert!(tile.residual.is_none_or(|res| res.len() >= (r0 + R) * n));
        let masks: [u16; V] = super::lane_masks(panel.width);
        let unit: [__m512; V] =
            std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], self.unit.as_ptr().add(panel.first + v * LANES)));
        let offset: [__m512; V] =
            std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], self.offset.as_ptr().add(panel.first + v * LANES)));
        let wp = panel.weights.as_ptr() as *const __m512i;
        let (lo, hi) = tile.activation.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        {
            let cp = tile.codes.as_ptr().add(r0 * tile.stride);
            let mut acc = [[_mm512_setzero_si512(); V]; R];
            for g in 0..groups {
                let wt: [__m512i; V] = std::array::from_fn(|v| _mm512_loadu_si512(wp.add(g * V + v)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32((cp.add(r * tile.stride + g * GROUP) as *const i32).read_unaligned());
                    for v in 0..V {
                        acc[v] = _mm512_dpbusd_epi32(acc[v], a, wt[v]);
                    }
                }
            }
            let op = tile.out.as_mut_ptr().add(r0 * n + panel.first);
            // Dynamic rows: the zero point's share comes off in integers (exactly), then each
            // row's own scale; the bias is added as it is.
            let dynamic = tile.row_scales.zip(self.dynamic.as_deref()).map(|(scales, terms)| {
                let load_i = |from: &[i32], v: usize| {
                    _mm512_maskz_loadu_epi32(masks[v], from.as_ptr().add(panel.first + v * LANES))
                };
                let zero: [__m512i; V] = std::array::from_fn(|v| load_i(&terms.zero_sums, v));
                let bias: [__m512; V] = std::array::from_fn(|v| {
                    _mm512_maskz_loadu_ps(masks[v], terms.bias.as_ptr().add(panel.first + v * LANES))
                });
                (scales, zero, bias)
            });
            for (r, acc) in acc.into_iter().enumerate() {
                for (v, acc) in acc.into_iter().enumerate() {
                    let at = r * n + v * LANES;
                    let mut y = match &dynamic {
                        Some((scales, zero, bias)) => {
                            let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, zero[v]));
                            _mm512_fmadd_ps(sum, _mm512_mul_ps(unit[v], _mm512_set1_ps(scales[r0 + r])), bias[v])
                        }
                        None => _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), unit[v], offset[v]),
                    };
                    if let Some(res) = tile.residual {
                        y = _mm512_add_ps(
                            y,
                            _mm512_maskz_loadu_ps(masks[v], res.as_ptr().add(r0 * n + panel.first + at)),
                        );
                    }
                    if tile.activation != Activation::Identity {
                        y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
                    }
                    _mm512_mask_storeu_ps(op.add(at), masks[v], y);
                }
            }
        }
    }

    /// Each 16-column register of the panel (as two 256-bit halves, or one where the panel ends
    /// within 8 columns), the tile's rows in blocks of 4, then 2, then 1: 8 accumulators, 2
    /// weights and a broadcast fit AVX2's 16 registers.
    #[cfg(vnni256)]
    unsafe fn tile_avxvnni(&self, panel: &Panel, tile: &mut Tile) {
        let rows = tile.codes.len() / tile.stride;
        for v in 0..panel.registers() {
            let halves = if panel.width - v * LANES > LANES / 2 { 2 } else { 1 };
            let mut r0 = 0;
            while r0 < rows {
                let block = match rows - r0 {
                    4.. => 4,
                    2..=3 => 2,
                    _ => 1,
                };
                match (halves, block) {
                    (2, 4) => self.tile_avxvnni_of::<2, 4>(panel, tile, r0, v),
                    (2, 2) => self.tile_avxvnni_of::<2, 2>(panel, tile, r0, v),
                    (2, _) => self.tile_avxvnni_of::<2, 1>(panel, tile, r0, v),
                    (_, 4) => self.tile_avxvnni_of::<1, 4>(panel, tile, r0, v),
                    (_, 2) => self.tile_avxvnni_of::<1, 2>(panel, tile, r0, v),
                    (_, _) => self.tile_avxvnni_of::<1, 1>(panel, tile, r0, v),
                }
                r0 += block;
            }
        }
    }

    /// Rows `r0..r0 + R` of the tile times `H` halves of the panel's register `v`.
    #[cfg(vnni256)]
    #[inline(always)]
    unsafe fn tile_avxvnni_of<const H: usize, const R: usize>(
        &self,
        panel: &Panel,
        tile: &mut Tile,
        r0: usize,
        v: usize,
    ) {
        use std::arch::x86_64::*;
        const HALF: usize = LANES / 2;
        let (n, groups, registers) = (self.cols, self.row_bytes() / GROUP, panel.registers());
        assert!(v < registers && H * HALF <= LANES && panel.weights.len() >= groups * registers * LANES * GROUP);
        assert!((r0 + R) * tile.stride <= tile.codes.len() && tile.out.len() >= (r0 + R) * n);
        assert!(tile.residual.is_none_or(|res| res.len() >= (r0 + R) * n));
        // Columns of each half inside the panel; AVX2 has no mask registers, so a half that is
        // not full is read and written through a vector of lane masks.
        let lanes: [usize; H] = std::array::from_fn(|h| (panel.width - v * LANES).saturating_sub(h * HALF).min(HALF));
        let masks: [__m256i; H] = std::array::from_fn(|h| {
            _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes[h] as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
        });
        let load = |from: *const f32, h: usize| {
            if lanes[h] == HALF {
                _mm256_loadu_ps(from)
            } else {
                _mm256_maskload_ps(from, masks[h])
            }
        };
        let first = panel.first + v * LANES;
        let unit: [__m256; H] = std::array::from_fn(|h| load(self.unit.as_ptr().add(first + h * HALF), h));
        let offset: [__m256; H] = std::array::from_fn(|h| load(self.offset.as_ptr().add(first + h * HALF), h));
        // The register's 64 bytes per group, as two halves: the same packing as the AVX-512 kernel's.
        let wp = (panel.weights.as_ptr() as *const __m256i).add(2 * v);
        let (lo, hi) = tile.activation.bounds();
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let cp = tile.codes.as_ptr().add(r0 * tile.stride);
        let mut acc = [[_mm256_setzero_si256(); H]; R];
        for g in 0..groups {
            let wt: [__m256i; H] = std::array::from_fn(|h| _mm256_loadu_si256(wp.add(2 * g * registers + h)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_epi32((cp.add(r * tile.stride + g * GROUP) as *const i32).read_unaligned());
                for h in 0..H {
                    acc[h] = _mm256_dpbusd_avx_epi32(acc[h], a, wt[h]);
                }
            }
        }
        let dynamic = tile.row_scales.zip(self.dynamic.as_deref()).map(|(scales, terms)| {
            let zero: [__m256i; H] = std::array::from_fn(|h| {
                let from = terms.zero_sums.as_ptr().add(first + h * HALF);
                if lanes[h] == HALF {
                    _mm256_loadu_si256(from as *const __m256i)
                } else {
                    _mm256_maskload_epi32(from, masks[h])
                }
            });
            let bias: [__m256; H] = std::array::from_fn(|h| load(terms.bias.as_ptr().add(first + h * HALF), h));
            (scales, zero, bias)
        });
        for (r, acc) in acc.into_iter().enumerate() {
            for (h, acc) in acc.into_iter().enumerate() {
                let at = (r0 + r) * n + first + h * HALF;
                let mut y = match &dynamic {
                    Some((scales, zero, bias)) => {
                        let sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, zero[h]));
                        _mm256_fmadd_ps(sum, _mm256_mul_ps(unit[h], _mm256_set1_ps(scales[r0 + r])), bias[h])
                    }
                    None => _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), unit[h], offset[h]),
                };
                if let Some(res) = tile.residual {
                    y = _mm256_add_ps(y, load(res.as_ptr().add(at), h));
                }
                if tile.activation != Activation::Identity {
                    y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
                }
                let to = tile.out.as_mut_ptr().add(at);
                if lanes[h] == HALF {
                    _mm256_storeu_ps(to, y);
                } else {
                    _mm256_maskstore_ps(to, masks[h], y);
                }
            }
        }
    }
}

#[cfg(fma256)]
impl QuantizedMatrix {
    /// The weights' codes in pairs of rows (made the first time they are needed).
    fn pairs(&self) -> &[PairPanel] {
        self.other_forms.pairs.get_or_init(|| {
            let (rows, cols) = (self.rows, self.cols);
            let codes = self.weight_codes();
            let pairs = rows.div_ceil(2);
            self.panels
                .iter()
                .map(|panel| {
                    let (first, width) = (panel.first, panel.width);
                    let padded = width.div_ceil(AVX2_LANES) * AVX2_LANES;
                    let mut weights = vec![0i16; pairs * padded * 2];
                    for (r, c) in (0..rows).flat_map(|r| (0..width).map(move |c| (r, c))) {
                        weights[((r / 2) * padded + c) * 2 + r % 2] = codes[r * cols + first + c] as i16;
                    }
                    PairPanel { first, width, weights }
                })
                .collect()
        })
    }

    /// All `m` rows' codes first, then each panel's columns 16 at a time over tiles of rows
    /// shared out evenly (as the f32 product's), so a panel's weights stay in cache for every
    /// row of the product.
    fn multiply_madd(&self, x: &[f32], m: usize, out: &mut [f32], epilogue: &Epilogue) {
        let (k, n) = (self.rows, self.cols);
        if m == 0 {
            return;
        }
        let stride = k.div_ceil(2) * 2;
        let panels = self.pairs();
        WIDE_CODES.with_borrow_mut(|codes| {
            // Codes past a row's `k` may hold anything: the weights there are zero.
            if codes.len() < m * stride {
                codes.resize(m * stride, 0);
            }
            for r in 0..m {
                self.input.quantize_to_wide(&x[r * k..(r + 1) * k], &mut codes[r * stride..r * stride + k]);
            }
            for panel in panels {
                for rows in super::avx2::even_tiles(m, MADD_ROWS) {
                    for block in (0..panel.width).step_by(MADD_COLUMNS) {
                        let width = MADD_COLUMNS.min(panel.width - block);
                        let tile = Tile {
                            codes: &codes[rows.start * stride..rows.end * stride],
                            stride,
                            residual: epilogue.residual.map(|res| &res[rows.start * n..rows.end * n]),
                            out: &mut out[rows.start * n..rows.end * n],
                            activation: epilogue.activation,
                            row_scales: None,
                        };
                        self.tile_madd(panel, block..block + width, tile);
                    }
                }
            }
        });
    }

    /// The tile's rows times the panel's columns `block` (up to MADD_COLUMNS of them).
    fn tile_madd(&self, panel: &PairPanel, block: std::ops::Range<usize>, tile: Tile<i16>) {
        let rows = tile.codes.len() / tile.stride;
        let (n, pairs) = (self.cols, tile.stride / 2);
        assert!((1..=MADD_ROWS).contains(&rows) && tile.out.len() >= rows * n);
        assert!(tile.residual.is_none_or(|res| res.len() >= rows * n));
        assert!(!block.is_empty() && block.end <= panel.width && block.len() <= MADD_COLUMNS);
        assert!(panel.weights.len() >= pairs * panel.padded() * 2 && panel.first + panel.width <= n);
        let registers = block.len().div_ceil(AVX2_LANES);
        let short = !block.len().is_multiple_of(AVX2_LANES);
        // SAFETY: AVX2 is compiled in; the asserts bound the codes (whole rows of `pairs` pairs),
        // the weights (each pair's padded row of the panel), the output and the residual (rows
        // of n columns, the block inside the panel's), and a block short of whole registers is
        // read and written through copies of its columns.
        unsafe {
            match (rows, registers, short) {
                (1, 1, s) => self.tile_madd_of::<1, 1>(panel, block, tile, s),
                (1, _, s) => self.tile_madd_of::<1, 2>(panel, block, tile, s),
                (2, 1, s) => self.tile_madd_of::<2, 1>(panel, block, tile, s),
                (2, _, s) => self.tile_madd_of::<2, 2>(panel, block, tile, s),
                (3, 1, s) => self.tile_madd_of::<3, 1>(panel, block, tile, s),
                (3, _, s) => self.tile_madd_of::<3, 2>(panel, block, tile, s),
                (_, 1, s) => self.tile_madd_of::<MADD_ROWS, 1>(panel, block, tile, s),
                (_, _, s) => self.tile_madd_of::<MADD_ROWS, 2>(panel, block, tile, s),
            }
        }
    }

    #[inline(always)]
    unsafe fn tile_madd_of<const R: usize, const V: usize>(
        &self,
        panel: &PairPanel,
        block: std::ops::Range<usize>,
        tile: Tile<i16>,
        short: bool,
    ) {
        use std::arch::x86_64::*;
        let (n, pairs, padded) = (self.cols, tile.stride / 2, panel.padded());
        let first = panel.first + block.start;
        let width = block.len();
        let load = |from: *const f32| super::avx2::load::<V>(from, width, short);
        let unit = load(self.unit.as_ptr().add(first));
        let offset = load(self.offset.as_ptr().add(first));
        let wp = panel.weights.as_ptr().add(block.start * 2);
        let cp = tile.codes.as_ptr();
        let mut acc = [[_mm256_setzero_si256(); V]; R];
        for p in 0..pairs {
            let row = wp.add(p * padded * 2);
            let wt: [__m256i; V] =
                std::array::from_fn(|v| _mm256_loadu_si256(row.add(v * AVX2_LANES * 2) as *const __m256i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_epi32((cp.add(r * tile.stride + 2 * p) as *const i32).read_unaligned());
                for v in 0..V {
                    acc[v] = _mm256_add_epi32(acc[v], _mm256_madd_epi16(a, wt[v]));
                }
            }
        }
        let (lo, hi) = tile.activation.bounds();
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        for (r, acc) in acc.into_iter().enumerate() {
            let residual = tile.residual.map(|res| load(res.as_ptr().add(r * n + first)));
            let mut y: [__m256; V] =
                std::array::from_fn(|v| _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[v]), unit[v], offset[v]));
            for v in 0..V {
                if let Some(res) = &residual {
                    y[v] = _mm256_add_ps(y[v], res[v]);
                }
                if tile.activation != Activation::Identity {
                    y[v] = _mm256_min_ps(_mm256_max_ps(y[v], lo), hi);
                }
            }
            super::avx2::store(tile.out.as_mut_ptr().add(r * n + first), width, short, y);
        }
    }
}

/// A tile's rows of a product: their codes (`stride` apart: bytes for the VNNI paths, 16-bit
/// for [`QuantizedMatrix::multiply_madd`]), residual and output.
#[cfg(any(int8_dot, fma256))]
struct Tile<'a, Code = u8> {
    codes: &'a [Code],
    stride: usize,
    residual: Option<&'a [f32]>,
    out: &'a mut [f32],
    activation: Activation,
    /// Each row's input scale, for the dynamic product (whose `unit` is the weights' scale; the
    /// VNNI paths only).
    #[cfg_attr(not(int8_dot), allow(dead_code))]
    row_scales: Option<&'a [f32]>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pseudo_random as numbers;

    #[test]
    fn codes_round_to_nearest_and_clamp() {
        let q = Quantization::from_range(-1.0, 3.0);
        assert_eq!(q.zero_point, 64);
        let xs = [-2.0, -1.0, 0.0, q.scale * 0.49, q.scale * 0.51, 3.0, 10.0];
        let mut codes = [0u8; 7];
        q.quantize(&xs, &mut codes);
        assert_eq!(codes, [0, 0, 64, 64, 65, 255, 255]);
        assert_eq!(q.dequantize(64), 0.0);
        // A range that leaves out 0 is widened to hold it; an empty one still gives codes.
        assert_eq!(Quantization::from_range(0.5, 6.0).zero_point, 0);
        assert_eq!(Quantization::from_range(0.0, 0.0), Quantization { scale: 1.0, zero_point: 0 });
    }

    /// Both paths against the definition on the same codes: the integer sums are exact, so the
    /// two paths agree to rounding, and with the float product to the quantization's error.
    #[test]
    fn products_match_the_definition_on_odd_shapes() {
        for (rows, cols) in [(1, 1), (5, 3), (27, 16), (20, 24), (40, 47), (96, 100), (9, 145)] {
            let weights = numbers(rows * cols, (rows * cols) as u32);
            let bias = numbers(cols, 3);
            let input = Quantization::from_range(-1.0, 1.0);
            let matrix = QuantizedMatrix::new(&weights, rows, cols, &bias, input);
            for m in [1, 3, 8, 9, 13, 30] {
                let x = numbers(m * rows, m as u32);
                let residual = numbers(m * cols, 7);
                for (with_residual, activation) in [
                    (false, Activation::Relu6),
                    (true, Activation::Identity),
                    (true, Activation::Relu6),
                    (false, Activation::Identity),
                    (true, Activation::Relu),
                ] {
                    // The definition on the codes' values, and the float product for scale.
                    let mut codes = vec![0u8; x.len()];
                    input.quantize(&x, &mut codes);
                    let mut want = vec![0f32; m * cols];
                    let mut float = vec![0f32; m * cols];
                    for (r, c) in (0..m).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                        let scale = matrix.unit[c] / input.scale;
                        let code = |i: usize| (weights[i * cols + c] / scale).round() * scale;
                        let dot: f32 = (0..rows).map(|i| input.dequantize(codes[r * rows + i]) * code(i)).sum();
                        let exact: f32 = (0..rows).map(|i| x[r * rows + i] * weights[i * cols + c]).sum();
                        let extra = if with_residual { residual[r * cols + c] } else { 0.0 };
                        let act = |v: f32| activation.apply(v);
                        want[r * cols + c] = act(bias[c] + dot + extra);
                        float[r * cols + c] = act(bias[c] + exact + extra);
                    }
                    let epilogue = Epilogue { residual: with_residual.then_some(residual.as_slice()), activation };
                    for path in Path::all() {
                        let mut got = vec![0f32; m * cols + 1];
                        got[m * cols] = f32::NAN;
                        matrix.multiply_on(&x, m, &mut got, &epilogue, path);
                        assert!(got[m * cols].is_nan(), "{path:?} wrote past the output");
                        let diff =
                            |b: &[f32]| got[..m * cols].iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                        let what =
                            format!("{path:?} {m}x{rows} x ({rows}, {cols}), residual {with_residual}, {activation:?}");
                        assert!(diff(&want) < 1e-4, "{what}: {} from the definition", diff(&want));
                        // Each product term is off by at most half a step of each code.
                        let bound = rows as f32 * (input.scale + 1.0 / 127.0);
                        assert!(diff(&float) < bound, "{what}: {} from the float product", diff(&float));
                    }
                }
            }
        }
    }

    /// The dynamic product against its definition: each row's codes at its own scale (largest
    /// magnitude 127), the weights' per-column codes, integer sums rescaled, the bias added; both
    /// paths, odd shapes, rows of very different sizes (one all zero) in one call.
    #[test]
    fn dynamic_products_match_the_definition_on_odd_shapes() {
        for (rows, cols) in [(1, 1), (5, 3), (27, 16), (20, 24), (40, 47), (96, 100), (9, 145), (384, 49)] {
            let weights = numbers(rows * cols, (rows * cols) as u32 + 1);
            let bias = numbers(cols, 5);
            let matrix = QuantizedMatrix::dynamic(&weights, rows, cols, &bias);
            for m in [1, 2, 3, 8, 9, 13, 30] {
                let mut x = numbers(m * rows, m as u32 + 9);
                // Row r scaled by 10^(r mod 5 - 2); row 1 all zero.
                for (r, row) in x.chunks_exact_mut(rows).enumerate() {
                    let scale = 10f32.powi(r as i32 % 5 - 2);
                    row.iter_mut().for_each(|v| *v = if r == 1 { 0.0 } else { *v * scale });
                }
                let mut want = vec![0f32; m * cols];
                let mut exact = vec![0f32; m * cols];
                for (r, c) in (0..m).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                    let row = &x[r * rows..(r + 1) * rows];
                    let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                    let w_scale = matrix.unit[c];
                    let dot: f32 = (0..rows)
                        .map(|i| (row[i] / s).round() * s * (weights[i * cols + c] / w_scale).round() * w_scale)
                        .sum();
                    want[r * cols + c] = bias[c] + dot;
                    exact[r * cols + c] = bias[c] + (0..rows).map(|i| row[i] * weights[i * cols + c]).sum::<f32>();
                }
                for path in Path::all() {
                    let mut got = vec![0f32; m * cols + 1];
                    got[m * cols] = f32::NAN;
                    matrix.multiply_dynamic_on(&x, m, &mut got, path);
                    assert!(got[m * cols].is_nan(), "{path:?} wrote past the output");
                    for (r, c) in (0..m).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                        let row_max = x[r * rows..(r + 1) * rows].iter().fold(0f32, |a, v| a.max(v.abs()));
                        let (g, w, e) = (got[r * cols + c], want[r * cols + c], exact[r * cols + c]);
                        let what = format!("{path:?} {m}x{rows} x ({rows}, {cols}), row {r} col {c}");
                        // Ties round to even in zoo and away from zero in the definition: a tie
                        // moves one code by one step.
                        let step = row_max / 127.0 * matrix.unit[c] * 127.0;
                        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()) + step, "{what}: {g} against {w}");
                        // Against the float product: each term off by half a step of each code.
                        let bound = rows as f32 * (row_max / 127.0 + row_max * matrix.unit[c]) + 1e-5;
                        assert!((g - e).abs() <= bound, "{what}: {g} against the float {e} (bound {bound})");
                    }
                }
            }
        }
    }

    /// A CTranslate2 int8 weight read back as floats (code / scale, scale = 127 / the row's
    /// largest magnitude) quantizes to the stored codes again: such checkpoints run as stored.
    #[test]
    fn dequantized_int8_weights_quantize_to_their_own_codes() {
        let (rows, cols) = (37, 29);
        let raw = numbers(rows * cols, 11);
        let mut codes: Vec<i8> = raw.iter().map(|v| (v * 126.0).round() as i8).collect();
        // Each column (a CTranslate2 row) reaches 127 once, as CTranslate2's scale makes it.
        for c in 0..cols {
            codes[(c * 7 % rows) * cols + c] = if c % 2 == 0 { 127 } else { -127 };
        }
        let scales: Vec<f32> = (0..cols).map(|c| 127.0 / (0.01 + 0.37 * c as f32)).collect();
        let weights: Vec<f32> = (0..rows * cols).map(|i| codes[i] as f32 / scales[i % cols]).collect();
        let matrix = QuantizedMatrix::dynamic(&weights, rows, cols, &vec![0.0; cols]);
        let back: Vec<i8> = matrix.weight_codes().iter().map(|&c| c as i8).collect();
        assert_eq!(back, codes);
    }
}
