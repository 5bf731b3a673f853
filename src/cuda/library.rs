//! Locating the CUDA driver (`libcuda.so.1`) and NVRTC (`libnvrtc.so.<major>`) at run time.
//!
//! cudarc opens both lazily by name (`dlopen("libnvrtc.so.13")` and its other candidates), and
//! panics when none is found, so every entry point here checks presence first and returns an
//! error instead.
//!
//! NVRTC is not part of the driver: it comes with a CUDA toolkit or, for us, with the PyTorch
//! wheels next to libtorch (`site-packages/nvidia/cu13/lib/libnvrtc.so.13`, or
//! `nvidia/cuda_nvrtc/lib/libnvrtc.so.12` for CUDA 12 wheels). Our binaries carry an rpath to
//! libtorch's directory only, so when the plain name does not resolve (no `LD_LIBRARY_PATH`),
//! we find the directory of the libtorch this process has loaded and open the NVRTC among its
//! sibling `nvidia/*/lib` folders by full path. Once loaded, cudarc's later `dlopen` of the
//! same soname returns that copy. NVRTC in turn opens `libnvrtc-builtins.so.<version>` by
//! name, which the loader would not find in that folder either, so the builtins beside it are
//! loaded first, the same way. `RECON_NVRTC_LIBRARY` (a file path) overrides the search.

use std::ffi::{c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, ErrorKind, Result};

/// Environment variable naming the NVRTC library to use (a path to `libnvrtc.so.*`).
pub const NVRTC_LIBRARY_ENV: &str = "RECON_NVRTC_LIBRARY";

/// Makes sure cudarc can open NVRTC; the search runs once per process.
pub fn ensure_nvrtc() -> Result<()> {
    static STATE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    STATE
        .get_or_init(locate_nvrtc)
        .clone()
        .map_err(|message| Error::new(ErrorKind::Device, message))
}

/// Makes sure cudarc can open the CUDA driver library.
pub fn ensure_driver() -> Result<()> {
    static STATE: OnceLock<bool> = OnceLock::new();
    // SAFETY: only dlopens candidate names of the driver library and closes them again.
    let present = *STATE.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() });
    if present {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Device,
            "CUDA: the driver library (libcuda.so.1) is not installed or not on the loader path",
        ))
    }
}

fn nvrtc_present() -> bool {
    // SAFETY: only dlopens candidate names of NVRTC and closes them again.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn locate_nvrtc() -> std::result::Result<(), String> {
    if let Some(path) = std::env::var_os(NVRTC_LIBRARY_ENV) {
        let path = PathBuf::from(path);
        open_with_builtins(&path)?;
        return if nvrtc_present() {
            Ok(())
        } else {
            Err(format!(
                "CUDA: {NVRTC_LIBRARY_ENV}={} was loaded but is not a libnvrtc.so.<major> that \
                 cudarc recognises",
                path.display()
            ))
        };
    }
    if nvrtc_present() {
        return Ok(());
    }
    let candidates = nvrtc_next_to_libtorch();
    for candidate in &candidates {
        if open_with_builtins(candidate).is_ok() && nvrtc_present() {
            tracing::debug!("NVRTC loaded from {}", candidate.display());
            return Ok(());
        }
    }
    Err(format!(
        "CUDA: NVRTC (libnvrtc.so) not found on the loader path nor next to libtorch (tried {:?}); \
         set LD_LIBRARY_PATH or {NVRTC_LIBRARY_ENV}",
        candidates
    ))
}

/// Opens the NVRTC at `path` after the `libnvrtc-builtins.so.*` of its folder.
fn open_with_builtins(path: &Path) -> std::result::Result<(), String> {
    if let Some(Ok(files)) = path.parent().map(std::fs::read_dir) {
        for file in files.flatten() {
            let name = file.file_name();
            // libnvrtc-builtins.so.13.0, not the libnvrtc-builtins.alt.so.13.0 variant.
            if name.to_string_lossy().starts_with("libnvrtc-builtins.so.") {
                open_global(&file.path())?;
            }
        }
    }
    open_global(path)
}

/// Opens `path` and keeps it loaded for the life of the process.
fn open_global(path: &Path) -> std::result::Result<(), String> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("CUDA: library path {} contains a NUL byte", path.display()))?;
    // SAFETY: dlopen with a valid C string; the handle is deliberately never closed, so the
    // library stays mapped while cudarc holds symbols from it.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns null or a NUL-terminated message owned by libc.
        let reason = unsafe {
            let message = libc::dlerror();
            if message.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(message).to_string_lossy().into_owned()
            }
        };
        return Err(format!("CUDA: cannot load {}: {reason}", path.display()));
    }
    Ok(())
}

/// `libnvrtc.so.<major>` files in the `nvidia/*/lib` folders beside the loaded libtorch
/// (`site-packages/torch/lib/../../nvidia`), newest major first.
fn nvrtc_next_to_libtorch() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for torch_lib in loaded_libtorch_dirs() {
        let Some(site_packages) = torch_lib.parent().and_then(Path::parent) else {
            continue;
        };
        let Ok(packages) = std::fs::read_dir(site_packages.join("nvidia")) else {
            continue;
        };
        for package in packages.flatten() {
            let Ok(files) = std::fs::read_dir(package.path().join("lib")) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let name = name.to_string_lossy();
                // libnvrtc.so.13, not libnvrtc-builtins.so.13.0 nor libnvrtc.alt.so.13.
                if let Some(major) = name.strip_prefix("libnvrtc.so.") {
                    if major.parse::<u32>().is_ok() {
                        found.push(file.path());
                    }
                }
            }
        }
    }
    found.sort_by(|a, b| b.file_name().cmp(&a.file_name()));
    found.dedup();
    found
}

/// Directories of the libtorch libraries mapped into this process.
fn loaded_libtorch_dirs() -> Vec<PathBuf> {
    let mut objects: Vec<PathBuf> = Vec::new();
    // SAFETY: dl_iterate_phdr calls `collect` synchronously with valid `info` pointers and our
    // `data`, a live `Vec<PathBuf>`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(collect),
            &mut objects as *mut Vec<PathBuf> as *mut c_void,
        );
    }
    let mut dirs: Vec<PathBuf> = objects
        .iter()
        .filter(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy())
                .is_some_and(|name| {
                    name.starts_with("libtorch_cpu.") || name.starts_with("libc10.")
                })
        })
        .filter_map(|path| path.parent().map(Path::to_path_buf))
        .collect();
    dirs.dedup();
    dirs
}

unsafe extern "C" fn collect(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY (caller): `info` is valid for this call and `data` is the Vec passed above.
    let objects = &mut *(data as *mut Vec<PathBuf>);
    let name = (*info).dlpi_name;
    if !name.is_null() {
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        if !name.is_empty() {
            objects.push(PathBuf::from(name));
        }
    }
    0
}
