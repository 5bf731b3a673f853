//! `vggt/heads/camera_head.py`: `CameraHead`, which regresses the `absT_quaR_FoV` camera of
//! every frame from the camera token of the aggregator's last layer, refining it iteratively:
//!
//! ```text
//! tok  = token_norm(tokens[-1][:, :, 0])                      [B, S, C], fixed over iterations
//! pred = None
//! repeat num_iterations:
//!     inp = embed_pose(empty_pose_tokens if pred is None else pred)   the RAW encoding
//!     shift, scale, gate = Linear(SiLU(inp)).chunk(3)
//!     x = gate·(adaln_norm(tok)·(1 + scale) + shift) + tok        adaln_norm: no affine, 1e-6
//!     x = trunk(x)                                                 attention over the S frames
//!     pred = pred + pose_branch(trunk_norm(x))                     (the first delta is pred)
//!     emit activate(pred)                                          T, q linear; FoV ReLU
//! ```
//! The reference runs its heads with autocast disabled (fp32); the compute kind is still a
//! parameter for callers that run them under autocast.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::layout::TensorSpec;
use crate::nn::{LayerNorm32, Linear};
use crate::weights::Weights;

use super::block::{Block, BlockConfig, Mlp, VGGT_NORM_EPS};
use super::pose_enc::POSE_ENCODING_DIM;

/// `adaln_norm`'s eps (`nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)`).
const ADALN_NORM_EPS: f64 = 1e-6;
/// `CameraHead.forward`'s default `num_iterations`.
pub const CAMERA_HEAD_ITERATIONS: usize = 4;

/// The constructor arguments of `CameraHead` that shape it (the activations are the published
/// ones: translation and quaternion linear, field of view ReLU).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CameraHeadConfig {
    /// `2 · embed_dim`: the width of the aggregator's outputs.
    pub dim_in: i64,
    pub trunk_depth: usize,
    pub num_heads: i64,
    pub mlp_ratio: f64,
}

impl CameraHeadConfig {
    fn trunk_block(&self) -> BlockConfig {
        BlockConfig {
            dim: self.dim_in,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            qk_norm: false,
        }
    }

    /// Every tensor of the head under `prefix`, in `state_dict()` order, stored fp32.
    pub fn layout(&self, prefix: &str) -> Vec<TensorSpec> {
        let c = self.dim_in;
        let spec = |name: &str, shape: &[i64]| {
            TensorSpec::new(format!("{prefix}.{name}"), shape, Kind::Float)
        };
        let linear = |name: &str, i: i64, o: i64| {
            Linear::layout(&format!("{prefix}.{name}"), true, i, o, Kind::Float)
        };
        let mut specs = vec![spec("empty_pose_tokens", &[1, 1, POSE_ENCODING_DIM])];
        for i in 0..self.trunk_depth {
            specs.extend(self.trunk_block().layout(&format!("{prefix}.trunk.{i}")));
        }
        for norm in ["token_norm", "trunk_norm"] {
            specs.push(spec(&format!("{norm}.weight"), &[c]));
            specs.push(spec(&format!("{norm}.bias"), &[c]));
        }
        specs.extend(linear("embed_pose", POSE_ENCODING_DIM, c));
        specs.extend(linear("poseLN_modulation.1", c, 3 * c));
        specs.extend(linear("pose_branch.fc1", c, c / 2));
        specs.extend(linear("pose_branch.fc2", c / 2, POSE_ENCODING_DIM));
        specs
    }
}

/// The loaded camera head.
pub struct CameraHead {
    config: CameraHeadConfig,
    empty_pose_tokens: Tensor,
    trunk: Vec<Block>,
    token_norm: LayerNorm32,
    trunk_norm: LayerNorm32,
    adaln_norm: LayerNorm32,
    embed_pose: Linear,
    pose_ln_modulation: Linear,
    pose_branch: Mlp,
}

impl CameraHead {
    /// Loads the head from `weights` (already under `camera_head.`); Linears compute in
    /// `compute`, norms and the rest in fp32.
    pub fn new(weights: &Weights, config: CameraHeadConfig, compute: Kind) -> Result<Self> {
        let c = config.dim_in;
        if c <= 1 || c % 2 != 0 {
            return Err(Error::checkpoint(format!(
                "CameraHead: dim_in must be even and positive, got {c}"
            )));
        }
        let fp32 = weights.with_kind(Kind::Float);
        let matmul = weights.with_kind(compute);
        let trunk = (0..config.trunk_depth)
            .map(|i| Block::new(&weights.pp("trunk").pp(i), &config.trunk_block(), compute))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            empty_pose_tokens: fp32.get(&[1, 1, POSE_ENCODING_DIM], "empty_pose_tokens")?,
            trunk,
            token_norm: LayerNorm32::new(&fp32.pp("token_norm"), c, VGGT_NORM_EPS)?,
            trunk_norm: LayerNorm32::new(&fp32.pp("trunk_norm"), c, VGGT_NORM_EPS)?,
            adaln_norm: LayerNorm32::without_affine(c, ADALN_NORM_EPS),
            embed_pose: Linear::new(&matmul.pp("embed_pose"), POSE_ENCODING_DIM, c)?,
            pose_ln_modulation: Linear::new(&matmul.pp("poseLN_modulation.1"), c, 3 * c)?,
            pose_branch: Mlp::new(&matmul.pp("pose_branch"), c, c / 2, POSE_ENCODING_DIM)?,
            config,
        })
    }

    pub fn config(&self) -> &CameraHeadConfig {
        &self.config
    }

    /// The activated pose encoding `[B, S, 9]` after each of `num_iterations` refinements,
    /// from the aggregator's last output `[B, S, T, dim_in]` (its camera token, index 0).
    pub fn forward(&self, last_tokens: &Tensor, num_iterations: usize) -> Result<Vec<Tensor>> {
        let shape = last_tokens.size();
        let fits = shape.len() == 4 && shape[2] > 0 && shape[3] == self.config.dim_in;
        if !fits {
            return Err(Error::invalid_argument(format!(
                "CameraHead: tokens must be [B, S, T, {}], got {shape:?}",
                self.config.dim_in
            )));
        }
        let (b, s) = (shape[0], shape[1]);
        let tokens = self.token_norm.forward(&last_tokens.f_select(2, 0)?)?;
        let normed = self.adaln_norm.forward(&tokens)?;
        let mut raw: Option<Tensor> = None;
        let mut outputs = Vec::with_capacity(num_iterations);
        for _ in 0..num_iterations {
            let input = match &raw {
                None => self
                    .empty_pose_tokens
                    .f_expand([b, s, POSE_ENCODING_DIM], false)?,
                Some(pred) => pred.shallow_clone(),
            };
            let delta = self.refine(&tokens, &normed, &input)?;
            let pred = match raw {
                None => delta,
                Some(pred) => pred.f_add(&delta)?,
            };
            outputs.push(activate_pose(&pred)?);
            raw = Some(pred);
        }
        Ok(outputs)
    }

    /// One iteration's encoding delta, from the normalised camera tokens and the previous raw
    /// encoding (or the empty pose).
    fn refine(&self, tokens: &Tensor, normed: &Tensor, encoding: &Tensor) -> Result<Tensor> {
        let embedded = self.embed_pose.forward(encoding)?;
        let modulation = self.pose_ln_modulation.forward(&embedded.f_silu()?)?;
        let chunks = modulation.f_chunk(3, -1)?;
        let [shift, scale, gate]: [Tensor; 3] = chunks
            .try_into()
            .map_err(|_| Error::internal("poseLN_modulation did not split into 3"))?;
        let modulated = normed.f_mul(&scale.f_add_scalar(1.0)?)?.f_add(&shift)?;
        let mut x = gate.f_mul(&modulated)?.f_add(tokens)?;
        for block in &self.trunk {
            x = block.forward(&x, None)?;
        }
        self.pose_branch.forward(&self.trunk_norm.forward(&x)?)
    }
}

/// `activate_pose(pred, trans_act="linear", quat_act="linear", fl_act="relu")`: ReLU on the
/// two fields of view, the rest unchanged.
pub fn activate_pose(encoding: &Tensor) -> Result<Tensor> {
    let rest = encoding.f_narrow(-1, 0, 7)?;
    let fov = encoding.f_narrow(-1, 7, 2)?.f_relu()?;
    Ok(Tensor::f_cat(&[&rest, &fov], -1)?)
}
