//! `make bench` for speech recognition: real-time factor and peak memory of transcribing the dev
//! clips (log-mel + encoder + decoding; model load and file decoding excluded, as the faster-whisper
//! peer in ../shared/bench times it), greedy with timestamps, one warm-up clip; plus the encoder's
//! share, the WER of what was transcribed, and what --explain's word timing costs. JSON lines shaped like ../shared/bench's.

use std::time::Instant;

use candle_core::Device;
use serde_json::json;
use zoo_runtime::test_support::{peak_rss_mb, shared_assets, shared_hub_cache};
use zoo_runtime::{Context, HubSettings, Input, Model, ModelRef, Runner, TaskArgs};
use zoo_speech_recognition::{audio, SpeechRunner};

fn main() {
    let (Some(assets), Some(cache)) = (shared_assets("speech bench"), shared_hub_cache("speech bench")) else {
        return;
    };
    let model_name = std::env::var("ZOO_BENCH_WHISPER").unwrap_or_else(|_| "faster-whisper-tiny.en".into());
    let mut hub = HubSettings::from_env(true);
    hub.cache_dir = cache;
    let ctx = Context { device: Device::Cpu, hub: hub.clone(), progress: false, outputs: Default::default() };
    let model = Model::resolve(&ModelRef::parse(&model_name).unwrap(), &hub);
    let mut args = TaskArgs::new();
    args.set("no-fallback", "true");
    // `make bench` runs this once per compute type, each in its own process for its own peak.
    let compute_type = std::env::var("ZOO_BENCH_COMPUTE_TYPE").unwrap_or_else(|_| "float32".into());
    args.set("compute-type", &compute_type);
    let load_start = Instant::now();
    let mut runner = SpeechRunner::load(&model, &args, &ctx).unwrap();
    let load_s = load_start.elapsed().as_secs_f64();

    let speech = assets.join("data/speech");
    let manifest = std::fs::read_to_string(speech.join("manifest.tsv")).unwrap();
    let clips: Vec<(String, Vec<f32>)> = manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let path = speech.join(cols[1]);
            let bytes = std::fs::read(&path).unwrap();
            (cols[0].to_string(), audio::decode(&bytes, &path).unwrap().samples)
        })
        .collect();
    let audio_s: f64 = clips.iter().map(|c| c.1.len() as f64 / audio::SAMPLE_RATE as f64).sum();

    runner.transcribe_samples(&clips[0].1).unwrap();
    let mut hyps = String::new();
    let start = Instant::now();
    for (id, samples) in &clips {
        let t = runner.transcribe_samples(samples).unwrap();
        hyps.push_str(&format!("{id}\t{}\n", t.text().replace(['\t', '\n'], " ")));
    }
    let wall_s = start.elapsed().as_secs_f64();

    // The encoder alone, on one window, to show where the time goes.
    let window = vec![0f32; runner.whisper.config.num_mel_bins * 3000];
    let reps = 5;
    let enc_start = Instant::now();
    for _ in 0..reps {
        runner.whisper.encode(window.clone()).unwrap();
    }
    let encoder_s = enc_start.elapsed().as_secs_f64() / reps as f64;

    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench".into());
    std::fs::create_dir_all(&out).unwrap();
    let hyp_path = std::path::Path::new(&out).join(format!("hyp-zoo-speech-{compute_type}.tsv"));
    std::fs::write(&hyp_path, hyps).unwrap();
    let wer = std::process::Command::new("python3")
        .arg(assets.join("reference/wer.py"))
        .arg(speech.join("manifest.tsv"))
        .arg(&hyp_path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|report| report.lines().find(|l| l.starts_with("TOTAL") || l.starts_with("ALL")).map(str::to_string));
    println!(
        "{}",
        json!({"task": "speech", "peer": "zoo (candle)", "model": model.id, "input": format!("{} clips", clips.len()),
               "compute_type": compute_type, "batch": 1, "threads": candle_core::utils::get_num_threads(), "wall_s": wall_s, "audio_s": audio_s,
               "rtf": wall_s / audio_s, "items_per_s": audio_s / wall_s, "encoder_s_per_window": encoder_s,
               "load_s": load_s, "wer": wer, "hyp": hyp_path, "peak_rss_mb": peak_rss_mb()})
    );

    // The 190 s recording three ways, as ../shared/assets/reference/vad/tools/bench_long.py times
    // faster-whisper on it: the transcription alone (model loaded; the WAV's decoding, a few ms, is
    // inside), median of three runs, each on a freshly loaded runner.
    drop(runner);
    let long = Input::file(speech.join("long/long_dev_concat.wav"));
    for (mode, flags) in
        [("sequential", vec![]), ("--vad", vec![("vad", "true")]), ("--batch-size 8", vec![("batch-size", "8")])]
    {
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut mode_args = args.clone();
            mode_args.set("no-fallback", "false");
            for (name, value) in &flags {
                mode_args.set(name, *value);
            }
            let mut runner = SpeechRunner::load(&model, &mode_args, &ctx).unwrap();
            let start = Instant::now();
            let result = runner.run(std::slice::from_ref(&long)).remove(0);
            times.push(start.elapsed().as_secs_f64());
            assert!(result.is_ok(), "the long recording, {mode}");
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            json!({"task": "speech", "peer": "zoo (candle)", "model": model.id, "input": format!("long recording, {mode}"),
                   "compute_type": compute_type, "threads": candle_core::utils::get_num_threads(),
                   "transcribe_s_median": times[1], "transcribe_s_all": times})
        );
    }

    // What --explain costs: the same clips with every word timed (cross-attention DTW) and scored.
    args.set(zoo_runtime::explain::FLAG, "true");
    let mut runner = SpeechRunner::load(&model, &args, &ctx).unwrap();
    runner.transcribe_samples(&clips[0].1).unwrap();
    let start = Instant::now();
    for (_, samples) in &clips {
        runner.transcribe_samples(samples).unwrap();
    }
    let explain_s = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"task": "speech", "peer": "zoo (candle)", "model": model.id, "input": format!("{} clips, --explain (word timing)", clips.len()),
               "compute_type": compute_type, "batch": 1, "threads": candle_core::utils::get_num_threads(), "wall_s": explain_s, "audio_s": audio_s,
               "rtf": explain_s / audio_s, "explain_cost_x": explain_s / wall_s, "peak_rss_mb": peak_rss_mb()})
    );
}
