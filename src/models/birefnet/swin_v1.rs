//! `models/backbones/swin_v1.py`: the Swin Transformer v1 backbone BiRefNet encodes with
//! (published: `swin_v1_l`). Four stages of shifted-window attention blocks joined by patch
//! merging; every stage's output (before its merging) is layer-normed and returned as a
//! `[B, C_i, H/4/2^i, W/4/2^i]` map.
//!
//! As the reference: inputs whose sides are not multiples of the patch size are zero-padded
//! right and bottom; feature maps whose sides are not multiples of the window are padded the
//! same way inside each block (the padding joins the attention, unmasked) and cropped after;
//! odd sides are padded before each patch merging; odd blocks shift the windows by half a
//! window and mask attention between the regions the cyclic shift brought together. Attention
//! is `softmax(q·kᵀ/√d + relative position bias [+ mask])·v` through libtorch's
//! `scaled_dot_product_attention`, as the reference's SDPA path computes it.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::layers::{Conv2d, Conv2dSpec, TORCH_NORM_EPS};
use crate::error::{Error, Result};
use crate::nn::layout::TensorSpec;
use crate::nn::{LayerNorm32, Linear};
use crate::weights::Weights;

fn default_patch_size() -> i64 {
    4
}

fn default_mlp_ratio() -> f64 {
    4.0
}

/// `SwinTransformer(embed_dim, depths, num_heads, window_size)` with the reference's other
/// arguments at their defaults (3 input channels, qkv bias, no absolute position embedding,
/// patch norm, all four stages out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwinConfig {
    pub embed_dim: i64,
    pub depths: Vec<usize>,
    pub num_heads: Vec<i64>,
    pub window_size: i64,
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

impl SwinConfig {
    fn preset(embed_dim: i64, depths: [usize; 4], num_heads: [i64; 4], window_size: i64) -> Self {
        Self {
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            window_size,
            patch_size: default_patch_size(),
            mlp_ratio: default_mlp_ratio(),
        }
    }

    /// `swin_v1_l`: the published BiRefNet's backbone.
    pub fn swin_v1_l() -> Self {
        Self::preset(192, [2, 2, 18, 2], [6, 12, 24, 48], 12)
    }

    pub fn swin_v1_b() -> Self {
        Self::preset(128, [2, 2, 18, 2], [4, 8, 16, 32], 12)
    }

    pub fn swin_v1_s() -> Self {
        Self::preset(96, [2, 2, 18, 2], [3, 6, 12, 24], 7)
    }

    pub fn swin_v1_t() -> Self {
        Self::preset(96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    }

    /// The width of each stage: `embed_dim · 2^i`.
    pub fn num_features(&self) -> Vec<i64> {
        (0..self.depths.len())
            .map(|i| self.embed_dim << i)
            .collect()
    }

    fn hidden_features(&self, dim: i64) -> i64 {
        (dim as f64 * self.mlp_ratio) as i64
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::format(format!("Swin config: {what}")));
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return bad(format!(
                "depths {:?} and num_heads {:?} must be non-empty and of equal length",
                self.depths, self.num_heads
            ));
        }
        if self.embed_dim < 1 || self.window_size < 1 || self.patch_size < 1 {
            return bad("embed_dim, window_size and patch_size must be positive".into());
        }
        for (dim, heads) in self.num_features().iter().zip(&self.num_heads) {
            if *heads < 1 || dim % heads != 0 {
                return bad(format!(
                    "{heads} heads do not divide a stage width of {dim}"
                ));
            }
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return bad(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        Ok(())
    }
}

/// `PatchEmbed`: a stride-`patch` convolution to `embed_dim` channels, then LayerNorm.
struct PatchEmbed {
    proj: Conv2d,
    norm: LayerNorm32,
    patch: i64,
}

impl PatchEmbed {
    fn spec(cfg: &SwinConfig) -> Conv2dSpec {
        Conv2dSpec::new(3, cfg.embed_dim, cfg.patch_size).stride(cfg.patch_size)
    }

    fn new(weights: &Weights, cfg: &SwinConfig) -> Result<Self> {
        Ok(Self {
            proj: Conv2d::new(&weights.pp("proj"), Self::spec(cfg))?,
            norm: LayerNorm32::new(&weights.pp("norm"), cfg.embed_dim, TORCH_NORM_EPS)?,
            patch: cfg.patch_size,
        })
    }

    fn layout(prefix: &str, cfg: &SwinConfig, kind: Kind) -> Vec<TensorSpec> {
        let mut specs = Self::spec(cfg).layout(&format!("{prefix}.proj"), kind);
        specs.extend(norm_layout(&format!("{prefix}.norm"), cfg.embed_dim, kind));
        specs
    }

    /// `[B, 3, H, W]` → `[B, C, ⌈H/p⌉, ⌈W/p⌉]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [_, _, h, w] = four(x)?;
        let pad = |side: i64| (self.patch - side % self.patch) % self.patch;
        let x = x.f_constant_pad_nd([0, pad(w), 0, pad(h)])?;
        let x = self.proj.forward(&x)?;
        let [b, c, hh, ww] = four(&x)?;
        let tokens = x.f_flatten(2, 3)?.f_transpose(1, 2)?;
        Ok(self
            .norm
            .forward(&tokens)?
            .f_transpose(1, 2)?
            .f_reshape([b, c, hh, ww])?)
    }
}

fn norm_layout(prefix: &str, channels: i64, kind: Kind) -> Vec<TensorSpec> {
    vec![
        TensorSpec::new(format!("{prefix}.weight"), &[channels], kind),
        TensorSpec::new(format!("{prefix}.bias"), &[channels], kind),
    ]
}

/// The shape of a 4-D tensor.
fn four(x: &Tensor) -> Result<[i64; 4]> {
    x.size()
        .try_into()
        .map_err(|_| Error::invalid_argument(format!("expected a 4-D tensor, got {:?}", x.size())))
}

/// `WindowAttention`: multi-head self-attention inside one window with a learned bias per
/// relative offset (`relative_position_bias_table`, gathered once at load).
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
    /// `[1, heads, N, N]` for the `N = window²` tokens of a window.
    bias: Tensor,
}

impl WindowAttention {
    fn table_rows(window: i64) -> i64 {
        (2 * window - 1) * (2 * window - 1)
    }

    fn new(weights: &Weights, dim: i64, heads: i64, window: i64) -> Result<Self> {
        let table = weights.get(
            &[Self::table_rows(window), heads],
            "relative_position_bias_table",
        )?;
        let n = window * window;
        let index =
            Tensor::f_from_slice(&relative_position_index(window))?.f_to_device(table.device())?;
        let bias = table
            .f_index_select(0, &index)?
            .f_reshape([n, n, heads])?
            .f_permute([2, 0, 1])?
            .f_contiguous()?
            .f_unsqueeze(0)?;
        Ok(Self {
            qkv: Linear::new(&weights.pp("qkv"), dim, 3 * dim)?,
            proj: Linear::new(&weights.pp("proj"), dim, dim)?,
            heads,
            bias,
        })
    }

    fn layout(prefix: &str, dim: i64, heads: i64, window: i64, kind: Kind) -> Vec<TensorSpec> {
        let mut specs = vec![TensorSpec::new(
            format!("{prefix}.relative_position_bias_table"),
            &[Self::table_rows(window), heads],
            kind,
        )];
        specs.extend(Linear::layout(
            &format!("{prefix}.qkv"),
            true,
            dim,
            3 * dim,
            kind,
        ));
        specs.extend(Linear::layout(
            &format!("{prefix}.proj"),
            true,
            dim,
            dim,
            kind,
        ));
        specs
    }

    /// `x` `[B_, N, C]` (windows × batch), `mask` `[B_, 1, N, N]` (0 / −inf) or none.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, c) = x.size3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([b, n, 3, self.heads, c / self.heads])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (
            qkv.f_select(0, 0)?,
            qkv.f_select(0, 1)?,
            qkv.f_select(0, 2)?,
        );
        let attn_mask = match mask {
            Some(m) => self.bias.f_to_kind(q.kind())?.f_add(m)?,
            None => self.bias.f_to_kind(q.kind())?,
        };
        let out = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(attn_mask),
            0.0,
            false,
            None,
            false,
        )?
        .f_transpose(1, 2)?
        .f_reshape([b, n, c])?;
        self.proj.forward(&out)
    }
}

/// The reference's `relative_position_index`, flattened: for tokens `i`, `j` of a window
/// (row-major), the row of the bias table for their offset `(Δy, Δx)`.
fn relative_position_index(window: i64) -> Vec<i64> {
    let n = window * window;
    let side = 2 * window - 1;
    let mut index = Vec::with_capacity((n * n) as usize);
    for i in 0..n {
        for j in 0..n {
            let dy = i / window - j / window + window - 1;
            let dx = i % window - j % window + window - 1;
            index.push(dy * side + dx);
        }
    }
    index
}

/// `SwinTransformerBlock`: (shifted) window attention and an MLP, each pre-normed and
/// residual.
struct SwinBlock {
    norm1: LayerNorm32,
    attn: WindowAttention,
    norm2: LayerNorm32,
    fc1: Linear,
    fc2: Linear,
    window: i64,
    shift: i64,
}

impl SwinBlock {
    fn new(weights: &Weights, cfg: &SwinConfig, dim: i64, heads: i64, shift: i64) -> Result<Self> {
        let hidden = cfg.hidden_features(dim);
        Ok(Self {
            norm1: LayerNorm32::new(&weights.pp("norm1"), dim, TORCH_NORM_EPS)?,
            attn: WindowAttention::new(&weights.pp("attn"), dim, heads, cfg.window_size)?,
            norm2: LayerNorm32::new(&weights.pp("norm2"), dim, TORCH_NORM_EPS)?,
            fc1: Linear::new(&weights.pp("mlp").pp("fc1"), dim, hidden)?,
            fc2: Linear::new(&weights.pp("mlp").pp("fc2"), hidden, dim)?,
            window: cfg.window_size,
            shift,
        })
    }

    fn layout(prefix: &str, cfg: &SwinConfig, dim: i64, heads: i64, kind: Kind) -> Vec<TensorSpec> {
        let hidden = cfg.hidden_features(dim);
        let mut specs = norm_layout(&format!("{prefix}.norm1"), dim, kind);
        specs.extend(WindowAttention::layout(
            &format!("{prefix}.attn"),
            dim,
            heads,
            cfg.window_size,
            kind,
        ));
        specs.extend(norm_layout(&format!("{prefix}.norm2"), dim, kind));
        specs.extend(Linear::layout(
            &format!("{prefix}.mlp.fc1"),
            true,
            dim,
            hidden,
            kind,
        ));
        specs.extend(Linear::layout(
            &format!("{prefix}.mlp.fc2"),
            true,
            hidden,
            dim,
            kind,
        ));
        specs
    }

    /// `x` `[B, H·W, C]`; `mask` `[nW, N, N]`, the shifted windows' mask of this map size.
    fn forward(&self, x: &Tensor, h: i64, w: i64, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, _, c) = x.size3()?;
        let ws = self.window;
        let y = self.norm1.forward(x)?.f_reshape([b, h, w, c])?;
        let (pad_r, pad_b) = ((ws - w % ws) % ws, (ws - h % ws) % ws);
        let y = y.f_constant_pad_nd([0, 0, 0, pad_r, 0, pad_b])?;
        let (hp, wp) = (h + pad_b, w + pad_r);
        let y = if self.shift > 0 {
            y.f_roll([-self.shift, -self.shift], [1, 2])?
        } else {
            y
        };
        let windows = window_partition(&y, ws)?.f_reshape([-1, ws * ws, c])?;
        let attn_mask = match (self.shift > 0, mask) {
            (true, Some(m)) => {
                let (nw, n, _) = m.size3()?;
                Some(
                    m.f_unsqueeze(0)?
                        .f_expand([b, nw, n, n], false)?
                        .f_reshape([b * nw, 1, n, n])?,
                )
            }
            (true, None) => {
                return Err(Error::internal(
                    "a shifted Swin block got no attention mask",
                ))
            }
            (false, _) => None,
        };
        let attended = self.attn.forward(&windows, attn_mask.as_ref())?;
        let y = window_reverse(&attended.f_reshape([-1, ws, ws, c])?, ws, b, hp, wp)?;
        let y = if self.shift > 0 {
            y.f_roll([self.shift, self.shift], [1, 2])?
        } else {
            y
        };
        let y = y
            .f_narrow(1, 0, h)?
            .f_narrow(2, 0, w)?
            .f_reshape([b, h * w, c])?;
        let x = x.f_add(&y)?;
        let mlp = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.f_gelu("none")?)?;
        Ok(x.f_add(&mlp)?)
    }
}

/// `[B, H, W, C]` → `[B·nW, ws, ws, C]`, windows in row-major order per image.
fn window_partition(x: &Tensor, ws: i64) -> Result<Tensor> {
    let [b, h, w, c] = four(x)?;
    Ok(x.f_reshape([b, h / ws, ws, w / ws, ws, c])?
        .f_permute([0, 1, 3, 2, 4, 5])?
        .f_reshape([-1, ws, ws, c])?)
}

/// The inverse of [`window_partition`] for a `[B, H, W, C]` map.
fn window_reverse(windows: &Tensor, ws: i64, b: i64, h: i64, w: i64) -> Result<Tensor> {
    let c = windows.size().last().copied().unwrap_or(0);
    Ok(windows
        .f_reshape([b, h / ws, w / ws, ws, ws, c])?
        .f_permute([0, 1, 3, 2, 4, 5])?
        .f_reshape([b, h, w, c])?)
}

/// `PatchMerging`: each 2×2 neighbourhood (odd sides zero-padded) concatenated in the order
/// (0,0), (1,0), (0,1), (1,1), normed and projected to twice the width.
struct PatchMerging {
    norm: LayerNorm32,
    reduction: Linear,
}

impl PatchMerging {
    fn new(weights: &Weights, dim: i64) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm32::new(&weights.pp("norm"), 4 * dim, TORCH_NORM_EPS)?,
            reduction: Linear::new_no_bias(&weights.pp("reduction"), 4 * dim, 2 * dim)?,
        })
    }

    fn layout(prefix: &str, dim: i64, kind: Kind) -> Vec<TensorSpec> {
        let mut specs = Linear::layout(
            &format!("{prefix}.reduction"),
            false,
            4 * dim,
            2 * dim,
            kind,
        );
        specs.extend(norm_layout(&format!("{prefix}.norm"), 4 * dim, kind));
        specs
    }

    fn forward(&self, x: &Tensor, h: i64, w: i64) -> Result<Tensor> {
        let (b, _, c) = x.size3()?;
        let x = x
            .f_reshape([b, h, w, c])?
            .f_constant_pad_nd([0, 0, 0, w % 2, 0, h % 2])?;
        let pick = |dy: i64, dx: i64| -> Result<Tensor> {
            Ok(x.f_slice(1, dy, None, 2)?.f_slice(2, dx, None, 2)?)
        };
        let merged = Tensor::f_cat(&[pick(0, 0)?, pick(1, 0)?, pick(0, 1)?, pick(1, 1)?], -1)?
            .f_reshape([b, -1, 4 * c])?;
        self.reduction.forward(&self.norm.forward(&merged)?)
    }
}

/// `BasicLayer`: one stage's blocks (odd ones shifted), then patch merging except after the
/// last stage.
struct BasicLayer {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
    window: i64,
    shift: i64,
}

impl BasicLayer {
    fn shift_of(block: usize, window: i64) -> i64 {
        if block.is_multiple_of(2) {
            0
        } else {
            window / 2
        }
    }

    /// The additive mask `[nW, N, N]` of the shifted windows of an `h × w` map: 0 between
    /// tokens of the same region of the cyclically shifted map, −inf across regions.
    fn attention_mask(&self, h: i64, w: i64, device: tch::Device) -> Result<Tensor> {
        let ws = self.window;
        let (hp, wp) = ((h + ws - 1) / ws * ws, (w + ws - 1) / ws * ws);
        let region = |v: i64, size: i64| {
            if v < size - ws {
                0
            } else if v < size - self.shift {
                1
            } else {
                2
            }
        };
        let labels: Vec<f32> = (0..hp)
            .flat_map(|y| (0..wp).map(move |x| (y, x)))
            .map(|(y, x)| (region(y, hp) * 3 + region(x, wp)) as f32)
            .collect();
        let labels = Tensor::f_from_slice(&labels)?
            .f_to_device(device)?
            .f_reshape([1, hp, wp, 1])?;
        let windows = window_partition(&labels, ws)?.f_reshape([-1, ws * ws])?;
        let differs = windows
            .f_unsqueeze(1)?
            .f_ne_tensor(&windows.f_unsqueeze(2)?)?;
        Ok(Tensor::f_zeros(differs.size(), (Kind::Float, device))?
            .f_masked_fill(&differs, f64::NEG_INFINITY)?)
    }

    /// Returns the stage's output `[B, H·W, C]` and the next stage's input with its size.
    fn forward(&self, x: &Tensor, h: i64, w: i64) -> Result<(Tensor, Tensor, i64, i64)> {
        let mask = if self.blocks.len() > 1 && self.shift > 0 {
            Some(self.attention_mask(h, w, x.device())?.f_to_kind(x.kind())?)
        } else {
            None
        };
        let mut x = x.shallow_clone();
        for block in &self.blocks {
            x = block.forward(&x, h, w, mask.as_ref())?;
        }
        match &self.downsample {
            Some(merge) => {
                let down = merge.forward(&x, h, w)?;
                Ok((x, down, (h + 1) / 2, (w + 1) / 2))
            }
            None => {
                let next = x.shallow_clone();
                Ok((x, next, h, w))
            }
        }
    }
}

/// `SwinTransformer`: returns the four stages' normed outputs as `[B, C_i, H_i, W_i]` maps.
pub struct SwinTransformer {
    patch_embed: PatchEmbed,
    layers: Vec<BasicLayer>,
    norms: Vec<LayerNorm32>,
}

impl SwinTransformer {
    pub fn new(weights: &Weights, cfg: &SwinConfig) -> Result<Self> {
        cfg.validate()?;
        let features = cfg.num_features();
        let stages = cfg.depths.len();
        let mut layers = Vec::with_capacity(stages);
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_heads).enumerate() {
            let wl = weights.pp("layers").pp(i);
            let blocks = (0..depth)
                .map(|j| {
                    let shift = BasicLayer::shift_of(j, cfg.window_size);
                    SwinBlock::new(&wl.pp("blocks").pp(j), cfg, features[i], heads, shift)
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < stages {
                Some(PatchMerging::new(&wl.pp("downsample"), features[i])?)
            } else {
                None
            };
            layers.push(BasicLayer {
                blocks,
                downsample,
                window: cfg.window_size,
                shift: cfg.window_size / 2,
            });
        }
        let norms = features
            .iter()
            .enumerate()
            .map(|(i, &dim)| LayerNorm32::new(&weights.pp(format!("norm{i}")), dim, TORCH_NORM_EPS))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: PatchEmbed::new(&weights.pp("patch_embed"), cfg)?,
            layers,
            norms,
        })
    }

    /// The float tensors under `prefix`, in `state_dict()` order (the int64
    /// `relative_position_index` buffers are recomputed, not read).
    pub fn layout(prefix: &str, cfg: &SwinConfig, kind: Kind) -> Vec<TensorSpec> {
        let features = cfg.num_features();
        let stages = cfg.depths.len();
        let mut specs = PatchEmbed::layout(&format!("{prefix}.patch_embed"), cfg, kind);
        for (i, (&depth, &heads)) in cfg.depths.iter().zip(&cfg.num_heads).enumerate() {
            for j in 0..depth {
                specs.extend(SwinBlock::layout(
                    &format!("{prefix}.layers.{i}.blocks.{j}"),
                    cfg,
                    features[i],
                    heads,
                    kind,
                ));
            }
            if i + 1 < stages {
                specs.extend(PatchMerging::layout(
                    &format!("{prefix}.layers.{i}.downsample"),
                    features[i],
                    kind,
                ));
            }
        }
        for (i, &dim) in features.iter().enumerate() {
            specs.extend(norm_layout(&format!("{prefix}.norm{i}"), dim, kind));
        }
        specs
    }

    /// `[B, 3, H, W]` → one map per stage.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let x = self.patch_embed.forward(x)?;
        let [b, c, mut h, mut w] = four(&x)?;
        let mut x = x.f_reshape([b, c, h * w])?.f_transpose(1, 2)?;
        let mut outs = Vec::with_capacity(self.layers.len());
        for (layer, norm) in self.layers.iter().zip(&self.norms) {
            let (out, next, nh, nw) = layer.forward(&x, h, w)?;
            let out = norm.forward(&out)?;
            let dim = out.size().last().copied().unwrap_or(0);
            outs.push(
                out.f_reshape([b, h, w, dim])?
                    .f_permute([0, 3, 1, 2])?
                    .f_contiguous()?,
            );
            (x, h, w) = (next, nh, nw);
        }
        Ok(outs)
    }
}
