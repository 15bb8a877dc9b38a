//! Any bytes as a CTranslate2 model.bin: parsed or refused, never a panic; every variable it
//! accepts can be read as a tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zoo_speech_recognition::ct2::Ct2Model;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = Ct2Model::from_bytes("fuzz.bin", data.to_vec()) {
        let names: Vec<String> = model.names().map(str::to_string).collect();
        for name in names {
            let _ = model.tensor(&name, &candle_core::Device::Cpu);
        }
    }
});
