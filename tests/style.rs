//! End-to-end tests of `zoo run style-transfer`: what a user types, the files written, the exit
//! codes. Every run gets an empty Hugging Face cache and no reachable Hub, so these also prove the
//! bundled style models need no download.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GenericImageView, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::Value;
use zoo_bin::{data, zoo, Run};

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

#[path = "support/pth.rs"]
mod pth;
use pth::write_pth;

fn json(run: &Run) -> Vec<Value> {
    run.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Mean absolute difference of two same-sized pictures, 0..255.
fn mean_diff(a: &DynamicImage, b: &DynamicImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    let total: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    total as f64 / a.as_raw().len() as f64
}

fn styled(args: &[&str], out: &Path) -> DynamicImage {
    let mut all = vec!["run", "style-transfer"];
    all.extend_from_slice(args);
    all.extend(["--output", s(out), "--force"]);
    let run = zoo(&all);
    assert_eq!(run.code, 0, "{all:?}: {}", run.stderr);
    image::open(out).unwrap()
}

#[test]
fn a_built_in_style_works_offline_with_no_download() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let photo = data("chelsea.png");
    let run = zoo(&["run", "style-transfer", s(&photo), "--style", "7", "--output", s(&out), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let line = &json(&run)[0];
    assert_eq!(line["model"], "multistyle26");
    assert_eq!(line["output"], s(&out));
    assert_eq!((line["width"].as_u64(), line["height"].as_u64()), (Some(451), Some(300)));
    assert_eq!(line["style"][0]["index"], 7);
    assert_eq!(line["style"][0]["name"], "night-blotches");
    let written = image::open(&out).unwrap();
    assert_eq!(written.dimensions(), (451, 300));
    assert!(mean_diff(&written, &image::open(&photo).unwrap()) > 20.0, "the picture was restyled");

    // A name is the same style as its number.
    let named = styled(&[s(&photo), "--style", "night-blotches"], &dir.path().join("named.png"));
    assert_eq!(named.to_rgb8(), written.to_rgb8());
}

#[test]
fn styles_mix_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let photo = data("coffee.png");
    let p = s(&photo);
    let three = styled(&[p, "--style", "3"], &dir.path().join("3.png"));
    let nineteen = styled(&[p, "--style", "19"], &dir.path().join("19.png"));
    let mostly_three = styled(&[p, "--style", "3:0.9,19:0.1"], &dir.path().join("m1.png"));
    let mostly_nineteen = styled(&[p, "--style", "3:1,19:9"], &dir.path().join("m2.png"));
    // Each mix is nearer the style it weighs most, and is neither pure style.
    assert!(mean_diff(&mostly_three, &three) < mean_diff(&mostly_three, &nineteen));
    assert!(mean_diff(&mostly_nineteen, &nineteen) < mean_diff(&mostly_nineteen, &three));
    assert!(mean_diff(&mostly_three, &three) > 0.5);

    let out = dir.path().join("j.png");
    let run = zoo(&["run", "style-transfer", p, "--style", "3:1,19:3", "--output", s(&out), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let style = &json(&run)[0]["style"];
    assert_eq!((style[0]["index"].as_u64(), style[0]["weight"].as_f64()), (Some(3), Some(0.25)));
    assert_eq!((style[1]["index"].as_u64(), style[1]["weight"].as_f64()), (Some(19), Some(0.75)));
}

#[test]
fn a_style_image_styles_with_magenta_and_strength_interpolates() {
    let dir = tempfile::tempdir().unwrap();
    let photo = data("chelsea.png");
    let painting = data("coffee.png");
    let out = dir.path().join("full.png");
    let run = zoo(&["run", "style-transfer", s(&photo), "--style-image", s(&painting), "--output", s(&out), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = &json(&run)[0];
    assert_eq!(line["model"], "magenta-arbitrary");
    assert_eq!(line["style"]["strength"], 1.0);
    let full = image::open(&out).unwrap();
    assert_eq!(full.dimensions(), (451, 300));
    let none = styled(&[s(&photo), "--style-image", s(&painting), "--strength", "0"], &dir.path().join("0.png"));
    let half = styled(&[s(&photo), "--style-image", s(&painting), "--strength", "0.5"], &dir.path().join("h.png"));
    let original = image::open(&photo).unwrap();
    // Strength 0 keeps the photo's own style: nearer the photo than the full painting's style.
    assert!(mean_diff(&none, &original) < mean_diff(&full, &original));
    let (to_none, to_full, ends) = (mean_diff(&half, &none), mean_diff(&half, &full), mean_diff(&none, &full));
    assert!(to_none < ends && to_full < ends && to_none > 0.3 && to_full > 0.3, "{to_none} {to_full} {ends}");
}

#[test]
fn the_contact_sheet_shows_all_26_styles() {
    let dir = tempfile::tempdir().unwrap();
    let sheet = dir.path().join("sheet.png");
    let run = zoo(&["run", "style-transfer", s(&data("chelsea.png")), "--contact-sheet", s(&sheet), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = &json(&run)[0];
    let styles = line["style"].as_array().unwrap();
    assert_eq!(styles.len(), 26);
    assert_eq!(styles[19]["name"], "starry-blue");
    // 7 columns x 4 rows of 256x170 cells with 6-pixel gaps.
    let image = image::open(&sheet).unwrap();
    assert_eq!(image.dimensions(), (6 + 7 * (256 + 6), 6 + 4 * (170 + 6)));
    // Smaller cells with --max-size; no limit (0) keeps the default cell size.
    for (max_size, width) in [("100", 6 + 7 * (100 + 6)), ("0", 6 + 7 * (256 + 6))] {
        let run = zoo(&[
            "run",
            "style",
            s(&data("coffee.png")),
            "--contact-sheet",
            s(&sheet),
            "--force",
            "--max-size",
            max_size,
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(image::open(&sheet).unwrap().width(), width, "--max-size {max_size}");
    }
}

#[test]
fn any_size_comes_back_at_its_own_size_and_alpha_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(97, 131), (3, 2), (1, 1), (130, 5)] {
        let input = dir.path().join(format!("in{w}x{h}.png"));
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 128])).save(&input).unwrap();
        let out = styled(&[s(&input), "--style", "2"], &dir.path().join(format!("out{w}x{h}.png")));
        assert_eq!(out.dimensions(), (w, h));
    }

    let input = dir.path().join("alpha.png");
    let rgba = RgbaImage::from_fn(60, 41, |x, y| Rgba([200, (x * 4) as u8, 30, (x * 4 + y) as u8]));
    rgba.save(&input).unwrap();
    let out = styled(&[s(&input), "--style", "5"], &dir.path().join("alpha-out.png"));
    assert!(out.color().has_alpha());
    let out = out.to_rgba8();
    assert!(out.pixels().zip(rgba.pixels()).all(|(a, b)| a.0[3] == b.0[3]), "alpha unchanged");

    // --max-size scales the longest side down.
    let run_out = dir.path().join("small.png");
    let small = styled(&[s(&data("chelsea.png")), "--style", "1", "--max-size", "200"], &run_out);
    assert_eq!(small.dimensions(), (200, 133));
}

#[test]
fn outputs_are_never_overwritten_without_force_and_jpeg_follows_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let photo = data("coffee.png");
    let out = dir.path().join("out.jpg");
    let run = zoo(&["run", "style-transfer", s(&photo), "--output", s(&out), "--quality", "80"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..3], &[0xff, 0xd8, 0xff], "a JPEG file");

    let run = zoo(&["run", "style-transfer", s(&photo), "--output", s(&out)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--force") && run.stderr.lines().count() == 1, "{}", run.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), bytes, "the file is untouched");

    let run = zoo(&["run", "style-transfer", s(&photo), "--output", s(&out), "--style", "9", "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_ne!(std::fs::read(&out).unwrap(), bytes);

    // Several inputs go to a folder; one file for several is refused before anything is written.
    let folder = dir.path().join("styled");
    let two = [s(&photo), data("chelsea.png").to_str().unwrap()].map(str::to_string);
    let run = zoo(&["run", "style-transfer", &two[0], &two[1], "--output-dir", s(&folder), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(folder.join("coffee.png").is_file() && folder.join("chelsea.png").is_file());
    let single = dir.path().join("single.png");
    let run = zoo(&["run", "style-transfer", &two[0], &two[1], "--output", s(&single)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--output-dir"), "{}", run.stderr);
    assert!(!single.exists());
}

#[test]
fn bad_inputs_and_options_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let photo = data("coffee.png");
    let out = dir.path().join("out.png");
    let (p, o) = (s(&photo), s(&out));
    let usage: Vec<(Vec<&str>, &str)> = vec![
        (vec![p, "--style", "27", "--output", o], "numbered 0 to 25"),
        (vec![p, "--style", "26", "--output", o], "numbered 0 to 25"),
        (vec![p, "--style", "3:abc", "--output", o], "'abc' is not a number"),
        (vec![p, "--style", "3:0,4:0", "--output", o], "add up to 0"),
        (vec![p, "--style", "3:-1,4:2", "--output", o], "0 or more"),
        (vec![p, "--style", "no-such-style", "--output", o], "no style named"),
        (vec![p, "--style", "3"], "--output"),
        (vec![p, "--style", "3", "--output", "out.gif"], "use .png or .jpg"),
        (vec![p, "--style", "3", "--style-image", p, "--output", o], "not both"),
        (vec![p, "--style-image", p, "--strength", "1.5", "--output", o], "between 0 and 1"),
        (vec![p, "--strength", "0.5", "--output", o], "--style-image"),
        (vec![p, "--quality", "0", "--output", o], "between 1 and 100"),
        (vec![p, "--output", o, "--contact-sheet", o], "only one of"),
        (vec![p, "--style-image", "/no/such/painting.jpg", "--output", o], "--style-image"),
    ];
    for (args, expected) in usage {
        let mut all = vec!["run", "style-transfer"];
        all.extend(&args);
        let run = zoo(&all);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("zoo: error: ") && run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    assert!(!out.exists());

    let corrupt = dir.path().join("corrupt.png");
    let png = std::fs::read(&photo).unwrap();
    std::fs::write(&corrupt, &png[..png.len() / 3]).unwrap();
    let run = zoo(&["run", "style-transfer", s(&corrupt), "--output", o]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().next().map(|l| l.starts_with("zoo: error: ") && l.contains("corrupt.png")),
        Some(true)
    );
    assert!(!out.exists());
}

/// pytorch/examples TransformerNet checkpoints from the shared test assets (not shippable).
fn candy(test: &str) -> Option<(PathBuf, PathBuf)> {
    let assets = zoo_runtime::test_support::shared_assets(test)?;
    Some((assets.join("models/style/transformernet-nc16/candy_nc16.safetensors"), assets.join("reference/style")))
}

#[test]
fn a_transformer_net_checkpoint_loads_from_a_file_or_a_folder() {
    let Some((weights, reference)) = candy("TransformerNet end to end") else { return };
    let dir = tempfile::tempdir().unwrap();
    let content = reference.join("content_chelsea_192x144.png");
    let expected = image::open(reference.join("transformernet_candy_nc16.png")).unwrap();
    let out = dir.path().join("candy.png");
    let run = zoo(&["run", "style-transfer", s(&content), "--model", s(&weights), "--output", s(&out), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json(&run)[0]["style"], s(&weights));
    let got = image::open(&out).unwrap();
    let worst = got.to_rgb8().as_raw().iter().zip(expected.to_rgb8().as_raw()).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(worst <= Some(1), "8-bit output within one level of the reference, got {worst:?}");

    let folder = dir.path().join("candy-model");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&weights, folder.join("candy.safetensors")).unwrap();
    let again = dir.path().join("again.png");
    let run = zoo(&["run", "style-transfer", s(&content), "--model", s(&folder), "--output", s(&again)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(image::open(&again).unwrap().to_rgb8(), got.to_rgb8());

    let run = zoo(&[
        "run",
        "style-transfer",
        s(&content),
        "--model",
        s(&weights),
        "--style",
        "3",
        "--output",
        s(&again),
        "--force",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("one style built in"), "{}", run.stderr);
}

#[test]
fn a_legacy_pytorch_file_is_refused_with_how_to_convert_it() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("candy.pth");
    // The start of a pre-1.6 torch.save file: pickle protocol 2 and torch's magic number.
    std::fs::write(&legacy, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.").unwrap();
    let out = dir.path().join("out.png");
    let run = zoo(&["run", "style-transfer", s(&data("coffee.png")), "--model", s(&legacy), "--output", s(&out)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("legacy") && run.stderr.contains("torch.save"), "{}", run.stderr);

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not weights at all").unwrap();
    let run = zoo(&["run", "style-transfer", s(&data("coffee.png")), "--model", s(&junk), "--output", s(&out)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("neither safetensors nor"), "{}", run.stderr);
}

#[test]
fn list_shows_the_bundled_style_models() {
    let run = zoo(&["list", "--json"]);
    assert_eq!(run.code, 0);
    let models: Vec<Value> = json(&run);
    for id in ["multistyle26", "magenta-arbitrary"] {
        let m = models.iter().find(|m| m["model"] == id).unwrap_or_else(|| panic!("{id} listed"));
        assert_eq!(m["available"], "bundled");
        assert_eq!(m["task"], "style-transfer");
    }
}

#[test]
fn a_zip_pytorch_checkpoint_gives_the_same_picture_as_its_safetensors() {
    let Some((weights, reference)) = candy("TransformerNet .pth") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut tensors: Vec<(String, candle_core::Tensor)> =
        candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let pth = dir.path().join("candy.pth");
    write_pth(&pth, &tensors);
    let content = reference.join("content_chelsea_192x144.png");
    let from_pth = dir.path().join("pth.png");
    let from_safetensors = dir.path().join("st.png");
    for (model, out) in [(&pth, &from_pth), (&weights, &from_safetensors)] {
        let run = zoo(&["run", "style-transfer", s(&content), "--model", s(model), "--output", s(out)]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.stderr, "", "no warnings while reading the checkpoint");
    }
    assert_eq!(std::fs::read(&from_pth).unwrap(), std::fs::read(&from_safetensors).unwrap());
}
