//! Sinusoidal embedders: the flow models' `TimestepEmbedder` (an MLP on a cos/sin code of the
//! timestep) and `AbsolutePositionEmbedder` (a parameter-free sin/cos code of voxel
//! coordinates). Both codes are computed in fp32 with the same tensor operations as the
//! reference, so the large arguments (t up to 1000) round the same way.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::layout::TensorSpec;
use crate::nn::Linear;
use crate::weights::Weights;

/// The reference's `max_period` for both codes.
const MAX_PERIOD: f64 = 10000.0;

/// The sinusoidal code of timesteps `t` `[N]` (any float dtype, already scaled by 1000 in the
/// samplers): `[cos(t·f), sin(t·f)]` with `f_i = exp(−ln(max_period)·i/half)`, `half = dim/2`,
/// zero-padded by one column when `dim` is odd. Returns `[N, dim]` fp32.
pub fn timestep_embedding(t: &Tensor, dim: i64, max_period: f64) -> Result<Tensor> {
    if t.dim() != 1 {
        return Err(Error::invalid_argument(format!(
            "timestep_embedding: t must be [N], got {:?}",
            t.size()
        )));
    }
    let half = dim / 2;
    let freqs = frequencies(half, max_period, t.device())?;
    let args = t
        .f_unsqueeze(1)?
        .f_to_kind(Kind::Float)?
        .f_mul(&freqs.f_unsqueeze(0)?)?;
    let mut parts = vec![args.f_cos()?, args.f_sin()?];
    if dim % 2 == 1 {
        parts.push(Tensor::f_zeros(
            [t.size()[0], 1],
            (Kind::Float, t.device()),
        )?);
    }
    Ok(Tensor::f_cat(&parts, -1)?)
}

/// `exp(−ln(max_period)·i/half)` for i < half, computed on the CPU as the reference does and
/// kept on `device` after the first call: a copy from host memory at every forward would also
/// make the flow forward impossible to capture in a CUDA graph.
fn frequencies(half: i64, max_period: f64, device: Device) -> Result<Tensor> {
    type Key = (i64, u64, Device);
    static CACHE: Mutex<Vec<(Key, Tensor)>> = Mutex::new(Vec::new());
    let key = (half, max_period.to_bits(), device);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, freqs)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(freqs.shallow_clone());
    }
    let freqs = Tensor::f_arange(half, (Kind::Float, Device::Cpu))?
        .f_mul_scalar(-max_period.ln())?
        .f_div_scalar(half)?
        .f_exp()?
        .f_to_device(device)?;
    cache.push((key, freqs.shallow_clone()));
    Ok(freqs)
}

/// `TimestepEmbedder(hidden, frequency_embedding_size=256)`:
/// `mlp = Sequential(Linear(freq, hidden), SiLU, Linear(hidden, hidden))` on the sinusoidal code.
pub struct TimestepEmbedder {
    fc1: Linear,
    fc2: Linear,
    frequency_size: i64,
}

impl TimestepEmbedder {
    /// The reference's default `frequency_embedding_size`.
    pub const DEFAULT_FREQUENCY_SIZE: i64 = 256;

    pub fn new(weights: &Weights, hidden: i64, frequency_size: i64) -> Result<Self> {
        let mlp = weights.pp("mlp");
        Ok(Self {
            fc1: Linear::new(&mlp.pp(0), frequency_size, hidden)?,
            fc2: Linear::new(&mlp.pp(2), hidden, hidden)?,
            frequency_size,
        })
    }

    /// The tensors [`TimestepEmbedder::new`] reads, stored as `kind`.
    pub fn layout(prefix: &str, hidden: i64, frequency_size: i64, kind: Kind) -> Vec<TensorSpec> {
        vec![
            TensorSpec::new(
                format!("{prefix}.mlp.0.weight"),
                &[hidden, frequency_size],
                kind,
            ),
            TensorSpec::new(format!("{prefix}.mlp.0.bias"), &[hidden], kind),
            TensorSpec::new(format!("{prefix}.mlp.2.weight"), &[hidden, hidden], kind),
            TensorSpec::new(format!("{prefix}.mlp.2.bias"), &[hidden], kind),
        ]
    }

    /// `t` `[N]` → `[N, hidden]` in the Linears' dtype.
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let code = timestep_embedding(t, self.frequency_size, MAX_PERIOD)?;
        self.fc2.forward(&self.fc1.forward(&code)?.f_silu()?)
    }
}

/// `AbsolutePositionEmbedder(channels, in_channels)`: for each coordinate axis,
/// `[sin(x·f), cos(x·f)]` with `f_i = 1/10000^(i/freq_dim)`, `freq_dim = channels/in_channels/2`,
/// concatenated axis after axis and zero-padded at the end up to `channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsolutePositionEmbedder {
    channels: i64,
    in_channels: i64,
}

impl AbsolutePositionEmbedder {
    pub fn new(channels: i64, in_channels: i64) -> Result<Self> {
        if channels <= 0 || in_channels <= 0 {
            return Err(Error::invalid_argument(format!(
                "AbsolutePositionEmbedder: channels {channels} and in_channels {in_channels} \
                 must be positive"
            )));
        }
        Ok(Self {
            channels,
            in_channels,
        })
    }

    /// Width of the code (`channels` of the constructor).
    pub fn channels(&self) -> i64 {
        self.channels
    }

    fn freq_dim(&self) -> i64 {
        self.channels / self.in_channels / 2
    }

    /// `coords` `[N, in_channels]` (integer or float positions) → `[N, channels]` fp32.
    pub fn forward(&self, coords: &Tensor) -> Result<Tensor> {
        let n = match coords.size()[..] {
            [n, d] if d == self.in_channels => n,
            ref found => {
                return Err(Error::invalid_argument(format!(
                    "AbsolutePositionEmbedder: coords must be [N, {}], got {found:?}",
                    self.in_channels
                )))
            }
        };
        let freq_dim = self.freq_dim();
        let exponents =
            Tensor::f_arange(freq_dim, (Kind::Float, Device::Cpu))?.f_div_scalar(freq_dim)?;
        let freqs = Tensor::f_pow_scalar(MAX_PERIOD, &exponents)?
            .f_reciprocal()?
            .f_to_device(coords.device())?;
        let flat = coords.f_reshape([-1])?.f_to_kind(Kind::Float)?;
        let angles = flat.f_outer(&freqs)?;
        let code = Tensor::f_cat(&[angles.f_sin()?, angles.f_cos()?], -1)?.f_reshape([n, -1])?;
        let used = code.size()[1];
        if used >= self.channels {
            return Ok(code);
        }
        let pad = Tensor::f_zeros([n, self.channels - used], (Kind::Float, coords.device()))?;
        Ok(Tensor::f_cat(&[code, pad], -1)?)
    }

    /// The code of every voxel of a `res`³ grid, voxels in C order (`x·res² + y·res + z`, as
    /// `meshgrid(indexing='ij')` enumerates them): `[res³, channels]` fp32. This is the
    /// `pos_emb` buffer the dense flow model registers.
    pub fn grid(&self, res: i64, device: Device) -> Result<Tensor> {
        let axis = Tensor::f_arange(res, (Kind::Int64, device))?;
        let axes: Vec<Tensor> = (0..self.in_channels)
            .map(|_| axis.shallow_clone())
            .collect();
        let mesh = Tensor::f_meshgrid_indexing(&axes, "ij")?;
        let coords = Tensor::f_stack(&mesh, -1)?.f_reshape([-1, self.in_channels])?;
        self.forward(&coords)
    }
}
