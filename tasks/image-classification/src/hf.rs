//! Hugging Face Transformers image classifiers: `ViTForImageClassification` through
//! candle-transformers, with labels from `config.json` (`id2label`) and preprocessing from
//! `preprocessor_config.json`, so the Hub's fine-tuned ViTs run as published.

use std::collections::HashMap;

use image::imageops::FilterType;
use serde::Deserialize;

use crate::preprocess::{Preprocess, Resize};

#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub id2label: HashMap<String, String>,
}

impl HfConfig {
    /// Label names by class index; `None` when `id2label` does not cover 0..n exactly.
    pub fn labels(&self) -> Option<Vec<String>> {
        let mut labels = vec![None; self.id2label.len()];
        for (id, label) in &self.id2label {
            let slot = labels.get_mut(id.parse::<usize>().ok()?)?;
            *slot = Some(label.clone());
        }
        labels.into_iter().collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Square(u32),
    HeightWidth { height: u32, width: u32 },
    Shortest { shortest_edge: u32 },
}

/// The fields of `preprocessor_config.json` (ViTImageProcessor and friends) zoo honours.
#[derive(Debug, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default)]
    size: Option<Size>,
    #[serde(default)]
    resample: Option<u32>,
    #[serde(default)]
    do_rescale: Option<bool>,
    #[serde(default)]
    rescale_factor: Option<f32>,
    #[serde(default)]
    do_normalize: Option<bool>,
    #[serde(default)]
    image_mean: Option<[f32; 3]>,
    #[serde(default)]
    image_std: Option<[f32; 3]>,
}

impl PreprocessorConfig {
    /// The processor's behaviour as a [`Preprocess`]; without a file, ViT's defaults at the
    /// model's image size. A size other than the model's is refused: ViT's position embeddings
    /// fix its input at image_size square, and candle's patch convolution does not check an input
    /// smaller than its kernel.
    pub fn to_preprocess(config: Option<&Self>, image_size: u32) -> Result<Preprocess, String> {
        let (height, width) = match config.and_then(|c| c.size.as_ref()) {
            Some(Size::Square(s)) | Some(Size::Shortest { shortest_edge: s }) => (*s, *s),
            Some(Size::HeightWidth { height, width }) => (*height, *width),
            None => (image_size, image_size),
        };
        if (height, width) != (image_size, image_size) {
            return Err(format!(
                "preprocessor_config.json resizes to {height}x{width}, but the network takes \
                 {image_size}x{image_size} (config.json's image_size)"
            ));
        }
        // PIL resample codes, as transformers stores them.
        let filter = match config.and_then(|c| c.resample) {
            Some(0) => FilterType::Nearest,
            Some(3) => FilterType::CatmullRom,
            Some(1) => FilterType::Lanczos3,
            _ => FilterType::Triangle,
        };
        let rescale = match config {
            Some(c) if c.do_rescale == Some(false) => 1.0,
            Some(c) => c.rescale_factor.unwrap_or(1.0 / 255.0),
            None => 1.0 / 255.0,
        };
        let normalize = config.is_none_or(|c| c.do_normalize != Some(false));
        let (mean, std) = if normalize {
            (
                config.and_then(|c| c.image_mean).unwrap_or([0.5; 3]),
                config.and_then(|c| c.image_std).unwrap_or([0.5; 3]),
            )
        } else {
            ([0.0; 3], [1.0; 3])
        };
        let usable = |v: f32| v.is_finite() && v > 0.0;
        if !(usable(rescale) && std.iter().all(|&s| usable(s)) && mean.iter().all(|m| m.is_finite())) {
            return Err(format!(
                "preprocessor_config.json: rescale_factor {rescale}, image_mean {mean:?} and image_std {std:?} \
                 do not describe a normalisation (each must be finite, the factor and stds above 0)"
            ));
        }
        // (p * rescale - mean) / std == (p - mean / rescale) / (std / rescale)
        Ok(Preprocess {
            resize: Resize::Exact { height, width },
            filter,
            offset: mean.map(|m| m / rescale),
            scale: std.map(|s| s / rescale),
            channels_last: false,
        })
    }
}
