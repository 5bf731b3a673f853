//! Activations on the features (trellis/modules/sparse/nonlinearity.py).

use super::SparseTensor;
use crate::error::Result;

/// `SparseReLU`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SparseReLU;

impl SparseReLU {
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        x.replace(x.feats().f_relu()?)
    }
}

/// `SparseSiLU`: `x * sigmoid(x)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SparseSiLU;

impl SparseSiLU {
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        x.replace(x.feats().f_silu()?)
    }
}

/// `SparseGELU`: exact (erf) GELU like `nn.GELU()`, or the tanh approximation like
/// `nn.GELU(approximate="tanh")`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SparseGELU {
    tanh_approximation: bool,
}

impl SparseGELU {
    /// `nn.GELU()` (erf).
    pub fn new() -> Self {
        Self {
            tanh_approximation: false,
        }
    }

    /// `nn.GELU(approximate="tanh")`.
    pub fn tanh() -> Self {
        Self {
            tanh_approximation: true,
        }
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let approximate = if self.tanh_approximation {
            "tanh"
        } else {
            "none"
        };
        x.replace(x.feats().f_gelu(approximate)?)
    }
}
