//! Checkpoint weights: safetensors files, memory-mapped, looked up by state-dict name.
//!
//! [`Weights`] works like candle's `VarBuilder`: `weights.pp("blocks").pp(3).get(&[512], "bias")`
//! reads `blocks.3.bias`. Lookups are strict — a tensor a network asks for must exist with the
//! expected shape and a floating dtype — and every error names the file, the tensor, the expected
//! and the found shape. Tensors nobody asked for are listed at debug level by
//! [`Weights::report_unused`], since the reference loads some checkpoints non-strictly.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::logging::{LogFn, LogLevel};

/// One safetensors file, mapped read-only, with its validated header.
pub struct SafeTensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8-byte length prefix + header).
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
}

impl SafeTensorsFile {
    /// Maps `path` and validates its header (sizes, offsets, overlaps, dtypes) before any
    /// tensor is read, so a truncated or hostile file fails here with a Format error.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io_at(path, &e))?;
        // SAFETY: the mapping is read-only and private to this object; like every mmap-based
        // loader we rely on checkpoint files not being truncated while a model is loading.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io_at(path, &e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            Error::format(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Shape of `name` as stored, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(|info| to_i64_shape(&info.shape))
    }

    /// Number of elements over all tensors (a parameter count, buffers included).
    pub fn num_elements(&self) -> usize {
        self.tensors
            .values()
            .map(|info| info.shape.iter().product::<usize>())
            .sum()
    }

    /// Reads `name` as a CPU tensor in its stored dtype.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let (bytes, shape, kind) = self.locate(name)?;
        Ok(Tensor::f_from_data_size(bytes, &shape, kind)?)
    }

    /// `name` in its stored dtype on `device`, copied there straight from the mapped file:
    /// for a CUDA device no host copy is made first (with low-VRAM mode rebuilding every stage's
    /// networks from their files, that copy was a second pass over every weight each run).
    pub fn read_to_device(&self, name: &str, device: Device) -> Result<Tensor> {
        if !device.is_cuda() {
            return self.read(name);
        }
        let (bytes, shape, kind) = self.locate(name)?;
        if bytes.is_empty() {
            return Ok(Tensor::f_empty(shape.as_slice(), (kind, device))?);
        }
        // SAFETY: the view points into the mapping, which `self` keeps alive for this whole
        // call; the view is only read, by the copy below, and dropped before returning. A copy
        // from pageable host memory to a CUDA device has completed when `to_device` returns
        // (libtorch copies and synchronises), so no read of the mapping outlives the view. The
        // copy is a byte copy, so the view's alignment does not matter.
        let view = unsafe {
            Tensor::f_from_blob(bytes.as_ptr(), shape.as_slice(), &[], kind, Device::Cpu)?
        };
        Ok(view.f_to_device(device)?)
    }

    /// The stored bytes, shape and dtype of `name`.
    fn locate(&self, name: &str) -> Result<(&[u8], Vec<i64>, Kind)> {
        let info = self.tensors.get(name).ok_or_else(|| {
            Error::checkpoint(format!(
                "{}: tensor '{name}' is missing",
                self.path.display()
            ))
        })?;
        let kind = kind_of(info.dtype).ok_or_else(|| {
            Error::checkpoint(format!(
                "{}: tensor '{name}' has dtype {:?}, which recon does not read",
                self.path.display(),
                info.dtype
            ))
        })?;
        let (begin, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + begin..self.data_start + end];
        Ok((bytes, to_i64_shape(&info.shape), kind))
    }

    /// Reads every tensor (for the module runner and tests), in sorted name order.
    pub fn read_all(&self) -> Result<Vec<(String, Tensor)>> {
        self.names()
            .map(|name| Ok((name.to_string(), self.read(name)?)))
            .collect()
    }

    fn dtype(&self, name: &str) -> Option<Dtype> {
        self.tensors.get(name).map(|info| info.dtype)
    }
}

fn to_i64_shape(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// The tch kind for a safetensors dtype, for the dtypes recon reads.
fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

struct Shared {
    file: SafeTensorsFile,
    device: Device,
    used: Mutex<HashSet<String>>,
}

/// A prefixed view of one checkpoint file that hands out parameters on a device and dtype.
#[derive(Clone)]
pub struct Weights {
    shared: Arc<Shared>,
    prefix: String,
    kind: Kind,
}

impl Weights {
    /// Opens a checkpoint; parameters come out as `kind` on `device`.
    pub fn open(path: &Path, kind: Kind, device: Device) -> Result<Self> {
        Ok(Self::from_file(SafeTensorsFile::open(path)?, kind, device))
    }

    pub fn from_file(file: SafeTensorsFile, kind: Kind, device: Device) -> Self {
        Self {
            shared: Arc::new(Shared {
                file,
                device,
                used: Mutex::new(HashSet::new()),
            }),
            prefix: String::new(),
            kind,
        }
    }

    /// The view one level down: `pp("blocks").pp(0)` reads `blocks.0.*`.
    pub fn pp(&self, name: impl ToString) -> Self {
        let name = name.to_string();
        let prefix = if self.prefix.is_empty() {
            name
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            shared: self.shared.clone(),
            prefix,
            kind: self.kind,
        }
    }

    /// The same view handing out parameters as `kind` (e.g. fp16 torso, fp32 norms).
    pub fn with_kind(&self, kind: Kind) -> Self {
        Self {
            kind,
            ..self.clone()
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.shared.device
    }

    pub fn path(&self) -> &Path {
        self.shared.file.path()
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the checkpoint holds `name` under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.shared.file.shape(&self.full_name(name)).is_some()
    }

    /// The stored shape of `name` under this prefix, or a Checkpoint error naming it.
    pub fn shape_of(&self, name: &str) -> Result<Vec<i64>> {
        let full = self.full_name(name);
        self.shared
            .file
            .shape(&full)
            .ok_or_else(|| self.missing(&full))
    }

    /// The parameter `name`, which must have exactly `shape`.
    pub fn get(&self, shape: &[i64], name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        let found = self
            .shared
            .file
            .shape(&full)
            .ok_or_else(|| self.missing(&full))?;
        if found != shape {
            return Err(Error::checkpoint(format!(
                "{}: tensor '{full}' has shape {found:?}, expected {shape:?}",
                self.path().display()
            )));
        }
        self.load(&full)
    }

    /// The parameter `name` whatever its shape (for configs inferred from the checkpoint).
    pub fn get_unchecked_shape(&self, name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        if self.shared.file.shape(&full).is_none() {
            return Err(self.missing(&full));
        }
        self.load(&full)
    }

    fn load(&self, full: &str) -> Result<Tensor> {
        let dtype = self
            .shared
            .file
            .dtype(full)
            .ok_or_else(|| self.missing(full))?;
        if !is_float(dtype) {
            return Err(Error::checkpoint(format!(
                "{}: tensor '{full}' has dtype {dtype:?}, expected a floating-point dtype",
                self.path().display()
            )));
        }
        // On a CUDA device the stored dtype is copied over and converted there (the same
        // rounding as on the host, without a host pass over the weights).
        let tensor = self
            .shared
            .file
            .read_to_device(full, self.shared.device)?
            .f_to_kind(self.kind)?;
        self.mark_used(full);
        Ok(tensor)
    }

    fn mark_used(&self, full: &str) {
        // A poisoned lock only means another loader thread panicked; the set is still valid.
        let mut used = match self.shared.used.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        used.insert(full.to_string());
    }

    fn missing(&self, full: &str) -> Error {
        Error::checkpoint(format!(
            "{}: tensor '{full}' is missing",
            self.path().display()
        ))
    }

    /// Names stored in the file that no network asked for so far.
    pub fn unused(&self) -> Vec<String> {
        let used = match self.shared.used.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.shared
            .file
            .names()
            .filter(|name| !used.contains(*name))
            .map(str::to_string)
            .collect()
    }

    /// Logs the unused tensors at debug level (the reference ignores them too).
    pub fn report_unused(&self, log: &LogFn) {
        let unused = self.unused();
        if !unused.is_empty() {
            log(
                LogLevel::Debug,
                &format!(
                    "{}: {} tensor(s) not used by the network: {}",
                    self.path().display(),
                    unused.len(),
                    unused.join(", ")
                ),
            );
        }
    }
}

/// Writes named tensors to a safetensors file atomically: a temporary file in the same
/// directory is renamed into place, so a failure never leaves a partial file at `path`.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid_argument(format!("{}: not a file path", path.display())))?;
    let tmp = dir
        .unwrap_or_else(|| Path::new("."))
        .join(format!(".{}.tmp", file_name.to_string_lossy()));
    let named: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(name, t)| Ok((name.as_str(), t.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    let written = Tensor::write_safetensors(&named, &tmp)
        .map_err(|e| Error::io(format!("{}: {e}", tmp.display())));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io_at(path, &e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join(name);
        let owned: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect();
        write_safetensors(&path, &owned).unwrap();
        path
    }

    #[test]
    fn strict_lookup_by_prefixed_name() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
        let path = write(
            dir.path(),
            "m.safetensors",
            &[
                ("blocks.0.weight", w.to_kind(Kind::Half)),
                ("extra", Tensor::zeros([1], (Kind::Float, Device::Cpu))),
            ],
        );
        let weights = Weights::open(&path, Kind::Float, Device::Cpu).unwrap();
        let got = weights.pp("blocks").pp(0).get(&[2, 3], "weight").unwrap();
        assert_eq!(got.kind(), Kind::Float);
        assert_eq!(
            f64::try_from((got - &w).abs().sum(Kind::Float)).unwrap(),
            0.0
        );

        let err = weights
            .pp("blocks")
            .pp(0)
            .get(&[3, 2], "weight")
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Checkpoint);
        assert!(err.message().contains("blocks.0.weight"), "{err}");
        assert!(err.message().contains("[2, 3]") && err.message().contains("[3, 2]"));
        assert!(err.message().contains("m.safetensors"));

        let err = weights
            .pp("blocks")
            .pp(1)
            .get(&[2, 3], "weight")
            .unwrap_err();
        assert!(
            err.message().contains("'blocks.1.weight' is missing"),
            "{err}"
        );
        assert_eq!(weights.unused(), vec!["extra".to_string()]);
    }

    #[test]
    fn rejects_integer_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "i.safetensors",
            &[("w", Tensor::zeros([2], (Kind::Int64, Device::Cpu)))],
        );
        let weights = Weights::open(&path, Kind::Float, Device::Cpu).unwrap();
        let err = weights.get(&[2], "w").unwrap_err();
        assert!(err.message().contains("floating-point"), "{err}");
    }

    #[test]
    fn corrupt_files_are_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("huge_header_len", u64::MAX.to_le_bytes().to_vec()),
            ("header_past_end", {
                let mut v = 100u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            }),
            ("offsets_past_end", {
                let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
                let mut v = (header.len() as u64).to_le_bytes().to_vec();
                v.extend_from_slice(header);
                v.extend_from_slice(&[0u8; 8]);
                v
            }),
            ("overlapping", {
                let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
                let mut v = (header.len() as u64).to_le_bytes().to_vec();
                v.extend_from_slice(header);
                v.extend_from_slice(&[0u8; 12]);
                v
            }),
            ("not_json", {
                let mut v = 4u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"\xff\xfe{{");
                v
            }),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = SafeTensorsFile::open(&path).err().unwrap();
            assert_eq!(err.kind(), crate::ErrorKind::Format, "{name}: {err}");
            assert!(err.message().contains(name), "{name}: {err}");
        }
        let err = SafeTensorsFile::open(&dir.path().join("absent"))
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
    }
}
