//! Audio files in, 16 kHz mono f32 samples out.
//!
//! WAV goes through hound (any rate, 8/16/24/32-bit integer or 32-bit float, WAVE_FORMAT_EXTENSIBLE);
//! FLAC, MP3, Ogg Vorbis and the WAV encodings hound does not read (A-law, µ-law, 64-bit float)
//! through symphonia. The container is chosen by the file's first bytes, the extension only breaks a tie
//! for MP3 streams that start with junk. Channels are averaged, then a band-limited FFT resampler
//! (rubato) brings the signal to [`SAMPLE_RATE`]; 16 kHz input is copied through untouched.
//!
//! Policy on damaged files: a WAV whose header declares more samples than the file holds, and a
//! FLAC/MP3/Ogg stream that stops early, decode to the samples that are present (a cut recording is
//! still worth transcribing); a header that itself is cut short, or one that makes no sense (zero
//! channels, a sample rate of 0), is an error. Nothing here panics on bad input from hound or from
//! our own code.

use std::io::Cursor;
use std::path::Path;

use rubato::Resampler;
use zoo_runtime::ReadLimit;

/// Whisper's sample rate; every decoded input is resampled to it.
pub const SAMPLE_RATE: u32 = 16_000;

/// The longest audio [`decode`] accepts: 4 hours. At 16 kHz that is 230 M samples (920 MB of f32),
/// about what a transcription run can hold without surprising anyone; longer recordings should be
/// split first.
pub const MAX_DURATION_S: f64 = 4.0 * 3600.0;

/// Source sample rates outside this range are refused rather than resampled: below it there is no
/// speech band left, and the FFT resampler's block sizes grow with the ratio.
pub const MIN_SOURCE_RATE: u32 = 1_000;
pub const MAX_SOURCE_RATE: u32 = 768_000;

/// Decoded audio, ready for the log-mel spectrogram.
#[derive(Debug, Clone)]
pub struct Audio {
    /// Mono samples at [`SAMPLE_RATE`], nominally in [-1, 1].
    pub samples: Vec<f32>,
    /// The file's own sample rate and channel count, for reports.
    pub source_rate: u32,
    pub source_channels: u16,
    /// Seconds of audio the header declared, when the file holds less (it was cut short).
    pub declared_duration_s: Option<f64>,
}

impl Audio {
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / SAMPLE_RATE as f64
    }
}

/// Why a file could not be decoded. The messages are meant for the user and do not name the file:
/// the caller prefixes it.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error("not a WAV/FLAC/MP3/OGG audio file ({hint})")]
    NotAudio { hint: String },
    /// A file of a known format whose contents are damaged or contradictory.
    #[error("{0}")]
    Invalid(String),
    /// A well-formed file in an encoding zoo does not decode.
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    #[error("{}", too_long_message(*.duration_s, *.max_s))]
    TooLong {
        /// `None` when the file does not say how long it is and decoding was stopped at the limit.
        duration_s: Option<f64>,
        max_s: f64,
    },
    #[error("the file holds no audio samples")]
    NoSamples,
}

fn too_long_message(duration_s: Option<f64>, max_s: f64) -> String {
    match duration_s {
        Some(d) => format!(
            "the audio lasts {}, longer than the {} limit (raise it with --max-duration SECONDS)",
            human_duration(d),
            human_duration(max_s)
        ),
        None => {
            format!(
                "the audio lasts longer than the {} limit (raise it with --max-duration SECONDS)",
                human_duration(max_s)
            )
        }
    }
}

fn human_duration(s: f64) -> String {
    if s >= 3600.0 {
        let minutes = (s / 60.0).round() as u64;
        format!("{} h {:02} min", minutes / 60, minutes % 60)
    } else if s >= 60.0 {
        let secs = s.round() as u64;
        format!("{} min {:02} s", secs / 60, secs % 60)
    } else {
        format!("{s:.1} s")
    }
}

/// The most bytes an audio file within `max_duration_s` may take: 192 kB a second (16-bit stereo
/// at 48 kHz, uncompressed) and room for tags and cover art, so that --max-duration raises both.
/// Longer high-resolution recordings need a higher --max-duration than their length.
pub fn read_limit(max_duration_s: f64) -> ReadLimit {
    let max_bytes = (max_duration_s * 192_000.0).min(u64::MAX as f64) as u64;
    ReadLimit { max_bytes: max_bytes.saturating_add(32 << 20), raised_by: "--max-duration" }
}

/// Decodes a whole file's bytes; `path` only picks the container by extension when the bytes do not say.
/// Audio longer than [`MAX_DURATION_S`] is refused.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Audio, AudioError> {
    decode_with_limit(bytes, path, MAX_DURATION_S)
}

/// [`decode`] with another duration limit, in seconds of audio. Where the header states the length
/// (WAV, most FLAC) the limit is checked before any sample buffer is allocated; otherwise decoding
/// stops as soon as the limit is passed.
pub fn decode_with_limit(bytes: &[u8], path: &Path, max_duration_s: f64) -> Result<Audio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    match sniff(bytes, path)? {
        (Container::Wav, _) => decode_wav(bytes, max_duration_s),
        (container, offset) => decode_compressed(&bytes[offset..], container, max_duration_s),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Wav,
    Flac,
    Mp3,
    Ogg,
}

impl Container {
    fn name(self) -> &'static str {
        match self {
            Container::Wav => "WAV",
            Container::Flac => "FLAC",
            Container::Mp3 => "MP3",
            Container::Ogg => "Ogg",
        }
    }
}

/// The container and the byte offset its stream starts at (past any ID3v2 tags).
fn sniff(bytes: &[u8], path: &Path) -> Result<(Container, usize), AudioError> {
    if bytes.starts_with(b"RIFF") {
        // A RIFF file too short to name its form is a cut WAV header far more often than anything else.
        if bytes.len() < 12 || &bytes[8..12] == b"WAVE" {
            return Ok((Container::Wav, 0));
        }
        return Err(AudioError::NotAudio { hint: format!("it is a RIFF '{}' file", printable(&bytes[8..12])) });
    }
    if bytes.starts_with(b"RF64") || bytes.starts_with(b"BW64") {
        return Err(AudioError::Unsupported("64-bit WAV (RF64/BW64) files; convert to FLAC or split the file".into()));
    }
    if bytes.starts_with(b"fLaC") {
        return Ok((Container::Flac, 0));
    }
    if bytes.starts_with(b"OggS") {
        return Ok((Container::Ogg, 0));
    }
    let offset = skip_id3v2(bytes);
    if offset > 0 {
        // Some taggers put ID3v2 in front of FLAC too.
        let rest = &bytes[offset.min(bytes.len())..];
        let container = if rest.starts_with(b"fLaC") { Container::Flac } else { Container::Mp3 };
        return Ok((container, offset.min(bytes.len())));
    }
    if is_mpeg_frame_header(bytes) {
        return Ok((Container::Mp3, 0));
    }
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if matches!(extension.as_deref(), Some("mp3" | "mp2" | "mpga")) {
        // MP3 has no file header; the demuxer searches for the first frame past leading junk.
        return Ok((Container::Mp3, 0));
    }
    Err(AudioError::NotAudio { hint: describe_unknown(bytes) })
}

/// The length of the ID3v2 tags at the start of `bytes` (0 when there are none).
fn skip_id3v2(bytes: &[u8]) -> usize {
    let mut offset = 0usize;
    while let Some(header) = bytes.get(offset..offset + 10) {
        if &header[..3] != b"ID3" {
            break;
        }
        // Tag sizes are "syncsafe": 7 bits per byte.
        let size = header[6..10].iter().fold(0usize, |acc, &b| (acc << 7) | (b & 0x7f) as usize);
        let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
        offset += 10 + size + footer;
    }
    offset
}

/// An MPEG audio frame sync with a valid layer, bitrate and sample-rate index.
fn is_mpeg_frame_header(bytes: &[u8]) -> bool {
    match bytes {
        [0xff, b1, b2, ..] => b1 & 0xe0 == 0xe0 && b1 & 0x06 != 0 && b2 >> 4 != 0x0f && (b2 >> 2) & 0x03 != 0x03,
        _ => false,
    }
}

fn describe_unknown(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(24)];
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return "it looks like an MP4/M4A file; convert it to WAV or FLAC first".into();
    }
    if head.iter().all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        let ellipsis = if bytes.len() > head.len() { "…" } else { "" };
        return format!("it starts with text: \"{}{ellipsis}\"", printable(head).trim_end());
    }
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("it starts with the bytes {}", hex.join(" "))
}

fn printable(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect()
}

fn check_rate_and_channels(rate: u32, channels: usize) -> Result<(), AudioError> {
    if channels == 0 {
        return Err(AudioError::Invalid("the header declares zero channels".into()));
    }
    if rate == 0 {
        return Err(AudioError::Invalid("the header declares a sample rate of 0 Hz".into()));
    }
    if !(MIN_SOURCE_RATE..=MAX_SOURCE_RATE).contains(&rate) {
        return Err(AudioError::Unsupported(format!(
            "a sample rate of {rate} Hz (zoo reads {MIN_SOURCE_RATE}–{MAX_SOURCE_RATE} Hz)"
        )));
    }
    Ok(())
}

fn check_duration(frames: u64, rate: u32, max_duration_s: f64) -> Result<(), AudioError> {
    let duration_s = frames as f64 / rate as f64;
    if duration_s > max_duration_s {
        return Err(AudioError::TooLong { duration_s: Some(duration_s), max_s: max_duration_s });
    }
    Ok(())
}

fn decode_wav(bytes: &[u8], max_duration_s: f64) -> Result<Audio, AudioError> {
    let reader = match hound::WavReader::new(Cursor::new(bytes)) {
        Ok(reader) => reader,
        // hound reads PCM and float only; symphonia also knows A-law, µ-law and 64-bit float.
        // hound also refuses the 0xFFFFFFFF data length that streaming writers (ffmpeg to a pipe)
        // leave, as not a whole number of samples; symphonia reads such a stream to its end.
        Err(hound::Error::Unsupported)
        | Err(hound::Error::FormatError("bits per sample is not 32"))
        | Err(hound::Error::FormatError("data chunk length is not a multiple of sample size")) => {
            return decode_compressed(bytes, Container::Wav, max_duration_s);
        }
        Err(e) => return Err(wav_header_error(e)),
    };
    let spec = reader.spec();
    let channels = spec.channels as usize;
    check_rate_and_channels(spec.sample_rate, channels)?;
    let declared_samples = reader.len() as usize;
    if declared_samples == 0 {
        return Err(AudioError::NoSamples);
    }
    // hound stops right after the data chunk's 8-byte header, whose last 4 bytes are the declared length.
    let data_start = reader.into_inner().position() as usize;
    let declared_bytes = u32::from_le_bytes([
        bytes[data_start - 4],
        bytes[data_start - 3],
        bytes[data_start - 2],
        bytes[data_start - 1],
    ]) as usize;
    let bytes_per_sample = (declared_bytes / declared_samples).max(1);
    // A data chunk longer than the file (a cut download, or a streaming writer's 0xFFFFFFFF
    // placeholder) decodes to the whole frames present.
    let present_samples = declared_samples.min((bytes.len() - data_start) / bytes_per_sample);
    let frames = present_samples / channels;
    if frames == 0 {
        return Err(AudioError::NoSamples);
    }
    // 0xFFFFFFFF is what streaming writers put before they know the length: no news there.
    let cut_short = present_samples < declared_samples && declared_bytes != u32::MAX as usize;
    let declared_duration_s = cut_short.then(|| (declared_samples / channels) as f64 / f64::from(spec.sample_rate));
    check_duration(frames as u64, spec.sample_rate, max_duration_s)?;

    let mut reader = hound::WavReader::new(Cursor::new(bytes)).map_err(wav_header_error)?;
    let mut sink = MonoSink::new(spec.sample_rate, frames as u64)?;
    let taken = frames * channels;
    match spec.sample_format {
        hound::SampleFormat::Int => {
            if !(8..=32).contains(&spec.bits_per_sample) {
                return Err(AudioError::Unsupported(format!("{}-bit integer WAV samples", spec.bits_per_sample)));
            }
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            mix_wav_samples(reader.samples::<i32>().take(taken), channels, &mut sink, |s| s as f32 * scale)?;
        }
        hound::SampleFormat::Float => {
            // A NaN or infinity would poison every mel frame it touches.
            mix_wav_samples(reader.samples::<f32>().take(taken), channels, &mut sink, |s| {
                if s.is_finite() {
                    s
                } else {
                    0.0
                }
            })?;
        }
    }
    Ok(Audio {
        samples: sink.finish()?,
        source_rate: spec.sample_rate,
        source_channels: spec.channels,
        declared_duration_s,
    })
}

fn mix_wav_samples<S>(
    samples: impl Iterator<Item = hound::Result<S>>,
    channels: usize,
    sink: &mut MonoSink,
    to_f32: impl Fn(S) -> f32,
) -> Result<(), AudioError> {
    let weight = 1.0 / channels as f32;
    let mut sum = 0.0f32;
    let mut channel = 0;
    for sample in samples {
        sum += to_f32(sample.map_err(wav_sample_error)?);
        channel += 1;
        if channel == channels {
            sink.push(sum * weight)?;
            sum = 0.0;
            channel = 0;
        }
    }
    Ok(())
}

fn wav_header_error(e: hound::Error) -> AudioError {
    match e {
        hound::Error::IoError(_) => AudioError::Invalid(
            "the WAV header is cut short (the file ends inside it, or a chunk declares more bytes than the file has)"
                .into(),
        ),
        hound::Error::FormatError(reason) => AudioError::Invalid(format!("malformed WAV header: {reason}")),
        hound::Error::Unsupported => AudioError::Unsupported("this WAV encoding".into()),
        other => AudioError::Invalid(format!("malformed WAV file: {other}")),
    }
}

fn wav_sample_error(e: hound::Error) -> AudioError {
    match e {
        hound::Error::Unsupported | hound::Error::TooWide => {
            AudioError::Unsupported("this WAV sample width (zoo reads 8, 16, 24 and 32-bit samples)".into())
        }
        other => AudioError::Invalid(format!("unreadable WAV samples: {other}")),
    }
}

/// FLAC, MP3, Ogg Vorbis, and the WAV encodings hound leaves to symphonia.
fn decode_compressed(bytes: &[u8], container: Container, max_duration_s: f64) -> Result<Audio, AudioError> {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
    use symphonia::core::errors::Error as SymError;
    use symphonia::core::formats::{FormatOptions, FormatReader};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::default::formats::{FlacReader, MpaReader, OggReader, WavReader};

    let name = container.name();
    // MediaSourceStream wants an owned 'static source; a copy of the compressed bytes is cheap next to
    // the decoded samples.
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    // Gapless mode trims the MP3 encoder's delay and padding so the samples line up with the original.
    let options = FormatOptions { enable_gapless: true, ..Default::default() };
    let opened: Result<Box<dyn FormatReader>, SymError> = match container {
        Container::Flac => FlacReader::try_new(source, &options).map(|r| Box::new(r) as _),
        Container::Mp3 => MpaReader::try_new(source, &options).map(|r| Box::new(r) as _),
        Container::Ogg => OggReader::try_new(source, &options).map(|r| Box::new(r) as _),
        Container::Wav => WavReader::try_new(source, &options).map(|r| Box::new(r) as _),
    };
    let mut format = opened.map_err(|e| match e {
        SymError::IoError(_) => AudioError::Invalid(format!("the {name} header is cut short")),
        SymError::Unsupported(what) => AudioError::Unsupported(format!("{name} file: {what}")),
        other => AudioError::Invalid(format!("malformed {name} file: {}", symphonia_reason(&other))),
    })?;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Invalid(format!("the {name} file has no audio track")))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    // A streaming writer's WAV declares 0xFFFFFFFF bytes, which is no duration at all: a WAV's
    // stated length counts only where the file could hold it (it is uncompressed, at least a byte a
    // frame). The decoding loop below still stops past the limit.
    let stated = params.n_frames.filter(|&frames| container != Container::Wav || frames <= bytes.len() as u64);
    if let (Some(frames), Some(rate)) = (stated, params.sample_rate) {
        if rate > 0 {
            check_duration(frames, rate, max_duration_s)?;
        }
    }
    let mut decoder = symphonia::default::get_codecs().make(&params, &DecoderOptions::default()).map_err(|e| {
        let codec = symphonia::default::get_codecs().get_codec(params.codec).map_or("unknown", |c| c.long_name);
        AudioError::Unsupported(format!("the {codec} codec in this {name} file ({})", symphonia_reason(&e)))
    })?;

    let mut sink: Option<MonoSink> = None;
    let mut interleaved: Option<SampleBuffer<f32>> = None;
    let mut source_rate = 0u32;
    let mut source_channels = 0usize;
    let mut last_decode_error = None;
    let mut max_frames = u64::MAX;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            // The end of the stream, or of what is left of a cut file: keep what was decoded.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            // A chained Ogg stream would change parameters; the first stream is the recording.
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(AudioError::Invalid(format!("malformed {name} stream: {}", symphonia_reason(&e)))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A corrupt packet costs its few milliseconds of audio, not the file.
            Err(SymError::DecodeError(reason)) => {
                last_decode_error = Some(reason);
                continue;
            }
            Err(SymError::IoError(_)) => continue,
            Err(e) => {
                return Err(AudioError::Invalid(format!("cannot decode the {name} stream: {}", symphonia_reason(&e))))
            }
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count();
        if sink.is_none() {
            check_rate_and_channels(spec.rate, channels)?;
            source_rate = spec.rate;
            source_channels = channels;
            max_frames = (max_duration_s * spec.rate as f64).floor() as u64;
            // The declared length only sizes the buffer; a tiny file claiming hours must not reserve
            // gigabytes, so trust it up to a generous compression ratio and let the Vec grow past that.
            let plausible = bytes.len() as u64 * 16;
            sink = Some(MonoSink::new(spec.rate, params.n_frames.unwrap_or(0).min(max_frames).min(plausible))?);
        } else if spec.rate != source_rate || channels != source_channels {
            return Err(AudioError::Unsupported(format!(
                "a {name} stream whose sample rate or channel count changes midway"
            )));
        }
        let Some(sink) = sink.as_mut() else { continue };
        if decoded.frames() == 0 {
            continue;
        }
        let buffer = match &mut interleaved {
            Some(buffer) if buffer.capacity() >= decoded.capacity() * channels => buffer,
            _ => interleaved.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        buffer.copy_interleaved_ref(decoded);
        let weight = 1.0 / channels as f32;
        for frame in buffer.samples().chunks_exact(channels) {
            let sum: f32 = frame.iter().sum();
            sink.push(if sum.is_finite() { sum * weight } else { 0.0 })?;
        }
        if sink.frames_in > max_frames {
            return Err(AudioError::TooLong { duration_s: None, max_s: max_duration_s });
        }
    }
    match sink {
        Some(sink) if sink.frames_in > 0 => Ok(Audio {
            samples: sink.finish()?,
            source_rate,
            source_channels: source_channels as u16,
            declared_duration_s: None,
        }),
        _ => match last_decode_error {
            Some(reason) => Err(AudioError::Invalid(format!("no decodable audio in the {name} file ({reason})"))),
            None => Err(AudioError::NoSamples),
        },
    }
}

fn symphonia_reason(e: &symphonia::core::errors::Error) -> String {
    use symphonia::core::errors::Error as SymError;
    match e {
        SymError::DecodeError(reason) | SymError::Unsupported(reason) | SymError::LimitError(reason) => {
            reason.to_string()
        }
        other => other.to_string(),
    }
}

/// About this many input frames go into each resampler call. The FFT block sizes follow from it and the
/// rate ratio (44.1 kHz: 1764 in, 640 out), which sets the anti-aliasing filter's steepness.
const RESAMPLER_CHUNK: usize = 1024;

/// rubato's FFT resampler delays the signal by half its input block (rounded down) but reports half its
/// output block; the two agree, and the delay is a whole number of output samples that can be dropped,
/// only when both blocks are even. So the block is an even multiple of the smallest one the ratio allows.
fn resampler_chunk(source_rate: u32) -> usize {
    let (mut a, mut b) = (source_rate as usize, SAMPLE_RATE as usize);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let smallest = source_rate as usize / a;
    let multiple = RESAMPLER_CHUNK.div_ceil(smallest).max(2);
    (multiple + multiple % 2) * smallest
}

/// Collects mono samples at the source rate and hands back 16 kHz ones, resampling block by block as
/// they arrive so that a long file never holds its source-rate samples in memory as well.
struct MonoSink {
    out: Vec<f32>,
    source_rate: u32,
    frames_in: u64,
    resampler: Option<Resampling>,
}

struct Resampling {
    fft: rubato::FftFixedIn<f32>,
    chunk: usize,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    /// Output frames still to drop: the filter's delay, so that output sample 0 is input time 0.
    skip: usize,
}

fn resampler_error(e: impl std::fmt::Display) -> AudioError {
    AudioError::Invalid(format!("cannot resample to {SAMPLE_RATE} Hz: {e}"))
}

impl MonoSink {
    /// `expected_frames` (0 when unknown) only sizes the output buffer up front.
    fn new(source_rate: u32, expected_frames: u64) -> Result<Self, AudioError> {
        let capacity = output_len(expected_frames, source_rate) + 1;
        let resampler = if source_rate == SAMPLE_RATE {
            None
        } else {
            let chunk = resampler_chunk(source_rate);
            let fft = rubato::FftFixedIn::<f32>::new(source_rate as usize, SAMPLE_RATE as usize, chunk, 1, 1)
                .map_err(resampler_error)?;
            let skip = fft.output_delay();
            let scratch = vec![0.0; fft.output_frames_max()];
            Some(Resampling { fft, chunk, pending: Vec::with_capacity(chunk), scratch, skip })
        };
        Ok(MonoSink { out: Vec::with_capacity(capacity as usize), source_rate, frames_in: 0, resampler })
    }

    #[inline]
    fn push(&mut self, sample: f32) -> Result<(), AudioError> {
        self.frames_in += 1;
        match &mut self.resampler {
            None => self.out.push(sample),
            Some(r) => {
                r.pending.push(sample);
                if r.pending.len() == r.chunk {
                    r.run(&mut self.out)?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        let wanted = output_len(self.frames_in, self.source_rate) as usize;
        if let Some(r) = &mut self.resampler {
            // Zeros flush the filter's tail; the loop is bounded by the delay plus one FFT block,
            // the guard only catches a resampler that stops producing.
            let mut rounds = 0;
            while self.out.len() < wanted {
                r.pending.resize(r.chunk, 0.0);
                r.run(&mut self.out)?;
                rounds += 1;
                if rounds > 1_000_000 {
                    return Err(resampler_error("the resampler stopped producing output"));
                }
            }
        }
        self.out.truncate(wanted);
        Ok(self.out)
    }
}

impl Resampling {
    fn run(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let (_, written) = self
            .fft
            .process_into_buffer(&[&self.pending[..]], &mut [&mut self.scratch[..]], None)
            .map_err(resampler_error)?;
        self.pending.clear();
        let dropped = self.skip.min(written);
        self.skip -= dropped;
        out.extend_from_slice(&self.scratch[dropped..written]);
        Ok(())
    }
}

/// round(frames · 16000 / rate): the length a perfect resampler would give.
fn output_len(frames: u64, rate: u32) -> u64 {
    ((frames as u128 * SAMPLE_RATE as u128 + rate as u128 / 2) / rate as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::TAU;

    fn wav_path() -> &'static Path {
        Path::new("test.wav")
    }

    /// A WAV written by hound, `frames[i][c]` as the sample of channel c at frame i.
    fn hound_wav<S: hound::Sample + Copy>(spec: hound::WavSpec, frames: &[Vec<S>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut writer = hound::WavWriter::new(Cursor::new(&mut bytes), spec).unwrap();
        for frame in frames {
            for &s in frame {
                writer.write_sample(s).unwrap();
            }
        }
        writer.finalize().unwrap();
        bytes
    }

    fn int_spec(channels: u16, rate: u32, bits: u16) -> hound::WavSpec {
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: bits, sample_format: hound::SampleFormat::Int }
    }

    fn mono<S: Copy>(samples: &[S]) -> Vec<Vec<S>> {
        samples.iter().map(|&s| vec![s]).collect()
    }

    /// A hand-made WAV, for headers hound's writer would never produce.
    fn raw_wav(format_tag: u16, channels: u16, rate: u32, bits: u16, data_len: u32, data: &[u8]) -> Vec<u8> {
        let block_align = channels.wrapping_mul(bits / 8);
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&format_tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&rate.wrapping_mul(block_align as u32).to_le_bytes());
        fmt.extend_from_slice(&block_align.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        if format_tag != 1 {
            fmt.extend_from_slice(&0u16.to_le_bytes());
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF");
        bytes.extend_from_slice(&(4 + 8 + fmt.len() as u32 + 8 + data.len() as u32).to_le_bytes());
        bytes.extend_from_slice(b"WAVE");
        bytes.extend_from_slice(b"fmt ");
        bytes.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&fmt);
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&data_len.to_le_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn s16_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn sine(rate: u32, freq: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds).round() as usize;
        (0..n).map(|i| (TAU * freq * i as f32 / rate as f32).sin() * 0.5).collect()
    }

    fn float_wav(rate: u32, samples: &[f32]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        hound_wav(spec, &mono(samples))
    }

    #[test]
    fn integer_depths_scale_to_unit_range() {
        let a = decode(&hound_wav(int_spec(1, 16_000, 8), &mono(&[-128i8, -64, 0, 64, 127])), wav_path()).unwrap();
        assert_eq!(a.samples, [-1.0, -0.5, 0.0, 0.5, 127.0 / 128.0]);

        let a = decode(&hound_wav(int_spec(1, 16_000, 16), &mono(&[i16::MIN, -16384, 0, 16384])), wav_path()).unwrap();
        assert_eq!(a.samples, [-1.0, -0.5, 0.0, 0.5]);

        let max24 = 1 << 23;
        let a = decode(&hound_wav(int_spec(1, 16_000, 24), &mono(&[-max24, -max24 / 2, 0, max24 / 4])), wav_path())
            .unwrap();
        assert_eq!(a.samples, [-1.0, -0.5, 0.0, 0.25]);

        let a = decode(&hound_wav(int_spec(1, 16_000, 32), &mono(&[i32::MIN, i32::MIN / 2, 0, 1 << 29])), wav_path())
            .unwrap();
        assert_eq!(a.samples, [-1.0, -0.5, 0.0, 0.25]);
        assert_eq!((a.source_rate, a.source_channels), (16_000, 1));
    }

    #[test]
    fn float_samples_pass_through_and_non_finite_become_silence() {
        let a = decode(&float_wav(16_000, &[0.25, -0.75, f32::NAN, f32::INFINITY, 1.5]), wav_path()).unwrap();
        assert_eq!(a.samples, [0.25, -0.75, 0.0, 0.0, 1.5]);
    }

    #[test]
    fn channels_are_averaged() {
        let frames = vec![vec![1000i16, 2000, 3000], vec![-4000, 0, 4000], vec![8192, 8192, -8192]];
        let a = decode(&hound_wav(int_spec(3, 16_000, 16), &frames), wav_path()).unwrap();
        let expected = [2000.0 / 32768.0, 0.0, 8192.0 / 3.0 / 32768.0];
        assert_eq!(a.source_channels, 3);
        assert_eq!(a.samples.len(), 3);
        for (got, want) in a.samples.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Stereo 24-bit goes through WAVE_FORMAT_EXTENSIBLE in hound's writer.
        let frames = vec![vec![1 << 22, -(1 << 22)], vec![1 << 22, 1 << 22]];
        let a = decode(&hound_wav(int_spec(2, 16_000, 24), &frames), wav_path()).unwrap();
        assert_eq!(a.samples, [0.0, 0.5]);
    }

    /// The largest difference to a sine generated directly at 16 kHz, away from the two ends where
    /// the input itself starts and stops abruptly.
    fn max_error_vs_16k_sine(samples: &[f32], freq: f32) -> f32 {
        let reference = sine(SAMPLE_RATE, freq, samples.len() as f32 / SAMPLE_RATE as f32);
        let edge = 200;
        samples[edge..samples.len() - edge]
            .iter()
            .zip(&reference[edge..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn resampled_sines_match_16k_sines_without_delay() {
        for (rate, freq) in [(44_100, 1000.0), (8_000, 440.0), (48_000, 3000.0), (22_050, 1000.0), (11_025, 2500.0)] {
            let input = sine(rate, freq, 1.0);
            let a = decode(&float_wav(rate, &input), wav_path()).unwrap();
            assert_eq!(a.samples.len(), 16_000, "{rate} Hz");
            let err = max_error_vs_16k_sine(&a.samples, freq);
            assert!(err < 2e-3, "{rate} Hz, {freq} Hz sine: max error {err}");
        }
    }

    #[test]
    fn tones_above_the_new_nyquist_are_filtered_out() {
        // 10 kHz cannot exist at 16 kHz; without a low-pass it would fold down to 6 kHz.
        let a = decode(&float_wav(44_100, &sine(44_100, 10_000.0, 1.0)), wav_path()).unwrap();
        let interior = &a.samples[500..15_500];
        let rms = (interior.iter().map(|x| x * x).sum::<f32>() / interior.len() as f32).sqrt();
        assert!(rms < 1e-3, "aliased energy, rms {rms}");
    }

    #[test]
    fn resampled_length_is_the_rounded_ratio() {
        for rate in [8_000u32, 11_025, 22_050, 44_100, 48_000, 96_000, 44_101] {
            for frames in [1usize, 2, 7, 441, 1023, 1024, 1025, 4410, 48_001] {
                let a = decode(&float_wav(rate, &vec![0.1; frames]), wav_path()).unwrap();
                let want = (frames as f64 * 16_000.0 / rate as f64).round() as usize;
                assert_eq!(a.samples.len(), want, "{frames} frames at {rate} Hz");
            }
        }
    }

    #[test]
    fn sixteen_khz_mono_bypasses_the_resampler() {
        let samples: Vec<i16> = (0..5000).map(|i| ((i * 37) % 65536 - 32768) as i16).collect();
        let a = decode(&hound_wav(int_spec(1, 16_000, 16), &mono(&samples)), wav_path()).unwrap();
        let exact: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
        assert_eq!(a.samples, exact);
    }

    #[test]
    fn data_chunk_longer_than_the_file_decodes_what_is_present() {
        let samples: Vec<i16> = (0..1000).map(|i| i as i16).collect();
        let mut data = s16_bytes(&samples);
        data.push(0x12); // half a sample: dropped
        let bytes = raw_wav(1, 1, 16_000, 16, 16_000 * 2, &data);
        let a = decode(&bytes, wav_path()).unwrap();
        assert_eq!(a.samples.len(), 1000);
        assert_eq!(a.samples[999], 999.0 / 32768.0);
        // A streaming writer's "unknown length" placeholder.
        let a = decode(&raw_wav(1, 1, 16_000, 16, u32::MAX - 1, &s16_bytes(&samples)), wav_path()).unwrap();
        assert_eq!(a.samples.len(), 1000);
        // Stereo cut in the middle of a frame keeps whole frames only.
        let a = decode(&raw_wav(1, 2, 16_000, 16, 4000, &s16_bytes(&samples[..999])), wav_path()).unwrap();
        assert_eq!(a.samples.len(), 499);
    }

    fn error_message(bytes: &[u8]) -> String {
        decode(bytes, wav_path()).expect_err("should not decode").to_string()
    }

    #[test]
    fn broken_headers_are_errors_in_plain_words() {
        let data = s16_bytes(&[0; 100]);
        assert_eq!(error_message(&[]), "the file is empty (0 bytes)");
        assert!(error_message(&raw_wav(1, 0, 16_000, 16, 200, &data)).contains("zero channels"));
        assert!(error_message(&raw_wav(1, 1, 0, 16, 200, &data)).contains("sample rate of 0 Hz"));
        assert!(error_message(&raw_wav(1, 1, 10, 16, 200, &data)).contains("sample rate of 10 Hz"));
        assert!(error_message(&raw_wav(1, 1, 16_000, 16, 0, &[])).contains("no audio samples"));
        assert!(error_message(&raw_wav(0x55, 1, 16_000, 16, 200, &data)).contains("unsupported"));
        let full = raw_wav(1, 1, 16_000, 16, 200, &data);
        for cut in [4, 11, 12, 20, 30, 43] {
            assert!(error_message(&full[..cut]).contains("cut short"), "cut at {cut}: {}", error_message(&full[..cut]));
        }
        // A LIST chunk claiming 4 GB before the data.
        let mut bytes = full[..12].to_vec();
        bytes.extend_from_slice(b"LIST");
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&full[12..]);
        assert!(error_message(&bytes).contains("cut short"));
    }

    #[test]
    fn unknown_files_say_what_they_look_like() {
        let text = b"This is not a WAV file, just text with a .wav name.\n";
        assert_eq!(
            error_message(text),
            "not a WAV/FLAC/MP3/OGG audio file (it starts with text: \"This is not a WAV file,…\")"
        );
        assert!(error_message(b"RIFF\x10\0\0\0AVI LIST").contains("RIFF 'AVI ' file"));
        assert!(error_message(b"\0\0\0\x20ftypM4A \0\0\0\0").contains("MP4/M4A"));
        assert!(error_message(&[0, 1, 2, 3, 4, 5, 6, 7, 8]).contains("00 01 02 03 04 05 06 07"));
    }

    #[test]
    fn the_container_comes_from_the_bytes_before_the_extension() {
        let sniffed = |bytes: &[u8], name: &str| sniff(bytes, Path::new(name)).ok();
        assert_eq!(sniffed(b"RIFF\0\0\0\0WAVEfmt ", "a.mp3"), Some((Container::Wav, 0)));
        assert_eq!(sniffed(b"fLaC\0\0\0\x22", "a.wav"), Some((Container::Flac, 0)));
        assert_eq!(sniffed(b"OggS\0\x02", "a.flac"), Some((Container::Ogg, 0)));
        assert_eq!(sniffed(&[0xff, 0xfb, 0x90, 0x64], "a.bin"), Some((Container::Mp3, 0)));
        let mut id3 = b"ID3\x04\0\0\0\0\x01\x00".to_vec();
        id3.extend_from_slice(&[0; 128]);
        id3.extend_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        assert_eq!(sniffed(&id3, "a"), Some((Container::Mp3, 138)));
        id3.truncate(138);
        id3.extend_from_slice(b"fLaC");
        assert_eq!(sniffed(&id3, "a"), Some((Container::Flac, 138)));
        assert_eq!(sniffed(b"junk before the first frame", "a.MP3"), Some((Container::Mp3, 0)));
        assert_eq!(sniffed(b"junk before the first frame", "a.wav"), None);
        // Sync bits with an invalid sample-rate index are not an MP3 frame.
        assert_eq!(sniffed(&[0xff, 0xfb, 0x9c, 0x64], "a.bin"), None);
    }

    #[test]
    fn cut_compressed_headers_are_errors_not_panics() {
        for bytes in [&b"fLaC"[..], b"fLaC\0\0\0\x22\0\x10", b"OggS", b"OggS\0\x02\0\0", b"ID3\x04\0\0\0\0\0\x05abcde"]
        {
            let e = decode(bytes, Path::new("x")).expect_err("no audio in these");
            assert!(!e.to_string().is_empty());
        }
    }

    fn mulaw_wav(rate: u32, data: &[u8]) -> Vec<u8> {
        raw_wav(7, 1, rate, 8, data.len() as u32, data)
    }

    #[test]
    fn mulaw_wav_goes_through_symphonia() {
        // G.711 µ-law: 0xff is zero, 0x80 the largest positive and 0x00 the largest negative value.
        let data: Vec<u8> = (0..16_000).map(|i| [0xff, 0x80, 0xff, 0x00][i % 4]).collect();
        let a = decode(&mulaw_wav(16_000, &data), wav_path()).unwrap();
        assert_eq!(a.samples.len(), 16_000);
        assert_eq!((a.source_rate, a.source_channels), (16_000, 1));
        assert_eq!(a.samples[0], 0.0);
        assert!(a.samples[1] > 0.9 && a.samples[3] < -0.9, "{:?}", &a.samples[..4]);
        // 8 kHz telephone audio is what µ-law usually carries.
        let a = decode(&mulaw_wav(8_000, &data), wav_path()).unwrap();
        assert_eq!(a.samples.len(), 32_000);
    }

    #[test]
    fn audio_over_the_limit_is_refused() {
        let two_seconds = hound_wav(int_spec(2, 16_000, 16), &vec![vec![0i16, 0]; 32_000]);
        let e = decode_with_limit(&two_seconds, wav_path(), 1.5).unwrap_err();
        assert!(matches!(e, AudioError::TooLong { duration_s: Some(d), .. } if d == 2.0), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the audio lasts 2.0 s, longer than the 1.5 s limit (raise it with --max-duration SECONDS)"
        );
        assert!(decode_with_limit(&two_seconds, wav_path(), 2.0).is_ok());
        let e = decode_with_limit(&mulaw_wav(8_000, &[0xff; 16_000]), wav_path(), 1.5).unwrap_err();
        assert!(matches!(e, AudioError::TooLong { .. }), "{e:?}");
        assert_eq!(
            AudioError::TooLong { duration_s: Some(5.0 * 3600.0 + 61.0), max_s: MAX_DURATION_S }.to_string(),
            "the audio lasts 5 h 01 min, longer than the 4 h 00 min limit (raise it with --max-duration SECONDS)"
        );
    }

    /// Every one-byte corruption and every truncation of small files must give a result or an error.
    #[test]
    fn corrupted_bytes_never_panic() {
        let stereo = hound_wav(int_spec(2, 44_100, 16), &vec![vec![1000i16, -1000]; 300]);
        let mulaw = mulaw_wav(8_000, &[0x80; 600]);
        for file in [stereo, mulaw] {
            for cut in 0..file.len().min(120) {
                let _ = decode(&file[..cut], wav_path());
            }
            for at in 0..60 {
                for value in [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff] {
                    let mut bytes = file.clone();
                    bytes[at] = value;
                    let _ = decode_with_limit(&bytes, wav_path(), 10.0);
                }
            }
        }
    }
}
