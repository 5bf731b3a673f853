//! `trellis.models.sparse_structure_flow`: the stage-1 flow transformer ("G_S" in the TRELLIS
//! paper). It predicts the rectified-flow velocity of the sparse-structure latent
//! `[B, C, R, R, R]` at timestep `t` (already scaled by 1000), conditioned on image tokens
//! `[B, L, cond_channels]` by cross-attention.
//!
//! The latent is cut into `patch_size`³ patches, one token each (`(R/p)³` tokens in C order),
//! embedded by a Linear plus the absolute position code stored in the checkpoint (`pos_emb`),
//! run through `num_blocks` [`ModulatedTransformerCrossBlock`]s modulated by the timestep
//! embedding, normalised (no affine, eps 1e-5), projected back and reassembled.
//!
//! Precision (research/trellis.md §3.0): with `use_fp16` on CUDA the blocks run in fp16 as the
//! reference's `convert_to_fp16()` leaves them (timestep embedding, tokens and condition cast
//! to fp16 before the blocks, residual stream fp16, norms in fp32); `input_layer`,
//! `t_embedder`, `out_layer` and the final norm are fp32. On CPU everything is fp32.

/// ReconViaGen's `ModulatedMultiViewCond`, which its fork adds to this module.
pub mod multiview_cond;

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result, ResultExt};
use crate::nn::attention::CrossContext;
use crate::nn::embed::{AbsolutePositionEmbedder, TimestepEmbedder};
use crate::nn::layout::{check_layout, TensorSpec};
use crate::nn::transformer::{mlp_hidden, CrossBlockConfig, ModulatedTransformerCrossBlock};
use crate::nn::Linear;
use crate::weights::Weights;

use super::sparse_structure_vae::torso_kind;

/// The eps of the reference's final `F.layer_norm` (PyTorch's default), unlike the blocks' 1e-6.
const FINAL_NORM_EPS: f64 = 1e-5;

/// The `args` of a `SparseStructureFlowModel` checkpoint json, with the reference's defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SparseStructureFlowConfig {
    pub resolution: i64,
    pub in_channels: i64,
    pub model_channels: i64,
    pub cond_channels: i64,
    pub out_channels: i64,
    pub num_blocks: usize,
    /// When absent (or 0), `model_channels / num_head_channels`.
    #[serde(default)]
    pub num_heads: Option<i64>,
    #[serde(default = "default_num_head_channels")]
    pub num_head_channels: Option<i64>,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    #[serde(default = "default_pe_mode")]
    pub pe_mode: String,
    #[serde(default)]
    pub use_fp16: bool,
    /// Gradient checkpointing: training only, no effect on the forward pass.
    #[serde(default)]
    pub use_checkpoint: bool,
    /// One `adaLN_modulation` for all blocks instead of one per block.
    #[serde(default)]
    pub share_mod: bool,
    #[serde(default)]
    pub qk_rms_norm: bool,
    #[serde(default)]
    pub qk_rms_norm_cross: bool,
}

fn default_num_head_channels() -> Option<i64> {
    Some(64)
}

fn default_mlp_ratio() -> f64 {
    4.0
}

fn default_patch_size() -> i64 {
    2
}

fn default_pe_mode() -> String {
    "ape".to_string()
}

impl SparseStructureFlowConfig {
    /// `ss_flow_img_dit_L_16l8_fp16` of microsoft/TRELLIS-image-large (research/trellis.md §3.2).
    pub fn trellis_image_large() -> Self {
        Self {
            resolution: 16,
            in_channels: 8,
            model_channels: 1024,
            cond_channels: 1024,
            out_channels: 8,
            num_blocks: 24,
            num_heads: Some(16),
            num_head_channels: default_num_head_channels(),
            mlp_ratio: 4.0,
            patch_size: 1,
            pe_mode: "ape".to_string(),
            use_fp16: true,
            use_checkpoint: false,
            share_mod: false,
            qk_rms_norm: true,
            qk_rms_norm_cross: false,
        }
    }

    /// The number of attention heads: `num_heads or model_channels // num_head_channels`.
    pub fn heads(&self) -> Result<i64> {
        match (self.num_heads, self.num_head_channels) {
            (Some(heads), _) if heads != 0 => Ok(heads),
            (_, Some(head_channels)) if head_channels > 0 => {
                Ok(self.model_channels / head_channels)
            }
            _ => Err(Error::checkpoint(format!(
                "SparseStructureFlowModel: neither num_heads ({:?}) nor num_head_channels ({:?}) \
                 gives a head count",
                self.num_heads, self.num_head_channels
            ))),
        }
    }

    /// Tokens per axis: `resolution / patch_size`.
    pub fn grid(&self) -> i64 {
        self.resolution / self.patch_size
    }

    /// Number of tokens, `(resolution / patch_size)³`.
    pub fn tokens(&self) -> i64 {
        self.grid().pow(3)
    }

    /// Channels of one patch token in: `in_channels · patch_size³`.
    fn patch_in(&self) -> i64 {
        self.in_channels * self.patch_size.pow(3)
    }

    /// Channels of one patch token out: `out_channels · patch_size³`.
    fn patch_out(&self) -> i64 {
        self.out_channels * self.patch_size.pow(3)
    }

    fn block_config(&self) -> Result<CrossBlockConfig> {
        Ok(CrossBlockConfig {
            channels: self.model_channels,
            ctx_channels: self.cond_channels,
            num_heads: self.heads()?,
            mlp_ratio: self.mlp_ratio,
            share_mod: self.share_mod,
            qk_rms_norm: self.qk_rms_norm,
            qk_rms_norm_cross: self.qk_rms_norm_cross,
            qkv_bias: true,
        })
    }

    fn validate(&self) -> Result<()> {
        let fail = |what: String| {
            Err(Error::checkpoint(format!(
                "SparseStructureFlowModel: {what}"
            )))
        };
        let sizes = [
            ("resolution", self.resolution),
            ("in_channels", self.in_channels),
            ("model_channels", self.model_channels),
            ("cond_channels", self.cond_channels),
            ("out_channels", self.out_channels),
            ("patch_size", self.patch_size),
        ];
        if let Some((name, value)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return fail(format!("{name} must be positive, got {value}"));
        }
        if self.resolution % self.patch_size != 0 {
            return fail(format!(
                "resolution {} is not a multiple of patch_size {}",
                self.resolution, self.patch_size
            ));
        }
        let heads = self.heads()?;
        if heads <= 0 || self.model_channels % heads != 0 {
            return fail(format!(
                "{} model channels cannot be split into {heads} heads",
                self.model_channels
            ));
        }
        // A NaN or non-positive ratio truncates to no hidden units too.
        if mlp_hidden(self.model_channels, self.mlp_ratio) <= 0 {
            return fail(format!(
                "mlp_ratio {} gives no hidden units",
                self.mlp_ratio
            ));
        }
        match self.pe_mode.as_str() {
            "ape" => Ok(()),
            // Upstream's dense RoPE path builds phases of the wrong shape for [B, L, H, D]
            // tokens, so no working checkpoint can use it.
            "rope" => Err(Error::unsupported(
                "SparseStructureFlowModel: pe_mode \"rope\" is not supported (only \"ape\" is used \
                 by the published models)",
            )),
            other => fail(format!("pe_mode '{other}' is not one of \"ape\", \"rope\"")),
        }
    }

    /// Every tensor the network reads from its checkpoint, in the reference's `state_dict()`
    /// order, with the dtype the reference stores it in (`use_fp16`: the blocks' Linears F16,
    /// everything else F32). [`SparseStructureFlowModel::new`] checks a checkpoint against this
    /// list before loading, and loads exactly these tensors.
    pub fn checkpoint_layout(&self) -> Result<Vec<TensorSpec>> {
        self.validate()?;
        let c = self.model_channels;
        let f32 = Kind::Float;
        let torso = if self.use_fp16 {
            Kind::Half
        } else {
            Kind::Float
        };
        let mut specs = vec![TensorSpec::new("pos_emb", &[self.tokens(), c], f32)];
        specs.extend(TimestepEmbedder::layout(
            "t_embedder",
            c,
            TimestepEmbedder::DEFAULT_FREQUENCY_SIZE,
            f32,
        ));
        if self.share_mod {
            specs.push(TensorSpec::new(
                "adaLN_modulation.1.weight",
                &[6 * c, c],
                f32,
            ));
            specs.push(TensorSpec::new("adaLN_modulation.1.bias", &[6 * c], f32));
        }
        specs.push(TensorSpec::new(
            "input_layer.weight",
            &[c, self.patch_in()],
            f32,
        ));
        specs.push(TensorSpec::new("input_layer.bias", &[c], f32));
        let block = self.block_config()?;
        for i in 0..self.num_blocks {
            specs.extend(ModulatedTransformerCrossBlock::layout(
                &format!("blocks.{i}"),
                &block,
                torso,
            ));
        }
        specs.push(TensorSpec::new(
            "out_layer.weight",
            &[self.patch_out(), c],
            f32,
        ));
        specs.push(TensorSpec::new("out_layer.bias", &[self.patch_out()], f32));
        Ok(specs)
    }
}

/// The sparse-structure flow model (`SparseStructureFlowModel`).
pub struct SparseStructureFlowModel {
    config: SparseStructureFlowConfig,
    /// `[tokens, model_channels]` fp32: the checkpoint's buffer (the reference strict-loads it
    /// over the one it computes, so the stored values rule).
    pos_emb: Tensor,
    t_embedder: TimestepEmbedder,
    /// The model-level `adaLN_modulation.1` when `share_mod`.
    shared_modulation: Option<Linear>,
    input_layer: Linear,
    blocks: Vec<ModulatedTransformerCrossBlock>,
    out_layer: Linear,
    /// fp16 on CUDA when the checkpoint says `use_fp16`, as the reference runs it; fp32 otherwise.
    torso_kind: Kind,
}

impl SparseStructureFlowModel {
    /// Builds the model from a checkpoint view whose default kind is fp32. The checkpoint is
    /// checked against [`SparseStructureFlowConfig::checkpoint_layout`] first.
    pub fn new(config: SparseStructureFlowConfig, weights: &Weights) -> Result<Self> {
        let layout = config.checkpoint_layout()?;
        check_layout(weights, &layout)?;
        let c = config.model_channels;
        let torso_kind = torso_kind(config.use_fp16, weights.device());
        let fp32 = weights.with_kind(Kind::Float);

        let pos_emb = fp32.get(&[config.tokens(), c], "pos_emb")?;
        let t_embedder = TimestepEmbedder::new(
            &fp32.pp("t_embedder"),
            c,
            TimestepEmbedder::DEFAULT_FREQUENCY_SIZE,
        )
        .context("t_embedder")?;
        let shared_modulation = if config.share_mod {
            Some(Linear::new(&fp32.pp("adaLN_modulation").pp(1), c, 6 * c)?)
        } else {
            None
        };
        let input_layer = Linear::new(&fp32.pp("input_layer"), config.patch_in(), c)?;
        let block_config = config.block_config()?;
        let torso = weights.with_kind(torso_kind).pp("blocks");
        let blocks = (0..config.num_blocks)
            .map(|i| {
                ModulatedTransformerCrossBlock::new(&torso.pp(i), block_config)
                    .context(format!("blocks.{i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let out_layer = Linear::new(&fp32.pp("out_layer"), c, config.patch_out())?;
        Ok(Self {
            config,
            pos_emb,
            t_embedder,
            shared_modulation,
            input_layer,
            blocks,
            out_layer,
            torso_kind,
        })
    }

    pub fn config(&self) -> &SparseStructureFlowConfig {
        &self.config
    }

    /// The position code the reference computes at construction (before the checkpoint's
    /// buffer replaces it): the absolute position embedding of the `(R/p)³` token grid.
    pub fn computed_pos_emb(&self) -> Result<Tensor> {
        AbsolutePositionEmbedder::new(self.config.model_channels, 3)?
            .grid(self.config.grid(), self.pos_emb.device())
    }

    /// The checkpoint's `pos_emb` buffer `[tokens, model_channels]`.
    pub fn pos_emb(&self) -> &Tensor {
        &self.pos_emb
    }

    /// The velocity `[B, out_channels, R, R, R]` (in `x`'s dtype) of the latent `x`
    /// `[B, in_channels, R, R, R]` at timesteps `t` `[B]` (the sampler's `t · 1000`), given the
    /// condition tokens `cond` `[B, L, cond_channels]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let batch = self.check_inputs(x, t)?;
        self.check_cond(batch, cond)?;
        self.velocity(x, t, batch, CrossContext::Tokens(cond))
    }

    /// [`SparseStructureFlowModel::forward`] under all-zero condition tokens (classifier-free
    /// guidance's negative condition, any number of tokens): every cross-attention adds its
    /// constant output instead of attending.
    pub fn forward_zero_condition(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let batch = self.check_inputs(x, t)?;
        self.velocity(x, t, batch, CrossContext::Zeros { views: 1 })
    }

    /// The forward of checked inputs (`batch` samples).
    fn velocity(
        &self,
        x: &Tensor,
        t: &Tensor,
        batch: i64,
        cond: CrossContext<'_, Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let p = cfg.patch_size;

        // [B, C·p³, n, n, n] → tokens [B, n³, C·p³], token index x·n² + y·n + z.
        let h = patchify(&x.f_to_kind(Kind::Float)?, p)?
            .f_reshape([batch, cfg.patch_in(), -1])?
            .f_permute([0, 2, 1])?
            .f_contiguous()?;
        let h = self
            .input_layer
            .forward(&h)?
            .f_add(&self.pos_emb.f_unsqueeze(0)?)?;

        let mut modulation = self.t_embedder.forward(t)?;
        if let Some(shared) = &self.shared_modulation {
            modulation = shared.forward(&modulation.f_silu()?)?;
        }
        let modulation = modulation.f_to_kind(self.torso_kind)?;
        let cond = match cond {
            CrossContext::Tokens(cond) => Some(cond.f_to_kind(self.torso_kind)?),
            CrossContext::Zeros { .. } => None,
        };
        let context = cond
            .as_ref()
            .map_or(CrossContext::Zeros { views: 1 }, CrossContext::Tokens);
        let mut h = h.f_to_kind(self.torso_kind)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block
                .forward(&h, &modulation, context)
                .context(format!("blocks.{i}"))?;
        }

        let h = h.f_to_kind(Kind::Float)?.f_layer_norm(
            [cfg.model_channels],
            None::<Tensor>,
            None::<Tensor>,
            FINAL_NORM_EPS,
            true,
        )?;
        let n = cfg.grid();
        let h = self
            .out_layer
            .forward(&h)?
            .f_permute([0, 2, 1])?
            .f_reshape([batch, cfg.patch_out(), n, n, n])?;
        Ok(unpatchify(&h, p)?.f_contiguous()?.f_to_kind(x.kind())?)
    }

    /// The batch size of `x` and `t`, or an InvalidArgument error naming the offending input.
    fn check_inputs(&self, x: &Tensor, t: &Tensor) -> Result<i64> {
        let cfg = &self.config;
        let r = cfg.resolution;
        let batch = match x.size()[..] {
            [b, c, d, h, w] if c == cfg.in_channels && [d, h, w] == [r, r, r] => b,
            ref found => {
                return Err(Error::invalid_argument(format!(
                    "SparseStructureFlowModel: x must be [B, {}, {r}, {r}, {r}], got {found:?}",
                    cfg.in_channels
                )))
            }
        };
        if t.size() != [batch] {
            return Err(Error::invalid_argument(format!(
                "SparseStructureFlowModel: t must be [{batch}] (one timestep per sample), got {:?}",
                t.size()
            )));
        }
        Ok(batch)
    }

    /// Whether `cond` is `[batch, L, cond_channels]`, or an InvalidArgument error.
    fn check_cond(&self, batch: i64, cond: &Tensor) -> Result<()> {
        let cfg = &self.config;
        match cond.size()[..] {
            [b, _, c] if b == batch && c == cfg.cond_channels => Ok(()),
            ref found => Err(Error::invalid_argument(format!(
                "SparseStructureFlowModel: cond must be [{batch}, L, {}], got {found:?}",
                cfg.cond_channels
            ))),
        }
    }
}

/// `[B, C, D, H, W]` → `[B, C·p³, D/p, H/p, W/p]`: channel `c·p³ + (i·p + j)·p + k` of the
/// output holds voxel `(d·p + i, h·p + j, w·p + k)` of input channel `c`.
fn patchify(x: &Tensor, p: i64) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.shallow_clone());
    }
    let size = x.size();
    let [b, c, d, h, w] = size[..] else {
        return Err(Error::invalid_argument(format!(
            "patchify expects [B, C, D, H, W], got {size:?}"
        )));
    };
    if [d, h, w].iter().any(|s| s % p != 0) {
        return Err(Error::invalid_argument(format!(
            "patchify: spatial size {:?} is not a multiple of the patch size {p}",
            &size[2..]
        )));
    }
    Ok(x.f_reshape([b, c, d / p, p, h / p, p, w / p, p])?
        .f_permute([0, 1, 3, 5, 7, 2, 4, 6])?
        .f_reshape([b, c * p * p * p, d / p, h / p, w / p])?)
}

/// The inverse of [`patchify`]: `[B, C·p³, D, H, W]` → `[B, C, D·p, H·p, W·p]`.
fn unpatchify(x: &Tensor, p: i64) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.shallow_clone());
    }
    let size = x.size();
    let [b, cp, d, h, w] = size[..] else {
        return Err(Error::invalid_argument(format!(
            "unpatchify expects [B, C, D, H, W], got {size:?}"
        )));
    };
    let cube = p * p * p;
    if cp % cube != 0 {
        return Err(Error::invalid_argument(format!(
            "unpatchify: {cp} channels are not a multiple of {cube}"
        )));
    }
    Ok(x.f_reshape([b, cp / cube, p, p, p, d, h, w])?
        .f_permute([0, 1, 5, 2, 6, 3, 7, 4])?
        .f_reshape([b, cp / cube, d * p, h * p, w * p])?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tch::Device;

    use super::*;
    use crate::ErrorKind;

    /// A checkpoint holding `specs` with random values in their stored dtypes.
    fn random_checkpoint(dir: &Path, specs: &[TensorSpec]) -> Weights {
        crate::nn::layout::random_checkpoint(&dir.join("ss_flow.safetensors"), specs)
    }

    fn small(patch_size: i64, use_fp16: bool) -> SparseStructureFlowConfig {
        SparseStructureFlowConfig {
            resolution: 4,
            in_channels: 3,
            model_channels: 24,
            cond_channels: 20,
            out_channels: 5,
            num_blocks: 2,
            num_heads: Some(3),
            num_head_channels: Some(64),
            mlp_ratio: 2.5,
            patch_size,
            pe_mode: "ape".to_string(),
            use_fp16,
            use_checkpoint: false,
            share_mod: false,
            qk_rms_norm: true,
            qk_rms_norm_cross: false,
        }
    }

    /// The configurations whose layouts differ: per-block vs shared modulation, q/k norms in
    /// self and cross attention, patches, heads from `num_head_channels`, fp16 storage.
    fn variants() -> Vec<SparseStructureFlowConfig> {
        vec![
            small(1, true),
            SparseStructureFlowConfig {
                share_mod: true,
                qk_rms_norm: false,
                qk_rms_norm_cross: true,
                ..small(2, false)
            },
            SparseStructureFlowConfig {
                num_heads: None,
                num_head_channels: Some(8),
                qk_rms_norm_cross: true,
                ..small(4, true)
            },
        ]
    }

    /// All-zero condition tokens make every key the same, so the attention is uniform and its
    /// output a constant: the zero-condition forward, which adds that constant, equals a
    /// forward that attends to zeros (with or without q/k norms in the cross-attention).
    #[test]
    fn the_zero_condition_forward_equals_attending_to_zeros() {
        for config in variants() {
            let dir = tempfile::tempdir().unwrap();
            let weights = random_checkpoint(dir.path(), &config.checkpoint_layout().unwrap());
            let model = SparseStructureFlowModel::new(config.clone(), &weights).unwrap();
            let r = config.resolution;
            let opts = (Kind::Float, Device::Cpu);
            let x = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
                Tensor::randn([2, config.in_channels, r, r, r], opts)
            });
            let t = Tensor::from_slice(&[500.0f32, 3.0]);
            let zeros = Tensor::zeros([2, 6, config.cond_channels], opts);
            let attended = model.forward(&x, &t, &zeros).unwrap();
            let skipped = model.forward_zero_condition(&x, &t).unwrap();
            let rel = f64::try_from((&attended - &skipped).norm() / attended.norm()).unwrap();
            assert!(rel < 1e-5, "{config:?}: rel L2 {rel}");
        }
    }

    #[test]
    fn published_json_parses_to_the_preset() {
        let json = r#"{"resolution": 16, "in_channels": 8, "out_channels": 8,
            "model_channels": 1024, "cond_channels": 1024, "num_blocks": 24, "num_heads": 16,
            "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape", "qk_rms_norm": true,
            "use_fp16": true}"#;
        let parsed: SparseStructureFlowConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, SparseStructureFlowConfig::trellis_image_large());
        assert_eq!(parsed.heads().unwrap(), 16);
        assert_eq!(parsed.tokens(), 4096);
    }

    #[test]
    fn defaults_follow_the_reference_signature() {
        let json = r#"{"resolution": 8, "in_channels": 8, "out_channels": 8,
            "model_channels": 128, "cond_channels": 64, "num_blocks": 1}"#;
        let parsed: SparseStructureFlowConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.patch_size, 2);
        assert_eq!(parsed.heads().unwrap(), 2); // 128 / num_head_channels 64
        assert_eq!(parsed.mlp_ratio, 4.0);
        assert!(!parsed.use_fp16 && !parsed.share_mod && !parsed.qk_rms_norm);
        let unknown = json.replace("\"num_blocks\"", "\"num_layers\"");
        assert!(serde_json::from_str::<SparseStructureFlowConfig>(&unknown).is_err());
    }

    /// The loader reads exactly the tensors the layout lists: a checkpoint written from the
    /// layout loads, and no tensor of it is left unread. (With `check_layout` in `new()`, the
    /// requested names are then exactly the layout's.)
    #[test]
    fn loader_reads_exactly_the_layout() {
        for config in variants() {
            let dir = tempfile::tempdir().unwrap();
            let specs = config.checkpoint_layout().unwrap();
            let weights = random_checkpoint(dir.path(), &specs);
            let model = SparseStructureFlowModel::new(config.clone(), &weights)
                .unwrap_or_else(|e| panic!("{config:?}: {e}"));
            assert_eq!(weights.unused(), Vec::<String>::new(), "{config:?}");

            let r = config.resolution;
            let x = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
                Tensor::randn([2, config.in_channels, r, r, r], (Kind::Float, Device::Cpu))
            });
            let t = Tensor::from_slice(&[500.0f32, 3.0]);
            let cond = crate::pipelines::trellis_image_to_3d::with_cpu_generator(|| {
                Tensor::randn([2, 7, config.cond_channels], (Kind::Float, Device::Cpu))
            });
            let v = model.forward(&x, &t, &cond).unwrap();
            assert_eq!(v.size(), [2, config.out_channels, r, r, r]);
            assert_eq!(v.kind(), Kind::Float);
        }
    }

    #[test]
    fn missing_and_misshaped_tensors_are_all_named() {
        let config = small(1, true);
        let mut specs = config.checkpoint_layout().unwrap();
        specs.retain(|s| s.name != "blocks.1.self_attn.k_rms_norm.gamma");
        let qkv = specs
            .iter_mut()
            .find(|s| s.name == "blocks.0.self_attn.to_qkv.weight")
            .unwrap();
        qkv.shape = vec![72, 20];
        let dir = tempfile::tempdir().unwrap();
        let weights = random_checkpoint(dir.path(), &specs);
        let err = SparseStructureFlowModel::new(config, &weights)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Checkpoint);
        let text = err.message();
        assert!(
            text.contains("'blocks.1.self_attn.k_rms_norm.gamma' is missing"),
            "{text}"
        );
        assert!(
            text.contains(
                "'blocks.0.self_attn.to_qkv.weight' has shape [72, 20], expected [72, 24]"
            ),
            "{text}"
        );
        assert!(
            weights.unused().len() == specs.len(),
            "nothing may be loaded"
        );
    }

    #[test]
    fn inputs_are_checked() {
        let config = small(2, false);
        let dir = tempfile::tempdir().unwrap();
        let weights = random_checkpoint(dir.path(), &config.checkpoint_layout().unwrap());
        let model = SparseStructureFlowModel::new(config, &weights).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::zeros([1, 3, 4, 4, 4], opts);
        let t = Tensor::zeros([1], opts);
        let cond = Tensor::zeros([1, 2, 20], opts);
        let cases = [
            (
                Tensor::zeros([1, 3, 4, 4, 2], opts),
                t.shallow_clone(),
                cond.shallow_clone(),
                "x must be [B, 3, 4, 4, 4]",
            ),
            (
                x.shallow_clone(),
                Tensor::zeros([2], opts),
                cond.shallow_clone(),
                "t must be [1]",
            ),
            (
                x.shallow_clone(),
                t.shallow_clone(),
                Tensor::zeros([1, 2, 24], opts),
                "cond must be [1, L, 20]",
            ),
        ];
        for (x, t, cond, expected) in cases {
            let err = model.forward(&x, &t, &cond).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.message().contains(expected), "{err}");
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        let rope = SparseStructureFlowConfig {
            pe_mode: "rope".to_string(),
            ..small(1, false)
        };
        assert_eq!(
            rope.checkpoint_layout().unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        let odd_patch = small(3, false);
        assert!(odd_patch
            .checkpoint_layout()
            .unwrap_err()
            .message()
            .contains("patch_size 3"));
        let bad_heads = SparseStructureFlowConfig {
            num_heads: Some(5),
            ..small(1, false)
        };
        assert!(bad_heads
            .checkpoint_layout()
            .unwrap_err()
            .message()
            .contains("5 heads"));
    }

    #[test]
    fn patchify_orders_channels_like_the_reference() {
        // Channel c·p³ + (i·p + j)·p + k of token (d, h, w) holds voxel (d·p+i, h·p+j, w·p+k).
        let (c, p, n) = (2i64, 2i64, 3i64);
        let side = n * p;
        let x = Tensor::arange(c * side * side * side, (Kind::Float, Device::Cpu))
            .reshape([1, c, side, side, side]);
        let patches = patchify(&x, p).unwrap();
        assert_eq!(patches.size(), [1, c * 8, n, n, n]);
        for (ch, i, j, k, d, h, w) in [(1, 1, 0, 1, 2, 0, 1), (0, 0, 1, 1, 1, 2, 0)] {
            let got = patches.double_value(&[0, ch * 8 + (i * p + j) * p + k, d, h, w]);
            let want = x.double_value(&[0, ch, d * p + i, h * p + j, w * p + k]);
            assert_eq!(got, want);
        }
        assert!(unpatchify(&patches, p).unwrap().equal(&x));
    }
}
