//! `recon_run`: images and generation parameters in, a `recon_result` out.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::sync::atomic::Ordering;

use super::model::recon_model;
use super::result::recon_result;
use super::status::recon_status;
use super::{finish, guarded, guarded_or, init_versioned, non_null, read_versioned};
use crate::error::{Error, Result, ResultExt};
use crate::pipeline::{
    BackgroundRemoval, Formats, ImageInput, MultiImageMode, RunControl, RunParams,
    SamplerOverrides, Stage,
};
use crate::samplers::GuidanceFormula;

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

/// `recon_run_params.remove_background` (struct v2): which views go through background
/// removal (BiRefNet, from `recon_load_params.background_model`) before preprocessing. Only
/// when `preprocess` is on, as in the reference pipelines.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum recon_background_removal {
    /// Views without a useful alpha channel (RGB, or RGBA whose alpha is 255 everywhere), as
    /// the reference pipelines decide. The default of `recon_run_params_init`.
    RECON_BACKGROUND_AUTO = 0,
    /// Every view, ignoring any alpha it has.
    RECON_BACKGROUND_ALWAYS = 1,
    /// No view: views must bring their own alpha; preprocessing refuses the others with
    /// `RECON_ERR_UNSUPPORTED`. What a v1 `recon_run_params` (and NULL params) get.
    RECON_BACKGROUND_NEVER = 2,
}

/// `recon_run_params.guidance` (struct v2): how both samplers combine the conditional and
/// negative velocities under classifier-free guidance.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum recon_guidance {
    /// The pipeline's own formula (default): TRELLIS's for TRELLIS, ReconViaGen v0.2's for
    /// TRELLIS-VGGT.
    RECON_GUIDANCE_DEFAULT = 0,
    /// TRELLIS's `(1 + s)·v_cond − s·v_neg` (on TRELLIS-VGGT: the Hugging Face Space variant,
    /// without guidance rescale).
    RECON_GUIDANCE_TRELLIS = 1,
    /// ReconViaGen v0.2's `w·v_cond + (1 − w)·v_neg` with its guidance rescale.
    RECON_GUIDANCE_RECONVIAGEN = 2,
}

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

/// Generation parameters. Fill with `recon_run_params_init` (in C and C++ a macro that passes
/// this header's struct size, see below), then set fields.
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
    /// Since 0.2 (struct v2). A `recon_background_removal`: `RECON_BACKGROUND_AUTO`
    /// (default) removes the background of views without a useful alpha channel. A v1 struct
    /// (`struct_size` 56) runs with `RECON_BACKGROUND_NEVER`, as v1 did.
    pub remove_background: i32,
    /// Since 0.2 (struct v2). A `recon_guidance`: `RECON_GUIDANCE_DEFAULT` (default) keeps the
    /// pipeline's own formula.
    pub guidance: i32,
    /// Since 0.3 (struct v3). Nonzero (default): TRELLIS-VGGT estimates a camera per view
    /// (VGGT's camera and point heads, then their registration onto the asset; see
    /// `recon_result_camera`). 0 skips that work: the result has no cameras and the run is the
    /// reference pipeline's `run` alone, faster and with less GPU memory. TRELLIS ignores it
    /// (it estimates no cameras). v1 and v2 structs run with cameras, as before.
    pub estimate_cameras: i32,
}

/// Size of the v1 struct (through `progress_user_data`): the smallest `struct_size` accepted,
/// fixed forever so that callers built against v1 keep working when fields are appended.
const RUN_PARAMS_V1_SIZE: usize =
    offset_of!(recon_run_params, progress_user_data) + size_of::<*mut c_void>();
const _: () = assert!(RUN_PARAMS_V1_SIZE == 56);
/// Size of the v2 struct (through `guidance`).
const RUN_PARAMS_V2_SIZE: usize = offset_of!(recon_run_params, guidance) + size_of::<i32>();
const _: () = assert!(RUN_PARAMS_V2_SIZE == 64);
/// The sizes of every released `recon_run_params` (v1, v2, v3 = current), ascending.
const RUN_PARAMS_SIZES: [usize; 3] = [
    RUN_PARAMS_V1_SIZE,
    RUN_PARAMS_V2_SIZE,
    size_of::<recon_run_params>(),
];
const _: () = assert!(RUN_PARAMS_SIZES[2] == 72);
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
            remove_background: recon_background_removal::RECON_BACKGROUND_AUTO as i32,
            guidance: recon_guidance::RECON_GUIDANCE_DEFAULT as i32,
            estimate_cameras: 1,
        }
    }

    /// What a run takes for the fields its caller's struct lacks (and for NULL params): v1's
    /// behaviour. A v1 caller never chose background removal, and v1 refused views without
    /// alpha, so those fields are `RECON_BACKGROUND_NEVER` here, not the v2 default.
    fn v1_behaviour() -> Self {
        Self {
            remove_background: recon_background_removal::RECON_BACKGROUND_NEVER as i32,
            ..Self::defaults()
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

/// Fills the v1 fields of `params` (up to `progress_user_data`) with defaults and sets
/// `struct_size` to the v1 size (NULL is ignored): the behaviour programs built against the
/// v1 header rely on. In C and C++ this header turns `recon_run_params_init(p)` into
/// `recon_run_params_init_sized(p, sizeof(recon_run_params))`, which fills every field this
/// header declares; call this symbol directly only with a v1-sized struct.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_run_params_init(params: *mut recon_run_params) {
    guarded_or((), || {
        // SAFETY: per the contract, `params` is NULL or holds at least the v1 struct.
        unsafe {
            init_versioned(
                params,
                RUN_PARAMS_V1_SIZE,
                recon_run_params::defaults(),
                &RUN_PARAMS_SIZES,
            )
        };
    })
}

/// Fills `params` with defaults for a struct of `size` bytes (`sizeof(recon_run_params)` of
/// the header the caller was built with): the fields of the largest released version that
/// fits in `size` (v1: 56 bytes, v2: 64, v3: 72; a newer header's larger struct gets this
/// library's fields), with `struct_size` set to that version's size. v2's defaults are
/// `RECON_BACKGROUND_AUTO` and `RECON_GUIDANCE_DEFAULT`, v3's `estimate_cameras` 1. Returns
/// RECON_ERR_INVALID_ARGUMENT, writing nothing, for NULL or a size below the v1 struct.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_run_params_init_sized(
    params: *mut recon_run_params,
    size: usize,
) -> recon_status {
    let result = guarded(|| {
        if params.is_null() {
            return Err(Error::invalid_argument("params is NULL"));
        }
        if size < RUN_PARAMS_V1_SIZE {
            return Err(Error::invalid_argument(format!(
                "recon_run_params size {size} is below the v1 struct ({RUN_PARAMS_V1_SIZE} bytes)"
            )));
        }
        // SAFETY: the caller owns `size` bytes at `params`.
        unsafe {
            init_versioned(
                params,
                size,
                recon_run_params::defaults(),
                &RUN_PARAMS_SIZES,
            )
        };
        Ok(())
    });
    finish(result, None)
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

/// `recon_run_params.remove_background` as the pipeline's setting.
fn background_removal(value: i32) -> Result<BackgroundRemoval> {
    use recon_background_removal::*;
    match value {
        v if v == RECON_BACKGROUND_AUTO as i32 => Ok(BackgroundRemoval::Auto),
        v if v == RECON_BACKGROUND_ALWAYS as i32 => Ok(BackgroundRemoval::Always),
        v if v == RECON_BACKGROUND_NEVER as i32 => Ok(BackgroundRemoval::Never),
        other => Err(Error::invalid_argument(format!(
            "recon_run_params.remove_background is {other}; use RECON_BACKGROUND_AUTO, \
             RECON_BACKGROUND_ALWAYS or RECON_BACKGROUND_NEVER"
        ))),
    }
}

/// `recon_run_params.guidance` as the pipeline's setting (None: the pipeline's own).
fn guidance_formula(value: i32) -> Result<Option<GuidanceFormula>> {
    use recon_guidance::*;
    match value {
        v if v == RECON_GUIDANCE_DEFAULT as i32 => Ok(None),
        v if v == RECON_GUIDANCE_TRELLIS as i32 => Ok(Some(GuidanceFormula::Trellis)),
        v if v == RECON_GUIDANCE_RECONVIAGEN as i32 => Ok(Some(GuidanceFormula::ReconViaGen)),
        other => Err(Error::invalid_argument(format!(
            "recon_run_params.guidance is {other}; use RECON_GUIDANCE_DEFAULT, \
             RECON_GUIDANCE_TRELLIS or RECON_GUIDANCE_RECONVIAGEN"
        ))),
    }
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
        guidance: guidance_formula(p.guidance)?,
        remove_background: background_removal(p.remove_background)?,
        estimate_cameras: p.estimate_cameras != 0,
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
/// defaults, those of a v1 struct: `RECON_BACKGROUND_NEVER`, as before v2 (a program built
/// against v1 cannot tell it apart). On success writes a new result to `*out_result` (free it with
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
            recon_run_params::v1_behaviour()
        } else {
            // SAFETY: the caller passes a recon_run_params with a valid struct_size.
            unsafe {
                read_versioned(
                    params,
                    recon_run_params::v1_behaviour(),
                    &RUN_PARAMS_SIZES,
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
        let result = Box::into_raw(Box::new(recon_result::generated_on(
            output,
            pipeline.device(),
        )));
        // SAFETY: checked non-NULL above.
        unsafe { out_result.write(result) };
        Ok(())
    });
    finish(result, model_ref.map(|m| &m.errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_fields_map_and_refuse_unknown_values() {
        use recon_background_removal::*;
        use recon_guidance::*;
        assert_eq!(
            background_removal(RECON_BACKGROUND_AUTO as i32).unwrap(),
            BackgroundRemoval::Auto
        );
        assert_eq!(
            background_removal(RECON_BACKGROUND_ALWAYS as i32).unwrap(),
            BackgroundRemoval::Always
        );
        assert_eq!(
            background_removal(RECON_BACKGROUND_NEVER as i32).unwrap(),
            BackgroundRemoval::Never
        );
        let err = background_removal(3).unwrap_err();
        assert!(err.message().contains("remove_background is 3"), "{err}");
        assert_eq!(
            guidance_formula(RECON_GUIDANCE_DEFAULT as i32).unwrap(),
            None
        );
        assert_eq!(
            guidance_formula(RECON_GUIDANCE_TRELLIS as i32).unwrap(),
            Some(GuidanceFormula::Trellis)
        );
        assert_eq!(
            guidance_formula(RECON_GUIDANCE_RECONVIAGEN as i32).unwrap(),
            Some(GuidanceFormula::ReconViaGen)
        );
        let err = guidance_formula(-1).unwrap_err();
        assert!(err.message().contains("guidance is -1"), "{err}");
    }

    /// A v1 caller's struct runs without background removal, a v2 one with its own choice; both
    /// estimate cameras, and a v3 one chooses.
    #[test]
    fn v1_structs_keep_v1_behaviour() {
        let mut v1 = [0u64; 8];
        // SAFETY: 64 writable, 8-aligned bytes.
        unsafe { recon_run_params_init(v1.as_mut_ptr() as *mut recon_run_params) };
        assert_eq!(v1[0] as u32, 56);
        assert_eq!(v1[7], 0, "the plain init wrote past v1");
        // Garbage where a v2 caller would have its fields.
        v1[7] = u64::MAX;
        // SAFETY: a 56-byte struct_size over 64 readable bytes.
        let read = unsafe {
            read_versioned(
                v1.as_ptr() as *const recon_run_params,
                recon_run_params::v1_behaviour(),
                &RUN_PARAMS_SIZES,
                "p",
            )
        }
        .unwrap();
        let params = run_params(&read).unwrap();
        assert_eq!(params.remove_background, BackgroundRemoval::Never);
        assert_eq!(params.guidance, None);

        let mut v2 = [0u64; 9];
        // SAFETY: 72 writable, 8-aligned bytes, of which a v2 struct owns 64.
        let status =
            unsafe { recon_run_params_init_sized(v2.as_mut_ptr() as *mut recon_run_params, 64) };
        assert_eq!(status, recon_status::RECON_OK);
        assert_eq!(v2[0] as u32, 64);
        assert_eq!(v2[8], 0, "the v2 init wrote past v2");
        // Garbage where a v3 caller would have its fields: a v2 caller gets cameras.
        v2[8] = u64::MAX;
        // SAFETY: a 64-byte struct_size over 72 readable bytes.
        let read = unsafe {
            read_versioned(
                v2.as_ptr() as *const recon_run_params,
                recon_run_params::v1_behaviour(),
                &RUN_PARAMS_SIZES,
                "p",
            )
        }
        .unwrap();
        let params = run_params(&read).unwrap();
        assert_eq!(params.remove_background, BackgroundRemoval::Auto);
        assert!(params.estimate_cameras);
        assert_eq!(params, RunParams::default());

        let mut v3 = std::mem::MaybeUninit::<recon_run_params>::uninit();
        // SAFETY: a whole struct.
        let status =
            unsafe { recon_run_params_init_sized(v3.as_mut_ptr(), size_of::<recon_run_params>()) };
        assert_eq!(status, recon_status::RECON_OK);
        // SAFETY: the sized init filled the whole struct (padding is never read).
        let mut v3 = unsafe { v3.assume_init() };
        assert_eq!(v3.struct_size, 72);
        assert_eq!(run_params(&v3).unwrap(), RunParams::default());
        v3.estimate_cameras = 0;
        assert!(!run_params(&v3).unwrap().estimate_cameras);
    }
}
