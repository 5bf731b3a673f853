//! `models/birefnet.py`: `BiRefNet` (the dichotomous segmentation network ReconViaGen and
//! TRELLIS.2 remove backgrounds with), its `Decoder` and `SimpleConvs`.
//!
//! ```text
//! image [B, 3, H, W] (ImageNet-normalised; H, W multiples of 32)
//!  ├─ Swin → x1..x4 (strides 4..32) ─┐ mul_scl_ipt 'cat': the same on the half-size image,
//!  └─ Swin(half-size image) ─────────┘ upsampled and concatenated per level
//!  x4 ← [x1, x2, x3 resized to x4 (the last cxt_num of them)] ++ x4 ; squeeze_module(x4)
//!  decoder, level 4 → 1: block(level ++ SimpleConvs(image patches)) · sigmoid(gradient gate),
//!      upsampled and added to the lateral of the next encoder level
//!  → conv_out1(full-size features ++ SimpleConvs(image)) = logits [B, 1, H, W]
//! ```
//! The image patches are the image cut into the grid that makes them the level's size and
//! stacked on channels (`image2patches`, `b c (hg h) (wg w) -> b (c hg wg) h w`). Training-only
//! parts (multi-scale supervision heads, gradient predictions) are in the published checkpoint
//! and in [`BiRefNetConfig::checkpoint_layout`], but never run.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::decoder_blocks::{DecoderBlock, DecoderBlockKind, DecoderBlockOptions};
use super::lateral_blocks::BasicLatBlk;
use super::layers::{resize_bilinear, spatial_size, Conv2d, Conv2dSpec, Norm2d};
use super::swin_v1::{SwinConfig, SwinTransformer};
use crate::error::{Error, Result, ResultExt};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::weights::Weights;

/// `mul_scl_ipt`: how the backbone's features of the half-size image join the full-size ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MultiScaleInput {
    #[serde(rename = "")]
    None,
    #[serde(rename = "add")]
    Add,
    #[serde(rename = "cat")]
    Cat,
}

/// `dec_att`: the attention inside each decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecoderAttention {
    #[serde(rename = "")]
    None,
    #[serde(rename = "ASPPDeformable")]
    AsppDeformable,
}

/// `dec_channels_inter`: the decoder blocks' inner width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterChannels {
    /// 64.
    #[serde(rename = "fixed")]
    Fixed,
    /// A quarter of the block's input width.
    #[serde(rename = "adap")]
    Adaptive,
}

/// The architecture settings of the reference's `Config` that shape the network (the rest is
/// training), with the backbone given by its Swin arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiRefNetConfig {
    /// The Swin backbone (published: `swin_v1_l`).
    pub bb: SwinConfig,
    pub mul_scl_ipt: MultiScaleInput,
    /// How many of x1..x3 join x4 as context (0..=3).
    pub cxt_num: usize,
    /// `"<block>_x<count>"` (`BasicDecBlk_x1`, `ResBlk_x4`) or `""`.
    pub squeeze_block: String,
    /// `BasicDecBlk` or `ResBlk`.
    pub dec_blk: String,
    pub dec_att: DecoderAttention,
    /// The image patches enter every decoder level (the reference cannot run without).
    pub dec_ipt: bool,
    /// Patches on channels (`true`) or the whole image resized (`false`).
    pub dec_ipt_split: bool,
    pub dec_channels_inter: InterChannels,
    /// BatchNorm layers: the reference's `config.batch_size > 1` (else identities).
    pub batch_norm: bool,
    /// The multi-scale heads exist (training only; in the checkpoint).
    pub ms_supervision: bool,
    /// The gradient-attention gates run (needs `ms_supervision`, which creates them).
    pub out_ref: bool,
    /// The input size `(width, height)` the image is resized to (the reference's
    /// `Config.size`; the pipelines resize to 1024×1024). Sides must be multiples of 32.
    #[serde(default = "default_size")]
    pub size: [i64; 2],
}

fn default_size() -> [i64; 2] {
    [1024, 1024]
}

/// Inner width of `SimpleConvs` (`ic = 64`) and of the gradient gates (`_N = 16`), fixed
/// upstream.
const IPT_INTER_CHANNELS: i64 = 64;
const GDT_CHANNELS: i64 = 16;

/// The grid side that cuts the image into patches of each decoder level's size: levels 4..1
/// are at strides 32, 16, 8, 4; the last input is the image itself.
const PATCH_GRIDS: [i64; 5] = [32, 16, 8, 4, 1];

impl BiRefNetConfig {
    /// `ZhengPeng7/BiRefNet` (general use, 1024²): Swin-L, everything as the published
    /// `Config`.
    pub fn published() -> Self {
        Self {
            bb: SwinConfig::swin_v1_l(),
            mul_scl_ipt: MultiScaleInput::Cat,
            cxt_num: 3,
            squeeze_block: "BasicDecBlk_x1".into(),
            dec_blk: "BasicDecBlk".into(),
            dec_att: DecoderAttention::AsppDeformable,
            dec_ipt: true,
            dec_ipt_split: true,
            dec_channels_inter: InterChannels::Fixed,
            batch_norm: true,
            ms_supervision: true,
            out_ref: true,
            size: default_size(),
        }
    }

    /// `lateral_channels_in_collection`: the encoder widths from the deepest level, doubled
    /// when the half-size features are concatenated.
    pub fn lateral_channels(&self) -> Vec<i64> {
        let factor = if self.mul_scl_ipt == MultiScaleInput::Cat {
            2
        } else {
            1
        };
        self.bb
            .num_features()
            .iter()
            .rev()
            .map(|c| c * factor)
            .collect()
    }

    /// `cxt`: the widths of the context features joining x4 (x1..x3, the last `cxt_num`).
    pub fn context_channels(&self) -> Vec<i64> {
        let lateral = self.lateral_channels();
        let shallow: Vec<i64> = lateral.iter().skip(1).rev().copied().collect();
        let n = self.cxt_num.min(shallow.len());
        shallow[shallow.len() - n..].to_vec()
    }

    fn block_kind(name: &str) -> Result<DecoderBlockKind> {
        match name {
            "BasicDecBlk" => Ok(DecoderBlockKind::BasicDecBlk),
            "ResBlk" => Ok(DecoderBlockKind::ResBlk),
            other => Err(Error::unsupported(format!(
                "BiRefNet decoder block '{other}' (recon has BasicDecBlk and ResBlk)"
            ))),
        }
    }

    /// The squeeze module's block kind and count (`None` for `""`).
    fn squeeze(&self) -> Result<Option<(DecoderBlockKind, usize)>> {
        if self.squeeze_block.is_empty() {
            return Ok(None);
        }
        let parsed = self
            .squeeze_block
            .split_once("_x")
            .and_then(|(kind, count)| Some((kind, count.parse::<usize>().ok()?)));
        match parsed {
            Some((kind, count)) if count > 0 => Ok(Some((Self::block_kind(kind)?, count))),
            _ => Err(Error::format(format!(
                "BiRefNet squeeze_block '{}' is not '<block>_x<count>'",
                self.squeeze_block
            ))),
        }
    }

    fn block_options(&self, kind: DecoderBlockKind) -> DecoderBlockOptions {
        DecoderBlockOptions {
            kind,
            deformable_aspp: self.dec_att == DecoderAttention::AsppDeformable,
            adaptive_inter: self.dec_channels_inter == InterChannels::Adaptive,
            batch_norm: self.batch_norm,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.bb.validate()?;
        if self.bb.depths.len() != 4 {
            return Err(Error::format(format!(
                "BiRefNet needs a 4-stage backbone, got depths {:?}",
                self.bb.depths
            )));
        }
        if !self.dec_ipt {
            return Err(Error::unsupported(
                "BiRefNet with dec_ipt off (the reference's decoder cannot be built without it)",
            ));
        }
        if self.out_ref && !self.ms_supervision {
            return Err(Error::format(
                "BiRefNet out_ref needs ms_supervision (the gradient gates are created with it)",
            ));
        }
        if self.cxt_num > 3 {
            return Err(Error::format(format!(
                "BiRefNet cxt_num is {}, at most 3",
                self.cxt_num
            )));
        }
        if self.size.iter().any(|&s| s < 32 || s % 32 != 0) {
            return Err(Error::format(format!(
                "BiRefNet size {:?}: sides must be positive multiples of 32",
                self.size
            )));
        }
        Self::block_kind(&self.dec_blk)?;
        self.squeeze()?;
        Ok(())
    }

    /// Every float tensor of the reference's `state_dict()` for this config, in its order
    /// (the int64 buffers `relative_position_index` and `num_batches_tracked` are left out:
    /// recon recomputes or ignores them). Includes the training-only heads.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let kind = Kind::Float;
        let mut specs = SwinTransformer::layout("bb", &self.bb, kind);
        if let Some((block, count)) = self.squeeze()? {
            let (in_channels, out_channels) = self.squeeze_channels();
            for i in 0..count {
                specs.extend(DecoderBlock::layout(
                    &format!("squeeze_module.{i}"),
                    &self.block_options(block),
                    in_channels,
                    out_channels,
                    kind,
                ));
            }
        }
        specs.extend(Decoder::layout("decoder", self, kind)?);
        Ok(specs)
    }

    /// Input and output widths of every squeeze block (the reference gives each block the
    /// same input width).
    fn squeeze_channels(&self) -> (i64, i64) {
        let lateral = self.lateral_channels();
        let context: i64 = self.context_channels().iter().sum();
        (lateral[0] + context, lateral[0])
    }
}

/// `SimpleConvs(in, out)`: two 3×3 convolutions, no activation.
struct SimpleConvs {
    conv1: Conv2d,
    conv_out: Conv2d,
}

impl SimpleConvs {
    fn specs(in_channels: i64, out_channels: i64) -> [Conv2dSpec; 2] {
        [
            Conv2dSpec::new(in_channels, IPT_INTER_CHANNELS, 3).padding(1),
            Conv2dSpec::new(IPT_INTER_CHANNELS, out_channels, 3).padding(1),
        ]
    }

    fn new(weights: &Weights, in_channels: i64, out_channels: i64) -> Result<Self> {
        let [conv1, conv_out] = Self::specs(in_channels, out_channels);
        Ok(Self {
            conv1: Conv2d::new(&weights.pp("conv1"), conv1)?,
            conv_out: Conv2d::new(&weights.pp("conv_out"), conv_out)?,
        })
    }

    fn layout(prefix: &str, in_channels: i64, out_channels: i64, kind: Kind) -> Vec<TensorSpec> {
        let [conv1, conv_out] = Self::specs(in_channels, out_channels);
        let mut specs = conv1.layout(&format!("{prefix}.conv1"), kind);
        specs.extend(conv_out.layout(&format!("{prefix}.conv_out"), kind));
        specs
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv_out.forward(&self.conv1.forward(x)?)
    }
}

/// `gdt_convs_k` (3×3 convolution to 16, BatchNorm, ReLU) and `gdt_convs_attn_k` (1×1 to one
/// channel): the gate `sigmoid(attn(convs(p)))` that multiplies a decoder level.
struct GradientGate {
    conv: Conv2d,
    bn: Norm2d,
    attn: Conv2d,
}

impl GradientGate {
    fn conv_spec(channels: i64) -> Conv2dSpec {
        Conv2dSpec::new(channels, GDT_CHANNELS, 3).padding(1)
    }

    fn head_spec() -> Conv2dSpec {
        Conv2dSpec::new(GDT_CHANNELS, 1, 1)
    }

    fn new(weights: &Weights, level: usize, channels: i64, batch_norm: bool) -> Result<Self> {
        let convs = weights.pp(format!("gdt_convs_{level}"));
        Ok(Self {
            conv: Conv2d::new(&convs.pp(0), Self::conv_spec(channels))?,
            bn: Norm2d::new(&convs.pp(1), GDT_CHANNELS, batch_norm)?,
            attn: Conv2d::new(
                &weights.pp(format!("gdt_convs_attn_{level}")).pp(0),
                Self::head_spec(),
            )?,
        })
    }

    fn gate(&self, p: &Tensor) -> Result<Tensor> {
        let h = self.bn.forward(&self.conv.forward(p)?)?.f_relu()?;
        Ok(self.attn.forward(&h)?.f_sigmoid()?)
    }
}

/// The decoder levels, deepest first: index 0 is level 4 (`decoder_block4`, `lateral_block4`,
/// `gdt_convs_4`, `ipt_blk5`), index 3 is level 1.
struct Decoder {
    /// `ipt_blk5` .. `ipt_blk1`.
    ipt_blks: Vec<SimpleConvs>,
    /// `decoder_block4` .. `decoder_block1`.
    blocks: Vec<DecoderBlock>,
    /// `lateral_block4` .. `lateral_block2`.
    laterals: Vec<BasicLatBlk>,
    /// `gdt_convs_4` .. `gdt_convs_2` when `out_ref`.
    gates: Vec<GradientGate>,
    conv_out1: Conv2d,
    split: bool,
}

/// The decoder's widths, from the encoder's (`Decoder.__init__` without the pyramid neck).
struct DecoderChannels {
    ipt_in: [i64; 5],
    ipt_out: [i64; 5],
    block_in: [i64; 4],
    block_out: [i64; 4],
    lateral: [i64; 4],
    out_in: i64,
}

impl DecoderChannels {
    fn of(cfg: &BiRefNetConfig) -> Result<Self> {
        let lateral: [i64; 4] = cfg
            .lateral_channels()
            .try_into()
            .map_err(|_| Error::internal("BiRefNet needs four lateral widths"))?;
        let ipt_in = PATCH_GRIDS.map(|g| if cfg.dec_ipt_split { 3 * g * g } else { 3 });
        let per_level = lateral.map(|c| c / 8);
        let ipt_out = [
            per_level[0],
            per_level[0],
            per_level[1],
            per_level[2],
            per_level[3],
        ];
        let block_out = [lateral[1], lateral[2], lateral[3], lateral[3] / 2];
        let block_in = [0, 1, 2, 3].map(|i| lateral[i] + per_level[i.max(1) - 1]);
        Ok(Self {
            ipt_in,
            ipt_out,
            block_in,
            block_out,
            lateral,
            out_in: block_out[3] + ipt_out[4],
        })
    }
}

impl Decoder {
    fn new(weights: &Weights, cfg: &BiRefNetConfig) -> Result<Self> {
        let ch = DecoderChannels::of(cfg)?;
        let opts = cfg.block_options(BiRefNetConfig::block_kind(&cfg.dec_blk)?);
        let ipt_blks = (0..5)
            .map(|i| {
                SimpleConvs::new(
                    &weights.pp(format!("ipt_blk{}", 5 - i)),
                    ch.ipt_in[i],
                    ch.ipt_out[i],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let blocks = (0..4)
            .map(|i| {
                DecoderBlock::new(
                    &weights.pp(format!("decoder_block{}", 4 - i)),
                    &opts,
                    ch.block_in[i],
                    ch.block_out[i],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let laterals = (0..3)
            .map(|i| {
                BasicLatBlk::new(
                    &weights.pp(format!("lateral_block{}", 4 - i)),
                    ch.lateral[i + 1],
                    ch.block_out[i],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let gates = if cfg.out_ref {
            (0..3)
                .map(|i| GradientGate::new(weights, 4 - i, ch.block_out[i], cfg.batch_norm))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            ipt_blks,
            blocks,
            laterals,
            gates,
            conv_out1: Conv2d::new(
                &weights.pp("conv_out1").pp(0),
                Conv2dSpec::new(ch.out_in, 1, 1),
            )?,
            split: cfg.dec_ipt_split,
        })
    }

    fn layout(prefix: &str, cfg: &BiRefNetConfig, kind: Kind) -> Result<Vec<TensorSpec>> {
        let ch = DecoderChannels::of(cfg)?;
        let opts = cfg.block_options(BiRefNetConfig::block_kind(&cfg.dec_blk)?);
        let mut specs = Vec::new();
        for i in 0..5 {
            specs.extend(SimpleConvs::layout(
                &format!("{prefix}.ipt_blk{}", 5 - i),
                ch.ipt_in[i],
                ch.ipt_out[i],
                kind,
            ));
        }
        for i in 0..4 {
            specs.extend(DecoderBlock::layout(
                &format!("{prefix}.decoder_block{}", 4 - i),
                &opts,
                ch.block_in[i],
                ch.block_out[i],
                kind,
            ));
        }
        specs.extend(
            Conv2dSpec::new(ch.out_in, 1, 1).layout(&format!("{prefix}.conv_out1.0"), kind),
        );
        for i in 0..3 {
            specs.extend(BasicLatBlk::layout(
                &format!("{prefix}.lateral_block{}", 4 - i),
                ch.lateral[i + 1],
                ch.block_out[i],
                kind,
            ));
        }
        if cfg.ms_supervision {
            for i in 0..3 {
                specs.extend(
                    Conv2dSpec::new(ch.block_out[i], 1, 1)
                        .layout(&format!("{prefix}.conv_ms_spvn_{}", 4 - i), kind),
                );
            }
            if cfg.out_ref {
                for i in 0..3 {
                    let convs = format!("{prefix}.gdt_convs_{}", 4 - i);
                    specs.extend(
                        GradientGate::conv_spec(ch.block_out[i])
                            .layout(&format!("{convs}.0"), kind),
                    );
                    specs.extend(Norm2d::layout(
                        &format!("{convs}.1"),
                        GDT_CHANNELS,
                        cfg.batch_norm,
                        kind,
                    ));
                }
                for head in ["pred", "attn"] {
                    for i in 0..3 {
                        specs.extend(
                            GradientGate::head_spec()
                                .layout(&format!("{prefix}.gdt_convs_{head}_{}.0", 4 - i), kind),
                        );
                    }
                }
            }
        }
        Ok(specs)
    }

    /// The image input of decoder input `i` (0: level 4 … 4: full size) at `size`: the image
    /// cut into the patches of that level (or the image itself), resized to `size`.
    fn image_input(&self, i: usize, image: &Tensor, size: [i64; 2]) -> Result<Tensor> {
        let patches = if self.split {
            image_patches(image, size)?
        } else {
            image.shallow_clone()
        };
        self.ipt_blks[i].forward(&resize_bilinear(&patches, size)?)
    }

    fn forward(
        &self,
        image: &Tensor,
        features: [&Tensor; 4],
        trace: &mut Option<&mut BTreeMap<String, Tensor>>,
    ) -> Result<Tensor> {
        let [x1, x2, x3, x4] = features;
        let skips = [x3, x2, x1];
        let mut level = Tensor::f_cat(
            &[
                x4.shallow_clone(),
                self.image_input(0, image, spatial_size(x4)?)?,
            ],
            1,
        )?;
        for (i, block) in self.blocks.iter().enumerate() {
            let mut p = block.forward(&level)?;
            record(trace, &format!("dec.block{}", 4 - i), &p);
            if let Some(gate) = self.gates.get(i) {
                let g = gate.gate(&p)?;
                record(trace, &format!("dec.gdt_attn{}", 4 - i), &g);
                p = p.f_mul(&g)?;
            }
            level = match skips.get(i) {
                Some(skip) => {
                    let size = spatial_size(skip)?;
                    let merged =
                        resize_bilinear(&p, size)?.f_add(&self.laterals[i].forward(skip)?)?;
                    Tensor::f_cat(&[merged, self.image_input(i + 1, image, size)?], 1)?
                }
                None => {
                    let size = spatial_size(image)?;
                    let full = resize_bilinear(&p, size)?;
                    Tensor::f_cat(&[full, self.image_input(4, image, size)?], 1)?
                }
            };
        }
        self.conv_out1.forward(&level)
    }
}

/// `image2patches(image, patch_ref)`: `[B, C, gh·h, gw·w]` → `[B, C·gh·gw, h, w]` with the
/// grid `gh = H // ref_h`, `gw = W // ref_w` (channel-major, then grid rows, then columns).
fn image_patches(image: &Tensor, reference: [i64; 2]) -> Result<Tensor> {
    let [b, c, h, w]: [i64; 4] = image
        .size()
        .try_into()
        .map_err(|_| Error::invalid_argument("BiRefNet's image must be [B, 3, H, W]"))?;
    let (gh, gw) = (h / reference[0].max(1), w / reference[1].max(1));
    if gh < 1 || gw < 1 || h % gh != 0 || w % gw != 0 {
        return Err(Error::invalid_argument(format!(
            "BiRefNet cannot cut a {h}x{w} image into patches of {}x{}: give a size that is a \
             multiple of 32",
            reference[0], reference[1]
        )));
    }
    Ok(image
        .f_reshape([b, c, gh, h / gh, gw, w / gw])?
        .f_permute([0, 1, 2, 4, 3, 5])?
        .f_reshape([b, c * gh * gw, h / gh, w / gw])?)
}

fn record(trace: &mut Option<&mut BTreeMap<String, Tensor>>, name: &str, t: &Tensor) {
    if let Some(map) = trace {
        map.insert(name.to_string(), t.shallow_clone());
    }
}

/// `BiRefNet` in eval mode.
pub struct BiRefNet {
    config: BiRefNetConfig,
    bb: SwinTransformer,
    squeeze_module: Vec<DecoderBlock>,
    decoder: Decoder,
}

impl BiRefNet {
    /// Builds the network from `weights` (the checkpoint's root view), after checking every
    /// tensor of [`BiRefNetConfig::checkpoint_layout`] is there with its shape.
    pub fn new(config: &BiRefNetConfig, weights: &Weights) -> Result<Self> {
        check_layout(weights, &config.checkpoint_layout()?)?;
        let squeeze_module = match config.squeeze()? {
            Some((kind, count)) => {
                let (in_channels, out_channels) = config.squeeze_channels();
                (0..count)
                    .map(|i| {
                        DecoderBlock::new(
                            &weights.pp("squeeze_module").pp(i),
                            &config.block_options(kind),
                            in_channels,
                            out_channels,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => Vec::new(),
        };
        Ok(Self {
            config: config.clone(),
            bb: SwinTransformer::new(&weights.pp("bb"), &config.bb)?,
            squeeze_module,
            decoder: Decoder::new(&weights.pp("decoder"), config)?,
        })
    }

    /// Loads a `model.safetensors` in the published layout, in fp32 on `device` (the
    /// reference's precision: ReconViaGen and TRELLIS.2 run the model unconverted).
    pub fn load(path: &Path, config: &BiRefNetConfig, device: Device) -> Result<Self> {
        let weights = Weights::open(path, Kind::Float, device)?;
        Self::new(config, &weights).context(format!("BiRefNet from {}", path.display()))
    }

    pub fn config(&self) -> &BiRefNetConfig {
        &self.config
    }

    /// The mask logits `[B, 1, H, W]` (`model(image)[-1]`, before the sigmoid) of an
    /// ImageNet-normalised `[B, 3, H, W]` image whose sides are multiples of 32.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.run(image, &mut None))
    }

    /// [`BiRefNet::forward`] and the intermediates the golden tests compare: `bb.full.x{i}`,
    /// `bb.half.x{i}`, `enc.x{i}`, `squeeze`, `dec.block{k}`, `dec.gdt_attn{k}`.
    pub fn forward_traced(&self, image: &Tensor) -> Result<(Tensor, BTreeMap<String, Tensor>)> {
        let mut map = BTreeMap::new();
        let logits = tch::no_grad(|| self.run(image, &mut Some(&mut map)))?;
        Ok((logits, map))
    }

    fn run(
        &self,
        image: &Tensor,
        trace: &mut Option<&mut BTreeMap<String, Tensor>>,
    ) -> Result<Tensor> {
        let [h, w] = spatial_size(image)?;
        if h % 32 != 0 || w % 32 != 0 || image.size()[1] != 3 {
            return Err(Error::invalid_argument(format!(
                "BiRefNet takes [B, 3, H, W] images with H and W multiples of 32, got {:?}",
                image.size()
            )));
        }
        let [x1, x2, x3, x4] = self.forward_enc(image, trace)?;
        let mut x4 = x4;
        for block in &self.squeeze_module {
            x4 = block.forward(&x4)?;
        }
        if !self.squeeze_module.is_empty() {
            record(trace, "squeeze", &x4);
        }
        self.decoder.forward(image, [&x1, &x2, &x3, &x4], trace)
    }

    /// `forward_enc`: the backbone's levels, joined with the half-size image's, x4 with the
    /// context levels in front.
    fn forward_enc(
        &self,
        image: &Tensor,
        trace: &mut Option<&mut BTreeMap<String, Tensor>>,
    ) -> Result<[Tensor; 4]> {
        let backbone = |x: &Tensor,
                        name: &str,
                        trace: &mut Option<&mut BTreeMap<String, Tensor>>|
         -> Result<[Tensor; 4]> {
            let levels: [Tensor; 4] = self
                .bb
                .forward(x)?
                .try_into()
                .map_err(|_| Error::internal("the Swin backbone must give four levels"))?;
            for (i, t) in levels.iter().enumerate() {
                record(trace, &format!("bb.{name}.x{}", i + 1), t);
            }
            Ok(levels)
        };
        let mut levels = backbone(image, "full", trace)?;
        if self.config.mul_scl_ipt != MultiScaleInput::None {
            let [h, w] = spatial_size(image)?;
            let half = resize_bilinear(image, [h / 2, w / 2])?;
            let half_levels = backbone(&half, "half", trace)?;
            for (level, extra) in levels.iter_mut().zip(&half_levels) {
                let extra = resize_bilinear(extra, spatial_size(level)?)?;
                *level = match self.config.mul_scl_ipt {
                    MultiScaleInput::Cat => Tensor::f_cat(&[level.shallow_clone(), extra], 1)?,
                    _ => level.f_add(&extra)?,
                };
            }
        }
        let n = self.config.cxt_num.min(3);
        if n > 0 {
            let size = spatial_size(&levels[3])?;
            let mut parts = levels[3 - n..3]
                .iter()
                .map(|t| resize_bilinear(t, size))
                .collect::<Result<Vec<_>>>()?;
            parts.push(levels[3].shallow_clone());
            levels[3] = Tensor::f_cat(&parts, 1)?;
        }
        for (i, t) in levels.iter().enumerate() {
            record(trace, &format!("enc.x{}", i + 1), t);
        }
        Ok(levels)
    }
}
