//! The files of `weights/`, embedded at build time (see build.rs).

include!(concat!(env!("OUT_DIR"), "/bundled_files.rs"));

/// The bytes of `weights/<path>`, if it was bundled.
pub fn file(path: &str) -> Option<&'static [u8]> {
    FILES.iter().find(|(name, _)| *name == path).map(|(_, bytes)| *bytes)
}

/// The catalogue text (`weights/catalog.toml`).
pub fn catalog_text() -> &'static str {
    let bytes = file("catalog.toml").expect("weights/catalog.toml is bundled by build.rs");
    std::str::from_utf8(bytes).expect("weights/catalog.toml is UTF-8")
}
