//! Host side of `kernels/texture_bake.cu`: the optimisation bake's steps on the GPU, three
//! kinds of launch per step instead of the tensor path's ~40 kernels (see the kernel file).
//!
//! The texture lives with its mip chain in one buffer (every level flattened, level 0 first);
//! two such buffers alternate so that the TV term reads the texture before the update while
//! the update is written. The loss is only read back after the last step, so the loop never
//! synchronises with the device.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use super::{ViewSamples, ADAM_EPS, BETA1, BETA2};
use crate::cuda::device::{self, cuda_device, CudaDevice};
use crate::cuda::nvrtc::TEXTURE_BAKE;
use crate::error::{Error, Result};
use crate::render::texture::{level_of_detail, mip_sizes};

/// The kernels the host launches (the compile test checks they exist).
pub const KERNEL_NAMES: [&str; 3] = ["bake_l1_backward", "bake_adam_tv", "bake_mip_down"];

/// Levels a texture may have (`MAX_LEVELS` in the kernel file): a 16384² texture has 15.
const MAX_LEVELS: usize = 16;
const THREADS: u32 = 256;
const MAX_BLOCKS: i64 = 1 << 16;

/// The mip chain's layout, `struct Levels` of the kernel file.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Levels {
    /// Where each level starts, in texels.
    offset: [i64; MAX_LEVELS],
    width: [i32; MAX_LEVELS],
    height: [i32; MAX_LEVELS],
    count: i32,
}

// SAFETY: `Levels` is `repr(C)` plain data laid out as the kernels' `struct Levels`.
unsafe impl DeviceRepr for Levels {}

impl Levels {
    /// The full chain of a `size × size` texture, and its total number of texels.
    fn square(size: i64) -> Result<(Self, i64)> {
        let sizes = mip_sizes(size, size, MAX_LEVELS - 1);
        let mut levels = Levels {
            offset: [0; MAX_LEVELS],
            width: [0; MAX_LEVELS],
            height: [0; MAX_LEVELS],
            count: sizes.len() as i32,
        };
        let mut total = 0i64;
        for (l, &(h, w)) in sizes.iter().enumerate() {
            let side = |s: i64| {
                i32::try_from(s).map_err(|_| Error::invalid_argument("bake: texture too large"))
            };
            levels.offset[l] = total;
            levels.height[l] = side(h)?;
            levels.width[l] = side(w)?;
            total += h * w;
        }
        Ok((levels, total))
    }
}

/// One Adam step's scalars, `struct AdamStep` of the kernel file.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdamStep {
    lr_over_c1: f32,
    sqrt_c2: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    tv_y: f32,
    tv_x: f32,
}

// SAFETY: `AdamStep` is `repr(C)` plain data (nine f32) laid out as the kernels' struct.
unsafe impl DeviceRepr for AdamStep {}

impl AdamStep {
    /// Step `t` (from 1) at learning rate `lr`; `tv` is λ_TV divided by the number of vertical
    /// and of horizontal neighbour differences (0 when off).
    fn new(t: i32, lr: f64, tv: (f64, f64)) -> Self {
        let c1 = 1.0 - BETA1.powi(t);
        let c2 = 1.0 - BETA2.powi(t);
        Self {
            lr_over_c1: (lr / c1) as f32,
            sqrt_c2: c2.sqrt() as f32,
            beta1: BETA1 as f32,
            one_minus_beta1: (1.0 - BETA1) as f32,
            beta2: BETA2 as f32,
            one_minus_beta2: (1.0 - BETA2) as f32,
            eps: ADAM_EPS as f32,
            tv_y: tv.0 as f32,
            tv_x: tv.1 as f32,
        }
    }
}

/// One view's samples as the kernels read them: UV `[N, 2]`, level of detail `[N]` and colour
/// `[N, 4]` (RGB and an unused 0, one 16-byte load), contiguous f32 on the device.
pub(super) struct KernelView {
    uv: Tensor,
    lod: Tensor,
    color: Tensor,
    count: i64,
}

/// Converts gathered samples for the kernels: the UV derivatives become the level of detail
/// once (they do not change between steps) and are dropped.
pub(super) fn prepare(samples: Vec<ViewSamples>, size: i64) -> Result<Vec<KernelView>> {
    let last = (mip_sizes(size, size, MAX_LEVELS - 1).len() - 1) as i64;
    samples
        .into_iter()
        .map(|s| {
            let count = s.len();
            let lod = if count > 0 {
                level_of_detail(&s.uv_da, size, size, last)?.f_contiguous()?
            } else {
                Tensor::f_zeros([0], (Kind::Float, s.uv.device()))?
            };
            Ok(KernelView {
                uv: s.uv.f_to_kind(Kind::Float)?.f_contiguous()?,
                lod: lod.f_to_kind(Kind::Float)?,
                color: s
                    .color
                    .f_to_kind(Kind::Float)?
                    .f_constant_pad_nd([0, 1])?
                    .f_contiguous()?,
                count,
            })
        })
        .collect()
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// Runs the optimisation from a zero texture over `plan` (per step: the view and the learning
/// rate) on `cuda:<ordinal>` → (`[size, size, 3]` texture, the loss of the last step).
pub(super) fn optimize(
    views: &[KernelView],
    size: i64,
    lambda_tv: f32,
    plan: impl ExactSizeIterator<Item = (usize, f64)>,
    ordinal: usize,
) -> Result<(Tensor, f64)> {
    let device = Device::Cuda(ordinal);
    let (levels, total) = Levels::square(size)?;
    // RGBA texels (A unused): see the kernel file.
    let zeros = |rows: i64| Tensor::f_zeros([rows, 4], (Kind::Float, device));
    let (mut current, mut next, grad) = (zeros(total)?, zeros(total)?, zeros(total)?);
    let (m, v) = (zeros(size * size)?, zeros(size * size)?);
    let loss = Tensor::f_zeros([1], (Kind::Float, device))?;
    let tv = if lambda_tv > 0.0 && size > 1 {
        let differences = ((size - 1) * size * 3) as f64;
        let per_difference = f64::from(lambda_tv) / differences;
        (per_difference, per_difference)
    } else {
        (0.0, 0.0)
    };
    let gpu = cuda_device(ordinal)?;
    let steps = plan.len();
    for (step, (view, lr)) in plan.enumerate() {
        let samples = views
            .get(view)
            .ok_or_else(|| Error::internal("bake: view index out of range"))?;
        if samples.count == 0 && tv.0 == 0.0 {
            // No gradient at all: the tensor path skips the update too.
            continue;
        }
        let loss_ptr = if step + 1 == steps { ptr(&loss) } else { 0 };
        let buffers = Buffers {
            current: &current,
            next: &next,
            grad: &grad,
            m: &m,
            v: &v,
            loss: loss_ptr,
        };
        let adam = AdamStep::new((step + 1) as i32, lr, tv);
        launch_step(&gpu, &levels, samples, &buffers, &adam)?;
        std::mem::swap(&mut current, &mut next);
    }
    let final_loss = loss.f_double_value(&[0])?;
    let texture = current
        .f_narrow(0, 0, size * size)?
        .f_narrow(1, 0, 3)?
        .f_reshape([size, size, 3])?;
    Ok((texture, final_loss))
}

/// The device memory of one step.
struct Buffers<'a> {
    current: &'a Tensor,
    next: &'a Tensor,
    grad: &'a Tensor,
    m: &'a Tensor,
    v: &'a Tensor,
    /// Where the step adds its loss, or 0 to skip the reduction.
    loss: u64,
}

/// Queues one step: the L1 gradient of the view, the Adam + TV update into `next`, and
/// `next`'s coarser levels.
fn launch_step(
    gpu: &CudaDevice,
    levels: &Levels,
    samples: &KernelView,
    b: &Buffers<'_>,
    adam: &AdamStep,
) -> Result<()> {
    let stream = gpu.torch_stream()?;
    let (current, next, grad) = (ptr(b.current), ptr(b.next), ptr(b.grad));
    if samples.count > 0 {
        let name = KERNEL_NAMES[0];
        let function = gpu.function(&TEXTURE_BAKE, name)?;
        let (uv, lod, color) = (ptr(&samples.uv), ptr(&samples.lod), ptr(&samples.color));
        let scale = 1.0f32 / (3 * samples.count) as f32;
        let mut args = stream.builder(&function);
        args.arg(&current)
            .arg(levels)
            .arg(&uv)
            .arg(&lod)
            .arg(&color)
            .arg(&samples.count)
            .arg(&scale)
            .arg(&grad)
            .arg(&b.loss);
        let config = device::grid(samples.count, THREADS, MAX_BLOCKS)?;
        // SAFETY: uv [N,2], lod [N] (within the chain) and color [N,4] are contiguous f32;
        // `current` and `grad` hold every level's texels ([total, 4] f32) as `levels` lays out.
        unsafe { device::launch(&mut args, config, name) }?;
    }
    let name = KERNEL_NAMES[1];
    let function = gpu.function(&TEXTURE_BAKE, name)?;
    let (m, v) = (ptr(b.m), ptr(b.v));
    let mut args = stream.builder(&function);
    args.arg(&current)
        .arg(&next)
        .arg(&grad)
        .arg(levels)
        .arg(&m)
        .arg(&v)
        .arg(adam)
        .arg(&b.loss);
    let base = i64::from(levels.width[0]) * i64::from(levels.height[0]);
    // SAFETY: the two texture buffers and `grad` are [total, 4] f32; m and v are [base, 4].
    unsafe { device::launch(&mut args, device::grid(base, THREADS, MAX_BLOCKS)?, name) }?;
    let name = KERNEL_NAMES[2];
    let function = gpu.function(&TEXTURE_BAKE, name)?;
    for level in 1..levels.count {
        let l = level as usize;
        let texels = i64::from(levels.width[l]) * i64::from(levels.height[l]);
        let mut args = stream.builder(&function);
        args.arg(&next).arg(&grad).arg(levels).arg(&level);
        let config: LaunchConfig = device::grid(texels, THREADS, MAX_BLOCKS)?;
        // SAFETY: level `level` and the one above it lie inside the [total, 4] buffers.
        unsafe { device::launch(&mut args, config, name) }?;
    }
    Ok(())
}
