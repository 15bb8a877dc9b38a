//! The Hugging Face cache and Hub downloads, through hf-hub's blocking client.
//!
//! The cache is the one Python's `huggingface_hub` uses (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), so models downloaded by either tool serve both. hf-hub writes each
//! file to `blobs/<etag>.part` (resumed by the next run after an interruption) and renames it into
//! place only when complete; zoo then checks the catalogue's sha256 and removes a file that fails.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use sha2::{Digest, Sha256};

use crate::catalog::CatalogFile;
use crate::error::{Error, Result};
use crate::progress;

/// Where the cache is, and whether zoo may go online.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub cache_dir: PathBuf,
    pub endpoint: String,
    pub offline: bool,
    pub token: Option<String>,
    /// Show download progress bars (only ever drawn on a terminal).
    pub progress: bool,
}

impl HubSettings {
    /// Settings from the environment Python's `huggingface_hub` reads: `HF_HUB_CACHE`, `HF_HOME`,
    /// `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_TOKEN`. `force_offline` is the `--offline` flag.
    pub fn from_env(force_offline: bool) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let cache_dir = if let Some(dir) = var("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = var("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else if let Some(xdg) = var("XDG_CACHE_HOME") {
            PathBuf::from(xdg).join("huggingface").join("hub")
        } else {
            let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface").join("hub")
        };
        let offline_env = var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        let token = var("HF_TOKEN").or_else(|| {
            let home = cache_dir.parent()?;
            std::fs::read_to_string(home.join("token")).ok().map(|t| t.trim().to_string())
        });
        HubSettings {
            cache_dir,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            offline: force_offline || offline_env,
            token,
            progress: true,
        }
    }

    pub fn repo(&self, repo: &str, revision: &str) -> HubRepo<'_> {
        HubRepo { settings: self, repo: repo.to_string(), revision: revision.to_string() }
    }
}

/// One Hub repository at one revision (a commit hash or a branch name).
pub struct HubRepo<'a> {
    settings: &'a HubSettings,
    pub repo: String,
    pub revision: String,
}

impl HubRepo<'_> {
    fn repo_dir(&self) -> PathBuf {
        self.settings.cache_dir.join(format!("models--{}", self.repo.replace('/', "--")))
    }

    /// The commit the revision names in the cache: itself when it is a commit hash, else what
    /// `refs/<branch>` records.
    fn cached_commit(&self) -> Option<String> {
        if is_commit_hash(&self.revision) {
            return Some(self.revision.clone());
        }
        let r = std::fs::read_to_string(self.repo_dir().join("refs").join(&self.revision)).ok()?;
        Some(r.trim().to_string())
    }

    /// The cached copy of `file`, if complete. A pointer whose blob is gone does not count.
    pub fn cached(&self, file: &str) -> Option<PathBuf> {
        let commit = self.cached_commit()?;
        let path = self.repo_dir().join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    /// The cached copy of `file`, downloading it first when it is missing and zoo may go online.
    /// `expected` (from the catalogue) is checked after a download: a wrong size or sha256 removes
    /// the file again and is an error.
    pub fn fetch(&self, model: &str, file: &str, expected: Option<&CatalogFile>) -> Result<PathBuf> {
        if let Some(path) = self.cached(file) {
            if let Some(size) = expected.and_then(|e| e.size) {
                let actual = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
                if actual != size {
                    // A file of the wrong size can only be a damaged cache entry: replace it.
                    self.remove_cached(file);
                    if self.cached(file).is_some() {
                        return Err(Error::Download {
                            file: self.describe(file),
                            reason: format!("the cached copy has {actual} bytes, not {size}, and could not be removed (is the cache read-only?)"),
                        });
                    }
                    return self.fetch(model, file, expected);
                }
            }
            return Ok(path);
        }
        if self.settings.offline {
            return Err(Error::NotCached { model: model.to_string(), file: file.to_string() });
        }
        let path = self.download(file)?;
        if let Some(expected) = expected {
            self.verify(file, &path, expected)?;
        }
        Ok(path)
    }

    /// Checks a cached file's size and sha256 against the catalogue; a mismatch removes it.
    pub fn verify(&self, file: &str, path: &Path, expected: &CatalogFile) -> Result<()> {
        // The size first: it costs nothing, and it is the only check an entry without a sha256
        // gets. hf-hub does not compare what it received with the size the Hub announced, so a
        // body cut short without a Content-Length is renamed into place as if complete.
        if let Some(size) = expected.size {
            let actual = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
            if actual != size {
                self.remove_cached(file);
                return Err(Error::Download {
                    file: self.describe(file),
                    reason: format!("got {actual} bytes where the catalogue says {size}; the file was removed from the cache, run the command again to fetch it anew"),
                });
            }
        }
        let Some(sha) = &expected.sha256 else { return Ok(()) };
        let actual = sha256_file(path)?;
        if !actual.eq_ignore_ascii_case(sha) {
            self.remove_cached(file);
            return Err(Error::Checksum { file: self.describe(file), expected: sha.clone(), actual });
        }
        Ok(())
    }

    /// Removes the snapshot pointer and the blob behind it, so the next fetch starts clean.
    pub fn remove_cached(&self, file: &str) {
        if let Some(pointer) = self.cached_commit().map(|c| self.repo_dir().join("snapshots").join(c).join(file)) {
            if let Ok(blob) = std::fs::canonicalize(&pointer) {
                if blob != pointer {
                    let _ = std::fs::remove_file(blob);
                }
            }
            let _ = std::fs::remove_file(pointer);
        }
    }

    fn client(&self) -> Result<Api> {
        ApiBuilder::new()
            .with_cache_dir(self.settings.cache_dir.clone())
            .with_endpoint(self.settings.endpoint.clone())
            .with_token(self.settings.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| self.download_error("", e))
    }

    fn api(&self) -> Result<hf_hub::api::sync::ApiRepo> {
        let repo = Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone());
        Ok(self.client()?.repo(repo))
    }

    fn download(&self, file: &str) -> Result<PathBuf> {
        let client = self.client()?;
        let api = self.api()?;
        // Another zoo (or Python) may be fetching the same blob: hf-hub gives up on its lock after a
        // few seconds, so wait for the other process and then take its finished file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30 * 60);
        let mut restarted = false;
        loop {
            let bar = progress::DownloadBar::new(self.settings.progress);
            match api.download_with_progress(file, bar) {
                Ok(path) => return Ok(path),
                Err(ApiError::LockAcquisition(_)) if std::time::Instant::now() < deadline => {
                    if let Some(path) = self.cached(file) {
                        return Ok(path);
                    }
                }
                // A `.part` already as long as the file (a run stopped between the last byte and
                // the rename) makes hf-hub ask for bytes past the end, forever: start it afresh once.
                Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::StatusCode(416)) && !restarted => {
                    restarted = true;
                    let etag =
                        client.metadata(&api.url(file)).map_err(|e| self.download_error(file, e))?.etag().to_string();
                    let _ = std::fs::remove_file(self.repo_dir().join("blobs").join(format!("{etag}.part")));
                }
                Err(e) => return Err(self.download_error(file, e)),
            }
        }
    }

    /// The files the repository holds at this revision (the Hub's model-info API).
    pub fn list_files(&self) -> Result<Vec<String>> {
        if self.settings.offline {
            let commit = self
                .cached_commit()
                .ok_or_else(|| Error::NotCached { model: self.repo.clone(), file: "(file list)".into() })?;
            let dir = self.repo_dir().join("snapshots").join(commit);
            let mut files = Vec::new();
            list_dir(&dir, &dir, &mut files);
            return Ok(files);
        }
        let info = self.api()?.info().map_err(|e| self.download_error("(file list)", e))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// "model.safetensors of owner/name@revision", as errors name a file.
    fn describe(&self, file: &str) -> String {
        if file.is_empty() {
            format!("{}@{}", self.repo, self.revision)
        } else {
            format!("{file} of {}@{}", self.repo, self.revision)
        }
    }

    fn download_error(&self, file: &str, e: ApiError) -> Error {
        let reason = match &e {
            ApiError::RequestError(inner) => match inner.as_ref() {
                ureq::Error::StatusCode(404) => {
                    "not found on the Hub (HTTP 404): check the repository name, the revision and the file name"
                        .to_string()
                }
                ureq::Error::StatusCode(401 | 403) => {
                    "access denied (HTTP 401/403): the repository is private or gated; set HF_TOKEN".to_string()
                }
                ureq::Error::StatusCode(code) => format!("the server answered HTTP {code}"),
                other => format!("{other} (endpoint {})", self.settings.endpoint),
            },
            ApiError::IoError(io) if io.kind() == std::io::ErrorKind::StorageFull => format!(
                "{io}: free space where the cache is ({}, or point HF_HUB_CACHE elsewhere); \
                 the partial download is kept and the next run resumes it",
                self.settings.cache_dir.display()
            ),
            ApiError::IoError(io) => format!("{io}; the partial download is kept and the next run resumes it"),
            other => other.to_string(),
        };
        Error::Download { file: self.describe(file), reason }
    }
}

fn list_dir(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_dir(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}
