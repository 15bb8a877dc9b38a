//! The bundled Silero VAD against faster-whisper 1.2.1's own outputs
//! (`../shared/assets/reference/vad`, made with its ONNX model and `get_speech_timestamps`): the
//! network's intermediates and probabilities, and the speech timestamps for both option sets
//! faster-whisper uses (`vad_filter=True`'s defaults, and the batched pipeline's 30 s / 160 ms).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zoo_runtime::test_support::shared_assets;
use zoo_speech_recognition::audio;
use zoo_speech_recognition::vad::{self, SileroVad, VadOptions};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn batched_options() -> VadOptions {
    VadOptions { max_speech_duration_s: 30.0, min_silence_duration_ms: 160.0, ..VadOptions::default() }
}

/// Samples as faster-whisper reads a 16 kHz mono 16-bit WAV (int16 / 32768); other files go
/// through its resampler, which zoo's does not copy sample for sample.
fn plain_wav(path: &std::path::Path) -> Option<Vec<f32>> {
    let reader = hound::WavReader::open(path).ok()?;
    let spec = reader.spec();
    if (spec.sample_rate, spec.channels, spec.bits_per_sample) != (16_000, 1, 16) {
        return None;
    }
    let samples = audio::decode(&std::fs::read(path).unwrap(), path).unwrap().samples;
    Some(samples)
}

#[test]
fn the_bundled_weights_are_faster_whispers() {
    let bytes = zoo_runtime::bundled::file(vad::BUNDLED).expect("bundled");
    assert_eq!(
        format!("{:x}", Sha256::digest(bytes)),
        "ad1904d29d13a9166b403552fccb3151e3cd4b4c125f5dafd42d4355fe92b355",
        "weights/silero-vad/silero_vad_v6.safetensors is not the file weights/silero-vad/PROVENANCE.md names"
    );
}

#[test]
fn probabilities_match_onnxruntime_on_jfk() {
    let Some(assets) = shared_assets("probabilities_match_onnxruntime_on_jfk") else { return };
    let vad = SileroVad::bundled().unwrap();
    let reference =
        candle_core::safetensors::load(assets.join("reference/vad/jfk_intermediates.safetensors"), &Device::Cpu)
            .unwrap();
    let samples = plain_wav(&assets.join("data/speech/audio/jfk.wav")).expect("jfk.wav is 16 kHz mono s16");
    let want = reference["speech_probs"].to_vec1::<f32>().unwrap();
    let got = vad.probabilities(&samples);
    let diff = max_abs_diff(&got, &want);
    eprintln!("jfk: {} windows, max |ours - onnxruntime| = {diff:.2e}", got.len());
    assert!(diff < 1e-5, "speech probabilities differ from onnxruntime's by {diff}");
}

#[test]
fn speech_timestamps_match_faster_whisper_on_every_clip() {
    let Some(assets) = shared_assets("speech_timestamps_match_faster_whisper_on_every_clip") else { return };
    let vad = SileroVad::bundled().unwrap();
    let reference: Value =
        serde_json::from_slice(&std::fs::read(assets.join("reference/vad/speech_timestamps.json")).unwrap()).unwrap();
    let probabilities: HashMap<String, Tensor> =
        candle_core::safetensors::load(assets.join("reference/vad/vad_probs.safetensors"), &Device::Cpu).unwrap();
    let (mut clips, mut worst) = (0, 0f32);
    for (id, clip) in reference["clips"].as_object().unwrap() {
        let Some(stored) = probabilities.get(id) else { continue };
        let stored = stored.to_vec1::<f32>().unwrap();
        let samples = clip["n_samples"].as_u64().unwrap() as usize;
        let regions = |key: &str| -> Vec<(usize, usize)> {
            clip[key]["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize))
                .collect()
        };
        // The state machine alone, from faster-whisper's own probabilities: exactly its regions.
        for (key, options) in [("default", VadOptions::default()), ("batched_pipeline_options", batched_options())] {
            assert_eq!(
                vad::speech_timestamps(&stored, samples, &options),
                regions(key),
                "{id} {key}, stored probabilities"
            );
        }
        // End to end, where zoo reads the same samples faster-whisper does.
        let Some(audio) = plain_wav(&assets.join(clip["file"].as_str().unwrap())) else { continue };
        assert_eq!(audio.len(), samples, "{id}");
        let ours = vad.probabilities(&audio);
        worst = worst.max(max_abs_diff(&ours, &stored));
        for (key, options) in [("default", VadOptions::default()), ("batched_pipeline_options", batched_options())] {
            assert_eq!(
                vad::speech_timestamps(&ours, samples, &options),
                regions(key),
                "{id} {key}, zoo's probabilities"
            );
        }
        clips += 1;
    }
    eprintln!("{clips} clips end to end; max |ours - faster-whisper| = {worst:.2e}");
    assert!(clips >= 20, "only {clips} clips could be read");
    assert!(worst < 1e-5, "probabilities differ from faster-whisper's by {worst}");
}

#[test]
fn speech_groups_match_faster_whispers_batched_chunks() {
    let Some(assets) = shared_assets("speech_groups_match_faster_whispers_batched_chunks") else { return };
    let reference: Value =
        serde_json::from_slice(&std::fs::read(assets.join("reference/vad/speech_timestamps.json")).unwrap()).unwrap();
    let rate = f64::from(audio::SAMPLE_RATE);
    let (mut clips, mut several) = (0, 0);
    for (id, clip) in reference["clips"].as_object().unwrap() {
        let Some(batched) = clip.get("batched_pipeline_options") else { continue };
        let regions: Vec<(usize, usize)> = batched["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize))
            .collect();
        if regions.is_empty() {
            continue;
        }
        let groups = vad::group_speech(&regions, 30 * audio::SAMPLE_RATE as usize);
        let chunks = batched["collect_chunks_30s"].as_array().unwrap();
        assert_eq!(groups.len(), chunks.len(), "{id}: groups");
        let mut offset = 0usize;
        for (group, chunk) in groups.iter().zip(chunks) {
            let members: Vec<usize> =
                chunk["vad_segment_indices"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
            let ours: Vec<(usize, usize)> = members.iter().map(|&i| regions[i]).collect();
            assert_eq!(group, &ours, "{id}: a group's ranges");
            let length: usize = group.iter().map(|(s, e)| e - s).sum();
            assert!((length as f64 / rate - chunk["duration_s"].as_f64().unwrap()).abs() < 1e-6, "{id}: duration");
            assert!((offset as f64 / rate - chunk["offset_s"].as_f64().unwrap()).abs() < 1e-6, "{id}: offset");
            offset += length;
        }
        clips += 1;
        several += usize::from(groups.len() > 1);
    }
    eprintln!("{clips} clips grouped as faster-whisper's collect_chunks, {several} in several groups");
    assert!(clips >= 20 && several >= 2, "only {clips} clips ({several} with several groups)");
}
