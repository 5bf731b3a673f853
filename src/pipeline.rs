//! The safe Rust API: [`Pipeline::load`] resolves and loads a published pipeline, and
//! [`Pipeline::run`] turns images into a 3D asset ([`Pipeline::run_sparse_structure`] runs
//! stage 1 alone). The C ABI in `ffi/` is a thin wrapper.
//!
//! The image encoder (`image_cond_model`) is loaded with the other networks, at load time, so
//! a missing download or a broken checkpoint is reported by `load`, never in the middle of a
//! run: a torch.hub name (`dinov2_vitl14_reg`) is fetched from its published Hub repo
//! (`models::dinov2::resolve_image_cond_model`); a checkpoint stem (recon's extension for small
//! local models, see `hub::is_checkpoint_stem`) is read like the other checkpoints. It is listed
//! among [`Pipeline::networks`] under the key `image_cond_model`, and `only_models` selects it
//! by that key.

mod background;
mod residency;

pub use crate::image::background::BackgroundRemoval;
pub use residency::{Held, NetworkRef, NetworkSource};

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tch::Device;

use crate::error::{Error, Result, ResultExt};
use crate::hub::{self, PipelineConfig, ResolveOptions, ResolvedPipeline, IMAGE_COND_MODEL_KEY};
use crate::image::Variant;
use crate::logging::{LogFn, LogLevel};
use crate::models::dinov2::{self, Dinov2};
use crate::models::sparse_structure_flow::multiview_cond::ModulatedMultiViewCond;
use crate::models::sparse_structure_flow::SparseStructureFlowConfig;
use crate::models::structured_latent_flow::multiview_cond::ModulatedSLATMultiViewCond;
use crate::models::vggt::model::{
    Vggt, VggtFiles, VggtPrecision, VGGT_CONFIG_FILE, VGGT_WEIGHTS_FILE,
};
use crate::models::{self, Network};
use crate::parallel::lock;
use crate::pipelines::trellis_image_to_3d::slat::{self, SlatNetworks, SlatOutput};
use crate::pipelines::trellis_image_to_3d::{
    self as trellis, NoiseSource, SparseStructureNetworks, SparseStructureOutput,
};
use crate::pipelines::trellis_vggt_to_3d::camera_registration::Registration;
use crate::pipelines::trellis_vggt_to_3d::{self as vggt_pipeline, Samplers, ViewEncoders};
use crate::samplers::{GuidanceFormula, SamplerConfig};

/// The classes the structured-latent flow model may be (the elastic variant only changes
/// training-time memory management).
const SLAT_FLOW_CLASSES: &[&str] = &["SLatFlowModel", "ElasticSLatFlowModel"];

/// More views than this is almost certainly a caller bug (the reference runs 1–16).
pub const MAX_VIEWS: usize = 64;
pub use crate::image::{MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};

/// Where the networks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The first CUDA device when one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceRequest {
    fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cuda(index) => {
                let count = tch::Cuda::device_count() as usize;
                if index < count {
                    Ok(Device::Cuda(index))
                } else {
                    Err(Error::new(
                        crate::ErrorKind::Device,
                        format!(
                            "CUDA device {index} requested, but {count} CUDA device(s) are usable"
                        ),
                    ))
                }
            }
        }
    }
}

/// How to load a pipeline.
#[derive(Clone)]
pub struct LoadOptions {
    /// A local directory in the published layout, or a Hub repo id (`owner/name[@revision]`).
    pub source: String,
    pub device: DeviceRequest,
    /// Load only these pipeline model keys (None: all that pipeline.json names).
    pub only_models: Option<Vec<String>>,
    /// Force Hub offline mode (None: from HF_HUB_OFFLINE).
    pub offline: Option<bool>,
    /// The formats runs will ask for: the decoders of the others are neither downloaded nor
    /// loaded (None: every decoder pipeline.json names).
    pub formats: Option<Formats>,
    /// TRELLIS-VGGT only: where VGGT comes from — a local folder with `config.json` +
    /// `model.safetensors`, or a Hub repo id (None: `Stable-X/vggt-object-v0-1`, which the
    /// reference hard-codes).
    pub vggt_model: Option<String>,
    /// Keep networks off the device between stages (ReconViaGen's `low_vram`): each stage
    /// builds its networks on the device from the checkpoint files and frees them when it
    /// ends, so the device holds one stage's networks at a time (and none between runs).
    /// Outputs are identical; each run pays the host-to-device copies.
    pub low_vram: bool,
    /// Where background removal's BiRefNet comes from, loaded the first time a view needs it
    /// (see [`RunParams::remove_background`]): a local folder holding `model.safetensors`, or
    /// a Hub repo id (None: `ZhengPeng7/BiRefNet`, which ReconViaGen and TRELLIS.2 load).
    pub background_model: Option<String>,
    pub log: Arc<LogFn>,
}

impl LoadOptions {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            device: DeviceRequest::Auto,
            only_models: None,
            offline: None,
            formats: None,
            vggt_model: None,
            low_vram: false,
            background_model: None,
            log: Arc::new(crate::logging::tracing_sink),
        }
    }
}

/// One network of the pipeline, as loaded.
pub struct LoadedNetwork {
    /// The key in pipeline.json's `models` (e.g. `sparse_structure_decoder`).
    pub key: String,
    /// The checkpoint stem (e.g. `ckpts/ss_dec_conv3d_16l8_fp16`).
    pub stem: String,
    /// The upstream class named in the checkpoint json.
    pub class: String,
    /// Elements stored in the checkpoint (parameters and buffers).
    pub num_elements: usize,
    /// The constructor args of the checkpoint json (for a published DINOv2, its transformers
    /// `config.json`).
    pub args: serde_json::Value,
    /// The runnable network, when recon implements its class and keeps it on the device
    /// (None for a class recon does not implement, whose checkpoint was only validated —
    /// json parsed, safetensors header checked — and in low-VRAM mode, where `source`
    /// builds it for each stage).
    pub network: Option<Box<dyn Network>>,
    /// Where the network is built from (None for a class recon does not implement).
    pub source: Option<NetworkSource>,
}

impl LoadedNetwork {
    /// Whether recon runs this network (resident, or built for each stage in low-VRAM mode).
    pub fn is_implemented(&self) -> bool {
        self.network.is_some() || self.source.is_some()
    }

    /// Low-VRAM mode: frees the network, which each stage builds again from `source`.
    fn into_on_demand(mut self) -> Self {
        if self.source.is_some() {
            self.network = None;
        }
        self
    }
}

/// A loaded pipeline: immutable after load, shareable across threads.
pub struct Pipeline {
    resolved: ResolvedPipeline,
    device: Device,
    networks: Vec<LoadedNetwork>,
    /// Networks are built per stage (see [`LoadOptions::low_vram`]).
    low_vram: bool,
    log: Arc<LogFn>,
    /// Background removal's model, loaded on first need and shared by later runs.
    background: background::BackgroundRemover,
    /// The view counts this model's TRELLIS-VGGT encoders have run with (see
    /// [`Pipeline::first_encoding_alone`]).
    encoded_view_counts: Mutex<HashSet<usize>>,
}

/// Held while a model encodes a view count for the first time (see
/// [`Pipeline::first_encoding_alone`]).
static FIRST_ENCODING: Mutex<()> = Mutex::new(());

/// Microsoft TRELLIS's image-to-3D pipeline class.
const TRELLIS_IMAGE_TO_3D: &str = "TrellisImageTo3DPipeline";
/// ReconViaGen's multi-view pipeline class.
const TRELLIS_VGGT_TO_3D: &str = "TrellisVGGTTo3DPipeline";
/// Which pipelines recon knows (pipeline.json's `name`).
const KNOWN_PIPELINES: &[&str] = &[TRELLIS_IMAGE_TO_3D, TRELLIS_VGGT_TO_3D];

impl Pipeline {
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let log = options.log.as_ref();
        let device = options.device.resolve()?;
        let low_vram = options.low_vram;
        // In low-VRAM mode the networks are built once on the CPU (every checkpoint checked
        // now, not mid-run), then dropped: each stage builds them on the device.
        let build_device = if low_vram { Device::Cpu } else { device };
        let only: Option<Vec<&str>> = options
            .only_models
            .as_ref()
            .map(|keys| keys.iter().map(String::as_str).collect());
        let mut resolve_options = ResolveOptions::new(log);
        resolve_options.only_models = only.as_deref();
        let skipped = options.formats.map(unused_decoders).unwrap_or_default();
        resolve_options.skip_models = &skipped;
        resolve_options.offline = options.offline;
        let resolved = hub::resolve(&options.source, &resolve_options)?;
        if !KNOWN_PIPELINES.contains(&resolved.config.name.as_str()) {
            return Err(Error::format(format!(
                "{}: pipeline '{}' is not one recon runs (known: {})",
                resolved.pipeline_json.display(),
                resolved.config.name,
                KNOWN_PIPELINES.join(", ")
            )));
        }
        let mut networks = Vec::new();
        for files in resolved.models.values() {
            let network =
                load_one(files, build_device, log).context(format!("model '{}'", files.key))?;
            networks.push(network);
        }
        if let Some(name) = &resolved.config.image_cond_model {
            if hub::is_selected(only.as_deref(), IMAGE_COND_MODEL_KEY) {
                let network =
                    load_image_cond_model(name, &resolved, build_device, &resolve_options)
                        .context(format!("image_cond_model '{name}'"))?;
                networks.push(network);
            }
        }
        if resolved.config.name == TRELLIS_VGGT_TO_3D
            && hub::is_selected(only.as_deref(), vggt_pipeline::VGGT_MODEL_KEY)
        {
            let source = options
                .vggt_model
                .as_deref()
                .unwrap_or(vggt_pipeline::VGGT_MODEL_REPO);
            let network = load_vggt_model(source, build_device, &resolve_options)
                .context(format!("VGGT '{source}'"))?;
            networks.push(network);
        }
        if low_vram {
            networks = networks
                .into_iter()
                .map(LoadedNetwork::into_on_demand)
                .collect();
        }
        log(
            LogLevel::Info,
            &format!(
                "loaded {} from {} on {}: {} network(s)",
                resolved.config.name,
                resolved.root.display(),
                device_name(device),
                networks.len()
            ),
        );
        Ok(Self {
            resolved,
            device,
            networks,
            low_vram,
            log: options.log.clone(),
            background: background::BackgroundRemover::new(
                options.background_model.as_deref(),
                options.offline,
                options.log.clone(),
            ),
            encoded_view_counts: Mutex::new(HashSet::new()),
        })
    }

    /// A guard that makes the first TRELLIS-VGGT encoding of `views` views by this model run
    /// alone in the process (None: not the first, or not on CUDA). libtorch's CUDA libraries
    /// set themselves up for new shapes at their first use, and two threads doing so at the same
    /// time can end up with other, equally valid kernels for one of them: on two H200s, two
    /// models starting together gave condition features 1.3e-4 apart (relative L2) in 3 of 7
    /// tries, and identical bits at every later run. Later encodings run concurrently.
    fn first_encoding_alone(&self, views: usize) -> Option<MutexGuard<'static, ()>> {
        let seen = lock(&self.encoded_view_counts).contains(&views);
        (self.device.is_cuda() && !seen).then(|| lock(&FIRST_ENCODING))
    }

    pub fn name(&self) -> &str {
        &self.resolved.config.name
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.resolved.config
    }

    pub fn root(&self) -> &std::path::Path {
        &self.resolved.root
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn networks(&self) -> &[LoadedNetwork] {
        &self.networks
    }

    /// The network loaded under pipeline key `key`, if recon runs it.
    pub fn network(&self, key: &str) -> Option<&dyn Network> {
        self.networks
            .iter()
            .find(|n| n.key == key)
            .and_then(|n| n.network.as_deref())
    }

    /// Generates a 3D asset from `images` (one or more views of one object): the reference's
    /// `run` (one view) or `run_multi_image` (several, combined by `params.mode`), with the
    /// noise of `params.seed` drawn as the reference draws it. Every input is validated first.
    /// Decodes the formats `params.formats` asks for; a format whose decoder the pipeline
    /// lacks (or `LoadOptions` left out) is an error naming it.
    pub fn run(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        control: &RunControl<'_>,
    ) -> Result<Output> {
        self.generate(images, params, &GenerationNoise::Seed, control)?
            .to_output()
    }

    /// [`Pipeline::run`] with every intermediate result kept ([`Generation`]) and the noise
    /// of both stages either drawn from the seed or given (replays and parity tests).
    pub fn generate(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        noise: &GenerationNoise,
        control: &RunControl<'_>,
    ) -> Result<Generation> {
        let overrides = GenerationOverrides::default();
        self.generate_with_overrides(images, params, noise, &overrides, control)
    }

    /// [`Pipeline::generate`] with parts of the computation replaced (see
    /// [`GenerationOverrides`]): benchmarks feed the structured-latent stage a fixed voxel set.
    pub fn generate_with_overrides(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        noise: &GenerationNoise,
        overrides: &GenerationOverrides,
        control: &RunControl<'_>,
    ) -> Result<Generation> {
        if self.name() == TRELLIS_VGGT_TO_3D {
            return self.generate_from_views(images, params, noise, overrides, control);
        }
        // Both stages' networks and samplers are looked up before any work, so a missing
        // decoder fails fast.
        self.require_all(&self.slat_keys(&params.formats))?;
        let slat_sampler = self.slat_sampler(params)?;
        let (ss_noise, slat_source) = noise.sources(params.seed);
        let mut stage1 = self.sparse_structure(images, params, ss_noise, control)?;
        overrides.apply(&mut stage1)?;
        control.check_cancelled()?;
        let held = self.hold(&self.slat_keys(&params.formats))?;
        let slat_networks = self.slat_networks(&held, &params.formats)?;
        let slat_noise = slat::initial_slat_noise(
            slat_source,
            &stage1.noise.size(),
            stage1.num_voxels(),
            slat_networks.flow.config().in_channels,
        )?;
        let condition = trellis::ImageCondition {
            cond: stage1.cond.shallow_clone(),
            neg_cond: stage1.neg_cond.shallow_clone(),
        };
        let stage2 = slat::run_slat(
            &slat_networks,
            &slat_sampler,
            &stage1.coords,
            &condition,
            slat_noise,
            params.mode,
            control,
        )?;
        self.release(held)?;
        Ok(Generation {
            sparse_structure: stage1,
            slat: stage2,
            view_conditions: Vec::new(),
            cameras: Vec::new(),
        })
    }

    /// [`Pipeline::generate`] for TRELLIS-VGGT: VGGT and DINOv2 on all views, the multi-view
    /// condition networks, then both stages (see [`vggt_pipeline`]), each stage holding only
    /// its own networks in low-VRAM mode.
    fn generate_from_views(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        noise: &GenerationNoise,
        overrides: &GenerationOverrides,
        control: &RunControl<'_>,
    ) -> Result<Generation> {
        validate_views(images)?;
        params.validate()?;
        control.check_cancelled()?;
        let (encoder_keys, ss_keys, slat_keys) = self.view_stage_keys(&params.formats);
        for keys in [&encoder_keys, &ss_keys, &slat_keys] {
            self.require_all(keys)?;
        }
        let samplers = self.samplers(params)?;
        let (ss_noise, slat_noise) = noise.sources(params.seed);
        let cut = self.cut_out_backgrounds(images, params, Variant::ReconViaGen, control)?;
        let images = &cut.views(images);

        let held = self.hold(&encoder_keys)?;
        let encoders = ViewEncoders {
            vggt: self.concrete::<Vggt>(&held, vggt_pipeline::VGGT_MODEL_KEY)?,
            image_cond_model: self.runnable(&held, IMAGE_COND_MODEL_KEY)?,
            device: self.device,
        };
        control.progress(Stage::Preprocess, 0, images.len())?;
        let alone = self.first_encoding_alone(images.len());
        let encoded = vggt_pipeline::encode_views(&encoders, images, params, control)?;
        lock(&self.encoded_view_counts).insert(images.len());
        drop(alone);
        self.release(held)?;

        let held = self.hold(&ss_keys)?;
        // The surface VGGT saw, for the camera registration, depends on the views only: it is
        // extracted on a side thread (host-bound work) while the graphed sampling runs.
        let point_maps = encoded
            .point_maps
            .as_ref()
            .filter(|_| !encoded.cameras.is_empty())
            .map(vggt_pipeline::PointMaps::shallow_clone);
        let (observed, stage1) = crate::cuda::alongside::run_alongside(
            self.device,
            move || {
                let _scope = crate::profiler::scope("observed surface");
                point_maps.map(|maps| vggt_pipeline::observed_surface(&maps))
            },
            || -> Result<SparseStructureOutput> {
                vggt_pipeline::sample_sparse_structure(
                    &self.view_sparse_structure_stage(&held)?,
                    &samplers.sparse_structure,
                    &encoded.features,
                    ss_noise,
                    control,
                )
            },
        )?;
        let mut stage1 = stage1?;
        self.release(held)?;
        overrides.apply(&mut stage1)?;
        control.check_cancelled()?;

        let held = self.hold(&slat_keys)?;
        let mut registered = None;
        let registration = self.camera_registration(&encoded, observed, &mut registered);
        let requested = registration.is_some();
        let (view_conditions, stage2) = vggt_pipeline::sample_slat(
            &self.view_slat_stage(&held, &params.formats)?,
            &samplers.slat,
            &encoded.features,
            &stage1,
            slat_noise,
            control,
            registration,
        )?;
        self.release(held)?;
        let cameras = if requested || registered.is_some() {
            self.registered_cameras(registered)
        } else {
            Vec::new()
        };
        Ok(Generation {
            sparse_structure: stage1,
            slat: stage2,
            view_conditions,
            cameras,
        })
    }

    /// The work that moves VGGT's cameras into the frame of the generated asset (its Gaussian
    /// centres, else its mesh vertices) by registering the `observed` surface
    /// ([`vggt_pipeline::observed_surface`], None without cameras or a point head) onto it, for
    /// the decoders to run (alongside the mesh decoder, on CUDA); it leaves its result in
    /// `registered`. None when there is nothing to register (logged when there are cameras but
    /// no point head; a failed extraction is left in `registered`).
    fn camera_registration<'w>(
        &self,
        encoded: &vggt_pipeline::EncodedViews,
        observed: Option<Result<tch::Tensor>>,
        registered: &'w mut Option<Result<(Vec<Camera>, Registration)>>,
    ) -> Option<slat::AssetPointsWork<'w>> {
        if encoded.cameras.is_empty() {
            return None;
        }
        let observed = match observed {
            Some(Ok(observed)) => observed,
            Some(Err(e)) => {
                *registered = Some(Err(e));
                return None;
            }
            None => {
                (self.log)(
                    LogLevel::Warn,
                    "VGGT has no point head: the cameras cannot be placed in the asset's frame \
                     and are left out",
                );
                return None;
            }
        };
        let cameras = encoded.cameras.clone();
        Some(Box::new(move |points: tch::Tensor| {
            let _scope = crate::profiler::scope("camera registration");
            *registered = Some(vggt_pipeline::cameras_in_asset_frame(
                &cameras, &observed, &points,
            ));
        }))
    }

    /// The cameras [`Pipeline::camera_registration`] placed, logging how well they fit; none
    /// (logged) when the registration failed or had no asset points (`registered` stayed
    /// None). A registration that cannot be done gives no cameras rather than cameras in
    /// another frame.
    fn registered_cameras(
        &self,
        registered: Option<Result<(Vec<Camera>, Registration)>>,
    ) -> Vec<Camera> {
        let log = self.log.as_ref();
        match registered {
            Some(Ok((cameras, registration))) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "cameras registered onto the asset: scale {:.4}, {:.0} % of VGGT's \
                         points within reach, rms {:.4}",
                        registration.similarity.scale,
                        100.0 * registration.inlier_fraction,
                        registration.rms
                    ),
                );
                cameras
            }
            Some(Err(e)) => {
                log(
                    LogLevel::Warn,
                    &format!("the cameras could not be registered onto the asset: {e}"),
                );
                Vec::new()
            }
            None => {
                log(
                    LogLevel::Warn,
                    "the cameras could not be registered onto the asset: the run decoded no \
                     Gaussians or mesh",
                );
                Vec::new()
            }
        }
    }

    /// The pipeline keys of TRELLIS-VGGT's stages: the view encoders, the sparse structure
    /// and the structured latent with the decoders `formats` asks for.
    fn view_stage_keys(
        &self,
        formats: &Formats,
    ) -> (Vec<&'static str>, Vec<&'static str>, Vec<&'static str>) {
        let encoders = vec![vggt_pipeline::VGGT_MODEL_KEY, IMAGE_COND_MODEL_KEY];
        let sparse_structure = vec![
            vggt_pipeline::SPARSE_STRUCTURE_VGGT_COND,
            trellis::SPARSE_STRUCTURE_FLOW_MODEL,
            trellis::SPARSE_STRUCTURE_DECODER,
        ];
        let mut slat_keys = vec![vggt_pipeline::SLAT_VGGT_COND];
        slat_keys.extend(self.slat_keys(formats));
        (encoders, sparse_structure, slat_keys)
    }

    /// Holds every network a TRELLIS-VGGT run with `formats` needs after its encoders (both
    /// stages at once, whatever the residency mode): for running the stages on given
    /// features, as [`vggt_pipeline::generate_from_features`] does.
    pub fn hold_conditioned(&self, formats: &Formats) -> Result<Held<'_>> {
        let (_, mut keys, slat_keys) = self.view_stage_keys(formats);
        keys.extend(slat_keys);
        self.require_all(&keys)?;
        self.hold(&keys)
    }

    /// The TRELLIS-VGGT networks after the view encoders, with the decoders `formats` needs,
    /// from `held` ([`Pipeline::hold_conditioned`]).
    pub fn conditioned_networks<'h>(
        &'h self,
        held: &'h Held<'_>,
        formats: &Formats,
    ) -> Result<vggt_pipeline::ConditionedNetworks<'h>> {
        Ok(vggt_pipeline::ConditionedNetworks {
            sparse_structure: self.view_sparse_structure_stage(held)?,
            slat: self.view_slat_stage(held, formats)?,
        })
    }

    fn view_sparse_structure_stage<'h>(
        &self,
        held: &'h Held<'_>,
    ) -> Result<vggt_pipeline::SparseStructureStage<'h>> {
        Ok(vggt_pipeline::SparseStructureStage {
            ss_cond: self.concrete::<ModulatedMultiViewCond>(
                held,
                vggt_pipeline::SPARSE_STRUCTURE_VGGT_COND,
            )?,
            flow: self.runnable(held, trellis::SPARSE_STRUCTURE_FLOW_MODEL)?,
            flow_config: self.flow_config()?,
            decoder: self.runnable(held, trellis::SPARSE_STRUCTURE_DECODER)?,
            device: self.device,
        })
    }

    fn view_slat_stage<'h>(
        &'h self,
        held: &'h Held<'_>,
        formats: &Formats,
    ) -> Result<vggt_pipeline::SlatStage<'h>> {
        Ok(vggt_pipeline::SlatStage {
            slat_cond: self
                .concrete::<ModulatedSLATMultiViewCond>(held, vggt_pipeline::SLAT_VGGT_COND)?,
            slat: self.slat_networks(held, formats)?,
        })
    }

    /// Both samplers of a run: pipeline.json's with the run's overrides and guidance formula.
    pub fn samplers(&self, params: &RunParams) -> Result<Samplers> {
        Ok(Samplers {
            sparse_structure: self
                .sparse_structure_sampler(self.guidance_formula(params)?, params)?,
            slat: self.slat_sampler(params)?,
        })
    }

    /// Stage 1 of [`Pipeline::run`]: preprocessing, DINOv2 conditioning, sparse-structure
    /// sampling from the noise of `params.seed` (drawn as the reference draws it, so a seed
    /// gives the same voxels as the reference) and decoding to the occupied voxels.
    pub fn run_sparse_structure(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        control: &RunControl<'_>,
    ) -> Result<SparseStructureOutput> {
        self.sparse_structure(images, params, NoiseSource::Seed(params.seed), control)
    }

    /// [`Pipeline::run_sparse_structure`] from the given initial noise
    /// `[1, in_channels, R, R, R]` instead of the seed's (replays and tests).
    pub fn run_sparse_structure_from_noise(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        noise: &tch::Tensor,
        control: &RunControl<'_>,
    ) -> Result<SparseStructureOutput> {
        self.sparse_structure(images, params, NoiseSource::Given(noise), control)
    }

    fn sparse_structure(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        noise: NoiseSource<'_>,
        control: &RunControl<'_>,
    ) -> Result<SparseStructureOutput> {
        validate_views(images)?;
        params.validate()?;
        control.check_cancelled()?;
        control.progress(Stage::Preprocess, 0, images.len())?;
        if self.name() == TRELLIS_VGGT_TO_3D {
            return Err(Error::unsupported(
                "TrellisVGGTTo3DPipeline conditions the sparse structure on all views through \
                 VGGT: run the whole pipeline (run / generate), not stage 1 alone",
            ));
        }
        let cut = self.cut_out_backgrounds(images, params, Variant::Trellis, control)?;
        let images = &cut.views(images);
        let guidance = self.guidance_formula(params)?;
        let sampler = self.sparse_structure_sampler(guidance, params)?;
        let keys = [
            IMAGE_COND_MODEL_KEY,
            trellis::SPARSE_STRUCTURE_FLOW_MODEL,
            trellis::SPARSE_STRUCTURE_DECODER,
        ];
        self.require_all(&keys)?;
        let held = self.hold(&keys)?;
        let networks = self.sparse_structure_networks(&held)?;
        let output =
            trellis::run_sparse_structure(&networks, &sampler, images, params, noise, control)?;
        self.release(held)?;
        Ok(output)
    }

    /// How the samplers guide: the run's choice, else the pipeline class's own code (TRELLIS:
    /// `(1 + s)·v_pos − s·v_neg`; ReconViaGen v0.2: `w·v_pos + (1 − w)·v_neg` with guidance
    /// rescale).
    fn guidance_formula(&self, params: &RunParams) -> Result<GuidanceFormula> {
        if let Some(formula) = params.guidance {
            return Ok(formula);
        }
        match self.name() {
            TRELLIS_IMAGE_TO_3D => Ok(GuidanceFormula::Trellis),
            TRELLIS_VGGT_TO_3D => Ok(GuidanceFormula::ReconViaGen),
            other => Err(Error::internal(format!("no guidance formula for {other}"))),
        }
    }

    /// pipeline.json's `sparse_structure_sampler` with the run's overrides.
    fn sparse_structure_sampler(
        &self,
        guidance: GuidanceFormula,
        params: &RunParams,
    ) -> Result<SamplerConfig> {
        let entry = self
            .config()
            .sparse_structure_sampler
            .as_ref()
            .ok_or_else(|| {
                Error::format(format!(
                    "{}: `args.sparse_structure_sampler` is missing",
                    self.resolved.pipeline_json.display()
                ))
            })?;
        SamplerConfig::from_pipeline(entry, guidance)
            .context(format!(
                "{}: `args.sparse_structure_sampler`",
                self.resolved.pipeline_json.display()
            ))?
            .with_overrides(&params.sparse_structure)
    }

    /// The SS flow checkpoint's args (the noise shape comes from them).
    fn flow_config(&self) -> Result<SparseStructureFlowConfig> {
        let flow = self.stage_network(trellis::SPARSE_STRUCTURE_FLOW_MODEL)?;
        serde_json::from_value(flow.args.clone()).map_err(|e| {
            Error::format(format!("model '{}': args of {}: {e}", flow.key, flow.class))
        })
    }

    fn sparse_structure_networks<'h>(
        &self,
        held: &'h Held<'_>,
    ) -> Result<SparseStructureNetworks<'h>> {
        Ok(SparseStructureNetworks {
            image_cond_model: self.runnable(held, IMAGE_COND_MODEL_KEY)?,
            flow: self.runnable(held, trellis::SPARSE_STRUCTURE_FLOW_MODEL)?,
            flow_config: self.flow_config()?,
            decoder: self.runnable(held, trellis::SPARSE_STRUCTURE_DECODER)?,
            device: self.device,
        })
    }

    /// pipeline.json's `slat_sampler` with the run's overrides.
    fn slat_sampler(&self, params: &RunParams) -> Result<SamplerConfig> {
        let guidance = self.guidance_formula(params)?;
        let entry = self.config().slat_sampler.as_ref().ok_or_else(|| {
            Error::format(format!(
                "{}: `args.slat_sampler` is missing",
                self.resolved.pipeline_json.display()
            ))
        })?;
        SamplerConfig::from_pipeline(entry, guidance)
            .context(format!(
                "{}: `args.slat_sampler`",
                self.resolved.pipeline_json.display()
            ))?
            .with_overrides(&params.slat)
    }

    /// The stage-2 keys: the flow model and the decoders `formats` asks for.
    fn slat_keys(&self, formats: &Formats) -> Vec<&'static str> {
        let mut keys = vec![slat::SLAT_FLOW_MODEL];
        for (wanted, key) in [
            (formats.gaussians, slat::SLAT_DECODER_GS),
            (formats.mesh, slat::SLAT_DECODER_MESH),
            (formats.radiance_field, slat::SLAT_DECODER_RF),
        ] {
            if wanted {
                keys.push(key);
            }
        }
        keys
    }

    /// The stage-2 networks from `held`: the flow model and the decoders `formats` asks for.
    fn slat_networks<'h>(
        &'h self,
        held: &'h Held<'_>,
        formats: &Formats,
    ) -> Result<SlatNetworks<'h>> {
        let normalization = self.config().slat_normalization.as_ref().ok_or_else(|| {
            Error::format(format!(
                "{}: `args.slat_normalization` is missing",
                self.resolved.pipeline_json.display()
            ))
        })?;
        Ok(SlatNetworks {
            flow: self.concrete(held, slat::SLAT_FLOW_MODEL)?,
            gaussian: formats
                .gaussians
                .then(|| self.concrete(held, slat::SLAT_DECODER_GS))
                .transpose()?,
            mesh: formats
                .mesh
                .then(|| self.concrete(held, slat::SLAT_DECODER_MESH))
                .transpose()?,
            radiance_field: formats
                .radiance_field
                .then(|| self.concrete(held, slat::SLAT_DECODER_RF))
                .transpose()?,
            normalization,
            device: self.device,
        })
    }

    /// The classes a stage accepts under pipeline key `key`, as the checkpoint jsons name
    /// them.
    fn classes_of(key: &str) -> &'static [&'static str] {
        match key {
            IMAGE_COND_MODEL_KEY => &[dinov2::DINOV2_CLASS],
            trellis::SPARSE_STRUCTURE_FLOW_MODEL => &[trellis::FLOW_CLASS],
            trellis::SPARSE_STRUCTURE_DECODER => &[trellis::DECODER_CLASS],
            slat::SLAT_FLOW_MODEL => SLAT_FLOW_CLASSES,
            slat::SLAT_DECODER_GS => &["SLatGaussianDecoder"],
            slat::SLAT_DECODER_MESH => &["SLatMeshDecoder"],
            slat::SLAT_DECODER_RF => &["SLatRadianceFieldDecoder"],
            vggt_pipeline::SPARSE_STRUCTURE_VGGT_COND => &[vggt_pipeline::SS_COND_CLASS],
            vggt_pipeline::SLAT_VGGT_COND => &[vggt_pipeline::SLAT_COND_CLASS],
            vggt_pipeline::VGGT_MODEL_KEY => &[VGGT_CLASS],
            _ => &[],
        }
    }

    /// Checks that every network of `keys` is loaded with a class its stage takes and is one
    /// recon runs; errors say why not.
    fn require_all(&self, keys: &[&str]) -> Result<()> {
        for key in keys {
            let loaded = self.stage_network(key)?;
            if !loaded.is_implemented() {
                return Err(Error::unsupported(format!(
                    "network '{key}' ({}) is not implemented in this build of recon",
                    loaded.class
                )));
            }
        }
        Ok(())
    }

    /// The networks of `keys` for one stage: the resident ones, or (low-VRAM mode) built on
    /// the device now. Keys the pipeline lacks are skipped; [`Pipeline::require_all`] names
    /// them.
    pub fn hold(&self, keys: &[&str]) -> Result<Held<'_>> {
        let mut held = Held::default();
        for key in keys {
            let Some(loaded) = self.networks.iter().find(|n| n.key == *key) else {
                continue;
            };
            match (&loaded.network, &loaded.source) {
                (Some(network), _) => held.insert(key, NetworkRef::Resident(network.as_ref())),
                (None, Some(source)) => {
                    let network = source
                        .build(self.device)
                        .context(format!("building '{key}' for this stage"))?;
                    held.insert(key, NetworkRef::Built(network));
                }
                (None, None) => {}
            }
        }
        Ok(held)
    }

    /// Ends a stage: frees the networks built for it and, in low-VRAM mode, returns the
    /// memory to the driver.
    fn release(&self, held: Held<'_>) -> Result<()> {
        let built = held.built_any();
        drop(held);
        if built && self.low_vram && self.device.is_cuda() {
            crate::cuda::memory::empty_cache()?;
        }
        Ok(())
    }

    /// The network under `key` in `held` as its Rust type.
    fn concrete<'h, T: 'static>(&self, held: &'h Held<'_>, key: &str) -> Result<&'h T> {
        let loaded = self.stage_network(key)?;
        held.concrete::<T>(key, &loaded.class)
    }

    /// The network under `key` in `held`.
    fn runnable<'h>(&self, held: &'h Held<'_>, key: &str) -> Result<&'h dyn Network> {
        let loaded = self.stage_network(key)?;
        held.get(key).ok_or_else(|| {
            Error::unsupported(format!(
                "network '{key}' ({}) is not implemented in this build of recon",
                loaded.class
            ))
        })
    }

    /// The loaded network under `key` with a class its stage takes; errors say why it is not
    /// there (pipeline.json lacks it, `only_models` left it out, another class).
    fn stage_network(&self, key: &str) -> Result<&LoadedNetwork> {
        let classes = Self::classes_of(key);
        let class = classes.join(" or ");
        let Some(loaded) = self.networks.iter().find(|n| n.key == key) else {
            let named = if key == IMAGE_COND_MODEL_KEY {
                self.config().image_cond_model.is_some()
            } else if key == vggt_pipeline::VGGT_MODEL_KEY {
                self.name() == TRELLIS_VGGT_TO_3D
            } else {
                self.config().models.contains_key(key)
            };
            return Err(if named {
                Error::invalid_argument(format!(
                    "network '{key}' was not loaded (LoadOptions::only_models left it out), \
                     and this stage needs it"
                ))
            } else {
                Error::format(format!(
                    "{}: names no '{key}' ({class}), which {} needs",
                    self.resolved.pipeline_json.display(),
                    self.name()
                ))
            });
        };
        if !classes.contains(&loaded.class.as_str()) {
            return Err(Error::format(format!(
                "network '{key}' is a {}, but {} needs a {class} there",
                loaded.class,
                self.name()
            )));
        }
        Ok(loaded)
    }
}

/// Background removal (issue 10): BiRefNet on the views that need it, loaded on first need.
impl Pipeline {
    /// The run's views with backgrounds removed where `params.remove_background` says so (see
    /// [`background`]); views are validated first.
    fn cut_out_backgrounds(
        &self,
        images: &[ImageInput<'_>],
        params: &RunParams,
        variant: Variant,
        control: &RunControl<'_>,
    ) -> Result<background::CutOuts> {
        validate_views(images)?;
        self.background
            .cut_out(images, params, variant, self.device, control)
    }

    /// Whether background removal's model has been loaded (it is, from the first run that
    /// needed it on).
    pub fn background_model_loaded(&self) -> bool {
        self.background.is_loaded()
    }
}

/// "cpu" or "cuda:N", as the CLI's --device takes it.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".to_string(),
    }
}

fn load_one(files: &hub::ModelFiles, device: Device, log: &LogFn) -> Result<LoadedNetwork> {
    let config = hub::read_checkpoint_config(&files.config)?;
    if !models::is_known(&config.class) {
        return Err(Error::format(format!(
            "{}: unknown network class '{}'",
            files.config.display(),
            config.class
        )));
    }
    let (network, num_elements) = if models::is_implemented(&config.class) {
        let (network, weights) = models::load_network(&files.config, &files.weights, device)?;
        weights.report_unused(log);
        let elements = crate::weights::SafeTensorsFile::open(&files.weights)?.num_elements();
        (Some(network), elements)
    } else {
        // Not runnable yet: still prove the files are sound, so load errors surface now.
        let file = crate::weights::SafeTensorsFile::open(&files.weights)?;
        log(
            LogLevel::Info,
            &format!(
                "{}: {} is not implemented yet; checkpoint validated ({} tensors)",
                files.key,
                config.class,
                file.len()
            ),
        );
        (None, file.num_elements())
    };
    let source = network.as_ref().map(|_| NetworkSource::Checkpoint {
        config: files.config.clone(),
        weights: files.weights.clone(),
    });
    Ok(LoadedNetwork {
        key: files.key.clone(),
        stem: files.stem.clone(),
        class: config.class,
        num_elements,
        network,
        source,
        args: config.args,
    })
}

/// Loads the image encoder pipeline.json names: a checkpoint stem inside the model (already
/// resolved with the other models), or a torch.hub name fetched from its published Hub repo.
fn load_image_cond_model(
    name: &str,
    resolved: &ResolvedPipeline,
    device: Device,
    opts: &ResolveOptions<'_>,
) -> Result<LoadedNetwork> {
    let log = opts.log;
    let (network, weights_path, args, source): (Box<dyn Network>, _, _, _) = match &resolved
        .image_cond_model
    {
        Some(files) => {
            let config = hub::read_checkpoint_config(&files.config)?;
            if config.class != dinov2::DINOV2_CLASS {
                return Err(Error::format(format!(
                    "{}: image_cond_model must be a {}, found class '{}'",
                    files.config.display(),
                    dinov2::DINOV2_CLASS,
                    config.class
                )));
            }
            let (network, weights) = models::load_network(&files.config, &files.weights, device)?;
            weights.report_unused(log);
            let source = NetworkSource::Checkpoint {
                config: files.config.clone(),
                weights: files.weights.clone(),
            };
            (network, files.weights.clone(), config.args, source)
        }
        None => {
            let files = dinov2::resolve_image_cond_model(name, opts)?;
            let network = Dinov2::load_published(&files, device)?;
            let args = hub::read_json_file(&files.config)?;
            let weights = files.weights.clone();
            (
                Box::new(network),
                weights,
                args,
                NetworkSource::PublishedDinov2(files),
            )
        }
    };
    let num_elements = crate::weights::SafeTensorsFile::open(&weights_path)?.num_elements();
    log(
        LogLevel::Info,
        &format!(
            "{IMAGE_COND_MODEL_KEY}: {} from {}",
            dinov2::DINOV2_CLASS,
            weights_path.display()
        ),
    );
    Ok(LoadedNetwork {
        key: IMAGE_COND_MODEL_KEY.to_string(),
        stem: name.to_string(),
        class: dinov2::DINOV2_CLASS.to_string(),
        num_elements,
        network: Some(network),
        source: Some(source),
        args,
    })
}

/// The class name VGGT is listed under among a pipeline's networks.
pub const VGGT_CLASS: &str = "VGGT";

/// Loads VGGT for TRELLIS-VGGT from `source`: a local folder, or a Hub repo whose
/// `config.json` and `model.safetensors` are fetched like the other models (cache, offline
/// mode, revision). Mixed precision as the reference on CUDA (bf16 aggregator).
fn load_vggt_model(
    source: &str,
    device: Device,
    opts: &ResolveOptions<'_>,
) -> Result<LoadedNetwork> {
    let local = std::path::Path::new(source);
    let files = if local.is_dir() {
        VggtFiles::in_dir(local)
    } else {
        let paths = hub::fetch_repo_files(source, &[VGGT_CONFIG_FILE, VGGT_WEIGHTS_FILE], opts)?;
        match <[std::path::PathBuf; 2]>::try_from(paths) {
            Ok([config, weights]) => VggtFiles { config, weights },
            Err(_) => {
                return Err(Error::internal(
                    "fetch_repo_files returned the wrong number of paths",
                ))
            }
        }
    };
    let network = Vggt::load(&files, device, VggtPrecision::reference(device))?;
    let num_elements = crate::weights::SafeTensorsFile::open(&files.weights)?.num_elements();
    let args = hub::read_json_file(&files.config)?;
    (opts.log)(
        LogLevel::Info,
        &format!(
            "{}: VGGT from {}",
            vggt_pipeline::VGGT_MODEL_KEY,
            files.weights.display()
        ),
    );
    Ok(LoadedNetwork {
        key: vggt_pipeline::VGGT_MODEL_KEY.to_string(),
        stem: source.to_string(),
        class: VGGT_CLASS.to_string(),
        num_elements,
        network: Some(Box::new(network)),
        source: Some(NetworkSource::Vggt(files)),
        args,
    })
}

/// The pipeline keys of the decoders `formats` does not need.
fn unused_decoders(formats: Formats) -> Vec<&'static str> {
    [
        (formats.gaussians, slat::SLAT_DECODER_GS),
        (formats.mesh, slat::SLAT_DECODER_MESH),
        (formats.radiance_field, slat::SLAT_DECODER_RF),
    ]
    .into_iter()
    .filter(|&(wanted, _)| !wanted)
    .map(|(_, key)| key)
    .collect()
}

/// One input view.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// An encoded PNG, JPEG or WebP file.
    Encoded(&'a [u8]),
    /// Raw 8-bit pixels, rows `stride` bytes apart, `channels` 3 (RGB) or 4 (RGBA).
    Pixels {
        data: &'a [u8],
        width: u32,
        height: u32,
        stride: usize,
        channels: u32,
    },
}

fn validate_views(images: &[ImageInput<'_>]) -> Result<()> {
    if images.is_empty() {
        return Err(Error::invalid_argument(
            "no input images: give at least one view",
        ));
    }
    if images.len() > MAX_VIEWS {
        return Err(Error::invalid_argument(format!(
            "{} views given; at most {MAX_VIEWS} are accepted",
            images.len()
        )));
    }
    for (index, image) in images.iter().enumerate() {
        crate::image::validate(image).context(format!("image {index}"))?;
    }
    Ok(())
}

/// How several views are combined (the reference's `run_multi_image` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiImageMode {
    /// Each sampler step uses one view's condition, cycling through the views.
    Stochastic,
    /// The velocity is averaged over all views' conditions at every step.
    Multidiffusion,
}

/// Which representations to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub gaussians: bool,
    pub mesh: bool,
    pub radiance_field: bool,
}

/// Sampler overrides for one stage; None keeps pipeline.json's value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplerOverrides {
    pub steps: Option<u32>,
    pub cfg_strength: Option<f32>,
}

/// Generation parameters (the reference's `run` / `run_multi_image` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct RunParams {
    pub seed: u64,
    pub sparse_structure: SamplerOverrides,
    pub slat: SamplerOverrides,
    pub formats: Formats,
    pub mode: MultiImageMode,
    /// Crop and resize the inputs as the reference does (false: already 518×518 and centred).
    pub preprocess: bool,
    /// The guidance formula of both samplers (None: the pipeline's own — TRELLIS's for
    /// TRELLIS, ReconViaGen v0.2's for TRELLIS-VGGT; `Trellis` on TRELLIS-VGGT gives the
    /// Hugging Face Space variant, which also drops the guidance rescale).
    pub guidance: Option<GuidanceFormula>,
    /// Remove the background of views without a useful alpha channel (Auto, the reference's
    /// rule: RGB, or RGBA whose alpha is 255 everywhere), of every view (Always) or of none
    /// (Never: such views are refused). Only when `preprocess` is on, as in the reference.
    pub remove_background: BackgroundRemoval,
    /// TRELLIS-VGGT: estimate a camera per view (VGGT's camera and point heads, then their
    /// registration onto the asset), as ReconViaGen's fine mode does. Off, the run is exactly
    /// the reference pipeline's `run` (the aggregator's layers feed the condition networks,
    /// nothing else of VGGT runs) and the generation has no cameras. TRELLIS estimates none.
    pub estimate_cameras: bool,
}

impl Default for RunParams {
    fn default() -> Self {
        Self {
            seed: 42,
            sparse_structure: SamplerOverrides::default(),
            slat: SamplerOverrides::default(),
            formats: Formats {
                gaussians: true,
                mesh: true,
                radiance_field: false,
            },
            mode: MultiImageMode::Stochastic,
            preprocess: true,
            guidance: None,
            remove_background: BackgroundRemoval::Auto,
            estimate_cameras: true,
        }
    }
}

/// Most sampler steps accepted (the reference uses 12–50).
pub const MAX_STEPS: u32 = 1000;

impl RunParams {
    pub fn validate(&self) -> Result<()> {
        for (stage, s) in [
            ("sparse-structure", &self.sparse_structure),
            ("slat", &self.slat),
        ] {
            if let Some(steps) = s.steps {
                if steps == 0 || steps > MAX_STEPS {
                    return Err(Error::invalid_argument(format!(
                        "{stage} sampler steps must be 1..={MAX_STEPS}, got {steps}"
                    )));
                }
            }
            if let Some(cfg) = s.cfg_strength {
                if !cfg.is_finite() || !(0.0..=100.0).contains(&cfg) {
                    return Err(Error::invalid_argument(format!(
                        "{stage} cfg_strength must be a finite number in 0..=100, got {cfg}"
                    )));
                }
            }
        }
        let f = self.formats;
        if !(f.gaussians || f.mesh || f.radiance_field) {
            return Err(Error::invalid_argument(
                "no output format requested: ask for Gaussians, a mesh or a radiance field",
            ));
        }
        Ok(())
    }
}

/// Pipeline stages, as reported to progress callbacks (numbers are the C ABI's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Stage {
    Preprocess = 1,
    Condition = 2,
    SparseStructure = 3,
    StructuredLatent = 4,
    Decode = 5,
    Export = 6,
}

/// Progress callback: (stage, step, total) → false to cancel.
pub type ProgressFn<'a> = dyn Fn(Stage, usize, usize) -> bool + 'a;

/// Cancellation and progress for one run.
pub struct RunControl<'a> {
    pub cancel: Option<&'a AtomicBool>,
    pub progress: Option<&'a ProgressFn<'a>>,
}

impl RunControl<'_> {
    pub fn none() -> Self {
        Self {
            cancel: None,
            progress: None,
        }
    }

    pub fn check_cancelled(&self) -> Result<()> {
        match self.cancel {
            Some(flag) if flag.load(Ordering::SeqCst) => {
                Err(Error::cancelled("run cancelled by recon_cancel"))
            }
            _ => Ok(()),
        }
    }

    /// Reports progress; a callback returning false cancels the run.
    pub fn progress(&self, stage: Stage, step: usize, total: usize) -> Result<()> {
        self.check_cancelled()?;
        match self.progress {
            Some(callback) if !callback(stage, step, total) => {
                Err(Error::cancelled("run cancelled by the progress callback"))
            }
            _ => Ok(()),
        }
    }
}

/// 3D Gaussians, activated as the reference's `get_*` properties return them.
#[derive(Debug, Clone, Default)]
pub struct Gaussians {
    /// `[N, 3]` centres.
    pub xyz: Vec<f32>,
    /// `[N, 3]` SH degree-0 colour coefficients.
    pub features_dc: Vec<f32>,
    /// `[N, 3]` scales.
    pub scaling: Vec<f32>,
    /// `[N, 4]` unit quaternions (w, x, y, z).
    pub rotation: Vec<f32>,
    /// `[N]` opacities in 0..1.
    pub opacity: Vec<f32>,
}

impl Gaussians {
    pub fn len(&self) -> usize {
        self.opacity.len()
    }
    pub fn is_empty(&self) -> bool {
        self.opacity.is_empty()
    }
}

/// A triangle mesh.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    /// `[V, 3]` positions.
    pub positions: Vec<f32>,
    /// `[V, 3]` vertex colours in 0..1 (empty when the decoder has none).
    pub colors: Vec<f32>,
    /// `[F, 3]` vertex indices.
    pub indices: Vec<u32>,
}

/// A camera, OpenCV convention, camera-from-world.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Camera {
    /// 3×4 row-major `[R | t]`.
    pub extrinsic: [f32; 12],
    /// 3×3 row-major intrinsics in pixels.
    pub intrinsic: [f32; 9],
    pub width: u32,
    pub height: u32,
}

/// What one run produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub gaussians: Option<Gaussians>,
    pub mesh: Option<Mesh>,
    pub cameras: Vec<Camera>,
}

/// Where a generation's noise comes from.
pub enum GenerationNoise {
    /// Drawn from `RunParams::seed` as the reference draws it.
    Seed,
    /// Given: the sparse-structure noise `[1, C, R, R, R]` and the structured-latent noise
    /// `[N, C]` (N must be the number of voxels stage 1 finds).
    Given {
        sparse_structure: tch::Tensor,
        slat: tch::Tensor,
    },
}

impl GenerationNoise {
    /// Where each stage's noise comes from: both from `seed`, or both given.
    fn sources(&self, seed: u64) -> (NoiseSource<'_>, NoiseSource<'_>) {
        match self {
            Self::Seed => (NoiseSource::Seed(seed), NoiseSource::Seed(seed)),
            Self::Given {
                sparse_structure,
                slat,
            } => (
                NoiseSource::Given(sparse_structure),
                NoiseSource::Given(slat),
            ),
        }
    }
}

/// Parts of a generation replaced by the caller (see [`Pipeline::generate_with_overrides`]).
#[derive(Default)]
pub struct GenerationOverrides {
    /// The occupied voxels the structured latent is sampled on, instead of those stage 1
    /// decodes: `[M, 4]` integers `(batch 0, x, y, z)` inside the decoder's grid. Benchmarks
    /// use it to give both implementations the same realistic surface (random-weight decoders
    /// scatter voxels through the volume). Stage 1 still runs in full; its `coords` are
    /// replaced, its logits kept.
    pub voxels: Option<tch::Tensor>,
}

impl GenerationOverrides {
    /// Replaces `stage1.coords` by the given voxels after checking them against its grid.
    fn apply(&self, stage1: &mut SparseStructureOutput) -> Result<()> {
        if let Some(voxels) = &self.voxels {
            let grid = stage1.logits.size().last().copied().unwrap_or(0);
            stage1.coords = checked_voxels(voxels, grid)?.f_to_device(stage1.coords.device())?;
        }
        Ok(())
    }
}

/// `voxels` as int32 `[M, 4]` after checking that it is one batch element's voxels inside a
/// `grid`³ volume, without duplicates (the sparse tensor's kernel maps assume unique sites).
fn checked_voxels(voxels: &tch::Tensor, grid: i64) -> Result<tch::Tensor> {
    let size = voxels.size();
    if size.len() != 2 || size[1] != 4 || size[0] == 0 || voxels.is_floating_point() {
        return Err(Error::invalid_argument(format!(
            "voxel override must be a non-empty integer tensor [M, 4] (batch, x, y, z), got {:?} {size:?}",
            voxels.kind()
        )));
    }
    let voxels = voxels
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(tch::Kind::Int)?;
    let batch = voxels.f_select(1, 0)?;
    let xyz = voxels.f_narrow(1, 1, 3)?;
    let outside = xyz.f_lt(0)?.f_logical_or(&xyz.f_ge(grid)?)?;
    if batch.f_ne(0)?.f_any()?.int64_value(&[]) != 0 || outside.f_any()?.int64_value(&[]) != 0 {
        return Err(Error::invalid_argument(format!(
            "voxel override: every row must be (0, x, y, z) with x, y, z in [0, {grid})"
        )));
    }
    // Duplicates as repeated linear cell indices: a 1-D unique (libtorch's row-wise
    // `unique_dim` compares rows one pair at a time, ~0.2 s for 20k voxels).
    let cells = xyz.f_to_kind(tch::Kind::Int64)?;
    let linear = cells
        .f_select(1, 0)?
        .f_mul_scalar(grid * grid)?
        .f_add(&cells.f_select(1, 1)?.f_mul_scalar(grid)?)?
        .f_add(&cells.f_select(1, 2)?)?;
    let (unique, _, _) = linear.f_internal_unique2(false, false, false)?;
    if unique.size()[0] != size[0] {
        return Err(Error::invalid_argument(format!(
            "voxel override: {} of its {} voxels are duplicates",
            size[0] - unique.size()[0],
            size[0]
        )));
    }
    Ok(voxels)
}

/// Everything one generation computed (see [`Pipeline::generate`]).
pub struct Generation {
    pub sparse_structure: SparseStructureOutput,
    pub slat: SlatOutput,
    /// TRELLIS-VGGT: the per-view structured-latent conditions `[1, T, 1024]` (empty for
    /// TRELLIS, whose condition is `sparse_structure.cond`).
    pub view_conditions: Vec<tch::Tensor>,
    /// TRELLIS-VGGT: one camera per input view (empty for TRELLIS).
    pub cameras: Vec<Camera>,
}

impl Generation {
    /// The first (only) sample's Gaussians and mesh as flat arrays.
    pub fn to_output(&self) -> Result<Output> {
        let gaussians = self
            .slat
            .gaussians
            .first()
            .map(gaussians_output)
            .transpose()?;
        let mesh = self.slat.meshes.first().map(mesh_output).transpose()?;
        Ok(Output {
            gaussians,
            mesh,
            cameras: self.cameras.clone(),
        })
    }
}

/// A float tensor's values in row-major order (on the CPU, as float32).
fn to_vec_f32(t: &tch::Tensor) -> Result<Vec<f32>> {
    let flat = t
        .f_to_kind(tch::Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_reshape([-1])?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

fn gaussians_output(g: &crate::representations::gaussian::Gaussian) -> Result<Gaussians> {
    let count = g.len();
    Ok(Gaussians {
        xyz: to_vec_f32(&g.get_xyz()?)?,
        features_dc: to_vec_f32(&g.get_features()?.f_reshape([count, 3])?)?,
        scaling: to_vec_f32(&g.get_scaling()?)?,
        rotation: to_vec_f32(&g.get_rotation()?)?,
        opacity: to_vec_f32(&g.get_opacity()?)?,
    })
}

fn mesh_output(m: &crate::representations::mesh::MeshExtractResult) -> Result<Mesh> {
    let positions = to_vec_f32(&m.vertices)?;
    let faces = m
        .faces
        .f_to_kind(tch::Kind::Int64)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_reshape([-1])?;
    let indices = Vec::<i64>::try_from(&faces)?
        .into_iter()
        .map(|i| {
            u32::try_from(i)
                .map_err(|_| Error::internal(format!("mesh vertex index {i} out of u32 range")))
        })
        .collect::<Result<Vec<u32>>>()?;
    // TRELLIS's colour channels are the first three vertex attributes (the rest are normals).
    let colors = match &m.vertex_attrs {
        Some(attrs) if attrs.size().get(1).is_some_and(|&c| c >= 3) => {
            to_vec_f32(&attrs.f_narrow(1, 0, 3)?)?
        }
        _ => Vec::new(),
    };
    Ok(Mesh {
        positions,
        colors,
        indices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::validate_pixels;

    #[test]
    fn voxel_overrides_are_checked() {
        let rows = |v: &[i32]| tch::Tensor::from_slice(v).reshape([-1, 4]);
        let good = rows(&[0, 1, 2, 3, 0, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(checked_voxels(&good, 4).unwrap().size(), vec![3, 4]);
        let duplicate = rows(&[0, 1, 2, 3, 0, 0, 0, 0, 0, 1, 2, 3]);
        let err = checked_voxels(&duplicate, 4).unwrap_err();
        assert!(
            err.to_string().contains("1 of its 3 voxels are duplicates"),
            "{err}"
        );
        assert!(checked_voxels(&rows(&[0, 4, 0, 0]), 4).is_err());
        assert!(checked_voxels(&rows(&[1, 0, 0, 0]), 4).is_err());
        // (x, y, z) and its permutations are different cells.
        let permuted = rows(&[0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert!(checked_voxels(&permuted, 4).is_ok());
    }

    #[test]
    fn raw_pixel_validation_names_the_problem() {
        let data = vec![0u8; 4 * 4 * 3];
        assert!(validate_pixels(&data, 4, 4, 12, 3).is_ok());
        let err = validate_pixels(&data, 4, 4, 11, 3).unwrap_err();
        assert!(err.message().contains("stride 11"), "{err}");
        let err = validate_pixels(&data, 4, 5, 12, 3).unwrap_err();
        assert!(err.message().contains("needs 60"), "{err}");
        let err = validate_pixels(&data, 4, 4, 12, 2).unwrap_err();
        assert!(err.message().contains("got 2"), "{err}");
        let err = validate_pixels(&data, 0, 4, 12, 3).unwrap_err();
        assert!(err.message().contains("0x4"), "{err}");
        let err = validate_pixels(&data, MAX_IMAGE_SIDE + 1, 1, usize::MAX / 2, 3).unwrap_err();
        assert!(err.message().contains("limit"), "{err}");
    }

    #[test]
    fn run_params_reject_nonsense() {
        let mut p = RunParams::default();
        assert!(p.validate().is_ok());
        p.slat.steps = Some(0);
        assert!(p
            .validate()
            .unwrap_err()
            .message()
            .contains("slat sampler steps"));
        p = RunParams::default();
        p.sparse_structure.cfg_strength = Some(f32::NAN);
        assert!(p.validate().unwrap_err().message().contains("cfg_strength"));
        p = RunParams::default();
        p.formats = Formats {
            gaussians: false,
            mesh: false,
            radiance_field: false,
        };
        assert!(p.validate().is_err());
    }
}
