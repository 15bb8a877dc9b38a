//! CPU kernels for the BERT encoder in [`crate::cpu`]: dense layers over weights packed once at load
//! into panels of 64 output columns, so that the inner loop streams one panel contiguously and keeps
//! a 6 x 64 block of outputs in registers (candle's matmul against a transposed weight repacks it
//! on every call). GELU, softmax and layer norm are the runtime's ([`zoo_runtime::cpu`]).

use std::ops::Range;

use rayon::prelude::*;
use zoo_runtime::cpu;

/// Output columns per packed panel: four AVX-512 registers.
pub const PANEL: usize = 64;
/// Rows per register block: 6 x 4 accumulators leave registers free for the weights.
pub const MICRO: usize = 6;
/// Most rows per parallel task (a multiple of MICRO): a tweet's tokens are one block, so the
/// weights are read once per text; its partial sums take 24 KB of L1.
const ROW_BLOCK: usize = 96;
/// Panel rows per chunk of a dense tile: 12 KB of weights, which stay in L1 beside the tile's
/// partial sums while every register block of the tile goes over them.
const KC: usize = 48;

/// 64-byte aligned storage, so that every panel row is one cache line per register load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

fn aligned(len: usize) -> Vec<Line> {
    vec![Line([0.0; 16]); len.div_ceil(16)]
}

fn floats(lines: &[Line]) -> &[f32] {
    // SAFETY: Line is repr(C) over 16 f32s with no padding (64 bytes at 64-byte alignment).
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * 16) }
}

fn floats_mut(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: as in `floats`.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 16) }
}

/// A buffer that parallel tasks write disjoint parts of (tiles of a row-major matrix, or one
/// head's columns of some rows), which safe slices cannot express.
#[derive(Clone, Copy)]
pub(crate) struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: Shared is only handed to tasks that write disjoint ranges (see `slice`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        Shared { ptr: buffer.as_mut_ptr(), len: buffer.len() }
    }

    /// # Safety
    /// No two slices alive at the same time may overlap, and the buffer `new` took must outlive them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "shared slice out of bounds");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// The activation applied to a dense layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    /// GELU with the exact erf, as transformers' "gelu".
    Gelu,
    /// GELU with the tanh approximation ("gelu_new", candle's `gelu`).
    GeluTanh,
    Relu,
}

/// A (k, n) matrix packed for right-multiplication: panels of PANEL columns, each (k, PANEL)
/// row-major and zero past n, so a register block streams one panel contiguously.
pub struct Panels {
    lines: Vec<Line>,
    pub k: usize,
    pub n: usize,
}

impl Panels {
    /// Element (i, j) is `value(i, j)`.
    pub fn new(k: usize, n: usize, value: impl Fn(usize, usize) -> f32) -> Self {
        let count = n.div_ceil(PANEL);
        let mut lines = aligned(count * k * PANEL);
        let packed = floats_mut(&mut lines);
        for (p, panel) in packed.chunks_exact_mut(k * PANEL).take(count).enumerate() {
            for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (c, v) in row.iter_mut().enumerate().take(n.saturating_sub(p * PANEL)) {
                    *v = value(i, p * PANEL + c);
                }
            }
        }
        Panels { lines, k, n }
    }

    pub fn count(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Columns of panel `p` that hold the matrix (the rest are padding).
    pub fn columns(&self, p: usize) -> usize {
        PANEL.min(self.n - p * PANEL)
    }

    /// acc[..m] += rows 0..m of x (floats `ks` of rows `stride` apart, x starting at the first)
    /// times rows `ks` of panel `p`.
    #[inline(always)]
    pub fn accumulate(&self, p: usize, ks: Range<usize>, x: &[f32], stride: usize, acc: &mut [[f32; PANEL]]) {
        assert!(ks.end <= self.k, "panel rows out of range");
        let w = &floats(&self.lines)[(p * self.k + ks.start) * PANEL..(p * self.k + ks.end) * PANEL];
        micro(x, stride, ks.len(), w, acc);
    }
}

/// A dense layer y = x W^T + b with W packed once into [`Panels`].
pub struct Linear {
    /// W^T: (cin, cout).
    weights: Panels,
    /// Padded with zeros to whole panels.
    bias: Vec<f32>,
    pub cin: usize,
    pub cout: usize,
}

impl Linear {
    /// `weight`: (cout, cin) row-major, as PyTorch stores it.
    pub fn new(weight: &[f32], bias: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin, "weight size");
        assert_eq!(bias.len(), cout, "bias size");
        let weights = Panels::new(cin, cout, |i, o| weight[o * cin + i]);
        let mut padded = bias.to_vec();
        padded.resize(weights.count() * PANEL, 0.0);
        Linear { weights, bias: padded, cin, cout }
    }

    /// From candle tensors: `weight` (cout, cin), `bias` (cout).
    pub fn from_tensors(weight: &candle_core::Tensor, bias: &candle_core::Tensor) -> candle_core::Result<Self> {
        let (cout, cin) = weight.dims2()?;
        Ok(Linear::new(&weight.flatten_all()?.to_vec1()?, &bias.to_vec1()?, cout, cin))
    }

    /// out (rows x cout) = act(x (rows x cin) W^T + b), both row-major. Tasks are tiles of up to
    /// ROW_BLOCK rows by one panel; a few rows (one short text) are split by panels alone, so the
    /// threads share the weights instead of each reading all of them.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], act: Act) {
        let (cin, cout) = (self.cin, self.cout);
        assert!(x.len() >= rows * cin && out.len() >= rows * cout, "dense layer buffers too short");
        let n_panels = self.weights.count();
        // Blocks of even size: 100 rows as 54 + 46, not 96 + 4, which would read every weight
        // again for four rows.
        let row_blocks = rows.div_ceil(ROW_BLOCK);
        let block_rows = rows.div_ceil(row_blocks.max(1)).next_multiple_of(MICRO);
        let shared = Shared::new(&mut out[..rows * cout]);
        (0..row_blocks * n_panels).into_par_iter().for_each(|task| {
            let (block, panel) = (task / n_panels, task % n_panels);
            let first = block * block_rows;
            let last = (first + block_rows).min(rows);
            self.tile(x, first..last, panel, shared, act);
        });
    }

    /// Rows `rows` (at most ROW_BLOCK) of panel `panel`'s columns. The panel is taken KC rows at
    /// a time for all of the tile's rows, so each chunk is read from memory once and then from L1.
    #[inline(never)]
    fn tile(&self, x: &[f32], rows: Range<usize>, panel: usize, out: Shared, act: Act) {
        let (cin, cout) = (self.cin, self.cout);
        let col0 = panel * PANEL;
        let cols = self.weights.columns(panel);
        let bias: &[f32; PANEL] = self.bias[col0..col0 + PANEL].try_into().unwrap();
        let mut acc = [*bias; ROW_BLOCK];
        let acc = &mut acc[..rows.len()];
        for k0 in (0..cin).step_by(KC) {
            let ks = k0..(k0 + KC).min(cin);
            for (i, block) in acc.chunks_mut(MICRO).enumerate() {
                let first = (rows.start + i * MICRO) * cin + k0;
                self.weights.accumulate(panel, ks.clone(), &x[first..], cin, block);
            }
        }
        for (r, row) in rows.zip(acc.iter_mut()) {
            activate(&mut row[..cols], act);
            // SAFETY: tile (row block, panel) alone writes these columns of these rows.
            store(unsafe { out.slice(r * cout + col0, cols) }, row);
        }
    }
}

/// dst = row[..dst.len()], 16 floats at a time: a memmove call per row of a tile costs more than
/// the copy.
#[inline(always)]
pub(crate) fn store(dst: &mut [f32], row: &[f32; PANEL]) {
    let whole = dst.len() / 16 * 16;
    for (d, s) in dst.chunks_exact_mut(16).zip(row.chunks_exact(16)) {
        let d: &mut [f32; 16] = d.try_into().unwrap();
        *d = s.try_into().unwrap();
    }
    for (d, s) in dst[whole..].iter_mut().zip(&row[whole..]) {
        *d = *s;
    }
}

/// acc (at most MICRO rows) += x (as many rows of k floats, `stride` apart) times a (k, PANEL) panel.
#[inline(always)]
fn micro(x: &[f32], stride: usize, k: usize, w: &[f32], acc: &mut [[f32; PANEL]]) {
    let m = acc.len();
    assert!((1..=MICRO).contains(&m) && k <= stride && x.len() >= (m - 1) * stride + k && w.len() >= k * PANEL);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: avx512f is enabled at compile time; the assert above bounds every access.
        unsafe {
            match m {
                6 => micro_avx512::<6>(x, stride, k, w, acc),
                5 => micro_avx512::<5>(x, stride, k, w, acc),
                4 => micro_avx512::<4>(x, stride, k, w, acc),
                3 => micro_avx512::<3>(x, stride, k, w, acc),
                2 => micro_avx512::<2>(x, stride, k, w, acc),
                _ => micro_avx512::<1>(x, stride, k, w, acc),
            }
        }
        return;
    }
    #[allow(unreachable_code)]
    micro_portable(x, stride, k, w, acc)
}

/// [`micro`] in plain Rust, for builds without AVX-512.
#[inline(always)]
fn micro_portable(x: &[f32], stride: usize, k: usize, w: &[f32], acc: &mut [[f32; PANEL]]) {
    for kk in 0..k {
        let wr: &[f32; PANEL] = w[kk * PANEL..(kk + 1) * PANEL].try_into().unwrap();
        for (r, row) in acc.iter_mut().enumerate() {
            let xv = x[r * stride + kk];
            for (a, w) in row.iter_mut().zip(wr) {
                *a += w * xv;
            }
        }
    }
}

/// [`micro`] in AVX-512 for R rows: R x 4 accumulators stay in registers for the whole k loop,
/// each weight register is used R times and each broadcast input 4 times.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[inline(always)]
unsafe fn micro_avx512<const R: usize>(x: &[f32], stride: usize, k: usize, w: &[f32], acc: &mut [[f32; PANEL]]) {
    use std::arch::x86_64::*;
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut a = [[_mm512_setzero_ps(); 4]; R];
    for (ar, row) in a.iter_mut().zip(acc.iter()) {
        for (c, v) in ar.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(row.as_ptr().add(16 * c));
        }
    }
    for kk in 0..k {
        let wk = wp.add(kk * PANEL);
        let w = [
            _mm512_loadu_ps(wk),
            _mm512_loadu_ps(wk.add(16)),
            _mm512_loadu_ps(wk.add(32)),
            _mm512_loadu_ps(wk.add(48)),
        ];
        for (r, ar) in a.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*xp.add(r * stride + kk));
            for c in 0..4 {
                ar[c] = _mm512_fmadd_ps(w[c], xv, ar[c]);
            }
        }
    }
    for (ar, row) in a.iter().zip(acc.iter_mut()) {
        for (c, v) in ar.iter().enumerate() {
            _mm512_storeu_ps(row.as_mut_ptr().add(16 * c), *v);
        }
    }
}

pub fn activate(xs: &mut [f32], act: Act) {
    match act {
        Act::None => {}
        Act::Gelu => xs.iter_mut().for_each(|v| *v = cpu::gelu(*v)),
        Act::GeluTanh => {
            const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
            xs.iter_mut()
                .for_each(|v| *v = 0.5 * *v * (1.0 + cpu::tanh(SQRT_TWO_OVER_PI * *v * (1.0 + 0.044715 * *v * *v))))
        }
        Act::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoo_runtime::test_support::pseudo_random as numbers;

    #[test]
    fn dense_layer_matches_a_plain_product_for_every_tile_shape() {
        // Rows past one ROW_BLOCK and not a multiple of MICRO; columns past one panel, not a whole one.
        for (rows, cin, cout) in
            [(1, 5, 3), (7, 37, 70), (ROW_BLOCK + 11, 40, 2 * PANEL + 9), (2 * ROW_BLOCK + 1, 70, 64), (13, 384, 64)]
        {
            let (w, b, x) = (numbers(cout * cin, 1), numbers(cout, 2), numbers(rows * cin, 3));
            let layer = Linear::new(&w, &b, cout, cin);
            let mut out = vec![0f32; rows * cout];
            layer.forward(&x, rows, &mut out, Act::None);
            for r in 0..rows {
                for o in 0..cout {
                    let want: f64 =
                        b[o] as f64 + (0..cin).map(|i| x[r * cin + i] as f64 * w[o * cin + i] as f64).sum::<f64>();
                    let got = out[r * cout + o] as f64;
                    assert!(
                        (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "({rows}, {cin}, {cout}) [{r}, {o}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The AVX-512 block (where the build has it) and the portable one agree.
    #[test]
    fn register_block_paths_agree() {
        let k = 50;
        let (x, w) = (numbers(MICRO * k, 4), numbers(k * PANEL, 5));
        let bias: [f32; PANEL] = numbers(PANEL, 6).try_into().unwrap();
        for m in 1..=MICRO {
            let (mut fast, mut portable) = ([bias; MICRO], [bias; MICRO]);
            micro(&x, k, k, &w, &mut fast[..m]);
            micro_portable(&x, k, k, &w, &mut portable[..m]);
            for r in 0..m {
                let diff = fast[r].iter().zip(&portable[r]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-5, "{m} rows, row {r}: max diff {diff}");
            }
        }
    }
}
