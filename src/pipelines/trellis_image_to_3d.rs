//! `trellis.pipelines.TrellisImageTo3DPipeline`, stage 1: from input views to the occupied voxels
//! of the sparse structure (research/trellis.md §1.3–1.8). Stage 2 (structured latent and
//! decoders) is in [`slat`].
//!
//! ```text
//! views ─ decode ─ preprocess (518², colour × alpha) ─ stack ─ ImageNet-normalise ─ DINOv2
//!   → cond [V, 1 + 4 + 37², C] (layer_norm of x_prenorm), neg_cond = zeros [1, L, C]   get_cond
//! noise [1, C_in, R, R, R]: manual_seed(seed); randn on the CPU       sample_sparse_structure
//!   → flow-Euler sampler over SparseStructureFlowModel (CFG, guidance interval, multi-view modes)
//!   → z_s → SparseStructureDecoder → logits [1, 1, 4R, 4R, 4R]
//!   → coords = argwhere(logits > 0)[:, [0, 2, 3, 4]] as int32 [M, 4] (batch, x, y, z)
//! ```
//!
//! One view follows the reference's `run`; several follow `run_multi_image` (`stochastic`: step i
//! is conditioned on view i mod V; `multidiffusion`: the conditional velocity is the mean over the
//! views). Both draw the noise right after seeding, so the noise is reproducible per seed: the
//! same seed gives the same noise as `torch.manual_seed(seed); torch.randn(...)` in PyTorch with
//! the same libtorch version (see [`seeded_noise`]).
//!
//! The networks are reached through [`Network::forward_named`], so any loaded network of the
//! right class serves, on the pipeline's device and in the precision its checkpoint asks for.

pub mod slat;

use std::collections::BTreeMap;
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::image::{self, Variant};
use crate::models::dinov2::imagenet_normalize;
use crate::models::sparse_structure_flow::{SparseStructureFlowConfig, SparseStructureFlowModel};
use crate::models::{NamedTensors, Network};
use crate::pipeline::{ImageInput, MultiImageMode, RunControl, RunParams, Stage};
use crate::samplers::{
    Conditioning, FlowModel, GraphedFlow, Negative, SampleOptions, SamplerConfig,
};

/// The pipeline.json key of the sparse-structure flow model.
pub const SPARSE_STRUCTURE_FLOW_MODEL: &str = "sparse_structure_flow_model";
/// The pipeline.json key of the sparse-structure decoder.
pub const SPARSE_STRUCTURE_DECODER: &str = "sparse_structure_decoder";
/// The classes stage 1 runs, as the checkpoint jsons name them.
pub const FLOW_CLASS: &str = "SparseStructureFlowModel";
pub const DECODER_CLASS: &str = "SparseStructureDecoder";

/// Samples per run: the reference's `num_samples` default, the only value recon's API exposes.
pub const NUM_SAMPLES: i64 = 1;

/// The networks stage 1 runs, all on `device`.
pub struct SparseStructureNetworks<'a> {
    /// DINOv2 (`tokens` output: TRELLIS's condition tokens).
    pub image_cond_model: &'a dyn Network,
    pub flow: &'a dyn Network,
    /// The flow checkpoint's args: the reference reads the noise shape (`in_channels`,
    /// `resolution`) from the flow model.
    pub flow_config: SparseStructureFlowConfig,
    pub decoder: &'a dyn Network,
    pub device: Device,
}

/// Where the initial noise of the sampler comes from.
#[derive(Clone, Copy)]
pub enum NoiseSource<'a> {
    /// Drawn from the seed exactly as the reference's `run`: see [`seeded_noise`].
    Seed(u64),
    /// Given by the caller (tests, replays): `[num_samples, in_channels, R, R, R]`, any float kind
    /// (used as float32), any device.
    Given(&'a Tensor),
}

/// `get_cond`'s result.
#[derive(Debug)]
pub struct ImageCondition {
    /// Condition tokens `[V, 1 + registers + h·w, C]`, one row per view.
    pub cond: Tensor,
    /// The negative condition: zeros `[1, L, C]` (`zeros_like(cond)`, cut to one row for several
    /// views as `run_multi_image` does).
    pub neg_cond: Tensor,
}

/// What stage 1 produced. Tensors are on the pipeline's device unless noted.
#[derive(Debug)]
pub struct SparseStructureOutput {
    /// Condition tokens `[V, L, C]` float32.
    pub cond: Tensor,
    /// Negative condition, zeros `[1, L, C]`.
    pub neg_cond: Tensor,
    /// The sampler's initial noise `[1, in_channels, R, R, R]` float32 (on the CPU when drawn
    /// from the seed, as the reference draws it).
    pub noise: Tensor,
    /// The sampled latent `z_s` `[1, in_channels, R, R, R]`.
    pub latent: Tensor,
    /// The decoder's occupancy logits `[1, out_channels, 4R, 4R, 4R]` float32; occupied where > 0.
    pub logits: Tensor,
    /// Occupied voxels `[M, 4]` int32 `(batch, x, y, z)`, in the reference's order (row-major
    /// over the logits, as `torch.argwhere`).
    pub coords: Tensor,
}

impl SparseStructureOutput {
    /// M, the number of occupied voxels.
    pub fn num_voxels(&self) -> i64 {
        self.coords.size().first().copied().unwrap_or(0)
    }

    /// The side of the voxel grid the coordinates index (64 for the published models).
    pub fn grid_side(&self) -> i64 {
        self.logits.size().last().copied().unwrap_or(0)
    }
}

impl ImageCondition {
    /// Each view's condition `[1, L, C]` (`cond` holds the views along dim 0).
    pub fn views(&self) -> Result<Vec<Tensor>> {
        let num_views = self.cond.size().first().copied().unwrap_or(0);
        Ok((0..num_views)
            .map(|i| self.cond.f_narrow(0, i, 1))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// What a sampler is conditioned on: one view as the reference's `run`, several (`views`,
    /// from [`ImageCondition::views`]) combined in `mode` as its `run_multi_image`. `what`
    /// names the sampling run in errors.
    pub fn conditioning<'a>(
        &'a self,
        views: &'a [Tensor],
        mode: MultiImageMode,
        what: &str,
    ) -> Result<Conditioning<'a, Tensor>> {
        match views {
            [] => Err(Error::invalid_argument(format!(
                "{what}: the condition holds no view"
            ))),
            [_] => Ok(Conditioning::Single(&self.cond)),
            several => Ok(Conditioning::Views {
                views: several,
                mode,
            }),
        }
    }
}

/// Runs stage 1 for `images` (one or more views of one object): see the module docs. Progress:
/// `Preprocess` per view, `Condition`, then `SparseStructure` per sampler step; cancellation is
/// checked between stages and before every sampler step.
pub fn run_sparse_structure(
    networks: &SparseStructureNetworks<'_>,
    sampler: &SamplerConfig,
    images: &[ImageInput<'_>],
    params: &RunParams,
    noise: NoiseSource<'_>,
    control: &RunControl<'_>,
) -> Result<SparseStructureOutput> {
    let views = prepare_views(images, params.preprocess, control)?;
    control.progress(Stage::Condition, 0, 1)?;
    let condition = get_cond(networks.image_cond_model, &views, networks.device)
        .context("encoding the views with image_cond_model")?;
    control.progress(Stage::Condition, 1, 1)?;
    let noise = initial_noise(noise, &networks.flow_config, NUM_SAMPLES)?;
    control.progress(Stage::SparseStructure, 0, sampler.steps)?;
    let latent = sample_sparse_structure(
        networks.flow,
        sampler,
        &noise.f_to_device(networks.device)?,
        &condition,
        params.mode,
        control,
    )?;
    control.check_cancelled()?;
    let logits = decode_sparse_structure(networks.decoder, &latent)?;
    let coords = occupied_coords(&logits)?;
    Ok(SparseStructureOutput {
        cond: condition.cond,
        neg_cond: condition.neg_cond,
        noise,
        latent,
        logits,
        coords,
    })
}

/// Decodes every view and turns it into what the condition encoder takes: TRELLIS's
/// `preprocess_image` (when `preprocess`), else `encode_image`'s own resize to 518² of the raw
/// input; then RGB / 255, stacked: `[V, 3, 518, 518]` float32 on the CPU.
pub fn prepare_views(
    images: &[ImageInput<'_>],
    preprocess: bool,
    control: &RunControl<'_>,
) -> Result<Tensor> {
    prepare_views_as(images, preprocess, Variant::Trellis, control)
}

/// [`prepare_views`] with `variant`'s preprocessing (TRELLIS's or ReconViaGen's).
pub fn prepare_views_as(
    images: &[ImageInput<'_>],
    preprocess: bool,
    variant: Variant,
    control: &RunControl<'_>,
) -> Result<Tensor> {
    Ok(prepare_views_with_alpha(images, preprocess, variant, Device::Cpu, control)?.0)
}

/// [`prepare_views_as`], also returning each view's alpha in 0..1 at the same size,
/// `[V, 518, 518]` float32 (ones for a view without alpha); both stacked on `device`.
///
/// Each view goes to `device` on its own and is stacked there: stacking on the host wrote a
/// fresh `V × 3 MiB` buffer on one thread, which on the H100 machine took 1–56 ms from run to
/// run for 4 views (first touches of fresh host memory are slow there), and the stacked batch
/// was then uploaded by each encoder.
pub fn prepare_views_with_alpha(
    images: &[ImageInput<'_>],
    preprocess: bool,
    variant: Variant,
    device: Device,
    control: &RunControl<'_>,
) -> Result<(Tensor, Tensor)> {
    control.check_cancelled()?;
    // The views are independent: decoded and prepared on as many cores as there are views
    // (about 20 ms each on one core at 518², so 16 views took a third of a second).
    let prepared = crate::parallel::map(images, |index, input| -> Result<(Tensor, Tensor)> {
        let prepared =
            prepare_view(input, preprocess, variant).context(format!("image {index}"))?;
        Ok((prepared.tensor, alpha_tensor(&prepared.image)?))
    });
    let mut rgb = Vec::with_capacity(images.len());
    let mut alpha = Vec::with_capacity(images.len());
    for (index, view) in prepared.into_iter().enumerate() {
        let (view_rgb, view_alpha) = view?;
        rgb.push(view_rgb.f_to_device(device)?);
        alpha.push(view_alpha.f_to_device(device)?);
        control.progress(Stage::Preprocess, index + 1, images.len())?;
    }
    if rgb.is_empty() {
        return Err(Error::invalid_argument(
            "no input images: give at least one view",
        ));
    }
    Ok((Tensor::f_stack(&rgb, 0)?, Tensor::f_stack(&alpha, 0)?))
}

fn prepare_view(
    input: &ImageInput<'_>,
    preprocess: bool,
    variant: Variant,
) -> Result<image::Preprocessed> {
    let bitmap = image::decode(input)?;
    if preprocess {
        image::preprocess(&bitmap, variant)
    } else {
        image::without_preprocessing(&bitmap)
    }
}

/// The alpha channel of `bitmap` as float32 / 255, `[H, W]` (ones without alpha).
fn alpha_tensor(bitmap: &image::Bitmap) -> Result<Tensor> {
    let (width, height) = (bitmap.width() as i64, bitmap.height() as i64);
    let channels = bitmap.channels();
    if channels < 4 {
        return Ok(Tensor::f_ones([height, width], (Kind::Float, Device::Cpu))?);
    }
    let values: Vec<f32> = bitmap
        .as_raw()
        .chunks_exact(channels)
        .map(|px| f32::from(px[3]) / 255.0)
        .collect();
    Ok(Tensor::f_from_slice(&values)?.f_view([height, width])?)
}

/// `get_cond`: the views `[V, 3, H, W]` in 0..1 moved to `device`, ImageNet-normalised and
/// encoded (`tokens`: layer_norm of DINOv2's `x_prenorm`); the negative condition is zeros.
pub fn get_cond(encoder: &dyn Network, views: &Tensor, device: Device) -> Result<ImageCondition> {
    let image = imagenet_normalize(&views.f_to_device(device)?)?;
    let inputs = NamedTensors::from([("image".to_string(), image)]);
    let cond = take_output(encoder.forward_named(&inputs)?, "tokens", encoder)?;
    let neg_cond = cond.f_narrow(0, 0, 1)?.f_zeros_like()?;
    Ok(ImageCondition { cond, neg_cond })
}

/// libtorch's default CPU generator is one per process: seeding it and drawing from it must not
/// interleave with another thread doing the same through recon.
static CPU_GENERATOR: Mutex<()> = Mutex::new(());

/// `torch.manual_seed(seed); torch.randn(shape)`: float32 standard normal noise on the CPU,
/// drawn from libtorch's default generator right after seeding it, as the reference's `run`
/// draws the sparse-structure noise. The result depends only on `seed` and `shape` (and the
/// libtorch version): recon holds a process-wide lock over the seed and the draw. Code outside
/// recon that reseeds or draws from libtorch's global CPU generator at the same moment can
/// still interleave; the generator is left in its post-draw state, as the reference leaves it.
pub fn seeded_noise(seed: u64, shape: &[i64]) -> Result<Tensor> {
    with_cpu_generator(|| {
        // torch.manual_seed takes the seed as an unsigned 64-bit integer; tch passes it as i64
        // and libtorch reads the same 64 bits back as unsigned.
        tch::manual_seed(i64::from_ne_bytes(seed.to_ne_bytes()));
        Ok(Tensor::f_randn(shape, (Kind::Float, Device::Cpu))?)
    })
}

/// Runs `draw` while holding recon's lock on libtorch's global CPU generator. Code in this
/// process that draws random numbers (tests included) goes through it so that it never lands
/// between a reseed and the draw of [`seeded_noise`].
pub fn with_cpu_generator<T>(draw: impl FnOnce() -> T) -> T {
    let _guard = CPU_GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    draw()
}

/// The noise shape `sample_sparse_structure` draws: `[num_samples, in_channels, R, R, R]`.
pub fn noise_shape(flow: &SparseStructureFlowConfig, num_samples: i64) -> [i64; 5] {
    let r = flow.resolution;
    [num_samples, flow.in_channels, r, r, r]
}

/// The sampler's starting point: seeded noise of [`noise_shape`], or the caller's, checked
/// against the flow model's channels and resolution and cast to float32.
pub fn initial_noise(
    source: NoiseSource<'_>,
    flow: &SparseStructureFlowConfig,
    num_samples: i64,
) -> Result<Tensor> {
    let shape = noise_shape(flow, num_samples);
    match source {
        NoiseSource::Seed(seed) => seeded_noise(seed, &shape),
        NoiseSource::Given(noise) => {
            let size = noise.size();
            let fits = size.len() == 5 && size[0] >= 1 && size[1..] == shape[1..];
            if !fits || !noise.is_floating_point() {
                return Err(Error::invalid_argument(format!(
                    "sparse-structure noise must be a float tensor [B, {}, {r}, {r}, {r}] (the flow \
                     model's in_channels and resolution), got {:?} {size:?}",
                    flow.in_channels,
                    noise.kind(),
                    r = flow.resolution
                )));
            }
            Ok(noise.f_to_kind(Kind::Float)?)
        }
    }
}

/// `sample_sparse_structure`'s sampling: `sampler` over the flow model from `noise` (already on
/// the flow model's device), conditioned on every view (one view: `run`; several:
/// `run_multi_image` in `mode`). Returns `z_s`.
pub fn sample_sparse_structure(
    flow: &dyn Network,
    sampler: &SamplerConfig,
    noise: &Tensor,
    condition: &ImageCondition,
    mode: MultiImageMode,
    control: &RunControl<'_>,
) -> Result<Tensor> {
    let views = condition.views()?;
    let conditioning = condition.conditioning(&views, mode, "sparse-structure sampling")?;
    // Fixed shapes for all steps: replayed from a CUDA graph on CUDA (bit-identical: the
    // dense flow is deterministic).
    let model = GraphedFlow::new(NamedFlow(flow));
    let options = SampleOptions::new(Stage::SparseStructure, control);
    let output = sampler
        .sample(
            &model,
            noise,
            conditioning,
            // `get_cond`'s `zeros_like(cond)`.
            Some(Negative::Zeros(&condition.neg_cond)),
            &options,
        )
        .context("sparse-structure sampling")?;
    Ok(output.samples)
}

/// The decoder's occupancy logits for the latent `z_s`.
pub fn decode_sparse_structure(decoder: &dyn Network, latent: &Tensor) -> Result<Tensor> {
    let inputs = NamedTensors::from([("x".to_string(), latent.shallow_clone())]);
    take_output(decoder.forward_named(&inputs)?, "logits", decoder)
        .context("decoding the sparse structure")
}

/// `argwhere(logits > 0)[:, [0, 2, 3, 4]].int()`: the occupied voxels `[M, 4]` int32
/// `(batch, x, y, z)` of logits `[B, C, D, H, W]`, in row-major order (a voxel occupied in
/// several channels is listed once per channel, as the reference lists it).
pub fn occupied_coords(logits: &Tensor) -> Result<Tensor> {
    if logits.dim() != 5 {
        return Err(Error::internal(format!(
            "sparse-structure decoder returned logits of shape {:?}; expected [B, C, D, H, W]",
            logits.size()
        )));
    }
    let positions = logits.f_gt(0.0)?.f_argwhere()?;
    let columns = Tensor::f_from_slice(&[0i64, 2, 3, 4])?.f_to_device(positions.device())?;
    Ok(positions
        .f_index_select(1, &columns)?
        .f_to_kind(Kind::Int)?)
}

/// A network with inputs `x`, `t`, `cond` and output `v` (the SS flow model) as the
/// sampler's velocity model.
struct NamedFlow<'a>(&'a dyn Network);

impl FlowModel<Tensor> for NamedFlow<'_> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let inputs: NamedTensors = BTreeMap::from([
            ("x".to_string(), x_t.shallow_clone()),
            ("t".to_string(), t.shallow_clone()),
            ("cond".to_string(), cond.shallow_clone()),
        ]);
        take_output(self.0.forward_named(&inputs)?, "v", self.0)
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, zeros: &Tensor) -> Result<Tensor> {
        match self.0.as_any().downcast_ref::<SparseStructureFlowModel>() {
            Some(flow) => tch::no_grad(|| flow.forward_zero_condition(x_t, t)),
            None => self.predict(x_t, t, zeros),
        }
    }
}

/// Output `name` of a network run, or an Internal error naming what it returned instead.
fn take_output(mut outputs: NamedTensors, name: &str, network: &dyn Network) -> Result<Tensor> {
    outputs.remove(name).ok_or_else(|| {
        let got: Vec<&String> = outputs.keys().collect();
        Error::internal(format!(
            "{} returned no '{name}' output (it returned {got:?})",
            network.class_name()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_repeats_per_seed() {
        let a = seeded_noise(7, &[1, 2, 3, 3, 3]).unwrap();
        let b = seeded_noise(7, &[1, 2, 3, 3, 3]).unwrap();
        let c = seeded_noise(8, &[1, 2, 3, 3, 3]).unwrap();
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        assert_eq!(a.kind(), Kind::Float);
        // Seeds above i64::MAX are valid torch seeds too.
        let big = seeded_noise(u64::MAX, &[4]).unwrap();
        assert!(big.equal(&seeded_noise(u64::MAX, &[4]).unwrap()));
    }

    #[test]
    fn coords_follow_argwhere_order_and_skip_the_channel() {
        let logits =
            Tensor::from_slice(&[-1f32, 2.0, 0.0, 3.0, 5.0, -2.0, -0.5, 1.0]).view([2, 1, 1, 2, 2]);
        let coords = occupied_coords(&logits).unwrap();
        assert_eq!(coords.kind(), Kind::Int);
        let flat: Vec<i32> = Vec::try_from(coords.flatten(0, -1)).unwrap();
        assert_eq!(flat, [0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1]);
        assert!(occupied_coords(&logits.view([2, 4])).is_err());
    }

    #[test]
    fn given_noise_must_fit_the_flow_model() {
        let mut flow = SparseStructureFlowConfig::trellis_image_large();
        flow.resolution = 4;
        flow.in_channels = 2;
        let good = Tensor::zeros([1, 2, 4, 4, 4], (Kind::Double, Device::Cpu));
        let noise = initial_noise(NoiseSource::Given(&good), &flow, 1).unwrap();
        assert_eq!(noise.kind(), Kind::Float);
        let bad = Tensor::zeros([1, 3, 4, 4, 4], (Kind::Float, Device::Cpu));
        let err = initial_noise(NoiseSource::Given(&bad), &flow, 1).unwrap_err();
        assert!(err.message().contains("[B, 2, 4, 4, 4]"), "{err}");
        assert_eq!(noise_shape(&flow, 1), [1, 2, 4, 4, 4]);
    }
}
