//! `zoo train fake-news --fine-tune N`: the encoder's top N layers trained together with the head.
//!
//! The lower layers stay frozen, so their output for every window is computed once by the fast CPU
//! path and kept in memory; each step runs only the top layers, in candle with autograd, on a batch
//! of windows of about the same length (little padding). After each epoch the val windows go
//! through the fast path with the layers as they are, and the weighted val loss picks the epoch and
//! stops early. Epoch 0 is the frozen head itself, so a run that does not help changes nothing.
//!
//! The optimiser is AdamW written out here rather than candle-nn's, because its moments must go
//! into the checkpoint: a run resumed after an interrupt then ends with the same weights, to the
//! bit, as one that never stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use zoo_runtime::{progress, Error, Result};

use crate::cpu::CpuBert;
use crate::encoder::pooled;
use crate::head;

/// A BERT layer's tensors, under the names after `encoder.layer.{i}.`.
const LAYER_TENSORS: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// The head's tensors, as head.safetensors names them (an MLP's hidden layer first, when it has one).
const HEAD_TENSORS: [&str; 4] = ["hidden.weight", "hidden.bias", "weight", "bias"];

#[derive(Debug, Clone)]
pub struct Settings {
    /// How many of the encoder's top layers to train.
    pub layers: usize,
    pub epochs: usize,
    /// Epochs without a better val loss before stopping.
    pub patience: usize,
    pub encoder_learning_rate: f64,
    pub head_learning_rate: f64,
    pub weight_decay: f64,
    /// At most this many tokens in a batch, padding included (a longer window goes alone).
    pub batch_tokens: usize,
    pub seed: u64,
    /// Steps between checkpoints (one is also written at the end of each epoch).
    pub checkpoint_every: usize,
    /// Stop after this many steps of this run, with a checkpoint: bounds a run's time.
    pub max_steps: Option<usize>,
}

/// Windows to train on or validate with: each window's tokens, class and weight (the loss is the
/// weighted mean).
#[derive(Clone, Copy)]
pub struct Windows<'a> {
    pub tokens: &'a [Vec<u32>],
    pub classes: &'a [usize],
    pub weights: &'a [f32],
}

pub struct Tuned {
    /// The trained layers under the encoder's tensor names; empty when the frozen encoder won.
    pub encoder: HashMap<String, Tensor>,
    pub head: HashMap<String, Tensor>,
    /// Window embeddings (windows x dim, in order) under the kept weights.
    pub train_embeddings: Vec<f32>,
    pub val_embeddings: Vec<f32>,
    pub epochs_run: usize,
    /// 0 when no epoch beat the frozen encoder.
    pub best_epoch: usize,
    /// The val loss of the frozen encoder and head, and of each epoch after it.
    pub val_losses: Vec<f32>,
    pub steps: usize,
    /// Whether this run went on from a checkpoint.
    pub resumed: bool,
}

fn invalid(reason: String) -> Error {
    Error::Usage(reason)
}

/// The frozen lower layers' output for a set of windows: each window's rows, one after another.
struct States {
    rows: Vec<f32>,
    lengths: Vec<usize>,
    offsets: Vec<usize>,
}

impl States {
    fn compute(bert: &CpuBert, tokens: &[Vec<u32>], layers: usize, what: &str) -> Result<States> {
        let bar = progress::items(tokens.len() as u64, what, true);
        let mut rows = Vec::with_capacity(tokens.iter().map(Vec::len).sum::<usize>() * bert.hidden());
        for chunk in tokens.chunks(64) {
            let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            rows.extend(bert.forward_through(&refs, layers)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let offsets = lengths
            .iter()
            .scan(0, |at, &n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        Ok(States { rows, lengths, offsets })
    }
}

/// The trainable tensors: the top layers' and the head's, in a fixed order.
struct Params {
    names: Vec<String>,
    vars: Vec<Var>,
    /// Where the head's tensors start in `vars`.
    head_start: usize,
}

impl Params {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.vars[i].as_tensor())
            .ok_or_else(|| invalid(format!("no tensor {name}")))
    }

    fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.vars.iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
    }

    fn head_layers(&self) -> Result<Vec<(Tensor, Tensor)>> {
        let mut layers = Vec::new();
        if self.names.iter().any(|n| n == "hidden.weight") {
            layers.push((self.get("hidden.weight")?.clone(), self.get("hidden.bias")?.clone()));
        }
        layers.push((self.get("weight")?.clone(), self.get("bias")?.clone()));
        Ok(layers)
    }
}

/// AdamW (decoupled weight decay, bias-corrected moments), one learning rate per tensor.
struct AdamW {
    rates: Vec<f64>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    weight_decay: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

impl AdamW {
    fn new(params: &Params, settings: &Settings) -> Result<Self> {
        let rates = (0..params.vars.len())
            .map(|i| if i < params.head_start { settings.encoder_learning_rate } else { settings.head_learning_rate })
            .collect();
        let zeros = || params.vars.iter().map(|v| v.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>();
        Ok(AdamW { rates, m: zeros()?, v: zeros()?, step: 0, weight_decay: settings.weight_decay })
    }

    /// One update, every rate scaled by `schedule`.
    fn apply(&mut self, params: &Params, grads: &GradStore, schedule: f64) -> Result<()> {
        self.step += 1;
        let (c1, c2) = (1.0 - BETA1.powi(self.step as i32), 1.0 - BETA2.powi(self.step as i32));
        for (i, var) in params.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            self.m[i] = ((&self.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
            self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let lr = self.rates[i] * schedule;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + EPSILON)?)?;
            var.set(&((var.as_tensor() * (1.0 - lr * self.weight_decay))? - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Windows grouped into batches of about the same length: sorted by length (ties in a seeded
/// order), cut where the padded batch would pass `batch_tokens`.
fn batches(lengths: &[usize], batch_tokens: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut state = seed ^ 0x5eed_ba7c;
    let tie: Vec<u64> = lengths.iter().map(|_| crate::splitmix64(&mut state)).collect();
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], tie[i]));
    let mut out: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match out.last_mut() {
            // Sorted ascending, so this window is the batch's longest.
            Some(batch) if (batch.len() + 1) * lengths[i] <= batch_tokens => batch.push(i),
            _ => out.push(vec![i]),
        }
    }
    out
}

/// The order batches go in during `epoch`: a seeded shuffle, the same on every run and resume.
fn epoch_order(count: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch as u64;
    let mut order: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        order.swap(i, (crate::splitmix64(&mut state) % (i as u64 + 1)) as usize);
    }
    order
}

/// The network the top layers compute, in candle ops that autograd follows; the same function as
/// the CPU path's layers (a unit test holds them together).
struct Network<'a> {
    config: &'a Config,
    /// Absolute index of the first trained layer.
    first: usize,
}

impl Network<'_> {
    fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(gamma)?.broadcast_add(beta)
    }

    fn linear(x: &Tensor, params: &Params, name: &str) -> Result<Tensor> {
        let (w, b) = (params.get(&format!("{name}.weight"))?, params.get(&format!("{name}.bias"))?);
        Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
    }

    /// Last hidden states (batch x len x hidden) of windows given as their states after the frozen
    /// layers; `mask_add` is 0 at real tokens and very negative at padding (batch x 1 x 1 x len).
    fn forward(&self, params: &Params, x: &Tensor, mask_add: &Tensor) -> Result<Tensor> {
        let (b, len, h) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let eps = self.config.layer_norm_eps;
        let mut x = x.reshape((b * len, h))?;
        for layer in self.first..self.config.num_hidden_layers {
            let p = |name: &str| format!("encoder.layer.{layer}.{name}");
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let q = split(Self::linear(&x, params, &p("attention.self.query"))?)?;
            let k = split(Self::linear(&x, params, &p("attention.self.key"))?)?;
            let v = split(Self::linear(&x, params, &p("attention.self.value"))?)?;
            let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(mask_add)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let context = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * len, h))?;
            let attended = (Self::linear(&context, params, &p("attention.output.dense"))? + &x)?;
            let norm = p("attention.output.LayerNorm");
            let attended = Self::layer_norm(
                &attended,
                params.get(&format!("{norm}.weight"))?,
                params.get(&format!("{norm}.bias"))?,
                eps,
            )?;
            let up = Self::linear(&attended, params, &p("intermediate.dense"))?;
            let up = match self.config.hidden_act {
                HiddenAct::Gelu => up.gelu_erf()?,
                HiddenAct::GeluApproximate => up.gelu()?,
                HiddenAct::Relu => up.relu()?,
            };
            let out = (Self::linear(&up, params, &p("output.dense"))? + attended)?;
            let norm = p("output.LayerNorm");
            x = Self::layer_norm(
                &out,
                params.get(&format!("{norm}.weight"))?,
                params.get(&format!("{norm}.bias"))?,
                eps,
            )?;
        }
        Ok(x.reshape((b, len, h))?)
    }
}

/// One padded batch: the frozen states, the additive attention mask, the pooling mask.
fn batch_inputs(states: &States, batch: &[usize], h: usize) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let len = batch.iter().map(|&w| states.lengths[w]).max().unwrap_or(0);
    let mut x = vec![0f32; batch.len() * len * h];
    let mut mask = vec![0f32; batch.len() * len];
    for (row, &w) in batch.iter().enumerate() {
        let n = states.lengths[w];
        x[row * len * h..][..n * h].copy_from_slice(&states.rows[states.offsets[w] * h..][..n * h]);
        mask[row * len..][..n].fill(1.0);
    }
    // Large enough that exp() of a padded score is 0, small enough to stay finite beside any score.
    let mask_add: Vec<f32> = mask.iter().map(|&m| (1.0 - m) * -1e9).collect();
    let dev = &Device::Cpu;
    Ok((
        Tensor::from_vec(x, (batch.len(), len, h), dev)?,
        Tensor::from_vec(mask_add, (batch.len(), 1, 1, len), dev)?,
        Tensor::from_vec(mask, (batch.len(), len, 1), dev)?,
    ))
}

/// Mean over the real tokens, L2-normalised: the sentence embedding, as the encoder pools it.
fn pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mean = hidden.broadcast_mul(mask)?.sum(1)?.broadcast_div(&mask.sum(1)?)?;
    mean.broadcast_div(&mean.sqr()?.sum_keepdim(1)?.sqrt()?)
}

/// The encoder's tensors with the trained layers' current values in place.
fn merged(base: &HashMap<String, Tensor>, params: &Params) -> HashMap<String, Tensor> {
    let mut all = base.clone();
    for (name, var) in params.names.iter().zip(&params.vars).take(params.head_start) {
        all.insert(name.clone(), var.as_tensor().clone());
    }
    all
}

/// Window embeddings through the fast path, from the frozen states, under the current weights.
/// The layers run in place over `rows`: a caller that still needs the states passes a copy.
fn embed(
    base: &HashMap<String, Tensor>,
    config: &Config,
    params: &Params,
    rows: Vec<f32>,
    states: &States,
    first: usize,
) -> Result<Vec<f32>> {
    let bert = CpuBert::load(VarBuilder::from_tensors(merged(base, params), DType::F32, &Device::Cpu), config)?;
    let hidden = bert.forward_from(rows, &states.lengths, first)?;
    Ok(pooled(&hidden, &states.lengths, config.hidden_size).into_iter().flatten().collect())
}

fn val_loss(params: &Params, embeddings: &[f32], windows: &Windows, dim: usize) -> Result<f32> {
    let dev = &Device::Cpu;
    let x = Tensor::from_slice(embeddings, (windows.classes.len(), dim), dev)?;
    let y = Tensor::new(windows.classes.iter().map(|&c| c as u32).collect::<Vec<_>>(), dev)?;
    let w = Tensor::from_slice(windows.weights, windows.weights.len(), dev)?;
    let logits = head::forward(&params.head_layers()?, &x)?;
    Ok(head::weighted_cross_entropy(&logits, &y, &w)?.to_scalar::<f32>()?)
}

/// Where a run stands: written with the weights and moments into the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Progress {
    /// Epochs finished.
    epochs_done: usize,
    /// Batches of the current epoch already taken.
    batches_done: usize,
    best_epoch: usize,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// A checkpoint's best weights so far, its val losses and where it stood.
type Resumed = (Vec<Tensor>, Vec<f32>, Progress);

struct Checkpoint {
    dir: PathBuf,
    fingerprint: Vec<u8>,
}

impl Checkpoint {
    fn save(&self, params: &Params, opt: &AdamW, best: &[Tensor], losses: &[f32], at: Progress) -> Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (i, name) in params.names.iter().enumerate() {
            t.insert(format!("param.{name}"), params.vars[i].as_tensor().clone());
            t.insert(format!("m.{name}"), opt.m[i].clone());
            t.insert(format!("v.{name}"), opt.v[i].clone());
            t.insert(format!("best.{name}"), best[i].clone());
        }
        let counts = [at.epochs_done, at.batches_done, at.best_epoch, opt.step].map(|n| n as u32);
        t.insert("progress".into(), Tensor::new(&counts, &Device::Cpu)?);
        t.insert("val_losses".into(), Tensor::new(losses, &Device::Cpu)?);
        t.insert("fingerprint".into(), Tensor::new(self.fingerprint.as_slice(), &Device::Cpu)?);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let tmp = self.dir.join(".checkpoint.tmp");
        candle_core::safetensors::save(&t, &tmp)?;
        std::fs::rename(&tmp, self.dir.join(CHECKPOINT)).map_err(|e| Error::io(&self.dir, e))
    }

    /// The state a checkpoint of this same run left, or None (no checkpoint, or another run's).
    fn load(&self, params: &Params, opt: &mut AdamW) -> Result<Option<Resumed>> {
        let path = self.dir.join(CHECKPOINT);
        if !path.exists() {
            return Ok(None);
        }
        let t = candle_core::safetensors::load(&path, &Device::Cpu)?;
        let same = t.get("fingerprint").and_then(|f| f.to_vec1::<u8>().ok()).is_some_and(|f| f == self.fingerprint);
        if !same {
            eprintln!("note: {} is from another run (other data or settings); starting afresh", path.display());
            return Ok(None);
        }
        let get = |name: String| t.get(&name).cloned().ok_or_else(|| invalid(format!("{}: no {name}", path.display())));
        let mut best = Vec::new();
        for (i, name) in params.names.iter().enumerate() {
            params.vars[i].set(&get(format!("param.{name}"))?)?;
            opt.m[i] = get(format!("m.{name}"))?;
            opt.v[i] = get(format!("v.{name}"))?;
            best.push(get(format!("best.{name}"))?);
        }
        let counts: Vec<u32> = get("progress".into())?.to_vec1()?;
        let losses: Vec<f32> = get("val_losses".into())?.to_vec1()?;
        let [epochs_done, batches_done, best_epoch, step] = counts[..] else {
            return Err(invalid(format!("{}: a progress record of {} numbers", path.display(), counts.len())));
        };
        opt.step = step as usize;
        let at = Progress {
            epochs_done: epochs_done as usize,
            batches_done: batches_done as usize,
            best_epoch: best_epoch as usize,
        };
        Ok(Some((best, losses, at)))
    }
}

/// What makes two runs the same run: every input and setting that changes the result.
fn fingerprint(
    settings: &Settings,
    first: usize,
    train: &Windows,
    val: &Windows,
    head: &HashMap<String, Tensor>,
) -> Result<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let s = settings;
    hash.update(format!(
        "{first} {} {} {} {} {} {} {}\n",
        s.epochs, s.patience, s.encoder_learning_rate, s.head_learning_rate, s.weight_decay, s.batch_tokens, s.seed
    ));
    for set in [train, val] {
        hash.update((set.tokens.len() as u64).to_le_bytes());
        for ((tokens, &class), &weight) in set.tokens.iter().zip(set.classes).zip(set.weights) {
            hash.update((tokens.len() as u64).to_le_bytes());
            tokens.iter().for_each(|t| hash.update(t.to_le_bytes()));
            hash.update((class as u64).to_le_bytes());
            hash.update(weight.to_le_bytes());
        }
    }
    for name in HEAD_TENSORS {
        if let Some(t) = head.get(name) {
            t.flatten_all()?.to_vec1::<f32>()?.iter().for_each(|v| hash.update(v.to_le_bytes()));
        }
    }
    Ok(hash.finalize().to_vec())
}

/// Trains the top `settings.layers` layers of the encoder (`base`: its tensors by name) with the
/// head (`head`: the frozen head's tensors, the starting point), early-stopping on `val`.
/// `checkpoints` is where to keep a checkpoint; a checkpoint of the same run found there is
/// resumed, and it is removed when the run ends. None: stopped at `settings.max_steps`, with a
/// checkpoint to go on from.
pub fn fine_tune(
    base: &HashMap<String, Tensor>,
    config: &Config,
    train: Windows,
    val: Windows,
    head: &HashMap<String, Tensor>,
    settings: &Settings,
    checkpoints: Option<&Path>,
) -> Result<Option<Tuned>> {
    let total_layers = config.num_hidden_layers;
    if settings.layers == 0 || settings.layers > total_layers {
        return Err(invalid(format!(
            "--fine-tune takes 1 to {total_layers} layers (the encoder has {total_layers}), not {}",
            settings.layers
        )));
    }
    if train.tokens.is_empty() || val.tokens.is_empty() {
        return Err(invalid("fine-tuning needs train and val texts".into()));
    }
    let first = total_layers - settings.layers;
    let h = config.hidden_size;
    let dev = &Device::Cpu;

    let mut names = Vec::new();
    for layer in first..total_layers {
        names.extend(LAYER_TENSORS.iter().map(|n| format!("encoder.layer.{layer}.{n}")));
    }
    let head_start = names.len();
    names.extend(HEAD_TENSORS.iter().filter(|n| head.contains_key(**n)).map(|n| n.to_string()));
    let vars = names
        .iter()
        .map(|n| {
            let t = base.get(n).or_else(|| head.get(n)).ok_or_else(|| invalid(format!("no tensor {n}")))?;
            Ok(Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let params = Params { names, vars, head_start };
    let mut opt = AdamW::new(&params, settings)?;
    let checkpoint = checkpoints
        .map(|dir| -> Result<Checkpoint> {
            Ok(Checkpoint { dir: dir.to_path_buf(), fingerprint: fingerprint(settings, first, &train, &val, head)? })
        })
        .transpose()?;

    let frozen = CpuBert::load(VarBuilder::from_tensors(base.clone(), DType::F32, dev), config)?;
    let mut train_states = States::compute(&frozen, train.tokens, first, "fine-tuning: frozen layers, train")?;
    let mut val_states = States::compute(&frozen, val.tokens, first, "fine-tuning: frozen layers, val")?;
    drop(frozen);

    let network = Network { config, first };
    let batches = batches(&train_states.lengths, settings.batch_tokens, settings.seed);
    let total_steps = settings.epochs * batches.len();
    // Linear warm-up over the first steps, then linear decay to zero at the last epoch's end.
    let warmup = (total_steps / 10).clamp(1, 200);
    let schedule = |step: usize| -> f64 {
        if step < warmup {
            (step + 1) as f64 / warmup as f64
        } else {
            (total_steps - step) as f64 / (total_steps - warmup).max(1) as f64
        }
    };

    let resumed = match &checkpoint {
        Some(c) => c.load(&params, &mut opt)?,
        None => None,
    };
    let was_resumed = resumed.is_some();
    let (mut best, mut val_losses, mut at) = match resumed {
        Some(found) => found,
        None => {
            let frozen_loss = val_loss(
                &params,
                &embed(base, config, &params, val_states.rows.clone(), &val_states, first)?,
                &val,
                h,
            )?;
            (params.snapshot()?, vec![frozen_loss], Progress { epochs_done: 0, batches_done: 0, best_epoch: 0 })
        }
    };
    let targets: Vec<u32> = train.classes.iter().map(|&c| c as u32).collect();
    let bar = progress::items(total_steps as u64, "fine-tuning", true);
    bar.set_position((at.epochs_done * batches.len() + at.batches_done) as u64);
    let mut steps_this_run = 0;
    while at.epochs_done < settings.epochs && at.epochs_done - at.best_epoch < settings.patience {
        let epoch = at.epochs_done + 1;
        bar.set_message(format!("fine-tuning, epoch {epoch}"));
        let order = epoch_order(batches.len(), settings.seed, epoch);
        for &b in &order[at.batches_done..] {
            let batch = &batches[b];
            let (x, mask_add, mask) = batch_inputs(&train_states, batch, h)?;
            let hidden = network.forward(&params, &x, &mask_add)?;
            let logits = head::forward(&params.head_layers()?, &pool(&hidden, &mask)?)?;
            let y = Tensor::new(batch.iter().map(|&w| targets[w]).collect::<Vec<_>>(), dev)?;
            let w = Tensor::new(batch.iter().map(|&w| train.weights[w]).collect::<Vec<_>>(), dev)?;
            let loss = head::weighted_cross_entropy(&logits, &y, &w)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(invalid(format!(
                    "the loss became {value} in epoch {epoch}; try a smaller --fine-tune-learning-rate"
                )));
            }
            let grads = loss.backward()?;
            opt.apply(&params, &grads, schedule(opt.step))?;
            at.batches_done += 1;
            steps_this_run += 1;
            bar.inc(1);
            let stopping = settings.max_steps.is_some_and(|max| steps_this_run >= max);
            if let Some(c) = &checkpoint {
                if stopping || at.batches_done % settings.checkpoint_every.max(1) == 0 {
                    c.save(&params, &opt, &best, &val_losses, at)?;
                }
            }
            if stopping && at.batches_done < batches.len() {
                bar.finish_and_clear();
                return Ok(None);
            }
        }
        let loss =
            val_loss(&params, &embed(base, config, &params, val_states.rows.clone(), &val_states, first)?, &val, h)?;
        val_losses.push(loss);
        at = Progress { epochs_done: epoch, batches_done: 0, ..at };
        if loss < val_losses[at.best_epoch] - 1e-6 {
            best = params.snapshot()?;
            at.best_epoch = epoch;
        }
        if let Some(c) = &checkpoint {
            c.save(&params, &opt, &best, &val_losses, at)?;
        }
        if settings.max_steps.is_some_and(|max| steps_this_run >= max) && at.epochs_done < settings.epochs {
            bar.finish_and_clear();
            return Ok(None);
        }
    }
    bar.finish_and_clear();

    for (var, kept) in params.vars.iter().zip(&best) {
        var.set(kept)?;
    }
    let val_embeddings = embed(base, config, &params, std::mem::take(&mut val_states.rows), &val_states, first)?;
    let train_embeddings = embed(base, config, &params, std::mem::take(&mut train_states.rows), &train_states, first)?;
    let tensor = |i: usize| params.vars[i].as_tensor().clone();
    let encoder = if at.best_epoch == 0 {
        HashMap::new()
    } else {
        (0..params.head_start).map(|i| (params.names[i].clone(), tensor(i))).collect()
    };
    let head = (params.head_start..params.names.len()).map(|i| (params.names[i].clone(), tensor(i))).collect();
    if let Some(c) = &checkpoint {
        // The run is over: nothing is left to resume.
        let _ = std::fs::remove_dir_all(&c.dir);
    }
    Ok(Some(Tuned {
        encoder,
        head,
        train_embeddings,
        val_embeddings,
        epochs_run: at.epochs_done,
        best_epoch: at.best_epoch,
        val_losses,
        steps: opt.step,
        resumed: was_resumed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tests::{config, random_tensors};

    fn windows(count: usize, vocab: u32, seed: u64) -> Vec<Vec<u32>> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                let len = 1 + (crate::splitmix64(&mut state) % 23) as usize;
                (0..len).map(|_| (crate::splitmix64(&mut state) % vocab as u64) as u32).collect()
            })
            .collect()
    }

    /// What the trained layers compute in candle is what the fast path computes at inference, for
    /// any number of trained layers and a batch padded to its longest window.
    #[test]
    fn the_training_network_is_the_cpu_path() {
        let config = config("gelu");
        let base = random_tensors(&config);
        let bert = CpuBert::load(VarBuilder::from_tensors(base.clone(), DType::F32, &Device::Cpu), &config).unwrap();
        let tokens = windows(5, 50, 3);
        let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
        let want = bert.forward(&refs).unwrap();
        for first in 0..config.num_hidden_layers {
            let names: Vec<String> = (first..config.num_hidden_layers)
                .flat_map(|l| LAYER_TENSORS.iter().map(move |n| format!("encoder.layer.{l}.{n}")))
                .collect();
            let vars = names.iter().map(|n| Var::from_tensor(&base[n]).unwrap()).collect();
            let params = Params { head_start: names.len(), names, vars };
            let states = States::compute(&bert, &tokens, first, "test").unwrap();
            let all: Vec<usize> = (0..tokens.len()).collect();
            let (x, mask_add, _) = batch_inputs(&states, &all, config.hidden_size).unwrap();
            let got: Vec<Vec<Vec<f32>>> =
                Network { config: &config, first }.forward(&params, &x, &mask_add).unwrap().to_vec3().unwrap();
            let mut worst = 0f32;
            let mut rows = want.chunks_exact(config.hidden_size);
            for (w, window) in tokens.iter().enumerate() {
                for (g, r) in got[w][..window.len()].iter().zip(rows.by_ref()) {
                    worst = g.iter().zip(r).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
                }
            }
            assert!(worst < 1e-4, "from layer {first}: max difference {worst}");
        }
    }

    /// A task the frozen encoder cannot see through its random weights: the class is whether token 7
    /// occurs in the window.
    fn task(count: usize, seed: u64) -> (Vec<Vec<u32>>, Vec<usize>, Vec<f32>) {
        let tokens = windows(count, 50, seed);
        let classes = tokens.iter().map(|w| usize::from(w.contains(&7))).collect();
        (tokens, classes, vec![1.0; count])
    }

    fn settings() -> Settings {
        Settings {
            layers: 1,
            epochs: 3,
            patience: 3,
            encoder_learning_rate: 3e-3,
            head_learning_rate: 1e-2,
            weight_decay: 0.01,
            batch_tokens: 96,
            seed: 5,
            checkpoint_every: 2,
            max_steps: None,
        }
    }

    fn head(config: &Config) -> HashMap<String, Tensor> {
        let h = config.hidden_size;
        HashMap::from([
            ("weight".to_string(), Tensor::randn(0f32, 0.1, (2, h), &Device::Cpu).unwrap()),
            ("bias".to_string(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()),
        ])
    }

    /// An interrupted run, resumed from its checkpoint, ends with the weights of a run that never
    /// stopped, to the bit; and training lowers the val loss below the frozen encoder's.
    #[test]
    fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
        let config = config("gelu");
        let base = random_tensors(&config);
        let head = head(&config);
        let (tokens, classes, weights) = task(120, 1);
        let (vtokens, vclasses, vweights) = task(40, 2);
        let train = Windows { tokens: &tokens, classes: &classes, weights: &weights };
        let val = Windows { tokens: &vtokens, classes: &vclasses, weights: &vweights };
        let dirs = tempfile::tempdir().unwrap();
        let (whole, parts) = (dirs.path().join("whole"), dirs.path().join("parts"));
        let s = settings();
        let a = fine_tune(&base, &config, train, val, &head, &s, Some(&whole)).unwrap().unwrap();
        assert!(!a.resumed && !whole.exists(), "the checkpoint goes when the run ends");
        assert!(a.best_epoch > 0 && a.val_losses[a.best_epoch] < a.val_losses[0], "losses {:?}", a.val_losses);

        let stopped =
            fine_tune(&base, &config, train, val, &head, &Settings { max_steps: Some(5), ..s.clone() }, Some(&parts));
        assert!(stopped.unwrap().is_none());
        assert!(parts.join(CHECKPOINT).exists());
        let b = fine_tune(&base, &config, train, val, &head, &s, Some(&parts)).unwrap().unwrap();
        assert!(b.resumed);
        assert_eq!(a.val_losses, b.val_losses);
        assert_eq!((a.best_epoch, a.steps), (b.best_epoch, b.steps));
        for (x, y) in [(&a.encoder, &b.encoder), (&a.head, &b.head)] {
            assert_eq!(x.len(), y.len());
            for (name, t) in x {
                let (p, q): (Vec<f32>, Vec<f32>) =
                    (t.flatten_all().unwrap().to_vec1().unwrap(), y[name].flatten_all().unwrap().to_vec1().unwrap());
                assert!(p == q, "{name} differs");
            }
        }
        assert_eq!(a.train_embeddings, b.train_embeddings);
    }

    #[test]
    fn batches_keep_lengths_together_and_under_the_token_budget() {
        let lengths = [5, 1, 9, 9, 2, 40, 3, 9];
        let b = batches(&lengths, 20, 0);
        let mut seen: Vec<usize> = b.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &b {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(batch.len() == 1 || batch.len() * longest <= 20, "{batch:?}");
        }
        assert_eq!(epoch_order(10, 3, 1), epoch_order(10, 3, 1));
        assert_ne!(epoch_order(10, 3, 1), epoch_order(10, 3, 2));
    }
}
