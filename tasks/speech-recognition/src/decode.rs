//! Whisper's decoding, as OpenAI's `transcribe()` does it: 30 s windows that seek to the last
//! complete timestamp, timestamp rules, suppression of non-speech tokens, temperature fallback on
//! repetitive or unlikely output, and a no-speech check so that silence yields no text.

use std::io::Write;

use rand::{Rng, SeedableRng};
use zoo_runtime::cpu;

use crate::mel::{LogMel, HOP_LENGTH, N_FRAMES};
use crate::model::Whisper;
use crate::text_decoder::DecoderState;

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// The encoder halves the frame rate: one audio position per two mel frames.
const INPUT_STRIDE: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Transcribe,
    Translate,
}

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub mode: Mode,
    /// `None`: detect (multilingual models) or English (English-only models).
    pub language: Option<String>,
    pub temperatures: Vec<f64>,
    pub compression_ratio_threshold: Option<f64>,
    pub logprob_threshold: Option<f64>,
    pub no_speech_threshold: Option<f64>,
    /// Feed the previous window's text as a prompt (helps consistency, risks carrying errors on).
    pub condition_on_previous_text: bool,
    /// The latest the first timestamp of a window may be, in seconds.
    pub max_initial_timestamp: f64,
    /// Beam width at temperature 0; 1 is greedy.
    pub beam_size: usize,
    /// Seed of the sampler used at temperatures above 0, so runs repeat exactly.
    pub seed: u64,
    /// Time and score each word (cross-attention alignment); costs one more decoder pass per window.
    pub word_timestamps: bool,
    /// Text that comes before the recording (names, spellings, a style): the first window's prompt,
    /// as OpenAI's `initial_prompt`.
    pub initial_prompt: Option<String>,
    /// Decode timestamp tokens (segments inside a window); without, a window is one segment.
    pub timestamps: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Transcribe,
            language: None,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            max_initial_timestamp: 1.0,
            beam_size: 1,
            seed: 0,
            word_timestamps: false,
            initial_prompt: None,
            timestamps: true,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub avg_logprob: f64,
    pub no_speech_prob: f64,
    pub temperature: f64,
    pub compression_ratio: f64,
    #[serde(skip)]
    pub tokens: Vec<u32>,
    /// With word timestamps: the segment's words, in order, inside the segment's times.
    pub words: Option<Vec<crate::words::Word>>,
}

#[derive(Debug, Clone)]
pub struct Transcript {
    pub language: String,
    pub language_probability: f64,
    pub duration: f64,
    pub segments: Vec<Segment>,
}

impl Transcript {
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect::<String>().trim().to_string()
    }
}

/// One window's decoding.
#[derive(Debug, Clone)]
struct WindowResult {
    /// Sampled tokens, end-of-text excluded.
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
    temperature: f64,
    compression_ratio: f64,
}

/// A piece of a recording decoded on its own: its 30 s log-mel window, the frames of it that
/// hold audio, and where it starts, in seconds.
pub struct Piece {
    pub window: Vec<f32>,
    pub frames: usize,
    pub time_offset: f64,
}

/// A window being turned into segments: its audio for word alignment, its length and its start.
struct Window<'a> {
    audio: &'a DecoderState,
    frames: usize,
    time_offset: f64,
}

/// gzip-free zlib ratio, as Whisper measures repetitiveness: highly repetitive text compresses well.
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(text.as_bytes()).expect("writing to memory");
    let compressed = z.finish().expect("writing to memory");
    text.len() as f64 / compressed.len() as f64
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|&l| l - log_sum).collect()
}

/// `ln Σ e^v`, over a whole vocabulary per decoded token, hence the vectorisable exp.
fn log_sum_exp(values: &[f32]) -> f32 {
    let max = cpu::reduce(values, f32::NEG_INFINITY, |v| v, |a, v| if v > a { v } else { a });
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + cpu::sum(values, |v| cpu::exp(v - max)).ln()
}

pub struct Decoder<'a> {
    pub whisper: &'a mut Whisper,
    pub options: DecodeOptions,
    rng: rand::rngs::StdRng,
}

impl<'a> Decoder<'a> {
    pub fn new(whisper: &'a mut Whisper, options: DecodeOptions) -> Self {
        let rng = rand::rngs::StdRng::seed_from_u64(options.seed);
        Self { whisper, options, rng }
    }

    /// The prompt's fixed part: start-of-transcript, language and task for multilingual models.
    fn sot_sequence(&self, language: Option<u32>) -> Vec<u32> {
        let t = &self.whisper.tokens;
        let mut seq = vec![t.sot];
        if self.whisper.multilingual {
            seq.push(language.unwrap_or_else(|| t.languages.first().map(|l| l.1).unwrap_or(t.sot)));
            seq.push(if self.options.mode == Mode::Translate { t.translate } else { t.transcribe });
        }
        seq
    }

    /// A window's prompt: the text before it (after `<|startofprev|>`, at most half the context),
    /// then the fixed part, then `<|notimestamps|>` when decoding without timestamps.
    fn prompt(&self, previous: &[u32], language: Option<u32>) -> Vec<u32> {
        let t = &self.whisper.tokens;
        let mut prompt = Vec::new();
        if !previous.is_empty() {
            let keep = self.whisper.config.max_target_positions / 2 - 1;
            prompt.push(t.sot_prev);
            prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
        }
        prompt.extend(self.sot_sequence(language));
        if !self.options.timestamps {
            prompt.push(t.no_timestamps);
        }
        prompt
    }

    /// Language probabilities from the first window: the decoder's next-token distribution after
    /// `<|startoftranscript|>`, over the language tokens only.
    fn detect_language(&mut self, audio: &DecoderState) -> candle_core::Result<(String, f64, u32)> {
        let sot = self.whisper.tokens.sot;
        let logits = self.whisper.step(&[sot], &mut audio.restart(), &[0])?.remove(0);
        let languages = &self.whisper.tokens.languages;
        let scores: Vec<f32> = languages.iter().map(|(_, id)| logits[*id as usize]).collect();
        let log_probs = log_softmax(&scores);
        let (best, lp) = log_probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("languages");
        let (code, id) = &languages[best];
        Ok((code.clone(), lp.exp() as f64, *id))
    }

    /// Masks `logits` as OpenAI's logit filters do; `sampled` are the tokens after the prompt.
    fn apply_filters(&self, logits: &mut [f32], sampled: &[u32]) {
        let t = &self.whisper.tokens;
        let vocab = logits.len();
        let ninf = f32::NEG_INFINITY;
        if sampled.is_empty() {
            for &id in &self.whisper.suppress_at_begin {
                if (id as usize) < vocab {
                    logits[id as usize] = ninf;
                }
            }
        }
        for &id in &self.whisper.suppress {
            logits[id as usize] = ninf;
        }
        if !self.options.timestamps {
            logits[t.timestamp_begin as usize..].fill(ninf);
            return;
        }

        // Timestamp rules.
        let ts_begin = t.timestamp_begin as usize;
        logits[t.no_timestamps as usize] = ninf;
        let is_ts = |tok: u32| tok as usize >= ts_begin;
        let last_was_ts = sampled.last().is_some_and(|&x| is_ts(x));
        let penultimate_was_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_was_ts {
            if penultimate_was_ts {
                // A pair is complete: text (or end) must follow.
                logits[ts_begin..].fill(ninf);
            } else {
                // An opened segment: close it with a timestamp or end.
                logits[..t.eot as usize].fill(ninf);
            }
        }
        if let Some(&last_ts) = sampled.iter().rev().find(|&&x| is_ts(x)) {
            // Time never goes back, and every segment lasts at least one step.
            let bound = if last_was_ts && !penultimate_was_ts { last_ts } else { last_ts + 1 } as usize;
            logits[ts_begin..bound.min(vocab)].fill(ninf);
        }
        if sampled.is_empty() {
            logits[..ts_begin].fill(ninf);
            let last_allowed = ts_begin + (self.options.max_initial_timestamp / TIME_PRECISION).round() as usize;
            if last_allowed + 1 < vocab {
                logits[last_allowed + 1..].fill(ninf);
            }
        }
        // When timestamps together outweigh every single text token, take a timestamp. Both sides
        // of the comparison share the softmax's normaliser, so raw logits compare the same way.
        let ts_mass = log_sum_exp(&logits[ts_begin..]);
        let best_text = logits[..ts_begin].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if ts_mass > best_text {
            logits[..ts_begin].fill(ninf);
        }
    }

    fn pick(&mut self, logits: &[f32], temperature: f64) -> u32 {
        if temperature <= 0.0 {
            return logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap_or(0);
        }
        let scaled: Vec<f32> = logits.iter().map(|&l| l / temperature as f32).collect();
        let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = scaled.iter().map(|&l| ((l - max) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            draw -= w;
            if draw <= 0.0 && *w > 0.0 {
                return i as u32;
            }
        }
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
    }

    /// Decodes one window at one temperature.
    fn decode_once(
        &mut self,
        audio: &DecoderState,
        prompt: &[u32],
        temperature: f64,
    ) -> candle_core::Result<WindowResult> {
        if temperature <= 0.0 && self.options.beam_size > 1 {
            return self.decode_beam(audio, prompt);
        }
        let t = self.whisper.tokens.clone();
        let n_ctx = self.whisper.config.max_target_positions;
        let sample_len = n_ctx / 2;
        let sot_index = prompt.iter().position(|&x| x == t.sot).unwrap_or(0);
        let mut tokens = prompt.to_vec();
        let sample_begin = tokens.len();
        let mut sum_logprob = 0f64;
        let mut no_speech_prob = 0f64;
        let mut state = audio.restart();
        while tokens.len() - sample_begin < sample_len && tokens.len() < n_ctx {
            let first = tokens.len() == sample_begin;
            let (new, positions) = if first {
                (&tokens[..], vec![sot_index, tokens.len() - 1])
            } else {
                (&tokens[tokens.len() - 1..], vec![0])
            };
            let mut all = self.whisper.step(new, &mut state, &positions)?;
            let mut logits = all.pop().expect("one per position");
            if first {
                let at_sot = &all[0];
                no_speech_prob = ((at_sot[t.no_speech as usize] - log_sum_exp(at_sot)) as f64).exp();
            }
            self.apply_filters(&mut logits, &tokens[sample_begin..]);
            let next = self.pick(&logits, temperature);
            sum_logprob += (logits[next as usize] - log_sum_exp(&logits)) as f64;
            if next == t.eot {
                break;
            }
            tokens.push(next);
        }
        let sampled = tokens[sample_begin..].to_vec();
        let text = self.text(&sampled);
        let avg_logprob = sum_logprob / (sampled.len() + 1) as f64;
        let compression_ratio = compression_ratio(&text);
        Ok(WindowResult { tokens: sampled, avg_logprob, no_speech_prob, temperature, compression_ratio })
    }

    /// Beam search at temperature 0, as OpenAI's `BeamSearchDecoder`: each beam proposes its
    /// `beam_size + 1` likeliest next tokens, the best `beam_size` unfinished sequences go on, ended
    /// ones are collected until there are `beam_size` of them; the winner has the highest log-probability
    /// per token.
    fn decode_beam(&mut self, audio: &DecoderState, prompt: &[u32]) -> candle_core::Result<WindowResult> {
        struct Beam {
            tokens: Vec<u32>,
            state: DecoderState,
            logprob: f64,
            logits: Vec<f32>,
        }
        let t = self.whisper.tokens.clone();
        let beam_size = self.options.beam_size;
        let n_ctx = self.whisper.config.max_target_positions;
        let sample_len = (n_ctx / 2).min(n_ctx.saturating_sub(prompt.len()));
        let sot_index = prompt.iter().position(|&x| x == t.sot).unwrap_or(0);
        let mut state = audio.restart();
        let mut first = self.whisper.step(prompt, &mut state, &[sot_index, prompt.len() - 1])?;
        let logits = first.pop().expect("two positions");
        let no_speech_prob = ((first[0][t.no_speech as usize] - log_sum_exp(&first[0])) as f64).exp();
        let mut beams = vec![Beam { tokens: Vec::new(), state, logprob: 0.0, logits }];
        let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
        for _ in 0..sample_len {
            let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
            for (index, beam) in beams.iter().enumerate() {
                let mut logits = beam.logits.clone();
                self.apply_filters(&mut logits, &beam.tokens);
                let norm = log_sum_exp(&logits);
                let mut order: Vec<u32> = (0..logits.len() as u32).collect();
                let keep = (beam_size + 1).min(order.len());
                order.select_nth_unstable_by(keep - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
                for &token in &order[..keep] {
                    if logits[token as usize].is_finite() {
                        candidates.push((beam.logprob + (logits[token as usize] - norm) as f64, index, token));
                    }
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut next: Vec<(f64, usize, u32)> = Vec::new();
            let mut newly_finished = Vec::new();
            for (score, index, token) in candidates {
                if token == t.eot {
                    newly_finished.push((beams[index].tokens.clone(), score));
                } else {
                    next.push((score, index, token));
                    if next.len() == beam_size {
                        break;
                    }
                }
            }
            for done in newly_finished {
                if finished.len() < beam_size {
                    finished.push(done);
                }
            }
            if finished.len() >= beam_size || next.is_empty() {
                break;
            }
            let mut advanced = Vec::with_capacity(next.len());
            for (score, index, token) in next {
                let parent = &beams[index];
                let mut state = parent.state.clone();
                let logits = self.whisper.step(&[token], &mut state, &[0])?.remove(0);
                let mut tokens = parent.tokens.clone();
                tokens.push(token);
                advanced.push(Beam { tokens, state, logprob: score, logits });
            }
            beams = advanced;
        }
        if finished.is_empty() {
            finished = beams.into_iter().map(|b| (b.tokens, b.logprob)).collect();
        }
        let per_token = |(tokens, logprob): &(Vec<u32>, f64)| logprob / tokens.len().max(1) as f64;
        let (tokens, logprob) =
            finished.into_iter().max_by(|a, b| per_token(a).total_cmp(&per_token(b))).expect("at least one sequence");
        let text = self.text(&tokens);
        let avg_logprob = logprob / (tokens.len() + 1) as f64;
        let compression_ratio = compression_ratio(&text);
        Ok(WindowResult { tokens, avg_logprob, no_speech_prob, temperature: 0.0, compression_ratio })
    }

    /// The text of `tokens`, timestamps and other special tokens left out.
    fn text(&self, tokens: &[u32]) -> String {
        let eot = self.whisper.tokens.eot;
        let text_tokens: Vec<u32> = tokens.iter().copied().filter(|&x| x < eot).collect();
        self.whisper.tokenizer.decode(&text_tokens, true).unwrap_or_default()
    }

    /// Decodes a window, retrying at higher temperatures while the output looks like a loop or
    /// is improbable (unless it is probably silence).
    fn decode_with_fallback(&mut self, audio: &DecoderState, prompt: &[u32]) -> candle_core::Result<WindowResult> {
        let temperatures = self.options.temperatures.clone();
        let mut result = None;
        for &temperature in &temperatures {
            let r = self.decode_once(audio, prompt, temperature)?;
            let done = self.acceptable(&r);
            result = Some(r);
            if done {
                break;
            }
        }
        Ok(result.expect("at least one temperature"))
    }

    /// Whether a window's decoding can stand: not a loop, not improbable, or probably silence.
    fn acceptable(&self, r: &WindowResult) -> bool {
        let too_repetitive = self.options.compression_ratio_threshold.is_some_and(|thr| r.compression_ratio > thr);
        let too_unlikely = self.options.logprob_threshold.is_some_and(|thr| r.avg_logprob < thr);
        let silence = self.options.no_speech_threshold.is_some_and(|thr| r.no_speech_prob > thr)
            && self.options.logprob_threshold.is_some_and(|thr| r.avg_logprob < thr);
        silence || !(too_repetitive || too_unlikely)
    }

    /// Whether a decoded window is taken for silence (and left without text).
    fn probably_silent(&self, r: &WindowResult) -> bool {
        self.options.no_speech_threshold.is_some_and(|thr| {
            r.no_speech_prob > thr && !self.options.logprob_threshold.is_some_and(|lp| r.avg_logprob > lp)
        })
    }

    /// Greedy decoding of several windows together at `temperature`, each from `prompt`: every
    /// step feeds the last token of each window still going through the decoder at once, which
    /// reads the weights once for all of them.
    fn decode_batch(
        &mut self,
        audios: &[&DecoderState],
        prompt: &[u32],
        temperature: f64,
    ) -> candle_core::Result<Vec<WindowResult>> {
        struct Row {
            tokens: Vec<u32>,
            sum_logprob: f64,
            no_speech_prob: f64,
            logits: Vec<f32>,
            state: Option<DecoderState>,
        }
        let t = self.whisper.tokens.clone();
        let n_ctx = self.whisper.config.max_target_positions;
        let sample_len = (n_ctx / 2).min(n_ctx.saturating_sub(prompt.len()));
        let sot_index = prompt.iter().position(|&x| x == t.sot).unwrap_or(0);
        let mut rows = Vec::with_capacity(audios.len());
        for audio in audios {
            // The prompt's tokens differ in position only, so each window takes its own first step.
            let mut state = audio.restart();
            let mut first = self.whisper.step(prompt, &mut state, &[sot_index, prompt.len() - 1])?;
            let logits = first.pop().expect("two positions");
            let no_speech_prob = ((first[0][t.no_speech as usize] - log_sum_exp(&first[0])) as f64).exp();
            rows.push(Row { tokens: Vec::new(), sum_logprob: 0.0, no_speech_prob, logits, state: Some(state) });
        }
        loop {
            let mut going = Vec::new();
            for (index, row) in rows.iter_mut().enumerate() {
                if row.state.is_none() {
                    continue;
                }
                let mut logits = std::mem::take(&mut row.logits);
                self.apply_filters(&mut logits, &row.tokens);
                let next = self.pick(&logits, temperature);
                row.sum_logprob += (logits[next as usize] - log_sum_exp(&logits)) as f64;
                if next == t.eot {
                    row.state = None;
                    continue;
                }
                row.tokens.push(next);
                if row.tokens.len() >= sample_len {
                    row.state = None;
                    continue;
                }
                going.push(index);
            }
            if going.is_empty() {
                break;
            }
            let tokens: Vec<u32> = going.iter().map(|&i| *rows[i].tokens.last().expect("just pushed")).collect();
            let mut states: Vec<DecoderState> =
                going.iter().map(|&i| rows[i].state.take().expect("still going")).collect();
            let logits = self.whisper.step_batch(&tokens, &mut states)?;
            for ((&i, state), logits) in going.iter().zip(states).zip(logits) {
                rows[i].state = Some(state);
                rows[i].logits = logits;
            }
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let compression_ratio = compression_ratio(&self.text(&row.tokens));
                WindowResult {
                    avg_logprob: row.sum_logprob / (row.tokens.len() + 1) as f64,
                    tokens: row.tokens,
                    no_speech_prob: row.no_speech_prob,
                    temperature,
                    compression_ratio,
                }
            })
            .collect())
    }

    /// Transcribes a whole recording.
    pub fn transcribe(&mut self, mel: &LogMel, content_frames: usize) -> candle_core::Result<Transcript> {
        let t = self.whisper.tokens.clone();
        let duration = content_frames as f64 * HOP_LENGTH as f64 / crate::audio::SAMPLE_RATE as f64;
        let mut segments = Vec::new();
        let mut all_tokens: Vec<u32> = self.initial_prompt_tokens()?;
        let mut prompt_reset_since = 0;
        let mut seek = 0usize;
        let (mut language, mut language_probability, mut language_token) = ("en".to_string(), 1.0, None);
        if self.whisper.multilingual {
            if let Some(code) = &self.options.language {
                language = code.clone();
                language_token = t.languages.iter().find(|(c, _)| c == code).map(|l| l.1);
            }
        }
        let mut first_window = true;
        while seek < content_frames {
            let time_offset = seek as f64 * HOP_LENGTH as f64 / crate::audio::SAMPLE_RATE as f64;
            let segment_size = N_FRAMES.min(content_frames - seek);
            let encoded = self.whisper.encode(mel.window(seek, segment_size))?;
            let audio = self.whisper.start(&encoded)?;
            if first_window && self.whisper.multilingual && language_token.is_none() {
                let (code, p, id) = self.detect_language(&audio)?;
                (language, language_probability, language_token) = (code, p, Some(id));
            }
            first_window = false;

            // Without conditioning, `prompt_reset_since` moves past every window, so only the
            // initial prompt can be left here, and only for the first window.
            let prompt = self.prompt(&all_tokens[prompt_reset_since..], language_token);
            let result = self.decode_with_fallback(&audio, &prompt)?;

            if self.probably_silent(&result) {
                seek += segment_size;
                continue;
            }

            let (pieces, consumed) = self.slice_segments(&result, time_offset, segment_size);
            seek += consumed;
            let window = Window { audio: &audio, frames: segment_size, time_offset };
            segments.extend(self.keep_segments(pieces, &window, language_token, &language, duration)?);
            all_tokens.extend(result.tokens.iter().copied());
            if !self.options.condition_on_previous_text || result.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
        }
        Ok(Transcript { language, language_probability, duration, segments })
    }

    /// Transcribes pieces of a recording each on its own, `batch_size` at a time, as
    /// faster-whisper's batched pipeline does with the speech `--vad` finds: no piece waits for the
    /// text before it (each has only the initial prompt), so greedy decoding runs a whole batch
    /// through the decoder together. A piece whose text looks like a loop or improbable is decoded
    /// again alone at the next temperatures; beam search decodes one piece at a time. Each piece
    /// is one segment, its times on the pieces' own timeline (each piece's `time_offset` added).
    pub fn transcribe_pieces(
        &mut self,
        pieces: impl Iterator<Item = Piece>,
        batch_size: usize,
        duration: f64,
    ) -> candle_core::Result<Transcript> {
        // Without timestamps, as faster-whisper's batched pipeline decodes by default: a piece
        // joins speech from several places, and Whisper asked for timestamps over it tends to end
        // early, leaving the rest of the piece untranscribed with no next window to pick it up.
        self.options.timestamps = false;
        let t = self.whisper.tokens.clone();
        let (mut language, mut language_probability, mut language_token) = ("en".to_string(), 1.0, None);
        if let (true, Some(code)) = (self.whisper.multilingual, &self.options.language) {
            language = code.clone();
            language_token = t.languages.iter().find(|(c, _)| c == code).map(|l| l.1);
        }
        let initial = self.initial_prompt_tokens()?;
        let mut segments = Vec::new();
        let mut pieces = pieces.peekable();
        let mut first = true;
        while pieces.peek().is_some() {
            let mut batch: Vec<Piece> = pieces.by_ref().take(batch_size.max(1)).collect();
            let mut audios = Vec::with_capacity(batch.len());
            for piece in &mut batch {
                let encoded = self.whisper.encode(std::mem::take(&mut piece.window))?;
                audios.push(self.whisper.start(&encoded)?);
            }
            if first && self.whisper.multilingual && language_token.is_none() {
                let (code, p, id) = self.detect_language(&audios[0])?;
                (language, language_probability, language_token) = (code, p, Some(id));
            }
            first = false;
            let prompt = self.prompt(&initial, language_token);
            let temperatures = self.options.temperatures.clone();
            let results = if self.options.beam_size > 1 {
                audios
                    .iter()
                    .map(|audio| self.decode_with_fallback(audio, &prompt))
                    .collect::<candle_core::Result<_>>()?
            } else {
                let mut results = self.decode_batch(&audios.iter().collect::<Vec<_>>(), &prompt, temperatures[0])?;
                for (result, audio) in results.iter_mut().zip(&audios) {
                    for &temperature in &temperatures[1..] {
                        if self.acceptable(result) {
                            break;
                        }
                        *result = self.decode_once(audio, &prompt, temperature)?;
                    }
                }
                results
            };
            for ((piece, audio), result) in batch.iter().zip(&audios).zip(results) {
                if self.probably_silent(&result) {
                    continue;
                }
                let (pieces, _) = self.slice_segments(&result, piece.time_offset, piece.frames);
                let window = Window { audio, frames: piece.frames, time_offset: piece.time_offset };
                segments.extend(self.keep_segments(pieces, &window, language_token, &language, duration)?);
            }
        }
        Ok(Transcript { language, language_probability, duration, segments })
    }

    /// The initial prompt's tokens (none without one).
    fn initial_prompt_tokens(&self) -> candle_core::Result<Vec<u32>> {
        Ok(match self.options.initial_prompt.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => self
                .whisper
                .tokenizer
                .encode(format!(" {text}"), false)
                .map_err(|e| candle_core::Error::Msg(format!("the prompt cannot be tokenised: {e}")))?
                .get_ids()
                .to_vec(),
            _ => Vec::new(),
        })
    }

    /// A window's segments as they are kept: inside the audio, the empty ones Whisper sometimes
    /// emits dropped, with word times when asked for.
    fn keep_segments(
        &self,
        mut kept: Vec<Segment>,
        window: &Window,
        language_token: Option<u32>,
        language: &str,
        duration: f64,
    ) -> candle_core::Result<Vec<Segment>> {
        kept.retain(|s| !s.text.trim().is_empty());
        for s in &mut kept {
            s.end = s.end.min(duration);
            s.start = s.start.min(s.end);
        }
        if self.options.word_timestamps {
            let sot_sequence = self.sot_sequence(language_token);
            self.add_words(
                window.audio,
                &sot_sequence,
                &mut kept,
                window.frames,
                window.time_offset,
                language,
                duration,
            )?;
        }
        Ok(kept)
    }

    /// A window's segments, split at its timestamp pairs, and how many frames of the window they
    /// cover: all of it, or up to the last complete timestamp when the text ran on past it (the
    /// next window starts there). Without timestamps, the whole window is one segment.
    fn slice_segments(&self, result: &WindowResult, time_offset: f64, segment_size: usize) -> (Vec<Segment>, usize) {
        let t = &self.whisper.tokens;
        let tokens = &result.tokens;
        let segment_duration = segment_size as f64 * HOP_LENGTH as f64 / crate::audio::SAMPLE_RATE as f64;
        let is_ts = |x: u32| x >= t.timestamp_begin;
        let single_timestamp_ending =
            tokens.len() >= 2 && !is_ts(tokens[tokens.len() - 2]) && is_ts(tokens[tokens.len() - 1]);
        let mut slices: Vec<usize> = (1..tokens.len()).filter(|&i| is_ts(tokens[i - 1]) && is_ts(tokens[i])).collect();
        let mut segments = Vec::new();
        if slices.is_empty() {
            let mut end = segment_duration;
            if let Some(&last) = tokens.iter().rev().find(|&&x| is_ts(x)) {
                if last != t.timestamp_begin {
                    end = (last - t.timestamp_begin) as f64 * TIME_PRECISION;
                }
            }
            segments.push(self.segment(time_offset, time_offset + end, tokens, result));
            return (segments, segment_size);
        }
        if single_timestamp_ending {
            slices.push(tokens.len());
        }
        let mut last_slice = 0;
        for &current in &slices {
            let piece = &tokens[last_slice..current];
            let start = (piece[0].saturating_sub(t.timestamp_begin)) as f64 * TIME_PRECISION;
            let end = (piece[piece.len() - 1].saturating_sub(t.timestamp_begin)) as f64 * TIME_PRECISION;
            segments.push(self.segment(time_offset + start, time_offset + end, piece, result));
            last_slice = current;
        }
        let consumed = if single_timestamp_ending {
            segment_size
        } else {
            (tokens[last_slice - 1] - t.timestamp_begin) as usize * INPUT_STRIDE
        };
        (segments, consumed)
    }

    /// Aligns the window's words and hands them to its segments in order; as Whisper does, a
    /// segment then spans its words (the alignment is finer than the 20 ms timestamp tokens' guess
    /// at where speech stops). Words never go back in time nor past the window.
    #[allow(clippy::too_many_arguments)]
    fn add_words(
        &self,
        audio: &DecoderState,
        sot_sequence: &[u32],
        segments: &mut [Segment],
        frames: usize,
        time_offset: f64,
        language: &str,
        duration: f64,
    ) -> candle_core::Result<()> {
        let eot = self.whisper.tokens.eot;
        let text_tokens: Vec<u32> =
            segments.iter().flat_map(|s| s.tokens.iter().copied().filter(|&x| x < eot)).collect();
        let mut words =
            crate::words::align(self.whisper, audio, sot_sequence, &text_tokens, frames, language)?.into_iter();
        let window_end =
            (time_offset + frames as f64 * HOP_LENGTH as f64 / crate::audio::SAMPLE_RATE as f64).min(duration);
        let mut floor = segments.first().map_or(time_offset, |s| s.start);
        let mut pending = words.next();
        for segment in segments.iter_mut() {
            let wanted = segment.tokens.iter().filter(|&&x| x < eot).count();
            let (mut taken, mut list) = (0, Vec::new());
            while taken < wanted {
                let Some(mut word) = pending.take() else { break };
                taken += word.tokens;
                word.start = (word.start + time_offset).clamp(floor, window_end);
                word.end = (word.end + time_offset).clamp(word.start, window_end);
                floor = word.end;
                list.push(word);
                pending = words.next();
            }
            if let (Some(first), Some(last)) = (list.first(), list.last()) {
                (segment.start, segment.end) = (first.start, last.end);
            }
            segment.words = Some(list);
        }
        Ok(())
    }

    fn segment(&self, start: f64, end: f64, tokens: &[u32], result: &WindowResult) -> Segment {
        Segment {
            start,
            end,
            text: self.text(tokens),
            avg_logprob: result.avg_logprob,
            no_speech_prob: result.no_speech_prob,
            temperature: result.temperature,
            compression_ratio: result.compression_ratio,
            tokens: tokens.to_vec(),
            words: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_compresses_well() {
        assert!(compression_ratio(&"the the the the ".repeat(20)) > 2.4);
        assert!(compression_ratio("And so my fellow Americans, ask not what your country can do for you.") < 2.4);
        assert_eq!(compression_ratio(""), 0.0);
    }
}
