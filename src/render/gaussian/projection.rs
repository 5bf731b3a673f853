//! Per-Gaussian preprocessing shared by the CPU path and (mirrored operation by operation) by
//! `kernels/gaussian_splat.cu`: the camera parameters both consume ([`SplatCamera`]), the
//! packed scene layout, and the projection of one Gaussian to a screen-space splat
//! ([`preprocess`]).
//!
//! The conventions are those of mip-splatting's `diff-gaussian-rasterization` as TRELLIS's
//! `GaussianRenderer` drives it (research/trellis.md §4.5):
//!
//! - Gaussians whose centre has view depth `z ≤ 0.2` are culled (the rasteriser never clips at
//!   the renderer's near/far planes: those only enter a projection-matrix row it does not use).
//! - The 3D covariance is `R·S²·Rᵀ` with `S = scale_modifier · scale` and `R` the rotation of the
//!   quaternion (w, x, y, z) taken as given (the reference does not normalise it).
//! - EWA projection: the Jacobian of the perspective map at the centre, with `x/z` and `y/z`
//!   clamped to ±1.3·tan(half fov) so that Gaussians far outside the view do not blow up.
//! - The mip-splatting 2D filter: `kernel_size` (pixels²) is added to the diagonal of the 2D
//!   covariance and the opacity is multiplied by `sqrt(det_before / det_after)` (computed in
//!   f64 like the reference's double-precision literals do), so a small Gaussian dims instead
//!   of growing brighter when blurred.
//! - The screen extent is the ceiling of 3σ along the major axis, turned into a rectangle of
//!   16×16-pixel tiles; a Gaussian that touches no tile is culled.
//! - Pixel `(i, j)` samples the continuous image at `(i, j)`: a point at OpenCV pixel
//!   coordinate `u` (pixel centres at `k + 0.5`) lands at `u − 0.5`, as the reference's
//!   `ndc2Pix` does.
//!
//! Every floating-point operation here is a plain IEEE f32 (or f64) operation in a fixed
//! order, and the CUDA kernels use the `__f*_rn` intrinsics (never contracted into an FMA) in
//! the same order, so both paths produce the same splats bit for bit and therefore the same
//! depth order and tile lists; only `exp` in the blending differs by an ulp or so.

/// Tile side in pixels (the reference's BLOCK_X = BLOCK_Y = 16).
pub(crate) const TILE: u32 = 16;

/// The reference culls Gaussians at or before this view depth (`in_frustum`).
pub(crate) const NEAR_CULL: f32 = 0.2;

/// The degree-0 spherical-harmonics constant, `1 / (2·sqrt(π))`.
pub(crate) const SH_C0: f32 = 0.282_094_8;

/// Floats per Gaussian in the packed scene: `[x, y, z, opacity, sx, sy, sz, 0, qw, qx, qy, qz,
/// r, g, b, 0]` (four 16-byte groups the CUDA kernels read as float4s).
pub(crate) const PACKED: usize = 16;

/// The reference's radius bound of 3σ and its floor on the eigenvalue discriminant.
const SIGMAS: f32 = 3.0;
const DISCRIMINANT_FLOOR: f32 = 0.1;

/// The largest radius kept (pixels). Far beyond any image (≤ 16384 pixels a side); it keeps
/// the float → int tile arithmetic exact.
const MAX_RADIUS: f32 = 16_777_216.0;

/// Camera and image parameters of one render, in the layout of `struct SplatCamera` in
/// `kernels/gaussian_splat.cu` (passed by value to its kernels; keep the two in sync).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SplatCamera {
    /// World→camera rotation, row-major (OpenCV camera: x right, y down, z forward).
    pub rotation: [f32; 9],
    pub translation: [f32; 3],
    /// Focal lengths in pixels.
    pub focal_x: f32,
    pub focal_y: f32,
    /// Principal point in pixel-index coordinates (OpenCV pixels − 0.5).
    pub principal_x: f32,
    pub principal_y: f32,
    /// 1.3 · tan(half fov): the Jacobian's clamp on `x/z`, `y/z`.
    pub clamp_x: f32,
    pub clamp_y: f32,
    /// Added to the 2D covariance's diagonal (pixels²).
    pub kernel_size: f32,
    pub scale_modifier: f32,
    pub background: [f32; 3],
    pub width: i32,
    pub height: i32,
    pub tiles_x: i32,
    pub tiles_y: i32,
}

impl SplatCamera {
    /// The parameters for `view` at `width × height` (validated by the caller).
    pub(crate) fn new(
        view: &crate::render::View,
        width: u32,
        height: u32,
        kernel_size: f32,
        scale_modifier: f32,
        background: [f32; 3],
    ) -> Self {
        let px = view.pixel_intrinsics(width, height);
        let (tan_x, tan_y) = view.tan_half_fov();
        let r = &view.rotation;
        Self {
            rotation: [
                r[0][0], r[0][1], r[0][2], r[1][0], r[1][1], r[1][2], r[2][0], r[2][1], r[2][2],
            ],
            translation: view.translation,
            focal_x: px.fx,
            focal_y: px.fy,
            principal_x: px.cx - 0.5,
            principal_y: px.cy - 0.5,
            clamp_x: 1.3 * tan_x,
            clamp_y: 1.3 * tan_y,
            kernel_size,
            scale_modifier,
            background,
            width: width as i32,
            height: height as i32,
            tiles_x: width.div_ceil(TILE) as i32,
            tiles_y: height.div_ceil(TILE) as i32,
        }
    }

    pub(crate) fn tile_count(&self) -> usize {
        self.tiles_x as usize * self.tiles_y as usize
    }
}

/// One Gaussian projected to the screen.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Splat {
    /// Centre in pixel-index coordinates.
    pub xy: [f32; 2],
    /// View-space depth of the centre (the sort key).
    pub depth: f32,
    /// Opacity times the 2D filter's compensation coefficient.
    pub opacity: f32,
    /// The inverse 2D covariance (a, b, c) of `[[a, b], [b, c]]`.
    pub conic: [f32; 3],
    /// Touched tiles `[x0, y0, x1, y1)`.
    pub rect: [u32; 4],
}

impl Splat {
    pub(crate) fn tile_count(&self) -> usize {
        (self.rect[2] - self.rect[0]) as usize * (self.rect[3] - self.rect[1]) as usize
    }
}

fn dot3(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Finite (neither NaN nor ±∞); the kernels test `fabsf(v) <= FLT_MAX` the same way.
fn finite(v: f32) -> bool {
    v.abs() <= f32::MAX
}

/// The world-space covariance `M·Mᵀ` with `M = R·diag(s)`, as its rows.
fn covariance_3d(scale: [f32; 3], q: [f32; 4]) -> [[f32; 3]; 3] {
    let [w, x, y, z] = q;
    let rot = [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ];
    let m = rot.map(|row| [row[0] * scale[0], row[1] * scale[1], row[2] * scale[2]]);
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| dot3(m[i], m[j])))
}

fn mat_vec(m: &[[f32; 3]; 3], v: [f32; 3]) -> [f32; 3] {
    [dot3(m[0], v), dot3(m[1], v), dot3(m[2], v)]
}

/// The mip-splatting opacity compensation `sqrt(det / det_filtered)` with the reference's
/// guards: both determinants floored at 1e-6 in f64, and 0 for a degenerate footprint.
fn filter_coefficient(a: f32, b: f32, c: f32, kernel_size: f32) -> f32 {
    let before = (a * c - b * b) as f64;
    let after = ((a + kernel_size) * (c + kernel_size) - b * b) as f64;
    if before <= 1e-6 || after <= 1e-6 {
        return 0.0;
    }
    (before / (after + 1e-6) + 1e-6).sqrt() as f32
}

/// The tile rectangle `[x0, y0, x1, y1)` of a splat at `xy` with `radius`: as the reference's
/// `getRect`, with float → int truncation that saturates (Rust `as`, PTX `cvt.rzi`).
pub(crate) fn tile_rect(xy: [f32; 2], radius: f32, tiles_x: i32, tiles_y: i32) -> [u32; 4] {
    let tile = TILE as f32;
    let lo = |p: f32, tiles: i32| (((p - radius) / tile) as i32).max(0).min(tiles) as u32;
    let hi = |p: f32, tiles: i32| {
        ((((p + radius) + (tile - 1.0)) / tile) as i32)
            .max(0)
            .min(tiles) as u32
    };
    [
        lo(xy[0], tiles_x),
        lo(xy[1], tiles_y),
        hi(xy[0], tiles_x),
        hi(xy[1], tiles_y),
    ]
}

/// Projects Gaussian `g` (its [`PACKED`] floats) for `cam`; `None` when it is culled (behind
/// the near cull, degenerate, or touching no tile).
pub(crate) fn preprocess(cam: &SplatCamera, g: &[f32]) -> Option<Splat> {
    let p = [g[0], g[1], g[2]];
    let r = &cam.rotation;
    let row = |i: usize| [r[3 * i], r[3 * i + 1], r[3 * i + 2]];
    let z = dot3(row(2), p) + cam.translation[2];
    // (A NaN depth fails the comparison and is culled too, as in the kernel.)
    if z.is_nan() || z <= NEAR_CULL {
        return None;
    }
    let x = dot3(row(0), p) + cam.translation[0];
    let y = dot3(row(1), p) + cam.translation[1];
    let (xz, yz) = (x / z, y / z);

    // EWA: J·W·Σ·Wᵀ·Jᵀ with the Jacobian J of (x, y, z) → (fx·x/z, fy·y/z) at the clamped
    // centre, W the world→camera rotation.
    let jx = xz.max(-cam.clamp_x).min(cam.clamp_x) * z;
    let jy = yz.max(-cam.clamp_y).min(cam.clamp_y) * z;
    let zz = z * z;
    let (j00, j02) = (cam.focal_x / z, -(cam.focal_x * jx) / zz);
    let (j11, j12) = (cam.focal_y / z, -(cam.focal_y * jy) / zz);
    let (r0, r1, r2) = (row(0), row(1), row(2));
    let a0 = [0, 1, 2].map(|k| j00 * r0[k] + j02 * r2[k]);
    let a1 = [0, 1, 2].map(|k| j11 * r1[k] + j12 * r2[k]);
    let m = cam.scale_modifier;
    let sigma = covariance_3d([m * g[4], m * g[5], m * g[6]], [g[8], g[9], g[10], g[11]]);
    let s0 = mat_vec(&sigma, a0);
    let s1 = mat_vec(&sigma, a1);
    let (a, b, c) = (dot3(a0, s0), dot3(a1, s0), dot3(a1, s1));

    // The mip-splatting 2D filter, then the conic (inverse covariance).
    let coef = filter_coefficient(a, b, c, cam.kernel_size);
    let (a, c) = (a + cam.kernel_size, c + cam.kernel_size);
    let det = a * c - b * b;
    if det == 0.0 {
        return None;
    }
    let inv = 1.0 / det;
    let conic = [c * inv, -b * inv, a * inv];

    // 3σ of the larger eigenvalue, with the reference's floor on the discriminant.
    let mid = 0.5 * (a + c);
    let root = (mid * mid - det).max(DISCRIMINANT_FLOOR).sqrt();
    let radius = (SIGMAS * (mid + root).sqrt()).ceil();
    let xy = [
        cam.focal_x * xz + cam.principal_x,
        cam.focal_y * yz + cam.principal_y,
    ];
    let usable = radius > 0.0 && finite(xy[0]) && finite(xy[1]) && conic.iter().all(|&v| finite(v));
    if !usable {
        return None;
    }
    let rect = tile_rect(xy, radius.min(MAX_RADIUS), cam.tiles_x, cam.tiles_y);
    let splat = Splat {
        xy,
        depth: z,
        opacity: g[3] * coef,
        conic,
        rect,
    };
    (splat.tile_count() > 0).then_some(splat)
}

/// One Gaussian's contribution to the pixel at `(px, py)`: its alpha, or `None` when it is
/// skipped (the exponent is positive, or the alpha is below 1/255).
#[inline]
pub(crate) fn splat_alpha(s: &Splat, px: f32, py: f32) -> Option<f32> {
    let dx = s.xy[0] - px;
    let dy = s.xy[1] - py;
    let q = s.conic[0] * dx * dx + s.conic[2] * dy * dy;
    let power = -0.5 * q - s.conic[1] * dx * dy;
    if power > 0.0 {
        return None;
    }
    let alpha = (s.opacity * power.exp()).min(0.99);
    (alpha >= 1.0 / 255.0).then_some(alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_layout_matches_the_kernel_struct() {
        // 23 floats and 4 ints, no padding: `struct SplatCamera` in gaussian_splat.cu.
        assert_eq!(std::mem::size_of::<SplatCamera>(), 27 * 4);
        assert_eq!(std::mem::align_of::<SplatCamera>(), 4);
    }

    #[test]
    fn rect_covers_the_radius_in_tiles() {
        // Centre (20, 40), radius 5: x in [15, 25] → tiles 0..2, y in [35, 45] → tiles 2..3.
        assert_eq!(tile_rect([20.0, 40.0], 5.0, 4, 4), [0, 2, 2, 3]);
        // Clamped to the grid and empty off-screen.
        assert_eq!(tile_rect([-100.0, 10.0], 5.0, 4, 4), [0, 0, 0, 1]);
        assert_eq!(tile_rect([1e30, 1e30], 5.0, 4, 4), [4, 4, 4, 4]);
    }

    #[test]
    fn filter_coefficient_matches_its_formula() {
        let coef = filter_coefficient(2.0, 0.0, 2.0, 0.1);
        let expected = ((4.0f64 / (2.1f64 * 2.1 + 1e-6)) + 1e-6).sqrt();
        assert!((coef as f64 - expected).abs() < 1e-6);
        assert_eq!(filter_coefficient(0.0, 0.0, 0.0, 0.1), 0.0);
    }

    #[test]
    fn identity_quaternion_gives_a_diagonal_covariance() {
        let s = covariance_3d([1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(s, [[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 9.0]]);
    }
}
