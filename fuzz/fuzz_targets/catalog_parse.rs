//! Any text as a model catalogue (a user's ZOO_CATALOG file): parsed and validated or refused,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = zoo_runtime::catalog::Catalog::parse(text);
    }
});
