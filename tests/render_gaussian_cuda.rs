//! The Gaussian-splat rasteriser's CUDA path (kernels/gaussian_splat.cu) against its CPU
//! reference on the same scenes: random clouds, a view from inside a cloud, the golden scenes,
//! and a full-size-like asset of 600k Gaussians at 512² and 1024². Colour PSNR ≥ 50 dB, depth
//! and alpha within tight bounds; prints the CUDA render time at 1024² (not an assertion).
//! Prints "skipped: no CUDA" and passes without a GPU.
//!
//! With RECON_SPLAT_EXPORT_DIR=<dir>, also writes every scene (`scene.npz`, `camera.json`)
//! and both renders (`cpu.npz`, `cuda.npz`) for benches/render_reference.py, which renders the
//! same scenes with mip-splatting's diff-gaussian-rasterization and reports PSNRs.

mod common;
mod render_gaussian_common;

use std::path::PathBuf;
use std::time::Instant;

use common::cuda;
use recon::render::gaussian::{GaussianScene, SplatImage};
use render_gaussian_common::{comparison_cases, psnr, write_case, write_render};
use tch::{Device, Kind, Tensor};

fn export_dir() -> Option<PathBuf> {
    std::env::var_os("RECON_SPLAT_EXPORT_DIR").map(PathBuf::from)
}

fn to_cpu(image: &SplatImage) -> SplatImage {
    SplatImage {
        color: image.color.to_device(Device::Cpu),
        depth: image.depth.to_device(Device::Cpu),
        alpha: image.alpha.to_device(Device::Cpu),
    }
}

/// Over the pixels both renders cover: the mean |a − b| and the fraction differing by more
/// than 1e-3; and the fraction of all pixels whose coverage (alpha > 0) differs. (A splat whose
/// alpha lands within an ulp of the 1/255 cut-off may be kept by one path and skipped by the
/// other, since `exp` rounds differently; on a thinly covered pixel that moves the normalised
/// depth, so the depth check is statistical rather than a maximum.)
fn agreement(a: &Tensor, b: &Tensor, alpha_a: &Tensor, alpha_b: &Tensor) -> (f64, f64, f64) {
    let both = alpha_a.gt(0.0).logical_and(&alpha_b.gt(0.0));
    let count = f64::try_from(both.to_kind(Kind::Double).sum(Kind::Double))
        .unwrap()
        .max(1.0);
    let diff = (a - b).abs().to_kind(Kind::Double) * both.to_kind(Kind::Double);
    let mean = f64::try_from(diff.sum(Kind::Double)).unwrap() / count;
    let bad = f64::try_from(diff.gt(1e-3).to_kind(Kind::Double).sum(Kind::Double)).unwrap() / count;
    let mismatch = f64::try_from(
        alpha_a
            .gt(0.0)
            .logical_xor(&alpha_b.gt(0.0))
            .to_kind(Kind::Double)
            .mean(Kind::Double),
    )
    .unwrap();
    (mean, bad, mismatch)
}

#[test]
fn cuda_matches_cpu_on_every_scene() {
    let Some(device) = cuda() else { return };
    let export = export_dir();
    for case in comparison_cases(true) {
        let started = Instant::now();
        let cpu_scene = GaussianScene::new(&case.gaussians, Device::Cpu).unwrap();
        let cpu = cpu_scene.render(&case.view, &case.settings).unwrap();
        let cpu_time = started.elapsed().as_secs_f64();
        let gpu_scene = GaussianScene::new(&case.gaussians, device).unwrap();
        assert_eq!(gpu_scene.device(), device);
        let gpu = gpu_scene.render(&case.view, &case.settings).unwrap();
        assert_eq!(gpu.color.device(), device);
        let gpu = to_cpu(&gpu);
        let color_psnr = psnr(&gpu.color, &cpu.color);
        let alpha_psnr = psnr(&gpu.alpha, &cpu.alpha);
        let (rel, max_abs) = common::rel_l2(&gpu.color, &cpu.color);
        let (depth_mean, depth_bad, coverage_mismatch) =
            agreement(&gpu.depth, &cpu.depth, &gpu.alpha, &cpu.alpha);
        let covered =
            f64::try_from(cpu.alpha.gt(0.0).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        println!(
            "{}: {} Gaussians, {}x{}: colour PSNR {color_psnr:.1} dB (rel L2 {rel:.2e}, max {max_abs:.2e}), \
             alpha PSNR {alpha_psnr:.1} dB, depth mean diff {depth_mean:.2e} (> 1e-3: {depth_bad:.2e}), coverage mismatch \
             {coverage_mismatch:.2e} (covered {covered:.3}), CPU {cpu_time:.2} s",
            case.name,
            case.gaussians.len(),
            case.settings.width,
            case.settings.height
        );
        assert!(
            color_psnr >= 50.0,
            "{}: colour PSNR {color_psnr}",
            case.name
        );
        assert!(alpha_psnr >= 50.0, "{}: alpha PSNR {alpha_psnr}", case.name);
        assert!(
            depth_mean < 1e-4,
            "{}: depth mean diff {depth_mean}",
            case.name
        );
        assert!(
            depth_bad < 1e-4,
            "{}: depth differs at {depth_bad} of pixels",
            case.name
        );
        assert!(
            coverage_mismatch < 1e-3,
            "{}: coverage mismatch {coverage_mismatch}",
            case.name
        );
        if let Some(dir) = &export {
            let dir = dir.join(case.name);
            write_case(&dir, &case);
            write_render(&dir, "cpu", &cpu);
            write_render(&dir, "cuda", &gpu);
            println!("  wrote {}", dir.display());
        }
    }
}

#[test]
fn cuda_empty_scene_and_culled_views_render_the_background() {
    let Some(device) = cuda() else { return };
    let settings = recon::render::gaussian::SplatSettings {
        background: [0.25, 0.5, 1.0],
        ..recon::render::gaussian::SplatSettings::with_size(100, 37)
    };
    let view = recon::render::View::orbit(0.0, 0.0, 2.0, 0.7).unwrap();
    let empty = GaussianScene::new(&recon::pipeline::Gaussians::default(), device).unwrap();
    let away = recon::render::View::look_at([0.0, 2.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0], 0.7)
        .unwrap();
    let cloud = GaussianScene::new(
        &render_gaussian_common::random_scene(1000, 21, 0.01, 0.05),
        device,
    )
    .unwrap();
    for image in [
        empty.render(&view, &settings).unwrap(),
        cloud.render(&away, &settings).unwrap(),
    ] {
        let image = to_cpu(&image);
        let bg = Tensor::from_slice(&settings.background).view([1, 1, 3]);
        assert!(image.color.equal(&bg.expand([37, 100, 3], false)));
        assert_eq!(f64::try_from(image.alpha.abs().max()).unwrap(), 0.0);
        assert_eq!(f64::try_from(image.depth.abs().max()).unwrap(), 0.0);
    }
}

/// Render time of the CUDA path for the full-size-like asset at 1024² (printed, not asserted):
/// a warm-up render (kernel compilation), then the median of 10.
#[test]
fn cuda_timing_600k_at_1024() {
    let Some(device) = cuda() else { return };
    let case = comparison_cases(true)
        .into_iter()
        .find(|c| c.name == "asset_600k_1024")
        .unwrap();
    let started = Instant::now();
    let scene = GaussianScene::new(&case.gaussians, device).unwrap();
    tch::Cuda::synchronize(0);
    let upload = started.elapsed().as_secs_f64();
    let _ = scene.render(&case.view, &case.settings).unwrap();
    tch::Cuda::synchronize(0);
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let image = scene.render(&case.view, &case.settings).unwrap();
        tch::Cuda::synchronize(0);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        drop(image);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "CUDA splatting, {} Gaussians at {}x{}: median {:.2} ms (min {:.2}, max {:.2}); scene upload {:.1} ms",
        case.gaussians.len(),
        case.settings.width,
        case.settings.height,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        upload * 1e3
    );
}
