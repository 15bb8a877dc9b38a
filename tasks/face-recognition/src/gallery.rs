//! `--gallery DIR`: the people a face may be, from the user's own photos. Either one subfolder
//! per person (`DIR/alice/*.jpg`), or photos named after their person (`DIR/alice.jpg`,
//! `DIR/alice_2.jpg`). Each photo's best face is its person's; a face is that person's at the
//! mean distance to their photos, as face-api's `FaceMatcher` measures it. Descriptors are cached
//! in `DIR/.zoo-faces.json`, each under its photo's SHA-256, so a changed photo is described
//! again and an unchanged gallery costs no network run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zoo_runtime::{image_io, Error, Input, Result};

use crate::Recognizer;

pub const CACHE: &str = ".zoo-faces.json";
/// Raised when what is cached changes meaning.
const CACHE_VERSION: u32 = 1;

pub struct Gallery {
    /// Each person's descriptors, by name.
    people: BTreeMap<String, Vec<Vec<f32>>>,
}

#[derive(Serialize, Deserialize, Default)]
struct Cache {
    version: u32,
    /// What made the descriptors: the model, and the options that change which face is found.
    made_by: String,
    /// By path relative to the gallery.
    files: BTreeMap<String, Cached>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Cached {
    sha256: String,
    descriptor: Vec<f32>,
}

impl Gallery {
    /// Reads the gallery in `dir`, describing the photos the cache does not hold.
    pub fn load(dir: &Path, recognizer: &Recognizer, model: &str, progress: bool) -> Result<Gallery> {
        let photos = photos(dir)?;
        if photos.is_empty() {
            return Err(Error::InvalidOption {
                option: "gallery".into(),
                value: dir.display().to_string(),
                reason: "holds no photos (one subfolder of photos per person, or photos named after their person)"
                    .into(),
            });
        }
        // zoo's version too: a release that changes how faces are cut describes them again.
        let made_by = format!(
            "{model} zoo={} aligned={} min-score={}",
            env!("CARGO_PKG_VERSION"),
            recognizer.aligned(),
            recognizer.min_score()
        );
        let cache_path = dir.join(CACHE);
        let old = read_cache(&cache_path)
            .filter(|c: &Cache| c.version == CACHE_VERSION && c.made_by == made_by)
            .unwrap_or_default();
        let bar = zoo_runtime::progress::items(photos.len() as u64, "describing the gallery", progress);
        let mut cache = Cache { version: CACHE_VERSION, made_by, files: BTreeMap::new() };
        let mut people: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
        let mut described = 0;
        let mut failure = None;
        for (person, path) in &photos {
            let relative = path.strip_prefix(dir).unwrap_or(path).to_string_lossy().replace('\\', "/");
            let input = Input::file(path);
            let found = input.read(image_io::read_limit(recognizer.max_pixels())).and_then(|bytes| {
                let sha256 = format!("{:x}", Sha256::digest(&bytes));
                match old.files.get(&relative) {
                    Some(hit) if hit.sha256 == sha256 && hit.descriptor.len() == crate::nets::DESCRIPTOR_SIZE => {
                        Ok((sha256, hit.descriptor.clone()))
                    }
                    _ => {
                        described += 1;
                        describe(recognizer, &input).map(|d| (sha256, d))
                    }
                }
            });
            bar.inc(1);
            match found {
                Ok((sha256, descriptor)) => {
                    cache.files.insert(relative, Cached { sha256, descriptor: descriptor.clone() });
                    people.entry(person.clone()).or_default().push(descriptor);
                }
                // The rest are still described and cached, so that fixing this photo costs one.
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        bar.finish_and_clear();
        if described > 0 || cache.files.len() != old.files.len() {
            // The cache only saves time: a gallery the user cannot write to still works.
            let json = serde_json::to_vec(&cache).expect("the cache serialises");
            let _ = zoo_runtime::fsutil::write_atomic(&cache_path, &json, true);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Gallery { people })
    }

    /// The person closest to `descriptor` and their mean distance.
    pub fn closest(&self, descriptor: &[f32]) -> Option<(&str, f32)> {
        self.people
            .iter()
            .map(|(name, known)| {
                let mean = known.iter().map(|k| crate::distance(k, descriptor)).sum::<f32>() / known.len() as f32;
                (name.as_str(), mean)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    pub fn people(&self) -> impl Iterator<Item = (&str, usize)> {
        self.people.iter().map(|(name, photos)| (name.as_str(), photos.len()))
    }
}

/// The cache in `path`, if it is a regular file of a sane size holding one.
fn read_cache(path: &Path) -> Option<Cache> {
    const LARGEST: u64 = 256 << 20;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > LARGEST {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The best face of one gallery photo.
fn describe(recognizer: &Recognizer, input: &Input) -> Result<Vec<f32>> {
    let picture = image_io::decode(input, recognizer.max_pixels())?.to_rgb8();
    let faces =
        recognizer.faces(&picture).map_err(|e| Error::input(input.path(), format!("face recognition failed: {e}")))?;
    match faces.into_iter().next() {
        Some(face) => Ok(face.descriptor),
        None => Err(Error::input(
            input.path(),
            "no face found in this gallery photo (each must show its person's face; lower --min-score, or remove it)",
        )),
    }
}

/// The gallery's photos and whose each is, in name order; hidden files skipped.
fn photos(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let listing = |dir: &Path| -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::InvalidOption {
            option: "gallery".into(),
            value: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        paths.sort();
        Ok(paths)
    };
    let is_photo = |p: &Path| {
        p.is_file()
            && p.extension()
                .is_some_and(|e| image_io::IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
    };
    let mut photos = Vec::new();
    for path in listing(dir)? {
        if path.is_dir() {
            let person = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            photos.extend(listing(&path)?.into_iter().filter(|p| is_photo(p)).map(|p| (person.clone(), p)));
        } else if is_photo(&path) {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            photos.push((person_of(&stem), path));
        }
    }
    Ok(photos)
}

/// `alice`, `alice_2`, `alice-3`, `alice 4` and `alice (5)` are all alice; `r2d2` is r2d2.
fn person_of(stem: &str) -> String {
    let unbracketed = match stem.strip_suffix(')').and_then(|s| s.rsplit_once('(')) {
        Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name.trim_end(),
        _ => stem,
    };
    let name = match unbracketed.rsplit_once(['_', '-', ' ']) {
        Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => unbracketed,
    };
    if name.is_empty() {
        stem.to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_photos_belong_to_one_person() {
        for stem in ["alice", "alice_2", "alice-3", "alice (4)", "alice 5"] {
            assert_eq!(person_of(stem), "alice", "{stem}");
        }
        assert_eq!(person_of("r2d2"), "r2d2");
        assert_eq!(person_of("_1"), "_1");
        assert_eq!(person_of("007"), "007");
        assert_eq!(person_of("mary-jane"), "mary-jane");
    }

    #[test]
    fn photos_come_from_subfolders_or_names_and_hidden_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bob")).unwrap();
        for name in ["bob/one.jpg", "bob/notes.txt", "alice_1.png", "alice_2.png", ".zoo-faces.json", ".hidden.jpg"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let found: Vec<(String, String)> = photos(dir.path())
            .unwrap()
            .into_iter()
            .map(|(who, p)| (who, p.file_name().unwrap().to_string_lossy().into_owned()))
            .collect();
        let want = [("alice", "alice_1.png"), ("alice", "alice_2.png"), ("bob", "one.jpg")];
        assert_eq!(found, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }
}
