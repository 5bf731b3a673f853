//! Devices, compiled modules and launches on libtorch's stream.
//!
//! Context: [`CudaContext::new`] retains the device's *primary* context, the one the CUDA
//! runtime (hence libtorch) uses, so device pointers from libtorch tensors are valid in it.
//!
//! Stream: every launch goes to libtorch's *current* stream of the device (asked from
//! libtorch through the sparse engine's C++ bridge, `c10::Stream::native_handle`). Kernels
//! are therefore ordered with the libtorch operations before and after them, including the
//! caching allocator's reuse of freed blocks, whichever stream the caller made current.
//!
//! Caches: compiled images are kept per (source, target), so devices of one architecture
//! compile once; modules and functions are kept per device. Everything lives for the process.
//!
//! Thread state: cudarc binds a device's context to the calling thread whenever it touches
//! the device. The runtime API (libtorch's, and the embedding application's own) reads its
//! current device from that binding, so every entry point here puts the thread's previous
//! context back before returning: loading a model on `cuda:1` or launching a kernel there
//! leaves the caller's thread on the device it was on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaStream, LaunchArgs, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use super::device_error;
use super::library;
use super::nvrtc::{self, Arch, KernelSource, Target};
use crate::error::{Error, Result};
use crate::parallel::lock;

/// One CUDA device: its primary context, architecture and loaded kernels.
pub struct CudaDevice {
    ordinal: usize,
    arch: Arch,
    target: Target,
    multiprocessors: i64,
    ctx: Arc<CudaContext>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("arch", &self.arch)
            .field("target", &self.target)
            .finish()
    }
}

/// The device `cuda:<ordinal>`, created on first use.
pub fn cuda_device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let devices = DEVICES.get_or_init(Default::default);
    if let Some(device) = lock(devices).get(&ordinal) {
        return Ok(device.clone());
    }
    let device = Arc::new(CudaDevice::open(ordinal)?);
    Ok(lock(devices).entry(ordinal).or_insert(device).clone())
}

/// Compiled images keyed by (source file, target).
type ImageCache = Mutex<HashMap<(&'static str, Target), Arc<Vec<u8>>>>;

/// Compiled images per (source, target), shared by devices of the same architecture.
fn compiled_image(source: &KernelSource, target: Target) -> Result<Arc<Vec<u8>>> {
    static IMAGES: OnceLock<ImageCache> = OnceLock::new();
    let images = IMAGES.get_or_init(Default::default);
    if let Some(image) = lock(images).get(&(source.name, target)) {
        return Ok(image.clone());
    }
    let compiled = nvrtc::compile(source.name, source.code, target)?;
    if !compiled.log.trim().is_empty() {
        tracing::warn!(
            "NVRTC warnings for {} ({target}):\n{}",
            source.name,
            compiled.log.trim_end()
        );
    }
    let image = Arc::new(compiled.image);
    Ok(lock(images)
        .entry((source.name, target))
        .or_insert(image)
        .clone())
}

/// The calling thread's current CUDA context, put back when this drops unless it already
/// was `about_to_bind` (a device guard for the driver API).
struct RestoreContext {
    previous: Option<sys::CUcontext>,
}

impl RestoreContext {
    fn save(about_to_bind: sys::CUcontext) -> Result<Self> {
        let current = cudarc::driver::result::ctx::get_current()
            .map_err(|e| device_error("current context", e))?;
        Ok(Self {
            previous: (current != Some(about_to_bind))
                .then_some(current.unwrap_or(std::ptr::null_mut())),
        })
    }
}

impl Drop for RestoreContext {
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            // SAFETY: `previous` was the thread's current context (or null, none) when the
            // guard was made; primary contexts stay alive while the process retains them.
            let _ = unsafe { cudarc::driver::result::ctx::set_current(previous) };
        }
    }
}

impl CudaDevice {
    fn open(ordinal: usize) -> Result<Self> {
        library::ensure_driver()?;
        cudarc::driver::result::init().map_err(|e| device_error("initialising the driver", e))?;
        // Not a context of ours yet: whatever the thread had comes back.
        let _restore = RestoreContext::save(std::ptr::null_mut())?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| device_error(&format!("primary context of cuda:{ordinal}"), e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| device_error("compute capability", e))?;
        let arch = Arch::new(major, minor);
        let target = nvrtc::target_for(arch)?;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| device_error("multiprocessor count", e))?;
        Ok(Self {
            ordinal,
            arch,
            target,
            multiprocessors: i64::from(multiprocessors.max(1)),
            ctx,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's compute capability.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Streaming multiprocessors (how many blocks it takes to fill the device).
    pub fn multiprocessors(&self) -> i64 {
        self.multiprocessors
    }

    /// What its kernels are compiled to (its own cubin, or PTX for an older architecture).
    pub fn target(&self) -> Target {
        self.target
    }

    fn module(&self, source: &KernelSource) -> Result<Arc<CudaModule>> {
        if let Some(module) = lock(&self.modules).get(source.name) {
            return Ok(module.clone());
        }
        let image = compiled_image(source, self.target)?;
        let _restore = RestoreContext::save(self.ctx.cu_ctx())?;
        let module = self
            .ctx
            .load_module(Ptx::from_binary(image.as_ref().clone()))
            .map_err(|e| {
                device_error(
                    &format!(
                        "loading {} ({}) on cuda:{}",
                        source.name, self.target, self.ordinal
                    ),
                    e,
                )
            })?;
        Ok(lock(&self.modules)
            .entry(source.name)
            .or_insert(module)
            .clone())
    }

    /// The kernel `name` of `source`, compiled and loaded on first use.
    pub fn function(&self, source: &KernelSource, name: &'static str) -> Result<CudaFunction> {
        if let Some(function) = lock(&self.functions).get(&(source.name, name)) {
            return Ok(function.clone());
        }
        let _restore = RestoreContext::save(self.ctx.cu_ctx())?;
        let function = self
            .module(source)?
            .load_function(name)
            .map_err(|e| device_error(&format!("kernel {name} of {}", source.name), e))?;
        Ok(lock(&self.functions)
            .entry((source.name, name))
            .or_insert(function)
            .clone())
    }

    /// libtorch's current stream on this device, with this device's context bound to the
    /// calling thread until the returned guard drops.
    pub fn torch_stream(&self) -> Result<TorchStream> {
        let raw = crate::sparse::engine::torch_current_cuda_stream(self.ordinal)?;
        let restore = RestoreContext::save(self.ctx.cu_ctx())?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| device_error("binding the primary context", e))?;
        // SAFETY: `raw` is a live stream of this device's primary context, owned by libtorch
        // (its stream pool lives for the process); all work on it is ordered by the stream.
        let stream = unsafe { self.ctx.wrap_borrowed_stream(raw as sys::CUstream) };
        Ok(TorchStream {
            stream,
            _restore: restore,
        })
    }
}

/// libtorch's current stream of a device, for launching kernels. Restores the thread's
/// previous CUDA context on drop (like a device guard), so launching on `cuda:1` does not
/// change the device libtorch considers current.
pub struct TorchStream {
    stream: Arc<CudaStream>,
    _restore: RestoreContext,
}

impl TorchStream {
    /// A launch of `function` on this stream; push the arguments, then [`launch`].
    pub fn builder<'a>(&'a self, function: &'a CudaFunction) -> LaunchArgs<'a> {
        self.stream.launch_builder(function)
    }

    /// The raw stream handle.
    pub fn raw(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Whether work on this stream is being captured into a CUDA graph right now (then a
    /// copy from host memory would be recorded with its pointer, not its contents).
    pub fn is_capturing(&self) -> Result<bool> {
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: the stream is live (see `torch_stream`) and `status` is a valid out-pointer.
        unsafe { sys::cuStreamIsCapturing(self.raw(), &mut status) }
            .result()
            .map_err(|e| device_error("asking the stream's capture status", e))?;
        Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }
}

/// Launches a prepared kernel.
///
/// # Safety
/// The pushed arguments must match the kernel's parameters in order and type, and every
/// device pointer must cover what the kernel reads and writes for `config`, on memory that
/// stays allocated until the stream reaches the kernel (libtorch tensors on this stream).
pub unsafe fn launch(args: &mut LaunchArgs<'_>, config: LaunchConfig, what: &str) -> Result<()> {
    args.launch(config)
        .map(|_| ())
        .map_err(|e| device_error(&format!("launching {what}"), e))
}

/// A one-dimensional launch of `threads`-wide blocks covering `work` items, capped at
/// `max_blocks` (the kernels loop grid-stride over the rest).
pub fn grid(work: i64, threads: u32, max_blocks: i64) -> Result<LaunchConfig> {
    if work <= 0 {
        return Err(Error::internal("CUDA launch with no work"));
    }
    let blocks = ((work + threads as i64 - 1) / threads as i64).clamp(1, max_blocks);
    Ok(LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}
