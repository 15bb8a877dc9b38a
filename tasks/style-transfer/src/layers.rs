//! The layers style networks need and candle-nn lacks, in candle ops on NCHW tensors: reflection
//! padding, instance normalisation with a per-channel scale and shift (conditional instance norm is
//! the same thing with the scale and shift chosen per style), and 2x nearest upsampling. These run
//! on any device and are the reference the CPU kernels in [`crate::cpu`] are tested against.

use candle_core::{DType, Result, Tensor};

/// Variance epsilon of every instance norm in the three networks (PyTorch's default; the Magenta
/// graph spells it out as exactly 1e-5).
pub const NORM_EPS: f64 = 1e-5;

/// Where index `i` (possibly outside `0..n`) reads from under reflection padding as PyTorch's
/// `ReflectionPad2d` and numpy's `mode='reflect'` do: the edge pixel is not repeated. Pads wider than
/// the axis keep reflecting (numpy's behaviour), so tiny images still work; an axis of one pixel
/// can only repeat it.
pub fn reflect_index(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

fn reflect_axis(x: &Tensor, dim: usize, before: usize, after: usize) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let n = x.dim(dim)?;
    let index: Vec<u32> = (-(before as isize)..(n + after) as isize).map(|i| reflect_index(i, n) as u32).collect();
    let index = Tensor::new(index.as_slice(), x.device())?;
    x.index_select(&index, dim)
}

/// Reflection padding of the two spatial axes of an NCHW tensor.
pub fn reflect_pad(x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
    reflect_axis(&reflect_axis(x, 2, top, bottom)?, 3, left, right)
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta` with the mean and the biased variance taken over
/// each image's and channel's H x W values; `gamma` and `beta` have one value per channel.
pub fn instance_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let flat = x.to_dtype(DType::F32)?.reshape((b, c, h * w))?;
    let mean = flat.mean_keepdim(2)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(2)?;
    let normed = centred.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?;
    let gamma = gamma.reshape((1, c, 1))?;
    let beta = beta.reshape((1, c, 1))?;
    normed.broadcast_mul(&gamma)?.broadcast_add(&beta)?.reshape((b, c, h, w))
}

/// Each pixel repeated 2x2 (ONNX Resize nearest, asymmetric, floor; PyTorch `interpolate(scale_factor=2)`).
pub fn upsample2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(2 * h, 2 * w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grid(values: &[f32], h: usize, w: usize) -> Tensor {
        Tensor::from_slice(values, (1, 1, h, w), &Device::Cpu).unwrap()
    }

    fn values(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn reflect_index_does_not_repeat_the_edge() {
        let mapped: Vec<usize> = (-3..7).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(mapped, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        // Wider than the axis: keeps bouncing, as numpy does.
        let mapped: Vec<usize> = (-4..6).map(|i| reflect_index(i, 2)).collect();
        assert_eq!(mapped, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(reflect_index(-5, 1), 0);
    }

    #[test]
    fn reflect_pad_matches_hand_computed_values() {
        // 1 2 3
        // 4 5 6
        let x = grid(&[1., 2., 3., 4., 5., 6.], 2, 3);
        let y = reflect_pad(&x, 1, 0, 2, 1).unwrap();
        assert_eq!(y.dims(), [1, 1, 3, 6]);
        #[rustfmt::skip]
        let expected = [
            6., 5., 4., 5., 6., 5.,
            3., 2., 1., 2., 3., 2.,
            6., 5., 4., 5., 6., 5.,
        ];
        assert_eq!(values(&y), expected);
    }

    #[test]
    fn instance_norm_matches_hand_computed_values() {
        // Channel 0: 1 2 3 4 -> mean 2.5, biased var 1.25; channel 1 is constant -> all zeros, then beta.
        let x = Tensor::from_slice(&[1f32, 2., 3., 4., 7., 7., 7., 7.], (1, 2, 2, 2), &Device::Cpu).unwrap();
        let gamma = Tensor::new(&[2f32, 5.], &Device::Cpu).unwrap();
        let beta = Tensor::new(&[1f32, -1.], &Device::Cpu).unwrap();
        let y = values(&instance_norm(&x, &gamma, &beta).unwrap());
        let sd = (1.25f64 + 1e-5).sqrt();
        let expected: Vec<f32> =
            [-1.5, -0.5, 0.5, 1.5].iter().map(|d| (d / sd * 2.0 + 1.0) as f32).chain([-1.0; 4]).collect();
        for (a, b) in y.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {expected:?}");
        }
    }

    #[test]
    fn upsample2_repeats_each_pixel() {
        let x = grid(&[1., 2., 3., 4.], 2, 2);
        let y = upsample2(&x).unwrap();
        assert_eq!(values(&y), [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    }
}
