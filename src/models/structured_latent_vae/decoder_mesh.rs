//! `trellis.models.structured_latent_vae.decoder_mesh`: `SLatMeshDecoder` (and its training
//! twin `ElasticSLatMeshDecoder`), which turns a structured latent into per-voxel FlexiCubes
//! features at 4× the latent resolution (research/trellis.md §3.8):
//!
//! ```text
//! h = SparseTransformerBase(x)                 swin torso, fp16 with use_fp16 on CUDA
//! h = upsample[0](h)                           SparseSubdivideBlock3d: C → C/4 at 2× res
//! h = upsample[1](h)                           SparseSubdivideBlock3d: C/4 → C/8 at 4× res
//! raw = out_layer(h.float())                   SparseLinear(C/8 → 53, or 101 with colour), fp32
//! ```
//!
//! There is no final layer norm. Each latent voxel becomes 64 output voxels in the reference's
//! subdivision order (row `(p·8 + c1)·8 + c2`, children in `nonzero(ones(2, 2, 2))` order), so
//! the output is batch-contiguous but not lexicographically sorted.
//!
//! The per-voxel channels are the mesh extractor's layout (`SparseFeatures2Mesh`): sdf `[0:8)`,
//! deform `[8:32)`, weights `[32:53)`, colour `[53:101)` with `use_color`. The extraction
//! itself (FlexiCubes) lives in `representations::mesh`; [`SLatMeshDecoder::forward_raw`]
//! stops at the raw features.

use serde::Deserialize;
use tch::Kind;

use crate::error::{Error, Result, ResultExt};
use crate::models::{NamedTensors, Network, TensorDoc};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::Linear;
use crate::sparse::{
    SparseConv3d, SparseGroupNorm32, SparseLinear, SparseSiLU, SparseSubdivide, SparseTensor,
};
use crate::weights::Weights;

use super::super::sparse_structure_vae::torso_kind;
use super::base::SparseTransformerBase;
use super::{SLatDecoderConfig, LATENT_INPUTS};

/// The upstream class name.
pub const CLASS: &str = "SLatMeshDecoder";

/// Channels per voxel of the mesh extractor's input without colour: sdf (8 corners), deform
/// (8 × 3), FlexiCubes weights (12 β + 8 α + 1 γ).
const GEOMETRY_CHANNELS: i64 = 8 + 8 * 3 + 21;
/// The colour block: 6 channels (RGB + a "normal map") per cube corner.
const COLOR_CHANNELS: i64 = 8 * 6;
/// Each subdivide block multiplies the resolution by 2; the mesh is extracted at 4×.
const UPSAMPLE_FACTOR: i64 = 4;

/// `representation_config` of a `SLatMeshDecoder`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeshRepresentationConfig {
    /// Also decode per-vertex colours (`rep_config.get('use_color', False)`).
    #[serde(default)]
    pub use_color: bool,
}

impl MeshRepresentationConfig {
    /// `slat_dec_mesh_swin8_B_64l8m256c_fp16`'s representation.
    pub fn trellis_image_large() -> Self {
        Self { use_color: true }
    }

    /// The mesh extractor's input channels per voxel (`SparseFeatures2Mesh.feats_channels`).
    pub fn feats_channels(&self) -> i64 {
        GEOMETRY_CHANNELS + if self.use_color { COLOR_CHANNELS } else { 0 }
    }
}

/// The `args` of a `SLatMeshDecoder` checkpoint json.
pub type SLatMeshDecoderConfig = SLatDecoderConfig<MeshRepresentationConfig>;

impl SLatDecoderConfig<MeshRepresentationConfig> {
    /// `slat_dec_mesh_swin8_B_64l8m256c_fp16` of microsoft/TRELLIS-image-large.
    pub fn trellis_image_large() -> Self {
        Self::published_torso(MeshRepresentationConfig::trellis_image_large())
    }

    /// `(channels, out_channels)` of the two subdivide blocks: `C → C/4 → C/8`, each with a
    /// 32-group GroupNorm on its input and output (so the reference can only build `C` that
    /// are multiples of 256).
    fn upsample_shapes(&self) -> Result<[(i64, i64); 2]> {
        let c = self.model_channels;
        let shapes = [(c, c / 4), (c / 4, c / 8)];
        for width in [c, c / 4, c / 8] {
            if width <= 0 || width % SparseSubdivideBlock3d::NUM_GROUPS != 0 {
                return Err(Error::checkpoint(format!(
                    "{CLASS}: model_channels {c} gives a {width}-channel subdivide stage, which \
                     {} GroupNorm groups cannot split (model_channels must be a multiple of \
                     256)",
                    SparseSubdivideBlock3d::NUM_GROUPS
                )));
            }
        }
        Ok(shapes)
    }

    /// Every tensor the decoder reads, in the reference's `state_dict()` order with its stored
    /// dtype: the torso (`input_layer` F32, blocks F16 with `use_fp16`), the two subdivide
    /// blocks (convs F16 with `use_fp16`, GroupNorms F32), `out_layer` (F32).
    /// [`SLatMeshDecoder::new`] checks a checkpoint against it.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        let base = self.base_config(CLASS)?;
        let mut specs = base.layout();
        for (i, (cin, cout)) in self.upsample_shapes()?.into_iter().enumerate() {
            specs.extend(SparseSubdivideBlock3d::layout(
                &format!("upsample.{i}"),
                cin,
                cout,
                base.stored_torso_kind(),
            ));
        }
        specs.extend(Linear::layout(
            "out_layer",
            true,
            self.model_channels / 8,
            self.representation_config.feats_channels(),
            Kind::Float,
        ));
        Ok(specs)
    }
}

/// `SparseSubdivideBlock3d(channels, resolution, out_channels, num_groups=32)`:
/// ```text
/// h = subdivide(silu(act_layers.0(x)))                   GroupNorm32, affine, per batch element
/// h = out_layers.3(silu(out_layers.1(out_layers.0(h))))  3×3×3 submanifold convs, GroupNorm32
/// out = h + skip_connection(subdivide(x))                1×1×1 conv (spconv's raw reshape of the
///                                                        weight, see SparseConv3d), or identity
/// ```
/// The convs run at the doubled resolution and share one kernel map.
pub struct SparseSubdivideBlock3d {
    act_norm: SparseGroupNorm32,
    conv1: SparseConv3d,
    norm2: SparseGroupNorm32,
    conv2: SparseConv3d,
    skip_connection: Option<SparseConv3d>,
}

impl SparseSubdivideBlock3d {
    /// The GroupNorm groups of every norm in the block.
    pub const NUM_GROUPS: i64 = 32;

    /// Loads the block; the convs come from `convs` (fp16 in a converted torso), the GroupNorm
    /// parameters from `norms` (fp32). Both views point at the block (`upsample.{i}`).
    pub fn new(convs: &Weights, norms: &Weights, channels: i64, out_channels: i64) -> Result<Self> {
        let skip_connection = if channels == out_channels {
            None
        } else {
            Some(SparseConv3d::new(
                &convs.pp("skip_connection"),
                channels,
                out_channels,
                1,
            )?)
        };
        Ok(Self {
            act_norm: SparseGroupNorm32::new(
                &norms.pp("act_layers.0"),
                Self::NUM_GROUPS,
                channels,
            )?,
            conv1: SparseConv3d::new(&convs.pp("out_layers.0"), channels, out_channels, 3)?,
            norm2: SparseGroupNorm32::new(
                &norms.pp("out_layers.1"),
                Self::NUM_GROUPS,
                out_channels,
            )?,
            conv2: SparseConv3d::new(&convs.pp("out_layers.3"), out_channels, out_channels, 3)?,
            skip_connection,
        })
    }

    /// The tensors [`SparseSubdivideBlock3d::new`] reads under `prefix`, in `state_dict()`
    /// order; `conv_kind` is the stored dtype of the convs (norms are F32).
    pub fn layout(
        prefix: &str,
        channels: i64,
        out_channels: i64,
        conv_kind: Kind,
    ) -> Vec<TensorSpec> {
        let norm = |name: &str, c: i64| {
            [
                TensorSpec::new(format!("{prefix}.{name}.weight"), &[c], Kind::Float),
                TensorSpec::new(format!("{prefix}.{name}.bias"), &[c], Kind::Float),
            ]
        };
        let conv = |name: &str, cin: i64, cout: i64, k: i64| {
            [
                TensorSpec::new(
                    format!("{prefix}.{name}.conv.weight"),
                    &[cout, k, k, k, cin],
                    conv_kind,
                ),
                TensorSpec::new(format!("{prefix}.{name}.conv.bias"), &[cout], conv_kind),
            ]
        };
        let mut specs = Vec::new();
        specs.extend(norm("act_layers.0", channels));
        specs.extend(conv("out_layers.0", channels, out_channels, 3));
        specs.extend(norm("out_layers.1", out_channels));
        specs.extend(conv("out_layers.3", out_channels, out_channels, 3));
        if channels != out_channels {
            specs.extend(conv("skip_connection", channels, out_channels, 1));
        }
        specs
    }

    /// `x` `[N, channels]` → its `8N` children `[8N, out_channels]`, rows `8r + child`, in the
    /// convs' dtype.
    ///
    /// The skip connection (a 1×1×1 convolution: the same linear map on every row) runs on the
    /// parent rows and is subdivided after, which equals subdividing first (children copy their
    /// parent's row) but keeps the 8× larger subdivided input out of memory while the main
    /// branch runs, and does an eighth of the work.
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let subdivide = SparseSubdivide::new();
        let h = SparseSiLU.forward(&self.act_norm.forward(x)?)?;
        let h = subdivide.forward(&h)?;
        let h = self.conv1.forward(&h)?;
        let h = SparseSiLU.forward(&self.norm2.forward(&h)?)?;
        let h = self.conv2.forward(&h)?;
        let skip = match &self.skip_connection {
            Some(conv) => conv.forward(x)?,
            None => x.to_kind(h.kind())?,
        };
        // Row `8r + child` of `h` is child `child` of parent row r, as SparseSubdivide orders
        // them.
        let children = skip.feats().f_repeat_interleave_self_int(8, 0, None)?;
        h.replace(h.feats().f_add(&children)?)
    }
}

/// The structured-latent mesh decoder (`SLatMeshDecoder`, `ElasticSLatMeshDecoder`).
pub struct SLatMeshDecoder {
    config: SLatMeshDecoderConfig,
    base: SparseTransformerBase,
    upsample: Vec<SparseSubdivideBlock3d>,
    out_layer: SparseLinear,
}

impl SLatMeshDecoder {
    /// Builds the decoder from a checkpoint view whose default kind is fp32, after checking
    /// the checkpoint against [`SLatMeshDecoderConfig::checkpoint_layout`].
    pub fn new(config: SLatMeshDecoderConfig, weights: &Weights) -> Result<Self> {
        let layout = config.checkpoint_layout()?;
        check_layout(weights, &layout)?;
        let base = SparseTransformerBase::new(config.base_config(CLASS)?, weights)?;
        let fp32 = weights.with_kind(Kind::Float);
        let convs = weights.with_kind(torso_kind(config.use_fp16, weights.device()));
        let upsample = config
            .upsample_shapes()?
            .into_iter()
            .enumerate()
            .map(|(i, (cin, cout))| {
                let name = format!("upsample.{i}");
                SparseSubdivideBlock3d::new(&convs.pp(&name), &fp32.pp(&name), cin, cout)
                    .context(name)
            })
            .collect::<Result<Vec<_>>>()?;
        let out_layer = SparseLinear::new(
            &fp32.pp("out_layer"),
            config.model_channels / 8,
            config.representation_config.feats_channels(),
        )
        .context("out_layer")?;
        Ok(Self {
            config,
            base,
            upsample,
            out_layer,
        })
    }

    pub fn config(&self) -> &SLatMeshDecoderConfig {
        &self.config
    }

    /// The voxel resolution of [`SLatMeshDecoder::forward_raw`]'s output, which is the
    /// resolution the mesh is extracted at: 4 × the latent resolution (256 for the published
    /// decoder; `SparseFeatures2Mesh(res=resolution*4)`).
    pub fn resolution(&self) -> i64 {
        self.config.resolution * UPSAMPLE_FACTOR
    }

    /// Whether the raw features carry the colour block (101 channels instead of 53).
    pub fn use_color(&self) -> bool {
        self.config.representation_config.use_color
    }

    /// Channels per output voxel (`SparseFeatures2Mesh.feats_channels`).
    pub fn out_channels(&self) -> i64 {
        self.config.representation_config.feats_channels()
    }

    /// The swin torso (for running it alone, e.g. to compare intermediates).
    pub fn base(&self) -> &SparseTransformerBase {
        &self.base
    }

    /// The two subdivide blocks, in order.
    pub fn upsample_blocks(&self) -> &[SparseSubdivideBlock3d] {
        &self.upsample
    }

    /// Raw per-voxel mesh features of latent voxels `x` (`[N, latent_channels]` features,
    /// batch-contiguous rows): `64N` voxels at [`SLatMeshDecoder::resolution`], coordinates
    /// `(b, x, y, z)` in the subdivision order (row `(p·8 + c1)·8 + c2` for latent row `p`),
    /// [`SLatMeshDecoder::out_channels`] fp32 features. The mesh of batch element `b` is
    /// extracted from its rows (`batch_rows(b)`), before the extractor's `−1/res` sdf bias.
    pub fn forward_raw(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let mut h = self.base.forward(x)?;
        for (i, block) in self.upsample.iter().enumerate() {
            h = block.forward(&h).context(format!("upsample.{i}"))?;
        }
        self.forward_head(&h)
    }

    /// The head on the last subdivide block's output: fp32, then `out_layer`.
    pub fn forward_head(&self, h: &SparseTensor) -> Result<SparseTensor> {
        self.out_layer.forward(&h.to_kind(Kind::Float)?)
    }
}

impl Network for SLatMeshDecoder {
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
                name: "upsample{i}_coords, upsample{i}_feats",
                description: "output of subdivide block i: [8^(i+1)·N, 4] int32 and \
                              [8^(i+1)·N, C/4 or C/8] float32, rows in subdivision order",
            },
            TensorDoc {
                name: "raw_coords",
                description: "output voxels [64N, 4] int32 at 4× the latent resolution, rows \
                              (p·8 + c1)·8 + c2",
            },
            TensorDoc {
                name: "raw_feats",
                description: "out_layer output [64N, 53 or 101], float32: the mesh extractor's \
                              input before its sdf bias",
            },
        ]
    }
    fn forward_named(&self, inputs: &NamedTensors) -> Result<NamedTensors> {
        let x = super::latent_input(inputs, self)?;
        tch::no_grad(|| {
            let mut out = NamedTensors::new();
            let mut h = self.base.forward(&x)?;
            out.insert("torso_feats".into(), h.feats().f_to_kind(Kind::Float)?);
            for (i, block) in self.upsample.iter().enumerate() {
                h = block.forward(&h).context(format!("upsample.{i}"))?;
                out.insert(format!("upsample{i}_coords"), h.coords().shallow_clone());
                out.insert(
                    format!("upsample{i}_feats"),
                    h.feats().f_to_kind(Kind::Float)?,
                );
            }
            let raw = self.forward_head(&h)?;
            out.insert("raw_coords".into(), raw.coords().shallow_clone());
            out.insert("raw_feats".into(), raw.feats().shallow_clone());
            Ok(out)
        })
    }
}
