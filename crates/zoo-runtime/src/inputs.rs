//! Turning command-line arguments into inputs: files, folders (their matching files, sorted),
//! globs, and `-` for stdin.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::task::{Input, InputSource, InputSpec, ReadLimit};

pub fn expand(args: &[String], spec: &InputSpec, stdin_limit: ReadLimit) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for arg in args {
        if arg == "-" {
            if !spec.stdin {
                return Err(Error::Usage("this task does not read stdin ('-')".into()));
            }
            let mut bytes = Vec::new();
            // One byte past the limit tells "too much" from "exactly the limit" without reading on.
            std::io::stdin()
                .lock()
                .take(stdin_limit.max_bytes.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("-", e))?;
            if bytes.len() as u64 > stdin_limit.max_bytes {
                return Err(stdin_limit.exceeded(Path::new("-"), None));
            }
            if bytes.is_empty() {
                return Err(Error::input("-", "stdin is empty"));
            }
            inputs.push(Input { name: "-".into(), source: InputSource::Stdin(bytes.into()) });
            continue;
        }
        let path = Path::new(arg);
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, spec, &mut found)?;
            if found.is_empty() {
                return Err(Error::input(path, format!("no {} files in this folder", spec.extensions.join("/"))));
            }
            found.sort();
            inputs.extend(found.into_iter().map(Input::file));
        } else if !path.exists() && arg.contains(['*', '?', '[']) {
            let paths = glob::glob(arg).map_err(|e| Error::Usage(format!("bad pattern '{arg}': {e}")))?;
            let mut found: Vec<PathBuf> = paths.filter_map(|p| p.ok()).filter(|p| p.is_file()).collect();
            if found.is_empty() {
                return Err(Error::input(path, "no file matches this pattern"));
            }
            found.sort();
            inputs.extend(found.into_iter().map(Input::file));
        } else {
            // Missing files are reported per input when read, so the rest still run.
            inputs.push(Input::file(path));
        }
    }
    Ok(inputs)
}

fn walk(dir: &Path, spec: &InputSpec, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        // Linked folders are not followed: a link to a parent would loop, one to a sibling
        // would list its files twice.
        if entry.file_type().is_ok_and(|t| t.is_symlink()) && path.is_dir() {
            continue;
        }
        if path.is_dir() {
            walk(&path, spec, out)?;
        } else if has_extension(&path, spec.extensions) {
            out.push(path);
        }
    }
    Ok(())
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    ext.is_some_and(|e| extensions.contains(&e.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: InputSpec = InputSpec {
        description: "",
        extensions: &["png", "jpg"],
        stdin: false,
        required: true,
        kind: crate::task::InputKind::Image,
    };

    #[test]
    fn folders_and_globs_expand_to_sorted_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.PNG", "a.jpg", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c.png"), b"x").unwrap();

        let names = |inputs: Vec<Input>| -> Vec<String> {
            inputs.iter().map(|i| i.path().file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        let from_dir = expand(&[dir.path().display().to_string()], &SPEC, ReadLimit::DEFAULT).unwrap();
        assert_eq!(names(from_dir), ["a.jpg", "b.PNG", "c.png"]);
        let from_glob = expand(&[format!("{}/*.jpg", dir.path().display())], &SPEC, ReadLimit::DEFAULT).unwrap();
        assert_eq!(names(from_glob), ["a.jpg"]);
        assert!(expand(&[format!("{}/*.gif", dir.path().display())], &SPEC, ReadLimit::DEFAULT).is_err());
        assert!(expand(&["-".into()], &SPEC, ReadLimit::DEFAULT).unwrap_err().is_usage());
        // A missing file is not an error yet: it is reported when read, beside the other results.
        assert_eq!(expand(&["missing.png".into()], &SPEC, ReadLimit::DEFAULT).unwrap().len(), 1);
    }
}
