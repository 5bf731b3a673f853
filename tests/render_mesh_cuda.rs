//! The mesh rasteriser's CUDA path (kernels/mesh_raster.cu) against its CPU reference on the
//! same scenes. Both evaluate the same f32 operations in the same order without FMA
//! contraction, so triangle ids, barycentrics, depth and derivatives are expected to be
//! identical; the assertions allow for a handful of differing pixels all the same. Prints
//! "skipped: no CUDA" without a GPU (run on the GPU machine through the GPU bundle).
//!
//! That the kernel file exports what the host launches is checked in tests/kernels_compile.rs.

mod common;

use std::time::Instant;

use common::cuda;
use recon::render::mesh_raster::{MeshRenderSettings, MeshScene, Rasterization};
use recon::render::View;
use tch::{Device, Kind, Tensor};

/// An icosphere-like closed mesh: a latitude/longitude sphere of `rings × segments` quads
/// (plus pole fans) with a smooth random radial displacement, about `2·rings·segments`
/// triangles, centred at the origin with radius about 0.45.
pub fn bumpy_sphere(rings: u32, segments: u32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1_000_000) as f64 / 1_000_000.0
    };
    let waves: Vec<[f64; 4]> = (0..6)
        .map(|_| {
            [
                1.0 + 8.0 * next(),
                1.0 + 8.0 * next(),
                std::f64::consts::TAU * next(),
                0.03 * next(),
            ]
        })
        .collect();
    let mut positions = vec![];
    let radius = |theta: f64, phi: f64| {
        0.42 + waves
            .iter()
            .map(|w| w[3] * (w[0] * theta + w[2]).sin() * (w[1] * phi).cos())
            .sum::<f64>()
    };
    positions.extend([0.0, 0.0, radius(0.0, 0.0) as f32]);
    for i in 1..rings {
        let theta = std::f64::consts::PI * i as f64 / rings as f64;
        for j in 0..segments {
            let phi = std::f64::consts::TAU * j as f64 / segments as f64;
            let r = radius(theta, phi);
            positions.extend([
                (r * theta.sin() * phi.cos()) as f32,
                (r * theta.sin() * phi.sin()) as f32,
                (r * theta.cos()) as f32,
            ]);
        }
    }
    let south = (positions.len() / 3) as u32;
    positions.extend([0.0, 0.0, -radius(std::f64::consts::PI, 0.0) as f32]);
    let ring = |i: u32, j: u32| 1 + (i - 1) * segments + j % segments;
    let mut indices = vec![];
    for j in 0..segments {
        indices.extend([0, ring(1, j), ring(1, j + 1)]);
        indices.extend([south, ring(rings - 1, j + 1), ring(rings - 1, j)]);
    }
    for i in 1..rings - 1 {
        for j in 0..segments {
            let (a, b, c, d) = (
                ring(i, j),
                ring(i, j + 1),
                ring(i + 1, j + 1),
                ring(i + 1, j),
            );
            indices.extend([a, d, c, a, c, b]);
        }
    }
    (positions, indices)
}

/// Large, overlapping and near-plane-crossing triangles (the large-triangle pass and the
/// clipping path), around the origin.
pub fn big_triangles() -> (Vec<f32>, Vec<u32>) {
    let positions = vec![
        -3.0, -3.0, 0.1, 3.0, -2.5, -0.2, 0.0, 3.0, 0.0, // a floor-sized triangle
        -0.4, -0.4, 0.5, 0.6, -0.3, 0.4, 0.1, 0.5, 0.6, // one in front of it
        -0.5, 0.0, -0.5, 0.5, 0.0, -0.5, 0.0, 2.5, 0.3, // reaching past the camera
    ];
    (positions, (0..9).collect())
}

struct Comparison {
    id_agreement: f64,
    bary_max: f64,
    depth_max: f64,
    deriv_max: f64,
}

fn compare(cpu: &Rasterization, gpu: &Rasterization) -> Comparison {
    let gpu_id = gpu.triangle_id.to_device(Device::Cpu);
    let same = cpu.triangle_id.eq_tensor(&gpu_id);
    let id_agreement = f64::try_from(same.to_kind(Kind::Double).mean(Kind::Double)).unwrap();
    let both = same.logical_and(&cpu.triangle_id.ge(0));
    let max_diff = |a: &Tensor, b: &Tensor, mask: &Tensor| {
        let b = b.to_device(Device::Cpu);
        let diff = (a - b).abs();
        let diff = if diff.dim() == 3 {
            diff.amax([-1i64].as_slice(), false)
        } else {
            diff
        };
        let diff = diff.masked_select(mask);
        if diff.numel() == 0 {
            0.0
        } else {
            f64::try_from(diff.max()).unwrap()
        }
    };
    Comparison {
        id_agreement,
        bary_max: max_diff(&cpu.barycentrics, &gpu.barycentrics, &both),
        depth_max: max_diff(&cpu.depth, &gpu.depth, &both),
        deriv_max: max_diff(
            &cpu.barycentric_derivatives,
            &gpu.barycentric_derivatives,
            &both,
        ),
    }
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = f64::try_from((a - b.to_device(Device::Cpu)).square().mean(Kind::Double)).unwrap();
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

fn check_scene(
    name: &str,
    positions: &[f32],
    indices: &[u32],
    views: &[View],
    size: (u32, u32),
    device: Device,
) {
    let cpu = MeshScene::new(positions, indices, Device::Cpu).unwrap();
    let gpu = MeshScene::new(positions, indices, device).unwrap();
    for (k, view) in views.iter().enumerate() {
        for (near, far) in [(1.0, 100.0), (0.3, 2.2)] {
            let a = cpu.rasterize(view, size.0, size.1, near, far).unwrap();
            let b = gpu.rasterize(view, size.0, size.1, near, far).unwrap();
            let c = compare(&a, &b);
            println!(
                "{name} view {k} near {near} far {far}: ids agree {:.6}, max |Δ| bary {:.1e} \
                 depth {:.1e} derivatives {:.1e}",
                c.id_agreement, c.bary_max, c.depth_max, c.deriv_max
            );
            assert!(
                c.id_agreement >= 0.9999,
                "{name}: id agreement {}",
                c.id_agreement
            );
            assert!(
                c.bary_max <= 1e-5 && c.depth_max <= 1e-5,
                "{name}: values differ"
            );
            assert!(c.deriv_max <= 1e-4, "{name}: derivatives differ");
        }
        let settings = MeshRenderSettings {
            width: size.0 / 2,
            height: size.1 / 2,
            ..Default::default()
        };
        let p = psnr(
            &cpu.render_normals(view, &settings).unwrap(),
            &gpu.render_normals(view, &settings).unwrap(),
        );
        println!("{name} view {k}: normals PSNR {p:.1} dB");
        assert!(p >= 50.0, "{name}: normals PSNR {p}");
    }
}

#[test]
fn small_scenes_match_the_cpu_reference() {
    let Some(device) = cuda() else { return };
    let views: Vec<View> = recon::render::multiview(6, 2.0, 40f64.to_radians()).unwrap();
    let (positions, indices) = bumpy_sphere(24, 40, 7);
    check_scene("sphere", &positions, &indices, &views, (96, 64), device);
    let (positions, indices) = big_triangles();
    let close: Vec<View> = (0..4)
        .map(|k| View::orbit(k as f64 * 1.3, 0.2, 1.2, 60f64.to_radians()).unwrap())
        .collect();
    check_scene("big", &positions, &indices, &close, (128, 96), device);
    // Empty scene.
    let empty = MeshScene::new(&[], &[], device).unwrap();
    let r = empty.rasterize(&views[0], 16, 16, 1.0, 10.0).unwrap();
    assert_eq!(
        i64::try_from(r.triangle_id.ge(0).sum(Kind::Int64)).unwrap(),
        0
    );
}

#[test]
fn half_million_triangles_at_1024() {
    let Some(device) = cuda() else { return };
    let (positions, indices) = bumpy_sphere(500, 500, 11);
    let triangles = indices.len() / 3;
    println!(
        "bumpy sphere: {} vertices, {triangles} triangles",
        positions.len() / 3
    );
    assert!(triangles > 450_000);
    let cpu = MeshScene::new(&positions, &indices, Device::Cpu).unwrap();
    let gpu = MeshScene::new(&positions, &indices, device).unwrap();
    let views = recon::render::turntable(3, 2.0, 40f64.to_radians()).unwrap();
    for (k, view) in views.iter().enumerate() {
        let started = Instant::now();
        let a = cpu.rasterize(view, 1024, 1024, 1.0, 100.0).unwrap();
        let cpu_s = started.elapsed().as_secs_f64();
        let b = gpu.rasterize(view, 1024, 1024, 1.0, 100.0).unwrap();
        let c = compare(&a, &b);
        println!(
            "view {k}: ids agree {:.6}, max |Δ| bary {:.1e} depth {:.1e} derivatives {:.1e} \
             (CPU reference {cpu_s:.2} s)",
            c.id_agreement, c.bary_max, c.depth_max, c.deriv_max
        );
        assert!(c.id_agreement >= 0.9999, "id agreement {}", c.id_agreement);
        assert!(c.bary_max <= 1e-5 && c.depth_max <= 1e-5);
        assert!(c.deriv_max <= 1e-4);
        let covered =
            f64::try_from(a.triangle_id.ge(0).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        assert!(covered > 0.1, "the sphere covers {covered} of the image");
    }
    // Normals at 1024² with the reference's 4× supersampling (4096² rasterisation).
    let settings = MeshRenderSettings {
        width: 1024,
        height: 1024,
        ..Default::default()
    };
    let p = psnr(
        &cpu.render_normals(&views[1], &settings).unwrap(),
        &gpu.render_normals(&views[1], &settings).unwrap(),
    );
    println!("normals 1024² (ssaa 4) PSNR {p:.1} dB");
    assert!(p >= 50.0, "normals PSNR {p}");

    // Timing (not an assertion): rasterisation alone and the full normal render.
    let time = |what: &str, iterations: u32, f: &dyn Fn()| {
        f();
        tch::Cuda::synchronize(0);
        let started = Instant::now();
        for _ in 0..iterations {
            f();
        }
        tch::Cuda::synchronize(0);
        let ms = started.elapsed().as_secs_f64() * 1e3 / iterations as f64;
        println!("timing: {what}: {ms:.3} ms");
    };
    time("rasterize 1024² (500k triangles)", 20, &|| {
        let _ = gpu.rasterize(&views[0], 1024, 1024, 1.0, 100.0).unwrap();
    });
    time("render_normals 512² ssaa 4", 20, &|| {
        let _ = gpu
            .render_normals(&views[0], &MeshRenderSettings::default())
            .unwrap();
    });
    time("render_normals 1024² ssaa 4", 10, &|| {
        let _ = gpu.render_normals(&views[0], &settings).unwrap();
    });
    let started = Instant::now();
    cpu.rasterize(&views[0], 1024, 1024, 1.0, 100.0).unwrap();
    println!(
        "timing: CPU reference rasterize 1024²: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
}
