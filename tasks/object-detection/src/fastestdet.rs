//! FastestDet (dog-qiuqiu/FastestDet): a ShuffleNetV2 backbone, an SPP neck and one anchor-free
//! head on a stride-16 grid, read from the PyTorch state dict its authors publish. Batch norms are
//! folded into the convolutions at load. The forward pass works on plain channel-planar buffers:
//! at 352x352 the network is small enough (about 0.1 GFLOP) that a graph of tensor operations
//! spends more time allocating, copying and handing work between threads than computing, so each
//! branch writes straight into its place in the concatenated output, and 1x1 convolutions are one
//! matrix product each.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// The input side the network was trained at; pictures are stretched to it.
pub const INPUT: usize = 352;

/// torch.nn.BatchNorm2d's default.
const BN_EPS: f64 = 1e-5;

/// A convolution with its batch norm folded in: `out x inputs x k x k` weights (inputs is 1 for a
/// depthwise one), symmetric zero padding.
struct Conv {
    weight: Vec<f32>,
    bias: Vec<f32>,
    out: usize,
    inputs: usize,
    k: usize,
    stride: usize,
    padding: usize,
    depthwise: bool,
    relu: bool,
}

/// A stack of channel planes: `c` planes of `h x w`.
#[derive(Clone)]
struct Planes {
    data: Vec<f32>,
    c: usize,
    h: usize,
    w: usize,
}

impl Planes {
    fn zeros(c: usize, h: usize, w: usize) -> Self {
        Planes { data: vec![0.0; c * h * w], c, h, w }
    }
}

impl Conv {
    fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.padding - self.k) / self.stride + 1, (w + 2 * self.padding - self.k) / self.stride + 1)
    }

    /// Runs over `x` (`inputs` planes, or `out` for a depthwise one, of h x w) into `out`, which
    /// holds the `out` result planes.
    fn run(&self, x: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let (oh, ow) = self.output_size(h, w);
        if self.depthwise {
            depthwise(self, x, h, w, out);
        } else if self.k == 1 && self.stride == 1 {
            // out (o x hw) = W (o x c) . x (c x hw)
            matmul(&self.weight, x, out, (self.out, self.inputs, h * w));
            self.finish(out, oh * ow);
        } else {
            let columns = im2col(x, self, h, w);
            matmul(&self.weight, &columns, out, (self.out, self.inputs * self.k * self.k, oh * ow));
            self.finish(out, oh * ow);
        }
    }

    fn apply(&self, x: &Planes) -> Planes {
        self.apply_to(&x.data, x.h, x.w)
    }

    fn apply_to(&self, x: &[f32], h: usize, w: usize) -> Planes {
        let (oh, ow) = self.output_size(h, w);
        let mut out = Planes::zeros(self.out, oh, ow);
        self.run(x, h, w, &mut out.data);
        out
    }

    /// Bias and ReLU over the matrix product's output.
    fn finish(&self, out: &mut [f32], plane: usize) {
        for_planes(&mut out[..self.out * plane], plane, self.out * plane, |i, row| {
            let b = self.bias[i];
            if self.relu {
                row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += b);
            }
        });
    }
}

/// Work (multiply-adds, or values moved) below which a layer stays on one thread: a hand-off to
/// the pool costs tens of microseconds, and most of the network's hundred-odd layers are over in
/// less (measured on 2 cores: one picture took longer on two threads than on one). Only the stem
/// at 176x176 is worth splitting; a batch runs its pictures side by side instead.
const PARALLEL_WORK: usize = 1 << 22;

/// `f(i, plane)` over each `plane`-sized chunk of `out`, on several threads when `work` pays for it.
fn for_planes(out: &mut [f32], plane: usize, work: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if work >= PARALLEL_WORK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(plane).enumerate().for_each(|(i, p)| f(i, p));
    } else {
        out.chunks_mut(plane).enumerate().for_each(|(i, p)| f(i, p));
    }
}

fn matmul(a: &[f32], b: &[f32], out: &mut [f32], (m, k, n): (usize, usize, usize)) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= 4 * PARALLEL_WORK {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    zoo_runtime::cpu::matmul((a, k), b, out, (m, k, n), false, parallelism);
}

/// The patches of a (non-depthwise) convolution's input as columns: row `(c, ky, kx)`, one column
/// per output pixel.
fn im2col(x: &[f32], conv: &Conv, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = conv.output_size(h, w);
    let (k, s, p) = (conv.k, conv.stride, conv.padding);
    let mut columns = vec![0f32; conv.inputs * k * k * oh * ow];
    for_planes(&mut columns, oh * ow, conv.inputs * k * k * oh * ow, |row, column| {
        let (c, ky, kx) = (row / (k * k), row / k % k, row % k);
        let plane = &x[c * h * w..][..h * w];
        // The output columns whose input column ox*s + kx - p falls inside the row.
        let first = p.saturating_sub(kx).div_ceil(s);
        let last = ((w + p - kx - 1) / s + 1).min(ow);
        for oy in 0..oh {
            let iy = (oy * s + ky) as isize - p as isize;
            if iy < 0 || iy >= h as isize || first >= last {
                continue;
            }
            let line = &plane[iy as usize * w + first * s + kx - p..];
            for (o, &v) in column[oy * ow + first..oy * ow + last].iter_mut().zip(line.iter().step_by(s)) {
                *o = v;
            }
        }
    });
    columns
}

/// A depthwise convolution, one channel plane at a time. The plane is copied into a zero-padded
/// one and each kernel tap is a single multiply-add over the flattened padded rows (the columns
/// that straddle a row's end are computed and dropped): long runs that vectorise, where rows of
/// 22 or 11 pixels would be mostly loop overhead and tails. A stride-2 layer is computed at
/// stride 1 and subsampled; those are few and small.
fn depthwise(conv: &Conv, x: &[f32], h: usize, w: usize, output: &mut [f32]) {
    let (k, s, p) = (conv.k, conv.stride, conv.padding);
    let (oh, ow) = conv.output_size(h, w);
    let (ph, pw) = (h + 2 * p, w + 2 * p);
    let rows = ph - k + 1;
    let span = rows * pw - (k - 1);
    for_planes(&mut output[..conv.out * oh * ow], oh * ow, conv.out * rows * pw * k * k, |channel, out| {
        let src = &x[channel * h * w..][..h * w];
        let taps = &conv.weight[channel * k * k..][..k * k];
        let mut padded = vec![0f32; ph * pw];
        for (y, row) in src.chunks_exact(w).enumerate() {
            padded[(y + p) * pw + p..][..w].copy_from_slice(row);
        }
        let mut acc = vec![conv.bias[channel]; span];
        for ky in 0..k {
            for kx in 0..k {
                let tap = taps[ky * k + kx];
                for (a, &v) in acc.iter_mut().zip(&padded[ky * pw + kx..][..span]) {
                    *a += tap * v;
                }
            }
        }
        for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
            let line = &acc[oy * s * pw..];
            for (ox, o) in row.iter_mut().enumerate() {
                let v = line[ox * s];
                *o = if conv.relu { v.max(0.0) } else { v };
            }
        }
    });
}

/// 3x3 windows at stride 2 with one pixel of padding, as torch's MaxPool2d(3, 2, 1) and
/// AvgPool2d(3, 2, 1) take them (the average always over 9: count_include_pad).
fn pool(x: &Planes, max: bool) -> Planes {
    let (oh, ow) = ((x.h - 1) / 2 + 1, (x.w - 1) / 2 + 1);
    let mut out = Planes::zeros(x.c, oh, ow);
    for_planes(&mut out.data, oh * ow, x.c * oh * ow * 9, |c, plane| {
        let src = &x.data[c * x.h * x.w..][..x.h * x.w];
        let mut row = vec![0f32; x.w];
        for (oy, out) in plane.chunks_mut(ow).enumerate() {
            // Down the window's rows first (one pass each, in order), then across.
            let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(x.h);
            row.copy_from_slice(&src[rows.start * x.w..][..x.w]);
            for iy in rows.start + 1..rows.end {
                for (r, &v) in row.iter_mut().zip(&src[iy * x.w..][..x.w]) {
                    *r = if max { r.max(v) } else { *r + v };
                }
            }
            for (ox, o) in out.iter_mut().enumerate() {
                let window = &row[(2 * ox).saturating_sub(1)..(2 * ox + 2).min(x.w)];
                *o = if max {
                    window.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v))
                } else {
                    window.iter().sum::<f32>() / 9.0
                };
            }
        }
    });
    out
}

/// The state dict's tensors, taken by the layers that use them.
struct Weights<'a> {
    tensors: &'a HashMap<String, Tensor>,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the state dict has no tensor {name}")))?;
        tensor.to_dtype(DType::F32)?.to_device(&Device::Cpu)
    }

    /// The convolution `{prefix}{conv}` followed by the batch norm `{prefix}{conv + 1}`, folded.
    fn conv(&self, prefix: &str, conv: usize, stride: usize, padding: usize, relu: bool) -> Result<Conv> {
        let weight = self.get(&format!("{prefix}{conv}.weight"))?;
        let norm = |field: &str| self.get(&format!("{prefix}{}.{field}", conv + 1));
        let (gamma, beta, mean, var) = (norm("weight")?, norm("bias")?, norm("running_mean")?, norm("running_var")?);
        let (out, inputs, kh, kw) = weight.dims4()?;
        // Every layer of the network pads by half its kernel: the kernel follows from the padding.
        let k = 2 * padding + 1;
        if out == 0 || inputs == 0 || (kh, kw) != (k, k) {
            candle_core::bail!(
                "{prefix}{conv}: a {out}x{inputs}x{kh}x{kw} convolution where FastestDet has a {k}x{k} one"
            )
        }
        for (field, t) in [("weight", &gamma), ("bias", &beta), ("running_mean", &mean), ("running_var", &var)] {
            if t.dims() != [out] {
                candle_core::bail!("{prefix}{}.{field}: {:?} values for {out} channels", conv + 1, t.dims())
            }
        }
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let bias: Vec<f32> = (beta - (mean * &scale)?)?.to_vec1()?;
        let weight: Vec<f32> = weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?.flatten_all()?.to_vec1()?;
        if !weight.iter().chain(&bias).all(|v| v.is_finite()) {
            candle_core::bail!(
                "{prefix}{conv}: weights that are not finite once the norm is folded in (a negative running_var?)"
            )
        }
        Ok(Conv { weight, bias, out, inputs, k, stride, padding, depthwise: false, relu })
    }

    /// A depthwise convolution (one filter per channel) and its norm.
    fn depthwise(&self, prefix: &str, conv: usize, stride: usize, padding: usize, relu: bool) -> Result<Conv> {
        let mut layer = self.conv(prefix, conv, stride, padding, relu)?;
        if layer.inputs != 1 {
            candle_core::bail!(
                "{prefix}{conv}: expected a depthwise convolution, found {} inputs per filter",
                layer.inputs
            )
        }
        layer.depthwise = true;
        Ok(layer)
    }
}

/// ShuffleNetV2's unit: a stride-2 unit widens and halves the map through two branches; a
/// stride-1 unit passes the even channels through and transforms the odd ones.
struct ShuffleUnit {
    main: [Conv; 3],
    projection: Option<[Conv; 2]>,
}

impl ShuffleUnit {
    fn load(w: &Weights, prefix: &str, stride: usize) -> Result<Self> {
        let main = format!("{prefix}branch_main.");
        let main =
            [w.conv(&main, 0, 1, 0, true)?, w.depthwise(&main, 3, stride, 1, false)?, w.conv(&main, 5, 1, 0, true)?];
        let projection = match stride {
            1 => None,
            _ => {
                let proj = format!("{prefix}branch_proj.");
                Some([w.depthwise(&proj, 0, stride, 1, false)?, w.conv(&proj, 2, 1, 0, true)?])
            }
        };
        Ok(ShuffleUnit { main, projection })
    }

    /// The main branch over `x`, written into `out` (its output planes).
    fn main_branch(&self, x: &Planes, out: &mut [f32]) {
        let [expand, depthwise, project] = &self.main;
        let mid = depthwise.apply(&expand.apply(x));
        project.run(&mid.data, mid.h, mid.w, out);
    }

    fn forward(&self, x: &Planes) -> Planes {
        let (oh, ow) = self.main[1].output_size(x.h, x.w);
        let plane = oh * ow;
        match &self.projection {
            Some([depthwise, pointwise]) => {
                let mut out = Planes::zeros(pointwise.out + self.main[2].out, oh, ow);
                let (left, right) = out.data.split_at_mut(pointwise.out * plane);
                let reduced = depthwise.apply(x);
                pointwise.run(&reduced.data, oh, ow, left);
                self.main_branch(x, right);
                out
            }
            None => {
                // The reference's channel shuffle: channel 2i is passed on, channel 2i+1 transformed.
                let half = x.c / 2;
                let mut out = Planes::zeros(half + self.main[2].out, oh, ow);
                let mut odd = Planes::zeros(half, x.h, x.w);
                for i in 0..half {
                    out.data[i * plane..][..plane].copy_from_slice(&x.data[2 * i * plane..][..plane]);
                    odd.data[i * plane..][..plane].copy_from_slice(&x.data[(2 * i + 1) * plane..][..plane]);
                }
                self.main_branch(&odd, &mut out.data[half * plane..]);
                out
            }
        }
    }
}

pub struct FastestDet {
    stem: Conv,
    stages: Vec<Vec<ShuffleUnit>>,
    spp_in: Conv,
    /// Depthwise 5x5 convolutions with ReLUs, one, two and three deep, each from the SPP's input.
    spp_branches: [Vec<Conv>; 3],
    spp_out: Conv,
    head_in: Conv,
    /// Objectness, box and class heads: a depthwise 5x5 with ReLU, then a 1x1 to its outputs.
    heads: [[Conv; 2]; 3],
    pub classes: usize,
}

impl FastestDet {
    pub fn load(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let w = Weights { tensors };
        let stem = w.conv("backbone.first_conv.", 0, 2, 1, true)?;
        let stages = [("stage2", 4), ("stage3", 8), ("stage4", 4)]
            .into_iter()
            .map(|(stage, units)| {
                (0..units)
                    .map(|i| ShuffleUnit::load(&w, &format!("backbone.{stage}.{i}."), if i == 0 { 2 } else { 1 }))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let branch = |name: &str, depth: usize| -> Result<Vec<Conv>> {
            (0..depth).map(|i| w.depthwise(&format!("SPP.{name}."), 3 * i, 1, 2, true)).collect()
        };
        let head = |name: &str| -> Result<[Conv; 2]> {
            let prefix = format!("detect_head.{name}_layers.conv5x5.");
            Ok([w.depthwise(&prefix, 0, 1, 2, true)?, w.conv(&prefix, 3, 1, 0, false)?])
        };
        let heads = [head("obj")?, head("reg")?, head("cls")?];
        let classes = heads[2][1].out;
        if heads[0][1].out != 1 || heads[1][1].out != 4 || classes == 0 {
            candle_core::bail!("the objectness, box and class heads must have 1, 4 and at least 1 outputs")
        }
        let net = FastestDet {
            stem,
            stages,
            spp_in: w.conv("SPP.Conv1x1.conv1x1.", 0, 1, 0, true)?,
            spp_branches: [branch("S1", 1)?, branch("S2", 2)?, branch("S3", 3)?],
            spp_out: w.conv("SPP.output.", 0, 1, 0, false)?,
            head_in: w.conv("detect_head.conv1x1.conv1x1.", 0, 1, 0, true)?,
            heads,
            classes,
        };
        net.check_widths()?;
        Ok(net)
    }

    /// Each layer's inputs are what the layer before gives: a state dict of another shape is
    /// refused at load rather than read past a buffer at the first picture.
    fn check_widths(&self) -> Result<()> {
        let mismatch = |what: &str, want: usize, got: usize| {
            Err(candle_core::Error::Msg(format!("{what} takes {want} channels but is given {got}")))
        };
        let takes = |conv: &Conv| if conv.depthwise { conv.out } else { conv.inputs };
        if self.stem.inputs != 3 {
            return mismatch("the first convolution", self.stem.inputs, 3);
        }
        let mut width = self.stem.out;
        let mut levels = Vec::new();
        for (s, stage) in self.stages.iter().enumerate() {
            for (i, unit) in stage.iter().enumerate() {
                let given = if unit.projection.is_some() { width } else { width / 2 };
                let [a, b, c] = &unit.main;
                if takes(a) != given || takes(b) != a.out || takes(c) != b.out {
                    return mismatch(&format!("stage {} unit {i}", s + 2), takes(a), given);
                }
                width = match &unit.projection {
                    Some([d, p]) if takes(d) != width || takes(p) != d.out => {
                        return mismatch(&format!("stage {} unit {i}'s projection", s + 2), takes(d), width)
                    }
                    Some([_, p]) => p.out + c.out,
                    None if !width.is_multiple_of(2) || width / 2 + c.out != width => {
                        return mismatch(&format!("stage {} unit {i}", s + 2), width, width / 2 + c.out)
                    }
                    None => width,
                };
            }
            levels.push(width);
        }
        let neck: usize = levels.iter().sum();
        if takes(&self.spp_in) != neck {
            return mismatch("the SPP", takes(&self.spp_in), neck);
        }
        let spp = self.spp_in.out;
        let mut concatenated = 0;
        for branch in &self.spp_branches {
            if branch.iter().any(|conv| conv.out != spp) {
                return mismatch("an SPP branch", spp, branch[0].out);
            }
            concatenated += spp;
        }
        if takes(&self.spp_out) != concatenated || self.spp_out.out != spp || takes(&self.head_in) != spp {
            return mismatch("the SPP output", takes(&self.spp_out), concatenated);
        }
        for [depthwise, pointwise] in &self.heads {
            if depthwise.out != self.head_in.out || takes(pointwise) != depthwise.out {
                return mismatch("a head", depthwise.out, self.head_in.out);
            }
        }
        Ok(())
    }

    /// One picture, 3 planes of 352x352 (BGR, 0..1) -> `5 + classes` planes of 22x22: objectness
    /// (after its sigmoid), the box's four raw terms, and the class probabilities, as the
    /// published ONNX export gives them.
    fn forward_one(&self, input: &[f32]) -> Vec<f32> {
        let mut x = pool(&self.stem.apply_to(input, INPUT, INPUT), true);
        let mut levels = Vec::with_capacity(3);
        for stage in &self.stages {
            for unit in stage {
                x = unit.forward(&x);
            }
            levels.push(x.clone());
        }
        // The finest level averaged down, the middle one as it is, the coarsest repeated up.
        let (h, w) = (levels[1].h, levels[1].w);
        let plane = h * w;
        let fine = pool(&levels[0], false);
        let coarse = &levels[2];
        let mut neck = Planes::zeros(fine.c + levels[1].c + coarse.c, h, w);
        neck.data[..fine.data.len()].copy_from_slice(&fine.data);
        neck.data[fine.data.len()..][..levels[1].data.len()].copy_from_slice(&levels[1].data);
        let upsampled = &mut neck.data[(fine.c + levels[1].c) * plane..];
        for (c, out) in upsampled.chunks_mut(plane).enumerate() {
            for (i, v) in out.iter_mut().enumerate() {
                let (y, x) = (i / w * coarse.h / h, i % w * coarse.w / w);
                *v = coarse.data[(c * coarse.h + y) * coarse.w + x];
            }
        }

        let x = self.spp_in.apply(&neck);
        let mut branches = Planes::zeros(3 * x.c, h, w);
        for (branch, out) in self.spp_branches.iter().zip(branches.data.chunks_mut(x.c * plane)) {
            let mut y = x.clone();
            for conv in branch {
                y = conv.apply(&y);
            }
            out.copy_from_slice(&y.data);
        }
        let mut y = self.spp_out.apply(&branches);
        y.data.iter_mut().zip(&x.data).for_each(|(v, &skip)| *v = (*v + skip).max(0.0));

        let y = self.head_in.apply(&y);
        let mut out = vec![0f32; (5 + self.classes) * plane];
        let mut at = 0;
        for [depthwise, pointwise] in &self.heads {
            let spread = depthwise.apply(&y);
            let rows = pointwise.out * plane;
            pointwise.run(&spread.data, h, w, &mut out[at..at + rows]);
            at += rows;
        }
        for v in &mut out[..plane] {
            *v = 1.0 / (1.0 + (-*v).exp());
        }
        // Softmax over the classes at each cell.
        let classes = &mut out[5 * plane..];
        for cell in 0..plane {
            let max = (0..self.classes).map(|c| classes[c * plane + cell]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for c in 0..self.classes {
                let e = (classes[c * plane + cell] - max).exp();
                classes[c * plane + cell] = e;
                sum += e;
            }
            for c in 0..self.classes {
                classes[c * plane + cell] /= sum;
            }
        }
        out
    }

    /// (n, 3, 352, 352) BGR in 0..1 -> (n, 5 + classes, 22, 22), as the published ONNX export.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, INPUT, INPUT) {
            candle_core::bail!("FastestDet takes 3x{INPUT}x{INPUT} pictures, not {c}x{h}x{w}")
        }
        let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let side = INPUT / 16;
        let maps: Vec<Vec<f32>> =
            data.par_chunks_exact(3 * INPUT * INPUT).map(|picture| self.forward_one(picture)).collect();
        Tensor::from_vec(maps.concat(), (n, 5 + self.classes, side, side), x.device())
    }
}

/// A (5 + classes, h, w) map as one vector per cell, cells in row-major order.
pub fn cell_vectors(map: &Tensor) -> Result<(Vec<f32>, [usize; 3])> {
    let (c, h, w) = map.dims3()?;
    Ok((map.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?, [c, h, w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u32) -> Vec<f32> {
        zoo_runtime::test_support::pseudo_random(len, seed)
    }

    fn conv(out: usize, inputs: usize, k: usize, stride: usize, padding: usize, depthwise: bool, relu: bool) -> Conv {
        let per = if depthwise { 1 } else { inputs };
        Conv {
            weight: random(out * per * k * k, 1),
            bias: random(out, 2),
            out,
            inputs: per,
            k,
            stride,
            padding,
            depthwise,
            relu,
        }
    }

    /// Each convolution kind against candle's, on odd shapes: one-pixel-wide maps, strides that do
    /// not divide the size, padding as wide as the kernel allows.
    #[test]
    fn convolutions_match_candles() {
        let dev = Device::Cpu;
        for (c, o, h, w, k, stride, padding, depthwise, relu) in [
            (3, 3, 7, 1, 3, 1, 1, true, false),
            (5, 5, 1, 9, 3, 2, 1, true, true),
            (4, 4, 11, 6, 5, 1, 2, true, true),
            (2, 2, 6, 7, 5, 2, 2, true, false),
            (1, 1, 3, 4, 3, 2, 0, true, false),
            (3, 24, 9, 7, 3, 2, 1, false, true),
            (7, 5, 3, 1, 1, 1, 0, false, false),
            (17, 33, 4, 5, 1, 1, 0, false, true),
        ] {
            let layer = conv(o, c, k, stride, padding, depthwise, relu);
            let input = random(c * h * w, 3);
            let (oh, ow) = layer.output_size(h, w);
            let mut ours = vec![0f32; o * oh * ow];
            layer.run(&input, h, w, &mut ours);
            let x = Tensor::from_vec(input, (1, c, h, w), &dev).unwrap();
            let weight = Tensor::from_vec(layer.weight.clone(), (o, layer.inputs, k, k), &dev).unwrap();
            let bias = Tensor::from_vec(layer.bias.clone(), (1, o, 1, 1), &dev).unwrap();
            let groups = if depthwise { c } else { 1 };
            let mut theirs = x.conv2d(&weight, padding, stride, 1, groups).unwrap().broadcast_add(&bias).unwrap();
            if relu {
                theirs = theirs.relu().unwrap();
            }
            assert_eq!(theirs.dims(), [1, o, oh, ow]);
            let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "{c}->{o} {h}x{w} k{k} s{stride} p{padding}: {diff}");
        }
    }

    #[test]
    fn state_dicts_of_another_shape_are_refused_at_load() {
        let bytes = zoo_runtime::bundled::file("fastestdet/fastestdet.pth").expect("bundled");
        let tensors = zoo_runtime::model::pth_tensors(bytes, &Device::Cpu).unwrap();
        assert_eq!(FastestDet::load(&tensors).unwrap().classes, 80);
        let mut missing = tensors.clone();
        missing.remove("SPP.S2.3.weight");
        let error = FastestDet::load(&missing).err().unwrap().to_string();
        assert!(error.contains("no tensor SPP.S2.3.weight"), "{error}");
        // A 1x1 convolution that takes 200 channels where the one before gives 96.
        let mut wrong = tensors.clone();
        wrong.insert("SPP.output.0.weight".into(), Tensor::zeros((96, 200, 1, 1), DType::F32, &Device::Cpu).unwrap());
        let error = FastestDet::load(&wrong).err().unwrap().to_string();
        assert!(error.contains("the SPP output takes 200 channels but is given 288"), "{error}");
        // A 7x7 kernel where the network has 5x5, and a norm whose variance is negative.
        let mut wide = tensors.clone();
        wide.insert("SPP.S1.0.weight".into(), Tensor::zeros((96, 1, 7, 7), DType::F32, &Device::Cpu).unwrap());
        let error = FastestDet::load(&wide).err().unwrap().to_string();
        assert!(error.contains("SPP.S1.0: a 96x1x7x7 convolution where FastestDet has a 5x5 one"), "{error}");
        let mut negative = tensors.clone();
        negative.insert(
            "detect_head.cls_layers.conv5x5.4.running_var".into(),
            (Tensor::ones(80, DType::F32, &Device::Cpu).unwrap() * -1.0).unwrap(),
        );
        let error = FastestDet::load(&negative).err().unwrap().to_string();
        assert!(error.contains("not finite"), "{error}");
    }

    #[test]
    fn pools_match_torchs_padding_rules() {
        let dev = Device::Cpu;
        for (h, w) in [(5, 4), (1, 1), (6, 7)] {
            let data = random(2 * h * w, 4);
            let x = Planes { data: data.clone(), c: 2, h, w };
            let t = Tensor::from_vec(data, (1, 2, h, w), &dev).unwrap();
            let padded = t.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
            // Zero padding stands in for -inf only for inputs at or above zero, as after a ReLU.
            let ours = pool(&x, false).data;
            let theirs = padded.avg_pool2d_with_stride(3, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{h}x{w}");
            assert!(ours.iter().zip(&theirs).all(|(a, b)| (a - b).abs() < 1e-6), "{h}x{w}");
            let max = pool(&x, true).data;
            let neg = t.affine(1.0, 10.0).unwrap();
            let padded = neg.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
            let theirs = padded.max_pool2d_with_stride(3, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(max.iter().zip(&theirs).all(|(a, b)| (a + 10.0 - b).abs() < 1e-5), "{h}x{w}");
        }
    }
}
