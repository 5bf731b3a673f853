//! A loopback HTTP server that answers like the Hugging Face Hub for file downloads, enough for
//! hf-hub 0.4.3's sync client:
//! - `GET|HEAD /{owner}/{name}/resolve/{revision}/{file}`: regular files are served directly with
//!   `ETag: "<git blob sha1>"` and `X-Repo-Commit`; LFS files answer `302` to `/cdn/<sha256>`
//!   with `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and `X-Repo-Commit`, as the Hub does.
//!   hf-hub's metadata request is `GET` with `Range: bytes=0-0` and needs a `206` with
//!   `Content-Range: bytes 0-0/<size>`; its download is `GET` with `Range: bytes=<start>-`.
//! - Unknown repo: 401 `RepoNotFound`; unknown file: 404 `EntryNotFound` (the Hub's codes).
//! - Faults per file: a body cut in half (with or without Content-Length), or a flipped byte.
//!
//! Every connection gets `Connection: close`, so each request is one connection and the request
//! log is exact.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Announces the full Content-Length, sends half the body, closes.
    Truncate,
    /// Sends no Content-Length (close-delimited body), sends half the body, closes.
    TruncateUnannounced,
    /// Same size, last byte flipped: only a checksum can tell.
    Corrupt,
}

#[derive(Debug, Clone)]
pub struct ServedFile {
    pub bytes: Vec<u8>,
    pub lfs: bool,
    pub fault: Fault,
    /// The Hub's two etags, computed once (hashing per request is slow in test builds).
    sha256: String,
    git_sha1: String,
}

impl ServedFile {
    pub fn regular(bytes: impl Into<Vec<u8>>) -> Self {
        Self::new(bytes.into(), false)
    }
    pub fn lfs(bytes: impl Into<Vec<u8>>) -> Self {
        Self::new(bytes.into(), true)
    }
    fn new(bytes: Vec<u8>, lfs: bool) -> Self {
        let mut git = Sha1::new();
        git.update(format!("blob {}\0", bytes.len()).as_bytes());
        git.update(&bytes);
        Self {
            sha256: hex(&Sha256::digest(&bytes)),
            git_sha1: hex(&git.finalize()),
            bytes,
            lfs,
            fault: Fault::None,
        }
    }
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }
    fn sha256(&self) -> String {
        self.sha256.clone()
    }
    fn git_sha1(&self) -> String {
        self.git_sha1.clone()
    }
    /// What goes over the wire: the content, corrupted if asked.
    fn wire_bytes(&self) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        if self.fault == Fault::Corrupt {
            if let Some(last) = bytes.last_mut() {
                *last ^= 0xff;
            }
        }
        bytes
    }
}

#[derive(Debug, Clone)]
pub struct ServedRepo {
    pub id: String,
    /// Revision names this repo answers to (branch names, tags); the commit always works.
    pub revisions: Vec<String>,
    pub commit: String,
    pub files: BTreeMap<String, ServedFile>,
}

impl ServedRepo {
    pub fn new(id: &str) -> Self {
        let commit = hex(&Sha1::digest(id.as_bytes()));
        Self {
            id: id.to_string(),
            revisions: vec!["main".to_string()],
            commit,
            files: BTreeMap::new(),
        }
    }
    pub fn file(mut self, name: &str, file: ServedFile) -> Self {
        self.files.insert(name.to_string(), file);
        self
    }
}

struct State {
    repos: Mutex<Vec<ServedRepo>>,
    requests: Mutex<Vec<String>>,
    ranges: Mutex<Vec<String>>,
    addr: SocketAddr,
}

pub struct HubServer {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    pub fn start(repos: Vec<ServedRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            repos: Mutex::new(repos),
            requests: Mutex::new(Vec::new()),
            ranges: Mutex::new(Vec::new()),
            addr,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, state, stop))
        };
        Self {
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// `"GET /owner/name/resolve/main/pipeline.json"`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// `"Range: bytes=0-"` for each request that had a Range header, in arrival order.
    pub fn ranges(&self) -> Vec<String> {
        self.state.ranges.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
        self.state.ranges.lock().unwrap().clear();
    }

    /// Changes how `file` of `repo` is served from now on.
    pub fn set_fault(&self, repo: &str, file: &str, fault: Fault) {
        let mut repos = self.state.repos.lock().unwrap();
        let repo = repos
            .iter_mut()
            .find(|r| r.id == repo)
            .expect("no such repo");
        repo.files.get_mut(file).expect("no such file").fault = fault;
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.state.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>, stop: Arc<AtomicBool>) {
    let mut workers = Vec::new();
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let state = state.clone();
        workers.push(std::thread::spawn(move || {
            let _ = handle(stream, &state);
        }));
    }
    for worker in workers {
        let _ = worker.join();
    }
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    Ok(Some(Request {
        method,
        path,
        headers,
    }))
}

fn handle(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let Some(request) = read_request(&stream)? else {
        return Ok(());
    };
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("{} {}", request.method, request.path));
    if let Some(range) = request.headers.get("range") {
        state.ranges.lock().unwrap().push(format!("Range: {range}"));
    }
    route(&mut stream, state, &request)
}

fn route(stream: &mut TcpStream, state: &State, request: &Request) -> std::io::Result<()> {
    // A snapshot, so a slow transfer does not hold the lock.
    let repos = state.repos.lock().unwrap().clone();
    if let Some(sha) = request.path.strip_prefix("/cdn/") {
        let file = repos
            .iter()
            .flat_map(|repo| repo.files.values())
            .find(|file| file.lfs && file.sha256() == sha);
        return match file {
            Some(file) => serve_content(stream, request, file, &[]),
            None => respond(stream, request, "404 Not Found", &[], b""),
        };
    }
    let parts: Vec<&str> = request
        .path
        .trim_start_matches('/')
        .splitn(5, '/')
        .collect();
    let [owner, name, "resolve", revision, file_name] = parts[..] else {
        return respond(stream, request, "404 Not Found", &[], b"");
    };
    let id = format!("{owner}/{name}");
    let revision = revision.replace("%2F", "/");
    let Some(repo) = repos.iter().find(|repo| repo.id == id) else {
        let headers = [("X-Error-Code", "RepoNotFound".to_string())];
        return respond(stream, request, "401 Unauthorized", &headers, b"");
    };
    if !repo.revisions.contains(&revision) && repo.commit != revision {
        let headers = [("X-Error-Code", "RevisionNotFound".to_string())];
        return respond(stream, request, "404 Not Found", &headers, b"");
    }
    let commit = ("X-Repo-Commit", repo.commit.clone());
    let Some(file) = repo.files.get(file_name) else {
        let headers = [
            ("X-Error-Code", "EntryNotFound".to_string()),
            ("X-Error-Message", "Entry not found".to_string()),
            commit,
        ];
        return respond(stream, request, "404 Not Found", &headers, b"");
    };
    if file.lfs {
        let sha = file.sha256();
        let headers = [
            ("Location", format!("http://{}/cdn/{sha}", state.addr)),
            ("X-Linked-Etag", format!("\"{sha}\"")),
            ("X-Linked-Size", file.bytes.len().to_string()),
            ("ETag", format!("\"{}\"", file.git_sha1())),
            commit,
        ];
        return respond(stream, request, "302 Found", &headers, b"");
    }
    let headers = [("ETag", format!("\"{}\"", file.git_sha1())), commit];
    serve_content(stream, request, file, &headers)
}

/// Serves a file honouring `Range: bytes=a-b` / `bytes=a-`, applying the file's fault to every
/// transfer except hf-hub's one-byte metadata probe.
fn serve_content(
    stream: &mut TcpStream,
    request: &Request,
    file: &ServedFile,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let data = file.wire_bytes();
    let total = data.len();
    if total == 0 {
        return respond(stream, request, "200 OK", extra, b"");
    }
    let (start, end, status) = match request.headers.get("range").and_then(|r| parse_range(r)) {
        Some((start, end)) => (
            start,
            end.unwrap_or(total - 1).min(total - 1),
            "206 Partial Content",
        ),
        None => (0, total - 1, "200 OK"),
    };
    if start >= total {
        let headers = [("Content-Range", format!("bytes */{total}"))];
        return respond(stream, request, "416 Range Not Satisfiable", &headers, b"");
    }
    let body = &data[start..=end];
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    if status.starts_with("206") {
        headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
    }
    let probe = body.len() <= 1;
    match file.fault {
        Fault::Truncate if !probe => {
            headers.push(("Content-Length", body.len().to_string()));
            write_head(stream, status, &headers)?;
            stream.write_all(&body[..body.len() / 2])?;
            stream.flush()
        }
        Fault::TruncateUnannounced if !probe => {
            write_head(stream, status, &headers)?;
            stream.write_all(&body[..body.len() / 2])?;
            stream.flush()
        }
        _ => respond(stream, request, status, &headers, body),
    }
}

fn parse_range(range: &str) -> Option<(usize, Option<usize>)> {
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start = start.parse().ok()?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse().ok()?)
    };
    Some((start, end))
}

fn respond(
    stream: &mut TcpStream,
    request: &Request,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut headers = headers.to_vec();
    headers.push(("Content-Length", body.len().to_string()));
    write_head(stream, status, &headers)?;
    if request.method != "HEAD" {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn write_head(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
