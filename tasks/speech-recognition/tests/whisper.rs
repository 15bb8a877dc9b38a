//! The Whisper pieces against independent references, with the real tiny.en weights from the
//! shared hub cache: the log-mel spectrogram against faster-whisper's numpy implementation
//! (tests/data/speech/mel_reference.safetensors, made by scripts/make_mel_reference.py), the
//! CTranslate2 reader on the real `model.bin`, and the Transformers safetensors path, which must
//! transcribe exactly as the CTranslate2 path does from the same weights.

use std::path::PathBuf;

use candle_core::Device;
use zoo_runtime::test_support::{repo_root, shared_assets, shared_hub_cache};
use zoo_runtime::{Context, HubSettings, Model, ModelRef, TaskArgs};
use zoo_speech_recognition::ct2::Ct2Model;
use zoo_speech_recognition::{audio, mel, model, SpeechRunner};

fn jfk_samples(test: &str) -> Option<Vec<f32>> {
    let assets = shared_assets(test)?;
    let path = assets.join("data/speech/audio/jfk.wav");
    Some(audio::decode(&std::fs::read(&path).unwrap(), &path).unwrap().samples)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn mel_filters_and_spectrogram_match_the_reference() {
    let Some(samples) = jfk_samples("mel reference") else { return };
    let reference =
        candle_core::safetensors::load(repo_root().join("tests/data/speech/mel_reference.safetensors"), &Device::Cpu)
            .unwrap();
    let want_filters = reference["filters"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let filters = mel::mel_filters(16_000, mel::N_FFT, 80);
    let peak = want_filters.iter().cloned().fold(0.0, f32::max);
    let diff = max_abs_diff(&filters, &want_filters);
    assert!(diff <= peak * 1e-5, "filterbank differs by {diff} (peak {peak})");

    let got = mel::log_mel_spectrogram(&samples, mel::CHUNK_SAMPLES, &filters, 80);
    let frames = reference["jfk_frames"].to_vec1::<i64>().unwrap()[0] as usize;
    assert_eq!(got.n_frames, frames, "frame count with 30 s of padding");
    let want = &reference["jfk_log_mel"];
    let kept = want.dim(1).unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ours: Vec<f32> = (0..80).flat_map(|m| got.data[m * got.n_frames..][..kept].to_vec()).collect();
    // Both are float32 FFTs (measured: max 1.2e-5, mean 8e-8).
    let diff = max_abs_diff(&ours, &want);
    let mean = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
    eprintln!("log-mel vs faster-whisper: max |diff| {diff:.2e}, mean {mean:.2e}");
    assert!(diff < 1e-4 && mean < 1e-6, "log-mel differs: max {diff}, mean {mean}");
}

fn tiny_en_dir(test: &str) -> Option<PathBuf> {
    let cache = shared_hub_cache(test)?;
    let snapshots = cache.join("models--Systran--faster-whisper-tiny.en/snapshots");
    Some(std::fs::read_dir(snapshots).unwrap().next().unwrap().unwrap().path())
}

#[test]
fn reads_the_real_ctranslate2_checkpoint() {
    let Some(dir) = tiny_en_dir("ct2 reader") else { return };
    let ct2 = Ct2Model::open(&dir.join("model.bin")).unwrap();
    assert_eq!((ct2.version, ct2.spec.as_str()), (6, "WhisperSpec"));
    assert_eq!(ct2.scalar("encoder/num_heads").unwrap(), 6);
    let qkv = ct2.variable("encoder/layer_0/self_attention/linear_0/weight").unwrap();
    assert_eq!(qkv.shape, vec![1152, 384]);
    // The projection is an alias of the embeddings, not a copy.
    assert_eq!(ct2.variable("decoder/projection/weight").unwrap().shape, vec![51864, 384]);
    let (tensors, config) = model::transformers_tensors(&ct2, &Device::Cpu).unwrap();
    assert_eq!(
        (config.num_mel_bins, config.d_model, config.encoder_layers, config.decoder_layers, config.vocab_size),
        (80, 384, 4, 4, 51864)
    );
    assert_eq!((config.max_source_positions, config.max_target_positions), (1500, 448));
    // The stacked q/k/v split back into rows: q is the first 384 rows of the stacked matrix.
    let stacked = ct2.tensor("encoder/layer_0/self_attention/linear_0/weight", &Device::Cpu).unwrap();
    let q = &tensors["model.encoder.layers.0.self_attn.q_proj.weight"];
    let v = &tensors["model.encoder.layers.0.self_attn.v_proj.weight"];
    assert_eq!(q.to_vec2::<f32>().unwrap(), stacked.narrow(0, 0, 384).unwrap().to_vec2::<f32>().unwrap());
    assert_eq!(v.to_vec2::<f32>().unwrap(), stacked.narrow(0, 768, 384).unwrap().to_vec2::<f32>().unwrap());
    // The k bias CTranslate2 stores is zero (Whisper has none), so dropping it loses nothing.
    let bias = ct2.tensor("encoder/layer_0/self_attention/linear_0/bias", &Device::Cpu).unwrap();
    let k_bias = bias.narrow(0, 384, 384).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(k_bias, 0.0);
    assert!(!tensors.contains_key("model.encoder.layers.0.self_attn.k_proj.bias"));
}

#[test]
fn transformers_safetensors_transcribe_as_ctranslate2_does() {
    let Some(dir) = tiny_en_dir("transformers checkpoint") else { return };
    let Some(samples) = jfk_samples("transformers checkpoint") else { return };
    let ct2 = Ct2Model::open(&dir.join("model.bin")).unwrap();
    let (tensors, config) = model::transformers_tensors(&ct2, &Device::Cpu).unwrap();
    let hf = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&tensors, hf.path().join("model.safetensors")).unwrap();
    let ct2_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let hf_config = serde_json::json!({
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": config.d_model,
        "encoder_layers": config.encoder_layers,
        "encoder_attention_heads": config.encoder_attention_heads,
        "decoder_layers": config.decoder_layers,
        "decoder_attention_heads": config.decoder_attention_heads,
        "encoder_ffn_dim": 4 * config.d_model,
        "decoder_ffn_dim": 4 * config.d_model,
        "num_mel_bins": config.num_mel_bins,
        "vocab_size": config.vocab_size,
        "max_source_positions": config.max_source_positions,
        "max_target_positions": config.max_target_positions,
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "torch_dtype": "float32",
    });
    std::fs::write(hf.path().join("config.json"), hf_config.to_string()).unwrap();
    std::fs::copy(dir.join("tokenizer.json"), hf.path().join("tokenizer.json")).unwrap();

    let hub = HubSettings::from_env(false);
    let ctx = Context { device: Device::Cpu, hub: hub.clone(), progress: false, outputs: Default::default() };
    let transcribe = |reference: &str| {
        let model = Model::resolve(&ModelRef::parse(reference).unwrap(), &hub);
        let mut runner = SpeechRunner::load(&model, &TaskArgs::new(), &ctx).unwrap();
        let format = runner.whisper.format;
        (format, runner.transcribe_samples(&samples).unwrap())
    };
    let (format_a, from_ct2) = transcribe(&dir.display().to_string());
    let (format_b, from_hf) = transcribe(&hf.path().display().to_string());
    assert_eq!((format_a, format_b), ("ctranslate2", "transformers"));
    assert!(from_ct2.text().contains("fellow Americans"), "{}", from_ct2.text());
    assert_eq!(from_ct2.text(), from_hf.text());
    let times = |t: &zoo_speech_recognition::decode::Transcript| {
        t.segments.iter().map(|s| (s.start, s.end, s.tokens.clone())).collect::<Vec<_>>()
    };
    assert_eq!(times(&from_ct2), times(&from_hf));
}

/// The CPU encoder against the same network written with candle's generic ops (exact-erf GELU,
/// sinusoids in f64), on a real window.
#[test]
fn cpu_encoder_matches_candle_ops() {
    use candle_core::{DType, Module, Tensor, D};
    let Some(dir) = tiny_en_dir("cpu encoder parity") else { return };
    let Some(samples) = jfk_samples("cpu encoder parity") else { return };
    let ct2 = Ct2Model::open(&dir.join("model.bin")).unwrap();
    let (w, config) = model::transformers_tensors(&ct2, &Device::Cpu).unwrap();
    let filters = mel::mel_filters(16_000, mel::N_FFT, 80);
    let log_mel = mel::log_mel_spectrogram(&samples, mel::CHUNK_SAMPLES, &filters, 80);
    let window = log_mel.window(0, samples.len() / mel::HOP_LENGTH);

    let vb = candle_nn::VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let ours = zoo_speech_recognition::encoder::CpuEncoder::load(&vb, &config, false).unwrap().forward(&window);

    let t = |name: &str| w[name].clone();
    let linear = |x: &Tensor, name: &str, bias: bool| {
        let y = x.broadcast_matmul(&t(&format!("{name}.weight")).t().unwrap()).unwrap();
        if bias {
            y.broadcast_add(&t(&format!("{name}.bias"))).unwrap()
        } else {
            y
        }
    };
    let norm = |x: &Tensor, name: &str| {
        candle_nn::LayerNorm::new(t(&format!("{name}.weight")), t(&format!("{name}.bias")), 1e-5).forward(x).unwrap()
    };
    let conv = |x: &Tensor, name: &str, stride| {
        x.conv1d(&t(&format!("{name}.weight")), 1, stride, 1, 1)
            .unwrap()
            .broadcast_add(&t(&format!("{name}.bias")).reshape((1, (), 1)).unwrap())
            .unwrap()
            .gelu_erf()
            .unwrap()
    };
    let mel_t = Tensor::from_vec(window, (1, 80, 3000), &Device::Cpu).unwrap();
    let x = conv(&conv(&mel_t, "model.encoder.conv1", 1), "model.encoder.conv2", 2);
    let (heads, d) = (config.encoder_attention_heads, config.d_model);
    // Whisper's sinusoids in f64 (the checkpoint's own table is f16-rounded, ~5e-4 off).
    let half = d / 2;
    let positions: Vec<f32> = (0..1500)
        .flat_map(|pos| {
            let angle = move |i: usize| pos as f64 * (-(10_000f64.ln()) / (half - 1) as f64 * i as f64).exp();
            (0..half).map(move |i| angle(i).sin() as f32).chain((0..half).map(move |i| angle(i).cos() as f32))
        })
        .collect();
    let positions = Tensor::from_vec(positions, (1500, d), &Device::Cpu).unwrap();
    let mut x = x.transpose(1, 2).unwrap().broadcast_add(&positions).unwrap();
    for i in 0..config.encoder_layers {
        let p = format!("model.encoder.layers.{i}");
        let h = norm(&x, &format!("{p}.self_attn_layer_norm"));
        let split =
            |y: Tensor| y.reshape((1, 1500, heads, d / heads)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let q = split(linear(&h, &format!("{p}.self_attn.q_proj"), true));
        let k = split(linear(&h, &format!("{p}.self_attn.k_proj"), false));
        let v = split(linear(&h, &format!("{p}.self_attn.v_proj"), true));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / ((d / heads) as f64).sqrt()).unwrap();
        let attn = candle_nn::ops::softmax(&scores, D::Minus1).unwrap().matmul(&v).unwrap();
        let attn = attn.transpose(1, 2).unwrap().reshape((1, 1500, d)).unwrap();
        x = (x + linear(&attn, &format!("{p}.self_attn.out_proj"), true)).unwrap();
        let h = norm(&x, &format!("{p}.final_layer_norm"));
        let h = linear(&linear(&h, &format!("{p}.fc1"), true).gelu_erf().unwrap(), &format!("{p}.fc2"), true);
        x = (x + h).unwrap();
    }
    let want = norm(&x, "model.encoder.layer_norm").flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = max_abs_diff(&ours, &want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("CPU encoder vs candle ops: max |diff| {diff:.2e} (values up to {scale:.1})");
    assert!(diff < 1e-3, "encoder outputs differ by {diff}");
}

/// The batched decoder step against one window at a time, on the real weights: two windows of
/// different audio at different lengths (so each row attends over its own caches), then one
/// step of both together; logits as the single steps give them, and the caches left as they would be.
#[test]
fn a_batched_decoder_step_is_each_windows_own_step() {
    let Some(dir) = tiny_en_dir("batched decoder step") else { return };
    let Some(samples) = jfk_samples("batched decoder step") else { return };
    let hub = HubSettings::from_env(false);
    let model = Model::resolve(&ModelRef::parse(&dir.display().to_string()).unwrap(), &hub);
    let mut whisper = model::Whisper::load(&model, &Device::Cpu, model::ComputeType::Float32).unwrap();
    let filters = mel::mel_filters(16_000, mel::N_FFT, 80);
    let window = |audio: &[f32]| {
        mel::log_mel_spectrogram(audio, mel::CHUNK_SAMPLES, &filters, 80).window(0, audio.len() / mel::HOP_LENGTH)
    };
    let first = whisper.encode(window(&samples)).unwrap();
    let second = whisper.encode(window(&samples[samples.len() / 2..])).unwrap();
    let t = whisper.tokens.clone();
    let (mut a, mut b) = (whisper.start(&first).unwrap(), whisper.start(&second).unwrap());
    whisper.step(&[t.sot, t.no_timestamps], &mut a, &[1]).unwrap();
    whisper.step(&[t.sot, t.no_timestamps, 634, 523, 616], &mut b, &[4]).unwrap();
    let (next_a, next_b) = (1770, 4842);
    let mut states = vec![a.clone(), b.clone()];
    let batched = whisper.step_batch(&[next_a, next_b], &mut states).unwrap();
    let single_a = whisper.step(&[next_a], &mut a, &[0]).unwrap().remove(0);
    let single_b = whisper.step(&[next_b], &mut b, &[0]).unwrap().remove(0);
    let scale = single_a.iter().chain(&single_b).fold(0f32, |m, v| m.max(v.abs()));
    for (got, want) in batched.iter().zip([&single_a, &single_b]) {
        let diff = max_abs_diff(got, want);
        assert!(diff <= 1e-4 * scale, "batched logits differ by {diff} (scale {scale})");
    }
    assert_eq!((states[0].len(), states[1].len()), (a.len(), b.len()));
    // One more step each way from the states the batched step left: the caches were extended alike.
    let again = whisper.step_batch(&[t.eot, t.eot], &mut states).unwrap();
    for (got, state) in again.iter().zip([&mut a, &mut b]) {
        let want = whisper.step(&[t.eot], state, &[0]).unwrap().remove(0);
        assert!(max_abs_diff(got, &want) <= 1e-4 * scale);
    }
    assert!(whisper.step_batch(&[next_a], &mut states).is_err(), "one token for two windows is refused");
}

/// `--compute-type int8` quantizes each layer as the model loads: the encoder's output, and the
/// first token's logits from the decoder fed float32's audio, then differ from float32's by
/// quantization's error alone (not at all would mean that half stayed in float), and the same
/// token comes first; `auto` on this float16 checkpoint is float32 exactly.
#[test]
fn an_int8_load_runs_its_layers_in_int8_close_to_float() {
    let Some(dir) = tiny_en_dir("int8 load") else { return };
    let Some(samples) = jfk_samples("int8 load") else { return };
    let hub = HubSettings::from_env(false);
    let model = Model::resolve(&ModelRef::parse(&dir.display().to_string()).unwrap(), &hub);
    let load = |compute| model::Whisper::load(&model, &Device::Cpu, compute).unwrap();
    let filters = mel::mel_filters(16_000, mel::N_FFT, 80);
    let window =
        mel::log_mel_spectrogram(&samples, mel::CHUNK_SAMPLES, &filters, 80).window(0, samples.len() / mel::HOP_LENGTH);
    let mut float = load(model::ComputeType::Float32);
    let float_audio = float.encode(window.clone()).unwrap();
    let t = float.tokens.clone();
    let first_logits = |whisper: &model::Whisper, audio: &candle_core::Tensor| {
        let mut state = whisper.start(audio).unwrap();
        whisper.step(&[t.sot, t.no_timestamps], &mut state, &[1]).unwrap().remove(0)
    };
    let values = |audio: &candle_core::Tensor| audio.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let float_logits = first_logits(&float, &float_audio);
    drop(float);

    let mut auto = load(model::ComputeType::Auto);
    let auto_audio = auto.encode(window.clone()).unwrap();
    assert!(
        values(&auto_audio) == values(&float_audio) && first_logits(&auto, &float_audio) == float_logits,
        "auto on a float checkpoint is float32"
    );
    drop(auto);

    let mut int8 = load(model::ComputeType::Int8);
    let int8_audio = int8.encode(window).unwrap();
    let int8_logits = first_logits(&int8, &float_audio);
    let relative_rms = |a: &[f32], b: &[f32]| {
        let error: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        (error / b.iter().map(|y| y * y).sum::<f32>()).sqrt()
    };
    let (audio_error, logits_error) =
        (relative_rms(&values(&int8_audio), &values(&float_audio)), relative_rms(&int8_logits, &float_logits));
    eprintln!("int8 against float32: encoder relative RMS {audio_error:.2e}, decoder's logits {logits_error:.2e}");
    assert!(audio_error > 0.0, "the int8 encoder gave float32's output bit for bit");
    assert!(logits_error > 0.0, "the int8 decoder gave float32's logits bit for bit");
    assert!(audio_error < 0.25 && logits_error < 0.25, "int8 is far from float32: {audio_error}, {logits_error}");
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(argmax(&int8_logits), argmax(&float_logits), "int8 picks another first token");
}
