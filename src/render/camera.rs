//! Cameras for rendering, with the reference's conventions (TRELLIS `render_utils` and
//! `random_utils`, research/trellis.md §4.5):
//!
//! - A [`View`] is an OpenCV camera (x right, y down, z forward) given by its world→camera
//!   rotation and translation and by *normalised* intrinsics: `fx`, `fy`, `cx`, `cy` are in
//!   units of the image width / height (utils3d's convention), so one view renders at any
//!   resolution. [`View::pixel_intrinsics`] gives the pixel ones for a size.
//! - [`View::orbit`] places the camera on a sphere around the origin looking at it, Z up, as
//!   `yaw_pitch_r_fov_to_extrinsics_intrinsics` does.
//! - [`turntable`] is `render_video`'s orbit (yaw once around, pitch swinging 0.25 ± 0.5 rad)
//!   and [`multiview`] is `render_multiview`'s sphere-Hammersley set, used to bake textures.
//!
//! Everything is computed in f64 and stored as f32 (what the rasterisers consume).

use crate::error::{Error, Result};

/// The reference's default orbit radius and field of view for previews and baking.
pub const DEFAULT_RADIUS: f64 = 2.0;
pub const DEFAULT_FOV_DEGREES: f64 = 40.0;

/// The reference samples the turntable with `linspace(0, 2·3.1415, N)`, not `2π`: the last
/// frame stops just short of the first, and we keep that so frames line up with its videos.
#[allow(clippy::approx_constant)]
const TURNTABLE_SPAN: f64 = 2.0 * 3.1415;

/// An OpenCV pinhole camera with normalised intrinsics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// World→camera rotation, row-major: rows are the camera's x, y, z axes in world space.
    pub rotation: [[f32; 3]; 3],
    /// World→camera translation: `p_cam = rotation · p_world + translation`.
    pub translation: [f32; 3],
    /// Focal lengths in units of the image width (`fx`) and height (`fy`).
    pub fx: f32,
    pub fy: f32,
    /// Principal point in units of the image width / height (0.5 = centre).
    pub cx: f32,
    pub cy: f32,
}

/// Pixel intrinsics of a [`View`] at one image size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelIntrinsics {
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
    pub width: u32,
    pub height: u32,
}

impl View {
    /// The camera at `radius` from the origin, at `yaw` around +Z (0 looks from +Y) and
    /// `pitch` above the XY plane (radians), looking at the origin with +Z up, with the same
    /// field of view `fov` (radians) in x and y.
    pub fn orbit(yaw: f64, pitch: f64, radius: f64, fov: f64) -> Result<Self> {
        check_finite("yaw", yaw)?;
        check_finite("pitch", pitch)?;
        if !(radius.is_finite() && radius > 0.0) {
            return Err(Error::invalid_argument(format!(
                "camera radius must be finite and positive, found {radius}"
            )));
        }
        let eye = [
            radius * yaw.sin() * pitch.cos(),
            radius * yaw.cos() * pitch.cos(),
            radius * pitch.sin(),
        ];
        Self::look_at(eye, [0.0; 3], [0.0, 0.0, 1.0], fov)
    }

    /// An OpenCV camera at `eye` looking at `target`, with `up` the world direction that
    /// appears upwards, and the field of view `fov` (radians) in x and y. As utils3d's
    /// `extrinsics_look_at`: z = normalize(target − eye), x = normalize(−up × z), y = z × x.
    pub fn look_at(eye: [f64; 3], target: [f64; 3], up: [f64; 3], fov: f64) -> Result<Self> {
        if !(fov.is_finite() && fov > 0.0 && fov < std::f64::consts::PI) {
            return Err(Error::invalid_argument(format!(
                "field of view must be in (0, π) radians, found {fov}"
            )));
        }
        let z = normalize(sub(target, eye)).ok_or_else(|| {
            Error::invalid_argument("camera eye and target coincide: no viewing direction")
        })?;
        let x = normalize(cross([-up[0], -up[1], -up[2]], z)).ok_or_else(|| {
            Error::invalid_argument("camera up vector is parallel to the viewing direction")
        })?;
        let y = cross(z, x);
        let rotation = [x, y, z];
        let translation = [-dot(x, eye), -dot(y, eye), -dot(z, eye)];
        let focal = 0.5 / (fov / 2.0).tan();
        Ok(Self {
            rotation: rotation.map(|row| row.map(|v| v as f32)),
            translation: translation.map(|v| v as f32),
            fx: focal as f32,
            fy: focal as f32,
            cx: 0.5,
            cy: 0.5,
        })
    }

    /// The camera centre in world space, `−Rᵀ t`.
    pub fn center(&self) -> [f32; 3] {
        let (r, t) = (&self.rotation, &self.translation);
        [0, 1, 2].map(|j| -(r[0][j] * t[0] + r[1][j] * t[1] + r[2][j] * t[2]))
    }

    /// World point → camera space.
    pub fn to_camera(&self, p: [f32; 3]) -> [f32; 3] {
        let (r, t) = (&self.rotation, &self.translation);
        [0, 1, 2].map(|i| r[i][0] * p[0] + r[i][1] * p[1] + r[i][2] * p[2] + t[i])
    }

    /// The intrinsics in pixels for a `width × height` image.
    pub fn pixel_intrinsics(&self, width: u32, height: u32) -> PixelIntrinsics {
        PixelIntrinsics {
            fx: self.fx * width as f32,
            fy: self.fy * height as f32,
            cx: self.cx * width as f32,
            cy: self.cy * height as f32,
            width,
            height,
        }
    }

    /// `tan` of the half field of view in x and y (what 3DGS-style rasterisers take).
    pub fn tan_half_fov(&self) -> (f32, f32) {
        (0.5 / self.fx, 0.5 / self.fy)
    }

    /// The 4×4 world→camera matrix, row-major, `[[R, t], [0, 0, 0, 1]]`.
    pub fn view_matrix(&self) -> [[f32; 4]; 4] {
        let (r, t) = (&self.rotation, &self.translation);
        [
            [r[0][0], r[0][1], r[0][2], t[0]],
            [r[1][0], r[1][1], r[1][2], t[1]],
            [r[2][0], r[2][1], r[2][2], t[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    /// The reference renderers' OpenCV-style perspective matrix (row-major), mapping camera
    /// space to clip space with depth in `[near, far]` → `[0, 1]` after division by `z`:
    /// `[[2fx, 0, 2cx−1, 0], [0, 2fy, 2cy−1, 0], [0, 0, f/(f−n), n·f/(n−f)], [0, 0, 1, 0]]`.
    /// (With y down in OpenCV camera space, NDC y grows downwards too.)
    pub fn projection_matrix(&self, near: f32, far: f32) -> [[f32; 4]; 4] {
        [
            [2.0 * self.fx, 0.0, 2.0 * self.cx - 1.0, 0.0],
            [0.0, 2.0 * self.fy, 2.0 * self.cy - 1.0, 0.0],
            [0.0, 0.0, far / (far - near), near * far / (near - far)],
            [0.0, 0.0, 1.0, 0.0],
        ]
    }
}

/// `render_video`'s orbit: `frames` cameras with yaw `linspace(0, 2·3.1415, frames)` and pitch
/// `0.25 + 0.5·sin(yaw)` (same linspace), at `radius` with field of view `fov` (radians).
pub fn turntable(frames: usize, radius: f64, fov: f64) -> Result<Vec<View>> {
    (0..frames)
        .map(|i| {
            let yaw = linspace(0.0, TURNTABLE_SPAN, frames, i);
            View::orbit(yaw, 0.25 + 0.5 * yaw.sin(), radius, fov)
        })
        .collect()
}

/// `render_multiview`'s cameras: view `i` of `count` at the sphere-Hammersley point
/// [`sphere_hammersley`]`(i, count)` used as (yaw, pitch), at `radius` with field of view `fov`.
pub fn multiview(count: usize, radius: f64, fov: f64) -> Result<Vec<View>> {
    (0..count)
        .map(|i| {
            let (yaw, pitch) = sphere_hammersley(i, count);
            View::orbit(yaw, pitch, radius, fov)
        })
        .collect()
}

/// Point `i` of `count` of the Hammersley set on the sphere, as (yaw, pitch) in radians:
/// `u = i / count`, `v` = the base-2 radical inverse of `i`; pitch = `acos(1 − 2u) − π/2`,
/// yaw = `2π·v`. Points spread evenly over the sphere, from pitch −π/2 upwards.
pub fn sphere_hammersley(i: usize, count: usize) -> (f64, f64) {
    let u = i as f64 / count.max(1) as f64;
    let v = radical_inverse_base2(i as u64);
    let pitch = (1.0 - 2.0 * u).acos() - std::f64::consts::FRAC_PI_2;
    (v * 2.0 * std::f64::consts::PI, pitch)
}

/// The base-2 radical inverse: the bits of `n` mirrored about the binary point.
fn radical_inverse_base2(n: u64) -> f64 {
    n.reverse_bits() as f64 / 2f64.powi(64)
}

/// Element `i` of numpy/torch `linspace(start, end, count)` (both ends included).
fn linspace(start: f64, end: f64, count: usize, i: usize) -> f64 {
    if count <= 1 {
        return start;
    }
    start + (end - start) * i as f64 / (count - 1) as f64
}

fn check_finite(name: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "camera {name} must be finite, found {v}"
        )))
    }
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn normalize(v: [f64; 3]) -> Option<[f64; 3]> {
    // Only an exactly zero (or non-finite) vector fails: orbit cameras at the poles, which
    // the reference's Hammersley views include, have a tiny but well-defined x axis.
    let n = dot(v, v).sqrt();
    (n > 0.0 && n.is_finite()).then(|| v.map(|c| c / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn orbit_looks_at_the_origin_from_radius() {
        let view = View::orbit(0.7, 0.3, 2.0, 40f64.to_radians()).unwrap();
        let c = view.center();
        let r = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        assert!(close(r, 2.0), "radius {r}");
        // The origin sits on the optical axis, 2 units ahead.
        let o = view.to_camera([0.0; 3]);
        assert!(
            close(o[0], 0.0) && close(o[1], 0.0) && close(o[2], 2.0),
            "{o:?}"
        );
        // +Z in the world points up in the image (negative camera y).
        let up = view.to_camera([0.0, 0.0, 0.5]);
        assert!(up[1] < o[1]);
    }

    #[test]
    fn yaw_zero_looks_from_plus_y() {
        let view = View::orbit(0.0, 0.0, 2.0, 1.0).unwrap();
        let c = view.center();
        assert!(
            close(c[0], 0.0) && close(c[1], 2.0) && close(c[2], 0.0),
            "{c:?}"
        );
    }

    #[test]
    fn intrinsics_follow_the_fov() {
        let view = View::orbit(0.0, 0.0, 2.0, 40f64.to_radians()).unwrap();
        let expected = (0.5 / 20f64.to_radians().tan()) as f32;
        assert!(close(view.fx, expected) && close(view.fy, expected));
        let px = view.pixel_intrinsics(512, 256);
        assert!(close(px.cx, 256.0) && close(px.cy, 128.0));
        assert!(close(px.fx, expected * 512.0));
    }

    #[test]
    fn hammersley_matches_its_definition() {
        // radinv_2: 1 → 0.5, 2 → 0.25, 3 → 0.75, 6 → 0.375.
        assert_eq!(radical_inverse_base2(1), 0.5);
        assert_eq!(radical_inverse_base2(2), 0.25);
        assert_eq!(radical_inverse_base2(3), 0.75);
        assert_eq!(radical_inverse_base2(6), 0.375);
        let (yaw, pitch) = sphere_hammersley(0, 10);
        assert_eq!(yaw, 0.0);
        assert!((pitch + std::f64::consts::FRAC_PI_2).abs() < 1e-12);
        let (yaw, pitch) = sphere_hammersley(5, 10);
        assert!((yaw - 0.625 * 2.0 * std::f64::consts::PI).abs() < 1e-12);
        assert!(pitch.abs() < 1e-12);
    }

    #[test]
    fn turntable_spans_the_reference_linspace() {
        let views = turntable(5, 2.0, 1.0).unwrap();
        assert_eq!(views.len(), 5);
        let last = View::orbit(TURNTABLE_SPAN, 0.25 + 0.5 * TURNTABLE_SPAN.sin(), 2.0, 1.0);
        assert_eq!(views[4], last.unwrap());
        assert!(turntable(0, 2.0, 1.0).unwrap().is_empty());
    }

    #[test]
    fn projection_maps_near_and_far_to_zero_and_one() {
        let view = View::orbit(0.0, 0.0, 2.0, 1.0).unwrap();
        let p = view.projection_matrix(0.8, 1.6);
        let depth = |z: f32| (p[2][2] * z + p[2][3]) / z;
        assert!(close(depth(0.8), 0.0) && close(depth(1.6), 1.0));
    }

    #[test]
    fn bad_cameras_are_errors() {
        assert!(View::orbit(0.0, 0.0, 0.0, 1.0).is_err());
        assert!(View::orbit(f64::NAN, 0.0, 2.0, 1.0).is_err());
        assert!(View::orbit(0.0, 0.0, 2.0, 4.0).is_err());
        assert!(View::look_at([0.0; 3], [0.0; 3], [0.0, 0.0, 1.0], 1.0).is_err());
        // Looking exactly along the up vector leaves no x axis...
        assert!(View::look_at([0.0, 0.0, 2.0], [0.0; 3], [0.0, 0.0, 1.0], 1.0).is_err());
        // ...but an orbit at a pole is the limit of the nearby orbits (x = (−cos yaw, sin yaw, 0)).
        let pole = View::orbit(0.0, -std::f64::consts::FRAC_PI_2, 2.0, 1.0).unwrap();
        assert!(close(pole.rotation[0][0], -1.0) && close(pole.rotation[0][1], 0.0));
    }
}
