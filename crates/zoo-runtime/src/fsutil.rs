use std::path::Path;

use crate::error::{Error, Result};

/// The name an output file made from the input at `path` takes: the file's stem, or `stdin` for
/// `-` (and for a path with no file name).
pub fn output_stem(path: &Path) -> String {
    match path.file_stem() {
        Some(stem) if path != Path::new("-") => stem.to_string_lossy().into_owned(),
        _ => "stdin".to_string(),
    }
}

/// The folder of a vision task's `--output-dir` option, created; `None` without the option. A
/// server keeps results in memory and refuses it.
pub fn output_dir(args: &crate::TaskArgs, outputs: crate::Outputs) -> Result<Option<std::path::PathBuf>> {
    match args.value("output-dir") {
        Some(_) if outputs == crate::Outputs::Memory => {
            Err(Error::Usage("--output-dir: results are kept in memory here, not written to files".into()))
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::InvalidOption {
                option: "output-dir".into(),
                value: dir.into(),
                reason: e.to_string(),
            })?;
            Ok(Some(std::path::PathBuf::from(dir)))
        }
        None => Ok(None),
    }
}

/// Writes `picture` to `path` as PNG, atomically (see [`write_atomic`]).
pub fn write_png(path: &Path, picture: &image::RgbImage, overwrite: bool) -> Result<()> {
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::input(path, format!("cannot encode the picture: {e}")))?;
    write_atomic(path, &png, overwrite)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that a
/// crash or a full disk never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    use std::io::Write;
    if !overwrite && path.exists() {
        return Err(Error::input(path, "already exists (use --force to overwrite it)"));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    // Temporary files are private (0600) by default; the result is an ordinary output file, so it
    // gets the usual 0666 less the user's umask, as if written directly.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    // Through the file itself: the temporary file's own writer names its random path in errors,
    // which means nothing to the user.
    let file = tmp.as_file_mut();
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| Error::io(path, e))?;
    let result = if overwrite { tmp.persist(path).map(|_| ()) } else { tmp.persist_noclobber(path).map(|_| ()) };
    result.map_err(|e| Error::io(path, e.error))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_files_are_complete_not_private_and_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"first", false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        // The same mode as a file written directly, whatever the umask.
        let plain = dir.path().join("plain.bin");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
        std::fs::remove_file(&plain).unwrap();
        assert!(write_atomic(&path, b"second", false).unwrap_err().to_string().contains("--force"));
        write_atomic(&path, b"second", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }
}
