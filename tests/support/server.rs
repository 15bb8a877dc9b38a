//! `zoo serve` in end-to-end tests: started on an ephemeral 127.0.0.1 port, offline, against a
//! given hub cache, and always stopped (SIGTERM, then SIGKILL) when the handle goes, whatever
//! the test did; and a small HTTP client that returns every status instead of failing on it.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::zoo_bin::zoo_command;

/// Model loads and warm-ups on a busy 2-core machine stay well under this.
const READY_LIMIT: Duration = Duration::from_secs(300);

pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `zoo serve --port 0 args...` and waits until `/health` answers 200.
    pub fn start(cache: &Path, args: &[&str]) -> Server {
        let server = Self::start_listening(cache, args);
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if get(&server.url("/health")).status == 200 {
                return server;
            }
            assert!(Instant::now() < deadline, "zoo serve was not ready in time\n{}", server.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `zoo serve --port 0 args...` and returns once it listens.
    pub fn start_listening(cache: &Path, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--port", "0"];
        all.extend_from_slice(args);
        let mut cmd = zoo_command(cache, &all);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start zoo serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("piped");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("zoo serve: listening on ") {
                    let _ = tx.send(address.to_string());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut server = Server { child: Some(child), base: String::new(), stderr };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => server.base = base,
            Err(_) => panic!("zoo serve did not listen within 60 s\n{}", server.stderr()),
        }
        assert!(server.base.starts_with("http://127.0.0.1:"), "{}", server.base);
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit code; `None` if it had to be killed.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.terminate(Duration::from_secs(10));
    }
}

/// An HTTP answer, whatever its status.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): status {} {}", self.status, self.text()))
    }

    /// The `error` of a JSON error answer.
    pub fn error(&self) -> String {
        let value = self.json();
        let error = value["error"].as_str().unwrap_or_else(|| panic!("no error field: {value}")).to_string();
        eprintln!("{} {error}", self.status); // shown with --nocapture, and on failure
        error
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .proxy(None)
        .build()
        .into()
}

fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let response = response.expect("an HTTP answer");
    let status = response.status().as_u16();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let content_type = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone()).unwrap_or_default();
    let body = response.into_body().with_config().limit(200 << 20).read_to_vec().expect("read the body");
    Reply { status, content_type, headers, body }
}

pub fn get(url: &str) -> Reply {
    get_with(url, &[])
}

pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    reply(request.call())
}

pub fn post(url: &str, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().post(url).header("Content-Type", content_type);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    reply(request.send(body))
}

pub fn post_json(url: &str, body: &serde_json::Value) -> Reply {
    post(url, "application/json", body.to_string().as_bytes(), &[])
}

/// One part of a multipart body: a file (name, bytes) or a text field.
pub enum Part<'a> {
    File(&'a str, &'a [u8]),
    Text(&'a str),
}

/// A multipart/form-data body and its content type.
pub fn multipart(parts: &[(&str, Part)]) -> (String, Vec<u8>) {
    let boundary = "zoo-test-boundary-7d1f0c";
    let mut body = Vec::new();
    for (name, part) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::File(file_name, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
            }
            Part::Text(text) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{text}").as_bytes(),
                );
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn post_multipart(url: &str, parts: &[(&str, Part)], headers: &[(&str, &str)]) -> Reply {
    let (content_type, body) = multipart(parts);
    post(url, &content_type, &body, headers)
}

/// A metric's value from `/metrics` (the sum over series whose labels contain every `labels`).
pub fn metric(server: &Server, name: &str, labels: &[&str]) -> f64 {
    get(&server.url("/metrics"))
        .text()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Reads whatever a raw socket answers until it closes (or 60 s pass).
pub fn read_all(stream: &mut std::net::TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
