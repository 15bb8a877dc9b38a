//! Whisper's text decoder with key/value caches. candle-transformers' decoder recomputes every
//! earlier token at each step and re-reads the whole vocabulary matrix through a broadcast copy;
//! on a CPU that made decoding ten times slower than the encoder. Here the cross-attention keys and
//! values are computed once per 30 s window and shared by all temperature retries, and each step
//! runs only the new token.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};
use rayon::prelude::*;

/// `y = W x + b` with W kept row-major as read. One decoding step multiplies a single row, where a
/// matrix-vector loop over W's rows beats a general matrix multiply that repacks W on every call.
struct Linear {
    weight: Tensor,
    rows: Vec<f32>,
    bias: Vec<f32>,
    d_in: usize,
}

/// Below this many multiply-adds, splitting a product over threads costs more than it saves.
const PARALLEL_MACS: usize = 1 << 20;

/// A dot product in independent lanes: a plain `.sum()` is one serial chain of adds (floats do not
/// reassociate), which the compiler cannot vectorise.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 32;
    let mut acc = [0f32; LANES];
    let (a_main, a_rest) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_rest) = b.split_at(a_main.len());
    for (ca, cb) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] = ca[i].mul_add(cb[i], acc[i]);
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// [`dot`] with `a` in half precision: the vocabulary projection reads the whole embedding matrix
/// per token, so halving its bytes halves the memory traffic that bounds it. The checkpoints hold
/// these weights in f16 to begin with.
#[inline]
fn dot_f16(a: &[half::f16], b: &[f32]) -> f32 {
    use half::slice::HalfFloatSliceExt;
    const LANES: usize = 32;
    let mut acc = [0f32; LANES];
    let mut wide = [0f32; LANES];
    let main = a.len() - a.len() % LANES;
    for (ca, cb) in a[..main].chunks_exact(LANES).zip(b[..main].chunks_exact(LANES)) {
        ca.convert_to_f32_slice(&mut wide);
        for i in 0..LANES {
            acc[i] = wide[i].mul_add(cb[i], acc[i]);
        }
    }
    let tail: f32 = a[main..].iter().zip(&b[main..]).map(|(x, y)| x.to_f32() * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn matvec(rows: &[f32], d_in: usize, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let dot = |(o, row): (usize, &[f32])| -> f32 { dot(row, x) + bias.map_or(0.0, |b| b[o]) };
    if rows.len() >= PARALLEL_MACS {
        out.par_chunks_mut(256).enumerate().for_each(|(chunk, out)| {
            for (k, y) in out.iter_mut().enumerate() {
                let o = chunk * 256 + k;
                *y = dot((o, &rows[o * d_in..][..d_in]));
            }
        });
    } else {
        for (o, y) in out.iter_mut().enumerate() {
            *y = dot((o, &rows[o * d_in..][..d_in]));
        }
    }
}

impl Linear {
    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let d_in = weight.dim(1)?;
        Ok(Self { rows: weight.flatten_all()?.to_vec1()?, bias: bias.to_vec1()?, weight, d_in })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        if b * n > 1 {
            return x
                .broadcast_matmul(&self.weight.t()?)?
                .broadcast_add(&Tensor::new(self.bias.as_slice(), x.device())?);
        }
        let input = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; self.bias.len()];
        matvec(&self.rows, self.d_in, &input, Some(&self.bias), &mut out);
        Tensor::from_vec(out, (1, 1, self.bias.len()), x.device())
    }
}

struct Attention {
    /// Self-attention: q, k and v in one matrix; cross-attention: q alone.
    query: Linear,
    /// Cross-attention only: k and v in one matrix, applied to the audio once per window.
    key_value: Option<Linear>,
    out: Linear,
    ln: LayerNorm,
}

struct Block {
    self_attn: Attention,
    cross_attn: Attention,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
}

pub struct TextDecoder {
    embeddings: Tensor,
    /// The embedding matrix again as f16 rows: the output projection reads it once per step.
    embedding_rows: Vec<half::f16>,
    positions: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
    n_head: usize,
    d_model: usize,
    pub n_ctx: usize,
}

/// Per-window decoding state: the audio's keys and values for each layer (fixed for the window)
/// and the keys and values of the tokens decoded so far (grow by one per step).
#[derive(Clone)]
pub struct DecoderState {
    cross: Vec<(Tensor, Tensor)>,
    past: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl DecoderState {
    /// The same audio, no tokens yet: for a retry of the window.
    pub fn restart(&self) -> Self {
        Self { cross: self.cross.clone(), past: vec![None; self.past.len()], len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn linear(vb: &VarBuilder, names: &[&str], with_bias: &[bool], d_in: usize, d_out: usize) -> Result<Linear> {
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for (name, &has_bias) in names.iter().zip(with_bias) {
        weights.push(vb.get((d_out, d_in), &format!("{name}.weight"))?);
        biases.push(if has_bias {
            vb.get(d_out, &format!("{name}.bias"))?
        } else {
            Tensor::zeros(d_out, DType::F32, vb.device())?
        });
    }
    Linear::new(Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?)
}

fn layer_norm(vb: &VarBuilder, name: &str, d: usize) -> Result<LayerNorm> {
    Ok(LayerNorm::new(vb.get(d, &format!("{name}.weight"))?, vb.get(d, &format!("{name}.bias"))?, 1e-5))
}

impl TextDecoder {
    /// Reads `model.decoder.*` in Transformers' names (what zoo maps CTranslate2 weights to).
    pub fn load(vb: &VarBuilder, cfg: &candle_transformers::models::whisper::Config) -> Result<Self> {
        let vb = vb.pp("model.decoder");
        let d = cfg.d_model;
        let blocks = (0..cfg.decoder_layers)
            .map(|i| {
                let p = |s: &str| format!("layers.{i}.{s}");
                Ok(Block {
                    self_attn: Attention {
                        query: linear(
                            &vb,
                            &[&p("self_attn.q_proj"), &p("self_attn.k_proj"), &p("self_attn.v_proj")],
                            &[true, false, true],
                            d,
                            d,
                        )?,
                        key_value: None,
                        out: linear(&vb, &[&p("self_attn.out_proj")], &[true], d, d)?,
                        ln: layer_norm(&vb, &p("self_attn_layer_norm"), d)?,
                    },
                    cross_attn: Attention {
                        query: linear(&vb, &[&p("encoder_attn.q_proj")], &[true], d, d)?,
                        key_value: Some(linear(
                            &vb,
                            &[&p("encoder_attn.k_proj"), &p("encoder_attn.v_proj")],
                            &[false, true],
                            d,
                            d,
                        )?),
                        out: linear(&vb, &[&p("encoder_attn.out_proj")], &[true], d, d)?,
                        ln: layer_norm(&vb, &p("encoder_attn_layer_norm"), d)?,
                    },
                    fc1: linear(&vb, &[&p("fc1")], &[true], d, 4 * d)?,
                    fc2: linear(&vb, &[&p("fc2")], &[true], 4 * d, d)?,
                    mlp_ln: layer_norm(&vb, &p("final_layer_norm"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embeddings = vb.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        Ok(Self {
            embedding_rows: embeddings.flatten_all()?.to_dtype(DType::F16)?.to_vec1()?,
            embeddings,
            positions: vb.get((cfg.max_target_positions, d), "embed_positions.weight")?,
            blocks,
            ln: layer_norm(&vb, "layer_norm", d)?,
            n_head: cfg.decoder_attention_heads,
            d_model: d,
            n_ctx: cfg.max_target_positions,
        })
    }

    /// Heads split out: (1, n, d) -> (1, heads, n, d/heads).
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        x.reshape((b, n, self.n_head, self.d_model / self.n_head))?.transpose(1, 2)?.contiguous()
    }

    /// Starts a window: the cross-attention keys and values of `audio` (1, frames, d).
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let cross = self
            .blocks
            .iter()
            .map(|b| {
                let kv = b.cross_attn.key_value.as_ref().expect("cross-attention has keys").forward(audio)?;
                let k = self.heads(&kv.narrow(D::Minus1, 0, self.d_model)?)?;
                let v = self.heads(&kv.narrow(D::Minus1, self.d_model, self.d_model)?)?;
                Ok((k.transpose(2, 3)?.contiguous()?, v))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderState { cross, past: vec![None; self.blocks.len()], len: 0 })
    }

    fn attend(&self, q: &Tensor, k_t: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let scale = 1.0 / ((self.d_model / self.n_head) as f64).sqrt();
        let mut w = (q.matmul(k_t)? * scale)?;
        if let Some(mask) = mask {
            w = w.broadcast_add(mask)?;
        }
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        let (b, _, n, _) = q.dims4()?;
        w.matmul(v)?.transpose(1, 2)?.reshape((b, n, self.d_model))
    }

    /// Feeds `tokens` after those already in `state`; returns their final hidden states (n, d).
    pub fn forward(&self, tokens: &[u32], state: &mut DecoderState) -> Result<Tensor> {
        let n = tokens.len();
        let offset = state.len;
        if offset + n > self.n_ctx {
            candle_core::bail!("the decoder holds at most {} tokens", self.n_ctx);
        }
        let device = self.embeddings.device();
        let ids = Tensor::new(tokens, device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?.add(&self.positions.narrow(0, offset, n)?)?.unsqueeze(0)?;
        // New tokens see all earlier ones and themselves, not later ones.
        let mask = (n > 1).then(|| causal_mask(n, offset, device)).transpose()?;
        for (block, (cross, past)) in self.blocks.iter().zip(state.cross.iter().zip(state.past.iter_mut())) {
            let a = &block.self_attn;
            let qkv = a.query.forward(&a.ln.forward(&x)?)?;
            let q = self.heads(&qkv.narrow(D::Minus1, 0, self.d_model)?)?;
            let k = self.heads(&qkv.narrow(D::Minus1, self.d_model, self.d_model)?)?;
            let v = self.heads(&qkv.narrow(D::Minus1, 2 * self.d_model, self.d_model)?)?;
            let (k, v) = match past.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            let attended = self.attend(&q, &k.transpose(2, 3)?, &v, mask.as_ref())?;
            *past = Some((k, v));
            x = (x + a.out.forward(&attended)?)?;

            let c = &block.cross_attn;
            let q = self.heads(&c.query.forward(&c.ln.forward(&x)?)?)?;
            let attended = self.attend(&q, &cross.0, &cross.1, None)?;
            x = (x + c.out.forward(&attended)?)?;

            let h = block.fc1.forward(&block.mlp_ln.forward(&x)?)?.gelu_erf()?;
            x = (x + block.fc2.forward(&h)?)?;
        }
        state.len += n;
        self.ln.forward(&x)?.squeeze(0)
    }

    /// Next-token logits for one hidden state (1, d).
    pub fn logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let h = hidden.flatten_all()?.to_vec1::<f32>()?;
        let d = self.d_model;
        let mut out = vec![0f32; self.embedding_rows.len() / d];
        out.par_chunks_mut(1024).enumerate().for_each(|(chunk, out)| {
            for (k, y) in out.iter_mut().enumerate() {
                *y = dot_f16(&self.embedding_rows[(chunk * 1024 + k) * d..][..d], &h);
            }
        });
        Ok(out)
    }
}

fn causal_mask(n: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let total = offset + n;
    let mask: Vec<f32> =
        (0..n).flat_map(|i| (0..total).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (n, total), device)
}
