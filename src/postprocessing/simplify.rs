//! Decimation, the first step of `postprocess_mesh` (research/trellis.md §4.4).
//!
//! The reference calls `pyvista.PolyData.decimate(simplify)`, VTK's quadric decimation, whose
//! argument is the *fraction of faces removed* (0.95 keeps 5 %), and which moves the
//! surviving vertices to the quadric-optimal positions. We use meshoptimizer's quadric
//! edge-collapse simplifier (through the `meshopt` crate) in its "with update" form, which also
//! moves vertices (and interpolates attributes) to the optimal positions, so the result
//! approximates the surface as VTK's does.
//!
//! Before simplifying, vertices at bit-identical positions are welded: meshoptimizer treats
//! two vertices that share a position but not an index as an attribute seam it may not
//! collapse across, and the FlexiCubes output or a re-read file can carry such duplicates.
//! Triangles that become degenerate (two equal corners) are dropped.
//!
//! Per-vertex colours, where present, are simplification attributes: with a non-zero weight
//! they steer collapses and are interpolated with the positions; with weight 0 the geometry
//! alone decides (what the reference does: its decimation has no colours) and each surviving
//! vertex keeps its own colour.
//!
//! meshoptimizer preserves topology, so it can stop short of the target on meshes whose
//! remaining edges cannot collapse without folding or changing topology; the report gives the
//! face count reached.

use std::collections::HashMap;

use meshopt::SimplifyOptions;

use crate::error::{Error, Result};
use crate::export::check_mesh;
use crate::pipeline::Mesh;

/// What [`simplify`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimplifyReport {
    /// Triangles given.
    pub input_faces: usize,
    /// Vertices given, and left after welding duplicates.
    pub input_vertices: usize,
    pub welded_vertices: usize,
    /// Triangles dropped before simplifying because welding made them degenerate.
    pub degenerate_faces: usize,
    /// The face count asked for: `round(faces · (1 − fraction))`.
    pub target_faces: usize,
    /// The face and vertex counts reached.
    pub faces: usize,
    pub vertices: usize,
    /// meshoptimizer's resulting error, relative to the mesh extent.
    pub relative_error: f32,
}

/// Meshoptimizer's attribute weight for vertex colours when they should steer the collapses:
/// colour errors of 0..1 weighed against position errors normalised by the mesh extent. A
/// quarter keeps visible colour boundaries without noticeably worse geometry.
pub const COLOR_WEIGHT: f32 = 0.25;

/// Removes the fraction `fraction` (0 ≤ fraction < 1) of the triangles of `mesh` by quadric
/// edge collapses, after welding duplicate vertices. Colours (if any) are carried; with
/// `color_weight > 0` they also steer the collapses. The result holds only referenced
/// vertices, in their original order.
///
/// `fraction = 0` only welds and drops degenerate triangles.
pub fn simplify(mesh: &Mesh, fraction: f32, color_weight: f32) -> Result<(Mesh, SimplifyReport)> {
    if !(fraction.is_finite() && (0.0..1.0).contains(&fraction)) {
        return Err(Error::invalid_argument(format!(
            "simplify: the fraction of faces to remove must be in [0, 1), found {fraction}"
        )));
    }
    if !(color_weight.is_finite() && color_weight >= 0.0) {
        return Err(Error::invalid_argument(format!(
            "simplify: the colour weight must be finite and >= 0, found {color_weight}"
        )));
    }
    let checked = check_mesh(mesh)?;
    let input_faces = checked.face_count();
    let input_vertices = checked.vertex_count();
    let welded = weld(mesh);
    let welded_vertices = welded.positions.len() / 3;
    let degenerate_faces = input_faces - welded.indices.len() / 3;
    let faces = welded.indices.len() / 3;
    let target_faces = (faces as f64 * (1.0 - f64::from(fraction))).round() as usize;

    let (out, relative_error) = if fraction == 0.0 || faces == 0 || target_faces >= faces {
        (compact(&welded), 0.0)
    } else {
        collapse(&welded, target_faces.max(1), color_weight)?
    };
    let report = SimplifyReport {
        input_faces,
        input_vertices,
        welded_vertices,
        degenerate_faces,
        target_faces,
        faces: out.indices.len() / 3,
        vertices: out.positions.len() / 3,
        relative_error,
    };
    Ok((out, report))
}

/// Runs meshoptimizer on a welded mesh and compacts the result.
fn collapse(mesh: &Mesh, target_faces: usize, color_weight: f32) -> Result<(Mesh, f32)> {
    let mut positions: Vec<[f32; 3]> = mesh
        .positions
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let has_colors = !mesh.colors.is_empty();
    let mut attributes = if has_colors {
        mesh.colors.clone()
    } else {
        Vec::new()
    };
    let (weights, stride): (Vec<f32>, usize) = if has_colors {
        (vec![color_weight; 3], 3 * std::mem::size_of::<f32>())
    } else {
        (Vec::new(), 0)
    };
    let mut indices = mesh.indices.clone();
    let mut error = 0f32;
    // No error bound: like VTK's decimation, stop at the face count only.
    let count = meshopt::simplify_with_update(
        &mut indices,
        &mut positions,
        &mut attributes,
        &weights,
        stride,
        None,
        3 * target_faces,
        f32::MAX,
        SimplifyOptions::None,
        Some(&mut error),
    );
    if count > indices.len() || !count.is_multiple_of(3) {
        return Err(Error::internal(format!(
            "meshoptimizer returned {count} indices for a {}-index mesh",
            indices.len()
        )));
    }
    indices.truncate(count);
    if positions.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::internal(
            "meshoptimizer produced non-finite vertex positions",
        ));
    }
    let updated = Mesh {
        positions: positions.into_iter().flatten().collect(),
        colors: attributes
            .into_iter()
            .map(|c| {
                if c.is_finite() {
                    c.clamp(0.0, 1.0)
                } else {
                    0.0
                }
            })
            .collect(),
        indices,
    };
    Ok((compact(&updated), error))
}

/// Merges vertices at bit-identical positions (−0.0 and 0.0 count as equal) into the first
/// one met, and drops triangles with two equal corners after merging. Colours follow the
/// first vertex of each group.
pub(crate) fn weld(mesh: &Mesh) -> Mesh {
    let key = |i: usize| -> [u32; 3] {
        let p = &mesh.positions[3 * i..3 * i + 3];
        [p[0], p[1], p[2]].map(|v| (v + 0.0).to_bits())
    };
    let vertices = mesh.positions.len() / 3;
    let mut first: HashMap<[u32; 3], u32> = HashMap::with_capacity(vertices);
    let mut remap = Vec::with_capacity(vertices);
    let mut positions = Vec::with_capacity(mesh.positions.len());
    let mut colors = Vec::with_capacity(mesh.colors.len());
    for i in 0..vertices {
        let next = (positions.len() / 3) as u32;
        let id = *first.entry(key(i)).or_insert(next);
        if id == next {
            positions.extend_from_slice(&mesh.positions[3 * i..3 * i + 3]);
            if !mesh.colors.is_empty() {
                colors.extend_from_slice(&mesh.colors[3 * i..3 * i + 3]);
            }
        }
        remap.push(id);
    }
    let indices = mesh
        .indices
        .chunks_exact(3)
        .map(|t| [t[0], t[1], t[2]].map(|i| remap[i as usize]))
        .filter(|[a, b, c]| a != b && b != c && a != c)
        .flatten()
        .collect();
    Mesh {
        positions,
        colors,
        indices,
    }
}

/// Drops vertices no triangle references, keeping the others in their order.
pub(crate) fn compact(mesh: &Mesh) -> Mesh {
    compact_with_map(mesh).0
}

/// [`compact`], also returning for each kept vertex its index in `mesh`.
pub(crate) fn compact_with_map(mesh: &Mesh) -> (Mesh, Vec<u32>) {
    let vertices = mesh.positions.len() / 3;
    let mut used = vec![false; vertices];
    for &i in &mesh.indices {
        used[i as usize] = true;
    }
    let mut remap = vec![u32::MAX; vertices];
    let mut kept = Vec::new();
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        remap[i] = kept.len() as u32;
        kept.push(i as u32);
    }
    let gather = |values: &[f32]| -> Vec<f32> {
        if values.is_empty() {
            return Vec::new();
        }
        kept.iter()
            .flat_map(|&i| values[3 * i as usize..3 * i as usize + 3].iter().copied())
            .collect()
    };
    let out = Mesh {
        positions: gather(&mesh.positions),
        colors: gather(&mesh.colors),
        indices: mesh.indices.iter().map(|&i| remap[i as usize]).collect(),
    };
    (out, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two triangles sharing an edge, with the shared corners duplicated.
    fn split_quad() -> Mesh {
        Mesh {
            positions: vec![
                0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, //
                0.0, 0.0, 0.0, 1.0, 1.0, 0.0, -0.0, 1.0, 0.0,
            ],
            colors: vec![],
            indices: vec![0, 1, 2, 3, 4, 5],
        }
    }

    #[test]
    fn weld_merges_duplicates_and_drops_degenerates() {
        let mut mesh = split_quad();
        mesh.indices.extend([0, 3, 1]); // degenerate once welded
        let welded = weld(&mesh);
        assert_eq!(welded.positions.len(), 12);
        assert_eq!(welded.indices, vec![0, 1, 2, 0, 2, 3]);
    }

    #[test]
    fn fraction_out_of_range_is_an_error() {
        let mesh = split_quad();
        assert!(simplify(&mesh, 1.0, 0.0).is_err());
        assert!(simplify(&mesh, -0.1, 0.0).is_err());
        assert!(simplify(&mesh, f32::NAN, 0.0).is_err());
        assert!(simplify(&mesh, 0.5, -1.0).is_err());
    }

    #[test]
    fn zero_fraction_only_welds() {
        let (out, report) = simplify(&split_quad(), 0.0, 0.0).unwrap();
        assert_eq!(report.faces, 2);
        assert_eq!(report.welded_vertices, 4);
        assert_eq!(out.indices.len(), 6);
    }
}
