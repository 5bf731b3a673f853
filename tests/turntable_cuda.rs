//! Turntables on CUDA against the CPU reference renderers: the same frames (PSNR ≥ 50 dB on
//! the RGBA8 bytes) for every content, and an MP4 written from CUDA frames. Prints "skipped:
//! no CUDA" without a GPU (run on the GPU machine, see tools/gpu-bundle.sh).

use recon::pipeline::{Gaussians, Mesh, Output};
use recon::render::turntable::{render_turntable, Frame, TurntableContent, TurntableOptions};
use tch::Device;

/// A ball of 2000 Gaussians (red above, blue below) and an octahedron with vertex colours.
fn scene() -> Output {
    let mut g = Gaussians::default();
    let n = 2000;
    for i in 0..n {
        let z = 1.0 - 2.0 * (i as f32 + 0.5) / n as f32;
        let r = (1.0 - z * z).sqrt();
        let phi = i as f32 * 2.399_963;
        g.xyz
            .extend_from_slice(&[0.3 * r * phi.cos(), 0.3 * r * phi.sin(), 0.3 * z]);
        let color: [f32; 3] = if z > 0.0 {
            [0.9, 0.2, 0.1]
        } else {
            [0.1, 0.2, 0.9]
        };
        g.features_dc.extend(color.map(|c| (c - 0.5) / 0.282_094_8));
        g.scaling.extend_from_slice(&[0.02, 0.03, 0.01]);
        let q = [1.0, 0.1 * (i % 7) as f32, 0.05, 0.0];
        let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
        g.rotation.extend(q.map(|v| v / norm));
        g.opacity.push(0.3 + 0.6 * ((i % 10) as f32 / 10.0));
    }
    let s = 0.35;
    Output {
        gaussians: Some(g),
        mesh: Some(Mesh {
            positions: vec![
                s, 0.0, 0.0, -s, 0.0, 0.0, 0.0, s, 0.0, 0.0, -s, 0.0, 0.0, 0.0, s, 0.0, 0.0, -s,
            ],
            colors: vec![
                1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0,
                0.0, 1.0,
            ],
            indices: vec![
                0, 2, 4, 2, 1, 4, 1, 3, 4, 3, 0, 4, 2, 0, 5, 1, 2, 5, 3, 1, 5, 0, 3, 5,
            ],
        }),
        cameras: Vec::new(),
    }
}

fn psnr(a: &Frame, b: &Frame) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let mse = a
        .rgba
        .iter()
        .zip(&b.rgba)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.rgba.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64.powi(2) / mse).log10()
    }
}

#[test]
fn cuda_turntables_match_the_cpu_reference() {
    if !tch::Cuda::is_available() {
        println!("skipped: no CUDA");
        return;
    }
    let output = scene();
    for content in [
        TurntableContent::Gaussians,
        TurntableContent::MeshNormals,
        TurntableContent::MeshColors,
    ] {
        let options = TurntableOptions {
            frames: 6,
            resolution: 256,
            content,
            ..TurntableOptions::default()
        };
        let cpu = render_turntable(&output, &options, Device::Cpu).unwrap();
        let started = std::time::Instant::now();
        let cuda = render_turntable(&output, &options, Device::Cuda(0)).unwrap();
        let elapsed = started.elapsed();
        let worst = cpu
            .iter()
            .zip(&cuda)
            .map(|(a, b)| psnr(a, b))
            .fold(f64::INFINITY, f64::min);
        println!(
            "{}: 6 frames of 256x256 on CUDA in {elapsed:.1?}; lowest PSNR against the CPU \
             {worst:.1} dB",
            content.name()
        );
        assert!(worst >= 50.0, "{content:?}: {worst:.1} dB");
    }
}

#[test]
fn cuda_turntable_of_default_size_renders_and_encodes() {
    if !tch::Cuda::is_available() {
        println!("skipped: no CUDA");
        return;
    }
    let output = scene();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spin.mp4");
    let started = std::time::Instant::now();
    let summary = recon::render::turntable::write_turntable(
        &output,
        &TurntableOptions::default(),
        Device::Cuda(0),
        &path,
        &recon::render::video::VideoOptions::default(),
        |_, _| Ok(()),
    )
    .unwrap();
    println!(
        "default turntable (120 frames of 512x512, Gaussians) on CUDA to {}: {:.1?}, {} bytes",
        summary.format.name(),
        started.elapsed(),
        summary.bytes
    );
    assert_eq!(summary.frames, 120);
}
