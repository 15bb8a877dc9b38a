//! Loading Whisper: CTranslate2 checkpoints (the Hub's `Systran/faster-whisper-*`) mapped onto
//! candle-transformers' model, or Transformers checkpoints (`openai/whisper-*`) read as they are.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self as m, Config};
use serde::Deserialize;
use tokenizers::Tokenizer;
use zoo_runtime::{Error, Model, ModelFile, Result};

use crate::ct2::Ct2Model;
use crate::encoder::CpuEncoder;
use crate::text_decoder::{DecoderState, TextDecoder};

/// The special tokens decoding needs, looked up in the model's own tokenizer.
#[derive(Debug, Clone)]
pub struct SpecialTokens {
    pub sot: u32,
    pub eot: u32,
    pub transcribe: u32,
    pub translate: u32,
    pub sot_prev: u32,
    pub sot_lm: u32,
    pub no_timestamps: u32,
    pub no_speech: u32,
    /// The first timestamp token (`<|0.00|>`); the others follow at 20 ms steps.
    pub timestamp_begin: u32,
    /// Language codes and their tokens (`en` → `<|en|>`), empty for English-only models.
    pub languages: Vec<(String, u32)>,
}

/// The audio encoder: zoo's CPU implementation, or candle-transformers' on other devices.
pub enum Encoder {
    Cpu(Box<CpuEncoder>),
    Candle(Box<m::model::AudioEncoder>),
}

/// The precision of the encoder's and decoder's matrix products (`--compute-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeType {
    Float32,
    /// Weights per row in int8, inputs quantized per row as they come (CPU only).
    Int8,
    /// int8 for a checkpoint that stores its layers so (CTranslate2's int8 and int8_float16) on
    /// the CPU, float32 otherwise.
    Auto,
}

impl ComputeType {
    /// Whether a checkpoint's layers run in int8: the one that stores them so (`stored_int8`)
    /// under `auto`, where zoo has int8 products (the CPU).
    fn int8_for(self, stored_int8: bool, cpu: bool) -> bool {
        match self {
            ComputeType::Float32 => false,
            ComputeType::Int8 => true,
            ComputeType::Auto => stored_int8 && cpu,
        }
    }
}

/// A Whisper model ready to encode windows and decode tokens.
pub struct Whisper {
    pub encoder: Encoder,
    pub decoder: TextDecoder,
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub tokens: SpecialTokens,
    /// Tokens never sampled (non-speech symbols and the task's control tokens).
    pub suppress: Vec<u32>,
    /// Tokens not sampled first (a blank and end-of-text).
    pub suppress_at_begin: Vec<u32>,
    /// (layer, head) pairs whose cross-attention follows the audio, for word timing.
    pub alignment_heads: Vec<(usize, usize)>,
    pub multilingual: bool,
    pub device: Device,
    /// "ctranslate2" or "transformers": which kind of checkpoint was read.
    pub format: &'static str,
}

/// `config.json` of a CTranslate2 Whisper conversion.
#[derive(Debug, Deserialize, Default)]
struct Ct2Config {
    #[serde(default)]
    alignment_heads: Vec<(usize, usize)>,
    #[serde(default)]
    suppress_ids: Vec<i64>,
    #[serde(default)]
    suppress_ids_begin: Vec<i64>,
}

/// The parts of a Transformers `config.json` besides the dimensions candle reads.
#[derive(Debug, Deserialize, Default)]
struct HfConfig {
    #[serde(default)]
    begin_suppress_tokens: Vec<i64>,
}

#[derive(Debug, Deserialize, Default)]
struct HfGenerationConfig {
    #[serde(default)]
    alignment_heads: Vec<(usize, usize)>,
}

/// Limits far above every published Whisper; a config past them is refused before any allocation.
const MAX_DIM: usize = 1 << 14;
const MAX_LAYERS: usize = 128;
const MAX_VOCAB: usize = 1 << 20;

fn check_config(model: &str, c: &Config) -> Result<()> {
    let dims = [c.num_mel_bins, c.d_model, c.max_source_positions, c.max_target_positions];
    let bad = dims.iter().any(|&d| d == 0 || d > MAX_DIM)
        || c.encoder_layers > MAX_LAYERS
        || c.decoder_layers > MAX_LAYERS
        || c.vocab_size == 0
        || c.vocab_size > MAX_VOCAB
        || c.encoder_attention_heads == 0
        || c.decoder_attention_heads == 0
        || !c.d_model.is_multiple_of(c.encoder_attention_heads)
        || !c.d_model.is_multiple_of(c.decoder_attention_heads);
    if bad {
        return Err(Error::model(model, format!("implausible Whisper dimensions: {c:?}")));
    }
    Ok(())
}

fn ids(list: &[i64]) -> Vec<u32> {
    list.iter().filter_map(|&i| u32::try_from(i).ok()).collect()
}

impl Whisper {
    /// Reads a CTranslate2 (`model.bin`) or Transformers (`model.safetensors`) checkpoint, its
    /// layers in `compute`'s precision.
    pub fn load(model: &Model, device: &Device, compute: ComputeType) -> Result<Self> {
        if compute == ComputeType::Int8 && !device.is_cpu() {
            return Err(Error::Usage("--compute-type int8 runs on the CPU only (--device cpu)".into()));
        }
        let tokenizer_file = model.file("tokenizer.json")?;
        let tokenizer = Tokenizer::from_bytes(tokenizer_file.bytes()?.as_ref())
            .map_err(|e| Error::model(&model.id, format!("{}: {e}", tokenizer_file.display())))?;

        if let Some(bin) = model.optional_file("model.bin")? {
            let ModelFile::Disk(path) = &bin else {
                return Err(Error::model(&model.id, "bundled CTranslate2 models are not supported"));
            };
            let ct2 = Ct2Model::open(path).map_err(|e| Error::model(&model.id, e))?;
            let extra: Ct2Config = model.optional_json("config.json")?.unwrap_or_default();
            let (sources, mut config) = ct2_sources(&ct2).map_err(|e| Error::model(&model.id, e))?;
            config.suppress_tokens = ids(&extra.suppress_ids);
            check_config(&model.id, &config)?;
            let stored_int8 = ct2
                .variable("decoder/layer_0/ffn/linear_0/weight")
                .is_some_and(|v| v.dtype == crate::ct2::Ct2Dtype::I8);
            let int8 = compute.int8_for(stored_int8, device.is_cpu());
            let backend = Ct2Backend { ct2: &ct2, sources, d: config.d_model };
            let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
            let whisper = load_parts(&vb, &config, int8)
                .map_err(|e| Error::model(&model.id, format!("{}: {e}", path.display())))?;
            let begin = if extra.suppress_ids_begin.is_empty() { None } else { Some(ids(&extra.suppress_ids_begin)) };
            return Self::assemble(
                model,
                whisper,
                config,
                tokenizer,
                begin,
                extra.alignment_heads,
                device,
                "ctranslate2",
            );
        }

        let config: Config = model.json("config.json")?;
        check_config(&model.id, &config)?;
        let hf: HfConfig = model.json("config.json")?;
        let generation: HfGenerationConfig = model.optional_json("generation_config.json")?.unwrap_or_default();
        let vb = model.var_builder("model.safetensors", DType::F32, device)?;
        let whisper = load_parts(&vb, &config, compute.int8_for(false, device.is_cpu()))
            .map_err(|e| Error::model(&model.id, format!("model.safetensors: {e}")))?;
        let begin = if hf.begin_suppress_tokens.is_empty() { None } else { Some(ids(&hf.begin_suppress_tokens)) };
        Self::assemble(model, whisper, config, tokenizer, begin, generation.alignment_heads, device, "transformers")
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        model: &Model,
        whisper: (Encoder, TextDecoder),
        config: Config,
        tokenizer: Tokenizer,
        suppress_at_begin: Option<Vec<u32>>,
        alignment_heads: Vec<(usize, usize)>,
        device: &Device,
        format: &'static str,
    ) -> Result<Self> {
        let token = |name: &str| {
            tokenizer.token_to_id(name).ok_or_else(|| {
                Error::model(&model.id, format!("tokenizer.json has no {name} token; is this a Whisper model?"))
            })
        };
        let no_timestamps = token("<|notimestamps|>")?;
        let no_speech = token("<|nospeech|>").or_else(|_| token("<|nocaptions|>"))?;
        // Whisper's rule: the multilingual vocabularies are the larger ones.
        let multilingual = config.vocab_size >= 51865;
        let languages = if multilingual {
            LANGUAGES
                .iter()
                .filter_map(|&code| {
                    let id = tokenizer.token_to_id(&format!("<|{code}|>"))?;
                    ((id as usize) < config.vocab_size).then(|| (code.to_string(), id))
                })
                .collect()
        } else {
            Vec::new()
        };
        let tokens = SpecialTokens {
            sot: token("<|startoftranscript|>")?,
            eot: token("<|endoftext|>")?,
            transcribe: token("<|transcribe|>")?,
            translate: token("<|translate|>")?,
            sot_prev: token("<|startofprev|>")?,
            sot_lm: token("<|startoflm|>")?,
            no_timestamps,
            no_speech,
            timestamp_begin: no_timestamps + 1,
            languages,
        };
        if tokens.timestamp_begin as usize + 1500 > config.vocab_size {
            return Err(Error::model(&model.id, "the vocabulary has no room for Whisper's 1500 timestamp tokens"));
        }
        let mut suppress = config.suppress_tokens.clone();
        suppress.extend([tokens.transcribe, tokens.translate, tokens.sot, tokens.sot_prev, tokens.sot_lm, no_speech]);
        suppress.retain(|&t| (t as usize) < config.vocab_size);
        suppress.sort_unstable();
        suppress.dedup();
        let space = tokenizer.encode(" ", false).ok().and_then(|e| e.get_ids().first().copied());
        let suppress_at_begin = suppress_at_begin.unwrap_or_else(|| space.into_iter().chain([tokens.eot]).collect());
        Ok(Self {
            encoder: whisper.0,
            decoder: whisper.1,
            config,
            tokenizer,
            tokens,
            suppress,
            suppress_at_begin,
            alignment_heads,
            multilingual,
            device: device.clone(),
            format,
        })
    }

    /// The encoder's output for one 30 s log-mel window (`n_mels` x 3000 values).
    pub fn encode(&mut self, window: Vec<f32>) -> candle_core::Result<Tensor> {
        let n_frames = window.len() / self.config.num_mel_bins;
        match &mut self.encoder {
            Encoder::Cpu(encoder) => {
                let out = encoder.forward(&window);
                let rows = out.len() / self.config.d_model;
                Tensor::from_vec(out, (1, rows, self.config.d_model), &self.device)
            }
            Encoder::Candle(encoder) => {
                let mel = Tensor::from_vec(window, (1, self.config.num_mel_bins, n_frames), &self.device)?;
                encoder.forward(&mel, true)
            }
        }
    }

    /// Decoding state for a window whose encoder output is `audio`.
    pub fn start(&self, audio: &Tensor) -> candle_core::Result<DecoderState> {
        self.decoder.start(audio)
    }

    /// Feeds `tokens` after those in `state` and returns the next-token logits after each of the
    /// new tokens listed in `positions` (indices into `tokens`).
    pub fn step(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
        positions: &[usize],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let hidden = self.decoder.forward(tokens, state)?;
        let d = self.decoder.d_model();
        Ok(positions.iter().map(|&p| self.decoder.logits(&hidden[p * d..(p + 1) * d])).collect())
    }

    /// One token after each of `states` (a window each); the next-token logits of each.
    pub fn step_batch(&self, tokens: &[u32], states: &mut [DecoderState]) -> candle_core::Result<Vec<Vec<f32>>> {
        let hidden = self.decoder.forward_batch(tokens, states)?;
        Ok(self.decoder.logits_rows(&hidden))
    }
}

/// The encoder for the device and zoo's cached decoder over the same weights, their layers in
/// int8 where `int8` (only on the CPU: candle's encoder has no int8 layers).
fn load_parts(vb: &VarBuilder, config: &Config, int8: bool) -> candle_core::Result<(Encoder, TextDecoder)> {
    debug_assert!(!int8 || vb.device().is_cpu(), "int8 layers are for the CPU");
    // The decoder first: its embedding table, the largest tensor, then meets the fewest pages of
    // the checkpoint already read, which is what sets the peak memory of loading.
    let decoder = TextDecoder::load(vb, config, int8)?;
    let encoder = if vb.device().is_cpu() {
        Encoder::Cpu(Box::new(CpuEncoder::load(vb, config, int8)?))
    } else {
        Encoder::Candle(Box::new(m::model::Whisper::load(vb, config.clone())?.encoder))
    };
    Ok((encoder, decoder))
}

/// A CTranslate2 Whisper's tensors under Transformers' `WhisperForConditionalGeneration` names
/// (what `openai/whisper-*` safetensors hold), and its dimensions.
pub fn transformers_tensors(
    ct2: &Ct2Model,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, Config), crate::ct2::Ct2Error> {
    let (sources, config) = ct2_sources(ct2)?;
    let mut vars = HashMap::new();
    for (name, source) in &sources {
        vars.insert(name.clone(), source.read(ct2, config.d_model, device)?);
    }
    vars.insert(
        "model.encoder.embed_positions.weight".into(),
        ct2.tensor("encoder/position_encodings/encodings", device)?,
    );
    Ok((vars, config))
}

/// Where a tensor under Transformers' name is in a CTranslate2 checkpoint: a variable, or the
/// `part`-th block of `d` rows of a stacked projection.
struct Ct2Source {
    name: String,
    part: Option<usize>,
}

impl Ct2Source {
    fn read(&self, ct2: &Ct2Model, d: usize, device: &Device) -> Result<Tensor, crate::ct2::Ct2Error> {
        let t = ct2.tensor(&self.name, device)?;
        match self.part {
            None => Ok(t),
            Some(part) => t.narrow(0, part * d, d).map_err(|source| crate::ct2::Ct2Error::Tensor {
                path: ct2.path().to_string(),
                name: self.name.clone(),
                source: Box::new(source),
            }),
        }
    }
}

/// A CTranslate2 checkpoint as a [`VarBuilder`] backend: each tensor is decoded to f32 when a
/// layer asks for it and dropped once the layer has packed it, so the checkpoint is never held
/// in f32 whole beside the packed copy (which doubled the peak memory of loading).
struct Ct2Backend<'a> {
    ct2: &'a Ct2Model,
    sources: HashMap<String, Ct2Source>,
    d: usize,
}

impl Ct2Backend<'_> {
    fn tensor(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let source =
            self.sources.get(name).ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })?;
        let failed = |e: crate::ct2::Ct2Error| candle_core::Error::Msg(e.to_string());
        if let (DType::F16, None) = (dtype, source.part) {
            if let Some(t) = self.ct2.tensor_f16(&source.name, dev).map_err(failed)? {
                return Ok(t);
            }
        }
        source.read(self.ct2, self.d, dev).map_err(failed)?.to_dtype(dtype)
    }
}

impl candle_nn::var_builder::SimpleBackend for Ct2Backend<'_> {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.tensor(name, dtype, dev)?;
        if t.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }
}

/// Maps a CTranslate2 Whisper spec onto candle's (Transformers') names, splitting the stacked
/// projections, and reads the dimensions from the tensors themselves.
fn ct2_sources(ct2: &Ct2Model) -> Result<(HashMap<String, Ct2Source>, Config), crate::ct2::Ct2Error> {
    let invalid = |reason: String| crate::ct2::Ct2Error::Invalid { path: ct2.path().to_string(), reason };
    if !ct2.spec.starts_with("Whisper") {
        return Err(invalid(format!("holds a {} model, not Whisper", ct2.spec)));
    }
    let shape =
        |name: &str| ct2.variable(name).map(|v| v.shape.clone()).ok_or_else(|| invalid(format!("has no {name}")));
    let conv1 = shape("encoder/conv1/weight")?;
    let embeddings = shape("decoder/embeddings/weight")?;
    let encoder_positions = shape("encoder/position_encodings/encodings")?;
    let decoder_positions = shape("decoder/position_encodings/encodings")?;
    let count_layers = |prefix: &str| {
        (0..).take_while(|i| ct2.variable(&format!("{prefix}/layer_{i}/ffn/linear_0/weight")).is_some()).count()
    };
    let heads = |name: &str| -> Result<usize, crate::ct2::Ct2Error> {
        let h = ct2.scalar(name)?;
        usize::try_from(h).ok().filter(|&h| h > 0).ok_or_else(|| invalid(format!("{name} is {h}")))
    };
    if conv1.len() != 3 || embeddings.len() != 2 || encoder_positions.len() != 2 || decoder_positions.len() != 2 {
        return Err(invalid("tensor ranks do not match a Whisper model".into()));
    }
    let config = Config {
        num_mel_bins: conv1[1],
        max_source_positions: encoder_positions[0],
        d_model: embeddings[1],
        encoder_attention_heads: heads("encoder/num_heads")?,
        encoder_layers: count_layers("encoder"),
        vocab_size: embeddings[0],
        max_target_positions: decoder_positions[0],
        decoder_attention_heads: heads("decoder/num_heads")?,
        decoder_layers: count_layers("decoder"),
        suppress_tokens: Vec::new(),
    };
    let mut sources = HashMap::new();
    let mut put = |to: String, from: String, part: Option<usize>| {
        sources.insert(to, Ct2Source { name: from, part });
    };
    let norm = |put: &mut dyn FnMut(String, String, Option<usize>), to: &str, from: &str| {
        put(format!("{to}.weight"), format!("{from}/gamma"), None);
        put(format!("{to}.bias"), format!("{from}/beta"), None);
    };
    let linear = |put: &mut dyn FnMut(String, String, Option<usize>), to: &str, from: &str| {
        put(format!("{to}.weight"), format!("{from}/weight"), None);
        put(format!("{to}.bias"), format!("{from}/bias"), None);
    };
    // q, k, v stacked in one matrix (self-attention) or k, v (cross-attention); k has no bias in
    // Whisper, so its rows of the stacked bias are zero and dropped.
    let stacked = |put: &mut dyn FnMut(String, String, Option<usize>), to: &str, from: &str, parts: &[&str]| {
        for (i, part) in parts.iter().enumerate() {
            put(format!("{to}.{part}_proj.weight"), format!("{from}/weight"), Some(i));
            if *part != "k" {
                put(format!("{to}.{part}_proj.bias"), format!("{from}/bias"), Some(i));
            }
        }
    };

    for (to, from) in [("model.encoder.conv1", "encoder/conv1"), ("model.encoder.conv2", "encoder/conv2")] {
        linear(&mut put, to, from);
    }
    for i in 0..config.encoder_layers {
        let (to, from) = (format!("model.encoder.layers.{i}"), format!("encoder/layer_{i}"));
        stacked(&mut put, &format!("{to}.self_attn"), &format!("{from}/self_attention/linear_0"), &["q", "k", "v"]);
        linear(&mut put, &format!("{to}.self_attn.out_proj"), &format!("{from}/self_attention/linear_1"));
        norm(&mut put, &format!("{to}.self_attn_layer_norm"), &format!("{from}/self_attention/layer_norm"));
        linear(&mut put, &format!("{to}.fc1"), &format!("{from}/ffn/linear_0"));
        linear(&mut put, &format!("{to}.fc2"), &format!("{from}/ffn/linear_1"));
        norm(&mut put, &format!("{to}.final_layer_norm"), &format!("{from}/ffn/layer_norm"));
    }
    norm(&mut put, "model.encoder.layer_norm", "encoder/layer_norm");

    put("model.decoder.embed_tokens.weight".into(), "decoder/embeddings/weight".into(), None);
    put("model.decoder.embed_positions.weight".into(), "decoder/position_encodings/encodings".into(), None);
    for i in 0..config.decoder_layers {
        let (to, from) = (format!("model.decoder.layers.{i}"), format!("decoder/layer_{i}"));
        stacked(&mut put, &format!("{to}.self_attn"), &format!("{from}/self_attention/linear_0"), &["q", "k", "v"]);
        linear(&mut put, &format!("{to}.self_attn.out_proj"), &format!("{from}/self_attention/linear_1"));
        norm(&mut put, &format!("{to}.self_attn_layer_norm"), &format!("{from}/self_attention/layer_norm"));
        linear(&mut put, &format!("{to}.encoder_attn.q_proj"), &format!("{from}/attention/linear_0"));
        stacked(&mut put, &format!("{to}.encoder_attn"), &format!("{from}/attention/linear_1"), &["k", "v"]);
        linear(&mut put, &format!("{to}.encoder_attn.out_proj"), &format!("{from}/attention/linear_2"));
        norm(&mut put, &format!("{to}.encoder_attn_layer_norm"), &format!("{from}/attention/layer_norm"));
        linear(&mut put, &format!("{to}.fc1"), &format!("{from}/ffn/linear_0"));
        linear(&mut put, &format!("{to}.fc2"), &format!("{from}/ffn/linear_1"));
        norm(&mut put, &format!("{to}.final_layer_norm"), &format!("{from}/ffn/layer_norm"));
    }
    norm(&mut put, "model.decoder.layer_norm", "decoder/layer_norm");
    // Every name must point at a variable the checkpoint has: a missing one is named here, at
    // load, rather than by the layer that asks for it.
    for source in sources.values() {
        if ct2.variable(&source.name).is_none() {
            return Err(invalid(format!("has no {}", source.name)));
        }
    }
    Ok((sources, config))
}

/// Whisper's language codes in token order (`<|en|>` is the first language token).
pub const LANGUAGES: &[&str] = &[
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi",
    "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml",
    "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs",
    "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am",
    "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
];

#[cfg(test)]
mod tests {
    use candle_core::IndexOp;
    use rand::{Rng, SeedableRng};
    use zoo_runtime::test_support::shared_hub_cache;
    use zoo_runtime::{HubSettings, ModelRef};

    use super::*;

    /// `auto` runs int8 only for a checkpoint stored in int8 on the CPU; the others do as named.
    #[test]
    fn the_compute_type_decides_int8_as_documented() {
        for (compute, stored, cpu, want) in [
            (ComputeType::Auto, true, true, true),
            (ComputeType::Auto, true, false, false),
            (ComputeType::Auto, false, true, false),
            (ComputeType::Int8, false, true, true),
            (ComputeType::Float32, true, true, false),
        ] {
            assert_eq!(compute.int8_for(stored, cpu), want, "{compute:?}, stored int8 {stored}, cpu {cpu}");
        }
    }
    use crate::ct2::tests::write_model_bin;

    /// large-v3's tokenizer, from base's: v3 adds `<|yue|>` after `<|su|>`, which moves every
    /// special token after it up by one (51866 tokens with the timestamps).
    fn v3_tokenizer(base: &std::path::Path) -> serde_json::Value {
        let mut tokenizer: serde_json::Value =
            serde_json::from_slice(&std::fs::read(base.join("tokenizer.json")).unwrap()).unwrap();
        let added = tokenizer["added_tokens"].as_array_mut().unwrap();
        let su = added.iter().position(|t| t["content"] == "<|su|>").expect("<|su|> in base's tokenizer");
        let yue_id = added[su]["id"].as_u64().unwrap() + 1;
        for token in added.iter_mut().filter(|t| t["id"].as_u64().unwrap() >= yue_id) {
            token["id"] = (token["id"].as_u64().unwrap() + 1).into();
        }
        let mut yue = added[su].clone();
        (yue["id"], yue["content"]) = (yue_id.into(), "<|yue|>".into());
        added.insert(su + 1, yue);
        tokenizer
    }

    /// A CTranslate2 `model.bin` in the layout of large-v3-turbo / distil-large-v3 (128 mel bins,
    /// the v3 vocabulary, `decoder_layers` decoder layers, the projection an alias of the
    /// embeddings), with small random weights: d_model 64, 4 heads, 2 encoder layers.
    fn v3_layout_model_bin(decoder_layers: usize, seed: u64) -> Vec<u8> {
        let (d, mels, vocab) = (64u32, 128u32, 51866u32);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut vars: Vec<(String, Vec<u32>, u8, Vec<u8>)> = Vec::new();
        let mut add = |name: String, shape: Vec<u32>, scale: f32, offset: f32, f16: bool| {
            let n: u32 = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0)).collect();
            let bytes = if f16 {
                values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
            } else {
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            vars.push((name, shape, if f16 { 4 } else { 0 }, bytes));
        };
        let w = 1.0 / (d as f32).sqrt();
        let linear = |add: &mut dyn FnMut(String, Vec<u32>, f32, f32, bool), name: &str, out: u32, inp: u32| {
            add(format!("{name}/weight"), vec![out, inp], 1.0 / (inp as f32).sqrt(), 0.0, true);
            add(format!("{name}/bias"), vec![out], 0.1, 0.0, false);
        };
        let norm = |add: &mut dyn FnMut(String, Vec<u32>, f32, f32, bool), name: &str| {
            add(format!("{name}/gamma"), vec![d], 0.1, 1.0, false);
            add(format!("{name}/beta"), vec![d], 0.1, 0.0, false);
        };
        add("encoder/conv1/weight".into(), vec![d, mels, 3], 1.0 / ((3 * mels) as f32).sqrt(), 0.0, true);
        add("encoder/conv1/bias".into(), vec![d], 0.1, 0.0, false);
        add("encoder/conv2/weight".into(), vec![d, d, 3], w / 3f32.sqrt(), 0.0, true);
        add("encoder/conv2/bias".into(), vec![d], 0.1, 0.0, false);
        add("encoder/position_encodings/encodings".into(), vec![1500, d], 0.5, 0.0, false);
        for i in 0..2 {
            let p = format!("encoder/layer_{i}");
            linear(&mut add, &format!("{p}/self_attention/linear_0"), 3 * d, d);
            linear(&mut add, &format!("{p}/self_attention/linear_1"), d, d);
            norm(&mut add, &format!("{p}/self_attention/layer_norm"));
            linear(&mut add, &format!("{p}/ffn/linear_0"), 4 * d, d);
            linear(&mut add, &format!("{p}/ffn/linear_1"), d, 4 * d);
            norm(&mut add, &format!("{p}/ffn/layer_norm"));
        }
        norm(&mut add, "encoder/layer_norm");
        add("decoder/embeddings/weight".into(), vec![vocab, d], 0.5, 0.0, true);
        add("decoder/position_encodings/encodings".into(), vec![448, d], 0.5, 0.0, false);
        for i in 0..decoder_layers {
            let p = format!("decoder/layer_{i}");
            linear(&mut add, &format!("{p}/self_attention/linear_0"), 3 * d, d);
            linear(&mut add, &format!("{p}/self_attention/linear_1"), d, d);
            norm(&mut add, &format!("{p}/self_attention/layer_norm"));
            linear(&mut add, &format!("{p}/attention/linear_0"), d, d);
            linear(&mut add, &format!("{p}/attention/linear_1"), 2 * d, d);
            linear(&mut add, &format!("{p}/attention/linear_2"), d, d);
            norm(&mut add, &format!("{p}/attention/layer_norm"));
            linear(&mut add, &format!("{p}/ffn/linear_0"), 4 * d, d);
            linear(&mut add, &format!("{p}/ffn/linear_1"), d, 4 * d);
            norm(&mut add, &format!("{p}/ffn/layer_norm"));
        }
        norm(&mut add, "decoder/layer_norm");
        vars.push(("encoder/num_heads".into(), vec![], 2, 4i16.to_le_bytes().to_vec()));
        vars.push(("decoder/num_heads".into(), vec![], 2, 4i16.to_le_bytes().to_vec()));
        let borrowed: Vec<(&str, Vec<u32>, u8, Vec<u8>)> =
            vars.iter().map(|(n, s, t, b)| (n.as_str(), s.clone(), *t, b.clone())).collect();
        write_model_bin(&borrowed, &[("decoder/projection/weight", "decoder/embeddings/weight")])
    }

    /// Checkpoints in large-v3-turbo's layout (4 decoder layers) and distil-large-v3's (2) load
    /// through the CTranslate2 path: 128 mel bins, the v3 vocabulary with `<|yue|>`, and the
    /// layer counts read from the file; the CPU encoder and decoder then give what
    /// candle-transformers' Whisper gives on the same weights, and a recording transcribes.
    #[test]
    fn turbo_and_distil_layouts_load_and_run_as_candles_whisper() {
        let Some(cache) = shared_hub_cache("v3 layouts") else { return };
        let base = std::fs::read_dir(cache.join("models--Systran--faster-whisper-base/snapshots"))
            .ok()
            .and_then(|mut entries| entries.next())
            .map(|entry| entry.unwrap().path());
        let Some(base) = base else {
            assert!(std::env::var("CI").is_err(), "faster-whisper-base is missing (test-assets --with-base)");
            eprintln!("SKIPPED v3 layouts: faster-whisper-base is not in the shared hub cache");
            return;
        };
        let tokenizer = v3_tokenizer(&base);
        for (layout, decoder_layers) in [("large-v3-turbo", 4), ("distil-large-v3", 2)] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("model.bin"), v3_layout_model_bin(decoder_layers, 7)).unwrap();
            std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
            std::fs::write(
                dir.path().join("config.json"),
                serde_json::json!({"alignment_heads": [[decoder_layers - 1, 0]], "suppress_ids": [220],
                                   "suppress_ids_begin": [220, 50257]})
                .to_string(),
            )
            .unwrap();
            let model = Model::resolve(
                &ModelRef::parse(&dir.path().display().to_string()).unwrap(),
                &HubSettings::from_env(true),
            );
            let mut whisper = Whisper::load(&model, &Device::Cpu, ComputeType::Float32).unwrap();
            let c = &whisper.config;
            assert_eq!(
                (c.num_mel_bins, c.vocab_size, c.decoder_layers, c.encoder_layers, c.d_model),
                (128, 51866, decoder_layers, 2, 64),
                "{layout}"
            );
            assert!(whisper.multilingual, "{layout}");
            let yue = whisper.tokens.languages.iter().find(|(code, _)| code == "yue").map(|l| l.1);
            assert_eq!(yue, Some(50358), "{layout}: <|yue|> is a language");
            assert_eq!(whisper.tokens.timestamp_begin, 50365, "{layout}: timestamps after v3's specials");

            // The same weights through candle-transformers' Whisper.
            let ct2 = Ct2Model::open(&dir.path().join("model.bin")).unwrap();
            let (tensors, config) = transformers_tensors(&ct2, &Device::Cpu).unwrap();
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
            let mut reference = m::model::Whisper::load(&vb, config).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let window: Vec<f32> = (0..128 * 3000).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            let mel = Tensor::from_vec(window.clone(), (1, 128, 3000), &Device::Cpu).unwrap();
            let want_audio = reference.encoder.forward(&mel, true).unwrap();
            let audio = whisper.encode(window).unwrap();
            let scale = want_audio.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = (&audio - &want_audio).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-4 * scale.max(1.0), "{layout}: encoder differs by {diff} (scale {scale})");

            let t = whisper.tokens.clone();
            let prompt = [t.sot, t.languages[0].1, t.transcribe, t.no_timestamps];
            let mut state = whisper.start(&audio).unwrap();
            let ours = whisper.step(&prompt, &mut state, &[3]).unwrap().remove(0);
            let ids = Tensor::new(&prompt[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let hidden = reference.decoder.forward(&ids, &want_audio, true).unwrap();
            let logits = reference.decoder.final_linear(&hidden.i((.., 3..4, ..)).unwrap()).unwrap();
            let want: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{layout}: logits within {diff:.1e} of candle-transformers' (scale {scale:.1})");
            assert!(diff <= 1e-3 * scale, "{layout}: logits differ by {diff} (scale {scale})");

            // The whole path, 128-bin log-mel included: random weights say nothing, but say it in full.
            let mut runner = crate::SpeechRunner::load(
                &model,
                &zoo_runtime::TaskArgs::new(),
                &zoo_runtime::Context {
                    device: Device::Cpu,
                    hub: HubSettings::from_env(true),
                    progress: false,
                    outputs: Default::default(),
                },
            )
            .unwrap();
            let samples: Vec<f32> = (0..16_000 * 3).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
            let transcript = runner.transcribe_samples(&samples).unwrap();
            assert!(transcript.duration > 2.9, "{layout}: {transcript:?}");
        }
    }
}
