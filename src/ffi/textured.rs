//! Textured exports of a `recon_result`: TRELLIS's `to_glb` post-processing (decimation, hole
//! filling, UV unwrap, texture baked from the Gaussians) written as a GLB with a base-colour
//! texture or as OBJ + MTL + texture image. See `crate::postprocessing` and
//! `crate::export::textured`.

use std::ffi::c_char;
use std::mem::size_of;
use std::path::Path;

use super::result::{recon_buffer, recon_result, RECON_EXPORT_GLB_WITH_CAMERAS, RECON_EXPORT_OBJ};
use super::status::recon_status;
use super::turntable::device_from_c;
use super::{finish, guarded, guarded_or, init_versioned, non_null, read_versioned, utf8};
use crate::error::{Error, Result};
use crate::export::textured::ImageFormat;
use crate::export::{
    export_textured_to_bytes, export_textured_to_path, ExportFormat, TexturedExportOptions,
};
use crate::postprocessing::{BakeMode, PostprocessOptions};

/// `recon_textured_export_params.image_format`: the texture as lossless PNG (the default).
pub const RECON_TEXTURE_PNG: i32 = 0;
/// `recon_textured_export_params.image_format`: the texture as JPEG at `jpeg_quality`.
pub const RECON_TEXTURE_JPEG: i32 = 1;
/// `recon_textured_export_params.image_format`: the texture as lossless WebP (in GLB through
/// the `EXT_texture_webp` extension, which viewers must support).
pub const RECON_TEXTURE_WEBP: i32 = 2;

/// `recon_textured_export_params.bake_mode`: project every view's pixels to their texels and
/// average (seconds).
pub const RECON_BAKE_FAST: i32 = 0;
/// `recon_textured_export_params.bake_mode`: the reference's optimisation (`bake_steps` Adam
/// steps on the masked L1 loss + `bake_lambda_tv` · total variation; the default).
pub const RECON_BAKE_OPTIMIZE: i32 = 1;

/// How to post-process and write a textured mesh. Fill with
/// `recon_textured_export_params_init` (in C and C++ a macro that passes this header's struct
/// size, see below), then set fields. The defaults are TRELLIS's `to_glb`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_textured_export_params {
    /// `sizeof(recon_textured_export_params)`, set by `recon_textured_export_params_init`.
    pub struct_size: u32,
    /// `RECON_TEXTURE_*` (default `RECON_TEXTURE_PNG`).
    pub image_format: i32,
    /// Fraction of the triangles removed by decimation, in [0, 1) (default 0.95: keep 5 %).
    pub simplify: f32,
    /// Nonzero (default): remove faces no camera sees and close small holes.
    pub fill_holes: i32,
    /// The largest hole area closed, in the asset's units² (default 0.04; the object spans 1).
    pub fill_holes_max_size: f32,
    /// Side of the square base-colour texture in texels (default 1024).
    pub texture_size: u32,
    /// `RECON_BAKE_*` (default `RECON_BAKE_OPTIMIZE`).
    pub bake_mode: i32,
    /// `RECON_BAKE_OPTIMIZE`'s steps (default 2500) and total-variation weight (default 0.01).
    pub bake_steps: u32,
    pub bake_lambda_tv: f32,
    /// Gaussian renders the texture is baked from (default 100) and their size (default 1024).
    pub views: u32,
    pub render_resolution: u32,
    /// Nonzero: per-vertex colours instead of UVs and a texture (default 0).
    pub vertex_colors_only: i32,
    /// `RECON_TEXTURE_JPEG`'s quality, 1..100 (default 90).
    pub jpeg_quality: u32,
    /// `RECON_DEVICE_AUTO` (default: the GPU of the model that generated the result, else the
    /// first CUDA device if usable, else the CPU), `RECON_DEVICE_CPU` or a CUDA device index
    /// >= 0: where rendering and baking run.
    pub device: i32,
    /// Views (default 1000) and resolution (default 1024) of the hole-filling visibility pass.
    pub fill_holes_views: u32,
    pub fill_holes_resolution: u32,
    /// Seeds the random view order of `RECON_BAKE_OPTIMIZE` (default 0).
    pub seed: u64,
}

/// The v1 size: the whole struct as first released.
const TEXTURED_PARAMS_V1_SIZE: usize = size_of::<recon_textured_export_params>();
const _: () = assert!(TEXTURED_PARAMS_V1_SIZE == 72);
const TEXTURED_PARAMS_SIZES: [usize; 1] = [TEXTURED_PARAMS_V1_SIZE];
/// `jpeg_quality`'s default.
const DEFAULT_JPEG_QUALITY: u32 = 90;

impl recon_textured_export_params {
    fn defaults() -> Self {
        let p = PostprocessOptions::default();
        let (steps, lambda_tv) = match BakeMode::REFERENCE {
            BakeMode::Optimize { steps, lambda_tv } => (steps as u32, lambda_tv),
            BakeMode::Fast => (2500, 0.01),
        };
        Self {
            struct_size: size_of::<Self>() as u32,
            image_format: RECON_TEXTURE_PNG,
            simplify: p.simplify,
            fill_holes: i32::from(p.fill_holes),
            fill_holes_max_size: p.fill_holes_max_size,
            texture_size: p.texture_size,
            bake_mode: RECON_BAKE_OPTIMIZE,
            bake_steps: steps,
            bake_lambda_tv: lambda_tv,
            views: p.views as u32,
            render_resolution: p.render_resolution,
            vertex_colors_only: i32::from(p.vertex_colors_only),
            jpeg_quality: DEFAULT_JPEG_QUALITY,
            device: super::model::RECON_DEVICE_AUTO,
            fill_holes_views: p.fill_holes_views as u32,
            fill_holes_resolution: p.fill_holes_resolution,
            seed: p.seed,
        }
    }
}

/// The library's options (checked) and device from the caller's params (NULL: defaults);
/// `auto` is where `RECON_DEVICE_AUTO` runs ([`recon_result::auto_device`]).
///
/// # Safety
/// `params` must be NULL or point to a struct whose `struct_size` bytes are readable.
unsafe fn options(
    params: *const recon_textured_export_params,
    cameras: bool,
    auto: tch::Device,
) -> Result<(TexturedExportOptions, tch::Device)> {
    let p = if params.is_null() {
        recon_textured_export_params::defaults()
    } else {
        // SAFETY: forwarded to the caller.
        unsafe {
            read_versioned(
                params,
                recon_textured_export_params::defaults(),
                &TEXTURED_PARAMS_SIZES,
                "recon_textured_export_params",
            )
        }?
    };
    let image_format = match p.image_format {
        RECON_TEXTURE_PNG => ImageFormat::Png,
        RECON_TEXTURE_WEBP => ImageFormat::WebP,
        RECON_TEXTURE_JPEG => match u8::try_from(p.jpeg_quality) {
            Ok(quality) if (1..=100).contains(&quality) => ImageFormat::Jpeg { quality },
            _ => {
                return Err(Error::invalid_argument(format!(
                    "recon_textured_export_params.jpeg_quality is {}; use 1 to 100",
                    p.jpeg_quality
                )))
            }
        },
        other => {
            return Err(Error::invalid_argument(format!(
                "recon_textured_export_params.image_format is {other}; use RECON_TEXTURE_PNG, \
                 RECON_TEXTURE_JPEG or RECON_TEXTURE_WEBP"
            )))
        }
    };
    let bake_mode = match p.bake_mode {
        RECON_BAKE_FAST => BakeMode::Fast,
        RECON_BAKE_OPTIMIZE if p.bake_steps > 0 => BakeMode::Optimize {
            steps: p.bake_steps as usize,
            lambda_tv: p.bake_lambda_tv,
        },
        RECON_BAKE_OPTIMIZE => {
            return Err(Error::invalid_argument(
                "recon_textured_export_params.bake_steps is 0; RECON_BAKE_OPTIMIZE needs at \
                 least one step",
            ))
        }
        other => {
            return Err(Error::invalid_argument(format!(
                "recon_textured_export_params.bake_mode is {other}; use RECON_BAKE_FAST or \
                 RECON_BAKE_OPTIMIZE"
            )))
        }
    };
    let postprocess = PostprocessOptions {
        simplify: p.simplify,
        fill_holes: p.fill_holes != 0,
        fill_holes_max_size: p.fill_holes_max_size,
        fill_holes_views: p.fill_holes_views as usize,
        fill_holes_resolution: p.fill_holes_resolution,
        texture_size: p.texture_size,
        bake_mode,
        views: p.views as usize,
        render_resolution: p.render_resolution,
        vertex_colors_only: p.vertex_colors_only != 0,
        seed: p.seed,
    };
    postprocess
        .validate()
        .map_err(|e| e.context("recon_textured_export_params"))?;
    let device = device_from_c(p.device, "recon_textured_export_params.device", auto)?;
    Ok((
        TexturedExportOptions {
            postprocess,
            image_format,
            cameras,
        },
        device,
    ))
}

/// The file format and whether cameras go in, from a `RECON_EXPORT_*` code.
fn textured_format(format: i32) -> Result<(ExportFormat, bool)> {
    let (format, options) = crate::export::from_export_code(format)?;
    match format {
        ExportFormat::Glb | ExportFormat::Obj => Ok((format, options.cameras)),
        other => Err(Error::invalid_argument(format!(
            "{} cannot hold a textured mesh: use RECON_EXPORT_GLB, \
             RECON_EXPORT_GLB_WITH_CAMERAS or RECON_EXPORT_OBJ",
            other.name()
        ))),
    }
}

/// Fills `params` with the defaults of the v1 struct (NULL is ignored). In C and C++ this
/// header turns `recon_textured_export_params_init(p)` into
/// `recon_textured_export_params_init_sized(p, sizeof(recon_textured_export_params))`.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_textured_export_params_init(
    params: *mut recon_textured_export_params,
) {
    guarded_or((), || {
        // SAFETY: per the contract, `params` is NULL or holds at least the v1 struct.
        unsafe {
            init_versioned(
                params,
                TEXTURED_PARAMS_V1_SIZE,
                recon_textured_export_params::defaults(),
                &TEXTURED_PARAMS_SIZES,
            )
        };
    })
}

/// Fills `params` with defaults for a struct of `size` bytes
/// (`sizeof(recon_textured_export_params)` of the header the caller was built with): the fields
/// of the largest released version that fits, with `struct_size` set to that version's size.
/// Defaults (TRELLIS's `to_glb`): PNG, simplify 0.95, fill holes (0.04, 1000 views at 1024),
/// 1024² texture baked by `RECON_BAKE_OPTIMIZE` (2500 steps, TV 0.01) from 100 renders at
/// 1024², JPEG quality 90, `RECON_DEVICE_AUTO`, seed 0. Returns RECON_ERR_INVALID_ARGUMENT,
/// writing nothing, for NULL or a size below the v1 struct.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_textured_export_params_init_sized(
    params: *mut recon_textured_export_params,
    size: usize,
) -> recon_status {
    let result = guarded(|| {
        if params.is_null() {
            return Err(Error::invalid_argument("params is NULL"));
        }
        if size < TEXTURED_PARAMS_V1_SIZE {
            return Err(Error::invalid_argument(format!(
                "recon_textured_export_params size {size} is below the v1 struct \
                 ({TEXTURED_PARAMS_V1_SIZE} bytes)"
            )));
        }
        // SAFETY: the caller owns `size` bytes at `params`.
        unsafe {
            init_versioned(
                params,
                size,
                recon_textured_export_params::defaults(),
                &TEXTURED_PARAMS_SIZES,
            )
        };
        Ok(())
    });
    finish(result, None)
}

/// Post-processes `result` into a textured mesh (TRELLIS's `to_glb`: decimation, hole filling,
/// UV unwrap, texture baked from the Gaussians) and writes it to `path` (UTF-8):
/// `RECON_EXPORT_GLB` (or `RECON_EXPORT_GLB_WITH_CAMERAS`) writes one GLB with a base-colour
/// texture; `RECON_EXPORT_OBJ` writes the OBJ with its MTL and texture image beside it, named
/// after the OBJ (the OBJ renamed into place last). Needs the result's mesh and, for a
/// texture (or a mesh without colours), its Gaussians. `params` may be NULL for the defaults.
/// Files appear whole or not at all. This can take minutes with the defaults on a CPU.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_export_textured(
    result: *const recon_result,
    format: i32,
    params: *const recon_textured_export_params,
    path: *const c_char,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let path = unsafe { utf8(path, "path") }?;
        let (format, cameras) = textured_format(format)?;
        // SAFETY: NULL or a struct with its struct_size.
        let (options, device) = unsafe { options(params, cameras, r.auto_device()) }?;
        export_textured_to_path(r.output(), format, &options, device, Path::new(path))?;
        Ok(())
    });
    finish(status, result_errors(result))
}

/// As `recon_result_export_textured` for `RECON_EXPORT_GLB` or
/// `RECON_EXPORT_GLB_WITH_CAMERAS`, into a new library-owned buffer (free it with
/// `recon_buffer_free`). OBJ needs several files and is refused here.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_export_textured_buffer(
    result: *const recon_result,
    format: i32,
    params: *const recon_textured_export_params,
    out_buffer: *mut *mut recon_buffer,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        if out_buffer.is_null() {
            return Err(Error::invalid_argument("out_buffer is NULL"));
        }
        let (format, cameras) = textured_format(format)?;
        if format == ExportFormat::Obj {
            return Err(Error::invalid_argument(format!(
                "a textured OBJ is several files (OBJ, MTL, image): write it to a path with \
                 recon_result_export_textured (RECON_EXPORT_OBJ is {RECON_EXPORT_OBJ})"
            )));
        }
        // SAFETY: NULL or a struct with its struct_size.
        let (options, device) = unsafe { options(params, cameras, r.auto_device()) }?;
        let bytes = export_textured_to_bytes(r.output(), &options, device)?;
        let buffer = Box::into_raw(Box::new(recon_buffer::new(bytes)));
        // SAFETY: checked non-NULL above.
        unsafe { out_buffer.write(buffer) };
        Ok(())
    });
    finish(status, result_errors(result))
}

fn result_errors<'a>(result: *const recon_result) -> Option<&'a super::ErrorLog> {
    // SAFETY: NULL or a live result, per the header.
    unsafe { result.as_ref() }.map(|r| r.errors())
}

const _: () = assert!(RECON_EXPORT_GLB_WITH_CAMERAS == crate::export::GLB_WITH_CAMERAS_CODE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_to_glb() {
        let mut p = std::mem::MaybeUninit::<recon_textured_export_params>::uninit();
        // SAFETY: a whole struct.
        let status = unsafe { recon_textured_export_params_init_sized(p.as_mut_ptr(), 72) };
        assert_eq!(status, recon_status::RECON_OK);
        // SAFETY: initialised above.
        let p = unsafe { p.assume_init() };
        assert_eq!((p.simplify, p.texture_size, p.views), (0.95, 1024, 100));
        assert_eq!((p.bake_mode, p.bake_steps), (RECON_BAKE_OPTIMIZE, 2500));
        // SAFETY: a valid struct.
        let (options, _) = unsafe { options(&p, false, tch::Device::Cpu) }.unwrap();
        assert_eq!(options.postprocess, PostprocessOptions::default());
        assert_eq!(options.image_format, ImageFormat::Png);
    }

    #[test]
    fn bad_fields_are_named() {
        let check = |edit: fn(&mut recon_textured_export_params), needle: &str| {
            let mut p = recon_textured_export_params::defaults();
            edit(&mut p);
            // SAFETY: a valid struct.
            let err = unsafe { options(&p, false, tch::Device::Cpu) }
                .err()
                .unwrap();
            assert!(err.message().contains(needle), "{needle}: {err}");
        };
        check(|p| p.image_format = 5, "image_format is 5");
        check(
            |p| {
                p.image_format = RECON_TEXTURE_JPEG;
                p.jpeg_quality = 0;
            },
            "jpeg_quality is 0",
        );
        check(|p| p.bake_mode = 9, "bake_mode is 9");
        check(|p| p.bake_steps = 0, "bake_steps is 0");
        check(|p| p.simplify = 1.0, "simplify");
        check(|p| p.texture_size = 0, "texture_size");
        check(|p| p.device = -9, "device is -9");
        check(|p| p.struct_size = 8, "struct_size is 8");
        assert!(textured_format(crate::ffi::result::RECON_EXPORT_PLY_MESH).is_err());
        assert_eq!(
            textured_format(RECON_EXPORT_GLB_WITH_CAMERAS).unwrap(),
            (ExportFormat::Glb, true)
        );
    }
}
