//! `TrellisImageTo3DPipeline`, stage 2 (research/trellis.md §1.5–1.6): from the occupied voxels
//! of stage 1 to the structured latent and its decoded representations.
//!
//! ```text
//! noise [N, C_in]: the CPU generator's next draw after the sparse-structure noise (same seed)
//!   → flow-Euler sampler over SLatFlowModel on SparseTensor(noise, coords)    sample_slat
//!     (CFG, guidance interval, multi-view modes: the stage-1 sampler code, sparse layout)
//!   → slat = x · std + mean (pipeline.json's slat_normalization, per channel)
//! decode_slat: SLatGaussianDecoder → Gaussians, SLatMeshDecoder → FlexiCubes mesh,
//!   SLatRadianceFieldDecoder → Strivec; one per batch element, only the formats asked for
//! ```
//!
//! The sampler steps reuse one spatial level: every step's features are put on the noise's
//! voxels with `replace`, so kernel maps, up/downsampling maps and attention partitions are
//! built once per run, not once per step.

use tch::{Device, Kind, Tensor};

use super::{with_cpu_generator, ImageCondition, NoiseSource};
use crate::error::{Error, Result, ResultExt};
use crate::hub::Normalization;
use crate::models::structured_latent_flow::SLatFlowModel;
use crate::models::structured_latent_vae::{
    SLatGaussianDecoder, SLatMeshDecoder, SLatRadianceFieldDecoder,
};
use crate::pipeline::{MultiImageMode, RunControl, Stage};
use crate::representations::gaussian::Gaussian;
use crate::representations::mesh::{MeshExtractResult, SparseFeatures2Mesh};
use crate::representations::radiance_field::Strivec;
use crate::samplers::{
    Condition, Conditioning, FlowModel, GraphInput, GraphedFlow, LatentLayout, Negative,
    SampleOptions, SamplerConfig,
};
use crate::sparse::SparseTensor;

/// The pipeline.json key of the structured-latent flow model.
pub const SLAT_FLOW_MODEL: &str = "slat_flow_model";
/// The pipeline.json keys of the decoders.
pub const SLAT_DECODER_GS: &str = "slat_decoder_gs";
pub const SLAT_DECODER_MESH: &str = "slat_decoder_mesh";
pub const SLAT_DECODER_RF: &str = "slat_decoder_rf";

/// The networks stage 2 runs, all on `device`; a decoder is `None` when its format was not
/// asked for.
pub struct SlatNetworks<'a> {
    pub flow: &'a SLatFlowModel,
    pub gaussian: Option<&'a SLatGaussianDecoder>,
    pub mesh: Option<&'a SLatMeshDecoder>,
    pub radiance_field: Option<&'a SLatRadianceFieldDecoder>,
    pub normalization: &'a Normalization,
    pub device: Device,
}

/// Everything stage 2 computed, for callers and tests (the layered parity checks compare
/// each of these).
pub struct SlatOutput {
    /// The sampler's starting point `[N, C_in]`, float32 on the CPU.
    pub noise: Tensor,
    /// The sampled latent before de-normalisation `[N, C_in]`.
    pub sampled: Tensor,
    /// The structured latent (`slat_sampler` output · std + mean) on the stage-1 voxels.
    pub slat: SparseTensor,
    /// One entry per batch element, for each decoded format (empty when not asked for).
    pub gaussians: Vec<Gaussian>,
    pub meshes: Vec<MeshExtractResult>,
    pub radiance_fields: Vec<Strivec>,
}

/// The structured-latent noise `[N, in_channels]` of a run seeded with `seed`: the reference
/// seeds once, draws the sparse-structure noise (`ss_noise_shape`), then this. Both draws are
/// replayed from the seed under recon's generator lock, so the result depends only on the
/// seed and the shapes.
pub fn seeded_slat_noise(
    seed: u64,
    ss_noise_shape: &[i64],
    num_voxels: i64,
    in_channels: i64,
) -> Result<Tensor> {
    with_cpu_generator(|| {
        tch::manual_seed(i64::from_ne_bytes(seed.to_ne_bytes()));
        let _sparse_structure = Tensor::f_randn(ss_noise_shape, (Kind::Float, Device::Cpu))?;
        Ok(Tensor::f_randn(
            [num_voxels, in_channels],
            (Kind::Float, Device::Cpu),
        )?)
    })
}

/// The sampler's starting point for `num_voxels` voxels: seeded (see [`seeded_slat_noise`]) or
/// the caller's, checked and cast to float32 on the CPU.
pub fn initial_slat_noise(
    source: NoiseSource<'_>,
    ss_noise_shape: &[i64],
    num_voxels: i64,
    in_channels: i64,
) -> Result<Tensor> {
    match source {
        NoiseSource::Seed(seed) => seeded_slat_noise(seed, ss_noise_shape, num_voxels, in_channels),
        NoiseSource::Given(noise) => {
            if noise.size() != [num_voxels, in_channels] || !noise.is_floating_point() {
                return Err(Error::invalid_argument(format!(
                    "structured-latent noise must be a float tensor [{num_voxels}, {in_channels}] \
                     (one row per occupied voxel, the flow model's in_channels), got {:?} {:?}",
                    noise.kind(),
                    noise.size()
                )));
            }
            Ok(noise.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?)
        }
    }
}

/// `sample_slat`'s sampling: `sampler` over the flow model from `noise` on `coords` (both on
/// the flow model's device), conditioned on every view (one view: `run`; several:
/// `run_multi_image` in `mode`). Returns the sampled (still normalised) features `[N, C]`.
pub fn sample_slat(
    flow: &SLatFlowModel,
    sampler: &SamplerConfig,
    voxels: &SparseTensor,
    condition: &ImageCondition,
    mode: MultiImageMode,
    control: &RunControl<'_>,
) -> Result<Tensor> {
    let views = condition.views()?;
    let conditioning = condition.conditioning(&views, mode, "structured-latent sampling")?;
    sample_slat_conditioned(
        flow,
        sampler,
        voxels,
        conditioning,
        &condition.neg_cond,
        control,
    )
}

/// The sampling of [`sample_slat`] for any condition the flow model takes: a token tensor
/// `[1, L, C]` (TRELLIS), or a list of them whose cross-attention outputs every block
/// averages (ReconViaGen's per-view conditions, `Vec<Tensor>`).
pub fn sample_slat_conditioned<C>(
    flow: &SLatFlowModel,
    sampler: &SamplerConfig,
    voxels: &SparseTensor,
    conditioning: Conditioning<'_, C>,
    neg_cond: &C,
    control: &RunControl<'_>,
) -> Result<Tensor>
where
    C: Condition + GraphInput,
    for<'a> SparseFlow<'a>: FlowModel<C>,
{
    let batch_index = voxels.batch_index()?;
    // The same voxels at every step: after the first forward has cached their bookkeeping,
    // the forwards replay from a CUDA graph on CUDA (the eager forward's kernels, in order).
    let model = GraphedFlow::new(SparseFlow {
        flow,
        voxels,
        batch_index: &batch_index,
    });
    let options = SampleOptions::new(Stage::StructuredLatent, control);
    let output = sampler
        .sample(
            &model,
            voxels.feats(),
            conditioning,
            // The pipelines' negative conditions are `zeros_like(cond)`.
            Some(Negative::Zeros(neg_cond)),
            &options,
        )
        .context("structured-latent sampling")?;
    Ok(output.samples)
}

/// `slat · std + mean` per channel (pipeline.json's `slat_normalization`).
pub fn denormalize(sampled: &Tensor, normalization: &Normalization) -> Result<Tensor> {
    let channels = sampled.size().get(1).copied().unwrap_or(0);
    let fits = |v: &[f64]| v.len() as i64 == channels;
    if !fits(&normalization.mean) || !fits(&normalization.std) {
        return Err(Error::format(format!(
            "slat_normalization has {} means and {} stds, but the structured latent has {channels} \
             channels",
            normalization.mean.len(),
            normalization.std.len()
        )));
    }
    let row = |values: &[f64]| -> Result<Tensor> {
        let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        Ok(Tensor::f_from_slice(&values)?
            .f_reshape([1, channels])?
            .f_to_device(sampled.device())?)
    };
    Ok(sampled
        .f_mul(&row(&normalization.std)?)?
        .f_add(&row(&normalization.mean)?)?)
}

/// Stage 2 for the voxels `coords` `[N, 4]` of stage 1 (see the module docs). Progress:
/// `StructuredLatent` per sampler step, then `Decode` once per decoded format.
pub fn run_slat(
    networks: &SlatNetworks<'_>,
    sampler: &SamplerConfig,
    coords: &Tensor,
    condition: &ImageCondition,
    noise: Tensor,
    mode: MultiImageMode,
    control: &RunControl<'_>,
) -> Result<SlatOutput> {
    run_slat_with(
        networks,
        sampler,
        coords,
        noise,
        control,
        |voxels| sample_slat(networks.flow, sampler, voxels, condition, mode, control),
        None,
    )
}

/// [`run_slat`] with the sampling left to `sample` (given the noise on the voxels, it returns
/// the sampled features `[N, C]`): the pipelines differ only in how they condition it.
/// `on_asset_points` runs during decoding, see [`decode_slat`].
pub fn run_slat_with(
    networks: &SlatNetworks<'_>,
    sampler: &SamplerConfig,
    coords: &Tensor,
    noise: Tensor,
    control: &RunControl<'_>,
    sample: impl FnOnce(&SparseTensor) -> Result<Tensor>,
    on_asset_points: Option<AssetPointsWork<'_>>,
) -> Result<SlatOutput> {
    let device = networks.device;
    let voxels = SparseTensor::new(
        noise.f_to_device(device)?,
        coords.f_to_device(device)?.f_to_kind(Kind::Int)?,
    )
    .context("the structured latent's voxels")?;
    control.progress(Stage::StructuredLatent, 0, sampler.steps)?;
    let sampled = sample(&voxels)?;
    control.check_cancelled()?;
    let slat = voxels.replace(denormalize(&sampled, networks.normalization)?)?;
    let decoded = decode_slat(networks, &slat, control, on_asset_points)?;
    Ok(SlatOutput {
        noise,
        sampled,
        slat,
        gaussians: decoded.gaussians,
        meshes: decoded.meshes,
        radiance_fields: decoded.radiance_fields,
    })
}

/// The decoded representations of one structured latent.
pub struct Decoded {
    pub gaussians: Vec<Gaussian>,
    pub meshes: Vec<MeshExtractResult>,
    pub radiance_fields: Vec<Strivec>,
}

/// Work on the decoded asset's points `[M, 3]` (the first Gaussians' centres, else the first
/// mesh's vertices) that [`decode_slat`] runs as soon as they exist. It reports through what it
/// captures.
pub type AssetPointsWork<'w> = Box<dyn FnOnce(Tensor) + Send + 'w>;

/// `decode_slat`: every decoder `networks` holds, each to one representation per batch
/// element. Cancellation is checked between decoders.
///
/// `on_asset_points` (if any) gets the asset's points: the Gaussian decoder runs first, and on
/// CUDA the work then runs on a thread and stream of its own while the mesh and radiance-field
/// decoders run (it is host-bound, they are not); without Gaussians it runs after the mesh
/// decoder. It does not run when neither is decoded.
pub fn decode_slat(
    networks: &SlatNetworks<'_>,
    slat: &SparseTensor,
    control: &RunControl<'_>,
    on_asset_points: Option<AssetPointsWork<'_>>,
) -> Result<Decoded> {
    let total = [
        networks.gaussian.is_some(),
        networks.mesh.is_some(),
        networks.radiance_field.is_some(),
    ]
    .iter()
    .filter(|&&on| on)
    .count();
    let done = std::cell::Cell::new(0);
    let finished = || -> Result<()> {
        done.set(done.get() + 1);
        control.progress(Stage::Decode, done.get(), total)
    };
    control.progress(Stage::Decode, 0, total)?;
    let mut gaussians = Vec::new();
    if let Some(decoder) = networks.gaussian {
        let _scope = crate::profiler::scope("Gaussian decoder");
        gaussians = tch::no_grad(|| decoder.decode(slat)).context("Gaussian decoding")?;
        finished()?;
    }
    let the_rest = || -> Result<(Vec<MeshExtractResult>, Vec<Strivec>)> {
        let mut meshes = Vec::new();
        if let Some(decoder) = networks.mesh {
            meshes = tch::no_grad(|| decode_meshes(decoder, slat)).context("mesh decoding")?;
            finished()?;
        }
        let mut radiance_fields = Vec::new();
        if let Some(decoder) = networks.radiance_field {
            radiance_fields =
                tch::no_grad(|| decoder.decode(slat)).context("radiance-field decoding")?;
            finished()?;
        }
        Ok((meshes, radiance_fields))
    };
    let (meshes, radiance_fields) = match (on_asset_points, gaussians.first()) {
        (Some(work), Some(first)) => {
            let points = first.get_xyz()?;
            let ((), rest) =
                crate::cuda::alongside::run_alongside(networks.device, || work(points), the_rest)?;
            rest?
        }
        (Some(work), None) => {
            let (meshes, radiance_fields) = the_rest()?;
            if let Some(mesh) = meshes.first() {
                work(mesh.vertices.shallow_clone());
            }
            (meshes, radiance_fields)
        }
        (None, _) => the_rest()?,
    };
    let decoded = Decoded {
        gaussians,
        meshes,
        radiance_fields,
    };
    Ok(decoded)
}

/// The mesh decoder's raw per-voxel features at 4× the latent resolution, then FlexiCubes on
/// each batch element's rows (in the decoder's order, batch column dropped) as the reference's
/// `SLatMeshDecoder.to_representation` does, in eval mode.
pub fn decode_meshes(
    decoder: &SLatMeshDecoder,
    slat: &SparseTensor,
) -> Result<Vec<MeshExtractResult>> {
    let scope = crate::profiler::scope("mesh decoder");
    let raw = decoder.forward_raw(slat)?;
    drop(scope);
    let _scope = crate::profiler::scope("mesh extraction");
    // `resolution()` is already the raw features' (4× the latent's): the extraction grid.
    let extractor = SparseFeatures2Mesh::new(decoder.resolution(), decoder.use_color())?;
    let layout = raw.layout()?;
    let raw_coords = raw.coords().shallow_clone();
    let feats = raw.feats().f_to_kind(Kind::Float)?;
    // The raw voxels' spatial level holds the decoder's kernel maps at 4× the latent
    // resolution (~0.5 GB for a million voxels): freed before the extraction, whose peak is
    // the decode stage's.
    drop(raw);
    let mut meshes = Vec::with_capacity(layout.len());
    for (b, rows) in layout.into_iter().enumerate() {
        let len = rows.end - rows.start;
        let coords = raw_coords.f_narrow(0, rows.start, len)?.f_narrow(1, 1, 3)?;
        let item_feats = feats.f_narrow(0, rows.start, len)?;
        meshes.push(
            extractor
                .forward(&coords, &item_feats)
                .context(format!("batch element {b}"))?,
        );
    }
    Ok(meshes)
}

/// [`SLatFlowModel`] as the sampler's [`FlowModel`] over the features of `voxels`' rows: each
/// step's features go on the same spatial level, so what derives from the coordinates is built
/// once.
pub struct SparseFlow<'a> {
    flow: &'a SLatFlowModel,
    voxels: &'a SparseTensor,
    batch_index: &'a Tensor,
}

impl FlowModel<Tensor> for SparseFlow<'_> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let v = tch::no_grad(|| self.flow.forward_views(&x, t, std::slice::from_ref(cond)))?;
        Ok(v.feats().shallow_clone())
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, _zeros: &Tensor) -> Result<Tensor> {
        self.zero_condition_velocity(x_t, t, 1)
    }

    fn predict_with_zeros(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        _zeros: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.guided_pair(x_t, t, std::slice::from_ref(cond))
    }

    fn layout(&self) -> LatentLayout<'_> {
        self.sparse_layout()
    }
}

impl SparseFlow<'_> {
    /// The velocity under all-zero tokens in `views` views.
    fn zero_condition_velocity(&self, x_t: &Tensor, t: &Tensor, views: usize) -> Result<Tensor> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let v = tch::no_grad(|| self.flow.forward_zero_condition(&x, t, views))?;
        Ok(v.feats().shallow_clone())
    }

    /// The velocities under `views` and under all-zero tokens in as many views, from one
    /// guided-pair forward.
    fn guided_pair(&self, x_t: &Tensor, t: &Tensor, views: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let (pos, neg) =
            tch::no_grad(|| self.flow.forward_views_with_zero_condition(&x, t, views))?;
        Ok((pos.feats().shallow_clone(), neg.feats().shallow_clone()))
    }

    fn sparse_layout(&self) -> LatentLayout<'_> {
        LatentLayout::Sparse {
            batch_index: self.batch_index,
            batch_size: self.voxels.batch_size() as i64,
        }
    }
}

/// ReconViaGen's list condition: one `[1, L, C]` tensor per view, averaged inside every
/// cross-attention block.
impl FlowModel<Vec<Tensor>> for SparseFlow<'_> {
    fn predict(&self, x_t: &Tensor, t: &Tensor, cond: &Vec<Tensor>) -> Result<Tensor> {
        let x = self.voxels.replace(x_t.shallow_clone())?;
        let v = tch::no_grad(|| self.flow.forward_views(&x, t, cond))?;
        Ok(v.feats().shallow_clone())
    }

    fn predict_zeros(&self, x_t: &Tensor, t: &Tensor, zeros: &Vec<Tensor>) -> Result<Tensor> {
        self.zero_condition_velocity(x_t, t, zeros.len())
    }

    /// The zero condition has as many views as `cond` here (the sampler's
    /// `zeros_like(cond)`); a list of another length takes the two separate forwards.
    fn predict_with_zeros(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Vec<Tensor>,
        zeros: &Vec<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        if zeros.len() != cond.len() {
            return Ok((
                self.predict(x_t, t, cond)?,
                self.predict_zeros(x_t, t, zeros)?,
            ));
        }
        self.guided_pair(x_t, t, cond)
    }

    fn layout(&self) -> LatentLayout<'_> {
        self.sparse_layout()
    }
}
