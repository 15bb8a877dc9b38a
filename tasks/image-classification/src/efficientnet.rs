//! EfficientNet-Lite (timm's `tf_efficientnet_lite0`..`lite4`) in candle.
//!
//! The Lite variants drop squeeze-excite and swish for ReLU6 and use TensorFlow's "same" padding
//! (asymmetric: the extra row/column goes after). Batch norms (eps 1e-3) are folded into the
//! preceding convolution at load time. The network runs in NHWC so that 1x1 convolutions are
//! plain matrix products and the depthwise kernel vectorises over channels; candle-nn has no fast
//! depthwise convolution (grouped conv2d runs one small convolution per channel), so the CPU path
//! uses zoo-runtime's NHWC kernels ([`zoo_runtime::cpu::nhwc`]), and other devices fall back to
//! candle's conv2d.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use zoo_runtime::cpu::nhwc::{self, ConvWeights, InvertedResidual, MobileNet, Pointwise};
use zoo_runtime::cpu::quantized::Quantization;

use crate::InputRange;

const BN_EPS: f64 = 1e-3;
/// Stride of the first block of each of the seven stages (the same for lite0..lite4); the block
/// counts, kernel sizes and widths are read from the weights.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

/// A convolution with its batch norm folded in, followed by ReLU6 or nothing, run with candle's
/// own ops: the path for non-CPU devices, and the reference the CPU kernels are tested against.
struct Conv {
    /// (out, in/groups, k, k)
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
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
        Ok(Conv { weight, bias, kernel: k, stride, depthwise, relu6 })
    }

    fn spatial(&self) -> Result<ConvWeights> {
        ConvWeights::new(&self.weight, &self.bias, self.stride, self.depthwise, self.relu6)
    }

    /// The 1x1 convolution in f32, or in int8 for inputs quantized as `input` says.
    fn pointwise(&self, input: Option<Quantization>) -> Result<Pointwise> {
        match input {
            Some(input) => Pointwise::new_int8(&self.weight, &self.bias, self.relu6, input),
            None => Pointwise::new(&self.weight, &self.bias, self.relu6),
        }
    }

    /// x: (B, H, W, C) contiguous.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, c) = x.dims4()?;
        let (top, bottom) = nhwc::same_padding(h, self.kernel, self.stride);
        let (left, right) = nhwc::same_padding(w, self.kernel, self.stride);
        let nchw = x.permute((0, 3, 1, 2))?.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let groups = if self.depthwise { c } else { 1 };
        let y = nchw.conv2d(&self.weight.to_device(x.device())?, 0, self.stride, 1, groups)?;
        let y = y.broadcast_add(&self.bias.to_device(x.device())?.reshape((1, (), 1, 1))?)?;
        let y = if self.relu6 { y.clamp(0f32, 6f32)? } else { y };
        y.permute((0, 2, 3, 1))?.contiguous()
    }
}

/// timm's DepthwiseSeparableConv (first stage: no expansion) and InvertedResidual (the others).
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
        if let Some(e) = &expand {
            if e.weight.dim(0)? != depthwise.weight.dim(0)? {
                candle_core::bail!(
                    "expansion gives {} channels, the depthwise conv takes {}",
                    e.weight.dim(0)?,
                    depthwise.weight.dim(0)?
                )
            }
        }
        if project.weight.dim(1)? != depthwise.weight.dim(0)? {
            candle_core::bail!(
                "projection takes {} channels, the depthwise conv gives {}",
                project.weight.dim(1)?,
                depthwise.weight.dim(0)?
            )
        }
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
    classifier: Tensor,
    classifier_bias: Tensor,
    cpu: CpuNet,
    pub num_classes: usize,
}

impl EfficientNetLite {
    /// Loads and folds the weights (always on the CPU; the generic path moves them to the input's
    /// device).
    pub fn load(vb: VarBuilder) -> Result<Self> {
        Self::load_with(vb, None)
    }

    /// As [`EfficientNetLite::load`], the CPU path's 1x1 convolutions in int8: weights quantized
    /// per output channel, each layer's input as `inputs` says (one per 1x1 layer, in the order
    /// of [`MobileNet::pointwise_layers`], calibrated by [`EfficientNetLite::pointwise_input_ranges`]).
    /// The stem, the depthwise convolutions and the classifier stay in f32: together a tenth of
    /// the work, and the depthwise ones, one weight per input, gain nothing from 4-way dot products.
    pub fn load_int8(vb: VarBuilder, inputs: &[Quantization]) -> Result<Self> {
        Self::load_with(vb, Some(inputs))
    }

    fn load_with(vb: VarBuilder, inputs: Option<&[Quantization]>) -> Result<Self> {
        let stem = Conv::load(vb.pp("conv_stem"), vb.pp("bn1"), 2, false, true)?;
        if stem.weight.dim(1)? != 3 {
            candle_core::bail!("the stem takes {} channels, not RGB", stem.weight.dim(1)?)
        }
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
        let mut next_input = inputs.into_iter().flatten().copied();
        let mut pointwise = |conv: &Conv| conv.pointwise(next_input.next());
        // Refuses a checkpoint whose layers do not fit together here, not at the first image.
        let mut body_blocks = Vec::with_capacity(blocks.len());
        for b in &blocks {
            body_blocks.push(InvertedResidual {
                expand: b.expand.as_ref().map(&mut pointwise).transpose()?,
                depthwise: b.depthwise.spatial()?,
                project: pointwise(&b.project)?,
                residual: b.residual,
            });
        }
        let body = MobileNet::new(stem.spatial()?, body_blocks, pointwise(&head)?)?;
        let layers = body.pointwise_layers().count();
        if let Some(inputs) = inputs.filter(|i| i.len() != layers) {
            candle_core::bail!("{} calibrated input ranges for a network of {layers} 1x1 convolutions", inputs.len())
        }
        let cpu = CpuNet { body, classifier: Pointwise::new(&classifier, &classifier_bias, false)? };
        Ok(EfficientNetLite { stem, blocks, head, classifier, classifier_bias, cpu, num_classes })
    }

    /// Widens `ranges` (one per 1x1 layer, in the order [`EfficientNetLite::load_int8`] takes
    /// them; empty: made here) to hold every value each layer's input takes over a batch (x as
    /// for [`Module::forward`]).
    pub fn widen_pointwise_input_ranges(&self, x: &Tensor, ranges: &mut Vec<InputRange>) -> Result<()> {
        let (batch, h, w, _) = x.dims4()?;
        let input: Vec<f32> = x.to_device(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1()?;
        let empty = InputRange { min: f32::INFINITY, max: f32::NEG_INFINITY };
        ranges.resize(self.cpu.body.pointwise_layers().count(), empty);
        self.cpu.body.observe_pointwise_inputs(&input, batch, h, w, &mut |layer, values| {
            let range = &mut ranges[layer];
            for &v in values {
                (range.min, range.max) = (range.min.min(v), range.max.max(v));
            }
        });
        Ok(())
    }

    /// The network in candle ops, on any device.
    fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(&x.contiguous()?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.head.forward(&x)?;
        let (b, h, w, c) = x.dims4()?;
        let pooled = x.reshape((b, h * w, c))?.mean(1)?;
        let dev = pooled.device();
        pooled.matmul(&self.classifier.to_device(dev)?.t()?)?.broadcast_add(&self.classifier_bias.to_device(dev)?)
    }
}

impl Module for EfficientNetLite {
    /// x: (B, H, W, 3) normalised pixels; returns (B, classes) logits.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            x.contiguous()?.apply_op1_no_bwd(&self.cpu)
        } else {
            self.forward_generic(x)
        }
    }
}

/// The whole network on the CPU as one candle op over plain buffers: the shared MobileNet body,
/// then the classifier.
struct CpuNet {
    body: MobileNet,
    classifier: Pointwise,
}

impl CpuNet {
    fn forward(&self, input: &[f32], batch: usize, h: usize, w: usize) -> Vec<f32> {
        self.body.pooled_then(input, batch, h, w, &self.classifier)
    }
}

impl CustomOp1 for CpuNet {
    fn name(&self) -> &'static str {
        "efficientnet-lite-cpu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, h, w, c) = layout.shape().dims4()?;
        if c != 3 {
            candle_core::bail!("efficientnet-lite takes (batch, height, width, 3) input, got {c} channels")
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("efficientnet-lite needs a contiguous input")
        };
        let input = &storage.as_slice::<f32>()?[start..end];
        let logits = self.forward(input, batch, h, w);
        Ok((CpuStorage::F32(logits), Shape::from((batch, self.classifier.out_ch))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The CPU kernels must agree with candle's conv2d for every kernel size, stride and odd
    /// spatial size the Lite family uses (odd sizes exercise the asymmetric padding).
    #[test]
    fn cpu_kernels_match_candle_conv2d() {
        for &(k, stride, h, w) in
            &[(3, 1, 7, 9), (3, 2, 7, 8), (5, 1, 6, 5), (5, 2, 9, 11), (3, 2, 224, 224), (1, 1, 5, 4)]
        {
            for depthwise in [true, false] {
                let (out_ch, in_ch) = if depthwise { (24, 1) } else { (16, 3) };
                let conv = random_conv(out_ch, in_ch, k, stride, depthwise);
                let c = if depthwise { out_ch } else { in_ch };
                let batch = 2;
                let x = Tensor::randn(0f32, 1.0, (batch, h, w, c), &Device::Cpu).unwrap();
                let reference = conv.forward(&x).unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let fast: Vec<f32> = if k == 1 && !depthwise {
                    let pw = conv.pointwise(None).unwrap();
                    let mut out = vec![0f32; batch * h * w * out_ch];
                    pw.run(&xs, batch * h * w, None, &mut out, 2);
                    out
                } else {
                    let cw = conv.spatial().unwrap();
                    let (oh, ow) = cw.output_hw(h, w);
                    let mut out = vec![0f32; batch * oh * ow * out_ch];
                    cw.run(&xs, batch, h, w, &mut out);
                    out
                };
                let fast = Tensor::from_vec(fast, reference.shape(), &Device::Cpu).unwrap();
                let diff = max_diff(&fast, &reference);
                assert!(diff < 1e-4, "k{k} s{stride} {h}x{w} depthwise={depthwise}: max diff {diff}");
            }
        }
    }

    /// The fused CPU network against the same network in candle ops, on the bundled weights and
    /// an odd-sized batch.
    #[test]
    fn fused_cpu_network_matches_candle_ops() {
        let bytes = zoo_runtime::bundled::file("efficientnet-lite0/model.safetensors").unwrap();
        let vb = VarBuilder::from_slice_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
        let net = EfficientNetLite::load(vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 97, 130, 3), &Device::Cpu).unwrap();
        let fast = net.forward(&x).unwrap();
        let reference = net.forward_generic(&x).unwrap();
        let diff = max_diff(&fast, &reference);
        assert!(diff < 1e-3, "max logit diff {diff}");
        // The scratch buffers are reused: a second, smaller call must not see the first's data.
        let small = x.narrow(0, 0, 1).unwrap();
        assert!(max_diff(&net.forward(&small).unwrap(), &reference.narrow(0, 0, 1).unwrap()) < 1e-3);
    }

    #[test]
    fn same_padding_puts_the_extra_pixel_after() {
        assert_eq!(nhwc::same_padding(224, 3, 2), (0, 1));
        assert_eq!(nhwc::same_padding(112, 3, 1), (1, 1));
        assert_eq!(nhwc::same_padding(7, 5, 2), (2, 2));
        assert_eq!(nhwc::same_padding(8, 5, 2), (1, 2));
    }
}
