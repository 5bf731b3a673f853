//! `vggt/models/aggregator.py`: VGGT's alternating-attention aggregator.
//!
//! ```text
//! x        = (images − ImageNet mean) / std                          [B·S, 3, H, W]
//! patches  = DINOv2(x).x_norm_patchtokens                            [B·S, P, C]
//! tokens   = cat(camera_token[f], register_token[f], patches)        f = 0 for frame 0, else 1
//! pos      = (row, col) + 1 per patch, (0, 0) for the 1 + R special tokens
//! for i in 0..depth:
//!     tokens = frame_blocks[i](tokens [B·S, T, C], pos)             attention within a frame
//!     tokens = global_blocks[i](tokens [B, S·T, C], pos)            attention across frames
//!     out[i] = cat(frame output, global output, -1)                  [B, S, T, 2C]
//! ```
//! Global attention reuses the per-frame positions for every frame: frames are told apart only
//! by the first frame's own camera/register tokens. The patch embedding is a DINOv2 ViT with
//! registers in the torch.hub layout (`patch_embed.*`), its position embedding resampled
//! bicubically with antialias to `(H/14, W/14)` when the grid is not the trained square one
//! ([`Dinov2`] does that).

use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::models::dinov2::{imagenet_normalize, Dinov2, Dinov2Config, Dinov2Layout};
use crate::nn::layout::{prefixed, TensorSpec};
use crate::weights::Weights;

use super::block::{Block, BlockConfig};
use super::rope::{patch_positions, Rope2d, ROPE_FREQUENCY};

/// The DINOv2 patch embedding's LayerNorm eps (`partial(nn.LayerNorm, eps=1e-6)`).
const PATCH_EMBED_NORM_EPS: f64 = 1e-6;
/// The aggregator's blocks' LayerScale init (`init_values=0.01`): its gammas are loaded.
/// The patch embedding is built with `init_values=1.0`; both only mean "LayerScale present".
const PATCH_EMBED_INIT_VALUES: f64 = 1.0;

/// The sizes of an `Aggregator` (the published one: 518, 14, 1024, depth 24, 16 heads, MLP 4,
/// 4 registers, a ViT-L/14 patch embed of 24 blocks and 16 heads).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    pub img_size: i64,
    pub patch_size: i64,
    pub embed_dim: i64,
    pub depth: usize,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    pub num_register_tokens: i64,
    pub patch_embed_depth: usize,
    pub patch_embed_num_heads: i64,
}

impl AggregatorConfig {
    /// The patch embedding: `vit_large(img_size, patch_size, num_register_tokens,
    /// interpolate_antialias=True, interpolate_offset=0.0, block_chunks=0, init_values=1.0)`,
    /// at the aggregator's width.
    pub fn patch_embed(&self) -> Dinov2Config {
        Dinov2Config {
            img_size: self.img_size,
            patch_size: self.patch_size,
            in_chans: 3,
            embed_dim: self.embed_dim,
            depth: self.patch_embed_depth,
            num_heads: self.patch_embed_num_heads,
            mlp_ratio: self.mlp_ratio,
            qkv_bias: true,
            ffn_bias: true,
            proj_bias: true,
            drop_path_rate: 0.0,
            drop_path_uniform: false,
            init_values: Some(PATCH_EMBED_INIT_VALUES),
            ffn_layer: "mlp".to_string(),
            block_chunks: 0,
            num_register_tokens: self.num_register_tokens,
            interpolate_antialias: true,
            interpolate_offset: 0.0,
            layer_norm_eps: PATCH_EMBED_NORM_EPS,
        }
    }

    /// The frame and global blocks: q/k norm and RoPE.
    pub fn block(&self) -> BlockConfig {
        BlockConfig {
            dim: self.embed_dim,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            qk_norm: true,
        }
    }

    /// Tokens before the patches in every frame: the camera token and the registers.
    pub fn patch_start_idx(&self) -> i64 {
        1 + self.num_register_tokens
    }

    /// Width of each output: frame and global outputs side by side.
    pub fn output_dim(&self) -> i64 {
        2 * self.embed_dim
    }

    pub fn validate(&self) -> Result<()> {
        self.block().validate()?;
        if self.num_register_tokens < 0 || self.depth == 0 {
            return Err(Error::checkpoint(format!(
                "VGGT aggregator: depth must be positive and num_register_tokens non-negative, \
                 got {self:?}"
            )));
        }
        if (self.embed_dim / self.num_heads) % 4 != 0 {
            return Err(Error::checkpoint(format!(
                "VGGT aggregator: 2-D RoPE needs a head width divisible by 4, got {}",
                self.embed_dim / self.num_heads
            )));
        }
        Ok(())
    }

    /// Every tensor of the aggregator under `prefix`, in `state_dict()` order, stored fp32.
    pub fn layout(&self, prefix: &str) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let c = self.embed_dim;
        let r = self.num_register_tokens;
        let mut specs = vec![
            TensorSpec::new(format!("{prefix}.camera_token"), &[1, 2, 1, c], Kind::Float),
            TensorSpec::new(
                format!("{prefix}.register_token"),
                &[1, 2, r, c],
                Kind::Float,
            ),
        ];
        let patch_embed = self
            .patch_embed()
            .expected_tensors(Dinov2Layout::TorchHub)?
            .into_iter()
            .map(|(name, shape)| TensorSpec::new(name, &shape, Kind::Float))
            .collect();
        specs.extend(prefixed(&format!("{prefix}.patch_embed"), patch_embed));
        for kind in ["frame_blocks", "global_blocks"] {
            for i in 0..self.depth {
                specs.extend(self.block().layout(&format!("{prefix}.{kind}.{i}")));
            }
        }
        Ok(specs)
    }
}

/// The aggregator's outputs: `layers[i]` is `Some([B, S, T, 2C])` for each kept layer `i`.
pub struct AggregatorOutput {
    pub layers: Vec<Option<Tensor>>,
    /// Index of the first patch token in `T` (`1 + num_register_tokens`).
    pub patch_start_idx: i64,
}

impl AggregatorOutput {
    /// Output `index`, or an error if it was not kept.
    pub fn layer(&self, index: usize) -> Result<&Tensor> {
        self.layers
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "VGGT aggregator: layer {index} of {} was not kept",
                    self.layers.len()
                ))
            })
    }

    /// The last layer's output (the camera head's input), if kept.
    pub fn last(&self) -> Result<&Tensor> {
        self.layer(self.layers.len().saturating_sub(1))
    }
}

/// Which aggregator outputs to keep (each is `[B, S, T, 2C]`; ReconViaGen reads 4).
#[derive(Debug, Clone, Copy)]
pub enum KeepLayers<'a> {
    All,
    Only(&'a [usize]),
}

impl KeepLayers<'_> {
    fn keeps(&self, index: usize) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.contains(&index),
        }
    }
}

/// The loaded aggregator.
pub struct Aggregator {
    config: AggregatorConfig,
    patch_embed: Dinov2,
    camera_token: Tensor,
    register_token: Tensor,
    frame_blocks: Vec<Block>,
    global_blocks: Vec<Block>,
    rope: Rope2d,
}

impl Aggregator {
    /// Loads the aggregator from `weights` (already under `aggregator.`); matmuls and attention
    /// compute in `compute` (bf16 as the reference's autocast on CUDA, fp32 on CPU), the rest
    /// in fp32.
    pub fn new(weights: &Weights, config: AggregatorConfig, compute: Kind) -> Result<Self> {
        config.validate()?;
        let (c, r) = (config.embed_dim, config.num_register_tokens);
        let fp32 = weights.with_kind(Kind::Float);
        let patch_embed =
            Dinov2::new_mixed(config.patch_embed(), &weights.pp("patch_embed"), compute)
                .context("aggregator.patch_embed")?;
        let blocks = |kind: &str| -> Result<Vec<Block>> {
            (0..config.depth)
                .map(|i| {
                    Block::new(&weights.pp(kind).pp(i), &config.block(), compute)
                        .context(format!("aggregator.{kind}.{i}"))
                })
                .collect()
        };
        Ok(Self {
            camera_token: fp32.get(&[1, 2, 1, c], "camera_token")?,
            register_token: fp32.get(&[1, 2, r, c], "register_token")?,
            frame_blocks: blocks("frame_blocks")?,
            global_blocks: blocks("global_blocks")?,
            patch_embed,
            rope: Rope2d::new(ROPE_FREQUENCY)?,
            config,
        })
    }

    pub fn config(&self) -> &AggregatorConfig {
        &self.config
    }

    /// Runs the aggregator on `images` `[B, S, 3, H, W]` with values in [0, 1] (H and W
    /// multiples of the patch size), keeping the outputs `keep` selects.
    pub fn forward(&self, images: &Tensor, keep: KeepLayers<'_>) -> Result<AggregatorOutput> {
        let (b, s, h, w) = self.check_images(images)?;
        let (c, p) = (self.config.embed_dim, self.config.patch_size);
        let special = self.config.patch_start_idx();
        let patches = self.patch_tokens(images, b, s, h, w)?;
        let tokens = Tensor::f_cat(
            &[
                frame_tokens(&self.camera_token, b, s)?,
                frame_tokens(&self.register_token, b, s)?,
                patches,
            ],
            1,
        )?;
        let t = tokens.size()[1];
        let head_dim = c / self.config.num_heads;
        let pos = patch_positions(b * s, h / p, w / p, special, images.device())?;
        let frame_rope = self.rope.tables(&pos, head_dim)?;
        let global_rope = self.rope.tables(&pos.f_reshape([b, s * t, 2])?, head_dim)?;
        let mut layers = Vec::with_capacity(self.config.depth);
        let mut x = tokens;
        for (i, (frame, global)) in self
            .frame_blocks
            .iter()
            .zip(&self.global_blocks)
            .enumerate()
        {
            x = frame.forward(&x.f_reshape([b * s, t, c])?, Some(&frame_rope))?;
            let frame_out = x.f_reshape([b, s, t, c])?;
            x = global.forward(&x.f_reshape([b, s * t, c])?, Some(&global_rope))?;
            let kept = if keep.keeps(i) {
                Some(Tensor::f_cat(
                    &[&frame_out, &x.f_reshape([b, s, t, c])?],
                    -1,
                )?)
            } else {
                None
            };
            layers.push(kept);
        }
        Ok(AggregatorOutput {
            layers,
            patch_start_idx: special,
        })
    }

    /// DINOv2's `x_norm_patchtokens` `[B·S, P, C]` (fp32) of the ImageNet-normalised frames.
    pub fn patch_tokens(&self, images: &Tensor, b: i64, s: i64, h: i64, w: i64) -> Result<Tensor> {
        let frames = imagenet_normalize(&images.f_reshape([b * s, 3, h, w])?)?;
        let x = self
            .patch_embed
            .final_norm(&self.patch_embed.forward_features(&frames)?)?;
        let prefix = self.patch_embed.config().num_prefix_tokens();
        let n = x.size()[1] - prefix;
        Ok(x.f_narrow(1, prefix, n)?.f_to_kind(Kind::Float)?)
    }

    fn check_images(&self, images: &Tensor) -> Result<(i64, i64, i64, i64)> {
        let shape = images.size();
        let p = self.config.patch_size;
        match shape[..] {
            [b, s, 3, h, w] if b > 0 && s > 0 && h >= p && w >= p && h % p == 0 && w % p == 0 => {
                Ok((b, s, h, w))
            }
            _ => Err(Error::invalid_argument(format!(
                "VGGT aggregator: images must be [B, S, 3, H, W] with H and W positive \
                 multiples of {p}, got {shape:?}"
            ))),
        }
    }
}

/// `slice_expand_and_flatten`: a `[1, 2, n, C]` token pair → `[B·S, n, C]`, index 0 for each
/// batch's first frame and index 1 for its other frames.
fn frame_tokens(pair: &Tensor, b: i64, s: i64) -> Result<Tensor> {
    let size = pair.size();
    let (n, c) = (size[2], size[3]);
    let first = pair.f_narrow(1, 0, 1)?.f_expand([b, 1, n, c], false)?;
    let rest = pair.f_narrow(1, 1, 1)?.f_expand([b, s - 1, n, c], false)?;
    Ok(Tensor::f_cat(&[&first, &rest], 1)?.f_reshape([b * s, n, c])?)
}
