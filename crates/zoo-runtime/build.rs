//! Embeds the repository's `weights/` folder (the catalogue and the small bundled models) into the
//! runtime, so a freshly built `zoo` runs its bundled models with no download and no install step,
//! wherever the binary is copied. The bytes live in the binary's read-only data, which the OS maps
//! on demand: no copy is made until a model is loaded.
use std::path::{Path, PathBuf};

fn main() {
    vector_cfgs();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let weights = manifest.join("../../weights").canonicalize().expect("weights/ folder beside crates/");
    println!("cargo:rerun-if-changed={}", weights.display());

    let mut files = Vec::new();
    collect(&weights, &weights, &mut files);
    files.sort();

    let mut out =
        String::from("/// Files under `weights/`, by path relative to it.\npub static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        out.push_str(&format!("    ({rel:?}, include_bytes!({abs:?})),\n"));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("bundled_files.rs");
    std::fs::write(dest, out).unwrap();
}

/// The vector instructions this build's kernels (`cpu`) may use, as cfgs: `fma256` (AVX2 with
/// FMA: every x86-64 since Haswell and Zen 1, the f32 products' kernel where there is no AVX-512);
/// for the int8 ones, `vnni512` (AVX-512 VNNI), `vnni256` (AVX-VNNI with FMA: Intel's client CPUs
/// since Alder Lake, which have no AVX-512, and Zen 5), and `int8_dot` for either.
fn vector_cfgs() {
    for cfg in ["fma256", "vnni512", "vnni256", "int8_dot"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |name: &str| features.split(',').any(|f| f == name);
    let vnni512 = has("avx512vnni");
    let vnni256 = has("avxvnni") && has("fma");
    let fma256 = has("avx2") && has("fma");
    for (cfg, on) in [("fma256", fma256), ("vnni512", vnni512), ("vnni256", vnni256), ("int8_dot", vnni512 || vnni256)]
    {
        if on {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

/// Documentation (README, PROVENANCE, licences) stays in the repository; only what a model loads
/// is embedded.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let is_doc = name.ends_with(".md") || name.starts_with("LICENSE") || name.starts_with('.');
        if is_doc {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        files.push((rel, path.to_string_lossy().to_string()));
    }
}
