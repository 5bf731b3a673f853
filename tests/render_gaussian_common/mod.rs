//! Scenes shared by the Gaussian-splat tests (tests/render_gaussian.rs on CPU,
//! tests/render_gaussian_cuda.rs on the GPU) and the files benches/render_reference.py reads.
//!
//! Scenes are generated from a seed with integer-only randomness and exactly rounded float
//! arithmetic (no transcendental functions), so they are bit-identical on every machine.
#![allow(dead_code)]

use std::path::Path;

use recon::pipeline::Gaussians;
use recon::render::gaussian::{SplatImage, SplatSettings};
use recon::render::View;
use tch::{Kind, Tensor};

/// xorshift64* — deterministic everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1), 24 bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Approximately standard normal (Irwin–Hall of 12 uniforms): no libm involved.
    pub fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
    }

    /// A random unit quaternion (w, x, y, z).
    pub fn quaternion(&mut self) -> [f32; 4] {
        loop {
            let q = [self.normal(), self.normal(), self.normal(), self.normal()];
            let n = q.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 1e-3 {
                return q.map(|v| v / n);
            }
        }
    }
}

/// Appends one Gaussian.
pub fn push(
    g: &mut Gaussians,
    xyz: [f32; 3],
    features_dc: [f32; 3],
    scaling: [f32; 3],
    rotation: [f32; 4],
    opacity: f32,
) {
    g.xyz.extend_from_slice(&xyz);
    g.features_dc.extend_from_slice(&features_dc);
    g.scaling.extend_from_slice(&scaling);
    g.rotation.extend_from_slice(&rotation);
    g.opacity.push(opacity);
}

/// `n` Gaussians spread through [-0.5, 0.5]³ with sizes from `lo` to `hi` (biased small),
/// random orientations and opacities, colours that sometimes clamp at 0.
pub fn random_scene(n: usize, seed: u64, lo: f32, hi: f32) -> Gaussians {
    let mut rng = Rng::new(seed);
    let mut g = Gaussians::default();
    for _ in 0..n {
        let xyz = [
            rng.range(-0.5, 0.5),
            rng.range(-0.5, 0.5),
            rng.range(-0.5, 0.5),
        ];
        let f = [rng.normal() * 1.5, rng.normal() * 1.5, rng.normal() * 1.5];
        let mut scale = || {
            let u = rng.uniform();
            lo + (hi - lo) * u * u
        };
        let s = [scale(), scale(), scale()];
        let q = rng.quaternion();
        let o = rng.range(0.02, 1.0);
        push(&mut g, xyz, f, s, q, o);
    }
    g
}

/// A TRELLIS-like asset: the voxels of a `grid`³ grid over [-0.5, 0.5]³ within 1.1 voxels of a
/// sphere of radius 0.42, `per_voxel` Gaussians jittered inside each (TRELLIS: 64³, 32), small
/// anisotropic scales proportional to the voxel, colours varying smoothly over the surface.
/// Exactly `n` Gaussians: voxels are taken with a stride spreading them over the whole shell
/// when it holds more than needed, and reused in order when it holds fewer.
pub fn surface_scene(n: usize, seed: u64, grid: usize, per_voxel: usize) -> Gaussians {
    let mut rng = Rng::new(seed);
    let voxel = 1.0f32 / grid as f32;
    let mut centres = Vec::new();
    for i in 0..grid {
        for j in 0..grid {
            for k in 0..grid {
                let c = [i, j, k].map(|v| (v as f32 + 0.5) * voxel - 0.5);
                let r = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
                if ((r - 0.42) / voxel).abs() < 1.1 {
                    centres.push(c);
                }
            }
        }
    }
    let needed = n.div_ceil(per_voxel);
    let stride = (centres.len() / needed.max(1)).max(1);
    let mut g = Gaussians::default();
    for idx in 0..n {
        let c = centres[(idx / per_voxel * stride) % centres.len()];
        let xyz = c.map(|v| v + rng.range(-0.75, 0.75) * voxel);
        let f = [
            c[0] * 4.0 + rng.normal() * 0.2,
            c[1] * 4.0 + rng.normal() * 0.2,
            c[2] * 4.0 + rng.normal() * 0.2,
        ];
        let s = [
            rng.range(0.13, 0.77) * voxel,
            rng.range(0.13, 0.77) * voxel,
            rng.range(0.06, 0.25) * voxel,
        ];
        push(&mut g, xyz, f, s, rng.quaternion(), rng.range(0.05, 1.0));
    }
    g
}

/// A named scene with its view and settings.
pub struct Case {
    pub name: &'static str,
    pub gaussians: Gaussians,
    pub view: View,
    pub settings: SplatSettings,
}

fn orbit(yaw: f64, pitch: f64) -> View {
    View::orbit(yaw, pitch, 2.0, 40f64.to_radians()).unwrap()
}

/// The scenes of the committed golden images (tests/fixtures/render/): small, with partial
/// tiles (72×40) and a white background in the second.
pub fn golden_cases() -> Vec<Case> {
    vec![
        Case {
            name: "gaussian_random_72x40",
            gaussians: random_scene(300, 1, 0.01, 0.08),
            view: orbit(0.7, 0.3),
            settings: SplatSettings::with_size(72, 40),
        },
        Case {
            name: "gaussian_surface_64x64",
            gaussians: surface_scene(2500, 2, 16, 2),
            view: orbit(2.0, -0.4),
            settings: SplatSettings {
                background: [1.0, 1.0, 1.0],
                ..SplatSettings::with_size(64, 64)
            },
        },
    ]
}

/// The CUDA-vs-CPU scenes (and those the reference bench renders): the golden scenes, random
/// clouds, a view from inside the cloud (culling, clamped Jacobians), and full-size-like
/// assets (600k Gaussians) at 512² and 1024².
pub fn comparison_cases(full_size: bool) -> Vec<Case> {
    let mut cases = golden_cases();
    cases.push(Case {
        name: "random_20k_256",
        gaussians: random_scene(20_000, 3, 0.003, 0.05),
        view: orbit(-0.4, 0.2),
        settings: SplatSettings::with_size(256, 256),
    });
    cases.push(Case {
        name: "random_100k_512_white_scaled",
        gaussians: random_scene(100_000, 4, 0.002, 0.03),
        view: orbit(1.3, 0.6),
        settings: SplatSettings {
            background: [1.0, 1.0, 1.0],
            scale_modifier: 0.8,
            ..SplatSettings::with_size(512, 512)
        },
    });
    cases.push(Case {
        name: "inside_cloud_320x200",
        gaussians: random_scene(50_000, 5, 0.003, 0.05),
        view: View::look_at([0.05, 0.1, 0.0], [1.0, 0.3, 0.2], [0.0, 0.0, 1.0], 1.2).unwrap(),
        settings: SplatSettings::with_size(320, 200),
    });
    if full_size {
        let asset = surface_scene(600_000, 6, 64, 32);
        cases.push(Case {
            name: "asset_600k_512",
            gaussians: asset.clone(),
            view: orbit(0.3, 0.25),
            settings: SplatSettings::with_size(512, 512),
        });
        cases.push(Case {
            name: "asset_600k_1024",
            gaussians: asset,
            view: orbit(0.3, 0.25),
            settings: SplatSettings::with_size(1024, 1024),
        });
    }
    cases
}

/// `[H, W, 5]`: colour, depth, alpha (the golden-image layout).
pub fn stack(image: &SplatImage) -> Tensor {
    Tensor::cat(
        &[
            image.color.to_device(tch::Device::Cpu),
            image.depth.to_device(tch::Device::Cpu).unsqueeze(-1),
            image.alpha.to_device(tch::Device::Cpu).unsqueeze(-1),
        ],
        -1,
    )
}

/// PSNR (peak 1) of `ours` against `reference`, in dB (∞ when equal).
pub fn psnr(ours: &Tensor, reference: &Tensor) -> f64 {
    let mse = f64::try_from(
        (ours.to_kind(Kind::Double) - reference.to_kind(Kind::Double))
            .square()
            .mean(Kind::Double),
    )
    .unwrap();
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

fn f32_tensor(values: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values).view(shape)
}

/// Writes a case for benches/render_reference.py: `scene.npz` (the activated attributes),
/// `camera.json` (view and settings).
pub fn write_case(dir: &Path, case: &Case) {
    std::fs::create_dir_all(dir).unwrap();
    let g = &case.gaussians;
    let n = g.len() as i64;
    Tensor::write_npz(
        &[
            ("xyz", f32_tensor(&g.xyz, &[n, 3])),
            ("features_dc", f32_tensor(&g.features_dc, &[n, 3])),
            ("scaling", f32_tensor(&g.scaling, &[n, 3])),
            ("rotation", f32_tensor(&g.rotation, &[n, 4])),
            ("opacity", f32_tensor(&g.opacity, &[n])),
        ],
        dir.join("scene.npz"),
    )
    .unwrap();
    let v = &case.view;
    let s = &case.settings;
    let camera = serde_json::json!({
        "rotation": v.rotation,
        "translation": v.translation,
        "fx": v.fx, "fy": v.fy, "cx": v.cx, "cy": v.cy,
        "width": s.width, "height": s.height,
        "near": s.near, "far": s.far,
        "kernel_size": s.kernel_size,
        "scale_modifier": s.scale_modifier,
        "background": s.background,
    });
    std::fs::write(
        dir.join("camera.json"),
        serde_json::to_string_pretty(&camera).unwrap(),
    )
    .unwrap();
}

/// Writes one render as `<tag>.npz` (color [H,W,3], depth [H,W], alpha [H,W]).
pub fn write_render(dir: &Path, tag: &str, image: &SplatImage) {
    let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu).contiguous();
    Tensor::write_npz(
        &[
            ("color", cpu(&image.color)),
            ("depth", cpu(&image.depth)),
            ("alpha", cpu(&image.alpha)),
        ],
        dir.join(format!("{tag}.npz")),
    )
    .unwrap();
}
