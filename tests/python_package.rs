//! The Python package (bindings/python) built from this checkout into a venv under target/ and
//! tested with pytest (bindings/python/tests) against what this build's `zoo run --json` prints.
//! Its build dependencies come from the package registry; where that fails it fails under CI and
//! skips loudly elsewhere. The Ray test (bindings/python/tests/test_ray.py) starts a local Ray
//! cluster on 127.0.0.1 and stops it itself.

use std::process::Command;
use std::time::{Duration, Instant};

use zoo_bin::{pinned_venv, run_bounded};
use zoo_runtime::test_support::{repo_root, shared_assets, shared_hub_cache};

#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

/// Pinned so that a new release cannot change what is tested without a commit; maturin builds
/// the wheel without build isolation, so this one is the one used.
/// Ray Data is zoo[ray]'s extra; its test starts a real one-node cluster.
const PACKAGES: &[&str] = &["maturin==1.16.0", "pytest==9.2.0", "numpy==2.4.6", "pillow==13.0.0", "ray[data]==2.60.0"];

fn path_with(dir: &std::path::Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(dirs).unwrap()
}

#[test]
fn the_python_package_answers_what_the_cli_prints() {
    let test = "the_python_package_answers_what_the_cli_prints";
    let (Some(cache), Some(assets)) = (shared_hub_cache(test), shared_assets(test)) else { return };
    let Some(python) = pinned_venv("python-venv", PACKAGES, "the Python package was not tested") else { return };

    // Rebuilt every run, so that the tested module is this checkout's; cargo's cache keeps it short.
    let started = Instant::now();
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-build-isolation"])
        .args(["--force-reinstall", "./bindings/python"])
        .current_dir(repo_root())
        // The build backend runs the venv's maturin executable.
        .env("PATH", path_with(python.parent().unwrap()));
    let built = run_bounded(pip, None, Duration::from_secs(1800)).finished("pip install ./bindings/python");
    assert_eq!(built.code, 0, "{}", built.describe());
    eprintln!("the wheel built and installed in {:.0} s", started.elapsed().as_secs_f64());

    // The Ray test's figures (its throughput next to one `zoo run`, the actors' memory).
    let reports = repo_root().join("target/reports");
    std::fs::create_dir_all(&reports).unwrap();
    let _ = std::fs::remove_file(reports.join("ray.json"));
    let mut pytest = Command::new(&python);
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"])
        .arg(repo_root().join("bindings/python/tests"))
        .current_dir(std::env::temp_dir())
        .env("ZOO_BIN", env!("CARGO_BIN_EXE_zoo"))
        .env("ZOO_SHARED_ASSETS", &assets)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        // Nothing listens on the discard port: a stray download fails fast instead of going out.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("ZOO_REPORT_DIR", &reports);
    let run = run_bounded(pytest, None, Duration::from_secs(1200)).finished("pytest bindings/python/tests");
    assert_eq!(run.code, 0, "{}", run.describe());
    let summary = run.stdout.lines().last().unwrap_or("").to_string();
    assert!(summary.contains(" passed") && !summary.contains("skipped") && !summary.contains("failed"), "{summary}");
    eprintln!("pytest: {summary}");
    let ray = std::fs::read_to_string(reports.join("ray.json")).expect("the Ray test wrote target/reports/ray.json");
    eprintln!("Ray against one process:\n{ray}");
}
