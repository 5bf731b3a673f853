//! Camera registration (src/pipelines/trellis_vggt_to_3d/camera_registration.rs) on synthetic
//! data: an asymmetric object's surface, the part of it a few cameras see, mapped into a
//! "VGGT frame" by a known similarity with noise and outliers; `register` must recover the
//! similarity, `camera_in_frame` must keep every projection, and `observed_points` must apply
//! the reference's mask.

use std::time::Instant;

use recon::error::ErrorKind;
use recon::pipeline::Camera;
use recon::pipelines::trellis_vggt_to_3d::camera_registration::{
    camera_in_frame, observed_points, register, RegistrationOptions, Similarity,
};
use tch::{Kind, Tensor};

/// SplitMix64: a tiny deterministic generator for the synthetic data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn direction(&mut self) -> [f64; 3] {
        loop {
            let d = [self.normal(), self.normal(), self.normal()];
            let n = norm(d);
            if n > 1e-9 {
                return d.map(|v| v / n);
            }
        }
    }
}

fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn unit(v: [f64; 3]) -> [f64; 3] {
    let n = norm(v);
    v.map(|x| x / n)
}

/// One part of the synthetic object: an ellipsoid or a box (centre, semi-axes).
#[derive(Clone, Copy)]
enum Part {
    Ellipsoid([f64; 3], [f64; 3]),
    Cuboid([f64; 3], [f64; 3]),
}

impl Part {
    /// Strictly inside (with a small margin so surface points of touching parts survive).
    fn contains(&self, p: [f64; 3]) -> bool {
        match *self {
            Part::Ellipsoid(c, r) => {
                (0..3).map(|i| ((p[i] - c[i]) / r[i]).powi(2)).sum::<f64>() < 0.98
            }
            Part::Cuboid(c, h) => (0..3).all(|i| (p[i] - c[i]).abs() < 0.99 * h[i]),
        }
    }

    /// A surface point and its outward normal.
    fn sample(&self, rng: &mut Rng) -> ([f64; 3], [f64; 3]) {
        match *self {
            Part::Ellipsoid(c, r) => {
                let u = rng.direction();
                let p = [0, 1, 2].map(|i| c[i] + r[i] * u[i]);
                (p, unit([0, 1, 2].map(|i| u[i] / r[i])))
            }
            Part::Cuboid(c, h) => {
                // A face chosen by area, then a uniform point on it.
                let areas = [h[1] * h[2], h[0] * h[2], h[0] * h[1]];
                let pick = rng.uniform() * (areas[0] + areas[1] + areas[2]);
                let axis = if pick < areas[0] {
                    0
                } else if pick < areas[0] + areas[1] {
                    1
                } else {
                    2
                };
                let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                let mut p = [0, 1, 2].map(|i| c[i] + h[i] * (2.0 * rng.uniform() - 1.0));
                p[axis] = c[axis] + sign * h[axis];
                let mut n = [0.0; 3];
                n[axis] = sign;
                (p, n)
            }
        }
    }

    fn area(&self) -> f64 {
        match *self {
            // Knud Thomsen's approximation; only relative sampling density matters.
            Part::Ellipsoid(_, r) => {
                let p = 1.6075;
                let (a, b, c) = (r[0].powf(p), r[1].powf(p), r[2].powf(p));
                4.0 * std::f64::consts::PI * ((a * b + a * c + b * c) / 3.0).powf(1.0 / p)
            }
            Part::Cuboid(_, h) => 8.0 * (h[0] * h[1] + h[0] * h[2] + h[1] * h[2]),
        }
    }
}

/// A deliberately asymmetric object inside [-0.5, 0.5]³ (TRELLIS's box): a body, a head, a
/// leg and a fin.
fn object() -> Vec<Part> {
    vec![
        Part::Ellipsoid([0.0, 0.0, 0.0], [0.38, 0.22, 0.16]),
        Part::Ellipsoid([0.30, 0.12, 0.14], [0.13, 0.11, 0.10]),
        Part::Cuboid([-0.22, -0.08, -0.22], [0.06, 0.05, 0.14]),
        Part::Cuboid([-0.05, 0.20, 0.12], [0.15, 0.04, 0.05]),
    ]
}

/// `count` points on the union's surface with normals (points inside another part dropped).
fn surface(count: usize, seed: u64) -> Vec<([f64; 3], [f64; 3])> {
    let parts = object();
    let total: f64 = parts.iter().map(Part::area).sum();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut pick = rng.uniform() * total;
        let mut index = 0;
        while index + 1 < parts.len() && pick > parts[index].area() {
            pick -= parts[index].area();
            index += 1;
        }
        let (p, n) = parts[index].sample(&mut rng);
        let hidden = parts
            .iter()
            .enumerate()
            .any(|(j, other)| j != index && other.contains(p));
        if !hidden {
            out.push((p, n));
        }
    }
    out
}

fn rotation(axis: [f64; 3], degrees: f64) -> [[f64; 3]; 3] {
    let [x, y, z] = unit(axis);
    let (s, c) = degrees.to_radians().sin_cos();
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]
}

fn angle_between(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> f64 {
    // trace(a·bᵀ) = 1 + 2·cos θ.
    let trace: f64 = (0..3)
        .map(|i| (0..3).map(|j| a[i][j] * b[i][j]).sum::<f64>())
        .sum();
    ((trace - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees()
}

fn cloud(points: &[[f64; 3]]) -> Tensor {
    let flat: Vec<f32> = points.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_slice(&flat).view([-1, 3])
}

/// What the cameras looking along `-view` directions see, in the VGGT frame of
/// `truth` (`x_asset = truth(x_vggt)`), with Gaussian noise (`noise` × object size) and a
/// fraction of uniform outliers.
fn observation(
    truth: &Similarity,
    views: &[[f64; 3]],
    noise: f64,
    outliers: f64,
    seed: u64,
) -> Vec<[f64; 3]> {
    let back = truth.inverse();
    let size_in_vggt = back.scale; // the object spans ~1 asset unit
    let mut rng = Rng(seed ^ 0xABCD);
    let mut seen: Vec<[f64; 3]> = surface(3000, seed)
        .into_iter()
        .filter(|(_, n)| views.iter().any(|v| dot(*n, unit(*v)) > 0.15))
        .map(|(p, _)| {
            let q = back.apply(p);
            [0, 1, 2].map(|i| q[i] + noise * size_in_vggt * rng.normal())
        })
        .collect();
    let (mut lo, mut hi) = ([f64::MAX; 3], [f64::MIN; 3]);
    for p in &seen {
        for i in 0..3 {
            lo[i] = lo[i].min(p[i]);
            hi[i] = hi[i].max(p[i]);
        }
    }
    let extra = (outliers * seen.len() as f64).round() as usize;
    for k in 0..extra {
        let p = [0, 1, 2].map(|i| {
            let centre = 0.5 * (lo[i] + hi[i]);
            centre + 1.3 * (hi[i] - lo[i]) * (rng.uniform() - 0.5)
        });
        // Spread the outliers through the cloud rather than appending them as one block.
        let at = (k * 7919) % seen.len();
        seen.insert(at, p);
    }
    seen
}

struct Case {
    scale: f64,
    axis: [f64; 3],
    degrees: f64,
    translation: [f64; 3],
    views: Vec<[f64; 3]>,
}

fn check_case(case: &Case, seed: u64) {
    let truth = Similarity {
        scale: case.scale,
        rotation: rotation(case.axis, case.degrees),
        translation: case.translation,
    };
    let asset: Vec<[f64; 3]> = surface(6000, 7).into_iter().map(|(p, _)| p).collect();
    let observed = observation(&truth, &case.views, 0.004, 0.05, seed);

    let start = Instant::now();
    let found = register(
        &cloud(&observed),
        &cloud(&asset),
        &RegistrationOptions::default(),
    )
    .expect("register");
    let elapsed = start.elapsed().as_secs_f64();

    let s = &found.similarity;
    let rotation_error = angle_between(&s.rotation, &truth.rotation);
    let scale_error = (s.scale / truth.scale - 1.0).abs();
    let object_size = 0.76; // the object's largest extent in asset units
    let translation_error = norm([0, 1, 2].map(|i| s.translation[i] - truth.translation[i]));
    println!(
        "scale {} rot {}°: {} observed points, rotation error {rotation_error:.3}°, scale error \
         {:.3}%, translation error {:.3}% of size, inliers {:.3}, rms {:.4}, {elapsed:.2} s",
        case.scale,
        case.degrees,
        observed.len(),
        100.0 * scale_error,
        100.0 * translation_error / object_size,
        found.inlier_fraction,
        found.rms,
    );
    assert!(rotation_error < 2.0, "rotation error {rotation_error}°");
    assert!(scale_error < 0.02, "relative scale error {scale_error}");
    assert!(
        translation_error < 0.02 * object_size,
        "translation error {translation_error}"
    );
    assert!(
        found.inlier_fraction > 0.85,
        "inliers {}",
        found.inlier_fraction
    );
    assert!(found.rms < 0.01, "rms {}", found.rms);
}

#[test]
fn register_recovers_a_large_rotation_and_upscale_from_a_partial_view() {
    check_case(
        &Case {
            scale: 2.6,
            axis: [0.3, -0.8, 0.5],
            degrees: 155.0,
            translation: [0.4, -0.2, 0.9],
            views: vec![[1.0, -1.0, 0.5], [1.0, 0.3, 0.6], [0.3, -1.0, 0.2]],
        },
        11,
    );
}

#[test]
fn register_recovers_a_downscale_from_two_opposite_views() {
    check_case(
        &Case {
            scale: 0.35,
            axis: [1.0, 1.0, 0.2],
            degrees: 80.0,
            translation: [-0.1, 0.3, -0.25],
            views: vec![[0.2, 1.0, 0.4], [-0.3, -1.0, 0.5]],
        },
        12,
    );
}

#[test]
fn register_recovers_a_pose_seen_from_one_side_only() {
    check_case(
        &Case {
            scale: 1.3,
            axis: [0.0, 0.1, 1.0],
            degrees: -120.0,
            translation: [0.05, 0.0, -0.1],
            views: vec![[-1.0, 0.2, 0.7]],
        },
        13,
    );
}

/// Pixel and depth of `p` through `camera` (camera-from-world, OpenCV axes).
fn project(camera: &Camera, p: [f64; 3]) -> ([f64; 2], f64) {
    let e = camera.extrinsic.map(f64::from);
    let k = camera.intrinsic.map(f64::from);
    let c = [0, 1, 2]
        .map(|i| e[4 * i] * p[0] + e[4 * i + 1] * p[1] + e[4 * i + 2] * p[2] + e[4 * i + 3]);
    let u = k[0] * c[0] / c[2] + k[1] * c[1] / c[2] + k[2];
    let v = k[4] * c[1] / c[2] + k[5];
    ([u, v], c[2])
}

#[test]
fn camera_in_frame_keeps_every_projection() {
    let truth = Similarity {
        scale: 2.6,
        rotation: rotation([0.3, -0.8, 0.5], 155.0),
        translation: [0.4, -0.2, 0.9],
    };
    let vggt: Vec<[f64; 3]> = surface(500, 3)
        .into_iter()
        .map(|(p, _)| truth.inverse().apply(p))
        .collect();
    // A camera 3 object sizes away, looking at the object's centre, slightly rolled.
    let centre = truth.inverse().apply([0.0; 3]);
    let forward = unit([0.3, -0.2, 1.0]);
    let right = unit([forward[2], 0.1, -forward[0]]);
    let down = unit([
        forward[1] * right[2] - forward[2] * right[1],
        forward[2] * right[0] - forward[0] * right[2],
        forward[0] * right[1] - forward[1] * right[0],
    ]);
    let right = [
        down[1] * forward[2] - down[2] * forward[1],
        down[2] * forward[0] - down[0] * forward[2],
        down[0] * forward[1] - down[1] * forward[0],
    ];
    let distance = 3.0 * truth.inverse().scale;
    let eye = [0, 1, 2].map(|i| centre[i] - distance * forward[i]);
    let rows = [right, down, forward];
    let mut extrinsic = [0f32; 12];
    for (i, row) in rows.iter().enumerate() {
        for j in 0..3 {
            extrinsic[4 * i + j] = row[j] as f32;
        }
        extrinsic[4 * i + 3] = -dot(*row, eye) as f32;
    }
    let camera = Camera {
        extrinsic,
        intrinsic: [612.0, 0.0, 259.0, 0.0, 612.0, 259.0, 0.0, 0.0, 1.0],
        width: 518,
        height: 518,
    };
    let moved = camera_in_frame(&camera, &truth);
    assert_eq!(moved.intrinsic, camera.intrinsic);
    assert_eq!((moved.width, moved.height), (camera.width, camera.height));

    let mut worst: f64 = 0.0;
    for &p in &vggt {
        let (pixel, depth) = project(&camera, p);
        let (pixel_asset, depth_asset) = project(&moved, truth.apply(p));
        assert!(depth > 0.0);
        worst = worst.max(
            (pixel[0] - pixel_asset[0])
                .abs()
                .max((pixel[1] - pixel_asset[1]).abs()),
        );
        assert!(
            (depth_asset / depth - truth.scale).abs() < 1e-4 * truth.scale,
            "depths are in asset units"
        );
    }
    println!("camera_in_frame: worst pixel difference {worst:.2e} px");
    assert!(worst < 1e-2, "pixels moved by {worst}");

    // The rotation part stays orthonormal.
    let e = moved.extrinsic.map(f64::from);
    for i in 0..3 {
        for j in 0..3 {
            let d: f64 = (0..3).map(|k| e[4 * i + k] * e[4 * j + k]).sum();
            assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
        }
    }
    // Identity leaves the camera alone.
    assert_eq!(camera_in_frame(&camera, &Similarity::identity()), camera);
}

#[test]
fn similarity_inverse_and_compose() {
    let a = Similarity {
        scale: 1.7,
        rotation: rotation([0.2, 0.5, -1.0], 63.0),
        translation: [0.3, -1.2, 0.05],
    };
    let b = Similarity {
        scale: 0.4,
        rotation: rotation([1.0, 0.0, 0.3], -140.0),
        translation: [-0.7, 0.2, 2.0],
    };
    let p = [0.25, -0.6, 1.1];
    let round = a.inverse().apply(a.apply(p));
    let both = a.compose(&b).apply(p);
    let chained = a.apply(b.apply(p));
    for i in 0..3 {
        assert!((round[i] - p[i]).abs() < 1e-12);
        assert!((both[i] - chained[i]).abs() < 1e-12);
    }
    assert_eq!(Similarity::identity().apply(p), p);
}

/// 2 views of 2×3 pixels. Pixel i has confidence `CONF[i]` (median 6.5, so 7..12 pass);
/// alpha fails at pixel 3 (0.8 is not > 0.8); pixel 6's point is NaN; of the survivors
/// 1, 4, 8, 10, pixel 10 is far away and falls to the 98th-percentile radius cut.
const CONF: [f32; 12] = [
    3.0, 10.0, 1.0, 8.0, 12.0, 5.0, 7.0, 2.0, 11.0, 4.0, 9.0, 6.0,
];

fn hand_made_maps() -> (Tensor, Tensor, Tensor) {
    let mut points = [[0f32; 3]; 12];
    for (i, p) in points.iter_mut().enumerate() {
        *p = [100.0 + i as f32, -3.0, 2.0];
    }
    points[1] = [0.0, 0.0, 0.0];
    points[4] = [1.0, 0.0, 0.0];
    points[8] = [0.0, 1.0, 0.0];
    points[10] = [5.0, 5.0, 5.0];
    points[6] = [f32::NAN, 0.0, 0.0];
    let mut alpha = [1f32; 12];
    alpha[3] = 0.8;
    alpha[5] = 0.0;
    let flat: Vec<f32> = points.iter().flatten().copied().collect();
    (
        Tensor::from_slice(&flat).view([2, 2, 3, 3]),
        Tensor::from_slice(&CONF).view([2, 2, 3]),
        Tensor::from_slice(&alpha).view([2, 2, 3]),
    )
}

#[test]
fn observed_points_applies_the_reference_mask() {
    let (points, conf, alpha) = hand_made_maps();
    let kept = observed_points(&points, &conf, &alpha, 100).expect("observed_points");
    assert_eq!(kept.size(), [3, 3]);
    assert_eq!(kept.kind(), Kind::Float);
    let values = Vec::<f32>::try_from(&kept.reshape([-1])).unwrap();
    assert_eq!(values, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

    // A strided subsample: rows ⌊i·3/2⌋ = 0, 1.
    let two = observed_points(&points, &conf, &alpha, 2).expect("observed_points");
    let values = Vec::<f32>::try_from(&two.reshape([-1])).unwrap();
    assert_eq!(values, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);

    // The 1e-5 floor: with most confidences zero the median is 0, and 5e-6 is not enough.
    let mut low = [0f32; 12];
    low[1] = 5e-6;
    low[4] = 1.0;
    low[8] = 2.0;
    low[10] = 3.0;
    let low = Tensor::from_slice(&low).view([2, 2, 3]);
    let kept = observed_points(&points, &low, &alpha, 100).expect("observed_points");
    // 4, 8 and 10 pass the mask; 10 is the farthest and goes at the radius cut.
    let values = Vec::<f32>::try_from(&kept.reshape([-1])).unwrap();
    assert_eq!(values, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn observed_points_drops_statistical_outliers() {
    // A dense grid of 20×20 pixels on a plane, plus one pixel off it in the middle (inside the
    // 98th-percentile radius, so only the neighbour statistics can catch it).
    let (h, w) = (20i64, 20i64);
    let mut flat = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let z = if (y, x) == (10, 10) { 0.08 } else { 0.0 };
            flat.extend_from_slice(&[x as f32 * 0.01, y as f32 * 0.01, z]);
        }
    }
    let points = Tensor::from_slice(&flat).view([1, h, w, 3]);
    // Confidences 1..400 in a scrambled order; the off-plane pixel is confident.
    let conf: Vec<f32> = (0..h * w)
        .map(|i| ((i * 37) % (h * w) + 1) as f32)
        .collect();
    let mut conf = conf;
    conf[(10 * w + 10) as usize] = 1000.0;
    let conf = Tensor::from_slice(&conf).view([1, h, w]);
    let alpha = Tensor::ones([1, h, w], (Kind::Float, tch::Device::Cpu));
    let kept = observed_points(&points, &conf, &alpha, 10_000).expect("observed_points");
    let z = Vec::<f32>::try_from(&kept.select(1, 2).contiguous()).unwrap();
    assert!(!z.is_empty());
    assert!(z.iter().all(|&v| v == 0.0), "the off-plane point survived");
}

#[test]
fn bad_inputs_are_invalid_arguments() {
    let options = RegistrationOptions::default();
    let asset = cloud(
        &surface(200, 5)
            .into_iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>(),
    );
    let invalid = |result: recon::error::Result<_>, what: &str| match result {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {e}");
            println!("{what}: {e}");
        }
        Ok(_) => panic!("{what}: accepted"),
    };
    let empty = Tensor::zeros([0, 3], (Kind::Float, tch::Device::Cpu));
    invalid(
        register(&empty, &asset, &options).map(|_| ()),
        "empty observed",
    );
    invalid(
        register(&asset, &empty, &options).map(|_| ()),
        "empty asset",
    );
    let flat = Tensor::zeros([10, 2], (Kind::Float, tch::Device::Cpu));
    invalid(
        register(&flat, &asset, &options).map(|_| ()),
        "[K, 2] points",
    );
    let same = Tensor::ones([50, 3], (Kind::Float, tch::Device::Cpu));
    invalid(
        register(&same, &asset, &options).map(|_| ()),
        "coincident points",
    );
    let line = Tensor::arange(60, (Kind::Float, tch::Device::Cpu))
        .view([20, 3])
        .select(1, 0)
        .unsqueeze(1)
        .repeat([1, 3]);
    invalid(
        register(&line, &asset, &options).map(|_| ()),
        "collinear points",
    );
    let nan = Tensor::full([50, 3], f64::NAN, (Kind::Float, tch::Device::Cpu));
    invalid(
        register(&nan, &asset, &options).map(|_| ()),
        "all-NaN points",
    );
    let ints = Tensor::ones([50, 3], (Kind::Int64, tch::Device::Cpu));
    invalid(
        register(&ints, &asset, &options).map(|_| ()),
        "integer points",
    );
    let bad_trim = RegistrationOptions {
        trim_fraction: 0.0,
        ..RegistrationOptions::default()
    };
    invalid(register(&asset, &asset, &bad_trim).map(|_| ()), "trim 0");

    let (points, conf, alpha) = hand_made_maps();
    invalid(
        observed_points(&points, &conf.view([2, 6]), &alpha, 10).map(|_| ()),
        "conf shape",
    );
    invalid(
        observed_points(&points.view([2, 6, 3]), &conf, &alpha, 10).map(|_| ()),
        "points rank",
    );
    invalid(
        observed_points(&points, &conf, &alpha.zeros_like(), 10).map(|_| ()),
        "nothing passes the mask",
    );
    invalid(
        observed_points(&points, &conf, &alpha, 0).map(|_| ()),
        "max_points 0",
    );
    let none = Tensor::zeros([0, 2, 3, 3], (Kind::Float, tch::Device::Cpu));
    let none_maps = Tensor::zeros([0, 2, 3], (Kind::Float, tch::Device::Cpu));
    invalid(
        observed_points(&none, &none_maps, &none_maps, 10).map(|_| ()),
        "no views",
    );
}
