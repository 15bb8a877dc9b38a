//! End-to-end tests of `zoo run face-recognition`: what a user types, what it prints and writes,
//! the exit codes, galleries and their cache, `--compare`. Every run gets an empty Hugging Face
//! cache and no reachable Hub, which also proves the bundled networks need no download. The
//! numbers themselves are checked against face-api in `tasks/face-recognition/tests/reference.rs`;
//! here the expected identities come from the staged `identities.tsv`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use zoo_bin::{data, zoo};
use zoo_runtime::test_support::shared_assets;

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn faces_dir(test: &str) -> Option<PathBuf> {
    shared_assets(test).map(|a| a.join("data/faces"))
}

fn boxes(line: &Value) -> Vec<Vec<f64>> {
    line["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect()
}

#[test]
fn the_bundled_networks_find_a_face_with_its_landmarks_offline() {
    let astronaut = data("astronaut.jpg");
    let run = zoo(&["run", "faces", s(&astronaut), "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.stderr, "");
    let line = &run.json_lines()[0];
    assert_eq!(line["model"], "face-api");
    let faces = line["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "{line}");
    let face = &faces[0];
    assert!(face["score"].as_f64().unwrap() > 0.9, "{face}");
    let [x, y, w, h] = boxes(line)[0][..] else { panic!() };
    // Her face, in the upper middle of the 512x512 portrait.
    assert!((150.0..220.0).contains(&x) && (40.0..110.0).contains(&y) && (60.0..130.0).contains(&w), "{x} {y} {w} {h}");
    let points = face["landmarks"].as_array().unwrap();
    assert_eq!(points.len(), 68);
    // The landmarks lie in the box, eyes (36-47) above the mouth (48-67).
    let xy = |i: usize| (points[i][0].as_f64().unwrap(), points[i][1].as_f64().unwrap());
    for i in 17..68 {
        let (px, py) = xy(i);
        assert!(px > x && px < x + w && py > y && py < y + h, "point {i} ({px}, {py}) outside the box");
    }
    let eyes = (36..48).map(|i| xy(i).1).fold(f64::MIN, f64::max);
    let mouth = (48..68).map(|i| xy(i).1).fold(f64::MAX, f64::min);
    assert!(eyes < mouth, "eyes {eyes} above mouth {mouth}");
    assert!(face.get("descriptor").is_none() && face.get("identity").is_none());

    let described = zoo(&["run", "face", s(&astronaut), "--json", "--descriptors"]).json_lines();
    let descriptor = described[0]["faces"][0]["descriptor"].as_array().unwrap();
    assert_eq!(descriptor.len(), 128);
    let human = zoo(&["run", "face-recognition", s(&astronaut)]);
    assert!(human.stdout.contains("%  face at x 18"), "{}", human.stdout);
    // No face: said, not an error.
    let cups = zoo(&["run", "faces", s(&data("coffee.png"))]);
    assert_eq!(cups.code, 0, "{}", cups.describe());
    assert!(cups.stdout.contains("no faces found"), "{}", cups.stdout);
}

/// The staged identity pairs through `--compare`: two photos of one person (one EXIF-rotated),
/// the same person inside a group photo, and different people.
#[test]
fn compare_tells_the_same_person_from_others() {
    let Some(dir) = faces_dir("compare_tells_the_same_person_from_others") else { return };
    let run = zoo(&[
        "run",
        "faces",
        s(&dir.join("face_rectangular.png")),
        s(&dir.join("faces.jpg")),
        s(&dir.join("angry_exif6.jpg")),
        s(&dir.join("white.png")),
        "--compare",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let lines = run.json_lines();
    assert!(lines[0].get("comparison").is_none(), "the first picture is what the others are compared with");
    // identities.tsv: face_rectangular.png#0 is faces.jpg#2 (face-api's distance 0.133).
    let group = &lines[1]["comparison"];
    assert_eq!(group["with"], s(&dir.join("face_rectangular.png")));
    assert_eq!(group["same_person"], true, "{group}");
    assert_eq!(group["faces"], serde_json::json!([0, 2]), "{group}");
    assert!((group["distance"].as_f64().unwrap() - 0.133).abs() < 0.02, "{group}");
    let other = &lines[2]["comparison"];
    assert_eq!(other["same_person"], false, "{other}");
    assert!(other["distance"].as_f64().unwrap() > 0.6);
    // A picture without a face cannot be compared: a warning, not a failure.
    assert_eq!(lines[3]["comparison"]["same_person"], Value::Null);
    assert!(lines[3]["warnings"][0].as_str().unwrap().contains("no face found in this picture"), "{}", lines[3]);
    assert!(run.stderr.contains("white.png: cannot compare with"), "{}", run.stderr);

    // The EXIF-rotated copy is the same person as the original, and found where the original's
    // face is once turned upright.
    let rotated = zoo(&["run", "faces", s(&dir.join("angry.jpg")), s(&dir.join("angry_exif6.jpg")), "--compare"]);
    assert_eq!(rotated.code, 0, "{}", rotated.describe());
    assert!(rotated.stdout.contains("same person as "), "{}", rotated.stdout);
    let upright =
        zoo(&["run", "faces", s(&dir.join("angry.jpg")), s(&dir.join("angry_exif6.jpg")), "--json"]).json_lines();
    for (a, b) in boxes(&upright[0])[0].iter().zip(&boxes(&upright[1])[0]) {
        assert!((a - b).abs() < 2.0, "{:?} / {:?}", boxes(&upright[0]), boxes(&upright[1]));
    }

    // Aligned crops (no detection): face1 and face2 are different people.
    let aligned = zoo(&[
        "run",
        "faces",
        s(&dir.join("face1.png")),
        s(&dir.join("face2.png")),
        "--aligned",
        "--compare",
        "--json",
    ]);
    let lines = aligned.json_lines();
    assert_eq!(lines[1]["comparison"]["same_person"], false, "{}", lines[1]);
    assert_eq!(boxes(&lines[0])[0], [0.0, 0.0, 150.0, 150.0]);
    assert!(lines[0]["faces"][0].get("score").is_none());

    // One picture: a warning, and its faces all the same.
    let alone = zoo(&["run", "faces", s(&dir.join("angry.jpg")), "--compare"]);
    assert_eq!(alone.code, 0, "{}", alone.describe());
    assert!(alone.stderr.contains("--compare: nothing to compare with"), "{}", alone.stderr);
}

#[test]
fn a_gallery_names_faces_and_caches_its_descriptors() {
    let Some(dir) = faces_dir("a_gallery_names_faces_and_caches_its_descriptors") else { return };
    let gallery = tempfile::tempdir().unwrap();
    // One person by folder, one by file name; face1.png has no detectable face (an aligned crop).
    std::fs::create_dir(gallery.path().join("person_C")).unwrap();
    std::fs::copy(dir.join("angry.jpg"), gallery.path().join("person_C/portrait.jpg")).unwrap();
    std::fs::copy(dir.join("face_rectangular.png"), gallery.path().join("person_A_1.png")).unwrap();
    let g = s(gallery.path());
    let run =
        zoo(&["run", "faces", s(&dir.join("faces.jpg")), s(&dir.join("angry_exif6.jpg")), "--gallery", g, "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let lines = run.json_lines();
    let names: Vec<&str> =
        lines[0]["faces"].as_array().unwrap().iter().map(|f| f["identity"].as_str().unwrap()).collect();
    // identities.tsv: faces.jpg#2 is person_A; nobody else in the group is in the gallery.
    assert_eq!(names, ["unknown", "unknown", "person_A", "unknown", "unknown", "unknown"]);
    let unknown = &lines[0]["faces"][0];
    assert!(unknown["distance"].as_f64().unwrap() >= 0.6 && unknown["nearest"].is_string(), "{unknown}");
    assert_eq!(lines[1]["faces"][0]["identity"], "person_C");
    assert!(lines[1]["faces"][0]["distance"].as_f64().unwrap() < 0.3);

    // The cache holds both photos, and is what a second run reads: planting person_A's
    // descriptor under person_C's unchanged photo makes person_C's own face unknown.
    let cache_path = gallery.path().join(".zoo-faces.json");
    let mut cache: Value = serde_json::from_slice(&std::fs::read(&cache_path).unwrap()).unwrap();
    assert_eq!(cache["files"].as_object().unwrap().len(), 2, "{cache}");
    let before = cache["files"]["person_C/portrait.jpg"]["sha256"].clone();
    cache["files"]["person_C/portrait.jpg"]["descriptor"] = cache["files"]["person_A_1.png"]["descriptor"].clone();
    std::fs::write(&cache_path, cache.to_string()).unwrap();
    let planted = zoo(&["run", "faces", s(&dir.join("angry.jpg")), "--gallery", g, "--json"]);
    assert_eq!(planted.json_lines()[0]["faces"][0]["identity"], "unknown", "the cached descriptor was used");
    // A changed photo is described again, whatever the cache says about its name.
    std::fs::copy(dir.join("angry_exif6.jpg"), gallery.path().join("person_C/portrait.jpg")).unwrap();
    let again = zoo(&["run", "faces", s(&dir.join("angry.jpg")), "--gallery", g, "--json"]);
    assert_eq!(again.json_lines()[0]["faces"][0]["identity"], "person_C");
    let cache: Value = serde_json::from_slice(&std::fs::read(&cache_path).unwrap()).unwrap();
    assert_ne!(cache["files"]["person_C/portrait.jpg"]["sha256"], before);
    assert_ne!(cache["files"]["person_C/portrait.jpg"]["descriptor"], cache["files"]["person_A_1.png"]["descriptor"]);

    // A stricter distance leaves everyone unknown; a gallery photo without a face is refused.
    let strict = zoo(&["run", "faces", s(&dir.join("angry.jpg")), "--gallery", g, "--max-distance", "0.05", "--json"]);
    assert_eq!(strict.json_lines()[0]["faces"][0]["identity"], "unknown");
    std::fs::copy(dir.join("white.png"), gallery.path().join("blank.png")).unwrap();
    let refused = zoo(&["run", "faces", s(&dir.join("angry.jpg")), "--gallery", g]);
    assert_ne!(refused.code, 0, "{}", refused.describe());
    assert!(refused.error_line().contains("blank.png: no face found in this gallery photo"), "{}", refused.stderr);
}

#[test]
fn output_dir_draws_faces_and_explain_maps_them() {
    let dir = tempfile::tempdir().unwrap();
    let (out, heat) = (dir.path().join("drawn"), dir.path().join("heat"));
    let astronaut = data("astronaut.jpg");
    let run = zoo(&["run", "faces", s(&astronaut), "--output-dir", s(&out), "--explain-out", s(&heat), "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let line = &run.json_lines()[0];
    let written = out.join("astronaut.png");
    assert_eq!(line["output"], s(&written));
    let drawn = image::open(&written).unwrap().to_rgb8();
    let original = image::open(&astronaut).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    let [x, y, _, h] = boxes(line)[0][..] else { panic!() };
    let edge = (x.floor() as u32, (y + h / 2.0) as u32);
    assert_ne!(drawn.get_pixel(edge.0, edge.1), original.get_pixel(edge.0, edge.1), "the box's left edge");
    assert_eq!(drawn.get_pixel(20, 500), original.get_pixel(20, 500), "far from the face, as it was");

    let e = &line["faces"][0]["explanation"];
    assert_eq!(e["method"], "occlusion");
    let grid: Vec<Vec<f64>> = e["grid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    assert_eq!((grid.len(), grid[0].len()), (8, 8));
    // The region is the box and half its size around it: the face is the middle four-by-four
    // cells, and that is where hiding a cell matters most.
    let hottest = (0..64).max_by(|&a, &b| grid[a / 8][a % 8].total_cmp(&grid[b / 8][b % 8])).unwrap();
    assert!((2..6).contains(&(hottest / 8)) && (2..6).contains(&(hottest % 8)), "hottest cell {hottest}: {grid:?}");
    // The detector is sure of her face (0.97): hiding a sixteenth of it moves the score little.
    assert!(grid[hottest / 8][hottest % 8] > 0.02, "{grid:?}");
    assert_eq!(line["explanation_overlay"], s(&heat.join("astronaut.explain.png")));

    let again = zoo(&["run", "faces", s(&astronaut), "--output-dir", s(&out)]);
    assert_eq!(again.code, 1, "{}", again.describe());
    assert!(again.error_line().contains("astronaut.png: already exists (use --force"), "{}", again.stderr);
}

#[test]
fn bad_options_and_inputs_get_one_line_errors() {
    let astronaut = data("astronaut.jpg");
    let missing = tempfile::tempdir().unwrap();
    let empty = s(missing.path()).to_string();
    for (args, says) in [
        (vec!["--min-score", "1.5"], "--min-score: must be between 0 and 1"),
        (vec!["--max-distance", "0"], "--max-distance: must be a positive number"),
        (vec!["--gallery", "/no/such/gallery"], "--gallery"),
        (vec!["--gallery", empty.as_str()], "holds no photos"),
        (vec!["--aligned", "--explain"], "with --aligned nothing is detected"),
    ] {
        let mut all = vec!["run", "faces", s(&astronaut)];
        all.extend(&args);
        let run = zoo(&all);
        assert_eq!(run.code, 2, "{args:?}: {}", run.describe());
        assert!(run.error_line().contains(says), "{args:?}: {}", run.error_line());
    }
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "not a picture").unwrap();
    let run = zoo(&["run", "faces", s(&text), s(&astronaut), "--json"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let lines = run.json_lines();
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .ends_with("notes.jpg: not an image zoo can read (JPEG, PNG, WebP, BMP or GIF)"));
    assert_eq!(lines[1]["faces"].as_array().unwrap().len(), 1, "the good input still ran");
}
