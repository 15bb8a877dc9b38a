//! Measures the activation ranges of an int8 EfficientNet-Lite: runs the float model over the
//! images named on the command line and prints `calibration.json` (see `make calibrate-int8`).
//!
//!     cargo run --release -p zoo-image-classification --example calibrate -- \
//!         [--model efficientnet-lite0] [--root DIR] IMAGE...
//!
//! Image names are written into the file relative to `--root`, so that the file says which
//! images it was measured on without naming this machine's folders.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::Device;
use zoo_image_classification::{Calibration, Classifier};
use zoo_runtime::{HubSettings, Input, Model, ModelRef};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calibrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut root, mut images) = ("efficientnet-lite0".to_string(), PathBuf::new(), Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = args.next().ok_or("--model needs a value")?,
            "--root" => root = args.next().ok_or("--root needs a value")?.into(),
            _ => images.push(PathBuf::from(arg)),
        }
    }
    if images.is_empty() {
        return Err("name the calibration images (none of the images accuracy is measured on)".into());
    }
    let model = Model::resolve(&ModelRef::parse(&model)?, &HubSettings::from_env(true));
    let classifier = Classifier::load(&model, &Device::Cpu)?;
    let inputs: Vec<Input> = images.iter().map(|p| Input::file(root.join(p))).collect();
    let ranges = classifier.calibrate(&inputs)?;
    let calibration = Calibration {
        method: format!(
            "smallest and largest value of each 1x1 convolution's input over {} images, through {}'s preprocessing",
            images.len(),
            model.id
        ),
        images: images.iter().map(|p| p.display().to_string()).collect(),
        inputs: ranges,
    };
    println!("{}", serde_json::to_string_pretty(&calibration)?);
    Ok(())
}
