//! ReconViaGen's `TrellisVGGTTo3DPipeline` (GAP-LAB-CUHK-SZ/ReconViaGen v0.2, weights
//! `Stable-X/trellis-vggt-v0-2`): several photos of one object → TRELLIS's two stages,
//! conditioned on VGGT and DINOv2 features of all views at once (research/reconviagen.md §1).
//!
//! ```text
//! views ─ decode ─ ReconViaGen preprocess (518², RGB zeroed outside alpha > 0.8) ─ RGB / 255
//!   ├─ VGGT aggregator [1, N, 3, 518, 518] → layers 4, 11, 17, 23 [1, N, T, 2048]
//!   │    └─ camera head (4 iterations) → per-view camera-from-world + intrinsics
//!   └─ DINOv2 → image_cond = layer_norm(x_prenorm) [1, N, T, 1024]
//! sparse_structure_vggt_cond(layers, image_cond) → ss_cond [1, 4096, 1024], neg = zeros
//! noise [1, 8, R, R, R]: manual_seed(seed); randn on the CPU
//!   → flow-Euler sampler (ReconViaGen guidance: w·v_pos + (1 − w)·v_neg, rescaled) → z_s
//!   → SparseStructureDecoder → coords = argwhere(logits > 0)
//! slat_vggt_cond(layers, image_cond) → one [1, T, 1024] condition per view, neg = zeros each
//! noise [M, 8]: the generator's next draw → SLat flow (every cross-attention block averages
//!   its output over the views) → slat · std + mean → decoders
//! ```
//!
//! Unlike TRELLIS's `run_multi_image`, the views are fused by the condition networks and the
//! flow's per-view cross-attention, so there is no multi-image mode: the reference accepts a
//! `mode` argument and ignores it, and so does recon.

pub mod camera_registration;

use tch::{Device, Kind, Tensor};

use super::trellis_image_to_3d::slat::{self, SlatNetworks, SlatOutput};
use super::trellis_image_to_3d::{self as trellis, ImageCondition, NoiseSource};
use crate::error::{Error, Result, ResultExt};
use crate::image::Variant;
use crate::models::dinov2::imagenet_normalize;
use crate::models::sparse_structure_flow::multiview_cond::{
    CondLayerTokens, ModulatedMultiViewCond, VGGT_COND_LAYERS,
};
use crate::models::sparse_structure_flow::SparseStructureFlowConfig;
use crate::models::structured_latent_flow::multiview_cond::ModulatedSLATMultiViewCond;
use crate::models::vggt::aggregator::KeepLayers;
use crate::models::vggt::model::{dense_layers, Vggt};
use crate::models::vggt::pose_enc::pose_encoding_to_extri_intri;
use crate::models::{NamedTensors, Network};
use crate::pipeline::{Camera, ImageInput, MultiImageMode, RunControl, RunParams, Stage};
use crate::samplers::{Conditioning, SamplerConfig};

/// The pipeline.json keys of the two condition networks.
pub const SPARSE_STRUCTURE_VGGT_COND: &str = "sparse_structure_vggt_cond";
pub const SLAT_VGGT_COND: &str = "slat_vggt_cond";
/// Their classes, as the checkpoint jsons name them.
pub const SS_COND_CLASS: &str = "ModulatedMultiViewCond";
pub const SLAT_COND_CLASS: &str = "ModulatedSLATMultiViewCond";
/// The VGGT the reference loads: hard-coded in its `from_pretrained`, not in pipeline.json.
pub const VGGT_MODEL_REPO: &str = "Stable-X/vggt-object-v0-1";
/// The key recon lists the VGGT model under among the pipeline's networks.
pub const VGGT_MODEL_KEY: &str = "vggt_model";
/// The camera head's refinement iterations (the reference's default).
pub const CAMERA_HEAD_ITERATIONS: usize = 4;

/// What both condition networks read for N views: the aggregator outputs of
/// [`VGGT_COND_LAYERS`] and the DINOv2 condition tokens.
pub struct ViewFeatures {
    /// Aggregator layers 4, 11, 17, 23, each `[1, N, T, 2048]` float32.
    pub layers: [Tensor; 4],
    /// `layer_norm(x_prenorm)` of DINOv2, `[1, N, T, 1024]` float32 (`[N, T, 1024]` is also
    /// taken, as the reference reshapes it).
    pub image_cond: Tensor,
}

impl ViewFeatures {
    /// The features on `device` (a no-op where they already are).
    pub fn to_device(&self, device: Device) -> Result<Self> {
        let [a, b, c, d] = &self.layers;
        Ok(Self {
            layers: [
                a.f_to_device(device)?,
                b.f_to_device(device)?,
                c.f_to_device(device)?,
                d.f_to_device(device)?,
            ],
            image_cond: self.image_cond.f_to_device(device)?,
        })
    }

    /// The four layers as the condition networks take them.
    pub fn layer_refs(&self) -> CondLayerTokens<'_> {
        let [a, b, c, d] = &self.layers;
        [a, b, c, d]
    }
}

/// The networks of the sparse-structure stage, all on `device`.
pub struct SparseStructureStage<'a> {
    pub ss_cond: &'a ModulatedMultiViewCond,
    pub flow: &'a dyn Network,
    /// The SS flow checkpoint's args (the noise shape comes from them).
    pub flow_config: SparseStructureFlowConfig,
    pub decoder: &'a dyn Network,
    pub device: Device,
}

/// The networks of the structured-latent stage: its condition network, the flow and the
/// decoders of the formats asked for.
pub struct SlatStage<'a> {
    pub slat_cond: &'a ModulatedSLATMultiViewCond,
    pub slat: SlatNetworks<'a>,
}

/// The networks of a TRELLIS-VGGT run after the view encoders.
pub struct ConditionedNetworks<'a> {
    pub sparse_structure: SparseStructureStage<'a>,
    pub slat: SlatStage<'a>,
}

/// The view encoders: VGGT and the DINOv2 image-condition model.
pub struct ViewEncoders<'a> {
    pub vggt: &'a Vggt,
    pub image_cond_model: &'a dyn Network,
    pub device: Device,
}

/// Both stages' samplers, resolved from pipeline.json and the run's overrides.
pub struct Samplers {
    pub sparse_structure: SamplerConfig,
    pub slat: SamplerConfig,
}

/// Where each stage's initial noise comes from (the stage-2 noise, when seeded, is the
/// generator's draw right after the stage-1 noise, as in the reference).
#[derive(Clone, Copy)]
pub struct Noises<'a> {
    pub sparse_structure: NoiseSource<'a>,
    pub slat: NoiseSource<'a>,
}

/// Everything a TRELLIS-VGGT generation computed after the encoders.
pub struct ConditionedGeneration {
    /// Stage 1: `cond` is the SS condition `[1, num_init_tokens, C]`, `neg_cond` its zeros.
    pub sparse_structure: trellis::SparseStructureOutput,
    /// The per-view SLat conditions, each `[1, T, 1024]`.
    pub slat_cond: Vec<Tensor>,
    pub slat: SlatOutput,
}

/// The encoded views of a run.
pub struct EncodedViews {
    pub features: ViewFeatures,
    /// One camera per view in VGGT's frame (see [`cameras_from_pose_encoding`]).
    pub cameras: Vec<Camera>,
    /// VGGT's point maps of the views, to register the cameras onto the asset (None when the
    /// checkpoint has no point head).
    pub point_maps: Option<PointMaps>,
}

/// What VGGT saw of the object, in its frame: per-view point maps and their confidence, with
/// the views' alpha.
pub struct PointMaps {
    /// `[N, H, W, 3]` world points.
    pub world_points: Tensor,
    /// `[N, H, W]` confidence.
    pub conf: Tensor,
    /// `[N, H, W]` alpha of the preprocessed views in 0..1.
    pub alpha: Tensor,
}

impl PointMaps {
    /// The same tensors, shared (for work on another thread).
    pub fn shallow_clone(&self) -> Self {
        Self {
            world_points: self.world_points.shallow_clone(),
            conf: self.conf.shallow_clone(),
            alpha: self.alpha.shallow_clone(),
        }
    }
}

/// Decodes and preprocesses every view as ReconViaGen's app does at upload (when
/// `params.preprocess`), then runs both encoders. Progress: `Preprocess` per view, then
/// `Condition`.
pub fn encode_views(
    encoders: &ViewEncoders<'_>,
    images: &[ImageInput<'_>],
    params: &RunParams,
    control: &RunControl<'_>,
) -> Result<EncodedViews> {
    let scope = crate::profiler::scope("prepare views");
    let (views, alpha) = trellis::prepare_views_with_alpha(
        images,
        params.preprocess,
        Variant::ReconViaGen,
        encoders.device,
        control,
    )?;
    drop(scope);
    control.progress(Stage::Condition, 0, 2)?;
    let (layers, cameras, points) = tch::no_grad(|| {
        vggt_features(
            encoders.vggt,
            &views,
            encoders.device,
            params.estimate_cameras,
        )
    })
    .context("encoding the views with VGGT")?;
    let point_maps = points.map(|(world_points, conf)| PointMaps {
        world_points,
        conf,
        alpha,
    });
    control.progress(Stage::Condition, 1, 2)?;
    let scope = crate::profiler::scope("image_cond_model");
    let image_cond = tch::no_grad(|| image_condition(encoders, &views))
        .context("encoding the views with image_cond_model")?;
    drop(scope);
    control.progress(Stage::Condition, 2, 2)?;
    Ok(EncodedViews {
        features: ViewFeatures { layers, image_cond },
        cameras,
        point_maps,
    })
}

/// The point head's world points `[N, H, W, 3]` and confidence `[N, H, W]`.
type PointHeadOutput = (Tensor, Tensor);

/// `vggt_feat`: the aggregator on all views as one batch `[1, N, 3, H, W]` (0..1 RGB; the
/// aggregator normalises), keeping only the layers the condition networks read. With
/// `with_heads`, also the camera head on the last layer and the point head (as ReconViaGen's
/// app_fine runs them) for the camera registration; without, no cameras and no point maps.
fn vggt_features(
    vggt: &Vggt,
    views: &Tensor,
    device: Device,
    with_heads: bool,
) -> Result<([Tensor; 4], Vec<Camera>, Option<PointHeadOutput>)> {
    let images = views.f_to_device(device)?.f_unsqueeze(0)?;
    let (camera_head, point_head) = if with_heads {
        (vggt.camera_head(), vggt.point_head())
    } else {
        (None, None)
    };
    let mut keep: Vec<usize> = VGGT_COND_LAYERS.to_vec();
    if camera_head.is_some() {
        keep.push(vggt.config().depth.saturating_sub(1));
    }
    if let Some(head) = point_head {
        keep.extend(&head.config().intermediate_layer_idx);
    }
    let scope = crate::profiler::scope("vggt aggregator");
    let aggregated = vggt
        .aggregator()
        .forward(&images, KeepLayers::Only(&keep))?;
    drop(scope);
    let pick =
        |layer: usize| -> Result<Tensor> { Ok(aggregated.layer(layer)?.f_to_kind(Kind::Float)?) };
    let [a, b, c, d] = VGGT_COND_LAYERS;
    let layers = [pick(a)?, pick(b)?, pick(c)?, pick(d)?];
    let cameras = match camera_head {
        Some(head) => {
            let _scope = crate::profiler::scope("vggt camera head");
            let encodings = head.forward(aggregated.last()?, CAMERA_HEAD_ITERATIONS)?;
            let last = encodings
                .last()
                .ok_or_else(|| Error::internal("the camera head returned no iteration"))?;
            let size = images.size();
            cameras_from_pose_encoding(last, size[3], size[4])?
        }
        None => Vec::new(),
    };
    let points = match point_head {
        Some(head) => {
            let _scope = crate::profiler::scope("vggt point head");
            let tokens = dense_layers(&aggregated, device)?;
            let (points, conf) = head.forward(&tokens, &images, aggregated.patch_start_idx)?;
            Some((
                points.f_squeeze_dim(0)?.f_to_kind(Kind::Float)?,
                conf.f_squeeze_dim(0)?.f_to_kind(Kind::Float)?,
            ))
        }
        None => None,
    };
    Ok((layers, cameras, points))
}

/// Most observed points the registration uses (the reference keeps up to 50k for its
/// RANSAC; the geometric search needs far fewer).
pub const REGISTRATION_POINTS: usize = 20_000;

/// The object's surface as VGGT saw it, in its frame: the points of its point maps the
/// registration uses (alpha > 0.8, confident; see [`camera_registration::observed_points`]),
/// `[K, 3]` float32 on the CPU. It depends on the views only, so the pipeline extracts it while
/// the sparse structure is sampled.
pub fn observed_surface(point_maps: &PointMaps) -> Result<Tensor> {
    camera_registration::observed_points(
        &point_maps.world_points,
        &point_maps.conf,
        &point_maps.alpha.f_to_device(point_maps.conf.device())?,
        REGISTRATION_POINTS,
    )
}

/// The cameras moved from VGGT's frame into the asset's (the frame of the result's Gaussians
/// and mesh): VGGT's `observed` surface ([`observed_surface`]) registered onto `asset_points`
/// `[M, 3]` by a similarity (see [`camera_registration`]); camera coordinates are scaled by
/// the similarity's scale, so projections are unchanged.
pub fn cameras_in_asset_frame(
    cameras: &[Camera],
    observed: &Tensor,
    asset_points: &Tensor,
) -> Result<(Vec<Camera>, camera_registration::Registration)> {
    let device = asset_points.device();
    let registration = camera_registration::register(
        &observed.f_to_device(device)?,
        &asset_points.f_to_kind(Kind::Float)?,
        &camera_registration::RegistrationOptions::default(),
    )?;
    let moved = cameras
        .iter()
        .map(|c| camera_registration::camera_in_frame(c, &registration.similarity))
        .collect();
    Ok((moved, registration))
}

/// The cameras of a pose encoding `[1, N, 9]` for images of `height`×`width`: camera-from-world
/// `[R | t]` in OpenCV axes (x right, y down, z forward) and pixel intrinsics. The world frame
/// is VGGT's: the first view's camera (its extrinsic ≈ identity), at VGGT's normalised scale.
pub fn cameras_from_pose_encoding(
    encoding: &Tensor,
    height: i64,
    width: i64,
) -> Result<Vec<Camera>> {
    let (extrinsic, intrinsic) = pose_encoding_to_extri_intri(encoding, height, width)?;
    let extrinsic = flat_rows(&extrinsic, 12)?;
    let intrinsic = flat_rows(&intrinsic, 9)?;
    let (width, height) = (u32::try_from(width), u32::try_from(height));
    let (Ok(width), Ok(height)) = (width, height) else {
        return Err(Error::internal("camera image size out of range"));
    };
    extrinsic
        .iter()
        .zip(&intrinsic)
        .map(|(e, k)| {
            Ok(Camera {
                extrinsic: e
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::internal("extrinsic is not 3×4"))?,
                intrinsic: k
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::internal("intrinsic is not 3×3"))?,
                width,
                height,
            })
        })
        .collect()
}

/// `[B, N, ...]` with `per_view` values per view → one row of floats per view (batch 0).
fn flat_rows(t: &Tensor, per_view: i64) -> Result<Vec<Vec<f32>>> {
    let flat = t
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_reshape([-1])?;
    let values = Vec::<f32>::try_from(&flat)?;
    Ok(values
        .chunks_exact(per_view as usize)
        .map(<[f32]>::to_vec)
        .collect())
}

/// `encode_image` + the reference's layer_norm: DINOv2's condition tokens of every view,
/// `[1, N, T, 1024]`, in fp32 (the reference runs it outside autocast).
fn image_condition(encoders: &ViewEncoders<'_>, views: &Tensor) -> Result<Tensor> {
    let image = imagenet_normalize(&views.f_to_device(encoders.device)?)?;
    let inputs = NamedTensors::from([("image".to_string(), image)]);
    let mut outputs = encoders.image_cond_model.forward_named(&inputs)?;
    let tokens = outputs
        .remove("tokens")
        .ok_or_else(|| Error::internal("the image condition model returned no 'tokens' output"))?;
    Ok(tokens.f_to_kind(Kind::Float)?.f_unsqueeze(0)?)
}

/// The reference's `run` after `vggt_feat` / `encode_image`: both condition networks, both
/// stages' sampling, the decoder and the decoders of the formats `networks.slat` holds.
/// Progress: `SparseStructure` and `StructuredLatent` per sampler step, then `Decode`.
pub fn generate_from_features(
    networks: &ConditionedNetworks<'_>,
    samplers: &Samplers,
    features: &ViewFeatures,
    noises: Noises<'_>,
    control: &RunControl<'_>,
) -> Result<ConditionedGeneration> {
    let stage1 = sample_sparse_structure(
        &networks.sparse_structure,
        &samplers.sparse_structure,
        features,
        noises.sparse_structure,
        control,
    )?;
    control.check_cancelled()?;
    let (slat_cond, slat) = sample_slat(
        &networks.slat,
        &samplers.slat,
        features,
        &stage1,
        noises.slat,
        control,
        None,
    )?;
    Ok(ConditionedGeneration {
        sparse_structure: stage1,
        slat_cond,
        slat,
    })
}

/// Stage 1: the SS condition of all views, the SS flow sampling from `noise` and the decoder's
/// occupied voxels.
pub fn sample_sparse_structure(
    networks: &SparseStructureStage<'_>,
    sampler: &SamplerConfig,
    features: &ViewFeatures,
    noise: NoiseSource<'_>,
    control: &RunControl<'_>,
) -> Result<trellis::SparseStructureOutput> {
    let device = networks.device;
    let on_device = features.to_device(device)?;
    control.check_cancelled()?;
    let scope = crate::profiler::scope("sparse-structure condition");
    let ss_cond = tch::no_grad(|| {
        networks
            .ss_cond
            .forward(&on_device.layer_refs(), &on_device.image_cond)
    })
    .context(SPARSE_STRUCTURE_VGGT_COND)?;
    drop(scope);
    let condition = ImageCondition {
        neg_cond: ss_cond.f_zeros_like()?,
        cond: ss_cond,
    };
    let noise = trellis::initial_noise(noise, &networks.flow_config, 1)?;
    control.progress(Stage::SparseStructure, 0, sampler.steps)?;
    let latent = trellis::sample_sparse_structure(
        networks.flow,
        sampler,
        &noise.f_to_device(device)?,
        &condition,
        // One condition tensor: the mode is never consulted.
        MultiImageMode::Stochastic,
        control,
    )?;
    control.check_cancelled()?;
    let _scope = crate::profiler::scope("sparse-structure decoder");
    let logits = trellis::decode_sparse_structure(networks.decoder, &latent)?;
    let coords = trellis::occupied_coords(&logits)?;
    Ok(trellis::SparseStructureOutput {
        cond: condition.cond,
        neg_cond: condition.neg_cond,
        noise,
        latent,
        logits,
        coords,
    })
}

/// Stage 2: the per-view SLat conditions, the SLat flow sampling on the stage-1 voxels (every
/// cross-attention block averaging over the views) and the decoders, with `on_asset_points`
/// run during decoding (see [`slat::decode_slat`]). Returns the conditions and the stage's
/// output.
pub fn sample_slat(
    networks: &SlatStage<'_>,
    sampler: &SamplerConfig,
    features: &ViewFeatures,
    stage1: &trellis::SparseStructureOutput,
    noise: NoiseSource<'_>,
    control: &RunControl<'_>,
    on_asset_points: Option<slat::AssetPointsWork<'_>>,
) -> Result<(Vec<Tensor>, SlatOutput)> {
    let on_device = features.to_device(networks.slat.device)?;
    let scope = crate::profiler::scope("structured-latent condition");
    let slat_cond = tch::no_grad(|| {
        networks
            .slat_cond
            .forward(&on_device.layer_refs(), &on_device.image_cond)
    })
    .context(SLAT_VGGT_COND)?;
    drop(scope);
    let neg_slat_cond = slat_cond
        .iter()
        .map(Tensor::f_zeros_like)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let slat_noise = slat::initial_slat_noise(
        noise,
        &stage1.noise.size(),
        stage1.num_voxels(),
        networks.slat.flow.config().in_channels,
    )?;
    let output = slat::run_slat_with(
        &networks.slat,
        sampler,
        &stage1.coords,
        slat_noise,
        control,
        |voxels| {
            slat::sample_slat_conditioned(
                networks.slat.flow,
                sampler,
                voxels,
                Conditioning::Single(&slat_cond),
                &neg_slat_cond,
                control,
            )
        },
        on_asset_points,
    )?;
    Ok((slat_cond, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An identity rotation (quaternion xyzw 0,0,0,1), a translation and both fields of view:
    /// extrinsic [I | t], focal lengths (size/2)/tan(fov/2), principal point at the centre.
    #[test]
    fn cameras_come_out_per_view_in_row_major_order() {
        let encoding = Tensor::from_slice(&[
            0.1f32, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0, 1.0, 1.2, //
            -1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.8, 0.8,
        ])
        .view([1, 2, 9]);
        let cameras = cameras_from_pose_encoding(&encoding, 518, 392).unwrap();
        assert_eq!(cameras.len(), 2);
        let c = &cameras[0];
        assert_eq!((c.width, c.height), (392, 518));
        let expected_extrinsic = [1.0, 0.0, 0.0, 0.1, 0.0, 1.0, 0.0, 0.2, 0.0, 0.0, 1.0, 0.3];
        for (a, b) in c.extrinsic.iter().zip(expected_extrinsic) {
            assert!((a - b).abs() < 1e-6, "{:?}", c.extrinsic);
        }
        let fy = 259.0 / (0.5f32).tan();
        let fx = 196.0 / (0.6f32).tan();
        let k = c.intrinsic;
        assert!(
            (k[0] - fx).abs() < 1e-3 && (k[4] - fy).abs() < 1e-3,
            "{k:?}"
        );
        assert!(
            (k[2] - 196.0).abs() < 1e-4 && (k[5] - 259.0).abs() < 1e-4,
            "{k:?}"
        );
        assert_eq!(cameras[1].extrinsic[3], -1.0);
        assert_eq!(cameras[1].extrinsic[11], 2.0);
    }
}
