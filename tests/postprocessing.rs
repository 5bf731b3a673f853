//! `to_glb`'s post-processing (src/postprocessing/) on small synthetic scenes, on the CPU:
//! decimation, invisible-face removal and hole filling, UV unwrapping, texture baking (fast
//! and optimised) and the whole chain.

use std::collections::HashMap;

use recon::pipeline::Mesh;
use recon::postprocessing::bake::{
    bake_texture, render_observations, BakeMode, BakeOptions, BakedTexture,
};
use recon::postprocessing::fill_holes::{fill_holes, FillHolesOptions};
use recon::postprocessing::simplify::simplify;
use recon::postprocessing::uv_unwrap::unwrap;
use recon::postprocessing::{postprocess, PostprocessOptions};
use recon::render::gaussian::GaussianScene;
use tch::{Device, Kind, Tensor};

mod common;
use common::{color_at, icosphere, sphere_gaussians};

// ---------------------------------------------------------------------------------------------
// Synthetic scenes

fn vertex(mesh: &Mesh, i: u32) -> [f32; 3] {
    let p = &mesh.positions[3 * i as usize..3 * i as usize + 3];
    [p[0], p[1], p[2]]
}

fn radius(p: [f32; 3]) -> f32 {
    (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt()
}

/// Boundary edges (used by one face) of a triangle list.
fn boundary_edges(indices: &[u32]) -> usize {
    let mut count: HashMap<(u32, u32), u32> = HashMap::new();
    for t in indices.chunks(3) {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            *count.entry((a.min(b), a.max(b))).or_insert(0) += 1;
        }
    }
    count.values().filter(|&&c| c == 1).count()
}

/// Removes the faces whose centroid is within `angle` radians of +Z (a cap around the pole).
fn punch(mesh: &Mesh, angle: f32) -> Mesh {
    let indices = mesh
        .indices
        .chunks(3)
        .filter(|t| {
            let c = [0, 1, 2].map(|k| {
                (vertex(mesh, t[0])[k] + vertex(mesh, t[1])[k] + vertex(mesh, t[2])[k]) / 3.0
            });
            (c[2] / radius(c)).acos() > angle
        })
        .flatten()
        .copied()
        .collect();
    Mesh {
        indices,
        ..mesh.clone()
    }
}

/// Squared distance from `p` to the triangle `abc` (Ericson's closest-point method).
fn point_triangle_distance2(p: [f32; 3], a: [f32; 3], b: [f32; 3], c: [f32; 3]) -> f32 {
    let sub = |x: [f32; 3], y: [f32; 3]| [x[0] - y[0], x[1] - y[1], x[2] - y[2]];
    let dot = |x: [f32; 3], y: [f32; 3]| x[0] * y[0] + x[1] * y[1] + x[2] * y[2];
    let add_scaled =
        |x: [f32; 3], y: [f32; 3], s: f32| [x[0] + y[0] * s, x[1] + y[1] * s, x[2] + y[2] * s];
    let (ab, ac, ap) = (sub(b, a), sub(c, a), sub(p, a));
    let (d1, d2) = (dot(ab, ap), dot(ac, ap));
    let closest = if d1 <= 0.0 && d2 <= 0.0 {
        a
    } else {
        let bp = sub(p, b);
        let (d3, d4) = (dot(ab, bp), dot(ac, bp));
        let cp = sub(p, c);
        let (d5, d6) = (dot(ab, cp), dot(ac, cp));
        let vc = d1 * d4 - d3 * d2;
        let vb = d5 * d2 - d1 * d6;
        let va = d3 * d6 - d5 * d4;
        if d3 >= 0.0 && d4 <= d3 {
            b
        } else if d6 >= 0.0 && d5 <= d6 {
            c
        } else if vc <= 0.0 && d1 >= 0.0 && d3 <= 0.0 {
            add_scaled(a, ab, d1 / (d1 - d3))
        } else if vb <= 0.0 && d2 >= 0.0 && d6 <= 0.0 {
            add_scaled(a, ac, d2 / (d2 - d6))
        } else if va <= 0.0 && (d4 - d3) >= 0.0 && (d5 - d6) >= 0.0 {
            add_scaled(b, sub(c, b), (d4 - d3) / ((d4 - d3) + (d5 - d6)))
        } else {
            let denom = 1.0 / (va + vb + vc);
            add_scaled(add_scaled(a, ab, vb * denom), ac, vc * denom)
        }
    };
    let d = sub(p, closest);
    dot(d, d)
}

// ---------------------------------------------------------------------------------------------
// Simplification

#[test]
fn simplify_reaches_the_target_and_keeps_the_surface() {
    let sphere = icosphere(0.4, 5); // 20480 faces
    let mut colored = sphere.clone();
    colored.colors = colored
        .positions
        .chunks(3)
        .flat_map(|p| color_at([p[0], p[1], p[2]]))
        .collect();
    for (mesh, weight) in [(&sphere, 0.0), (&colored, 0.25)] {
        let (out, report) = simplify(mesh, 0.95, weight).unwrap();
        println!("simplify 0.95 (colour weight {weight}): {report:?}");
        assert_eq!(report.input_faces, 20480);
        assert_eq!(report.target_faces, 1024);
        let faces = out.indices.len() / 3;
        assert_eq!(faces, report.faces);
        // meshoptimizer stops at or just below the target on a closed sphere.
        assert!(
            (960..=1024).contains(&faces),
            "{faces} faces for a target of 1024"
        );
        assert_eq!(boundary_edges(&out.indices), 0, "the sphere stays closed");
        let expected_colors = if mesh.colors.is_empty() {
            0
        } else {
            out.positions.len()
        };
        assert_eq!(out.colors.len(), expected_colors);
        // Hausdorff-ish, both ways: simplified vertices stay on the sphere, and every
        // original vertex is near the simplified surface.
        let worst_out = out
            .positions
            .chunks(3)
            .map(|p| (radius([p[0], p[1], p[2]]) - 0.4).abs())
            .fold(0f32, f32::max);
        let triangles: Vec<[[f32; 3]; 3]> = out
            .indices
            .chunks(3)
            .map(|t| [0, 1, 2].map(|k| vertex(&out, t[k])))
            .collect();
        let worst_in = (0..sphere.positions.len() / 3)
            .step_by(7)
            .map(|i| {
                let p = vertex(mesh, i as u32);
                triangles
                    .iter()
                    .map(|[a, b, c]| point_triangle_distance2(p, *a, *b, *c))
                    .fold(f32::INFINITY, f32::min)
                    .sqrt()
            })
            .fold(0f32, f32::max);
        println!("  off-sphere max {worst_out:.5}, original-to-simplified max {worst_in:.5}");
        // The chord sag of ~1024 triangles on r = 0.4 is about 0.006.
        assert!(
            worst_out < 0.004,
            "simplified vertices off the sphere by {worst_out}"
        );
        assert!(
            worst_in < 0.012,
            "original surface away from the result by {worst_in}"
        );
        if weight > 0.0 {
            // Colours follow their (moved) vertices.
            let worst_color = out
                .positions
                .chunks(3)
                .zip(out.colors.chunks(3))
                .map(|(p, c)| {
                    let expected = color_at([p[0], p[1], p[2]]);
                    (0..3)
                        .map(|k| (c[k] - expected[k]).abs())
                        .fold(0f32, f32::max)
                })
                .fold(0f32, f32::max);
            println!("  colour max error {worst_color:.5}");
            assert!(worst_color < 0.02);
        }
    }
}

#[test]
fn simplify_welds_split_vertices_before_collapsing() {
    // The same sphere with every face owning its own three vertices.
    let sphere = icosphere(0.4, 3);
    let mut split = Mesh::default();
    for (i, &v) in sphere.indices.iter().enumerate() {
        split.positions.extend(vertex(&sphere, v));
        split.indices.push(i as u32);
    }
    let (out, report) = simplify(&split, 0.75, 0.0).unwrap();
    assert_eq!(report.welded_vertices, sphere.positions.len() / 3);
    assert_eq!(report.target_faces, 320);
    assert!(report.faces <= 320 && report.faces >= 300, "{report:?}");
    assert_eq!(boundary_edges(&out.indices), 0);
}

// ---------------------------------------------------------------------------------------------
// Hole filling

fn small_visibility() -> FillHolesOptions {
    FillHolesOptions {
        max_hole_size: 0.04,
        max_hole_edges: 55,
        views: 24,
        resolution: 96,
    }
}

#[test]
fn a_small_punched_hole_is_closed_and_a_big_one_left_open() {
    let sphere = icosphere(0.4, 3); // 1280 faces, edge ~0.05
    let small = punch(&sphere, 0.2); // a cap of ~0.02 area
    let small_edges = boundary_edges(&small.indices);
    assert!(
        small_edges > 3 && small_edges <= 55,
        "{small_edges} boundary edges"
    );
    let (closed, report) = fill_holes(&small, &small_visibility(), Device::Cpu).unwrap();
    println!("small hole ({small_edges} edges): {report:?}");
    assert_eq!(report.filled_holes, 1);
    assert_eq!(report.open_holes, 0);
    assert_eq!(boundary_edges(&closed.indices), 0, "the hole is closed");
    // A closed genus-0 triangle mesh: F = 2V − 4 (V counting referenced vertices: the
    // punched cap's inner vertices are left unreferenced).
    let referenced = closed
        .indices
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(closed.indices.len() / 3, 2 * referenced - 4);
    // The patch faces outwards like its neighbours (positive signed volume overall).
    let volume: f32 = closed
        .indices
        .chunks(3)
        .map(|t| {
            let (a, b, c) = (
                vertex(&closed, t[0]),
                vertex(&closed, t[1]),
                vertex(&closed, t[2]),
            );
            (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                + a[2] * (b[0] * c[1] - b[1] * c[0]))
                / 6.0
        })
        .sum();
    let sphere_volume = 4.0 / 3.0 * std::f32::consts::PI * 0.4f32.powi(3);
    assert!(
        (volume / sphere_volume - 1.0).abs() < 0.05,
        "volume {volume}"
    );

    let big = punch(&sphere, 0.9); // a cap of ~0.38 area
    let big_edges = boundary_edges(&big.indices);
    let (open, report) = fill_holes(&big, &small_visibility(), Device::Cpu).unwrap();
    println!("big hole ({big_edges} edges): {report:?}");
    assert_eq!(report.filled_holes, 0);
    assert_eq!(report.open_holes, 1);
    assert_eq!(
        report.removed_faces, 0,
        "everything is visible through the opening"
    );
    assert_eq!(boundary_edges(&open.indices), big_edges);
}

#[test]
fn an_enclosed_inner_shell_is_removed() {
    let outer = icosphere(0.4, 2);
    let inner = icosphere(0.2, 2);
    let offset = (outer.positions.len() / 3) as u32;
    let mesh = Mesh {
        positions: [outer.positions.clone(), inner.positions.clone()].concat(),
        colors: vec![],
        indices: outer
            .indices
            .iter()
            .copied()
            .chain(inner.indices.iter().map(|i| i + offset))
            .collect(),
    };
    let (out, report) = fill_holes(&mesh, &small_visibility(), Device::Cpu).unwrap();
    println!("inner shell: {report:?}");
    assert_eq!(report.invisible_faces, inner.indices.len() / 3);
    assert_eq!(report.removed_faces, inner.indices.len() / 3);
    assert_eq!(out.indices, outer.indices);
    assert_eq!(out.positions, outer.positions);
}

// ---------------------------------------------------------------------------------------------
// UV unwrap

/// Fraction of triangles whose UV area is (numerically) zero.
fn degenerate_uv_fraction(uvs: &[f32], indices: &[u32]) -> f64 {
    let degenerate = indices
        .chunks(3)
        .filter(|t| {
            let p = |i: u32| [uvs[2 * i as usize] as f64, uvs[2 * i as usize + 1] as f64];
            let (a, b, c) = (p(t[0]), p(t[1]), p(t[2]));
            ((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])).abs() < 1e-12
        })
        .count();
    degenerate as f64 / (indices.len() / 3) as f64
}

#[test]
fn unwrap_gives_uvs_in_the_unit_square_without_degenerate_triangles() {
    let sphere = icosphere(0.4, 3);
    let layout = unwrap(&sphere.positions, &sphere.indices).unwrap();
    println!(
        "unwrap: {} -> {} vertices, {} charts, atlas {}x{}, {} unmapped",
        sphere.positions.len() / 3,
        layout.vertex_map.len(),
        layout.charts,
        layout.atlas_width,
        layout.atlas_height,
        layout.unmapped_faces
    );
    assert!(layout.uvs.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(layout.indices.len(), sphere.indices.len());
    assert_eq!(layout.unmapped_faces, 0);
    let fraction = degenerate_uv_fraction(&layout.uvs, &layout.indices);
    println!("  degenerate UV triangles: {:.4} %", 100.0 * fraction);
    assert!(fraction <= 0.001, "{fraction}");
    // The atlas is used: UVs span most of the unit square in both axes.
    let span = |k: usize| {
        let vals = layout.uvs.iter().skip(k).step_by(2);
        vals.clone().fold(0f32, |a, &b| a.max(b)) - vals.fold(1f32, |a, &b| a.min(b))
    };
    assert!(span(0) > 0.9 && span(1) > 0.9, "{} {}", span(0), span(1));
    // Each output triangle copies its input triangle through the vertex map.
    for (o, i) in layout.indices.chunks(3).zip(sphere.indices.chunks(3)) {
        for k in 0..3 {
            assert_eq!(layout.vertex_map[o[k] as usize], i[k]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Baking

const R: f32 = 0.35;

struct BakeCase {
    mesh: Mesh,
    uvs: Vec<f32>,
    indices: Vec<u32>,
    positions: Vec<f32>,
}

fn bake_case() -> BakeCase {
    let mesh = icosphere(R, 3);
    let layout = unwrap(&mesh.positions, &mesh.indices).unwrap();
    let positions = layout
        .vertex_map
        .iter()
        .flat_map(|&i| vertex(&mesh, i))
        .collect();
    BakeCase {
        mesh,
        uvs: layout.uvs,
        indices: layout.indices,
        positions,
    }
}

/// Samples the baked texture bilinearly at every vertex's UV and returns (mean, max) of the
/// per-vertex max-channel error against [`color_at`].
fn vertex_color_errors(case: &BakeCase, baked: &BakedTexture) -> (f32, f32) {
    let size = baked.texture.size()[0] as usize;
    let texels = Vec::<f32>::try_from(&baked.texture.flatten(0, -1)).unwrap();
    let at =
        |x: usize, y: usize, k: usize| texels[(y.min(size - 1) * size + x.min(size - 1)) * 3 + k];
    let mut errors = Vec::new();
    for (p, uv) in case.positions.chunks(3).zip(case.uvs.chunks(2)) {
        let (fx, fy) = (uv[0] * size as f32 - 0.5, uv[1] * size as f32 - 0.5);
        let (x0, y0) = (fx.floor().max(0.0) as usize, fy.floor().max(0.0) as usize);
        let (tx, ty) = (
            (fx - x0 as f32).clamp(0.0, 1.0),
            (fy - y0 as f32).clamp(0.0, 1.0),
        );
        let expected = color_at([p[0], p[1], p[2]]);
        let e = (0..3)
            .map(|k| {
                let top = at(x0, y0, k) * (1.0 - tx) + at(x0 + 1, y0, k) * tx;
                let bottom = at(x0, y0 + 1, k) * (1.0 - tx) + at(x0 + 1, y0 + 1, k) * tx;
                let value = top * (1.0 - ty) + bottom * ty;
                (value - expected[k]).abs()
            })
            .fold(0f32, f32::max);
        errors.push(e);
    }
    let mean = errors.iter().sum::<f32>() / errors.len() as f32;
    errors.sort_by(f32::total_cmp);
    (mean, errors[errors.len() * 95 / 100])
}

fn observations() -> recon::postprocessing::bake::Observations {
    let scene = GaussianScene::new(&sphere_gaussians(R, 6000, 0.012), Device::Cpu).unwrap();
    render_observations(&scene, 24, 128).unwrap()
}

#[test]
fn observations_see_the_sphere_with_its_colours() {
    let obs = observations();
    assert_eq!(obs.views.len(), 24);
    let covered = obs.masks[5]
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    // The sphere (r = 0.35 at distance 2, fov 40°) covers about 23 % of the image.
    println!("mask coverage {covered:.3}");
    assert!((0.15..0.3).contains(&covered), "{covered}");
}

#[test]
fn fast_bake_reproduces_the_known_colours() {
    let case = bake_case();
    let obs = observations();
    let options = BakeOptions {
        texture_size: 128,
        mode: BakeMode::Fast,
        seed: 0,
    };
    let baked = bake_texture(
        &case.positions,
        &case.indices,
        &case.uvs,
        &obs,
        &options,
        Device::Cpu,
    )
    .unwrap();
    let (mean, p95) = vertex_color_errors(&case, &baked);
    println!(
        "fast bake: {} texels covered, vertex colour error mean {mean:.4}, p95 {p95:.4}",
        baked.covered_texels
    );
    assert_eq!(baked.texture.size(), vec![128, 128, 3]);
    assert!(mean < 0.03, "mean error {mean}");
    assert!(p95 < 0.06, "p95 error {p95}");
    let _ = case.mesh;
}

#[test]
fn optimized_bake_reproduces_the_known_colours() {
    let case = bake_case();
    let obs = observations();
    // A short run: the reference's 2500 steps (Adam moves a texel about lr = 1e-2 per step)
    // are too slow for a CPU test. 300 steps get most texels there; 1000 steps measured mean
    // 0.014, p95 0.045 on this scene.
    let steps = std::env::var("RECON_TEST_BAKE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let options = |steps| BakeOptions {
        texture_size: 128,
        mode: BakeMode::Optimize {
            steps,
            lambda_tv: 0.01,
        },
        seed: 1,
    };
    let bake = |steps| {
        bake_texture(
            &case.positions,
            &case.indices,
            &case.uvs,
            &obs,
            &options(steps),
            Device::Cpu,
        )
        .unwrap()
    };
    let baked = bake(steps);
    let (mean, p95) = vertex_color_errors(&case, &baked);
    println!(
        "optimised bake ({steps} steps): {} chart texels, final loss {:.4}, vertex colour error \
         mean {mean:.4}, p95 {p95:.4}",
        baked.covered_texels, baked.final_loss
    );
    // The texture starts black: an error of about 0.5 everywhere.
    assert!(mean < 0.05, "mean error {mean}");
    assert!(p95 < 0.2, "p95 error {p95}");
    // Reproducible: the same seed gives the same texture.
    let (a, b) = (bake(10), bake(10));
    let diff = (&a.texture - &b.texture).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0);
}

#[test]
fn bad_bake_inputs_are_errors() {
    let case = bake_case();
    let obs = observations();
    let mut options = BakeOptions {
        texture_size: 0,
        mode: BakeMode::Fast,
        seed: 0,
    };
    assert!(bake_texture(
        &case.positions,
        &case.indices,
        &case.uvs,
        &obs,
        &options,
        Device::Cpu
    )
    .is_err());
    options.texture_size = 16;
    assert!(bake_texture(
        &case.positions,
        &case.indices,
        &case.uvs[2..],
        &obs,
        &options,
        Device::Cpu
    )
    .is_err());
    options.mode = BakeMode::Optimize {
        steps: 1,
        lambda_tv: f32::NAN,
    };
    assert!(bake_texture(
        &case.positions,
        &case.indices,
        &case.uvs,
        &obs,
        &options,
        Device::Cpu
    )
    .is_err());
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
}

// ---------------------------------------------------------------------------------------------
// The whole chain

fn small_options() -> PostprocessOptions {
    PostprocessOptions {
        simplify: 0.75,
        fill_holes: true,
        fill_holes_views: 24,
        fill_holes_resolution: 96,
        texture_size: 128,
        bake_mode: BakeMode::Fast,
        views: 24,
        render_resolution: 128,
        ..PostprocessOptions::default()
    }
}

#[test]
fn postprocess_runs_the_reference_chain() {
    let mesh = punch(&icosphere(R, 4), 0.15);
    let gaussians = sphere_gaussians(R, 6000, 0.012);
    let (textured, report) = postprocess(&gaussians, &mesh, &small_options(), Device::Cpu).unwrap();
    println!("postprocess: {report:?}");
    let simplified = report.simplify.unwrap();
    assert_eq!(simplified.target_faces, (mesh.indices.len() / 3 + 2) / 4);
    let filled = report.fill_holes.unwrap();
    assert_eq!(filled.filled_holes, 1);
    // Closed again: UV seams split vertices, so count boundary edges by position.
    let mut welded = HashMap::new();
    let ids: Vec<u32> = textured
        .positions
        .chunks(3)
        .map(|p| {
            let key = [p[0].to_bits(), p[1].to_bits(), p[2].to_bits()];
            let next = welded.len() as u32;
            *welded.entry(key).or_insert(next)
        })
        .collect();
    let by_position: Vec<u32> = textured.indices.iter().map(|&i| ids[i as usize]).collect();
    assert_eq!(boundary_edges(&by_position), 0);
    let texture = textured.texture.as_ref().unwrap();
    assert_eq!(texture.dimensions(), (128, 128));
    assert!(textured.uvs.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(textured.normals.len(), textured.positions.len());
    assert!(degenerate_uv_fraction(&textured.uvs, &textured.indices) <= 0.01);
    // Normals point outwards on a sphere.
    for (p, n) in textured.positions.chunks(3).zip(textured.normals.chunks(3)) {
        let d = (p[0] * n[0] + p[1] * n[1] + p[2] * n[2]) / radius([p[0], p[1], p[2]]);
        assert!(d > 0.9, "normal {n:?} at {p:?}");
    }
}

#[test]
fn vertex_colors_only_bakes_colours_per_vertex() {
    let mesh = icosphere(R, 3);
    let gaussians = sphere_gaussians(R, 6000, 0.012);
    let options = PostprocessOptions {
        vertex_colors_only: true,
        ..small_options()
    };
    let (textured, _) = postprocess(&gaussians, &mesh, &options, Device::Cpu).unwrap();
    assert!(textured.texture.is_none() && textured.uvs.is_empty());
    assert_eq!(textured.colors.len(), textured.positions.len());
    let mean = textured
        .positions
        .chunks(3)
        .zip(textured.colors.chunks(3))
        .map(|(p, c)| {
            let e = color_at([p[0], p[1], p[2]]);
            (0..3).map(|k| (c[k] - e[k]).abs()).fold(0f32, f32::max)
        })
        .sum::<f32>()
        / (textured.positions.len() / 3) as f32;
    println!("vertex colours: mean error {mean:.4}");
    assert!(mean < 0.04, "{mean}");
}

#[test]
fn bad_options_are_errors() {
    let mesh = icosphere(R, 1);
    let gaussians = sphere_gaussians(R, 100, 0.02);
    for options in [
        PostprocessOptions {
            simplify: 1.0,
            ..small_options()
        },
        PostprocessOptions {
            texture_size: 0,
            ..small_options()
        },
        PostprocessOptions {
            views: 0,
            ..small_options()
        },
        PostprocessOptions {
            fill_holes_max_size: f32::NAN,
            ..small_options()
        },
    ] {
        assert!(postprocess(&gaussians, &mesh, &options, Device::Cpu).is_err());
    }
    let empty = Mesh::default();
    assert!(postprocess(&gaussians, &empty, &small_options(), Device::Cpu).is_err());
}
