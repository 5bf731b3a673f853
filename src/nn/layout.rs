//! Checkpoint layouts: the list of tensors (state-dict name, shape, stored dtype) a network
//! reads, computed from its config alone. A network's `new()` checks a checkpoint against it
//! before loading anything, so a wrong file fails at once with every problem listed (not at
//! the first missing tensor, after gigabytes were read); tests compare it with the published
//! key listings without allocating the weights.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use tch::{Kind, Tensor};

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
    let (header, ordered) = safetensors_header(specs, metadata)?;
    let data: i64 = ordered.iter().map(|s| s.nbytes()).sum();
    Ok(8 + header.len() as u64 + data as u64)
}

/// The header the safetensors writer makes for `specs` (JSON padded with spaces to a multiple
/// of 8 bytes) and the specs in the order their data follows it (descending dtype, then name).
fn safetensors_header(
    specs: &[TensorSpec],
    metadata: Option<HashMap<String, String>>,
) -> Result<(Vec<u8>, Vec<&TensorSpec>)> {
    let mut ordered: Vec<(Dtype, &TensorSpec)> = specs
        .iter()
        .map(|s| Ok((safetensors_dtype(s.stored)?, s)))
        .collect::<Result<_>>()?;
    ordered.sort_by(|(ld, l), (rd, r)| rd.cmp(ld).then(l.name.cmp(&r.name)));
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(ordered.len());
    for &(dtype, spec) in &ordered {
        let n = usize::try_from(spec.nbytes())
            .map_err(|_| Error::internal(format!("'{}' has a negative size", spec.name)))?;
        infos.push((
            spec.name.clone(),
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
    let mut json = serde_json::to_string(&header)
        .map_err(|e| Error::internal(format!("safetensors header: {e}")))?
        .into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    Ok((json, ordered.into_iter().map(|(_, spec)| spec).collect()))
}

/// Where the values of one tensor of a synthesised checkpoint come from.
pub enum Fill {
    /// Independent N(mean, std²) draws from the checkpoint's seeded generator (see
    /// [`seeded_normal`]).
    Normal { mean: f64, std: f64 },
    /// These values (any float dtype, any device, the spec's shape): a buffer computed as the
    /// reference computes it, or a calibrated parameter.
    Values(Tensor),
}

/// Elements drawn per generator stream: a tensor's values are a sequence of chunks, each from
/// its own seeded stream, so they do not depend on how many threads draw them.
const CHUNK: usize = 1 << 20;

/// Writes a safetensors file holding `specs` (with `metadata` in its header, or none) whose
/// values `fill` describes tensor by tensor, in each spec's stored dtype, byte for byte as the
/// safetensors writer lays it out. Random values depend only on `seed`, the tensor's name and
/// its size, so a file is reproducible and one tensor's values do not change when others are
/// added. The file is streamed (one chunk of values in memory at a time) into a temporary file
/// renamed over `path` once complete, so multi-GB checkpoints need no multi-GB buffers and a
/// failed write leaves no partial file.
pub fn write_random_checkpoint(
    path: &Path,
    specs: &[TensorSpec],
    metadata: Option<HashMap<String, String>>,
    seed: u64,
    mut fill: impl FnMut(&TensorSpec) -> Result<Fill>,
) -> Result<()> {
    if cfg!(target_endian = "big") {
        return Err(Error::unsupported(
            "writing safetensors files on a big-endian machine",
        ));
    }
    let (header, ordered) = safetensors_header(specs, metadata)?;
    crate::export::atomic::write_atomically_with(path, |out| {
        let io = |e: std::io::Error| Error::io_at(path, &e);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&header).map_err(io)?;
        for spec in ordered {
            match fill(spec)? {
                Fill::Normal { mean, std } => {
                    write_normal(out, spec, seed, mean, std).map_err(io)?
                }
                Fill::Values(values) => write_values(out, spec, &values)
                    .map_err(|e| e.context(format!("tensor '{}'", spec.name)))?,
            }
        }
        out.flush().map_err(io)
    })
}

/// Streams N(mean, std²) values of `spec`, converted to its stored dtype.
fn write_normal(
    out: &mut dyn Write,
    spec: &TensorSpec,
    seed: u64,
    mean: f64,
    std: f64,
) -> std::io::Result<()> {
    let numel = spec.numel().max(0) as usize;
    let stream = tensor_stream_seed(seed, &spec.name);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks = numel.div_ceil(CHUNK);
    let mut first = 0;
    while first < chunks {
        let batch = (chunks - first).min(threads);
        let bytes: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (first..first + batch)
                .map(|chunk| {
                    let len = CHUNK.min(numel - chunk * CHUNK);
                    scope.spawn(move || {
                        let values = seeded_normal(mix(stream, chunk as u64), len, mean, std);
                        encode(&values, spec.stored)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (i, chunk) in bytes.iter().enumerate() {
            let expected = CHUNK.min(numel - (first + i) * CHUNK) * spec.stored.elt_size_in_bytes();
            if chunk.len() != expected {
                return Err(std::io::Error::other(format!(
                    "'{}': a generator thread failed",
                    spec.name
                )));
            }
            out.write_all(chunk)?;
        }
        first += batch;
    }
    Ok(())
}

/// Writes given values of `spec` (checked against its shape) in its stored dtype.
fn write_values(out: &mut dyn Write, spec: &TensorSpec, values: &Tensor) -> Result<()> {
    if values.size() != spec.shape {
        return Err(Error::internal(format!(
            "values of shape {:?} for a tensor of shape {:?}",
            values.size(),
            spec.shape
        )));
    }
    let values = values
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(spec.stored)?
        .f_contiguous()?;
    let numel = spec.numel().max(0) as usize;
    let mut bytes = vec![0u8; numel * spec.stored.elt_size_in_bytes()];
    values.f_copy_data_u8(&mut bytes, numel)?;
    out.write_all(&bytes)
        .map_err(|e| Error::io(format!("writing values: {e}")))
}

/// `values` as little-endian bytes of `kind` (rounded to nearest, as `Tensor.to` does).
fn encode(values: &[f32], kind: Kind) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * kind.elt_size_in_bytes());
    match kind {
        Kind::Half => values
            .iter()
            .for_each(|v| bytes.extend(half::f16::from_f32(*v).to_le_bytes())),
        Kind::BFloat16 => values
            .iter()
            .for_each(|v| bytes.extend(half::bf16::from_f32(*v).to_le_bytes())),
        Kind::Double => values
            .iter()
            .for_each(|v| bytes.extend(f64::from(*v).to_le_bytes())),
        // safetensors_header refused every other kind.
        _ => values.iter().for_each(|v| bytes.extend(v.to_le_bytes())),
    }
    bytes
}

/// The generator seed of one tensor: the checkpoint seed mixed with a hash (FNV-1a) of the
/// tensor's name.
fn tensor_stream_seed(seed: u64, name: &str) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(seed, hash)
}

/// Combines two 64-bit values into a well-spread seed (SplitMix64's finaliser).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` draws of N(mean, std²) from the stream `seed`: SplitMix64 uniforms through the
/// Box-Muller transform, in f32. Plain Rust rather than libtorch's generator, so the values are
/// the same on every platform and libtorch version and recon's global generator (which seeded
/// runs depend on) is left alone.
pub fn seeded_normal(seed: u64, len: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(state, 0)
    };
    let (mean, std) = (mean as f32, std as f32);
    let mut values = Vec::with_capacity(len + 1);
    while values.len() < len {
        let bits = next();
        // Two 24-bit uniforms: u1 in (0, 1] (its log is finite), u2 in [0, 1).
        let u1 = ((bits >> 40) as f32 + 1.0) * (1.0 / (1u64 << 24) as f32);
        let u2 = ((bits >> 8) & 0xff_ffff) as f32 * (1.0 / (1u64 << 24) as f32);
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
        values.push(mean + std * radius * cos);
        values.push(mean + std * radius * sin);
    }
    values.truncate(len);
    values
}

/// A checkpoint at `path` holding `specs` with random values (N(0, 0.01)) in their stored
/// dtypes, opened as fp32 on the CPU: for unit tests of the networks' loaders.
#[cfg(test)]
pub(crate) fn random_checkpoint(path: &Path, specs: &[TensorSpec]) -> Weights {
    use tch::Device;
    write_random_checkpoint(path, specs, None, 0, |_| {
        Ok(Fill::Normal {
            mean: 0.0,
            std: 0.1,
        })
    })
    .unwrap();
    Weights::open(path, Kind::Float, Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tch::Device;

    use super::*;

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec::new("b.weight", &[3, 5], Kind::Half),
            TensorSpec::new("a.bias", &[5], Kind::Float),
            TensorSpec::new("c.gamma", &[2, 2, 2], Kind::BFloat16),
        ]
    }

    /// Given values stream out byte for byte as the safetensors writer lays them out.
    #[test]
    fn streamed_file_is_the_safetensors_writers() {
        let dir = tempfile::tempdir().unwrap();
        let specs = specs();
        let values: BTreeMap<String, Tensor> = specs
            .iter()
            .map(|s| {
                let n = s.numel();
                let t = Tensor::arange(n, (Kind::Float, Device::Cpu)).f_mul_scalar(0.37);
                (
                    s.name.clone(),
                    t.unwrap().reshape(&s.shape[..]).to_kind(s.stored),
                )
            })
            .collect();
        let ours = dir.path().join("ours.safetensors");
        write_random_checkpoint(&ours, &specs, None, 0, |s| {
            Ok(Fill::Values(values[&s.name].shallow_clone()))
        })
        .unwrap();
        let theirs = dir.path().join("theirs.safetensors");
        let named: Vec<(String, Tensor)> = values
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        crate::weights::write_safetensors(&theirs, &named).unwrap();
        let ours = std::fs::read(&ours).unwrap();
        assert!(ours == std::fs::read(&theirs).unwrap());
        assert_eq!(
            ours.len() as u64,
            safetensors_file_size(&specs, None).unwrap()
        );
    }

    #[test]
    fn seeded_normal_is_standard_and_reproducible() {
        let a = seeded_normal(1, 200_001, 0.0, 1.0);
        assert_eq!(a.len(), 200_001);
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.01, "std {}", var.sqrt());
        assert_eq!(a, seeded_normal(1, 200_001, 0.0, 1.0));
        assert_ne!(a[..8], seeded_normal(2, 8, 0.0, 1.0)[..]);
        let shifted = seeded_normal(1, 4, 3.0, 2.0);
        for (s, v) in shifted.iter().zip(&a) {
            assert!((s - (3.0 + 2.0 * v)).abs() < 1e-5);
        }
    }

    /// A tensor's random values depend on the seed, its name and its size only: not on the
    /// other tensors of the file, nor on how its chunks are spread over threads.
    #[test]
    fn random_values_depend_only_on_seed_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let big = TensorSpec::new("big.weight", &[CHUNK as i64 + 17], Kind::Float);
        let other = TensorSpec::new("a.weight", &[4, 4], Kind::Half);
        let normal = |_: &TensorSpec| {
            Ok(Fill::Normal {
                mean: 0.5,
                std: 2.0,
            })
        };
        let alone = dir.path().join("alone.safetensors");
        let both = dir.path().join("both.safetensors");
        let reseeded = dir.path().join("reseeded.safetensors");
        write_random_checkpoint(&alone, std::slice::from_ref(&big), None, 9, normal).unwrap();
        write_random_checkpoint(&both, &[other, big.clone()], None, 9, normal).unwrap();
        write_random_checkpoint(&reseeded, std::slice::from_ref(&big), None, 10, normal).unwrap();
        let read = |path: &Path| {
            Weights::open(path, Kind::Float, Device::Cpu)
                .unwrap()
                .get(&big.shape, "big.weight")
                .unwrap()
        };
        let values = read(&alone);
        assert!(values.equal(&read(&both)));
        assert!(!values.equal(&read(&reseeded)));
        let expected = seeded_normal(mix(tensor_stream_seed(9, "big.weight"), 1), 17, 0.5, 2.0);
        let tail: Vec<f32> = Vec::try_from(values.narrow(0, CHUNK as i64, 17)).unwrap();
        assert_eq!(tail, expected);
    }
}
