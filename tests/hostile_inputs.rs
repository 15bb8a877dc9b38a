//! The bad-input corpus: files a user may pick up anywhere, made by this test (empty, truncated,
//! wrong magic, headers that claim absurd sizes, non-UTF-8, deeply nested JSON), run through
//! `zoo run` for every task and input kind. Each must end with exit status 1, a one-line error on
//! stderr that names the file, no panic, within a time and memory bound. The one exception is a
//! WAV whose data chunk claims more than the file holds (a cut download, or a streaming writer's
//! placeholder length): it decodes to the samples present, as for `formats/truncated_data.wav`
//! in the shared speech data, without allocating for the length it claims.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zoo_runtime::test_support::shared_hub_cache;

#[allow(dead_code)]
#[path = "../tasks/fake-news/tests/support/tiny_classifiers.rs"]
mod tiny_classifiers;
#[allow(dead_code)]
#[path = "../tasks/image-classification/tests/support/tiny_vit.rs"]
mod tiny_vit;
#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

/// No input may take longer than this to be refused (the models load in well under it).
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// Nor take more memory than this (the largest model here, Whisper tiny.en, runs in ~500 MB).
const MEMORY_LIMIT_MB: u64 = 1500;

/// A one-line error a person reads, with the temporary folder's path in it; a backtrace (which
/// candle appends to its errors when RUST_BACKTRACE is set) runs to thousands.
const MAX_ERROR_CHARS: usize = 400;

/// A bad file and the task that reads it.
struct Case {
    task: &'static str,
    name: &'static str,
    bytes: Vec<u8>,
    extra: Vec<String>,
    /// Decoding what is there (exit 0) is right too.
    partial_ok: bool,
    via: Via,
}

/// How a bad input reaches zoo.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// A file the test writes, named after the case.
    File,
    /// Piped to `-`.
    Stdin,
    /// A path that is not a regular file: a device that reports no size and never ends.
    Device(&'static str),
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header claims `width` x `height` pixels, followed by a few bytes of image data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A real `width` x `height` PNG.
fn png_of(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 99]));
    image.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// A 16 kHz mono 16-bit WAV header whose data chunk claims `data_bytes`, with `actual` bytes after it.
fn wav_claiming(data_bytes: u32, actual: usize) -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend(data_bytes.saturating_add(36).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes()); // PCM
    out.extend(1u16.to_le_bytes()); // mono
    out.extend(16_000u32.to_le_bytes());
    out.extend(32_000u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(data_bytes.to_le_bytes());
    out.extend(vec![0u8; actual]);
    out
}

/// A FLAC stream whose STREAMINFO claims `seconds` of 16 kHz mono audio, and no frames.
fn flac_claiming(seconds: u64) -> Vec<u8> {
    let mut out = b"fLaC".to_vec();
    out.extend([0x80, 0, 0, 34]); // last metadata block, STREAMINFO, 34 bytes
    out.extend(4096u16.to_be_bytes()); // min block size
    out.extend(4096u16.to_be_bytes()); // max block size
    out.extend([0, 0, 0, 0, 0, 0]); // min/max frame size unknown
                                    // 20 bits sample rate, 3 bits channels - 1, 5 bits bits-per-sample - 1, 36 bits total samples.
    let (rate, channels, bits, total) = (16_000u64, 0u64, 15u64, seconds * 16_000);
    let packed = (rate << 44) | (channels << 41) | (bits << 36) | total;
    out.extend(packed.to_be_bytes());
    out.extend([0u8; 16]); // MD5 unknown
    out
}

fn corpus(photo: &[u8], wav: &[u8], out_dir: &str) -> Vec<Case> {
    let case = |task, name, bytes: Vec<u8>| {
        // Style transfer needs somewhere to write; nothing may appear there.
        let extra = if task == "style-transfer" { vec!["--output-dir".into(), out_dir.into()] } else { vec![] };
        Case { task, name, bytes, extra, partial_ok: false, via: Via::File }
    };
    let flags = |case: Case, flags: &[&str]| Case { extra: flags.iter().map(|f| f.to_string()).collect(), ..case };
    let mut cases = Vec::new();
    for task in ["image-classification", "style-transfer", "object-detection", "face-recognition"] {
        cases.push(case(task, "empty.png", Vec::new()));
        cases.push(case(task, "truncated.png", photo[..photo.len().min(200)].to_vec()));
        cases.push(case(task, "not-an-image.png", b"hello, I am text".to_vec()));
        cases.push(case(task, "garbage.jpg", [b"\xFF\xD8\xFF\xE0".as_slice(), &[0x55; 300]].concat()));
        cases.push(case(task, "huge.png", png_claiming(100_000, 100_000)));
        cases.push(case(task, "zero-size.png", png_claiming(0, 0)));
        // Valid, but smaller than any kernel or crop: processed (exit 0) or refused, never a crash.
        cases.push(Case { partial_ok: true, ..case(task, "one-pixel.png", png_of(1, 1)) });
        cases.push(Case { partial_ok: true, ..case(task, "strip.png", png_of(2, 3000)) });
    }
    let asr = "speech-recognition";
    cases.push(case(asr, "empty.wav", Vec::new()));
    cases.push(case(asr, "truncated.wav", wav[..wav.len().min(30)].to_vec()));
    cases.push(case(asr, "not-audio.wav", b"RIFX this is not a wave file at all".to_vec()));
    cases.push(Case { partial_ok: true, ..case(asr, "claims-4GB.wav", wav_claiming(u32::MAX - 65, 3200)) });
    cases.push(case(asr, "claims-24h.flac", flac_claiming(24 * 3600)));
    cases.push(case(asr, "garbage.mp3", [b"ID3\x03\x00\x00\x00\x00\x00\x0a".as_slice(), &[0xAB; 400]].concat()));
    cases.push(case(asr, "garbage.ogg", [b"OggS".as_slice(), &[0x00; 60]].concat()));
    let news = "fake-news";
    cases.push(case(news, "empty.txt", Vec::new()));
    cases.push(case(news, "blank.txt", b" \n\t \r\n".to_vec()));
    cases.push(case(news, "binary.txt", [0u8, 1, 2, 3, 0, 0, 255, 7].repeat(64)));
    cases.push(case(news, "latin1.txt", b"caf\xe9 cr\xe8me, \xe9t\xe9 \xe0 Paris".to_vec()));
    let text_column = vec!["--text-column".to_string(), "text".to_string()];
    let nested = format!("{{\"text\": {}1{}}}\n", "[".repeat(100_000), "]".repeat(100_000));
    cases.push(Case {
        task: news,
        name: "nested.jsonl",
        bytes: nested.into_bytes(),
        extra: text_column.clone(),
        partial_ok: false,
        via: Via::File,
    });
    cases.push(Case {
        task: news,
        name: "no-such-column.csv",
        bytes: b"id,tweet\n1,hello there\n".to_vec(),
        extra: text_column.clone(),
        partial_ok: false,
        via: Via::File,
    });
    cases.push(Case {
        task: news,
        name: "broken.jsonl",
        bytes: b"{\"text\": \"fine\"}\n{\"text\": \"unterminated\n".to_vec(),
        extra: text_column.clone(),
        partial_ok: false,
        via: Via::File,
    });
    // Inputs with no size to check up front: an endless device and stdin. Each task's byte limit
    // (derived from its own limit flag, here set low to keep the test fast) stops the read.
    let zero = |task, flag: &[&str]| flags(Case { via: Via::Device("/dev/zero"), ..case(task, "zero", vec![]) }, flag);
    cases.push(zero("image-classification", &["--max-pixels", "1000"]));
    cases.push(zero(asr, &["--max-duration", "1"]));
    cases.push(zero(news, &[]));
    cases.push(flags(
        Case { via: Via::Stdin, ..case(news, "stdin over the limit", b"Breaking news. ".repeat(300)) },
        &["--max-text-mb", "0.002"],
    ));
    cases.push(Case { via: Via::Stdin, ..case("image-classification", "stdin garbage", vec![0x42; 500]) });
    cases
}

/// Runs zoo offline on `arg` (a path or `-`), killing it past [`TIME_LIMIT`].
fn run(cache: &Path, case: &Case, arg: &str) -> zoo_bin::Bounded {
    let mut args = vec!["run", case.task, arg];
    args.extend(case.extra.iter().map(String::as_str));
    let stdin = (case.via == Via::Stdin).then_some(case.bytes.as_slice());
    let mut cmd = zoo_bin::zoo_command(cache, &args);
    // As many Rust developers keep it: errors must stay one line even so (candle would otherwise
    // append a backtrace to each error it makes).
    cmd.env("RUST_BACKTRACE", "1");
    zoo_bin::run_bounded(cmd, stdin, TIME_LIMIT)
}

#[test]
fn every_bad_input_gets_a_one_line_error_naming_it() {
    let Some(cache) = shared_hub_cache("bad-input corpus (fake-news and speech models)") else { return };
    let photo = std::fs::read(zoo_bin::data("chelsea.png")).unwrap();
    let wav = wav_claiming(3200, 3200);
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let styled = dir.path().join("styled");
    let cases = corpus(&photo, &wav, styled.to_str().unwrap());
    for case in &cases {
        let file = dir.path().join(case.task).join(case.name);
        let (arg, named) = match case.via {
            Via::File => {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, &case.bytes).unwrap();
                (file.to_str().unwrap(), case.name)
            }
            Via::Stdin => ("-", "-: "),
            Via::Device(path) => (path, path),
        };
        let out = run(&cache, case, arg);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        report.push(format!(
            "{} {}: exit {:?}, {:.1} s, {} MB: {}",
            case.task,
            case.name,
            out.code,
            out.seconds,
            out.peak_mb,
            lines.join(" | ")
        ));
        let mut wrong = Vec::new();
        if case.partial_ok && out.code == Some(0) {
            if out.stderr.contains("panicked") || out.peak_mb > MEMORY_LIMIT_MB {
                failures.push(format!("{} {}: {}", case.task, case.name, out.stderr.trim()));
            }
            // A picture style transfer could process is written, as for any other.
            let _ = std::fs::remove_file(styled.join(case.name));
            continue;
        }
        if out.code != Some(1) {
            wrong.push(format!("exit {:?} (want 1)", out.code));
        }
        if out.stderr.contains("panicked") {
            wrong.push("panicked".into());
        }
        if lines.len() != 1 {
            wrong.push(format!("{} lines on stderr (want 1)", lines.len()));
        }
        if !out.stderr.contains(named) {
            wrong.push("the error does not name the file".into());
        }
        if out.peak_mb > MEMORY_LIMIT_MB {
            wrong.push(format!("{} MB of memory", out.peak_mb));
        }
        if out.stderr.len() > MAX_ERROR_CHARS {
            wrong.push(format!("a {}-character error (a backtrace?)", out.stderr.len()));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{} {}: {}\n    stderr: {}",
                case.task,
                case.name,
                wrong.join("; "),
                out.stderr.trim()
            ));
        }
    }
    eprintln!("{} bad inputs:\n{}", cases.len(), report.join("\n"));
    let written: Vec<_> =
        std::fs::read_dir(&styled).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(written.is_empty(), "bad inputs left files behind: {written:?}");
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_crc_helper_matches_the_png_reference_value() {
    // The CRC of "IEND" (an empty IEND chunk) is fixed by the PNG specification.
    assert_eq!(crc32(b"IEND"), 0xAE42_6082);
}

/// A model folder whose files lie: each must be refused with exit status 1 and a one-line error,
/// before any allocation the lie would ask for.
struct BadModel {
    task: &'static str,
    name: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
    input: PathBuf,
}

/// A safetensors file whose header describes `tensors` (name, dtype, shape, offsets) over `data`.
fn safetensors(tensors: &[(&str, &str, &[u64], [u64; 2])], data: usize) -> Vec<u8> {
    let entries: Vec<String> = tensors
        .iter()
        .map(|(name, dtype, shape, [a, b])| {
            format!("\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{a},{b}]}}")
        })
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(vec![0u8; data]);
    out
}

#[test]
fn lying_weights_and_configs_are_refused_with_one_line_errors() {
    let Some(cache) = shared_hub_cache("hostile weights (real tokenizer and model.bin to corrupt)") else { return };
    let whisper = std::fs::read_dir(cache.join("models--Systran--faster-whisper-tiny.en/snapshots"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let read = |name: &str| std::fs::read(whisper.join(name)).unwrap();
    let model_bin = read("model.bin");
    let dir = tempfile::tempdir().unwrap();
    let photo = zoo_bin::data("chelsea.png");
    let text = dir.path().join("claim.txt");
    std::fs::write(&text, "5G towers spread the virus").unwrap();
    let wav = dir.path().join("clip.wav");
    std::fs::write(&wav, wav_claiming(32_000, 32_000)).unwrap();

    let vit_config = |hidden: u64, layers: u64| {
        format!(
            "{{\"architectures\":[\"ViTForImageClassification\"],\"hidden_size\":{hidden},\"num_hidden_layers\":{layers},\
             \"num_attention_heads\":4,\"intermediate_size\":64,\"image_size\":224,\"patch_size\":16,\"num_channels\":3,\
             \"id2label\":{{\"0\":\"a\",\"1\":\"b\"}},\"hidden_act\":\"gelu\",\"layer_norm_eps\":1e-12,\"qkv_bias\":true}}"
        )
        .into_bytes()
    };
    let bert_config = |vocab: u64, layers: u64| {
        format!(
            "{{\"architectures\":[\"BertForSequenceClassification\"],\"model_type\":\"bert\",\"vocab_size\":{vocab},\
             \"hidden_size\":32,\"num_hidden_layers\":{layers},\"num_attention_heads\":2,\"intermediate_size\":64,\
             \"max_position_embeddings\":64,\"type_vocab_size\":2,\"hidden_act\":\"gelu\",\"id2label\":{{\"0\":\"fake\",\"1\":\"real\"}}}}"
        )
        .into_bytes()
    };
    // tiny.en's own config and vocabulary, with the tokenizer and model.bin under test.
    let whisper_folder = |name, tokenizer: Vec<u8>, model_bin: Vec<u8>| BadModel {
        task: "speech-recognition",
        name,
        files: vec![
            ("config.json", read("config.json")),
            ("tokenizer.json", tokenizer),
            ("vocabulary.txt", read("vocabulary.txt")),
            ("model.bin", model_bin),
        ],
        input: wav.clone(),
    };
    let vit = "image-classification";
    let bert = "text-classification";
    // efficientnet-lite0-int8's config and calibration, over the bundled float weights beside them.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let weights = |name: &str| std::fs::read(repo.join("weights").join(name)).unwrap();
    let int8_config = |float_model: Option<&str>| {
        let mut config: serde_json::Value =
            serde_json::from_slice(&weights("efficientnet-lite0-int8/config.json")).unwrap();
        let quantization = config["quantization"].as_object_mut().unwrap();
        match float_model {
            Some(id) => quantization.insert("float_model".into(), id.into()),
            None => quantization.remove("float_model"),
        };
        serde_json::to_vec(&config).unwrap()
    };
    let calibration = |inputs: usize, (min, max): (f32, f32)| {
        let ranges: Vec<_> = (0..inputs).map(|_| serde_json::json!({"min": min, "max": max})).collect();
        serde_json::to_vec(&serde_json::json!({"method": "test", "images": [], "inputs": ranges})).unwrap()
    };
    let int8_folder = |name, config: Vec<u8>, calibration: Vec<u8>| BadModel {
        task: vit,
        name,
        files: vec![
            ("config.json", config),
            ("calibration.json", calibration),
            ("model.safetensors", weights("efficientnet-lite0/model.safetensors")),
        ],
        input: photo.clone(),
    };
    // face-api's three manifests, the detector's made to lie and the other two as bundled.
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights/face-api");
    let face_file = |name: &str| std::fs::read(weights.join(name)).unwrap();
    let face_folder = |name: &'static str, manifest: Vec<u8>, shard: Vec<u8>| {
        let mut files: Vec<(&'static str, Vec<u8>)> = [
            "face_landmark_68_model-weights_manifest.json",
            "face_landmark_68_model.bin",
            "face_recognition_model-weights_manifest.json",
            "face_recognition_model.bin",
        ]
        .into_iter()
        .map(|n| (n, face_file(n)))
        .collect();
        files.push(("ssd_mobilenetv1_model-weights_manifest.json", manifest));
        files.push(("ssd_mobilenetv1_model.bin", shard));
        BadModel { task: "face-recognition", name, files, input: photo.clone() }
    };
    let ssd_manifest = face_file("ssd_mobilenetv1_model-weights_manifest.json");
    let ssd_shard = face_file("ssd_mobilenetv1_model.bin");
    let lying_manifest = |from: &str, to: &str| {
        let text = String::from_utf8(ssd_manifest.clone()).unwrap();
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1).into_bytes()
    };
    let cases = vec![
        int8_folder("int8-calibration-for-another-network", int8_config(None), calibration(3, (0.0, 6.0))),
        int8_folder("int8-calibration-range-backwards", int8_config(None), calibration(32, (6.0, -6.0))),
        int8_folder(
            "int8-float-model-not-required",
            int8_config(Some("efficientnet-lite0")),
            calibration(32, (0.0, 6.0)),
        ),
        BadModel {
            task: vit,
            name: "offsets-out-of-range",
            files: vec![
                ("config.json", vit_config(32, 1)),
                ("model.safetensors", safetensors(&[("a", "F32", &[4, 4], [0, 1 << 40])], 64)),
            ],
            input: photo.clone(),
        },
        BadModel {
            task: vit,
            name: "overlapping-tensors",
            files: vec![
                ("config.json", vit_config(32, 1)),
                ("model.safetensors", safetensors(&[("a", "F32", &[4], [0, 16]), ("b", "F32", &[4], [8, 24])], 24)),
            ],
            input: photo.clone(),
        },
        BadModel {
            task: vit,
            name: "wrong-dtype-size",
            files: vec![
                ("config.json", vit_config(32, 1)),
                ("model.safetensors", safetensors(&[("a", "F32", &[4, 4], [0, 8])], 8)),
            ],
            input: photo.clone(),
        },
        BadModel {
            task: vit,
            name: "wrong-shape-vit",
            files: vec![
                ("config.json", vit_config(32, 1)),
                // The class token must be 1x1x32 for this config.
                ("model.safetensors", safetensors(&[("vit.embeddings.cls_token", "F32", &[1, 1, 16], [0, 64])], 64)),
            ],
            input: photo.clone(),
        },
        BadModel {
            task: bert,
            name: "wrong-shape-bert",
            files: vec![
                ("config.json", bert_config(100, 1)),
                // The word embeddings must be 100x32 for this config.
                (
                    "model.safetensors",
                    safetensors(
                        &[
                            ("bert.embeddings.word_embeddings.weight", "F32", &[100, 16], [0, 6400]),
                            ("classifier.weight", "F32", &[2, 32], [6400, 6656]),
                            ("classifier.bias", "F32", &[2], [6656, 6664]),
                        ],
                        6664,
                    ),
                ),
                ("tokenizer.json", read("tokenizer.json")),
            ],
            input: text.clone(),
        },
        BadModel {
            task: vit,
            name: "absurd-vit-config",
            files: vec![
                ("config.json", vit_config(1 << 40, 1_000_000)),
                ("model.safetensors", safetensors(&[("a", "F32", &[1], [0, 4])], 4)),
            ],
            input: photo.clone(),
        },
        BadModel {
            task: bert,
            name: "absurd-bert-config",
            files: vec![
                ("config.json", bert_config(1 << 40, 1_000_000)),
                ("model.safetensors", safetensors(&[("a", "F32", &[1], [0, 4])], 4)),
                ("tokenizer.json", read("tokenizer.json")),
            ],
            input: text.clone(),
        },
        face_folder(
            "face-shard-outside-the-folder",
            lying_manifest("\"ssd_mobilenetv1_model.bin\"", "\"../../../etc/passwd\""),
            ssd_shard.clone(),
        ),
        BadModel {
            task: "object-detection",
            name: "absurd-yolos-config",
            files: vec![
                (
                    "config.json",
                    br#"{"architectures": ["YolosForObjectDetection"], "hidden_size": 1099511627776,
                        "num_hidden_layers": 1000000, "num_attention_heads": 1, "intermediate_size": 1,
                        "image_size": [32, 32], "patch_size": 8}"#
                        .to_vec(),
                ),
                ("model.safetensors", safetensors(&[("a", "F32", &[1], [0, 4])], 4)),
            ],
            input: photo.clone(),
        },
        face_folder("face-truncated-shard", ssd_manifest.clone(), ssd_shard[..ssd_shard.len() / 2].to_vec()),
        face_folder(
            "face-absurd-shape",
            lying_manifest("\"shape\":[1,1,512,9]", "\"shape\":[4294967296,4294967296,512,9]"),
            ssd_shard.clone(),
        ),
        face_folder("face-manifest-does-not-parse", b"[{\"paths\": [oops".to_vec(), ssd_shard.clone()),
        whisper_folder(
            "tokenizer-does-not-parse",
            b"{\"version\": \"1.0\", \"model\": [oops".to_vec(),
            model_bin.clone(),
        ),
        whisper_folder("truncated-model-bin", read("tokenizer.json"), model_bin[..model_bin.len() / 3].to_vec()),
        whisper_folder("model-bin-header-only", read("tokenizer.json"), model_bin[..64].to_vec()),
    ];
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in &cases {
        let folder = dir.path().join(case.name);
        std::fs::create_dir_all(&folder).unwrap();
        for (name, bytes) in &case.files {
            std::fs::write(folder.join(name), bytes).unwrap();
        }
        let run_case = Case {
            task: case.task,
            name: case.name,
            bytes: Vec::new(),
            extra: vec!["--model".into(), folder.display().to_string()],
            partial_ok: false,
            via: Via::File,
        };
        let out = run(&cache, &run_case, case.input.to_str().unwrap());
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        report.push(format!(
            "{}: exit {:?}, {:.1} s, {} MB: {}",
            case.name,
            out.code,
            out.seconds,
            out.peak_mb,
            lines.join(" | ")
        ));
        let ok = out.code == Some(1)
            && lines.len() == 1
            && !out.stderr.contains("panicked")
            && out.stderr.contains(case.name)
            && out.stderr.len() <= MAX_ERROR_CHARS
            && out.peak_mb <= MEMORY_LIMIT_MB;
        if !ok {
            failures.push(report.last().unwrap().clone());
        }
    }
    eprintln!("{} hostile model folders:\n{}", cases.len(), report.join("\n"));
    assert!(failures.is_empty(), "mishandled:\n{}", failures.join("\n"));
}

/// The size limits refuse before decoding, say which flag raises them, and the flag does.
#[test]
fn size_limits_name_their_flag_and_the_flag_raises_them() {
    let Some(cache) = shared_hub_cache("size limits (speech model)") else { return };
    let dir = tempfile::tempdir().unwrap();
    let photo = zoo_bin::data("chelsea.png");
    let wav = dir.path().join("two-seconds.wav");
    std::fs::write(&wav, wav_claiming(64_000, 64_000)).unwrap();
    let article = dir.path().join("article.txt");
    std::fs::write(&article, "The health ministry reported new cases today. ".repeat(60)).unwrap();
    let out = dir.path().join("out.png");
    let out = out.to_str().unwrap();
    // (task, input, options it refuses, options it accepts, the flag the error names)
    type Check<'a> = (&'static str, &'a Path, Vec<&'a str>, Vec<&'a str>, &'static str);
    let checks: Vec<Check<'_>> = vec![
        ("image-classification", &photo, vec!["--max-pixels", "1000"], vec!["--max-pixels", "1000000"], "--max-pixels"),
        (
            "style-transfer",
            &photo,
            vec!["--max-pixels", "1000", "--output", out],
            vec!["--max-pixels", "1000000", "--output", out, "--max-size", "64"],
            "--max-pixels",
        ),
        ("speech-recognition", &wav, vec!["--max-duration", "1.5"], vec!["--max-duration", "3"], "--max-duration"),
        ("fake-news", &article, vec!["--max-text-mb", "0.002"], vec!["--max-text-mb", "0.01"], "--max-text-mb"),
    ];
    for (task, input, low, high, flag) in checks {
        let mut case = Case {
            task,
            name: "limit",
            bytes: Vec::new(),
            extra: low.iter().map(|s| s.to_string()).collect(),
            partial_ok: false,
            via: Via::File,
        };
        let refused = run(&cache, &case, input.to_str().unwrap());
        assert_eq!(refused.code, Some(1), "{task} {low:?}: {}", refused.stderr);
        assert!(refused.stderr.contains(flag) && refused.stderr.lines().count() == 1, "{task}: {}", refused.stderr);
        case.extra = high.iter().map(|s| s.to_string()).collect();
        let accepted = run(&cache, &case, input.to_str().unwrap());
        assert_eq!(accepted.code, Some(0), "{task} {high:?}: {}", accepted.stderr);
    }
}

/// Inputs that once crashed the `model_config` fuzz target (fuzz/fuzz_targets/model_config.rs),
/// kept in `tests/data/crashers/model_config` and replayed as that target reads them: the first
/// byte picks the file (0: a tiny ViT's config.json, 1: its preprocessor_config.json, 2: a tiny
/// BERT classifier's config.json), the rest replaces it beside the real tiny weights.
#[test]
fn model_configs_that_crashed_the_fuzzer_are_refused_cleanly() {
    let crashers = zoo_bin::data("crashers/model_config");
    let mut names: Vec<_> = std::fs::read_dir(&crashers).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    assert!(!names.is_empty(), "no crashers in {}", crashers.display());
    let photo = zoo_bin::data("chelsea.png");
    let cache = tempfile::tempdir().unwrap();
    for crasher in names {
        let bytes = std::fs::read(&crasher).unwrap();
        let (&selector, text) = bytes.split_first().expect("a selector byte");
        let dir = tempfile::tempdir().unwrap();
        let (task, file, input) = match selector % 3 {
            0 | 1 => {
                tiny_vit::write(dir.path());
                let file = if selector % 3 == 0 { "config.json" } else { "preprocessor_config.json" };
                ("image-classification", file, vec![photo.to_str().unwrap().to_string()])
            }
            _ => {
                tiny_classifiers::write(dir.path(), tiny_classifiers::Arch::Bert, 2, Some(&["fake", "real"]), None, 7);
                ("fake-news", "config.json", vec!["--text".into(), "The minister said the vaccine works.".into()])
            }
        };
        std::fs::write(dir.path().join(file), text).unwrap();
        let mut args = vec!["run", task, "--model", dir.path().to_str().unwrap()];
        args.extend(input.iter().map(String::as_str));
        let mut cmd = zoo_bin::zoo_command(cache.path(), &args);
        cmd.env("RUST_BACKTRACE", "1");
        let out = zoo_bin::run_bounded(cmd, None, TIME_LIMIT);
        let name = crasher.file_name().unwrap().to_string_lossy();
        eprintln!("{name}: exit {:?}: {}", out.code, out.stderr.trim());
        assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
        assert!(matches!(out.code, Some(0 | 1)), "{name}: exit {:?}: {}", out.code, out.stderr);
        if out.code == Some(1) {
            assert_eq!(out.stderr.trim().lines().count(), 1, "{name}: {}", out.stderr);
        }
    }
}
