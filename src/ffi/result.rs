//! `recon_result`: one run's outputs as borrowed typed arrays, exports, library-owned buffers.

use std::ffi::c_char;
use std::mem::{offset_of, size_of};

use super::model::write_versioned;
use super::status::recon_status;
use super::{finish, guarded, guarded_or, non_null, utf8, ErrorLog};
use crate::error::{Error, Result};
use crate::export::{from_export_code, GLB_WITH_CAMERAS_CODE};
use crate::pipeline::{Camera, Output};

/// Export formats for `recon_result_export` / `recon_result_export_buffer`.
pub const RECON_EXPORT_GLB: i32 = 1;
pub const RECON_EXPORT_PLY_GAUSSIANS: i32 = 2;
pub const RECON_EXPORT_PLY_MESH: i32 = 3;
pub const RECON_EXPORT_OBJ: i32 = 4;
/// The mesh as GLB plus each camera of the result (`recon_result_num_cameras`) as a glTF
/// perspective camera node "camera_<i>": placed at the camera's pose in the GLB's Y-up frame,
/// looking down its -Z; yfov = 2 atan(height / (2 fy)); the node's extras keep the OpenCV
/// intrinsics (fx, fy, cx, cy, width, height) and the original extrinsic. A result without
/// cameras (TRELLIS estimates no poses) gives the same file as `RECON_EXPORT_GLB`.
pub const RECON_EXPORT_GLB_WITH_CAMERAS: i32 = 5;

const _: () = assert!(
    RECON_EXPORT_GLB_WITH_CAMERAS == GLB_WITH_CAMERAS_CODE
        && RECON_EXPORT_OBJ < RECON_EXPORT_GLB_WITH_CAMERAS
);

/// The outputs of one `recon_run`. Independent of the model: it may outlive it.
pub struct recon_result {
    output: Output,
    errors: ErrorLog,
}

impl recon_result {
    pub(crate) fn new(output: Output) -> Self {
        Self {
            output,
            errors: ErrorLog::new(),
        }
    }

    /// The run's outputs (for the other `recon_result_*` modules).
    pub(crate) fn output(&self) -> &Output {
        &self.output
    }

    /// Where failed calls on this result record their messages.
    pub(crate) fn errors(&self) -> &ErrorLog {
        &self.errors
    }
}

/// A library-owned byte buffer (an exported file). Free with `recon_buffer_free`.
pub struct recon_buffer {
    bytes: Vec<u8>,
}

impl recon_buffer {
    /// A buffer holding `bytes` (for the other export modules).
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }
}

/// 3D Gaussians, activated (positions, SH DC colours, scales, unit quaternions w,x,y,z,
/// opacities in 0..1). Arrays are borrowed from the result, valid until `recon_result_free`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_gaussians {
    /// Set by the caller to `sizeof(recon_gaussians)` before the call.
    pub struct_size: u32,
    /// Number of Gaussians N.
    pub count: usize,
    /// N×3 floats.
    pub xyz: *const f32,
    /// N×3 floats.
    pub features_dc: *const f32,
    /// N×3 floats.
    pub scaling: *const f32,
    /// N×4 floats.
    pub rotation: *const f32,
    /// N floats.
    pub opacity: *const f32,
}

/// A triangle mesh. Arrays are borrowed from the result, valid until `recon_result_free`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_mesh {
    /// Set by the caller to `sizeof(recon_mesh)` before the call.
    pub struct_size: u32,
    pub num_vertices: usize,
    /// num_vertices×3 floats.
    pub positions: *const f32,
    /// num_vertices×3 floats in 0..1, or NULL when the mesh has no vertex colours.
    pub colors: *const f32,
    pub num_faces: usize,
    /// num_faces×3 vertex indices.
    pub indices: *const u32,
}

/// A camera recovered for one input view: OpenCV convention (x right, y down, z forward),
/// camera-from-world, where the world is the frame of the result's own arrays (Gaussians and
/// mesh: TRELLIS's native Z-up frame, not the Y-up of the GLB). A world point X projects to
/// pixel (u, v) by (u·w, v·w, w) = intrinsic · (R·X + t).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_camera {
    /// Set by the caller to `sizeof(recon_camera)` before the call.
    pub struct_size: u32,
    /// The input view's size in pixels, which the intrinsics refer to.
    pub width: u32,
    pub height: u32,
    /// 3×4 row-major [R | t].
    pub extrinsic: [f32; 12],
    /// 3×3 row-major intrinsics, in pixels: fx 0 cx / 0 fy cy / 0 0 1.
    pub intrinsic: [f32; 9],
}

// v1 sizes of the output structs: the smallest `struct_size` a caller may pass, fixed forever.
const GAUSSIANS_V1_SIZE: usize = offset_of!(recon_gaussians, opacity) + size_of::<*const f32>();
const MESH_V1_SIZE: usize = offset_of!(recon_mesh, indices) + size_of::<*const u32>();
const CAMERA_V1_SIZE: usize = offset_of!(recon_camera, intrinsic) + 9 * size_of::<f32>();
const _: () = assert!(GAUSSIANS_V1_SIZE == 56 && MESH_V1_SIZE == 48 && CAMERA_V1_SIZE == 96);

fn result_ref<'a>(result: *const recon_result) -> Option<&'a recon_result> {
    // SAFETY: NULL or a live result, per the header.
    unsafe { result.as_ref() }
}

/// Frees a result (NULL is ignored).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_free(result: *mut recon_result) {
    guarded_or((), || {
        if !result.is_null() {
            // SAFETY: came from recon_run and is freed once, per the header.
            drop(unsafe { Box::from_raw(result) });
        }
    })
}

/// The message of the latest failed call on `result` ("" when none or NULL). Owned by the
/// result; valid until `recon_result_free` or until 16 more calls on it have failed.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_last_error(result: *const recon_result) -> *const c_char {
    guarded_or(c"".as_ptr(), || {
        result_ref(result).map_or(c"".as_ptr(), |r| r.errors.last())
    })
}

/// The Gaussians of `result`; fails when the run did not produce them.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_gaussians(
    result: *const recon_result,
    out: *mut recon_gaussians,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        let g = r.output.gaussians.as_ref().ok_or_else(|| {
            Error::invalid_argument(
                "the result has no Gaussians (not requested in recon_run_params.formats)",
            )
        })?;
        let view = recon_gaussians {
            struct_size: size_of::<recon_gaussians>() as u32,
            count: g.len(),
            xyz: g.xyz.as_ptr(),
            features_dc: g.features_dc.as_ptr(),
            scaling: g.scaling.as_ptr(),
            rotation: g.rotation.as_ptr(),
            opacity: g.opacity.as_ptr(),
        };
        // SAFETY: NULL or a caller struct with struct_size set.
        unsafe { write_versioned(out, view, GAUSSIANS_V1_SIZE, "out") }
    });
    finish(status, result_ref(result).map(|r| &r.errors))
}

/// The mesh of `result`; fails when the run did not produce one.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_mesh(
    result: *const recon_result,
    out: *mut recon_mesh,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        let m = r.output.mesh.as_ref().ok_or_else(|| {
            Error::invalid_argument(
                "the result has no mesh (not requested in recon_run_params.formats)",
            )
        })?;
        let view = recon_mesh {
            struct_size: size_of::<recon_mesh>() as u32,
            num_vertices: m.positions.len() / 3,
            positions: m.positions.as_ptr(),
            colors: if m.colors.is_empty() {
                std::ptr::null()
            } else {
                m.colors.as_ptr()
            },
            num_faces: m.indices.len() / 3,
            indices: m.indices.as_ptr(),
        };
        // SAFETY: NULL or a caller struct with struct_size set.
        unsafe { write_versioned(out, view, MESH_V1_SIZE, "out") }
    });
    finish(status, result_ref(result).map(|r| &r.errors))
}

/// Number of cameras in `result` (one per input view when the pipeline estimates poses; 0
/// otherwise or for NULL).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_num_cameras(result: *const recon_result) -> usize {
    guarded_or(0, || {
        result_ref(result).map_or(0, |r| r.output.cameras.len())
    })
}

/// Camera `index` of `result`.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_camera(
    result: *const recon_result,
    index: usize,
    out: *mut recon_camera,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        let cam = camera_at(r, index)?;
        let view = recon_camera {
            struct_size: size_of::<recon_camera>() as u32,
            width: cam.width,
            height: cam.height,
            extrinsic: cam.extrinsic,
            intrinsic: cam.intrinsic,
        };
        // SAFETY: NULL or a caller struct with struct_size set.
        unsafe { write_versioned(out, view, CAMERA_V1_SIZE, "out") }
    });
    finish(status, result_ref(result).map(|r| &r.errors))
}

/// Camera `index` of `result`'s output, or InvalidArgument naming the range.
fn camera_at(result: &recon_result, index: usize) -> Result<&Camera> {
    result.output.cameras.get(index).ok_or_else(|| {
        Error::invalid_argument(format!(
            "camera index {index} is out of range (the result has {})",
            result.output.cameras.len()
        ))
    })
}

/// Camera `index` of `result` as matrices: `out_extrinsic_4x4` receives 16 floats, the
/// camera-from-world transform [R | t] with the last row 0 0 0 1; `out_intrinsic_3x3` receives
/// 9 floats (fx 0 cx / 0 fy cy / 0 0 1, in pixels). Both row-major, in the convention and
/// world frame of `recon_camera` (OpenCV axes; the native Z-up frame of the result's
/// arrays). Either output may be NULL to skip it. Fails, writing nothing, when `result` is
/// NULL or `index` >= `recon_result_num_cameras(result)`.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size;
/// `out_extrinsic_4x4` 16 and `out_intrinsic_3x3` 9 writable floats.
#[no_mangle]
pub unsafe extern "C" fn recon_result_camera_matrices(
    result: *const recon_result,
    index: usize,
    out_extrinsic_4x4: *mut f32,
    out_intrinsic_3x3: *mut f32,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        let cam = camera_at(r, index)?;
        let extrinsic = extrinsic_4x4(cam);
        if !out_extrinsic_4x4.is_null() {
            // SAFETY: non-NULL, 16 writable floats per the header.
            unsafe { std::ptr::copy_nonoverlapping(extrinsic.as_ptr(), out_extrinsic_4x4, 16) };
        }
        if !out_intrinsic_3x3.is_null() {
            // SAFETY: non-NULL, 9 writable floats per the header.
            unsafe { std::ptr::copy_nonoverlapping(cam.intrinsic.as_ptr(), out_intrinsic_3x3, 9) };
        }
        Ok(())
    });
    finish(status, result_ref(result).map(|r| &r.errors))
}

/// The 3×4 `[R | t]` with the homogeneous row 0 0 0 1 below, row-major.
fn extrinsic_4x4(camera: &Camera) -> [f32; 16] {
    let mut m = [0.0; 16];
    m[..12].copy_from_slice(&camera.extrinsic);
    m[15] = 1.0;
    m
}

fn export_bytes(output: &Output, format: i32) -> Result<Vec<u8>> {
    let (format, options) = from_export_code(format)?;
    crate::export::export_to_bytes_with(output, format, &options)
}

/// Writes `result` to the file `path` (UTF-8) in `format` (`RECON_EXPORT_*`). The file appears
/// whole or not at all. Fails when the result lacks what the format needs (the mesh for GLB,
/// OBJ and mesh PLY; the Gaussians for the Gaussian PLY).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_export(
    result: *const recon_result,
    format: i32,
    path: *const c_char,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let path = unsafe { utf8(path, "path") }?;
        let (format, options) = from_export_code(format)?;
        crate::export::export_to_path_with(&r.output, format, &options, std::path::Path::new(path))
    });
    finish(status, result_ref(result).map(|r| &r.errors))
}

/// Exports `result` in `format` to a new library-owned buffer (free with `recon_buffer_free`).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_result_export_buffer(
    result: *const recon_result,
    format: i32,
    out_buffer: *mut *mut recon_buffer,
) -> recon_status {
    let status = guarded(|| {
        // SAFETY: NULL or a live result.
        let r = unsafe { non_null(result, "result") }?;
        if out_buffer.is_null() {
            return Err(Error::invalid_argument("out_buffer is NULL"));
        }
        let bytes = export_bytes(&r.output, format)?;
        let buffer = Box::into_raw(Box::new(recon_buffer { bytes }));
        // SAFETY: checked non-NULL above.
        unsafe { out_buffer.write(buffer) };
        Ok(())
    });
    finish(status, result_ref(result).map(|r| &r.errors))
}

/// The bytes of `buffer` (NULL for NULL), valid until `recon_buffer_free`.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_buffer_data(buffer: *const recon_buffer) -> *const u8 {
    // SAFETY: NULL or a live buffer.
    guarded_or(std::ptr::null(), || {
        unsafe { buffer.as_ref() }.map_or(std::ptr::null(), |b| b.bytes.as_ptr())
    })
}

/// The size of `buffer` in bytes (0 for NULL).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_buffer_size(buffer: *const recon_buffer) -> usize {
    // SAFETY: NULL or a live buffer.
    guarded_or(0, || {
        unsafe { buffer.as_ref() }.map_or(0, |b| b.bytes.len())
    })
}

/// Frees a buffer (NULL is ignored).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_buffer_free(buffer: *mut recon_buffer) {
    guarded_or((), || {
        if !buffer.is_null() {
            // SAFETY: came from recon_result_export_buffer and is freed once.
            drop(unsafe { Box::from_raw(buffer) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Camera, Gaussians, Mesh};

    fn sample_result() -> recon_result {
        recon_result::new(Output {
            gaussians: Some(Gaussians {
                xyz: vec![0.0, 1.0, 2.0],
                features_dc: vec![0.5; 3],
                scaling: vec![0.01; 3],
                rotation: vec![1.0, 0.0, 0.0, 0.0],
                opacity: vec![0.9],
            }),
            mesh: None,
            cameras: vec![Camera {
                width: 518,
                height: 518,
                ..Camera::default()
            }],
        })
    }

    #[test]
    fn accessors_borrow_the_result_arrays() {
        let result = sample_result();
        let mut g = recon_gaussians {
            struct_size: size_of::<recon_gaussians>() as u32,
            count: 0,
            xyz: std::ptr::null(),
            features_dc: std::ptr::null(),
            scaling: std::ptr::null(),
            rotation: std::ptr::null(),
            opacity: std::ptr::null(),
        };
        // SAFETY: valid pointers to live values.
        unsafe {
            assert_eq!(
                recon_result_gaussians(&result, &mut g),
                recon_status::RECON_OK
            );
            assert_eq!(g.count, 1);
            assert_eq!(*g.xyz.add(2), 2.0);
            assert_eq!(recon_result_num_cameras(&result), 1);
            let mut cam = std::mem::zeroed::<recon_camera>();
            cam.struct_size = size_of::<recon_camera>() as u32;
            assert_eq!(
                recon_result_camera(&result, 0, &mut cam),
                recon_status::RECON_OK
            );
            assert_eq!((cam.width, cam.height), (518, 518));
            assert_eq!(
                recon_result_camera(&result, 1, &mut cam),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            let message = std::ffi::CStr::from_ptr(recon_result_last_error(&result));
            assert!(message
                .to_str()
                .unwrap()
                .contains("index 1 is out of range"));

            let mut mesh = std::mem::zeroed::<recon_mesh>();
            mesh.struct_size = size_of::<recon_mesh>() as u32;
            assert_eq!(
                recon_result_mesh(&result, &mut mesh),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            // A too-small struct_size is refused and nothing is written.
            g.struct_size = 4;
            g.count = 77;
            assert_eq!(
                recon_result_gaussians(&result, &mut g),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            assert_eq!(g.count, 77);
        }
    }

    /// A camera 2 m from the origin looking at it along native −Y (a quarter turn about X),
    /// 640×480 with fx ≠ fy and an off-centre principal point.
    fn posed_camera() -> Camera {
        Camera {
            extrinsic: [1.0, 0.0, 0.0, 0.1, 0.0, 0.0, -1.0, 0.2, 0.0, 1.0, 0.0, 2.0],
            intrinsic: [500.0, 0.0, 330.0, 0.0, 520.0, 250.0, 0.0, 0.0, 1.0],
            width: 640,
            height: 480,
        }
    }

    #[test]
    fn camera_matrices_are_row_major_4x4_and_3x3() {
        let mut result = sample_result();
        result.output.cameras.push(posed_camera());
        let mut e = [f32::NAN; 16];
        let mut k = [f32::NAN; 9];
        // SAFETY: valid pointers to live values of the documented sizes.
        unsafe {
            assert_eq!(
                recon_result_camera_matrices(&result, 1, e.as_mut_ptr(), k.as_mut_ptr()),
                recon_status::RECON_OK
            );
            let cam = posed_camera();
            assert_eq!(&e[..12], &cam.extrinsic);
            assert_eq!(&e[12..], &[0.0, 0.0, 0.0, 1.0]);
            assert_eq!(k, cam.intrinsic);
            // The 4×4 and recon_result_camera agree.
            let mut view = std::mem::zeroed::<recon_camera>();
            view.struct_size = size_of::<recon_camera>() as u32;
            assert_eq!(
                recon_result_camera(&result, 1, &mut view),
                recon_status::RECON_OK
            );
            assert_eq!(&e[..12], &view.extrinsic);
            // Either output may be NULL.
            let mut e2 = [0f32; 16];
            assert_eq!(
                recon_result_camera_matrices(&result, 0, e2.as_mut_ptr(), std::ptr::null_mut()),
                recon_status::RECON_OK
            );
            assert_eq!(e2[15], 1.0);
            assert_eq!(
                recon_result_camera_matrices(
                    &result,
                    1,
                    std::ptr::null_mut(),
                    std::ptr::null_mut()
                ),
                recon_status::RECON_OK
            );
            // Out of range and NULL result: refused, nothing written.
            let mut untouched = [7f32; 16];
            assert_eq!(
                recon_result_camera_matrices(&result, 2, untouched.as_mut_ptr(), k.as_mut_ptr()),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            assert_eq!(untouched, [7.0; 16]);
            let message = std::ffi::CStr::from_ptr(recon_result_last_error(&result));
            assert!(message
                .to_str()
                .unwrap()
                .contains("index 2 is out of range (the result has 2)"));
            assert_eq!(
                recon_result_camera_matrices(
                    std::ptr::null(),
                    0,
                    untouched.as_mut_ptr(),
                    k.as_mut_ptr()
                ),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            assert_eq!(untouched, [7.0; 16]);
        }
    }

    #[test]
    fn glb_with_cameras_holds_a_camera_node_per_view() {
        let mut result = sample_result();
        result.output.cameras = vec![posed_camera(), posed_camera()];
        result.output.mesh = Some(Mesh {
            positions: vec![0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.1, 0.0],
            colors: Vec::new(),
            indices: vec![0, 1, 2],
        });
        let glb = |format| {
            let mut buffer = std::ptr::null_mut();
            // SAFETY: valid pointers to live values; the buffer is freed below.
            unsafe {
                assert_eq!(
                    recon_result_export_buffer(&result, format, &mut buffer),
                    recon_status::RECON_OK
                );
                let bytes = std::slice::from_raw_parts(
                    recon_buffer_data(buffer),
                    recon_buffer_size(buffer),
                )
                .to_vec();
                recon_buffer_free(buffer);
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        let with = glb(RECON_EXPORT_GLB_WITH_CAMERAS);
        assert!(with.contains("\"camera_0\"") && with.contains("\"camera_1\""));
        assert!(with.contains("\"perspective\""));
        assert!(!glb(RECON_EXPORT_GLB).contains("camera_"));
        // Without a mesh there is no GLB, cameras or not.
        result.output.mesh = None;
        let mut buffer = std::ptr::null_mut();
        // SAFETY: valid pointers to live values.
        unsafe {
            assert_eq!(
                recon_result_export_buffer(&result, RECON_EXPORT_GLB_WITH_CAMERAS, &mut buffer),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            assert!(buffer.is_null());
        }
    }

    #[test]
    fn export_writes_what_the_result_holds_and_refuses_the_rest() {
        let mut result = sample_result();
        result.output.gaussians = None;
        result.output.mesh = Some(Mesh {
            positions: vec![0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.1, 0.0],
            colors: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            indices: vec![0, 1, 2],
        });
        let dir = tempfile::tempdir().unwrap();
        let path = crate::ffi::c_string(&dir.path().join("a.glb").to_string_lossy());
        let mut buffer = std::ptr::null_mut();
        // SAFETY: valid pointers to live values.
        unsafe {
            assert_eq!(
                recon_result_export(&result, 99, path.as_ptr()),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            assert!(!dir.path().join("a.glb").exists());
            assert_eq!(
                recon_result_export_buffer(&result, RECON_EXPORT_PLY_GAUSSIANS, &mut buffer),
                recon_status::RECON_ERR_INVALID_ARGUMENT
            );
            assert!(buffer.is_null());
            assert_eq!(
                recon_result_export(&result, RECON_EXPORT_GLB, path.as_ptr()),
                recon_status::RECON_OK
            );
            assert_eq!(
                recon_result_export_buffer(&result, RECON_EXPORT_OBJ, &mut buffer),
                recon_status::RECON_OK
            );
            assert!(recon_buffer_size(buffer) > 0);
            recon_buffer_free(buffer);
        }
        let glb = std::fs::read(dir.path().join("a.glb")).unwrap();
        assert_eq!(&glb[..4], b"glTF");

        // A path that is not UTF-8: refused by name, nothing written under any spelling.
        let mut bad = dir
            .path()
            .join("b")
            .to_string_lossy()
            .into_owned()
            .into_bytes();
        bad.extend_from_slice(b"\xff\xfe.glb\0");
        // SAFETY: a NUL-terminated byte string.
        let status = unsafe {
            recon_result_export(&result, RECON_EXPORT_GLB, bad.as_ptr() as *const c_char)
        };
        assert_eq!(status, recon_status::RECON_ERR_INVALID_ARGUMENT);
        // SAFETY: a live result.
        let message = unsafe { std::ffi::CStr::from_ptr(recon_result_last_error(&result)) };
        assert!(message.to_string_lossy().contains("UTF-8"), "{message:?}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only a.glb: {names:?}");
    }
}
