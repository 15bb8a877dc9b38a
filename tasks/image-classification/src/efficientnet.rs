//! EfficientNet-Lite (timm's `tf_efficientnet_lite0`..`lite4`) in candle.
//!
//! The Lite variants drop squeeze-excite and swish for ReLU6 and use TensorFlow's "same" padding
//! (asymmetric: the extra row/column goes after). Batch norms (eps 1e-3) are folded into the
//! preceding convolution at load time. The network runs in NHWC so that 1x1 convolutions are
//! plain matrix products and the depthwise kernel vectorises over channels; candle-nn has no fast
//! depthwise convolution (grouped conv2d runs one small convolution per channel), so the CPU path
//! uses the kernels in [`crate::kernels`], and other devices fall back to candle's conv2d.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::kernels::{self, ConvWeights};

const BN_EPS: f64 = 1e-3;
/// Stride of the first block of each of the seven stages (the same for lite0..lite4); the block
/// counts, kernel sizes and widths are read from the weights.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// A convolution with its batch norm folded in, followed by ReLU6 or nothing.
struct Conv {
    /// (out, in/groups, k, k), for candle's conv2d on non-CPU devices.
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
    /// The same weights laid out for the CPU kernels, or, for 1x1, (in, out) for a matmul.
    cpu: Option<ConvWeights>,
    pointwise_t: Option<Tensor>,
}

impl Conv {
    fn load(vb_conv: VarBuilder, vb_bn: VarBuilder, stride: usize, depthwise: bool, relu6: bool) -> Result<Self> {
        let weight = vb_conv.get_unchecked("weight")?.to_dtype(DType::F32)?;
        let (out_ch, in_ch, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("non-square kernel {k}x{k2}")
        }
        if depthwise && in_ch != 1 {
            candle_core::bail!("depthwise weight has {in_ch} input channels per group, expected 1")
        }
        let gamma = vb_bn.get(out_ch, "weight")?;
        let beta = vb_bn.get(out_ch, "bias")?;
        let mean = vb_bn.get(out_ch, "running_mean")?;
        let var = vb_bn.get(out_ch, "running_var")?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((out_ch, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        let on_cpu = weight.device().is_cpu();
        let (cpu, pointwise_t) = if k == 1 && !depthwise {
            (None, Some(weight.reshape((out_ch, in_ch))?.t()?.contiguous()?))
        } else if on_cpu {
            (Some(ConvWeights::new(&weight, &bias, depthwise)?), None)
        } else {
            (None, None)
        };
        Ok(Conv { weight, bias, kernel: k, stride, depthwise, relu6, cpu, pointwise_t })
    }

    /// x: (B, H, W, C) contiguous.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(w_t) = &self.pointwise_t {
            let (b, h, w, c) = x.dims4()?;
            let y = x.reshape((b * h * w, c))?.matmul(w_t)?.broadcast_add(&self.bias)?;
            let y = if self.relu6 { y.clamp(0f32, 6f32)? } else { y };
            return y.reshape((b, h, w, ()));
        }
        if let Some(cpu) = &self.cpu {
            return kernels::conv_same(x, cpu, self.stride, self.relu6);
        }
        self.forward_generic(x)
    }

    /// candle's own conv2d with explicit TF-same padding: any device, and the reference the CPU
    /// kernels are tested against.
    fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, c) = x.dims4()?;
        let (top, bottom) = kernels::same_padding(h, self.kernel, self.stride);
        let (left, right) = kernels::same_padding(w, self.kernel, self.stride);
        let nchw = x.permute((0, 3, 1, 2))?.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let groups = if self.depthwise { c } else { 1 };
        let y = nchw.conv2d(&self.weight, 0, self.stride, 1, groups)?;
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        let y = if self.relu6 { y.clamp(0f32, 6f32)? } else { y };
        y.permute((0, 2, 3, 1))?.contiguous()
    }
}

/// timm's DepthwiseSeparableConv (first stage) and InvertedResidual (the others).
struct Block {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    residual: bool,
}

impl Block {
    fn load(vb: VarBuilder, stride: usize) -> Result<Self> {
        let separable = !vb.contains_tensor("conv_pwl.weight");
        let (expand, depthwise, project) = if separable {
            let dw = Conv::load(vb.pp("conv_dw"), vb.pp("bn1"), stride, true, true)?;
            let pw = Conv::load(vb.pp("conv_pw"), vb.pp("bn2"), 1, false, false)?;
            (None, dw, pw)
        } else {
            let pw = Conv::load(vb.pp("conv_pw"), vb.pp("bn1"), 1, false, true)?;
            let dw = Conv::load(vb.pp("conv_dw"), vb.pp("bn2"), stride, true, true)?;
            let pwl = Conv::load(vb.pp("conv_pwl"), vb.pp("bn3"), 1, false, false)?;
            (Some(pw), dw, pwl)
        };
        let in_ch = match &expand {
            Some(e) => e.weight.dim(1)?,
            None => depthwise.weight.dim(0)?,
        };
        let out_ch = project.weight.dim(0)?;
        // timm's Lite blocks keep the skip wherever shapes allow it.
        let residual = stride == 1 && in_ch == out_ch;
        Ok(Block { expand, depthwise, project, residual })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let y = self.project.forward(&self.depthwise.forward(&y)?)?;
        if self.residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

pub struct EfficientNetLite {
    stem: Conv,
    blocks: Vec<Block>,
    head: Conv,
    classifier_t: Tensor,
    classifier_bias: Tensor,
    pub num_classes: usize,
}

impl EfficientNetLite {
    pub fn load(vb: VarBuilder) -> Result<Self> {
        let stem = Conv::load(vb.pp("conv_stem"), vb.pp("bn1"), 2, false, true)?;
        let mut blocks = Vec::new();
        for (stage, stride) in STAGE_STRIDES.iter().enumerate() {
            let mut index = 0;
            while vb.contains_tensor(&format!("blocks.{stage}.{index}.conv_dw.weight")) {
                let stride = if index == 0 { *stride } else { 1 };
                blocks.push(Block::load(vb.pp(format!("blocks.{stage}.{index}")), stride)?);
                index += 1;
            }
            if index == 0 {
                candle_core::bail!("no blocks in stage {stage} (blocks.{stage}.0.conv_dw.weight is missing)")
            }
        }
        let head = Conv::load(vb.pp("conv_head"), vb.pp("bn2"), 1, false, true)?;
        let classifier = vb.get_unchecked("classifier.weight")?.to_dtype(DType::F32)?;
        let (num_classes, features) = classifier.dims2()?;
        if features != head.weight.dim(0)? {
            candle_core::bail!("classifier takes {features} features, the head gives {}", head.weight.dim(0)?)
        }
        let classifier_bias = vb.get(num_classes, "classifier.bias")?;
        Ok(EfficientNetLite { stem, blocks, head, classifier_t: classifier.t()?.contiguous()?, classifier_bias, num_classes })
    }

    pub fn device(&self) -> &Device {
        self.head.bias.device()
    }
}

impl Module for EfficientNetLite {
    /// x: (B, H, W, 3) normalised pixels; returns (B, classes) logits.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(&x.contiguous()?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.head.forward(&x)?;
        let (b, h, w, c) = x.dims4()?;
        let pooled = x.reshape((b, h * w, c))?.mean(1)?;
        pooled.matmul(&self.classifier_t)?.broadcast_add(&self.classifier_bias)
    }
}

/// Index of the last dimension, re-exported for callers' softmax.
pub const CLASSES_DIM: D = D::Minus1;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn random_conv(out_ch: usize, in_ch: usize, k: usize, stride: usize, depthwise: bool) -> Conv {
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        ts.insert("c.weight".to_string(), Tensor::randn(0f32, 0.5, (out_ch, in_ch, k, k), &dev).unwrap());
        ts.insert("bn.weight".to_string(), Tensor::rand(0.5f32, 1.5, out_ch, &dev).unwrap());
        ts.insert("bn.bias".to_string(), Tensor::randn(0f32, 0.5, out_ch, &dev).unwrap());
        ts.insert("bn.running_mean".to_string(), Tensor::randn(0f32, 0.5, out_ch, &dev).unwrap());
        ts.insert("bn.running_var".to_string(), Tensor::rand(0.5f32, 1.5, out_ch, &dev).unwrap());
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        Conv::load(vb.pp("c"), vb.pp("bn"), stride, depthwise, true).unwrap()
    }

    /// The CPU kernels must agree with candle's conv2d for every kernel size, stride and odd
    /// spatial size the Lite family uses (odd sizes exercise the asymmetric padding).
    #[test]
    fn cpu_kernels_match_candle_conv2d() {
        for &(k, stride, h, w) in &[(3, 1, 7, 9), (3, 2, 7, 8), (5, 1, 6, 5), (5, 2, 9, 11), (3, 2, 224, 224)] {
            for depthwise in [true, false] {
                let (out_ch, in_ch) = if depthwise { (24, 1) } else { (16, 3) };
                let conv = random_conv(out_ch, in_ch, k, stride, depthwise);
                let c = if depthwise { out_ch } else { in_ch };
                let x = Tensor::randn(0f32, 1.0, (2, h, w, c), &Device::Cpu).unwrap();
                let fast = conv.forward(&x).unwrap();
                let reference = conv.forward_generic(&x).unwrap();
                assert_eq!(fast.dims(), reference.dims());
                let diff = (fast - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "k{k} s{stride} {h}x{w} depthwise={depthwise}: max diff {diff}");
            }
        }
    }

    #[test]
    fn same_padding_puts_the_extra_pixel_after() {
        assert_eq!(kernels::same_padding(224, 3, 2), (0, 1));
        assert_eq!(kernels::same_padding(112, 3, 1), (1, 1));
        assert_eq!(kernels::same_padding(7, 5, 2), (2, 2));
        assert_eq!(kernels::same_padding(8, 5, 2), (1, 2));
    }
}
