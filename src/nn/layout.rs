//! Checkpoint layouts: the list of tensors (state-dict name, shape, stored dtype) a network
//! reads, computed from its config alone. A network's `new()` checks a checkpoint against it
//! before loading anything, so a wrong file fails at once with every problem listed (not at
//! the first missing tensor, after gigabytes were read); tests compare it with the published
//! key listings without allocating the weights.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use tch::Kind;

use crate::error::{Error, Result};
use crate::weights::Weights;

/// One tensor of a checkpoint: its full state-dict name, its shape, and the dtype the reference
/// stores it in (a loader accepts any float dtype; this is what the published files hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub stored: Kind,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[i64], stored: Kind) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            stored,
        }
    }

    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// Bytes of the tensor's data in its stored dtype.
    pub fn nbytes(&self) -> i64 {
        self.numel() * self.stored.elt_size_in_bytes() as i64
    }
}

/// `specs` with `prefix.` put before every name (a sub-module's layout inside its parent).
pub fn prefixed(prefix: &str, specs: Vec<TensorSpec>) -> Vec<TensorSpec> {
    specs
        .into_iter()
        .map(|spec| TensorSpec {
            name: format!("{prefix}.{}", spec.name),
            ..spec
        })
        .collect()
}

/// Checks that `weights` holds every tensor of `specs` (names relative to the view) with its
/// shape. One Checkpoint error lists all missing and mis-shaped tensors.
pub fn check_layout(weights: &Weights, specs: &[TensorSpec]) -> Result<()> {
    let mut problems = Vec::new();
    for spec in specs {
        if !weights.contains(&spec.name) {
            problems.push(format!("'{}' is missing", spec.name));
            continue;
        }
        let found = weights.shape_of(&spec.name)?;
        if found != spec.shape {
            problems.push(format!(
                "'{}' has shape {found:?}, expected {:?}",
                spec.name, spec.shape
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 8;
    let more = problems.len().saturating_sub(SHOWN);
    let mut text = problems[..problems.len().min(SHOWN)].join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    Err(Error::checkpoint(format!(
        "{}: {} tensor(s) do not fit the network: {text}",
        weights.path().display(),
        problems.len()
    )))
}

fn safetensors_dtype(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        other => {
            return Err(Error::internal(format!(
                "no safetensors dtype for a {other:?} parameter"
            )))
        }
    })
}

/// The size in bytes of the safetensors file that `safetensors.torch.save_file` writes for
/// `specs` (with `metadata`, e.g. `{"format": "pt"}`, or none): the 8-byte header length, the
/// JSON header padded to 8 bytes, and the data, laid out as the safetensors writer does (by
/// descending dtype, then by name).
pub fn safetensors_file_size(
    specs: &[TensorSpec],
    metadata: Option<HashMap<String, String>>,
) -> Result<u64> {
    let mut ordered: Vec<(&str, Dtype, &TensorSpec)> = specs
        .iter()
        .map(|s| Ok((s.name.as_str(), safetensors_dtype(s.stored)?, s)))
        .collect::<Result<_>>()?;
    ordered.sort_by(|(ln, ld, _), (rn, rd, _)| rd.cmp(ld).then(ln.cmp(rn)));
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(ordered.len());
    for (name, dtype, spec) in ordered {
        let n = spec.nbytes() as usize;
        infos.push((
            name.to_string(),
            TensorInfo {
                dtype,
                shape: spec.shape.iter().map(|&d| d as usize).collect(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let header = Metadata::new(metadata, infos)
        .map_err(|e| Error::internal(format!("safetensors header: {e}")))?;
    let json = serde_json::to_string(&header)
        .map_err(|e| Error::internal(format!("safetensors header: {e}")))?;
    let header_len = json.len().next_multiple_of(8);
    Ok((8 + header_len + offset) as u64)
}

/// A checkpoint at `path` holding `specs` with random values (N(0, 0.01)) in their stored
/// dtypes, opened as fp32 on the CPU: for unit tests of the networks' loaders.
#[cfg(test)]
pub(crate) fn random_checkpoint(path: &std::path::Path, specs: &[TensorSpec]) -> Weights {
    use tch::{Device, Tensor};
    let tensors: Vec<(String, Tensor)> = specs
        .iter()
        .map(|s| {
            let values = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
                Tensor::randn(&s.shape, (Kind::Float, Device::Cpu))
            }) * 0.1;
            (s.name.clone(), values.to_kind(s.stored))
        })
        .collect();
    crate::weights::write_safetensors(path, &tensors).unwrap();
    Weights::open(path, Kind::Float, Device::Cpu).unwrap()
}
