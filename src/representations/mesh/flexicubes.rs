//! FlexiCubes (`flexicubes.py` of MaxtirError/FlexiCubes @ 815e075, the copy TRELLIS vendors
//! under trellis/representations/mesh/flexicubes): dual marching cubes with learned per-cube
//! weights, inference path only (`training=False`).
//!
//! Every surface cube (corners of mixed `sdf < 0` sign) emits one dual vertex per edge group of
//! its case in [`DMC_TABLE`]: the beta-weighted mean of the alpha-weighted zero crossings of the
//! group's edges. Each grid edge with a sign change that is shared by four surface cubes becomes
//! a quad of their dual vertices, split into two triangles by the gamma weights.
//!
//! Output order is the reference's, because later stages (and the golden data) depend on it:
//! dual vertices are grouped by how many vertices their cube emits (all 1-vertex cubes first,
//! in cube row order, then 2, 3, 4), quads follow the sorted surface-edge order, and the quads
//! whose first edge end is outside come before the others. It is computed here with the same
//! vectorised tensor operations (sorted `unique`, stable sort, ordered `index_add`), so it does
//! not depend on the device.
//!
//! The reference assumes `cube_idx` is the dense `R³` grid (row = `x·R² + y·R + z`) to find a
//! cube's neighbour when it resolves the C16/C19 ambiguity. Here the cube's integer position may
//! instead be given ([`FlexiCubesInput::cube_coords`]), so that a sparse caller can pass only the
//! cubes near the surface. Passing every surface cube, in increasing dense id, with vertex ids
//! that increase with the dense vertex id, gives exactly the dense call's output.

use tch::{Device, Kind, Tensor};

use super::tables::{
    CHECK_TABLE, CUBE_EDGES, DMC_TABLE, MAX_CUBE_VERTICES, MAX_GROUP_EDGES, NUM_VD_TABLE,
};
use super::utils_cube::grid_key;
use crate::error::{Error, Result};
use crate::nn::group_sum::GroupedRows;

/// The reference's default `weight_scale`: how far tanh/sigmoid weights may move from 1 (0.5).
pub const DEFAULT_WEIGHT_SCALE: f64 = 0.99;

/// The arguments of one extraction, named as in the reference call.
pub struct FlexiCubesInput<'a> {
    /// `[Nv, 3]` float32 (deformed) grid vertex positions.
    pub vertices: &'a Tensor,
    /// `[Nv]` float32 signed distance per vertex; negative is inside, exactly 0 is outside.
    pub scalar_field: &'a Tensor,
    /// `[Nc, 8]` int64 vertex ids of each cube's corners, corner index = x + 2y + 4z.
    pub cube_idx: &'a Tensor,
    /// `[Nc, 3]` int64 integer position of each cube in the `R³` grid. `None` means the
    /// reference's dense layout: `Nc = R³` and row `x·R² + y·R + z` is cube (x, y, z).
    pub cube_coords: Option<&'a Tensor>,
    /// Cubes per axis, R.
    pub resolution: i64,
    /// `[Nc, 12]` raw (pre-tanh) edge weights; `None` means all ones after normalisation.
    pub beta: Option<&'a Tensor>,
    /// `[Nc, 8]` raw (pre-tanh) corner weights; `None` means all ones after normalisation.
    pub alpha: Option<&'a Tensor>,
    /// `[Nc]` raw (pre-sigmoid) quad-split weights; `None` means all ones after normalisation.
    pub gamma_f: Option<&'a Tensor>,
    /// `[Nv, C]` raw (pre-sigmoid) vertex colours, interpolated like the dual vertices.
    pub voxelgrid_colors: Option<&'a Tensor>,
}

/// What the reference returns, plus the intermediate decisions that fix the topology.
pub struct FlexiCubesOutput {
    /// `[V, 3]` float32 dual vertices (unreferenced ones included, as in the reference).
    pub vertices: Tensor,
    /// `[F, 3]` int64 triangles.
    pub faces: Tensor,
    /// `[K]` float32 regulariser L_dev, one per (dual vertex, group edge).
    pub l_dev: Tensor,
    /// `[V, C]` float32 interpolated sigmoid colours, when colours were given.
    pub vertex_colors: Option<Tensor>,
    /// Intermediates, for diagnosing a topology mismatch.
    pub trace: FlexiCubesTrace,
}

/// Intermediate results of an extraction, in the reference's order.
pub struct FlexiCubesTrace {
    /// `[S]` int64 rows of `cube_idx` that are surface cubes, increasing.
    pub surf_cube_ids: Tensor,
    /// `[S]` int64 `Σ occ_i · 2^i` before the C16/C19 disambiguation.
    pub case_ids_raw: Tensor,
    /// `[S]` int64 case ids after the disambiguation.
    pub case_ids: Tensor,
    /// `[E, 2]` int64 sign-changing edges (vertex id pairs), sorted.
    pub surf_edges: Tensor,
    /// `[V]` float32 normalised gamma of each dual vertex's cube.
    pub vd_gamma: Tensor,
}

/// The extractor: the lookup tables as tensors on one device.
pub struct FlexiCubes {
    device: Device,
    weight_scale: f64,
    /// `[256, 4, 7]` int64.
    dmc_table: Tensor,
    /// `[256]` int64.
    num_vd_table: Tensor,
    /// `[256, 5]` int64.
    check_table: Tensor,
    /// `[24]` int64: the corner pairs of [`CUBE_EDGES`], flattened.
    cube_edges: Tensor,
}

/// Surface-edge bookkeeping of the sign-changing (cube, edge) entries.
struct SurfEdges {
    /// `[E, 2]` int64 unique sign-changing edges, lexicographically sorted.
    edges: Tensor,
    /// `[S·12]` int64 surface-edge index of each (cube, edge) entry, -1 where no sign change.
    idx_map: Tensor,
    /// `[M]` int64 flat (cube·12 + edge) positions of the sign-changing entries, increasing.
    entries: Tensor,
    /// `[M]` int64 surface-edge index of each of those entries.
    entry_edge: Tensor,
    /// `[M]` int64 how many surface cubes share each entry's edge.
    entry_count: Tensor,
}

/// The dual vertices and their per-(cube, edge) assignment.
struct DualVertices {
    vd: Tensor,
    l_dev: Tensor,
    vd_gamma: Tensor,
    /// `[S·12]` int64 dual vertex of each (cube, edge) entry that belongs to an edge group.
    vd_idx_map: Tensor,
    vd_color: Option<Tensor>,
}

impl FlexiCubes {
    /// The extractor with the reference's default weight scale (0.99).
    pub fn new(device: Device) -> Result<Self> {
        Self::with_weight_scale(device, DEFAULT_WEIGHT_SCALE)
    }

    /// The extractor with another `weight_scale`.
    pub fn with_weight_scale(device: Device, weight_scale: f64) -> Result<Self> {
        let dmc: Vec<i64> = DMC_TABLE
            .iter()
            .flatten()
            .flatten()
            .map(|&e| i64::from(e))
            .collect();
        let num_vd: Vec<i64> = NUM_VD_TABLE.iter().map(|&n| i64::from(n)).collect();
        let check: Vec<i64> = CHECK_TABLE
            .iter()
            .flatten()
            .map(|&c| i64::from(c))
            .collect();
        let edges: Vec<i64> = CUBE_EDGES.iter().flatten().map(|&c| c as i64).collect();
        Ok(Self {
            device,
            weight_scale,
            dmc_table: Tensor::f_from_slice(&dmc)?
                .f_view([256, MAX_CUBE_VERTICES as i64, MAX_GROUP_EDGES as i64])?
                .f_to_device(device)?,
            num_vd_table: Tensor::f_from_slice(&num_vd)?.f_to_device(device)?,
            check_table: Tensor::f_from_slice(&check)?
                .f_view([256, 5])?
                .f_to_device(device)?,
            cube_edges: Tensor::f_from_slice(&edges)?.f_to_device(device)?,
        })
    }

    /// The device the tables live on (inputs must be there too).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Extracts the mesh (reference `FlexiCubes.__call__` with `training=False`).
    pub fn extract(&self, input: &FlexiCubesInput<'_>) -> Result<FlexiCubesOutput> {
        let num_vertices = validate(input)?;
        let (occ_n, surf_ids, occ_s) = self.identify_surf_cubes(input)?;
        let num_surf = surf_ids.size()[0];
        if num_surf == 0 {
            return self.empty_output(input);
        }
        let (beta, alpha, gamma) = self.normalize_weights(input, &surf_ids)?;
        let cube_pos = self.surface_cube_positions(input, &surf_ids)?;
        let (case_ids_raw, case_ids) = self.case_ids(&occ_s, &cube_pos, input.resolution)?;
        let cubes_s = input.cube_idx.f_index_select(0, &surf_ids)?;
        let surf = self.identify_surf_edges(&occ_n, &cubes_s, num_vertices)?;
        let dual = self.compute_vd(input, &surf, &case_ids, &beta, &alpha, &gamma)?;
        let faces = triangulate(input.scalar_field, &surf, &dual)?;
        Ok(FlexiCubesOutput {
            vertices: dual.vd,
            faces,
            l_dev: dual.l_dev,
            vertex_colors: dual.vd_color,
            trace: FlexiCubesTrace {
                surf_cube_ids: surf_ids,
                case_ids_raw,
                case_ids,
                surf_edges: surf.edges,
                vd_gamma: dual.vd_gamma,
            },
        })
    }

    /// The reference's result when no cube crosses the surface: empty tensors.
    fn empty_output(&self, input: &FlexiCubesInput<'_>) -> Result<FlexiCubesOutput> {
        let float = (Kind::Float, self.device);
        let long = (Kind::Int64, self.device);
        let vertex_colors = match input.voxelgrid_colors {
            Some(colors) => Some(Tensor::f_zeros([0, colors.size()[1]], float)?),
            None => None,
        };
        Ok(FlexiCubesOutput {
            vertices: Tensor::f_zeros([0, 3], float)?,
            faces: Tensor::f_zeros([0, 3], long)?,
            l_dev: Tensor::f_zeros([0], float)?,
            vertex_colors,
            trace: FlexiCubesTrace {
                surf_cube_ids: Tensor::f_zeros([0], long)?,
                case_ids_raw: Tensor::f_zeros([0], long)?,
                case_ids: Tensor::f_zeros([0], long)?,
                surf_edges: Tensor::f_zeros([0, 2], long)?,
                vd_gamma: Tensor::f_zeros([0], float)?,
            },
        })
    }

    /// Occupancy (`sdf < 0`) per vertex, the surface cubes (mixed corner occupancy) in row
    /// order, and their `[S, 8]` corner occupancy.
    fn identify_surf_cubes(&self, input: &FlexiCubesInput<'_>) -> Result<(Tensor, Tensor, Tensor)> {
        let occ_n = input.scalar_field.f_lt(0.0)?;
        let occ_fx8 = occ_n
            .f_index_select(0, &input.cube_idx.f_reshape([-1])?)?
            .f_view([-1, 8])?;
        let occ_sum = occ_fx8.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64)?;
        let surf = occ_sum.f_gt(0)?.f_logical_and(&occ_sum.f_lt(8)?)?;
        let surf_ids = nonzero_1d(&surf)?;
        let occ_s = occ_fx8.f_index_select(0, &surf_ids)?;
        Ok((occ_n, surf_ids, occ_s))
    }

    /// beta = tanh·s + 1, alpha = tanh·s + 1, gamma = sigmoid·s + (1 − s)/2 on the surface cubes
    /// (the reference normalises every cube, then keeps these rows: the same numbers).
    fn normalize_weights(
        &self,
        input: &FlexiCubesInput<'_>,
        surf_ids: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let n = surf_ids.size()[0];
        let scale = self.weight_scale;
        let float = (Kind::Float, self.device);
        let beta = match input.beta {
            Some(b) => b
                .f_index_select(0, surf_ids)?
                .f_tanh()?
                .f_mul_scalar(scale)?
                .f_add_scalar(1.0)?,
            None => Tensor::f_ones([n, 12], float)?,
        };
        let alpha = match input.alpha {
            Some(a) => a
                .f_index_select(0, surf_ids)?
                .f_tanh()?
                .f_mul_scalar(scale)?
                .f_add_scalar(1.0)?,
            None => Tensor::f_ones([n, 8], float)?,
        };
        let gamma = match input.gamma_f {
            Some(g) => g
                .f_index_select(0, surf_ids)?
                .f_sigmoid()?
                .f_mul_scalar(scale)?
                .f_add_scalar((1.0 - scale) / 2.0)?,
            None => Tensor::f_ones([n], float)?,
        };
        Ok((beta, alpha, gamma))
    }

    /// `[S, 3]` int64 grid position of each surface cube.
    fn surface_cube_positions(
        &self,
        input: &FlexiCubesInput<'_>,
        surf_ids: &Tensor,
    ) -> Result<Tensor> {
        match input.cube_coords {
            Some(coords) => Ok(coords.f_index_select(0, surf_ids)?),
            None => {
                let r = input.resolution;
                let x = surf_ids.f_div_scalar_mode(r * r, "floor")?;
                let y = surf_ids.f_div_scalar_mode(r, "floor")?.f_remainder(r)?;
                let z = surf_ids.f_remainder(r)?;
                Ok(Tensor::f_stack(&[x, y, z], 1)?)
            }
        }
    }

    /// Case ids `Σ occ_i·2^i` (raw) and after resolving C16/C19: an ambiguous cube whose
    /// neighbour across the ambiguous face (`check_table[case][1..4]`) is an ambiguous surface
    /// cube too takes `check_table[case][4]`. Neighbours are judged on the raw cases.
    fn case_ids(&self, occ_s: &Tensor, cube_pos: &Tensor, res: i64) -> Result<(Tensor, Tensor)> {
        let powers: Vec<i64> = (0..8).map(|i| 1i64 << i).collect();
        let powers = Tensor::f_from_slice(&powers)?.f_to_device(self.device)?;
        let raw = occ_s
            .f_to_kind(Kind::Int64)?
            .f_mul(&powers.f_unsqueeze(0)?)?
            .f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64)?;
        let config = self.check_table.f_index_select(0, &raw)?;
        let to_check = nonzero_1d(&config.f_select(1, 0)?.f_eq(1)?)?;
        if to_check.size()[0] == 0 {
            return Ok((raw.shallow_clone(), raw));
        }
        let config = config.f_index_select(0, &to_check)?;
        let pos = cube_pos.f_index_select(0, &to_check)?;
        let adj = pos.f_add(&config.f_narrow(1, 1, 3)?)?;
        let in_range = adj
            .f_ge(0)?
            .f_logical_and(&adj.f_lt(res)?)?
            .f_all_dim(1, false)?;
        let (sorted_keys, _) = grid_key(&pos, res)?.f_sort_stable(true, 0, false)?;
        let adj_key = grid_key(&adj, res)?;
        let found = lookup_sorted(&sorted_keys, &adj_key)?.1;
        let invert = nonzero_1d(&in_range.f_logical_and(&found)?)?;
        let rows = to_check.f_index_select(0, &invert)?;
        let values = config.f_select(1, 4)?.f_index_select(0, &invert)?;
        let cases = raw.f_index_put(&[Some(rows)], &values, false)?;
        Ok((raw, cases))
    }

    /// The sign-changing edges of the surface cubes, uniquified and sorted by (v_a, v_b) in
    /// [`CUBE_EDGES`] orientation. Every cube sharing a sign-changing edge is a surface cube,
    /// so counting among the sign-changing entries gives the reference's edge counts.
    fn identify_surf_edges(
        &self,
        occ_n: &Tensor,
        cubes_s: &Tensor,
        num_vertices: i64,
    ) -> Result<SurfEdges> {
        let all_edges = cubes_s
            .f_index_select(1, &self.cube_edges)?
            .f_reshape([-1, 2])?;
        let occ = occ_n
            .f_index_select(0, &all_edges.f_reshape([-1])?)?
            .f_view([-1, 2])?;
        let changes = occ.f_select(1, 0)?.f_ne_tensor(&occ.f_select(1, 1)?)?;
        let entries = nonzero_1d(&changes)?;
        let pairs = all_edges.f_index_select(0, &entries)?;
        // (v_a, v_b) as one key: sorting keys is sorting pairs lexicographically.
        let keys = pairs
            .f_select(1, 0)?
            .f_mul_scalar(num_vertices)?
            .f_add(&pairs.f_select(1, 1)?)?;
        let (unique, inverse, counts) = keys.f_internal_unique2(true, true, true)?;
        let edges = Tensor::f_stack(
            &[
                unique.f_div_scalar_mode(num_vertices, "floor")?,
                unique.f_remainder(num_vertices)?,
            ],
            1,
        )?;
        let idx_map = Tensor::f_full([all_edges.size()[0]], -1i64, (Kind::Int64, self.device))?
            .f_scatter(0, &entries, &inverse)?;
        let entry_count = counts.f_index_select(0, &inverse)?;
        Ok(SurfEdges {
            edges,
            idx_map,
            entries,
            entry_edge: inverse,
            entry_count,
        })
    }

    /// Dual vertices (Section 4.2): for each surface cube and each of its `num_vd` edge groups,
    /// the beta-weighted mean of the alpha-weighted zero crossings; colours the same way after
    /// sigmoid; and L_dev (the plain zero crossings' mean absolute deviation of distance).
    fn compute_vd(
        &self,
        input: &FlexiCubesInput<'_>,
        surf: &SurfEdges,
        case_ids: &Tensor,
        beta: &Tensor,
        alpha: &Tensor,
        gamma: &Tensor,
    ) -> Result<DualVertices> {
        let flat_edges = surf.edges.f_reshape([-1])?;
        let edges_x = input
            .vertices
            .f_index_select(0, &flat_edges)?
            .f_view([-1, 2, 3])?;
        let edges_s = input
            .scalar_field
            .f_index_select(0, &flat_edges)?
            .f_view([-1, 2, 1])?;
        let zero_crossing = linear_interp(&edges_s, &edges_x)?;
        let edges_c = match input.voxelgrid_colors {
            Some(colors) => {
                let c = colors.size()[1];
                Some(
                    colors
                        .f_index_select(0, &flat_edges)?
                        .f_sigmoid()?
                        .f_view([-1, 2, c])?,
                )
            }
            None => None,
        };

        let groups = self.edge_groups(case_ids, gamma)?;
        let total = groups.total;
        // Entry (cube, edge) of every group member, as a flat cube·12 + edge index.
        let flat = groups.to_cube.f_mul_scalar(12)?.f_add(&groups.edge)?;
        let idx_group = surf.idx_map.f_index_select(0, &flat)?;
        if idx_group.numel() > 0 && idx_group.f_min()?.f_int64_value(&[])? < 0 {
            return Err(Error::internal(
                "FlexiCubes: an edge group names a cube edge without a sign change",
            ));
        }
        let x_group = edges_x.f_index_select(0, &idx_group)?;
        let s_group = edges_s.f_index_select(0, &idx_group)?;
        let zc_group = zero_crossing.f_index_select(0, &idx_group)?;
        let alpha_group = alpha
            .f_index_select(1, &self.cube_edges)?
            .f_reshape([-1, 2])?
            .f_index_select(0, &flat)?
            .f_view([-1, 2, 1])?;
        let weights_group = s_group.f_mul(&alpha_group)?;
        let ue_group = linear_interp(&weights_group, &x_group)?;
        let beta_group = beta
            .f_reshape([-1])?
            .f_index_select(0, &flat)?
            .f_view([-1, 1])?;
        // Sums over each dual vertex's group members, in the same order at every run.
        let members = GroupedRows::new(&groups.to_vd, total)?;
        let beta_sum = members.sum(&beta_group)?;
        let vd = members
            .sum(&ue_group.f_mul(&beta_group)?)?
            .f_div(&beta_sum)?;
        let vd_color = match edges_c {
            Some(edges_c) => {
                let c_group = edges_c.f_index_select(0, &idx_group)?;
                let uc_group = linear_interp(&weights_group, &c_group)?;
                Some(
                    members
                        .sum(&uc_group.f_mul(&beta_group)?)?
                        .f_div(&beta_sum)?,
                )
            }
            None => None,
        };
        let l_dev = reg_loss(&vd, &zc_group, &groups.to_vd, &members, &groups.num_edges)?;
        let vd_idx_map = Tensor::f_zeros([surf.idx_map.size()[0]], (Kind::Int64, self.device))?
            .f_scatter(0, &flat, &groups.to_vd)?;
        Ok(DualVertices {
            vd,
            l_dev,
            vd_gamma: groups.vd_gamma,
            vd_idx_map,
            vd_color,
        })
    }

    /// The edge groups of every dual vertex, batched by the number of vertices a cube emits
    /// (ascending, as the reference's `for num in unique(num_vd)` loop): this batching is what
    /// orders the dual vertices.
    fn edge_groups(&self, case_ids: &Tensor, gamma: &Tensor) -> Result<EdgeGroups> {
        let num_vd = self.num_vd_table.f_index_select(0, case_ids)?;
        let long = (Kind::Int64, self.device);
        let mut edge = Vec::new();
        let mut to_vd = Vec::new();
        let mut to_cube = Vec::new();
        let mut num_edges = Vec::new();
        let mut vd_gamma = Vec::new();
        let mut total = 0i64;
        for num in 1..=MAX_CUBE_VERTICES as i64 {
            let cubes = nonzero_1d(&num_vd.f_eq(num)?)?;
            let count = cubes.size()[0];
            if count == 0 {
                continue;
            }
            let shape = [count, num, MAX_GROUP_EDGES as i64];
            let group = self
                .dmc_table
                .f_index_select(0, &case_ids.f_index_select(0, &cubes)?)?
                .f_narrow(1, 0, num)?;
            let mask = group.f_ne(-1)?;
            let vd_ids = Tensor::f_arange_start(total, total + count * num, long)?
                .f_view([count, num, 1])?
                .f_expand(shape, false)?;
            let cube_ids = cubes.f_view([count, 1, 1])?.f_expand(shape, false)?;
            edge.push(group.f_masked_select(&mask)?);
            to_vd.push(vd_ids.f_masked_select(&mask)?);
            to_cube.push(cube_ids.f_masked_select(&mask)?);
            num_edges.push(
                mask.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64)?
                    .f_reshape([-1])?,
            );
            vd_gamma.push(
                gamma
                    .f_index_select(0, &cubes)?
                    .f_repeat_interleave_self_int(num, 0, None)?,
            );
            total += count * num;
        }
        Ok(EdgeGroups {
            edge: Tensor::f_cat(&edge, 0)?,
            to_vd: Tensor::f_cat(&to_vd, 0)?,
            to_cube: Tensor::f_cat(&to_cube, 0)?,
            num_edges: Tensor::f_cat(&num_edges, 0)?,
            vd_gamma: Tensor::f_cat(&vd_gamma, 0)?,
            total,
        })
    }
}

/// Flattened edge groups: one entry per (dual vertex, edge).
struct EdgeGroups {
    /// `[K]` cube edge (0..12) of each entry.
    edge: Tensor,
    /// `[K]` dual vertex of each entry.
    to_vd: Tensor,
    /// `[K]` surface cube (row in the surface list) of each entry.
    to_cube: Tensor,
    /// `[V]` number of edges of each dual vertex.
    num_edges: Tensor,
    /// `[V]` gamma of each dual vertex's cube.
    vd_gamma: Tensor,
    /// V.
    total: i64,
}

/// Checks the shapes and kinds of the inputs; returns the vertex count.
fn validate(input: &FlexiCubesInput<'_>) -> Result<i64> {
    let vshape = input.vertices.size();
    if vshape.len() != 2 || vshape[1] != 3 {
        return Err(Error::invalid_argument(format!(
            "FlexiCubes: voxelgrid_vertices must be [num_vertices, 3], found {vshape:?}"
        )));
    }
    let nv = vshape[0];
    expect_shape("scalar_field", input.scalar_field, &[nv])?;
    let cshape = input.cube_idx.size();
    if cshape.len() != 2 || cshape[1] != 8 {
        return Err(Error::invalid_argument(format!(
            "FlexiCubes: cube_idx must be [num_cubes, 8], found {cshape:?}"
        )));
    }
    if input.cube_idx.kind() != Kind::Int64 {
        return Err(Error::invalid_argument(format!(
            "FlexiCubes: cube_idx must be int64, found {:?}",
            input.cube_idx.kind()
        )));
    }
    let nc = cshape[0];
    let r = input.resolution;
    if r <= 0 {
        return Err(Error::invalid_argument(format!(
            "FlexiCubes: resolution must be positive, found {r}"
        )));
    }
    match input.cube_coords {
        Some(coords) => {
            expect_shape("cube_coords", coords, &[nc, 3])?;
            if coords.kind() != Kind::Int64 {
                return Err(Error::invalid_argument(format!(
                    "FlexiCubes: cube_coords must be int64, found {:?}",
                    coords.kind()
                )));
            }
        }
        None if nc != r * r * r => {
            return Err(Error::invalid_argument(format!(
                "FlexiCubes: without cube_coords, cube_idx must list the dense grid of \
                 resolution^3 = {} cubes, found {nc}",
                r * r * r
            )));
        }
        None => {}
    }
    if let Some(beta) = input.beta {
        expect_shape("beta", beta, &[nc, 12])?;
    }
    if let Some(alpha) = input.alpha {
        expect_shape("alpha", alpha, &[nc, 8])?;
    }
    if let Some(gamma) = input.gamma_f {
        expect_shape("gamma_f", gamma, &[nc])?;
    }
    if let Some(colors) = input.voxelgrid_colors {
        let shape = colors.size();
        if shape.len() != 2 || shape[0] != nv {
            return Err(Error::invalid_argument(format!(
                "FlexiCubes: voxelgrid_colors must be [{nv}, C], found {shape:?}"
            )));
        }
    }
    Ok(nv)
}

fn expect_shape(name: &str, t: &Tensor, shape: &[i64]) -> Result<()> {
    if t.size() != shape {
        return Err(Error::invalid_argument(format!(
            "FlexiCubes: {name} must have shape {shape:?}, found {:?}",
            t.size()
        )));
    }
    Ok(())
}

/// Indices of the true entries of a 1-D mask, increasing.
pub(crate) fn nonzero_1d(mask: &Tensor) -> Result<Tensor> {
    Ok(mask.f_nonzero()?.f_reshape([-1])?)
}

/// Where each of `keys` sits in the increasing `sorted` (clamped to a valid row) and whether it
/// is there. `sorted` must not be empty.
fn lookup_sorted(sorted: &Tensor, keys: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = sorted.size()[0];
    let pos = keys
        .f_searchsorted(sorted, false, false, "left", None::<Tensor>)?
        .f_clamp_max(n - 1)?;
    let found = sorted.f_index_select(0, &pos)?.f_eq_tensor(keys)?;
    Ok((pos, found))
}

/// Zero crossing of each edge `[K, 2, D]` from end weights `[K, 2, 1]`:
/// `(x0·w1 − x1·w0) / (w1 − w0)`, summed in the reference's order.
fn linear_interp(weights: &Tensor, x: &Tensor) -> Result<Tensor> {
    let swapped = Tensor::f_cat(
        &[
            weights.f_narrow(1, 1, 1)?,
            weights.f_narrow(1, 0, 1)?.f_neg()?,
        ],
        1,
    )?;
    let denominator = swapped.f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?;
    Ok(x.f_mul(&swapped)?
        .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?
        .f_div(&denominator)?)
}

/// L_dev (Equation 8): per group entry, |dist − mean dist of its vertex| where dist is the
/// distance from the plain zero crossing to the dual vertex.
fn reg_loss(
    vd: &Tensor,
    ue: &Tensor,
    to_vd: &Tensor,
    members: &GroupedRows,
    num_edges: &Tensor,
) -> Result<Tensor> {
    let dist = ue
        .f_sub(&vd.f_index_select(0, to_vd)?)?
        .f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?;
    let mean = members
        .sum(&dist)?
        .f_div(&num_edges.f_to_kind(Kind::Float)?)?;
    Ok(dist.f_sub(&mean.f_index_select(0, to_vd)?)?.f_abs()?)
}

/// Quads from the surface edges shared by four surface cubes, in surface-edge order (the four
/// cubes in row order), wound towards positive sdf, each split into two triangles along the
/// diagonal with the larger gamma product (strictly; ties take the second split).
fn triangulate(scalar_field: &Tensor, surf: &SurfEdges, dual: &DualVertices) -> Result<Tensor> {
    let device = scalar_field.device();
    let in_quad = nonzero_1d(&surf.entry_count.f_eq(4)?)?;
    let group = surf.entry_edge.f_index_select(0, &in_quad)?;
    let vd_idx = dual
        .vd_idx_map
        .f_index_select(0, &surf.entries.f_index_select(0, &in_quad)?)?;
    let (edge_indices, order) = group.f_sort_stable(true, 0, false)?;
    let quads = vd_idx.f_index_select(0, &order)?.f_view([-1, 4])?;
    let first_edge = edge_indices.f_view([-1, 4])?.f_select(1, 0)?;
    let first_end = surf.edges.f_index_select(0, &first_edge)?.f_select(1, 0)?;
    let flip = scalar_field.f_index_select(0, &first_end)?.f_gt(0.0)?;
    let outward = quads
        .f_index_select(0, &nonzero_1d(&flip)?)?
        .f_index_select(1, &index_tensor(&[0, 1, 3, 2], device)?)?;
    let inward = quads
        .f_index_select(0, &nonzero_1d(&flip.f_logical_not()?)?)?
        .f_index_select(1, &index_tensor(&[2, 3, 1, 0], device)?)?;
    let quads = Tensor::f_cat(&[outward, inward], 0)?;
    let gamma = dual
        .vd_gamma
        .f_index_select(0, &quads.f_reshape([-1])?)?
        .f_view([-1, 4])?;
    let gamma_02 = gamma.f_select(1, 0)?.f_mul(&gamma.f_select(1, 2)?)?;
    let gamma_13 = gamma.f_select(1, 1)?.f_mul(&gamma.f_select(1, 3)?)?;
    let split_02 = gamma_02.f_gt_tensor(&gamma_13)?.f_unsqueeze(1)?;
    let split_1 = quads.f_index_select(1, &index_tensor(&[0, 1, 2, 0, 2, 3], device)?)?;
    let split_2 = quads.f_index_select(1, &index_tensor(&[0, 1, 3, 3, 1, 2], device)?)?;
    Ok(split_1
        .f_where_self(&split_02, &split_2)?
        .f_reshape([-1, 3])?)
}

fn index_tensor(values: &[i64], device: Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(values)?.f_to_device(device)?)
}
