//! Mesh representation (trellis/representations/mesh/cube2mesh.py): `SparseFeatures2Mesh` turns
//! the mesh decoder's per-voxel features into a triangle mesh with FlexiCubes, and
//! `MeshExtractResult` holds the mesh.
//!
//! The reference builds dense `(res+1)³` vertex and `res³` cube grids (gigabytes at res 256).
//! Here only the surface cubes (found around the inside vertices) and their corner vertices are
//! built, in dense-id order, which FlexiCubes turns into exactly the dense call's mesh (see
//! [`flexicubes`]); key sets and lookups use [`utils_cube::GridSet`] (about 85 MB at res 256).

pub mod flexicubes;
pub mod tables;
pub mod utils_cube;

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use flexicubes::{nonzero_1d, FlexiCubes, FlexiCubesInput};
use utils_cube::{
    cube_corners, get_deformed_verts, grid_coords, grid_key, sparse_cube2verts, GridSet,
    VertexAttrs,
};

/// Feature channels of the 8 corner sdf values, `(8, 1)`.
pub const SDF_CHANNELS: Range<i64> = 0..8;
/// Feature channels of the 8 corner deformations, `(8, 3)`.
pub const DEFORM_CHANNELS: Range<i64> = 8..32;
/// Feature channels of the per-cube FlexiCubes weights: beta 0..12, alpha 12..20, gamma 20.
pub const WEIGHT_CHANNELS: Range<i64> = 32..53;
/// Feature channels of the 8 corner colours, `(8, 6)`, present with `use_color`.
pub const COLOR_CHANNELS: Range<i64> = 53..101;
/// Channels per corner colour: RGB plus 3 "normal map" channels.
pub const COLOR_DIM: i64 = 6;

/// An extracted mesh (reference `MeshExtractResult`, inference fields only).
pub struct MeshExtractResult {
    /// `[V, 3]` float32 vertices in `[-0.5, 0.5]³`, Z up.
    pub vertices: Tensor,
    /// `[F, 3]` int64 triangles.
    pub faces: Tensor,
    /// `[V, C]` float32 per-vertex attributes (sigmoid colours), if the extractor had colours.
    pub vertex_attrs: Option<Tensor>,
    /// `[F, 3, 3]` float32 unit face normal, repeated for the 3 corners.
    pub face_normal: Tensor,
    /// The extraction resolution.
    pub res: i64,
    /// Whether the mesh has at least one vertex and one face.
    pub success: bool,
}

impl MeshExtractResult {
    /// Wraps a mesh and computes its face normals.
    pub fn new(
        vertices: Tensor,
        faces: Tensor,
        vertex_attrs: Option<Tensor>,
        res: i64,
    ) -> Result<Self> {
        let faces = faces.f_to_kind(Kind::Int64)?;
        let face_normal = face_normals(&vertices, &faces)?;
        let success = vertices.size()[0] != 0 && faces.size()[0] != 0;
        Ok(Self {
            vertices,
            faces,
            vertex_attrs,
            face_normal,
            res,
            success,
        })
    }

    /// The mesh of a field without surface: no vertex, no face, `success = false`.
    fn empty(res: i64, attr_channels: Option<i64>, device: Device) -> Result<Self> {
        let float = (Kind::Float, device);
        let vertex_attrs = match attr_channels {
            Some(c) => Some(Tensor::f_zeros([0, c], float)?),
            None => None,
        };
        Self::new(
            Tensor::f_zeros([0, 3], float)?,
            Tensor::f_zeros([0, 3], (Kind::Int64, device))?,
            vertex_attrs,
            res,
        )
    }
}

/// `normalize(cross(v1 − v0, v2 − v0))` per face (eps 1e-12, as `F.normalize`), repeated ×3.
fn face_normals(vertices: &Tensor, faces: &Tensor) -> Result<Tensor> {
    let corner =
        |k: i64| -> Result<Tensor> { Ok(vertices.f_index_select(0, &faces.f_select(1, k)?)?) };
    let v0 = corner(0)?;
    let normal = corner(1)?
        .f_sub(&v0)?
        .f_linalg_cross(&corner(2)?.f_sub(&v0)?, -1)?;
    let norm = normal
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    let unit = normal.f_div(&norm)?;
    let count = unit.size()[0];
    Ok(unit
        .f_unsqueeze(1)?
        .f_expand([count, 3, 3], false)?
        .f_contiguous()?)
}

/// Per-voxel decoder features → mesh, through FlexiCubes at resolution `res`.
///
/// Feature layout per voxel (`feats_channels()` = 53, or 101 with colour):
/// sdf `[0, 8)` as (8, 1); deform `[8, 32)` as (8, 3); weights `[32, 53)` = beta 0..12,
/// alpha 12..20, gamma 20; colour `[53, 101)` as (8, 6). Corner order (0,0,0), (1,0,0),
/// (0,1,0), (1,1,0), (0,0,1), (1,0,1), (0,1,1), (1,1,1).
#[derive(Debug, Clone, Copy)]
pub struct SparseFeatures2Mesh {
    res: i64,
    use_color: bool,
}

impl SparseFeatures2Mesh {
    /// The extractor for voxels at resolution `res` (TRELLIS: 4 × the decoder resolution, 256).
    pub fn new(res: i64, use_color: bool) -> Result<Self> {
        if res <= 0 {
            return Err(Error::invalid_argument(format!(
                "SparseFeatures2Mesh: res must be positive, found {res}"
            )));
        }
        Ok(Self { res, use_color })
    }

    pub fn res(&self) -> i64 {
        self.res
    }

    pub fn use_color(&self) -> bool {
        self.use_color
    }

    /// Feature channels per voxel: 53, or 101 with colour.
    pub fn feats_channels(&self) -> i64 {
        if self.use_color {
            COLOR_CHANNELS.end
        } else {
            WEIGHT_CHANNELS.end
        }
    }

    /// Extracts the mesh of one sparse voxel grid (reference `__call__`, `training=False`).
    ///
    /// `coords`: `[N, 3]` integer (x, y, z) voxel coordinates in `[0, res)`, or `[N, 4]` with a
    /// leading batch column that is ignored (the reference takes `coords[:, 1:]`); rows should be
    /// unique. `feats`: `[N, feats_channels()]` float32 in the layout above. Unlike the
    /// reference, `feats` is not modified (it adds the sdf bias in place).
    pub fn forward(&self, coords: &Tensor, feats: &Tensor) -> Result<MeshExtractResult> {
        let (coords, feats) = self.check_inputs(coords, feats)?;
        let inputs = {
            let verts = self.vertex_attrs_checked(&coords, &feats)?;
            self.flexicubes_inputs(&coords, &feats, &verts)?
        };
        // The per-vertex attributes and the lookups that built the inputs are freed before
        // FlexiCubes runs: its peak is the mesh decode's.
        let Some(inputs) = inputs else {
            let attr_channels = self.use_color.then_some(COLOR_DIM);
            return MeshExtractResult::empty(self.res, attr_channels, feats.device());
        };
        let out = FlexiCubes::new(feats.device())?.extract(&FlexiCubesInput {
            vertices: &inputs.vertices,
            scalar_field: &inputs.sdf,
            cube_idx: &inputs.cube_idx,
            cube_coords: Some(&inputs.cube_pos),
            resolution: self.res,
            beta: Some(&inputs.weights.f_narrow(1, 0, 12)?),
            alpha: Some(&inputs.weights.f_narrow(1, 12, 8)?),
            gamma_f: Some(&inputs.weights.f_select(1, 20)?),
            voxelgrid_colors: inputs.colors.as_ref(),
        })?;
        MeshExtractResult::new(out.vertices, out.faces, out.vertex_colors, self.res)
    }

    /// The per-vertex attributes the reference computes before FlexiCubes (`v_pos`, `v_attrs`
    /// of `sparse_cube2verts`): `[sdf + bias, deform (3), colour (6)]` averaged over the voxels
    /// sharing each vertex.
    pub fn vertex_attrs(&self, coords: &Tensor, feats: &Tensor) -> Result<VertexAttrs> {
        let (coords, feats) = self.check_inputs(coords, feats)?;
        self.vertex_attrs_checked(&coords, &feats)
    }

    /// Validates shapes and ranges; returns int64 `[N, 3]` coords and float32 feats.
    fn check_inputs(&self, coords: &Tensor, feats: &Tensor) -> Result<(Tensor, Tensor)> {
        let fshape = feats.size();
        let expected = self.feats_channels();
        if fshape.len() != 2 || fshape[1] != expected {
            return Err(Error::invalid_argument(format!(
                "SparseFeatures2Mesh(use_color={}): feats must be [N, {expected}] (sdf 8 + deform \
                 24 + weights 21{}), found {fshape:?}",
                self.use_color,
                if self.use_color { " + color 48" } else { "" }
            )));
        }
        let cshape = coords.size();
        if cshape.len() != 2 || !(cshape[1] == 3 || cshape[1] == 4) || cshape[0] != fshape[0] {
            return Err(Error::invalid_argument(format!(
                "SparseFeatures2Mesh: coords must be [{}, 3] or [{}, 4] (batch, x, y, z), found \
                 {cshape:?}",
                fshape[0], fshape[0]
            )));
        }
        if coords.is_floating_point() {
            return Err(Error::invalid_argument(format!(
                "SparseFeatures2Mesh: coords must be integers, found {:?}",
                coords.kind()
            )));
        }
        let coords = coords
            .f_narrow(1, cshape[1] - 3, 3)?
            .f_to_kind(Kind::Int64)?
            .f_to_device(feats.device())?;
        if cshape[0] > 0 {
            let min = coords.f_min()?.f_int64_value(&[])?;
            let max = coords.f_max()?.f_int64_value(&[])?;
            if min < 0 || max >= self.res {
                return Err(Error::invalid_argument(format!(
                    "SparseFeatures2Mesh: coords must lie in [0, {}), found values in [{min}, \
                     {max}]",
                    self.res
                )));
            }
        }
        Ok((coords, feats.f_to_kind(Kind::Float)?))
    }

    fn vertex_attrs_checked(&self, coords: &Tensor, feats: &Tensor) -> Result<VertexAttrs> {
        let n = feats.size()[0];
        let sdf = channels(feats, &SDF_CHANNELS)?
            .f_add_scalar(-1.0 / self.res as f64)?
            .f_view([n, 8, 1])?;
        let deform = channels(feats, &DEFORM_CHANNELS)?.f_view([n, 8, 3])?;
        let mut parts = vec![sdf, deform];
        if self.use_color {
            parts.push(channels(feats, &COLOR_CHANNELS)?.f_view([n, 8, COLOR_DIM])?);
        }
        sparse_cube2verts(coords, &Tensor::f_cat(&parts, -1)?, self.res)
    }

    /// FlexiCubes' inputs on the surface cubes, in increasing dense id, with their corner
    /// vertices numbered in increasing dense id: FlexiCubes then gives the dense call's mesh.
    /// Grid vertices that no voxel touches take the dense defaults (sdf 1, deform 0, colour 0)
    /// and cubes outside the voxels raw weights 0, as in the reference. None when no vertex is
    /// inside (an empty mesh).
    fn flexicubes_inputs(
        &self,
        coords: &Tensor,
        feats: &Tensor,
        verts: &VertexAttrs,
    ) -> Result<Option<FlexiCubesInputs>> {
        let r = self.res;
        let device = feats.device();
        let inside_vertex = verts.attrs.f_select(1, 0)?.f_lt(0.0)?;
        let inside = nonzero_1d(&inside_vertex)?;
        if inside.size()[0] == 0 {
            return Ok(None);
        }
        let corners = cube_corners(device)?.f_unsqueeze(0)?;
        let (cube_keys, corner_keys) = surface_cubes(verts, &inside_vertex, &inside, &corners, r)?;
        let cube_pos = grid_coords(&cube_keys, r)?;

        // Their corner vertices, numbered in increasing dense id.
        let grid = GridSet::from_keys(&corner_keys, r + 1)?;
        let (cube_idx, _) = grid.rows(&corner_keys)?;
        let (row, found) = verts.set.rows(&grid.keys)?;
        let num_attrs = verts.attrs.size()[1];
        let mut default = vec![0f32; num_attrs as usize];
        default[0] = 1.0;
        let default = Tensor::f_from_slice(&default)?
            .f_to_device(device)?
            .f_unsqueeze(0)?;
        let attrs = verts
            .attrs
            .f_index_select(0, &row)?
            .f_where_self(&found.f_unsqueeze(1)?, &default)?;
        let sdf = attrs.f_select(1, 0)?.f_contiguous()?;
        let vertices = get_deformed_verts(
            &grid_coords(&grid.keys, r + 1)?,
            &attrs.f_narrow(1, 1, 3)?,
            r,
        )?;
        let colors = match self.use_color {
            true => Some(attrs.f_narrow(1, 4, COLOR_DIM)?.f_contiguous()?),
            false => None,
        };

        Ok(Some(FlexiCubesInputs {
            vertices,
            sdf,
            cube_idx,
            cube_pos,
            weights: cube_weights(coords, feats, &cube_keys, r)?,
            colors,
        }))
    }
}

/// What [`SparseFeatures2Mesh`] hands FlexiCubes (owned, so that everything else it computed is
/// freed first).
struct FlexiCubesInputs {
    /// Deformed grid vertices `[V, 3]`.
    vertices: Tensor,
    /// Their sdf `[V]`.
    sdf: Tensor,
    /// Corner vertex rows of each surface cube `[S, 8]`.
    cube_idx: Tensor,
    /// Surface cube grid positions `[S, 3]`.
    cube_pos: Tensor,
    /// Per surface cube: beta (12), alpha (8), gamma (1).
    weights: Tensor,
    /// Per-vertex colours `[V, 6]` when the decoder predicts them.
    colors: Option<Tensor>,
}

/// The surface cubes of the field: `[S]` int64 cube keys (increasing) and `[S, 8]` int64 keys of
/// their corner vertices. A surface cube has an inside corner, so it is found among the cubes
/// around the inside vertices; vertices no voxel touches are outside.
fn surface_cubes(
    verts: &VertexAttrs,
    inside_vertex: &Tensor,
    inside: &Tensor,
    corners: &Tensor,
    r: i64,
) -> Result<(Tensor, Tensor)> {
    let candidates = verts
        .v_pos
        .f_index_select(0, inside)?
        .f_unsqueeze(1)?
        .f_sub(corners)?
        .f_reshape([-1, 3])?;
    let in_grid = candidates
        .f_ge(0)?
        .f_logical_and(&candidates.f_lt(r)?)?
        .f_all_dim(1, false)?;
    let candidates = candidates.f_index_select(0, &nonzero_1d(&in_grid)?)?;
    let cube_keys = GridSet::from_keys(&grid_key(&candidates, r)?, r)?.keys;
    let corner_keys = grid_key(
        &grid_coords(&cube_keys, r)?
            .f_unsqueeze(1)?
            .f_add(corners)?
            .f_reshape([-1, 3])?,
        r + 1,
    )?
    .f_view([-1, 8])?;
    let (rows, found) = verts.set.rows(&corner_keys)?;
    let inside_corners = inside_vertex
        .f_index_select(0, &rows.f_reshape([-1])?)?
        .f_view([-1, 8])?
        .f_logical_and(&found)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?;
    let surface = nonzero_1d(&inside_corners.f_lt(8)?)?;
    Ok((
        cube_keys.f_index_select(0, &surface)?,
        corner_keys.f_index_select(0, &surface)?,
    ))
}

/// `[S, 21]` raw weights of the cubes `cube_keys`: the voxel's, 0 for a cube that is no voxel.
/// For a repeated voxel the last row wins, as in the reference's dense assignment.
fn cube_weights(coords: &Tensor, feats: &Tensor, cube_keys: &Tensor, r: i64) -> Result<Tensor> {
    let device = feats.device();
    let n = feats.size()[0];
    // int32 rows: the table spans the whole R³ grid.
    let mut table = Tensor::f_full([r * r * r], -1i64, (Kind::Int, device))?;
    let _ = table.f_index_put_(
        &[Some(grid_key(coords, r)?)],
        &Tensor::f_arange(n, (Kind::Int, device))?,
        false,
    )?;
    let row = table.f_index_select(0, cube_keys)?.f_to_kind(Kind::Int64)?;
    let found = row.f_ge(0)?.f_unsqueeze(1)?;
    Ok(channels(feats, &WEIGHT_CHANNELS)?
        .f_index_select(0, &row.f_clamp_min(0)?)?
        .f_where_self(&found, &Tensor::f_zeros([1, 1], (Kind::Float, device))?)?)
}

/// The feature columns `range` of `feats` `[N, C]`.
fn channels(feats: &Tensor, range: &Range<i64>) -> Result<Tensor> {
    Ok(feats.f_narrow(1, range.start, range.end - range.start)?)
}
