//! From a generated asset (Gaussians + mesh) to a game-ready textured mesh: TRELLIS's
//! `utils/postprocessing_utils.py` `to_glb` (research/trellis.md §4.4), natively.
//!
//! The steps, in the reference's order:
//! 1. [`simplify`]: weld duplicate vertices, then quadric decimation removing the fraction
//!    [`PostprocessOptions::simplify`] of the faces (meshoptimizer; the reference uses VTK).
//! 2. [`fill_holes`]: remove faces no camera sees (visibility from a sphere of views and the
//!    reference's minimum cut), then close small holes.
//! 3. [`uv_unwrap`]: xatlas charts and atlas; vertices are re-indexed by xatlas's mapping.
//! 4. [`bake`]: render the Gaussians from `views` cameras and bake a texture of
//!    `texture_size²` texels, by averaging ([`BakeMode::Fast`]) or by the reference's
//!    optimisation ([`BakeMode::Optimize`]).
//!
//! [`PostprocessOptions::vertex_colors_only`] stops after step 2 and returns per-vertex colours
//! instead of a texture: the mesh's own colours when it has them (the simplifier interpolates
//! them), else colours baked per vertex from the same Gaussian renders.
//!
//! Everything stays in the native **Z-up** frame: the writers (`export`) turn it to glTF's
//! Y-up as they do for untextured meshes. The texture holds display-referred (sRGB-encoded)
//! values, the renders' own, unchanged: glTF declares base-colour textures sRGB, so viewers
//! show them as rendered. (The reference's GLBs look dark mostly because it leaves glTF's
//! default metallic factor 1.0; ours set it to 0, see `export::textured`.)
//!
//! Tensor work (rasterisation, splatting, baking) runs on the `device` passed to
//! [`to_textured_mesh`]; mesh processing (simplification, topology, unwrapping) on the CPU.

pub mod bake;
pub mod fill_holes;
pub mod simplify;
pub mod uv_unwrap;

use std::time::Instant;

use tch::Device;

pub use bake::BakeMode;
pub use fill_holes::{FillHolesOptions, FillHolesReport};
pub use simplify::SimplifyReport;

use crate::error::{Error, Result};
use crate::export::glb::vertex_normals;
use crate::pipeline::{Gaussians, Mesh};
use crate::render::gaussian::GaussianScene;

/// The largest number of baking views or visibility views accepted.
pub const MAX_VIEWS: usize = 100_000;
/// The largest render or visibility resolution accepted, in pixels per side.
pub const MAX_RESOLUTION: u32 = 8192;

/// The options of [`to_textured_mesh`]. [`Default`] is the reference `to_glb`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostprocessOptions {
    /// Fraction of the faces removed by decimation, in [0, 1) (0.95: keep 5 %; 0: none).
    pub simplify: f32,
    /// Remove invisible inner faces and close small holes.
    pub fill_holes: bool,
    /// The largest hole area closed (and opened by removing inner faces), in the asset's
    /// units² (the object spans about 1).
    pub fill_holes_max_size: f32,
    /// Views and resolution of the visibility rasterisation (the reference: 1000 at 1024²).
    pub fill_holes_views: usize,
    pub fill_holes_resolution: u32,
    /// Side of the square base-colour texture, in texels.
    pub texture_size: u32,
    pub bake_mode: BakeMode,
    /// Gaussian renders baked from (the reference: 100) and their resolution (1024²).
    pub views: usize,
    pub render_resolution: u32,
    /// Per-vertex colours instead of UVs and a texture.
    pub vertex_colors_only: bool,
    /// Seeds the random view order of [`BakeMode::Optimize`].
    pub seed: u64,
}

impl Default for PostprocessOptions {
    fn default() -> Self {
        Self {
            simplify: 0.95,
            fill_holes: true,
            fill_holes_max_size: 0.04,
            fill_holes_views: 1000,
            fill_holes_resolution: 1024,
            texture_size: 1024,
            bake_mode: BakeMode::REFERENCE,
            views: 100,
            render_resolution: 1024,
            vertex_colors_only: false,
            seed: 0,
        }
    }
}

impl PostprocessOptions {
    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid_argument(format!("postprocess: {what}")));
        if !(self.simplify.is_finite() && (0.0..1.0).contains(&self.simplify)) {
            return bad(format!(
                "simplify must be in [0, 1), found {}",
                self.simplify
            ));
        }
        if !(self.fill_holes_max_size.is_finite() && self.fill_holes_max_size >= 0.0) {
            return bad(format!(
                "fill_holes_max_size must be finite and >= 0, found {}",
                self.fill_holes_max_size
            ));
        }
        for (name, count) in [
            ("fill_holes_views", self.fill_holes_views),
            ("views", self.views),
        ] {
            if count == 0 || count > MAX_VIEWS {
                return bad(format!("{name} must be in 1..={MAX_VIEWS}, found {count}"));
            }
        }
        for (name, side) in [
            ("fill_holes_resolution", self.fill_holes_resolution),
            ("render_resolution", self.render_resolution),
        ] {
            if side == 0 || side > MAX_RESOLUTION {
                return bad(format!(
                    "{name} must be in 1..={MAX_RESOLUTION}, found {side}"
                ));
            }
        }
        if self.texture_size == 0 || self.texture_size > bake::MAX_TEXTURE_SIZE {
            return bad(format!(
                "texture_size must be in 1..={}, found {}",
                bake::MAX_TEXTURE_SIZE,
                self.texture_size
            ));
        }
        if let BakeMode::Optimize { lambda_tv, .. } = self.bake_mode {
            if !(lambda_tv.is_finite() && lambda_tv >= 0.0) {
                return bad(format!(
                    "lambda_tv must be finite and >= 0, found {lambda_tv}"
                ));
            }
        }
        Ok(())
    }
}

/// A mesh ready for a textured export, in the native Z-up frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TexturedMesh {
    /// `[V, 3]` positions.
    pub positions: Vec<f32>,
    /// `[V, 3]` unit normals (area-weighted, computed before the UV seams split vertices, so
    /// shading is smooth across seams).
    pub normals: Vec<f32>,
    /// `[V, 2]` UVs in [0, 1], glTF convention (v down the image); empty without a texture.
    pub uvs: Vec<f32>,
    /// `[F, 3]` triangles.
    pub indices: Vec<u32>,
    /// The base-colour texture, display-referred 8-bit RGB; `None` for vertex colours only.
    pub texture: Option<image::RgbImage>,
    /// `[V, 3]` display-referred colours in 0..1, or empty.
    pub colors: Vec<f32>,
}

impl TexturedMesh {
    pub fn vertex_count(&self) -> usize {
        self.positions.len() / 3
    }
    pub fn face_count(&self) -> usize {
        self.indices.len() / 3
    }
}

/// What [`postprocess`] did, with the time of each step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PostprocessReport {
    pub simplify: Option<SimplifyReport>,
    pub fill_holes: Option<FillHolesReport>,
    /// UV charts and triangles xatlas left out of every chart (UVs all 0).
    pub charts: usize,
    pub unmapped_faces: usize,
    /// Texels that received observations (Fast) or lie in a chart (Optimize).
    pub covered_texels: usize,
    /// The last Optimize step's loss.
    pub final_loss: f64,
    /// Seconds spent per step: simplify, fill holes, unwrap, render, bake.
    pub seconds: [f64; 5],
}

/// The reference's `to_glb` up to the textured mesh (see the module documentation).
pub fn to_textured_mesh(
    gaussians: &Gaussians,
    mesh: &Mesh,
    options: &PostprocessOptions,
    device: Device,
) -> Result<TexturedMesh> {
    Ok(postprocess(gaussians, mesh, options, device)?.0)
}

/// [`to_textured_mesh`], with a report of what each step did.
pub fn postprocess(
    gaussians: &Gaussians,
    mesh: &Mesh,
    options: &PostprocessOptions,
    device: Device,
) -> Result<(TexturedMesh, PostprocessReport)> {
    options.validate()?;
    let mut report = PostprocessReport::default();
    if mesh.indices.is_empty() {
        return Err(Error::invalid_argument(
            "postprocess: the mesh has no triangles",
        ));
    }
    let mut clock = Instant::now();
    // Colours steer the decimation only when they are the output.
    let color_weight = if options.vertex_colors_only {
        simplify::COLOR_WEIGHT
    } else {
        0.0
    };
    let (mut work, simplified) = simplify::simplify(mesh, options.simplify, color_weight)?;
    tracing::debug!(?simplified, "postprocess: simplified");
    report.simplify = Some(simplified);
    report.seconds[0] = lap(&mut clock);

    if options.fill_holes {
        let fill = FillHolesOptions {
            max_hole_size: options.fill_holes_max_size,
            max_hole_edges: fill_holes::max_hole_edges_for(options.simplify),
            views: options.fill_holes_views,
            resolution: options.fill_holes_resolution,
        };
        let (filled, filled_report) = fill_holes::fill_holes(&work, &fill, device)?;
        tracing::debug!(?filled_report, "postprocess: holes filled");
        work = filled;
        report.fill_holes = Some(filled_report);
    }
    report.seconds[1] = lap(&mut clock);
    if work.indices.is_empty() {
        return Err(Error::invalid_argument(
            "postprocess: no visible triangle is left (is the mesh inside the unit cube?)",
        ));
    }
    let positions3: Vec<[f32; 3]> = work
        .positions
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let normals = vertex_normals(&positions3, &work.indices);

    if options.vertex_colors_only {
        let colors = if work.colors.is_empty() {
            let scene = GaussianScene::new(gaussians, device)?;
            let observations =
                bake::render_observations(&scene, options.views, options.render_resolution)?;
            report.seconds[3] = lap(&mut clock);
            bake::bake_vertex_colors(&work.positions, &work.indices, &observations, device)?
        } else {
            work.colors.clone()
        };
        let textured = TexturedMesh {
            positions: work.positions,
            normals: normals.into_iter().flatten().collect(),
            uvs: Vec::new(),
            indices: work.indices,
            texture: None,
            colors,
        };
        report.seconds[4] = lap(&mut clock);
        return Ok((textured, report));
    }

    let layout = uv_unwrap::unwrap(&work.positions, &work.indices)?;
    report.charts = layout.charts;
    report.unmapped_faces = layout.unmapped_faces;
    let gather = |values: &[f32]| -> Vec<f32> {
        if values.is_empty() {
            return Vec::new();
        }
        layout
            .vertex_map
            .iter()
            .flat_map(|&i| values[3 * i as usize..3 * i as usize + 3].iter().copied())
            .collect()
    };
    let positions = gather(&work.positions);
    let normals = gather(&normals.into_iter().flatten().collect::<Vec<f32>>());
    let colors = gather(&work.colors);
    report.seconds[2] = lap(&mut clock);

    let scene = GaussianScene::new(gaussians, device)?;
    let observations = bake::render_observations(&scene, options.views, options.render_resolution)?;
    drop(scene);
    report.seconds[3] = lap(&mut clock);
    let baked = bake::bake_texture(
        &positions,
        &layout.indices,
        &layout.uvs,
        &observations,
        &bake::BakeOptions {
            texture_size: options.texture_size,
            mode: options.bake_mode,
            seed: options.seed,
        },
        device,
    )?;
    report.covered_texels = baked.covered_texels;
    report.final_loss = baked.final_loss;
    let texture = bake::to_rgb8(&baked.texture)?;
    report.seconds[4] = lap(&mut clock);
    tracing::debug!(?report, "postprocess: done");
    Ok((
        TexturedMesh {
            positions,
            normals,
            uvs: layout.uvs,
            indices: layout.indices,
            texture: Some(texture),
            colors,
        },
        report,
    ))
}

/// Seconds since `clock`, which restarts.
fn lap(clock: &mut Instant) -> f64 {
    let now = Instant::now();
    let seconds = now.duration_since(*clock).as_secs_f64();
    *clock = now;
    seconds
}
