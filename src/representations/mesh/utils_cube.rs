//! Cube/vertex helpers of the mesh representation (trellis/representations/mesh/utils_cube.py):
//! per-cube corner attributes to shared grid vertices, and the deformed vertex positions.
//!
//! Grid points are handled as int64 keys `(x·B + y)·B + z` for a grid of B points per axis;
//! keys of points inside the grid sort like the points' lexicographic (x, y, z) order, so the
//! sorted set of keys equals the reference's `torch.unique(dim=0)` of coordinate rows.
//!
//! Sets of keys are [`GridSet`]s: a presence mask and a rank table over the whole grid (1 + 4
//! bytes per grid point, 85 MB at 257³). That replaces both the sort of `unique` and the
//! binary searches of lookups with linear passes; the reference's dense grids of attributes
//! (several GB at 256³) are never built.

use tch::{Device, Kind, Tensor};

use super::tables::CUBE_CORNERS;
use crate::error::{Error, Result};
use crate::nn::group_sum::group_sums;

/// `[8, 3]` int64 corner offsets of a unit cube (corner index = x + 2y + 4z).
pub fn cube_corners(device: Device) -> Result<Tensor> {
    let flat: Vec<i64> = CUBE_CORNERS.iter().flatten().copied().collect();
    Ok(Tensor::f_from_slice(&flat)?
        .f_view([8, 3])?
        .f_to_device(device)?)
}

/// Key `(x·B + y)·B + z` of integer points `[N, 3]` in a grid of `base` = B points per axis.
pub fn grid_key(points: &Tensor, base: i64) -> Result<Tensor> {
    Ok(points
        .f_select(1, 0)?
        .f_mul_scalar(base)?
        .f_add(&points.f_select(1, 1)?)?
        .f_mul_scalar(base)?
        .f_add(&points.f_select(1, 2)?)?)
}

/// `[N, 3]` int64 points of keys `(x·B + y)·B + z` in a grid of `base` points per axis.
pub fn grid_coords(keys: &Tensor, base: i64) -> Result<Tensor> {
    let x = keys.f_div_scalar_mode(base * base, "floor")?;
    let y = keys.f_div_scalar_mode(base, "floor")?.f_remainder(base)?;
    let z = keys.f_remainder(base)?;
    Ok(Tensor::f_stack(&[x, y, z], 1)?)
}

/// A set of points of a `B³` grid: the sorted unique keys and, per grid point, whether it is in
/// the set and its row in `keys`.
pub struct GridSet {
    /// `[M]` int64 keys, increasing.
    pub keys: Tensor,
    /// `[B³]` bool membership.
    present: Tensor,
    /// `[B³]` int32 (int64 for grids of 2³¹ points or more) row of each member in `keys`;
    /// meaningless for non-members.
    rank: Tensor,
}

impl GridSet {
    /// The set of `keys` (any order, repeats allowed, each in `[0, base³)`).
    pub fn from_keys(keys: &Tensor, base: i64) -> Result<Self> {
        let device = keys.device();
        let points = base
            .checked_pow(3)
            .ok_or_else(|| Error::invalid_argument(format!("grid of {base}³ points")))?;
        let present = Tensor::f_zeros([points], (Kind::Bool, device))?.f_index_fill(
            0,
            &keys.f_reshape([-1])?,
            1,
        )?;
        let rank_kind = if points < i64::from(i32::MAX) {
            Kind::Int
        } else {
            Kind::Int64
        };
        let rank = present.f_cumsum(0, rank_kind)?.f_sub_scalar(1)?;
        let keys = present.f_nonzero()?.f_reshape([-1])?;
        Ok(Self {
            keys,
            present,
            rank,
        })
    }

    /// Number of members.
    pub fn len(&self) -> i64 {
        self.keys.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row in [`keys`](Self::keys) of each of `keys` (int64, same shape) and whether it is a
    /// member (the row of a non-member is some valid row, or 0 for an empty set).
    pub fn rows(&self, keys: &Tensor) -> Result<(Tensor, Tensor)> {
        let flat = keys.f_reshape([-1])?;
        let shape = keys.size();
        let rows = self
            .rank
            .f_index_select(0, &flat)?
            .f_to_kind(Kind::Int64)?
            .f_clamp_min(0)?
            .f_view(shape.as_slice())?;
        let found = self
            .present
            .f_index_select(0, &flat)?
            .f_view(shape.as_slice())?;
        Ok((rows, found))
    }
}

/// Attributes averaged onto the grid vertices of a set of cubes.
pub struct VertexAttrs {
    /// The vertices, as a set of keys of the `(R+1)³` vertex grid.
    pub set: GridSet,
    /// `[Nv, 3]` int64 vertex coordinates, lexicographically sorted (the reference's `v_pos`).
    pub v_pos: Tensor,
    /// `[Nv, A]` mean over the cubes sharing each vertex.
    pub attrs: Tensor,
}

/// `sparse_cube2verts` (eval): the unique corners of the cubes `coords` (`[N, 3]` int64 in
/// `[0, res)`), each with the **true mean** of `cube_attrs` (`[N, 8, A]`, one row per corner)
/// over the cubes that share it (the reference's `scatter_reduce('mean', include_self=False)`:
/// a sum in row order divided by the count, which is what is computed here).
pub fn sparse_cube2verts(coords: &Tensor, cube_attrs: &Tensor, res: i64) -> Result<VertexAttrs> {
    let device = coords.device();
    let channels = cube_attrs.size()[2];
    let corners = cube_corners(device)?;
    let points = coords
        .f_unsqueeze(1)?
        .f_add(&corners.f_unsqueeze(0)?)?
        .f_reshape([-1, 3])?;
    let keys = grid_key(&points, res + 1)?;
    let set = GridSet::from_keys(&keys, res + 1)?;
    let (inverse, _) = set.rows(&keys)?;
    let values = cube_attrs.f_reshape([-1, channels])?;
    let sums = group_sums(&values, &inverse, set.len())?;
    let counts = inverse
        .f_bincount(None::<Tensor>, set.len())?
        .f_to_kind(values.kind())?
        .f_unsqueeze(1)?;
    Ok(VertexAttrs {
        v_pos: grid_coords(&set.keys, res + 1)?,
        set,
        attrs: sums.f_div(&counts)?,
    })
}

/// `get_defomed_verts`: `v/res − 0.5 + (1 − 1e-8)/(2·res) · tanh(deform)`, so a vertex moves at
/// most half a cell. `v_pos` is `[Nv, 3]` int64, `deform` `[Nv, 3]` float32.
pub fn get_deformed_verts(v_pos: &Tensor, deform: &Tensor, res: i64) -> Result<Tensor> {
    let scale = (1.0 - 1e-8) / (res as f64 * 2.0);
    Ok(v_pos
        .f_to_kind(Kind::Float)?
        .f_div_scalar(res)?
        .f_sub_scalar(0.5)?
        .f_add(&deform.f_tanh()?.f_mul_scalar(scale)?)?)
}
