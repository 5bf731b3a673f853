//! The C entry points' argument validation: fuzzed `struct_size`, enum and numeric fields,
//! NULL-or-not pointers, on a NULL model and on the tiny fixture model (loaded once per
//! process). The fuzzer keeps its own side of the contract — every pointer it passes is NULL
//! or points to valid memory of the size the arguments claim — so any crash, panic (caught
//! panics become `RECON_ERR_INTERNAL`, which is asserted against) or success where an error
//! is due is recon's. No run does real work: the progress callback cancels at the first
//! report, which comes after all argument validation, and loads only see missing paths.
#![no_main]

use std::ffi::{c_char, c_void, CStr};
use std::mem::size_of;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use recon::ffi::model::*;
use recon::ffi::result::*;
use recon::ffi::run::recon_background_removal::*;
use recon::ffi::run::recon_guidance::*;
use recon::ffi::run::*;
use recon::ffi::status::*;

/// The tiny fixture model, loaded once (address kept as usize so it can be a static).
fn tiny_model() -> *const recon_model {
    static MODEL: OnceLock<usize> = OnceLock::new();
    *MODEL.get_or_init(|| {
        // Never let a fuzzed load reach the network.
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/model_tiny\0"
        );
        let mut params = std::mem::MaybeUninit::<recon_load_params>::uninit();
        // SAFETY: valid pointers throughout; the sized init fills the whole struct.
        unsafe {
            let status =
                recon_load_params_init_sized(params.as_mut_ptr(), size_of::<recon_load_params>());
            assert_eq!(status, recon_status::RECON_OK);
            let mut params = params.assume_init();
            params.device = RECON_DEVICE_CPU;
            params.offline = 1;
            params.model = dir.as_ptr() as *const c_char;
            let mut model = null_mut();
            let status = recon_load(&params, &mut model, null_mut(), 0);
            assert_eq!(status, recon_status::RECON_OK, "loading the tiny model");
            model as usize
        }
    }) as *const recon_model
}

/// Cancels every run at its first progress report.
unsafe extern "C" fn cancel(_: *const recon_progress, _: *mut c_void) -> i32 {
    0
}

unsafe extern "C" fn ignore_log(_: i32, message: *const c_char, _: *mut c_void) {
    // SAFETY: recon passes a NUL-terminated message valid during the call.
    assert!(unsafe { CStr::from_ptr(message) }.to_str().is_ok());
}

/// An 8-aligned zeroed buffer of at least `bytes` bytes.
fn buffer(bytes: usize) -> Vec<u64> {
    vec![0u64; bytes.div_ceil(8).max(1)]
}

/// A struct_size: mostly near the real sizes, sometimes anything up to 1 KiB (the buffer
/// always holds that many bytes).
fn struct_size(u: &mut Unstructured<'_>, real: usize) -> ArbResult<u32> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => real as u32,
        1 => u.int_in_range(0..=1024u32)?,
        _ => (real as i64 + i64::from(u.int_in_range(-9..=9i8)?)).clamp(0, 1024) as u32,
    })
}

fn some_i32(u: &mut Unstructured<'_>, interesting: &[i32]) -> ArbResult<i32> {
    if u.ratio(3, 4)? {
        Ok(*u.choose(interesting)?)
    } else {
        u.arbitrary()
    }
}

fn check_status(status: recon_status) {
    assert_ne!(
        status,
        recon_status::RECON_ERR_INTERNAL,
        "internal error (a caught panic?)"
    );
}

fn check_c_str(ptr: *const c_char) {
    assert!(!ptr.is_null());
    // SAFETY: recon returns NUL-terminated strings it owns.
    assert!(unsafe { CStr::from_ptr(ptr) }.to_str().is_ok());
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    for _ in 0..4 {
        if u.is_empty() || one_call(&mut u).is_err() {
            break;
        }
    }
});

fn one_call(u: &mut Unstructured<'_>) -> ArbResult<()> {
    match u.int_in_range(0..=4u8)? {
        0 => status_and_inits(u),
        1 => load(u),
        2 => run(u),
        3 => network_info(u),
        _ => results(u),
    }
}

fn status_and_inits(u: &mut Unstructured<'_>) -> ArbResult<()> {
    check_c_str(recon_status_string(u.arbitrary()?));
    check_c_str(recon_version_string());
    // SAFETY: NULL or valid, writable structs.
    unsafe {
        recon_load_params_init(null_mut());
        assert_eq!(
            recon_load_params_init_sized(null_mut(), size_of::<recon_load_params>()),
            recon_status::RECON_ERR_INVALID_ARGUMENT
        );
        recon_run_params_init(null_mut());
        recon_image_init(null_mut());
        // The plain run-params init writes the v1 struct (56 bytes) only.
        let mut p = buffer(size_of::<recon_run_params>());
        recon_run_params_init(p.as_mut_ptr() as *mut recon_run_params);
        assert_eq!(*(p.as_ptr() as *const u32), 56);
        assert!(p[7..].iter().all(|&w| w == 0), "wrote past the v1 struct");
        assert_eq!(
            recon_run_params_init_sized(null_mut(), size_of::<recon_run_params>()),
            recon_status::RECON_ERR_INVALID_ARGUMENT
        );
        // The sized init writes min(size, its struct) bytes, refusing sizes below v1.
        let size = usize::from(u.int_in_range(0..=200u8)?);
        let mut raw = buffer(size.max(1));
        let status = recon_load_params_init_sized(raw.as_mut_ptr() as *mut recon_load_params, size);
        if size < 40 {
            assert_eq!(status, recon_status::RECON_ERR_INVALID_ARGUMENT);
        } else {
            assert_eq!(status, recon_status::RECON_OK);
            let written = *(raw.as_ptr() as *const u32) as usize;
            // The largest released version (40, 56, 64 bytes) that fits.
            let expected = [40, 56, size_of::<recon_load_params>()]
                .into_iter()
                .filter(|&s| s <= size)
                .max();
            assert_eq!(Some(written), expected);
        }
        let size = usize::from(u.int_in_range(0..=200u8)?);
        let mut raw = buffer(size.max(1));
        let status = recon_run_params_init_sized(raw.as_mut_ptr() as *mut recon_run_params, size);
        if size < 56 {
            assert_eq!(status, recon_status::RECON_ERR_INVALID_ARGUMENT);
        } else {
            assert_eq!(status, recon_status::RECON_OK);
            let written = *(raw.as_ptr() as *const u32) as usize;
            // The largest released version (56, 64, 72 bytes) that fits.
            let expected = [56, 64, size_of::<recon_run_params>()]
                .into_iter()
                .filter(|&s| s <= size)
                .max();
            assert_eq!(Some(written), expected);
        }
    }
    Ok(())
}

fn load(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let empty_dir = tempfile::tempdir().expect("temp dir");
    let mut empty = empty_dir
        .path()
        .to_str()
        .expect("utf-8 temp path")
        .as_bytes()
        .to_vec();
    empty.push(0);
    // A fuzzed path under a directory that does not exist: never a repo id or a real model.
    let mut fuzzed = b"/nonexistent-recon-fuzz/".to_vec();
    let tail: &[u8] = u.arbitrary()?;
    fuzzed.extend(tail.iter().copied().filter(|&b| b != 0));
    fuzzed.push(0);
    let model: *const c_char = match u.int_in_range(0..=3u8)? {
        0 => null(),
        1 => empty.as_ptr() as *const c_char,
        2 => c"\xff\xfe not utf-8".as_ptr(),
        _ => fuzzed.as_ptr() as *const c_char,
    };
    let size = struct_size(u, size_of::<recon_load_params>())?;
    let mut raw = buffer((size as usize).max(size_of::<recon_load_params>()));
    let params = recon_load_params {
        struct_size: size,
        device: some_i32(
            u,
            &[RECON_DEVICE_AUTO, RECON_DEVICE_CPU, 0, 1, -3, i32::MIN],
        )?,
        model,
        offline: some_i32(u, &[RECON_OFFLINE_FROM_ENV, 0, 1, 2, -2])?,
        log_level: some_i32(u, &[0, RECON_LOG_ERROR, RECON_LOG_DEBUG, 5, -1])?,
        log_callback: if u.arbitrary()? {
            Some(ignore_log)
        } else {
            None
        },
        log_user_data: null_mut(),
        low_vram: some_i32(u, &[0, 1, 2, -1])?,
        vggt_model: match u.int_in_range(0..=2u8)? {
            0 => null(),
            1 => c"\xff not utf-8".as_ptr(),
            _ => fuzzed.as_ptr() as *const c_char,
        },
        background_model: match u.int_in_range(0..=3u8)? {
            0 => null(),
            1 => c"\xff not utf-8".as_ptr(),
            2 => c"".as_ptr(),
            _ => fuzzed.as_ptr() as *const c_char,
        },
    };
    // SAFETY: the buffer holds at least a recon_load_params and is 8-aligned.
    unsafe { (raw.as_mut_ptr() as *mut recon_load_params).write(params) };
    let params_ptr = if u.ratio(1, 8)? {
        null()
    } else {
        raw.as_ptr() as *const recon_load_params
    };
    let error_len = usize::from(u.int_in_range(0..=200u8)?);
    let mut error_buf = vec![0x55 as c_char; error_len];
    let error_ptr = if u.arbitrary()? {
        null_mut()
    } else {
        error_buf.as_mut_ptr()
    };
    let mut out: *mut recon_model = null_mut();
    let out_ptr: *mut *mut recon_model = if u.ratio(1, 8)? { null_mut() } else { &mut out };
    // SAFETY: every pointer is NULL or valid for the size its arguments claim.
    let status = unsafe { recon_load(params_ptr, out_ptr, error_ptr, error_len) };
    check_status(status);
    assert_ne!(
        status,
        recon_status::RECON_OK,
        "nothing here is a loadable model"
    );
    assert!(out.is_null(), "a failed load wrote a model");
    if !error_ptr.is_null() && error_len > 0 {
        assert!(error_buf.contains(&0), "error message not NUL-terminated");
    }
    Ok(())
}

fn run(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let live = u.ratio(3, 4)?;
    let model = if live { tiny_model() } else { null() };
    let bytes: Vec<u8> = u.arbitrary()?;

    // The image array: the stride is images[0].struct_size, as a caller's sizeof would be.
    let count = if u.ratio(1, 16)? {
        u.int_in_range(0..=66usize)?
    } else {
        u.int_in_range(0..=3usize)?
    };
    let first_size = struct_size(u, size_of::<recon_image>())?;
    let element = (first_size as usize)
        .max(size_of::<recon_image>())
        .next_multiple_of(8);
    let mut images = buffer(element * count.max(1));
    for i in 0..count {
        let size = if i == 0 || u.ratio(7, 8)? {
            first_size
        } else {
            struct_size(u, size_of::<recon_image>())?
        };
        let len = u.int_in_range(0..=bytes.len())?;
        let image = recon_image {
            struct_size: size,
            format: some_i32(
                u,
                &[
                    RECON_IMAGE_ENCODED,
                    RECON_IMAGE_RGB8,
                    RECON_IMAGE_RGBA8,
                    3,
                    -1,
                ],
            )?,
            data: if u.ratio(1, 8)? {
                null()
            } else {
                bytes.as_ptr()
            },
            size: len,
            width: if u.arbitrary()? {
                u.int_in_range(0..=8)?
            } else {
                u.arbitrary()?
            },
            height: if u.arbitrary()? {
                u.int_in_range(0..=8)?
            } else {
                u.arbitrary()?
            },
            stride: if u.arbitrary()? {
                u.int_in_range(0..=40)?
            } else {
                u.arbitrary()?
            },
        };
        // SAFETY: element i lies inside the buffer (element >= sizeof(recon_image)), 8-aligned.
        unsafe {
            ((images.as_mut_ptr() as *mut u8).add(i * element) as *mut recon_image).write(image)
        };
    }
    let images_ptr = if u.ratio(1, 16)? {
        null()
    } else {
        images.as_ptr() as *const recon_image
    };

    let size = struct_size(u, size_of::<recon_run_params>())?;
    let mut raw = buffer((size as usize).max(size_of::<recon_run_params>()));
    let cfg = |u: &mut Unstructured<'_>| -> ArbResult<f32> {
        Ok(*u.choose(&[
            RECON_DEFAULT_CFG_STRENGTH,
            0.0,
            3.0,
            100.0,
            101.0,
            -0.5,
            f32::NAN,
            f32::INFINITY,
        ])?)
    };
    let params = recon_run_params {
        struct_size: size,
        sparse_structure_steps: if u.arbitrary()? {
            u.int_in_range(0..=3)?
        } else {
            u.arbitrary()?
        },
        seed: u.arbitrary()?,
        sparse_structure_cfg_strength: cfg(u)?,
        slat_steps: if u.arbitrary()? {
            u.int_in_range(0..=3)?
        } else {
            u.arbitrary()?
        },
        slat_cfg_strength: cfg(u)?,
        formats: if u.arbitrary()? {
            u.int_in_range(0..=8)?
        } else {
            u.arbitrary()?
        },
        multi_image_mode: some_i32(
            u,
            &[
                RECON_MULTI_IMAGE_STOCHASTIC,
                RECON_MULTI_IMAGE_MULTIDIFFUSION,
                2,
                -1,
            ],
        )?,
        preprocess: u.arbitrary()?,
        // Always cancelling: no fuzzed run may do real work.
        progress_callback: Some(cancel),
        progress_user_data: null_mut(),
        // The cancelling callback stops a TRELLIS run before any background removal.
        remove_background: some_i32(
            u,
            &[
                RECON_BACKGROUND_AUTO as i32,
                RECON_BACKGROUND_ALWAYS as i32,
                RECON_BACKGROUND_NEVER as i32,
                3,
                -1,
            ],
        )?,
        guidance: some_i32(
            u,
            &[
                RECON_GUIDANCE_DEFAULT as i32,
                RECON_GUIDANCE_TRELLIS as i32,
                RECON_GUIDANCE_RECONVIAGEN as i32,
                3,
                -1,
            ],
        )?,
        // Any value is valid (nonzero: estimate cameras).
        estimate_cameras: u.arbitrary()?,
    };
    // SAFETY: the buffer holds at least a recon_run_params and is 8-aligned.
    unsafe { (raw.as_mut_ptr() as *mut recon_run_params).write(params) };
    // NULL params mean defaults without the cancelling callback: only on a NULL model.
    let params_ptr = if !live && u.arbitrary()? {
        null()
    } else {
        raw.as_ptr() as *const recon_run_params
    };

    let mut out: *mut recon_result = null_mut();
    let out_ptr: *mut *mut recon_result = if u.ratio(1, 8)? { null_mut() } else { &mut out };
    // SAFETY: every pointer is NULL or valid for the size its arguments claim.
    let status = unsafe { recon_run(model, images_ptr, count, params_ptr, out_ptr) };
    check_status(status);
    assert_ne!(status, recon_status::RECON_OK, "a cancelled run succeeded");
    assert!(out.is_null(), "a failed run wrote a result");
    // SAFETY: NULL or the live model.
    check_c_str(unsafe { recon_model_last_error(model) });
    Ok(())
}

fn network_info(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let model = if u.arbitrary()? { tiny_model() } else { null() };
    let index: usize = if u.arbitrary()? {
        u.int_in_range(0..=12)?
    } else {
        u.arbitrary()?
    };
    let size = struct_size(u, size_of::<recon_network_info>())?;
    let mut raw = buffer((size as usize).max(size_of::<recon_network_info>()));
    // SAFETY: the buffer begins with the u32 struct_size.
    unsafe { *(raw.as_mut_ptr() as *mut u32) = size };
    let out = if u.ratio(1, 8)? {
        null_mut()
    } else {
        raw.as_mut_ptr() as *mut recon_network_info
    };
    // SAFETY: NULL or the live model; `out` NULL or holding struct_size bytes.
    let status = unsafe { recon_model_network(model, index, out) };
    check_status(status);
    // SAFETY: as above.
    unsafe {
        let count = recon_model_num_networks(model);
        if status == recon_status::RECON_OK {
            assert!(!model.is_null() && index < count);
            let info = &*(out as *const recon_network_info);
            check_c_str(info.key);
            check_c_str(info.class_name);
            check_c_str(info.stem);
        }
        check_c_str(recon_model_pipeline_name(model));
        let _ = recon_model_device(model);
    }
    Ok(())
}

fn results(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let format = some_i32(
        u,
        &[
            RECON_EXPORT_GLB,
            RECON_EXPORT_PLY_GAUSSIANS,
            RECON_EXPORT_OBJ,
            0,
            5,
        ],
    )?;
    let index: usize = u.arbitrary()?;
    let mut raw = buffer(1024);
    let size = struct_size(u, size_of::<recon_camera>())?;
    // SAFETY: the buffer begins with the u32 struct_size and holds 1 KiB.
    unsafe { *(raw.as_mut_ptr() as *mut u32) = size };
    let out = if u.arbitrary()? {
        null_mut()
    } else {
        raw.as_mut_ptr() as *mut c_void
    };
    let path = if u.arbitrary()? {
        null()
    } else {
        c"/nonexistent-recon-fuzz/out.glb".as_ptr()
    };
    let mut buf: *mut recon_buffer = null_mut();
    // SAFETY: a NULL result everywhere; out pointers NULL or valid.
    unsafe {
        let statuses = [
            recon_result_gaussians(null(), out as *mut recon_gaussians),
            recon_result_mesh(null(), out as *mut recon_mesh),
            recon_result_camera(null(), index, out as *mut recon_camera),
            recon_result_camera_matrices(null(), index, out as *mut f32, null_mut()),
            recon_result_export(null(), format, path),
            recon_result_export_buffer(null(), format, &mut buf),
            recon_model_network(null(), index, out as *mut recon_network_info),
        ];
        for status in statuses {
            assert_eq!(status, recon_status::RECON_ERR_INVALID_ARGUMENT);
        }
        assert!(buf.is_null());
        assert_eq!(recon_result_num_cameras(null()), 0);
        check_c_str(recon_result_last_error(null()));
        assert!(recon_buffer_data(null()).is_null());
        assert_eq!(recon_buffer_size(null()), 0);
        recon_buffer_free(null_mut());
        recon_result_free(null_mut());
        recon_free(null_mut());
        recon_cancel(null());
    }
    Ok(())
}
