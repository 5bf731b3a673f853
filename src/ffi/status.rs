//! Status codes, versions and capability queries.

use std::ffi::c_char;

use super::guarded_or;
use crate::error::ErrorKind;

/// The ABI version of this header; `recon_abi_version()` returns the library's. A binding
/// refuses a library whose ABI version differs from the one it was written for.
pub const RECON_ABI_VERSION: u32 = 1;

/// The library version this header was generated with (`recon_version_string()` returns the
/// library's; tests/abi_guard.rs keeps these equal to Cargo.toml's).
pub const RECON_VERSION_MAJOR: u32 = 0;
pub const RECON_VERSION_MINOR: u32 = 1;
pub const RECON_VERSION_PATCH: u32 = 0;

/// Outcome of a fallible call. The numbers are stable and never reused.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum recon_status {
    /// Success.
    RECON_OK = 0,
    /// An argument is NULL, out of range, inconsistent, or a struct_size is wrong.
    RECON_ERR_INVALID_ARGUMENT = 1,
    /// A file or directory could not be read or written.
    RECON_ERR_IO = 2,
    /// The Hugging Face Hub could not be reached or refused, or offline mode forbids it.
    RECON_ERR_NETWORK = 3,
    /// A file is malformed: pipeline.json, a checkpoint json, a safetensors header, an image.
    RECON_ERR_FORMAT = 4,
    /// A checkpoint does not fit its network: missing, mis-shaped or mis-typed tensor.
    RECON_ERR_CHECKPOINT = 5,
    /// Valid request that this build cannot serve (yet); the message says what is missing.
    RECON_ERR_UNSUPPORTED = 6,
    /// Cancelled by `recon_cancel` or by a progress callback returning 0.
    RECON_ERR_CANCELLED = 7,
    /// Host or GPU memory ran out.
    RECON_ERR_OUT_OF_MEMORY = 8,
    /// The requested device is missing, or the GPU failed.
    RECON_ERR_DEVICE = 9,
    /// A bug in recon, including a caught panic. Please report it with the message.
    RECON_ERR_INTERNAL = 10,
}

impl recon_status {
    pub fn from_error_kind(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidArgument => Self::RECON_ERR_INVALID_ARGUMENT,
            ErrorKind::Io => Self::RECON_ERR_IO,
            ErrorKind::Network => Self::RECON_ERR_NETWORK,
            ErrorKind::Format => Self::RECON_ERR_FORMAT,
            ErrorKind::Checkpoint => Self::RECON_ERR_CHECKPOINT,
            ErrorKind::Unsupported => Self::RECON_ERR_UNSUPPORTED,
            ErrorKind::Cancelled => Self::RECON_ERR_CANCELLED,
            ErrorKind::OutOfMemory => Self::RECON_ERR_OUT_OF_MEMORY,
            ErrorKind::Device => Self::RECON_ERR_DEVICE,
            ErrorKind::Internal => Self::RECON_ERR_INTERNAL,
        }
    }
}

/// The library's ABI version (compare with `RECON_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn recon_abi_version() -> u32 {
    RECON_ABI_VERSION
}

/// The library version, e.g. "0.1.0". Static storage; never free it.
#[no_mangle]
pub extern "C" fn recon_version_string() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr() as *const c_char
}

/// A short English description of `status` (any int32 value is accepted; unknown values
/// give "unknown status"). Static storage; never free it.
#[no_mangle]
pub extern "C" fn recon_status_string(status: i32) -> *const c_char {
    let text: &'static std::ffi::CStr = match status {
        0 => c"ok",
        1 => c"invalid argument",
        2 => c"I/O error",
        3 => c"network error",
        4 => c"malformed file",
        5 => c"checkpoint does not match the network",
        6 => c"not supported by this build",
        7 => c"cancelled",
        8 => c"out of memory",
        9 => c"device error",
        10 => c"internal error",
        _ => c"unknown status",
    };
    text.as_ptr()
}

/// Number of CUDA devices libtorch can use (0 when none or no CUDA build).
#[no_mangle]
pub extern "C" fn recon_cuda_device_count() -> i32 {
    guarded_or(0, || tch::Cuda::device_count() as i32)
}
