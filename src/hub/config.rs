//! pipeline.json and ckpts/<stem>.json: parsing with errors that name the file and the field.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use super::source::Stem;
use crate::error::{Error, Result};

/// `pipeline.json`: `{"name": <pipeline class>, "args": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// The pipeline class, e.g. `TrellisImageTo3DPipeline` or `TrellisVGGTTo3DPipeline`.
    pub name: String,
    /// `args.models`: pipeline model key → path stem (relative to the repo, or cross-repo
    /// `owner/repo/path`). Every stem has been checked not to escape the model directory.
    pub models: BTreeMap<String, String>,
    pub sparse_structure_sampler: Option<SamplerConfig>,
    pub slat_sampler: Option<SamplerConfig>,
    pub slat_normalization: Option<Normalization>,
    pub image_cond_model: Option<String>,
    /// The raw `args` object, for fields not modelled here.
    pub args: Value,
}

/// A sampler entry: built upstream as `samplers.<name>(**args)`, called with `**params`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    pub name: String,
    pub args: Value,
    pub params: Value,
}

/// Per-channel statistics of the structured latent (`slat_normalization`).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// A checkpoint's `<stem>.json`: `{"name": <model class>, "args": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// The model class, e.g. `SparseStructureFlowModel`.
    pub class: String,
    /// Constructor keyword arguments.
    pub args: Value,
}

/// Reads and parses a JSON file: Io if it cannot be read, Format (with line and column) if it is
/// not JSON.
pub fn read_json_file(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io_at(path, &e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(format!("{}: invalid JSON: {e}", path.display())))
}

/// Reads `ckpts/<stem>.json`.
pub fn read_checkpoint_config(path: &Path) -> Result<CheckpointConfig> {
    let value = read_json_file(path)?;
    let fields = Fields::new(&value, path, "")?;
    Ok(CheckpointConfig {
        class: fields.string("name")?.to_string(),
        args: Value::Object(fields.object("args")?.clone()),
    })
}

impl PipelineConfig {
    /// Reads and parses `pipeline.json`.
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_json(&read_json_file(path)?, path)
    }

    /// Parses an already-read pipeline.json; `file` only names the source in errors.
    pub fn from_json(value: &Value, file: &Path) -> Result<Self> {
        let top = Fields::new(value, file, "")?;
        let name = top.string("name")?.to_string();
        let args_value = top.required("args")?;
        let args = Fields::new(args_value, file, "args")?;
        Ok(Self {
            name,
            models: parse_models(&args)?,
            sparse_structure_sampler: parse_optional(&args, "sparse_structure_sampler", sampler)?,
            slat_sampler: parse_optional(&args, "slat_sampler", sampler)?,
            slat_normalization: parse_optional(&args, "slat_normalization", normalization)?,
            image_cond_model: parse_optional(&args, "image_cond_model", |f| {
                Ok(f.expect_str()?.to_string())
            })?,
            args: args_value.clone(),
        })
    }
}

fn parse_models(args: &Fields<'_>) -> Result<BTreeMap<String, String>> {
    let models = args.object("models")?;
    if models.is_empty() {
        return Err(args.error("models", "is empty"));
    }
    let at = args.child("models");
    let mut out = BTreeMap::new();
    for (key, stem) in models {
        let stem = stem
            .as_str()
            .ok_or_else(|| at.error(key, &format!("must be a string, found {}", kind(stem))))?;
        Stem::parse(key, stem, args.file)?;
        out.insert(key.clone(), stem.to_string());
    }
    Ok(out)
}

/// A field that may be absent or `null`; present values must parse.
fn parse_optional<T>(
    args: &Fields<'_>,
    name: &str,
    parse: impl Fn(&Field<'_>) -> Result<T>,
) -> Result<Option<T>> {
    match args.map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => parse(&Field {
            value,
            file: args.file,
            path: args.path_of(name),
        })
        .map(Some),
    }
}

fn sampler(field: &Field<'_>) -> Result<SamplerConfig> {
    let fields = Fields::new(field.value, field.file, &field.path)?;
    Ok(SamplerConfig {
        name: fields.string("name")?.to_string(),
        args: Value::Object(fields.object("args")?.clone()),
        params: Value::Object(fields.object("params")?.clone()),
    })
}

fn normalization(field: &Field<'_>) -> Result<Normalization> {
    let fields = Fields::new(field.value, field.file, &field.path)?;
    let mean = fields.numbers("mean")?;
    let std = fields.numbers("std")?;
    if mean.is_empty() || mean.len() != std.len() {
        return Err(Error::format(format!(
            "{}: `{}` has {} mean and {} std values; they must be equal and non-zero in number",
            field.file.display(),
            field.path,
            mean.len(),
            std.len()
        )));
    }
    // A zero std would turn the latent into inf/NaN when normalising.
    if let Some(i) = std.iter().position(|s| *s <= 0.0) {
        return Err(fields.error("std", &format!("has a non-positive entry at index {i}")));
    }
    Ok(Normalization { mean, std })
}

/// One JSON value at a dotted path inside a file, for error messages.
struct Field<'a> {
    value: &'a Value,
    file: &'a Path,
    path: String,
}

impl Field<'_> {
    fn expect_str(&self) -> Result<&str> {
        self.value.as_str().ok_or_else(|| {
            Error::format(format!(
                "{}: field `{}` must be a string, found {}",
                self.file.display(),
                self.path,
                kind(self.value)
            ))
        })
    }
}

/// A JSON object at a dotted path inside a file, with typed accessors whose errors name both.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    file: &'a Path,
    path: String,
}

impl<'a> Fields<'a> {
    fn new(value: &'a Value, file: &'a Path, path: &str) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| {
            let what = if path.is_empty() {
                "the top level".to_string()
            } else {
                format!("field `{path}`")
            };
            Error::format(format!(
                "{}: {what} must be a JSON object, found {}",
                file.display(),
                kind(value)
            ))
        })?;
        Ok(Self {
            map,
            file,
            path: path.to_string(),
        })
    }

    fn path_of(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn child(&self, name: &str) -> Fields<'a> {
        Fields {
            map: self.map,
            file: self.file,
            path: self.path_of(name),
        }
    }

    fn error(&self, name: &str, what: &str) -> Error {
        Error::format(format!(
            "{}: field `{}` {what}",
            self.file.display(),
            self.path_of(name)
        ))
    }

    fn required(&self, name: &str) -> Result<&'a Value> {
        self.map
            .get(name)
            .ok_or_else(|| self.error(name, "is missing"))
    }

    fn string(&self, name: &str) -> Result<&'a str> {
        let value = self.required(name)?;
        value
            .as_str()
            .ok_or_else(|| self.error(name, &format!("must be a string, found {}", kind(value))))
    }

    fn object(&self, name: &str) -> Result<&'a Map<String, Value>> {
        let value = self.required(name)?;
        value
            .as_object()
            .ok_or_else(|| self.error(name, &format!("must be an object, found {}", kind(value))))
    }

    fn numbers(&self, name: &str) -> Result<Vec<f64>> {
        let value = self.required(name)?;
        let items = value.as_array().ok_or_else(|| {
            self.error(
                name,
                &format!("must be an array of numbers, found {}", kind(value)),
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                    self.error(name, &format!("has a non-number at index {i}: {item}"))
                })
            })
            .collect()
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Largest safetensors header we accept; the safetensors crate uses the same bound.
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Checks that a safetensors file is as long as its header says, reading only the header. This
/// catches a truncated download however it got into the cache, before anything maps the file.
pub(crate) fn check_safetensors_complete(path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io_at(path, &e))?;
    let actual = file.metadata().map_err(|e| Error::io_at(path, &e))?.len();
    let bad = |what: String| {
        Error::format(format!(
            "{}: not a safetensors file: {what}",
            path.display()
        ))
    };
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad(format!("only {actual} bytes long")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_SAFETENSORS_HEADER || 8 + header_len > actual {
        return Err(bad(format!(
            "header length {header_len} does not fit the file's {actual} bytes (truncated?)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io_at(path, &e))?;
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let data_len = data_end(&header).ok_or_else(|| bad("malformed tensor entries".into()))?;
    let expected = 8 + header_len + data_len;
    if expected != actual {
        return Err(Error::format(format!(
            "{}: safetensors file is {actual} bytes but its header describes {expected} bytes \
             (an incomplete download or a corrupt file; delete it and fetch it again)",
            path.display()
        )));
    }
    Ok(())
}

/// The end of the data section: the largest `data_offsets[1]` over all tensors.
fn data_end(header: &Value) -> Option<u64> {
    let mut end = 0;
    for (name, entry) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let offsets = entry.get("data_offsets")?.as_array()?;
        end = end.max(offsets.get(1)?.as_u64()?);
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    fn parse(value: Value) -> Result<PipelineConfig> {
        PipelineConfig::from_json(&value, Path::new("/m/pipeline.json"))
    }

    #[test]
    fn full_pipeline() {
        let cfg = parse(json!({
            "name": "TrellisImageTo3DPipeline",
            "args": {
                "models": {"ss_dec": "ckpts/ss_dec", "slat_flow": "ckpts/slat_flow"},
                "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler",
                    "args": {"sigma_min": 1e-5}, "params": {"steps": 25}},
                "slat_normalization": {"mean": [0.5, -1], "std": [2, 3]},
                "image_cond_model": "dinov2_vitl14_reg",
                "extra": 1
            }
        }))
        .unwrap();
        assert_eq!(cfg.name, "TrellisImageTo3DPipeline");
        assert_eq!(cfg.models["ss_dec"], "ckpts/ss_dec");
        let s = cfg.sparse_structure_sampler.unwrap();
        assert_eq!(s.params["steps"], 25);
        assert!(cfg.slat_sampler.is_none());
        assert_eq!(cfg.slat_normalization.unwrap().std, vec![2.0, 3.0]);
        assert_eq!(cfg.image_cond_model.as_deref(), Some("dinov2_vitl14_reg"));
        assert_eq!(cfg.args["extra"], 1);
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            (json!({"args": {"models": {"a": "b"}}}), "`name` is missing"),
            (json!({"name": "P"}), "`args` is missing"),
            (json!({"name": "P", "args": {}}), "`args.models` is missing"),
            (
                json!({"name": "P", "args": {"models": {"a": 3}}}),
                "`args.models.a` must be a string",
            ),
            (
                json!({"name": "P", "args": {"models": {"a": "b"}, "slat_sampler": {"name": "S", "args": {}}}}),
                "`args.slat_sampler.params` is missing",
            ),
            (
                json!({"name": "P", "args": {"models": {"a": "b"}, "slat_normalization": {"mean": [1], "std": [1, 2]}}}),
                "1 mean and 2 std",
            ),
            (json!([1]), "top level must be a JSON object"),
        ];
        for (value, needle) in cases {
            let err = parse(value).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Format);
            assert!(err.message().contains("/m/pipeline.json"), "{err}");
            assert!(err.message().contains(needle), "{err} lacks {needle}");
        }
    }
}
