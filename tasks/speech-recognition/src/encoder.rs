//! Whisper's audio encoder for the CPU in plain loops and `gemm` calls. Through candle's generic
//! ops the encoder took most of a transcription's time: every attention layer materialised
//! 6 x 1500 x 1500 scores (54 MB) and ran scalar `exp`/`tanh` over them and over the MLP. Here
//! attention runs per head in blocks of query rows whose scores stay in cache, and GELU and the
//! softmax use vectorisable approximations (relative error below 2e-6).
//!
//! The math is OpenAI's (exact-erf GELU, pre-norm residual blocks); `tests/whisper.rs` checks it
//! against the same network written with candle's ops.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use zoo_runtime::cpu;

use crate::kernels::{gelu_in_place, Dense, LayerNorm};

/// Query rows per attention block: their scores (rows x 1500 floats) stay in L2.
const QUERY_BLOCK: usize = 64;

struct Layer {
    attn_ln: LayerNorm,
    qkv: Dense,
    out: Dense,
    mlp_ln: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

pub struct CpuEncoder {
    /// Convolutions as matrix products over unfolded input: `(kernel * in) x out`.
    conv1: Dense,
    conv2: Dense,
    positions: Vec<f32>,
    layers: Vec<Layer>,
    ln_post: LayerNorm,
    n_mels: usize,
    d: usize,
    heads: usize,
}

/// Whisper's sinusoidal positions: sines then cosines over geometric timescales.
fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let increment = (10_000f32).ln() / (half - 1) as f32;
    let mut out = vec![0f32; length * channels];
    for t in 0..length {
        for i in 0..half {
            let angle = t as f32 * (-increment * i as f32).exp();
            out[t * channels + i] = angle.sin();
            out[t * channels + half + i] = angle.cos();
        }
    }
    out
}

impl CpuEncoder {
    /// Reads `model.encoder.*` in Transformers' names; with `int8`, the attention and MLP layers'
    /// weights as int8 ([`Dense::quantize`]), while the convolutions stay in float, as CTranslate2
    /// keeps them.
    pub fn load(vb: &VarBuilder, cfg: &candle_transformers::models::whisper::Config, int8: bool) -> Result<Self> {
        let vb = vb.pp("model.encoder");
        let (d, mels) = (cfg.d_model, cfg.num_mel_bins);
        let conv = |name: &str, d_in: usize| -> Result<Dense> {
            Dense::from_conv(&vb.get((d, d_in, 3), &format!("{name}.weight"))?, &vb.get(d, &format!("{name}.bias"))?)
        };
        let linear = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<(Tensor, Tensor)> {
            let w = vb.get((d_out, d_in), &format!("{name}.weight"))?;
            let b = if bias {
                vb.get(d_out, &format!("{name}.bias"))?
            } else {
                Tensor::zeros(d_out, w.dtype(), w.device())?
            };
            Ok((w, b))
        };
        let layers = (0..cfg.encoder_layers)
            .map(|i| {
                let p = |s: &str| format!("layers.{i}.{s}");
                let (q, k, v) = (
                    linear(&p("self_attn.q_proj"), d, d, true)?,
                    linear(&p("self_attn.k_proj"), d, d, false)?,
                    linear(&p("self_attn.v_proj"), d, d, true)?,
                );
                let dense =
                    |(w, b): (Tensor, Tensor)| Dense::from_linears(&[w], &[b]).map(|dense| dense.quantized_if(int8));
                Ok(Layer {
                    attn_ln: LayerNorm::load(&vb, &p("self_attn_layer_norm"), d)?,
                    qkv: Dense::from_linears(&[q.0, k.0, v.0], &[q.1, k.1, v.1])?.quantized_if(int8),
                    out: dense(linear(&p("self_attn.out_proj"), d, d, true)?)?,
                    mlp_ln: LayerNorm::load(&vb, &p("final_layer_norm"), d)?,
                    fc1: dense(linear(&p("fc1"), d, 4 * d, true)?)?,
                    fc2: dense(linear(&p("fc2"), 4 * d, d, true)?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1: conv("conv1", mels)?,
            conv2: conv("conv2", d)?,
            positions: sinusoids(cfg.max_source_positions, d),
            layers,
            ln_post: LayerNorm::load(&vb, "layer_norm", d)?,
            n_mels: mels,
            d,
            heads: cfg.encoder_attention_heads,
        })
    }

    /// Encodes a log-mel window (`n_mels` rows of `frames` values) into `frames / 2` rows of `d`.
    pub fn forward(&self, mel: &[f32]) -> Vec<f32> {
        let (d, mels) = (self.d, self.n_mels);
        let frames = mel.len() / mels;
        let ctx = frames / 2;
        assert!(ctx <= self.positions.len() / d, "window longer than the encoder's positions");

        // conv1 (stride 1, padding 1) over unfolded input: row t holds mel[c][t + k - 1] at k * mels + c.
        let mut unfolded = vec![0f32; frames * 3 * mels];
        unfolded.par_chunks_mut(3 * mels).enumerate().for_each(|(t, row)| {
            for k in 0..3 {
                let src = t as isize + k as isize - 1;
                if (0..frames as isize).contains(&src) {
                    for c in 0..mels {
                        row[k * mels + c] = mel[c * frames + src as usize];
                    }
                }
            }
        });
        let mut h1 = vec![0f32; frames * d];
        self.conv1.apply(&unfolded, frames, &mut h1, false);
        gelu_in_place(&mut h1);

        // conv2 (stride 2, padding 1): row t holds h1[2t + k - 1] at k * d.
        let mut unfolded = vec![0f32; ctx * 3 * d];
        unfolded.par_chunks_mut(3 * d).enumerate().for_each(|(t, row)| {
            for k in 0..3 {
                let src = 2 * t as isize + k as isize - 1;
                if (0..frames as isize).contains(&src) {
                    row[k * d..(k + 1) * d].copy_from_slice(&h1[src as usize * d..][..d]);
                }
            }
        });
        drop(h1);
        let mut x = vec![0f32; ctx * d];
        self.conv2.apply(&unfolded, ctx, &mut x, false);
        gelu_in_place(&mut x);
        x.iter_mut().zip(&self.positions).for_each(|(v, p)| *v += p);

        let mut normed = vec![0f32; ctx * d];
        let mut qkv = vec![0f32; ctx * 3 * d];
        let mut attended = vec![0f32; ctx * d];
        let mut hidden = vec![0f32; ctx * 4 * d];
        for layer in &self.layers {
            layer.attn_ln.apply(&x, &mut normed);
            layer.qkv.apply(&normed, ctx, &mut qkv, false);
            self.attention(&qkv, ctx, &mut attended);
            layer.out.apply(&attended, ctx, &mut x, true);
            layer.mlp_ln.apply(&x, &mut normed);
            layer.fc1.apply(&normed, ctx, &mut hidden, false);
            gelu_in_place(&mut hidden);
            layer.fc2.apply(&hidden, ctx, &mut x, true);
        }
        self.ln_post.apply(&x, &mut normed);
        normed
    }

    /// Multi-head self-attention over `qkv` (rows of q | k | v), written into `out` (ctx x d).
    fn attention(&self, qkv: &[f32], ctx: usize, out: &mut [f32]) {
        let (d, heads) = (self.d, self.heads);
        let dh = d / heads;
        let stride = 3 * d;
        let scale = 1.0 / (dh as f32).sqrt();
        let blocks = ctx.div_ceil(QUERY_BLOCK);
        // Each (head, block) writes its own rows x columns of `out`; collect, then scatter.
        let results: Vec<(usize, usize, Vec<f32>)> = (0..heads * blocks)
            .into_par_iter()
            .map(|task| {
                let (h, b) = (task / blocks, task % blocks);
                let row0 = b * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(ctx - row0);
                let mut scores = vec![0f32; rows * ctx];
                // SAFETY: q rows start at row0 * stride + h * dh (dh values, row stride `stride`),
                // k^T reads k[j][kk] at stride * j + d + h * dh + kk; all inside `qkv` (ctx rows).
                unsafe {
                    gemm::gemm(
                        rows,
                        ctx,
                        dh,
                        scores.as_mut_ptr(),
                        1,
                        ctx as isize,
                        false,
                        qkv.as_ptr().add(row0 * stride + h * dh),
                        1,
                        stride as isize,
                        qkv.as_ptr().add(d + h * dh),
                        stride as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                scores.chunks_exact_mut(ctx).for_each(cpu::softmax);
                let mut block = vec![0f32; rows * dh];
                // SAFETY: v[j][kk] at stride * j + 2d + h * dh + kk, inside `qkv`; `block` is rows x dh.
                unsafe {
                    gemm::gemm(
                        rows,
                        dh,
                        ctx,
                        block.as_mut_ptr(),
                        1,
                        dh as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        ctx as isize,
                        qkv.as_ptr().add(2 * d + h * dh),
                        1,
                        stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                (h, row0, block)
            })
            .collect();
        for (h, row0, block) in results {
            for (r, values) in block.chunks_exact(dh).enumerate() {
                out[(row0 + r) * d + h * dh..][..dh].copy_from_slice(values);
            }
        }
    }
}
