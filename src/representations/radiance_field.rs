//! `trellis.representations.radiance_field.strivec`: `Strivec`, the radiance field the SLat
//! radiance-field decoder emits — a sparse voxel octree (`DfsOctree`, primitive `"trivec"`)
//! whose leaves are the decoder's voxels, all at the finest depth `log2(resolution)`, each
//! holding a rank-`rank` tri-vector (CP-style) density and colour field (research/trellis.md
//! §4.3):
//!
//! | field | shape | value |
//! | --- | --- | --- |
//! | `position` | `[N, 3]` | voxel centre in [0, 1]³: `(coords + 0.5) / resolution` |
//! | `depth` | `[N, 1]` uint8 | `log2(resolution)` for every leaf |
//! | `trivec` | `[N, rank, 3, dim]` | one `dim`-vector per rank component and axis (raw + 1) |
//! | `density` | `[N, rank]` | per-component density (identity activation, `density_shift` 0) |
//! | `features_dc` | `[N, rank, 1, 3]` | per-component SH DC colour |
//!
//! Rendering it needs the reference's `diffoctreerast` CUDA rasteriser, which recon does not
//! port; the field is produced for callers that render it themselves. The octree's `structure`
//! descriptor array is not kept: the decoder never fills it (it stays the root-only default).

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The constructor arguments of a `Strivec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StrivecConfig {
    /// Voxels per axis, a power of two (the octree depth is its log2).
    pub resolution: i64,
    /// `[x0, y0, z0, sx, sy, sz]`: positions in [0, 1]³ map to `[x0, x0 + sx] × …`.
    pub aabb: [f64; 6],
    /// Rank of the tri-vector decomposition (`primitive_config.rank`).
    pub rank: i64,
    /// Length of each tri-vector factor (`primitive_config.dim`).
    pub dim: i64,
}

impl StrivecConfig {
    /// The aabb the SLat decoder uses: the unit cube centred at the origin.
    pub const DECODER_AABB: [f64; 6] = [-0.5, -0.5, -0.5, 1.0, 1.0, 1.0];

    /// The octree depth of the leaves, `log2(resolution)`; an error unless `resolution` is a
    /// power of two (the reference asserts it).
    pub fn depth(&self) -> Result<i64> {
        if self.resolution <= 0 || self.resolution.count_ones() != 1 {
            return Err(Error::checkpoint(format!(
                "Strivec: resolution {} must be a power of 2",
                self.resolution
            )));
        }
        Ok(i64::from(self.resolution.trailing_zeros()))
    }
}

/// A tri-vector radiance field on the leaves of a sparse voxel octree (see the module docs).
pub struct Strivec {
    config: StrivecConfig,
    position: Tensor,
    depth: Tensor,
    trivec: Tensor,
    density: Tensor,
    features_dc: Tensor,
}

impl Strivec {
    /// From the leaf attributes of `N` voxels at the finest depth: `position [N, 3]`,
    /// `trivec [N, rank, 3, dim]`, `density [N, rank]`, `features_dc [N, rank, 1, 3]`.
    pub fn new(
        config: StrivecConfig,
        position: Tensor,
        trivec: Tensor,
        density: Tensor,
        features_dc: Tensor,
    ) -> Result<Self> {
        let depth = config.depth()?;
        let (rank, dim) = (config.rank, config.dim);
        let count = position.size().first().copied().unwrap_or(-1);
        let expected: [(&str, &Tensor, Vec<i64>); 4] = [
            ("position", &position, vec![count, 3]),
            ("trivec", &trivec, vec![count, rank, 3, dim]),
            ("density", &density, vec![count, rank]),
            ("features_dc", &features_dc, vec![count, rank, 1, 3]),
        ];
        for (name, tensor, shape) in &expected {
            if tensor.size() != *shape {
                return Err(Error::invalid_argument(format!(
                    "Strivec: {name} must be {shape:?}, got {:?}",
                    tensor.size()
                )));
            }
        }
        let depth = Tensor::f_full([count, 1], depth, (Kind::Uint8, position.device()))?;
        Ok(Self {
            config,
            position,
            depth,
            trivec,
            density,
            features_dc,
        })
    }

    pub fn config(&self) -> &StrivecConfig {
        &self.config
    }

    /// Number of leaves `N`.
    pub fn len(&self) -> i64 {
        self.position.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        self.position.device()
    }

    /// `density_shift`: 0 for the decoder's fields (added to the density before rendering).
    pub fn density_shift(&self) -> f64 {
        0.0
    }

    /// Leaf centres `[N, 3]` in [0, 1]³ (`get_xyz`).
    pub fn position(&self) -> &Tensor {
        &self.position
    }

    /// Leaf depths `[N, 1]` uint8 (`get_depth`).
    pub fn depth(&self) -> &Tensor {
        &self.depth
    }

    /// Tri-vector factors `[N, rank, 3, dim]` (`get_trivec`).
    pub fn trivec(&self) -> &Tensor {
        &self.trivec
    }

    /// Densities `[N, rank]`; `get_density` is the identity for the trivec primitive.
    pub fn density(&self) -> &Tensor {
        &self.density
    }

    /// SH DC colours `[N, rank, 1, 3]` (`get_features` at degree 0).
    pub fn features_dc(&self) -> &Tensor {
        &self.features_dc
    }
}
