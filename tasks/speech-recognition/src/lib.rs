//! Speech recognition with Whisper: audio files in, transcripts (text, subtitles, JSON) out.
//!
//! Weights are CTranslate2 checkpoints (the Hub's `Systran/faster-whisper-*`, read natively by
//! [`ct2`]) or Transformers ones (`openai/whisper-*`), both run by candle-transformers' Whisper.

pub mod audio;
pub mod ct2;
pub mod decode;
pub mod encoder;
pub mod kernels;
pub mod mel;
pub mod model;
pub mod output;
pub mod text_decoder;
pub mod vad;
pub mod words;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use zoo_runtime::{
    fsutil, Context, Error, Explains, Input, InputSpec, Model, Prediction, PredictionResult, ReadLimit, Result, Runner,
    Task, TaskArgs, TaskOption,
};

use crate::decode::{DecodeOptions, Decoder, Mode, Transcript};
use crate::output::Format;

pub struct SpeechRecognition;

const OPTIONS: &[TaskOption] = &[
    TaskOption {
        name: "format",
        value_name: Some("FORMAT"),
        help: "Print (or write, with --output-dir) each transcript as txt, json, srt or vtt, a document of its \
               own; without it zoo prints each input's name and its text",
        default: None,
    },
    TaskOption {
        name: "output-dir",
        value_name: Some("DIR"),
        help: "Write one file per input into DIR (<name>.<format>, txt unless --format says otherwise)",
        default: None,
    },
    TaskOption {
        name: "language",
        value_name: Some("CODE"),
        help: "Spoken language (en, de, fr, ...) for multilingual models; detected from the first 30 s when not given",
        default: None,
    },
    TaskOption {
        name: "task",
        value_name: Some("TASK"),
        help: "transcribe, or translate into English (multilingual models)",
        default: Some("transcribe"),
    },
    TaskOption {
        name: "beam-size",
        value_name: Some("N"),
        help: "Keep the N likeliest transcripts while decoding (1 = greedy, fastest); 5 is Whisper's usual choice",
        default: Some("1"),
    },
    TaskOption {
        name: "max-duration",
        value_name: Some("SECONDS"),
        help: "Refuse audio longer than this (checked from the header where it says, before decoding all of it)",
        default: Some("14400"),
    },
    TaskOption {
        name: "prompt",
        value_name: Some("TEXT"),
        help: "Text that comes before the recording (names, spellings, a style) to guide the first window",
        default: None,
    },
    TaskOption {
        name: "temperature",
        value_name: Some("T"),
        help: "Sampling temperature of the first try (0 = greedy); retries go up by 0.2 to 1.0 unless --no-fallback",
        default: Some("0"),
    },
    TaskOption {
        name: "no-context",
        value_name: None,
        help: "Do not prompt each 30 s window with the previous window's text (avoids carrying a mistake on)",
        default: None,
    },
    TaskOption {
        name: "no-fallback",
        value_name: None,
        help: "Decode greedily once per window; no retries at higher temperatures on repetitive output",
        default: None,
    },
    TaskOption {
        name: "vad",
        value_name: None,
        help: "Skip silence first: the bundled Silero VAD finds the speech (as faster-whisper's vad_filter), \
               only that is transcribed, and times stay on the recording's clock",
        default: None,
    },
    TaskOption {
        name: "compute-type",
        value_name: Some("TYPE"),
        help: "float32 (the default), int8 (the encoder's and decoder's matrix products in 8-bit integers, \
               weights quantized per row as CTranslate2 does, inputs per row as they come: faster-whisper's \
               int8; fast where the CPU has AVX-512 VNNI or AVX-VNNI, elsewhere a float path over the same \
               codes that is not), or auto (int8 for a checkpoint stored in int8 on the CPU, else float32)",
        default: None,
    },
    TaskOption {
        name: "batch-size",
        value_name: Some("N"),
        help: "Transcribe long recordings N pieces at a time, as faster-whisper's batched pipeline: the VAD \
               (implied) cuts the speech into pieces of up to 30 s (pauses over 160 ms cut it unless \
               --vad-min-silence-ms says otherwise), each decoded on its own without timestamps (one segment \
               per piece, also for a short clip), greedy steps of all N together (default 1: one 30 s window after another, each \
               prompted by the text before)",
        default: None,
    },
    TaskOption {
        name: "vad-threshold",
        value_name: Some("P"),
        help: "With --vad: a 32 ms window at or above this speech probability is speech (default 0.5)",
        default: None,
    },
    TaskOption {
        name: "vad-min-silence-ms",
        value_name: Some("MS"),
        help: "With --vad: a pause shorter than this does not end the speech (default 2000)",
        default: None,
    },
    TaskOption {
        name: "vad-speech-pad-ms",
        value_name: Some("MS"),
        help: "With --vad: audio kept on each side of the speech (default 400)",
        default: None,
    },
    TaskOption {
        name: "vad-min-speech-ms",
        value_name: Some("MS"),
        help: "With --vad: speech shorter than this is dropped (default 0)",
        default: None,
    },
    TaskOption {
        name: "vad-max-speech-s",
        value_name: Some("SECONDS"),
        help: "With --vad: speech longer than this is split, at a pause of over 98 ms if there is one (default: never)",
        default: None,
    },
];

/// The `--vad-*` options (each needs `--vad`).
const VAD_OPTIONS: [&str; 5] =
    ["vad-threshold", "vad-min-silence-ms", "vad-speech-pad-ms", "vad-min-speech-ms", "vad-max-speech-s"];

/// The longest piece the batched path gives Whisper: one window.
const PIECE_SECONDS: f64 = 30.0;

/// `--vad` and its options, checked: None without `--vad` (which `batched` implies). The batched
/// pipeline's defaults are faster-whisper's: pieces cut at pauses over 160 ms, none over 30 s.
fn vad_options(args: &TaskArgs, batched: bool) -> Result<Option<vad::VadOptions>> {
    if !args.flag("vad") && !batched {
        if let Some(option) = VAD_OPTIONS.iter().find(|o| args.value(o).is_some()) {
            return Err(Error::Usage(format!(
                "{option} tunes the voice activity detector, which is off: turn on vad too (--vad)"
            )));
        }
        return Ok(None);
    }
    let defaults = vad::VadOptions::default();
    let invalid = |option: &str, value: f64, reason: &str| Error::InvalidOption {
        option: option.into(),
        value: value.to_string(),
        reason: reason.into(),
    };
    let threshold: f64 = args.parse("vad-threshold")?.unwrap_or(defaults.threshold);
    if !(threshold > 0.0 && threshold < 1.0) {
        return Err(invalid("vad-threshold", threshold, "choose a probability between 0 and 1"));
    }
    let milliseconds = |option: &str, default: f64| -> Result<f64> {
        let value: f64 = args.parse(option)?.unwrap_or(default);
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(invalid(option, value, "choose a number of milliseconds, 0 or more"))
        }
    };
    let min_silence_duration_ms =
        milliseconds("vad-min-silence-ms", if batched { 160.0 } else { defaults.min_silence_duration_ms })?;
    let speech_pad_ms = milliseconds("vad-speech-pad-ms", defaults.speech_pad_ms)?;
    let min_speech_duration_ms = milliseconds("vad-min-speech-ms", defaults.min_speech_duration_ms)?;
    let max_speech_duration_s = match args.value("vad-max-speech-s") {
        None if batched => PIECE_SECONDS,
        None => f64::INFINITY,
        Some(_) => args.positive("vad-max-speech-s", 30.0, "seconds")?,
    };
    if batched && max_speech_duration_s > PIECE_SECONDS {
        return Err(invalid(
            "vad-max-speech-s",
            max_speech_duration_s,
            "must be at most 30 with --batch-size: each piece of speech is one 30 s window",
        ));
    }
    // faster-whisper keeps a window and both pads out of the maximum; shorter than that, every
    // window would be a piece of its own.
    let least = (vad::WINDOW as f64 / f64::from(audio::SAMPLE_RATE)) + 2.0 * speech_pad_ms / 1000.0;
    if max_speech_duration_s <= least {
        return Err(invalid(
            "vad-max-speech-s",
            max_speech_duration_s,
            &format!("must be longer than 32 ms plus twice the speech pad ({least:.3} s)"),
        ));
    }
    Ok(Some(vad::VadOptions {
        threshold,
        neg_threshold: None,
        min_speech_duration_ms,
        max_speech_duration_s,
        min_silence_duration_ms,
        speech_pad_ms,
    }))
}

impl Task for SpeechRecognition {
    fn name(&self) -> &'static str {
        "speech-recognition"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["asr", "automatic-speech-recognition"]
    }

    fn summary(&self) -> &'static str {
        "Transcribe speech (Whisper): text, timestamps, SRT/WebVTT subtitles"
    }

    fn warmup_input(&self) -> Option<Input> {
        // One second of silence: the encoder and one decoder step, without words to decode.
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: audio::SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut bytes = std::io::Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut bytes, spec).ok()?;
        for _ in 0..audio::SAMPLE_RATE {
            writer.write_sample(0i16).ok()?;
        }
        writer.finalize().ok()?;
        Some(Input::bytes("warm-up.wav", bytes.into_inner()))
    }

    fn input(&self) -> InputSpec {
        InputSpec {
            description: "audio files (WAV, FLAC, MP3, OGG Vorbis), folders or globs; - reads stdin",
            extensions: &["wav", "wave", "flac", "mp3", "ogg", "oga"],
            stdin: true,
            required: true,
            kind: zoo_runtime::InputKind::Audio,
        }
    }

    fn options(&self) -> &'static [TaskOption] {
        OPTIONS
    }

    fn explains(&self) -> Explains {
        Explains::Yes(
            "every word timed (cross-attention alignment) and scored (token probabilities): JSON segments get \
             words with start, end and confidence; txt marks words heard with under 50% confidence as word(?); \
             vtt cues carry word times",
        )
    }

    fn examples(&self) -> &'static [&'static str] {
        &[
            "zoo run speech-recognition interview.wav",
            "zoo run asr talk.flac --format srt > talk.srt",
            "zoo run asr recordings/ --format vtt --output-dir subtitles/",
            "zoo run asr clip.mp3 --json",
            "zoo run asr --model faster-whisper-base podcast.mp3 --language de --task translate",
        ]
    }

    fn load(&self, model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Box<dyn Runner>> {
        Ok(Box::new(SpeechRunner::load(model, args, ctx)?))
    }
}

/// A loaded Whisper with the run's options; one per `zoo run`, many inputs.
pub struct SpeechRunner {
    pub whisper: model::Whisper,
    options: DecodeOptions,
    filters: Vec<f32>,
    format: Option<Format>,
    output_dir: Option<PathBuf>,
    model_id: String,
    max_duration_s: f64,
    /// With `--vad`: the detector and its options.
    vad: Option<(vad::SileroVad, vad::VadOptions)>,
    /// Pieces of speech decoded together; 1: the sequential path.
    batch_size: usize,
}

impl SpeechRunner {
    /// Reads the options (a bad one is a usage error) and the model.
    pub fn load(model: &Model, args: &TaskArgs, ctx: &Context) -> Result<Self> {
        let format = match args.value("format") {
            None => None,
            Some(text) => Some(Format::parse(text).ok_or_else(|| Error::InvalidOption {
                option: "format".into(),
                value: text.into(),
                reason: "choose txt, json, srt or vtt".into(),
            })?),
        };
        let mode = match args.value("task").unwrap_or("transcribe") {
            "transcribe" => Mode::Transcribe,
            "translate" => Mode::Translate,
            other => {
                return Err(Error::InvalidOption {
                    option: "task".into(),
                    value: other.into(),
                    reason: "choose transcribe or translate".into(),
                })
            }
        };
        let output_dir = args.value("output-dir").map(PathBuf::from);
        let compute_type = match args.value("compute-type").unwrap_or("float32") {
            "float32" => model::ComputeType::Float32,
            "int8" => model::ComputeType::Int8,
            "auto" => model::ComputeType::Auto,
            other => {
                return Err(Error::InvalidOption {
                    option: "compute-type".into(),
                    value: other.into(),
                    reason: "choose float32, int8 or auto".into(),
                })
            }
        };
        let batch_size: usize = args.parse("batch-size")?.unwrap_or(1);
        if !(1..=64).contains(&batch_size) {
            return Err(Error::InvalidOption {
                option: "batch-size".into(),
                value: batch_size.to_string(),
                reason: "choose 1 (one window after another) to 64".into(),
            });
        }
        let vad_options = vad_options(args, batch_size > 1)?;
        let language = args.value("language").map(|l| l.trim().to_ascii_lowercase());
        if let Some(code) = &language {
            if !model::LANGUAGES.contains(&code.as_str()) {
                return Err(Error::InvalidOption {
                    option: "language".into(),
                    value: code.clone(),
                    reason: "not one of Whisper's language codes (en, de, fr, es, zh, ja, ...)".into(),
                });
            }
        }

        let whisper = model::Whisper::load(model, &ctx.device, compute_type)?;
        if !whisper.multilingual {
            if language.as_deref().is_some_and(|l| l != "en") {
                return Err(Error::Usage(format!(
                    "{} is an English-only model; for --language {} choose a multilingual one (e.g. faster-whisper-base)",
                    model.id,
                    language.as_deref().unwrap_or_default()
                )));
            }
            if mode == Mode::Translate {
                return Err(Error::Usage(format!(
                    "{} is English-only; --task translate needs a multilingual model",
                    model.id
                )));
            }
        }
        let beam_size: usize = args.parse("beam-size")?.unwrap_or(1);
        if !(1..=16).contains(&beam_size) {
            return Err(Error::InvalidOption {
                option: "beam-size".into(),
                value: beam_size.to_string(),
                reason: "choose 1 (greedy) to 16".into(),
            });
        }
        let mut options = DecodeOptions { mode, language, beam_size, ..DecodeOptions::default() };
        if args.flag("no-context") {
            options.condition_on_previous_text = false;
        }
        options.word_timestamps = zoo_runtime::explain::Request::from_args(args).is_some();
        let temperature: f64 = args.parse("temperature")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&temperature) {
            return Err(Error::InvalidOption {
                option: "temperature".into(),
                value: temperature.to_string(),
                reason: "choose a number from 0 to 1".into(),
            });
        }
        // As Whisper's own command line: the first try at T, then T + 0.2, ... up to 1.
        options.temperatures = (0..)
            .map(|step| temperature + 0.2 * step as f64)
            .take_while(|t| *t <= 1.0 + 1e-6)
            .map(|t| (t * 1e6).round() / 1e6)
            .collect();
        if args.flag("no-fallback") {
            options.temperatures.truncate(1);
        }
        options.initial_prompt = args.value("prompt").map(str::to_string);
        let max_duration_s = args.positive("max-duration", audio::MAX_DURATION_S, "seconds")?;
        let filters = mel::mel_filters(audio::SAMPLE_RATE as usize, mel::N_FFT, whisper.config.num_mel_bins);
        let vad = match vad_options {
            None => None,
            Some(options) => {
                Some((vad::SileroVad::bundled().map_err(|e| Error::model("silero-vad", e.to_string()))?, options))
            }
        };
        Ok(SpeechRunner {
            whisper,
            options,
            filters,
            format,
            output_dir,
            model_id: model.id.clone(),
            max_duration_s,
            vad,
            batch_size,
        })
    }

    /// Transcribes 16 kHz mono samples.
    pub fn transcribe_samples(&mut self, samples: &[f32]) -> candle_core::Result<Transcript> {
        let mel =
            mel::log_mel_spectrogram(samples, mel::CHUNK_SAMPLES, &self.filters, self.whisper.config.num_mel_bins);
        let content_frames = samples.len() / mel::HOP_LENGTH;
        Decoder::new(&mut self.whisper, self.options.clone()).transcribe(&mel, content_frames)
    }

    /// The batched path: the speech ranges grouped into pieces of up to 30 s, each piece's
    /// ranges joined and decoded on its own, `batch_size` pieces at a time. Times are on the
    /// speech-only timeline, as [`SpeechRunner::transcribe_samples`] gives them for `--vad`.
    fn transcribe_pieces(&mut self, samples: &[f32], regions: &[(usize, usize)]) -> candle_core::Result<Transcript> {
        let piece_samples = (PIECE_SECONDS * f64::from(audio::SAMPLE_RATE)) as usize;
        let groups = vad::group_speech(regions, piece_samples);
        let total: usize = regions.iter().map(|(s, e)| e - s).sum();
        let (filters, n_mels) = (&self.filters, self.whisper.config.num_mel_bins);
        let mut offset = 0usize;
        let pieces = groups.into_iter().filter_map(|group| {
            let speech = vad::collect_speech(samples, &group);
            let frames = (speech.len() / mel::HOP_LENGTH).min(mel::N_FRAMES);
            let time_offset = vad::piece_start(offset);
            offset += speech.len();
            // Less than one frame of audio (a range cut at the recording's end): nothing to hear,
            // and a blank window would only invite invented text.
            if frames == 0 {
                return None;
            }
            // One FFT's worth of zeros is all the padding the piece's frames reach (the sequential
            // path's 30 s is for windows that start later): the same values, half the transforms.
            let mel = mel::log_mel_spectrogram(&speech, mel::PIECE_PADDING, filters, n_mels);
            Some(decode::Piece { window: mel.window(0, frames), frames, time_offset })
        });
        let duration = total as f64 / f64::from(audio::SAMPLE_RATE);
        Decoder::new(&mut self.whisper, self.options.clone()).transcribe_pieces(pieces, self.batch_size, duration)
    }

    fn run_one(&mut self, input: &Input) -> Result<Transcribed> {
        let bytes = input.read(audio::read_limit(self.max_duration_s))?;
        let audio = audio::decode_with_limit(&bytes, input.path(), self.max_duration_s)
            .map_err(|e| Error::input(input.path(), e))?;
        let model_id = self.model_id.clone();
        let failed = |e: candle_core::Error| Error::model(&model_id, e.to_string());
        let regions = self.vad.as_ref().map(|(detector, options)| {
            vad::speech_timestamps(&detector.probabilities(&audio.samples), audio.samples.len(), options)
        });
        let (transcript, speech) = match regions {
            None => (self.transcribe_samples(&audio.samples).map_err(failed)?, None),
            Some(regions) => {
                let speech = vad::collect_speech(&audio.samples, &regions);
                let mut transcript = if speech.is_empty() {
                    // No speech to detect a language in: the one asked for, English for an
                    // English-only model, else unknown (with probability 0).
                    let language = match (&self.options.language, self.whisper.multilingual) {
                        (Some(language), _) => language.clone(),
                        (None, false) => "en".into(),
                        (None, true) => "unknown".into(),
                    };
                    Transcript { language, language_probability: 0.0, duration: 0.0, segments: Vec::new() }
                } else if self.batch_size > 1 {
                    self.transcribe_pieces(&audio.samples, &regions).map_err(failed)?
                } else {
                    self.transcribe_samples(&speech).map_err(failed)?
                };
                vad::restore_times(&mut transcript.segments, &vad::SpeechMap::new(&regions));
                transcript.duration = audio.duration_s();
                (transcript, Some(regions))
            }
        };
        let mut head = Map::new();
        head.insert("input".into(), input.name.clone().into());
        head.insert("model".into(), self.model_id.clone().into());
        if let Some(regions) = &speech {
            for (key, value) in vad::speech_fields(regions) {
                head.insert(key, value);
            }
        }
        let mut written = None;
        if let Some(dir) = &self.output_dir {
            let format = self.format.unwrap_or(Format::Txt);
            let path = output_path(dir, input, format);
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            fsutil::write_atomic(&path, output::render(&transcript, format, head.clone()).as_bytes(), true)?;
            written = Some(path);
        }
        let warnings = audio
            .declared_duration_s
            .map(|declared| {
                format!(
                    "the header declares {declared:.1} s of audio but the file holds {:.1} s (was it cut short?); \
                     transcribed what is there",
                    audio.duration_s()
                )
            })
            .into_iter()
            .chain(
                speech
                    .as_ref()
                    .filter(|r| r.is_empty())
                    .map(|_| "the voice activity detector (--vad) found no speech: nothing was transcribed".into()),
            )
            .collect();
        Ok(Transcribed { transcript, head, format: self.format, written, warnings })
    }
}

fn output_path(dir: &Path, input: &Input, format: Format) -> PathBuf {
    let stem = zoo_runtime::fsutil::output_stem(input.path());
    dir.join(format!("{stem}.{}", format.extension()))
}

impl Runner for SpeechRunner {
    fn read_limit(&self) -> ReadLimit {
        audio::read_limit(self.max_duration_s)
    }

    fn run(&mut self, batch: &[Input]) -> Vec<PredictionResult> {
        batch.iter().map(|input| self.run_one(input).map(|t| Box::new(t) as Box<dyn Prediction>)).collect()
    }
}

/// One input's transcript, and where it was written, if it was.
pub struct Transcribed {
    pub transcript: Transcript,
    head: Map<String, Value>,
    format: Option<Format>,
    written: Option<PathBuf>,
    warnings: Vec<String>,
}

impl Prediction for Transcribed {
    fn text(&self) -> Option<String> {
        Some(self.transcript.text())
    }

    fn json(&self) -> Map<String, Value> {
        let mut map = output::json_fields(&self.transcript);
        for key in ["speech", "speech_duration"] {
            if let Some(value) = self.head.get(key) {
                map.insert(key.into(), value.clone());
            }
        }
        if let Some(path) = &self.written {
            map.insert("output".into(), path.display().to_string().into());
        }
        map
    }

    fn human(&self) -> String {
        let t = &self.transcript;
        match &self.written {
            Some(path) => format!("wrote {} ({:.1} s, {} segments)", path.display(), t.duration, t.segments.len()),
            None if t.segments.is_empty() => "(no speech)".to_string(),
            None => output::marked_transcript(t),
        }
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn document(&self) -> Option<String> {
        match (self.format, &self.written) {
            (Some(format), None) => Some(output::render(&self.transcript, format, self.head.clone())),
            _ => None,
        }
    }
}
