//! A tiny stand-in for the Hugging Face Hub, for end-to-end tests that must never reach the network.
//!
//! It speaks the part of the Hub's HTTP protocol that hf-hub 0.5's blocking client uses
//! (`hf_hub::api::sync`):
//! - `GET /{owner}/{name}/resolve/{revision}/{file}`: hf-hub first asks for `Range: bytes=0-0` and
//!   reads `x-repo-commit`, the etag (`x-linked-etag` for LFS files, else `etag`) and the size from
//!   `content-range`; then it asks for `Range: bytes={start}-` (start > 0 when resuming a `.part`)
//!   and copies the body. Both are answered 206 with `content-range` and `content-length`.
//! - `GET /api/models/{owner}/{name}/revision/{revision}`: the repo's commit and file list.
//! - anything else, an unknown repo, revision or file: 404, with the Hub's `x-error-code`.
//!
//! Every request is recorded (method, path, `Range` header) so tests can assert what the client
//! asked for. A [`Fault`] makes the server cut a file's body short for the first few requests.
//!
//! std only: one accept thread, one short-lived thread per connection, every socket with read and
//! write timeouts, one request per connection (`Connection: close`), so nothing can hang a test.

#![allow(dead_code)] // each test file uses a different part of it

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A file the server holds.
#[derive(Clone)]
pub struct ServedFile {
    pub path: String,
    pub bytes: Arc<Vec<u8>>,
    /// Stored in Git LFS on the Hub: the etag is the content's sha256 (`x-linked-etag`).
    pub lfs: bool,
}

impl ServedFile {
    /// LFS or not as the Hub's default `.gitattributes` decides: weights by extension.
    pub fn new(path: &str, bytes: Vec<u8>) -> Self {
        let lfs_ext = ["safetensors", "bin", "onnx", "msgpack", "h5", "ot", "pt", "pth", "ckpt", "tflite", "pb"];
        let ext = path.rsplit('.').next().unwrap_or("");
        ServedFile { path: path.to_string(), bytes: Arc::new(bytes), lfs: lfs_ext.contains(&ext) }
    }

    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }

    /// The etag the Hub reports and hf-hub names the blob after: the sha256 for LFS files, else
    /// the git blob id. (This server has no SHA-1, so a regular file's etag is a 40-hex digest of
    /// the git blob header and content with sha256: the same shape, and unique per content.)
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            let mut h = Sha256::new();
            h.update(format!("blob {}\0", self.bytes.len()).as_bytes());
            h.update(self.bytes.as_slice());
            format!("{:x}", h.finalize())[..40].to_string()
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

struct ServedRepo {
    commit: String,
    files: Vec<ServedFile>,
}

/// Cut the body of `file` of `repo` after `after_bytes` bytes, for the next `times` body requests
/// (not the `bytes=0-0` metadata probes).
#[derive(Debug, Clone)]
pub struct Fault {
    pub repo: String,
    pub file: String,
    pub after_bytes: usize,
    pub times: usize,
    /// true: announce the full `content-length`, send part of it and close (what a dropped
    /// connection looks like). false: send no `content-length` at all, so the early close looks
    /// like the end of a close-delimited body.
    pub with_content_length: bool,
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

impl Request {
    /// The `bytes=0-0` probe hf-hub sends to read a file's metadata.
    pub fn is_metadata_probe(&self) -> bool {
        self.range.as_deref() == Some("bytes=0-0")
    }

    /// A request for a file's content (not the metadata probe).
    pub fn is_file_get(&self) -> bool {
        self.path.contains("/resolve/") && !self.is_metadata_probe()
    }

    /// The start offset of a `Range: bytes=S-[E]` header.
    pub fn range_start(&self) -> Option<u64> {
        parse_range(self.range.as_deref()?).map(|(start, _)| start)
    }
}

#[derive(Default)]
struct State {
    repos: HashMap<String, ServedRepo>,
    faults: Vec<Fault>,
    /// Bodies go out in chunks of this many bytes with a pause after each, so that a test can
    /// act (start a second client, kill one) while a transfer is under way.
    throttle: Option<(usize, Duration)>,
    log: Vec<Request>,
}

pub struct HubServer {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl HubServer {
    /// Starts the server on 127.0.0.1 at a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || handle(stream, &state));
                }
            })
        };
        HubServer { addr, state, stop, accept_thread: Some(accept_thread) }
    }

    /// The value for `HF_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the test's assertions down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `files` as `repo` (`owner/name`) at `commit`, reachable as revision `main` or `commit`.
    pub fn add_repo(&self, repo: &str, commit: &str, files: Vec<ServedFile>) {
        assert!(commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()), "commit must be 40 hex digits");
        self.state().repos.insert(repo.to_string(), ServedRepo { commit: commit.to_string(), files });
    }

    /// Sends every body `chunk` bytes at a time, pausing `pause` after each.
    pub fn set_throttle(&self, chunk: usize, pause: Duration) {
        self.state().throttle = Some((chunk.max(1), pause));
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state().log.clone()
    }

    pub fn clear_requests(&self) {
        self.state().log.clear();
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

/// `bytes=S-` or `bytes=S-E` (E inclusive), the forms hf-hub sends.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        e => Some(e.parse().ok()?),
    };
    Some((start, end))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the request head (the client sends no body with GET); None on a timeout, a close or junk.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEADER_BYTES {
            return None;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(head).ok()
}

struct Response {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close.
    cut_after: Option<usize>,
    content_length: bool,
}

impl Response {
    fn new(status: &'static str, body: Vec<u8>) -> Self {
        Response { status, headers: Vec::new(), body, cut_after: None, content_length: true }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn not_found(code: &str, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string().into_bytes();
        Response::new("404 Not Found", body).header("x-error-code", code).header("content-type", "application/json")
    }

    fn write(
        self,
        stream: &mut TcpStream,
        head_only: bool,
        throttle: Option<(usize, Duration)>,
    ) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {}\r\n", self.status);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.content_length {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        if !head_only {
            let n = self.cut_after.unwrap_or(self.body.len()).min(self.body.len());
            match throttle {
                Some((chunk, pause)) => {
                    for piece in self.body[..n].chunks(chunk) {
                        stream.write_all(piece)?;
                        stream.flush()?;
                        std::thread::sleep(pause);
                    }
                }
                None => stream.write_all(&self.body[..n])?,
            }
        }
        stream.flush()
    }
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(head) = read_head(&mut stream) else { return };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
    let mut range = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let request = Request { method: method.clone(), path: path.clone(), range };
    let (response, throttle) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.log.push(request.clone());
        (respond(&mut state, &request), state.throttle)
    };
    let _ = response.write(&mut stream, method == "HEAD", throttle);
    // Closing after a cut body is the fault itself: the client sees the connection end early.
    let _ = stream.shutdown(Shutdown::Both);
}

fn respond(state: &mut State, request: &Request) -> Response {
    if request.method != "GET" && request.method != "HEAD" {
        return Response::new("405 Method Not Allowed", Vec::new());
    }
    if let Some(rest) = request.path.strip_prefix("/api/models/") {
        let Some((repo, revision)) = rest.split_once("/revision/") else {
            return Response::not_found("RepoNotFound", "Repository not found");
        };
        let revision = percent_decode(revision);
        let Some(served) = state.repos.get(repo) else {
            return Response::not_found("RepoNotFound", "Repository not found");
        };
        if revision != "main" && revision != served.commit {
            return Response::not_found("RevisionNotFound", &format!("Invalid rev id: {revision}"));
        }
        let siblings: Vec<_> = served.files.iter().map(|f| serde_json::json!({ "rfilename": f.path })).collect();
        let body = serde_json::json!({ "id": repo, "modelId": repo, "sha": served.commit, "siblings": siblings });
        return Response::new("200 OK", body.to_string().into_bytes()).header("content-type", "application/json");
    }
    // /{owner}/{name}/resolve/{revision}/{file...}
    let parts: Vec<&str> = request.path.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", revision, file] = parts.as_slice() else {
        return Response::not_found("EntryNotFound", "Not found");
    };
    let repo = format!("{owner}/{name}");
    let (revision, file) = (percent_decode(revision), percent_decode(file));
    let Some(served) = state.repos.get(&repo) else {
        return Response::not_found("RepoNotFound", "Repository not found");
    };
    if revision != "main" && revision != served.commit {
        return Response::not_found("RevisionNotFound", &format!("Invalid rev id: {revision}"));
    }
    let commit = served.commit.clone();
    let Some(found) = served.files.iter().find(|f| f.path == file) else {
        return Response::not_found("EntryNotFound", &format!("{file} does not exist on \"{revision}\""))
            .header("x-repo-commit", commit);
    };
    let found = found.clone();
    let size = found.bytes.len() as u64;
    let mut response = match request.range.as_deref() {
        None => Response::new("200 OK", found.bytes.to_vec()),
        Some(value) => {
            let Some((start, end)) = parse_range(value) else {
                return Response::new("416 Range Not Satisfiable", Vec::new())
                    .header("content-range", format!("bytes */{size}"));
            };
            if start >= size {
                return Response::new("416 Range Not Satisfiable", Vec::new())
                    .header("content-range", format!("bytes */{size}"));
            }
            let end = end.unwrap_or(size - 1).min(size - 1);
            Response::new("206 Partial Content", found.bytes[start as usize..=end as usize].to_vec())
                .header("content-range", format!("bytes {start}-{end}/{size}"))
        }
    };
    response = response
        .header("accept-ranges", "bytes")
        .header("content-type", "application/octet-stream")
        .header("x-repo-commit", commit)
        .header(
            "etag",
            format!("\"{}\"", if found.lfs { format!("{}-lfs", &found.sha256()[..32]) } else { found.etag() }),
        );
    if found.lfs {
        response =
            response.header("x-linked-etag", format!("\"{}\"", found.etag())).header("x-linked-size", size.to_string());
    }
    if !request.is_metadata_probe() {
        if let Some(fault) = state.faults.iter_mut().find(|f| f.times > 0 && f.repo == repo && f.file == file) {
            fault.times -= 1;
            response.cut_after = Some(fault.after_bytes);
            response.content_length = fault.with_content_length;
        }
    }
    response
}
