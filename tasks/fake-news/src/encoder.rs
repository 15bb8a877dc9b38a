//! A BERT sentence encoder (all-MiniLM-L6-v2 by default): WordPiece tokens, the encoder, mean
//! pooling over real tokens and L2 normalisation, as sentence-transformers does it. Texts longer
//! than the window are split into overlapping windows, each encoded on its own.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use zoo_runtime::{Error, Model, Result};

use crate::cpu::CpuBert;
pub use crate::windows::Windows;
use crate::windows::{pad_batch, Windowing};

/// Tokens per window, [CLS] and [SEP] included: the encoder's `max_seq_length`.
pub const WINDOW: usize = 256;
/// Tokens shared by neighbouring windows, so that no sentence is only ever seen cut in two.
pub const OVERLAP: usize = 64;

/// Which implementation of the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// [`CpuBert`]: the CPU path, used whenever the device is the CPU.
    Cpu,
    /// candle-transformers' `BertModel`: any device, and the reference the CPU path is tested against.
    Candle,
}

enum Bert {
    Cpu(CpuBert),
    Candle(BertModel),
}

pub struct SentenceEncoder {
    bert: Bert,
    pub config: Config,
    windowing: Windowing,
    pad: u32,
    pub dim: usize,
    device: Device,
}

impl SentenceEncoder {
    pub fn load(model: &Model, device: &Device) -> Result<Self> {
        Self::load_tuned(model, device, None)
    }

    pub fn load_with(model: &Model, device: &Device, backend: Backend) -> Result<Self> {
        Self::load_parts(model, device, backend, None)
    }

    /// The encoder with some of its tensors replaced (by name): the layers `zoo train --fine-tune`
    /// trained, kept beside the head.
    pub fn load_tuned(model: &Model, device: &Device, replaced: Option<HashMap<String, Tensor>>) -> Result<Self> {
        Self::load_parts(model, device, if device.is_cpu() { Backend::Cpu } else { Backend::Candle }, replaced)
    }

    fn load_parts(
        model: &Model,
        device: &Device,
        backend: Backend,
        replaced: Option<HashMap<String, Tensor>>,
    ) -> Result<Self> {
        let raw: serde_json::Value = model.json("config.json")?;
        let config: Config =
            serde_json::from_value(raw.clone()).map_err(|e| Error::model(&model.id, format!("config.json: {e}")))?;
        let dim = raw.get("hidden_size").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        let bad = |e: candle_core::Error| Error::model(&model.id, e);
        let vb = match replaced {
            None => model.var_builder("model.safetensors", DType::F32, device)?,
            Some(replaced) => {
                let mut tensors = tensors(model, device)?;
                for (name, tensor) in replaced {
                    match tensors.get(&name) {
                        Some(old) if old.shape() == tensor.shape() => {
                            tensors.insert(name, tensor.to_dtype(DType::F32).map_err(bad)?);
                        }
                        _ => {
                            return Err(Error::model(&model.id, format!("no tensor '{name}' of that shape to replace")))
                        }
                    }
                }
                candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device)
            }
        };
        let bert = match backend {
            Backend::Cpu if device.is_cpu() => Bert::Cpu(CpuBert::load(vb, &config).map_err(bad)?),
            Backend::Cpu => return Err(Error::model(&model.id, "the CPU encoder runs on the CPU only")),
            Backend::Candle => Bert::Candle(BertModel::load(vb, &config).map_err(bad)?),
        };
        // The file pads every input to 128 and truncates there; Windowing turns both off.
        let windowing = Windowing::new(&model.id, &model.file("tokenizer.json")?.bytes()?, WINDOW, OVERLAP)?;
        let pad = windowing.token_id("[PAD]").ok_or_else(|| Error::model(&model.id, "the vocabulary has no [PAD]"))?;
        Ok(SentenceEncoder { bert, config, windowing, pad, dim, device: device.clone() })
    }

    /// Splits a text into windows of at most WINDOW tokens.
    pub fn windows(&self, text: &str) -> std::result::Result<Windows, String> {
        self.windowing.windows(text)
    }

    /// One L2-normalised embedding per window, in order.
    pub fn embed(&self, windows: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let bert = match &self.bert {
            Bert::Cpu(bert) => {
                let lengths: Vec<usize> = windows.iter().map(|w| w.len()).collect();
                return Ok(pooled(&bert.forward(windows)?, &lengths, bert.hidden()));
            }
            Bert::Candle(bert) => bert,
        };
        let (ids, mask) = pad_batch(windows, self.pad, &self.device)?;
        let hidden = bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let pooled = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        pooled.broadcast_div(&norm)?.to_vec2()
    }

    /// The last hidden state at [CLS] for one window: the golden file checks the encoder with it.
    pub fn cls_hidden(&self, window: &[u32]) -> candle_core::Result<Vec<f32>> {
        match &self.bert {
            Bert::Cpu(bert) => {
                let mut hidden = bert.forward(&[window])?;
                hidden.truncate(bert.hidden());
                Ok(hidden)
            }
            Bert::Candle(bert) => {
                let ids = Tensor::new(window, &self.device)?.unsqueeze(0)?;
                let hidden = bert.forward(&ids, &ids.zeros_like()?, None)?;
                hidden.get(0)?.get(0)?.to_vec1()
            }
        }
    }

    pub fn tokenize_plain(&self, text: &str) -> Vec<u32> {
        self.windowing.tokenize_plain(text)
    }
}

/// Every tensor of the encoder's weights, by name, in f32.
pub fn tensors(model: &Model, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = model.file("model.safetensors")?.bytes()?;
    let bad = |e: candle_core::Error| Error::model(&model.id, format!("model.safetensors: {e}"));
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(bad)?;
    tensors.into_iter().map(|(name, t)| Ok((name, t.to_dtype(DType::F32).map_err(bad)?))).collect()
}

/// Mean pooling of each window's rows of `hidden` (windows of `lengths` tokens, one after another)
/// and L2 normalisation, as `embed` does on candle's padded batch.
pub(crate) fn pooled(hidden: &[f32], lengths: &[usize], dim: usize) -> Vec<Vec<f32>> {
    let mut rows = hidden.chunks_exact(dim);
    lengths
        .iter()
        .map(|&len| {
            let mut sum = vec![0f32; dim];
            for row in rows.by_ref().take(len) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            let n = len as f32;
            sum.iter_mut().for_each(|s| *s /= n);
            let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
            sum.iter_mut().for_each(|s| *s /= norm);
            sum
        })
        .collect()
}
