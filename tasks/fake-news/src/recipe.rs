//! What `zoo train fake-news` learns from: one labelled source (`--train`, `--val`) or several,
//! named in a recipe file (`--recipe`), each with its own columns and label names, weighed so that
//! a large source does not drown the small ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use zoo_runtime::{Error, Result};

use crate::table::{self, Layout, Row};

/// A recipe file: `[[source]]` tables, paths relative to `root` (itself relative to the file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(rename = "source", default)]
    sources: Vec<SourceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    name: String,
    train: PathBuf,
    #[serde(default)]
    val: Option<PathBuf>,
    #[serde(default = "default_text_column")]
    text_column: String,
    #[serde(default = "default_label_column")]
    label_column: String,
    /// Column names of a file without a header row.
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default = "yes")]
    quoting: bool,
    /// The file's label -> the class it stands for. When given, every label in the file must be
    /// listed, so that a misspelt or unexpected label stops the run instead of becoming a class.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn default_text_column() -> String {
    "text".into()
}

fn default_label_column() -> String {
    "label".into()
}

fn yes() -> bool {
    true
}

/// Where a source's rows come from and how to read them.
#[derive(Debug, Clone)]
pub struct SourceFiles {
    pub name: String,
    pub train: PathBuf,
    pub val: Option<PathBuf>,
    pub text_column: String,
    pub label_column: String,
    pub layout: Layout,
    pub labels: BTreeMap<String, String>,
}

/// One source's rows, labels already mapped to class names.
pub struct Source {
    pub files: SourceFiles,
    pub train: Vec<Row>,
    pub val: Option<Vec<Row>>,
}

/// Reads a recipe file. `root` replaces the file's own `root` (data kept somewhere else).
pub fn parse(path: &Path, root: Option<&Path>) -> Result<Vec<SourceFiles>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, e))?;
    let recipe: RecipeFile =
        toml::from_str(&text).map_err(|e| Error::input(path, format!("not a recipe: {}", e.message())))?;
    if recipe.sources.is_empty() {
        return Err(Error::input(path, "names no [[source]]"));
    }
    let here = path.parent().unwrap_or(Path::new("."));
    let base = match (root, &recipe.root) {
        (Some(root), _) => root.to_path_buf(),
        (None, Some(root)) => here.join(root),
        (None, None) => here.to_path_buf(),
    };
    let mut names = std::collections::HashSet::new();
    recipe
        .sources
        .into_iter()
        .map(|s| {
            if !names.insert(s.name.clone()) {
                return Err(Error::input(path, format!("two sources are named '{}'", s.name)));
            }
            Ok(SourceFiles {
                name: s.name,
                train: tidy(&base.join(s.train)),
                val: s.val.map(|v| tidy(&base.join(v))),
                text_column: s.text_column,
                label_column: s.label_column,
                layout: Layout { columns: s.columns, quoting: s.quoting },
                labels: s.labels,
            })
        })
        .collect()
}

/// `a/b/../c` as `a/c`, without touching the file system: the paths a report records read as the
/// data's place, not as the recipe's way there.
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl SourceFiles {
    /// Reads the train and val rows, the first `limit` of each, labels mapped.
    pub fn read(self, limit: Option<usize>) -> Result<Source> {
        let read = |path: &Path| -> Result<Vec<Row>> {
            let mut rows = table::read_with(path, &self.text_column, Some(&self.label_column), &self.layout)?;
            if let Some(n) = limit {
                rows.truncate(n);
            }
            if rows.is_empty() {
                return Err(Error::input(path, "no rows"));
            }
            if !self.labels.is_empty() {
                for row in &mut rows {
                    let raw = row.label.as_deref().unwrap_or_default();
                    let Some(class) = self.labels.get(raw) else {
                        return Err(Error::input(
                            path,
                            format!(
                                "row {}: label '{raw}' is not in the recipe's labels for '{}' ({})",
                                row.number,
                                self.name,
                                self.labels.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    };
                    row.label = Some(class.clone());
                }
            }
            Ok(rows)
        };
        let train = read(&self.train)?;
        let val = self.val.as_deref().map(read).transpose()?;
        Ok(Source { files: self, train, val })
    }
}

/// How much of the loss each source carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// In proportion to the square root of its rows: a source 100 times larger counts 10 times more.
    Sqrt,
    /// The same for every source.
    Equal,
    /// In proportion to its rows: every row counts the same, as if the files were one.
    Rows,
}

impl FromStr for Weighting {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sqrt" => Ok(Weighting::Sqrt),
            "equal" => Ok(Weighting::Equal),
            "rows" => Ok(Weighting::Rows),
            _ => Err("must be sqrt, equal or rows".into()),
        }
    }
}

impl Weighting {
    pub fn name(self) -> &'static str {
        match self {
            Weighting::Sqrt => "sqrt",
            Weighting::Equal => "equal",
            Weighting::Rows => "rows",
        }
    }

    /// Each source's share of the loss, from its training rows; the shares sum to 1.
    pub fn shares(self, rows: &[usize]) -> Vec<f64> {
        let raw: Vec<f64> = rows
            .iter()
            .map(|&n| match self {
                Weighting::Sqrt => (n as f64).sqrt(),
                Weighting::Equal => 1.0,
                Weighting::Rows => n as f64,
            })
            .collect();
        let total: f64 = raw.iter().sum();
        raw.iter().map(|r| r / total).collect()
    }
}

/// A weight per window: each source carries its share, split evenly over its texts and each text's
/// share over its windows (a long article counts once, as a tweet does). With `text_class`, a
/// source's share is first split evenly over the classes it has, so a source that is mostly one
/// class does not teach the model to answer that class. Scaled to a mean of 1.
pub fn window_weights(
    shares: &[f64],
    text_source: &[usize],
    text_class: Option<&[usize]>,
    windows_per_text: &[usize],
) -> Vec<f32> {
    let group = |text: usize| (text_source[text], text_class.map_or(0, |c| c[text]));
    let mut texts_per_group: HashMap<(usize, usize), usize> = HashMap::new();
    (0..text_source.len()).for_each(|t| *texts_per_group.entry(group(t)).or_default() += 1);
    let mut groups_per_source = vec![0usize; shares.len()];
    texts_per_group.keys().for_each(|&(s, _)| groups_per_source[s] += 1);
    let mut weights = Vec::new();
    for (text, &windows) in windows_per_text.iter().enumerate() {
        let (source, _) = group(text);
        let texts = texts_per_group[&group(text)];
        let w = shares[source] / groups_per_source[source] as f64 / texts as f64 / windows as f64;
        weights.extend(std::iter::repeat_n(w, windows));
    }
    let mean = weights.iter().sum::<f64>() / weights.len().max(1) as f64;
    weights.iter().map(|w| (w / mean) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_share_the_loss_as_the_weighting_says() {
        let sqrt = Weighting::Sqrt.shares(&[100, 1]);
        assert!((sqrt[0] / sqrt[1] - 10.0).abs() < 1e-9);
        assert_eq!(Weighting::Equal.shares(&[100, 1]), vec![0.5, 0.5]);
        // Two sources with equal shares: source 0 has one text of two windows, source 1 two texts.
        let w = window_weights(&[0.5, 0.5], &[0, 1, 1], None, &[2, 1, 1]);
        assert_eq!(w.len(), 4);
        assert!((w.iter().sum::<f32>() - 4.0).abs() < 1e-5, "mean 1");
        assert!((w[0] + w[1] - (w[2] + w[3])).abs() < 1e-5, "equal shares");
        assert!((w[0] - w[1]).abs() < 1e-6 && (w[2] - w[3]).abs() < 1e-6);
    }

    #[test]
    fn balanced_classes_share_their_source_evenly() {
        // One source: three texts of class 0 (one of them two windows long), one of class 1.
        let w = window_weights(&[1.0], &[0, 0, 0, 0], Some(&[0, 0, 0, 1]), &[1, 2, 1, 1]);
        assert_eq!(w.len(), 5);
        assert!((w.iter().sum::<f32>() - 5.0).abs() < 1e-5, "mean 1");
        let class0: f32 = w[..4].iter().sum();
        assert!((class0 - w[4]).abs() < 1e-5, "each class half the source: {w:?}");
        assert!((w[0] - (w[1] + w[2])).abs() < 1e-6, "a text counts once however many windows");
        // Two sources: the second has one class only, so its share stays whole, not halved.
        let w = window_weights(&[0.5, 0.5], &[0, 0, 1], Some(&[0, 1, 0]), &[1, 1, 1]);
        assert!((w[0] + w[1] - w[2]).abs() < 1e-5 && (w[0] - w[1]).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn a_recipe_reads_headerless_unquoted_files_and_maps_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tsv"), "1\tpants-fire\tsays \"x\" is y\n2\ttrue\tfine\n").unwrap();
        std::fs::write(dir.path().join("b.csv"), "text,label\nhello,real\n").unwrap();
        let recipe = dir.path().join("r.toml");
        std::fs::write(
            &recipe,
            r#"
[[source]]
name = "a"
train = "a.tsv"
columns = ["id", "label", "statement"]
text_column = "statement"
quoting = false
labels = { pants-fire = "fake", true = "real" }

[[source]]
name = "b"
train = "b.csv"
val = "b.csv"
"#,
        )
        .unwrap();
        let files = parse(&recipe, None).unwrap();
        assert_eq!(tidy(Path::new("a/b/../../../c/./d")), Path::new("../c/d"));
        let a = files[0].clone().read(None).unwrap();
        assert_eq!(a.train[0].text, "says \"x\" is y");
        assert_eq!(a.train.iter().map(|r| r.label.clone().unwrap()).collect::<Vec<_>>(), ["fake", "real"]);
        assert!(files[1].clone().read(None).unwrap().val.is_some());

        std::fs::write(dir.path().join("a.tsv"), "1\thalf-true\tx\n").unwrap();
        let err = files[0].clone().read(None).err().unwrap().to_string();
        assert!(err.contains("label 'half-true' is not in the recipe's labels"), "{err}");
        std::fs::write(&recipe, "[[source]]\nname = \"a\"\n").unwrap();
        assert!(parse(&recipe, None).is_err(), "a source needs a train file");
    }
}
