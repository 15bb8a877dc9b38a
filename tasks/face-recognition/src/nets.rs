//! face-api's three networks, read from their tfjs weight files, computed in NHWC (the layout
//! TensorFlow trained them in, so their HWIO filters are already the matrices patches multiply):
//! the SSD MobileNetV1 face detector, the 68-point landmark net and dlib's ResNet-29 descriptor.
//! The detector and landmark net run on the runtime's MobileNet kernels (TensorFlow "same"
//! padding); the descriptor's convolutions, some "valid", are patches times weights here.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use zoo_runtime::cpu::nhwc::{ConvWeights, Pointwise};
use zoo_runtime::tfjs;

/// Tensors of one manifest, taken out by name with their shapes checked.
pub struct Weights {
    tensors: HashMap<String, tfjs::Tensor>,
}

impl Weights {
    pub fn new(tensors: HashMap<String, tfjs::Tensor>) -> Self {
        Weights { tensors }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32], String> {
        let tensor = self.tensors.get(name).ok_or_else(|| format!("no tensor {name}"))?;
        if tensor.shape != shape {
            return Err(format!("{name} has shape {:?}, expected {shape:?}", tensor.shape));
        }
        Ok(&tensor.values)
    }

    /// A tensor whose shape is checked only for its rank and for the dimensions given (0: any).
    fn shaped(&self, name: &str, pattern: &[usize]) -> Result<(&[f32], Vec<usize>), String> {
        let tensor = self.tensors.get(name).ok_or_else(|| format!("no tensor {name}"))?;
        let fits = tensor.shape.len() == pattern.len()
            && tensor.shape.iter().zip(pattern).all(|(&d, &p)| p == 0 || d == p)
            && tensor.shape.iter().all(|&d| d > 0);
        if !fits {
            return Err(format!("{name} has shape {:?}, expected {pattern:?} (0: any)", tensor.shape));
        }
        Ok((&tensor.values, tensor.shape.clone()))
    }

    /// An HWIO filter as the (out, in, k, k) tensor the runtime's kernels take, and its bias.
    fn conv(&self, filter: &str, bias: &str, k: usize) -> Result<(Tensor, Tensor), String> {
        let (values, shape) = self.shaped(filter, &[k, k, 0, 0])?;
        let bias = self.get(bias, &[shape[3]])?;
        let weight = candle(values, &shape)?.permute((3, 2, 0, 1)).and_then(|t| t.contiguous());
        Ok((weight.map_err(|e| e.to_string())?, candle(bias, &[bias.len()])?))
    }

    /// A (k, k, C, 1) depthwise filter as (C, 1, k, k), scaled per channel by `scale`.
    fn depthwise(&self, name: &str, scale: Option<&[f32]>) -> Result<Tensor, String> {
        let (values, shape) = self.shaped(name, &[3, 3, 0, 1])?;
        let channels = shape[2];
        let values: Vec<f32> = match scale {
            Some(scale) => values.iter().enumerate().map(|(i, v)| v * scale[i % channels]).collect(),
            None => values.to_vec(),
        };
        candle(&values, &shape)?.permute((2, 3, 0, 1)).and_then(|t| t.contiguous()).map_err(|e| e.to_string())
    }
}

fn candle(values: &[f32], shape: &[usize]) -> Result<Tensor, String> {
    Tensor::from_slice(values, shape, &Device::Cpu).map_err(|e| e.to_string())
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// The landmark and descriptor nets are small: split over cores, each layer spends more on the
/// hand-off than it saves (measured on 2 cores: 1.7 ms on one thread, 2.3 ms on two). They run
/// on one thread each, and a picture's faces side by side.
const SMALL_NET_THREADS: usize = 1;

/// A feature map: (h, w, c) row-major.
#[derive(Debug, Clone)]
pub struct Map {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Map {
    fn zeros(h: usize, w: usize, c: usize) -> Self {
        Map { h, w, c, data: vec![0.0; h * w * c] }
    }
}

fn spatial(conv: &ConvWeights, x: &Map, threads: usize) -> Map {
    let (h, w) = conv.output_hw(x.h, x.w);
    let mut out = Map::zeros(h, w, conv.out_ch);
    conv.run_on(&x.data, 1, x.h, x.w, &mut out.data, threads);
    out
}

fn pointwise(layer: &Pointwise, x: &Map, threads: usize) -> Map {
    let mut out = Map::zeros(x.h, x.w, layer.out_ch);
    layer.run(&x.data, x.h * x.w, None, &mut out.data, threads);
    out
}

fn relu(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
}

// ---------------------------------------------------------------------------------------------
// SSD MobileNetV1 (face-api's ssdMobilenetv1/*: TF object detection API layout)

/// The detector's input side, and its anchors.
pub const SSD_INPUT: usize = 512;
pub const ANCHORS: usize = 5118;
/// MobileNetV1's depthwise layers that halve the size (1-based, as the weights number them).
const STRIDE_TWO: [usize; 4] = [2, 4, 6, 12];
/// face-api's batch-norm epsilon (the f32 of 0.001).
const BN_EPSILON: f32 = 0.001;

struct Predictor {
    boxes: Pointwise,
    classes: Pointwise,
}

pub struct Ssd {
    stem: ConvWeights,
    /// Depthwise (batch norm folded in) and pointwise layers, 13 of each.
    body: Vec<(ConvWeights, Pointwise)>,
    /// Extra layers, 1x1 then 3x3 stride 2, four times.
    extra: Vec<Extra>,
    predictors: Vec<Predictor>,
    /// (ANCHORS, 4) [ymin, xmin, ymax, xmax] in the 512 square.
    anchors: Vec<[f32; 4]>,
}

enum Extra {
    Pointwise(Pointwise),
    Spatial(ConvWeights),
}

/// The detector's raw output for one input: decoded boxes and face scores, one per anchor.
pub struct SsdOutput {
    /// [ymin, xmin, ymax, xmax] relative to the 512 square, not clipped.
    pub boxes: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
}

impl Ssd {
    pub fn load(w: &Weights) -> Result<Self, String> {
        let (weight, bias) = w.conv(
            "MobilenetV1/Conv2d_0_pointwise/weights",
            "MobilenetV1/Conv2d_0_pointwise/convolution_bn_offset",
            3,
        )?;
        let stem = ConvWeights::new(&weight, &bias, 2, false, true).map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        for i in 1..=13 {
            let p = format!("MobilenetV1/Conv2d_{i}_depthwise");
            let (_, shape) = w.shaped(&format!("{p}/depthwise_weights"), &[3, 3, 0, 1])?;
            let c = shape[2];
            let bn = |name: &str| w.get(&format!("{p}/BatchNorm/{name}"), &[c]);
            let (mean, variance, gamma, beta) = (bn("moving_mean")?, bn("moving_variance")?, bn("gamma")?, bn("beta")?);
            let scale: Vec<f32> = (0..c).map(|i| gamma[i] / (variance[i] + BN_EPSILON).sqrt()).collect();
            let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
            let dw = w.depthwise(&format!("{p}/depthwise_weights"), Some(&scale))?;
            let stride = if STRIDE_TWO.contains(&i) { 2 } else { 1 };
            let depthwise =
                ConvWeights::new(&dw, &candle(&shift, &[c])?, stride, true, true).map_err(|e| e.to_string())?;
            let p = format!("MobilenetV1/Conv2d_{i}_pointwise");
            let (weight, bias) = w.conv(&format!("{p}/weights"), &format!("{p}/convolution_bn_offset"), 1)?;
            if weight.dim(1).map_err(|e| e.to_string())? != c {
                return Err(format!("{p}/weights does not take the {c} channels before it"));
            }
            body.push((depthwise, Pointwise::new(&weight, &bias, true).map_err(|e| e.to_string())?));
        }
        let mut extra = Vec::new();
        for i in 0..8 {
            let p = format!("Prediction/Conv2d_{i}_pointwise");
            let k = if i % 2 == 1 { 3 } else { 1 };
            let (weight, bias) = w.conv(&format!("{p}/weights"), &format!("{p}/convolution_bn_offset"), k)?;
            extra.push(match k {
                1 => Extra::Pointwise(Pointwise::new(&weight, &bias, true).map_err(|e| e.to_string())?),
                _ => Extra::Spatial(ConvWeights::new(&weight, &bias, 2, false, true).map_err(|e| e.to_string())?),
            });
        }
        let mut predictors = Vec::new();
        for i in 0..6 {
            let anchors = if i == 0 { 3 } else { 6 };
            let layer = |what: &str, per: usize| -> Result<Pointwise, String> {
                let p = format!("Prediction/BoxPredictor_{i}/{what}");
                let (weight, bias) = w.conv(&format!("{p}/weights"), &format!("{p}/biases"), 1)?;
                if weight.dim(0).map_err(|e| e.to_string())? != anchors * per {
                    return Err(format!("{p}/weights: expected {} outputs", anchors * per));
                }
                Pointwise::new(&weight, &bias, false).map_err(|e| e.to_string())
            };
            predictors
                .push(Predictor { boxes: layer("BoxEncodingPredictor", 4)?, classes: layer("ClassPredictor", 3)? });
        }
        let anchors =
            w.get("Output/extra_dim", &[1, ANCHORS, 4])?.chunks_exact(4).map(|a| [a[0], a[1], a[2], a[3]]).collect();
        let ssd = Ssd { stem, body, extra, predictors, anchors };
        ssd.check_channels()?;
        Ok(ssd)
    }

    /// Each layer takes the channels the one before it makes: weight files that disagree are
    /// refused here rather than read out of bounds.
    fn check_channels(&self) -> Result<(), String> {
        let takes = |name: String, wants: usize, gets: usize| match wants == gets {
            true => Ok(()),
            false => Err(format!("{name} takes {wants} channels but gets {gets}")),
        };
        takes("MobilenetV1/Conv2d_0_pointwise".into(), self.stem.in_ch, 3)?;
        let mut c = self.stem.out_ch;
        let mut features = Vec::new();
        for (i, (depthwise, pointwise)) in self.body.iter().enumerate() {
            takes(format!("MobilenetV1/Conv2d_{}_depthwise", i + 1), depthwise.in_ch, c)?;
            c = pointwise.out_ch;
            if i + 1 == 11 {
                features.push(c);
            }
        }
        features.push(c);
        for (i, layer) in self.extra.iter().enumerate() {
            let (wants, makes) = match layer {
                Extra::Pointwise(p) => (p.in_ch, p.out_ch),
                Extra::Spatial(s) => (s.in_ch, s.out_ch),
            };
            takes(format!("Prediction/Conv2d_{i}_pointwise"), wants, c)?;
            c = makes;
            if i % 2 == 1 {
                features.push(c);
            }
        }
        for (i, (predictor, &c)) in self.predictors.iter().zip(&features).enumerate() {
            takes(format!("Prediction/BoxPredictor_{i}/BoxEncodingPredictor"), predictor.boxes.in_ch, c)?;
            takes(format!("Prediction/BoxPredictor_{i}/ClassPredictor"), predictor.classes.in_ch, c)?;
        }
        Ok(())
    }

    /// `x`: the (512, 512, 3) input, already scaled to -1..1.
    pub fn forward(&self, x: &Map) -> Result<SsdOutput, String> {
        if (x.h, x.w, x.c) != (SSD_INPUT, SSD_INPUT, 3) {
            return Err(format!("the detector takes a 512x512 RGB input, not {}x{}x{}", x.w, x.h, x.c));
        }
        let mut y = spatial(&self.stem, x, threads());
        let mut features = Vec::new();
        for (i, (depthwise, pw)) in self.body.iter().enumerate() {
            y = pointwise(pw, &spatial(depthwise, &y, threads()), threads());
            if i + 1 == 11 {
                features.push(y.clone());
            }
        }
        features.push(y.clone());
        for (i, layer) in self.extra.iter().enumerate() {
            y = match layer {
                Extra::Pointwise(p) => pointwise(p, &y, threads()),
                Extra::Spatial(c) => spatial(c, &y, threads()),
            };
            if i % 2 == 1 {
                features.push(y.clone());
            }
        }
        let (mut encodings, mut logits) = (Vec::with_capacity(ANCHORS * 4), Vec::with_capacity(ANCHORS * 3));
        for (feature, predictor) in features.iter().zip(&self.predictors) {
            encodings.extend(pointwise(&predictor.boxes, feature, threads()).data);
            logits.extend(pointwise(&predictor.classes, feature, threads()).data);
        }
        if encodings.len() != ANCHORS * 4 {
            return Err(format!("the detector made {} boxes for {ANCHORS} anchors", encodings.len() / 4));
        }
        // outputLayer.ts: offsets scaled by 10 (centres) and 5 (log sizes), in f32 as tfjs does.
        let boxes = encodings
            .chunks_exact(4)
            .zip(&self.anchors)
            .map(|(e, a)| {
                let (ha, wa) = (a[2] - a[0], a[3] - a[1]);
                let (cy, cx) = (a[0] + ha / 2.0, a[1] + wa / 2.0);
                let (y, x) = (e[0] / 10.0 * ha + cy, e[1] / 10.0 * wa + cx);
                let (h, w) = ((e[2] / 5.0).exp() * ha / 2.0, (e[3] / 5.0).exp() * wa / 2.0);
                [y - h, x - w, y + h, x + w]
            })
            .collect();
        let scores = logits.chunks_exact(3).map(|l| 1.0 / (1.0 + (-l[1]).exp())).collect();
        Ok(SsdOutput { boxes, scores })
    }
}

// ---------------------------------------------------------------------------------------------
// 68-point landmarks (faceFeatureExtractor: four dense blocks, then a dense layer)

pub const LANDMARK_INPUT: usize = 112;

struct Separable {
    depthwise: ConvWeights,
    pointwise: Pointwise,
}

impl Separable {
    fn load(w: &Weights, p: &str, stride: usize) -> Result<Self, String> {
        let dw = w.depthwise(&format!("{p}/depthwise_filter"), None)?;
        let c = dw.dim(0).map_err(|e| e.to_string())?;
        let depthwise = ConvWeights::new(&dw, &candle(&vec![0.0; c], &[c])?, stride, true, false);
        let (weight, bias) = w.conv(&format!("{p}/pointwise_filter"), &format!("{p}/bias"), 1)?;
        if weight.dim(1).map_err(|e| e.to_string())? != c {
            return Err(format!("{p}/pointwise_filter does not take {c} channels"));
        }
        Ok(Separable {
            depthwise: depthwise.map_err(|e| e.to_string())?,
            pointwise: Pointwise::new(&weight, &bias, false).map_err(|e| e.to_string())?,
        })
    }

    fn forward(&self, x: &Map) -> Map {
        pointwise(&self.pointwise, &spatial(&self.depthwise, x, SMALL_NET_THREADS), SMALL_NET_THREADS)
    }
}

enum First {
    Dense(ConvWeights),
    Separable(Separable),
}

pub struct Landmarks {
    blocks: Vec<(First, [Separable; 3])>,
    fc: Pointwise,
}

impl Landmarks {
    pub fn load(w: &Weights) -> Result<Self, String> {
        let mut blocks = Vec::new();
        for b in 0..4 {
            let p = format!("dense{b}");
            let first = match b {
                0 => {
                    let (weight, bias) = w.conv(&format!("{p}/conv0/filters"), &format!("{p}/conv0/bias"), 3)?;
                    First::Dense(ConvWeights::new(&weight, &bias, 2, false, false).map_err(|e| e.to_string())?)
                }
                _ => First::Separable(Separable::load(w, &format!("{p}/conv0"), 2)?),
            };
            let rest = [1, 2, 3].map(|i| Separable::load(w, &format!("{p}/conv{i}"), 1));
            let [a, b2, c] = rest;
            blocks.push((first, [a?, b2?, c?]));
        }
        let (fc, _) = w.shaped("fc/weights", &[0, 136])?;
        let (inputs, bias) = (fc.len() / 136, w.get("fc/bias", &[136])?);
        let weight = candle(fc, &[inputs, 136])?.t().and_then(|t| t.contiguous()).map_err(|e| e.to_string())?;
        let fc = Pointwise::new(&weight, &candle(bias, &[136])?, false).map_err(|e| e.to_string())?;
        // Each block's four outputs are summed: they must agree, and take what came before.
        let mut c = 3;
        for (b, (first, rest)) in blocks.iter().enumerate() {
            let (wants, makes) = match first {
                First::Dense(conv) => (conv.in_ch, conv.out_ch),
                First::Separable(sep) => (sep.depthwise.in_ch, sep.pointwise.out_ch),
            };
            let mut layers = vec![(0, wants, c)];
            layers.extend(rest.iter().enumerate().map(|(i, sep)| (i + 1, sep.depthwise.in_ch, makes)));
            layers.extend(rest.iter().enumerate().map(|(i, sep)| (i + 1, sep.pointwise.out_ch, makes)));
            if let Some((i, a, b2)) = layers.into_iter().find(|(_, a, b2)| a != b2) {
                return Err(format!("dense{b}/conv{i}: {a} channels where the block has {b2}"));
            }
            c = makes;
        }
        if fc.in_ch != c {
            return Err(format!("fc takes {} features but the last block makes {c}", fc.in_ch));
        }
        Ok(Landmarks { blocks, fc })
    }

    /// `x`: (112, 112, 3), mean-subtracted and scaled. Returns the 136 raw outputs: x0, y0, x1, ...
    /// relative to the (padded) input square.
    pub fn forward(&self, x: &Map) -> Result<Vec<f32>, String> {
        if (x.h, x.w, x.c) != (LANDMARK_INPUT, LANDMARK_INPUT, 3) {
            return Err(format!("the landmark net takes a 112x112 RGB input, not {}x{}x{}", x.w, x.h, x.c));
        }
        let mut y = x.clone();
        for (first, [conv1, conv2, conv3]) in &self.blocks {
            let mut o1 = match first {
                First::Dense(conv) => spatial(conv, &y, SMALL_NET_THREADS),
                First::Separable(sep) => sep.forward(&y),
            };
            relu(&mut o1.data);
            let o2 = conv1.forward(&o1);
            let mut sum = add(&o1, &o2);
            relu(&mut sum.data);
            let o3 = conv2.forward(&sum);
            let mut sum = add(&add(&o1, &o2), &o3);
            relu(&mut sum.data);
            let o4 = conv3.forward(&sum);
            y = add(&add(&add(&o1, &o2), &o3), &o4);
            relu(&mut y.data);
        }
        // A 7x7 'valid' average pool of the 7x7 map: the mean of each channel.
        let pooled = mean_pixels(&y);
        if pooled.len() != self.fc.in_ch {
            return Err(format!(
                "the landmark net's dense layer takes {} features, not {}",
                self.fc.in_ch,
                pooled.len()
            ));
        }
        let mut out = vec![0.0; self.fc.out_ch];
        self.fc.run(&pooled, 1, None, &mut out, 1);
        Ok(out)
    }
}

fn add(a: &Map, b: &Map) -> Map {
    Map { data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(), ..*a }
}

fn mean_pixels(x: &Map) -> Vec<f32> {
    let mut sum = vec![0f32; x.c];
    for pixel in x.data.chunks_exact(x.c) {
        sum.iter_mut().zip(pixel).for_each(|(s, v)| *s += v);
    }
    let n = (x.h * x.w) as f32;
    sum.iter().map(|s| s / n).collect()
}

// ---------------------------------------------------------------------------------------------
// dlib's ResNet-29 face descriptor (faceRecognitionNet)

pub const DESCRIPTOR_INPUT: usize = 150;
pub const DESCRIPTOR_SIZE: usize = 128;

/// A convolution with dlib's affine layer (a folded batch norm) folded into it.
struct Conv {
    /// (k * k * in, out): an HWIO filter as stored.
    weights: Vec<f32>,
    bias: Vec<f32>,
    k: usize,
    stride: usize,
    /// 'valid' (no padding) rather than 'same'.
    valid: bool,
    cin: usize,
    cout: usize,
    relu: bool,
}

impl Conv {
    fn load(w: &Weights, p: &str, stride: usize, valid: bool, relu: bool) -> Result<Self, String> {
        let (filter, shape) = w.shaped(&format!("{p}/conv/filters"), &[0, 0, 0, 0])?;
        let (k, cin, cout) = (shape[0], shape[2], shape[3]);
        if shape[1] != k || !(1..=7).contains(&k) {
            return Err(format!("{p}/conv/filters: a {}x{} filter", shape[0], shape[1]));
        }
        let bias = w.get(&format!("{p}/conv/bias"), &[cout])?;
        let scale = w.get(&format!("{p}/scale/weights"), &[cout])?;
        let shift = w.get(&format!("{p}/scale/biases"), &[cout])?;
        let weights = filter.iter().enumerate().map(|(i, v)| v * scale[i % cout]).collect();
        let bias = (0..cout).map(|o| bias[o] * scale[o] + shift[o]).collect();
        Ok(Conv { weights, bias, k, stride, valid, cin, cout, relu })
    }

    fn forward(&self, x: &Map) -> Result<Map, String> {
        let (k, s) = (self.k, self.stride);
        if x.c != self.cin {
            return Err(format!("a convolution of {} channels got {}", self.cin, x.c));
        }
        let ((oh, top), (ow, left)) = match self.valid {
            true if x.h >= k && x.w >= k => (((x.h - k) / s + 1, 0), ((x.w - k) / s + 1, 0)),
            true => return Err(format!("a {k}x{k} convolution of a {}x{} map", x.w, x.h)),
            false => {
                let pad = |n: usize| {
                    let (before, _) = zoo_runtime::cpu::nhwc::same_padding(n, k, s);
                    (n.div_ceil(s), before)
                };
                (pad(x.h), pad(x.w))
            }
        };
        let window = k * k * self.cin;
        let mut patches = vec![0f32; oh * ow * window];
        for oy in 0..oh {
            for ox in 0..ow {
                let patch = &mut patches[(oy * ow + ox) * window..][..window];
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - top as isize;
                    if iy < 0 || iy >= x.h as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - left as isize;
                        if ix < 0 || ix >= x.w as isize {
                            continue;
                        }
                        let from = (iy as usize * x.w + ix as usize) * x.c;
                        patch[(ky * k + kx) * x.c..][..x.c].copy_from_slice(&x.data[from..from + x.c]);
                    }
                }
            }
        }
        let mut out = Map::zeros(oh, ow, self.cout);
        for row in out.data.chunks_exact_mut(self.cout) {
            row.copy_from_slice(&self.bias);
        }
        zoo_runtime::cpu::matmul(
            (&patches, window),
            &self.weights,
            &mut out.data,
            (oh * ow, window, self.cout),
            true,
            // SMALL_NET_THREADS: one.
            gemm::Parallelism::None,
        );
        if self.relu {
            relu(&mut out.data);
        }
        Ok(out)
    }
}

struct Residual {
    conv1: Conv,
    conv2: Conv,
    down: bool,
}

impl Residual {
    fn load(w: &Weights, p: &str, down: bool) -> Result<Self, String> {
        Ok(Residual {
            conv1: Conv::load(w, &format!("{p}/conv1"), if down { 2 } else { 1 }, down, true)?,
            conv2: Conv::load(w, &format!("{p}/conv2"), 1, false, false)?,
            down,
        })
    }

    fn forward(&self, x: &Map) -> Result<Map, String> {
        let mut main = self.conv2.forward(&self.conv1.forward(x)?)?;
        let shortcut = match self.down {
            false => x.clone(),
            true => {
                let pooled = average_pool_2x2(x);
                // residualLayer.ts: a main branch one smaller (odd sizes under 'valid') gets a
                // zero row at the bottom and a zero column at the right.
                if (main.h, main.w) != (pooled.h, pooled.w) {
                    main = pad_bottom_right(&main, pooled.h, pooled.w)?;
                }
                // Channels doubled by zeros after the pooled ones.
                match main.c {
                    c if c == pooled.c => pooled,
                    c if c == 2 * pooled.c => {
                        let mut wide = Map::zeros(pooled.h, pooled.w, c);
                        for (to, from) in wide.data.chunks_exact_mut(c).zip(pooled.data.chunks_exact(pooled.c)) {
                            to[..pooled.c].copy_from_slice(from);
                        }
                        wide
                    }
                    c => return Err(format!("a residual block of {c} channels over {}", pooled.c)),
                }
            }
        };
        if (main.h, main.w, main.c) != (shortcut.h, shortcut.w, shortcut.c) {
            return Err("a residual block whose branches differ in shape".into());
        }
        main.data.iter_mut().zip(&shortcut.data).for_each(|(m, s)| *m = (*m + s).max(0.0));
        Ok(main)
    }
}

fn average_pool_2x2(x: &Map) -> Map {
    let (h, w) = (x.h / 2, x.w / 2);
    let mut out = Map::zeros(h, w, x.c);
    for y in 0..h {
        for xx in 0..w {
            let to = &mut out.data[(y * w + xx) * x.c..][..x.c];
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let from = ((2 * y + dy) * x.w + 2 * xx + dx) * x.c;
                to.iter_mut().zip(&x.data[from..from + x.c]).for_each(|(t, v)| *t += v);
            }
            to.iter_mut().for_each(|t| *t /= 4.0);
        }
    }
    out
}

fn pad_bottom_right(x: &Map, h: usize, w: usize) -> Result<Map, String> {
    if h < x.h || w < x.w || h > x.h + 1 || w > x.w + 1 {
        return Err(format!("a residual block's branches of {}x{} and {w}x{h}", x.w, x.h));
    }
    let mut out = Map::zeros(h, w, x.c);
    for y in 0..x.h {
        out.data[y * w * x.c..][..x.w * x.c].copy_from_slice(&x.data[y * x.w * x.c..][..x.w * x.c]);
    }
    Ok(out)
}

fn max_pool_3x3_stride_2(x: &Map) -> Map {
    let (h, w) = ((x.h - 3) / 2 + 1, (x.w - 3) / 2 + 1);
    let mut out = Map { h, w, c: x.c, data: vec![f32::NEG_INFINITY; h * w * x.c] };
    for y in 0..h {
        for xx in 0..w {
            let to = &mut out.data[(y * w + xx) * x.c..][..x.c];
            for dy in 0..3 {
                for dx in 0..3 {
                    let from = ((2 * y + dy) * x.w + 2 * xx + dx) * x.c;
                    to.iter_mut().zip(&x.data[from..from + x.c]).for_each(|(t, v)| *t = t.max(*v));
                }
            }
        }
    }
    out
}

pub struct Recognition {
    stem: Conv,
    blocks: Vec<Residual>,
    /// (256, 128), no bias.
    fc: Vec<f32>,
    features: usize,
}

impl Recognition {
    pub fn load(w: &Weights) -> Result<Self, String> {
        let stem = Conv::load(w, "conv32_down", 2, true, true)?;
        let names: [(&str, bool); 13] = [
            ("conv32_1", false),
            ("conv32_2", false),
            ("conv32_3", false),
            ("conv64_down", true),
            ("conv64_1", false),
            ("conv64_2", false),
            ("conv64_3", false),
            ("conv128_down", true),
            ("conv128_1", false),
            ("conv128_2", false),
            ("conv256_down", true),
            ("conv256_1", false),
            ("conv256_2", false),
        ];
        let mut blocks = names.iter().map(|&(p, down)| Residual::load(w, p, down)).collect::<Result<Vec<_>, _>>()?;
        blocks.push(Residual::load(w, "conv256_down_out", true)?);
        let (fc, shape) = w.shaped("fc", &[0, DESCRIPTOR_SIZE])?;
        Ok(Recognition { stem, blocks, fc: fc.to_vec(), features: shape[0] })
    }

    /// `x`: (150, 150, 3), mean-subtracted and scaled. Returns the 128-d descriptor.
    pub fn forward(&self, x: &Map) -> Result<Vec<f32>, String> {
        if (x.h, x.w, x.c) != (DESCRIPTOR_INPUT, DESCRIPTOR_INPUT, 3) {
            return Err(format!("the descriptor net takes a 150x150 RGB input, not {}x{}x{}", x.w, x.h, x.c));
        }
        let mut y = max_pool_3x3_stride_2(&self.stem.forward(x)?);
        for block in &self.blocks {
            y = block.forward(&y)?;
        }
        let pooled = mean_pixels(&y);
        if pooled.len() != self.features {
            return Err(format!("the descriptor's dense layer takes {} features, not {}", self.features, pooled.len()));
        }
        let mut out = vec![0f32; DESCRIPTOR_SIZE];
        for (i, v) in pooled.iter().enumerate() {
            out.iter_mut().zip(&self.fc[i * DESCRIPTOR_SIZE..][..DESCRIPTOR_SIZE]).for_each(|(o, w)| *o += v * w);
        }
        Ok(out)
    }
}
