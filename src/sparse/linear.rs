//! `SparseLinear` (trellis/modules/sparse/linear.py): `nn.Linear` on the features.

use super::SparseTensor;
use crate::error::Result;
use crate::nn::Linear;
use crate::weights::Weights;

/// `SparseLinear(in, out)`: weight `[out, in]`, bias `[out]`, applied to every voxel's
/// features; coordinates and cache are kept.
pub struct SparseLinear {
    linear: Linear,
}

impl SparseLinear {
    pub fn new(weights: &Weights, in_features: i64, out_features: i64) -> Result<Self> {
        Ok(Self {
            linear: Linear::new(weights, in_features, out_features)?,
        })
    }

    /// `x @ W^T + b` in the weights' dtype (the features are cast to it).
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        x.replace(self.linear.forward(x.feats())?)
    }
}
