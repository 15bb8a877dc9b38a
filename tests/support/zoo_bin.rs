//! Running the `zoo` binary from end-to-end tests: offline, against a given or an empty Hugging
//! Face cache, with no reachable Hub, and failing the test on any panic; and running any child
//! process within a time limit, measuring its peak memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// No single zoo run in the tests comes near this; past it the child is killed.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(20 * 60);

/// A file of `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data").join(name)
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!("exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }

    /// The one `zoo: error:` line a failure prints; fails the test if there is not exactly one
    /// line on stderr or it is not an error line.
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected exactly one line on stderr\n{}", self.describe());
        assert!(lines[0].starts_with("zoo: error: "), "{}", self.describe());
        eprintln!("{}", lines[0]); // shown with --nocapture, and on failure
        lines[0]
    }

    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", self.describe())))
            .collect()
    }
}

/// How a bounded child ended.
pub struct Bounded {
    /// `None` when it was killed at the time limit, or died by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
    /// Peak resident memory, from /proc (0 where there is none).
    pub peak_mb: u64,
}

impl Bounded {
    /// As a [`Run`], failing the test if the child was killed or died by a signal.
    pub fn finished(self, what: &str) -> Run {
        let code = self.code.unwrap_or_else(|| {
            panic!("{what} did not exit normally within its time limit ({:.0} s)\n{}", self.seconds, self.stderr)
        });
        Run { code, stdout: self.stdout, stderr: self.stderr }
    }
}

/// Runs `cmd` with `stdin` fed to it (or none), killing it past `limit`.
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Bounded {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    // From a thread, so that a child that stops reading (it refused the input) cannot block us.
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("piped");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let mut peak = 0;
    let status = loop {
        // NaN (no /proc) counts as 0.
        peak = peak.max(zoo_runtime::test_support::peak_rss_mb_of(child.id()) as u64);
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Bounded {
        code: status.and_then(|s| s.code()),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        seconds: start.elapsed().as_secs_f64(),
        peak_mb: peak,
    }
}

/// `zoo args...` offline: `cache` is the hub cache (an empty one when `None`), nothing listens at
/// the Hub's address, and the user's catalogue and backtrace settings are not inherited.
pub fn zoo_command(cache: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zoo"));
    cmd.args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        // Nothing listens on the discard port: a stray download fails fast instead of going out.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("ZOO_CATALOG")
        // As a user normally runs it: candle appends backtraces to its errors when this is set.
        .env_remove("RUST_BACKTRACE");
    cmd
}

/// `zoo args...` with `stdin` fed to it; `cache` is the hub cache (an empty one when `None`).
pub fn zoo_with(cache: Option<&Path>, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let empty = tempfile::tempdir().unwrap();
    let cmd = zoo_command(cache.unwrap_or(empty.path()), args);
    let run = run_bounded(cmd, stdin, DEFAULT_LIMIT).finished(&format!("zoo {args:?}"));
    assert!(!run.stderr.contains("panicked"), "zoo panicked on {args:?}:\n{}", run.stderr);
    run
}

/// What `zoo run ARGS --json` prints with the hub cache `cache`, one object per input; the run
/// must succeed.
pub fn cli_json(cache: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = zoo_with(Some(cache), &all, None);
    assert_eq!(run.code, 0, "{}", run.describe());
    run.json_lines()
}

/// `zoo args...` with an empty cache and no stdin.
pub fn zoo(args: &[&str]) -> Run {
    zoo_with(None, args, None)
}

/// Runs the command given after it with a fresh tmpfs mounted at `$1` (size `$3`), then copies what
/// was written there to `$2`: the tmpfs vanishes with the namespace, the copy stays for the test.
const SMALL_DISK_SCRIPT: &str = r#"mnt=$1; keep=$2; size=$3; shift 3
mount -t tmpfs -o "size=$size" tmpfs "$mnt" || exit 97
"$@"; code=$?
cp -a "$mnt/." "$keep/" || exit 98
exit $code"#;

/// A command running `program args...` with a small disk (a tmpfs of `size`, as mount(8) takes
/// it: "1m") at `mount`, in a private user and mount namespace, so that no privilege is needed;
/// what it wrote there is copied to `keep` afterwards. `None`, said loudly, where this machine
/// cannot make one (no unshare, or user namespaces turned off).
pub fn on_small_disk(mount: &Path, size: &str, keep: &Path, program: &Path, args: &[&str]) -> Option<Command> {
    let unshare = |script: &str| {
        let mut cmd = Command::new("unshare");
        cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]);
        cmd
    };
    let probe = unshare(r#"mount -t tmpfs -o size=64k tmpfs "$1""#)
        .arg(mount)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "\n!!! SKIPPED: this machine cannot mount a small tmpfs in a user namespace \
             (`unshare --user --map-root-user --mount`), so the full-disk case is not tested here.\n"
        );
        return None;
    }
    let mut cmd = unshare(SMALL_DISK_SCRIPT);
    cmd.arg(mount).arg(keep).arg(size).arg(program).args(args);
    Some(cmd)
}

/// Fails under CI (CI=true) and skips loudly elsewhere: what a test does when something it needs
/// from outside the repository is missing.
pub fn skip_or_fail<T>(why: &str, not_run: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("\n!!! SKIPPED: {why}; {not_run}\n");
    None
}

/// A venv at target/NAME with `pins` installed from the package registry, made once and reused
/// while its marker names the same pins; its python, or `None` (see [`skip_or_fail`]).
pub fn pinned_venv(name: &str, pins: &[&str], not_run: &str) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target").join(name);
    let python = venv.join("bin/python");
    let marker = venv.join("zoo-pins.txt");
    let pinned = pins.join("\n");
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == pinned) {
        return Some(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&venv);
    let made = run_bounded(make, None, Duration::from_secs(300));
    if made.code != Some(0) {
        return skip_or_fail(&format!("python3 -m venv failed: {}", made.stderr.trim()), not_run);
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(pins);
    let installed = run_bounded(pip, None, Duration::from_secs(900));
    if installed.code != Some(0) {
        return skip_or_fail(&format!("pip install {} failed: {}", pins.join(" "), installed.stderr.trim()), not_run);
    }
    std::fs::write(&marker, pinned).unwrap();
    Some(python)
}
