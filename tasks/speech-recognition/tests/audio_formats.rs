//! The odd audio files in ../shared/assets/data/speech/formats (see its README.md): each decodes to
//! what its description promises, or fails with a message a user can act on.

use std::path::{Path, PathBuf};

use zoo_speech_recognition::audio::{decode, Audio, AudioError, SAMPLE_RATE};

fn speech_dir(test: &str) -> Option<PathBuf> {
    zoo_runtime::test_support::shared_assets(test).map(|assets| assets.join("data/speech"))
}

fn decode_file(path: &Path) -> Result<Audio, AudioError> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode(&bytes, path)
}

/// Pearson correlation over the common length: 1 for the same waveform, whatever its gain.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let mean = |x: &[f32]| x[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a[..n].iter().zip(&b[..n]) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// What each file in formats/ must give. A file added there without a line here fails the test.
enum Expect {
    /// jfk.wav in another encoding: 11.0 s, and a waveform correlating with the original at least this much.
    /// sox made these; measured 0.99999998 after our resampling (0.99994 from 8 kHz), so a delay of even
    /// one sample, or a wrong scale or channel mix, fails.
    Jfk {
        min_correlation: f64,
    },
    /// Exactly these samples of jfk.wav at 16 kHz (cut without resampling).
    JfkSlice {
        start: usize,
        len: usize,
    },
    Long,
    Silence,
    Error(&'static str),
}

fn expectation(file: &str) -> Option<Expect> {
    Some(match file {
        "jfk_44k1_stereo_s16.wav" => Expect::Jfk { min_correlation: 0.9999 },
        // 8 kHz keeps only the band below 4 kHz of the original.
        "jfk_8k_mono_s16.wav" => Expect::Jfk { min_correlation: 0.999 },
        "jfk_48k_mono_f32.wav" => Expect::Jfk { min_correlation: 0.9999 },
        "jfk_16k_mono_s24.wav" => Expect::Jfk { min_correlation: 0.999_999 },
        "long_46s_concat.wav" => Expect::Long,
        "short_0.2s.wav" => Expect::JfkSlice { start: 5_600, len: 3_200 },
        "silence_5s.wav" => Expect::Silence,
        // The header declares 11 s; the 2.0 s present are decoded (see audio.rs on damaged files).
        "truncated_data.wav" => Expect::JfkSlice { start: 0, len: 32_000 },
        "truncated_header.wav" => Expect::Error("the WAV header is cut short"),
        "not_a_wav.wav" => Expect::Error("not a WAV/FLAC/MP3/OGG audio file (it starts with text"),
        "empty.wav" => Expect::Error("the file is empty"),
        _ => return None,
    })
}

#[test]
fn every_format_case_behaves_as_documented() {
    let Some(speech) = speech_dir("every_format_case_behaves_as_documented") else { return };
    let jfk = decode_file(&speech.join("audio/jfk.wav")).unwrap();
    assert_eq!((jfk.source_rate, jfk.source_channels, jfk.samples.len()), (16_000, 1, 176_000));

    let mut files: Vec<PathBuf> = std::fs::read_dir(speech.join("formats"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wav"))
        .collect();
    files.sort();
    assert!(files.len() >= 11, "formats/ holds {} WAV files", files.len());
    for path in files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let expect = expectation(name).unwrap_or_else(|| panic!("{name}: no expectation in this test"));
        let result = decode_file(&path);
        // Only the cut file says that it was cut, and how long it should have been.
        if let Ok(audio) = &result {
            let declared = audio.declared_duration_s;
            if name == "truncated_data.wav" {
                assert!(declared.is_some_and(|d| (d - 11.0).abs() < 0.01), "{name}: declared {declared:?}");
            } else {
                assert_eq!(declared, None, "{name}");
            }
        }
        match expect {
            Expect::Jfk { min_correlation } => {
                let audio = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(audio.samples.len().abs_diff(176_000) <= 1, "{name}: {} samples", audio.samples.len());
                let r = correlation(&audio.samples, &jfk.samples);
                assert!(r > min_correlation, "{name}: correlation {r:.5} with jfk.wav");
            }
            Expect::JfkSlice { start, len } => {
                let audio = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(audio.samples, jfk.samples[start..start + len], "{name}");
            }
            Expect::Long => {
                let audio = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!((audio.duration_s() - 45.986).abs() < 0.001, "{name}: {} s", audio.duration_s());
                assert_eq!(audio.samples[..176_000], jfk.samples[..], "{name} starts with jfk.wav");
            }
            Expect::Silence => {
                let audio = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(audio.samples.len(), 5 * SAMPLE_RATE as usize);
                assert!(audio.samples.iter().all(|&s| s == 0.0), "{name} is not silent");
            }
            Expect::Error(start) => {
                let message = result.map(|a| a.samples.len()).expect_err(name).to_string();
                assert!(message.starts_with(start), "{name}: {message}");
            }
        }
    }
}

#[test]
fn stereo_channels_are_averaged_before_resampling() {
    let Some(speech) = speech_dir("stereo_channels_are_averaged_before_resampling") else { return };
    let audio = decode_file(&speech.join("formats/jfk_44k1_stereo_s16.wav")).unwrap();
    assert_eq!((audio.source_rate, audio.source_channels), (44_100, 2));
    let peak = audio.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    // Identical channels: averaging keeps the level (a sum would double it, past full scale).
    assert!(peak > 0.3 && peak <= 1.0, "peak {peak}");
}

/// What `ffmpeg ... -f wav -` and other streaming writers produce: RIFF and data lengths left at
/// 0xFFFFFFFF because they were unknown when the header went out. It decodes to its end, the length
/// is not taken for a 37-hour recording, and it is not reported as cut short.
#[test]
fn a_streamed_wav_of_unknown_length_decodes_to_its_end() {
    let Some(speech) = speech_dir("a_streamed_wav_of_unknown_length_decodes_to_its_end") else { return };
    let path = speech.join("audio/jfk.wav");
    let mut bytes = std::fs::read(&path).unwrap();
    let data = bytes.windows(4).position(|w| w == b"data").expect("a data chunk");
    bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[data + 4..data + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let streamed = decode(&bytes, Path::new("-")).unwrap_or_else(|e| panic!("{e}"));
    let jfk = decode_file(&path).unwrap();
    assert_eq!(streamed.samples.len(), jfk.samples.len());
    assert!(correlation(&streamed.samples, &jfk.samples) > 0.999_999);
    assert_eq!(streamed.declared_duration_s, None);
}
