//! The mesh rasteriser's CPU reference (src/render/mesh_raster) and texture sampling
//! (src/render/texture) on analytic scenes, plus golden images of fixed scenes.
//!
//! The golden images in tests/fixtures/render/mesh_scenes.safetensors are regression data
//! produced by this CPU path itself (not by nvdiffrast); regenerate them deliberately with
//! `RECON_BLESS_RENDER_GOLDEN=1 cargo test --test render_mesh golden`.

mod common;

use std::path::PathBuf;

use recon::render::mesh_raster::{
    interpolate, Downsample, MeshRenderSettings, MeshScene, Rasterization,
};
use recon::render::texture::{self, Boundary, Filter, Texture};
use recon::render::View;
use tch::{Device, Kind, Tensor};

/// A camera at the origin looking down +z (OpenCV), with `fx = fy = 1` (one image width per
/// unit at depth 1) and the principal point at the centre.
fn axis_view() -> View {
    View {
        rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        translation: [0.0; 3],
        fx: 1.0,
        fy: 1.0,
        cx: 0.5,
        cy: 0.5,
    }
}

fn ids(rast: &Rasterization) -> Vec<i32> {
    Vec::<i32>::try_from(rast.triangle_id.flatten(0, -1)).unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// World point on the plane z = `z` seen at pixel position `(px, py)` by [`axis_view`] at
/// `size × size` pixels.
fn unproject(px: f32, py: f32, z: f32, size: u32) -> [f32; 3] {
    let s = size as f32;
    [(px - s / 2.0) / s * z, (py - s / 2.0) / s * z, z]
}

#[test]
fn quad_covers_exactly_the_pixels_the_fill_rule_gives() {
    // A 16×16 image; the quad's corners sit on pixel centres: x from 2.5 to 10.5, y from 3.5
    // to 7.5. Top-left rule: left and top edges are in, right and bottom edges out, so
    // columns 2..=9 and rows 3..=6 (8 × 4 = 32 pixels).
    let size = 16;
    let corners = [(2.5, 3.5), (10.5, 3.5), (10.5, 7.5), (2.5, 7.5)];
    let positions: Vec<f32> = corners
        .iter()
        .flat_map(|&(x, y)| unproject(x, y, 2.0, size))
        .collect();
    let both = [0u32, 1, 2, 0, 2, 3];
    let scene = MeshScene::new(&positions, &both, Device::Cpu).unwrap();
    let rast = scene
        .rasterize(&axis_view(), size, size, 1.0, 100.0)
        .unwrap();
    let got = ids(&rast);
    for y in 0..16 {
        for x in 0..16 {
            let inside = (2..=9).contains(&x) && (3..=6).contains(&y);
            let id = got[(y * 16 + x) as usize];
            assert_eq!(id >= 0, inside, "pixel ({x}, {y}): id {id}");
        }
    }
    // Each triangle alone: disjoint coverage whose union is the quad, with the pixel centres
    // on the shared diagonal (e.g. (4.5, 4.5)) going to exactly one of them.
    let mut count = vec![0; 256];
    for tri in [[0u32, 1, 2], [0, 2, 3]] {
        let one = MeshScene::new(&positions, &tri, Device::Cpu).unwrap();
        let r = one.rasterize(&axis_view(), size, size, 1.0, 100.0).unwrap();
        for (c, id) in count.iter_mut().zip(ids(&r)) {
            *c += i32::from(id >= 0);
        }
    }
    assert!(count.iter().all(|&c| c <= 1), "double coverage");
    assert_eq!(count.iter().sum::<i32>(), 32);
    // Depth is the plane's z everywhere.
    let depth = floats(&rast.depth);
    assert!(got.iter().zip(&depth).all(|(&id, &d)| if id >= 0 {
        (d - 2.0).abs() < 1e-6
    } else {
        d == 0.0
    }));
}

#[test]
fn a_triangle_fan_covers_every_pixel_once() {
    // Irregular (non-dyadic) corners around a centre vertex: shared edges must neither crack
    // nor overlap.
    let size = 48u32;
    let (cx, cy) = (23.37f32, 25.11f32);
    let mut positions = unproject(cx, cy, 3.0, size).to_vec();
    let n = 11;
    for k in 0..n {
        let a = k as f32 / n as f32 * std::f32::consts::TAU + 0.1;
        let r = 15.0 + 4.0 * (3.0 * a).sin();
        positions.extend(unproject(cx + r * a.cos(), cy + r * a.sin(), 3.0, size));
    }
    let mut count = vec![0; (size * size) as usize];
    let mut fan = vec![];
    for k in 0..n {
        let tri = [0, 1 + k, 1 + (k + 1) % n];
        fan.extend(tri);
        let scene = MeshScene::new(&positions, &tri, Device::Cpu).unwrap();
        let r = scene
            .rasterize(&axis_view(), size, size, 1.0, 100.0)
            .unwrap();
        for (c, id) in count.iter_mut().zip(ids(&r)) {
            *c += i32::from(id >= 0);
        }
    }
    assert!(count.iter().all(|&c| c <= 1), "double coverage");
    let scene = MeshScene::new(&positions, &fan, Device::Cpu).unwrap();
    let all = ids(&scene
        .rasterize(&axis_view(), size, size, 1.0, 100.0)
        .unwrap());
    for (c, id) in count.iter().zip(&all) {
        assert_eq!(*c == 1, *id >= 0);
    }
    // The centre pixel region is solid: no cracks around the centre vertex.
    for y in 20..30 {
        for x in 20..27 {
            assert!(all[y * size as usize + x] >= 0, "crack at ({x}, {y})");
        }
    }
}

#[test]
fn nearer_triangle_wins_whatever_the_order() {
    let size = 32;
    let tri = |z: f32, shift: f32| -> Vec<f32> {
        [(4.0 + shift, 4.0), (28.0, 6.0 + shift), (10.0, 28.0)]
            .iter()
            .flat_map(|&(x, y)| unproject(x, y, z, size))
            .collect()
    };
    for (near_first, expected_near) in [(true, 0), (false, 1)] {
        let (a, b) = if near_first {
            (tri(2.0, 0.0), tri(3.0, 2.0))
        } else {
            (tri(3.0, 2.0), tri(2.0, 0.0))
        };
        let positions = [a, b].concat();
        let scene = MeshScene::new(&positions, &[0, 1, 2, 3, 4, 5], Device::Cpu).unwrap();
        let rast = scene
            .rasterize(&axis_view(), size, size, 1.0, 100.0)
            .unwrap();
        let (got, depth) = (ids(&rast), floats(&rast.depth));
        // Pixel (14, 14) is inside both.
        let p = 14 * 32 + 14;
        assert_eq!(got[p], expected_near);
        assert!((depth[p] - 2.0).abs() < 1e-6, "depth {}", depth[p]);
        // Exact ties go to the lower id: the same triangle twice.
        let twice = [positions.clone(), positions[..9].to_vec()].concat();
        let scene = MeshScene::new(&twice, &[6, 7, 8, 0, 1, 2], Device::Cpu).unwrap();
        let tie = ids(&scene
            .rasterize(&axis_view(), size, size, 1.0, 100.0)
            .unwrap());
        assert!(tie.iter().all(|&id| id <= 0), "tie went to the higher id");
    }
}

/// A triangle tilted in depth, seen in perspective by an orbit camera.
fn tilted_scene() -> (Vec<f32>, View) {
    let positions = vec![
        -0.4, -0.3, -0.2, //
        0.5, -0.1, 0.35, //
        -0.1, 0.45, 0.1,
    ];
    let view = View::orbit(0.4, 0.9, 2.0, 40f64.to_radians()).unwrap();
    (positions, view)
}

/// The barycentrics of the ray through pixel centre `(px, py)` with the triangle's plane,
/// in f64 (vertex 1 and vertex 2 weights) and the hit's camera depth.
fn ray_barycentrics(
    view: &View,
    tri: &[[f64; 3]; 3],
    px: f64,
    py: f64,
    w: u32,
    h: u32,
) -> (f64, f64, f64) {
    let k = view.pixel_intrinsics(w, h);
    let cam: Vec<[f64; 3]> = tri
        .iter()
        .map(|p| {
            let c = view.to_camera([p[0] as f32, p[1] as f32, p[2] as f32]);
            [c[0] as f64, c[1] as f64, c[2] as f64]
        })
        .collect();
    let d = [
        (px - k.cx as f64) / k.fx as f64,
        (py - k.cy as f64) / k.fy as f64,
        1.0,
    ];
    // Solve t·d = c0 + u (c1 − c0) + v (c2 − c0) by Cramer's rule.
    let e1 = [0, 1, 2].map(|i| cam[1][i] - cam[0][i]);
    let e2 = [0, 1, 2].map(|i| cam[2][i] - cam[0][i]);
    let cross = |a: [f64; 3], b: [f64; 3]| {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    };
    let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let p = cross(d, e2);
    let det = dot(e1, p);
    let s = [0, 1, 2].map(|i| -cam[0][i]);
    let u = dot(s, p) / det;
    let q = cross(s, e1);
    let v = dot(d, q) / det;
    let t = dot(e2, q) / det;
    (u, v, t)
}

#[test]
fn barycentrics_and_depth_are_perspective_correct() {
    let (positions, view) = tilted_scene();
    let (w, h) = (80, 60);
    let scene = MeshScene::new(&positions, &[0, 1, 2], Device::Cpu).unwrap();
    let rast = scene.rasterize(&view, w, h, 1.0, 100.0).unwrap();
    let tri = [0, 1, 2].map(|v| [0, 1, 2].map(|i| positions[3 * v + i] as f64));
    let (got, bary, depth) = (ids(&rast), floats(&rast.barycentrics), floats(&rast.depth));
    let mut covered = 0;
    let mut max_err = 0f64;
    for y in 0..h {
        for x in 0..w {
            let p = (y * w + x) as usize;
            let (u, v, t) = ray_barycentrics(&view, &tri, x as f64 + 0.5, y as f64 + 0.5, w, h);
            let inside = u > 1e-4 && v > 1e-4 && u + v < 1.0 - 1e-4;
            let outside = u < -1e-4 || v < -1e-4 || u + v > 1.0 + 1e-4;
            if inside {
                assert_eq!(got[p], 0, "pixel ({x}, {y}) should be covered");
            }
            if outside {
                assert_eq!(got[p], -1, "pixel ({x}, {y}) should be empty");
            }
            if got[p] == 0 {
                covered += 1;
                max_err = max_err
                    .max((bary[2 * p] as f64 - u).abs())
                    .max((bary[2 * p + 1] as f64 - v).abs())
                    .max((depth[p] as f64 - t).abs() / t);
            }
        }
    }
    println!("covered {covered} pixels, max barycentric/relative depth error {max_err:.2e}");
    assert!(covered > 100);
    assert!(max_err < 2e-5, "max error {max_err}");

    // Interpolating the world positions gives the point on the pixel's ray at its depth.
    let attr = Tensor::from_slice(&positions).reshape([3, 3]);
    let (world, _) = interpolate(&attr, scene.indices(), &rast).unwrap();
    let world = floats(&world);
    let k = view.pixel_intrinsics(w, h);
    for p in (0..(w * h) as usize).filter(|&p| got[p] == 0) {
        let c = view.to_camera([world[3 * p], world[3 * p + 1], world[3 * p + 2]]);
        let (px, py) = (k.fx * c[0] / c[2] + k.cx, k.fy * c[1] / c[2] + k.cy);
        let (x, y) = ((p as u32 % w) as f32 + 0.5, (p as u32 / w) as f32 + 0.5);
        assert!(
            (px - x).abs() < 1e-3 && (py - y).abs() < 1e-3,
            "({px}, {py}) vs ({x}, {y})"
        );
        assert!((c[2] - depth[p]).abs() < 1e-5);
    }
}

/// `view` with its principal point moved by `dx, dy` pixels at `w × h`: the image content
/// moves by the same amount, so pixel centres sample the scene at `(x − dx, y − dy)`.
fn shifted(view: &View, dx: f32, dy: f32, w: u32, h: u32) -> View {
    View {
        cx: view.cx + dx / w as f32,
        cy: view.cy + dy / h as f32,
        ..*view
    }
}

#[test]
fn derivatives_match_finite_differences() {
    let (positions, view) = tilted_scene();
    let (w, h) = (80, 60);
    let scene = MeshScene::new(&positions, &[0, 1, 2], Device::Cpu).unwrap();
    let rast = scene.rasterize(&view, w, h, 1.0, 100.0).unwrap();
    let delta = 0.05f32;
    let bary_at = |dx: f32, dy: f32| {
        let r = scene
            .rasterize(&shifted(&view, dx, dy, w, h), w, h, 1.0, 100.0)
            .unwrap();
        (ids(&r), floats(&r.barycentrics))
    };
    let (id_xm, xm) = bary_at(delta, 0.0); // samples at x − δ
    let (id_xp, xp) = bary_at(-delta, 0.0);
    let (id_ym, ym) = bary_at(0.0, delta);
    let (id_yp, yp) = bary_at(0.0, -delta);
    let got = ids(&rast);
    let deriv = floats(&rast.barycentric_derivatives);
    // Attribute derivatives from interpolate: the attribute is (u, v) itself via vertex
    // values (0,0), (1,0), (0,1).
    let attr = Tensor::from_slice(&[0f32, 0.0, 1.0, 0.0, 0.0, 1.0]).reshape([3, 2]);
    let (_, attr_d) = interpolate(&attr, scene.indices(), &rast).unwrap();
    let attr_d = floats(&attr_d);
    let mut checked = 0;
    let mut max_rel = 0f32;
    for p in 0..(w * h) as usize {
        if [got[p], id_xm[p], id_xp[p], id_ym[p], id_yp[p]]
            .iter()
            .any(|&i| i != 0)
        {
            continue;
        }
        for c in 0..2 {
            let fd_x = (xp[2 * p + c] - xm[2 * p + c]) / (2.0 * delta);
            let fd_y = (yp[2 * p + c] - ym[2 * p + c]) / (2.0 * delta);
            let (ax, ay) = (deriv[4 * p + 2 * c], deriv[4 * p + 2 * c + 1]);
            let scale = ax.abs().max(ay.abs()).max(1e-3);
            max_rel = max_rel
                .max((fd_x - ax).abs() / scale)
                .max((fd_y - ay).abs() / scale);
            // interpolate's [H, W, 2C] layout: (d/dx, d/dy) per channel.
            assert!((attr_d[4 * p + 2 * c] - ax).abs() < 1e-6);
            assert!((attr_d[4 * p + 2 * c + 1] - ay).abs() < 1e-6);
        }
        checked += 1;
    }
    println!("checked {checked} pixels, max relative derivative error {max_rel:.2e}");
    assert!(checked > 100);
    assert!(max_rel < 2e-3, "max relative error {max_rel}");
}

#[test]
fn near_and_far_planes_cut_per_pixel() {
    // A floor strip one unit below the camera (y down), receding from z = 0.5 to z = 8:
    // near 1 and far 4 keep only the part between (image rows ~14.4 to ~38.4).
    let (w, h) = (32, 64);
    let positions = vec![
        -0.5, 1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 8.0, //
        -0.5, 1.0, 8.0,
    ];
    let scene = MeshScene::new(&positions, &[0, 1, 2, 0, 2, 3], Device::Cpu).unwrap();
    let view = View {
        fx: 0.5,
        fy: 0.5,
        cy: 0.1,
        ..axis_view()
    };
    let rast = scene.rasterize(&view, w, h, 1.0, 4.0).unwrap();
    let (got, depth) = (ids(&rast), floats(&rast.depth));
    let covered: Vec<f32> = got
        .iter()
        .zip(&depth)
        .filter(|(&id, _)| id >= 0)
        .map(|(_, &d)| d)
        .collect();
    assert!(!covered.is_empty());
    assert!(
        covered.iter().all(|&d| (1.0..=4.0).contains(&d)),
        "depth out of range"
    );
    let (lo, hi) = covered
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &d| (a.min(d), b.max(d)));
    println!("visible depths {lo}..{hi}");
    // Rows are sampled finely enough near both cuts to come within 0.2 of them.
    assert!(lo < 1.2 && hi > 3.8, "visible depths {lo}..{hi}");
    // Without the cuts more of the strip shows.
    let wide = scene.rasterize(&view, w, h, 0.25, 100.0).unwrap();
    let more = ids(&wide).iter().filter(|&&id| id >= 0).count();
    assert!(more > covered.len());
}

#[test]
fn bad_inputs_are_errors_and_empty_meshes_render_background() {
    let view = axis_view();
    assert!(MeshScene::new(&[0.0, 0.0], &[], Device::Cpu).is_err());
    assert!(MeshScene::new(&[0.0, 0.0, f32::NAN], &[0, 0, 0], Device::Cpu).is_err());
    assert!(MeshScene::new(&[0.0; 9], &[0, 1, 3], Device::Cpu).is_err());
    assert!(MeshScene::new(&[0.0; 9], &[0, 1], Device::Cpu).is_err());
    let scene = MeshScene::new(
        &[0.0, 0.0, 2.0, 1.0, 0.0, 2.0, 0.0, 1.0, 2.0],
        &[0, 1, 2],
        Device::Cpu,
    )
    .unwrap();
    assert!(scene.rasterize(&view, 0, 8, 1.0, 10.0).is_err());
    assert!(scene.rasterize(&view, 8, 8, 0.0, 10.0).is_err());
    assert!(scene.rasterize(&view, 8, 8, 2.0, 1.0).is_err());
    assert!(scene.rasterize(&view, 8, 8, f32::NAN, 1.0).is_err());
    assert!(scene.rasterize(&view, 100_000, 8, 1.0, 10.0).is_err());
    let nan_view = View {
        fx: f32::NAN,
        ..view
    };
    assert!(scene.rasterize(&nan_view, 8, 8, 1.0, 10.0).is_err());
    let settings = MeshRenderSettings {
        ssaa: 0,
        ..Default::default()
    };
    assert!(scene.render_normals(&view, &settings).is_err());

    let empty = MeshScene::new(&[], &[], Device::Cpu).unwrap();
    let rast = empty.rasterize(&view, 8, 4, 1.0, 10.0).unwrap();
    assert!(ids(&rast).iter().all(|&id| id == -1));
    let settings = MeshRenderSettings {
        width: 8,
        height: 4,
        ..Default::default()
    };
    let image = empty.render(&view, &settings).unwrap();
    assert_eq!(image.normal.size(), [4, 8, 3]);
    assert!(floats(&image.normal)
        .iter()
        .all(|&v| (v - 0.5).abs() < 1e-6));
    assert!(floats(&image.mask).iter().all(|&v| v == 0.0));
    let attr = Tensor::ones([0, 2], (Kind::Float, Device::Cpu));
    let (values, derivs) = interpolate(&attr, empty.indices(), &rast).unwrap();
    assert_eq!(values.size(), [4, 8, 2]);
    assert_eq!(derivs.size(), [4, 8, 4]);
}

/// An axis-aligned box `[-s, s]³` (12 triangles, outward winding).
fn cube(s: f32) -> (Vec<f32>, Vec<u32>) {
    let mut positions = vec![];
    for i in 0..8 {
        positions.extend([
            if i & 1 == 0 { -s } else { s },
            if i & 2 == 0 { -s } else { s },
            if i & 4 == 0 { -s } else { s },
        ]);
    }
    let quads = [
        [0, 2, 3, 1], // -z
        [4, 5, 7, 6], // +z
        [0, 1, 5, 4], // -y
        [2, 6, 7, 3], // +y
        [0, 4, 6, 2], // -x
        [1, 3, 7, 5], // +x
    ];
    let indices = quads
        .iter()
        .flat_map(|q| [q[0], q[1], q[2], q[0], q[2], q[3]])
        .collect();
    (positions, indices)
}

#[test]
fn cube_normals_face_the_camera() {
    let (positions, indices) = cube(0.3);
    let scene = MeshScene::new(&positions, &indices, Device::Cpu).unwrap();
    // Outward unit normals.
    let n = floats(scene.face_normals());
    for f in 0..12 {
        let len: f32 = (0..3).map(|i| n[3 * f + i] * n[3 * f + i]).sum();
        assert!((len - 1.0).abs() < 1e-6);
    }
    // Straight from +y (yaw 0, pitch 0): the centre shows the +y face, encoded (0.5, 1, 0.5).
    let view = View::orbit(0.0, 0.0, 2.0, 40f64.to_radians()).unwrap();
    let settings = MeshRenderSettings {
        width: 32,
        height: 32,
        ..Default::default()
    };
    let image = scene.render(&view, &settings).unwrap();
    assert_eq!(image.normal.size(), [32, 32, 3]);
    let normal = floats(&image.normal);
    let centre = (16 * 32 + 16) * 3;
    assert!((normal[centre] - 0.5).abs() < 1e-5);
    assert!((normal[centre + 1] - 1.0).abs() < 1e-5);
    assert!((normal[centre + 2] - 0.5).abs() < 1e-5);
    // Corners are background; the mask is 1 inside, 0 outside, fractional at the silhouette.
    assert!((normal[0] - 0.5).abs() < 1e-6 && (normal[1] - 0.5).abs() < 1e-6);
    let mask = floats(&image.mask);
    assert_eq!(mask[16 * 32 + 16], 1.0);
    assert_eq!(mask[0], 0.0);
    assert!(mask.iter().any(|&m| m > 0.05 && m < 0.95));
    // Depth at the centre: the +y face at y = 0.3 seen from radius 2.
    let depth = floats(&image.depth);
    assert!((depth[16 * 32 + 16] - 1.7).abs() < 1e-4);
    // render_normals is the same image; Box downsampling is the block mean.
    let normals = scene.render_normals(&view, &settings).unwrap();
    assert_eq!(normals.size(), [32, 32, 3]);
    assert!(normals.equal(&image.normal));
    let boxed = MeshRenderSettings {
        downsample: Downsample::Box,
        ..settings
    };
    let boxed = scene.render_normals(&view, &boxed).unwrap();
    let full = scene
        .render_normals(
            &view,
            &MeshRenderSettings {
                width: 128,
                height: 128,
                ssaa: 1,
                ..settings
            },
        )
        .unwrap();
    let block_mean = full
        .permute([2, 0, 1])
        .unsqueeze(0)
        .avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None)
        .squeeze_dim(0)
        .permute([1, 2, 0]);
    assert!(boxed.allclose(&block_mean, 1e-6, 1e-6, false));
}

// ---------------------------------------------------------------------------------------
// Texture sampling

fn texture_2x2() -> Tensor {
    // Row 0 = v near 0: texels (row, col) → value 10·row + col, plus a second channel.
    Tensor::from_slice(&[0f32, 1.0, 1.0, -1.0, 10.0, 2.0, 11.0, -2.0]).reshape([2, 2, 2])
}

fn uv(points: &[(f32, f32)]) -> Tensor {
    let flat: Vec<f32> = points.iter().flat_map(|&(u, v)| [u, v]).collect();
    Tensor::from_slice(&flat).reshape([points.len() as i64, 2])
}

#[test]
fn constant_textures_sample_constant() {
    let tex = Tensor::full([16, 8, 3], 0.25, (Kind::Float, Device::Cpu));
    let points = uv(&[
        (0.0, 0.0),
        (0.3, 0.9),
        (1.0, 1.0),
        (-0.5, 2.0),
        (0.51, 0.49),
    ]);
    let da = Tensor::from_slice(&[0.1f32, 0.0, 0.0, 0.1]).repeat([5, 1]);
    for filter in [Filter::Nearest, Filter::Linear, Filter::LinearMipmapLinear] {
        let out = texture::sample(&tex, &points, Some(&da), filter).unwrap();
        assert_eq!(out.size(), [5, 3]);
        assert!(
            floats(&out).iter().all(|&v| (v - 0.25).abs() < 1e-7),
            "{filter:?}"
        );
    }
}

#[test]
fn bilinear_and_nearest_follow_nvdiffrast_texel_centres() {
    let tex = texture_2x2();
    // Texel centres at 0.25 / 0.75; v indexes rows from row 0.
    let points = uv(&[
        (0.25, 0.25),
        (0.75, 0.25),
        (0.25, 0.75),
        (0.5, 0.5),
        (0.5, 0.25),
        (0.0, 1.0),
    ]);
    let out = floats(&texture::sample(&tex, &points, None, Filter::Linear).unwrap());
    let first: Vec<f32> = out.iter().step_by(2).copied().collect();
    assert_eq!(first, [0.0, 1.0, 10.0, 5.5, 0.5, 10.0]);
    let second: Vec<f32> = out.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(second[3], 0.0);
    let near = floats(
        &texture::sample(
            &tex,
            &uv(&[(0.49, 0.51), (0.99, 0.0), (1.5, -3.0)]),
            None,
            Filter::Nearest,
        )
        .unwrap(),
    );
    let near: Vec<f32> = near.iter().step_by(2).copied().collect();
    assert_eq!(near, [10.0, 1.0, 1.0]);
    // Wrap: u = 1.25 is u = 0.25; u = 0 blends the last and first columns.
    let t = Texture::new(&tex, Some(0)).unwrap();
    let wrapped = floats(
        &t.sample(
            &uv(&[(1.25, 0.25), (0.0, 0.25)]),
            None,
            Filter::Linear,
            Boundary::Wrap,
        )
        .unwrap(),
    );
    assert_eq!(wrapped[0], 0.0);
    assert_eq!(wrapped[2], 0.5);
    // Clamp at the same point stays on the first column.
    let clamped =
        floats(&texture::sample(&tex, &uv(&[(0.0, 0.25)]), None, Filter::Linear).unwrap());
    assert_eq!(clamped[0], 0.0);
}

#[test]
fn mip_level_follows_the_uv_footprint() {
    // 8×8 texture of random values; level 1 is the 2×2 block mean, level 2 the 4×4 one.
    tch::manual_seed(3);
    let tex = Tensor::rand([8, 8, 1], (Kind::Float, Device::Cpu));
    let t = Texture::new(&tex, None).unwrap();
    let sizes: Vec<Vec<i64>> = t.levels().iter().map(|l| l.size()).collect();
    assert_eq!(
        sizes,
        [vec![8, 8, 1], vec![4, 4, 1], vec![2, 2, 1], vec![1, 1, 1]]
    );
    let pool = |k: i64| {
        tex.permute([2, 0, 1])
            .unsqueeze(0)
            .avg_pool2d([k, k], [k, k], [0, 0], false, true, None)
            .squeeze_dim(0)
            .permute([1, 2, 0])
    };
    assert!(t.levels()[1].allclose(&pool(2), 1e-6, 1e-7, false));
    assert!(t.levels()[2].allclose(&pool(4), 1e-6, 1e-7, false));
    let points = uv(&[(0.3, 0.6), (0.55, 0.2), (0.9, 0.9)]);
    let at_level =
        |level: usize| texture::sample(&t.levels()[level], &points, None, Filter::Linear).unwrap();
    let da = |footprint: f32, anisotropic: bool| {
        // A footprint of `footprint` level-0 texels along x (and 1/4 of that along y when
        // anisotropic: the major axis decides).
        let d = footprint / 8.0;
        let minor = if anisotropic { d / 4.0 } else { d };
        Tensor::from_slice(&[d, 0.0, 0.0, minor]).repeat([3, 1])
    };
    let trilinear =
        |da: &Tensor| texture::sample(&tex, &points, Some(da), Filter::LinearMipmapLinear).unwrap();
    // Footprints up to one texel: level 0 (magnification).
    assert!(trilinear(&da(0.5, false)).allclose(&at_level(0), 1e-6, 1e-6, false));
    assert!(trilinear(&da(1.0, false)).allclose(&at_level(0), 1e-6, 1e-6, false));
    // Two texels: level 1; four: level 2, also when only the major axis is that long.
    assert!(trilinear(&da(2.0, false)).allclose(&at_level(1), 1e-5, 1e-6, false));
    assert!(trilinear(&da(4.0, true)).allclose(&at_level(2), 1e-5, 1e-6, false));
    // 2^1.5 texels: halfway between levels 1 and 2.
    let half = (at_level(1) + at_level(2)) * 0.5;
    assert!(trilinear(&da(2f32.powf(1.5), false)).allclose(&half, 1e-5, 1e-6, false));
    // Huge footprints clamp to the last level (the mean).
    let mean = tex.mean(Kind::Float);
    let far = floats(&trilinear(&da(1000.0, false)));
    let m = f32::try_from(mean).unwrap();
    assert!(far.iter().all(|&v| (v - m).abs() < 1e-6));
    // Rotated footprints select by length: the same level for a 45° footprint of length 2.
    let r = 2.0 / 8.0 / 2f32.sqrt();
    let rotated = Tensor::from_slice(&[r, -r, r, r]).repeat([3, 1]);
    assert!(trilinear(&rotated).allclose(&at_level(1), 1e-5, 1e-6, false));
    // Without derivatives the mip filter is an error.
    assert!(texture::sample(&tex, &points, None, Filter::LinearMipmapLinear).is_err());
}

#[test]
fn odd_sized_textures_stop_the_mip_chain() {
    let tex = Tensor::ones([12, 6, 2], (Kind::Float, Device::Cpu));
    let t = Texture::new(&tex, None).unwrap();
    let sizes: Vec<Vec<i64>> = t.levels().iter().map(|l| l.size()).collect();
    assert_eq!(sizes, [vec![12, 6, 2], vec![6, 3, 2]]);
    let t = Texture::new(&Tensor::ones([1, 8, 1], (Kind::Float, Device::Cpu)), None).unwrap();
    assert_eq!(t.levels().len(), 4);
    assert!(Texture::new(&Tensor::ones([4, 4], (Kind::Float, Device::Cpu)), None).is_err());
    assert!(Texture::new(&Tensor::ones([0, 4, 3], (Kind::Float, Device::Cpu)), None).is_err());
}

#[test]
fn gradients_reach_the_texture() {
    tch::manual_seed(5);
    let mut tex = Tensor::rand([16, 16, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let n = 50;
    let points = Tensor::rand([n, 2], (Kind::Float, Device::Cpu)) * 1.2 - 0.1;
    let da = Tensor::rand([n, 4], (Kind::Float, Device::Cpu)) * 0.2;
    for filter in [Filter::Nearest, Filter::Linear, Filter::LinearMipmapLinear] {
        tex.zero_grad();
        let out = texture::sample(&tex, &points, Some(&da), filter).unwrap();
        out.sum(Kind::Float).backward();
        let grad = tex.grad();
        // Each sample's weights sum to one per channel, so the gradient of the sum does too.
        let total = f64::try_from(grad.sum(Kind::Double)).unwrap();
        assert!((total - (n * 3) as f64).abs() < 1e-3, "{filter:?}: {total}");
        assert!(f64::try_from(grad.min()).unwrap() >= 0.0);
    }
    // Fitting a texture through the sampler converges (the bake's use).
    let target = Tensor::rand([8, 8, 3], (Kind::Float, Device::Cpu));
    let mut fit = Tensor::zeros([8, 8, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let grid: Vec<(f32, f32)> = (0..8)
        .flat_map(|i| (0..8).map(move |j| ((j as f32 + 0.5) / 8.0, (i as f32 + 0.5) / 8.0)))
        .collect();
    let points = uv(&grid);
    for _ in 0..200 {
        fit.zero_grad();
        let out = texture::sample(&fit, &points, None, Filter::Linear).unwrap();
        let loss = (out - target.reshape([64, 3])).square().sum(Kind::Float);
        loss.backward();
        tch::no_grad(|| {
            let _ = fit.f_sub_(&(fit.grad() * 0.25)).unwrap();
        });
    }
    assert!(fit.allclose(&target, 1e-4, 1e-4, false));
}

#[test]
fn textured_quad_samples_through_rasterised_uvs() {
    // The chain TRELLIS's bake uses: rasterise, interpolate UVs with derivatives, sample.
    let size = 64u32;
    let positions: Vec<f32> = [(8.0, 8.0), (56.0, 8.0), (56.0, 56.0), (8.0, 56.0)]
        .iter()
        .flat_map(|&(x, y)| unproject(x, y, 2.0, size))
        .collect();
    let scene = MeshScene::new(&positions, &[0, 1, 2, 0, 2, 3], Device::Cpu).unwrap();
    let rast = scene
        .rasterize(&axis_view(), size, size, 1.0, 10.0)
        .unwrap();
    let uvs = Tensor::from_slice(&[0f32, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]).reshape([4, 2]);
    let (uv_img, uv_da) = interpolate(&uvs, scene.indices(), &rast).unwrap();
    // 48 pixels span the UV range: du/dx = 1/48, dv/dy = 1/48.
    let d = floats(&uv_da);
    let p = (30 * 64 + 30) * 4;
    assert!((d[p] - 1.0 / 48.0).abs() < 1e-6 && d[p + 1].abs() < 1e-6);
    assert!(d[p + 2].abs() < 1e-6 && (d[p + 3] - 1.0 / 48.0).abs() < 1e-6);
    // A 192² texture is minified 4×: level 2. A 16-texel checker at that level is flat.
    let tex = Tensor::from_slice(
        &(0..192 * 192)
            .map(|i| ((i % 192 / 2 + i / 192 / 2) % 2) as f32)
            .collect::<Vec<f32>>(),
    )
    .reshape([192, 192, 1]);
    let out = texture::sample(&tex, &uv_img, Some(&uv_da), Filter::LinearMipmapLinear).unwrap();
    assert_eq!(out.size(), [64, 64, 1]);
    let v = floats(&out);
    assert!((v[30 * 64 + 30] - 0.5).abs() < 1e-5, "{}", v[30 * 64 + 30]);
}

// ---------------------------------------------------------------------------------------
// Golden images (regression data from this CPU path)

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/render/mesh_scenes.safetensors")
}

/// A cube and an octahedron that pierces it, seen from an orbit camera.
fn golden_scene() -> (Vec<f32>, Vec<u32>) {
    let (mut positions, mut indices) = cube(0.25);
    let base = (positions.len() / 3) as u32;
    let o = [
        [0.45, 0.05, 0.0],
        [-0.1, 0.05, 0.0],
        [0.175, 0.33, 0.0],
        [0.175, -0.23, 0.0],
        [0.175, 0.05, 0.3],
        [0.175, 0.05, -0.3],
    ];
    positions.extend(o.iter().flatten());
    for (a, b, c) in [
        (0, 2, 4),
        (2, 1, 4),
        (1, 3, 4),
        (3, 0, 4),
        (2, 0, 5),
        (1, 2, 5),
        (3, 1, 5),
        (0, 3, 5),
    ] {
        indices.extend([base + a, base + b, base + c]);
    }
    (positions, indices)
}

#[test]
fn golden_images_of_fixed_scenes() {
    let (positions, indices) = golden_scene();
    let scene = MeshScene::new(&positions, &indices, Device::Cpu).unwrap();
    let view = View::orbit(0.6, 0.35, 2.0, 40f64.to_radians()).unwrap();
    let rast = scene.rasterize(&view, 64, 48, 1.0, 100.0).unwrap();
    let settings = MeshRenderSettings {
        width: 32,
        height: 24,
        ssaa: 4,
        ..Default::default()
    };
    let image = scene.render(&view, &settings).unwrap();
    let ours = vec![
        ("triangle_id".to_string(), rast.triangle_id.shallow_clone()),
        (
            "barycentrics".to_string(),
            rast.barycentrics.shallow_clone(),
        ),
        ("depth".to_string(), rast.depth.shallow_clone()),
        (
            "barycentric_derivatives".to_string(),
            rast.barycentric_derivatives.shallow_clone(),
        ),
        ("normal".to_string(), image.normal.shallow_clone()),
        ("mask".to_string(), image.mask.shallow_clone()),
        ("render_depth".to_string(), image.depth.shallow_clone()),
    ];
    let path = golden_path();
    if std::env::var_os("RECON_BLESS_RENDER_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        recon::weights::write_safetensors(&path, &ours).unwrap();
        println!("wrote {}", path.display());
        return;
    }
    let golden = common::read_tensors(&path);
    assert_eq!(golden.len(), ours.len());
    for (name, tensor) in &ours {
        let expected = &golden[name];
        if tensor.kind() == Kind::Int {
            assert!(tensor.equal(expected), "{name} differs");
            println!("{name}: identical");
        } else {
            let (rel, max) = common::rel_l2(tensor, expected);
            println!("{name}: rel L2 {rel:.2e}, max abs {max:.2e}");
            assert!(rel <= common::REL_L2_TOLERANCE, "{name}: rel L2 {rel}");
        }
    }
}
