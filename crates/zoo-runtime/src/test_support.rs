//! Helpers for zoo's own tests: where the shared test assets are, and what to do without them.

use std::path::PathBuf;

/// The repository's root (the folder holding `weights/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// `../shared/assets` beside the repository (or `$ZOO_SHARED/assets`). Without it a test cannot
/// check anything: under CI (`CI=true`) that is a failure; elsewhere the test is skipped with a
/// loud message, and `None` is returned.
pub fn shared_assets(test: &str) -> Option<PathBuf> {
    let shared = std::env::var_os("ZOO_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared"));
    let assets = shared.join("assets");
    if assets.is_dir() {
        return Some(assets);
    }
    let message = format!("{test}: the shared test assets are missing ({} not found)", assets.display());
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{message}; CI needs them");
    }
    eprintln!("\n*** SKIPPED {message} ***\n");
    None
}
