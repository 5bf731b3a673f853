//! Model resolution: turns a model source (a local directory in the published layout, or a
//! Hugging Face repo id `owner/name[@revision]`) into local paths of `pipeline.json` and, for each
//! pipeline model, `<stem>.json` + `<stem>.safetensors`.
//!
//! For a repo id only pipeline.json and the files it names are fetched, through hf-hub into the
//! standard Hugging Face cache (shared with Python). Environment, as huggingface_hub reads it:
//! HF_ENDPOINT, HF_HOME / HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE (then only the cache is used).
//! A file already in the cache for the revision is used without asking the Hub (hf-hub's `get`
//! semantics), so a warm cache costs no requests; pin `@<commit>` for exact reproducibility.
//! Every fresh download is checked against the announced size and the etag before it is kept.
//!
//! Stems follow the upstream TRELLIS convention: relative to the model directory, or, when that
//! file does not exist, `owner/repo/path/in/repo` on the Hub (how one pipeline reuses another
//! repo's checkpoint).
//!
//! recon's one extension of the layout: pipeline.json's `image_cond_model`, which upstream is a
//! torch.hub model name (`dinov2_vitl14_reg`), may instead name a checkpoint stem (any value
//! with a `/`, e.g. `ckpts/dinov2_tiny`), resolved and path-checked like the `models` stems
//! (see [`is_checkpoint_stem`]); small local test models use it.

mod config;
mod download;
mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use config::{
    read_checkpoint_config, read_json_file, CheckpointConfig, Normalization, PipelineConfig,
    SamplerConfig,
};

use config::check_safetensors_complete;
use download::{FetchError, HubClient, HubSettings};
use source::{RepoRef, Source, Stem};

use crate::error::{Error, Result};
use crate::logging::{LogFn, LogLevel};

/// The file every model source must have at its root.
pub const PIPELINE_JSON: &str = "pipeline.json";

/// How to resolve a model source.
pub struct ResolveOptions<'a> {
    /// Pipeline model keys to fetch and check; `None` means every key in pipeline.json.
    pub only_models: Option<&'a [&'a str]>,
    /// Pipeline model keys to leave out (e.g. decoders of formats nobody asked for); keys the
    /// pipeline does not have are ignored.
    pub skip_models: &'a [&'a str],
    /// Where progress and decisions are reported.
    pub log: &'a LogFn,
    /// Use only the local Hub cache; `None` reads HF_HUB_OFFLINE.
    pub offline: Option<bool>,
    /// Hub base URL; `None` reads HF_ENDPOINT, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// The hub cache folder (the one holding `models--owner--name`); `None` reads HF_HUB_CACHE,
    /// then HF_HOME/hub, then ~/.cache/huggingface/hub.
    pub cache_dir: Option<PathBuf>,
}

impl<'a> ResolveOptions<'a> {
    /// All models, settings from the environment, messages to `log`.
    pub fn new(log: &'a LogFn) -> Self {
        Self {
            only_models: None,
            skip_models: &[],
            log,
            offline: None,
            endpoint: None,
            cache_dir: None,
        }
    }
}

impl Default for ResolveOptions<'_> {
    /// As [`ResolveOptions::new`], logging to `tracing`.
    fn default() -> Self {
        Self::new(&crate::logging::tracing_sink)
    }
}

/// A model source resolved to local files.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPipeline {
    /// The source string as given.
    pub source: String,
    /// The directory holding pipeline.json (for a repo id, its snapshot folder in the cache).
    pub root: PathBuf,
    pub pipeline_json: PathBuf,
    pub config: PipelineConfig,
    /// The selected models, by pipeline model key.
    pub models: BTreeMap<String, ModelFiles>,
    /// `image_cond_model` when pipeline.json names it by a checkpoint stem (recon's extension)
    /// and it is selected; keyed [`IMAGE_COND_MODEL_KEY`]. `None` for a torch.hub name.
    pub image_cond_model: Option<ModelFiles>,
}

/// The key under which the image encoder is selected (`ResolveOptions::only_models`) and
/// reported: pipeline.json's `image_cond_model` field.
pub const IMAGE_COND_MODEL_KEY: &str = "image_cond_model";

/// Whether an `image_cond_model` value names a checkpoint stem (`<stem>.json` +
/// `<stem>.safetensors`, recon's extension) rather than a torch.hub model name: stems have a
/// `/` (`ckpts/dinov2_tiny`); hub names never do (`dinov2_vitl14_reg`).
pub fn is_checkpoint_stem(image_cond_model: &str) -> bool {
    image_cond_model.contains('/')
}

/// The two files of one pipeline model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The key in pipeline.json's `args.models`, e.g. `sparse_structure_decoder`.
    pub key: String,
    /// The stem as written in pipeline.json, e.g. `ckpts/ss_dec_conv3d_16l8_fp16`.
    pub stem: String,
    /// `<stem>.json`: `{"name": <class>, "args": {...}}`.
    pub config: PathBuf,
    /// `<stem>.safetensors`.
    pub weights: PathBuf,
}

/// Resolves `source` (a directory or `owner/name[@revision]`) to local files, downloading what a
/// repo id needs. Errors: InvalidArgument (unusable source or model key), Io (missing local file,
/// unwritable cache), Network (Hub unreachable or refusing, offline and not cached, broken
/// download), Format (malformed pipeline.json, checkpoint json or safetensors header).
pub fn resolve(source: &str, opts: &ResolveOptions<'_>) -> Result<ResolvedPipeline> {
    match source::parse_source(source)? {
        Source::Local(dir) => {
            (opts.log)(
                LogLevel::Info,
                &format!("loading models from {}", dir.display()),
            );
            let mut place = Local {
                root: dir,
                hub: LazyHub::new(opts),
            };
            resolve_with(source, &mut place, opts)
        }
        Source::Hub(repo) => {
            let hub = HubClient::new(&settings(opts), opts.log)?;
            let mode = if hub.offline() { ", offline" } else { "" };
            (opts.log)(
                LogLevel::Info,
                &format!(
                    "loading models from Hugging Face repo {repo} (cache {}{mode})",
                    hub.cache_dir().display()
                ),
            );
            let mut place = Hub { repo, hub };
            resolve_with(source, &mut place, opts)
        }
    }
}

/// Fetches named files of one Hub repo (`owner/name[@revision]`) into the Hub cache and returns
/// their local paths, in the order asked. For networks a pipeline names outside its own folder
/// (TRELLIS's `image_cond_model`); same cache, endpoint, token and offline rules as [`resolve`].
/// Errors: InvalidArgument (not a repo id, unsafe file name), Network, Io.
pub fn fetch_repo_files(
    repo: &str,
    files: &[&str],
    opts: &ResolveOptions<'_>,
) -> Result<Vec<PathBuf>> {
    let repo_ref = source::parse_repo_ref(repo).ok_or_else(|| {
        Error::invalid_argument(format!(
            "'{repo}' is not a Hugging Face repo id (owner/name[@revision])"
        ))
    })?;
    if let Some(bad) = files.iter().find(|f| !is_plain_repo_file(f)) {
        return Err(Error::invalid_argument(format!(
            "'{bad}' is not a file path inside a repo"
        )));
    }
    let hub = HubClient::new(&settings(opts), opts.log)?;
    files
        .iter()
        .map(|file| hub.fetch(&repo_ref, file).map_err(|e| e.error))
        .collect()
}

/// A relative path with no empty, `.` or `..` component (it becomes a path in the cache).
fn is_plain_repo_file(file: &str) -> bool {
    !file.is_empty()
        && !file.starts_with('/')
        && file
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'))
}

/// Where the pipeline's files come from: a local directory or a Hub repo.
trait Place {
    fn pipeline_json(&mut self) -> Result<PathBuf>;
    fn model(&mut self, key: &str, stem: &Stem) -> Result<(PathBuf, PathBuf)>;
}

fn resolve_with(
    source: &str,
    place: &mut dyn Place,
    opts: &ResolveOptions<'_>,
) -> Result<ResolvedPipeline> {
    let pipeline_json = place.pipeline_json()?;
    let config = PipelineConfig::read(&pipeline_json)?;
    let keys = selected_keys(&config, opts.only_models, &pipeline_json)?;
    let mut models = BTreeMap::new();
    for key in keys
        .into_iter()
        .filter(|k| !opts.skip_models.contains(&k.as_str()))
    {
        let files = resolve_stem(place, &key, &config.models[&key], &pipeline_json)?;
        models.insert(key, files);
    }
    let image_cond_model = match &config.image_cond_model {
        Some(stem)
            if is_checkpoint_stem(stem) && is_selected(opts.only_models, IMAGE_COND_MODEL_KEY) =>
        {
            Some(resolve_stem(
                place,
                IMAGE_COND_MODEL_KEY,
                stem,
                &pipeline_json,
            )?)
        }
        _ => None,
    };
    let root = match pipeline_json.parent() {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    Ok(ResolvedPipeline {
        source: source.to_string(),
        root,
        pipeline_json,
        config,
        models,
        image_cond_model,
    })
}

/// Checks one stem and finds (or fetches) its two files.
fn resolve_stem(
    place: &mut dyn Place,
    key: &str,
    stem_text: &str,
    pipeline_json: &Path,
) -> Result<ModelFiles> {
    let stem = Stem::parse(key, stem_text, pipeline_json)?;
    let (config, weights) = place.model(key, &stem)?;
    check_model_files(key, &config, &weights)?;
    Ok(ModelFiles {
        key: key.to_string(),
        stem: stem_text.to_string(),
        config,
        weights,
    })
}

/// Whether `key` is among the selected models (all are when there is no selection).
pub fn is_selected(only: Option<&[&str]>, key: &str) -> bool {
    only.is_none_or(|keys| keys.contains(&key))
}

fn selected_keys(
    config: &PipelineConfig,
    only: Option<&[&str]>,
    pipeline_json: &Path,
) -> Result<Vec<String>> {
    let Some(only) = only else {
        return Ok(config.models.keys().cloned().collect());
    };
    let mut keys = Vec::new();
    for key in only {
        // The image encoder is selectable by its field name (resolved apart from `models`).
        if *key == IMAGE_COND_MODEL_KEY && config.image_cond_model.is_some() {
            continue;
        }
        if !config.models.contains_key(*key) {
            let known: Vec<&str> = config.models.keys().map(String::as_str).collect();
            return Err(Error::invalid_argument(format!(
                "model '{key}' is not in {} (it has: {})",
                pipeline_json.display(),
                known.join(", ")
            )));
        }
        if !keys.iter().any(|k| k == key) {
            keys.push((*key).to_string());
        }
    }
    Ok(keys)
}

/// Reads what is cheap to read now, so a broken file is reported here with its model key rather
/// than deep inside model construction.
fn check_model_files(key: &str, config: &Path, weights: &Path) -> Result<()> {
    let context = |e: Error| e.context(format!("model '{key}'"));
    read_checkpoint_config(config).map_err(context)?;
    check_safetensors_complete(weights).map_err(context)
}

fn settings<'o>(opts: &'o ResolveOptions<'_>) -> HubSettings<'o> {
    HubSettings {
        endpoint: opts.endpoint.as_deref(),
        cache_dir: opts.cache_dir.as_deref(),
        offline: opts.offline,
    }
}

/// A local directory in the published layout.
struct Local<'o, 'a> {
    root: PathBuf,
    hub: LazyHub<'o, 'a>,
}

impl Place for Local<'_, '_> {
    fn pipeline_json(&mut self) -> Result<PathBuf> {
        let path = self.root.join(PIPELINE_JSON);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::io(format!(
                "{} not found: {} is not a model directory",
                path.display(),
                self.root.display()
            )))
        }
    }

    fn model(&mut self, key: &str, stem: &Stem) -> Result<(PathBuf, PathBuf)> {
        let config = self.root.join(stem.file("json"));
        let weights = self.root.join(stem.file("safetensors"));
        let (has_config, has_weights) = (config.is_file(), weights.is_file());
        if has_config && has_weights {
            return Ok((config, weights));
        }
        // Upstream falls back to the Hub when `{root}/{stem}` is not there at all.
        if !has_config && !has_weights {
            if let Some((repo, rest)) = stem.cross_repo() {
                let hub = self.hub.get()?;
                return fetch_pair(hub, &repo, &rest, key).map_err(|e| {
                    e.error.context(format!(
                        "{} not found, so the stem was read as a Hub path",
                        config.display()
                    ))
                });
            }
        }
        let missing = if has_config { &weights } else { &config };
        Err(Error::io(format!(
            "model '{key}': {} not found",
            missing.display()
        )))
    }
}

/// A Hub repo at a revision.
struct Hub<'a> {
    repo: RepoRef,
    hub: HubClient<'a>,
}

impl Place for Hub<'_> {
    fn pipeline_json(&mut self) -> Result<PathBuf> {
        self.hub.fetch(&self.repo, PIPELINE_JSON).map_err(|e| {
            e.error.context(format!(
                "'{}' is not a local directory, so it was taken as a Hugging Face repo id",
                self.repo.id
            ))
        })
    }

    fn model(&mut self, key: &str, stem: &Stem) -> Result<(PathBuf, PathBuf)> {
        match fetch_pair(&self.hub, &self.repo, stem, key) {
            Ok(pair) => Ok(pair),
            // Upstream tries `{repo}/{stem}` first, then the stem as `owner/repo/path`.
            Err(first) if first.not_found => match stem.cross_repo() {
                Some((repo, rest)) => fetch_pair(&self.hub, &repo, &rest, key).map_err(|second| {
                    second.error.context(format!(
                        "{}; and as a cross-repo path ({} in {repo})",
                        first.error,
                        rest.file("json")
                    ))
                }),
                None => Err(first.error),
            },
            Err(first) => Err(first.error),
        }
    }
}

/// Fetches `<stem>.json` then `<stem>.safetensors` from one repo; errors carry the model key.
fn fetch_pair(
    hub: &HubClient<'_>,
    repo: &RepoRef,
    stem: &Stem,
    key: &str,
) -> std::result::Result<(PathBuf, PathBuf), FetchError> {
    let fetch = |file: String| {
        hub.fetch(repo, &file).map_err(|e| FetchError {
            error: e.error.context(format!("model '{key}'")),
            not_found: e.not_found,
        })
    };
    let config = fetch(stem.file("json"))?;
    let weights = fetch(stem.file("safetensors"))?;
    Ok((config, weights))
}

/// A Hub client made only when a local pipeline needs a cross-repo file, so local runs never
/// depend on the Hub settings being usable.
struct LazyHub<'o, 'a> {
    opts: &'o ResolveOptions<'a>,
    client: Option<HubClient<'a>>,
}

impl<'o, 'a> LazyHub<'o, 'a> {
    fn new(opts: &'o ResolveOptions<'a>) -> Self {
        Self { opts, client: None }
    }

    fn get(&mut self) -> Result<&HubClient<'a>> {
        let client = match self.client.take() {
            Some(client) => client,
            None => HubClient::new(&settings(self.opts), self.opts.log)?,
        };
        Ok(self.client.insert(client))
    }
}
