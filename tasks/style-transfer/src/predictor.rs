//! Magenta's style predictor: MobileNetV2 (width 1.0, ReLU6, TensorFlow "same" padding, batch norms
//! already folded into the convolutions) reading a 256x256 style image and giving the 100-d style
//! vector that conditions the transformer's norms. It runs once per style image (and once per
//! content image when `--strength` is below 1).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use image::{imageops::FilterType, DynamicImage};

use zoo_runtime::cpu::nhwc::{same_padding, ConvWeights, InvertedResidual, MobileNet, Pointwise};

/// The side the predictor was trained on; the style image is centre-cropped to a square and resized to it.
pub const PREDICTOR_SIZE: u32 = 256;

/// (expansion, output channels, repeats, stride of the first repeat): MobileNetV2's standard table.
const BLOCKS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    groups: usize,
    relu6: bool,
}

impl Conv {
    fn load(vb: &VarBuilder, name: &str, stride: usize, relu6: bool) -> Result<Self> {
        let mut weight = vb.get_unchecked(&format!("{name}.weight"))?.to_dtype(DType::F32)?;
        // zoo's bundled copy stores the int8 values these weights were dequantised from (as u8,
        // offset by 128) with one scale per output channel: a quarter of the size, and the float32
        // products below are bit-identical to the original float weights.
        let scale_name = format!("{name}.weight_scale");
        if vb.contains_tensor(&scale_name) {
            let scale = vb.get_unchecked(&scale_name)?.to_dtype(DType::F32)?;
            weight = (weight - 128.0)?.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
        }
        let bias = vb.get_unchecked(&format!("{name}.bias"))?.to_dtype(DType::F32)?;
        let (out, per_group, _, _) = weight.dims4()?;
        let groups = if per_group == 1 && out > 1 { out } else { 1 };
        Ok(Conv { weight, bias, stride, groups, relu6 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.weight.dim(3)?;
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom) = same_padding(h, k, self.stride);
        let (left, right) = same_padding(w, k, self.stride);
        let x = x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let y = x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?;
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        if self.relu6 {
            y.clamp(0f32, 6f32)
        } else {
            Ok(y)
        }
    }
}

struct Block {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    residual: bool,
}

pub struct StylePredictor {
    stem: Conv,
    blocks: Vec<Block>,
    head: Conv,
    bottleneck: Conv,
    /// The whole network over NHWC buffers, on the CPU.
    cpu: Option<CpuPredictor>,
}

impl StylePredictor {
    pub fn load(vb: &VarBuilder) -> Result<Self> {
        let p = "MobilenetV2";
        let stem = Conv::load(vb, &format!("{p}/Conv"), 2, true)?;
        let mut blocks = Vec::new();
        let mut in_ch = stem.weight.dim(0)?;
        for (expansion, out_ch, repeats, first_stride) in BLOCKS {
            for r in 0..repeats {
                let index = blocks.len();
                let name = if index == 0 { format!("{p}/expanded_conv") } else { format!("{p}/expanded_conv_{index}") };
                let stride = if r == 0 { first_stride } else { 1 };
                let expand =
                    (expansion != 1).then(|| Conv::load(vb, &format!("{name}/expand"), 1, true)).transpose()?;
                let depthwise = Conv::load(vb, &format!("{name}/depthwise"), stride, true)?;
                let project = Conv::load(vb, &format!("{name}/project/BatchNorm"), 1, false)?;
                if project.weight.dim(0)? != out_ch {
                    candle_core::bail!("{name} gives {} channels, MobileNetV2 has {out_ch}", project.weight.dim(0)?)
                }
                blocks.push(Block { expand, depthwise, project, residual: stride == 1 && in_ch == out_ch });
                in_ch = out_ch;
            }
        }
        let head = Conv::load(vb, &format!("{p}/Conv_1"), 1, true)?;
        let bottleneck = Conv::load(vb, "mobilenet_conv/Conv", 1, false)?;
        let cpu = if stem.weight.device().is_cpu() {
            Some(CpuPredictor::new(&stem, &blocks, &head, &bottleneck)?)
        } else {
            None
        };
        Ok(StylePredictor { stem, blocks, head, bottleneck, cpu })
    }

    /// The length of the style vector.
    pub fn size(&self) -> usize {
        self.bottleneck.weight.dim(0).expect("4-d weight")
    }

    /// x: (B, 256, 256, 3) RGB in 0..1 (NHWC, as pictures are stored); returns (B, 100).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.cpu {
            Some(cpu) if x.device().is_cpu() => cpu.forward(x),
            _ => self.forward_generic(x),
        }
    }

    /// The network in candle ops: other devices, and the CPU path's reference.
    fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(&x.to_dtype(DType::F32)?.permute((0, 3, 1, 2))?)?;
        for block in &self.blocks {
            let mut h = match &block.expand {
                Some(expand) => expand.forward(&x)?,
                None => x.clone(),
            };
            h = block.project.forward(&block.depthwise.forward(&h)?)?;
            x = if block.residual { (h + x)? } else { h };
        }
        let x = self.head.forward(&x)?.mean_keepdim(3)?.mean_keepdim(2)?;
        self.bottleneck.forward(&x)?.flatten_from(1)
    }

    /// The style vector of a picture: centre square crop, resized to 256x256 (as Magenta's wrapper does).
    pub fn predict(&self, image: &DynamicImage) -> Result<Vec<f32>> {
        let x = predictor_input(image, self.stem.weight.device())?;
        self.forward(&x)?.flatten_all()?.to_vec1()
    }
}

impl Module for StylePredictor {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        StylePredictor::forward(self, x)
    }
}

/// The predictor's input for a picture: (1, 256, 256, 3), 0..1.
pub fn predictor_input(image: &DynamicImage, device: &candle_core::Device) -> Result<Tensor> {
    let (w, h) = (image.width(), image.height());
    let side = w.min(h);
    let square = image.crop_imm((w - side) / 2, (h - side) / 2, side, side);
    let rgb = square.resize_exact(PREDICTOR_SIZE, PREDICTOR_SIZE, FilterType::Triangle).to_rgb8();
    let n = PREDICTOR_SIZE as usize;
    let data: Vec<f32> = rgb.into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect();
    Tensor::from_vec(data, (1, n, n, 3), device)
}

/// The whole predictor on the CPU: zoo-runtime's MobileNet body over NHWC buffers, then the
/// bottleneck. candle's grouped convolution runs one small convolution per channel, and every bias
/// and clamp is another pass with a thread barrier.
struct CpuPredictor {
    body: MobileNet,
    bottleneck: Pointwise,
}

impl CpuPredictor {
    fn new(stem: &Conv, blocks: &[Block], head: &Conv, bottleneck: &Conv) -> Result<Self> {
        let spatial = |c: &Conv| ConvWeights::new(&c.weight, &c.bias, c.stride, c.groups > 1, c.relu6);
        let pointwise = |c: &Conv| Pointwise::new(&c.weight, &c.bias, c.relu6);
        let blocks = blocks
            .iter()
            .map(|b| {
                Ok(InvertedResidual {
                    expand: b.expand.as_ref().map(pointwise).transpose()?,
                    depthwise: spatial(&b.depthwise)?,
                    project: pointwise(&b.project)?,
                    residual: b.residual,
                })
            })
            .collect::<Result<_>>()?;
        let body = MobileNet::new(spatial(stem)?, blocks, pointwise(head)?)?;
        Ok(CpuPredictor { body, bottleneck: pointwise(bottleneck)? })
    }

    /// x: (B, H, W, 3) in 0..1; returns (B, 100).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, h, w, c) = x.dims4()?;
        if c != self.body.in_channels() {
            candle_core::bail!("the style predictor takes (batch, height, width, 3) pictures, got {c} channels")
        }
        let pixels: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let style = self.body.pooled_then(&pixels, batch, h, w, &self.bottleneck);
        Tensor::from_vec(style, (batch, self.bottleneck.out_ch), &candle_core::Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    /// The CPU blocks against candle's ops on the bundled weights, from a random stem output.
    /// The CPU network against candle's ops on the bundled weights, on an odd-sized batch of
    /// fixed pseudo-random pixels (so that a failure reproduces on the next run).
    #[test]
    fn cpu_network_matches_candle_ops() {
        let bytes = zoo_runtime::bundled::file("magenta-arbitrary/style_predict.safetensors").unwrap();
        let vb = VarBuilder::from_slice_safetensors(bytes, DType::F32, &candle_core::Device::Cpu).unwrap();
        let predictor = StylePredictor::load(&vb).unwrap();
        let values: Vec<f32> =
            (0..2 * 3 * 75 * 101u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0).collect();
        let x = Tensor::from_vec(values, (2, 75, 101, 3), &candle_core::Device::Cpu).unwrap();
        let fast = predictor.forward(&x).unwrap();
        let reference = predictor.forward_generic(&x).unwrap();
        let scale = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let diff = (fast - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        // Relative to the style vector's largest entry: sums in another order drift with it.
        assert!(diff < 1e-5 * scale.max(1.0), "max diff {diff} against entries up to {scale}");
    }
}
