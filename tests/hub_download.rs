//! Model resolution against a loopback server that speaks the Hub's download protocol, through
//! the real hf-hub client, plus local model directories. Each test has its own server and cache
//! folder and passes them through `ResolveOptions`, so nothing touches the environment.

#[allow(dead_code)]
mod support;

use std::path::PathBuf;

use recon::hub::{resolve, ResolveOptions, ResolvedPipeline};
use recon::logging::{LogFn, LogLevel};
use recon::{Error, ErrorKind};

use support::hub_server::{Fault, HubServer, ServedFile, ServedRepo};
use support::{
    checkpoint_json, model_files, pipeline_json, safetensors_bytes, trellis_repo,
    write_local_model, LogCapture, SLAT_FLOW, SS_DEC,
};

const REPO: &str = "microsoft/TRELLIS-image-large";

/// One fake Hub, one empty cache, one log.
struct Fixture {
    server: HubServer,
    cache: tempfile::TempDir,
    logs: LogCapture,
    sink: Box<LogFn>,
}

impl Fixture {
    fn new(repos: Vec<ServedRepo>) -> Self {
        let logs = LogCapture::default();
        Self {
            server: HubServer::start(repos),
            cache: tempfile::tempdir().unwrap(),
            sink: logs.sink(),
            logs,
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache.path().join("hub")
    }

    fn opts(&self, offline: bool) -> ResolveOptions<'_> {
        ResolveOptions {
            offline: Some(offline),
            endpoint: Some(self.server.endpoint()),
            cache_dir: Some(self.cache_dir()),
            ..ResolveOptions::new(&*self.sink)
        }
    }

    fn resolve(&self, source: &str, offline: bool) -> Result<ResolvedPipeline, Error> {
        resolve(source, &self.opts(offline))
    }

    /// The repo paths the server was asked for under /resolve/ (redirect targets left out).
    fn requested_files(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .filter_map(|r| r.split_once("/resolve/main/").map(|(_, f)| f.to_string()))
            .collect()
    }
}

fn expect_err(result: Result<ResolvedPipeline, Error>, kind: ErrorKind, needles: &[&str]) -> Error {
    let err = match result {
        Ok(resolved) => panic!("expected a {kind:?} error, got {resolved:#?}"),
        Err(err) => err,
    };
    eprintln!("{kind:?}: {err}"); // shown with --nocapture: what users would read
    assert_eq!(err.kind(), kind, "wrong kind for: {err}");
    for needle in needles {
        assert!(
            err.message().contains(needle),
            "`{err}` does not mention `{needle}`"
        );
    }
    err
}

fn assert_same_contents(resolved: &ResolvedPipeline, keys: &[(&str, &str)]) {
    let expected: std::collections::BTreeMap<String, Vec<u8>> = model_files().into_iter().collect();
    assert_eq!(
        std::fs::read(&resolved.pipeline_json).unwrap(),
        expected["pipeline.json"]
    );
    assert_eq!(resolved.models.len(), keys.len());
    for (key, stem) in keys {
        let files = &resolved.models[*key];
        assert_eq!(files.key, *key);
        assert_eq!(files.stem, *stem);
        assert_eq!(
            std::fs::read(&files.config).unwrap(),
            expected[&format!("{stem}.json")]
        );
        assert_eq!(
            std::fs::read(&files.weights).unwrap(),
            expected[&format!("{stem}.safetensors")]
        );
    }
}

#[test]
fn downloads_only_the_files_pipeline_json_names() {
    let fx = Fixture::new(vec![trellis_repo(REPO)]);
    let resolved = fx.resolve(REPO, false).unwrap();

    assert_same_contents(&resolved, &[SS_DEC, SLAT_FLOW]);
    assert_eq!(resolved.source, REPO);
    assert_eq!(resolved.root, resolved.pipeline_json.parent().unwrap());
    assert!(resolved.root.starts_with(fx.cache_dir()));
    assert_eq!(resolved.config.name, "TrellisImageTo3DPipeline");
    assert_eq!(
        resolved.config.image_cond_model.as_deref(),
        Some("dinov2_vitl14_reg")
    );
    assert_eq!(
        resolved
            .config
            .slat_normalization
            .as_ref()
            .unwrap()
            .mean
            .len(),
        8
    );
    let sampler = resolved.config.sparse_structure_sampler.as_ref().unwrap();
    assert_eq!(sampler.name, "FlowEulerGuidanceIntervalSampler");
    assert_eq!(sampler.params["steps"], 25);

    let mut files = fx.requested_files();
    files.sort();
    files.dedup();
    let mut expected: Vec<String> = model_files().into_iter().map(|(name, _)| name).collect();
    expected.sort();
    assert_eq!(files, expected, "requests: {:#?}", fx.server.requests());
    for request in fx.server.requests() {
        assert!(
            !request.contains("unrelated") && !request.contains("README"),
            "{request}"
        );
    }

    // Start and finish of each download are logged with the size.
    let info = fx.logs.lines(LogLevel::Info);
    let weights = format!("{}.safetensors", SLAT_FLOW.1);
    assert!(
        info.iter()
            .any(|l| l.starts_with("downloading") && l.contains(&weights) && l.contains("KiB")),
        "{info:#?}"
    );
    assert!(
        info.iter()
            .any(|l| l.starts_with("downloaded") && l.contains(&weights)),
        "{info:#?}"
    );
}

#[test]
fn cached_files_are_used_without_requests() {
    let fx = Fixture::new(vec![trellis_repo(REPO)]);
    let first = fx.resolve(REPO, false).unwrap();
    fx.server.clear_requests();

    let offline = fx.resolve(REPO, true).unwrap();
    assert_eq!(offline, first);
    let online_again = fx.resolve(REPO, false).unwrap();
    assert_eq!(online_again, first);
    assert_eq!(fx.server.requests(), Vec::<String>::new());
}

#[test]
fn only_models_limits_downloads() {
    let fx = Fixture::new(vec![trellis_repo(REPO)]);
    let only = [SS_DEC.0];
    let opts = ResolveOptions {
        only_models: Some(&only),
        ..fx.opts(false)
    };
    let resolved = resolve(REPO, &opts).unwrap();
    assert_same_contents(&resolved, &[SS_DEC]);
    assert!(
        fx.requested_files()
            .iter()
            .all(|f| !f.contains("slat_flow")),
        "{:#?}",
        fx.server.requests()
    );
    // The config still lists every model.
    assert_eq!(resolved.config.models.len(), 2);

    let unknown = ["slat_decoder_rf"];
    let opts = ResolveOptions {
        only_models: Some(&unknown),
        ..fx.opts(false)
    };
    expect_err(
        resolve(REPO, &opts),
        ErrorKind::InvalidArgument,
        &["slat_decoder_rf", "pipeline.json", SS_DEC.0],
    );
}

#[test]
fn offline_with_empty_cache_fails_naming_repo_and_file() {
    let fx = Fixture::new(vec![trellis_repo(REPO)]);
    expect_err(
        fx.resolve(REPO, true),
        ErrorKind::Network,
        &["offline", REPO, "pipeline.json"],
    );
    assert_eq!(fx.server.requests(), Vec::<String>::new());
}

#[test]
fn missing_file_is_a_network_error_naming_it() {
    let repo = ServedRepo::new(REPO).file(
        "pipeline.json",
        ServedFile::regular(pipeline_json(&[("ss_dec", "ckpts/gone")])),
    );
    let fx = Fixture::new(vec![repo]);
    let endpoint = fx.server.endpoint();
    expect_err(
        fx.resolve(REPO, false),
        ErrorKind::Network,
        &[
            "ckpts/gone.json",
            REPO,
            "revision main",
            &endpoint,
            "404",
            "ss_dec",
        ],
    );
}

#[test]
fn unknown_repo_and_unreachable_hub_are_network_errors() {
    let fx = Fixture::new(vec![trellis_repo(REPO)]);
    expect_err(
        fx.resolve("nobody/nothing", false),
        ErrorKind::Network,
        &["nobody/nothing", "401", "HF_TOKEN"],
    );

    // A port nothing listens on: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let opts = ResolveOptions {
        endpoint: Some(endpoint.clone()),
        ..fx.opts(false)
    };
    expect_err(
        resolve(REPO, &opts),
        ErrorKind::Network,
        &[&endpoint, "pipeline.json", REPO],
    );
}

/// A cut-off download fails, leaves nothing at the final path, and a later offline run does not
/// take it from the cache.
fn check_truncated(fault: Fault) {
    let weights = format!("{}.safetensors", SLAT_FLOW.1);
    let mut repo = trellis_repo(REPO);
    let file = repo.files.remove(&weights).unwrap().with_fault(fault);
    repo.files.insert(weights.clone(), file);
    let fx = Fixture::new(vec![repo.clone()]);

    expect_err(
        fx.resolve(REPO, false),
        ErrorKind::Network,
        &[&weights, REPO, SLAT_FLOW.0],
    );
    let snapshot = fx
        .cache_dir()
        .join("models--microsoft--TRELLIS-image-large")
        .join("snapshots")
        .join(&repo.commit);
    assert!(
        !snapshot.join(&weights).exists(),
        "a partial file sits at the final path"
    );
    expect_err(
        fx.resolve(REPO, true),
        ErrorKind::Network,
        &["offline", &weights],
    );
}

#[test]
fn truncated_download_with_content_length_is_rejected() {
    check_truncated(Fault::Truncate);
}

#[test]
fn broken_off_download_resumes_on_the_next_online_run() {
    let weights = format!("{}.safetensors", SLAT_FLOW.1);
    let fx = Fixture::new(vec![trellis_repo(REPO)]);
    fx.server.set_fault(REPO, &weights, Fault::Truncate);
    expect_err(fx.resolve(REPO, false), ErrorKind::Network, &[&weights]);

    fx.server.set_fault(REPO, &weights, Fault::None);
    fx.server.clear_requests();
    let resolved = fx.resolve(REPO, false).unwrap();
    assert_same_contents(&resolved, &[SS_DEC, SLAT_FLOW]);
    // Only the rest of the file was asked for (hf-hub keeps the .part file and sends a Range).
    let total = safetensors_bytes(70_000, 2).len();
    let resumed = format!("Range: bytes={}-", total / 2);
    assert!(
        fx.server.ranges().contains(&resumed),
        "{:#?}",
        fx.server.ranges()
    );
}

#[test]
fn truncated_download_without_content_length_is_rejected() {
    check_truncated(Fault::TruncateUnannounced);
}

#[test]
fn corrupt_download_fails_its_sha256() {
    check_truncated(Fault::Corrupt);
}

#[test]
fn malformed_pipeline_json_is_a_format_error() {
    let bad_json = ServedRepo::new("a/bad-json").file(
        "pipeline.json",
        ServedFile::regular("{\"name\": \"P\", \"args\": {"),
    );
    let no_models = ServedRepo::new("a/no-models").file(
        "pipeline.json",
        ServedFile::regular(r#"{"name": "P", "args": {"slat_sampler": null}}"#),
    );
    let fx = Fixture::new(vec![bad_json, no_models]);
    expect_err(
        fx.resolve("a/bad-json", false),
        ErrorKind::Format,
        &["pipeline.json", "invalid JSON"],
    );
    expect_err(
        fx.resolve("a/no-models", false),
        ErrorKind::Format,
        &["pipeline.json", "args.models"],
    );
}

#[test]
fn stems_that_escape_the_model_directory_are_refused() {
    for stem in [
        "../../../etc/passwd",
        "/etc/passwd",
        "C:\\\\Windows\\\\x",
        "ckpts/../../x",
    ] {
        let repo = ServedRepo::new(REPO).file(
            "pipeline.json",
            ServedFile::regular(pipeline_json(&[SS_DEC, ("evil", stem)])),
        );
        let fx = Fixture::new(vec![repo]);
        let shown = stem.replace("\\\\", "\\");
        expect_err(
            fx.resolve(REPO, false),
            ErrorKind::Format,
            &["evil", &shown],
        );
        let mut files = fx.requested_files();
        files.dedup(); // hf-hub asks twice: a one-byte metadata probe, then the download
        assert_eq!(files, vec!["pipeline.json".to_string()], "{stem}");
    }
}

#[test]
fn cross_repo_stems_are_fetched_from_the_named_repo() {
    // As TRELLIS-text does: its decoder lives in TRELLIS-image-large.
    let shared = format!("{REPO}/{}", SS_DEC.1);
    let text = ServedRepo::new("microsoft/TRELLIS-text-base").file(
        "pipeline.json",
        ServedFile::regular(pipeline_json(&[(SS_DEC.0, &shared)])),
    );
    let fx = Fixture::new(vec![text, trellis_repo(REPO)]);
    let resolved = fx.resolve("microsoft/TRELLIS-text-base", false).unwrap();
    let files = &resolved.models[SS_DEC.0];
    assert_eq!(files.stem, shared);
    assert_eq!(
        std::fs::read(&files.weights).unwrap(),
        safetensors_bytes(1000, 1)
    );
    assert!(files.weights.starts_with(
        fx.cache_dir()
            .join("models--microsoft--TRELLIS-image-large")
    ));

    // And from a local directory whose pipeline.json names a file it does not have.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.json"),
        pipeline_json(&[(SS_DEC.0, &shared)]),
    )
    .unwrap();
    let resolved = fx.resolve(dir.path().to_str().unwrap(), true).unwrap();
    assert_eq!(resolved.models[SS_DEC.0].weights, files.weights);
}

#[test]
fn revision_suffix_selects_the_revision() {
    let mut repo = trellis_repo(REPO);
    repo.revisions = vec!["v1.0".to_string()];
    let commit = repo.commit.clone();
    let fx = Fixture::new(vec![repo]);
    let resolved = fx.resolve(&format!("{REPO}@v1.0"), false).unwrap();
    assert!(resolved.root.ends_with(&commit));
    assert!(fx
        .server
        .requests()
        .iter()
        .all(|r| !r.contains("/resolve/") || r.contains("/resolve/v1.0/")));
    expect_err(
        fx.resolve(REPO, false),
        ErrorKind::Network,
        &["revision main", "404"],
    );
}

#[test]
fn big_downloads_report_progress() {
    let big = safetensors_bytes(5 << 20, 3); // 20 MiB of data
    let repo = ServedRepo::new(REPO)
        .file(
            "pipeline.json",
            ServedFile::regular(pipeline_json(&[("big", "ckpts/big")])),
        )
        .file(
            "ckpts/big.json",
            ServedFile::regular(checkpoint_json("SLatFlowModel")),
        )
        .file("ckpts/big.safetensors", ServedFile::lfs(big));
    let fx = Fixture::new(vec![repo]);
    fx.resolve(REPO, false).unwrap();
    let info = fx.logs.lines(LogLevel::Info);
    let progress: Vec<_> = info
        .iter()
        .filter(|l| l.contains("big.safetensors") && l.contains('%'))
        .collect();
    assert!(!progress.is_empty() && progress.len() <= 9, "{info:#?}");
}

#[test]
fn local_directories() {
    let dir = tempfile::tempdir().unwrap();
    write_local_model(dir.path());
    let fx = Fixture::new(vec![]);
    let source = dir.path().to_str().unwrap();

    let resolved = fx.resolve(source, false).unwrap();
    assert_same_contents(&resolved, &[SS_DEC, SLAT_FLOW]);
    assert_eq!(resolved.root, dir.path());
    assert_eq!(
        resolved.models[SS_DEC.0].config,
        dir.path().join(format!("{}.json", SS_DEC.1))
    );
    assert_eq!(fx.server.requests(), Vec::<String>::new());

    let weights = dir.path().join(format!("{}.safetensors", SLAT_FLOW.1));
    std::fs::remove_file(&weights).unwrap();
    let shown = weights.display().to_string();
    expect_err(
        fx.resolve(source, false),
        ErrorKind::Io,
        &[&shown, SLAT_FLOW.0],
    );

    // A truncated local checkpoint is caught by its safetensors header.
    std::fs::write(&weights, &safetensors_bytes(70_000, 2)[..1000]).unwrap();
    expect_err(
        fx.resolve(source, false),
        ErrorKind::Format,
        &[&shown, SLAT_FLOW.0],
    );

    std::fs::write(
        dir.path().join("pipeline.json"),
        pipeline_json(&[("evil", "../outside")]),
    )
    .unwrap();
    expect_err(
        fx.resolve(source, false),
        ErrorKind::Format,
        &["evil", "../outside"],
    );
}

#[test]
fn sources_that_are_neither_directories_nor_repo_ids() {
    let fx = Fixture::new(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/model");
    let shown = missing.to_str().unwrap();
    expect_err(
        fx.resolve(shown, false),
        ErrorKind::Io,
        &[shown, "does not exist"],
    );
    expect_err(
        fx.resolve("./models/x", false),
        ErrorKind::Io,
        &["./models/x"],
    );
    expect_err(
        fx.resolve("trellis", false),
        ErrorKind::InvalidArgument,
        &["trellis"],
    );
    expect_err(
        fx.resolve("", false),
        ErrorKind::InvalidArgument,
        &["empty"],
    );

    let file = dir.path().join("pipeline.json");
    std::fs::write(&file, "{}").unwrap();
    expect_err(
        fx.resolve(file.to_str().unwrap(), false),
        ErrorKind::InvalidArgument,
        &["is a file"],
    );

    // A directory without pipeline.json.
    let empty = tempfile::tempdir().unwrap();
    expect_err(
        fx.resolve(empty.path().to_str().unwrap(), false),
        ErrorKind::Io,
        &["pipeline.json"],
    );
    assert_eq!(fx.server.requests(), Vec::<String>::new());
}

#[test]
fn checkpoint_config_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    write_local_model(dir.path());
    let path = dir.path().join(format!("{}.json", SS_DEC.1));
    let cfg = recon::hub::read_checkpoint_config(&path).unwrap();
    assert_eq!(cfg.class, "SparseStructureDecoder");
    assert_eq!(cfg.args["resolution"], 16);

    std::fs::write(&path, r#"{"args": {}}"#).unwrap();
    let err = recon::hub::read_checkpoint_config(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Format);
    assert!(
        err.message().contains("`name` is missing")
            && err.message().contains(path.to_str().unwrap()),
        "{err}"
    );
    let fx = Fixture::new(vec![]);
    expect_err(
        fx.resolve(dir.path().to_str().unwrap(), false),
        ErrorKind::Format,
        &[SS_DEC.0, "`name` is missing"],
    );
}
