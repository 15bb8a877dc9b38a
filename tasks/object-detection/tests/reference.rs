//! FastestDet against the independent references in `../shared/assets/reference/detection`
//! (onnxruntime on the authors' ONNX export, decoded by the authors' own example): the network on
//! the exact 352x352 inputs the reference fed it, the decoder on the reference's raw output maps,
//! the resize against OpenCV's, and the whole pipeline from the JPEG files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zoo_object_detection::{decode, fastestdet, resize, Detector};
use zoo_runtime::test_support::shared_assets;
use zoo_runtime::{HubSettings, Input, Model, ModelRef};

fn detector() -> Detector {
    let model = Model::resolve(&ModelRef::parse("fastestdet").unwrap(), &HubSettings::from_env(true));
    Detector::load(&model, &Device::Cpu).unwrap()
}

fn reference(assets: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(assets.join("reference/detection/fastestdet_ref.json")).unwrap()).unwrap()
}

fn raw_maps(assets: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(assets.join("reference/detection/fastestdet_raw_area.safetensors"), &Device::Cpu)
        .unwrap()
}

fn stem(image: &Value) -> String {
    image["file"].as_str().unwrap().trim_end_matches(".jpg").to_string()
}

fn size(image: &Value) -> (u32, u32) {
    (image["width"].as_u64().unwrap() as u32, image["height"].as_u64().unwrap() as u32)
}

#[test]
fn the_network_matches_onnxruntime_on_the_reference_inputs() {
    let Some(assets) = shared_assets("the_network_matches_onnxruntime_on_the_reference_inputs") else { return };
    let detector = detector();
    let maps = raw_maps(&assets);
    let reference = reference(&assets);
    let mut worst = 0f32;
    for image in reference["images"].as_array().unwrap() {
        let name = stem(image);
        // PNG stores RGB; the tensor is built in BGR, as OpenCV's pipeline feeds it.
        let png = assets.join(format!("reference/detection/inputs_352/{name}.352.area.png"));
        let resized = image::open(&png).unwrap().to_rgb8();
        let x = detector.tensor(&resized).unwrap();
        let bytes: Vec<u8> =
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            format!("{:x}", Sha256::digest(&bytes)),
            image["area"]["input_sha256_f32_le"].as_str().unwrap(),
            "{name}: the input tensor is not the reference's"
        );
        let ours = detector.forward(&x).unwrap();
        let diff = (ours - &maps[&name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        eprintln!("{name}: max |output - onnxruntime| = {diff:.2e}");
        worst = worst.max(diff);
    }
    assert!(worst <= 1e-3, "output map differs from onnxruntime by {worst}, over the 1e-3 tolerance");
}

#[test]
fn decoding_the_reference_maps_gives_the_reference_boxes_exactly() {
    let Some(assets) = shared_assets("decoding_the_reference_maps_gives_the_reference_boxes_exactly") else { return };
    let maps = raw_maps(&assets);
    let reference = reference(&assets);
    for image in reference["images"].as_array().unwrap() {
        let name = stem(image);
        let (cells, shape) = fastestdet::cell_vectors(&maps[&name].squeeze(0).unwrap()).unwrap();
        let found = decode::suppress(decode::candidates(&cells, shape, size(image), 0.65), 0.45);
        let expected = image["area"]["detections_runtime_py"].as_array().unwrap();
        assert_eq!(found.len(), expected.len(), "{name}: {found:?}");
        for (ours, theirs) in found.iter().zip(expected) {
            let corners: Vec<i64> =
                theirs["box_xyxy_px"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(ours.corners.to_vec(), corners, "{name}");
            assert_eq!(ours.class as u64, theirs["class_id"].as_u64().unwrap(), "{name}");
            assert!((f64::from(ours.score) - theirs["score"].as_f64().unwrap()).abs() < 1e-6, "{name}");
        }
    }
}

/// The reference resized with OpenCV after decoding with libjpeg-turbo; zoo decodes with the
/// `image` crate, whose JPEG output differs by a few levels, so the two resized pictures can only
/// agree to within that.
#[test]
fn the_resize_is_opencvs_area_resize() {
    let Some(assets) = shared_assets("the_resize_is_opencvs_area_resize") else { return };
    for image in reference(&assets)["images"].as_array().unwrap() {
        let name = stem(image);
        let original = image::open(assets.join("data/detection").join(image["file"].as_str().unwrap())).unwrap();
        let ours = resize::area(&original.to_rgb8(), 352, 352);
        let png = assets.join(format!("reference/detection/inputs_352/{name}.352.area.png"));
        let theirs = image::open(&png).unwrap().to_rgb8();
        let diffs: Vec<i32> =
            ours.as_raw().iter().zip(theirs.as_raw()).map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs()).collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        eprintln!("{name} {:?}: max |ours - OpenCV| = {max}, mean {mean:.3}", size(image));
        assert!(max <= 4 && mean <= 0.25, "{name}: the resize differs from OpenCV's by up to {max} (mean {mean:.3})");
    }
}

/// From the JPEG files through zoo's whole pipeline: the reference's detections, corners within
/// 2 px and scores within 0.01 (the decoders' few levels move them a little); a detection whose
/// score is within 0.01 of the threshold may come or go.
#[test]
fn photos_give_the_reference_detections() {
    let Some(assets) = shared_assets("photos_give_the_reference_detections") else { return };
    let mut detector = detector();
    for image in reference(&assets)["images"].as_array().unwrap() {
        let file = assets.join("data/detection").join(image["file"].as_str().unwrap());
        let (width, height) = size(image);
        let out = zoo_runtime::Runner::run(&mut detector, &[Input::file(&file)]).pop().unwrap().unwrap();
        let json = out.json();
        assert_eq!((json["width"].as_u64().unwrap(), json["height"].as_u64().unwrap()), (width as u64, height as u64));
        let mut ours: Vec<Value> = json["objects"].as_array().unwrap().clone();
        let clear = |o: &Value| (o["score"].as_f64().unwrap() - 0.65).abs() > 0.01;
        for theirs in image["area"]["detections_runtime_py"].as_array().unwrap() {
            let c = theirs["box_xyxy_px"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>();
            let clip = |v: i64, max: u32| v.clamp(0, i64::from(max));
            let want = [clip(c[0], width), clip(c[1], height), clip(c[2], width), clip(c[3], height)];
            let found = ours.iter().position(|o| {
                let b: Vec<i64> = o["box"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                // Corners within 2 px: the box's [x, y, width, height] back to its corners.
                let corners = [b[0], b[1], b[0] + b[2], b[1] + b[3]];
                o["label"] == theirs["class"]
                    && (o["score"].as_f64().unwrap() - theirs["score"].as_f64().unwrap()).abs() <= 0.01
                    && corners.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 2)
            });
            match found {
                Some(i) => {
                    ours.remove(i);
                }
                None => assert!(!clear(theirs), "{}: missing {theirs} among {ours:?}", image["file"]),
            }
        }
        assert!(ours.iter().all(|o| !clear(o)), "{}: objects the reference does not have: {ours:?}", image["file"]);
    }
}

/// On the reference photo with a dog, a bicycle and a car, what each detection rests on is
/// mostly inside its own box: the hottest cell of each map lies within the box.
#[test]
fn each_detection_rests_mostly_on_its_own_box() {
    let Some(assets) = shared_assets("each_detection_rests_mostly_on_its_own_box") else { return };
    let detector = detector();
    let photo = image::open(assets.join("data/detection/dog.jpg")).unwrap().to_rgb8();
    let size = photo.dimensions();
    let x = detector.tensor(&photo).unwrap();
    let map = detector.forward(&x).unwrap().squeeze(0).unwrap();
    let objects = detector.objects(&map, size).unwrap();
    assert_eq!(objects.iter().map(|o| o.label.as_str()).collect::<Vec<_>>(), ["dog", "car", "bicycle"]);
    for object in &objects {
        let heat = zoo_object_detection::explain::occlusion(&detector, &x, size, object, 8).unwrap();
        let [rx, ry, rw, rh] = heat.region.map(f64::from);
        let (mut best, mut at) = (f32::MIN, (0, 0));
        for (r, row) in heat.grid.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                if v > best {
                    (best, at) = (v, (r, c));
                }
            }
        }
        let n = heat.grid.len() as f64;
        let (cx, cy) = (rx + (at.1 as f64 + 0.5) * rw / n, ry + (at.0 as f64 + 0.5) * rh / n);
        let [bx, by, bw, bh] = object.bbox.map(f64::from);
        eprintln!("{}: hottest cell {at:?} at ({cx:.0}, {cy:.0}), drop {best:.3}", object.label);
        assert!(best > 0.05, "{}: no part matters", object.label);
        assert!(cx >= bx && cx <= bx + bw && cy >= by && cy <= by + bh, "{}: rests outside its box", object.label);
    }
}
