//! Turntable previews: a result rendered from the reference's orbit (`render_utils.render_video`,
//! research/trellis.md §4.5) as RGBA8 frames, one at a time or written as a video.
//!
//! Three contents, as the reference renders them: the **Gaussians** in colour (its `color`
//! video), the **mesh's normals** as `(n + 1) / 2` (its `normal` video), and — which the
//! reference has no renderer for — the **mesh's vertex colours**, interpolated over each
//! triangle.
//!
//! Frames are 8-bit RGBA: RGB is the render composited over [`TurntableOptions::background`]
//! (so over black it is premultiplied by alpha), clamped to `[0, 1]` and rounded; alpha is the
//! splats' accumulated opacity or the mesh's pixel coverage. The renderers are
//! [`super::gaussian::GaussianScene`] and [`super::mesh_raster::MeshScene`] on the device
//! asked for (the CPU reference implementations or CUDA); the scene is prepared once and
//! each frame is converted and handed over before the next is rendered, so a long turntable at
//! a high resolution never sits in memory.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::camera::{turntable, View, DEFAULT_FOV_DEGREES, DEFAULT_RADIUS};
use super::gaussian::{GaussianScene, SplatSettings};
use super::mesh_raster::{interpolate, MeshRenderSettings, MeshScene};
use super::video::{VideoFormat, VideoOptions, VideoSummary, VideoWriter};
use crate::error::{Error, Result, ResultExt};
use crate::pipeline::{Mesh, Output};

pub use super::video::Frame;

/// Frames of a turntable unless asked otherwise: TRELLIS's demo app renders 120 (its
/// `render_video` defaults to 300). At [`super::video::DEFAULT_FPS`] that is a 4-second spin.
pub const DEFAULT_FRAMES: usize = 120;
/// Image side unless asked otherwise (`render_video`'s).
pub const DEFAULT_RESOLUTION: u32 = 512;
/// The most frames one turntable may have (about 5.5 minutes at 30 fps).
pub const MAX_FRAMES: usize = 10_000;
/// The largest image side (H.264 stops at 2160 on the short side anyway).
pub const MAX_RESOLUTION: u32 = 4096;
/// Mesh supersampling factor unless asked otherwise (`MeshRenderer`'s `ssaa`).
pub const DEFAULT_MESH_SSAA: u32 = 4;

/// What a turntable shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TurntableContent {
    /// The 3D Gaussians in colour (the reference's preview video).
    #[default]
    Gaussians,
    /// The mesh's face normals, `(n + 1) / 2` in world space (the reference's normal video).
    MeshNormals,
    /// The mesh's vertex colours, interpolated across triangles.
    MeshColors,
}

impl TurntableContent {
    /// The CLI's names: `gaussians`, `normals`, `colors`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "gaussians" | "gaussian" => Ok(Self::Gaussians),
            "normals" | "normal" | "mesh-normals" => Ok(Self::MeshNormals),
            "colors" | "colours" | "color" | "colour" | "mesh-colors" => Ok(Self::MeshColors),
            _ => Err(Error::invalid_argument(format!(
                "turntable content '{name}': use gaussians, normals or colors"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gaussians => "gaussians",
            Self::MeshNormals => "normals",
            Self::MeshColors => "colors",
        }
    }

    /// Whether it needs the mesh (else the Gaussians).
    pub fn needs_mesh(self) -> bool {
        !matches!(self, Self::Gaussians)
    }
}

/// How to render a turntable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurntableOptions {
    /// Number of frames, 1..=[`MAX_FRAMES`] (default [`DEFAULT_FRAMES`]). The orbit is the
    /// reference's: yaw over `linspace(0, 2·3.1415, frames)`, pitch `0.25 + 0.5·sin(yaw)`.
    pub frames: usize,
    /// Width and height of each frame in pixels, 1..=[`MAX_RESOLUTION`] (default 512).
    pub resolution: u32,
    /// Distance of the camera from the object's centre (default 2, the object being in the
    /// unit cube).
    pub radius: f64,
    /// Field of view in degrees, in (0, 180) (default 40).
    pub fov_degrees: f64,
    /// RGB in `[0, 1]` behind the object (default black, as the reference's).
    pub background: [f32; 3],
    pub content: TurntableContent,
    /// Supersampling per axis of mesh renders, 1..=8 (default 4, as `MeshRenderer`).
    /// Gaussians are rendered without, as the reference does.
    pub mesh_ssaa: u32,
}

impl Default for TurntableOptions {
    fn default() -> Self {
        Self {
            frames: DEFAULT_FRAMES,
            resolution: DEFAULT_RESOLUTION,
            radius: DEFAULT_RADIUS,
            fov_degrees: DEFAULT_FOV_DEGREES,
            background: [0.0; 3],
            content: TurntableContent::Gaussians,
            mesh_ssaa: DEFAULT_MESH_SSAA,
        }
    }
}

impl TurntableOptions {
    /// Checks every field's range (the cameras and renderers check the rest).
    pub fn validate(&self) -> Result<()> {
        if self.frames == 0 || self.frames > MAX_FRAMES {
            return Err(Error::invalid_argument(format!(
                "turntable frames {}: expected 1 to {MAX_FRAMES}",
                self.frames
            )));
        }
        if self.resolution == 0 || self.resolution > MAX_RESOLUTION {
            return Err(Error::invalid_argument(format!(
                "turntable resolution {}: expected 1 to {MAX_RESOLUTION} pixels",
                self.resolution
            )));
        }
        if !(self.radius.is_finite() && self.radius > 0.0) {
            return Err(Error::invalid_argument(format!(
                "turntable radius {}: expected a finite distance > 0",
                self.radius
            )));
        }
        if !(self.fov_degrees.is_finite() && self.fov_degrees > 0.0 && self.fov_degrees < 180.0) {
            return Err(Error::invalid_argument(format!(
                "turntable field of view {}°: expected more than 0 and less than 180 degrees",
                self.fov_degrees
            )));
        }
        if !self
            .background
            .iter()
            .all(|c| c.is_finite() && (0.0..=1.0).contains(c))
        {
            return Err(Error::invalid_argument(format!(
                "turntable background {:?}: expected three values in 0..1",
                self.background
            )));
        }
        if !(1..=8).contains(&self.mesh_ssaa) {
            return Err(Error::invalid_argument(format!(
                "turntable mesh supersampling {}: expected 1 to 8",
                self.mesh_ssaa
            )));
        }
        Ok(())
    }

    /// The orbit's cameras.
    pub fn views(&self) -> Result<Vec<View>> {
        self.validate()?;
        turntable(self.frames, self.radius, self.fov_degrees.to_radians())
    }
}

/// A result's content prepared for rendering from many views.
enum Scene {
    Gaussians(GaussianScene),
    Mesh {
        scene: MeshScene,
        /// `[V, 3]` vertex colours on the scene's device (colour turntables only).
        colors: Option<Tensor>,
    },
}

/// Renders one frame after another and hands each to a caller: the building block of
/// [`render_turntable`], [`render_turntable_with`] and [`write_turntable`].
pub struct TurntableRenderer {
    scene: Scene,
    views: Vec<View>,
    options: TurntableOptions,
}

impl TurntableRenderer {
    /// Checks `options`, takes what `options.content` needs from `output` and prepares it on
    /// `device` (CPU or CUDA).
    pub fn new(output: &Output, options: &TurntableOptions, device: Device) -> Result<Self> {
        let views = options.views()?;
        let scene = match options.content {
            TurntableContent::Gaussians => {
                let gaussians = output.gaussians.as_ref().ok_or_else(|| {
                    Error::invalid_argument(
                        "a Gaussian turntable needs the result's Gaussians, and it has none \
                         (generate them, or render the mesh's normals or colors)",
                    )
                })?;
                Scene::Gaussians(GaussianScene::new(gaussians, device).context("turntable")?)
            }
            TurntableContent::MeshNormals | TurntableContent::MeshColors => {
                let mesh = output.mesh.as_ref().ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "a {} turntable needs the result's mesh, and it has none (generate it, \
                         or render the Gaussians)",
                        options.content.name()
                    ))
                })?;
                let scene =
                    MeshScene::new(&mesh.positions, &mesh.indices, device).context("turntable")?;
                let colors = match options.content {
                    TurntableContent::MeshColors => Some(vertex_colors(mesh, device)?),
                    _ => None,
                };
                Scene::Mesh { scene, colors }
            }
        };
        Ok(Self {
            scene,
            views,
            options: *options,
        })
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Renders frame `index` (0-based, below [`Self::len`]).
    pub fn frame(&self, index: usize) -> Result<Frame> {
        let view = self.views.get(index).ok_or_else(|| {
            Error::invalid_argument(format!(
                "turntable frame {index} is out of range (it has {})",
                self.views.len()
            ))
        })?;
        let (color, alpha) = match &self.scene {
            Scene::Gaussians(scene) => {
                let mut settings =
                    SplatSettings::with_size(self.options.resolution, self.options.resolution);
                settings.background = self.options.background;
                let image = scene.render(view, &settings)?;
                (image.color, image.alpha)
            }
            Scene::Mesh {
                scene,
                colors: None,
            } => {
                let settings = self.mesh_settings();
                let image = scene.render(view, &settings)?;
                (image.normal, image.mask)
            }
            Scene::Mesh {
                scene,
                colors: Some(colors),
            } => self.mesh_colors(scene, colors, view)?,
        };
        to_rgba8(&color, &alpha).context(format!("turntable frame {index}"))
    }

    fn mesh_settings(&self) -> MeshRenderSettings {
        MeshRenderSettings {
            width: self.options.resolution,
            height: self.options.resolution,
            ssaa: self.options.mesh_ssaa,
            background: self.options.background,
            ..MeshRenderSettings::default()
        }
    }

    /// Vertex colours: rasterised at `ssaa ×` the size, interpolated, composited over the
    /// background and brought down by the mean of each `ssaa × ssaa` block (coverage alike).
    fn mesh_colors(
        &self,
        scene: &MeshScene,
        colors: &Tensor,
        view: &View,
    ) -> Result<(Tensor, Tensor)> {
        let settings = self.mesh_settings();
        let s = i64::from(settings.ssaa);
        let (w, h) = (
            settings.width * settings.ssaa,
            settings.height * settings.ssaa,
        );
        let rast = scene.rasterize(view, w, h, settings.near, settings.far)?;
        let (values, _) = interpolate(colors, scene.indices(), &rast)?;
        let mask = rast.mask()?.f_unsqueeze(-1)?;
        let background = Tensor::f_from_slice(&settings.background)?
            .f_to_device(scene.device())?
            .f_view([1, 1, 3])?;
        let color = values.f_where_self(&mask, &background)?;
        let coverage = mask.f_to_kind(Kind::Float)?;
        let (oh, ow) = (i64::from(settings.height), i64::from(settings.width));
        let block_mean = |t: &Tensor, c: i64| -> Result<Tensor> {
            Ok(t.f_reshape([oh, s, ow, s, c])?.f_mean_dim(
                [1i64, 3].as_slice(),
                false,
                Kind::Float,
            )?)
        };
        Ok((
            block_mean(&color, 3)?,
            block_mean(&coverage, 1)?.f_squeeze_dim(-1)?,
        ))
    }
}

/// `[V, 3]` f32 vertex colours of `mesh` on `device`, checked.
fn vertex_colors(mesh: &Mesh, device: Device) -> Result<Tensor> {
    if mesh.colors.is_empty() {
        return Err(Error::invalid_argument(
            "a colors turntable needs vertex colours, and the mesh has none (render its \
             normals instead)",
        ));
    }
    if mesh.colors.len() != mesh.positions.len() {
        return Err(Error::invalid_argument(format!(
            "the mesh has {} colour values for {} vertices (expected 3 per vertex)",
            mesh.colors.len(),
            mesh.positions.len() / 3
        )));
    }
    if let Some(bad) = mesh.colors.iter().position(|c| !c.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "mesh colour value {bad} is {}, not finite",
            mesh.colors[bad]
        )));
    }
    let v = (mesh.colors.len() / 3) as i64;
    Ok(Tensor::f_from_slice(&mesh.colors)?
        .f_reshape([v, 3])?
        .f_to_device(device)?)
}

/// `[H, W, 3]` colour and `[H, W]` alpha (any device, f32) → an RGBA8 frame: each value
/// clamped to `[0, 1]`, scaled by 255 and rounded to nearest (NaN becomes 0).
pub fn to_rgba8(color: &Tensor, alpha: &Tensor) -> Result<Frame> {
    let size = color.size();
    let [h, w, 3] = size[..] else {
        return Err(Error::internal(format!(
            "turntable colour image must be [H, W, 3], found {size:?}"
        )));
    };
    if alpha.size() != [h, w] {
        return Err(Error::internal(format!(
            "turntable alpha must be [{h}, {w}], found {:?}",
            alpha.size()
        )));
    }
    let rgba = Tensor::f_cat(
        &[
            color.f_to_kind(Kind::Float)?,
            alpha.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?,
        ],
        -1,
    )?
    .f_nan_to_num(0.0, 1.0, 0.0)?
    .f_clamp(0.0, 1.0)?
    .f_mul_scalar(255.0)?
    .f_round()?
    .f_to_kind(Kind::Uint8)?
    .f_to_device(Device::Cpu)?
    .f_contiguous()?
    .f_flatten(0, -1)?;
    let bytes = Vec::<u8>::try_from(&rgba)?;
    Ok(Frame {
        width: w as u32,
        height: h as u32,
        rgba: bytes,
    })
}

/// Every frame of a turntable, in memory (`frames · resolution² · 4` bytes: use
/// [`render_turntable_with`] or [`write_turntable`] for long or large ones).
pub fn render_turntable(
    output: &Output,
    options: &TurntableOptions,
    device: Device,
) -> Result<Vec<Frame>> {
    let mut frames = Vec::with_capacity(options.frames.min(MAX_FRAMES));
    render_turntable_with(output, options, device, |_, frame| {
        frames.push(frame);
        Ok(())
    })?;
    Ok(frames)
}

/// Renders the frames in order and hands each to `on_frame(index, frame)` before rendering
/// the next; an error from `on_frame` (e.g. [`Error::cancelled`]) stops there and is returned.
/// Returns the number of frames rendered.
pub fn render_turntable_with(
    output: &Output,
    options: &TurntableOptions,
    device: Device,
    mut on_frame: impl FnMut(usize, Frame) -> Result<()>,
) -> Result<usize> {
    let renderer = TurntableRenderer::new(output, options, device)?;
    for index in 0..renderer.len() {
        on_frame(index, renderer.frame(index)?)?;
    }
    Ok(renderer.len())
}

/// Renders a turntable straight into a video at `path`: `.mp4` (H.264, feature `video`) or a
/// folder of PNG frames (see [`super::video`]). The path is checked before anything is
/// rendered, and nothing appears there unless every frame was written. `on_frame(index,
/// frame)` is called after each frame is written (progress, a live preview; an error, e.g.
/// [`Error::cancelled`], stops the render and leaves nothing at `path`).
pub fn write_turntable(
    output: &Output,
    options: &TurntableOptions,
    device: Device,
    path: &Path,
    video: &VideoOptions,
    mut on_frame: impl FnMut(usize, &Frame) -> Result<()>,
) -> Result<VideoSummary> {
    let format = VideoFormat::for_path(path)?;
    let renderer = TurntableRenderer::new(output, options, device)?;
    let mut writer = VideoWriter::create_as(path, format, video)?;
    for index in 0..renderer.len() {
        let frame = renderer.frame(index)?;
        writer.push(frame.view())?;
        on_frame(index, &frame)?;
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        assert!(TurntableOptions::default().validate().is_ok());
        let bad = [
            TurntableOptions {
                frames: 0,
                ..Default::default()
            },
            TurntableOptions {
                resolution: 0,
                ..Default::default()
            },
            TurntableOptions {
                radius: f64::NAN,
                ..Default::default()
            },
            TurntableOptions {
                fov_degrees: 180.0,
                ..Default::default()
            },
            TurntableOptions {
                background: [0.0, 2.0, 0.0],
                ..Default::default()
            },
            TurntableOptions {
                mesh_ssaa: 0,
                ..Default::default()
            },
        ];
        for options in bad {
            let err = options.validate().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        }
        assert_eq!(
            TurntableContent::parse("Normals").unwrap(),
            TurntableContent::MeshNormals
        );
        assert!(TurntableContent::parse("depth").is_err());
    }

    #[test]
    fn rgba8_conversion_clamps_and_rounds() {
        let color =
            Tensor::from_slice(&[0.0f32, 0.5, 1.5, -0.2, f32::NAN, 0.999]).reshape([1, 2, 3]);
        let alpha = Tensor::from_slice(&[1.0f32, 0.25]).reshape([1, 2]);
        let frame = to_rgba8(&color, &alpha).unwrap();
        assert_eq!((frame.width, frame.height), (2, 1));
        assert_eq!(frame.rgba, vec![0, 128, 255, 255, 0, 0, 255, 64]);
    }
}
