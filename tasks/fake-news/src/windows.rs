//! Long texts in overlapping windows, for every model the task runs: the text is tokenised once
//! without special tokens, cut into bodies of at most `window` tokens (less the model's own
//! special tokens), neighbours sharing `overlap` tokens, and each body is wrapped in the special
//! tokens the tokenizer's post-processor adds ([CLS] ... [SEP], <s> ... </s>).

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;
use zoo_runtime::{Error, Result};

/// A text's windows of token ids, special tokens included.
pub struct Windows(pub Vec<Vec<u32>>);

pub struct Windowing {
    tokenizer: Tokenizer,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    window: usize,
    overlap: usize,
}

impl Windowing {
    /// Reads `tokenizer.json`; its own padding and truncation are turned off, since windows are
    /// cut here and batches padded to their longest member.
    pub fn new(model_id: &str, tokenizer_json: &[u8], window: usize, overlap: usize) -> Result<Self> {
        let bad = |e: tokenizers::Error| Error::model(model_id, format!("tokenizer.json: {e}"));
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(bad)?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(bad)?;
        // What the post-processor puts around a text is learnt from the tokenizer itself, so that
        // BERT's [CLS]/[SEP] and RoBERTa's <s>/</s> need no table here.
        let probe = tokenizer.encode("a", true).map_err(bad)?;
        let special = probe.get_special_tokens_mask();
        let ids = probe.get_ids();
        let first = special.iter().position(|&s| s == 0).unwrap_or(ids.len());
        let last = special.iter().rposition(|&s| s == 0).map_or(first, |i| i + 1);
        let (prefix, suffix) = (ids[..first].to_vec(), ids[last..].to_vec());
        if prefix.is_empty() {
            return Err(Error::model(
                model_id,
                "tokenizer.json adds no start token ([CLS] or <s>): its post_processor is missing",
            ));
        }
        let specials = prefix.len() + suffix.len();
        if window < specials + overlap + 1 {
            return Err(Error::model(
                model_id,
                format!("a window of {window} tokens leaves no room for text beside {specials} special tokens"),
            ));
        }
        Ok(Windowing { tokenizer, prefix, suffix, window, overlap })
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Splits a text into windows of at most `window` tokens that together cover every token.
    pub fn windows(&self, text: &str) -> std::result::Result<Windows, String> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| format!("cannot tokenise: {e}"))?;
        let ids = encoding.get_ids();
        if ids.is_empty() {
            return Err("the text is empty".into());
        }
        let body = self.window - self.prefix.len() - self.suffix.len();
        let step = body - self.overlap;
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + body).min(ids.len());
            let mut window = Vec::with_capacity(end - start + self.prefix.len() + self.suffix.len());
            window.extend_from_slice(&self.prefix);
            window.extend_from_slice(&ids[start..end]);
            window.extend_from_slice(&self.suffix);
            windows.push(window);
            if end == ids.len() {
                break;
            }
            start += step;
        }
        Ok(Windows(windows))
    }

    /// The text's tokens with the special tokens, uncut.
    pub fn tokenize_plain(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, true).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }
}

/// Windows as one batch: token ids padded with `pad` to the longest, and the attention mask
/// (1 for a real token, 0 for padding), both (windows, longest).
pub fn pad_batch(windows: &[&[u32]], pad: u32, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let longest = windows.iter().map(|w| w.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(windows.len() * longest);
    let mut mask = Vec::with_capacity(windows.len() * longest);
    for w in windows {
        ids.extend_from_slice(w);
        ids.extend(std::iter::repeat_n(pad, longest - w.len()));
        mask.extend(std::iter::repeat_n(1u32, w.len()));
        mask.extend(std::iter::repeat_n(0u32, longest - w.len()));
    }
    let shape = (windows.len(), longest);
    Ok((Tensor::from_vec(ids, shape, device)?, Tensor::from_vec(mask, shape, device)?))
}
