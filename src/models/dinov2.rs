//! DINOv2 (`dinov2.models.vision_transformer.DinoVisionTransformer`, torch.hub
//! `facebookresearch/dinov2`), the image encoder TRELLIS conditions on: `dinov2_vitl14_reg`, a
//! ViT-L/14 with 4 register tokens.
//!
//! TRELLIS (`TrellisImageTo3DPipeline.encode_image`) feeds the 518×518 image normalised with the
//! ImageNet mean/std, takes `x_prenorm` (the last block's output, before the final norm) and
//! applies a LayerNorm **without affine parameters** (eps 1e-5) to all tokens:
//! `[B, 1 + 4 + 37·37, 1024]` = `[cls, reg0..reg3, patches row-major]`. That is
//! [`Dinov2::condition_tokens`].
//!
//! Two checkpoint layouts load, detected from the tensor names:
//! - torch.hub (`cls_token`, `pos_embed`, `blocks.N.attn.qkv`, `blocks.N.ls1.gamma`, ...), the
//!   layout of `dinov2_vitl14_reg4_pretrain.pth`;
//! - Hugging Face transformers `Dinov2WithRegistersModel` (`embeddings.cls_token`,
//!   `encoder.layer.N.attention.attention.{query,key,value}`, `layer_scale1.lambda1`, ...), the
//!   layout of `facebook/dinov2-with-registers-large` (safetensors), which recon downloads.
//!   Its q/k/v are the rows of the hub's fused `qkv` in that order; they are concatenated back.
//!
//! The computation follows the hub code (TRELLIS's reference), not transformers': the position
//! embedding interpolation honours `interpolate_offset` / `interpolate_antialias` (the
//! register models use offset 0 and antialias, which is also what transformers hard-codes).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::hub::{fetch_repo_files, read_json_file, ResolveOptions};
use crate::nn::LayerNorm32;
use crate::weights::Weights;

/// The hub class name, as a checkpoint json's `name`.
pub const DINOV2_CLASS: &str = "DinoVisionTransformer";

/// ImageNet channel means (RGB) the DINOv2 input is normalised with.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// `image_cond_model` of TRELLIS's pipeline.json: the torch.hub name of the encoder.
pub const DINOV2_VITL14_REG: &str = "dinov2_vitl14_reg";
/// Where recon gets the published `dinov2_vitl14_reg` weights: the same tensors as the torch.hub
/// `dinov2_vitl14_reg4_pretrain.pth`, converted by transformers, in safetensors.
pub const DINOV2_VITL14_REG_REPO: &str = "facebook/dinov2-with-registers-large";
/// The transformers config of a published repo.
pub const HF_CONFIG_FILE: &str = "config.json";
/// The transformers weights of a published repo.
pub const HF_WEIGHTS_FILE: &str = "model.safetensors";

/// LayerNorm eps of the hub's blocks and final norm (`partial(nn.LayerNorm, eps=1e-6)`).
const DINOV2_NORM_EPS: f64 = 1e-6;
/// `F.layer_norm`'s default eps, which TRELLIS's condition normalisation uses.
const TRELLIS_COND_NORM_EPS: f64 = 1e-5;

/// Constructor arguments of `DinoVisionTransformer`, with its defaults (the `args` of a
/// `DinoVisionTransformer` checkpoint json). Callable arguments (`embed_layer`, `act_layer`,
/// `block_fn`) are fixed to the hub's: PatchEmbed, exact GELU, Block with plain attention.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dinov2Config {
    /// Size of the square image the position embedding grid was trained for.
    #[serde(default = "default_img_size")]
    pub img_size: i64,
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    #[serde(default = "default_in_chans")]
    pub in_chans: i64,
    #[serde(default = "default_embed_dim")]
    pub embed_dim: i64,
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_num_heads")]
    pub num_heads: i64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "yes")]
    pub ffn_bias: bool,
    #[serde(default = "yes")]
    pub proj_bias: bool,
    /// Training only (stochastic depth); accepted and ignored.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// Training only; accepted and ignored.
    #[serde(default)]
    pub drop_path_uniform: bool,
    /// LayerScale initial value; `None` or 0 means no LayerScale (`ls1`/`ls2` are Identity).
    #[serde(default)]
    pub init_values: Option<f64>,
    /// "mlp", "swiglu" / "swiglufused" or "identity".
    #[serde(default = "default_ffn_layer")]
    pub ffn_layer: String,
    /// > 0 groups the blocks as `blocks.<chunk>.<index>` (FSDP wrapping); 0 is the flat list.
    #[serde(default = "default_block_chunks")]
    pub block_chunks: usize,
    #[serde(default)]
    pub num_register_tokens: i64,
    #[serde(default)]
    pub interpolate_antialias: bool,
    #[serde(default = "default_interpolate_offset")]
    pub interpolate_offset: f64,
    /// Not a hub argument (the hub hard-codes 1e-6); transformers configs carry it.
    #[serde(default = "default_norm_eps")]
    pub layer_norm_eps: f64,
}

fn default_img_size() -> i64 {
    224
}
fn default_patch_size() -> i64 {
    16
}
fn default_in_chans() -> i64 {
    3
}
fn default_embed_dim() -> i64 {
    768
}
fn default_depth() -> usize {
    12
}
fn default_num_heads() -> i64 {
    12
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn yes() -> bool {
    true
}
fn default_ffn_layer() -> String {
    "mlp".to_string()
}
fn default_block_chunks() -> usize {
    1
}
fn default_interpolate_offset() -> f64 {
    0.1
}
fn default_norm_eps() -> f64 {
    DINOV2_NORM_EPS
}

/// The feed-forward variant of the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// `fc1` → exact GELU → `fc2`, hidden `int(dim · mlp_ratio)`.
    Mlp,
    /// `w12` → SiLU gate → `w3`, hidden rounded as `SwiGLUFFNFused` does.
    SwiGlu,
    /// No feed-forward (the residual adds `ls2(identity(norm2(x)))`).
    Identity,
}

impl Dinov2Config {
    /// `dinov2_vitl14_reg` as TRELLIS loads it from torch.hub: `vit_large` (1024 wide, 24 blocks,
    /// 16 heads), patch 14 at 518 (a 37×37 grid), LayerScale 1.0, MLP, 4 registers, no block
    /// chunks, antialiased interpolation without offset.
    pub fn vitl14_reg4() -> Self {
        Self {
            img_size: 518,
            patch_size: 14,
            in_chans: 3,
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            mlp_ratio: 4.0,
            qkv_bias: true,
            ffn_bias: true,
            proj_bias: true,
            drop_path_rate: 0.0,
            drop_path_uniform: false,
            init_values: Some(1.0),
            ffn_layer: "mlp".to_string(),
            block_chunks: 0,
            num_register_tokens: 4,
            interpolate_antialias: true,
            interpolate_offset: 0.0,
            layer_norm_eps: DINOV2_NORM_EPS,
        }
    }

    /// Reads a transformers `Dinov2WithRegistersConfig` (`config.json` of a published repo).
    /// Missing fields take that class's defaults. transformers always has LayerScale and biased
    /// projections, and interpolates the position embedding to an explicit size with antialias,
    /// which is the hub's `interpolate_offset=0`, `interpolate_antialias=True`.
    pub fn from_transformers_config(path: &Path) -> Result<Self> {
        let value = read_json_file(path)?;
        Self::from_transformers_json(&value).map_err(|e| e.context(format!("{}", path.display())))
    }

    /// As [`Dinov2Config::from_transformers_config`], from already-parsed json.
    pub fn from_transformers_json(value: &Value) -> Result<Self> {
        let hf: HfDinov2Config = serde_json::from_value(value.clone()).map_err(|e| {
            Error::format(format!("not a transformers Dinov2WithRegistersConfig: {e}"))
        })?;
        hf.into_config()
    }

    /// The feed-forward variant `ffn_layer` names.
    pub fn ffn_kind(&self) -> Result<FfnKind> {
        match self.ffn_layer.as_str() {
            "mlp" => Ok(FfnKind::Mlp),
            "swiglu" | "swiglufused" => Ok(FfnKind::SwiGlu),
            "identity" => Ok(FfnKind::Identity),
            other => Err(Error::checkpoint(format!(
                "DINOv2: ffn_layer '{other}' is not one of mlp, swiglu, swiglufused, identity"
            ))),
        }
    }

    /// Hidden width of the feed-forward layer.
    pub fn ffn_hidden(&self) -> Result<i64> {
        let hidden = (self.embed_dim as f64 * self.mlp_ratio) as i64;
        Ok(match self.ffn_kind()? {
            FfnKind::Mlp | FfnKind::Identity => hidden,
            // SwiGLUFFNFused keeps 2/3 of the width, rounded up to a multiple of 8.
            FfnKind::SwiGlu => ((hidden as f64 * 2.0 / 3.0) as i64 + 7) / 8 * 8,
        })
    }

    /// Whether the blocks have LayerScale (`init_values` truthy, as the hub tests it).
    pub fn has_layer_scale(&self) -> bool {
        self.init_values.is_some_and(|v| v != 0.0)
    }

    /// Patches per side of the trained grid.
    pub fn grid_size(&self) -> i64 {
        self.img_size / self.patch_size
    }

    /// Tokens before the patches: cls + registers.
    pub fn num_prefix_tokens(&self) -> i64 {
        1 + self.num_register_tokens
    }

    fn validate(&self) -> Result<()> {
        let positive = self.img_size > 0
            && self.patch_size > 0
            && self.in_chans > 0
            && self.embed_dim > 0
            && self.num_heads > 0
            && self.mlp_ratio > 0.0
            && self.layer_norm_eps > 0.0
            && self.interpolate_offset.is_finite()
            && self.num_register_tokens >= 0;
        if !positive || self.img_size < self.patch_size {
            return Err(Error::checkpoint(format!(
                "DINOv2: sizes, mlp_ratio and layer_norm_eps must be positive, interpolate_offset finite \
                 and img_size >= patch_size; got {self:?}"
            )));
        }
        if self.embed_dim % self.num_heads != 0 {
            return Err(Error::checkpoint(format!(
                "DINOv2: embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            )));
        }
        if self.block_chunks > self.depth.max(1) {
            return Err(Error::checkpoint(format!(
                "DINOv2: block_chunks {} exceeds depth {}",
                self.block_chunks, self.depth
            )));
        }
        self.ffn_kind().map(|_| ())
    }

    /// The state-dict prefix of block `index`: `blocks.i`, or `blocks.<chunk>.i` with chunks
    /// (the hub pads each chunk with Identity modules so the index stays global).
    fn block_prefix(&self, layout: Dinov2Layout, index: usize) -> String {
        match layout {
            Dinov2Layout::Transformers => format!("encoder.layer.{index}"),
            Dinov2Layout::TorchHub if self.block_chunks > 0 => {
                let chunk_size = (self.depth / self.block_chunks).max(1);
                format!("blocks.{}.{index}", index / chunk_size)
            }
            Dinov2Layout::TorchHub => format!("blocks.{index}"),
        }
    }

    /// Every tensor of the state dict in `layout`, with its shape, in state-dict order: what a
    /// checkpoint for this config must hold (and all that [`Dinov2::new`] reads, `mask_token`
    /// included, whose shape is checked though inference does not use it).
    pub fn expected_tensors(&self, layout: Dinov2Layout) -> Result<Vec<(String, Vec<i64>)>> {
        self.validate()?;
        let c = self.embed_dim;
        let top = TopNames::of(layout);
        let mut out: Vec<(String, Vec<i64>)> = Vec::new();
        let mut push = |name: String, shape: Vec<i64>| out.push((name, shape));
        let grid = self.grid_size();
        let pos = vec![1, grid * grid + 1, c];
        let patch_w = vec![c, self.in_chans, self.patch_size, self.patch_size];
        let registers = vec![1, self.num_register_tokens, c];
        let with_registers = self.num_register_tokens > 0;
        match layout {
            Dinov2Layout::TorchHub => {
                push(top.cls_token.into(), vec![1, 1, c]);
                push(top.pos_embed.into(), pos);
                if with_registers {
                    push(top.register_tokens.into(), registers);
                }
                push(top.mask_token.into(), vec![1, c]);
                push(format!("{}.weight", top.patch_embed), patch_w);
                push(format!("{}.bias", top.patch_embed), vec![c]);
            }
            Dinov2Layout::Transformers => {
                // The embeddings module's own parameters, then its patch_embeddings child.
                push(top.cls_token.into(), vec![1, 1, c]);
                push(top.mask_token.into(), vec![1, c]);
                if with_registers {
                    push(top.register_tokens.into(), registers);
                }
                push(top.pos_embed.into(), pos);
                push(format!("{}.weight", top.patch_embed), patch_w);
                push(format!("{}.bias", top.patch_embed), vec![c]);
            }
        }
        for index in 0..self.depth {
            let prefix = self.block_prefix(layout, index);
            for (name, shape) in self.block_tensors(layout)? {
                push(format!("{prefix}.{name}"), shape);
            }
        }
        push(format!("{}.weight", top.norm), vec![c]);
        push(format!("{}.bias", top.norm), vec![c]);
        Ok(out)
    }

    /// The tensors of one block, relative to its prefix, in state-dict order.
    fn block_tensors(&self, layout: Dinov2Layout) -> Result<Vec<(String, Vec<i64>)>> {
        let c = self.embed_dim;
        let names = BlockNames::of(layout, self.ffn_kind()?);
        let mut out: Vec<(String, Vec<i64>)> = Vec::new();
        let linear = |out: &mut Vec<(String, Vec<i64>)>, name: &str, i: i64, o: i64, bias: bool| {
            out.push((format!("{name}.weight"), vec![o, i]));
            if bias {
                out.push((format!("{name}.bias"), vec![o]));
            }
        };
        let norm = |out: &mut Vec<(String, Vec<i64>)>, name: &str| {
            out.push((format!("{name}.weight"), vec![c]));
            out.push((format!("{name}.bias"), vec![c]));
        };
        // transformers: biases per its config (qkv_bias), dense/mlp always biased; LayerScale
        // always present.
        let hf = layout == Dinov2Layout::Transformers;
        let (proj_bias, ffn_bias) = (self.proj_bias || hf, self.ffn_bias || hf);
        let layer_scale = self.has_layer_scale() || hf;
        norm(&mut out, names.norm1);
        match names.qkv {
            QkvNames::Fused(name) => linear(&mut out, name, c, 3 * c, self.qkv_bias),
            QkvNames::Split(parts) => {
                for name in parts {
                    linear(&mut out, name, c, c, self.qkv_bias);
                }
            }
        }
        linear(&mut out, names.proj, c, c, proj_bias);
        if layer_scale {
            out.push((names.ls1.to_string(), vec![c]));
        }
        norm(&mut out, names.norm2);
        let hidden = self.ffn_hidden()?;
        match self.ffn_kind()? {
            FfnKind::Mlp => {
                linear(&mut out, names.ffn_in, c, hidden, ffn_bias);
                linear(&mut out, names.ffn_out, hidden, c, ffn_bias);
            }
            FfnKind::SwiGlu => {
                linear(&mut out, names.ffn_in, c, 2 * hidden, ffn_bias);
                linear(&mut out, names.ffn_out, hidden, c, ffn_bias);
            }
            FfnKind::Identity => {}
        }
        if layer_scale {
            out.push((names.ls2.to_string(), vec![c]));
        }
        Ok(out)
    }

    /// Number of parameters of the state dict in `layout`.
    pub fn num_parameters(&self, layout: Dinov2Layout) -> Result<i64> {
        Ok(self
            .expected_tensors(layout)?
            .iter()
            .map(|(_, shape)| shape.iter().product::<i64>())
            .sum())
    }
}

/// The fields of a transformers `Dinov2WithRegistersConfig` recon reads, with that class's
/// defaults. Other fields (dropouts, backbone stages, ids) are ignored.
#[derive(Debug, Deserialize)]
struct HfDinov2Config {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default = "default_embed_dim")]
    hidden_size: i64,
    #[serde(default = "default_depth")]
    num_hidden_layers: usize,
    #[serde(default = "default_num_heads")]
    num_attention_heads: i64,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default = "default_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_img_size")]
    image_size: i64,
    #[serde(default = "default_patch_size")]
    patch_size: i64,
    #[serde(default = "default_in_chans")]
    num_channels: i64,
    #[serde(default = "yes")]
    qkv_bias: bool,
    #[serde(default = "default_layerscale")]
    layerscale_value: f64,
    #[serde(default)]
    use_swiglu_ffn: bool,
    #[serde(default = "default_hf_registers")]
    num_register_tokens: i64,
}

fn default_hidden_act() -> String {
    "gelu".to_string()
}
fn default_layerscale() -> f64 {
    1.0
}
fn default_hf_registers() -> i64 {
    4
}

impl HfDinov2Config {
    fn into_config(self) -> Result<Dinov2Config> {
        if let Some(kind) = self.model_type.as_deref() {
            if kind != "dinov2_with_registers" {
                return Err(Error::checkpoint(format!(
                    "model_type '{kind}' is not dinov2_with_registers"
                )));
            }
        }
        if self.hidden_act != "gelu" {
            return Err(Error::unsupported(format!(
                "DINOv2: hidden_act '{}' (only exact 'gelu' is implemented)",
                self.hidden_act
            )));
        }
        Ok(Dinov2Config {
            img_size: self.image_size,
            patch_size: self.patch_size,
            in_chans: self.num_channels,
            embed_dim: self.hidden_size,
            depth: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            mlp_ratio: self.mlp_ratio,
            qkv_bias: self.qkv_bias,
            ffn_bias: true,
            proj_bias: true,
            drop_path_rate: 0.0,
            drop_path_uniform: false,
            // transformers always builds LayerScale; any non-zero value keeps it in our config.
            init_values: Some(if self.layerscale_value == 0.0 {
                1.0
            } else {
                self.layerscale_value
            }),
            ffn_layer: if self.use_swiglu_ffn {
                "swiglufused"
            } else {
                "mlp"
            }
            .to_string(),
            block_chunks: 0,
            num_register_tokens: self.num_register_tokens,
            interpolate_antialias: true,
            interpolate_offset: 0.0,
            layer_norm_eps: self.layer_norm_eps,
        })
    }
}

/// How a checkpoint names the DINOv2 tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dinov2Layout {
    /// torch.hub / the original repo: `cls_token`, `blocks.N.attn.qkv`, `blocks.N.ls1.gamma`.
    TorchHub,
    /// transformers `Dinov2WithRegistersModel`: `embeddings.*`, `encoder.layer.N.*`, `layernorm`.
    Transformers,
}

impl Dinov2Layout {
    /// The layout of `weights`, from where its cls token is.
    pub fn detect(weights: &Weights) -> Result<Self> {
        let hf = TopNames::of(Self::Transformers);
        let hub = TopNames::of(Self::TorchHub);
        if weights.contains(hf.cls_token) {
            Ok(Self::Transformers)
        } else if weights.contains(hub.cls_token) {
            Ok(Self::TorchHub)
        } else {
            Err(Error::checkpoint(format!(
                "{}: not a DINOv2 checkpoint: neither '{}' (torch.hub layout) nor '{}' \
                 (transformers layout) is present",
                weights.path().display(),
                hub.cls_token,
                hf.cls_token
            )))
        }
    }
}

/// Names outside the blocks.
struct TopNames {
    cls_token: &'static str,
    pos_embed: &'static str,
    register_tokens: &'static str,
    mask_token: &'static str,
    patch_embed: &'static str,
    norm: &'static str,
}

impl TopNames {
    fn of(layout: Dinov2Layout) -> Self {
        match layout {
            Dinov2Layout::TorchHub => Self {
                cls_token: "cls_token",
                pos_embed: "pos_embed",
                register_tokens: "register_tokens",
                mask_token: "mask_token",
                patch_embed: "patch_embed.proj",
                norm: "norm",
            },
            Dinov2Layout::Transformers => Self {
                cls_token: "embeddings.cls_token",
                pos_embed: "embeddings.position_embeddings",
                register_tokens: "embeddings.register_tokens",
                mask_token: "embeddings.mask_token",
                patch_embed: "embeddings.patch_embeddings.projection",
                norm: "layernorm",
            },
        }
    }
}

/// The attention input projection: one fused `qkv` (hub) or separate query/key/value.
enum QkvNames {
    Fused(&'static str),
    Split([&'static str; 3]),
}

/// Names inside one block, relative to its prefix.
struct BlockNames {
    norm1: &'static str,
    qkv: QkvNames,
    proj: &'static str,
    ls1: &'static str,
    norm2: &'static str,
    ffn_in: &'static str,
    ffn_out: &'static str,
    ls2: &'static str,
}

impl BlockNames {
    fn of(layout: Dinov2Layout, ffn: FfnKind) -> Self {
        let swiglu = ffn == FfnKind::SwiGlu;
        match layout {
            Dinov2Layout::TorchHub => Self {
                norm1: "norm1",
                qkv: QkvNames::Fused("attn.qkv"),
                proj: "attn.proj",
                ls1: "ls1.gamma",
                norm2: "norm2",
                ffn_in: if swiglu { "mlp.w12" } else { "mlp.fc1" },
                ffn_out: if swiglu { "mlp.w3" } else { "mlp.fc2" },
                ls2: "ls2.gamma",
            },
            Dinov2Layout::Transformers => Self {
                norm1: "norm1",
                qkv: QkvNames::Split([
                    "attention.attention.query",
                    "attention.attention.key",
                    "attention.attention.value",
                ]),
                proj: "attention.output.dense",
                ls1: "layer_scale1.lambda1",
                norm2: "norm2",
                ffn_in: if swiglu { "mlp.weights_in" } else { "mlp.fc1" },
                ffn_out: if swiglu { "mlp.weights_out" } else { "mlp.fc2" },
                ls2: "layer_scale2.lambda1",
            },
        }
    }
}

/// A linear map from tensors already read (the split q/k/v are concatenated into one).
struct Affine {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Affine {
    fn read(weights: &Weights, name: &str, fan_in: i64, fan_out: i64, bias: bool) -> Result<Self> {
        let w = weights.pp(name);
        Ok(Self {
            weight: w.get(&[fan_out, fan_in], "weight")?,
            bias: if bias {
                Some(w.get(&[fan_out], "bias")?)
            } else {
                None
            },
        })
    }

    /// `[q; k; v]` stacked along the output axis, as the hub's fused `qkv` holds them.
    fn concat(parts: Vec<Affine>) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        Ok(Self {
            weight: Tensor::f_cat(&weights, 0)?,
            bias: biases.map(|b| Tensor::f_cat(&b, 0)).transpose()?,
        })
    }

    /// `x W^T + b` in the weights' dtype (the input is cast to it: under mixed precision the
    /// residual stream is fp32 and the matmuls bf16, as under the reference's autocast).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if x.kind() == self.weight.kind() {
            x.shallow_clone()
        } else {
            x.f_to_kind(self.weight.kind())?
        };
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// Multi-head self-attention: `proj(softmax(q kᵀ / √d) v)`.
struct Attention {
    qkv: Affine,
    proj: Affine,
    num_heads: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.size3()?;
        let head_dim = c / self.num_heads;
        // [B, N, 3C] -> [3, B, heads, N, head_dim]
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([b, n, 3, self.num_heads, head_dim])?
            .f_permute([2, 0, 3, 1, 4])?;
        let parts = qkv.f_unbind(0)?;
        let (q, k, v) = (&parts[0], &parts[1], &parts[2]);
        // Default scale 1/√head_dim, as the hub's `q * head_dim**-0.5`.
        let h = Tensor::f_scaled_dot_product_attention::<Tensor>(
            q,
            k,
            v,
            None,
            0.0,
            false,
            None::<f64>,
            false,
        )?;
        let h = h.f_transpose(1, 2)?.f_reshape([b, n, c])?;
        self.proj.forward(&h)
    }
}

enum FeedForward {
    Mlp { fc1: Affine, fc2: Affine },
    SwiGlu { w12: Affine, w3: Affine },
    Identity,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Mlp { fc1, fc2 } => fc2.forward(&fc1.forward(x)?.f_gelu("none")?),
            Self::SwiGlu { w12, w3 } => {
                let h = w12.forward(x)?;
                let halves = h.f_chunk(2, -1)?;
                w3.forward(&halves[0].f_silu()?.f_mul(&halves[1])?)
            }
            Self::Identity => Ok(x.shallow_clone()),
        }
    }
}

/// `Block`: `x + ls1(attn(norm1(x)))`, then `x + ls2(ffn(norm2(x)))`.
struct Block {
    norm1: LayerNorm32,
    attn: Attention,
    ls1: Option<Tensor>,
    norm2: LayerNorm32,
    ffn: FeedForward,
    ls2: Option<Tensor>,
}

impl Block {
    /// Matmul weights come out of `weights` as `kinds.matmul`, LayerScale as `kinds.other`
    /// (the norms are fp32 whatever the view says).
    fn new(
        config: &Dinov2Config,
        layout: Dinov2Layout,
        weights: &Weights,
        kinds: ParameterKinds,
    ) -> Result<Self> {
        let (matmul, weights) = (
            weights.with_kind(kinds.matmul),
            weights.with_kind(kinds.other),
        );
        let c = config.embed_dim;
        let eps = config.layer_norm_eps;
        let ffn_kind = config.ffn_kind()?;
        let names = BlockNames::of(layout, ffn_kind);
        let hf = layout == Dinov2Layout::Transformers;
        let (proj_bias, ffn_bias) = (config.proj_bias || hf, config.ffn_bias || hf);
        let qkv = match names.qkv {
            QkvNames::Fused(name) => Affine::read(&matmul, name, c, 3 * c, config.qkv_bias)?,
            QkvNames::Split(parts) => Affine::concat(
                parts
                    .iter()
                    .map(|name| Affine::read(&matmul, name, c, c, config.qkv_bias))
                    .collect::<Result<_>>()?,
            )?,
        };
        let layer_scale = config.has_layer_scale() || hf;
        let scale = |name: &str| -> Result<Option<Tensor>> {
            Ok(if layer_scale {
                Some(weights.get(&[c], name)?)
            } else {
                None
            })
        };
        let hidden = config.ffn_hidden()?;
        let ffn = match ffn_kind {
            FfnKind::Mlp => FeedForward::Mlp {
                fc1: Affine::read(&matmul, names.ffn_in, c, hidden, ffn_bias)?,
                fc2: Affine::read(&matmul, names.ffn_out, hidden, c, ffn_bias)?,
            },
            FfnKind::SwiGlu => FeedForward::SwiGlu {
                w12: Affine::read(&matmul, names.ffn_in, c, 2 * hidden, ffn_bias)?,
                w3: Affine::read(&matmul, names.ffn_out, hidden, c, ffn_bias)?,
            },
            FfnKind::Identity => FeedForward::Identity,
        };
        Ok(Self {
            norm1: LayerNorm32::new(&weights.pp(names.norm1), c, eps)?,
            attn: Attention {
                qkv,
                proj: Affine::read(&matmul, names.proj, c, c, proj_bias)?,
                num_heads: config.num_heads,
            },
            ls1: scale(names.ls1)?,
            norm2: LayerNorm32::new(&weights.pp(names.norm2), c, eps)?,
            ffn,
            ls2: scale(names.ls2)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.attn.forward(&self.norm1.forward(x)?)?;
        let x = x.f_add(&scaled(h, self.ls1.as_ref())?)?;
        let h = self.ffn.forward(&self.norm2.forward(&x)?)?;
        Ok(x.f_add(&scaled(h, self.ls2.as_ref())?)?)
    }
}

fn scaled(h: Tensor, gamma: Option<&Tensor>) -> Result<Tensor> {
    Ok(match gamma {
        Some(g) => h.f_mul(g)?,
        None => h,
    })
}

/// The two files of a published transformers DINOv2 repo, as local paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dinov2Files {
    /// `config.json` (a `Dinov2WithRegistersConfig`).
    pub config: PathBuf,
    /// `model.safetensors` (transformers layout).
    pub weights: PathBuf,
}

/// The Hub repo that holds the published weights of an `image_cond_model` name.
pub fn published_repo(image_cond_model: &str) -> Result<&'static str> {
    match image_cond_model {
        DINOV2_VITL14_REG => Ok(DINOV2_VITL14_REG_REPO),
        other => Err(Error::unsupported(format!(
            "image_cond_model '{other}': recon knows only '{DINOV2_VITL14_REG}'"
        ))),
    }
}

/// Resolves pipeline.json's `image_cond_model` (e.g. `dinov2_vitl14_reg`) to local files,
/// downloading `config.json` and `model.safetensors` of its Hub repo into the Hub cache (or
/// taking them from there; honours HF_HUB_OFFLINE, HF_ENDPOINT, HF_HOME/HF_HUB_CACHE, HF_TOKEN
/// like the rest of the model resolution).
pub fn resolve_image_cond_model(
    image_cond_model: &str,
    opts: &ResolveOptions<'_>,
) -> Result<Dinov2Files> {
    let repo = published_repo(image_cond_model)?;
    let paths = fetch_repo_files(repo, &[HF_CONFIG_FILE, HF_WEIGHTS_FILE], opts)
        .context(format!("image_cond_model '{image_cond_model}'"))?;
    match <[PathBuf; 2]>::try_from(paths) {
        Ok([config, weights]) => Ok(Dinov2Files { config, weights }),
        Err(_) => Err(Error::internal(
            "fetch_repo_files returned the wrong number of paths",
        )),
    }
}

/// The dtypes parameters are read in: matmul weights (patch conv, Linears) and the rest.
#[derive(Debug, Clone, Copy)]
struct ParameterKinds {
    matmul: Kind,
    other: Kind,
}

/// DINOv2 with registers, as TRELLIS runs it (fp32, eval, no masks).
pub struct Dinov2 {
    config: Dinov2Config,
    layout: Dinov2Layout,
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    pos_embed: Tensor,
    register_tokens: Option<Tensor>,
    blocks: Vec<Block>,
    norm: LayerNorm32,
}

impl Dinov2 {
    /// Builds the network from a checkpoint in either layout (detected from its names), every
    /// parameter in the dtype of `weights` (the norms compute in fp32 and cast back).
    pub fn new(config: Dinov2Config, weights: &Weights) -> Result<Self> {
        let kind = weights.kind();
        Self::build(
            config,
            weights,
            ParameterKinds {
                matmul: kind,
                other: kind,
            },
        )
    }

    /// Builds the network for the reference's mixed precision under `autocast(compute)`: the
    /// patch-embed convolution and every Linear (hence attention) compute in `compute`, while
    /// the tokens, position embedding, LayerScale, norms and the residual stream stay fp32
    /// (a low-precision branch output times the fp32 LayerScale promotes back to fp32, as in
    /// torch). With `compute` fp32 this is [`Dinov2::new`] on fp32 weights.
    pub fn new_mixed(config: Dinov2Config, weights: &Weights, compute: Kind) -> Result<Self> {
        Self::build(
            config,
            weights,
            ParameterKinds {
                matmul: compute,
                other: Kind::Float,
            },
        )
    }

    fn build(config: Dinov2Config, weights: &Weights, kinds: ParameterKinds) -> Result<Self> {
        config.validate()?;
        let (matmul, weights) = (
            weights.with_kind(kinds.matmul),
            weights.with_kind(kinds.other),
        );
        let weights = &weights;
        let layout = Dinov2Layout::detect(weights)?;
        let c = config.embed_dim;
        let p = config.patch_size;
        let top = TopNames::of(layout);
        let grid = config.grid_size();
        let patch = matmul.pp(top.patch_embed);
        // Unused at inference (it replaces masked patches in training), but part of the layout.
        let _mask_token = weights.get(&[1, c], top.mask_token)?;
        let register_tokens = if config.num_register_tokens > 0 {
            Some(weights.get(&[1, config.num_register_tokens, c], top.register_tokens)?)
        } else {
            None
        };
        let blocks = (0..config.depth)
            .map(|i| {
                let prefix = config.block_prefix(layout, i);
                Block::new(&config, layout, &weights.pp(&prefix), kinds).context(prefix)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_weight: patch.get(&[c, config.in_chans, p, p], "weight")?,
            patch_bias: patch.get(&[c], "bias")?,
            cls_token: weights.get(&[1, 1, c], top.cls_token)?,
            pos_embed: weights.get(&[1, grid * grid + 1, c], top.pos_embed)?,
            register_tokens,
            blocks,
            norm: LayerNorm32::new(&weights.pp(top.norm), c, config.layer_norm_eps)?,
            layout,
            config,
        })
    }

    /// Loads a published transformers repo's files (see [`resolve_image_cond_model`]) in fp32.
    pub fn load_published(files: &Dinov2Files, device: Device) -> Result<Self> {
        let config = Dinov2Config::from_transformers_config(&files.config)?;
        let weights = Weights::open(&files.weights, Kind::Float, device)?;
        Self::new(config, &weights).context(format!("DINOv2 ({})", files.weights.display()))
    }

    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    pub fn layout(&self) -> Dinov2Layout {
        self.layout
    }

    /// `x_prenorm`: the last block's output `[B, 1 + registers + h·w, C]` for an
    /// ImageNet-normalised image `[B, in_chans, H, W]` (H, W multiples of the patch size).
    pub fn forward_features(&self, image: &Tensor) -> Result<Tensor> {
        let mut x = self.prepare_tokens(image)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    /// The final `norm` applied to `x_prenorm` (the hub's `x_norm_*` outputs).
    pub fn final_norm(&self, x_prenorm: &Tensor) -> Result<Tensor> {
        self.norm.forward(x_prenorm)
    }

    /// TRELLIS's conditioning tokens: `layer_norm(x_prenorm)` without affine (eps 1e-5), over
    /// all tokens, for an ImageNet-normalised image.
    pub fn condition_tokens(&self, image: &Tensor) -> Result<Tensor> {
        trellis_condition_tokens(&self.forward_features(image)?)
    }

    /// patch embed → cls → + position embedding → registers after cls.
    fn prepare_tokens(&self, image: &Tensor) -> Result<Tensor> {
        let (b, h, w) = self.check_image(image)?;
        let p = self.config.patch_size;
        let patches = image
            .f_to_kind(self.patch_weight.kind())?
            .f_conv2d(
                &self.patch_weight,
                Some(&self.patch_bias),
                [p, p],
                [0, 0],
                [1, 1],
                1,
            )?
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?
            // Mixed precision: the low-precision patches join the fp32 tokens in fp32, as
            // torch.cat promotes.
            .f_to_kind(self.cls_token.kind())?;
        let c = self.config.embed_dim;
        let cls = self.cls_token.f_expand([b, 1, c], false)?;
        let x = Tensor::f_cat(&[&cls, &patches], 1)?;
        let x = x.f_add(&self.position_embedding(x.size()[1] - 1, h, w)?)?;
        match &self.register_tokens {
            Some(registers) => {
                let registers = registers.f_expand([b, -1, c], false)?;
                let first = x.f_narrow(1, 0, 1)?;
                let rest = x.f_narrow(1, 1, x.size()[1] - 1)?;
                Ok(Tensor::f_cat(&[&first, &registers, &rest], 1)?)
            }
            None => Ok(x),
        }
    }

    fn check_image(&self, image: &Tensor) -> Result<(i64, i64, i64)> {
        let shape = image.size();
        let p = self.config.patch_size;
        let fits = shape.len() == 4
            && shape[1] == self.config.in_chans
            && shape[2] >= p
            && shape[3] >= p
            && shape[2] % p == 0
            && shape[3] % p == 0;
        if !fits {
            return Err(Error::invalid_argument(format!(
                "DINOv2: image must be [B, {}, H, W] with H and W positive multiples of the patch \
                 size {p}, got {shape:?}",
                self.config.in_chans
            )));
        }
        Ok((shape[0], shape[2], shape[3]))
    }

    /// The position embedding for an `h`×`w` image with `num_patches` patches: the stored one
    /// when the image is square with the trained patch count, else the patch grid resampled
    /// bicubically in fp32 (cls position unchanged), as the hub's `interpolate_pos_encoding`.
    fn position_embedding(&self, num_patches: i64, h: i64, w: i64) -> Result<Tensor> {
        let stored = self.pos_embed.size()[1] - 1;
        if num_patches == stored && h == w {
            return Ok(self.pos_embed.shallow_clone());
        }
        let c = self.config.embed_dim;
        let m = self.config.grid_size();
        let p = self.config.patch_size;
        let (rows, cols) = (h / p, w / p);
        let pos = self.pos_embed.f_to_kind(Kind::Float)?;
        let cls_pos = pos.f_narrow(1, 0, 1)?;
        let grid = pos
            .f_narrow(1, 1, stored)?
            .f_reshape([1, m, m, c])?
            .f_permute([0, 3, 1, 2])?;
        let (size, scale_h, scale_w) = self.interpolation_target(m, rows, cols);
        let resampled = if self.config.interpolate_antialias {
            grid.f_internal_upsample_bicubic2d_aa(size, false, scale_h, scale_w)?
        } else {
            grid.f_upsample_bicubic2d(size, false, scale_h, scale_w)?
        };
        let got = resampled.size();
        if got[2] != rows || got[3] != cols {
            return Err(Error::invalid_argument(format!(
                "DINOv2: interpolating the {m}×{m} position grid with offset {} gives {}×{}, \
                 not the {rows}×{cols} patch grid",
                self.config.interpolate_offset, got[2], got[3]
            )));
        }
        let patch_pos = resampled
            .f_permute([0, 2, 3, 1])?
            .f_reshape([1, rows * cols, c])?;
        Ok(Tensor::f_cat(&[&cls_pos, &patch_pos], 1)?.f_to_kind(self.pos_embed.kind())?)
    }

    /// Output size and scale factors of the interpolation. With an offset the hub passes
    /// `scale_factor = (n + offset) / m` per axis (the size is then `trunc(m · scale)`, and the
    /// kernel maps coordinates with 1/scale); without one it passes the target size.
    fn interpolation_target(
        &self,
        m: i64,
        rows: i64,
        cols: i64,
    ) -> ([i64; 2], Option<f64>, Option<f64>) {
        let offset = self.config.interpolate_offset;
        if offset == 0.0 {
            return ([rows, cols], None, None);
        }
        let scale_h = (rows as f64 + offset) / m as f64;
        let scale_w = (cols as f64 + offset) / m as f64;
        let size = [(m as f64 * scale_h) as i64, (m as f64 * scale_w) as i64];
        (size, Some(scale_h), Some(scale_w))
    }
}

/// `F.layer_norm(x, x.shape[-1:])`: TRELLIS's normalisation of `x_prenorm` (no affine, eps
/// 1e-5), in fp32, cast back.
pub fn trellis_condition_tokens(x_prenorm: &Tensor) -> Result<Tensor> {
    let c = *x_prenorm
        .size()
        .last()
        .ok_or_else(|| Error::invalid_argument("x_prenorm has no dimensions"))?;
    LayerNorm32::without_affine(c, TRELLIS_COND_NORM_EPS).forward(x_prenorm)
}

/// `(image − mean) / std` per RGB channel with the ImageNet statistics, for an image
/// `[B, 3, H, W]` with values in [0, 1] (TRELLIS's `transforms.Normalize`). Returns fp32.
pub fn imagenet_normalize(image: &Tensor) -> Result<Tensor> {
    let shape = image.size();
    if shape.len() != 4 || shape[1] != 3 {
        return Err(Error::invalid_argument(format!(
            "imagenet_normalize: image must be [B, 3, H, W], got {shape:?}"
        )));
    }
    let options = (Kind::Float, image.device());
    let mean = Tensor::f_from_slice(&IMAGENET_MEAN)?
        .f_to_kind(Kind::Float)?
        .f_to_device(options.1)?
        .f_view([1, 3, 1, 1])?;
    let std = Tensor::f_from_slice(&IMAGENET_STD)?
        .f_to_kind(Kind::Float)?
        .f_to_device(options.1)?
        .f_view([1, 3, 1, 1])?;
    Ok(image.f_to_kind(Kind::Float)?.f_sub(&mean)?.f_div(&std)?)
}
