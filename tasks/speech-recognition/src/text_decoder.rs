//! Whisper's text decoder with key/value caches, in plain loops on the CPU. candle-transformers'
//! decoder recomputes every earlier token at each step; and even with caches, a step through
//! candle's ops cost ~5 ms of per-op overhead for ~13 M multiply-adds. Here the cross-attention
//! keys and values are computed once per 30 s window (shared by all temperature retries), each step
//! runs only the new token, and the vocabulary projection reads f16 rows (the checkpoints' own
//! precision) to halve the memory traffic that bounds it.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use zoo_runtime::cpu;

use crate::kernels::{dot, dot4, dot_f16, gelu_in_place, vec_of, Dense, LayerNorm};

struct Layer {
    self_ln: LayerNorm,
    /// q, k and v in one matrix.
    self_qkv: Dense,
    self_out: Dense,
    cross_ln: LayerNorm,
    cross_q: Dense,
    /// k and v in one matrix, applied to the audio once per window.
    cross_kv: Dense,
    cross_out: Dense,
    mlp_ln: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

pub struct TextDecoder {
    /// The token embeddings, also the output projection, in f16: CTranslate2 checkpoints store
    /// them so; an f32 checkpoint's are rounded to f16 at load.
    embeddings_f16: Vec<half::f16>,
    positions: Vec<f32>,
    layers: Vec<Layer>,
    ln: LayerNorm,
    heads: usize,
    d: usize,
    pub n_ctx: usize,
    vocab: usize,
}

/// What a layer's attention reads: the tokens decoded so far (their keys and values are in the
/// caches) or the window's audio.
#[derive(Clone, Copy)]
enum Attention {
    Tokens,
    Audio,
}

/// Keys and values, one row of `d` per position (all heads side by side). The audio's keys are
/// kept transposed per head instead (`heads x dh x frames`, `k` empty), so that a query's scores
/// over 1500 frames are one contiguous multiply-add per key dimension instead of 1500 short dot
/// products.
#[derive(Clone, Default)]
struct Cache {
    k: Vec<f32>,
    v: Vec<f32>,
    k_by_head: Vec<f32>,
}

/// Per-window decoding state: the audio's keys and values for each layer (fixed for the window)
/// and the keys and values of the tokens decoded so far.
#[derive(Clone)]
pub struct DecoderState {
    cross: Arc<Vec<Cache>>,
    audio_len: usize,
    past: Vec<Cache>,
    len: usize,
}

impl DecoderState {
    /// The same audio, no tokens yet: for a retry of the window.
    pub fn restart(&self) -> Self {
        Self {
            cross: self.cross.clone(),
            audio_len: self.audio_len,
            past: vec![Cache::default(); self.past.len()],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Audio positions (encoder frames) the window holds.
    pub fn audio_frames(&self) -> usize {
        self.audio_len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl TextDecoder {
    /// Reads `model.decoder.*` in Transformers' names (what zoo maps CTranslate2 weights to); with
    /// `int8`, every layer's projections as int8 ([`Dense::quantize`]), while the embeddings (also
    /// the output projection) stay in f16.
    pub fn load(vb: &VarBuilder, cfg: &candle_transformers::models::whisper::Config, int8: bool) -> Result<Self> {
        let vb = vb.pp("model.decoder");
        let d = cfg.d_model;
        let get = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<(Tensor, Tensor)> {
            let w = vb.get((d_out, d_in), &format!("{name}.weight"))?;
            let b = if bias {
                vb.get(d_out, &format!("{name}.bias"))?
            } else {
                Tensor::zeros(d_out, DType::F32, w.device())?
            };
            Ok((w, b))
        };
        let dense = |parts: &[(Tensor, Tensor)]| {
            let (w, b): (Vec<Tensor>, Vec<Tensor>) = parts.iter().cloned().unzip();
            Dense::from_linears(&w, &b).map(|dense| dense.quantized_if(int8))
        };
        // Asked for in f16: the largest table of the model (40 MB in f16 for tiny, 133 MB for
        // large), read as the checkpoint stores it rather than widened to f32 and narrowed again,
        // which held it three times over at the peak of loading. Read first, while little else of
        // the checkpoint has been paged in.
        let embeddings_f16 = vb
            .get_with_hints_dtype((cfg.vocab_size, d), "embed_tokens.weight", Default::default(), DType::F16)?
            .flatten_all()?
            .to_vec1()?;
        let layers = (0..cfg.decoder_layers)
            .map(|i| {
                let p = |s: &str| format!("layers.{i}.{s}");
                Ok(Layer {
                    self_ln: LayerNorm::load(&vb, &p("self_attn_layer_norm"), d)?,
                    self_qkv: dense(&[
                        get(&p("self_attn.q_proj"), d, d, true)?,
                        get(&p("self_attn.k_proj"), d, d, false)?,
                        get(&p("self_attn.v_proj"), d, d, true)?,
                    ])?,
                    self_out: dense(&[get(&p("self_attn.out_proj"), d, d, true)?])?,
                    cross_ln: LayerNorm::load(&vb, &p("encoder_attn_layer_norm"), d)?,
                    cross_q: dense(&[get(&p("encoder_attn.q_proj"), d, d, true)?])?,
                    cross_kv: dense(&[
                        get(&p("encoder_attn.k_proj"), d, d, false)?,
                        get(&p("encoder_attn.v_proj"), d, d, true)?,
                    ])?,
                    cross_out: dense(&[get(&p("encoder_attn.out_proj"), d, d, true)?])?,
                    mlp_ln: LayerNorm::load(&vb, &p("final_layer_norm"), d)?,
                    fc1: dense(&[get(&p("fc1"), d, 4 * d, true)?])?,
                    fc2: dense(&[get(&p("fc2"), 4 * d, d, true)?])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings_f16,
            positions: vec_of(&vb.get((cfg.max_target_positions, d), "embed_positions.weight")?)?,
            layers,
            ln: LayerNorm::load(&vb, "layer_norm", d)?,
            heads: cfg.decoder_attention_heads,
            d,
            n_ctx: cfg.max_target_positions,
            vocab: cfg.vocab_size,
        })
    }

    /// Starts a window: the cross-attention keys and values of `audio` (1, frames, d).
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let rows = audio.dim(1)?;
        let audio = vec_of(audio)?;
        let d = self.d;
        let cross = self
            .layers
            .iter()
            .map(|layer| {
                let kv = layer.cross_kv.forward(&audio, rows);
                // The audio's keys are read by head only, so they are kept that way alone.
                let mut cache =
                    Cache { k: Vec::new(), v: Vec::with_capacity(rows * d), k_by_head: vec![0f32; rows * d] };
                for (j, row) in kv.chunks_exact(2 * d).enumerate() {
                    cache.v.extend_from_slice(&row[d..]);
                    // Column c = h * dh + kk of k goes to k_by_head[(h * dh + kk) * rows + j].
                    for (c, &value) in row[..d].iter().enumerate() {
                        cache.k_by_head[c * rows + j] = value;
                    }
                }
                cache
            })
            .collect();
        Ok(DecoderState {
            cross: Arc::new(cross),
            audio_len: rows,
            past: vec![Cache::default(); self.layers.len()],
            len: 0,
        })
    }

    /// A token's input row: its embedding (widened from the f16 table the logits read too) plus
    /// the position's.
    fn embed(&self, token: u32, position: usize, row: &mut [f32]) -> Result<()> {
        use half::slice::HalfFloatSliceExt;
        if token as usize >= self.vocab {
            candle_core::bail!("token {token} is outside the vocabulary");
        }
        let d = self.d;
        self.embeddings_f16[token as usize * d..][..d].convert_to_f32_slice(&mut row[..d]);
        row.iter_mut().zip(&self.positions[position * d..][..d]).for_each(|(x, p)| *x += p);
        Ok(())
    }

    /// Attention of `n` query rows over `keys` rows of `cache`; with `causal_offset`, query `i`
    /// sees keys `0..=offset + i` only. Writes `n x d` into `out`.
    /// Returns the attention weights (n x keys) of the heads in `keep`, for word timing.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &[f32],
        n: usize,
        cache: &Cache,
        keys: usize,
        causal_offset: Option<usize>,
        out: &mut [f32],
        keep: &[usize],
    ) -> Vec<(usize, Vec<f32>)> {
        let (d, heads) = (self.d, self.heads);
        let dh = d / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let one = |i: usize, h: usize, out: &mut [f32]| {
            let limit = causal_offset.map_or(keys, |offset| (offset + i + 1).min(keys));
            let query = &q[i * d + h * dh..][..dh];
            let mut weights: Vec<f32> = if cache.k_by_head.is_empty() {
                (0..limit).map(|j| dot(query, &cache.k[j * d + h * dh..][..dh]) * scale).collect()
            } else {
                // Four key dimensions per pass over the scores: a quarter of the loads and stores
                // of the scores, which bound this loop (the keys stream from memory either way).
                let mut scores = vec![0f32; limit];
                let column = |kk: usize| &cache.k_by_head[(h * dh + kk) * keys..][..limit];
                let quads = dh / 4;
                for quad in 0..quads {
                    let kk = 4 * quad;
                    let [a, b, c, e] = [0, 1, 2, 3].map(|t| query[kk + t] * scale);
                    let columns = column(kk).iter().zip(column(kk + 1)).zip(column(kk + 2)).zip(column(kk + 3));
                    for (s, (((k0, k1), k2), k3)) in scores.iter_mut().zip(columns) {
                        *s = a.mul_add(*k0, b.mul_add(*k1, c.mul_add(*k2, e.mul_add(*k3, *s))));
                    }
                }
                for (kk, &qk) in query.iter().enumerate().skip(4 * quads) {
                    let qk = qk * scale;
                    for (s, k) in scores.iter_mut().zip(column(kk)) {
                        *s = qk.mul_add(*k, *s);
                    }
                }
                scores
            };
            cpu::softmax(&mut weights);
            weighted_values(&weights, &cache.v, d, h * dh, out);
            keep.contains(&h).then_some(weights)
        };
        // Cross-attention reads 1500 keys per head: worth the threads; a few cached tokens are not.
        let kept: Vec<Option<Vec<f32>>> = if n * keys * d >= 1 << 18 {
            out[..n * d]
                .par_chunks_mut(dh)
                .enumerate()
                .map(|(task, out)| one(task / heads, task % heads, out))
                .collect()
        } else {
            out[..n * d].chunks_mut(dh).enumerate().map(|(task, out)| one(task / heads, task % heads, out)).collect()
        };
        // Task i * heads + h holds row i of head h: stack each kept head's rows.
        keep.iter()
            .map(|&h| {
                let rows = (0..n).flat_map(|i| kept[i * heads + h].clone().unwrap_or_default()).collect();
                (h, rows)
            })
            .collect()
    }

    /// One pre-norm decoder layer over the rows of `x`, with `normed` and `attended` as scratch of
    /// the same size. `attend` is called twice: with [`Attention::Tokens`] and the rows' fused q,
    /// k and v (rows of `3 d`), it keeps the keys and values in the rows' caches and writes the
    /// attention over the tokens so far into its last argument; with [`Attention::Audio`] and the
    /// rows' queries (rows of `d`), the attention over the audio.
    fn layer_step(
        &self,
        layer: &Layer,
        (x, normed, attended): (&mut [f32], &mut [f32], &mut [f32]),
        mut attend: impl FnMut(Attention, &[f32], &mut [f32]),
    ) {
        let n = x.len() / self.d;
        layer.self_ln.apply(x, normed);
        attend(Attention::Tokens, &layer.self_qkv.forward(normed, n), attended);
        add(x, &layer.self_out.forward(attended, n));

        layer.cross_ln.apply(x, normed);
        attend(Attention::Audio, &layer.cross_q.forward(normed, n), attended);
        add(x, &layer.cross_out.forward(attended, n));

        layer.mlp_ln.apply(x, normed);
        let mut hidden = layer.fc1.forward(normed, n);
        gelu_in_place(&mut hidden);
        add(x, &layer.fc2.forward(&hidden, n));
    }

    /// Feeds `tokens` after those already in `state`; returns their final hidden states (n x d).
    pub fn forward(&self, tokens: &[u32], state: &mut DecoderState) -> Result<Vec<f32>> {
        Ok(self.forward_watching(tokens, state, &[])?.0)
    }

    /// [`TextDecoder::forward`], also returning the cross-attention weights (n x audio frames) of
    /// the (layer, head) pairs in `watch`, in that order.
    pub fn forward_watching(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
        watch: &[(usize, usize)],
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let (n, d) = (tokens.len(), self.d);
        let offset = state.len;
        if offset + n > self.n_ctx {
            candle_core::bail!("the decoder holds at most {} tokens", self.n_ctx);
        }
        let mut x = vec![0f32; n * d];
        for (i, (&token, row)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            self.embed(token, offset + i, row)?;
        }
        let (mut normed, mut attended) = (vec![0f32; n * d], vec![0f32; n * d]);
        let mut watched: Vec<((usize, usize), Vec<f32>)> = Vec::new();
        for (index, (layer, (cross, past))) in
            self.layers.iter().zip(state.cross.iter().zip(state.past.iter_mut())).enumerate()
        {
            let keep: Vec<usize> = watch.iter().filter(|w| w.0 == index).map(|w| w.1).collect();
            self.layer_step(
                layer,
                (&mut x, &mut normed, &mut attended),
                |attention, input, attended| match attention {
                    Attention::Tokens => {
                        let mut q = Vec::with_capacity(n * d);
                        for row in input.chunks_exact(3 * d) {
                            q.extend_from_slice(&row[..d]);
                            past.k.extend_from_slice(&row[d..2 * d]);
                            past.v.extend_from_slice(&row[2 * d..]);
                        }
                        self.attend(&q, n, past, offset + n, Some(offset), attended, &[]);
                    }
                    Attention::Audio => {
                        for (h, weights) in self.attend(input, n, cross, state.audio_len, None, attended, &keep) {
                            watched.push(((index, h), weights));
                        }
                    }
                },
            );
        }
        state.len += n;
        self.ln.apply(&x, &mut normed);
        let weights = watch
            .iter()
            .map(|w| watched.iter().find(|(at, _)| at == w).map(|(_, v)| v.clone()).unwrap_or_default())
            .collect();
        Ok((normed, weights))
    }

    /// One new token for each of several windows at once (`tokens[i]` follows what `states[i]`
    /// holds); returns their final hidden states (rows x d). A single token's step reads every
    /// weight to do little with it; here the dense layers read them once for all rows, and the
    /// attention runs per row against its own window's caches.
    pub fn forward_batch(&self, tokens: &[u32], states: &mut [DecoderState]) -> Result<Vec<f32>> {
        let (n, d) = (tokens.len(), self.d);
        if n != states.len() {
            candle_core::bail!("{n} tokens for {} windows", states.len());
        }
        let mut x = vec![0f32; n * d];
        for ((&token, row), state) in tokens.iter().zip(x.chunks_exact_mut(d)).zip(states.iter()) {
            if state.len >= self.n_ctx {
                candle_core::bail!("the decoder holds at most {} tokens", self.n_ctx);
            }
            self.embed(token, state.len, row)?;
        }
        let (mut normed, mut attended) = (vec![0f32; n * d], vec![0f32; n * d]);
        for (index, layer) in self.layers.iter().enumerate() {
            self.layer_step(layer, (&mut x, &mut normed, &mut attended), |attention, input, attended| {
                let mut queries = Vec::new();
                let q = match attention {
                    Attention::Tokens => {
                        queries.reserve(n * d);
                        for (row, state) in input.chunks_exact(3 * d).zip(states.iter_mut()) {
                            queries.extend_from_slice(&row[..d]);
                            state.past[index].k.extend_from_slice(&row[d..2 * d]);
                            state.past[index].v.extend_from_slice(&row[2 * d..]);
                        }
                        &queries[..]
                    }
                    Attention::Audio => input,
                };
                let rows = attended.par_chunks_mut(d).zip(q.par_chunks(d)).zip(states.par_iter());
                rows.for_each(|((out, q), state)| match attention {
                    Attention::Tokens => {
                        self.attend(q, 1, &state.past[index], state.len + 1, Some(state.len), out, &[]);
                    }
                    Attention::Audio => {
                        self.attend(q, 1, &state.cross[index], state.audio_len, None, out, &[]);
                    }
                });
            });
        }
        states.iter_mut().for_each(|state| state.len += 1);
        self.ln.apply(&x, &mut normed);
        Ok(normed)
    }

    /// Next-token logits for several hidden states (rows of `d`): each f16 embedding row is read
    /// once for all of them.
    pub fn logits_rows(&self, hidden: &[f32]) -> Vec<Vec<f32>> {
        let d = self.d;
        let rows = hidden.len() / d;
        let mut out = vec![0f32; rows * self.vocab];
        let per_chunk = 1024;
        // Laid out vocab-major while computing (each chunk of the vocabulary is one task), then
        // split per row.
        out.par_chunks_mut(per_chunk * rows).enumerate().for_each(|(chunk, out)| {
            use half::slice::HalfFloatSliceExt;
            let mut wide = vec![0f32; 4 * d];
            let first = chunk * per_chunk;
            // Four embedding rows widened at a time, then used by every hidden row while in L1.
            for (quad, ys) in out.chunks_mut(4 * rows).enumerate() {
                let n = ys.len() / rows;
                let start = (first + 4 * quad) * d;
                self.embeddings_f16[start..start + n * d].convert_to_f32_slice(&mut wide[..n * d]);
                wide[n * d..].fill(0.0);
                let (e0, rest) = wide.split_at(d);
                let (e1, rest) = rest.split_at(d);
                let (e2, e3) = rest.split_at(d);
                for (r, h) in hidden.chunks_exact(d).enumerate() {
                    let dots = dot4([e0, e1, e2, e3], h);
                    for (k, &value) in dots.iter().enumerate().take(n) {
                        ys[k * rows + r] = value;
                    }
                }
            }
        });
        (0..rows).map(|r| out.iter().skip(r).step_by(rows).copied().collect()).collect()
    }

    /// Next-token logits for one hidden state (`d` values).
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let d = self.d;
        let mut out = vec![0f32; self.vocab];
        out.par_chunks_mut(1024).enumerate().for_each(|(chunk, out)| {
            for (k, y) in out.iter_mut().enumerate() {
                *y = dot_f16(&self.embeddings_f16[(chunk * 1024 + k) * d..][..d], hidden);
            }
        });
        out
    }

    pub fn d_model(&self) -> usize {
        self.d
    }
}

/// out (`dh` values) = Σ_j weights[j] · values[j * d + offset ..][..dh]. Whisper's heads are all 64
/// wide: then two keys at a time go into accumulators held in registers (the generic loop keeps
/// `out` in memory and waits on each multiply-add of the previous key).
fn weighted_values(weights: &[f32], values: &[f32], d: usize, offset: usize, out: &mut [f32]) {
    const DH: usize = 64;
    if out.len() == DH {
        let (mut even, mut odd) = ([0f32; DH], [0f32; DH]);
        let mut pairs = weights.chunks_exact(2);
        for (pair, w) in (&mut pairs).enumerate() {
            let v0 = &values[2 * pair * d + offset..][..DH];
            let v1 = &values[(2 * pair + 1) * d + offset..][..DH];
            for t in 0..DH {
                even[t] = w[0].mul_add(v0[t], even[t]);
                odd[t] = w[1].mul_add(v1[t], odd[t]);
            }
        }
        if let [w] = pairs.remainder() {
            let v = &values[(weights.len() - 1) * d + offset..][..DH];
            for t in 0..DH {
                even[t] = w.mul_add(v[t], even[t]);
            }
        }
        for ((o, e), p) in out.iter_mut().zip(&even).zip(&odd) {
            *o = e + p;
        }
        return;
    }
    let dh = out.len();
    out.fill(0.0);
    for (j, w) in weights.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&values[j * d + offset..][..dh]) {
            *o = w.mul_add(*v, *o);
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

#[cfg(test)]
mod tests {
    use zoo_runtime::test_support::pseudo_random as numbers;

    use super::*;

    /// The register-held 64-wide sum and the generic loop against the plain sum: odd and even
    /// key counts, heads at an offset inside rows of `d`, and a head width other than 64.
    #[test]
    fn weighted_values_are_the_plain_sum() {
        for (keys, d, offset, dh) in
            [(1, 64, 0, 64), (2, 128, 64, 64), (1500, 384, 320, 64), (7, 96, 32, 48), (5, 64, 0, 64)]
        {
            let weights = numbers(keys, keys as u32);
            let values = numbers(keys * d, d as u32);
            let mut out = vec![f32::NAN; dh];
            weighted_values(&weights, &values, d, offset, &mut out);
            for (t, got) in out.iter().enumerate() {
                let want: f32 = (0..keys).map(|j| weights[j] * values[j * d + offset + t]).sum();
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{keys} keys, dh {dh}: {got} against {want}");
            }
        }
    }
}
