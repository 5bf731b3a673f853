//! The reference's `_fill_holes` (research/trellis.md §4.4): remove the faces no camera can
//! see (inner walls and the inside of thin shells, which FlexiCubes produces and which would
//! waste texture space and bake black), then close the small holes that leaves or that were
//! there.
//!
//! # What we do, step by step
//!
//! 1. **Visibility**: the mesh is rasterised ([`MeshScene::rasterize`]) from `views` cameras
//!    on the sphere-Hammersley set (radius 2, 40° field of view, near 1, far 3, as the
//!    reference) at `resolution²`; a face's visibility is the fraction of views in which at
//!    least one pixel shows it.
//! 2. **Outer and inner faces**: per connected component (faces joined by shared edges), the
//!    faces whose visibility exceeds `min(max(q75, 0.25), 0.5)` (q75: the component's 75th
//!    percentile, linear interpolation as `torch.quantile`) are *outer*; faces never seen are
//!    *inner*.
//! 3. **Minimum cut**, exactly as the reference poses it: on the dual graph (a node per face,
//!    an arc between faces sharing an edge with capacity = that edge's length), inner faces are
//!    tied to a source and outer faces to a sink with capacity 1; a maximum flow (Dinic's
//!    algorithm, [`min_cut_source_side`]) gives the minimum cut, and the faces on the source
//!    side are the candidates for removal. The cut runs along short edges: through the narrow
//!    openings that join an inner wall to the outer surface.
//! 4. **Checks** per connected component of the candidates, as the reference: the component
//!    stays if its median visibility (lower median, as `torch.median`) exceeds 0.25, or if one
//!    of the new boundary loops its removal would open has an area above `max_hole_size`
//!    (area = Σ ½‖(a − c) × (b − c)‖ over the loop's edges `ab`, c the mean of the edge
//!    midpoints). The other components are deleted, and unreferenced vertices dropped.
//! 5. **Hole filling**: every boundary loop with at most `max_hole_edges` edges and an area
//!    (same measure) of at most `max_hole_size` is closed by a minimum-cost triangulation of
//!    the loop (dynamic programming over the loop's vertices, O(n³); the cost is the area,
//!    with a small squared-edge-length term that picks short diagonals among equal areas and
//!    a penalty that keeps degenerate triangles out), wound opposite to the boundary edges so
//!    the patch faces the way its neighbours do.
//!
//! # Differences from the reference
//!
//! - The reference returns right after step 2 when no face is invisible, skipping the hole
//!   filling; we fill holes in that case too (a mesh with a small hole and no inner faces
//!   still gets it closed, which is the point of the option).
//! - Its last step is pymeshfix's `fill_small_boundaries(nbe, refine=True)`, which also
//!   inserts vertices inside a patch to match the surrounding edge lengths. We add no
//!   vertices: the patch triangulates the loop's own vertices. Holes
//!   are small by construction, and the texture bake does not need a finer patch. We also
//!   require the loop's area to be at most `max_hole_size` (pymeshfix counts edges only).
//! - Boundary loops that touch themselves (a vertex visited twice) are split at that vertex
//!   into simple loops, each filled on its own.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::export::check_mesh;
use crate::pipeline::Mesh;
use crate::render::camera::{multiview, DEFAULT_FOV_DEGREES, DEFAULT_RADIUS};
use crate::render::mesh_raster::MeshScene;

use super::simplify::compact;

/// The near and far planes of the visibility cameras (the reference's `perspective_from_fov_xy
/// (fov, fov, 1, 3)`): the unit cube seen from radius 2 lies within.
const NEAR: f32 = 1.0;
const FAR: f32 = 3.0;
/// The reference multiplies capacities by 1000 before igraph's integer-friendly mincut; a
/// common factor does not move the cut, so plain capacities are used.
const TERMINAL_CAPACITY: f64 = 1.0;
/// A component is kept when its median visibility is above this (reference constant).
const KEEP_MEDIAN_VISIBILITY: f32 = 0.25;

/// Options of [`fill_holes`]; [`Default`] is what `to_glb` passes for `simplify = 0.95`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FillHolesOptions {
    /// The largest hole area (in the mesh's units², the object spanning about 1) that is closed,
    /// and the largest new hole the removal of invisible faces may open.
    pub max_hole_size: f32,
    /// The most edges a boundary loop may have to be closed (`int(250·sqrt(1 − simplify))`).
    pub max_hole_edges: usize,
    /// Views rasterised for the visibility (the reference: 1000).
    pub views: usize,
    /// Side of the square visibility images, in pixels (the reference: 1024).
    pub resolution: u32,
}

impl Default for FillHolesOptions {
    fn default() -> Self {
        Self {
            max_hole_size: 0.04,
            max_hole_edges: max_hole_edges_for(0.95),
            views: 1000,
            resolution: 1024,
        }
    }
}

/// `to_glb`'s `max_hole_nbe = int(250·sqrt(1 − simplify))`: a coarser mesh closes holes with
/// fewer edges.
pub fn max_hole_edges_for(simplify: f32) -> usize {
    (250.0 * (1.0 - f64::from(simplify)).max(0.0).sqrt()) as usize
}

/// What [`fill_holes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FillHolesReport {
    /// Faces seen by no view.
    pub invisible_faces: usize,
    /// Faces on the source side of the minimum cut (candidates for removal).
    pub cut_faces: usize,
    /// Faces removed after the checks.
    pub removed_faces: usize,
    /// Boundary loops closed, and the triangles added to close them.
    pub filled_holes: usize,
    pub added_faces: usize,
    /// Boundary loops left open (too long or too large).
    pub open_holes: usize,
}

/// Removes invisible inner faces and closes small holes (see the module documentation).
/// `device` runs the visibility rasterisation. Colours, if any, follow their vertices.
pub fn fill_holes(
    mesh: &Mesh,
    options: &FillHolesOptions,
    device: Device,
) -> Result<(Mesh, FillHolesReport)> {
    check_options(options)?;
    check_mesh(mesh)?;
    let mut report = FillHolesReport::default();
    if mesh.indices.is_empty() {
        return Ok((mesh.clone(), report));
    }
    let visibility = face_visibility(mesh, options.views, options.resolution, device)?;
    let (kept, removal) = remove_invisible(mesh, &visibility, options.max_hole_size)?;
    report.invisible_faces = removal.invisible_faces;
    report.cut_faces = removal.cut_faces;
    report.removed_faces = removal.removed_faces;
    let (filled, fill) = close_small_holes(&kept, options.max_hole_edges, options.max_hole_size);
    report.filled_holes = fill.filled;
    report.added_faces = fill.added_faces;
    report.open_holes = fill.open;
    Ok((filled, report))
}

fn check_options(options: &FillHolesOptions) -> Result<()> {
    if !(options.max_hole_size.is_finite() && options.max_hole_size >= 0.0) {
        return Err(Error::invalid_argument(format!(
            "fill holes: max_hole_size must be finite and >= 0, found {}",
            options.max_hole_size
        )));
    }
    if options.views == 0 || options.resolution == 0 {
        return Err(Error::invalid_argument(format!(
            "fill holes: needs at least one view and a positive resolution, found {} views \
             at {} pixels",
            options.views, options.resolution
        )));
    }
    Ok(())
}

/// The fraction of `views` sphere-Hammersley views in which each face covers a pixel.
pub fn face_visibility(
    mesh: &Mesh,
    views: usize,
    resolution: u32,
    device: Device,
) -> Result<Vec<f32>> {
    let faces = (mesh.indices.len() / 3) as i64;
    let scene = MeshScene::new(&mesh.positions, &mesh.indices, device)?;
    let cameras = multiview(views, DEFAULT_RADIUS, DEFAULT_FOV_DEGREES.to_radians())?;
    let mut count = Tensor::f_zeros([faces], (Kind::Float, device))?;
    for view in &cameras {
        let rast = scene.rasterize(view, resolution, resolution, NEAR, FAR)?;
        let ids = rast.triangle_id.f_flatten(0, -1)?;
        let ids = ids.f_masked_select(&ids.f_ge(0)?)?.f_to_kind(Kind::Int64)?;
        let seen = Tensor::f_zeros([faces], (Kind::Float, device))?.f_index_fill(0, &ids, 1.0)?;
        count = count.f_add(&seen)?;
    }
    let fraction = count
        .f_div_scalar(views as f64)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?;
    Ok(Vec::<f32>::try_from(&fraction)?)
}

/// Edges, their faces, and each face's edges.
pub(crate) struct Topology {
    /// Undirected edges `(low, high)`.
    pub edges: Vec<[u32; 2]>,
    /// For each face, its edges `(v0v1, v1v2, v2v0)`.
    pub face_edges: Vec<[u32; 3]>,
    /// The faces of edge `e` are `edge_face_list[edge_face_start[e]..edge_face_start[e + 1]]`.
    edge_face_start: Vec<usize>,
    edge_face_list: Vec<u32>,
}

impl Topology {
    pub fn new(indices: &[u32]) -> Self {
        let mut ids: HashMap<(u32, u32), u32> = HashMap::with_capacity(indices.len());
        let mut edges = Vec::new();
        let mut face_edges = Vec::with_capacity(indices.len() / 3);
        for t in indices.chunks_exact(3) {
            let mut fe = [0u32; 3];
            for k in 0..3 {
                let (a, b) = (t[k], t[(k + 1) % 3]);
                let key = (a.min(b), a.max(b));
                let next = edges.len() as u32;
                let id = *ids.entry(key).or_insert(next);
                if id == next {
                    edges.push([key.0, key.1]);
                }
                fe[k] = id;
            }
            face_edges.push(fe);
        }
        let mut degree = vec![0usize; edges.len()];
        for fe in &face_edges {
            for &e in fe {
                degree[e as usize] += 1;
            }
        }
        let mut edge_face_start = vec![0usize; edges.len() + 1];
        for (e, d) in degree.iter().enumerate() {
            edge_face_start[e + 1] = edge_face_start[e] + d;
        }
        let mut fill = edge_face_start.clone();
        let mut edge_face_list = vec![0u32; edge_face_start[edges.len()]];
        for (f, fe) in face_edges.iter().enumerate() {
            for &e in fe {
                edge_face_list[fill[e as usize]] = f as u32;
                fill[e as usize] += 1;
            }
        }
        Self {
            edges,
            face_edges,
            edge_face_start,
            edge_face_list,
        }
    }

    pub fn edge_faces(&self, e: usize) -> &[u32] {
        &self.edge_face_list[self.edge_face_start[e]..self.edge_face_start[e + 1]]
    }

    pub fn degree(&self, e: usize) -> usize {
        self.edge_face_start[e + 1] - self.edge_face_start[e]
    }
}

/// Union-find with path halving.
struct DisjointSets(Vec<u32>);

impl DisjointSets {
    fn new(n: usize) -> Self {
        Self((0..n as u32).collect())
    }
    fn find(&mut self, mut x: u32) -> u32 {
        while self.0[x as usize] != x {
            let parent = self.0[self.0[x as usize] as usize];
            self.0[x as usize] = parent;
            x = parent;
        }
        x
    }
    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb) as usize] = ra.min(rb);
        }
    }
}

/// Groups the faces `members` (all faces when `None`) into components joined by shared edges
/// among themselves; each component lists its faces in increasing order.
fn face_components(topology: &Topology, members: Option<&[bool]>) -> Vec<Vec<u32>> {
    let faces = topology.face_edges.len();
    let inside = |f: u32| members.is_none_or(|m| m[f as usize]);
    let mut sets = DisjointSets::new(faces);
    for e in 0..topology.edges.len() {
        let incident = topology.edge_faces(e);
        let mut first = None;
        for &f in incident.iter().filter(|&&f| inside(f)) {
            match first {
                None => first = Some(f),
                Some(g) => sets.union(g, f),
            }
        }
    }
    let mut index: HashMap<u32, usize> = HashMap::new();
    let mut components: Vec<Vec<u32>> = Vec::new();
    for f in (0..faces as u32).filter(|&f| inside(f)) {
        let root = sets.find(f);
        let next = components.len();
        let c = *index.entry(root).or_insert(next);
        if c == next {
            components.push(Vec::new());
        }
        components[c].push(f);
    }
    components
}

/// `torch.quantile(q)` with linear interpolation, of a non-empty set.
fn quantile(values: &mut [f32], q: f64) -> f32 {
    values.sort_by(f32::total_cmp);
    let position = q * (values.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    let t = (position - low as f64) as f32;
    values[low] + (values[high] - values[low]) * t
}

/// `torch.median`: the lower of the two middle values of a non-empty set.
fn lower_median(values: &mut [f32]) -> f32 {
    values.sort_by(f32::total_cmp);
    values[(values.len() - 1) / 2]
}

struct Removal {
    invisible_faces: usize,
    cut_faces: usize,
    removed_faces: usize,
}

/// Steps 2–4 of the module documentation: the mesh without the removed faces (compacted).
fn remove_invisible(
    mesh: &Mesh,
    visibility: &[f32],
    max_hole_size: f32,
) -> Result<(Mesh, Removal)> {
    let topology = Topology::new(&mesh.indices);
    let faces = topology.face_edges.len();
    let invisible: Vec<u32> = (0..faces as u32)
        .filter(|&f| visibility[f as usize] == 0.0)
        .collect();
    let mut removal = Removal {
        invisible_faces: invisible.len(),
        cut_faces: 0,
        removed_faces: 0,
    };
    if invisible.is_empty() {
        return Ok((mesh.clone(), removal));
    }
    let mut outer = vec![false; faces];
    for component in face_components(&topology, None) {
        let mut values: Vec<f32> = component.iter().map(|&f| visibility[f as usize]).collect();
        let threshold = quantile(&mut values, 0.75).clamp(0.25, 0.5);
        for &f in &component {
            outer[f as usize] = visibility[f as usize] > threshold;
        }
    }

    // The dual graph: one arc pair per pair of faces sharing an edge.
    let position = |v: u32| -> [f64; 3] {
        let p = &mesh.positions[3 * v as usize..3 * v as usize + 3];
        [p[0], p[1], p[2]].map(f64::from)
    };
    let mut graph = FlowGraph::new(faces + 2);
    let (source, sink) = (faces, faces + 1);
    for (e, [a, b]) in topology.edges.iter().enumerate() {
        let incident = topology.edge_faces(e);
        if incident.len() < 2 {
            continue;
        }
        let (pa, pb) = (position(*a), position(*b));
        let length =
            ((pa[0] - pb[0]).powi(2) + (pa[1] - pb[1]).powi(2) + (pa[2] - pb[2]).powi(2)).sqrt();
        for i in 0..incident.len() {
            for j in i + 1..incident.len() {
                graph.add_undirected(incident[i] as usize, incident[j] as usize, length);
            }
        }
    }
    for &f in &invisible {
        graph.add_directed(source, f as usize, TERMINAL_CAPACITY);
    }
    for (f, _) in outer.iter().enumerate().filter(|(_, o)| **o) {
        graph.add_directed(f, sink, TERMINAL_CAPACITY);
    }
    let source_side = min_cut_source_side(&mut graph, source, sink);
    let candidates: Vec<bool> = (0..faces).map(|f| source_side[f]).collect();
    removal.cut_faces = candidates.iter().filter(|c| **c).count();

    let mut remove = vec![false; faces];
    for component in face_components(&topology, Some(&candidates)) {
        let mut values: Vec<f32> = component.iter().map(|&f| visibility[f as usize]).collect();
        if lower_median(&mut values) > KEEP_MEDIAN_VISIBILITY {
            continue;
        }
        if new_loop_areas(mesh, &topology, &component)
            .into_iter()
            .any(|area| area > f64::from(max_hole_size))
        {
            continue;
        }
        for &f in &component {
            remove[f as usize] = true;
        }
    }
    removal.removed_faces = remove.iter().filter(|r| **r).count();
    if removal.removed_faces == 0 {
        return Ok((mesh.clone(), removal));
    }
    let indices = mesh
        .indices
        .chunks_exact(3)
        .zip(&remove)
        .filter(|(_, r)| !**r)
        .flat_map(|(t, _)| t.iter().copied())
        .collect();
    let kept = Mesh {
        positions: mesh.positions.clone(),
        colors: mesh.colors.clone(),
        indices,
    };
    Ok((compact(&kept), removal))
}

/// The areas of the boundary loops that removing `component` would open: its edges used once
/// within it that are not already on the mesh boundary, grouped by shared vertices.
fn new_loop_areas(mesh: &Mesh, topology: &Topology, component: &[u32]) -> Vec<f64> {
    let mut uses: HashMap<u32, u32> = HashMap::new();
    for &f in component {
        for &e in &topology.face_edges[f as usize] {
            *uses.entry(e).or_insert(0) += 1;
        }
    }
    let mut new_edges: Vec<u32> = uses
        .into_iter()
        .filter(|&(e, n)| n == 1 && topology.degree(e as usize) != 1)
        .map(|(e, _)| e)
        .collect();
    new_edges.sort_unstable();
    if new_edges.is_empty() {
        return Vec::new();
    }
    // Group the edges through their vertices.
    let mut vertex_slot: HashMap<u32, u32> = HashMap::new();
    for &e in &new_edges {
        for v in topology.edges[e as usize] {
            let next = vertex_slot.len() as u32;
            vertex_slot.entry(v).or_insert(next);
        }
    }
    let mut sets = DisjointSets::new(vertex_slot.len());
    for &e in &new_edges {
        let [a, b] = topology.edges[e as usize];
        sets.union(vertex_slot[&a], vertex_slot[&b]);
    }
    let mut groups: HashMap<u32, Vec<[u32; 2]>> = HashMap::new();
    for &e in &new_edges {
        let edge = topology.edges[e as usize];
        let root = sets.find(vertex_slot[&edge[0]]);
        groups.entry(root).or_default().push(edge);
    }
    groups
        .values()
        .map(|edges| loop_area(&mesh.positions, edges))
        .collect()
}

/// The reference's loop area: Σ ½‖(a − c) × (b − c)‖ over the edges `ab`, with c the mean of
/// the edge midpoints.
fn loop_area(positions: &[f32], edges: &[[u32; 2]]) -> f64 {
    let p = |v: u32| -> [f64; 3] {
        let q = &positions[3 * v as usize..3 * v as usize + 3];
        [q[0], q[1], q[2]].map(f64::from)
    };
    let mut c = [0f64; 3];
    for &[a, b] in edges {
        let (pa, pb) = (p(a), p(b));
        for k in 0..3 {
            c[k] += (pa[k] + pb[k]) / 2.0;
        }
    }
    let n = edges.len().max(1) as f64;
    let c = c.map(|v| v / n);
    edges
        .iter()
        .map(|&[a, b]| {
            let (pa, pb) = (p(a), p(b));
            let u = [pa[0] - c[0], pa[1] - c[1], pa[2] - c[2]];
            let v = [pb[0] - c[0], pb[1] - c[1], pb[2] - c[2]];
            0.5 * norm(cross(u, v))
        })
        .sum()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt()
}

/// A flow network for Dinic's algorithm: arcs in pairs (arc `2k` and its reverse `2k + 1`).
pub(crate) struct FlowGraph {
    head: Vec<usize>,
    /// Per arc: target, next arc of the same tail, residual capacity.
    to: Vec<usize>,
    next: Vec<usize>,
    residual: Vec<f64>,
}

const NO_ARC: usize = usize::MAX;

impl FlowGraph {
    pub fn new(nodes: usize) -> Self {
        Self {
            head: vec![NO_ARC; nodes],
            to: Vec::new(),
            next: Vec::new(),
            residual: Vec::new(),
        }
    }

    fn push_arc(&mut self, from: usize, to: usize, capacity: f64) {
        self.to.push(to);
        self.next.push(self.head[from]);
        self.residual.push(capacity);
        self.head[from] = self.to.len() - 1;
    }

    /// An arc `from → to` with `capacity` (its reverse starts empty).
    pub fn add_directed(&mut self, from: usize, to: usize, capacity: f64) {
        self.push_arc(from, to, capacity);
        self.push_arc(to, from, 0.0);
    }

    /// An undirected edge: `capacity` in both directions.
    pub fn add_undirected(&mut self, a: usize, b: usize, capacity: f64) {
        self.push_arc(a, b, capacity);
        self.push_arc(b, a, capacity);
    }
}

/// Residual capacities at or below this count as saturated (capacities are edge lengths of
/// about 1e-3 and terminal weights of 1).
const FLOW_EPSILON: f64 = 1e-12;

/// Runs Dinic's maximum flow from `source` to `sink` and returns, per node, whether it is on
/// the source side of the minimum cut (reachable from the source in the residual graph).
pub(crate) fn min_cut_source_side(graph: &mut FlowGraph, source: usize, sink: usize) -> Vec<bool> {
    let nodes = graph.head.len();
    let mut level = vec![usize::MAX; nodes];
    let mut current = vec![NO_ARC; nodes];
    let mut queue = Vec::with_capacity(nodes);
    loop {
        // Breadth-first levels over arcs with residual capacity.
        level.iter_mut().for_each(|l| *l = usize::MAX);
        level[source] = 0;
        queue.clear();
        queue.push(source);
        let mut read = 0;
        while read < queue.len() {
            let u = queue[read];
            read += 1;
            let mut arc = graph.head[u];
            while arc != NO_ARC {
                let v = graph.to[arc];
                if graph.residual[arc] > FLOW_EPSILON && level[v] == usize::MAX {
                    level[v] = level[u] + 1;
                    queue.push(v);
                }
                arc = graph.next[arc];
            }
        }
        if level[sink] == usize::MAX {
            break;
        }
        current.copy_from_slice(&graph.head);
        while augment(graph, &level, &mut current, source, sink) > 0.0 {}
    }
    level.iter().map(|&l| l != usize::MAX).collect()
}

/// Finds one augmenting path in the level graph (iteratively, so long paths cannot overflow
/// the stack), pushes its bottleneck and returns it; 0 when the level graph is blocked.
fn augment(
    graph: &mut FlowGraph,
    level: &[usize],
    current: &mut [usize],
    source: usize,
    sink: usize,
) -> f64 {
    let mut path: Vec<usize> = Vec::new(); // arcs from the source
    let mut u = source;
    loop {
        if u == sink {
            let bottleneck = path
                .iter()
                .map(|&a| graph.residual[a])
                .fold(f64::INFINITY, f64::min);
            for &a in &path {
                graph.residual[a] -= bottleneck;
                graph.residual[a ^ 1] += bottleneck;
            }
            return bottleneck;
        }
        let mut advanced = false;
        while current[u] != NO_ARC {
            let arc = current[u];
            let v = graph.to[arc];
            if graph.residual[arc] > FLOW_EPSILON && level[v] == level[u] + 1 {
                path.push(arc);
                u = v;
                advanced = true;
                break;
            }
            current[u] = graph.next[arc];
        }
        if !advanced {
            // Dead end: retreat, and skip the arc that led here.
            match path.pop() {
                None => return 0.0,
                Some(arc) => {
                    u = graph.to[arc ^ 1];
                    current[u] = graph.next[current[u]];
                }
            }
        }
    }
}

/// What [`close_small_holes`] did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Filled {
    pub filled: usize,
    pub added_faces: usize,
    pub open: usize,
}

/// Closes every boundary loop with at most `max_edges` edges and an area of at most
/// `max_area` by triangulating it (step 5 of the module documentation).
pub(crate) fn close_small_holes(mesh: &Mesh, max_edges: usize, max_area: f32) -> (Mesh, Filled) {
    let mut result = Filled::default();
    let mut indices = mesh.indices.clone();
    for hole in boundary_loops(&mesh.indices) {
        let edges: Vec<[u32; 2]> = (0..hole.len())
            .map(|i| [hole[i], hole[(i + 1) % hole.len()]])
            .collect();
        if hole.len() > max_edges || loop_area(&mesh.positions, &edges) > f64::from(max_area) {
            result.open += 1;
            continue;
        }
        // The boundary runs a → b along existing faces; the patch must run b → a.
        let reversed: Vec<u32> = hole.iter().rev().copied().collect();
        let patch = min_area_triangulation(&mesh.positions, &reversed);
        result.added_faces += patch.len() / 3;
        result.filled += 1;
        indices.extend(patch);
    }
    let out = Mesh {
        positions: mesh.positions.clone(),
        colors: mesh.colors.clone(),
        indices,
    };
    (out, result)
}

/// The simple boundary loops of a triangle mesh, each as the vertices along its boundary
/// half-edges (in the direction the edges have in their faces). Edges used by exactly one
/// face are boundary edges; a loop passing a vertex twice is split there; open chains (at
/// non-manifold configurations) are dropped.
pub(crate) fn boundary_loops(indices: &[u32]) -> Vec<Vec<u32>> {
    let mut count: HashMap<(u32, u32), u32> = HashMap::new();
    for t in indices.chunks_exact(3) {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            *count.entry((a.min(b), a.max(b))).or_insert(0) += 1;
        }
    }
    // Boundary half-edges in face order, grouped by their start vertex (deterministic order).
    let mut outgoing: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut starts = Vec::new();
    for t in indices.chunks_exact(3) {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            if count[&(a.min(b), a.max(b))] == 1 {
                outgoing.entry(a).or_default().push(b);
                starts.push(a);
            }
        }
    }
    for targets in outgoing.values_mut() {
        targets.reverse(); // popped from the back: first-met first
    }
    let mut loops = Vec::new();
    for start in starts {
        let Some(first) = outgoing.get_mut(&start).and_then(Vec::pop) else {
            continue;
        };
        let mut path = vec![start];
        let mut at: HashMap<u32, usize> = HashMap::from([(start, 0)]);
        let mut cur = first;
        loop {
            if let Some(&p) = at.get(&cur) {
                // Closed a loop from path[p] back to it.
                let cycle = path.split_off(p);
                for v in &cycle {
                    at.remove(v);
                }
                if cycle.len() >= 3 {
                    loops.push(cycle);
                }
                if path.is_empty() {
                    break;
                }
                // Continue from the repeated vertex, which is still the walk's end.
                at.insert(cur, path.len());
                path.push(cur);
            } else {
                at.insert(cur, path.len());
                path.push(cur);
            }
            match outgoing.get_mut(&cur).and_then(Vec::pop) {
                Some(next) => cur = next,
                None => break, // an open chain
            }
        }
    }
    loops
}

/// The minimum-cost (area first, see `cost_of`) triangulation of the closed polygon `polygon` (vertex ids into
/// `positions`), by dynamic programming over its sub-polygons; triangles follow the polygon's
/// orientation.
pub(crate) fn min_area_triangulation(positions: &[f32], polygon: &[u32]) -> Vec<u32> {
    let n = polygon.len();
    if n < 3 {
        return Vec::new();
    }
    let p = |i: usize| -> [f64; 3] {
        let v = polygon[i] as usize;
        [positions[3 * v], positions[3 * v + 1], positions[3 * v + 2]].map(f64::from)
    };
    // A triangle's cost: its area, plus a tenth of its squared edge lengths (over a whole
    // triangulation: the squared diagonals, so short diagonals win among equal areas, as in
    // a planar hole where every triangulation has the same area), plus a large penalty when it
    // is degenerate (collinear corners on a straight stretch of the boundary).
    let cost_of = |i: usize, j: usize, k: usize| -> f64 {
        let (a, b, c) = (p(i), p(j), p(k));
        let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        let ac = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
        let bc = [c[0] - b[0], c[1] - b[1], c[2] - b[2]];
        let area = 0.5 * norm(cross(ab, ac));
        let squared = [ab, ac, bc].iter().map(|e| norm(*e).powi(2)).sum::<f64>();
        let degenerate = if area <= 1e-6 * squared {
            10.0 * squared
        } else {
            0.0
        };
        area + 0.1 * squared + degenerate
    };
    // cost[i][j]: the best triangulation of the sub-polygon i..=j; split[i][j]: its apex.
    let mut cost = vec![0f64; n * n];
    let mut split = vec![0usize; n * n];
    for gap in 2..n {
        for i in 0..n - gap {
            let j = i + gap;
            let mut best = (f64::INFINITY, i + 1);
            for m in i + 1..j {
                let c = cost[i * n + m] + cost[m * n + j] + cost_of(i, m, j);
                if c < best.0 {
                    best = (c, m);
                }
            }
            cost[i * n + j] = best.0;
            split[i * n + j] = best.1;
        }
    }
    let mut triangles = Vec::with_capacity(3 * (n - 2));
    let mut stack = vec![(0usize, n - 1)];
    while let Some((i, j)) = stack.pop() {
        if j < i + 2 {
            continue;
        }
        let m = split[i * n + j];
        triangles.extend([polygon[i], polygon[m], polygon[j]]);
        stack.push((i, m));
        stack.push((m, j));
    }
    triangles
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit square grid of `n × n` quads in z = 0, two triangles each, counter-clockwise.
    fn grid(n: u32) -> Mesh {
        let mut positions = Vec::new();
        for y in 0..=n {
            for x in 0..=n {
                positions.extend([x as f32 / n as f32, y as f32 / n as f32, 0.0]);
            }
        }
        let id = |x: u32, y: u32| y * (n + 1) + x;
        let mut indices = Vec::new();
        for y in 0..n {
            for x in 0..n {
                indices.extend([id(x, y), id(x + 1, y), id(x + 1, y + 1)]);
                indices.extend([id(x, y), id(x + 1, y + 1), id(x, y + 1)]);
            }
        }
        Mesh {
            positions,
            colors: vec![],
            indices,
        }
    }

    #[test]
    fn max_hole_edges_follows_the_reference() {
        assert_eq!(max_hole_edges_for(0.95), 55);
        assert_eq!(max_hole_edges_for(0.0), 250);
        assert_eq!(max_hole_edges_for(0.9), 79);
    }

    #[test]
    fn quantiles_match_torch() {
        assert_eq!(quantile(&mut [0.0, 1.0, 2.0, 3.0], 0.75), 2.25);
        assert_eq!(lower_median(&mut [4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(lower_median(&mut [5.0]), 5.0);
    }

    #[test]
    fn grid_boundary_is_one_counter_clockwise_loop() {
        let mesh = grid(3);
        let loops = boundary_loops(&mesh.indices);
        assert_eq!(loops.len(), 1);
        assert_eq!(loops[0].len(), 12);
    }

    #[test]
    fn punched_grid_hole_is_closed_with_consistent_winding() {
        let mut mesh = grid(4);
        // Remove the two triangles of quad (1, 1) and of quad (2, 1): a 2×1 hole.
        let quad = |x: usize, y: usize| 2 * (y * 4 + x);
        let holes = [quad(1, 1), quad(1, 1) + 1, quad(2, 1), quad(2, 1) + 1];
        let indices: Vec<u32> = mesh
            .indices
            .chunks(3)
            .enumerate()
            .filter(|(f, _)| !holes.contains(f))
            .flat_map(|(_, t)| t.to_vec())
            .collect();
        mesh.indices = indices;
        assert_eq!(boundary_loops(&mesh.indices).len(), 2);
        let (filled, report) = close_small_holes(&mesh, 10, 1.0);
        assert_eq!(report.filled, 1);
        assert_eq!(report.open, 1); // the outer border has 16 edges
        assert_eq!(report.added_faces, 4);
        // Only the outer border is left, and every triangle faces +z.
        assert_eq!(boundary_loops(&filled.indices).len(), 1);
        for t in filled.indices.chunks(3) {
            let p = |i: u32| &filled.positions[3 * i as usize..3 * i as usize + 3];
            let (a, b, c) = (p(t[0]), p(t[1]), p(t[2]));
            let z = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
            assert!(z > 0.0, "triangle {t:?} is flipped");
        }
    }

    #[test]
    fn min_cut_separates_at_the_narrow_link() {
        // s → 0 → 1 → t with a thin link 0–1 and a thick detour 0–2–1.
        let mut g = FlowGraph::new(5);
        g.add_directed(3, 0, 10.0);
        g.add_undirected(0, 1, 0.5);
        g.add_undirected(0, 2, 3.0);
        g.add_undirected(2, 1, 0.25);
        g.add_directed(1, 4, 10.0);
        let side = min_cut_source_side(&mut g, 3, 4);
        assert_eq!(side, vec![true, false, true, true, false]);
    }
}
