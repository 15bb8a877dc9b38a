//! The three style networks share one shape (Johnson et al.'s image transformation network):
//! three contracting convolutions, residual blocks, two upsampling convolutions and a final 9x9
//! convolution, every convolution after reflection padding, most followed by an instance norm.
//! They differ only in where the norms' scales and shifts come from, so one [`StyleNet`] runs all
//! three; a [`Style`] picks the scales and shifts ([`StyleNet::norms`]) before a run.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::cpu::CpuNet;
use crate::layers::{instance_norm, reflect_pad, upsample2};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Sigmoid,
}

/// Where a layer's instance-norm scale (gamma) and shift (beta) come from.
pub enum NormSource {
    /// Plain affine instance norm (TransformerNet).
    Fixed { gamma: Vec<f32>, beta: Vec<f32> },
    /// Conditional instance norm over a table of styles (multistyle26): a style mix weights the rows.
    Table { gamma: Tensor, beta: Tensor },
    /// Conditional instance norm from a style vector (Magenta): gamma = Wg b + bg, beta = Wb b + bb.
    Linear { gamma_w: Tensor, gamma_b: Tensor, beta_w: Tensor, beta_b: Tensor },
}

/// A convolution after reflection padding of k/2 (and a 2x nearest upsampling when `upsample`),
/// then an optional instance norm and an activation.
pub struct ConvLayer {
    /// (out, in, k, k), float32 on the network's device.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub upsample: bool,
    pub norm: Option<NormSource>,
    pub activation: Activation,
}

impl ConvLayer {
    pub fn kernel(&self) -> usize {
        self.weight.dim(3).expect("4-d weight")
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dim(0).expect("4-d weight")
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dim(1).expect("4-d weight")
    }
}

/// What chooses the norms' scales and shifts.
#[derive(Debug, Clone)]
pub enum Style {
    /// The network has one style built in (TransformerNet).
    Fixed,
    /// Weights over a table of styles, summing to 1 (multistyle26).
    Mix(Vec<f32>),
    /// A style vector (Magenta's 100-d bottleneck).
    Vector(Vec<f32>),
}

/// Each layer's (gamma, beta), `None` where the layer has no norm.
pub type Norms = Vec<Option<(Vec<f32>, Vec<f32>)>>;

pub struct StyleNet {
    /// Contracting layers, then two per residual block, then expanding layers.
    pub layers: Vec<ConvLayer>,
    pub contract: usize,
    pub residual_blocks: usize,
    /// The pixel scale the network works in: 1 for 0..1 input, 255 for 0..255 (TransformerNet).
    pub pixel_scale: f32,
    /// How many styles a [`Style::Mix`] weighs (multistyle26), or the style vector's length.
    pub style_size: usize,
    /// The same layers laid out for the CPU kernels.
    cpu: Option<CpuNet>,
}

/// Every network halves the size twice and doubles it twice, so its input sides must be
/// multiples of this.
pub const SIZE_MULTIPLE: usize = 4;

impl StyleNet {
    /// Resolves the norms' parameters for one style.
    pub fn norms(&self, style: &Style) -> Result<Norms> {
        self.layers
            .iter()
            .map(|layer| {
                let Some(norm) = &layer.norm else { return Ok(None) };
                let pair = match (norm, style) {
                    (NormSource::Fixed { gamma, beta }, _) => (gamma.clone(), beta.clone()),
                    (NormSource::Table { gamma, beta }, Style::Mix(weights)) => {
                        let w = Tensor::from_slice(weights, (1, weights.len()), gamma.device())?;
                        (w.matmul(gamma)?.flatten_all()?.to_vec1()?, w.matmul(beta)?.flatten_all()?.to_vec1()?)
                    }
                    (NormSource::Linear { gamma_w, gamma_b, beta_w, beta_b }, Style::Vector(v)) => {
                        let b = Tensor::from_slice(v, (v.len(), 1), gamma_w.device())?;
                        let affine = |w: &Tensor, bias: &Tensor| -> Result<Vec<f32>> {
                            w.matmul(&b)?.flatten_all()?.add(bias)?.to_vec1()
                        };
                        (affine(gamma_w, gamma_b)?, affine(beta_w, beta_b)?)
                    }
                    _ => candle_core::bail!("this network is not conditioned on that kind of style"),
                };
                Ok(Some(pair))
            })
            .collect()
    }

    /// The network in candle ops, on any device. `x`: (B, 3, H, W) in the network's pixel scale,
    /// H and W multiples of [`SIZE_MULTIPLE`]; returns the same shape, unclamped.
    pub fn forward(&self, x: &Tensor, norms: &Norms) -> Result<Tensor> {
        let apply = |i: usize, x: &Tensor| self.layer_forward(i, x, norms);
        let mut x = x.to_dtype(DType::F32)?;
        for i in 0..self.contract {
            x = apply(i, &x)?;
        }
        for r in 0..self.residual_blocks {
            let first = self.contract + 2 * r;
            let h = apply(first, &x)?;
            x = (x + apply(first + 1, &h)?)?;
        }
        for i in self.contract + 2 * self.residual_blocks..self.layers.len() {
            x = apply(i, &x)?;
        }
        Ok(x)
    }

    /// Styles `x`: (1, 3, H, W) in 0..1, H and W multiples of [`SIZE_MULTIPLE`]; returns 0..1
    /// (unclamped for networks without a final sigmoid).
    pub fn run(&self, x: &Tensor, norms: &Norms) -> Result<Tensor> {
        let scale = f64::from(self.pixel_scale);
        let x = if scale == 1.0 { x.clone() } else { (x * scale)? };
        let y = match &self.cpu {
            Some(cpu) if x.device().is_cpu() => {
                let (b, _, h, w) = x.dims4()?;
                let mut outputs = Vec::with_capacity(b);
                for image in 0..b {
                    let nhwc: Vec<f32> =
                        x.get(image)?.permute((1, 2, 0))?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    let y = cpu.forward(&nhwc, h, w, norms);
                    outputs.push(Tensor::from_vec(y, (h, w, 3), x.device())?.permute((2, 0, 1))?);
                }
                Tensor::stack(&outputs, 0)?.contiguous()?
            }
            _ => self.forward(&x, norms)?,
        };
        if scale == 1.0 {
            Ok(y)
        } else {
            y / scale
        }
    }

    fn layer_forward(&self, i: usize, x: &Tensor, norms: &Norms) -> Result<Tensor> {
        let layer = &self.layers[i];
        let x = if layer.upsample { upsample2(x)? } else { x.clone() };
        let p = layer.kernel() / 2;
        let x = reflect_pad(&x, p, p, p, p)?;
        let mut y = x.conv2d(&layer.weight, 0, layer.stride, 1, 1)?;
        if let Some(bias) = &layer.bias {
            y = y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
        }
        if let Some((gamma, beta)) = &norms[i] {
            let dev = y.device();
            y = instance_norm(&y, &Tensor::new(gamma.as_slice(), dev)?, &Tensor::new(beta.as_slice(), dev)?)?;
        }
        match layer.activation {
            Activation::None => Ok(y),
            Activation::Relu => y.relu(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(&y),
        }
    }

    /// multistyle26: `{contract.0-2, res.0-5.{0,1}, expand.0-2}.{w, norm.gamma, norm.beta}`, no conv
    /// biases, gamma and beta tables of (styles, channels).
    pub fn multistyle(vb: &VarBuilder) -> Result<Self> {
        let layer = |name: &str, stride: usize, upsample: bool, activation: Activation| -> Result<ConvLayer> {
            let weight = vb.get_unchecked(&format!("{name}.w"))?.to_dtype(DType::F32)?;
            let gamma = vb.get_unchecked(&format!("{name}.norm.gamma"))?.to_dtype(DType::F32)?;
            let beta = vb.get_unchecked(&format!("{name}.norm.beta"))?.to_dtype(DType::F32)?;
            check_norm(name, &weight, gamma.dim(1)?)?;
            Ok(ConvLayer {
                weight,
                bias: None,
                stride,
                upsample,
                norm: Some(NormSource::Table { gamma, beta }),
                activation,
            })
        };
        let styles = vb.get_unchecked("contract.0.norm.gamma")?.dim(0)?;
        let mut layers = vec![
            layer("contract.0", 1, false, Activation::Relu)?,
            layer("contract.1", 2, false, Activation::Relu)?,
            layer("contract.2", 2, false, Activation::Relu)?,
        ];
        let blocks = count_blocks(|r| vb.contains_tensor(&format!("res.{r}.0.w")));
        for r in 0..blocks {
            layers.push(layer(&format!("res.{r}.0"), 1, false, Activation::Relu)?);
            layers.push(layer(&format!("res.{r}.1"), 1, false, Activation::None)?);
        }
        layers.push(layer("expand.0", 1, true, Activation::Relu)?);
        layers.push(layer("expand.1", 1, true, Activation::Relu)?);
        layers.push(layer("expand.2", 1, false, Activation::Sigmoid)?);
        Self::new(layers, blocks, 1.0, styles)
    }

    /// Magenta's transformer: TF op names; contracting convs carry folded batch norms (biases, no
    /// norm), the rest conditional norms computed from the 100-d style vector by 1x1 convs.
    pub fn magenta(vb: &VarBuilder) -> Result<Self> {
        let conv = |name: &str| -> Result<(Tensor, Tensor)> {
            let w = vb.get_unchecked(&format!("transformer/{name}.weight"))?.to_dtype(DType::F32)?;
            let b = vb.get_unchecked(&format!("transformer/{name}.bias"))?.to_dtype(DType::F32)?;
            Ok((w, b))
        };
        let linear = |name: &str| -> Result<(Tensor, Tensor)> {
            let w = vb.get_unchecked(&format!("style_params/transformer/{name}.weight"))?.to_dtype(DType::F32)?;
            let (out, inp, _, _) = w.dims4()?;
            let b = vb.get_unchecked(&format!("style_params/transformer/{name}.bias"))?.to_dtype(DType::F32)?;
            Ok((w.reshape((out, inp))?, b))
        };
        let plain = |name: &str, stride: usize| -> Result<ConvLayer> {
            let (weight, bias) = conv(name)?;
            Ok(ConvLayer {
                weight,
                bias: Some(bias),
                stride,
                upsample: false,
                norm: None,
                activation: Activation::Relu,
            })
        };
        let conditioned = |scope: &str, upsample: bool, activation: Activation| -> Result<ConvLayer> {
            let (weight, bias) = conv(scope)?;
            let (beta_w, beta_b) = linear(&format!("{scope}/StyleNorm/Conv"))?;
            let (gamma_w, gamma_b) = linear(&format!("{scope}/StyleNorm/Conv_1"))?;
            check_norm(scope, &weight, gamma_w.dim(0)?)?;
            Ok(ConvLayer {
                weight,
                bias: Some(bias),
                stride: 1,
                upsample,
                norm: Some(NormSource::Linear { gamma_w, gamma_b, beta_w, beta_b }),
                activation,
            })
        };
        let style_size = linear("expand/conv3/conv/StyleNorm/Conv")?.0.dim(1)?;
        let mut layers = vec![plain("contract/conv1", 1)?, plain("contract/conv2", 2)?, plain("contract/conv3", 2)?];
        let blocks =
            count_blocks(|r| vb.contains_tensor(&format!("transformer/residual/residual{}/conv1.weight", r + 1)));
        for r in 1..=blocks {
            layers.push(conditioned(&format!("residual/residual{r}/conv1"), false, Activation::Relu)?);
            layers.push(conditioned(&format!("residual/residual{r}/conv2"), false, Activation::None)?);
        }
        layers.push(conditioned("expand/conv1/conv", true, Activation::Relu)?);
        layers.push(conditioned("expand/conv2/conv", true, Activation::Relu)?);
        layers.push(conditioned("expand/conv3/conv", false, Activation::Sigmoid)?);
        Self::new(layers, blocks, 1.0, style_size)
    }

    /// pytorch/examples `TransformerNet` (any width): `conv1.conv2d.*`, `in1.*`, `res1..5.*`,
    /// `deconv1..3.conv2d.*`, `in4`, `in5`; works in 0..255 and ends with no norm and no activation.
    pub fn transformer_net(vb: &VarBuilder) -> Result<Self> {
        let layer = |conv: &str,
                     norm: Option<&str>,
                     stride: usize,
                     upsample: bool,
                     activation: Activation|
         -> Result<ConvLayer> {
            let weight = vb.get_unchecked(&format!("{conv}.conv2d.weight"))?.to_dtype(DType::F32)?;
            let bias = vb.get_unchecked(&format!("{conv}.conv2d.bias"))?.to_dtype(DType::F32)?;
            let norm = match norm {
                Some(norm) => {
                    let gamma = vb.get_unchecked(&format!("{norm}.weight"))?.to_dtype(DType::F32)?;
                    let beta = vb.get_unchecked(&format!("{norm}.bias"))?.to_dtype(DType::F32)?;
                    check_norm(norm, &weight, gamma.dim(0)?)?;
                    Some(NormSource::Fixed { gamma: gamma.to_vec1()?, beta: beta.to_vec1()? })
                }
                None => None,
            };
            Ok(ConvLayer { weight, bias: Some(bias), stride, upsample, norm, activation })
        };
        let mut layers = vec![
            layer("conv1", Some("in1"), 1, false, Activation::Relu)?,
            layer("conv2", Some("in2"), 2, false, Activation::Relu)?,
            layer("conv3", Some("in3"), 2, false, Activation::Relu)?,
        ];
        let blocks = count_blocks(|r| vb.contains_tensor(&format!("res{}.conv1.conv2d.weight", r + 1)));
        for r in 1..=blocks {
            layers.push(layer(&format!("res{r}.conv1"), Some(&format!("res{r}.in1")), 1, false, Activation::Relu)?);
            layers.push(layer(&format!("res{r}.conv2"), Some(&format!("res{r}.in2")), 1, false, Activation::None)?);
        }
        layers.push(layer("deconv1", Some("in4"), 1, true, Activation::Relu)?);
        layers.push(layer("deconv2", Some("in5"), 1, true, Activation::Relu)?);
        layers.push(layer("deconv3", None, 1, false, Activation::None)?);
        Self::new(layers, blocks, 255.0, 0)
    }

    fn new(layers: Vec<ConvLayer>, residual_blocks: usize, pixel_scale: f32, style_size: usize) -> Result<Self> {
        let mut net = StyleNet { layers, contract: 3, residual_blocks, pixel_scale, style_size, cpu: None };
        if net.layers[0].in_channels() != 3 || net.layers.last().expect("layers").out_channels() != 3 {
            candle_core::bail!("the network must take and give RGB (3 channels)")
        }
        for pair in net.layers.windows(2) {
            if pair[0].out_channels() != pair[1].in_channels() {
                candle_core::bail!(
                    "a layer gives {} channels, the next takes {}",
                    pair[0].out_channels(),
                    pair[1].in_channels()
                )
            }
        }
        for layer in &net.layers {
            let (_, _, kh, kw) = layer.weight.dims4()?;
            if kh != kw || kh % 2 == 0 {
                candle_core::bail!("{kh}x{kw} kernels are not supported (square and odd only)")
            }
        }
        if net.device().is_cpu() {
            net.cpu = Some(CpuNet::new(&net)?);
        }
        Ok(net)
    }

    pub fn device(&self) -> &Device {
        self.layers[0].weight.device()
    }
}

fn check_norm(name: &str, weight: &Tensor, channels: usize) -> Result<()> {
    if weight.dim(0)? != channels {
        candle_core::bail!("{name}: the norm has {channels} channels, the convolution gives {}", weight.dim(0)?)
    }
    Ok(())
}

fn count_blocks(exists: impl Fn(usize) -> bool) -> usize {
    (0..).take_while(|&r| exists(r)).count()
}
