//! `trellis.models.sparse_structure_vae`: the sparse-structure VAE decoder, which turns the
//! stage-1 latent `[B, latent, R, R, R]` into occupancy logits `[B, out, 4R, 4R, 4R]` (for the
//! published 16³ latent, a 64³ grid; a voxel is occupied where the logit is > 0).
//!
//! Only the decoder is needed at inference; the encoder is used in training only.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::spatial::pixel_shuffle_3d;
use crate::nn::{Conv3d, Norm};
use crate::weights::Weights;

/// The `args` of a `SparseStructureDecoder` checkpoint json.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SparseStructureDecoderConfig {
    pub out_channels: i64,
    pub latent_channels: i64,
    pub num_res_blocks: usize,
    pub channels: Vec<i64>,
    #[serde(default = "default_middle_blocks")]
    pub num_res_blocks_middle: usize,
    #[serde(default = "default_norm_type")]
    pub norm_type: String,
    #[serde(default)]
    pub use_fp16: bool,
}

fn default_middle_blocks() -> usize {
    2
}

fn default_norm_type() -> String {
    "layer".to_string()
}

impl SparseStructureDecoderConfig {
    /// `ss_dec_conv3d_16l8_fp16` of microsoft/TRELLIS-image-large.
    pub fn trellis_image_large() -> Self {
        Self {
            out_channels: 1,
            latent_channels: 8,
            num_res_blocks: 2,
            channels: vec![512, 128, 32],
            num_res_blocks_middle: 2,
            norm_type: "layer".to_string(),
            use_fp16: true,
        }
    }

    /// Every tensor the decoder reads, in `state_dict()` order, with the dtype the reference
    /// stores it in (`use_fp16` makes the torso convs F16; norms and the outer layers stay F32).
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let torso = if self.use_fp16 {
            Kind::Half
        } else {
            Kind::Float
        };
        let first = self.channels[0];
        let last = self.channels[self.channels.len() - 1];
        let mut specs = conv_layout("input_layer", self.latent_channels, first, Kind::Float);
        for i in 0..self.num_res_blocks_middle {
            specs.extend(res_block_layout(&format!("middle_block.{i}"), first, torso));
        }
        let mut index = 0;
        for (level, &ch) in self.channels.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                specs.extend(res_block_layout(&format!("blocks.{index}"), ch, torso));
                index += 1;
            }
            if let Some(&next) = self.channels.get(level + 1) {
                specs.extend(conv_layout(
                    &format!("blocks.{index}.conv"),
                    ch,
                    next * 8,
                    torso,
                ));
                index += 1;
            }
        }
        specs.extend(norm_layout("out_layer.0", last));
        specs.extend(conv_layout(
            "out_layer.2",
            last,
            self.out_channels,
            Kind::Float,
        ));
        Ok(specs)
    }

    fn validate(&self) -> Result<()> {
        let positive = self.out_channels > 0
            && self.latent_channels > 0
            && !self.channels.is_empty()
            && self.channels.iter().all(|&c| c > 0);
        if !positive {
            return Err(Error::checkpoint(format!(
                "SparseStructureDecoder: channel counts must be positive, got {self:?}"
            )));
        }
        Ok(())
    }
}

fn conv_layout(prefix: &str, inputs: i64, outputs: i64, kind: Kind) -> Vec<TensorSpec> {
    vec![
        TensorSpec::new(
            format!("{prefix}.weight"),
            &[outputs, inputs, 3, 3, 3],
            kind,
        ),
        TensorSpec::new(format!("{prefix}.bias"), &[outputs], kind),
    ]
}

/// Layer and group norms alike hold an F32 affine `weight` and `bias` of `[C]`.
fn norm_layout(prefix: &str, channels: i64) -> Vec<TensorSpec> {
    vec![
        TensorSpec::new(format!("{prefix}.weight"), &[channels], Kind::Float),
        TensorSpec::new(format!("{prefix}.bias"), &[channels], Kind::Float),
    ]
}

fn res_block_layout(prefix: &str, channels: i64, conv_kind: Kind) -> Vec<TensorSpec> {
    let mut specs = norm_layout(&format!("{prefix}.norm1"), channels);
    specs.extend(norm_layout(&format!("{prefix}.norm2"), channels));
    specs.extend(conv_layout(
        &format!("{prefix}.conv1"),
        channels,
        channels,
        conv_kind,
    ));
    specs.extend(conv_layout(
        &format!("{prefix}.conv2"),
        channels,
        channels,
        conv_kind,
    ));
    specs
}

/// `ResBlock3d(C)`: `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
struct ResBlock3d {
    norm1: Norm,
    conv1: Conv3d,
    norm2: Norm,
    conv2: Conv3d,
}

impl ResBlock3d {
    fn new(weights: &Weights, norm_type: &str, channels: i64) -> Result<Self> {
        // The published decoder only has equal in/out channels, so the skip is the identity.
        Ok(Self {
            norm1: Norm::new(&weights.pp("norm1"), norm_type, channels)?,
            conv1: Conv3d::new(&weights.pp("conv1"), channels, channels, 3)?,
            norm2: Norm::new(&weights.pp("norm2"), norm_type, channels)?,
            conv2: Conv3d::new(&weights.pp("conv2"), channels, channels, 3)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.f_silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.f_silu()?)?;
        Ok(h.f_add(x)?)
    }
}

/// `UpsampleBlock3d(in, out)` in "conv" mode: conv to `8·out` channels, then pixel shuffle ×2.
struct UpsampleBlock3d {
    conv: Conv3d,
}

impl UpsampleBlock3d {
    fn new(weights: &Weights, in_channels: i64, out_channels: i64) -> Result<Self> {
        Ok(Self {
            conv: Conv3d::new(&weights.pp("conv"), in_channels, out_channels * 8, 3)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        pixel_shuffle_3d(&self.conv.forward(x)?, 2)
    }
}

enum DecoderBlock {
    Res(ResBlock3d),
    Up(UpsampleBlock3d),
}

impl DecoderBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Res(b) => b.forward(x),
            Self::Up(b) => b.forward(x),
        }
    }
}

/// The sparse-structure decoder (`SparseStructureDecoder`, "D_S" in the TRELLIS paper).
pub struct SparseStructureDecoder {
    config: SparseStructureDecoderConfig,
    input_layer: Conv3d,
    middle_block: Vec<ResBlock3d>,
    blocks: Vec<DecoderBlock>,
    out_norm: Norm,
    out_conv: Conv3d,
    /// Dtype of the torso (middle_block + blocks): fp16 on CUDA when the checkpoint says
    /// `use_fp16`, as the reference runs it; fp32 otherwise.
    torso_kind: Kind,
}

impl SparseStructureDecoder {
    /// Builds the decoder from a checkpoint view whose default kind is fp32.
    pub fn new(config: SparseStructureDecoderConfig, weights: &Weights) -> Result<Self> {
        // Every missing or mis-shaped tensor in one error, before anything is read.
        check_layout(weights, &config.checkpoint_layout()?)?;
        let torso_kind = torso_kind(config.use_fp16, weights.device());
        let torso = weights.with_kind(torso_kind);
        let norm = config.norm_type.as_str();
        let ch = &config.channels;
        let first = ch[0];
        let last = ch[ch.len() - 1];

        let input_layer = Conv3d::new(&weights.pp("input_layer"), config.latent_channels, first, 3)
            .context("input_layer")?;
        let middle_block = (0..config.num_res_blocks_middle)
            .map(|i| ResBlock3d::new(&torso.pp("middle_block").pp(i), norm, first))
            .collect::<Result<Vec<_>>>()?;
        let blocks = Self::build_blocks(&config, &torso.pp("blocks"))?;
        let out = weights.pp("out_layer");
        let out_norm = Norm::new(&out.pp(0), norm, last)?;
        let out_conv = Conv3d::new(&out.pp(2), last, config.out_channels, 3)?;
        Ok(Self {
            config,
            input_layer,
            middle_block,
            blocks,
            out_norm,
            out_conv,
            torso_kind,
        })
    }

    /// `blocks`: per level, `num_res_blocks` ResBlocks, then an upsample to the next level.
    fn build_blocks(
        config: &SparseStructureDecoderConfig,
        weights: &Weights,
    ) -> Result<Vec<DecoderBlock>> {
        let mut blocks = Vec::new();
        let norm = config.norm_type.as_str();
        for (level, &ch) in config.channels.iter().enumerate() {
            for _ in 0..config.num_res_blocks {
                let w = weights.pp(blocks.len());
                blocks.push(DecoderBlock::Res(ResBlock3d::new(&w, norm, ch)?));
            }
            if let Some(&next) = config.channels.get(level + 1) {
                let w = weights.pp(blocks.len());
                blocks.push(DecoderBlock::Up(UpsampleBlock3d::new(&w, ch, next)?));
            }
        }
        Ok(blocks)
    }

    pub fn config(&self) -> &SparseStructureDecoderConfig {
        &self.config
    }

    /// `x`: latent `[B, latent_channels, D, H, W]` (fp32) → logits `[B, out, 4D, 4H, 4W]` (fp32).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.size();
        if shape.len() != 5 || shape[1] != self.config.latent_channels {
            return Err(Error::invalid_argument(format!(
                "SparseStructureDecoder: input must be [B, {}, D, H, W], got {shape:?}",
                self.config.latent_channels
            )));
        }
        let input_kind = x.kind();
        let mut h = self
            .input_layer
            .forward(&x.f_to_kind(Kind::Float)?)?
            .f_to_kind(self.torso_kind)?;
        for block in &self.middle_block {
            h = block.forward(&h)?;
        }
        for block in &self.blocks {
            h = block.forward(&h)?;
        }
        let h = h.f_to_kind(Kind::Float)?;
        let h = self
            .out_conv
            .forward(&self.out_norm.forward(&h)?.f_silu()?)?;
        Ok(h.f_to_kind(input_kind)?)
    }
}

/// The torso dtype the reference uses: fp16 where `use_fp16` and a GPU runs it. On CPU we
/// compute in fp32 (the fp16-rounded weights upcast), which is what parity is proven against.
pub fn torso_kind(use_fp16: bool, device: Device) -> Kind {
    if use_fp16 && device.is_cuda() {
        Kind::Half
    } else {
        Kind::Float
    }
}
