//! Writers that turn a run's [`Output`] into files: a glTF binary mesh (GLB), a 3D Gaussian
//! splat PLY, a mesh PLY and a mesh OBJ. Generation and export are separate steps (DESIGN.md),
//! so every writer works from the plain arrays of [`Output`] and needs no tensor library.
//!
//! # Coordinate conventions
//!
//! recon's outputs are in TRELLIS's native frame: **Z up**, the object inside [−0.5, 0.5]³,
//! one unit = one metre. The writers rotate them the way the reference's own exporters do, so
//! files from recon and from TRELLIS open the same way up in the same viewers:
//!
//! - **Gaussian PLY** ([`ply::gaussians_to_ply`]): TRELLIS's `Gaussian.save_ply` applies the
//!   rotation `T = [[1,0,0],[0,0,-1],[0,1,0]]` (a +90° turn about X) to centres and
//!   orientations: `(x, y, z) → (x, −z, y)`. Up ends up along −Y, the camera-like frame that
//!   3DGS viewers expect.
//! - **Meshes** (GLB, mesh PLY, OBJ): TRELLIS's `to_glb` turns Z-up into glTF's Y-up with
//!   `(x, y, z) → (x, z, −y)` (a −90° turn about X). recon uses the same frame for all three
//!   mesh formats, so one asset looks the same whichever mesh file is opened (OBJ and PLY have
//!   no standard frame; Y-up is what most tools assume for them). Both turns are proper
//!   rotations, so triangle winding (and with it which side faces out) is unchanged.
//!
//! # Validation
//!
//! Every writer checks its input first (array lengths, finite values, index ranges) and names
//! the array, the expected and the found length or the bad element, so a broken result fails
//! with a message instead of producing a file a viewer silently misreads.
//!
//! # Cameras
//!
//! A result may carry one camera per input view ([`Output::cameras`], OpenCV camera-from-world
//! in the native frame). The GLB holds them as glTF perspective cameras when
//! [`ExportOptions::cameras`] asks for it (C: `RECON_EXPORT_GLB_WITH_CAMERAS`); see
//! [`glb::mesh_to_glb_with_cameras`] for the conversion. No other format has a place for them.
//!
//! [`export_to_path`] writes atomically (see [`atomic`]): the file appears whole or not at all.
//!
//! # Textured exports
//!
//! [`export_textured_to_bytes`] / [`export_textured_to_path`] run TRELLIS's `to_glb`
//! post-processing ([`crate::postprocessing`]: decimation, hole filling, UV unwrap, texture
//! baking from the Gaussians) and write a GLB with a base-colour texture or an OBJ with its MTL
//! and texture image ([`textured`]). They are separate entry points, so [`ExportOptions`] and
//! the untextured writers are unchanged.

pub mod atomic;
pub mod glb;
pub mod obj;
pub mod ply;
pub mod textured;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, ResultExt};
use crate::pipeline::{Camera, Gaussians, Mesh, Output};

/// A file format [`export_to_bytes`] can write. The numbers of [`ExportFormat::code`] are the
/// C ABI's `RECON_EXPORT_*` values (include/recon.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportFormat {
    /// The mesh as glTF 2.0 binary (`RECON_EXPORT_GLB`, 1).
    Glb,
    /// The 3D Gaussians as a 3DGS-viewer PLY (`RECON_EXPORT_PLY_GAUSSIANS`, 2).
    PlyGaussians,
    /// The mesh as binary PLY (`RECON_EXPORT_PLY_MESH`, 3).
    PlyMesh,
    /// The mesh as Wavefront OBJ text (`RECON_EXPORT_OBJ`, 4).
    Obj,
}

impl ExportFormat {
    /// Every format, in `RECON_EXPORT_*` order.
    pub const ALL: [ExportFormat; 4] = [Self::Glb, Self::PlyGaussians, Self::PlyMesh, Self::Obj];

    /// The format for a C `RECON_EXPORT_*` number that names a format alone (1 to 4).
    /// `RECON_EXPORT_GLB_WITH_CAMERAS` (5) is a format plus an option: read every code with
    /// [`from_export_code`], which accepts it too.
    pub fn from_code(code: i32) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|format| format.code() == code)
            .ok_or_else(|| {
                if code == GLB_WITH_CAMERAS_CODE {
                    Error::invalid_argument(format!(
                        "export format {code} (RECON_EXPORT_GLB_WITH_CAMERAS) is GLB plus an \
                         option: read it with export::from_export_code"
                    ))
                } else {
                    unknown_code(code)
                }
            })
    }

    /// The C `RECON_EXPORT_*` number.
    pub fn code(self) -> i32 {
        match self {
            Self::Glb => 1,
            Self::PlyGaussians => 2,
            Self::PlyMesh => 3,
            Self::Obj => 4,
        }
    }

    /// A human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Glb => "GLB",
            Self::PlyGaussians => "Gaussian PLY",
            Self::PlyMesh => "mesh PLY",
            Self::Obj => "OBJ",
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Glb => "glb",
            Self::PlyGaussians | Self::PlyMesh => "ply",
            Self::Obj => "obj",
        }
    }
}

impl TryFrom<i32> for ExportFormat {
    type Error = Error;
    fn try_from(code: i32) -> Result<Self> {
        Self::from_code(code)
    }
}

fn unknown_code(code: i32) -> Error {
    Error::invalid_argument(format!(
        "export format {code} is not a RECON_EXPORT_* value (1 GLB, 2 PLY_GAUSSIANS, \
         3 PLY_MESH, 4 OBJ, 5 GLB_WITH_CAMERAS)"
    ))
}

/// The C ABI's `RECON_EXPORT_GLB_WITH_CAMERAS`: [`ExportFormat::Glb`] with
/// [`ExportOptions::cameras`]. (The C format codes are frozen `#define`s, so an option that
/// the C caller can ask for is a code of its own.)
pub const GLB_WITH_CAMERAS_CODE: i32 = 5;

/// What an export writes besides the format's own content. `Default` is what
/// [`export_to_bytes`] and [`export_to_path`] use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ExportOptions {
    /// Add the result's cameras (one per input view) as glTF camera nodes. GLB only; a result
    /// without cameras (TRELLIS estimates no poses) gives the GLB it would give without this.
    pub cameras: bool,
}

/// The format and options a C `RECON_EXPORT_*` number asks for (every code, 1 to 5).
pub fn from_export_code(code: i32) -> Result<(ExportFormat, ExportOptions)> {
    if code == GLB_WITH_CAMERAS_CODE {
        return Ok((ExportFormat::Glb, ExportOptions { cameras: true }));
    }
    Ok((ExportFormat::from_code(code)?, ExportOptions::default()))
}

/// The C `RECON_EXPORT_*` number for `format` with `options`; `None` when no code asks for
/// that combination (cameras in anything but GLB).
pub fn export_code(format: ExportFormat, options: &ExportOptions) -> Option<i32> {
    match (format, options.cameras) {
        (ExportFormat::Glb, true) => Some(GLB_WITH_CAMERAS_CODE),
        (_, true) => None,
        (format, false) => Some(format.code()),
    }
}

/// Encodes `output` in `format` with the default [`ExportOptions`]. Fails, without output,
/// when `output` lacks what the format needs (a mesh, Gaussians) or holds inconsistent data.
pub fn export_to_bytes(output: &Output, format: ExportFormat) -> Result<Vec<u8>> {
    export_to_bytes_with(output, format, &ExportOptions::default())
}

/// Encodes `output` in `format` with `options`. Fails, without output, when `output` lacks
/// what the format needs (a mesh, Gaussians), holds inconsistent data (cameras included when
/// asked for), or `options` asks for what `format` cannot hold (cameras outside GLB).
pub fn export_to_bytes_with(
    output: &Output,
    format: ExportFormat,
    options: &ExportOptions,
) -> Result<Vec<u8>> {
    encode(output, format, options).context(format!("{} export", format.name()))
}

fn encode(output: &Output, format: ExportFormat, options: &ExportOptions) -> Result<Vec<u8>> {
    if options.cameras && format != ExportFormat::Glb {
        return Err(Error::invalid_argument(format!(
            "{} has no place for cameras: only GLB holds them",
            format.name()
        )));
    }
    match format {
        ExportFormat::Glb => {
            let cameras: &[Camera] = if options.cameras {
                &output.cameras
            } else {
                &[]
            };
            glb::mesh_to_glb_with_cameras(required_mesh(output, format)?, cameras)
        }
        ExportFormat::PlyMesh => ply::mesh_to_ply(required_mesh(output, format)?),
        ExportFormat::Obj => obj::mesh_to_obj(required_mesh(output, format)?),
        ExportFormat::PlyGaussians => ply::gaussians_to_ply(required_gaussians(output, format)?),
    }
}

/// Encodes `output` in `format` with the default [`ExportOptions`] and writes it to `path`
/// atomically: into a temporary file in the same directory, flushed to disk, then renamed over
/// `path`. On any failure `path` is untouched and no temporary file remains.
pub fn export_to_path(output: &Output, format: ExportFormat, path: &Path) -> Result<()> {
    export_to_path_with(output, format, &ExportOptions::default(), path)
}

/// [`export_to_bytes_with`], written to `path` atomically as [`export_to_path`] does.
pub fn export_to_path_with(
    output: &Output,
    format: ExportFormat,
    options: &ExportOptions,
    path: &Path,
) -> Result<()> {
    let bytes = export_to_bytes_with(output, format, options)?;
    atomic::write_atomically(path, &bytes)
}

fn required_mesh(output: &Output, format: ExportFormat) -> Result<&Mesh> {
    output.mesh.as_ref().ok_or_else(|| {
        Error::invalid_argument(format!(
            "cannot export {}: this result has no mesh: ask for RECON_FORMAT_MESH",
            format.name()
        ))
    })
}

fn required_gaussians(output: &Output, format: ExportFormat) -> Result<&Gaussians> {
    output.gaussians.as_ref().ok_or_else(|| {
        Error::invalid_argument(format!(
            "cannot export {}: this result has no Gaussians: ask for RECON_FORMAT_GAUSSIANS",
            format.name()
        ))
    })
}

/// TRELLIS's Z-up frame to glTF's Y-up frame, as the reference's `to_glb` does:
/// `(x, y, z) → (x, z, −y)`. Used for every mesh format.
pub fn mesh_frame(p: [f32; 3]) -> [f32; 3] {
    [p[0], p[2], -p[1]]
}

/// A mesh whose arrays have been checked against each other.
pub(crate) struct CheckedMesh<'a> {
    pub positions: &'a [f32],
    /// `None` when the mesh has no colours.
    pub colors: Option<&'a [f32]>,
    pub indices: &'a [u32],
}

impl CheckedMesh<'_> {
    pub fn vertex_count(&self) -> usize {
        self.positions.len() / 3
    }
    pub fn face_count(&self) -> usize {
        self.indices.len() / 3
    }
    /// Vertex `i` in the export (Y-up) frame.
    pub fn position(&self, i: usize) -> [f32; 3] {
        let p = &self.positions[3 * i..3 * i + 3];
        mesh_frame([p[0], p[1], p[2]])
    }
    /// Colour of vertex `i`, clamped to 0..1 (the decoder's sigmoid keeps it there already).
    pub fn color(&self, i: usize) -> Option<[f32; 3]> {
        self.colors.map(|c| {
            let c = &c[3 * i..3 * i + 3];
            [c[0], c[1], c[2]].map(|v| v.clamp(0.0, 1.0))
        })
    }
}

/// Checks that a mesh's arrays agree: positions `[V,3]`, colours empty or `[V,3]`, indices
/// `[F,3]` below V, every float finite.
pub(crate) fn check_mesh(mesh: &Mesh) -> Result<CheckedMesh<'_>> {
    check_multiple("mesh.positions", mesh.positions.len(), 3, "3 per vertex")?;
    let vertices = mesh.positions.len() / 3;
    check_multiple("mesh.indices", mesh.indices.len(), 3, "3 per triangle")?;
    if !mesh.colors.is_empty() && mesh.colors.len() != 3 * vertices {
        return Err(Error::invalid_argument(format!(
            "mesh.colors has {} values, expected 0 or {} (3 per vertex x {vertices} vertices)",
            mesh.colors.len(),
            3 * vertices
        )));
    }
    check_finite("mesh.positions", &mesh.positions, 3, "vertex")?;
    check_finite("mesh.colors", &mesh.colors, 3, "vertex")?;
    if let Some((at, &index)) = mesh
        .indices
        .iter()
        .enumerate()
        .find(|(_, &index)| index as usize >= vertices)
    {
        return Err(Error::invalid_argument(format!(
            "mesh.indices[{at}] (triangle {}) is {index}, out of range for {vertices} vertices",
            at / 3
        )));
    }
    Ok(CheckedMesh {
        positions: &mesh.positions,
        colors: (!mesh.colors.is_empty()).then_some(mesh.colors.as_slice()),
        indices: &mesh.indices,
    })
}

/// Checks that the Gaussians' arrays agree with `opacity`'s count N and hold values the
/// inverse activations accept: finite, scales > 0, opacities in 0..1, non-zero quaternions.
/// Returns N.
pub(crate) fn check_gaussians(g: &Gaussians) -> Result<usize> {
    let n = g.opacity.len();
    for (name, values, per) in [
        ("gaussians.xyz", &g.xyz, 3),
        ("gaussians.features_dc", &g.features_dc, 3),
        ("gaussians.scaling", &g.scaling, 3),
        ("gaussians.rotation", &g.rotation, 4),
    ] {
        if values.len() != per * n {
            return Err(Error::invalid_argument(format!(
                "{name} has {} values, expected {} ({per} per Gaussian x {n} Gaussians, the \
                 length of gaussians.opacity)",
                values.len(),
                per * n
            )));
        }
        check_finite(name, values, per, "Gaussian")?;
    }
    check_finite("gaussians.opacity", &g.opacity, 1, "Gaussian")?;
    if let Some((i, o)) = g
        .opacity
        .iter()
        .enumerate()
        .find(|(_, o)| !(0.0..=1.0).contains(*o))
    {
        return Err(Error::invalid_argument(format!(
            "gaussians.opacity[{i}] is {o}, expected an activated opacity in 0..1"
        )));
    }
    if let Some((i, s)) = g.scaling.iter().enumerate().find(|(_, s)| **s <= 0.0) {
        return Err(Error::invalid_argument(format!(
            "gaussians.scaling[{i}] (Gaussian {}) is {s}, expected an activated scale > 0",
            i / 3
        )));
    }
    if let Some(i) = g
        .rotation
        .chunks_exact(4)
        .position(|q| q.iter().all(|c| *c == 0.0))
    {
        return Err(Error::invalid_argument(format!(
            "gaussians.rotation of Gaussian {i} is the zero quaternion, expected a unit \
             quaternion (w, x, y, z)"
        )));
    }
    Ok(n)
}

fn check_multiple(name: &str, len: usize, per: usize, why: &str) -> Result<()> {
    if len.is_multiple_of(per) {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "{name} has {len} values, expected a multiple of {per} ({why})"
        )))
    }
}

fn check_finite(name: &str, values: &[f32], per: usize, item: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::invalid_argument(format!(
            "{name}[{i}] ({item} {}) is {}, expected a finite number",
            i / per,
            values[i]
        ))),
    }
}

/// What a textured export does: the post-processing, the texture's image format, and (GLB)
/// whether to add the result's cameras.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TexturedExportOptions {
    pub postprocess: crate::postprocessing::PostprocessOptions,
    pub image_format: textured::ImageFormat,
    pub cameras: bool,
}

/// Post-processes `output`'s mesh with its Gaussians (see [`crate::postprocessing`]) on
/// `device` and encodes the textured result as GLB.
pub fn export_textured_to_bytes(
    output: &Output,
    options: &TexturedExportOptions,
    device: tch::Device,
) -> Result<Vec<u8>> {
    let mesh = textured_mesh(output, &options.postprocess, device)?;
    let cameras: &[Camera] = if options.cameras {
        &output.cameras
    } else {
        &[]
    };
    textured::textured_mesh_to_glb(&mesh, options.image_format, cameras)
        .context("textured GLB export")
}

/// Post-processes `output` as [`export_textured_to_bytes`] and writes it to `path`: as GLB
/// (atomically) for [`ExportFormat::Glb`], or as OBJ + MTL + image beside each other (written
/// as a set, the OBJ last; see [`textured`]) for [`ExportFormat::Obj`]. Returns the files
/// written. Other formats have no textures.
pub fn export_textured_to_path(
    output: &Output,
    format: ExportFormat,
    options: &TexturedExportOptions,
    device: tch::Device,
    path: &Path,
) -> Result<Vec<PathBuf>> {
    match format {
        ExportFormat::Glb => {
            let bytes = export_textured_to_bytes(output, options, device)?;
            atomic::write_atomically(path, &bytes)?;
            Ok(vec![path.to_path_buf()])
        }
        ExportFormat::Obj => {
            if options.cameras {
                return Err(Error::invalid_argument(
                    "OBJ has no place for cameras: only GLB holds them",
                ));
            }
            let mesh = textured_mesh(output, &options.postprocess, device)?;
            textured::write_textured_obj(&mesh, path, options.image_format)
                .context("textured OBJ export")
        }
        other => Err(Error::invalid_argument(format!(
            "{} cannot hold a textured mesh: use GLB or OBJ",
            other.name()
        ))),
    }
}

/// Runs the post-processing on `output`'s mesh; the Gaussians are needed unless only vertex
/// colours are asked for and the mesh has its own.
fn textured_mesh(
    output: &Output,
    options: &crate::postprocessing::PostprocessOptions,
    device: tch::Device,
) -> Result<crate::postprocessing::TexturedMesh> {
    let mesh = required_mesh(output, ExportFormat::Glb)?;
    let own_colors = options.vertex_colors_only && !mesh.colors.is_empty();
    let empty = Gaussians::default();
    let gaussians =
        match &output.gaussians {
            Some(g) => g,
            None if own_colors => &empty,
            None => return Err(Error::invalid_argument(
                "a textured export bakes the texture from the Gaussians: this result has none: \
                 ask for RECON_FORMAT_GAUSSIANS too (or for vertex colours only)",
            )),
        };
    crate::postprocessing::to_textured_mesh(gaussians, mesh, options, device)
        .context("post-processing for a textured export")
}
