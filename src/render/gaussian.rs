//! The Gaussian-splat rasteriser (forward only), with the conventions of TRELLIS's
//! `GaussianRenderer` over mip-splatting's `diff-gaussian-rasterization` (research/trellis.md
//! §4.1, §4.5): SH degree 0 colours `max(0.28209479·f_dc + 0.5, 0)`, the mip-splatting 2D
//! filter (`kernel_size` 0.1 with opacity compensation), EWA projection with the clamped
//! Jacobian, 16×16 tiles, per-tile front-to-back order by view depth, `α = min(0.99, o·e^p)`
//! skipped below 1/255 and compositing stopped before the transmittance drops below 1e-4,
//! culling at view depth 0.2, colour over a background. See `gaussian/projection.rs` for the
//! per-Gaussian maths, `gaussian/cpu.rs` for the reference implementation and
//! `kernels/gaussian_splat.cu` for CUDA.
//!
//! Outputs beyond the reference's colour: `alpha` is `1 − T` (the final transmittance) and
//! `depth` is the weight-normalised view-space depth `Σ wᵢ zᵢ / Σ wᵢ` of the composited
//! splats (`wᵢ = αᵢ Tᵢ`), 0 where nothing was composited. Colour is not clamped above (the
//! reference's is not either): callers clamp to [0, 1] when converting to 8 bits.
//!
//! Deliberate differences from the reference, all at the edges of its domain:
//! - An empty scene renders the background (the reference returns zeros when P = 0, but the
//!   background whenever P > 0 and everything is culled).
//! - A principal point off the image centre is taken in OpenCV's sense; the reference's
//!   projection matrix mirrors `cy` (its `−2cy + 1`), which only matters for `cy ≠ 0.5`, never
//!   the case for TRELLIS's cameras.
//! - Gaussians whose splat is not finite (overflowing scales) are culled instead of producing
//!   undefined integer conversions.

mod cpu;
mod cuda;
mod projection;

use tch::{Device, Tensor};

use self::projection::{SplatCamera, PACKED, SH_C0};
use crate::error::{Error, Result};
use crate::pipeline::Gaussians;
use crate::render::View;

/// The entry points of `kernels/gaussian_splat.cu` the CUDA path launches (the tests check them
/// against the compiled PTX, so a renamed kernel fails in CI rather than on a GPU).
pub const CUDA_KERNELS: &[&str] = &cuda::KERNELS;

/// The largest image side accepted (pixels).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Rendering settings; [`Default`] is the reference's `GaussianRenderer` as `render_utils`
/// configures it (512², near 0.8, far 1.6, kernel size 0.1, black background, scale 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplatSettings {
    pub width: u32,
    pub height: u32,
    /// The reference's projection planes. Its rasteriser never clips at them (it culls at view
    /// depth 0.2 and ignores the depth row of the projection matrix), and neither do we; they
    /// are validated (`0 < near < far`) and kept for API parity.
    pub near: f32,
    pub far: f32,
    /// The mip-splatting screen-space filter variance, in pixels².
    pub kernel_size: f32,
    /// RGB background composited behind the splats.
    pub background: [f32; 3],
    /// Multiplies every Gaussian's scale.
    pub scale_modifier: f32,
}

impl Default for SplatSettings {
    fn default() -> Self {
        Self {
            width: 512,
            height: 512,
            near: 0.8,
            far: 1.6,
            kernel_size: 0.1,
            background: [0.0; 3],
            scale_modifier: 1.0,
        }
    }
}

impl SplatSettings {
    /// The default settings at `width × height`.
    pub fn with_size(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            ..Self::default()
        }
    }

    /// Checks every field: sizes in `1..=MAX_IMAGE_SIDE`, finite values, `0 < near < far`,
    /// `kernel_size ≥ 0`, `scale_modifier > 0`.
    pub fn validate(&self) -> Result<()> {
        for (name, side) in [("width", self.width), ("height", self.height)] {
            if side == 0 || side > MAX_IMAGE_SIDE {
                return Err(Error::invalid_argument(format!(
                    "splat image {name} must be in 1..={MAX_IMAGE_SIDE}, found {side}"
                )));
            }
        }
        if !(self.near.is_finite()
            && self.far.is_finite()
            && self.near > 0.0
            && self.near < self.far)
        {
            return Err(Error::invalid_argument(format!(
                "splat near/far planes must be finite with 0 < near < far, found {} / {}",
                self.near, self.far
            )));
        }
        if !(self.kernel_size.is_finite() && self.kernel_size >= 0.0) {
            return Err(Error::invalid_argument(format!(
                "splat kernel size must be finite and ≥ 0, found {}",
                self.kernel_size
            )));
        }
        if !(self.scale_modifier.is_finite() && self.scale_modifier > 0.0) {
            return Err(Error::invalid_argument(format!(
                "splat scale modifier must be finite and > 0, found {}",
                self.scale_modifier
            )));
        }
        if !self.background.iter().all(|v| v.is_finite()) {
            return Err(Error::invalid_argument(format!(
                "splat background must be finite, found {:?}",
                self.background
            )));
        }
        Ok(())
    }
}

/// One rendered view, on the scene's device.
#[derive(Debug)]
pub struct SplatImage {
    /// `[H, W, 3]` f32: composited colour over the background (not clamped above).
    pub color: Tensor,
    /// `[H, W]` f32: weight-normalised view-space depth of the composited splats, 0 where none.
    pub depth: Tensor,
    /// `[H, W]` f32: accumulated opacity `1 − T`, in `[0, 1)`.
    pub alpha: Tensor,
}

/// Where the prepared Gaussians live.
enum Storage {
    Cpu(Vec<f32>),
    Cuda { packed: Tensor, ordinal: usize },
}

/// A set of Gaussians prepared once (validated, SH colours evaluated, packed, uploaded) and
/// rendered from any number of views.
pub struct GaussianScene {
    count: usize,
    device: Device,
    storage: Storage,
}

impl std::fmt::Debug for GaussianScene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaussianScene")
            .field("count", &self.count)
            .field("device", &self.device)
            .finish()
    }
}

impl GaussianScene {
    /// Validates and packs `gaussians` (activated values, as [`Gaussians`] holds them) for
    /// rendering on `device`: `Device::Cpu` uses the CPU reference implementation,
    /// `Device::Cuda(n)` the CUDA kernels on device `n`.
    pub fn new(gaussians: &Gaussians, device: Device) -> Result<Self> {
        let packed = pack(gaussians)?;
        let count = gaussians.len();
        let storage = match device {
            Device::Cpu => Storage::Cpu(packed),
            Device::Cuda(ordinal) => {
                let host = Tensor::f_from_slice(&packed)?;
                Storage::Cuda {
                    packed: host.f_to(device)?,
                    ordinal,
                }
            }
            other => {
                return Err(Error::unsupported(format!(
                    "Gaussian splatting runs on the CPU or CUDA, not on {other:?}"
                )))
            }
        };
        Ok(Self {
            count,
            device,
            storage,
        })
    }

    /// The device the scene lives on and renders with.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Renders the scene from `view` with `settings`.
    pub fn render(&self, view: &View, settings: &SplatSettings) -> Result<SplatImage> {
        settings.validate()?;
        validate_view(view)?;
        let cam = SplatCamera::new(
            view,
            settings.width,
            settings.height,
            settings.kernel_size,
            settings.scale_modifier,
            settings.background,
        );
        let (h, w) = (settings.height as i64, settings.width as i64);
        match &self.storage {
            Storage::Cpu(packed) => {
                let planes = cpu::render(packed, &cam);
                Ok(SplatImage {
                    color: Tensor::f_from_slice(&planes.color)?.f_view([h, w, 3])?,
                    depth: Tensor::f_from_slice(&planes.depth)?.f_view([h, w])?,
                    alpha: Tensor::f_from_slice(&planes.alpha)?.f_view([h, w])?,
                })
            }
            Storage::Cuda { packed, ordinal } => {
                let planes = cuda::render(packed, self.count, *ordinal, &cam)?;
                Ok(SplatImage {
                    color: planes.color,
                    depth: planes.depth,
                    alpha: planes.alpha,
                })
            }
        }
    }
}

fn validate_view(view: &View) -> Result<()> {
    let values = view
        .rotation
        .iter()
        .flatten()
        .chain(&view.translation)
        .chain([&view.fx, &view.fy, &view.cx, &view.cy]);
    let mut all_finite = true;
    for v in values {
        all_finite &= v.is_finite();
    }
    if !all_finite {
        return Err(Error::invalid_argument(format!(
            "splat view has a non-finite entry: {view:?}"
        )));
    }
    if !(view.fx > 0.0 && view.fy > 0.0) {
        return Err(Error::invalid_argument(format!(
            "splat view focal lengths must be positive, found fx {} fy {}",
            view.fx, view.fy
        )));
    }
    Ok(())
}

/// Checks one attribute array: `per` values per Gaussian, all finite.
fn check_attribute(name: &str, values: &[f32], count: usize, per: usize) -> Result<()> {
    if values.len() != count * per {
        return Err(Error::invalid_argument(format!(
            "Gaussians: {name} has {} values, expected {count} × {per} (count from opacity)",
            values.len()
        )));
    }
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "Gaussians: {name} of Gaussian {} is not finite ({})",
            at / per,
            values[at]
        )));
    }
    Ok(())
}

/// Validates the attributes and packs them [`PACKED`] floats per Gaussian, with the SH
/// degree-0 colour evaluated (view-independent, so once per scene).
fn pack(g: &Gaussians) -> Result<Vec<f32>> {
    let n = g.len();
    if n > i32::MAX as usize {
        return Err(Error::invalid_argument(format!(
            "Gaussians: {n} exceed the rasteriser's limit of 2^31 − 1"
        )));
    }
    check_attribute("xyz", &g.xyz, n, 3)?;
    check_attribute("features_dc", &g.features_dc, n, 3)?;
    check_attribute("scaling", &g.scaling, n, 3)?;
    check_attribute("rotation", &g.rotation, n, 4)?;
    check_attribute("opacity", &g.opacity, n, 1)?;
    if let Some(at) = g.opacity.iter().position(|o| !(0.0..=1.0).contains(o)) {
        return Err(Error::invalid_argument(format!(
            "Gaussians: opacity of Gaussian {at} is {}, outside [0, 1] (activated opacities \
             expected)",
            g.opacity[at]
        )));
    }
    let mut packed = Vec::with_capacity(n * PACKED);
    for i in 0..n {
        let xyz = &g.xyz[3 * i..3 * i + 3];
        let s = &g.scaling[3 * i..3 * i + 3];
        let q = &g.rotation[4 * i..4 * i + 4];
        let f = &g.features_dc[3 * i..3 * i + 3];
        let color = [0, 1, 2].map(|k| (SH_C0 * f[k] + 0.5).max(0.0));
        packed.extend_from_slice(&[xyz[0], xyz[1], xyz[2], g.opacity[i]]);
        packed.extend_from_slice(&[s[0], s[1], s[2], 0.0]);
        packed.extend_from_slice(q);
        packed.extend_from_slice(&[color[0], color[1], color[2], 0.0]);
    }
    Ok(packed)
}
