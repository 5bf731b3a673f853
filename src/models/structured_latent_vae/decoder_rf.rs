//! `trellis.models.structured_latent_vae.decoder_rf`: `SLatRadianceFieldDecoder` (and its
//! training twin `ElasticSLatRadianceFieldDecoder`), which turns a structured latent into a
//! tri-vector radiance field on the latent's voxels (research/trellis.md §3.7, §4.3):
//!
//! ```text
//! h = SparseTransformerBase(x)                      swin torso, fp16 with use_fp16 on CUDA
//! raw = out_layer(layer_norm(h.float()))            no affine, eps 1e-5; C → rank·(3·dim + 4)
//! per batch element: Strivec with, per voxel,
//!   trivec      = raw[0 : 3·rank·dim] as (rank, 3, dim), plus 1
//!   density     = raw[.. + rank]      as (rank,)
//!   features_dc = raw[.. + 3·rank]    as (rank, 1, 3)
//!   position    = (xyz + 0.5) / resolution, depth log2(resolution)
//! ```

use serde::Deserialize;
use tch::Kind;

use crate::error::{Error, Result, ResultExt};
use crate::models::{NamedTensors, Network, TensorDoc};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::Linear;
use crate::representations::radiance_field::{Strivec, StrivecConfig};
use crate::sparse::{SparseLinear, SparseTensor};
use crate::weights::Weights;

use super::base::SparseTransformerBase;
use super::{batch_rows, normed_head, SLatDecoderConfig, LATENT_INPUTS};

/// The upstream class name.
pub const CLASS: &str = "SLatRadianceFieldDecoder";

/// `representation_config` of a `SLatRadianceFieldDecoder`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RadianceFieldRepresentationConfig {
    /// Components per voxel.
    pub rank: i64,
    /// Length of each tri-vector factor.
    pub dim: i64,
}

impl RadianceFieldRepresentationConfig {
    /// `slat_dec_rf_swin8_B_64l8r16_fp16`'s representation.
    pub fn trellis_image_large() -> Self {
        Self { rank: 16, dim: 8 }
    }

    fn trivec_channels(&self) -> i64 {
        self.rank * 3 * self.dim
    }

    /// Output channels per voxel: `rank·3·dim` (trivec) + `rank` (density) + `3·rank`
    /// (features_dc).
    pub fn out_channels(&self) -> i64 {
        self.trivec_channels() + self.rank + 3 * self.rank
    }
}

/// The `args` of a `SLatRadianceFieldDecoder` checkpoint json.
pub type SLatRadianceFieldDecoderConfig = SLatDecoderConfig<RadianceFieldRepresentationConfig>;

impl SLatDecoderConfig<RadianceFieldRepresentationConfig> {
    /// `slat_dec_rf_swin8_B_64l8r16_fp16` of microsoft/TRELLIS-image-large.
    pub fn trellis_image_large() -> Self {
        Self::published_torso(RadianceFieldRepresentationConfig::trellis_image_large())
    }

    /// The per-batch-element field configuration (checks rank, dim and that the resolution
    /// is a power of two, as `Strivec` requires).
    pub fn strivec_config(&self) -> Result<StrivecConfig> {
        let rep = &self.representation_config;
        if rep.rank <= 0 || rep.dim <= 0 {
            return Err(Error::checkpoint(format!(
                "{CLASS}: rank ({}) and dim ({}) must be positive",
                rep.rank, rep.dim
            )));
        }
        let config = StrivecConfig {
            resolution: self.resolution,
            aabb: StrivecConfig::DECODER_AABB,
            rank: rep.rank,
            dim: rep.dim,
        };
        config
            .depth()
            .map_err(|e| Error::checkpoint(format!("{CLASS}: {}", e.message())))?;
        Ok(config)
    }

    /// Every tensor the decoder reads, in the reference's `state_dict()` order with its stored
    /// dtype: the torso (`input_layer` F32, blocks F16 with `use_fp16`), `out_layer` (F32).
    /// [`SLatRadianceFieldDecoder::new`] checks a checkpoint against it.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        let base = self.base_config(CLASS)?;
        self.strivec_config()?;
        let mut specs = base.layout();
        specs.extend(Linear::layout(
            "out_layer",
            true,
            self.model_channels,
            self.representation_config.out_channels(),
            Kind::Float,
        ));
        Ok(specs)
    }
}

/// The structured-latent radiance-field decoder (`SLatRadianceFieldDecoder`,
/// `ElasticSLatRadianceFieldDecoder`).
pub struct SLatRadianceFieldDecoder {
    config: SLatRadianceFieldDecoderConfig,
    strivec: StrivecConfig,
    base: SparseTransformerBase,
    out_layer: SparseLinear,
}

impl SLatRadianceFieldDecoder {
    /// Builds the decoder from a checkpoint view whose default kind is fp32, after checking
    /// the checkpoint against [`SLatRadianceFieldDecoderConfig::checkpoint_layout`].
    pub fn new(config: SLatRadianceFieldDecoderConfig, weights: &Weights) -> Result<Self> {
        let layout = config.checkpoint_layout()?;
        check_layout(weights, &layout)?;
        let strivec = config.strivec_config()?;
        let base = SparseTransformerBase::new(config.base_config(CLASS)?, weights)?;
        let out_layer = SparseLinear::new(
            &weights.with_kind(Kind::Float).pp("out_layer"),
            config.model_channels,
            config.representation_config.out_channels(),
        )
        .context("out_layer")?;
        Ok(Self {
            config,
            strivec,
            base,
            out_layer,
        })
    }

    pub fn config(&self) -> &SLatRadianceFieldDecoderConfig {
        &self.config
    }

    /// The configuration every decoded [`Strivec`] carries.
    pub fn strivec_config(&self) -> &StrivecConfig {
        &self.strivec
    }

    /// The swin torso (for running it alone, e.g. to compare intermediates).
    pub fn base(&self) -> &SparseTransformerBase {
        &self.base
    }

    /// Decodes latent voxels `x` (`[N, latent_channels]` features, batch-contiguous rows) into
    /// one [`Strivec`] per batch element, its leaves the element's voxels in row order.
    pub fn decode(&self, x: &SparseTensor) -> Result<Vec<Strivec>> {
        self.to_representation(&self.forward_raw(x)?)
    }

    /// The head's raw output: the same voxels, same row order, `rank·(3·dim + 4)` fp32
    /// features.
    pub fn forward_raw(&self, x: &SparseTensor) -> Result<SparseTensor> {
        self.forward_head(&self.base.forward(x)?)
    }

    /// The head on torso features `h` (`[N, model_channels]`, any float dtype): fp32,
    /// `layer_norm` without affine, `out_layer`.
    pub fn forward_head(&self, h: &SparseTensor) -> Result<SparseTensor> {
        normed_head(h, self.config.model_channels, &self.out_layer)
    }

    /// The reference's `to_representation`: one [`Strivec`] per batch element of the raw
    /// output `raw` (`[N, rank·(3·dim + 4)]`).
    pub fn to_representation(&self, raw: &SparseTensor) -> Result<Vec<Strivec>> {
        let rep = &self.config.representation_config;
        if raw.channels() != rep.out_channels() || raw.feats().dim() != 2 {
            return Err(Error::invalid_argument(format!(
                "{CLASS}: raw features must be [N, {}], got {:?}",
                rep.out_channels(),
                raw.feats().size()
            )));
        }
        let (rank, dim) = (rep.rank, rep.dim);
        let feats = raw.feats().f_to_kind(Kind::Float)?;
        let res = self.config.resolution as f64;
        (0..raw.batch_size())
            .map(|b| {
                let (start, n) = batch_rows(raw, b)?;
                let rows = feats.f_narrow(0, start, n)?;
                let position = raw
                    .coords()
                    .f_narrow(0, start, n)?
                    .f_narrow(1, 1, 3)?
                    .f_to_kind(Kind::Float)?
                    .f_add_scalar(0.5)?
                    .f_div_scalar(res)?;
                let trivec = rows
                    .f_narrow(1, 0, rep.trivec_channels())?
                    .f_reshape([n, rank, 3, dim])?
                    .f_add_scalar(1.0)?;
                let density = rows
                    .f_narrow(1, rep.trivec_channels(), rank)?
                    .f_reshape([n, rank])?;
                let features_dc = rows
                    .f_narrow(1, rep.trivec_channels() + rank, 3 * rank)?
                    .f_reshape([n, rank, 1, 3])?;
                Strivec::new(self.strivec, position, trivec, density, features_dc)
                    .context(format!("{CLASS}: batch element {b}"))
            })
            .collect()
    }
}

impl Network for SLatRadianceFieldDecoder {
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
                description: "out_layer output [N, rank·(3·dim + 4)], float32",
            },
            TensorDoc {
                name: "rf{b}_position, rf{b}_depth, rf{b}_trivec, rf{b}_density, \
                       rf{b}_features_dc",
                description: "batch element b's Strivec leaves: [N_b, 3] float32, [N_b, 1] \
                              uint8, [N_b, rank, 3, dim], [N_b, rank], [N_b, rank, 1, 3]",
            },
        ]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let x = super::latent_input(inputs, self)?;
        tch::no_grad(|| {
            let torso = self.base.forward(&x)?;
            let raw = self.forward_head(&torso)?;
            let fields = self.to_representation(&raw)?;
            let mut out = NamedTensors::new();
            out.insert("torso_feats".into(), torso.feats().f_to_kind(Kind::Float)?);
            out.insert("raw_coords".into(), raw.coords().shallow_clone());
            out.insert("raw_feats".into(), raw.feats().shallow_clone());
            for (b, field) in fields.iter().enumerate() {
                let tensors = [
                    ("position", field.position()),
                    ("depth", field.depth()),
                    ("trivec", field.trivec()),
                    ("density", field.density()),
                    ("features_dc", field.features_dc()),
                ];
                for (name, tensor) in tensors {
                    out.insert(format!("rf{b}_{name}"), tensor.shallow_clone());
                }
            }
            Ok(out)
        })
    }
}
