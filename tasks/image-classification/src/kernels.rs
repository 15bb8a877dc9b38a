//! CPU convolution kernels for NHWC tensors with TensorFlow "same" padding, bias and an optional
//! ReLU6 fused in. Used for the depthwise convolutions and the 3-channel stem, the two kinds that
//! neither a matmul nor candle's grouped conv2d does well. Work is split across output rows with
//! rayon; the inner loops run over contiguous channels so the compiler vectorises them.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// (before, after) padding so that the output has ceil(size / stride) elements; TensorFlow puts
/// the odd pixel after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Convolution weights re-laid for the kernels: depthwise (k, k, C); dense (k, k, C_in, C_out).
pub struct ConvWeights {
    weights: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    in_ch: usize,
    out_ch: usize,
    depthwise: bool,
}

impl ConvWeights {
    /// `weight`: (out, in/groups, k, k) as PyTorch stores it; `bias`: (out).
    pub fn new(weight: &Tensor, bias: &Tensor, depthwise: bool) -> Result<Self> {
        let (out_ch, in_per_group, kernel, _) = weight.dims4()?;
        let weights = if depthwise {
            weight.squeeze(1)?.permute((1, 2, 0))?
        } else {
            weight.permute((2, 3, 1, 0))?
        };
        Ok(ConvWeights {
            weights: weights.flatten_all()?.to_vec1()?,
            bias: bias.to_vec1()?,
            kernel,
            in_ch: if depthwise { out_ch } else { in_per_group },
            out_ch,
            depthwise,
        })
    }
}

struct ConvSame<'a> {
    w: &'a ConvWeights,
    stride: usize,
    relu6: bool,
}

/// x: (B, H, W, C_in) f32 on the CPU; returns (B, ceil(H/s), ceil(W/s), C_out).
pub fn conv_same(x: &Tensor, w: &ConvWeights, stride: usize, relu6: bool) -> Result<Tensor> {
    x.apply_op1_no_bwd(&ConvSame { w, stride, relu6 })
}

impl CustomOp1 for ConvSame<'_> {
    fn name(&self) -> &'static str {
        "conv-same-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, h, w, c) = layout.shape().dims4()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("conv-same-nhwc needs a contiguous input")
        };
        let x = &storage.as_slice::<f32>()?[start..end];
        let p = self.w;
        if c != p.in_ch {
            candle_core::bail!("conv-same-nhwc: input has {c} channels, the weights take {}", p.in_ch)
        }
        let (k, s, cout) = (p.kernel, self.stride, p.out_ch);
        let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
        let (pad_top, _) = same_padding(h, k, s);
        let (pad_left, _) = same_padding(w, k, s);
        let mut out = vec![0f32; batch * oh * ow * cout];
        out.par_chunks_mut(ow * cout).enumerate().for_each(|(row, out_row)| {
            let (b, oy) = (row / oh, row % oh);
            for (ox, acc) in out_row.chunks_exact_mut(cout).enumerate() {
                acc.copy_from_slice(&p.bias);
                for ky in 0..k {
                    let Some(iy) = (oy * s + ky).checked_sub(pad_top).filter(|&iy| iy < h) else { continue };
                    for kx in 0..k {
                        let Some(ix) = (ox * s + kx).checked_sub(pad_left).filter(|&ix| ix < w) else { continue };
                        let pixel = &x[((b * h + iy) * w + ix) * c..][..c];
                        let tap = ky * k + kx;
                        if p.depthwise {
                            let wt = &p.weights[tap * c..][..c];
                            for ((a, &wv), &xv) in acc.iter_mut().zip(wt).zip(pixel) {
                                *a += wv * xv;
                            }
                        } else {
                            for (ci, &xv) in pixel.iter().enumerate() {
                                let wt = &p.weights[(tap * c + ci) * cout..][..cout];
                                for (a, &wv) in acc.iter_mut().zip(wt) {
                                    *a += xv * wv;
                                }
                            }
                        }
                    }
                }
                if self.relu6 {
                    for a in acc.iter_mut() {
                        *a = a.clamp(0.0, 6.0);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((batch, oh, ow, cout))))
    }
}
