//! Any bytes as an image file: decoded or refused, never a panic, and never more than the pixel
//! limit allocated (a small limit here keeps each run fast).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zoo_runtime::{Input, InputSource};

fuzz_target!(|data: &[u8]| {
    let input = Input { name: "fuzz.img".into(), source: InputSource::Stdin(data.into()) };
    let _ = zoo_runtime::image_io::decode(&input, 4_000_000);
});
