//! Any bytes as an audio file (WAV through hound, FLAC/MP3/OGG through symphonia, by sniffing):
//! decoded or refused, never a panic; a one-minute limit keeps runs fast and bounds allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = zoo_speech_recognition::audio::decode_with_limit(data, std::path::Path::new("fuzz.wav"), 60.0);
});
