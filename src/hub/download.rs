//! Hub access through hf-hub's sync (ureq) API, with what hf-hub 0.4.3 leaves out:
//! - environment: hf-hub reads only HF_HOME and HF_ENDPOINT (in `ApiBuilder::from_env`) and the
//!   token file; HF_HUB_OFFLINE, HF_HUB_CACHE and HF_TOKEN are handled here;
//! - offline mode: answered from the cache without building a client;
//! - integrity: hf-hub renames its `.part` file into the blob store whenever the body reader ends
//!   without an I/O error, never checking the size it got from the metadata request. ureq catches
//!   a body shorter than Content-Length, but not one whose length the server did not announce, and
//!   nothing checks content. So every download is checked here against the announced size and the
//!   etag (sha256 for LFS files, git blob sha1 for the others), and removed from the cache if it
//!   fails, so a later offline run cannot pick it up;
//! - errors: hf-hub's `ApiError` becomes Network (HTTP status, transport, truncation) or Io (cache
//!   writes), naming repo, revision, file and endpoint; progress goes to the caller's log.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::source::RepoRef;
use crate::error::{Error, Result};
use crate::logging::{LogFn, LogLevel};

pub(crate) const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files at least this big get periodic progress lines, not just start and finish.
const PROGRESS_MIN_SIZE: u64 = 16 << 20;
/// Longest silence between progress lines of a big download.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// A failed fetch; `not_found` tells the caller a cross-repo fallback is worth trying (HTTP 404, or
/// not in the cache while offline), as opposed to a failure that would repeat for any file.
#[derive(Debug)]
pub(crate) struct FetchError {
    pub error: Error,
    pub not_found: bool,
}

impl FetchError {
    fn other(error: Error) -> Self {
        Self {
            error,
            not_found: false,
        }
    }
}

/// Where and how to reach the Hub; `None` fields fall back to the environment.
pub(crate) struct HubSettings<'a> {
    pub endpoint: Option<&'a str>,
    pub cache_dir: Option<&'a Path>,
    pub offline: Option<bool>,
}

/// Fetches single files of Hub repos into the standard cache layout
/// (`<cache>/models--owner--name/{blobs,snapshots,refs}`), shared with Python's huggingface_hub.
pub(crate) struct HubClient<'a> {
    endpoint: String,
    cache_dir: PathBuf,
    cache: Cache,
    /// `None` in offline mode: nothing may touch the network.
    api: Option<Api>,
    log: &'a LogFn,
}

impl<'a> HubClient<'a> {
    pub(crate) fn new(settings: &HubSettings<'_>, log: &'a LogFn) -> Result<Self> {
        let endpoint = settings
            .endpoint
            .map(str::to_string)
            .or_else(|| env_nonempty("HF_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let cache_dir = match settings.cache_dir {
            Some(dir) => dir.to_path_buf(),
            None => default_cache_dir()?,
        };
        let offline = settings.offline.unwrap_or_else(offline_from_env);
        let api = if offline {
            None
        } else {
            Some(build_api(&endpoint, &cache_dir)?)
        };
        Ok(Self {
            endpoint,
            cache: Cache::new(cache_dir.clone()),
            cache_dir,
            api,
            log,
        })
    }

    pub(crate) fn offline(&self) -> bool {
        self.api.is_none()
    }

    pub(crate) fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The local path of `file` in `repo`: from the cache if present there, else downloaded.
    pub(crate) fn fetch(
        &self,
        repo: &RepoRef,
        file: &str,
    ) -> std::result::Result<PathBuf, FetchError> {
        let hf_repo = Repo::with_revision(repo.id.clone(), RepoType::Model, repo.revision.clone());
        if let Some(path) = self.cached(&hf_repo, file) {
            self.say(
                LogLevel::Debug,
                &format!("using cached {file} from {repo}: {}", path.display()),
            );
            return Ok(path);
        }
        match &self.api {
            Some(api) => self.download(api, hf_repo, repo, file),
            None => Err(FetchError {
                error: Error::network(format!(
                    "offline mode (HF_HUB_OFFLINE or the caller's offline setting): {file} from {} \
                     (revision {}) is not in the Hub cache {}; run once online to download it",
                    repo.id,
                    repo.revision,
                    self.cache_dir.display()
                )),
                not_found: true,
            }),
        }
    }

    /// hf-hub's cache lookup (refs/<revision> → snapshots/<commit>/<file>), plus what Python does
    /// for a revision that is itself a commit hash: look in snapshots/<hash> directly.
    fn cached(&self, repo: &Repo, file: &str) -> Option<PathBuf> {
        let found = self.cache.repo(repo.clone()).get(file).or_else(|| {
            is_hex(repo.revision(), 40).then(|| {
                self.cache_dir
                    .join(repo.folder_name())
                    .join("snapshots")
                    .join(repo.revision())
                    .join(file)
            })
        })?;
        // `is_file` follows the symlink, so a dangling pointer (blob removed) is not a hit.
        found.is_file().then_some(found)
    }

    fn download(
        &self,
        api: &Api,
        hf_repo: Repo,
        repo: &RepoRef,
        file: &str,
    ) -> std::result::Result<PathBuf, FetchError> {
        self.prepare_cache(&hf_repo).map_err(FetchError::other)?;
        let ctx = self.context(repo, file);
        let mut progress = LogProgress::new(self.log, format!("{file} from {repo}"));
        // hf-hub unwraps on some malformed answers (a redirect without Location, say); a broken
        // server must not look like a bug in recon.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            api.repo(hf_repo)
                .download_with_progress(file, &mut progress)
        }));
        let path = match outcome {
            Ok(Ok(path)) => path,
            Ok(Err(err)) => return Err(self.api_error(err, &ctx, &progress)),
            Err(panic) => {
                return Err(FetchError::other(Error::network(format!(
                    "{ctx}: unexpected answer from the server ({})",
                    crate::error::panic_message(panic.as_ref())
                ))))
            }
        };
        verify_download(&path, progress.expected, &ctx).map_err(FetchError::other)?;
        progress.finished(&path);
        Ok(path)
    }

    /// Creates the repo's blob folder first, so that an unwritable cache is reported as Io with
    /// the folder named, rather than surfacing mid-download.
    fn prepare_cache(&self, repo: &Repo) -> Result<()> {
        let blobs = self.cache_dir.join(repo.folder_name()).join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| {
            Error::io(format!(
                "cannot create the Hub cache folder {}: {e} (set HF_HOME or HF_HUB_CACHE to a \
                 writable folder)",
                blobs.display()
            ))
        })
    }

    fn context(&self, repo: &RepoRef, file: &str) -> String {
        format!(
            "cannot download {file} from {} (revision {}) at {}",
            repo.id, repo.revision, self.endpoint
        )
    }

    fn api_error(&self, err: ApiError, ctx: &str, progress: &LogProgress<'_>) -> FetchError {
        match err {
            ApiError::RequestError(err) => match *err {
                ureq::Error::Status(code, response) => status_error(code, &response, ctx),
                ureq::Error::Transport(transport) => {
                    FetchError::other(Error::network(format!("{ctx}: {transport}")))
                }
            },
            ApiError::IoError(err) if is_local_io(&err) => FetchError::other(Error::io(format!(
                "{ctx}: writing into the Hub cache {} failed: {err}",
                self.cache_dir.display()
            ))),
            ApiError::IoError(err) => FetchError::other(Error::network(format!(
                "{ctx}: the transfer broke off after {} bytes: {err}; the partial download stays \
                 in the cache as a .part file and is resumed by the next online run",
                progress.progress_text()
            ))),
            ApiError::MissingHeader(header) | ApiError::InvalidHeader(header) => {
                FetchError::other(Error::network(format!(
                    "{ctx}: the answer lacks a valid `{header}` header; is {} a Hugging Face Hub \
                     endpoint?",
                    self.endpoint
                )))
            }
            ApiError::ParseIntError(err) => FetchError::other(Error::network(format!(
                "{ctx}: cannot read the file size from the server's Content-Range: {err}"
            ))),
            ApiError::TooManyRetries(inner) => self.api_error(*inner, ctx, progress),
            ApiError::InvalidResume => FetchError::other(Error::io(format!(
                "{ctx}: a partial download (.part file) under {} is larger than the file; delete \
                 it and retry",
                self.cache_dir.display()
            ))),
            ApiError::LockAcquisition(lock) => FetchError::other(Error::io(format!(
                "{ctx}: another process holds the download lock {}; retry when it is done, or \
                 delete the lock file if no download is running",
                lock.display()
            ))),
            // Variants behind hf-hub features we do not enable (native-tls) but another crate
            // in the build might.
            #[allow(unreachable_patterns)]
            other => FetchError::other(Error::network(format!("{ctx}: {other}"))),
        }
    }

    fn say(&self, level: LogLevel, message: &str) {
        (self.log)(level, message);
    }
}

fn status_error(code: u16, response: &ureq::Response, ctx: &str) -> FetchError {
    // The Hub explains refusals in these headers (e.g. EntryNotFound, GatedRepo).
    let mut detail = String::new();
    if let Some(kind) = response.header("x-error-code") {
        detail.push_str(&format!(" [{kind}]"));
    }
    if let Some(message) = response.header("x-error-message") {
        detail.push_str(&format!(" {message}"));
    }
    let hint = match (code, response.header("x-error-code")) {
        (401 | 403, _) => {
            "; the repo may not exist, or be private or gated: check the id, accept its terms on \
             the Hub and set HF_TOKEN"
        }
        (404, Some("RevisionNotFound")) => "; no such branch, tag or commit in the repo",
        (404, _) => "; no such file in the repo at this revision",
        (429, _) => "; rate limited by the Hub, retry later",
        _ => "",
    };
    FetchError {
        error: Error::network(format!(
            "{ctx}: HTTP {code} {}{detail}{hint}",
            response.status_text()
        )),
        not_found: code == 404,
    }
}

/// I/O error kinds that can only come from the local file system, not from the socket (hf-hub
/// reports both through one `IoError` variant).
fn is_local_io(err: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        err.kind(),
        K::PermissionDenied
            | K::NotFound
            | K::AlreadyExists
            | K::ReadOnlyFilesystem
            | K::StorageFull
            | K::FileTooLarge
            | K::IsADirectory
            | K::NotADirectory
            | K::DirectoryNotEmpty
            | K::CrossesDevices
            | K::OutOfMemory
    )
}

fn build_api(endpoint: &str, cache_dir: &Path) -> Result<Api> {
    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        return Err(Error::invalid_argument(format!(
            "Hub endpoint '{endpoint}' (HF_ENDPOINT) must start with https:// or http://"
        )));
    }
    // `from_cache` rather than `new`: `Cache::default()` panics when there is no home directory.
    let mut builder = ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf()))
        .with_endpoint(endpoint.to_string())
        .with_progress(false)
        .with_user_agent("recon", env!("CARGO_PKG_VERSION"));
    // hf-hub only reads the token file next to the cache; HF_TOKEN and HF_TOKEN_PATH win over it,
    // as in Python.
    if let Some(token) = token_from_env() {
        builder = builder.with_token(Some(token));
    }
    builder
        .build()
        .map_err(|e| Error::network(format!("cannot set up the HTTP client for {endpoint}: {e}")))
}

fn token_from_env() -> Option<String> {
    if let Some(token) = env_nonempty("HF_TOKEN") {
        return Some(token);
    }
    let path = env_nonempty("HF_TOKEN_PATH")?;
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// HF_HUB_OFFLINE as huggingface_hub reads it: 1/true/yes/on, any case.
pub(crate) fn offline_from_env() -> bool {
    is_truthy(env_nonempty("HF_HUB_OFFLINE").as_deref())
}

fn is_truthy(value: Option<&str>) -> bool {
    value.is_some_and(|value| {
        matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The hub cache folder, in huggingface_hub's order: HF_HUB_CACHE, HF_HOME/hub,
/// XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
pub(crate) fn default_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = env_nonempty("HF_HUB_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(home) = env_nonempty("HF_HOME") {
        return Ok(PathBuf::from(home).join("hub"));
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("huggingface").join("hub"));
    }
    let home = env_nonempty("HOME")
        .or_else(|| env_nonempty("USERPROFILE"))
        .ok_or_else(|| {
            Error::invalid_argument(
                "cannot locate the Hugging Face cache: no home directory; set HF_HOME",
            )
        })?;
    Ok(PathBuf::from(home)
        .join(".cache")
        .join("huggingface")
        .join("hub"))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Checks a fresh download against the size the server announced and against its etag, and
/// removes it from the cache when either disagrees.
fn verify_download(path: &Path, expected: Option<u64>, ctx: &str) -> Result<()> {
    let actual = std::fs::metadata(path)
        .map_err(|e| Error::io_at(path, &e))?
        .len();
    if let Some(expected) = expected.filter(|&expected| expected != actual) {
        let removed = discard(path);
        return Err(Error::network(format!(
            "{ctx}: incomplete download, {actual} of {expected} bytes arrived; {removed}"
        )));
    }
    let Some(etag) = blob_etag(path) else {
        return Ok(());
    };
    if let Some((algorithm, digest)) = digest_for_etag(path, &etag)? {
        if digest != etag {
            let removed = discard(path);
            return Err(Error::network(format!(
                "{ctx}: corrupt download, {algorithm} is {digest} but the Hub says {etag}; \
                 {removed}"
            )));
        }
    }
    Ok(())
}

/// hf-hub stores each file as a blob named by its etag, linked from the snapshot folder.
fn blob_etag(pointer: &Path) -> Option<String> {
    let target = std::fs::read_link(pointer).ok()?;
    Some(target.file_name()?.to_str()?.to_ascii_lowercase())
}

/// The Hub's etag is the sha256 of an LFS file and the git blob sha1 of any other file; other
/// etag shapes (mirrors, proxies) cannot be checked.
fn digest_for_etag(path: &Path, etag: &str) -> Result<Option<(&'static str, String)>> {
    if is_hex(etag, 64) {
        let digest = hash_file(path, Sha256::new(), None)?;
        Ok(Some(("sha256", digest)))
    } else if is_hex(etag, 40) {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io_at(path, &e))?
            .len();
        let digest = hash_file(path, Sha1::new(), Some(format!("blob {len}\0")))?;
        Ok(Some(("git blob sha1", digest)))
    } else {
        Ok(None)
    }
}

fn hash_file<D: Digest>(path: &Path, mut hasher: D, prefix: Option<String>) -> Result<String> {
    if let Some(prefix) = prefix {
        hasher.update(prefix.as_bytes());
    }
    let mut file = std::fs::File::open(path).map_err(|e| Error::io_at(path, &e))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io_at(path, &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Removes a bad download (the blob and the snapshot link to it) and says what happened.
fn discard(pointer: &Path) -> String {
    let blob = std::fs::read_link(pointer)
        .ok()
        .and_then(|target| pointer.parent().map(|dir| dir.join(target)));
    let mut failures = Vec::new();
    for path in blob.iter().map(PathBuf::as_path).chain([pointer]) {
        if let Err(err) = std::fs::remove_file(path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                failures.push(format!("{}: {err}", path.display()));
            }
        }
    }
    if failures.is_empty() {
        "it was removed from the cache".to_string()
    } else {
        format!(
            "removing it from the cache failed ({}); delete it by hand",
            failures.join("; ")
        )
    }
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Turns hf-hub's per-chunk callbacks into a few log lines: start, every 10% or 5 s for big
/// files, finish.
struct LogProgress<'a> {
    log: &'a LogFn,
    label: String,
    expected: Option<u64>,
    received: u64,
    started: Option<Instant>,
    last_report: Instant,
    reported_tenths: u64,
}

impl<'a> LogProgress<'a> {
    fn new(log: &'a LogFn, label: String) -> Self {
        Self {
            log,
            label,
            expected: None,
            received: 0,
            started: None,
            last_report: Instant::now(),
            reported_tenths: 0,
        }
    }

    fn progress_text(&self) -> String {
        match self.expected {
            Some(total) => format!("{} of {}", self.received, total),
            None => self.received.to_string(),
        }
    }

    fn maybe_report(&mut self) {
        let Some(total) = self.expected.filter(|&total| total >= PROGRESS_MIN_SIZE) else {
            return;
        };
        if self.received == 0 || self.received >= total {
            return;
        }
        let tenths = self.received * 10 / total;
        let now = Instant::now();
        if tenths <= self.reported_tenths && now - self.last_report < PROGRESS_INTERVAL {
            return;
        }
        self.reported_tenths = tenths;
        self.last_report = now;
        let message = format!(
            "downloading {}: {}% ({} of {}, {})",
            self.label,
            self.received * 100 / total,
            human_bytes(self.received),
            human_bytes(total),
            self.rate()
        );
        (self.log)(LogLevel::Info, &message);
    }

    fn rate(&self) -> String {
        let seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        if seconds <= 0.0 {
            return "-".to_string();
        }
        format!("{}/s", human_bytes((self.received as f64 / seconds) as u64))
    }

    fn finished(&self, path: &Path) {
        let seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let message = format!(
            "downloaded {} ({}) in {seconds:.1} s to {}",
            self.label,
            human_bytes(self.received),
            path.display()
        );
        (self.log)(LogLevel::Info, &message);
    }
}

// On `&mut` so that the state stays readable after hf-hub, which takes the progress by value.
impl Progress for &mut LogProgress<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        // hf-hub calls this once before and once per transfer attempt; announce only once.
        self.expected = Some(size as u64);
        self.received = 0;
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.last_report = Instant::now();
            let message = format!("downloading {} ({})", self.label, human_bytes(size as u64));
            (self.log)(LogLevel::Info, &message);
        }
    }

    fn update(&mut self, size: usize) {
        self.received += size as u64;
        self.maybe_report();
    }

    fn finish(&mut self) {}
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1_130_770_840), "1.1 GiB");
    }

    #[test]
    fn offline_values() {
        for yes in ["1", "true", "YES", " On "] {
            assert!(is_truthy(Some(yes)), "{yes}");
        }
        for no in ["0", "false", "", "offline"] {
            assert!(!is_truthy(Some(no)), "{no}");
        }
        assert!(!is_truthy(None));
    }

    #[test]
    fn git_blob_sha1() {
        // `printf 'hello\n' | git hash-object --stdin`
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello\n").unwrap();
        let etag = "ce013625030ba8dba906f756967f9e9ca394464a";
        let (_, digest) = digest_for_etag(&path, etag).unwrap().unwrap();
        assert_eq!(digest, etag);
    }
}
