//! Turntable previews of a `recon_result`: RGBA8 frames through a callback, or a video file
//! (MP4) / PNG folder written by the library. See `crate::render::turntable`.

use std::ffi::{c_char, c_void};
use std::mem::size_of;
use std::path::Path;

use tch::Device;

use super::model::{RECON_DEVICE_AUTO, RECON_DEVICE_CPU};
use super::result::recon_result;
use super::status::recon_status;
use super::{finish, guarded, guarded_or, init_versioned, non_null, read_versioned, utf8};
use crate::error::{Error, ErrorKind, Result};
use crate::render::turntable::{
    render_turntable_with, write_turntable, Frame, TurntableContent, TurntableOptions,
};
use crate::render::video::{VideoOptions, MP4_SUPPORTED};

/// `recon_turntable_params.content`: the 3D Gaussians in colour (the default; TRELLIS's
/// preview video). Needs a result with Gaussians (`RECON_FORMAT_GAUSSIANS`).
pub const RECON_TURNTABLE_GAUSSIANS: i32 = 0;
/// `recon_turntable_params.content`: the mesh's face normals as (n + 1) / 2, world space
/// (TRELLIS's normal video). Needs the mesh (`RECON_FORMAT_MESH`).
pub const RECON_TURNTABLE_MESH_NORMALS: i32 = 1;
/// `recon_turntable_params.content`: the mesh's vertex colours, interpolated. Needs the mesh
/// with colours.
pub const RECON_TURNTABLE_MESH_COLORS: i32 = 2;

/// How to render a turntable: the reference's orbit (yaw once around, pitch swinging
/// 0.25 ± 0.5 rad) around the object's centre. Fill with `recon_turntable_params_init` (in C
/// and C++ a macro that passes this header's struct size, see below), then set fields.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_turntable_params {
    /// `sizeof(recon_turntable_params)`, set by `recon_turntable_params_init`.
    pub struct_size: u32,
    /// `RECON_TURNTABLE_*` (default `RECON_TURNTABLE_GAUSSIANS`).
    pub content: i32,
    /// Number of frames, 1..10000 (default 120, TRELLIS's demo; a 4-second spin at 30 fps).
    pub frames: u32,
    /// Width and height of each frame in pixels, 1..4096 (default 512). MP4 files take at
    /// most 2160.
    pub resolution: u32,
    /// Camera distance from the object's centre (default 2; the object is in the unit cube).
    pub radius: f32,
    /// Field of view in degrees, in (0, 180) (default 40).
    pub fov_degrees: f32,
    /// RGB in 0..1 behind the object (default black).
    pub background: [f32; 3],
    /// `RECON_DEVICE_AUTO` (default: the GPU of the model that generated the result, else the
    /// first CUDA device if usable, else the CPU), `RECON_DEVICE_CPU` or a CUDA device index
    /// >= 0. The result itself lives on the host.
    pub device: i32,
    /// Frames per second of a written MP4, 1..240 (default 30).
    pub fps: u32,
    /// Supersampling per axis of mesh frames, 1..8 (default 4, as TRELLIS's mesh renderer).
    pub mesh_ssaa: u32,
}

/// One rendered frame, valid only during the callback.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_frame {
    /// `sizeof(recon_frame)` of the library.
    pub struct_size: u32,
    /// This frame's number, 0 to `count` − 1, in orbit order.
    pub index: u32,
    /// Number of frames of the turntable.
    pub count: u32,
    /// Size in pixels (`recon_turntable_params.resolution` both).
    pub width: u32,
    pub height: u32,
    /// width × height × 4 bytes: RGBA8, rows top to bottom, no padding. RGB is the render
    /// over the background (so over black it is premultiplied by alpha); alpha is the
    /// Gaussians' accumulated opacity or the mesh's pixel coverage.
    pub rgba: *const u8,
}

/// Receives turntable frames on the calling thread, in order. Copy what you keep: `frame` and
/// its pixels are valid only during the call. Return nonzero to go on, 0 to stop (the call
/// then returns `RECON_ERR_CANCELLED`, and a file being written is not created).
pub type recon_frame_callback =
    Option<unsafe extern "C" fn(frame: *const recon_frame, user_data: *mut c_void) -> i32>;

/// The v1 size: the whole struct as first released.
const TURNTABLE_PARAMS_V1_SIZE: usize = size_of::<recon_turntable_params>();
const _: () = assert!(TURNTABLE_PARAMS_V1_SIZE == 48);
/// The sizes of every released `recon_turntable_params` (v1 = current), ascending.
const TURNTABLE_PARAMS_SIZES: [usize; 1] = [TURNTABLE_PARAMS_V1_SIZE];
const _: () = assert!(size_of::<recon_frame>() == 32);

impl recon_turntable_params {
    fn defaults() -> Self {
        let options = TurntableOptions::default();
        Self {
            struct_size: size_of::<Self>() as u32,
            content: RECON_TURNTABLE_GAUSSIANS,
            frames: options.frames as u32,
            resolution: options.resolution,
            radius: options.radius as f32,
            fov_degrees: options.fov_degrees as f32,
            background: options.background,
            device: RECON_DEVICE_AUTO,
            fps: VideoOptions::default().fps,
            mesh_ssaa: options.mesh_ssaa,
        }
    }
}

/// The caller's params (NULL: defaults), read by their struct_size.
///
/// # Safety
/// `params` must be NULL or point to a struct whose `struct_size` bytes are readable.
unsafe fn read_params(params: *const recon_turntable_params) -> Result<recon_turntable_params> {
    if params.is_null() {
        return Ok(recon_turntable_params::defaults());
    }
    // SAFETY: forwarded to the caller.
    unsafe {
        read_versioned(
            params,
            recon_turntable_params::defaults(),
            &TURNTABLE_PARAMS_SIZES,
            "recon_turntable_params",
        )
    }
}

/// The library's options, each field checked with its C name in the message.
/// `auto` is where `RECON_DEVICE_AUTO` runs ([`recon_result::auto_device`]).
fn options(
    p: &recon_turntable_params,
    auto: Device,
) -> Result<(TurntableOptions, VideoOptions, Device)> {
    let content = match p.content {
        RECON_TURNTABLE_GAUSSIANS => TurntableContent::Gaussians,
        RECON_TURNTABLE_MESH_NORMALS => TurntableContent::MeshNormals,
        RECON_TURNTABLE_MESH_COLORS => TurntableContent::MeshColors,
        other => {
            return Err(Error::invalid_argument(format!(
                "recon_turntable_params.content is {other}; use RECON_TURNTABLE_GAUSSIANS, \
                 RECON_TURNTABLE_MESH_NORMALS or RECON_TURNTABLE_MESH_COLORS"
            )))
        }
    };
    let turntable = TurntableOptions {
        frames: p.frames as usize,
        resolution: p.resolution,
        radius: f64::from(p.radius),
        fov_degrees: f64::from(p.fov_degrees),
        background: p.background,
        content,
        mesh_ssaa: p.mesh_ssaa,
    };
    turntable
        .validate()
        .map_err(|e| e.context("recon_turntable_params"))?;
    let video = VideoOptions { fps: p.fps };
    video
        .validate()
        .map_err(|e| e.context("recon_turntable_params.fps"))?;
    Ok((
        turntable,
        video,
        device_from_c(p.device, "recon_turntable_params.device", auto)?,
    ))
}

/// A params struct's `device` field (`what` names it) as a device, checked against the CUDA
/// devices present; `RECON_DEVICE_AUTO` is `auto`.
pub(crate) fn device_from_c(device: i32, what: &str, auto: Device) -> Result<Device> {
    match device {
        RECON_DEVICE_AUTO => Ok(auto),
        RECON_DEVICE_CPU => Ok(Device::Cpu),
        index if index >= 0 => {
            let count = tch::Cuda::device_count();
            if i64::from(index) < count {
                Ok(Device::Cuda(index as usize))
            } else {
                Err(Error::new(
                    ErrorKind::Device,
                    format!("{what} is CUDA device {index}, but {count} CUDA device(s) are usable"),
                ))
            }
        }
        other => Err(Error::invalid_argument(format!(
            "{what} is {other}; use RECON_DEVICE_AUTO, RECON_DEVICE_CPU or a CUDA index >= 0"
        ))),
    }
}

/// Calls the C callback with `frame`; its 0 becomes a Cancelled error.
///
/// # Safety
/// `callback` must be a valid function per the header's contract.
unsafe fn deliver(
    callback: unsafe extern "C" fn(*const recon_frame, *mut c_void) -> i32,
    user_data: *mut c_void,
    index: usize,
    count: usize,
    frame: &Frame,
) -> Result<()> {
    let report = recon_frame {
        struct_size: size_of::<recon_frame>() as u32,
        index: index as u32,
        count: count as u32,
        width: frame.width,
        height: frame.height,
        rgba: frame.rgba.as_ptr(),
    };
    // SAFETY: a valid callback per the caller's contract; `report` and the pixels outlive it.
    if unsafe { callback(&report, user_data) } == 0 {
        return Err(Error::cancelled(format!(
            "turntable cancelled by the frame callback at frame {index} of {count}"
        )));
    }
    Ok(())
}

/// Fills `params` with the defaults of the v1 struct (NULL is ignored). In C and C++ this
/// header turns `recon_turntable_params_init(p)` into
/// `recon_turntable_params_init_sized(p, sizeof(recon_turntable_params))`.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_turntable_params_init(params: *mut recon_turntable_params) {
    guarded_or((), || {
        // SAFETY: per the contract, `params` is NULL or holds at least the v1 struct.
        unsafe {
            init_versioned(
                params,
                TURNTABLE_PARAMS_V1_SIZE,
                recon_turntable_params::defaults(),
                &TURNTABLE_PARAMS_SIZES,
            )
        };
    })
}

/// Fills `params` with defaults for a struct of `size` bytes (`sizeof(recon_turntable_params)`
/// of the header the caller was built with): the fields of the largest released version that
/// fits, with `struct_size` set to that version's size. Defaults: Gaussians, 120 frames, 512
/// pixels, radius 2, 40 degrees, black, `RECON_DEVICE_AUTO`, 30 fps, mesh supersampling 4.
/// Returns RECON_ERR_INVALID_ARGUMENT, writing nothing, for NULL or a size below the v1 struct.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_turntable_params_init_sized(
    params: *mut recon_turntable_params,
    size: usize,
) -> recon_status {
    let result = guarded(|| {
        if params.is_null() {
            return Err(Error::invalid_argument("params is NULL"));
        }
        if size < TURNTABLE_PARAMS_V1_SIZE {
            return Err(Error::invalid_argument(format!(
                "recon_turntable_params size {size} is below the v1 struct \
                 ({TURNTABLE_PARAMS_V1_SIZE} bytes)"
            )));
        }
        // SAFETY: the caller owns `size` bytes at `params`.
        unsafe {
            init_versioned(
                params,
                size,
                recon_turntable_params::defaults(),
                &TURNTABLE_PARAMS_SIZES,
            )
        };
        Ok(())
    });
    finish(result, None)
}

/// Renders a turntable of `result` and hands each frame to `callback`, in orbit order, on
/// this thread, rendering the next only after the callback returns (so frames never pile up
/// in memory). `params` may be NULL for defaults. Fails with RECON_ERR_INVALID_ARGUMENT when
/// the result lacks what `content` needs, RECON_ERR_CANCELLED when the callback returns 0,
/// RECON_ERR_DEVICE when the requested CUDA device is missing. Frames delivered before a
/// failure stay delivered.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_render_turntable(
    result: *const recon_result,
    params: *const recon_turntable_params,
    callback: recon_frame_callback,
    user_data: *mut c_void,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        let callback = callback.ok_or_else(|| Error::invalid_argument("callback is NULL"))?;
        // SAFETY: NULL or a struct with its struct_size.
        let p = unsafe { read_params(params) }?;
        let (turntable, _, device) = options(&p, r.auto_device())?;
        let count = turntable.frames;
        render_turntable_with(r.output(), &turntable, device, |index, frame| {
            // SAFETY: the caller's callback, per the header.
            unsafe { deliver(callback, user_data, index, count, &frame) }
        })?;
        Ok(())
    });
    finish(status, result_errors(result))
}

/// Renders a turntable of `result` into `path` (UTF-8): an MP4 file (H.264) when the path
/// ends in ".mp4", else a folder of PNG frames frame_0000.png, frame_0001.png, … (RGBA). The
/// file or folder appears whole or not at all; an existing folder is replaced only when it is
/// empty or holds nothing but frame_*.png files. `params` may be NULL for defaults.
/// `callback` may be NULL; else it receives each frame after it is written (progress, a
/// preview) and may stop the render by returning 0 (RECON_ERR_CANCELLED, nothing written).
/// MP4 needs a build with the encoder (`recon_mp4_supported`); otherwise .mp4 paths fail
/// with RECON_ERR_UNSUPPORTED.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_write_turntable(
    result: *const recon_result,
    params: *const recon_turntable_params,
    path: *const c_char,
    callback: recon_frame_callback,
    user_data: *mut c_void,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let path = unsafe { utf8(path, "path") }?;
        // SAFETY: NULL or a struct with its struct_size.
        let p = unsafe { read_params(params) }?;
        let (turntable, video, device) = options(&p, r.auto_device())?;
        let count = turntable.frames;
        write_turntable(
            r.output(),
            &turntable,
            device,
            Path::new(path),
            &video,
            |index, frame| match callback {
                None => Ok(()),
                // SAFETY: the caller's callback, per the header.
                Some(callback) => unsafe { deliver(callback, user_data, index, count, frame) },
            },
        )?;
        Ok(())
    });
    finish(status, result_errors(result))
}

/// 1 when this build writes MP4 (H.264) turntables, 0 when it writes only PNG frames (built
/// without the encoder).
#[no_mangle]
pub extern "C" fn recon_mp4_supported() -> i32 {
    i32::from(MP4_SUPPORTED)
}

fn result_errors<'a>(result: *const recon_result) -> Option<&'a super::ErrorLog> {
    // SAFETY: NULL or a live result, per the header.
    unsafe { result.as_ref() }.map(|r| r.errors())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Gaussians, Mesh, Output};

    fn tiny_result() -> recon_result {
        recon_result::new(Output {
            gaussians: Some(Gaussians {
                xyz: vec![0.0, 0.0, 0.0, 0.1, 0.0, 0.0],
                features_dc: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                scaling: vec![0.05; 6],
                rotation: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                opacity: vec![0.9, 0.9],
            }),
            mesh: Some(Mesh {
                positions: vec![
                    -0.3, -0.3, 0.0, 0.3, -0.3, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.3,
                ],
                colors: Vec::new(),
                indices: vec![0, 1, 2, 0, 1, 3, 1, 2, 3, 2, 0, 3],
            }),
            cameras: Vec::new(),
        })
    }

    struct Seen {
        frames: Vec<(u32, u32, u32, u32, usize)>,
        stop_after: usize,
    }

    unsafe extern "C" fn on_frame(frame: *const recon_frame, user: *mut c_void) -> i32 {
        // SAFETY: the test passes a Seen and the library a live frame.
        let (seen, f) = unsafe { (&mut *(user as *mut Seen), &*frame) };
        // SAFETY: width × height × 4 bytes per the contract.
        let pixels =
            unsafe { std::slice::from_raw_parts(f.rgba, (f.width * f.height * 4) as usize) };
        let covered = pixels.chunks(4).filter(|p| p[3] > 0).count();
        seen.frames
            .push((f.index, f.count, f.width, f.height, covered));
        i32::from(seen.frames.len() < seen.stop_after)
    }

    #[test]
    fn frames_reach_the_callback_and_zero_cancels() {
        let result = tiny_result();
        let mut p = std::mem::MaybeUninit::<recon_turntable_params>::uninit();
        // SAFETY: a whole struct.
        let status = unsafe { recon_turntable_params_init_sized(p.as_mut_ptr(), 48) };
        assert_eq!(status, recon_status::RECON_OK);
        // SAFETY: initialised above.
        let mut p = unsafe { p.assume_init() };
        assert_eq!(
            (p.frames, p.resolution, p.fps, p.mesh_ssaa),
            (120, 512, 30, 4)
        );
        p.frames = 3;
        p.resolution = 24;
        p.device = RECON_DEVICE_CPU;
        for content in [RECON_TURNTABLE_GAUSSIANS, RECON_TURNTABLE_MESH_NORMALS] {
            p.content = content;
            let mut seen = Seen {
                frames: Vec::new(),
                stop_after: usize::MAX,
            };
            // SAFETY: live values; the callback matches the contract.
            let status = unsafe {
                recon_result_render_turntable(
                    &result,
                    &p,
                    Some(on_frame),
                    &mut seen as *mut Seen as *mut c_void,
                )
            };
            assert_eq!(status, recon_status::RECON_OK, "content {content}");
            assert_eq!(seen.frames.len(), 3);
            for (i, &(index, count, w, h, covered)) in seen.frames.iter().enumerate() {
                assert_eq!((index, count, w, h), (i as u32, 3, 24, 24));
                assert!(covered > 0, "content {content}: frame {i} is empty");
            }
        }
        // The callback's 0 stops the render.
        let mut seen = Seen {
            frames: Vec::new(),
            stop_after: 2,
        };
        // SAFETY: as above.
        let status = unsafe {
            recon_result_render_turntable(
                &result,
                &p,
                Some(on_frame),
                &mut seen as *mut Seen as *mut c_void,
            )
        };
        assert_eq!(status, recon_status::RECON_ERR_CANCELLED);
        assert_eq!(seen.frames.len(), 2);
        // Colours need vertex colours, which this mesh lacks; bad fields are named.
        p.content = RECON_TURNTABLE_MESH_COLORS;
        let expect_refusal = |p: &recon_turntable_params, needle: &str| {
            // SAFETY: as above; the callback is never reached.
            let status = unsafe {
                recon_result_render_turntable(&result, p, Some(on_frame), std::ptr::null_mut())
            };
            assert_eq!(status, recon_status::RECON_ERR_INVALID_ARGUMENT, "{needle}");
            // SAFETY: a live result.
            let message = unsafe {
                std::ffi::CStr::from_ptr(super::super::result::recon_result_last_error(&result))
            };
            assert!(message.to_string_lossy().contains(needle), "{message:?}");
        };
        expect_refusal(&p, "vertex colours");
        p.content = 7;
        expect_refusal(&p, "content is 7");
        p.content = RECON_TURNTABLE_GAUSSIANS;
        p.frames = 0;
        expect_refusal(&p, "frames 0");
        p.frames = 2;
        p.fps = 0;
        expect_refusal(&p, "fps");
        p.fps = 30;
        p.struct_size = 12;
        expect_refusal(&p, "struct_size is 12");
        // NULL result and NULL callback.
        // SAFETY: NULLs are accepted and refused.
        unsafe {
            assert_eq!(
                recon_result_render_turntable(
                    std::ptr::null(),
                    &p,
                    Some(on_frame),
                    std::ptr::null_mut()
                ),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                recon_result_render_turntable(
                    &result,
                    std::ptr::null(),
                    None,
                    std::ptr::null_mut()
                ),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
        }
    }

    #[test]
    fn turntables_are_written_as_png_folders() {
        let result = tiny_result();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("frames");
        let path = crate::ffi::c_string(&target.to_string_lossy());
        let mut p = recon_turntable_params::defaults();
        p.frames = 2;
        p.resolution = 16;
        p.device = RECON_DEVICE_CPU;
        // SAFETY: live values; NULL callback allowed.
        let status = unsafe {
            recon_result_write_turntable(&result, &p, path.as_ptr(), None, std::ptr::null_mut())
        };
        assert_eq!(status, recon_status::RECON_OK);
        let mut names: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["frame_0000.png", "frame_0001.png"]);
        // Only the folder is left beside it (no temporary folder).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(recon_mp4_supported(), i32::from(cfg!(feature = "video")));
    }
}
