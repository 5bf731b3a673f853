//! The kernel sources and their run-time compilation with NVRTC.
//!
//! Every `kernels/*.cu` is embedded in the library ([`KERNEL_SOURCES`]) and compiled on first
//! use for the device at hand: a cubin for its exact architecture (`--gpu-architecture=sm_XY`)
//! when NVRTC supports it, otherwise PTX for the newest architecture NVRTC knows
//! (`compute_XY`), which the driver JIT-compiles for the newer device. Compilation needs no
//! GPU, so `tests/kernels_compile.rs` compiles every file for sm_80 and sm_90 in CI and fails
//! on any error or warning.

use std::ffi::{c_char, CStr, CString};
use std::fmt;

use cudarc::nvrtc::sys;

use super::library;
use crate::error::{Error, ErrorKind, Result};

/// One CUDA source file of `kernels/`, embedded at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelSource {
    /// File name in `kernels/` (also the NVRTC program name, which appears in diagnostics).
    pub name: &'static str,
    pub code: &'static str,
}

/// Voxel hash, kernel map, gather and reduction of the sparse convolution.
pub const SPARSE_CONV: KernelSource = KernelSource {
    name: "sparse_conv.cu",
    code: include_str!("../../kernels/sparse_conv.cu"),
};

/// Every file of `kernels/` (the compile test checks that none is missing).
/// LayerNorm32 + adaLN modulation, multi-head RMS norm, gated residual (src/cuda/fused.rs).
pub const FUSED_NORM: KernelSource = KernelSource {
    name: "fused_norm.cu",
    code: include_str!("../../kernels/fused_norm.cu"),
};

/// Mesh rasteriser: triangle setup, depth pass, resolve (src/render/mesh_raster/cuda.rs).
pub const MESH_RASTER: KernelSource = KernelSource {
    name: "mesh_raster.cu",
    code: include_str!("../../kernels/mesh_raster.cu"),
};

/// The Gaussian-splat rasteriser: preprocess, tile keys, tile ranges, blend
/// (src/render/gaussian/cuda.rs).
pub const GAUSSIAN_SPLAT: KernelSource = KernelSource {
    name: "gaussian_splat.cu",
    code: include_str!("../../kernels/gaussian_splat.cu"),
};

/// The optimisation bake's step: masked-L1 gradient through trilinear sampling, Adam + TV, mip
/// chain (src/postprocessing/bake/cuda.rs).
pub const TEXTURE_BAKE: KernelSource = KernelSource {
    name: "texture_bake.cu",
    code: include_str!("../../kernels/texture_bake.cu"),
};

pub const KERNEL_SOURCES: &[KernelSource] = &[
    SPARSE_CONV,
    FUSED_NORM,
    MESH_RASTER,
    GAUSSIAN_SPLAT,
    TEXTURE_BAKE,
];

/// A compute capability, e.g. 9.0 for the H100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    pub major: i32,
    pub minor: i32,
}

impl Arch {
    pub const fn new(major: i32, minor: i32) -> Self {
        Self { major, minor }
    }

    /// NVRTC's number for it: 10 × major + minor (90 for 9.0).
    pub const fn number(self) -> i32 {
        self.major * 10 + self.minor
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What NVRTC produces: machine code for one architecture, or PTX the driver compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `--gpu-architecture=sm_XY`: a cubin for exactly that architecture.
    Cubin(Arch),
    /// `--gpu-architecture=compute_XY`: PTX, loadable on that architecture and newer.
    Ptx(Arch),
}

impl Target {
    fn gpu_architecture(self) -> String {
        match self {
            Target::Cubin(arch) => format!("sm_{}", arch.number()),
            Target::Ptx(arch) => format!("compute_{}", arch.number()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.gpu_architecture())
    }
}

/// A compiled module: the image for `cuModuleLoadData` and NVRTC's log (warnings; empty when
/// clean).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub target: Target,
    /// A cubin, or NUL-terminated PTX text.
    pub image: Vec<u8>,
    pub log: String,
}

/// NVRTC's version (major, minor).
pub fn version() -> Result<(i32, i32)> {
    library::ensure_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| nvrtc_error("version", e))?;
    Ok((major, minor))
}

/// The `sm_XY` numbers NVRTC can compile for, ascending.
pub fn supported_archs() -> Result<Vec<i32>> {
    library::ensure_nvrtc()?;
    let mut count = 0;
    // SAFETY: out-parameter, then a buffer of exactly `count` entries.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) }
        .result()
        .map_err(|e| nvrtc_error("supported architectures", e))?;
    let mut archs = vec![0; count.max(0) as usize];
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|e| nvrtc_error("supported architectures", e))?;
    archs.sort_unstable();
    Ok(archs)
}

/// The best target for a device: its own cubin when NVRTC supports the architecture, else
/// PTX for the newest architecture NVRTC supports below it.
pub fn target_for(device: Arch) -> Result<Target> {
    let archs = supported_archs()?;
    if archs.contains(&device.number()) {
        return Ok(Target::Cubin(device));
    }
    archs
        .iter()
        .rev()
        .find(|&&number| number < device.number())
        .map(|&number| Target::Ptx(Arch::new(number / 10, number % 10)))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "CUDA: NVRTC supports architectures {archs:?}, none of them runs on a device \
                     of compute capability {device}"
                ),
            )
        })
}

/// The options every kernel is compiled with. Line info costs nothing at run time and lets
/// compute-sanitizer and profilers name source lines.
fn options(target: Target) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", target.gpu_architecture()),
        "--std=c++17".to_string(),
        "--generate-line-info".to_string(),
    ]
}

/// Compiles `code` (named `name` in diagnostics) for `target`. Errors carry NVRTC's log;
/// warnings come back in [`Compiled::log`].
pub fn compile(name: &str, code: &str, target: Target) -> Result<Compiled> {
    library::ensure_nvrtc()?;
    let program = Program::create(name, code)?;
    let options = options(target);
    let c_options = options
        .iter()
        .map(|o| CString::new(o.as_str()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::internal("NVRTC option with a NUL byte"))?;
    let pointers: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `program` is live; `pointers` point into `c_options`, alive for the call.
    let status =
        unsafe { sys::nvrtcCompileProgram(program.raw, pointers.len() as i32, pointers.as_ptr()) };
    let log = program.log()?;
    if let Err(err) = status.result() {
        return Err(Error::new(
            ErrorKind::Internal,
            format!(
                "CUDA: NVRTC failed to compile {name} for {target} ({err:?}):\n{}",
                log.trim_end()
            ),
        ));
    }
    let image = match target {
        Target::Cubin(_) => program.cubin()?,
        Target::Ptx(_) => program.ptx()?,
    };
    Ok(Compiled { target, image, log })
}

/// An NVRTC program, destroyed on drop.
struct Program {
    raw: sys::nvrtcProgram,
    // NVRTC may keep pointers to the source and name until the program is destroyed.
    _code: CString,
    _name: CString,
}

impl Program {
    fn create(name: &str, code: &str) -> Result<Self> {
        let c_code = CString::new(code)
            .map_err(|_| Error::invalid_argument(format!("kernel {name} contains a NUL byte")))?;
        let c_name = CString::new(name)
            .map_err(|_| Error::invalid_argument("kernel name contains a NUL byte"))?;
        let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: valid C strings, no extra headers.
        unsafe {
            sys::nvrtcCreateProgram(
                &mut raw,
                c_code.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        }
        .result()
        .map_err(|e| nvrtc_error(&format!("create program {name}"), e))?;
        Ok(Self {
            raw,
            _code: c_code,
            _name: c_name,
        })
    }

    fn log(&self) -> Result<String> {
        let mut size = 0usize;
        // SAFETY: live program; the buffer has the size NVRTC reported.
        unsafe { sys::nvrtcGetProgramLogSize(self.raw, &mut size) }
            .result()
            .map_err(|e| nvrtc_error("program log", e))?;
        let mut buffer = vec![0u8; size.max(1)];
        unsafe { sys::nvrtcGetProgramLog(self.raw, buffer.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(|e| nvrtc_error("program log", e))?;
        Ok(CStr::from_bytes_until_nul(&buffer)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default())
    }

    fn cubin(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: live, compiled program; the buffer has the size NVRTC reported.
        unsafe { sys::nvrtcGetCUBINSize(self.raw, &mut size) }
            .result()
            .map_err(|e| nvrtc_error("cubin size", e))?;
        let mut image = vec![0u8; size];
        unsafe { sys::nvrtcGetCUBIN(self.raw, image.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(|e| nvrtc_error("cubin", e))?;
        Ok(image)
    }

    fn ptx(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: as for `cubin`; the size includes the terminating NUL the loader needs.
        unsafe { sys::nvrtcGetPTXSize(self.raw, &mut size) }
            .result()
            .map_err(|e| nvrtc_error("PTX size", e))?;
        let mut image = vec![0u8; size];
        unsafe { sys::nvrtcGetPTX(self.raw, image.as_mut_ptr() as *mut c_char) }
            .result()
            .map_err(|e| nvrtc_error("PTX", e))?;
        Ok(image)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        let _ = unsafe { sys::nvrtcDestroyProgram(&mut self.raw) };
    }
}

fn nvrtc_error(what: &str, err: cudarc::nvrtc::result::NvrtcError) -> Error {
    Error::new(ErrorKind::Device, format!("CUDA: NVRTC {what}: {err:?}"))
}
