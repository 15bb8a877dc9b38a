//! The model catalogue: every model zoo knows by name, where its files come from (a pinned Hub
//! commit or a folder bundled in `weights/`), their checksums, licence and measured quality.
//! It is one TOML file, `weights/catalog.toml`, embedded in the binary.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{Error, Result};

static CATALOG: OnceLock<Catalog> = OnceLock::new();

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(rename = "model", default)]
    pub models: Vec<CatalogEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Short name users type: `efficientnet-lite0`.
    pub id: String,
    /// The task's canonical name.
    pub task: String,
    /// What the task's loader builds, e.g. `tf_efficientnet_lite0` or `vit`.
    pub architecture: String,
    pub summary: String,
    /// The model a task uses when none is named.
    #[serde(default)]
    pub default: bool,
    pub licence: String,
    /// Measured quality, in words and figures, with where it was measured.
    pub quality: String,
    pub source: Source,
    /// The files the model needs, with checksums where known.
    #[serde(default)]
    pub files: Vec<CatalogFile>,
    /// Other catalogue models this one runs on (e.g. the encoder under a classifier head):
    /// downloaded with it, and needed for it to run offline.
    #[serde(default)]
    pub requires: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A folder under `weights/`, embedded in the binary.
    Bundled { path: String },
    /// A Hub repository at a revision.
    Hub {
        repo: String,
        revision: String,
        /// Why the revision is not a commit hash; set only when a commit could not be pinned.
        #[serde(default)]
        unpinned: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    pub path: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Self> {
        let catalog: Catalog = toml::from_str(text).map_err(|e| Error::Catalog(e.to_string()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// The catalogue in force: the one compiled into this build, plus the entries of the file
    /// `ZOO_CATALOG` names, if set (Hub models a user or a test pins with their own checksums).
    /// The CLI calls [`Catalog::init`] first so that a bad extra file is a clean error.
    pub fn bundled() -> &'static Catalog {
        CATALOG.get_or_init(|| {
            // The built-in catalogue is part of the source tree and checked by a unit test, so a
            // broken one is a build defect, not a user error.
            Catalog::parse(crate::bundled::catalog_text()).expect("weights/catalog.toml is valid")
        })
    }

    /// Loads the built-in catalogue and the extra file named by `ZOO_CATALOG`, once.
    pub fn init() -> Result<&'static Catalog> {
        if let Some(catalog) = CATALOG.get() {
            return Ok(catalog);
        }
        let mut catalog = Catalog::parse(crate::bundled::catalog_text())?;
        if let Some(path) = std::env::var_os("ZOO_CATALOG").filter(|p| !p.is_empty()) {
            let path = std::path::PathBuf::from(path);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let extra =
                Catalog::parse(&text).map_err(|e| Error::Catalog(format!("{} (ZOO_CATALOG): {e}", path.display())))?;
            if let Some(m) = extra.models.iter().find(|m| m.is_bundled()) {
                return Err(Error::Catalog(format!(
                    "{} (ZOO_CATALOG): '{}' cannot be bundled; only zoo's own catalogue bundles weights",
                    path.display(),
                    m.id
                )));
            }
            catalog.models.extend(extra.models);
            catalog.validate().map_err(|e| Error::Catalog(format!("{} (ZOO_CATALOG): {e}", path.display())))?;
        }
        Ok(CATALOG.get_or_init(|| catalog))
    }

    pub fn get(&self, id: &str) -> Option<&CatalogEntry> {
        self.models.iter().find(|m| m.id.eq_ignore_ascii_case(id))
    }

    /// A catalogue entry by the Hub repository it points to, so `owner/name` finds its checksums.
    pub fn by_repo(&self, repo: &str) -> Option<&CatalogEntry> {
        self.models.iter().find(|m| matches!(&m.source, Source::Hub { repo: r, .. } if r == repo))
    }

    pub fn for_task<'a>(&'a self, task: &'a str) -> impl Iterator<Item = &'a CatalogEntry> + 'a {
        self.models.iter().filter(move |m| m.task == task)
    }

    pub fn default_for(&self, task: &str) -> Option<&CatalogEntry> {
        self.models.iter().find(|m| m.task == task && m.default)
    }

    fn validate(&self) -> Result<()> {
        let mut ids = HashSet::new();
        let mut defaults = HashSet::new();
        for m in &self.models {
            for r in &m.requires {
                if self.get(r).is_none() {
                    return Err(Error::Catalog(format!(
                        "model '{}' requires '{r}', which is not in the catalogue",
                        m.id
                    )));
                }
            }
        }
        for m in &self.models {
            let bad = |why: String| Err(Error::Catalog(format!("model '{}': {why}", m.id)));
            if !ids.insert(m.id.to_ascii_lowercase()) {
                return bad("listed twice".into());
            }
            if m.default && !defaults.insert(m.task.clone()) {
                return bad(format!("a second default for task '{}'", m.task));
            }
            if m.files.is_empty() {
                return bad("no files listed".into());
            }
            for f in &m.files {
                if let Some(sha) = &f.sha256 {
                    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return bad(format!("{}: sha256 is not 64 hex digits", f.path));
                    }
                }
            }
            if let Source::Hub { revision, unpinned, .. } = &m.source {
                let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
                if !is_commit && unpinned.is_none() {
                    return bad(format!("revision '{revision}' is not a commit hash (say why in `unpinned`)"));
                }
            }
        }
        Ok(())
    }
}

impl CatalogEntry {
    pub fn file(&self, path: &str) -> Option<&CatalogFile> {
        self.files.iter().find(|f| f.path == path)
    }

    pub fn is_bundled(&self) -> bool {
        matches!(self.source, Source::Bundled { .. })
    }

    /// Bundled, and so is every model it requires: it needs nothing downloaded.
    pub fn is_wholly_bundled(&self) -> bool {
        self.is_bundled() && self.requires.iter().all(|id| Catalog::bundled().get(id).is_some_and(|e| e.is_bundled()))
    }

    /// Where the weights come from, in words.
    pub fn source_text(&self) -> String {
        match &self.source {
            Source::Bundled { path } => format!("bundled (weights/{path})"),
            Source::Hub { repo, revision, .. } => format!("hf.co/{repo}@{}", short_rev(revision)),
        }
    }
}

fn short_rev(revision: &str) -> &str {
    if revision.len() == 40 {
        &revision[..7]
    } else {
        revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn bundled_catalogue_is_valid_and_bundled_files_match_their_checksums() {
        let catalog = Catalog::bundled();
        assert!(!catalog.models.is_empty());
        for m in catalog.models.iter().filter(|m| m.is_bundled()) {
            let Source::Bundled { path } = &m.source else { unreachable!() };
            for f in &m.files {
                let name = format!("{path}/{}", f.path);
                let bytes = crate::bundled::file(&name).unwrap_or_else(|| panic!("{name} is not bundled"));
                if let Some(size) = f.size {
                    assert_eq!(bytes.len() as u64, size, "{name}: size");
                }
                if let Some(sha) = &f.sha256 {
                    assert_eq!(&format!("{:x}", Sha256::digest(bytes)), sha, "{name}: sha256");
                }
            }
        }
    }

    #[test]
    fn rejects_duplicate_defaults_and_unpinned_revisions() {
        let two_defaults = r#"
            [[model]]
            id = "a"
            task = "t"
            architecture = "x"
            summary = ""
            default = true
            licence = "MIT"
            quality = ""
            source = { kind = "bundled", path = "a" }
            files = [{ path = "w" }]
            [[model]]
            id = "b"
            task = "t"
            architecture = "x"
            summary = ""
            default = true
            licence = "MIT"
            quality = ""
            source = { kind = "bundled", path = "b" }
            files = [{ path = "w" }]
        "#;
        let err = Catalog::parse(two_defaults).unwrap_err().to_string();
        assert!(err.contains("second default"), "{err}");

        let unpinned = r#"
            [[model]]
            id = "a"
            task = "t"
            architecture = "x"
            summary = ""
            licence = "MIT"
            quality = ""
            source = { kind = "hub", repo = "o/n", revision = "main" }
            files = [{ path = "w" }]
        "#;
        let err = Catalog::parse(unpinned).unwrap_err().to_string();
        assert!(err.contains("not a commit hash"), "{err}");
    }
}
