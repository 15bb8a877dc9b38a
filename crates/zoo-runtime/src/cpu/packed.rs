//! A weight matrix packed once for every product it takes part in, and the product itself: on
//! AVX-512 a tile of up to 8 rows times up to 48 columns of accumulators that start at the bias (or at
//! what the output holds) and get the residual and activation as they are stored, so nothing is
//! packed per call and the output is written once; on AVX2 with FMA (x86-64 without AVX-512) the
//! same in tiles of up to 4 rows times 24 columns, over the same packing; elsewhere the gemm
//! crate, panel by panel, and a second pass. The left operand's rows may be any distance apart (also overlapping: a
//! convolution reads its padded input in place), a product may use a range of the matrix's rows,
//! and a row may be several pieces of the input (taps: one per kernel row of a convolution), so
//! that the accumulators stay in registers over the whole kernel.

use std::ops::Range;

use super::{Activation, Kernel, LANES};

/// Columns per panel: three registers per row of a tile.
const PANEL_LANES: usize = 3 * LANES;
/// Rows per tile: eight rows of three registers are 24 accumulators, with three weights and a
/// broadcast 28 of the 32 registers.
pub const TILE_ROWS: usize = 8;

/// A (rows, cols) matrix in panels of up to PANEL_LANES columns.
pub struct PackedMatrix {
    panels: Vec<Panel>,
    pub rows: usize,
    pub cols: usize,
}

/// Columns `first..first + width`, (rows, width rounded up to LANES) row-major, zero-padded.
struct Panel {
    first: usize,
    width: usize,
    weights: Vec<f32>,
}

impl Panel {
    /// Floats per matrix row (the width rounded up to whole registers).
    fn stride(&self) -> usize {
        self.width.div_ceil(LANES) * LANES
    }
}

/// Where the accumulators start.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    Zero,
    /// At a bias, one value per column.
    Bias(&'a [f32]),
    /// At what the output already holds (summing products over several calls).
    Output,
}

/// What a product does besides multiplying.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub start: Start<'a>,
    /// Added as the output is stored: (m, cols), rows `cols` apart.
    pub residual: Option<&'a [f32]>,
    pub activation: Activation,
}

/// A product's left operand: `m` rows `stride` apart. Row r is the concatenation, over the
/// taps t, of the `k.len()` values at `x[taps[t] + r * stride..]`, and it multiplies the
/// matrix's rows `k.start..k.start + taps.len() * k.len()`.
#[derive(Clone)]
pub struct Lhs<'a> {
    pub x: &'a [f32],
    pub stride: usize,
    pub m: usize,
    pub k: Range<usize>,
    pub taps: &'a [usize],
}

/// The taps of a left operand that is one piece of its input per row.
pub const ONE_TAP: &[usize] = &[0];

impl Lhs<'_> {
    /// How many of the matrix's rows the product uses.
    fn depth(&self) -> usize {
        self.taps.len() * self.k.len()
    }

    /// The matrix's rows tap `t` multiplies.
    fn tap_rows(&self, t: usize) -> Range<usize> {
        let start = self.k.start + t * self.k.len();
        start..start + self.k.len()
    }
}

/// How many values of the input `rows` rows of a left operand span: from the first row's start
/// to the end of the last row's last tap.
fn reach(taps: &[usize], rows: usize, stride: usize, k: usize) -> usize {
    taps.iter().copied().max().unwrap_or(0) + (rows - 1) * stride + k
}

impl PackedMatrix {
    /// `weights`: (rows, cols) row-major.
    pub fn new(weights: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(weights.len(), rows * cols, "the matrix is not (rows, cols)");
        let panels = (0..cols)
            .step_by(PANEL_LANES)
            .map(|first| {
                let width = PANEL_LANES.min(cols - first);
                let stride = width.div_ceil(LANES) * LANES;
                let mut packed = vec![0f32; rows * stride];
                for (r, row) in packed.chunks_exact_mut(stride).enumerate() {
                    row[..width].copy_from_slice(&weights[r * cols + first..][..width]);
                }
                Panel { first, width, weights: packed }
            })
            .collect();
        PackedMatrix { panels, rows, cols }
    }

    /// out (lhs.m, cols) = start + lhs * self[lhs.k], then the residual and ReLU6, on the
    /// calling thread.
    pub fn multiply(&self, lhs: &Lhs, out: &mut [f32], epilogue: &Epilogue) {
        self.multiply_with(lhs, out, epilogue, Kernel::Fastest)
    }

    /// As [`PackedMatrix::multiply`], the columns of panels `panels` only (see
    /// [`PackedMatrix::panel_columns`]): the output and the residual are (lhs.m, those columns),
    /// the bias the whole matrix's. Threads that share out a product's panels share its weights,
    /// which for a matrix-vector product are all it reads.
    pub fn multiply_panels(&self, lhs: &Lhs, out: &mut [f32], epilogue: &Epilogue, panels: Range<usize>) {
        self.multiply_panels_with(lhs, out, epilogue, panels, Kernel::Fastest)
    }

    /// How many panels of columns the matrix is packed in.
    pub fn panel_count(&self) -> usize {
        self.panels.len()
    }

    /// The columns of panels `panels`.
    pub fn panel_columns(&self, panels: Range<usize>) -> Range<usize> {
        match self.panels.get(panels.clone()) {
            Some([first, .., last]) => first.first..last.first + last.width,
            Some([only]) => only.first..only.first + only.width,
            _ => 0..0,
        }
    }

    pub(crate) fn multiply_with(&self, lhs: &Lhs, out: &mut [f32], epilogue: &Epilogue, kernel: Kernel) {
        self.multiply_panels_with(lhs, out, epilogue, 0..self.panels.len(), kernel)
    }

    fn multiply_panels_with(
        &self,
        lhs: &Lhs,
        out: &mut [f32],
        epilogue: &Epilogue,
        panels: Range<usize>,
        kernel: Kernel,
    ) {
        assert!(panels.end <= self.panels.len(), "product's panels out of range");
        let columns = self.panel_columns(panels.clone());
        let (m, n, k) = (lhs.m, columns.len(), lhs.k.len());
        if m == 0 || n == 0 {
            return;
        }
        assert!(lhs.k.start + lhs.depth() <= self.rows && k > 0, "product rows out of range");
        assert!(!lhs.taps.is_empty(), "a product has at least one tap");
        assert!(lhs.x.len() >= reach(lhs.taps, m, lhs.stride, k), "product's left operand too short");
        assert!(out.len() >= m * n, "product's output too short");
        assert!(epilogue.residual.is_none_or(|r| r.len() >= m * n), "product's residual too short");
        if let Start::Bias(bias) = epilogue.start {
            assert!(bias.len() >= columns.end, "product's bias too short");
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
        if kernel == Kernel::Fastest {
            self.multiply_avx512(lhs, out, epilogue, panels);
            return;
        }
        #[cfg(fma256)]
        if kernel == Kernel::Avx2 || kernel == Kernel::Fastest {
            self.multiply_avx2(lhs, out, epilogue, panels);
            return;
        }
        let _ = kernel;
        self.multiply_portable(lhs, out, epilogue, panels);
    }

    /// The gemm crate, panel by panel, then a pass for the bias, residual and ReLU6.
    fn multiply_portable(&self, lhs: &Lhs, out: &mut [f32], epilogue: &Epilogue, panels: Range<usize>) {
        let columns = self.panel_columns(panels.clone());
        let (m, n, k) = (lhs.m, columns.len(), lhs.k.len());
        let bias = match epilogue.start {
            Start::Bias(bias) => Some(bias),
            Start::Zero | Start::Output => None,
        };
        for panel in &self.panels[panels] {
            for (t, &tap) in lhs.taps.iter().enumerate() {
                let accumulate = t > 0 || matches!(epilogue.start, Start::Output);
                // SAFETY: multiply_with checked the operands' lengths: the output is m rows of n
                // (this panel's columns of them), each tap of the left operand m rows `stride`
                // apart of k values, the panel's rows of this tap stride() floats each; the
                // output aliases neither.
                unsafe {
                    gemm::gemm(
                        m,
                        panel.width,
                        k,
                        out.as_mut_ptr().add(panel.first - columns.start),
                        1,
                        n as isize,
                        accumulate,
                        lhs.x.as_ptr().add(tap),
                        1,
                        lhs.stride as isize,
                        panel.weights.as_ptr().add(lhs.tap_rows(t).start * panel.stride()),
                        1,
                        panel.stride() as isize,
                        if accumulate { 1.0 } else { 0.0 },
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        }
        if bias.is_none() && epilogue.residual.is_none() && epilogue.activation == Activation::Identity {
            return;
        }
        for (r, row) in out[..m * n].chunks_exact_mut(n).enumerate() {
            let residual = epilogue.residual.map(|res| &res[r * n..(r + 1) * n]);
            for (i, o) in row.iter_mut().enumerate() {
                let v = *o + bias.map_or(0.0, |b| b[columns.start + i]) + residual.map_or(0.0, |res| res[i]);
                *o = epilogue.activation.apply(v);
            }
        }
    }

    /// Whole tiles, then a last, short tile of the rows left, all in place.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    fn multiply_avx512(&self, lhs: &Lhs, out: &mut [f32], epilogue: &Epilogue, panels: Range<usize>) {
        let columns = self.panel_columns(panels.clone());
        let (m, n) = (lhs.m, columns.len());
        for panel in &self.panels[panels] {
            let at = Columns { first: panel.first - columns.start, of: n };
            for r0 in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - r0);
                let tile = Tile::of(lhs, epilogue, out, r0..r0 + rows, n);
                self.tile(panel, at, tile, rows, epilogue);
            }
        }
    }

    /// One tile: `rows` (up to TILE_ROWS) rows times one panel. A short tile has as many
    /// accumulators as rows, so a last row or two costs a fraction of a whole tile's time (a
    /// 7x7 map's 49 pixels are six tiles and one row), and a matrix-vector product (a
    /// classifier's) is one row of them.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    fn tile(&self, panel: &Panel, at: Columns, tile: Tile, rows: usize, epilogue: &Epilogue) {
        match rows {
            1 => self.tile_of::<1>(panel, at, tile, epilogue),
            2 => self.tile_of::<2>(panel, at, tile, epilogue),
            3 => self.tile_of::<3>(panel, at, tile, epilogue),
            4 => self.tile_of::<4>(panel, at, tile, epilogue),
            5 => self.tile_of::<5>(panel, at, tile, epilogue),
            6 => self.tile_of::<6>(panel, at, tile, epilogue),
            7 => self.tile_of::<7>(panel, at, tile, epilogue),
            _ => self.tile_of::<TILE_ROWS>(panel, at, tile, epilogue),
        }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    fn tile_of<const R: usize>(&self, panel: &Panel, at: Columns, tile: Tile, epilogue: &Epilogue) {
        let n = at.of;
        assert!((1..=TILE_ROWS).contains(&R));
        assert!(tile.x.len() >= reach(tile.taps, R, tile.stride, tile.k.len()));
        assert!(tile.out.len() >= R * n && tile.k.start + tile.taps.len() * tile.k.len() <= self.rows);
        assert!(tile.residual.is_none_or(|r| r.len() >= R * n));
        assert!(at.first + panel.width <= n && panel.width <= PANEL_LANES);
        if let Start::Bias(bias) = epilogue.start {
            assert!(bias.len() >= panel.first + panel.width);
        }
        // SAFETY: AVX-512F is compiled in; the asserts bound the rows read and written, and the
        // lane masks keep every load and store of the output, bias and residual inside the
        // panel's columns.
        unsafe {
            match panel.width.div_ceil(LANES) {
                1 => tile_avx512::<R, 1>(panel, at, tile, epilogue),
                2 => tile_avx512::<R, 2>(panel, at, tile, epilogue),
                _ => tile_avx512::<R, 3>(panel, at, tile, epilogue),
            }
        }
    }
}

/// Where a panel's columns are in a product's output (and residual): from column `first` of
/// rows `of` columns long.
#[cfg(any(fma256, all(target_arch = "x86_64", target_feature = "avx512f")))]
#[derive(Clone, Copy)]
struct Columns {
    first: usize,
    of: usize,
}

/// Up to TILE_ROWS rows of a product: of x (`stride` apart, each its taps of `k.len()` values, the
/// matrix's rows from `k.start`), of the residual and of the output.
#[cfg(any(fma256, all(target_arch = "x86_64", target_feature = "avx512f")))]
struct Tile<'a> {
    x: &'a [f32],
    stride: usize,
    k: Range<usize>,
    taps: &'a [usize],
    residual: Option<&'a [f32]>,
    out: &'a mut [f32],
}

#[cfg(any(fma256, all(target_arch = "x86_64", target_feature = "avx512f")))]
impl<'a> Tile<'a> {
    /// Rows `rows` of a product whose output rows are `n` columns long.
    fn of(lhs: &Lhs<'a>, epilogue: &Epilogue<'a>, out: &'a mut [f32], rows: Range<usize>, n: usize) -> Self {
        Tile {
            x: &lhs.x[rows.start * lhs.stride..][..reach(lhs.taps, rows.len(), lhs.stride, lhs.k.len())],
            stride: lhs.stride,
            k: lhs.k.clone(),
            taps: lhs.taps,
            residual: epilogue.residual.map(|r| &r[rows.start * n..rows.end * n]),
            out: &mut out[rows.start * n..rows.end * n],
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[inline(always)]
unsafe fn tile_avx512<const R: usize, const V: usize>(panel: &Panel, at: Columns, tile: Tile, epilogue: &Epilogue) {
    use std::arch::x86_64::*;
    let Tile { x, stride, k, taps, residual, out } = tile;
    debug_assert_eq!(panel.stride(), V * LANES);
    let masks: [u16; V] = super::lane_masks(panel.width);
    let n = at.of;
    let op = out.as_mut_ptr().add(at.first);
    let mut acc: [[__m512; V]; R] = match epilogue.start {
        Start::Zero => [[_mm512_setzero_ps(); V]; R],
        Start::Bias(bias) => {
            let b: [__m512; V] =
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bias.as_ptr().add(panel.first + v * LANES)));
            [b; R]
        }
        Start::Output => {
            std::array::from_fn(|r| std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], op.add(r * n + v * LANES))))
        }
    };
    for (t, &tap) in taps.iter().enumerate() {
        let xp = x.as_ptr().add(tap);
        let wp = panel.weights.as_ptr().add((k.start + t * k.len()) * V * LANES);
        for i in 0..k.len() {
            let wt: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(wp.add(i * V * LANES + v * LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(r * stride + i));
                for v in 0..V {
                    acc[v] = _mm512_fmadd_ps(xv, wt[v], acc[v]);
                }
            }
        }
    }
    let (lo, hi) = epilogue.activation.bounds();
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let clamp = epilogue.activation != Activation::Identity;
    for (r, acc) in acc.into_iter().enumerate() {
        for (v, mut a) in acc.into_iter().enumerate() {
            let offset = r * n + v * LANES;
            if let Some(res) = residual {
                a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(masks[v], res.as_ptr().add(at.first + offset)));
            }
            if clamp {
                a = _mm512_min_ps(_mm512_max_ps(a, lo), hi);
            }
            _mm512_mask_storeu_ps(op.add(offset), masks[v], a);
        }
    }
}

/// Rows per AVX2 tile: four rows of three registers are 12 accumulators; with three weights and
/// a broadcast, all 16 registers. Six rows of two registers keep as many accumulators but
/// broadcast half as many values again per multiply, and ran about 15% slower (Zen 3).
#[cfg(fma256)]
const AVX2_TILE_ROWS: usize = 4;
/// Columns per AVX2 tile (three registers): a panel is up to two of them side by side.
#[cfg(fma256)]
const AVX2_TILE_COLUMNS: usize = 24;
#[cfg(fma256)]
use super::avx2::LANES as AVX2_LANES;

#[cfg(fma256)]
impl PackedMatrix {
    /// Row tiles, and in each the panel's columns 24 at a time, all in place: the tile's rows of
    /// x stay in L1 while each block of columns is multiplied. The rows are shared out evenly
    /// ([`super::avx2::even_tiles`]). A product of one row
    /// (a classifier's) takes a whole panel at a time, for six accumulators.
    fn multiply_avx2(&self, lhs: &Lhs, out: &mut [f32], epilogue: &Epilogue, panels: Range<usize>) {
        let columns = self.panel_columns(panels.clone());
        let (m, n) = (lhs.m, columns.len());
        let block_columns = if m == 1 { PANEL_LANES } else { AVX2_TILE_COLUMNS };
        for panel in &self.panels[panels] {
            let at = Columns { first: panel.first - columns.start, of: n };
            for rows in super::avx2::even_tiles(m, AVX2_TILE_ROWS) {
                for block in (0..panel.width).step_by(block_columns) {
                    let width = block_columns.min(panel.width - block);
                    let tile = Tile::of(lhs, epilogue, out, rows.clone(), n);
                    self.tile_avx2(panel, at, block..block + width, tile, rows.len(), epilogue);
                }
            }
        }
    }

    /// One tile: `rows` (up to AVX2_TILE_ROWS) rows times the panel's columns `block` (up to
    /// AVX2_TILE_COLUMNS of them, or a whole panel for a single row).
    fn tile_avx2(&self, panel: &Panel, at: Columns, block: Range<usize>, tile: Tile, rows: usize, epilogue: &Epilogue) {
        match (rows.min(AVX2_TILE_ROWS), block.len().div_ceil(AVX2_LANES)) {
            (1, 1) => self.tile_avx2_of::<1, 1>(panel, at, block, tile, epilogue),
            (1, 2) => self.tile_avx2_of::<1, 2>(panel, at, block, tile, epilogue),
            (1, 3) => self.tile_avx2_of::<1, 3>(panel, at, block, tile, epilogue),
            (1, 4) => self.tile_avx2_of::<1, 4>(panel, at, block, tile, epilogue),
            (1, 5) => self.tile_avx2_of::<1, 5>(panel, at, block, tile, epilogue),
            (1, _) => self.tile_avx2_of::<1, 6>(panel, at, block, tile, epilogue),
            (2, 1) => self.tile_avx2_of::<2, 1>(panel, at, block, tile, epilogue),
            (2, 2) => self.tile_avx2_of::<2, 2>(panel, at, block, tile, epilogue),
            (2, _) => self.tile_avx2_of::<2, 3>(panel, at, block, tile, epilogue),
            (3, 1) => self.tile_avx2_of::<3, 1>(panel, at, block, tile, epilogue),
            (3, 2) => self.tile_avx2_of::<3, 2>(panel, at, block, tile, epilogue),
            (3, _) => self.tile_avx2_of::<3, 3>(panel, at, block, tile, epilogue),
            (_, 1) => self.tile_avx2_of::<AVX2_TILE_ROWS, 1>(panel, at, block, tile, epilogue),
            (_, 2) => self.tile_avx2_of::<AVX2_TILE_ROWS, 2>(panel, at, block, tile, epilogue),
            (_, _) => self.tile_avx2_of::<AVX2_TILE_ROWS, 3>(panel, at, block, tile, epilogue),
        }
    }

    /// `R` rows times the `block` of `V` registers of columns (the last, maybe, not whole).
    fn tile_avx2_of<const R: usize, const V: usize>(
        &self,
        panel: &Panel,
        at: Columns,
        block: Range<usize>,
        tile: Tile,
        epilogue: &Epilogue,
    ) {
        let n = at.of;
        let width = block.len();
        assert!((1..=AVX2_TILE_ROWS).contains(&R) && V * AVX2_LANES <= PANEL_LANES);
        assert!(width.div_ceil(AVX2_LANES) == V && block.end <= panel.width);
        assert!(tile.x.len() >= reach(tile.taps, R, tile.stride, tile.k.len()));
        assert!(tile.out.len() >= R * n && tile.k.start + tile.taps.len() * tile.k.len() <= self.rows);
        assert!(tile.residual.is_none_or(|r| r.len() >= R * n));
        assert!(at.first + panel.width <= n && block.start + width.div_ceil(AVX2_LANES) * AVX2_LANES <= panel.stride());
        if let Start::Bias(bias) = epilogue.start {
            assert!(bias.len() >= panel.first + panel.width);
        }
        let at = Columns { first: at.first + block.start, of: n };
        // SAFETY: AVX2 and FMA are compiled in; the asserts bound the rows read and written, the
        // weights read are inside the panel's zero-padded rows, and a block short of whole
        // registers goes through copies of its `width` columns of the output, bias and residual.
        unsafe {
            if width.is_multiple_of(AVX2_LANES) {
                tile_avx2::<R, V, false>(panel, at, block.start, width, tile, epilogue)
            } else {
                tile_avx2::<R, V, true>(panel, at, block.start, width, tile, epilogue)
            }
        }
    }
}

/// The tile's accumulators over the panel's columns `block..block + V * 8`, of which the first
/// `width` are the output's columns from `at.first` (all of them unless `SHORT`: AMD's masked
/// stores are slow, so a short block's bias, residual and output go through a stack copy).
#[cfg(fma256)]
#[inline(always)]
unsafe fn tile_avx2<const R: usize, const V: usize, const SHORT: bool>(
    panel: &Panel,
    at: Columns,
    block: usize,
    width: usize,
    tile: Tile,
    epilogue: &Epilogue,
) {
    use std::arch::x86_64::*;
    let Tile { x, stride, k, taps, residual, out } = tile;
    let n = at.of;
    let ps = panel.stride();
    let op = out.as_mut_ptr().add(at.first);
    let load = |from: *const f32| super::avx2::load::<V>(from, width, SHORT);
    let mut acc: [[__m256; V]; R] = match epilogue.start {
        Start::Zero => [[_mm256_setzero_ps(); V]; R],
        Start::Bias(bias) => [load(bias.as_ptr().add(panel.first + block)); R],
        Start::Output => std::array::from_fn(|r| load(op.add(r * n))),
    };
    for (t, &tap) in taps.iter().enumerate() {
        let xp = x.as_ptr().add(tap);
        let wp = panel.weights.as_ptr().add((k.start + t * k.len()) * ps + block);
        for i in 0..k.len() {
            let wt: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(wp.add(i * ps + v * AVX2_LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*xp.add(r * stride + i));
                for v in 0..V {
                    acc[v] = _mm256_fmadd_ps(xv, wt[v], acc[v]);
                }
            }
        }
    }
    let (lo, hi) = epilogue.activation.bounds();
    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let clamp = epilogue.activation != Activation::Identity;
    for (r, mut acc) in acc.into_iter().enumerate() {
        if let Some(res) = residual {
            let add = load(res.as_ptr().add(at.first + r * n));
            for v in 0..V {
                acc[v] = _mm256_add_ps(acc[v], add[v]);
            }
        }
        if clamp {
            for a in &mut acc {
                *a = _mm256_min_ps(_mm256_max_ps(*a, lo), hi);
            }
        }
        super::avx2::store(op.add(r * n), width, SHORT, acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pseudo_random as numbers;

    /// Every kernel against the definition: widths short of, between and past the registers,
    /// the AVX2 blocks and the panels, row counts that leave a short tile of every height (1 to 7
    /// rows of AVX-512's, 1 to 3 of AVX2's, whose rows are shared out evenly) or are one,
    /// overlapping rows, a range of the matrix's rows, starting at a bias, at the output or at
    /// zero, with a residual and ReLU6 or without.
    #[test]
    fn products_match_the_definition_on_odd_shapes() {
        for (rows, cols) in [(1, 1), (5, 3), (27, 16), (20, 24), (40, 47), (96, 100), (9, 145), (601, 30)] {
            let weights = numbers(rows * cols, (rows * cols) as u32);
            let matrix = PackedMatrix::new(&weights, rows, cols);
            let bias = numbers(cols, 3);
            for (m, k, stride) in [
                (1, 0..rows, rows),
                (9, 0..rows, rows),
                (30, rows / 3..rows, 2),
                (100, 0..1, 1),
                (3, 0..rows, rows + 1),
                (7, rows / 2..rows, 3),
                (10, 0..rows, rows),
                (13, 0..rows, rows),
                (2, 0..rows, rows),
                (5, rows / 2..rows, rows),
            ] {
                let klen = k.len();
                let stride = stride.max(1);
                let x = numbers((m - 1) * stride + klen, m as u32);
                let residual = numbers(m * cols, 7);
                let before = numbers(m * cols, 8);
                for (start, with_residual, activation) in [
                    (0, false, Activation::Relu6),
                    (1, true, Activation::Identity),
                    (0, true, Activation::Relu6),
                    (2, false, Activation::Identity),
                    (1, true, Activation::Relu),
                ] {
                    let mut want = before.clone();
                    for (r, c) in (0..m).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                        let start = [bias[c], before[r * cols + c], 0.0][start];
                        let dot: f32 = (0..klen).map(|i| x[r * stride + i] * weights[(k.start + i) * cols + c]).sum();
                        let v = start + dot + if with_residual { residual[r * cols + c] } else { 0.0 };
                        want[r * cols + c] = activation.apply(v);
                    }
                    let epilogue = Epilogue {
                        start: [Start::Bias(&bias), Start::Output, Start::Zero][start],
                        residual: with_residual.then_some(residual.as_slice()),
                        activation,
                    };
                    for kernel in Kernel::built() {
                        let mut got = before.clone();
                        got.push(f32::NAN);
                        let lhs = Lhs { x: &x, stride, m, k: k.clone(), taps: ONE_TAP };
                        matrix.multiply_with(&lhs, &mut got, &epilogue, kernel);
                        assert!(got[m * cols].is_nan(), "{kernel:?} wrote past the output");
                        let diff = max_diff(&got[..m * cols], &want);
                        assert!(
                            diff < 1e-4,
                            "{kernel:?} {m}x{klen} (stride {stride}) x ({rows}, {cols}), start {start}, \
                             residual {with_residual}, {activation:?}: max diff {diff}"
                        );
                    }
                }
            }
        }
    }

    /// A product of some of the panels is those columns of the whole product, also where they
    /// end in a part-filled panel, with a residual of their own and the whole matrix's bias.
    #[test]
    fn a_product_of_some_panels_is_those_columns_of_the_whole() {
        for (rows, cols) in [(40, 145), (7, 100), (33, 49)] {
            let matrix = PackedMatrix::new(&numbers(rows * cols, 5), rows, cols);
            let bias = numbers(cols, 6);
            let count = matrix.panel_count();
            for m in [1, 5, 13] {
                let x = numbers(m * rows, 7);
                let residual = numbers(m * cols, 8);
                let lhs = Lhs { x: &x, stride: rows, m, k: 0..rows, taps: ONE_TAP };
                let whole_epilogue =
                    Epilogue { start: Start::Bias(&bias), residual: Some(&residual), activation: Activation::Relu6 };
                // The whole product on the portable path (checked against the definition above).
                let mut whole = vec![0f32; m * cols];
                matrix.multiply_with(&lhs, &mut whole, &whole_epilogue, Kernel::Portable);
                for panels in [0..1, 1..count, count - 1..count, 0..count] {
                    let columns = matrix.panel_columns(panels.clone());
                    let part = |all: &[f32]| -> Vec<f32> {
                        all.chunks_exact(cols).flat_map(|row| row[columns.clone()].to_vec()).collect()
                    };
                    let their_residual = part(&residual);
                    let epilogue = Epilogue { residual: Some(&their_residual), ..whole_epilogue };
                    for kernel in Kernel::built() {
                        let mut got = vec![f32::NAN; m * columns.len() + 1];
                        matrix.multiply_panels_with(&lhs, &mut got, &epilogue, panels.clone(), kernel);
                        assert!(got[m * columns.len()].is_nan(), "{kernel:?} wrote past the output");
                        let diff = max_diff(&got[..m * columns.len()], &part(&whole));
                        assert!(diff < 1e-4, "{kernel:?} {m} rows, panels {panels:?} of ({rows}, {cols}): {diff}");
                    }
                }
            }
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    }

    /// Several taps per row (a convolution's kernel rows, read in place) against the definition:
    /// taps out of order and overlapping, rows that leave a short tile, widths past a panel,
    /// deep products, on every kernel.
    #[test]
    fn tapped_products_match_the_definition() {
        for (cols, taps, k, m, stride) in [
            (16, &[0usize][..], 3..7, 9, 2),
            (32, &[0, 40, 80][..], 0..27, 16, 3),
            (8, &[5, 0][..], 2..12, 13, 1),
            (47, &[0, 11, 22, 33][..], 1..10, 7, 6),
            (100, &[64, 0, 32][..], 0..32, 21, 64),
            // Deep products: many taps, and one deep tap.
            (30, &[0, 130, 260, 390, 520][..], 3..123, 9, 3),
            (20, &[10, 0][..], 0..300, 6, 7),
        ] {
            let rows = k.start + taps.len() * k.len() + 2;
            let weights = numbers(rows * cols, (rows + cols) as u32);
            let matrix = PackedMatrix::new(&weights, rows, cols);
            let last = taps.iter().max().unwrap();
            let x = numbers(last + (m - 1) * stride + k.len(), m as u32);
            let before = numbers(m * cols, 9);
            let mut want = before.clone();
            for (r, c) in (0..m).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                let mut dot = 0f32;
                for (t, &tap) in taps.iter().enumerate() {
                    for i in 0..k.len() {
                        dot += x[tap + r * stride + i] * weights[(k.start + t * k.len() + i) * cols + c];
                    }
                }
                want[r * cols + c] += dot;
            }
            let epilogue = Epilogue { start: Start::Output, residual: None, activation: Activation::Identity };
            for kernel in Kernel::built() {
                let mut got = before.clone();
                let lhs = Lhs { x: &x, stride, m, k: k.clone(), taps };
                matrix.multiply_with(&lhs, &mut got, &epilogue, kernel);
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-4, "{kernel:?} {m} rows, taps {taps:?} of {k:?}, {cols} columns: max diff {diff}");
            }
        }
    }
}
