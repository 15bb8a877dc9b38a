//! Word timing and confidence, as OpenAI's `find_alignment`: the decoder re-reads a window's text
//! while the cross-attention of the model's alignment heads is watched; those weights, normalised
//! per frame and median-filtered, are aligned to the tokens by dynamic time warping, and a word's
//! start and end are the frames where its first token and the next word's begin. A word's
//! confidence is the mean probability of its tokens.

use crate::model::Whisper;
use crate::text_decoder::DecoderState;

/// Encoder frames per second of audio (two mel frames each).
const FRAMES_PER_SECOND: f64 = 50.0;
const MEDIAN_WIDTH: usize = 7;
/// Languages written without spaces: each character group is a word.
const UNSPACED: &[&str] = &["zh", "ja", "th", "lo", "my", "yue"];
const PREPEND_PUNCTUATION: &str = "\"'“¿([{-";
const APPEND_PUNCTUATION: &str = "\"'.。,，!！?？:：”)]}、";

#[derive(Debug, Clone, serde::Serialize)]
pub struct Word {
    pub text: String,
    pub start: f64,
    pub end: f64,
    pub confidence: f64,
    #[serde(skip)]
    pub tokens: usize,
}

/// Splits tokens into pieces that decode to whole characters (a byte-level BPE token can hold
/// half of one).
fn unicode_pieces(whisper: &Whisper, tokens: &[u32]) -> Vec<(String, Vec<u32>)> {
    let mut pieces = Vec::new();
    let mut current = Vec::new();
    for &token in tokens {
        current.push(token);
        let text = whisper.tokenizer.decode(&current, false).unwrap_or_default();
        if !text.contains('\u{FFFD}') {
            pieces.push((text, std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        let text = whisper.tokenizer.decode(&current, false).unwrap_or_default();
        pieces.push((text, current));
    }
    pieces
}

/// Words and their tokens: a piece starting with a space, or punctuation, starts a new word.
fn split_words(whisper: &Whisper, tokens: &[u32], language: &str) -> Vec<(String, Vec<u32>)> {
    let pieces = unicode_pieces(whisper, tokens);
    if UNSPACED.contains(&language) {
        return pieces;
    }
    let mut words: Vec<(String, Vec<u32>)> = Vec::new();
    for (text, piece_tokens) in pieces {
        let special = piece_tokens[0] >= whisper.tokens.eot;
        let punctuation = !text.trim().is_empty() && text.trim().chars().all(|c| c.is_ascii_punctuation());
        match words.last_mut() {
            Some(last) if !(special || text.starts_with(' ') || punctuation) => {
                last.0.push_str(&text);
                last.1.extend(piece_tokens);
            }
            _ => words.push((text, piece_tokens)),
        }
    }
    words
}

/// Dynamic time warping over `cost` (rows x cols): the monotone path from the top-left to the
/// bottom-right corner of least total cost, as (row, col) pairs.
fn dtw(cost: &[f32], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let at = |i: usize, j: usize| i * (cols + 1) + j;
    let mut total = vec![f32::INFINITY; (rows + 1) * (cols + 1)];
    let mut trace = vec![0u8; (rows + 1) * (cols + 1)];
    total[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let (diagonal, up, left) = (total[at(i - 1, j - 1)], total[at(i - 1, j)], total[at(i, j - 1)]);
            let (best, step) = if diagonal < up && diagonal < left {
                (diagonal, 0)
            } else if up < diagonal && up < left {
                (up, 1)
            } else {
                (left, 2)
            };
            total[at(i, j)] = cost[(i - 1) * cols + j - 1] + best;
            trace[at(i, j)] = step;
        }
    }
    let (mut i, mut j) = (rows, cols);
    let mut path = Vec::new();
    while i > 0 && j > 0 {
        path.push((i - 1, j - 1));
        match trace[at(i, j)] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    path
}

/// Median of each `MEDIAN_WIDTH` window along a row, reflecting at the ends.
fn median_filter(row: &mut [f32]) {
    let n = row.len();
    if n <= MEDIAN_WIDTH / 2 {
        return;
    }
    let half = (MEDIAN_WIDTH / 2) as isize;
    let source = row.to_vec();
    let reflect = |i: isize| -> f32 {
        let last = n as isize - 1;
        let i = if i < 0 {
            -i
        } else if i > last {
            2 * last - i
        } else {
            i
        };
        source[i.clamp(0, last) as usize]
    };
    let mut window = [0f32; MEDIAN_WIDTH];
    for (k, value) in row.iter_mut().enumerate() {
        for (w, slot) in window.iter_mut().enumerate() {
            *slot = reflect(k as isize + w as isize - half);
        }
        window.sort_by(f32::total_cmp);
        *value = window[MEDIAN_WIDTH / 2];
    }
}

/// Attaches opening punctuation to the next word and closing punctuation to the previous one.
fn merge_punctuation(words: &mut Vec<Word>) {
    let mut i = words.len();
    while i >= 2 {
        i -= 1;
        let text = words[i - 1].text.trim().to_string();
        if words[i - 1].text.starts_with(' ') && text.chars().count() == 1 && PREPEND_PUNCTUATION.contains(&text) {
            let previous = words.remove(i - 1);
            let next = &mut words[i - 1];
            next.text = format!("{}{}", previous.text, next.text);
            next.tokens += previous.tokens;
        }
    }
    let mut i = 0;
    while i + 1 < words.len() {
        let text = words[i + 1].text.clone();
        if !text.starts_with(' ') && !text.is_empty() && text.chars().all(|c| APPEND_PUNCTUATION.contains(c)) {
            let next = words.remove(i + 1);
            words[i].text.push_str(&next.text);
            words[i].tokens += next.tokens;
        } else {
            i += 1;
        }
    }
}

/// Times (seconds from the window's start) and confidences of the words in `text_tokens`, the
/// window's text without timestamps; `frames` is the window's length in mel frames.
pub fn align(
    whisper: &Whisper,
    audio: &DecoderState,
    sot_sequence: &[u32],
    text_tokens: &[u32],
    frames: usize,
    language: &str,
) -> candle_core::Result<Vec<Word>> {
    let t = &whisper.tokens;
    if text_tokens.is_empty() || whisper.alignment_heads.is_empty() {
        return Ok(Vec::new());
    }
    let mut tokens = sot_sequence.to_vec();
    tokens.push(t.no_timestamps);
    tokens.extend_from_slice(text_tokens);
    tokens.push(t.eot);
    let prefix = sot_sequence.len();
    let mut state = audio.restart();
    let (hidden, weights) = whisper.decoder.forward_watching(&tokens, &mut state, &whisper.alignment_heads)?;
    let d = whisper.decoder.d_model();

    // Each text token's probability among text tokens, from the position before it.
    let eot = t.eot as usize;
    let probabilities: Vec<f32> = text_tokens
        .iter()
        .enumerate()
        .map(|(k, &token)| {
            let logits = whisper.decoder.logits(&hidden[(prefix + k) * d..][..d]);
            let text = &logits[..eot];
            let max = text.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = text.iter().map(|&l| (l - max).exp()).sum();
            ((logits[token as usize] - max).exp() / sum).min(1.0)
        })
        .collect();

    // Heads' weights over the window's frames, renormalised, standardised per frame over the
    // tokens, median-filtered along time, averaged over heads.
    let n = tokens.len();
    let cols = (frames / 2).clamp(1, audio.audio_frames());
    let keys = audio.audio_frames();
    let mut matrix = vec![0f32; n * cols];
    for head in &weights {
        let mut w: Vec<f32> = (0..n).flat_map(|i| head[i * keys..][..cols].to_vec()).collect();
        for row in w.chunks_exact_mut(cols) {
            let sum: f32 = row.iter().sum();
            if sum > 0.0 {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        for c in 0..cols {
            let mean = (0..n).map(|i| w[i * cols + c]).sum::<f32>() / n as f32;
            let var = (0..n).map(|i| (w[i * cols + c] - mean).powi(2)).sum::<f32>() / n as f32;
            let std = var.sqrt().max(1e-8);
            for i in 0..n {
                w[i * cols + c] = (w[i * cols + c] - mean) / std;
            }
        }
        for row in w.chunks_exact_mut(cols) {
            median_filter(row);
        }
        matrix.iter_mut().zip(&w).for_each(|(m, v)| *m += v / weights.len() as f32);
    }
    // Rows of the no-timestamps token and the text tokens.
    let rows = text_tokens.len() + 1;
    let cost: Vec<f32> = matrix[prefix * cols..(prefix + rows) * cols].iter().map(|v| -v).collect();
    let path = dtw(&cost, rows, cols);
    let mut jump_times = Vec::with_capacity(rows);
    let mut last_row = None;
    for &(row, col) in &path {
        if last_row != Some(row) {
            jump_times.push(col as f64 / FRAMES_PER_SECOND);
            last_row = Some(row);
        }
    }

    let mut with_end = text_tokens.to_vec();
    with_end.push(t.eot);
    let split = split_words(whisper, &with_end, language);
    let mut words = Vec::new();
    let mut boundary = 0;
    for (text, word_tokens) in split.iter().take(split.len().saturating_sub(1)) {
        let next = boundary + word_tokens.len();
        let time = |k: usize| jump_times.get(k).or(jump_times.last()).copied().unwrap_or(0.0);
        let confidence = probabilities[boundary..next.min(probabilities.len())].iter().map(|&p| p as f64).sum::<f64>()
            / word_tokens.len() as f64;
        words.push(Word {
            text: text.clone(),
            start: time(boundary),
            end: time(next),
            confidence,
            tokens: word_tokens.len(),
        });
        boundary = next;
    }
    merge_punctuation(&mut words);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // A 3 x 6 cost with zeros on a staircase: row 0 on cols 0-1, row 1 on 2-3, row 2 on 4-5.
        let mut cost = vec![1f32; 18];
        for (row, cols) in [(0, [0, 1]), (1, [2, 3]), (2, [4, 5])] {
            for c in cols {
                cost[row * 6 + c] = 0.0;
            }
        }
        let path = dtw(&cost, 3, 6);
        assert_eq!(path, vec![(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
    }

    #[test]
    fn median_filter_removes_spikes() {
        let mut row = vec![0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0];
        median_filter(&mut row);
        assert!(row.iter().all(|&v| v == 0.0), "{row:?}");
    }

    #[test]
    fn punctuation_joins_its_word() {
        let w = |text: &str| Word { text: text.into(), start: 0.0, end: 1.0, confidence: 1.0, tokens: 1 };
        let mut words = vec![w(" \""), w("Hello"), w(","), w(" world"), w(".\"")];
        merge_punctuation(&mut words);
        let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, vec![" \"Hello,", " world.\""]);
    }
}
