//! Magenta's style predictor: MobileNetV2 (width 1.0, ReLU6, TensorFlow "same" padding, batch norms
//! already folded into the convolutions) reading a 256x256 style image and giving the 100-d style
//! vector that conditions the transformer's norms. It runs once per style image (and once per
//! content image when `--strength` is below 1).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use image::{imageops::FilterType, DynamicImage};
use rayon::prelude::*;

use zoo_runtime::cpu::matmul;

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

/// TensorFlow "same" padding: output ceil(size / stride), the odd pixel after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let total = ((size.div_ceil(stride) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
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
    /// The blocks and head over NHWC buffers, on the CPU.
    cpu: Option<CpuBlocks>,
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
        let cpu = if stem.weight.device().is_cpu() { Some(CpuBlocks::new(&blocks, &head, &bottleneck)?) } else { None };
        Ok(StylePredictor { stem, blocks, head, bottleneck, cpu })
    }

    /// The length of the style vector.
    pub fn size(&self) -> usize {
        self.bottleneck.weight.dim(0).expect("4-d weight")
    }

    /// x: (B, 3, 256, 256) RGB in 0..1; returns (B, 100). The stem stays in candle ops (three input
    /// channels); the blocks, where candle's grouped convolution runs one small convolution per
    /// channel and every bias and clamp is another pass with a thread barrier, run on NHWC buffers.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.stem.forward(&x.to_dtype(DType::F32)?)?;
        if let Some(cpu) = &self.cpu {
            return cpu.forward(&x);
        }
        self.forward_generic(x)
    }

    /// The blocks and head in candle ops: other devices, and the CPU path's reference.
    fn forward_generic(&self, x: Tensor) -> Result<Tensor> {
        let mut x = x;
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

/// The predictor's input for a picture: (1, 3, 256, 256), 0..1.
pub fn predictor_input(image: &DynamicImage, device: &candle_core::Device) -> Result<Tensor> {
    let (w, h) = (image.width(), image.height());
    let side = w.min(h);
    let square = image.crop_imm((w - side) / 2, (h - side) / 2, side, side);
    let rgb = square.resize_exact(PREDICTOR_SIZE, PREDICTOR_SIZE, FilterType::Triangle).to_rgb8();
    let n = PREDICTOR_SIZE as usize;
    let data: Vec<f32> = rgb.into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect();
    Tensor::from_vec(data, (1, n, n, 3), device)?.permute((0, 3, 1, 2))?.contiguous()
}

/// A 1x1 convolution over NHWC rows: out = x W + bias [+ residual], then ReLU6 if set.
struct Dense {
    /// (in, out), row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    relu6: bool,
}

impl Dense {
    fn new(conv: &Conv) -> Result<Self> {
        let (cout, cin, _, _) = conv.weight.dims4()?;
        let weights = conv.weight.reshape((cout, cin))?.t()?.flatten_all()?.to_vec1()?;
        Ok(Dense { weights, bias: conv.bias.to_vec1()?, cin, cout, relu6: conv.relu6 })
    }

    fn run(&self, x: &[f32], rows: usize, residual: Option<&[f32]>) -> Vec<f32> {
        let (cin, cout) = (self.cin, self.cout);
        let mut out = vec![0f32; rows * cout];
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        matmul((x, cin), &self.weights, &mut out, (rows, cin, cout), false, parallelism);
        // Separate simple loops over each row, so that each vectorises.
        out.par_chunks_mut(cout * 64).enumerate().for_each(|(chunk, block)| {
            for (r, row) in block.chunks_exact_mut(cout).enumerate() {
                row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
                if let Some(res) = residual {
                    row.iter_mut().zip(&res[(chunk * 64 + r) * cout..][..cout]).for_each(|(v, r)| *v += r);
                }
                if self.relu6 {
                    row.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
                }
            }
        });
        out
    }
}

/// A depthwise convolution with TensorFlow "same" zero padding, bias and ReLU6, over NHWC: the
/// taps vectorise over channels, and padding is taps skipped, not memory.
struct Depthwise {
    /// (k*k, c): each tap's weights for all channels.
    taps: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    channels: usize,
}

impl Depthwise {
    fn new(conv: &Conv) -> Result<Self> {
        let (c, _, k, _) = conv.weight.dims4()?;
        let taps = conv.weight.reshape((c, k * k))?.t()?.flatten_all()?.to_vec1()?;
        Ok(Depthwise { taps, bias: conv.bias.to_vec1()?, kernel: k, stride: conv.stride, channels: c })
    }

    fn run(&self, x: &[f32], batch: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let (k, s, c) = (self.kernel, self.stride, self.channels);
        let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
        let (top, _) = same_padding(h, k, s);
        let (left, _) = same_padding(w, k, s);
        let mut out = vec![0f32; batch * oh * ow * c];
        out.par_chunks_mut(ow * c).enumerate().for_each(|(row, out_row)| {
            let (image, oy) = (row / oh, row % oh);
            for (ox, acc) in out_row.chunks_exact_mut(c).enumerate() {
                acc.copy_from_slice(&self.bias);
                for ky in 0..k {
                    let Some(iy) = (oy * s + ky).checked_sub(top).filter(|&iy| iy < h) else { continue };
                    for kx in 0..k {
                        let Some(ix) = (ox * s + kx).checked_sub(left).filter(|&ix| ix < w) else { continue };
                        let at = ((image * h + iy) * w + ix) * c;
                        let (pixel, weights) = (&x[at..at + c], &self.taps[(ky * k + kx) * c..][..c]);
                        for ((a, v), wt) in acc.iter_mut().zip(pixel).zip(weights) {
                            *a = wt.mul_add(*v, *a);
                        }
                    }
                }
                acc.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
            }
        });
        (out, oh, ow)
    }
}

struct CpuBlock {
    expand: Option<Dense>,
    depthwise: Depthwise,
    project: Dense,
    residual: bool,
}

struct CpuBlocks {
    blocks: Vec<CpuBlock>,
    head: Dense,
    bottleneck: Dense,
}

impl CpuBlocks {
    fn new(blocks: &[Block], head: &Conv, bottleneck: &Conv) -> Result<Self> {
        let blocks = blocks
            .iter()
            .map(|b| {
                Ok(CpuBlock {
                    expand: b.expand.as_ref().map(Dense::new).transpose()?,
                    depthwise: Depthwise::new(&b.depthwise)?,
                    project: Dense::new(&b.project)?,
                    residual: b.residual,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CpuBlocks { blocks, head: Dense::new(head)?, bottleneck: Dense::new(bottleneck)? })
    }

    /// x: the stem's output, (B, C, H, W); returns (B, 100).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, _, mut h, mut w) = x.dims4()?;
        let mut x: Vec<f32> = x.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1()?;
        for block in &self.blocks {
            let rows = batch * h * w;
            let expanded = match &block.expand {
                Some(expand) => expand.run(&x, rows, None),
                None => x.clone(),
            };
            let (filtered, oh, ow) = block.depthwise.run(&expanded, batch, h, w);
            let residual = block.residual.then_some(x.as_slice());
            x = block.project.run(&filtered, batch * oh * ow, residual);
            (h, w) = (oh, ow);
        }
        let head = self.head.run(&x, batch * h * w, None);
        let features = self.head.cout;
        let mut pooled = vec![0f32; batch * features];
        for (image, sum) in pooled.chunks_exact_mut(features).enumerate() {
            for pixel in head[image * h * w * features..(image + 1) * h * w * features].chunks_exact(features) {
                sum.iter_mut().zip(pixel).for_each(|(s, p)| *s += p);
            }
            sum.iter_mut().for_each(|s| *s /= (h * w) as f32);
        }
        let style = self.bottleneck.run(&pooled, batch, None);
        Tensor::from_vec(style, (batch, self.bottleneck.cout), &candle_core::Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    /// The CPU blocks against candle's ops on the bundled weights, from a random stem output.
    #[test]
    fn cpu_blocks_match_candle_ops() {
        let bytes = zoo_runtime::bundled::file("magenta-arbitrary/style_predict.safetensors").unwrap();
        let vb = VarBuilder::from_slice_safetensors(bytes, DType::F32, &candle_core::Device::Cpu).unwrap();
        let predictor = StylePredictor::load(&vb).unwrap();
        // A fixed pseudo-random stem output in 0..6, so that a failure reproduces on the next run.
        let values: Vec<f32> = (0..2 * 32 * 37 * 50u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 8) as f32 * 6.0 / 16_777_216.0)
            .collect();
        let stem = Tensor::from_vec(values, (2, 32, 37, 50), &candle_core::Device::Cpu).unwrap();
        let fast = predictor.cpu.as_ref().unwrap().forward(&stem).unwrap();
        let reference = predictor.forward_generic(stem).unwrap();
        let scale = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let diff = (fast - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        // Relative to the style vector's largest entry: sums in another order drift with it.
        assert!(diff < 1e-5 * scale.max(1.0), "max diff {diff} against entries up to {scale}");
    }

    #[test]
    fn same_padding_puts_the_odd_pixel_after() {
        assert_eq!(same_padding(256, 3, 2), (0, 1));
        assert_eq!(same_padding(128, 3, 1), (1, 1));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
        assert_eq!(same_padding(8, 1, 1), (0, 0));
    }
}
