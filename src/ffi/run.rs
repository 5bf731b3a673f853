//! `recon_run`: images and generation parameters in, a `recon_result` out.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::sync::atomic::Ordering;

use super::model::recon_model;
use super::result::recon_result;
use super::status::recon_status;
use super::{finish, guarded, guarded_or, non_null, read_versioned};
use crate::error::{Error, Result, ResultExt};
use crate::pipeline::{
    Formats, ImageInput, MultiImageMode, RunControl, RunParams, SamplerOverrides, Stage,
};

/// `recon_image.format`: encoded PNG, JPEG or WebP bytes (`data`, `size`).
pub const RECON_IMAGE_ENCODED: i32 = 0;
/// `recon_image.format`: raw 8-bit RGB pixels (`data`, `size`, `width`, `height`, `stride`).
pub const RECON_IMAGE_RGB8: i32 = 1;
/// `recon_image.format`: raw 8-bit RGBA pixels, straight (not premultiplied) alpha.
pub const RECON_IMAGE_RGBA8: i32 = 2;

/// Output formats (bit mask for `recon_run_params.formats`).
pub const RECON_FORMAT_GAUSSIANS: u32 = 1;
pub const RECON_FORMAT_MESH: u32 = 2;
pub const RECON_FORMAT_RADIANCE_FIELD: u32 = 4;

/// Multi-view modes (`recon_run_params.multi_image_mode`), as the reference's run_multi_image.
pub const RECON_MULTI_IMAGE_STOCHASTIC: i32 = 0;
pub const RECON_MULTI_IMAGE_MULTIDIFFUSION: i32 = 1;

/// `recon_run_params.*_cfg_strength` value that keeps pipeline.json's default.
pub const RECON_DEFAULT_CFG_STRENGTH: f32 = -1.0;

/// Pipeline stages reported through `recon_progress.stage`. `recon_run` reports stages 1–5, in
/// order, each from step 0 to its total; `RECON_STAGE_EXPORT` is reserved for front ends that
/// report their own export step (the `recon` CLI does), since exports are separate calls.
pub const RECON_STAGE_PREPROCESS: i32 = 1;
pub const RECON_STAGE_CONDITION: i32 = 2;
pub const RECON_STAGE_SPARSE_STRUCTURE: i32 = 3;
pub const RECON_STAGE_STRUCTURED_LATENT: i32 = 4;
pub const RECON_STAGE_DECODE: i32 = 5;
pub const RECON_STAGE_EXPORT: i32 = 6;

/// One input view. Fill with `recon_image_init`, then set `format`, `data`, `size` (and for
/// raw pixels `width`, `height`, `stride`). The bytes are only read during `recon_run`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_image {
    /// `sizeof(recon_image)`, set by `recon_image_init`.
    pub struct_size: u32,
    /// `RECON_IMAGE_ENCODED` (default), `RECON_IMAGE_RGB8` or `RECON_IMAGE_RGBA8`.
    pub format: i32,
    /// The bytes.
    pub data: *const u8,
    /// Number of bytes at `data`.
    pub size: usize,
    /// Raw pixels only: width and height in pixels.
    pub width: u32,
    pub height: u32,
    /// Raw pixels only: bytes from one row to the next (0: tightly packed).
    pub stride: usize,
}

/// A progress report, valid only during the callback.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_progress {
    pub struct_size: u32,
    /// One of `RECON_STAGE_*`.
    pub stage: i32,
    /// Steps done in this stage, out of `total`.
    pub step: u32,
    pub total: u32,
}

/// Progress callback, called on the thread running `recon_run`. Return nonzero to go on, 0 to
/// cancel (the run then returns `RECON_ERR_CANCELLED`).
pub type recon_progress_callback =
    Option<unsafe extern "C" fn(progress: *const recon_progress, user_data: *mut c_void) -> i32>;

/// Generation parameters. Fill with `recon_run_params_init`, then set fields.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_run_params {
    /// `sizeof(recon_run_params)`, set by `recon_run_params_init`.
    pub struct_size: u32,
    /// Sparse-structure sampler steps; 0 (default) keeps pipeline.json's.
    pub sparse_structure_steps: u32,
    /// Seed of the initial noise (default 42, as the reference's run()).
    pub seed: u64,
    /// Sparse-structure classifier-free guidance; `RECON_DEFAULT_CFG_STRENGTH` (default) keeps
    /// pipeline.json's. Otherwise finite, 0..100.
    pub sparse_structure_cfg_strength: f32,
    /// Structured-latent sampler steps; 0 (default) keeps pipeline.json's.
    pub slat_steps: u32,
    /// Structured-latent guidance; `RECON_DEFAULT_CFG_STRENGTH` (default) keeps pipeline.json's.
    pub slat_cfg_strength: f32,
    /// `RECON_FORMAT_*` bits (default Gaussians | mesh).
    pub formats: u32,
    /// `RECON_MULTI_IMAGE_*` (default stochastic), used with two or more views.
    pub multi_image_mode: i32,
    /// Nonzero (default): crop and resize the inputs as the reference does.
    pub preprocess: i32,
    /// Optional progress callback (default NULL).
    pub progress_callback: recon_progress_callback,
    /// Passed back to `progress_callback`.
    pub progress_user_data: *mut c_void,
}

/// Size of the v1 struct (through `progress_user_data`): the smallest `struct_size` accepted.
const RUN_PARAMS_V1_SIZE: usize =
    offset_of!(recon_run_params, progress_user_data) + size_of::<*mut c_void>();
const _: () = assert!(RUN_PARAMS_V1_SIZE == 56);
/// Size of the v1 `recon_image` (through `stride`).
const IMAGE_V1_SIZE: usize = offset_of!(recon_image, stride) + size_of::<usize>();
const _: () = assert!(IMAGE_V1_SIZE == 40);

impl recon_run_params {
    fn defaults() -> Self {
        Self {
            struct_size: size_of::<Self>() as u32,
            sparse_structure_steps: 0,
            seed: 42,
            sparse_structure_cfg_strength: RECON_DEFAULT_CFG_STRENGTH,
            slat_steps: 0,
            slat_cfg_strength: RECON_DEFAULT_CFG_STRENGTH,
            formats: RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH,
            multi_image_mode: RECON_MULTI_IMAGE_STOCHASTIC,
            preprocess: 1,
            progress_callback: None,
            progress_user_data: std::ptr::null_mut(),
        }
    }
}

impl recon_image {
    fn defaults() -> Self {
        Self {
            struct_size: size_of::<Self>() as u32,
            format: RECON_IMAGE_ENCODED,
            data: std::ptr::null(),
            size: 0,
            width: 0,
            height: 0,
            stride: 0,
        }
    }
}

/// Fills `params` with defaults (NULL is ignored).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_run_params_init(params: *mut recon_run_params) {
    guarded_or((), || {
        if !params.is_null() {
            // SAFETY: the caller passes a pointer to a recon_run_params.
            unsafe { params.write(recon_run_params::defaults()) };
        }
    })
}

/// Fills `image` with defaults: an empty encoded image (NULL is ignored).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_image_init(image: *mut recon_image) {
    guarded_or((), || {
        if !image.is_null() {
            // SAFETY: the caller passes a pointer to a recon_image.
            unsafe { image.write(recon_image::defaults()) };
        }
    })
}

fn sampler_overrides(steps: u32, cfg: f32, stage: &str) -> Result<SamplerOverrides> {
    let cfg_strength = if cfg == RECON_DEFAULT_CFG_STRENGTH {
        None
    } else if cfg.is_finite() && cfg >= 0.0 {
        Some(cfg)
    } else {
        return Err(Error::invalid_argument(format!(
            "recon_run_params.{stage}_cfg_strength is {cfg}; use a finite value >= 0 or RECON_DEFAULT_CFG_STRENGTH"
        )));
    };
    Ok(SamplerOverrides {
        steps: (steps != 0).then_some(steps),
        cfg_strength,
    })
}

/// The `RECON_FORMAT_*` bits of `bits` (the field `what`), refusing unknown ones.
fn formats_from_bits(bits: u32, what: &str) -> Result<Formats> {
    const KNOWN: u32 = RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH | RECON_FORMAT_RADIANCE_FIELD;
    if bits & !KNOWN != 0 {
        return Err(Error::invalid_argument(format!(
            "{what} has unknown bits 0x{:x}",
            bits & !KNOWN
        )));
    }
    Ok(Formats {
        gaussians: bits & RECON_FORMAT_GAUSSIANS != 0,
        mesh: bits & RECON_FORMAT_MESH != 0,
        radiance_field: bits & RECON_FORMAT_RADIANCE_FIELD != 0,
    })
}

fn run_params(p: &recon_run_params) -> Result<RunParams> {
    let formats = formats_from_bits(p.formats, "recon_run_params.formats")?;
    let mode = match p.multi_image_mode {
        RECON_MULTI_IMAGE_STOCHASTIC => MultiImageMode::Stochastic,
        RECON_MULTI_IMAGE_MULTIDIFFUSION => MultiImageMode::Multidiffusion,
        other => {
            return Err(Error::invalid_argument(format!(
                "recon_run_params.multi_image_mode is {other}; use RECON_MULTI_IMAGE_STOCHASTIC or RECON_MULTI_IMAGE_MULTIDIFFUSION"
            )))
        }
    };
    let params = RunParams {
        seed: p.seed,
        sparse_structure: sampler_overrides(
            p.sparse_structure_steps,
            p.sparse_structure_cfg_strength,
            "sparse_structure",
        )?,
        slat: sampler_overrides(p.slat_steps, p.slat_cfg_strength, "slat")?,
        formats,
        mode,
        preprocess: p.preprocess != 0,
        // The pipeline's own formula; the C ABI does not choose another yet.
        guidance: None,
        // Not in the C ABI yet: its runs keep refusing views without alpha, as before.
        remove_background: crate::pipeline::BackgroundRemoval::Never,
    };
    params.validate()?;
    Ok(params)
}

/// Borrows one C image as an [`ImageInput`].
///
/// # Safety
/// `image.data` must be NULL or point to `image.size` readable bytes for `'a`.
unsafe fn image_input<'a>(image: &recon_image) -> Result<ImageInput<'a>> {
    if image.data.is_null() {
        return Err(Error::invalid_argument("data is NULL"));
    }
    if image.size > isize::MAX as usize {
        return Err(Error::invalid_argument(format!(
            "size {} is not a possible buffer size",
            image.size
        )));
    }
    // SAFETY: forwarded to the caller.
    let data = unsafe { std::slice::from_raw_parts(image.data, image.size) };
    let channels = match image.format {
        RECON_IMAGE_ENCODED => return Ok(ImageInput::Encoded(data)),
        RECON_IMAGE_RGB8 => 3,
        RECON_IMAGE_RGBA8 => 4,
        other => {
            return Err(Error::invalid_argument(format!(
                "format is {other}; use RECON_IMAGE_ENCODED, RECON_IMAGE_RGB8 or RECON_IMAGE_RGBA8"
            )))
        }
    };
    let stride = if image.stride == 0 {
        image.width as usize * channels as usize
    } else {
        image.stride
    };
    Ok(ImageInput::Pixels {
        data,
        width: image.width,
        height: image.height,
        stride,
        channels,
    })
}

/// Reads the caller's image array.
///
/// # Safety
/// `images` must be NULL or point to `count` recon_image structs whose data stays valid for 'a.
unsafe fn image_inputs<'a>(
    images: *const recon_image,
    count: usize,
) -> Result<Vec<ImageInput<'a>>> {
    if count == 0 {
        return Err(Error::invalid_argument(
            "num_images is 0: give at least one view",
        ));
    }
    if images.is_null() {
        return Err(Error::invalid_argument("images is NULL"));
    }
    if count > crate::pipeline::MAX_VIEWS {
        return Err(Error::invalid_argument(format!(
            "num_images is {count}; at most {} views are accepted",
            crate::pipeline::MAX_VIEWS
        )));
    }
    // The array's element size is the caller's sizeof(recon_image), which its first element's
    // struct_size tells; a caller built against an older header has smaller elements.
    // SAFETY: a non-NULL caller array has at least one element, which begins with struct_size.
    let stride = unsafe { *(images as *const u32) } as usize;
    if !(IMAGE_V1_SIZE..=size_of::<recon_image>()).contains(&stride) || !stride.is_multiple_of(8) {
        return Err(Error::invalid_argument(format!(
            "images[0].struct_size is {stride}, expected {} (call recon_image_init)",
            size_of::<recon_image>()
        )));
    }
    (0..count)
        .map(|i| {
            // SAFETY: i < count elements of `stride` bytes each in the caller's array.
            let element = unsafe { (images as *const u8).add(i * stride) } as *const recon_image;
            // SAFETY: as above; each element's struct_size is checked again.
            let image = unsafe {
                read_versioned(
                    element,
                    recon_image::defaults(),
                    &[IMAGE_V1_SIZE],
                    "recon_image",
                )
            }?;
            if image.struct_size as usize != stride {
                return Err(Error::invalid_argument(format!(
                    "images[{i}].struct_size is {}, but images[0].struct_size is {stride}",
                    image.struct_size
                )));
            }
            // SAFETY: per this function's contract.
            unsafe { image_input(&image) }.context(format!("images[{i}]"))
        })
        .collect()
}

/// Generates a 3D asset from `num_images` views of one object. `params` may be NULL for
/// defaults. On success writes a new result to `*out_result` (free it with
/// `recon_result_free`); on failure writes nothing and `recon_model_last_error(model)` says
/// why. Runs on one model are serialised.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_run(
    model: *const recon_model,
    images: *const recon_image,
    num_images: usize,
    params: *const recon_run_params,
    out_result: *mut *mut recon_result,
) -> recon_status {
    // SAFETY: NULL or a live model.
    let model_ref = unsafe { model.as_ref() };
    let result = guarded(|| {
        // SAFETY: NULL or a live model.
        let model = unsafe { non_null(model, "model") }?;
        if out_result.is_null() {
            return Err(Error::invalid_argument("out_result is NULL"));
        }
        let c_params = if params.is_null() {
            recon_run_params::defaults()
        } else {
            // SAFETY: the caller passes a recon_run_params with a valid struct_size.
            unsafe {
                read_versioned(
                    params,
                    recon_run_params::defaults(),
                    &[RUN_PARAMS_V1_SIZE],
                    "recon_run_params",
                )
            }?
        };
        let run_params = run_params(&c_params)?;
        // SAFETY: the caller's array and bytes stay valid for the duration of this call.
        let inputs = unsafe { image_inputs(images, num_images) }?;

        let pipeline = model.pipeline.lock().unwrap_or_else(|p| p.into_inner());
        model.cancel.store(false, Ordering::SeqCst);
        let progress = |stage: Stage, step: usize, total: usize| -> bool {
            match c_params.progress_callback {
                None => true,
                Some(callback) => {
                    let report = recon_progress {
                        struct_size: size_of::<recon_progress>() as u32,
                        stage: stage as i32,
                        step: step as u32,
                        total: total as u32,
                    };
                    // SAFETY: a valid callback per the caller's contract.
                    unsafe { callback(&report, c_params.progress_user_data) != 0 }
                }
            }
        };
        let control = RunControl {
            cancel: Some(&model.cancel),
            progress: Some(&progress),
        };
        let output = pipeline.run(&inputs, &run_params, &control)?;
        let result = Box::into_raw(Box::new(recon_result::new(output)));
        // SAFETY: checked non-NULL above.
        unsafe { out_result.write(result) };
        Ok(())
    });
    finish(result, model_ref.map(|m| &m.errors))
}
