//! `SparseConv3d` (trellis/modules/sparse/conv/conv_spconv.py) with stride 1 and no padding,
//! i.e. spconv's `SubMConv3d`: the output is defined at the input's voxels only, and
//! `out[p] = b + Σ_k W_k · in[p + (r_k - kernel_size / 2) · dilation]` over the active
//! neighbours of p in the same batch item, with `W_k = weight[:, r_x, r_y, r_z, :]` from the
//! KRSC weight `[C_out, kx, ky, kz, C_in]` and (r_x, r_y, r_z) on coords columns 1..3.
//! The kernel map is built once per spatial level and geometry and shared by every conv at
//! that level (spconv's `indice_key`, implicitly); the computation is the engine's
//! gather-GEMM-scatter (`engine.rs`, `cpp/`).

use tch::{Kind, Tensor};

use super::engine::{self, ConvGeometry};
use super::SparseTensor;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// A submanifold sparse 3D convolution with the published checkpoints' weights: `conv.weight`
/// in spconv's KRSC layout `[C_out, kx, ky, kz, C_in]` and `conv.bias` `[C_out]`.
pub struct SparseConv3d {
    /// The engine's layout `[K, C_in, C_out]`, prepared once at load.
    weight: Tensor,
    bias: Option<Tensor>,
    geometry: ConvGeometry,
    in_channels: i64,
    out_channels: i64,
}

impl SparseConv3d {
    /// `SparseConv3d(in, out, kernel_size)` with bias and dilation 1; `weights` is the view of
    /// the module (it reads `conv.weight`, `conv.bias`).
    pub fn new(
        weights: &Weights,
        in_channels: i64,
        out_channels: i64,
        kernel_size: i64,
    ) -> Result<Self> {
        Self::with_geometry(
            weights,
            in_channels,
            out_channels,
            ConvGeometry::cubic(kernel_size, 1),
            true,
        )
    }

    /// Any odd kernel size and dilation per axis, with or without bias.
    pub fn with_geometry(
        weights: &Weights,
        in_channels: i64,
        out_channels: i64,
        geometry: ConvGeometry,
        bias: bool,
    ) -> Result<Self> {
        geometry.validate()?;
        let [kx, ky, kz] = geometry.kernel_size;
        let weights = weights.pp("conv");
        let krsc = weights.get(&[out_channels, kx, ky, kz, in_channels], "weight")?;
        let bias = if bias {
            Some(weights.get(&[out_channels], "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight: engine::prepare_conv_weight(&krsc)?,
            bias,
            geometry,
            in_channels,
            out_channels,
        })
    }

    pub fn geometry(&self) -> ConvGeometry {
        self.geometry
    }

    pub fn in_channels(&self) -> i64 {
        self.in_channels
    }

    pub fn out_channels(&self) -> i64 {
        self.out_channels
    }

    /// The weights' dtype; features are cast to it.
    pub fn kind(&self) -> Kind {
        self.weight.kind()
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let size = x.feats().size();
        if size.len() != 2 || size[1] != self.in_channels {
            return Err(Error::invalid_argument(format!(
                "SparseConv3d({} -> {}): features must be [N, {}], got {size:?}",
                self.in_channels, self.out_channels, self.in_channels
            )));
        }
        let feats = if x.kind() == self.weight.kind() {
            x.feats().shallow_clone()
        } else {
            x.feats().f_to_kind(self.weight.kind())?
        };
        // A kernel volume of 1 has no neighbours: a plain GEMM, no map.
        let map = if self.geometry.volume() == 1 {
            None
        } else {
            let geometry = self.geometry;
            Some(x.cached(&geometry.cache_key(), || {
                engine::build_submanifold_kernel_map(x.coords(), geometry)
            })?)
        };
        let out = engine::submanifold_conv(&feats, &self.weight, self.bias.as_ref(), map.as_ref())?;
        x.replace(out)
    }
}
