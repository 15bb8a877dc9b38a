//! Whisper's log-mel spectrogram, computed here rather than loaded from a blob of filters, so that
//! 80- and 128-bin models both work and the numbers can be checked against an independent
//! implementation (tests/data/speech/mel_reference.safetensors).

use rayon::prelude::*;
use realfft::RealFftPlanner;

pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// One Whisper window: 30 s of 10 ms frames.
pub const N_FRAMES: usize = 3000;
pub const CHUNK_SAMPLES: usize = N_FRAMES * HOP_LENGTH;
/// Zeros after a piece decoded alone in one window: enough that every frame inside the piece
/// sees zeros past its end rather than the reflection at the signal's edge.
pub const PIECE_PADDING: usize = N_FFT;

/// A log-mel spectrogram, `n_mels` rows of `n_frames` values (Whisper's layout).
#[derive(Debug, Clone)]
pub struct LogMel {
    pub n_mels: usize,
    pub n_frames: usize,
    pub data: Vec<f32>,
}

impl LogMel {
    /// Frames `start..start + len` (at most `N_FRAMES`) as one encoder input, zero-padded to
    /// `N_FRAMES` as Whisper pads a mel segment (zeros in log-mel space, not silence).
    pub fn window(&self, start: usize, len: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.n_mels * N_FRAMES];
        let available = self.n_frames.saturating_sub(start).min(len).min(N_FRAMES);
        for (mel, row) in out.chunks_exact_mut(N_FRAMES).enumerate() {
            let src = &self.data[mel * self.n_frames + start..][..available];
            row[..available].copy_from_slice(src);
        }
        out
    }
}

/// The Slaney-style mel filterbank of librosa (`htk=False, norm="slaney"`), which Whisper's
/// `mel_filters.npz` holds: `n_mels` rows over the `N_FFT / 2 + 1` FFT bins.
pub fn mel_filters(sample_rate: usize, n_fft: usize, n_mels: usize) -> Vec<f32> {
    // Linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let log_step = 6.4f64.ln() / 27.0;
    let hz_to_mel =
        |hz: f64| if hz >= MIN_LOG_HZ { MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step } else { hz / F_SP };
    let mel_to_hz =
        |mel: f64| if mel >= MIN_LOG_MEL { MIN_LOG_HZ * (log_step * (mel - MIN_LOG_MEL)).exp() } else { F_SP * mel };

    let n_bins = n_fft / 2 + 1;
    let max_mel = hz_to_mel(sample_rate as f64 / 2.0);
    let band_edges: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64)).collect();
    let bin_hz = |bin: usize| bin as f64 * sample_rate as f64 / n_fft as f64;

    let mut filters = vec![0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (low, centre, high) = (band_edges[m], band_edges[m + 1], band_edges[m + 2]);
        // Equal area per band ("slaney" normalisation).
        let norm = 2.0 / (high - low);
        for bin in 0..n_bins {
            let f = bin_hz(bin);
            let rising = (f - low) / (centre - low);
            let falling = (high - f) / (high - centre);
            filters[m * n_bins + bin] = (rising.min(falling).max(0.0) * norm) as f32;
        }
    }
    filters
}

/// Log-mel spectrogram of 16 kHz mono `samples`, with `padding` zeros appended first (Whisper's
/// transcribe appends 30 s so that the last window is complete). Follows OpenAI's
/// `log_mel_spectrogram`: periodic Hann window, centred frames with reflect padding, power
/// spectrum, the last frame dropped, log10 clamped to 8 below the maximum, then scaled.
pub fn log_mel_spectrogram(samples: &[f32], padding: usize, filters: &[f32], n_mels: usize) -> LogMel {
    let n_bins = N_FFT / 2 + 1;
    assert_eq!(filters.len(), n_mels * n_bins, "filterbank shape");
    let half = N_FFT / 2;
    let len = samples.len() + padding;
    let signal = |i: usize| if i < samples.len() { samples[i] } else { 0.0 };
    // Index into the reflect-padded signal without materialising it; folds repeatedly so that a
    // signal shorter than the padding cannot index out of bounds.
    let centred = |j: isize| -> f32 {
        if len < 2 {
            return signal(0) * (len as f32);
        }
        let last = len as isize - 1;
        let mut i = j - half as isize;
        while i < 0 || i > last {
            i = if i < 0 { -i } else { 2 * last - i };
        }
        signal(i as usize)
    };
    let n_frames = (1 + len / HOP_LENGTH).saturating_sub(1);
    let window: Vec<f32> =
        (0..N_FFT).map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32).collect();
    let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);

    // Frame-major while computing (each frame independent), transposed at the end.
    let mut by_frame = vec![0f32; n_frames * n_mels];
    const FRAMES_PER_TASK: usize = 64;
    by_frame.par_chunks_mut(FRAMES_PER_TASK * n_mels).enumerate().for_each(|(task, out)| {
        let mut input = fft.make_input_vec();
        let mut spectrum = fft.make_output_vec();
        let mut scratch = fft.make_scratch_vec();
        let mut power = vec![0f32; n_bins];
        for (k, mels) in out.chunks_exact_mut(n_mels).enumerate() {
            let start = ((task * FRAMES_PER_TASK + k) * HOP_LENGTH) as isize;
            for (n, x) in input.iter_mut().enumerate() {
                *x = centred(start + n as isize) * window[n];
            }
            fft.process_with_scratch(&mut input, &mut spectrum, &mut scratch).expect("buffers sized by the plan");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, value) in mels.iter_mut().enumerate() {
                let row = &filters[m * n_bins..][..n_bins];
                let energy: f32 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
                *value = energy.max(1e-10).log10();
            }
        }
    });

    let max = by_frame.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let floor = max - 8.0;
    let mut data = vec![0f32; n_mels * n_frames];
    for (frame, mels) in by_frame.chunks_exact(n_mels).enumerate() {
        for (m, &v) in mels.iter().enumerate() {
            data[m * n_frames + frame] = (v.max(floor) + 4.0) / 4.0;
        }
    }
    LogMel { n_mels, n_frames, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_triangles_of_equal_area() {
        let filters = mel_filters(16_000, N_FFT, 80);
        let n_bins = N_FFT / 2 + 1;
        for row in filters.chunks_exact(n_bins) {
            assert!(row.iter().all(|&w| w >= 0.0));
            // Every band covers at least one bin, and the peaks rise then fall once.
            let peak = row.iter().cloned().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
            assert!(row[peak] > 0.0);
            assert!(row[..peak].windows(2).all(|w| w[0] <= w[1]));
            assert!(row[peak..].windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn a_tone_lights_up_the_band_that_holds_it() {
        let filters = mel_filters(16_000, N_FFT, 80);
        let tone: Vec<f32> =
            (0..16_000).map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin()).collect();
        let mel = log_mel_spectrogram(&tone, 0, &filters, 80);
        assert_eq!(mel.n_frames, 100);
        let frame = 50;
        let loudest = (0..80).max_by(|&a, &b| mel.data[a * 100 + frame].total_cmp(&mel.data[b * 100 + frame])).unwrap();
        // 440 Hz is on the linear part of the scale: mel 6.6 of 45.2 over 81 steps ≈ band 11.
        let n_bins = N_FFT / 2 + 1;
        let bin = (440.0 * N_FFT as f32 / 16_000.0).round() as usize;
        assert!(filters[loudest * n_bins + bin] > 0.0, "band {loudest} does not cover 440 Hz");
    }

    #[test]
    fn silence_is_flat_and_finite() {
        let filters = mel_filters(16_000, N_FFT, 80);
        let mel = log_mel_spectrogram(&[0.0; 1600], 0, &filters, 80);
        assert!(mel.data.iter().all(|&v| v == mel.data[0] && v.is_finite()));
    }

    /// A piece's window is the same with PIECE_PADDING zeros as with the 30 s the sequential path
    /// appends: for pieces of several lengths, up to a whole window.
    #[test]
    fn a_pieces_window_needs_only_one_fft_of_padding() {
        let filters = mel_filters(16_000, N_FFT, 80);
        let noise = zoo_runtime::test_support::pseudo_random(CHUNK_SAMPLES, 5);
        for len in [1_000, 16_000, 77_777, 160_000 * 3 - 1, CHUNK_SAMPLES] {
            let piece = &noise[..len];
            let frames = (len / HOP_LENGTH).min(N_FRAMES);
            let short = log_mel_spectrogram(piece, PIECE_PADDING, &filters, 80).window(0, frames);
            let long = log_mel_spectrogram(piece, CHUNK_SAMPLES, &filters, 80).window(0, frames);
            assert_eq!(short, long, "a piece of {len} samples");
        }
    }
}
