//! Texture baking from multi-view Gaussian renders, the reference's `render_multiview` +
//! `bake_texture` (research/trellis.md §4.4), in tch so it runs wherever the scenes live (CPU
//! reference rasterisers or CUDA).
//!
//! # Observations
//!
//! The Gaussians are rendered ([`GaussianScene::render`], the reference's `GaussianRenderer`
//! settings, black background) from `views` sphere-Hammersley cameras at radius 2 with a 40°
//! field of view ([`multiview`]). As the reference, each render is quantised to 8 bits
//! (`floor(clamp(c, 0, 1)·255)`, what its `render_frames` returns) and a pixel is observed
//! where any channel is non-zero. The mesh is rasterised from the same cameras (near 0.1, far
//! 10, the reference's bake planes) and its UVs and their screen-space derivatives
//! interpolated ([`interpolate`]); only pixels both observed and covered by the mesh are
//! used, and only those are kept in memory.
//!
//! # Modes
//!
//! - [`BakeMode::Fast`]: every used pixel adds its colour to the texel its UV falls in
//!   (nearest texel), and each texel is the mean of what it received. The mesh rasteriser's
//!   depth test is the visibility. Texels that received nothing, inside or outside the charts,
//!   are then filled by [`push_pull_fill`].
//! - [`BakeMode::Optimize`]: the texture (zeros) is fitted with Adam (β = 0.5, 0.9, ε = 1e-8)
//!   for `steps` steps, the learning rate annealed from 1e-2 to 1e-5 on the reference's cosine
//!   schedule (applied after each step, so step 0 runs at 1e-2 and step s at `cos_lr(s − 1)`).
//!   Each step takes one view at random (a seeded generator, so a bake is reproducible; the
//!   reference draws from NumPy's global one) and minimises the mean absolute error between
//!   the observed colours and the texture sampled there with trilinear mipmapping
//!   ([`texture::Texture::sample`], nvdiffrast's `dr.texture` semantics), plus `lambda_tv`
//!   times the texture's total variation (mean absolute difference of neighbouring texels,
//!   vertically plus horizontally). The result is clamped to [0, 1] and texels outside every
//!   chart (texel centres not covered by a UV triangle) are filled by [`push_pull_fill`].
//!   On a GPU a step is three kinds of fused kernel (`kernels/texture_bake.cu`: L1 gradient
//!   through the trilinear lookups, Adam + TV, the mip chain) instead of ~40 tensor kernels
//!   and autograd; `RECON_FUSED_KERNELS=0` runs the tensor path there too. The two agree to
//!   float rounding (the kernels accumulate the gradient with atomics, in no fixed order).
//!
//! # Differences from the reference
//!
//! - Inpainting: the reference uses OpenCV's `inpaint(radius 3, TELEA)`, a fast-marching fill
//!   that extrapolates from a 3-texel neighbourhood of the hole's edge. We use a push-pull fill:
//!   a pyramid of coverage-weighted averages (2×2 pooling down to 1×1), then, from the
//!   coarsest level up, every empty texel takes the bilinearly upsampled value of the level
//!   above. Texels near a chart take its edge colours, texels far away a smooth blend of the
//!   charts around them; it runs as a few tensor ops on the device, for any hole size. Both
//!   serve the same purpose — no black seams where bilinear or mipmapped sampling reaches past a
//!   chart's edge.
//! - Fast mode: the reference intersects every view's coverage with the *first* view's
//!   observation mask (`masks[0]`, a slip); we use each view's own mask.
//! - Optimize mode: the reference's loss uses every observed pixel, including ones where the
//!   mesh is absent (their UV is 0, so they pull texel (0, 0) towards the object's colours);
//!   we use only pixels the mesh covers. A view with no such pixel contributes only the total
//!   variation term (the reference would take the mean of nothing, NaN).
//! - 8-bit conversion rounds to nearest (the reference truncates, a −½ level bias).
//! - Texture sampling clamps at the border (nvdiffrast's default wraps); xatlas keeps charts
//!   off the border, so only texels no chart uses see the difference.

mod cuda;

use tch::{Device, Kind, Tensor};

pub use cuda::KERNEL_NAMES as CUDA_KERNELS;

use crate::error::{Error, Result};
use crate::render::camera::{multiview, View, DEFAULT_FOV_DEGREES, DEFAULT_RADIUS};
use crate::render::gaussian::{GaussianScene, SplatSettings};
use crate::render::mesh_raster::{interpolate, MeshScene};
use crate::render::texture::{Boundary, Filter, Texture};

/// The near and far planes of the bake's mesh rasterisation (the reference's `bake_texture`
/// defaults).
const NEAR: f32 = 0.1;
const FAR: f32 = 10.0;
/// The reference's learning-rate schedule and Adam settings.
const LR_START: f64 = 1e-2;
const LR_END: f64 = 1e-5;
const BETA1: f64 = 0.5;
const BETA2: f64 = 0.9;
const ADAM_EPS: f64 = 1e-8;
/// The largest texture side accepted (a 16384² RGB float texture is 3 GiB).
pub const MAX_TEXTURE_SIZE: u32 = 16384;

/// How the texture is computed from the observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BakeMode {
    /// Projection, visibility and averaging into the nearest texel, then inpainting.
    Fast,
    /// The reference's optimisation (what its `to_glb` uses): `steps` Adam steps on the
    /// masked L1 loss plus `lambda_tv` times the total variation.
    Optimize { steps: usize, lambda_tv: f32 },
}

impl BakeMode {
    /// The reference `to_glb`'s settings: 2500 steps, `lambda_tv` 0.01.
    pub const REFERENCE: BakeMode = BakeMode::Optimize {
        steps: 2500,
        lambda_tv: 0.01,
    };
}

impl Default for BakeMode {
    fn default() -> Self {
        Self::REFERENCE
    }
}

/// What [`bake_texture`] needs besides the mesh and the observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BakeOptions {
    /// Side of the square texture, in texels.
    pub texture_size: u32,
    pub mode: BakeMode,
    /// Seeds the random view order of [`BakeMode::Optimize`].
    pub seed: u64,
}

/// The observed views: per view, the camera and the observed pixels' colours.
#[derive(Debug)]
pub struct Observations {
    pub views: Vec<View>,
    pub width: u32,
    pub height: u32,
    /// Per view `[H, W, 3]` f32 colours in [0, 1] (8-bit levels / 255), on the device.
    pub colors: Vec<Tensor>,
    /// Per view `[H, W]` bool: where any channel is non-zero.
    pub masks: Vec<Tensor>,
}

/// Renders the Gaussians from `count` sphere-Hammersley views at `resolution²` with the
/// reference's renderer settings and black background (see the module documentation).
pub fn render_observations(
    scene: &GaussianScene,
    count: usize,
    resolution: u32,
) -> Result<Observations> {
    if count == 0 {
        return Err(Error::invalid_argument("bake: needs at least one view"));
    }
    let views = multiview(count, DEFAULT_RADIUS, DEFAULT_FOV_DEGREES.to_radians())?;
    views_observations(scene, views, resolution, resolution)
}

/// [`render_observations`] for given cameras.
pub fn views_observations(
    scene: &GaussianScene,
    views: Vec<View>,
    width: u32,
    height: u32,
) -> Result<Observations> {
    let settings = SplatSettings {
        background: [0.0; 3],
        ..SplatSettings::with_size(width, height)
    };
    let mut colors = Vec::with_capacity(views.len());
    let mut masks = Vec::with_capacity(views.len());
    for view in &views {
        let image = scene.render(view, &settings)?;
        let levels = image
            .color
            .f_clamp(0.0, 1.0)?
            .f_mul_scalar(255.0)?
            .f_floor()?;
        masks.push(levels.f_gt(0.0)?.f_any_dim(-1, false)?);
        colors.push(levels.f_div_scalar(255.0)?);
    }
    Ok(Observations {
        views,
        width,
        height,
        colors,
        masks,
    })
}

/// What a bake produced, before conversion to 8 bits.
#[derive(Debug)]
pub struct BakedTexture {
    /// `[T, T, 3]` f32 in [0, 1], row 0 = the image's top row = `v = 0`.
    pub texture: Tensor,
    /// Texels that got a value from the observations (Fast) or lie inside a chart (Optimize).
    pub covered_texels: usize,
    /// The final loss of [`BakeMode::Optimize`] (0 for Fast).
    pub final_loss: f64,
}

/// Bakes a texture for the mesh (`positions` `[V, 3]`, `indices` `[F, 3]`, `uvs` `[V, 2]` in
/// glTF convention) from the observations, on `device`.
pub fn bake_texture(
    positions: &[f32],
    indices: &[u32],
    uvs: &[f32],
    observations: &Observations,
    options: &BakeOptions,
    device: Device,
) -> Result<BakedTexture> {
    check_options(options)?;
    let vertices = positions.len() / 3;
    if uvs.len() != 2 * vertices {
        return Err(Error::invalid_argument(format!(
            "bake: {} UV values for {vertices} vertices, expected {}",
            uvs.len(),
            2 * vertices
        )));
    }
    if let Some(bad) = uvs.iter().find(|v| !v.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "bake: UVs must be finite, found {bad}"
        )));
    }
    if indices.is_empty() {
        return Err(Error::invalid_argument("bake: the mesh has no triangles"));
    }
    let scene = MeshScene::new(positions, indices, device)?;
    let uv_attr = Tensor::f_from_slice(uvs)?
        .f_reshape([vertices as i64, 2])?
        .f_to_device(device)?;
    let samples = gather_samples(&scene, &uv_attr, observations)?;
    let size = i64::from(options.texture_size);
    match options.mode {
        BakeMode::Fast => bake_fast(&samples, size, device),
        BakeMode::Optimize { steps, lambda_tv } => {
            let chart = chart_mask(uvs, indices, options.texture_size)?.f_to_device(device)?;
            bake_optimize(
                samples,
                &chart,
                size,
                steps,
                lambda_tv,
                options.seed,
                device,
            )
        }
    }
}

fn check_options(options: &BakeOptions) -> Result<()> {
    if options.texture_size == 0 || options.texture_size > MAX_TEXTURE_SIZE {
        return Err(Error::invalid_argument(format!(
            "bake: texture size must be in 1..={MAX_TEXTURE_SIZE}, found {}",
            options.texture_size
        )));
    }
    if let BakeMode::Optimize { lambda_tv, .. } = options.mode {
        if !(lambda_tv.is_finite() && lambda_tv >= 0.0) {
            return Err(Error::invalid_argument(format!(
                "bake: lambda_tv must be finite and >= 0, found {lambda_tv}"
            )));
        }
    }
    Ok(())
}

/// The used pixels of one view: their UVs `[N, 2]`, UV derivatives `[N, 4]` and colours `[N, 3]`.
struct ViewSamples {
    uv: Tensor,
    uv_da: Tensor,
    color: Tensor,
}

impl ViewSamples {
    fn len(&self) -> i64 {
        self.uv.size()[0]
    }
}

/// Rasterises the mesh in every observed view and keeps the pixels that are observed and
/// covered.
fn gather_samples(
    scene: &MeshScene,
    uv_attr: &Tensor,
    observations: &Observations,
) -> Result<Vec<ViewSamples>> {
    let device = scene.device();
    let mut samples = Vec::with_capacity(observations.views.len());
    for ((view, color), mask) in observations
        .views
        .iter()
        .zip(&observations.colors)
        .zip(&observations.masks)
    {
        let rast = scene.rasterize(view, observations.width, observations.height, NEAR, FAR)?;
        let (uv, uv_da) = interpolate(uv_attr, scene.indices(), &rast)?;
        let used = rast
            .mask()?
            .f_logical_and(&mask.f_to_device(device)?)?
            .f_flatten(0, -1)?;
        let pick = |t: &Tensor, channels: i64| -> Result<Tensor> {
            let flat = t.f_to_device(device)?.f_reshape([-1, channels])?;
            Ok(flat.f_index(&[Some(&used)])?)
        };
        samples.push(ViewSamples {
            uv: pick(&uv, 2)?,
            uv_da: pick(&uv_da, 4)?,
            color: pick(color, 3)?,
        });
    }
    Ok(samples)
}

/// Fast mode: nearest-texel averaging, then push-pull filling of texels nothing reached.
fn bake_fast(samples: &[ViewSamples], size: i64, device: Device) -> Result<BakedTexture> {
    let texels = size * size;
    let mut sum = Tensor::f_zeros([texels, 3], (Kind::Float, device))?;
    let mut weight = Tensor::f_zeros([texels], (Kind::Float, device))?;
    for s in samples.iter().filter(|s| s.len() > 0) {
        let texel =
            s.uv.f_mul_scalar(size as f64)?
                .f_floor()?
                .f_clamp(0.0, (size - 1) as f64)?
                .f_to_kind(Kind::Int64)?;
        let index = texel
            .f_select(1, 1)?
            .f_mul_scalar(size)?
            .f_add(&texel.f_select(1, 0)?)?;
        sum = sum.f_index_add(0, &index, &s.color)?;
        let ones = Tensor::f_ones([s.len()], (Kind::Float, device))?;
        weight = weight.f_index_add(0, &index, &ones)?;
    }
    let covered = weight.f_gt(0.0)?;
    let covered_texels = covered.f_sum(Kind::Int64)?.f_int64_value(&[])? as usize;
    let mean = sum.f_div(&weight.f_clamp_min(1.0)?.f_unsqueeze(1)?)?;
    let mean = mean.f_reshape([size, size, 3])?;
    let valid = covered.f_reshape([size, size])?;
    let texture = push_pull_fill(&mean, &valid)?.f_clamp(0.0, 1.0)?;
    Ok(BakedTexture {
        texture,
        covered_texels,
        final_loss: 0.0,
    })
}

/// The reference's cosine annealing, `end + ½(start − end)(1 + cos(π·step/total))`.
fn cosine_lr(step: usize, total: usize) -> f64 {
    let t = step as f64 / total.max(1) as f64;
    LR_END + 0.5 * (LR_START - LR_END) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// The view and the learning rate of each optimisation step: a seeded view order, and the
/// cosine schedule applied after each step (step 0 at the start rate).
fn step_plan(steps: usize, views: usize, seed: u64) -> impl ExactSizeIterator<Item = (usize, f64)> {
    let mut rng = SplitMix64(seed);
    (0..steps).map(move |step| {
        let lr = match step {
            0 => LR_START,
            _ => cosine_lr(step - 1, steps),
        };
        (rng.below(views), lr)
    })
}

/// Optimize mode (see the module documentation): the fused CUDA kernels on a GPU (unless
/// `RECON_FUSED_KERNELS=0`), the tensor path elsewhere; then clamping and filling.
fn bake_optimize(
    samples: Vec<ViewSamples>,
    chart: &Tensor,
    size: i64,
    steps: usize,
    lambda_tv: f32,
    seed: u64,
    device: Device,
) -> Result<BakedTexture> {
    let plan = step_plan(steps, samples.len(), seed);
    let (texture, final_loss) = match device {
        Device::Cuda(ordinal) if crate::cuda::fused::enabled() => {
            let views = cuda::prepare(samples, size)?;
            cuda::optimize(&views, size, lambda_tv, plan, ordinal)?
        }
        _ => optimize_with_tensors(&samples, size, lambda_tv, plan, device)?,
    };
    let texture = texture.f_clamp(0.0, 1.0)?;
    let covered_texels = chart.f_sum(Kind::Int64)?.f_int64_value(&[])? as usize;
    let texture = push_pull_fill(&texture, chart)?;
    Ok(BakedTexture {
        texture,
        covered_texels,
        final_loss,
    })
}

/// The optimisation with libtorch tensors and autograd, from a zero texture →
/// (`[size, size, 3]` texture, the loss of the last step).
fn optimize_with_tensors(
    samples: &[ViewSamples],
    size: i64,
    lambda_tv: f32,
    plan: impl ExactSizeIterator<Item = (usize, f64)>,
    device: Device,
) -> Result<(Tensor, f64)> {
    let mut texture =
        Tensor::f_zeros([size, size, 3], (Kind::Float, device))?.set_requires_grad(true);
    let mut m = Tensor::f_zeros([size, size, 3], (Kind::Float, device))?;
    let mut v = Tensor::f_zeros([size, size, 3], (Kind::Float, device))?;
    let steps = plan.len();
    let mut final_loss = 0.0;
    for (step, (view, lr)) in plan.enumerate() {
        let s = &samples[view];
        let mut loss = Tensor::f_zeros([], (Kind::Float, device))?;
        if s.len() > 0 {
            let mips = Texture::new(&texture, None)?;
            let render = mips.sample(
                &s.uv,
                Some(&s.uv_da),
                Filter::LinearMipmapLinear,
                Boundary::Clamp,
            )?;
            loss = loss.f_add(&render.f_sub(&s.color)?.f_abs()?.f_mean(Kind::Float)?)?;
        }
        if lambda_tv > 0.0 && size > 1 {
            loss = loss.f_add(&total_variation(&texture)?.f_mul_scalar(f64::from(lambda_tv))?)?;
        }
        if loss.requires_grad() {
            texture.zero_grad();
            loss.f_backward()?;
            let grad = texture.f_grad()?;
            let t = (step + 1) as i32;
            let _guard = tch::no_grad_guard();
            m = m
                .f_mul_scalar(BETA1)?
                .f_add(&grad.f_mul_scalar(1.0 - BETA1)?)?;
            v = v
                .f_mul_scalar(BETA2)?
                .f_add(&grad.f_square()?.f_mul_scalar(1.0 - BETA2)?)?;
            let correction1 = 1.0 - BETA1.powi(t);
            let correction2 = 1.0 - BETA2.powi(t);
            let denom = v
                .f_sqrt()?
                .f_div_scalar(correction2.sqrt())?
                .f_add_scalar(ADAM_EPS)?;
            let update = m.f_div(&denom)?.f_mul_scalar(lr / correction1)?;
            let _ = texture.f_sub_(&update)?;
        }
        if step + 1 == steps {
            // Read back once: a read per step would synchronise the device every step.
            final_loss = loss.f_double_value(&[])?;
        }
    }
    Ok((texture.f_detach()?, final_loss))
}

/// The reference's TV-L1: mean |t[i+1, j] − t[i, j]| + mean |t[i, j+1] − t[i, j]|.
fn total_variation(texture: &Tensor) -> Result<Tensor> {
    let size = texture.size()[0];
    let dy = texture
        .f_narrow(0, 1, size - 1)?
        .f_sub(&texture.f_narrow(0, 0, size - 1)?)?;
    let dx = texture
        .f_narrow(1, 1, size - 1)?
        .f_sub(&texture.f_narrow(1, 0, size - 1)?)?;
    Ok(dy
        .f_abs()?
        .f_mean(Kind::Float)?
        .f_add(&dx.f_abs()?.f_mean(Kind::Float)?)?)
}

/// Fills the texels of `image` (`[H, W, C]`) where `valid` (`[H, W]` bool) is false by
/// push-pull: a pyramid of valid-weighted 2×2 averages down to 1×1, then, from the coarsest
/// level up, invalid texels take the bilinearly upsampled level above. Valid texels are
/// unchanged; with no valid texel at all the result is zero.
pub fn push_pull_fill(image: &Tensor, valid: &Tensor) -> Result<Tensor> {
    let weight = valid
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(0)?
        .f_unsqueeze(0)?;
    let color = image.f_permute([2, 0, 1])?.f_unsqueeze(0)?.f_mul(&weight)?;
    let mut levels = vec![(color, weight)];
    loop {
        let (c, w) = &levels[levels.len() - 1];
        let (h, wd) = (w.size()[2], w.size()[3]);
        if h <= 1 && wd <= 1 {
            break;
        }
        let pool = |t: &Tensor| t.f_avg_pool2d([2, 2], [2, 2], [0, 0], true, false, None::<i64>);
        let next = (pool(c)?, pool(w)?);
        levels.push(next);
    }
    let resolve =
        |c: &Tensor, w: &Tensor| -> Result<Tensor> { Ok(c.f_div(&w.f_clamp_min(1e-12)?)?) };
    let (c, w) = &levels[levels.len() - 1];
    let mut filled = resolve(c, w)?;
    for (c, w) in levels.iter().rev().skip(1) {
        let (h, wd) = (w.size()[2], w.size()[3]);
        let up = filled.f_upsample_bilinear2d([h, wd], false, None, None)?;
        filled = resolve(c, w)?.f_where_self(&w.f_gt(0.0)?, &up)?;
    }
    Ok(filled
        .f_squeeze_dim(0)?
        .f_permute([1, 2, 0])?
        .f_contiguous()?)
}

/// `[T, T]` bool: texels whose centre lies in some UV triangle (the layout rasterised in
/// texture space, as the reference's `rasterize_triangle_faces(uvs·2 − 1)`), on the CPU.
pub fn chart_mask(uvs: &[f32], indices: &[u32], size: u32) -> Result<Tensor> {
    let n = size as usize;
    let mut mask = vec![false; n * n];
    let s = size as f32;
    for t in indices.chunks_exact(3) {
        let p = [t[0], t[1], t[2]].map(|i| {
            let i = i as usize;
            [uvs[2 * i] * s, uvs[2 * i + 1] * s]
        });
        let area = edge(p[0], p[1], p[2]);
        if area == 0.0 || !area.is_finite() {
            continue;
        }
        let lo = |k: usize| p.iter().map(|q| q[k]).fold(f32::INFINITY, f32::min);
        let hi = |k: usize| p.iter().map(|q| q[k]).fold(f32::NEG_INFINITY, f32::max);
        let x0 = (lo(0) - 0.5).ceil().max(0.0) as usize;
        let y0 = (lo(1) - 0.5).ceil().max(0.0) as usize;
        let x1 = ((hi(0) - 0.5).floor().min(s - 1.0)).max(-1.0);
        let y1 = ((hi(1) - 0.5).floor().min(s - 1.0)).max(-1.0);
        if x1 < 0.0 || y1 < 0.0 {
            continue;
        }
        for y in y0..=y1 as usize {
            for x in x0..=x1 as usize {
                let c = [x as f32 + 0.5, y as f32 + 0.5];
                let w = [
                    edge(p[1], p[2], c),
                    edge(p[2], p[0], c),
                    edge(p[0], p[1], c),
                ];
                let inside = if area > 0.0 {
                    w.iter().all(|&e| e >= 0.0)
                } else {
                    w.iter().all(|&e| e <= 0.0)
                };
                mask[y * n + x] |= inside;
            }
        }
    }
    let values: Vec<u8> = mask.into_iter().map(u8::from).collect();
    Ok(Tensor::f_from_slice(&values)?
        .f_reshape([i64::from(size), i64::from(size)])?
        .f_to_kind(Kind::Bool)?)
}

/// Twice the signed area of (a, b, c).
fn edge(a: [f32; 2], b: [f32; 2], c: [f32; 2]) -> f32 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

/// `[T, T, 3]` f32 in [0, 1] → 8-bit RGB, rounding to nearest.
pub fn to_rgb8(texture: &Tensor) -> Result<image::RgbImage> {
    let size = texture.size();
    let [h, w, 3] = size[..] else {
        return Err(Error::invalid_argument(format!(
            "texture must be [H, W, 3], found {size:?}"
        )));
    };
    let bytes = texture
        .f_to_device(Device::Cpu)?
        .f_clamp(0.0, 1.0)?
        .f_mul_scalar(255.0)?
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_contiguous()?;
    let data = Vec::<u8>::try_from(&bytes.f_flatten(0, -1)?)?;
    image::RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| Error::internal("texture buffer size mismatch"))
}

/// Per-vertex colours seen by the observations: each vertex is projected into every view and
/// takes the mean observed colour over the views where it is visible (its depth within 1 % of
/// the rasterised depth at its pixel). Vertices seen nowhere get the mean of all seen ones.
/// For `vertex_colors_only` exports of meshes without colours.
pub fn bake_vertex_colors(
    positions: &[f32],
    indices: &[u32],
    observations: &Observations,
    device: Device,
) -> Result<Vec<f32>> {
    let vertices = (positions.len() / 3) as i64;
    let scene = MeshScene::new(positions, indices, device)?;
    let points = scene.positions().shallow_clone();
    let (w, h) = (observations.width, observations.height);
    let mut sum = Tensor::f_zeros([vertices, 3], (Kind::Float, device))?;
    let mut count = Tensor::f_zeros([vertices], (Kind::Float, device))?;
    for (view, color) in observations.views.iter().zip(&observations.colors) {
        let rast = scene.rasterize(view, w, h, NEAR, FAR)?;
        let rotation: Vec<f32> = view.rotation.iter().flatten().copied().collect();
        let r = Tensor::f_from_slice(&rotation)?
            .f_reshape([3, 3])?
            .f_to_device(device)?;
        let t = Tensor::f_from_slice(&view.translation)?.f_to_device(device)?;
        let cam = points.f_matmul(&r.f_tr()?)?.f_add(&t)?;
        let z = cam.f_select(1, 2)?;
        let px = view.pixel_intrinsics(w, h);
        let u = cam
            .f_select(1, 0)?
            .f_div(&z)?
            .f_mul_scalar(f64::from(px.fx))?
            .f_add_scalar(f64::from(px.cx))?
            .f_floor()?;
        let v = cam
            .f_select(1, 1)?
            .f_div(&z)?
            .f_mul_scalar(f64::from(px.fy))?
            .f_add_scalar(f64::from(px.cy))?
            .f_floor()?;
        let inside = z
            .f_gt(f64::from(NEAR))?
            .f_logical_and(&u.f_ge(0.0)?)?
            .f_logical_and(&u.f_lt(f64::from(w))?)?
            .f_logical_and(&v.f_ge(0.0)?)?
            .f_logical_and(&v.f_lt(f64::from(h))?)?;
        let pixel = v
            .f_clamp(0.0, f64::from(h - 1))?
            .f_mul_scalar(f64::from(w))?
            .f_add(&u.f_clamp(0.0, f64::from(w - 1))?)?
            .f_to_kind(Kind::Int64)?;
        let depth = rast.depth.f_flatten(0, -1)?.f_index_select(0, &pixel)?;
        let visible = inside.f_logical_and(
            &depth
                .f_sub(&z)?
                .f_abs()?
                .f_le_tensor(&z.f_abs()?.f_mul_scalar(0.01)?)?,
        )?;
        let seen = color.f_reshape([-1, 3])?.f_index_select(0, &pixel)?;
        let weight = visible.f_to_kind(Kind::Float)?;
        sum = sum.f_add(&seen.f_mul(&weight.f_unsqueeze(1)?)?)?;
        count = count.f_add(&weight)?;
    }
    let seen_any = count.f_gt(0.0)?;
    let mean = sum.f_div(&count.f_clamp_min(1.0)?.f_unsqueeze(1)?)?;
    let fallback = sum
        .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?
        .f_div_scalar(count.f_sum(Kind::Float)?.f_double_value(&[])?.max(1.0))?;
    let colors = mean.f_where_self(&seen_any.f_unsqueeze(1)?, &fallback.f_unsqueeze(0)?)?;
    let colors = colors.f_to_device(Device::Cpu)?.f_contiguous()?;
    Ok(Vec::<f32>::try_from(&colors.f_flatten(0, -1)?)?)
}

/// A small seeded generator for the view order (SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by the multiply-shift method.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_runs_from_start_to_end() {
        assert!((cosine_lr(0, 100) - LR_START).abs() < 1e-12);
        assert!((cosine_lr(100, 100) - LR_END).abs() < 1e-12);
        let mid = cosine_lr(50, 100);
        assert!((mid - (LR_START + LR_END) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn push_pull_keeps_valid_texels_and_fills_the_rest() {
        let image = Tensor::from_slice(&[
            1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
        ])
        .reshape([2, 2, 3]);
        let valid = Tensor::from_slice(&[true, false, false, true]).reshape([2, 2]);
        let filled = push_pull_fill(&image, &valid).unwrap();
        let values = Vec::<f32>::try_from(&filled.flatten(0, -1)).unwrap();
        assert_eq!(&values[0..3], &[1.0, 0.0, 0.0]);
        assert_eq!(&values[9..12], &[0.0, 0.0, 1.0]);
        // The empty texels take the mean of the two valid ones.
        assert!((values[3] - 0.5).abs() < 1e-6 && (values[5] - 0.5).abs() < 1e-6);
        // Nothing valid: zeros.
        let none = Tensor::from_slice(&[false; 4]).reshape([2, 2]);
        let zero = push_pull_fill(&image, &none).unwrap();
        assert_eq!(zero.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn chart_mask_covers_texel_centres_of_the_triangles() {
        // The upper-left half of a 4×4 texture (v down).
        let uvs = [0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0];
        let mask = chart_mask(&uvs, &[0, 1, 2], 4).unwrap();
        let values = Vec::<u8>::try_from(&mask.to_kind(Kind::Uint8).flatten(0, -1)).unwrap();
        let covered: usize = values.iter().map(|&v| v as usize).sum();
        // Centres with x + y + 1 <= 4: 4 + 3 + 2 + 1 = 10.
        assert_eq!(covered, 10);
        assert_eq!(values[0], 1);
        assert_eq!(values[15], 0);
    }

    #[test]
    fn random_views_are_reproducible_and_in_range() {
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        for _ in 0..100 {
            let x = a.below(13);
            assert_eq!(x, b.below(13));
            assert!(x < 13);
        }
    }
}
