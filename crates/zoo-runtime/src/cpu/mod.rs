//! CPU helpers the tasks' hand-written kernels share: a matrix product, the elementwise and row
//! functions of a transformer (exp, erf, GELU, tanh, softmax, layer norm) written so that loops
//! over them vectorise: only arithmetic (no libm calls, no saturating float-to-int casts) and sums
//! kept in independent lanes; and ([`nhwc`]) the convolutions of MobileNet-style networks.

pub mod nhwc;
pub mod packed;
pub mod quantized;

/// What a layer does to its sums as it stores them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    /// ReLU6 where `on`, else nothing: the MobileNets' two kinds of layer.
    pub fn relu6(on: bool) -> Self {
        if on {
            Activation::Relu6
        } else {
            Activation::Identity
        }
    }

    /// The range the outputs are clamped to.
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Activation::Identity => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
        }
    }

    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }
}

/// Which kernel runs: the fastest this build has, the portable one, or the plain
/// definition (the last two for tests).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kernel {
    Fastest,
    /// The AVX2 one, which is the fastest where there is no AVX-512 (and runs in tests where
    /// there is).
    #[cfg(fma256)]
    #[cfg_attr(all(not(test), target_feature = "avx512f"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
    #[cfg_attr(not(test), allow(dead_code))]
    Plain,
}

impl Kernel {
    /// Every kernel this build has besides the plain definition, for tests to hold to it.
    #[cfg(test)]
    pub(crate) fn built() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Fastest];
        #[cfg(fma256)]
        kernels.push(Kernel::Avx2);
        kernels.push(Kernel::Portable);
        kernels
    }
}

/// out (m x n) = a * b, or += with `accumulate`: a is m rows of k floats starting `a_stride` apart
/// (rows may overlap: a stride-1 convolution reads its padded input in place), b is k x n, all
/// row-major.
pub fn matmul(
    (a, a_stride): (&[f32], usize),
    b: &[f32],
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(m > 0 && a.len() >= (m - 1) * a_stride + k, "matmul: the left operand is too short");
    assert!(b.len() >= k * n && out.len() >= m * n, "matmul: operands too short");
    // SAFETY: the asserts keep every element the strides describe inside its slice; out is
    // written only, and aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            a_stride as isize,
            b.as_ptr(),
            1,
            n as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// e^x to within 2 ulp for x in [-87, 88] (clamped there): 2^n e^r with |r| <= ln 2 / 2, ln 2
/// split in two so that r is exact, e^r by its Taylor series to r^7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer held in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // Integer arithmetic on the mantissa bits builds 2^n where `n as i32` would keep loops scalar.
    let exponent = shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(exponent << 23)
}

/// erf to within 2e-7 (Abramowitz and Stegun 7.1.26, with the exp above).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// GELU with the exact erf, as BERT and Whisper were trained.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// f32 lanes of one AVX-512 register (two AVX2 ones): the width the kernels here block by.
pub const LANES: usize = 16;

/// The AVX-512 lane masks of `V` registers holding the first `width` of their values.
#[cfg_attr(not(all(target_arch = "x86_64", target_feature = "avx512f")), allow(dead_code))]
pub(crate) fn lane_masks<const V: usize>(width: usize) -> [u16; V] {
    std::array::from_fn(|v| match width.saturating_sub(v * LANES).min(LANES) {
        LANES => u16::MAX,
        lanes => (1u16 << lanes) - 1,
    })
}

/// What the AVX2 kernels share: loads and stores of a block of columns, V registers wide, whose
/// last register may be part-filled. AVX2 has no mask registers and AMD's masked stores are slow,
/// so a short block goes through a copy on the stack.
#[cfg(fma256)]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// f32 lanes of an AVX2 register.
    pub const LANES: usize = 8;
    /// The widest block: a panel of the packed products.
    const MAX_COLUMNS: usize = 3 * super::LANES;

    /// `m` rows in tiles of at most `most`, shared out evenly (49 rows in tiles of up to 4 are
    /// ten of 4 and three of 3, not twelve of 4 and one of 1): a tile of one or two rows has too
    /// few accumulators to hide the multiply's latency.
    pub fn even_tiles(m: usize, most: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let tiles = m.div_ceil(most);
        (0..tiles).scan(0, move |r0, t| {
            let rows = (m - *r0).div_ceil(tiles - t);
            let tile = *r0..*r0 + rows;
            *r0 += rows;
            Some(tile)
        })
    }

    /// V registers of the `width` values at `from` (zeros past them where `short`).
    ///
    /// # Safety
    /// AVX2 must be available; `from` must hold `width` values, and V * LANES unless `short`.
    #[inline(always)]
    pub unsafe fn load<const V: usize>(from: *const f32, width: usize, short: bool) -> [__m256; V] {
        debug_assert!(V * LANES <= MAX_COLUMNS && width <= V * LANES && (short || width == V * LANES));
        if short {
            let mut copy = [0f32; MAX_COLUMNS];
            std::ptr::copy_nonoverlapping(from, copy.as_mut_ptr(), width);
            std::array::from_fn(|v| _mm256_loadu_ps(copy.as_ptr().add(v * LANES)))
        } else {
            std::array::from_fn(|v| _mm256_loadu_ps(from.add(v * LANES)))
        }
    }

    /// The first `width` values of the registers to `to`.
    ///
    /// # Safety
    /// As [`load`], for writing.
    #[inline(always)]
    pub unsafe fn store<const V: usize>(to: *mut f32, width: usize, short: bool, values: [__m256; V]) {
        debug_assert!(V * LANES <= MAX_COLUMNS && width <= V * LANES && (short || width == V * LANES));
        if short {
            let mut copy = [0f32; MAX_COLUMNS];
            for (v, value) in values.into_iter().enumerate() {
                _mm256_storeu_ps(copy.as_mut_ptr().add(v * LANES), value);
            }
            std::ptr::copy_nonoverlapping(copy.as_ptr(), to, width);
        } else {
            for (v, value) in values.into_iter().enumerate() {
                _mm256_storeu_ps(to.add(v * LANES), value);
            }
        }
    }
}

/// Grows `buf` to at least `len` values (a scratch buffer reused between calls).
pub fn ensure(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// A reduction of `xs` in LANES independent partial results, which vectorises (a single running
/// one is a chain the compiler must keep in order, floats not being associative).
#[inline(always)]
pub fn reduce(xs: &[f32], init: f32, map: impl Fn(f32) -> f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |a, &v| combine(a, map(v)));
    for chunk in chunks {
        acc.iter_mut().zip(chunk).for_each(|(a, &v)| *a = combine(*a, map(v)));
    }
    acc.iter().fold(tail, |a, &v| combine(a, v))
}

/// The sum of `map` over `xs`, vectorised (see [`reduce`]).
#[inline(always)]
pub fn sum(xs: &[f32], map: impl Fn(f32) -> f32) -> f32 {
    reduce(xs, 0.0, map, |a, b| a + b)
}

/// Softmax of `row` in place.
pub fn softmax(row: &mut [f32]) {
    // Not f32::max, whose NaN rules keep the compiler from vectorising it.
    let max = reduce(row, f32::NEG_INFINITY, |v| v, |a, v| if v > a { v } else { a });
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum(row, |v| v);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Layer norm of one row in place: (x - mean) / sqrt(var + eps) * gamma + beta.
pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum(x, |v| v) / n;
    x.iter_mut().for_each(|v| *v -= mean);
    let var = sum(x, |v| v * v) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = *v * inv * g + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pseudo_random as numbers;

    #[test]
    fn softmax_and_layer_norm_match_plain_f64() {
        // Lengths below, at and past the lane count, and the widths of the models' rows.
        for n in [1, 5, 16, 37, 384, 1500] {
            let x: Vec<f32> = numbers(n, n as u32).iter().map(|v| v * 8.0).collect();
            let max = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let total: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
            let mut p = x.clone();
            softmax(&mut p);
            for (p, v) in p.iter().zip(&x) {
                let want = (*v as f64 - max).exp() / total;
                assert!((*p as f64 - want).abs() < 1e-6 * (1.0 + want), "softmax over {n}: {p} vs {want}");
            }
            let (gamma, beta) = (numbers(n, 7), numbers(n, 8));
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let mut y = x.clone();
            layer_norm(&mut y, &gamma, &beta, 1e-12);
            for i in 0..n {
                let want = (x[i] as f64 - mean) / (var + 1e-12).sqrt() * gamma[i] as f64 + beta[i] as f64;
                assert!((y[i] as f64 - want).abs() < 1e-5, "layer norm over {n} [{i}]: {} vs {want}", y[i]);
            }
        }
    }

    #[test]
    fn exp_erf_gelu_and_tanh_are_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 / 1000.0;
            let e = (x as f64).exp();
            assert!(((exp(x) as f64 - e) / e).abs() < 3e-7, "exp({x}) = {} vs {e}", exp(x));
            assert!((tanh(x) as f64 - (x as f64).tanh()).abs() < 3e-7, "tanh({x})");
        }
        for x in [-87.0f32, -50.0, 30.0, 88.0] {
            let e = (x as f64).exp();
            assert!(((exp(x) as f64 - e) / e).abs() < 3e-7, "exp({x})");
        }
        // erf against its Taylor series in f64 (accurate for |x| <= 3).
        for i in -300..=300 {
            let x = i as f64 / 100.0;
            let (mut term, mut sum) = (x, x);
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            let want = sum * 2.0 / std::f64::consts::PI.sqrt();
            assert!((erf(x as f32) as f64 - want).abs() < 3e-7, "erf({x}) = {} vs {want}", erf(x as f32));
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
        // GELU against candle's exact-erf GELU.
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let t = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let want = t.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        for (x, w) in xs.iter().zip(want) {
            assert!((gelu(*x) - w).abs() < 1e-6 * (1.0 + w.abs()), "gelu({x}) = {} vs {w}", gelu(*x));
        }
    }
}

#[cfg(all(test, fma256))]
mod avx2_tests {
    #[test]
    fn even_tiles_cover_the_rows_once_in_tiles_a_row_apart() {
        for most in [1, 3, 4, 8] {
            for m in 0..60 {
                let tiles: Vec<_> = super::avx2::even_tiles(m, most).collect();
                assert_eq!(tiles.len(), m.div_ceil(most), "{m} rows by {most}");
                let mut next = 0;
                for tile in &tiles {
                    assert_eq!(tile.start, next, "{m} rows by {most}: {tiles:?}");
                    assert!(!tile.is_empty() && tile.len() <= most, "{m} rows by {most}: {tiles:?}");
                    next = tile.end;
                }
                assert_eq!(next, m);
                let (short, long) = tiles.iter().fold((usize::MAX, 0), |(s, l), t| (s.min(t.len()), l.max(t.len())));
                assert!(tiles.is_empty() || long - short <= 1, "{m} rows by {most}: {tiles:?}");
            }
        }
    }
}
