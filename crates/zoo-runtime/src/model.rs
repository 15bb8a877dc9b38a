//! Model references and their files.
//!
//! A reference is a catalogue id (`efficientnet-lite0`), a Hub id with an optional revision
//! (`google/vit-base-patch16-224@main`), or a local folder (`./my-model`). Resolving one gives a
//! [`Model`], through which a task's loader asks for files by name; where they come from (the
//! binary, a folder, the Hub cache, a download) is decided here, once for all tasks.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::catalog::{Catalog, CatalogEntry, Source};
use crate::error::{candle_reason, Error, Result};
use crate::hub::{HubRepo, HubSettings};

/// A model the user named, before any file is read.
#[derive(Debug, Clone)]
pub enum ModelRef {
    Catalog(&'static CatalogEntry),
    Hub { repo: String, revision: String },
    Local(PathBuf),
}

impl ModelRef {
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_in(text, Catalog::bundled())
    }

    pub fn parse_in(text: &str, catalog: &'static Catalog) -> Result<Self> {
        let text = text.trim();
        let looks_like_path = text.starts_with('.') || text.starts_with('/') || text.starts_with('~');
        let path = Path::new(text);
        if looks_like_path || path.is_dir() || path.is_file() {
            // A single weights file is a model too, for tasks whose networks need nothing beside it
            // (a style-transfer checkpoint); others ask it for files it does not have and say so.
            return if path.exists() {
                Ok(ModelRef::Local(path.to_path_buf()))
            } else {
                Err(Error::UnknownModel {
                    reference: text.to_string(),
                    hint: "no such folder or file (a local model is a folder holding its config and weights, or a weights file)".into(),
                })
            };
        }
        if let Some(entry) = catalog.get(text) {
            return Ok(ModelRef::Catalog(entry));
        }
        let (repo, revision) = match text.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (text, None),
        };
        if is_hub_repo_id(repo) && revision.is_none_or(|r| !r.is_empty()) {
            // A catalogued repo keeps its pinned revision and checksums.
            if let (Some(entry), None) = (catalog.by_repo(repo), revision) {
                return Ok(ModelRef::Catalog(entry));
            }
            return Ok(ModelRef::Hub { repo: repo.to_string(), revision: revision.unwrap_or("main").to_string() });
        }
        let ids: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
        Err(Error::UnknownModel {
            reference: text.to_string(),
            hint: format!(
                "not in the catalogue ({}), not a Hub id (owner/name[@revision]) and not a folder; `zoo list` shows the models",
                ids.join(", ")
            ),
        })
    }

    /// The name outputs report.
    pub fn id(&self) -> String {
        match self {
            ModelRef::Catalog(entry) => entry.id.clone(),
            ModelRef::Hub { repo, revision } if revision == "main" => repo.clone(),
            ModelRef::Hub { repo, revision } => format!("{repo}@{revision}"),
            ModelRef::Local(path) => path.display().to_string(),
        }
    }
}

fn is_hub_repo_id(text: &str) -> bool {
    let mut parts = text.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let ok =
        |s: &str| !s.is_empty() && s.len() <= 96 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok(owner) && ok(name) && !name.starts_with('.')
}

/// A file of a model: embedded bytes or a path on disk (in the cache or a local folder).
#[derive(Debug, Clone)]
pub enum ModelFile {
    Bundled { name: String, bytes: &'static [u8] },
    Disk(PathBuf),
}

impl ModelFile {
    pub fn display(&self) -> String {
        match self {
            ModelFile::Bundled { name, .. } => format!("weights/{name} (bundled)"),
            ModelFile::Disk(path) => path.display().to_string(),
        }
    }

    pub fn bytes(&self) -> Result<Cow<'static, [u8]>> {
        match self {
            ModelFile::Bundled { bytes, .. } => Ok(Cow::Borrowed(bytes)),
            ModelFile::Disk(path) => std::fs::read(path).map(Cow::Owned).map_err(|e| Error::io(path, e)),
        }
    }

    pub fn text(&self) -> Result<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.into_owned()).map_err(|_| Error::model(self.display(), "not UTF-8 text"))
    }
}

enum Store {
    Bundled { dir: String },
    Local { dir: PathBuf },
    Hub { repo: String, revision: String },
}

/// A resolved model: its id, its catalogue entry if any, and where its files are.
pub struct Model {
    pub id: String,
    pub entry: Option<&'static CatalogEntry>,
    store: Store,
    hub: HubSettings,
}

impl Model {
    pub fn resolve(reference: &ModelRef, hub: &HubSettings) -> Self {
        let (entry, store) = match reference {
            ModelRef::Catalog(entry) => {
                let store = match &entry.source {
                    Source::Bundled { path } => Store::Bundled { dir: path.clone() },
                    Source::Hub { repo, revision, .. } => Store::Hub { repo: repo.clone(), revision: revision.clone() },
                };
                (Some(*entry), store)
            }
            ModelRef::Hub { repo, revision } => (None, Store::Hub { repo: repo.clone(), revision: revision.clone() }),
            ModelRef::Local(dir) => (None, Store::Local { dir: dir.clone() }),
        };
        Model { id: reference.id(), entry, store, hub: hub.clone() }
    }

    /// The folder or file a local model was named by; `None` for catalogued and Hub models.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.store {
            Store::Local { dir } => Some(dir),
            _ => None,
        }
    }

    /// The architecture the catalogue records, when the model is catalogued.
    pub fn architecture(&self) -> Option<&str> {
        self.entry.map(|e| e.architecture.as_str())
    }

    fn hub_repo<'a>(&'a self, repo: &str, revision: &str) -> HubRepo<'a> {
        self.hub.repo(repo, revision)
    }

    /// A file the model needs; fetched from the Hub when it is not cached and zoo may go online.
    pub fn file(&self, name: &str) -> Result<ModelFile> {
        self.optional_file(name)?.ok_or_else(|| match &self.store {
            Store::Local { dir } => Error::model(&self.id, format!("{} is missing", dir.join(name).display())),
            _ => Error::model(&self.id, format!("the model has no file {name}")),
        })
    }

    /// A file the model may or may not have (e.g. `preprocessor_config.json`).
    pub fn optional_file(&self, name: &str) -> Result<Option<ModelFile>> {
        match &self.store {
            Store::Bundled { dir } => {
                let full = format!("{dir}/{name}");
                Ok(crate::bundled::file(&full).map(|bytes| ModelFile::Bundled { name: full, bytes }))
            }
            Store::Local { dir } if dir.is_file() => Err(Error::model(
                &self.id,
                format!("is a single file; this task needs a folder holding {name} (and the model's other files)"),
            )),
            Store::Local { dir } => {
                let path = dir.join(name);
                Ok(path.is_file().then_some(ModelFile::Disk(path)))
            }
            Store::Hub { repo, revision } => {
                let expected = self.entry.and_then(|e| e.file(name));
                if self.entry.is_some() && expected.is_none() {
                    return Ok(None);
                }
                let hub = self.hub_repo(repo, revision);
                match hub.fetch(&self.id, name, expected) {
                    Ok(path) => Ok(Some(ModelFile::Disk(path))),
                    // Without a catalogue entry, the only way to learn a file is absent is to ask.
                    Err(Error::Download { reason, .. }) if expected.is_none() && reason.contains("404") => Ok(None),
                    Err(Error::NotCached { .. }) if expected.is_none() && hub.cached("config.json").is_some() => {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Parses a JSON file of the model.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let file = self.file(name)?;
        serde_json::from_slice(&file.bytes()?)
            .map_err(|e| Error::model(&self.id, format!("{}: invalid JSON: {e}", file.display())))
    }

    pub fn optional_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let Some(file) = self.optional_file(name)? else { return Ok(None) };
        let value = serde_json::from_slice(&file.bytes()?)
            .map_err(|e| Error::model(&self.id, format!("{}: invalid JSON: {e}", file.display())))?;
        Ok(Some(value))
    }

    /// A VarBuilder over a safetensors file, memory-mapped from disk or read in place from the
    /// binary, or over a zip-format PyTorch file (`pytorch_model.bin`), read whole; tensors are
    /// converted to `dtype` as they are fetched.
    pub fn var_builder(&self, name: &str, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        let file = self.file(name)?;
        let bad = |e: candle_core::Error| Error::model(&self.id, format!("{}: {}", file.display(), candle_reason(&e)));
        match &file {
            ModelFile::Bundled { bytes, .. } => VarBuilder::from_slice_safetensors(bytes, dtype, device).map_err(bad),
            ModelFile::Disk(path) if !name.ends_with(".safetensors") => {
                Ok(VarBuilder::from_tensors(read_weights(path, device, &self.id)?, dtype, device))
            }
            // SAFETY: the file is mapped read-only; zoo never writes to cached or user weights while
            // they are mapped (a concurrent writer outside zoo would be the user's error, as with any mmap).
            ModelFile::Disk(path) => {
                unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }.map_err(bad)
            }
        }
    }

    /// A Transformers checkpoint's weights: `model.safetensors`, else `pytorch_model.bin`.
    pub fn transformers_weights(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        for name in ["model.safetensors", "pytorch_model.bin"] {
            if self.optional_file(name)?.is_some() {
                return self.var_builder(name, dtype, device);
            }
        }
        Err(Error::model(&self.id, "no weights: expected model.safetensors or pytorch_model.bin"))
    }

    /// The files `zoo download` fetches: the catalogue's list, or for an uncatalogued Hub repo the
    /// Hub's file list less what no zoo task reads (other frameworks' weights, docs, images).
    pub fn download_list(&self) -> Result<Vec<String>> {
        if let Some(entry) = self.entry {
            return Ok(entry.files.iter().map(|f| f.path.clone()).collect());
        }
        match &self.store {
            Store::Hub { repo, revision } => {
                let all = self.hub_repo(repo, revision).list_files()?;
                let has_safetensors = all.iter().any(|f| f.ends_with(".safetensors"));
                Ok(all.into_iter().filter(|f| wanted_by_zoo(f, has_safetensors)).collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The catalogue models this one runs on, resolved with the same settings.
    pub fn requirements(&self) -> Vec<Model> {
        let catalog = Catalog::bundled();
        self.entry
            .map(|e| {
                e.requires
                    .iter()
                    .filter_map(|id| catalog.get(id))
                    .map(|r| Model::resolve(&ModelRef::Catalog(r), &self.hub))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fetches every file of the model and of the models it requires (a no-op for bundled and
    /// local files), re-hashing cached catalogue files so that `zoo download` also repairs a
    /// damaged cache.
    pub fn download(&self) -> Result<Vec<ModelFile>> {
        let names = self.download_list()?;
        let mut files = Vec::with_capacity(names.len());
        for required in self.requirements() {
            files.extend(required.download()?);
        }
        for name in &names {
            let file = self.file(name)?;
            if let (Store::Hub { repo, revision }, ModelFile::Disk(path)) = (&self.store, &file) {
                if let Some(expected) = self.entry.and_then(|e| e.file(name)) {
                    let hub = self.hub_repo(repo, revision);
                    if hub.verify(name, path, expected).is_err() {
                        // The bad copy is gone now; fetch it again and check once more.
                        let fresh = hub.fetch(&self.id, name, Some(expected))?;
                        files.push(ModelFile::Disk(fresh));
                        continue;
                    }
                }
            }
            files.push(file);
        }
        Ok(files)
    }

    /// Whether every catalogued file, and those of the models it requires, is present without a
    /// download.
    pub fn is_available_offline(&self) -> bool {
        if !self.requirements().iter().all(Model::is_available_offline) {
            return false;
        }
        match &self.store {
            Store::Bundled { .. } | Store::Local { .. } => true,
            Store::Hub { repo, revision } => match self.entry {
                Some(entry) => entry.files.iter().all(|f| self.hub_repo(repo, revision).cached(&f.path).is_some()),
                None => self.hub_repo(repo, revision).cached("config.json").is_some(),
            },
        }
    }
}

/// The sizes a transformer's config.json gives, checked before any layer is built: a zero divides
/// by zero in the layer builders, and an absurd size would be believed until a tensor contradicts
/// it. `ranges` adds the architecture's own fields (vocabulary, image and patch sizes, ...).
pub struct TransformerSizes {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
}

impl TransformerSizes {
    pub fn check(&self, model: &str, ranges: &[(&str, usize, std::ops::RangeInclusive<usize>)]) -> Result<()> {
        let common = [
            ("hidden_size", self.hidden_size, 1..=1 << 16),
            ("num_attention_heads", self.num_attention_heads, 1..=1024),
            ("num_hidden_layers", self.num_hidden_layers, 1..=1024),
            ("intermediate_size", self.intermediate_size, 1..=1 << 18),
        ];
        for (name, value, range) in common.iter().chain(ranges) {
            if !range.contains(value) {
                return Err(Error::model(
                    model,
                    format!("config.json: {name} is {value}, outside {}..={}", range.start(), range.end()),
                ));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::model(
                model,
                format!(
                    "config.json: hidden_size {} does not split into {} attention heads",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        Ok(())
    }
}

/// A safetensors file or a zip-format PyTorch pickle; the legacy PyTorch format is refused with
/// the way to convert it, since reading it means running arbitrary pickle code paths zoo avoids.
pub fn read_weights(path: &Path, device: &Device, id: &str) -> Result<HashMap<String, Tensor>> {
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| Error::io(path, e))?;
    let head = &head[..read];
    let bad = |reason: String| Error::model(id, format!("{}: {reason}", path.display()));
    if head.starts_with(b"PK\x03\x04") {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read only while the checkpoint is parsed, here; a file changed under
        // it at that moment gives wrong tensors or a parse error, as a read racing a write would.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        return pth_tensors(&bytes, device).map_err(|e| Error::model(id, format!("{}: {e}", path.display())));
    }
    if head.first() == Some(&0x80) {
        return Err(bad(
            "a PyTorch file in the legacy (pre-1.6, non-zip) format, which zoo does not read; convert it in Python: \
             `torch.save(torch.load(f), 'model.pth')` (PyTorch 1.6+ writes zip) or \
             `safetensors.torch.save_file(torch.load(f), 'model.safetensors')`"
                .into(),
        ));
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| bad(format!("neither safetensors nor a zip-format PyTorch checkpoint ({})", candle_reason(&e))))
}

/// The state dict of a zip-format PyTorch checkpoint held in memory (a bundled one, or a file's
/// bytes); the reason is one line for an error naming the file.
pub fn pth_tensors(bytes: &[u8], device: &Device) -> std::result::Result<HashMap<String, Tensor>, String> {
    let tensors = crate::pth::read(bytes, device)
        .map_err(|e| format!("not a PyTorch zip checkpoint zoo can read: {}", candle_reason(&e)))?;
    if tensors.is_empty() {
        return Err("a zip file with no tensors (zoo reads a state_dict saved with torch.save)".into());
    }
    Ok(tensors)
}

fn wanted_by_zoo(file: &str, has_safetensors: bool) -> bool {
    let ext = file.rsplit('.').next().unwrap_or("");
    let skip_ext = ["h5", "msgpack", "onnx", "ot", "tflite", "md", "png", "jpg", "jpeg", "gitattributes", "ckpt", "pb"];
    if skip_ext.contains(&ext) || file.starts_with('.') || file.contains("onnx/") {
        return false;
    }
    // PyTorch pickles only when there is nothing safer; model.bin is CTranslate2's format, kept.
    if has_safetensors && file.ends_with(".bin") && file != "model.bin" {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_reference() {
        let catalog = Catalog::bundled();
        let default = &catalog.models[0];
        assert!(matches!(ModelRef::parse(&default.id).unwrap(), ModelRef::Catalog(e) if e.id == default.id));
        match ModelRef::parse("google/vit-base-patch16-224@abc123").unwrap() {
            ModelRef::Hub { repo, revision } => {
                assert_eq!(repo, "google/vit-base-patch16-224");
                assert_eq!(revision, "abc123");
            }
            other => panic!("{other:?}"),
        }
        match ModelRef::parse("owner/name").unwrap() {
            ModelRef::Hub { revision, .. } => assert_eq!(revision, "main"),
            other => panic!("{other:?}"),
        }
        let dir = std::env::temp_dir();
        assert!(matches!(ModelRef::parse(dir.to_str().unwrap()).unwrap(), ModelRef::Local(_)));
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(ModelRef::parse(file.path().to_str().unwrap()).unwrap(), ModelRef::Local(_)));
        for bad in ["no-such-model", "a/b/c", "./no/such/folder", "owner/name@", "/nonexistent-zoo-dir"] {
            let err = ModelRef::parse(bad).unwrap_err();
            assert!(err.is_usage(), "{bad}: {err}");
        }
    }

    #[test]
    fn download_filter_keeps_what_zoo_reads() {
        assert!(wanted_by_zoo("config.json", true));
        assert!(wanted_by_zoo("model.safetensors", true));
        assert!(wanted_by_zoo("model.bin", true));
        assert!(!wanted_by_zoo("pytorch_model.bin", true));
        assert!(wanted_by_zoo("pytorch_model.bin", false));
        assert!(!wanted_by_zoo("onnx/model.onnx", false));
        assert!(!wanted_by_zoo("README.md", false));
    }
}
