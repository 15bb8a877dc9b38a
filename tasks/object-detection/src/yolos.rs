//! Hugging Face Transformers' `YolosForObjectDetection` (hustvl/yolos-*): a ViT whose sequence
//! carries, after the patches, a fixed set of detection tokens; each token's output is read by
//! two small MLPs as a class distribution (with "no object" last) and a box. Set prediction: no
//! anchors and no suppression. The ViT layers are candle-transformers'; the embeddings (position
//! embeddings interpolated to the picture's patch grid with PyTorch's bicubic), the mid-layer
//! position embeddings and the heads are here, in the checkpoint's exact naming.

use std::collections::BTreeMap;

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::vit;
use serde::Deserialize;

/// The fields of YOLOS's `config.json` zoo reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: candle_nn::Activation,
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// The (height, width) the position embeddings were trained for.
    pub image_size: [usize; 2],
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "hundred")]
    pub num_detection_tokens: usize,
    #[serde(default)]
    pub use_mid_position_embeddings: bool,
    /// Class names by index, as strings of numbers (Transformers' JSON).
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
}

fn gelu() -> candle_nn::Activation {
    candle_nn::Activation::Gelu
}
fn layer_norm_eps() -> f64 {
    1e-12
}
fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}
fn hundred() -> usize {
    100
}

impl Config {
    /// Sizes a malicious or broken config could use to ask for absurd allocations are checked
    /// before any weight is read.
    pub fn check(&self) -> std::result::Result<(), String> {
        let limits = [
            ("hidden_size", self.hidden_size, 1..=4096),
            ("num_hidden_layers", self.num_hidden_layers, 1..=64),
            ("num_attention_heads", self.num_attention_heads, 1..=64),
            ("intermediate_size", self.intermediate_size, 1..=16384),
            ("patch_size", self.patch_size, 1..=64),
            ("num_channels", self.num_channels, 3..=3),
            ("num_detection_tokens", self.num_detection_tokens, 1..=1000),
            ("image_size[0]", self.image_size[0], 1..=4096),
            ("image_size[1]", self.image_size[1], 1..=4096),
        ];
        for (name, value, range) in limits {
            if !range.contains(&value) {
                return Err(format!("config.json: {name} = {value} is outside {}..={}", range.start(), range.end()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err("config.json: hidden_size is not a multiple of num_attention_heads".into());
        }
        if self.image_size.iter().any(|&s| s < self.patch_size) {
            return Err("config.json: image_size is smaller than one patch".into());
        }
        Ok(())
    }

    /// The class names in index order; a gap or a non-number key is an error.
    pub fn labels(&self) -> std::result::Result<Vec<String>, String> {
        let mut labels = vec![None; self.id2label.len()];
        for (key, name) in &self.id2label {
            let index: usize = key.parse().map_err(|_| format!("config.json: id2label key {key:?} is not a number"))?;
            match labels.get_mut(index) {
                Some(slot) => *slot = Some(name.clone()),
                None => {
                    return Err(format!("config.json: id2label has {} entries but names class {index}", labels.len()))
                }
            }
        }
        labels.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| "config.json: id2label has gaps".into())
    }

    fn vit(&self) -> vit::Config {
        vit::Config {
            hidden_size: self.hidden_size,
            num_hidden_layers: 1,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            image_size: self.image_size[0],
            patch_size: self.patch_size,
            num_channels: self.num_channels,
            qkv_bias: self.qkv_bias,
        }
    }
}

/// Three linear layers, ReLU between them (`YolosMLPPredictionHead`).
struct Mlp(Vec<Linear>);

impl Mlp {
    fn load(vb: VarBuilder, hidden: usize, out: usize) -> Result<Self> {
        let vb = vb.pp("layers");
        Ok(Mlp(vec![
            candle_nn::linear(hidden, hidden, vb.pp(0))?,
            candle_nn::linear(hidden, hidden, vb.pp(1))?,
            candle_nn::linear(hidden, out, vb.pp(2))?,
        ]))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, layer) in self.0.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.0.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

pub struct Yolos {
    pub config: Config,
    patches: Conv2d,
    cls_token: Tensor,
    detection_tokens: Tensor,
    /// (1, 1 + patches + tokens, hidden) for `config.image_size`.
    position_embeddings: Tensor,
    /// (layers - 1, 1, 1 + patches + tokens, hidden), when the config uses them.
    mid_position_embeddings: Option<Tensor>,
    /// One candle-transformers encoder of one layer per layer, so that the mid-layer position
    /// embeddings can go in between.
    layers: Vec<vit::Encoder>,
    layernorm: LayerNorm,
    classes: Mlp,
    boxes: Mlp,
    pub labels: Vec<String>,
    /// The position embeddings (and mid-layer ones) resized for the last patch grid seen: a
    /// folder of photos of one camera, or `--explain`'s passes, reuse them.
    resized: std::sync::Mutex<Option<Resized>>,
}

type Resized = ((usize, usize), Tensor, Option<Tensor>);

impl Yolos {
    pub fn load(config: Config, vb: VarBuilder) -> std::result::Result<Self, String> {
        config.check()?;
        let labels = config.labels()?;
        let e = |e: candle_core::Error| zoo_runtime::error::candle_reason(&e);
        let (hidden, tokens) = (config.hidden_size, config.num_detection_tokens);
        let grid = (config.image_size[0] / config.patch_size) * (config.image_size[1] / config.patch_size);
        let sequence = 1 + grid + tokens;
        let embeddings = vb.pp("vit.embeddings");
        let conv = Conv2dConfig { stride: config.patch_size, ..Default::default() };
        let patches =
            candle_nn::conv2d(3, hidden, config.patch_size, conv, embeddings.pp("patch_embeddings.projection"))
                .map_err(e)?;
        let cls_token = embeddings.get((1, 1, hidden), "cls_token").map_err(e)?;
        let detection_tokens = embeddings.get((1, tokens, hidden), "detection_tokens").map_err(e)?;
        let position_embeddings = embeddings.get((1, sequence, hidden), "position_embeddings").map_err(e)?;
        let encoder = vb.pp("vit.encoder");
        let mid_position_embeddings = match config.use_mid_position_embeddings {
            true => Some(
                encoder
                    .get((config.num_hidden_layers - 1, 1, sequence, hidden), "mid_position_embeddings")
                    .map_err(e)?,
            ),
            false => None,
        };
        let single = config.vit();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                // Layer i read as the first layer of a one-layer encoder (renamed at the root:
                // a prefix is applied to what the renaming returns).
                let prefix = "vit.encoder.layer.0.";
                let vb = vb.clone().rename_f(move |name: &str| match name.strip_prefix(prefix) {
                    Some(rest) => format!("vit.encoder.layer.{i}.{rest}"),
                    None => name.to_string(),
                });
                vit::Encoder::new(&single, vb.pp("vit.encoder"))
            })
            .collect::<Result<Vec<_>>>()
            .map_err(e)?;
        let layernorm = candle_nn::layer_norm(hidden, config.layer_norm_eps, vb.pp("vit.layernorm")).map_err(e)?;
        let classes = Mlp::load(vb.pp("class_labels_classifier"), hidden, labels.len() + 1).map_err(e)?;
        let boxes = Mlp::load(vb.pp("bbox_predictor"), hidden, 4).map_err(e)?;
        Ok(Yolos {
            config,
            patches,
            cls_token,
            detection_tokens,
            position_embeddings,
            mid_position_embeddings,
            layers,
            layernorm,
            classes,
            boxes,
            labels,
            resized: std::sync::Mutex::new(None),
        })
    }

    /// Position embeddings (.., 1 + patches + tokens, hidden) for a picture of `grid` patches:
    /// the patches' part resized bicubically, as `InterpolateInitialPositionEmbeddings` does.
    fn interpolated(&self, embeddings: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let (tokens, hidden) = (self.config.num_detection_tokens, self.config.hidden_size);
        let trained =
            (self.config.image_size[0] / self.config.patch_size, self.config.image_size[1] / self.config.patch_size);
        let n = embeddings.dim(D::Minus2)?;
        let cls = embeddings.narrow(D::Minus2, 0, 1)?;
        let detection = embeddings.narrow(D::Minus2, n - tokens, tokens)?;
        let patches = embeddings.narrow(D::Minus2, 1, n - 1 - tokens)?;
        let lead = patches.dims()[..patches.rank() - 2].iter().product::<usize>();
        let values: Vec<f32> = patches.flatten_all()?.to_vec1()?;
        let mut out = Vec::with_capacity(lead * grid.0 * grid.1 * hidden);
        for plane in values.chunks_exact(trained.0 * trained.1 * hidden) {
            out.extend(bicubic(plane, trained, grid, hidden));
        }
        let mut shape = patches.dims().to_vec();
        let rank = shape.len();
        shape[rank - 2] = grid.0 * grid.1;
        let patches = Tensor::from_vec(out, shape, embeddings.device())?;
        Tensor::cat(&[&cls, &patches, &detection], rank - 2)
    }

    fn resized_for(&self, grid: (usize, usize)) -> Result<(Tensor, Option<Tensor>)> {
        let mut cache = self.resized.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, position, mid)) = cache.as_ref() {
            if *at == grid {
                return Ok((position.clone(), mid.clone()));
            }
        }
        let position = self.interpolated(&self.position_embeddings, grid)?;
        let mid = match &self.mid_position_embeddings {
            Some(mid) => Some(self.interpolated(mid, grid)?),
            None => None,
        };
        *cache = Some((grid, position.clone(), mid.clone()));
        Ok((position, mid))
    }

    /// Class logits (tokens, labels + 1) and boxes (tokens, 4: centre x, centre y, width,
    /// height, relative to the input) for one normalised (1, 3, H, W) input.
    pub fn forward(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, h, w) = pixels.dims4()?;
        let grid = (h / self.config.patch_size, w / self.config.patch_size);
        if grid.0 == 0 || grid.1 == 0 {
            candle_core::bail!("a {w}x{h} input is smaller than one {0}x{0} patch", self.config.patch_size)
        }
        let patches = self.patches.forward(pixels)?.flatten_from(2)?.transpose(1, 2)?;
        let x = Tensor::cat(&[&self.cls_token, &patches, &self.detection_tokens], 1)?;
        let (position, mid) = self.resized_for(grid)?;
        let mut x = x.broadcast_add(&position)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if let Some(mid) = &mid {
                if i + 1 < self.layers.len() {
                    x = x.broadcast_add(&mid.get(i)?)?;
                }
            }
        }
        let x = self.layernorm.forward(&x)?;
        let tokens = self.config.num_detection_tokens;
        let n = x.dim(1)?;
        let detections = x.narrow(1, n - tokens, tokens)?.squeeze(0)?;
        let logits = self.classes.forward(&detections)?;
        let boxes = candle_nn::ops::sigmoid(&self.boxes.forward(&detections)?)?;
        Ok((logits, boxes))
    }
}

/// PyTorch's `interpolate(mode="bicubic", align_corners=False)` of an (h, w, channels) plane,
/// channels last: source = (destination + 0.5) * in / out - 0.5, Keys' cubic with a = -0.75,
/// taps clamped at the edges.
pub fn bicubic(plane: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize), channels: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let weights = |t: f64| -> [f64; 4] {
        let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
        [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
    };
    let taps = |n_in: usize, n_out: usize| -> Vec<([usize; 4], [f64; 4])> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|o| {
                let source = (o as f64 + 0.5) * scale - 0.5;
                let floor = source.floor();
                let at = |k: i64| (floor as i64 + k).clamp(0, n_in as i64 - 1) as usize;
                ([at(-1), at(0), at(1), at(2)], weights(source - floor))
            })
            .collect()
    };
    let (rows, cols) = (taps(h, oh), taps(w, ow));
    let mut out = vec![0f32; oh * ow * channels];
    for (oy, (ys, wy)) in rows.iter().enumerate() {
        for (ox, (xs, wx)) in cols.iter().enumerate() {
            let to = &mut out[(oy * ow + ox) * channels..][..channels];
            for (c, value) in to.iter_mut().enumerate() {
                let mut sum = 0f64;
                for (&y, &wy) in ys.iter().zip(wy) {
                    for (&x, &wx) in xs.iter().zip(wx) {
                        sum += wy * wx * f64::from(plane[(y * w + x) * channels + c]);
                    }
                }
                *value = sum as f32;
            }
        }
    }
    out
}

/// A checkpoint's `config.json`.
pub fn read_config(text: &str) -> std::result::Result<Config, String> {
    serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_keeps_sizes_constants_and_ramps() {
        let plane: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(bicubic(&plane, (3, 4), (3, 4), 1), plane, "same size: the same values");
        let flat = bicubic(&[2.5; 6], (2, 3), (5, 7), 1);
        assert!(flat.iter().all(|v| (v - 2.5).abs() < 1e-6), "{flat:?}");
        // A ramp along x, doubled: output 3 samples 1.25, between 1 and 2; Keys' kernel (a = -0.75)
        // at distances 1.25, 0.25, 0.75, 1.75 weighs -0.10546875, 0.87890625, 0.26171875 and
        // -0.03515625 (worked by hand), so 0, 1, 2, 3 give 1.296875, not the line's 1.25.
        let ramp: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let wide = bicubic(&ramp, (1, 8), (1, 16), 1);
        assert!((wide[3] - 1.296875).abs() < 1e-6, "{}", wide[3]);
        // Edges clamp: output 0 samples -0.25, its taps -2..1 read pixels 0, 0, 0 and 1.
        assert!((wide[0] + 0.10546875).abs() < 1e-6, "{}", wide[0]);
    }
}
