//! The Gaussian-splat rasteriser's CPU reference path (src/render/gaussian.rs): analytic checks
//! of the reference's conventions (mip-splatting 2D filter and opacity compensation, SH degree
//! 0 colour, depth order, background, culling, alpha/depth outputs), input validation, and
//! golden images of fixed scenes.
//!
//! The golden images in tests/fixtures/render/gaussian_*.npy are regression data produced by
//! this CPU path (`RECON_UPDATE_RENDER_GOLDEN=1 cargo test --test render_gaussian` rewrites
//! them), not by the reference rasteriser; benches/render_reference.py measures both paths
//! against mip-splatting's diff-gaussian-rasterization on the GPU machine.

mod common;
mod render_gaussian_common;

use std::path::PathBuf;

use recon::error::ErrorKind;
use recon::pipeline::Gaussians;
use recon::render::gaussian::{GaussianScene, SplatImage, SplatSettings};
use recon::render::View;
use render_gaussian_common::{golden_cases, push, stack};
use tch::{Device, Tensor};

const SH_C0: f64 = 0.282_094_791_773_878_14;
const IDENTITY: [f32; 4] = [1.0, 0.0, 0.0, 0.0];

/// A camera at the origin looking down +z (OpenCV axes = world axes), focal `f` (normalised).
fn axis_view(f: f32) -> View {
    View {
        rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        translation: [0.0; 3],
        fx: f,
        fy: f,
        cx: 0.5,
        cy: 0.5,
    }
}

fn render(g: &Gaussians, view: &View, settings: &SplatSettings) -> SplatImage {
    GaussianScene::new(g, Device::Cpu)
        .unwrap()
        .render(view, settings)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

/// One isotropic Gaussian of std `sigma` straight ahead at depth `z`: its 2D covariance is
/// `(f·σ/z)²` px² plus the filter's kernel size; opacity scaled by sqrt(det ratio).
fn expected_alpha(opacity: f64, var: f64, kernel: f64, dx: f64, dy: f64) -> f64 {
    let var_f = var + kernel;
    let coef = (var * var / (var_f * var_f + 1e-6) + 1e-6).sqrt();
    let alpha = (opacity * coef * (-0.5 * (dx * dx + dy * dy) / var_f).exp()).min(0.99);
    if alpha < 1.0 / 255.0 {
        0.0
    } else {
        alpha
    }
}

#[test]
fn one_isotropic_gaussian_renders_the_filtered_profile() {
    let (w, h, f, z, sigma, opacity) = (64u32, 64u32, 1.0f32, 2.0f32, 0.05f32, 0.5f32);
    let dc = [1.0f32, -0.5, 0.25];
    let mut g = Gaussians::default();
    push(&mut g, [0.0, 0.0, z], dc, [sigma; 3], IDENTITY, opacity);
    let bg = [0.2f32, 0.3, 0.4];
    for kernel in [0.1f32, 0.0, 0.5] {
        let settings = SplatSettings {
            kernel_size: kernel,
            background: bg,
            ..SplatSettings::with_size(w, h)
        };
        let image = render(&g, &axis_view(f), &settings);
        assert_eq!(image.color.size(), [h as i64, w as i64, 3]);
        assert_eq!(image.depth.size(), [h as i64, w as i64]);
        let (color, depth, alpha) = (
            values(&image.color),
            values(&image.depth),
            values(&image.alpha),
        );
        // Centre at OpenCV pixel 32 → pixel-index coordinate 31.5; variance (f·W·σ/z)².
        let var = ((f * w as f32 * sigma / z) as f64).powi(2);
        let rgb = dc.map(|c| (SH_C0 * c as f64 + 0.5).max(0.0));
        let mut worst = 0.0f64;
        for y in 0..h as usize {
            for x in 0..w as usize {
                let a = expected_alpha(
                    opacity as f64,
                    var,
                    kernel as f64,
                    31.5 - x as f64,
                    31.5 - y as f64,
                );
                let i = y * w as usize + x;
                worst = worst.max((alpha[i] as f64 - a).abs());
                let d = if a > 0.0 { z as f64 } else { 0.0 };
                worst = worst.max((depth[i] as f64 - d).abs());
                for k in 0..3 {
                    let c = rgb[k] * a + (1.0 - a) * bg[k] as f64;
                    worst = worst.max((color[3 * i + k] as f64 - c).abs());
                }
            }
        }
        let peak = alpha.iter().cloned().fold(0.0f32, f32::max) as f64;
        let expected_peak = expected_alpha(opacity as f64, var, kernel as f64, 0.5, 0.5);
        println!(
            "kernel {kernel}: peak alpha {peak:.6} (expected {expected_peak:.6}), max error {worst:.2e}"
        );
        assert!(worst < 2e-6, "kernel {kernel}: max error {worst}");
        // The four centre pixels hold the peak.
        assert_eq!(alpha[31 * 64 + 31], alpha[32 * 64 + 32]);
        assert!((peak - expected_peak).abs() < 1e-6);
    }
}

#[test]
fn the_filter_dims_small_gaussians_instead_of_brightening_them() {
    // A sub-pixel Gaussian centred on pixel 16 of 33: the filter spreads it and lowers its peak
    // opacity accordingly, so its total coverage stays close to the unfiltered one.
    let mut g = Gaussians::default();
    push(&mut g, [0.0, 0.0, 2.0], [0.0; 3], [0.01; 3], IDENTITY, 0.9);
    let sum = |kernel: f32| -> (f64, f32) {
        let s = SplatSettings {
            kernel_size: kernel,
            ..SplatSettings::with_size(33, 33)
        };
        let a = values(&render(&g, &axis_view(1.0), &s).alpha);
        (
            a.iter().map(|&v| v as f64).sum(),
            a.iter().cloned().fold(0.0, f32::max),
        )
    };
    let (_, peak_sharp) = sum(0.0);
    let (total_blur, peak_blur) = sum(0.3);
    println!("peak without filter {peak_sharp}, with 0.3 px²: {peak_blur}, coverage {total_blur}");
    assert!(peak_blur < 0.5 * peak_sharp, "{peak_blur} vs {peak_sharp}");
    // Coverage ≈ 2π·var_f·o·coef = 2π·sqrt(det)·o: var 0.0256 px² → 2π·0.0256·0.9 ≈ 0.145
    // (less the pixels below 1/255).
    assert!((total_blur - 0.145).abs() < 0.03, "{total_blur}");
}

#[test]
fn colour_is_sh_degree_zero_clamped_below_only() {
    let mut g = Gaussians::default();
    push(
        &mut g,
        [0.0, 0.0, 2.0],
        [10.0, -10.0, 0.0],
        [0.3; 3],
        IDENTITY,
        1.0,
    );
    let image = render(&g, &axis_view(1.0), &SplatSettings::with_size(16, 16));
    let c = values(&image.color);
    let a = values(&image.alpha);
    let centre = 8 * 16 + 8;
    let alpha = a[centre] as f64;
    assert!(alpha > 0.9, "{alpha}");
    let red = (SH_C0 * 10.0 + 0.5) * alpha;
    assert!(
        (c[3 * centre] as f64 - red).abs() < 1e-5,
        "{}",
        c[3 * centre]
    );
    assert!(c[3 * centre] > 1.0, "not clamped above");
    assert_eq!(c[3 * centre + 1], 0.0, "clamped at zero");
    assert!((c[3 * centre + 2] as f64 - 0.5 * alpha).abs() < 1e-5);
}

#[test]
fn nearer_gaussians_occlude_whatever_their_index() {
    let front = |g: &mut Gaussians| {
        push(
            g,
            [0.0, 0.0, 2.0],
            [1.7, -1.7, -1.7],
            [0.2; 3],
            IDENTITY,
            1.0,
        )
    };
    let back = |g: &mut Gaussians| {
        push(
            g,
            [0.0, 0.0, 3.0],
            [-1.7, 1.7, -1.7],
            [0.3; 3],
            IDENTITY,
            1.0,
        )
    };
    let (mut a, mut b) = (Gaussians::default(), Gaussians::default());
    front(&mut a);
    back(&mut a);
    back(&mut b);
    front(&mut b);
    let s = SplatSettings::with_size(32, 32);
    let ia = render(&a, &axis_view(1.0), &s);
    let ib = render(&b, &axis_view(1.0), &s);
    assert!(ia.color.equal(&ib.color) && ia.depth.equal(&ib.depth) && ia.alpha.equal(&ib.alpha));
    let c = values(&ia.color);
    let d = values(&ia.depth);
    let centre = 16 * 32 + 16;
    // Red in front with α ≈ 0.97: green only shows through the 3 % left.
    assert!(
        c[3 * centre] > 0.9 && c[3 * centre + 1] < 0.1,
        "{:?}",
        &c[3 * centre..3 * centre + 3]
    );
    // Depth: weight-normalised, dominated by the front Gaussian (≈ 2·0.97 + 3·0.03).
    assert!(d[centre] > 2.0 && d[centre] < 2.05, "{}", d[centre]);
}

#[test]
fn compositing_stops_before_transmittance_falls_below_1e_4() {
    let mut g = Gaussians::default();
    for k in 0..10 {
        push(
            &mut g,
            [0.0, 0.0, 2.0 + 0.1 * k as f32],
            [0.0; 3],
            [0.3; 3],
            IDENTITY,
            1.0,
        );
    }
    let a = values(&render(&g, &axis_view(1.0), &SplatSettings::with_size(16, 16)).alpha);
    let max = a.iter().cloned().fold(0.0, f32::max);
    // Each layer has α ≈ 0.97 at the centre: after two T ≈ 1e-3, a third would take it below
    // 1e-4, so compositing stops there and alpha stays near 0.999, never 1.
    assert!((0.99..1.0 - 1e-6).contains(&max), "{max}");
}

#[test]
fn empty_scenes_and_views_facing_away_render_the_background() {
    let bg = [0.1f32, 0.5, 0.9];
    let s = SplatSettings {
        background: bg,
        ..SplatSettings::with_size(40, 24)
    };
    let check = |image: &SplatImage| {
        let c = values(&image.color);
        assert!(c.chunks(3).all(|p| p == bg));
        assert!(values(&image.alpha).iter().all(|&v| v == 0.0));
        assert!(values(&image.depth).iter().all(|&v| v == 0.0));
    };
    check(&render(&Gaussians::default(), &axis_view(1.0), &s));
    let cloud = render_gaussian_common::random_scene(500, 9, 0.01, 0.05);
    // Looking along −y from y = +2: the whole cloud is behind the camera.
    let away = View::look_at([0.0, 2.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0], 0.7).unwrap();
    check(&render(&cloud, &away, &s));
    // And a Gaussian entirely off to the side is culled (no tile).
    let mut side = Gaussians::default();
    push(
        &mut side,
        [10.0, 0.0, 2.0],
        [0.0; 3],
        [0.01; 3],
        IDENTITY,
        1.0,
    );
    check(&render(&side, &axis_view(1.0), &s));
}

#[test]
fn culling_is_at_depth_0_2_and_nothing_clips_at_near_far() {
    let s = SplatSettings::with_size(32, 32);
    let one = |z: f32| {
        // σ proportional to depth: the same 0.32 px footprint at every depth.
        let mut g = Gaussians::default();
        push(
            &mut g,
            [0.0, 0.0, z],
            [0.0; 3],
            [0.01 * z; 3],
            IDENTITY,
            1.0,
        );
        let a = values(&render(&g, &axis_view(1.0), &s).alpha);
        a.iter().cloned().fold(0.0, f32::max)
    };
    assert_eq!(one(0.19), 0.0);
    assert_eq!(one(0.2), 0.0);
    assert!(one(0.21) > 0.0);
    // The reference's near 0.8 / far 1.6 do not clip: depth 0.5 and 5.0 both render.
    assert!(one(0.5) > 0.0 && one(5.0) > 0.0);
}

#[test]
fn principal_point_and_pixel_centres_follow_opencv() {
    // cx = 0.25 of 64 px → OpenCV u = 16 → pixel-index 15.5: pixels 15 and 16 are the peak.
    let mut view = axis_view(1.0);
    view.cx = 0.25;
    view.cy = 0.75;
    let mut g = Gaussians::default();
    push(&mut g, [0.0, 0.0, 2.0], [0.0; 3], [0.02; 3], IDENTITY, 0.8);
    let a = values(&render(&g, &view, &SplatSettings::with_size(64, 32)).alpha);
    let best = (0..a.len())
        .max_by(|&i, &j| a[i].partial_cmp(&a[j]).unwrap())
        .unwrap();
    let (x, y) = (best % 64, best / 64);
    assert!(
        (x == 15 || x == 16) && (y == 23 || y == 24),
        "peak at {x}, {y}"
    );
    assert_eq!(a[23 * 64 + 15], a[24 * 64 + 16]);
}

#[test]
fn scale_modifier_multiplies_the_scales() {
    let g = render_gaussian_common::random_scene(200, 11, 0.01, 0.05);
    let mut doubled = g.clone();
    doubled.scaling.iter_mut().for_each(|s| *s *= 2.0);
    let view = View::orbit(0.3, 0.2, 2.0, 0.7).unwrap();
    let s = SplatSettings::with_size(48, 48);
    let a = render(
        &g,
        &view,
        &SplatSettings {
            scale_modifier: 2.0,
            ..s
        },
    );
    let b = render(&doubled, &view, &s);
    assert!(a.color.equal(&b.color) && a.alpha.equal(&b.alpha) && a.depth.equal(&b.depth));
}

#[test]
fn renders_are_deterministic() {
    let case = &golden_cases()[1];
    let scene = GaussianScene::new(&case.gaussians, Device::Cpu).unwrap();
    let a = stack(&scene.render(&case.view, &case.settings).unwrap());
    let b = stack(&scene.render(&case.view, &case.settings).unwrap());
    assert!(a.equal(&b));
    assert_eq!(scene.len(), 2500);
    assert_eq!(scene.device(), Device::Cpu);
}

#[test]
fn bad_inputs_are_invalid_arguments() {
    let good = render_gaussian_common::random_scene(10, 12, 0.01, 0.05);
    let invalid = |g: &Gaussians| {
        let err = GaussianScene::new(g, Device::Cpu).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    };
    let mut g = good.clone();
    g.xyz.pop();
    invalid(&g);
    let mut g = good.clone();
    g.rotation.push(1.0);
    invalid(&g);
    let mut g = good.clone();
    g.xyz[4] = f32::NAN;
    invalid(&g);
    let mut g = good.clone();
    g.scaling[0] = f32::INFINITY;
    invalid(&g);
    let mut g = good.clone();
    g.opacity[3] = 1.5;
    invalid(&g);
    let mut g = good.clone();
    g.features_dc[2] = f32::NAN;
    invalid(&g);

    let scene = GaussianScene::new(&good, Device::Cpu).unwrap();
    let view = View::orbit(0.0, 0.0, 2.0, 0.7).unwrap();
    let bad_render = |v: &View, s: &SplatSettings| {
        let err = scene.render(v, s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    };
    let base = SplatSettings::with_size(16, 16);
    for s in [
        SplatSettings::with_size(0, 16),
        SplatSettings::with_size(16, 0),
        SplatSettings::with_size(16385, 16),
        SplatSettings { near: 0.0, ..base },
        SplatSettings {
            far: 0.5,
            near: 0.8,
            ..base
        },
        SplatSettings {
            kernel_size: -0.1,
            ..base
        },
        SplatSettings {
            kernel_size: f32::NAN,
            ..base
        },
        SplatSettings {
            scale_modifier: 0.0,
            ..base
        },
        SplatSettings {
            background: [0.0, f32::NAN, 0.0],
            ..base
        },
    ] {
        bad_render(&view, &s);
    }
    let mut v = view;
    v.translation[1] = f32::NAN;
    bad_render(&v, &base);
    let mut v = view;
    v.fx = 0.0;
    bad_render(&v, &base);
    // Non-CPU/CUDA devices are refused up front.
    let err = GaussianScene::new(&good, Device::Mps).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/render")
        .join(format!("{name}.npy"))
}

/// Compares the fixed scenes with their committed images (`[H, W, 5]`: colour, depth, alpha);
/// with RECON_UPDATE_RENDER_GOLDEN=1, (re)writes them instead (the generator).
#[test]
fn golden_images_of_fixed_scenes() {
    let update = std::env::var("RECON_UPDATE_RENDER_GOLDEN").is_ok_and(|v| v == "1");
    for case in golden_cases() {
        let image = stack(&render(&case.gaussians, &case.view, &case.settings));
        let path = golden_path(case.name);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image.write_npy(&path).unwrap();
            println!("wrote {}", path.display());
            continue;
        }
        let golden = Tensor::read_npy(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (RECON_UPDATE_RENDER_GOLDEN=1 writes it)",
                path.display()
            )
        });
        let (rel, max_abs) = common::rel_l2(&image, &golden);
        let psnr = render_gaussian_common::psnr(&image.narrow(2, 0, 3), &golden.narrow(2, 0, 3));
        println!(
            "{}: rel L2 {rel:.3e}, max abs {max_abs:.3e}, colour PSNR {psnr:.1} dB",
            case.name
        );
        assert!(
            rel <= common::REL_L2_TOLERANCE,
            "{}: rel L2 {rel}",
            case.name
        );
        // The scene is not trivial: a good share of the image is covered.
        let coverage = f64::try_from(
            golden
                .narrow(2, 4, 1)
                .gt(0.5)
                .to_kind(tch::Kind::Float)
                .mean(tch::Kind::Float),
        )
        .unwrap();
        assert!(coverage > 0.05, "{}: coverage {coverage}", case.name);
    }
}
