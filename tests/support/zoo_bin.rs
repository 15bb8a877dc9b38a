//! Running the `zoo` binary from end-to-end tests: offline, against a given or an empty Hugging
//! Face cache, with no reachable Hub, and failing the test on any panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A file of `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data").join(name)
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `zoo args...` with `stdin` fed to it; `cache` is the hub cache (an empty one when `None`).
pub fn zoo_with(cache: Option<&Path>, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zoo"));
    cmd.args(args)
        .env("HF_HUB_CACHE", cache.unwrap_or(empty.path()))
        .env("HF_HUB_OFFLINE", "1")
        // Nothing listens on the discard port: a stray download fails fast instead of going out.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("ZOO_CATALOG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("zoo runs");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    let run = Run {
        code: status.code().expect("zoo exits normally, not by a signal"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "zoo panicked on {args:?}:\n{}", run.stderr);
    run
}

/// `zoo args...` with an empty cache and no stdin.
pub fn zoo(args: &[&str]) -> Run {
    zoo_with(None, args, None)
}
