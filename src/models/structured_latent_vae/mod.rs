//! `trellis.models.structured_latent_vae`: the decoders of the structured latent (SLAT), the
//! sparse voxels `(b, x, y, z)` with `latent_channels` features that stage 2 samples. Each is a
//! sparse swin transformer ([`base::SparseTransformerBase`]) followed by a head:
//!
//! | class | module | output |
//! | --- | --- | --- |
//! | `SLatGaussianDecoder` | [`decoder_gs`] | `num_gaussians` 3D Gaussians per voxel ([`Gaussian`](crate::representations::gaussian::Gaussian)) |
//! | `SLatRadianceFieldDecoder` | [`decoder_rf`] | a rank-`rank` tri-vector radiance field per voxel ([`Strivec`](crate::representations::radiance_field::Strivec)) |
//! | `SLatMeshDecoder` | [`decoder_mesh`] | per-voxel FlexiCubes features at 4× the resolution, for the mesh extractor |
//!
//! The three share their checkpoint arguments ([`SLatDecoderConfig`]) and differ in
//! `representation_config`. The `Elastic*` training twins (same weights, same forward) load as
//! the plain classes.
//!
//! The encoder (`SLatEncoder`) is not needed for image-to-3D inference and is not implemented.

pub mod base;
pub mod decoder_gs;
pub mod decoder_mesh;
pub mod decoder_rf;

use serde::Deserialize;

use tch::Kind;

use crate::error::{Error, Result};
use crate::models::{required_input, NamedTensors, Network, TensorDoc};
use crate::nn::transformer::mlp_hidden;
use crate::sparse::{SparseLinear, SparseTensor};

pub use base::{AttentionSchedule, SparseTransformerBase, SparseTransformerBaseConfig};
pub use decoder_gs::{
    GaussianRepresentationConfig, SLatGaussianDecoder, SLatGaussianDecoderConfig,
};
pub use decoder_mesh::{
    MeshRepresentationConfig, SLatMeshDecoder, SLatMeshDecoderConfig, SparseSubdivideBlock3d,
};
pub use decoder_rf::{
    RadianceFieldRepresentationConfig, SLatRadianceFieldDecoder, SLatRadianceFieldDecoderConfig,
};

/// The `args` of a SLat decoder checkpoint json (`SLatGaussianDecoder`, `SLatMeshDecoder`,
/// `SLatRadianceFieldDecoder`), with the reference's defaults; `R` is the decoder's
/// `representation_config`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SLatDecoderConfig<R> {
    /// Side of the latent grid (64 for the published models).
    pub resolution: i64,
    pub model_channels: i64,
    pub latent_channels: i64,
    pub num_blocks: usize,
    /// When absent (or 0), `model_channels / num_head_channels`.
    #[serde(default)]
    pub num_heads: Option<i64>,
    #[serde(default = "default_num_head_channels")]
    pub num_head_channels: Option<i64>,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// `"swin"` (the decoders' default) or `"full"`; the serialized modes are refused.
    #[serde(default = "default_attn_mode")]
    pub attn_mode: String,
    #[serde(default = "default_window_size")]
    pub window_size: Option<i64>,
    #[serde(default = "default_pe_mode")]
    pub pe_mode: String,
    #[serde(default)]
    pub use_fp16: bool,
    /// Gradient checkpointing: training only, no effect on the forward pass.
    #[serde(default)]
    pub use_checkpoint: bool,
    #[serde(default)]
    pub qk_rms_norm: bool,
    pub representation_config: R,
}

fn default_num_head_channels() -> Option<i64> {
    Some(64)
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_attn_mode() -> String {
    "swin".to_string()
}

fn default_window_size() -> Option<i64> {
    Some(8)
}

fn default_pe_mode() -> String {
    "ape".to_string()
}

impl<R> SLatDecoderConfig<R> {
    /// The published torso (`*_swin8_B_64l8*_fp16`, research/trellis.md §3.5) with the given
    /// representation.
    pub fn published_torso(representation_config: R) -> Self {
        Self {
            resolution: 64,
            model_channels: 768,
            latent_channels: 8,
            num_blocks: 12,
            num_heads: Some(12),
            num_head_channels: default_num_head_channels(),
            mlp_ratio: 4.0,
            attn_mode: default_attn_mode(),
            window_size: default_window_size(),
            pe_mode: default_pe_mode(),
            use_fp16: true,
            use_checkpoint: false,
            qk_rms_norm: false,
            representation_config,
        }
    }

    /// The number of attention heads: `num_heads or model_channels // num_head_channels`.
    pub fn heads(&self, class: &str) -> Result<i64> {
        match (self.num_heads, self.num_head_channels) {
            (Some(heads), _) if heads != 0 => Ok(heads),
            (_, Some(head_channels)) if head_channels > 0 => {
                Ok(self.model_channels / head_channels)
            }
            _ => Err(Error::checkpoint(format!(
                "{class}: neither num_heads ({:?}) nor num_head_channels ({:?}) gives a head \
                 count",
                self.num_heads, self.num_head_channels
            ))),
        }
    }

    /// The torso's configuration, after checking every argument the torso depends on
    /// (`class` names the decoder in errors).
    pub fn base_config(&self, class: &str) -> Result<SparseTransformerBaseConfig> {
        let fail = |what: String| Err(Error::checkpoint(format!("{class}: {what}")));
        let sizes = [
            ("resolution", self.resolution),
            ("model_channels", self.model_channels),
            ("latent_channels", self.latent_channels),
        ];
        if let Some((name, value)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return fail(format!("{name} must be positive, got {value}"));
        }
        let heads = self.heads(class)?;
        if heads <= 0 || self.model_channels % heads != 0 {
            return fail(format!(
                "{} model channels cannot be split into {heads} heads",
                self.model_channels
            ));
        }
        if mlp_hidden(self.model_channels, self.mlp_ratio) <= 0 {
            return fail(format!(
                "mlp_ratio {} gives no hidden units",
                self.mlp_ratio
            ));
        }
        match self.pe_mode.as_str() {
            "ape" => {}
            "rope" => {
                return Err(Error::unsupported(format!(
                    "{class}: pe_mode \"rope\" is not supported (the published decoders use \
                     \"ape\")"
                )))
            }
            other => return fail(format!("pe_mode '{other}' is not one of \"ape\", \"rope\"")),
        }
        let attention = match self.attn_mode.as_str() {
            "full" => AttentionSchedule::Full,
            "swin" => match self.window_size {
                Some(window_size) if window_size > 0 => AttentionSchedule::Swin { window_size },
                other => {
                    return fail(format!(
                        "attn_mode \"swin\" needs a positive window_size, got {other:?}"
                    ))
                }
            },
            mode @ ("shift_window" | "shift_sequence" | "shift_order") => {
                return Err(Error::unsupported(format!(
                    "{class}: attn_mode \"{mode}\" (serialized attention) is not supported (the \
                     published decoders use \"swin\")"
                )))
            }
            other => {
                return fail(format!(
                    "attn_mode '{other}' is not one of \"full\", \"swin\", \"shift_window\", \
                     \"shift_sequence\", \"shift_order\""
                ))
            }
        };
        Ok(SparseTransformerBaseConfig {
            in_channels: self.latent_channels,
            model_channels: self.model_channels,
            num_blocks: self.num_blocks,
            num_heads: heads,
            mlp_ratio: self.mlp_ratio,
            attention,
            use_fp16: self.use_fp16,
            qk_rms_norm: self.qk_rms_norm,
        })
    }
}

/// The eps of the Gaussian and radiance-field heads' `F.layer_norm` (PyTorch's default).
const HEAD_NORM_EPS: f64 = 1e-5;

/// The Gaussian and radiance-field decoders' head on torso features `h` (`[N, channels]`, any
/// float dtype): fp32, `layer_norm` without affine, then `out_layer`. (The mesh decoder has
/// no final norm.)
fn normed_head(h: &SparseTensor, channels: i64, out_layer: &SparseLinear) -> Result<SparseTensor> {
    let feats = h.feats().f_to_kind(tch::Kind::Float)?.f_layer_norm(
        [channels],
        None::<tch::Tensor>,
        None::<tch::Tensor>,
        HEAD_NORM_EPS,
        true,
    )?;
    out_layer.forward(&h.replace(feats)?)
}

/// The inputs every decoder's `forward_named` takes.
const LATENT_INPUTS: &[TensorDoc] = &[
    TensorDoc {
        name: "coords",
        description: "latent voxels [N, 4] int32 (batch, x, y, z), batch-contiguous",
    },
    TensorDoc {
        name: "feats",
        description: "latent features [N, latent_channels], float32",
    },
];

/// `(start, length)` of batch element `b`'s rows of `x` (the reference's `x.layout[b]`).
fn batch_rows(x: &SparseTensor, b: usize) -> Result<(i64, i64)> {
    let rows = x.batch_rows(b)?;
    Ok((rows.start, rows.end - rows.start))
}

/// The `coords` (`[N, 4]` integer) and `feats` inputs of a decoder's `forward_named`, as a
/// sparse tensor.
fn latent_input(inputs: &NamedTensors, network: &dyn Network) -> Result<SparseTensor> {
    let coords = required_input(inputs, "coords", network)?;
    let feats = required_input(inputs, "feats", network)?;
    SparseTensor::new(feats.shallow_clone(), coords.f_to_kind(Kind::Int)?)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::nn::layout::TensorSpec;
    use crate::weights::Weights;
    use crate::ErrorKind;

    fn random_checkpoint(dir: &std::path::Path, specs: &[TensorSpec]) -> Weights {
        crate::nn::layout::random_checkpoint(&dir.join("decoder.safetensors"), specs)
    }

    /// A small torso with the given representation.
    fn small<R>(representation_config: R) -> SLatDecoderConfig<R> {
        SLatDecoderConfig {
            resolution: 8,
            model_channels: 32,
            latent_channels: 3,
            num_blocks: 3,
            num_heads: Some(2),
            window_size: Some(4),
            ..SLatDecoderConfig::published_torso(representation_config)
        }
    }

    /// Two batch items of distinct voxels of an 8³ grid, sorted.
    fn voxels() -> Tensor {
        let mut rows = Vec::new();
        for (b, n, step) in [(0i32, 23i32, 7i32), (1, 11, 5)] {
            let mut cells: Vec<i32> = (0..n).map(|i| (i * step * 3 + b) % 512).collect();
            cells.sort_unstable();
            cells.dedup();
            for cell in cells {
                rows.extend([b, cell / 64, (cell / 8) % 8, cell % 8]);
            }
        }
        Tensor::from_slice(&rows).reshape([-1, 4])
    }

    fn latent(channels: i64) -> SparseTensor {
        let coords = voxels();
        let feats = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
            Tensor::randn([coords.size()[0], channels], (Kind::Float, Device::Cpu))
        });
        SparseTensor::new(feats, coords).unwrap()
    }

    #[test]
    fn swin_blocks_alternate_the_shift() {
        let swin = AttentionSchedule::Swin { window_size: 8 };
        let expect = |shift| crate::sparse::attention::SparseAttentionMode::Windowed {
            window_size: [8; 3],
            shift_window: [shift; 3],
        };
        assert_eq!(swin.block_mode(0), expect(0));
        assert_eq!(swin.block_mode(1), expect(4));
        assert_eq!(swin.block_mode(10), expect(0));
        assert_eq!(swin.block_mode(11), expect(4));
        assert_eq!(
            AttentionSchedule::Full.block_mode(1),
            crate::sparse::attention::SparseAttentionMode::Full
        );
    }

    /// Each decoder reads exactly its layout (fp16 and fp32 layouts, affine-free swin and full
    /// attention), keeps the voxels and returns the documented shapes.
    #[test]
    fn loaders_read_exactly_the_layout() {
        let x = latent(3);
        let n = x.num_rows();

        let gs_configs = [
            small(GaussianRepresentationConfig::trellis_image_large()),
            SLatDecoderConfig {
                use_fp16: false,
                attn_mode: "full".into(),
                num_heads: None,
                num_head_channels: Some(8),
                representation_config: GaussianRepresentationConfig {
                    num_gaussians: 5,
                    perturb_offset: false,
                    scaling_activation: "exp".into(),
                    ..GaussianRepresentationConfig::trellis_image_large()
                },
                ..small(GaussianRepresentationConfig::trellis_image_large())
            },
        ];
        for config in gs_configs {
            let dir = tempfile::tempdir().unwrap();
            let weights = random_checkpoint(dir.path(), &config.checkpoint_layout().unwrap());
            let g = config.representation_config.num_gaussians;
            let decoder = SLatGaussianDecoder::new(config.clone(), &weights).unwrap();
            assert_eq!(weights.unused(), Vec::<String>::new(), "{config:?}");
            let raw = decoder.forward_raw(&x).unwrap();
            assert_eq!(raw.feats().size(), [n, 14 * g]);
            assert!(raw.coords().equal(x.coords()));
            let gaussians = decoder.decode(&x).unwrap();
            let lengths: Vec<i64> = gaussians.iter().map(|gs| gs.len()).collect();
            let expected: Vec<i64> = x.batch_lengths().unwrap().iter().map(|l| l * g).collect();
            assert_eq!(lengths, expected);
            let rotation = gaussians[1].get_rotation().unwrap();
            let norms = rotation.norm_scalaropt_dim(2, [1i64].as_slice(), false);
            assert!(norms.allclose(&Tensor::ones_like(&norms), 1e-5, 1e-5, false));
        }

        let dir = tempfile::tempdir().unwrap();
        let config = small(RadianceFieldRepresentationConfig { rank: 3, dim: 2 });
        let weights = random_checkpoint(dir.path(), &config.checkpoint_layout().unwrap());
        let decoder = SLatRadianceFieldDecoder::new(config, &weights).unwrap();
        assert_eq!(weights.unused(), Vec::<String>::new());
        let fields = decoder.decode(&x).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(
            fields[0].trivec().size(),
            [x.batch_lengths().unwrap()[0], 3, 3, 2]
        );
        assert_eq!(i64::try_from(fields[1].depth().max()).unwrap(), 3);

        for use_color in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let config = SLatDecoderConfig {
                model_channels: 256,
                num_heads: Some(4),
                mlp_ratio: 0.25,
                num_blocks: 1,
                use_fp16: use_color,
                ..small(MeshRepresentationConfig { use_color })
            };
            let weights = random_checkpoint(dir.path(), &config.checkpoint_layout().unwrap());
            let decoder = SLatMeshDecoder::new(config, &weights).unwrap();
            assert_eq!(weights.unused(), Vec::<String>::new());
            let raw = decoder.forward_raw(&x).unwrap();
            let channels = if use_color { 101 } else { 53 };
            assert_eq!(raw.feats().size(), [64 * n, channels]);
            assert_eq!(decoder.resolution(), 32);
            // Row (p·8 + c1)·8 + c2 of voxel p: the last child of the first voxel.
            let first = Vec::<i32>::try_from(x.coords().get(0)).unwrap();
            let last_child = Vec::<i32>::try_from(raw.coords().get(63)).unwrap();
            let expected: Vec<i32> = [first[0], 4 * first[1] + 3, 4 * first[2] + 3]
                .into_iter()
                .chain([4 * first[3] + 3])
                .collect();
            assert_eq!(last_child, expected);
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mesh = SLatDecoderConfig {
            model_channels: 64,
            ..small(MeshRepresentationConfig::default())
        };
        let err = mesh.checkpoint_layout().unwrap_err();
        assert!(err.message().contains("multiple of 256"), "{err}");

        let serialized = SLatDecoderConfig {
            attn_mode: "shift_window".into(),
            ..small(RadianceFieldRepresentationConfig { rank: 2, dim: 2 })
        };
        let err = serialized.checkpoint_layout().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let rope = SLatDecoderConfig {
            pe_mode: "rope".into(),
            ..serialized.clone()
        };
        assert_eq!(
            rope.checkpoint_layout().unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        let not_pow2 = SLatDecoderConfig {
            resolution: 12,
            attn_mode: "swin".into(),
            ..serialized
        };
        let err = not_pow2.checkpoint_layout().unwrap_err();
        assert!(err.message().contains("power of 2"), "{err}");

        let relu = small(GaussianRepresentationConfig {
            scaling_activation: "relu".into(),
            ..GaussianRepresentationConfig::trellis_image_large()
        });
        assert!(relu.checkpoint_layout().is_err());
        let heads = SLatDecoderConfig {
            num_heads: Some(5),
            ..small(MeshRepresentationConfig::default())
        };
        assert!(heads
            .checkpoint_layout()
            .unwrap_err()
            .message()
            .contains("5 heads"));
        let no_window = SLatDecoderConfig {
            window_size: None,
            ..small(MeshRepresentationConfig::default())
        };
        assert!(no_window.checkpoint_layout().is_err());
    }

    /// A checkpoint missing a tensor is refused before anything is loaded, naming it.
    #[test]
    fn wrong_checkpoints_are_refused() {
        let config = small(RadianceFieldRepresentationConfig { rank: 2, dim: 2 });
        let mut layout = config.checkpoint_layout().unwrap();
        layout.retain(|spec| spec.name != "blocks.1.attn.to_out.bias");
        let dir = tempfile::tempdir().unwrap();
        let weights = random_checkpoint(dir.path(), &layout);
        let err = SLatRadianceFieldDecoder::new(config, &weights)
            .err()
            .expect("refused");
        assert!(err.message().contains("blocks.1.attn.to_out.bias"), "{err}");
    }
}
