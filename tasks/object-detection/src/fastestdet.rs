//! FastestDet (dog-qiuqiu/FastestDet): a ShuffleNetV2 backbone, an SPP neck and one anchor-free
//! head on a stride-16 grid, read from the PyTorch state dict its authors publish. Batch norms are
//! folded into the convolutions at load, so a forward pass is convolutions, pools and a softmax.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};

/// The input side the network was trained at; pictures are stretched to it.
pub const INPUT: usize = 352;
/// Channels of the output map: objectness, four box terms, the class probabilities.
pub const BOX_TERMS: usize = 5;

/// torch.nn.BatchNorm2d's default.
const BN_EPS: f64 = 1e-5;

struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    relu: bool,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, self.groups)?.broadcast_add(&self.bias)?;
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// The state dict's tensors, taken by the layers that use them.
struct Weights<'a> {
    tensors: &'a HashMap<String, Tensor>,
    device: &'a Device,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the state dict has no tensor {name}")))?;
        tensor.to_dtype(DType::F32)?.to_device(self.device)
    }

    /// The convolution `{prefix}{conv}` followed by the batch norm `{prefix}{conv + 1}`, folded.
    fn conv(&self, prefix: &str, conv: usize, stride: usize, padding: usize, relu: bool) -> Result<Conv> {
        let weight = self.get(&format!("{prefix}{conv}.weight"))?;
        let norm = |field: &str| self.get(&format!("{prefix}{}.{field}", conv + 1));
        let (gamma, beta, mean, var) = (norm("weight")?, norm("bias")?, norm("running_mean")?, norm("running_var")?);
        let (out, per_group, kh, kw) = weight.dims4()?;
        if gamma.dims() != [out] || kh != kw || kh % 2 == 0 {
            candle_core::bail!("{prefix}{conv}: a {out}x{per_group}x{kh}x{kw} convolution that does not fit its norm")
        }
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(Conv {
            weight: weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?,
            bias: bias.reshape((1, out, 1, 1))?,
            stride,
            padding,
            groups: 1,
            relu,
        })
    }

    /// A depthwise convolution (one filter per channel) and its norm.
    fn depthwise(&self, prefix: &str, conv: usize, stride: usize, padding: usize, relu: bool) -> Result<Conv> {
        let mut layer = self.conv(prefix, conv, stride, padding, relu)?;
        layer.groups = layer.weight.dim(0)?;
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

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let run_main = |x: &Tensor| self.main.iter().try_fold(x.clone(), |x, conv| conv.forward(&x));
        match &self.projection {
            Some([depthwise, pointwise]) => Tensor::cat(&[pointwise.forward(&depthwise.forward(x)?)?, run_main(x)?], 1),
            None => {
                // The reference's channel shuffle: channel 2i is passed on, channel 2i+1 transformed.
                let (n, c, h, w) = x.dims4()?;
                let pairs = x.reshape((n, c / 2, 2, h, w))?;
                let even = pairs.narrow(2, 0, 1)?.reshape((n, c / 2, h, w))?;
                let odd = pairs.narrow(2, 1, 1)?.reshape((n, c / 2, h, w))?;
                Tensor::cat(&[even, run_main(&odd)?], 1)
            }
        }
    }
}

/// Depthwise 5x5 convolutions with their norms and ReLUs, one after another.
struct DepthwiseStack(Vec<Conv>);

impl DepthwiseStack {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.iter().try_fold(x.clone(), |x, conv| conv.forward(&x))
    }
}

pub struct FastestDet {
    stem: Conv,
    stages: Vec<Vec<ShuffleUnit>>,
    spp_in: Conv,
    spp_branches: [DepthwiseStack; 3],
    spp_out: Conv,
    head_in: Conv,
    /// Objectness, box and class heads: a depthwise 5x5 with ReLU, then a 1x1 to its outputs.
    heads: [[Conv; 2]; 3],
    pub classes: usize,
}

impl FastestDet {
    pub fn load(tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let w = Weights { tensors, device };
        let stem = w.conv("backbone.first_conv.", 0, 2, 1, true)?;
        let stages = [("stage2", 4), ("stage3", 8), ("stage4", 4)]
            .into_iter()
            .map(|(stage, units)| {
                (0..units)
                    .map(|i| ShuffleUnit::load(&w, &format!("backbone.{stage}.{i}."), if i == 0 { 2 } else { 1 }))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let branch = |name: &str, depth: usize| -> Result<DepthwiseStack> {
            let convs =
                (0..depth).map(|i| w.depthwise(&format!("SPP.{name}."), 3 * i, 1, 2, true)).collect::<Result<_>>()?;
            Ok(DepthwiseStack(convs))
        };
        let head = |name: &str| -> Result<[Conv; 2]> {
            let prefix = format!("detect_head.{name}_layers.conv5x5.");
            Ok([w.depthwise(&prefix, 0, 1, 2, true)?, w.conv(&prefix, 3, 1, 0, false)?])
        };
        let heads = [head("obj")?, head("reg")?, head("cls")?];
        let classes = heads[2][1].weight.dim(0)?;
        if heads[0][1].weight.dim(0)? != 1 || heads[1][1].weight.dim(0)? != 4 {
            candle_core::bail!("the objectness and box heads must have 1 and 4 outputs")
        }
        Ok(FastestDet {
            stem,
            stages,
            spp_in: w.conv("SPP.Conv1x1.conv1x1.", 0, 1, 0, true)?,
            spp_branches: [branch("S1", 1)?, branch("S2", 2)?, branch("S3", 3)?],
            spp_out: w.conv("SPP.output.", 0, 1, 0, false)?,
            head_in: w.conv("detect_head.conv1x1.conv1x1.", 0, 1, 0, true)?,
            heads,
            classes,
        })
    }

    /// (n, 3, 352, 352) BGR in 0..1 -> (n, 5 + classes, 22, 22): objectness (after its sigmoid),
    /// the box's four raw terms, and the class probabilities, as the published ONNX export gives.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Zero padding stands in for -inf: the stem ends in a ReLU, so no value is below 0.
        let mut x = self.stem.forward(x)?.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        x = x.max_pool2d_with_stride(3, 2)?;
        let mut levels = Vec::with_capacity(3);
        for stage in &self.stages {
            x = stage.iter().try_fold(x, |x, unit| unit.forward(&x))?;
            levels.push(x.clone());
        }
        let (_, _, h, w) = levels[1].dims4()?;
        // The finest level is averaged down (count_include_pad: always over 9), the coarsest repeated up.
        let fine = levels[0].pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.avg_pool2d_with_stride(3, 2)?;
        let coarse = levels[2].upsample_nearest2d(h, w)?;
        let x = Tensor::cat(&[&fine, &levels[1], &coarse], 1)?;

        let x = self.spp_in.forward(&x)?;
        let branches: Vec<Tensor> = self.spp_branches.iter().map(|b| b.forward(&x)).collect::<Result<_>>()?;
        let x = (&x + self.spp_out.forward(&Tensor::cat(&branches, 1)?)?)?.relu()?;

        let x = self.head_in.forward(&x)?;
        let [obj, reg, cls] = &self.heads;
        let run = |head: &[Conv; 2]| head[1].forward(&head[0].forward(&x)?);
        let obj = candle_nn::ops::sigmoid(&run(obj)?)?;
        let cls = candle_nn::ops::softmax(&run(cls)?, 1)?;
        Tensor::cat(&[obj, run(reg)?, cls], 1)
    }
}

/// A (5 + classes, h, w) map as one vector per cell, cells in row-major order.
pub fn cell_vectors(map: &Tensor) -> Result<(Vec<f32>, [usize; 3])> {
    let (c, h, w) = map.dims3()?;
    Ok((map.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?, [c, h, w]))
}
