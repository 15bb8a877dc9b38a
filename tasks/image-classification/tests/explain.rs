//! `--explain`'s occlusion heatmap points at the object: a photo the model classifies correctly,
//! pasted into one quadrant of a neutral grey canvas, must draw most of the heat for its class
//! into that quadrant, whichever quadrant it is in.

use candle_core::Device;
use image::{imageops, Rgb, RgbImage};
use zoo_image_classification::{explain, Classifier};
use zoo_runtime::test_support::shared_assets;
use zoo_runtime::{HubSettings, Model, ModelRef};

/// Photos (a free one and ImageNet dev images) with their classes.
const PHOTOS: &[(&str, usize)] = &[
    ("photos/chelsea.png", 282),
    ("imagenet-dev/n01440764_tench.JPEG", 0),
    ("imagenet-dev/n01944390_snail.JPEG", 113),
    ("imagenet-dev/n01980166_fiddler_crab.JPEG", 120),
    ("imagenet-dev/n02085936_Maltese_dog.JPEG", 153),
];

/// The photo squashed to `side` x `side` in quadrant `q` (0 top-left, 1 top-right, 2 bottom-left,
/// 3 bottom-right) of a grey canvas twice that size.
fn composite(photo: &RgbImage, side: u32, q: usize) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(2 * side, 2 * side, Rgb([128, 128, 128]));
    let small = imageops::resize(photo, side, side, imageops::FilterType::Triangle);
    imageops::replace(&mut canvas, &small, (q as i64 % 2) * side as i64, (q as i64 / 2) * side as i64);
    canvas
}

#[test]
fn heat_falls_on_the_quadrant_holding_the_photo() {
    let Some(assets) = shared_assets("occlusion heatmap quadrants") else { return };
    let model = Model::resolve(&ModelRef::parse("efficientnet-lite0").unwrap(), &HubSettings::from_env(true));
    let classifier = Classifier::load(&model, &Device::Cpu).unwrap();
    let mut report = Vec::new();
    let mut worst = 1f32;
    for &(file, class) in PHOTOS {
        let photo = image::open(assets.join("data/images").join(file)).unwrap().to_rgb8();
        for q in 0..4 {
            // Built at the crop's size, so that the photo's quadrant is exactly the crop's.
            let canvas = composite(&photo, 112, q);
            let x = classifier.preprocess().tensor(&canvas, &Device::Cpu).unwrap();
            let top = classifier.top_k(&classifier.logits(&x).unwrap(), 5).unwrap().remove(0);
            let top5: Vec<usize> = top.predictions.iter().map(|p| p.index).collect();
            // Shrunk to a quarter, a photo may lose its top place to a neighbouring class (tiger
            // cat to Egyptian cat); the model still has to see its class among the first three.
            assert!(top5[..3].contains(&class), "{file} in quadrant {q}: class {class} not in the top 3 {top5:?}");
            let saliency = classifier
                .saliency(&x, [canvas.width(), canvas.height()], class, std::path::Path::new(file), None)
                .unwrap();
            assert!(saliency.grid.iter().flatten().all(|&v| v >= 0.0 && v.is_finite()));
            let shares = explain::quadrant_shares(&saliency.grid);
            report.push(format!("{file} q{q}: {:.2} (top-1 {})", shares[q], top5[0]));
            worst = worst.min(shares[q]);
        }
    }
    eprintln!("heat share in the photo's quadrant:\n{}", report.join("\n"));
    assert!(worst > 0.5, "some composite drew less than half its heat to the photo:\n{}", report.join("\n"));
}
