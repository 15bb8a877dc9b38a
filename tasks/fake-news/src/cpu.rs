//! BERT's encoder on the CPU over plain buffers, the same network as candle-transformers'
//! `BertModel` (which stays the reference, and the path for other devices).
//!
//! Why: candle runs each of a layer's ~20 ops as its own pass with its own thread hand-off, pads
//! every window of a batch to the longest, repacks each transposed weight on every matmul and
//! computes GELU's erf and softmax's exp with scalar libm calls. For a tweet (~50 tokens) that
//! overhead is most of the time. Here the windows' real tokens are concatenated into one matrix
//! with no padding at all (dense layers act on each token alone; attention is computed per window
//! over its own tokens, which is what the padding mask does), weights are packed once at load
//! ([`Linear`]), and each layer is five parallel passes.

use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;
use zoo_runtime::cpu;

use crate::kernels::{self, Act, Linear, Panels, Shared, MICRO, PANEL};

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize) -> candle_core::Result<Self> {
        Ok(Norm { gamma: vb.get(size, "weight")?.to_vec1()?, beta: vb.get(size, "bias")?.to_vec1()? })
    }
}

struct Layer {
    /// Query, key and value in one product: (3 hidden, hidden).
    qkv: Linear,
    output: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    output_norm: Norm,
}

pub struct CpuBert {
    hidden: usize,
    heads: usize,
    eps: f32,
    act: Act,
    vocab: usize,
    max_positions: usize,
    /// (vocab, hidden)
    word: Vec<f32>,
    /// (max_positions, hidden)
    position: Vec<f32>,
    /// Token type 0's row: every input here is a single segment.
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

fn linear(vb: VarBuilder, cout: usize, cin: usize) -> candle_core::Result<Linear> {
    Linear::from_tensors(&vb.get((cout, cin), "weight")?, &vb.get(cout, "bias")?)
}

impl CpuBert {
    /// `vb` holds `embeddings.*` and `encoder.*` under BertModel's names.
    pub fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let (h, inter) = (config.hidden_size, config.intermediate_size);
        if config.num_attention_heads == 0 || h % config.num_attention_heads != 0 {
            candle_core::bail!("hidden size {h} is not a multiple of {} heads", config.num_attention_heads)
        }
        let emb = vb.pp("embeddings");
        let table = |name: &str, rows: usize| -> candle_core::Result<Vec<f32>> {
            emb.get((rows, h), &format!("{name}.weight"))?.flatten_all()?.to_vec1()
        };
        let mut token_type = table("token_type_embeddings", config.type_vocab_size)?;
        token_type.truncate(h);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layer.{i}"));
                let attn = vb.pp("attention.self");
                let part = |name: &str| -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
                    Ok((attn.get((h, h), &format!("{name}.weight"))?, attn.get(h, &format!("{name}.bias"))?))
                };
                let (q, k, v) = (part("query")?, part("key")?, part("value")?);
                let qkv = Linear::from_tensors(
                    &candle_core::Tensor::cat(&[&q.0, &k.0, &v.0], 0)?,
                    &candle_core::Tensor::cat(&[&q.1, &k.1, &v.1], 0)?,
                )?;
                Ok(Layer {
                    qkv,
                    output: linear(vb.pp("attention.output.dense"), h, h)?,
                    attention_norm: Norm::load(vb.pp("attention.output.LayerNorm"), h)?,
                    up: linear(vb.pp("intermediate.dense"), inter, h)?,
                    down: linear(vb.pp("output.dense"), h, inter)?,
                    output_norm: Norm::load(vb.pp("output.LayerNorm"), h)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(CpuBert {
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            act: match config.hidden_act {
                HiddenAct::Gelu => Act::Gelu,
                HiddenAct::GeluApproximate => Act::GeluTanh,
                HiddenAct::Relu => Act::Relu,
            },
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            word: table("word_embeddings", config.vocab_size)?,
            position: table("position_embeddings", config.max_position_embeddings)?,
            token_type,
            embedding_norm: Norm::load(emb.pp("LayerNorm"), h)?,
            layers,
        })
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The last hidden state of every real token: (tokens, hidden), the windows one after another.
    pub fn forward(&self, windows: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        self.forward_through(windows, self.layers.len())
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The hidden state of every real token after the first `layers` layers (0: the embeddings).
    pub fn forward_through(&self, windows: &[&[u32]], layers: usize) -> candle_core::Result<Vec<f32>> {
        if layers > self.layers.len() {
            candle_core::bail!("the encoder has {} layers, not {layers}", self.layers.len())
        }
        for w in windows {
            if w.is_empty() || w.len() > self.max_positions {
                candle_core::bail!("a window of {} tokens (the model takes 1 to {})", w.len(), self.max_positions)
            }
            if let Some(id) = w.iter().find(|&&id| id as usize >= self.vocab) {
                candle_core::bail!("token id {id} is outside the vocabulary of {}", self.vocab)
            }
        }
        // Run from a pool thread: the parallel passes then share work by stealing, instead of each
        // one queueing into the pool and putting the calling thread to sleep until it is done.
        Ok(rayon::scope(|_| self.encode(windows, layers)))
    }

    /// Continues from hidden states after the first `from` layers (windows of `lengths` tokens one
    /// after another, as [`CpuBert::forward_through`] gives them) through the remaining layers.
    pub fn forward_from(&self, mut states: Vec<f32>, lengths: &[usize], from: usize) -> candle_core::Result<Vec<f32>> {
        if from > self.layers.len() || states.len() != lengths.iter().sum::<usize>() * self.hidden {
            candle_core::bail!("hidden states that do not fit {} windows after layer {from}", lengths.len())
        }
        let spans = spans(lengths.iter().copied());
        rayon::scope(|_| self.run_layers(&mut states, &spans, from..self.layers.len()));
        Ok(states)
    }

    fn encode(&self, windows: &[&[u32]], layers: usize) -> Vec<f32> {
        let h = self.hidden;
        let spans = spans(windows.iter().map(|w| w.len()));
        let tokens: Vec<(u32, usize)> =
            windows.iter().flat_map(|w| w.iter().enumerate().map(|(pos, &id)| (id, pos))).collect();
        let rows = tokens.len();
        let mut x = vec![0f32; rows * h];
        x.par_chunks_mut(h).zip(&tokens).with_min_len(64).for_each(|(row, &(id, pos))| {
            let word = &self.word[id as usize * h..][..h];
            let position = &self.position[pos * h..][..h];
            for (((v, w), t), p) in row.iter_mut().zip(word).zip(&self.token_type).zip(position) {
                *v = (w + t) + p;
            }
            cpu::layer_norm(row, &self.embedding_norm.gamma, &self.embedding_norm.beta, self.eps);
        });
        self.run_layers(&mut x, &spans, 0..layers);
        x
    }

    fn run_layers(&self, x: &mut [f32], spans: &[(usize, usize)], layers: std::ops::Range<usize>) {
        let (h, rows) = (self.hidden, x.len() / self.hidden);
        let inter = self.layers.first().map_or(0, |l| l.up.cout);
        let mut qkv = vec![0f32; rows * 3 * h];
        let mut context = vec![0f32; rows * h];
        let mut projected = vec![0f32; rows * h];
        let mut intermediate = vec![0f32; rows * inter];
        for layer in &self.layers[layers] {
            layer.qkv.forward(x, rows, &mut qkv, Act::None);
            self.attention(&qkv, spans, &mut context);
            layer.output.forward(&context, rows, &mut projected, Act::None);
            self.add_norm(x, &projected, &layer.attention_norm);
            layer.up.forward(x, rows, &mut intermediate, self.act);
            layer.down.forward(&intermediate, rows, &mut projected, Act::None);
            self.add_norm(x, &projected, &layer.output_norm);
        }
    }

    /// x = LayerNorm(x + y), row by row.
    fn add_norm(&self, x: &mut [f32], y: &[f32], norm: &Norm) {
        let h = self.hidden;
        x.par_chunks_mut(h).zip(y.par_chunks(h)).with_min_len(64).for_each(|(x, y)| {
            x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
            cpu::layer_norm(x, &norm.gamma, &norm.beta, self.eps);
        });
    }

    /// Scaled dot-product attention of each window's tokens over its own tokens, one task per
    /// window and head; `qkv` rows are [query | key | value], heads side by side in each.
    fn attention(&self, qkv: &[f32], spans: &[(usize, usize)], context: &mut [f32]) {
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let out = Shared::new(context);
        (0..spans.len() * heads).into_par_iter().for_each(|task| {
            let (span, head) = (spans[task / heads], task % heads);
            attend(qkv, h, d, span, head, scale, out);
        });
    }
}

/// Each window's (first row, rows) when windows of these lengths lie one after another.
fn spans(lengths: impl Iterator<Item = usize>) -> Vec<(usize, usize)> {
    lengths
        .scan(0, |start, len| {
            let span = (*start, len);
            *start += len;
            Some(span)
        })
        .collect()
}

/// One head of attention for one window's `(start, len)` rows of `qkv`, into `out`'s rows. Both
/// products go through the dense layers' register blocks: the scaled keys and the values are
/// packed as [`Panels`] (small: len x head size), and MICRO queries at a time are scored against
/// every key, softmaxed, and multiplied by the values.
#[inline(never)]
fn attend(qkv: &[f32], h: usize, d: usize, (start, len): (usize, usize), head: usize, scale: f32, out: Shared) {
    let stride = 3 * h;
    let base = start * stride + head * d;
    let keys = Panels::new(d, len, |i, t| qkv[base + t * stride + h + i] * scale);
    let values = Panels::new(len, d, |t, i| qkv[base + t * stride + 2 * h + i]);
    let padded = keys.count() * PANEL;
    let mut block = [[0f32; PANEL]; MICRO];
    let mut scores = vec![0f32; MICRO * padded];
    for first in (0..len).step_by(MICRO) {
        let m = MICRO.min(len - first);
        let queries = &qkv[base + first * stride..];
        for p in 0..keys.count() {
            block[..m].iter_mut().for_each(|row| row.fill(0.0));
            keys.accumulate(p, 0..d, queries, stride, &mut block[..m]);
            for (i, row) in block[..m].iter().enumerate() {
                kernels::store(&mut scores[i * padded + p * PANEL..][..PANEL], row);
            }
        }
        for row in scores.chunks_exact_mut(padded).take(m) {
            cpu::softmax(&mut row[..len]);
        }
        for p in 0..values.count() {
            block[..m].iter_mut().for_each(|row| row.fill(0.0));
            values.accumulate(p, 0..len, &scores, padded, &mut block[..m]);
            let cols = values.columns(p);
            for (i, row) in block[..m].iter().enumerate() {
                // SAFETY: the task for (window, head) alone writes this head's columns of the
                // window's rows.
                kernels::store(unsafe { out.slice((start + first + i) * h + head * d + p * PANEL, cols) }, row);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::bert::BertModel;

    use super::*;
    use crate::windows::pad_batch;

    pub(crate) fn config(act: &str) -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 150, "hidden_act": act, "hidden_dropout_prob": 0.0,
            "max_position_embeddings": 70, "type_vocab_size": 2, "initializer_range": 0.02,
            "layer_norm_eps": 1e-12, "pad_token_id": 0
        }))
        .unwrap()
    }

    /// Random weights under BertModel's names, through which both implementations load.
    fn weights(config: &Config) -> VarBuilder<'static> {
        VarBuilder::from_tensors(random_tensors(config), DType::F32, &Device::Cpu)
    }

    pub(crate) fn random_tensors(config: &Config) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut t = HashMap::new();
        let mut add = |name: String, shape: &[usize], std: f32, mean: f32| {
            t.insert(name, Tensor::randn(mean, std, shape, &dev).unwrap());
        };
        add("embeddings.word_embeddings.weight".into(), &[config.vocab_size, h], 0.5, 0.0);
        add("embeddings.position_embeddings.weight".into(), &[config.max_position_embeddings, h], 0.5, 0.0);
        add("embeddings.token_type_embeddings.weight".into(), &[config.type_vocab_size, h], 0.5, 0.0);
        add("embeddings.LayerNorm.weight".into(), &[h], 0.1, 1.0);
        add("embeddings.LayerNorm.bias".into(), &[h], 0.1, 0.0);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                add(format!("{p}.{name}.weight"), &[out, inp], 1.0 / (inp as f32).sqrt(), 0.0);
                add(format!("{p}.{name}.bias"), &[out], 0.1, 0.0);
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                add(format!("{p}.{name}.weight"), &[h], 0.1, 1.0);
                add(format!("{p}.{name}.bias"), &[h], 0.1, 0.0);
            }
        }
        t
    }

    /// candle's BertModel is the reference: the same hidden states for every real token of a padded
    /// batch (windows of 1 to the longest position, more rows than one parallel block), for each
    /// activation.
    #[test]
    fn matches_candles_bert_on_a_padded_batch() {
        for act in ["gelu", "geluapproximate", "relu"] {
            let config = config(act);
            let vb = weights(&config);
            let reference = BertModel::load(vb.clone(), &config).unwrap();
            let fast = CpuBert::load(vb, &config).unwrap();
            let windows: Vec<Vec<u32>> =
                [1usize, 9, 70, 23].iter().map(|&n| (0..n).map(|i| ((i * 7 + n) % 50) as u32).collect()).collect();
            let refs: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
            let (ids, mask) = pad_batch(&refs, 0, &Device::Cpu).unwrap();
            let want: Vec<Vec<Vec<f32>>> =
                reference.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap().to_vec3().unwrap();
            let got = fast.forward(&refs).unwrap();
            let mut rows = got.chunks_exact(config.hidden_size);
            let mut worst = 0f32;
            for (w, window) in windows.iter().enumerate() {
                // `want` first: zip stops on it without drawing one more row of `got`.
                for (want, g) in want[w][..window.len()].iter().zip(rows.by_ref()) {
                    worst = g.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
                }
            }
            let tokens: usize = windows.iter().map(Vec::len).sum();
            assert_eq!(tokens * config.hidden_size, got.len());
            assert!(worst < 1e-4, "{act}: max difference {worst}");
        }
    }

    #[test]
    fn refuses_windows_the_model_cannot_take() {
        let config = config("gelu");
        let bert = CpuBert::load(weights(&config), &config).unwrap();
        assert!(bert.forward(&[&[]]).is_err());
        assert!(bert.forward(&[&[50]]).is_err());
        assert!(bert.forward(&[&[1; 71]]).is_err());
    }
}
