//! Voice activity detection as faster-whisper 1.2.1 does it: Silero VAD v6 (its own export, which
//! runs the LSTM across a file's 32 ms windows) and `get_speech_timestamps` with its options, so
//! that `--vad` finds the speech faster-whisper's `vad_filter=True` finds, and the map that puts
//! times on the speech-only audio back on the recording's clock.
//!
//! The network is small (about 0.7 M multiply-adds a window); everything before the LSTM is
//! independent per window, so it runs as a few matrix products over all windows at once, and the
//! LSTM steps through them in order.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::audio::SAMPLE_RATE;
use crate::decode::Segment;

/// Samples per window at 16 kHz (32 ms), and of the previous window each one also sees.
pub const WINDOW: usize = 512;
const CONTEXT: usize = 64;
const FRAMES: usize = 4;
const BINS: usize = 129;
const N_FFT: usize = 256;
const HOP: usize = 128;
const HIDDEN: usize = 128;
/// Windows encoded together (about 5 minutes of audio, some 50 MB of work buffers).
const BLOCK: usize = 10_000;

/// The bundled weights: faster-whisper's silero_vad_v6.onnx initializers as safetensors.
pub const BUNDLED: &str = "silero-vad/silero_vad_v6.safetensors";

/// A 1-d convolution over the 4 frames of a window, laid out as the (taps x inputs, outputs)
/// matrix its patches multiply.
struct Conv {
    matrix: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    stride: usize,
}

pub struct SileroVad {
    /// The STFT basis as a (256, 258) matrix: cosine rows then minus-sine rows, transposed.
    basis: Vec<f32>,
    convs: [Conv; 4],
    /// The LSTM's input weights as (128, 512), gates i, o, f, c; its summed biases; its
    /// recurrent weights as (128, 512) too, so that a step's 512 sums are 128 multiply-adds over
    /// contiguous rows (dot products of 128 were one serial chain each, most of the VAD's time).
    input_weights: Vec<f32>,
    gate_bias: Vec<f32>,
    recurrent: Vec<f32>,
    decoder: Vec<f32>,
    decoder_bias: f32,
}

fn tensor(tensors: &HashMap<String, Tensor>, name: &str, shape: &[usize]) -> candle_core::Result<Vec<f32>> {
    let t = tensors.get(name).ok_or_else(|| candle_core::Error::Msg(format!("the VAD weights have no {name}")))?;
    if t.dims() != shape {
        candle_core::bail!("VAD weight {name} is {:?}, not {shape:?}", t.dims())
    }
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// (rows, cols) row-major -> (cols, rows).
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows).map(|i| m[(i % rows) * cols + i / rows]).collect()
}

impl SileroVad {
    /// The weights bundled with zoo.
    pub fn bundled() -> candle_core::Result<Self> {
        let bytes = zoo_runtime::bundled::file(BUNDLED)
            .ok_or_else(|| candle_core::Error::Msg(format!("{BUNDLED} is not bundled in this build")))?;
        Self::from_safetensors(bytes)
    }

    pub fn from_safetensors(bytes: &[u8]) -> candle_core::Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let basis = tensor(&tensors, "encoder.feature_extractor.forward_basis_buffer", &[2 * BINS, 1, N_FFT])?;
        let layer = |i: usize, outputs: usize, inputs: usize, stride: usize| -> candle_core::Result<Conv> {
            let w = tensor(&tensors, &format!("encoder.conv_layers.{i}.weight"), &[outputs, inputs, 3])?;
            let bias = tensor(&tensors, &format!("encoder.conv_layers.{i}.bias"), &[outputs])?;
            // Row (tap, input) of the patch matrix, column output.
            let mut matrix = vec![0f32; 3 * inputs * outputs];
            for (o, i, k) in (0..outputs).flat_map(|o| (0..inputs).flat_map(move |i| (0..3).map(move |k| (o, i, k)))) {
                matrix[(k * inputs + i) * outputs + o] = w[(o * inputs + i) * 3 + k];
            }
            Ok(Conv { matrix, bias, inputs, outputs, stride })
        };
        let convs = [layer(0, 128, BINS, 1)?, layer(1, 64, 128, 2)?, layer(2, 64, 64, 2)?, layer(3, 128, 64, 1)?];
        let w = tensor(&tensors, "onnx::LSTM_209", &[1, 4 * HIDDEN, HIDDEN])?;
        let recurrent = tensor(&tensors, "onnx::LSTM_210", &[1, 4 * HIDDEN, HIDDEN])?;
        let b = tensor(&tensors, "onnx::LSTM_211", &[1, 8 * HIDDEN])?;
        let gate_bias = (0..4 * HIDDEN).map(|i| b[i] + b[4 * HIDDEN + i]).collect();
        let decoder = tensor(&tensors, "decoder.conv1d.weight", &[1, HIDDEN, 1])?;
        let decoder_bias = tensor(&tensors, "decoder.conv1d.bias", &[1])?[0];
        let all = basis.iter().chain(&w).chain(&recurrent).chain(&b).chain(&decoder);
        if !all.chain(convs.iter().flat_map(|c| c.matrix.iter().chain(&c.bias))).all(|v| v.is_finite()) {
            candle_core::bail!("the VAD weights hold values that are not finite")
        }
        Ok(SileroVad {
            basis: transpose(&basis, 2 * BINS, N_FFT),
            convs,
            input_weights: transpose(&w, 4 * HIDDEN, HIDDEN),
            gate_bias,
            recurrent: transpose(&recurrent, 4 * HIDDEN, HIDDEN),
            decoder,
            decoder_bias,
        })
    }

    /// The speech probability of each 512-sample window of `audio` (16 kHz), as faster-whisper
    /// computes them: the audio padded with zeros to a whole number of windows plus at least one
    /// sample (so `len / 512 + 1` windows), each window seen with the 64 samples before it, the
    /// LSTM's state carried from window to window and zero at the start.
    pub fn probabilities(&self, audio: &[f32]) -> Vec<f32> {
        let windows = audio.len() / WINDOW + 1;
        let mut padded = audio.to_vec();
        padded.resize(windows * WINDOW, 0.0);
        // faster-whisper zeroes the last window's last 64 samples too (a write through a numpy
        // view meant for the context): only audible where the padding is shorter than that.
        padded[windows * WINDOW - CONTEXT..].fill(0.0);
        // Blocks of windows, so that the spectra and patches of an hour of audio are never held
        // at once; only each window's 128 features are kept for the LSTM.
        let mut features = Vec::with_capacity(windows * HIDDEN);
        for first in (0..windows).step_by(BLOCK) {
            features.extend(self.encode(&padded, first..(first + BLOCK).min(windows)));
        }
        self.decode(&features, windows)
    }

    /// The magnitude spectra of windows `block` through the four convolutions: (windows, 128).
    fn encode(&self, padded: &[f32], block: std::ops::Range<usize>) -> Vec<f32> {
        let windows = block.len();
        // The STFT frames 1..4 of each window (frame 0, centred on the reflected padding, is
        // dropped), one row of 256 samples each.
        let mut frames = vec![0f32; windows * FRAMES * N_FFT];
        let mut row = [0f32; CONTEXT + WINDOW];
        for (w, out) in block.zip(frames.chunks_exact_mut(FRAMES * N_FFT)) {
            let start = w * WINDOW;
            row[..CONTEXT].copy_from_slice(if w == 0 { &[0.0; CONTEXT] } else { &padded[start - CONTEXT..start] });
            row[CONTEXT..].copy_from_slice(&padded[start..start + WINDOW]);
            // Reflect padding of 128 on each side, without repeating the edge sample.
            let at = |j: usize| -> f32 {
                let n = row.len();
                if j < HOP {
                    row[HOP - j]
                } else if j - HOP < n {
                    row[j - HOP]
                } else {
                    row[2 * n - 2 - (j - HOP)]
                }
            };
            for (f, frame) in out.chunks_exact_mut(N_FFT).enumerate() {
                for (n, v) in frame.iter_mut().enumerate() {
                    *v = at((f + 1) * HOP + n);
                }
            }
        }
        let rows = windows * FRAMES;
        let mut spectrum = vec![0f32; rows * 2 * BINS];
        product(&frames, N_FFT, &self.basis, &mut spectrum, rows, 2 * BINS);
        drop(frames);
        let mut x: Vec<f32> = spectrum
            .chunks_exact(2 * BINS)
            .flat_map(|s| (0..BINS).map(move |k| (s[k] * s[k] + s[BINS + k] * s[BINS + k]).sqrt()))
            .collect();
        let mut steps = FRAMES;
        for conv in &self.convs {
            (x, steps) = conv.forward(&x, windows, steps);
        }
        x
    }

    /// The LSTM over the windows in order, then each window's probability.
    fn decode(&self, features: &[f32], windows: usize) -> Vec<f32> {
        let mut gates = vec![0f32; windows * 4 * HIDDEN];
        product(features, HIDDEN, &self.input_weights, &mut gates, windows, 4 * HIDDEN);
        let (mut h, mut c) = ([0f32; HIDDEN], [0f32; HIDDEN]);
        let mut sums = [0f32; 4 * HIDDEN];
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        gates
            .chunks_exact_mut(4 * HIDDEN)
            .map(|g| {
                sums.fill(0.0);
                for (&h, weights) in h.iter().zip(self.recurrent.chunks_exact(4 * HIDDEN)) {
                    sums.iter_mut().zip(weights).for_each(|(s, w)| *s = h.mul_add(*w, *s));
                }
                for ((g, bias), sum) in g.iter_mut().zip(&self.gate_bias).zip(&sums) {
                    *g += bias + sum;
                }
                let (i, rest) = g.split_at(HIDDEN);
                let (o, rest) = rest.split_at(HIDDEN);
                let (f, candidate) = rest.split_at(HIDDEN);
                for k in 0..HIDDEN {
                    c[k] = sigmoid(f[k]) * c[k] + sigmoid(i[k]) * candidate[k].tanh();
                    h[k] = sigmoid(o[k]) * c[k].tanh();
                }
                let logit: f32 = h.iter().zip(&self.decoder).map(|(h, w)| h.max(0.0) * w).sum();
                sigmoid(logit + self.decoder_bias)
            })
            .collect()
    }
}

/// out (rows, n) = x (rows, k) * m (k, n).
fn product(x: &[f32], k: usize, m: &[f32], out: &mut [f32], rows: usize, n: usize) {
    if rows == 0 {
        return;
    }
    let parallelism = match rayon::current_num_threads() {
        threads if threads > 1 && rows * k * n > 1 << 22 => gemm::Parallelism::Rayon(threads),
        _ => gemm::Parallelism::None,
    };
    zoo_runtime::cpu::matmul((x, k), m, out, (rows, k, n), false, parallelism);
}

impl Conv {
    /// x: (windows, steps, inputs) -> ((windows, steps', outputs), steps'), padding 1, ReLU.
    fn forward(&self, x: &[f32], windows: usize, steps: usize) -> (Vec<f32>, usize) {
        let out_steps = (steps + 2 - 3) / self.stride + 1;
        let (cin, cout) = (self.inputs, self.outputs);
        let mut patches = vec![0f32; windows * out_steps * 3 * cin];
        for (r, patch) in patches.chunks_exact_mut(3 * cin).enumerate() {
            let (w, t) = (r / out_steps, r % out_steps);
            for k in 0..3 {
                // Input step t * stride + k - 1; outside 0..steps it is the zero padding.
                if let Some(s) = (t * self.stride + k).checked_sub(1).filter(|&s| s < steps) {
                    patch[k * cin..(k + 1) * cin].copy_from_slice(&x[(w * steps + s) * cin..][..cin]);
                }
            }
        }
        let rows = windows * out_steps;
        let mut out = vec![0f32; rows * cout];
        product(&patches, 3 * cin, &self.matrix, &mut out, rows, cout);
        for row in out.chunks_exact_mut(cout) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v = (*v + b).max(0.0));
        }
        (out, out_steps)
    }
}

/// `get_speech_timestamps`'s options (faster-whisper's `VadOptions`), in its units.
#[derive(Clone, Debug, PartialEq)]
pub struct VadOptions {
    /// A window at or above this probability is speech.
    pub threshold: f64,
    /// Below this, silence (between the two, a window changes nothing); `None`: threshold - 0.15.
    pub neg_threshold: Option<f64>,
    /// Speech shorter than this is dropped.
    pub min_speech_duration_ms: f64,
    /// Speech longer than this is split, at a silence of over 98 ms if there was one.
    pub max_speech_duration_s: f64,
    /// Silence shorter than this does not end speech.
    pub min_silence_duration_ms: f64,
    /// Kept on each side of the speech.
    pub speech_pad_ms: f64,
}

impl Default for VadOptions {
    fn default() -> Self {
        VadOptions {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_duration_ms: 0.0,
            max_speech_duration_s: f64::INFINITY,
            min_silence_duration_ms: 2000.0,
            speech_pad_ms: 400.0,
        }
    }
}

/// The speech in a recording of `samples` samples whose windows have `probabilities`, as
/// (start, end) sample ranges: faster-whisper's `get_speech_timestamps`, step for step (its
/// zero-means-unset positions, Python's float and integer arithmetic included).
pub fn speech_timestamps(probabilities: &[f32], samples: usize, options: &VadOptions) -> Vec<(usize, usize)> {
    let rate = f64::from(SAMPLE_RATE);
    // numpy compares its float32 probabilities with Python floats in float32.
    let threshold = options.threshold as f32;
    let negative = options.neg_threshold.unwrap_or((options.threshold - 0.15).max(0.01)) as f32;
    let min_speech = rate * options.min_speech_duration_ms / 1000.0;
    let pad = rate * options.speech_pad_ms / 1000.0;
    let max_speech = rate * options.max_speech_duration_s - WINDOW as f64 - 2.0 * pad;
    let min_silence = rate * options.min_silence_duration_ms / 1000.0;
    let min_silence_at_max_speech = rate * 98.0 / 1000.0;

    let mut triggered = false;
    let mut speeches: Vec<[i64; 2]> = Vec::new();
    // The open speech's start, if any.
    let mut start: Option<i64> = None;
    let (mut temp_end, mut prev_end, mut next_start) = (0i64, 0i64, 0i64);
    for (i, &p) in probabilities.iter().enumerate() {
        let pos = (WINDOW * i) as i64;
        if p >= threshold && temp_end != 0 {
            temp_end = 0;
            if next_start < prev_end {
                next_start = pos;
            }
        }
        if p >= threshold && !triggered {
            triggered = true;
            start = Some(pos);
            continue;
        }
        if let (true, Some(s)) = (triggered, start) {
            if (pos - s) as f64 > max_speech {
                if prev_end != 0 {
                    speeches.push([s, prev_end]);
                    start = None;
                    if next_start < prev_end {
                        triggered = false;
                    } else {
                        start = Some(next_start);
                    }
                    (prev_end, next_start, temp_end) = (0, 0, 0);
                } else {
                    speeches.push([s, pos]);
                    start = None;
                    (prev_end, next_start, temp_end) = (0, 0, 0);
                    triggered = false;
                    continue;
                }
            }
        }
        if p < negative && triggered {
            if temp_end == 0 {
                temp_end = pos;
            }
            if (pos - temp_end) as f64 > min_silence_at_max_speech {
                prev_end = temp_end;
            }
            if ((pos - temp_end) as f64) < min_silence {
                continue;
            }
            // (faster-whisper would fail here on an open speech without a start; there is none.)
            if let Some(s) = start {
                if (temp_end - s) as f64 > min_speech {
                    speeches.push([s, temp_end]);
                }
            }
            start = None;
            (prev_end, next_start, temp_end) = (0, 0, 0);
            triggered = false;
            continue;
        }
    }
    let samples = samples as i64;
    if let Some(s) = start {
        if (samples - s) as f64 > min_speech {
            speeches.push([s, samples]);
        }
    }

    // Padding, shared half and half where two speeches are closer than twice the pad.
    let last = speeches.len().saturating_sub(1);
    for i in 0..speeches.len() {
        if i == 0 {
            speeches[0][0] = (speeches[0][0] as f64 - pad).max(0.0) as i64;
        }
        if i != last {
            let gap = speeches[i + 1][0] - speeches[i][1];
            if (gap as f64) < 2.0 * pad {
                speeches[i][1] += gap.div_euclid(2);
                speeches[i + 1][0] = (speeches[i + 1][0] - gap.div_euclid(2)).max(0);
            } else {
                speeches[i][1] = (samples as f64).min(speeches[i][1] as f64 + pad) as i64;
                speeches[i + 1][0] = (speeches[i + 1][0] as f64 - pad).max(0.0) as i64;
            }
        } else {
            speeches[i][1] = (samples as f64).min(speeches[i][1] as f64 + pad) as i64;
        }
    }
    speeches.into_iter().map(|[s, e]| (s.max(0) as usize, e.max(0) as usize)).collect()
}

/// Where the speech-only audio's samples came from: times on it mapped back to the recording's,
/// as faster-whisper's `SpeechTimestampsMap` does.
pub struct SpeechMap {
    /// For each speech range, where it ends on the speech-only timeline (samples).
    chunk_ends: Vec<usize>,
    /// Seconds of silence removed before each range.
    silence_before: Vec<f64>,
}

impl SpeechMap {
    pub fn new(speech: &[(usize, usize)]) -> Self {
        let (mut silent, mut previous_end) = (0usize, 0usize);
        let mut chunk_ends = Vec::with_capacity(speech.len());
        let mut silence_before = Vec::with_capacity(speech.len());
        for &(start, end) in speech {
            silent += start.saturating_sub(previous_end);
            previous_end = end;
            chunk_ends.push(end - silent);
            silence_before.push(silent as f64 / f64::from(SAMPLE_RATE));
        }
        SpeechMap { chunk_ends, silence_before }
    }

    /// The speech range that time `t` (seconds on the speech-only timeline) falls in. An end
    /// that falls exactly on a join stays in the earlier range.
    pub fn range_of(&self, t: f64, is_end: bool) -> usize {
        let sample = (t * f64::from(SAMPLE_RATE)) as usize;
        let exact = if is_end { self.chunk_ends.iter().position(|&e| e == sample) } else { None };
        // bisect_right: the first range ending after the sample.
        exact.unwrap_or_else(|| self.chunk_ends.partition_point(|&e| e <= sample).min(self.chunk_ends.len().max(1) - 1))
    }

    /// The recording's time of `t` seconds in speech range `range`, to the hundredth as
    /// faster-whisper rounds it.
    pub fn original_in(&self, t: f64, range: usize) -> f64 {
        let before = self.silence_before.get(range).copied().unwrap_or(0.0);
        python_round_2(before + t)
    }

    /// The recording's time of `t` seconds on the speech-only timeline.
    pub fn original(&self, t: f64, is_end: bool) -> f64 {
        self.original_in(t, self.range_of(t, is_end))
    }
}

/// Python's `round(x, 2)`: the exact binary value rounded to two decimals (halves to even), which
/// Rust's formatting also does; `(x * 100).round() / 100` rounds the product instead (0.075 -> 0.08).
fn python_round_2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

/// Where a piece that starts `offset` samples into the speech-only audio starts, in seconds:
/// half a sample in. A piece starts exactly where two speech ranges join, and `offset / rate`
/// read back by [`SpeechMap`] (`t * rate`, truncated) can come out one sample short, which would
/// put the start in the range before, and the segment's start in the silence before it.
pub fn piece_start(offset: usize) -> f64 {
    (offset as f64 + 0.5) / f64::from(SAMPLE_RATE)
}

/// Segment and word times on the speech-only timeline moved to the recording's, as
/// faster-whisper's `restore_speech_timestamps`: a word's start and end go by the range its
/// middle is in (so a word never straddles removed silence), and a segment with words spans them.
pub fn restore_times(segments: &mut [Segment], map: &SpeechMap) {
    for segment in segments {
        match segment.words.as_mut().filter(|w| !w.is_empty()) {
            Some(words) => {
                for word in words.iter_mut() {
                    let range = map.range_of((word.start + word.end) / 2.0, false);
                    (word.start, word.end) = (map.original_in(word.start, range), map.original_in(word.end, range));
                }
                (segment.start, segment.end) = (words[0].start, words[words.len() - 1].end);
            }
            None => {
                (segment.start, segment.end) = (map.original(segment.start, false), map.original(segment.end, true))
            }
        }
    }
}

/// What a result says of the speech `--vad` kept: its ranges in seconds and their total.
pub fn speech_fields(regions: &[(usize, usize)]) -> Vec<(String, serde_json::Value)> {
    let seconds = |s: usize| (s as f64 / f64::from(SAMPLE_RATE) * 1000.0).round() / 1000.0;
    let ranges: Vec<serde_json::Value> =
        regions.iter().map(|&(s, e)| serde_json::json!([seconds(s), seconds(e)])).collect();
    let total: usize = regions.iter().map(|&(s, e)| e - s).sum();
    vec![("speech".into(), ranges.into()), ("speech_duration".into(), seconds(total).into())]
}

/// The speech ranges packed in order into groups of at most `max_samples` samples together, as
/// faster-whisper's `collect_chunks` packs them for the batched pipeline (a range longer than
/// that is a group of its own); each group is given to Whisper as one window.
pub fn group_speech(speech: &[(usize, usize)], max_samples: usize) -> Vec<Vec<(usize, usize)>> {
    let mut groups: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut length = 0;
    for &(start, end) in speech {
        match groups.last_mut() {
            Some(group) if length + (end - start) <= max_samples => group.push((start, end)),
            _ => {
                groups.push(vec![(start, end)]);
                length = 0;
            }
        }
        length += end - start;
    }
    groups
}

/// The speech ranges of `audio`, concatenated: what Whisper is given with `--vad`.
pub fn collect_speech(audio: &[f32], speech: &[(usize, usize)]) -> Vec<f32> {
    speech.iter().flat_map(|&(s, e)| audio[s.min(audio.len())..e.min(audio.len())].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probabilities above and below the thresholds, in windows: runs of speech, a short pause
    /// that the 2 s minimum silence bridges, a long one that ends the speech, and the padding
    /// shared where two speeches are closer than twice the pad.
    #[test]
    fn timestamps_follow_the_state_machine() {
        let mut p = vec![0.1f32; 400];
        p[20..60].fill(0.9); // speech, then 20 quiet windows (0.64 s < 2 s): bridged
        p[80..120].fill(0.9);
        p[120..125].fill(0.4); // between the thresholds: changes nothing
        p[250..300].fill(0.9); // after 130 quiet windows (4.2 s): a new speech
        let samples = 400 * WINDOW - 100;
        let got = speech_timestamps(&p, samples, &VadOptions::default());
        // Ends at the first quiet window after each run (the 0.4s never start silence), padded by 6400.
        assert_eq!(got, vec![(20 * 512 - 6400, 125 * 512 + 6400), (250 * 512 - 6400, 300 * 512 + 6400)]);
        // With 160 ms minimum silence the bridged pause splits, and the pad is shared half and
        // half across the 20-window gap (10240 samples < 2 * 6400).
        let short = VadOptions { min_silence_duration_ms: 160.0, ..VadOptions::default() };
        let got = speech_timestamps(&p, samples, &short);
        assert_eq!(got[0], (20 * 512 - 6400, 60 * 512 + 10240 / 2));
        assert_eq!(got[1].0, 80 * 512 - 10240 / 2);
        // Speech still open at the end runs to the recording's end; none at all gives nothing.
        let mut open = vec![0.1f32; 50];
        open[40..].fill(0.8);
        assert_eq!(
            speech_timestamps(&open, 50 * 512 - 3, &VadOptions::default()),
            vec![(40 * 512 - 6400, 50 * 512 - 3)]
        );
        assert!(speech_timestamps(&[0.02; 100], 100 * 512, &VadOptions::default()).is_empty());
    }

    /// Speech longer than the maximum is cut at its last pause of over 98 ms, or where it reaches
    /// the maximum when it had none: the expected ranges are faster-whisper's (its algorithm as
    /// `../shared/assets/reference/vad/tools/timestamps_from_probs.py` ports it, on these numbers).
    #[test]
    fn long_speech_is_split_as_faster_whisper_splits_it() {
        let mut p = vec![0.1f32; 300];
        p[10..200].fill(0.9);
        p[60..66].fill(0.2); // 192 ms: a pause to cut at
        p[120..122].fill(0.2); // 64 ms: too short to cut at
        let split = |max_s: f64, pad_ms: f64| {
            let options = VadOptions { max_speech_duration_s: max_s, speech_pad_ms: pad_ms, ..VadOptions::default() };
            speech_timestamps(&p, 300 * 512, &options)
        };
        assert_eq!(
            split(1.5, 100.0),
            [(3520, 25856), (25856, 32256), (32256, 54528), (54528, 75520), (75520, 96512), (96512, 104000)]
        );
        assert_eq!(
            split(1.0, 30.0),
            [
                (4640, 20224),
                (20224, 31200),
                (33312, 48896),
                (48896, 64256),
                (64256, 79616),
                (79616, 94976),
                (94976, 102880)
            ]
        );
    }

    /// Words go by the range their middle is in, a segment with words spans them, one without is
    /// mapped end by end; times are rounded as Python rounds them.
    #[test]
    fn segments_and_words_move_back_as_faster_whisper_moves_them() {
        use crate::words::Word;
        let word =
            |text: &str, start: f64, end: f64| Word { text: text.into(), start, end, confidence: 0.9, tokens: 1 };
        let segment = |start: f64, end: f64, words: Option<Vec<Word>>| Segment {
            start,
            end,
            text: String::new(),
            avg_logprob: 0.0,
            no_speech_prob: 0.0,
            temperature: 0.0,
            compression_ratio: 1.0,
            tokens: Vec::new(),
            words,
        };
        // 1 s of silence removed before 1-3 s, 3 s in all before 5-6 s: the join is at 2.0 s.
        let map = SpeechMap::new(&[(16000, 48000), (80000, 96000)]);
        let mut segments = vec![
            segment(0.5, 2.0, None),
            // "b" straddles the join, its middle (2.05) after it: both its ends move by 3 s.
            segment(1.5, 2.6, Some(vec![word("a", 1.5, 1.9), word("b", 1.9, 2.2), word("c", 2.2, 2.6)])),
        ];
        restore_times(&mut segments, &map);
        assert_eq!((segments[0].start, segments[0].end), (1.5, 3.0));
        let words: Vec<(f64, f64)> = segments[1].words.as_ref().unwrap().iter().map(|w| (w.start, w.end)).collect();
        assert_eq!(words, [(2.5, 2.9), (4.9, 5.2), (5.2, 5.6)]);
        assert_eq!((segments[1].start, segments[1].end), (2.5, 5.6));
        // 1200 samples of silence is 0.075 s: Python's round gives 0.07, not 0.08.
        assert_eq!(SpeechMap::new(&[(1200, 20000)]).original(0.0, false), 0.07);
    }

    #[test]
    fn times_map_back_across_the_removed_silence() {
        // Speech at 1-3 s and 5-6 s: 1 s removed before the first, 3 s before the second.
        let map = SpeechMap::new(&[(16000, 48000), (80000, 96000)]);
        assert_eq!(map.original(0.5, false), 1.5);
        assert_eq!(map.original(2.5, false), 5.5);
        // An end exactly at the join stays in the first range; a start there moves on.
        assert_eq!(map.original(2.0, true), 3.0);
        assert_eq!(map.original(2.0, false), 5.0);
        assert_eq!(collect_speech(&[1.0; 100], &[(10, 20), (90, 120)]).len(), 20);
    }

    /// A piece's start read back by the map falls in its own range, also for the offsets whose
    /// seconds multiply back to one sample short (about 1 in 120 of them).
    #[test]
    fn pieces_start_in_their_own_range() {
        let rate = f64::from(SAMPLE_RATE);
        let short =
            (1..3_000_000usize).filter(|&a| ((a as f64 / rate) * rate) as usize != a).take(50).collect::<Vec<_>>();
        assert!(!short.is_empty(), "no offset rounds short: the test would prove nothing");
        for a in short {
            // Speech [1000, 1000 + a) then, after a pause, more: the second piece starts at `a`.
            let map = SpeechMap::new(&[(1000, 1000 + a), (5000 + a, 9000 + a)]);
            assert_eq!(map.range_of(a as f64 / rate, false), 0, "{a}: the plain division does fall short");
            assert_eq!(map.range_of(piece_start(a), false), 1, "{a}");
            let start = map.original(piece_start(a), false);
            assert!((start - (5000 + a) as f64 / rate).abs() < 0.006, "{a}: starts at {start}");
        }
    }
}
