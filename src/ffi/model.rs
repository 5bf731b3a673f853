//! `recon_model`: loading, introspection, cancellation and freeing.

use std::ffi::{c_char, c_void, CString};
use std::mem::{offset_of, size_of};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::status::recon_status;
use super::{
    c_string, finish, guarded, guarded_or, init_versioned, non_null, read_versioned, utf8,
    write_c_buffer, ErrorLog,
};
use crate::error::{Error, Result};
use crate::logging::{LogFn, LogLevel};
use crate::pipeline::{DeviceRequest, LoadOptions, Pipeline};

/// `recon_load_params.device`: pick the first CUDA device if usable, else the CPU.
pub const RECON_DEVICE_AUTO: i32 = -2;
/// `recon_load_params.device`: run on the CPU.
pub const RECON_DEVICE_CPU: i32 = -1;

/// `recon_load_params.offline`: follow the HF_HUB_OFFLINE environment variable.
pub const RECON_OFFLINE_FROM_ENV: i32 = -1;

/// Log levels (`recon_log_callback`'s `level`, `recon_load_params.log_level`).
pub const RECON_LOG_ERROR: i32 = 1;
pub const RECON_LOG_WARN: i32 = 2;
pub const RECON_LOG_INFO: i32 = 3;
pub const RECON_LOG_DEBUG: i32 = 4;

/// Receives log messages. Called on the thread that called `recon_load` / `recon_run`;
/// `message` is valid only during the call.
pub type recon_log_callback =
    Option<unsafe extern "C" fn(level: i32, message: *const c_char, user_data: *mut c_void)>;

/// How to load a model. Fill with `recon_load_params_init` (in C and C++ a macro that passes
/// this header's struct size, see below), then set fields.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_load_params {
    /// `sizeof(recon_load_params)`, set by `recon_load_params_init`.
    pub struct_size: u32,
    /// `RECON_DEVICE_AUTO` (default), `RECON_DEVICE_CPU`, or a CUDA device index >= 0.
    /// Loading and running there leave the calling thread's current CUDA device (the one your
    /// own CUDA runtime calls use) as it was.
    pub device: i32,
    /// UTF-8: a local directory in the published layout (pipeline.json + ckpts/), or a
    /// Hugging Face repo id such as "microsoft/TRELLIS-image-large" (optionally "@revision").
    /// Required.
    pub model: *const c_char,
    /// 1: use only the local Hub cache; 0: download what is missing;
    /// `RECON_OFFLINE_FROM_ENV` (default): HF_HUB_OFFLINE decides.
    pub offline: i32,
    /// Most verbose level delivered to `log_callback` (default `RECON_LOG_INFO`).
    pub log_level: i32,
    /// Log sink kept by the model for its lifetime; NULL (default) logs nothing.
    pub log_callback: recon_log_callback,
    /// Passed back to `log_callback`; must stay valid until `recon_free`.
    pub log_user_data: *mut c_void,
    /// Since 0.2 (struct v2). Nonzero: keep only the running stage's networks on the device
    /// (ReconViaGen's low-VRAM mode: each stage builds its networks from the checkpoint files
    /// and frees them when it ends; identical outputs, slower runs). Default 0.
    pub low_vram: i32,
    /// Since 0.2 (struct v2). TRELLIS-VGGT only: where VGGT comes from, a local folder with
    /// config.json + model.safetensors or a Hub repo id (UTF-8); NULL (default):
    /// "Stable-X/vggt-object-v0-1", as the reference.
    pub vggt_model: *const c_char,
    /// Since 0.2 (struct v3). Where background removal's BiRefNet comes from, loaded by the
    /// first run that removes a background (`recon_run_params.remove_background`): a local
    /// folder holding model.safetensors, or a Hub repo id (UTF-8, fetched with this model's
    /// `offline` setting); NULL (default): "ZhengPeng7/BiRefNet", as ReconViaGen and
    /// TRELLIS.2 load.
    pub background_model: *const c_char,
}

/// Size of the v1 struct (through `log_user_data`): the smallest `struct_size` accepted, fixed
/// forever so that callers built against v1 keep working when fields are appended.
const LOAD_PARAMS_V1_SIZE: usize =
    offset_of!(recon_load_params, log_user_data) + size_of::<*mut c_void>();
const _: () = assert!(LOAD_PARAMS_V1_SIZE == 40);
/// Size of the v2 struct (through `vggt_model`).
const LOAD_PARAMS_V2_SIZE: usize =
    offset_of!(recon_load_params, vggt_model) + size_of::<*const c_char>();
const _: () = assert!(LOAD_PARAMS_V2_SIZE == 56);
/// The sizes of every released `recon_load_params` (v1, v2, v3 = current), ascending.
const LOAD_PARAMS_SIZES: [usize; 3] = [
    LOAD_PARAMS_V1_SIZE,
    LOAD_PARAMS_V2_SIZE,
    size_of::<recon_load_params>(),
];
const _: () = assert!(LOAD_PARAMS_SIZES[2] == 64);

impl recon_load_params {
    fn defaults() -> Self {
        Self {
            struct_size: size_of::<Self>() as u32,
            device: RECON_DEVICE_AUTO,
            model: std::ptr::null(),
            offline: RECON_OFFLINE_FROM_ENV,
            log_level: RECON_LOG_INFO,
            log_callback: None,
            log_user_data: std::ptr::null_mut(),
            low_vram: 0,
            vggt_model: std::ptr::null(),
            background_model: std::ptr::null(),
        }
    }
}

/// Fills the v1 fields of `params` (up to `log_user_data`) with defaults and sets
/// `struct_size` to the v1 size (NULL is ignored): the behaviour programs built against the
/// v1 header rely on. In C and C++ this header turns `recon_load_params_init(p)` into
/// `recon_load_params_init_sized(p, sizeof(recon_load_params))`, which fills every field this
/// header declares; call this symbol directly only with a v1-sized struct.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_load_params_init(params: *mut recon_load_params) {
    guarded_or((), || {
        // SAFETY: per the contract, `params` is NULL or holds at least the v1 struct.
        unsafe {
            init_versioned(
                params,
                LOAD_PARAMS_V1_SIZE,
                recon_load_params::defaults(),
                &LOAD_PARAMS_SIZES,
            )
        };
    })
}

/// Fills `params` with defaults for a struct of `size` bytes (`sizeof(recon_load_params)` of
/// the header the caller was built with): the fields of the largest released version that
/// fits in `size` (v1: 40 bytes, v2: 56, v3: 64; a newer header's larger struct gets this
/// library's fields), with `struct_size` set to that version's size. Returns
/// RECON_ERR_INVALID_ARGUMENT, writing nothing, for NULL or a size below the v1 struct.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_load_params_init_sized(
    params: *mut recon_load_params,
    size: usize,
) -> recon_status {
    let result = guarded(|| {
        if params.is_null() {
            return Err(Error::invalid_argument("params is NULL"));
        }
        if size < LOAD_PARAMS_V1_SIZE {
            return Err(Error::invalid_argument(format!(
                "recon_load_params size {size} is below the v1 struct ({LOAD_PARAMS_V1_SIZE} bytes)"
            )));
        }
        // SAFETY: the caller owns `size` bytes at `params`.
        unsafe {
            init_versioned(
                params,
                size,
                recon_load_params::defaults(),
                &LOAD_PARAMS_SIZES,
            )
        };
        Ok(())
    });
    finish(result, None)
}

/// One network of a loaded model, described by `recon_model_network`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct recon_network_info {
    /// Set by the caller to `sizeof(recon_network_info)` before the call.
    pub struct_size: u32,
    /// 1 when recon runs this network; 0 when it only validated the checkpoint.
    pub implemented: i32,
    /// Elements stored in the checkpoint (parameters and buffers).
    pub num_elements: u64,
    /// pipeline.json key, e.g. "sparse_structure_decoder". Owned by the model.
    pub key: *const c_char,
    /// Upstream class, e.g. "SparseStructureDecoder". Owned by the model.
    pub class_name: *const c_char,
    /// Checkpoint stem, e.g. "ckpts/ss_dec_conv3d_16l8_fp16". Owned by the model.
    pub stem: *const c_char,
}

/// Size of the v1 `recon_network_info` (through `stem`).
const NETWORK_INFO_V1_SIZE: usize =
    offset_of!(recon_network_info, stem) + size_of::<*const c_char>();
const _: () = assert!(NETWORK_INFO_V1_SIZE == 40);

struct NetworkStrings {
    key: CString,
    class_name: CString,
    stem: CString,
    implemented: bool,
    num_elements: u64,
}

/// A loaded pipeline, usable from any thread. Runs on one model are serialised by the lock
/// around the pipeline; load several models for parallel runs.
pub struct recon_model {
    pub(crate) pipeline: Mutex<Pipeline>,
    pub(crate) cancel: AtomicBool,
    pub(crate) errors: ErrorLog,
    device: i32,
    pipeline_name: CString,
    networks: Vec<NetworkStrings>,
}

/// A C log callback with its user data, made callable from Rust.
struct CLogger {
    callback: unsafe extern "C" fn(i32, *const c_char, *mut c_void),
    user_data: *mut c_void,
    max_level: i32,
}

// SAFETY: the header's contract makes the callback and its user_data usable from the threads
// that call recon_load / recon_run on the model.
unsafe impl Send for CLogger {}
unsafe impl Sync for CLogger {}

impl CLogger {
    fn log(&self, level: LogLevel, message: &str) {
        if level as i32 <= self.max_level {
            let text = c_string(message);
            // SAFETY: a valid callback per the caller's contract; text outlives the call.
            unsafe { (self.callback)(level as i32, text.as_ptr(), self.user_data) };
        }
    }
}

fn log_sink(params: &recon_load_params) -> Result<Arc<LogFn>> {
    if !(0..=RECON_LOG_DEBUG).contains(&params.log_level) {
        return Err(Error::invalid_argument(format!(
            "recon_load_params.log_level is {}, expected 0..={RECON_LOG_DEBUG}",
            params.log_level
        )));
    }
    Ok(match params.log_callback {
        None => Arc::new(|_: LogLevel, _: &str| {}),
        Some(callback) => {
            let logger = CLogger {
                callback,
                user_data: params.log_user_data,
                max_level: params.log_level,
            };
            Arc::new(move |level: LogLevel, message: &str| logger.log(level, message))
        }
    })
}

fn load_options(params: &recon_load_params) -> Result<LoadOptions> {
    // SAFETY: the header requires `model` to be NULL or a NUL-terminated string.
    let source = unsafe { utf8(params.model, "recon_load_params.model") }?;
    let mut options = LoadOptions::new(source);
    options.device = match params.device {
        RECON_DEVICE_AUTO => DeviceRequest::Auto,
        RECON_DEVICE_CPU => DeviceRequest::Cpu,
        index if index >= 0 => DeviceRequest::Cuda(index as usize),
        other => {
            return Err(Error::invalid_argument(format!(
                "recon_load_params.device is {other}; use RECON_DEVICE_AUTO, RECON_DEVICE_CPU or a CUDA index >= 0"
            )))
        }
    };
    options.offline = match params.offline {
        RECON_OFFLINE_FROM_ENV => None,
        0 => Some(false),
        1 => Some(true),
        other => {
            return Err(Error::invalid_argument(format!(
                "recon_load_params.offline is {other}; use 0, 1 or RECON_OFFLINE_FROM_ENV"
            )))
        }
    };
    options.log = log_sink(params)?;
    options.low_vram = match params.low_vram {
        0 => false,
        1 => true,
        other => {
            return Err(Error::invalid_argument(format!(
                "recon_load_params.low_vram is {other}; use 0 or 1"
            )))
        }
    };
    if !params.vggt_model.is_null() {
        // SAFETY: the header requires `vggt_model` to be NULL or a NUL-terminated string.
        let vggt = unsafe { utf8(params.vggt_model, "recon_load_params.vggt_model") }?;
        options.vggt_model = Some(vggt.to_string());
    }
    if !params.background_model.is_null() {
        // SAFETY: the header requires `background_model` to be NULL or a NUL-terminated
        // string.
        let source = unsafe {
            utf8(
                params.background_model,
                "recon_load_params.background_model",
            )
        }?;
        if source.is_empty() {
            return Err(Error::invalid_argument(
                "recon_load_params.background_model is empty; use NULL for the default \
                 (ZhengPeng7/BiRefNet)",
            ));
        }
        options.background_model = Some(source.to_string());
    }
    Ok(options)
}

fn new_model(pipeline: Pipeline) -> recon_model {
    let networks = pipeline
        .networks()
        .iter()
        .map(|n| NetworkStrings {
            key: c_string(&n.key),
            class_name: c_string(&n.class),
            stem: c_string(&n.stem),
            implemented: n.is_implemented(),
            num_elements: n.num_elements as u64,
        })
        .collect();
    let device = match pipeline.device() {
        tch::Device::Cuda(index) => index as i32,
        _ => RECON_DEVICE_CPU,
    };
    recon_model {
        pipeline_name: c_string(pipeline.name()),
        device,
        pipeline: Mutex::new(pipeline),
        cancel: AtomicBool::new(false),
        errors: ErrorLog::new(),
        networks,
    }
}

/// Loads a pipeline. On success writes a new model to `*out_model` (free it with
/// `recon_free`). On failure writes nothing to `*out_model` and, when `error_buf` is not
/// NULL, a NUL-terminated message (truncated to `error_buf_len` bytes) naming what was wrong.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_load(
    params: *const recon_load_params,
    out_model: *mut *mut recon_model,
    error_buf: *mut c_char,
    error_buf_len: usize,
) -> recon_status {
    let result = guarded(|| {
        if out_model.is_null() {
            return Err(Error::invalid_argument("out_model is NULL"));
        }
        // SAFETY: the caller passes NULL or a recon_load_params with a valid struct_size.
        let params = unsafe {
            read_versioned(
                params,
                recon_load_params::defaults(),
                &LOAD_PARAMS_SIZES,
                "recon_load_params",
            )
        }?;
        let options = load_options(&params)?;
        let pipeline = Pipeline::load(&options)?;
        let model = Box::into_raw(Box::new(new_model(pipeline)));
        // SAFETY: checked non-NULL above.
        unsafe { out_model.write(model) };
        Ok(())
    });
    if let Err(error) = &result {
        // SAFETY: the caller passes NULL or `error_buf_len` writable bytes.
        unsafe { write_c_buffer(error_buf, error_buf_len, error.message()) };
    }
    finish(result, None)
}

/// Frees a model (NULL is ignored). No call on it may be in progress or follow.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_free(model: *mut recon_model) {
    guarded_or((), || {
        if !model.is_null() {
            // SAFETY: `model` came from recon_load and is freed once, per the header.
            drop(unsafe { Box::from_raw(model) });
        }
    })
}

/// The message of the latest failed call on `model` ("" when none; "" for NULL). Owned by the
/// model; valid until `recon_free` or until 16 more calls on the model have failed.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_model_last_error(model: *const recon_model) -> *const c_char {
    guarded_or(c"".as_ptr(), || {
        // SAFETY: NULL or a live model.
        match unsafe { model.as_ref() } {
            Some(model) => model.errors.last(),
            None => c"".as_ptr(),
        }
    })
}

/// Asks the run in progress on `model` to stop; it returns `RECON_ERR_CANCELLED` at the next
/// step or stage boundary. Callable from any thread; NULL is ignored. Each `recon_run` clears
/// the request when it starts, so a cancel sent while no run is active has no effect.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_cancel(model: *const recon_model) {
    guarded_or((), || {
        // SAFETY: NULL or a live model.
        if let Some(model) = unsafe { model.as_ref() } {
            model
                .cancel
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
}

/// The pipeline's name from pipeline.json (e.g. "TrellisImageTo3DPipeline"); "" for NULL.
/// Owned by the model.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_model_pipeline_name(model: *const recon_model) -> *const c_char {
    guarded_or(c"".as_ptr(), || {
        // SAFETY: NULL or a live model.
        unsafe { model.as_ref() }.map_or(c"".as_ptr(), |m| m.pipeline_name.as_ptr())
    })
}

/// The device the model runs on: `RECON_DEVICE_CPU` or a CUDA index (`RECON_DEVICE_CPU` for
/// NULL).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_model_device(model: *const recon_model) -> i32 {
    // SAFETY: NULL or a live model.
    guarded_or(RECON_DEVICE_CPU, || {
        unsafe { model.as_ref() }.map_or(RECON_DEVICE_CPU, |m| m.device)
    })
}

/// Number of networks the model loaded (0 for NULL).
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_model_num_networks(model: *const recon_model) -> usize {
    // SAFETY: NULL or a live model.
    guarded_or(0, || {
        unsafe { model.as_ref() }.map_or(0, |m| m.networks.len())
    })
}

/// Describes network `index` (0 ≤ index < `recon_model_num_networks`). Set
/// `out->struct_size = sizeof(recon_network_info)` first.
///
/// # Safety
/// Each pointer argument must be NULL or valid for its documented use: handles as returned
/// by this library and not yet freed, strings NUL-terminated, structs with their struct_size.
#[no_mangle]
pub unsafe extern "C" fn recon_model_network(
    model: *const recon_model,
    index: usize,
    out: *mut recon_network_info,
) -> recon_status {
    // SAFETY: NULL or a live model.
    let model_ref = unsafe { model.as_ref() };
    let result = guarded(|| {
        // SAFETY: NULL or a live model.
        let model = unsafe { non_null(model, "model") }?;
        let net = model.networks.get(index).ok_or_else(|| {
            Error::invalid_argument(format!(
                "network index {index} is out of range (the model has {})",
                model.networks.len()
            ))
        })?;
        let info = recon_network_info {
            struct_size: size_of::<recon_network_info>() as u32,
            implemented: i32::from(net.implemented),
            num_elements: net.num_elements,
            key: net.key.as_ptr(),
            class_name: net.class_name.as_ptr(),
            stem: net.stem.as_ptr(),
        };
        // SAFETY: the caller passes NULL or a recon_network_info with its struct_size set.
        unsafe { write_versioned(out, info, NETWORK_INFO_V1_SIZE, "out") }
    });
    finish(result, model_ref.map(|m| &m.errors))
}

/// Writes `value` over the caller's struct, no more than the caller's `struct_size` bytes.
///
/// # Safety
/// `out` must be NULL or point to a struct whose first field (u32 struct_size) tells how many
/// bytes are writable.
pub(crate) unsafe fn write_versioned<T: Copy>(
    out: *mut T,
    value: T,
    min_size: usize,
    what: &str,
) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: every versioned struct begins with a u32 struct_size.
    let size = unsafe { *(out as *const u32) } as usize;
    let ours = size_of::<T>();
    if size < min_size || size > ours {
        return Err(Error::invalid_argument(format!(
            "{what}->struct_size is {size}, expected {ours}"
        )));
    }
    // SAFETY: the caller owns `size` bytes at `out`; `value` is at least that long. The
    // struct_size field keeps the caller's value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&value as *const T as *const u8).add(4),
            (out as *mut u8).add(4),
            size - 4,
        )
    };
    Ok(())
}
