//! A BERT sentence encoder (all-MiniLM-L6-v2 by default): WordPiece tokens, the encoder, mean
//! pooling over real tokens and L2 normalisation, as sentence-transformers does it. Texts longer
//! than the window are split into overlapping windows, each encoded on its own.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;
use zoo_runtime::{Error, Model, Result};

/// Tokens per window, [CLS] and [SEP] included: the encoder's `max_seq_length`.
pub const WINDOW: usize = 256;
/// Tokens shared by neighbouring windows, so that no sentence is only ever seen cut in two.
pub const OVERLAP: usize = 64;

pub struct SentenceEncoder {
    bert: BertModel,
    tokenizer: Tokenizer,
    cls: u32,
    sep: u32,
    pad: u32,
    pub dim: usize,
    device: Device,
}

/// A text's windows of token ids, [CLS] and [SEP] included.
pub struct Windows(pub Vec<Vec<u32>>);

impl SentenceEncoder {
    pub fn load(model: &Model, device: &Device) -> Result<Self> {
        let raw: serde_json::Value = model.json("config.json")?;
        let config: Config =
            serde_json::from_value(raw.clone()).map_err(|e| Error::model(&model.id, format!("config.json: {e}")))?;
        let dim = raw.get("hidden_size").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        let bad = |e: candle_core::Error| Error::model(&model.id, e);
        let vb = model.var_builder("model.safetensors", DType::F32, device)?;
        let bert = BertModel::load(vb, &config).map_err(bad)?;
        let bytes = model.file("tokenizer.json")?.bytes()?;
        let mut tokenizer =
            Tokenizer::from_bytes(&bytes[..]).map_err(|e| Error::model(&model.id, format!("tokenizer.json: {e}")))?;
        // The file pads every input to 128 and truncates there: windows are cut here instead, and
        // batches are padded to their longest member.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| Error::model(&model.id, format!("tokenizer.json: {e}")))?;
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| Error::model(&model.id, format!("the vocabulary has no {token}")))
        };
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        Ok(SentenceEncoder { bert, tokenizer, cls, sep, pad, dim, device: device.clone() })
    }

    /// Splits a text into windows of at most WINDOW tokens.
    pub fn windows(&self, text: &str) -> std::result::Result<Windows, String> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| format!("cannot tokenise: {e}"))?;
        let ids = encoding.get_ids();
        if ids.is_empty() {
            return Err("the text is empty".into());
        }
        let body = WINDOW - 2;
        let step = body - OVERLAP;
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + body).min(ids.len());
            let mut window = Vec::with_capacity(end - start + 2);
            window.push(self.cls);
            window.extend_from_slice(&ids[start..end]);
            window.push(self.sep);
            windows.push(window);
            if end == ids.len() {
                break;
            }
            start += step;
        }
        Ok(Windows(windows))
    }

    /// One L2-normalised embedding per window, in order.
    pub fn embed(&self, windows: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let longest = windows.iter().map(|w| w.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(windows.len() * longest);
        let mut mask = Vec::with_capacity(windows.len() * longest);
        for w in windows {
            ids.extend_from_slice(w);
            ids.extend(std::iter::repeat_n(self.pad, longest - w.len()));
            mask.extend(std::iter::repeat_n(1u32, w.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - w.len()));
        }
        let shape = (windows.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let hidden = self.bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let pooled = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        pooled.broadcast_div(&norm)?.to_vec2()
    }

    /// The last hidden state at [CLS] for one window: the golden file checks the encoder with it.
    pub fn cls_hidden(&self, window: &[u32]) -> candle_core::Result<Vec<f32>> {
        let ids = Tensor::new(window, &self.device)?.unsqueeze(0)?;
        let hidden = self.bert.forward(&ids, &ids.zeros_like()?, None)?;
        hidden.get(0)?.get(0)?.to_vec1()
    }

    pub fn tokenize_plain(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, true).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }
}
