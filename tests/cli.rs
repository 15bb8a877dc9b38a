//! End-to-end tests of the `zoo` binary: what a user types, what they see, and the exit codes.
//! Every run gets an empty Hugging Face cache and no reachable Hub, so these also prove that the
//! bundled default works with no download.

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

use serde_json::Value;
use zoo_bin::{data, zoo, zoo_with, Run};

fn zoo_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Run {
    zoo_with(None, args, stdin)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

fn top1(line: &Value) -> u64 {
    line["predictions"][0]["index"].as_u64().unwrap()
}

#[test]
fn classifies_bundled_photos_offline_with_no_download() {
    let coffee = data("coffee.png");
    let chelsea = data("chelsea.png");
    let run = zoo(&[
        "run",
        "image-classification",
        coffee.to_str().unwrap(),
        chelsea.to_str().unwrap(),
        "--json",
        "--offline",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Quiet when piped: no progress bars or chatter on a non-terminal stderr.
    assert_eq!(run.stderr, "");
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["input"], coffee.to_str().unwrap());
    assert_eq!(lines[0]["model"], "efficientnet-lite0");
    // The reference pipeline: coffee -> 967 espresso (0.96); chelsea -> tiger cat / Egyptian cat /
    // tabby, a near tie between the first two, so only the set is asserted.
    assert_eq!(top1(&lines[0]), 967);
    assert_eq!(lines[0]["predictions"][0]["label"], "espresso");
    let p = lines[0]["predictions"][0]["score"].as_f64().unwrap();
    assert!((0.90..=0.99).contains(&p), "espresso probability {p}");
    let cat: Vec<u64> =
        lines[1]["predictions"].as_array().unwrap()[..3].iter().map(|p| p["index"].as_u64().unwrap()).collect();
    let mut sorted = cat.clone();
    sorted.sort();
    assert_eq!(sorted, [281, 282, 285], "chelsea top-3 {cat:?}");
    assert_eq!(lines[1]["predictions"].as_array().unwrap().len(), 5, "default top-k is 5");
}

#[test]
fn human_output_names_each_input_and_its_labels() {
    let coffee = data("coffee.png");
    let run = zoo(&["run", "classify", coffee.to_str().unwrap(), "--top-k", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(lines[0], coffee.to_str().unwrap());
    assert!(lines[1].contains("espresso (967)") && lines[1].contains('%'), "{}", lines[1]);
}

#[test]
fn reads_stdin_folders_and_globs() {
    let bytes = std::fs::read(data("coffee.png")).unwrap();
    let run = zoo_with_stdin(&["run", "image-classification", "-", "--json"], Some(&bytes));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines[0]["input"], "-");
    assert_eq!(top1(&lines[0]), 967);

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(data("coffee.png"), dir.path().join("b.png")).unwrap();
    std::fs::copy(data("chelsea.png"), dir.path().join("a.PNG")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let run = zoo(&["run", "image-classification", dir.path().to_str().unwrap(), "--json", "--batch-size", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let inputs: Vec<String> =
        json_lines(&run.stdout).iter().map(|l| l["input"].as_str().unwrap().to_string()).collect();
    assert!(inputs.len() == 2 && inputs[0].ends_with("a.PNG") && inputs[1].ends_with("b.png"), "{inputs:?}");

    let pattern = format!("{}/*.png", dir.path().display());
    let run = zoo(&["run", "image-classification", &pattern, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json_lines(&run.stdout).len(), 1);
}

/// A small PNG whose header claims `width` x `height`: valid chunks and CRCs, a few bytes of pixel
/// data, so that only the size is absurd.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    // An empty stored zlib block stands in for the pixel data.
    for (kind, body) in [
        (&b"IHDR"[..], &ihdr[4..]),
        (b"IDAT", &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01][..]),
        (b"IEND", &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend(body);
        png.extend((body.len() as u32).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

#[test]
fn bad_inputs_get_one_line_errors_naming_the_file_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("text.jpg"), "this is a text file, not a JPEG\n").unwrap();
    let png = std::fs::read(data("coffee.png")).unwrap();
    std::fs::write(path("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(path("empty.png"), b"").unwrap();
    std::fs::write(path("huge.png"), png_header(100_000, 100_000)).unwrap();
    let good = data("coffee.png");

    let cases: [(&str, &str); 5] = [
        ("text.jpg", "not an image"),
        ("truncated.png", "truncated"),
        ("empty.png", "empty"),
        ("huge.png", "100000x100000"),
        ("missing.png", "no such file"),
    ];
    for (name, cause) in cases {
        let file = path(name);
        let run = zoo(&["run", "image-classification", file.to_str().unwrap()]);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("zoo: error: ") && first.contains(file.to_str().unwrap()), "{name}: {first}");
        assert!(first.contains(cause), "{name}: expected '{cause}' in: {first}");
        assert_eq!(run.stdout, "", "{name}: nothing is printed for a failed input");
    }

    // In a batch, each bad input is an error object in its place; the good one is classified.
    let mut args = vec!["run".to_string(), "image-classification".into(), "--json".into()];
    args.extend(cases.iter().map(|(n, _)| path(n).display().to_string()));
    args.insert(3, good.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = zoo(&args);
    assert_eq!(run.code, 1);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 6);
    assert_eq!(top1(&lines[0]), 967);
    for (line, (name, cause)) in lines[1..].iter().zip(cases) {
        assert!(line["input"].as_str().unwrap().ends_with(name), "{line}");
        assert!(line["error"].as_str().unwrap().contains(cause), "{line}");
    }
    assert!(run.stderr.contains("5 of 6 inputs failed"), "{}", run.stderr);
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let coffee = data("coffee.png");
    let coffee = coffee.to_str().unwrap();
    for (args, expected) in [
        (vec!["run", "no-such-task", coffee], "unknown task 'no-such-task'"),
        (vec!["run", "image-classification", coffee, "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (vec!["run", "image-classification", coffee, "--top-k", "many"], "--top-k"),
        (vec!["run", "image-classification", coffee, "--top-k", "0"], "--top-k"),
        (vec!["run", "image-classification", coffee, "--device", "tpu"], "--device"),
        (vec!["run", "image-classification", coffee, "--no-such-flag"], "--no-such-flag"),
        (vec!["info", "no-such-model"], "unknown model"),
        (vec!["download", "no-such-model"], "unknown model"),
    ] {
        let run = zoo(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("zoo: error: ") && run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_model_missing_from_the_cache_offline_names_the_download_command() {
    let coffee = data("coffee.png");
    let run = zoo(&["run", "image-classification", coffee.to_str().unwrap(), "--model", "efficientnet-lite0-timm"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("zoo download efficientnet-lite0-timm"), "{}", run.stderr);
}

#[test]
fn help_teaches_tasks_options_and_examples() {
    let run = zoo(&["--help"]);
    assert_eq!(run.code, 0);
    for needle in ["zoo list", "zoo run image-classification", "HF_HUB_OFFLINE", "Exit status"] {
        assert!(run.stdout.contains(needle), "top-level help lacks {needle}");
    }
    let run = zoo(&["run", "image-classification", "--help"]);
    assert_eq!(run.code, 0);
    for needle in ["--top-k", "--model", "--json", "efficientnet-lite0 (default)", "Examples"] {
        assert!(run.stdout.contains(needle), "task help lacks {needle}:\n{}", run.stdout);
    }
}

#[test]
fn list_and_info_describe_the_catalogue() {
    let run = zoo(&["list", "--json"]);
    assert_eq!(run.code, 0);
    let models = json_lines(&run.stdout);
    let default = models.iter().find(|m| m["model"] == "efficientnet-lite0").expect("listed");
    assert_eq!(default["default"], true);
    assert_eq!(default["available"], "bundled");
    assert_eq!(default["licence"], "Apache-2.0");
    let timm = models.iter().find(|m| m["model"] == "efficientnet-lite0-timm").expect("listed");
    assert_eq!(timm["available"], "not downloaded");

    let run = zoo(&["info", "efficientnet-lite0", "--json"]);
    assert_eq!(run.code, 0);
    let info: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(info["task"], "image-classification");
    assert_eq!(info["files"].as_array().unwrap().len(), 3);

    let run = zoo(&["download", "efficientnet-lite0"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("bundled"), "{}", run.stdout);
}

#[test]
fn panoramas_and_strips_are_classified_without_blowing_up() {
    let dir = tempfile::tempdir().unwrap();
    for (name, w, h) in [("strip.png", 50_000u32, 1u32), ("tower.png", 3, 20_000)] {
        let path = dir.path().join(name);
        image::RgbImage::from_pixel(w, h, image::Rgb([120, 90, 60])).save(&path).unwrap();
        let run = zoo(&["run", "image-classification", path.to_str().unwrap(), "--json"]);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        assert_eq!(json_lines(&run.stdout)[0]["predictions"].as_array().unwrap().len(), 5);
    }
}

#[test]
fn explain_adds_a_heat_grid_and_an_overlay_only_when_asked() {
    let photo = data("chelsea.png");
    let photo = photo.to_str().unwrap();
    let plain = zoo(&["run", "image-classification", photo, "--json"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(json_lines(&plain.stdout)[0].get("explanation").is_none(), "a plain run explains nothing");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("heat");
    let run = zoo(&["run", "image-classification", photo, "--explain-out", out.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = &json_lines(&run.stdout)[0];
    let e = &line["explanation"];
    assert_eq!(e["method"], "occlusion");
    assert_eq!(e["class_index"], line["predictions"][0]["index"]);
    let grid = e["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 14);
    assert!(grid.iter().all(|row| row.as_array().unwrap().len() == 14));
    assert!(grid.iter().flat_map(|r| r.as_array().unwrap()).all(|v| v.as_f64().unwrap() >= 0.0));
    let overlay = std::path::PathBuf::from(e["overlay"].as_str().unwrap());
    assert_eq!(overlay, out.join("chelsea.explain.png"));
    assert_eq!(image::open(&overlay).unwrap().to_rgb8().dimensions(), (224, 224));

    // Without a folder: the grid, no file, and the human form shows the grid as shades.
    let run = zoo(&["run", "image-classification", photo, "--explain"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("where 'tiger cat' rests") && !run.stdout.contains("overlay:"), "{}", run.stdout);
}

#[test]
fn explain_on_a_task_that_decides_nothing_is_a_usage_error_saying_why() {
    let run = zoo(&["run", "style-transfer", data("chelsea.png").to_str().unwrap(), "--explain"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("'style-transfer' has nothing to explain"), "{}", run.stderr);
    assert!(run.stderr.contains("decides nothing"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_full_disk_under_the_output_is_a_one_line_error_and_leaves_no_file() {
    let photo = data("chelsea.png");
    let zoo_exe = std::path::Path::new(env!("CARGO_BIN_EXE_zoo"));
    let cache = tempfile::tempdir().unwrap();
    for (task, flag) in [("style-transfer", "--output-dir"), ("image-classification", "--explain-out")] {
        let dir = tempfile::tempdir().unwrap();
        let (out, kept) = (dir.path().join("out"), dir.path().join("kept"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&kept).unwrap();
        let args = ["run", task, photo.to_str().unwrap(), flag, out.to_str().unwrap()];
        // 8 kB: the folder fits, the picture does not.
        let Some(mut cmd) = zoo_bin::on_small_disk(&out, "8k", &kept, zoo_exe, &args) else { return };
        cmd.env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env_remove("ZOO_CATALOG");
        let run = zoo_bin::run_bounded(cmd, None, zoo_bin::DEFAULT_LIMIT).finished(task);
        assert_eq!(run.code, 1, "{task}: {}", run.describe());
        let line = run.error_line();
        assert!(line.contains(out.to_str().unwrap()) && line.contains("chelsea"), "{task}: names the file: {line}");
        assert!(line.contains("No space left on device"), "{task}: says why: {line}");
        assert!(!line.contains("at path"), "{task}: names the temporary file as well: {line}");
        let left: Vec<_> = std::fs::read_dir(&kept).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "{task}: a full disk left {left:?} behind");
    }
}

/// N shards cover every input exactly once: their outputs, concatenated in shard order, are one
/// run's; the index may come from a Kubernetes Indexed Job's JOB_COMPLETION_INDEX.
#[test]
fn shards_together_are_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..7 {
        let source = if i % 2 == 0 { "chelsea.png" } else { "coffee.png" };
        std::fs::copy(data(source), photos.join(format!("photo-{i}.png"))).unwrap();
    }
    let folder = photos.to_str().unwrap();
    let whole = zoo(&["run", "image-classification", folder, "--json", "--top-k", "2"]);
    assert_eq!(whole.code, 0, "{}", whole.describe());
    let mut union = Vec::new();
    let mut sizes = Vec::new();
    for index in 0..3 {
        let mut cmd =
            zoo_bin::zoo_command(dir.path(), &["run", "image-classification", folder, "--json", "--top-k", "2"]);
        cmd.args(["--shard-count", "3"]).env("JOB_COMPLETION_INDEX", index.to_string());
        let part = zoo_bin::run_bounded(cmd, None, zoo_bin::DEFAULT_LIMIT).finished("a shard");
        assert_eq!(part.code, 0, "{}", part.describe());
        sizes.push(part.json_lines().len());
        union.extend(part.json_lines());
    }
    assert_eq!(sizes, [2, 2, 3]);
    assert_eq!(union, json_lines(&whole.stdout));

    // An explicit index wins over the variable; more shards than inputs leaves some idle, not failed.
    let one = zoo(&["run", "image-classification", folder, "--json", "--shard-index", "6", "--shard-count", "7"]);
    assert_eq!(one.code, 0, "{}", one.describe());
    assert_eq!(one.json_lines()[0]["input"], json_lines(&whole.stdout)[6]["input"]);
    let idle = zoo(&[
        "run",
        "image-classification",
        data("coffee.png").to_str().unwrap(),
        "--shard-index",
        "0",
        "--shard-count",
        "2",
    ]);
    assert_eq!((idle.code, idle.stdout.as_str()), (0, ""), "{}", idle.describe());
    assert!(idle.stderr.contains("shard 0 of 2 has no inputs (1 in all)"), "{}", idle.stderr);

    let bad = zoo(&["run", "image-classification", folder, "--shard-index", "3", "--shard-count", "3"]);
    assert_eq!(bad.code, 2, "{}", bad.describe());
    assert_eq!(bad.error_line(), "zoo: error: shard index 3 is past the last shard of 3 (indices start at 0)");
    let mut cmd = zoo_bin::zoo_command(dir.path(), &["run", "image-classification", folder, "--shard-count", "3"]);
    cmd.env_remove("JOB_COMPLETION_INDEX");
    let no_index = zoo_bin::run_bounded(cmd, None, zoo_bin::DEFAULT_LIMIT).finished("no index");
    assert_eq!(no_index.code, 2, "{}", no_index.describe());
    assert!(no_index.error_line().contains("JOB_COMPLETION_INDEX"), "{}", no_index.describe());
}
