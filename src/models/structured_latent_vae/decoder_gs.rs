//! `trellis.models.structured_latent_vae.decoder_gs`: `SLatGaussianDecoder` (and its training
//! twin `ElasticSLatGaussianDecoder`), which turns a structured latent into `num_gaussians` 3D
//! Gaussians per voxel (research/trellis.md §3.6, §4.1):
//!
//! ```text
//! h = SparseTransformerBase(x)                       swin torso, fp16 with use_fp16 on CUDA
//! h = layer_norm(h.float())                          no affine, eps 1e-5
//! raw = out_layer(h)                                 SparseLinear(C → 14·G), fp32
//! per batch element, per voxel v at (x, y, z), its G Gaussians (voxel-major):
//!   _xyz         = (xyz + 0.5)/res + tanh(raw[0:3G]·lr + perturbation)/res · 0.5 · voxel_size
//!   _features_dc = raw[3G:6G]·lr     _scaling = raw[6G:9G]·lr
//!   _rotation    = raw[9G:13G]·lr    _opacity = raw[13G:14G]·lr
//! ```
//!
//! `perturbation` is the `offset_perturbation` buffer `[G, 3]` read from the checkpoint (its
//! constructor value is `atanh((hammersley·2 − 1)/voxel_size)`, which spreads zero offsets over
//! the voxel); it is added only with `perturb_offset`.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::models::{NamedTensors, Network, TensorDoc};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::Linear;
use crate::representations::gaussian::{Gaussian, GaussianConfig, ScalingActivation};
use crate::sparse::{SparseLinear, SparseTensor};
use crate::weights::Weights;

use super::base::SparseTransformerBase;
use super::{batch_rows, normed_head, SLatDecoderConfig, LATENT_INPUTS};

/// The upstream class name.
pub const CLASS: &str = "SLatGaussianDecoder";

/// Per-attribute factors on the raw outputs (`representation_config.lr`; training learning
/// rates that the forward pass also multiplies by).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GaussianLearningRates {
    #[serde(rename = "_xyz")]
    pub xyz: f64,
    #[serde(rename = "_features_dc")]
    pub features_dc: f64,
    #[serde(rename = "_opacity")]
    pub opacity: f64,
    #[serde(rename = "_scaling")]
    pub scaling: f64,
    #[serde(rename = "_rotation")]
    pub rotation: f64,
}

/// `representation_config` of a `SLatGaussianDecoder`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GaussianRepresentationConfig {
    pub lr: GaussianLearningRates,
    /// Add the `offset_perturbation` buffer to the raw offsets before the tanh.
    pub perturb_offset: bool,
    /// How far (in voxels) a Gaussian may move from its voxel's centre: `±voxel_size / 2`.
    pub voxel_size: f64,
    /// Gaussians per voxel (`G`).
    pub num_gaussians: i64,
    /// The rasteriser's 2D filter; not used by the decoder.
    #[serde(default, rename = "2d_filter_kernel_size")]
    pub filter_2d_kernel_size: Option<f64>,
    /// Minimum scale of every Gaussian (`Gaussian.mininum_kernel_size`).
    #[serde(rename = "3d_filter_kernel_size")]
    pub filter_3d_kernel_size: f64,
    pub scaling_bias: f64,
    pub opacity_bias: f64,
    /// `"softplus"` or `"exp"`.
    pub scaling_activation: String,
}

impl GaussianRepresentationConfig {
    /// `slat_dec_gs_swin8_B_64l8gs32_fp16`'s representation (research/trellis.md §3.6).
    pub fn trellis_image_large() -> Self {
        Self {
            lr: GaussianLearningRates {
                xyz: 1.0,
                features_dc: 1.0,
                opacity: 1.0,
                scaling: 1.0,
                rotation: 0.1,
            },
            perturb_offset: true,
            voxel_size: 1.5,
            num_gaussians: 32,
            filter_2d_kernel_size: Some(0.1),
            filter_3d_kernel_size: 9e-4,
            scaling_bias: 4e-3,
            opacity_bias: 0.1,
            scaling_activation: "softplus".to_string(),
        }
    }

    /// Output channels per voxel: `G · (3 + 3 + 3 + 4 + 1)`.
    pub fn out_channels(&self) -> i64 {
        self.num_gaussians * FIELDS.iter().map(|f| f.width).sum::<i64>()
    }
}

/// The `args` of a `SLatGaussianDecoder` checkpoint json.
pub type SLatGaussianDecoderConfig = SLatDecoderConfig<GaussianRepresentationConfig>;

impl SLatDecoderConfig<GaussianRepresentationConfig> {
    /// `slat_dec_gs_swin8_B_64l8gs32_fp16` of microsoft/TRELLIS-image-large.
    pub fn trellis_image_large() -> Self {
        Self::published_torso(GaussianRepresentationConfig::trellis_image_large())
    }

    fn validate_representation(&self) -> Result<ScalingActivation> {
        let rep = &self.representation_config;
        if rep.num_gaussians <= 0 {
            return Err(Error::checkpoint(format!(
                "{CLASS}: num_gaussians must be positive, got {}",
                rep.num_gaussians
            )));
        }
        ScalingActivation::from_name(&rep.scaling_activation)
            .map_err(|e| Error::checkpoint(format!("{CLASS}: {}", e.message())))
    }

    /// Every tensor the decoder reads, in the reference's `state_dict()` order with its stored
    /// dtype: the `offset_perturbation` buffer (F32), the torso (`input_layer` F32, blocks F16
    /// with `use_fp16`), `out_layer` (F32). [`SLatGaussianDecoder::new`] checks a checkpoint
    /// against it.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        let base = self.base_config(CLASS)?;
        self.validate_representation()?;
        let rep = &self.representation_config;
        let mut specs = vec![TensorSpec::new(
            "offset_perturbation",
            &[rep.num_gaussians, 3],
            Kind::Float,
        )];
        specs.extend(base.layout());
        specs.extend(Linear::layout(
            "out_layer",
            true,
            self.model_channels,
            rep.out_channels(),
            Kind::Float,
        ));
        Ok(specs)
    }
}

/// One stored attribute's slice of a voxel's output channels: `width · G` channels, reshaped
/// to `[G, shape...]` per voxel.
struct Field {
    width: i64,
    shape: &'static [i64],
}

/// The channel layout of the head, in order (the reference's `_calc_layout`): `_xyz`,
/// `_features_dc`, `_scaling`, `_rotation`, `_opacity`.
const FIELDS: [Field; 5] = [
    Field {
        width: 3,
        shape: &[3],
    },
    Field {
        width: 3,
        shape: &[1, 3],
    },
    Field {
        width: 3,
        shape: &[3],
    },
    Field {
        width: 4,
        shape: &[4],
    },
    Field {
        width: 1,
        shape: &[1],
    },
];

/// The structured-latent Gaussian decoder (`SLatGaussianDecoder`,
/// `ElasticSLatGaussianDecoder`).
pub struct SLatGaussianDecoder {
    config: SLatGaussianDecoderConfig,
    gaussian: GaussianConfig,
    base: SparseTransformerBase,
    out_layer: SparseLinear,
    /// `[G, 3]` fp32 on the weights' device.
    offset_perturbation: Tensor,
}

impl SLatGaussianDecoder {
    /// Builds the decoder from a checkpoint view whose default kind is fp32, after checking
    /// the checkpoint against [`SLatGaussianDecoderConfig::checkpoint_layout`].
    pub fn new(config: SLatGaussianDecoderConfig, weights: &Weights) -> Result<Self> {
        let layout = config.checkpoint_layout()?;
        check_layout(weights, &layout)?;
        let scaling_activation = config.validate_representation()?;
        let base = SparseTransformerBase::new(config.base_config(CLASS)?, weights)?;
        let fp32 = weights.with_kind(Kind::Float);
        let rep = &config.representation_config;
        let out_layer = SparseLinear::new(
            &fp32.pp("out_layer"),
            config.model_channels,
            rep.out_channels(),
        )
        .context("out_layer")?;
        let offset_perturbation = fp32.get(&[rep.num_gaussians, 3], "offset_perturbation")?;
        let gaussian = GaussianConfig {
            aabb: GaussianConfig::DECODER_AABB,
            sh_degree: 0,
            min_kernel_size: rep.filter_3d_kernel_size,
            scaling_bias: rep.scaling_bias,
            opacity_bias: rep.opacity_bias,
            scaling_activation,
        };
        Ok(Self {
            config,
            gaussian,
            base,
            out_layer,
            offset_perturbation,
        })
    }

    pub fn config(&self) -> &SLatGaussianDecoderConfig {
        &self.config
    }

    /// The configuration every decoded [`Gaussian`] carries.
    pub fn gaussian_config(&self) -> &GaussianConfig {
        &self.gaussian
    }

    /// The swin torso (for running it alone, e.g. to compare intermediates).
    pub fn base(&self) -> &SparseTransformerBase {
        &self.base
    }

    /// The `offset_perturbation` buffer `[G, 3]` as loaded.
    pub fn offset_perturbation(&self) -> &Tensor {
        &self.offset_perturbation
    }

    /// Decodes latent voxels `x` (`[N, latent_channels]` features, batch-contiguous rows) into
    /// one [`Gaussian`] set per batch element, `N_b · G` Gaussians each.
    pub fn decode(&self, x: &SparseTensor) -> Result<Vec<Gaussian>> {
        self.to_representation(&self.forward_raw(x)?)
    }

    /// The head's raw output: the same voxels, same row order, `14·G` fp32 features.
    pub fn forward_raw(&self, x: &SparseTensor) -> Result<SparseTensor> {
        self.forward_head(&self.base.forward(x)?)
    }

    /// The head on torso features `h` (`[N, model_channels]`, any float dtype): fp32,
    /// `layer_norm` without affine, `out_layer`.
    pub fn forward_head(&self, h: &SparseTensor) -> Result<SparseTensor> {
        normed_head(h, self.config.model_channels, &self.out_layer)
    }

    /// The reference's `to_representation`: one [`Gaussian`] per batch element of the raw
    /// output `raw` (`[N, 14·G]`), its voxels' Gaussians voxel-major in row order.
    pub fn to_representation(&self, raw: &SparseTensor) -> Result<Vec<Gaussian>> {
        let rep = &self.config.representation_config;
        let g = rep.num_gaussians;
        if raw.channels() != rep.out_channels() || raw.feats().dim() != 2 {
            return Err(Error::invalid_argument(format!(
                "{CLASS}: raw features must be [N, {}], got {:?}",
                rep.out_channels(),
                raw.feats().size()
            )));
        }
        let feats = raw.feats().f_to_kind(Kind::Float)?;
        let lrs = [
            rep.lr.xyz,
            rep.lr.features_dc,
            rep.lr.scaling,
            rep.lr.rotation,
            rep.lr.opacity,
        ];
        (0..raw.batch_size())
            .map(|b| {
                let (start, n) = batch_rows(raw, b)?;
                let rows = feats.f_narrow(0, start, n)?;
                let mut attrs = Vec::with_capacity(FIELDS.len());
                let mut channel = 0;
                for (field, lr) in FIELDS.iter().zip(lrs) {
                    let mut shape = vec![n * g];
                    shape.extend_from_slice(field.shape);
                    let values = rows
                        .f_narrow(1, channel, field.width * g)?
                        .f_reshape(shape.as_slice())?
                        .f_mul_scalar(lr)?;
                    channel += field.width * g;
                    attrs.push(values);
                }
                let coords = raw.coords().f_narrow(0, start, n)?;
                let [xyz, features_dc, scaling, rotation, opacity]: [Tensor; 5] = attrs
                    .try_into()
                    .map_err(|_| Error::internal(format!("{CLASS}: the layout has 5 fields")))?;
                let xyz = self.positions(&coords, &xyz.f_reshape([n, g, 3])?)?;
                Gaussian::new(self.gaussian, xyz, features_dc, scaling, rotation, opacity)
                    .context(format!("{CLASS}: batch element {b}"))
            })
            .collect()
    }

    /// `_xyz [n·G, 3]` from voxel coords `[n, 4]` and scaled raw offsets `[n, G, 3]`:
    /// the voxel centre plus `tanh(offset (+ perturbation)) / res · 0.5 · voxel_size`, in the
    /// reference's operation order.
    fn positions(&self, coords: &Tensor, offset: &Tensor) -> Result<Tensor> {
        let rep = &self.config.representation_config;
        let res = self.config.resolution as f64;
        let centre = coords
            .f_narrow(1, 1, 3)?
            .f_to_kind(Kind::Float)?
            .f_add_scalar(0.5)?
            .f_div_scalar(res)?;
        let offset = if rep.perturb_offset {
            offset.f_add(&self.offset_perturbation.f_to_device(offset.device())?)?
        } else {
            offset.shallow_clone()
        };
        let offset = offset
            .f_tanh()?
            .f_div_scalar(res)?
            .f_mul_scalar(0.5)?
            .f_mul_scalar(rep.voxel_size)?;
        Ok(centre.f_unsqueeze(1)?.f_add(&offset)?.f_flatten(0, 1)?)
    }
}

impl Network for SLatGaussianDecoder {
    fn class_name(&self) -> &'static str {
        CLASS
    }
    fn inputs(&self) -> &'static [TensorDoc] {
        LATENT_INPUTS
    }
    fn outputs(&self) -> &'static [TensorDoc] {
        &[
            TensorDoc {
                name: "torso_feats",
                description: "output of the last transformer block [N, model_channels], float32",
            },
            TensorDoc {
                name: "raw_coords",
                description: "the input voxels [N, 4] int32 (the head keeps them and their order)",
            },
            TensorDoc {
                name: "raw_feats",
                description: "out_layer output [N, 14·G], float32",
            },
            TensorDoc {
                name: "offset_perturbation",
                description: "the loaded buffer [G, 3], float32",
            },
            TensorDoc {
                name: "scale_bias",
                description: "inverse scaling activation of scaling_bias [1], float32",
            },
            TensorDoc {
                name: "opacity_bias",
                description: "logit(opacity_bias) [1], float32",
            },
            TensorDoc {
                name: "gs{b}__xyz, gs{b}__features_dc, gs{b}__scaling, gs{b}__rotation, \
                       gs{b}__opacity",
                description: "batch element b's stored attributes [N_b·G, ...] (voxel-major)",
            },
            TensorDoc {
                name: "gs{b}_get_xyz, gs{b}_get_features, gs{b}_get_scaling, \
                       gs{b}_get_rotation, gs{b}_get_opacity",
                description: "batch element b's activated attributes (the get_* properties)",
            },
        ]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let x = super::latent_input(inputs, self)?;
        tch::no_grad(|| {
            let torso = self.base.forward(&x)?;
            let raw = self.forward_head(&torso)?;
            let gaussians = self.to_representation(&raw)?;
            let mut out = NamedTensors::new();
            out.insert("torso_feats".into(), torso.feats().f_to_kind(Kind::Float)?);
            out.insert("raw_coords".into(), raw.coords().shallow_clone());
            out.insert("raw_feats".into(), raw.feats().shallow_clone());
            out.insert(
                "offset_perturbation".into(),
                self.offset_perturbation.shallow_clone(),
            );
            if let Some(first) = gaussians.first() {
                out.insert("scale_bias".into(), first.scale_bias()?);
                out.insert("opacity_bias".into(), first.opacity_bias_logit()?);
            }
            for (b, gs) in gaussians.iter().enumerate() {
                let stored = [
                    ("_xyz", gs.xyz()),
                    ("_features_dc", gs.features_dc()),
                    ("_scaling", gs.scaling()),
                    ("_rotation", gs.rotation()),
                    ("_opacity", gs.opacity()),
                ];
                for (name, tensor) in stored {
                    out.insert(format!("gs{b}_{name}"), tensor.shallow_clone());
                }
                out.insert(format!("gs{b}_get_xyz"), gs.get_xyz()?);
                out.insert(format!("gs{b}_get_features"), gs.get_features()?);
                out.insert(format!("gs{b}_get_scaling"), gs.get_scaling()?);
                out.insert(format!("gs{b}_get_rotation"), gs.get_rotation()?);
                out.insert(format!("gs{b}_get_opacity"), gs.get_opacity()?);
            }
            Ok(out)
        })
    }
}
