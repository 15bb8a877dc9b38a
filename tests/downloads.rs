//! End-to-end tests of `zoo download` (and what `list`/`info` say about the cache) against a local
//! stand-in for the Hugging Face Hub: the real binary as a subprocess, hf-hub's real client, a real
//! cache folder per test. Nothing here touches the network beyond 127.0.0.1.

#[path = "support/hub_server.rs"]
mod hub_server;
#[allow(dead_code)]
#[path = "support/zoo_bin.rs"]
mod zoo_bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hub_server::{sha256_hex, Fault, HubServer, ServedFile};
use serde_json::Value;
use zoo_bin::Run;

const TINY_REPO: &str = "zoo-test/tiny";
const TINY_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_REPO: &str = "zoo-test/other";
const OTHER_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";
const WEIGHTS_SIZE: usize = 3_000_000;
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Test data and the per-test world: a server, a cache, a catalogue

/// Deterministic pseudo-random bytes (splitmix64), so no binary fixture is committed.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn tiny_files() -> Vec<ServedFile> {
    vec![
        ServedFile::new("config.json", br#"{"a": "b"}"#.to_vec()),
        ServedFile::new("model.safetensors", pseudo_random_bytes(WEIGHTS_SIZE, 42)),
    ]
}

fn other_files() -> Vec<ServedFile> {
    vec![
        ServedFile::new(".gitattributes", b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec()),
        ServedFile::new("README.md", b"# other\n".to_vec()),
        ServedFile::new("config.json", br#"{"model_type": "other"}"#.to_vec()),
        ServedFile::new("model.safetensors", pseudo_random_bytes(200_000, 7)),
        ServedFile::new("pytorch_model.bin", pseudo_random_bytes(1000, 8)),
        ServedFile::new("onnx/model.onnx", pseudo_random_bytes(1000, 9)),
        ServedFile::new("tokenizer.json", br#"{"version": "1.0"}"#.to_vec()),
    ]
}

/// A file of a catalogue entry; `None` leaves the checksum or the size out, as the schema allows.
#[derive(Clone)]
struct Listed {
    path: String,
    sha256: Option<String>,
    size: Option<usize>,
}

/// One `[[model]]` of a catalogue.
fn catalog_entry(id: &str, repo: &str, commit: &str, files: &[Listed]) -> String {
    let files: Vec<String> = files
        .iter()
        .map(|f| {
            let sha = f.sha256.as_ref().map(|sha| format!(", sha256 = \"{sha}\"")).unwrap_or_default();
            let size = f.size.map(|size| format!(", size = {size}")).unwrap_or_default();
            format!("{{ path = \"{}\"{sha}{size} }}", f.path)
        })
        .collect();
    format!(
        "[[model]]\nid = \"{id}\"\ntask = \"image-classification\"\narchitecture = \"test\"\nsummary = \"test\"\n\
         licence = \"MIT\"\nquality = \"n/a\"\nsource = {{ kind = \"hub\", repo = \"{repo}\", revision = \"{commit}\" }}\n\
         files = [ {} ]\n\n",
        files.join(", ")
    )
}

fn catalog_files(files: &[ServedFile]) -> Vec<Listed> {
    files.iter().map(|f| Listed { path: f.path.clone(), sha256: Some(f.sha256()), size: Some(f.bytes.len()) }).collect()
}

struct World {
    server: HubServer,
    dir: tempfile::TempDir,
    tiny: Vec<ServedFile>,
}

impl World {
    /// A server holding `zoo-test/tiny` and `zoo-test/other`, an empty cache, and a catalogue with
    /// `test-model` (tiny, right checksums) and `missing-model` (a repo the server does not have).
    fn new() -> Self {
        let server = HubServer::start();
        let tiny = tiny_files();
        server.add_repo(TINY_REPO, TINY_COMMIT, tiny.clone());
        server.add_repo(OTHER_REPO, OTHER_COMMIT, other_files());
        let world = World { server, dir: tempfile::tempdir().expect("tempdir"), tiny };
        world.write_catalog(&catalog_files(&world.tiny));
        world
    }

    /// Rewrites the catalogue with `test-model`'s files as given.
    fn write_catalog(&self, test_model_files: &[Listed]) {
        let missing = [Listed { path: "config.json".into(), sha256: Some("0".repeat(64)), size: Some(12) }];
        let text = catalog_entry("test-model", TINY_REPO, TINY_COMMIT, test_model_files)
            + &catalog_entry("missing-model", "zoo-test/missing", TINY_COMMIT, &missing);
        std::fs::write(self.catalog_path(), text).expect("write catalogue");
    }

    fn catalog_path(&self) -> PathBuf {
        self.dir.path().join("catalog.toml")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("hub")
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache().join(format!("models--{}", repo.replace('/', "--")))
    }

    fn tiny_file(&self, path: &str) -> &ServedFile {
        self.tiny.iter().find(|f| f.path == path).expect("a tiny file")
    }

    /// `zoo args...` with a clean environment pointing at this world.
    fn zoo(&self, args: &[&str]) -> Run {
        self.zoo_env(args, &[])
    }

    fn zoo_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        zoo_in(args, &self.server.url(), &self.cache(), Some(&self.catalog_path()), self.dir.path(), extra)
    }

    fn file_gets(&self) -> Vec<hub_server::Request> {
        self.server.requests().into_iter().filter(|r| r.is_file_get()).collect()
    }
}

/// The binary with only the environment the test sets: no proxy variables (127.0.0.1 must not go
/// through one), no token, no user cache.
fn zoo_in(
    args: &[&str],
    endpoint: &str,
    cache: &Path,
    catalog: Option<&Path>,
    home: &Path,
    extra: &[(&str, &str)],
) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zoo"));
    cmd.args(args)
        .env_clear()
        .env("HOME", home)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("RUST_BACKTRACE", "0");
    if let Some(catalog) = catalog {
        cmd.env("ZOO_CATALOG", catalog);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    zoo_bin::run_bounded(cmd, None, CHILD_TIMEOUT).finished(&format!("zoo {args:?}"))
}

/// Files directly in `dir`, by name (empty when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Every path under `dir`, relative, for failure messages and "nothing there" checks.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for entry in rd.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn exists_at_all(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The `zoo list --json` line for `model`.
fn list_entry(world: &World, model: &str, extra: &[(&str, &str)]) -> Value {
    let run = world.zoo_env(&["list", "--json"], extra);
    assert_eq!(run.code, 0, "{}", run.describe());
    run.json_lines()
        .into_iter()
        .find(|v| v["model"] == model)
        .unwrap_or_else(|| panic!("{model} not in `zoo list --json`\n{}", run.describe()))
}

/// Asserts `file` of the tiny repo is in the cache in huggingface_hub's layout with the served bytes.
fn assert_cached_like_the_hub(world: &World, served: &ServedFile) {
    let repo = world.repo_dir(TINY_REPO);
    let blob = repo.join("blobs").join(served.etag());
    let blob_bytes =
        std::fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}\ncache: {:#?}", blob.display(), tree(&repo)));
    assert!(blob_bytes == *served.bytes, "{}: blob differs from what was served", served.path);
    let pointer = repo.join("snapshots").join(TINY_COMMIT).join(&served.path);
    let meta = std::fs::symlink_metadata(&pointer).unwrap_or_else(|e| panic!("{}: {e}", pointer.display()));
    assert!(meta.file_type().is_symlink(), "{} is not a symlink", pointer.display());
    let target = std::fs::read_link(&pointer).expect("read link");
    assert!(
        target.is_relative(),
        "{}: the link should be relative like the Hub clients make it, is {}",
        pointer.display(),
        target.display()
    );
    assert_eq!(
        std::fs::canonicalize(&pointer).unwrap(),
        std::fs::canonicalize(&blob).unwrap(),
        "{}",
        pointer.display()
    );
    assert_eq!(sha256_hex(&std::fs::read(&pointer).unwrap()), served.sha256());
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn downloads_a_catalogued_repo_into_the_hub_cache_layout_and_then_serves_it_from_the_cache() {
    let world = World::new();
    assert_eq!(list_entry(&world, "test-model", &[])["available"], "not downloaded");

    let run = world.zoo(&["download", "test-model", "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let lines = run.json_lines();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert_eq!(lines[0]["model"], "test-model");
    assert_eq!(lines[0]["ok"], true);
    let reported: Vec<&str> = lines[0]["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(reported.len(), 2, "{}", run.describe());
    for served in &world.tiny {
        assert!(
            reported.iter().any(|p| p.ends_with(&format!("snapshots/{TINY_COMMIT}/{}", served.path))),
            "{reported:?}"
        );
        assert_cached_like_the_hub(&world, served);
    }
    // The revision the catalogue pins is recorded as a ref, as hf-hub and huggingface_hub do.
    let repo = world.repo_dir(TINY_REPO);
    let reference = std::fs::read_to_string(repo.join("refs").join(TINY_COMMIT)).expect("refs/<revision>");
    assert_eq!(reference.trim(), TINY_COMMIT);
    // Blobs holds the two files (and hf-hub's empty per-blob lock files), never a leftover .part.
    let blobs = names_in(&repo.join("blobs"));
    assert!(blobs.iter().all(|n| !n.ends_with(".part")), "{blobs:?}");
    let complete: Vec<&String> = blobs.iter().filter(|n| !n.ends_with(".lock")).collect();
    assert_eq!(complete.len(), 2, "{blobs:?}");

    // Each file: one metadata probe, then one body request from the start.
    let file_gets = world.file_gets();
    assert_eq!(file_gets.len(), 2, "{file_gets:#?}");
    assert!(file_gets.iter().all(|r| r.range_start() == Some(0)), "{file_gets:#?}");

    assert_eq!(list_entry(&world, "test-model", &[])["available"], "cached");
    let info = world.zoo(&["info", "test-model", "--json"]);
    assert_eq!(info.code, 0, "{}", info.describe());
    assert_eq!(info.json_lines()[0]["available"], "cached");

    // A second download re-hashes the cached files and asks the server for nothing.
    world.server.clear_requests();
    let again = world.zoo(&["download", "test-model"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert!(again.stdout.contains("test-model: 2 files in"), "{}", again.describe());
    assert_eq!(world.server.requests(), vec![], "a cached model must not touch the server");
    // The catalogued repo id finds the same entry and the same cached files.
    let by_repo = world.zoo(&["download", TINY_REPO]);
    assert_eq!(by_repo.code, 0, "{}", by_repo.describe());
    assert_eq!(world.server.requests(), vec![]);
}

#[test]
fn a_repo_the_hub_does_not_have_is_a_one_line_404_error_naming_it() {
    let world = World::new();

    let run = world.zoo(&["download", "missing-model"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let line = run.error_line();
    assert!(line.contains("404") && line.contains("not found"), "{line}");
    assert!(line.contains("zoo-test/missing"), "{line}");
    assert!(!exists_at_all(&world.repo_dir("zoo-test/missing").join("snapshots")), "{:#?}", tree(&world.cache()));

    // Uncatalogued: the file-list request is the one that gets the 404.
    let run = world.zoo(&["download", "zoo-test/nope", "--json"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let lines = run.json_lines();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert_eq!(lines[0]["ok"], false);
    let error = lines[0]["error"].as_str().unwrap();
    assert!(error.contains("404") && error.contains("zoo-test/nope"), "{error}");
    assert!(!exists_at_all(&world.repo_dir("zoo-test/nope").join("snapshots")));

    // A catalogued repo that lacks a listed file: the 404 names the file.
    let mut files = catalog_files(&world.tiny);
    files.push(Listed { path: "labels.txt".into(), sha256: Some("1".repeat(64)), size: Some(10) });
    world.write_catalog(&files);
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let line = run.error_line();
    assert!(line.contains("404") && line.contains("labels.txt") && line.contains(TINY_REPO), "{line}");
    assert!(!exists_at_all(&world.repo_dir(TINY_REPO).join("snapshots").join(TINY_COMMIT).join("labels.txt")));
}

#[test]
fn an_unreachable_endpoint_is_a_one_line_error_naming_it() {
    let world = World::new();
    // A port that was free a moment ago: nothing listens there, so the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = zoo_in(
        &["download", "test-model"],
        &endpoint,
        &world.cache(),
        Some(&world.catalog_path()),
        world.dir.path(),
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.describe());
    let line = run.error_line();
    assert!(line.contains(&endpoint) && line.contains("config.json") && line.contains(TINY_REPO), "{line}");
    assert!(!exists_at_all(&world.repo_dir(TINY_REPO).join("snapshots")), "{:#?}", tree(&world.cache()));
}

#[test]
fn a_wrong_checksum_fails_names_the_file_and_leaves_the_cache_clean() {
    let world = World::new();
    let weights = world.tiny_file("model.safetensors").clone();
    let mut files = catalog_files(&world.tiny);
    files[1].sha256 = Some(sha256_hex(b"something else"));
    world.write_catalog(&files);

    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let line = run.error_line();
    assert!(line.contains("checksum") && line.contains("model.safetensors"), "{line}");
    assert!(line.contains(&weights.sha256()), "the error should give the sha256 it got: {line}");

    let repo = world.repo_dir(TINY_REPO);
    let blobs = repo.join("blobs");
    for leftover in [blobs.join(weights.etag()), blobs.join(format!("{}.part", weights.etag()))] {
        assert!(!exists_at_all(&leftover), "{} remains\n{:#?}", leftover.display(), tree(&repo));
    }
    let pointer = repo.join("snapshots").join(TINY_COMMIT).join("model.safetensors");
    assert!(!exists_at_all(&pointer), "{} remains\n{:#?}", pointer.display(), tree(&repo));
    assert_eq!(list_entry(&world, "test-model", &[])["available"], "not downloaded");

    // With the right checksum the same cache downloads it again, whole.
    world.write_catalog(&catalog_files(&world.tiny));
    world.server.clear_requests();
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let gets = world.file_gets();
    assert_eq!(gets.len(), 1, "only the removed file is fetched again: {gets:#?}");
    assert!(gets[0].path.ends_with("/model.safetensors") && gets[0].range_start() == Some(0), "{gets:#?}");
    for served in &world.tiny {
        assert_cached_like_the_hub(&world, served);
    }
}

#[test]
fn a_connection_dropped_mid_file_fails_cleanly_and_the_rerun_resumes() {
    let world = World::new();
    let weights = world.tiny_file("model.safetensors").clone();
    let cut = 1_000_000;
    world.server.add_fault(Fault {
        repo: TINY_REPO.into(),
        file: "model.safetensors".into(),
        after_bytes: cut,
        times: 1,
        with_content_length: true,
    });

    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let line = run.error_line();
    assert!(line.contains("model.safetensors") && line.contains(TINY_REPO), "{line}");
    assert!(line.contains("resume"), "the error should say the next run resumes: {line}");

    let repo = world.repo_dir(TINY_REPO);
    let blobs = repo.join("blobs");
    let pointer = repo.join("snapshots").join(TINY_COMMIT).join("model.safetensors");
    assert!(!exists_at_all(&pointer), "{} exists after a failed download\n{:#?}", pointer.display(), tree(&repo));
    assert!(!exists_at_all(&blobs.join(weights.etag())), "the blob exists under its final name\n{:#?}", tree(&repo));
    // Only what is allowed is left of it: the partial download and hf-hub's lock file.
    let config_etag = world.tiny_file("config.json").etag();
    for name in names_in(&blobs) {
        let allowed = name == config_etag || name.ends_with(".part") || name.ends_with(".lock");
        assert!(allowed, "unexpected file in blobs/: {name}\n{:#?}", tree(&repo));
    }
    let part = blobs.join(format!("{}.part", weights.etag()));
    let kept = std::fs::metadata(&part).unwrap_or_else(|e| panic!("{}: {e}\n{:#?}", part.display(), tree(&repo))).len();
    assert!(kept > 0 && kept <= cut as u64, "the .part holds {kept} bytes; the server sent {cut}");
    assert!(std::fs::read(&part).unwrap() == weights.bytes[..kept as usize], "the .part is not a prefix of the file");
    assert_eq!(list_entry(&world, "test-model", &[])["available"], "not downloaded");

    world.server.clear_requests();
    let rerun = world.zoo(&["download", "test-model", "--json"]);
    assert_eq!(rerun.code, 0, "{}", rerun.describe());
    let gets = world.file_gets();
    assert_eq!(gets.len(), 1, "only the interrupted file is fetched: {gets:#?}");
    assert!(gets[0].path.ends_with("/model.safetensors"), "{gets:#?}");
    assert_eq!(gets[0].range_start(), Some(kept), "the rerun should resume where the .part ends: {gets:#?}");
    assert_cached_like_the_hub(&world, &weights);
    assert!(!exists_at_all(&part), "the .part should be renamed into place");
}

#[test]
fn a_complete_part_file_left_by_a_killed_run_does_not_block_the_download() {
    // A run killed between the last byte and hf-hub's rename leaves a `.part` as long as the file;
    // hf-hub then asks for the bytes after its end, and the server answers 416.
    let world = World::new();
    let weights = world.tiny_file("model.safetensors").clone();
    let blobs = world.repo_dir(TINY_REPO).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.part", weights.etag())), weights.bytes.as_slice()).unwrap();

    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_cached_like_the_hub(&world, &weights);
    let starts: Vec<Option<u64>> =
        world.file_gets().iter().filter(|r| r.path.ends_with("/model.safetensors")).map(|r| r.range_start()).collect();
    assert_eq!(starts, [Some(weights.bytes.len() as u64), Some(0)], "one refused resume, then a fresh start");
}

#[test]
fn a_body_cut_short_without_content_length_is_caught_by_the_catalogue_size_or_checksum() {
    // hf-hub 0.5 does not compare the bytes it received with the size its metadata probe read: a
    // close-delimited body that ends early looks complete, and it renames the .part into place.
    // zoo's catalogue check must catch it, whichever of size and sha256 the entry gives.
    for (what, sha256, size, expect) in [
        ("size only", false, true, vec!["1000000", "3000000"]),
        ("sha256 only", true, false, vec!["checksum"]),
        ("both", true, true, vec!["1000000", "3000000"]),
    ] {
        let world = World::new();
        let weights = world.tiny_file("model.safetensors").clone();
        let mut files = catalog_files(&world.tiny);
        files[1].sha256 = sha256.then(|| weights.sha256());
        files[1].size = size.then_some(WEIGHTS_SIZE);
        world.write_catalog(&files);
        world.server.add_fault(Fault {
            repo: TINY_REPO.into(),
            file: "model.safetensors".into(),
            after_bytes: 1_000_000,
            times: 1,
            with_content_length: false,
        });
        let run = world.zoo(&["download", "test-model"]);
        assert_eq!(run.code, 1, "{what}: a truncated file must not pass as downloaded\n{}", run.describe());
        let line = run.error_line();
        assert!(line.contains("model.safetensors") && expect.iter().all(|e| line.contains(e)), "{what}: {line}");
        let repo = world.repo_dir(TINY_REPO);
        assert!(
            !exists_at_all(&repo.join("snapshots").join(TINY_COMMIT).join("model.safetensors")),
            "{what}: {:#?}",
            tree(&repo)
        );
        assert!(!exists_at_all(&repo.join("blobs").join(weights.etag())), "{what}: {:#?}", tree(&repo));
        assert_eq!(list_entry(&world, "test-model", &[])["available"], "not downloaded", "{what}");

        // The rerun fetches it whole, and once whole, later runs leave it alone.
        let rerun = world.zoo(&["download", "test-model"]);
        assert_eq!(rerun.code, 0, "{what}: {}", rerun.describe());
        assert_cached_like_the_hub(&world, &weights);
        world.server.clear_requests();
        let again = world.zoo(&["download", "test-model"]);
        assert_eq!(again.code, 0, "{what}: {}", again.describe());
        assert_eq!(world.server.requests(), vec![], "{what}");
    }
}

#[test]
fn zoo_download_repairs_a_damaged_or_incomplete_cache() {
    let world = World::new();
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let repo = world.repo_dir(TINY_REPO);
    let weights = world.tiny_file("model.safetensors").clone();
    let blob = repo.join("blobs").join(weights.etag());
    let mut damaged = weights.bytes.to_vec();

    // Same size, one byte changed: only the checksum can tell.
    damaged[WEIGHTS_SIZE / 2] ^= 0xff;
    std::fs::write(&blob, &damaged).unwrap();
    world.server.clear_requests();
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(world.file_gets().len(), 1, "{:#?}", world.server.requests());
    assert_cached_like_the_hub(&world, &weights);

    // Cut short: the size tells.
    std::fs::write(&blob, &weights.bytes[..1000]).unwrap();
    world.server.clear_requests();
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(world.file_gets().len(), 1, "{:#?}", world.server.requests());
    assert_cached_like_the_hub(&world, &weights);

    // The blob deleted under its snapshot pointer (a dangling link): fetched again.
    std::fs::remove_file(&blob).unwrap();
    assert_eq!(list_entry(&world, "test-model", &[])["available"], "not downloaded");
    world.server.clear_requests();
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(world.file_gets().len(), 1, "{:#?}", world.server.requests());
    assert_cached_like_the_hub(&world, &weights);
}

#[test]
fn offline_without_the_files_fails_naming_the_model_and_the_fix_without_any_request() {
    let world = World::new();
    for (args, env) in [
        (&["download", "test-model", "--offline"][..], &[][..]),
        (&["download", "test-model"][..], &[("HF_HUB_OFFLINE", "1")][..]),
        (&["--offline", "download", "test-model", "--json"][..], &[][..]),
    ] {
        let run = world.zoo_env(args, env);
        assert_eq!(run.code, 1, "{args:?} {env:?}\n{}", run.describe());
        let message = if args.contains(&"--json") {
            let lines = run.json_lines();
            assert_eq!(lines[0]["ok"], false, "{}", run.describe());
            lines[0]["error"].as_str().unwrap().to_string()
        } else {
            run.error_line().to_string()
        };
        assert!(message.contains("'test-model'") && message.contains("`zoo download test-model`"), "{message}");
        assert!(message.contains("offline") || message.contains("HF_HUB_OFFLINE"), "{message}");
    }
    // An uncatalogued repo offline: nothing to list the files from.
    let run = world.zoo_env(&["download", OTHER_REPO], &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(run.code, 1, "{}", run.describe());
    let line = run.error_line();
    assert!(line.contains(OTHER_REPO) && line.contains(&format!("`zoo download {OTHER_REPO}`")), "{line}");

    assert_eq!(world.server.requests(), vec![], "offline must not touch the server");
    assert!(tree(&world.cache()).iter().all(|p| !p.contains("snapshots")), "{:#?}", tree(&world.cache()));
}

#[test]
fn offline_with_the_files_cached_succeeds_without_any_request() {
    let world = World::new();
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    world.server.clear_requests();

    let run = world.zoo(&["download", "test-model", "--offline", "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let lines = run.json_lines();
    assert_eq!(lines[0]["ok"], true, "{}", run.describe());
    assert_eq!(lines[0]["files"].as_array().unwrap().len(), 2, "{}", run.describe());

    let run = world.zoo_env(&["download", "test-model"], &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(list_entry(&world, "test-model", &[("HF_HUB_OFFLINE", "1")])["available"], "cached");
    assert_eq!(world.server.requests(), vec![], "offline must not touch the server");
}

#[test]
fn an_uncatalogued_repo_downloads_the_files_the_info_api_lists_less_what_zoo_never_reads() {
    let world = World::new();
    let run = world.zoo(&["download", OTHER_REPO, "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let lines = run.json_lines();
    assert_eq!(lines[0]["model"], OTHER_REPO);
    let mut files: Vec<String> = lines[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().rsplit(&format!("{OTHER_COMMIT}/")).next().unwrap().to_string())
        .collect();
    files.sort();
    assert_eq!(files, ["config.json", "model.safetensors", "tokenizer.json"], "{}", run.describe());

    let requests = world.server.requests();
    assert!(
        requests.iter().any(|r| r.path == format!("/api/models/{OTHER_REPO}/revision/main")),
        "the file list comes from the info API: {requests:#?}"
    );
    for skipped in [".gitattributes", "README.md", "pytorch_model.bin", "onnx/model.onnx"] {
        assert!(
            requests.iter().all(|r| !r.path.ends_with(&format!("/{skipped}"))),
            "{skipped} was requested: {requests:#?}"
        );
    }
    let repo = world.repo_dir(OTHER_REPO);
    assert_eq!(std::fs::read_to_string(repo.join("refs").join("main")).unwrap().trim(), OTHER_COMMIT);
    let snapshot = repo.join("snapshots").join(OTHER_COMMIT);
    assert_eq!(names_in(&snapshot), ["config.json", "model.safetensors", "tokenizer.json"], "{:#?}", tree(&repo));
    for served in other_files().iter().filter(|f| files.contains(&f.path)) {
        assert_eq!(
            sha256_hex(&std::fs::read(snapshot.join(&served.path)).unwrap()),
            served.sha256(),
            "{}",
            served.path
        );
        assert!(repo.join("blobs").join(served.etag()).is_file(), "{}: blob named after its etag", served.path);
    }

    // refs/main now names the commit, so the same files are there offline, without a request.
    world.server.clear_requests();
    let run = world.zoo(&["download", OTHER_REPO, "--offline", "--json"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.json_lines()[0]["files"].as_array().unwrap().len(), 3, "{}", run.describe());
    let run = world.zoo(&["download", &format!("{OTHER_REPO}@{OTHER_COMMIT}"), "--offline"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(world.server.requests(), vec![]);
}

/// `HF_HUB_CACHE` of the shared test-asset cache (real Hub repos, byte-identical), or None with a
/// loud SKIPPED line when `../shared/bin/test-assets` is not there (a failure under CI=true).
fn shared_hub_cache(test: &str) -> Option<PathBuf> {
    zoo_runtime::test_support::shared_hub_cache(test)
}

#[test]
fn offline_against_a_real_hub_cache_finds_the_snapshot_by_branch_and_by_commit() {
    let Some(cache) = shared_hub_cache("offline_against_a_real_hub_cache") else { return };
    // A server that holds nothing: offline must not call it, and if it did, nothing leaves 127.0.0.1.
    let server = HubServer::start();
    let home = tempfile::tempdir().expect("tempdir");
    let minilm = "sentence-transformers/all-MiniLM-L6-v2";
    let commit = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41";
    for reference in [minilm.to_string(), format!("{minilm}@{commit}")] {
        let run =
            zoo_in(&["download", &reference, "--offline", "--json"], &server.url(), &cache, None, home.path(), &[]);
        assert_eq!(run.code, 0, "{reference}\n{}", run.describe());
        let lines = run.json_lines();
        assert_eq!(lines.len(), 1, "{}", run.describe());
        assert_eq!(lines[0]["ok"], true, "{}", run.describe());
        let files: Vec<&str> = lines[0]["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        let weights = format!("snapshots/{commit}/model.safetensors");
        assert!(files.iter().any(|f| f.ends_with(&weights)), "{reference}: no model.safetensors in {files:#?}");
        if reference == minilm {
            // The repo is catalogued (all-minilm-l6-v2): its name means the pinned files only.
            assert_eq!(files.len(), 3, "{reference}: the catalogue's three files: {files:#?}");
        } else {
            // With an explicit revision it is a plain Hub reference: the repo's own file list.
            assert!(
                files.iter().any(|f| f.ends_with("1_Pooling/config.json")),
                "{reference}: nested files count: {files:#?}"
            );
        }
    }
    // CTranslate2's model.bin is what faster-whisper runs, so zoo keeps it.
    let run = zoo_in(
        &["download", "Systran/faster-whisper-tiny.en", "--json"],
        &server.url(),
        &cache,
        None,
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(run.code, 0, "{}", run.describe());
    let files = run.json_lines()[0]["files"].clone();
    assert!(
        files
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("0d3d19a32d3338f10357c0889762bd8d64bbdeba/model.bin")),
        "{files:#?}"
    );
    assert_eq!(server.requests(), vec![], "offline must not touch the server");
}

/// Every pointer in the snapshot resolves to a blob with the served bytes; nothing else is left
/// but partial downloads and lock files (which the next run resumes or takes over).
fn assert_cache_valid(world: &World) {
    let repo = world.repo_dir(TINY_REPO);
    let snapshot = repo.join("snapshots").join(TINY_COMMIT);
    for name in names_in(&snapshot) {
        let served = world.tiny_file(&name);
        let bytes = std::fs::read(snapshot.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}\n{:#?}", tree(&repo)));
        assert!(bytes == *served.bytes, "{name} in the snapshot is not the served file\n{:#?}", tree(&repo));
    }
    for name in names_in(&repo.join("blobs")) {
        let complete = world.tiny.iter().any(|f| f.etag() == name);
        assert!(
            complete || name.ends_with(".part") || name.ends_with(".lock"),
            "stray blob {name}\n{:#?}",
            tree(&repo)
        );
        if complete {
            let served = world.tiny.iter().find(|f| f.etag() == name).unwrap();
            assert!(std::fs::read(repo.join("blobs").join(&name)).unwrap() == *served.bytes, "blob {name} is damaged");
        }
    }
}

#[test]
fn two_downloads_of_the_same_model_at_once_end_with_one_intact_copy() {
    let world = World::new();
    // ~0.5 s for the 3 MB file, so that the two runs overlap.
    world.server.set_throttle(64 * 1024, Duration::from_millis(10));
    let (a, b) = std::thread::scope(|s| {
        let first = s.spawn(|| world.zoo(&["download", "test-model"]));
        std::thread::sleep(Duration::from_millis(100));
        let second = s.spawn(|| world.zoo(&["download", "test-model"]));
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_eq!(a.code, 0, "first: {}", a.describe());
    assert_eq!(b.code, 0, "second: {}", b.describe());
    for served in &world.tiny {
        assert_cached_like_the_hub(&world, served);
    }
    assert_cache_valid(&world);
}

#[test]
fn downloads_killed_at_any_point_leave_a_valid_cache_and_the_next_run_completes() {
    let world = World::new();
    world.server.set_throttle(64 * 1024, Duration::from_millis(10));
    // Kill points from start-up to past the transfer's end (~0.5 s); each run resumes the last.
    let mut cut_mid_transfer = 0;
    for delay_ms in [5u64, 120, 20, 200, 60, 150, 300, 600] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zoo"));
        cmd.args(["download", "test-model"])
            .env_clear()
            .env("HOME", world.dir.path())
            .env("HF_ENDPOINT", world.server.url())
            .env("HF_HUB_CACHE", world.cache())
            .env("ZOO_CATALOG", world.catalog_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert_cache_valid(&world);
        let blobs = world.repo_dir(TINY_REPO).join("blobs");
        cut_mid_transfer += usize::from(names_in(&blobs).iter().any(|n| n.ends_with(".part")));
        // What a killed run left must never pass for the model being there.
        if list_entry(&world, "test-model", &[])["available"] == "cached" {
            for served in &world.tiny {
                assert_cached_like_the_hub(&world, served);
            }
        }
    }
    assert!(cut_mid_transfer >= 2, "only {cut_mid_transfer} kills landed inside a transfer: the test proves little");
    let run = world.zoo(&["download", "test-model"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    for served in &world.tiny {
        assert_cached_like_the_hub(&world, served);
    }
}

#[test]
fn a_full_disk_is_a_one_line_error_and_the_cache_stays_valid_for_the_next_run() {
    let world = World::new();
    let cache = world.cache();
    let kept = world.dir.path().join("written-on-the-small-disk");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&kept).unwrap();
    // 1 MB of disk for a 3 MB weights file: the config fits, the weights do not.
    let zoo = Path::new(env!("CARGO_BIN_EXE_zoo"));
    let Some(mut cmd) = zoo_bin::on_small_disk(&cache, "1m", &kept, zoo, &["download", "test-model"]) else { return };
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", world.dir.path())
        .env("HF_ENDPOINT", world.server.url())
        .env("HF_HUB_CACHE", &cache)
        .env("ZOO_CATALOG", world.catalog_path());
    let run = zoo_bin::run_bounded(cmd, None, CHILD_TIMEOUT).finished("zoo download on a full disk");
    assert_eq!(run.code, 1, "{}", run.describe());
    let line = run.error_line();
    assert!(line.contains("model.safetensors") && line.contains(TINY_REPO), "names the file: {line}");
    assert!(line.contains("No space left on device"), "says why: {line}");
    assert!(line.contains(&format!("free space where the cache is ({}", cache.display())), "and what to do: {line}");

    // What the full disk held becomes the cache: valid, not taken for the model, and completed
    // by the next run.
    std::fs::remove_dir(&cache).unwrap();
    std::fs::rename(&kept, &cache).unwrap();
    assert_cache_valid(&world);
    assert_eq!(list_entry(&world, "test-model", &[])["available"], "not downloaded");
    let rerun = world.zoo(&["download", "test-model"]);
    assert_eq!(rerun.code, 0, "{}", rerun.describe());
    for served in &world.tiny {
        assert_cached_like_the_hub(&world, served);
    }
}
